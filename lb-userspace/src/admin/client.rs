//! `xdplb status`, `xdplb backend drain|enable ADDR`, `xdplb reload`: HTTP
//! to a running agent's admin endpoint (`--admin`), and the answer for a
//! person.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    header::{AUTHORIZATION, HOST},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::timeout};

use super::{
    Outcome,
    status::{Status, ago, bytes, clock},
};
use crate::cli::{Admin, BackendAction, Command};

const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// A reload waits for the loop to apply it; the server gives up at 30 s.
const ANSWER_WAIT: Duration = Duration::from_secs(40);

/// Runs `command` against the agent at `admin`; what to print on stdout,
/// or an error that says what went wrong (a rejected reload among them).
pub async fn run(command: &Command, admin: Admin, token: Option<&str>) -> Result<String> {
    let Admin::At(addr) = admin else {
        bail!("--admin off: there is no admin endpoint to ask (give its ADDR:PORT)");
    };
    match command {
        Command::Status { json } => {
            let body = expect_ok(call(addr, token, Method::GET, "/status").await?)?;
            if *json {
                return Ok(body);
            }
            let status: Status = serde_json::from_str(&body)
                .with_context(|| format!("{addr}/status did not answer xdplb's status JSON"))?;
            Ok(table(&status))
        }
        Command::Backend { action } => {
            let path = match action {
                BackendAction::Drain { addr } => format!("/backends/{addr}/drain"),
                BackendAction::Enable { addr } => format!("/backends/{addr}/enable"),
            };
            command_outcome(call(addr, token, Method::POST, &path).await?)
        }
        // The agent's message says whether the running configuration stayed.
        Command::Reload => command_outcome(call(addr, token, Method::POST, "/reload").await?),
    }
}

/// One request on a fresh connection: the status and the body.
async fn call(
    addr: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String)> {
    let unreachable = || {
        format!(
            "cannot reach the xdplb admin endpoint at {addr} (is xdplb running, with --admin at that address?)"
        )
    };
    let stream = timeout(CONNECT_WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_WAIT:?}"))
        .and_then(|r| Ok(r?))
        .with_context(unreachable)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(unreachable)?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let answer = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    timeout(ANSWER_WAIT, answer)
        .await
        .map_err(|_| anyhow!("{addr}{path}: no answer within {ANSWER_WAIT:?}"))?
        .with_context(|| format!("{addr}{path}"))
}

