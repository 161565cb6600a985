//! The VRRP state machine of one virtual router (RFC 5798 §6.4, RFC 3768
//! §6.4), sans-IO in the manner of quinn-proto: the driver feeds it
//! received packets ([`Engine::on_packet`]) and timer expiries
//! ([`Engine::on_timer`], when [`Engine::next_deadline`] is reached), with
//! the time as an argument, and carries out the [`Action`]s it queues
//! ([`Engine::poll_action`]): send these bytes, take or drop the virtual
//! addresses, send gratuitous ARPs. Where the RFCs leave room, it does
//! what keepalived 2.2 does (keepalived/vrrp/vrrp.c: `vrrp_state_backup`,
//! `vrrp_state_master_rx`, `vrrp_state_master_tx`; vrrp_scheduler.c:
//! `vrrp_init_state`).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::{Config, ConfigError, InitialState};
use super::wire::{
    self, Advert, Expect, Ipv4Meta, PRIORITY_OWNER, PRIORITY_STOP, Reject, RejectCounts, Version,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running: before start and after shutdown (RFC 5798 §6.4.1).
    Initialize,
    Backup,
    Master,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        }
    }
}

/// An advert ready to go: send `payload` in an IPv4 packet with protocol
/// 112 and TTL 255 from the primary address to `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub dst: Ipv4Addr,
    /// What `payload` encodes, for logs.
    pub advert: Advert,
    /// The VRRP payload, checksummed for this destination.
    pub payload: Vec<u8>,
}

/// What the driver must do, in the order queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send one advert; a unicast instance queues one per peer.
    Send(Outgoing),
    /// Take the virtual addresses (and start serving them).
    BecomeMaster,
    /// Make sure the virtual addresses are not held here.
    BecomeBackup,
    /// Stopped (Initialize): make sure the virtual addresses are not held.
    Stopped,
    /// Send `count` gratuitous ARPs for each virtual address.
    SendGarp { count: u32 },
}

/// The last valid advert from another router, as keepalived records the
/// master's address and priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAdvert {
    pub address: Ipv4Addr,
    pub priority: u8,
    pub interval: Duration,
    pub at: Instant,
}

/// Counters, all monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every change of state, Initialize included.
    pub transitions: u64,
    pub became_master: u64,
    pub released_master: u64,
    /// Adverts sent, once per advert however many peers (keepalived's
    /// `advert_sent`).
    pub adverts_sent: u64,
    /// Packets sent: adverts times destinations.
    pub packets_sent: u64,
    pub adverts_received: u64,
    pub priority_zero_sent: u64,
    pub priority_zero_received: u64,
    /// Adverts that could not be encoded; the config is validated, so
    /// this stays at zero.
    pub encode_errors: u64,
    pub rejects: RejectCounts,
}

pub struct Engine {
    cfg: Config,
    state: State,
    /// Signed sum of tracking weights (keepalived adds weights to the base).
    priority_delta: i32,
    effective_priority: u8,
    /// RFC 5798 §6.1: the master's interval as last advertised (v3); ours
    /// otherwise and whenever we are master.
    master_adver_interval: Duration,
    adver_deadline: Option<Instant>,
    master_down_deadline: Option<Instant>,
    garp_deadline: Option<Instant>,
    /// keepalived's `preempt_time`: when a delayed preemption may happen.
    preempt_at: Option<Instant>,
    peer: Option<PeerAdvert>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Engine {
    /// A virtual router, started at `now` (the Startup event of RFC 5798
    /// §6.4.1): its first actions are queued.
    pub fn new(cfg: Config, now: Instant) -> Result<Engine, ConfigError> {
        cfg.validate()?;
        let mut engine = Engine {
            effective_priority: cfg.priority,
            master_adver_interval: cfg.advert_interval,
            cfg,
            state: State::Initialize,
            priority_delta: 0,
            adver_deadline: None,
            master_down_deadline: None,
            garp_deadline: None,
            preempt_at: None,
            peer: None,
            actions: VecDeque::new(),
            stats: Stats::default(),
        };
        engine.start(now);
        Ok(engine)
    }

    /// Startup (RFC 5798 §6.4.1), again after a [`Engine::shutdown`];
    /// does nothing if running. The address owner with initial state
    /// MASTER becomes master at once; everyone else is a backup for
    /// Master_Down_Interval first, `state MASTER` or not, as in keepalived
    /// ≥ 2.0 (`vrrp_init_state`).
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.master_adver_interval = self.cfg.advert_interval;
        self.peer = None;
        if self.cfg.priority == PRIORITY_OWNER && self.cfg.initial_state() == InitialState::Master {
            self.become_master(now);
        } else {
            self.become_backup(now, self.master_down_interval());
        }
    }

