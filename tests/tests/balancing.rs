//! Full-NAT balancing end to end: real HTTPS clients in the client
//! namespace talk to VIP:6443, xdplb on lb1 spreads them over the fake
//! kube-apiservers with Maglev, keeps each connection on its backend through
//! reloads, crashes and garbage on the wire, and leaves the node's own
//! traffic alone.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lab::{
    Lab,
    apiserver::PORT,
    bed::{Bed, fresh_connections, new_lab, tally},
    client::{Conn, Response},
    packets::{FrameBuilder, IPOPT_NOP, mac_of, send_frames},
    wait::eventually,
};
use lb_common::{
    stats::{Reason, ReasonTotals},
    wire::TCP_SYN,
};

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];
/// The agent's default NAT source ports (`auto`) in lb1's namespace, whose
/// ip_local_port_range is a new namespace's, the kernel's 32768-60999.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 1024..=32767;

/// How many packets a reason counted between two readings.
fn grew(before: &ReasonTotals, after: &ReasonTotals, reason: Reason) -> u64 {
    after.get(reason).packets - before.get(reason).packets
}

fn assert_within(
    counts: &BTreeMap<String, usize>,
    backend: &str,
    range: std::ops::RangeInclusive<usize>,
    n: usize,
) {
    let got = counts.get(backend).copied().unwrap_or(0);
    assert!(
        range.contains(&got),
        "expected {backend} to answer between {} and {} of {n} connections, it answered {got} (all: {counts:?})",
        range.start(),
        range.end()
    );
}

#[test]
fn distributes_300_https_connections_over_three_backends() {
    let bed = Bed::start(&BACKENDS, &[]);
    let before = bed.reasons();
    let counts = bed.spread(300);
    for b in BACKENDS {
        assert_within(&counts, b, 60..=140, 300);
    }
    // Through the XDP rewrite (XDP_TX both ways), not the kernel: every
    // connection is at least a SYN forwarded and a SYN-ACK returned.
    let after = bed.reasons();
    for reason in [Reason::TxForward, Reason::TxReply] {
        let n = grew(&before, &after, reason);
        assert!(
            n >= 300,
            "expected {} to count at least one packet per connection (300), it counted {n}{}",
            reason.name(),
            bed.agent.diag()
        );
    }
}

#[test]
fn weights_2_1_1() {
    let bed = Bed::start(&["api1@2", "api2@1", "api3@1"], &[]);
    let counts = bed.spread(300);
    assert_within(&counts, "api1", 120..=180, 300);
}

