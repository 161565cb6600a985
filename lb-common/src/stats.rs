//! Counters and the reasons the data plane gives for each verdict.

use bytemuck::{Pod, Zeroable};

/// Packets and bytes, one slot per CPU in a per-CPU array; the agent sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// What happened to half-open connections (EMBRYOS), per CPU; the agent
/// sums. Events, not packet verdicts: the packet that reclaims a port is
/// still forwarded and counted under its verdict's reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EmbryoStats {
    /// Half-open connections made (by a SYN, or a mid-stream packet).
    pub opened: u64,
    /// Promoted to FLOWS: the connection showed it is real.
    pub promoted: u64,
    /// NAT ports taken from the oldest half-open connection probed,
    /// because the backend's ports were all held (a SYN flood's mark).
    pub reclaimed: u64,
    /// Ended by an RST from either side before promotion.
    pub reset: u64,
}

impl EmbryoStats {
    /// The per-CPU slots summed, as the agent and the tests read them.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a EmbryoStats>) -> EmbryoStats {
        per_cpu
            .into_iter()
            .fold(EmbryoStats::default(), |s, c| EmbryoStats {
                opened: s.opened + c.opened,
                promoted: s.promoted + c.promoted,
                reclaimed: s.reclaimed + c.reclaimed,
                reset: s.reset + c.reset,
            })
    }
}

