//! Everything the XDP program and the agent share: map value types, the
//! pass/drop reasons, the flow log's records, and the names and sizes of
//! the maps. One definition,
//! used by both sides; only integers and byte arrays cross the boundary.
//! Also the pure logic both sides need, tested on the host: checksum
//! arithmetic ([`csum`]), the flow hash ([`flow`]) and Maglev table
//! building ([`maglev`]).
#![cfg_attr(not(any(test, feature = "std")), no_std)]

// Only the agent allocates (Maglev tables); the eBPF build has no allocator.
#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

pub mod clock;
pub mod csum;
pub mod flow;
pub mod flowlog;
pub mod maglev;
pub mod maps;
pub mod service;
pub mod stats;
pub mod wire;

/// For the host tests here and the lab's packet fuzzer (tests/tests/fuzz.rs):
/// userspace only, never in the eBPF build.
#[cfg(any(test, feature = "std"))]
pub mod test_rng;
