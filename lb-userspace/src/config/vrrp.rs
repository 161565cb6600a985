//! VRRP instances: keepalived's `vrrp_instance`, with its names and
//! defaults, from the `--vrid` flags or the file's `[[vrrp]]` tables.
//!
//! ```toml
//! [[vrrp]]
//! name = "VI_1"
//! state = "master"          # keepalived's `state MASTER`; "backup" by default
//! virtual_router_id = 51
//! priority = 100
//! advert_int = "1s"
//! version = 2               # keepalived's default; 3 for sub-second adverts
//! auth_pass = "1111"        # VRRPv2 PASS authentication
//! virtual_ipaddress = ["192.168.31.88"]   # default: every service's VIP
//! unicast_peer = ["192.168.31.72"]        # no multicast on this network
//! ```

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{
    source::{Loc, Source, span},
    values::{parse_duration, parse_unicast_addr},
};

/// One VRRP instance, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpConfig {
    pub name: String,
    pub vrid: u8,
    /// 1–255; 255 owns the address (starts master at once).
    pub priority: u8,
    pub advert_int: Duration,
    pub version: VrrpVersion,
    /// VRRPv2 PASS authentication: the password as written (the wire
    /// carries it cut or zero-padded to 8 bytes, as keepalived does).
    pub auth_pass: Option<String>,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// keepalived's `state`: MASTER starts as master at once.
    pub initial_master: bool,
    /// Adverts go to these instead of the multicast group.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// The addresses this instance owns (keepalived's `virtual_ipaddress`).
    pub vips: Vec<Ipv4Addr>,
    pub garp: GarpConfig,
    pub track: TrackConfig,
    pub notify: NotifyConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VrrpVersion {
    V2,
    V3,
}

/// keepalived's `garp_master_*` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GarpConfig {
    pub repeat: u32,
    pub delay: Duration,
    pub refresh: Option<Duration>,
    pub refresh_repeat: u32,
}

impl Default for GarpConfig {
    fn default() -> Self {
        GarpConfig {
            repeat: 5,
            delay: Duration::from_secs(5),
            refresh: None,
            refresh_repeat: 1,
        }
    }
}

/// What lowers this node's priority, in place of keepalived's
/// `track_script { check_nginx }`: each failing item subtracts its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackConfig {
    /// The data plane is unhealthy (program detached, maps unreadable).
    pub dataplane_weight: u8,
    /// Services (by name) that need at least `min_up` backends up.
    pub services: Vec<TrackService>,
    pub interfaces: Vec<TrackInterface>,
    pub scripts: Vec<TrackScript>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackService {
    pub service: String,
    pub min_up: u32,
    pub weight: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInterface {
    pub name: String,
    pub weight: u8,
}

/// keepalived's `vrrp_script`: exit 0 is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackScript {
    pub script: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: u8,
    pub rise: u32,
    pub fall: u32,
}

/// keepalived's notify scripts, run on a state change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    pub master: Option<PathBuf>,
    pub backup: Option<PathBuf>,
    pub fault: Option<PathBuf>,
    /// Run with `INSTANCE NAME STATE PRIORITY` as keepalived's `notify`.
    pub any: Option<PathBuf>,
}

/// Default weights: enough to move mastership between priorities 100 and
/// 90 (the seeds' pair) and between most pairs users run.
pub const DEFAULT_TRACK_WEIGHT: u8 = 50;
pub const DEFAULT_ADVERT_INT: Duration = Duration::from_secs(1);

/// The single instance the command line asks for (`--vrid` …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpFlags {
    pub vrid: u8,
    pub priority: Option<u8>,
    pub advert_int: Option<Duration>,
    pub version: Option<u8>,
    pub auth_pass: Option<String>,
    pub no_preempt: bool,
    pub unicast_peers: Vec<Ipv4Addr>,
    pub initial_master: Option<bool>,
}

