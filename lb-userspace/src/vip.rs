//! Owns the VIP on the interface, as keepalived's `virtual_ipaddress` did:
//! adds `VIP/32` over netlink, announces it with gratuitous ARP so that the
//! neighbours (the router, the other control-plane nodes) send it here rather
//! than to the previous owner, and removes it again at exit.
//!
//! The address has to be on the interface even though XDP answers the
//! balanced ports: the kernel must answer ARP for it, and everything the
//! program passes up (ICMP, other ports, packets whose next hop it cannot
//! resolve yet) must be local traffic to the stack.

use std::{
    collections::{BTreeMap, BTreeSet},
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use rtnetlink::{
    AddressMessageBuilder, Handle,
    packet_route::link::{LinkAttribute, LinkLayerType},
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::netlink::Netlink;

/// How a VIP is announced with gratuitous ARP, with keepalived's names and
/// defaults: `garp_master_repeat` (5) at once when the node takes the VIP,
/// as many again `garp_master_delay` (5 s) later (a switch that was still
/// learning the port, a neighbour that missed the first burst), and, if
/// `garp_master_refresh` is set, `garp_master_refresh_repeat` every refresh
/// while the node holds it (neighbours whose cache entries were poisoned by
/// something else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GarpPolicy {
    pub repeat: u32,
    pub delay: Duration,
    pub refresh: Option<Duration>,
    pub refresh_repeat: u32,
}

impl Default for GarpPolicy {
    fn default() -> Self {
        GarpPolicy {
            repeat: 5,
            delay: Duration::from_secs(5),
            refresh: None,
            refresh_repeat: 1,
        }
    }
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];
/// The shortest Ethernet frame without its FCS; not every driver pads a
/// short frame from a packet socket, so we send it padded.
const ETH_ZLEN: usize = 60;

/// The VIPs this agent holds on its interface, brought to a wanted set.
pub struct VipSet {
    iface: String,
    garp: GarpPolicy,
    /// Take a VIP found on the interface as ours (remove it when we let it
    /// go). With VRRP the address is the master's, never someone else's: a
    /// stale one left by a killed agent must go when this node is backup.
    claim: bool,
    held: BTreeMap<Ipv4Addr, VipGuard>,
}

impl VipSet {
    pub fn new(iface: &str, garp: GarpPolicy, claim: bool) -> Self {
        VipSet {
            iface: iface.to_owned(),
            garp,
            claim,
            held: BTreeMap::new(),
        }
    }

    /// Sends a new burst of gratuitous ARPs for every VIP held (after a
    /// split brain resolves, neighbours may have learnt the other node).
    pub fn reannounce(&mut self) {
        for g in self.held.values_mut() {
            g.reannounce(self.garp);
        }
    }

    pub fn held(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.held.keys().copied()
    }

    /// Releases what is no longer wanted, then adds (and announces) what is
    /// new. Every VIP is tried; the first error is returned after.
    pub async fn sync(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let mut first_err = None;
        let gone: Vec<Ipv4Addr> = self
            .held
            .keys()
            .filter(|v| !wanted.contains(v))
            .copied()
            .collect();
        for v in gone {
            if let Some(g) = self.held.remove(&v)
                && let Err(e) = g.release().await
            {
                first_err.get_or_insert(e);
            }
        }
        for &v in wanted {
            if self.held.contains_key(&v) {
                continue;
            }
            match assign(&self.iface, v, self.garp, self.claim).await {
                Ok(g) => {
                    self.held.insert(v, g);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes every VIP this agent added (one that was there before it
    /// stays); failures are logged.
    pub async fn release_all(mut self) {
        for (_, g) in std::mem::take(&mut self.held) {
            if let Err(e) = g.release().await {
                warn!("{e:#}");
            }
        }
    }

    /// Leaves every VIP on the interface (--keep-dataplane).
    pub fn keep(mut self) {
        for (_, g) in std::mem::take(&mut self.held) {
            g.keep();
        }
    }
}

/// Adds `vip/32` to `iface` unless it is already there, then announces it
/// with gratuitous ARP (also when it was already there: we are about to
/// serve it on this interface, so its MAC is the right answer either way).
///
/// An address that was already on the interface belongs to someone else (an
/// operator, a previous xdplb that kept it with --keep-dataplane, keepalived
/// during a migration): the guard leaves it there at exit.
pub async fn assign(iface: &str, vip: Ipv4Addr, garp: GarpPolicy, claim: bool) -> Result<VipGuard> {
    let nl = Netlink::open().with_context(|| format!("adding {vip}/32 to {iface}"))?;
    let link = Link::find(&nl, iface).await?;
    let present = has_address(&nl.handle, link.index, vip)
        .await
        .with_context(|| format!("listing the addresses of {iface}"))?;
    let added = if present && claim {
        info!(iface, %vip, "VIP already on the interface: taking it over");
        true
    } else if present {
        info!(iface, %vip, "VIP already on the interface: using it, and leaving it there at exit");
        false
    } else {
        match nl
            .handle
            .address()
            .add(link.index, vip.into(), 32)
            .execute()
            .await
        {
            Ok(()) => {
                info!(iface, %vip, "added VIP {vip}/32 to {iface}");
                true
            }
            // Someone added it between our look and our add.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                info!(iface, %vip, "VIP appeared on the interface meanwhile: leaving it there at exit");
                false
            }
            Err(e) => {
                return Err(e).with_context(|| format!("adding {vip}/32 to {iface}"));
            }
        }
    };
    let announcer = announce(iface, link.index, link.mac, vip, garp);
    Ok(VipGuard {
        iface: iface.to_owned(),
        index: link.index,
        mac: link.mac,
        vip,
        added,
        announcer,
        armed: true,
    })
}

/// Removes any of `vips` found on `iface`: at start, a node that may become
/// backup must not answer for an address a killed agent left behind.
/// Returns the ones removed.
pub async fn remove_stale(iface: &str, vips: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
    let nl = Netlink::open().with_context(|| format!("checking {iface} for stale VIPs"))?;
    let link = Link::find(&nl, iface).await?;
    let mut removed = Vec::new();
    for &vip in vips {
        if has_address(&nl.handle, link.index, vip)
            .await
            .with_context(|| format!("listing the addresses of {iface}"))?
        {
            remove(iface, link.index, vip).await?;
            removed.push(vip);
        }
    }
    Ok(removed)
}

/// The VIP on the interface. Exactly one of [`release`](Self::release) and
/// [`keep`](Self::keep) should be called; dropping the guard without either
/// removes the address too (synchronously), so an early `?` or a panic does
/// not leave a stray VIP answering ARP on this node.
#[must_use = "dropping the guard removes the VIP; call keep() to leave it on the interface"]
pub struct VipGuard {
    iface: String,
    index: u32,
    mac: Option<[u8; 6]>,
    vip: Ipv4Addr,
    /// We added the address, so it is ours to remove.
    added: bool,
    /// The task still sending gratuitous ARPs.
    announcer: Option<JoinHandle<()>>,
    /// Neither released nor kept yet: Drop has work to do.
    armed: bool,
}

impl VipGuard {
    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether [`assign`] added the address (and so release removes it).
    pub fn added(&self) -> bool {
        self.added
    }

    /// Removes the address if we added it; one that was there before us
    /// stays.
    pub async fn release(mut self) -> Result<()> {
        self.armed = false;
        self.stop_announcing();
        if !self.added {
            info!(iface = %self.iface, vip = %self.vip, "leaving VIP on the interface: it was there before us");
            return Ok(());
        }
        remove(&self.iface, self.index, self.vip).await
    }

    /// Leaves the address on the interface (--keep-dataplane: the next agent
    /// adopts it and traffic keeps flowing meanwhile).
    pub fn keep(mut self) {
        self.armed = false;
        // The remaining announcements are still right; let them go out.
        drop(self.announcer.take());
        info!(iface = %self.iface, vip = %self.vip, "leaving VIP on the interface");
    }

    /// A new announcement, replacing the one under way.
    pub fn reannounce(&mut self, garp: GarpPolicy) {
        self.stop_announcing();
        self.announcer = announce(&self.iface, self.index, self.mac, self.vip, garp);
    }

    fn stop_announcing(&mut self) {
        if let Some(task) = self.announcer.take() {
            task.abort();
        }
    }
}

impl Drop for VipGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.stop_announcing();
        if !self.added {
            return;
        }
        // Drop cannot await, and may run inside a runtime where block_on
        // would panic: do the netlink round trip on a thread of its own, with
        // a runtime of its own. A new thread starts in this thread's network
        // namespace, so it removes the address from the right interface.
        let (iface, index, vip) = (self.iface.clone(), self.index, self.vip);
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime to remove the VIP")?;
            rt.block_on(remove(&iface, index, vip))
        })
        .join();
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("{e:#}"),
            Err(_) => warn!(iface = %self.iface, vip = %self.vip, "removing the VIP panicked"),
        }
    }
}

