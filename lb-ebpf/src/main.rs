//! The xdplb XDP program: the entry point. The packet path itself lives in
//! the library (lib.rs), so the benchmark wrapper runs exactly the same code.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    lb_ebpf::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
