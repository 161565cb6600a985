//! The forwarding-rate rig: frames injected with `BPF_PROG_RUN` live frames
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`) through a veth pair, with the program
//! under test attached in native (driver) mode. Used by `cargo xtask bench`.
//!
//! ```text
//!  namespace xbm<pid>-<n>
//!
//!   xdp_bench_gen ──XDP_TX──▶ gen0 ═══ veth ═══ lb0  ◀── under test (native):
//!   (BPF_PROG_RUN, live       (native:             xdp_count_drop | xdp_tx_floor | xdplb
//!    frames, ingress gen0)     xdp_count_drop,
//!                              the sink) ◀══XDP_TX══ (tx_floor, xdplb)
//! ```
//!
//! The generator runs on a thread pinned to one CPU. In live mode an
//! XDP_TX becomes a redirect out of the ingress interface, so each frame
//! leaves gen0 and arrives on lb0, whose program runs in veth's NAPI poll
//! (native XDP). What lb0's program sends back with XDP_TX arrives on gen0,
//! whose own native program counts and drops it. veth's NAPI is scheduled
//! on the CPU that queued the frames, so generator, program under test and
//! sink all run on the generator's CPU, one batch after another.
//!
//! Everything is made in a namespace of its own, with xdplb's maps pinned
//! in a bpffs directory of its own; both are removed when [`run`] returns,
//! and ones left by a killed process are removed by the next run.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use bytemuck::Zeroable;
use lb_common::{
    flow::{Embryo, Flow, FlowKey},
    maps,
    service::{PROTO_TCP, ServiceKey},
    stats::{Counter, Reason, ReasonTotals, Traffic},
    wire::TCP_ACK,
};
use lb_userspace::{
    loader,
    maps::{ControlMaps, ControlPlane},
    plan::{Desired, DesiredBackend, DesiredService},
    reconcile::Reconciler,
};

use crate::{
    Netns,
    netns::{self, run as run_cmd},
    objects::{LAB_XDP_OBJECT, XDPLB_OBJECT},
    packets::FrameBuilder,
    testrun::{Mac, PinDir, XdpMd, is_gone, mac_str, owner_pid, pin_to_cpu},
};

/// Namespaces of this rig: `xbm<pid>-<n>`.
const NS_PREFIX: &str = "xbm";
/// xdplb's pin directories: `/sys/fs/bpf/xdplb-bench-mpps-<pid>-<n>`.
const PIN_PREFIX: &str = "xdplb-bench-mpps-";

