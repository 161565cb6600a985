//! The rise/fall state machine of one backend, with haproxy's semantics: a
//! backend goes down after `fall` consecutive failed checks and comes back
//! after `rise` consecutive successes. Sans-IO: fed results and a clock,
//! tested without sockets.

use std::time::{Duration, Instant};

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        latency: Duration,
    },
    /// Why it failed, as a log line would say it (`/readyz returned 500`).
    Failed(String),
}

/// A change of state, to log once and to hand to the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    /// The check that tipped it, e.g. `/readyz returned 500 (3/3)`.
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct BackendHealth {
    rise: u32,
    fall: u32,
    pub up: bool,
    /// Consecutive results disagreeing with `up`.
    streak: u32,
    pub since: Instant,
    pub last: Option<Outcome>,
    pub checks: u64,
    /// Checks that failed, all told (haproxy's `chkfail`).
    pub failures: u64,
    /// Changes of state, either way. A backend starts up, so the odd ones
    /// were UP → DOWN: `(transitions + 1) / 2` of them (haproxy's `chkdown`).
    pub transitions: u64,
    /// How long the last check took, passed or failed.
    pub last_duration: Option<Duration>,
}

impl BackendHealth {
    /// A backend starts up, as in haproxy: restarting the agent must not
    /// take every backend out until checks have run.
    pub fn new(rise: u32, fall: u32, now: Instant) -> Self {
        BackendHealth {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
            since: now,
            last: None,
            checks: 0,
            failures: 0,
            transitions: 0,
            last_duration: None,
        }
    }

    pub fn observe(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        self.checks += 1;
        let ok = matches!(outcome, Outcome::Ok { .. });
        self.failures += u64::from(!ok);
        let detail = match &outcome {
            Outcome::Ok { latency } => format!("check passed in {} ms", latency.as_millis()),
            Outcome::Failed(why) => why.clone(),
        };
        self.last = Some(outcome);
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        self.since = now;
        self.transitions += 1;
        Some(Transition {
            up: ok,
            reason: format!("{detail} ({needed}/{needed})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Outcome {
        Outcome::Failed("/readyz returned 500".into())
    }
    fn ok() -> Outcome {
        Outcome::Ok {
            latency: Duration::from_millis(3),
        }
    }

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_successes() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(2, 3, t0);
        assert!(h.up);
        assert_eq!(h.observe(fail(), t0), None);
        assert_eq!(h.observe(fail(), t0), None);
        let down = h
            .observe(fail(), t0 + Duration::from_secs(6))
            .expect("down after 3 failures");
        assert_eq!(
            down,
            Transition {
                up: false,
                reason: "/readyz returned 500 (3/3)".into()
            }
        );
        assert_eq!(h.since, t0 + Duration::from_secs(6));
        assert_eq!(h.observe(ok(), t0), None);
        let up = h.observe(ok(), t0).expect("up after 2 successes");
        assert!(up.up && up.reason.ends_with("(2/2)"), "{up:?}");
        assert_eq!((h.checks, h.failures, h.transitions), (5, 3, 2));
    }

    #[test]
    fn flapping_never_completes_a_streak() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(2, 3, t0);
        // fail, fail, ok, fail, fail, ok...: never 3 failures in a row.
        for _ in 0..10 {
            assert_eq!(h.observe(fail(), t0), None);
            assert_eq!(h.observe(fail(), t0), None);
            assert_eq!(h.observe(ok(), t0), None);
        }
        assert!(h.up);
        // Now down, then ok, fail, ok, fail...: never 2 successes in a row.
        for _ in 0..3 {
            h.observe(fail(), t0);
        }
        assert!(!h.up);
        for _ in 0..10 {
            assert_eq!(h.observe(ok(), t0), None);
            assert_eq!(h.observe(fail(), t0), None);
        }
        assert!(!h.up);
        assert_eq!(h.checks, 30 + 3 + 20);
        assert_eq!(h.failures, 20 + 3 + 10);
        assert_eq!(h.transitions, 1, "one UP → DOWN, no way back");
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let t0 = Instant::now();
        let mut h = BackendHealth::new(1, 1, t0);
        assert!(h.observe(fail(), t0).is_some_and(|t| !t.up));
        assert!(h.observe(ok(), t0).is_some_and(|t| t.up));
    }
}
