//! The command line as a whole: the flags clap accepts and refuses, and the
//! configuration they make, alone or over a file.

use std::{fs, io::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use clap::Parser as _;
use lb_common::{
    maps::{DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_FLOWS},
    service::DEFAULT_TABLE_SIZE,
};

use super::Args;
use crate::config::{
    BackendConfig, CheckConfig, CheckKind, Config, MIN_CHECK_INTERVAL, NatPorts, OnDown, Proto,
    ServiceConfig, Timeouts, TlsCheck,
    test_support::{FILE, addr, apiserver_check, assert_has, service, tempfile},
};

fn args(flags: &[&str]) -> Args {
    let argv = ["xdplb", "--iface", "eth0"].iter().chain(flags);
    Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{flags:?} should parse: {e}"))
}

/// The clap error for flags that must be refused.
fn args_err(flags: &[&str]) -> String {
    let argv = ["xdplb", "--iface", "eth0"].iter().chain(flags);
    match Args::try_parse_from(argv) {
        Ok(a) => panic!("{flags:?} should be refused, parsed as {a:?}"),
        Err(e) => e.to_string(),
    }
}

/// The configuration the command line asks for.
fn from_flags(flags: &[&str]) -> Result<Config> {
    Config::load(&args(flags).overrides())
}

#[test]
fn exact_flags_contract() {
    let a = Args::try_parse_from([
        "xdplb",
        "--iface",
        "eth0",
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
    ])
    .expect("the documented single-service command line parses");
    assert_eq!(a.iface(), "eth0");
    assert_eq!(a.vip, Some(Ipv4Addr::new(10, 0, 0, 100)));
    assert_eq!(a.backend.len(), 1);

    let a = Args::try_parse_from([
        "xdplb",
        "--iface",
        "eth0",
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
        "--check",
        "https:/readyz",
        "--check-interval",
        "2s",
        "--check-timeout",
        "1s",
        "--rise",
        "2",
        "--fall",
        "3",
        "--on-down",
        "reset",
    ])
    .expect("the documented health check flags parse");
    assert_eq!(
        (
            a.check,
            a.check_interval,
            a.check_timeout,
            a.rise,
            a.fall,
            a.on_down
        ),
        (
            Some(apiserver_check().kind),
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(1)),
            Some(2),
            Some(3),
            Some(OnDown::Reset)
        )
    );
}

#[test]
fn single_service_with_defaults() {
    let c = from_flags(&["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"]).unwrap();
    assert_eq!(
        c,
        Config {
            vrrp: Vec::new(),
            services: vec![ServiceConfig {
                name: "10.0.0.100:6443/tcp".into(),
                vip: Ipv4Addr::new(10, 0, 0, 100),
                port: 6443,
                proto: Proto::Tcp,
                backends: vec![BackendConfig {
                    name: "10.0.0.1:6443".into(),
                    addr: addr("10.0.0.1:6443"),
                    weight: 1,
                }],
                check: CheckConfig {
                    kind: CheckKind::Https {
                        path: "/readyz".into(),
                        expect: 200,
                        tls: TlsCheck {
                            insecure_skip_verify: true,
                            ca_file: None,
                            cert_file: None,
                            key_file: None,
                            sni: None,
                        },
                    },
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                    on_down: OnDown::Keep,
                },
            }],
            snat_ips: vec![],
            nat_ports: NatPorts::Auto,
            max_flows: DEFAULT_MAX_FLOWS,
            max_embryos: DEFAULT_MAX_EMBRYOS,
            keep_dataplane: false,
            assign_vip: true,
            maglev_table_size: DEFAULT_TABLE_SIZE,
            timeouts: Timeouts {
                tcp_established: Duration::from_secs(3600),
                tcp_syn: Duration::from_secs(30),
                tcp_closing: Duration::from_secs(10),
                udp: Duration::from_secs(60),
            },
        }
    );
}

