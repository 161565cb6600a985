//! A fuzzer for the packet path (issue "Flood resistance", item 4): a
//! million random and mutated frames through BPF_PROG_TEST_RUN into xdplb,
//! loaded as the agent loads it, with live services: the test node of
//! `lab::node`, dataplane.rs's too (lb0 10.0.0.2/24 in a namespace of its
//! own, a TCP service VIP:6443 and a UDP service VIP:53 → :5353, three
//! backends each, written by the agent's reconciler). Every frame is
//! checked against these invariants:
//!
//! 1. A frame that is not ours (not addressed to a service, not a packet of
//!    a NATed flow or of a half-open connection) leaves with XDP_PASS, byte
//!    for byte as it came: the program never rewrites what is not its own.
//! 2. No state is made for it. The test keeps a model of FLOWS and of
//!    EMBRYOS (the half-open TCP connections), and every 4096 frames
//!    compares both of the kernel's tables with it, entry for entry (the
//!    rewrite, direction, backend and service; in EMBRYOS also the client's
//!    ISN + 1, the recorded SYN-ACK and the state): FLOWS grows by two
//!    entries per connection put in (a UDP flow opened, a TCP connection
//!    promoted) and by nothing else, no key of either names a client that
//!    never sent a frame to a service, and no key is in both.
//! 3. The counters add up: over every window of frames the deltas of
//!    REASON_STATS sum to the frames run and their bytes, exactly, and each
//!    reason's delta is the number of frames the model gave that reason
//!    (`pass_no_neigh` and `pass_fib_other` are counted together: which one
//!    a client address that is not a neighbour gets is the kernel FIB's
//!    business); every 4096 frames, EMBRYO_STATS (opened, promoted,
//!    reclaimed, reset) and each service's `new_flows` moved exactly by the
//!    events the model saw (a TCP connection counts as new when promoted).
//! 4. A frame to a service is either dropped, unchanged, with the reason
//!    for what is wrong with it (or `drop_rst_no_flow` for an RST of no
//!    connection, `drop_embryo_lost` for what a half-open connection must
//!    not pass), or NATed: exactly the backend, NAT port and half the
//!    model expects, only addresses, ports, checksums and (on XDP_TX) MACs
//!    changed, and both checksums (IPv4 header; TCP/UDP with the
//!    pseudo-header, over the IPv4 total length) verify when they did on
//!    input. NAT patches checksums (RFC 1624), so a frame whose checksum
//!    was already wrong must leave with exactly the same error: that is
//!    checked too. A UDP checksum of 0 ("none") stays 0.
//! 5. A TCP and a UDP connection established before the fuzz (the TCP one
//!    by its whole handshake) still NAT, byte for byte, to the same backend
//!    and NAT port afterwards.
//!
//! What the model holds the program to for TCP (lb-ebpf embryo.rs, and
//! lb-common's `Embryo`): a packet of no known connection, but an RST,
//! opens a half-open connection, both halves in EMBRYOS and nothing in
//! FLOWS, on the first NAT port of the probe sequence that neither table
//! holds, or else the port of the oldest half-open connection probed
//! (reclaimed); an RST of either side removes it; a SYN-opened one records
//! the backend's SYN-ACK if it acknowledges the client's SYN (else drops
//! it), and is promoted into FLOWS by the client's ACK of exactly that
//! SYN-ACK, and by nothing else; one picked up mid-stream is promoted by
//! the backend's first answer that is neither an RST nor a SYN-ACK; a
//! client's ACK whose reply half is gone (or another connection's) is
//! dropped and its half removed, while the other packets of such an
//! orphaned half are still NATed by it; a promotion FLOWS has no room for
//! is dropped and the connection stays half-open.
//!
//! The model re-states the program's documented rules on bytes (which
//! ethertypes, IHL, fragments, length checks, what is a service, the
//! handshake's numbers); it never sees how a frame was made, only its
//! bytes. Where it asks more than the program does, that is a bug found.
//! The first one: a UDP header cut short by the IPv4 total length (both
//! lengths agreeing on fewer than 8 bytes) was NATed; lb-ebpf's `validate`
//! now drops it (see [`validate`]). The second: any backend packet but an
//! RST or a SYN-ACK promoted a half-open connection opened by a SYN, which
//! only its client's ACK of the SYN-ACK may (see `Model::backend_answer`).
//!
//! Frames: first every truncation (0..=len bytes) of a dozen templates and
//! every single-bit flip of the headers of an established connection's
//! packets both ways; then random ones: SYN/ACK/data/FIN/RST to the TCP
//! service, datagrams to the UDP service, packets of NATed flows and of
//! half-open connections both ways (backends' SYN-ACKs acknowledging the
//! client's SYN, mostly, and clients' ACKs of recorded SYN-ACKs, mostly
//! exact, to complete handshakes), replies to NAT ports without a flow,
//! the node's own traffic, other IP protocols, ARP, IPv6, 802.1Q and QinQ
//! tags before IPv4, random bytes (raw, after an Ethernet header, after an
//! IPv4 header). About half the IPv4 ones are mutated: bit flips,
//! truncation, IPv4 total length and UDP length lies, IHL changes, IP
//! option bytes, TCP data offset and flags, fragment offsets and MF,
//! version and protocol changes, Ethernet padding, the ethertype; half of
//! the mutated frames get their checksums fixed afterwards, so a receiver
//! that checks them would take the frame.
//!
//! The test stands in for the agent's ageing of FLOWS (it removes all but
//! the established connections' flows now and then) and for EMBRYOS' LRU:
//! every 4096 frames it removes a few entries at random (1%), each half
//! on its own, which leaves orphans (halves whose other half is gone, or
//! whose NAT port another connection takes); the rest pile up until
//! half-open connections hold most NAT ports of the TCP backends, so that
//! new ones must reclaim ports, and above 40 000 entries three in four
//! go. It keeps EMBRYOS far from full, so that the kernel never evicts by
//! itself, which the model could not follow.
//!
//! Settings, from the environment (numbers may have `_`s; the seed may be
//! hex `0x...`):
//! - `XDPLB_FUZZ_FRAMES`: frames to run (default 1_000_000), e.g.
//!   `XDPLB_FUZZ_FRAMES=100000000 XDPLB_FUZZ_SEED=0x1234` for a long run.
//! - `XDPLB_FUZZ_SEED`: the generator's seed (default [`DEFAULT_SEED`]).
//! - `XDPLB_FUZZ_CHECK_EVERY`: frames between two reads of the reason
//!   counters (default 4096). A failing window names its first and last
//!   frame; `XDPLB_FUZZ_CHECK_EVERY=1` pins the frame.
//!
//! A failure prints the seed, the frame's index, how it was made, its
//! bytes and the program's output (hex), and the settings that replay the
//! run up to it: the run is deterministic for a seed (the checking windows
//! do not change it). The one thing the kernel's clock decides, which
//! half-open connection is the oldest when a port must be reclaimed (many
//! are born in the same jiffy), the test takes from the model: it stamps
//! the candidates' birth times in EMBRYOS, in the model's order, before
//! such a frame runs (see `Model::prepare`).
//!
//! Cost: one BPF_PROG_TEST_RUN syscall a frame, the frame and output
//! buffers reused (no allocation per frame), FLOWS and EMBRYOS read in
//! batches (`BPF_MAP_LOOKUP_BATCH`) every 4096 frames. A million frames
//! take about a minute in a debug build on a 2-vCPU VM (15 000 to 20 000
//! frames/s), much of it comparing EMBRYOS' tens of thousands of entries
//! with the model.
//!
//! ```text
//! cargo build -p lb-userspace -p lab --bins
//! XDPLB_BIN_DIR=$PWD/target/debug cargo test -p lab --test fuzz -- --nocapture
//! ```
//!
//! Needs root (BPF, namespaces), like the lab tests.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use bytemuck::Zeroable as _;
use lab::{
    node::{
        self, API_PORT, BACKEND_HOSTS, CLIENT, CLIENT_B, CLIENT_MAC, DNS_BACKEND_PORT, DNS_PORT,
        LB_MAC, MAX_FLOWS, NAT_PORT_MAX, NAT_PORT_MIN, SNAT, TCP_SERVICE, UDP_SERVICE, VIP, addr,
    },
    packets::FrameBuilder,
    require_root,
    testrun::{self, Mac, XdpMd},
};
use lb_common::{
    csum::{self, checksum, fold, l4_checksum, pseudo_header_sum, sum},
    flow::{
        DIR_FORWARD, DIR_REPLY, EMBRYO_SYN, EMBRYO_SYNACK, Embryo, Flow, FlowKey, NAT_PORT_TRIES,
        flow_hash, nat_choice,
    },
    maps,
    service::{PROTO_TCP, PROTO_UDP, ServiceKey},
    stats::{Counter, EmbryoStats, Reason, ReasonTotals, Traffic},
    test_rng::Rng,
    wire::{
        ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
};
use lb_userspace::{batch, maps::ControlPlane as _};

/// The default seed: "xdplb" in ASCII.
const DEFAULT_SEED: u64 = 0x78_6470_6c62;
const DEFAULT_FRAMES: u64 = 1_000_000;
const DEFAULT_CHECK_EVERY: u64 = 4096;
/// Frames between two comparisons of FLOWS with the model (and ageing).
/// Fixed, so that the run does not depend on the checking windows.
const FLOWS_EVERY: u64 = 4096;
/// EMBRYOS entries above which the test evicts most (at a FLOWS check),
/// standing in for the LRU: enough that most NAT ports of the TCP
/// backends are held by half-open connections (so new ones reclaim
/// ports), and, with a check's worth of new ones and what CPUs keep in
/// their LRU free lists (up to 128 entries each), far from the map's
/// size, so that the kernel itself never evicts.
const EMBRYOS_HIGH: usize = 40_000;
const _: () = assert!(
    EMBRYOS_HIGH + 2 * FLOWS_EVERY as usize + 256 * 128
        < lb_common::maps::DEFAULT_MAX_EMBRYOS as usize
);

// ---------------------------------------------------------------------------
// The node under test: dataplane.rs's, from lab::node; what only the fuzz
// needs is here.

/// lb0's MTU: the FIB answers "fragmentation needed" above it.
const MTU: usize = 1500;
/// The largest frame made: BPF_PROG_TEST_RUN takes at most a page less
/// XDP's headroom and tailroom in the linear part.
const MAX_FRAME: usize = 3000;

const PIN_PREFIX: &str = "xdplb-fuzz-test-";

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// BPF_EXIST: a map update that only replaces an entry.
const BPF_EXIST: u64 = 2;

/// The MAC of a host with a neighbour entry on lb0 (the model holds
/// addresses as the frame's bytes).
fn neighbour_mac(ip: [u8; 4]) -> Option<Mac> {
    node::neighbour_mac(Ipv4Addr::from(ip))
}

// ---------------------------------------------------------------------------
// Settings.

struct Settings {
    seed: u64,
    frames: u64,
    check_every: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |name: &str, default: u64| match std::env::var(name) {
            Err(_) => default,
            Ok(v) => {
                let v = v.trim().replace('_', "");
                let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
            }
        };
        let s = Settings {
            seed: num("XDPLB_FUZZ_SEED", DEFAULT_SEED),
            frames: num("XDPLB_FUZZ_FRAMES", DEFAULT_FRAMES),
            check_every: num("XDPLB_FUZZ_CHECK_EVERY", DEFAULT_CHECK_EVERY),
        };
        assert!(
            s.check_every > 0,
            "XDPLB_FUZZ_CHECK_EVERY must be at least 1"
        );
        s
    }
}

// ---------------------------------------------------------------------------
// The loaded program.

/// xdplb loaded (not attached) on the test node, see [`node::start`]; the
/// methods are the fuzz's ways of reading it.
struct Node {
    loaded: node::LoadedNode,
}

impl Node {
    fn start() -> Node {
        Node {
            loaded: node::start(PIN_PREFIX),
        }
    }

    fn prog(&self) -> &Xdp {
        self.loaded
            .ebpf
            .program(maps::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn reasons(&self) -> ReasonTotals {
        let m: PerCpuArray<_, Counter> = self
            .loaded
            .ebpf
            .map(maps::REASON_STATS)
            .expect("no map REASON_STATS")
            .try_into()
            .unwrap();
        ReasonTotals::read(&m).expect("reading REASON_STATS")
    }

    fn flows_map(&self) -> &aya::maps::MapData {
        match self.loaded.ebpf.map(maps::FLOWS) {
            Some(Map::HashMap(m)) => m,
            other => panic!("FLOWS is not a hash map: {other:?}"),
        }
    }

    fn flows(&self) -> Vec<(FlowKey, Flow)> {
        batch::lookup_all(self.flows_map().fd().as_fd()).expect("reading FLOWS")
    }

    /// Removes `keys` from FLOWS, as the agent's ageing does.
    fn remove_flows(&self, keys: &[FlowKey]) {
        let n = batch::delete(self.flows_map().fd().as_fd(), keys).expect("ageing FLOWS");
        assert_eq!(n, keys.len(), "FLOWS lacked some of the entries to age");
    }

    fn embryos_map(&self) -> &aya::maps::MapData {
        match self.loaded.ebpf.map(maps::EMBRYOS) {
            Some(Map::LruHashMap(m)) => m,
            other => panic!("EMBRYOS is not an LRU hash map: {other:?}"),
        }
    }

    fn embryos(&self) -> Vec<(FlowKey, Embryo)> {
        batch::lookup_all(self.embryos_map().fd().as_fd()).expect("reading EMBRYOS")
    }

    /// Removes `keys` from EMBRYOS, as its LRU evicts them.
    fn remove_embryos(&self, keys: &[FlowKey]) {
        let n = batch::delete(self.embryos_map().fd().as_fd(), keys).expect("evicting EMBRYOS");
        assert_eq!(n, keys.len(), "EMBRYOS lacked some of the entries to evict");
    }

    /// Sets the birth stamps (`flow.last_seen`) of the EMBRYOS entries at
    /// the keys, leaving the rest of each entry as it is.
    fn stamp_births(&self, stamps: &[(FlowKey, u64)]) {
        let path = self.loaded.pins.path.join(maps::EMBRYOS);
        let data = MapData::from_pin(&path)
            .unwrap_or_else(|e| panic!("opening pinned {}: {e}", path.display()));
        let mut m: aya::maps::HashMap<MapData, FlowKey, Embryo> =
            aya::maps::HashMap::try_from(Map::from_map_data(data).expect("EMBRYOS"))
                .expect("EMBRYOS as a hash map");
        for (k, born) in stamps {
            let mut e = m
                .get(k, 0)
                .unwrap_or_else(|e| panic!("EMBRYOS lacks {}: {e}", show_key(k)));
            e.flow.last_seen = *born;
            m.insert(k, e, BPF_EXIST)
                .expect("stamping an EMBRYOS entry");
        }
    }

    /// EMBRYO_STATS and the new_flows of the services `ids`, summed over
    /// CPUs.
    fn event_counters(&self, ids: &[u32]) -> EventCounters {
        let embryo: PerCpuArray<_, EmbryoStats> = self
            .loaded
            .ebpf
            .map(maps::EMBRYO_STATS)
            .expect("no map EMBRYO_STATS")
            .try_into()
            .unwrap();
        let embryo = EmbryoStats::sum(embryo.get(&0, 0).expect("reading EMBRYO_STATS").iter());
        let services: PerCpuArray<_, Traffic> = self
            .loaded
            .ebpf
            .map(maps::SERVICE_STATS)
            .expect("no map SERVICE_STATS")
            .try_into()
            .unwrap();
        let new_flows = ids
            .iter()
            .map(|&id| {
                let per_cpu = services.get(&id, 0).expect("reading SERVICE_STATS");
                (id, per_cpu.iter().map(|t| t.new_flows).sum())
            })
            .collect();
        EventCounters { embryo, new_flows }
    }

    /// What a service's new flows get: its id, and the backend of each
    /// slot of its live Maglev table (read once: the services never change
    /// during the run).
    fn service_view(&self, key: ServiceKey) -> ServiceView {
        let maps = self.loaded.reconciler.maps();
        let svc = maps
            .service(&key)
            .expect("reading SERVICES")
            .expect("the service is in SERVICES");
        assert!(svc.table_size > 0, "{key:?} has no backend");
        let slots = (0..svc.table_size)
            .map(|s| {
                let id = maps.slot(svc.table_base + s).expect("reading MAGLEV");
                let b = maps.backend(id).expect("reading BACKENDS");
                (id, b.ip, b.port)
            })
            .collect();
        ServiceView { id: svc.id, slots }
    }
}

/// Runs frames through the program with no allocation per frame.
struct Runner<'a> {
    prog: &'a Xdp,
    ifindex: u32,
    out: Vec<u8>,
    /// The return value of the last run.
    last_ret: u32,
}

impl<'a> Runner<'a> {
    fn new(node: &'a Node) -> Self {
        Runner {
            prog: node.prog(),
            ifindex: node.loaded.ifindex,
            out: vec![0; MAX_FRAME + 512],
            last_ret: u32::MAX,
        }
    }

