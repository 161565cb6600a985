//! Issue 13: a spoofed flood must not take the VIP down. The lab is the
//! one the user who filed it had: a plain bridge, xdplb on lb1 with three
//! HTTPS backends and default flags but `--xdp-mode generic`, and
//! `hping3 --flood --rand-source` from the client host. There xdplb gave
//! every NAT port of every backend to a spoofed client's half-open flow
//! (`drop_nat_ports_exhausted`) and served 0 of 5 legit connections, where
//! haproxy served 249 of 249.
//!
//! The bar, from the issue: during 15 s of flood at the lab's full rate,
//! at least 99 % of a legit client's new connections succeed, and ten
//! long-lived streams carry on; within 1 s of the flood's end everything
//! is normal. The same with an ACK flood. And a backend whose NAT ports
//! are all held by half-open flows still gives a legit handshake one.
//!
//! "Within 1 s of the end": from 1 s after the end, new connections are
//! normal, each answered in well under a second. In the second before,
//! the backends may still hold a few of the flood's half-open connections
//! (each until its SYN-ACK retransmission, a second after its SYN, which
//! lb1 resets), and a connection that lands on one takes a retransmitted
//! SYN, as during the flood (whose bar, 99 % within 3 s, covers it).
//!
//! The floods run one at a time (a lock), so that two of them never
//! share the machine's CPUs and each test's figures are its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use lab::{
    Lab, LabOptions,
    bed::{Bed, Held},
    client,
    hping::{Flood, Hping},
    require_root, wait,
};
use lb_common::{
    flow::{DIR_REPLY, Embryo, FlowKey},
    stats::{Reason, ReasonTotals},
};

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];
/// How long a flood lasts.
const FLOOD: Duration = Duration::from_secs(15);
/// Keep-alive streams held through the VIP across a flood.
const STREAMS: usize = 10;
/// A legit connection (connect, TLS, `GET /version`) under attack
/// succeeds if answered within this, so a SYN sent again 1 s later (RFC
/// 6298's initial RTO) still counts: one the flood crowded out, or one a
/// backend answered for a spoofed client's half-open connection on the
/// same NAT port (see the last test).
const ATTEMPT: Duration = Duration::from_secs(3);
/// After a flood, a connection is normal if answered within this: it
/// needed no retransmitted SYN. A connection in the idle lab takes ms.
const NORMAL: Duration = Duration::from_secs(1);
/// The legit client starts this long after the flood, once hping3 sends
/// at full rate, and a new connection at most every `SPACING` on each of
/// its `WORKERS`.
const RAMP: Duration = Duration::from_millis(500);
const WORKERS: usize = 2;
const SPACING: Duration = Duration::from_millis(100);
/// At least this many legit connections during a flood, or the success
/// rate says little.
const MIN_ATTEMPTS: usize = 50;

static ONE_FLOOD: Mutex<()> = Mutex::new(());

/// Held for a whole test: no other flood runs meanwhile. A test that
/// panicked while holding it leaves nothing behind (its guards ran), so a
/// poisoned lock is taken as it is.
fn one_flood_at_a_time() -> MutexGuard<'static, ()> {
    ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner())
}

fn plain_bridge_lab() -> Lab {
    require_root();
    Lab::start(LabOptions {
        peer_xdp: false,
        ..Default::default()
    })
    .expect("starting a plain-bridge lab")
}

fn sleep_until(t: Instant) {
    thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// One legit HTTPS connection: when it started, how long it took, and
/// which backend answered or what went wrong.
#[derive(Debug)]
struct Attempt {
    started: Instant,
    took: Duration,
    result: Result<String, String>,
}

/// Connect, TLS, `GET /version`, within `limit`.
async fn attempt(vip: SocketAddr, limit: Duration) -> Attempt {
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, client::get(vip, "/version")).await {
        Ok(Ok(r)) if r.status == 200 => Ok(r.backend),
        Ok(Ok(r)) => Err(format!("status {} from {:?}", r.status, r.backend)),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {limit:?}")),
    };
    Attempt {
        started,
        took: started.elapsed(),
        result,
    }
}