#[test]
fn single_service_every_flag() {
    let c = from_flags(&[
        "--vip",
        "10.0.0.100",
        "--port",
        "53",
        "--proto",
        "udp",
        "--backend",
        "10.0.0.1:5353",
        "--backend",
        "10.0.0.2:5353@2",
        "--backend",
        "10.0.0.3:5353@0",
        "--snat-ip",
        "10.0.0.10",
        "--nat-ports",
        "40000-40063",
        "--max-flows",
        "1024",
        "--max-embryos",
        "4096",
        "--keep-dataplane",
        "--no-assign-vip",
    ])
    .unwrap();
    let s = &c.services[0];
    assert_eq!(
        (s.port, s.proto, s.name.as_str()),
        (53, Proto::Udp, "10.0.0.100:53/udp")
    );
    let weights: Vec<_> = s.backends.iter().map(|b| (b.addr, b.weight)).collect();
    assert_eq!(
        weights,
        [
            (addr("10.0.0.1:5353"), 1),
            (addr("10.0.0.2:5353"), 2),
            (addr("10.0.0.3:5353"), 0)
        ]
    );
    assert_eq!(c.snat_ips, [Ipv4Addr::new(10, 0, 0, 10)]);
    assert_eq!(c.nat_ports, NatPorts::Range(40000, 40063));
    assert_eq!(c.max_flows, 1024);
    assert_eq!(c.max_embryos, 4096);
    assert!(c.keep_dataplane);
    assert!(!c.assign_vip);
}

#[test]
fn a_service_is_required_from_flags_or_file() {
    assert_has(&args_err(&[]), "--config");
    assert_has(&args_err(&["--vip", "10.0.0.100"]), "--backend");
    assert_has(&args_err(&["--backend", "10.0.0.1:6443"]), "--vip");
}

#[test]
fn config_conflicts_with_single_service_flags() {
    for flags in [
        &[
            "--config",
            "x.toml",
            "--vip",
            "10.0.0.100",
            "--backend",
            "10.0.0.1:6443",
        ][..],
        &["--config", "x.toml", "--backend", "10.0.0.1:6443"],
        &["--config", "x.toml", "--port", "443"],
        &["--config", "x.toml", "--proto", "udp"],
        &["--config", "x.toml", "--check", "tcp"],
        &["--config", "x.toml", "--check-interval", "5s"],
        &["--config", "x.toml", "--check-timeout", "1s"],
        &["--config", "x.toml", "--rise", "1"],
        &["--config", "x.toml", "--fall", "1"],
        &["--config", "x.toml", "--on-down", "reset"],
    ] {
        assert_has(&args_err(flags), "cannot be used with");
    }
    // The defaults of --port and --proto are not a conflict.
    args(&["--config", "x.toml"]);
}

