//! Flow ageing. The data plane records when each flow last saw a packet and
//! which TCP flags it saw; this removes flows idle longer than their state
//! allows, both halves (client→VIP and backend→SNAT) together.
//!
//! Nothing else removes flows: FLOWS is not an LRU, because with full NAT
//! an evicted established connection is a lost one. A full table refuses
//! new connections instead, so when it runs nearly full the sweep makes
//! room by expiring what is cheapest to lose: closing flows idle for a
//! second (and the rare SYN-only flow: a local backend's, whose kernel
//! guards its listener). Half-open TCP connections are not in FLOWS at
//! all: they live in EMBRYOS, an LRU the kernel keeps (lb-ebpf embryo.rs),
//! until their handshake completes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use lb_common::{
    flow::{
        DIR_FORWARD, DIR_REPLY, Embryo, FLOW_LOCAL, Flow, FlowKey, SEEN_ACK, SEEN_FIN, SEEN_RST,
    },
    service::PROTO_TCP,
};

use crate::batch;
pub use crate::config::Timeouts;

impl Timeouts {
    /// How long a flow may stay idle, by what it has seen.
    pub fn for_flow(&self, proto: u8, seen: u8) -> Duration {
        if proto != PROTO_TCP {
            self.udp
        } else if seen & (SEEN_FIN | SEEN_RST) != 0 {
            self.tcp_closing
        } else if seen & SEEN_ACK != 0 {
            self.tcp_established
        } else {
            self.tcp_syn
        }
    }
}

/// From this share of the table on, the sweep runs with [`Timeouts::under_pressure`].
pub const PRESSURE_FILL: f64 = 0.9;

impl Timeouts {
    /// The timeouts of a nearly full table: established connections keep
    /// theirs (losing one is what the table exists to prevent); closing
    /// ones and SYN-only ones (a local backend's) go after a second idle,
    /// UDP after ten.
    pub fn under_pressure(&self) -> Timeouts {
        let second = Duration::from_secs(1);
        Timeouts {
            tcp_syn: self.tcp_syn.min(second),
            tcp_closing: self.tcp_closing.min(second),
            udp: self.udp.min(10 * second),
            ..*self
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub connections: usize,
    pub expired: usize,
    /// Entries in the table when the sweep began.
    pub entries: usize,
    /// The table was nearly full: the sweep used the pressure timeouts.
    pub pressure: bool,
    /// Connections seen closing (FIN or RST) or expired, for the flow log.
    pub ended: Vec<Ended>,
    /// NAT ports held towards each backend (by id) by the connections the
    /// sweep left in the table: their reply halves.
    pub nat_ports: BTreeMap<u32, u32>,
}

/// How a connection ended, as the flow log says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A FIN was seen (either way).
    Fin,
    /// An RST was seen.
    Rst,
    /// Idle past its timeout, with neither.
    Idle,
    /// Its flows were removed because its backend went down (on_down = reset).
    Reset,
}

/// A connection that is over, by its client → VIP key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub key: FlowKey,
    /// Its last packet (jiffies), either way.
    pub last_seen: u64,
    pub how: End,
}

/// Whether a connection that has seen `seen` is over: closing, or
/// `expired`; and how.
fn end_of(seen: u8, expired: bool) -> Option<End> {
    if seen & SEEN_RST != 0 {
        Some(End::Rst)
    } else if seen & SEEN_FIN != 0 {
        Some(End::Fin)
    } else {
        expired.then_some(End::Idle)
    }
}

/// A reading of the data plane's clock (lb_common::clock): jiffies, and
/// how many make a second.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub ticks: u64,
    pub per_s: u32,
}

impl Now {
    pub fn read(per_s: u32) -> Result<Now> {
        let ticks = lb_common::clock::jiffies()
            .context("reading the data plane's clock (jiffies) from /proc/timer_list")?;
        Ok(Now { ticks, per_s })
    }

    /// How long ago the data plane stamped `last`.
    fn since(self, last: u64) -> Duration {
        let ticks = self.ticks.saturating_sub(last);
        Duration::from_secs_f64(ticks as f64 / f64::from(self.per_s.max(1)))
    }
}

