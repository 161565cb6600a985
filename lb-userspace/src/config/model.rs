//! The configuration as the agent uses it: plain data, checked and with
//! every default filled in, and the defaults themselves.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use clap::ValueEnum;
use lb_common::service::{PROTO_TCP, PROTO_UDP};
use serde::Deserialize;

/// kube-apiserver's port, the service port when none is given.
pub const DEFAULT_PORT: u16 = 6443;
/// NAT source ports when `nat_ports = "auto"` finds less room than this
/// outside the kernel's ephemeral range (`ip_local_port_range`): the
/// agent then reserves them there (`ip_local_reserved_ports`). The
/// default before "auto", so a node never gets fewer ports than it had.
pub const FALLBACK_NAT_PORTS: (u16, u16) = (20000, 29999);
/// Fewer ports than this could not carry a useful number of connections.
pub const MIN_NAT_PORTS: u32 = 64;
/// A smaller flow table would be exhausted by a handful of busy clients.
pub const MIN_MAX_FLOWS: u32 = 1024;
/// A smaller table of half-open connections would lose legitimate
/// handshakes to a trickle of SYNs.
pub const MIN_MAX_EMBRYOS: u32 = 1024;
/// Weights are spread over a Maglev table; larger ones buy nothing.
pub const MAX_WEIGHT: u32 = 65535;
/// haproxy's `inter 2s rise 2 fall 3`: a dead apiserver is out after ~6s,
/// a recovered one back after ~4s.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Also capped at the interval, so a short interval alone is enough.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Checks more often than this load the backends for no gain in reaction
/// time (a backend still needs `fall` failures to go down).
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// More would leave a dead backend in for minutes.
pub const MAX_RISE_FALL: u32 = 100;
/// kube-apiserver's readiness endpoint, readable without credentials.
pub const DEFAULT_CHECK_PATH: &str = "/readyz";
pub const DEFAULT_EXPECT: u16 = 200;

/// Everything the agent needs to program the data plane, validated and with
/// every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<ServiceConfig>,
    /// Sources of NATed packets (`snat_ip`, or the pool `snat_ips`), at
    /// most [`MAX_SNAT_IPS`](lb_common::service::MAX_SNAT_IPS), no two
    /// alike; empty: the interface's primary IPv4, resolved by the agent.
    pub snat_ips: Vec<Ipv4Addr>,
    /// NAT source ports, per SNAT address and backend.
    pub nat_ports: NatPorts,
    pub max_flows: u32,
    /// Size of the table of half-open TCP connections (EMBRYOS, an LRU:
    /// a flood evicts the oldest).
    pub max_embryos: u32,
    /// On SIGTERM leave the program attached and the maps pinned.
    pub keep_dataplane: bool,
    /// Add the VIPs to the interface at start and remove them at exit.
    pub assign_vip: bool,
    /// Slots in each service's Maglev table, one of
    /// [`TABLE_SIZES`](lb_common::maglev::TABLE_SIZES).
    pub maglev_table_size: u32,
    pub timeouts: Timeouts,
    /// VRRP instances; none: the node owns its VIPs alone.
    pub vrrp: Vec<super::VrrpConfig>,
}

/// NAT source ports, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NatPorts {
    /// The largest block of ports from 1024 up outside the kernel's
    /// ephemeral range (`ip_local_port_range`), found by the agent.
    #[default]
    Auto,
    /// These, inclusive.
    Range(u16, u16),
}

/// As `nat_ports` is written: `auto`, `LO-HI`.
impl fmt::Display for NatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatPorts::Auto => f.write_str("auto"),
            NatPorts::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// For logs and statistics; by default `VIP:PORT/PROTO`.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub backends: Vec<BackendConfig>,
    pub check: CheckConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// For logs and statistics; by default the address.
    pub name: String,
    pub addr: SocketAddrV4,
    /// Share of new connections; 0 drains the backend.
    pub weight: u32,
}

/// How long an idle flow is kept, by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    /// A flow that has seen only a SYN: a local backend's (a NATed
    /// connection is half-open in EMBRYOS until its handshake completes).
    pub tcp_syn: Duration,
    /// After a FIN or RST.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

/// How the backends of a service are checked (haproxy's `check inter 2s
/// rise 2 fall 3` with `option httpchk`), and what a failure does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    /// From the start of one check to the start of the next.
    pub interval: Duration,
    /// A check not finished by then failed; never longer than `interval`,
    /// so checks of one backend never overlap.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
    pub on_down: OnDown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Not checked: every backend counts as up.
    None,
    /// A TCP connect.
    Tcp,
    /// `GET path` over HTTP/1.1; the status must be `expect`.
    Http { path: String, expect: u16 },
    /// The same over TLS: kube-apiserver's `/readyz`.
    Https {
        path: String,
        expect: u16,
        tls: TlsCheck,
    },
}

/// How an `https` check treats the backend's certificate, and which one it
/// presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCheck {
    /// Accept any certificate (the handshake signature is still checked).
    /// True unless `ca_file` is given.
    pub insecure_skip_verify: bool,
    /// PEM CA certificates the backends' certificates must chain to, e.g.
    /// the cluster CA `/etc/kubernetes/pki/ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for backends that want one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Server name to send and verify; by default the backend's IP address.
    pub sni: Option<String>,
}

/// What happens to the established connections of a backend that goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// They stay on it (haproxy's default): a backend that fails its checks
    /// may still finish the requests in flight; only new connections avoid it.
    #[default]
    Keep,
    /// Their flows are dropped, so clients reconnect to a live backend at
    /// once (haproxy's `on-marked-down shutdown-sessions`).
    Reset,
}

impl CheckConfig {
    /// The check of a service that configures none: the apiserver's
    /// `/readyz` on 6443, a TCP connect on other TCP ports. UDP services
    /// are not checked: a TCP probe says nothing about a UDP server.
    pub fn default_for(port: u16, proto: Proto) -> CheckConfig {
        CheckConfig {
            kind: CheckKind::default_for(port, proto),
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            on_down: OnDown::Keep,
        }
    }
}

impl CheckKind {
    /// See [`CheckConfig::default_for`].
    pub fn default_for(port: u16, proto: Proto) -> CheckKind {
        match (proto, port) {
            (Proto::Udp, _) => CheckKind::None,
            (Proto::Tcp, DEFAULT_PORT) => CheckKind::Https {
                path: DEFAULT_CHECK_PATH.into(),
                expect: DEFAULT_EXPECT,
                tls: TlsCheck::default(),
            },
            (Proto::Tcp, _) => CheckKind::Tcp,
        }
    }

    /// The name of the kind, as `kind` in the file says it.
    fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Https { .. } => "https",
        }
    }
}

/// As `--check` takes it: `tcp`, `http:/readyz`, `none`.
impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckKind::Http { path, .. } | CheckKind::Https { path, .. } => {
                write!(f, "{}:{path}", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// An apiserver's certificate is signed by the cluster's own CA, which the
/// agent does not know unless told (`ca_file`); so by default it is not
/// verified, as with haproxy's `check-ssl verify none`.
impl Default for TlsCheck {
    fn default() -> Self {
        TlsCheck {
            insecure_skip_verify: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            sni: None,
        }
    }
}

impl fmt::Display for OnDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnDown::Keep => "keep",
            OnDown::Reset => "reset",
        })
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(3600),
            tcp_syn: Duration::from_secs(30),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as in [`lb_common::service::ServiceKey`].
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_numbers() {
        assert_eq!(Proto::Tcp.number(), 6);
        assert_eq!(Proto::Udp.number(), 17);
    }
}
