//! The NAT rewrite: replace the 4-tuple and patch both checksums
//! incrementally (RFC 1624; the arithmetic lives in lb_common::csum).

use lb_common::{csum, flow::Flow, wire::TCP_RST};

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

/// Turns a backend's TCP packet into an RST back to the backend, from the
/// address and port it was sent to. What a backend gets when it answers a
/// new connection's SYN as if the NAT port still carried an older,
/// half-open one (a SYN flood's, whose port was reclaimed): its SYN-ACK
/// retransmission, or the challenge ACK a SYN of another sequence space
/// draws. The RST's sequence number is the packet's acknowledgment number,
/// exactly what the backend expects next, so the backend drops its stale
/// connection, and the client's retransmitted SYN then opens the new one.
///
/// Swapping the addresses and the ports leaves both checksums as they are
/// (a ones' complement sum does not depend on the order of its words);
/// sequence, acknowledgment and flags are patched in.
#[inline(always)]
pub fn reset_to_sender(pkt: &mut Ipv4Packet) {
    let L4::Tcp(t) = &mut pkt.l4 else {
        return;
    };
    let ip = &mut *pkt.ip;
    core::mem::swap(&mut ip.src, &mut ip.dst);
    core::mem::swap(&mut t.sport, &mut t.dport);
    let seq = t.ack;
    let mut c = csum::replace_u32(t.check, t.seq, seq);
    c = csum::replace_u32(c, t.ack, [0; 4]);
    t.check = csum::replace_u16(c, [t.doff, t.flags], [t.doff, TCP_RST]);
    t.seq = seq;
    t.ack = [0; 4];
    t.flags = TCP_RST;
    let eth = &mut *pkt.eth;
    core::mem::swap(&mut eth.src, &mut eth.dst);
}
