//! Everything the XDP program and the agent share: map value types, the
//! pass/drop reasons, and the names and sizes of the maps. One definition,
//! used by both sides; only integers and byte arrays cross the boundary.
#![cfg_attr(not(test), no_std)]

pub mod maps;
pub mod stats;
pub mod wire;
