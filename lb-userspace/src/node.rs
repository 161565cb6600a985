//! Facts about this node (its addresses and interfaces) and the sysctls the
//! data plane depends on. Everything here is per network namespace: the
//! answers are those of the calling thread's namespace.

use std::{
    collections::HashSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::{
    ifaddrs::{InterfaceAddress, getifaddrs},
    net::if_::{InterfaceFlags, if_nametoindex},
};

use crate::config::{FALLBACK_NAT_PORTS, NatPorts};

const PROC_SYS: &str = "/proc/sys";

/// The IPv4 addresses of `iface`, in the kernel's order (primary addresses
/// first within each subnet, then in the order they were added).
pub fn ipv4_addrs(iface: &str) -> Result<Vec<Ipv4Addr>> {
    if if_nametoindex(iface).is_err() {
        bail!("interface '{iface}' does not exist in this network namespace (see `ip link`)");
    }
    Ok(all_addrs()?
        .iter()
        .filter(|a| label_is_on(&a.interface_name, iface))
        .filter_map(ipv4)
        .collect())
}

/// The address the agent uses as its own on `iface` (the SNAT source by
/// default): the first IPv4 address that is not one of `exclude`, the VIPs.
pub fn primary_ipv4(iface: &str, exclude: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    ipv4_addrs(iface)?
        .into_iter()
        .find(|a| !exclude.contains(a))
        .ok_or_else(|| {
            anyhow!("interface {iface} has no IPv4 address besides the VIP; set --snat-ip")
        })
}

/// Every IPv4 address of every interface, loopback included: a backend at
/// one of these is this node (a stacked control plane).
pub fn local_ipv4s() -> Result<HashSet<Ipv4Addr>> {
    Ok(all_addrs()?.iter().filter_map(ipv4).collect())
}

/// Name and index of every interface but loopback, by index.
pub fn interfaces() -> Result<Vec<(String, u32)>> {
    // getifaddrs has one AF_PACKET entry per link, whatever its addresses.
    let mut links: Vec<(String, u32)> = all_addrs()?
        .iter()
        .filter(|a| !a.flags.contains(InterfaceFlags::IFF_LOOPBACK))
        .filter_map(|a| {
            let link = a.address.as_ref()?.as_link_addr()?;
            Some((
                a.interface_name.clone(),
                u32::try_from(link.ifindex()).ok()?,
            ))
        })
        .collect();
    links.sort_by_key(|&(_, index)| index);
    links.dedup_by_key(|(_, index)| *index);
    Ok(links)
}

fn all_addrs() -> Result<Vec<InterfaceAddress>> {
    Ok(getifaddrs()
        .context("listing the interfaces' addresses (getifaddrs)")?
        .collect())
}

fn ipv4(a: &InterfaceAddress) -> Option<Ipv4Addr> {
    Some(a.address.as_ref()?.as_sockaddr_in()?.ip())
}

/// getifaddrs names an IPv4 address by its label, which is the interface's
/// name unless the address was given one such as `eth0:vip` (ifconfig-style
/// aliases, keepalived's `label`). Interface names cannot contain ':'.
fn label_is_on(label: &str, iface: &str) -> bool {
    label
        .strip_prefix(iface)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// Sets the sysctls the data plane needs on `iface` and returns a line for
/// each one it changed, for the caller to log:
///
/// - `forwarding=1` on the interface: `bpf_fib_lookup` refuses to answer for
///   an interface that does not forward (`BPF_FIB_LKUP_RET_FWD_DISABLED`),
///   and the program cannot pick a next hop without it.
/// - `accept_local=1` on the interface: when the next hop's MAC is not known
///   yet the program hands the already-NATed packet to the kernel to resolve
///   and forward. Its source is then a local address (the SNAT IP towards a
///   backend, the VIP towards a client), and the kernel drops a packet that
///   arrives with a local source as a martian unless accept_local is set.
/// - `send_redirects=0`, on the interface and in `all` (the kernel ORs the
///   two): those packets leave through the interface they came in on, which
///   would otherwise make the kernel tell the sender, with an ICMP redirect,
///   to go to the next hop directly.
pub fn prepare_forwarding(iface: &str) -> Result<Vec<String>> {
    prepare_forwarding_in(Path::new(PROC_SYS), iface)
}

fn prepare_forwarding_in(root: &Path, iface: &str) -> Result<Vec<String>> {
    // The name becomes a path component as it is: refuse one that would
    // point elsewhere (the kernel allows neither '/' nor these names).
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        bail!("'{iface}' is not an interface name");
    }
    let conf = root.join("net/ipv4/conf").join(iface);
    if !conf.is_dir() {
        bail!(
            "interface '{iface}' has no IPv4 settings in {} (does it exist in this network namespace?)",
            conf.display()
        );
    }
    let wanted: [(&[&str], &str); 4] = [
        (&["net", "ipv4", "conf", iface, "forwarding"], "1"),
        (&["net", "ipv4", "conf", iface, "accept_local"], "1"),
        (&["net", "ipv4", "conf", iface, "send_redirects"], "0"),
        (&["net", "ipv4", "conf", "all", "send_redirects"], "0"),
    ];
    let mut changed = Vec::new();
    for (key, value) in wanted {
        if let Some(line) = Sysctl::new(root, key).ensure(value)? {
            changed.push(line);
        }
    }
    Ok(changed)
}

/// The NAT ports to use, and what to tell the operator about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatPortChoice {
    /// Inclusive.
    pub ports: (u16, u16),
    /// Why these, for the start-up line.
    pub why: String,
    /// Something to warn about: ports shared with the node's own
    /// connections.
    pub warning: Option<String>,
}

