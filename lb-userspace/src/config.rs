//! What to balance: the services, their backends and the data plane's
//! settings, from the single-service flags or a TOML file, checked and
//! defaulted before anything is attached.
//!
//! Checking happens in two steps: each value on its own where it is read
//! (address syntax, ranges: the same functions serve clap and the file),
//! then the whole in `Draft::finish` (duplicates, limits, cross-references).
//! Errors name the value and, for a file, `FILE:LINE`.

use std::{
    collections::{HashMap, HashSet},
    fmt, fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use clap::ValueEnum;
use lb_common::{
    maglev::{ENTRIES_PER_BACKEND, MAX_TABLE_SIZE, TABLE_SIZES},
    maps::DEFAULT_MAX_FLOWS,
    service::{DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP},
};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    cli::{Args, parse_duration},
    health::tls,
};

/// kube-apiserver's port, the service port when none is given.
pub const DEFAULT_PORT: u16 = 6443;
/// NAT source ports when none are given: below the kernel's default
/// ephemeral range (32768–60999), so the node's own connections never
/// collide with them.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (20000, 29999);
/// Fewer ports than this could not carry a useful number of connections.
pub const MIN_NAT_PORTS: u32 = 64;
/// A smaller flow table would be exhausted by a handful of busy clients.
pub const MIN_MAX_FLOWS: u32 = 1024;
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
    /// Source of NATed packets; `None`: the interface's primary IPv4,
    /// resolved by the agent.
    pub snat_ip: Option<Ipv4Addr>,
    /// NAT source ports, inclusive.
    pub nat_ports: (u16, u16),
    pub max_flows: u32,
    /// On SIGTERM leave the program attached and the maps pinned.
    pub keep_dataplane: bool,
    /// Add the VIPs to the interface at start and remove them at exit.
    pub assign_vip: bool,
    /// Slots in each service's Maglev table, one of [`TABLE_SIZES`].
    pub maglev_table_size: u32,
    pub timeouts: Timeouts,
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

/// One `--backend IP:PORT[@WEIGHT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub weight: u32,
}

impl Config {
    /// The configuration the command line asks for: the single service of
    /// `--vip`/`--backend`, or the `--config` file with the flags that were
    /// given overriding it. Call it again on SIGHUP to re-read the file and
    /// keep the overrides.
    pub fn from_args(args: &Args) -> Result<Config> {
        match &args.config {
            Some(path) => {
                let text = read(path)?;
                let name = path.display().to_string();
                let src = Source::File {
                    name: &name,
                    text: &text,
                };
                let mut draft = Draft::from_toml(&src, &text)?;
                draft.override_with(args);
                draft.finish(&src)
            }
            None => Draft::from_flags(args)?.finish(&Source::CommandLine),
        }
    }
}

// The agent reads and re-reads (SIGHUP) through `from_args`, which keeps the
// command-line overrides; these serve the tests and tools that check a file.
#[allow(dead_code, reason = "file-only entry points; the agent uses from_args")]
impl Config {
    /// A configuration file's contents; `source` names it in messages.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config> {
        let src = Source::File { name: source, text };
        Draft::from_toml(&src, text)?.finish(&src)
    }

    /// Reads and checks a configuration file, without command-line
    /// overrides.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = read(path)?;
        Config::from_toml_str(&text, &path.display().to_string())
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .with_context(|| format!("config error: cannot read {}", path.display()))
}

// ---------------------------------------------------------------------------
// Single values, shared by clap's value parsers and the file.

/// What is wrong with `ip` as a VIP, backend or source address, if anything.
fn unusable(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else {
        None
    }
}

/// A unicast IPv4 address; `what` names it in messages ("VIP", "snat_ip").
fn parse_unicast(what: &str, s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = match s.parse() {
        Ok(ip) => ip,
        Err(_) => {
            // keepalived's virtual_ipaddress is written with a prefix length.
            if let Some((addr, _)) = s.split_once('/')
                && addr.parse::<Ipv4Addr>().is_ok()
            {
                return Err(format!(
                    "{what} '{s}': write the address without a prefix length ('{addr}')"
                ));
            }
            return Err(format!("{what} '{s}' is not an IPv4 address"));
        }
    };
    match unusable(ip) {
        Some(why) => Err(format!("{what} '{s}' is {why}")),
        None => Ok(ip),
    }
}

/// `--vip`, and `vip` in the file.
pub fn parse_vip(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("VIP", s)
}

/// `--snat-ip`, and `snat_ip` in the file.
pub fn parse_snat_ip(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("snat_ip", s)
}

