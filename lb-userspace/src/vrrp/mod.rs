//! VRRP for IPv4, v2 (RFC 3768) and v3 (RFC 5798), speaking to keepalived
//! 2.2 as a peer: the virtual addresses in front of the kube-apiservers
//! move between xdplb nodes, or between xdplb and keepalived nodes during
//! a migration.
//!
//! Sans-IO: no sockets, no tasks, no clock. [`wire`] encodes and validates
//! adverts; [`Engine`] is the state machine of one virtual router, fed
//! packets and the time, queuing [`Action`]s. A driver owns the raw socket
//! (IP protocol 112, joined to 224.0.0.18 unless unicast), the timer and
//! the addresses:
//!
//! ```ignore
//! let mut vr = Engine::new(cfg, Instant::now())?;
//! loop {
//!     while let Some(action) = vr.poll_action() {
//!         match action {
//!             Action::Send(out) => { /* TTL 255, to out.dst */ }
//!             Action::BecomeMaster => { /* add the VIPs */ }
//!             Action::BecomeBackup | Action::Stopped => { /* remove them */ }
//!             Action::SendGarp { count } => { /* gratuitous ARPs */ }
//!         }
//!     }
//!     select! {
//!         packet = socket.recv() => { let _ = vr.on_ip_packet(&packet, Instant::now()); }
//!         _ = sleep_until(vr.next_deadline()) => vr.on_timer(Instant::now()),
//!         _ = shutdown => vr.shutdown(Instant::now()), // then drain actions and exit
//!     }
//! }
//! ```

pub mod config;
pub mod driver;
pub mod engine;
pub mod instances;
pub mod socket;
pub mod wire;

pub use config::{Config, ConfigError, InitialState};
pub use engine::{Action, Engine, Outgoing, PeerAdvert, State, Stats};
pub use wire::{Advert, Auth, Expect, Ipv4Meta, Reject, RejectCounts, Version};
