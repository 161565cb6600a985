//! The xdplb data plane: one XDP program, read top to bottom as the
//! packet's path. Every verdict carries a [`Reason`], counted in one place.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use lb_common::stats::{Counter, REASON_SLOTS, Reason};

use crate::parse::{EtherType, ethernet, ipv4};

#[map(name = "REASON_STATS")]
static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = classify(&ctx);
    if let Some(c) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*c).add(len) };
    }
    action
}

/// Parse far enough to decide whose packet this is.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (u32, Reason) {
    let Some(eth) = ethernet(ctx) else {
        return (xdp_action::XDP_PASS, Reason::PassShortEthernet);
    };
    match eth.ether_type() {
        EtherType::Arp => (xdp_action::XDP_PASS, Reason::PassArp),
        EtherType::Ipv6 => (xdp_action::XDP_PASS, Reason::PassIpv6),
        EtherType::Other => (xdp_action::XDP_PASS, Reason::PassOtherEthertype),
        EtherType::Ipv4 => match ipv4(ctx) {
            None => (xdp_action::XDP_PASS, Reason::PassMalformedIpv4),
            Some(_ip) => (xdp_action::XDP_PASS, Reason::PassNotService),
        },
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
