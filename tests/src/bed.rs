//! A test bed for the end-to-end tests: a fresh lab, `xdplb` on lb1 serving
//! one VIP, and HTTPS clients in the client namespace. The balancing and
//! health tests drive the data plane through it the same way, so it lives
//! here once rather than in each test file.
//!
//! Everything here panics instead of returning errors: a test wants to stop
//! at the first surprise, with a message that says what was expected, what
//! happened, and (through [`Agent::diag`]) what the agent counted and logged.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::stats::ReasonTotals;
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    Agent, Host, Lab, LabOptions,
    apiserver::PORT,
    client::{self, Conn, Response},
    require_root,
};

/// A lab with xdplb on lb1 and a client runtime in the client namespace.
/// Fields drop in order: the agent stops (SIGTERM, clean detach) before the
/// client's connections close and the lab removes the namespaces.
pub struct Bed {
    pub agent: Agent,
    pub client: NsRuntime,
    /// The agent's arguments, to start it again.
    pub args: Vec<String>,
    /// Backend host → the address the agent was given for it (`--backend`).
    pub backends: BTreeMap<String, SocketAddrV4>,
    pub lab: Lab,
}

impl Bed {
    /// A fresh lab, xdplb on lb1 with `--vip <vip>` and a `--backend` per
    /// entry of `backends`, plus `extra` flags. A backend is a host name,
    /// optionally with another port and a weight: `"api1"`, `"api3:6444"`,
    /// `"api1@2"`.
    pub fn start(backends: &[&str], extra: &[&str]) -> Bed {
        Bed::start_in(new_lab(), backends, extra)
    }

    /// [`Bed::start`] in a lab the test has prepared (files in its run
    /// directory, say).
    pub fn start_in(lab: Lab, backends: &[&str], extra: &[&str]) -> Bed {
        let mut args = vec!["--vip".to_owned(), lab.vip().to_string()];
        let mut addrs = BTreeMap::new();
        for b in backends {
            let (host, weight) = match b.split_once('@') {
                Some((h, w)) => (h, format!("@{w}")),
                None => (*b, String::new()),
            };
            let (host, port) = match host.split_once(':') {
                Some((h, p)) => (h, p.parse().expect("a port in the backend spec")),
                None => (host, PORT),
            };
            let addr = SocketAddrV4::new(lab.host(host).ip, port);
            args.push("--backend".into());
            args.push(format!("{addr}{weight}"));
            addrs.insert(host.to_owned(), addr);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Bed::launch(lab, args, addrs)
    }

    /// xdplb on lb1 with exactly `args` (a `--config` file, say); the bed
    /// then knows no backends by host (see [`Bed::name`]).
    pub fn with_args(lab: Lab, args: Vec<String>) -> Bed {
        Bed::launch(lab, args, BTreeMap::new())
    }

    fn launch(lab: Lab, args: Vec<String>, backends: BTreeMap<String, SocketAddrV4>) -> Bed {
        let agent = start_agent(&lab, &args);
        let client = NsRuntime::new(lab.host("client"));
        Bed {
            agent,
            client,
            args,
            backends,
            lab,
        }
    }

    /// Starts xdplb on lb1 again with the same arguments, after the test
    /// killed or stopped the previous one.
    pub fn restart_agent(&mut self) {
        self.agent = start_agent(&self.lab, &self.args);
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((self.lab.vip(), PORT))
    }

    /// The name the agent gives a backend: in single-service mode (`--vip`,
    /// `--backend`) there is no way to name one, so config.rs names it by
    /// its address (`BackendConfig::name`, "by default the address").
    pub fn name(&self, host: &str) -> String {
        self.backends
            .get(host)
            .unwrap_or_else(|| panic!("{host} is not a backend of this bed"))
            .to_string()
    }

    pub fn reasons(&self) -> ReasonTotals {
        self.agent
            .reasons()
            .unwrap_or_else(|e| panic!("reading REASON_STATS: {e:#}{}", self.agent.diag()))
    }

    /// `n` fresh HTTPS connections to the VIP, one `/version` each; every
    /// one must answer 200. Returns how many each backend answered.
    pub fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let vip = self.vip();
        let results = self.client.run(fresh_connections(vip, n, 10));
        tally(&results, n, &self.agent)
    }

    /// Opens a keep-alive connection through the VIP and asks `/version`.
    pub fn open(&self) -> anyhow::Result<(Conn, Response)> {
        let vip = self.vip();
        self.client.run(async move {
            let mut conn = Conn::open(vip).await?;
            let r = conn.get("/version").await?;
            Ok((conn, r))
        })
    }

    /// One GET on a held connection (the connection goes in and comes back).
    pub fn get(&self, conn: Conn, path: &'static str) -> (Conn, anyhow::Result<Response>) {
        self.client.run(async move {
            let mut conn = conn;
            let r = conn.get(path).await;
            (conn, r)
        })
    }

    /// Opens connections through the VIP until one has landed on each of
    /// `wanted` (Maglev sends each new one to any backend); the others are
    /// closed. At most 100 tries or 30 s.
    pub fn hold(&self, wanted: &[&str]) -> BTreeMap<String, Held> {
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
            self.agent.diag()
        );
        held
    }

    /// One `GET /version` on each held connection: each must still be
    /// answered 200 by the backend it landed on.
    pub fn check_held(&self, held: &mut BTreeMap<String, Held>, when: &str) {
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
                    self.agent.diag()
                ),
                Err(e) => panic!(
                    "{when}: GET {} on the connection held to {} failed: {e:#}{}",
                    h.gets,
                    h.backend,
                    self.agent.diag()
                ),
            }
        }
    }
}

/// A keep-alive connection through the VIP that landed on `backend`
/// ([`Bed::hold`]).
pub struct Held {
    pub backend: String,
    /// `None` only while a GET is in flight on it ([`Bed::check_held`]).
    pub conn: Option<Conn>,
    /// GETs sent on it so far.
    pub gets: usize,
}

/// A fresh lab with the default hosts and apiservers; the tests need root.
pub fn new_lab() -> Lab {
    require_root();
    Lab::start(LabOptions::default()).expect("starting the lab")
}

fn start_agent(lab: &Lab, args: &[String]) -> Agent {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.start_agent("lb1", &refs)
        .unwrap_or_else(|e| panic!("starting xdplb on lb1 with {args:?}: {e:#}"))
}

/// A tokio runtime whose worker threads were spawned inside a lab
/// namespace (threads inherit their creator's namespace), so sockets that
/// tasks spawned on it open live there, and outlive any one call: a test can
/// hold connections while it restarts the agent, sends SIGHUP, or takes
/// backends down and brings them back.
pub struct NsRuntime(tokio::runtime::Runtime);

impl NsRuntime {
    pub fn new(host: &Host) -> NsRuntime {
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
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(f)
    }

    /// Runs `f` on the runtime's workers (in the namespace) and waits for it.
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .block_on(self.0.spawn(f))
            .expect("a client task panicked")
    }
}

/// `n` fresh HTTPS connections to `addr`, one `GET /version` each, at most
/// `parallel` at a time. Gives up launching more after 10 failures, so a
/// broken data plane fails the test in seconds rather than minutes.
pub async fn fresh_connections(
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
pub fn tally(
    results: &[Result<Response, String>],
    n: usize,
    agent: &Agent,
) -> BTreeMap<String, usize> {
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
        agent.diag()
    );
    counts
}
