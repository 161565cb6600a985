//! The maps, pinned by name so a restarted agent adopts them (and the
//! flows in them), and small typed accessors.
//!
//! Every map is a BTF map (`.maps` section): its key and value types go
//! into the object's BTF and the kernel keeps them with the map, so
//! `bpftool map dump` prints named fields instead of hex. The sizes below
//! are the object's defaults; the agent sets FLOWS' and MAGLEV's at load
//! time, and pins every map by name (loader.rs: aya-ebpf 0.2.1's BTF map
//! definitions carry no `pinning` field, so the loader names each pin).
//!
//! TX_PORTS and the flow log's ring buffer are BTF maps too, but the kernel
//! takes no key/value types for devmaps and ring buffers (it refuses a
//! BTF value type for them; aya, like libbpf, leaves the ids out), so
//! bpftool shows those two without field names.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
    maps::ring_buf::RingBufEntry,
};
use bytemuck::Pod;
use lb_common::{
    flow::{Embryo, Flow, FlowKey},
    flowlog::{FlowEvent, FlowLogCpu, RING_BYTES},
    maps::{DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_FLOWS},
    service::{
        Backend, DEFAULT_TABLE_SIZE, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_IPS,
        Service, ServiceKey,
    },
    stats::{Counter, EmbryoStats, REASON_SLOTS, Traffic},
};

#[btf_map(name = "CONFIG")]
static CONFIG: Array<DataplaneConfig, 1> = Array::new();

#[btf_map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

/// The services' VIPs (network order) → 0: what ARP fencing protects.
#[btf_map(name = "VIPS")]
static VIPS: HashMap<[u8; 4], u32, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map(name = "BACKENDS")]
static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Two table regions per service; the agent resizes it at load time to
/// MAX_SERVICES × 2 × the configured table size.
#[btf_map(name = "MAGLEV")]
static MAGLEV: Array<u32, { (MAX_SERVICES * 2 * DEFAULT_TABLE_SIZE) as usize }> = Array::new();

/// Both halves of every NATed connection, shared by all CPUs (a reply may
/// arrive on another CPU than its request). A plain hash, not an LRU: with
/// full NAT a connection whose entry is evicted is lost (its next packet
/// gets another NAT port, and the backend resets it), so a full table
/// refuses new connections instead (`drop_flow_table_full`) and the
/// agent's ageing makes room. Preallocated: an insert takes an element
/// from a per-CPU free list, with no allocation and no LRU bookkeeping.
#[btf_map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, Flow, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();

/// Half-open TCP connections, both halves (lb_common::flow::Embryo): what
/// a SYN makes, until the client's ACK moves it to FLOWS (embryo.rs). An
/// LRU, unlike FLOWS: losing a half-open connection costs a legitimate
/// client one SYN retransmission, and under a spoofed flood the oldest go
/// first, so a flood can fill this map but never lock clients out. The
/// agent sizes it at load time.
#[btf_map(name = "EMBRYOS")]
pub static EMBRYOS: LruHashMap<FlowKey, Embryo, { DEFAULT_MAX_EMBRYOS as usize }> =
    LruHashMap::new();

/// The SNAT pool: DataplaneConfig::snat_count addresses (network order).
#[btf_map(name = "SNAT_IPS")]
static SNAT_IPS: Array<[u8; 4], { MAX_SNAT_IPS as usize }> = Array::new();

/// What happened to half-open connections, per CPU.
#[btf_map(name = "EMBRYO_STATS")]
static EMBRYO_STATS: PerCpuArray<EmbryoStats, 1> = PerCpuArray::new();

/// Room for the packet path's large temporaries, one per CPU: the FIB
/// lookup's parameters and a half-open connection's entry as it is built.
/// On the stack they would take a quarter of the 512 bytes the verifier
/// allows. Not pinned: nothing in it outlives a packet.
#[btf_map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    pub embryo: Embryo,
}

/// This CPU's scratch space. XDP runs with migration disabled and never
/// nests on a CPU, so the packet that takes it has it to itself until it
/// returns.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

#[btf_map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash<64> = DevMapHash::new();

