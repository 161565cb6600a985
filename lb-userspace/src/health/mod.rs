//! Health checks: one tokio task per (service, backend), each running its
//! probe every `interval` and feeding the rise/fall state machine; a change
//! of state becomes an [`Event`] for the main loop, which rebuilds the
//! desired state and lets the reconciler write the new Maglev table.

pub mod probe;
pub mod state;
pub mod tls;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;
use tokio::{sync::mpsc, task::AbortHandle};

use crate::{
    config::{CheckConfig, CheckKind, Config},
    plan::service_key,
};
use probe::Probe;
use state::{BackendHealth, Outcome, Transition};

pub use crate::plan::Target;

/// What a check task reports after every check: the backend's state as its
/// task's state machine now has it, and the change of state, if any.
#[derive(Clone, Debug)]
pub struct Event {
    pub target: Target,
    /// Which task sent it: a task replaced by a reload (new check settings)
    /// may still deliver one last result, which must not count.
    generation: u64,
    health: BackendHealth,
    pub transition: Option<Transition>,
}

struct Checked {
    name: String,
    service: String,
    check: CheckConfig,
    generation: u64,
    abort: AbortHandle,
    health: BackendHealth,
}

/// The check tasks and what they last reported, owned by the agent's loop:
/// the tasks own their state machines and send [`Event`]s; nothing here is
/// shared between tasks.
pub struct Health<E> {
    checked: BTreeMap<Target, Checked>,
    next_generation: u64,
    tx: mpsc::UnboundedSender<E>,
}

/// What the status output shows of one backend.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendStatus {
    pub service: String,
    pub backend: String,
    pub address: String,
    pub up: bool,
    /// `ok` or the reason the last check failed.
    pub last_check: String,
    pub latency_ms: Option<f64>,
    /// Seconds in the current state.
    pub since_s: u64,
    pub checks: u64,
    /// Checks that failed, all told.
    pub failures: u64,
    /// Changes between up and down, either way.
    pub transitions: u64,
    /// How long the last check took, passed or failed.
    pub check_duration_ms: Option<f64>,
}

impl<E: From<Event> + Send + 'static> Health<E> {
    /// Check tasks will send their events, converted to `E`, into `tx`.
    pub fn new(tx: mpsc::UnboundedSender<E>) -> Self {
        Health {
            checked: BTreeMap::new(),
            next_generation: 0,
            tx,
        }
    }

    /// Starts checks for new backends, restarts those whose check changed,
    /// stops those no longer configured. Unchanged ones keep their state.
    pub fn sync(&mut self, config: &Config) -> Result<()> {
        let mut wanted: HashMap<Target, (String, String, CheckConfig)> = HashMap::new();
        for s in &config.services {
            if matches!(s.check.kind, CheckKind::None) {
                continue;
            }
            let service = service_key(s);
            for b in &s.backends {
                wanted.insert(
                    Target {
                        service,
                        backend: b.addr,
                    },
                    (s.name.clone(), b.name.clone(), s.check.clone()),
                );
            }
        }
        self.checked.retain(|t, c| {
            let keep = wanted.get(t).is_some_and(|(_, _, check)| *check == c.check);
            if !keep {
                c.abort.abort();
            }
            keep
        });
        for (target, (service, name, check)) in wanted {
            if self.checked.contains_key(&target) {
                continue;
            }
            let probe = probe_for(&check)?;
            let health = BackendHealth::new(check.rise, check.fall, Instant::now());
            let generation = self.next_generation;
            self.next_generation += 1;
            let abort = tokio::spawn(run(
                target,
                generation,
                probe,
                check.clone(),
                health.clone(),
                self.tx.clone(),
            ))
            .abort_handle();
            self.checked.insert(
                target,
                Checked {
                    name,
                    service,
                    check,
                    generation,
                    abort,
                    health,
                },
            );
        }
        Ok(())
    }
}

impl<E> Health<E> {
    /// Takes a task's report; returns the backend's name and its change of
    /// state, if it changed. Reports of tasks since replaced are ignored.
    pub fn on_event(&mut self, event: Event) -> Option<(String, Transition)> {
        let c = self.checked.get_mut(&event.target)?;
        if c.generation != event.generation {
            return None;
        }
        c.health = event.health;
        event.transition.map(|t| (c.name.clone(), t))
    }

    /// The backends whose checks say down (unchecked backends are up).
    pub fn down(&self) -> BTreeSet<Target> {
        self.checked
            .iter()
            .filter(|(_, c)| !c.health.up)
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        self.checked
            .iter()
            .map(|(t, c)| BackendStatus {
                service: c.service.clone(),
                backend: c.name.clone(),
                address: t.backend.to_string(),
                up: c.health.up,
                last_check: match &c.health.last {
                    None => "pending".into(),
                    Some(Outcome::Ok { .. }) => "ok".into(),
                    Some(Outcome::Failed(why)) => why.clone(),
                },
                latency_ms: match &c.health.last {
                    Some(Outcome::Ok { latency }) => Some(latency.as_secs_f64() * 1000.0),
                    _ => None,
                },
                since_s: now.duration_since(c.health.since).as_secs(),
                checks: c.health.checks,
                failures: c.health.failures,
                transitions: c.health.transitions,
                check_duration_ms: c.health.last_duration.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect()
    }
}

impl<E> Drop for Health<E> {
    fn drop(&mut self) {
        for c in self.checked.values() {
            c.abort.abort();
        }
    }
}

fn probe_for(check: &CheckConfig) -> Result<Probe> {
    Ok(match &check.kind {
        CheckKind::None | CheckKind::Tcp => Probe::Tcp,
        CheckKind::Http { path, expect } => Probe::Http {
            path: path.clone(),
            expect: *expect,
        },
        CheckKind::Https { path, expect, tls } => Probe::Https {
            path: path.clone(),
            expect: *expect,
            tls: tls::client_config(tls)?,
            sni: tls.sni.clone(),
        },
    })
}

/// One backend's check loop: probes, feeds its own state machine, and
/// reports every result. Checks never overlap (the timeout is at most the
/// interval), and start at a per-backend offset so that many backends are
/// not probed in lockstep.
async fn run<E: From<Event>>(
    target: Target,
    generation: u64,
    probe: Probe,
    check: CheckConfig,
    mut health: BackendHealth,
    tx: mpsc::UnboundedSender<E>,
) {
    tokio::time::sleep(spread(&target, check.interval)).await;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let outcome = probe::run(&probe, target.backend, check.timeout).await;
        health.last_duration = Some(started.elapsed());
        let transition = health.observe(outcome, Instant::now());
        let event = Event {
            target,
            generation,
            health: health.clone(),
            transition,
        };
        if tx.send(E::from(event)).is_err() {
            return; // the agent is gone
        }
    }
}

/// A stable offset in [0, interval/2) derived from the target.
fn spread(target: &Target, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    let half = (interval.as_millis() as u64 / 2).max(1);
    Duration::from_millis(h.finish() % half)
}
