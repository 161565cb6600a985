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
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError},
};
use lb_common::{
    maps as names,
    service::{
        Backend, DataplaneConfig, MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_IPS, Service, ServiceKey,
    },
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
    /// SNAT_IPS[index]: an address of the SNAT pool.
    fn set_snat_ip(&mut self, index: u32, ip: [u8; 4]) -> Result<()>;
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    fn set_slot(&mut self, slot: u32, backend: u32) -> Result<()>;
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn set_vip(&mut self, vip: [u8; 4]) -> Result<()>;
    fn remove_vip(&mut self, vip: &[u8; 4]) -> Result<()>;
    /// The VIPs in VIPS.
    fn vips(&self) -> Result<Vec<[u8; 4]>>;

    /// MAGLEV's size in slots.
    fn slots(&self) -> u32;
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>>;
    /// BACKENDS, every id (an all-zero entry is unused).
    fn backends(&self) -> Result<Vec<Backend>>;
    fn slot(&self, slot: u32) -> Result<u32>;
    fn config(&self) -> Result<DataplaneConfig>;
    /// SNAT_IPS, every entry (past CONFIG's `snat_count` they are unused).
    fn snat_ips(&self) -> Result<Vec<[u8; 4]>>;
    /// SERVICES' entry for `key`, if there is one.
    fn service(&self, key: &ServiceKey) -> Result<Option<Service>>;
    /// BACKENDS[id].
    fn backend(&self, id: u32) -> Result<Backend>;

    /// The backend id, and its BACKENDS entry, that the data plane gives a
    /// new flow of service `key` whose Maglev hash
    /// (`lb_common::flow::flow_hash`) is `hash`, as the maps hold them now;
    /// None if there is no such service or no backend takes new flows
    /// (`table_size` 0). The same reads as the data plane's
    /// (lb-ebpf/src/conntrack.rs): SERVICES, then the live table's slot
    /// `hash % table_size`, then BACKENDS. So the lab's tests and the
    /// benchmark predict its pick without a copy of the layout.
    fn backend_for(&self, key: &ServiceKey, hash: u32) -> Result<Option<(u32, Backend)>> {
        let Some(svc) = self.service(key)? else {
            return Ok(None);
        };
        if svc.table_size == 0 {
            return Ok(None);
        }
        let id = self.slot(svc.table_base + hash % svc.table_size)?;
        Ok(Some((id, self.backend(id)?)))
    }
}

/// The kernel's control maps, typed.
pub struct ControlMaps {
    pub config: Array<MapData, DataplaneConfig>,
    pub snat_ips: Array<MapData, [u8; 4]>,
    pub services: BpfHashMap<MapData, ServiceKey, Service>,
    pub backends: Array<MapData, Backend>,
    pub maglev: Array<MapData, u32>,
    pub vips: BpfHashMap<MapData, [u8; 4], u32>,
}

impl ControlMaps {
    /// Takes the control maps out of a loaded xdplb object (the agent's, or
    /// one a test or the benchmark loaded itself).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(ControlMaps {
            config: take(ebpf, names::CONFIG)?,
            snat_ips: take(ebpf, names::SNAT_IPS)?,
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            maglev: take(ebpf, names::MAGLEV)?,
            vips: take(ebpf, names::VIPS)?,
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
    fn set_snat_ip(&mut self, index: u32, ip: [u8; 4]) -> Result<()> {
        self.snat_ips
            .set(index, ip, 0)
            .with_context(|| format!("writing SNAT_IPS[{index}]"))
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
    fn set_vip(&mut self, vip: [u8; 4]) -> Result<()> {
        self.vips.insert(vip, 0, 0).context("writing a VIPS entry")
    }
    fn remove_vip(&mut self, vip: &[u8; 4]) -> Result<()> {
        self.vips.remove(vip).context("removing a VIPS entry")
    }
    fn vips(&self) -> Result<Vec<[u8; 4]>> {
        self.vips
            .keys()
            .map(|k| k.context("reading VIPS"))
            .collect()
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
    fn snat_ips(&self) -> Result<Vec<[u8; 4]>> {
        self.snat_ips
            .iter()
            .map(|r| r.context("reading SNAT_IPS"))
            .collect()
    }
    fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        match self.services.get(key, 0) {
            Ok(s) => Ok(Some(s)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a SERVICES entry"),
        }
    }
    fn backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(&id, 0)
            .with_context(|| format!("reading BACKENDS[{id}]"))
    }
}

/// The control maps in memory, with a log of every write in order, so tests
/// can check what the data plane could have seen between two writes.
#[derive(Clone, Debug)]
pub struct MemMaps {
    pub config: DataplaneConfig,
    pub snat_ips: Vec<[u8; 4]>,
    pub services: BTreeMap<ServiceKey, Service>,
    pub backends: Vec<Backend>,
    pub maglev: Vec<u32>,
    pub vips: std::collections::BTreeSet<[u8; 4]>,
    pub writes: Vec<Write>,
}

/// One write to the control maps, as [`MemMaps`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Config(DataplaneConfig),
    SnatIp(u32, [u8; 4]),
    Backend(u32, Backend),
    Slot(u32, u32),
    Service(ServiceKey, Service),
    RemoveService(ServiceKey),
    Vip([u8; 4]),
    RemoveVip([u8; 4]),
}

