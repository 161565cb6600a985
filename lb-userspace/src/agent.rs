//! The agent's run loop: validates the configuration, loads (or adopts) the
//! XDP data plane, owns the VIP, writes the maps through the reconciler,
//! ages flows, reports counters, re-reads its config on SIGHUP, and on
//! SIGINT/SIGTERM detaches cleanly (or leaves the data plane running with
//! `--keep-dataplane`).

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, xdp::DevMapHash};
use lb_common::{
    flow::{Flow, FlowKey},
    maps,
    service::ServiceKey,
    stats::{Counter, ReasonTotals, Traffic},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    cli::Args,
    config::{Config, OnDown, ServiceConfig},
    flows, health,
    health::{Health, Target},
    loader::{Dataplane, LoadOptions, typed},
    node, preflight,
    reconcile::{ControlMaps, Desired, DesiredBackend, DesiredService, Reconciler},
    stats, vip,
    vip::VipGuard,
    xdp_mode,
};

pub async fn run(args: Args) -> Result<()> {
    // Everything that can be wrong with the input is found before anything
    // touches the kernel.
    let mut config = Config::load(&args.overrides())?;
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
    let control = ControlMaps {
        config: typed(&mut dp, maps::CONFIG)?,
        services: typed(&mut dp, maps::SERVICES)?,
        backends: typed(&mut dp, maps::BACKENDS)?,
        maglev: typed(&mut dp, maps::MAGLEV)?,
    };
    let mut flows: BpfHashMap<MapData, FlowKey, Flow> = typed(&mut dp, maps::FLOWS)?;
    let reasons: PerCpuArray<MapData, Counter> = typed(&mut dp, maps::REASON_STATS)?;
    let backend_stats: PerCpuArray<MapData, Traffic> = typed(&mut dp, maps::BACKEND_STATS)?;
    let mut tx_ports: DevMapHash<MapData> = typed(&mut dp, maps::TX_PORTS)?;
    for (name, ifindex) in node::interfaces()? {
        if let Err(e) = tx_ports.insert(ifindex, ifindex, None, 0) {
            warn!(
                "interface {name} cannot be an XDP_REDIRECT target ({e}); packets for it go through the kernel"
            );
        }
    }

    let mut reconciler = Reconciler::adopt(control, config.maglev_table_size)?;
    let (mut health, mut health_events) = Health::new();
    health.sync(&config)?;
    let changes = reconciler.apply(&desired(&config, snat_ip, &health, ticks_per_s)?)?;
    log_changes(&changes);
    info!(%snat_ip, nat_ports = ?config.nat_ports, "full-NAT source");

    let mut vip_guards: HashMap<Ipv4Addr, VipGuard> = HashMap::new();
    if config.assign_vip {
        sync_vips(&args.iface, &config, &mut vip_guards).await?;
    }
    write_status(&args, &health);
    // The lab (and scripts) wait for this line.
    info!("xdplb ready on {}", args.iface);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut report =
        (!args.report_interval.is_zero()).then(|| tokio::time::interval(args.report_interval));
    let mut ageing = tokio::time::interval(sweep_interval(&config));
    let mut last = ReasonTotals::default();
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break }
            Some(event) = health_events.recv() => {
                // The new table first: a reset flow's next packet must
                // already pick among the healthy backends.
                match desired(&config, snat_ip, &health, ticks_per_s).and_then(|d| reconciler.apply(&d)) {
                    Ok(changes) => log_changes(&changes),
                    Err(e) => error!("applying a health change: {e:#}"),
                }
                on_health_event(&event, &config, &health, &mut flows, &reconciler);
                write_status(&args, &health);
            }
            _ = sighup.recv() => {
                match reload(&args, &config, snat_ip, ticks_per_s, &mut reconciler, &mut health) {
                    Ok(new) => {
                        if new.assign_vip
                            && let Err(e) = sync_vips(&args.iface, &new, &mut vip_guards).await
                        {
                            error!("reload: {e:#}");
                        }
                        config = new;
                    }
                    Err(e) => error!("reload rejected, the running configuration stays: {e:#}"),
                }
            }
            _ = async { report.as_mut().expect("guarded").tick().await }, if report.is_some() => {
                let now = ReasonTotals::read(&reasons)?;
                info!(iface = %args.iface, "{}", stats::report(&now, &last));
                if now != last {
                    info!("{}", stats::backends(&backend_stats, &reconciler.backend_names())?);
                }
                last = now;
                write_status(&args, &health);
            }
            _ = ageing.tick() => {
                match flows::sweep(&mut flows, &config.timeouts, config.max_flows, ticks_per_s) {
                    Ok(s) if s.pressure => warn!(
                        entries = s.entries, max_flows = config.max_flows, expired = s.expired,
                        "flow table nearly full: half-open and closing flows expire after 1 s idle; \
                         a full table refuses new connections (drop_flow_table_full), raise max_flows"
                    ),
                    Ok(s) if s.expired > 0 => info!(connections = s.connections, expired = s.expired, "flow ageing"),
                    Ok(_) => {}
                    Err(e) => warn!("flow ageing: {e:#}"),
                }
            }
        }
    }

    if config.keep_dataplane {
        for (_, guard) in vip_guards.drain() {
            guard.keep();
        }
        dp.keep();
    } else {
        for (_, guard) in vip_guards.drain() {
            if let Err(e) = guard.release().await {
                warn!("{e:#}");
            }
        }
        dp.detach()?;
    }
    Ok(())
}

