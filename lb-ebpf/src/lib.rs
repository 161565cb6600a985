//! The xdplb data plane: one XDP program, read top to bottom as the
//! packet's path:
//!
//! parse → look up the flow (either direction) → for none, a half-open
//! TCP connection (embryo.rs)? → for none, is it a new connection to a
//! service? pick a backend (Maglev), make a half-open connection (TCP) or
//! the flow (UDP) → rewrite + checksums → forward (next hop cached in the
//! flow). A TCP connection's flow is made when its handshake completes.
//!
//! Every verdict carries a [`Reason`], counted in one place. The program
//! only looks things up: the agent computes services, backends and Maglev
//! tables and writes the maps.
#![no_std]
// Map keys and values go to the helpers by reference: by value, each
// would first be copied onto the verifier's 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

pub mod conntrack;
pub mod embryo;
pub mod flowlog;
pub mod forward;
pub mod maps;
pub mod parse;
pub mod rewrite;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    flow::{DIR_FORWARD, FLOW_LOCAL, Flow, FlowKey},
    service::{BACKEND_LOCAL, DataplaneConfig, Service, ServiceKey},
    stats::Reason,
    wire::{ArpHdr, TCP_ACK, TCP_RST, TCP_SYN},
};

use crate::{
    conntrack::FlowRef,
    embryo::{EmbryoRef, Step},
    forward::Hop,
    parse::{Ipv4Packet, Parsed},
};

/// What the program does with a packet (an XDP action), and why (a
/// [`Reason`]), in one register.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Verdict(u64);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, reason: Reason) -> Self {
        Verdict(((reason as u64) << 32) | action as u64)
    }
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict::new(xdp_action::XDP_PASS, reason)
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict::new(xdp_action::XDP_DROP, reason)
    }
    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 as u32
    }
    /// The reason's index in REASON_STATS.
    #[inline(always)]
    pub const fn reason(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What the entry program does: the packet path, its reason counted, its
/// action returned. The benchmark wrappers run exactly this.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let verdict = process(ctx);
    maps::count_reason(verdict.reason(), len);
    verdict.action()
}

/// The whole packet path, up to its verdict.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Verdict {
    let mut pkt = match parse::parse(ctx) {
        Parsed::Ipv4(pkt) => pkt,
        Parsed::Arp(arp) => return arp_verdict(arp),
        Parsed::Done(verdict) => return verdict,
    };
    let Some(config) = maps::config() else {
        return Verdict::pass(Reason::PassNotService);
    };
    // The node's own traffic (ssh, kubelet, ...) to the address NAT uses,
    // outside the NAT ports: not ours, and told apart without a lookup.
    let dport = u16::from_be_bytes(pkt.dport());
    if pkt.ip.dst == config.snat_ip && (dport < config.nat_port_min || dport > config.nat_port_max)
    {
        return Verdict::pass(Reason::PassNotService);
    }
    // The clock, read once for the whole path: the heartbeat check, the
    // flow's stamp and the next hop's age.
    let now = conntrack::now();
    // The agent's word, unless it has gone silent (VRRP heartbeat).
    let active = config.active(now);

    let now = Now {
        t: now,
        second: u64::from(config.ticks_per_s),
        active,
    };
    // Established, either direction: one lookup has all the packet needs.
    // The packet's 5-tuple, the key of every lookup below, is read once.
    let key = conntrack::key_of(&pkt);
    let mut flow = conntrack::entry(&key);
    // Else half-open, either direction (TCP only: UDP has no handshake);
    // a packet that completes the handshake finds its flow made.
    if flow.is_none()
        && pkt.is_tcp()
        && let Some(entry) = embryo::lookup(&key)
    {
        match half_open(ctx, &mut pkt, &key, entry, &now) {
            HalfOpen::Done(verdict) => return verdict,
            HalfOpen::Promoted => flow = conntrack::entry(&key),
            // Gone: the SYN goes on as a new connection's.
            HalfOpen::Reopen => {}
        }
    }
    if let Some(entry) = flow {
        return established(ctx, &mut pkt, entry, &now);
    }

    // A client → VIP:port packet opening a connection to a virtual service?
    let service_key = ServiceKey {
        vip: pkt.ip.dst,
        port: pkt.dport(),
        proto: pkt.ip.proto,
        _pad: 0,
    };
    let Some(service) = maps::service(&service_key) else {
        return Verdict::pass(Reason::PassNotService);
    };
    if !active {
        // A backup never NATs VIP traffic: the active node owns it.
        return Verdict::pass(Reason::PassNotActive);
    }
    new_connection(ctx, &mut pkt, &key, &service, &config, now.t)
}

