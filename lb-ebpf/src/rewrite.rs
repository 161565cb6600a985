//! The NAT rewrite: replace the 4-tuple and patch both checksums
//! incrementally (RFC 1624; the arithmetic lives in lb_common::csum).

use lb_common::{csum, flow::Flow};

use crate::parse::{Ipv4Packet, L4};

#[inline(always)]
pub fn nat(pkt: &mut Ipv4Packet, flow: &Flow) {
    let (old_src, old_dst) = (pkt.ip.src, pkt.ip.dst);
    let ip = &mut *pkt.ip;
    ip.check = csum::replace_u32(ip.check, old_src, flow.new_src);
    ip.check = csum::replace_u32(ip.check, old_dst, flow.new_dst);
    ip.src = flow.new_src;
    ip.dst = flow.new_dst;
    // The L4 checksum covers the pseudo-header addresses and the ports.
    match &mut pkt.l4 {
        L4::Tcp(t) => {
            let mut c = csum::replace_u32(t.check, old_src, flow.new_src);
            c = csum::replace_u32(c, old_dst, flow.new_dst);
            c = csum::replace_u16(c, t.sport, flow.new_sport);
            t.check = csum::replace_u16(c, t.dport, flow.new_dport);
            t.sport = flow.new_sport;
            t.dport = flow.new_dport;
        }
        L4::Udp(u) => {
            // A zero UDP checksum means "none" and stays zero.
            let mut c = csum::replace_u32_udp(u.check, old_src, flow.new_src);
            c = csum::replace_u32_udp(c, old_dst, flow.new_dst);
            c = csum::replace_u16_udp(c, u.sport, flow.new_sport);
            u.check = csum::replace_u16_udp(c, u.dport, flow.new_dport);
            u.sport = flow.new_sport;
            u.dport = flow.new_dport;
        }
    }
}
