//! The namespace lab: a client, two LB nodes and three fake kube-apiservers
//! on one Linux bridge, each in its own network namespace. One harness for
//! the end-to-end tests, `cargo xtask lab` and `cargo xtask bench`.
//!
//! Every lab instance has its own id (derived from the process id and a
//! counter), so tests running on parallel threads, and other runs on the
//! same machine, never share a namespace, a bridge or a pin directory.
//! Everything the lab makes is removed when the [`Lab`] is dropped, even
//! when a test panics; a lab left behind by a killed process is removed by
//! the next lab that starts.

pub mod agent;
pub mod apiserver;
pub mod bed;
pub mod bins;
pub mod client;
pub mod hping;
pub mod keepalived;
pub mod live_frames;
pub mod netns;
pub mod node;
pub mod objects;
pub mod packets;
pub mod peer_xdp;
pub mod proc;
pub mod testrun;
pub mod wait;

mod topology;

pub use agent::Agent;
pub use apiserver::Apiserver;
pub use netns::Netns;
pub use topology::{Host, Lab, LabOptions, PIN_ROOT};

/// End-to-end tests need root, BPF and namespaces. They fail loudly without
/// them rather than skip: a skipped lab test would hide a broken product.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the lab tests need root (BPF, network namespaces); run them with `sudo cargo xtask test`"
    );
}
