//! What to balance: the services, their backends and the data plane's
//! settings, from the single-service flags or a TOML file, checked and
//! defaulted before anything is attached.
//!
//! Checking happens in two steps: each value on its own where it is read
//! (`values`: address syntax, ranges; the same functions serve clap and the
//! file), then the whole in `resolve` (duplicates, limits,
//! cross-references). Errors name the value and, for a file, `FILE:LINE`.
//!
//! This module is a leaf: it uses nothing else of the crate. The command
//! line reaches it as [`Overrides`], and the health checks build their TLS
//! from its [`pem`] loaders.

mod check;
mod file;
mod load;
mod model;
pub mod pem;
mod resolve;
mod source;
#[cfg(test)]
pub(crate) mod test_support;
mod values;
mod vrrp;

pub use load::Overrides;
pub use model::{
    BackendConfig, CheckConfig, CheckKind, Config, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_PATH,
    DEFAULT_CHECK_TIMEOUT, DEFAULT_EXPECT, DEFAULT_FALL, DEFAULT_PORT, DEFAULT_RISE,
    FALLBACK_NAT_PORTS, MAX_RISE_FALL, MAX_WEIGHT, MIN_CHECK_INTERVAL, MIN_MAX_EMBRYOS,
    MIN_MAX_FLOWS, MIN_NAT_PORTS, NatPorts, OnDown, Proto, ServiceConfig, Timeouts, TlsCheck,
};
pub use values::{
    BackendSpec, parse_backend_flag, parse_check_flag, parse_check_interval, parse_check_timeout,
    parse_duration, parse_fall, parse_max_embryos, parse_max_flows, parse_nat_ports,
    parse_priority, parse_rise, parse_snat_ip, parse_unicast_peer, parse_vip, parse_vrid,
};
pub use vrrp::{
    DEFAULT_TRACK_WEIGHT, GarpConfig, NotifyConfig, TrackConfig, TrackInterface, TrackScript,
    TrackService, VrrpConfig, VrrpFlags, VrrpVersion,
};
