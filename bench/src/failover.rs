//! VRRP failover: the time from the master losing its link to the first
//! request served through the backup, for an xdplb pair and for the
//! keepalived + haproxy pair it replaces, with the same VRRP timers
//! (v3 100 ms adverts, v2 1 s), in the same run.
//!
//! Each repeat is a fresh lab: lb1 (priority 100) and lb2 (90) elect, a
//! client request through the VIP confirms lb1 serves, then lb1's bridge
//! port goes down (the cable pulled) and the client retries a request with
//! a 50 ms budget until one succeeds.

use std::{
    net::{SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lab::{
    Lab, LabOptions,
    apiserver::PORT,
    bed::NsRuntime,
    client::Conn,
    keepalived::{Keepalived, KeepalivedOptions},
    netns,
    proc::Proc,
};

use super::{Measurement, Options, Ratio, Section};

#[derive(Clone, Copy)]
struct Timers {
    label: &'static str,
    version: u8,
    /// xdplb's --advert-int.
    ours: &'static str,
    /// keepalived's advert_int.
    theirs: &'static str,
}

/// Budget of one try after the link goes down: a try sent to the dead
/// node's MAC is lost and costs this much, so it is the measurement's
/// resolution (a TLS handshake and GET take a few ms in the lab).
const TRY: Duration = Duration::from_millis(50);

const TIMERS: [Timers; 2] = [
    Timers {
        label: "VRRPv3, 100 ms adverts",
        version: 3,
        ours: "100ms",
        theirs: "0.1",
    },
    Timers {
        label: "VRRPv2, 1 s adverts",
        version: 2,
        ours: "1s",
        theirs: "1",
    },
];

pub fn run(opts: Options) -> Result<Section> {
    let reps = if opts.quick { 1 } else { 5 };
    let mut section = Section {
        title: "VRRP failover: master's link down → first request through the backup".into(),
        notes: vec![
            format!(
                "{reps} repeats per row, each in a fresh lab: lb1 priority 100, lb2 priority 90, 3 backends; the \
                 master's bridge port is set down and the client retries GET /version through the VIP with a \
                 50 ms budget per try until one succeeds (the resolution: a try sent to the dead node is lost). xdplb: two xdplb nodes (--vrid, health checks tcp). \
                 keepalived: keepalived {} + haproxy (mode tcp) on each node, as the seeds run them.",
                keepalived_version()
            ),
            "Expected: Master_Down_Interval of lb2 = 3 × interval + (256 − 90)/256 × interval (v3: 365 ms; \
             v2: 3.65 s), counted from lb1's last advert, which left up to one interval before the link went \
             down; then the first request's handshake. Both pairs run the same timers, so a difference within \
             one interval is the phase of the last advert and the retry resolution, not the protocol."
                .into(),
        ],
        ..Default::default()
    };
    for t in TIMERS {
        let mut medians = [f64::NAN; 2];
        for (k, peer) in ["xdplb", "keepalived+haproxy"].into_iter().enumerate() {
            let mut samples = Vec::new();
            for rep in 0..reps {
                let ms = one(t, k == 0)
                    .with_context(|| format!("{peer}, {}, repeat {}", t.label, rep + 1))?;
                samples.push(ms);
            }
            let m = Measurement::from_samples(format!("{peer}, {}", t.label), "ms", samples);
            medians[k] = m.median;
            section.rows.push(m);
        }
        let value = medians[0] / medians[1];
        section.ratios.push(Ratio {
            what: format!("xdplb failover time / keepalived's, {}", t.label),
            value,
            goal: "≤ 1 × (same VRRP timers)".into(),
            met: value <= 1.05,
        });
    }
    Ok(section)
}

fn keepalived_version() -> String {
    let out = std::process::Command::new("keepalived")
        .arg("--version")
        .output();
    let text = out
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
        })
        .unwrap_or_default();
    text.split_whitespace().nth(1).unwrap_or("?").to_owned()
}

