//! The data plane's clock, as the agent reads it for the heartbeat.

use anyhow::{Context, Result};

/// The data plane's clock (jiffies) without reading /proc/timer_list on
/// every heartbeat: read once, then advanced by the monotonic clock at the
/// measured rate. Both count the same time, so the drift over a run is a
/// tick or two; the heartbeat's margin is a quarter of the fencing window.
pub(super) struct Jiffies {
    at: std::time::Instant,
    ticks: u64,
    per_s: u32,
}

impl Jiffies {
    pub(super) fn start(per_s: u32) -> Result<Self> {
        let ticks = lb_common::clock::jiffies().context("reading jiffies from /proc/timer_list")?;
        Ok(Jiffies {
            at: std::time::Instant::now(),
            ticks,
            per_s,
        })
    }

    pub(super) fn now(&self) -> u64 {
        let elapsed = self.at.elapsed().as_secs_f64();
        self.ticks + (elapsed * f64::from(self.per_s)) as u64
    }
}
