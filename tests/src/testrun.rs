//! BPF_PROG_TEST_RUN of XDP programs outside any lab: a namespace of the
//! caller's thread with one veth (`lb0`) and permanent neighbours, a private
//! bpffs pin directory, and one call that runs a program on a frame as if
//! it arrived on lb0. Used by `cargo xtask bench` (per-packet cost); the
//! same approach as tests/tests/dataplane.rs.
//!
//! Running with `xdp_md.ingress_ifindex` set (kernel 5.12+) makes the
//! program's `bpf_fib_lookup` route in the namespace as on a node, so a
//! NATed frame comes back XDP_TX; without it the kernel runs the program
//! on loopback and the lookup answers with another interface.

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use bytemuck::{Pod, Zeroable};
use lb_common::wire::ETH_HDR_LEN;
use nix::sched::{CloneFlags, unshare};

/// lb-ebpf's `bench-xdp` object: xdplb's packet path in save/restore
/// wrappers (lb-ebpf/src/bench.rs), with xdplb's maps and two of its own.
pub static BENCH_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-xdp"));

/// lb-ebpf's `lab-xdp` object: `xdp_pass` and `xdp_tx_floor`.
pub static LAB_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab-xdp"));

pub type Mac = [u8; 6];

/// `struct xdp_md`, the context BPF_PROG_TEST_RUN takes for XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// A bpffs directory of one run's pins, removed (pins and all) on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<prefix><pid>-<n>`; directories with the same prefix
    /// left by processes that no longer exist are removed first.
    pub fn create(prefix: &str) -> Result<PinDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        remove_stale_pin_dirs(prefix);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/{prefix}{}-{n}", std::process::id()));
        fs::create_dir(&path)
            .with_context(|| format!("creating the pin directory {}", path.display()))?;
        Ok(PinDir { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}

fn remove_stale_pin_dirs(prefix: &str) {
    let Ok(dir) = fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `f` on a new thread in a network namespace of its own, which goes
/// away with the thread (nothing is named or mounted, so nothing can be
/// left behind). Commands spawned from the thread run in its namespace.
pub fn in_own_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            f()
        })
        .context("spawning a thread")?
        .join()
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow!("the test-run thread {name} panicked: {msg}")
        })?
}

/// Pins the calling thread to `cpu` (a test run runs where its caller runs).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the test-run thread to CPU {cpu}"))
}

pub fn mac_str(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// In the calling thread's (own) namespace: veth `lb0` (MAC `mac`) holding
/// `addr` (CIDR), up, IPv4 forwarding on, and a permanent neighbour entry
/// on lb0 for each `(address, MAC)`. Returns lb0's ifindex.
pub fn setup_lb0(mac: Mac, addr: &str, neighbours: &[(Ipv4Addr, Mac)]) -> Result<u32> {
    let ip = |args: &[&str]| crate::netns::run(Command::new("ip").args(args)).map(|_| ());
    ip(&[
        "link",
        "add",
        "lb0",
        "address",
        &mac_str(mac),
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ])?;
    ip(&["addr", "add", addr, "dev", "lb0"])?;
    ip(&["link", "set", "lb0", "up"])?;
    ip(&["link", "set", "peer0", "up"])?;
    // One `ip -batch` for all neighbours: hundreds of them take a moment
    // one process each.
    let mut batch = String::new();
    for (host, m) in neighbours {
        batch.push_str(&format!(
            "neigh add {host} lladdr {} dev lb0 nud permanent\n",
            mac_str(*m)
        ));
    }
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    child
        .stdin
        .take()
        .context("ip -batch stdin")?
        .write_all(batch.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "adding {} neighbours: {}",
            neighbours.len(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // bpf_fib_lookup answers BPF_FIB_LKUP_RET_FWD_DISABLED without it.
    fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    nix::net::if_::if_nametoindex("lb0").context("lb0's ifindex")
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Debug)]
pub struct Ran {
    pub return_value: u32,
    /// The frame as the program left it (after the last repeat).
    pub frame: Vec<u8>,
    /// The kernel's average per repeat (whole nanoseconds: the kernel
    /// divides its total by the repeat count).
    pub per_repeat: Duration,
}

/// Runs `prog` `repeat` times on `frame` (at least 14 bytes) arriving on
/// `ifindex` (0: none).
pub fn run_xdp(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<Ran> {
    if frame.len() < ETH_HDR_LEN {
        bail!(
            "a {}-byte frame is shorter than an Ethernet header",
            frame.len()
        );
    }
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::zeroed()
    };
    let mut out = vec![0u8; frame.len().max(4096)];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(bytemuck::bytes_of(&ctx)),
            repeat,
            ..Default::default()
        })
        .map_err(|e| {
            anyhow!(
                "BPF_PROG_TEST_RUN (repeat {repeat}) of a {}-byte frame: {e:?}",
                frame.len()
            )
        })?;
    out.truncate(r.data_size_out as usize);
    Ok(Ran {
        return_value: r.return_value,
        frame: out,
        per_repeat: r.duration,
    })
}

/// The `memlock:` bytes the kernel charges for the map pinned at `pin`
/// (its fdinfo; what `bpftool map show` prints as `memlock`).
pub fn map_memlock(pin: &Path) -> Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let info = aya::maps::MapInfo::from_pin(pin)
        .with_context(|| format!("opening the map pinned at {}", pin.display()))?;
    let fd = info
        .fd()
        .with_context(|| format!("an fd of {}", pin.display()))?;
    let raw = fd.as_fd().as_raw_fd();
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
        .context("reading the map's fdinfo")?;
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no memlock in the fdinfo of {}", pin.display()))
}