#[test]
fn bad_flag_values_name_the_value() {
    for (flags, want) in [
        (&["--vip", "::1"][..], "VIP '::1' is not an IPv4 address"),
        (
            &["--vip", "0.0.0.0"],
            "VIP '0.0.0.0' is the unspecified address",
        ),
        (
            &["--vip", "255.255.255.255"],
            "VIP '255.255.255.255' is the broadcast address",
        ),
        (
            &["--vip", "239.1.1.1"],
            "VIP '239.1.1.1' is a multicast address",
        ),
        (
            &["--vip", "127.0.0.1"],
            "VIP '127.0.0.1' is a loopback address",
        ),
        (
            &["--vip", "192.168.31.88/24"],
            "without a prefix length ('192.168.31.88')",
        ),
        (
            &["--backend", "10.0.0.300:6443"],
            "backend '10.0.0.300:6443': invalid IPv4 address",
        ),
        (&["--backend", "10.0.0.1"], "backend '10.0.0.1': no port"),
        (&["--backend", "10.0.0.1:0"], "backend '10.0.0.1:0': port 0"),
        (
            &["--backend", "10.0.0.1:70000"],
            "backend '10.0.0.1:70000': invalid port '70000'",
        ),
        (
            &["--backend", "master1:6443"],
            "host names are not resolved",
        ),
        (
            &["--backend", "[::1]:6443"],
            "backend '[::1]:6443': not an IPv4 address",
        ),
        (
            &["--backend", "127.0.0.1:6443"],
            "127.0.0.1 is a loopback address",
        ),
        (
            &["--backend", "10.0.0.1:6443@70000"],
            "weight 70000 is above the maximum 65535",
        ),
        (
            &["--backend", "10.0.0.1:6443@x"],
            "weight 'x' is not a whole number",
        ),
        (&["--port", "0"], "'0'"),
        (&["--proto", "sctp"], "'sctp'"),
        (
            &["--snat-ip", "224.0.0.1"],
            "snat_ip '224.0.0.1' is a multicast address",
        ),
        (&["--nat-ports", "20000"], "nat_ports '20000': write LO-HI"),
        (
            &["--nat-ports", "80-1000"],
            "nat_ports '80-1000': 80 is below 1024",
        ),
        (
            &["--nat-ports", "30000-20000"],
            "nat_ports '30000-20000': 30000 is above 20000",
        ),
        (
            &["--nat-ports", "20000-20062"],
            "nat_ports '20000-20062': only 63 ports",
        ),
        (
            &["--nat-ports", "20000-7OOOO"],
            "'7OOOO' is not a port number",
        ),
        (
            &["--max-flows", "1023"],
            "max_flows 1023 is below the minimum of 1024",
        ),
        (&["--max-flows", "many"], "max_flows 'many'"),
        (
            &["--max-embryos", "1023"],
            "max_embryos 1023 is below the minimum of 1024",
        ),
        (
            &["--max-flows", "5000000000"],
            "max_flows 5000000000 is above the maximum of 4294967295",
        ),
        (&["--backend", "10.0.0.1:6443@-1"], "weight -1 is negative"),
        (
            &["--check", "ftp"],
            "check 'ftp': unknown kind; use tcp, http:PATH",
        ),
        (&["--check", "ftp:/x"], "check 'ftp:/x': unknown kind 'ftp'"),
        (&["--check", "HTTP:/readyz"], "unknown kind 'HTTP'"),
        (
            &["--check", "http"],
            "check 'http': give the path to GET, e.g. http:/readyz",
        ),
        (
            &["--check", "https:readyz"],
            "check path 'readyz' must start with '/'",
        ),
        (&["--check", "http:"], "check path '' must start with '/'"),
        (
            &["--check", "http:/a b"],
            "check path \"/a b\" contains ' '",
        ),
        (&["--check", "tcp:/readyz"], "tcp takes no path"),
        (
            &["--check-interval", "50ms"],
            "check interval '50ms' is below the minimum of 100ms",
        ),
        (
            &["--check-interval", "soon"],
            "check interval: 'soon' is not a duration",
        ),
        (
            &["--check-timeout", "0"],
            "check timeout '0' must be longer than 0",
        ),
        (&["--rise", "0"], "check rise 0 must be between 1 and 100"),
        (&["--rise", "x"], "check rise 'x' is not a whole number"),
        (
            &["--fall", "101"],
            "check fall 101 must be between 1 and 100",
        ),
        (&["--on-down", "drop"], "'drop'"),
    ] {
        let mut all = vec!["--vip", "10.0.0.100", "--backend", "10.0.0.2:6443"];
        if flags[0] == "--vip" || flags[0] == "--backend" {
            all = if flags[0] == "--vip" {
                vec!["--backend", "10.0.0.2:6443"]
            } else {
                vec!["--vip", "10.0.0.100"]
            };
        }
        all.extend_from_slice(flags);
        assert_has(&args_err(&all), want);
    }
}