async fn remove(iface: &str, index: u32, vip: Ipv4Addr) -> Result<()> {
    let ctx = || format!("removing {vip}/32 from {iface}");
    let nl = Netlink::open().with_context(ctx)?;
    // The kernel deletes the address that matches local address and prefix
    // length, so a /24 someone put there since is not touched.
    let msg = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(vip, 32)
        .build();
    match nl.handle.address().del(msg).execute().await {
        Ok(()) => {
            info!(iface, %vip, "removed VIP {vip}/32 from {iface}");
            Ok(())
        }
        // Gone already (removed by hand, or the interface went away): the
        // end state is the one we wanted.
        Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {
            warn!(iface, %vip, "VIP was already gone from the interface");
            Ok(())
        }
        Err(e) => Err(e).with_context(ctx),
    }
}

/// The positive errno of a netlink NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

struct Link {
    index: u32,
    /// The interface's MAC, when it is an Ethernet-like device.
    mac: Option<[u8; 6]>,
}

impl Link {
    async fn find(nl: &Netlink, iface: &str) -> Result<Self> {
        let found = nl.link(iface).await;
        let msg = match found {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(no_such_interface(iface)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Err(no_such_interface(iface)),
            Err(e) => return Err(e).with_context(|| format!("looking up interface {iface}")),
        };
        let mac = (msg.header.link_layer_type == LinkLayerType::Ether)
            .then(|| {
                msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                })
            })
            .flatten();
        Ok(Self {
            index: msg.header.index,
            mac,
        })
    }
}

