//! The BPF objects build.rs compiles from lb-ebpf, for what loads them
//! without an agent: the BPF_PROG_TEST_RUN tests and `cargo xtask bench`.

/// The xdplb data plane (lb-ebpf's `lb-ebpf` binary): the program `xdplb`
/// and its maps, as the agent loads it.
pub static XDPLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// lb-ebpf's `bench-xdp` object: xdplb's packet path in save/restore
/// wrappers (lb-ebpf/src/bench.rs), with xdplb's maps and two of its own.
pub static BENCH_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-xdp"));

/// lb-ebpf's `lab-xdp` object: `xdp_pass`, `xdp_tx_floor`, `xdp_count_drop`
/// and the live-frames generator `xdp_bench_gen`.
pub static LAB_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab-xdp"));
