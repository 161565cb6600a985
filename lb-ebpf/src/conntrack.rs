//! Connection tracking: one hash, two entries per NATed connection
//! (client→VIP, and backend→SNAT for its replies), so every packet of a
//! connection goes to the same backend whatever happens to the backend set.
//! Only the TCP flags ageing needs are recorded; the agent ages flows.

use core::ptr::{NonNull, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::generated::bpf_jiffies64,
    programs::XdpContext,
};
use lb_common::{
    flow::{
        DIR_FORWARD, DIR_REPLY, FLOW_LOCAL, Flow, FlowKey, NAT_PORT_TRIES, NextHop, SEEN_ACK,
        SEEN_FIN, SEEN_RST, SEEN_SYN, flow_hash, nat_choice,
    },
    service::{Backend, DataplaneConfig, Service},
    stats::Reason,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    Verdict, flowlog, forward,
    maps::{self, FLOWS},
    parse::Ipv4Packet,
};

#[inline(always)]
pub fn key_of(pkt: &Ipv4Packet) -> FlowKey {
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
pub fn seen_bits(tcp_flags: u8) -> u8 {
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

/// The data plane's clock (lb_common::clock): jiffies, read once per
/// packet and handed to whoever needs it (flow ageing, the next-hop
/// cache). The verifier inlines this helper into a load; a clocksource
/// read costs a helper call, 20-50 ns a packet in a VM.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_jiffies64() }
}

/// A FLOWS entry this packet found: a pointer, never a `&mut Flow`.
///
/// The entry is shared memory. Other CPUs may run this program on packets
/// of the same half and write the same fields (RSS keeps a direction on one
/// queue only until its indirection table changes, and a veth runs XDP on
/// whichever CPU sent the frame); the agent deletes entries while we hold
/// the pointer; and FLOWS is preallocated, so a deleted element goes
/// straight back to the free list (kernel/bpf/hashtab.c, free_htab_elem →
/// pcpu_freelist_push) and another CPU's insert may fill it with another
/// connection while we still use it. RCU keeps the memory mapped until we
/// return, not its contents ours. A `&mut` would tell the compiler nobody
/// else touches it, so it could read a field twice and see two values, or
/// fold our writes together.
///
/// So, as C programs do with READ_ONCE/WRITE_ONCE (Cilium's conntrack:
/// `__ct_update_timeout`): the packet path copies the entry out once
/// ([`FlowRef::read`]) and decides everything on that copy, and writes
/// single fields with volatile stores, aligned stores of 1, 4 (the hop's
/// four words) or 8 bytes that no CPU sees half done. The races left are
/// tolerated:
///
/// - Two CPUs stamping `last_seen`: both write a clock reading of this
///   second; the earlier may win, which ages the flow a tick early.
/// - Two CPUs adding `tcp_seen` bits: a read-modify-write, so one CPU's
///   bit can be lost; the next packet carrying that flag sets it again
///   (`touch` writes whenever the copy lacks a bit), and meanwhile the
///   flow only ages by the timeout of the state before.
/// - Two CPUs refreshing the next hop: both write what the FIB said a
///   moment ago. A reader may pair one `hop_at` with the other's `hop`,
///   or see a MAC half old, half new; a zero `hop` (never cached) has
///   ifindex 0, which no redirect accepts, so that packet goes to the
///   kernel (`PassFibOther`). At worst one packet is lost and retransmitted.
/// - The entry deleted, or reused for another connection, between the
///   lookup and our writes: this one packet is rewritten from the copy
///   (the connection it was looked up for, or, if the copy was torn, a
///   mix whose checksums still match what was written), and our writes
///   land in the new connection's entry: a `last_seen` of now (it was just
///   created), the flags of this packet, and, rarely, a next hop of this
///   packet's (`cache_hop` skips it unless `hop_at` is still what we read,
///   and a new entry's is its creation time or 0). The agent only deletes
///   flows idle past their timeout, so a packet arriving just then was
///   racing the expiry anyway.
#[derive(Clone, Copy)]
pub struct FlowRef(NonNull<Flow>);

impl FlowRef {
    /// The entry as it is now, read once, word by word (maps::read_once):
    /// everything the packet needs, so the path never reads the shared
    /// entry again. All seven words are used by an established packet.
    #[inline(always)]
    pub fn read(self) -> Flow {
        // SAFETY: a FLOWS value pointer from this run's lookup.
        unsafe { maps::read_once::<Flow, [u64; 7]>(self.0.as_ptr()) }
    }

    /// Records what ageing needs, writing the shared entry only when
    /// something changed (new flags, or `second` ticks have passed), so
    /// established traffic on several CPUs doesn't bounce its cache line.
    /// `flow`: this packet's copy of the entry.
    #[inline(always)]
    pub fn touch(self, flow: &Flow, tcp_flags: u8, t: u64, second: u64) {
        let p = self.0.as_ptr();
        let seen = seen_bits(tcp_flags);
        if flow.tcp_seen | seen != flow.tcp_seen {
            // Added to the entry as it is now, not to our copy, so bits
            // another CPU set since (or a reusing flow's own) are kept.
            // SAFETY: in the entry (see above); u8, so never misaligned.
            unsafe {
                let tcp_seen = &raw mut (*p).tcp_seen;
                write_volatile(tcp_seen, read_volatile(tcp_seen) | seen);
            }
        }
        if t.wrapping_sub(flow.last_seen) >= second {
            // SAFETY: as above; an aligned u64 (Flow is 8-aligned).
            unsafe { write_volatile(&raw mut (*p).last_seen, t) };
        }
    }

    /// Caches `hop`, looked up at `now`, for the packets after this one.
    /// `seen_at`: the `hop_at` of this packet's copy. Skipped when the
    /// entry's `hop_at` changed since: another CPU refreshed it first, or
    /// the entry now belongs to another connection. The hop goes in before
    /// its time (publish last), though with no barrier another CPU may
    /// still see the two in either order (see [`FlowRef`]).
    #[inline(always)]
    pub fn cache_hop(self, hop: NextHop, now: u64, seen_at: u64) {
        let p = self.0.as_ptr();
        // SAFETY: in the entry (see above); `hop_at` an aligned u64, `hop`
        // a 4-aligned struct at offset 36.
        unsafe {
            if read_volatile(&raw const (*p).hop_at) != seen_at {
                return;
            }
            write_volatile(&raw mut (*p).hop, hop);
            write_volatile(&raw mut (*p).hop_at, now);
        }
    }
}

/// The flow of the packet whose 5-tuple is `key`, either half: one
/// lookup serves the client → VIP and the backend → SNAT direction alike.
#[inline(always)]
pub fn entry(key: &FlowKey) -> Option<FlowRef> {
    FLOWS.get_ptr_mut(key).and_then(NonNull::new).map(FlowRef)
}

pub const EEXIST: i32 = 17;
pub const E2BIG: i32 = 7;

/// A new connection's backend, as Maglev picks it for the packet's tuple.
pub struct Choice {
    pub key: FlowKey,
    pub hash: u32,
    pub backend_id: u32,
    pub backend: Backend,
    /// The service's id (SERVICE_STATS index).
    pub service: u32,
}

/// The backend a new connection of `service` goes to: the Maglev slot of
/// its tuple's hash (the same on every node, so a node taking over picks
/// the same backend for the same tuple).
#[inline(always)]
pub fn choose(key: &FlowKey, service: &Service) -> Result<Choice, Verdict> {
    if service.table_size == 0 {
        return Err(Verdict::pass(Reason::PassNoBackend));
    }
    let key = *key;
    let hash = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto);
    let Some(backend_id) = maps::maglev_slot(service.table_base + hash % service.table_size) else {
        return Err(Verdict::pass(Reason::PassNoBackend));
    };
    let Some(backend) = maps::backend(backend_id) else {
        return Err(Verdict::pass(Reason::PassNoBackend));
    };
    Ok(Choice {
        key,
        hash,
        backend_id,
        backend,
        service: service.id,
    })
}

