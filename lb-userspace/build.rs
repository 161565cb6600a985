//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so that `cargo build` yields one self-contained
//! `xdplb` that embeds it. `cargo xtask setup` installs what this needs.

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
