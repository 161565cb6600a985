//! The planner: a pure function from everything the agent knows (the
//! configuration, backend health, the VRRP role, operator drains, the
//! node's addresses) to what the node should do ([`Desired`]). Nothing else
//! decides; the reconciler and the VIP set only carry it out, in the order
//! [`crate::agent`] fixes (maps and `active` first, then the VIPs).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::service::ServiceKey;

use crate::config::{Config, ServiceConfig};

/// This node's part in the VIP's ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Owns the VIPs and NATs their traffic: the VRRP master, or a node
    /// without VRRP.
    Master,
    /// Another node owns the VIPs: no VIP on the interface, and the data
    /// plane passes VIP traffic untouched (fenced).
    Backup,
}

/// One checked backend of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub service: ServiceKey,
    pub backend: SocketAddrV4,
}

/// What the planner reads. Everything is passed in: the planner reads no
/// clock, socket or file.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// Backends whose checks say down.
    pub down: &'a BTreeSet<Target>,
    /// Backends an operator drained: no new connections, existing ones go on.
    pub drained: &'a BTreeSet<SocketAddrV4>,
    pub role: Role,
    /// The node's own IPv4 addresses (a backend among them is local).
    pub local: &'a BTreeSet<Ipv4Addr>,
    /// The NAT source addresses, resolved by the agent (the configured
    /// pool, or the interface's primary address): at least one, at most
    /// [`MAX_SNAT_IPS`](lb_common::service::MAX_SNAT_IPS).
    pub snat_ips: &'a [Ipv4Addr],
    /// The NAT source ports, inclusive, resolved by the agent (configured,
    /// or found outside the kernel's ephemeral range).
    pub nat_ports: (u16, u16),
    /// The data plane clock's rate (lb_common::clock), measured at start.
    pub ticks_per_s: u32,
    /// With VRRP: how long the data plane may go without the agent's
    /// heartbeat before it fences itself (the shortest 3 × advert
    /// interval); None without VRRP.
    pub fence_after: Option<std::time::Duration>,
    /// With VRRP: the VIPs of the instances this node is master of (the
    /// node is [`Role::Master`] when there are any); None without VRRP,
    /// when a master holds every service's VIP.
    pub vrrp_vips: Option<&'a BTreeSet<Ipv4Addr>>,
}

/// What the node should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The SNAT pool, in order: the data plane draws a new connection's
    /// source address from it (the first is CONFIG's `snat_ip`).
    pub snat_ips: Vec<Ipv4Addr>,
    pub nat_ports: (u16, u16),
    /// The data plane NATs VIP traffic (CONFIG_ACTIVE).
    pub active: bool,
    pub ticks_per_s: u32,
    /// Ticks of agent silence after which the data plane fences itself;
    /// 0: never.
    pub fence_after: u32,
    pub services: Vec<DesiredService>,
    /// Addresses to hold on the interface (and announce).
    pub vips: BTreeSet<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredService {
    pub name: String,
    pub key: ServiceKey,
    pub backends: Vec<DesiredBackend>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredBackend {
    pub name: String,
    pub addr: SocketAddrV4,
    /// 0: takes no new flows (drained or down); existing flows go on.
    pub weight: u32,
    /// An address of this node (stacked master): deliver locally.
    pub local: bool,
}

pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        vip: s.vip.octets(),
        port: s.port.to_be_bytes(),
        proto: s.proto.number(),
        _pad: 0,
    }
}

/// The desired state for `inputs`.
///
/// A backend is in rotation with its configured weight unless an operator
/// drained it or its checks say down. When every backend of a service that
/// could take traffic is down, the service fails open: it balances over all
/// of them rather than refusing connections. A readiness check can fail
/// everywhere at once (an etcd hiccup turns every apiserver's /readyz red)
/// while the apiservers still serve; cutting the whole control plane off
/// would turn a blip into an outage. Drains are the operator's word and
/// hold even then.
pub fn plan(inputs: &Inputs) -> Desired {
    let Inputs {
        config,
        down,
        drained,
        role,
        local,
        snat_ips,
        nat_ports,
        ticks_per_s,
        fence_after,
        vrrp_vips,
    } = *inputs;
    let services = config
        .services
        .iter()
        .map(|s| {
            let key = service_key(s);
            let is_down = |addr| {
                down.contains(&Target {
                    service: key,
                    backend: addr,
                })
            };
            let eligible =
                |b: &&crate::config::BackendConfig| b.weight > 0 && !drained.contains(&b.addr);
            let all_down = s.backends.iter().filter(eligible).all(|b| is_down(b.addr));
            DesiredService {
                name: s.name.clone(),
                key,
                backends: s
                    .backends
                    .iter()
                    .map(|b| DesiredBackend {
                        name: b.name.clone(),
                        addr: b.addr,
                        weight: if drained.contains(&b.addr) || (is_down(b.addr) && !all_down) {
                            0
                        } else {
                            b.weight
                        },
                        local: local.contains(b.addr.ip()),
                    })
                    .collect(),
            }
        })
        .collect();
    let master = role == Role::Master;
    Desired {
        snat_ips: snat_ips.to_vec(),
        nat_ports,
        active: master,
        ticks_per_s,
        // At least one tick, so that "0: never" keeps its meaning.
        fence_after: fence_after.map_or(0, |d| {
            ((d.as_secs_f64() * f64::from(ticks_per_s)).ceil() as u32).max(1)
        }),
        services,
        vips: match (master, vrrp_vips) {
            (false, _) => BTreeSet::new(),
            (true, Some(owned)) => owned.clone(),
            (true, None) if config.assign_vip => config.services.iter().map(|s| s.vip).collect(),
            (true, None) => BTreeSet::new(),
        },
    }
}

/// Services of `config` whose every eligible backend is down (they fail
/// open), by name: what the agent shouts about.
pub fn failing_open(inputs: &Inputs) -> Vec<String> {
    inputs
        .config
        .services
        .iter()
        .filter(|s| {
            let key = service_key(s);
            let mut eligible = s
                .backends
                .iter()
                .filter(|b| b.weight > 0 && !inputs.drained.contains(&b.addr))
                .peekable();
            eligible.peek().is_some()
                && eligible.all(|b| {
                    inputs.down.contains(&Target {
                        service: key,
                        backend: b.addr,
                    })
                })
        })
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