/// lb0's address: the LB node's own, and the SNAT source.
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const PORT: u16 = 6443;
/// Source ports of the generated flows start here.
pub const SPORT_BASE: u16 = 10000;
const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
/// Backends: on lb0's subnet, permanent neighbour entries on lb0, so the
/// FIB lookup of a NATed packet answers lb0 itself (XDP_TX).
const BACKENDS: [(Ipv4Addr, Mac); 3] = [
    (Ipv4Addr::new(10, 0, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 0, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 0, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];
const NAT_PORTS: (u16, u16) = (20000, 59999);
const TABLE_SIZE: u32 = 251;
/// The generator's template frame: Ethernet + IPv4 + TCP + 10 bytes.
const FRAME_LEN: usize = 64;
/// Frames per BPF_PROG_RUN call: 10–60 ms at the rates seen, the
/// granularity of a measurement's length.
const CHUNK: u32 = 1 << 16;
/// Frames per live-mode batch (kernel default 64, at most 256); below
/// veth's 256-slot ring, so one batch never overflows it.
const BATCH: u32 = 64;

/// What runs on lb0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `xdp_count_drop`: counts and drops (the drop floor).
    DropFloor,
    /// `xdp_tx_floor`: swaps MACs, XDP_TX (the TX-bounce floor).
    TxFloor,
    /// xdplb, maps filled for one TCP service of three backends.
    Xdplb,
}

impl Target {
    pub fn program(self) -> &'static str {
        match self {
            Target::DropFloor => "xdp_count_drop",
            Target::TxFloor => "xdp_tx_floor",
            Target::Xdplb => maps::XDP_PROGRAM,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RigOptions {
    /// Distinct source ports (flows); a power of two, at most 32768.
    pub flows: u32,
    /// The CPU the generator (and so the whole pipeline) runs on.
    pub cpu: usize,
}

/// Counts from one measurement, all deltas over it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub elapsed: Duration,
    /// Frames asked of BPF_PROG_RUN (the sum of `repeat`).
    pub requested: u64,
    /// Frames the generator program counted.
    pub generated: u64,
    /// Frames gen0 could not queue on lb0 (veth's ring full; gen0's
    /// `tx_queue_0_xdp_xmit_errors`).
    pub refused: u64,
    /// Frames lb0's program saw (lb0's `rx_queue_0_xdp_packets`).
    pub lb_seen: u64,
    /// Frames lb0's program XDP_TXed (lb0's `rx_queue_0_xdp_tx`), and of
    /// those, how many could not be queued on gen0 (`rx_queue_0_xdp_tx_errors`).
    pub lb_tx: u64,
    pub lb_tx_errors: u64,
    /// Frames `xdp_count_drop` counted on lb0 (drop floor only).
    pub lb_dropped: Option<u64>,
    /// Frames the sink on gen0 counted.
    pub returned: u64,
    /// xdplb only: its reason counters, and new flows made.
    pub xdplb: Option<XdplbCounts>,
    /// veth's own counters (`ethtool -S`), deltas, for the notes.
    pub veth: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
pub struct XdplbCounts {
    pub tx_forward: u64,
    /// Every reason other than tx_forward, non-zero only.
    pub other: Vec<(Reason, u64)>,
    pub new_flows: u64,
    /// Connections in xdplb's FLOWS (the warm-up makes them all).
    pub flows_total: u64,
}

impl Sample {
    /// What made it through: dropped on lb0 (drop floor), or back at the
    /// sink.
    pub fn delivered(&self) -> u64 {
        self.lb_dropped.unwrap_or(self.returned)
    }

    pub fn mpps(&self) -> f64 {
        self.delivered() as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Builds the rig in a namespace of its own, runs `f` with it on a thread
/// in that namespace (pinned to `opts.cpu`), and removes everything.
pub fn run<T: Send + 'static>(
    opts: RigOptions,
    f: impl FnOnce(&mut Rig) -> Result<T> + Send + 'static,
) -> Result<T> {
    ensure!(
        opts.flows.is_power_of_two() && (2..=32768).contains(&opts.flows),
        "flows must be a power of two in 2..=32768, not {}",
        opts.flows
    );
    sweep_stale();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Netns::create(&format!("{NS_PREFIX}{id}"))?;
    setup_network(&ns).with_context(|| format!("setting up the veth pair in {}", ns.name))?;
    let pins = PinDir::create(PIN_PREFIX)?;
    let pin_path = pins.path.clone();
    let ns_name = ns.name.clone();
    let result = ns.run(move || -> Result<T> {
        pin_to_cpu(opts.cpu)?;
        let mut rig = Rig::load(opts, ns_name, &pin_path)?;
        let out = f(&mut rig);
        // Detach (links drop with their programs) in the namespace, before
        // it goes.
        drop(rig);
        out
    })?;
    drop(pins);
    drop(ns);
    result
}

fn setup_network(ns: &Netns) -> Result<()> {
    // No IPv6 on the veths: the kernel's router solicitations and MLD
    // reports would reach the programs and muddle the counts.
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
    ns.ip(&[
        "link",
        "add",
        "lb0",
        "address",
        &mac_str(LB_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "gen0",
        "address",
        &mac_str(CLIENT_MAC),
    ])?;
    ns.ip(&["addr", "add", &format!("{SNAT}/24"), "dev", "lb0"])?;
    ns.ip(&["link", "set", "lb0", "up"])?;
    ns.ip(&["link", "set", "gen0", "up"])?;
    for (host, mac) in BACKENDS.into_iter().chain([(CLIENT, CLIENT_MAC)]) {
        ns.ip(&[
            "neigh",
            "add",
            &host.to_string(),
            "lladdr",
            &mac_str(mac),
            "dev",
            "lb0",
            "nud",
            "permanent",
        ])?;
    }
    // bpf_fib_lookup answers BPF_FIB_LKUP_RET_FWD_DISABLED without it.
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// The loaded programs; lives on the namespace's thread.
pub struct Rig {
    opts: RigOptions,
    ns: String,
    gen_ifindex: u32,
    frame: Vec<u8>,
    generator: Ebpf,
    /// `xdp_count_drop` attached to gen0.
    sink: Ebpf,
    drop_floor: Ebpf,
    tx_floor: Ebpf,
    xdplb: Ebpf,
    /// The service's id in xdplb's maps (SERVICE_STATS).
    xdplb_service: u32,
    warm: bool,
}

impl Rig {
    fn load(opts: RigOptions, ns: String, pins: &std::path::Path) -> Result<Rig> {
        let frame = client_frame(SPORT_BASE);
        ensure!(
            frame.len() == FRAME_LEN,
            "the template is {} bytes, not {FRAME_LEN}",
            frame.len()
        );
        let mut words = [0u64; FRAME_LEN / 8];
        for (w, c) in words.iter_mut().zip(frame.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
        let mask = opts.flows - 1;
        let mut generator = EbpfLoader::new()
            .override_global("GEN_FRAME", &words, true)
            .override_global("GEN_FLOW_MASK", &mask, true)
            .load(LAB_XDP_OBJECT)
            .context("loading the lab XDP object (generator)")?;
        xdp(&mut generator, "xdp_bench_gen")?.load()?;
        check_generator(&generator)?;

        let mut sink = lab_program("xdp_count_drop")?;
        xdp(&mut sink, "xdp_count_drop")?
            .attach("gen0", XdpMode::Driver)
            .context("attaching the sink xdp_count_drop to gen0 (native)")?;
        let drop_floor = lab_program("xdp_count_drop")?;
        let tx_floor = lab_program("xdp_tx_floor")?;
        let (xdplb, xdplb_service) = load_xdplb(pins)?;
        let gen_ifindex = nix::net::if_::if_nametoindex("gen0").context("gen0's ifindex")?;
        Ok(Rig {
            opts,
            ns,
            gen_ifindex,
            frame,
            generator,
            sink,
            drop_floor,
            tx_floor,
            xdplb,
            xdplb_service,
            warm: false,
        })
    }

    /// Attaches `target` to lb0 (native), warms it up, generates for
    /// `duration`, detaches it; returns the counts.
    pub fn measure(&mut self, target: Target, duration: Duration) -> Result<Sample> {
        let ebpf = match target {
            Target::DropFloor => &mut self.drop_floor,
            Target::TxFloor => &mut self.tx_floor,
            Target::Xdplb => &mut self.xdplb,
        };
        let prog = xdp(ebpf, target.program())?;
        let link = prog
            .attach("lb0", XdpMode::Driver)
            .with_context(|| format!("attaching {} to lb0 (native)", target.program()))?;
        let result = self.measure_attached(target, duration);
        let prog = xdp(self.ebpf_mut(target), target.program())?;
        prog.detach(link)
            .with_context(|| format!("detaching {} from lb0", target.program()))?;
        result
    }

    fn ebpf_mut(&mut self, target: Target) -> &mut Ebpf {
        match target {
            Target::DropFloor => &mut self.drop_floor,
            Target::TxFloor => &mut self.tx_floor,
            Target::Xdplb => &mut self.xdplb,
        }
    }

    /// The XDP attach mode of lb0 and gen0 as the kernel reports it
    /// (`ip -d link`: "xdp" is native, "xdpgeneric" generic).
    fn check_native(&self) -> Result<()> {
        for dev in ["lb0", "gen0"] {
            let out = run_cmd(netns::command_in(&self.ns, "ip").args(["-d", "link", "show", dev]))?;
            ensure!(
                out.contains(" xdp ") || out.contains("prog/xdp "),
                "{dev} has no native XDP program attached: {out}"
            );
            ensure!(
                !out.contains("xdpgeneric"),
                "{dev} runs XDP in generic mode: {out}"
            );
        }
        Ok(())
    }

    fn measure_attached(&mut self, target: Target, duration: Duration) -> Result<Sample> {
        self.check_native()?;
        // Warm up: caches, and for xdplb every flow made (the established
        // path is what is measured).
        let warmup = if target == Target::Xdplb && !self.warm {
            (self.opts.flows * 8).max(1 << 16)
        } else {
            1 << 16
        };
        self.generate(warmup)?;
        thread::sleep(Duration::from_millis(20));
        if target == Target::Xdplb {
            self.promote_embryos()?;
            self.warm = true;
        }

        let before = self.counts(target)?;
        let start = Instant::now();
        let mut requested = 0u64;
        while start.elapsed() < duration {
            self.generate(CHUNK)?;
            requested += u64::from(CHUNK);
        }
        let elapsed = start.elapsed();
        // Frames still queued on the veths are polled by now.
        thread::sleep(Duration::from_millis(20));
        let after = self.counts(target)?;
        Ok(after.minus(&before, target, elapsed, requested))
    }

    /// `n` frames through BPF_PROG_RUN live mode, as received on gen0.
    fn generate(&self, n: u32) -> Result<()> {
        let ctx = XdpMd {
            data_end: self.frame.len() as u32,
            ingress_ifindex: self.gen_ifindex,
            ..XdpMd::zeroed()
        };
        let prog: &Xdp = self
            .generator
            .program("xdp_bench_gen")
            .ok_or_else(|| anyhow!("no xdp_bench_gen"))?
            .try_into()?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&self.frame),
                ctx_in: Some(bytemuck::bytes_of(&ctx)),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_RUN (live frames) of xdp_bench_gen on gen0")?;
        // In live mode the return value is the run's, 0 on success.
        ensure!(
            r.return_value == 0,
            "BPF_PROG_RUN returned {}",
            r.return_value
        );
        Ok(())
    }

    /// The rig's frames are a client's ACKs of connections xdplb has not
    /// seen: it keeps each half-open (EMBRYOS) until the backend answers,
    /// and no backend answers here. What the backends' answers would do,
    /// done from here: both halves into FLOWS, so the measured path is the
    /// established one.
    fn promote_embryos(&mut self) -> Result<()> {
        let embryos: Vec<(FlowKey, Embryo)> = {
            let m: aya::maps::HashMap<_, FlowKey, Embryo> = self
                .xdplb
                .map(maps::EMBRYOS)
                .ok_or_else(|| anyhow!("no {}", maps::EMBRYOS))?
                .try_into()?;
            m.iter().collect::<Result<_, _>>()?
        };
        let mut flows: aya::maps::HashMap<_, FlowKey, Flow> = self
            .xdplb
            .map_mut(maps::FLOWS)
            .ok_or_else(|| anyhow!("no {}", maps::FLOWS))?
            .try_into()?;
        for (key, embryo) in &embryos {
            flows.insert(key, embryo.flow, 0)?;
        }
        let mut m: aya::maps::HashMap<_, FlowKey, Embryo> = self
            .xdplb
            .map_mut(maps::EMBRYOS)
            .ok_or_else(|| anyhow!("no {}", maps::EMBRYOS))?
            .try_into()?;
        for (key, _) in &embryos {
            m.remove(key)?;
        }
        Ok(())
    }

    /// Connections (forward halves) in xdplb's FLOWS.
    fn connections(&self) -> Result<u64> {
        let m: aya::maps::HashMap<_, FlowKey, Flow> = self
            .xdplb
            .map(maps::FLOWS)
            .ok_or_else(|| anyhow!("no {}", maps::FLOWS))?
            .try_into()?;
        let mut n = 0;
        for e in m.iter() {
            n += u64::from(e?.1.dir == lb_common::flow::DIR_FORWARD);
        }
        Ok(n)
    }

    fn counts(&self, target: Target) -> Result<Counts> {
        let xdplb = if target == Target::Xdplb {
            let reasons: PerCpuArray<_, Counter> = self
                .xdplb
                .map(maps::REASON_STATS)
                .ok_or_else(|| anyhow!("no {}", maps::REASON_STATS))?
                .try_into()?;
            let reasons = ReasonTotals::read(&reasons)?;
            let stats: PerCpuArray<_, Traffic> = self
                .xdplb
                .map(maps::SERVICE_STATS)
                .ok_or_else(|| anyhow!("no {}", maps::SERVICE_STATS))?
                .try_into()?;
            let new_flows = stats
                .get(&self.xdplb_service, 0)?
                .iter()
                .map(|t| t.new_flows)
                .sum();
            Some((reasons, new_flows, self.connections()?))
        } else {
            None
        };
        Ok(Counts {
            generated: lab_count(&self.generator)?,
            sink: lab_count(&self.sink)?,
            drop_floor: lab_count(&self.drop_floor)?,
            xdplb,
            veth: self.veth_stats()?,
        })
    }

    fn veth_stats(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for dev in ["lb0", "gen0"] {
            let text = run_cmd(netns::command_in(&self.ns, "ethtool").args(["-S", dev]))?;
            for line in text.lines().skip(1) {
                if let Some((k, v)) = line.trim().split_once(": ")
                    && let Ok(v) = v.trim().parse::<u64>()
                    && k != "peer_ifindex"
                {
                    out.insert(format!("{dev}.{k}"), v);
                }
            }
        }
        Ok(out)
    }
}

struct Counts {
    generated: u64,
    sink: u64,
    drop_floor: u64,
    /// Reasons, new flows, connections in FLOWS.
    xdplb: Option<(ReasonTotals, u64, u64)>,
    veth: BTreeMap<String, u64>,
}

impl Counts {
    fn minus(&self, before: &Counts, target: Target, elapsed: Duration, requested: u64) -> Sample {
        let veth: BTreeMap<String, u64> = self
            .veth
            .iter()
            .map(|(k, v)| (k.clone(), v - before.veth.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v != 0)
            .collect();
        let stat = |k: &str| veth.get(k).copied().unwrap_or(0);
        let xdplb = match (&self.xdplb, &before.xdplb) {
            (Some((r1, f1, conns)), Some((r0, f0, _))) => {
                let other = Reason::ALL
                    .iter()
                    .filter(|&&r| r != Reason::TxForward)
                    .map(|&r| (r, r1.get(r).packets - r0.get(r).packets))
                    .filter(|(_, n)| *n != 0)
                    .collect();
                Some(XdplbCounts {
                    tx_forward: r1.get(Reason::TxForward).packets
                        - r0.get(Reason::TxForward).packets,
                    other,
                    new_flows: f1 - f0,
                    flows_total: *conns,
                })
            }
            _ => None,
        };
        Sample {
            elapsed,
            requested,
            generated: self.generated - before.generated,
            refused: stat("gen0.tx_queue_0_xdp_xmit_errors"),
            lb_seen: stat("lb0.rx_queue_0_xdp_packets"),
            lb_tx: stat("lb0.rx_queue_0_xdp_tx"),
            lb_tx_errors: stat("lb0.rx_queue_0_xdp_tx_errors"),
            lb_dropped: (target == Target::DropFloor).then(|| self.drop_floor - before.drop_floor),
            returned: self.sink - before.sink,
            xdplb,
            veth,
        }
    }
}

/// The client's TCP ACK from `sport` to the VIP, checksums and all.
fn client_frame(sport: u16) -> Vec<u8> {
    FrameBuilder::tcp(
        CLIENT_MAC,
        LB_MAC,
        SocketAddrV4::new(CLIENT, sport),
        SocketAddrV4::new(VIP, PORT),
    )
    .flags(TCP_ACK)
    .seq(1)
    .ack(1)
    .payload(&[0x5a; FRAME_LEN - 54])
    .build()
}

/// XDP_TX, as BPF_PROG_TEST_RUN returns it.
const XDP_TX: u32 = 3;

/// Runs the generator twice in plain test mode (output frame returned)
/// over a scrambled frame: each time it must write exactly the frame built
/// for its source port, checksums included, and the second port must
/// follow the first.
fn check_generator(generator: &Ebpf) -> Result<()> {
    let prog: &Xdp = generator
        .program("xdp_bench_gen")
        .ok_or_else(|| anyhow!("no xdp_bench_gen"))?
        .try_into()?;
    let scrambled = vec![0xee; FRAME_LEN];
    let sport = |f: &[u8]| u16::from_be_bytes([f[34], f[35]]);
    let mut ports = Vec::new();
    for _ in 0..2 {
        let mut out = vec![0u8; 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&scrambled),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN of xdp_bench_gen")?;
        ensure!(
            r.return_value == XDP_TX,
            "xdp_bench_gen returned {}, not XDP_TX",
            r.return_value
        );
        out.truncate(r.data_size_out as usize);
        let expected = client_frame(sport(&out));
        ensure!(
            out == expected,
            "xdp_bench_gen wrote {out:02x?}, expected {expected:02x?}"
        );
        ports.push(sport(&out));
    }
    ensure!(
        ports[0] >= SPORT_BASE && ports[1] == ports[0] + 1,
        "xdp_bench_gen gave source ports {ports:?}"
    );
    Ok(())
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?)
}

fn lab_program(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(LAB_XDP_OBJECT).context("loading the lab XDP object")?;
    xdp(&mut ebpf, name)?
        .load()
        .with_context(|| format!("loading {name}"))?;
    Ok(ebpf)
}

fn lab_count(ebpf: &Ebpf) -> Result<u64> {
    let m: PerCpuArray<_, u64> = ebpf
        .map("LAB_COUNT")
        .ok_or_else(|| anyhow!("no LAB_COUNT"))?
        .try_into()?;
    Ok(m.get(&0, 0)?.iter().sum())
}

/// xdplb loaded as the agent loads it, with its maps pinned in `pins`, the
/// agent's reconciler writing the control maps for one service
/// VIP:6443/tcp of three backends. Returns it and the service's id.
fn load_xdplb(pins: &std::path::Path) -> Result<(Ebpf, u32)> {
    let mut ebpf = loader::load_object(XDPLB_OBJECT, pins, maps::DEFAULT_MAX_FLOWS, TABLE_SIZE)?;
    xdp(&mut ebpf, maps::XDP_PROGRAM)?
        .load()
        .context("the kernel rejected xdplb")?;
    // The control maps stay in the kernel with the program (and pinned)
    // when the reconciler goes.
    let mut reconciler = Reconciler::adopt(ControlMaps::take(&mut ebpf)?, TABLE_SIZE)?;
    let key = ServiceKey {
        vip: VIP.octets(),
        port: PORT.to_be_bytes(),
        proto: PROTO_TCP,
        _pad: 0,
    };
    reconciler.apply(&Desired {
        snat_ips: vec![SNAT],
        nat_ports: NAT_PORTS,
        active: true,
        ticks_per_s: lb_common::clock::ticks_per_s(Duration::from_millis(200))?,
        fence_after: 0,
        services: vec![DesiredService {
            name: "api".into(),
            key,
            backends: BACKENDS
                .iter()
                .enumerate()
                .map(|(i, (ip, _))| DesiredBackend {
                    name: format!("backend-{i}"),
                    addr: SocketAddrV4::new(*ip, PORT),
                    weight: 1,
                    local: false,
                })
                .collect(),
        }],
        vips: Default::default(),
    })?;
    let service = reconciler
        .maps()
        .service(&key)?
        .ok_or_else(|| anyhow!("the service is not in SERVICES"))?;
    Ok((ebpf, service.id))
}

/// Removes namespaces of runs whose process is gone (their pin directories
/// go when the next [`PinDir`] of the prefix is made).
fn sweep_stale() {
    for ns in netns::list() {
        if owner_pid(&ns, NS_PREFIX).is_some_and(is_gone) {
            netns::remove_netns(&ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("xbm123-4", NS_PREFIX), Some(123));
        assert_eq!(owner_pid("xl123-4-lb1", NS_PREFIX), None);
        assert_eq!(owner_pid("xdplb-bench-mpps-77-0", PIN_PREFIX), Some(77));
        assert_eq!(owner_pid("xdplb", PIN_PREFIX), None);
    }
}

/// Needs root; `cargo xtask bench` runs the rig for real. This checks the
/// plumbing: every frame accounted for, xdplb on its established path.
#[cfg(test)]
mod rig_tests {
    use super::*;

    #[test]
    fn every_frame_is_accounted_for() {
        crate::require_root();
        let samples = run(
            RigOptions {
                flows: 1024,
                cpu: 0,
            },
            |rig| {
                [Target::DropFloor, Target::TxFloor, Target::Xdplb]
                    .into_iter()
                    .map(|t| rig.measure(t, Duration::from_millis(300)))
                    .collect::<Result<Vec<_>>>()
            },
        )
        .expect("running the rig");
        for s in &samples {
            eprintln!("{:.2} Mpps {s:?}", s.mpps());
            assert_eq!(s.generated, s.requested);
            assert_eq!(s.lb_seen + s.refused, s.generated);
        }
        let [drop, tx, lb] = &samples[..] else {
            unreachable!()
        };
        assert_eq!(drop.lb_dropped, Some(drop.lb_seen));
        assert_eq!(tx.returned, tx.lb_tx - tx.lb_tx_errors);
        let x = lb.xdplb.as_ref().expect("xdplb counts");
        assert_eq!(x.tx_forward, lb.lb_seen);
        assert!(x.other.is_empty(), "{:?}", x.other);
        assert_eq!(x.new_flows, 0);
        assert_eq!(x.flows_total, 1024);
        assert_eq!(lb.returned, lb.lb_tx - lb.lb_tx_errors);
    }
}
