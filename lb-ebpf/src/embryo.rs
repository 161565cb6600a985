//! Half-open TCP connections (EMBRYOS): where a SYN's state lives until
//! the connection shows it is real, so that a spoofed flood cannot lock
//! clients out of the VIP.
//!
//! A SYN makes an embryo, both halves, in an LRU map of its own, and is
//! forwarded to the backend as any NATed packet is. The backend's SYN-ACK
//! is recorded (its ISN); the client's ACK of exactly that ISN + 1, which
//! a blind spoofer cannot know, moves both halves into FLOWS (promotion),
//! and from then on the connection is an ordinary flow. A packet of no
//! known connection that is not a SYN (a flow opened before a failover or
//! a restart, or an ACK flood) makes an embryo too, promoted when the
//! backend answers it with anything but an RST.
//!
//! What a flood can do to embryos, and why clients still get through:
//! - fill EMBRYOS: the kernel evicts the least recently used entries, a
//!   flood's; a client's embryo lives for its handshake's round trip;
//! - hold every NAT port of a backend: a new connection probes its
//!   NAT_PORT_TRIES candidates and, when none is free, takes the port of
//!   the oldest embryo among them (counted as `reclaimed`). Ports of
//!   FLOWS entries (established connections) are never taken.
//!
//! A reclaimed port may still carry the flood's half-open connection on
//! the backend. The backend then answers the new SYN for the old one (a
//! challenge ACK, or its SYN-ACK retransmission); the data plane turns
//! that answer into an RST back to the backend (rewrite::reset_to_sender),
//! and the client's retransmitted SYN, a second later, opens the new one
//! (anew, on another port, if this one was reclaimed again meanwhile).
//!
//! So a flood costs the backends its SYNs (their kernels answer with SYN
//! cookies) but never state that a legitimate connection needs. The
//! alternative weighed, SYN cookies in XDP, would keep the flood off the
//! backends too, but needs sequence-number translation for every packet
//! of every connection's life; see the README.

use core::ptr::{NonNull, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::XdpContext,
};
use lb_common::{
    flow::{EMBRYO_SYN, EMBRYO_SYNACK, Embryo, Flow, FlowKey, NAT_PORT_TRIES, SEEN_ACK, SEEN_SYN},
    service::DataplaneConfig,
    stats::{EmbryoStats, Reason},
    wire::TCP_SYN,
};

use crate::{
    Now, Verdict,
    conntrack::{self, Choice, E2BIG, EEXIST, aborted},
    flowlog,
    maps::{self, EMBRYOS, FLOWS, read_once},
    parse::Ipv4Packet,
};

/// An EMBRYOS entry this packet found. Shared as FLOWS entries are (see
/// conntrack::FlowRef): read once, and the only write is the SYN-ACK's.
#[derive(Clone, Copy)]
pub struct EmbryoRef(NonNull<Embryo>);

impl EmbryoRef {
    #[inline(always)]
    pub fn read(self) -> Embryo {
        // SAFETY: an EMBRYOS value pointer from this run's lookup.
        unsafe { read_once::<Embryo, [u64; 9]>(self.0.as_ptr()) }
    }

    /// The key of the other half (the reply half's for a forward half,
    /// and the other way round): the rewrite's 4-tuple turned around,
    /// read without copying the whole entry.
    #[inline(always)]
    fn other_key(self, proto: u8) -> FlowKey {
        let p = self.0.as_ptr();
        // SAFETY: in the entry; the rewrite's fields are three aligned
        // words at offsets 16, 20 and 24 of Flow.
        let (src, dst, ports) = unsafe {
            (
                read_volatile((&raw const (*p).flow.new_src).cast::<[u8; 4]>()),
                read_volatile((&raw const (*p).flow.new_dst).cast::<[u8; 4]>()),
                read_volatile((&raw const (*p).flow.new_sport).cast::<[u8; 4]>()),
            )
        };
        let [s0, s1, d0, d1] = ports;
        FlowKey::reply_of(src, dst, [s0, s1], [d0, d1], proto)
    }

    /// When the embryo was made.
    #[inline(always)]
    fn born(self) -> u64 {
        // SAFETY: in the entry; an aligned u64.
        unsafe { read_volatile(&raw const (*self.0.as_ptr()).flow.last_seen) }
    }

