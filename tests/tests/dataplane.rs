//! The XDP program on its own, table-driven through BPF_PROG_TEST_RUN
//! (katran's test fixtures, cilium's PKTGEN/SETUP/CHECK tests): each case is
//! an input frame, the verdict and reason the program must give, and the
//! frame it must leave behind, compared byte for byte.
//!
//! Every test loads its own copy of xdplb as the agent does, with the maps
//! pinned in a directory of its own on bpffs (removed on drop), has the
//! agent's reconciler write the control maps from a desired state, and
//! runs on a thread in a network namespace of its own, which vanishes with
//! the thread. In that namespace one veth end, `lb0`, holds the LB's
//! address 10.0.0.2/24, IPv4 forwarding is on, and the client and the
//! backends have permanent neighbour entries. The
//! test runs name lb0 as the ingress interface (`xdp_md.ingress_ifindex` in
//! `ctx_in`, kernel 5.12+, resolved in the caller's namespace), so the
//! program's `bpf_fib_lookup` routes in that namespace as on a node: a NATed
//! packet comes back `XDP_TX` with lb0's MAC as source and the neighbour's
//! as destination. Without an ingress interface the kernel runs the program
//! on the namespace's loopback device, where the lookup answers with another
//! interface and the program passes the rewritten packet to the kernel.
//!
//! Needs root (BPF, namespaces), like the lab tests.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, PerCpuArray},
    programs::Xdp,
};
use lab::{
    node::{
        self, API_PORT, BACKEND_HOSTS, CLIENT, CLIENT_B, CLIENT_B_MAC, CLIENT_MAC, DNS_PORT,
        LB_MAC, MAX_FLOWS, SNAT, TCP_SERVICE, VIP, addr,
    },
    packets::{FrameBuilder, IPOPT_NOP},
    require_root,
    testrun::{self, Mac},
};
use lb_common::{
    csum::{checksum, fold, pseudo_header_sum, sum},
    flow::{
        DIR_FORWARD, DIR_REPLY, Embryo, FLOW_LOCAL, Flow, FlowKey, NextHop, SEEN_ACK, SEEN_SYN,
        flow_hash,
    },
    maps,
    service::{DataplaneConfig, PROTO_TCP, PROTO_UDP, ServiceKey},
    stats::{Counter, Reason, ReasonTotals},
    wire::{ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN},
};
use lb_userspace::{
    maps::ControlPlane,
    plan::{Desired, DesiredBackend},
};

// ---------------------------------------------------------------------------
// The node under test: addresses, services, backends, in lab::node (the
// fuzz checks the program against the same node).

/// The MAC of any host of the test node's subnet (its neighbour entry).
fn mac_of_host(ip: Ipv4Addr) -> Mac {
    node::neighbour_mac(ip).unwrap_or_else(|| panic!("{ip} is no host of the test node"))
}

fn mac_of_backend(ip: Ipv4Addr) -> Mac {
    BACKEND_HOSTS
        .iter()
        .find(|(a, _)| *a == ip)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| panic!("{ip} is not a backend of the test node"))
}

// ---------------------------------------------------------------------------
// Frames.

/// Who sends a frame to whom, at both layers.
#[derive(Clone, Copy, Debug)]
struct Wire {
    src_mac: Mac,
    dst_mac: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
}

fn wire(src_mac: Mac, src: SocketAddrV4, dst_mac: Mac, dst: SocketAddrV4) -> Wire {
    Wire {
        src_mac,
        dst_mac,
        src,
        dst,
    }
}

impl Wire {
    fn tcp(self) -> FrameBuilder {
        FrameBuilder::tcp(self.src_mac, self.dst_mac, self.src, self.dst)
    }
    fn udp(self) -> FrameBuilder {
        FrameBuilder::udp(self.src_mac, self.dst_mac, self.src, self.dst)
    }
}

/// TCP option MSS 1460: with it the header is 24 bytes (data offset 6).
const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
/// IP option Router Alert (RFC 2113), 4 bytes.
const IPOPT_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];
const CLIENT_ISN: u32 = 0x6b8b_4567;
const SERVER_ISN: u32 = 0x327b_23c6;

/// A client's SYN with an MSS option.
fn syn(w: Wire) -> FrameBuilder {
    w.tcp()
        .ip_id(0x1c46)
        .seq(CLIENT_ISN)
        .tcp_data_offset(6)
        .payload(&MSS_1460)
}

/// The backend's SYN-ACK.
fn syn_ack(w: Wire) -> FrameBuilder {
    w.tcp()
        .flags(TCP_SYN | TCP_ACK)
        .ip_id(0)
        .seq(SERVER_ISN)
        .ack(CLIENT_ISN + 1)
        .tcp_data_offset(6)
        .payload(&MSS_1460)
}

/// The client's first data segment.
fn request(w: Wire) -> FrameBuilder {
    w.tcp()
        .flags(TCP_ACK | TCP_PSH)
        .ip_id(0x1c47)
        .seq(CLIENT_ISN + 1)
        .ack(SERVER_ISN + 1)
        .payload(b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.100\r\n\r\n")
}

/// A DNS-sized datagram.
fn datagram(w: Wire) -> FrameBuilder {
    w.udp().ip_id(0x5151).payload(
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
    )
}

/// Where the L4 header starts (after the IPv4 header and its options).
fn l4_offset(frame: &[u8]) -> usize {
    ETH_HDR_LEN + usize::from(frame[ETH_HDR_LEN] & 0x0f) * 4
}

/// The frame with its UDP checksum set to 0, "none" (RFC 768); the IPv4
/// header checksum does not cover it.
fn without_udp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let at = l4_offset(&frame) + 6;
    frame[at..at + 2].fill(0);
    frame
}

/// The frame padded with zeros to Ethernet's 60-byte minimum, as a NIC
/// delivers a short frame: the IPv4 total length ends before the frame.
fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    frame.resize(frame.len().max(60), 0);
    frame
}

fn ports_of(frame: &[u8]) -> (u16, u16) {
    let at = l4_offset(frame);
    (
        u16::from_be_bytes([frame[at], frame[at + 1]]),
        u16::from_be_bytes([frame[at + 2], frame[at + 3]]),
    )
}

fn eth(dst: Mac, src: Mac, ether_type: u16) -> Vec<u8> {
    [&dst[..], &src[..], &ether_type.to_be_bytes()[..]].concat()
}

/// An ICMP echo request from the client to lb0.
fn icmp_echo() -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"ping");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let tot = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&CLIENT.octets());
    ip.extend_from_slice(&SNAT.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c);
    [eth(LB_MAC, CLIENT_MAC, ETH_P_IP), ip, icmp].concat()
}

/// The client asking who has the VIP.
fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP.octets());
    [eth([0xff; 6], CLIENT_MAC, ETH_P_ARP), arp].concat()
}

/// An IPv6 UDP datagram, link-local to link-local.
fn ipv6_datagram() -> Vec<u8> {
    let mut ip6 = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
    ip6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    ip6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]);
    let udp = [0x9c, 0x40, 0x19, 0x2b, 0, 12, 0, 0, b'p', b'i', b'n', b'g'];
    [eth(LB_MAC, CLIENT_MAC, ETH_P_IPV6), ip6, udp.to_vec()].concat()
}

/// The client's SYN to the VIP in an 802.1Q tag.
fn vlan_tagged_syn() -> Vec<u8> {
    let inner = syn(client_to_vip(40100)).build();
    let mut f = eth(LB_MAC, CLIENT_MAC, 0x8100);
    f.extend_from_slice(&[0, 42]);
    f.extend_from_slice(&inner[12..]);
    f
}

/// client:port → VIP:6443, as it arrives on lb0.
fn client_to_vip(port: u16) -> Wire {
    wire(CLIENT_MAC, addr(CLIENT, port), LB_MAC, addr(VIP, API_PORT))
}

// ---------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl Action {
    fn from_xdp(v: u32) -> Result<Action, u32> {
        Ok(match v {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => return Err(other),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::Aborted => "XDP_ABORTED",
            Action::Drop => "XDP_DROP",
            Action::Pass => "XDP_PASS",
            Action::Tx => "XDP_TX",
            Action::Redirect => "XDP_REDIRECT",
        }
    }
}

