//! The xdplb data plane: one XDP program, read top to bottom as the
//! packet's path:
//!
//! parse → classify (service? reply to a NATed flow?) → look up the flow →
//! pick a backend (Maglev) for a new one → rewrite + checksums → forward.
//!
//! Every verdict carries a [`Reason`], counted in one place. The program
//! only looks things up: the agent computes services, backends and Maglev
//! tables and writes the maps.
#![no_std]

pub mod conntrack;
pub mod forward;
pub mod maps;
pub mod parse;
pub mod rewrite;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    service::{CONFIG_ACTIVE, ServiceKey},
    stats::Reason,
};

use crate::{
    conntrack::Lookup,
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
        Parsed::Done(verdict) => return verdict,
    };
    let Some(config) = maps::config() else {
        return Verdict::pass(Reason::PassNotService);
    };

    // A client → VIP:port packet of a virtual service?
    let key = ServiceKey {
        vip: pkt.ip.dst,
        port: pkt.dport(),
        proto: pkt.ip.proto,
        _pad: 0,
    };
    if let Some(service) = maps::service(&key) {
        if config.flags & CONFIG_ACTIVE == 0 {
            // A backup never NATs VIP traffic: the active node owns it.
            return Verdict::pass(Reason::PassNotActive);
        }
        return to_backend(
            ctx,
            pkt,
            service,
            config.snat_ip,
            config.nat_port_min,
            config.nat_port_max,
        );
    }

    // A backend's reply to one of our NAT ports?
    let dport = u16::from_be_bytes(pkt.dport());
    if pkt.ip.dst == config.snat_ip && dport >= config.nat_port_min && dport <= config.nat_port_max
    {
        let now = conntrack::now();
        if let Some(flow) = conntrack::reply(&pkt, now) {
            return to_client(ctx, pkt, flow, now);
        }
    }
    Verdict::pass(Reason::PassNotService)
}

/// Client → VIP: find or create the flow, rewrite to SNAT → backend, send.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    mut pkt: Ipv4Packet,
    service: &lb_common::service::Service,
    snat_ip: [u8; 4],
    port_min: u16,
    port_max: u16,
) -> Verdict {
    if let Err(reason) = pkt.validate() {
        return Verdict::drop(reason);
    }
    let now = conntrack::now();
    let flow = match conntrack::forward(&pkt, service, snat_ip, port_min, port_max, now) {
        Lookup::Flow(flow) => flow,
        Lookup::Verdict(v) => return v,
    };
    maps::count_backend(flow.backend, pkt.len);
    maps::count_service(flow.service, pkt.len);
    rewrite::nat(&mut pkt, &flow);
    forward::send(ctx, &mut pkt, true, now)
}

/// Backend → SNAT:port: rewrite back to VIP → client, send.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    mut pkt: Ipv4Packet,
    flow: lb_common::flow::Flow,
    now: u64,
) -> Verdict {
    if let Err(reason) = pkt.validate() {
        return Verdict::drop(reason);
    }
    maps::count_backend(flow.backend, pkt.len);
    rewrite::nat(&mut pkt, &flow);
    forward::send(ctx, &mut pkt, false, now)
}