    /// One BPF_PROG_TEST_RUN of `frame` arriving on lb0: the program's
    /// return value and the frame as it left (`self.out[..len]`). See
    /// testrun::run_xdp for the short frames.
    fn run(&mut self, frame: &[u8]) -> (u32, usize) {
        let mut short = [0u8; ETH_HDR_LEN];
        let data_in = if frame.len() < ETH_HDR_LEN {
            short[..frame.len()].copy_from_slice(frame);
            &short[..]
        } else {
            frame
        };
        let ctx = XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: self.ifindex,
            ..XdpMd::zeroed()
        };
        let r = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(data_in),
                data_out: Some(&mut self.out),
                ctx_in: Some(bytemuck::bytes_of(&ctx)),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN of a {}-byte frame: {e:?}\n{}",
                    frame.len(),
                    hex(frame)
                )
            });
        let len = if frame.len() < ETH_HDR_LEN {
            frame.len()
        } else {
            r.data_size_out as usize
        };
        self.last_ret = r.return_value;
        (r.return_value, len)
    }
}

// ---------------------------------------------------------------------------
// The model: what the program must do with a frame.

struct ServiceView {
    id: u32,
    /// Per Maglev slot: backend id, address, port.
    slots: Vec<(u32, [u8; 4], [u8; 2])>,
}

/// What a FLOWS or EMBRYOS entry's rewrite must be (less the clock, the
/// next hop and the TCP flags seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Half {
    new_src: [u8; 4],
    new_dst: [u8; 4],
    new_sport: [u8; 2],
    new_dport: [u8; 2],
    dir: u8,
    backend: u32,
    service: u32,
}

impl Half {
    /// A new connection `key`'s two halves: forward from SNAT:`port` to the
    /// backend at `bip`:`bport`, reply back to the client.
    fn pair(
        key: &FlowKey,
        (port, bip, bport): (u16, [u8; 4], [u8; 2]),
        backend: u32,
        service: u32,
    ) -> (Half, Half) {
        let forward = Half {
            new_src: SNAT.octets(),
            new_dst: bip,
            new_sport: port.to_be_bytes(),
            new_dport: bport,
            dir: DIR_FORWARD,
            backend,
            service,
        };
        let reply = Half {
            new_src: key.dst,
            new_dst: key.src,
            new_sport: key.dport,
            new_dport: key.sport,
            dir: DIR_REPLY,
            backend,
            service,
        };
        (forward, reply)
    }

    fn of(f: &Flow) -> Half {
        Half {
            new_src: f.new_src,
            new_dst: f.new_dst,
            new_sport: f.new_sport,
            new_dport: f.new_dport,
            dir: f.dir,
            backend: f.backend,
            service: f.service,
        }
    }

    /// The key of the other half's packets: this rewrite's 4-tuple turned
    /// around (the reply key of a forward half, the client's key of a
    /// reply half).
    fn other_key(&self, proto: u8) -> FlowKey {
        FlowKey::reply_of(
            self.new_src,
            self.new_dst,
            self.new_sport,
            self.new_dport,
            proto,
        )
    }

    /// The client → service tuple of the connection the half at `key` is of.
    fn client(&self, key: &FlowKey) -> FlowKey {
        if self.dir == DIR_FORWARD {
            *key
        } else {
            self.other_key(key.proto)
        }
    }
}

/// What an EMBRYOS entry must hold (lb_common::flow::Embryo, less the
/// clock, the next hop and the TCP flags seen), and when the model says
/// it was born.
#[derive(Clone, Copy, Debug)]
struct Emb {
    half: Half,
    /// The client's ISN + 1 (reply half; 0 in the forward half).
    syn_next: u32,
    /// Reply half with EMBRYO_SYNACK: the ACK number that promotes it.
    ack_expect: u32,
    /// EMBRYO_* flags.
    state: u8,
    /// The model's clock: the order in which the program stamped the
    /// entries' birth (`flow.last_seen`), for the oldest-first reclaim.
    born: u64,
}

impl Emb {
    /// The kernel's entry as the model holds it (its birth left out).
    fn of(e: &Embryo) -> Emb {
        Emb {
            half: Half::of(&e.flow),
            syn_next: e.syn_next,
            ack_expect: e.ack_expect,
            state: e.state,
            born: 0,
        }
    }

    fn same(&self, other: &Emb) -> bool {
        (self.half, self.syn_next, self.ack_expect, self.state)
            == (other.half, other.syn_next, other.ack_expect, other.state)
    }
}

/// What the model says a frame is.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Not ours: XDP_PASS, unchanged.
    NotOurs(Reason),
    /// Ours (to a service, of a flow or of a half-open connection), but
    /// malformed, or an RST of no connection: XDP_DROP, unchanged.
    Dropped(Reason),
    /// A packet of the flow half `key`: NATed as it says.
    Established(Half),
    /// A packet of the half-open connection half `key` (EMBRYOS).
    HalfOpen(FlowKey),
    /// The first packet of a connection to a service.
    New(FlowKey, ServiceKey),
}

/// The reason a frame was counted under; two FIB answers are one group.
#[derive(Clone, Copy, Debug)]
enum Counted {
    Exactly(Reason),
    NoNeighOrFibOther,
}

/// Where a NATed packet may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaves {
    /// XDP_TX to the neighbour's MAC.
    Tx,
    /// XDP_PASS after the rewrite: the FIB said "fragmentation needed".
    FibOther,
    /// Either: the flow's cached next hop skips the FIB's MTU check.
    TxOrFibOther,
    /// XDP_PASS after the rewrite: no neighbour entry, or no route.
    NoNeighOrFibOther,
}

impl Leaves {
    /// A new connection's first packet: the program resolves the backend
    /// when it makes the connection, and the FIB's MTU check refuses a
    /// packet larger than lb0's MTU, which then goes to the kernel,
    /// rewritten.
    fn of_new(f: &[u8]) -> Leaves {
        if usize::from(be16(f, ETH_HDR_LEN + 2)) <= MTU {
            Leaves::Tx
        } else {
            Leaves::FibOther
        }
    }

    /// A packet of an existing half (FLOWS or EMBRYOS): `tot` its IPv4 total
    /// length.
    fn of(half: &Half, tot: usize) -> Leaves {
        match neighbour_mac(half.new_dst) {
            Some(_) if tot <= MTU => Leaves::Tx,
            Some(_) => Leaves::TxOrFibOther,
            None => Leaves::NoNeighOrFibOther,
        }
    }
}

/// What a packet of a half-open connection does to it (lb-ebpf
/// embryo::Step).
enum Step {
    Forward,
    Promoted,
    Stop(Reason),
    /// An RST back to the backend (rewrite::reset_to_sender).
    ResetBackend,
    /// The half is gone: the SYN opens a new connection.
    Reopen,
}

/// Flow keys with O(1) insert, remove and random pick; the pick order
/// depends only on the operations, so the run stays deterministic.
#[derive(Default)]
struct KeySet {
    keys: Vec<FlowKey>,
    at: HashMap<FlowKey, usize>,
}

impl KeySet {
    fn insert(&mut self, k: FlowKey) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.at.entry(k) {
            e.insert(self.keys.len());
            self.keys.push(k);
        }
    }

    fn remove(&mut self, k: &FlowKey) {
        if let Some(i) = self.at.remove(k) {
            let last = self.keys.pop().expect("a key to remove");
            if i < self.keys.len() {
                self.keys[i] = last;
                self.at.insert(last, i);
            }
        }
    }

    fn keys(&self) -> &[FlowKey] {
        &self.keys
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn retain(&mut self, keep: impl Fn(&FlowKey) -> bool) {
        self.keys.retain(|k| keep(k));
        self.at = self.keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    }
}

/// Events the program counts outside REASON_STATS, since the last check.
#[derive(Default)]
struct Events {
    embryo: EmbryoStats,
    /// SERVICE_STATS' new_flows, by service id.
    new_flows: BTreeMap<u32, u64>,
}

/// The counters of [`Events`] as read from the kernel.
#[derive(Clone, Default)]
struct EventCounters {
    embryo: EmbryoStats,
    new_flows: BTreeMap<u32, u64>,
}

struct Model {
    services: HashMap<ServiceKey, ServiceView>,
    /// FLOWS as it must be.
    flows: HashMap<FlowKey, Half>,
    /// The keys of `flows`, to pick packets of NATed flows from.
    forward_keys: KeySet,
    reply_keys: KeySet,
    /// EMBRYOS as it must be.
    embryos: HashMap<FlowKey, Emb>,
    /// The keys of `embryos`, by direction.
    embryo_fwd: KeySet,
    embryo_rep: KeySet,
    /// Forward halves whose reply half recorded the backend's SYN-ACK: the
    /// client's ACK of it completes the handshake.
    synacked: KeySet,
    /// The model's clock for [`Emb::born`].
    clock: u64,
    /// The established connections, never aged by the test.
    pinned: HashSet<FlowKey>,
    /// Every client → service tuple a frame to a service came from, while
    /// an entry of its connection may be in FLOWS or EMBRYOS.
    clients: HashSet<FlowKey>,
    /// Connections put into FLOWS since the last check (UDP flows opened,
    /// TCP connections promoted).
    opened: u64,
    /// Events since the last check, and the kernel's counters then.
    events: Events,
    counted: EventCounters,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    nated: u64,
    /// NATed frames whose checksums verified on input, so had to on output.
    nated_valid_checksums: u64,
    /// UDP flows opened (straight into FLOWS).
    udp_opened: u64,
    /// Half-open connections made: by a SYN, by another packet.
    embryos_syn: u64,
    embryos_mid: u64,
    /// Promoted: by the client's ACK of the SYN-ACK, by the backend's
    /// answer to a connection picked up mid-stream.
    promoted_handshake: u64,
    promoted_answer: u64,
    /// SYN-ACKs recorded, and refused for acknowledging another SYN.
    synacks: u64,
    stale_synacks: u64,
    /// Backend segments (not SYN-ACKs) to a SYN's half-open connection
    /// before its SYN-ACK: reset back to the backend.
    challenge_resets: u64,
    /// Client SYNs on a forward half whose port was reclaimed: reopened.
    reopened: u64,
    /// A SYN-ACK again on a half-open connection: reset back, ended.
    synack_retransmissions: u64,
    /// Client ACKs whose reply half was gone (drop_embryo_lost).
    lost: u64,
    /// Packets forwarded by a half whose other half is gone or another
    /// connection's.
    orphans: u64,
    reset: u64,
    reclaimed: u64,
    /// New flows or promotions refused: FLOWS full, or no NAT port.
    table_full: u64,
    /// Of those, promotions (the connection stays half-open).
    promotions_refused: u64,
    aged: u64,
    evicted: u64,
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(arr4(f, at))
}

fn arr4(f: &[u8], at: usize) -> [u8; 4] {
    [f[at], f[at + 1], f[at + 2], f[at + 3]]
}

fn arr2(f: &[u8], at: usize) -> [u8; 2] {
    [f[at], f[at + 1]]
}

/// The IPv4 length checks the program makes before rewriting a packet
/// (parse.rs `validate`), on the frame's bytes: `l4` is where the L4
/// header starts, which the frame holds whole.
fn validate(f: &[u8], ihl_bytes: usize, l4: usize, proto: u8) -> Result<(), Reason> {
    let tot = usize::from(be16(f, ETH_HDR_LEN + 2));
    if tot > f.len() - ETH_HDR_LEN || tot < ihl_bytes {
        return Err(Reason::DropBadIpLength);
    }
    let l4_len = tot - ihl_bytes;
    if proto == PROTO_TCP {
        let doff = usize::from(f[l4 + 12] >> 4) * 4;
        if doff < 20 || doff > l4_len {
            return Err(Reason::DropMalformedL4);
        }
        if f[l4 + 13] == 0 {
            return Err(Reason::DropTcpNoFlags);
        }
    } else {
        // A UDP header cut short by the IPv4 total length is as malformed
        // as a TCP one (the data offset check above): the ports the flow
        // would be keyed and NATed by are not in the datagram at all.
        //
        // Found by this fuzzer: xdplb's `validate` (lb-ebpf parse.rs) once
        // only compared the UDP length with the IPv4 payload, so a datagram
        // whose two lengths agreed on less than 8 bytes was NATed (the
        // rewrite writing ports and checksum past the datagram's end, into
        // the Ethernet padding) and opened a flow.
        if l4_len < 8 {
            return Err(Reason::DropMalformedL4);
        }
        if usize::from(be16(f, l4 + 4)) != l4_len {
            return Err(Reason::DropBadUdpLength);
        }
    }
    Ok(())
}