/// The expired keys among `flows`, pairing each connection's two halves.
/// Pure, so it is tested without a kernel.
pub fn expired(flows: &[(FlowKey, Flow)], now: Now, timeouts: &Timeouts) -> (Vec<FlowKey>, usize) {
    let (dead, connections, _) = judge(flows, now, timeouts);
    (dead, connections)
}

/// [`expired`], and the connections that are over ([`Ended`]).
fn judge(
    flows: &[(FlowKey, Flow)],
    now: Now,
    timeouts: &Timeouts,
) -> (Vec<FlowKey>, usize, Vec<Ended>) {
    let by_key: HashMap<FlowKey, &Flow> = flows.iter().map(|(k, f)| (*k, f)).collect();
    let mut dead = Vec::new();
    let mut ended = Vec::new();
    let mut connections = 0;
    let mut paired = std::collections::HashSet::new();
    for (key, flow) in flows.iter().filter(|(_, f)| f.dir == DIR_FORWARD) {
        connections += 1;
        let reply_key = FlowKey::reply_of(
            flow.new_src,
            flow.new_dst,
            flow.new_sport,
            flow.new_dport,
            key.proto,
        );
        let reply = (flow.flags & FLOW_LOCAL == 0)
            .then(|| by_key.get(&reply_key))
            .flatten();
        let (last, seen) = match reply {
            Some(r) => {
                paired.insert(reply_key);
                (flow.last_seen.max(r.last_seen), flow.tcp_seen | r.tcp_seen)
            }
            None => (flow.last_seen, flow.tcp_seen),
        };
        let expired = now.since(last) > timeouts.for_flow(key.proto, seen);
        if expired {
            dead.push(*key);
            if reply.is_some() {
                dead.push(reply_key);
            }
        }
        if let Some(how) = end_of(seen, expired) {
            ended.push(Ended {
                key: *key,
                last_seen: last,
                how,
            });
        }
    }
    // Reply halves whose forward half is gone (the data plane gives back a
    // half-made connection's reply half at once; this is for the rest).
    for (key, flow) in flows
        .iter()
        .filter(|(k, f)| f.dir != DIR_FORWARD && !paired.contains(k))
    {
        if now.since(flow.last_seen) > timeouts.for_flow(key.proto, flow.tcp_seen) {
            dead.push(*key);
        }
    }
    (dead, connections, ended)
}

/// One pass over FLOWS (of `capacity` entries): removes what has expired.
/// `ticks_per_s`: the data plane clock's rate (DataplaneConfig).
pub fn sweep(
    map: &mut BpfHashMap<MapData, FlowKey, Flow>,
    timeouts: &Timeouts,
    capacity: u32,
    ticks_per_s: u32,
) -> Result<Sweep> {
    // Read before the snapshot: a flow stamped meanwhile looks younger,
    // never older, than it is.
    let now = Now::read(ticks_per_s)?;
    let snapshot: Vec<(FlowKey, Flow)> =
        batch::lookup_all(fd(map)).context("reading the flow table")?;
    let pressure = snapshot.len() as f64 >= PRESSURE_FILL * f64::from(capacity);
    let timeouts = if pressure {
        timeouts.under_pressure()
    } else {
        *timeouts
    };
    let (dead, connections, ended) = judge(&snapshot, now, &timeouts);
    // A flow the data plane gave back meanwhile is simply gone already.
    let removed = batch::delete(fd(map), &dead).context("removing expired flows")?;
    Ok(Sweep {
        connections,
        expired: removed,
        entries: snapshot.len(),
        pressure,
        ended,
        nat_ports: reply_halves(&snapshot, &dead),
    })
}

/// Reply halves per backend among `flows`, but those in `dead`: one per
/// NAT port a connection holds (a (SNAT address, port) pair is unique per
/// backend, so this is how many of a backend's pairs are taken). A local
/// backend's flows have no reply half and hold no port.
fn reply_halves(flows: &[(FlowKey, Flow)], dead: &[FlowKey]) -> BTreeMap<u32, u32> {
    let dead: HashSet<&FlowKey> = dead.iter().collect();
    let mut by_backend = BTreeMap::new();
    for (key, flow) in flows {
        if flow.dir == DIR_REPLY && !dead.contains(key) {
            *by_backend.entry(flow.backend).or_insert(0) += 1;
        }
    }
    by_backend
}

