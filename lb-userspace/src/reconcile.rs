//! The one writer of the service, backend, Maglev and config maps.
//!
//! [`Reconciler::apply`] writes the difference between what the maps hold
//! and a [`Desired`] state, in an order that keeps every intermediate state
//! valid for a packet: backends before the tables that name them, a new
//! table into the half the data plane is not reading before the one
//! SERVICES update that switches to it, the SNAT pool before the CONFIG
//! whose `snat_count` reaches it, CONFIG (with `active`) last.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Context, Result, bail};
use lb_common::{
    maglev::{MaglevBackend, build_table},
    service::{
        BACKEND_LOCAL, Backend, CONFIG_ACTIVE, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES,
        MAX_SNAT_IPS, Service, ServiceKey,
    },
};

use crate::{
    maps::{ControlPlane, half_of, maglev_slots, table_base},
    plan::{Desired, DesiredService},
};

struct ServiceState {
    id: u32,
    /// Which of the two halves the data plane reads.
    half: u32,
    /// The SERVICES entry's `table_size`: 0 while no backend takes flows.
    live_size: u32,
    /// What each half holds (as written, or as read when adopting), so a
    /// change writes only the slots that differ and freed backend ids are
    /// known to be unnamed before they are reused.
    tables: [Vec<u32>; 2],
}

/// Backend ids: stable per address, so a backend keeps its counters and its
/// table entries across reloads; a freed id is reused only when no table
/// half of any service names it any more. A MAGLEV half still in use (or
/// the previous one, which a packet that read SERVICES just before the
/// switch may still index) would otherwise send new flows to whichever
/// backend took the id, possibly one of another service. Free ids are
/// handed out oldest-freed first (katran's FIFO of free ids, KatranLb.cpp),
/// which keeps a freed id unused for as long as possible.
struct BackendIds {
    by_addr: HashMap<SocketAddrV4, u32>,
    free: VecDeque<u32>,
}

impl BackendIds {
    fn new(capacity: u32, used: &HashMap<SocketAddrV4, u32>) -> Self {
        let taken: HashSet<u32> = used.values().copied().collect();
        BackendIds {
            by_addr: used.clone(),
            free: (0..capacity).filter(|i| !taken.contains(i)).collect(),
        }
    }

    /// Releases the ids of addresses not in `keep`.
    fn release_except(&mut self, keep: &HashSet<SocketAddrV4>) {
        let gone: Vec<(SocketAddrV4, u32)> = self
            .by_addr
            .iter()
            .filter(|(a, _)| !keep.contains(a))
            .map(|(a, i)| (*a, *i))
            .collect();
        let mut gone_ids: Vec<u32> = gone.iter().map(|(_, i)| *i).collect();
        gone_ids.sort_unstable();
        for (addr, _) in gone {
            self.by_addr.remove(&addr);
        }
        self.free.extend(gone_ids);
    }

    /// The id of `addr`, allocating the oldest free id no table names.
    fn get_or_assign(&mut self, addr: SocketAddrV4, named: &HashSet<u32>) -> Result<u32> {
        if let Some(&id) = self.by_addr.get(&addr) {
            return Ok(id);
        }
        let Some(pos) = self.free.iter().position(|id| !named.contains(id)) else {
            bail!(
                "no backend id is free for {addr}: {} backends at most, and ids of removed backends \
                 wait until no Maglev table names them (the next change frees them)",
                MAX_BACKENDS
            );
        };
        let id = self.free.remove(pos).expect("position is in range");
        self.by_addr.insert(addr, id);
        Ok(id)
    }
}

pub struct Reconciler<M> {
    maps: M,
    /// Slots per table (the configured Maglev size, a prime).
    table_size: u32,
    services: BTreeMap<ServiceKey, ServiceState>,
    ids: BackendIds,
    /// BACKENDS as written (or read when adopting): unchanged entries are
    /// not written again.
    backends: HashMap<u32, Backend>,
    /// VIPS as written (or read when adopting).
    vips: HashSet<[u8; 4]>,
    /// SNAT_IPS as written (or read when adopting), every entry.
    snat_ips: Vec<[u8; 4]>,
    /// The agent's last heartbeat (jiffies), written with every CONFIG.
    heartbeat: u64,
    applied: Option<Desired>,
}

impl<M: ControlPlane> Reconciler<M> {
    /// Takes over the maps, learning ids, active halves and the tables
    /// themselves from what a previous agent left in them (so a restart
    /// moves no flow and reuses no id a live table names).
    pub fn adopt(maps: M, table_size: u32) -> Result<Self> {
        Self::adopt_with(maps, table_size, MAX_BACKENDS)
    }

