//! The VRRP advertisement on the wire, IPv4 only: VRRPv2 (RFC 3768 §5)
//! and VRRPv3 (RFC 5798 §5). Encoding builds the VRRP payload (what follows
//! the IPv4 header); decoding validates a received payload against what the
//! local virtual router expects, in the order keepalived 2.2's
//! `vrrp_check_packet` (keepalived/vrrp/vrrp.c) applies its checks, and says
//! why in a [`Reject`] when it does not pass. No I/O here: a raw-socket
//! driver hands in the IPv4 header fields and payload ([`split_ipv4`] cuts a
//! whole received packet into those) and sends what [`Advert::encode`]
//! returns, behind [`ipv4_header`] if it builds its own headers.

use std::fmt;
use std::net::Ipv4Addr;

/// IP protocol number of VRRP (RFC 5798 §5.1.1.4, RFC 3768 §5.2.4).
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group adverts go to (RFC 5798 §5.1.1.2).
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Adverts are sent with TTL 255 and, to multicast, received only with 255,
/// so none can come from off-link (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
/// The priority a master sends when it stops (RFC 5798 §5.2.4).
pub const PRIORITY_STOP: u8 = 0;
/// The priority of the router that owns the virtual addresses (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// VRRPv2 authentication data: two 32-bit words after the addresses
/// (RFC 3768 §5.3.10, keepalived's `VRRP_AUTH_LEN`).
pub const AUTH_LEN: usize = 8;
/// The fixed VRRP header: version/type, VRID, priority, count, then
/// auth type + interval (v2) or reserved + interval (v3), then checksum.
pub const HEADER_LEN: usize = 8;
/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Type 1, the only type (RFC 5798 §5.2.2).
const TYPE_ADVERT: u8 = 1;
/// Internetwork control precedence, the TOS keepalived's `vrrp_build_ip4` sets.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// v3 carries the interval in the low 12 bits; the top 4 are reserved,
/// zero on send and ignored on receipt (RFC 5798 §5.2.7).
const V3_INTERVAL_MASK: u16 = 0x0fff;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: interval in whole seconds, optional simple password,
    /// checksum over the VRRP message only.
    V2,
    /// RFC 5798: interval in centiseconds, no authentication, checksum
    /// including the IPv4 pseudo-header.
    V3,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    /// Bytes after the address list: v2's authentication data, none in v3.
    fn trailer_len(number: u8) -> usize {
        if number == 2 { AUTH_LEN } else { 0 }
    }
}

/// VRRPv2 authentication (RFC 2338 §5.3.6, kept by keepalived though RFC
/// 3768 removed it). IPsec AH (type 2) is not supported.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    /// Simple password, sent in clear in the 8 authentication bytes.
    Pass([u8; AUTH_LEN]),
}

impl Auth {
    /// A password as keepalived's `auth_pass` reads it
    /// (`vrrp_auth_pass_handler`, keepalived/vrrp/vrrp_parser.c): cut to 8
    /// bytes if longer, zero-padded to 8 if shorter.
    pub fn password(password: &str) -> Auth {
        let mut data = [0u8; AUTH_LEN];
        let bytes = password.as_bytes();
        let n = bytes.len().min(AUTH_LEN);
        data[..n].copy_from_slice(&bytes[..n]);
        Auth::Pass(data)
    }

    /// The v2 Auth Type field: 0 none, 1 simple text password.
    pub fn type_code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Pass(_) => 1,
        }
    }
}

// The password stays out of logs.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Pass(_) => f.write_str("Pass(..)"),
        }
    }
}

/// One advertisement, either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// The advertisement interval in centiseconds, v3's unit. A v2 advert
    /// carries whole seconds, so for v2 this is a multiple of 100.
    pub interval_cs: u16,
    pub addresses: Vec<Ipv4Addr>,
    /// v2 only; always [`Auth::None`] in v3.
    pub auth: Auth,
}

