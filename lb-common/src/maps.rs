//! Names of the maps and globals, as they appear in the object file and
//! under the pin directory. `bpftool map show name <NAME>` finds them.

/// Per-CPU array of [`crate::stats::Counter`], indexed by
/// [`crate::stats::Reason`]: what the program did with each packet.
pub const REASON_STATS: &str = "REASON_STATS";

/// Hash of [`crate::service::ServiceKey`] → [`crate::service::Service`].
pub const SERVICES: &str = "SERVICES";
/// Array of [`crate::service::Backend`], indexed by backend id.
pub const BACKENDS: &str = "BACKENDS";
/// Array of backend ids: every service's Maglev tables, two regions each.
pub const MAGLEV: &str = "MAGLEV";
/// Hash of [`crate::flow::FlowKey`] → [`crate::flow::Flow`] (not LRU:
/// the agent ages flows; nothing evicts a live connection).
pub const FLOWS: &str = "FLOWS";
/// LRU hash of [`crate::flow::FlowKey`] → [`crate::flow::Embryo`]: TCP
/// connections not yet shown to be real (half-open), both halves; promoted
/// to FLOWS when they are. The kernel evicts the oldest when it is full.
pub const EMBRYOS: &str = "EMBRYOS";
/// Array of SNAT addresses (4 bytes, network order): the pool NATed
/// connections' source addresses are drawn from
/// ([`crate::service::DataplaneConfig::snat_count`] of them).
pub const SNAT_IPS: &str = "SNAT_IPS";
/// Per-CPU array of one [`crate::stats::EmbryoStats`].
pub const EMBRYO_STATS: &str = "EMBRYO_STATS";
/// Hash of VIP (4 bytes, network order) → flags (0): the addresses the
/// services answer on, for fencing ARP when the agent is gone.
pub const VIPS: &str = "VIPS";
/// Array with one [`crate::service::DataplaneConfig`].
pub const CONFIG: &str = "CONFIG";
/// Per-CPU [`crate::stats::Traffic`] by service id.
pub const SERVICE_STATS: &str = "SERVICE_STATS";
/// Per-CPU [`crate::stats::Traffic`] by backend id.
pub const BACKEND_STATS: &str = "BACKEND_STATS";
/// Devmap (hash, by ifindex) of the interfaces XDP may redirect to.
pub const TX_PORTS: &str = "TX_PORTS";
/// Ring buffer of [`crate::flowlog::FlowEvent`]: each new connection, for
/// the agent's flow log.
pub const FLOW_LOG: &str = "FLOW_LOG";
/// Per-CPU array of one [`crate::flowlog::FlowLogCpu`]: the flow log's
/// token bucket and counters.
pub const FLOW_LOG_STATE: &str = "FLOW_LOG_STATE";
/// Global (load-time constant): flow log events per second per CPU; 0
/// turns the flow log off, and the verifier drops its code.
pub const FLOW_LOG_RATE: &str = "FLOW_LOG_RATE";
/// Global (load-time constant): the flow log's burst, per CPU.
pub const FLOW_LOG_BURST: &str = "FLOW_LOG_BURST";
/// Every map the agent pins, by these names, under its pin directory.
pub const PINNED: &[&str] = &[
    CONFIG,
    SNAT_IPS,
    EMBRYOS,
    EMBRYO_STATS,
    SERVICES,
    VIPS,
    BACKENDS,
    MAGLEV,
    FLOWS,
    TX_PORTS,
    REASON_STATS,
    SERVICE_STATS,
    BACKEND_STATS,
    FLOW_LOG,
    FLOW_LOG_STATE,
];
/// The pinned maps whose key and value types the kernel keeps (BTF), so
/// `bpftool map dump` names their fields: all but TX_PORTS, a devmap, and
/// FLOW_LOG, a ring buffer, for which the kernel takes no key/value types.
pub const WITH_BTF: &[&str] = &[
    CONFIG,
    SNAT_IPS,
    EMBRYOS,
    EMBRYO_STATS,
    SERVICES,
    VIPS,
    BACKENDS,
    MAGLEV,
    FLOWS,
    REASON_STATS,
    SERVICE_STATS,
    BACKEND_STATS,
    FLOW_LOG_STATE,
];
/// Default size of the flow table (two entries per NATed connection).
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Default size of EMBRYOS (two entries per half-open connection): under a
/// flood of R spoofed SYNs a second, a half-open connection lives about
/// 65,536 / R seconds before it is evicted (65 ms at 1 Mpps), long enough
/// for a legitimate client's ACK across a LAN or a region.
pub const DEFAULT_MAX_EMBRYOS: u32 = 131_072;
/// Pin name of the XDP link, beside the maps.
pub const LINK_PIN: &str = "xdp_link";

/// The XDP program's name in the object (and in `bpftool prog show`).
pub const XDP_PROGRAM: &str = "xdplb";

/// Default root of the pinned state; each interface gets a directory below.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/xdplb";