/// One's complement sum of a checksummed region, its checksum included:
/// 0xffff when it verifies; NAT must keep it as it was (0 and 0xffff are
/// the same number).
fn residual(data: &[u8], initial: u32) -> u16 {
    match fold(sum(data, initial)) {
        0 => 0xffff,
        r => r,
    }
}

/// `out` is `f` as it came, with verdict `action` for `reason`.
/// `out` is the backend's packet `f` turned back to it as an RST (lb-ebpf
/// rewrite::reset_to_sender): MACs, addresses and ports swapped, sequence
/// number the packet's acknowledgment number, no ACK, flags RST, the TCP
/// checksum patched for those three (keeping any error it had), nothing
/// else changed; XDP_TX, tx_reset_backend.
fn reset_to_sender(f: &[u8], ret: u32, out: &[u8], want: &mut Vec<u8>) -> Result<Counted, String> {
    if ret != XDP_TX {
        return Err(format!(
            "verdict {}, expected XDP_TX (tx_reset_backend)",
            action_name(ret)
        ));
    }
    let ip = ETH_HDR_LEN;
    let l4 = ip + usize::from(f[ip] & 0x0f) * 4;
    want.clear();
    want.extend_from_slice(f);
    want[0..6].copy_from_slice(&f[6..12]);
    want[6..12].copy_from_slice(&f[0..6]);
    want[ip + 12..ip + 16].copy_from_slice(&f[ip + 16..ip + 20]);
    want[ip + 16..ip + 20].copy_from_slice(&f[ip + 12..ip + 16]);
    want[l4..l4 + 2].copy_from_slice(&f[l4 + 2..l4 + 4]);
    want[l4 + 2..l4 + 4].copy_from_slice(&f[l4..l4 + 2]);
    let (seq, ack) = (arr4(f, l4 + 4), arr4(f, l4 + 8));
    let (doff, flags) = (f[l4 + 12], f[l4 + 13]);
    let mut c = csum::replace_u32(arr2(f, l4 + 16), seq, ack);
    c = csum::replace_u32(c, ack, [0; 4]);
    c = csum::replace_u16(c, [doff, flags], [doff, TCP_RST]);
    want[l4 + 4..l4 + 8].copy_from_slice(&ack);
    want[l4 + 8..l4 + 12].fill(0);
    want[l4 + 13] = TCP_RST;
    want[l4 + 16..l4 + 18].copy_from_slice(&c);
    if out != &want[..] {
        return Err(format!(
            "the RST back to the backend differs:\n  expected {}\n  got      {}",
            hex(want),
            hex(out)
        ));
    }
    Ok(Counted::Exactly(Reason::TxResetBackend))
}

fn unchanged(
    f: &[u8],
    ret: u32,
    out: &[u8],
    action: u32,
    reason: Reason,
) -> Result<Counted, String> {
    if ret != action {
        return Err(format!(
            "verdict {}, expected {} ({})",
            action_name(ret),
            action_name(action),
            reason.name()
        ));
    }
    if out != f {
        return Err(format!(
            "the frame left changed ({}):\n  output {}",
            differing(f, out),
            hex(out)
        ));
    }
    Ok(Counted::Exactly(reason))
}

/// The L4 header's offset in an IPv4 frame.
fn l4_at(f: &[u8]) -> usize {
    ETH_HDR_LEN + usize::from(f[ETH_HDR_LEN] & 0x0f) * 4
}

impl Model {
    fn new(node: &Node) -> Model {
        let services: HashMap<ServiceKey, ServiceView> = [TCP_SERVICE, UDP_SERVICE]
            .into_iter()
            .map(|k| (k, node.service_view(k)))
            .collect();
        let ids: Vec<u32> = services.values().map(|v| v.id).collect();
        Model {
            services,
            flows: HashMap::new(),
            forward_keys: KeySet::default(),
            reply_keys: KeySet::default(),
            embryos: HashMap::new(),
            embryo_fwd: KeySet::default(),
            embryo_rep: KeySet::default(),
            synacked: KeySet::default(),
            clock: 0,
            pinned: HashSet::new(),
            clients: HashSet::new(),
            opened: 0,
            events: Events {
                embryo: EmbryoStats::default(),
                new_flows: ids.iter().map(|&id| (id, 0)).collect(),
            },
            counted: node.event_counters(&ids),
            stats: Stats::default(),
        }
    }

