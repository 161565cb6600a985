//! The agent: validates its configuration, loads (or adopts) the XDP data
//! plane, then runs one event loop. Every source of change — health checks,
//! SIGHUP, timers, signals (and VRRP and the operator, as they come) — is an
//! [`Event`] into that loop, which owns the inputs, plans the desired state
//! ([`crate::plan`]) and carries it out in one fixed order: the maps and
//! the data plane's `active` flag first ([`Reconciler`]), then the VIPs on
//! the interface. Promotion therefore serves before it announces, and
//! demotion fences before it lets go of the address. After each change and
//! each report it publishes a snapshot of its state for the admin endpoint
//! ([`crate::admin`]), whose commands come back in as events.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, xdp::DevMapHash};
use lb_common::{
    flow::{Embryo, Flow, FlowKey},
    maps,
    stats::{Counter, EmbryoStats, ReasonTotals, Traffic},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Level, error, info, warn};

use crate::{
    admin::{self, Status, status::Journal},
    cli::{Admin, Args, DEFAULT_ADMIN},
    config::{Config, NatPorts, OnDown},
    flowlog::FlowLog,
    flows::{self, NatUse, NatWatch},
    health,
    health::Health,
    loader::{Dataplane, LoadOptions},
    maps::{ControlMaps, ControlPlane, take},
    node::{self, NatPortChoice},
    plan::{self, Desired, Inputs, Role, service_key},
    preflight,
    reconcile::Reconciler,
    stats,
    vip::{self, GarpPolicy, VipSet},
    vrrp::{self, instances::Instances},
    xdp_mode,
};

mod clock;
mod failover;
mod snapshot;
mod sources;
mod status_file;

use clock::Jiffies;
use sources::{every, spawn_script, spawn_sources};

/// Everything that can change what the node should do, or ask it to act.
#[derive(Debug)]
pub enum Event {
    /// A check task's report.
    Health(health::Event),
    /// SIGHUP, or `xdplb reload` (which wants the outcome back): re-read
    /// the configuration.
    Reload(Option<admin::Reply>),
    /// An operator drained (true) or re-enabled (false) a backend; `xdplb
    /// backend drain|enable` wants the outcome back.
    Drain(SocketAddrV4, bool, Option<admin::Reply>),
    /// The admin endpoint wants a snapshot of the state now.
    Status(oneshot::Sender<Arc<Status>>),
    /// Time to log the counters.
    Report,
    /// Time to age the flow table.
    Age,
    /// SIGTERM or SIGINT.
    Shutdown(&'static str),
    /// A VRRP instance (by index) reported.
    Vrrp(usize, vrrp::driver::Report),
    /// Time to judge what the VRRP instances track.
    Track,
    /// A track script of an instance finished: succeeded or not.
    Script {
        instance: usize,
        script: usize,
        ok: bool,
    },
    /// Time to tell the data plane the agent is alive.
    Heartbeat,
}

impl From<health::Event> for Event {
    fn from(e: health::Event) -> Self {
        Event::Health(e)
    }
}

impl From<admin::Request> for Event {
    fn from(r: admin::Request) -> Self {
        match r {
            admin::Request::Status(reply) => Event::Status(reply),
            admin::Request::Reload(reply) => Event::Reload(Some(reply)),
            admin::Request::Drain(backend, drained, reply) => {
                Event::Drain(backend, drained, Some(reply))
            }
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    // Everything that can be wrong with the input is found before anything
    // touches the kernel.
    let config = Config::load(&args.overrides())?;
    preflight::interface_index(args.iface())?;
    preflight::privileges()?;
    let pin_dir = args.pin_dir();
    preflight::bpffs(&pin_dir)?;
    let ticks_per_s = lb_common::clock::ticks_per_s(Duration::from_millis(200))
        .context("measuring the data plane's clock rate (the kernel's HZ)")?;

    let vips: Vec<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
    if let Some(Admin::At(addr)) = args.admin {
        let on_vip = vips
            .iter()
            .chain(config.vrrp.iter().flat_map(|v| &v.vips))
            .any(|vip| addr.ip() == *vip);
        anyhow::ensure!(
            !on_vip,
            "--admin {addr} is on a VIP: the admin endpoint belongs to the node (a VIP moves \
             between nodes); give the node's own address"
        );
    }
    // The admin endpoint's port is taken before the kernel is touched. An
    // address the operator gave must be had; the default is a convenience
    // that must not stop a node from balancing (a second agent on the node,
    // a namespace whose loopback is down).
    let admin_listener = match args.admin {
        Some(Admin::At(addr)) => Some(admin::bind(addr).await?),
        Some(Admin::Off) => None,
        None => match admin::bind(DEFAULT_ADMIN).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                warn!("{e:#}; running without it");
                None
            }
        },
    };

