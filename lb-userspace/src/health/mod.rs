//! Health checks: one tokio task per (service, backend), each running its
//! probe every `interval` and feeding the rise/fall state machine; a change
//! of state becomes an [`Event`] for the main loop, which rebuilds the
//! desired state and lets the reconciler write the new Maglev table.

pub mod probe;
pub mod state;
pub mod tls;

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_common::service::ServiceKey;
use serde::Serialize;
use tokio::{sync::mpsc, task::AbortHandle};

use crate::config::{CheckConfig, CheckKind, Config};
use probe::Probe;
use state::{BackendHealth, Outcome, Transition};

/// One checked backend of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub service: ServiceKey,
    pub backend: SocketAddrV4,
}

/// A backend changed state.
#[derive(Clone, Debug)]
pub struct Event {
    pub target: Target,
    pub name: String,
    pub transition: Transition,
}

struct Checked {
    name: String,
    service: String,
    health: BackendHealth,
}

struct Task {
    check: CheckConfig,
    abort: AbortHandle,
}

pub struct Health {
    tasks: HashMap<Target, Task>,
    state: Arc<Mutex<BTreeMap<Target, Checked>>>,
    tx: mpsc::UnboundedSender<Event>,
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
}

impl Health {
    pub fn new() -> (Health, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Health {
                tasks: HashMap::new(),
                state: Arc::default(),
                tx,
            },
            rx,
        )
    }

    /// Starts checks for new backends, restarts those whose check changed,
    /// stops those no longer configured. Unchanged ones keep their state.
    pub fn sync(&mut self, config: &Config) -> Result<()> {
        let mut wanted: HashMap<Target, (String, String, CheckConfig)> = HashMap::new();
        for s in &config.services {
            if matches!(s.check.kind, CheckKind::None) {
                continue;
            }
            let service = ServiceKey {
                vip: s.vip.octets(),
                port: s.port.to_be_bytes(),
                proto: s.proto.number(),
                _pad: 0,
            };
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
        let stale: Vec<Target> = self
            .tasks
            .iter()
            .filter(|(t, task)| {
                wanted
                    .get(t)
                    .is_none_or(|(_, _, check)| *check != task.check)
            })
            .map(|(t, _)| *t)
            .collect();
        let mut state = self.state.lock().expect("health state lock");
        for t in stale {
            if let Some(task) = self.tasks.remove(&t) {
                task.abort.abort();
            }
            state.remove(&t);
        }
        for (target, (service, name, check)) in wanted {
            if self.tasks.contains_key(&target) {
                continue;
            }
            let probe = probe_for(&check)?;
            state.insert(
                target,
                Checked {
                    name: name.clone(),
                    service,
                    health: BackendHealth::new(check.rise, check.fall, Instant::now()),
                },
            );
            let abort = tokio::spawn(run(
                target,
                name,
                probe,
                check.clone(),
                self.state.clone(),
                self.tx.clone(),
            ))
            .abort_handle();
            self.tasks.insert(target, Task { check, abort });
        }
        Ok(())
    }

    /// Whether the backend is down by its checks (unchecked backends are up).
    pub fn is_down(&self, target: &Target) -> bool {
        self.state
            .lock()
            .expect("health state lock")
            .get(target)
            .is_some_and(|c| !c.health.up)
    }

    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        self.state
            .lock()
            .expect("health state lock")
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
            })
            .collect()
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort.abort();
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

/// One backend's check loop. Checks never overlap (the timeout is at most
/// the interval), and start at a per-backend offset so that many backends
/// are not probed in lockstep.
async fn run(
    target: Target,
    name: String,
    probe: Probe,
    check: CheckConfig,
    state: Arc<Mutex<BTreeMap<Target, Checked>>>,
    tx: mpsc::UnboundedSender<Event>,
) {
    tokio::time::sleep(spread(&target, check.interval)).await;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = probe::run(&probe, target.backend, check.timeout).await;
        let transition = match state.lock().expect("health state lock").get_mut(&target) {
            Some(c) => c.health.observe(outcome, Instant::now()),
            None => return, // no longer configured
        };
        if let Some(transition) = transition
            && tx
                .send(Event {
                    target,
                    name: name.clone(),
                    transition,
                })
                .is_err()
        {
            return;
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