    /// What the program must make of `f`, from its bytes, FLOWS and EMBRYOS.
    fn classify(&self, f: &[u8]) -> Expect {
        use Expect::{Dropped, NotOurs};
        use Reason::*;
        if f.len() < ETH_HDR_LEN {
            return NotOurs(PassShortEthernet);
        }
        match be16(f, 12) {
            ETH_P_IP => {}
            ETH_P_ARP => return NotOurs(PassArp),
            ETH_P_IPV6 => return NotOurs(PassIpv6),
            _ => return NotOurs(PassOtherEthertype),
        }
        let ip = ETH_HDR_LEN;
        if f.len() < ip + 20 {
            return NotOurs(PassMalformedIpv4);
        }
        let (version, ihl_bytes) = (f[ip] >> 4, usize::from(f[ip] & 0x0f) * 4);
        if version != 4 || ihl_bytes < 20 {
            return NotOurs(PassMalformedIpv4);
        }
        let proto = f[ip + 9];
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return NotOurs(PassNotService);
        }
        if be16(f, ip + 6) & 0x3fff != 0 {
            return NotOurs(PassFragment);
        }
        let l4 = ip + ihl_bytes;
        if f.len() < l4 + 4 {
            return NotOurs(PassTruncatedL4);
        }
        let key = FlowKey {
            src: arr4(f, ip + 12),
            dst: arr4(f, ip + 16),
            sport: arr2(f, l4),
            dport: arr2(f, l4 + 2),
            proto,
            _pad: [0; 3],
        };
        let service = ServiceKey {
            vip: key.dst,
            port: key.dport,
            proto,
            _pad: 0,
        };
        let is_service = self.services.contains_key(&service);
        let l4_hdr = if proto == PROTO_TCP { 20 } else { 8 };
        if f.len() < l4 + l4_hdr {
            return if is_service {
                Dropped(DropMalformedL4)
            } else {
                NotOurs(PassNotService)
            };
        }
        let dport = u16::from_be_bytes(key.dport);
        if key.dst == SNAT.octets() && !(NAT_PORT_MIN..=NAT_PORT_MAX).contains(&dport) {
            return NotOurs(PassNotService);
        }
        // FLOWS first; EMBRYOS (TCP only) when FLOWS has nothing.
        let flow = self.flows.get(&key).copied();
        let half_open = flow.is_none() && proto == PROTO_TCP && self.embryos.contains_key(&key);
        if flow.is_none() && !half_open && !is_service {
            return NotOurs(PassNotService);
        }
        if let Err(reason) = validate(f, ihl_bytes, l4, proto) {
            return Dropped(reason);
        }
        match flow {
            Some(half) => Expect::Established(half),
            None if half_open => Expect::HalfOpen(key),
            // An RST resets nothing we know: dropped, no state made.
            None if proto == PROTO_TCP && f[l4 + 13] & TCP_RST != 0 => Dropped(DropRstNoFlow),
            None => Expect::New(key, service),
        }
    }

    /// Checks what the program did with `f` (returned `ret`, left `out`)
    /// against `expect`, and follows FLOWS and EMBRYOS; the reason it must
    /// have counted. `want`: scratch space.
    fn check(
        &mut self,
        f: &[u8],
        ret: u32,
        out: &[u8],
        expect: Expect,
        want: &mut Vec<u8>,
    ) -> Result<Counted, String> {
        match expect {
            Expect::NotOurs(reason) => unchanged(f, ret, out, XDP_PASS, reason),
            Expect::Dropped(reason) => unchanged(f, ret, out, XDP_DROP, reason),
            Expect::Established(half) => {
                let tot = usize::from(be16(f, ETH_HDR_LEN + 2));
                self.check_nat(f, ret, out, &half, Leaves::of(&half, tot), want)
            }
            Expect::HalfOpen(key) => self.check_half_open(f, ret, out, key, want),
            Expect::New(key, service) if key.proto == PROTO_TCP => {
                self.check_new_tcp(f, ret, out, key, service, want)
            }
            Expect::New(key, service) => self.check_new_udp(f, ret, out, key, service, want),
        }
    }

    /// The backend Maglev picks for a new connection `key` of `service`:
    /// (id, address, port), and the tuple's hash.
    fn backend_of(&self, key: &FlowKey, service: &ServiceKey) -> (u32, [u8; 4], [u8; 2], u32) {
        let view = &self.services[service];
        let hash = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto);
        let (backend, bip, bport) = view.slots[(hash % view.slots.len() as u32) as usize];
        (backend, bip, bport, hash)
    }

    /// The program's NAT port probe sequence for a connection of hash
    /// `hash` to `bip:bport`: each port and the reply key it would have.
    fn nat_candidates(
        hash: u32,
        bip: [u8; 4],
        bport: [u8; 2],
        proto: u8,
    ) -> [(u16, FlowKey); NAT_PORT_TRIES as usize] {
        let span = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
        std::array::from_fn(|i| {
            // One SNAT address: the pool is `snat_ip` alone.
            let (addr, offset) = nat_choice(hash, i as u32, span, 1);
            assert_eq!(addr, 0, "one SNAT address");
            let port = (u32::from(NAT_PORT_MIN) + offset) as u16;
            let reply = FlowKey::reply_of(SNAT.octets(), bip, port.to_be_bytes(), bport, proto);
            (port, reply)
        })
    }

    /// A new TCP connection's NAT port (lb-ebpf embryo::open): the first of
    /// the probe sequence that neither FLOWS nor EMBRYOS holds; else the one
    /// of the oldest half-open connection among those probed, reclaimed
    /// (`true`); None when FLOWS holds every one.
    fn tcp_port(
        &self,
        cands: &[(u16, FlowKey); NAT_PORT_TRIES as usize],
    ) -> Option<(u16, FlowKey, bool)> {
        let mut oldest: Option<(u16, FlowKey, u64)> = None;
        for &(port, reply) in cands {
            if self.flows.contains_key(&reply) {
                continue;
            }
            match self.embryos.get(&reply) {
                None => return Some((port, reply, false)),
                Some(e) => {
                    if oldest.is_none_or(|(_, _, b)| e.born < b) {
                        oldest = Some((port, reply, e.born));
                    }
                }
            }
        }
        oldest.map(|(port, reply, _)| (port, reply, true))
    }

    /// Before a frame runs: a new TCP connection that must reclaim a NAT
    /// port takes the oldest half-open connection's among those its probe
    /// sequence finds, the oldest by the kernel's clock (jiffies), in which
    /// several are often born in one tick. So that the run does not depend
    /// on timing, the candidates' birth stamps are set to the model's order
    /// first (the only write the test makes to EMBRYOS, but for evictions).
    /// A client's SYN on a forward half whose port was reclaimed opens a
    /// new connection too (Step::Reopen), and is prepared the same way.
    fn prepare(&self, expect: &Expect, f: &[u8], node: &Node) {
        let (key, service) = match *expect {
            Expect::New(key, service) => (key, service),
            Expect::HalfOpen(key) if self.reopens(&key, f) => (
                key,
                ServiceKey {
                    vip: key.dst,
                    port: key.dport,
                    proto: key.proto,
                    _pad: 0,
                },
            ),
            _ => return,
        };
        let key = &key;
        let service = &service;
        if key.proto != PROTO_TCP || !self.services.contains_key(service) {
            return;
        }
        let (_, bip, bport, hash) = self.backend_of(key, service);
        let cands = Model::nat_candidates(hash, bip, bport, key.proto);
        if let Some((_, _, true)) = self.tcp_port(&cands) {
            let stamps: Vec<(FlowKey, u64)> = cands
                .iter()
                .filter_map(|(_, r)| self.embryos.get(r).map(|e| (*r, e.born)))
                .collect();
            node.stamp_births(&stamps);
        }
    }

    /// Whether the frame `f`, of the half-open half `key`, is a client's
    /// SYN (no RST, not a bare ACK) whose other half is gone: check_half_open
    /// reopens it.
    fn reopens(&self, key: &FlowKey, f: &[u8]) -> bool {
        let Some(e) = self.embryos.get(key) else {
            return false;
        };
        let flags = f[l4_at(f) + 13];
        e.half.dir == DIR_FORWARD
            && flags & TCP_RST == 0
            && flags & (TCP_SYN | TCP_ACK) != TCP_ACK
            && flags & TCP_SYN != 0
            && self.partner(key).is_none()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert_embryo(&mut self, key: FlowKey, e: Emb) {
        if e.half.dir == DIR_FORWARD {
            self.embryo_fwd.insert(key);
        } else {
            self.embryo_rep.insert(key);
        }
        self.embryos.insert(key, e);
    }

    fn remove_embryo(&mut self, key: &FlowKey) -> Option<Emb> {
        let e = self.embryos.remove(key)?;
        if e.half.dir == DIR_FORWARD {
            self.embryo_fwd.remove(key);
            self.synacked.remove(key);
        } else {
            self.embryo_rep.remove(key);
            self.synacked.remove(&e.half.other_key(key.proto));
        }
        Some(e)
    }

    /// The other half of the embryo at `key`, if it is still this
    /// connection's (lb-ebpf embryo::partner).
    fn partner(&self, key: &FlowKey) -> Option<FlowKey> {
        let okey = self.embryos.get(key)?.half.other_key(key.proto);
        let other = self.embryos.get(&okey)?;
        (other.half.other_key(key.proto) == *key).then_some(okey)
    }

    /// A new TCP connection: Maglev's backend, the first free NAT port of
    /// the program's probe sequence (or the oldest embryo's), both halves
    /// in EMBRYOS, nothing in FLOWS; the first packet NATed.
    fn check_new_tcp(
        &mut self,
        f: &[u8],
        ret: u32,
        out: &[u8],
        key: FlowKey,
        service: ServiceKey,
        want: &mut Vec<u8>,
    ) -> Result<Counted, String> {
        self.clients.insert(key);
        let (backend, bip, bport, hash) = self.backend_of(&key, &service);
        let service_id = self.services[&service].id;
        let cands = Model::nat_candidates(hash, bip, bport, key.proto);
        let Some((port, reply_key, reclaim)) = self.tcp_port(&cands) else {
            self.stats.table_full += 1;
            return unchanged(f, ret, out, XDP_DROP, Reason::DropNatPortsExhausted)
                .map_err(|e| format!("every NAT port probed is in FLOWS: {e}"));
        };
        let l4 = l4_at(f);
        let (flags, seq) = (f[l4 + 13], be32(f, l4 + 4));
        let state = if flags & TCP_SYN != 0 { EMBRYO_SYN } else { 0 };
        let (forward, reply) = Half::pair(&key, (port, bip, bport), backend, service_id);
        let leaves = Leaves::of_new(f);
        let counted = self.check_nat(f, ret, out, &forward, leaves, want)?;
        if reclaim {
            // The oldest embryo probed gives its port up; its forward half
            // stays, an orphan.
            self.remove_embryo(&reply_key);
            self.events.embryo.reclaimed += 1;
            self.stats.reclaimed += 1;
        }
        let born = self.tick();
        self.insert_embryo(
            reply_key,
            Emb {
                half: reply,
                syn_next: seq.wrapping_add(1),
                ack_expect: 0,
                state,
                born,
            },
        );
        self.insert_embryo(
            key,
            Emb {
                half: forward,
                syn_next: 0,
                ack_expect: 0,
                state,
                born,
            },
        );
        self.events.embryo.opened += 1;
        if state & EMBRYO_SYN != 0 {
            self.stats.embryos_syn += 1;
        } else {
            self.stats.embryos_mid += 1;
        }
        Ok(counted)
    }

    /// A new UDP flow: Maglev's backend, the first free NAT port of the
    /// program's probe sequence, both halves in FLOWS; or refused because
    /// FLOWS cannot take two more entries, or no probed port is free.
    fn check_new_udp(
        &mut self,
        f: &[u8],
        ret: u32,
        out: &[u8],
        key: FlowKey,
        service: ServiceKey,
        want: &mut Vec<u8>,
    ) -> Result<Counted, String> {
        self.clients.insert(key);
        let (backend, bip, bport, hash) = self.backend_of(&key, &service);
        let service_id = self.services[&service].id;
        let cands = Model::nat_candidates(hash, bip, bport, key.proto);
        let free = cands
            .iter()
            .copied()
            .find(|(_, reply)| !self.flows.contains_key(reply));
        let refused = match free {
            None => Some(Reason::DropNatPortsExhausted),
            Some(_) if self.flows.len() + 2 > MAX_FLOWS as usize => Some(Reason::DropFlowTableFull),
            Some(_) => None,
        };
        if let Some(reason) = refused {
            self.stats.table_full += 1;
            return unchanged(f, ret, out, XDP_DROP, reason).map_err(|e| {
                format!(
                    "a new flow with {} FLOWS entries of {MAX_FLOWS} must be refused: {e}",
                    self.flows.len()
                )
            });
        }
        let (port, reply_key) = free.expect("a free port");
        let (forward, reply) = Half::pair(&key, (port, bip, bport), backend, service_id);
        let leaves = Leaves::of_new(f);
        let counted = self.check_nat(f, ret, out, &forward, leaves, want)?;
        self.add_flow(key, forward, reply_key, reply);
        self.stats.udp_opened += 1;
        Ok(counted)
    }

    /// A connection's two halves into FLOWS, counted as the program counts
    /// a new flow.
    fn add_flow(&mut self, key: FlowKey, forward: Half, reply_key: FlowKey, reply: Half) {
        self.flows.insert(key, forward);
        self.flows.insert(reply_key, reply);
        self.forward_keys.insert(key);
        self.reply_keys.insert(reply_key);
        self.opened += 1;
        *self.events.new_flows.entry(forward.service).or_default() += 1;
    }

    /// A packet of a half-open connection (lb-ebpf `half_open`): an RST
    /// ends it; the client's ACK of the recorded SYN-ACK promotes one
    /// opened by a SYN, the backend's answer (anything but an RST or a
    /// SYN-ACK) one picked up mid-stream; the backend's SYN-ACK is recorded,
    /// or dropped if it acknowledges another SYN. What is not dropped is
    /// NATed by the embryo's half, or by the flow it was promoted to.
    fn check_half_open(
        &mut self,
        f: &[u8],
        ret: u32,
        out: &[u8],
        key: FlowKey,
        want: &mut Vec<u8>,
    ) -> Result<Counted, String> {
        let emb = self.embryos[&key];
        let l4 = l4_at(f);
        let (flags, seq, ack) = (f[l4 + 13], be32(f, l4 + 4), be32(f, l4 + 8));
        let to_backend = emb.half.dir == DIR_FORWARD;
        let orphan = self.partner(&key).is_none();
        let step = if flags & TCP_RST != 0 {
            self.reset(&key);
            Step::Forward
        } else if to_backend {
            if flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
                self.client_ack(&key, ack)
            } else if flags & TCP_SYN != 0 && orphan {
                self.remove_embryo(&key);
                self.stats.reopened += 1;
                Step::Reopen
            } else {
                Step::Forward
            }
        } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            self.backend_synack(&key, seq, ack)
        } else {
            self.backend_answer(&key)
        };
        let tot = usize::from(be16(f, ETH_HDR_LEN + 2));
        match step {
            Step::Stop(reason) => unchanged(f, ret, out, XDP_DROP, reason),
            Step::ResetBackend => reset_to_sender(f, ret, out, want),
            Step::Reopen => {
                let service = ServiceKey {
                    vip: key.dst,
                    port: key.dport,
                    proto: key.proto,
                    _pad: 0,
                };
                if self.services.contains_key(&service) {
                    self.check_new_tcp(f, ret, out, key, service, want)
                } else {
                    unchanged(f, ret, out, XDP_PASS, Reason::PassNotService)
                }
            }
            Step::Forward | Step::Promoted => {
                if orphan && matches!(step, Step::Forward) {
                    self.stats.orphans += 1;
                }
                // Promoted, the packet is handled as established, by the
                // FLOWS entry the embryo's half became.
                self.check_nat(f, ret, out, &emb.half, Leaves::of(&emb.half, tot), want)
            }
        }
    }

    /// An RST from either side: both halves go (the other only if it is
    /// still this connection's).
    fn reset(&mut self, key: &FlowKey) {
        if let Some(other) = self.partner(key) {
            self.remove_embryo(&other);
        }
        self.remove_embryo(key);
        self.events.embryo.reset += 1;
        self.stats.reset += 1;
    }

    /// The client's ACK (no SYN, no RST), acknowledging `ack`.
    fn client_ack(&mut self, key: &FlowKey, ack: u32) -> Step {
        let Some(reply_key) = self.partner(key) else {
            // The reply half is gone, or now another connection's: this
            // one cannot complete.
            self.remove_embryo(key);
            self.stats.lost += 1;
            return Step::Stop(Reason::DropEmbryoLost);
        };
        let reply = self.embryos[&reply_key];
        if reply.state & EMBRYO_SYNACK == 0 || reply.ack_expect != ack {
            return Step::Forward;
        }
        self.promote(*key, reply_key, true)
    }

    /// The backend's SYN-ACK (`seq`, acknowledging `ack`) on a reply half.
    fn backend_synack(&mut self, key: &FlowKey, seq: u32, ack: u32) -> Step {
        let e = self.embryos.get_mut(key).expect("the embryo");
        if e.state & EMBRYO_SYN == 0 {
            // Picked up mid-stream: no handshake to follow.
            return Step::Forward;
        }
        if ack != e.syn_next {
            // For an older connection that had this NAT port: the backend
            // is told to drop it.
            self.stats.stale_synacks += 1;
            return Step::ResetBackend;
        }
        if e.state & EMBRYO_SYNACK != 0 {
            // The backend's retransmission: its client never answered.
            self.stats.synack_retransmissions += 1;
            self.reset(key);
            return Step::ResetBackend;
        }
        e.ack_expect = seq.wrapping_add(1);
        e.state |= EMBRYO_SYNACK;
        self.stats.synacks += 1;
        if let Some(forward) = self.partner(key) {
            self.synacked.insert(forward);
        }
        Step::Forward
    }

    /// The backend's answer (not an RST, not a SYN-ACK) on a reply half.
    /// It proves real only a connection picked up mid-stream: one opened
    /// by a SYN waits for its client's ACK of the SYN-ACK (lb-common's
    /// Embryo: a backend's segment for an older connection on the NAT
    /// port, or one a spoofer's packets provoke, must not promote it).
    fn backend_answer(&mut self, key: &FlowKey) -> Step {
        let state = self.embryos[key].state;
        if state & EMBRYO_SYN != 0 {
            if state & EMBRYO_SYNACK == 0 {
                // Before this connection's SYN-ACK the backend speaks of an
                // older one on the NAT port: reset back to it.
                self.stats.challenge_resets += 1;
                return Step::ResetBackend;
            }
            return Step::Forward;
        }
        match self.partner(key) {
            Some(forward) => self.promote(forward, *key, false),
            None => Step::Forward,
        }
    }

    /// Both halves into FLOWS (lb-ebpf embryo::promote): the reply half
    /// first, then the forward half; either refused when FLOWS is full,
    /// and then the connection stays half-open (its halves stamped anew).
    fn promote(&mut self, fkey: FlowKey, rkey: FlowKey, handshake: bool) -> Step {
        let room = (MAX_FLOWS as usize).saturating_sub(self.flows.len());
        if room < 2 {
            let t = self.tick();
            self.embryos.get_mut(&rkey).expect("the reply half").born = t;
            if room == 1 {
                self.embryos.get_mut(&fkey).expect("the forward half").born = t;
            }
            self.stats.table_full += 1;
            self.stats.promotions_refused += 1;
            return Step::Stop(Reason::DropFlowTableFull);
        }
        let forward = self.remove_embryo(&fkey).expect("the forward half");
        let reply = self.remove_embryo(&rkey).expect("the reply half");
        self.add_flow(fkey, forward.half, rkey, reply.half);
        self.events.embryo.promoted += 1;
        if handshake {
            self.stats.promoted_handshake += 1;
        } else {
            self.stats.promoted_answer += 1;
        }
        Step::Promoted
    }

    /// `out` is `f` NATed by `half`: the new 4-tuple, the MACs of the next
    /// hop on XDP_TX, nothing else changed but the two checksums, which
    /// keep their error (none, if they verified).
    fn check_nat(
        &mut self,
        f: &[u8],
        ret: u32,
        out: &[u8],
        half: &Half,
        leaves: Leaves,
        want: &mut Vec<u8>,
    ) -> Result<Counted, String> {
        let to_backend = half.dir == DIR_FORWARD;
        let tx_reason = if to_backend {
            Reason::TxForward
        } else {
            Reason::TxReply
        };
        let counted = match (ret, leaves) {
            (XDP_TX, Leaves::Tx | Leaves::TxOrFibOther) => Counted::Exactly(tx_reason),
            (XDP_PASS, Leaves::FibOther | Leaves::TxOrFibOther) => {
                Counted::Exactly(Reason::PassFibOther)
            }
            (XDP_PASS, Leaves::NoNeighOrFibOther) => Counted::NoNeighOrFibOther,
            _ => {
                return Err(format!(
                    "verdict {} for a packet NATed to {}:{} (expected {leaves:?})",
                    action_name(ret),
                    Ipv4Addr::from(half.new_dst),
                    u16::from_be_bytes(half.new_dport)
                ));
            }
        };
        if out.len() != f.len() {
            return Err(format!(
                "the NATed frame is {} bytes, {} came in",
                out.len(),
                f.len()
            ));
        }
        let ip = ETH_HDR_LEN;
        let l4 = ip + usize::from(f[ip] & 0x0f) * 4;
        let proto = f[ip + 9];
        let check_at = l4 + if proto == PROTO_TCP { 16 } else { 6 };
        want.clear();
        want.extend_from_slice(f);
        if ret == XDP_TX {
            let mac = neighbour_mac(half.new_dst).expect("XDP_TX only to a neighbour");
            want[0..6].copy_from_slice(&mac);
            want[6..12].copy_from_slice(&LB_MAC);
        }
        want[ip + 12..ip + 16].copy_from_slice(&half.new_src);
        want[ip + 16..ip + 20].copy_from_slice(&half.new_dst);
        want[l4..l4 + 2].copy_from_slice(&half.new_sport);
        want[l4 + 2..l4 + 4].copy_from_slice(&half.new_dport);
        // The checksums are checked below, by what they verify.
        want[ip + 10..ip + 12].copy_from_slice(&out[ip + 10..ip + 12]);
        want[check_at..check_at + 2].copy_from_slice(&out[check_at..check_at + 2]);
        if out != &want[..] {
            return Err(format!(
                "the NATed frame differs from the expected one ({}):\n  expected {}\n  output   {}",
                differing(want, out),
                hex(want),
                hex(out)
            ));
        }

        let ip_in = residual(&f[ip..l4], 0);
        let ip_out = residual(&out[ip..l4], 0);
        if ip_in != ip_out {
            return Err(format!(
                "IPv4 header checksum: {}verified on input (sum {ip_in:#06x}), the NATed \
                 header's sum is {ip_out:#06x}",
                if ip_in == 0xffff { "" } else { "not " }
            ));
        }
        let tot = usize::from(be16(f, ip + 2));
        let end = ip + tot;
        let l4_len = (end - l4) as u16;
        let l4_in = residual(
            &f[l4..end],
            pseudo_header_sum(arr4(f, ip + 12), arr4(f, ip + 16), proto, l4_len),
        );
        let valid = ip_in == 0xffff && l4_in == 0xffff;
        if proto == PROTO_UDP && f[check_at..check_at + 2] == [0, 0] {
            if out[check_at..check_at + 2] != [0, 0] {
                return Err("a UDP checksum of 0 (none) did not stay 0".into());
            }
        } else {
            let l4_out = residual(
                &out[l4..end],
                pseudo_header_sum(half.new_src, half.new_dst, proto, l4_len),
            );
            if l4_in != l4_out {
                return Err(format!(
                    "{} checksum: {}verified on input (sum {l4_in:#06x}), the NATed \
                     segment's sum is {l4_out:#06x}",
                    if proto == PROTO_TCP { "TCP" } else { "UDP" },
                    if l4_in == 0xffff { "" } else { "not " }
                ));
            }
        }
        self.stats.nated += 1;
        if valid {
            self.stats.nated_valid_checksums += 1;
        }
        Ok(counted)
    }

    /// The flows there are now are the established connections': the
    /// test never ages them.
    fn pin(&mut self) {
        self.pinned = self.flows.keys().copied().collect();
    }

    /// FLOWS and EMBRYOS hold exactly the model's entries, and they name
    /// only clients that sent a frame to a service; EMBRYO_STATS and the
    /// services' new_flows moved exactly by the events the model counted.
    /// `grew_from`: FLOWS' size at the last check.
    fn check_maps(&mut self, node: &Node, grew_from: usize) -> Result<(), String> {
        let mut problems = Vec::new();

        // FLOWS: two entries more per connection put in, none otherwise.
        let got = node.flows();
        let before = problems.len();
        let expected_len = grew_from + 2 * self.opened as usize;
        if got.len() != self.flows.len() || got.len() != expected_len {
            problems.push(format!(
                "FLOWS has {} entries: {grew_from} before, {} connections put in since, \
                 so {expected_len} expected (the model holds {})",
                got.len(),
                self.opened,
                self.flows.len()
            ));
        }
        for (k, v) in &got {
            let client = Half::of(v).client(k);
            if !self.clients.contains(&client) {
                problems.push(format!(
                    "FLOWS has {} for {}, which never sent a frame to a service",
                    show_key(k),
                    show_key(&client)
                ));
            }
            match self.flows.get(k) {
                None => problems.push(format!("FLOWS has an unexpected {}", show_flow(k, v))),
                Some(h) if *h != Half::of(v) || v.flags != 0 => {
                    problems.push(format!("FLOWS has {}, expected {h:?}", show_flow(k, v)))
                }
                Some(_) => {}
            }
        }
        // Keys come once each: with as many entries as the model, none of
        // them unexpected, the kernel lacks none of the model's.
        if got.len() != self.flows.len() || problems.len() > before {
            let seen: HashSet<FlowKey> = got.iter().map(|(k, _)| *k).collect();
            for k in self.flows.keys().filter(|k| !seen.contains(k)) {
                problems.push(format!("FLOWS lacks {}", show_key(k)));
            }
        }

        // EMBRYOS: entry for entry; no key of FLOWS in it.
        let got = node.embryos();
        let before = problems.len();
        if got.len() != self.embryos.len() {
            problems.push(format!(
                "EMBRYOS has {} entries, the model {}",
                got.len(),
                self.embryos.len()
            ));
        }
        for (k, v) in &got {
            let e = Emb::of(v);
            let client = e.half.client(k);
            if !self.clients.contains(&client) {
                problems.push(format!(
                    "EMBRYOS has {} for {}, which never sent a frame to a service",
                    show_key(k),
                    show_key(&client)
                ));
            }
            if self.flows.contains_key(k) {
                problems.push(format!("EMBRYOS has {}, which FLOWS has too", show_key(k)));
            }
            match self.embryos.get(k) {
                None => problems.push(format!("EMBRYOS has an unexpected {}", show_embryo(k, v))),
                Some(m) if !m.same(&e) || v.flow.flags != 0 => {
                    problems.push(format!("EMBRYOS has {}, expected {m:?}", show_embryo(k, v)))
                }
                Some(_) => {}
            }
        }
        if got.len() != self.embryos.len() || problems.len() > before {
            let seen: HashSet<FlowKey> = got.iter().map(|(k, _)| *k).collect();
            for k in self.embryos.keys().filter(|k| !seen.contains(k)) {
                problems.push(format!("EMBRYOS lacks {}", show_key(k)));
            }
        }

        // The event counters.
        let ids: Vec<u32> = self.events.new_flows.keys().copied().collect();
        let now = node.event_counters(&ids);
        let (before, want) = (&self.counted.embryo, &self.events.embryo);
        let delta = EmbryoStats {
            opened: now.embryo.opened - before.opened,
            promoted: now.embryo.promoted - before.promoted,
            reclaimed: now.embryo.reclaimed - before.reclaimed,
            reset: now.embryo.reset - before.reset,
        };
        if delta != *want {
            problems.push(format!(
                "EMBRYO_STATS moved by {delta:?}, the model counted {want:?}"
            ));
        }
        for (id, want) in &self.events.new_flows {
            let got = now.new_flows[id] - self.counted.new_flows[id];
            if got != *want {
                problems.push(format!(
                    "SERVICE_STATS[{id}].new_flows moved by {got}, the model put {want} \
                     connections of it in FLOWS"
                ));
            }
        }
        self.counted = now;
        self.events.embryo = EmbryoStats::default();
        self.events.new_flows.values_mut().for_each(|n| *n = 0);
        self.opened = 0;
        if problems.is_empty() {
            return Ok(());
        }
        problems.truncate(20);
        Err(problems.join("\n  "))
    }

    /// Removes every flow but the established connections' from FLOWS and
    /// the model, as the agent's ageing would once they idled.
    fn age(&mut self, node: &Node) {
        let keys: Vec<FlowKey> = self
            .flows
            .keys()
            .filter(|k| !self.pinned.contains(k))
            .copied()
            .collect();
        node.remove_flows(&keys);
        self.stats.aged += keys.len() as u64;
        let pinned = &self.pinned;
        self.flows.retain(|k, _| pinned.contains(k));
        self.forward_keys.retain(|k| pinned.contains(k));
        self.reply_keys.retain(|k| pinned.contains(k));
        self.forget_clients();
    }

    /// Removes entries of EMBRYOS, each with probability `percent`, and
    /// the two halves of a connection independently: what its LRU does
    /// once it is full (the test keeps it far from full, so that the kernel
    /// never evicts on its own). Orphans are left: halves whose other half
    /// is gone, and whose NAT port a new connection may take.
    fn evict(&mut self, node: &Node, rng: &mut Rng, percent: u32) {
        let keys: Vec<FlowKey> = self
            .embryo_fwd
            .keys()
            .iter()
            .chain(self.embryo_rep.keys())
            .copied()
            .filter(|_| rng.range(0, 99) < percent)
            .collect();
        node.remove_embryos(&keys);
        for k in &keys {
            self.remove_embryo(k);
        }
        self.stats.evicted += keys.len() as u64;
        self.forget_clients();
    }

    /// Keeps only the clients of connections with an entry left.
    fn forget_clients(&mut self) {
        let live: HashSet<FlowKey> = self
            .flows
            .iter()
            .map(|(k, h)| h.client(k))
            .chain(self.embryos.iter().map(|(k, e)| e.half.client(k)))
            .collect();
        self.clients.retain(|k| live.contains(k));
    }
}

