//! One virtual router's settings, with keepalived's defaults and the
//! combinations keepalived refuses (it clears them with a warning in
//! `vrrp_complete_instance`, keepalived/vrrp/vrrp.c; we refuse them).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::wire::{Auth, MULTICAST_GROUP, PRIORITY_OWNER, Version};

/// keepalived's `state MASTER|BACKUP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// Master at once if the priority is 255 (the address owner);
    /// otherwise a backup like any other, as keepalived ≥ 2.0 does
    /// (`vrrp_init_state`, keepalived/vrrp/vrrp_scheduler.c, and
    /// keepalived.conf(5) on `state`).
    Master,
    /// Backup, waiting Master_Down_Interval, even at priority 255.
    Backup,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: Version,
    /// 1..=255.
    pub vrid: u8,
    /// Base priority, 1..=255; 255 is the address owner (RFC 5798 §5.2.4).
    pub priority: u8,
    /// v2: whole seconds, 1..=255 s. v3: a multiple of 10 ms, 10 ms..=40.95 s.
    pub advert_interval: Duration,
    /// The virtual addresses, 1..=255 of them, no duplicates.
    pub addresses: Vec<Ipv4Addr>,
    /// Our primary address on the VRRP interface: the source of our adverts
    /// and the tie-breaker between equal priorities (RFC 5798 §6.4.3).
    pub primary_address: Ipv4Addr,
    /// Unicast mode when not empty: adverts go to each peer, not the group.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// keepalived's `mcast_dst_ip`.
    pub multicast_group: Ipv4Addr,
    /// v2 only.
    pub auth: Auth,
    /// `false` is keepalived's `nopreempt`.
    pub preempt: bool,
    /// Delay before preempting a lower-priority master (keepalived's
    /// `preempt_delay`, 0..=1000 s).
    pub preempt_delay: Duration,
    /// `None` derives it from the priority, as keepalived does: Master at
    /// 255, Backup otherwise.
    pub initial_state: Option<InitialState>,
    /// keepalived's `garp_master_delay`: a second burst of gratuitous ARPs
    /// this long after becoming master. `None` or zero: no second burst.
    pub garp_master_delay: Option<Duration>,
    /// keepalived's `garp_master_repeat`: ARPs per burst.
    pub garp_master_repeat: u32,
    /// keepalived's `check_unicast_src`: drop unicast adverts from sources
    /// that are not peers.
    pub check_unicast_src: bool,
}

impl Config {
    /// keepalived's defaults: VRRPv2, priority 100, 1 s, multicast,
    /// preempt, no delay, GARPs 5 at once and again after 5 s.
    pub fn new(vrid: u8, primary_address: Ipv4Addr, addresses: Vec<Ipv4Addr>) -> Config {
        Config {
            version: Version::V2,
            vrid,
            priority: 100,
            advert_interval: Duration::from_secs(1),
            addresses,
            primary_address,
            unicast_peers: Vec::new(),
            multicast_group: MULTICAST_GROUP,
            auth: Auth::None,
            preempt: true,
            preempt_delay: Duration::ZERO,
            initial_state: None,
            garp_master_delay: Some(Duration::from_secs(5)),
            garp_master_repeat: 5,
            check_unicast_src: false,
        }
    }

    pub fn initial_state(&self) -> InitialState {
        self.initial_state
            .unwrap_or(if self.priority == PRIORITY_OWNER {
                InitialState::Master
            } else {
                InitialState::Backup
            })
    }