/// A backend's `IP:PORT`; `label` is what the user wrote, for messages.
fn parse_backend_addr(label: &str, s: &str) -> Result<SocketAddrV4, String> {
    let bad = |why: &str| format!("backend '{label}': {why}");
    if s.parse::<SocketAddrV6>().is_ok() || s.parse::<Ipv6Addr>().is_ok() {
        return Err(bad("not an IPv4 address (xdplb balances IPv4 only)"));
    }
    let Some((ip, port)) = s.rsplit_once(':') else {
        return Err(if s.parse::<Ipv4Addr>().is_ok() {
            bad("no port (write IP:PORT, e.g. 10.0.0.1:6443)")
        } else {
            bad("expected IP:PORT, e.g. 10.0.0.1:6443")
        });
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| {
        if ip.chars().any(|c| c.is_ascii_alphabetic()) {
            bad("invalid IPv4 address (host names are not resolved)")
        } else {
            bad("invalid IPv4 address")
        }
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(&format!("invalid port '{port}'")))?;
    if port == 0 {
        return Err(bad("port 0 is not a port"));
    }
    if let Some(why) = unusable(ip) {
        return Err(bad(&format!("{ip} is {why}")));
    }
    Ok(SocketAddrV4::new(ip, port))
}

fn check_weight(label: &str, weight: i64) -> Result<u32, String> {
    match u32::try_from(weight) {
        Err(_) if weight < 0 => Err(format!("backend '{label}': weight {weight} is negative")),
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(format!(
            "backend '{label}': weight {weight} is above the maximum {MAX_WEIGHT}"
        )),
    }
}

/// `--backend IP:PORT[@WEIGHT]`.
pub fn parse_backend_flag(s: &str) -> Result<BackendSpec, String> {
    let (addr, weight) = match s.split_once('@') {
        Some((addr, w)) => {
            let w: i64 = w
                .parse()
                .map_err(|_| format!("backend '{s}': weight '{w}' is not a whole number"))?;
            (addr, check_weight(s, w)?)
        }
        None => (s, 1),
    };
    Ok(BackendSpec {
        addr: parse_backend_addr(s, addr)?,
        weight,
    })
}

/// `--nat-ports`, and `nat_ports` in the file: `LO-HI`, inclusive.
pub fn parse_nat_ports(s: &str) -> Result<(u16, u16), String> {
    let bad = |why: String| format!("nat_ports '{s}': {why}");
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| bad("write LO-HI, e.g. 20000-29999".into()))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| bad(format!("'{p}' is not a port number")))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo < 1024 {
        return Err(bad(format!(
            "{lo} is below 1024; ports under 1024 belong to the node's services"
        )));
    }
    if lo > hi {
        return Err(bad(format!("{lo} is above {hi}")));
    }
    let count = u32::from(hi) - u32::from(lo) + 1;
    if count < MIN_NAT_PORTS {
        return Err(bad(format!(
            "only {count} ports; at least {MIN_NAT_PORTS} are needed"
        )));
    }
    Ok((lo, hi))
}

fn check_max_flows(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if n >= MIN_MAX_FLOWS => Ok(n),
        Err(_) if n > 0 => Err(format!(
            "max_flows {n} is above the maximum of {}",
            u32::MAX
        )),
        _ => Err(format!(
            "max_flows {n} is below the minimum of {MIN_MAX_FLOWS}"
        )),
    }
}

/// `maglev_table_size` in the file: one of the primes the builder supports.
fn check_table_size(n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| TABLE_SIZES.contains(n))
        .ok_or_else(|| format!("maglev_table_size {n} is not one of {TABLE_SIZES:?}"))
}

/// A service's `port` in the file.
fn check_port(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {n} is not a port (1-65535)"))
}

/// `--max-flows`.
pub fn parse_max_flows(s: &str) -> Result<u32, String> {
    let n = s
        .parse::<i64>()
        .map_err(|_| format!("max_flows '{s}' is not a whole number"))?;
    check_max_flows(n)
}

/// `--check`: `tcp`, `http:PATH`, `https:PATH` or `none`; http(s) expect
/// 200, and https skips certificate verification (the file can say more).
pub fn parse_check_flag(s: &str) -> Result<CheckKind, String> {
    let kinds = "use tcp, http:PATH, https:PATH or none";
    match s.split_once(':') {
        None => match s {
            "none" => Ok(CheckKind::None),
            "tcp" => Ok(CheckKind::Tcp),
            "http" | "https" => Err(format!(
                "check '{s}': give the path to GET, e.g. {s}:{DEFAULT_CHECK_PATH}"
            )),
            _ => Err(format!("check '{s}': unknown kind; {kinds}")),
        },
        Some(("http", path)) => Ok(CheckKind::Http {
            path: check_path(path)?,
            expect: DEFAULT_EXPECT,
        }),
        Some(("https", path)) => Ok(CheckKind::Https {
            path: check_path(path)?,
            expect: DEFAULT_EXPECT,
            tls: TlsCheck::default(),
        }),
        Some((kind @ ("tcp" | "none"), _)) => {
            Err(format!("check '{s}': {kind} takes no path; {kinds}"))
        }
        Some((kind, _)) => Err(format!("check '{s}': unknown kind '{kind}'; {kinds}")),
    }
}

/// The path of an HTTP check. It goes into the request line as written, so
/// a space or a line break would make another request of it.
fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "check path '{path}' must start with '/' (e.g. {DEFAULT_CHECK_PATH})"
        ));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "check path {path:?} contains {c:?}; percent-encode spaces and non-ASCII characters"
        ));
    }
    Ok(path.to_owned())
}

/// `expect` in the file: the HTTP status a healthy backend answers.
fn check_expect(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("check expect {n} is not an HTTP status (100-599)"))
}

/// `rise` or `fall` (`key`), from the file or a flag.
fn check_count(key: &str, n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_RISE_FALL).contains(n))
        .ok_or_else(|| format!("check {key} {n} must be between 1 and {MAX_RISE_FALL}"))
}

fn parse_count(key: &str, s: &str) -> Result<u32, String> {
    let n = s
        .parse::<i64>()
        .map_err(|_| format!("check {key} '{s}' is not a whole number"))?;
    check_count(key, n)
}

/// `--rise`.
pub fn parse_rise(s: &str) -> Result<u32, String> {
    parse_count("rise", s)
}

/// `--fall`.
pub fn parse_fall(s: &str) -> Result<u32, String> {
    parse_count("fall", s)
}

/// `--check-interval`, and `interval` in the file.
pub fn parse_check_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|m| format!("check interval: {m}"))?;
    if d < MIN_CHECK_INTERVAL {
        return Err(format!(
            "check interval '{s}' is below the minimum of {MIN_CHECK_INTERVAL:?}"
        ));
    }
    Ok(d)
}

/// `--check-timeout`, and `timeout` in the file.
pub fn parse_check_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|m| format!("check timeout: {m}"))?;
    if d.is_zero() {
        return Err(format!("check timeout '{s}' must be longer than 0"));
    }
    Ok(d)
}

/// The timeout when none is given: the default, or the interval if that is
/// shorter.
fn default_timeout(interval: Duration) -> Duration {
    DEFAULT_CHECK_TIMEOUT.min(interval)
}

