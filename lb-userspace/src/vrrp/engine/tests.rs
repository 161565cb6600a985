use super::*;
use crate::vrrp::config::InitialState;
use crate::vrrp::wire::{Auth, MULTICAST_GROUP, TTL};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 88);
const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 70);
const HIGHER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 71);
const LOWER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 69);

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cfg(version: Version, priority: u8) -> Config {
    Config {
        version,
        priority,
        ..Config::new(51, ME, vec![VIP])
    }
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn sent(actions: &[Action]) -> Vec<&Outgoing> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// A valid advert from `src` to `e`, as another router running `e`'s
/// configuration would encode it, fed through the codec.
fn hear(
    e: &mut Engine,
    src: Ipv4Addr,
    priority: u8,
    interval_cs: u16,
    now: Instant,
) -> Result<(), Reject> {
    let c = e.config();
    let advert = Advert {
        version: c.version,
        vrid: c.vrid,
        priority,
        interval_cs,
        addresses: c.addresses.clone(),
        auth: c.auth,
    };
    let dst = if c.unicast_peers.is_empty() {
        c.multicast_group
    } else {
        c.primary_address
    };
    let payload = advert.encode(src, dst).unwrap();
    e.on_packet(&Ipv4Meta { src, dst, ttl: TTL }, &payload, now)
}

/// Runs the timer at `t` and says whether the engine is master after.
fn master_at(e: &mut Engine, t: Instant) -> bool {
    e.on_timer(t);
    e.state() == State::Master
}

/// Checks an action list is exactly one advert of `priority` to the group
/// followed by `rest`.
fn assert_advert_then(actions: &[Action], priority: u8, rest: &[Action]) {
    let Some((Action::Send(out), tail)) = actions.split_first() else {
        panic!("expected an advert first: {actions:?}");
    };
    assert_eq!(out.dst, MULTICAST_GROUP);
    assert_eq!(out.advert.priority, priority);
    assert_eq!(tail, rest);
}

#[test]
fn backup_becomes_master_after_exactly_master_down_interval_v2() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 100), t0).unwrap();
    assert_eq!(e.state(), State::Backup);
    assert_eq!(drain(&mut e), vec![Action::BecomeBackup]);
    // RFC 3768 §6.1: 3 * 1 s + (256 - 100) / 256 s = 3.609375 s.
    assert_eq!(e.skew_time(), us(609_375));
    assert_eq!(e.master_down_interval(), us(3_609_375));
    let down = t0 + us(3_609_375);
    assert_eq!(e.next_deadline(), Some(down));
    assert!(!master_at(&mut e, down - us(1)));
    assert!(drain(&mut e).is_empty());
    assert!(master_at(&mut e, down));
    let actions = drain(&mut e);
    assert_advert_then(
        &actions,
        100,
        &[Action::BecomeMaster, Action::SendGarp { count: 5 }],
    );
    let out = sent(&actions)[0];
    // What goes out decodes as a valid advert at a peer running the same config.
    let peer = Expect {
        own_address: HIGHER_IP,
        ..e.expect()
    };
    let ip = Ipv4Meta {
        src: ME,
        dst: out.dst,
        ttl: TTL,
    };
    assert_eq!(
        wire::decode(&ip, &out.payload, &peer).as_ref(),
        Ok(&out.advert)
    );
    assert_eq!(out.advert.interval_cs, 100);
    assert_eq!(e.next_deadline(), Some(down + secs(1)));
    assert_eq!(e.stats().became_master, 1);
    assert_eq!(e.stats().transitions, 2, "initialize → backup → master");
}

#[test]
fn backup_becomes_master_after_exactly_master_down_interval_v3() {
    let t0 = Instant::now();
    let c = Config {
        advert_interval: ms(500),
        ..cfg(Version::V3, 200)
    };
    let mut e = Engine::new(c, t0).unwrap();
    // RFC 5798 §6.1 in centiseconds: 3 * 50 + (56 * 50) / 256 = 160.9375 cs.
    assert_eq!(e.master_down_interval(), us(1_609_375));
    assert!(!master_at(&mut e, t0 + us(1_609_374)));
    assert!(master_at(&mut e, t0 + us(1_609_375)));
}

