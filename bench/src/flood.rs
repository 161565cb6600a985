//! Flood resistance (issue 13): legit connections through a load balancer
//! while the client floods it with spoofed SYNs (then ACKs), and what the
//! flood costs the LB node, for xdplb and haproxy in the same run.
//!
//! The flood is the one a user ran against a lab like ours:
//! `hping3 --flood --rand-source -S -p PORT VIP`. Beside it a legit client
//! opens one connection after another, each with a few seconds to get an
//! answer, as a kubectl would.
//!
//! The lab and the LBs are the end-to-end part's ([`PinnedLab`],
//! [`peers::start`]): lb1's work on cpu1, everything else (hping3, the
//! legit client, the backends, the bridge) on cpu0, so cpu1's busy time
//! over the flood is what the flood cost the LB node.
//!
//! One measurement feeds four sections; it runs once, on the first call,
//! and the others read it.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use lab::{Host, proc::Proc};

use lb_common::stats::{Reason, ReasonTotals};

use super::{
    Measurement, Options, Ratio, Section,
    e2e::{
        PinnedLab,
        cpu::{self, LB_CPU, LOAD_CPU},
        peers::{self, Lb},
    },
};

/// The legit client's budget per connection, from connect() to the
/// answer: a SYN lost once is retransmitted after 1 s and still makes it,
/// one lost twice (the next retransmit is at 3 s) does not. What a client
/// with a short connect timeout sees.
const ATTEMPT: Duration = Duration::from_secs(3);
/// The legit client starts a connection at most this often: a trickle of
/// new connections, not a load of its own on the LB's CPU.
const PACE: Duration = Duration::from_millis(50);
/// The flood runs this long before the legit client starts, so every
/// legit connection meets it in full swing (xdplb's tables full, haproxy's
/// SYN queue overflowing into cookies).
const RAMP: Duration = Duration::from_secs(1);

/// generic first: the mode of the user's report.
const LBS: [Lb; 3] = [Lb::XdplbGeneric, Lb::Xdplb, Lb::Haproxy];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flood {
    Syn,
    Ack,
}

impl Flood {
    const ALL: [Flood; 2] = [Flood::Syn, Flood::Ack];

    fn name(self) -> &'static str {
        match self {
            Flood::Syn => "SYN flood",
            Flood::Ack => "ACK flood",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Flood::Syn => "-S",
            Flood::Ack => "-A",
        }
    }
}

static MEASURED: OnceLock<Result<[Section; 4], String>> = OnceLock::new();

/// Legit connections that succeeded under the flood (runs the measurement
/// if no section has yet).
pub fn legit(opts: Options) -> Result<Section> {
    section(opts, 0)
}

/// The legit connections' handshake time.
pub fn connect_time(opts: Options) -> Result<Section> {
    section(opts, 1)
}

/// LB CPU per flood packet.
pub fn cpu_per_packet(opts: Options) -> Result<Section> {
    section(opts, 2)
}

/// The flood's rate.
pub fn rate(opts: Options) -> Result<Section> {
    section(opts, 3)
}

