//! Forwarding rate: live frames (`BPF_PROG_RUN` + `BPF_F_TEST_XDP_LIVE_FRAMES`)
//! through a veth pair into xdplb in native mode, beside two floors run on
//! the same rig: an XDP_DROP and a MAC-swap XDP_TX. The rig itself is
//! `lab::live_frames`.

use std::time::Duration;

use anyhow::{Result, bail};
use lab::live_frames::{self, CLIENT, PORT, RigOptions, SPORT_BASE, Sample, Target, VIP};

use super::{Measurement, Options, Ratio, Section};

const RUNS: usize = 3;
const FLOWS: u32 = 4096;
const TARGETS: [Target; 3] = [Target::DropFloor, Target::TxFloor, Target::Xdplb];

pub fn run(opts: Options) -> Result<Section> {
    let duration = Duration::from_secs(if opts.quick { 1 } else { 3 });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The last CPU: away from CPU 0, where most interrupts land.
    let cpu = cpus - 1;
    let started = std::time::Instant::now();
    let runs = live_frames::run(RigOptions { flows: FLOWS, cpu }, move |rig| {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            // Interleaved, so drift over the run hits all three alike.
            let mut run = Vec::new();
            for t in TARGETS {
                run.push(rig.measure(t, duration)?);
            }
            runs.push(run);
        }
        Ok(runs)
    })?;

    let mut notes = vec![
        format!(
            "Topology: one network namespace with a veth pair gen0 ⇄ lb0. The generator \
             (lab-xdp `xdp_bench_gen`, never attached) runs by BPF_PROG_RUN with \
             BPF_F_TEST_XDP_LIVE_FRAMES (batch 64) on a thread pinned to CPU {cpu}, with \
             ingress_ifindex = gen0: each frame is a 64-byte TCP ACK {CLIENT}:{SPORT_BASE}+i → \
             {VIP}:{PORT}, i cycling over {FLOWS} source ports, and XDP_TX sends it out of gen0 \
             into lb0. On lb0, in native (driver) mode, runs the program under test; what it \
             XDP_TXes comes back to gen0, where lab-xdp `xdp_count_drop` (native) counts and \
             drops it. IPv6 is off on both, so nothing else crosses the pair."
        ),
        "Programs under test on lb0: `xdp_count_drop` (the drop floor: count + XDP_DROP), \
         `xdp_tx_floor` (the TX-bounce floor: swap MACs + XDP_TX) and xdplb (maps filled as \
         the agent does: CONFIG active, one service VIP:6443/tcp, 3 backends on lb0's subnet \
         with permanent neighbour entries, Maglev table of 251; FIB lookup → lb0 → XDP_TX, \
         reason tx_forward). xdplb's flows are made in a warm-up before the first run, so \
         the rate is its established path (conntrack hit, NAT rewrite, checksums, FIB \
         lookup, XDP_TX)."
            .into(),
        format!(
            "Each run measures the three in turn for {} s each; {RUNS} runs. Rate = frames that \
             made it through (dropped on lb0 for the drop floor, counted at the sink otherwise) \
             ÷ wall time of the generator loop.",
            duration.as_secs()
        ),
        "veth schedules its NAPI on the CPU that queued the frames, so generator, program \
         under test and sink all run on one CPU, batch after batch: each rate is the whole \
         pipeline's, and the generator's and veth's fixed cost dilutes the difference between \
         programs. The per-packet cost xdplb adds over the TX bounce (1/rate difference) is \
         given below for that reason."
            .into(),
    ];

    let mut rows = Vec::new();
    let per_target: Vec<Vec<&Sample>> = (0..TARGETS.len())
        .map(|i| runs.iter().map(|r| &r[i]).collect())
        .collect();
    let names = [
        "drop floor (xdp_count_drop, XDP_DROP)",
        "TX-bounce floor (xdp_tx_floor, XDP_TX)",
        "xdplb, established flows (NAT + XDP_TX)",
    ];
    for (name, samples) in names.iter().zip(&per_target) {
        rows.push(Measurement::from_samples(
            *name,
            "Mpps",
            samples.iter().map(|s| s.mpps()).collect(),
        ));
    }
    let (tx, lb) = (&per_target[1], &per_target[2]);
    let extra_ns: Vec<f64> = tx
        .iter()
        .zip(lb.iter())
        .map(|(t, l)| 1e3 / l.mpps() - 1e3 / t.mpps())
        .collect();
    rows.push(Measurement::from_samples(
        "xdplb's added cost over the TX bounce (1/rate difference)",
        "ns/packet",
        extra_ns,
    ));
    let ratios: Vec<f64> = tx
        .iter()
        .zip(lb.iter())
        .map(|(t, l)| l.mpps() / t.mpps())
        .collect();
    let ratio = Measurement::from_samples("", "", ratios.clone()).median;
    notes.push(format!(
        "Ratio: per run (paired), then the median; per run {}.",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Each program does more than the one before it, so the rates must
    // fall in order; when they don't, something other than the programs
    // (other load on the CPU, softirqs deferred to ksoftirqd) set the pace.
    let disordered: Vec<String> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r[1].mpps() > r[0].mpps() * 1.05 || r[2].mpps() > r[1].mpps() * 1.05)
        .map(|(i, r)| {
            format!(
                "run {}: drop {:.2}, TX {:.2}, xdplb {:.2} Mpps",
                i + 1,
                r[0].mpps(),
                r[1].mpps(),
                r[2].mpps()
            )
        })
        .collect();
    if !disordered.is_empty() {
        notes.push(format!(
            "NOISE: rates out of order (expected drop ≥ TX bounce ≥ xdplb) in {}; the \
             machine's other load, not the programs, set the pace there, and the ratio \
             means little.",
            disordered.join("; ")
        ));
    }
    let problems = validate(&runs, &mut notes);
    if problems > 0 {
        notes.push(format!(
            "COUNTS DISAGREE in {problems} measurement(s) (details above): the rates may \
             not mean what they say."
        ));
    }
    if runs.iter().flatten().any(|s| s.delivered() == 0) {
        bail!("a measurement delivered no frames at all: {runs:?}");
    }

    notes.push(format!(
        "This part took {:.1} s.",
        started.elapsed().as_secs_f64()
    ));
    Ok(Section {
        title: "forwarding rate (live frames through veth)".into(),
        notes,
        rows,
        ratios: vec![Ratio {
            what: "xdplb Mpps / TX-bounce floor Mpps".into(),
            value: ratio,
            goal: "≥ 0.5".into(),
            met: ratio >= 0.5,
        }],
    })
}

