//! Builds test-ebpf's programs, which the lab and the benchmarks use beside
//! xdplb: `lab-xdp` (an XDP_PASS for veth peers, the floors, the live-frames
//! generator) and `bench-xdp` (the packet path in benchmark wrappers). The
//! product's own object comes from lb-userspace, which builds it once.

fn main() -> anyhow::Result<()> {
    // test-ebpf also compiles lb-ebpf and lb-common; aya-build only watches
    // the package it builds.
    println!("cargo:rerun-if-changed=../lb-common/src");
    println!("cargo:rerun-if-changed=../lb-ebpf/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "test-ebpf",
            root_dir: "../test-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