/// One failover, in ms.
fn one(t: Timers, xdplb: bool) -> Result<f64> {
    let lab = Lab::start(LabOptions::default()).context("starting the lab")?;
    let backends: Vec<String> = (1..=3)
        .map(|i| SocketAddrV4::new(lab.host(&format!("api{i}")).ip, PORT).to_string())
        .collect();
    // Kept alive for the whole measurement, dropped (stopped) with the lab.
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    for (host, priority) in [("lb1", 100u8), ("lb2", 90)] {
        if xdplb {
            let vip = lab.vip().to_string();
            let prio = priority.to_string();
            let version = t.version.to_string();
            let mut args = vec![
                "--vip",
                &vip,
                "--check",
                "tcp",
                "--vrid",
                "51",
                "--priority",
                &prio,
                "--vrrp-version",
                &version,
                "--advert-int",
                t.ours,
            ];
            for b in &backends {
                args.extend(["--backend", b.as_str()]);
            }
            keep.push(Box::new(lab.start_agent(host, &args)?));
        } else {
            keep.push(Box::new(haproxy(&lab, host, &backends)?));
            keep.push(Box::new(Keepalived::start(
                &lab,
                &KeepalivedOptions {
                    host,
                    vrid: 51,
                    version: t.version,
                    priority,
                    advert_int: t.theirs,
                    auth_pass: None,
                },
            )?));
        }
        if host == "lb1" {
            // lb1 settles as master before lb2 starts.
            wait_vip(&lab, "lb1", Duration::from_secs(10))?;
        }
    }
    let client = NsRuntime::new(lab.host("client"));
    let vip = SocketAddr::from((lab.vip(), PORT));
    if !(0..50).any(|_| request(&client, vip, Duration::from_millis(500))) {
        bail!("no request succeeded through lb1 before the failover");
    }
    // lb2 has heard lb1 for a few adverts.
    thread::sleep(Duration::from_millis(if t.version == 3 {
        500
    } else {
        2500
    }));
    let sw = format!("{}-sw", lab.id);
    netns::run(netns::command_in(&sw, "ip").args(["link", "set", "p-lb1", "down"]))
        .context("taking lb1's link down")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if request(&client, vip, TRY) {
            return Ok(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    bail!("no request succeeded through lb2 within 20 s of lb1's link going down")
}

fn request(rt: &NsRuntime, vip: SocketAddr, limit: Duration) -> bool {
    rt.run(async move {
        tokio::time::timeout(limit, async {
            let mut c = Conn::open(vip).await?;
            c.get("/version").await
        })
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status == 200))
    })
}

fn wait_vip(lab: &Lab, host: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let want = format!("inet {}/", lab.vip());
    while start.elapsed() < limit {
        let out = lab
            .host(host)
            .ns
            .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
        if out.contains(&want) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("{host} did not take the VIP within {limit:?}")
}

/// haproxy in `mode tcp` on `host`, on every address's :6443 (so it serves
/// the VIP whenever keepalived puts it there), checking the backends.
fn haproxy(lab: &Lab, host: &str, backends: &[String]) -> Result<Proc> {
    let dir = lab.run_dir.join(format!("{host}-haproxy"));
    std::fs::create_dir_all(&dir)?;
    let mut cfg = format!(
        "global\n    maxconn 4096\n    pidfile {}\ndefaults\n    mode tcp\n    timeout connect 1s\n    \
         timeout client 30s\n    timeout server 30s\nlisten kube-apiserver\n    bind :{PORT}\n    balance roundrobin\n",
        dir.join("haproxy.pid").display()
    );
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("    server api{} {b} check inter 200ms\n", i + 1);
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = netns::command_in(&lab.host(host).ns.name, "haproxy");
    cmd.args(["-db", "-f"]).arg(&path);
    Proc::spawn(&format!("haproxy on {host}"), cmd, &dir.join("haproxy.log"))
}
