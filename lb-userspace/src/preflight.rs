//! Checks made before touching the kernel, so that a wrong interface name or
//! a missing privilege gets one clear sentence instead of an errno.

use std::{ffi::CString, fs, path::Path};

use anyhow::{Context, Result, bail};

/// The interface's index, or an error naming it.
pub fn interface_index(name: &str) -> Result<u32> {
    let c = CString::new(name)
        .with_context(|| format!("interface name {name:?} contains a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface '{name}' does not exist in this network namespace (see `ip link`)");
    }
    Ok(index)
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Loading and attaching XDP needs CAP_BPF (or CAP_SYS_ADMIN on old kernels)
/// and CAP_NET_ADMIN; root has them all.
pub fn privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    bail!(
        "xdplb must run as root (or with CAP_BPF and CAP_NET_ADMIN) to load and attach XDP programs; \
         it is running as uid {uid} without them (try: sudo xdplb ...)"
    )
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `dir` can hold pins: its bpffs is mounted (mounting
/// /sys/fs/bpf if nothing is there, as systemd would), and it exists.
pub fn bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs on {}", root.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "pin directory {} is not on a bpffs mount (mount -t bpf bpf <dir>)",
            dir.display()
        );
    }
    Ok(())
}

#[allow(
    clippy::unnecessary_cast,
    reason = "f_type is i64 on x86_64 but not on every target"
)]
fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