impl Counter {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

#[cfg(feature = "user")]
// SAFETY: Counter is repr(C), two u64s, no padding (bytemuck::Pod proves it).
unsafe impl aya::Pod for Counter {}

/// Per service and per backend traffic (per-CPU slots; the agent sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), three u64s, no padding (bytemuck::Pod proves it).
unsafe impl aya::Pod for Traffic {}

#[cfg(feature = "user")]
// SAFETY: repr(C), four u64s, no padding (bytemuck::Pod proves it).
unsafe impl aya::Pod for EmbryoStats {}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal => $name:literal, )*) => {
        /// Why the program gave the verdict it gave. Each value indexes the
        /// [`crate::maps::REASON_STATS`] array. The kernel never reads this
        /// enum from memory; it only writes `reason as u32`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant = $value, )*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The snake_case name used in logs and metrics.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            pub const fn from_u32(v: u32) -> Option<Reason> {
                match v { $($value => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    /// Shorter than an Ethernet header: the kernel will drop it anyway.
    PassShortEthernet = 0 => "pass_short_ethernet",
    /// ARP: the VIP's owner must keep answering.
    PassArp = 1 => "pass_arp",
    /// IPv6: not balanced; the node's own stack handles it.
    PassIpv6 = 2 => "pass_ipv6",
    /// Any other ethertype (VLAN-tagged frames included).
    PassOtherEthertype = 3 => "pass_other_ethertype",
    /// IPv4 header truncated, IHL < 5 or version != 4.
    PassMalformedIpv4 = 4 => "pass_malformed_ipv4",
    /// IPv4 that is not for a virtual service nor a reply to a NATed flow:
    /// the node's own traffic (ICMP, VRRP, ssh, health checks...).
    PassNotService = 5 => "pass_not_service",
    /// An IPv4 fragment: only the first carries ports, so fragments go to
    /// the kernel, which reassembles.
    PassFragment = 6 => "pass_fragment",
    /// VIP traffic while this node is not active (VRRP backup): self-fencing.
    PassNotActive = 7 => "pass_not_active",
    /// The service has no usable backend: the kernel answers (RST).
    PassNoBackend = 8 => "pass_no_backend",
    /// The chosen backend is this node (stacked master): local delivery.
    PassLocalBackend = 9 => "pass_local_backend",
    /// NATed, but the next hop's MAC is not resolved yet: the kernel
    /// forwards this packet and resolves the neighbour.
    PassNoNeigh = 10 => "pass_no_neigh",
    /// NATed, but the FIB lookup failed otherwise: the kernel decides.
    PassFibOther = 11 => "pass_fib_other",
    /// Client → backend, sent back out the same interface.
    TxForward = 12 => "tx_forward",
    /// Backend → client (reverse NAT), sent back out the same interface.
    TxReply = 13 => "tx_reply",
    /// Client → backend through another interface (devmap).
    RedirectForward = 14 => "redirect_forward",
    /// Backend → client through another interface (devmap).
    RedirectReply = 15 => "redirect_reply",
    /// TCP/UDP header truncated, or TCP data offset out of range, for a service.
    DropMalformedL4 = 16 => "drop_malformed_l4",
    /// IPv4 total length disagrees with the packet, for a service.
    DropBadIpLength = 17 => "drop_bad_ip_length",
    /// UDP length field lies about the datagram, for a service.
    DropBadUdpLength = 18 => "drop_bad_udp_length",
    /// TCP segment with no flags at all (invalid; a scan), for a service.
    DropTcpNoFlags = 19 => "drop_tcp_no_flags",
    /// No free NAT port for this backend after bounded probing.
    DropNatPortsExhausted = 20 => "drop_nat_ports_exhausted",
    /// A map update failed (flow table full of unevictable entries...).
    AbortedMapUpdate = 21 => "aborted_map_update",
    /// TCP/UDP header too short to hold its ports: not classifiable, so
    /// not ours; the kernel discards it.
    PassTruncatedL4 = 22 => "pass_truncated_l4",
    /// The flow table is full: a new connection is refused rather than an
    /// established one evicted (a full-NAT flow that loses its entry
    /// loses its connection). The agent's ageing makes room.
    DropFlowTableFull = 23 => "drop_flow_table_full",
    /// An ARP request for a VIP while the agent's heartbeat is stale: a
    /// node whose agent died must stop answering for the VIP, so that
    /// neighbours follow the new master's gratuitous ARPs.
    DropArpFenced = 24 => "drop_arp_fenced",
    /// A TCP RST for a service that belongs to no connection: nothing to
    /// reset, and no state made for it.
    DropRstNoFlow = 25 => "drop_rst_no_flow",
    /// The client's ACK of a handshake whose half-open entry lost its NAT
    /// port to a newer one (ports of half-open connections are reclaimed
    /// when a backend's run out): the connection cannot be completed, and
    /// the client's next segment is reset by the backend.
    DropEmbryoLost = 26 => "drop_embryo_lost",
    /// A backend answered a new connection's SYN as if its NAT port still
    /// carried an older half-open connection (a flood's, whose port was
    /// reclaimed): sent back to it as an RST, which ends the stale one;
    /// the client's retransmitted SYN then gets through.
    TxResetBackend = 27 => "tx_reset_backend",
}

/// Number of slots in the reason array. Leaves room for reasons added
/// later without resizing the pinned map a running agent adopts.
pub const REASON_SLOTS: u32 = 64;

const _: () = assert!(Reason::ALL.len() as u32 <= REASON_SLOTS);

/// The reason counters summed over CPUs, as the agent and the lab read them
/// from the (pinned) [`crate::maps::REASON_STATS`] map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonTotals(pub [Counter; Reason::ALL.len()]);

impl ReasonTotals {
    #[cfg(feature = "user")]
    pub fn read<T: core::borrow::Borrow<aya::maps::MapData>>(
        map: &aya::maps::PerCpuArray<T, Counter>,
    ) -> Result<Self, aya::maps::MapError> {
        let mut out = ReasonTotals::default();
        for (&reason, slot) in Reason::ALL.iter().zip(out.0.iter_mut()) {
            for c in map.get(&(reason as u32), 0)?.iter() {
                slot.packets += c.packets;
                slot.bytes += c.bytes;
            }
        }
        Ok(out)
    }

    pub fn get(&self, reason: Reason) -> Counter {
        self.0[reason as usize]
    }

    pub fn total(&self) -> Counter {
        self.0.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
    }

    /// Non-zero reasons with their counters, in index order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Reason, Counter)> + '_ {
        Reason::ALL
            .iter()
            .copied()
            .zip(self.0.iter().copied())
            .filter(|(_, c)| c.packets > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{r:?} is out of order");
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(REASON_SLOTS), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