#[test]
fn master_advertises_every_interval_and_repeats_garps_once() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 255), t0).unwrap();
    assert_eq!(e.state(), State::Master);
    drain(&mut e);
    assert_eq!(e.next_deadline(), Some(t0 + secs(1)));
    // Early: nothing.
    e.on_timer(t0 + ms(999));
    assert!(drain(&mut e).is_empty());
    for n in 1..=6 {
        let t = t0 + secs(n);
        assert_eq!(e.next_deadline(), Some(t));
        e.on_timer(t);
        let actions = drain(&mut e);
        if n == 5 {
            // garp_master_delay: the second burst 5 s after becoming master.
            assert_advert_then(&actions, 255, &[Action::SendGarp { count: 5 }]);
        } else {
            assert_advert_then(&actions, 255, &[]);
        }
    }
    assert_eq!(e.stats().adverts_sent, 7);
    assert_eq!(e.stats().packets_sent, 7);
}

#[test]
fn initial_state_master_is_immediate_only_for_the_address_owner() {
    let t0 = Instant::now();
    // Priority 255 derives MASTER: master at once (RFC 5798 §6.4.1).
    let mut owner = Engine::new(cfg(Version::V3, 255), t0).unwrap();
    assert_eq!(owner.state(), State::Master);
    assert_advert_then(
        &drain(&mut owner),
        255,
        &[Action::BecomeMaster, Action::SendGarp { count: 5 }],
    );
    // keepalived ≥ 2.0: `state MASTER` below 255 waits like a backup.
    let c = Config {
        initial_state: Some(InitialState::Master),
        ..cfg(Version::V3, 150)
    };
    let mut master = Engine::new(c, t0).unwrap();
    assert_eq!(master.state(), State::Backup);
    assert_eq!(drain(&mut master), vec![Action::BecomeBackup]);
    let c = Config {
        initial_state: Some(InitialState::Backup),
        ..cfg(Version::V3, 150)
    };
    let backup = Engine::new(c, t0).unwrap();
    assert_eq!(master.next_deadline(), backup.next_deadline());
    assert_eq!(
        master.next_deadline(),
        Some(t0 + master.master_down_interval())
    );
    // The owner configured `state BACKUP` waits too, with a skew of 1/256.
    let c = Config {
        initial_state: Some(InitialState::Backup),
        ..cfg(Version::V3, 255)
    };
    let mut shy_owner = Engine::new(c, t0).unwrap();
    assert_eq!(shy_owner.state(), State::Backup);
    assert_eq!(shy_owner.master_down_interval(), us(3_003_906));
    assert!(master_at(&mut shy_owner, t0 + us(3_003_906)));
}

#[test]
fn initial_state_master_refuses_what_keepalived_clears() {
    let t0 = Instant::now();
    let master = Config {
        initial_state: Some(InitialState::Master),
        ..cfg(Version::V3, 150)
    };
    let nopreempt = Config {
        preempt: false,
        ..master.clone()
    };
    assert!(matches!(
        Engine::new(nopreempt, t0),
        Err(ConfigError::Conflict(_))
    ));
    let delayed = Config {
        preempt_delay: secs(5),
        ..master
    };
    assert!(matches!(
        Engine::new(delayed, t0),
        Err(ConfigError::Conflict(_))
    ));
    let owner_nopreempt = Config {
        preempt: false,
        initial_state: Some(InitialState::Backup),
        ..cfg(Version::V3, 255)
    };
    assert!(Engine::new(owner_nopreempt, t0).is_err());
}

#[test]
fn config_validation() {
    let ok = cfg(Version::V3, 100);
    assert_eq!(ok.validate(), Ok(()));
    let bad = |c: Config| c.validate().unwrap_err();
    assert_eq!(
        bad(Config {
            vrid: 0,
            ..ok.clone()
        }),
        ConfigError::Vrid
    );
    assert_eq!(
        bad(Config {
            priority: 0,
            ..ok.clone()
        }),
        ConfigError::Priority
    );
    for interval in [ms(5), ms(15), ms(40_960), Duration::ZERO] {
        let c = Config {
            advert_interval: interval,
            ..ok.clone()
        };
        assert_eq!(bad(c), ConfigError::Interval(interval));
    }
    let v3_ok = Config {
        advert_interval: ms(40_950),
        ..ok.clone()
    };
    assert_eq!(v3_ok.validate(), Ok(()));
    for interval in [ms(1500), secs(256), Duration::ZERO] {
        let c = Config {
            advert_interval: interval,
            ..cfg(Version::V2, 100)
        };
        assert_eq!(bad(c), ConfigError::Interval(interval));
    }
    assert_eq!(
        bad(Config {
            addresses: vec![],
            ..ok.clone()
        }),
        ConfigError::AddressCount(0)
    );
    assert_eq!(
        bad(Config {
            addresses: vec![VIP, VIP],
            ..ok.clone()
        }),
        ConfigError::DuplicateAddress(VIP)
    );
    assert_eq!(
        bad(Config {
            auth: Auth::password("x"),
            ..ok.clone()
        }),
        ConfigError::AuthInV3
    );
    assert_eq!(
        bad(Config {
            unicast_peers: vec![ME],
            ..ok.clone()
        }),
        ConfigError::UnicastPeer(ME)
    );
    assert_eq!(
        bad(Config {
            multicast_group: VIP,
            ..ok.clone()
        }),
        ConfigError::MulticastGroup(VIP)
    );
    assert_eq!(
        bad(Config {
            primary_address: Ipv4Addr::UNSPECIFIED,
            ..ok.clone()
        }),
        ConfigError::PrimaryAddress(Ipv4Addr::UNSPECIFIED)
    );
    assert!(matches!(
        bad(Config {
            preempt: false,
            preempt_delay: secs(1),
            ..ok.clone()
        }),
        ConfigError::Conflict(_)
    ));
    assert_eq!(
        bad(Config {
            preempt_delay: secs(1001),
            ..ok
        }),
        ConfigError::PreemptDelay(secs(1001))
    );
}