fn expect_ok((status, body): (StatusCode, String)) -> Result<String> {
    if status == StatusCode::UNAUTHORIZED {
        bail!("the admin endpoint wants its token: pass --admin-token (or XDPLB_ADMIN_TOKEN)");
    }
    if !status.is_success() {
        bail!("the admin endpoint answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// A command's message, or its error.
fn command_outcome((status, body): (StatusCode, String)) -> Result<String> {
    if status == StatusCode::UNAUTHORIZED {
        return expect_ok((status, body));
    }
    match serde_json::from_str::<Outcome>(&body) {
        Ok(o) if o.ok => Ok(o.message),
        Ok(o) => Err(anyhow!("{}", o.message)),
        Err(_) => expect_ok((status, body)),
    }
}

/// What `xdplb status` prints.
pub fn table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xdplb {} on {}: {}, up {}",
        s.version,
        s.iface,
        s.role.to_ascii_uppercase(),
        ago(s.uptime_s)
    );
    if let Some(file) = &s.config_file {
        let _ = write!(out, "configuration {file}");
        match (&s.reloads.last_error, s.reloads.last_at) {
            (Some(e), Some(at)) => {
                let _ = write!(out, "; last reload at {} UTC REJECTED: {e}", clock(at));
            }
            (None, Some(at)) => {
                let _ = write!(out, "; reloaded at {} UTC", clock(at));
            }
            _ => {}
        }
        out.push('\n');
    }
    for v in &s.vrrp {
        let _ = writeln!(
            out,
            "VRRP {} (vrid {}): {}, priority {} (effective {}), master {}, adverts sent {} received {}, \
             rejected {}",
            v.instance,
            v.vrid,
            v.state.to_ascii_uppercase(),
            v.priority,
            v.effective_priority,
            v.master.as_deref().unwrap_or("unknown"),
            v.adverts_sent,
            v.adverts_received,
            v.rejects.values().sum::<u64>()
        );
    }
    match (s.flows.connections, s.flows.entries) {
        (Some(c), Some(e)) => {
            let _ = writeln!(
                out,
                "flows: {c} connections, {e} of {} entries ({:.1} %)",
                s.flows.max,
                e as f64 * 100.0 / s.flows.max.max(1) as f64
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "flows: not counted before the first ageing pass (max {})",
                s.flows.max
            );
        }
    }
    // An agent from before the SNAT pool reports no capacity.
    if s.nat.capacity > 0 {
        let h = &s.half_open;
        let _ = writeln!(
            out,
            "NAT: from {}, ports {}: {} connections per backend; half-open: {}, opened {} \
             promoted {} reclaimed {} reset {}",
            s.nat.snat_ips.join(", "),
            s.nat.ports,
            s.nat.capacity,
            h.entries.map_or_else(
                || "not counted yet".to_owned(),
                |e| format!("{e} of {} entries", h.max)
            ),
            h.opened,
            h.promoted,
            h.reclaimed,
            h.reset
        );
    }
    for svc in &s.services {
        let at = format!("{}:{}/{}", svc.vip, svc.port, svc.proto);
        // The default name is the address already.
        let name = if svc.name == at {
            at
        } else {
            format!("{} {at}", svc.name)
        };
        let _ = writeln!(
            out,
            "\nSERVICE {name}  check {}  {}/{} backends take connections  {} connections  {}",
            svc.check,
            svc.backends_up,
            svc.backends.len(),
            svc.traffic.connections,
            bytes(svc.traffic.bytes)
        );
        if svc.failing_open {
            out.push_str("  ALL BACKENDS ARE DOWN: balancing over all of them\n");
        }
        let mut rows = vec![
            [
                "BACKEND",
                "ADDRESS",
                "STATE",
                "WEIGHT",
                "SINCE",
                "LAST CHECK",
                "LATENCY",
                "CONNS",
                "PACKETS",
                "BYTES",
                "NAT PORTS",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for b in &svc.backends {
            let h = b.health.as_ref();
            rows.push(vec![
                b.name.clone(),
                b.address.clone(),
                b.state.to_ascii_uppercase(),
                b.weight.to_string(),
                h.map_or_else(|| "-".into(), |h| ago(h.since_s)),
                h.map_or_else(|| "not checked".into(), |h| h.last_check.clone()),
                h.and_then(|h| h.latency_ms)
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms")),
                b.traffic.connections.to_string(),
                b.traffic.packets.to_string(),
                bytes(b.traffic.bytes),
                b.nat_ports.map_or_else(
                    || "-".into(),
                    |n| {
                        format!(
                            "{} ({:.1} %)",
                            n.established,
                            n.established as f64 * 100.0 / s.nat.capacity.max(1) as f64
                        )
                    },
                ),
            ]);
        }
        columns(&mut out, &rows);
    }
    let (mut total, mut drops) = (0u64, Vec::new());
    let mut top: Vec<_> = s.dataplane.iter().filter(|r| r.packets > 0).collect();
    for r in &top {
        total += r.packets;
        if matches!(r.verdict(), "drop" | "aborted") {
            drops.push(format!("{}={}", r.reason, r.packets));
        }
    }
    top.sort_by_key(|r| std::cmp::Reverse(r.packets));
    let _ = writeln!(
        out,
        "\ndata plane: {total} packets ({}); drops: {}",
        top.iter()
            .take(4)
            .map(|r| format!("{}={}", r.reason, r.packets))
            .collect::<Vec<_>>()
            .join(" "),
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(" ")
        }
    );
    if !s.events.is_empty() {
        out.push_str("\nrecent events:\n");
        for e in s.events.iter().rev().take(10).rev() {
            let _ = writeln!(out, "  {} {:<5} {}", clock(e.at), e.level, e.message);
        }
    }
    out
}

/// Left-aligned columns, two spaces apart, indented by two.
fn columns(out: &mut String, rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{Backend, HalfOpen, Health, Nat, NatPorts, Service, Traffic};

    #[test]
    fn status_table_lines_up() {
        let s = Status {
            version: "0.1.0".into(),
            iface: "eth0".into(),
            role: "master".into(),
            uptime_s: 75,
            services: vec![Service {
                name: "k8s".into(),
                vip: "10.0.0.100".into(),
                port: 6443,
                proto: "tcp".into(),
                check: "https:/readyz".into(),
                backends_up: 1,
                backends: vec![Backend {
                    name: "api1".into(),
                    address: "10.0.0.21:6443".into(),
                    weight: 1,
                    state: "up".into(),
                    up: true,
                    health: Some(Health {
                        last_check: "ok".into(),
                        latency_ms: Some(2.31),
                        since_s: 75,
                        ..Health::default()
                    }),
                    traffic: Traffic {
                        packets: 12,
                        bytes: 2048,
                        connections: 3,
                    },
                    nat_ports: Some(NatPorts {
                        established: 317,
                        half_open: 2,
                    }),
                    ..Backend::default()
                }],
                ..Service::default()
            }],
            nat: Nat {
                snat_ips: vec!["10.0.0.2".into()],
                ports: "1024-32767".into(),
                capacity: 31_744,
            },
            half_open: HalfOpen {
                entries: Some(4),
                max: 131_072,
                opened: 10,
                promoted: 6,
                ..HalfOpen::default()
            },
            ..Status::default()
        };
        let t = table(&s);
        assert!(
            t.starts_with("xdplb 0.1.0 on eth0: MASTER, up 1m15s\n"),
            "{t}"
        );
        assert!(
            t.contains("\n  BACKEND  ADDRESS         STATE  WEIGHT  SINCE  LAST CHECK  LATENCY  CONNS  PACKETS  BYTES    NAT PORTS\n"),
            "{t}"
        );
        assert!(
            t.contains("\n  api1     10.0.0.21:6443  UP     1       1m15s  ok          2.3 ms   3      12       2.0 KiB  317 (1.0 %)\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "\nNAT: from 10.0.0.2, ports 1024-32767: 31744 connections per backend; \
                 half-open: 4 of 131072 entries, opened 10 promoted 6 reclaimed 0 reset 0\n"
            ),
            "{t}"
        );
    }
}
