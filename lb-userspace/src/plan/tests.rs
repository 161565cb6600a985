//! The planner and the reconciler together, against maps in memory: each
//! test changes one input, plans, applies, and checks what a packet would
//! find in the maps (the live Maglev table, the backends it names, CONFIG)
//! and the VIPs the node should hold. No kernel, no root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::service::{CONFIG_ACTIVE, ServiceKey};

use super::*;
use crate::{
    config::Config,
    maps::{MemMaps, Write},
    reconcile::Reconciler,
};

/// Small tables keep the tests fast; a prime, as Maglev needs.
const TABLE: u32 = 509;

fn addr(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 6443)
}

/// A config with one service per `(vip last octet, backends)`, each backend
/// `(last octet, weight)`.
fn config(services: &[(u8, &[(u8, u32)])]) -> Config {
    let mut toml = format!("maglev_table_size = {TABLE}\n");
    for (vip, backends) in services {
        toml += &format!("[[service]]\nvip = \"192.168.31.{vip}\"\n");
        for (last, weight) in *backends {
            toml += &format!(
                "[[service.backend]]\naddress = \"{}\"\nweight = {weight}\n",
                addr(*last)
            );
        }
    }
    Config::from_toml_str(&toml, "test.toml").unwrap_or_else(|e| panic!("{e:#}\n{toml}"))
}

fn key(vip: u8) -> ServiceKey {
    ServiceKey {
        vip: [192, 168, 31, vip],
        port: 6443u16.to_be_bytes(),
        proto: 6,
        _pad: 0,
    }
}

/// The planner's inputs, owned, with defaults: master, nothing down or
/// drained, no local addresses.
struct World {
    config: Config,
    down: BTreeSet<Target>,
    drained: BTreeSet<SocketAddrV4>,
    role: Role,
    local: BTreeSet<Ipv4Addr>,
    snat_ips: Vec<Ipv4Addr>,
}

impl World {
    fn new(config: Config) -> Self {
        World {
            config,
            down: BTreeSet::new(),
            drained: BTreeSet::new(),
            role: Role::Master,
            local: BTreeSet::new(),
            snat_ips: vec![Ipv4Addr::new(192, 168, 31, 10)],
        }
    }

    /// Calls `f` with the planner's inputs for this world.
    fn with_inputs<R>(&self, f: impl FnOnce(&Inputs) -> R) -> R {
        f(&Inputs {
            config: &self.config,
            down: &self.down,
            drained: &self.drained,
            role: self.role,
            local: &self.local,
            snat_ips: &self.snat_ips,
            nat_ports: (1024, 32767),
            ticks_per_s: 250,
            fence_after: None,
            vrrp_vips: None,
        })
    }

    fn plan(&self) -> Desired {
        self.with_inputs(plan)
    }

    fn set_down(&mut self, vip: u8, backend: u8, down: bool) {
        let t = Target {
            service: key(vip),
            backend: addr(backend),
        };
        if down {
            self.down.insert(t);
        } else {
            self.down.remove(&t);
        }
    }
}

fn reconciler() -> Reconciler<MemMaps> {
    Reconciler::adopt(MemMaps::new(TABLE), TABLE).expect("adopting empty maps")
}

/// How many slots of the service's live table each backend address holds,
/// as a packet would resolve them (slot → id → BACKENDS[id]).
fn live_share(r: &Reconciler<MemMaps>, vip: u8) -> BTreeMap<SocketAddrV4, usize> {
    let maps = r.maps();
    let mut share = BTreeMap::new();
    for &id in maps.live_table(&key(vip)).unwrap_or(&[]) {
        let b = maps.backends[id as usize];
        *share
            .entry(SocketAddrV4::new(
                Ipv4Addr::from(b.ip),
                u16::from_be_bytes(b.port),
            ))
            .or_insert(0) += 1;
    }
    share
}

fn backends_of(share: &BTreeMap<SocketAddrV4, usize>) -> Vec<u8> {
    share.keys().map(|a| a.ip().octets()[3]).collect()
}

fn apply(r: &mut Reconciler<MemMaps>, w: &World) -> Desired {
    let d = w.plan();
    r.apply(&d).expect("applying");
    d
}

#[test]
fn a_reload_adds_and_removes_backends_and_services() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1)])]));
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1, 2]);

    // api3 joins, api1 leaves, and a second VIP appears.
    w.config = config(&[(88, &[(2, 1), (3, 1)]), (89, &[(4, 1)])]);
    let d = apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [2, 3]);
    assert_eq!(backends_of(&live_share(&r, 89)), [4]);
    assert_eq!(d.vips.len(), 2, "{:?}", d.vips);
    assert!(
        r.backend_id_of(addr(1)).is_none(),
        "a removed backend keeps no id"
    );

    // The second VIP goes again.
    w.config = config(&[(88, &[(2, 1), (3, 1)])]);
    let d = apply(&mut r, &w);
    assert!(
        r.maps().live_table(&key(89)).is_none(),
        "the service is gone from SERVICES"
    );
    assert_eq!(d.vips, BTreeSet::from([Ipv4Addr::new(192, 168, 31, 88)]));
}