enum Out {
    /// The frame leaves exactly as it came (pass, drop).
    Unchanged,
    /// Exactly this frame.
    Frame(Vec<u8>),
    /// A new flow's first packet: the NAT source port is the program's
    /// choice, so it must lie in CONFIG's NAT range, and then the frame
    /// must be exactly `expected(port)`.
    NewFlow(Box<dyn Fn(u16) -> Vec<u8>>),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: Action,
    reason: Reason,
    out: Out,
}

impl Case {
    fn new(name: &'static str, input: Vec<u8>, action: Action, reason: Reason, out: Out) -> Self {
        Case {
            name,
            input,
            action,
            reason,
            out,
        }
    }
    fn pass(name: &'static str, input: Vec<u8>, reason: Reason) -> Self {
        Case::new(name, input, Action::Pass, reason, Out::Unchanged)
    }
    fn drop(name: &'static str, input: Vec<u8>, reason: Reason) -> Self {
        Case::new(name, input, Action::Drop, reason, Out::Unchanged)
    }
}

/// A NATed client → VIP packet of a new flow: `template` applied to
/// SNAT:<the program's port> → `backend`, from lb0 to the backend's MAC.
fn new_flow_to(backend: SocketAddrV4, template: impl Fn(Wire) -> Vec<u8> + 'static) -> Out {
    let mac = mac_of_backend(*backend.ip());
    Out::NewFlow(Box::new(move |port| {
        template(wire(LB_MAC, addr(SNAT, port), mac, backend))
    }))
}

// ---------------------------------------------------------------------------
// The loaded program, its maps, and running cases.

const PIN_PREFIX: &str = "xdplb-dataplane-test-";

/// Runs `f` on a new thread in a network namespace of its own; the namespace
/// and its interfaces go away when the thread ends.
fn in_own_netns<T: Send + 'static>(test: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    require_root();
    testrun::in_own_netns(test, move || Ok(f())).unwrap_or_else(|e| panic!("{e:#}"))
}

struct Dataplane {
    /// The program, its maps and the reconciler that writes the control
    /// maps (FLOWS and the counters are the tests' to read and write).
    loaded: node::LoadedNode,
    /// What was last applied; tests change it with [`Dataplane::change`].
    desired: Desired,
}

impl Dataplane {
    /// xdplb loaded (not attached) in this thread's namespace as the agent
    /// loads it, its control maps written by the agent's reconciler for the
    /// two services.
    fn start() -> Dataplane {
        Dataplane {
            loaded: node::start(PIN_PREFIX),
            // What node::start applied.
            desired: node::desired(),
        }
    }

    /// Changes the desired state and has the reconciler write it, as the
    /// agent does on a reload, a health change or a VRRP transition.
    fn change(&mut self, f: impl FnOnce(&mut Desired)) {
        f(&mut self.desired);
        self.loaded
            .reconciler
            .apply(&self.desired)
            .unwrap_or_else(|e| panic!("applying {:?}: {e:#}", self.desired));
    }

    /// The TCP service's backends' weights, in BACKEND_HOSTS order.
    fn set_api_weights(&mut self, weights: [u32; 3]) {
        self.change(|d| {
            let api = d
                .services
                .iter_mut()
                .find(|s| s.key == TCP_SERVICE)
                .unwrap();
            for (b, w) in api.backends.iter_mut().zip(weights) {
                b.weight = w;
            }
        });
    }

    fn map(&self, name: &str) -> &Map {
        self.loaded
            .ebpf
            .map(name)
            .unwrap_or_else(|| panic!("no map {name} in xdplb"))
    }

    fn map_mut(&mut self, name: &str) -> &mut Map {
        self.loaded
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name} in xdplb"))
    }

    fn config(&self) -> DataplaneConfig {
        self.loaded
            .reconciler
            .maps()
            .config()
            .expect("reading CONFIG")
    }

    /// The id the reconciler gave the backend at `addr`.
    fn backend_id(&self, addr: SocketAddrV4) -> u32 {
        self.loaded
            .reconciler
            .backend_id_of(addr)
            .unwrap_or_else(|| panic!("{addr} has no backend id"))
    }

    /// The id the reconciler gave the service (what flows and SERVICE_STATS
    /// carry).
    fn service_id(&self, key: ServiceKey) -> u32 {
        self.loaded
            .reconciler
            .maps()
            .service(&key)
            .expect("reading SERVICES")
            .expect("the service is in SERVICES")
            .id
    }

    /// Fills FLOWS from userspace with made-up flows (192.0.2.x clients)
    /// until the kernel refuses one; returns their keys.
    fn fill_flows(&mut self) -> Vec<FlowKey> {
        let mut m: BpfHashMap<_, FlowKey, Flow> = self.map_mut(maps::FLOWS).try_into().unwrap();
        let mut keys = Vec::new();
        for i in 0..=MAX_FLOWS {
            let key = flow_key(
                addr(Ipv4Addr::new(192, 0, 2, (i >> 8) as u8), i as u16),
                addr(VIP, API_PORT),
                PROTO_TCP,
            );
            if m.insert(key, Flow::default(), 0).is_err() {
                return keys;
            }
            keys.push(key);
        }
        panic!("FLOWS took more than its {MAX_FLOWS} entries");
    }

    fn remove_flow(&mut self, key: &FlowKey) {
        let mut m: BpfHashMap<_, FlowKey, Flow> = self.map_mut(maps::FLOWS).try_into().unwrap();
        m.remove(key).expect("removing a flow");
    }

    /// The backend the program must pick for a new flow `src → dst`: the
    /// service's Maglev slot for the flow's hash, as the maps hold them.
    fn maglev_choice(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        proto: u8,
    ) -> (u32, SocketAddrV4) {
        let key = ServiceKey {
            vip: dst.ip().octets(),
            port: dst.port().to_be_bytes(),
            proto,
            _pad: 0,
        };
        let hash = flow_hash(
            src.ip().octets(),
            dst.ip().octets(),
            src.port().to_be_bytes(),
            dst.port().to_be_bytes(),
            proto,
        );
        let (id, b) = self
            .loaded
            .reconciler
            .maps()
            .backend_for(&key, hash)
            .expect("reading the control maps")
            .unwrap_or_else(|| panic!("{dst}/{proto} has no backend for new flows"));
        (id, addr(Ipv4Addr::from(b.ip), u16::from_be_bytes(b.port)))
    }

    fn reasons(&self) -> ReasonTotals {
        let m: PerCpuArray<_, Counter> = self.map(maps::REASON_STATS).try_into().unwrap();
        ReasonTotals::read(&m).expect("reading REASON_STATS")
    }

    fn flows(&self) -> Vec<(FlowKey, Flow)> {
        let m: BpfHashMap<_, FlowKey, Flow> = self.map(maps::FLOWS).try_into().unwrap();
        m.iter().collect::<Result<_, _>>().expect("reading FLOWS")
    }

    /// The half-open connections, as (key, the flow each half will be).
    fn embryos(&self) -> Vec<(FlowKey, Flow)> {
        let m: BpfHashMap<_, FlowKey, Embryo> = self.map(maps::EMBRYOS).try_into().unwrap();
        m.iter()
            .map(|e| e.map(|(k, v)| (k, v.flow)))
            .collect::<Result<_, _>>()
            .expect("reading EMBRYOS")
    }

    /// One BPF_PROG_TEST_RUN of `frame` arriving on lb0: the program's return
    /// value and the frame as it left the program.
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self
            .loaded
            .ebpf
            .program(maps::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let ran = testrun::run_xdp(prog, frame, self.loaded.ifindex, 1)
            .unwrap_or_else(|e| panic!("{e:#}"));
        (ran.return_value, ran.frame)
    }

    /// Runs `case`, panicking with everything that differs; returns the
    /// output frame.
    fn check(&self, case: &Case) -> Vec<u8> {
        self.try_check(case).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs every case, in order, and panics with all that failed.
    fn check_all(&self, cases: &[Case]) {
        let failed: Vec<String> = cases
            .iter()
            .filter_map(|case| self.try_check(case).err())
            .collect();
        if !failed.is_empty() {
            panic!(
                "{} of {} cases failed:\n\n{}",
                failed.len(),
                cases.len(),
                failed.join("\n\n")
            );
        }
    }

    /// Runs `case`: the output frame, or everything that differs from the
    /// expectation.
    fn try_check(&self, case: &Case) -> Result<Vec<u8>, String> {
        let before = self.reasons();
        let (ret, out) = self.run(&case.input);
        let after = self.reasons();
        let mut problems = Vec::new();

        let action = Action::from_xdp(ret);
        if action != Ok(case.action) {
            problems.push(format!(
                "verdict: expected {}, got {}",
                case.action.name(),
                match action {
                    Ok(a) => a.name().to_owned(),
                    Err(v) => format!("return value {v}"),
                }
            ));
        }

        let moved = moved(&before, &after);
        let want = [(
            case.reason,
            Counter {
                packets: 1,
                bytes: case.input.len() as u64,
            },
        )];
        if moved != want {
            problems.push(format!(
                "reason counters: expected {}, got {}",
                show_moved(&want),
                show_moved(&moved)
            ));
        }

        let expected = match &case.out {
            Out::Unchanged => Some(case.input.clone()),
            Out::Frame(f) => Some(f.clone()),
            Out::NewFlow(f) => {
                let range = {
                    let c = self.config();
                    c.nat_port_min..=c.nat_port_max
                };
                if out.len() < l4_offset(&case.input) + 4 {
                    problems.push(format!("output is only {} bytes", out.len()));
                    None
                } else {
                    let (port, _) = ports_of(&out);
                    if !range.contains(&port) {
                        problems.push(format!(
                            "NAT source port {port} is outside the NAT range {range:?}"
                        ));
                    }
                    Some(f(port))
                }
            }
        };
        if let Some(expected) = expected
            && out != expected
        {
            problems.push(format!(
                "output frame differs ({} bytes expected, {} got; fields: {}):\n{}",
                expected.len(),
                out.len(),
                differing_fields(&expected, &out).join(", "),
                hex_diff(&expected, &out)
            ));
        }
        if case.action == Action::Tx
            && let Err(e) = verify_checksums(&out)
        {
            problems.push(e);
        }

        if !problems.is_empty() {
            return Err(format!(
                "case {:?} (input {} bytes):\n  {}",
                case.name,
                case.input.len(),
                problems.join("\n  ")
            ));
        }
        Ok(out)
    }
}