/// The instance of the flags; its VIPs and tracking are filled in once the
/// services are known (`finish`).
pub(super) fn from_flags(f: &VrrpFlags) -> Result<VrrpConfig> {
    let src = Source::CommandLine;
    let version = src.check(
        &Loc::CommandLine,
        version(i64::from(f.version.unwrap_or(2))),
    )?;
    let priority = f.priority.unwrap_or(100);
    let advert_int = f.advert_int.unwrap_or(DEFAULT_ADVERT_INT);
    src.check(&Loc::CommandLine, check_priority(i64::from(priority)))?;
    src.check(&Loc::CommandLine, check_interval(version, advert_int))?;
    src.check(
        &Loc::CommandLine,
        check_auth(version, f.auth_pass.as_deref()),
    )?;
    Ok(VrrpConfig {
        name: format!("VI_{}", f.vrid),
        vrid: f.vrid,
        priority,
        advert_int,
        version,
        auth_pass: f.auth_pass.clone(),
        preempt: !f.no_preempt,
        preempt_delay: Duration::ZERO,
        initial_master: f.initial_master.unwrap_or(false),
        unicast_peers: f.unicast_peers.clone(),
        vips: Vec::new(),
        garp: GarpConfig::default(),
        track: TrackConfig {
            dataplane_weight: DEFAULT_TRACK_WEIGHT,
            services: Vec::new(),
            interfaces: Vec::new(),
            scripts: Vec::new(),
        },
        notify: NotifyConfig::default(),
    })
}

fn version(v: i64) -> Result<VrrpVersion, String> {
    match v {
        2 => Ok(VrrpVersion::V2),
        3 => Ok(VrrpVersion::V3),
        _ => Err(format!("VRRP version {v}: 2 or 3")),
    }
}

fn check_priority(p: i64) -> Result<u8, String> {
    match p {
        1..=255 => Ok(p as u8),
        _ => Err(format!(
            "priority {p} is out of range: 1-254 (255: the address owner)"
        )),
    }
}

/// v2 carries whole seconds in 8 bits; v3 centiseconds in 12 bits
/// (RFC 3768 §5.3.7, RFC 5798 §5.2.7).
fn check_interval(v: VrrpVersion, d: Duration) -> Result<(), String> {
    match v {
        VrrpVersion::V2 => {
            if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 255 {
                return Err(format!(
                    "advert_int {d:?}: VRRPv2 adverts whole seconds, 1s-255s (use version 3 for less)"
                ));
            }
        }
        VrrpVersion::V3 => {
            let cs = d.as_millis() / 10;
            if !d.as_millis().is_multiple_of(10) || cs == 0 || cs > 4095 {
                return Err(format!(
                    "advert_int {d:?}: VRRPv3 adverts centiseconds, 10ms-40.95s"
                ));
            }
        }
    }
    Ok(())
}

