//! The node's VRRP instances as the agent sees them: their drivers, the
//! state each last reported, what they track, and the rules that turn all
//! that into inputs of the plan (which VIPs this node owns, whether its
//! data plane is active, how long it may go without a heartbeat).

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result};
use tokio::{sync::oneshot, time::timeout};
use tracing::{info, warn};

use super::{
    Auth, Config as EngineConfig, Engine, InitialState, State, Version,
    driver::{self, Command, Handle, Report, Snapshot},
    socket::VrrpSocket,
};
use crate::config::{VrrpConfig, VrrpVersion};

/// One configured instance and its running driver.
pub struct Instance {
    pub config: VrrpConfig,
    pub handle: Handle,
    pub state: State,
    /// Per tracked script: consecutive results against its current state,
    /// and whether it is failing.
    scripts: Vec<ScriptState>,
    /// The delta last sent to the driver.
    delta: i32,
}

#[derive(Clone, Copy, Debug, Default)]
struct ScriptState {
    failing: bool,
    streak: u32,
}

/// What the agent needs to judge the tracked items of every instance.
pub struct TrackInputs<'a> {
    /// The data plane answers (program attached, maps readable).
    pub dataplane_ok: bool,
    /// Backends up per service name (checked up, weight > 0, not drained).
    pub services_up: &'a dyn Fn(&str) -> usize,
}

pub struct Instances {
    pub list: Vec<Instance>,
}