impl NatPortChoice {
    pub fn count(&self) -> u32 {
        u32::from(self.ports.1) - u32::from(self.ports.0) + 1
    }
}

/// The NAT ports for `configured` on a node whose ephemeral range
/// (`ip_local_port_range`) is `ephemeral`. Pure: [`nat_ports`] reads the
/// range and reserves what overlaps it.
///
/// The node's own connections (health checks among them) take their
/// source ports from the ephemeral range, from every local address, the
/// SNAT address included: a NAT flow and a node connection on the same
/// port to the same backend break each other. So `auto` takes the larger
/// block from 1024 up outside that range (1024-32767 below the kernel's
/// default 32768-60999, 31,744 ports, three times the old fixed default).
/// When neither block holds as many as [`FALLBACK_NAT_PORTS`] (an
/// ephemeral range widened to nearly everything), it takes those, which
/// [`nat_ports`] then reserves, and says so. A configured range is used as
/// it is, with a warning when it overlaps.
pub fn choose_nat_ports(configured: NatPorts, ephemeral: (u16, u16)) -> NatPortChoice {
    let (elo, ehi) = ephemeral;
    let count = |(lo, hi): (u16, u16)| u32::from(hi) - u32::from(lo) + 1;
    let cost = |ports: (u16, u16)| {
        let lo = ports.0.max(elo);
        let hi = ports.1.min(ehi);
        format!(
            "the node's own connections (health checks among them) take their source ports \
             from that range, from the SNAT address too, and a NAT flow and a node connection \
             on the same port to the same backend break each other: xdplb reserves {lo}-{hi} \
             in ip_local_reserved_ports, which leaves every connection of the node {} fewer \
             ephemeral ports",
            count((lo, hi))
        )
    };
    match configured {
        NatPorts::Range(lo, hi) => NatPortChoice {
            ports: (lo, hi),
            why: "nat_ports".into(),
            warning: overlaps((lo, hi), ephemeral).then(|| {
                format!(
                    "nat_ports {lo}-{hi} overlaps the kernel's ephemeral ports \
                     (ip_local_port_range {elo}-{ehi}): {}; set nat_ports outside {elo}-{ehi}, \
                     or to auto",
                    cost((lo, hi))
                )
            }),
        },
        NatPorts::Auto => {
            // Below the range from 1024, and above it to 65535.
            let below = (elo > 1024).then(|| (1024, elo - 1));
            let above = (ehi < u16::MAX).then(|| (ehi.max(1023) + 1, u16::MAX));
            let largest = [below, above]
                .into_iter()
                .flatten()
                .max_by_key(|&b| count(b))
                .filter(|&b| count(b) >= count(FALLBACK_NAT_PORTS));
            match largest {
                Some(ports) => NatPortChoice {
                    ports,
                    why: format!("auto: the largest block outside ip_local_port_range {elo}-{ehi}"),
                    warning: None,
                },
                None => {
                    let ports = FALLBACK_NAT_PORTS;
                    NatPortChoice {
                        ports,
                        why: format!(
                            "auto: ip_local_port_range {elo}-{ehi} leaves too few ports outside it"
                        ),
                        warning: Some(format!(
                            "nat_ports auto: ip_local_port_range {elo}-{ehi} leaves fewer than \
                             {} ports from 1024 up outside it, so NAT takes {}-{} from it: {}; \
                             raise the start of ip_local_port_range, or set nat_ports",
                            count(FALLBACK_NAT_PORTS),
                            ports.0,
                            ports.1,
                            cost(ports)
                        )),
                    }
                }
            }
        }
    }
}

