//! Builds and tears down the lab network.
//!
//! ```text
//!   client ─┐
//!   lb1 ────┤
//!   lb2 ────┼── br0 (in its own "sw" namespace)
//!   api1 ───┤
//!   api2 ───┤
//!   api3 ───┘
//! ```
//! Every host has `eth0` with an address in `10.<x>.<y>.0/24`; nothing is
//! created in the root namespace, so deleting the namespaces removes it all.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, anyhow};

use crate::{
    agent::{Agent, AgentOptions},
    apiserver::Apiserver,
    netns::{self, Netns},
    peer_xdp,
};

/// Prefix of every lab namespace: `xl<pid>-<n>-<host>`.
const PREFIX: &str = "xl";
/// Pin directories of lab agents live below this, one per lab and host.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdplb-lab";

static NEXT: AtomicU32 = AtomicU32::new(0);
static AGENT_STARTS: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Backends (`api1`..`apiN`).
    pub apiservers: usize,
    /// Start a fake kube-apiserver in each backend.
    pub start_apiservers: bool,
    /// Attach `xdp_pass` to the bridge side of lb1 and lb2, so native
    /// XDP_TX into those veths is delivered (see peer_xdp). Off, the lab is
    /// a plain bridge, as a container or VM-bridge setup is.
    pub peer_xdp: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            apiservers: 3,
            start_apiservers: true,
            peer_xdp: true,
        }
    }
}

/// One host of the lab: a namespace with `eth0` on the bridge.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: Netns,
}

impl Host {
    /// eth0's MAC, as the kernel in the host's namespace reports it (not
    /// through /sys, which nsenter --net leaves showing the root
    /// namespace's devices).
    pub fn mac(&self) -> Result<String> {
        let out = self.ns.ip(&["-o", "link", "show", "dev", "eth0"])?;
        out.split_whitespace()
            .skip_while(|t| *t != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no link/ether in `ip link show eth0`: {out}"))
    }
}

pub struct Lab {
    /// `xl<pid>-<n>`: the prefix of everything this lab owns.
    pub id: String,
    /// First three octets of the lab subnet.
    net: [u8; 3],
    hosts: BTreeMap<String, Host>,
    pub apiservers: BTreeMap<String, Apiserver>,
    /// Where agents' logs and other run files go; removed on drop.
    pub run_dir: PathBuf,
    peer_programs: Vec<peer_xdp::Attached>,
    // Dropped last: the switch namespace holds the bridge.
    _switch: Netns,
}

impl Lab {
    pub fn start(opts: LabOptions) -> Result<Lab> {
        sweep_stale_labs();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{pid}-{n}");
        // A subnet per lab: labs are isolated by their namespaces anyway, but
        // distinct ranges keep captures and logs from different runs apart.
        let slot = (pid.wrapping_mul(31).wrapping_add(n)) % 250;
        let net = [10, 77, slot as u8 + 1];
        let run_dir = std::env::temp_dir().join(format!("xdplb-{id}"));
        fs::create_dir_all(&run_dir)?;

        let switch = Netns::create(&format!("{id}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        // With br_netfilter loaded, new namespaces default to passing bridged
        // IPv4 through iptables, which validates headers and silently drops
        // the malformed frames the tests send on purpose: a switch must not.
        if std::path::Path::new("/proc/sys/net/bridge").exists() {
            for table in ["iptables", "ip6tables", "arptables"] {
                switch.exec(
                    "sysctl",
                    &["-qw", &format!("net.bridge.bridge-nf-call-{table}=0")],
                )?;
            }
        }
        let mut lab = Lab {
            id,
            net,
            hosts: BTreeMap::new(),
            apiservers: BTreeMap::new(),
            run_dir,
            peer_programs: Vec::new(),
            _switch: switch,
        };

        let mut names = vec![
            ("client".to_owned(), 10),
            ("lb1".to_owned(), 11),
            ("lb2".to_owned(), 12),
        ];
        names.extend((1..=opts.apiservers).map(|i| (format!("api{i}"), 20 + i as u8)));
        for (name, octet) in names {
            lab.add_host(&name, octet, opts.peer_xdp)
                .with_context(|| format!("lab {}: adding host {name}", lab.id))?;
        }
        if opts.start_apiservers {
            for i in 1..=opts.apiservers {
                let name = format!("api{i}");
                let api = Apiserver::start(lab.host(&name), &lab.run_dir)?;
                lab.apiservers.insert(name, api);
            }
        }
        Ok(lab)
    }

    fn add_host(&mut self, name: &str, octet: u8, peer_xdp: bool) -> Result<()> {
        let ns = Netns::create(&format!("{}-{name}", self.id))?;
        let port = format!("p-{name}");
        // Both ends are made inside namespaces: nothing touches the root one.
        self._switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self._switch
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        let ip = self.addr(octet);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        // Hosts put real checksums on the wire, as a NIC would: with veth's
        // default TX checksum offload, packets would carry only a partial
        // (pseudo-header) checksum that the receiving kernel trusts because
        // of skb metadata XDP never sees.
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        if peer_xdp && name.starts_with("lb") {
            // Native XDP_TX on a veth queues the frame on the peer, which
            // only polls it promptly if it runs XDP too (see peer_xdp).
            self.peer_programs
                .push(peer_xdp::attach(&self._switch, &port, "xdp_pass")?);
        }
        self.hosts.insert(
            name.to_owned(),
            Host {
                name: name.to_owned(),
                ip,
                ns,
            },
        );
        Ok(())
    }

    /// `10.77.<slot>.<octet>`.
    pub fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], octet)
    }

