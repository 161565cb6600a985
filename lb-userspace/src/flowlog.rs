//! The flow log (`--flow-log`): a line per new connection and one when it
//! ends, like nginx's stream access log (`$remote_addr $upstream_addr
//! [$time_local] …`), into the agent's log or a file.
//!
//! ```text
//! 10.77.124.10:54916 10.77.124.100:6443 10.77.124.23:6443 [29/Nov/2026:23:55:01 +0000] TCP new nat=10.77.124.11:22463
//! 10.77.124.10:54916 10.77.124.100:6443 10.77.124.23:6443 [29/Nov/2026:23:55:03 +0000] TCP close how=fin duration=2s
//! - - - [29/Nov/2026:23:55:05 +0000] - suppressed count=1838 ring_full=0 limit=50/s burst=50
//! ```
//!
//! Client, VIP and backend, the time, the protocol, then what happened:
//! `new` (with the NAT source the backend sees as its client, or `local`
//! for a stacked master), `close` (how: `fin`/`rst` seen, `idle` past its
//! timeout, `reset` by on_down = reset; its duration, to the second: the
//! data plane stamps a flow at most once a second) or `suppressed` (new
//! connections the data plane's rate limit kept out of the log since the
//! last such line, and those that found the ring buffer full). No byte
//! counts: counting a connection's bytes means a write to its shared flow
//! entry on every packet, which the established path avoids (see
//! conntrack::FlowRef::touch).
//!
//! The data plane sends `new` events through a ring buffer, rate limited
//! per CPU (lb-ebpf/src/flowlog.rs); `close` lines come from the agent's
//! ageing sweep ([`crate::flows::Ended`]), for connections whose `new`
//! line this agent wrote (a connection the rate limit kept out, or opened
//! before the agent started, gets no close line).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use lb_common::{
    flow::{FLOW_LOCAL, FlowKey},
    flowlog::{FlowEvent, FlowLogCpu},
    maps,
    service::{PROTO_TCP, PROTO_UDP},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{info, warn};

use crate::{
    flows::{End, Ended},
    loader::FlowLogLimit,
    maps::take,
};

/// Where the flow log goes (`--flow-log`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Dest {
    /// No flow log, and no flow log code in the data plane.
    #[default]
    Off,
    /// Into the agent's own log (target `xdplb::flow`).
    Log,
    /// Appended to a file (logrotate: `copytruncate`).
    File(PathBuf),
}

/// `off`, `log` or a file name.
pub fn parse_dest(s: &str) -> Result<Dest, String> {
    match s {
        "off" => Ok(Dest::Off),
        "log" => Ok(Dest::Log),
        "" => Err("expected off, log or a file name".into()),
        path => Ok(Dest::File(path.into())),
    }
}

/// The running flow log: the ageing sweep hands it the connections that
/// ended.
pub struct FlowLog {
    tx: mpsc::UnboundedSender<Vec<Ended>>,
}

impl FlowLog {
    /// Takes the flow log's maps out of `ebpf` and starts the task that
    /// writes the log, unless `dest` is off. `limit`: the data plane's rate
    /// limit (for the suppressed lines); `report_every`: how often the
    /// suppressed count is looked at; `max_flows`: FLOWS' size, which
    /// bounds the connections it remembers.
    pub fn start(
        ebpf: &mut Ebpf,
        dest: &Dest,
        limit: FlowLogLimit,
        ticks_per_s: u32,
        report_every: Duration,
        max_flows: u32,
    ) -> Result<Option<FlowLog>> {
        let sink = match dest {
            Dest::Off => return Ok(None),
            Dest::Log => Sink::Log,
            Dest::File(path) => Sink::File(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the flow log {}", path.display()))?,
            )),
        };
        let ring: RingBuf<MapData> = take(ebpf, maps::FLOW_LOG)?;
        let stats: PerCpuArray<MapData, FlowLogCpu> = take(ebpf, maps::FLOW_LOG_STATE)?;
        // SAFETY: the RingBuf owns the map's fd and keeps it open, the same
        // one, for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the FLOW_LOG ring buffer: {e}"))?;
        let mut log = Writer {
            sink,
            open: HashMap::new(),
            max_open: max_flows as usize / 2,
            clock: Clock::now(ticks_per_s)?,
            limit,
            reported: totals(&stats).context("reading FLOW_LOG_STATE")?,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Ended>>();
        tokio::spawn(async move {
            let mut ring = ring;
            let mut tick = tokio::time::interval(report_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ready = ring.readable_mut() => match ready {
                        Ok(mut guard) => {
                            log.drain(guard.get_inner_mut());
                            guard.clear_ready();
                        }
                        Err(e) => {
                            warn!("flow log: polling the ring buffer failed ({e}); the flow log stops");
                            return;
                        }
                    },
                    ended = rx.recv() => {
                        let Some(ended) = ended else { return };
                        // A connection that opened and closed within one
                        // sweep: its `new` event may still be in the ring.
                        log.drain(ring.get_mut());
                        log.ended(&ended);
                    }
                    _ = tick.tick() => log.report(&stats),
                }
                log.flush();
            }
        });
        let to = match dest {
            Dest::File(path) => path.display().to_string(),
            _ => "this log".into(),
        };
        info!(
            "flow log to {to}: at most {} new connections a second per CPU (bursts of {}), the rest counted",
            limit.rate, limit.burst
        );
        Ok(Some(FlowLog { tx }))
    }

    /// Connections the ageing sweep (or a reset) saw end.
    pub fn ended(&self, ended: Vec<Ended>) {
        if !ended.is_empty() {
            let _ = self.tx.send(ended);
        }
    }
}