#[test]
fn an_unchanged_plan_writes_nothing() {
    let mut r = reconciler();
    let w = World::new(config(&[(88, &[(1, 1), (2, 1)])]));
    apply(&mut r, &w);
    let before = r.maps().writes.len();
    let d = w.plan();
    assert_eq!(r.apply(&d).unwrap(), "");
    assert_eq!(r.maps().writes.len(), before);
}

#[test]
fn a_backend_down_leaves_the_table_and_comes_back_up() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1), (3, 1)])]));
    apply(&mut r, &w);
    let all = live_share(&r, 88);
    assert_eq!(backends_of(&all), [1, 2, 3]);

    w.set_down(88, 2, true);
    let d = apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1, 3]);
    let b2 = d.services[0]
        .backends
        .iter()
        .find(|b| b.addr == addr(2))
        .unwrap();
    assert_eq!(
        b2.weight, 0,
        "down is weight 0: its established flows go on"
    );
    assert!(
        r.backend_id_of(addr(2)).is_some(),
        "a down backend keeps its id"
    );

    w.set_down(88, 2, false);
    apply(&mut r, &w);
    assert_eq!(live_share(&r, 88), all, "Maglev gives back the same table");
}

#[test]
fn every_backend_down_fails_open_over_all_of_them() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1)])]));
    w.set_down(88, 1, true);
    w.set_down(88, 2, true);
    let d = w.plan();
    assert!(
        d.services[0].backends.iter().all(|b| b.weight == 1),
        "all down: configured weights"
    );
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1, 2]);
    let failing = w.with_inputs(failing_open);
    assert_eq!(failing, ["192.168.31.88:6443/tcp".to_string()]);

    // One back up: only it takes new flows.
    w.set_down(88, 1, false);
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1]);
}

#[test]
fn weight_zero_and_operator_drains_take_no_new_flows_but_keep_their_ids() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 0), (3, 1)])]));
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1, 3], "weight 0 drains");
    assert!(
        r.backend_id_of(addr(2)).is_some(),
        "a drained backend is still written"
    );

    w.drained.insert(addr(3));
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1]);
    // Drains hold even when the rest is down: the operator's word.
    w.set_down(88, 1, true);
    let d = apply(&mut r, &w);
    assert_eq!(
        backends_of(&live_share(&r, 88)),
        [1],
        "fails open over the undrained"
    );
    assert_eq!(
        d.services[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>(),
        [1, 0, 0]
    );
    w.drained.clear();
    w.set_down(88, 1, false);
    apply(&mut r, &w);
    assert_eq!(backends_of(&live_share(&r, 88)), [1, 3]);
}

#[test]
fn backup_fences_the_data_plane_and_holds_no_vip_and_master_takes_both_back() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1)])]));
    let d = apply(&mut r, &w);
    assert!(d.active && r.maps().config.flags & CONFIG_ACTIVE != 0);
    assert_eq!(d.vips.len(), 1);
    let table = live_share(&r, 88);

    w.role = Role::Backup;
    r.maps_mut_for_test().writes.clear();
    let d = apply(&mut r, &w);
    assert!(!d.active);
    assert!(d.vips.is_empty(), "a backup holds no VIP");
    assert_eq!(r.maps().config.flags & CONFIG_ACTIVE, 0, "fenced");
    assert_eq!(
        r.maps().writes,
        [Write::Config(r.maps().config)],
        "a role change writes CONFIG alone: tables stay ready for the next promotion"
    );
    assert_eq!(live_share(&r, 88), table);

    w.role = Role::Master;
    let d = apply(&mut r, &w);
    assert!(d.active && r.maps().config.flags & CONFIG_ACTIVE != 0);
    assert_eq!(d.vips.len(), 1);
}