fn check_auth(v: VrrpVersion, pass: Option<&str>) -> Result<(), String> {
    match (v, pass) {
        (VrrpVersion::V3, Some(_)) => Err(
            "auth_pass: VRRPv3 has no authentication (RFC 5798 §9); use version 2 or drop it"
                .into(),
        ),
        (_, Some("")) => Err("auth_pass is empty".into()),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    name: Option<Spanned<String>>,
    virtual_router_id: Spanned<i64>,
    priority: Option<Spanned<i64>>,
    advert_int: Option<Spanned<String>>,
    version: Option<Spanned<i64>>,
    auth_pass: Option<Spanned<String>>,
    #[serde(default = "yes")]
    preempt: bool,
    preempt_delay: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    #[serde(default)]
    unicast_peer: Vec<Spanned<String>>,
    #[serde(default)]
    virtual_ipaddress: Vec<Spanned<String>>,
    garp_master_repeat: Option<Spanned<i64>>,
    garp_master_delay: Option<Spanned<String>>,
    garp_master_refresh: Option<Spanned<String>>,
    garp_master_refresh_repeat: Option<Spanned<i64>>,
    track: Option<RawTrack>,
    notify_master: Option<PathBuf>,
    notify_backup: Option<PathBuf>,
    notify_fault: Option<PathBuf>,
    notify: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrack {
    dataplane_weight: Option<Spanned<i64>>,
    #[serde(default, rename = "service")]
    services: Vec<RawTrackService>,
    #[serde(default, rename = "interface")]
    interfaces: Vec<RawTrackInterface>,
    #[serde(default, rename = "script")]
    scripts: Vec<RawTrackScript>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrackService {
    name: Spanned<String>,
    min_up: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrackInterface {
    name: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrackScript {
    script: Spanned<String>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

fn weight(src: &Source, w: Option<Spanned<i64>>) -> Result<u8> {
    let Some(w) = w else {
        return Ok(DEFAULT_TRACK_WEIGHT);
    };
    let n = *w.get_ref();
    src.check(
        &span(&w),
        match n {
            0..=254 => Ok(n as u8),
            _ => Err(format!("weight {n}: 0-254 (subtracted from the priority)")),
        },
    )
}

fn duration(src: &Source, key: &str, d: &Spanned<String>) -> Result<Duration> {
    src.check(
        &span(d),
        parse_duration(d.get_ref()).map_err(|m| format!("{key}: {m}")),
    )
}

fn count(src: &Source, key: &str, n: &Spanned<i64>, max: i64) -> Result<u32> {
    let v = *n.get_ref();
    src.check(
        &span(n),
        match v {
            1.. if v <= max => Ok(v as u32),
            _ => Err(format!("{key} {v}: 1-{max}")),
        },
    )
}

/// An instance as read, before the checks that need the services.
pub(super) struct DraftVrrp {
    pub(super) config: VrrpConfig,
    /// Blamed for what is wrong with the instance as a whole.
    pub(super) loc: Loc,
    /// The services its `track` names, where each was written.
    pub(super) tracks: Vec<(String, Loc)>,
}

impl RawVrrp {
    /// The instance as written, each value checked on its own; the loc of
    /// its `virtual_router_id` blames the instance as a whole.
    pub(super) fn check(self, src: &Source) -> Result<DraftVrrp> {
        let loc = span(&self.virtual_router_id);
        let vrid = *self.virtual_router_id.get_ref();
        let vrid = src.check(
            &loc,
            match vrid {
                1..=255 => Ok(vrid as u8),
                _ => Err(format!("virtual_router_id {vrid}: 1-255")),
            },
        )?;
        let version = match &self.version {
            Some(v) => src.check(&span(v), version(*v.get_ref()))?,
            None => VrrpVersion::V2,
        };
        let priority = match &self.priority {
            Some(p) => src.check(&span(p), check_priority(*p.get_ref()))?,
            None => 100,
        };
        let advert_int = match &self.advert_int {
            Some(d) => {
                let v = duration(src, "advert_int", d)?;
                src.check(&span(d), check_interval(version, v))?;
                v
            }
            None => DEFAULT_ADVERT_INT,
        };
        if let Some(p) = &self.auth_pass {
            src.check(&span(p), check_auth(version, Some(p.get_ref())))?;
        }
        let initial_master = match &self.state {
            None => false,
            Some(s) => src.check(
                &span(s),
                match s.get_ref().to_ascii_lowercase().as_str() {
                    "master" => Ok(true),
                    "backup" => Ok(false),
                    other => Err(format!("state '{other}': master or backup")),
                },
            )?,
        };
        let preempt_delay = match &self.preempt_delay {
            Some(d) => duration(src, "preempt_delay", d)?,
            None => Duration::ZERO,
        };
        let mut unicast_peers = Vec::new();
        for p in &self.unicast_peer {
            unicast_peers
                .push(src.check(&span(p), parse_unicast_addr("unicast_peer", p.get_ref()))?);
        }
        let mut vips = Vec::new();
        for v in &self.virtual_ipaddress {
            // keepalived writes `192.168.31.88/24`: the prefix is ignored,
            // xdplb holds a VIP as /32.
            let addr = v.get_ref().split('/').next().unwrap_or_default();
            vips.push(src.check(&span(v), parse_unicast_addr("virtual_ipaddress", addr))?);
        }
        let mut garp = GarpConfig::default();
        if let Some(n) = &self.garp_master_repeat {
            garp.repeat = count(src, "garp_master_repeat", n, 255)?;
        }
        if let Some(d) = &self.garp_master_delay {
            garp.delay = duration(src, "garp_master_delay", d)?;
        }
        if let Some(d) = &self.garp_master_refresh {
            let d = duration(src, "garp_master_refresh", d)?;
            garp.refresh = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = &self.garp_master_refresh_repeat {
            garp.refresh_repeat = count(src, "garp_master_refresh_repeat", n, 255)?;
        }
        let mut track = TrackConfig {
            dataplane_weight: DEFAULT_TRACK_WEIGHT,
            services: Vec::new(),
            interfaces: Vec::new(),
            scripts: Vec::new(),
        };
        let mut service_refs = Vec::new();
        if let Some(t) = self.track {
            track.dataplane_weight = weight(src, t.dataplane_weight)?;
            for s in t.services {
                service_refs.push((s.name.get_ref().clone(), span(&s.name)));
                track.services.push(TrackService {
                    service: s.name.get_ref().clone(),
                    min_up: match &s.min_up {
                        Some(n) => count(src, "min_up", n, 4096)?,
                        None => 1,
                    },
                    weight: weight(src, s.weight)?,
                });
            }
            for i in t.interfaces {
                track.interfaces.push(TrackInterface {
                    name: i.name.get_ref().clone(),
                    weight: weight(src, i.weight)?,
                });
            }
            for s in t.scripts {
                let interval = match &s.interval {
                    Some(d) => duration(src, "interval", d)?,
                    None => Duration::from_secs(1),
                };
                track.scripts.push(TrackScript {
                    script: s.script.get_ref().clone(),
                    interval,
                    timeout: match &s.timeout {
                        Some(d) => duration(src, "timeout", d)?,
                        None => interval,
                    },
                    weight: weight(src, s.weight)?,
                    rise: match &s.rise {
                        Some(n) => count(src, "rise", n, 100)?,
                        None => 1,
                    },
                    fall: match &s.fall {
                        Some(n) => count(src, "fall", n, 100)?,
                        None => 1,
                    },
                });
            }
        }
        let name = match &self.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                return Err(src.error(&span(n), "vrrp name is empty"));
            }
            Some(n) => n.get_ref().trim().to_owned(),
            None => format!("VI_{vrid}"),
        };
        Ok(DraftVrrp {
            config: VrrpConfig {
                name,
                vrid,
                priority,
                advert_int,
                version,
                auth_pass: self.auth_pass.map(|p| p.into_inner()),
                preempt: self.preempt,
                preempt_delay,
                initial_master,
                unicast_peers,
                vips,
                garp,
                track,
                notify: NotifyConfig {
                    master: self.notify_master,
                    backup: self.notify_backup,
                    fault: self.notify_fault,
                    any: self.notify,
                },
            },
            loc,
            tracks: service_refs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Config,
        test_support::{FILE, assert_has, service, toml_err},
    };

    /// The seeds' keepalived.conf (VI_1, state MASTER, vrid 51, priority 100,
    /// PASS 1111, 192.168.31.88/24), as a [[vrrp]] table.
    #[test]
    fn the_seeds_keepalived_instance_reads_as_keepalived_meant_it() {
        let text = format!(
            "{}[[vrrp]]\nname = \"VI_1\"\nstate = \"MASTER\"\nvirtual_router_id = 51\npriority = 100\n\
             advert_int = \"1s\"\nauth_pass = \"1111\"\nvirtual_ipaddress = [\"192.168.31.88/24\"]\n\
             [vrrp.track]\nservice = [{{ name = \"api\", min_up = 2, weight = 20 }}]\n",
            service(
                "192.168.31.88",
                &["192.168.31.71:6443", "192.168.31.74:6443"]
            )
            .replace("vip =", "name = \"api\"\nvip =")
        );
        let c = Config::from_toml_str(&text, FILE).unwrap();
        let v = &c.vrrp[0];
        assert_eq!((v.name.as_str(), v.vrid, v.priority), ("VI_1", 51, 100));
        assert!(v.initial_master && v.preempt);
        assert_eq!(v.version, VrrpVersion::V2);
        assert_eq!(v.auth_pass.as_deref(), Some("1111"));
        assert_eq!(v.vips, ["192.168.31.88".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            v.track.services,
            [TrackService {
                service: "api".into(),
                min_up: 2,
                weight: 20
            }]
        );
        assert_eq!(v.garp, GarpConfig::default());
    }

    #[test]
    fn bad_instances_are_refused_with_the_line_and_reason() {
        let svc = service("10.0.0.100", &["10.0.0.1:6443"]);
        for (vrrp, want) in [
            ("virtual_router_id = 0\n", ":6: virtual_router_id 0: 1-255"),
            (
                "virtual_router_id = 5\npriority = 0\n",
                ":7: priority 0 is out of range",
            ),
            (
                "virtual_router_id = 5\nadvert_int = \"500ms\"\n",
                ":7: advert_int 500ms: VRRPv2 adverts whole seconds",
            ),
            (
                "virtual_router_id = 5\nversion = 3\nauth_pass = \"x\"\n",
                ":8: auth_pass: VRRPv3 has no authentication",
            ),
            (
                "virtual_router_id = 5\nversion = 4\n",
                ":7: VRRP version 4: 2 or 3",
            ),
            (
                "virtual_router_id = 5\nstate = \"leader\"\n",
                ":7: state 'leader': master or backup",
            ),
            (
                "virtual_router_id = 5\n[vrrp.track]\nservice = [{ name = \"nope\" }]\n",
                ":8: vrrp \"VI_5\" tracks service \"nope\", which is not defined",
            ),
            (
                "virtual_router_id = 5\nvirtual_ipaddress = [\"10.0.0.200\"]\n",
                ": VIP 10.0.0.100 of service \"10.0.0.100:6443/tcp\" is in 0 vrrp instances",
            ),
        ] {
            let text = format!("{svc}[[vrrp]]\n{vrrp}");
            assert_has(&toml_err(&text), &format!("{FILE}{want}"));
        }
        let two = format!(
            "{svc}[[vrrp]]\nvirtual_router_id = 5\nvirtual_ipaddress = [\"10.0.0.100\"]\n\
             [[vrrp]]\nvirtual_router_id = 5\nname = \"b\"\nvirtual_ipaddress = [\"10.0.0.101\"]\n"
        );
        assert_has(
            &toml_err(&two),
            &format!("{FILE}:9: virtual_router_id 5 is used by \"VI_5\" and \"b\""),
        );
    }

    #[test]
    fn v3_takes_centiseconds() {
        let svc = service("10.0.0.100", &["10.0.0.1:6443"]);
        let text =
            format!("{svc}[[vrrp]]\nvirtual_router_id = 7\nversion = 3\nadvert_int = \"100ms\"\n");
        let c = Config::from_toml_str(&text, FILE).unwrap();
        assert_eq!(c.vrrp[0].advert_int, Duration::from_millis(100));
        assert_eq!(c.vrrp[0].vips, ["10.0.0.100".parse::<Ipv4Addr>().unwrap()]);
        let bad =
            format!("{svc}[[vrrp]]\nvirtual_router_id = 7\nversion = 3\nadvert_int = \"105ms\"\n");
        assert_has(
            &toml_err(&bad),
            "advert_int 105ms: VRRPv3 adverts centiseconds",
        );
    }
}