    /// The interval as the wire carries it, in centiseconds (v3's unit;
    /// a v2 interval is whole seconds, a multiple of 100).
    pub fn interval_cs(&self) -> u16 {
        u16::try_from(self.advert_interval.as_millis() / 10).unwrap_or(u16::MAX)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError as E;
        if self.vrid == 0 {
            return Err(E::Vrid);
        }
        if self.priority == 0 {
            return Err(E::Priority);
        }
        let ms = self.advert_interval.as_millis();
        let interval_ok = match self.version {
            // RFC 3768 §5.3.7: 8 bits of seconds.
            Version::V2 => {
                self.advert_interval.subsec_nanos() == 0
                    && (1..=255).contains(&self.advert_interval.as_secs())
            }
            // RFC 5798 §5.2.7: 12 bits of centiseconds.
            Version::V3 => {
                self.advert_interval
                    .subsec_nanos()
                    .is_multiple_of(10_000_000)
                    && (10..=40_950).contains(&ms)
            }
        };
        if !interval_ok {
            return Err(E::Interval(self.advert_interval));
        }
        if self.addresses.is_empty() || self.addresses.len() > 255 {
            return Err(E::AddressCount(self.addresses.len()));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i].contains(a) {
                return Err(E::DuplicateAddress(*a));
            }
        }
        if self.primary_address.is_unspecified() || self.primary_address.is_multicast() {
            return Err(E::PrimaryAddress(self.primary_address));
        }
        if self.unicast_peers.is_empty() {
            if !self.multicast_group.is_multicast() {
                return Err(E::MulticastGroup(self.multicast_group));
            }
        } else if let Some(p) = self
            .unicast_peers
            .iter()
            .find(|p| p.is_multicast() || p.is_unspecified() || **p == self.primary_address)
        {
            return Err(E::UnicastPeer(*p));
        }
        if self.version == Version::V3 && self.auth != Auth::None {
            return Err(E::AuthInV3);
        }
        if !self.preempt && self.priority == PRIORITY_OWNER {
            return Err(E::Conflict(
                "nopreempt with priority 255: the address owner always preempts",
            ));
        }
        if self.initial_state() == InitialState::Master {
            if !self.preempt {
                return Err(E::Conflict("nopreempt with initial state MASTER"));
            }
            if !self.preempt_delay.is_zero() {
                return Err(E::Conflict("preempt_delay with initial state MASTER"));
            }
        }
        if !self.preempt && !self.preempt_delay.is_zero() {
            return Err(E::Conflict("preempt_delay with nopreempt"));
        }
        if self.preempt_delay > Duration::from_secs(1000) {
            return Err(E::PreemptDelay(self.preempt_delay));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    Vrid,
    Priority,
    Interval(Duration),
    AddressCount(usize),
    DuplicateAddress(Ipv4Addr),
    PrimaryAddress(Ipv4Addr),
    MulticastGroup(Ipv4Addr),
    UnicastPeer(Ipv4Addr),
    AuthInV3,
    PreemptDelay(Duration),
    /// Settings keepalived would clear with a warning.
    Conflict(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Vrid => f.write_str("vrid must be 1..=255"),
            ConfigError::Priority => f.write_str("priority must be 1..=255"),
            ConfigError::Interval(d) => write!(
                f,
                "advert interval {d:?}: VRRPv2 takes whole seconds 1..=255, VRRPv3 multiples of 10 ms up to 40.95 s"
            ),
            ConfigError::AddressCount(n) => write!(f, "{n} virtual addresses, need 1..=255"),
            ConfigError::DuplicateAddress(a) => write!(f, "virtual address {a} listed twice"),
            ConfigError::PrimaryAddress(a) => {
                write!(f, "primary address {a} cannot source adverts")
            }
            ConfigError::MulticastGroup(a) => write!(f, "{a} is not a multicast group"),
            ConfigError::UnicastPeer(a) => {
                write!(f, "unicast peer {a} is not a peer's unicast address")
            }
            ConfigError::AuthInV3 => f.write_str("VRRPv3 has no authentication (RFC 5798 §9)"),
            ConfigError::PreemptDelay(d) => write!(f, "preempt_delay {d:?} over 1000 s"),
            ConfigError::Conflict(what) => write!(f, "{what} cannot work (keepalived clears it)"),
        }
    }
}

impl std::error::Error for ConfigError {}