    /// Resumes mastership at once, for an agent that restarted and found
    /// its data plane still active with a fresh heartbeat: this node was
    /// master a moment ago, its VIPs and flows are still in place, and
    /// waiting Master_Down_Interval as a backup would fence them and hand
    /// every connection to a backup that has no state for them. A higher
    /// master, if one took over meanwhile, is heard and yielded to as
    /// usual. Only from the initial backup state; the Backup it queued at
    /// start is withdrawn, so the driver never reports it.
    pub fn resume_master(&mut self, now: Instant) {
        if self.state != State::Backup || self.stats.adverts_received > 0 {
            return;
        }
        self.actions.retain(|a| *a != Action::BecomeBackup);
        self.become_master(now);
    }

    /// Shutdown (RFC 5798 §6.4.2, §6.4.3): a master sends priority 0 so a
    /// backup takes over after its skew time rather than the whole
    /// Master_Down_Interval; then Initialize.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Initialize => return,
            State::Master => {
                self.send_advert(PRIORITY_STOP, now);
                self.stats.priority_zero_sent += 1;
                self.stats.released_master += 1;
            }
            State::Backup => {}
        }
        self.set_state(State::Initialize);
        self.adver_deadline = None;
        self.master_down_deadline = None;
        self.garp_deadline = None;
        self.preempt_at = None;
        self.actions.push_back(Action::Stopped);
    }

    /// A received VRRP payload with its IPv4 header fields. Invalid adverts
    /// are counted by reason and otherwise ignored; the reason is returned
    /// for logging.
    pub fn on_packet(&mut self, ip: &Ipv4Meta, payload: &[u8], now: Instant) -> Result<(), Reject> {
        let decoded = if self.state == State::Initialize {
            Err(Reject::NotRunning)
        } else {
            wire::decode(ip, payload, &self.expect())
        };
        let advert = decoded.inspect_err(|r| self.stats.rejects.bump(*r))?;
        self.stats.adverts_received += 1;
        if advert.priority == PRIORITY_STOP {
            self.stats.priority_zero_received += 1;
        }
        let interval = Duration::from_millis(u64::from(advert.interval_cs) * 10);
        self.peer = Some(PeerAdvert {
            address: ip.src,
            priority: advert.priority,
            interval,
            at: now,
        });
        match self.state {
            State::Backup => self.backup_rx(&advert, now),
            State::Master => self.master_rx(&advert, ip.src, now),
            State::Initialize => {}
        }
        Ok(())
    }

    /// A whole received IPv4 packet, as a raw socket returns it.
    pub fn on_ip_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), Reject> {
        match wire::split_ipv4(packet) {
            Ok((ip, payload)) => self.on_packet(&ip, payload, now),
            Err(r) => {
                self.stats.rejects.bump(r);
                Err(r)
            }
        }
    }

    /// Runs whatever timers are due at `now`. Call it at or after
    /// [`Engine::next_deadline`]; calling it early does nothing.
    pub fn on_timer(&mut self, now: Instant) {
        match self.state {
            State::Backup => {
                // RFC 5798 §6.4.2: Master_Down_Timer fired.
                if self.master_down_deadline.is_some_and(|d| d <= now) {
                    self.become_master(now);
                }
            }
            State::Master => {
                // RFC 5798 §6.4.3: Adver_Timer fired.
                if self.adver_deadline.is_some_and(|d| d <= now) {
                    self.send_advert(self.effective_priority, now);
                }
                if self.garp_deadline.is_some_and(|d| d <= now) {
                    self.garp_deadline = None;
                    self.actions.push_back(Action::SendGarp {
                        count: self.cfg.garp_master_repeat,
                    });
                }
            }
            State::Initialize => {}
        }
    }

    /// When [`Engine::on_timer`] must next run; `None` when stopped.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.adver_deadline,
            self.master_down_deadline,
            self.garp_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Sets the sum of tracking weights: the effective priority is the
    /// base plus `delta` (negative for failed tracks), clamped to 1..=254;
    /// an address owner's stays 255 (keepalived's
    /// `vrrp_set_effective_priority`, keepalived/vrrp/vrrp_track.c). A
    /// master's next advert carries it. A backup's running Master_Down
    /// timer moves by the change in its skew, as keepalived moves it.
    pub fn set_priority_delta(&mut self, delta: i32) {
        self.priority_delta = delta;
        if self.cfg.priority == PRIORITY_OWNER {
            return;
        }
        let wanted = (i32::from(self.cfg.priority) + delta).clamp(1, 254);
        let new = u8::try_from(wanted).unwrap_or(1);
        if new == self.effective_priority {
            return;
        }
        let old_skew = self.skew_time();
        self.effective_priority = new;
        let new_skew = self.skew_time();
        if let Some(d) = self.master_down_deadline {
            self.master_down_deadline = Some(if new_skew >= old_skew {
                d + (new_skew - old_skew)
            } else {
                d.checked_sub(old_skew - new_skew).unwrap_or(d)
            });
        }
    }

    pub fn priority_delta(&self) -> i32 {
        self.priority_delta
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The configured base priority.
    pub fn priority(&self) -> u8 {
        self.cfg.priority
    }

    /// What we advertise and compare with.
    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The last valid advert from another router.
    pub fn last_peer_advert(&self) -> Option<&PeerAdvert> {
        self.peer.as_ref()
    }

    /// Who is master as far as we know: us, the sender of the last valid
    /// advert while we are backup (unless it resigned with priority 0),
    /// or nobody.
    pub fn master_address(&self) -> Option<Ipv4Addr> {
        match self.state {
            State::Master => Some(self.cfg.primary_address),
            State::Backup => self
                .peer
                .filter(|p| p.priority != PRIORITY_STOP)
                .map(|p| p.address),
            State::Initialize => None,
        }
    }

    /// The interval Master_Down_Interval is computed from: the master's
    /// last advertised one in v3 (RFC 5798 §6.4.2), ours in v2.
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time: RFC 3768 §6.1 `(256 - Priority) / 256` seconds in v2;
    /// RFC 5798 §6.1 `((256 - Priority) * Master_Adver_Interval) / 256` in
    /// v3. Whole microseconds, rounded down, as keepalived's
    /// `VRRP_TIMER_SKEW` computes them.
    pub fn skew_time(&self) -> Duration {
        let weight = 256 - u64::from(self.effective_priority);
        let micros = match self.cfg.version {
            Version::V2 => weight * 1_000_000 / 256,
            Version::V3 => {
                let interval_us =
                    u64::try_from(self.master_adver_interval.as_micros()).unwrap_or(u64::MAX / 256);
                weight * interval_us / 256
            }
        };
        Duration::from_micros(micros)
    }

    /// Master_Down_Interval: `3 * Master_Adver_Interval + Skew_Time`
    /// (RFC 5798 §6.1; RFC 3768 §6.1 with the advertisement interval).
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval + self.skew_time()
    }

    /// What received adverts are checked against.
    pub fn expect(&self) -> Expect<'_> {
        Expect {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            interval_cs: self.cfg.interval_cs(),
            addresses: &self.cfg.addresses,
            auth: self.cfg.auth,
            unicast_peers: &self.cfg.unicast_peers,
            check_unicast_src: self.cfg.check_unicast_src,
            own_address: self.cfg.primary_address,
        }
    }

    /// RFC 5798 §6.4.2, Backup receiving a valid advert.
    fn backup_rx(&mut self, advert: &Advert, now: Instant) {
        if advert.priority == PRIORITY_STOP {
            // The master resigned: take over after Skew_Time, so the
            // highest-priority backup goes first.
            self.master_down_deadline = Some(now + self.skew_time());
            return;
        }
        let lower = advert.priority < self.effective_priority;
        // keepalived's preempt_delay: a lower-priority master is tolerated
        // until preempt_delay after its first advert.
        let delay_running =
            !self.cfg.preempt_delay.is_zero() && self.preempt_at.is_none_or(|t| t > now);
        if self.cfg.preempt && lower && !delay_running {
            // Preempt: discard it and let Master_Down_Timer run out.
            return;
        }
        if self.cfg.version == Version::V3 {
            self.master_adver_interval = Duration::from_millis(u64::from(advert.interval_cs) * 10);
        }
        self.master_down_deadline = Some(now + self.master_down_interval());
        if !self.cfg.preempt_delay.is_zero() {
            if !lower {
                self.preempt_at = None;
            } else if self.preempt_at.is_none() {
                self.preempt_at = Some(now + self.cfg.preempt_delay);
            }
        }
    }

    /// RFC 5798 §6.4.3, Master receiving a valid advert.
    fn master_rx(&mut self, advert: &Advert, src: Ipv4Addr, now: Instant) {
        let ours = self.effective_priority;
        if advert.priority == PRIORITY_STOP {
            // Another master resigning: advertise now so backups do not
            // take over after their skew.
            self.send_advert(ours, now);
            return;
        }
        // Equal priorities: the higher primary address wins, compared as
        // numbers (keepalived's `inet_inaddrcmp`).
        let theirs_wins =
            advert.priority > ours || (advert.priority == ours && src > self.cfg.primary_address);
        if theirs_wins {
            if self.cfg.version == Version::V3 {
                self.master_adver_interval =
                    Duration::from_millis(u64::from(advert.interval_cs) * 10);
            }
            self.stats.released_master += 1;
            self.become_backup(now, self.master_down_interval());
        } else {
            // A lower-priority router thinks it is master: advertise at
            // once so it steps down now, not at our next tick (keepalived,
            // unless `lower_prio_no_advert`).
            self.send_advert(ours, now);
        }
    }

    fn become_master(&mut self, now: Instant) {
        self.set_state(State::Master);
        self.stats.became_master += 1;
        // keepalived's `vrrp_state_become_master`: we advertise our own.
        self.master_adver_interval = self.cfg.advert_interval;
        self.master_down_deadline = None;
        self.preempt_at = None;
        // Advert first, so the old master drops the addresses before our
        // ARPs (keepalived's `vrrp_state_master_tx`).
        self.send_advert(self.effective_priority, now);
        self.actions.push_back(Action::BecomeMaster);
        self.actions.push_back(Action::SendGarp {
            count: self.cfg.garp_master_repeat,
        });
        self.garp_deadline = self
            .cfg
            .garp_master_delay
            .filter(|d| !d.is_zero())
            .map(|d| now + d);
    }

    fn become_backup(&mut self, now: Instant, down_after: Duration) {
        self.set_state(State::Backup);
        self.adver_deadline = None;
        self.garp_deadline = None;
        self.preempt_at = None;
        self.master_down_deadline = Some(now + down_after);
        self.actions.push_back(Action::BecomeBackup);
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            self.state = state;
            self.stats.transitions += 1;
        }
    }

    /// Queues one advert per destination. A master's (non-zero) advert
    /// restarts the Adver_Timer.
    fn send_advert(&mut self, priority: u8, now: Instant) {
        let advert = Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval_cs: self.cfg.interval_cs(),
            addresses: self.cfg.addresses.clone(),
            auth: self.cfg.auth,
        };
        let group = [self.cfg.multicast_group];
        let dsts: &[Ipv4Addr] = if self.cfg.unicast_peers.is_empty() {
            &group
        } else {
            &self.cfg.unicast_peers
        };
        for &dst in dsts {
            match advert.encode(self.cfg.primary_address, dst) {
                Ok(payload) => {
                    self.stats.packets_sent += 1;
                    self.actions.push_back(Action::Send(Outgoing {
                        dst,
                        advert: advert.clone(),
                        payload,
                    }));
                }
                Err(_) => self.stats.encode_errors += 1,
            }
        }
        self.stats.adverts_sent += 1;
        if priority != PRIORITY_STOP {
            self.adver_deadline = Some(now + self.cfg.advert_interval);
        }
    }
}

#[cfg(test)]
mod tests;