/// Why an [`Advert`] cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The count field is 8 bits.
    TooManyAddresses(usize),
    /// v2 needs whole seconds 1..=255 (RFC 3768 §5.3.7), v3 1..=4095
    /// centiseconds (RFC 5798 §5.2.7).
    IntervalOutOfRange { version: Version, interval_cs: u16 },
    /// RFC 5798 removed authentication (§9).
    AuthInV3,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooManyAddresses(n) => write!(f, "{n} addresses, at most 255 fit"),
            EncodeError::IntervalOutOfRange {
                version,
                interval_cs,
            } => write!(
                f,
                "advert interval {interval_cs} cs cannot be sent in VRRPv{}",
                version.number()
            ),
            EncodeError::AuthInV3 => f.write_str("VRRPv3 has no authentication"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl Advert {
    /// The length of the encoded VRRP payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + 4 * self.addresses.len() + Version::trailer_len(self.version.number())
    }

    /// The VRRP payload, checksum filled in, to go in an IPv4 packet from
    /// `src` to `dst`. Only v3 reads them: its checksum covers the
    /// pseudo-header with the packet's real destination, the group or the
    /// unicast peer (RFC 5798 §5.2.8; keepalived's `vrrp_build_vrrp_v3` and,
    /// per peer, `vrrp_update_pkt`).
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vec<u8>, EncodeError> {
        let count = u8::try_from(self.addresses.len())
            .map_err(|_| EncodeError::TooManyAddresses(self.addresses.len()))?;
        let out_of_range = EncodeError::IntervalOutOfRange {
            version: self.version,
            interval_cs: self.interval_cs,
        };
        let mut buf = Vec::with_capacity(self.encoded_len());
        buf.push((self.version.number() << 4) | TYPE_ADVERT);
        buf.push(self.vrid);
        buf.push(self.priority);
        buf.push(count);
        match self.version {
            Version::V2 => {
                // RFC 3768 §5.3.7: whole seconds, 8 bits.
                let secs = u8::try_from(self.interval_cs / 100).map_err(|_| out_of_range)?;
                if !self.interval_cs.is_multiple_of(100) || secs == 0 {
                    return Err(out_of_range);
                }
                buf.push(self.auth.type_code());
                buf.push(secs);
            }
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::AuthInV3);
                }
                if self.interval_cs == 0 || self.interval_cs > V3_INTERVAL_MASK {
                    return Err(out_of_range);
                }
                buf.extend_from_slice(&self.interval_cs.to_be_bytes());
            }
        }
        buf.extend_from_slice(&[0, 0]); // checksum, computed over zero
        for addr in &self.addresses {
            buf.extend_from_slice(&addr.octets());
        }
        if self.version == Version::V2 {
            // RFC 2338 §5.3.10: the password, or zeros with no auth.
            match self.auth {
                Auth::Pass(data) => buf.extend_from_slice(&data),
                Auth::None => buf.extend_from_slice(&[0; AUTH_LEN]),
            }
        }
        let sum = checksum(self.version, src, dst, &buf);
        buf[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(buf)
    }
}

/// The Internet checksum (RFC 1071) of a VRRP message as `version` defines
/// it: over the message alone in v2 (RFC 3768 §5.3.8), over the IPv4
/// pseudo-header (src, dst, zero, protocol 112, VRRP length) and the
/// message in v3 (RFC 5798 §5.2.8). Computed over a message whose checksum
/// field holds a valid checksum, the result is zero.
pub fn checksum(version: Version, src: Ipv4Addr, dst: Ipv4Addr, vrrp: &[u8]) -> u16 {
    let mut sum = 0u32;
    if version == Version::V3 {
        sum = add_words(sum, &src.octets());
        sum = add_words(sum, &dst.octets());
        // The length field is 16 bits; a VRRP message is at most 8 + 255 * 4.
        let len = u16::try_from(vrrp.len()).unwrap_or(u16::MAX);
        let [hi, lo] = len.to_be_bytes();
        sum = add_words(sum, &[0, IPPROTO_VRRP, hi, lo]);
    }
    sum = add_words(sum, vrrp);
    !fold(sum)
}