/// The reasons whose counters changed, and by how much.
fn moved(before: &ReasonTotals, after: &ReasonTotals) -> Vec<(Reason, Counter)> {
    Reason::ALL
        .iter()
        .map(|&r| {
            let (b, a) = (before.get(r), after.get(r));
            (
                r,
                Counter {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                },
            )
        })
        .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
        .collect()
}

fn show_moved(m: &[(Reason, Counter)]) -> String {
    if m.is_empty() {
        return "no counter moved".into();
    }
    m.iter()
        .map(|(r, c)| format!("{} +{} ({} bytes)", r.name(), c.packets, c.bytes))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Both checksums of an IPv4 TCP/UDP frame verify (recomputed from scratch
/// with lb_common::csum); a UDP checksum of 0 means "none" and passes.
fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let short = || {
        Err(format!(
            "a {}-byte frame cannot hold its headers",
            frame.len()
        ))
    };
    if frame.len() < ETH_HDR_LEN + 20 {
        return short();
    }
    let l4 = l4_offset(frame);
    let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    if l4 < ETH_HDR_LEN + 20 || frame.len() < ETH_HDR_LEN + tot || ETH_HDR_LEN + tot < l4 + 8 {
        return short();
    }
    let ip = &frame[ETH_HDR_LEN..l4];
    if checksum(ip) != [0, 0] {
        return Err(format!("IPv4 header checksum does not verify: {ip:02x?}"));
    }
    let segment = &frame[l4..ETH_HDR_LEN + tot];
    let proto = ip[9];
    if proto == PROTO_UDP && segment[6..8] == [0, 0] {
        return Ok(());
    }
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let pseudo = pseudo_header_sum(src, dst, proto, segment.len() as u16);
    if !fold(sum(segment, pseudo)) != 0 {
        return Err(format!("L4 (protocol {proto}) checksum does not verify"));
    }
    Ok(())
}

/// Names of the header fields (laid out as in `expected`) whose bytes differ.
fn differing_fields(expected: &[u8], got: &[u8]) -> Vec<String> {
    let mut fields: Vec<(&str, std::ops::Range<usize>)> =
        vec![("eth.dst", 0..6), ("eth.src", 6..12), ("eth.type", 12..14)];
    let ipv4 = expected.len() > ETH_HDR_LEN + 20 && expected[12..14] == ETH_P_IP.to_be_bytes();
    let mut l4 = usize::MAX;
    if ipv4 {
        let e = ETH_HDR_LEN;
        fields.extend([
            ("ip.ver_ihl", e..e + 1),
            ("ip.tos", e + 1..e + 2),
            ("ip.tot_len", e + 2..e + 4),
            ("ip.id", e + 4..e + 6),
            ("ip.frag", e + 6..e + 8),
            ("ip.ttl", e + 8..e + 9),
            ("ip.proto", e + 9..e + 10),
            ("ip.check", e + 10..e + 12),
            ("ip.src", e + 12..e + 16),
            ("ip.dst", e + 16..e + 20),
        ]);
        l4 = l4_offset(expected);
        if l4 > e + 20 {
            fields.push(("ip.options", e + 20..l4));
        }
        match expected[e + 9] {
            PROTO_TCP => fields.extend([
                ("tcp.sport", l4..l4 + 2),
                ("tcp.dport", l4 + 2..l4 + 4),
                ("tcp.seq", l4 + 4..l4 + 8),
                ("tcp.ack", l4 + 8..l4 + 12),
                ("tcp.doff", l4 + 12..l4 + 13),
                ("tcp.flags", l4 + 13..l4 + 14),
                ("tcp.window", l4 + 14..l4 + 16),
                ("tcp.check", l4 + 16..l4 + 18),
                ("tcp.urg", l4 + 18..l4 + 20),
                (
                    "tcp.options",
                    l4 + 20
                        ..(l4 + usize::from(expected.get(l4 + 12).copied().unwrap_or(0) >> 4) * 4)
                            .max(l4 + 20),
                ),
            ]),
            PROTO_UDP => fields.extend([
                ("udp.sport", l4..l4 + 2),
                ("udp.dport", l4 + 2..l4 + 4),
                ("udp.len", l4 + 4..l4 + 6),
                ("udp.check", l4 + 6..l4 + 8),
            ]),
            _ => {}
        }
    }
    let covered = fields.iter().map(|(_, r)| r.end).max().unwrap_or(0);
    let n = expected.len().max(got.len());
    let mut names: Vec<String> = fields
        .into_iter()
        .filter(|(_, r)| r.clone().any(|i| expected.get(i) != got.get(i)))
        .map(|(name, _)| name.to_owned())
        .collect();
    if (covered..n).any(|i| expected.get(i) != got.get(i)) {
        names.push(if ipv4 && l4 != usize::MAX {
            "payload".into()
        } else {
            "rest".into()
        });
    }
    names
}

/// The two frames, 16 bytes a line like `xxd`: equal lines once, differing
/// lines as `-` expected / `+` got with the differing bytes marked.
fn hex_diff(expected: &[u8], got: &[u8]) -> String {
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let line = |f: &[u8], off: usize| f.get(off..(off + 16).min(f.len())).unwrap_or(&[]).to_vec();
    let mut s = String::new();
    for off in (0..expected.len().max(got.len())).step_by(16) {
        let (e, g) = (line(expected, off), line(got, off));
        if e == g {
            let _ = writeln!(s, "      {off:04x}  {}", hex(&e));
            continue;
        }
        let marks: String = (0..e.len().max(g.len()))
            .map(|i| if e.get(i) == g.get(i) { "   " } else { "^^ " })
            .collect();
        let _ = writeln!(s, "    - {off:04x}  {}", hex(&e));
        let _ = writeln!(s, "    + {off:04x}  {}", hex(&g));
        let _ = writeln!(s, "            {}", marks.trim_end());
    }
    s
}

// ---------------------------------------------------------------------------
// Flow table expectations.

fn flow_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> FlowKey {
    FlowKey {
        src: src.ip().octets(),
        dst: dst.ip().octets(),
        sport: src.port().to_be_bytes(),
        dport: dst.port().to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

/// One NATed connection `client → vip` via `snat → backend`.
struct Connection {
    client: SocketAddrV4,
    vip: SocketAddrV4,
    snat: SocketAddrV4,
    backend: SocketAddrV4,
    backend_id: u32,
    service: u32,
    proto: u8,
}

impl Connection {
    /// Its two FLOWS entries, `last_seen` and the next hop left 0 (see
    /// `normalized`), with the TCP flags each direction has seen.
    fn flows(&self, forward_seen: u8, reply_seen: u8) -> Vec<(FlowKey, Flow)> {
        let flow = |new_src: SocketAddrV4, new_dst: SocketAddrV4, seen, dir| Flow {
            new_src: new_src.ip().octets(),
            new_dst: new_dst.ip().octets(),
            new_sport: new_src.port().to_be_bytes(),
            new_dport: new_dst.port().to_be_bytes(),
            backend: self.backend_id,
            service: self.service,
            tcp_seen: seen,
            dir,
            ..Flow::default()
        };
        vec![
            (
                flow_key(self.client, self.vip, self.proto),
                flow(self.snat, self.backend, forward_seen, DIR_FORWARD),
            ),
            (
                flow_key(self.backend, self.snat, self.proto),
                flow(self.vip, self.client, reply_seen, DIR_REPLY),
            ),
        ]
    }
}

fn show_flow((k, f): &(FlowKey, Flow)) -> String {
    let a = |ip: [u8; 4], port: [u8; 2]| addr(ip.into(), u16::from_be_bytes(port));
    format!(
        "{} → {} /{} ⇒ {} → {} backend {} service {} seen {:#06b} dir {} flags {} last_seen {} hop {:?} at {}",
        a(k.src, k.sport),
        a(k.dst, k.dport),
        k.proto,
        a(f.new_src, f.new_sport),
        a(f.new_dst, f.new_dport),
        f.backend,
        f.service,
        f.tcp_seen,
        f.dir,
        f.flags,
        f.last_seen,
        f.hop,
        f.hop_at
    )
}

/// `flow` without what depends on the clock: `last_seen`, and the next
/// hop, which must be lb0 → the MAC of the flow's new destination once
/// resolved (and is checked here).
fn normalized(ifindex: u32, &(k, f): &(FlowKey, Flow)) -> Result<(FlowKey, Flow), String> {
    if f.hop_at != 0 {
        let want = NextHop {
            ifindex,
            smac: LB_MAC,
            dmac: mac_of_host(f.new_dst.into()),
        };
        if f.hop != want {
            return Err(format!(
                "next hop {:?}, expected {want:?}, in {}",
                f.hop,
                show_flow(&(k, f))
            ));
        }
    } else if f.hop != NextHop::default() {
        return Err(format!(
            "a next hop without a time in {}",
            show_flow(&(k, f))
        ));
    }
    Ok((
        k,
        Flow {
            last_seen: 0,
            hop_at: 0,
            hop: NextHop::default(),
            ..f
        },
    ))
}

/// FLOWS holds exactly `expected` (whose `last_seen` is ignored, but
/// must be set in the map, and whose next hops must be right where set).
fn assert_flows(dp: &Dataplane, after: &str, expected: &[(FlowKey, Flow)]) {
    let got = dp.flows();
    // Stamped with the data plane's clock, jiffies (lb_common::clock): at
    // most a minute old at the fastest HZ, and not from the future.
    let now = lb_common::clock::jiffies().expect("reading jiffies");
    let stamped = got
        .iter()
        .all(|(_, f)| f.last_seen <= now && now - f.last_seen < 60 * 1000);
    let sorted = |v: &[(FlowKey, Flow)]| {
        let mut v: Vec<(FlowKey, Flow)> = v
            .iter()
            .map(|e| {
                normalized(dp.loaded.ifindex, e)
                    .unwrap_or_else(|e| panic!("FLOWS after {after}: {e}"))
            })
            .collect();
        v.sort_by_key(|(k, _)| bytemuck::bytes_of(k).to_vec());
        v
    };
    let list = |v: &[(FlowKey, Flow)]| {
        v.iter()
            .map(|e| format!("\n    {}", show_flow(e)))
            .collect::<String>()
    };
    assert!(
        stamped && sorted(&got) == sorted(expected),
        "FLOWS after {after}:\n  expected:{}\n  got:{}",
        list(&sorted(expected)),
        list(&{
            let mut got = got.clone();
            got.sort_by_key(|(k, _)| bytemuck::bytes_of(k).to_vec());
            got
        })
    );
}

// ---------------------------------------------------------------------------
// The tables.

/// Rows 1-3: a TCP connection's handshake and first data segment through
/// the NAT both ways. The SYN makes a half-open connection (EMBRYOS), not
/// a flow; the client's ACK of the backend's SYN-ACK makes it a flow.
#[test]
fn tcp_connection_is_nated_both_ways() {
    in_own_netns("tcp_connection_is_nated_both_ways", || {
        let dp = Dataplane::start();
        let (conn, backend_mac) = open(
            &dp,
            40000,
            "1 SYN client → VIP: half-open, NATed to the Maglev backend",
        );
        let Connection {
            client,
            vip,
            snat,
            backend,
            ..
        } = conn;
        assert_flows(&dp, "the SYN", &[]);
        assert_embryos(&dp, "the SYN", &conn.flows(SEEN_SYN, 0));

        dp.check(&Case::new(
            "2 reply: backend SYN-ACK → reverse NAT to VIP → client",
            syn_ack(wire(backend_mac, backend, LB_MAC, snat)).build(),
            Action::Tx,
            Reason::TxReply,
            Out::Frame(syn_ack(wire(LB_MAC, vip, CLIENT_MAC, client)).build()),
        ));
        assert_flows(&dp, "the SYN-ACK", &[]);

        dp.check(&Case::new(
            "3 the client's ACK of the SYN-ACK (with data): a flow now, same backend and NAT port",
            request(client_to_vip(40000)).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, snat, backend_mac, backend)).build()),
        ));
        assert_flows(
            &dp,
            "the handshake's ACK",
            &conn.flows(SEEN_SYN | SEEN_ACK, SEEN_SYN | SEEN_ACK),
        );
        assert_embryos(&dp, "the handshake's ACK", &[]);

        dp.check(&Case::new(
            "4 established: the backend's answer → client",
            request(wire(backend_mac, backend, LB_MAC, snat)).build(),
            Action::Tx,
            Reason::TxReply,
            Out::Frame(request(wire(LB_MAC, vip, CLIENT_MAC, client)).build()),
        ));
    });
}

