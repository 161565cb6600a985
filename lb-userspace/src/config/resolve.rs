//! From the values read (flags or file) to a [`Config`]: the overrides of
//! the command line, then the checks that need the whole configuration
//! (duplicates, limits, cross-references) and the defaults that depend on
//! it.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::Result;
use lb_common::{
    maglev::{ENTRIES_PER_BACKEND, MAX_TABLE_SIZE, TABLE_SIZES},
    maps::{DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_FLOWS},
    service::{DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_IPS},
};

use super::{
    load::Overrides,
    model::{BackendConfig, CheckConfig, Config, NatPorts, Proto, ServiceConfig, Timeouts},
    source::{Loc, Source},
    values::{check_timing, default_timeout},
    vrrp::{
        DEFAULT_TRACK_WEIGHT, DraftVrrp, TrackService, VrrpConfig, from_flags as vrrp_from_flags,
    },
};

/// Parsed values, before the checks that need all of them.
pub(super) struct Draft {
    pub(super) services: Vec<DraftService>,
    pub(super) snat_ips: SnatIps,
    pub(super) nat_ports: NatPorts,
    pub(super) max_flows: u32,
    pub(super) max_embryos: u32,
    pub(super) keep_dataplane: bool,
    pub(super) assign_vip: bool,
    pub(super) maglev_table_size: Option<(u32, Loc)>,
    pub(super) timeouts: Timeouts,
    /// Each instance, where it was written, and the services its `track`
    /// names (checked once the services are known).
    pub(super) vrrp: Vec<DraftVrrp>,
}

/// The SNAT addresses as written (none: the interface's), and the key or
/// flag that gave them, for messages.
#[derive(Default)]
pub(super) struct SnatIps {
    pub(super) key: &'static str,
    pub(super) ips: Vec<(Ipv4Addr, Loc)>,
}

pub(super) struct DraftService {
    pub(super) name: Option<(String, Loc)>,
    pub(super) vip: Ipv4Addr,
    pub(super) port: u16,
    pub(super) proto: Proto,
    /// The service's VIP, blamed for what is wrong with the service.
    pub(super) loc: Loc,
    pub(super) backends: Vec<DraftBackend>,
    pub(super) check: CheckConfig,
}

pub(super) struct DraftBackend {
    pub(super) addr: SocketAddrV4,
    pub(super) weight: u32,
    pub(super) name: Option<String>,
    pub(super) loc: Loc,
}

/// The check of the `--vip` service. clap checked each flag; what is left
/// is how they fit together.
fn check_from_flags(flags: &Overrides) -> Result<CheckConfig> {
    let default = CheckConfig::default_for(flags.port, flags.proto);
    let interval = flags.check_interval.unwrap_or(default.interval);
    let timeout = flags
        .check_timeout
        .unwrap_or_else(|| default_timeout(interval));
    Source::CommandLine.check(&Loc::CommandLine, check_timing(interval, timeout))?;
    Ok(CheckConfig {
        kind: flags.check.clone().unwrap_or(default.kind),
        interval,
        timeout,
        rise: flags.rise.unwrap_or(default.rise),
        fall: flags.fall.unwrap_or(default.fall),
        on_down: flags.on_down.unwrap_or(default.on_down),
    })
}

impl Draft {
    pub(super) fn from_flags(flags: &Overrides) -> Result<Draft> {
        let src = Source::CommandLine;
        let vip = flags.vip.ok_or_else(|| {
            src.error(
                &Loc::CommandLine,
                "give --vip and --backend, or --config FILE",
            )
        })?;
        let backends = flags
            .backends
            .iter()
            .map(|b| DraftBackend {
                addr: b.addr,
                weight: b.weight,
                name: None,
                loc: Loc::CommandLine,
            })
            .collect();
        let mut draft = Draft {
            services: vec![DraftService {
                name: None,
                vip,
                port: flags.port,
                proto: flags.proto,
                loc: Loc::CommandLine,
                backends,
                check: check_from_flags(flags)?,
            }],
            snat_ips: SnatIps::default(),
            nat_ports: NatPorts::Auto,
            max_flows: DEFAULT_MAX_FLOWS,
            max_embryos: DEFAULT_MAX_EMBRYOS,
            keep_dataplane: false,
            assign_vip: true,
            maglev_table_size: None,
            timeouts: Timeouts::default(),
            vrrp: Vec::new(),
        };
        draft.override_with(flags)?;
        Ok(draft)
    }