/// The NAT ports for `configured` on this node ([`choose_nat_ports`] with
/// this namespace's `ip_local_port_range`), reserved in
/// `ip_local_reserved_ports` where they overlap it ([`reserve_ports`]).
/// Returns the choice and, when it reserved ports, a line to log.
pub fn nat_ports(configured: NatPorts) -> Result<(NatPortChoice, Option<String>)> {
    nat_ports_in(Path::new(PROC_SYS), configured)
}

fn nat_ports_in(root: &Path, configured: NatPorts) -> Result<(NatPortChoice, Option<String>)> {
    let range = Sysctl::new(root, &["net", "ipv4", "ip_local_port_range"]);
    let ephemeral = parse_port_range(&range.read()?)
        .with_context(|| format!("parsing {}", range.path.display()))?;
    let choice = choose_nat_ports(configured, ephemeral);
    let reserved = match overlaps(choice.ports, ephemeral) {
        true => reserve_ports_in(root, choice.ports.0, choice.ports.1)?,
        false => None,
    };
    Ok((choice, reserved))
}

/// Keeps the kernel from choosing a port in `lo..=hi` as an ephemeral port:
/// the NAT ports share the SNAT address with the agent's own connections
/// (health checks), and a kernel-chosen port there would collide with a
/// NATed flow. Ports in `ip_local_port_range` are reserved through
/// `ip_local_reserved_ports`, merged with whatever is reserved already.
///
/// Returns a line for the caller to log, or `None` when the ports were
/// already reserved (nothing to say, nothing done).
fn reserve_ports_in(root: &Path, lo: u16, hi: u16) -> Result<Option<String>> {
    if lo > hi {
        bail!("NAT port range {lo}-{hi} is empty");
    }
    let range = Sysctl::new(root, &["net", "ipv4", "ip_local_port_range"]);
    let ephemeral = parse_port_range(&range.read()?)
        .with_context(|| format!("parsing {}", range.path.display()))?;
    let (elo, ehi) = ephemeral;
    if !overlaps((lo, hi), ephemeral) {
        return Ok(Some(format!(
            "NAT ports {lo}-{hi} are outside ip_local_port_range {elo}-{ehi}"
        )));
    }
    let reserved_ctl = Sysctl::new(root, &["net", "ipv4", "ip_local_reserved_ports"]);
    let reserved = parse_port_list(&reserved_ctl.read()?)
        .with_context(|| format!("parsing {}", reserved_ctl.path.display()))?;
    if covers(&reserved, (lo, hi)) {
        return Ok(None);
    }
    reserved_ctl.write(&format_port_list(&merge_ports(reserved, (lo, hi))))?;
    Ok(Some(format!(
        "reserved NAT ports {lo}-{hi} in ip_local_reserved_ports \
         (they overlap ip_local_port_range {elo}-{ehi})"
    )))
}

/// One file under /proc/sys.
struct Sysctl {
    path: PathBuf,
    /// As sysctl(8) spells it, for messages.
    name: String,
}