#[test]
fn keep_alive_connection_stays_on_one_backend() {
    let bed = Bed::start(&BACKENDS, &[]);
    let vip = bed.vip();
    let answers: Vec<Result<Response, String>> = bed.client.run(async move {
        let mut conn = match Conn::open(vip).await {
            Ok(c) => c,
            Err(e) => return vec![Err(format!("opening the connection: {e:#}"))],
        };
        let mut out = Vec::new();
        for _ in 0..50 {
            out.push(conn.get("/version").await.map_err(|e| format!("{e:#}")));
        }
        out
    });
    let backends: Vec<String> = answers
        .iter()
        .map(|r| match r {
            Ok(r) if r.status == 200 => r.backend.clone(),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    assert_eq!(
        backends.len(),
        50,
        "expected 50 answers on one connection, got {backends:?}{}",
        bed.agent.diag()
    );
    assert!(
        BACKENDS.contains(&backends[0].as_str()) && backends.iter().all(|b| *b == backends[0]),
        "expected all 50 GETs on one keep-alive connection to be answered (200) by the same backend, got {backends:?}{}",
        bed.agent.diag()
    );
}

#[test]
fn full_nat_backends_see_the_snat_address_and_client_sees_the_vip() {
    let bed = Bed::start(&BACKENDS, &[]);
    let lb1 = bed.lab.host("lb1").ip;
    let (conn, version) = bed
        .open()
        .unwrap_or_else(|e| panic!("HTTPS through the VIP: {e:#}{}", bed.agent.diag()));
    assert_eq!(version.status, 200);
    let local = conn.local;
    let (conn, peer) = bed.get(conn, "/debug/peer");
    let peer = peer.unwrap_or_else(|e| panic!("GET /debug/peer: {e:#}{}", bed.agent.diag()));
    let seen: SocketAddrV4 = peer
        .body
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("/debug/peer answered {:?}, not IP:PORT ({e})", peer.body));
    assert_eq!(
        *seen.ip(),
        lb1,
        "expected {} to see lb1's address {lb1} (the default SNAT IP) as the peer, it saw {seen} (the client is {local})",
        peer.backend
    );
    assert!(
        NAT_PORTS.contains(&seen.port()),
        "expected the SNAT source port in {NAT_PORTS:?}, {} saw {seen}",
        peer.backend
    );

    // The TCP handshake completed, so the SYN-ACK came from VIP:6443 (the
    // client's kernel resets anything else); the kernel agrees that the
    // connection's peer is the VIP.
    let vip = bed.vip().to_string();
    let ss = bed
        .lab
        .host("client")
        .ns
        .exec("ss", &["-Htn"])
        .expect("ss in the client namespace");
    let line = ss
        .lines()
        .find(|l| l.contains(&format!("{local} ")))
        .unwrap_or_else(|| panic!("no socket {local} in the client's `ss -tn`:\n{ss}"));
    assert!(
        line.starts_with("ESTAB") && line.contains(&vip),
        "expected the client's connection {local} to be established with {vip}, ss says: {line}"
    );
    // lb1 answered ARP for the VIP.
    let mac = mac_of(bed.lab.host("lb1"), "eth0").expect("lb1's MAC");
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let neigh = bed
        .lab
        .host("client")
        .ns
        .ip(&["neigh", "show", &bed.lab.vip().to_string()])
        .expect("ip neigh in the client namespace");
    assert!(
        neigh.contains(&mac),
        "expected the client to have learned the VIP at lb1's MAC {mac}, its neighbour table says: {neigh:?}"
    );
    drop(conn);
}

/// The TOML for one service on the VIP with `backends` (host names).
fn config_toml(lab: &Lab, backends: &[&str]) -> String {
    let mut s = format!("[[service]]\nvip = \"{}\"\nport = {PORT}\n", lab.vip());
    for b in backends {
        s += &format!(
            "  [[service.backend]]\n  name = \"{b}\"\n  address = \"{}:{PORT}\"\n",
            lab.host(b).ip
        );
    }
    s
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[test]
fn removing_a_backend_on_sighup_keeps_established_connections() {
    let lab = new_lab();
    let file: PathBuf = lab.run_dir.join("xdplb.toml");
    write(&file, &config_toml(&lab, &BACKENDS));
    let bed = Bed::with_args(lab, vec!["--config".into(), file.display().to_string()]);

    // One keep-alive connection to each backend.
    let mut held = bed.hold(&BACKENDS);

    write(&file, &config_toml(&bed.lab, &["api1", "api2"]));
    bed.agent
        .proc
        .signal(libc::SIGHUP)
        .expect("SIGHUP to xdplb");
    assert!(
        eventually(Duration::from_secs(10), || bed
            .agent
            .output()
            .contains("reloaded")),
        "expected xdplb to log the reload within 10 s of SIGHUP{}",
        bed.agent.diag()
    );

    for name in ["api1", "api2"] {
        let conn = held.remove(name).and_then(|h| h.conn).expect("held above");
        let (_conn, r) = bed.get(conn, "/version");
        match r {
            Ok(r) => assert_eq!(
                (r.status, r.backend.as_str()),
                (200, name),
                "expected the connection held to {name} to still be answered by it after the reload{}",
                bed.agent.diag()
            ),
            Err(e) => panic!(
                "the connection held to {name} broke when api3 was removed: {e:#}{}",
                bed.agent.diag()
            ),
        }
    }
    let counts = bed.spread(100);
    assert!(
        !counts.contains_key("api3"),
        "expected no new connection to reach api3 after it was removed, got {counts:?}{}",
        bed.agent.diag()
    );
}

#[test]
fn long_lived_connection_survives_kill_9_and_restart() {
    let mut bed = Bed::start(&BACKENDS, &[]);
    let (mut conn, first) = bed
        .open()
        .unwrap_or_else(|e| panic!("HTTPS through the VIP: {e:#}{}", bed.agent.diag()));
    assert_eq!(first.status, 200, "first GET: {first:?}");
    let backend = first.backend.clone();

    // `rounds` GETs 100 ms apart, each must be the same full answer.
    let check = |bed: &Bed, mut conn: Conn, when: &str, rounds: usize| -> Conn {
        for i in 0..rounds {
            let (c, r) = bed.get(conn, "/version");
            conn = c;
            match r {
                Ok(r) => assert!(
                    r.status == 200 && r.backend == backend && r.body == first.body,
                    "{when}, GET {i}: expected 200 from {backend} with body {:?}, got {} from {:?} with body {:?}{}",
                    first.body,
                    r.status,
                    r.backend,
                    r.body,
                    bed.agent.diag()
                ),
                Err(e) => panic!(
                    "{when}, GET {i} on the connection to {backend} failed: {e:#}{}",
                    bed.agent.diag()
                ),
            }
            thread::sleep(Duration::from_millis(100));
        }
        conn
    };
    conn = check(&bed, conn, "before the kill", 5);

    let prog = bed
        .agent
        .attached_prog_id()
        .expect("reading lb1's XDP program");
    let status = bed.agent.proc.kill().expect("SIGKILL to xdplb");
    assert!(!status.success(), "xdplb exited with {status} on SIGKILL");
    let after_kill = bed
        .agent
        .attached_prog_id()
        .expect("reading lb1's XDP program");
    assert!(
        prog.is_some() && after_kill == prog,
        "expected the pinned XDP program {prog:?} to stay attached after kill -9, lb1's eth0 has {after_kill:?}"
    );
    conn = check(&bed, conn, "with no agent running", 20);
    // New connections too: services, backends and Maglev tables are pinned.
    let results = bed.client.run(fresh_connections(bed.vip(), 10, 5));
    tally(&results, 10, &bed.agent);

    bed.restart_agent();
    assert!(
        bed.agent.output().contains("adopted"),
        "expected the restarted xdplb to adopt the pinned data plane{}",
        bed.agent.diag()
    );
    conn = check(&bed, conn, "after the restart", 10);
    bed.spread(30);
    drop(conn);
}

#[test]
fn malformed_packets_do_not_disturb_a_running_connection() {
    let lab = new_lab();
    // A UDP service too, so a lying UDP length is checked by the data plane
    // (nothing listens on its backends: no datagram is meant to arrive).
    let mut toml = config_toml(&lab, &BACKENDS);
    toml += &format!(
        "[[service]]\nname = \"udp\"\nvip = \"{}\"\nport = 5353\nproto = \"udp\"\n  [[service.backend]]\n  address = \"{}:5353\"\n",
        lab.vip(),
        lab.host("api1").ip
    );
    let file = lab.run_dir.join("xdplb.toml");
    write(&file, &toml);
    let mut bed = Bed::with_args(lab, vec!["--config".into(), file.display().to_string()]);

    let (conn, first) = bed
        .open()
        .unwrap_or_else(|e| panic!("HTTPS through the VIP: {e:#}{}", bed.agent.diag()));
    assert_eq!(first.status, 200, "first GET: {first:?}");

    let client = bed.lab.host("client");
    let src_mac = mac_of(client, "eth0").expect("the client's MAC");
    let dst_mac = mac_of(bed.lab.host("lb1"), "eth0").expect("lb1's MAC");
    let vip = bed.lab.vip();
    let tcp = |sport: u16| {
        FrameBuilder::tcp(
            src_mac,
            dst_mac,
            SocketAddrV4::new(client.ip, sport),
            SocketAddrV4::new(vip, PORT),
        )
    };
    const N: u16 = 5;
    let mut frames = Vec::new();
    for i in 0..N {
        // Source ports below the ephemeral range: no clash with `conn`.
        frames.push(tcp(1000 + i).truncate_l4(10).build());
        frames.push(tcp(1100 + i).tcp_data_offset(4).build());
        frames.push(tcp(1200 + i).ihl(4).build());
        frames.push(tcp(1300 + i).flags(0).build());
        frames.push(tcp(1400 + i).more_fragments().ip_id(1400 + i).build());
        frames.push(tcp(1500 + i).fragment_offset(185).ip_id(1500 + i).build());
        frames.push(
            tcp(1600 + i)
                .flags(TCP_SYN)
                .ip_total_len_excess(100)
                .build(),
        );
        frames.push(
            FrameBuilder::udp(
                src_mac,
                dst_mac,
                SocketAddrV4::new(client.ip, 1700 + i),
                SocketAddrV4::new(vip, 5353),
            )
            .payload(b"lie")
            .udp_len_excess(100)
            .build(),
        );
        // Legitimate: a SYN with IP options (IHL 6, four NOPs) is
        // balanced like any other; the backend's SYN-ACK comes back
        // through lb1 and the client resets it.
        frames.push(
            tcp(1800 + i)
                .ip_options(&[IPOPT_NOP; 4])
                .seq(0x4000_0000 + u32::from(i))
                .build(),
        );
    }
    let n = u64::from(N);
    let expected = [
        (Reason::DropMalformedL4, 2 * n),
        (Reason::PassMalformedIpv4, n),
        (Reason::DropTcpNoFlags, n),
        (Reason::PassFragment, 2 * n),
        (Reason::DropBadIpLength, n),
        (Reason::DropBadUdpLength, n),
        // The SYN-ACKs to the SYNs with options.
        (Reason::TxReply, n),
    ];

    let before = bed.reasons();
    client
        .ns
        .run(move || send_frames("eth0", &frames))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("sending raw frames from the client: {e:#}"));
    let mut after = before;
    eventually(Duration::from_secs(5), || {
        after = bed.reasons();
        expected
            .iter()
            .all(|&(r, want)| grew(&before, &after, r) >= want)
    });
    for (reason, want) in expected {
        let got = grew(&before, &after, reason);
        assert!(
            got >= want,
            "expected {} to grow by at least {want} after the malformed frames, it grew by {got}{}",
            reason.name(),
            bed.agent.diag()
        );
    }

    let (_conn, again) = bed.get(conn, "/version");
    let again = again.unwrap_or_else(|e| {
        panic!(
            "the held connection broke after the malformed frames: {e:#}{}",
            bed.agent.diag()
        )
    });
    assert_eq!(
        (again.status, again.backend.as_str()),
        (200, first.backend.as_str()),
        "expected the held connection to be answered by the same backend after the malformed frames"
    );
    bed.spread(10);
    let exited = bed.agent.proc.child.try_wait().expect("waiting on xdplb");
    assert!(
        exited.is_none(),
        "xdplb exited ({exited:?}) after the malformed frames{}",
        bed.agent.diag()
    );
}

#[test]
fn node_traffic_passes_while_attached() {
    let bed = Bed::start(&BACKENDS, &[]);
    let (client, lb1) = (bed.lab.host("client"), bed.lab.host("lb1"));
    assert!(
        bed.agent
            .attached_prog_id()
            .expect("reading lb1's XDP program")
            .is_some(),
        "expected an XDP program on lb1's eth0{}",
        bed.agent.diag()
    );
    let before = bed.reasons();

    let lb1_ip = lb1.ip.to_string();
    if let Err(e) = client.ns.exec("ping", &["-c", "3", "-W", "1", &lb1_ip]) {
        panic!(
            "expected the client to ping lb1 ({lb1_ip}) through XDP: {e:#}{}",
            bed.agent.diag()
        );
    }

    // A TCP service of the node itself, on lb1's own address (the SNAT IP)
    // and inside the default NAT ports (1024-32767), as kubelet's 10250 or
    // etcd's 2379 are on a real node: a packet to a NAT port that belongs
    // to no flow is the node's own, and passes. The socket is made inside
    // lb1's namespace and stays there whichever thread accepts on it.
    let listen = SocketAddr::from((lb1.ip, 8080));
    assert!(NAT_PORTS.contains(&listen.port()));
    let listener = lb1
        .ns
        .run(move || TcpListener::bind(listen))
        .and_then(|r| Ok(r?))
        .unwrap_or_else(|e| panic!("listening on {listen} in lb1: {e:#}"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let server = thread::spawn(move || -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(a) => break a,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection within 10 s".into());
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        if &buf != b"ping" {
            return Err(format!("read {buf:?}, expected \"ping\""));
        }
        s.write_all(b"pong").map_err(|e| format!("write: {e}"))
    });
    let answer = client
        .ns
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&listen, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"ping")?;
            let mut buf = vec![0u8; 4];
            s.read_exact(&mut buf)?;
            Ok(buf)
        })
        .and_then(|r| Ok(r?));
    let served = server.join().expect("the lb1 server thread panicked");
    match answer {
        Ok(buf) => assert_eq!(
            buf, b"pong",
            "expected lb1's own TCP service on {listen} to answer \"pong\""
        ),
        Err(e) => panic!(
            "expected the client to reach lb1's own TCP service on {listen}: {e:#} (server: {served:?}){}",
            bed.agent.diag()
        ),
    }
    assert_eq!(served, Ok(()), "lb1's TCP service on {listen}");

    // XDP saw that traffic and passed it: ping (3 requests) and the TCP
    // exchange (at least SYN, ACK, data) arrive at lb1's own address.
    let after = bed.reasons();
    let passed = grew(&before, &after, Reason::PassNotService);
    assert!(
        passed >= 6,
        "expected XDP to pass at least 6 of the client's packets to lb1 as pass_not_service, it counted {passed}{}",
        bed.agent.diag()
    );
}

