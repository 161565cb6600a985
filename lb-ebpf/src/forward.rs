//! Sending a rewritten packet: next hop from the kernel's FIB, XDP_TX when
//! it leaves by the interface it came in on, XDP_REDIRECT (devmap)
//! otherwise, and the kernel's own forwarding when XDP cannot finish the job.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    flow::{NEXT_HOP_TTL_NS, NextHop},
    stats::Reason,
};

use crate::{
    Verdict,
    maps::{NEXT_HOPS, TX_PORTS},
    parse::Ipv4Packet,
};

const AF_INET: u8 = 2;

/// `to_backend`: the packet goes client → backend (for the counters).
#[inline(always)]
/// `now`: the packet's clock reading (conntrack::now).
pub fn send(ctx: &XdpContext, pkt: &mut Ipv4Packet, to_backend: bool, now: u64) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = match next_hop(ctx, pkt, ingress, now) {
        Ok(hop) => hop,
        Err(reason) => return Verdict::pass(reason),
    };
    pkt.eth.src = hop.smac;
    pkt.eth.dst = hop.dmac;
    if hop.ifindex == ingress {
        let reason = if to_backend {
            Reason::TxForward
        } else {
            Reason::TxReply
        };
        return Verdict {
            action: xdp_action::XDP_TX,
            reason,
        };
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => {
            let reason = if to_backend {
                Reason::RedirectForward
            } else {
                Reason::RedirectReply
            };
            Verdict { action, reason }
        }
        // Not an interface the agent registered: let the kernel route it.
        Err(_) => Verdict::pass(Reason::PassFibOther),
    }
}

/// The next hop towards the packet's (rewritten) destination: from the
/// NEXT_HOPS cache while fresh, else from the FIB, which refills the cache.
///
/// The cache is keyed by destination alone: xdplb's packets always leave
/// from the node's own addresses, so source-based policy routing is not a
/// case it serves. The FIB's MTU check runs only on a cache miss; a NATed
/// packet is never larger than the one that arrived.
#[inline(always)]
fn next_hop(ctx: &XdpContext, pkt: &Ipv4Packet, ingress: u32, now: u64) -> Result<NextHop, Reason> {
    if let Some(hop) = NEXT_HOPS.get_ptr(pkt.ip.dst) {
        // SAFETY: a valid map value; a racing refresh rewrites it whole with
        // equally valid data.
        let hop = unsafe { *hop };
        if now.wrapping_sub(hop.resolved_ns) < NEXT_HOP_TTL_NS {
            return Ok(hop);
        }
    }
    // SAFETY: FibParams is a plain C struct; all-zero is its documented
    // "no options" state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = pkt.ip.proto;
    fib.__bindgen_anon_1.tot_len = pkt.ip.total_len();
    fib.__bindgen_anon_2.tos = pkt.ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(pkt.ip.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(pkt.ip.dst);
    fib.ifindex = ingress;
    // SAFETY: ctx and fib are valid for the call; the size is the struct's.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // The packet is already rewritten: the kernel forwards it like any
        // routed packet (the agent enables forwarding and accept_local on
        // the interface) and resolves the neighbour on the way, so the
        // first packet to a not-yet-resolved next hop is delayed, not lost.
        return Err(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            Reason::PassNoNeigh
        } else {
            Reason::PassFibOther
        });
    }
    let hop = NextHop {
        resolved_ns: now,
        ifindex: fib.ifindex,
        smac: fib.smac,
        dmac: fib.dmac,
    };
    // A full cache evicts its oldest entry; failing to cache costs only speed.
    let _ = NEXT_HOPS.insert(pkt.ip.dst, hop, 0);
    Ok(hop)
}
