//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! The agent builds, for each service, a lookup table of prime size `M`
//! whose entries are backend ids; the data plane picks a new flow's backend
//! as `table[flow_hash % M]`. The paper's two goals: load balance (each
//! backend owns its share of entries) and minimal disruption (when the
//! backend set changes, most entries keep their backend, so most flows
//! keep theirs even on a node that has no connection state for them).
//!
//! Each backend has a preference list, a permutation of `0..M` given by
//! `offset + j × skip (mod M)`; because `M` is prime, every `skip` in
//! `1..M` is coprime to it and the list visits every slot (§3.4.1).
//! Backends take turns claiming the next slot on their list that is still
//! free until the table is full.
//!
//! Weights vary how often a backend takes a turn (the paper's §3.4 notes
//! weights can be added by changing the turn frequencies; katran does the
//! same with a different schedule): each round every backend earns its
//! weight in credit and takes a turn when its credit reaches the largest
//! weight, which it then pays. The heaviest backends turn every round,
//! one of half that weight every second round, and so on; so shares are
//! proportional to weights whatever their scale, and no round is longer
//! than one turn per backend. With equal weights this is exactly the
//! paper's algorithm.
//!
//! Keep a service's table size fixed while its backends change: the
//! disruption bound holds between two tables of the same size only, and a
//! table of another size moves nearly every flow. [`table_size_for`] is
//! for choosing the size when the service is created (or for its expected
//! maximum number of backends), not for every update.
//!
//! Everything that decides the table (the key hash, the order of turns)
//! is fixed and independent of the process, the machine and the order the
//! caller lists the backends in: two nodes given the same backends build
//! the same table, so a flow keeps its backend across a failover.

/// Entries per backend the sizing rule aims for. The paper uses `M` ≫ `N`
/// (§3.4, §5.3): with about 100 slots each, shares come within about 1%
/// of the weights, and a backend change moves few entries it need not.
pub const ENTRIES_PER_BACKEND: usize = 100;

/// The table sizes the agent chooses from: primes, each about twice the
/// last, so a table grows in few steps as backends are added.
pub const TABLE_SIZES: &[u32] = &[251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// The largest table; a service with more than 655 backends gets fewer
/// than [`ENTRIES_PER_BACKEND`] slots each.
pub const MAX_TABLE_SIZE: u32 = 65521;

const _: () = assert!(TABLE_SIZES[TABLE_SIZES.len() - 1] == MAX_TABLE_SIZE);

/// The smallest size in [`TABLE_SIZES`] with at least
/// [`ENTRIES_PER_BACKEND`] entries per backend, or [`MAX_TABLE_SIZE`] when
/// none is that large.
pub fn table_size_for(backends: usize) -> u32 {
    let want = backends.saturating_mul(ENTRIES_PER_BACKEND);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&size| size as usize >= want)
        .unwrap_or(MAX_TABLE_SIZE)
}

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevBackend {
    /// Stable identity that places the backend in the table; equal keys
    /// mean equal preference lists, so keys should be unique. Use
    /// [`MaglevBackend::ipv4_key`] for an address and port. It must not
    /// depend on anything local to one node (a map index, an insertion
    /// order), or nodes build different tables.
    pub key: [u8; 8],
    /// Relative share of the table; 0 takes none.
    pub weight: u32,
    /// The value written into the table's entries: what the data plane
    /// looks up next (e.g. an index into the backend array).
    pub id: u32,
}

impl MaglevBackend {
    /// The key of an IPv4 backend: the address and port as on the wire,
    /// then two zero bytes.
    pub const fn ipv4_key(addr: [u8; 4], port: [u8; 2]) -> [u8; 8] {
        let [a, b, c, d] = addr;
        let [p, q] = port;
        [a, b, c, d, p, q, 0, 0]
    }
}

/// Trial division; the sizes are at most `u32::MAX`, so at most 65 536
/// divisions, once per table build.
const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

const _: () = {
    let mut i = 0;
    while i < TABLE_SIZES.len() {
        assert!(is_prime(TABLE_SIZES[i]));
        i += 1;
    }
};

#[cfg(any(test, feature = "alloc"))]
pub use build::build_table;

#[cfg(any(test, feature = "alloc"))]
mod build {
    use super::*;
    use alloc::{vec, vec::Vec};

    /// Seeds of the two key hashes (§3.4.1 takes `offset` and `skip` from two
    /// different hash functions of the backend's name). Fixed forever: a new
    /// value would reshuffle every table, and two nodes running different
    /// versions during an upgrade would disagree on every flow.
    const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3; // π's fraction, first 64 bits
    const SKIP_SEED: u64 = 0x1319_8a2e_0370_7344; // and the next 64

