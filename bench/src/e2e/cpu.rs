//! Where the work runs and how much of it there was: per-CPU busy time from
//! `/proc/stat`, RPS and threaded NAPI inside a lab namespace, pinning.

use std::{fs, process::Command};

use anyhow::{Context, Result, bail};

/// The CPU the load generator and the backends run on.
pub const LOAD_CPU: usize = 0;
/// The CPU the load balancer's work is steered to and measured on.
pub const LB_CPU: usize = 1;

/// `/proc/stat`'s columns for `cpu`, in seconds: user nice system idle
/// iowait irq softirq steal (and more on newer kernels).
fn stat_columns(cpu: usize) -> Result<Vec<f64>> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let tag = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag.as_str()))
        .with_context(|| format!("no {tag} line in /proc/stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>().unwrap_or(0) as f64 / hz)
        .collect();
    if v.len() < 8 {
        bail!("short {tag} line in /proc/stat: {line}");
    }
    Ok(v)
}

/// `/proc/stat`'s line for `cpu`: (tick-sampled busy seconds: every
/// column but idle and iowait; idle + iowait seconds).
fn stat_seconds(cpu: usize) -> Result<(f64, f64)> {
    let v = stat_columns(cpu)?;
    Ok((v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[3] + v[4]))
}

/// Seconds `cpu` has spent in user mode (user + nice), tick-sampled. The
/// LBs' kernel work is not in it; another program's (a build beside the
/// bench) mostly is.
pub fn user_seconds(cpu: usize) -> Result<f64> {
    let v = stat_columns(cpu)?;
    Ok(v[0] + v[1])
}

/// One CPU's busy time over an interval: wall time minus its idle and
/// iowait time from `/proc/stat`.
///
/// With NOHZ the kernel measures idle exactly (a clock read at idle entry
/// and exit, interrupts and softirqs excluded), while the busy columns
/// are tick-sampled when, as here, neither IRQ_TIME_ACCOUNTING nor
/// VIRT_CPU_ACCOUNTING is built: work that comes in short bursts between
/// ticks, or right at them, is over- or under-counted. Measured here over
/// the same loads: native xdplb's NAPI kthread ran 0.77 s by its own exact
/// run time (schedstat) while the ticks counted 0.56 s for the whole CPU;
/// nftables' softirq bursts, 0.23 s by ticks and 0.78 s by wall − idle.
/// The tick figure is kept for the notes.
pub struct BusyClock {
    cpu: usize,
    t0: std::time::Instant,
    ticks0: f64,
    idle0: f64,
}

impl BusyClock {
    pub fn start(cpu: usize) -> Result<BusyClock> {
        let (ticks0, idle0) = stat_seconds(cpu)?;
        Ok(BusyClock {
            cpu,
            t0: std::time::Instant::now(),
            ticks0,
            idle0,
        })
    }

    /// (busy seconds so far, the tick-sampled busy seconds so far).
    pub fn busy(&self) -> Result<(f64, f64)> {
        let (ticks, idle) = stat_seconds(self.cpu)?;
        let wall = self.t0.elapsed().as_secs_f64();
        Ok(((wall - (idle - self.idle0)).max(0.0), ticks - self.ticks0))
    }
}

/// Writes `value` to `path` under `/sys/class/net` as seen from namespace
/// `ns`, and reads it back. `ip netns exec` remounts /sys for the namespace;
/// a process that only entered the network namespace (nsenter --net) would
/// see the root namespace's devices there instead.
pub fn write_net_sysfs(ns: &str, path: &str, value: &str) -> Result<String> {
    let full = format!("/sys/class/net/{path}");
    let script = format!("echo {value} > {full} && cat {full}");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .output()
        .with_context(|| format!("writing {full} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "writing {value} to {full} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Steers received packets of `ns`'s eth0 to `cpu` with RPS (veth has one
/// queue and no interrupt: RPS is the only steering there is).
pub fn steer_rx(ns: &str, cpu: usize) -> Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    let got = write_net_sysfs(ns, "eth0/queues/rx-0/rps_cpus", &mask)?;
    if u64::from_str_radix(got.replace(',', "").trim_start_matches('0'), 16).unwrap_or(0)
        != 1u64 << cpu
    {
        bail!("RPS mask of eth0 in {ns} reads {got:?} after writing {mask}");
    }
    Ok(())
}

/// Turns RPS off for `ns`'s eth0: received packets are processed on the
/// CPU that received them (for a veth, the sender's), the kernel's default.
pub fn unsteer_rx(ns: &str) -> Result<()> {
    write_net_sysfs(ns, "eth0/queues/rx-0/rps_cpus", "0")?;
    Ok(())
}

/// Turns threaded NAPI of `dev` in `ns` off again (the kernel's default).
pub fn unthread_napi(ns: &str, dev: &str) -> Result<()> {
    let got = write_net_sysfs(ns, &format!("{dev}/threaded"), "0")?;
    if got != "0" {
        bail!("{dev} in {ns}: threaded NAPI reads {got:?} after writing 0");
    }
    Ok(())
}

/// The online CPUs as a list taskset takes ("0-1").
pub fn online() -> String {
    fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "0".into())
}

/// PIDs of the kernel's threaded-NAPI threads for devices named `dev`
/// (`napi/<dev>-<napi id>`), in every namespace: the caller tells its own
/// apart by taking the ones that appeared after it enabled threading.
pub fn napi_threads(dev: &str) -> Vec<i32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with(&prefix))
        })
        .collect()
}

