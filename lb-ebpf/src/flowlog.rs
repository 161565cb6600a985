//! The flow log: each new connection, told to the agent through a ring
//! buffer as it is created (conntrack::create), never on the established
//! path. A per-CPU token bucket lets at most FLOW_LOG_RATE events a second
//! through on each CPU, in bursts of FLOW_LOG_BURST, so a SYN flood cannot
//! flood the log (nor the agent reading it); what it holds back, or what
//! finds the ring buffer full, is counted for the agent to report.

use core::ptr::read_volatile;

use lb_common::{flow::FlowKey, flowlog::FlowEvent, service::Backend};

use crate::maps;

/// Events a second per CPU; 0: the flow log is off. Load-time constants
/// (`EbpfLoader::set_global`, lb_common::maps::FLOW_LOG_RATE): aya freezes
/// .rodata, so the verifier reads them as known values and, with the log
/// off, drops this whole path from the program. Volatile reads, or the
/// compiler would fold in the defaults below.
#[unsafe(no_mangle)]
static FLOW_LOG_RATE: u32 = 0;
/// The bucket's size, in events, per CPU.
#[unsafe(no_mangle)]
static FLOW_LOG_BURST: u32 = 0;

/// Whether the flow log is on (a load-time constant: when it is off, the
/// verifier drops what this guards, a caller's lookups included).
#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain load of a static of ours.
    unsafe { read_volatile(&FLOW_LOG_RATE) != 0 }
}

/// The connection `key` was just created towards `backend`, NATed from
/// `nat` (`(0.0.0.0, 0)` for a local backend, whose forward flow has
/// `flags` FLOW_LOCAL), at `now` (jiffies, `ticks_per_s` a second).
#[inline(always)]
pub fn opened(
    key: &FlowKey,
    backend: &Backend,
    nat: ([u8; 4], [u8; 2]),
    flags: u8,
    now: u64,
    ticks_per_s: u32,
) {
    // SAFETY: plain loads of two statics of ours.
    let (rate, burst) = unsafe {
        (
            read_volatile(&FLOW_LOG_RATE),
            read_volatile(&FLOW_LOG_BURST),
        )
    };
    if rate == 0 {
        return;
    }
    let Some(cpu) = maps::flow_log_cpu() else {
        return;
    };
    // SAFETY: this CPU's slot, written only by runs on this CPU, which
    // never interleave (as maps::count_reason's): the `&mut` is unique.
    let cpu = unsafe { &mut *cpu };
    if !cpu.take(now, rate, burst, ticks_per_s) {
        cpu.suppressed += 1;
        return;
    }
    let Some(mut entry) = maps::flow_log_reserve() else {
        cpu.ring_full += 1;
        return;
    };
    entry.write(FlowEvent {
        at: now,
        key: *key,
        backend_ip: backend.ip,
        backend_port: backend.port,
        nat_port: nat.1,
        nat_ip: nat.0,
        flags,
        _pad: [0; 3],
    });
    entry.submit(0);
    cpu.logged += 1;
}
