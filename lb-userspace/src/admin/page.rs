//! `/`: the status page, what haproxy's `stats uri` page was to operators:
//! one self-refreshing HTML page (a meta refresh, inline CSS, no script)
//! with the node's role, every service and backend with its state, checks
//! and traffic, the flow table, the data plane's counters and the recent
//! events.

use std::fmt::Write as _;

use super::status::{Backend, Status, ago, bytes, clock};

/// Seconds between two reloads of the page.
pub const REFRESH_S: u32 = 2;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.sub{color:#666}table{border-collapse:collapse;background:#fff;min-width:60%}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{background:#c8f0c8}.down{background:#f6b8b8}.drain{background:#f8e4a8}
.master{background:#c8f0c8}.backup{background:#dde4f0}.initialize{background:#ddd}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;font-weight:bold}
.warn{color:#8a5a00}.error{color:#b00}ul{padding-left:1.2em}code{font-size:.95em}
.bar{display:inline-block;width:12em;height:.8em;background:#e4e4e4;vertical-align:middle}
.bar span{display:block;height:100%;background:#6a9}
";

/// The page for `status`.
pub fn render(s: &Status) -> String {
    let mut h = String::with_capacity(8192);
    let role = s.role.to_ascii_uppercase();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>xdplb {} on {} — {role}</title><style>{STYLE}</style></head><body>\n",
        esc(&s.version),
        esc(&s.iface)
    );
    let _ = write!(
        h,
        "<h1>xdplb on {} <span id=\"role\" class=\"badge {}\">{role}</span></h1>\n\
         <div class=\"sub\">version {} · up {} · as of {} UTC · refreshes every {REFRESH_S} s · \
         <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></div>\n",
        esc(&s.iface),
        esc(&s.role),
        esc(&s.version),
        ago(s.uptime_s),
        clock(s.at),
    );
    if let Some(file) = &s.config_file {
        let _ = write!(
            h,
            "<div class=\"sub\">configuration <code>{}</code>",
            esc(file)
        );
        match (&s.reloads.last_error, s.reloads.last_at) {
            (Some(e), Some(at)) => {
                let _ = write!(
                    h,
                    " · <span class=\"error\">last reload at {} rejected: {}</span>",
                    clock(at),
                    esc(e)
                );
            }
            (None, Some(at)) => {
                let _ = write!(h, " · reloaded at {}", clock(at));
            }
            _ => {}
        }
        h.push_str("</div>\n");
    }

    if !s.vrrp.is_empty() {
        h.push_str(
            "<h2>VRRP</h2>\n<table id=\"vrrp\"><tr><th>instance</th><th>VRID</th><th>state</th>\
             <th>priority</th><th>effective</th><th>master</th><th>VIPs</th>\
             <th>adverts sent</th><th>received</th><th>rejected</th><th>transitions</th></tr>\n",
        );
        for v in &s.vrrp {
            let rejected: u64 = v.rejects.values().sum();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"{}\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                esc(&v.instance),
                v.vrid,
                esc(&v.state),
                esc(&v.state.to_ascii_uppercase()),
                v.priority,
                v.effective_priority,
                esc(v.master.as_deref().unwrap_or("—")),
                esc(&v.vips.join(", ")),
                v.adverts_sent,
                v.adverts_received,
                rejected,
                v.transitions
            );
        }
        h.push_str("</table>\n");
    }

    for svc in &s.services {
        let at = format!("{}:{}/{}", svc.vip, svc.port, svc.proto);
        // The default name is the address already.
        let at = if svc.name == at {
            String::new()
        } else {
            format!("{at} · ")
        };
        let _ = writeln!(
            h,
            "<h2>{} <span class=\"sub\">{}check {} · {} of {} backends take connections · \
             {} connections · {} packets · {}</span></h2>",
            esc(&svc.name),
            esc(&at),
            esc(&svc.check),
            svc.backends_up,
            svc.backends.len(),
            svc.traffic.connections,
            svc.traffic.packets,
            bytes(svc.traffic.bytes),
        );
        if svc.failing_open {
            h.push_str(
                "<p class=\"error\">ALL BACKENDS ARE DOWN: balancing over all of them rather than \
                 refusing connections</p>\n",
            );
        }
        h.push_str(
            "<table class=\"backends\"><tr><th>backend</th><th>address</th><th>state</th>\
             <th>weight</th><th>since</th><th>last check</th><th>latency</th><th>checks</th>\
             <th>failed</th><th>connections</th><th>packets</th><th>bytes</th>\
             <th>NAT ports</th></tr>\n",
        );
        for b in &svc.backends {
            backend_row(&mut h, b);
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Data plane</h2>\n");
    let max = s.flows.max.max(1);
    match (s.flows.entries, s.flows.connections) {
        (Some(entries), Some(conns)) => {
            let pct = entries as f64 * 100.0 / max as f64;
            let _ = writeln!(
                h,
                "<p id=\"flows\">flow table: {conns} connections, {entries} of {} entries \
                 ({pct:.1} %) <span class=\"bar\"><span style=\"width:{:.1}%\"></span></span></p>",
                s.flows.max,
                pct.min(100.0)
            );
        }
        _ => {
            let _ = writeln!(
                h,
                "<p id=\"flows\">flow table: {} entries at most (counted at the first ageing pass)</p>",
                s.flows.max
            );
        }
    }
    if s.nat.capacity > 0 {
        let h_o = &s.half_open;
        let _ = writeln!(
            h,
            "<p id=\"nat\">NAT from {}, ports {}: {} connections per backend; half-open \
             connections: {}, opened {}, promoted {}, reclaimed {}, reset {}</p>",
            esc(&s.nat.snat_ips.join(", ")),
            esc(&s.nat.ports),
            s.nat.capacity,
            h_o.entries.map_or_else(
                || "not counted yet".to_owned(),
                |e| format!("{e} of {} entries", h_o.max)
            ),
            h_o.opened,
            h_o.promoted,
            h_o.reclaimed,
            h_o.reset
        );
    }
    let counted: Vec<_> = s.dataplane.iter().filter(|r| r.packets > 0).collect();
    if counted.is_empty() {
        h.push_str("<p>no packets counted yet</p>\n");
    } else {
        h.push_str(
            "<table id=\"reasons\"><tr><th>verdict</th><th>reason</th><th>packets</th>\
             <th>bytes</th></tr>\n",
        );
        for r in counted {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(r.verdict()),
                esc(&r.reason),
                r.packets,
                bytes(r.bytes)
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Recent events</h2>\n<ul id=\"events\">\n");
    if s.events.is_empty() {
        h.push_str("<li>none yet</li>\n");
    }
    for ev in s.events.iter().rev() {
        let _ = writeln!(
            h,
            "<li class=\"{}\">{} {}</li>",
            esc(&ev.level),
            clock(ev.at),
            esc(&ev.message)
        );
    }
    h.push_str("</ul>\n</body></html>\n");
    h
}

fn backend_row(h: &mut String, b: &Backend) {
    let (since, last, latency, checks, failed) = match &b.health {
        Some(c) => (
            ago(c.since_s),
            c.last_check.clone(),
            c.latency_ms
                .map_or_else(|| "—".to_owned(), |ms| format!("{ms:.1} ms")),
            c.checks.to_string(),
            c.failures.to_string(),
        ),
        None => (
            "—".into(),
            "not checked".into(),
            "—".into(),
            "—".into(),
            "—".into(),
        ),
    };
    let _ = writeln!(
        h,
        "<tr id=\"backend-{addr}\" data-state=\"{state}\"><td>{name}</td><td>{addr}</td>\
         <td class=\"{state}\">{word}</td><td class=\"n\">{weight}</td><td>{since}</td>\
         <td>{last}</td><td class=\"n\">{latency}</td><td class=\"n\">{checks}</td>\
         <td class=\"n\">{failed}</td><td class=\"n\">{conns}</td><td class=\"n\">{pkts}</td>\
         <td class=\"n\">{bytes}</td><td class=\"n\">{nat}</td></tr>",
        addr = esc(&b.address),
        state = esc(&b.state),
        name = esc(&b.name),
        word = esc(&b.state.to_ascii_uppercase()),
        weight = b.weight,
        last = esc(&last),
        conns = b.traffic.connections,
        pkts = b.traffic.packets,
        bytes = bytes(b.traffic.bytes),
        nat = b
            .nat_ports
            .map_or_else(|| "—".to_owned(), |n| n.established.to_string()),
    );
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{HalfOpen, LogEvent, Nat, NatPorts, Service};

    #[test]
    fn shows_backends_role_and_escapes() {
        let s = Status {
            version: "0.1.0".into(),
            iface: "eth0".into(),
            role: "backup".into(),
            services: vec![Service {
                name: "<k8s>".into(),
                vip: "10.0.0.100".into(),
                port: 6443,
                proto: "tcp".into(),
                backends: vec![Backend {
                    name: "api1".into(),
                    address: "10.0.0.21:6443".into(),
                    state: "down".into(),
                    ..Backend::default()
                }],
                ..Service::default()
            }],
            events: vec![LogEvent {
                at: 0,
                level: "warn".into(),
                message: "10.0.0.21:6443 DOWN: /readyz returned 500 (3/3)".into(),
            }],
            ..Status::default()
        };
        let page = render(&s);
        assert!(page.contains("class=\"badge backup\">BACKUP<"), "{page}");
        assert!(page.contains("<h2>&lt;k8s&gt;"), "{page}");
        assert!(
            page.contains("id=\"backend-10.0.0.21:6443\" data-state=\"down\""),
            "{page}"
        );
        assert!(page.contains("<td class=\"down\">DOWN</td>"), "{page}");
        assert!(page.contains("DOWN: /readyz returned 500"), "{page}");
        assert!(page.contains("http-equiv=\"refresh\""), "{page}");
        assert!(
            !page.contains("id=\"nat\""),
            "no NAT line without a capacity"
        );
    }

    #[test]
    fn shows_the_nat_source_and_ports_in_use() {
        let s = Status {
            services: vec![Service {
                name: "k8s".into(),
                backends: vec![Backend {
                    address: "10.0.0.21:6443".into(),
                    state: "up".into(),
                    nat_ports: Some(NatPorts {
                        established: 123,
                        half_open: 4,
                    }),
                    ..Backend::default()
                }],
                ..Service::default()
            }],
            nat: Nat {
                snat_ips: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                ports: "1024-32767".into(),
                capacity: 63_488,
            },
            half_open: HalfOpen {
                max: 131_072,
                reclaimed: 5,
                ..HalfOpen::default()
            },
            ..Status::default()
        };
        let page = render(&s);
        assert!(
            page.contains(
                "<p id=\"nat\">NAT from 10.0.0.2, 10.0.0.3, ports 1024-32767: 63488 connections \
                 per backend; half-open connections: not counted yet, opened 0, promoted 0, \
                 reclaimed 5, reset 0</p>"
            ),
            "{page}"
        );
        assert!(page.contains("<td class=\"n\">123</td></tr>"), "{page}");
    }
}
