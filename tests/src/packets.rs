//! Raw Ethernet frames for the end-to-end tests: well-formed IPv4 TCP/UDP
//! packets with correct checksums, and the malformed ones a data plane on
//! the wire must count and survive (truncated L4 header, IHL < 5, IP
//! options, fragments, TCP without flags, length fields that lie), sent
//! through an `AF_PACKET` socket so the kernel's own stack never gets a say
//! in what leaves the interface.
//!
//! ```no_run
//! # fn f(lab: &lab::Lab) -> anyhow::Result<()> {
//! use std::net::SocketAddrV4;
//! use lab::packets::{FrameBuilder, mac_of, send_frames};
//! let (client, lb1) = (lab.host("client"), lab.host("lb1"));
//! let frame = FrameBuilder::tcp(
//!     mac_of(client, "eth0")?,
//!     mac_of(lb1, "eth0")?,
//!     SocketAddrV4::new(client.ip, 1000),
//!     SocketAddrV4::new(lab.vip(), 6443),
//! )
//! .flags(0) // a TCP segment with no flags at all
//! .build();
//! client.ns.run(move || send_frames("eth0", &[frame]))??;
//! # Ok(()) }
//! ```

use std::{
    ffi::CString,
    io, mem,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use lb_common::{
    csum::{checksum, l4_checksum},
    service::{PROTO_TCP, PROTO_UDP},
    wire::{ETH_HDR_LEN, ETH_P_IP, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, TCP_SYN, TcpHdr, UdpHdr},
};

use crate::Host;

/// IPv4 "more fragments" flag, in the flags/offset field.
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IP_DF: u16 = 0x4000;
/// The IP option that does nothing (RFC 791 "No Operation").
pub const IPOPT_NOP: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => PROTO_TCP,
            L4Proto::Udp => PROTO_UDP,
        }
    }
}

/// One Ethernet + IPv4 + TCP/UDP frame to build. Defaults make a valid
/// packet (a TCP SYN, or a UDP datagram); each knob breaks one thing and
/// leaves the rest consistent, checksums included: they are computed over
/// the bytes actually sent, after the knobs are applied, so a receiver
/// rejects the frame for the reason the test means and no other.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: L4Proto,
    tcp_flags: u8,
    tcp_data_offset: u8,
    seq: u32,
    ack: u32,
    ip_id: u16,
    ttl: u8,
    frag: u16,
    ihl: Option<u8>,
    options: Vec<u8>,
    payload: Vec<u8>,
    ip_len_excess: u16,
    udp_len_excess: u16,
    l4_truncate: Option<usize>,
}

impl FrameBuilder {
    fn new(
        proto: L4Proto,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Self {
        FrameBuilder {
            src_mac,
            dst_mac,
            src,
            dst,
            proto,
            tcp_flags: TCP_SYN,
            tcp_data_offset: 5,
            seq: 0x1000_0000,
            ack: 0,
            ip_id: 1,
            ttl: 64,
            frag: 0,
            ihl: None,
            options: Vec::new(),
            payload: Vec::new(),
            ip_len_excess: 0,
            udp_len_excess: 0,
            l4_truncate: None,
        }
    }

    /// A TCP SYN from `src` to `dst`, no payload.
    pub fn tcp(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(L4Proto::Tcp, src_mac, dst_mac, src, dst)
    }

    /// A UDP datagram from `src` to `dst`, no payload.
    pub fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(L4Proto::Udp, src_mac, dst_mac, src, dst)
    }

