//! Loads the embedded XDP program and attaches it, or adopts the data
//! plane a previous agent left pinned.
//!
//! Maps are pinned by name under the pin directory (the loader gives each
//! its path, and aya reuses a pinned map instead of creating one), and so
//! is the XDP link. A restarted agent therefore finds the same maps —
//! flows included — and atomically swaps its freshly loaded program into
//! the pinned link: established connections never notice. Only a clean
//! shutdown without `--keep-dataplane` detaches and removes the pins.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, MapType},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::maps;
use tracing::{info, warn};

use crate::cli::XdpAttachMode;

/// The product's XDP object, built once by build.rs from lb-ebpf: the
/// program `xdplb` and its maps. The lab's BPF_PROG_TEST_RUN tests and the
/// benchmark load this same object.
pub static XDPLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The flow log's token bucket, per CPU: `rate` events a second, in
/// bursts of up to `burst`; a rate of 0 turns the flow log off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLogLimit {
    pub rate: u32,
    pub burst: u32,
}

impl FlowLogLimit {
    pub const OFF: FlowLogLimit = FlowLogLimit { rate: 0, burst: 0 };
}

pub struct LoadOptions<'a> {
    pub iface: &'a str,
    pub mode: XdpAttachMode,
    /// Why that mode (xdp_mode::choose), for the log line saying which
    /// mode the program was attached in.
    pub why: &'a str,
    pub pin_dir: PathBuf,
    pub max_flows: u32,
    pub max_embryos: u32,
    pub table_size: u32,
    pub flow_log: FlowLogLimit,
}

pub struct Dataplane {
    /// Owns the program (and, when adopted, the link it was swapped into).
    ebpf: Ebpf,
    /// The link we attached and pinned; None when adopted (then the program
    /// owns the link fd and the pin is the one we found).
    link: Option<PinnedLink>,
    pub iface: String,
    pub pin_dir: PathBuf,
}