    for line in node::prepare_forwarding(args.iface())? {
        info!("sysctl {line}");
    }
    let nat = NatSource {
        snat_ips: snat_pool(&config, args.iface())?,
        ports: nat_ports(config.nat_ports)?,
    };

    let peer = match xdp_mode::veth_peer(args.iface()).await {
        Ok(peer) => peer,
        Err(e) => {
            warn!(
                "cannot tell whether {} is a veth ({e:#}); attaching as asked",
                args.iface()
            );
            None
        }
    };
    let choice = xdp_mode::choose(args.iface(), args.xdp_mode, peer.as_ref());
    if choice.warn {
        warn!("{}", choice.reason);
    }
    let mut dp = Dataplane::load(LoadOptions {
        iface: args.iface(),
        mode: choice.mode,
        why: &choice.reason,
        pin_dir: pin_dir.clone(),
        max_flows: config.max_flows,
        max_embryos: config.max_embryos,
        table_size: config.maglev_table_size,
        flow_log: args.flow_log_limit(),
    })?;

    // From here on the kernel runs our program: whatever ends the agent,
    // the node is left consistent, and the log says how.
    let keep = config.keep_dataplane;
    let (tx, rx) = mpsc::unbounded_channel();
    let (published, snapshots) = watch::channel(Arc::new(Status::default()));
    let agent = match Agent::start(
        &args,
        config,
        nat,
        ticks_per_s,
        &mut dp,
        tx.clone(),
        published,
    )
    .await
    {
        Ok(agent) => agent,
        Err(e) => {
            error!("starting: {e:#}");
            return Err(leave(dp, None, None, keep, "start failed").await.context(e));
        }
    };
    if let Some(listener) = admin_listener {
        let tx = tx.clone();
        admin::spawn(listener, args.admin_token.clone(), snapshots, move |r| {
            tx.send(Event::from(r)).is_ok()
        });
    }
    match agent.serve(tx, rx).await {
        Ok(mut agent) => {
            if agent.config.keep_dataplane
                && let Some(v) = agent.vrrp.take()
            {
                // Left as a crash leaves it: mastership, VIPs and the data
                // plane stay; the next agent resumes within the fencing
                // window (3 × advert interval), or the data plane fences
                // itself and a backup takes over.
                v.abandon();
                info!(
                    "--keep-dataplane: VRRP left as it is for the next agent (it must start within 3 × the advert interval, or the data plane fences itself)"
                );
            } else if let Some(v) = agent.vrrp.take() {
                // Resign first (priority 0: a backup takes over after its
                // skew time), then fence and let the VIPs go, in that order.
                v.shutdown(Duration::from_secs(1)).await;
                agent.role = Role::Backup;
                if let Err(e) = agent.converge().await {
                    error!("fencing at shutdown: {e:#}");
                }
            }
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

/// The SNAT pool `config` asks for: its addresses, or the primary address
/// of `iface`. Warns of a configured address the node does not hold: the
/// backends send their replies to it, and the kernel answers ARP only for
/// the node's own addresses (xdplb adds VIPs, not SNAT addresses, as it
/// never added `snat_ip`). An address of a VRRP instance is exempt: it
/// comes and goes with mastership.
fn snat_pool(config: &Config, iface: &str) -> Result<Vec<Ipv4Addr>> {
    if config.snat_ips.is_empty() {
        let vips: Vec<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
        return Ok(vec![node::primary_ipv4(iface, &vips)?]);
    }
    let local = node::local_ipv4s()?;
    for ip in &config.snat_ips {
        let floating = config.vrrp.iter().any(|v| v.vips.contains(ip));
        if !local.contains(ip) && !floating {
            warn!(
                "SNAT address {ip} is not an address of this node: backends reply to it, and the \
                 node answers ARP only for its own addresses; add it (ip addr add {ip}/32 dev {iface})"
            );
        }
    }
    Ok(config.snat_ips.clone())
}

/// How often the agent may say that one backend's NAT ports run out.
const NAT_WARN_EVERY: Duration = Duration::from_secs(60);

/// The NAT ports for `configured` on this node, reserved where they
/// overlap the kernel's ephemeral ports, each step logged.
fn nat_ports(configured: NatPorts) -> Result<NatPortChoice> {
    let (choice, reserved) = node::nat_ports(configured)?;
    if let Some(w) = &choice.warning {
        warn!("{w}");
    }
    if let Some(line) = reserved {
        info!("{line}");
    }
    Ok(choice)
}

/// Where NATed connections come from: the SNAT pool and the ports of each
/// address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NatSource {
    /// The pool (configured, or the interface's primary address).
    snat_ips: Vec<Ipv4Addr>,
    ports: NatPortChoice,
}

impl NatSource {
    /// Concurrent connections one backend can take: a NAT port is unique
    /// per (SNAT address, backend), so each address brings every port.
    fn capacity(&self) -> u32 {
        self.ports.count() * self.snat_ips.len() as u32
    }
}

/// The start-up line: `full-NAT source 10.0.0.2, 10.0.0.3, NAT ports
/// 1024-32767 (auto: ...): 31744 ports × 2 addresses = 63488 connections
/// per backend`.
impl std::fmt::Display for NatSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.snat_ips.iter().map(Ipv4Addr::to_string).collect();
        let (lo, hi) = self.ports.ports;
        write!(
            f,
            "full-NAT source {}, NAT ports {lo}-{hi} ({}): {} ports × {} address{} = {} \
             connections per backend",
            list.join(", "),
            self.ports.why,
            self.ports.count(),
            self.snat_ips.len(),
            if self.snat_ips.len() == 1 { "" } else { "es" },
            self.capacity()
        )
    }
}

/// The loop's state: the inputs of the plan and the writers of its result.
struct Agent {
    args: Args,
    config: Config,
    health: Health<Event>,
    drained: BTreeSet<SocketAddrV4>,
    role: Role,
    nat: NatSource,
    ticks_per_s: u32,
    /// The node's addresses as last read (kept when a read fails).
    local: BTreeSet<Ipv4Addr>,
    reconciler: Reconciler<ControlMaps>,
    vips: VipSet,
    flows: BpfHashMap<MapData, FlowKey, Flow>,
    reasons: PerCpuArray<MapData, Counter>,
    service_stats: PerCpuArray<MapData, Traffic>,
    backend_stats: PerCpuArray<MapData, Traffic>,
    last: ReasonTotals,
    /// FLOWS entries and connections the last ageing pass saw.
    flows_seen: Option<(usize, usize)>,
    embryos: BpfHashMap<MapData, FlowKey, Embryo>,
    embryo_stats: PerCpuArray<MapData, EmbryoStats>,
    /// EMBRYOS entries the last ageing pass saw.
    embryos_seen: Option<usize>,
    /// NAT ports in use per backend id, as of the last ageing pass.
    nat_use: Option<BTreeMap<u32, NatUse>>,
    /// Which backends' NAT ports running out was said, and when.
    nat_watch: NatWatch,
    /// Recent events and reload outcomes, for the admin endpoint.
    journal: Journal,
    /// Where the snapshots for the admin endpoint go.
    published: watch::Sender<Arc<Status>>,
    started: Instant,
    /// Kinds of failure already logged: a failure that repeats every few
    /// seconds is logged once, not every time.
    warned: HashSet<&'static str>,
    /// The VRRP instances, when the node owns its VIPs through VRRP.
    vrrp: Option<Instances>,
    clock: Jiffies,
    /// `--flow-log`, unless off.
    flow_log: Option<FlowLog>,
}

impl Agent {
    async fn start(
        args: &Args,
        config: Config,
        nat: NatSource,
        ticks_per_s: u32,
        dp: &mut Dataplane,
        tx: mpsc::UnboundedSender<Event>,
        published: watch::Sender<Arc<Status>>,
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
        let mut health = Health::new(tx.clone());
        health.sync(&config)?;
        let vrrp_on = !config.vrrp.is_empty();
        let garp = config
            .vrrp
            .first()
            .map_or_else(GarpPolicy::default, |v| GarpPolicy {
                repeat: v.garp.repeat,
                delay: v.garp.delay,
                refresh: v.garp.refresh,
                refresh_repeat: v.garp.refresh_repeat,
            });
        let clock = Jiffies::start(ticks_per_s)?;
        // An agent restarted while its data plane was still master (active,
        // heartbeat fresh) takes up where it left off: no connection is
        // lost, no VIP removed. Anything else starts as a backup.
        let resume = vrrp_on && {
            let c = reconciler.maps().config()?;
            c.fence_after != 0 && c.active(clock.now())
        };
        if vrrp_on && !resume {
            // A VIP left on the interface by an agent that was killed is
            // not ours until VRRP says so: a backup must not answer for it.
            let all: BTreeSet<Ipv4Addr> = config
                .vrrp
                .iter()
                .flat_map(|v| v.vips.iter().copied())
                .collect();
            for v in vip::remove_stale(args.iface(), &all).await? {
                warn!(vip = %v, "removed a stale VIP from {}: VRRP decides who holds it", args.iface());
            }
        }
        let mut agent = Agent {
            args: args.clone(),
            health,
            drained: BTreeSet::new(),
            // Without VRRP the node owns its VIPs; with it, it starts as a
            // backup (fenced, no VIP) until its instances say otherwise.
            role: if vrrp_on && !resume {
                Role::Backup
            } else {
                Role::Master
            },
            nat,
            ticks_per_s,
            local: BTreeSet::new(),
            reconciler,
            vips: VipSet::new(args.iface(), garp, vrrp_on),
            flows: take(dp.ebpf_mut(), maps::FLOWS)?,
            reasons: take(dp.ebpf_mut(), maps::REASON_STATS)?,
            service_stats: take(dp.ebpf_mut(), maps::SERVICE_STATS)?,
            backend_stats: take(dp.ebpf_mut(), maps::BACKEND_STATS)?,
            last: ReasonTotals::default(),
            flows_seen: None,
            embryos: take(dp.ebpf_mut(), maps::EMBRYOS)?,
            embryo_stats: take(dp.ebpf_mut(), maps::EMBRYO_STATS)?,
            embryos_seen: None,
            nat_use: None,
            nat_watch: NatWatch::new(NAT_WARN_EVERY),
            journal: Journal::default(),
            published,
            started: Instant::now(),
            warned: HashSet::new(),
            vrrp: None,
            clock,
            flow_log: FlowLog::start(
                dp.ebpf_mut(),
                &args.flow_log,
                args.flow_log_limit(),
                ticks_per_s,
                // Suppressed counts are reported even without a report.
                Some(args.report_interval)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(5)),
                config.max_flows,
            )?,
            config,
        };
        agent.reconciler.heartbeat(agent.clock.now())?;
        agent.converge().await?;
        if vrrp_on {
            let ifindex = preflight::interface_index(args.iface())?;
            let vips: Vec<Ipv4Addr> = agent
                .config
                .vrrp
                .iter()
                .flat_map(|v| v.vips.iter().copied())
                .collect();
            let primary = node::primary_ipv4(args.iface(), &vips)?;
            let report_tx = tx.clone();
            agent.vrrp = Some(Instances::spawn(
                &agent.config.vrrp,
                args.iface(),
                ifindex,
                primary,
                resume,
                move |i, r| report_tx.send(Event::Vrrp(i, r)).is_ok(),
            )?);
            // The heartbeat and fencing window now apply.
            agent.converge().await?;
        }
        info!("{}", agent.nat);
        agent.write_status();
        Ok(agent)
    }