#[test]
fn whole_command_line_checks() {
    for (flags, want) in [
        (
            &["--backend", "10.0.0.1:6443", "--backend", "10.0.0.1:6443@3"][..],
            "config error: command line: backend \"10.0.0.1:6443\" appears twice in service \"10.0.0.100:6443/tcp\"",
        ),
        (
            &[
                "--backend",
                "10.0.0.1:6443@0",
                "--backend",
                "10.0.0.2:6443@0",
            ],
            "every backend of service \"10.0.0.100:6443/tcp\" has weight 0",
        ),
        (
            &["--backend", "10.0.0.1:6443", "--snat-ip", "10.0.0.100"],
            "snat_ip 10.0.0.100 is the VIP of service \"10.0.0.100:6443/tcp\"",
        ),
        (
            &[
                "--backend",
                "10.0.0.1:6443",
                "--snat-ip",
                "10.0.0.5",
                "--snat-ip",
                "10.0.0.5",
            ],
            "config error: command line: snat_ip 10.0.0.5 is given twice",
        ),
        (
            &["--backend", "10.0.0.100:6443"],
            "backend \"10.0.0.100:6443\" of service \"10.0.0.100:6443/tcp\" is on a VIP",
        ),
        (
            &["--backend", "10.0.0.1:6443", "--check-timeout", "3s"],
            "config error: command line: check timeout 3s is longer than the interval 2s; a check must finish before the next one starts",
        ),
        (
            &[
                "--backend",
                "10.0.0.1:6443",
                "--check-interval",
                "1s",
                "--check-timeout",
                "1500ms",
            ],
            "check timeout 1.5s is longer than the interval 1s",
        ),
    ] {
        let mut all = vec!["--vip", "10.0.0.100"];
        all.extend_from_slice(flags);
        match from_flags(&all) {
            Ok(c) => panic!("{all:?} should be refused, got {c:?}"),
            Err(e) => assert_has(&format!("{e:#}"), want),
        }
    }
    // One drained backend among live ones is fine.
    from_flags(&[
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443@0",
        "--backend",
        "10.0.0.2:6443",
    ])
    .unwrap();
}

#[test]
fn minimal_file_gets_the_defaults() {
    let c = Config::from_toml_str(&service("10.0.0.100", &["10.0.0.1:6443"]), FILE).unwrap();
    let single = from_flags(&["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"]).unwrap();
    assert_eq!(c, single, "a minimal file means the same as the same flags");
}

#[test]
fn command_line_overrides_the_file() {
    let mut file = tempfile("toml");
    write!(
        file.1,
        "snat_ip = \"10.0.0.10\"\nnat_ports = \"30000-30999\"\nmax_flows = 4096\n{}",
        service("10.0.0.100", &["10.0.0.1:6443"])
    )
    .unwrap();
    let path = file.0.to_str().unwrap();

    let plain = from_flags(&["--config", path]).unwrap();
    assert_eq!(plain, Config::load_file(path).unwrap());
    assert_eq!(
        (
            plain.snat_ips.clone(),
            plain.nat_ports,
            plain.max_flows,
            plain.keep_dataplane,
            plain.assign_vip
        ),
        (
            vec![Ipv4Addr::new(10, 0, 0, 10)],
            NatPorts::Range(30000, 30999),
            4096,
            false,
            true
        )
    );

    let over = from_flags(&[
        "--config",
        path,
        "--snat-ip",
        "10.0.0.11",
        "--nat-ports",
        "40000-49999",
        "--max-flows",
        "8192",
        "--keep-dataplane",
        "--no-assign-vip",
    ])
    .unwrap();
    assert_eq!(
        (
            over.snat_ips.clone(),
            over.nat_ports,
            over.max_flows,
            over.keep_dataplane,
            over.assign_vip
        ),
        (
            vec![Ipv4Addr::new(10, 0, 0, 11)],
            NatPorts::Range(40000, 49999),
            8192,
            true,
            false
        )
    );
    assert_eq!(over.services, plain.services);

    // An override is checked against the file as a whole, and blamed on
    // the command line.
    let e = from_flags(&["--config", path, "--snat-ip", "10.0.0.100"]).unwrap_err();
    assert_has(
        &format!("{e:#}"),
        "config error: command line: snat_ip 10.0.0.100 is the VIP",
    );
    let _ = fs::remove_file(&file.0);
}

