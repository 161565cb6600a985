//! Internet checksum arithmetic (RFC 1071), and the incremental update of
//! RFC 1624 that the data plane uses after rewriting addresses and ports.
//!
//! Every value here is a byte array in network byte order, exactly as it
//! sits in the header, so the XDP program passes `ip.src`, `tcp.check` and
//! friends straight in and writes the result straight back. The one's
//! complement sum is byte-order independent (RFC 1071 §2(B)), but reading
//! the words big-endian everywhere keeps the intermediate values equal to
//! the ones the RFCs print, which makes the tests readable.
//!
//! The `replace_*` functions and [`fold`] run in the eBPF program: no loops,
//! no indexing that could panic, `#[inline(always)]` so the verifier sees
//! straight-line code. [`sum`], [`checksum`] and [`l4_checksum`] loop over a
//! buffer; they are for the agent and the host tests that build packets.

/// IANA protocol number of UDP, whose checksum has the RFC 768 special
/// cases handled by [`replace_u16_udp`], [`replace_u32_udp`] and
/// [`l4_checksum`].
const IPPROTO_UDP: u8 = 17;

/// Folds the carries of a 32-bit one's complement accumulator into 16 bits
/// (RFC 1071 §4.1, "fold 32-bit sum to 16 bits").
///
/// Two folds are always enough for any `u32`: after the first, the value is
/// at most `0xffff + 0xffff = 0x1fffe`, and folding that gives at most
/// `0xffff` with no further carry. A loop "while sum >> 16 != 0" would be
/// equivalent but the verifier would have to prove it bounded.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// One's complement of a network-order 16-bit word, widened for summing.
#[inline(always)]
fn not_word(b: [u8; 2]) -> u32 {
    u32::from(!u16::from_be_bytes(b))
}

#[inline(always)]
fn word(b: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(b))
}

/// The checksum after a 16-bit field changed from `old` to `new`.
///
/// RFC 1624 §3, eqn. 3: `HC' = ~(~HC + ~m + m')`. Not eqn. 2
/// (`HC' = HC - ~m - m'`), which RFC 1624 §4 shows yields `0xffff` where a
/// full recomputation yields `0x0000`; eqn. 3 agrees with the full
/// recomputation whenever the rest of the covered data is not all zeros,
/// which a real IPv4, TCP or UDP header never is.
///
/// For a UDP checksum use [`replace_u16_udp`].
#[inline(always)]
pub fn replace_u16(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    // At most 3 × 0xffff: no overflow, and fold() absorbs the carries.
    let sum = not_word(check) + not_word(old) + word(new);
    (!fold(sum)).to_be_bytes()
}

/// The checksum after a 32-bit field (an IPv4 address) changed from `old`
/// to `new`: eqn. 3 of RFC 1624 §3 applied to both 16-bit halves at once.
///
/// Use it for the IPv4 header checksum and, because the TCP and UDP
/// checksums cover the pseudo-header (RFC 793 §3.1, RFC 768), for the L4
/// checksum too whenever an address changes. For UDP use
/// [`replace_u32_udp`].
#[inline(always)]
pub fn replace_u32(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let [o0, o1, o2, o3] = old;
    let [n0, n1, n2, n3] = new;
    // At most 5 × 0xffff: no overflow.
    let sum =
        not_word(check) + not_word([o0, o1]) + not_word([o2, o3]) + word([n0, n1]) + word([n2, n3]);
    (!fold(sum)).to_be_bytes()
}

/// RFC 768: a transmitted UDP checksum of zero means "the sender computed
/// none", and a computed zero is transmitted as all ones. So a zero field
/// must stay zero however the packet changes, and an update whose result is
/// zero must be written as `0xffff`.
#[inline(always)]
fn udp_update(check: [u8; 2], updated: impl FnOnce() -> [u8; 2]) -> [u8; 2] {
    if check == [0, 0] {
        return check;
    }
    let new = updated();
    if new == [0, 0] { [0xff, 0xff] } else { new }
}

/// [`replace_u16`] for a UDP checksum, with RFC 768's zero rules.
///
/// A stored `0xffff` (a computed zero) needs no special case going in:
/// `~0xffff` is `+0` where the "true" `~0x0000` is `-0`, and the two are
/// the same number in one's complement arithmetic.
#[inline(always)]
pub fn replace_u16_udp(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    udp_update(check, || replace_u16(check, old, new))
}