#[test]
fn backup_waits_on_while_a_higher_or_equal_master_advertises() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 100), t0).unwrap();
    drain(&mut e);
    let mdi = e.master_down_interval();
    // Higher priority, then equal priority from a lower address: a backup
    // compares priorities only (RFC 5798 §6.4.2), so both hold it back.
    for n in 0..20 {
        let t = t0 + secs(n);
        let (src, prio) = if n < 10 {
            (HIGHER_IP, 150)
        } else {
            (LOWER_IP, 100)
        };
        hear(&mut e, src, prio, 100, t).unwrap();
        assert_eq!(e.next_deadline(), Some(t + mdi));
        assert!(!master_at(&mut e, t + ms(999)));
    }
    assert!(drain(&mut e).is_empty());
    let last = t0 + secs(19);
    assert!(!master_at(&mut e, last + mdi - us(1)));
    assert!(master_at(&mut e, last + mdi));
    assert_eq!(e.stats().adverts_received, 20);
}

#[test]
fn higher_priority_backup_preempts_a_lower_master() {
    // RFC 5798 §6.4.2: with preempt, a lower advert is discarded, so the
    // Master_Down_Timer started at startup runs out.
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 200), t0).unwrap();
    let mdi = e.master_down_interval();
    assert_eq!(mdi, us(3_218_750));
    for n in 0..=3 {
        hear(&mut e, HIGHER_IP, 100, 100, t0 + secs(n)).unwrap();
    }
    assert_eq!(e.next_deadline(), Some(t0 + mdi));
    assert!(!master_at(&mut e, t0 + mdi - us(1)));
    assert!(master_at(&mut e, t0 + mdi));
    assert_eq!(
        e.last_peer_advert().map(|p| (p.address, p.priority)),
        Some((HIGHER_IP, 100))
    );
}

