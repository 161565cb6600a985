//! Turns the reason counters into the periodic one-line report.

use std::fmt::Write as _;

use lb_common::stats::ReasonTotals;

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
