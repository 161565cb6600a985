//! The data plane's clock: jiffies.
//!
//! The program stamps flows (last packet, next hop refreshed) with
//! `bpf_jiffies64()`, which the verifier inlines into a plain load. Reading
//! a clocksource through `bpf_ktime_get_coarse_ns` (or `_ns`) is a helper
//! call that cost 20-50 ns per packet on the VMs we measure, a quarter of
//! the whole established path; a flow's timestamps need seconds, not ns.
//!
//! The agent needs the same clock to age flows: it reads the current
//! jiffies, and once the rate (the kernel's HZ), from `/proc/timer_list`
//! (root only), which prints both the monotonic time and jiffies. The rate
//! goes to the data plane in `DataplaneConfig::ticks_per_s`, its "one
//! second".

/// `now at <ns> nsecs` and the first `jiffies: <n>` of `/proc/timer_list`.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let mut now = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("now at ") {
            now = rest.split_whitespace().next()?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("jiffies:") {
            return Some((now?, rest.trim().parse().ok()?));
        }
    }
    None
}

/// The kernel's HZ from jiffies counted over a measured interval: the
/// nearest of the values Linux offers, when the count is within 10% of it.
pub fn snap_hz(jiffies: u64, elapsed_ns: u64) -> Option<u32> {
    if elapsed_ns == 0 {
        return None;
    }
    let measured = jiffies as f64 * 1e9 / elapsed_ns as f64;
    [100u32, 250, 300, 1000]
        .into_iter()
        .find(|&hz| (measured - f64::from(hz)).abs() <= 0.1 * f64::from(hz))
}

#[cfg(any(test, feature = "std"))]
mod read {
    use std::{
        fs::File,
        io::{BufRead, BufReader},
        string::String,
        time::Duration,
    };

    const TIMER_LIST: &str = "/proc/timer_list";

    /// (monotonic ns, jiffies) now. Stops reading at the first jiffies
    /// line: the file has a section per CPU.
    pub fn sample() -> std::io::Result<(u64, u64)> {
        let mut text = String::new();
        for line in BufReader::new(File::open(TIMER_LIST)?).lines() {
            let line = line?;
            let done = line.trim_start().starts_with("jiffies:");
            text.push_str(&line);
            text.push('\n');
            if done {
                break;
            }
        }
        super::parse_timer_list(&text).ok_or_else(|| {
            std::io::Error::other(std::format!(
                "{TIMER_LIST} has no \"now at\" or \"jiffies:\" line"
            ))
        })
    }

    /// The data plane's clock rate: jiffies counted over `over` (≥ 200 ms
    /// keeps a 100 Hz count within 5%).
    pub fn ticks_per_s(over: Duration) -> std::io::Result<u32> {
        let (t0, j0) = sample()?;
        std::thread::sleep(over);
        let (t1, j1) = sample()?;
        super::snap_hz(j1.wrapping_sub(j0), t1.saturating_sub(t0)).ok_or_else(|| {
            std::io::Error::other(std::format!(
                "{TIMER_LIST}: {} jiffies in {} ns is not a kernel HZ (100, 250, 300, 1000)",
                j1.wrapping_sub(j0),
                t1.saturating_sub(t0)
            ))
        })
    }

    /// Jiffies now.
    pub fn jiffies() -> std::io::Result<u64> {
        sample().map(|(_, j)| j)
    }
}

#[cfg(any(test, feature = "std"))]
pub use read::{jiffies, sample, ticks_per_s};

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 13136294689163 nsecs\n\n\
cpu: 0\n clock 0:\n  .base:       00000000\n  .idle_jiffies   : 4298176304\n  .last_jiffies   : 4298176306\n\
jiffies: 4298176306\n  .idle_jiffies   : 4298176304\njiffies: 4298176399\n";

    #[test]
    fn reads_now_and_the_first_jiffies_line() {
        assert_eq!(
            parse_timer_list(SAMPLE),
            Some((13_136_294_689_163, 4_298_176_306))
        );
        assert_eq!(parse_timer_list("jiffies: 5\n"), None, "no time before it");
        assert_eq!(parse_timer_list("now at 5 nsecs\n"), None);
    }

    #[test]
    fn snaps_to_the_kernels_hz() {
        assert_eq!(snap_hz(50, 200_000_000), Some(250));
        assert_eq!(snap_hz(19, 200_000_000), Some(100));
        assert_eq!(snap_hz(201, 200_000_000), Some(1000));
        assert_eq!(snap_hz(60, 200_000_000), Some(300));
        assert_eq!(snap_hz(100, 200_000_000), None, "500 Hz is no kernel's");
        assert_eq!(snap_hz(1, 0), None);
    }

    /// On this machine: the rate is a kernel HZ and jiffies advance.
    #[test]
    fn this_kernel_has_a_clock_we_can_read() {
        let Ok(hz) = ticks_per_s(std::time::Duration::from_millis(200)) else {
            // /proc/timer_list is root-only; unit tests may run unprivileged.
            return;
        };
        let j = jiffies().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(jiffies().unwrap() > j, "jiffies stood still at {hz} Hz");
    }
}
