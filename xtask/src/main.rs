//! `cargo xtask`: what cargo cannot do by itself — install the eBPF
//! toolchain, run the agent as root, the namespace lab, the tests that need
//! it, and the benchmarks.
//!
//! Thin by design: xtask depends on no workspace crate (their build scripts
//! compile BPF, which needs what `setup` installs). It shells out to cargo
//! to build the crates that do the work — the agent, the lab's demo
//! (`xdplb-lab`), the benchmark (`xdplb-bench`) — and runs them.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent: safe every time).
    Setup,
    /// Build the XDP program and the agent that embeds it: target/<profile>/xdplb.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `xdplb ARGS` (e.g. `cargo xtask run -- --iface ens33`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Host unit tests, then the end-to-end lab tests (needs root).
    Test {
        /// Extra arguments for the lab tests' test binaries (e.g. a name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// xdplb beside haproxy, nginx and nftables in one run: bench/results/<date>.md.
    Bench {
        /// Smoke run (under 2 minutes); CI may run it, results are not meaningful.
        #[arg(long)]
        quick: bool,
        /// Run only these parts (repeatable): pkt, scale, memory, mpps, e2e,
        /// flood, failover.
        /// Results go to <date>-partial.*, which is not committed.
        #[arg(long, value_name = "PART")]
        only: Vec<String>,
    },
    /// Bring up the lab, run xdplb on lb1, send traffic, print a report, tear down.
    Lab {
        /// Keep the lab up after the report, until Ctrl-C, to look around
        /// (`nsenter --net=/var/run/netns/<ns> ...`).
        #[arg(long)]
        hold: bool,
    },
}

fn main() {
    if let Err(e) = dispatch(Cli::parse().cmd) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Run { release, args } => {
            let dir = build(release)?;
            let status = Command::new(dir.join("xdplb"))
                .args(&args)
                .status()
                .context("starting xdplb")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => test(&args),
        Cmd::Bench { quick, only } => {
            setup::require_root("cargo xtask bench (namespaces, XDP, pinned CPUs)")?;
            let bin_dir = build_with(true, &["-p", "xdplb-bench"])?;
            let mut cmd = Command::new(bin_dir.join("xdplb-bench"));
            if quick {
                cmd.arg("--quick");
            }
            for part in &only {
                cmd.args(["--only", part]);
            }
            // The lab runs the release agent, not a debug one.
            run(cmd.env("XDPLB_BIN_DIR", &bin_dir))
        }
        Cmd::Lab { hold } => {
            setup::require_root("cargo xtask lab (network namespaces, XDP)")?;
            let bin_dir = build(false)?;
            let mut cmd = Command::new(bin_dir.join("xdplb-lab"));
            if hold {
                cmd.arg("--hold");
            }
            run(cmd.env("XDPLB_BIN_DIR", &bin_dir))
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the agent (which builds the XDP program in build.rs) and the lab's
/// binaries (the fake apiserver, the demo); returns the directory holding
/// the binaries.
fn build(release: bool) -> Result<PathBuf> {
    build_with(release, &[])
}

/// `build`, plus the packages `extra` names (`-p NAME`...).
fn build_with(release: bool, extra: &[&str]) -> Result<PathBuf> {
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-userspace", "-p", "lab"])
        .args(extra)
        .arg("--bins");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

fn test(args: &[String]) -> Result<()> {
    let bin_dir = build(false)?;
    setup::require_root("the end-to-end lab tests")?;
    // Unit tests first: they fail fastest. Some need root (a namespace for
    // netlink, kernel maps, BPF_PROG_TEST_RUN) and fail without it.
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--exclude",
            "test-ebpf",
            "--lib",
            "--bins",
        ])
        .env("XDPLB_BIN_DIR", &bin_dir))?;
    // Then the lab: real namespaces, real packets, real XDP.
    run(cargo()
        .args(["test", "-p", "lab", "--test", "*", "--"])
        .args(args)
        .env("XDPLB_BIN_DIR", &bin_dir))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