/// A spoofed SYN's connection never completes: an ACK that does not
/// acknowledge the backend's SYN-ACK (a blind spoofer's guess) is
/// forwarded for the backend to judge, but makes no flow; an RST ends the
/// half-open connection; an RST of no connection makes no state.
#[test]
fn a_handshake_only_its_own_ack_completes() {
    in_own_netns("a_handshake_only_its_own_ack_completes", || {
        let dp = Dataplane::start();
        let (conn, backend_mac) = establish(&dp, 40001);
        let guess = |w: Wire| {
            w.tcp()
                .flags(TCP_ACK)
                .seq(CLIENT_ISN + 1)
                .ack(SERVER_ISN + 2)
                .build()
        };
        dp.check(&Case::new(
            "an ACK of the wrong number: forwarded, no flow",
            guess(client_to_vip(40001)),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(guess(wire(LB_MAC, conn.snat, backend_mac, conn.backend))),
        ));
        assert_flows(&dp, "a wrong ACK", &[]);
        assert_eq!(dp.embryos().len(), 2, "the half-open connection stays");

        let rst = |w: Wire| w.tcp().flags(TCP_RST).seq(CLIENT_ISN + 1).build();
        dp.check(&Case::new(
            "the client's RST: forwarded, the half-open connection gone",
            rst(client_to_vip(40001)),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(rst(wire(LB_MAC, conn.snat, backend_mac, conn.backend))),
        ));
        assert_embryos(&dp, "the RST", &[]);
        dp.check(&Case::new(
            "an RST of no connection: dropped, no state",
            rst(client_to_vip(40002)),
            Action::Drop,
            Reason::DropRstNoFlow,
            Out::Unchanged,
        ));
        assert_embryos(&dp, "an RST of nothing", &[]);
        assert_flows(&dp, "an RST of nothing", &[]);
    });
}