#[test]
fn nopreempt_backup_leaves_a_lower_master_alone() {
    let t0 = Instant::now();
    let c = Config {
        preempt: false,
        ..cfg(Version::V2, 200)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let mdi = e.master_down_interval();
    for n in 0..60 {
        let t = t0 + secs(n);
        hear(&mut e, LOWER_IP, 100, 100, t).unwrap();
        assert!(!master_at(&mut e, t + ms(999)));
    }
    assert_eq!(e.master_address(), Some(LOWER_IP));
    // It still takes over when the master goes silent.
    let last = t0 + secs(59);
    assert!(!master_at(&mut e, last + mdi - us(1)));
    assert!(master_at(&mut e, last + mdi));
}

#[test]
fn preempt_delay_holds_off_preemption() {
    let t0 = Instant::now();
    let c = Config {
        preempt_delay: secs(10),
        ..cfg(Version::V2, 200)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let mdi = e.master_down_interval();
    // keepalived: the first lower advert (t = 0) starts the delay; adverts
    // up to t = 9 still hold us back; the one at t = 10 is discarded, so
    // the timer of the advert at t = 9 runs out.
    for n in 0..=10 {
        let t = t0 + secs(n);
        hear(&mut e, LOWER_IP, 100, 100, t).unwrap();
        assert!(!master_at(&mut e, t), "{n}");
    }
    let takeover = t0 + secs(9) + mdi;
    assert_eq!(e.next_deadline(), Some(takeover));
    assert!(!master_at(&mut e, takeover - us(1)));
    assert!(master_at(&mut e, takeover));
}

#[test]
fn preempt_delay_restarts_after_a_higher_master() {
    let t0 = Instant::now();
    let c = Config {
        preempt_delay: secs(10),
        ..cfg(Version::V2, 200)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let mdi = e.master_down_interval();
    for n in 0..5 {
        hear(&mut e, LOWER_IP, 100, 100, t0 + secs(n)).unwrap();
    }
    // A higher master cancels the running delay...
    hear(&mut e, HIGHER_IP, 250, 100, t0 + secs(5)).unwrap();
    // ...so the lower one seen again from t = 6 is tolerated until t = 16.
    for n in 6..=16 {
        hear(&mut e, LOWER_IP, 100, 100, t0 + secs(n)).unwrap();
    }
    let takeover = t0 + secs(15) + mdi;
    assert_eq!(e.next_deadline(), Some(takeover));
    assert!(!master_at(&mut e, takeover - us(1)));
    assert!(master_at(&mut e, takeover));
}

#[test]
fn priority_zero_makes_a_backup_take_over_after_skew_time() {
    for version in [Version::V2, Version::V3] {
        let t0 = Instant::now();
        let mut e = Engine::new(cfg(version, 100), t0).unwrap();
        hear(&mut e, HIGHER_IP, 150, 100, t0 + secs(1)).unwrap();
        let resign = t0 + secs(2);
        hear(&mut e, HIGHER_IP, PRIORITY_STOP, 100, resign).unwrap();
        // RFC 5798 §6.4.2: Master_Down_Timer set to Skew_Time, 156/256 s
        // at priority 100 and 1 s, in either version.
        assert_eq!(e.next_deadline(), Some(resign + us(609_375)), "{version:?}");
        assert_eq!(e.master_address(), None);
        assert!(!master_at(&mut e, resign + us(609_374)));
        assert!(master_at(&mut e, resign + us(609_375)));
        assert_eq!(e.stats().priority_zero_received, 1);
    }
}

#[test]
fn master_hearing_lower_priority_readvertises_at_once() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 255), t0).unwrap();
    drain(&mut e);
    let t = t0 + ms(300);
    hear(&mut e, HIGHER_IP, 100, 100, t).unwrap();
    assert_advert_then(&drain(&mut e), 255, &[]);
    assert_eq!(e.state(), State::Master);
    // The immediate advert restarts the Adver_Timer.
    assert_eq!(e.next_deadline(), Some(t + secs(1)));
    // Equal priority from a lower address also loses to us.
    let c = Config {
        initial_state: None,
        ..cfg(Version::V3, 150)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let up = t0 + e.master_down_interval();
    assert!(master_at(&mut e, up));
    drain(&mut e);
    hear(&mut e, LOWER_IP, 150, 100, up + ms(10)).unwrap();
    assert_advert_then(&drain(&mut e), 150, &[]);
    assert_eq!(e.state(), State::Master);
}

#[test]
fn master_hearing_higher_priority_or_equal_from_higher_address_steps_down() {
    for (src, prio) in [(LOWER_IP, 151), (HIGHER_IP, 150)] {
        let t0 = Instant::now();
        let mut e = Engine::new(cfg(Version::V3, 150), t0).unwrap();
        let up = t0 + e.master_down_interval();
        assert!(master_at(&mut e, up));
        drain(&mut e);
        let t = up + ms(200);
        hear(&mut e, src, prio, 100, t).unwrap();
        assert_eq!(e.state(), State::Backup, "{src} {prio}");
        assert_eq!(drain(&mut e), vec![Action::BecomeBackup]);
        assert_eq!(e.next_deadline(), Some(t + e.master_down_interval()));
        assert_eq!(e.master_address(), Some(src));
        assert_eq!(e.stats().released_master, 1);
    }
}

#[test]
fn master_hearing_priority_zero_readvertises() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 255), t0).unwrap();
    drain(&mut e);
    hear(&mut e, HIGHER_IP, PRIORITY_STOP, 100, t0 + ms(100)).unwrap();
    assert_advert_then(&drain(&mut e), 255, &[]);
    assert_eq!(e.state(), State::Master);
}

#[test]
fn shutdown_of_a_master_sends_priority_zero_and_stops() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 255), t0).unwrap();
    drain(&mut e);
    e.shutdown(t0 + ms(500));
    assert_advert_then(&drain(&mut e), PRIORITY_STOP, &[Action::Stopped]);
    assert_eq!(e.state(), State::Initialize);
    assert_eq!(e.next_deadline(), None);
    assert_eq!(e.stats().priority_zero_sent, 1);
    assert_eq!(e.master_address(), None);
    // Stopped: packets are refused, timers do nothing, shutdown is idempotent.
    assert_eq!(
        hear(&mut e, HIGHER_IP, 100, 100, t0 + secs(1)),
        Err(Reject::NotRunning)
    );
    assert_eq!(e.stats().rejects.get(Reject::NotRunning), 1);
    e.on_timer(t0 + secs(10));
    e.shutdown(t0 + secs(10));
    assert!(drain(&mut e).is_empty());
    // Started again: the owner is master again.
    e.start(t0 + secs(20));
    assert_eq!(e.state(), State::Master);
    assert_eq!(e.stats().transitions, 3);
}

