//! The maps, pinned by name so a restarted agent adopts them (and the
//! flows in them), and small typed accessors.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use lb_common::{
    flow::{Flow, FlowKey},
    maps::DEFAULT_MAX_FLOWS,
    service::{
        Backend, DEFAULT_TABLE_SIZE, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES, Service,
        ServiceKey,
    },
    stats::{Counter, REASON_SLOTS, Reason, Traffic},
};

#[map(name = "CONFIG")]
static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// Two table regions per service; the agent resizes it at load time to
/// MAX_SERVICES × 2 × the configured table size.
#[map(name = "MAGLEV")]
static MAGLEV: Array<u32> = Array::pinned(MAX_SERVICES * 2 * DEFAULT_TABLE_SIZE, 0);

/// Both halves of every NATed connection, shared by all CPUs (a reply may
/// arrive on another CPU than its request). A plain hash, not an LRU: with
/// full NAT a connection whose entry is evicted is lost (its next packet
/// gets another NAT port, and the backend resets it), so a full table
/// refuses new connections instead (`drop_flow_table_full`) and the
/// agent's ageing makes room. Preallocated: an insert takes an element
/// from a per-CPU free list, with no allocation and no LRU bookkeeping.
#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::pinned(DEFAULT_MAX_FLOWS, 0);

#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(64, 0);

#[map(name = "REASON_STATS")]
static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(REASON_SLOTS, 0);

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<&'static Service> {
    // SAFETY: the value is only read; the agent replaces entries whole.
    unsafe { SERVICES.get(key) }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}

#[inline(always)]
pub fn maglev_slot(index: u32) -> Option<u32> {
    MAGLEV.get(index).copied()
}

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    if let Some(c) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
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