/// A legit client opening new connections through the VIP from `from`
/// until `until`: `WORKERS` loops, each one connection after another, a
/// new one at most every `SPACING`.
async fn keep_connecting(vip: SocketAddr, from: Instant, until: Instant) -> Vec<Attempt> {
    tokio::time::sleep_until(from.into()).await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                while Instant::now() < until {
                    let a = attempt(vip, ATTEMPT).await;
                    let next = a.started + SPACING;
                    out.push(a);
                    tokio::time::sleep_until(next.into()).await;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("a legit client worker panicked"));
    }
    all.sort_by_key(|a| a.started);
    all
}

/// `n` connections one after another, each within `limit`; the first
/// that fails ends the run (its error is the story).
async fn in_a_row(vip: SocketAddr, n: usize, limit: Duration) -> Vec<Attempt> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let a = attempt(vip, limit).await;
        let failed = a.result.is_err();
        out.push(a);
        if failed {
            break;
        }
    }
    out
}

/// How a run of attempts went, for messages: "108 of 110 within 3s
/// (slowest 1.02 s, 3 over 1s; ...); first errors: at 4.1 s after
/// <since>: ...".
fn summary(attempts: &[Attempt], t0: Instant, since: &str, limit: Duration) -> String {
    let ok = attempts.iter().filter(|a| a.result.is_ok()).count();
    let slowest = attempts
        .iter()
        .filter(|a| a.result.is_ok())
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    let slow = attempts
        .iter()
        .filter(|a| a.result.is_ok() && a.took > NORMAL)
        .count();
    let errors: Vec<String> = attempts
        .iter()
        .filter_map(|a| {
            let e = a.result.as_ref().err()?;
            let at = a.started.saturating_duration_since(t0).as_secs_f64();
            Some(format!("at {at:.1} s after {since}: {e}"))
        })
        .take(5)
        .collect();
    let mut by_backend = BTreeMap::<&str, usize>::new();
    for a in attempts {
        if let Ok(b) = &a.result {
            *by_backend.entry(b).or_default() += 1;
        }
    }
    format!(
        "{ok} of {} within {limit:?} (slowest {:.2} s, {slow} over {NORMAL:?}; by backend {by_backend:?}); first errors: {errors:?}",
        attempts.len(),
        slowest.as_secs_f64(),
    )
}

/// Opens `n` keep-alive connections through the VIP, one `GET /version`
/// each; any backends. Keyed "stream NN" for [`Bed::check_held`].
fn hold_streams(bed: &Bed, n: usize) -> BTreeMap<String, Held> {
    (0..n)
        .map(|i| match bed.open() {
            Ok((conn, r)) if r.status == 200 => (
                format!("stream {i:02}"),
                Held {
                    backend: r.backend,
                    conn: Some(conn),
                    gets: 1,
                },
            ),
            Ok((_, r)) => panic!(
                "before the flood: stream {i} got status {} from {:?}{}",
                r.status,
                r.backend,
                bed.agent.diag()
            ),
            Err(e) => panic!(
                "before the flood: opening stream {i} through the VIP: {e:#}{}",
                bed.agent.diag()
            ),
        })
        .collect()
}