impl Dataplane {
    pub fn load(opts: LoadOptions) -> Result<Self> {
        let LoadOptions {
            iface,
            mode,
            why,
            pin_dir,
            max_flows,
            max_embryos,
            table_size,
            flow_log,
        } = opts;
        let link_path = pin_dir.join(maps::LINK_PIN);
        let adopting = link_path.exists();
        let sizes = MapSizes {
            max_flows,
            max_embryos,
            table_size,
        };
        let mut ebpf = load_object_with(XDPLB_OBJECT, &pin_dir, sizes, flow_log)?;
        let prog: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .ok_or_else(|| anyhow!("no program '{}' in the object", maps::XDP_PROGRAM))?
            .try_into()?;
        prog.load().context("the kernel rejected the XDP program")?;

        let link = if adopting {
            let pinned = PinnedLink::from_pin(&link_path)
                .with_context(|| format!("opening the pinned link {}", link_path.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .context("the pinned link is not an XDP link")?;
            prog.attach_to_link(link)
                .context("swapping the new program into the pinned link")?;
            info!(iface, pin_dir = %pin_dir.display(), "adopted the pinned data plane: maps and flows kept, program replaced");
            None
        } else {
            let (mode, link) = attach_and_pin(prog, iface, mode, &link_path)?;
            let mode = match mode {
                XdpMode::Driver => "native",
                XdpMode::Skb => "generic",
                _ => "other",
            };
            info!(iface, "XDP program attached in {mode} mode ({why})");
            Some(link)
        };
        Ok(Dataplane {
            ebpf,
            link,
            iface: iface.to_owned(),
            pin_dir,
        })
    }

    /// The loaded object, to take its maps out for their owners
    /// ([`crate::maps::take`]).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Leaves program, link and maps in the kernel, pinned, for the next
    /// agent to adopt (`--keep-dataplane`, or a crash).
    pub fn keep(self) {
        info!(iface = %self.iface, pin_dir = %self.pin_dir.display(), "leaving the data plane running (pinned)");
        // Dropping our fds is enough: the pins hold everything.
    }

    /// Detaches the program and removes every pin.
    pub fn detach(mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            link.unpin().context("unpinning the XDP link")?;
        } else {
            let path = self.pin_dir.join(maps::LINK_PIN);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        // Closing the last link fd (held by the program) detaches it.
        drop(self.ebpf);
        for entry in fs::read_dir(&self.pin_dir)? {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing pin {}", path.display()))?;
        }
        let _ = fs::remove_dir(&self.pin_dir);
        info!(iface = %self.iface, "XDP program detached and pins removed");
        Ok(())
    }
}

/// Loads `object` with its maps sized and pinned as the agent's are: FLOWS
/// of `max_flows` entries, EMBRYOS of the default size
/// ([`maps::DEFAULT_MAX_EMBRYOS`]), MAGLEV with room for every service's
/// two tables of `table_size` ([`crate::maps::maglev_slots`]), each map pinned by name
/// in `pin_dir` (a pinned one is reused, after checking it was made for
/// this layout). `object` is [`XDPLB_OBJECT`], or one built around the same
/// program and maps (the benchmark's wrappers); its programs are not loaded
/// into the kernel yet. One place for these settings, so the lab's tests
/// and the benchmark load the data plane the agent runs, not a copy.
pub fn load_object(object: &[u8], pin_dir: &Path, max_flows: u32, table_size: u32) -> Result<Ebpf> {
    let sizes = MapSizes {
        max_flows,
        max_embryos: maps::DEFAULT_MAX_EMBRYOS,
        table_size,
    };
    load_object_with(object, pin_dir, sizes, FlowLogLimit::OFF)
}

/// The sizes the agent's configuration gives the maps.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// FLOWS' entries (`max_flows`).
    pub max_flows: u32,
    /// EMBRYOS' entries (`max_embryos`).
    pub max_embryos: u32,
    /// Slots of each Maglev table (`maglev_table_size`).
    pub table_size: u32,
}

/// [`load_object`] with every size given, and the flow log's rate limit
/// set into the program (load-time constants: the verifier drops the flow
/// log's code when it is off).
pub fn load_object_with(
    object: &[u8],
    pin_dir: &Path,
    sizes: MapSizes,
    flow_log: FlowLogLimit,
) -> Result<Ebpf> {
    check_pinned_maps(pin_dir)?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(maps::FLOWS, sizes.max_flows)
        .map_max_entries(maps::EMBRYOS, sizes.max_embryos)
        .map_max_entries(maps::MAGLEV, crate::maps::maglev_slots(sizes.table_size))
        .override_global(maps::FLOW_LOG_RATE, &flow_log.rate, true)
        .override_global(maps::FLOW_LOG_BURST, &flow_log.burst, true);
    // BTF maps (lb-ebpf/src/maps.rs) carry no `pinning` attribute in
    // aya-ebpf 0.2.1, so `default_map_pin_directory` (which applies to
    // maps declaring pin-by-name) would leave them unpinned: each gets its
    // path here. aya reuses a map already pinned there, else creates and
    // pins it.
    for name in maps::PINNED {
        loader.map_pin_path(name, pin_dir.join(name));
    }
    loader.load(object).with_context(|| {
        format!(
            "loading the XDP object (maps pinned in {})",
            pin_dir.display()
        )
    })
}

/// The maps whose layout this build defines (lb-common's types), as the
/// kernel must hold them for this program.
fn expected_layouts() -> [(&'static str, MapType, usize, usize); 9] {
    use lb_common::{
        flow::{Embryo, Flow, FlowKey},
        flowlog::FlowLogCpu,
        service::{Backend, DataplaneConfig, Service, ServiceKey},
        stats::EmbryoStats,
    };
    use std::mem::size_of;
    [
        (
            maps::FLOWS,
            MapType::Hash,
            size_of::<FlowKey>(),
            size_of::<Flow>(),
        ),
        (
            maps::EMBRYOS,
            MapType::LruHash,
            size_of::<FlowKey>(),
            size_of::<Embryo>(),
        ),
        (
            maps::SERVICES,
            MapType::Hash,
            size_of::<ServiceKey>(),
            size_of::<Service>(),
        ),
        (maps::BACKENDS, MapType::Array, 4, size_of::<Backend>()),
        (maps::VIPS, MapType::Hash, 4, 4),
        (
            maps::CONFIG,
            MapType::Array,
            4,
            size_of::<DataplaneConfig>(),
        ),
        (maps::SNAT_IPS, MapType::Array, 4, 4),
        (
            maps::EMBRYO_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<EmbryoStats>(),
        ),
        (
            maps::FLOW_LOG_STATE,
            MapType::PerCpuArray,
            4,
            size_of::<FlowLogCpu>(),
        ),
    ]
}

/// aya reuses a pinned map by name whatever its layout; a data plane left
/// by another xdplb version may hold maps this program cannot use (the
/// kernel would reject the program with an obscure verifier error, or
/// worse, accept it). Refuses with what differs and what to do instead.
///
/// Maps made before they were BTF maps have the same types and sizes but
/// no BTF, so `bpftool map dump` could not name their fields: they are
/// refused too, rather than migrated. A migration would copy FLOWS into
/// new maps while the old program, still attached, goes on writing the
/// old ones, so connections opened in between would be lost all the same.
fn check_pinned_maps(pin_dir: &Path) -> Result<()> {
    let refuse = |path: &Path, found: String, needed: String| {
        anyhow!(
            "the pinned map {} was made by another xdplb version ({found}; this one needs {needed}): \
             stop that data plane first, or remove {} (connections through this node are then lost)",
            path.display(),
            pin_dir.display()
        )
    };
    for (name, kind, key, value) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        let found = (
            info.map_type().ok(),
            info.key_size() as usize,
            info.value_size() as usize,
        );
        if found != (Some(kind), key, value) {
            return Err(refuse(
                &path,
                format!(
                    "{:?}, {}-byte keys, {}-byte values",
                    found.0, found.1, found.2
                ),
                format!("{kind:?}, {key}-byte keys, {value}-byte values"),
            ));
        }
    }
    for name in maps::WITH_BTF {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        let btf = map_btf_value_type(map.fd().as_fd())
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        if btf == 0 {
            return Err(refuse(
                &path,
                "no BTF".into(),
                "BTF key and value types, for bpftool to name the fields".into(),
            ));
        }
    }
    Ok(())
}

/// The BTF id of the value type the kernel keeps with map `fd` (0: none),
/// from BPF_OBJ_GET_INFO_BY_FD: aya 0.14's MapInfo does not expose it.
fn map_btf_value_type(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `struct bpf_map_info` up to `btf_value_type_id` (include/uapi/
    /// linux/bpf.h); the kernel fills what fits in `info_len`.
    #[repr(C)]
    #[derive(Default)]
    struct MapInfoPrefix {
        map_type: u32,
        id: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        name: [u8; 16],
        ifindex: u32,
        btf_vmlinux_value_type_id: u32,
        netns_dev: u64,
        netns_ino: u64,
        btf_id: u32,
        btf_key_type_id: u32,
        btf_value_type_id: u32,
        _pad: u32,
    }
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = MapInfoPrefix::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<MapInfoPrefix>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed, and
    // `info` points at a writable buffer of `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.btf_value_type_id)
}

/// Attaches in the wanted mode and pins the resulting bpf_link, so the
/// program stays attached when the agent's fds close.
fn attach_and_pin(
    prog: &mut Xdp,
    iface: &str,
    want: XdpAttachMode,
    path: &Path,
) -> Result<(XdpMode, PinnedLink)> {
    let try_mode = |prog: &mut Xdp, mode| {
        prog.attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))
    };
    let (id, mode) = match want {
        XdpAttachMode::Native => (try_mode(prog, XdpMode::Driver)?, XdpMode::Driver),
        XdpAttachMode::Generic => (try_mode(prog, XdpMode::Skb)?, XdpMode::Skb),
        XdpAttachMode::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, XdpMode::Driver),
            Err(e) => {
                warn!(
                    iface,
                    "native XDP unavailable ({e:#}); falling back to generic (slower)"
                );
                (try_mode(prog, XdpMode::Skb)?, XdpMode::Skb)
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link)
        .map_err(|e| anyhow!("{e}: this kernel attached XDP through netlink, which cannot be pinned (need Linux ≥ 5.9)"))?;
    let pinned = fd
        .pin(path)
        .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
    Ok((mode, pinned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product's object, loaded with its maps pinned in a directory of
    /// our own: every map the layout check knows is pinned, and the pins
    /// pass the check (the object declares what `expected_layouts` says,
    /// EMBRYOS an LRU among them), at the sizes the agent asked for.
    #[test]
    fn the_object_has_the_expected_layouts() {
        // SAFETY: no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (creates maps)");
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/xdplb-loader-test-{}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        let sizes = MapSizes {
            max_flows: 4096,
            max_embryos: 2048,
            table_size: 251,
        };
        let loaded = load_object_with(XDPLB_OBJECT, &dir, sizes, FlowLogLimit::OFF);
        let checked = match &loaded {
            Ok(_) => check_pinned_maps(&dir).map_err(|e| format!("its own pins fail: {e:#}")),
            Err(e) => Err(format!("loading the object: {e:#}")),
        };
        let entries = |name: &str| {
            MapInfo::from_pin(dir.join(name))
                .map(|i| i.max_entries())
                .unwrap_or_default()
        };
        let sized = (entries(maps::FLOWS), entries(maps::EMBRYOS));
        drop(loaded);
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = checked {
            panic!("{e}");
        }
        for (name, ..) in expected_layouts() {
            assert!(maps::PINNED.contains(&name), "{name} is not pinned");
        }
        for name in [maps::EMBRYOS, maps::SNAT_IPS, maps::EMBRYO_STATS] {
            assert!(
                expected_layouts().iter().any(|(n, ..)| *n == name),
                "{name} is not checked"
            );
        }
        assert_eq!(sized, (4096, 2048));
    }
}