enum Sink {
    Log,
    File(BufWriter<File>),
}

/// A connection whose `new` line was written, until its `close` line is.
struct Open {
    at: u64,
    client: SocketAddrV4,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    proto: u8,
}

struct Writer {
    sink: Sink,
    /// By forward FLOWS key.
    open: HashMap<FlowKey, Open>,
    /// At most as many connections as FLOWS holds: a bound should a flow
    /// ever leave FLOWS without the agent seeing it.
    max_open: usize,
    clock: Clock,
    limit: FlowLogLimit,
    /// The counters at the last suppressed line.
    reported: FlowLogCpu,
}

impl Writer {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let Some(bytes) = item.get(..size_of::<FlowEvent>()) else {
                continue;
            };
            let ev: FlowEvent = bytemuck::pod_read_unaligned(bytes);
            let line = new_line(&ev, &time_local(self.clock.wall(ev.at)));
            self.write(&line);
            if self.open.len() < self.max_open {
                self.open.insert(ev.key, Open::of(&ev));
            }
        }
    }

    fn ended(&mut self, ended: &[Ended]) {
        for e in ended {
            if let Some(open) = self.open.remove(&e.key) {
                let when = time_local(self.clock.wall(e.last_seen));
                let line = close_line(&open, e, self.clock.per_s, &when);
                self.write(&line);
            }
        }
    }

    /// Writes a suppressed line if the data plane held events back since
    /// the last one, and re-reads the clock.
    fn report(&mut self, stats: &PerCpuArray<MapData, FlowLogCpu>) {
        if let Ok(clock) = Clock::now(self.clock.per_s) {
            self.clock = clock;
        }
        let now = match totals(stats) {
            Ok(now) => now,
            Err(e) => {
                warn!("flow log: reading FLOW_LOG_STATE: {e:#}");
                return;
            }
        };
        let suppressed = now.suppressed.saturating_sub(self.reported.suppressed);
        let ring_full = now.ring_full.saturating_sub(self.reported.ring_full);
        if suppressed + ring_full == 0 {
            return;
        }
        self.reported = now;
        let line = suppressed_line(
            suppressed,
            ring_full,
            self.limit,
            &time_local(SystemTime::now()),
        );
        if matches!(self.sink, Sink::File(_)) {
            warn!(
                suppressed,
                ring_full, "flow log: new connections not logged (rate limit or ring buffer full)"
            );
        }
        self.write(&line);
    }

    fn write(&mut self, line: &str) {
        match &mut self.sink {
            Sink::Log => info!(target: "xdplb::flow", "{line}"),
            Sink::File(f) => {
                if let Err(e) = writeln!(f, "{line}") {
                    warn!("flow log: writing: {e}");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::File(f) = &mut self.sink
            && let Err(e) = f.flush()
        {
            warn!("flow log: writing: {e}");
        }
    }
}

impl Open {
    fn of(ev: &FlowEvent) -> Open {
        let k = &ev.key;
        Open {
            at: ev.at,
            client: socket(k.src, k.sport),
            vip: socket(k.dst, k.dport),
            backend: socket(ev.backend_ip, ev.backend_port),
            proto: k.proto,
        }
    }
}

/// The flow log's counters summed over CPUs.
fn totals(stats: &PerCpuArray<MapData, FlowLogCpu>) -> Result<FlowLogCpu> {
    Ok(stats
        .get(&0, 0)?
        .iter()
        .fold(FlowLogCpu::default(), |sum, cpu| sum.plus(cpu)))
}

fn socket(ip: [u8; 4], port: [u8; 2]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), u16::from_be_bytes(port))
}

