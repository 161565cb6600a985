//! The xdplb XDP program: the entry point. The packet path itself lives in
//! the library (lib.rs), so the benchmark wrapper runs exactly the same code.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_ebpf::{maps, process};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let verdict = process(&ctx);
    maps::count_reason(verdict.reason, len);
    verdict.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
