//! The loop's state as a [`Status`] snapshot for the admin endpoint: the
//! configuration and what the checks, the drains, the VRRP instances and
//! the data plane's counters say about it. Built in the loop (which owns
//! all of that), published through a `watch`; reading the maps here writes
//! nothing.

use std::{collections::HashMap, sync::Arc};

use aya::maps::{MapData, PerCpuArray};
use lb_common::stats::{EmbryoStats, Reason, ReasonTotals, Traffic};

use super::Agent;
use crate::{
    admin::status::{self, ReasonCount, Status},
    health::BackendStatus,
    plan::{self, Role, Target, service_key},
};

impl Agent {
    /// Builds a snapshot, publishes it and returns it.
    pub(super) fn publish(&self) -> Arc<Status> {
        let s = Arc::new(self.snapshot());
        self.published.send_replace(s.clone());
        s
    }

    fn snapshot(&self) -> Status {
        let down = self.health.down();
        let failing_open = self.with_inputs(plan::failing_open);
        let checked: HashMap<(String, String), BackendStatus> = self
            .health
            .status()
            .into_iter()
            .map(|b| ((b.service.clone(), b.address.clone()), b))
            .collect();
        let services =
            self.config
                .services
                .iter()
                .map(|svc| {
                    let key = service_key(svc);
                    let traffic = self
                        .reconciler
                        .service_id_of(&key)
                        .map(|id| summed(&self.service_stats, id))
                        .unwrap_or_default();
                    let backends: Vec<status::Backend> =
                        svc.backends
                            .iter()
                            .map(|b| {
                                let up = !down.contains(&Target {
                                    service: key,
                                    backend: b.addr,
                                });
                                let drained = self.drained.contains(&b.addr);
                                let state = match (up, drained || b.weight == 0) {
                                    (false, _) => "down",
                                    (true, true) => "drain",
                                    (true, false) => "up",
                                };
                                let health = checked
                                    .get(&(svc.name.clone(), b.addr.to_string()))
                                    .map(|c| status::Health {
                                        last_check: c.last_check.clone(),
                                        latency_ms: c.latency_ms,
                                        check_duration_ms: c.check_duration_ms,
                                        since_s: c.since_s,
                                        checks: c.checks,
                                        failures: c.failures,
                                        transitions: c.transitions,
                                    });
                                let id = self.reconciler.backend_id_of(b.addr);
                                let traffic = id
                                    .map(|id| summed(&self.backend_stats, id))
                                    .unwrap_or_default();
                                let nat_ports = match (id, &self.nat_use) {
                                    (Some(id), Some(usage)) => {
                                        let u = usage.get(&id).copied().unwrap_or_default();
                                        Some(status::NatPorts {
                                            established: u64::from(u.established),
                                            half_open: u64::from(u.half_open),
                                        })
                                    }
                                    _ => None,
                                };
                                status::Backend {
                                    name: b.name.clone(),
                                    address: b.addr.to_string(),
                                    weight: b.weight,
                                    state: state.into(),
                                    up,
                                    drained,
                                    health,
                                    traffic,
                                    nat_ports,
                                }
                            })
                            .collect();
                    status::Service {
                        name: svc.name.clone(),
                        vip: svc.vip.to_string(),
                        port: svc.port,
                        proto: svc.proto.to_string(),
                        check: svc.check.kind.to_string(),
                        traffic,
                        backends_up: backends.iter().filter(|b| b.state == "up").count(),
                        failing_open: failing_open.contains(&svc.name),
                        backends,
                    }
                })
                .collect();
        // A failed read is logged by the report; the page shows no counters.
        let dataplane = ReasonTotals::read(&self.reasons)
            .map(|totals| {
                Reason::ALL
                    .iter()
                    .map(|&r| ReasonCount {
                        reason: r.name().into(),
                        packets: totals.get(r).packets,
                        bytes: totals.get(r).bytes,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let vrrp = self
            .vrrp
            .as_ref()
            .map(|v| {
                v.list
                    .iter()
                    .map(|inst| {
                        let snap = inst.handle.snapshot.borrow().clone();
                        let stats = &snap.stats;
                        status::Vrrp {
                            instance: inst.config.name.clone(),
                            vrid: inst.config.vrid,
                            state: snap.state.as_str().into(),
                            priority: snap.priority,
                            effective_priority: snap.effective_priority,
                            master: snap.master.map(|m| m.to_string()),
                            vips: inst.config.vips.iter().map(|v| v.to_string()).collect(),
                            transitions: stats.transitions,
                            became_master: stats.became_master,
                            released_master: stats.released_master,
                            adverts_sent: stats.adverts_sent,
                            adverts_received: stats.adverts_received,
                            priority_zero_sent: stats.priority_zero_sent,
                            priority_zero_received: stats.priority_zero_received,
                            rejects: stats
                                .rejects
                                .iter()
                                .map(|(r, n)| (r.as_str().to_owned(), n))
                                .collect(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            iface: self.args.iface().into(),
            role: match self.role {
                Role::Master => "master",
                Role::Backup => "backup",
            }
            .into(),
            uptime_s: self.started.elapsed().as_secs(),
            at: status::unix_now(),
            config_file: self.args.config.as_ref().map(|p| p.display().to_string()),
            reloads: self.journal.reloads.clone(),
            services,
            flows: status::Flows {
                entries: self.flows_seen.map(|(e, _)| e as u64),
                connections: self.flows_seen.map(|(_, c)| c as u64),
                max: u64::from(self.config.max_flows),
            },
            nat: status::Nat {
                snat_ips: self.nat.snat_ips.iter().map(|a| a.to_string()).collect(),
                ports: format!("{}-{}", self.nat.ports.ports.0, self.nat.ports.ports.1),
                capacity: u64::from(self.nat.capacity()),
            },
            half_open: self.half_open_status(),
            dataplane,
            vrrp,
            events: self.journal.events(),
        }
    }
}

impl Agent {
    /// EMBRYOS as the last ageing pass saw it, and EMBRYO_STATS summed
    /// over CPUs (zeros if it cannot be read).
    fn half_open_status(&self) -> status::HalfOpen {
        let mut h = status::HalfOpen {
            entries: self.embryos_seen.map(|n| n as u64),
            max: u64::from(self.config.max_embryos),
            ..status::HalfOpen::default()
        };
        if let Ok(per_cpu) = self.embryo_stats.get(&0, 0) {
            let c = EmbryoStats::sum(per_cpu.iter());
            (h.opened, h.promoted, h.reclaimed, h.reset) =
                (c.opened, c.promoted, c.reclaimed, c.reset);
        }
        h
    }
}

/// One per-CPU traffic slot summed over CPUs; zeros if it cannot be read.
fn summed(map: &PerCpuArray<MapData, Traffic>, id: u32) -> status::Traffic {
    let mut t = status::Traffic::default();
    if let Ok(per_cpu) = map.get(&id, 0) {
        for c in per_cpu.iter() {
            t.packets += c.packets;
            t.bytes += c.bytes;
            t.connections += c.new_flows;
        }
    }
    t
}
