//! The xdplb data plane: one XDP program, read top to bottom as the
//! packet's path:
//!
//! parse → look up the flow (either direction) → for none, is it a new
//! connection to a service? pick a backend (Maglev), create the flow (and
//! tell the flow log) → rewrite + checksums → forward (next hop cached in
//! the flow).
//!
//! Every verdict carries a [`Reason`], counted in one place. The program
//! only looks things up: the agent computes services, backends and Maglev
//! tables and writes the maps.
#![no_std]

pub mod conntrack;
pub mod flowlog;
pub mod forward;
pub mod maps;
pub mod parse;
pub mod rewrite;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    flow::{DIR_FORWARD, FLOW_LOCAL},
    service::{DataplaneConfig, Service, ServiceKey},
    stats::Reason,
    wire::ArpHdr,
};

use crate::{
    conntrack::FlowRef,
    forward::Hop,
    parse::{Ipv4Packet, Parsed},
};

/// What the program does with a packet, and why.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }
}

/// What the entry program does: the packet path, its reason counted, its
/// action returned. The benchmark wrappers run exactly this.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let verdict = process(ctx);
    maps::count_reason(verdict.reason, len);
    verdict.action
}

/// The whole packet path, up to its verdict.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Verdict {
    let pkt = match parse::parse(ctx) {
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

    // Established, either direction: one lookup has all the packet needs.
    let second = u64::from(config.ticks_per_s);
    if let Some(entry) = conntrack::lookup(&pkt) {
        return established(ctx, pkt, entry, active, now, second);
    }

    // A client → VIP:port packet opening a connection to a virtual service?
    let key = ServiceKey {
        vip: pkt.ip.dst,
        port: pkt.dport(),
        proto: pkt.ip.proto,
        _pad: 0,
    };
    let Some(service) = maps::service(&key) else {
        return Verdict::pass(Reason::PassNotService);
    };
    if !active {
        // A backup never NATs VIP traffic: the active node owns it.
        return Verdict::pass(Reason::PassNotActive);
    }
    new_connection(ctx, pkt, &service, &config, now)
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
/// or backend → SNAT rewritten back to VIP → client. `now`: the clock
/// (jiffies); `second`: its ticks per second (DataplaneConfig::ticks_per_s).
///
/// `entry` is shared with other CPUs and the agent: the packet is handled
/// from one copy of it, and the only writes back are `touch` and
/// `cache_hop` (see conntrack::FlowRef for the races they tolerate).
#[inline(always)]
fn established(
    ctx: &XdpContext,
    mut pkt: Ipv4Packet,
    entry: FlowRef,
    active: bool,
    now: u64,
    second: u64,
) -> Verdict {
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
    rewrite::nat(&mut pkt, &flow);
    let hop = match forward::next_hop(ctx, &pkt, &flow, now, second) {
        Ok(Hop::Cached(hop)) => hop,
        Ok(Hop::Fresh(hop)) => {
            entry.cache_hop(hop, now, flow.hop_at);
            hop
        }
        Err(reason) => return Verdict::pass(reason),
    };
    forward::send(ctx, &mut pkt, hop, to_backend)
}

/// The first packet of a connection: pick a backend, create both flow
/// halves, rewrite, send. `service` and `config`: this packet's copies.
#[inline(always)]
fn new_connection(
    ctx: &XdpContext,
    mut pkt: Ipv4Packet,
    service: &Service,
    config: &DataplaneConfig,
    now: u64,
) -> Verdict {
    if let Err(reason) = pkt.validate() {
        return Verdict::drop(reason);
    }
    let flow = match conntrack::create(ctx, &pkt, service, config, now) {
        Ok(flow) => flow,
        Err(verdict) => return verdict,
    };
    maps::count_backend(flow.backend, pkt.len);
    maps::count_service(flow.service, pkt.len);
    rewrite::nat(&mut pkt, &flow);
    let second = u64::from(config.ticks_per_s);
    // `create` put the FIB's answer in the entry already; when it had none,
    // the flow's next packet asks again (and caches it).
    let hop = match forward::next_hop(ctx, &pkt, &flow, now, second) {
        Ok(Hop::Cached(hop) | Hop::Fresh(hop)) => hop,
        Err(reason) => return Verdict::pass(reason),
    };
    forward::send(ctx, &mut pkt, hop, true)
}