fn show_embryo(k: &FlowKey, e: &Embryo) -> String {
    format!(
        "{} syn_next {:#x} ack_expect {:#x} state {}",
        show_flow(k, &e.flow),
        e.syn_next,
        e.ack_expect,
        e.state
    )
}
fn action_name(v: u32) -> String {
    match v {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        v => format!("return value {v}"),
    }
}

fn show_key(k: &FlowKey) -> String {
    format!(
        "{}:{} → {}:{} /{}",
        Ipv4Addr::from(k.src),
        u16::from_be_bytes(k.sport),
        Ipv4Addr::from(k.dst),
        u16::from_be_bytes(k.dport),
        k.proto
    )
}

fn show_flow(k: &FlowKey, f: &Flow) -> String {
    format!(
        "{} ⇒ {}:{} → {}:{} dir {} backend {} service {} flags {}",
        show_key(k),
        Ipv4Addr::from(f.new_src),
        u16::from_be_bytes(f.new_sport),
        Ipv4Addr::from(f.new_dst),
        u16::from_be_bytes(f.new_dport),
        f.dir,
        f.backend,
        f.service,
        f.flags
    )
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The byte offsets where two frames differ (at most a few), and lengths.
fn differing(a: &[u8], b: &[u8]) -> String {
    let offs: Vec<String> = (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .take(12)
        .map(|i| format!("{i}"))
        .collect();
    format!(
        "{} vs {} bytes, differing at offsets {}",
        a.len(),
        b.len(),
        offs.join(",")
    )
}

// ---------------------------------------------------------------------------
// The reason counters.

/// Packets and bytes per reason as the model counted them.
#[derive(Default)]
struct Tally {
    reasons: [Counter; Reason::ALL.len()],
    /// pass_no_neigh + pass_fib_other, where the model cannot tell which.
    no_neigh_or_fib: Counter,
    frames: u64,
    first: u64,
}

impl Tally {
    fn add(&mut self, counted: Counted, len: usize) {
        let c = match counted {
            Counted::Exactly(r) => &mut self.reasons[r as usize],
            Counted::NoNeighOrFibOther => &mut self.no_neigh_or_fib,
        };
        c.add(len as u64);
        self.frames += 1;
    }

    /// The counters moved from `before` to `after` exactly as tallied.
    fn check(&self, before: &ReasonTotals, after: &ReasonTotals) -> Result<(), String> {
        let delta = |r: Reason| {
            let (b, a) = (before.get(r), after.get(r));
            Counter {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            }
        };
        let total = Reason::ALL.iter().fold(Counter::default(), |t, &r| {
            let d = delta(r);
            Counter {
                packets: t.packets + d.packets,
                bytes: t.bytes + d.bytes,
            }
        });
        let want_bytes: u64 =
            self.reasons.iter().map(|c| c.bytes).sum::<u64>() + self.no_neigh_or_fib.bytes;
        let mut problems = Vec::new();
        if total.packets != self.frames || total.bytes != want_bytes {
            problems.push(format!(
                "the reason counters moved by {} packets ({} bytes) for {} frames ({want_bytes} bytes) run",
                total.packets, total.bytes, self.frames
            ));
        }
        let sum2 = |a: Counter, b: Counter| Counter {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        };
        for &r in Reason::ALL {
            if matches!(r, Reason::PassNoNeigh | Reason::PassFibOther) {
                continue;
            }
            let (want, got) = (self.reasons[r as usize], delta(r));
            if want != got {
                problems.push(format!(
                    "{}: expected +{} ({} bytes), got +{} ({} bytes)",
                    r.name(),
                    want.packets,
                    want.bytes,
                    got.packets,
                    got.bytes
                ));
            }
        }
        let want = sum2(
            sum2(
                self.reasons[Reason::PassNoNeigh as usize],
                self.reasons[Reason::PassFibOther as usize],
            ),
            self.no_neigh_or_fib,
        );
        let got = sum2(delta(Reason::PassNoNeigh), delta(Reason::PassFibOther));
        if want != got {
            problems.push(format!(
                "pass_no_neigh + pass_fib_other: expected +{} ({} bytes), got +{} ({} bytes)",
                want.packets, want.bytes, got.packets, got.bytes
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n  "))
        }
    }
}

// ---------------------------------------------------------------------------
// Making frames.

const MAX_MUTATIONS: usize = 4;

/// How a frame was made, for the failure report.
#[derive(Clone, Copy, Default)]
struct Recipe {
    kind: &'static str,
    mutations: [&'static str; MAX_MUTATIONS],
    n: usize,
    checksums_fixed: bool,
}

impl Recipe {
    fn of(kind: &'static str) -> Recipe {
        Recipe {
            kind,
            ..Recipe::default()
        }
    }
    fn push(&mut self, m: &'static str) {
        if self.n < MAX_MUTATIONS {
            self.mutations[self.n] = m;
            self.n += 1;
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)?;
        for m in &self.mutations[..self.n] {
            write!(f, ", {m}")?;
        }
        if self.checksums_fixed {
            f.write_str(", checksums fixed")?;
        }
        Ok(())
    }
}

/// An IPv4 frame to write: TCP, UDP, or any other protocol (its payload
/// random bytes).
#[derive(Clone, Copy)]
struct Ipv4Frame {
    src_mac: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
    tcp_flags: u8,
    /// IP option bytes, a multiple of 4, at most 40.
    ip_options: usize,
    /// TCP option bytes, a multiple of 4, at most 40.
    tcp_options: usize,
    payload: usize,
    /// UDP checksum 0 ("none").
    no_udp_checksum: bool,
    /// TCP sequence and acknowledgment numbers; random if None.
    seq_ack: Option<(u32, u32)>,
}

impl Ipv4Frame {
    fn new(src_mac: Mac, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Self {
        Ipv4Frame {
            src_mac,
            src,
            dst,
            proto,
            tcp_flags: TCP_SYN,
            ip_options: 0,
            tcp_options: 0,
            payload: 0,
            no_udp_checksum: false,
            seq_ack: None,
        }
    }
}

/// Random bytes, 8 per draw (the generator's byte-wise `fill` costs a
/// draw a byte).
fn fill(rng: &mut Rng, buf: &mut [u8]) {
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let r = rng.u64().to_le_bytes();
        rest.copy_from_slice(&r[..rest.len()]);
    }
}

fn push_random(rng: &mut Rng, buf: &mut Vec<u8>, n: usize) {
    let at = buf.len();
    buf.resize(at + n, 0);
    fill(rng, &mut buf[at..]);
}

/// IP options: a mix of real ones (NOP, Router Alert, a timestamp's head)
/// and random bytes, `n` of them.
fn push_ip_options(rng: &mut Rng, buf: &mut Vec<u8>, n: usize) {
    let end = buf.len() + n;
    while buf.len() < end {
        let left = end - buf.len();
        match rng.range(0, 4) {
            0 => buf.push(1),                                          // NOP
            1 if left >= 4 => buf.extend_from_slice(&[0x94, 4, 0, 0]), // Router Alert
            2 if left >= 4 => buf.extend_from_slice(&[0x44, 4, 5, 0]), // Timestamp, empty
            3 => buf.push(0),                                          // End of options
            _ => push_random(rng, buf, 1),
        }
    }
}

fn push_tcp_options(rng: &mut Rng, buf: &mut Vec<u8>, n: usize) {
    let end = buf.len() + n;
    while buf.len() < end {
        let left = end - buf.len();
        match rng.range(0, 4) {
            0 => buf.push(1),                                             // NOP
            1 if left >= 4 => buf.extend_from_slice(&[2, 4, 0x05, 0xb4]), // MSS 1460
            2 if left >= 3 => buf.extend_from_slice(&[3, 3, 7]),          // window scale
            3 => buf.push(0),
            _ => push_random(rng, buf, 1),
        }
    }
}

/// Writes `p` into `buf` (cleared first), checksums filled in.
fn write_ipv4(rng: &mut Rng, buf: &mut Vec<u8>, p: &Ipv4Frame) {
    buf.clear();
    buf.extend_from_slice(&LB_MAC);
    buf.extend_from_slice(&p.src_mac);
    buf.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let ihl = 20 + p.ip_options;
    let l4_hdr = match p.proto {
        PROTO_TCP => 20 + p.tcp_options,
        PROTO_UDP => 8,
        _ => 0,
    };
    let tot = (ihl + l4_hdr + p.payload) as u16;
    let id = rng.u32() as u16;
    let frag: u16 = if rng.range(0, 3) == 0 { 0x4000 } else { 0 }; // DF
    buf.extend_from_slice(&[0x40 | (ihl / 4) as u8, 0]);
    buf.extend_from_slice(&tot.to_be_bytes());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&frag.to_be_bytes());
    buf.extend_from_slice(&[64, p.proto, 0, 0]);
    buf.extend_from_slice(&p.src.ip().octets());
    buf.extend_from_slice(&p.dst.ip().octets());
    push_ip_options(rng, buf, p.ip_options);
    let l4 = buf.len();
    match p.proto {
        PROTO_TCP => {
            buf.extend_from_slice(&p.src.port().to_be_bytes());
            buf.extend_from_slice(&p.dst.port().to_be_bytes());
            match p.seq_ack {
                Some((seq, ack)) => {
                    buf.extend_from_slice(&seq.to_be_bytes());
                    buf.extend_from_slice(&ack.to_be_bytes());
                }
                None => push_random(rng, buf, 8),
            }
            buf.push((((20 + p.tcp_options) / 4) as u8) << 4);
            buf.push(p.tcp_flags);
            buf.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
            push_tcp_options(rng, buf, p.tcp_options);
        }
        PROTO_UDP => {
            buf.extend_from_slice(&p.src.port().to_be_bytes());
            buf.extend_from_slice(&p.dst.port().to_be_bytes());
            buf.extend_from_slice(&((8 + p.payload) as u16).to_be_bytes());
            buf.extend_from_slice(&[0, 0]);
        }
        _ => {}
    }
    push_random(rng, buf, p.payload);
    fix_checksums(buf);
    if p.proto == PROTO_UDP && p.no_udp_checksum {
        buf[l4 + 6..l4 + 8].fill(0);
    }
}

/// Recomputes whichever checksums the frame's own length fields let one
/// compute: the IPv4 header's, and TCP's or UDP's over the total length.
fn fix_checksums(buf: &mut [u8]) -> bool {
    let ip = ETH_HDR_LEN;
    if buf.len() < ip + 20 || be16(buf, 12) != ETH_P_IP {
        return false;
    }
    let ihl_bytes = usize::from(buf[ip] & 0x0f) * 4;
    if ihl_bytes < 20 || buf.len() < ip + ihl_bytes {
        return false;
    }
    buf[ip + 10..ip + 12].fill(0);
    let c = checksum(&buf[ip..ip + ihl_bytes]);
    buf[ip + 10..ip + 12].copy_from_slice(&c);
    let proto = buf[ip + 9];
    let (tot, l4) = (usize::from(be16(buf, ip + 2)), ip + ihl_bytes);
    let check_at = match proto {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        _ => return true,
    };
    if tot < ihl_bytes || ip + tot > buf.len() || check_at + 2 > ip + tot {
        return true;
    }
    buf[check_at..check_at + 2].fill(0);
    let c = l4_checksum(
        arr4(buf, ip + 12),
        arr4(buf, ip + 16),
        proto,
        &buf[l4..ip + tot],
    );
    buf[check_at..check_at + 2].copy_from_slice(&c);
    true
}

struct Gen {
    rng: Rng,
}

impl Gen {
    fn pct(&mut self, p: u32) -> bool {
        self.rng.range(0, 99) < p
    }

    fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[self.rng.range(0, of.len() as u32 - 1) as usize]
    }

    fn payload_len(&mut self) -> usize {
        let max_payload = MAX_FRAME - 14 - 60 - 60;
        match self.rng.range(0, 99) {
            0..=79 => self.rng.range(0, 64) as usize,
            80..=94 => self.rng.range(65, 512) as usize,
            95..=98 => self.rng.range(513, 1440) as usize,
            _ => self.rng.range(1441, max_payload as u32) as usize,
        }
    }

    fn options_len(&mut self) -> usize {
        if self.pct(80) {
            0
        } else {
            4 * self.rng.range(1, 10) as usize
        }
    }

    /// A client: mostly the test's two, else any host of the subnet, any
    /// address at all, or a backend.
    fn client(&mut self) -> (Mac, SocketAddrV4) {
        let port = if self.pct(90) {
            self.rng.range(1024, 65535) as u16
        } else {
            self.rng.range(0, 65535) as u16
        };
        let ip = match self.rng.range(0, 9) {
            0..=3 => CLIENT,
            4 => CLIENT_B,
            5 | 6 => Ipv4Addr::new(10, 0, 0, self.rng.u8()),
            7 => Ipv4Addr::from(self.rng.u32()),
            _ => self.pick(&BACKEND_HOSTS).0,
        };
        let mac = neighbour_mac(ip.octets()).unwrap_or_else(|| {
            let mut m: Mac = self.rng.bytes();
            m[0] &= 0xfe;
            m
        });
        (mac, addr(ip, port))
    }

    fn tcp_flags(&mut self) -> u8 {
        self.pick(&[
            TCP_SYN,
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_SYN | TCP_FIN, // nonsense, but flags
            0xff,
            0,
        ])
    }

    fn to(&mut self, dst: SocketAddrV4, proto: u8) -> Ipv4Frame {
        let (mac, src) = self.client();
        let mut p = Ipv4Frame::new(mac, src, dst, proto);
        p.tcp_flags = self.tcp_flags();
        p.ip_options = self.options_len();
        p.tcp_options = self.options_len();
        p.payload = self.payload_len();
        p.no_udp_checksum = self.pct(20);
        p
    }

    /// A packet of the flow half `key`, as its sender sends it.
    fn of_flow(&mut self, key: FlowKey) -> Ipv4Frame {
        let src = addr(key.src.into(), u16::from_be_bytes(key.sport));
        let dst = addr(key.dst.into(), u16::from_be_bytes(key.dport));
        let mac = neighbour_mac(key.src).unwrap_or([0x02, 0, 0, 0, 0, 0x99]);
        let mut p = Ipv4Frame::new(mac, src, dst, key.proto);
        p.tcp_flags = self.tcp_flags();
        p.ip_options = self.options_len();
        p.tcp_options = self.options_len();
        p.payload = self.payload_len();
        p.no_udp_checksum = self.pct(20);
        p
    }

    /// A client packet of a half-open connection: half the time, when
    /// there is one whose backend's SYN-ACK was recorded, the ACK of that
    /// SYN-ACK that completes the handshake (or, now and then, one that is
    /// off by one); else any.
    fn client_of_embryo(&mut self, model: &Model) -> (&'static str, Ipv4Frame) {
        if !model.synacked.is_empty() && self.pct(50) {
            let key = self.pick(model.synacked.keys());
            let reply = model
                .partner(&key)
                .map(|r| model.embryos[&r])
                .expect("a SYN-ACKed connection has its reply half");
            let mut p = self.of_flow(key);
            p.tcp_flags = self.pick(&[TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH]);
            if p.tcp_flags == TCP_ACK {
                p.payload = 0;
            }
            let ack = if self.pct(90) {
                reply.ack_expect
            } else {
                reply.ack_expect.wrapping_add(self.pick(&[1, u32::MAX]))
            };
            p.seq_ack = Some((reply.syn_next, ack));
            return ("client ACK of the SYN-ACK of a half-open connection", p);
        }
        let key = self.pick(model.embryo_fwd.keys());
        ("client packet of a half-open connection", self.of_flow(key))
    }

    /// A backend packet to a half-open connection's NAT port: half the
    /// time a SYN-ACK, mostly acknowledging the client's SYN; else any.
    fn backend_of_embryo(&mut self, model: &Model) -> (&'static str, Ipv4Frame) {
        let key = self.pick(model.embryo_rep.keys());
        let e = model.embryos[&key];
        let mut p = self.of_flow(key);
        if self.pct(50) {
            p.tcp_flags = TCP_SYN | TCP_ACK;
            if self.pct(80) {
                p.payload = 0;
            }
            let ack = match self.rng.range(0, 9) {
                0 => self.rng.u32(),
                1 => e.syn_next.wrapping_add(1),
                _ => e.syn_next,
            };
            p.seq_ack = Some((self.rng.u32(), ack));
            return ("backend SYN-ACK to a half-open connection", p);
        }
        ("backend packet to a half-open connection", p)
    }

    /// The next random frame in `buf`.
    fn frame(&mut self, buf: &mut Vec<u8>, model: &Model) -> Recipe {
        let roll = self.rng.range(0, 99);
        let (recipe, ipv4) = match roll {
            0..=23 => {
                let p = self.to(addr(VIP, API_PORT), PROTO_TCP);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of("TCP to the TCP service"), true)
            }
            24..=33 => {
                let p = self.to(addr(VIP, DNS_PORT), PROTO_UDP);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of("UDP to the UDP service"), true)
            }
            34..=38 if !model.forward_keys.is_empty() => {
                let key = self.pick(model.forward_keys.keys());
                let p = self.of_flow(key);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of("client packet of a NATed flow"), true)
            }
            39..=43 if !model.embryo_fwd.is_empty() => {
                let (what, p) = self.client_of_embryo(model);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of(what), true)
            }
            44..=49 if !model.reply_keys.is_empty() => {
                let key = self.pick(model.reply_keys.keys());
                let p = self.of_flow(key);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of("backend reply to a NAT port of a flow"), true)
            }
            50..=55 if !model.embryo_rep.is_empty() => {
                let (what, p) = self.backend_of_embryo(model);
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of(what), true)
            }
            34..=59 => {
                // A reply-looking packet from a backend to a NAT port (or
                // one outside the range) with no flow.
                let (ip, mac) = self.pick(&BACKEND_HOSTS);
                let proto = self.pick(&[PROTO_TCP, PROTO_UDP]);
                let sport = if proto == PROTO_TCP {
                    API_PORT
                } else {
                    DNS_BACKEND_PORT
                };
                let dport = if self.pct(80) {
                    self.rng
                        .range(u32::from(NAT_PORT_MIN), u32::from(NAT_PORT_MAX))
                        as u16
                } else {
                    self.rng.u32() as u16
                };
                let mut p = Ipv4Frame::new(mac, addr(ip, sport), addr(SNAT, dport), proto);
                p.tcp_flags = self.tcp_flags();
                p.payload = self.payload_len();
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of("reply to a NAT port without a flow"), true)
            }
            60..=71 => {
                let (recipe, p) = self.not_a_service();
                write_ipv4(&mut self.rng, buf, &p);
                (Recipe::of(recipe), true)
            }
            72..=75 => {
                self.arp(buf);
                (Recipe::of("ARP"), false)
            }
            76..=79 => {
                self.ipv6(buf);
                (Recipe::of("IPv6"), false)
            }
            80..=84 => (Recipe::of(self.vlan(buf)), false),
            85..=89 => {
                buf.clear();
                let n = self.rng.range(0, 128) as usize;
                push_random(&mut self.rng, buf, n);
                (Recipe::of("random bytes"), false)
            }
            90..=94 => {
                buf.clear();
                buf.extend_from_slice(&LB_MAC);
                push_random(&mut self.rng, buf, 6);
                buf.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let n = self.rng.range(0, 100) as usize;
                push_random(&mut self.rng, buf, n);
                (
                    Recipe::of("random bytes after an IPv4 Ethernet header"),
                    true,
                )
            }
            _ => {
                // A plausible IPv4 header to a service, then random bytes.
                let (svc, proto) = self.pick(&[(API_PORT, PROTO_TCP), (DNS_PORT, PROTO_UDP)]);
                let mut p = self.to(addr(VIP, svc), proto);
                p.proto = 0; // no L4 header written
                p.payload = self.rng.range(0, 60) as usize;
                write_ipv4(&mut self.rng, buf, &p);
                buf[ETH_HDR_LEN + 9] = proto;
                let l4 = ETH_HDR_LEN + 20 + p.ip_options;
                if self.pct(50) && buf.len() >= l4 + 4 {
                    buf[l4 + 2..l4 + 4].copy_from_slice(&svc.to_be_bytes());
                }
                fix_checksums(buf);
                (
                    Recipe::of("random bytes after an IPv4 header to a service"),
                    true,
                )
            }
        };
        let mut recipe = recipe;
        if ipv4 {
            if self.pct(50) {
                let n = self.rng.range(1, 3);
                for _ in 0..n {
                    let m = self.mutate(buf);
                    recipe.push(m);
                }
                if self.pct(50) {
                    recipe.checksums_fixed = fix_checksums(buf);
                }
            }
        } else if self.pct(10) {
            let m = if self.pct(50) {
                flip_bits(&mut self.rng, buf, 0, 4)
            } else {
                truncate(&mut self.rng, buf)
            };
            recipe.push(m);
        }
        recipe
    }

    fn not_a_service(&mut self) -> (&'static str, Ipv4Frame) {
        let (which, dst, proto) = match self.rng.range(0, 8) {
            0 => (
                "TCP to the node's own port",
                addr(SNAT, self.pick(&[22, 80, 443, 10250, 19999, 30000])),
                PROTO_TCP,
            ),
            1 => (
                "UDP to the node below the NAT ports",
                addr(SNAT, self.rng.range(0, u32::from(NAT_PORT_MIN) - 1) as u16),
                PROTO_UDP,
            ),
            2 => {
                let port = loop {
                    let p = self.rng.u32() as u16;
                    if p != API_PORT {
                        break p;
                    }
                };
                (
                    "TCP to the VIP, not a service port",
                    addr(VIP, port),
                    PROTO_TCP,
                )
            }
            3 => (
                "UDP to the TCP service's port",
                addr(VIP, API_PORT),
                PROTO_UDP,
            ),
            4 => (
                "TCP to the UDP service's port",
                addr(VIP, DNS_PORT),
                PROTO_TCP,
            ),
            5 => (
                "TCP/UDP to another address on a service port",
                addr(
                    Ipv4Addr::from(self.rng.u32()),
                    self.pick(&[API_PORT, DNS_PORT]),
                ),
                self.pick(&[PROTO_TCP, PROTO_UDP]),
            ),
            6 => ("ICMP to the VIP", addr(VIP, 0), 1),
            _ => (
                "another IP protocol to the VIP",
                addr(VIP, API_PORT),
                self.pick(&[0, 2, 4, 41, 47, 50, 112, 132, 136, 255]),
            ),
        };
        let mut p = self.to(dst, proto);
        if proto != PROTO_TCP && proto != PROTO_UDP {
            p.payload = self.rng.range(0, 64) as usize;
        }
        (which, p)
    }

    fn arp(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        let (mac, client) = self.client();
        buf.extend_from_slice(&[0xff; 6]);
        buf.extend_from_slice(&mac);
        buf.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        let op = self.pick(&[1u16, 1, 2, 3, 0]);
        buf.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        buf.extend_from_slice(&op.to_be_bytes());
        buf.extend_from_slice(&mac);
        buf.extend_from_slice(&client.ip().octets());
        buf.extend_from_slice(&[0; 6]);
        let target = self.pick(&[VIP, VIP, SNAT, Ipv4Addr::new(10, 0, 0, 200)]);
        buf.extend_from_slice(&target.octets());
        if self.pct(30) {
            let n = self.rng.range(0, 18) as usize;
            buf.resize(buf.len() + n, 0); // Ethernet padding
        }
    }

    fn ipv6(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        let (mac, _) = self.client();
        buf.extend_from_slice(&LB_MAC);
        buf.extend_from_slice(&mac);
        buf.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let any = self.rng.u8();
        let next = self.pick(&[PROTO_TCP, PROTO_UDP, 58, 0, 44, any]);
        let payload = self.rng.range(0, 80) as usize;
        buf.extend_from_slice(&[0x60, 0, 0, 0]);
        buf.extend_from_slice(&(payload as u16).to_be_bytes());
        buf.extend_from_slice(&[next, 64]);
        buf.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
        push_random(&mut self.rng, buf, 8);
        if self.pct(50) {
            // An IPv4-mapped VIP: still not IPv4.
            buf.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            buf.extend_from_slice(&VIP.octets());
        } else {
            push_random(&mut self.rng, buf, 16);
        }
        let at = buf.len();
        push_random(&mut self.rng, buf, payload);
        if payload >= 4 && self.pct(50) {
            buf[at + 2..at + 4].copy_from_slice(&API_PORT.to_be_bytes());
        }
    }

    /// A frame to a service behind one or two VLAN tags.
    fn vlan(&mut self, buf: &mut Vec<u8>) -> &'static str {
        let (svc, proto) = self.pick(&[(API_PORT, PROTO_TCP), (DNS_PORT, PROTO_UDP)]);
        let p = self.to(addr(VIP, svc), proto);
        write_ipv4(&mut self.rng, buf, &p);
        let tci = (self.rng.u32() as u16).to_be_bytes();
        let (tags, what): (&[u8], _) = match self.rng.range(0, 2) {
            0 => (
                &[0x81, 0x00, tci[0], tci[1]],
                "802.1Q-tagged IPv4 to a service",
            ),
            1 => (
                &[0x88, 0xa8, tci[0], tci[1], 0x81, 0x00, 0, 42],
                "QinQ-tagged (802.1ad) IPv4 to a service",
            ),
            _ => (
                &[0x81, 0x00, tci[0], tci[1], 0x81, 0x00, 0, 42],
                "double 802.1Q-tagged IPv4 to a service",
            ),
        };
        buf.splice(12..12, tags.iter().copied());
        what
    }

    /// One mutation of an IPv4 frame, in place; its name.
    fn mutate(&mut self, buf: &mut Vec<u8>) -> &'static str {
        let ip = ETH_HDR_LEN;
        let l4 = || ip + 20; // where the L4 header would be without options
        let ihl_bytes = |b: &[u8]| b.get(ip).map_or(20, |v| usize::from(v & 0x0f) * 4).max(20);
        let lie = |rng: &mut Rng, truth: u16| -> u16 {
            match rng.range(0, 5) {
                0 => 0,
                1 => 0xffff,
                2 => truth.wrapping_add(rng.range(1, 16) as u16),
                3 => truth.wrapping_sub(rng.range(1, 16) as u16),
                4 => rng.range(0, 64) as u16,
                _ => rng.u32() as u16,
            }
        };
        let set16 = |b: &mut Vec<u8>, at: usize, v: u16| {
            if b.len() >= at + 2 {
                b[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        };
        match self.rng.range(0, 15) {
            0 => flip_bits(&mut self.rng, buf, 0, 8),
            1 => {
                let end = buf.len().min(ip + 60 + 60);
                flip_bits(&mut self.rng, &mut buf[..end], 0, 4)
            }
            2 => truncate(&mut self.rng, buf),
            3 => {
                let truth = (buf.len().saturating_sub(ip)) as u16;
                let v = lie(&mut self.rng, truth);
                set16(buf, ip + 2, v);
                "IPv4 total length lie"
            }
            4 => {
                let at = ip + ihl_bytes(buf);
                let truth = (buf.len().saturating_sub(at)) as u16;
                let v = lie(&mut self.rng, truth);
                set16(buf, at + 4, v);
                "UDP length lie"
            }
            5 => {
                if buf.len() > ip {
                    buf[ip] = (buf[ip] & 0xf0) | self.rng.range(0, 15) as u8;
                }
                "IHL changed"
            }
            6 => {
                // IP option bytes inserted, IHL and total length following.
                let ihl = ihl_bytes(buf);
                if buf.len() >= ip + ihl && ihl < 60 {
                    let n = 4 * self.rng.range(1, ((60 - ihl) / 4) as u32) as usize;
                    let mut opts = [0u8; 40];
                    fill(&mut self.rng, &mut opts[..n]);
                    let at = ip + ihl;
                    buf.splice(at..at, opts[..n].iter().copied());
                    buf[ip] = (buf[ip] & 0xf0) | ((ihl + n) / 4) as u8;
                    let tot = be16(buf, ip + 2).wrapping_add(n as u16);
                    set16(buf, ip + 2, tot);
                }
                "IP option bytes inserted"
            }
            7 => {
                let at = ip + ihl_bytes(buf) + 12;
                if buf.len() > at {
                    buf[at] = (self.rng.range(0, 15) as u8) << 4 | (buf[at] & 0x0f);
                }
                "TCP data offset changed"
            }
            8 => {
                let at = ip + ihl_bytes(buf) + 13;
                if buf.len() > at {
                    buf[at] = if self.pct(30) { 0 } else { self.rng.u8() };
                }
                "TCP flags changed"
            }
            9 => {
                let v: u16 = match self.rng.range(0, 3) {
                    0 => 0x2000,                                    // MF
                    1 => self.rng.range(1, 0x1fff) as u16,          // offset
                    2 => 0x2000 | self.rng.range(1, 0x1fff) as u16, // both
                    _ => 0x8000,                                    // the reserved bit
                };
                set16(buf, ip + 6, v);
                if v == 0x8000 {
                    "reserved IPv4 flag"
                } else {
                    "fragment"
                }
            }
            10 => {
                if buf.len() > ip {
                    buf[ip] = (self.rng.range(0, 15) as u8) << 4 | (buf[ip] & 0x0f);
                }
                "IP version changed"
            }
            11 => {
                if buf.len() > ip + 9 {
                    buf[ip + 9] = match buf[ip + 9] {
                        PROTO_TCP if self.pct(50) => PROTO_UDP,
                        PROTO_UDP if self.pct(50) => PROTO_TCP,
                        _ => self.rng.u8(),
                    };
                }
                "IP protocol changed"
            }
            12 => {
                let n = self.rng.range(1, 64) as usize;
                if self.pct(50) {
                    buf.resize(buf.len() + n, 0);
                } else {
                    push_random(&mut self.rng, buf, n);
                }
                buf.truncate(MAX_FRAME);
                "Ethernet padding added"
            }
            13 => {
                let t = self.pick(&[0x8100u16, 0x88a8, ETH_P_ARP, ETH_P_IPV6, 0x0801, 0]);
                set16(buf, 12, t);
                "ethertype changed"
            }
            14 => {
                let at = l4().min(buf.len());
                let end = buf.len().min(at + 24);
                fill(&mut self.rng, &mut buf[at..end]);
                "random bytes over the L4 header"
            }
            _ => {
                // The IPv4 total length and the UDP length agree on a
                // shorter datagram than the frame holds (the rest reads as
                // Ethernet padding), down to none at all.
                let ihl = ihl_bytes(buf);
                let have = buf.len().saturating_sub(ip + ihl) as u32;
                let n = self.rng.range(0, have.min(40)) as u16;
                set16(buf, ip + 2, ihl as u16 + n);
                set16(buf, ip + ihl + 4, n);
                "IPv4 and UDP lengths shrunk together"
            }
        }
    }
}