/// The SNAT pool reaches SNAT_IPS before the CONFIG whose `snat_count`
/// makes it reachable; a smaller pool leaves the entries past its end as
/// they were (a packet that read the old CONFIG may still index them); an
/// agent that adopts the maps rewrites nothing.
#[test]
fn the_snat_pool_goes_into_snat_ips_before_config_counts_it() {
    let ip = |last| Ipv4Addr::new(192, 168, 31, last);
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1)])]));
    w.snat_ips = vec![ip(10), ip(11), ip(12)];
    let d = apply(&mut r, &w);
    assert_eq!(d.snat_ips, w.snat_ips, "the plan carries the pool in order");
    let maps = r.maps();
    assert_eq!(
        maps.snat_ips[..3],
        [ip(10), ip(11), ip(12)].map(|a| a.octets())
    );
    assert_eq!(
        (maps.config.snat_ip, maps.config.snat_count),
        (ip(10).octets(), 3)
    );
    let config_at = maps
        .writes
        .iter()
        .position(|w| matches!(w, Write::Config(_)))
        .unwrap();
    let last_pool_write = maps
        .writes
        .iter()
        .rposition(|w| matches!(w, Write::SnatIp(..)))
        .unwrap();
    assert!(last_pool_write < config_at, "{:?}", maps.writes);

    w.snat_ips = vec![ip(10), ip(13)];
    r.maps_mut_for_test().writes.clear();
    let said = r.apply(&w.plan()).unwrap();
    assert!(
        said.contains("SNAT addresses: 192.168.31.10, 192.168.31.13"),
        "{said}"
    );
    let maps = r.maps();
    assert_eq!(
        maps.writes[0],
        Write::SnatIp(1, ip(13).octets()),
        "only the entry that changed, first: {:?}",
        maps.writes
    );
    assert_eq!(maps.config.snat_count, 2);
    assert_eq!(maps.snat_ips[2], ip(12).octets(), "not cleared");

    // A restarted agent finds the pool in place.
    let mut again = Reconciler::adopt(r.maps().clone(), TABLE).unwrap();
    again.maps_mut_for_test().writes.clear();
    again.apply(&w.plan()).unwrap();
    assert!(
        !again
            .maps()
            .writes
            .iter()
            .any(|w| matches!(w, Write::SnatIp(..))),
        "{:?}",
        again.maps().writes
    );

    // The planner's inputs come checked; the reconciler refuses a pool the
    // map cannot hold all the same.
    w.snat_ips = (1..=17).map(ip).collect();
    assert!(r.apply(&w.plan()).is_err());
    w.snat_ips.clear();
    assert!(r.apply(&w.plan()).is_err());
}

#[test]
fn no_vip_is_planned_when_the_config_says_not_to_assign_it() {
    let mut w = World::new(config(&[(88, &[(1, 1)])]));
    w.config.assign_vip = false;
    let d = w.plan();
    assert!(d.active && d.vips.is_empty());
}

#[test]
fn a_local_backend_is_marked_local() {
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1)])]));
    w.local.insert(*addr(2).ip());
    let d = w.plan();
    let locals: Vec<bool> = d.services[0].backends.iter().map(|b| b.local).collect();
    assert_eq!(locals, [false, true]);
}

/// Katran's rule (KatranLb.cpp, a FIFO of free ids): an id leaves the free
/// list only when no half of any table names it. Capacity 5: A,B,C take
/// 0,1,2.
#[test]
fn a_freed_backend_id_is_not_reused_while_either_table_half_names_it() {
    let mut r = Reconciler::adopt_with(MemMaps::new(TABLE), TABLE, 5).unwrap();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1), (3, 1)])]));
    apply(&mut r, &w);
    let c_id = r.backend_id_of(addr(3)).unwrap();
    assert_eq!(
        [r.backend_id_of(addr(1)), r.backend_id_of(addr(2))],
        [Some(0), Some(1)]
    );
    assert_eq!(c_id, 2);

    // One reload removes C and adds D: C's id is still in the live table
    // until the switch, so D must not get it (it gets 3).
    w.config = config(&[(88, &[(1, 1), (2, 1), (4, 1)])]);
    apply(&mut r, &w);
    let d_id = r.backend_id_of(addr(4)).unwrap();
    assert_ne!(d_id, c_id, "D took C's id while C's table was live");
    assert_eq!(d_id, 3);

    // Next reload: D goes, E comes. C's id 2 is still named by the previous
    // half (the table before C left), D's 3 by the live one: E gets 4.
    w.config = config(&[(88, &[(1, 1), (2, 1), (5, 1)])]);
    apply(&mut r, &w);
    let e_id = r.backend_id_of(addr(5)).unwrap();
    assert_eq!(e_id, 4, "ids 2 and 3 are named by a table half");
    // Both halves have now been rewritten without C: its id is free.
    w.config = config(&[(88, &[(1, 1), (2, 1), (5, 1), (6, 1)])]);
    apply(&mut r, &w);
    assert_eq!(
        r.backend_id_of(addr(6)),
        Some(c_id),
        "C's id comes back once neither half names it"
    );
    // Every live slot resolves to a backend of the service, never a stranger.
    let share = live_share(&r, 88);
    assert_eq!(backends_of(&share), [1, 2, 5, 6]);
}

