//! The real keepalived (Debian's) on a lab host, as the VRRP peer xdplb is
//! tested against and measured beside. Its config is written by the caller's
//! options into the lab's run directory; it runs in the host's namespace
//! (nsenter), in the foreground, VRRP only, and is stopped on drop.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Lab, netns, proc::Proc};

/// One `vrrp_instance` on eth0 for the lab's VIP.
pub struct KeepalivedOptions<'a> {
    pub host: &'a str,
    pub vrid: u8,
    /// 2 or 3.
    pub version: u8,
    pub priority: u8,
    /// keepalived's `advert_int`, in seconds ("1", "0.1").
    pub advert_int: &'a str,
    /// v2 PASS authentication.
    pub auth_pass: Option<&'a str>,
}

pub struct Keepalived {
    pub proc: Proc,
}

impl Keepalived {
    pub fn start(lab: &Lab, o: &KeepalivedOptions) -> Result<Keepalived> {
        let dir = lab.run_dir.join(format!("keepalived-{}", o.host));
        std::fs::create_dir_all(&dir)?;
        let auth = o
            .auth_pass
            .map(|p| {
                format!(
                    "    authentication {{\n        auth_type PASS\n        auth_pass {p}\n    }}\n"
                )
            })
            .unwrap_or_default();
        let conf = format!(
            "global_defs {{\n    router_id {host}\n    vrrp_version {version}\n}}\n\
             vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id {vrid}\n\
             \x20   priority {priority}\n    advert_int {interval}\n{auth}\
             \x20   virtual_ipaddress {{\n        {vip}/32 dev eth0\n    }}\n}}\n",
            host = o.host,
            version = o.version,
            vrid = o.vrid,
            priority = o.priority,
            interval = o.advert_int,
            vip = lab.vip()
        );
        let path = dir.join("keepalived.conf");
        std::fs::write(&path, &conf)?;
        let mut cmd = netns::command_in(&lab.host(o.host).ns.name, "keepalived");
        cmd.args([
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
        ])
        .arg(&path)
        .arg("--pid")
        .arg(dir.join("k.pid"))
        .arg("--vrrp_pid")
        .arg(dir.join("v.pid"))
        .arg("--checkers_pid")
        .arg(dir.join("c.pid"));
        let proc = Proc::spawn(
            &format!("keepalived on {}", o.host),
            cmd,
            &dir.join("keepalived.log"),
        )
        .context("starting keepalived (apt-get install keepalived; cargo xtask setup does)")?;
        Ok(Keepalived { proc })
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = self.proc.stop(Duration::from_secs(3));
    }
}
