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
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lab::{
    Agent,
    bed::{Bed, new_lab},
    client::Conn,
};
use serde::Deserialize;

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
/// A DOWN line's reason mentions one of `words` (any case).
fn assert_reason(line: &str, words: &[&str], expected: &str) {
    let lower = line.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "expected {expected}, the line is {line:?}"
    );
}

fn assert_not_before(what: &str, took: Duration, floor: Duration, t: Timing, agent: &Agent) {
    assert!(
        took >= floor,
        "expected {what} no sooner than {floor:?} (rise {}, fall {}, interval {:?}, timeout {:?}), it came after {took:?}{}",
        t.rise,
        t.fall,
        t.interval,
        t.timeout,
        agent.diag()
    );
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

/// New connections must have reached only `allowed`.
fn assert_only(counts: &BTreeMap<String, usize>, allowed: &[&str], when: &str, agent: &Agent) {
    let stray: Vec<_> = counts
        .iter()
        .filter(|(b, _)| !allowed.contains(&b.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "{when}: expected new connections to reach only {allowed:?}, got {counts:?}{}",
        agent.diag()
    );
}

/// Waiting on the agent's log, which only these tests do, as methods of the
/// shared [`Bed`] like the rest of its steps.
trait LogWaits {
    fn lines_with(&self, needle: &str) -> Vec<String>;
    fn wait_for_log(
        &mut self,
        needle: &str,
        seen: usize,
        since: Instant,
        bound: Duration,
        explain: &str,
        meanwhile: impl FnMut(&Bed),
    ) -> (String, Duration);
    fn wait_down(&mut self, needle: &str, since: Instant, t: Timing) -> (String, Duration);
    fn wait_up(&mut self, needle: &str, since: Instant, t: Timing) -> (String, Duration);
    fn settle(&self);
}

impl LogWaits for Bed {
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
                    self.agent.diag()
                );
            }
            if since.elapsed() > bound {
                panic!(
                    "expected the agent to log {needle:?} within {bound:?} ({explain}); nothing after {:?}{}",
                    since.elapsed(),
                    self.agent.diag()
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
    /// The first line with `needle` (a DOWN), within `t`'s bound for DOWN.
    fn wait_down(&mut self, needle: &str, since: Instant, t: Timing) -> (String, Duration) {
        self.wait_for_log(needle, 0, since, t.down_bound(), &t.explain_down(), |_| {})
    }

    /// The first line with `needle` (an UP), within `t`'s bound for UP.
    fn wait_up(&mut self, needle: &str, since: Instant, t: Timing) -> (String, Duration) {
        self.wait_for_log(needle, 0, since, t.up_bound(), &t.explain_up(), |_| {})
    }

    fn settle(&self) {
        thread::sleep(Duration::from_millis(100));
    }
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
        bed.agent.diag()
    );
    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(false)
        .expect("SIGUSR1 to api2");
    let broke = Instant::now();
    let (line, took) = bed.wait_down(&down, broke, t);
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
        bed.agent.diag()
    );

    let up = format!("{api2} UP: ");
    bed.lab
        .apiserver("api2")
        .unwrap()
        .set_ready(true)
        .expect("SIGUSR2 to api2");
    let healed = Instant::now();
    let (_, took) = bed.wait_up(&up, healed, t);
    assert_not_before("api2's UP", took, t.up_floor(), t, &bed.agent);
    bed.settle();

    let counts = bed.spread(100);
    // A third of 100 on average; fewer than 10 is vanishingly unlikely with
    // equal weights, and would mean api2 came back with less than its share.
    let got = counts.get("api2").copied().unwrap_or(0);
    assert!(
        got >= 10,
        "expected api2 to get its share (about 33) of 100 new connections once UP, it got {got} ({counts:?}){}",
        bed.agent.diag()
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
    assert_reason(
        &line,
        &["refused", "connect"],
        "api3's DOWN reason to say the connection was refused",
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
        .replace_apiserver("api3", &["--hang"])
        .expect("replacing api3 with a hanging apiserver");
    let wedged = Instant::now();

    let (line, _) = bed.wait_down(&format!("{api3} DOWN: "), wedged, t);
    assert_reason(
        &line,
        &["timed out", "timeout"],
        "api3's DOWN reason to mention a timeout",
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

    let (line, took) = bed.wait_down(&format!("{closed} DOWN: "), started, t);
    assert_reason(
        &line,
        &["refused", "connect"],
        &format!("{closed}'s DOWN reason to say the connect was refused"),
    );
    // As long again for api1, which passes every TCP check.
    thread::sleep(took);
    let api1_down = bed.lines_with(&format!("{api1} DOWN"));
    assert!(
        api1_down.is_empty(),
        "expected {api1} (listening) to stay up under the TCP check, the agent logged {api1_down:#?}{}",
        bed.agent.diag()
    );
    assert!(
        bed.lines_with(ALL_DOWN).is_empty(),
        "expected no {ALL_DOWN:?} while {api1} is up{}",
        bed.agent.diag()
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
            bed.agent.diag()
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
    bed.wait_down(&format!("{} DOWN: ", names[1]), broke, t);
    let down_at = Instant::now();
    // Written on the change itself; a report tick at the latest.
    let bound = REPORT_INTERVAL + MARGIN;
    let (after, more_torn) =
        wait_for_status(&path, bound, |s| entry(s, &names[1]).is_some_and(|b| !b.up));
    torn.extend(more_torn);
    let after = after.unwrap_or_else(|e| {
        panic!(
            "reading the status after api2 went down: {e}{}",
            bed.agent.diag()
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
    bed.wait_down(ALL_DOWN, broke, t);
    for b in BACKENDS {
        let name = bed.name(b);
        assert!(
            !bed.lines_with(&format!("{name} DOWN: ")).is_empty(),
            "expected a DOWN line for {b} ({name}) by the time the agent says {ALL_DOWN:?}{}",
            bed.agent.diag()
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
            bed.agent.diag()
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
    bed.wait_down(&format!("{api2} DOWN: "), broke, t);
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
            bed.agent.diag()
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
    let (line, took) = bed.wait_down(&down, broke, t);
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
    let (_, took) = bed.wait_up(&format!("{api2} UP: "), healed, t);
    assert_not_before(
        "api2's UP with the default timings",
        took,
        t.up_floor(),
        t,
        &bed.agent,
    );
}
