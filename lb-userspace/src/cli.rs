//! Command-line flags. Flags named in issues as "exact" are a contract with
//! tests outside the project: add new ones, never rename these.
//!
//! Without a subcommand `xdplb` runs the agent, which needs `--iface` and
//! a service (`--config` or `--vip`); the subcommands (`status`, `backend
//! drain|enable`, `reload`) talk to a running agent's admin endpoint and
//! need neither.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};

use crate::config::{
    BackendSpec, CheckKind, DEFAULT_PORT, NatPorts, OnDown, Overrides, Proto, VrrpFlags,
    parse_backend_flag, parse_check_flag, parse_check_interval, parse_check_timeout,
    parse_duration, parse_fall, parse_max_embryos, parse_max_flows, parse_nat_ports,
    parse_priority, parse_rise, parse_snat_ip, parse_unicast_peer, parse_vip, parse_vrid,
};
use crate::{
    flowlog::{Dest, parse_dest},
    loader::FlowLogLimit,
};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "xdplb",
    version,
    about = "XDP L4 load balancer for Kubernetes control planes",
    // One service from the flags, or any number from a file; never both.
    group(ArgGroup::new("services").required(true).args(["config", "vip"])),
    // `--iface` and a service are required to run the agent, not to ask it
    // something.
    subcommand_negates_reqs = true,
)]
pub struct Args {
    /// Interface to attach the XDP program to (the one that owns the VIP).
    /// Always there when the agent runs (clap requires it without a
    /// subcommand): read it with [`Args::iface`].
    #[arg(long, short = 'i', env = "XDPLB_IFACE", required = true)]
    pub iface: Option<String>,

    /// How the program is attached: `native` runs in the driver (fast; veth,
    /// virtio, mlx5, i40e…), `generic` in the kernel stack (any device,
    /// slower), `auto` tries native and falls back to generic.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
    pub xdp_mode: XdpAttachMode,

    /// Directory for pinned maps. Default: /sys/fs/bpf/xdplb/<iface>.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,

    /// How often to log the packet counters; 0 turns the report off.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// Write the state of every backend (up/down, last check, latency,
    /// since when) as JSON to this file on every change and every report.
    #[arg(long)]
    pub status_file: Option<PathBuf>,

    /// Log every new connection and its end, like nginx's stream access
    /// log (client, VIP, backend, time): `off`, `log` (into this log) or a
    /// FILE to append to. Off, the data plane has no flow log code at all.
    #[arg(long, value_name = "off|log|FILE", default_value = "off", value_parser = parse_dest)]
    pub flow_log: Dest,

    /// New connections the flow log takes per second on each CPU, in
    /// bursts of as many; beyond that they are counted and the count is
    /// logged ("suppressed"), so a SYN flood cannot flood the log.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=lb_common::flowlog::MAX_RATE as i64))]
    pub flow_log_rate: u32,

