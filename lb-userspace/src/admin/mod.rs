//! The admin endpoint: what haproxy's stats page (`stats uri /status`) and
//! `systemctl status keepalived` gave operators, over HTTP on
//! `--admin` (127.0.0.1:9640 by default, never a VIP).
//!
//! - `GET /metrics`: Prometheus metrics ([`metrics`]);
//! - `GET /status`: the same state as JSON ([`status::Status`]);
//! - `GET /`: a self-refreshing status page ([`page`]);
//! - `POST /reload`, `POST /backends/{addr}/drain`, `POST
//!   /backends/{addr}/enable`: commands, answered with their outcome.
//!
//! The server is a task beside the agent's loop and owns nothing of the
//! agent: it reads the snapshots the loop publishes and asks the loop, as
//! [`Request`]s that become events, for a fresh one or for a command. The
//! loop stays the only writer of the maps. `xdplb status|backend|reload`
//! ([`client`]) are its command-line clients.

pub mod client;
pub mod metrics;
pub mod page;
mod server;
pub mod status;

use std::{net::SocketAddrV4, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use server::{bind, spawn};
pub use status::Status;

/// The outcome of a command: what was done, or why it was not.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// A command's answer on the wire: `{"ok": true, "message": "…"}`; the
/// message says what was done, or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
}

/// What the endpoint asks of the agent's loop.
#[derive(Debug)]
pub enum Request {
    /// Build a snapshot now (a scrape wants current counters), publish it
    /// and send it back.
    Status(oneshot::Sender<Arc<Status>>),
    /// Re-read the configuration, as SIGHUP does.
    Reload(Reply),
    /// Drain (true) or enable (false) a backend.
    Drain(SocketAddrV4, bool, Reply),
}