/// EMBRYOS as a sweep sees it: half-open connections, and the NAT ports
/// they hold towards each backend (which a new connection may reclaim).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HalfOpen {
    /// Entries (two per half-open connection).
    pub entries: usize,
    /// Reply halves per backend id.
    pub nat_ports: BTreeMap<u32, u32>,
}

/// Reads EMBRYOS whole (in batches: under a flood it is full) and counts
/// what it holds. Nothing is removed: the kernel evicts, and the data
/// plane promotes or reclaims.
pub fn half_open(map: &BpfHashMap<MapData, FlowKey, Embryo>) -> Result<HalfOpen> {
    use std::os::fd::AsFd as _;
    let entries: Vec<(FlowKey, Embryo)> = batch::lookup_all(map.map().fd().as_fd())
        .context("reading the table of half-open connections (EMBRYOS)")?;
    Ok(count_half_open(&entries))
}

fn count_half_open(entries: &[(FlowKey, Embryo)]) -> HalfOpen {
    let mut nat_ports = BTreeMap::new();
    for (_, e) in entries.iter().filter(|(_, e)| e.flow.dir == DIR_REPLY) {
        *nat_ports.entry(e.flow.backend).or_insert(0) += 1;
    }
    HalfOpen {
        entries: entries.len(),
        nat_ports,
    }
}

/// NAT ports in use towards one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatUse {
    /// Held by established connections (FLOWS): never taken from them.
    pub established: u32,
    /// Held by half-open ones (EMBRYOS): a new connection that finds no
    /// free port takes the oldest of these.
    pub half_open: u32,
}

/// The two counts by backend id, together.
pub fn nat_use(
    established: &BTreeMap<u32, u32>,
    half_open: &BTreeMap<u32, u32>,
) -> BTreeMap<u32, NatUse> {
    let mut all: BTreeMap<u32, NatUse> = BTreeMap::new();
    for (&id, &n) in established {
        all.entry(id).or_default().established = n;
    }
    for (&id, &n) in half_open {
        all.entry(id).or_default().half_open = n;
    }
    all
}

/// From this share of a backend's NAT ports held by established
/// connections on, the agent warns: at 100 % its new connections fail
/// (`drop_nat_ports_exhausted`), and well before, a new connection's
/// NAT_PORT_TRIES draws find no free port more and more often.
pub const NAT_WARN_FILL: f64 = 0.8;

/// Which backends' NAT ports are running out, each said at most once per
/// `every` (sans-IO: the caller passes the clock).
#[derive(Debug)]
pub struct NatWatch {
    every: Duration,
    /// When each backend (by id) was last warned about.
    warned: HashMap<u32, Instant>,
}

impl NatWatch {
    pub fn new(every: Duration) -> Self {
        NatWatch {
            every,
            warned: HashMap::new(),
        }
    }

    /// The backends whose established connections hold at least
    /// [`NAT_WARN_FILL`] of `capacity` ports, but for those warned about
    /// less than `every` ago.
    pub fn due(&mut self, usage: &BTreeMap<u32, NatUse>, capacity: u32, now: Instant) -> Vec<u32> {
        let every = self.every;
        self.warned.retain(|_, at| now.duration_since(*at) < every);
        let threshold = NAT_WARN_FILL * f64::from(capacity);
        let mut due = Vec::new();
        for (&id, u) in usage {
            if f64::from(u.established) >= threshold && !self.warned.contains_key(&id) {
                self.warned.insert(id, now);
                due.push(id);
            }
        }
        due
    }
}

/// What [`reset_backend`] removed.
#[derive(Debug, Default)]
pub struct Reset {
    /// Flow entries (two per NATed connection).
    pub removed: usize,
    /// Half-open entries (EMBRYOS, two per connection).
    pub half_open: usize,
    /// The connections, for the flow log (half-open ones were never in
    /// it: it hears of a TCP connection when its handshake completes).
    pub ended: Vec<Ended>,
}