/// The desired data-plane state for `config` on this node: configured
/// weights, with backends that failed their checks at weight 0.
///
/// When every backend of a service is down, the service fails open: it
/// balances over all configured backends rather than refusing connections.
/// A readiness check can fail everywhere at once (an etcd hiccup turns every
/// apiserver's /readyz red) while the apiservers still serve; cutting the
/// whole control plane off would turn a blip into an outage.
/// `ticks_per_s`: the data plane clock's rate, measured at start.
fn desired(
    config: &Config,
    snat_ip: Ipv4Addr,
    health: &Health,
    ticks_per_s: u32,
) -> Result<Desired> {
    let local = node::local_ipv4s()?;
    let services = config
        .services
        .iter()
        .map(|s| {
            let key = service_key(s);
            let down = |addr| {
                health.is_down(&Target {
                    service: key,
                    backend: addr,
                })
            };
            let all_down = s
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .all(|b| down(b.addr));
            DesiredService {
                name: s.name.clone(),
                key,
                backends: s
                    .backends
                    .iter()
                    .map(|b| DesiredBackend {
                        name: b.name.clone(),
                        addr: b.addr,
                        weight: if down(b.addr) && !all_down {
                            0
                        } else {
                            b.weight
                        },
                        local: local.contains(b.addr.ip()),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Desired {
        snat_ip,
        nat_ports: config.nat_ports,
        active: true,
        ticks_per_s,
        services,
    })
}

fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        vip: s.vip.octets(),
        port: s.port.to_be_bytes(),
        proto: s.proto.number(),
        _pad: 0,
    }
}

/// Logs a backend's change of state once, says so loudly when a service
/// has no healthy backend left, and resets the backend's flows if the
/// service asks for it.
fn on_health_event(
    event: &health::Event,
    config: &Config,
    health: &Health,
    flows: &mut BpfHashMap<MapData, FlowKey, Flow>,
    reconciler: &Reconciler,
) {
    let Some(service) = config
        .services
        .iter()
        .find(|s| service_key(s) == event.target.service)
    else {
        return;
    };
    let t = &event.transition;
    if t.up {
        info!("{} UP: {}", event.name, t.reason);
        return;
    }
    warn!("{} DOWN: {}", event.name, t.reason);
    let mut live = service.backends.iter().filter(|b| b.weight > 0);
    let all_down = live.all(|b| {
        health.is_down(&Target {
            service: event.target.service,
            backend: b.addr,
        })
    });
    if all_down {
        error!(
            "service {}: ALL BACKENDS ARE DOWN; still balancing over all of them rather than refusing connections",
            service.name
        );
    }
    // Failing open keeps the backend in the table: resetting its flows
    // would only make its clients reconnect to it.
    if !all_down
        && service.check.on_down == OnDown::Reset
        && let Some(id) = reconciler.backend_id_of(event.target.backend)
    {
        match flows::reset_backend(flows, id) {
            Ok(n) => warn!("{}: reset {n} flows (on_down = reset)", event.name),
            Err(e) => error!("{}: resetting flows: {e:#}", event.name),
        }
    }
}

/// SIGHUP: re-read the configuration; a bad one is rejected whole.
fn reload(
    args: &Args,
    running: &Config,
    snat_ip: Ipv4Addr,
    ticks_per_s: u32,
    reconciler: &mut Reconciler,
    health: &mut Health,
) -> Result<Config> {
    let new = Config::load(&args.overrides()).context("re-reading the configuration")?;
    if new.maglev_table_size != running.maglev_table_size || new.max_flows != running.max_flows {
        anyhow::bail!(
            "maglev_table_size and max_flows size the pinned maps; changing them needs a restart"
        );
    }
    let snat_ip = new.snat_ip.unwrap_or(snat_ip);
    health.sync(&new)?;
    let changes = reconciler.apply(&desired(&new, snat_ip, health, ticks_per_s)?)?;
    info!("reloaded the configuration");
    log_changes(&changes);
    Ok(new)
}

async fn sync_vips(
    iface: &str,
    config: &Config,
    guards: &mut HashMap<Ipv4Addr, VipGuard>,
) -> Result<()> {
    let wanted: BTreeSet<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
    let gone: Vec<Ipv4Addr> = guards
        .keys()
        .filter(|v| !wanted.contains(v))
        .copied()
        .collect();
    for v in gone {
        if let Some(g) = guards.remove(&v) {
            g.release().await?;
        }
    }
    for v in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = guards.entry(v) {
            slot.insert(vip::assign(iface, v).await?);
        }
    }
    Ok(())
}

/// `--status-file`: every backend's state as JSON, replaced atomically
/// (write a temporary file, then rename) so readers never see half of it.
fn write_status(args: &Args, health: &Health) {
    let Some(path) = &args.status_file else {
        return;
    };
    let body = serde_json::json!({ "iface": args.iface, "backends": health.status() });
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let result = std::fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        warn!("writing the status file {}: {e}", path.display());
    }
}

fn log_changes(changes: &str) {
    for line in changes.lines() {
        info!("{line}");
    }
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