#[test]
fn default_checks_depend_on_port_and_proto() {
    let check = |flags: &[&str]| {
        let mut all = vec!["--vip", "10.0.0.100", "--backend", "10.0.0.1:8080"];
        all.extend_from_slice(flags);
        from_flags(&all).unwrap().services.remove(0).check
    };
    assert_eq!(check(&[]), apiserver_check());
    let tcp = CheckConfig {
        kind: CheckKind::Tcp,
        ..apiserver_check()
    };
    assert_eq!(check(&["--port", "8080"]), tcp);
    // A TCP connect says nothing about a UDP server.
    let none = CheckConfig {
        kind: CheckKind::None,
        ..apiserver_check()
    };
    assert_eq!(check(&["--proto", "udp", "--port", "6443"]), none);
    assert_eq!(check(&["--proto", "udp", "--port", "53"]), none);

    // The same from a file, with and without an empty [service.check].
    let file = |port: u16, proto: &str, table: &str| {
        let text = service("10.0.0.100", &["10.0.0.1:8080"]).replace(
            "vip =",
            &format!("port = {port}\nproto = \"{proto}\"\nvip ="),
        ) + table;
        Config::from_toml_str(&text, FILE)
            .unwrap_or_else(|e| panic!("{text}\nshould parse: {e:#}"))
            .services
            .remove(0)
            .check
    };
    for table in ["", "  [service.check]\n"] {
        assert_eq!(file(6443, "tcp", table), apiserver_check());
        assert_eq!(file(8080, "tcp", table), tcp);
        assert_eq!(file(53, "udp", table), none);
    }
}

#[test]
fn check_flags() {
    let check = |flags: &[&str]| {
        let mut all = vec!["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"];
        all.extend_from_slice(flags);
        from_flags(&all)
            .unwrap_or_else(|e| panic!("{all:?} should be accepted: {e:#}"))
            .services
            .remove(0)
            .check
    };
    for (flag, kind) in [
        ("tcp", CheckKind::Tcp),
        ("none", CheckKind::None),
        (
            "http:/healthz",
            CheckKind::Http {
                path: "/healthz".into(),
                expect: 200,
            },
        ),
        (
            "https:/livez?verbose",
            CheckKind::Https {
                path: "/livez?verbose".into(),
                expect: 200,
                tls: TlsCheck::default(),
            },
        ),
    ] {
        assert_eq!(check(&["--check", flag]).kind, kind, "--check {flag}");
        assert_eq!(kind.to_string(), flag, "kinds print as --check takes them");
    }
    // A kind on a UDP service is taken as given (DNS answers on TCP too).
    assert_eq!(
        check(&["--proto", "udp", "--check", "tcp"]).kind,
        CheckKind::Tcp
    );

    assert_eq!(
        check(&[
            "--check-interval",
            "5s",
            "--check-timeout",
            "5s",
            "--rise",
            "1",
            "--fall",
            "100",
            "--on-down",
            "reset",
        ]),
        CheckConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 100,
            on_down: OnDown::Reset,
            ..apiserver_check()
        }
    );
    assert_eq!(check(&["--on-down", "keep"]).on_down, OnDown::Keep);
    // A short interval alone shortens the default timeout with it.
    let fast = check(&["--check-interval", "300ms"]);
    assert_eq!(
        (fast.interval, fast.timeout),
        (Duration::from_millis(300), Duration::from_millis(300))
    );
    let slow = check(&["--check-interval", "1m"]);
    assert_eq!(
        (slow.interval, slow.timeout),
        (Duration::from_secs(60), Duration::from_secs(1))
    );
    assert_eq!(
        check(&["--check-interval", "100ms"]).interval,
        MIN_CHECK_INTERVAL
    );
}

#[test]
fn subcommands_need_neither_iface_nor_a_service() {
    use super::{Admin, BackendAction, Command};
    let parse = |argv: &[&str]| {
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?} should parse: {e}"))
    };
    let a = parse(&["xdplb", "status"]);
    assert_eq!(a.command, Some(Command::Status { json: false }));
    assert_eq!(a.admin, None, "not given");
    assert_eq!(a.admin(), Admin::At("127.0.0.1:9640".parse().unwrap()));
    // --admin and --admin-token go before or after the subcommand.
    let a = parse(&[
        "xdplb",
        "backend",
        "drain",
        "10.0.0.1:6443",
        "--admin",
        "10.0.0.2:9000",
        "--admin-token",
        "t",
    ]);
    assert_eq!(
        a.command,
        Some(Command::Backend {
            action: BackendAction::Drain {
                addr: "10.0.0.1:6443".parse().unwrap()
            }
        })
    );
    assert_eq!(a.admin(), Admin::At("10.0.0.2:9000".parse().unwrap()));
    assert_eq!(a.admin_token.as_deref(), Some("t"));
    let a = parse(&["xdplb", "--admin", "127.0.0.1:1", "reload"]);
    assert_eq!(
        (a.command, a.admin),
        (
            Some(Command::Reload),
            Some(Admin::At("127.0.0.1:1".parse().unwrap()))
        )
    );
}

