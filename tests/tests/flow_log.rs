//! The flow log end to end: real HTTPS connections through the VIP each
//! get one `new` line naming the backend that served them, and a `close`
//! line when they end; a spoofed SYN flood, whose connections never
//! complete their handshakes, logs nothing; a flood of connections beyond
//! the rate limit is held back in the kernel, and what was held back is
//! counted and reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
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
use lb_common::{
    flowlog::FlowLogCpu,
    maps,
    stats::{EmbryoStats, Reason, ReasonTotals},
};
use tokio::{net::TcpStream, task::JoinSet};

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

/// EMBRYO_STATS (half-open connections) summed over CPUs, from the
/// pinned map.
fn embryo_counters(pin_dir: &Path) -> EmbryoStats {
    let path = pin_dir.join(maps::EMBRYO_STATS);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening pinned {}: {e}", path.display()));
    let map: PerCpuArray<MapData, EmbryoStats> =
        PerCpuArray::try_from(Map::from_map_data(data).unwrap()).unwrap();
    EmbryoStats::sum(map.get(&0, 0).expect("reading EMBRYO_STATS").iter())
}

/// Every event the flow log's data plane side counted: logged, held back
/// by the rate limit, or lost to a full ring buffer.
fn flow_log_events(c: &FlowLogCpu) -> u64 {
    c.logged + c.suppressed + c.ring_full
}

/// Packets of the reasons a backend's packet rewritten towards a client
/// gets, whatever became of it after the rewrite (the FIB's two failures
/// could count others too, of which the spoofed SYN flood makes none).
fn replies(r: &ReasonTotals) -> u64 {
    [
        Reason::TxReply,
        Reason::RedirectReply,
        Reason::PassFibOther,
        Reason::PassNoNeigh,
    ]
    .iter()
    .map(|&reason| r.get(reason).packets)
    .sum()
}

