//! The test node of the BPF_PROG_TEST_RUN tests (tests/dataplane.rs and
//! tests/fuzz.rs): its addresses, MACs, services and backends, and xdplb
//! loaded on it with those services live. Both tests check the program
//! against the same node, so it is written down once: a change to the node
//! (a new service, another NAT range) reaches both, and the fuzz's model
//! cannot drift from the cases of the table-driven test.
//!
//! The node: in a network namespace of its own, one veth end, `lb0`, holds
//! the LB's address 10.0.0.2/24, IPv4 forwarding is on, and two clients and
//! three backends have permanent neighbour entries. Two services, each over
//! the three backends: TCP VIP:6443 → :6443 and UDP VIP:53 → :5353.
//!
//! What each test does with the node (its cases, its model, how it reads
//! the maps) stays in the test.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::{Ebpf, programs::Xdp};
use lb_common::{
    maps,
    service::{PROTO_TCP, PROTO_UDP, ServiceKey},
};
use lb_userspace::{
    loader,
    maps::ControlMaps,
    plan::{Desired, DesiredBackend, DesiredService},
    reconcile::Reconciler,
};

use crate::{
    objects::XDPLB_OBJECT,
    testrun::{self, Mac, PinDir},
};

/// lb0's address: the node's own, and the SNAT source towards backends.
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
pub const CLIENT_B_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];

/// The backends' addresses and MACs (the namespace's neighbour entries).
pub const BACKEND_HOSTS: [(Ipv4Addr, Mac); 3] = [
    (Ipv4Addr::new(10, 0, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 0, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 0, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];

/// The TCP service: VIP:6443 → backends :6443.
pub const API_PORT: u16 = 6443;
/// The UDP service: VIP:53 → backends :5353, a port change, so the
/// destination port rewrite is exercised too. (Backend and service ids are
/// the reconciler's to give: ask it.)
pub const DNS_PORT: u16 = 53;
pub const DNS_BACKEND_PORT: u16 = 5353;

pub const NAT_PORT_MIN: u16 = 20000;
pub const NAT_PORT_MAX: u16 = 29999;
/// The smallest Maglev size, to keep the maps small.
pub const TABLE_SIZE: u32 = 251;
/// FLOWS' size. Small, so that the tests can fill it: dataplane.rs from
/// userspace, the fuzz now and then with frames (a full table refuses new
/// connections: DropFlowTableFull).
pub const MAX_FLOWS: u32 = 4096;

pub const TCP_SERVICE: ServiceKey = ServiceKey {
    vip: VIP.octets(),
    port: API_PORT.to_be_bytes(),
    proto: PROTO_TCP,
    _pad: 0,
};
pub const UDP_SERVICE: ServiceKey = ServiceKey {
    vip: VIP.octets(),
    port: DNS_PORT.to_be_bytes(),
    proto: PROTO_UDP,
    _pad: 0,
};

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Every host with a neighbour entry on lb0: the two clients, then the
/// backends.
pub fn neighbours() -> impl Iterator<Item = (Ipv4Addr, Mac)> {
    [(CLIENT, CLIENT_MAC), (CLIENT_B, CLIENT_B_MAC)]
        .into_iter()
        .chain(BACKEND_HOSTS)
}

/// The MAC of a host with a neighbour entry on lb0; `None` for any other
/// address (the FIB does not resolve it).
pub fn neighbour_mac(ip: Ipv4Addr) -> Option<Mac> {
    neighbours().find(|(a, _)| *a == ip).map(|(_, m)| m)
}

/// The node's two services, each over the three backend hosts, active.
pub fn desired() -> Desired {
    let service = |name: &str, key, port| DesiredService {
        name: name.into(),
        key,
        backends: BACKEND_HOSTS
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| DesiredBackend {
                name: format!("{name}-{i}"),
                addr: addr(*ip, port),
                weight: 1,
                local: false,
            })
            .collect(),
    };
    Desired {
        snat_ips: vec![SNAT],
        nat_ports: (NAT_PORT_MIN, NAT_PORT_MAX),
        active: true,
        // Any rate works here: nothing in these tests waits for a second.
        ticks_per_s: 250,
        fence_after: 0,
        services: vec![
            service("api", TCP_SERVICE, API_PORT),
            service("dns", UDP_SERVICE, DNS_BACKEND_PORT),
        ],
        vips: BTreeSet::new(),
    }
}

/// xdplb loaded (not attached) on the test node, its control maps written
/// by the agent's reconciler for [`desired`].
pub struct LoadedNode {
    /// The program and the maps the reconciler does not write (FLOWS, the
    /// counters).
    pub ebpf: Ebpf,
    /// The control maps, written only through the agent's reconciler.
    pub reconciler: Reconciler<ControlMaps>,
    /// lb0's ifindex: the tests name it as the ingress interface, so that
    /// the program's FIB lookups route in the node's namespace.
    pub ifindex: u32,
    /// The pin directory on bpffs; removed when dropped, so keep it as long
    /// as the program.
    pub pins: PinDir,
}

/// Sets up the node in the calling thread's network namespace (which must
/// be a private one, see [`testrun::in_own_netns`]) and loads xdplb as the
/// agent loads it, with its maps pinned under a new directory named from
/// `pin_prefix`, then has the reconciler apply [`desired`]. Panics on any
/// failure: a test cannot go on without its node.
pub fn start(pin_prefix: &str) -> LoadedNode {
    let hosts: Vec<(Ipv4Addr, Mac)> = neighbours().collect();
    let ifindex = testrun::setup_lb0(LB_MAC, &format!("{SNAT}/24"), &hosts)
        .unwrap_or_else(|e| panic!("setting up the test namespace: {e:#}"));
    let pins = PinDir::create(pin_prefix).unwrap_or_else(|e| panic!("{e:#}"));
    let mut ebpf = loader::load_object(XDPLB_OBJECT, &pins.path, MAX_FLOWS, TABLE_SIZE)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let prog: &mut Xdp = ebpf
        .program_mut(maps::XDP_PROGRAM)
        .expect("no program xdplb in the object")
        .try_into()
        .expect("xdplb is not an XDP program");
    prog.load().expect("the kernel rejected xdplb");
    let control = ControlMaps::take(&mut ebpf).unwrap_or_else(|e| panic!("{e:#}"));
    let mut reconciler = Reconciler::adopt(control, TABLE_SIZE).unwrap_or_else(|e| panic!("{e:#}"));
    reconciler
        .apply(&desired())
        .unwrap_or_else(|e| panic!("applying {:?}: {e:#}", desired()));
    LoadedNode {
        ebpf,
        reconciler,
        ifindex,
        pins,
    }
}