impl Sysctl {
    /// `key` is the path's components. In /proc/sys an interface name is a
    /// component as it is, dots included (`conf/eth0.100/forwarding`);
    /// sysctl(8) separates components with '.' and so writes the dots
    /// inside one as '/' (`conf.eth0/100.forwarding`).
    fn new(root: &Path, key: &[&str]) -> Self {
        Self {
            path: key.iter().fold(root.to_path_buf(), |p, c| p.join(c)),
            name: key
                .iter()
                .map(|c| c.replace('.', "/"))
                .collect::<Vec<_>>()
                .join("."),
        }
    }

    fn read(&self) -> Result<String> {
        let s = fs::read_to_string(&self.path)
            .with_context(|| format!("reading {} ({})", self.name, self.path.display()))?;
        Ok(s.trim().to_owned())
    }

    fn write(&self, value: &str) -> Result<()> {
        fs::write(&self.path, value).with_context(|| {
            format!(
                "setting {} = {value} (writing {}; is /proc/sys read-only here?)",
                self.name,
                self.path.display()
            )
        })
    }

    /// Sets the value unless it already is `value`; says what changed.
    fn ensure(&self, value: &str) -> Result<Option<String>> {
        let old = self.read()?;
        if old == value {
            return Ok(None);
        }
        self.write(value)?;
        Ok(Some(format!("{} {old} -> {value}", self.name)))
    }
}

/// `ip_local_port_range`: two numbers separated by whitespace.
fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok((lo, hi)),
        _ => bail!("'{s}' is not a port range (want 'LO HI')"),
    }
}

/// `ip_local_reserved_ports`: comma-separated ports and `LO-HI` ranges, or
/// nothing.
fn parse_port_list(s: &str) -> Result<Vec<(u16, u16)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
                _ => bail!("'{p}' is not a port or a port range"),
            }
        })
        .collect()
}

/// The list in the kernel's own notation: `8080,30000-39999`.
fn format_port_list(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `ranges` plus `add`, sorted, with overlapping and adjacent ranges joined.
fn merge_ports(mut ranges: Vec<(u16, u16)>, add: (u16, u16)) -> Vec<(u16, u16)> {
    ranges.push(add);
    normalize(ranges)
}

/// Sorted, with overlapping and adjacent ranges joined.
fn normalize(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut joined: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match joined.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => joined.push((lo, hi)),
        }
    }
    joined
}