/// `n` TCP connections to `vip` from the client's own stack, at most
/// `parallel` at a time, each closed as soon as it is open: every one a
/// complete handshake (SYN, the backend's SYN-ACK, the client's ACK).
/// Returns the client addresses of those that opened, and the errors of
/// those that did not.
async fn connect_flood(
    vip: SocketAddr,
    n: usize,
    parallel: usize,
) -> (Vec<SocketAddrV4>, Vec<String>) {
    let mut tasks = JoinSet::new();
    let (mut started, mut opened, mut errors) = (0, Vec::new(), Vec::new());
    loop {
        while started < n && tasks.len() < parallel && errors.len() < 10 {
            tasks.spawn(async move {
                let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(vip))
                    .await
                    .map_err(|_| "connecting: timed out".to_string())?
                    .map_err(|e| format!("connecting: {e}"))?;
                stream
                    .local_addr()
                    .map_err(|e| format!("local address: {e}"))
            });
            started += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        match done {
            Ok(Ok(local)) => opened.push(v4(local)),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    (opened, errors)
}

/// A TCP connection is logged when its handshake completes (the data
/// plane's promotion of the half-open connection), so what a SYN flood
/// from spoofed addresses makes, half-open connections that never
/// complete, is never logged; and a flood of real connections beyond the
/// rate limit is held back in the kernel, what was held back counted and
/// reported.
#[test]
fn a_spoofed_syn_flood_logs_nothing_and_a_connection_flood_is_held_to_the_rate() {
    const RATE: u32 = 50;
    const SPOOFED: u16 = 2000;
    const CONNECTIONS: usize = 3000;
    let (bed, path) = bed_with_flow_log(RATE);
    let pins = bed.agent.pin_dir.clone();
    let (log_before, cpus) = flow_log_counters(&pins);
    let embryos_before = embryo_counters(&pins);
    let replies_before = replies(&bed.reasons());

    // 1. SYNs from spoofed addresses (198.18.0.0/15, RFC 2544's, which no
    // lab host has a route to): each makes a half-open connection and
    // reaches a backend, whose SYN-ACK comes back through lb1 and goes
    // nowhere; none completes.
    let (client, lb1) = (bed.lab.host("client"), bed.lab.host("lb1"));
    let (cmac, lbmac) = (
        mac_of(client, "eth0").unwrap(),
        mac_of(lb1, "eth0").unwrap(),
    );
    let vip = v4(bed.vip());
    let spoofed = |i: u16| {
        let [hi, lo] = i.to_be_bytes();
        SocketAddrV4::new(Ipv4Addr::new(198, 18, hi, lo), 2000 + i)
    };
    let frames: Vec<Vec<u8>> = (0..SPOOFED)
        .map(|i| {
            FrameBuilder::tcp(cmac, lbmac, spoofed(i), vip)
                .seq(0x5eed_0000 + u32::from(i))
                .build()
        })
        .collect();
    client
        .ns
        .run(move || {
            // In bursts of 100, a millisecond apart: within the veths'
            // backlog (1000 frames), which a loaded machine would otherwise
            // overflow and lose SYNs before the data plane ever sees them.
            for burst in frames.chunks(100) {
                send_frames("eth0", burst)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            anyhow::Ok(())
        })
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("sending spoofed SYNs from the client: {e:#}"));
    // Every SYN made a half-open connection, and every one was answered:
    // the backends' SYN-ACKs came back through their reply halves.
    let mut embryos = embryos_before;
    let mut answered = 0;
    eventually(Duration::from_secs(10), || {
        embryos = embryo_counters(&pins);
        answered = replies(&bed.reasons()) - replies_before;
        embryos.opened - embryos_before.opened >= u64::from(SPOOFED)
            && answered >= u64::from(SPOOFED)
    });
    assert_eq!(
        embryos.opened - embryos_before.opened,
        u64::from(SPOOFED),
        "each spoofed SYN makes one half-open connection{}",
        bed.agent.diag()
    );
    assert!(
        answered >= u64::from(SPOOFED),
        "the backends answered {answered} of the {SPOOFED} spoofed SYNs through lb1{}",
        bed.agent.diag()
    );
    eprintln!(
        "flow log: {SPOOFED} spoofed SYNs made {} half-open connections, {answered} answers \
         came back",
        embryos.opened - embryos_before.opened
    );
    // Time for anything late (the agent reports held-back events each
    // second in the lab).
    thread::sleep(Duration::from_millis(1500));
    let embryos = embryo_counters(&pins);
    let log_after_syns = flow_log_counters(&pins).0;
    assert_eq!(
        (
            embryos.promoted - embryos_before.promoted,
            flow_log_events(&log_after_syns) - flow_log_events(&log_before),
        ),
        (0, 0),
        "a spoofed SYN flood completes no connection, so the flow log has no event \
         for it (promoted, events){}",
        bed.agent.diag()
    );
    // Nor does the file: no line for a spoofed client, no suppressed line.
    let text = read(&path);
    let spoofed_lines = flow_lines(&text)
        .iter()
        .filter(|l| l.client.ip().octets()[..2] == [198, 18])
        .count();
    assert_eq!(
        (spoofed_lines, suppressed_counts(&text)),
        (0, (0, 0)),
        "no flow log line for a spoofed SYN flood; flow log:\n{text}"
    );

    // 2. Real connections, far beyond the rate: each one is logged or held
    // back, exactly once, when its handshake completes.
    let (log_before, embryos_before) = (log_after_syns, embryo_counters(&pins));
    let started = Instant::now();
    let (opened, errors) = bed.client.run(connect_flood(bed.vip(), CONNECTIONS, 100));
    let elapsed = started.elapsed();
    assert!(
        errors.is_empty() && opened.len() == CONNECTIONS,
        "{} of {CONNECTIONS} connections through the VIP opened; errors: {:?}{}",
        opened.len(),
        &errors[..errors.len().min(5)],
        bed.agent.diag()
    );
    let ports: BTreeSet<SocketAddrV4> = opened.into_iter().collect();
    assert_eq!(ports.len(), CONNECTIONS, "distinct client ports");

    let mut after = log_before;
    let mut embryos = embryos_before;
    eventually(Duration::from_secs(5), || {
        after = flow_log_counters(&pins).0;
        embryos = embryo_counters(&pins);
        flow_log_events(&after) - flow_log_events(&log_before) >= CONNECTIONS as u64
    });
    let promoted = embryos.promoted - embryos_before.promoted;
    let logged = after.logged - log_before.logged;
    let suppressed = after.suppressed - log_before.suppressed;
    let ring_full = after.ring_full - log_before.ring_full;
    assert_eq!(
        (promoted, logged + suppressed + ring_full),
        (CONNECTIONS as u64, CONNECTIONS as u64),
        "each of the {CONNECTIONS} connections completes its handshake once (promoted), \
         and the flow log counts it once (events){}",
        bed.agent.diag()
    );
    // Each CPU's bucket: its burst (RATE), plus RATE a second.
    let bound = cpus as u64
        * (u64::from(RATE) + (u64::from(RATE) as f64 * (elapsed.as_secs_f64() + 1.0)) as u64);
    eprintln!(
        "flow log: {CONNECTIONS} connections in {elapsed:?} on {cpus} CPUs: {logged} logged \
         (at most {bound}), {suppressed} held back, {ring_full} with the ring full"
    );
    assert!(
        logged <= bound && suppressed > 0,
        "{CONNECTIONS} connections in {elapsed:?} at {RATE}/s per CPU on {cpus} CPUs: expected \
         at most {bound} logged and the rest held back, got {logged} logged, {suppressed} held \
         back, {ring_full} with the ring full"
    );

    // What the data plane logged reached the file, and what it held back is
    // reported there (at the next report, each second in the lab).
    let flood = |text: &str| -> usize {
        flow_lines(text)
            .iter()
            .filter(|l| l.event == "new" && ports.contains(&l.client))
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
