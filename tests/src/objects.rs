//! The BPF objects for what loads them without an agent: the
//! BPF_PROG_TEST_RUN tests and `cargo xtask bench`.

/// The xdplb data plane: the program `xdplb` and its maps, exactly the
/// object the agent embeds and loads (built once, by lb-userspace).
pub static XDPLB_OBJECT: &[u8] = lb_userspace::loader::XDPLB_OBJECT;

/// test-ebpf's `bench-xdp` object: xdplb's packet path in save/restore
/// wrappers (test-ebpf/src/bench.rs), with xdplb's maps and two of its own.
pub static BENCH_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-xdp"));

/// test-ebpf's `lab-xdp` object: `xdp_pass`, `xdp_tx_floor`,
/// `xdp_count_drop` and the live-frames generator `xdp_bench_gen`.
pub static LAB_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab-xdp"));