/// Removes every flow (both halves) of one backend, established and
/// half-open: its clients' next packets start new flows on healthy
/// backends, which answer with a reset, so the clients reconnect at once
/// instead of waiting on a dead peer; and a retransmitted SYN, which
/// would follow its half-open entry to the dead backend until the entry
/// is evicted, picks a healthy one.
pub fn reset_backend(
    map: &mut BpfHashMap<MapData, FlowKey, Flow>,
    embryos: &mut BpfHashMap<MapData, FlowKey, Embryo>,
    backend: u32,
) -> Result<Reset> {
    use std::os::fd::AsFd as _;
    // Half-open first: one promoted meanwhile is in FLOWS when that is
    // read. No new one names the backend: the caller has taken it out of
    // the Maglev table already.
    let embryo_fd = embryos.map().fd().as_fd();
    let half_open: Vec<(FlowKey, Embryo)> = batch::lookup_all(embryo_fd)
        .context("reading the table of half-open connections (EMBRYOS)")?;
    let doomed: Vec<FlowKey> = half_open
        .iter()
        .filter(|(_, e)| e.flow.backend == backend)
        .map(|(k, _)| *k)
        .collect();
    let half_open =
        batch::delete(embryo_fd, &doomed).context("removing a backend's half-open connections")?;
    let flows: Vec<(FlowKey, Flow)> =
        batch::lookup_all(fd(map)).context("reading the flow table")?;
    let mine: Vec<&(FlowKey, Flow)> = flows.iter().filter(|(_, f)| f.backend == backend).collect();
    let keys: Vec<FlowKey> = mine.iter().map(|(k, _)| *k).collect();
    let removed = batch::delete(fd(map), &keys).context("removing a backend's flows")?;
    let ended = mine
        .iter()
        .filter(|(_, f)| f.dir == DIR_FORWARD)
        .map(|(k, f)| Ended {
            key: *k,
            last_seen: f.last_seen,
            how: End::Reset,
        })
        .collect();
    Ok(Reset {
        removed,
        half_open,
        ended,
    })
}

fn fd(map: &BpfHashMap<MapData, FlowKey, Flow>) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd as _;
    map.map().fd().as_fd()
}

#[cfg(test)]
mod tests {
    use lb_common::flow::{DIR_REPLY, SEEN_SYN};

    use super::*;

    /// Ticks per second in these tests.
    const S: u64 = 1000;

    fn at(ticks: u64) -> Now {
        Now {
            ticks,
            per_s: S as u32,
        }
    }

