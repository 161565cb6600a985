//! The agent: validates its configuration, loads (or adopts) the XDP data
//! plane, then runs one event loop. Every source of change — health checks,
//! SIGHUP, timers, signals (and VRRP and the operator, as they come) — is an
//! [`Event`] into that loop, which owns the inputs, plans the desired state
//! ([`crate::plan`]) and carries it out in one fixed order: the maps and
//! the data plane's `active` flag first ([`Reconciler`]), then the VIPs on
//! the interface. Promotion therefore serves before it announces, and
//! demotion fences before it lets go of the address.

use std::{
    collections::{BTreeSet, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, xdp::DevMapHash};
use lb_common::{
    flow::{Flow, FlowKey},
    maps,
    stats::{Counter, ReasonTotals, Traffic},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    cli::Args,
    config::{Config, OnDown},
    flows, health,
    health::Health,
    loader::{Dataplane, LoadOptions},
    maps::{ControlMaps, take},
    node,
    plan::{self, Desired, Inputs, Role, service_key},
    preflight,
    reconcile::Reconciler,
    stats,
    vip::{GarpPolicy, VipSet},
    xdp_mode,
};

/// Everything that can change what the node should do, or ask it to act.
#[derive(Clone, Debug)]
pub enum Event {
    /// A check task's report.
    Health(health::Event),
    /// SIGHUP: re-read the configuration.
    Reload,
    /// This node's VRRP role changed.
    Role(Role),
    /// An operator drained (true) or re-enabled (false) a backend.
    Drain(SocketAddrV4, bool),
    /// Time to log the counters.
    Report,
    /// Time to age the flow table.
    Age,
    /// SIGTERM or SIGINT.
    Shutdown(&'static str),
}

impl From<health::Event> for Event {
    fn from(e: health::Event) -> Self {
        Event::Health(e)
    }
}

pub async fn run(args: Args) -> Result<()> {
    // Everything that can be wrong with the input is found before anything
    // touches the kernel.
    let config = Config::load(&args.overrides())?;
    preflight::interface_index(&args.iface)?;
    preflight::privileges()?;
    let pin_dir = args.pin_dir();
    preflight::bpffs(&pin_dir)?;
    let ticks_per_s = lb_common::clock::ticks_per_s(Duration::from_millis(200))
        .context("measuring the data plane's clock rate (the kernel's HZ)")?;

    let vips: Vec<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
    let snat_ip = match config.snat_ip {
        Some(ip) => ip,
        None => node::primary_ipv4(&args.iface, &vips)?,
    };
    for line in node::prepare_forwarding(&args.iface)? {
        info!("sysctl {line}");
    }
    if let Some(line) = node::reserve_ports(config.nat_ports.0, config.nat_ports.1)? {
        info!("{line}");
    }

    let peer = match xdp_mode::veth_peer(&args.iface).await {
        Ok(peer) => peer,
        Err(e) => {
            warn!(
                "cannot tell whether {} is a veth ({e:#}); attaching as asked",
                args.iface
            );
            None
        }
    };
    let choice = xdp_mode::choose(&args.iface, args.xdp_mode, peer.as_ref());
    if choice.warn {
        warn!("{}", choice.reason);
    }
    let mut dp = Dataplane::load(LoadOptions {
        iface: &args.iface,
        mode: choice.mode,
        why: &choice.reason,
        pin_dir: pin_dir.clone(),
        max_flows: config.max_flows,
        table_size: config.maglev_table_size,
    })?;

    // From here on the kernel runs our program: whatever ends the agent,
    // the node is left consistent, and the log says how.
    let keep = config.keep_dataplane;
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = match Agent::start(&args, config, snat_ip, ticks_per_s, &mut dp, tx.clone()).await {
        Ok(agent) => agent,
        Err(e) => {
            error!("starting: {e:#}");
            return Err(leave(dp, None, None, keep, "start failed").await.context(e));
        }
    };
    match agent.serve(tx, rx).await {
        Ok(agent) => {
            let keep = agent.config.keep_dataplane;
            let Agent {
                reconciler, vips, ..
            } = agent;
            if keep {
                vips.keep();
                dp.keep();
                Ok(())
            } else {
                drop(reconciler);
                vips.release_all().await;
                dp.detach()
            }
        }
        Err((agent, e)) => {
            error!("{e:#}");
            let Agent {
                reconciler, vips, ..
            } = *agent;
            Err(leave(dp, Some(reconciler), Some(vips), keep, "fatal error")
                .await
                .context(e))
        }
    }
}

/// After a fatal error: with --keep-dataplane, fence the data plane (it
/// stops NATing VIP traffic: nobody follows health or failover for it any
/// more) and keep it pinned; otherwise detach it. The VIPs go either way.
async fn leave(
    dp: Dataplane,
    reconciler: Option<Reconciler<ControlMaps>>,
    vips: Option<VipSet>,
    keep: bool,
    why: &str,
) -> anyhow::Error {
    if let Some(vips) = vips {
        vips.release_all().await;
    }
    if keep {
        let fenced = reconciler.map(|mut r| r.fence());
        match fenced {
            Some(Ok(())) => {
                error!(
                    "{why}: the data plane is fenced (passes VIP traffic untouched) and left pinned for the next agent"
                );
            }
            Some(Err(e)) => {
                error!("{why}: fencing failed ({e:#}); the data plane is left pinned as it was");
            }
            None => error!("{why}: the data plane is left pinned as it was"),
        }
        dp.keep();
    } else {
        match dp.detach() {
            Ok(()) => error!("{why}: the XDP program is detached and its pins removed"),
            Err(e) => error!("{why}: detaching failed too: {e:#}"),
        }
    }
    anyhow::anyhow!("xdplb stopped ({why})")
}

/// The loop's state: the inputs of the plan and the writers of its result.
struct Agent {
    args: Args,
    config: Config,
    health: Health<Event>,
    drained: BTreeSet<SocketAddrV4>,
    role: Role,
    snat_ip: Ipv4Addr,
    ticks_per_s: u32,
    /// The node's addresses as last read (kept when a read fails).
    local: BTreeSet<Ipv4Addr>,
    reconciler: Reconciler<ControlMaps>,
    vips: VipSet,
    flows: BpfHashMap<MapData, FlowKey, Flow>,
    reasons: PerCpuArray<MapData, Counter>,
    backend_stats: PerCpuArray<MapData, Traffic>,
    last: ReasonTotals,
    /// Kinds of failure already logged: a failure that repeats every few
    /// seconds is logged once, not every time.
    warned: HashSet<&'static str>,
}

impl Agent {
    async fn start(
        args: &Args,
        config: Config,
        snat_ip: Ipv4Addr,
        ticks_per_s: u32,
        dp: &mut Dataplane,
        tx: mpsc::UnboundedSender<Event>,
    ) -> Result<Agent> {
        let reconciler =
            Reconciler::adopt(ControlMaps::take(dp.ebpf_mut())?, config.maglev_table_size)?;
        let mut tx_ports: DevMapHash<MapData> = take(dp.ebpf_mut(), maps::TX_PORTS)?;
        for (name, ifindex) in node::interfaces()? {
            if let Err(e) = tx_ports.insert(ifindex, ifindex, None, 0) {
                warn!(
                    "interface {name} cannot be an XDP_REDIRECT target ({e}); packets for it go through the kernel"
                );
            }
        }
        let mut health = Health::new(tx);
        health.sync(&config)?;
        let mut agent = Agent {
            args: args.clone(),
            health,
            drained: BTreeSet::new(),
            // Without VRRP the node owns its VIPs.
            role: Role::Master,
            snat_ip,
            ticks_per_s,
            local: BTreeSet::new(),
            reconciler,
            vips: VipSet::new(&args.iface, GarpPolicy::default(), false),
            flows: take(dp.ebpf_mut(), maps::FLOWS)?,
            reasons: take(dp.ebpf_mut(), maps::REASON_STATS)?,
            backend_stats: take(dp.ebpf_mut(), maps::BACKEND_STATS)?,
            last: ReasonTotals::default(),
            warned: HashSet::new(),
            config,
        };
        agent.converge().await?;
        info!(%snat_ip, nat_ports = ?agent.config.nat_ports, "full-NAT source");
        agent.write_status();
        Ok(agent)
    }

    /// Plans from the current inputs and carries the plan out: maps and
    /// `active` first, then the VIPs. A map write that fails is an error
    /// (the caller decides how bad); a VIP that cannot be added is logged
    /// and retried at the next change.
    async fn converge(&mut self) -> Result<Desired> {
        match node::local_ipv4s() {
            Ok(local) => self.local = local.into_iter().collect(),
            Err(e) => self.warn_once(
                "local addresses",
                &format!("reading the node's addresses: {e:#}"),
            ),
        }
        let down = self.health.down();
        let inputs = Inputs {
            config: &self.config,
            down: &down,
            drained: &self.drained,
            role: self.role,
            local: &self.local,
            snat_ip: self.snat_ip,
            ticks_per_s: self.ticks_per_s,
        };
        let desired = plan::plan(&inputs);
        let changes = self.reconciler.apply(&desired)?;
        for line in changes.lines() {
            info!("{line}");
        }
        if let Err(e) = self.vips.sync(&desired.vips).await {
            error!("{e:#}");
        }
        Ok(desired)
    }

    /// The loop. Returns the agent on a clean shutdown, or with the error
    /// that ended it.
    async fn serve(
        mut self,
        tx: mpsc::UnboundedSender<Event>,
        mut rx: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Agent, (Box<Agent>, anyhow::Error)> {
        if let Err(e) = spawn_sources(&self.args, &self.config, tx) {
            return Err((Box::new(self), e));
        }
        // The lab (and scripts) wait for this line.
        info!("xdplb ready on {}", self.args.iface);
        while let Some(event) = rx.recv().await {
            match event {
                Event::Shutdown(why) => {
                    info!("{why}: shutting down");
                    return Ok(self);
                }
                Event::Health(e) => self.on_health(e).await,
                Event::Reload => self.reload().await,
                Event::Role(role) => {
                    self.role = role;
                    if let Err(e) = self.converge().await {
                        return Err((Box::new(self), e.context("applying a role change")));
                    }
                }
                Event::Drain(backend, drained) => {
                    if drained {
                        self.drained.insert(backend);
                    } else {
                        self.drained.remove(&backend);
                    }
                    if let Err(e) = self.converge().await {
                        error!("applying a drain: {e:#}");
                    }
                }
                Event::Report => self.report(),
                Event::Age => self.age(),
            }
        }
        Err((
            Box::new(self),
            anyhow::anyhow!("every event source is gone"),
        ))
    }

    /// A check task reported: fold it in, and if a backend changed state,
    /// plan again (the new table first: a reset flow's next packet must
    /// already pick among the healthy backends), then log and act on it.
    async fn on_health(&mut self, event: health::Event) {
        let target = event.target;
        let Some((name, t)) = self.health.on_event(event) else {
            return;
        };
        if let Err(e) = self.converge().await {
            error!("applying a health change: {e:#}");
        }
        self.write_status();
        if t.up {
            info!("{name} UP: {}", t.reason);
            return;
        }
        warn!("{name} DOWN: {}", t.reason);
        let Some(service) = self
            .config
            .services
            .iter()
            .find(|s| service_key(s) == target.service)
        else {
            return;
        };
        let down = self.health.down();
        let inputs = Inputs {
            config: &self.config,
            down: &down,
            drained: &self.drained,
            role: self.role,
            local: &self.local,
            snat_ip: self.snat_ip,
            ticks_per_s: self.ticks_per_s,
        };
        let failing_open = plan::failing_open(&inputs).contains(&service.name);
        if failing_open {
            error!(
                "service {}: ALL BACKENDS ARE DOWN; still balancing over all of them rather than refusing connections",
                service.name
            );
        }
        // Failing open keeps the backend in the table: resetting its flows
        // would only make its clients reconnect to it.
        if !failing_open
            && service.check.on_down == OnDown::Reset
            && let Some(id) = self.reconciler.backend_id_of(target.backend)
        {
            match flows::reset_backend(&mut self.flows, id) {
                Ok(n) => warn!("{name}: reset {n} flows (on_down = reset)"),
                Err(e) => error!("{name}: resetting flows: {e:#}"),
            }
        }
    }

    /// SIGHUP: re-read the configuration; a bad one is rejected whole and
    /// the running one stays.
    async fn reload(&mut self) {
        let new = match Config::load(&self.args.overrides()).context("re-reading the configuration")
        {
            Ok(new) => new,
            Err(e) => {
                error!("reload rejected, the running configuration stays: {e:#}");
                return;
            }
        };
        if new.maglev_table_size != self.config.maglev_table_size
            || new.max_flows != self.config.max_flows
        {
            error!(
                "reload rejected, the running configuration stays: maglev_table_size and max_flows \
                 size the pinned maps; changing them needs a restart"
            );
            return;
        }
        if let Err(e) = self.health.sync(&new) {
            error!("reload rejected, the running configuration stays: {e:#}");
            // Put the running checks back as they were.
            let _ = self.health.sync(&self.config);
            return;
        }
        if let Some(ip) = new.snat_ip {
            self.snat_ip = ip;
        }
        self.config = new;
        // "reloaded" is said once the new state is in the maps: scripts
        // (and the tests) take the line to mean it is in effect.
        match self.converge().await {
            Ok(_) => info!("reloaded the configuration"),
            Err(e) => error!("applying the reloaded configuration: {e:#}"),
        }
        self.write_status();
    }

    /// The periodic counter report. A failed read is logged once per kind
    /// and the agent goes on: counters are for people, not for forwarding.
    fn report(&mut self) {
        match ReasonTotals::read(&self.reasons) {
            Ok(now) => {
                info!(iface = %self.args.iface, "{}", stats::report(&now, &self.last));
                if now != self.last {
                    match stats::backends(&self.backend_stats, &self.reconciler.backend_names()) {
                        Ok(line) => info!("{line}"),
                        Err(e) => self
                            .warn_once("BACKEND_STATS", &format!("reading BACKEND_STATS: {e:#}")),
                    }
                }
                self.last = now;
            }
            Err(e) => self.warn_once("REASON_STATS", &format!("reading REASON_STATS: {e:#}")),
        }
        self.write_status();
    }

    fn age(&mut self) {
        let c = &self.config;
        match flows::sweep(&mut self.flows, &c.timeouts, c.max_flows, self.ticks_per_s) {
            Ok(s) if s.pressure => warn!(
                entries = s.entries,
                max_flows = c.max_flows,
                expired = s.expired,
                "flow table nearly full: half-open and closing flows expire after 1 s idle; \
                 a full table refuses new connections (drop_flow_table_full), raise max_flows"
            ),
            Ok(s) if s.expired > 0 => {
                info!(
                    connections = s.connections,
                    expired = s.expired,
                    "flow ageing"
                )
            }
            Ok(_) => {}
            Err(e) => warn!("flow ageing: {e:#}"),
        }
    }

    fn warn_once(&mut self, kind: &'static str, message: &str) {
        if self.warned.insert(kind) {
            warn!("{message} (further failures of this kind are not logged)");
        }
    }

    /// `--status-file`: every backend's state as JSON, replaced atomically
    /// (write a temporary file, then rename) so readers never see half of it.
    fn write_status(&self) {
        let Some(path) = &self.args.status_file else {
            return;
        };
        let body =
            serde_json::json!({ "iface": self.args.iface, "backends": self.health.status() });
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let result = std::fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            warn!("writing the status file {}: {e}", path.display());
        }
    }
}

/// The event sources that are not tasks of their own already: signals and
/// timers, each a small task sending into the loop.
fn spawn_sources(args: &Args, config: &Config, tx: mpsc::UnboundedSender<Event>) -> Result<()> {
    for (kind, event) in [
        (SignalKind::terminate(), Event::Shutdown("SIGTERM")),
        (SignalKind::interrupt(), Event::Shutdown("SIGINT")),
        (SignalKind::hangup(), Event::Reload),
    ] {
        let mut sig = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(event.clone()).is_err() {
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

fn every(period: Duration, tx: mpsc::UnboundedSender<Event>, make: fn() -> Event) {
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
fn sweep_interval(config: &Config) -> Duration {
    let t = &config.timeouts;
    let shortest = t
        .tcp_closing
        .min(t.tcp_syn)
        .min(t.udp)
        .min(t.tcp_established);
    (shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}
