//! The one writer of the service, backend, Maglev and config maps.
//!
//! Every source of change (config reload, later health and VRRP) produces a
//! [`Desired`] state; [`Reconciler::apply`] writes the difference. Tables
//! are double-buffered per service: the new one is written into the region
//! the data plane is not reading, then one SERVICES update switches to it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{
    maglev::{MaglevBackend, build_table},
    service::{
        BACKEND_LOCAL, Backend, CONFIG_ACTIVE, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES,
        Service, ServiceKey,
    },
};

/// What the data plane should do, computed from config (and later health
/// and VRRP role) by the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub snat_ip: Ipv4Addr,
    pub nat_ports: (u16, u16),
    /// This node NATs VIP traffic (VRRP master; always, until VRRP exists).
    pub active: bool,
    /// The data plane clock's rate (lb_common::clock).
    pub ticks_per_s: u32,
    pub services: Vec<DesiredService>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredService {
    pub name: String,
    pub key: ServiceKey,
    pub backends: Vec<DesiredBackend>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredBackend {
    pub name: String,
    pub addr: SocketAddrV4,
    /// 0: takes no new flows (drained or down); existing flows go on.
    pub weight: u32,
    /// An address of this node (stacked master): deliver locally.
    pub local: bool,
}

pub struct ControlMaps {
    pub config: Array<MapData, DataplaneConfig>,
    pub services: BpfHashMap<MapData, ServiceKey, Service>,
    pub backends: Array<MapData, Backend>,
    pub maglev: Array<MapData, u32>,
}

struct ServiceState {
    id: u32,
    /// Which of the two regions the data plane reads.
    half: u32,
    /// What each region holds, so a change writes only the slots that differ.
    tables: [Option<Vec<u32>>; 2],
}

pub struct Reconciler {
    maps: ControlMaps,
    /// Slots per table (the configured Maglev size, a prime).
    table_size: u32,
    services: BTreeMap<ServiceKey, ServiceState>,
    /// Backend ids by address; stable across reloads so a backend keeps its
    /// counters and its table entries.
    backend_ids: HashMap<SocketAddrV4, u32>,
    applied: Option<Desired>,
}

impl Reconciler {
    /// Takes over the maps, learning ids and active regions from what a
    /// previous agent left in them (so a restart moves no flow).
    pub fn adopt(maps: ControlMaps, table_size: u32) -> Result<Self> {
        let slots = maps.maglev.len();
        if slots < MAX_SERVICES * 2 * table_size {
            bail!(
                "the pinned MAGLEV map holds {slots} slots, too few for Maglev tables of {table_size}; \
                 remove the pin directory (the data plane restarts empty) or use the previous table size"
            );
        }
        let mut services = BTreeMap::new();
        for item in maps.services.iter() {
            let (key, svc) = item?;
            let half = (svc.table_base / table_size) % 2;
            services.insert(
                key,
                ServiceState {
                    id: svc.id,
                    half,
                    tables: [None, None],
                },
            );
        }
        let mut backend_ids = HashMap::new();
        for (id, b) in maps.backends.iter().enumerate() {
            let b = b?;
            if b.ip != [0; 4] {
                backend_ids.insert(
                    SocketAddrV4::new(Ipv4Addr::from(b.ip), u16::from_be_bytes(b.port)),
                    id as u32,
                );
            }
        }
        Ok(Reconciler {
            maps,
            table_size,
            services,
            backend_ids,
            applied: None,
        })
    }

    /// Writes the difference between what the maps hold and `desired`.
    /// Returns a human summary of what changed (empty if nothing did).
    pub fn apply(&mut self, desired: &Desired) -> Result<String> {
        if self.applied.as_ref() == Some(desired) {
            return Ok(String::new());
        }
        let mut summary = String::new();

        // Backends first, so every id a new table names is already written.
        let wanted: HashSet<SocketAddrV4> = desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr))
            .collect();
        self.backend_ids.retain(|addr, _| wanted.contains(addr));
        for svc in &desired.services {
            for b in &svc.backends {
                let id = self.backend_id(b.addr)?;
                let value = Backend {
                    ip: b.addr.ip().octets(),
                    port: b.addr.port().to_be_bytes(),
                    flags: if b.local { BACKEND_LOCAL } else { 0 },
                    _pad: 0,
                };
                self.maps
                    .backends
                    .set(id, value, 0)
                    .with_context(|| format!("writing backend {}", b.addr))?;
            }
        }

        for svc in &desired.services {
            let moved = self.apply_service(svc)?;
            let list: Vec<String> = svc
                .backends
                .iter()
                .map(|b| format!("{}@{}", b.name, b.weight))
                .collect();
            if let Some(moved) = moved {
                let _ = writeln!(
                    summary,
                    "service {}: backends [{}], {moved} table slots changed",
                    svc.name,
                    list.join(", ")
                );
            }
        }
        let keep: HashSet<ServiceKey> = desired.services.iter().map(|s| s.key).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        for key in gone {
            self.maps
                .services
                .remove(&key)
                .context("removing a service")?;
            self.services.remove(&key);
            let _ = writeln!(
                summary,
                "service {}:{} removed",
                Ipv4Addr::from(key.vip),
                u16::from_be_bytes(key.port)
            );
        }

        let config = DataplaneConfig {
            snat_ip: desired.snat_ip.octets(),
            nat_port_min: desired.nat_ports.0,
            nat_port_max: desired.nat_ports.1,
            flags: if desired.active { CONFIG_ACTIVE } else { 0 },
            ticks_per_s: desired.ticks_per_s,
        };
        self.maps
            .config
            .set(0, config, 0)
            .context("writing CONFIG")?;
        self.applied = Some(desired.clone());
        Ok(summary)
    }

    /// Builds the service's table and switches to it; returns how many
    /// slots changed, or None if nothing did.
    fn apply_service(&mut self, svc: &DesiredService) -> Result<Option<usize>> {
        let members: Vec<MaglevBackend> = svc
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| MaglevBackend {
                key: MaglevBackend::ipv4_key(b.addr.ip().octets(), b.addr.port().to_be_bytes()),
                weight: b.weight,
                id: self.backend_ids[&b.addr],
            })
            .collect();
        let table = build_table(&members, self.table_size);
        let id = match self.services.get(&svc.key) {
            Some(s) => s.id,
            None => self.free_service_id()?,
        };
        let size = self.table_size;
        let state = self.services.entry(svc.key).or_insert(ServiceState {
            id,
            half: 1,
            tables: [None, None],
        });
        let current = &state.tables[state.half as usize];
        if current.as_ref() == Some(&table) {
            return Ok(None);
        }
        let moved = match current {
            Some(old) => old.iter().zip(&table).filter(|(a, b)| a != b).count(),
            None => table.len(),
        };

        // Write the region the data plane is not reading, then switch.
        let next = 1 - state.half;
        let base = id * 2 * size + next * size;
        let stale = state.tables[next as usize].take();
        for (i, &backend) in table.iter().enumerate() {
            if stale.as_ref().and_then(|t| t.get(i)) != Some(&backend) {
                self.maps
                    .maglev
                    .set(base + i as u32, backend, 0)
                    .context("writing a Maglev slot")?;
            }
        }
        let value = Service {
            id,
            table_base: base,
            table_size: if table.is_empty() { 0 } else { size },
            flags: 0,
        };
        self.maps
            .services
            .insert(svc.key, value, 0)
            .with_context(|| format!("writing service {}", svc.name))?;
        state.tables[next as usize] = Some(table);
        state.half = next;
        Ok(Some(moved))
    }

    fn backend_id(&mut self, addr: SocketAddrV4) -> Result<u32> {
        if let Some(&id) = self.backend_ids.get(&addr) {
            return Ok(id);
        }
        let used: HashSet<u32> = self.backend_ids.values().copied().collect();
        let id = (0..MAX_BACKENDS)
            .find(|i| !used.contains(i))
            .context("more than MAX_BACKENDS backends")?;
        self.backend_ids.insert(addr, id);
        Ok(id)
    }

    fn free_service_id(&self) -> Result<u32> {
        let used: HashSet<u32> = self.services.values().map(|s| s.id).collect();
        (0..MAX_SERVICES)
            .find(|i| !used.contains(i))
            .context("more than MAX_SERVICES services")
    }

    pub fn backend_id_of(&self, addr: SocketAddrV4) -> Option<u32> {
        self.backend_ids.get(&addr).copied()
    }

    /// Backend id → name, for reports.
    pub fn backend_names(&self) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        if let Some(d) = &self.applied {
            for b in d.services.iter().flat_map(|s| &s.backends) {
                if let Some(&id) = self.backend_ids.get(&b.addr) {
                    names.insert(id, b.name.clone());
                }
            }
        }
        names
    }
}