impl Instances {
    /// Opens a socket and starts a driver per instance. `report` turns an
    /// instance's reports into agent events.
    pub fn spawn<F>(
        configs: &[VrrpConfig],
        iface: &str,
        ifindex: u32,
        primary: Ipv4Addr,
        resume: bool,
        report: F,
    ) -> Result<Instances>
    where
        F: Fn(usize, Report) -> bool + Clone + Send + Sync + 'static,
    {
        let mut list = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let engine_config = engine_config(c, primary);
            let mut engine = Engine::new(engine_config, std::time::Instant::now())
                .map_err(|e| anyhow::anyhow!("vrrp \"{}\": {e}", c.name))?;
            if resume {
                engine.resume_master(std::time::Instant::now());
                info!(instance = %c.name, "resuming as master: the adopted data plane was active with a fresh heartbeat");
            }
            let socket = VrrpSocket::open(iface, ifindex, primary, c.unicast_peers.is_empty())
                .with_context(|| format!("vrrp \"{}\"", c.name))?;
            let r = report.clone();
            let handle = driver::spawn(c.name.clone(), engine, socket, move |rep| r(i, rep));
            info!(
                instance = %c.name,
                "VRRP {} vrid {} priority {} advert {:?} {} from {primary} for {:?}",
                match c.version {
                    VrrpVersion::V2 => "v2",
                    VrrpVersion::V3 => "v3",
                },
                c.vrid,
                c.priority,
                c.advert_int,
                if c.unicast_peers.is_empty() {
                    "multicast 224.0.0.18".to_string()
                } else {
                    format!("unicast to {:?}", c.unicast_peers)
                },
                c.vips
            );
            list.push(Instance {
                scripts: vec![ScriptState::default(); c.track.scripts.len()],
                config: c.clone(),
                handle,
                // A resumed instance is master from the start: the first
                // plan after spawning must keep its VIPs.
                state: if resume {
                    State::Master
                } else {
                    State::Initialize
                },
                delta: 0,
            });
        }
        Ok(Instances { list })
    }

    /// The VIPs of the instances this node is master of.
    pub fn owned_vips(&self) -> BTreeSet<Ipv4Addr> {
        self.list
            .iter()
            .filter(|i| i.state == State::Master)
            .flat_map(|i| i.config.vips.iter().copied())
            .collect()
    }

    pub fn any_master(&self) -> bool {
        self.list.iter().any(|i| i.state == State::Master)
    }

    /// How long the data plane may go without a heartbeat: the shortest
    /// 3 × advert interval, which no backup's Master_Down_Interval is
    /// shorter than (it adds the skew): the data plane fences itself before
    /// a backup takes over.
    pub fn fence_after(&self) -> Option<Duration> {
        self.list.iter().map(|i| 3 * i.config.advert_int).min()
    }

    /// How often to refresh the heartbeat: four times per fencing window,
    /// so one late tick of a busy agent does not fence a live node.
    pub fn heartbeat_every(&self) -> Option<Duration> {
        self.fence_after()
            .map(|f| (f / 12).clamp(Duration::from_millis(10), Duration::from_millis(500)))
    }

    /// A script's result (`ok`), with keepalived's rise/fall.
    pub fn script_result(&mut self, instance: usize, script: usize, ok: bool) {
        let Some(inst) = self.list.get_mut(instance) else {
            return;
        };
        let (Some(cfg), Some(st)) = (
            inst.config.track.scripts.get(script),
            inst.scripts.get_mut(script),
        ) else {
            return;
        };
        if ok != st.failing {
            st.streak = 0;
            return;
        }
        st.streak += 1;
        let needed = if st.failing { cfg.rise } else { cfg.fall };
        if st.streak >= needed {
            st.failing = !ok;
            st.streak = 0;
            let verb = if ok { "succeeds again" } else { "fails" };
            warn!(instance = %inst.config.name, "track script {} {verb}", cfg.script);
        }
    }

    /// Recomputes every instance's tracking delta and tells the drivers
    /// whose delta changed.
    pub fn track(&mut self, inputs: &TrackInputs) {
        for inst in &mut self.list {
            let t = &inst.config.track;
            let mut failing: Vec<String> = Vec::new();
            let mut delta = 0i32;
            if !inputs.dataplane_ok {
                delta -= i32::from(t.dataplane_weight);
                failing.push("data plane".into());
            }
            for s in &t.services {
                let up = (inputs.services_up)(&s.service);
                if up < s.min_up as usize {
                    delta -= i32::from(s.weight);
                    failing.push(format!(
                        "service {} ({up} of {} backends up)",
                        s.service, s.min_up
                    ));
                }
            }
            for i in &t.interfaces {
                if !interface_up(&i.name) {
                    delta -= i32::from(i.weight);
                    failing.push(format!("interface {}", i.name));
                }
            }
            for (cfg, st) in t.scripts.iter().zip(&inst.scripts) {
                if st.failing {
                    delta -= i32::from(cfg.weight);
                    failing.push(format!("script {}", cfg.script));
                }
            }
            if delta != inst.delta {
                inst.delta = delta;
                if failing.is_empty() {
                    info!(instance = %inst.config.name, "tracking: all well, priority back to {}", inst.config.priority);
                } else {
                    warn!(instance = %inst.config.name, "tracking: {} failing, priority {delta:+}", failing.join(", "));
                }
                let _ = inst.handle.commands.send(Command::SetDelta(delta));
            }
        }
    }

    /// Every instance resigns (a master sends priority 0, so a backup takes
    /// over after its skew time) and stops; waits at most `within`.
    pub async fn shutdown(&self, within: Duration) {
        let mut waits = Vec::new();
        for inst in &self.list {
            let (tx, rx) = oneshot::channel();
            if inst.handle.commands.send(Command::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let _ = timeout(within, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
    }

    /// Every driver stops without resigning (see [`Command::Abandon`]).
    pub fn abandon(&self) {
        for inst in &self.list {
            let _ = inst.handle.commands.send(Command::Abandon);
        }
    }

    pub fn snapshots(&self) -> Vec<(String, Snapshot)> {
        self.list
            .iter()
            .map(|i| (i.config.name.clone(), i.handle.snapshot.borrow().clone()))
            .collect()
    }
}

fn engine_config(c: &VrrpConfig, primary: Ipv4Addr) -> EngineConfig {
    let mut e = EngineConfig::new(c.vrid, primary, c.vips.clone());
    e.version = match c.version {
        VrrpVersion::V2 => Version::V2,
        VrrpVersion::V3 => Version::V3,
    };
    e.priority = c.priority;
    e.advert_interval = c.advert_int;
    e.unicast_peers = c.unicast_peers.clone();
    e.auth = match &c.auth_pass {
        Some(p) => Auth::password(p),
        None => Auth::None,
    };
    e.preempt = c.preempt;
    e.preempt_delay = c.preempt_delay;
    e.initial_state = Some(if c.initial_master {
        InitialState::Master
    } else {
        InitialState::Backup
    });
    // The VIP set sends the gratuitous ARPs (vip::GarpPolicy) when the
    // node takes the addresses; the engine only asks for a new burst after
    // a split brain.
    e.garp_master_delay = None;
    e.garp_master_repeat = c.garp.repeat;
    e
}

/// `/sys/class/net/NAME/operstate` says the link is usable ("up", or
/// "unknown" for devices that do not report it, as keepalived's
/// track_interface reads IFF_UP|IFF_RUNNING).
fn interface_up(name: &str) -> bool {
    let path = Path::new("/sys/class/net").join(name).join("operstate");
    match std::fs::read_to_string(path) {
        Ok(s) => matches!(s.trim(), "up" | "unknown"),
        Err(_) => false,
    }
}

/// Runs a track script once (`sh -c`), bounded by `limit`: exit 0 is
/// success, anything else (a timeout included) a failure.
pub async fn run_script(script: &str, limit: Duration) -> bool {
    let child = tokio::process::Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    matches!(timeout(limit, child.wait()).await, Ok(Ok(status)) if status.success())
}

/// Runs a notify script (keepalived's `notify_master` …) with `args`, in
/// the background; its failure is logged, never waited for.
pub fn notify(script: &Path, args: &[&str]) {
    let mut cmd = tokio::process::Command::new(script);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let name = script.display().to_string();
    match cmd.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(Ok(s)) if s.success() => {}
                    Ok(Ok(s)) => warn!("notify script {name} exited with {s}"),
                    Ok(Err(e)) => warn!("notify script {name}: {e}"),
                    Err(_) => warn!("notify script {name} still runs after 30 s; left running"),
                }
            });
        }
        Err(e) => warn!("notify script {name} could not start: {e}"),
    }
}
