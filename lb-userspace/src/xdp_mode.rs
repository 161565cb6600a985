//! Chooses the XDP attach mode, so that `auto` can never black-hole.
//!
//! On a veth, frames the program sends with XDP_TX or XDP_REDIRECT go
//! straight into the peer's receive ring, which is only drained when the
//! peer has NAPI: since Linux 5.13 that is when the peer runs an XDP program
//! of its own or has GRO on (drivers/net/veth.c, `veth_xdp_xmit`: no
//! `rq->napi`, the frames are dropped and counted nowhere the user looks).
//! Containers, kind and VM bridges put the peer in a plain bridge with
//! neither, so native mode there attaches fine and forwards nothing.
//! Generic mode sends through the stack (`dev_queue_xmit`), which works
//! everywhere.
//!
//! `auto` therefore picks native on a veth only when the peer is known to
//! deliver: it has a native XDP program. GRO on the peer also works, but
//! the peer's features cannot be read from here when it lives in another
//! namespace, so `--xdp-mode native` is the way to say so.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};

use crate::{cli::XdpAttachMode, netlink::Netlink};

/// What a veth's peer does with frames pushed into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerXdp {
    /// A native (driver-mode) XDP program: the peer has NAPI and delivers.
    Native { prog_id: u32 },
    /// No native program (none, or generic only): XDP_TX frames are dropped
    /// unless the peer has GRO on.
    None,
    /// The peer could not be read (another namespace without a netns id,
    /// or an old kernel).
    Unknown(String),
}

/// The interface is a veth; its peer, as far as it can be seen from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPeer {
    pub ifindex: u32,
    /// The peer's name, when it could be read.
    pub name: Option<String>,
    /// The peer's namespace as this namespace numbers it (IFLA_LINK_NETNSID);
    /// None when the peer is in this namespace.
    pub netnsid: Option<i32>,
    pub xdp: PeerXdp,
}

impl VethPeer {
    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("?");
        match self.netnsid {
            Some(id) => format!("{name} (ifindex {}, netns id {id})", self.ifindex),
            None => format!("{name} (ifindex {})", self.ifindex),
        }
    }
}

/// The mode to attach in, and why: what the agent logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub mode: XdpAttachMode,
    pub reason: String,
    /// The user asked for something that will not forward: say it loudly.
    pub warn: bool,
}

/// The decision, without I/O: `peer` is None when `iface` is not a veth.
pub fn choose(iface: &str, want: XdpAttachMode, peer: Option<&VethPeer>) -> Choice {
    let Some(peer) = peer else {
        let reason = match want {
            XdpAttachMode::Auto => {
                format!("{iface} is not a veth: native if its driver supports XDP, else generic")
            }
            _ => format!("--xdp-mode {} on {iface}", mode_name(want)),
        };
        return Choice {
            mode: want,
            reason,
            warn: false,
        };
    };
    let peer_name = peer.describe();
    match (want, &peer.xdp) {
        (XdpAttachMode::Auto, PeerXdp::Native { prog_id }) => Choice {
            mode: XdpAttachMode::Native,
            reason: format!(
                "{iface} is a veth whose peer {peer_name} runs native XDP program {prog_id}, \
                 so frames sent back (XDP_TX/REDIRECT) are delivered: native"
            ),
            warn: false,
        },
        (XdpAttachMode::Auto, xdp) => Choice {
            mode: XdpAttachMode::Generic,
            reason: format!(
                "{iface} is a veth whose peer {peer_name} {}: native XDP_TX/REDIRECT would be \
                 dropped there, so generic (for native, attach an XDP program to the peer or \
                 turn GRO on there, then pass --xdp-mode native)",
                peer_state(xdp)
            ),
            warn: false,
        },
        (XdpAttachMode::Native, PeerXdp::Native { .. }) | (XdpAttachMode::Generic, _) => Choice {
            mode: want,
            reason: format!(
                "--xdp-mode {} on {iface} (veth, peer {peer_name})",
                mode_name(want)
            ),
            warn: false,
        },
        (XdpAttachMode::Native, xdp) => Choice {
            mode: XdpAttachMode::Native,
            reason: format!(
                "--xdp-mode native on veth {iface}, whose peer {peer_name} {}: every packet \
                 xdplb forwards will be DROPPED unless the peer has GRO on \
                 (`ethtool -K {} gro on` in its namespace) or an XDP program; \
                 use --xdp-mode auto or generic otherwise",
                peer_state(xdp),
                peer.name.as_deref().unwrap_or("<peer>")
            ),
            warn: true,
        },
    }
}

fn peer_state(xdp: &PeerXdp) -> String {
    match xdp {
        PeerXdp::Native { .. } => "runs a native XDP program".into(),
        PeerXdp::None => "has no native XDP program".into(),
        PeerXdp::Unknown(why) => format!("cannot be inspected ({why})"),
    }
}

fn mode_name(mode: XdpAttachMode) -> &'static str {
    match mode {
        XdpAttachMode::Auto => "auto",
        XdpAttachMode::Native => "native",
        XdpAttachMode::Generic => "generic",
    }
}