    /// TCP flags (`lb_common::wire::TCP_*`); 0 makes the invalid
    /// "no flags" segment scanners send.
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// The TCP data offset in 32-bit words as written in the header (the
    /// header itself stays 20 bytes): below 5 is malformed.
    pub fn tcp_data_offset(mut self, words: u8) -> Self {
        self.tcp_data_offset = words;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    /// The IPv4 identification: fragments of different packets need
    /// different ids, or the receiver reassembles them together.
    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Writes this IHL into the header whatever its real length (20 bytes
    /// plus options): below 5 is malformed.
    pub fn ihl(mut self, words: u8) -> Self {
        self.ihl = Some(words);
        self
    }

    /// IPv4 options after the fixed header, padded to a multiple of 4 with
    /// End of Options List; the IHL grows to match. At most 40 bytes.
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Sets More Fragments: the first fragment of a larger packet.
    pub fn more_fragments(mut self) -> Self {
        self.frag |= IP_MF;
        self
    }

    /// Fragment offset in 8-byte units: a later fragment.
    pub fn fragment_offset(mut self, units: u16) -> Self {
        self.frag = (self.frag & !0x1fff) | (units & 0x1fff);
        self
    }

    /// The IPv4 total length claims `extra` more bytes than the frame has.
    pub fn ip_total_len_excess(mut self, extra: u16) -> Self {
        self.ip_len_excess = extra;
        self
    }

    /// The UDP length claims `extra` more bytes than the datagram has.
    pub fn udp_len_excess(mut self, extra: u16) -> Self {
        self.udp_len_excess = extra;
        self
    }

    /// The frame ends `keep` bytes into the L4 header (keep it below the
    /// header's size: 20 for TCP, 8 for UDP); the IPv4 total length agrees
    /// with the shortened packet, so only the L4 header is wrong.
    pub fn truncate_l4(mut self, keep: usize) -> Self {
        self.l4_truncate = Some(keep);
        self
    }

    /// The frame, checksums filled in.
    pub fn build(&self) -> Vec<u8> {
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        let proto = self.proto.number();

        let mut l4 = match self.proto {
            L4Proto::Tcp => bytemuck::bytes_of(&TcpHdr {
                sport: self.src.port().to_be_bytes(),
                dport: self.dst.port().to_be_bytes(),
                seq: self.seq.to_be_bytes(),
                ack: self.ack.to_be_bytes(),
                doff: self.tcp_data_offset << 4,
                flags: self.tcp_flags,
                window: 64240u16.to_be_bytes(),
                check: [0; 2],
                urg: [0; 2],
            })
            .to_vec(),
            L4Proto::Udp => {
                let len = (size_of::<UdpHdr>() + self.payload.len()) as u16 + self.udp_len_excess;
                bytemuck::bytes_of(&UdpHdr {
                    sport: self.src.port().to_be_bytes(),
                    dport: self.dst.port().to_be_bytes(),
                    len: len.to_be_bytes(),
                    check: [0; 2],
                })
                .to_vec()
            }
        };
        l4.extend_from_slice(&self.payload);
        let check = l4_checksum(src, dst, proto, &l4);
        let at = l4_check_offset(self.proto);
        l4[at..at + 2].copy_from_slice(&check);
        if let Some(keep) = self.l4_truncate {
            l4.truncate(keep);
        }

        let mut options = self.options.clone();
        options.resize(options.len().next_multiple_of(4), 0);
        assert!(options.len() <= 40, "IPv4 options are at most 40 bytes");
        let hdr_len = IPV4_HDR_LEN + options.len();
        let ihl = self.ihl.unwrap_or((hdr_len / 4) as u8);
        let tot_len = (hdr_len + l4.len()) as u16 + self.ip_len_excess;
        let mut ip = bytemuck::bytes_of(&Ipv4Hdr {
            version_ihl: 0x40 | (ihl & 0x0f),
            tos: 0,
            tot_len: tot_len.to_be_bytes(),
            id: self.ip_id.to_be_bytes(),
            frag_off: self.frag.to_be_bytes(),
            ttl: self.ttl,
            proto,
            check: [0; 2],
            src,
            dst,
        })
        .to_vec();
        ip.extend_from_slice(&options);
        let check = checksum(&ip);
        ip[10..12].copy_from_slice(&check);

        let eth = EthHdr {
            dst: self.dst_mac,
            src: self.src_mac,
            ether_type: ETH_P_IP.to_be_bytes(),
        };
        let mut frame = Vec::with_capacity(ETH_HDR_LEN + ip.len() + l4.len());
        frame.extend_from_slice(bytemuck::bytes_of(&eth));
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Where the checksum sits in the L4 header.
fn l4_check_offset(proto: L4Proto) -> usize {
    match proto {
        L4Proto::Tcp => mem::offset_of!(TcpHdr, check),
        L4Proto::Udp => mem::offset_of!(UdpHdr, check),
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `/sys/class/net/*/address` and `ip link` write it.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .with_context(|| format!("MAC address {s:?} has fewer than 6 bytes"))?;
        *byte = u8::from_str_radix(part, 16)
            .with_context(|| format!("MAC address {s:?}: {part:?} is not a hex byte"))?;
    }
    if parts.next().is_some() {
        bail!("MAC address {s:?} has more than 6 bytes");
    }
    Ok(mac)
}

/// The MAC address of `ifname` in `host`'s namespace, asked of the kernel
/// over netlink (`ip -j link`). Not from `/sys/class/net`: lab commands
/// enter only the network namespace, and the sysfs they see is the root
/// namespace's, whose `eth0` is another interface altogether.
pub fn mac_of(host: &Host, ifname: &str) -> Result<[u8; 6]> {
    let out = host.ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `ip -j link show dev {ifname}` in {}", host.name))?;
    let addr = v[0]["address"]
        .as_str()
        .with_context(|| format!("{}: {ifname} has no address: {out}", host.name))?;
    parse_mac(addr).with_context(|| format!("{}: {ifname}", host.name))
}

/// Sends each frame as is out of `ifname` through an `AF_PACKET`/`SOCK_RAW`
/// socket. The interface is looked up in the calling thread's network
/// namespace: call it inside `host.ns.run(..)` to send from a lab host.
/// Needs CAP_NET_RAW.
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let c_name = CString::new(ifname).with_context(|| format!("interface name {ifname:?}"))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("no interface {ifname} in this network namespace"));
    }
    // Protocol 0: the socket only sends, the kernel queues nothing to it.
    // SAFETY: socket() has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .context("opening an AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    for (i, frame) in frames.iter().enumerate() {
        if frame.len() < ETH_HDR_LEN {
            bail!(
                "frame {i} is {} bytes, shorter than an Ethernet header",
                frame.len()
            );
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        // Already in network byte order, as the frame carries it.
        addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("sending frame {i} ({} bytes) on {ifname}", frame.len()));
        }
        if sent as usize != frame.len() {
            bail!(
                "sent {sent} of the {} bytes of frame {i} on {ifname}",
                frame.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{
        csum::{fold, pseudo_header_sum, sum},
        wire::{TCP_ACK, TCP_HDR_LEN, UDP_HDR_LEN},
    };

    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn addrs() -> (SocketAddrV4, SocketAddrV4) {
        (
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 1, 10), 40000),
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 1, 100), 6443),
        )
    }

    fn tcp() -> FrameBuilder {
        let (s, d) = addrs();
        FrameBuilder::tcp(A, B, s, d)
    }

    fn udp() -> FrameBuilder {
        let (s, d) = addrs();
        FrameBuilder::udp(A, B, s, d)
    }

    /// The frame's IPv4 header (options included, as IHL or `hdr_len` says)
    /// and what follows it.
    fn split(frame: &[u8], hdr_len: usize) -> (Ipv4Hdr, &[u8], &[u8]) {
        let ip_bytes = &frame[ETH_HDR_LEN..ETH_HDR_LEN + hdr_len];
        let ip: Ipv4Hdr = bytemuck::pod_read_unaligned(&ip_bytes[..IPV4_HDR_LEN]);
        (ip, ip_bytes, &frame[ETH_HDR_LEN + hdr_len..])
    }

    /// Recomputing the Internet checksum over the header, with its checksum
    /// field filled in, gives zero.
    fn assert_ip_verifies(ip_bytes: &[u8]) {
        assert_eq!(
            checksum(ip_bytes),
            [0, 0],
            "IPv4 header checksum does not verify: {ip_bytes:02x?}"
        );
    }

    /// The same over the pseudo-header and the segment.
    fn assert_l4_verifies(ip: &Ipv4Hdr, segment: &[u8]) {
        let pseudo = pseudo_header_sum(ip.src, ip.dst, ip.proto, segment.len() as u16);
        assert_eq!(
            !fold(sum(segment, pseudo)),
            0,
            "L4 checksum does not verify: {segment:02x?}"
        );
    }

    #[test]
    fn valid_tcp_syn() {
        let f = tcp().payload(b"hello").build();
        assert_eq!(f.len(), ETH_HDR_LEN + IPV4_HDR_LEN + TCP_HDR_LEN + 5);
        let eth: EthHdr = bytemuck::pod_read_unaligned(&f[..ETH_HDR_LEN]);
        assert_eq!((eth.dst, eth.src, eth.ether_type), (B, A, [0x08, 0x00]));
        let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!((ip.version(), ip.ihl(), ip.proto), (4, 5, PROTO_TCP));
        assert_eq!(ip.total_len() as usize, f.len() - ETH_HDR_LEN);
        assert!(!ip.is_fragment());
        assert_eq!(ip.src, [10, 77, 1, 10]);
        assert_eq!(ip.dst, [10, 77, 1, 100]);
        assert_ip_verifies(ip_bytes);
        let t: TcpHdr = bytemuck::pod_read_unaligned(&seg[..TCP_HDR_LEN]);
        assert_eq!(
            (
                u16::from_be_bytes(t.sport),
                u16::from_be_bytes(t.dport),
                t.data_offset(),
                t.flags
            ),
            (40000, 6443, 5, TCP_SYN)
        );
        assert_eq!(&seg[TCP_HDR_LEN..], b"hello");
        assert_l4_verifies(&ip, seg);
    }

    #[test]
    fn valid_udp() {
        let f = udp().payload(b"abc").build();
        let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!(ip.proto, PROTO_UDP);
        assert_ip_verifies(ip_bytes);
        let u: UdpHdr = bytemuck::pod_read_unaligned(&seg[..UDP_HDR_LEN]);
        assert_eq!(u16::from_be_bytes(u.len) as usize, UDP_HDR_LEN + 3);
        assert_ne!(
            u.check,
            [0, 0],
            "a computed UDP checksum is never sent as 0"
        );
        assert_l4_verifies(&ip, seg);
    }

    #[test]
    fn ip_options_grow_the_header_and_stay_valid() {
        let f = tcp().ip_options(&[IPOPT_NOP; 4]).build();
        assert_eq!(f.len(), ETH_HDR_LEN + 24 + TCP_HDR_LEN);
        let (ip, ip_bytes, seg) = split(&f, 24);
        assert_eq!(ip.ihl(), 6);
        assert_eq!(&ip_bytes[IPV4_HDR_LEN..], &[1, 1, 1, 1]);
        assert_eq!(ip.total_len(), 24 + TCP_HDR_LEN as u16);
        assert_ip_verifies(ip_bytes);
        assert_l4_verifies(&ip, seg);
        // Odd lengths are padded with End of Options List.
        let f = tcp().ip_options(&[IPOPT_NOP]).build();
        let (ip, ip_bytes, _) = split(&f, 24);
        assert_eq!((ip.ihl(), &ip_bytes[20..]), (6, &[1, 0, 0, 0][..]));
        assert_ip_verifies(ip_bytes);
    }

    #[test]
    fn truncated_l4_header_ends_the_frame_with_a_consistent_ip_length() {
        let f = tcp().truncate_l4(10).build();
        assert_eq!(f.len(), ETH_HDR_LEN + IPV4_HDR_LEN + 10);
        let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!(ip.total_len() as usize, IPV4_HDR_LEN + 10);
        assert_eq!(seg.len(), 10);
        assert_ip_verifies(ip_bytes);
    }

    #[test]
    fn ihl_below_five() {
        let f = tcp().ihl(4).build();
        assert_eq!(f.len(), ETH_HDR_LEN + IPV4_HDR_LEN + TCP_HDR_LEN);
        assert_eq!(f[ETH_HDR_LEN], 0x44);
        let (_, ip_bytes, _) = split(&f, IPV4_HDR_LEN);
        assert_ip_verifies(ip_bytes);
    }

    #[test]
    fn fragments() {
        let f = tcp().more_fragments().ip_id(7).build();
        let (ip, ip_bytes, _) = split(&f, IPV4_HDR_LEN);
        assert_eq!(
            (u16::from_be_bytes(ip.frag_off), u16::from_be_bytes(ip.id)),
            (IP_MF, 7)
        );
        assert!(ip.is_fragment());
        assert_ip_verifies(ip_bytes);
        let f = tcp().fragment_offset(185).build();
        let (ip, ip_bytes, _) = split(&f, IPV4_HDR_LEN);
        assert_eq!(u16::from_be_bytes(ip.frag_off), 185);
        assert!(ip.is_fragment());
        assert_ip_verifies(ip_bytes);
        let f = tcp().more_fragments().fragment_offset(0x1fff).build();
        let (ip, _, _) = split(&f, IPV4_HDR_LEN);
        assert_eq!(u16::from_be_bytes(ip.frag_off), IP_MF | 0x1fff);
    }

    #[test]
    fn tcp_flags_and_data_offset() {
        for flags in [0, TCP_ACK, TCP_SYN | TCP_ACK] {
            let f = tcp().flags(flags).seq(5).ack(9).build();
            let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
            let t: TcpHdr = bytemuck::pod_read_unaligned(&seg[..TCP_HDR_LEN]);
            assert_eq!(
                (t.flags, t.seq, t.ack),
                (flags, 5u32.to_be_bytes(), 9u32.to_be_bytes())
            );
            assert_ip_verifies(ip_bytes);
            assert_l4_verifies(&ip, seg);
        }
        let f = tcp().tcp_data_offset(4).build();
        let (ip, _, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!(seg[12] >> 4, 4);
        assert_l4_verifies(&ip, seg);
    }

    #[test]
    fn lying_lengths() {
        let f = udp().payload(b"xy").udp_len_excess(100).build();
        let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!(seg.len(), UDP_HDR_LEN + 2);
        assert_eq!(
            u16::from_be_bytes([seg[4], seg[5]]),
            (UDP_HDR_LEN + 2 + 100) as u16
        );
        assert_eq!(ip.total_len() as usize, IPV4_HDR_LEN + seg.len());
        assert_ip_verifies(ip_bytes);

        let f = tcp().ip_total_len_excess(100).build();
        let (ip, ip_bytes, seg) = split(&f, IPV4_HDR_LEN);
        assert_eq!(ip.total_len() as usize, f.len() - ETH_HDR_LEN + 100);
        assert_ip_verifies(ip_bytes);
        assert_l4_verifies(&ip, seg);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:ab:0c:00:ff:10\n").unwrap(),
            [2, 0xab, 0x0c, 0, 0xff, 0x10]
        );
        assert!(parse_mac("02:ab:0c:00:ff").is_err());
        assert!(parse_mac("02:ab:0c:00:ff:10:11").is_err());
        assert!(parse_mac("02:ab:0c:00:ff:zz").is_err());
    }
}