#[test]
fn shutdown_of_a_backup_sends_nothing() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    drain(&mut e);
    e.shutdown(t0 + secs(1));
    assert_eq!(drain(&mut e), vec![Action::Stopped]);
    e.start(t0 + secs(2));
    assert_eq!(drain(&mut e), vec![Action::BecomeBackup]);
    assert_eq!(
        e.next_deadline(),
        Some(t0 + secs(2) + e.master_down_interval())
    );
}

#[test]
fn v3_backup_adopts_the_masters_interval() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    assert_eq!(e.master_down_interval(), us(3_609_375));
    let t = t0 + ms(100);
    hear(&mut e, HIGHER_IP, 150, 200, t).unwrap();
    // RFC 5798 §6.4.2: 3 * 2 s + 156 * 2 s / 256 = 7.21875 s.
    assert_eq!(e.master_adver_interval(), secs(2));
    assert_eq!(e.master_down_interval(), us(7_218_750));
    assert!(!master_at(&mut e, t + us(7_218_749)));
    assert!(master_at(&mut e, t + us(7_218_750)));
    // As master it advertises its own interval again.
    let actions = drain(&mut e);
    assert_eq!(sent(&actions)[0].advert.interval_cs, 100);
    assert_eq!(e.master_adver_interval(), secs(1));
    assert_eq!(e.next_deadline(), Some(t + us(7_218_750) + secs(1)));
}

#[test]
fn v3_backup_does_not_adopt_the_interval_of_an_advert_it_discards() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 200), t0).unwrap();
    hear(&mut e, HIGHER_IP, 100, 400, t0 + ms(10)).unwrap();
    assert_eq!(e.master_adver_interval(), secs(1));
}

#[test]
fn v2_never_adopts_another_interval() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 100), t0).unwrap();
    assert_eq!(
        hear(&mut e, HIGHER_IP, 150, 200, t0 + ms(10)),
        Err(Reject::IntervalMismatch)
    );
    assert_eq!(e.master_adver_interval(), secs(1));
    assert_eq!(e.next_deadline(), Some(t0 + us(3_609_375)));
}

#[test]
fn effective_priority_is_clamped_and_spares_the_owner() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    e.set_priority_delta(-30);
    assert_eq!((e.priority(), e.effective_priority()), (100, 70));
    e.set_priority_delta(-500);
    assert_eq!(e.effective_priority(), 1);
    e.set_priority_delta(500);
    assert_eq!(e.effective_priority(), 254);
    assert_eq!(e.priority_delta(), 500);
    let mut owner = Engine::new(cfg(Version::V3, 255), t0).unwrap();
    owner.set_priority_delta(-100);
    assert_eq!(owner.effective_priority(), 255);
}

#[test]
fn priority_change_moves_a_backups_running_timer_by_the_skew_change() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 100), t0).unwrap();
    assert_eq!(e.next_deadline(), Some(t0 + us(3_609_375)));
    e.set_priority_delta(100);
    // Skew 156/256 s → 56/256 s.
    assert_eq!(e.next_deadline(), Some(t0 + us(3_218_750)));
    e.set_priority_delta(0);
    assert_eq!(e.next_deadline(), Some(t0 + us(3_609_375)));
}

#[test]
fn masters_lowered_priority_goes_out_in_its_next_advert() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V2, 150), t0).unwrap();
    let up = t0 + e.master_down_interval();
    assert!(master_at(&mut e, up));
    drain(&mut e);
    e.set_priority_delta(-60);
    assert!(drain(&mut e).is_empty(), "no advert before its time");
    e.on_timer(up + secs(1));
    assert_advert_then(&drain(&mut e), 90, &[]);
}

