//! XDP programs the lab and the benchmarks use beside xdplb.
//!
//! `xdp_pass`: a veth only flushes frames another veth XDP_TXes into it
//! when the receiving end has an XDP program of its own (drivers/net/veth.c,
//! veth_xdp_flush: no peer program, no NAPI kick — frames wait for the next
//! unrelated packet). The lab attaches this to the bridge side of each LB.
//!
//! `xdp_tx_floor`: swaps the MACs and bounces the frame, the cheapest thing
//! an XDP load balancer can do with a packet; a benchmark floor.
//!
//! `xdp_count_drop`: counts and drops; the drop floor, and the sink that
//! consumes what a program under test sends back.
//!
//! `xdp_bench_gen`: the traffic generator of the forwarding benchmark,
//! run by `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (never
//! attached): writes a template frame, gives it one of a set of source
//! ports, and XDP_TXes it (in live mode: out of `ingress_ifindex`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::csum;

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_tx_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 MAC bytes were bounds-checked above.
    let macs = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&macs[..6]);
    macs.copy_within(6..12, 0);
    macs[6..].copy_from_slice(&dst);
    xdp_action::XDP_TX
}

/// Packets seen, per CPU: by `xdp_count_drop`, what it dropped; by
/// `xdp_bench_gen`, what it generated (also its sequence number). Each
/// load of this object has its own.
#[map(name = "LAB_COUNT")]
static LAB_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_count_drop(_ctx: XdpContext) -> u32 {
    if let Some(n) = LAB_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
        unsafe { *n += 1 };
    }
    xdp_action::XDP_DROP
}

/// Length of the generator's template frame: Ethernet + IPv4 without
/// options + TCP + payload, 64 bytes in all.
const GEN_FRAME_LEN: usize = 64;
/// The TCP source port and checksum in the template.
const GEN_SPORT_AT: usize = 14 + 20;
const GEN_TCP_CHECK_AT: usize = GEN_SPORT_AT + 16;

/// The template frame, set at load time (`EbpfLoader::override_global`); words
/// so it is copied 8 bytes at a time.
#[unsafe(no_mangle)]
static GEN_FRAME: [u64; GEN_FRAME_LEN / 8] = [0; GEN_FRAME_LEN / 8];
/// Flows − 1 (a power of two less one): frame n gets source port
/// `template's + (n & GEN_FLOW_MASK)`.
#[unsafe(no_mangle)]
static GEN_FLOW_MASK: u32 = 0;

#[xdp]
pub fn xdp_bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = LAB_COUNT.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot; only this CPU writes it while we run.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    // The whole template every time, not just the port: live frames come
    // from a page pool that recycles pages without copying data_in again,
    // so a frame comes back as the program under test left it. Whole words:
    // live frames start 8-byte aligned (net/bpf/test_run.c copies data_in
    // to XDP_PACKET_HEADROOM past the page's `struct xdp_page_head`, whose
    // `data` shares a union with a `struct xdp_frame`); an unaligned write
    // would compile to 8 byte stores per word, a third of this program.
    let words = start as *mut u64;
    let mut template = [0u8; GEN_FRAME_LEN];
    for i in 0..GEN_FRAME_LEN / 8 {
        // SAFETY: globals are plain data, read volatile so the compiler
        // does not fold in the zeros the object holds before the loader
        // sets them; the 64 packet bytes were bounds-checked above and
        // are aligned (see above).
        let w = unsafe {
            let w = core::ptr::read_volatile((&raw const GEN_FRAME).cast::<u64>().add(i));
            words.add(i).write(w);
            w
        };
        template[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    // SAFETY: as above.
    let mask = unsafe { core::ptr::read_volatile(&raw const GEN_FLOW_MASK) };
    let old = [template[GEN_SPORT_AT], template[GEN_SPORT_AT + 1]];
    let sport = u16::from_be_bytes(old).wrapping_add((n as u32 & mask) as u16);
    let new = sport.to_be_bytes();
    let check = [template[GEN_TCP_CHECK_AT], template[GEN_TCP_CHECK_AT + 1]];
    let check = csum::replace_u16(check, old, new);
    // SAFETY: in bounds (checked above); byte arrays, align 1.
    let frame = unsafe { &mut *(start as *mut [u8; GEN_FRAME_LEN]) };
    frame[GEN_SPORT_AT..GEN_SPORT_AT + 2].copy_from_slice(&new);
    frame[GEN_TCP_CHECK_AT..GEN_TCP_CHECK_AT + 2].copy_from_slice(&check);
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