fn proto(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// `client vip backend [time] PROTO new nat=ip:port` (or `local`).
pub fn new_line(ev: &FlowEvent, when: &str) -> String {
    let o = Open::of(ev);
    let via = if ev.flags & FLOW_LOCAL != 0 {
        "local".to_owned()
    } else {
        format!("nat={}", socket(ev.nat_ip, ev.nat_port))
    };
    format!(
        "{} {} {} [{when}] {} new {via}",
        o.client,
        o.vip,
        o.backend,
        proto(o.proto)
    )
}

/// `client vip backend [time] PROTO close how=… duration=Ns`.
fn close_line(o: &Open, e: &Ended, per_s: u32, when: &str) -> String {
    let how = match e.how {
        End::Fin => "fin",
        End::Rst => "rst",
        End::Idle => "idle",
        End::Reset => "reset",
    };
    let secs = e.last_seen.saturating_sub(o.at) / u64::from(per_s.max(1));
    format!(
        "{} {} {} [{when}] {} close how={how} duration={secs}s",
        o.client,
        o.vip,
        o.backend,
        proto(o.proto)
    )
}

fn suppressed_line(suppressed: u64, ring_full: u64, limit: FlowLogLimit, when: &str) -> String {
    format!(
        "- - - [{when}] - suppressed count={suppressed} ring_full={ring_full} limit={}/s burst={}",
        limit.rate, limit.burst
    )
}

/// The data plane's clock (jiffies) against the wall clock, read together.
struct Clock {
    ticks: u64,
    wall: SystemTime,
    per_s: u32,
}

impl Clock {
    fn now(per_s: u32) -> Result<Clock> {
        let ticks = lb_common::clock::jiffies().context("reading jiffies from /proc/timer_list")?;
        Ok(Clock {
            ticks,
            wall: SystemTime::now(),
            per_s,
        })
    }

    /// The wall time of the jiffies reading `ticks`.
    fn wall(&self, ticks: u64) -> SystemTime {
        let per_s = f64::from(self.per_s.max(1));
        if ticks >= self.ticks {
            self.wall + Duration::from_secs_f64((ticks - self.ticks) as f64 / per_s)
        } else {
            self.wall - Duration::from_secs_f64((self.ticks - ticks) as f64 / per_s)
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// nginx's `$time_local`: `29/Nov/2026:23:55:01 +0000`, in the node's
/// time zone.
pub fn time_local(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: tm is plain data, filled by localtime_r from a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    let off = tm.tm_gmtoff;
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} {}{:02}{:02}",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        if off < 0 { '-' } else { '+' },
        off.abs() / 3600,
        off.abs() % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(flags: u8) -> FlowEvent {
        FlowEvent {
            at: 1000,
            key: FlowKey {
                src: [10, 77, 124, 10],
                dst: [10, 77, 124, 100],
                sport: 54916u16.to_be_bytes(),
                dport: 6443u16.to_be_bytes(),
                proto: PROTO_TCP,
                _pad: [0; 3],
            },
            backend_ip: [10, 77, 124, 23],
            backend_port: 6443u16.to_be_bytes(),
            nat_port: 22463u16.to_be_bytes(),
            nat_ip: [10, 77, 124, 11],
            flags,
            _pad: [0; 3],
        }
    }

    const WHEN: &str = "29/Nov/2026:23:55:01 +0000";

    #[test]
    fn lines_read_like_nginx_stream_logs() {
        assert_eq!(
            new_line(&event(0), WHEN),
            "10.77.124.10:54916 10.77.124.100:6443 10.77.124.23:6443 [29/Nov/2026:23:55:01 +0000] TCP new nat=10.77.124.11:22463"
        );
        assert_eq!(
            new_line(&event(FLOW_LOCAL), WHEN),
            "10.77.124.10:54916 10.77.124.100:6443 10.77.124.23:6443 [29/Nov/2026:23:55:01 +0000] TCP new local"
        );
        let ev = event(0);
        let ended = Ended {
            key: ev.key,
            last_seen: 1000 + 2 * 250 + 100,
            how: End::Fin,
        };
        assert_eq!(
            close_line(&Open::of(&ev), &ended, 250, WHEN),
            "10.77.124.10:54916 10.77.124.100:6443 10.77.124.23:6443 [29/Nov/2026:23:55:01 +0000] TCP close how=fin duration=2s"
        );
        assert_eq!(
            suppressed_line(
                1838,
                0,
                FlowLogLimit {
                    rate: 50,
                    burst: 50
                },
                WHEN
            ),
            "- - - [29/Nov/2026:23:55:01 +0000] - suppressed count=1838 ring_full=0 limit=50/s burst=50"
        );
    }

    #[test]
    fn time_local_has_nginx_shape() {
        let t = time_local(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        // 2027-01-15 08:00:00 UTC; the node's zone may shift it a day.
        let (date, zone) = t.split_once(' ').expect("a space before the zone");
        assert!(date.len() == 20 && date.contains("/Jan/2027:"), "{t}");
        assert!(
            zone.len() == 5 && (zone.starts_with('+') || zone.starts_with('-')),
            "{t}"
        );
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(parse_dest("off"), Ok(Dest::Off));
        assert_eq!(parse_dest("log"), Ok(Dest::Log));
        assert_eq!(
            parse_dest("/var/log/xdplb/flows.log"),
            Ok(Dest::File("/var/log/xdplb/flows.log".into()))
        );
        assert!(parse_dest("").is_err());
    }
}
