//! Sending a rewritten packet: the next hop cached in its flow, or the
//! kernel's FIB; XDP_TX when it leaves by the interface it came in on,
//! XDP_REDIRECT (devmap) otherwise, and the kernel's own forwarding when
//! XDP cannot finish the job.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    flow::{Flow, NextHop},
    stats::Reason,
};

use crate::{
    Verdict,
    maps::{self, TX_PORTS},
    parse::Ipv4Packet,
};

const AF_INET: u8 = 2;

/// Where a packet leaves, and whether the flow should remember it.
pub enum Hop {
    /// The flow's own, looked up less than a second ago.
    Cached(NextHop),
    /// Just asked of the FIB: the caller caches it in the flow.
    Fresh(NextHop),
}

/// The next hop of `pkt`, already rewritten by `flow`: the one `flow`
/// caches while it is younger than `second` ticks at `now` (the packet's
/// clock reading, conntrack::now), else the FIB's.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    pkt: &Ipv4Packet,
    flow: &Flow,
    now: u64,
    second: u64,
) -> Result<Hop, Reason> {
    if flow.hop_at != 0 && now.wrapping_sub(flow.hop_at) < second {
        return Ok(Hop::Cached(flow.hop));
    }
    let ip = &pkt.ip;
    let ingress = ctx.ingress_ifindex() as u32;
    fib(
        ctx,
        ingress,
        ip.src,
        ip.dst,
        ip.proto,
        ip.tos,
        ip.total_len(),
    )
    .map(Hop::Fresh)
}

/// Sends `pkt`, already rewritten, to `hop`. `to_backend`: the packet goes
/// client → backend (for the counters).
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &mut Ipv4Packet, hop: NextHop, to_backend: bool) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    pkt.eth.src = hop.smac;
    pkt.eth.dst = hop.dmac;
    if hop.ifindex == ingress {
        let reason = if to_backend {
            Reason::TxForward
        } else {
            Reason::TxReply
        };
        return Verdict::new(xdp_action::XDP_TX, reason);
    }
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(action) => {
            let reason = if to_backend {
                Reason::RedirectForward
            } else {
                Reason::RedirectReply
            };
            Verdict::new(action, reason)
        }
        // Not an interface the agent registered: let the kernel route it.
        Err(_) => Verdict::pass(Reason::PassFibOther),
    }
}

/// The next hop of a packet `src` → `dst` that came in on `ingress`, from
/// the kernel's FIB (routes and neighbours).
///
/// Flows cache the answer keyed by nothing but themselves: xdplb's packets
/// always leave from the node's own addresses, so source-based policy
/// routing is not a case it serves. The FIB's MTU check runs only when the
/// cache is refreshed; a NATed packet is never larger than the one that
/// arrived.
#[inline(always)]
pub fn fib(
    ctx: &XdpContext,
    ingress: u32,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    tos: u8,
    tot_len: u16,
) -> Result<NextHop, Reason> {
    // In this CPU's scratch space, not on the stack (maps::Scratch).
    let Some(scratch) = maps::scratch() else {
        return Err(Reason::PassFibOther);
    };
    // SAFETY: this CPU's scratch, ours for the packet. FibParams is a
    // plain 64-byte C struct; all-zero is its documented "no options"
    // state. Eight u64 stores: `mem::zeroed` is compiled to a call of a
    // byte-wise memset subprogram.
    let fib: &mut FibParams = unsafe {
        let fib = &raw mut (*scratch).fib;
        fib.cast::<[u64; 8]>().write([0u64; 8]);
        &mut *fib
    };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    fib.ifindex = ingress;
    // SAFETY: ctx and fib are valid for the call; the size is the struct's.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib,
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
    Ok(NextHop {
        ifindex: fib.ifindex,
        smac: fib.smac,
        dmac: fib.dmac,
    })
}
