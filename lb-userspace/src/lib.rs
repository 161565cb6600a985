//! The xdplb agent as a library: the embedded XDP object and its loader,
//! the map layout, the reconciler, health checks and the run loop. The
//! `xdplb` binary is a thin `main` over it; the lab and the benchmarks use
//! the same object and code.

pub mod admin;
pub mod agent;
pub mod batch;
pub mod cli;
pub mod config;
pub mod flowlog;
pub mod flows;
pub mod health;
pub mod loader;
pub mod maps;
pub mod netlink;
pub mod node;
pub mod plan;
pub mod preflight;
pub mod reconcile;
pub mod stats;
pub mod vip;
pub mod vrrp;
pub mod xdp_mode;