/// [`replace_u32`] for a UDP checksum, with RFC 768's zero rules.
#[inline(always)]
pub fn replace_u32_udp(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    udp_update(check, || replace_u32(check, old, new))
}

/// The one's complement sum of `data` (big-endian 16-bit words, an odd last
/// byte padded with a zero byte, RFC 1071 §4.1) added to `initial`, with
/// the carries folded in: the result is at most `0xffff` and can be passed
/// as `initial` again to sum data in pieces (each piece but the last must
/// have an even length, as in RFC 1071).
///
/// Host-side: it loops over the buffer.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    // A u64 cannot overflow for any slice that fits in memory on a 64-bit
    // host before the fold (2^47 words × 0xffff < 2^64).
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    // Fold 64 → 32 bits keeping the carries, then 32 → 16.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    u32::from(fold(acc as u32))
}

/// The Internet checksum of `data`, as stored in a header: the complement
/// of the one's complement sum. Zero the checksum field before calling;
/// with the field filled in, a correct header gives `[0, 0]`.
pub fn checksum(data: &[u8]) -> [u8; 2] {
    (!fold(sum(data, 0))).to_be_bytes()
}

/// The one's complement sum of the IPv4 pseudo-header that the TCP
/// (RFC 793 §3.1) and UDP (RFC 768) checksums cover: source, destination,
/// a zero byte, the protocol, and the TCP/UDP length (header + data).
/// Pass the result as `initial` to [`sum`].
#[inline(always)]
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let [s0, s1, s2, s3] = src;
    let [d0, d1, d2, d3] = dst;
    word([s0, s1])
        + word([s2, s3])
        + word([d0, d1])
        + word([d2, d3])
        + u32::from(proto)
        + u32::from(l4_len)
}