fn flip_bits(rng: &mut Rng, buf: &mut [u8], min: u32, max: u32) -> &'static str {
    if buf.is_empty() {
        return "bit flips";
    }
    for _ in 0..rng.range(min.max(1), max) {
        let bit = rng.range(0, buf.len() as u32 * 8 - 1);
        buf[(bit / 8) as usize] ^= 1 << (bit % 8);
    }
    "bit flips"
}

fn truncate(rng: &mut Rng, buf: &mut Vec<u8>) -> &'static str {
    let n = rng.range(0, buf.len() as u32) as usize;
    buf.truncate(n);
    "truncated"
}

// ---------------------------------------------------------------------------
// The run.

/// Frames every run starts with, the same for every seed: every truncation
/// of a set of templates, and every single-bit flip of the headers of an
/// established connection's packets both ways.
fn systematic(rng: &mut Rng, tcp: &Connection, udp: &Connection) -> Vec<(&'static str, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut templates: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut buf = Vec::new();
    let mut with = |what: &'static str, p: Ipv4Frame, rng: &mut Rng| {
        write_ipv4(rng, &mut buf, &p);
        templates.push((what, buf.clone()));
    };
    let (vip_tcp, vip_udp) = (addr(VIP, API_PORT), addr(VIP, DNS_PORT));
    let mut syn = Ipv4Frame::new(CLIENT_MAC, addr(CLIENT, 50000), vip_tcp, PROTO_TCP);
    syn.ip_options = 8;
    syn.tcp_options = 12;
    syn.payload = 10;
    with("SYN with IP and TCP options to the TCP service", syn, rng);
    let mut plain = Ipv4Frame::new(CLIENT_MAC, addr(CLIENT, 50001), vip_tcp, PROTO_TCP);
    plain.payload = 6;
    with("SYN to the TCP service", plain, rng);
    let mut dgram = Ipv4Frame::new(CLIENT_MAC, addr(CLIENT, 50002), vip_udp, PROTO_UDP);
    dgram.payload = 29;
    with("UDP to the UDP service", dgram, rng);
    dgram.ip_options = 4;
    with("UDP with an IP option to the UDP service", dgram, rng);
    for conn in [tcp, udp] {
        let mut data = Ipv4Frame::new(CLIENT_MAC, conn.client, conn.vip, conn.proto);
        data.tcp_flags = TCP_ACK | TCP_PSH;
        data.payload = 20;
        with("client data of an established connection", data, rng);
        let mut reply = Ipv4Frame::new(conn.backend_mac, conn.backend, conn.snat, conn.proto);
        reply.tcp_flags = TCP_ACK | TCP_PSH;
        reply.payload = 20;
        with("backend reply of an established connection", reply, rng);
    }
    let mut own = Ipv4Frame::new(CLIENT_MAC, addr(CLIENT, 50003), addr(SNAT, 22), PROTO_TCP);
    own.payload = 4;
    with("TCP to the node's own port 22", own, rng);
    let mut g = Gen { rng: Rng::new(1) };
    g.arp(&mut buf);
    templates.push(("ARP", buf.clone()));
    g.ipv6(&mut buf);
    templates.push(("IPv6", buf.clone()));
    let what = g.vlan(&mut buf);
    templates.push((what, buf.clone()));

    for (what, t) in &templates {
        for n in 0..=t.len() {
            frames.push((*what, t[..n].to_vec()));
        }
    }
    // Bit flips over the Ethernet, IPv4 and L4 headers of the established
    // connections' packets (templates 4..8).
    for (_, t) in &templates[4..8] {
        for bit in 0..(ETH_HDR_LEN + 20 + 20) * 8 {
            let mut f = t.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            frames.push(("single-bit flip of an established connection's packet", f));
        }
    }
    frames
}

