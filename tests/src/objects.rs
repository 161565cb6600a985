//! The BPF objects build.rs compiles from lb-ebpf, for tests that load them
//! without an agent (BPF_PROG_TEST_RUN).

/// The xdplb data plane (lb-ebpf's `lb-ebpf` binary): the program `xdplb`
/// and its maps, as the agent loads it.
pub static XDPLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
