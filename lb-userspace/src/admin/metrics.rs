//! `/metrics`: the status snapshot as Prometheus metrics, named as the
//! exporters operators already read: haproxy's (`*_backend_up`,
//! `*_backend_check_duration_seconds`, `*_backend_check_failures_total`)
//! and keepalived's (`*_vrrp_state`, `*_vrrp_advert_rcvd_total`,
//! `*_vrrp_rejects_total{reason}`), prefixed `xdplb_`.
//!
//! The values are the loop's (the data plane's counters as read from its
//! per-CPU maps, the health checks' and the VRRP engines' counters), so
//! they are encoded at scrape time from the snapshot by a collector, with
//! constant metrics, rather than kept in metric objects of their own.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::status::{Backend, Health, NatPorts, ReasonCount, Service, Status, Vrrp};

/// Labels of one series, in order.
type Labels = Vec<(&'static str, String)>;

/// OpenMetrics, for a scraper that asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus' classic text format, for everyone else (curl, older
/// scrapers).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text of `/metrics` for `status`, OpenMetrics or Prometheus text;
/// returns it with its content type.
pub fn render(status: Arc<Status>, openmetrics: bool) -> (String, &'static str) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusMetrics(status)));
    let mut out = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    // Writing into a String cannot fail; a label that cannot be encoded
    // would be a bug, and a partial page says more than none.
    if let Err(e) = encoded {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    (
        out,
        if openmetrics {
            OPENMETRICS
        } else {
            PROMETHEUS_TEXT
        },
    )
}

#[derive(Debug)]
struct StatusMetrics(Arc<Status>);

/// keepalived-exporter's numbering of VRRP states.
fn vrrp_state(s: &str) -> u64 {
    match s {
        "backup" => 1,
        "master" => 2,
        _ => 0,
    }
}

impl Collector for StatusMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.0;
        let e = &mut e;
        gauges(
            e,
            "xdplb_info",
            "The agent's version and interface (always 1)",
            None,
            vec![(
                vec![("version", s.version.clone()), ("iface", s.iface.clone())],
                1u64,
            )],
        )?;
        gauges(
            e,
            "xdplb_active",
            "1 when this node's data plane serves its VIPs (VRRP master, or no VRRP), 0 while it is fenced",
            None,
            vec![(vec![], u64::from(s.role == "master"))],
        )?;
        gauges(
            e,
            "xdplb_uptime",
            "Time since the agent started",
            Some(&Unit::Seconds),
            vec![(vec![], s.uptime_s)],
        )?;
        counters(
            e,
            "xdplb_config_reloads",
            "Configuration reloads (SIGHUP or xdplb reload), by result",
            vec![
                (vec![("result", "ok".into())], s.reloads.ok),
                (vec![("result", "failed".into())], s.reloads.failed),
            ],
        )?;
        gauges(
            e,
            "xdplb_config_last_reload_successful",
            "0 when the last reload was rejected (the previous configuration runs), else 1",
            None,
            vec![(vec![], u64::from(s.reloads.last_ok))],
        )?;

        // Services.
        let svc = |f: &dyn Fn(&Service) -> u64| -> Vec<(Labels, u64)> {
            s.services
                .iter()
                .map(|v| {
                    (
                        vec![
                            ("service", v.name.clone()),
                            ("vip", format!("{}:{}", v.vip, v.port)),
                            ("proto", v.proto.clone()),
                        ],
                        f(v),
                    )
                })
                .collect()
        };
        counters(
            e,
            "xdplb_service_packets",
            "Packets the data plane balanced for the service (client to backend)",
            svc(&|v| v.traffic.packets),
        )?;
        counters(
            e,
            "xdplb_service_bytes",
            "Bytes the data plane balanced for the service (client to backend)",
            svc(&|v| v.traffic.bytes),
        )?;
        counters(
            e,
            "xdplb_service_connections",
            "New connections the data plane balanced for the service",
            svc(&|v| v.traffic.connections),
        )?;
        gauges(
            e,
            "xdplb_service_backends_up",
            "Backends that take new connections (up, weight > 0, not drained)",
            None,
            svc(&|v| v.backends_up as u64),
        )?;
        gauges(
            e,
            "xdplb_service_failing_open",
            "1 when every backend is down and the service balances over all of them anyway",
            None,
            svc(&|v| u64::from(v.failing_open)),
        )?;

        // Backends.
        let backends = || {
            s.services.iter().flat_map(|v| {
                v.backends.iter().map(move |b| {
                    let labels: Labels = vec![
                        ("service", v.name.clone()),
                        ("backend", b.name.clone()),
                        ("address", b.address.clone()),
                    ];
                    (labels, b)
                })
            })
        };
        let each = |f: &dyn Fn(&Backend) -> u64| -> Vec<(Labels, u64)> {
            backends().map(|(l, b)| (l, f(b))).collect()
        };
        let checked = |f: &dyn Fn(&Health) -> Option<f64>| -> Vec<(Labels, f64)> {
            backends()
                .filter_map(|(l, b)| Some((l, f(b.health.as_ref()?)?)))
                .collect()
        };
        let checked_count = |f: &dyn Fn(&Health) -> u64| -> Vec<(Labels, u64)> {
            backends()
                .filter_map(|(l, b)| Some((l, f(b.health.as_ref()?))))
                .collect()
        };
        gauges(
            e,
            "xdplb_backend_up",
            "1 when the backend's health checks say up (unchecked backends are up), 0 when down",
            None,
            each(&|b| u64::from(b.up)),
        )?;
        gauges(
            e,
            "xdplb_backend_drained",
            "1 when the backend is drained by command (no new connections)",
            None,
            each(&|b| u64::from(b.drained)),
        )?;
        gauges(
            e,
            "xdplb_backend_weight",
            "The backend's configured weight (0 drains it)",
            None,
            each(&|b| u64::from(b.weight)),
        )?;
        counters(
            e,
            "xdplb_backend_packets",
            "Packets of the backend's connections the data plane forwarded, both directions",
            each(&|b| b.traffic.packets),
        )?;
        counters(
            e,
            "xdplb_backend_bytes",
            "Bytes of the backend's connections the data plane forwarded, both directions",
            each(&|b| b.traffic.bytes),
        )?;
        counters(
            e,
            "xdplb_backend_connections",
            "New connections the data plane sent to the backend",
            each(&|b| b.traffic.connections),
        )?;
        gauges(
            e,
            "xdplb_backend_check_duration",
            "How long the backend's last health check took, passed or failed",
            Some(&Unit::Seconds),
            checked(&|h| h.check_duration_ms.map(|ms| ms / 1000.0)),
        )?;
        counters(
            e,
            "xdplb_backend_checks",
            "Health checks run against the backend",
            checked_count(&|h| h.checks),
        )?;
        counters(
            e,
            "xdplb_backend_check_failures",
            "Health checks of the backend that failed",
            checked_count(&|h| h.failures),
        )?;
        counters(
            e,
            "xdplb_backend_check_up_down",
            "Times the backend went from UP to DOWN",
            checked_count(&|h| h.transitions.div_ceil(2)),
        )?;
        counters(
            e,
            "xdplb_backend_transitions",
            "Changes of the backend's state between UP and DOWN, either way",
            checked_count(&|h| h.transitions),
        )?;
        let nat = |f: &dyn Fn(&NatPorts) -> u64| -> Vec<(Labels, u64)> {
            backends()
                .filter_map(|(l, b)| Some((l, f(b.nat_ports.as_ref()?))))
                .collect()
        };
        gauges(
            e,
            "xdplb_backend_nat_ports_in_use",
            "NAT ports held towards the backend by established connections, as of the last \
             ageing pass; at xdplb_nat_ports_per_backend its new connections fail",
            None,
            nat(&|n| n.established),
        )?;
        gauges(
            e,
            "xdplb_backend_nat_ports_half_open",
            "NAT ports held towards the backend by half-open connections (reclaimed when needed), \
             as of the last ageing pass",
            None,
            nat(&|n| n.half_open),
        )?;
        gauges(
            e,
            "xdplb_backend_state_since",
            "Time the backend has been in its current state (UP or DOWN)",
            Some(&Unit::Seconds),
            checked(&|h| Some(h.since_s as f64)),
        )?;

        // The data plane.
        let reasons = |f: &dyn Fn(&ReasonCount) -> u64| -> Vec<(Labels, u64)> {
            s.dataplane
                .iter()
                .map(|r| {
                    (
                        vec![
                            ("verdict", r.verdict().to_owned()),
                            ("reason", r.reason.clone()),
                        ],
                        f(r),
                    )
                })
                .collect()
        };
        counters(
            e,
            "xdplb_dataplane_packets",
            "Packets the XDP program saw, by verdict (pass, tx, redirect, drop, aborted) and reason",
            reasons(&|r| r.packets),
        )?;
        counters(
            e,
            "xdplb_dataplane_bytes",
            "Bytes the XDP program saw, by verdict and reason",
            reasons(&|r| r.bytes),
        )?;
        if let Some(n) = s.flows.entries {
            gauges(
                e,
                "xdplb_flow_table_entries",
                "Entries in the flow table (two per NATed connection), as of the last ageing pass",
                None,
                vec![(vec![], n)],
            )?;
        }
        if let Some(n) = s.flows.connections {
            gauges(
                e,
                "xdplb_flow_table_connections",
                "Connections in the flow table, as of the last ageing pass",
                None,
                vec![(vec![], n)],
            )?;
        }
        gauges(
            e,
            "xdplb_flow_table_max_entries",
            "Size of the flow table (max_flows); a full table refuses new connections",
            None,
            vec![(vec![], s.flows.max)],
        )?;
        gauges(
            e,
            "xdplb_nat_ports_per_backend",
            "Connections one backend can hold at once: NAT ports times SNAT addresses",
            None,
            vec![(vec![], s.nat.capacity)],
        )?;
        gauges(
            e,
            "xdplb_snat_addresses",
            "Addresses in the SNAT pool",
            None,
            vec![(vec![], s.nat.snat_ips.len() as u64)],
        )?;
        if let Some(n) = s.half_open.entries {
            gauges(
                e,
                "xdplb_half_open_entries",
                "Entries in the table of half-open TCP connections (two per connection), as of \
                 the last ageing pass",
                None,
                vec![(vec![], n)],
            )?;
        }
        gauges(
            e,
            "xdplb_half_open_max_entries",
            "Size of the table of half-open TCP connections (max_embryos); when full the oldest \
             are evicted",
            None,
            vec![(vec![], s.half_open.max)],
        )?;
        let h = &s.half_open;
        counters(
            e,
            "xdplb_half_open_events",
            "Half-open TCP connections: opened, promoted (handshake completed), reclaimed (NAT \
             port taken by a newer one: a SYN flood's mark), reset (an RST before completion)",
            [
                ("opened", h.opened),
                ("promoted", h.promoted),
                ("reclaimed", h.reclaimed),
                ("reset", h.reset),
            ]
            .into_iter()
            .map(|(event, n)| (vec![("event", event.to_owned())], n))
            .collect(),
        )?;

        // VRRP.
        let vrrp = |f: &dyn Fn(&Vrrp) -> u64| -> Vec<(Labels, u64)> {
            s.vrrp
                .iter()
                .map(|v| {
                    (
                        vec![
                            ("instance", v.instance.clone()),
                            ("vrid", v.vrid.to_string()),
                        ],
                        f(v),
                    )
                })
                .collect()
        };
        gauges(
            e,
            "xdplb_vrrp_state",
            "VRRP state of the instance: 0 INIT, 1 BACKUP, 2 MASTER (keepalived-exporter's numbering)",
            None,
            vrrp(&|v| vrrp_state(&v.state)),
        )?;
        gauges(
            e,
            "xdplb_vrrp_priority",
            "Configured VRRP priority of the instance",
            None,
            vrrp(&|v| u64::from(v.priority)),
        )?;
        gauges(
            e,
            "xdplb_vrrp_effective_priority",
            "VRRP priority the instance advertises, after its tracking weights",
            None,
            vrrp(&|v| u64::from(v.effective_priority)),
        )?;
        counters(
            e,
            "xdplb_vrrp_transitions",
            "Changes of VRRP state of the instance",
            vrrp(&|v| v.transitions),
        )?;
        counters(
            e,
            "xdplb_vrrp_become_master",
            "Times the instance became master",
            vrrp(&|v| v.became_master),
        )?;
        counters(
            e,
            "xdplb_vrrp_release_master",
            "Times the instance stopped being master",
            vrrp(&|v| v.released_master),
        )?;
        counters(
            e,
            "xdplb_vrrp_advert_sent",
            "VRRP adverts the instance sent",
            vrrp(&|v| v.adverts_sent),
        )?;
        counters(
            e,
            "xdplb_vrrp_advert_rcvd",
            "Valid VRRP adverts the instance received",
            vrrp(&|v| v.adverts_received),
        )?;
        counters(
            e,
            "xdplb_vrrp_priority_zero_sent",
            "Priority-0 adverts (resignations) the instance sent",
            vrrp(&|v| v.priority_zero_sent),
        )?;
        counters(
            e,
            "xdplb_vrrp_priority_zero_rcvd",
            "Priority-0 adverts (resignations) the instance received",
            vrrp(&|v| v.priority_zero_received),
        )?;
        let rejects: Vec<(Labels, u64)> = s
            .vrrp
            .iter()
            .flat_map(|v| {
                v.rejects.iter().map(|(reason, n)| {
                    (
                        vec![
                            ("instance", v.instance.clone()),
                            ("vrid", v.vrid.to_string()),
                            ("reason", reason.clone()),
                        ],
                        *n,
                    )
                })
            })
            .collect();
        counters(
            e,
            "xdplb_vrrp_rejects",
            "VRRP packets the instance rejected, by reason (as keepalived checks them)",
            rejects,
        )?;
        Ok(())
    }
}