/// Row 12c: a client retransmits its SYN after its half-open connection's
/// NAT port went to a newer one: the SYN opens the connection anew (here
/// taking the port back, the newer one being the oldest it probes) rather
/// than going out on a port whose replies now reach another client.
#[test]
fn a_retransmitted_syn_whose_port_was_reclaimed_opens_anew() {
    in_own_netns(
        "a_retransmitted_syn_whose_port_was_reclaimed_opens_anew",
        || {
            let mut dp = Dataplane::start();
            dp.change(|d| d.nat_ports = (20000, 20000));
            dp.set_api_weights([1, 0, 0]);
            let backend = addr(BACKEND_HOSTS[0].0, API_PORT);
            let backend_mac = BACKEND_HOSTS[0].1;
            let snat = addr(SNAT, 20000);
            let vip = addr(VIP, API_PORT);
            let client_b = wire(CLIENT_B_MAC, addr(CLIENT_B, 40000), LB_MAC, vip);
            let to_backend = || syn(wire(LB_MAC, snat, backend_mac, backend)).build();
            let forwarded = |what| {
                Case::new(
                    what,
                    syn(client_to_vip(40000)).build(),
                    Action::Tx,
                    Reason::TxForward,
                    Out::Frame(to_backend()),
                )
            };
            dp.check_all(&[
                forwarded("12c client A's SYN takes the only NAT port"),
                Case::new(
                    "12c client B's SYN reclaims it",
                    syn(client_b).build(),
                    Action::Tx,
                    Reason::TxForward,
                    Out::Frame(to_backend()),
                ),
                forwarded("12c client A's SYN again: opened anew, the port reclaimed back"),
            ]);
            let a = addr(CLIENT, 40000);
            let reply_key = flow_key(backend, snat, PROTO_TCP);
            let embryos = dp.embryos();
            let owner = embryos
                .iter()
                .find(|(k, _)| *k == reply_key)
                .map(|(_, f)| SocketAddrV4::new(f.new_dst.into(), u16::from_be_bytes(f.new_dport)));
            assert_eq!(
                owner,
                Some(a),
                "the NAT port's replies must go to client A again: {embryos:?}"
            );
            assert_eq!(
                embryos.len(),
                3,
                "A's two halves and B's orphaned forward half: {embryos:?}"
            );
        },
    );
}

/// The backend's SYN-ACK retransmission (its client did not answer the
/// first within a second, as a spoofed source never does) goes back to the
/// backend as an RST, and the half-open connection is gone: the backend
/// keeps a flood's half-open connection a second, not a minute, and the
/// NAT port is free again.
#[test]
fn a_syn_ack_retransmission_resets_the_backend_and_frees_the_port() {
    in_own_netns(
        "a_syn_ack_retransmission_resets_the_backend_and_frees_the_port",
        || {
            let dp = Dataplane::start();
            let (conn, backend_mac) = establish(&dp, 40003);
            dp.check(&Case::new(
                "the SYN-ACK again: an RST back to the backend",
                syn_ack(wire(backend_mac, conn.backend, LB_MAC, conn.snat)).build(),
                Action::Tx,
                Reason::TxResetBackend,
                Out::Frame(
                    wire(LB_MAC, conn.snat, backend_mac, conn.backend)
                        .tcp()
                        .flags(TCP_RST)
                        .ip_id(0)
                        .seq(CLIENT_ISN + 1)
                        .tcp_data_offset(6)
                        .payload(&MSS_1460)
                        .build(),
                ),
            ));
            assert_embryos(&dp, "a SYN-ACK retransmission", &[]);
            assert_flows(&dp, "a SYN-ACK retransmission", &[]);
        },
    );
}

/// EMBRYOS holds exactly `expected`, compared as [`assert_flows`] does.
fn assert_embryos(dp: &Dataplane, after: &str, expected: &[(FlowKey, Flow)]) {
    let norm = |v: &[(FlowKey, Flow)]| {
        let mut v: Vec<(FlowKey, Flow)> = v
            .iter()
            .map(|e| {
                normalized(dp.loaded.ifindex, e)
                    .unwrap_or_else(|e| panic!("EMBRYOS after {after}: {e}"))
            })
            .collect();
        v.sort_by_key(|(k, _)| bytemuck::bytes_of(k).to_vec());
        v
    };
    let (got, want) = (norm(&dp.embryos()), norm(expected));
    assert!(
        got == want,
        "EMBRYOS after {after}:\n  expected:{}\n  got:{}",
        want.iter()
            .map(|e| format!("\n    {}", show_flow(e)))
            .collect::<String>(),
        got.iter()
            .map(|e| format!("\n    {}", show_flow(e)))
            .collect::<String>()
    );
}

/// A client's SYN from CLIENT:`port` to the VIP: a new flow to the Maglev
/// backend from a NAT port in range, checked byte for byte (row 1).
fn open(dp: &Dataplane, port: u16, what: &'static str) -> (Connection, Mac) {
    let client = addr(CLIENT, port);
    let vip = addr(VIP, API_PORT);
    let (backend_id, backend) = dp.maglev_choice(client, vip, PROTO_TCP);
    let out = dp.check(&Case::new(
        what,
        syn(client_to_vip(port)).build(),
        Action::Tx,
        Reason::TxForward,
        new_flow_to(backend, |w| syn(w).build()),
    ));
    let conn = Connection {
        client,
        vip,
        snat: addr(SNAT, ports_of(&out).0),
        backend,
        backend_id,
        service: 0,
        proto: PROTO_TCP,
    };
    (conn, mac_of_backend(*backend.ip()))
}

/// A TCP connection from CLIENT:`port` to the VIP, opened by its SYN
/// (row 1) and the backend's SYN-ACK (row 3).
fn establish(dp: &Dataplane, port: u16) -> (Connection, Mac) {
    let (conn, backend_mac) = open(dp, port, "SYN opening a connection");
    dp.check(&Case::new(
        "its SYN-ACK",
        syn_ack(wire(backend_mac, conn.backend, LB_MAC, conn.snat)).build(),
        Action::Tx,
        Reason::TxReply,
        Out::Frame(syn_ack(wire(LB_MAC, conn.vip, CLIENT_MAC, conn.client)).build()),
    ));
    (conn, backend_mac)
}

impl Connection {
    /// A data segment each way: client → backend, backend → client.
    fn both_ways(&self, dp: &Dataplane, backend_mac: Mac, what: &'static str) {
        dp.check(&Case::new(
            what,
            request(client_to_vip(self.client.port())).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, self.snat, backend_mac, self.backend)).build()),
        ));
        dp.check(&Case::new(
            what,
            request(wire(backend_mac, self.backend, LB_MAC, self.snat)).build(),
            Action::Tx,
            Reason::TxReply,
            Out::Frame(request(wire(LB_MAC, self.vip, CLIENT_MAC, self.client)).build()),
        ));
    }
}