/// Reads whether `iface` is a veth and, if so, its peer: IFLA_LINK (the
/// peer's ifindex), IFLA_LINK_NETNSID (its namespace), then the peer itself
/// through IFLA_TARGET_NETNSID (Linux ≥ 4.20), which answers for a link in
/// another namespace without entering it.
pub async fn veth_peer(iface: &str) -> Result<Option<VethPeer>> {
    let nl = Netlink::open()?;
    let handle = &nl.handle;
    async {
        let msg = nl
            .link(iface)
            .await
            .with_context(|| format!("looking up interface {iface}"))?
            .with_context(|| format!("interface {iface} not found"))?;
        if !is_veth(&msg) {
            return Ok(None);
        }
        let Some(ifindex) = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        }) else {
            return Ok(Some(VethPeer {
                ifindex: 0,
                name: None,
                netnsid: None,
                xdp: PeerXdp::Unknown("the kernel names no peer".into()),
            }));
        };
        let netnsid = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkNetNsId(id) => Some(*id),
            _ => None,
        });
        let mut get = handle.link().get().match_index(ifindex);
        if let Some(id) = netnsid {
            // IFLA_TARGET_NETNSID (called IFLA_IF_NETNSID in the crate).
            get.message_mut()
                .attributes
                .push(LinkAttribute::IfNetnsId(id));
        }
        let peer = match get.execute().try_next().await {
            Ok(Some(peer)) => peer,
            Ok(None) => {
                return Ok(Some(VethPeer {
                    ifindex,
                    name: None,
                    netnsid,
                    xdp: PeerXdp::Unknown("not found".into()),
                }));
            }
            Err(e) => {
                return Ok(Some(VethPeer {
                    ifindex,
                    name: None,
                    netnsid,
                    xdp: PeerXdp::Unknown(e.to_string()),
                }));
            }
        };
        let name = peer.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        Ok(Some(VethPeer {
            ifindex,
            name,
            netnsid,
            xdp: peer_xdp(&peer),
        }))
    }
    .await
}

/// Whether an XDP program (any mode) is attached to `iface`, per the
/// kernel: what VRRP tracking calls the data plane being there.
pub async fn attached(iface: &str) -> bool {
    let Ok(nl) = Netlink::open() else {
        return false;
    };
    let Ok(Some(msg)) = nl.link(iface).await else {
        return false;
    };
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(x) => x.iter().any(|x| {
            matches!(
                x,
                LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) if *id != 0
            )
        }),
        _ => false,
    })
}

fn is_veth(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn peer_xdp(msg: &LinkMessage) -> PeerXdp {
    let Some(xdp) = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => Some(x),
        _ => None,
    }) else {
        return PeerXdp::None;
    };
    // With one program the kernel reports its mode (Attached) and ProgId;
    // with several (Multiple), one id per mode.
    let drv = xdp.iter().find_map(|x| match x {
        LinkXdp::DrvProgId(id) => Some(*id),
        _ => None,
    });
    let attached = xdp.iter().find_map(|x| match x {
        LinkXdp::Attached(a) => Some(*a),
        _ => None,
    });
    let prog = xdp.iter().find_map(|x| match x {
        LinkXdp::ProgId(id) => Some(*id),
        _ => None,
    });
    match (drv, attached, prog) {
        (Some(id), _, _) => PeerXdp::Native { prog_id: id },
        (None, Some(XdpAttached::Driver), Some(id)) => PeerXdp::Native { prog_id: id },
        _ => PeerXdp::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(xdp: PeerXdp) -> VethPeer {
        VethPeer {
            ifindex: 7,
            name: Some("veth-lb1".into()),
            netnsid: Some(0),
            xdp,
        }
    }

    #[test]
    fn auto_on_a_veth_is_native_only_when_the_peer_runs_xdp() {
        let c = choose(
            "eth0",
            XdpAttachMode::Auto,
            Some(&peer(PeerXdp::Native { prog_id: 42 })),
        );
        assert_eq!(c.mode, XdpAttachMode::Native, "{c:?}");
        assert!(
            c.reason.contains("program 42") && c.reason.contains("veth-lb1"),
            "{c:?}"
        );
        for xdp in [PeerXdp::None, PeerXdp::Unknown("EINVAL".into())] {
            let c = choose("eth0", XdpAttachMode::Auto, Some(&peer(xdp.clone())));
            assert_eq!(c.mode, XdpAttachMode::Generic, "{xdp:?}: {c:?}");
            assert!(!c.warn);
            assert!(
                c.reason.contains("generic") && c.reason.contains("veth-lb1"),
                "{c:?}"
            );
        }
    }

    #[test]
    fn explicit_native_on_a_silent_veth_is_kept_and_warned_about() {
        let c = choose("eth0", XdpAttachMode::Native, Some(&peer(PeerXdp::None)));
        assert_eq!(c.mode, XdpAttachMode::Native);
        assert!(c.warn);
        assert!(
            c.reason.contains("DROPPED") && c.reason.contains("gro on"),
            "{c:?}"
        );
        let c = choose(
            "eth0",
            XdpAttachMode::Native,
            Some(&peer(PeerXdp::Native { prog_id: 1 })),
        );
        assert!(!c.warn, "{c:?}");
    }

    #[test]
    fn other_interfaces_keep_the_asked_mode() {
        for want in [
            XdpAttachMode::Auto,
            XdpAttachMode::Native,
            XdpAttachMode::Generic,
        ] {
            let c = choose("ens33", want, None);
            assert_eq!(c.mode, want);
            assert!(!c.warn);
        }
        assert_eq!(
            choose("eth0", XdpAttachMode::Generic, Some(&peer(PeerXdp::None))).mode,
            XdpAttachMode::Generic
        );
    }
}