fn overlaps(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Whether every port of `want` is in `ranges` (which may split it).
fn covers(ranges: &[(u16, u16)], want: (u16, u16)) -> bool {
    normalize(ranges.to_vec())
        .iter()
        .any(|&(lo, hi)| lo <= want.0 && want.1 <= hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_like_the_kernel_prints_them() {
        assert_eq!(parse_port_list("").unwrap(), []);
        assert_eq!(parse_port_list("\n").unwrap(), []);
        assert_eq!(
            parse_port_list("8080,30000-39999").unwrap(),
            [(8080, 8080), (30000, 39999)]
        );
        assert!(parse_port_list("9-1").is_err());
        assert!(parse_port_list("http").is_err());
        assert!(parse_port_list("70000").is_err());
        assert_eq!(parse_port_range("32768\t60999").unwrap(), (32768, 60999));
        assert!(parse_port_range("32768").is_err());
        assert!(parse_port_range("2 1").is_err());
    }

    #[test]
    fn merging_keeps_other_reservations_and_joins_neighbours() {
        let merge = |s: &str, add| format_port_list(&merge_ports(parse_port_list(s).unwrap(), add));
        assert_eq!(merge("", (30000, 39999)), "30000-39999");
        assert_eq!(
            merge("8080,50000", (30000, 39999)),
            "8080,30000-39999,50000"
        );
        // Overlapping and adjacent entries become one.
        assert_eq!(merge("29000-30500,40000", (30000, 39999)), "29000-40000");
        assert_eq!(
            merge("30000-39999", (30000, 39999)),
            "30000-39999",
            "idempotent"
        );
        assert_eq!(merge("1,3", (2, 2)), "1-3");
        assert_eq!(merge("65535", (65000, 65535)), "65000-65535");
    }

    #[test]
    fn overlap_and_cover() {
        let eph = (32768, 60999);
        assert!(!overlaps((20000, 29999), eph));
        assert!(overlaps((30000, 39999), eph));
        assert!(overlaps((60999, 61000), eph));
        assert!(overlaps((40000, 41000), eph));
        assert!(!overlaps((61000, 62000), eph));
        assert!(covers(&[(30000, 39999)], (30000, 39999)));
        assert!(
            covers(&[(30000, 34999), (35000, 39999)], (30000, 39999)),
            "split but whole"
        );
        assert!(
            !covers(&[(30000, 34999), (35001, 39999)], (30000, 39999)),
            "hole at 35000"
        );
        assert!(!covers(&[], (1, 1)));
    }

    #[test]
    fn auto_takes_the_largest_block_outside_the_ephemeral_range() {
        let auto = |eph| choose_nat_ports(NatPorts::Auto, eph);
        let kernel_default = auto((32768, 60999));
        assert_eq!(kernel_default.ports, (1024, 32767));
        assert_eq!(kernel_default.count(), 31_744);
        assert_eq!(kernel_default.warning, None);
        assert_eq!(
            kernel_default.why,
            "auto: the largest block outside ip_local_port_range 32768-60999"
        );
        // Above when that is larger.
        assert_eq!(auto((1024, 40000)).ports, (40001, 65535));
        assert_eq!(auto((50000, 60000)).ports, (1024, 49999));
        // A range that ends below 1024 leaves everything from 1024 up.
        assert_eq!(auto((500, 900)).ports, (1024, 65535));
        assert_eq!(auto((1025, 65535)).ports.1, 29999, "1 port below: fallback");
        // Neither block as large as the old default: the old default,
        // reserved, with a warning that says what it costs.
        for eph in [(1024, 65535), (10000, 65000), (2000, 60000)] {
            let c = auto(eph);
            assert_eq!(c.ports, FALLBACK_NAT_PORTS, "{eph:?}");
            let w = c.warning.expect("a warning");
            assert!(w.contains("raise the start of ip_local_port_range"), "{w}");
        }
        let w = auto((10000, 65000)).warning.unwrap();
        assert!(
            w.contains(
                "xdplb reserves 20000-29999 in ip_local_reserved_ports, which leaves every \
                 connection of the node 10000 fewer ephemeral ports"
            ),
            "{w}"
        );
    }

    #[test]
    fn a_configured_range_is_kept_and_warned_about_only_where_it_overlaps() {
        let eph = (32768, 60999);
        let c = choose_nat_ports(NatPorts::Range(20000, 29999), eph);
        assert_eq!((c.ports, c.warning), ((20000, 29999), None));
        let c = choose_nat_ports(NatPorts::Range(30000, 39999), eph);
        assert_eq!(c.ports, (30000, 39999));
        let w = c.warning.expect("overlap: a warning");
        assert!(
            w.starts_with(
                "nat_ports 30000-39999 overlaps the kernel's ephemeral ports \
                 (ip_local_port_range 32768-60999): the node's own connections (health checks \
                 among them) take their source ports from that range"
            ),
            "{w}"
        );
        assert!(
            w.contains("xdplb reserves 32768-39999 in ip_local_reserved_ports")
                && w.contains("7232 fewer ephemeral ports")
                && w.ends_with("set nat_ports outside 32768-60999, or to auto"),
            "{w}"
        );
        let c = choose_nat_ports(NatPorts::Range(61000, 65535), eph);
        assert_eq!(c.warning, None);
    }

    #[test]
    fn nat_ports_reserves_only_what_overlaps() {
        let sys = FakeProcSys::new(
            "natports",
            &[
                ("net/ipv4/ip_local_port_range", "32768\t60999"),
                ("net/ipv4/ip_local_reserved_ports", ""),
            ],
        );
        let (c, reserved) = nat_ports_in(&sys.0, NatPorts::Auto).unwrap();
        assert_eq!((c.ports, reserved), ((1024, 32767), None));
        assert_eq!(sys.get("net/ipv4/ip_local_reserved_ports"), "");
        let (c, reserved) = nat_ports_in(&sys.0, NatPorts::Range(30000, 39999)).unwrap();
        assert_eq!(c.ports, (30000, 39999));
        assert!(reserved.is_some());
        assert_eq!(sys.get("net/ipv4/ip_local_reserved_ports"), "30000-39999");
    }

    #[test]
    fn labels_belong_to_their_interface() {
        assert!(label_is_on("eth0", "eth0"));
        assert!(label_is_on("eth0:vip", "eth0"));
        assert!(!label_is_on("eth0", "eth"));
        assert!(!label_is_on("eth01", "eth0"));
        assert!(label_is_on("eth0.100", "eth0.100"));
        assert!(!label_is_on("eth0.100", "eth0"));
    }

    /// A scratch directory laid out like /proc/sys, removed on drop.
    struct FakeProcSys(PathBuf);

    impl FakeProcSys {
        fn new(test: &str, files: &[(&str, &str)]) -> Self {
            let root =
                std::env::temp_dir().join(format!("xdplb-node-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for (path, value) in files {
                let p = root.join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, format!("{value}\n")).unwrap();
            }
            Self(root)
        }

        fn get(&self, path: &str) -> String {
            fs::read_to_string(self.0.join(path))
                .unwrap()
                .trim()
                .to_owned()
        }
    }

    impl Drop for FakeProcSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn forwarding_reports_only_what_it_changed() {
        let sys = FakeProcSys::new(
            "fwd",
            &[
                ("net/ipv4/conf/eth0.100/forwarding", "0"),
                ("net/ipv4/conf/eth0.100/accept_local", "1"),
                ("net/ipv4/conf/eth0.100/send_redirects", "1"),
                ("net/ipv4/conf/all/send_redirects", "1"),
            ],
        );
        let changed = prepare_forwarding_in(&sys.0, "eth0.100").unwrap();
        assert_eq!(
            changed,
            [
                "net.ipv4.conf.eth0/100.forwarding 0 -> 1",
                "net.ipv4.conf.eth0/100.send_redirects 1 -> 0",
                "net.ipv4.conf.all.send_redirects 1 -> 0",
            ]
        );
        assert_eq!(sys.get("net/ipv4/conf/eth0.100/forwarding"), "1");
        assert_eq!(sys.get("net/ipv4/conf/all/send_redirects"), "0");
        assert_eq!(
            prepare_forwarding_in(&sys.0, "eth0.100").unwrap(),
            Vec::<String>::new()
        );

        let err = prepare_forwarding_in(&sys.0, "eth9").unwrap_err();
        assert!(
            format!("{err:#}").contains("'eth9' has no IPv4 settings"),
            "{err:#}"
        );
        assert!(prepare_forwarding_in(&sys.0, "..").is_err());
    }

    #[test]
    fn reserving_ports_merges_with_what_is_there() {
        let sys = FakeProcSys::new(
            "ports",
            &[
                ("net/ipv4/ip_local_port_range", "32768\t60999"),
                ("net/ipv4/ip_local_reserved_ports", "8080"),
            ],
        );
        assert_eq!(
            reserve_ports_in(&sys.0, 20000, 29999).unwrap().as_deref(),
            Some("NAT ports 20000-29999 are outside ip_local_port_range 32768-60999")
        );
        assert_eq!(sys.get("net/ipv4/ip_local_reserved_ports"), "8080");
        assert_eq!(
            reserve_ports_in(&sys.0, 30000, 39999).unwrap().as_deref(),
            Some(
                "reserved NAT ports 30000-39999 in ip_local_reserved_ports \
                 (they overlap ip_local_port_range 32768-60999)"
            )
        );
        assert_eq!(
            sys.get("net/ipv4/ip_local_reserved_ports"),
            "8080,30000-39999"
        );
        assert_eq!(
            reserve_ports_in(&sys.0, 30000, 39999).unwrap(),
            None,
            "already reserved"
        );
        assert_eq!(
            sys.get("net/ipv4/ip_local_reserved_ports"),
            "8080,30000-39999"
        );
        assert!(reserve_ports_in(&sys.0, 2, 1).is_err());
    }
}
