//! Health checks end to end: xdplb on lb1 probes the fake kube-apiservers
//! (HTTPS `/readyz` by default, or TCP), takes a backend out of the Maglev
//! table after `fall` failed checks and puts it back after `rise` good ones,
//! logs each change once, fails open when every backend is down, writes a
//! status file, and keeps (or resets) the connections of a backend that
//! went down. Real HTTPS clients in the client namespace check what the
//! data plane does; the agent's log and status file say what it decided.

use std::{
    collections::BTreeMap,
    fs,
    future::Future,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lab::{
    Agent, Apiserver, Host, Lab, LabOptions,
    client::{self, Conn, Response},
    require_root,
};
use serde::Deserialize;
use tokio::task::JoinSet;

const PORT: u16 = 6443;
const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];
/// Slack on top of the worst case the check flags imply, for a loaded CI
/// machine running two labs at once.
const MARGIN: Duration = Duration::from_secs(1);
/// The lab starts every agent with `--report-interval 1s`; the status file
/// is rewritten at least that often.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// What the agent logs when it fails open.
const ALL_DOWN: &str = "ALL BACKENDS ARE DOWN";

/// The check timings a test gives the agent.
#[derive(Clone, Copy, Debug)]
struct Timing {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

/// What the agent uses for a 6443 service when given no check flags.
const DEFAULTS: Timing = Timing {
    interval: Duration::from_secs(2),
    timeout: Duration::from_secs(1),
    rise: 2,
    fall: 3,
};

/// Short timings, so a test sees a backend go down in seconds.
const FAST: Timing = Timing {
    interval: Duration::from_millis(500),
    timeout: Duration::from_millis(300),
    rise: 2,
    fall: 3,
};

impl Timing {
    fn args(&self) -> Vec<String> {
        vec![
            "--check-interval".into(),
            format!("{}ms", self.interval.as_millis()),
            "--check-timeout".into(),
            format!("{}ms", self.timeout.as_millis()),
            "--rise".into(),
            self.rise.to_string(),
            "--fall".into(),
            self.fall.to_string(),
        ]
    }

    /// From the moment a backend breaks to its DOWN line, at worst: the
    /// check in flight still passes, `fall` failing checks one interval
    /// apart, the last one taking the whole timeout; one more interval for
    /// the per-backend start offset and tick jitter, and the margin.
    fn down_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout + self.interval + MARGIN
    }

    /// From the moment a backend heals to its UP line (a passing check is
    /// quick, so no timeout term).
    fn up_bound(&self) -> Duration {
        self.interval * self.rise + self.interval + MARGIN
    }

    fn explain_down(&self) -> String {
        format!(
            "fall {} × interval {:?} + timeout {:?} + interval + margin {MARGIN:?} = {:?}",
            self.fall,
            self.interval,
            self.timeout,
            self.down_bound()
        )
    }

    fn explain_up(&self) -> String {
        format!(
            "rise {} × interval {:?} + interval + margin {MARGIN:?} = {:?}",
            self.rise,
            self.interval,
            self.up_bound()
        )
    }

    /// No sooner than this can a backend broken now be DOWN: `fall` failing
    /// checks are `fall - 1` intervals apart, and the first may have been in
    /// flight (at most `timeout`) when it broke. Load only adds to it.
    fn down_floor(&self) -> Duration {
        (self.interval * (self.fall - 1)).saturating_sub(self.timeout)
    }

    fn up_floor(&self) -> Duration {
        (self.interval * (self.rise - 1)).saturating_sub(self.timeout)
    }
}

/// Asserts that a transition took at least `floor`: sooner would mean the
/// agent did not wait for `fall`/`rise` checks one interval apart.
fn assert_not_before(what: &str, took: Duration, floor: Duration, t: Timing, agent: &Agent) {
    assert!(
        took >= floor,
        "expected {what} no sooner than {floor:?} (rise {}, fall {}, interval {:?}, timeout {:?}), it came after {took:?}{}",
        t.rise,
        t.fall,
        t.interval,
        t.timeout,
        diag(agent)
    );
}

