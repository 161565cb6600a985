//! Names of the maps and globals, as they appear in the object file and
//! under the pin directory. `bpftool map show name <NAME>` finds them.

/// Per-CPU array of [`crate::stats::Counter`], indexed by
/// [`crate::stats::Reason`]: what the program did with each packet.
pub const REASON_STATS: &str = "REASON_STATS";

/// The XDP program's name in the object (and in `bpftool prog show`).
pub const XDP_PROGRAM: &str = "xdplb";

/// Default root of the pinned state; each interface gets a directory below.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/xdplb";