#[btf_map(name = "REASON_STATS")]
static REASON_STATS: PerCpuArray<Counter, { REASON_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<Traffic, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<Traffic, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// New connections, for the agent's flow log (flowlog.rs).
#[btf_map(name = "FLOW_LOG")]
static FLOW_LOG: RingBuf<FlowEvent, { RING_BYTES as usize }> = RingBuf::new();

/// The flow log's token bucket and counters, one per CPU.
#[btf_map(name = "FLOW_LOG_STATE")]
static FLOW_LOG_STATE: PerCpuArray<FlowLogCpu, 1> = PerCpuArray::new();

/// One read of a whole map value, a volatile load per word `W` (`T`'s
/// size in `W`s, e.g. `[u64; 7]`), copied out: what C's READ_ONCE does.
///
/// Map values are shared: the agent rewrites CONFIG, BACKENDS and MAGLEV
/// elements in place (array_map_update_elem copies into the live element)
/// and replaces SERVICES entries, and other CPUs write FLOWS. A `&T` into
/// one would tell the compiler the value cannot change, so it could load a
/// field twice, once for a check and once for its use, and get two values.
/// Here every word is loaded exactly once, by one aligned instruction (no
/// torn word on a 64-bit JIT); words of one value may still come from
/// before and after a concurrent update, and each caller says why that is
/// harmless. `Pod`, because such a mix must still be a valid `T`.
///
/// # Safety
///
/// `p` is a value pointer a map lookup returned in this program run (RCU
/// keeps the element mapped until the program returns). Map values start
/// 8-byte aligned (array elements and hash keys are rounded up to 8 bytes,
/// kernel/bpf/arraymap.c and hashtab.c), so a `W` of up to 8 bytes is
/// aligned whatever `T`'s own alignment.
#[inline(always)]
pub unsafe fn read_once<T: Pod, W: Pod>(p: *const T) -> T {
    const { assert!(size_of::<T>() == size_of::<W>()) };
    // SAFETY: the caller's promise, above.
    bytemuck::cast(unsafe { read_volatile(p.cast::<W>()) })
}

/// The settings, copied out. The agent rewrites CONFIG[0] in place; a copy
/// it tears mixes words of the old and new settings (the address, the
/// port range, the flags, the clock rate), each valid on its own: the one
/// packet that sees it is handled as under one or the other.
#[inline(always)]
pub fn config() -> Option<DataplaneConfig> {
    // SAFETY: a CONFIG value pointer from this lookup.
    CONFIG
        .get_ptr(0)
        .map(|p| unsafe { read_once::<_, [u64; 4]>(p) })
}

/// Addresses in the SNAT pool (at least one: `snat_ip`).
#[inline(always)]
pub fn snat_addrs(config: &DataplaneConfig) -> u32 {
    config.snat_count.clamp(1, MAX_SNAT_IPS)
}

/// The pool's `index`th SNAT address (index < [`snat_addrs`]); the first
/// is `snat_ip`, read without a lookup. One 4-byte load: the agent writes
/// the pool before it raises `snat_count` over it.
#[inline(always)]
pub fn snat_addr(config: &DataplaneConfig, index: u32) -> [u8; 4] {
    if index == 0 {
        return config.snat_ip;
    }
    // SAFETY: a SNAT_IPS value pointer from this lookup.
    SNAT_IPS
        .get_ptr(index)
        .map(|p| unsafe { read_once::<_, u32>(p) })
        .unwrap_or(config.snat_ip)
}

/// Whether `addr` is a VIP of a service.
#[inline(always)]
pub fn is_vip(addr: &[u8; 4]) -> bool {
    VIPS.get_ptr(addr).is_some()
}

/// The service at `key`, copied out. An agent update links a new element
/// and keeps the old one aside until its next update on the same CPU
/// (kernel/bpf/hashtab.c, alloc_htab_elem's extra_elems), so this copy is
/// torn only if two updates land within it; then one new connection picks
/// its backend from the old or new table.
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<Service> {
    // SAFETY: a SERVICES value pointer from this lookup.
    SERVICES
        .get_ptr(key)
        .map(|p| unsafe { read_once::<_, [u32; 4]>(p) })
}

/// Whether `key` is a service, without reading its value.
#[inline(always)]
pub fn is_service(key: &ServiceKey) -> bool {
    SERVICES.get_ptr(key).is_some()
}

/// The backend with id `id`, copied out: address, port and flags are one
/// 8-byte load.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: a BACKENDS value pointer from this lookup.
    BACKENDS
        .get_ptr(id)
        .map(|p| unsafe { read_once::<_, u64>(p) })
}

/// The backend id in Maglev slot `index`, one load (the agent rewrites
/// slots in place, in the region no service points at yet).
#[inline(always)]
pub fn maglev_slot(index: u32) -> Option<u32> {
    // SAFETY: a MAGLEV value pointer from this lookup.
    MAGLEV
        .get_ptr(index)
        .map(|p| unsafe { read_once::<_, u32>(p) })
}

#[inline(always)]
pub fn count_reason(reason: u32, bytes: u64) {
    if let Some(c) = REASON_STATS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, written only by runs on this CPU (XDP
        // runs with migration disabled), which in NAPI's softirq never
        // interleave: this `&mut` is unique. The agent's reads are syscall
        // copies, a packet behind at worst.
        unsafe { (*c).add(bytes) };
    }
}

#[inline(always)]
pub fn count_service(id: u32, bytes: u64) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: as above, per-CPU.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_new_flow(service: u32, backend: u32) {
    // SAFETY: per-CPU slots.
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service) {
        unsafe { (*t).new_flows += 1 };
    }
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend) {
        unsafe { (*t).new_flows += 1 };
    }
}

#[inline(always)]
pub fn count_backend(id: u32, bytes: u64) {
    if let Some(t) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}

/// Counts one half-open connection event on this CPU.
#[inline(always)]
pub fn count_embryo(event: fn(&mut EmbryoStats) -> &mut u64) {
    if let Some(e) = EMBRYO_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU, as count_reason.
        unsafe { *event(&mut *e) += 1 };
    }
}

/// This CPU's flow log state.
#[inline(always)]
pub fn flow_log_cpu() -> Option<*mut FlowLogCpu> {
    FLOW_LOG_STATE.get_ptr_mut(0)
}

/// Room for one flow log event in the ring buffer, or None when it is
/// full. The caller writes and submits it.
#[inline(always)]
pub fn flow_log_reserve() -> Option<RingBufEntry<FlowEvent>> {
    FLOW_LOG.reserve(0)
}