    fn pair(
        client_port: u8,
        last_fwd: u64,
        last_rev: u64,
        seen_fwd: u8,
        seen_rev: u8,
    ) -> [(FlowKey, Flow); 2] {
        let fwd_key = FlowKey {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 100],
            sport: [0, client_port],
            dport: [25, 43],
            proto: 6,
            _pad: [0; 3],
        };
        let fwd = Flow {
            last_seen: last_fwd,
            new_src: [10, 0, 0, 2],
            new_dst: [10, 0, 0, 21],
            new_sport: [78, client_port],
            new_dport: [25, 43],
            tcp_seen: seen_fwd,
            dir: DIR_FORWARD,
            ..Flow::default()
        };
        let rev_key = FlowKey::reply_of(fwd.new_src, fwd.new_dst, fwd.new_sport, fwd.new_dport, 6);
        let rev = Flow {
            last_seen: last_rev,
            tcp_seen: seen_rev,
            dir: DIR_REPLY,
            ..Flow::default()
        };
        [(fwd_key, fwd), (rev_key, rev)]
    }

    /// The whole sweep on a real kernel map (bpftool makes one shaped like
    /// FLOWS, pinned in a directory of our own) and the real clock:
    /// closing connections idle for a minute go, an established one idle
    /// as long stays; with the table nearly full, a half-open one idle
    /// for 2 s goes too.
    #[test]
    fn sweep_ages_a_kernel_flow_table_by_jiffies() {
        let per_s = lb_common::clock::ticks_per_s(Duration::from_millis(200)).unwrap();
        let mut m = batch::TestMap::hash("FLOWS", size_of::<FlowKey>(), size_of::<Flow>(), 64);
        let mut map: BpfHashMap<MapData, FlowKey, Flow> = m.take();
        let now = lb_common::clock::jiffies().unwrap();
        let ago = |s: u64| now - s * u64::from(per_s);
        let est = SEEN_SYN | SEEN_ACK;
        let mut live = Vec::new();
        for (k, f) in pair(1, ago(60), ago(60), est | SEEN_FIN, est) {
            map.insert(k, f, 0).unwrap();
        }
        for (k, f) in pair(2, ago(60), ago(60), est, est) {
            map.insert(k, f, 0).unwrap();
            live.push(k);
        }
        for (k, f) in pair(3, ago(2), 0, SEEN_SYN, 0) {
            map.insert(k, f, 0).unwrap();
            live.push(k);
        }
        let t = Timeouts::default();
        let s = sweep(&mut map, &t, 64, per_s).unwrap();
        assert_eq!(
            (s.connections, s.expired, s.entries, s.pressure),
            (3, 2, 6, false)
        );
        let closed = pair(1, 0, 0, 0, 0)[0].0;
        assert_eq!(
            s.ended,
            vec![Ended {
                key: closed,
                last_seen: ago(60),
                how: End::Fin
            }],
            "the closed connection, once"
        );
        let mut left: Vec<FlowKey> = map.keys().map(Result::unwrap).collect();
        left.sort_by_key(|k| bytemuck::bytes_of(k).to_vec());
        live.sort_by_key(|k| bytemuck::bytes_of(k).to_vec());
        assert_eq!(left, live);
        // Four entries in a table of four: pressure.
        let s = sweep(&mut map, &t, 4, per_s).unwrap();
        assert_eq!((s.expired, s.pressure), (2, true));
        assert_eq!(map.keys().count(), 2, "the established connection stays");
    }

    #[test]
    fn established_flows_live_long_closing_ones_short() {
        let t = Timeouts::default();
        let now = 10_000 * S;
        let mut flows = Vec::new();
        flows.extend(pair(
            1,
            now - 600 * S,
            now - 600 * S,
            SEEN_SYN | SEEN_ACK,
            SEEN_SYN | SEEN_ACK,
        )); // established, 10 min idle
        flows.extend(pair(
            2,
            now - 20 * S,
            now - 20 * S,
            SEEN_ACK | SEEN_FIN,
            SEEN_ACK,
        )); // closing, 20 s idle
        flows.extend(pair(3, now - 40 * S, now - 40 * S, SEEN_SYN, 0)); // SYN never answered
        let (dead, connections) = expired(&flows, at(now), &t);
        assert_eq!(connections, 3);
        assert!(!dead.contains(&flows[0].0) && !dead.contains(&flows[1].0));
        assert!(
            dead.contains(&flows[2].0) && dead.contains(&flows[3].0),
            "closing flow and its reply half"
        );
        assert!(dead.contains(&flows[4].0) && dead.contains(&flows[5].0));
    }

    /// The flow log hears of a connection once it has seen a FIN or RST,
    /// expired or not yet, and of one that expired idle; not of a live one.
    #[test]
    fn closing_and_expired_connections_are_over() {
        let t = Timeouts::default();
        let now = 10_000 * S;
        let est = SEEN_SYN | SEEN_ACK;
        let mut flows = Vec::new();
        flows.extend(pair(1, now - 5 * S, now - 3 * S, est | SEEN_FIN, est));
        flows.extend(pair(2, now - 600 * S, now - 5 * S, est, est | SEEN_RST));
        flows.extend(pair(3, now - 40 * S, 0, SEEN_SYN, 0));
        flows.extend(pair(4, now - 5 * S, now - 5 * S, est, est));
        let (dead, _, ended) = judge(&flows, at(now), &t);
        assert_eq!(
            dead,
            vec![flows[4].0, flows[5].0],
            "only the half-open one expired"
        );
        assert_eq!(
            ended,
            vec![
                Ended {
                    key: flows[0].0,
                    last_seen: now - 3 * S,
                    how: End::Fin
                },
                Ended {
                    key: flows[2].0,
                    last_seen: now - 5 * S,
                    how: End::Rst
                },
                Ended {
                    key: flows[4].0,
                    last_seen: now - 40 * S,
                    how: End::Idle
                },
            ]
        );
    }

    #[test]
    fn a_busy_reply_half_keeps_the_connection() {
        // A watch: the client is silent, the apiserver streams events.
        let now = 10_000 * S;
        let flows = pair(
            1,
            now - 7200 * S,
            now - 5 * S,
            SEEN_SYN | SEEN_ACK,
            SEEN_ACK,
        );
        assert!(expired(&flows, at(now), &Timeouts::default()).0.is_empty());
    }

    #[test]
    fn a_nearly_full_table_sheds_half_open_and_closing_flows_not_established_ones() {
        let t = Timeouts::default().under_pressure();
        let now = 1000 * S;
        let mut flows = Vec::new();
        flows.extend(pair(1, now - 2 * S, 0, SEEN_SYN, 0));
        flows.extend(pair(
            2,
            now - 2 * S,
            now - 2 * S,
            SEEN_SYN | SEEN_ACK | SEEN_FIN,
            SEEN_ACK,
        ));
        flows.extend(pair(
            3,
            now - 600 * S,
            now - 600 * S,
            SEEN_SYN | SEEN_ACK,
            SEEN_SYN | SEEN_ACK,
        ));
        let (dead, connections) = expired(&flows, at(now), &t);
        assert_eq!(connections, 3);
        let dead_clients: std::collections::BTreeSet<[u8; 2]> = dead
            .iter()
            .filter(|k| k.dport == [0x19, 0x2b])
            .map(|k| k.sport)
            .collect();
        assert_eq!(
            dead.len(),
            4,
            "both halves of connections 1 and 2: {dead:?}"
        );
        assert_eq!(dead_clients.len(), 2);
        // Without pressure, the same table keeps all three.
        assert!(expired(&flows, at(now), &Timeouts::default()).0.is_empty());
    }

    /// Reply halves are NAT ports: counted per backend, but for the ones
    /// this sweep removes; a local backend's flow holds none.
    #[test]
    fn nat_ports_in_use_are_the_reply_halves_that_stay() {
        let with_backend = |mut p: [(FlowKey, Flow); 2], id| {
            p[0].1.backend = id;
            p[1].1.backend = id;
            p
        };
        let mut flows = Vec::new();
        flows.extend(with_backend(pair(1, 0, 0, 0, 0), 7));
        flows.extend(with_backend(pair(2, 0, 0, 0, 0), 7));
        flows.extend(with_backend(pair(3, 0, 0, 0, 0), 9));
        let mut local = pair(4, 0, 0, 0, 0)[0];
        local.1.backend = 9;
        local.1.flags = FLOW_LOCAL;
        flows.push(local);
        assert_eq!(reply_halves(&flows, &[]), BTreeMap::from([(7, 2), (9, 1)]));
        let dead = [flows[2].0, flows[3].0];
        assert_eq!(
            reply_halves(&flows, &dead),
            BTreeMap::from([(7, 1), (9, 1)])
        );
    }

    #[test]
    fn half_open_ports_are_the_embryos_reply_halves() {
        let embryo = |(key, flow): (FlowKey, Flow), backend| {
            (
                key,
                Embryo {
                    flow: Flow { backend, ..flow },
                    ..Embryo::default()
                },
            )
        };
        let [a, b] = pair(1, 0, 0, 0, 0);
        let [c, d] = pair(2, 0, 0, 0, 0);
        let [e, _] = pair(3, 0, 0, 0, 0);
        // A forward half whose reply half was evicted holds no port.
        let entries = [
            embryo(a, 3),
            embryo(b, 3),
            embryo(c, 3),
            embryo(d, 3),
            embryo(e, 4),
        ];
        assert_eq!(
            count_half_open(&entries),
            HalfOpen {
                entries: 5,
                nat_ports: BTreeMap::from([(3, 2)]),
            }
        );
        let both = nat_use(
            &BTreeMap::from([(3, 10), (5, 1)]),
            &BTreeMap::from([(3, 2)]),
        );
        assert_eq!(
            both,
            BTreeMap::from([
                (
                    3,
                    NatUse {
                        established: 10,
                        half_open: 2
                    }
                ),
                (
                    5,
                    NatUse {
                        established: 1,
                        half_open: 0
                    }
                ),
            ])
        );
    }

    /// The count on a real LRU map, read in batches as under a flood.
    #[test]
    fn half_open_reads_a_kernel_lru_map() {
        let mut m = batch::TestMap::new(
            "lru_hash",
            "EMBRYOS_COUNT",
            size_of::<FlowKey>(),
            size_of::<Embryo>(),
            8192,
        );
        let mut map: BpfHashMap<MapData, FlowKey, Embryo> = m.take();
        for port in 0..3000u16 {
            let [(fk, f), (rk, r)] = pair(0, 0, 0, 0, 0);
            let sport = port.to_be_bytes();
            let fk = FlowKey { sport, ..fk };
            let rk = FlowKey { dport: sport, ..rk };
            let backend = u32::from(port % 3);
            for (k, flow) in [(fk, f), (rk, r)] {
                let e = Embryo {
                    flow: Flow { backend, ..flow },
                    ..Embryo::default()
                };
                map.insert(k, e, 0).unwrap();
            }
        }
        let h = half_open(&map).unwrap();
        assert_eq!(h.entries, 6000);
        assert_eq!(
            h.nat_ports,
            BTreeMap::from([(0, 1000), (1, 1000), (2, 1000)])
        );
    }

    /// on_down = reset: both tables lose the backend's entries, and only
    /// its; the flow log hears of its established connections.
    #[test]
    fn reset_removes_a_backends_flows_and_half_open_connections() {
        // Names of their own: each test's maps go in a directory named
        // after them, and tests run in parallel.
        let mut f =
            batch::TestMap::hash("FLOWS_RESET", size_of::<FlowKey>(), size_of::<Flow>(), 64);
        let mut e = batch::TestMap::new(
            "lru_hash",
            "EMBRYOS_RESET",
            size_of::<FlowKey>(),
            size_of::<Embryo>(),
            64,
        );
        let mut flows: BpfHashMap<MapData, FlowKey, Flow> = f.take();
        let mut embryos: BpfHashMap<MapData, FlowKey, Embryo> = e.take();
        for (port, backend) in [(1, 7), (2, 8)] {
            for (k, flow) in pair(port, 5, 5, SEEN_SYN | SEEN_ACK, SEEN_ACK) {
                flows.insert(k, Flow { backend, ..flow }, 0).unwrap();
            }
        }
        for (port, backend) in [(3, 7), (4, 7), (5, 8)] {
            for (k, flow) in pair(port, 5, 0, SEEN_SYN, 0) {
                let flow = Flow { backend, ..flow };
                embryos
                    .insert(
                        k,
                        Embryo {
                            flow,
                            ..Embryo::default()
                        },
                        0,
                    )
                    .unwrap();
            }
        }
        let r = reset_backend(&mut flows, &mut embryos, 7).unwrap();
        assert_eq!((r.removed, r.half_open), (2, 4));
        assert_eq!(r.ended.len(), 1);
        assert_eq!(
            (r.ended[0].key, r.ended[0].how),
            (pair(1, 0, 0, 0, 0)[0].0, End::Reset)
        );
        let left = |backends: Vec<u32>| {
            let mut b = backends;
            b.sort_unstable();
            b
        };
        assert_eq!(
            left(flows.iter().map(|r| r.unwrap().1.backend).collect()),
            [8, 8]
        );
        assert_eq!(
            left(embryos.iter().map(|r| r.unwrap().1.flow.backend).collect()),
            [8, 8]
        );
    }

    /// From 80 % of a backend's ports held by established connections, a
    /// warning, then none for that backend for a minute whatever the count
    /// does; half-open ports do not count (they are reclaimed).
    #[test]
    fn nat_ports_running_out_are_said_once_a_minute_per_backend() {
        let use_of = |established, half_open| NatUse {
            established,
            half_open,
        };
        let mut w = NatWatch::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let usage = BTreeMap::from([
            (1, use_of(799, 500)),
            (2, use_of(800, 0)),
            (3, use_of(1000, 0)),
        ]);
        assert_eq!(w.due(&usage, 1000, at(0)), [2, 3]);
        assert_eq!(w.due(&usage, 1000, at(30)), Vec::<u32>::new());
        let usage = BTreeMap::from([(1, use_of(900, 0)), (2, use_of(900, 0))]);
        assert_eq!(w.due(&usage, 1000, at(59)), [1], "1 is new; 2 was said");
        assert_eq!(w.due(&usage, 1000, at(60)), [2], "a minute on");
        assert_eq!(
            w.due(&usage, 2000, at(200)),
            Vec::<u32>::new(),
            "a larger pool"
        );
    }

    #[test]
    fn orphan_reply_halves_age_out() {
        let now = 10_000 * S;
        let [_, rev] = pair(1, 0, now - 120 * S, 0, SEEN_SYN);
        let (dead, connections) = expired(&[rev], at(now), &Timeouts::default());
        assert_eq!((dead, connections), (vec![rev.0], 0));
    }
}
