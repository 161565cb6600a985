//! The agent's state as the admin endpoint shows it: one snapshot, built by
//! the loop after each change and each report tick, then read by `/status`
//! (as JSON), `/metrics`, the status page and `xdplb status`. Plain data:
//! nothing here reads a map or holds a lock.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::Level;

/// The whole state, as of `at`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub iface: String,
    /// `master` when this node's data plane serves its VIPs (always, without
    /// VRRP), `backup` while it is fenced.
    pub role: String,
    pub uptime_s: u64,
    /// Unix time of the snapshot, in seconds.
    pub at: u64,
    /// `--config`, when the services come from a file.
    pub config_file: Option<String>,
    pub reloads: Reloads,
    pub services: Vec<Service>,
    pub flows: Flows,
    /// Where NATed connections come from, and how many a backend can take.
    #[serde(default)]
    pub nat: Nat,
    /// Half-open TCP connections (EMBRYOS).
    #[serde(default)]
    pub half_open: HalfOpen,
    /// Packets and bytes the data plane counted per reason (every reason,
    /// zeros included), summed over CPUs.
    pub dataplane: Vec<ReasonCount>,
    pub vrrp: Vec<Vrrp>,
    /// The last [`EVENTS_KEPT`] log-worthy events, oldest first.
    pub events: Vec<LogEvent>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
    /// Whether the last reload took (true before any).
    pub last_ok: bool,
    /// Unix time of the last reload, in seconds.
    pub last_at: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub proto: String,
    /// The check, as the flag spells it: `https:/readyz`, `tcp`, `none`.
    pub check: String,
    pub traffic: Traffic,
    /// Backends that take new connections: up, weight > 0, not drained.
    pub backends_up: usize,
    /// Every backend is down, so all of them stay in the table.
    pub failing_open: bool,
    pub backends: Vec<Backend>,
}

/// What the data plane forwarded: for a service, its clients' packets to
/// the backends; for a backend, its connections' packets both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    /// New connections (flows) the data plane sent there.
    pub connections: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub weight: u32,
    /// `up`, `down`, or `drain` (up, but no new connections: drained by
    /// command or weight 0).
    pub state: String,
    /// By its checks (an unchecked backend is up).
    pub up: bool,
    /// Drained by `xdplb backend drain`.
    pub drained: bool,
    /// None when the service is not checked.
    pub health: Option<Health>,
    pub traffic: Traffic,
    /// NAT ports held towards the backend as of the last ageing pass;
    /// None before the first (or for a backend not in the maps yet).
    #[serde(default)]
    pub nat_ports: Option<NatPorts>,
}

/// NAT ports held towards one backend (of [`Nat::capacity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatPorts {
    /// By established connections: these run out.
    pub established: u64,
    /// By half-open ones: a new connection reclaims these when it must.
    pub half_open: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nat {
    /// The SNAT pool.
    pub snat_ips: Vec<String>,
    /// NAT source ports, `LO-HI`, per SNAT address.
    pub ports: String,
    /// Connections one backend can hold at once: ports × SNAT addresses.
    pub capacity: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfOpen {
    /// EMBRYOS entries (two per half-open connection) at the last ageing
    /// pass; None before the first.
    pub entries: Option<u64>,
    /// The table's size (`max_embryos`).
    pub max: u64,
    /// Counted by the data plane, summed over CPUs: half-open connections
    /// made, promoted to FLOWS (their handshake completed), whose NAT
    /// port a newer one took (a flood's mark), and ended by an RST.
    pub opened: u64,
    pub promoted: u64,
    pub reclaimed: u64,
    pub reset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `pending`, or why the last check failed.
    pub last_check: String,
    /// Of the last check that passed.
    pub latency_ms: Option<f64>,
    /// Of the last check, passed or failed.
    pub check_duration_ms: Option<f64>,
    /// Seconds in the current state.
    pub since_s: u64,
    pub checks: u64,
    pub failures: u64,
    /// Changes between up and down, either way.
    pub transitions: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flows {
    /// FLOWS entries (two per NATed connection) at the last ageing pass;
    /// None before the first.
    pub entries: Option<u64>,
    pub connections: Option<u64>,
    /// The table's size (`max_flows`).
    pub max: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// `tx_forward`, `drop_malformed_l4`…
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

impl ReasonCount {
    /// The verdict a reason stands for: its name's first word (`pass`,
    /// `tx`, `redirect`, `drop`, `aborted`).
    pub fn verdict(&self) -> &str {
        self.reason.split('_').next().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vrrp {
    pub instance: String,
    pub vrid: u8,
    /// `master`, `backup` or `initialize`.
    pub state: String,
    pub priority: u8,
    /// The priority after tracking weights.
    pub effective_priority: u8,
    /// The current master, as far as this node knows.
    pub master: Option<String>,
    pub vips: Vec<String>,
    pub transitions: u64,
    pub became_master: u64,
    pub released_master: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub priority_zero_sent: u64,
    pub priority_zero_received: u64,
    /// Every reject reason, zeros included.
    pub rejects: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Unix time, in seconds.
    pub at: u64,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

/// How many events the status keeps.
pub const EVENTS_KEPT: usize = 50;

/// What the loop remembers for the status besides its own state: recent
/// events and reload outcomes.
#[derive(Debug)]
pub struct Journal {
    events: VecDeque<LogEvent>,
    pub reloads: Reloads,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            events: VecDeque::with_capacity(EVENTS_KEPT),
            reloads: Reloads {
                last_ok: true,
                ..Reloads::default()
            },
        }
    }
}

impl Journal {
    pub fn push(&mut self, level: Level, message: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(LogEvent {
            at: unix_now(),
            level: level.as_str().to_ascii_lowercase(),
            message,
        });
    }

    pub fn reloaded(&mut self, outcome: &Result<String, String>) {
        let r = &mut self.reloads;
        r.last_at = Some(unix_now());
        r.last_ok = outcome.is_ok();
        match outcome {
            Ok(_) => {
                r.ok += 1;
                r.last_error = None;
            }
            Err(e) => {
                r.failed += 1;
                r.last_error = Some(e.clone());
            }
        }
    }

    pub fn events(&self) -> Vec<LogEvent> {
        self.events.iter().cloned().collect()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `HH:MM:SS` (UTC) of a unix time, for the page and the table.
pub fn clock(at: u64) -> String {
    let s = at % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: a duration the way people say it.
pub fn ago(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `1.5 KiB`, `3.2 MiB`: bytes for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keeps_the_last_events_and_reload_outcomes() {
        let mut j = Journal::default();
        for i in 0..EVENTS_KEPT + 5 {
            j.push(Level::INFO, format!("event {i}"));
        }
        let events = j.events();
        assert_eq!(events.len(), EVENTS_KEPT);
        assert_eq!(events[0].message, "event 5");
        assert_eq!(events[0].level, "info");
        assert!(j.reloads.last_ok, "no reload yet counts as a good one");
        j.reloaded(&Err("x.toml:3: bad".into()));
        assert_eq!(
            (
                j.reloads.failed,
                j.reloads.last_ok,
                j.reloads.last_error.as_deref()
            ),
            (1, false, Some("x.toml:3: bad"))
        );
        j.reloaded(&Ok("reloaded".into()));
        assert_eq!(
            (j.reloads.ok, j.reloads.last_ok, j.reloads.last_error),
            (1, true, None)
        );
    }

    #[test]
    fn people_units() {
        assert_eq!(ago(12), "12s");
        assert_eq!(ago(250), "4m10s");
        assert_eq!(ago(7500), "2h5m");
        assert_eq!(ago(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(clock(86_400 + 3661), "01:01:01");
    }
}
