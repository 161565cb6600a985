//! xdplb on a veth in a plain Linux bridge, as in a container, a kind node
//! or a VM bridge: nothing runs XDP on the bridge side, so native XDP_TX
//! into lb1's veth would vanish (drivers/net/veth.c delivers only to a peer
//! with NAPI). With default flags the agent must see that, attach in
//! generic mode, say why, and serve.

use lab::{Lab, LabOptions, bed::Bed, netns, require_root};

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];

fn plain_bridge_lab() -> Lab {
    require_root();
    Lab::start(LabOptions {
        peer_xdp: false,
        ..Default::default()
    })
    .expect("starting a plain-bridge lab")
}

/// `ip link show eth0` in lb1's namespace: "xdp/id:N" for native,
/// "xdpgeneric/id:N" for generic.
fn link_line(bed: &Bed) -> String {
    let out = netns::command_in(&bed.agent.ns, "ip")
        .args(["link", "show", "dev", "eth0"])
        .output()
        .expect("running ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn default_flags_on_a_plain_bridge_attach_generic_and_serve_https_to_every_backend() {
    let bed = Bed::start_in(plain_bridge_lab(), &BACKENDS, &[]);
    let log = bed.agent.output();
    let attached = log
        .lines()
        .find(|l| l.contains("XDP program attached"))
        .unwrap_or_else(|| panic!("no attach line in the log{}", bed.agent.diag()));
    assert!(
        attached.contains("generic mode")
            && attached.contains("is a veth whose peer p-lb1")
            && attached.contains("has no native XDP program"),
        "the attach line must name generic mode and why (the peer p-lb1 runs no XDP): {attached}"
    );
    let link = link_line(&bed);
    assert!(
        link.contains("xdpgeneric"),
        "the kernel must show a generic-mode program on eth0: {link}"
    );

    let counts = bed.spread(300);
    for b in BACKENDS {
        let got = counts.get(b).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&got),
            "expected {b} to answer 60..=140 of 300 HTTPS connections through the VIP, got {got} ({counts:?}){}",
            bed.agent.diag()
        );
    }
}

#[test]
fn explicit_native_on_a_plain_bridge_warns_that_forwarded_packets_are_dropped() {
    let bed = Bed::start_in(plain_bridge_lab(), &BACKENDS, &["--xdp-mode", "native"]);
    let log = bed.agent.output();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("--xdp-mode native on veth eth0")
            && l.contains("DROPPED")
            && l.contains("gro on")),
        "an explicit native mode on a peer without NAPI must warn and say how to fix it{}",
        bed.agent.diag()
    );
    let link = link_line(&bed);
    assert!(
        link.contains(" xdp ") && !link.contains("xdpgeneric"),
        "the user asked for native and gets it: {link}"
    );
}

#[test]
fn auto_attaches_native_when_the_veth_peer_runs_xdp() {
    // The project's usual lab: xdp_pass on the bridge side of lb1.
    let bed = Bed::start(&BACKENDS, &[]);
    let log = bed.agent.output();
    assert!(
        log.lines()
            .any(|l| l.contains("XDP program attached in native mode")
                && l.contains("whose peer p-lb1")
                && l.contains("runs native XDP program")),
        "auto must choose native when the peer delivers, and say so{}",
        bed.agent.diag()
    );
    let link = link_line(&bed);
    assert!(
        link.contains(" xdp ") && !link.contains("xdpgeneric"),
        "native on eth0: {link}"
    );
    let counts = bed.spread(30);
    assert_eq!(counts.values().sum::<usize>(), 30, "{counts:?}");
}