#[test]
fn rejected_adverts_are_counted_and_never_acted_on() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    let deadline = e.next_deadline();
    let good = Advert {
        version: Version::V3,
        vrid: 51,
        priority: PRIORITY_STOP,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::None,
    };
    let ip = Ipv4Meta {
        src: HIGHER_IP,
        dst: MULTICAST_GROUP,
        ttl: TTL,
    };
    let payload = good.encode(ip.src, ip.dst).unwrap();
    let low_ttl = Ipv4Meta { ttl: 1, ..ip };
    assert_eq!(e.on_packet(&low_ttl, &payload, t0), Err(Reject::BadTtl));
    let mut corrupt = payload.clone();
    corrupt[9] ^= 0xff;
    assert_eq!(e.on_packet(&ip, &corrupt, t0), Err(Reject::BadChecksum));
    let other_vrid = Advert {
        vrid: 52,
        ..good.clone()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(e.on_packet(&ip, &other_vrid, t0), Err(Reject::VridMismatch));
    let other_vips = Advert {
        addresses: vec![Ipv4Addr::new(10, 0, 0, 1)],
        ..good.clone()
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        e.on_packet(&ip, &other_vips, t0),
        Err(Reject::AddressMismatch)
    );
    assert_eq!(e.on_packet(&ip, &payload[..7], t0), Err(Reject::Truncated));
    // None of those priority-0 adverts moved the timer or reached the state.
    assert_eq!(e.next_deadline(), deadline);
    assert_eq!(e.stats().adverts_received, 0);
    assert_eq!(e.last_peer_advert(), None);
    assert_eq!(e.stats().rejects.total(), 5);
    for r in [
        Reject::BadTtl,
        Reject::BadChecksum,
        Reject::VridMismatch,
        Reject::AddressMismatch,
        Reject::Truncated,
    ] {
        assert_eq!(e.stats().rejects.get(r), 1, "{r}");
    }
    // A master is not toppled by an invalid higher advert either.
    let mut m = Engine::new(cfg(Version::V3, 255), t0).unwrap();
    drain(&mut m);
    let higher = Advert {
        priority: 254,
        ..good
    };
    let mut bytes = higher.encode(ip.src, ip.dst).unwrap();
    bytes[2] = 255; // priority raised after the checksum
    assert_eq!(m.on_packet(&ip, &bytes, t0), Err(Reject::BadChecksum));
    assert_eq!(m.state(), State::Master);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn whole_ip_packets_go_through_the_splitter() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    let advert = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 150,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::None,
    };
    let payload = advert.encode(HIGHER_IP, MULTICAST_GROUP).unwrap();
    let mut packet = wire::ipv4_header(HIGHER_IP, MULTICAST_GROUP, payload.len()).to_vec();
    packet.extend_from_slice(&payload);
    e.on_ip_packet(&packet, t0 + ms(5)).unwrap();
    assert_eq!(e.master_address(), Some(HIGHER_IP));
    packet[9] = 6;
    assert_eq!(e.on_ip_packet(&packet, t0 + ms(6)), Err(Reject::NotVrrp));
    assert_eq!(e.stats().rejects.get(Reject::NotVrrp), 1);
}

#[test]
fn unicast_sends_to_each_peer_and_refuses_multicast() {
    let t0 = Instant::now();
    let peers = vec![HIGHER_IP, LOWER_IP];
    let c = Config {
        unicast_peers: peers.clone(),
        ..cfg(Version::V3, 255)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let actions = drain(&mut e);
    let out = sent(&actions);
    assert_eq!(out.iter().map(|o| o.dst).collect::<Vec<_>>(), peers);
    // Each copy is checksummed for its own destination.
    assert_ne!(out[0].payload, out[1].payload);
    for o in &out {
        let at_peer = Expect {
            own_address: o.dst,
            ..e.expect()
        };
        let ip = Ipv4Meta {
            src: ME,
            dst: o.dst,
            ttl: 64,
        };
        assert!(
            wire::decode(&ip, &o.payload, &at_peer).is_ok(),
            "to {}",
            o.dst
        );
    }
    assert_eq!(
        &actions[2..],
        &[Action::BecomeMaster, Action::SendGarp { count: 5 }]
    );
    assert_eq!(e.stats().adverts_sent, 1);
    assert_eq!(e.stats().packets_sent, 2);
    // A multicast advert is refused; a unicast one is taken.
    let advert = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::None,
    };
    let group = Ipv4Meta {
        src: HIGHER_IP,
        dst: MULTICAST_GROUP,
        ttl: TTL,
    };
    let bytes = advert.encode(group.src, group.dst).unwrap();
    assert_eq!(
        e.on_packet(&group, &bytes, t0),
        Err(Reject::MulticastInUnicastMode)
    );
    hear(&mut e, HIGHER_IP, 100, 100, t0 + ms(1)).unwrap();
    // Lower priority: re-advertised to both peers at once.
    assert_eq!(sent(&drain(&mut e)).len(), 2);
}