    /// TOML file with the services and settings (instead of --vip and
    /// --backend). See xdplb.example.toml.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        // The file gives each service its own [service.check].
        conflicts_with_all = [
            "vip", "backend", "port", "proto",
            "check", "check_interval", "check_timeout", "rise", "fall", "on_down",
        ]
    )]
    pub config: Option<PathBuf>,

    /// Virtual IP of the one service to balance (single-service mode).
    #[arg(long, value_name = "ADDR", value_parser = parse_vip, requires = "backend")]
    pub vip: Option<Ipv4Addr>,

    /// Port of the service on the VIP.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Protocol of the service.
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,

    /// A backend of the service, `IP:PORT` or `IP:PORT@WEIGHT` (weight 1 by
    /// default, 0 drains it). Repeat the flag for each backend.
    #[arg(long, value_name = "IP:PORT[@WEIGHT]", value_parser = parse_backend_flag, requires = "vip")]
    pub backend: Vec<BackendSpec>,

    /// Health check of the backends: `tcp` (connect), `http:PATH` or
    /// `https:PATH` (GET, expecting 200; https does not verify the
    /// certificate), or `none`. [default: https:/readyz on port 6443, tcp
    /// on other TCP ports, none for UDP]
    #[arg(long, value_name = "tcp|http:PATH|https:PATH|none", value_parser = parse_check_flag)]
    pub check: Option<CheckKind>,

    /// Time between two checks of a backend, at least 100ms (haproxy
    /// `inter`). [default: 2s]
    #[arg(long, value_name = "DURATION", value_parser = parse_check_interval)]
    pub check_interval: Option<Duration>,

    /// How long a check may take, at most the interval. [default: 1s, or
    /// the interval if shorter]
    #[arg(long, value_name = "DURATION", value_parser = parse_check_timeout)]
    pub check_timeout: Option<Duration>,

    /// Consecutive successful checks that bring a down backend back, 1-100.
    /// [default: 2]
    #[arg(long, value_name = "N", value_parser = parse_rise)]
    pub rise: Option<u32>,

    /// Consecutive failed checks that take a backend out, 1-100.
    /// [default: 3]
    #[arg(long, value_name = "N", value_parser = parse_fall)]
    pub fall: Option<u32>,

    /// What happens to the connections of a backend that goes down.
    /// [default: keep]
    #[arg(long, value_enum)]
    pub on_down: Option<OnDown>,

    /// Source address of the packets sent to backends (overrides the file).
    /// Repeat it for a pool of addresses (at most 16): each adds a full
    /// range of NAT ports per backend. Default: the interface's primary
    /// IPv4 address.
    #[arg(long, value_name = "ADDR", value_parser = parse_snat_ip)]
    pub snat_ip: Vec<Ipv4Addr>,

    /// Source ports used for NAT towards backends, per SNAT address and
    /// backend: `LO-HI`, at least 64 ports from 1024 up, or `auto`: the
    /// largest block from 1024 up outside the kernel's ephemeral range
    /// (ip_local_port_range; 1024-32767 with the kernel's default)
    /// (overrides the file). [default: auto]
    #[arg(long, value_name = "LO-HI|auto", value_parser = parse_nat_ports)]
    pub nat_ports: Option<NatPorts>,

    /// Size of the flow table, at least 1024; each NATed connection takes two
    /// entries; a full table refuses new connections (overrides the file).
    /// [default: 262144]
    #[arg(long, value_name = "N", value_parser = parse_max_flows)]
    pub max_flows: Option<u32>,

    /// Size of the table of half-open TCP connections, at least 1024; each
    /// takes two entries until the client's ACK completes its handshake. A
    /// full table evicts the oldest, so a SYN flood cannot fill the flow
    /// table or lock clients out; a larger one gives handshakes longer
    /// under a flood (overrides the file). [default: 131072]
    #[arg(long, value_name = "N", value_parser = parse_max_embryos)]
    pub max_embryos: Option<u32>,

    /// On SIGTERM leave the program attached and its maps pinned, so traffic
    /// keeps flowing until the next xdplb adopts them.
    #[arg(long)]
    pub keep_dataplane: bool,

    /// Do not add the VIP to the interface (something else owns it). By
    /// default xdplb adds VIP/32 at start and removes it at exit.
    #[arg(long)]
    pub no_assign_vip: bool,

    /// Own the VIPs through VRRP with this virtual router id (keepalived's
    /// `virtual_router_id`, 1-255), as one instance over every service's
    /// VIP; without it the node holds its VIPs alone.
    #[arg(long, value_name = "N", value_parser = parse_vrid)]
    pub vrid: Option<u8>,

    /// VRRP priority, 1-254 (255: the address owner); the highest is master.
    /// [default: 100]
    #[arg(long, value_name = "N", value_parser = parse_priority, requires = "vrid")]
    pub priority: Option<u8>,

    /// Time between VRRP adverts: whole seconds for VRRPv2, down to 10ms for
    /// VRRPv3. [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "vrid")]
    pub advert_int: Option<Duration>,

    /// VRRP version, 2 (keepalived's default) or 3. [default: 2]
    #[arg(long, value_name = "2|3", value_parser = clap::value_parser!(u8).range(2..=3), requires = "vrid")]
    pub vrrp_version: Option<u8>,

    /// VRRPv2 PASS authentication (keepalived's `auth_pass`).
    #[arg(long, value_name = "S", requires = "vrid")]
    pub auth_pass: Option<String>,

    /// Do not take mastership from a lower-priority master (keepalived's
    /// `nopreempt`).
    #[arg(long, requires = "vrid")]
    pub no_preempt: bool,

    /// Send adverts to this peer instead of the multicast group (repeat it
    /// for each peer); for networks without multicast.
    #[arg(long, value_name = "IP", value_parser = parse_unicast_peer, requires = "vrid")]
    pub unicast_peer: Vec<Ipv4Addr>,

    /// Initial VRRP state (keepalived's `state MASTER|BACKUP`). [default:
    /// backup]
    #[arg(long, value_enum, requires = "vrid")]
    pub state: Option<InitialState>,

    /// The admin endpoint (/metrics, /status, the status page at /, and
    /// the commands): where the agent listens, and where the subcommands
    /// reach it. `off` turns it off. Anyone who can reach it can drain
    /// backends and reload: keep it on the node (or set --admin-token). An
    /// address given here must be free, or the agent does not start; the
    /// default is taken if it can be. [default: 127.0.0.1:9640]
    #[arg(long, value_name = "ADDR:PORT|off", value_parser = parse_admin, global = true)]
    pub admin: Option<Admin>,

    /// Require this token on the admin endpoint: `Authorization: Bearer
    /// TOKEN`, or basic auth with any user and TOKEN as the password (a
    /// browser asks for it).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "XDPLB_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `xdplb <command>` asks a running agent, through `--admin`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show the running agent's services, backends and their health,
    /// traffic, flows and VRRP role.
    Status {
        /// Print the JSON of /status instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Drain a backend (no new connections; established ones go on) or
    /// enable it again. Until the agent restarts; for a lasting drain set
    /// its weight to 0.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Re-read the configuration, as SIGHUP does, and print the outcome: a
    /// configuration that fails validation is rejected with its error and
    /// the running one stays.
    Reload,
}

