//! Builds lb-ebpf's programs so the lab can embed its helpers (lab-xdp):
//! an XDP_PASS for veth peers and the benchmark floors.

fn main() -> anyhow::Result<()> {
    // The program also compiles lb-common; aya-build only watches lb-ebpf.
    println!("cargo:rerun-if-changed=../lb-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: "../lb-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