/// Checks of one backend must not overlap.
fn check_timing(interval: Duration, timeout: Duration) -> Result<(), String> {
    if timeout > interval {
        return Err(format!(
            "check timeout {timeout:?} is longer than the interval {interval:?}; a check must finish before the next one starts"
        ));
    }
    Ok(())
}

/// `sni` in the file: a DNS name (or an IP address) to send and verify.
fn check_sni(s: &str) -> Result<String, String> {
    match ServerName::try_from(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(_) => Err(format!("sni '{s}' is not a valid DNS name")),
    }
}

// ---------------------------------------------------------------------------
// Where a value came from, so that errors can point at it.

enum Source<'a> {
    CommandLine,
    File { name: &'a str, text: &'a str },
}

/// The place to blame for an error.
#[derive(Clone, Debug)]
enum Loc {
    /// A byte range in the file.
    Span(Range<usize>),
    /// A flag.
    CommandLine,
    /// The configuration as a whole.
    Whole,
}

impl Source<'_> {
    fn error(&self, loc: &Loc, msg: impl fmt::Display) -> anyhow::Error {
        match (self, loc) {
            (Source::File { name, text }, Loc::Span(span)) => {
                anyhow!("config error: {name}:{}: {msg}", line_of(text, span.start))
            }
            (Source::File { name, .. }, Loc::Whole) => anyhow!("config error: {name}: {msg}"),
            _ => anyhow!("config error: command line: {msg}"),
        }
    }

    /// A value that failed its own check, blamed where it was written.
    fn check<T>(&self, loc: &Loc, r: Result<T, String>) -> Result<T> {
        r.map_err(|msg| self.error(loc, msg))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------
// The file as written. Everything optional that has a default; spans kept
// for the values later checks may blame.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    snat_ip: Option<Spanned<String>>,
    nat_ports: Option<Spanned<String>>,
    // Integers are read as i64 (TOML's own type) and range-checked here,
    // so that the message names the key, not just "expected u16".
    max_flows: Option<Spanned<i64>>,
    keep_dataplane: Option<bool>,
    assign_vip: Option<bool>,
    maglev_table_size: Option<Spanned<i64>>,
    timeouts: Option<RawTimeouts>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
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

/// `[service.check]`. Only what is written; defaults depend on the port.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Option<Spanned<RawKind>>,
    path: Option<Spanned<String>>,
    expect: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    on_down: Option<OnDown>,
    insecure_skip_verify: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    sni: Option<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Tcp,
    Http,
    Https,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    name: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// Parsed values, before the checks that need all of them.

struct Draft {
    services: Vec<DraftService>,
    snat_ip: Option<(Ipv4Addr, Loc)>,
    nat_ports: (u16, u16),
    max_flows: u32,
    keep_dataplane: bool,
    assign_vip: bool,
    maglev_table_size: Option<(u32, Loc)>,
    timeouts: Timeouts,
}

struct DraftService {
    name: Option<(String, Loc)>,
    vip: Ipv4Addr,
    port: u16,
    proto: Proto,
    /// The service's VIP, blamed for what is wrong with the service.
    loc: Loc,
    backends: Vec<DraftBackend>,
    check: CheckConfig,
}

struct DraftBackend {
    addr: SocketAddrV4,
    weight: u32,
    name: Option<String>,
    loc: Loc,
}

fn span<T>(s: &Spanned<T>) -> Loc {
    Loc::Span(s.span())
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

/// The check of the `--vip` service. clap checked each flag; what is left
/// is how they fit together.
fn check_from_flags(args: &Args) -> Result<CheckConfig> {
    let default = CheckConfig::default_for(args.port, args.proto);
    let interval = args.check_interval.unwrap_or(default.interval);
    let timeout = args
        .check_timeout
        .unwrap_or_else(|| default_timeout(interval));
    Source::CommandLine.check(&Loc::CommandLine, check_timing(interval, timeout))?;
    Ok(CheckConfig {
        kind: args.check.clone().unwrap_or(default.kind),
        interval,
        timeout,
        rise: args.rise.unwrap_or(default.rise),
        fall: args.fall.unwrap_or(default.fall),
        on_down: args.on_down.unwrap_or(default.on_down),
    })
}

/// A service's `[service.check]`; what it leaves out is the default for the
/// service's port and protocol.
fn check_from_toml(src: &Source, c: RawCheck, port: u16, proto: Proto) -> Result<CheckConfig> {
    let default = CheckConfig::default_for(port, proto);
    let interval = match &c.interval {
        Some(s) => src.check(&span(s), parse_check_interval(s.get_ref()))?,
        None => default.interval,
    };
    let timeout = match &c.timeout {
        Some(s) => {
            let t = src.check(&span(s), parse_check_timeout(s.get_ref()))?;
            src.check(&span(s), check_timing(interval, t))?;
            t
        }
        None => default_timeout(interval),
    };
    let count = |key: &str, n: &Option<Spanned<i64>>, default: u32| match n {
        Some(n) => src.check(&span(n), check_count(key, *n.get_ref())),
        None => Ok(default),
    };
    let rise = count("rise", &c.rise, default.rise)?;
    let fall = count("fall", &c.fall, default.fall)?;

    // Keys that mean nothing to the check's kind are mistakes (a `path`
    // on a tcp check would otherwise be silently ignored).
    let (kind, whose) = match &c.kind {
        Some(k) => (*k.get_ref(), String::new()),
        None => {
            let kind = match default.kind {
                CheckKind::None => RawKind::None,
                CheckKind::Tcp => RawKind::Tcp,
                CheckKind::Http { .. } => RawKind::Http,
                CheckKind::Https { .. } => RawKind::Https,
            };
            let whose = match proto {
                Proto::Udp => " (the default for UDP services; set kind)".into(),
                Proto::Tcp => format!(" (the default for port {port}; set kind)"),
            };
            (kind, whose)
        }
    };
    let kind_name = kind.name();
    let http_keys = [
        ("path", c.path.as_ref().map(span)),
        ("expect", c.expect.as_ref().map(span)),
    ];
    if !matches!(kind, RawKind::Http | RawKind::Https)
        && let Some((key, Some(loc))) = http_keys.iter().find(|(_, loc)| loc.is_some())
    {
        return Err(src.error(
            loc,
            format!(
                "{key} is for kind \"http\" or \"https\"; this check is \"{kind_name}\"{whose}"
            ),
        ));
    }
    let tls_keys = [
        (
            "insecure_skip_verify",
            c.insecure_skip_verify.as_ref().map(span),
        ),
        ("ca_file", c.ca_file.as_ref().map(span)),
        ("cert_file", c.cert_file.as_ref().map(span)),
        ("key_file", c.key_file.as_ref().map(span)),
        ("sni", c.sni.as_ref().map(span)),
    ];
    if kind != RawKind::Https
        && let Some((key, Some(loc))) = tls_keys.iter().find(|(_, loc)| loc.is_some())
    {
        return Err(src.error(
            loc,
            format!("{key} is for kind \"https\"; this check is \"{kind_name}\"{whose}"),
        ));
    }

    let path = match &c.path {
        Some(p) => src.check(&span(p), check_path(p.get_ref()))?,
        None => DEFAULT_CHECK_PATH.into(),
    };
    let expect = match &c.expect {
        Some(n) => src.check(&span(n), check_expect(*n.get_ref()))?,
        None => DEFAULT_EXPECT,
    };
    let kind = match kind {
        RawKind::None => CheckKind::None,
        RawKind::Tcp => CheckKind::Tcp,
        RawKind::Http => CheckKind::Http { path, expect },
        RawKind::Https => CheckKind::Https {
            path,
            expect,
            tls: tls_from_toml(src, &c)?,
        },
    };
    Ok(CheckConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
        on_down: c.on_down.unwrap_or(default.on_down),
    })
}

impl RawKind {
    fn name(self) -> &'static str {
        match self {
            RawKind::None => "none",
            RawKind::Tcp => "tcp",
            RawKind::Http => "http",
            RawKind::Https => "https",
        }
    }
}

