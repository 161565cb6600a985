//! The walking skeleton end to end: the agent attaches to a lab host,
//! counts real packets sent from another namespace, and leaves nothing
//! behind; the lab's fake apiservers answer like kube-apiservers.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lab::{Lab, LabOptions, agent, client, netns, require_root};
use lb_common::stats::Reason;

fn lab_without_apiservers() -> Lab {
    require_root();
    Lab::start(LabOptions {
        start_apiservers: false,
        ..Default::default()
    })
    .expect("starting the lab")
}

#[test]
fn agent_attaches_counts_client_packets_and_detaches_cleanly() {
    let lab = lab_without_apiservers();
    let id = lab.id.clone();
    let vip = lab.vip().to_string();
    let backend = format!("{}:6443", lab.host("api1").ip);
    let mut agent = lab
        .start_agent("lb1", &["--vip", &vip, "--backend", &backend])
        .expect("starting xdplb on lb1");

    // Attached, per the kernel, and visible to bpftool.
    let prog_id = agent
        .attached_prog_id()
        .unwrap()
        .expect("no XDP program on lb1 eth0");
    let show = Command::new("bpftool")
        .args(["prog", "show", "id", &prog_id.to_string()])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("xdp") && show.contains("name xdplb"),
        "bpftool prog show id {prog_id}: {show}"
    );

    // Real packets from the client namespace to lb1's address.
    const N: u64 = 1000;
    let before = agent.reasons().unwrap().get(Reason::PassNotService).packets;
    let target = SocketAddr::from((lab.host("lb1").ip, 9));
    lab.host("client")
        .ns
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..N {
                sock.send_to(&i.to_be_bytes(), target).unwrap();
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let now = agent.reasons().unwrap().get(Reason::PassNotService).packets - before;
        if now >= N || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        counted >= N,
        "sent {N} datagrams from client to lb1, XDP counted {counted}"
    );
    assert!(
        !agent.pins().is_empty(),
        "maps are not pinned under {}",
        agent.pin_dir.display()
    );

    // SIGTERM: clean exit, program detached and freed, pins removed.
    let status = agent.terminate().unwrap();
    assert!(
        status.success(),
        "xdplb exited with {status}; output:\n{}",
        agent.output()
    );
    assert_eq!(
        agent.attached_prog_id().unwrap(),
        None,
        "XDP still attached after SIGTERM"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent::prog_exists(prog_id) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !agent::prog_exists(prog_id),
        "program {prog_id} still loaded after SIGTERM"
    );
    assert!(
        agent.pins().is_empty(),
        "pins left behind: {:?}",
        agent.pins()
    );

    drop(agent);
    drop(lab);
    let left: Vec<_> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{id}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn fake_apiservers_answer_like_kube_apiservers() {
    require_root();
    let mut lab = Lab::start(LabOptions::default()).expect("starting the lab");
    let addrs: Vec<(String, SocketAddr)> = ["api1", "api2", "api3"]
        .iter()
        .map(|n| (n.to_string(), SocketAddr::from((lab.host(n).ip, 6443))))
        .collect();

    let results = lab
        .host("client")
        .ns
        .run(move || {
            client::block_on(async move {
                let mut out = Vec::new();
                for (name, addr) in addrs {
                    // One keep-alive connection, several requests.
                    let mut conn = client::Conn::open(addr).await.unwrap();
                    let version = conn.get("/version").await.unwrap();
                    let ready = conn.get("/readyz").await.unwrap();
                    let peer = conn.get("/debug/peer").await.unwrap();
                    out.push((name, version, ready, peer, conn.local));
                }
                out
            })
        })
        .unwrap();
    for (name, version, ready, peer, local) in results {
        assert_eq!(version.status, 200);
        let v: serde_json::Value = serde_json::from_str(&version.body).expect("/version is JSON");
        assert_eq!(
            v["gitVersion"],
            name.as_str(),
            "{name} /version: {}",
            version.body
        );
        assert_eq!(
            (ready.status, ready.body.trim()),
            (200, "ok"),
            "{name} /readyz"
        );
        assert_eq!(ready.backend, name);
        assert_eq!(
            peer.body.trim(),
            local.to_string(),
            "{name} saw another peer than the client"
        );
    }

    // Unhealthy: /readyz → 500; healthy again → 200; killed → refused; restarted → ok.
    let api2 = SocketAddr::from((lab.host("api2").ip, 6443));
    let readyz = |lab: &Lab| {
        lab.host("client")
            .ns
            .run(move || client::block_on(client::get(api2, "/readyz")).map(|r| r.status))
            .unwrap()
    };
    lab.apiserver("api2").unwrap().set_ready(false).unwrap();
    assert!(
        eventually(|| readyz(&lab).ok() == Some(500)),
        "api2 /readyz did not turn 500"
    );
    lab.apiserver("api2").unwrap().set_ready(true).unwrap();
    assert!(
        eventually(|| readyz(&lab).ok() == Some(200)),
        "api2 /readyz did not recover"
    );
    lab.apiserver("api2").unwrap().kill().unwrap();
    assert!(readyz(&lab).is_err(), "api2 answered after being killed");
    lab.apiserver("api2").unwrap().restart().unwrap();
    assert_eq!(readyz(&lab).unwrap(), 200);
}