fn no_such_interface(iface: &str) -> anyhow::Error {
    anyhow!("interface '{iface}' does not exist in this network namespace (see `ip link`)")
}

async fn has_address(handle: &Handle, index: u32, vip: Ipv4Addr) -> Result<bool, rtnetlink::Error> {
    // Any prefix length counts: 10.0.0.5/24 on the interface already makes
    // the node own 10.0.0.5.
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(vip.into())
        .execute();
    Ok(addrs.try_next().await?.is_some())
}

/// Sends the first burst of gratuitous ARPs now and spawns a task for the
/// rest ([`GarpPolicy`]). A failure only warns: the VIP works without it,
/// neighbours just take until their cache entry expires to notice the move.
fn announce(
    iface: &str,
    index: u32,
    mac: Option<[u8; 6]>,
    vip: Ipv4Addr,
    garp: GarpPolicy,
) -> Option<JoinHandle<()>> {
    let Some(mac) = mac else {
        debug!(iface, "not an Ethernet interface: no gratuitous ARP");
        return None;
    };
    let sock = match GarpSocket::open(index, mac, vip) {
        Ok(s) => s,
        Err(e) => {
            warn!(iface, %vip, "cannot send gratuitous ARP: opening a packet socket: {e}");
            return None;
        }
    };
    let iface = iface.to_owned();
    let burst = move |n: u32, what: &str| {
        for i in 1..=n {
            if let Err(e) = sock.send() {
                warn!(iface, %vip, "sending gratuitous ARP ({what} {i}/{n}): {e}");
                return;
            }
        }
        debug!(iface, %vip, "sent {n} gratuitous ARPs ({what})");
    };
    burst(garp.repeat, "on taking the VIP");
    Some(tokio::spawn(async move {
        tokio::time::sleep(garp.delay).await;
        burst(garp.repeat, "garp_master_delay later");
        let Some(every) = garp.refresh else {
            return;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            burst(garp.refresh_repeat, "refresh");
        }
    }))
}

