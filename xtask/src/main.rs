//! `cargo xtask`: what cargo cannot do by itself — install the eBPF
//! toolchain, run the agent as root, the namespace lab, the tests that need
//! it, and the benchmarks.

mod bench;
mod demo;
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
        /// Run only these parts (repeatable): pkt, scale, memory, mpps, e2e.
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
            let bin_dir = build(true)?;
            // The lab runs the release agent, not the debug one beside xtask.
            // SAFETY: no other thread exists yet.
            unsafe { std::env::set_var("XDPLB_BIN_DIR", &bin_dir) };
            bench::run(bench::Options { quick }, &only)
        }
        Cmd::Lab { hold } => {
            build(false)?;
            demo::run(hold)
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
/// fake apiserver; returns the directory holding the binaries.
fn build(release: bool) -> Result<PathBuf> {
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-userspace", "-p", "lab", "--bins"]);
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
    // Host unit tests first: they need no privileges and fail fastest.
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--lib",
        "--bins",
    ]))?;
    // Then the lab: real namespaces, real packets, real XDP.
    setup::require_root("the end-to-end lab tests")?;
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