    /// The SYN-ACK's record: (state, ack_expect).
    #[inline(always)]
    fn synack(self) -> (u8, u32) {
        let p = self.0.as_ptr();
        // SAFETY: in the entry; aligned loads.
        unsafe {
            (
                read_volatile(&raw const (*p).state),
                read_volatile(&raw const (*p).ack_expect),
            )
        }
    }

    /// Readies the entry's flow for FLOWS (stamp and flags), so it can be
    /// inserted from where it lies, without a copy on the stack.
    #[inline(always)]
    fn ready(self, t: u64, seen: u8) -> &'static Flow {
        let p = self.0.as_ptr();
        // SAFETY: in the entry; aligned stores. The reference is to map
        // memory RCU keeps until the program returns, only passed to a
        // map update that copies it.
        unsafe {
            write_volatile(&raw mut (*p).flow.last_seen, t);
            write_volatile(&raw mut (*p).flow.tcp_seen, seen);
            &(*p).flow
        }
    }

    /// Records the backend's SYN-ACK in the reply half: the ACK number
    /// that will promote the connection. The number goes in before the
    /// flag that makes it valid.
    #[inline(always)]
    fn record_synack(self, ack_expect: u32, state: u8) {
        let p = self.0.as_ptr();
        // SAFETY: in the entry; aligned u32 and u8 stores.
        unsafe {
            write_volatile(&raw mut (*p).ack_expect, ack_expect);
            write_volatile(&raw mut (*p).state, state | EMBRYO_SYNACK);
        }
    }
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<EmbryoRef> {
    EMBRYOS
        .get_ptr_mut(key)
        .and_then(NonNull::new)
        .map(EmbryoRef)
}

/// The other half of the embryo at `key` (`half`), if it is still this
/// connection's: its NAT port may have been reclaimed by a newer one.
#[inline(always)]
fn partner(key: &FlowKey, half: EmbryoRef) -> Option<(FlowKey, EmbryoRef)> {
    let okey = half.other_key(key.proto);
    let other = lookup(&okey)?;
    (other.other_key(key.proto) == *key).then_some((okey, other))
}

/// A NAT source: (SNAT address, port), network order.
type Nat = ([u8; 4], [u8; 2]);

/// A new TCP connection (`pkt` is not an RST): an embryo, both halves,
/// with a NAT port towards the chosen backend. Returns the forward half.
#[inline(always)]
pub fn open(
    ctx: &XdpContext,
    pkt: &Ipv4Packet,
    choice: &Choice,
    config: &DataplaneConfig,
    t: u64,
) -> Result<Flow, Verdict> {
    let syn = pkt.tcp_flags() & TCP_SYN != 0;
    let state = if syn { EMBRYO_SYN } else { 0 };
    // Both halves are built in this CPU's scratch space (maps::Scratch),
    // one after the other: 72 bytes the stack has no room for.
    let Some(scratch) = maps::scratch() else {
        return Err(aborted());
    };
    // SAFETY: this CPU's scratch, ours for the packet.
    let half: &mut Embryo = unsafe { &mut (*scratch).embryo };
    *half = Embryo {
        flow: conntrack::reply_half(&choice.key, choice, t),
        syn_next: pkt.tcp_seq().wrapping_add(1),
        ack_expect: 0,
        state,
        _pad: [0; 7],
    };
    let backend = &choice.backend;
    let proto = choice.key.proto;
    // A free port, or else the one of the oldest embryo probed.
    let mut free = None;
    let mut oldest: Option<(FlowKey, Nat, u64)> = None;
    for i in 0..NAT_PORT_TRIES {
        let nat = conntrack::nat_candidate(config, choice.hash, i);
        let reply_key = FlowKey::reply_of(nat.0, backend.ip, nat.1, backend.port, proto);
        if conntrack::entry(&reply_key).is_some() {
            // An established connection's: never taken.
            continue;
        }
        match EMBRYOS.insert(&reply_key, &*half, BPF_NOEXIST as u64) {
            Ok(()) => {
                free = Some((reply_key, nat));
                break;
            }
            Err(e) if e == -EEXIST => {
                if let Some(theirs) = lookup(&reply_key) {
                    let born = theirs.born();
                    if oldest.is_none_or(|(_, _, b)| born < b) {
                        oldest = Some((reply_key, nat, born));
                    }
                }
            }
            Err(_) => return Err(aborted()),
        }
    }
    let (reply_key, nat) = match (free, oldest) {
        (Some(taken), _) => taken,
        (None, Some((reply_key, nat, _))) => {
            // Every port probed is held by a half-open connection, as under
            // a SYN flood: the oldest gives its port up. Its client's ACK
            // will find the reply half gone (drop_embryo_lost).
            if EMBRYOS.insert(&reply_key, &*half, BPF_ANY as u64).is_err() {
                return Err(aborted());
            }
            maps::count_embryo(|s: &mut EmbryoStats| &mut s.reclaimed);
            (reply_key, nat)
        }
        (None, None) => return Err(Verdict::drop(Reason::DropNatPortsExhausted)),
    };
    half.flow = conntrack::forward_half(ctx, pkt, choice, nat, t);
    half.syn_next = 0;
    match EMBRYOS.insert(&choice.key, &*half, BPF_NOEXIST as u64) {
        Ok(()) => {
            maps::count_embryo(|s: &mut EmbryoStats| &mut s.opened);
            Ok(half.flow)
        }
        Err(_) => {
            // Another CPU made this embryo a moment ago (a retransmitted
            // SYN): give our port back and follow theirs.
            let _ = EMBRYOS.remove(&reply_key);
            match lookup(&choice.key) {
                Some(theirs) => Ok(theirs.read().flow),
                None => Err(aborted()),
            }
        }
    }
}

