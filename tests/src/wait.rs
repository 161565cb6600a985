//! Bounded waiting for the lab's end-to-end tests: every loop that waits
//! for the system to reach a state ends, in time, with a yes or a no.

use std::{
    thread,
    time::{Duration, Instant},
};

/// How often a condition is polled: often enough that measured times are
/// good to a few tens of ms, rarely enough to cost nothing.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it holds or `limit` passes; how long it took, if it did.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Whether `f` holds within `limit`.
pub fn eventually(limit: Duration, f: impl FnMut() -> bool) -> bool {
    within(limit, f).is_some()
}
