//! The flow log end to end: real HTTPS connections through the VIP each
//! get one `new` line naming the backend that served them, and a `close`
//! line when they end; a SYN flood beyond the rate limit is held back in
//! the kernel, and what was held back is counted and reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use lab::{
    bed::{Bed, new_lab},
    client::Conn,
    packets::{FrameBuilder, mac_of, send_frames},
    wait::eventually,
};
use lb_common::{flowlog::FlowLogCpu, maps};

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];
/// The agent's default NAT source ports (`auto`) in lb1's namespace, whose
/// ip_local_port_range is a new namespace's, the kernel's 32768-60999.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 1024..=32767;

/// A flow log line, split into its fields.
#[derive(Debug)]
struct Line {
    client: SocketAddrV4,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    event: String,
    /// `key=value` details (`nat`, `how`, `duration`, `count`…).
    details: BTreeMap<String, String>,
}

/// The flow lines of the log (not the `suppressed` ones), every one
/// checked for shape.
fn flow_lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with("- "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert!(
                f.len() >= 7 && f[3].starts_with('[') && f[4].ends_with(']') && f[5] == "TCP",
                "not a flow log line: {l:?}"
            );
            let addr = |s: &str| -> SocketAddrV4 {
                s.parse()
                    .unwrap_or_else(|e| panic!("{s:?} in {l:?} is not an address ({e})"))
            };
            Line {
                client: addr(f[0]),
                vip: addr(f[1]),
                backend: addr(f[2]),
                event: f[6].to_owned(),
                details: f[7..]
                    .iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.to_string(), String::new()),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The counts of the `suppressed` lines: (suppressed, ring_full) summed.
fn suppressed_counts(text: &str) -> (u64, u64) {
    text.lines()
        .filter(|l| l.starts_with("- "))
        .fold((0, 0), |(s, r), l| {
            let field = |name: &str| -> u64 {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name}= in {l:?}"))
            };
            assert!(
                l.contains("] - suppressed "),
                "not a suppressed line: {l:?}"
            );
            (s + field("count"), r + field("ring_full"))
        })
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The flow log's counters, summed over CPUs, from the pinned map; and
/// how many CPUs there are.
fn flow_log_counters(pin_dir: &Path) -> (FlowLogCpu, usize) {
    let path = pin_dir.join(maps::FLOW_LOG_STATE);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening pinned {}: {e}", path.display()));
    let map: PerCpuArray<MapData, FlowLogCpu> =
        PerCpuArray::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let cpus = map.get(&0, 0).expect("reading FLOW_LOG_STATE");
    let n = cpus.iter().count();
    let sum = cpus
        .iter()
        .fold(FlowLogCpu::default(), |sum, c| sum.plus(c));
    (sum, n)
}

/// A lab with xdplb on lb1 logging flows to a file in the lab's run
/// directory, at `rate` a second per CPU.
fn bed_with_flow_log(rate: u32) -> (Bed, PathBuf) {
    let lab = new_lab();
    let path = lab.run_dir.join("flows.log");
    let bed = Bed::start_in(
        lab,
        &BACKENDS,
        &[
            "--flow-log",
            path.to_str().unwrap(),
            "--flow-log-rate",
            &rate.to_string(),
        ],
    );
    (bed, path)
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        other => panic!("an IPv4 address, not {other}"),
    }
}

#[test]
fn twenty_connections_make_twenty_new_lines_naming_their_backends() {
    let (bed, path) = bed_with_flow_log(1000);
    let vip = bed.vip();
    // One GET each, on connections of our own, so each client port is
    // known with the backend that answered it (`x-backend`).
    let served: Vec<(SocketAddrV4, String)> = bed.client.run(async move {
        let mut out = Vec::new();
        for _ in 0..20 {
            let mut conn = Conn::open(vip).await.expect("connecting through the VIP");
            let r = conn.get("/version").await.expect("GET /version");
            assert_eq!(r.status, 200, "{r:?}");
            out.push((v4(conn.local), r.backend));
        }
        out
    });
    let served: BTreeMap<SocketAddrV4, SocketAddrV4> = served
        .into_iter()
        .map(|(client, name)| (client, bed.backends[&name]))
        .collect();
    assert_eq!(served.len(), 20, "20 distinct client ports");

    let news = |text: &str| -> Vec<Line> {
        flow_lines(text)
            .into_iter()
            .filter(|l| l.event == "new")
            .collect()
    };
    eventually(Duration::from_secs(5), || news(&read(&path)).len() >= 20);
    // Nothing more trickles in.
    thread::sleep(Duration::from_millis(500));
    let text = read(&path);
    let new = news(&text);
    assert_eq!(
        new.len(),
        20,
        "expected exactly 20 new lines for 20 connections, flow log:\n{text}{}",
        bed.agent.diag()
    );
    let lb1 = bed.lab.host("lb1").ip;
    for l in &new {
        assert_eq!(
            served.get(&l.client),
            Some(&l.backend),
            "the new line for {} names backend {}, but {:?} served it; flow log:\n{text}",
            l.client,
            l.backend,
            served.get(&l.client)
        );
        assert_eq!(l.vip, v4(vip), "{l:?}");
        let nat: SocketAddrV4 = l.details["nat"].parse().expect("nat=ip:port");
        assert!(
            *nat.ip() == lb1 && NAT_PORTS.contains(&nat.port()),
            "NATed from lb1 within the NAT ports: {l:?}"
        );
    }
    let logged: BTreeSet<SocketAddrV4> = new.iter().map(|l| l.client).collect();
    assert_eq!(logged.len(), 20, "one new line per connection:\n{text}");

    // The connections are closed: the ageing sweep (every 5 s with the
    // default timeouts) sees their FINs and logs each one's end once.
    let closes = |text: &str| -> Vec<Line> {
        flow_lines(text)
            .into_iter()
            .filter(|l| l.event == "close")
            .collect()
    };
    eventually(Duration::from_secs(15), || closes(&read(&path)).len() >= 20);
    thread::sleep(Duration::from_millis(500));
    let text = read(&path);
    let close = closes(&text);
    assert_eq!(
        close.len(),
        20,
        "expected a close line for each of the 20 connections, flow log:\n{text}{}",
        bed.agent.diag()
    );
    for l in &close {
        assert_eq!(served.get(&l.client), Some(&l.backend), "{l:?}");
        assert!(
            ["fin", "rst"].contains(&l.details["how"].as_str()),
            "closed by FIN or RST: {l:?}"
        );
        assert!(l.details["duration"].ends_with('s'), "{l:?}");
    }
}

