//! The hash of a connection's 5-tuple, which the data plane reduces modulo
//! the Maglev table size to pick a backend for a new flow.
//!
//! Two load balancer nodes must hash a flow identically, so that after a
//! failover the standby picks the same backend from the same table and the
//! flow survives (Maglev paper, Eisenbud et al., NSDI 2016, §3.4: the
//! consistent hash lets any node make the same choice without shared
//! state). The hash is therefore a fixed function with a fixed seed: no
//! per-boot random key. Changing it changes every flow's backend during a
//! rolling upgrade; `flow_hash_is_pinned` in the tests guards against that
//! happening by accident.

/// Fixed seed, so the hash of a tuple is the same on every node and every
/// version. Any odd-looking constant works; this is 2^32 / φ.
const SEED: u32 = 0x9e37_79b9;

/// MurmurHash3's 32-bit finalizer (`fmix32`, Austin Appleby, public domain):
/// xor-shifts and multiplications by odd constants, each invertible, so
/// the whole function is a bijection on `u32` with full avalanche (every
/// input bit flips each output bit with probability close to 1/2).
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hashes an IPv4 5-tuple (fields as they sit in the headers, network byte
/// order) to 32 well-mixed bits.
///
/// Built as a chain `fmix32(src ^ fmix32(dst ^ fmix32(ports ^
/// fmix32(proto ^ SEED))))`. Because `fmix32` is a bijection and each field
/// (at most 32 bits) enters by xor, changing any single field always
/// changes the result, not merely with high probability: fixing the other
/// fields, the map from one field to the output is a composition of
/// bijections. Four rounds of `fmix32` are 8 multiplications and 12 shifts,
/// straight-line code the verifier accepts at once.
///
/// Words are read little-endian: a no-op load on bpfel and on the x86 and
/// arm64 hosts, and defined the same on any host, so the agent and tests
/// compute exactly what the data plane computes.
#[inline(always)]
pub fn flow_hash(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
    let [s0, s1] = sport;
    let [d0, d1] = dport;
    let ports = u32::from_le_bytes([s0, s1, d0, d1]);
    let h = fmix32(u32::from(proto) ^ SEED);
    let h = fmix32(h ^ ports);
    let h = fmix32(h ^ u32::from_le_bytes(dst));
    fmix32(h ^ u32::from_le_bytes(src))
}

/// NAT ports a new flow tries before giving up. Each try is one insert;
/// the tries are independent draws, so with a fraction p of a backend's
/// ports taken all eight fail with probability p⁸ (< 0.4% at half full).
pub const NAT_PORT_TRIES: u32 = 8;

/// The `try_`th (SNAT address, NAT port) for a flow of hash `hash`: indexes
/// into a pool of `addrs` addresses (at least 1) and `span` ports each.
/// The pool is one space of `addrs × span` pairs, drawn from like the
/// ports of one address ([`nat_port_offset`]), so a bigger pool is simply
/// more room, and the first try is a fixed function of the tuple (a node
/// taking over picks the same pair for the same flow).
#[inline(always)]
pub fn nat_choice(hash: u32, try_: u32, span: u32, addrs: u32) -> (u32, u32) {
    // Never a division by zero, so the data plane carries no panic path
    // (the verifier refuses a BPF subprogram that ends in one).
    let span = span.max(1);
    let off = nat_port_offset(hash, try_, span.wrapping_mul(addrs).max(1));
    (off / span, off % span)
}

/// The `try_`th NAT port offset (0..span) for a flow of hash `hash`.
///
/// Every try is a fresh hash of (flow, try), not a fixed stride from the
/// first: with a stride, flows whose first choices collide walk the same
/// sequence, runs of taken ports grow into clusters (as in linear
/// probing), and exhaustion comes long before the range is full.
/// Ports are local to one node (its SNAT address), so unlike
/// [`flow_hash`] this need not be the same on every node.
#[inline(always)]
pub fn nat_port_offset(hash: u32, try_: u32, span: u32) -> u32 {
    fmix32(hash ^ (try_ + 1).wrapping_mul(SEED)) % span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    const BUCKETS: usize = 251;

    struct Tuple {
        src: [u8; 4],
        dst: [u8; 4],
        sport: [u8; 2],
        dport: [u8; 2],
        proto: u8,
    }

    impl Tuple {
        fn random(rng: &mut Rng) -> Tuple {
            Tuple {
                src: rng.bytes(),
                dst: rng.bytes(),
                sport: rng.bytes(),
                dport: rng.bytes(),
                proto: if rng.bool() { 6 } else { 17 },
            }
        }
        fn hash(&self) -> u32 {
            flow_hash(self.src, self.dst, self.sport, self.dport, self.proto)
        }
    }

    /// Pearson's chi-square statistic of the bucket counts against a
    /// uniform distribution, with the smallest and largest bucket.
    fn chi_square(hashes: impl Iterator<Item = u32>) -> (f64, usize, usize) {
        let mut counts = [0usize; BUCKETS];
        let mut n = 0usize;
        for h in hashes {
            counts[h as usize % BUCKETS] += 1;
            n += 1;
        }
        let expected = n as f64 / BUCKETS as f64;
        let chi2 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        let min = *counts.iter().min().unwrap();
        let max = *counts.iter().max().unwrap();
        (chi2, min, max)
    }

    /// With 250 degrees of freedom the statistic has mean 250 and standard
    /// deviation √500 ≈ 22.4; 250 + 5σ ≈ 362 fails a uniform hash with
    /// probability below 10⁻⁶, and a poorly mixing one by far.
    const CHI2_LIMIT: f64 = 362.0;

    fn assert_uniform(what: &str, hashes: impl Iterator<Item = u32>) {
        let (chi2, min, max) = chi_square(hashes);
        println!("{what}: chi-square {chi2:.1} (250 dof), buckets {min}..={max}");
        assert!(
            chi2 < CHI2_LIMIT,
            "{what}: chi-square {chi2:.1} ≥ {CHI2_LIMIT}"
        );
    }

    #[test]
    fn random_tuples_spread_uniformly() {
        let mut rng = Rng::new(251);
        let n = BUCKETS * 400;
        let hashes: Vec<u32> = (0..n).map(|_| Tuple::random(&mut rng).hash()).collect();
        let (_, min, max) = chi_square(hashes.iter().copied());
        // 400 expected per bucket, σ = 20: 6σ either side.
        assert!(
            min > 280 && max < 520,
            "buckets {min}..={max}, expected about 400"
        );
        assert_uniform("random tuples", hashes.into_iter());
    }

    /// The structured traffic a load balancer actually sees: one client's
    /// ephemeral ports to one VIP, and one /16 of clients on one port.
    #[test]
    fn structured_tuples_spread_uniformly() {
        let (vip, client) = ([10, 0, 0, 100], [192, 168, 1, 7]);
        assert_uniform(
            "ephemeral ports of one client",
            (1024..=u16::MAX).map(|p| flow_hash(client, vip, p.to_be_bytes(), [0, 80], 6)),
        );
        assert_uniform(
            "a /16 of clients, one port",
            (0..=u16::MAX).map(|i| {
                let [a, b] = i.to_be_bytes();
                flow_hash([172, 16, a, b], vip, [0xc3, 0x50], [1, 187], 6)
            }),
        );
        assert_uniform(
            "a /16 of VIPs, one client",
            (0..=u16::MAX).map(|i| {
                let [a, b] = i.to_be_bytes();
                flow_hash(client, [10, 1, a, b], [0xc3, 0x50], [0, 53], 17)
            }),
        );
    }

    #[test]
    fn changing_any_single_field_changes_the_hash() {
        let mut rng = Rng::new(5);
        let mut flipped_bits = 0u64;
        let mut trials = 0u64;
        for _ in 0..10_000 {
            let t = Tuple::random(&mut rng);
            let h = t.hash();
            // Each field set to another random value, and one random bit
            // of it flipped (the avalanche case).
            let mut check = |h2: u32, what: &str| {
                assert_ne!(h, h2, "changing {what} left the hash unchanged");
                flipped_bits += u64::from((h ^ h2).count_ones());
                trials += 1;
            };
            let other = |rng: &mut Rng, v: u32, bits: u32| loop {
                let n = if rng.bool() {
                    rng.u32()
                } else {
                    v ^ (1 << rng.range(0, bits - 1))
                };
                let n = n & (u32::MAX >> (32 - bits));
                if n != v {
                    break n;
                }
            };
            let src = other(&mut rng, u32::from_be_bytes(t.src), 32).to_be_bytes();
            check(flow_hash(src, t.dst, t.sport, t.dport, t.proto), "src");
            let dst = other(&mut rng, u32::from_be_bytes(t.dst), 32).to_be_bytes();
            check(flow_hash(t.src, dst, t.sport, t.dport, t.proto), "dst");
            let sport =
                (other(&mut rng, u16::from_be_bytes(t.sport).into(), 16) as u16).to_be_bytes();
            check(flow_hash(t.src, t.dst, sport, t.dport, t.proto), "sport");
            let dport =
                (other(&mut rng, u16::from_be_bytes(t.dport).into(), 16) as u16).to_be_bytes();
            check(flow_hash(t.src, t.dst, t.sport, dport, t.proto), "dport");
            let proto = other(&mut rng, t.proto.into(), 8) as u8;
            check(flow_hash(t.src, t.dst, t.sport, t.dport, proto), "proto");
            // Swapping source and destination is a different flow (the
            // reply direction never reaches this hash as the same flow).
            if t.src != t.dst {
                check(
                    flow_hash(t.dst, t.src, t.sport, t.dport, t.proto),
                    "src<->dst",
                );
            }
        }
        let mean = flipped_bits as f64 / trials as f64;
        println!("a single-field change flips {mean:.2} of 32 output bits on average");
        assert!(
            (15.5..16.5).contains(&mean),
            "poor avalanche: {mean:.2} bits flip"
        );
    }

    /// Exhaustive over one field: injective, as the construction promises.
    #[test]
    fn every_port_value_gives_a_distinct_hash() {
        let mut seen: Vec<u32> = (0..=u16::MAX)
            .map(|p| flow_hash([1, 2, 3, 4], [5, 6, 7, 8], p.to_be_bytes(), [0, 80], 6))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 65536);
        let mut protos: Vec<u32> = (0..=u8::MAX)
            .map(|p| flow_hash([1, 2, 3, 4], [5, 6, 7, 8], [0, 1], [0, 80], p))
            .collect();
        protos.sort_unstable();
        protos.dedup();
        assert_eq!(protos.len(), 256);
    }

    /// The data plane and every node must agree on this function forever
    /// (see the module docs): a change here must be deliberate.
    /// Fills one backend's NAT ports the way the data plane does, with
    /// sequential client ports (as a busy client makes them), and counts
    /// the flows that found no free port: close to p⁸ each, not clustered.
    #[test]
    fn nat_ports_stay_available_until_the_range_is_nearly_full() {
        let span = 10_000u32;
        let mut taken = vec![false; span as usize];
        let (mut placed, mut failed, mut tries) = (0u32, 0u32, 0u64);
        let mut failed_below_60 = 0;
        for i in 0..(span * 8 / 10) {
            let hash = flow_hash(
                [10, 0, (i >> 16) as u8, 7],
                [10, 0, 0, 100],
                (i as u16).to_be_bytes(),
                [25, 43],
                6,
            );
            let free = (0..NAT_PORT_TRIES).find(|&t| {
                tries += 1;
                let off = nat_port_offset(hash, t, span) as usize;
                !std::mem::replace(&mut taken[off], true)
            });
            match free {
                Some(_) => placed += 1,
                None => {
                    failed += 1;
                    if placed < span * 6 / 10 {
                        failed_below_60 += 1;
                    }
                }
            }
        }
        println!(
            "{placed} placed, {failed} without a port, {:.2} tries each",
            tries as f64 / f64::from(placed + failed)
        );
        // At ≤ 60% full, p⁸ ≤ 1.7%: expected ≤ ~40 over 6000 flows, in total
        // far fewer (the range starts empty); clustering gives hundreds.
        assert!(
            failed_below_60 <= 20,
            "{failed_below_60} flows found no port below 60% full"
        );
        // Up to 80% full: Σ p⁸ ≈ 8000 × 0.8⁸ / 9 ≈ 150.
        assert!(failed < 300, "{failed} flows found no port up to 80% full");
    }

    #[test]
    fn flow_hash_is_pinned() {
        assert_eq!(
            flow_hash([10, 0, 0, 1], [10, 0, 0, 100], [0xc3, 0x50], [0, 80], 6),
            PINNED[0]
        );
        assert_eq!(flow_hash([0; 4], [0; 4], [0; 2], [0; 2], 0), PINNED[1]);
        assert_eq!(
            flow_hash([255; 4], [255; 4], [255; 2], [255; 2], 17),
            PINNED[2]
        );
    }

    /// Cross-checked against an independent Python transcription of the
    /// construction documented on [`flow_hash`].
    const PINNED: [u32; 3] = [0x5e4a_e0d5, 0x37dd_7702, 0xfa58_a2a4];
}

