//! Whole files: what they mean, and the errors that point into them.

use std::{net::Ipv4Addr, time::Duration};

use crate::config::{
    BackendConfig, CheckConfig, CheckKind, Config, NatPorts, OnDown, Proto, ServiceConfig,
    Timeouts,
    test_support::{FILE, addr, apiserver_check, assert_has, service, toml_err},
};

const FULL: &str = r#"
snat_ip = "192.168.31.71"
nat_ports = "30000-30999"
max_flows = 65536
max_embryos = 262144
keep_dataplane = true
assign_vip = false
maglev_table_size = 65521

[timeouts]
tcp_established = "2h"
tcp_syn = "5s"
tcp_closing = "500ms"
udp = "1m"

[[service]]
name = "k8s-apiserver"
vip = "192.168.31.88"
port = 6443
proto = "tcp"
  [[service.backend]]
  address = "192.168.31.71:6443"
  weight = 1
  name = "master1"
  [[service.backend]]
  address = "192.168.31.74:6443"
  weight = 3
  [service.check]
  kind = "http"
  path = "/healthz?verbose"
  expect = 204
  interval = "5s"
  timeout = "4s"
  rise = 1
  fall = 10
  on_down = "reset"

[[service]]
vip = "192.168.31.88"
port = 53
proto = "udp"
  [[service.backend]]
  address = "192.168.31.71:53"
"#;

#[test]
fn full_file() {
    let c = Config::from_toml_str(FULL, FILE).unwrap();
    assert_eq!(
        c,
        Config {
            vrrp: Vec::new(),
            services: vec![
                ServiceConfig {
                    name: "k8s-apiserver".into(),
                    vip: Ipv4Addr::new(192, 168, 31, 88),
                    port: 6443,
                    proto: Proto::Tcp,
                    backends: vec![
                        BackendConfig {
                            name: "master1".into(),
                            addr: addr("192.168.31.71:6443"),
                            weight: 1
                        },
                        BackendConfig {
                            name: "192.168.31.74:6443".into(),
                            addr: addr("192.168.31.74:6443"),
                            weight: 3
                        },
                    ],
                    check: CheckConfig {
                        kind: CheckKind::Http {
                            path: "/healthz?verbose".into(),
                            expect: 204
                        },
                        interval: Duration::from_secs(5),
                        timeout: Duration::from_secs(4),
                        rise: 1,
                        fall: 10,
                        on_down: OnDown::Reset,
                    },
                },
                ServiceConfig {
                    name: "192.168.31.88:53/udp".into(),
                    vip: Ipv4Addr::new(192, 168, 31, 88),
                    port: 53,
                    proto: Proto::Udp,
                    backends: vec![BackendConfig {
                        name: "192.168.31.71:53".into(),
                        addr: addr("192.168.31.71:53"),
                        weight: 1
                    }],
                    // UDP: no check unless asked for.
                    check: CheckConfig {
                        kind: CheckKind::None,
                        ..apiserver_check()
                    },
                },
            ],
            snat_ips: vec![Ipv4Addr::new(192, 168, 31, 71)],
            nat_ports: NatPorts::Range(30000, 30999),
            max_flows: 65536,
            max_embryos: 262_144,
            keep_dataplane: true,
            assign_vip: false,
            maglev_table_size: 65521,
            timeouts: Timeouts {
                tcp_established: Duration::from_secs(7200),
                tcp_syn: Duration::from_secs(5),
                tcp_closing: Duration::from_millis(500),
                udp: Duration::from_secs(60),
            },
        }
    );
}