/// The TLS keys of an https check. The files are read here, so that a
/// wrong path, or a key where the certificate should be, is refused at load
/// time with the line that names it, not found by the first check.
fn tls_from_toml(src: &Source, c: &RawCheck) -> Result<TlsCheck> {
    let file = |key: &str, v: &Option<Spanned<String>>| -> Result<Option<(PathBuf, Loc)>> {
        let Some(v) = v else { return Ok(None) };
        let loc = span(v);
        if v.get_ref().trim().is_empty() {
            return Err(src.error(&loc, format!("{key} is empty")));
        }
        Ok(Some((PathBuf::from(v.get_ref()), loc)))
    };
    let ca = file("ca_file", &c.ca_file)?;
    let cert = file("cert_file", &c.cert_file)?;
    let key = file("key_file", &c.key_file)?;

    let insecure_skip_verify = match (&c.insecure_skip_verify, &ca) {
        (Some(v), Some(_)) if *v.get_ref() => {
            return Err(src.error(
                &span(v),
                "insecure_skip_verify = true contradicts ca_file: verify against the CA or skip verification, not both",
            ));
        }
        (Some(v), None) if !*v.get_ref() => {
            return Err(src.error(
                &span(v),
                "insecure_skip_verify = false needs a ca_file to verify against (xdplb has no built-in CA list)",
            ));
        }
        (_, ca) => ca.is_none(),
    };
    match (&cert, &key) {
        (Some((_, loc)), None) => {
            return Err(src.error(
                loc,
                "cert_file needs key_file, the client certificate's private key",
            ));
        }
        (None, Some((_, loc))) => {
            return Err(src.error(loc, "key_file needs cert_file, the client certificate"));
        }
        _ => {}
    }
    let pem = |r: Result<()>| r.map_err(|e| format!("{e:#}"));
    for (what, file) in [("ca_file", &ca), ("cert_file", &cert)] {
        if let Some((path, loc)) = file {
            src.check(loc, pem(tls::load_certs(what, path).map(drop)))?;
        }
    }
    if let Some((path, loc)) = &key {
        src.check(loc, pem(tls::load_key("key_file", path).map(drop)))?;
    }
    let sni = match &c.sni {
        Some(s) => Some(src.check(&span(s), check_sni(s.get_ref()))?),
        None => None,
    };

    let blame = cert
        .as_ref()
        .or(ca.as_ref())
        .map_or(Loc::Whole, |(_, loc)| loc.clone());
    let tls = TlsCheck {
        insecure_skip_verify,
        ca_file: ca.map(|(p, _)| p),
        cert_file: cert.map(|(p, _)| p),
        key_file: key.map(|(p, _)| p),
        sni,
    };
    // What only the files together can tell: a key that is not the
    // certificate's, a CA certificate rustls cannot use.
    src.check(&blame, pem(tls::client_config(&tls).map(drop)))?;
    Ok(tls)
}

impl Draft {
    fn from_flags(args: &Args) -> Result<Draft> {
        let src = Source::CommandLine;
        let vip = args.vip.ok_or_else(|| {
            src.error(
                &Loc::CommandLine,
                "give --vip and --backend, or --config FILE",
            )
        })?;
        let backends = args
            .backend
            .iter()
            .map(|b| DraftBackend {
                addr: b.addr,
                weight: b.weight,
                name: None,
                loc: Loc::CommandLine,
            })
            .collect();
        let mut draft = Draft {
            services: vec![DraftService {
                name: None,
                vip,
                port: args.port,
                proto: args.proto,
                loc: Loc::CommandLine,
                backends,
                check: check_from_flags(args)?,
            }],
            snat_ip: None,
            nat_ports: DEFAULT_NAT_PORTS,
            max_flows: DEFAULT_MAX_FLOWS,
            keep_dataplane: false,
            assign_vip: true,
            maglev_table_size: None,
            timeouts: Timeouts::default(),
        };
        draft.override_with(args);
        Ok(draft)
    }

