//! Turns the reason counters into the periodic one-line report.

use std::fmt::Write as _;

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray};
use lb_common::stats::{ReasonTotals, Traffic};

/// Totals, the change since `prev`, and every non-zero reason.
pub fn report(now: &ReasonTotals, prev: &ReasonTotals) -> String {
    let (t, p) = (now.total(), prev.total());
    let mut s = format!(
        "rx {} pkts {} bytes (+{} pkts +{} bytes)",
        t.packets,
        t.bytes,
        t.packets.wrapping_sub(p.packets),
        t.bytes.wrapping_sub(p.bytes)
    );
    for (reason, c) in now.nonzero() {
        let _ = write!(s, " {}={}", reason.name(), c.packets);
    }
    s
}

/// New flows, packets and bytes per backend, summed over CPUs.
pub fn backends(
    map: &PerCpuArray<MapData, Traffic>,
    names: &HashMap<u32, String>,
) -> anyhow::Result<String> {
    let mut rows: Vec<(&String, Traffic)> = Vec::new();
    for (id, name) in names {
        let mut t = Traffic::default();
        for c in map.get(id, 0)?.iter() {
            t.packets += c.packets;
            t.bytes += c.bytes;
            t.new_flows += c.new_flows;
        }
        rows.push((name, t));
    }
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let mut s = String::from("backends:");
    for (name, t) in rows {
        let _ = write!(
            s,
            " {name} flows={} pkts={} bytes={}",
            t.new_flows, t.packets, t.bytes
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use lb_common::stats::{Counter, Reason};

    use super::*;

    #[test]
    fn report_shows_deltas_and_nonzero_reasons() {
        let mut prev = ReasonTotals::default();
        prev.0[Reason::PassArp as usize] = Counter {
            packets: 1,
            bytes: 60,
        };
        let mut now = ReasonTotals::default();
        now.0[Reason::PassArp as usize] = Counter {
            packets: 2,
            bytes: 120,
        };
        now.0[Reason::PassNotService as usize] = Counter {
            packets: 10,
            bytes: 1000,
        };
        assert_eq!(
            report(&now, &prev),
            "rx 12 pkts 1120 bytes (+11 pkts +1060 bytes) pass_arp=2 pass_not_service=10"
        );
    }
}