/// ARP passes to the kernel, which answers for the node's addresses (the
/// VIP included, while this node is master). Once the agent's heartbeat is
/// stale the VIP may already belong to another node: requests for it are
/// dropped, so only the new master answers.
#[inline(always)]
fn arp_verdict(arp: &ArpHdr) -> Verdict {
    let Some(config) = maps::config() else {
        return Verdict::pass(Reason::PassArp);
    };
    if config.fenced(conntrack::now()) && arp.is_ipv4_request() && maps::is_vip(&arp.tpa) {
        return Verdict::drop(Reason::DropArpFenced);
    }
    Verdict::pass(Reason::PassArp)
}

/// A packet of a flow in FLOWS: client → VIP rewritten to SNAT → backend,
/// or backend → SNAT rewritten back to VIP → client.
///
/// `entry` is shared with other CPUs and the agent: the packet is handled
/// from one copy of it, and the only writes back are `touch` and
/// `cache_hop` (see conntrack::FlowRef for the races they tolerate).
#[inline(always)]
fn established(ctx: &XdpContext, pkt: &mut Ipv4Packet, entry: FlowRef, now: &Now) -> Verdict {
    let Now {
        t: now,
        second,
        active,
        ..
    } = *now;
    let flow = entry.read();
    let to_backend = flow.dir == DIR_FORWARD;
    if to_backend && !active {
        // Demoted: the new master carries on (same Maglev choice); replies
        // to connections NATed here still come back here and are served.
        return Verdict::pass(Reason::PassNotActive);
    }
    if let Err(reason) = pkt.validate() {
        return Verdict::drop(reason);
    }
    entry.touch(&flow, pkt.tcp_flags(), now, second);
    if flow.flags & FLOW_LOCAL != 0 {
        return Verdict::pass(Reason::PassLocalBackend);
    }
    maps::count_backend(flow.backend, pkt.len);
    if to_backend {
        maps::count_service(flow.service, pkt.len);
    }
    rewrite::nat(pkt, &flow);
    let hop = match forward::next_hop(ctx, pkt, &flow, now, second) {
        Ok(Hop::Cached(hop)) => hop,
        Ok(Hop::Fresh(hop)) => {
            entry.cache_hop(hop, now, flow.hop_at);
            hop
        }
        Err(reason) => return Verdict::pass(reason),
    };
    forward::send(ctx, pkt, hop, to_backend)
}

/// The clock for this packet, and whether this node NATs new traffic.
#[derive(Clone, Copy)]
pub struct Now {
    /// Jiffies, read once per packet.
    pub t: u64,
    /// Ticks per second (DataplaneConfig::ticks_per_s).
    pub second: u64,
    pub active: bool,
}

/// What [`half_open`] did with a packet.
enum HalfOpen {
    Done(Verdict),
    /// It completed the handshake: handle it as established.
    Promoted,
    /// A SYN whose half-open connection lost its NAT port: a new one.
    Reopen,
}