/// Rows 4-5: what is not a service's nor a NATed flow's passes untouched.
#[test]
fn traffic_that_is_not_ours_passes_untouched() {
    in_own_netns("traffic_that_is_not_ours_passes_untouched", || {
        let dp = Dataplane::start();
        let to_node = |port| wire(CLIENT_MAC, addr(CLIENT, 40000), LB_MAC, addr(SNAT, port));
        let backend = addr(BACKEND_HOSTS[0].0, API_PORT);
        let backend_mac = BACKEND_HOSTS[0].1;
        dp.check_all(&[
            Case::pass(
                "4 TCP to the node's own address (ssh)",
                syn(to_node(22)).build(),
                Reason::PassNotService,
            ),
            Case::pass(
                "4 ICMP echo to the node",
                icmp_echo(),
                Reason::PassNotService,
            ),
            Case::pass("4 ARP request for the VIP", arp_request(), Reason::PassArp),
            Case::pass("4 IPv6", ipv6_datagram(), Reason::PassIpv6),
            Case::pass(
                "4 VLAN-tagged SYN to the VIP",
                vlan_tagged_syn(),
                Reason::PassOtherEthertype,
            ),
            Case::pass(
                "4 TCP to the VIP on a port that is no service",
                syn(wire(CLIENT_MAC, addr(CLIENT, 40000), LB_MAC, addr(VIP, 22))).build(),
                Reason::PassNotService,
            ),
            Case::pass(
                "4 UDP to the TCP service's VIP:port",
                datagram(wire(
                    CLIENT_MAC,
                    addr(CLIENT, 40000),
                    LB_MAC,
                    addr(VIP, API_PORT),
                ))
                .build(),
                Reason::PassNotService,
            ),
            Case::pass(
                "5 reply-looking SYN-ACK to a NAT port with no flow",
                syn_ack(wire(backend_mac, backend, LB_MAC, addr(SNAT, 25000))).build(),
                Reason::PassNotService,
            ),
        ]);
        assert_flows(&dp, "traffic that is not ours", &[]);
    });
}

/// Row 6: malformed packets, to the VIP unless said otherwise.
#[test]
fn malformed_packets_are_dropped_or_passed_on_purpose() {
    in_own_netns("malformed_packets_are_dropped_or_passed_on_purpose", || {
        let dp = Dataplane::start();
        let to_vip = || syn(client_to_vip(40200));
        let udp_to_vip = || {
            datagram(wire(
                CLIENT_MAC,
                addr(CLIENT, 40200),
                LB_MAC,
                addr(VIP, DNS_PORT),
            ))
        };
        let short = syn(client_to_vip(40200)).build()[..10].to_vec();
        dp.check_all(&[
            Case::pass(
                "6 IHL < 5",
                to_vip().ihl(4).build(),
                Reason::PassMalformedIpv4,
            ),
            Case::drop(
                "6 IPv4 total length beyond the frame",
                to_vip().ip_total_len_excess(100).build(),
                Reason::DropBadIpLength,
            ),
            Case::drop(
                "6 TCP without flags",
                to_vip().flags(0).build(),
                Reason::DropTcpNoFlags,
            ),
            Case::drop(
                "6 TCP data offset < 5",
                syn(client_to_vip(40200))
                    .tcp_data_offset(4)
                    .payload(&[])
                    .build(),
                Reason::DropMalformedL4,
            ),
            Case::drop(
                "6 TCP data offset beyond the segment",
                syn(client_to_vip(40200)).tcp_data_offset(15).build(),
                Reason::DropMalformedL4,
            ),
            Case::drop(
                "6 UDP length beyond the datagram, to the UDP service",
                udp_to_vip().udp_len_excess(100).build(),
                Reason::DropBadUdpLength,
            ),
            Case::pass(
                "6 first fragment (MF)",
                to_vip().more_fragments().build(),
                Reason::PassFragment,
            ),
            Case::pass(
                "6 later fragment (offset 185)",
                to_vip().fragment_offset(185).build(),
                Reason::PassFragment,
            ),
            Case::pass(
                "6 frame shorter than an Ethernet header",
                short,
                Reason::PassShortEthernet,
            ),
        ]);
        assert_flows(&dp, "malformed packets", &[]);
    });
}

/// Row 6, truncated L4 headers: the ports are readable, the rest is not.
/// Addressed to a service it is dropped (it could only harm the flow it
/// claims to belong to); anything else is the node's own business.
#[test]
fn truncated_l4_header_to_a_service_is_dropped() {
    in_own_netns("truncated_l4_header_to_a_service_is_dropped", || {
        let dp = Dataplane::start();
        dp.check_all(&[
            Case::drop(
                "6 truncated TCP header (10 of 20 bytes) to the VIP",
                syn(client_to_vip(40300))
                    .payload(&[])
                    .truncate_l4(10)
                    .build(),
                Reason::DropMalformedL4,
            ),
            Case::drop(
                "6 truncated UDP header (6 of 8 bytes) to the UDP VIP",
                datagram(wire(
                    CLIENT_MAC,
                    addr(CLIENT, 40300),
                    LB_MAC,
                    addr(VIP, DNS_PORT),
                ))
                .payload(&[])
                .truncate_l4(6)
                .build(),
                Reason::DropMalformedL4,
            ),
            Case::pass(
                "6 truncated TCP header (10 of 20 bytes) to the node's own port 22",
                syn(wire(
                    CLIENT_MAC,
                    addr(CLIENT, 40300),
                    LB_MAC,
                    addr(SNAT, 22),
                ))
                .payload(&[])
                .truncate_l4(10)
                .build(),
                Reason::PassNotService,
            ),
        ]);
    });
}

/// Row 7, and Ethernet padding: what NAT must carry along untouched.
#[test]
fn ip_options_and_ethernet_padding_survive_nat() {
    in_own_netns("ip_options_and_ethernet_padding_survive_nat", || {
        let dp = Dataplane::start();
        let vip = addr(VIP, API_PORT);
        let (_, b1) = dp.maglev_choice(addr(CLIENT, 40001), vip, PROTO_TCP);
        let (_, b2) = dp.maglev_choice(addr(CLIENT, 40002), vip, PROTO_TCP);
        let (_, b3) = dp.maglev_choice(addr(CLIENT, 40003), vip, PROTO_TCP);
        dp.check_all(&[
            Case::new(
                "7 SYN with IP option Router Alert (IHL 6)",
                syn(client_to_vip(40001))
                    .ip_options(&IPOPT_ROUTER_ALERT)
                    .build(),
                Action::Tx,
                Reason::TxForward,
                new_flow_to(b1, |w| syn(w).ip_options(&IPOPT_ROUTER_ALERT).build()),
            ),
            Case::new(
                "7 SYN with one NOP and 3 bytes of padding (IHL 6)",
                syn(client_to_vip(40002)).ip_options(&[IPOPT_NOP]).build(),
                Action::Tx,
                Reason::TxForward,
                new_flow_to(b2, |w| syn(w).ip_options(&[IPOPT_NOP]).build()),
            ),
            Case::new(
                "7 SYN padded to 60 bytes on the wire",
                padded(
                    request(client_to_vip(40003))
                        .flags(TCP_SYN)
                        .payload(&[])
                        .build(),
                ),
                Action::Tx,
                Reason::TxForward,
                new_flow_to(b3, |w| {
                    padded(request(w).flags(TCP_SYN).payload(&[]).build())
                }),
            ),
        ]);
    });
}

/// Row 8: the UDP service, with and without a UDP checksum, and a reply.
#[test]
fn udp_service_is_nated_with_and_without_checksum() {
    in_own_netns("udp_service_is_nated_with_and_without_checksum", || {
        let dp = Dataplane::start();
        let vip = addr(VIP, DNS_PORT);
        let from = |port| wire(CLIENT_MAC, addr(CLIENT, port), LB_MAC, vip);
        let (backend_id, b1) = dp.maglev_choice(addr(CLIENT, 41000), vip, PROTO_UDP);
        let (_, b2) = dp.maglev_choice(addr(CLIENT, 41001), vip, PROTO_UDP);

        let out = dp.check(&Case::new(
            "8 UDP to the UDP VIP:port, with a checksum",
            datagram(from(41000)).build(),
            Action::Tx,
            Reason::TxForward,
            new_flow_to(b1, |w| datagram(w).build()),
        ));
        let out0 = dp.check(&Case::new(
            "8 UDP to the UDP VIP:port, checksum 0 (none)",
            without_udp_checksum(datagram(from(41001)).build()),
            Action::Tx,
            Reason::TxForward,
            new_flow_to(b2, |w| without_udp_checksum(datagram(w).build())),
        ));
        let at = l4_offset(&out0) + 6;
        assert_eq!(out0[at..at + 2], [0, 0], "a UDP checksum of 0 must stay 0");

        let snat = addr(SNAT, ports_of(&out).0);
        let b1_mac = mac_of_backend(*b1.ip());
        dp.check(&Case::new(
            "8 UDP reply backend → SNAT, reverse NAT to VIP:53 → client",
            datagram(wire(b1_mac, b1, LB_MAC, snat)).build(),
            Action::Tx,
            Reason::TxReply,
            Out::Frame(datagram(wire(LB_MAC, vip, CLIENT_MAC, addr(CLIENT, 41000))).build()),
        ));
        let conn = Connection {
            client: addr(CLIENT, 41000),
            vip,
            snat,
            backend: b1,
            backend_id,
            service: 1,
            proto: PROTO_UDP,
        };
        let flows = dp.flows();
        for entry in conn.flows(0, 0) {
            assert!(
                flows
                    .iter()
                    .any(|e| normalized(dp.loaded.ifindex, e).is_ok_and(|n| n == entry)),
                "FLOWS lacks {}",
                show_flow(&entry)
            );
        }
        assert_eq!(flows.len(), 4, "two UDP flows, two entries each");
    });
}

