//! XDP programs the lab and the benchmarks use beside xdplb.
//!
//! `xdp_pass`: a veth only flushes frames another veth XDP_TXes into it
//! when the receiving end has an XDP program of its own (drivers/net/veth.c,
//! veth_xdp_flush: no peer program, no NAPI kick — frames wait for the next
//! unrelated packet). The lab attaches this to the bridge side of each LB.
//!
//! `xdp_tx_floor`: swaps the MACs and bounces the frame, the cheapest thing
//! an XDP load balancer can do with a packet; a benchmark floor.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