/// What a packet of a half-open connection does to it.
pub enum Step {
    /// Forward it with the embryo's rewrite.
    Forward,
    /// The connection is in FLOWS now: handle the packet as established.
    Promoted,
    /// Drop or pass it instead.
    Stop(Verdict),
    /// The backend answered for an older connection on this NAT port:
    /// reset that one (rewrite::reset_to_sender).
    ResetBackend,
    /// The half-open connection is gone (its NAT port was reclaimed); the
    /// packet, a SYN, opens a new one.
    Reopen,
}

/// The client's ACK (no SYN, no RST) on the forward half `half` at `key`:
/// if it acknowledges the backend's SYN-ACK, the connection is real.
#[inline(always)]
pub fn client_ack(key: &FlowKey, half: EmbryoRef, ack: u32, now: &Now) -> Step {
    let Some((reply_key, reply)) = partner(key, half) else {
        // Our NAT port went to a newer connection (or the LRU evicted the
        // reply half): this connection can no longer complete.
        let _ = EMBRYOS.remove(key);
        return Step::Stop(Verdict::drop(Reason::DropEmbryoLost));
    };
    let (state, ack_expect) = reply.synack();
    if state & EMBRYO_SYNACK == 0 || ack_expect != ack {
        // Not the handshake's ACK (a spoofer's guess, or early): the
        // backend judges it.
        return Step::Forward;
    }
    promote(key, half, &reply_key, reply, SEEN_SYN | SEEN_ACK, now)
}

/// The client's SYN again (a retransmission) on the forward half `half` at
/// `key`: forwarded, unless its NAT port went to a newer connection while
/// the client waited; then the SYN opens the connection anew, on another
/// port.
#[inline(always)]
pub fn client_syn(key: &FlowKey, half: EmbryoRef) -> Step {
    if partner(key, half).is_some() {
        return Step::Forward;
    }
    let _ = EMBRYOS.remove(key);
    Step::Reopen
}

/// The backend's SYN-ACK on the reply half `entry` (read as `emb`) at
/// `key`: kept if it answers this connection's SYN; if it acknowledges
/// another, it is the backend's retransmission for an older connection
/// that had this NAT port, which the backend is told to drop.
///
/// The same SYN-ACK again is the backend's retransmission: the client has
/// not answered the first within the backend's retransmission timeout (a
/// second), as a spoofed source never does. The backend is told to drop
/// it and the port is free at once, so a flood's half-open connections
/// last a second on the backends, not the minute of their retries, and a
/// port the data plane hands out again is one the backend has let go. The
/// cost, when a real client's packet was lost: a SYN-ACK lost on its way
/// costs the client a second retransmission (3 s instead of 1 s); its
/// handshake ACK lost, with nothing sent after it (a protocol where the
/// server speaks first), the connection is reset. A client that sends
/// data (TLS, HTTP) completes the handshake with it.
#[inline(always)]
pub fn backend_synack(key: &FlowKey, entry: EmbryoRef, emb: &Embryo, seq: u32, ack: u32) -> Step {
    if emb.state & EMBRYO_SYN == 0 {
        return Step::Forward;
    }
    if ack != emb.syn_next {
        return Step::ResetBackend;
    }
    if emb.state & EMBRYO_SYNACK != 0 {
        reset(key, entry);
        return Step::ResetBackend;
    }
    entry.record_synack(seq.wrapping_add(1), emb.state);
    Step::Forward
}