    /// [`Reconciler::adopt`] with room for `capacity` backend ids (tests).
    pub fn adopt_with(maps: M, table_size: u32, capacity: u32) -> Result<Self> {
        let slots = maps.slots();
        if slots < maglev_slots(table_size) {
            bail!(
                "the pinned MAGLEV map holds {slots} slots, too few for Maglev tables of {table_size}; \
                 remove the pin directory (the data plane restarts empty) or use the previous table size"
            );
        }
        let mut services = BTreeMap::new();
        for (key, svc) in maps.services()? {
            let read_half = |half: u32| -> Result<Vec<u32>> {
                let base = table_base(svc.id, half, table_size);
                (base..base + table_size).map(|i| maps.slot(i)).collect()
            };
            services.insert(
                key,
                ServiceState {
                    id: svc.id,
                    half: half_of(svc.table_base, table_size),
                    live_size: svc.table_size,
                    tables: [read_half(0)?, read_half(1)?],
                },
            );
        }
        let mut used = HashMap::new();
        let mut written = HashMap::new();
        for (id, b) in maps.backends()?.iter().enumerate() {
            if b.ip != [0; 4] && (id as u32) < capacity {
                written.insert(id as u32, *b);
                used.insert(
                    SocketAddrV4::new(Ipv4Addr::from(b.ip), u16::from_be_bytes(b.port)),
                    id as u32,
                );
            }
        }
        let vips = maps.vips()?.into_iter().collect();
        let snat_ips = maps.snat_ips()?;
        let heartbeat = maps.config()?.heartbeat;
        Ok(Reconciler {
            maps,
            table_size,
            services,
            ids: BackendIds::new(capacity, &used),
            backends: written,
            vips,
            snat_ips,
            heartbeat,
            applied: None,
        })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    #[cfg(test)]
    pub fn maps_mut_for_test(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Writes the difference between what the maps hold and `desired`
    /// (its `vips` are not the maps' business). Returns a human summary of
    /// what changed (empty if nothing did).
    pub fn apply(&mut self, desired: &Desired) -> Result<String> {
        if self.applied.as_ref() == Some(desired) {
            return Ok(String::new());
        }
        let mut summary = String::new();

        // Backends first, so every id a new table names is already written.
        // An id is taken only if no half of any table names it, so writing
        // BACKENDS[id] here changes nothing a packet can reach yet.
        let wanted: HashSet<SocketAddrV4> = desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr))
            .collect();
        self.ids.release_except(&wanted);
        let named = self.named_ids();
        for svc in &desired.services {
            for b in &svc.backends {
                let id = self.ids.get_or_assign(b.addr, &named)?;
                let value = Backend {
                    ip: b.addr.ip().octets(),
                    port: b.addr.port().to_be_bytes(),
                    flags: if b.local { BACKEND_LOCAL } else { 0 },
                    _pad: 0,
                };
                if self.backends.get(&id) == Some(&value) {
                    continue;
                }
                self.maps
                    .set_backend(id, value)
                    .with_context(|| format!("writing backend {}", b.addr))?;
                self.backends.insert(id, value);
            }
        }

        for svc in &desired.services {
            let list: Vec<String> = svc
                .backends
                .iter()
                .map(|b| format!("{}@{}", b.name, b.weight))
                .collect();
            if let Some(moved) = self.apply_service(svc)? {
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
            self.maps.remove_service(&key)?;
            self.services.remove(&key);
            let _ = writeln!(
                summary,
                "service {}:{} removed",
                Ipv4Addr::from(key.vip),
                u16::from_be_bytes(key.port)
            );
        }

        // Every service VIP, master or not: ARP fencing protects them all.
        let vips: HashSet<[u8; 4]> = desired.services.iter().map(|s| s.key.vip).collect();
        for vip in vips.difference(&self.vips) {
            self.maps.set_vip(*vip)?;
        }
        for vip in self.vips.difference(&vips) {
            self.maps.remove_vip(vip)?;
        }
        self.vips = vips;

        if self.apply_snat_ips(&desired.snat_ips)? {
            let list: Vec<String> = desired.snat_ips.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(summary, "SNAT addresses: {}", list.join(", "));
        }

        let was_active = self.applied.as_ref().map(|d| d.active);
        self.maps.set_config(self.dataplane_config(desired))?;
        if was_active != Some(desired.active) {
            let _ = writeln!(
                summary,
                "data plane {}",
                if desired.active {
                    "active: NATs VIP traffic"
                } else {
                    "fenced: passes VIP traffic untouched"
                }
            );
        }
        self.applied = Some(desired.clone());
        Ok(summary)
    }

    /// Writes the entries of SNAT_IPS that differ from `pool`; CONFIG's
    /// `snat_count`, written after, makes new ones reachable. Entries past
    /// the pool are left as they are, not cleared: a packet that read the
    /// previous CONFIG (with a larger count) may still index them, and an
    /// address of the old pool serves it better than 0.0.0.0. Returns
    /// whether the pool changed.
    fn apply_snat_ips(&mut self, pool: &[Ipv4Addr]) -> Result<bool> {
        if pool.is_empty() || pool.len() > MAX_SNAT_IPS as usize {
            bail!(
                "{} SNAT addresses: at least 1 and at most {MAX_SNAT_IPS} are supported",
                pool.len()
            );
        }
        let before = self.applied.as_ref().map(|d| d.snat_ips.as_slice());
        for (i, ip) in pool.iter().enumerate() {
            let ip = ip.octets();
            if self.snat_ips.get(i) == Some(&ip) {
                continue;
            }
            self.maps.set_snat_ip(i as u32, ip)?;
            if let Some(slot) = self.snat_ips.get_mut(i) {
                *slot = ip;
            }
        }
        Ok(before != Some(pool))
    }

    fn dataplane_config(&self, desired: &Desired) -> DataplaneConfig {
        DataplaneConfig {
            snat_ip: desired.snat_ips.first().map_or([0; 4], |ip| ip.octets()),
            nat_port_min: desired.nat_ports.0,
            nat_port_max: desired.nat_ports.1,
            flags: if desired.active { CONFIG_ACTIVE } else { 0 },
            ticks_per_s: desired.ticks_per_s,
            heartbeat: self.heartbeat,
            fence_after: desired.fence_after,
            snat_count: desired.snat_ips.len() as u32,
        }
    }

    /// The agent is alive at jiffies `now`: refreshes CONFIG's heartbeat
    /// (the rest as last applied). Before the first apply it only
    /// remembers it.
    pub fn heartbeat(&mut self, now: u64) -> Result<()> {
        self.heartbeat = now;
        let Some(desired) = &self.applied else {
            return Ok(());
        };
        let config = self.dataplane_config(desired);
        self.maps.set_config(config)
    }

    /// Clears `active` in CONFIG and nothing else: the data plane stops
    /// NATing VIP traffic (what a node that lost its agent's judgement must
    /// do), established flows' replies still find their way back.
    pub fn fence(&mut self) -> Result<()> {
        let mut config = self.maps.config()?;
        config.flags &= !CONFIG_ACTIVE;
        self.maps.set_config(config)?;
        if let Some(d) = &mut self.applied {
            d.active = false;
        }
        Ok(())
    }

    /// Every backend id some half of some service's table names.
    fn named_ids(&self) -> HashSet<u32> {
        self.services
            .values()
            .flat_map(|s| s.tables.iter().flatten().copied())
            .collect()
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
                id: self.ids.by_addr[&b.addr],
            })
            .collect();
        let table = build_table(&members, self.table_size);
        let id = match self.services.get(&svc.key) {
            Some(s) => s.id,
            None => self.free_service_id()?,
        };
        let size = self.table_size;
        let entry_exists = self.applied_has(&svc.key);
        let state = self.services.entry(svc.key).or_insert(ServiceState {
            id,
            half: 1,
            live_size: 0,
            tables: [Vec::new(), Vec::new()],
        });
        let current = &state.tables[state.half as usize];
        if table.is_empty() {
            // No backend takes new flows: the entry says so with size 0 and
            // keeps pointing at its half, whose ids stay named until a
            // later table overwrites it.
            if state.live_size == 0 && entry_exists {
                return Ok(None);
            }
            let value = Service {
                id,
                table_base: table_base(id, state.half, size),
                table_size: 0,
                flags: 0,
            };
            self.maps
                .set_service(svc.key, value)
                .with_context(|| format!("writing service {}", svc.name))?;
            let moved = state.live_size as usize;
            state.live_size = 0;
            return Ok(Some(moved));
        }
        if state.live_size == size && *current == table {
            return Ok(None);
        }
        let moved = if state.live_size == size {
            current.iter().zip(&table).filter(|(a, b)| a != b).count()
        } else {
            table.len()
        };