/// A frame from one (MAC, address) to another.
type FrameOf = fn(Mac, SocketAddrV4, Mac, SocketAddrV4) -> Vec<u8>;

/// A connection opened before the fuzz.
struct Connection {
    proto: u8,
    client: SocketAddrV4,
    vip: SocketAddrV4,
    snat: SocketAddrV4,
    backend: SocketAddrV4,
    backend_mac: Mac,
}

struct Fuzz<'a> {
    node: &'a Node,
    runner: Runner<'a>,
    model: Model,
    want: Vec<u8>,
    seed: u64,
    /// Fuzz frames in the run.
    frames: u64,
    tally: Tally,
    counters: ReasonTotals,
    check_every: u64,
}

impl Fuzz<'_> {
    /// Runs `f` and checks what the program did with it; panics with
    /// everything needed to replay it. `index`: the fuzz frame's number;
    /// None for the frames of the established connections, before and
    /// after the fuzz. Returns the output frame.
    fn frame(&mut self, index: Option<u64>, f: &[u8], recipe: &dyn fmt::Display) -> &[u8] {
        let expect = self.model.classify(f);
        self.model.prepare(&expect, f, self.node);
        let (ret, len) = self.runner.run(f);
        let out = &self.runner.out[..len];
        let counted = self.model.check(f, ret, out, expect, &mut self.want);
        let counted = counted.unwrap_or_else(|e| {
            let (what, replay_frames) = match index {
                Some(i) => (format!("fuzz frame #{i}"), i + 1),
                None => ("a frame of an established connection".into(), self.frames),
            };
            panic!(
                "{what} (seed {:#x}; {recipe}): {e}\n  \
                 the model said: {expect:?}\n  \
                 frame ({} bytes): {}\n  \
                 output ({} bytes, {}): {}\n  \
                 replay: XDPLB_FUZZ_SEED={:#x} XDPLB_FUZZ_FRAMES={replay_frames}",
                self.seed,
                f.len(),
                hex(f),
                out.len(),
                action_name(ret),
                hex(out),
                self.seed,
            )
        });
        self.tally.add(counted, f.len());
        &self.runner.out[..len]
    }

    /// Every `check_every` frames (and at the end): the reason counters
    /// moved exactly as tallied. `last`: the last frame run.
    fn check_counters(&mut self, index: u64, last: &[u8]) {
        let now = self.node.reasons();
        if let Err(e) = self.tally.check(&self.counters, &now) {
            let frame = if self.tally.frames == 1 {
                format!("\n  frame ({} bytes): {}", last.len(), hex(last))
            } else {
                String::new()
            };
            panic!(
                "reason counters over fuzz frames #{}..=#{index} (seed {:#x}):\n  {e}{frame}\n  \
                 replay with XDPLB_FUZZ_SEED={:#x} XDPLB_FUZZ_FRAMES={} \
                 XDPLB_FUZZ_CHECK_EVERY=1 to find the frame",
                self.tally.first,
                self.seed,
                self.seed,
                index + 1
            );
        }
        self.counters = now;
        self.tally = Tally {
            first: index + 1,
            ..Tally::default()
        };
    }

    /// Opens a connection from `client` with `first`, answers it with
    /// `answer`, and, for TCP, completes the handshake with the client's
    /// `complete` (each frame checked by the model, and against the frame
    /// it must become); returns it.
    fn establish(
        &mut self,
        proto: u8,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        first: impl Fn(Mac, SocketAddrV4, Mac, SocketAddrV4) -> Vec<u8>,
        answer: impl Fn(Mac, SocketAddrV4, Mac, SocketAddrV4) -> Vec<u8>,
        complete: Option<FrameOf>,
    ) -> Connection {
        let f = first(CLIENT_MAC, client, LB_MAC, vip);
        let out = self.frame(None, &f, &"opening a connection").to_vec();
        let l4 = ETH_HDR_LEN + usize::from(out[ETH_HDR_LEN] & 0x0f) * 4;
        let snat = addr(SNAT, be16(&out, l4));
        let backend = addr(arr4(&out, ETH_HDR_LEN + 16).into(), be16(&out, l4 + 2));
        let backend_mac = neighbour_mac(backend.ip().octets()).expect("a backend");
        assert_eq!(
            out,
            first(LB_MAC, snat, backend_mac, backend),
            "the connection's first packet"
        );
        let a = answer(backend_mac, backend, LB_MAC, snat);
        let out = self.frame(None, &a, &"answering a connection").to_vec();
        assert_eq!(
            out,
            answer(LB_MAC, vip, CLIENT_MAC, client),
            "the connection's answer"
        );
        if let Some(complete) = complete {
            let f = complete(CLIENT_MAC, client, LB_MAC, vip);
            let out = self
                .frame(None, &f, &"completing a connection's handshake")
                .to_vec();
            assert_eq!(
                out,
                complete(LB_MAC, snat, backend_mac, backend),
                "the client's ACK of the SYN-ACK"
            );
        }
        Connection {
            proto,
            client,
            vip,
            snat,
            backend,
            backend_mac,
        }
    }

    /// A data segment (or datagram) each way still NATs as when the
    /// connection was opened, byte for byte.
    fn still_nats(
        &mut self,
        c: &Connection,
        data: &impl Fn(Mac, SocketAddrV4, Mac, SocketAddrV4) -> Vec<u8>,
    ) {
        let f = data(CLIENT_MAC, c.client, LB_MAC, c.vip);
        let out = self
            .frame(None, &f, &"the established connection, client side")
            .to_vec();
        let want = data(LB_MAC, c.snat, c.backend_mac, c.backend);
        assert!(
            out == want,
            "after the fuzz, the established connection {} → {} no longer NATs to {} → {}:\n  \
             expected {}\n  got      {}",
            c.client,
            c.vip,
            c.snat,
            c.backend,
            hex(&want),
            hex(&out)
        );
        let f = data(c.backend_mac, c.backend, LB_MAC, c.snat);
        let out = self
            .frame(None, &f, &"the established connection, backend side")
            .to_vec();
        let want = data(LB_MAC, c.vip, CLIENT_MAC, c.client);
        assert!(
            out == want,
            "after the fuzz, the established connection's replies {} → {} no longer NAT \
             to {} → {}:\n  expected {}\n  got      {}",
            c.backend,
            c.snat,
            c.vip,
            c.client,
            hex(&want),
            hex(&out)
        );
    }
}

