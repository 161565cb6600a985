//! `cargo xtask setup`: the eBPF toolchain and the lab's packages, installed
//! idempotently so every command can call it on first use.
//!
//! bpf-linker must link against the same LLVM as the nightly rustc that
//! compiles the program (bitcode from one LLVM major is not readable by
//! another). rustup ships that LLVM as a shared library in the toolchain's
//! sysroot; we point bpf-linker's build at it through LLVM_PREFIX.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::run as run_cmd;

/// Debian packages the lab, the tests and the benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",     // ip netns, veth, bridge
    "util-linux",   // nsenter, setpriv
    "bpftool",      // inspecting programs and maps
    "iputils-ping", // the lab's ping
    "curl",
    "ethtool",           // GRO on the lab's veth peers, so native XDP_TX works
    "tcpdump",           // looking at lab traffic when a test fails
    "python3-scapy",     // malformed packets for the data-plane tests
    "fonts-dejavu-core", // the benchmark chart's font
    // The peers the benchmarks measure xdplb against, and the load.
    "haproxy",
    "nginx",
    "libnginx-mod-stream",
    "nftables",
    "wrk",
    // The VRRP peer the failover tests and the benchmark run beside xdplb.
    "keepalived",
    // ARP requests for the VRRP tests (who answers for the VIP).
    "arping",
    // The spoofed SYN and ACK floods of the flood tests: what users run
    // against a load balancer (`hping3 --flood --rand-source -S`).
    "hping3",
    // systemd-analyze, to verify the packaged unit.
    "systemd",
    // Headless, for the admin tests: loads the status page, takes screenshots.
    "chromium",
];

pub fn run() -> Result<()> {
    require_root("cargo xtask setup (apt-get, bpffs)")?;
    if !has("rustup") {
        bail!(
            "rustup is not on PATH: the eBPF build needs a nightly toolchain with rust-src, \
             which setup installs through rustup (https://rustup.rs), then run setup again"
        );
    }
    if !has("apt-get") {
        bail!(
            "apt-get is not here: setup installs the lab's packages from Debian (or Ubuntu); \
               on another distribution install {} by hand",
            APT_PACKAGES.join(" ")
        );
    }
    bpffs()?;
    bpf_syscall()?;
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    println!("setup: done");
    Ok(())
}

/// Runs setup when something it installs is missing; cheap when all is there.
pub fn ensure() -> Result<()> {
    let missing_apt = !missing_packages().is_empty();
    if missing_apt || !rust_src_installed() || !bpf_linker_current()? {
        println!("setup: first use on this machine, installing the toolchain");
        return run();
    }
    Ok(())
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root: run it with sudo (or as root)");
    }
    Ok(())
}

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf "))
    {
        return Ok(());
    }
    println!("setup: mounting bpffs on {BPFFS}");
    fs::create_dir_all(BPFFS)?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .context("bpffs is not mounted on /sys/fs/bpf and mounting it failed")
}

/// A map create/delete round trip proves the bpf() syscall works here
/// (it fails in unprivileged containers and under some seccomp profiles).
fn bpf_syscall() -> Result<()> {
    if !has("bpftool") {
        return Ok(()); // checked again once apt has installed it
    }
    let pin = format!("{BPFFS}/xdplb-setup-check-{}", std::process::id());
    let out = Command::new("bpftool")
        .args([
            "map",
            "create",
            &pin,
            "type",
            "array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "xdplb_check",
        ])
        .output()?;
    let _ = fs::remove_file(&pin);
    if !out.status.success() {
        bail!(
            "the bpf() syscall is not usable here ({}); xdplb needs a kernel with BPF and CAP_BPF",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .stderr(Stdio::null())
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return bpf_syscall();
    }
    println!("setup: apt-get install {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    bpf_syscall()
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
}

fn nightly_rust_src() -> Result<()> {
    let have_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        });
    if !have_nightly {
        println!("setup: installing the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !rust_src_installed() {
        println!("setup: rustup component add rust-src --toolchain nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly's LLVM: major version and the shared library file.
struct NightlyLlvm {
    major: u32,
    library: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` does not say its LLVM version:\n{vv}"))?;
    let major: u32 = version
        .split('.')
        .next()
        .unwrap_or_default()
        .parse()
        .context("parsing the LLVM major version")?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib_dir = sysroot.join("lib");
    // The real library is `libLLVM.so.<major>.<minor>-rust-<ver>-nightly`;
    // `libLLVM-<major>-rust-...so` beside it is a linker script.
    let library = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
                && fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.{major}* in {}", lib_dir.display()))?;
    Ok(NightlyLlvm { major, library })
}

/// Where the LLVM_PREFIX for bpf-linker lives. bpf-linker's RUNPATH points
/// here, so it must outlive the build: under CARGO_HOME, beside the binary.
fn llvm_prefix(llvm: &NightlyLlvm) -> PathBuf {
    let name = llvm
        .library
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    cargo_home().join("xdplb-llvm").join(name)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// bpf-linker is installed, runs, and was built by us for this nightly's LLVM.
fn bpf_linker_current() -> Result<bool> {
    let llvm = match nightly_llvm() {
        Ok(l) => l,
        Err(_) => return Ok(false),
    };
    let marker = llvm_prefix(&llvm).join("built-bpf-linker");
    let runs = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(marker.exists() && runs.is_ok_and(|s| s.success()))
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_current()? {
        return Ok(());
    }
    let llvm = nightly_llvm()?;
    let prefix = llvm_prefix(&llvm);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for name in [
        Path::new("libLLVM.so"),
        Path::new(llvm.library.file_name().unwrap_or_default()),
    ] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm.library, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker against the nightly's LLVM {} ({})",
        llvm.major,
        llvm.library.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{}", llvm.major))
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(
        prefix.join("built-bpf-linker"),
        llvm.library.to_string_lossy().as_bytes(),
    )?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