#[test]
fn routed_vip_without_assigning_it() {
    let bed = Bed::start(&BACKENDS, &["--no-assign-vip"]);
    let vip = bed.lab.vip();
    let addrs = bed
        .lab
        .host("lb1")
        .ns
        .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr in lb1");
    assert!(
        !addrs.contains(&format!("{vip}/")),
        "expected --no-assign-vip to leave {vip} off lb1's eth0, it has: {addrs}"
    );
    let lb1 = bed.lab.host("lb1").ip.to_string();
    bed.lab
        .host("client")
        .ns
        .ip(&["route", "add", &format!("{vip}/32"), "via", &lb1])
        .expect("adding the client's route to the VIP via lb1");

    let before = bed.reasons();
    let counts = bed.spread(20);
    assert_eq!(counts.values().sum::<usize>(), 20);
    let forwarded = grew(&before, &bed.reasons(), Reason::TxForward);
    assert!(
        forwarded >= 20,
        "expected the routed VIP traffic to be NATed by XDP (tx_forward ≥ 20), it counted {forwarded}{}",
        bed.agent.diag()
    );
}

#[test]
fn generic_mode_balances_too() {
    let bed = Bed::start(&BACKENDS, &["--xdp-mode", "generic"]);
    let link = bed
        .lab
        .host("lb1")
        .ns
        .ip(&["-d", "link", "show", "dev", "eth0"])
        .expect("ip link in lb1");
    assert!(
        link.contains("xdpgeneric"),
        "expected the program attached in generic mode (xdpgeneric), lb1's eth0 says: {link}"
    );
    let before = bed.reasons();
    let counts = bed.spread(30);
    assert!(
        counts.len() >= 2,
        "expected 30 connections to reach more than one backend, got {counts:?}"
    );
    let after = bed.reasons();
    for reason in [Reason::TxForward, Reason::TxReply] {
        let n = grew(&before, &after, reason);
        assert!(
            n >= 30,
            "expected {} to count at least 30 packets in generic mode, it counted {n}{}",
            reason.name(),
            bed.agent.diag()
        );
    }
}
