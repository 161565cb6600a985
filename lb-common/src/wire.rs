//! On-the-wire headers as byte arrays (network byte order kept as bytes, so
//! no field is ever read as an enum or a misaligned integer), shared by the
//! XDP program and the host tests that build packets.

use bytemuck::{Pod, Zeroable};

pub const ETH_HDR_LEN: usize = core::mem::size_of::<EthHdr>();
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// The ethertypes the data plane tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    Other,
}

impl EthHdr {
    #[inline(always)]
    pub fn ether_type(&self) -> EtherType {
        match u16::from_be_bytes(self.ether_type) {
            ETH_P_IP => EtherType::Ipv4,
            ETH_P_ARP => EtherType::Arp,
            ETH_P_IPV6 => EtherType::Ipv6,
            _ => EtherType::Other,
        }
    }
}

/// An ARP packet for IPv4 over Ethernet (RFC 826), after the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

pub const ARP_REQUEST: u16 = 1;

impl ArpHdr {
    /// A request for an IPv4 address over Ethernet: who has `tpa`?
    #[inline(always)]
    pub fn is_ipv4_request(&self) -> bool {
        u16::from_be_bytes(self.htype) == 1
            && u16::from_be_bytes(self.ptype) == ETH_P_IP
            && self.hlen == 6
            && self.plen == 4
            && u16::from_be_bytes(self.oper) == ARP_REQUEST
    }
}

pub const IPV4_HDR_LEN: usize = core::mem::size_of::<Ipv4Hdr>();

/// The fixed 20 bytes of an IPv4 header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in 32-bit words.
    #[inline(always)]
    pub fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }
}

impl Ipv4Hdr {
    /// More-fragments set or a non-zero fragment offset.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x3fff != 0
    }
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }
}

pub const TCP_HDR_LEN: usize = core::mem::size_of::<TcpHdr>();
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The fixed 20 bytes of a TCP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high 4 bits) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

impl TcpHdr {
    /// Header length in 32-bit words.
    #[inline(always)]
    pub fn data_offset(&self) -> u8 {
        self.doff >> 4
    }
}

pub const UDP_HDR_LEN: usize = core::mem::size_of::<UdpHdr>();

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_the_wire() {
        assert_eq!(ETH_HDR_LEN, 14);
        assert_eq!(IPV4_HDR_LEN, 20);
        assert_eq!(TCP_HDR_LEN, 20);
        assert_eq!(UDP_HDR_LEN, 8);
    }

    #[test]
    fn ethertype_and_ihl_decode() {
        let eth = EthHdr {
            ether_type: [0x86, 0xdd],
            ..Default::default()
        };
        assert_eq!(eth.ether_type(), EtherType::Ipv6);
        let ip = Ipv4Hdr {
            version_ihl: 0x46,
            ..Default::default()
        };
        assert_eq!((ip.version(), ip.ihl()), (4, 6));
    }
}
