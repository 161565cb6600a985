//! `xdplb-lab` (`cargo xtask lab`): the first thing a newcomer runs. Brings up the lab,
//! starts xdplb on lb1, sends traffic from the client, reports what the
//! data plane saw, and tears everything down.

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use lab::{Lab, LabOptions, client};
use lb_common::stats::ReasonTotals;

const DATAGRAMS: u64 = 1000;
const PINGS: u64 = 5;
const CONNECTIONS: usize = 60;

/// Bring up the lab, run xdplb on lb1, send traffic, print a report, tear down.
#[derive(Parser)]
#[command(name = "xdplb-lab")]
struct Cli {
    /// Keep the lab up after the report, until Ctrl-C, to look around
    /// (`nsenter --net=/var/run/netns/<ns> ...`).
    #[arg(long)]
    hold: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse().hold) {
        eprintln!("xdplb-lab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(hold: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "cargo xtask lab (network namespaces, XDP) needs root: run it with sudo (or as root)"
        );
    }
    // With --hold, Ctrl-C must reach our waiting thread, not kill us before
    // the lab is torn down: block it in every thread from the start.
    let signals = hold.then(block_signals).transpose()?;
    let lab = Lab::start(LabOptions::default()).context("starting the lab")?;
    let lb1 = lab.host("lb1");
    println!("lab {}: bridge br0 in namespace {}-sw", lab.id, lab.id);
    for h in lab.hosts() {
        let role = match h.name.as_str() {
            "client" => "client",
            "lb1" => "load balancer (xdplb)",
            "lb2" => "load balancer (standby, idle for now)",
            _ => "fake kube-apiserver :6443",
        };
        println!("  {:<7} {:<15} {role}", h.name, h.ip);
    }

    let vip = lab.vip().to_string();
    let backends: Vec<String> = lab
        .apiservers
        .values()
        .map(|a| format!("{}:6443", a.ip))
        .collect();
    let mut args = vec!["--vip", vip.as_str()];
    for b in &backends {
        args.extend(["--backend", b.as_str()]);
    }
    println!("\nxdplb {}", args.join(" "));
    let agent = lab.start_agent("lb1", &args)?;
    let prog = agent
        .attached_prog_id()?
        .context("xdplb started but no XDP program is attached to lb1 eth0")?;
    println!(
        "\nxdplb on lb1: XDP program id {prog} attached to eth0 (bpftool prog show id {prog})"
    );
    let before = agent.reasons()?;

    // Traffic from the client: pings and UDP to lb1, HTTPS to each apiserver.
    let client = lab.host("client");
    let ping = client.ns.exec(
        "ping",
        &[
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &lb1.ip.to_string(),
        ],
    );
    let answered = ping.as_deref().map(count_replies).unwrap_or(0);
    let target = SocketAddr::from((lb1.ip, 9));
    client.ns.run(move || -> Result<()> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..DATAGRAMS {
            sock.send_to(&i.to_be_bytes(), target)?;
        }
        Ok(())
    })??;
    let vip_addr = SocketAddr::from((lab.vip(), 6443));
    let versions = client.ns.run(move || {
        client::block_on(async move {
            let mut out = Vec::new();
            for _ in 0..CONNECTIONS {
                out.push(client::get(vip_addr, "/version").await);
            }
            out
        })
    })?;

    println!("\ntraffic from client:");
    println!("  {PINGS} pings to lb1: {answered} answered (XDP passes the node's own traffic)");
    println!("  {DATAGRAMS} UDP datagrams to {target}");
    let mut served: std::collections::BTreeMap<String, usize> = Default::default();
    let mut failed = 0;
    for r in &versions {
        match r {
            Ok(r) if r.status == 200 => *served.entry(r.backend.clone()).or_default() += 1,
            Ok(_) | Err(_) => failed += 1,
        }
    }
    println!("  {CONNECTIONS} HTTPS connections to {vip_addr} (GET /version), {failed} failed:");
    for (backend, n) in &served {
        println!("    {backend:<6} served {n:>3} {}", "#".repeat(*n / 2));
    }
    if let Some(Err(e)) = versions.iter().find(|r| r.is_err()) {
        println!("    first failure: {e:#}");
    }

    // The counters are per-CPU and updated as packets arrive: wait until
    // they account for what we sent (bounded).
    let sent = DATAGRAMS + PINGS;
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let now = agent.reasons()?;
        if delta(&now, &before).0 >= sent || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let (pkts, bytes) = delta(&after, &before);
    println!("\nXDP counters on lb1 (this run):");
    for (reason, c) in after.nonzero() {
        let d = c.packets - before.get(reason).packets;
        if d > 0 {
            println!("  {:<22} {d:>8} pkts", reason.name());
        }
    }
    println!(
        "  {:<22} {pkts:>8} pkts {bytes} bytes ({sent} sent to lb1 by the client)",
        "total"
    );
    let ok = pkts >= sent && failed == 0;
    if hold {
        println!(
            "\nholding the lab (namespaces {}-*, agent log {}); Ctrl-C to tear down",
            lab.id,
            lab.run_dir.display()
        );
        if let Some(set) = signals {
            let _ = set.wait();
        }
    }
    drop(agent);
    drop(lab);
    println!("\nteardown: namespaces, bridge, pins and processes removed");
    if !ok {
        anyhow::bail!(
            "{failed} connections failed, or XDP on lb1 counted fewer than the {sent} packets sent to lb1 ({pkts})"
        );
    }
    Ok(())
}

fn delta(now: &ReasonTotals, before: &ReasonTotals) -> (u64, u64) {
    let (a, b) = (now.total(), before.total());
    (a.packets - b.packets, a.bytes - b.bytes)
}

fn count_replies(ping_output: &str) -> u64 {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .count() as u64
}

/// Blocks SIGINT and SIGTERM (inherited by every thread spawned later) so
/// they can be waited for.
fn block_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    Ok(set)
}