#[test]
fn multicast_instance_refuses_unicast() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg(Version::V3, 100), t0).unwrap();
    let ip = Ipv4Meta {
        src: HIGHER_IP,
        dst: ME,
        ttl: TTL,
    };
    let bytes = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::None,
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(
        e.on_packet(&ip, &bytes, t0),
        Err(Reject::UnicastInMulticastMode)
    );
}

#[test]
fn v2_password_goes_out_and_is_checked() {
    let t0 = Instant::now();
    let c = Config {
        auth: Auth::password("k8s-apiserver"),
        ..cfg(Version::V2, 255)
    };
    let mut e = Engine::new(c, t0).unwrap();
    let actions = drain(&mut e);
    let out = sent(&actions)[0];
    assert_eq!(&out.payload[4..6], &[1, 1]);
    assert_eq!(&out.payload[12..], b"k8s-apis");
    let ip = Ipv4Meta {
        src: HIGHER_IP,
        dst: MULTICAST_GROUP,
        ttl: TTL,
    };
    let wrong = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 254,
        interval_cs: 100,
        addresses: vec![VIP],
        auth: Auth::password("guess"),
    }
    .encode(ip.src, ip.dst)
    .unwrap();
    assert_eq!(e.on_packet(&ip, &wrong, t0), Err(Reject::BadPassword));
    hear(&mut e, HIGHER_IP, 100, 100, t0).unwrap();
}

/// A LAN of engines on one multicast segment: every advert one sends
/// reaches all the others at the same instant, after every timer due at
/// that instant has run (so two routers can time out together).
struct Lan {
    nodes: Vec<Engine>,
    /// (node, time, state) at every change.
    changes: Vec<(usize, Instant, State)>,
}

impl Lan {
    fn new(nodes: Vec<Engine>) -> Lan {
        let mut lan = Lan {
            nodes,
            changes: Vec::new(),
        };
        lan.flush(None);
        lan
    }

    /// Drains every node's actions, delivering adverts, until quiet.
    fn flush(&mut self, now: Option<Instant>) {
        loop {
            let mut packets = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while let Some(a) = n.poll_action() {
                    match a {
                        Action::Send(out) => packets.push((i, out)),
                        Action::BecomeMaster | Action::BecomeBackup | Action::Stopped => {
                            let state = match a {
                                Action::BecomeMaster => State::Master,
                                Action::BecomeBackup => State::Backup,
                                _ => State::Initialize,
                            };
                            if let Some(t) = now {
                                self.changes.push((i, t, state));
                            }
                        }
                        Action::SendGarp { .. } => {}
                    }
                }
            }
            if packets.is_empty() {
                return;
            }
            let t = now.expect("adverts only after the start");
            for (from, out) in packets {
                let ip = Ipv4Meta {
                    src: self.nodes[from].config().primary_address,
                    dst: out.dst,
                    ttl: TTL,
                };
                for (i, n) in self.nodes.iter_mut().enumerate() {
                    // A stopped router's socket is closed.
                    if i != from && n.state() != State::Initialize {
                        n.on_packet(&ip, &out.payload, t).expect("valid on the LAN");
                    }
                }
            }
        }
    }

    /// Runs every timer due up to `until`, in time order.
    fn run_until(&mut self, until: Instant) {
        // A timer that is due but does not fire would spin here forever;
        // fail instead.
        let mut last = None;
        let mut repeats = 0;
        while let Some(t) = self.nodes.iter().filter_map(Engine::next_deadline).min() {
            if t > until {
                return;
            }
            if last == Some(t) {
                repeats += 1;
                assert!(
                    repeats < 16,
                    "no progress at {t:?}: a due timer did not fire"
                );
            } else {
                (last, repeats) = (Some(t), 0);
            }
            for n in &mut self.nodes {
                n.on_timer(t);
            }
            self.flush(Some(t));
        }
    }

    fn states(&self) -> Vec<State> {
        self.nodes.iter().map(Engine::state).collect()
    }

    fn masters(&self) -> usize {
        self.states()
            .iter()
            .filter(|s| **s == State::Master)
            .count()
    }
}

fn node(version: Version, addr: Ipv4Addr, priority: u8, t0: Instant) -> Engine {
    let c = Config {
        primary_address: addr,
        ..cfg(version, priority)
    };
    Engine::new(c, t0).unwrap()
}

#[test]
fn lan_higher_priority_wins() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![
        node(Version::V3, HIGHER_IP, 100, t0),
        node(Version::V3, LOWER_IP, 200, t0),
    ]);
    lan.run_until(t0 + secs(30));
    assert_eq!(lan.states(), vec![State::Backup, State::Master]);
    // The 200 timed out first (shorter skew) and nobody else ever did.
    assert_eq!(lan.changes, vec![(1, t0 + us(3_218_750), State::Master)]);
}