    /// Flags given on the command line win over the file.
    pub(super) fn override_with(&mut self, flags: &Overrides) -> Result<()> {
        if !flags.snat_ips.is_empty() {
            self.snat_ips = SnatIps {
                key: "snat_ip",
                ips: flags
                    .snat_ips
                    .iter()
                    .map(|ip| (*ip, Loc::CommandLine))
                    .collect(),
            };
        }
        if let Some(ports) = flags.nat_ports {
            self.nat_ports = ports;
        }
        if let Some(n) = flags.max_flows {
            self.max_flows = n;
        }
        if let Some(n) = flags.max_embryos {
            self.max_embryos = n;
        }
        if let Some(keep) = flags.keep_dataplane {
            self.keep_dataplane = keep;
        }
        if let Some(assign) = flags.assign_vip {
            self.assign_vip = assign;
        }
        // `--vrid` on the command line: one instance of the flags, which
        // replaces the file's (the flags' instance tracks every service).
        if let Some(v) = &flags.vrrp {
            self.vrrp = vec![DraftVrrp {
                config: vrrp_from_flags(v)?,
                loc: Loc::CommandLine,
                tracks: Vec::new(),
            }];
        }
        Ok(())
    }

    /// The checks that need the whole configuration, then the defaults
    /// that depend on it.
    pub(super) fn finish(self, src: &Source) -> Result<Config> {
        if self.services.is_empty() {
            return Err(src.error(
                &Loc::Whole,
                "no services: add a [[service]] with a vip and at least one [[service.backend]]",
            ));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err(src.error(
                &Loc::Whole,
                format!(
                    "{} services; at most {MAX_SERVICES} are supported",
                    self.services.len()
                ),
            ));
        }
        let vips: HashSet<Ipv4Addr> = self.services.iter().map(|s| s.vip).collect();

        let mut services: Vec<ServiceConfig> = Vec::with_capacity(self.services.len());
        let mut seen_keys: HashMap<(Ipv4Addr, u16, Proto), String> = HashMap::new();
        let mut seen_names: HashSet<String> = HashSet::new();
        // Where each service was written, for the checks below the loop.
        let mut locs = Vec::with_capacity(self.services.len());
        for s in self.services {
            let (name, name_loc) = s
                .name
                .unwrap_or_else(|| (format!("{}:{}/{}", s.vip, s.port, s.proto), s.loc.clone()));
            if let Some(first) = seen_keys.insert((s.vip, s.port, s.proto), name.clone()) {
                return Err(src.error(
                    &s.loc,
                    format!(
                        "service {}:{}/{} is defined twice (\"{first}\" and \"{name}\")",
                        s.vip, s.port, s.proto
                    ),
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(src.error(&name_loc, format!("service name \"{name}\" is used twice")));
            }
            if s.backends.is_empty() {
                return Err(src.error(&s.loc, format!("service \"{name}\" has no backends")));
            }
            let mut seen_addrs = HashSet::new();
            for b in &s.backends {
                if !seen_addrs.insert(b.addr) {
                    return Err(src.error(
                        &b.loc,
                        format!("backend \"{}\" appears twice in service \"{name}\"", b.addr),
                    ));
                }
                if vips.contains(b.addr.ip()) {
                    return Err(src.error(
                        &b.loc,
                        format!(
                            "backend \"{}\" of service \"{name}\" is on a VIP of this balancer",
                            b.addr
                        ),
                    ));
                }
            }
            if s.backends.iter().all(|b| b.weight == 0) {
                return Err(src.error(
                    &s.loc,
                    format!(
                        "every backend of service \"{name}\" has weight 0; at least one must be above 0"
                    ),
                ));
            }
            locs.push(s.loc);
            services.push(ServiceConfig {
                name,
                vip: s.vip,
                port: s.port,
                proto: s.proto,
                backends: s
                    .backends
                    .into_iter()
                    .map(|b| BackendConfig {
                        name: b.name.unwrap_or_else(|| b.addr.to_string()),
                        addr: b.addr,
                        weight: b.weight,
                    })
                    .collect(),
                check: s.check,
            });
        }

        let total: usize = services.iter().map(|s| s.backends.len()).sum();
        if total > MAX_BACKENDS as usize {
            return Err(src.error(
                &Loc::Whole,
                format!("{total} backends in all; at most {MAX_BACKENDS} are supported"),
            ));
        }

        let snat_ips = check_snat_ips(src, &self.snat_ips, &services)?;

        // Maglev spreads a service over its table evenly only with enough
        // slots per backend (lb_common::maglev::ENTRIES_PER_BACKEND).
        let (largest, largest_loc) = services
            .iter()
            .zip(&locs)
            .max_by_key(|(s, _)| s.backends.len())
            .expect("services is not empty");
        let need = largest.backends.len() * ENTRIES_PER_BACKEND;
        let fits = TABLE_SIZES.iter().copied().find(|&t| t as usize >= need);
        let table_size = match (self.maglev_table_size, fits) {
            (Some((size, _)), _) if size as usize >= need => size,
            (_, None) => {
                return Err(src.error(
                    largest_loc,
                    format!(
                        "service \"{}\" has {} backends; at most {} fit in one service",
                        largest.name,
                        largest.backends.len(),
                        MAX_TABLE_SIZE as usize / ENTRIES_PER_BACKEND
                    ),
                ));
            }
            (Some((size, loc)), Some(fits)) => {
                return Err(src.error(
                    &loc,
                    format!(
                        "maglev_table_size {size} is too small for service \"{}\" with {} backends: it needs at least {need} slots; use maglev_table_size = {fits} or larger",
                        largest.name,
                        largest.backends.len()
                    ),
                ));
            }
            (None, Some(fits)) => DEFAULT_TABLE_SIZE.max(fits),
        };

        let vrrp = finish_vrrp(src, self.vrrp, &services)?;

        Ok(Config {
            vrrp,
            services,
            snat_ips,
            nat_ports: self.nat_ports,
            max_flows: self.max_flows,
            max_embryos: self.max_embryos,
            keep_dataplane: self.keep_dataplane,
            assign_vip: self.assign_vip,
            maglev_table_size: table_size,
            timeouts: self.timeouts,
        })
    }
}

/// The SNAT pool: no service's VIP in it (a VIP's replies and NATed
/// packets would be told apart by port alone, and the VIP moves), no
/// address twice (the data plane would count its ports twice), at most
/// [`MAX_SNAT_IPS`] (the size of SNAT_IPS).
fn check_snat_ips(
    src: &Source,
    pool: &SnatIps,
    services: &[ServiceConfig],
) -> Result<Vec<Ipv4Addr>> {
    let key = pool.key;
    if let Some((_, loc)) = pool.ips.get(MAX_SNAT_IPS as usize) {
        return Err(src.error(
            loc,
            format!(
                "{key}: {} addresses; at most {MAX_SNAT_IPS} are supported",
                pool.ips.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (ip, loc) in &pool.ips {
        if let Some(s) = services.iter().find(|s| s.vip == *ip) {
            return Err(src.error(
                loc,
                format!(
                    "{key} {ip} is the VIP of service \"{}\"; NATed packets need an address of their own",
                    s.name
                ),
            ));
        }
        if !seen.insert(*ip) {
            return Err(src.error(loc, format!("{key} {ip} is given twice")));
        }
    }
    Ok(pool.ips.iter().map(|(ip, _)| *ip).collect())
}

/// The instances, checked against each other and the services: VIPs
/// default to every service's, tracked services must exist (an instance of
/// the flags tracks them all), router ids are unique on the interface, a
/// service VIP belongs to exactly one instance.
fn finish_vrrp(
    src: &Source,
    drafts: Vec<DraftVrrp>,
    services: &[ServiceConfig],
) -> Result<Vec<VrrpConfig>> {
    let mut out: Vec<VrrpConfig> = Vec::with_capacity(drafts.len());
    let from_flags = drafts.iter().any(|d| matches!(d.loc, Loc::CommandLine));
    for DraftVrrp {
        config: mut v,
        loc,
        tracks: refs,
    } in drafts
    {
        if let Some(other) = out.iter().find(|o| o.vrid == v.vrid) {
            return Err(src.error(
                &loc,
                format!(
                    "virtual_router_id {} is used by \"{}\" and \"{}\"",
                    v.vrid, other.name, v.name
                ),
            ));
        }
        if out.iter().any(|o| o.name == v.name) {
            return Err(src.error(&loc, format!("vrrp name \"{}\" is used twice", v.name)));
        }
        if v.vips.is_empty() {
            v.vips = services.iter().map(|s| s.vip).collect();
            v.vips.dedup();
        }
        for (name, at) in &refs {
            if !services.iter().any(|s| &s.name == name) {
                return Err(src.error(
                    at,
                    format!(
                        "vrrp \"{}\" tracks service \"{name}\", which is not defined",
                        v.name
                    ),
                ));
            }
        }
        if from_flags {
            v.track.services = services
                .iter()
                .map(|s| TrackService {
                    service: s.name.clone(),
                    min_up: 1,
                    weight: DEFAULT_TRACK_WEIGHT,
                })
                .collect();
        }
        if let Some(p) = v.unicast_peers.iter().find(|p| v.vips.contains(p)) {
            return Err(src.error(
                &loc,
                format!(
                    "vrrp \"{}\": unicast peer {p} is one of its own VIPs",
                    v.name
                ),
            ));
        }
        out.push(v);
    }
    if !out.is_empty() {
        for s in services {
            let owners = out.iter().filter(|v| v.vips.contains(&s.vip)).count();
            if owners != 1 {
                return Err(src.error(
                    &Loc::Whole,
                    format!(
                        "VIP {} of service \"{}\" is in {owners} vrrp instances' virtual_ipaddress; \
                         with VRRP each VIP needs exactly one",
                        s.vip, s.name
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{FILE, assert_has, service, toml_err};

    #[test]
    fn maglev_table_must_fit_the_largest_service() {
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:6443")).collect();
        let three: Vec<&str> = three.iter().map(String::as_str).collect();
        let text = format!(
            "maglev_table_size = 251\n{}{}",
            service("10.0.0.100", &["10.0.0.1:6443"]),
            service("10.0.0.101", &three).replace("vip =", "name = \"big\"\nvip =")
        );
        assert_has(
            &toml_err(&text),
            &format!(
                "{FILE}:1: maglev_table_size 251 is too small for service \"big\" with 3 backends: it needs at least 300 slots; use maglev_table_size = 509 or larger"
            ),
        );
        // Without a size, one is chosen that fits.
        let many: Vec<String> = (0..200)
            .map(|i| format!("10.0.{}.{}:6443", i / 250, i % 250 + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let c = Config::from_toml_str(&service("10.1.0.100", &many), FILE).unwrap();
        assert_eq!(c.maglev_table_size, 32749);
        // Past 655 backends no table is large enough.
        let huge: Vec<String> = (0..656)
            .map(|i| format!("10.0.{}.{}:6443", i / 250, i % 250 + 1))
            .collect();
        let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
        assert_has(
            &toml_err(&service("10.1.0.100", &huge)),
            &format!(
                "{FILE}:2: service \"10.1.0.100:6443/tcp\" has 656 backends; at most 655 fit in one service"
            ),
        );
    }

    #[test]
    fn service_and_backend_limits() {
        let text: String = (0..=MAX_SERVICES)
            .map(|i| service(&format!("10.1.0.{}", i + 1), &["10.0.0.1:6443"]))
            .collect();
        assert_has(
            &toml_err(&text),
            &format!("config error: {FILE}: 33 services; at most {MAX_SERVICES} are supported"),
        );
        // 32 services of 129 backends: 4128 in all.
        let backends: Vec<String> = (0..129).map(|i| format!("10.0.0.{}:6443", i + 1)).collect();
        let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
        let text: String = (0..MAX_SERVICES)
            .map(|i| service(&format!("10.1.0.{}", i + 1), &backends))
            .collect();
        assert_has(
            &toml_err(&text),
            &format!(
                "config error: {FILE}: 4128 backends in all; at most {MAX_BACKENDS} are supported"
            ),
        );
    }
}