/// What the data plane counted between two readings: "tx_forward=12
/// drop_nat_ports_exhausted=400000".
fn delta(before: &ReasonTotals, after: &ReasonTotals) -> String {
    Reason::ALL
        .iter()
        .filter_map(|&r| {
            let d = after.get(r).packets.saturating_sub(before.get(r).packets);
            (d > 0).then(|| format!("{}={d}", r.name()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of the flood tests: ten streams held, a flood of `kind` for
/// `FLOOD` with a legit client connecting throughout, then new connections
/// from 1 s after its end.
fn flood_leaves_the_vip_serving(kind: Flood) {
    let _one = one_flood_at_a_time();
    let bed = Bed::start_in(plain_bridge_lab(), &BACKENDS, &["--xdp-mode", "generic"]);
    let vip = bed.vip();
    let mut streams = hold_streams(&bed, STREAMS);

    let before = bed.reasons();
    let log = bed.lab.run_dir.join(format!("hping3-{kind}.log"));
    // Dropped (killed) on any panic below, before the bed is.
    let flood = Hping::flood(bed.lab.host("client"), kind, vip, &log)
        .unwrap_or_else(|e| panic!("starting the {kind} flood: {e:#}"));
    let t0 = Instant::now();
    // Every legit attempt is judged while the flood runs: the last one
    // starts an ATTEMPT before its end.
    let legit = bed
        .client
        .spawn(keep_connecting(vip, t0 + RAMP, t0 + FLOOD - ATTEMPT));
    for at in [4, 8, 12] {
        sleep_until(t0 + Duration::from_secs(at));
        bed.check_held(
            &mut streams,
            &format!("{at} s into the {kind} flood (hping3 still sending)"),
        );
    }
    sleep_until(t0 + FLOOD);
    let sent = flood
        .stop()
        .unwrap_or_else(|e| panic!("stopping the {kind} flood: {e:#}"));

    // From 1 s after its end: new connections, each normal.
    sleep_until(sent.stopped_at + NORMAL);
    let started_after = sent.stopped_at.elapsed();
    let after = bed.client.run(in_a_row(vip, 20, NORMAL));
    let during = bed
        .client
        .run(async move { legit.await.expect("the legit client's task panicked") });
    let counted = delta(&before, &bed.reasons());
    let flood_says = format!(
        "{kind} flood from the client (hping3 --flood --rand-source): {sent}; data plane since it started: {counted}"
    );

    let ok = during.iter().filter(|a| a.result.is_ok()).count();
    assert!(
        during.len() >= MIN_ATTEMPTS && ok * 100 >= during.len() * 99,
        "during the {kind} flood, expected at least 99 % of at least {MIN_ATTEMPTS} new HTTPS connections through the VIP to be answered; got {}.\n{}{}",
        summary(&during, t0, "the flood's start", ATTEMPT),
        flood_says,
        bed.agent.diag()
    );
    assert!(
        started_after <= NORMAL + Duration::from_millis(200),
        "the test took {started_after:?} after stopping hping3 to start the connections that check the time after the flood"
    );
    assert!(
        after.iter().all(|a| a.result.is_ok()),
        "1 s after the {kind} flood's end (the first started {:.2} s after), expected 20 new connections in a row each answered within {NORMAL:?}; got {}.\n{}{}",
        started_after.as_secs_f64(),
        summary(&after, sent.stopped_at, "its end", NORMAL),
        flood_says,
        bed.agent.diag()
    );
    bed.check_held(&mut streams, &format!("after the {kind} flood"));

    let gets: usize = streams.values().map(|h| h.gets).sum();
    eprintln!(
        "{}\n  legit during: {}\n  after: {}, the first {:.2} s after the end\n  {STREAMS} held streams answered all {gets} GETs",
        flood_says,
        summary(&during, t0, "the flood's start", ATTEMPT),
        summary(&after, sent.stopped_at, "its end", NORMAL),
        started_after.as_secs_f64(),
    );
}

#[test]
fn a_spoofed_syn_flood_leaves_new_connections_and_held_streams_served() {
    flood_leaves_the_vip_serving(Flood::Syn);
}

#[test]
fn a_spoofed_ack_flood_leaves_new_connections_and_held_streams_served() {
    flood_leaves_the_vip_serving(Flood::Ack);
}

/// The NAT ports towards `backend` that lb1's data plane holds half-open
/// connections on (reply halves in its pinned EMBRYOS).
fn half_open_towards(bed: &Bed, backend: Ipv4Addr) -> BTreeSet<u16> {
    let path = bed.agent.pin_dir.join(lb_common::maps::EMBRYOS);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let m: aya::maps::HashMap<_, FlowKey, Embryo> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap_or_else(|e| {
            panic!("{} as a hash of half-open connections: {e}", path.display())
        });
    m.iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| e.flow.dir == DIR_REPLY && k.src == backend.octets())
        .map(|(k, _)| u16::from_be_bytes(k.dport))
        .collect()
}

/// Entries of each flow map the agent pinned (FLOWS, and any map of
/// half-open flows), for messages: "FLOWS=130 EMBRYOS=64".
fn flow_map_entries(bed: &Bed) -> String {
    let mut pins = bed.agent.pins();
    pins.sort();
    pins.iter()
        .filter(|p| p.contains("FLOW") || p.contains("EMBRYO"))
        .filter(|p| !p.starts_with("FLOW_LOG"))
        .map(|p| {
            let path = bed.agent.pin_dir.join(p);
            let n = std::process::Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(&path)
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| v.as_array().map(Vec::len));
            match n {
                Some(n) => format!("{p}={n}"),
                None => format!("{p}=(unreadable)"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_backend_whose_nat_ports_are_all_held_by_half_open_flows_still_serves_a_legit_client() {
    const NAT_PORTS: std::ops::RangeInclusive<u16> = 20000..=20063;
    let _one = one_flood_at_a_time();
    let bed = Bed::start_in(
        plain_bridge_lab(),
        &["api1"],
        &["--xdp-mode", "generic", "--nat-ports", "20000-20063"],
    );
    let vip = bed.vip();
    let (client, api1) = (bed.lab.host("client"), bed.lab.host("api1"));
    let before = bed.reasons();

    // Spoofed SYNs, several hundred a second, each NAT port hit every
    // tenth of a second or so: the ports fill whatever order the data
    // plane tries them in. The backend answers each with a SYN-ACK that
    // goes to a spoofed address: nobody completes a handshake, and lb1
    // holds every port with a half-open connection (each until the
    // backend's SYN-ACK retransmission, a second after its SYN, frees it,
    // by then taken again). Once all are held, the SYNs stop.
    let log = bed.lab.run_dir.join("hping3-fill.log");
    let vip_ip = vip.ip().to_string();
    let fill = Hping::start(
        client,
        &["--rand-source", "-S", "-p", "6443", "-i", "u1000", &vip_ip],
        &log,
    )
    .unwrap_or_else(|e| panic!("starting the SYNs that fill the NAT ports: {e:#}"));
    let all: BTreeSet<u16> = NAT_PORTS.collect();
    let mut held = BTreeSet::new();
    let filled = wait::eventually(Duration::from_secs(5), || {
        held = &half_open_towards(&bed, api1.ip) & &all;
        held == all
    });
    let sent = fill
        .stop()
        .unwrap_or_else(|e| panic!("stopping hping3: {e:#}"));
    let started = Instant::now();
    let still = &half_open_towards(&bed, api1.ip) & &all;

    // At once, while every port is still held by a half-open flow: a legit
    // client's connections all get through, one after another. The first
    // may take a retransmitted SYN: the port it is given was a spoofed
    // client's, which api1 may still hold on the same four-tuple; api1
    // answers the new SYN for the old one, lb1 resets that
    // (tx_reset_backend), and the client's SYN a second later gets through.
    let legit = filled.then(|| bed.client.run(in_a_row(vip, 5, ATTEMPT)));
    let counted = delta(&before, &bed.reasons());
    let spoofed = format!(
        "spoofed SYNs (hping3 --rand-source -S -i u1000): {sent}; data plane since: {counted}; flow maps: {}",
        flow_map_entries(&bed)
    );
    assert!(
        filled,
        "expected lb1 to hold a half-open connection towards api1 on each of the {} NAT ports {NAT_PORTS:?} within 5 s of the SYNs' start, it holds {} (missing {:?}).\n{spoofed}{}",
        all.len(),
        held.len(),
        all.difference(&held).take(10).collect::<Vec<_>>(),
        bed.agent.diag()
    );
    assert!(
        still == all,
        "the NAT ports towards api1 must still all be held by half-open flows as the SYNs stop and the legit client starts; {} are (missing {:?}).\n{spoofed}",
        still.len(),
        all.difference(&still).take(10).collect::<Vec<_>>()
    );
    let legit = legit.expect("run once the ports were full");
    let t = started;
    assert!(
        legit.iter().all(|a| a.result.is_ok()),
        "with every NAT port towards api1 held by a half-open flow, expected 5 legit HTTPS connections in a row each answered within {ATTEMPT:?}; got {}.\n{spoofed}{}",
        summary(&legit, t, "the spoofed SYNs' end", ATTEMPT),
        bed.agent.diag()
    );
    eprintln!(
        "{spoofed}\n  all {} NAT ports held, {} still as the SYNs stopped\n  legit then: {}",
        held.len(),
        still.len(),
        summary(&legit, t, "the spoofed SYNs' end", ATTEMPT)
    );
}
