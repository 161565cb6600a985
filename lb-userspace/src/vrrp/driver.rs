//! The thin driver around one [`Engine`]: its socket, its timer, the
//! agent's commands; it carries out the engine's actions and reports state
//! changes to the agent's loop as events. No decisions are taken here.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{Action, Engine, State, Stats, socket::VrrpSocket, wire::Reject};

/// What the driver tells the agent.
#[derive(Clone, Debug)]
pub enum Report {
    /// The instance changed state.
    State(State),
    /// Send a new burst of gratuitous ARPs for the instance's VIPs (a split
    /// brain resolved in our favour).
    Garp,
}

/// What the agent tells the driver.
pub enum Command {
    /// The sum of the tracking weights of what is failing (≤ 0).
    SetDelta(i32),
    /// Resign (a master sends priority 0) and stop; answered when the
    /// adverts are out.
    Shutdown(oneshot::Sender<()>),
    /// Stop without a word, as a crash would: the next agent adopts the
    /// data plane and resumes, or the data plane fences itself when the
    /// heartbeat stops (`--keep-dataplane`).
    Abandon,
}

/// One instance's state as the driver last saw it, for status and metrics.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    pub priority: u8,
    pub effective_priority: u8,
    pub master: Option<Ipv4Addr>,
    pub master_down_interval: Duration,
    pub stats: Stats,
}

impl Snapshot {
    fn of(engine: &Engine) -> Self {
        Snapshot {
            state: engine.state(),
            priority: engine.priority(),
            effective_priority: engine.effective_priority(),
            master: engine.master_address(),
            master_down_interval: engine.master_down_interval(),
            stats: engine.stats().clone(),
        }
    }
}

/// The agent's handle on a running instance.
pub struct Handle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub snapshot: watch::Receiver<Snapshot>,
}

/// Starts the driver task of `engine` on `socket`; its reports go through
/// `report` (the agent wraps them into its events).
pub fn spawn<F>(name: String, mut engine: Engine, socket: VrrpSocket, report: F) -> Handle
where
    F: Fn(Report) -> bool + Send + Sync + 'static,
{
    let (commands, mut rx) = mpsc::unbounded_channel();
    let (snap_tx, snapshot) = watch::channel(Snapshot::of(&engine));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        // Each reject reason is logged once; the counters keep the rest.
        let mut logged: HashSet<Reject> = HashSet::new();
        let mut done: Option<oneshot::Sender<()>> = None;
        loop {
            if let Err(e) = carry_out(&name, &mut engine, &socket, &report).await {
                warn!(instance = %name, "{e:#}");
            }
            snap_tx.send_replace(Snapshot::of(&engine));
            if let Some(done) = done.take() {
                let _ = done.send(());
                return;
            }
            let deadline = engine.next_deadline();
            tokio::select! {
                received = socket.recv(&mut buf) => match received {
                    Ok(n) => {
                        if let Err(reason) = engine.on_ip_packet(&buf[..n], Instant::now())
                            && reason != Reject::FromOwnAddress
                            && logged.insert(reason)
                        {
                            warn!(instance = %name, "VRRP advert rejected: {reason} \
                                  (counted; further rejects for this reason are not logged)");
                        }
                    }
                    Err(e) => warn!(instance = %name, "receiving VRRP: {e}"),
                },
                _ = sleep_until(deadline) => engine.on_timer(Instant::now()),
                command = rx.recv() => match command {
                    Some(Command::SetDelta(delta)) => {
                        if delta != engine.priority_delta() {
                            engine.set_priority_delta(delta);
                            info!(instance = %name, "effective priority {} (base {}, tracking {delta})",
                                  engine.effective_priority(), engine.priority());
                        }
                    }
                    Some(Command::Shutdown(reply)) => {
                        engine.shutdown(Instant::now());
                        done = Some(reply);
                    }
                    Some(Command::Abandon) => return,
                    // The agent is gone without a word: resign all the same.
                    None => {
                        engine.shutdown(Instant::now());
                        let _ = carry_out(&name, &mut engine, &socket, &report).await;
                        return;
                    }
                },
            }
        }
    });
    Handle { commands, snapshot }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs the engine's queued actions in order.
async fn carry_out<F>(
    name: &str,
    engine: &mut Engine,
    socket: &VrrpSocket,
    report: &F,
) -> Result<()>
where
    F: Fn(Report) -> bool,
{
    let mut just_became_master = false;
    while let Some(action) = engine.poll_action() {
        if action == Action::BecomeMaster {
            just_became_master = true;
        }
        match action {
            Action::Send(out) => {
                if let Err(e) = socket.send(&out.payload, out.dst).await {
                    warn!(instance = %name, "sending a VRRP advert to {}: {e}", out.dst);
                }
            }
            Action::BecomeMaster => {
                report(Report::State(State::Master));
            }
            Action::BecomeBackup => {
                report(Report::State(State::Backup));
            }
            Action::Stopped => {
                report(Report::State(State::Initialize));
            }
            // Becoming master queues a burst too, which the VIP set sends
            // as it adds the addresses; only a later one (another master
            // gave way) is asked for.
            Action::SendGarp { .. } if engine.stats().became_master > 0 && !just_became_master => {
                report(Report::Garp);
            }
            Action::SendGarp { .. } => {}
        }
    }
    Ok(())
}
