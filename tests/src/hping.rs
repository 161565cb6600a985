//! hping3, the flooder users run against a load balancer
//! (`hping3 --flood --rand-source -S -p 6443 VIP`), started in a lab host
//! and stopped as Ctrl-C stops it, so it prints how much it sent.
//!
//! A [`Hping`] is killed when dropped, a test's panic included: a flood
//! left running would starve every lab on the machine.

use std::{
    fmt,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Host, proc::Proc};

/// The TCP flag a flood's packets carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// `-S`: each packet opens a connection.
    Syn,
    /// `-A`: each packet claims to belong to one.
    Ack,
}

impl Flood {
    fn flag(self) -> &'static str {
        match self {
            Flood::Syn => "-S",
            Flood::Ack => "-A",
        }
    }
}

impl fmt::Display for Flood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flood::Syn => "SYN",
            Flood::Ack => "ACK",
        })
    }
}

/// A running hping3.
pub struct Hping {
    proc: Proc,
    started: Instant,
}

/// What an hping3 run sent, from its final statistics.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// "N packets transmitted"; `None` if hping3 printed no statistics
    /// (killed, or it failed).
    pub packets: Option<u64>,
    /// From the start to the stop (or the end of a counted run).
    pub elapsed: Duration,
    /// When the test told it to stop (or saw it end).
    pub stopped_at: Instant,
}

impl Sent {
    pub fn rate(&self) -> Option<f64> {
        self.packets
            .map(|n| n as f64 / self.elapsed.as_secs_f64().max(1e-3))
    }
}

impl fmt::Display for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match (self.packets, self.rate()) {
            (Some(n), Some(r)) => write!(f, "{n} packets in {secs:.1} s ({r:.0}/s)"),
            _ => write!(
                f,
                "an unknown number of packets (no statistics) in {secs:.1} s"
            ),
        }
    }
}

impl Hping {
    /// `hping3 --flood --rand-source <-S|-A> -p <port> <ip>` from `host`:
    /// spoofed random sources, as fast as hping3 can send.
    pub fn flood(host: &Host, kind: Flood, target: SocketAddr, log: &Path) -> Result<Hping> {
        let port = target.port().to_string();
        let ip = target.ip().to_string();
        Hping::start(
            host,
            &["--flood", "--rand-source", kind.flag(), "-p", &port, &ip],
            log,
        )
    }

    /// `hping3 <args>` in `host`'s namespace, its output in `log`. Fails if
    /// it exits within its first 200 ms (bad arguments, no interface),
    /// unless it was a counted run (`-c`) that is done.
    pub fn start(host: &Host, args: &[&str], log: &Path) -> Result<Hping> {
        let mut cmd = host.ns.command("hping3");
        cmd.args(args);
        let mut proc = Proc::spawn(&format!("hping3 in {}", host.name), cmd, log)
            .context("starting hping3 (cargo xtask setup installs it)")?;
        let started = Instant::now();
        thread::sleep(Duration::from_millis(200));
        if let Some(status) = proc.child.try_wait()? {
            // A short counted run may be done already, and hping3 exits 1
            // when nothing answered: only its statistics say it ran.
            let done = args.contains(&"-c") && transmitted(&proc.output()).is_some();
            if !done {
                bail!(
                    "hping3 {args:?} in {} exited at once ({status}):\n{}",
                    host.name,
                    proc.output()
                );
            }
        }
        Ok(Hping { proc, started })
    }

    /// Stops it as Ctrl-C does (SIGINT), so it prints its statistics;
    /// SIGKILL if it has not exited 2 s later.
    pub fn stop(mut self) -> Result<Sent> {
        let stopped_at = Instant::now();
        if self.proc.child.try_wait()?.is_none() {
            self.proc.signal(libc::SIGINT)?;
            if self.proc.wait_timeout(Duration::from_secs(2))?.is_none() {
                self.proc.kill()?;
            }
        }
        Ok(self.sent(stopped_at))
    }

    /// Waits for a counted run (`-c N`) to end by itself; stops it if it
    /// has not ended after `limit`.
    pub fn wait(mut self, limit: Duration) -> Result<Sent> {
        if self.proc.wait_timeout(limit)?.is_none() {
            return self.stop();
        }
        let at = Instant::now();
        Ok(self.sent(at))
    }

    fn sent(&self, stopped_at: Instant) -> Sent {
        Sent {
            packets: transmitted(&self.proc.output()),
            elapsed: stopped_at - self.started,
            stopped_at,
        }
    }
}

/// The count of "496665 packets transmitted, 0 packets received, 100%
/// packet loss", the line hping3 prints when stopped.
fn transmitted(output: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        let (before, _) = l.split_once(" packets transmitted")?;
        before.trim().rsplit(' ').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_transmitted_count_from_the_statistics() {
        let out = "HPING 10.0.0.2 (eth0 10.0.0.2): S set, 40 headers + 0 data bytes\n\
                   hping in flood mode, no replies will be shown\n\n\
                   --- 10.0.0.2 hping statistic ---\n\
                   496665 packets transmitted, 0 packets received, 100% packet loss\n\
                   round-trip min/avg/max = 0.0/0.0/0.0 ms";
        assert_eq!(transmitted(out), Some(496665));
        assert_eq!(transmitted("HPING 10.0.0.2"), None);
    }
}
