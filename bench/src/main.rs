//! `xdplb-bench` (`cargo xtask bench`): xdplb measured beside its peers in one run, on the
//! same machine, reported as ratios (these machines are noisy; absolute
//! numbers from different runs are not comparable).
//!
//! Each part returns a [`Section`]; `report` writes
//! `bench/results/<date>.{md,json,png}` and prints the summary.

mod e2e;
mod failover;
mod flood;
mod mpps;
mod pkt;
mod report;

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use serde::Serialize;

/// xdplb beside haproxy, nginx and nftables in one run: bench/results/<date>.md.
#[derive(Parser)]
#[command(name = "xdplb-bench")]
struct Cli {
    /// Smoke run (under 2 minutes); CI may run it, results are not meaningful.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (repeatable): pkt, scale, memory, mpps, e2e,
    /// flood, failover.
    /// Results go to <date>-partial.*, which is not committed.
    #[arg(long, value_name = "PART")]
    only: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(Options { quick: cli.quick }, &cli.only) {
        eprintln!("xdplb-bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// Options every part sees.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A smoke run: fewer repeats and shorter loads (under 2 minutes).
    pub quick: bool,
}

/// One measured quantity: median of the runs, with min and max.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub name: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Measurement {
    pub fn from_samples(
        name: impl Into<String>,
        unit: impl Into<String>,
        mut samples: Vec<f64>,
    ) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Measurement {
            name: name.into(),
            unit: unit.into(),
            median,
            min: samples.first().copied().unwrap_or(f64::NAN),
            max: samples.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// A ratio against a peer measured in the same run, and the goal it is
/// judged against.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub what: String,
    pub value: f64,
    /// e.g. "≤ 3 × (Katran: 5.2 ×)".
    pub goal: String,
    pub met: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Section {
    pub title: String,
    /// How it was measured, caveats, what was not measured and why.
    pub notes: Vec<String>,
    pub rows: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
}

/// `only`: part keys to run (empty: all of them).
pub fn run(opts: Options, only: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "cargo xtask bench (namespaces, XDP, pinned CPUs) needs root: run it with sudo (or as root)"
        );
    }
    let started = Instant::now();
    let machine = report::Machine::probe();
    if machine.loadavg_1m > 0.5 {
        println!(
            "bench: the machine is busy (load average {:.2}); results will be noisier",
            machine.loadavg_1m
        );
    }
    let mut sections: Vec<Section> = Vec::new();
    // Each part is independent: one failing is reported, the rest still run.
    type Part = fn(Options) -> Result<Section>;
    let parts: &[(&str, &str, Part)] = &[
        ("pkt", "per-packet cost (BPF_PROG_TEST_RUN)", pkt::run),
        (
            "scale",
            "per-packet cost as the flow table grows",
            pkt::scale,
        ),
        ("memory", "memory of the maps", pkt::memory),
        (
            "mpps",
            "forwarding rate (live frames through veth)",
            mpps::run,
        ),
        (
            "e2e",
            "end to end in the lab: requests per second",
            e2e::run,
        ),
        (
            "e2e",
            "end to end in the lab: LB CPU per request",
            e2e::cpu_per_request,
        ),
        ("e2e", "end to end in the lab: latency", e2e::latency),
        (
            "flood",
            "floods: legit connections that succeeded",
            flood::legit,
        ),
        (
            "flood",
            "floods: legit connections' handshake time",
            flood::connect_time,
        ),
        (
            "flood",
            "floods: LB CPU per flood packet",
            flood::cpu_per_packet,
        ),
        ("flood", "floods: flood rate", flood::rate),
        (
            "failover",
            "VRRP failover beside keepalived + haproxy",
            failover::run,
        ),
    ];
    if let Some(bad) = only.iter().find(|o| !parts.iter().any(|(k, _, _)| k == o)) {
        anyhow::bail!("--only {bad}: not a part (pkt, scale, memory, mpps, e2e, flood, failover)");
    }
    let partial = !only.is_empty();
    for (key, name, part) in parts {
        if partial && !only.iter().any(|o| o == key) {
            continue;
        }
        println!("bench: {name}...");
        match part(opts) {
            Ok(s) => sections.push(s),
            Err(e) => sections.push(Section {
                title: name.to_string(),
                notes: vec![format!("FAILED: {e:#}")],
                ..Default::default()
            }),
        }
    }
    let leftovers = leftovers();
    if !leftovers.is_empty() {
        sections.push(Section {
            title: "cleanup".into(),
            notes: vec![format!("FAILED: left behind: {}", leftovers.join("; "))],
            ..Default::default()
        });
    }
    let report = report::Report::new(machine, opts, partial, sections, started.elapsed());
    report.write(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results"))?;
    report.print_summary();
    if !leftovers.is_empty() {
        anyhow::bail!("the bench left behind: {}", leftovers.join("; "));
    }
    Ok(())
}

/// What this run made and should have removed, if any is still there:
/// network namespaces and pin directories named for this process (the lab
/// and bench parts put its PID in every name), and child processes.
fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    // Lab namespaces and pins: xl<pid>-…; the per-packet and mpps parts'
    // pins: xdplb-bench-<pid>-… and xdplb-bench-mpps-<pid>-….
    let ours = |name: &str| {
        [
            format!("xl{pid}-"),
            format!("xdplb-bench-{pid}-"),
            format!("xdplb-bench-mpps-{pid}-"),
        ]
        .iter()
        .any(|p| name.starts_with(p.as_str()))
    };
    let mut left = Vec::new();
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if ours(name) {
                left.push(format!("network namespace {name}"));
            }
        }
    }
    for dir in ["/sys/fs/bpf", lab::PIN_ROOT] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ours(&name) {
                left.push(format!("pins {}", e.path().display()));
            }
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // Fields after the parenthesised comm: state, then the parent's PID.
        let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(pid) && state != Some("Z") {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            left.push(format!("process {child} ({})", comm.trim()));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace named for this process and a live child are reported;
    /// once both are gone, nothing is.
    #[test]
    fn leftovers_finds_what_a_run_left_behind() {
        // SAFETY: no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (ip netns add)");
        let ns = format!("xl{}-9999-leftover-test", std::process::id());
        let ip = |verb: &str| {
            std::process::Command::new("ip")
                .args(["netns", verb, &ns])
                .status()
                .unwrap()
        };
        assert!(ip("add").success());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = leftovers();
        let _ = child.kill();
        let _ = child.wait();
        assert!(ip("delete").success());
        assert!(
            found.iter().any(|l| l.contains(&ns)),
            "the namespace is not reported: {found:?}"
        );
        assert!(
            found
                .iter()
                .any(|l| l.contains(&format!("process {}", child.id()))),
            "the child is not reported: {found:?}"
        );
        let after = leftovers();
        assert!(
            !after
                .iter()
                .any(|l| l.contains(&ns) || l.contains(&child.id().to_string())),
            "still reported after removal: {after:?}"
        );
    }
}