    /// Calls `f` with the planner's inputs as the agent holds them now.
    fn with_inputs<R>(&self, f: impl FnOnce(&Inputs) -> R) -> R {
        let down = self.health.down();
        let owned = self.vrrp.as_ref().map(Instances::owned_vips);
        f(&Inputs {
            config: &self.config,
            down: &down,
            drained: &self.drained,
            role: self.role,
            local: &self.local,
            snat_ips: &self.nat.snat_ips,
            nat_ports: self.nat.ports.ports,
            ticks_per_s: self.ticks_per_s,
            fence_after: self.vrrp.as_ref().and_then(Instances::fence_after),
            vrrp_vips: owned.as_ref(),
        })
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
        let desired = self.with_inputs(plan::plan);
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
        if let Err(e) = spawn_sources(&self.args, &self.config, tx.clone()) {
            return Err((Box::new(self), e));
        }
        if let Some(v) = &self.vrrp {
            if let Some(period) = v.heartbeat_every() {
                every(period, tx.clone(), || Event::Heartbeat);
            }
            let shortest = v.fence_after().unwrap_or(Duration::from_secs(3)) / 3;
            every(shortest.max(Duration::from_millis(100)), tx.clone(), || {
                Event::Track
            });
            for (instance, inst) in v.list.iter().enumerate() {
                for (script, t) in inst.config.track.scripts.iter().enumerate() {
                    spawn_script(
                        instance,
                        script,
                        t.script.clone(),
                        t.interval,
                        t.timeout,
                        tx.clone(),
                    );
                }
            }
        }
        // The lab (and scripts) wait for this line.
        info!("xdplb ready on {}", self.args.iface());
        self.journal.push(
            Level::INFO,
            format!(
                "xdplb {} started on {}",
                env!("CARGO_PKG_VERSION"),
                self.args.iface()
            ),
        );
        while let Some(event) = rx.recv().await {
            match event {
                Event::Shutdown(why) => {
                    info!("{why}: shutting down");
                    return Ok(self);
                }
                Event::Health(e) => self.on_health(e).await,
                Event::Reload(reply) => {
                    let outcome = self.reload().await;
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Event::Drain(backend, drained, reply) => {
                    let outcome = self.drain(backend, drained).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Event::Status(reply) => {
                    let _ = reply.send(self.publish());
                }
                Event::Report => self.report(),
                Event::Age => self.age(),
                Event::Vrrp(i, report) => {
                    if let Err(e) = self.on_vrrp(i, report).await {
                        return Err((Box::new(self), e.context("applying a VRRP transition")));
                    }
                }
                Event::Track => self.track().await,
                Event::Script {
                    instance,
                    script,
                    ok,
                } => {
                    if let Some(v) = &mut self.vrrp {
                        v.script_result(instance, script, ok);
                    }
                }
                Event::Heartbeat => {
                    if let Err(e) = self.reconciler.heartbeat(self.clock.now()) {
                        self.warn_once(
                            "heartbeat",
                            &format!("writing the heartbeat to CONFIG: {e:#}"),
                        );
                    }
                }
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
            self.record(Level::INFO, format!("{name} UP: {}", t.reason));
            return;
        }
        self.record(Level::WARN, format!("{name} DOWN: {}", t.reason));
        let Some(service) = self
            .config
            .services
            .iter()
            .find(|s| service_key(s) == target.service)
        else {
            return;
        };
        let (service, reset) = (service.name.clone(), service.check.on_down == OnDown::Reset);
        let failing_open = self.with_inputs(plan::failing_open).contains(&service);
        if failing_open {
            self.record(
                Level::ERROR,
                format!(
                    "service {service}: ALL BACKENDS ARE DOWN; still balancing over all of them rather than refusing connections"
                ),
            );
        }
        // Failing open keeps the backend in the table: resetting its flows
        // would only make its clients reconnect to it.
        if !failing_open
            && reset
            && let Some(id) = self.reconciler.backend_id_of(target.backend)
        {
            match flows::reset_backend(&mut self.flows, &mut self.embryos, id) {
                Ok(r) => {
                    warn!(
                        "{name}: reset {} flows and {} half-open entries (on_down = reset)",
                        r.removed, r.half_open
                    );
                    if let Some(log) = &self.flow_log {
                        log.ended(r.ended);
                    }
                }
                Err(e) => error!("{name}: resetting flows: {e:#}"),
            }
        }
    }

    /// SIGHUP or `xdplb reload`: re-read the configuration; a bad one is
    /// rejected whole and the running one stays. Logs and returns what
    /// happened, for the command that asked.
    async fn reload(&mut self) -> Result<String, String> {
        let outcome = self.load_new_config().await;
        match &outcome {
            Ok(said) => self.record(Level::INFO, said.clone()),
            Err(said) => self.record(Level::ERROR, said.clone()),
        }
        self.journal.reloaded(&outcome);
        self.write_status();
        outcome
    }

    async fn load_new_config(&mut self) -> Result<String, String> {
        const REJECTED: &str = "reload rejected, the running configuration stays";
        let new = Config::load(&self.args.overrides())
            .context("re-reading the configuration")
            .map_err(|e| format!("{REJECTED}: {e:#}"))?;
        if new.maglev_table_size != self.config.maglev_table_size
            || new.max_flows != self.config.max_flows
            || new.max_embryos != self.config.max_embryos
        {
            return Err(format!(
                "{REJECTED}: maglev_table_size, max_flows and max_embryos size the pinned maps; \
                 changing them needs a restart"
            ));
        }
        let snat_ips =
            snat_pool(&new, self.args.iface()).map_err(|e| format!("{REJECTED}: {e:#}"))?;
        // The running ports stay unless the setting changed: "auto" is not
        // recomputed from a sysctl changed since, under established flows.
        let ports = match new.nat_ports == self.config.nat_ports {
            true => self.nat.ports.clone(),
            false => nat_ports(new.nat_ports).map_err(|e| format!("{REJECTED}: {e:#}"))?,
        };
        if let Err(e) = self.health.sync(&new) {
            // Put the running checks back as they were.
            let _ = self.health.sync(&self.config);
            return Err(format!("{REJECTED}: {e:#}"));
        }
        let nat = NatSource { snat_ips, ports };
        if nat != self.nat {
            info!("{nat}");
        }
        self.nat = nat;
        self.config = new;
        // "reloaded" is said once the new state is in the maps: scripts
        // (and the tests) take the line to mean it is in effect.
        match self.converge().await {
            Ok(_) => {
                let backends: usize = self.config.services.iter().map(|s| s.backends.len()).sum();
                Ok(format!(
                    "reloaded the configuration: {} services, {backends} backends",
                    self.config.services.len()
                ))
            }
            Err(e) => Err(format!("applying the reloaded configuration: {e:#}")),
        }
    }

    /// `xdplb backend drain|enable`: the backend (in every service that has
    /// it) takes no new connections, or takes them again.
    async fn drain(&mut self, backend: SocketAddrV4, drained: bool) -> Result<String, String> {
        let known = self
            .config
            .services
            .iter()
            .any(|s| s.backends.iter().any(|b| b.addr == backend));
        if !known {
            return Err(format!("{backend} is not a backend of any service"));
        }
        let changed = if drained {
            self.drained.insert(backend)
        } else {
            self.drained.remove(&backend)
        };
        if let Err(e) = self.converge().await {
            error!("applying a drain: {e:#}");
            return Err(format!("applying it: {e:#}"));
        }
        let said = match (drained, changed) {
            (true, true) => {
                format!("{backend} drained: no new connections, established ones go on")
            }
            (true, false) => format!("{backend} was already drained"),
            (false, true) => format!("{backend} enabled: it takes new connections again"),
            (false, false) => format!("{backend} was not drained"),
        };
        if changed {
            self.record(Level::INFO, said.clone());
            self.write_status();
        }
        Ok(said)
    }

    /// Logs a line operators care about and keeps it for the status page.
    fn record(&mut self, level: Level, message: String) {
        match level {
            Level::ERROR => error!("{message}"),
            Level::WARN => warn!("{message}"),
            _ => info!("{message}"),
        }
        self.journal.push(level, message);
    }

    /// The periodic counter report. A failed read is logged once per kind
    /// and the agent goes on: counters are for people, not for forwarding.
    fn report(&mut self) {
        match ReasonTotals::read(&self.reasons) {
            Ok(now) => {
                info!(iface = %self.args.iface(), "{}", stats::report(&now, &self.last));
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
        let half_open = match flows::half_open(&self.embryos) {
            Ok(h) => Some(h),
            Err(e) => {
                self.warn_once("EMBRYOS", &format!("{e:#}"));
                None
            }
        };
        self.embryos_seen = half_open.as_ref().map(|h| h.entries);
        let c = &self.config;
        let mut swept = flows::sweep(&mut self.flows, &c.timeouts, c.max_flows, self.ticks_per_s);
        if let Ok(s) = &swept {
            self.flows_seen = Some((s.entries, s.connections));
            let none = BTreeMap::new();
            let half_open = half_open.as_ref().map_or(&none, |h| &h.nat_ports);
            self.nat_use = Some(flows::nat_use(&s.nat_ports, half_open));
        }
        if let (Ok(s), Some(log)) = (&mut swept, &self.flow_log) {
            log.ended(std::mem::take(&mut s.ended));
        }
        match swept {
            Ok(s) if s.pressure => warn!(
                entries = s.entries,
                max_flows = c.max_flows,
                expired = s.expired,
                "flow table nearly full: closing flows expire after 1 s idle; \
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
        self.warn_nat_ports();
    }

    /// Warns of each backend whose established connections hold most of
    /// its NAT ports, at most once per [`NAT_WARN_EVERY`] each: past all of
    /// them its new connections fail.
    fn warn_nat_ports(&mut self) {
        let Some(usage) = &self.nat_use else {
            return;
        };
        let capacity = self.nat.capacity();
        let due = self.nat_watch.due(usage, capacity, Instant::now());
        let mut said = Vec::new();
        for id in due {
            let u = usage[&id];
            let backend = self
                .config
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .find(|b| self.reconciler.backend_id_of(b.addr) == Some(id))
                .map_or_else(
                    || format!("backend id {id}"),
                    |b| match b.name == b.addr.to_string() {
                        true => format!("backend {}", b.addr),
                        false => format!("backend {} ({})", b.name, b.addr),
                    },
                );
            said.push(format!(
                "{backend}: {} of its {capacity} NAT ports ({:.0} %) are held by established \
                 connections, {} more by half-open ones; once all are held, new connections to it \
                 fail (drop_nat_ports_exhausted). Add SNAT addresses (snat_ips: each brings {} \
                 ports), or widen nat_ports (for auto, lower the start of \
                 net.ipv4.ip_local_port_range)",
                u.established,
                f64::from(u.established) * 100.0 / f64::from(capacity.max(1)),
                u.half_open,
                self.nat.ports.count()
            ));
        }
        for line in said {
            self.record(Level::WARN, line);
        }
    }

    fn warn_once(&mut self, kind: &'static str, message: &str) {
        if self.warned.insert(kind) {
            warn!("{message} (further failures of this kind are not logged)");
        }
    }
}
