//! Header access with one bounds check each: after `ptr_at`, callers hold
//! typed references the verifier has already proved in range.

use crate::{Verdict, maps};
use aya_ebpf::programs::XdpContext;
use lb_common::{
    service::{PROTO_TCP, PROTO_UDP, ServiceKey},
    stats::Reason,
    wire::{ArpHdr, ETH_HDR_LEN, EthHdr, EtherType, Ipv4Hdr, TcpHdr, UdpHdr},
};

/// A pointer to a `T` at `offset` into the packet, or `None` if it would
/// run past the end.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn header<'a, T>(ctx: &XdpContext, offset: usize) -> Option<&'a mut T> {
    // SAFETY: ptr_at proved the header lies inside the packet, which lives
    // for the whole program run; headers are byte arrays (align 1).
    ptr_at::<T>(ctx, offset).map(|p| unsafe { &mut *p })
}

pub enum L4<'a> {
    Tcp(&'a mut TcpHdr),
    Udp(&'a mut UdpHdr),
}

/// An IPv4 TCP/UDP packet, not a fragment, with its headers in range.
pub struct Ipv4Packet<'a> {
    pub eth: &'a mut EthHdr,
    pub ip: &'a mut Ipv4Hdr,
    pub l4: L4<'a>,
    /// Frame length, for the byte counters.
    pub len: u64,
    /// Bytes from the IPv4 header to the end of the frame.
    ip_avail: u64,
    /// IPv4 header length in bytes.
    ihl_bytes: u64,
}

pub enum Parsed<'a> {
    Ipv4(Ipv4Packet<'a>),
    /// An ARP packet: passed, unless the data plane is fenced and it asks
    /// for a VIP.
    Arp(&'a ArpHdr),
    /// Decided while parsing: not ours, or broken.
    Done(Verdict),
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed<'_> {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Parsed::Done(Verdict::pass(Reason::PassShortEthernet));
    };
    match eth.ether_type() {
        EtherType::Ipv4 => {}
        EtherType::Arp => {
            return match header::<ArpHdr>(ctx, ETH_HDR_LEN) {
                Some(arp) => Parsed::Arp(arp),
                None => Parsed::Done(Verdict::pass(Reason::PassArp)),
            };
        }
        EtherType::Ipv6 => return Parsed::Done(Verdict::pass(Reason::PassIpv6)),
        EtherType::Other => return Parsed::Done(Verdict::pass(Reason::PassOtherEthertype)),
    }
    let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return Parsed::Done(Verdict::pass(Reason::PassMalformedIpv4));
    };
    if ip.version() != 4 || ip.ihl() < 5 {
        return Parsed::Done(Verdict::pass(Reason::PassMalformedIpv4));
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Done(Verdict::pass(Reason::PassNotService));
    }
    // Only the first fragment has ports; the kernel reassembles.
    if ip.is_fragment() {
        return Parsed::Done(Verdict::pass(Reason::PassFragment));
    }
    // IP options are carried along untouched: the L4 header starts after
    // them (IHL ≤ 15 words, so the offset is bounded for the verifier).
    let ihl_bytes = (ip.ihl() as usize & 0x0f) * 4;
    let l4_off = ETH_HDR_LEN + ihl_bytes;
    let Some(ports) = header::<[u8; 4]>(ctx, l4_off) else {
        return Parsed::Done(Verdict::pass(Reason::PassTruncatedL4));
    };
    let l4 = if ip.proto == PROTO_TCP {
        header::<TcpHdr>(ctx, l4_off).map(L4::Tcp)
    } else {
        header::<UdpHdr>(ctx, l4_off).map(L4::Udp)
    };
    let Some(l4) = l4 else {
        // Cut short after the ports: dropped if it claims to belong to a
        // service (it could only disturb that connection), else not ours.
        let key = ServiceKey {
            vip: ip.dst,
            port: [ports[2], ports[3]],
            proto: ip.proto,
            _pad: 0,
        };
        return Parsed::Done(if maps::is_service(&key) {
            Verdict::drop(Reason::DropMalformedL4)
        } else {
            Verdict::pass(Reason::PassNotService)
        });
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    Parsed::Ipv4(Ipv4Packet {
        eth,
        ip,
        l4,
        len,
        ip_avail: len - ETH_HDR_LEN as u64,
        ihl_bytes: ihl_bytes as u64,
    })
}

impl Ipv4Packet<'_> {
    #[inline(always)]
    pub fn sport(&self) -> [u8; 2] {
        match &self.l4 {
            L4::Tcp(t) => t.sport,
            L4::Udp(u) => u.sport,
        }
    }

    #[inline(always)]
    pub fn dport(&self) -> [u8; 2] {
        match &self.l4 {
            L4::Tcp(t) => t.dport,
            L4::Udp(u) => u.dport,
        }
    }

    /// TCP flags, 0 for UDP.
    #[inline(always)]
    pub fn tcp_flags(&self) -> u8 {
        match &self.l4 {
            L4::Tcp(t) => t.flags,
            L4::Udp(_) => 0,
        }
    }

    /// TCP sequence number (host order), 0 for UDP.
    #[inline(always)]
    pub fn tcp_seq(&self) -> u32 {
        match &self.l4 {
            L4::Tcp(t) => u32::from_be_bytes(t.seq),
            L4::Udp(_) => 0,
        }
    }

    /// TCP acknowledgment number (host order), 0 for UDP.
    #[inline(always)]
    pub fn tcp_ack(&self) -> u32 {
        match &self.l4 {
            L4::Tcp(t) => u32::from_be_bytes(t.ack),
            L4::Udp(_) => 0,
        }
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        matches!(self.l4, L4::Tcp(_))
    }

    /// Checks made only for packets we rewrite: lengths must agree with the
    /// packet, or the rewrite would forward garbage on a connection's behalf.
    #[inline(always)]
    pub fn validate(&self) -> Result<(), Reason> {
        let tot = self.ip.total_len() as u64;
        if tot > self.ip_avail || tot < self.ihl_bytes {
            return Err(Reason::DropBadIpLength);
        }
        let l4_len = tot - self.ihl_bytes;
        match &self.l4 {
            L4::Tcp(t) => {
                let doff = (t.data_offset() as u64) * 4;
                if doff < 20 || doff > l4_len {
                    return Err(Reason::DropMalformedL4);
                }
                if t.flags == 0 {
                    return Err(Reason::DropTcpNoFlags);
                }
            }
            L4::Udp(u) => {
                // The header was read from the frame, but the datagram the
                // IPv4 length describes must hold it too: else its ports
                // (the flow's key) lie in the Ethernet padding, and the
                // rewrite would write past the datagram. Found by the fuzzer.
                if l4_len < 8 {
                    return Err(Reason::DropMalformedL4);
                }
                if u16::from_be_bytes(u.len) as u64 != l4_len {
                    return Err(Reason::DropBadUdpLength);
                }
            }
        }
        Ok(())
    }
}
