//! The TOML file: its shape as written, and the draft read from it. Every
//! key that has a default is optional; the values later checks may blame
//! keep their spans, for `FILE:LINE`.

use anyhow::Result;
use lb_common::maps::{DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_FLOWS};
use serde::Deserialize;
use toml::Spanned;

use super::{
    check::{RawCheck, check_from_toml},
    model::{CheckConfig, DEFAULT_PORT, NatPorts, Proto, Timeouts},
    resolve::{Draft, DraftBackend, DraftService, SnatIps},
    source::{Loc, Source, span},
    values::{
        check_max_embryos, check_max_flows, check_port, check_table_size, check_weight,
        parse_backend_addr, parse_duration, parse_nat_ports, parse_snat_ip, parse_snat_ips_entry,
        parse_vip,
    },
    vrrp::RawVrrp,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    snat_ip: Option<Spanned<String>>,
    snat_ips: Option<Spanned<Vec<Spanned<String>>>>,
    nat_ports: Option<Spanned<String>>,
    // Integers are read as i64 (TOML's own type) and range-checked here,
    // so that the message names the key, not just "expected u16".
    max_flows: Option<Spanned<i64>>,
    max_embryos: Option<Spanned<i64>>,
    keep_dataplane: Option<bool>,
    assign_vip: Option<bool>,
    maglev_table_size: Option<Spanned<i64>>,
    timeouts: Option<RawTimeouts>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default, rename = "vrrp")]
    vrrp: Vec<RawVrrp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_established: Option<Spanned<String>>,
    tcp_syn: Option<Spanned<String>>,
    tcp_closing: Option<Spanned<String>>,
    udp: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    vip: Spanned<String>,
    port: Option<Spanned<i64>>,
    proto: Option<Proto>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
    check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    name: Option<Spanned<String>>,
}

/// An optional name as written: trimmed, not empty.
fn name(src: &Source, what: &str, n: Option<Spanned<String>>) -> Result<Option<(String, Loc)>> {
    let Some(n) = n else { return Ok(None) };
    let loc = span(&n);
    let trimmed = n.get_ref().trim();
    if trimmed.is_empty() {
        return Err(src.error(&loc, format!("{what} name is empty")));
    }
    Ok(Some((trimmed.to_owned(), loc)))
}

impl Draft {
    /// The file's text, each value checked on its own.
    pub(super) fn from_toml(src: &Source, text: &str) -> Result<Draft> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let loc = e.span().map_or(Loc::Whole, Loc::Span);
            // The message alone: its Display repeats the line with a caret
            // over several lines, and we say FILE:LINE ourselves.
            src.error(&loc, e.message().trim())
        })?;

        let snat_ips = match (raw.snat_ip, raw.snat_ips) {
            (Some(_), Some(pool)) => {
                return Err(src.error(
                    &span(&pool),
                    "snat_ip and snat_ips are both given: list every SNAT address in snat_ips \
                     (its first is the one snat_ip would be)",
                ));
            }
            (Some(s), None) => SnatIps {
                key: "snat_ip",
                ips: vec![(src.check(&span(&s), parse_snat_ip(s.get_ref()))?, span(&s))],
            },
            (None, Some(pool)) => {
                if pool.get_ref().is_empty() {
                    return Err(src.error(
                        &span(&pool),
                        "snat_ips is empty: leave it out to use the interface's primary address",
                    ));
                }
                let mut ips = Vec::with_capacity(pool.get_ref().len());
                for s in pool.into_inner() {
                    ips.push((
                        src.check(&span(&s), parse_snat_ips_entry(s.get_ref()))?,
                        span(&s),
                    ));
                }
                SnatIps {
                    key: "snat_ips",
                    ips,
                }
            }
            (None, None) => SnatIps::default(),
        };
        let nat_ports = match raw.nat_ports {
            Some(s) => src.check(&span(&s), parse_nat_ports(s.get_ref()))?,
            None => NatPorts::Auto,
        };
        let max_flows = match raw.max_flows {
            Some(n) => src.check(&span(&n), check_max_flows(*n.get_ref()))?,
            None => DEFAULT_MAX_FLOWS,
        };
        let max_embryos = match raw.max_embryos {
            Some(n) => src.check(&span(&n), check_max_embryos(*n.get_ref()))?,
            None => DEFAULT_MAX_EMBRYOS,
        };
        let maglev_table_size = match raw.maglev_table_size {
            Some(n) => Some((
                src.check(&span(&n), check_table_size(*n.get_ref()))?,
                span(&n),
            )),
            None => None,
        };

        let mut timeouts = Timeouts::default();
        if let Some(t) = raw.timeouts {
            for (key, value, slot) in [
                (
                    "tcp_established",
                    t.tcp_established,
                    &mut timeouts.tcp_established,
                ),
                ("tcp_syn", t.tcp_syn, &mut timeouts.tcp_syn),
                ("tcp_closing", t.tcp_closing, &mut timeouts.tcp_closing),
                ("udp", t.udp, &mut timeouts.udp),
            ] {
                let Some(value) = value else { continue };
                let d = parse_duration(value.get_ref())
                    .map_err(|m| format!("timeouts.{key}: {m}"))
                    .and_then(|d| match d.is_zero() {
                        true => Err(format!(
                            "timeouts.{key} '{}' must be longer than 0",
                            value.get_ref()
                        )),
                        false => Ok(d),
                    });
                *slot = src.check(&span(&value), d)?;
            }
        }

        let mut services = Vec::with_capacity(raw.services.len());
        for s in raw.services {
            let loc = span(&s.vip);
            let vip = src.check(&loc, parse_vip(s.vip.get_ref()))?;
            let port = match s.port {
                Some(p) => src.check(&span(&p), check_port(*p.get_ref()))?,
                None => DEFAULT_PORT,
            };
            let mut backends = Vec::with_capacity(s.backends.len());
            for b in s.backends {
                let loc = span(&b.address);
                let label = b.address.get_ref();
                if label.contains('@') {
                    return Err(src.error(
                        &loc,
                        format!(
                            "backend '{label}': give the weight as `weight = N`, not in the address"
                        ),
                    ));
                }
                let addr = src.check(&loc, parse_backend_addr(label, label))?;
                let weight = match b.weight {
                    Some(w) => src.check(&span(&w), check_weight(label, *w.get_ref()))?,
                    None => 1,
                };
                backends.push(DraftBackend {
                    addr,
                    weight,
                    name: name(src, "backend", b.name)?.map(|(n, _)| n),
                    loc,
                });
            }
            let proto = s.proto.unwrap_or(Proto::Tcp);
            let check = match s.check {
                Some(c) => check_from_toml(src, c, port, proto)?,
                None => CheckConfig::default_for(port, proto),
            };
            services.push(DraftService {
                name: name(src, "service", s.name)?,
                vip,
                port,
                proto,
                loc,
                backends,
                check,
            });
        }

        let mut vrrp = Vec::with_capacity(raw.vrrp.len());
        for v in raw.vrrp {
            vrrp.push(v.check(src)?);
        }

        Ok(Draft {
            vrrp,
            services,
            snat_ips,
            nat_ports,
            max_flows,
            max_embryos,
            keep_dataplane: raw.keep_dataplane.unwrap_or(false),
            assign_vip: raw.assign_vip.unwrap_or(true),
            maglev_table_size,
            timeouts,
        })
    }
}

#[cfg(test)]
mod tests;