        // Write the half the data plane is not reading, then switch.
        let next = 1 - state.half;
        let base = table_base(id, next, size);
        let stale = &state.tables[next as usize];
        for (i, &backend) in table.iter().enumerate() {
            if stale.get(i) != Some(&backend) {
                self.maps
                    .set_slot(base + i as u32, backend)
                    .context("writing a Maglev slot")?;
            }
        }
        let value = Service {
            id,
            table_base: base,
            table_size: size,
            flags: 0,
        };
        self.maps
            .set_service(svc.key, value)
            .with_context(|| format!("writing service {}", svc.name))?;
        state.tables[next as usize] = table;
        state.half = next;
        state.live_size = size;
        Ok(Some(moved))
    }

    /// Whether the last applied state had the service (so an entry exists).
    fn applied_has(&self, key: &ServiceKey) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|d| d.services.iter().any(|s| s.key == *key))
    }

    fn free_service_id(&self) -> Result<u32> {
        let used: HashSet<u32> = self.services.values().map(|s| s.id).collect();
        (0..MAX_SERVICES)
            .find(|i| !used.contains(i))
            .context("more than MAX_SERVICES services")
    }

    pub fn backend_id_of(&self, addr: SocketAddrV4) -> Option<u32> {
        self.ids.by_addr.get(&addr).copied()
    }

    /// The service's id (its SERVICE_STATS index), once the maps hold it.
    pub fn service_id_of(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key).map(|s| s.id)
    }

    /// Backend id → name, for reports.
    pub fn backend_names(&self) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        if let Some(d) = &self.applied {
            for b in d.services.iter().flat_map(|s| &s.backends) {
                if let Some(id) = self.backend_id_of(b.addr) {
                    names.insert(id, b.name.clone());
                }
            }
        }
        names
    }
}