/// An ARP announcement (RFC 5227 §2.3, the "gratuitous ARP" of RFC 5944
/// §4.6): a broadcast ARP request whose sender and target protocol
/// addresses are both `ip`, so every neighbour that has `ip` in its cache
/// updates it to `mac`. The target hardware address is zero, as RFC 5227
/// asks; padded to the Ethernet minimum.
fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ETH_ZLEN] {
    let mut f = [0u8; ETH_ZLEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP for IPv4 over Ethernet.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // f[32..38], the target hardware address, stays zero.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A send-only AF_PACKET socket aimed at one interface.
struct GarpSocket {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
    frame: [u8; ETH_ZLEN],
}

impl GarpSocket {
    fn open(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<Self> {
        // Protocol 0 and no bind: the socket never receives a copy of the
        // traffic. Each send names the interface and the ethertype instead.
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&BROADCAST);
        Ok(Self {
            fd,
            to,
            frame: garp_frame(mac, ip),
        })
    }

    fn send(&self) -> io::Result<()> {
        // SAFETY: frame and to outlive the call, and the lengths passed are
        // theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                self.frame.as_ptr().cast(),
                self.frame.len(),
                0,
                (&raw const self.to).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_is_a_broadcast_request_for_the_vip_from_itself() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = garp_frame(mac, Ipv4Addr::new(10, 199, 0, 100));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst: broadcast
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // src: our MAC
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // Ethernet, IPv4, lengths
            0x00, 0x01,                         // request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sender MAC
            10, 199, 0, 100,                    // sender IP = VIP
            0, 0, 0, 0, 0, 0,                   // target MAC: unknown
            10, 199, 0, 100,                    // target IP = VIP
        ];
        assert_eq!(f[..42], want, "GARP header");
        assert!(
            f[42..].iter().all(|&b| b == 0),
            "padding must be zero: {f:?}"
        );
    }

    /// Adds and removes a VIP for real, in a network namespace of the test's
    /// own (on a thread of its own, so nothing else sees it) with a veth
    /// pair, d0 (ours) and d1 (a neighbour that sees our GARPs). Needs root,
    /// and fails without it (`cargo xtask test` runs as root).
    #[test]
    fn assign_and_release_in_a_private_netns() {
        // SAFETY: no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to make a network namespace"
        );
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(netns_scenario());
        })
        .join()
        .expect("the scenario in the private namespace failed");
    }

    async fn netns_scenario() {
        use crate::node::ipv4_addrs;
        use rtnetlink::{LinkUnspec, LinkVeth};

        let nl = Netlink::open().unwrap();
        nl.handle
            .link()
            .add(LinkVeth::new("d0", "d1").up().build())
            .execute()
            .await
            .expect("creating veth d0/d1");
        nl.handle
            .link()
            .set(LinkUnspec::new_with_name("d1").up().build())
            .execute()
            .await
            .expect("bringing d1 up");
        let d0 = Link::find(&nl, "d0").await.unwrap();
        let d1 = Link::find(&nl, "d1").await.unwrap();
        let mac = d0.mac.expect("a veth has a MAC");
        let own = Ipv4Addr::new(10, 199, 0, 1);
        nl.handle
            .address()
            .add(d0.index, own.into(), 24)
            .execute()
            .await
            .unwrap();
        let vip = Ipv4Addr::new(10, 199, 0, 100);
        let neighbour = ArpListener::open(d1.index);

        let err = assign("nosuch0", vip, GarpPolicy::default(), false)
            .await
            .err()
            .expect("no such interface");
        assert!(
            format!("{err:#}").contains("'nosuch0' does not exist"),
            "{err:#}"
        );

        let guard = assign("d0", vip, GarpPolicy::default(), false)
            .await
            .expect("assign");
        assert!(guard.added(), "the VIP was not there, so we added it");
        assert_eq!(ipv4_addrs("d0").unwrap(), [own, vip]);
        assert!(
            neighbour.saw(&garp_frame(mac, vip)),
            "d1 should have received a gratuitous ARP for {vip} from {mac:02x?}"
        );
        // Already there: taken as it is, and left alone.
        let again = assign("d0", vip, GarpPolicy::default(), false)
            .await
            .unwrap();
        assert!(!again.added());
        again.release().await.unwrap();
        assert_eq!(
            ipv4_addrs("d0").unwrap(),
            [own, vip],
            "someone else's VIP stays"
        );
        guard.release().await.expect("release");
        assert_eq!(ipv4_addrs("d0").unwrap(), [own], "release removes our VIP");

        // Dropped inside a runtime: removed all the same.
        drop(
            assign("d0", vip, GarpPolicy::default(), false)
                .await
                .unwrap(),
        );
        assert_eq!(ipv4_addrs("d0").unwrap(), [own], "drop removes our VIP");

        // Kept: stays, and a later assign adopts it without owning it.
        assign("d0", vip, GarpPolicy::default(), false)
            .await
            .unwrap()
            .keep();
        assert_eq!(ipv4_addrs("d0").unwrap(), [own, vip], "keep leaves it");
        let adopted = assign("d0", vip, GarpPolicy::default(), false)
            .await
            .unwrap();
        assert!(!adopted.added());
        drop(adopted);
        assert_eq!(ipv4_addrs("d0").unwrap(), [own, vip]);

        // VRRP mode: a VIP found on the interface is claimed, and goes
        // when released; remove_stale takes one away outright.
        let claimed = assign("d0", vip, GarpPolicy::default(), true)
            .await
            .unwrap();
        assert!(claimed.added(), "claimed as ours");
        claimed.release().await.unwrap();
        assert_eq!(ipv4_addrs("d0").unwrap(), [own], "a claimed VIP is removed");
        assign("d0", vip, GarpPolicy::default(), false)
            .await
            .unwrap()
            .keep();
        let gone = remove_stale("d0", &BTreeSet::from([vip, Ipv4Addr::new(10, 199, 0, 101)]))
            .await
            .unwrap();
        assert_eq!(gone, [vip], "only the stale VIP that was there is removed");
        assert_eq!(ipv4_addrs("d0").unwrap(), [own]);
    }

    /// An AF_PACKET socket receiving the ARP frames that reach one interface.
    struct ArpListener(OwnedFd);

    impl ArpListener {
        fn open(ifindex: u32) -> Self {
            // SAFETY: plain syscalls on a socket we own; results are checked.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ARP.to_be()),
                );
                assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let mut at: libc::sockaddr_ll = mem::zeroed();
                at.sll_family = libc::AF_PACKET as u16;
                at.sll_protocol = ETH_P_ARP.to_be();
                at.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&raw const at).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
                let timeout = libc::timeval {
                    tv_sec: 1,
                    tv_usec: 0,
                };
                let rc = libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
                Self(fd)
            }
        }

        /// Whether `want` arrives before a second passes without any ARP.
        fn saw(&self, want: &[u8]) -> bool {
            let mut buf = [0u8; 1500];
            loop {
                // SAFETY: buf outlives the call and its length is passed.
                let n = unsafe {
                    libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                let Ok(n) = usize::try_from(n) else {
                    return false;
                };
                if buf[..n] == *want {
                    return true;
                }
            }
        }
    }
}