/// A lab with xdplb on lb1 and a client runtime in the client namespace.
/// Fields drop in order: the agent stops (SIGTERM, clean detach) before the
/// client's connections close and the lab removes the namespaces.
struct Bed {
    agent: Agent,
    client: NsRuntime,
    /// Backend host → the address the agent was given for it.
    backends: BTreeMap<String, SocketAddrV4>,
    lab: Lab,
}

impl Bed {
    /// A fresh lab, xdplb on lb1 with `--vip <vip>` and a `--backend` per
    /// entry of `backends` (`"api1"`, or `"api3:6444"` for another port),
    /// plus `extra` flags.
    fn start(backends: &[&str], extra: &[&str]) -> Bed {
        Bed::start_in(new_lab(), backends, extra)
    }

    fn start_in(lab: Lab, backends: &[&str], extra: &[&str]) -> Bed {
        let mut args = vec!["--vip".to_owned(), lab.vip().to_string()];
        let mut addrs = BTreeMap::new();
        for b in backends {
            let (host, port) = match b.split_once(':') {
                Some((h, p)) => (h, p.parse().expect("a port in the backend spec")),
                None => (*b, PORT),
            };
            let addr = SocketAddrV4::new(lab.host(host).ip, port);
            args.push("--backend".into());
            args.push(addr.to_string());
            addrs.insert(host.to_owned(), addr);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let agent = start_agent(&lab, &args);
        let client = NsRuntime::new(lab.host("client"));
        Bed {
            agent,
            client,
            backends: addrs,
            lab,
        }
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::from((self.lab.vip(), PORT))
    }

    /// The name the agent gives a backend: in single-service mode (`--vip`,
    /// `--backend`) there is no way to name one, so config.rs names it by
    /// its address (`BackendConfig::name`, "by default the address").
    fn name(&self, host: &str) -> String {
        self.backends
            .get(host)
            .unwrap_or_else(|| panic!("{host} is not a backend of this bed"))
            .to_string()
    }

    /// `n` fresh HTTPS connections to the VIP, one `/version` each; every
    /// one must answer 200. Returns how many each backend answered.
    fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let vip = self.vip();
        let results = self.client.run(fresh_connections(vip, n, 10));
        tally(&results, n, &self.agent)
    }

    /// Opens a keep-alive connection through the VIP and asks `/version`.
    fn open(&self) -> anyhow::Result<(Conn, Response)> {
        let vip = self.vip();
        self.client.run(async move {
            let mut conn = Conn::open(vip).await?;
            let r = conn.get("/version").await?;
            Ok((conn, r))
        })
    }

    /// One GET on a held connection (the connection goes in and comes back).
    fn get(&self, conn: Conn, path: &'static str) -> (Conn, anyhow::Result<Response>) {
        self.client.run(async move {
            let mut conn = conn;
            let r = conn.get(path).await;
            (conn, r)
        })
    }