    fn from_toml(src: &Source, text: &str) -> Result<Draft> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let loc = e.span().map_or(Loc::Whole, Loc::Span);
            // The message alone: its Display repeats the line with a caret
            // over several lines, and we say FILE:LINE ourselves.
            src.error(&loc, e.message().trim())
        })?;

        let snat_ip = match raw.snat_ip {
            Some(s) => Some((src.check(&span(&s), parse_snat_ip(s.get_ref()))?, span(&s))),
            None => None,
        };
        let nat_ports = match raw.nat_ports {
            Some(s) => src.check(&span(&s), parse_nat_ports(s.get_ref()))?,
            None => DEFAULT_NAT_PORTS,
        };
        let max_flows = match raw.max_flows {
            Some(n) => src.check(&span(&n), check_max_flows(*n.get_ref()))?,
            None => DEFAULT_MAX_FLOWS,
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

        Ok(Draft {
            services,
            snat_ip,
            nat_ports,
            max_flows,
            keep_dataplane: raw.keep_dataplane.unwrap_or(false),
            assign_vip: raw.assign_vip.unwrap_or(true),
            maglev_table_size,
            timeouts,
        })
    }

    /// Flags given on the command line win over the file.
    fn override_with(&mut self, args: &Args) {
        if let Some(ip) = args.snat_ip {
            self.snat_ip = Some((ip, Loc::CommandLine));
        }
        if let Some(ports) = args.nat_ports {
            self.nat_ports = ports;
        }
        if let Some(n) = args.max_flows {
            self.max_flows = n;
        }
        if args.keep_dataplane {
            self.keep_dataplane = true;
        }
        if args.no_assign_vip {
            self.assign_vip = false;
        }
    }

    /// The checks that need the whole configuration, then the defaults
    /// that depend on it.
    fn finish(self, src: &Source) -> Result<Config> {
        if self.services.is_empty() {
            return Err(src.error(
                &Loc::Whole,
                "no services: add a [[service]] with a vip and at least one [[service.backend]]",
            ));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err(src.error(
                &Loc::Whole,
                format!(
                    "{} services; at most {MAX_SERVICES} are supported",
                    self.services.len()
                ),
            ));
        }
        let vips: HashSet<Ipv4Addr> = self.services.iter().map(|s| s.vip).collect();

        let mut services: Vec<ServiceConfig> = Vec::with_capacity(self.services.len());
        let mut seen_keys: HashMap<(Ipv4Addr, u16, Proto), String> = HashMap::new();
        let mut seen_names: HashSet<String> = HashSet::new();
        // Where each service was written, for the checks below the loop.
        let mut locs = Vec::with_capacity(self.services.len());
        for s in self.services {
            let (name, name_loc) = s
                .name
                .unwrap_or_else(|| (format!("{}:{}/{}", s.vip, s.port, s.proto), s.loc.clone()));
            if let Some(first) = seen_keys.insert((s.vip, s.port, s.proto), name.clone()) {
                return Err(src.error(
                    &s.loc,
                    format!(
                        "service {}:{}/{} is defined twice (\"{first}\" and \"{name}\")",
                        s.vip, s.port, s.proto
                    ),
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(src.error(&name_loc, format!("service name \"{name}\" is used twice")));
            }
            if s.backends.is_empty() {
                return Err(src.error(&s.loc, format!("service \"{name}\" has no backends")));
            }
            let mut seen_addrs = HashSet::new();
            for b in &s.backends {
                if !seen_addrs.insert(b.addr) {
                    return Err(src.error(
                        &b.loc,
                        format!("backend \"{}\" appears twice in service \"{name}\"", b.addr),
                    ));
                }
                if vips.contains(b.addr.ip()) {
                    return Err(src.error(
                        &b.loc,
                        format!(
                            "backend \"{}\" of service \"{name}\" is on a VIP of this balancer",
                            b.addr
                        ),
                    ));
                }
            }
            if s.backends.iter().all(|b| b.weight == 0) {
                return Err(src.error(
                    &s.loc,
                    format!(
                        "every backend of service \"{name}\" has weight 0; at least one must be above 0"
                    ),
                ));
            }
            locs.push(s.loc);
            services.push(ServiceConfig {
                name,
                vip: s.vip,
                port: s.port,
                proto: s.proto,
                backends: s
                    .backends
                    .into_iter()
                    .map(|b| BackendConfig {
                        name: b.name.unwrap_or_else(|| b.addr.to_string()),
                        addr: b.addr,
                        weight: b.weight,
                    })
                    .collect(),
                check: s.check,
            });
        }

        let total: usize = services.iter().map(|s| s.backends.len()).sum();
        if total > MAX_BACKENDS as usize {
            return Err(src.error(
                &Loc::Whole,
                format!("{total} backends in all; at most {MAX_BACKENDS} are supported"),
            ));
        }

        if let Some((ip, loc)) = &self.snat_ip
            && let Some(s) = services.iter().find(|s| s.vip == *ip)
        {
            return Err(src.error(
                loc,
                format!(
                    "snat_ip {ip} is the VIP of service \"{}\"; NATed packets need an address of their own",
                    s.name
                ),
            ));
        }

        // Maglev spreads a service over its table evenly only with enough
        // slots per backend (lb_common::maglev::ENTRIES_PER_BACKEND).
        let (largest, largest_loc) = services
            .iter()
            .zip(&locs)
            .max_by_key(|(s, _)| s.backends.len())
            .expect("services is not empty");
        let need = largest.backends.len() * ENTRIES_PER_BACKEND;
        let fits = TABLE_SIZES.iter().copied().find(|&t| t as usize >= need);
        let table_size = match (self.maglev_table_size, fits) {
            (Some((size, _)), _) if size as usize >= need => size,
            (_, None) => {
                return Err(src.error(
                    largest_loc,
                    format!(
                        "service \"{}\" has {} backends; at most {} fit in one service",
                        largest.name,
                        largest.backends.len(),
                        MAX_TABLE_SIZE as usize / ENTRIES_PER_BACKEND
                    ),
                ));
            }
            (Some((size, loc)), Some(fits)) => {
                return Err(src.error(
                    &loc,
                    format!(
                        "maglev_table_size {size} is too small for service \"{}\" with {} backends: it needs at least {need} slots; use maglev_table_size = {fits} or larger",
                        largest.name,
                        largest.backends.len()
                    ),
                ));
            }
            (None, Some(fits)) => DEFAULT_TABLE_SIZE.max(fits),
        };

        Ok(Config {
            services,
            snat_ip: self.snat_ip.map(|(ip, _)| ip),
            nat_ports: self.nat_ports,
            max_flows: self.max_flows,
            keep_dataplane: self.keep_dataplane,
            assign_vip: self.assign_vip,
            maglev_table_size: table_size,
            timeouts: self.timeouts,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::Parser as _;

    use super::*;

    const FILE: &str = "/etc/xdplb.toml";

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

    fn from_flags(flags: &[&str]) -> Result<Config> {
        Config::from_args(&args(flags))
    }

    fn toml_err(text: &str) -> String {
        match Config::from_toml_str(text, FILE) {
            Ok(c) => panic!("should be refused:\n{text}\nparsed as {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[track_caller]
    fn assert_has(msg: &str, want: &str) {
        assert!(
            msg.contains(want),
            "expected {want:?} in the message, got {msg:?}"
        );
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// One service at `vip` with `backends` (addresses).
    fn service(vip: &str, backends: &[&str]) -> String {
        let mut t = format!("[[service]]\nvip = \"{vip}\"\n");
        for b in backends {
            t += &format!("  [[service.backend]]\n  address = \"{b}\"\n");
        }
        t
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
        assert_eq!(a.iface, "eth0");
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
                snat_ip: None,
                nat_ports: (20000, 29999),
                max_flows: DEFAULT_MAX_FLOWS,
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
        assert_eq!(c.snat_ip, Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(c.nat_ports, (40000, 40063));
        assert_eq!(c.max_flows, 1024);
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

    const FULL: &str = r#"
snat_ip = "192.168.31.71"
nat_ports = "30000-30999"
max_flows = 65536
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
                snat_ip: Some(Ipv4Addr::new(192, 168, 31, 71)),
                nat_ports: (30000, 30999),
                max_flows: 65536,
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
    fn minimal_file_gets_the_defaults() {
        let c = Config::from_toml_str(&service("10.0.0.100", &["10.0.0.1:6443"]), FILE).unwrap();
        let single = from_flags(&["--vip", "10.0.0.100", "--backend", "10.0.0.1:6443"]).unwrap();
        assert_eq!(c, single, "a minimal file means the same as the same flags");
    }

    #[test]
    fn example_file_parses() {
        let c = Config::from_toml_str(
            include_str!("../../xdplb.example.toml"),
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
                service("10.0.0.100", &["10.0.0.1:6443"])
                    .replace("vip =", "proto = \"sctp\"\nvip ="),
                format!("{FILE}:2: unknown variant `sctp`"),
            ),
            (
                service("10.0.0.100", &["10.0.0.1:6443"]) + "  weight = 70000\n",
                format!(
                    "{FILE}:5: backend '10.0.0.1:6443': weight 70000 is above the maximum 65535"
                ),
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
                service("10.0.0.100", &["10.0.0.1:6443"])
                    + &service("10.0.0.100", &["10.0.0.2:6443"]),
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
                format!(
                    "{FILE}:2: snat_ip 10.0.0.100 is the VIP of service \"10.0.0.100:6443/tcp\""
                ),
            ),
            (
                format!(
                    "snat_ip = \"10.0.0.1/24\"\n{}",
                    service("10.0.0.100", &["10.0.0.1:6443"])
                ),
                format!(
                    "{FILE}:1: snat_ip '10.0.0.1/24': write the address without a prefix length"
                ),
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

    #[test]
    fn maglev_table_must_fit_the_largest_service() {
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:6443")).collect();
        let three: Vec<&str> = three.iter().map(String::as_str).collect();
        let text = format!(
            "maglev_table_size = 251\n{}{}",
            service("10.0.0.100", &["10.0.0.1:6443"]),
            service("10.0.0.101", &three).replace("vip =", "name = \"big\"\nvip =")
        );
        assert_has(
            &toml_err(&text),
            &format!(
                "{FILE}:1: maglev_table_size 251 is too small for service \"big\" with 3 backends: it needs at least 300 slots; use maglev_table_size = 509 or larger"
            ),
        );
        // Without a size, one is chosen that fits.
        let many: Vec<String> = (0..200)
            .map(|i| format!("10.0.{}.{}:6443", i / 250, i % 250 + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let c = Config::from_toml_str(&service("10.1.0.100", &many), FILE).unwrap();
        assert_eq!(c.maglev_table_size, 32749);
        // Past 655 backends no table is large enough.
        let huge: Vec<String> = (0..656)
            .map(|i| format!("10.0.{}.{}:6443", i / 250, i % 250 + 1))
            .collect();
        let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
        assert_has(
            &toml_err(&service("10.1.0.100", &huge)),
            &format!(
                "{FILE}:2: service \"10.1.0.100:6443/tcp\" has 656 backends; at most 655 fit in one service"
            ),
        );
    }

    #[test]
    fn service_and_backend_limits() {
        let text: String = (0..=MAX_SERVICES)
            .map(|i| service(&format!("10.1.0.{}", i + 1), &["10.0.0.1:6443"]))
            .collect();
        assert_has(
            &toml_err(&text),
            &format!("config error: {FILE}: 33 services; at most {MAX_SERVICES} are supported"),
        );
        // 32 services of 129 backends: 4128 in all.
        let backends: Vec<String> = (0..129).map(|i| format!("10.0.0.{}:6443", i + 1)).collect();
        let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
        let text: String = (0..MAX_SERVICES)
            .map(|i| service(&format!("10.1.0.{}", i + 1), &backends))
            .collect();
        assert_has(
            &toml_err(&text),
            &format!(
                "config error: {FILE}: 4128 backends in all; at most {MAX_BACKENDS} are supported"
            ),
        );
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
                plain.snat_ip,
                plain.nat_ports,
                plain.max_flows,
                plain.keep_dataplane,
                plain.assign_vip
            ),
            (
                Some(Ipv4Addr::new(10, 0, 0, 10)),
                (30000, 30999),
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
                over.snat_ip,
                over.nat_ports,
                over.max_flows,
                over.keep_dataplane,
                over.assign_vip
            ),
            (
                Some(Ipv4Addr::new(10, 0, 0, 11)),
                (40000, 49999),
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
    fn missing_file_is_named() {
        let e = Config::load_file("/nonexistent/xdplb.toml").unwrap_err();
        assert_has(
            &format!("{e:#}"),
            "config error: cannot read /nonexistent/xdplb.toml: ",
        );
    }

    /// The check a service on 6443 gets when it names none.
    fn apiserver_check() -> CheckConfig {
        CheckConfig {
            kind: CheckKind::Https {
                path: "/readyz".into(),
                expect: 200,
                tls: TlsCheck::default(),
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            on_down: OnDown::Keep,
        }
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

    /// PEM files for the TLS keys: a CA (self-signed, so also usable as
    /// the client certificate), its key, and a key of another certificate.
    struct Pki {
        ca: std::path::PathBuf,
        key: std::path::PathBuf,
        other_key: std::path::PathBuf,
    }

    impl Pki {
        fn new() -> Pki {
            let write = |pem: String| {
                let (path, mut file) = tempfile("pem");
                file.write_all(pem.as_bytes()).unwrap();
                path
            };
            let gen_ = || {
                rcgen::generate_simple_self_signed(["kubernetes".to_owned()])
                    .expect("rcgen generates a certificate")
            };
            let (one, other) = (gen_(), gen_());
            Pki {
                ca: write(one.cert.pem()),
                key: write(one.signing_key.serialize_pem()),
                other_key: write(other.signing_key.serialize_pem()),
            }
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            for p in [&self.ca, &self.key, &self.other_key] {
                let _ = fs::remove_file(p);
            }
        }
    }

    #[test]
    fn check_in_the_file() {
        let pki = Pki::new();
        let (ca, key) = (pki.ca.display(), pki.key.display());
        let text = format!(
            "{}  [service.check]\n  ca_file = \"{ca}\"\n  cert_file = \"{ca}\"\n  key_file = \"{key}\"\n  sni = \"kubernetes\"\n  expect = 200\n",
            service("10.0.0.100", &["10.0.0.1:6443"])
        );
        let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            c.services[0].check,
            CheckConfig {
                kind: CheckKind::Https {
                    path: "/readyz".into(),
                    expect: 200,
                    tls: TlsCheck {
                        // Off by default once there is a CA to verify with.
                        insecure_skip_verify: false,
                        ca_file: Some(pki.ca.clone()),
                        cert_file: Some(pki.ca.clone()),
                        key_file: Some(pki.key.clone()),
                        sni: Some("kubernetes".into()),
                    },
                },
                ..apiserver_check()
            }
        );
        // The configuration it describes builds.
        let CheckKind::Https { tls: t, .. } = &c.services[0].check.kind else {
            unreachable!()
        };
        tls::client_config(t).expect("a checked TLS configuration builds");

        // Explicit values equal to the defaults are accepted.
        let text = format!(
            "{}  [service.check]\n  kind = \"https\"\n  insecure_skip_verify = true\n  on_down = \"keep\"\n  timeout = \"2s\"\n",
            service("10.0.0.100", &["10.0.0.1:6443"])
        );
        let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            c.services[0].check,
            CheckConfig {
                timeout: Duration::from_secs(2),
                ..apiserver_check()
            }
        );

        // http without a path checks /readyz; timing on its own.
        let text = format!(
            "{}  [service.check]\n  kind = \"http\"\n  interval = \"500ms\"\n",
            service("10.0.0.100", &["10.0.0.1:6443"])
        );
        let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            c.services[0].check,
            CheckConfig {
                kind: CheckKind::Http {
                    path: "/readyz".into(),
                    expect: 200
                },
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(500),
                ..apiserver_check()
            }
        );
    }

    #[test]
    fn check_errors_name_file_and_line() {
        let pki = Pki::new();
        let (ca, key, other_key) = (
            pki.ca.display().to_string(),
            pki.key.display().to_string(),
            pki.other_key.display().to_string(),
        );
        // The [service.check] keys start on line 6.
        let checked = |keys: &str| {
            let keys: String = keys.lines().map(|l| format!("  {l}\n")).collect();
            service("10.0.0.100", &["10.0.0.1:6443"]) + "  [service.check]\n" + &keys
        };
        for (keys, want) in [
            (
                "kind = \"tls\"".to_owned(),
                "6: unknown variant `tls`, expected one of `tcp`, `http`, `https`, `none`".to_owned(),
            ),
            (
                "kind = \"http\"\nretries = 3".into(),
                "7: unknown field `retries`".into(),
            ),
            (
                "path = \"readyz\"".into(),
                "6: check path 'readyz' must start with '/' (e.g. /readyz)".into(),
            ),
            (
                "path = \"/readyz\\r\\nHost: x\"".into(),
                "6: check path \"/readyz\\r\\nHost: x\" contains '\\r'".into(),
            ),
            (
                "expect = 99".into(),
                "6: check expect 99 is not an HTTP status (100-599)".into(),
            ),
            (
                "expect = 600".into(),
                "6: check expect 600 is not an HTTP status".into(),
            ),
            (
                "rise = 0".into(),
                "6: check rise 0 must be between 1 and 100".into(),
            ),
            (
                "rise = 2\nfall = 101".into(),
                "7: check fall 101 must be between 1 and 100".into(),
            ),
            (
                "fall = -1".into(),
                "6: check fall -1 must be between 1 and 100".into(),
            ),
            (
                "interval = \"50ms\"".into(),
                "6: check interval '50ms' is below the minimum of 100ms".into(),
            ),
            (
                "interval = \"soon\"".into(),
                "6: check interval: 'soon' is not a duration".into(),
            ),
            (
                "timeout = \"0s\"".into(),
                "6: check timeout '0s' must be longer than 0".into(),
            ),
            (
                "interval = \"1s\"\ntimeout = \"2s\"".into(),
                "7: check timeout 2s is longer than the interval 1s; a check must finish before the next one starts".into(),
            ),
            (
                "timeout = \"3s\"".into(),
                "6: check timeout 3s is longer than the interval 2s".into(),
            ),
            (
                "on_down = \"drop\"".into(),
                "6: unknown variant `drop`, expected `keep` or `reset`".into(),
            ),
            (
                "kind = \"tcp\"\npath = \"/readyz\"".into(),
                "7: path is for kind \"http\" or \"https\"; this check is \"tcp\"".into(),
            ),
            (
                "kind = \"none\"\nexpect = 200".into(),
                "7: expect is for kind \"http\" or \"https\"; this check is \"none\"".into(),
            ),
            (
                "kind = \"http\"\nca_file = \"/etc/kubernetes/pki/ca.crt\"".into(),
                "7: ca_file is for kind \"https\"; this check is \"http\"".into(),
            ),
            (
                "kind = \"http\"\ninsecure_skip_verify = true".into(),
                "7: insecure_skip_verify is for kind \"https\"; this check is \"http\"".into(),
            ),
            (
                "kind = \"tcp\"\nsni = \"kubernetes\"".into(),
                "7: sni is for kind \"https\"; this check is \"tcp\"".into(),
            ),
            (
                format!("kind = \"tcp\"\ncert_file = \"{ca}\"\nkey_file = \"{key}\""),
                "7: cert_file is for kind \"https\"; this check is \"tcp\"".into(),
            ),
            (
                format!("cert_file = \"{ca}\""),
                "6: cert_file needs key_file, the client certificate's private key".into(),
            ),
            (
                format!("key_file = \"{key}\""),
                "6: key_file needs cert_file, the client certificate".into(),
            ),
            (
                format!("insecure_skip_verify = true\nca_file = \"{ca}\""),
                "6: insecure_skip_verify = true contradicts ca_file".into(),
            ),
            (
                "insecure_skip_verify = false".into(),
                "6: insecure_skip_verify = false needs a ca_file to verify against".into(),
            ),
            (
                "ca_file = \"/nonexistent/ca.crt\"".into(),
                "6: ca_file /nonexistent/ca.crt: cannot read: ".into(),
            ),
            ("ca_file = \" \"".into(), "6: ca_file is empty".into()),
            (
                format!("ca_file = \"{key}\""),
                format!("6: ca_file {key}: no PEM certificate"),
            ),
            (
                format!("cert_file = \"{key}\"\nkey_file = \"{key}\""),
                format!("6: cert_file {key}: no PEM certificate"),
            ),
            (
                format!("cert_file = \"{ca}\"\nkey_file = \"{ca}\""),
                format!("7: key_file {ca}: no PEM private key"),
            ),
            (
                format!("cert_file = \"{ca}\"\nkey_file = \"/nonexistent/client.key\""),
                "7: key_file /nonexistent/client.key: cannot read: ".into(),
            ),
            (
                format!("cert_file = \"{ca}\"\nkey_file = \"{other_key}\""),
                format!("6: TLS: client certificate: cert_file {ca} with key_file {other_key}"),
            ),
            (
                "sni = \"not a name\"".into(),
                "6: sni 'not a name' is not a valid DNS name".into(),
            ),
        ] {
            assert_has(&toml_err(&checked(&keys)), &format!("config error: {FILE}:{want}"));
        }

        // A kind-specific key on the port's default kind says where that
        // kind came from.
        let text = service("10.0.0.100", &["10.0.0.1:8080"]).replace("vip =", "port = 8080\nvip =")
            + "  [service.check]\n  path = \"/healthz\"\n";
        assert_has(
            &toml_err(&text),
            &format!(
                "config error: {FILE}:7: path is for kind \"http\" or \"https\"; this check is \"tcp\" (the default for port 8080; set kind)"
            ),
        );
        let text = service("10.0.0.100", &["10.0.0.1:53"])
            .replace("vip =", "port = 53\nproto = \"udp\"\nvip =")
            + "  [service.check]\n  sni = \"dns\"\n";
        assert_has(
            &toml_err(&text),
            &format!(
                "config error: {FILE}:8: sni is for kind \"https\"; this check is \"none\" (the default for UDP services; set kind)"
            ),
        );
    }

    #[test]
    fn proto_numbers() {
        assert_eq!(Proto::Tcp.number(), 6);
        assert_eq!(Proto::Udp.number(), 17);
    }

    /// A fresh file under the temp directory (no tempfile crate needed).
    fn tempfile(ext: &str) -> (std::path::PathBuf, fs::File) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "xdplb-config-test-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = fs::File::create(&path).unwrap();
        (path, file)
    }
}
