//! Single values, each checked on its own: the value parsers of the flags
//! (clap calls them) and the checks the file's values go through, so that
//! a value means the same and fails the same way wherever it is written.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use lb_common::maglev::TABLE_SIZES;
use rustls::pki_types::ServerName;

use super::model::{
    CheckKind, DEFAULT_CHECK_PATH, DEFAULT_CHECK_TIMEOUT, DEFAULT_EXPECT, MAX_RISE_FALL,
    MAX_WEIGHT, MIN_CHECK_INTERVAL, MIN_MAX_EMBRYOS, MIN_MAX_FLOWS, MIN_NAT_PORTS, NatPorts,
    TlsCheck,
};

/// One `--backend IP:PORT[@WEIGHT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub weight: u32,
}

/// Durations as users write them in keepalived/haproxy configs: `500ms`,
/// `2s`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

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
/// A VRRP peer or a VRRP instance's address (`--unicast-peer`,
/// `unicast_peer`, `virtual_ipaddress`).
pub fn parse_unicast_addr(what: &str, s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast(what, s)
}

/// `--unicast-peer IP`.
pub fn parse_unicast_peer(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("unicast peer", s)
}

/// `--vrid N`: keepalived's `virtual_router_id`, 1-255.
pub fn parse_vrid(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u16>() {
        Ok(n @ 1..=255) => Ok(n as u8),
        _ => Err(format!("'{s}' is not a VRRP router id (1-255)")),
    }
}

/// `--priority N`: 1-255 (255 owns the address).
pub fn parse_priority(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u16>() {
        Ok(n @ 1..=255) => Ok(n as u8),
        _ => Err(format!(
            "'{s}' is not a VRRP priority (1-254; 255: the address owner)"
        )),
    }
}

pub fn parse_vip(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("VIP", s)
}

/// `--snat-ip`, and `snat_ip` in the file.
pub fn parse_snat_ip(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("snat_ip", s)
}

/// One address of `snat_ips` in the file.
pub(super) fn parse_snat_ips_entry(s: &str) -> Result<Ipv4Addr, String> {
    parse_unicast("snat_ips", s)
}

/// A backend's `IP:PORT`; `label` is what the user wrote, for messages.
pub(super) fn parse_backend_addr(label: &str, s: &str) -> Result<SocketAddrV4, String> {
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

pub(super) fn check_weight(label: &str, weight: i64) -> Result<u32, String> {
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

/// `--nat-ports`, and `nat_ports` in the file: `auto`, or `LO-HI`,
/// inclusive.
pub fn parse_nat_ports(s: &str) -> Result<NatPorts, String> {
    let bad = |why: String| format!("nat_ports '{s}': {why}");
    if s.trim() == "auto" {
        return Ok(NatPorts::Auto);
    }
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| bad("write LO-HI, e.g. 20000-29999, or auto".into()))?;
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
    Ok(NatPorts::Range(lo, hi))
}

pub(super) fn check_max_flows(n: i64) -> Result<u32, String> {
    check_entries("max_flows", n, MIN_MAX_FLOWS)
}

pub(super) fn check_max_embryos(n: i64) -> Result<u32, String> {
    check_entries("max_embryos", n, MIN_MAX_EMBRYOS)
}

/// A map's size `key`: at least `min` entries.
fn check_entries(key: &str, n: i64, min: u32) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if n >= min => Ok(n),
        Err(_) if n > 0 => Err(format!("{key} {n} is above the maximum of {}", u32::MAX)),
        _ => Err(format!("{key} {n} is below the minimum of {min}")),
    }
}

/// `maglev_table_size` in the file: one of the primes the builder supports.
pub(super) fn check_table_size(n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| TABLE_SIZES.contains(n))
        .ok_or_else(|| format!("maglev_table_size {n} is not one of {TABLE_SIZES:?}"))
}

/// A service's `port` in the file.
pub(super) fn check_port(n: i64) -> Result<u16, String> {
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

/// `--max-embryos`.
pub fn parse_max_embryos(s: &str) -> Result<u32, String> {
    let n = s
        .parse::<i64>()
        .map_err(|_| format!("max_embryos '{s}' is not a whole number"))?;
    check_max_embryos(n)
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
pub(super) fn check_path(path: &str) -> Result<String, String> {
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
pub(super) fn check_expect(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("check expect {n} is not an HTTP status (100-599)"))
}

/// `rise` or `fall` (`key`), from the file or a flag.
pub(super) fn check_count(key: &str, n: i64) -> Result<u32, String> {
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
pub(super) fn default_timeout(interval: Duration) -> Duration {
    DEFAULT_CHECK_TIMEOUT.min(interval)
}

/// Checks of one backend must not overlap.
pub(super) fn check_timing(interval: Duration, timeout: Duration) -> Result<(), String> {
    if timeout > interval {
        return Err(format!(
            "check timeout {timeout:?} is longer than the interval {interval:?}; a check must finish before the next one starts"
        ));
    }
    Ok(())
}

/// `sni` in the file: a DNS name (or an IP address) to send and verify.
pub(super) fn check_sni(s: &str) -> Result<String, String> {
    match ServerName::try_from(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(_) => Err(format!("sni '{s}' is not a valid DNS name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_haproxy() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }
}