fn tcp_syn(sm: Mac, s: SocketAddrV4, dm: Mac, d: SocketAddrV4) -> Vec<u8> {
    FrameBuilder::tcp(sm, dm, s, d)
        .seq(0x6b8b_4567)
        .tcp_data_offset(6)
        .payload(&[2, 4, 0x05, 0xb4])
        .build()
}

fn tcp_syn_ack(sm: Mac, s: SocketAddrV4, dm: Mac, d: SocketAddrV4) -> Vec<u8> {
    FrameBuilder::tcp(sm, dm, s, d)
        .flags(TCP_SYN | TCP_ACK)
        .seq(0x327b_23c6)
        .ack(0x6b8b_4568)
        .build()
}

fn tcp_ack(sm: Mac, s: SocketAddrV4, dm: Mac, d: SocketAddrV4) -> Vec<u8> {
    FrameBuilder::tcp(sm, dm, s, d)
        .flags(TCP_ACK)
        .seq(0x6b8b_4568)
        .ack(0x327b_23c7)
        .build()
}

fn tcp_data(sm: Mac, s: SocketAddrV4, dm: Mac, d: SocketAddrV4) -> Vec<u8> {
    FrameBuilder::tcp(sm, dm, s, d)
        .flags(TCP_ACK | TCP_PSH)
        .seq(0x6b8b_4568)
        .ack(0x327b_23c7)
        .payload(b"GET /healthz HTTP/1.1\r\n\r\n")
        .build()
}

fn udp_datagram(sm: Mac, s: SocketAddrV4, dm: Mac, d: SocketAddrV4) -> Vec<u8> {
    FrameBuilder::udp(sm, dm, s, d)
        .payload(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01")
        .build()
}

#[test]
fn a_million_fuzzed_frames_keep_the_invariants() {
    require_root();
    let settings = Settings::from_env();
    testrun::in_own_netns("fuzz", move || {
        fuzz(settings);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn fuzz(s: Settings) {
    let node = Node::start();
    let mut fz = Fuzz {
        node: &node,
        runner: Runner::new(&node),
        model: Model::new(&node),
        want: Vec::with_capacity(MAX_FRAME + 64),
        seed: s.seed,
        frames: s.frames,
        tally: Tally::default(),
        counters: node.reasons(),
        check_every: s.check_every,
    };

    let tcp = fz.establish(
        PROTO_TCP,
        addr(CLIENT, 40000),
        addr(VIP, API_PORT),
        tcp_syn,
        tcp_syn_ack,
        Some(tcp_ack),
    );
    let udp = fz.establish(
        PROTO_UDP,
        addr(CLIENT, 41000),
        addr(VIP, DNS_PORT),
        udp_datagram,
        udp_datagram,
        None,
    );
    fz.model.pin();
    assert_eq!(
        (fz.model.pinned.len(), fz.model.embryos.len()),
        (4, 0),
        "the two connections opened: two flows, no half-open connection"
    );
    fz.check_counters(0, &[]);
    fz.model
        .check_maps(&node, 0)
        .unwrap_or_else(|e| panic!("FLOWS and EMBRYOS after opening the connections:\n  {e}"));
    let mut flows_before = fz.model.flows.len();
    fz.tally.first = 0;

    let mut rng = Rng::new(s.seed);
    let fixed = systematic(&mut Rng::new(0), &tcp, &udp);
    let mut maker = Gen {
        rng: Rng::new(rng.u64()),
    };
    let mut buf = Vec::with_capacity(MAX_FRAME + 64);
    let mut verdicts = [0u64; 5];
    let mut most_embryos = 0;
    let started = Instant::now();
    let mut last_report = started;
    for i in 0..s.frames {
        let recipe = match fixed.get(i as usize) {
            Some((what, f)) => {
                buf.clear();
                buf.extend_from_slice(f);
                Recipe::of(what)
            }
            None => maker.frame(&mut buf, &fz.model),
        };
        fz.frame(Some(i), &buf, &recipe);
        let ret = fz.runner.last_ret;
        verdicts[ret.min(4) as usize] += 1;
        if (i + 1).is_multiple_of(fz.check_every) {
            fz.check_counters(i, &buf);
        }
        if (i + 1).is_multiple_of(FLOWS_EVERY) {
            fz.model
                .check_maps(&node, flows_before)
                .unwrap_or_else(|e| {
                    panic!(
                        "FLOWS and EMBRYOS after fuzz frame #{i} (seed {:#x}):\n  {e}\n  \
                     replay: XDPLB_FUZZ_SEED={:#x} XDPLB_FUZZ_FRAMES={}",
                        s.seed,
                        s.seed,
                        i + 1
                    )
                });
            // Ageing, now and then: at times once the table is half full,
            // often not until it has been full for a while (TCP connections
            // only come into FLOWS once their handshakes complete, so it
            // fills up more slowly than it would with every SYN's flow).
            let full = fz.model.flows.len() + 2 > MAX_FLOWS as usize;
            if (fz.model.flows.len() > MAX_FLOWS as usize / 2 && rng.range(0, 3) == 0)
                || (full && rng.range(0, 1) == 0)
            {
                fz.model.age(&node);
            }
            flows_before = fz.model.flows.len();
            // EMBRYOS' LRU, standing in for the kernel's: a few entries go
            // at every check, so that there are orphans early on; the rest
            // pile up until half-open connections hold most NAT ports of
            // the TCP backends (so that new ones must reclaim ports); above
            // EMBRYOS_HIGH, most go.
            most_embryos = most_embryos.max(fz.model.embryos.len());
            let percent = if fz.model.embryos.len() > EMBRYOS_HIGH {
                75
            } else {
                1
            };
            fz.model.evict(&node, &mut rng, percent);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let t = started.elapsed().as_secs_f64();
            eprintln!(
                "fuzz: {} of {} frames, {:.0} frames/s",
                i + 1,
                s.frames,
                (i + 1) as f64 / t
            );
        }
    }
    let elapsed = started.elapsed();
    if !s.frames.is_multiple_of(fz.check_every) {
        fz.check_counters(s.frames.saturating_sub(1), &buf);
    }

    // The connections opened before the fuzz, after it.
    fz.tally.first = s.frames;
    fz.still_nats(&tcp, &tcp_data);
    fz.still_nats(&udp, &udp_datagram);
    fz.check_counters(s.frames + 3, &[]);
    fz.model
        .check_maps(&node, flows_before)
        .unwrap_or_else(|e| {
            panic!(
                "FLOWS and EMBRYOS after the fuzz (seed {:#x}):\n  {e}",
                s.seed
            )
        });
    let flows = node.flows();
    for key in &fz.model.pinned {
        let half = fz.model.flows[key];
        let got = flows
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| Half::of(f));
        assert_eq!(
            got,
            Some(half),
            "the established connection's FLOWS entry {}",
            show_key(key)
        );
    }

    let totals = node.reasons();
    let st = &fz.model.stats;
    let rate = s.frames as f64 / elapsed.as_secs_f64();
    eprintln!(
        "fuzz: seed {:#x}: {} frames ({} systematic) in {:.1} s, {:.0} frames/s",
        s.seed,
        s.frames,
        fixed.len().min(s.frames as usize),
        elapsed.as_secs_f64(),
        rate
    );
    eprintln!(
        "fuzz: verdicts: aborted {} drop {} pass {} tx {} redirect {}",
        verdicts[0], verdicts[1], verdicts[2], verdicts[3], verdicts[4]
    );
    eprintln!(
        "fuzz: {} NATed ({} with valid checksums in); {} UDP flows opened; \
         {} half-open connections ({} by a SYN), at most {most_embryos} EMBRYOS entries; \
         {} SYN-ACKs recorded, {} reset back as stale, {} challenge ACKs reset back, \
         {} SYNs reopened; promoted {} by the handshake, \
         {} by the backend's answer; {} reset, {} reclaimed, {} ACKs lost, \
         {} packets of orphaned halves; {} refused (table full / no port), {} of them \
         promotions; {} flows aged, {} EMBRYOS entries evicted",
        st.nated,
        st.nated_valid_checksums,
        st.udp_opened,
        st.embryos_syn + st.embryos_mid,
        st.embryos_syn,
        st.synacks,
        st.stale_synacks,
        st.challenge_resets,
        st.reopened,
        st.promoted_handshake,
        st.promoted_answer,
        st.reset,
        st.reclaimed,
        st.lost,
        st.orphans,
        st.table_full,
        st.promotions_refused,
        st.aged,
        st.evicted
    );
    let mut line = String::from("fuzz: reasons:");
    for (r, c) in totals.nonzero() {
        let _ = write!(line, " {} {}", r.name(), c.packets);
    }
    eprintln!("{line}");

    // A long enough run must have reached every corner it is meant to:
    // a generator that stopped making some kind of frame would otherwise
    // pass unnoticed.
    if s.frames >= 200_000 {
        let missed: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| {
                !matches!(
                    r,
                    Reason::PassNotActive
                        | Reason::PassNoBackend
                        | Reason::PassLocalBackend
                        | Reason::RedirectForward
                        | Reason::RedirectReply
                        | Reason::DropNatPortsExhausted
                        | Reason::AbortedMapUpdate
                        | Reason::DropArpFenced
                        | Reason::PassNoNeigh
                )
            })
            .filter(|r| totals.get(**r).packets == 0)
            .map(|r| r.name())
            .collect();
        assert!(
            missed.is_empty(),
            "{} fuzzed frames never produced {missed:?}",
            s.frames
        );
        assert!(
            st.nated_valid_checksums > 0 && st.table_full > 0,
            "the fuzz never NATed a frame with valid checksums, or never filled FLOWS"
        );
        let corners = [
            ("half-open connections opened by a SYN", st.embryos_syn),
            ("half-open connections picked up mid-stream", st.embryos_mid),
            ("SYN-ACKs recorded", st.synacks),
            ("stale SYN-ACKs", st.stale_synacks),
            (
                "challenge ACKs reset back to the backend",
                st.challenge_resets,
            ),
            ("SYNs reopening a reclaimed connection", st.reopened),
            (
                "SYN-ACK retransmissions reset back",
                st.synack_retransmissions,
            ),
            ("promotions by the handshake", st.promoted_handshake),
            ("promotions by the backend's answer", st.promoted_answer),
            ("resets of half-open connections", st.reset),
            ("ACKs of connections whose reply half is gone", st.lost),
            ("packets of orphaned halves", st.orphans),
            ("promotions refused (FLOWS full)", st.promotions_refused),
            ("EMBRYOS evictions", st.evicted),
        ];
        let missed: Vec<&str> = corners
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(what, _)| *what)
            .collect();
        assert!(
            missed.is_empty(),
            "{} fuzzed frames never made {missed:?}",
            s.frames
        );
    }
    // Ports are reclaimed once half-open connections hold most of a
    // backend's, which takes some 300 000 frames to come to.
    if s.frames >= 1_000_000 {
        assert!(
            st.reclaimed > 0,
            "{} fuzzed frames never made a new connection reclaim a NAT port \
             (at most {most_embryos} EMBRYOS entries)",
            s.frames
        );
    }
}