/// Row 9: a node that is not active (VRRP backup) leaves VIP traffic alone.
#[test]
fn inactive_node_passes_vip_traffic() {
    in_own_netns("inactive_node_passes_vip_traffic", || {
        let mut dp = Dataplane::start();
        dp.change(|d| d.active = false);
        dp.check(&Case::pass(
            "9 SYN to the VIP on a backup",
            syn(client_to_vip(40000)).build(),
            Reason::PassNotActive,
        ));
        assert_flows(&dp, "a SYN on a backup", &[]);

        // Demoted with a connection NATed here: its client's packets are
        // the new master's now; its backend's replies still come here and
        // are served.
        dp.change(|d| d.active = true);
        let (conn, backend_mac) = establish(&dp, 40001);
        dp.change(|d| d.active = false);
        dp.check(&Case::pass(
            "9 a demoted node's established connection, client side",
            request(client_to_vip(40001)).build(),
            Reason::PassNotActive,
        ));
        dp.check(&Case::new(
            "9 a demoted node's established connection, backend side",
            request(wire(backend_mac, conn.backend, LB_MAC, conn.snat)).build(),
            Action::Tx,
            Reason::TxReply,
            Out::Frame(request(wire(LB_MAC, conn.vip, CLIENT_MAC, conn.client)).build()),
        ));
    });
}

/// Row 10: a service without usable backends.
#[test]
fn service_without_backends_passes() {
    in_own_netns("service_without_backends_passes", || {
        let mut dp = Dataplane::start();
        // Every backend down or drained (weight 0): the reconciler writes
        // the service with table_size 0.
        dp.set_api_weights([0, 0, 0]);
        let entry = dp.loaded.reconciler.maps().service(&TCP_SERVICE).unwrap();
        assert_eq!(
            entry.map(|s| s.table_size),
            Some(0),
            "SERVICES entry {entry:?}"
        );
        dp.check(&Case::pass(
            "10 SYN to a service with table_size 0",
            syn(client_to_vip(40000)).build(),
            Reason::PassNoBackend,
        ));
        assert_flows(&dp, "a SYN to a service without backends", &[]);
    });
}

/// Row 11: the backend is this node (stacked master): deliver locally and
/// remember it, so the whole connection stays local.
#[test]
fn local_backend_is_delivered_locally() {
    in_own_netns("local_backend_is_delivered_locally", || {
        let mut dp = Dataplane::start();
        let local_backend = addr(SNAT, API_PORT);
        dp.change(|d| {
            let api = d
                .services
                .iter_mut()
                .find(|s| s.key == TCP_SERVICE)
                .unwrap();
            api.backends = vec![DesiredBackend {
                name: "this node".into(),
                addr: local_backend,
                weight: 1,
                local: true,
            }];
        });
        let (backend, service) = (dp.backend_id(local_backend), dp.service_id(TCP_SERVICE));
        dp.check(&Case::pass(
            "11 SYN whose Maglev backend is local",
            syn(client_to_vip(40000)).build(),
            Reason::PassLocalBackend,
        ));
        let local = |seen| {
            vec![(
                flow_key(addr(CLIENT, 40000), addr(VIP, API_PORT), PROTO_TCP),
                Flow {
                    backend,
                    service,
                    tcp_seen: seen,
                    dir: DIR_FORWARD,
                    flags: FLOW_LOCAL,
                    ..Flow::default()
                },
            )]
        };
        assert_flows(&dp, "a SYN to a local backend", &local(SEEN_SYN));
        dp.check(&Case::pass(
            "11 data segment of the local flow",
            request(client_to_vip(40000)).build(),
            Reason::PassLocalBackend,
        ));
        assert_flows(&dp, "the local flow's data", &local(SEEN_SYN | SEEN_ACK));
    });
}

/// Row 12: one NAT port, one backend: a second client's connection cannot
/// get a port.
/// Row 12: one NAT port, held by an established connection, is never
/// taken: another client's SYN to the same backend is dropped.
#[test]
fn nat_port_exhaustion_drops_new_flows() {
    in_own_netns("nat_port_exhaustion_drops_new_flows", || {
        let mut dp = Dataplane::start();
        dp.change(|d| d.nat_ports = (20000, 20000));
        // Every new flow to BACKEND_HOSTS[0].
        dp.set_api_weights([1, 0, 0]);
        let (conn, backend_mac) = establish(&dp, 40000);
        assert_eq!(conn.snat, addr(SNAT, 20000));
        dp.check(&Case::new(
            "12 client A's ACK: its connection holds the only NAT port",
            request(client_to_vip(40000)).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, conn.snat, backend_mac, conn.backend)).build()),
        ));
        let client_b = wire(
            CLIENT_B_MAC,
            addr(CLIENT_B, 40000),
            LB_MAC,
            addr(VIP, API_PORT),
        );
        dp.check(&Case::drop(
            "12 client B's SYN to the same backend finds no NAT port",
            syn(client_b).build(),
            Reason::DropNatPortsExhausted,
        ));
        conn.both_ways(&dp, backend_mac, "12 client A's connection goes on");
        assert_flows(
            &dp,
            "port exhaustion",
            &conn.flows(SEEN_SYN | SEEN_ACK, SEEN_SYN | SEEN_ACK),
        );
        assert_embryos(&dp, "port exhaustion", &[]);
    });
}

/// Row 12d: a pool of SNAT addresses multiplies a backend's NAT ports:
/// with one port per address, two connections to one backend both get a
/// (SNAT address, port) pair, a third finds none.
#[test]
fn a_snat_pool_adds_ports_per_address() {
    in_own_netns("a_snat_pool_adds_ports_per_address", || {
        let mut dp = Dataplane::start();
        let snat2 = Ipv4Addr::new(10, 0, 0, 3);
        dp.change(|d| {
            d.nat_ports = (20000, 20000);
            d.snat_ips = vec![SNAT, snat2];
        });
        dp.set_api_weights([1, 0, 0]);
        // A connection from CLIENT:`port`, from whichever pool address the
        // program chose (the rest of the frame checked as in `open`).
        let open_from_pool = |port: u16| {
            let client = addr(CLIENT, port);
            let vip = addr(VIP, API_PORT);
            let (backend_id, backend) = dp.maglev_choice(client, vip, PROTO_TCP);
            let mac = mac_of_backend(*backend.ip());
            let (ret, out) = dp.run(&syn(client_to_vip(port)).build());
            assert_eq!(ret, 3, "12d SYN from port {port}: XDP_TX expected");
            let snat = addr(
                Ipv4Addr::new(out[26], out[27], out[28], out[29]),
                u16::from_be_bytes([out[34], out[35]]),
            );
            assert_eq!(
                out,
                syn(wire(LB_MAC, snat, mac, backend)).build(),
                "12d SYN from port {port}: NATed frame"
            );
            let conn = Connection {
                client,
                vip,
                snat,
                backend,
                backend_id,
                service: 0,
                proto: PROTO_TCP,
            };
            dp.check(&Case::new(
                "12d the backend's SYN-ACK",
                syn_ack(wire(mac, backend, LB_MAC, snat)).build(),
                Action::Tx,
                Reason::TxReply,
                Out::Frame(syn_ack(wire(LB_MAC, vip, CLIENT_MAC, client)).build()),
            ));
            (conn, mac)
        };
        let (a, a_mac) = open_from_pool(40000);
        dp.check(&Case::new(
            "12d the first connection's ACK",
            request(client_to_vip(40000)).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, a.snat, a_mac, a.backend)).build()),
        ));
        let (b, b_mac) = open_from_pool(40001);
        dp.check(&Case::new(
            "12d the second connection's ACK",
            request(client_to_vip(40001)).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, b.snat, b_mac, b.backend)).build()),
        ));
        let mut used = [*a.snat.ip(), *b.snat.ip()];
        used.sort();
        assert_eq!(
            used,
            [SNAT, snat2],
            "the two connections must hold one SNAT address each"
        );
        dp.check(&Case::drop(
            "12d a third connection to the backend finds no pair",
            syn(client_to_vip(40002)).build(),
            Reason::DropNatPortsExhausted,
        ));
        a.both_ways(&dp, a_mac, "12d the first connection goes on");
        b.both_ways(&dp, b_mac, "12d the second connection goes on");
    });
}