#[test]
fn the_agent_still_needs_iface_and_a_service() {
    for argv in [
        &["xdplb", "--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"][..],
        &["xdplb", "--iface", "eth0"][..],
        &["xdplb"][..],
    ] {
        let e =
            Args::try_parse_from(argv).expect_err("the agent runs only with --iface and a service");
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{argv:?}: {e}"
        );
    }
}

#[test]
fn admin_flag() {
    use super::Admin;
    assert_eq!(
        args(&["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"]).admin_token,
        None
    );
    let a = args(&[
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
        "--admin",
        "off",
    ]);
    assert_eq!(a.admin, Some(Admin::Off));
    let a = args(&[
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
        "--admin",
        "[::1]:9640",
    ]);
    assert_eq!(a.admin, Some(Admin::At("[::1]:9640".parse().unwrap())));
    let e = args_err(&[
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
        "--admin",
        "9640",
    ]);
    assert_has(
        &e,
        "\"9640\" is not ADDR:PORT (e.g. 127.0.0.1:9640) nor `off`",
    );
}

/// A pool of SNAT addresses: `snat_ips` in the file, or `--snat-ip` given
/// more than once, which replaces the file's pool whole.
#[test]
fn snat_pool_from_the_file_or_repeated_flags() {
    let ip = |last| Ipv4Addr::new(10, 0, 0, last);
    let mut file = tempfile("toml");
    write!(
        file.1,
        "snat_ips = [\"10.0.0.10\", \"10.0.0.11\", \"10.0.0.12\"]\n{}",
        service("10.0.0.100", &["10.0.0.1:6443"])
    )
    .unwrap();
    let path = file.0.to_str().unwrap();
    let plain = from_flags(&["--config", path]).unwrap();
    assert_eq!(
        plain.snat_ips,
        [ip(10), ip(11), ip(12)],
        "in the file's order"
    );
    let over = from_flags(&[
        "--config",
        path,
        "--snat-ip",
        "10.0.0.21",
        "--snat-ip",
        "10.0.0.20",
    ])
    .unwrap();
    assert_eq!(over.snat_ips, [ip(21), ip(20)]);
    let _ = fs::remove_file(&file.0);

    let single = from_flags(&[
        "--vip",
        "10.0.0.100",
        "--backend",
        "10.0.0.1:6443",
        "--snat-ip",
        "10.0.0.10",
        "--snat-ip",
        "10.0.0.11",
    ])
    .unwrap();
    assert_eq!(single.snat_ips, [ip(10), ip(11)]);
    let seventeen: Vec<String> = (1..=17).map(|i| format!("--snat-ip=10.0.1.{i}")).collect();
    let mut argv = vec!["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"];
    argv.extend(seventeen.iter().map(String::as_str));
    assert_has(
        &format!("{:#}", from_flags(&argv).unwrap_err()),
        "config error: command line: snat_ip: 17 addresses; at most 16 are supported",
    );
}

/// `auto` (the default) or a range, from the flag or the file.
#[test]
fn nat_ports_auto_or_a_range() {
    let base = ["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"];
    let with = |extra: &[&str]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        from_flags(&all).unwrap().nat_ports
    };
    assert_eq!(with(&[]), NatPorts::Auto);
    assert_eq!(with(&["--nat-ports", "auto"]), NatPorts::Auto);
    assert_eq!(
        with(&["--nat-ports", "1024-32767"]),
        NatPorts::Range(1024, 32767)
    );
    let file = |v: &str| {
        Config::from_toml_str(
            &format!(
                "nat_ports = \"{v}\"\n{}",
                service("10.0.0.100", &["10.0.0.1:6443"])
            ),
            FILE,
        )
        .unwrap()
        .nat_ports
    };
    assert_eq!(file("auto"), NatPorts::Auto);
    assert_eq!(file("61000-65535"), NatPorts::Range(61000, 65535));
    assert_eq!(NatPorts::Range(61000, 65535).to_string(), "61000-65535");
}