#[test]
fn lan_equal_priority_higher_address_wins() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![
        node(Version::V3, LOWER_IP, 100, t0),
        node(Version::V3, HIGHER_IP, 100, t0),
    ]);
    lan.run_until(t0 + secs(30));
    // Both timed out together; on hearing each other the lower address
    // stepped down (RFC 5798 §6.4.3).
    let up = t0 + us(3_609_375);
    assert_eq!(
        lan.changes,
        vec![
            (0, up, State::Master),
            (1, up, State::Master),
            (0, up, State::Backup)
        ]
    );
    assert_eq!(lan.states(), vec![State::Backup, State::Master]);
    assert_eq!(lan.nodes[0].master_address(), Some(HIGHER_IP));
}

#[test]
fn lan_late_higher_priority_router_preempts() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![node(Version::V2, LOWER_IP, 100, t0)]);
    lan.run_until(t0 + secs(10));
    assert_eq!(lan.states(), vec![State::Master]);
    let join = t0 + secs(10) + ms(500);
    lan.nodes.push(node(Version::V2, HIGHER_IP, 200, join));
    lan.flush(Some(join));
    lan.run_until(t0 + secs(30));
    assert_eq!(lan.states(), vec![State::Backup, State::Master]);
    // It discarded the lower adverts and took over Master_Down_Interval
    // after joining; the old master stepped down on its first advert.
    let takeover = join + us(3_218_750);
    assert_eq!(
        &lan.changes[1..],
        &[
            (1, join, State::Backup),
            (1, takeover, State::Master),
            (0, takeover, State::Backup)
        ]
    );
}

#[test]
fn lan_effective_priority_drop_moves_mastership_and_back() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![
        node(Version::V3, LOWER_IP, 150, t0),
        node(Version::V3, HIGHER_IP, 100, t0),
    ]);
    lan.run_until(t0 + secs(10));
    assert_eq!(lan.states(), vec![State::Master, State::Backup]);
    // A tracked check fails on the master: 150 - 60 = 90 < 100.
    let fail = t0 + secs(10) + ms(250);
    lan.nodes[0].set_priority_delta(-60);
    lan.run_until(t0 + secs(20));
    assert_eq!(lan.states(), vec![State::Backup, State::Master]);
    assert_eq!(lan.masters(), 1);
    // The backup took over Master_Down_Interval after the last advert it
    // accepted, the last at 150 (A became master at 3.414062 s with a skew
    // of 106/256 s, so advertised at 9.414062 s, then at 10.414062 s with
    // 90), and the old master stepped down on hearing it.
    let last_accepted = t0 + us(3_414_062) + secs(6);
    assert!(last_accepted < fail && fail < last_accepted + secs(1));
    let moved = last_accepted + us(3_609_375);
    assert_eq!(
        &lan.changes[1..],
        &[(1, moved, State::Master), (0, moved, State::Backup)]
    );
    assert_eq!(
        lan.nodes[1].last_peer_advert().map(|p| p.priority),
        Some(90)
    );
    // The check recovers: 150 again preempts the 100.
    lan.nodes[0].set_priority_delta(0);
    lan.run_until(t0 + secs(40));
    assert_eq!(lan.states(), vec![State::Master, State::Backup]);
    assert_eq!(lan.masters(), 1);
}

#[test]
fn lan_backup_whose_priority_rises_preempts() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![
        node(Version::V2, LOWER_IP, 150, t0),
        node(Version::V2, HIGHER_IP, 100, t0),
    ]);
    lan.run_until(t0 + secs(10));
    assert_eq!(lan.states(), vec![State::Master, State::Backup]);
    lan.nodes[1].set_priority_delta(100);
    lan.run_until(t0 + secs(20));
    assert_eq!(lan.states(), vec![State::Backup, State::Master]);
}

#[test]
fn lan_master_shutdown_hands_over_after_skew() {
    let t0 = Instant::now();
    let mut lan = Lan::new(vec![
        node(Version::V3, LOWER_IP, 200, t0),
        node(Version::V3, HIGHER_IP, 100, t0),
    ]);
    lan.run_until(t0 + secs(10));
    let stop = t0 + secs(10) + ms(400);
    lan.nodes[0].shutdown(stop);
    lan.flush(Some(stop));
    lan.run_until(t0 + secs(20));
    assert_eq!(lan.states(), vec![State::Initialize, State::Master]);
    // Priority 0 → Skew_Time (156/256 s), well before Master_Down_Interval.
    assert_eq!(
        *lan.changes.last().unwrap(),
        (1, stop + us(609_375), State::Master)
    );
}