/// Row 12b: a NAT port held only by a half-open connection (a SYN flood's)
/// goes to a new connection when the backend has no other: the old one can
/// no longer complete, the new one can. What the backend still says about
/// the old one (its SYN-ACK retransmission, or the challenge ACK the new
/// SYN draws) goes back to it as an RST, so the new one can open.
#[test]
fn half_open_connections_give_their_nat_port_to_a_new_one() {
    in_own_netns(
        "half_open_connections_give_their_nat_port_to_a_new_one",
        || {
            let mut dp = Dataplane::start();
            dp.change(|d| d.nat_ports = (20000, 20000));
            dp.set_api_weights([1, 0, 0]);
            let backend = addr(BACKEND_HOSTS[0].0, API_PORT);
            let backend_mac = BACKEND_HOSTS[0].1;
            let snat = addr(SNAT, 20000);
            let client_b = addr(CLIENT_B, 40000);
            let vip = addr(VIP, API_PORT);
            let b_to_vip = || wire(CLIENT_B_MAC, client_b, LB_MAC, vip);
            let from_backend = || wire(backend_mac, backend, LB_MAC, snat);
            let to_backend = || wire(LB_MAC, snat, backend_mac, backend);
            // Client B's own sequence space.
            const ISN_B: u32 = CLIENT_ISN + 1000;
            let syn_b = |w: Wire| syn(w).seq(ISN_B).build();
            let syn_ack_b = |w: Wire| syn_ack(w).ack(ISN_B + 1).build();
            let ack_b = |w: Wire| request(w).seq(ISN_B + 1).build();
            // What the backend says of client A's connection, and the RST.
            let challenge = |w: Wire| {
                w.tcp()
                    .flags(TCP_ACK)
                    .ip_id(7)
                    .seq(SERVER_ISN + 1)
                    .ack(CLIENT_ISN + 1)
                    .build()
            };
            let rst = |w: Wire, ip_id: u16| w.tcp().flags(TCP_RST).ip_id(ip_id).seq(CLIENT_ISN + 1);
            dp.check_all(&[
                Case::new(
                    "12b client A's SYN (never completed) takes the only NAT port",
                    syn(client_to_vip(40000)).build(),
                    Action::Tx,
                    Reason::TxForward,
                    Out::Frame(syn(to_backend()).build()),
                ),
                Case::new(
                    "12b client B's SYN reclaims it",
                    syn_b(b_to_vip()),
                    Action::Tx,
                    Reason::TxForward,
                    Out::Frame(syn_b(to_backend())),
                ),
                Case::drop(
                    "12b client A's late ACK: its port is gone",
                    request(client_to_vip(40000)).build(),
                    Reason::DropEmbryoLost,
                ),
                Case::new(
                    "12b the backend's challenge ACK for A's connection: an RST back to it",
                    challenge(from_backend()),
                    Action::Tx,
                    Reason::TxResetBackend,
                    Out::Frame(rst(to_backend(), 7).build()),
                ),
                Case::new(
                    "12b the backend's SYN-ACK retransmission for A: an RST back to it",
                    syn_ack(from_backend()).build(),
                    Action::Tx,
                    Reason::TxResetBackend,
                    Out::Frame(
                        rst(to_backend(), 0)
                            .tcp_data_offset(6)
                            .payload(&MSS_1460)
                            .build(),
                    ),
                ),
                Case::new(
                    "12b the backend's SYN-ACK for B goes to client B",
                    syn_ack_b(from_backend()),
                    Action::Tx,
                    Reason::TxReply,
                    Out::Frame(syn_ack_b(wire(LB_MAC, vip, CLIENT_B_MAC, client_b))),
                ),
                Case::new(
                    "12b client B's ACK completes its connection",
                    ack_b(b_to_vip()),
                    Action::Tx,
                    Reason::TxForward,
                    Out::Frame(ack_b(to_backend())),
                ),
            ]);
            let conn = Connection {
                client: client_b,
                vip,
                snat,
                backend,
                backend_id: dp.backend_id(backend),
                service: dp.service_id(TCP_SERVICE),
                proto: PROTO_TCP,
            };
            assert_flows(
                &dp,
                "a reclaimed port",
                &conn.flows(SEEN_SYN | SEEN_ACK, SEEN_SYN | SEEN_ACK),
            );
            assert_embryos(&dp, "a reclaimed port", &[]);
        },
    );
}

#[test]
fn full_flow_table_refuses_new_connections_keeps_established_ones() {
    in_own_netns("full_flow_table_refuses_new_connections", || {
        let mut dp = Dataplane::start();
        let (conn, backend_mac) = establish(&dp, 40000);
        dp.check(&Case::new(
            "13 the first connection's ACK",
            request(client_to_vip(40000)).build(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, conn.snat, backend_mac, conn.backend)).build()),
        ));
        let filler = dp.fill_flows();
        assert!(
            filler.len() as u32 >= MAX_FLOWS - 2,
            "FLOWS refused a flow after {} + 2 entries (max {MAX_FLOWS})",
            filler.len()
        );
        let full = dp.flows().len();
        // A SYN is half-open (EMBRYOS has room); its handshake's ACK, which
        // would make it a flow, is refused.
        let (second, second_mac) = establish(&dp, 40001);
        let ack = || request(client_to_vip(40001)).build();
        dp.check(&Case::drop(
            "13 a handshake's ACK into a full table",
            ack(),
            Reason::DropFlowTableFull,
        ));
        conn.both_ways(
            &dp,
            backend_mac,
            "13 established connection in a full table",
        );

        // Room for one entry: the reply half fits, the forward half does
        // not, and the reply half is given back.
        dp.remove_flow(&filler[0]);
        dp.check(&Case::drop(
            "13 the ACK again, with room for one half",
            ack(),
            Reason::DropFlowTableFull,
        ));
        assert_eq!(
            dp.flows().len(),
            full - 1,
            "a half-made connection stayed in FLOWS"
        );

        // Ageing made room: the client's retransmitted ACK completes it.
        dp.remove_flow(&filler[1]);
        dp.check(&Case::new(
            "13 the ACK once ageing made room",
            ack(),
            Action::Tx,
            Reason::TxForward,
            Out::Frame(request(wire(LB_MAC, second.snat, second_mac, second.backend)).build()),
        ));
        second.both_ways(
            &dp,
            second_mac,
            "13 a connection made after ageing made room",
        );
        assert_eq!(dp.flows().len(), full);
    });
}

/// Row 14: removing a service drains it: its established connections keep
/// flowing both ways until they end (or age out), new ones are not taken.
#[test]
fn removed_service_drains_its_connections() {
    in_own_netns("removed_service_drains_its_connections", || {
        let mut dp = Dataplane::start();
        let (conn, backend_mac) = establish(&dp, 40000);
        dp.change(|d| d.services.retain(|s| s.key != TCP_SERVICE));
        conn.both_ways(
            &dp,
            backend_mac,
            "14 established connection of a removed service",
        );
        dp.check(&Case::pass(
            "14 SYN to the removed service",
            syn(client_to_vip(40001)).build(),
            Reason::PassNotService,
        ));
    });
}