/// Anything else but an RST from the backend, on the reply half `entry`
/// (read as `emb`) at `key`. Picked up mid-stream: the backend knows the
/// connection, so it is real (promoted). Opened by a SYN the backend has
/// not answered with a SYN-ACK yet: the backend speaks of an older
/// connection on this NAT port (a challenge ACK), which it is told to drop.
#[inline(always)]
pub fn backend_other(key: &FlowKey, entry: EmbryoRef, emb: &Embryo, now: &Now) -> Step {
    if emb.state & EMBRYO_SYN == 0 {
        return backend_answer(key, entry, now);
    }
    if emb.state & EMBRYO_SYNACK == 0 {
        return Step::ResetBackend;
    }
    Step::Forward
}

/// The backend's answer (not an RST) on the reply half `half` at `key` of
/// a connection picked up mid-stream: the backend knows it, so it is real.
#[inline(always)]
fn backend_answer(key: &FlowKey, half: EmbryoRef, now: &Now) -> Step {
    match partner(key, half) {
        Some((fwd_key, fwd)) => promote(&fwd_key, fwd, key, half, SEEN_ACK, now),
        None => Step::Forward,
    }
}

/// An RST from either side: the half-open connection is over.
#[inline(always)]
pub fn reset(key: &FlowKey, half: EmbryoRef) {
    if let Some((okey, _)) = partner(key, half) {
        let _ = EMBRYOS.remove(&okey);
    }
    let _ = EMBRYOS.remove(key);
    maps::count_embryo(|s: &mut EmbryoStats| &mut s.reset);
}

/// Moves both halves into FLOWS, where ageing and the established path
/// take over: the forward half `fwd` at `fkey`, the reply half `rep` at
/// `rkey`. `seen`: the TCP flags the flow starts with.
#[inline(always)]
fn promote(
    fkey: &FlowKey,
    fwd: EmbryoRef,
    rkey: &FlowKey,
    rep: EmbryoRef,
    seen: u8,
    now: &Now,
) -> Step {
    match FLOWS.insert(rkey, rep.ready(now.t, seen), BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU promoted it a moment ago (a duplicate ACK).
        Err(e) if e == -EEXIST && conntrack::entry(fkey).is_some() => return Step::Promoted,
        Err(e) if e == -EEXIST => return Step::Stop(Verdict::drop(Reason::DropEmbryoLost)),
        Err(e) if e == -E2BIG => return Step::Stop(Verdict::drop(Reason::DropFlowTableFull)),
        Err(_) => return Step::Stop(aborted()),
    }
    let forward = fwd.ready(now.t, seen);
    let (backend_id, service, nat) = (
        forward.backend,
        forward.service,
        (forward.new_src, forward.new_sport),
    );
    if let Err(e) = FLOWS.insert(fkey, forward, BPF_NOEXIST as u64) {
        let _ = FLOWS.remove(rkey);
        if e == -E2BIG {
            return Step::Stop(Verdict::drop(Reason::DropFlowTableFull));
        }
        // EEXIST: the tuple has a flow already; the packet follows it.
        return Step::Promoted;
    }
    let _ = EMBRYOS.remove(fkey);
    let _ = EMBRYOS.remove(rkey);
    maps::count_embryo(|s: &mut EmbryoStats| &mut s.promoted);
    maps::count_new_flow(service, backend_id);
    if flowlog::enabled()
        && let Some(backend) = maps::backend(backend_id)
    {
        flowlog::opened(fkey, &backend, nat, 0, now.t, now.second as u32);
    }
    Step::Promoted
}
