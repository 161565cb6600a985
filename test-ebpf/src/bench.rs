//! Wrappers that let BPF_PROG_TEST_RUN measure xdplb's packet path
//! (`cargo xtask bench`, per-packet cost). Not part of the product.
//!
//! A non-live test run hands the program the same buffer on every repeat
//! without resetting it, so a NAT program would see its own output from
//! the second repeat on and take another path (a reply to nobody, a pass).
//! Each wrapper therefore saves the first [`SAVED`] bytes, runs the real
//! path (`lb_ebpf::run`, exactly what the entry program runs),
//! and puts the bytes back, so every repeat sees the original frame.
//! `bench_noop` does only the save and restore; the benchmark subtracts it.
//!
//! The `_spray` variants first give the frame a client tuple of their own
//! (source address 10.64.x.y and source port from a per-CPU sequence), so
//! every repeat is a new flow (`BENCH_CYCLE` 0), or cycles over `BENCH_CYCLE`
//! flows the benchmark put into FLOWS. Checksums are left stale: the
//! program updates them incrementally and never verifies them.
//!
//! Two floors share xdplb's own FLOWS map (same size, same fill): the
//! `_insert2` wrapper only inserts two entries per repeat, keyed by the
//! sprayed tuple and its mirror, as a new connection does; `_lookup` only
//! looks the sprayed tuple up, as an established packet does. They show how
//! much of xdplb's cost is the kernel's hash table (and its cache misses).
//!
//! Bench frames are IPv4 without options, TCP, at least [`SAVED`] bytes.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::flow::{Flow, FlowKey};
use lb_ebpf::maps::{FLOWS, read_once};

/// Bytes saved and restored: Ethernet + IPv4 (no options) + TCP header
/// with its checksum, everything NAT rewrites.
const SAVED: usize = 64;
type Head = [u64; SAVED / 8];

/// Offsets into a bench frame of the client address's last two bytes and
/// of the TCP source port.
const SRC_IP_LOW: usize = 14 + 12 + 2;
const SPORT: usize = 14 + 20;

/// The next tuple index, per CPU (the test run stays on one CPU).
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// 0: the index only grows (a new flow every repeat); n: it wraps at n.
#[map(name = "BENCH_CYCLE")]
static BENCH_CYCLE: Array<u32> = Array::with_max_entries(1, 0);

/// Repeats of the floors that did what they stand for (an insert pair
/// made, a lookup hit), per CPU: the benchmark checks every repeat did.
#[map(name = "BENCH_HITS")]
static BENCH_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn head(ctx: &XdpContext) -> Option<*mut Head> {
    if ctx.data() + SAVED > ctx.data_end() {
        return None;
    }
    Some(ctx.data() as *mut Head)
}

/// The saved head, per CPU: the data plane's own frame leaves no room
/// for 64 more bytes on the stack.
#[map(name = "BENCH_SAVED")]
static BENCH_SAVED: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

type Saved = *mut Head;

// Volatile so the compiler cannot drop a restore of bytes it thinks
// unchanged (bench_noop would then measure nothing).
#[inline(always)]
fn save(ctx: &XdpContext) -> Option<Saved> {
    let p = head(ctx)?;
    let saved = BENCH_SAVED.get_ptr_mut(0)?;
    // SAFETY: `head` bounds-checked the SAVED bytes; `saved` is this CPU's
    // slot, ours while we run.
    unsafe { saved.write(core::ptr::read_volatile(p)) };
    Some(saved)
}

/// Puts the saved bytes back; the packet pointers are checked again because
/// the verifier forgets them across the helper calls in between.
#[inline(always)]
fn restore(ctx: &XdpContext, saved: &Saved) -> bool {
    match head(ctx) {
        // SAFETY: as in `save`.
        Some(p) => {
            unsafe { core::ptr::write_volatile(p, saved.read()) };
            true
        }
        None => false,
    }
}

/// Writes the next client tuple into the frame (not into `saved`, so the
/// restore puts the template back).
#[inline(always)]
fn next_tuple(ctx: &XdpContext) -> Option<()> {
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    // SAFETY: a BENCH_CYCLE value pointer from this lookup.
    let cycle = BENCH_CYCLE
        .get_ptr(0)
        .map_or(0, |p| unsafe { read_once::<u32, u32>(p) });
    // SAFETY: a per-CPU slot; only this CPU touches it while we run.
    let i = unsafe {
        let i = *seq;
        let next = i.wrapping_add(1);
        *seq = if cycle != 0 && next >= cycle { 0 } else { next };
        i
    };
    let p = head(ctx)? as *mut u8;
    // SAFETY: both offsets lie within the SAVED bytes `head` checked.
    unsafe {
        *p.add(SRC_IP_LOW) = (i >> 24) as u8;
        *p.add(SRC_IP_LOW + 1) = (i >> 16) as u8;
        *p.add(SPORT) = (i >> 8) as u8;
        *p.add(SPORT + 1) = i as u8;
    }
    Some(())
}

/// The frame's TCP/IPv4 tuple as a FlowKey (bench frames: no IP options).
#[inline(always)]
fn tuple(ctx: &XdpContext) -> Option<FlowKey> {
    let p = head(ctx)? as *const u8;
    // SAFETY: every offset below lies within the SAVED bytes `head` checked.
    let at = |i: usize| unsafe { *p.add(i) };
    Some(FlowKey {
        src: [at(26), at(27), at(28), at(29)],
        dst: [at(30), at(31), at(32), at(33)],
        sport: [at(34), at(35)],
        dport: [at(36), at(37)],
        proto: at(23),
        _pad: [0; 3],
    })
}

#[inline(always)]
fn hit() {
    if let Some(n) = BENCH_HITS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// The entry program's body (main.rs), between save and restore.
#[inline(always)]
fn lb(ctx: &XdpContext, saved: &Saved) -> u32 {
    let action = lb_ebpf::run(ctx);
    if !restore(ctx, saved) {
        return xdp_action::XDP_ABORTED;
    }
    action
}

/// Exactly the entry program (main.rs), for one-shot checks of the output
/// frame (the wrappers hand back the restored input).
#[xdp]
pub fn bench_entry(ctx: XdpContext) -> u32 {
    lb_ebpf::run(&ctx)
}

#[xdp]
pub fn bench_noop(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if !restore(&ctx, &saved) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_lb(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    lb(&ctx, &saved)
}

#[xdp]
pub fn bench_noop_spray(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if next_tuple(&ctx).is_none() || !restore(&ctx, &saved) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_lb_spray(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if next_tuple(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    lb(&ctx, &saved)
}

/// Floor of a new flow: the two FLOWS inserts alone.
#[xdp]
pub fn bench_insert2_spray(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if next_tuple(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(key) = tuple(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let mirror = FlowKey {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
        ..key
    };
    let flow = Flow::default();
    if FLOWS.insert(&mirror, &flow, BPF_NOEXIST as u64).is_ok()
        && FLOWS.insert(&key, &flow, BPF_NOEXIST as u64).is_ok()
    {
        hit();
    }
    if !restore(&ctx, &saved) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

/// Floor of an established packet among many flows: the FLOWS lookup alone.
#[xdp]
pub fn bench_lookup_spray(ctx: XdpContext) -> u32 {
    let Some(saved) = save(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if next_tuple(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(key) = tuple(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    // Only the presence: no reference into the entry (other CPUs' runs
    // may be writing it).
    if FLOWS.get_ptr(key).is_some() {
        hit();
    }
    if !restore(&ctx, &saved) {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
