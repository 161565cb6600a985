//! `xdplb` running on a lab host: start, read its pinned counters, check
//! that its program is attached, stop.

use std::{fs, path::PathBuf, process::ExitStatus, time::Duration};

use anyhow::{Context, Result, anyhow};
use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{
    maps,
    stats::{Counter, ReasonTotals},
};

use crate::{Host, bins, netns, proc::Proc};

/// What the agent logs once its program is attached and it serves.
pub const READY: &str = "xdplb ready";

pub struct AgentOptions<'a> {
    pub host: &'a Host,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
}

pub struct Agent {
    pub proc: Proc,
    pub ns: String,
    pub pin_dir: PathBuf,
}

impl Agent {
    pub fn start(opts: AgentOptions) -> Result<Agent> {
        let bin = bins::path("xdplb")?;
        let mut cmd = netns::command_in(&opts.host.ns.name, &bin.to_string_lossy());
        cmd.args(["--iface", "eth0", "--report-interval", "1s", "--pin-dir"])
            .arg(&opts.pin_dir)
            .args(&opts.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut proc = Proc::spawn(&format!("xdplb on {}", opts.host.name), cmd, &opts.log)?;
        proc.wait_for_line(READY, Duration::from_secs(20))?;
        Ok(Agent {
            proc,
            ns: opts.host.ns.name.clone(),
            pin_dir: opts.pin_dir,
        })
    }

    /// The reason counters, read from the pinned map as `bpftool` would.
    pub fn reasons(&self) -> Result<ReasonTotals> {
        let path = self.pin_dir.join(maps::REASON_STATS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(Map::from_map_data(data)?)?;
        Ok(ReasonTotals::read(&map)?)
    }

    /// The id of the XDP program attached to eth0, per the kernel.
    pub fn attached_prog_id(&self) -> Result<Option<u32>> {
        xdp_prog_id(&self.ns, "eth0")
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.proc.signal(libc::SIGTERM)?;
        self.proc
            .wait_timeout(Duration::from_secs(10))?
            .ok_or_else(|| {
                anyhow!(
                    "xdplb did not exit within 10 s of SIGTERM; output:\n{}",
                    self.proc.output()
                )
            })
    }

    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// What a failing test prints after its message: the nonzero reason
    /// counters and the last 40 lines of the log, so that a failure says
    /// what the data plane did and what the agent decided. Never fails:
    /// a counter read error is quoted instead.
    pub fn diag(&self) -> String {
        let counters = match self.reasons() {
            Ok(r) => r
                .nonzero()
                .map(|(r, c)| format!("{}={}", r.name(), c.packets))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("(cannot read them: {e:#})"),
        };
        let log = self.output();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("\nreason counters: {counters}\nxdplb log (last 40 lines):\n{tail}")
    }

    pub fn pins(&self) -> Vec<String> {
        fs::read_dir(&self.pin_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The XDP program id on `iface` in namespace `ns` (`ip -d -j link show`).
pub fn xdp_prog_id(ns: &str, iface: &str) -> Result<Option<u32>> {
    let out = netns::run(
        std::process::Command::new("ip").args(["-n", ns, "-d", "-j", "link", "show", "dev", iface]),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link` output")?;
    let xdp = &v[0]["xdp"];
    let id = xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64());
    Ok(id.map(|id| id as u32))
}

/// Whether the kernel still has a program with this id (`bpftool prog show id`).
pub fn prog_exists(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
