//! Header access with one bounds check each: after `ptr_at`, callers hold
//! typed references the verifier has already proved in range.

use aya_ebpf::programs::XdpContext;
use lb_common::wire::{ETH_HDR_LEN, EthHdr, Ipv4Hdr};

pub use lb_common::wire::EtherType;

/// A `&T` at `offset` into the packet, or `None` if it would run past the end.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Option<&mut EthHdr> {
    // SAFETY: ptr_at proved the header lies inside the packet.
    ptr_at::<EthHdr>(ctx, 0).map(|p| unsafe { &mut *p })
}

/// The IPv4 header after Ethernet, if complete and with IHL >= 5.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Option<&mut Ipv4Hdr> {
    // SAFETY: ptr_at proved the header lies inside the packet.
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).map(|p| unsafe { &mut *p })?;
    if ip.ihl() < 5 || ip.version() != 4 {
        return None;
    }
    Some(ip)
}
