//! The event sources that are not tasks of their own already: signals,
//! timers and track scripts, each a small task sending into the loop.

use std::time::Duration;

use anyhow::Result;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::Event;
use crate::{cli::Args, config::Config, vrrp};

/// The event sources that are not tasks of their own already: signals and
/// timers, each a small task sending into the loop.
pub(super) fn spawn_sources(
    args: &Args,
    config: &Config,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let signals: [(SignalKind, fn() -> Event); 3] = [
        (SignalKind::terminate(), || Event::Shutdown("SIGTERM")),
        (SignalKind::interrupt(), || Event::Shutdown("SIGINT")),
        (SignalKind::hangup(), || Event::Reload(None)),
    ];
    for (kind, event) in signals {
        let mut sig = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(event()).is_err() {
                    return;
                }
            }
        });
    }
    if !args.report_interval.is_zero() {
        every(args.report_interval, tx.clone(), || Event::Report);
    }
    every(sweep_interval(config), tx, || Event::Age);
    Ok(())
}

/// A track script run every `interval` (keepalived's `vrrp_script`).
pub(super) fn spawn_script(
    instance: usize,
    script: usize,
    command: String,
    interval: Duration,
    limit: Duration,
    tx: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ok = vrrp::instances::run_script(&command, limit).await;
            if tx
                .send(Event::Script {
                    instance,
                    script,
                    ok,
                })
                .is_err()
            {
                return;
            }
        }
    });
}

pub(super) fn every(period: Duration, tx: mpsc::UnboundedSender<Event>, make: fn() -> Event) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            ticks.tick().await;
            if tx.send(make()).is_err() {
                return;
            }
        }
    });
}

/// Often enough that the shortest timeout is honoured within ~50%.
pub(super) fn sweep_interval(config: &Config) -> Duration {
    let t = &config.timeouts;
    let shortest = t
        .tcp_closing
        .min(t.tcp_syn)
        .min(t.udp)
        .min(t.tcp_established);
    (shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}
