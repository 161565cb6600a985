//! Virtual services, their backends and the data plane's global settings:
//! what the agent writes and the XDP program only reads.

use bytemuck::{Pod, Zeroable};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Most services one data plane serves (SERVICES, SERVICE_STATS and the
/// Maglev array are sized by it).
pub const MAX_SERVICES: u32 = 32;
/// Most backends over all services (BACKENDS, BACKEND_STATS); a backend's
/// id indexes both.
pub const MAX_BACKENDS: u32 = 4096;
/// Most SNAT addresses in the pool (SNAT_IPS).
pub const MAX_SNAT_IPS: u32 = 16;
/// Default Maglev table size: a prime ≥ 100 × 163 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// SERVICES key: a (VIP, port, protocol) the program balances.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    pub vip: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// SERVICES value.
///
/// Each service owns two regions of `table_size` slots in the MAGLEV array
/// (double buffering): the agent writes a new table into the region not in
/// use, then switches `table_base` with one map update, so a packet sees
/// either the old table or the new one, never a half-written mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Index into SERVICE_STATS.
    pub id: u32,
    /// First MAGLEV slot of the active table.
    pub table_base: u32,
    /// Slots in the table (a prime); 0 means no backend is usable.
    pub table_size: u32,
    pub flags: u32,
}

/// The backend is an address of this node (a stacked master): deliver to
/// the local stack instead of rewriting.
pub const BACKEND_LOCAL: u8 = 1;

/// BACKENDS value, indexed by backend id (what MAGLEV slots hold).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub ip: [u8; 4],
    pub port: [u8; 2],
    pub flags: u8,
    pub _pad: u8,
}

/// CONFIG flag: this node is the active one (VRRP master) and NATs VIP
/// traffic. A backup sees the flag clear and passes VIP packets untouched.
pub const CONFIG_ACTIVE: u32 = 1;

/// CONFIG[0]: settings the program needs per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// Source address of NATed packets towards backends: the first of the
    /// SNAT pool (SNAT_IPS), or the only one.
    pub snat_ip: [u8; 4],
    /// NAT source ports, inclusive, host byte order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub flags: u32,
    /// The data plane clock's ticks per second (the kernel's HZ, see
    /// [`crate::clock`]): its "one second" for refreshing flow timestamps
    /// and next hops. 0 refreshes them on every packet.
    pub ticks_per_s: u32,
    /// Jiffies of the agent's last heartbeat. With VRRP the agent refreshes
    /// it several times per advert interval.
    pub heartbeat: u64,
    /// Ticks of silence after which the data plane fences itself: it NATs
    /// no new VIP connection and drops ARP requests for the VIPs, so an
    /// agent killed with the VIP on its interface cannot leave a second
    /// master once a backup takes over. The agent sets it to the shortest
    /// Master_Down_Interval's 3 × advert interval. 0: no heartbeat (no VRRP).
    pub fence_after: u32,
    /// Addresses in the SNAT pool (SNAT_IPS[0..snat_count]); 0 or 1: just
    /// `snat_ip`. Each adds `nat_port_max - nat_port_min + 1` ports per
    /// backend.
    pub snat_count: u32,
}

impl DataplaneConfig {
    /// Whether the data plane NATs new VIP traffic at jiffies `now`: the
    /// agent says active, and its heartbeat (if it keeps one) is fresh.
    #[inline(always)]
    pub fn active(&self, now: u64) -> bool {
        self.flags & CONFIG_ACTIVE != 0 && !self.fenced(now)
    }

    /// The agent keeps a heartbeat and it is older than `fence_after`.
    #[inline(always)]
    pub fn fenced(&self, now: u64) -> bool {
        self.fence_after != 0 && now.wrapping_sub(self.heartbeat) > u64::from(self.fence_after)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): repr(C), integers and byte arrays only, no padding
    // (bytemuck::Pod derives above prove it).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
}