/// The TCP or UDP checksum of `segment` (the L4 header, checksum field
/// zeroed, followed by the data) carried in IPv4 between `src` and `dst`.
/// For UDP (`proto == 17`) a computed zero is returned as `0xffff`, the
/// value to transmit (RFC 768).
///
/// Host-side. `segment.len()` must fit the 16-bit length field; longer
/// segments do not exist in IPv4.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> [u8; 2] {
    let len = segment.len() as u16;
    let c = (!fold(sum(segment, pseudo_header_sum(src, dst, proto, len)))).to_be_bytes();
    if proto == IPPROTO_UDP && c == [0, 0] {
        [0xff, 0xff]
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    #[test]
    fn fold_edges() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        // The worst case needs the second fold: 0xffff + 0xffff = 0x1fffe.
        assert_eq!(fold(u32::MAX), 0xffff);
        assert_eq!(fold(0xfffe_0001), 0xffff);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of these bytes is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(checksum(&data), [0x22, 0x0d]);
        // An odd length pads with a zero byte.
        assert_eq!(sum(&[0x12], 0), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn known_ipv4_header() {
        // 192.168.0.1 → 192.168.0.199, UDP, checksum 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), [0xb8, 0x61]);
        hdr[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&hdr), [0, 0], "a correct header sums to all ones");
    }

    #[test]
    fn rfc1624_section4_example() {
        // RFC 1624 §4: the other header words sum to 0xcd7a, a field
        // changes from 0x5555 to 0x3285. HC = ~(0xcd7a + 0x5555) = 0xdd2f.
        // Eqn. 3 gives 0x0000, what a full recomputation gives
        // (~(0xcd7a + 0x3285) = ~0xffff); eqn. 2 would give 0xffff.
        assert_eq!(checksum(&[0xcd, 0x7a, 0x55, 0x55]), [0xdd, 0x2f]);
        assert_eq!(checksum(&[0xcd, 0x7a, 0x32, 0x85]), [0x00, 0x00]);
        assert_eq!(
            replace_u16([0xdd, 0x2f], [0x55, 0x55], [0x32, 0x85]),
            [0, 0]
        );
        // And back again.
        assert_eq!(
            replace_u16([0, 0], [0x32, 0x85], [0x55, 0x55]),
            [0xdd, 0x2f]
        );
    }

    /// An IPv4 packet carrying TCP or UDP, as the host tests build it.
    #[derive(Clone)]
    struct Packet {
        ip: Vec<u8>,
        l4: Vec<u8>,
    }

    impl Packet {
        fn proto(&self) -> u8 {
            self.ip[9]
        }
        fn src(&self) -> [u8; 4] {
            self.ip[12..16].try_into().unwrap()
        }
        fn dst(&self) -> [u8; 4] {
            self.ip[16..20].try_into().unwrap()
        }
        fn sport(&self) -> [u8; 2] {
            self.l4[0..2].try_into().unwrap()
        }
        fn dport(&self) -> [u8; 2] {
            self.l4[2..4].try_into().unwrap()
        }
        fn l4_check_at(&self) -> usize {
            if self.proto() == TCP { 16 } else { 6 }
        }
        fn ip_check(&self) -> [u8; 2] {
            self.ip[10..12].try_into().unwrap()
        }
        fn l4_check(&self) -> [u8; 2] {
            let at = self.l4_check_at();
            self.l4[at..at + 2].try_into().unwrap()
        }
        fn set_ip_check(&mut self, c: [u8; 2]) {
            self.ip[10..12].copy_from_slice(&c);
        }
        fn set_l4_check(&mut self, c: [u8; 2]) {
            let at = self.l4_check_at();
            self.l4[at..at + 2].copy_from_slice(&c);
        }

        /// The IPv4 header checksum a full recomputation gives.
        fn full_ip_check(&self) -> [u8; 2] {
            let mut ip = self.ip.clone();
            ip[10..12].fill(0);
            checksum(&ip)
        }

        /// The L4 checksum a full recomputation gives (UDP zero → 0xffff).
        fn full_l4_check(&self) -> [u8; 2] {
            let mut l4 = self.l4.clone();
            let at = self.l4_check_at();
            l4[at..at + 2].fill(0);
            l4_checksum(self.src(), self.dst(), self.proto(), &l4)
        }

        /// Fills in both checksums from scratch.
        fn finish(&mut self) {
            let c = self.full_ip_check();
            self.set_ip_check(c);
            let c = self.full_l4_check();
            self.set_l4_check(c);
        }

        /// A random IPv4 header (options included) with a TCP or UDP
        /// segment carrying `payload_len` random bytes.
        fn random(rng: &mut Rng, proto: u8, payload_len: usize) -> Packet {
            let ihl = rng.range(5, 15) as usize;
            let mut ip = vec![0u8; ihl * 4];
            rng.fill(&mut ip);
            let l4_hdr = if proto == TCP { 20 } else { 8 };
            let mut l4 = vec![0u8; l4_hdr + payload_len];
            rng.fill(&mut l4);
            ip[0] = 0x40 | ihl as u8;
            let tot_len = (ip.len() + l4.len()) as u16;
            ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
            ip[9] = proto;
            if proto == TCP {
                // Data offset 5 (no options), keep the random reserved bits
                // and flags: the checksum does not care.
                l4[12] = 0x50 | (l4[12] & 0x0f);
            } else {
                let udp_len = l4.len() as u16;
                l4[4..6].copy_from_slice(&udp_len.to_be_bytes());
            }
            let mut p = Packet { ip, l4 };
            p.finish();
            p
        }

        /// Rewrites addresses and ports the way the data plane does,
        /// updating both checksums incrementally (never recomputing).
        fn nat(&mut self, src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2]) {
            let (osrc, odst, osport, odport) = (self.src(), self.dst(), self.sport(), self.dport());

            let ip = replace_u32(self.ip_check(), osrc, src);
            let ip = replace_u32(ip, odst, dst);
            self.set_ip_check(ip);

            let c = self.l4_check();
            let c = if self.proto() == UDP {
                let c = replace_u32_udp(c, osrc, src);
                let c = replace_u32_udp(c, odst, dst);
                let c = replace_u16_udp(c, osport, sport);
                replace_u16_udp(c, odport, dport)
            } else {
                let c = replace_u32(c, osrc, src);
                let c = replace_u32(c, odst, dst);
                let c = replace_u16(c, osport, sport);
                replace_u16(c, odport, dport)
            };
            self.set_l4_check(c);

            self.ip[12..16].copy_from_slice(&src);
            self.ip[16..20].copy_from_slice(&dst);
            self.l4[0..2].copy_from_slice(&sport);
            self.l4[2..4].copy_from_slice(&dport);
        }

        /// Panics unless both checksums equal a full recomputation (a
        /// UDP checksum of zero, "none", must have stayed zero).
        fn assert_checksums(&self, udp_none: bool, what: &str) {
            assert_eq!(
                self.ip_check(),
                self.full_ip_check(),
                "{what}: IPv4 header checksum"
            );
            assert_eq!(
                checksum(&self.ip),
                [0, 0],
                "{what}: IPv4 header does not verify"
            );
            if udp_none {
                assert_eq!(
                    self.l4_check(),
                    [0, 0],
                    "{what}: UDP checksum 0 must stay 0"
                );
            } else {
                assert_eq!(self.l4_check(), self.full_l4_check(), "{what}: L4 checksum");
                if self.proto() == UDP {
                    assert_ne!(
                        self.l4_check(),
                        [0, 0],
                        "{what}: UDP checksum 0 on the wire"
                    );
                }
            }
        }
    }

    /// Full NAT as the load balancer does it: client→VIP:vport becomes
    /// snat→backend:bport, and the reply backend→snat becomes VIP→client.
    /// Each step is checked against a full recomputation.
    #[test]
    fn incremental_matches_full_recomputation_over_random_packets() {
        let mut rng = Rng::new(0x1624);
        let (mut tcp, mut udp, mut udp_none, mut zeros) = (0, 0, 0, 0);
        for i in 0..20_000 {
            let proto = if rng.bool() { TCP } else { UDP };
            let payload_len = rng.range(0, 1480) as usize;
            let mut p = Packet::random(&mut rng, proto, payload_len);
            let none = proto == UDP && rng.range(0, 7) == 0;
            if none {
                p.set_l4_check([0, 0]);
            }
            let original = p.clone();
            let (client, vip) = (p.src(), p.dst());
            let (cport, vport) = (p.sport(), p.dport());
            let snat: [u8; 4] = rng.bytes();
            let backend: [u8; 4] = rng.bytes();
            let nat_port: [u8; 2] = rng.bytes();
            // Backends often listen on the service's own port: an update
            // where old == new must be a no-op.
            let bport = if rng.bool() { vport } else { rng.bytes() };

            p.nat(snat, backend, nat_port, bport);
            p.assert_checksums(none, &format!("packet {i} forward"));
            // Zero results arise by chance about once in 65 535 updates;
            // the tests below construct them on purpose.
            zeros += usize::from(p.ip_check() == [0, 0])
                + usize::from(proto == TCP && p.l4_check() == [0, 0]);

            // The reply: backend:bport → snat:nat_port becomes
            // vip:vport → client:cport.
            let mut r = p.clone();
            r.ip[12..20].copy_from_slice(&[backend, snat].concat());
            r.l4[0..4].copy_from_slice(&[bport, nat_port].concat());
            r.finish();
            if none {
                r.set_l4_check([0, 0]);
            }
            r.nat(vip, client, vport, cport);
            r.assert_checksums(none, &format!("packet {i} reply"));

            // Undoing the rewrite restores the original checksums exactly.
            p.nat(client, vip, cport, vport);
            assert_eq!(p.ip, original.ip, "packet {i}: round trip IPv4 header");
            assert_eq!(p.l4, original.l4, "packet {i}: round trip L4 segment");

            match (proto, none) {
                (TCP, _) => tcp += 1,
                (_, false) => udp += 1,
                (_, true) => udp_none += 1,
            }
        }
        println!(
            "checked {tcp} TCP, {udp} UDP, {udp_none} UDP without checksum ({zeros} IPv4/TCP checksums of 0x0000 after NAT)"
        );
        assert!(tcp > 9000 && udp > 7000 && udp_none > 900);
    }

    /// The first 16-bit value for which `f` holds.
    fn find_word(f: impl Fn([u8; 2]) -> bool) -> [u8; 2] {
        (0..=u16::MAX)
            .map(u16::to_be_bytes)
            .find(|w| f(*w))
            .expect("some 16-bit value satisfies the condition")
    }

    /// A UDP packet with two payload bytes, whose NATed checksum computes
    /// to zero: the update must write 0xffff (RFC 768), not 0x0000 ("none").
    #[test]
    fn udp_update_that_computes_zero_is_sent_as_all_ones() {
        let mut rng = Rng::new(768);
        for _ in 0..20 {
            let p = Packet::random(&mut rng, UDP, 2);
            let (snat, backend, sport, dport) =
                (rng.bytes(), rng.bytes(), rng.bytes(), rng.bytes());
            let nat_of = |w: [u8; 2]| {
                let mut q = p.clone();
                q.l4[8..10].copy_from_slice(&w);
                q.finish();
                let before = q.clone();
                q.nat(snat, backend, sport, dport);
                (before, q)
            };
            // The payload word that makes the rewritten packet's raw
            // checksum zero.
            let w = find_word(|w| {
                let (_, q) = nat_of(w);
                let mut l4 = q.l4.clone();
                l4[6..8].fill(0);
                !fold(sum(
                    &l4,
                    pseudo_header_sum(q.src(), q.dst(), UDP, l4.len() as u16),
                )) == 0
            });
            let (_, q) = nat_of(w);
            assert_eq!(q.l4_check(), [0xff, 0xff]);
            q.assert_checksums(false, "computed zero");
        }
    }

    /// A UDP packet whose checksum is 0xffff on the wire (it computed to
    /// zero) is updated correctly, and so is one that NAT makes 0xffff.
    #[test]
    fn udp_update_from_all_ones() {
        let mut rng = Rng::new(0xffff);
        for _ in 0..20 {
            let mut p = Packet::random(&mut rng, UDP, 2);
            let w = find_word(|w| {
                let mut q = p.clone();
                q.l4[8..10].copy_from_slice(&w);
                q.finish();
                q.l4_check() == [0xff, 0xff]
            });
            p.l4[8..10].copy_from_slice(&w);
            p.finish();
            let original = p.clone();
            let (client, vip, cport, vport) = (p.src(), p.dst(), p.sport(), p.dport());
            p.nat(rng.bytes(), rng.bytes(), rng.bytes(), rng.bytes());
            p.assert_checksums(false, "from 0xffff");
            p.nat(client, vip, cport, vport);
            assert_eq!(p.l4, original.l4, "back to 0xffff");
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let c = [0, 0];
        assert_eq!(replace_u16_udp(c, [1, 2], [3, 4]), c);
        assert_eq!(replace_u32_udp(c, [10, 0, 0, 1], [192, 168, 7, 9]), c);
        // The same update on TCP semantics would produce a checksum.
        assert_ne!(replace_u32(c, [10, 0, 0, 1], [192, 168, 7, 9]), c);
        // A plain update never yields 0 for UDP.
        assert_eq!(
            replace_u16_udp([0xdd, 0x2f], [0x55, 0x55], [0x32, 0x85]),
            [0xff, 0xff]
        );
    }

    /// IPv4 and TCP checksums of 0x0000 (legal: only UDP gives zero a
    /// meaning) are produced and consumed exactly as a full recomputation.
    #[test]
    fn zero_checksums_in_ipv4_and_tcp() {
        let mut rng = Rng::new(1624);
        for _ in 0..20 {
            let p = Packet::random(&mut rng, TCP, 2);
            let (snat, backend, sport, dport) =
                (rng.bytes(), rng.bytes(), rng.bytes(), rng.bytes());
            let with = |id: [u8; 2], payload: [u8; 2]| {
                let mut q = p.clone();
                q.ip[4..6].copy_from_slice(&id);
                q.l4[20..22].copy_from_slice(&payload);
                q.finish();
                q
            };
            // After NAT, both checksums are zero.
            let id = find_word(|id| {
                let mut q = with(id, [0, 0]);
                q.nat(snat, backend, sport, dport);
                q.full_ip_check() == [0, 0]
            });
            let payload = find_word(|w| {
                let mut q = with(id, w);
                q.nat(snat, backend, sport, dport);
                q.full_l4_check() == [0, 0]
            });
            let mut q = with(id, payload);
            let before = q.clone();
            q.nat(snat, backend, sport, dport);
            assert_eq!(
                (q.ip_check(), q.l4_check()),
                ([0, 0], [0, 0]),
                "eqn. 3 must give 0x0000"
            );
            q.assert_checksums(false, "to zero");
            // And back from zero.
            q.nat(before.src(), before.dst(), before.sport(), before.dport());
            assert_eq!((q.ip.clone(), q.l4.clone()), (before.ip, before.l4));
        }
    }
}