    /// The virtual IP services use in this lab.
    pub fn vip(&self) -> Ipv4Addr {
        self.addr(100)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("lab {} has no host {name}", self.id))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// The pin directory the lab gives an agent on `host`.
    pub fn pin_dir(&self, host: &str) -> PathBuf {
        PathBuf::from(PIN_ROOT).join(format!("{}-{host}", self.id))
    }

    /// Starts `xdplb` on `host`'s eth0 with extra `args`, and waits until
    /// its program is attached.
    pub fn start_agent(&self, host: &str, args: &[&str]) -> Result<Agent> {
        Agent::start(AgentOptions {
            host: self.host(host),
            pin_dir: self.pin_dir(host),
            // A log per start: a restarted agent must not erase the log of
            // the one it replaced.
            log: self.run_dir.join(format!(
                "{host}-xdplb-{}.log",
                AGENT_STARTS.fetch_add(1, Ordering::Relaxed)
            )),
            args: args.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn apiserver(&mut self, name: &str) -> Result<&mut Apiserver> {
        self.apiservers
            .get_mut(name)
            .ok_or_else(|| anyhow!("no apiserver {name}"))
    }

    /// Replaces the apiserver on backend `name` with one started with
    /// `extra` flags (`--hang`, `--unhealthy`, `--plain`), to break a
    /// backend in a way a signal cannot. The old process is killed first:
    /// both listen on the same port in the same namespace.
    pub fn replace_apiserver(&mut self, name: &str, extra: &[&str]) -> Result<()> {
        self.apiserver(name)?
            .kill()
            .with_context(|| format!("killing apiserver {name}"))?;
        let api = Apiserver::start_with(self.host(name), &self.run_dir, extra)
            .with_context(|| format!("starting apiserver {name} with {extra:?}"))?;
        self.apiservers.insert(name.to_owned(), api);
        Ok(())
    }

    /// Every namespace name this lab owns.
    pub fn namespaces(&self) -> Vec<String> {
        netns::list()
            .into_iter()
            .filter(|n| owner(n).is_some_and(|id| id == self.id))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first (apiservers, then anything else in the hosts),
        // then the namespaces, then pins and files.
        self.apiservers.clear();
        self.hosts.clear();
        for host in ["client", "lb1", "lb2"] {
            let _ = fs::remove_dir_all(self.pin_dir(host));
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// The lab id (`xl<pid>-<n>`) a namespace belongs to, if it is a lab's.
fn owner(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, _) = rest.split_once('-')?;
    if pid.parse::<u32>().is_err() || n.parse::<u32>().is_err() {
        return None;
    }
    Some(&ns[..PREFIX.len() + pid.len() + 1 + n.len()])
}

fn owner_pid(id: &str) -> Option<u32> {
    id.strip_prefix(PREFIX)?.split_once('-')?.0.parse().ok()
}

/// Removes namespaces and pins of labs whose process is gone (a test run
/// that was killed before it could clean up).
pub fn sweep_stale_labs() {
    for ns in netns::list() {
        if let Some(id) = owner(&ns)
            && let Some(pid) = owner_pid(id)
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            eprintln!("lab: removing {ns}, left behind by exited process {pid}");
            netns::remove_netns(&ns);
        }
    }
    if let Ok(dir) = fs::read_dir(PIN_ROOT) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name)
                && !PathBuf::from(format!("/proc/{pid}")).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_owner_parses_only_lab_names() {
        assert_eq!(owner("xl123-4-api1"), Some("xl123-4"));
        assert_eq!(owner("xl123-4-sw"), Some("xl123-4"));
        assert_eq!(owner("xlfoo-4-api1"), None);
        assert_eq!(owner("client"), None);
        assert_eq!(owner_pid("xl123-4"), Some(123));
    }
}