/// Adds big-endian 16-bit words, an odd last byte padded with zero.
/// No carry is lost: a VRRP message has at most ~530 words of 0xffff.
fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds the carries back in: the ones'-complement sum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Why a received packet was dropped. Every one is counted and none is
/// acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Shorter than its header, or than its count of addresses says.
    Truncated,
    /// Longer than its count of addresses says (keepalived: "too long").
    TooLong,
    /// Not an IPv4 header we can read: version, IHL, total length, or a fragment.
    BadIpHeader,
    /// IP protocol is not 112.
    NotVrrp,
    /// TTL not 255 on a multicast instance (RFC 5798 §7.1).
    BadTtl,
    /// Not the VRRP version we run.
    BadVersion,
    /// Not an advertisement (type 1).
    BadType,
    /// Another virtual router's VRID.
    VridMismatch,
    /// v2 auth type not 0, 1 or 2.
    BadAuthType,
    /// v2 auth type not ours (RFC 2338 §7.1).
    AuthMismatch,
    /// v2 simple password not ours.
    BadPassword,
    /// v2 interval not ours (RFC 3768 §7.1 MUST); keepalived drops it so
    /// two masters cannot run with different intervals.
    IntervalMismatch,
    /// v3 interval of zero: a master down time of skew alone. keepalived
    /// accepts it; we refuse to be made master by it.
    ZeroInterval,
    /// Checksum wrong (v3: with the pseudo-header of the real destination).
    BadChecksum,
    /// The address list differs from ours in count or content, order aside.
    AddressMismatch,
    /// Multicast destination on an instance with unicast peers.
    MulticastInUnicastMode,
    /// Unicast destination on a multicast instance.
    UnicastInMulticastMode,
    /// Unicast source not among the peers, when asked to check
    /// (keepalived's `check_unicast_src`).
    UnknownUnicastSource,
    /// Our own primary address as the source: our own advert looped back,
    /// or a duplicate address. Never a peer.
    FromOwnAddress,
    /// Received while stopped (Initialize state): keepalived ignores
    /// packets until the instance is up.
    NotRunning,
}

impl Reject {
    /// Every reason, in declaration order; `reason as usize` indexes it.
    pub const ALL: [Reject; 20] = [
        Reject::Truncated,
        Reject::TooLong,
        Reject::BadIpHeader,
        Reject::NotVrrp,
        Reject::BadTtl,
        Reject::BadVersion,
        Reject::BadType,
        Reject::VridMismatch,
        Reject::BadAuthType,
        Reject::AuthMismatch,
        Reject::BadPassword,
        Reject::IntervalMismatch,
        Reject::ZeroInterval,
        Reject::BadChecksum,
        Reject::AddressMismatch,
        Reject::MulticastInUnicastMode,
        Reject::UnicastInMulticastMode,
        Reject::UnknownUnicastSource,
        Reject::FromOwnAddress,
        Reject::NotRunning,
    ];

    /// A stable snake_case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::TooLong => "too_long",
            Reject::BadIpHeader => "bad_ip_header",
            Reject::NotVrrp => "not_vrrp",
            Reject::BadTtl => "bad_ttl",
            Reject::BadVersion => "bad_version",
            Reject::BadType => "bad_type",
            Reject::VridMismatch => "vrid_mismatch",
            Reject::BadAuthType => "bad_auth_type",
            Reject::AuthMismatch => "auth_mismatch",
            Reject::BadPassword => "bad_password",
            Reject::IntervalMismatch => "interval_mismatch",
            Reject::ZeroInterval => "zero_interval",
            Reject::BadChecksum => "bad_checksum",
            Reject::AddressMismatch => "address_mismatch",
            Reject::MulticastInUnicastMode => "multicast_in_unicast_mode",
            Reject::UnicastInMulticastMode => "unicast_in_multicast_mode",
            Reject::UnknownUnicastSource => "unknown_unicast_source",
            Reject::FromOwnAddress => "from_own_address",
            Reject::NotRunning => "not_running",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reject {}

/// A count per [`Reject`] reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts([u64; Reject::ALL.len()]);

impl RejectCounts {
    pub fn bump(&mut self, reason: Reject) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: Reject) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every reason with its count, zeros included, for a metrics exporter.
    pub fn iter(&self) -> impl Iterator<Item = (Reject, u64)> + '_ {
        Reject::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

/// The IPv4 header fields the checks need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Meta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
}