#[test]
fn a_syn_flood_is_held_to_the_rate_and_what_is_held_back_is_reported() {
    const RATE: u32 = 50;
    const SYNS: u16 = 3000;
    let (bed, path) = bed_with_flow_log(RATE);
    let pins = bed.agent.pin_dir.clone();
    let (before, cpus) = flow_log_counters(&pins);

    let (client, lb1) = (bed.lab.host("client"), bed.lab.host("lb1"));
    let (cmac, lbmac) = (
        mac_of(client, "eth0").unwrap(),
        mac_of(lb1, "eth0").unwrap(),
    );
    let vip = v4(bed.vip());
    // Source ports of their own, far from the kernel's ephemeral range.
    let first_port = 2000;
    let frames: Vec<Vec<u8>> = (0..SYNS)
        .map(|i| {
            FrameBuilder::tcp(
                cmac,
                lbmac,
                SocketAddrV4::new(client.ip, first_port + i),
                vip,
            )
            .build()
        })
        .collect();
    let started = Instant::now();
    client
        .ns
        .run(move || {
            // In bursts of 100, a millisecond apart: still a flood for a
            // limit of RATE a second, but within the veths' backlog (1000
            // frames), which a loaded machine would otherwise overflow and
            // lose SYNs before the data plane ever sees them.
            for burst in frames.chunks(100) {
                send_frames("eth0", burst)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            anyhow::Ok(())
        })
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("sending SYNs from the client: {e:#}"));
    let elapsed = started.elapsed();

    // Every SYN opened a flow, logged or held back (or, never here, lost
    // to a full ring buffer): the data plane's own count.
    let mut after = before;
    let seen = |c: &FlowLogCpu| c.logged + c.suppressed + c.ring_full;
    eventually(Duration::from_secs(5), || {
        after = flow_log_counters(&pins).0;
        seen(&after) - seen(&before) >= u64::from(SYNS)
    });
    let logged = after.logged - before.logged;
    let suppressed = after.suppressed - before.suppressed;
    let ring_full = after.ring_full - before.ring_full;
    assert_eq!(
        logged + suppressed + ring_full,
        u64::from(SYNS),
        "each of the {SYNS} SYNs opens a flow the flow log counts once{}",
        bed.agent.diag()
    );
    // Each CPU's bucket: its burst (RATE), plus RATE a second.
    let bound = cpus as u64
        * (u64::from(RATE) + (u64::from(RATE) as f64 * (elapsed.as_secs_f64() + 1.0)) as u64);
    assert!(
        logged <= bound && suppressed > 0,
        "{SYNS} SYNs in {elapsed:?} at {RATE}/s per CPU on {cpus} CPUs: expected at most {bound} logged and the rest held back, got {logged} logged, {suppressed} held back, {ring_full} with the ring full"
    );

    // What the data plane logged reached the file, and what it held back is
    // reported there (at the next report, each second in the lab).
    let flood = |text: &str| -> usize {
        flow_lines(text)
            .iter()
            .filter(|l| {
                l.event == "new" && (first_port..first_port + SYNS).contains(&l.client.port())
            })
            .count()
    };
    let mut text = String::new();
    eventually(Duration::from_secs(5), || {
        text = read(&path);
        flood(&text) as u64 == logged && suppressed_counts(&text) == (suppressed, ring_full)
    });
    assert_eq!(
        flood(&text) as u64,
        logged,
        "every event the data plane let through is a new line; flow log:\n{text}"
    );
    assert_eq!(
        suppressed_counts(&text),
        (suppressed, ring_full),
        "the suppressed lines add up to the data plane's counters; flow log:\n{text}{}",
        bed.agent.diag()
    );
}
