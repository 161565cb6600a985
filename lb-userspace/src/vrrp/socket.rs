//! The VRRP socket: a raw IPv4 socket for protocol 112 on one interface,
//! the only I/O the VRRP engine's driver does besides its timer.
//!
//! As keepalived does (vrrp.c, `open_vrrp_send_socket`/`open_vrrp_read_socket`):
//! adverts leave with TTL 255 (RFC 5798 §5.1.1.3: receivers drop any other
//! TTL, so an advert cannot have crossed a router), from the interface's
//! own address — never from a VIP, which moves — and our own multicast is
//! not looped back. The socket is bound to the interface, so adverts of
//! the same VRID on another segment are never heard.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Context, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

/// IANA's protocol number for VRRP (RFC 5798 §5.1.1.4).
pub const IPPROTO_VRRP: i32 = 112;
/// The VRRP IPv4 multicast group (RFC 5798 §5.1.1.2).
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// Two raw sockets, as keepalived keeps them: one to send, bound to our
/// address (the adverts' source), and one to receive, not bound to an
/// address — a raw socket bound to one only receives packets addressed to
/// it, which would filter out the group's.
pub struct VrrpSocket {
    send: AsyncFd<Socket>,
    recv: AsyncFd<Socket>,
}

impl VrrpSocket {
    /// Opens the sockets on `iface` (index `ifindex`), sending from `src`.
    /// With `multicast`, joins the VRRP group there; in unicast mode the
    /// group is not joined, so only adverts addressed to us arrive.
    pub fn open(iface: &str, ifindex: u32, src: Ipv4Addr, multicast: bool) -> Result<Self> {
        let what = || format!("opening the VRRP sockets on {iface}");
        let raw = || -> Result<Socket> {
            let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_VRRP)))
                .with_context(what)?;
            sock.bind_device(Some(iface.as_bytes()))
                .with_context(what)?;
            sock.set_nonblocking(true).with_context(what)?;
            Ok(sock)
        };
        let send = raw()?;
        // The source address of our adverts, and the address the other
        // routers compare priorities against on a tie.
        send.bind(&SocketAddrV4::new(src, 0).into())
            .with_context(|| format!("binding the VRRP socket to {src} on {iface}"))?;
        send.set_ttl_v4(255).with_context(what)?;
        send.set_multicast_ttl_v4(255).with_context(what)?;
        send.set_multicast_loop_v4(false).with_context(what)?;
        send.set_multicast_if_v4(&src).with_context(what)?;
        let recv = raw()?;
        if multicast {
            recv.join_multicast_v4_n(&VRRP_GROUP, &InterfaceIndexOrAddress::Index(ifindex))
                .with_context(|| format!("joining {VRRP_GROUP} on {iface}"))?;
        }
        // SAFETY: each socket owns its descriptor and keeps it open, the
        // same one, for as long as its AsyncFd holds it.
        let register = |s: Socket| {
            unsafe { AsyncFd::register(s) }.map_err(|e| anyhow::anyhow!("{}: {e}", what()))
        };
        Ok(VrrpSocket {
            send: register(send)?,
            recv: register(recv)?,
        })
    }

    /// Receives one whole IPv4 packet (a raw socket hands over the IP
    /// header too: the engine checks its TTL, source and destination).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.recv.readable().await?;
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and recv
            // only writes into the buffer.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match guard.try_io(|fd| fd.get_ref().recv(uninit)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one VRRP payload to `dst`; the kernel writes the IP header
    /// (protocol 112, TTL 255, our source address).
    pub async fn send(&self, payload: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let to = SocketAddrV4::new(dst, 0).into();
        loop {
            let mut guard = self.send.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send_to(payload, &to)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}