/// Cuts a received IPv4 packet (as a raw `IPPROTO_VRRP` socket returns it,
/// header included) into its header fields and the VRRP payload. Bytes past
/// the total length, Ethernet padding, are left out. The header checksum is
/// not checked: the kernel drops bad ones before raw sockets see them.
pub fn split_ipv4(packet: &[u8]) -> Result<(Ipv4Meta, &[u8]), Reject> {
    if packet.len() < IPV4_HEADER_LEN {
        return Err(Reject::Truncated);
    }
    if packet[0] >> 4 != 4 {
        return Err(Reject::BadIpHeader);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < IPV4_HEADER_LEN || total < ihl {
        return Err(Reject::BadIpHeader);
    }
    if packet.len() < total {
        return Err(Reject::Truncated);
    }
    // More-fragments flag or an offset: a fragment; raw sockets get
    // reassembled packets, so this is not a whole advert.
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 {
        return Err(Reject::BadIpHeader);
    }
    if packet[9] != IPPROTO_VRRP {
        return Err(Reject::NotVrrp);
    }
    let meta = Ipv4Meta {
        ttl: packet[8],
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
    };
    Ok((meta, &packet[ihl..total]))
}

/// An IPv4 header for an advert of `payload_len` bytes, for drivers that
/// write their own (`IP_HDRINCL`), as keepalived's `vrrp_build_ip4` does:
/// TOS 0xc0, TTL 255, protocol 112, no options, ID 0 (the kernel fills it).
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> [u8; IPV4_HEADER_LEN] {
    let total = u16::try_from(IPV4_HEADER_LEN + payload_len).unwrap_or(u16::MAX);
    let mut h = [0u8; IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = TOS_INTERNETWORK_CONTROL;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = TTL;
    h[9] = IPPROTO_VRRP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = !fold(add_words(0, &h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// What the local virtual router expects of an advert.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    pub version: Version,
    pub vrid: u8,
    /// Ours, in centiseconds; v2 adverts must carry it.
    pub interval_cs: u16,
    pub addresses: &'a [Ipv4Addr],
    pub auth: Auth,
    /// Empty for a multicast instance.
    pub unicast_peers: &'a [Ipv4Addr],
    /// Drop unicast adverts from a source not in `unicast_peers`.
    pub check_unicast_src: bool,
    /// Our primary address; adverts from it are never acted on.
    pub own_address: Ipv4Addr,
}

impl Expect<'_> {
    fn unicast(&self) -> bool {
        !self.unicast_peers.is_empty()
    }
}

/// Decodes and validates a received VRRP payload. The checks and their
/// order follow keepalived 2.2's `vrrp_check_packet` (VRID first, as its
/// dispatcher looks the instance up by VRID): length, TTL, version, v2
/// auth type, password and interval, type, address count, checksum,
/// multicast vs unicast destination, address list, unicast source.
pub fn decode(ip: &Ipv4Meta, payload: &[u8], expect: &Expect<'_>) -> Result<Advert, Reject> {
    if payload.len() < HEADER_LEN {
        return Err(Reject::Truncated);
    }
    let version = payload[0] >> 4;
    let kind = payload[0] & 0x0f;
    let (vrid, priority, count) = (payload[1], payload[2], usize::from(payload[3]));
    if vrid != expect.vrid {
        return Err(Reject::VridMismatch);
    }
    // RFC 5798 §7.1: MUST verify the packet holds the whole message;
    // keepalived sizes it from the packet's own version and count.
    let addr_end = HEADER_LEN + 4 * count;
    let expected_len = addr_end + Version::trailer_len(version);
    if payload.len() < expected_len {
        return Err(Reject::Truncated);
    }
    if payload.len() > expected_len {
        return Err(Reject::TooLong);
    }
    // RFC 5798 §7.1 MUST; keepalived skips it in unicast mode, where
    // adverts may be routed.
    if !expect.unicast() && ip.ttl != TTL {
        return Err(Reject::BadTtl);
    }
    if version != expect.version.number() {
        return Err(Reject::BadVersion);
    }
    let interval_cs = match expect.version {
        Version::V2 => {
            check_v2_auth(payload[4], &payload[addr_end..], expect.auth)?;
            // RFC 3768 §7.1: MUST match ours, else drop.
            let interval_cs = u16::from(payload[5]) * 100;
            if interval_cs != expect.interval_cs {
                return Err(Reject::IntervalMismatch);
            }
            interval_cs
        }
        // RFC 5798 §7.1 only SHOULD-log a different interval: the backup
        // adopts the master's (§6.4.2), so it is no reason to drop.
        Version::V3 => u16::from_be_bytes([payload[4], payload[5]]) & V3_INTERVAL_MASK,
    };
    if kind != TYPE_ADVERT {
        return Err(Reject::BadType);
    }
    if count != expect.addresses.len() {
        return Err(Reject::AddressMismatch);
    }
    if checksum(expect.version, ip.src, ip.dst, payload) != 0 {
        return Err(Reject::BadChecksum);
    }
    // keepalived: a unicast instance takes only unicast and a multicast
    // instance only multicast, so the two modes cannot be mixed by mistake.
    match (expect.unicast(), ip.dst.is_multicast()) {
        (true, true) => return Err(Reject::MulticastInUnicastMode),
        (false, false) => return Err(Reject::UnicastInMulticastMode),
        _ => {}
    }
    if interval_cs == 0 {
        return Err(Reject::ZeroInterval);
    }
    let addresses: Vec<Ipv4Addr> = payload[HEADER_LEN..addr_end]
        .chunks_exact(4)
        .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        .collect();
    // RFC 5798 §7.1 MAY verify the addresses; keepalived does. Our list has
    // no duplicates and the counts match, so each of ours being present
    // means the same set, whatever the order.
    if !expect.addresses.iter().all(|a| addresses.contains(a)) {
        return Err(Reject::AddressMismatch);
    }
    if expect.unicast() && expect.check_unicast_src && !expect.unicast_peers.contains(&ip.src) {
        return Err(Reject::UnknownUnicastSource);
    }
    if ip.src == expect.own_address {
        return Err(Reject::FromOwnAddress);
    }
    let auth = match expect.version {
        Version::V2 => expect.auth,
        Version::V3 => Auth::None,
    };
    Ok(Advert {
        version: expect.version,
        vrid,
        priority,
        interval_cs,
        addresses,
        auth,
    })
}

/// RFC 2338 §7.1 (kept in keepalived for v2): the auth type must be a known
/// one and ours, and a simple password must be ours.
fn check_v2_auth(auth_type: u8, data: &[u8], ours: Auth) -> Result<(), Reject> {
    // 0 none, 1 simple password, 2 IPsec AH: keepalived built with auth
    // support knows all three, so a 2 is a mismatch rather than unknown.
    if auth_type > 2 {
        return Err(Reject::BadAuthType);
    }
    if auth_type != ours.type_code() {
        return Err(Reject::AuthMismatch);
    }
    if let Auth::Pass(password) = ours {
        // Compare every byte, as keepalived's memcmp_constant_time does.
        let diff = data
            .iter()
            .zip(password.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 || data.len() != AUTH_LEN {
            return Err(Reject::BadPassword);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