/// The `try_`th (SNAT address, NAT port) a connection with tuple hash
/// `hash` tries towards its backend: one draw from the pool's addresses ×
/// the port range (lb_common::flow::nat_choice).
#[inline(always)]
pub fn nat_candidate(config: &DataplaneConfig, hash: u32, try_: u32) -> ([u8; 4], [u8; 2]) {
    let (port_min, port_max) = (config.nat_port_min, config.nat_port_max);
    let span = (port_max as u32).saturating_sub(port_min as u32) + 1;
    let (addr, offset) = nat_choice(hash, try_, span, maps::snat_addrs(config));
    let port = (port_min as u32 + offset) as u16;
    (maps::snat_addr(config, addr), port.to_be_bytes())
}

/// The half that rewrites the backend's replies back to the client.
#[inline(always)]
pub fn reply_half(key: &FlowKey, choice: &Choice, t: u64) -> Flow {
    Flow {
        last_seen: t,
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        backend: choice.backend_id,
        service: choice.service,
        dir: DIR_REPLY,
        ..Flow::default()
    }
}

/// The half that rewrites the client's packets to `snat` → backend, with
/// its next hop resolved when the FIB knows it (so the connection's next
/// packet needs no lookup either; when it does not, `forward::send` hands
/// the packet to the kernel, and the next packet asks again).
#[inline(always)]
pub fn forward_half(
    ctx: &XdpContext,
    pkt: &Ipv4Packet,
    choice: &Choice,
    (snat, nat_port): ([u8; 4], [u8; 2]),
    t: u64,
) -> Flow {
    let backend = &choice.backend;
    let ingress = ctx.ingress_ifindex() as u32;
    let (hop, hop_at) = match forward::fib(
        ctx,
        ingress,
        snat,
        backend.ip,
        choice.key.proto,
        pkt.ip.tos,
        pkt.ip.total_len(),
    ) {
        Ok(hop) => (hop, t),
        Err(_) => (NextHop::default(), 0),
    };
    Flow {
        last_seen: t,
        hop_at,
        new_src: snat,
        new_dst: backend.ip,
        new_sport: nat_port,
        new_dport: backend.port,
        backend: choice.backend_id,
        service: choice.service,
        hop,
        tcp_seen: seen_bits(pkt.tcp_flags()),
        dir: DIR_FORWARD,
        flags: 0,
        _pad: 0,
    }
}