/// FLOWS key: a packet's 5-tuple as it arrives (network byte order).
/// A NATed connection has two entries: the client→VIP tuple and the
/// backend→SNAT tuple of its replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key of the packets going the other way after the rewrite
    /// `self → (nsrc, ndst, nsport, ndport)`.
    #[inline(always)]
    pub fn reply_of(
        nsrc: [u8; 4],
        ndst: [u8; 4],
        nsport: [u8; 2],
        ndport: [u8; 2],
        proto: u8,
    ) -> FlowKey {
        FlowKey {
            src: ndst,
            dst: nsrc,
            sport: ndport,
            dport: nsport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Flow direction: client → backend.
pub const DIR_FORWARD: u8 = 0;
/// Flow direction: backend → client (the reply half).
pub const DIR_REPLY: u8 = 1;

/// TCP flags seen on a flow (only what ageing needs, not a TCP state machine).
pub const SEEN_SYN: u8 = 1;
pub const SEEN_ACK: u8 = 2;
pub const SEEN_FIN: u8 = 4;
pub const SEEN_RST: u8 = 8;

/// FLOW_LOCAL: deliver to this node's stack unchanged (stacked master).
pub const FLOW_LOCAL: u8 = 1;

/// FLOWS value: how to rewrite the packet's 4-tuple, where to send it, and
/// what ageing needs. One lookup gives the established path everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Flow {
    /// Jiffies ([`crate::clock`]) of the last packet, refreshed at most
    /// once a second to keep the shared cache line quiet.
    pub last_seen: u64,
    /// Jiffies when `hop` came from the FIB; 0: not yet. Refreshed after a
    /// second.
    pub hop_at: u64,
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub new_sport: [u8; 2],
    pub new_dport: [u8; 2],
    pub backend: u32,
    pub service: u32,
    /// Where packets of this half leave (towards `new_dst`).
    pub hop: NextHop,
    /// SEEN_* flags.
    pub tcp_seen: u8,
    pub dir: u8,
    pub flags: u8,
    pub _pad: u8,
}

/// EMBRYOS value: a TCP connection that has not shown it is real yet (a
/// half-open connection), both halves as in FLOWS, in an LRU map of their
/// own. A spoofed SYN flood can only ever fill EMBRYOS, whose oldest
/// entries the kernel evicts, and whose NAT ports a new connection may
/// reclaim (see lb-ebpf's conntrack): it cannot pin NAT ports or FLOWS.
///
/// It becomes a FLOWS entry (is promoted) once the connection proves it is
/// real: for one opened by a SYN, the client's ACK of the backend's SYN-ACK
/// (acknowledging exactly the backend's ISN + 1, which a blind spoofer
/// cannot know); for one picked up mid-stream (a non-SYN packet of no known
/// flow: a flow opened before a failover or a restart, or an ACK flood),
/// any answer of the backend but an RST.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Embryo {
    /// The rewrite and next hop, as the FLOWS entry will have them;
    /// `last_seen` is when the embryo was made (the oldest is reclaimed first).
    pub flow: Flow,
    /// Reply half of one opened by a SYN: the client's ISN + 1, which the
    /// backend's SYN-ACK must acknowledge (a SYN-ACK that doesn't is a
    /// backend's retransmission for an older connection on the same NAT
    /// port, and must not reach this client).
    pub syn_next: u32,
    /// Reply half, EMBRYO_SYNACK set: the ACK number that promotes it (the
    /// backend's ISN + 1).
    pub ack_expect: u32,
    /// EMBRYO_* flags.
    pub state: u8,
    pub _pad: [u8; 7],
}

/// Embryo opened by a client's SYN (else picked up mid-stream).
pub const EMBRYO_SYN: u8 = 1;
/// Reply half: the backend's SYN-ACK passed; `ack_expect` is valid.
pub const EMBRYO_SYNACK: u8 = 2;

const _: () = assert!(core::mem::size_of::<Embryo>() == 72);

/// Where a packet to one address leaves, from the kernel's FIB: kept in
/// the flow so established traffic needs no `bpf_fib_lookup` (the largest
/// cost on the forward path) and no second map lookup; refreshed after a
/// second, so a neighbour whose MAC changed, or a route that moved, is
/// followed within that time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<Flow>() == 56);

#[cfg(feature = "user")]
mod user {
    // SAFETY (both): repr(C), integers and byte arrays, no padding (Pod derive).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::Embryo {}
}
