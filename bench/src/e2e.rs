//! End to end in the lab: HTTP requests from the client namespace through a
//! load balancer in lb1 to nginx in api1..3, for xdplb and its peers
//! (haproxy `mode tcp`, nginx `stream`, nftables DNAT) and with no load
//! balancer at all (the ceiling), under the same loads, alternating.
//!
//! The LB's work is pinned to cpu1 and everything else to cpu0, so cpu1's
//! busy time over a load, divided by the requests served, is what one
//! request costs the load balancer node.
//!
//! One measurement feeds three sections (req/s, LB CPU per request,
//! latency); it runs once, on the first call, and the others read it.

// The flood part measures in the same lab, the same way (see PinnedLab).
pub(crate) mod cpu;
pub(crate) mod peers;
mod wrk;

use std::{
    collections::BTreeMap,
    fs,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use lab::{Lab, LabOptions, proc::Proc};

use self::{
    cpu::{LB_CPU, LOAD_CPU},
    peers::Lb,
    wrk::{Load, WrkResult},
};
use super::{Measurement, Options, Ratio, Section};

static MEASURED: OnceLock<Result<[Section; 3], String>> = OnceLock::new();

/// Requests per second (runs the measurement if no section has yet).
pub fn run(opts: Options) -> Result<Section> {
    section(opts, 0)
}

/// LB CPU time per request.
pub fn cpu_per_request(opts: Options) -> Result<Section> {
    section(opts, 1)
}

/// p50/p99 latency.
pub fn latency(opts: Options) -> Result<Section> {
    section(opts, 2)
}

fn section(opts: Options, i: usize) -> Result<Section> {
    match MEASURED.get_or_init(|| measure(opts).map(sections).map_err(|e| format!("{e:#}"))) {
        Ok(s) => Ok(s[i].clone()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

struct Plan {
    reps: usize,
    loads: Vec<(Load, Duration)>,
}

impl Plan {
    fn new(opts: Options) -> Plan {
        if opts.quick {
            let d = Duration::from_secs(3);
            Plan {
                reps: 1,
                loads: vec![(Load::KeepAlive, d), (Load::Close, d)],
            }
        } else {
            let d = Duration::from_secs(10);
            Plan {
                reps: 3,
                loads: vec![
                    (Load::KeepAlive, d),
                    (Load::Close, d),
                    (Load::Single, Duration::from_secs(5)),
                ],
            }
        }
    }
}

/// One load against one LB.
struct Sample {
    wrk: WrkResult,
    /// cpu1 busy seconds over the load (wall − idle, see cpu::BusyClock).
    lb_busy_s: f64,
    /// The same as /proc/stat's tick-sampled busy columns count it.
    lb_ticks_s: f64,
    /// Of which in the LB's own threads (process, agent, NAPI kthread).
    lb_threads_s: f64,
    secs: f64,
    /// Packets dropped at a full per-CPU backlog (RPS queue) during the load.
    drops: u64,
}

struct Measured {
    plan: Plan,
    samples: BTreeMap<(usize, usize), Vec<Sample>>,
    /// c=1 with the kernel's defaults (no pinning), by LB index.
    default_latency: BTreeMap<usize, Vec<WrkResult>>,
    notes: Vec<String>,
}

/// The lab as every LB here is measured in: nginx in api1..3, lb1's work
/// steered to [`LB_CPU`] and everything else's to [`LOAD_CPU`] (see the
/// module docs), the machine lock held. The flood part starts its own, so
/// both parts measure the LBs the same way.
pub(crate) struct PinnedLab {
    // Fields drop in order: the backends, then the lab, then the lock.
    pub backends: Vec<Proc>,
    pub lab: Lab,
    /// cpu1's busy share over a second with nothing to balance.
    pub idle_busy: f64,
    /// /proc/loadavg's first three fields before the lab started.
    loadavg: String,
    load1: f64,
    lock: Option<cpu::MachineLock>,
}

impl PinnedLab {
    pub fn start() -> Result<PinnedLab> {
        let lock = cpu::MachineLock::acquire(Duration::from_secs(900))?;
        let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load1: f64 = loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let lab = Lab::start(LabOptions {
            start_apiservers: false,
            ..LabOptions::default()
        })
        .context("starting the lab")?;
        for h in lab.hosts() {
            let cpu = if h.name == "lb1" { LB_CPU } else { LOAD_CPU };
            cpu::steer_rx(&h.ns.name, cpu)?;
        }
        // lb1's peer on the bridge runs XDP (see lab::peer_xdp), so what lb1
        // sends is polled by that peer's NAPI on the sending CPU: the bridge
        // and the backends' veths would be billed to the LB. On a real NIC
        // that part is the wire; move it to the load CPU, for every LB alike.
        let before = cpu::napi_threads("p-lb1");
        cpu::thread_napi(&format!("{}-sw", lab.id), "p-lb1", LOAD_CPU, &before)?;
        let backends = peers::start_backends(&lab)?;
        // What cpu1 does with nothing to balance: the floor under every figure.
        let clock = cpu::BusyClock::start(LB_CPU)?;
        thread::sleep(Duration::from_secs(1));
        let idle_busy = clock.busy()?.0;
        Ok(PinnedLab {
            backends,
            lab,
            idle_busy,
            loadavg: loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            load1,
            lock,
        })
    }

    /// Stops the backends and starts fresh ones: a listener that closes
    /// takes its half-open connections (and their SYN-ACK retransmits)
    /// with it.
    pub fn restart_backends(&mut self) -> Result<()> {
        // The old ones first: the new ones listen on the same port.
        self.backends.clear();
        self.backends = peers::start_backends(&self.lab)?;
        Ok(())
    }

    /// The notes a part measured here starts with: the machine's load, the
    /// LB CPU's floor, and whether another bench ran beside it.
    pub fn conditions(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "Load average before this part: {} ({}); cpu{LB_CPU} was {:.1}% busy with nothing to balance (in every LB figure below).",
            self.loadavg,
            if self.load1 > 0.5 {
                "the machine was busy: expect noise"
            } else {
                "quiet"
            },
            100.0 * self.idle_busy
        )];
        // Another process on the LB CPU (a build, another helper's test) is
        // in every figure, and no lock keeps it out: say so loudly.
        if self.idle_busy > 0.1 {
            notes.push(format!(
                "cpu{LB_CPU} was busy with other work before the measurement: the LB CPU figures are not trustworthy."
            ));
        }
        if self.lock.is_none() {
            notes.push(format!(
                "Another bench held {} for 15 minutes; measured anyway, beside it: the CPU figures are not trustworthy.",
                cpu::LOCK_PATH
            ));
        }
        notes
    }
}

fn measure(opts: Options) -> Result<Measured> {
    let plan = Plan::new(opts);
    let mut notes = Vec::new();
    let pinned = PinnedLab::start()?;
    let lab = &pinned.lab;
    let client = lab.host("client");
    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    for rep in 0..plan.reps {
        for (li, &lb) in Lb::ALL.iter().enumerate() {
            let r = (|| -> Result<()> {
                let running = peers::start(lab, lb, true)?;
                // Warm-up: ARP, health checks settled, first connections;
                // and a check that the path works at all.
                let w = wrk::run(
                    &client.ns,
                    LOAD_CPU,
                    Load::KeepAlive,
                    Duration::from_secs(1),
                    &running.url,
                )?;
                if w.requests == 0 {
                    anyhow::bail!(
                        "no request got through {} in the warm-up ({:?})",
                        running.url,
                        w
                    );
                }
                for (di, &(load, d)) in plan.loads.iter().enumerate() {
                    let threads0: f64 = running.pids.iter().map(|p| cpu::tree_seconds(*p)).sum();
                    let t0 = Instant::now();
                    let drops0 = cpu::backlog_drops(LB_CPU) + cpu::backlog_drops(LOAD_CPU);
                    let clock = cpu::BusyClock::start(LB_CPU)?;
                    let w = wrk::run(&client.ns, LOAD_CPU, load, d, &running.url)?;
                    let (busy, ticks) = clock.busy()?;
                    let drops = cpu::backlog_drops(LB_CPU) + cpu::backlog_drops(LOAD_CPU) - drops0;
                    let secs = t0.elapsed().as_secs_f64();
                    let threads1: f64 = running.pids.iter().map(|p| cpu::tree_seconds(*p)).sum();
                    println!(
                        "bench e2e: rep {} {:<8} {:<10} {:>9.0} req/s p50 {:>7.0} µs p99 {:>7.0} µs cpu1 busy {:>4.0}% errors {} backlog drops {}",
                        rep + 1,
                        lb.name(),
                        load.name(),
                        w.req_per_s,
                        w.p50_us,
                        w.p99_us,
                        100.0 * busy / secs,
                        w.errors,
                        drops
                    );
                    samples.entry((li, di)).or_default().push(Sample {
                        wrk: w,
                        lb_busy_s: busy,
                        lb_ticks_s: ticks,
                        lb_threads_s: threads1 - threads0,
                        secs,
                        drops,
                    });
                }
                Ok(())
            })();
            if let Err(e) = r {
                println!(
                    "bench e2e: {} failed in repetition {}: {e:#}",
                    lb.name(),
                    rep + 1
                );
                notes.push(format!(
                    "FAILED: {} in repetition {}: {e:#}",
                    lb.name(),
                    rep + 1
                ));
            }
        }
    }
    let default_latency = if plan.loads.iter().any(|(l, _)| *l == Load::Single) {
        default_latency(lab, &plan, &mut notes)?
    } else {
        BTreeMap::new()
    };
    notes.splice(0..0, pinned.conditions());
    drop(pinned);
    Ok(Measured {
        plan,
        samples,
        default_latency,
        notes,
    })
}

/// Unloaded latency (c=1) with the kernel's defaults: no RPS, no threaded
/// NAPI, the LB unpinned. The pinning the CPU figures need puts the LB's
/// work on another CPU than the client's and backends', so every request
/// and every response wakes an idle vCPU (and a NAPI kthread for native
/// XDP) on the way: tens of µs each here, for every LB alike, which a
/// node running with the defaults does not pay. By LB index.
fn default_latency(
    lab: &Lab,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<usize, Vec<WrkResult>>> {
    for h in lab.hosts() {
        cpu::unsteer_rx(&h.ns.name)?;
    }
    cpu::unthread_napi(&format!("{}-sw", lab.id), "p-lb1")?;
    let d = plan
        .loads
        .iter()
        .find(|(l, _)| *l == Load::Single)
        .map_or(Duration::from_secs(5), |(_, d)| *d);
    let client = lab.host("client");
    let mut out: BTreeMap<usize, Vec<WrkResult>> = BTreeMap::new();
    for rep in 0..plan.reps {
        for (li, &lb) in Lb::ALL.iter().enumerate() {
            let r = (|| -> Result<WrkResult> {
                let running = peers::start(lab, lb, false)?;
                wrk::run(
                    &client.ns,
                    LOAD_CPU,
                    Load::KeepAlive,
                    Duration::from_secs(1),
                    &running.url,
                )?;
                wrk::run(&client.ns, LOAD_CPU, Load::Single, d, &running.url)
            })();
            match r {
                Ok(w) => {
                    println!(
                        "bench e2e: rep {} {:<13} c=1, kernel defaults {:>9.0} req/s p50 {:>7.0} µs p99 {:>7.0} µs",
                        rep + 1,
                        lb.name(),
                        w.req_per_s,
                        w.p50_us,
                        w.p99_us
                    );
                    out.entry(li).or_default().push(w);
                }
                Err(e) => notes.push(format!(
                    "FAILED: {} c=1 with kernel defaults, repetition {}: {e:#}",
                    lb.name(),
                    rep + 1
                )),
            }
        }
    }
    Ok(out)
}

fn sections(m: Measured) -> [Section; 3] {
    let Measured {
        plan,
        samples,
        default_latency,
        mut notes,
    } = m;
    let get = |lb: Lb, load: Load| -> &[Sample] {
        let li = Lb::ALL.iter().position(|l| *l == lb).unwrap_or(0);
        let di = plan.loads.iter().position(|(l, _)| *l == load);
        di.and_then(|di| samples.get(&(li, di)))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    let us_per_req = |s: &Sample| 1e6 * s.lb_busy_s / s.wrk.requests.max(1) as f64;
    let loads: Vec<Load> = plan.loads.iter().map(|(l, _)| *l).collect();
    let durations: Vec<String> = plan
        .loads
        .iter()
        .map(|(l, d)| format!("{} {} s", l.name(), d.as_secs()))
        .collect();

    let mut rate = Section {
        title: "end to end in the lab: requests per second".into(),
        ..Default::default()
    };
    let mut cost = Section {
        title: "end to end in the lab: LB CPU per request".into(),
        ..Default::default()
    };
    let mut lat = Section {
        title: "end to end in the lab: latency".into(),
        ..Default::default()
    };
    for &load in &loads {
        for lb in Lb::ALL {
            let s = get(lb, load);
            if s.is_empty() {
                continue;
            }
            let tag = format!("{} {}", lb.name(), load.name());
            rate.rows.push(Measurement::from_samples(
                format!("{tag} req/s"),
                "req/s",
                s.iter().map(|s| s.wrk.req_per_s).collect(),
            ));
            if lb != Lb::Direct && load != Load::Single {
                cost.rows.push(Measurement::from_samples(
                    format!("{tag} LB µs/req"),
                    "µs",
                    s.iter().map(us_per_req).collect(),
                ));
            }
            lat.rows.push(Measurement::from_samples(
                format!("{tag} p50"),
                "µs",
                s.iter().map(|s| s.wrk.p50_us).collect(),
            ));
            lat.rows.push(Measurement::from_samples(
                format!("{tag} p99"),
                "µs",
                s.iter().map(|s| s.wrk.p99_us).collect(),
            ));
        }
    }

    let median = |v: Vec<f64>| Measurement::from_samples("", "", v).median;
    let cost_of = |lb, load| median(get(lb, load).iter().map(us_per_req).collect());
    let rate_of = |lb, load| median(get(lb, load).iter().map(|s| s.wrk.req_per_s).collect());
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
    // Native is what `auto` picks on a veth whose peer runs XDP (and on any NIC with an XDP
    // driver); generic is shown beside it because on a veth it takes the
    // same softirq path as the peers (see the notes).
    for xdp in [Lb::Xdplb, Lb::XdplbGeneric] {
        for (peer, name, max) in [(Lb::Haproxy, "haproxy", 0.1), (Lb::Nft, "nftables", 1.0)] {
            for load in [Load::KeepAlive, Load::Close] {
                let v = cost_of(xdp, load) / cost_of(peer, load);
                ratio(
                    &mut cost,
                    format!("{} ÷ {name} LB CPU/request, {}", xdp.name(), load.name()),
                    v,
                    &format!("≤ {max}"),
                    v <= max,
                );
            }
        }
        let v = rate_of(xdp, Load::Close) / rate_of(Lb::Nft, Load::Close);
        ratio(
            &mut rate,
            format!("{} ÷ nftables req/s, close", xdp.name()),
            v,
            "≥ 1",
            v >= 1.0,
        );
    }
    if loads.contains(&Load::Single) {
        // Paired by repetition: the two ran back to back.
        let d: Vec<f64> = get(Lb::Xdplb, Load::Single)
            .iter()
            .zip(get(Lb::Direct, Load::Single))
            .map(|(x, d)| x.wrk.p50_us - d.wrk.p50_us)
            .collect();
        let v = median(d);
        ratio(
            &mut lat,
            "xdplb p50 − direct p50 at c=1, pinned as for the CPU figures (µs, paired by repetition)".into(),
            v,
            "≤ 30 µs",
            v <= 30.0,
        );
        let li = |lb: Lb| Lb::ALL.iter().position(|l| *l == lb).unwrap_or(0);
        for lb in Lb::ALL {
            if let Some(v) = default_latency.get(&li(lb)) {
                lat.rows.push(Measurement::from_samples(
                    format!("{} c=1 p50, kernel defaults", lb.name()),
                    "µs",
                    v.iter().map(|w| w.p50_us).collect(),
                ));
                lat.rows.push(Measurement::from_samples(
                    format!("{} c=1 p99, kernel defaults", lb.name()),
                    "µs",
                    v.iter().map(|w| w.p99_us).collect(),
                ));
            }
        }
        let direct = default_latency.get(&li(Lb::Direct));
        for xdp in [Lb::Xdplb, Lb::XdplbGeneric] {
            let d: Vec<f64> = default_latency
                .get(&li(xdp))
                .into_iter()
                .flatten()
                .zip(direct.into_iter().flatten())
                .map(|(x, d)| x.p50_us - d.p50_us)
                .collect();
            let v = median(d);
            ratio(
                &mut lat,
                format!(
                    "{} p50 − direct p50 at c=1, kernel defaults (µs, paired by repetition)",
                    xdp.name()
                ),
                v,
                "≤ 30 µs",
                v <= 30.0,
            );
        }
        lat.notes.push(
            "c=1 is measured twice: in the pinned runs above (LB on cpu1, everything else on cpu0, as the CPU figures \
             need), and afterwards with the kernel's defaults (no RPS, no threaded NAPI, the LB unpinned; wrk and the \
             backends stay on cpu0), each LB in turn, same repetitions. Pinned, every request and every response \
             crosses to the other vCPU and wakes it (and, for native XDP, a NAPI kthread): tens of µs per crossing in \
             this VM, for every LB alike, which a node running with the defaults does not pay."
                .into(),
        );
    } else {
        lat.notes
            .push("Quick run: no c=1 load, so no unloaded-latency comparison with direct.".into());
    }

    // Where cpu1's time went: the LB's own threads vs softirq and the rest.
    let mut shares = Vec::new();
    for lb in [Lb::Xdplb, Lb::XdplbGeneric, Lb::Haproxy, Lb::Nginx] {
        let s = get(lb, Load::KeepAlive);
        let busy: f64 = s.iter().map(|s| s.lb_busy_s).sum();
        let own: f64 = s.iter().map(|s| s.lb_threads_s).sum();
        let util: f64 = s.iter().map(|s| s.lb_busy_s / s.secs).sum::<f64>() / s.len().max(1) as f64;
        if busy > 0.0 {
            shares.push(format!(
                "{} {:.0}% busy, {:.0}% of it in its own threads",
                lb.name(),
                100.0 * util,
                100.0 * own / busy
            ));
        }
    }
    // Nothing of ours runs on the LB CPU without an LB: what it did then
    // is other work on the machine, inside every LB figure too.
    let floor: Vec<String> = loads
        .iter()
        .filter_map(|&load| {
            let s = get(Lb::Direct, load);
            (!s.is_empty()).then(|| {
                let u = median(s.iter().map(|s| 100.0 * s.lb_busy_s / s.secs).collect());
                format!("{} {u:.0}%", load.name())
            })
        })
        .collect();
    if !floor.is_empty() {
        shares.push(format!(
            "direct (no LB: other work on the machine) {}",
            floor.join(", ")
        ));
    }
    let errors: Vec<String> = samples
        .iter()
        .filter_map(|(&(li, di), v)| {
            let e: u64 = v.iter().map(|s| s.wrk.errors).sum();
            let n: u64 = v.iter().map(|s| s.wrk.requests).sum();
            let d: u64 = v.iter().map(|s| s.drops).sum();
            (e > 0 || d > 0).then(|| {
                format!(
                    "{} {}: {e} errors in {n} requests, {d} packets dropped at a full CPU backlog",
                    Lb::ALL[li].name(),
                    plan.loads[di].0.name()
                )
            })
        })
        .collect();

    let mut head = vec![
        format!(
            "Lab: client → lb1 → api1..3 on a veth bridge, each backend nginx (1 worker) answering `return 200 \"ok\"` on :{}; \
             plain HTTP, so the figures are about the LB, not TLS. wrk from the client: keep-alive `-t1 -c64`, \
             close `-t1 -c64 -H 'Connection: close'` (a new connection per request), c=1 `-t1 -c1`; {}; \
             {} repetition(s), alternating {}; medians with min–max.",
            peers::PORT,
            durations.join(", "),
            plan.reps,
            Lb::ALL.map(Lb::name).join(", ")
        ),
        "Peers: xdplb (VIP → backends, `--check tcp`, default NAT ports and flow table; native XDP, what `auto` picks on a veth whose peer runs XDP, as here) \
         and xdplb-generic (the same with `--xdp-mode generic`); haproxy 2.6 `mode tcp`, `balance roundrobin`, \
         `nbthread 1`, `maxconn 9000`, `check inter 2s`; nginx 1.22 `stream` (1 worker, no access log); nftables \
         `dnat to numgen inc mod 3 map` + `masquerade to :10000-19999` (a port range no other LB here uses; conntrack TIME_WAIT set to 10 s in lb1, like xdplb's closing timeout); \
         the backends keep no TIME_WAIT sockets (`tcp_max_tw_buckets=0`), so no LB's reuse of a source port meets one and waits out a SYN retransmit \
         (nft's masquerade did, at thousands of connections a second); \
         direct = the client to api1 with no LB (the ceiling). The proxies and nft listen on lb1's address, xdplb on the VIP."
            .into(),
        format!(
            "CPU: wrk and the backends are pinned to cpu{LOAD_CPU}, RPS steers every other host's eth0 to cpu{LOAD_CPU}; \
             the LB's work to cpu{LB_CPU}: proxies pinned with taskset and lb1's eth0 softirq steered with RPS (which is also \
             where xdplb-generic runs); for native xdplb, lb1's eth0 NAPI made threaded and its kthread pinned; the agent pinned. \
             On a veth, native XDP pays what a NIC would not: every frame is an skb copied into a page-pool page for XDP \
             (the original, a TCP clone, is freed on the LB CPU, with its socket's destructor work), and the threaded NAPI \
             kthread sleeps and is woken per batch; generic XDP works on the skb in the stack's softirq instead. LB µs/request = cpu{LB_CPU}'s busy time over \
             the load (wall time minus /proc/stat's idle and iowait, which NOHZ measures exactly; see the tick note below) \
             ÷ requests served: lb1's receive path (XDP, or the stack via RPS), the proxy \
             or forwarding work, and its transmit into the veth. The bridge side of what lb1 sends (the 'wire' here is \
             software: lb1's bridge port runs XDP for XDP_TX, so its NAPI would poll on the sender's CPU) is made threaded \
             and pinned to cpu{LOAD_CPU}, for every LB alike. Anything else that ran on cpu{LB_CPU} is in the figure too."
        ),
    ];
    if !shares.is_empty() {
        head.push(format!(
            "cpu{LB_CPU} busy under keep-alive: {}.",
            shares.join("; ")
        ));
    }
    // The busy columns of /proc/stat beside what is used: how wrong the
    // tick-sampled figure would have been, per LB and load.
    let ticks: Vec<String> = samples
        .iter()
        .filter(|((li, _), _)| Lb::ALL[*li] != Lb::Direct)
        .map(|(&(li, di), v)| {
            let r = median(
                v.iter()
                    .map(|s| s.lb_ticks_s / s.lb_busy_s.max(1e-9))
                    .collect(),
            );
            format!("{} {} {r:.2}", Lb::ALL[li].name(), plan.loads[di].0.name())
        })
        .collect();
    head.push(format!(
        "Ticks: this kernel samples the busy columns of /proc/stat at each 250 Hz tick (no IRQ_TIME_ACCOUNTING or \
         VIRT_CPU_ACCOUNTING) but measures idle exactly, so busy time is taken as wall − idle. What the tick-sampled \
         columns would have said, as a share of that (median): {}. Bursts of work between ticks (NAPI kthreads, softirq \
         woken by an IPI) are under-counted by ticks, work that runs at the tick over-counted. A check during development: \
         native xdplb's threads ran 0.77 s by their exact run time (schedstat) in a load where the ticks gave the whole CPU \
         0.56 s and wall − idle 0.97 s; haproxy's 2.07 s, ticks 2.19 s, wall − idle 2.41 s.",
        ticks.join(", ")
    ));
    if errors.is_empty() {
        head.push(
            "No wrk socket errors or non-2xx answers, no packets dropped at a full CPU backlog."
                .into(),
        );
    } else {
        head.push(format!(
            "wrk errors (socket errors + non-2xx) and backlog drops (a dropped SYN costs a 1 s retransmit): {}.",
            errors.join("; ")
        ));
    }
    head.append(&mut notes);
    rate.notes = head;
    cost.notes
        .push("Same runs as the requests-per-second section; see its notes for the method.".into());
    lat.notes.insert(
        0,
        "wrk --latency percentiles, same runs as the requests-per-second section.".into(),
    );
    [rate, cost, lat]
}