/// Cross-checks the counters of every measurement; adds a note per
/// disagreement or loss, and one summary note. Returns how many disagreed.
///
/// The chain: frames requested of BPF_PROG_RUN = the generator's own count
/// = frames lb0's program saw (veth) + frames veth refused (ring full) ;
/// lb0's program's own count (drop floor: dropped; xdplb: tx_forward)
/// = frames it saw ; frames back at the sink = frames it XDP_TXed − those
/// veth refused on the way back.
fn validate(runs: &[Vec<Sample>], notes: &mut Vec<String>) -> usize {
    let mut problems = 0;
    let mut lossy = 0;
    let mut checked = 0;
    for (i, run) in runs.iter().enumerate() {
        for (t, s) in TARGETS.iter().zip(run) {
            checked += 1;
            let mut bad = Vec::new();
            if s.generated != s.requested {
                bad.push(format!(
                    "generator ran {} times for {} frames requested",
                    s.generated, s.requested
                ));
            }
            if s.lb_seen + s.refused != s.generated {
                bad.push(format!(
                    "lb0's program saw {} and veth refused {} of {} generated",
                    s.lb_seen, s.refused, s.generated
                ));
            }
            match t {
                Target::DropFloor => {
                    if s.lb_dropped != Some(s.lb_seen) || s.returned != 0 {
                        bad.push(format!(
                            "xdp_count_drop counted {:?} of {} lb0 saw; {} came back",
                            s.lb_dropped, s.lb_seen, s.returned
                        ));
                    }
                }
                Target::TxFloor => {}
                Target::Xdplb => {
                    let x = s.xdplb.clone().unwrap_or_default();
                    if x.tx_forward != s.lb_seen {
                        bad.push(format!(
                            "xdplb counted tx_forward {} of {} frames it saw",
                            x.tx_forward, s.lb_seen
                        ));
                    }
                    if !x.other.is_empty() {
                        let list: Vec<String> = x
                            .other
                            .iter()
                            .map(|(r, n)| format!("{} {n}", r.name()))
                            .collect();
                        bad.push(format!("xdplb gave other reasons: {}", list.join(", ")));
                    }
                    if x.flows_total != u64::from(FLOWS) {
                        bad.push(format!(
                            "xdplb made {} flows in all, not one per source port ({FLOWS})",
                            x.flows_total
                        ));
                    }
                    if x.new_flows != 0 {
                        bad.push(format!(
                            "xdplb made {} new flows during the run (not all established)",
                            x.new_flows
                        ));
                    }
                }
            }
            if *t != Target::DropFloor && s.returned + s.lb_tx_errors != s.lb_tx {
                bad.push(format!(
                    "{} came back to the sink of {} XDP_TXed by lb0 ({} refused by veth)",
                    s.returned, s.lb_tx, s.lb_tx_errors
                ));
            }
            let veth = || {
                s.veth
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if !bad.is_empty() {
                problems += 1;
                notes.push(format!(
                    "Run {} {}: COUNTS DISAGREE: {}. veth counters: {}.",
                    i + 1,
                    t.program(),
                    bad.join("; "),
                    veth()
                ));
            } else if s.refused + s.lb_tx_errors > 0 {
                lossy += 1;
                notes.push(format!(
                    "Run {} {}: {} of {} generated frames lost because a veth ring was full \
                     ({} into lb0, {} back into gen0); the rate counts only delivered frames.",
                    i + 1,
                    t.program(),
                    s.refused + s.lb_tx_errors,
                    s.generated,
                    s.refused,
                    s.lb_tx_errors
                ));
            }
        }
    }
    if problems == 0 {
        let total: u64 = runs.iter().flatten().map(|s| s.generated).sum();
        notes.push(format!(
            "Counts agree in all {checked} measurements ({total} frames): requested of \
             BPF_PROG_RUN = counted by the generator = seen by lb0's program (veth \
             rx_queue_0_xdp_packets) + refused by a full veth ring; = lb0's own count (the \
             drop floor's drops; xdplb's tx_forward reason counter, with no other reason and \
             no new flow, and exactly {FLOWS} flows made in the warm-up); and back at the sink = XDP_TXed by lb0 (veth rx_queue_0_xdp_tx) − \
             refused on the way back. {}",
            if lossy == 0 {
                "No frame was lost.".to_owned()
            } else {
                format!("{lossy} measurement(s) lost frames to full rings (above).")
            }
        ));
    }
    problems
}