    /// SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014): a
    /// bijection on `u64` with strong avalanche, so keys that differ in one
    /// byte (neighbouring addresses) get unrelated offsets and skips.
    /// Defined on the integers alone, so every machine computes the same.
    fn mix64(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn key_hash(key: [u8; 8], seed: u64) -> u64 {
        // Little-endian by definition, not the host's order.
        mix64(u64::from_le_bytes(key) ^ seed)
    }

    /// Where a backend is in its preference list, and its turn credit.
    struct Cursor {
        /// The slot its list names next: `offset + next × skip (mod M)`.
        slot: u32,
        skip: u32,
        credit: u64,
    }

    /// The Maglev lookup table of `size` entries for `backends`: each
    /// entry is the `id` of the backend that owns it, and a backend of
    /// weight `w` owns about `w / Σw` of them.
    ///
    /// Returns an empty table when no backend has a positive weight; the
    /// caller decides what a service with no backend does. The input order
    /// does not matter: backends are sorted by key (then id and weight)
    /// before they take turns.
    ///
    /// Runs in `O(M × N)` time in the worst case (each backend walks its
    /// preference list at most once) and usually in about `O(M log M)`.
    ///
    /// # Panics
    ///
    /// If `size` is not a prime: a preference list would then miss slots
    /// and the table could not be filled. Take sizes from [`TABLE_SIZES`].
    pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        assert!(is_prime(size), "Maglev table size {size} is not a prime");
        let mut live: Vec<MaglevBackend> =
            backends.iter().filter(|b| b.weight > 0).copied().collect();
        // The turn order decides who wins contested slots, so it must not
        // depend on the caller's order; sorting the whole struct settles
        // even duplicate keys.
        live.sort_unstable();
        let Some(max_weight) = live.iter().map(|b| u64::from(b.weight)).max() else {
            return Vec::new();
        };

        let m = u64::from(size);
        let mut cursors: Vec<Cursor> = live
            .iter()
            .map(|b| Cursor {
                // Both < size ≤ u32::MAX, so the casts are exact.
                slot: (key_hash(b.key, OFFSET_SEED) % m) as u32,
                skip: (key_hash(b.key, SKIP_SEED) % (m - 1) + 1) as u32,
                credit: 0,
            })
            .collect();

        let mut table: Vec<Option<u32>> = vec![None; size as usize];
        let mut filled = 0u32;
        // Each round the heaviest backend takes a turn, so at most `size`
        // rounds.
        'rounds: loop {
            for (b, c) in live.iter().zip(&mut cursors) {
                // credit < max_weight before, so one turn at most.
                c.credit += u64::from(b.weight);
                if c.credit < max_weight {
                    continue;
                }
                c.credit -= max_weight;
                // The next free slot on this backend's list. The list is a
                // permutation of all slots and one is still free, so this
                // ends, after at most `size` steps over the whole build.
                while table[c.slot as usize].is_some() {
                    c.slot = next_slot(c.slot, c.skip, size);
                }
                table[c.slot as usize] = Some(b.id);
                c.slot = next_slot(c.slot, c.skip, size);
                filled += 1;
                if filled == size {
                    break 'rounds;
                }
            }
        }
        table
            .into_iter()
            .map(|e| e.expect("every slot is filled"))
            .collect()
    }

    /// `slot + skip (mod size)` for `slot, skip < size`, without overflow.
    fn next_slot(slot: u32, skip: u32, size: u32) -> u32 {
        let s = u64::from(slot) + u64::from(skip);
        (if s >= u64::from(size) {
            s - u64::from(size)
        } else {
            s
        }) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// `n` backends with random distinct IPv4 keys, ids `0..n`, weights
    /// from `weight`.
    fn backends(
        rng: &mut Rng,
        n: usize,
        mut weight: impl FnMut(&mut Rng) -> u32,
    ) -> Vec<MaglevBackend> {
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < n {
            keys.insert(MaglevBackend::ipv4_key(
                [10, rng.u8(), rng.u8(), rng.u8()],
                [0x1f, 0x90],
            ));
        }
        let mut keys: Vec<_> = keys.into_iter().collect();
        rng.shuffle(&mut keys);
        keys.into_iter()
            .enumerate()
            .map(|(i, key)| MaglevBackend {
                key,
                weight: weight(rng),
                id: i as u32,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    /// The largest |share of table − share of weight| over the backends.
    fn max_share_deviation(set: &[MaglevBackend], table: &[u32]) -> f64 {
        let total: u64 = set.iter().map(|b| u64::from(b.weight)).sum();
        let c = counts(table, set.len());
        set.iter()
            .map(|b| {
                let got = c[b.id as usize] as f64 / table.len() as f64;
                let want = f64::from(b.weight) / total as f64;
                (got - want).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn shares_follow_weights() {
        let mut rng = Rng::new(2016);
        let sets: Vec<(&str, Vec<MaglevBackend>)> = vec![
            ("3 equal", backends(&mut rng, 3, |_| 1)),
            ("2:1:1", {
                let mut s = backends(&mut rng, 3, |_| 1);
                s[0].weight = 2;
                s
            }),
            (
                "10 random 1..=10",
                backends(&mut rng, 10, |r| r.range(1, 10)),
            ),
            ("100 equal", backends(&mut rng, 100, |_| 7)),
            (
                "100 random 1..=10",
                backends(&mut rng, 100, |r| r.range(1, 10)),
            ),
            (
                "5 of weight 1..=1000000",
                backends(&mut rng, 5, |r| r.range(1, 1_000_000)),
            ),
        ];
        for (name, set) in sets {
            let size = table_size_for(set.len());
            let table = build_table(&set, size);
            assert_eq!(table.len(), size as usize);
            let dev = max_share_deviation(&set, &table);
            println!(
                "{name}: table {size}, max share deviation {:.3}%",
                dev * 100.0
            );
            assert!(
                dev <= 0.02,
                "{name}: a share is {:.2}% off its weight",
                dev * 100.0
            );
        }
    }

    #[test]
    fn weight_zero_and_empty() {
        let mut rng = Rng::new(0);
        assert!(build_table(&[], 251).is_empty());
        let mut set = backends(&mut rng, 4, |_| 0);
        assert!(build_table(&set, 251).is_empty(), "all weights zero");
        set[2].weight = 5;
        assert!(
            build_table(&set, 251).iter().all(|&id| id == set[2].id),
            "one live backend"
        );
        set[0].weight = 1;
        let table = build_table(&set, 509);
        let c = counts(&table, 4);
        assert_eq!((c[1], c[3]), (0, 0), "weight 0 gets nothing");
        assert!(c[0] > 60 && c[2] > 370, "1:5 split of 509: {c:?}");
        // The smallest prime works.
        assert_eq!(build_table(&set, 2).len(), 2);
    }

    #[test]
    #[should_panic(expected = "not a prime")]
    fn composite_size_is_refused() {
        build_table(
            &[MaglevBackend {
                key: [1; 8],
                weight: 1,
                id: 0,
            }],
            1000,
        );
    }

    /// Entries that changed owner though neither the old nor the new owner
    /// is `changed`: the disruption consistent hashing tries to avoid.
    fn moved_other(before: &[u32], after: &[u32], changed: u32) -> usize {
        before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| b != a && b != changed && a != changed)
            .count()
    }

    /// 1.2 × size / n is loose for small n (40% of the table for n = 3).
    /// With M ≥ 100 N the measured worst case is under 5% for every n
    /// tested (30 seeded trials each), so more than 6% means the permutation
    /// or the turn schedule regressed.
    const REGRESSION_GUARD: f64 = 0.06;

    /// Over random backend sets: removing one of `n` backends moves at most
    /// about `size / n` of the entries the others owned (the paper's §5.3
    /// shows Maglev trades a little such disruption for balance; a mod-N
    /// hash would move nearly all of them). The bound is 1.2 × size / n of
    /// the whole table for the worst trial.
    #[test]
    fn removing_a_backend_moves_few_other_entries() {
        let mut rng = Rng::new(3);
        for n in [3usize, 5, 10, 50] {
            let size = table_size_for(n);
            let (mut worst, mut total) = (0usize, 0usize);
            let trials = 30;
            for _ in 0..trials {
                let set = backends(&mut rng, n, |_| 1);
                let before = build_table(&set, size);
                let gone = rng.range(0, n as u32 - 1) as usize;
                let mut rest = set.clone();
                rest.remove(gone);
                let after = build_table(&rest, size);
                assert!(!after.contains(&set[gone].id));
                let moved = moved_other(&before, &after, set[gone].id);
                worst = worst.max(moved);
                total += moved;
            }
            let bound = 1.2 * f64::from(size) / n as f64;
            println!(
                "remove 1 of {n} (table {size}): other entries moved: mean {:.2}%, worst {:.2}% of the table (bound {:.2}%)",
                100.0 * total as f64 / (trials * size as usize) as f64,
                100.0 * worst as f64 / f64::from(size),
                100.0 * bound / f64::from(size),
            );
            assert!(
                worst as f64 <= bound,
                "remove 1 of {n}: {worst} entries moved, bound {bound:.0}"
            );
            assert!(
                worst as f64 <= REGRESSION_GUARD * f64::from(size),
                "remove 1 of {n}: {worst} moved"
            );
        }
    }

    /// Adding a backend to `n`: the newcomer takes about 1/(n+1) of the
    /// table, and few entries move between the old backends.
    #[test]
    fn adding_a_backend_moves_few_other_entries() {
        let mut rng = Rng::new(4);
        for n in [3usize, 5, 10, 50] {
            let size = table_size_for(n + 1);
            let (mut worst, mut total) = (0usize, 0usize);
            let trials = 30;
            for _ in 0..trials {
                let mut set = backends(&mut rng, n + 1, |_| 1);
                let before = build_table(&set[..n], size);
                let after = build_table(&set, size);
                let new = set.pop().unwrap().id;
                let taken = after.iter().filter(|&&id| id == new).count();
                let fair = f64::from(size) / (n + 1) as f64;
                assert!(
                    (taken as f64 - fair).abs() <= 0.02 * f64::from(size),
                    "newcomer took {taken}"
                );
                let moved = moved_other(&before, &after, new);
                worst = worst.max(moved);
                total += moved;
            }
            let bound = 1.2 * f64::from(size) / (n + 1) as f64;
            println!(
                "add 1 to {n} (table {size}): other entries moved: mean {:.2}%, worst {:.2}% of the table (bound {:.2}%)",
                100.0 * total as f64 / (trials * size as usize) as f64,
                100.0 * worst as f64 / f64::from(size),
                100.0 * bound / f64::from(size),
            );
            assert!(
                worst as f64 <= bound,
                "add 1 to {n}: {worst} entries moved, bound {bound:.0}"
            );
            assert!(
                worst as f64 <= REGRESSION_GUARD * f64::from(size),
                "add 1 to {n}: {worst} moved"
            );
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut rng = Rng::new(6);
        for n in [2, 7, 40] {
            let set = backends(&mut rng, n, |r| r.range(0, 5));
            let size = table_size_for(n);
            let table = build_table(&set, size);
            for _ in 0..5 {
                let mut shuffled = set.clone();
                rng.shuffle(&mut shuffled);
                assert_eq!(build_table(&shuffled, size), table, "{n} backends shuffled");
            }
        }
    }

    /// Two nodes, two versions, same table: the key hash and the turn order
    /// are part of the wire contract between LB nodes. A change here must
    /// be deliberate.
    #[test]
    fn table_is_pinned() {
        let set: Vec<MaglevBackend> = (0..3u8)
            .map(|i| MaglevBackend {
                key: MaglevBackend::ipv4_key([10, 0, 0, 10 + i], [0, 80]),
                weight: u32::from(i) + 1,
                id: u32::from(i),
            })
            .collect();
        let table = build_table(&set, 251);
        assert_eq!(table[..24], PINNED_PREFIX);
        // FNV-1a over the whole table.
        let digest = table.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &id| {
            (h ^ u64::from(id)).wrapping_mul(0x100_0000_01b3)
        });
        assert_eq!(digest, PINNED_DIGEST);
    }

    const PINNED_PREFIX: [u32; 24] = [
        2, 1, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2, 2, 1, 1, 0, 2, 2, 1, 1, 2, 2,
    ];
    const PINNED_DIGEST: u64 = 0x28de_1292_5cc4_6c9b;

    #[test]
    fn size_rule() {
        assert_eq!(table_size_for(0), 251);
        assert_eq!(table_size_for(1), 251);
        assert_eq!(table_size_for(2), 251);
        assert_eq!(table_size_for(3), 509);
        assert_eq!(table_size_for(5), 509);
        assert_eq!(table_size_for(6), 1021);
        assert_eq!(table_size_for(10), 1021);
        assert_eq!(table_size_for(11), 2039);
        assert_eq!(table_size_for(50), 8191);
        assert_eq!(table_size_for(100), 16381);
        assert_eq!(table_size_for(655), 65521);
        assert_eq!(table_size_for(656), MAX_TABLE_SIZE);
        assert_eq!(table_size_for(usize::MAX), MAX_TABLE_SIZE);
        for n in 0..1000 {
            let size = table_size_for(n);
            assert!(TABLE_SIZES.contains(&size));
            let smaller = TABLE_SIZES.iter().take_while(|&&s| s < size).last();
            if size as usize >= n * ENTRIES_PER_BACKEND {
                assert!(
                    smaller.is_none_or(|&s| (s as usize) < n * ENTRIES_PER_BACKEND),
                    "{n}: not the smallest"
                );
            } else {
                assert_eq!(size, MAX_TABLE_SIZE);
            }
        }
        // Roughly doubling, so the table grows in few steps.
        for pair in TABLE_SIZES.windows(2) {
            let ratio = f64::from(pair[1]) / f64::from(pair[0]);
            assert!((1.95..2.05).contains(&ratio), "{pair:?}");
        }
        assert!(!is_prime(0) && !is_prime(1) && is_prime(2) && !is_prime(65535) && is_prime(65537));
    }
}
