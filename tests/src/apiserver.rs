//! The fake kube-apiserver in a backend namespace: start, make unhealthy,
//! kill, restart.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;

use crate::{Host, bins, netns, proc::Proc};

pub const PORT: u16 = 6443;

#[derive(Debug)]
pub struct Apiserver {
    pub name: String,
    pub ip: Ipv4Addr,
    ns: String,
    log: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
}

impl Apiserver {
    pub fn start(host: &Host, run_dir: &Path) -> Result<Apiserver> {
        Self::start_with(host, run_dir, &[])
    }

    /// Starts with extra flags (`--hang`, `--unhealthy`, `--plain`).
    pub fn start_with(host: &Host, run_dir: &Path, extra: &[&str]) -> Result<Apiserver> {
        let mut api = Apiserver {
            name: host.name.clone(),
            ip: host.ip,
            ns: host.ns.name.clone(),
            log: run_dir.join(format!("{}-apiserver.log", host.name)),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        api.restart()?;
        Ok(api)
    }

    /// (Re)starts the process and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        self.proc = None;
        let bin = bins::path("fake-apiserver")?;
        let mut cmd = netns::command_in(&self.ns, &bin.to_string_lossy());
        cmd.args(["--name", &self.name, "--listen", &format!("0.0.0.0:{PORT}")])
            .args(&self.extra);
        let mut p = Proc::spawn(&format!("fake-apiserver {}", self.name), cmd, &self.log)?;
        p.wait_for_line("listening on", Duration::from_secs(10))?;
        self.proc = Some(p);
        Ok(())
    }

    /// /readyz answers 200 (`true`) or 500 (`false`).
    pub fn set_ready(&self, ready: bool) -> Result<()> {
        let sig = if ready { libc::SIGUSR2 } else { libc::SIGUSR1 };
        self.running()?.signal(sig)
    }

    /// Kills the process outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill()?;
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    fn running(&self) -> Result<&Proc> {
        self.proc
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("apiserver {} is not running", self.name))
    }
}
