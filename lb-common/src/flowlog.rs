//! The flow log: what the data plane tells the agent about each new
//! connection ([`FlowEvent`], through the [`crate::maps::FLOW_LOG`] ring
//! buffer), and the per-CPU token bucket that keeps a flood of new
//! connections from flooding the log ([`FlowLogCpu`]).

use bytemuck::{Pod, Zeroable};

use crate::flow::FlowKey;

/// One new connection, as the data plane created it. Addresses and ports
/// in network order, as in FLOWS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEvent {
    /// Jiffies ([`crate::clock`]) when the flow was created: its
    /// `last_seen` then, so the agent can tell its duration from FLOWS.
    pub at: u64,
    /// The client → VIP tuple: the connection's forward FLOWS key.
    pub key: FlowKey,
    pub backend_ip: [u8; 4],
    pub backend_port: [u8; 2],
    /// The NAT source towards the backend (what the backend sees as its
    /// client); zero for a local backend, which sees the client itself.
    pub nat_port: [u8; 2],
    pub nat_ip: [u8; 4],
    /// The forward flow's flags (`FLOW_LOCAL`: a stacked master).
    pub flags: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 40);

/// The largest rate and burst the token bucket takes (events a second).
pub const MAX_RATE: u32 = 1_000_000;
/// The fastest data plane clock the token bucket takes (ticks a second;
/// jiffies run at 100 to 1000).
pub const MAX_TICKS_PER_S: u32 = 100_000;

/// Bytes of the ring buffer: 6 553 events of 40 bytes (+ an 8-byte header
/// each) if the agent stopped reading, far more than the rate limit lets
/// through between two of its reads.
pub const RING_BYTES: u32 = 256 * 1024;

/// One CPU's flow log state ([`crate::maps::FLOW_LOG_STATE`], a per-CPU
/// array of one): its token bucket and what became of the new
/// connections it saw. Only the CPU itself writes its slot; the agent sums
/// the counters over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowLogCpu {
    /// Tokens, in 1/`ticks_per_s` of an event, so that refilling needs no
    /// division: one tick adds `rate` of them, an event costs `ticks_per_s`.
    pub credit: u64,
    /// Jiffies when `credit` was last refilled.
    pub refilled: u64,
    /// New connections sent to the ring buffer.
    pub logged: u64,
    /// New connections not logged: the bucket was empty.
    pub suppressed: u64,
    /// New connections not logged: the ring buffer was full (the agent
    /// is behind, or gone).
    pub ring_full: u64,
}

impl FlowLogCpu {
    /// Whether one more event may go out at `now` (jiffies, `ticks_per_s`
    /// a second), at `rate` events a second with bursts of `burst`; takes
    /// its token if so. A bucket never used is full: jiffies start near
    /// 2^32 (INITIAL_JIFFIES, include/linux/jiffies.h), so the first refill
    /// covers any burst.
    ///
    /// Rate and burst are clamped to [`MAX_RATE`] and the clock rate to
    /// [`MAX_TICKS_PER_S`], so no product here can overflow: a 64-bit
    /// overflow check would need a 128-bit multiply, which BPF has not
    /// (LLVM calls `__multi3`).
    #[inline(always)]
    pub fn take(&mut self, now: u64, rate: u32, burst: u32, ticks_per_s: u32) -> bool {
        let rate = u64::from(rate.min(MAX_RATE));
        let cost = u64::from(ticks_per_s.clamp(1, MAX_TICKS_PER_S));
        // At most 10^6 × 10^5 = 10^11 ...
        let cap = u64::from(burst.clamp(1, MAX_RATE)) * cost;
        // ... and a refill at most 10^11 × 10^6 = 10^17 < 2^64.
        let ticks = now.saturating_sub(self.refilled).min(cap);
        let credit = self.credit.min(cap) + ticks * rate;
        self.credit = if credit < cap { credit } else { cap };
        self.refilled = now;
        if self.credit < cost {
            return false;
        }
        self.credit -= cost;
        true
    }

    /// The counters summed with `other`'s (another CPU's).
    pub fn plus(self, other: &FlowLogCpu) -> FlowLogCpu {
        FlowLogCpu {
            logged: self.logged + other.logged,
            suppressed: self.suppressed + other.suppressed,
            ring_full: self.ring_full + other.ring_full,
            ..self
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (both): repr(C), integers and byte arrays, no padding (Pod derive).
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::FlowLogCpu {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u32 = 250;

    #[test]
    fn a_fresh_bucket_lets_a_burst_through_then_the_rate() {
        let mut b = FlowLogCpu::default();
        let t0 = 4_294_000_000;
        let passed = (0..20).filter(|_| b.take(t0, 10, 5, HZ)).count();
        assert_eq!(passed, 5, "a full bucket holds the burst");
        // 10/s at 250 Hz: one token every 25 ticks.
        assert!(!b.take(t0 + 24, 10, 5, HZ));
        assert!(b.take(t0 + 25, 10, 5, HZ));
        assert!(!b.take(t0 + 25, 10, 5, HZ));
        // A minute idle refills to the burst, not beyond.
        let later = t0 + 60 * u64::from(HZ);
        assert_eq!((0..20).filter(|_| b.take(later, 10, 5, HZ)).count(), 5);
    }

    #[test]
    fn over_a_second_the_rate_plus_the_burst_goes_through() {
        let mut b = FlowLogCpu::default();
        let t0 = 4_294_000_000;
        // 40 events a tick for one second, at 100/s with bursts of 50.
        let passed = (0..HZ as u64)
            .flat_map(|t| std::iter::repeat_n(t0 + t, 40))
            .filter(|&t| b.take(t, 100, 50, HZ))
            .count();
        assert!((149..=150).contains(&passed), "{passed}");
    }

    #[test]
    fn a_clock_that_steps_back_or_no_clock_rate_never_panics() {
        let mut b = FlowLogCpu::default();
        let t0 = 4_294_000_000;
        assert!(b.take(t0, 1, 1, HZ));
        assert!(!b.take(t0 - 50, 1, 1, HZ));
        assert!(!b.take(t0, 1, 1, HZ), "stepping back refilled nothing");
        let mut b = FlowLogCpu::default();
        assert!(b.take(u64::MAX, u32::MAX, u32::MAX, 0));
    }
}