/// Stacked master: the local apiserver on *:6443 answers for the VIP
/// itself; the choice is remembered so the whole connection stays local.
/// The kernel's own SYN cookies guard its listener, so even a SYN makes
/// the flow at once. Always a pass.
#[inline(always)]
pub fn create_local(
    pkt: &Ipv4Packet,
    choice: &Choice,
    config: &DataplaneConfig,
    t: u64,
) -> Verdict {
    let flow = Flow {
        last_seen: t,
        backend: choice.backend_id,
        service: choice.service,
        tcp_seen: seen_bits(pkt.tcp_flags()),
        dir: DIR_FORWARD,
        flags: FLOW_LOCAL,
        ..Flow::default()
    };
    if FLOWS.insert(&choice.key, &flow, BPF_NOEXIST as u64).is_ok() {
        opened(choice, ([0; 4], [0; 2]), FLOW_LOCAL, config, t);
    }
    Verdict::pass(Reason::PassLocalBackend)
}

/// Counts a connection that has just gone into FLOWS and tells the flow
/// log, once per connection (where its entry goes in).
#[inline(always)]
pub fn opened(
    choice: &Choice,
    nat: ([u8; 4], [u8; 2]),
    flags: u8,
    config: &DataplaneConfig,
    t: u64,
) {
    maps::count_new_flow(choice.service, choice.backend_id);
    flowlog::opened(
        &choice.key,
        &choice.backend,
        nat,
        flags,
        t,
        config.ticks_per_s,
    );
}

/// A new connection straight into FLOWS (UDP: no handshake tells a real
/// client from a spoofed one): a free NAT port towards its backend, and
/// both halves. Returns the forward half. TCP goes through EMBRYOS first
/// (embryo.rs).
#[inline(always)]
pub fn create(
    ctx: &XdpContext,
    pkt: &Ipv4Packet,
    choice: &Choice,
    config: &DataplaneConfig,
    t: u64,
) -> Result<Flow, Verdict> {
    let key = &choice.key;
    let backend = &choice.backend;
    let reply = reply_half(key, choice, t);
    for i in 0..NAT_PORT_TRIES {
        let (snat, nat_port) = nat_candidate(config, choice.hash, i);
        let reply_key = FlowKey::reply_of(snat, backend.ip, nat_port, backend.port, key.proto);
        // NOEXIST: a port another connection to this backend holds is skipped.
        match FLOWS.insert(&reply_key, &reply, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => continue,
            Err(e) if e == -E2BIG => return Err(Verdict::drop(Reason::DropFlowTableFull)),
            Err(_) => return Err(aborted()),
        }
        let flow = forward_half(ctx, pkt, choice, (snat, nat_port), t);
        return match FLOWS.insert(key, &flow, BPF_NOEXIST as u64) {
            Ok(()) => {
                opened(choice, (snat, nat_port), 0, config, t);
                Ok(flow)
            }
            Err(e) => {
                // Give our port back; then either another CPU created this
                // flow a moment ago: follow theirs, or the table filled up
                // between the two inserts.
                let _ = FLOWS.remove(&reply_key);
                if e == -E2BIG {
                    return Err(Verdict::drop(Reason::DropFlowTableFull));
                }
                match entry(key) {
                    Some(theirs) => Ok(theirs.read()),
                    None => Err(aborted()),
                }
            }
        };
    }
    Err(Verdict::drop(Reason::DropNatPortsExhausted))
}

#[inline(always)]
pub fn aborted() -> Verdict {
    Verdict::new(xdp_action::XDP_ABORTED, Reason::AbortedMapUpdate)
}