#[test]
fn example_file_parses() {
    let c = Config::from_toml_str(
        include_str!("../../../../xdplb.example.toml"),
        "xdplb.example.toml",
    )
    .unwrap_or_else(|e| panic!("the example config must parse: {e:#}"));
    let api = &c.services[0];
    assert_eq!(api.vip, Ipv4Addr::new(192, 168, 31, 88));
    assert_eq!(api.port, 6443);
    let addrs: Vec<_> = api.backends.iter().map(|b| b.addr).collect();
    assert_eq!(
        addrs,
        [addr("192.168.31.71:6443"), addr("192.168.31.74:6443")]
    );
    assert_eq!(
        api.check,
        apiserver_check(),
        "the example's [service.check] spells out the defaults"
    );
}

#[test]
fn file_errors_name_file_line_and_value() {
    let dup_backend = service(
        "10.0.0.100",
        &["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.1:6443"],
    )
    .replace("vip =", "name = \"k8s\"\nvip =");
    for (text, want) in [
        (
            dup_backend,
            format!(
                "config error: {FILE}:9: backend \"10.0.0.1:6443\" appears twice in service \"k8s\""
            ),
        ),
        (
            format!(
                "max_flows = 4096\nmaxflows = 4096\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("config error: {FILE}:2: unknown field `maxflows`"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("address", "adress"),
            format!("config error: {FILE}:4: unknown field `adress`"),
        ),
        (
            format!(
                "[timeouts]\ntcp_fin = \"1s\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:2: unknown field `tcp_fin`"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("vip =", "vips = \"x\"\nvip ="),
            format!("{FILE}:2: unknown field `vips`"),
        ),
        (
            service("::1", &["10.0.0.1:6443"]),
            format!("{FILE}:2: VIP '::1' is not an IPv4 address"),
        ),
        (
            service("224.0.0.18", &["10.0.0.1:6443"]),
            format!("{FILE}:2: VIP '224.0.0.18' is a multicast address"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443", "10.0.0.300:6443"]),
            format!("{FILE}:6: backend '10.0.0.300:6443': invalid IPv4 address"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1"]),
            format!("{FILE}:4: backend '10.0.0.1': no port"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:0"]),
            format!("{FILE}:4: backend '10.0.0.1:0': port 0"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443@2"]),
            format!("{FILE}:4: backend '10.0.0.1:6443@2': give the weight as `weight = N`"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("vip =", "port = 0\nvip ="),
            format!("{FILE}:2: port 0 is not a port"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("vip =", "port = 70000\nvip ="),
            format!("{FILE}:2: port 70000 is not a port (1-65535)"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]) + "  weight = -1\n",
            format!("{FILE}:5: backend '10.0.0.1:6443': weight -1 is negative"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("vip =", "proto = \"sctp\"\nvip ="),
            format!("{FILE}:2: unknown variant `sctp`"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]) + "  weight = 70000\n",
            format!("{FILE}:5: backend '10.0.0.1:6443': weight 70000 is above the maximum 65535"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443", "10.0.0.2:6443"])
                .replace("6443\"\n", "6443\"\n  weight = 0\n"),
            format!("{FILE}:2: every backend of service \"10.0.0.100:6443/tcp\" has weight 0"),
        ),
        (
            service("10.0.0.100", &[]),
            format!("{FILE}:2: service \"10.0.0.100:6443/tcp\" has no backends"),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]) + &service("10.0.0.100", &["10.0.0.2:6443"]),
            format!(
                "{FILE}:6: service 10.0.0.100:6443/tcp is defined twice (\"10.0.0.100:6443/tcp\" and \"10.0.0.100:6443/tcp\")"
            ),
        ),
        (
            service("10.0.0.100", &["10.0.0.1:6443"]).replace("vip =", "name = \"a\"\nvip =")
                + &service("10.0.0.101", &["10.0.0.2:6443"])
                    .replace("vip =", "name = \"a\"\nvip ="),
            format!("{FILE}:7: service name \"a\" is used twice"),
        ),
        (
            format!(
                "nat_ports = \"100-200\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: nat_ports '100-200': 100 is below 1024"),
        ),
        (
            format!(
                "nat_ports = \"20000-20010\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: nat_ports '20000-20010': only 11 ports"),
        ),
        (
            format!(
                "\nsnat_ip = \"10.0.0.100\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:2: snat_ip 10.0.0.100 is the VIP of service \"10.0.0.100:6443/tcp\""),
        ),
        (
            format!(
                "snat_ip = \"10.0.0.1/24\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: snat_ip '10.0.0.1/24': write the address without a prefix length"),
        ),
        (
            format!(
                "snat_ip = \"10.0.0.5\"\nsnat_ips = [\"10.0.0.6\"]\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:2: snat_ip and snat_ips are both given"),
        ),
        (
            format!(
                "snat_ips = []\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: snat_ips is empty"),
        ),
        (
            format!(
                "snat_ips = [\n  \"10.0.0.5\",\n  \"224.0.0.1\",\n]\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:3: snat_ips '224.0.0.1' is a multicast address"),
        ),
        (
            format!(
                "snat_ips = [\n  \"10.0.0.5\",\n  \"10.0.0.6\",\n  \"10.0.0.5\",\n]\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:4: snat_ips 10.0.0.5 is given twice"),
        ),
        (
            format!(
                "snat_ips = [\n  \"10.0.0.5\",\n  \"10.0.0.100\",\n]\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:3: snat_ips 10.0.0.100 is the VIP of service \"10.0.0.100:6443/tcp\""),
        ),
        (
            format!(
                "snat_ips = [\n{}]\n{}",
                (1..=17)
                    .map(|i| format!("  \"10.0.1.{i}\",\n"))
                    .collect::<String>(),
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:18: snat_ips: 17 addresses; at most 16 are supported"),
        ),
        (
            format!(
                "max_flows = 1000\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: max_flows 1000 is below the minimum of 1024"),
        ),
        (
            format!(
                "max_embryos = 1000\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: max_embryos 1000 is below the minimum of 1024"),
        ),
        (
            format!(
                "max_flows = -1\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: max_flows -1 is below the minimum of 1024"),
        ),
        (
            format!(
                "max_flows = 5000000000\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: max_flows 5000000000 is above the maximum of 4294967295"),
        ),
        (
            format!(
                "max_flows = \"lots\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: invalid type: string \"lots\", expected i64"),
        ),
        (
            format!(
                "maglev_table_size = 1000\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:1: maglev_table_size 1000 is not one of [251, 509,"),
        ),
        (
            format!(
                "[timeouts]\nudp = \"soon\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:2: timeouts.udp: 'soon' is not a duration"),
        ),
        (
            format!(
                "[timeouts]\n\ntcp_syn = \"0s\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:3: timeouts.tcp_syn '0s' must be longer than 0"),
        ),
        (
            format!(
                "[timeouts]\ntcp_syn = 30\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            format!("{FILE}:2: invalid type: integer `30`, expected a string"),
        ),
        (
            "keep_dataplane = false\n".into(),
            format!("config error: {FILE}: no services"),
        ),
        ("[[service]\n".into(), format!("config error: {FILE}:1: ")),
    ] {
        assert_has(&toml_err(&text), &want);
    }
}

/// The packaged /etc/xdplb/xdplb.toml (the seeds' lb1): three apiservers
/// behind the VIP, keepalived's VI_1 as a [[vrrp]] instance tracking them.
#[test]
fn packaged_config_is_the_seeds_lb1() {
    let c = Config::from_toml_str(
        include_str!("../../../../packaging/xdplb.toml"),
        "packaging/xdplb.toml",
    )
    .unwrap_or_else(|e| panic!("the packaged config must parse: {e:#}"));
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].backends.len(), 3);
    let v = &c.vrrp[0];
    assert_eq!((v.vrid, v.priority, v.initial_master), (51, 100, true));
    assert_eq!(v.vips, [Ipv4Addr::new(192, 168, 31, 88)]);
    assert_eq!(v.track.services[0].service, "k8s-apiserver");
}
