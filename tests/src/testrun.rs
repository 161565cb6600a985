//! BPF_PROG_TEST_RUN of XDP programs outside any lab: a namespace of the
//! caller's thread with one veth (`lb0`) and permanent neighbours, a private
//! bpffs pin directory, and one call that runs a program on a frame as if
//! it arrived on lb0. Used by tests/tests/dataplane.rs and by `cargo xtask
//! bench` (per-packet cost; the live-frames rig shares its pieces).
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

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use bytemuck::{Pod, Zeroable};
use lb_common::wire::ETH_HDR_LEN;
use nix::sched::{CloneFlags, unshare};

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

/// The pid in `<prefix><pid>-<n>`, if `name` is one of ours. A number, so
/// that `xdplb-bench-` does not claim `xdplb-bench-mpps-<pid>-<n>`.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split_once('-')?.0.parse().ok()
}

/// Whether the process `pid` is gone (its leftovers are stale).
pub fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Pin directories of processes that were killed before their guards ran.
fn remove_stale_pin_dirs(prefix: &str) {
    let Ok(dir) = fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name, prefix).is_some_and(is_gone) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `f` on a new thread in a network namespace of its own, which goes
/// away with the thread (nothing is named or mounted, so nothing can be
/// left behind). Commands spawned from the thread run in its namespace
/// (fork copies the calling thread's).
pub fn in_own_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let host_ns = fs::read_link("/proc/thread-self/ns/net");
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            let own_ns = fs::read_link("/proc/thread-self/ns/net");
            ensure!(
                host_ns.ok() != own_ns.ok(),
                "the test-run thread is still in the host's network namespace"
            );
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

/// Runs `prog` `repeat` times on `frame` arriving on `ifindex` (0: none).
pub fn run_xdp(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<Ran> {
    // The kernel refuses less than ETH_HLEN bytes of data. A shorter frame
    // is padded to 14 bytes and `ctx.data_end` ends the linear part, which
    // is all the program sees, after the frame's own bytes; the padding
    // goes into a fragment (kernel 6.18, fe9544ed1a2e "bpf: Support
    // specifying linear xdp packet data size for BPF_PROG_TEST_RUN"; older
    // kernels want data_end == data_size_in and refuse a short frame).
    let mut data_in = frame.to_vec();
    data_in.resize(frame.len().max(ETH_HDR_LEN), 0);
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::zeroed()
    };
    let mut out = vec![0u8; frame.len().max(4096)];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&data_in),
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
    // The output is the linear part and the fragments: the frame, and the
    // padding of a short one, which the program never saw.
    let out_len = if frame.len() < ETH_HDR_LEN {
        frame.len()
    } else {
        r.data_size_out as usize
    };
    out.truncate(out_len);
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

/// What an agent did when started on a pin directory holding a FLOWS map
/// of another layout (made by bpftool: `map_type`, `key`/`value` sizes, no
/// BTF): whether it exited successfully, its output, and whether the pin
/// is still there. In a private namespace on `lb0`, bounded to 20 s.
pub struct ForeignPins {
    pub succeeded: bool,
    pub output: String,
    pub kept: bool,
}

pub fn agent_on_foreign_flows_pin(
    test: &'static str,
    map_type: &'static str,
    key: usize,
    value: usize,
) -> ForeignPins {
    in_own_netns(test, move || {
        setup_lb0([2, 0, 0, 0, 0, 2], "10.0.0.2/24", &[])?;
        let pins = PinDir::create(&format!("xdplb-{test}-"))?;
        let flows = pins.path.join(lb_common::maps::FLOWS);
        let made = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&flows)
            .args([
                "type",
                map_type,
                "key",
                &key.to_string(),
                "value",
                &value.to_string(),
            ])
            .args(["entries", "1024", "name", "FLOWS"])
            .status()?;
        ensure!(made.success(), "bpftool map create failed");
        let log = std::env::temp_dir().join(format!(
            "{}.log",
            pins.path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut cmd = std::process::Command::new(crate::bins::path("xdplb")?);
        cmd.args(["--iface", "lb0", "--vip", "10.0.0.100"])
            .args(["--backend", "10.0.0.21:6443", "--max-flows", "1024"])
            .args(["--check", "none", "--no-assign-vip", "--admin", "off"])
            .arg("--pin-dir")
            .arg(&pins.path);
        let mut agent = crate::proc::Proc::spawn("xdplb", cmd, &log)?;
        let status = agent.wait_timeout(std::time::Duration::from_secs(20))?;
        let output = agent.output();
        let _ = std::fs::remove_file(&log);
        let Some(status) = status else {
            bail!("xdplb kept running on foreign pins:\n{output}");
        };
        Ok(ForeignPins {
            succeeded: status.success(),
            output,
            kept: flows.exists(),
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}