fn section(opts: Options, i: usize) -> Result<Section> {
    match MEASURED.get_or_init(|| measure(opts).map(sections).map_err(|e| format!("{e:#}"))) {
        Ok(s) => Ok(s[i].clone()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

struct Plan {
    reps: usize,
    /// How long the legit client opens connections; the flood runs RAMP
    /// longer, and until the client's last attempt is over.
    window: Duration,
}

impl Plan {
    fn new(opts: Options) -> Plan {
        if opts.quick {
            Plan {
                reps: 1,
                window: Duration::from_secs(3),
            }
        } else {
            Plan {
                reps: 3,
                window: Duration::from_secs(10),
            }
        }
    }
}

/// What the legit client saw in one flood.
#[derive(Debug, Default)]
struct Legit {
    attempted: u64,
    succeeded: u64,
    /// Handshake times of the connections that succeeded, ms.
    connect_ms: Vec<f64>,
}

impl Legit {
    fn percent(&self) -> f64 {
        100.0 * self.succeeded as f64 / self.attempted.max(1) as f64
    }
}

/// One flood against one LB.
struct Run {
    legit: Legit,
    /// Packets hping3 says it sent.
    sent: u64,
    /// The flood's wall time, s.
    secs: f64,
    /// cpu1 busy seconds over the flood (wall − idle, see cpu::BusyClock).
    lb_busy_s: f64,
    /// Packets dropped on the way into lb1 because its veth's ring was full
    /// (native XDP's: the bridge side's tx_dropped).
    ring_drops: u64,
    /// Packets dropped at a full per-CPU backlog (RPS queue): on the LB
    /// CPU, lb1's receive path; on the load CPU, the client's and the
    /// backends' and the bridge's.
    lb_backlog_drops: u64,
    load_backlog_drops: u64,
    /// User-mode seconds on the LB CPU that were not the LB's: other
    /// programs (a build, another test) that ran there during the flood
    /// and are in `lb_busy_s`. The machine is shared and nothing keeps
    /// them out; this tells the reader which runs they spoilt.
    foreign_user_s: f64,
    /// xdplb's verdicts over the flood, by reason, the largest first.
    verdicts: Vec<(&'static str, u64)>,
}

impl Run {
    /// Other programs ran on the LB CPU for more than a trace of the flood.
    fn spoilt(&self) -> bool {
        self.foreign_user_s > 0.02 * self.secs
    }

    fn ns_per_packet(&self) -> f64 {
        1e9 * self.lb_busy_s / self.sent.max(1) as f64
    }

    fn pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

struct Measured {
    plan: Plan,
    /// By (LBS index, Flood::ALL index).
    runs: BTreeMap<(usize, usize), Vec<Run>>,
    hping3: String,
    notes: Vec<String>,
}

fn measure(opts: Options) -> Result<Measured> {
    let plan = Plan::new(opts);
    let hping3 = hping3_version()?;
    let mut pinned = PinnedLab::start()?;
    // The flood's sources are anywhere: the LB's answers to them (SYN-ACKs,
    // RSTs, xdplb's NATed replies from the backends) leave through a
    // gateway, as on a real node, and are paid for. Without a route they
    // would die in lb1's route lookup (haproxy's kernel) or be passed by
    // xdplb to a kernel that cannot forward them: neither what a node does.
    // The client is the gateway: it drops what is not its own (forwarding
    // is off in its namespace).
    let gw = pinned.lab.host("client").ip.to_string();
    pinned
        .lab
        .host("lb1")
        .ns
        .ip(&["route", "add", "default", "via", &gw])?;
    let mut runs: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    let mut notes = Vec::new();
    for rep in 0..plan.reps {
        for (fi, &flood) in Flood::ALL.iter().enumerate() {
            for (li, &lb) in LBS.iter().enumerate() {
                match one(&mut pinned, lb, flood, &plan) {
                    Ok(r) => {
                        println!(
                            "bench flood: rep {} {:<13} {}: legit {}/{} ({:.0}%) p50 {:.1} ms; {} packets in {:.1} s ({:.0} pps), dropped: {} in lb1's veth ring, {} + {} at cpu{LB_CPU}'s + cpu{LOAD_CPU}'s backlog; cpu{LB_CPU} busy {:.0}% ({:.2} s of it other programs'), {:.0} ns/packet",
                            rep + 1,
                            lb.name(),
                            flood.name(),
                            r.legit.succeeded,
                            r.legit.attempted,
                            r.legit.percent(),
                            percentile(&r.legit.connect_ms, 50.0),
                            r.sent,
                            r.secs,
                            r.pps(),
                            r.ring_drops,
                            r.lb_backlog_drops,
                            r.load_backlog_drops,
                            100.0 * r.lb_busy_s / r.secs,
                            r.foreign_user_s,
                            r.ns_per_packet()
                        );
                        runs.entry((li, fi)).or_default().push(r);
                    }
                    Err(e) => {
                        println!(
                            "bench flood: {} {} failed in repetition {}: {e:#}",
                            lb.name(),
                            flood.name(),
                            rep + 1
                        );
                        notes.push(format!(
                            "FAILED: {} {} in repetition {}: {e:#}",
                            lb.name(),
                            flood.name(),
                            rep + 1
                        ));
                    }
                }
            }
        }
    }
    notes.splice(0..0, pinned.conditions());
    drop(pinned);
    Ok(Measured {
        plan,
        runs,
        hping3,
        notes,
    })
}

/// One flood against a freshly started `lb`, with fresh backends: nothing
/// an earlier flood left (flows, half-open connections on the backends and
/// their SYN-ACK retransmits) is in this one's figures.
fn one(pinned: &mut PinnedLab, lb: Lb, flood: Flood, plan: &Plan) -> Result<Run> {
    pinned.restart_backends()?;
    let lab = &pinned.lab;
    let running = peers::start(lab, lb, true)?;
    let target = running.addr()?;
    let client = lab.host("client");
    // Without a flood every legit connection must make it, or the path is
    // broken and the figures would say nothing about the flood.
    let warm = client
        .ns
        .run(move || legit_client(target, Duration::from_millis(500)))??;
    if warm.succeeded < warm.attempted {
        bail!(
            "before the flood, {} of {} legit connections through {target} succeeded",
            warm.succeeded,
            warm.attempted
        );
    }
    let reasons0 = running.agent().map(|a| a.reasons()).transpose()?;
    let sw = format!("{}-sw", lab.id);
    let ring0 = dev_counters(&sw, "p-lb1")?[TX_DROPPED];
    let drops0 = [cpu::backlog_drops(LB_CPU), cpu::backlog_drops(LOAD_CPU)];
    let ours = |pids: &[i32]| -> f64 { pids.iter().map(|p| cpu::tree_times(*p).0).sum() };
    let user0 = (cpu::user_seconds(LB_CPU)?, ours(&running.pids));
    let clock = cpu::BusyClock::start(LB_CPU)?;
    let t0 = Instant::now();
    let mut hping = Hping3::start(
        client,
        flood,
        target,
        &lab.run_dir.join(format!("hping3-{}.log", lb.name())),
    )?;
    thread::sleep(RAMP);
    hping.check_running()?;
    let window = plan.window;
    let legit = client.ns.run(move || legit_client(target, window))??;
    let sent = hping.stop()?;
    let (lb_busy_s, _ticks) = clock.busy()?;
    let secs = t0.elapsed().as_secs_f64();
    let foreign_user_s =
        ((cpu::user_seconds(LB_CPU)? - user0.0) - (ours(&running.pids) - user0.1)).max(0.0);
    let lb_backlog_drops = cpu::backlog_drops(LB_CPU) - drops0[0];
    let load_backlog_drops = cpu::backlog_drops(LOAD_CPU) - drops0[1];
    let ring_drops = dev_counters(&sw, "p-lb1")?[TX_DROPPED] - ring0;
    let verdicts = match (reasons0, running.agent()) {
        (Some(r0), Some(agent)) => verdicts(&r0, &agent.reasons()?),
        _ => Vec::new(),
    };
    Ok(Run {
        legit,
        sent,
        secs,
        lb_busy_s,
        ring_drops,
        lb_backlog_drops,
        load_backlog_drops,
        foreign_user_s,
        verdicts,
    })
}

/// hping3 flooding from the client, pinned to the load CPU. Dropping it
/// kills it (Proc: SIGTERM, then SIGKILL), so an error anywhere in a run
/// leaves no flood behind.
struct Hping3 {
    proc: Proc,
}

impl Hping3 {
    fn start(client: &Host, flood: Flood, target: SocketAddr, log: &Path) -> Result<Hping3> {
        let cpu = LOAD_CPU.to_string();
        let port = target.port().to_string();
        let ip = target.ip().to_string();
        let mut cmd = client.ns.command("taskset");
        // nsenter and taskset exec, so the PID is hping3's own: the SIGINT
        // in `stop` reaches it.
        cmd.args([
            "-c",
            &cpu,
            "hping3",
            "--flood",
            "--rand-source",
            flood.flag(),
            "-p",
            &port,
            &ip,
        ]);
        Ok(Hping3 {
            proc: Proc::spawn("hping3 on client", cmd, log)?,
        })
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.proc.child.try_wait()? {
            bail!("hping3 exited ({status}): {}", self.proc.output());
        }
        Ok(())
    }

    /// Stops the flood; the packets hping3 sent. On SIGINT it prints its
    /// statistics and exits.
    fn stop(mut self) -> Result<u64> {
        self.proc.signal(libc::SIGINT)?;
        if self.proc.wait_timeout(Duration::from_secs(5))?.is_none() {
            bail!(
                "hping3 did not exit within 5 s of SIGINT: {}",
                self.proc.output()
            );
        }
        let out = self.proc.output();
        transmitted(&out).with_context(|| format!("no packet count in hping3's output:\n{out}"))
    }
}

/// "440155 packets transmitted, 0 packets received, 100% packet loss".
fn transmitted(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.contains("packets transmitted"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn hping3_version() -> Result<String> {
    let out = Command::new("hping3")
        .arg("--version")
        .output()
        .context("running hping3 (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .nth(2)
        .unwrap_or("(unknown version)")
        .to_owned())
}

/// Opens connections to `target` one after another for `window`, at most
/// one per PACE, on the load CPU (this thread is in the client's
/// namespace: see Netns::run).
fn legit_client(target: SocketAddr, window: Duration) -> Result<Legit> {
    pin_thread(LOAD_CPU)?;
    let start = Instant::now();
    let mut out = Legit::default();
    while start.elapsed() < window {
        let t0 = Instant::now();
        out.attempted += 1;
        if let Some(ms) = attempt(target) {
            out.succeeded += 1;
            out.connect_ms.push(ms);
        }
        if let Some(rest) = PACE.checked_sub(t0.elapsed()) {
            thread::sleep(rest);
        }
    }
    Ok(out)
}

/// One legit connection: connect, `GET /`, the backend's "200" back, all
/// within ATTEMPT. A handshake alone would not do: haproxy completes it
/// itself, before it has a backend. The handshake's time, ms, if it all
/// succeeded.
fn attempt(target: SocketAddr) -> Option<f64> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, ATTEMPT).ok()?;
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    let left = |t0: Instant| ATTEMPT.checked_sub(t0.elapsed()).filter(|d| !d.is_zero());
    s.set_write_timeout(Some(left(t0)?)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: xdplb-bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    // The backend closes after the answer (Connection: close).
    loop {
        s.set_read_timeout(Some(left(t0)?)).ok()?;
        match s.read(&mut buf).ok()? {
            0 => break,
            n => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer.starts_with(b"HTTP/1.1 200").then_some(connect_ms)
}

/// Pins the calling thread (not the process) to `cpu`.
fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside
    // it (cpu < CPU_SETSIZE); pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "pinning the legit client to cpu{cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `dev`'s counters in namespace `ns`, as /proc/net/dev has them (rx:
/// bytes packets errs drop fifo frame compressed multicast, then tx: bytes
/// packets errs drop fifo colls carrier compressed). A process in the
/// namespace reads it: /proc/net follows the reader's network namespace.
const TX_DROPPED: usize = 11;

fn dev_counters(ns: &str, dev: &str) -> Result<Vec<u64>> {
    let out = lab::netns::run(lab::netns::command_in(ns, "cat").arg("/proc/net/dev"))?;
    out.lines()
        .find_map(|l| {
            let (name, counters) = l.split_once(':')?;
            (name.trim() == dev).then(|| {
                counters
                    .split_whitespace()
                    .map(|c| c.parse().unwrap_or(0))
                    .collect::<Vec<u64>>()
            })
        })
        .filter(|c| c.len() >= 16)
        .with_context(|| format!("no {dev} in {ns}'s /proc/net/dev:\n{out}"))
}

/// xdplb's verdicts between two readings of its counters, the largest first.
fn verdicts(before: &ReasonTotals, after: &ReasonTotals) -> Vec<(&'static str, u64)> {
    let mut v: Vec<(&'static str, u64)> = Reason::ALL
        .iter()
        .map(|&r| {
            (
                r.name(),
                after.get(r).packets.saturating_sub(before.get(r).packets),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    v
}

/// The `p`th percentile of `v` (nearest rank); NaN for no values.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn sections(m: Measured) -> [Section; 4] {
    let Measured {
        plan,
        runs,
        hping3,
        mut notes,
    } = m;
    let get = |lb: Lb, flood: Flood| -> &[Run] {
        let li = LBS.iter().position(|l| *l == lb);
        let fi = Flood::ALL.iter().position(|f| *f == flood);
        li.zip(fi)
            .and_then(|k| runs.get(&k))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let mut ok = Section {
        title: "floods: legit connections that succeeded".into(),
        ..Default::default()
    };
    let mut time = Section {
        title: "floods: legit connections' handshake time".into(),
        ..Default::default()
    };
    let mut cost = Section {
        title: "floods: LB CPU per flood packet".into(),
        ..Default::default()
    };
    let mut rate = Section {
        title: "floods: flood rate".into(),
        ..Default::default()
    };
    let mut counts = Vec::new();
    let mut per_run = Vec::new();
    let mut xdp_verdicts = Vec::new();
    let mut no_time = Vec::new();
    let mut spoilt = Vec::new();
    for flood in Flood::ALL {
        for lb in LBS {
            let r = get(lb, flood);
            if r.is_empty() {
                continue;
            }
            let tag = format!("{} {}", lb.name(), flood.name());
            ok.rows.push(Measurement::from_samples(
                format!("{tag}: legit succeeded"),
                "%",
                r.iter().map(|r| r.legit.percent()).collect(),
            ));
            counts.push(format!(
                "{tag} {}",
                r.iter()
                    .map(|r| format!("{}/{}", r.legit.succeeded, r.legit.attempted))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            // Runs in which nothing succeeded have no handshake time.
            let timed: Vec<&Run> = r
                .iter()
                .filter(|r| !r.legit.connect_ms.is_empty())
                .collect();
            if timed.is_empty() {
                no_time.push(tag.clone());
            } else {
                for p in [50.0, 99.0] {
                    time.rows.push(Measurement::from_samples(
                        format!("{tag}: handshake p{p:.0}"),
                        "ms",
                        timed
                            .iter()
                            .map(|r| percentile(&r.legit.connect_ms, p))
                            .collect(),
                    ));
                }
            }
            cost.rows.push(Measurement::from_samples(
                format!("{tag}: LB ns/flood packet"),
                "ns",
                r.iter().map(Run::ns_per_packet).collect(),
            ));
            rate.rows.push(Measurement::from_samples(
                format!("{tag}: packets/s sent"),
                "pps",
                r.iter().map(Run::pps).collect(),
            ));
            per_run.push(format!(
                "{tag}: {}",
                r.iter()
                    .map(|r| format!(
                        "cpu{LB_CPU} {:.0}% busy; dropped {} in lb1's veth ring, {} at cpu{LB_CPU}'s backlog, {} at cpu{LOAD_CPU}'s",
                        100.0 * r.lb_busy_s / r.secs,
                        r.ring_drops,
                        r.lb_backlog_drops,
                        r.load_backlog_drops
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            for (i, r) in r.iter().enumerate().filter(|(_, r)| r.spoilt()) {
                spoilt.push(format!(
                    "{tag} repetition {} ({:.1} s of {:.1})",
                    i + 1,
                    r.foreign_user_s,
                    r.secs
                ));
            }
            if let Some(last) = r.last().filter(|r| !r.verdicts.is_empty()) {
                let top: Vec<String> = last
                    .verdicts
                    .iter()
                    .take(5)
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect();
                xdp_verdicts.push(format!("{tag}: {}", top.join(", ")));
            }
        }
    }

    let median = |v: Vec<f64>| Measurement::from_samples("", "", v).median;
    let mut ratio = |sec: &mut Section, what: String, value: f64, goal: &str, met: bool| {
        if value.is_finite() {
            sec.ratios.push(Ratio {
                what,
                value,
                goal: goal.into(),
                met,
            });
        } else {
            notes.push(format!("No ratio \"{what}\": a side was not measured."));
        }
    };
    for flood in Flood::ALL {
        let share = |lb| median(get(lb, flood).iter().map(|r| r.legit.percent()).collect());
        let ns = |lb| median(get(lb, flood).iter().map(Run::ns_per_packet).collect());
        for xdp in [Lb::XdplbGeneric, Lb::Xdplb] {
            let v = share(xdp) / share(Lb::Haproxy);
            ratio(
                &mut ok,
                format!(
                    "{} ÷ haproxy legit connections succeeded, {}",
                    xdp.name(),
                    flood.name()
                ),
                v,
                "≥ 0.99",
                v >= 0.99,
            );
            let v = ns(xdp) / ns(Lb::Haproxy);
            ratio(
                &mut cost,
                format!(
                    "{} ÷ haproxy LB CPU per flood packet, {}",
                    xdp.name(),
                    flood.name()
                ),
                v,
                "≤ 1",
                v <= 1.0,
            );
        }
    }

    let mut head = vec![
        format!(
            "Floods: from the client, `hping3 --flood --rand-source -S` (then `-A`) `-p {port}` at the address the LB serves \
             (xdplb: the VIP; haproxy: lb1's), hping3 {hping3} pinned to cpu{LOAD_CPU}. The flood runs {ramp} s alone, then \
             {window} s while a legit client opens connections, and until the client's last one is over. {reps} repetition(s), \
             alternating {lbs}; a fresh LB and fresh backends for every flood, so no flood inherits another's flows or \
             half-open connections.",
            port = peers::PORT,
            ramp = RAMP.as_secs(),
            window = plan.window.as_secs(),
            reps = plan.reps,
            lbs = LBS.map(Lb::name).join(", "),
        ),
        format!(
            "Legit client: from the client namespace, pinned to cpu{LOAD_CPU}, one connection at a time, at most one \
             every {pace} ms: connect, `GET /` with `Connection: close`, the backend's 200; {attempt} s for all of it (a \
             SYN lost once is retransmitted at 1 s and makes it, lost twice does not). A connection counts as succeeded \
             only with the backend's answer: haproxy completes the handshake itself. Before each flood every one of \
             half a second's connections had to succeed.",
            pace = PACE.as_millis(),
            attempt = ATTEMPT.as_secs(),
        ),
        "Lab and LBs as in the end-to-end part (its notes have the details): client → lb1 → api1..3 (nginx, plain \
         HTTP); xdplb-generic (`--xdp-mode generic`, the mode of the report in issue 13), xdplb (native) and haproxy \
         `mode tcp` with the kernel's SYN cookies (`net.ipv4.tcp_syncookies=1`, the default), all with their defaults. \
         One addition: lb1 gets a default route via the client, so the LB's answers to the spoofed sources (SYN-ACKs, \
         RSTs, the backends' SYN-ACKs NATed back by xdplb) leave as they would through a node's gateway; the client \
         drops them (it does not forward)."
            .into(),
    ];
    head.push(format!(
        "Succeeded/attempted per repetition: {}.",
        counts.join("; ")
    ));
    if !no_time.is_empty() {
        head.push(format!(
            "No legit connection succeeded in any repetition of: {} (no handshake time).",
            no_time.join(", ")
        ));
    }
    head.append(&mut notes);
    ok.notes = head;
    time.notes.push(
        "Handshake time (connect() until it returned) of the legit connections that succeeded, per repetition's \
         p50 and p99 (nearest rank); medians over the repetitions in which any succeeded. Same runs as the \
         legit-connections section; see its notes for the method."
            .into(),
    );
    cost.notes.push(format!(
        "LB ns per flood packet = cpu{LB_CPU}'s busy time over the whole flood (wall time minus /proc/stat's idle, as \
         the end-to-end part's LB CPU per request) ÷ the packets hping3 says it sent (its statistics on SIGINT). \
         cpu{LB_CPU} carries lb1's receive path (RPS; native xdplb's threaded NAPI kthread), the proxy, the agent and \
         lb1's transmit into its veth; the bridge, the backends, hping3 and the legit client run on cpu{LOAD_CPU}. The \
         legit client's few connections are in the figure too, and cpu{LB_CPU}'s floor (see the first flood \
         section). A packet dropped on the way in costs lb1 little or nothing: in lb1's veth ring (the NAPI ring native \
         XDP reads, full when it falls behind) or at cpu{LB_CPU}'s backlog (the RPS queue generic XDP and haproxy are \
         fed from); with cpu{LB_CPU} saturated, the figure is what the LB got through, not what the flood would cost \
         it in full. Drops at cpu{LOAD_CPU}'s backlog are on the client's, the bridge's or the backends' side. \
         Below saturation the figure includes cpu{LB_CPU} going idle and being woken (an IPI from cpu{LOAD_CPU} for \
         every batch RPS or the veth hands it, costly in a VM), for every LB alike."
    ));
    if spoilt.is_empty() {
        cost.notes.push(format!(
            "No other program ran on cpu{LB_CPU} during any flood (its user time, tick-sampled, less the LB's own, \
             under 2% of the flood)."
        ));
    } else {
        cost.notes.push(format!(
            "Other programs ran on cpu{LB_CPU} during some floods (its user time, tick-sampled, less the LB's own): \
             {}. Their time is in those figures: not trustworthy.",
            spoilt.join(", ")
        ));
    }
    cost.notes
        .push(format!("Per repetition: {}.", per_run.join(". ")));
    if !xdp_verdicts.is_empty() {
        cost.notes.push(format!(
            "xdplb's verdicts over the flood (its reason counters, last repetition, largest first): {}.",
            xdp_verdicts.join(". ")
        ));
    }
    rate.notes.push(format!(
        "Packets hping3 sent ÷ the flood's wall time. hping3 is CPU-bound and shares cpu{LOAD_CPU} with the bridge, \
         the backends and the client's receive path, so what comes back to the client slows it: haproxy's kernel \
         answers every flood packet (a SYN-ACK with a cookie, or an RST) to the spoofed source, through lb1's \
         gateway, the client; what xdplb did with them is in its verdicts (the CPU section). Hence CPU per packet, \
         not per second."
    ));
    [ok, time, cost, rate]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hping3_statistics() {
        let out = "hping in flood mode, no replies will be shown\n\n\
                   --- 10.99.0.2 hping statistic ---\n\
                   440155 packets transmitted, 0 packets received, 100% packet loss\n\
                   round-trip min/avg/max = 0.0/0.0/0.0 ms\n\
                   HPING 10.99.0.2 (eth0 10.99.0.2): S set, 40 headers + 0 data bytes\n";
        assert_eq!(transmitted(out), Some(440155));
        assert_eq!(transmitted("HPING 10.99.0.2 (eth0 10.99.0.2)\n"), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
