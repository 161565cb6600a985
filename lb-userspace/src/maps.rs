//! The control maps' layout, written down once, and the two places it can
//! live: the kernel's maps ([`ControlMaps`]) or memory ([`MemMaps`], for the
//! reconciler's tests, as katran's `testing=true` runs its real control
//! plane against test maps).
//!
//! MAGLEV holds every service's two tables back to back: service `id` owns
//! slots `[id·2·size, (id·2+2)·size)`, half `h` starting at
//! `(id·2 + h)·size`. The data plane reads the half its SERVICES entry
//! points at (`table_base`); the reconciler writes the other and then flips
//! the entry, so a packet sees one whole table or the other.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
};
use lb_common::{
    maps as names,
    service::{Backend, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES, Service, ServiceKey},
};

/// Slots MAGLEV needs for tables of `table_size`: two per service.
pub fn maglev_slots(table_size: u32) -> u32 {
    MAX_SERVICES * 2 * table_size
}

/// First MAGLEV slot of half `half` (0 or 1) of service `id`'s tables.
pub fn table_base(id: u32, half: u32, table_size: u32) -> u32 {
    (id * 2 + half) * table_size
}

/// Which half a SERVICES entry's `table_base` points at.
pub fn half_of(table_base: u32, table_size: u32) -> u32 {
    (table_base / table_size) % 2
}

/// What the reconciler needs of the control maps: single-entry writes (each
/// one atomic for the data plane) and the reads that adopting a running
/// data plane takes.
pub trait ControlPlane {
    fn set_config(&mut self, config: DataplaneConfig) -> Result<()>;
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    fn set_slot(&mut self, slot: u32, backend: u32) -> Result<()>;
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;

    /// MAGLEV's size in slots.
    fn slots(&self) -> u32;
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>>;
    /// BACKENDS, every id (an all-zero entry is unused).
    fn backends(&self) -> Result<Vec<Backend>>;
    fn slot(&self, slot: u32) -> Result<u32>;
    fn config(&self) -> Result<DataplaneConfig>;
}

/// The kernel's control maps, typed.
pub struct ControlMaps {
    pub config: Array<MapData, DataplaneConfig>,
    pub services: BpfHashMap<MapData, ServiceKey, Service>,
    pub backends: Array<MapData, Backend>,
    pub maglev: Array<MapData, u32>,
}

impl ControlMaps {
    /// Takes the control maps out of a loaded xdplb object (the agent's, or
    /// one a test or the benchmark loaded itself).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(ControlMaps {
            config: take(ebpf, names::CONFIG)?,
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            maglev: take(ebpf, names::MAGLEV)?,
        })
    }
}

/// Moves map `name` out of `ebpf` as the typed handle `T`.
pub fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("no map {name} in the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl ControlPlane for ControlMaps {
    fn set_config(&mut self, config: DataplaneConfig) -> Result<()> {
        self.config.set(0, config, 0).context("writing CONFIG")
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .with_context(|| format!("writing BACKENDS[{id}]"))
    }
    fn set_slot(&mut self, slot: u32, backend: u32) -> Result<()> {
        self.maglev
            .set(slot, backend, 0)
            .with_context(|| format!("writing MAGLEV[{slot}]"))
    }
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services
            .insert(key, service, 0)
            .context("writing a SERVICES entry")
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services
            .remove(key)
            .context("removing a SERVICES entry")
    }
    fn slots(&self) -> u32 {
        self.maglev.len()
    }
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        self.services
            .iter()
            .map(|r| r.context("reading SERVICES"))
            .collect()
    }
    fn backends(&self) -> Result<Vec<Backend>> {
        self.backends
            .iter()
            .map(|r| r.context("reading BACKENDS"))
            .collect()
    }
    fn slot(&self, slot: u32) -> Result<u32> {
        self.maglev
            .get(&slot, 0)
            .with_context(|| format!("reading MAGLEV[{slot}]"))
    }
    fn config(&self) -> Result<DataplaneConfig> {
        self.config.get(&0, 0).context("reading CONFIG")
    }
}

/// The control maps in memory, with a log of every write in order, so tests
/// can check what the data plane could have seen between two writes.
#[derive(Clone, Debug)]
pub struct MemMaps {
    pub config: DataplaneConfig,
    pub services: BTreeMap<ServiceKey, Service>,
    pub backends: Vec<Backend>,
    pub maglev: Vec<u32>,
    pub writes: Vec<Write>,
}

/// One write to the control maps, as [`MemMaps`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Config(DataplaneConfig),
    Backend(u32, Backend),
    Slot(u32, u32),
    Service(ServiceKey, Service),
    RemoveService(ServiceKey),
}

impl MemMaps {
    pub fn new(table_size: u32) -> Self {
        MemMaps {
            config: DataplaneConfig::default(),
            services: BTreeMap::new(),
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
            maglev: vec![0; maglev_slots(table_size) as usize],
            writes: Vec::new(),
        }
    }

    /// The table the data plane would read for `key` now.
    pub fn live_table(&self, key: &ServiceKey) -> Option<&[u32]> {
        let s = self.services.get(key)?;
        let base = s.table_base as usize;
        Some(&self.maglev[base..base + s.table_size as usize])
    }
}

impl ControlPlane for MemMaps {
    fn set_config(&mut self, config: DataplaneConfig) -> Result<()> {
        self.config = config;
        self.writes.push(Write::Config(config));
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        *self
            .backends
            .get_mut(id as usize)
            .ok_or_else(|| anyhow!("BACKENDS[{id}] out of range"))? = backend;
        self.writes.push(Write::Backend(id, backend));
        Ok(())
    }
    fn set_slot(&mut self, slot: u32, backend: u32) -> Result<()> {
        *self
            .maglev
            .get_mut(slot as usize)
            .ok_or_else(|| anyhow!("MAGLEV[{slot}] out of range"))? = backend;
        self.writes.push(Write::Slot(slot, backend));
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services.insert(key, service);
        self.writes.push(Write::Service(key, service));
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(key);
        self.writes.push(Write::RemoveService(*key));
        Ok(())
    }
    fn slots(&self) -> u32 {
        self.maglev.len() as u32
    }
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<Backend>> {
        Ok(self.backends.clone())
    }
    fn slot(&self, slot: u32) -> Result<u32> {
        self.maglev
            .get(slot as usize)
            .copied()
            .ok_or_else(|| anyhow!("MAGLEV[{slot}] out of range"))
    }
    fn config(&self) -> Result<DataplaneConfig> {
        Ok(self.config)
    }
}