#[test]
fn adopting_a_running_data_plane_keeps_ids_and_tables() {
    let mut r = reconciler();
    let w = World::new(config(&[(88, &[(1, 1), (2, 1), (3, 1)])]));
    apply(&mut r, &w);
    let ids: Vec<_> = (1..=3).map(|i| r.backend_id_of(addr(i))).collect();
    let table = live_share(&r, 88);
    let mut maps = r.maps().clone();
    maps.writes.clear();

    let mut again = Reconciler::adopt(maps, TABLE).unwrap();
    let ids_again: Vec<_> = (1..=3).map(|i| again.backend_id_of(addr(i))).collect();
    assert_eq!(ids, ids_again);
    again.apply(&w.plan()).unwrap();
    assert_eq!(live_share(&again, 88), table);
    assert!(
        !again
            .maps()
            .writes
            .iter()
            .any(|w| matches!(w, Write::Slot(..) | Write::Service(..))),
        "the same plan after a restart rewrites no table: {:?}",
        &again.maps().writes[..again.maps().writes.len().min(5)]
    );
}

/// Every write order the reconciler uses keeps the maps valid in between:
/// replaying its writes one at a time, each live slot always names a
/// written backend of that service.
#[test]
fn every_intermediate_state_sends_packets_only_to_backends_of_the_service() {
    let mut r = reconciler();
    let mut w = World::new(config(&[(88, &[(1, 1), (2, 1)]), (89, &[(3, 1)])]));
    let pool = |last: &[u8]| -> Vec<Ipv4Addr> {
        last.iter()
            .map(|&l| Ipv4Addr::new(192, 168, 31, l))
            .collect()
    };
    w.snat_ips = pool(&[10, 11, 12]);
    apply(&mut r, &w);
    let mut shadow = r.maps().clone();
    shadow.writes.clear();
    r.maps_mut_for_test().writes.clear();
    w.config = config(&[(88, &[(3, 1), (4, 1)]), (89, &[(2, 1)])]);
    w.snat_ips = pool(&[13, 11]);
    apply(&mut r, &w);
    let snat_allowed: BTreeSet<u8> = BTreeSet::from([10, 11, 12, 13]);
    let allowed_before: [BTreeSet<u8>; 2] = [BTreeSet::from([1, 2]), BTreeSet::from([3])];
    let allowed_after: [BTreeSet<u8>; 2] = [BTreeSet::from([3, 4]), BTreeSet::from([2])];
    for write in r.maps().writes.clone() {
        match write {
            Write::Config(c) => shadow.config = c,
            Write::SnatIp(i, ip) => shadow.snat_ips[i as usize] = ip,
            Write::Backend(id, b) => shadow.backends[id as usize] = b,
            Write::Slot(i, v) => shadow.maglev[i as usize] = v,
            Write::Service(k, s) => {
                shadow.services.insert(k, s);
            }
            Write::Vip(_) | Write::RemoveVip(_) => {}
            Write::RemoveService(k) => {
                shadow.services.remove(&k);
            }
        }
        // The pool a new connection draws from: old or new addresses only.
        for ip in &shadow.snat_ips[..shadow.config.snat_count as usize] {
            assert!(
                snat_allowed.contains(&ip[3]),
                "after {write:?}, a new flow could come from {ip:?}"
            );
        }
        for (n, vip) in [88u8, 89].into_iter().enumerate() {
            let Some(table) = shadow.live_table(&key(vip)) else {
                continue;
            };
            for &id in table {
                let last = shadow.backends[id as usize].ip[3];
                assert!(
                    allowed_before[n].contains(&last) || allowed_after[n].contains(&last),
                    "after {write:?}, service {vip} would send a new flow to 10.0.0.{last}"
                );
            }
        }
    }
}

#[test]
fn with_vrrp_a_master_holds_only_the_vips_of_its_instances_and_fences_on_a_timer() {
    let mut w = World::new(config(&[(88, &[(1, 1)]), (89, &[(2, 1)])]));
    let owned = BTreeSet::from([Ipv4Addr::new(192, 168, 31, 89)]);
    let d = plan(&Inputs {
        config: &w.config,
        down: &w.down,
        drained: &w.drained,
        role: Role::Master,
        local: &w.local,
        snat_ips: &[Ipv4Addr::LOCALHOST],
        nat_ports: (1024, 32767),
        ticks_per_s: 250,
        fence_after: Some(std::time::Duration::from_millis(300)),
        vrrp_vips: Some(&owned),
    });
    assert!(d.active);
    assert_eq!(d.vips, owned);
    assert_eq!(d.fence_after, 75, "300 ms at 250 Hz");
    w.role = Role::Backup;
    let d = w.plan();
    assert!(!d.active && d.vips.is_empty());
    assert_eq!(d.fence_after, 0, "no heartbeat without VRRP");
}
