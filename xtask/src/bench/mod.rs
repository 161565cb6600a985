//! `cargo xtask bench`: xdplb measured beside its peers in one run, on the
//! same machine, reported as ratios (these machines are noisy; absolute
//! numbers from different runs are not comparable).
//!
//! Each part returns a [`Section`]; `report` writes
//! `bench/results/<date>.{md,json,png}` and prints the summary.

mod e2e;
mod mpps;
mod pkt;
mod report;

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

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
    crate::setup::require_root("cargo xtask bench (namespaces, XDP, pinned CPUs)")?;
    let started = Instant::now();
    let machine = report::Machine::probe();
    if machine.loadavg_1m > 0.5 {
        println!(
            "bench: the machine is busy (load average {:.2}); results will be noisier",
            machine.loadavg_1m
        );
    }
    let mut sections = Vec::new();
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
    ];
    if let Some(bad) = only.iter().find(|o| !parts.iter().any(|(k, _, _)| k == o)) {
        anyhow::bail!("--only {bad}: not a part (pkt, scale, memory, mpps, e2e)");
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
    let report = report::Report::new(machine, opts, partial, sections, started.elapsed());
    report.write(&crate::workspace_root().join("bench/results"))?;
    report.print_summary();
    Ok(())
}