/// One counter family (`name` gets `_total`); nothing when it has no series.
fn counters(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    series: Vec<(Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in &series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One gauge family (`name` gets the unit's suffix); nothing when it has no
/// series.
fn gauges<N: EncodeGaugeValue + Copy + std::fmt::Debug>(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    unit: Option<&'static Unit>,
    series: Vec<(Labels, N)>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in &series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::admin::status::{HalfOpen, Nat, Traffic};

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            iface: "eth0".into(),
            role: "master".into(),
            services: vec![Service {
                name: "k8s".into(),
                vip: "10.0.0.100".into(),
                port: 6443,
                proto: "tcp".into(),
                check: "https:/readyz".into(),
                traffic: Traffic {
                    packets: 10,
                    bytes: 1000,
                    connections: 2,
                },
                backends_up: 1,
                failing_open: false,
                backends: vec![Backend {
                    name: "api1".into(),
                    address: "10.0.0.21:6443".into(),
                    weight: 1,
                    state: "down".into(),
                    up: false,
                    drained: false,
                    health: Some(Health {
                        last_check: "/readyz returned 500".into(),
                        latency_ms: None,
                        check_duration_ms: Some(2.5),
                        since_s: 3,
                        checks: 7,
                        failures: 3,
                        transitions: 1,
                    }),
                    traffic: Traffic {
                        packets: 4,
                        bytes: 400,
                        connections: 1,
                    },
                    nat_ports: Some(NatPorts {
                        established: 25_000,
                        half_open: 7,
                    }),
                }],
            }],
            dataplane: vec![ReasonCount {
                reason: "drop_tcp_no_flags".into(),
                packets: 5,
                bytes: 300,
            }],
            nat: Nat {
                snat_ips: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                ports: "1024-32767".into(),
                capacity: 63_488,
            },
            half_open: HalfOpen {
                entries: None,
                max: 131_072,
                opened: 100,
                promoted: 90,
                reclaimed: 3,
                reset: 2,
            },
            vrrp: vec![Vrrp {
                instance: "VI_1".into(),
                vrid: 51,
                state: "master".into(),
                priority: 100,
                effective_priority: 50,
                adverts_sent: 12,
                adverts_received: 3,
                rejects: BTreeMap::from([("bad_ttl".to_owned(), 2)]),
                ..Vrrp::default()
            }],
            ..Status::default()
        }
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "expected the line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn prometheus_text_names_and_values() {
        let (text, ctype) = render(Arc::new(status()), false);
        assert_eq!(ctype, PROMETHEUS_TEXT);
        let b = r#"service="k8s",backend="api1",address="10.0.0.21:6443""#;
        has(&text, &format!("xdplb_backend_up{{{b}}} 0"));
        has(
            &text,
            &format!("xdplb_backend_check_failures_total{{{b}}} 3"),
        );
        has(
            &text,
            &format!("xdplb_backend_check_up_down_total{{{b}}} 1"),
        );
        has(
            &text,
            &format!("xdplb_backend_check_duration_seconds{{{b}}} 0.0025"),
        );
        has(&text, &format!("xdplb_backend_packets_total{{{b}}} 4"));
        has(
            &text,
            r#"xdplb_service_connections_total{service="k8s",vip="10.0.0.100:6443",proto="tcp"} 2"#,
        );
        has(
            &text,
            r#"xdplb_dataplane_packets_total{verdict="drop",reason="drop_tcp_no_flags"} 5"#,
        );
        has(&text, r#"xdplb_vrrp_state{instance="VI_1",vrid="51"} 2"#);
        has(
            &text,
            r#"xdplb_vrrp_advert_rcvd_total{instance="VI_1",vrid="51"} 3"#,
        );
        has(
            &text,
            r#"xdplb_vrrp_advert_sent_total{instance="VI_1",vrid="51"} 12"#,
        );
        has(
            &text,
            r#"xdplb_vrrp_rejects_total{instance="VI_1",vrid="51",reason="bad_ttl"} 2"#,
        );
        has(
            &text,
            r#"xdplb_vrrp_effective_priority{instance="VI_1",vrid="51"} 50"#,
        );
        assert!(
            text.contains("# HELP xdplb_backend_up 1 when the backend's health checks say up"),
            "{text}"
        );
        has(
            &text,
            &format!("xdplb_backend_nat_ports_in_use{{{b}}} 25000"),
        );
        has(
            &text,
            &format!("xdplb_backend_nat_ports_half_open{{{b}}} 7"),
        );
        has(&text, "xdplb_nat_ports_per_backend 63488");
        has(&text, "xdplb_snat_addresses 2");
        has(
            &text,
            r#"xdplb_half_open_events_total{event="reclaimed"} 3"#,
        );
        has(&text, "xdplb_half_open_max_entries 131072");
        // Before the first ageing pass there is no flow count to report.
        assert!(!text.contains("xdplb_flow_table_entries"), "{text}");
        assert!(!text.contains("xdplb_half_open_entries"), "{text}");
    }

    #[test]
    fn openmetrics_when_asked_and_no_vrrp_series_without_vrrp() {
        let mut s = status();
        s.vrrp.clear();
        let (text, ctype) = render(Arc::new(s), true);
        assert_eq!(ctype, OPENMETRICS);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("xdplb_vrrp"), "{text}");
        has(&text, "# TYPE xdplb_backend_check_failures counter");
    }
}