    /// Opens connections through the VIP until one has landed on each of
    /// `wanted` (Maglev sends each new one to any backend); the others are
    /// closed. At most 100 tries or 30 s.
    fn hold(&self, wanted: &[&str]) -> BTreeMap<String, Held> {
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        let mut errors = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..100 {
            if held.len() == wanted.len() || Instant::now() > deadline {
                break;
            }
            match self.open() {
                Ok((conn, r)) if r.status == 200 && wanted.contains(&r.backend.as_str()) => {
                    held.entry(r.backend.clone()).or_insert(Held {
                        backend: r.backend,
                        conn: Some(conn),
                        gets: 1,
                    });
                }
                Ok((_, r)) if r.status == 200 => {}
                Ok((_, r)) => errors.push(format!("status {} from {:?}", r.status, r.backend)),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        assert_eq!(
            held.keys().map(String::as_str).collect::<Vec<_>>(),
            wanted,
            "expected to hold a keep-alive connection to each of {wanted:?} within 100 tries / 30 s; errors: {errors:?}{}",
            diag(&self.agent)
        );
        held
    }

    /// One `GET /version` on each held connection: each must still be
    /// answered 200 by the backend it landed on.
    fn check_held(&self, held: &mut BTreeMap<String, Held>, when: &str) {
        for h in held.values_mut() {
            let conn = h
                .conn
                .take()
                .expect("a held connection is put back after each GET");
            let (conn, r) = self.get(conn, "/version");
            h.conn = Some(conn);
            h.gets += 1;
            match r {
                Ok(r) => assert!(
                    r.status == 200 && r.backend == h.backend,
                    "{when}: expected GET {} on the connection held to {} to be answered 200 by it, got {} from {:?}{}",
                    h.gets,
                    h.backend,
                    r.status,
                    r.backend,
                    diag(&self.agent)
                ),
                Err(e) => panic!(
                    "{when}: GET {} on the connection held to {} failed: {e:#}{}",
                    h.gets,
                    h.backend,
                    diag(&self.agent)
                ),
            }
        }
    }

    /// The agent's log lines that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.agent
            .output()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the agent's log has a line containing `needle` (one more
    /// than the `seen` it had before), at most `bound` after `since`,
    /// calling `meanwhile` about every 200 ms. Returns the line and how long
    /// after `since` it was seen; prints both.
    fn wait_for_log(
        &mut self,
        needle: &str,
        seen: usize,
        since: Instant,
        bound: Duration,
        explain: &str,
        mut meanwhile: impl FnMut(&Bed),
    ) -> (String, Duration) {
        let mut last_meanwhile = Instant::now();
        loop {
            let lines = self.lines_with(needle);
            if lines.len() > seen {
                let took = since.elapsed();
                eprintln!("{needle:?} logged after {took:?} (bound: {explain})");
                return (lines[seen].clone(), took);
            }
            if let Some(status) = self.agent.proc.child.try_wait().expect("waiting on xdplb") {
                panic!(
                    "xdplb exited ({status}) while we waited for {needle:?}{}",
                    diag(&self.agent)
                );
            }
            if since.elapsed() > bound {
                panic!(
                    "expected the agent to log {needle:?} within {bound:?} ({explain}); nothing after {:?}{}",
                    since.elapsed(),
                    diag(&self.agent)
                );
            }
            if last_meanwhile.elapsed() >= Duration::from_millis(200) {
                meanwhile(&*self);
                last_meanwhile = Instant::now();
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent writes the DOWN/UP line just before it rewrites the Maglev
    /// table (same loop turn); give the map write a moment so that the
    /// first SYN of the next test step cannot race it.
    fn settle(&self) {
        thread::sleep(Duration::from_millis(100));
    }
}

/// A keep-alive connection through the VIP that landed on `backend`.
struct Held {
    backend: String,
    conn: Option<Conn>,
    /// GETs sent on it so far.
    gets: usize,
}

fn new_lab() -> Lab {
    require_root();
    Lab::start(LabOptions::default()).expect("starting the lab")
}

fn start_agent(lab: &Lab, args: &[String]) -> Agent {
    lab.start_agent("lb1", &refs(args))
        .unwrap_or_else(|e| panic!("starting xdplb on lb1 with {args:?}: {e:#}"))
}

/// The check flags of a test: `--check KIND`, the timings, then `extra`.
fn check_args(kind: &str, timing: Timing, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--check".to_owned(), kind.to_owned()];
    args.extend(timing.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A tokio runtime whose worker threads were spawned inside a lab
/// namespace (threads inherit their creator's namespace), so sockets that
/// tasks spawned on it open live there, and outlive any one call: a test can
/// hold connections while backends go down and come back.
struct NsRuntime(tokio::runtime::Runtime);

impl NsRuntime {
    fn new(host: &Host) -> NsRuntime {
        let rt = host
            .ns
            .run(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
            })
            .and_then(|rt| Ok(rt?))
            .unwrap_or_else(|e| panic!("starting a tokio runtime in {}: {e:#}", host.name));
        NsRuntime(rt)
    }

    /// Starts `f` on the runtime's workers (in the namespace).
    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(f)
    }

    /// Runs `f` on the runtime's workers (in the namespace) and waits for it.
    fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .block_on(self.0.spawn(f))
            .expect("a client task panicked")
    }
}

/// What [`busy_gets`] saw.
struct BusyRun {
    answered: usize,
    /// When each 200 came back.
    answered_at: Vec<Instant>,
    last_backend: Option<String>,
    /// The first failure and when it happened.
    error: Option<(String, Instant)>,
}

impl BusyRun {
    fn answered_after(&self, t: Instant) -> usize {
        self.answered_at.iter().filter(|&&a| a > t).count()
    }
}

/// `GET /version` on `conn` every 5 ms until one fails (or answers
/// anything but 200) or `stop` is set.
async fn busy_gets(mut conn: Conn, stop: Arc<AtomicBool>) -> BusyRun {
    let mut run = BusyRun {
        answered: 0,
        answered_at: Vec::new(),
        last_backend: None,
        error: None,
    };
    while !stop.load(Ordering::Relaxed) {
        match conn.get("/version").await {
            Ok(r) if r.status == 200 => {
                run.answered += 1;
                run.answered_at.push(Instant::now());
                run.last_backend = Some(r.backend);
            }
            Ok(r) => {
                run.error = Some((
                    format!("status {} from {:?}", r.status, r.backend),
                    Instant::now(),
                ));
                break;
            }
            Err(e) => {
                run.error = Some((format!("{e:#}"), Instant::now()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run
}

/// `n` fresh HTTPS connections to `addr`, one `GET /version` each, at most
/// `parallel` at a time. Gives up launching more after 10 failures, so a
/// broken data plane fails the test in seconds rather than minutes.
async fn fresh_connections(
    addr: SocketAddr,
    n: usize,
    parallel: usize,
) -> Vec<Result<Response, String>> {
    let mut tasks = JoinSet::new();
    let mut out = Vec::with_capacity(n);
    let (mut started, mut failed) = (0, 0);
    loop {
        while started < n && tasks.len() < parallel && failed < 10 {
            tasks.spawn(async move {
                client::get(addr, "/version")
                    .await
                    .map_err(|e| format!("{e:#}"))
            });
            started += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let r = done.unwrap_or_else(|e| Err(format!("client task failed: {e}")));
        failed += usize::from(r.is_err());
        out.push(r);
    }
    out
}

/// Which backend answered: `/version`'s gitVersion, checked against the
/// `x-backend` header.
fn backend_of(r: &Response) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .map_err(|e| format!("/version body is not JSON ({e}): {:?}", r.body))?;
    let git = v["gitVersion"].as_str().unwrap_or_default();
    if git != r.backend {
        return Err(format!(
            "gitVersion {git:?} but x-backend {:?}: {:?}",
            r.backend, r.body
        ));
    }
    Ok(git.to_owned())
}

/// Every one of `n` results must be a 200 from a known backend; counts them
/// by backend.
fn tally(results: &[Result<Response, String>], n: usize, agent: &Agent) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(r) if r.status == 200 => match backend_of(r) {
                Ok(b) => *counts.entry(b).or_insert(0) += 1,
                Err(e) => errors.push(e),
            },
            Ok(r) => errors.push(format!("status {} from {:?}", r.status, r.backend)),
            Err(e) => errors.push(e.clone()),
        }
    }
    let answered: usize = counts.values().sum();
    assert!(
        errors.is_empty() && answered == n,
        "expected {n} connections through the VIP to answer 200, {answered} did ({counts:?}); \
         {} failed, first errors: {:#?}{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        diag(agent)
    );
    counts
}

/// New connections must have reached only `allowed`.
fn assert_only(counts: &BTreeMap<String, usize>, allowed: &[&str], when: &str, agent: &Agent) {
    let stray: Vec<_> = counts
        .iter()
        .filter(|(b, _)| !allowed.contains(&b.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "{when}: expected new connections to reach only {allowed:?}, got {counts:?}{}",
        diag(agent)
    );
}

/// What to print when something goes wrong: the counters and the log tail.
fn diag(agent: &Agent) -> String {
    let counters = match agent.reasons() {
        Ok(r) => r
            .nonzero()
            .map(|(r, c)| format!("{}={}", r.name(), c.packets))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("(cannot read them: {e:#})"),
    };
    let log = agent.output();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("\nreason counters: {counters}\nxdplb log (last 40 lines):\n{tail}")
}

/// The status file (`--status-file`), as the issue specifies it.
#[derive(Debug, Deserialize)]
struct Status {
    backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Deserialize)]
struct BackendStatus {
    service: String,
    backend: String,
    address: String,
    up: bool,
    /// `ok` or why the last check failed.
    last_check: String,
    latency_ms: Option<f64>,
    /// The issue shows an integer; a fraction would do as well.
    since_s: f64,
    checks: u64,
}

fn read_status(path: &Path) -> Result<Status, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not the status JSON ({e}): {text:?}", path.display()))
}

/// Polls the status file every 50 ms until `ok` holds for it, at most
/// `bound`. Returns the last status read, or the last error and every
/// distinct read error on the way (a torn read means the file is not
/// replaced atomically).
fn wait_for_status(
    path: &Path,
    bound: Duration,
    mut ok: impl FnMut(&Status) -> bool,
) -> (Result<Status, String>, Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut errors: Vec<String> = Vec::new();
    loop {
        let r = read_status(path);
        match &r {
            Ok(s) if ok(s) => return (r, errors),
            Ok(_) => {}
            Err(e) if path.exists() && !errors.contains(e) => errors.push(e.clone()),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return (r, errors);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn entry<'a>(status: &'a Status, address: &str) -> Option<&'a BackendStatus> {
    status.backends.iter().find(|b| b.address == address)
}

#[test]
fn unready_backend_leaves_and_returns() {
    let t = FAST;
    let args = check_args("https:/readyz", t, &["--on-down", "keep"]);
    let mut bed = Bed::start(&BACKENDS, &refs(&args));
    let api2 = bed.name("api2");

    // A connection already on api2 when it goes down stays there
    // (on_down=keep); api2 still serves /version while /readyz fails.
    let mut held = bed.hold(&["api2"]);

    let down = format!("{api2} DOWN: ");
    let seen = bed.lines_with(&down).len();
    assert_eq!(
        seen,
        0,
        "api2 went down before anything happened to it{}",
        diag(&bed.agent)
    );
    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(false)
        .expect("SIGUSR1 to api2");
    let broke = Instant::now();
    let (line, took) = bed.wait_for_log(&down, 0, broke, t.down_bound(), &t.explain_down(), |_| {});
    assert_not_before("api2's DOWN", took, t.down_floor(), t, &bed.agent);
    let want = format!("{api2} DOWN: /readyz returned 500 ({f}/{f})", f = t.fall);
    assert!(
        line.contains(&want),
        "expected the DOWN line to say {want:?}, it says {line:?}"
    );
    bed.settle();

    let counts = bed.spread(100);
    assert_only(&counts, &["api1", "api3"], "api2 down", &bed.agent);
    bed.check_held(&mut held, "api2 down, on_down=keep");
    assert!(
        bed.lines_with(ALL_DOWN).is_empty(),
        "expected no {ALL_DOWN:?} with two backends up{}",
        diag(&bed.agent)
    );

    let up = format!("{api2} UP: ");
    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(true)
        .expect("SIGUSR2 to api2");
    let healed = Instant::now();
    let (_, took) = bed.wait_for_log(&up, 0, healed, t.up_bound(), &t.explain_up(), |_| {});
    assert_not_before("api2's UP", took, t.up_floor(), t, &bed.agent);
    bed.settle();

    let counts = bed.spread(100);
    // A third of 100 on average; fewer than 10 is vanishingly unlikely with
    // equal weights, and would mean api2 came back with less than its share.
    let got = counts.get("api2").copied().unwrap_or(0);
    assert!(
        got >= 10,
        "expected api2 to get its share (about 33) of 100 new connections once UP, it got {got} ({counts:?}){}",
        diag(&bed.agent)
    );
    bed.check_held(&mut held, "api2 up again");
    // Logged once per change, not once per check.
    let (downs, ups) = (bed.lines_with(&down), bed.lines_with(&up));
    assert!(
        downs.len() == 1 && ups.len() == 1,
        "expected exactly one DOWN and one UP line for {api2}, got DOWN {downs:#?} UP {ups:#?}"
    );
}

#[test]
fn killed_backend_leaves_and_a_held_connection_survives() {
    let t = FAST;
    let args = check_args("https:/readyz", t, &[]);
    let mut bed = Bed::start(&BACKENDS, &refs(&args));
    let api3 = bed.name("api3");
    let mut held = bed.hold(&["api1", "api2"]);

    bed.lab
        .apiserver("api3")
        .unwrap()
        .kill()
        .expect("killing api3");
    let killed = Instant::now();
    let down = format!("{api3} DOWN: ");
    let (line, _) = bed.wait_for_log(&down, 0, killed, t.down_bound(), &t.explain_down(), |bed| {
        bed.check_held(&mut held, "while api3 goes down")
    });
    let lower = line.to_lowercase();
    assert!(
        lower.contains("refused") || lower.contains("connect"),
        "expected api3's DOWN reason to say the connection was refused, the line is {line:?}"
    );
    bed.settle();

    let counts = bed.spread(100);
    assert_only(
        &counts,
        &["api1", "api2"],
        "api3 killed and down",
        &bed.agent,
    );
    bed.check_held(&mut held, "after api3 went down");
}

#[test]
fn hanging_backend_is_marked_down_by_https_check() {
    let t = FAST;
    let args = check_args("https:/readyz", t, &[]);
    let mut bed = Bed::start(&BACKENDS, &refs(&args));
    let api3 = bed.name("api3");

    // A wedged apiserver: accepts TCP, never completes TLS or answers.
    bed.lab
        .apiserver("api3")
        .unwrap()
        .kill()
        .expect("killing api3");
    let hung = Apiserver::start_with(bed.lab.host("api3"), &bed.lab.run_dir, &["--hang"])
        .expect("starting a hanging api3");
    bed.lab.apiservers.insert("api3".into(), hung);
    let wedged = Instant::now();

    let (line, _) = bed.wait_for_log(
        &format!("{api3} DOWN: "),
        0,
        wedged,
        t.down_bound(),
        &t.explain_down(),
        |_| {},
    );
    let lower = line.to_lowercase();
    assert!(
        lower.contains("timed out") || lower.contains("timeout"),
        "expected api3's DOWN reason to mention a timeout, the line is {line:?}"
    );
    bed.settle();
    // A connection sent to the wedged api3 would time out in the client.
    let counts = bed.spread(30);
    assert_only(
        &counts,
        &["api1", "api2"],
        "api3 hanging and down",
        &bed.agent,
    );
}

#[test]
fn tcp_check_closed_port_down_open_port_up() {
    let t = FAST;
    let args = check_args("tcp", t, &[]);
    // Nothing listens on api3:6444 (api3's apiserver is on 6443).
    let mut bed = Bed::start(&["api1", "api3:6444"], &refs(&args));
    let (api1, closed) = (bed.name("api1"), bed.name("api3"));
    let started = Instant::now();

    let (line, took) = bed.wait_for_log(
        &format!("{closed} DOWN: "),
        0,
        started,
        t.down_bound(),
        &t.explain_down(),
        |_| {},
    );
    let lower = line.to_lowercase();
    assert!(
        lower.contains("refused") || lower.contains("connect"),
        "expected {closed}'s DOWN reason to say the connect was refused, the line is {line:?}"
    );
    // As long again for api1, which passes every TCP check.
    thread::sleep(took);
    let api1_down = bed.lines_with(&format!("{api1} DOWN"));
    assert!(
        api1_down.is_empty(),
        "expected {api1} (listening) to stay up under the TCP check, the agent logged {api1_down:#?}{}",
        diag(&bed.agent)
    );
    assert!(
        bed.lines_with(ALL_DOWN).is_empty(),
        "expected no {ALL_DOWN:?} while {api1} is up{}",
        diag(&bed.agent)
    );
    bed.settle();
    let counts = bed.spread(20);
    assert_only(&counts, &["api1"], "api3:6444 down", &bed.agent);
}

#[test]
fn status_file_shows_every_backend() {
    let t = FAST;
    let lab = new_lab();
    let path: PathBuf = lab.run_dir.join("status.json");
    let status_flag = path.display().to_string();
    let args = check_args("https:/readyz", t, &["--status-file", &status_flag]);
    let mut bed = Bed::start_in(lab, &BACKENDS, &refs(&args));
    let service = format!("{}/tcp", bed.vip());
    let names: Vec<String> = BACKENDS.iter().map(|b| bed.name(b)).collect();

    // Every backend checked at least once: the first check runs within an
    // interval (plus the per-backend offset), the file follows on the next
    // report tick at the latest.
    let bound = t.interval * 2 + t.timeout + REPORT_INTERVAL + MARGIN;
    let (first, mut torn) = wait_for_status(&path, bound, |s| {
        s.backends.len() == 3 && s.backends.iter().all(|b| b.last_check == "ok")
    });
    let first = first.unwrap_or_else(|e| {
        panic!(
            "no status within {bound:?} of start: {e}{}",
            diag(&bed.agent)
        )
    });
    assert!(
        first.backends.len() == 3 && first.backends.iter().all(|b| b.last_check == "ok"),
        "expected the status file to list {names:?}, each with last_check \"ok\", within {bound:?} of start; it says {first:#?}"
    );
    for name in &names {
        let b = entry(&first, name)
            .unwrap_or_else(|| panic!("no entry with address {name} in {first:#?}"));
        assert_eq!(
            (b.service.as_str(), b.backend.as_str(), b.up),
            (service.as_str(), name.as_str(), true),
            "expected {name} listed up, under service {service}, named by its address; got {b:?}"
        );
        let latency = b.latency_ms.unwrap_or(-1.0);
        assert!(
            latency > 0.0 && latency < t.timeout.as_secs_f64() * 1000.0,
            "expected an up backend's latency_ms between 0 and the {:?} timeout, {name} has {:?}",
            t.timeout,
            b.latency_ms
        );
        assert!(
            b.checks >= 1,
            "expected {name} to count its checks, got {b:?}"
        );
    }

    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(false)
        .expect("SIGUSR1 to api2");
    let broke = Instant::now();
    bed.wait_for_log(
        &format!("{} DOWN: ", names[1]),
        0,
        broke,
        t.down_bound(),
        &t.explain_down(),
        |_| {},
    );
    let down_at = Instant::now();
    // Written on the change itself; a report tick at the latest.
    let bound = REPORT_INTERVAL + MARGIN;
    let (after, more_torn) =
        wait_for_status(&path, bound, |s| entry(s, &names[1]).is_some_and(|b| !b.up));
    torn.extend(more_torn);
    let after = after.unwrap_or_else(|e| {
        panic!(
            "reading the status after api2 went down: {e}{}",
            diag(&bed.agent)
        )
    });
    let api2 = entry(&after, &names[1])
        .unwrap_or_else(|| panic!("api2 ({}) vanished from {after:#?}", names[1]));
    assert!(
        !api2.up && api2.last_check.contains("/readyz returned 500"),
        "expected api2 down with last_check \"/readyz returned 500\" within {bound:?} of its DOWN line, got {api2:?}"
    );
    let since_down = broke.elapsed().as_secs_f64();
    assert!(
        api2.since_s <= since_down + 1.0,
        "expected api2's since_s to count from its DOWN ({:.1} s ago at most), it is {}",
        since_down,
        api2.since_s
    );
    for (name, before) in [(&names[0], &first), (&names[2], &first)] {
        let now = entry(&after, name).unwrap_or_else(|| panic!("{name} vanished from {after:#?}"));
        let was = entry(before, name).expect("checked above");
        assert!(
            now.up && now.last_check == "ok" && now.latency_ms.is_some(),
            "expected {name} still up with last_check \"ok\" and a latency, got {now:?}"
        );
        assert!(
            now.checks > was.checks && now.since_s >= api2.since_s,
            "expected {name}'s checks to grow ({} before) and its since_s (up since the start) to be at least api2's ({}), got {now:?}",
            was.checks,
            api2.since_s
        );
    }
    eprintln!(
        "status after api2 went down (read {:?} after its DOWN line was seen): {after:#?}",
        down_at.elapsed()
    );
    // The file must never be seen half-written by a reader.
    assert!(
        torn.is_empty(),
        "expected every read of the status file to be whole JSON (written to a temporary file and renamed), some were not: {torn:#?}"
    );
}

#[test]
fn all_backends_down_fails_open() {
    let t = FAST;
    let args = check_args("https:/readyz", t, &[]);
    let mut bed = Bed::start(&BACKENDS, &refs(&args));
    for b in BACKENDS {
        bed.lab
            .apiserver(b)
            .unwrap()
            .set_ready(false)
            .unwrap_or_else(|e| panic!("SIGUSR1 to {b}: {e:#}"));
    }
    let broke = Instant::now();
    bed.wait_for_log(
        ALL_DOWN,
        0,
        broke,
        t.down_bound(),
        &t.explain_down(),
        |_| {},
    );
    for b in BACKENDS {
        let name = bed.name(b);
        assert!(
            !bed.lines_with(&format!("{name} DOWN: ")).is_empty(),
            "expected a DOWN line for {b} ({name}) by the time the agent says {ALL_DOWN:?}{}",
            diag(&bed.agent)
        );
    }
    bed.settle();
    // The apiservers still serve /version with /readyz failing: failing open
    // balances over all of them.
    let counts = bed.spread(60);
    for b in BACKENDS {
        let got = counts.get(b).copied().unwrap_or(0);
        assert!(
            got >= 5,
            "expected failing open to balance over every backend (about 20 of 60 each), {b} got {got} ({counts:?}){}",
            diag(&bed.agent)
        );
    }
}

#[test]
fn on_down_reset_drops_flows_of_a_dead_backend() {
    let t = FAST;
    let args = check_args("https:/readyz", t, &["--on-down", "reset"]);
    let mut bed = Bed::start(&BACKENDS, &refs(&args));
    let api2 = bed.name("api2");
    let mut held = bed.hold(&["api1", "api2"]);

    // The connection on api2 is busy, as a watch or `kubectl logs -f`
    // would be: a GET every 5 ms from before api2 goes down until it fails.
    let conn = held
        .remove("api2")
        .and_then(|h| h.conn)
        .expect("held above");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = bed.client.spawn(busy_gets(conn, stop.clone()));

    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(false)
        .expect("SIGUSR1 to api2");
    let broke = Instant::now();
    bed.wait_for_log(
        &format!("{api2} DOWN: "),
        0,
        broke,
        t.down_bound(),
        &t.explain_down(),
        |_| {},
    );
    let down_seen = Instant::now();

    // Its flows are gone, so its next segment is reset (or dropped, and a
    // GET times out): the connection must have failed shortly after the
    // DOWN line, and must not be carried on to api2 by a new flow.
    let grace = Duration::from_secs(2);
    while !busy.is_finished() && down_seen.elapsed() < grace {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let run = bed
        .client
        .run(async move { busy.await.expect("the busy client task panicked") });
    match &run.error {
        Some((e, at)) => eprintln!(
            "the busy connection to api2 failed {:?} after the DOWN line was seen, as it should ({} GETs answered): {e}",
            at.saturating_duration_since(down_seen),
            run.answered
        ),
        None => panic!(
            "expected the busy connection held to api2 to fail within {grace:?} of its DOWN line with --on-down reset, \
             it kept being answered ({} GETs in all, {} after the DOWN line was seen, the last by {:?}){}",
            run.answered,
            run.answered_after(down_seen),
            run.last_backend,
            diag(&bed.agent)
        ),
    }
    // Only api2's flows go: api1's connection is untouched.
    bed.check_held(&mut held, "after api2 went down with on_down=reset");
    let counts = bed.spread(30);
    assert_only(
        &counts,
        &["api1", "api3"],
        "api2 down, on_down=reset",
        &bed.agent,
    );
}

#[test]
fn without_check_flags_a_6443_service_checks_https_readyz_every_2s() {
    let t = DEFAULTS;
    let mut bed = Bed::start(&BACKENDS, &[]);
    let api2 = bed.name("api2");

    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(false)
        .expect("SIGUSR1 to api2");
    let broke = Instant::now();
    let down = format!("{api2} DOWN: ");
    let (line, took) = bed.wait_for_log(&down, 0, broke, t.down_bound(), &t.explain_down(), |_| {});
    assert_not_before(
        "api2's DOWN with the default timings",
        took,
        t.down_floor(),
        t,
        &bed.agent,
    );
    let want = format!("{api2} DOWN: /readyz returned 500 (3/3)");
    assert!(
        line.contains(&want),
        "expected the default check (https:/readyz, fall 3) to say {want:?}, the line is {line:?}"
    );
    bed.settle();
    let counts = bed.spread(30);
    assert_only(
        &counts,
        &["api1", "api3"],
        "api2 down (default check)",
        &bed.agent,
    );

    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(true)
        .expect("SIGUSR2 to api2");
    let healed = Instant::now();
    let (_, took) = bed.wait_for_log(
        &format!("{api2} UP: "),
        0,
        healed,
        t.up_bound(),
        &t.explain_up(),
        |_| {},
    );
    assert_not_before(
        "api2's UP with the default timings",
        took,
        t.up_floor(),
        t,
        &bed.agent,
    );
}
