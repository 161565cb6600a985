//! Connection tracking: one LRU hash, two entries per NATed connection
//! (client→VIP, and backend→SNAT for its replies), so every packet of a
//! connection goes to the same backend whatever happens to the backend set.
//! Only the TCP flags ageing needs are recorded; the agent ages flows.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns};
use lb_common::{
    flow::{
        DIR_FORWARD, DIR_REPLY, FLOW_LOCAL, Flow, FlowKey, SEEN_ACK, SEEN_FIN, SEEN_RST, SEEN_SYN,
        TOUCH_INTERVAL_NS, flow_hash,
    },
    service::{BACKEND_LOCAL, Service},
    stats::Reason,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    Verdict,
    maps::{self, FLOWS},
    parse::Ipv4Packet,
};

/// NAT ports tried for a new flow before giving up. Each try is one
/// insert; with the port range at most half full, eight tries fail with
/// probability < 0.4%.
const NAT_PORT_TRIES: u32 = 8;
/// Step between tries: a prime, so probes spread over the whole range.
const NAT_PORT_STEP: u32 = 4099;

pub enum Lookup {
    Flow(Flow),
    Verdict(Verdict),
}

#[inline(always)]
fn key_of(pkt: &Ipv4Packet) -> FlowKey {
    FlowKey {
        src: pkt.ip.src,
        dst: pkt.ip.dst,
        sport: pkt.sport(),
        dport: pkt.dport(),
        proto: pkt.ip.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn seen_bits(tcp_flags: u8) -> u8 {
    let mut seen = 0;
    if tcp_flags & TCP_SYN != 0 {
        seen |= SEEN_SYN;
    }
    if tcp_flags & TCP_ACK != 0 {
        seen |= SEEN_ACK;
    }
    if tcp_flags & TCP_FIN != 0 {
        seen |= SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        seen |= SEEN_RST;
    }
    seen
}

/// The data plane's clock, read once per packet and handed to whoever needs
/// it (flow ageing, the next-hop cache). Coarse is enough for both and
/// cheaper than the precise clock; the agent compares against
/// CLOCK_MONOTONIC_COARSE.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Records what ageing needs, writing the shared entry only when something
/// changed (new flags, or a second has passed), so established traffic on
/// several CPUs doesn't bounce its cache line.
#[inline(always)]
fn touch(flow: &mut Flow, tcp_flags: u8, t: u64) {
    let seen = seen_bits(tcp_flags);
    if flow.tcp_seen | seen != flow.tcp_seen {
        flow.tcp_seen |= seen;
    }
    if t.wrapping_sub(flow.last_seen_ns) > TOUCH_INTERVAL_NS {
        flow.last_seen_ns = t;
    }
}

/// A backend's reply to a NAT port we handed out.
#[inline(always)]
pub fn reply(pkt: &Ipv4Packet, now: u64) -> Option<Flow> {
    let flow = FLOWS.get_ptr_mut(key_of(pkt))?;
    // SAFETY: a valid map value pointer; racing writers only set flag bits
    // and timestamps, which tolerate a lost update.
    let flow = unsafe { &mut *flow };
    if flow.dir != DIR_REPLY {
        return None;
    }
    touch(flow, pkt.tcp_flags(), now);
    Some(*flow)
}

/// A client → VIP packet: its flow, or a new one towards a Maglev-chosen backend.
#[inline(always)]
pub fn forward(
    pkt: &Ipv4Packet,
    service: &Service,
    snat_ip: [u8; 4],
    port_min: u16,
    port_max: u16,
    now: u64,
) -> Lookup {
    let key = key_of(pkt);
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in `reply`.
        let flow = unsafe { &mut *flow };
        touch(flow, pkt.tcp_flags(), now);
        if flow.flags & FLOW_LOCAL != 0 {
            return Lookup::Verdict(Verdict::pass(Reason::PassLocalBackend));
        }
        return Lookup::Flow(*flow);
    }
    new_flow(pkt, &key, service, snat_ip, port_min, port_max, now)
}

#[inline(always)]
fn new_flow(
    pkt: &Ipv4Packet,
    key: &FlowKey,
    service: &Service,
    snat_ip: [u8; 4],
    port_min: u16,
    port_max: u16,
    t: u64,
) -> Lookup {
    if service.table_size == 0 {
        return Lookup::Verdict(Verdict::pass(Reason::PassNoBackend));
    }
    let hash = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto);
    let Some(backend_id) = maps::maglev_slot(service.table_base + hash % service.table_size) else {
        return Lookup::Verdict(Verdict::pass(Reason::PassNoBackend));
    };
    let Some(backend) = maps::backend(backend_id) else {
        return Lookup::Verdict(Verdict::pass(Reason::PassNoBackend));
    };
    let seen = seen_bits(pkt.tcp_flags());

    if backend.flags & BACKEND_LOCAL != 0 {
        // Stacked master: the local apiserver on *:6443 answers for the VIP
        // itself; remember the choice so the whole connection stays local.
        let flow = Flow {
            last_seen_ns: t,
            backend: backend_id,
            service: service.id,
            tcp_seen: seen,
            dir: DIR_FORWARD,
            flags: FLOW_LOCAL,
            ..Flow::default()
        };
        if FLOWS.insert(key, &flow, BPF_NOEXIST as u64).is_ok() {
            maps::count_new_flow(service.id, backend_id);
        }
        return Lookup::Verdict(Verdict::pass(Reason::PassLocalBackend));
    }

    let reply = Flow {
        last_seen_ns: t,
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        backend: backend_id,
        service: service.id,
        tcp_seen: 0,
        dir: DIR_REPLY,
        flags: 0,
        _pad: 0,
    };
    let span = (port_max as u32).saturating_sub(port_min as u32) + 1;
    let start = hash.rotate_left(16);
    for i in 0..NAT_PORT_TRIES {
        let port = (port_min as u32 + (start.wrapping_add(i * NAT_PORT_STEP)) % span) as u16;
        let nat_port = port.to_be_bytes();
        let reply_key = FlowKey::reply_of(snat_ip, backend.ip, nat_port, backend.port, key.proto);
        // NOEXIST: a port another connection to this backend holds is skipped.
        if FLOWS
            .insert(&reply_key, &reply, BPF_NOEXIST as u64)
            .is_err()
        {
            continue;
        }
        let flow = Flow {
            last_seen_ns: t,
            new_src: snat_ip,
            new_dst: backend.ip,
            new_sport: nat_port,
            new_dport: backend.port,
            backend: backend_id,
            service: service.id,
            tcp_seen: seen,
            dir: DIR_FORWARD,
            flags: 0,
            _pad: 0,
        };
        if FLOWS.insert(key, &flow, BPF_NOEXIST as u64).is_err() {
            // Another CPU created this flow a moment ago (a retransmitted
            // SYN): give our port back and follow theirs.
            let _ = FLOWS.remove(&reply_key);
            // SAFETY: map lookup of a plain value.
            return match unsafe { FLOWS.get(key) } {
                Some(f) => Lookup::Flow(*f),
                None => Lookup::Verdict(Verdict {
                    action: aya_ebpf::bindings::xdp_action::XDP_ABORTED,
                    reason: Reason::AbortedMapUpdate,
                }),
            };
        }
        maps::count_new_flow(service.id, backend_id);
        return Lookup::Flow(flow);
    }
    Lookup::Verdict(Verdict::drop(Reason::DropNatPortsExhausted))
}