impl MemMaps {
    pub fn new(table_size: u32) -> Self {
        MemMaps {
            config: DataplaneConfig::default(),
            snat_ips: vec![[0; 4]; MAX_SNAT_IPS as usize],
            services: BTreeMap::new(),
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
            maglev: vec![0; maglev_slots(table_size) as usize],
            vips: Default::default(),
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
    fn set_snat_ip(&mut self, index: u32, ip: [u8; 4]) -> Result<()> {
        *self
            .snat_ips
            .get_mut(index as usize)
            .ok_or_else(|| anyhow!("SNAT_IPS[{index}] out of range"))? = ip;
        self.writes.push(Write::SnatIp(index, ip));
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
    fn set_vip(&mut self, vip: [u8; 4]) -> Result<()> {
        self.vips.insert(vip);
        self.writes.push(Write::Vip(vip));
        Ok(())
    }
    fn remove_vip(&mut self, vip: &[u8; 4]) -> Result<()> {
        self.vips.remove(vip);
        self.writes.push(Write::RemoveVip(*vip));
        Ok(())
    }
    fn vips(&self) -> Result<Vec<[u8; 4]>> {
        Ok(self.vips.iter().copied().collect())
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
    fn snat_ips(&self) -> Result<Vec<[u8; 4]>> {
        Ok(self.snat_ips.clone())
    }
    fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        Ok(self.services.get(key).copied())
    }
    fn backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(id as usize)
            .copied()
            .ok_or_else(|| anyhow!("BACKENDS[{id}] out of range"))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{Ipv4Addr, SocketAddrV4},
    };

    use lb_common::maglev::{MaglevBackend, build_table};

    use super::*;
    use crate::{
        plan::{Desired, DesiredBackend, DesiredService},
        reconcile::Reconciler,
    };

    const TABLE: u32 = 251;
    const KEY: ServiceKey = ServiceKey {
        vip: [192, 168, 31, 1],
        port: 6443u16.to_be_bytes(),
        proto: 6,
        _pad: 0,
    };

    fn addr(i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + i as u8), 6443)
    }

    /// One service, backend `i` of weight `weights[i]`.
    fn desired(weights: &[u32]) -> Desired {
        Desired {
            snat_ips: vec![Ipv4Addr::new(10, 0, 0, 250)],
            nat_ports: (20000, 29999),
            active: true,
            ticks_per_s: 250,
            fence_after: 0,
            services: vec![DesiredService {
                name: "api".into(),
                key: KEY,
                backends: weights
                    .iter()
                    .enumerate()
                    .map(|(i, &weight)| DesiredBackend {
                        name: format!("b{i}"),
                        addr: addr(i),
                        weight,
                        local: false,
                    })
                    .collect(),
            }],
            vips: BTreeSet::new(),
        }
    }

    /// backend_for against a Maglev table built here from the weights and
    /// the reconciler's ids: the pick of every slot, through changes that
    /// flip the live half (whose stale twin names a backend the new table
    /// does not, so reading the wrong half shows), down to no backend.
    #[test]
    fn backend_for_reads_the_live_table() {
        let mut r = Reconciler::adopt(MemMaps::new(TABLE), TABLE).unwrap();
        assert_eq!(r.maps().backend_for(&KEY, 7).unwrap(), None, "no service");
        for weights in [
            &[1, 1, 1][..],
            &[1, 0, 1],
            &[2, 1, 1],
            &[0, 0, 0],
            &[1, 1, 0],
        ] {
            let d = desired(weights);
            r.apply(&d).unwrap();
            let members: Vec<MaglevBackend> = d.services[0]
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| MaglevBackend {
                    key: MaglevBackend::ipv4_key(b.addr.ip().octets(), b.addr.port().to_be_bytes()),
                    weight: b.weight,
                    id: r.backend_id_of(b.addr).unwrap(),
                })
                .collect();
            let table = build_table(&members, TABLE);
            for hash in (0..TABLE).chain([TABLE, 0xdead_beef, u32::MAX]) {
                let want = table.get((hash % TABLE) as usize).map(|&id| {
                    let a = d.services[0]
                        .backends
                        .iter()
                        .find(|b| r.backend_id_of(b.addr) == Some(id))
                        .unwrap()
                        .addr;
                    let b = Backend {
                        ip: a.ip().octets(),
                        port: a.port().to_be_bytes(),
                        flags: 0,
                        _pad: 0,
                    };
                    (id, b)
                });
                assert_eq!(
                    r.maps().backend_for(&KEY, hash).unwrap(),
                    want,
                    "weights {weights:?}, hash {hash}"
                );
            }
        }
        let other = ServiceKey { proto: 17, ..KEY };
        assert_eq!(r.maps().backend_for(&other, 7).unwrap(), None);
    }
}
