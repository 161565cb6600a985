//! The VRRP side of the loop: an instance's change of state becomes a new
//! plan (and notify scripts), and what the instances track is judged here.

use anyhow::Result;
use tracing::{Level, info};

use super::Agent;
use crate::{
    maps::ControlPlane,
    plan::{self, Role, service_key},
    vrrp::{self, State, instances::TrackInputs},
};
use lb_common::stats::ReasonTotals;

impl Agent {
    /// A VRRP instance changed state (or asks for gratuitous ARPs): the
    /// plan follows, in the fixed order (a new master serves before it
    /// takes the VIP, a demoted one fences before it lets the VIP go),
    /// then the notify scripts run.
    pub(super) async fn on_vrrp(&mut self, i: usize, report: vrrp::driver::Report) -> Result<()> {
        let Some(v) = &mut self.vrrp else {
            return Ok(());
        };
        let Some(inst) = v.list.get_mut(i) else {
            return Ok(());
        };
        let state = match report {
            vrrp::driver::Report::Garp => {
                info!(instance = %inst.config.name, "VRRP: re-announcing the VIPs (another master gave way)");
                self.vips.reannounce();
                return Ok(());
            }
            vrrp::driver::Report::State(s) => s,
        };
        if inst.state == state {
            return Ok(());
        }
        inst.state = state;
        let name = inst.config.name.clone();
        let notify = inst.config.notify.clone();
        let priority = inst.handle.snapshot.borrow().effective_priority;
        let word = match state {
            State::Master => "MASTER",
            State::Backup => "BACKUP",
            State::Initialize => "STOPPED",
        };
        self.role = if v.any_master() {
            Role::Master
        } else {
            Role::Backup
        };
        // Tests and operators look for this line.
        self.record(Level::INFO, format!("VRRP {name}: entering {word} state"));
        self.converge().await?;
        self.write_status();
        let script = match state {
            State::Master => notify.master.as_ref(),
            State::Backup => notify.backup.as_ref(),
            State::Initialize => notify.fault.as_ref(),
        };
        if let Some(script) = script {
            vrrp::instances::notify(script, &[]);
        }
        if let Some(script) = &notify.any {
            vrrp::instances::notify(script, &["INSTANCE", &name, word, &priority.to_string()]);
        }
        Ok(())
    }

    /// Judges what the VRRP instances track and adjusts their priorities.
    pub(super) async fn track(&mut self) {
        if self.vrrp.is_none() {
            return;
        }
        let dataplane_ok = self.reconciler.maps().config().is_ok()
            && ReasonTotals::read(&self.reasons).is_ok()
            && crate::xdp_mode::attached(self.args.iface()).await;
        let Some(v) = &mut self.vrrp else {
            return;
        };
        let down = self.health.down();
        let config = &self.config;
        let drained = &self.drained;
        let services_up = |name: &str| -> usize {
            let Some(s) = config.services.iter().find(|s| s.name == name) else {
                return 0;
            };
            let key = service_key(s);
            s.backends
                .iter()
                .filter(|b| {
                    b.weight > 0
                        && !drained.contains(&b.addr)
                        && !down.contains(&plan::Target {
                            service: key,
                            backend: b.addr,
                        })
                })
                .count()
        };
        v.track(&TrackInputs {
            dataplane_ok,
            services_up: &services_up,
        });
    }
}