#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum BackendAction {
    /// Send no new connections to the backend.
    Drain {
        /// The backend, as configured.
        #[arg(value_name = "IP:PORT")]
        addr: SocketAddrV4,
    },
    /// Undo a drain.
    Enable {
        #[arg(value_name = "IP:PORT")]
        addr: SocketAddrV4,
    },
}

/// Where the admin endpoint listens unless told otherwise: on the node,
/// never on a VIP.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9640));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Off,
    At(SocketAddr),
}

fn parse_admin(s: &str) -> Result<Admin, String> {
    if s == "off" {
        return Ok(Admin::Off);
    }
    s.parse()
        .map(Admin::At)
        .map_err(|_| format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:9640) nor `off`"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitialState {
    Master,
    Backup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

impl Args {
    /// Where the admin endpoint is (`--admin`, or the default).
    pub fn admin(&self) -> Admin {
        self.admin.unwrap_or(Admin::At(DEFAULT_ADMIN))
    }

    /// The interface the agent attaches to (empty only for a subcommand,
    /// which has none).
    pub fn iface(&self) -> &str {
        self.iface.as_deref().unwrap_or_default()
    }

    /// The flow log's rate limit for the data plane: off unless it logs.
    pub fn flow_log_limit(&self) -> FlowLogLimit {
        match self.flow_log {
            Dest::Off => FlowLogLimit::OFF,
            _ => FlowLogLimit {
                rate: self.flow_log_rate,
                burst: self.flow_log_rate,
            },
        }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(lb_common::maps::DEFAULT_PIN_ROOT).join(self.iface()))
    }

    /// What the flags say about the configuration, for
    /// [`Config::load`](crate::config::Config::load): the file or the single
    /// service, and the settings that win over the file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            file: self.config.clone(),
            vip: self.vip,
            port: self.port,
            proto: self.proto,
            backends: self.backend.clone(),
            check: self.check.clone(),
            check_interval: self.check_interval,
            check_timeout: self.check_timeout,
            rise: self.rise,
            fall: self.fall,
            on_down: self.on_down,
            snat_ips: self.snat_ip.clone(),
            nat_ports: self.nat_ports,
            max_flows: self.max_flows,
            max_embryos: self.max_embryos,
            // Each flag turns its setting one way only; without it the file
            // decides.
            keep_dataplane: self.keep_dataplane.then_some(true),
            assign_vip: self.no_assign_vip.then_some(false),
            vrrp: self.vrid.map(|vrid| VrrpFlags {
                vrid,
                priority: self.priority,
                advert_int: self.advert_int,
                version: self.vrrp_version,
                auth_pass: self.auth_pass.clone(),
                no_preempt: self.no_preempt,
                unicast_peers: self.unicast_peer.clone(),
                initial_master: self.state.map(|s| s == InitialState::Master),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