/// Makes NAPI of `dev` in `ns` threaded and pins its new kthreads to `cpu`;
/// returns their PIDs. The setting dies with the device (and the device
/// with the namespace); a veth's NAPI instance itself goes away when XDP is
/// detached from it.
///
/// `before` is `napi_threads(dev)` taken before the NAPI instance came to
/// be: once a device has been threaded, a NAPI added later (XDP attached
/// again) gets its kthread at once, not when we write the flag.
pub fn thread_napi(ns: &str, dev: &str, cpu: usize, before: &[i32]) -> Result<Vec<i32>> {
    let got = write_net_sysfs(ns, &format!("{dev}/threaded"), "1")?;
    if got != "1" {
        bail!("{dev} in {ns}: threaded NAPI reads {got:?} after writing 1");
    }
    // The kthreads are created synchronously by the write.
    let new: Vec<i32> = napi_threads(dev)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if new.is_empty() {
        bail!("{dev} in {ns}: threaded NAPI is on but no new napi/{dev}-* kthread appeared");
    }
    for pid in &new {
        pin(*pid, cpu, false)?;
    }
    Ok(new)
}

/// `taskset -p` (`-a`: every thread of the process).
pub fn pin(pid: i32, cpu: usize, all_threads: bool) -> Result<()> {
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    cmd.args(["-pc", &cpu.to_string(), &pid.to_string()]);
    let out = cmd.output().context("running taskset")?;
    if !out.status.success() {
        bail!(
            "pinning pid {pid} to cpu{cpu}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Seconds of CPU a process and its children (nginx's worker) have used.
pub fn tree_seconds(pid: i32) -> f64 {
    tree_times(pid).1
}

/// (user seconds, user + system seconds) of a process and its children.
pub fn tree_times(pid: i32) -> (f64, f64) {
    let children: Vec<i32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|c| ppid(*c) == Some(pid))
                .collect()
        })
        .unwrap_or_default();
    std::iter::once(pid)
        .chain(children)
        .filter_map(task_times)
        .fold((0.0, 0.0), |(u, t), (u1, t1)| (u + u1, t + t1))
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (user seconds, user + system seconds) a process (or kthread) has used.
fn task_times(pid: i32) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state is field 3 overall (index 0 here); utime 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime as f64 / hz, (utime + stime) as f64 / hz))
}
/// An exclusive lock shared by every `cargo xtask bench` on this machine:
/// two runs pinning work to the same CPUs would measure each other.
pub struct MachineLock {
    _file: fs::File,
}

pub const LOCK_PATH: &str = "/run/lock/xdplb-bench-e2e.lock";

impl MachineLock {
    /// Waits for the lock up to `max`; `Ok(None)` if another run held it
    /// all that time.
    pub fn acquire(max: std::time::Duration) -> Result<Option<MachineLock>> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .with_context(|| format!("opening {LOCK_PATH}"))?;
        let deadline = std::time::Instant::now() + max;
        let mut said = false;
        loop {
            // SAFETY: flock on a descriptor we own; released when it is closed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(MachineLock { _file: file }));
            }
            if std::time::Instant::now() > deadline {
                return Ok(None);
            }
            if !said {
                println!("bench e2e: another bench holds {LOCK_PATH}; waiting (up to {max:?})");
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// Packets dropped so far because `cpu`'s backlog (where RPS queues them)
/// was full: the second column of `/proc/net/softnet_stat`, one row per CPU.
pub fn backlog_drops(cpu: usize) -> u64 {
    fs::read_to_string("/proc/net/softnet_stat")
        .ok()
        .and_then(|s| {
            let row = s.lines().nth(cpu)?;
            u64::from_str_radix(row.split_whitespace().nth(1)?, 16).ok()
        })
        .unwrap_or(0)
}
