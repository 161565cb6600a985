//! `--status-file`: the agent's state as JSON on disk, for scripts that
//! read a file rather than the admin endpoint.

use tracing::warn;

use super::Agent;

impl Agent {
    /// Publishes a snapshot for the admin endpoint, and writes
    /// `--status-file`: every backend's state as JSON, replaced atomically
    /// (write a temporary file, then rename) so readers never see half of it.
    pub(super) fn write_status(&self) {
        self.publish();
        let Some(path) = &self.args.status_file else {
            return;
        };
        let vrrp: Vec<serde_json::Value> = self
            .vrrp
            .as_ref()
            .map(|v| {
                v.snapshots()
                    .into_iter()
                    .map(|(name, s)| {
                        let rejects: serde_json::Map<String, serde_json::Value> = s
                            .stats
                            .rejects
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(r, n)| (r.as_str().to_owned(), n.into()))
                            .collect();
                        serde_json::json!({
                            "instance": name,
                            "state": s.state.as_str(),
                            "priority": s.priority,
                            "effective_priority": s.effective_priority,
                            "master": s.master.map(|m| m.to_string()),
                            "transitions": s.stats.transitions,
                            "adverts_sent": s.stats.adverts_sent,
                            "adverts_received": s.stats.adverts_received,
                            "rejects": rejects,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = serde_json::json!({
            "iface": self.args.iface(),
            "backends": self.health.status(),
            "vrrp": vrrp,
        });
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let result = std::fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            warn!("writing the status file {}: {e}", path.display());
        }
    }
}