#[test]
fn bad_interface_is_named_in_the_error() {
    require_root();
    let out = Command::new(lab::bins::path("xdplb").unwrap())
        .args([
            "--iface",
            "does-not-exist",
            "--vip",
            "10.0.0.100",
            "--backend",
            "10.0.0.1:6443",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xdplb accepted a missing interface");
    assert!(
        stderr.contains("does-not-exist"),
        "error does not name the interface: {stderr}"
    );
}

#[test]
fn running_without_root_says_so() {
    require_root();
    // A copy nobody can run, wherever the checkout lives.
    let dir = std::env::temp_dir().join(format!("xdplb-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("xdplb");
    std::fs::copy(lab::bins::path("xdplb").unwrap(), &bin).unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(&dir)
        .arg(&bin)
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args([
            "--iface",
            "lo",
            "--vip",
            "10.0.0.100",
            "--backend",
            "10.0.0.1:6443",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xdplb ran without root");
    assert!(
        stderr.contains("must run as root"),
        "unclear error without root: {stderr}"
    );
}

/// Polls `f` for up to 5 s.
fn eventually(f: impl FnMut() -> bool) -> bool {
    lab::wait::eventually(Duration::from_secs(5), f)
}

#[test]
fn a_crashed_runs_namespaces_are_swept_before_a_lab_starts() {
    require_root();
    // A pid that cannot be running: above the kernel's pid_max ceiling.
    let stale = "xl4194305-0-client";
    Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    let lab = Lab::start(LabOptions {
        start_apiservers: false,
        ..Default::default()
    })
    .unwrap();
    let present = netns::list().iter().any(|n| n == stale);
    drop(lab);
    let _ = Command::new("ip").args(["netns", "del", stale]).status();
    assert!(!present, "the lab started without removing {stale}");
}

/// A data plane pinned by another xdplb version (here: FLOWS as the LRU of
/// 32-byte flows that versions before the flow-embedded next hop made) is
/// refused with what differs, and left as it was.
#[test]
fn pins_of_another_version_are_refused_and_kept() {
    require_root();
    let r = lab::testrun::agent_on_foreign_flows_pin("pins_of_another_version", "lru_hash", 16, 32);
    assert!(
        !r.succeeded,
        "xdplb accepted another version's pins:\n{}",
        r.output
    );
    assert!(
        r.output.contains("made by another xdplb version") && r.output.contains("FLOWS"),
        "the error does not say which pin and why:\n{}",
        r.output
    );
    assert!(r.kept, "the other version's FLOWS pin was removed");
}