/// A packet of a half-open TCP connection (embryo.rs): the handshake's
/// steps are recorded, the connection promoted to FLOWS once it proves
/// real, and meanwhile packets are rewritten from the embryo (no state
/// written per packet, the next hop looked up when not cached).
#[inline(always)]
fn half_open(
    ctx: &XdpContext,
    pkt: &mut Ipv4Packet,
    key: &FlowKey,
    entry: EmbryoRef,
    now: &Now,
) -> HalfOpen {
    let emb = entry.read();
    let to_backend = emb.flow.dir == DIR_FORWARD;
    if to_backend && !now.active {
        return HalfOpen::Done(Verdict::pass(Reason::PassNotActive));
    }
    if let Err(reason) = pkt.validate() {
        return HalfOpen::Done(Verdict::drop(reason));
    }
    let flags = pkt.tcp_flags();
    let step = if flags & TCP_RST != 0 {
        embryo::reset(key, entry);
        Step::Forward
    } else if to_backend {
        if flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
            embryo::client_ack(key, entry, pkt.tcp_ack(), now)
        } else if flags & TCP_SYN != 0 {
            embryo::client_syn(key, entry)
        } else {
            Step::Forward
        }
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        embryo::backend_synack(key, entry, &emb, pkt.tcp_seq(), pkt.tcp_ack())
    } else {
        embryo::backend_other(key, entry, &emb, now)
    };
    match step {
        Step::Forward => {}
        Step::Stop(verdict) => return HalfOpen::Done(verdict),
        Step::ResetBackend => {
            rewrite::reset_to_sender(pkt);
            return HalfOpen::Done(Verdict::new(xdp_action::XDP_TX, Reason::TxResetBackend));
        }
        Step::Promoted => return HalfOpen::Promoted,
        Step::Reopen => return HalfOpen::Reopen,
    }
    let flow = emb.flow;
    maps::count_backend(flow.backend, pkt.len);
    if to_backend {
        maps::count_service(flow.service, pkt.len);
    }
    rewrite::nat(pkt, &flow);
    let hop = match forward::next_hop(ctx, pkt, &flow, now.t, now.second) {
        Ok(Hop::Cached(hop) | Hop::Fresh(hop)) => hop,
        Err(reason) => return HalfOpen::Done(Verdict::pass(reason)),
    };
    HalfOpen::Done(forward::send(ctx, pkt, hop, to_backend))
}

/// The first packet of a connection: pick a backend, make the half-open
/// connection (TCP) or the flow (UDP), rewrite, send. `service` and
/// `config`: this packet's copies.
#[inline(always)]
fn new_connection(
    ctx: &XdpContext,
    pkt: &mut Ipv4Packet,
    key: &FlowKey,
    service: &Service,
    config: &DataplaneConfig,
    now: u64,
) -> Verdict {
    if let Err(reason) = pkt.validate() {
        return Verdict::drop(reason);
    }
    let tcp = pkt.is_tcp();
    if tcp && pkt.tcp_flags() & TCP_RST != 0 {
        // Resets nothing we know: no state for it (an RST flood costs
        // two lookups a packet).
        return Verdict::drop(Reason::DropRstNoFlow);
    }
    let choice = match conntrack::choose(key, service) {
        Ok(choice) => choice,
        Err(verdict) => return verdict,
    };
    if choice.backend.flags & BACKEND_LOCAL != 0 {
        return conntrack::create_local(pkt, &choice, config, now);
    }
    // TCP: half-open until its handshake completes. UDP: straight into
    // FLOWS.
    let made = if tcp {
        embryo::open(ctx, pkt, &choice, config, now)
    } else {
        conntrack::create(ctx, pkt, &choice, config, now)
    };
    match made {
        Ok(flow) => send_new(ctx, pkt, &flow, config, now),
        Err(verdict) => verdict,
    }
}

/// A new connection's first packet, rewritten by its forward half `flow`.
#[inline(always)]
fn send_new(
    ctx: &XdpContext,
    pkt: &mut Ipv4Packet,
    flow: &Flow,
    config: &DataplaneConfig,
    now: u64,
) -> Verdict {
    maps::count_backend(flow.backend, pkt.len);
    maps::count_service(flow.service, pkt.len);
    rewrite::nat(pkt, flow);
    let second = u64::from(config.ticks_per_s);
    // The forward half has the FIB's answer already; when it had none, the
    // flow's next packet asks again (and caches it).
    let hop = match forward::next_hop(ctx, pkt, flow, now, second) {
        Ok(Hop::Cached(hop) | Hop::Fresh(hop)) => hop,
        Err(reason) => return Verdict::pass(reason),
    };
    forward::send(ctx, pkt, hop, true)
}
