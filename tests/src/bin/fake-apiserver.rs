//! A fake kube-apiserver for the lab: one runs in each backend namespace.
//!
//! It answers the few endpoints the load balancer and the tests care about
//! (`/livez`, `/readyz`, `/healthz`, `/version`, `/debug/peer`), tags every
//! response with `x-backend: <name>` so a test can tell which backend
//! answered, and lets a test flip its readiness at run time with SIGUSR1
//! (fail) and SIGUSR2 (recover). `--hang` turns it into a wedged server that
//! accepts connections and then says nothing at all.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_rustls::TlsAcceptor;

/// What the real apiserver's `/readyz` says when a check fails (shape only).
const UNREADY_BODY: &str = "[-]etcd failed: reason withheld\nreadyz check failed\n";
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const APPLICATION_JSON: &str = "application/json";

#[derive(Parser, Debug)]
#[command(about = "A fake kube-apiserver for the xdplb lab")]
struct Args {
    /// Backend name: reported as gitVersion by /version and in `x-backend`.
    #[arg(long)]
    name: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Start with /readyz failing (SIGUSR2 makes it healthy).
    #[arg(long)]
    unhealthy: bool,
    /// Accept connections and never read or write: a wedged apiserver.
    #[arg(long)]
    hang: bool,
    /// Serve plain HTTP instead of TLS (for benchmarks).
    #[arg(long)]
    plain: bool,
}

/// State shared by every connection.
struct State {
    name: HeaderValue,
    healthy: AtomicBool,
    /// `/version` never changes, so it is rendered once.
    version_body: Bytes,
}

/// The fields of the real apiserver's `/version`, in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionInfo<'a> {
    major: &'a str,
    minor: &'a str,
    git_version: &'a str,
    git_commit: &'a str,
    git_tree_state: &'a str,
    build_date: &'a str,
    go_version: &'a str,
    compiler: &'a str,
    platform: &'a str,
}

/// Debug logging goes to stderr only when `FAKE_APISERVER_DEBUG` is set:
/// failed handshakes and dropped connections are routine in the lab (health
/// probes, killed clients) and would otherwise drown the test output.
fn debug_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("FAKE_APISERVER_DEBUG").is_some())
}

macro_rules! debug {
    ($($arg:tt)*) => {
        if debug_enabled() {
            eprintln!("fake-apiserver: {}", format_args!($($arg)*));
        }
    };
}

fn main() -> ExitCode {
    let args = Args::parse();
    let name = args.name.clone();
    match run_runtime(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-apiserver {name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Several instances share a 2-CPU box, so the runtime is kept small; two
/// workers still let a benchmark use both CPUs.
fn run_runtime(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(run(args));
    // Held (`--hang`) and idle keep-alive connections never finish on their
    // own; don't let them delay the exit.
    runtime.shutdown_background();
    result
}

async fn run(args: Args) -> Result<()> {
    raise_nofile_limit();
    let state = Arc::new(State {
        name: HeaderValue::from_str(&args.name)
            .with_context(|| format!("--name {:?} is not a valid header value", args.name))?,
        healthy: AtomicBool::new(!args.unhealthy),
        version_body: version_body(&args.name)?,
    });
    let tls = if args.plain {
        None
    } else {
        Some(tls_acceptor(&args.name, args.listen)?)
    };

    // Signal handlers go in before readiness is announced: SIGUSR1's default
    // action is to terminate, and a harness may send it as soon as it sees
    // the "listening" line.
    let shutdown = shutdown_signal()?;
    spawn_health_toggle(Arc::clone(&state))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind {}", args.listen))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", args.listen))?;
    announce(&args.name, local, args.plain);

    tokio::select! {
        () = shutdown => {
            debug!("{}: shutting down", args.name);
            Ok(())
        }
        () = accept_loop(listener, tls, state, args.hang) => Ok(()),
    }
}

/// The one line harnesses wait for before they start a test.
fn announce(name: &str, addr: SocketAddr, plain: bool) {
    let mode = if plain { "plain" } else { "tls" };
    let mut out = std::io::stdout().lock();
    // A harness that closed our stdout is not a reason to stop serving.
    if let Err(e) = writeln!(out, "fake-apiserver {name} listening on {addr} ({mode})")
        .and_then(|()| out.flush())
    {
        debug!("cannot write the readiness line: {e}");
    }
}

fn version_body(name: &str) -> Result<Bytes> {
    let info = VersionInfo {
        major: "1",
        minor: "31",
        git_version: name,
        git_commit: "0000000000000000000000000000000000000000",
        git_tree_state: "clean",
        build_date: "2026-01-01T00:00:00Z",
        go_version: "go1.22.0",
        compiler: "gc",
        platform: "linux/amd64",
    };
    Ok(Bytes::from(
        serde_json::to_vec(&info).context("cannot render /version")?,
    ))
}

/// A self-signed certificate for `name`, `localhost` and the listen IP.
/// The ring provider is named explicitly: the lab never installs a process
/// default, and the workspace builds rustls without aws-lc.
fn tls_acceptor(name: &str, listen: SocketAddr) -> Result<TlsAcceptor> {
    let mut sans = vec![name.to_string(), "localhost".to_string()];
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    let mut params = rcgen::CertificateParams::new(sans).context("bad certificate names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("bad TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::from(key))
        .context("cannot use the generated certificate")?;
    // Only HTTP/1.1 is served; saying so lets h2-capable clients fall back.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// SIGUSR1 makes /readyz fail, SIGUSR2 makes it pass again.
fn spawn_health_toggle(state: Arc<State>) -> Result<()> {
    let mut usr1 = install(SignalKind::user_defined1(), "SIGUSR1")?;
    let mut usr2 = install(SignalKind::user_defined2(), "SIGUSR2")?;
    tokio::spawn(async move {
        loop {
            let healthy = tokio::select! {
                Some(()) = usr1.recv() => false,
                Some(()) = usr2.recv() => true,
                else => break,
            };
            state.healthy.store(healthy, Ordering::Relaxed);
            debug!(
                "readyz is now {}",
                if healthy { "passing" } else { "failing" }
            );
        }
    });
    Ok(())
}

fn install(kind: SignalKind, what: &str) -> Result<Signal> {
    signal(kind).with_context(|| format!("cannot handle {what}"))
}

/// Benchmarks open many connections and `--hang` keeps every one it gets, so
/// use the hard limit on open files rather than the (often 1024) soft one.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if !ok {
        debug!(
            "cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Accepts forever; each connection lives in its own task so one slow or
/// broken client never holds up another.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    hang: bool,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Usually transient (ECONNABORTED, EMFILE); back off a little
                // so a persistent error does not spin a CPU.
                debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if hang {
            tokio::spawn(hold(tcp, peer));
            continue;
        }
        // Small request/response exchanges: don't let Nagle delay them.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("{peer}: cannot set TCP_NODELAY: {e}");
        }
        let state = Arc::clone(&state);
        match tls.clone() {
            Some(acceptor) => tokio::spawn(serve_tls(acceptor, tcp, peer, state)),
            None => tokio::spawn(serve_http(tcp, peer, state)),
        };
    }
}

/// `--hang`: keep the socket open and never touch it. The kernel still
/// completes the handshake and buffers what the client sends, which is
/// exactly what a wedged apiserver looks like from outside.
async fn hold(tcp: TcpStream, peer: SocketAddr) {
    debug!("{peer}: holding connection");
    let _held = tcp;
    std::future::pending::<()>().await;
}

async fn serve_tls(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, state: Arc<State>) {
    match acceptor.accept(tcp).await {
        Ok(stream) => serve_http(stream, peer, state).await,
        Err(e) => debug!("{peer}: TLS handshake failed: {e}"),
    }
}

/// HTTP/1.1 with keep-alive, so tests can check that the balancer keeps a
/// client's connection on one backend.
async fn serve_http<S>(io: S, peer: SocketAddr, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&state, peer, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    if let Err(e) = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        debug!("{peer}: connection ended with an error: {e}");
    }
}

fn respond(state: &State, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // HEAD is answered like GET; hyper leaves the body out.
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = match req.uri().path() {
        "/livez" | "/healthz" if readable => {
            (StatusCode::OK, TEXT_PLAIN, Bytes::from_static(b"ok"))
        }
        "/readyz" if readable => readyz(state),
        "/version" if readable => (StatusCode::OK, APPLICATION_JSON, state.version_body.clone()),
        "/debug/peer" if readable => {
            let text = format!("{}:{}", peer.ip(), peer.port());
            (StatusCode::OK, TEXT_PLAIN, Bytes::from(text))
        }
        _ => (
            StatusCode::NOT_FOUND,
            TEXT_PLAIN,
            Bytes::from_static(b"not found"),
        ),
    };
    build_response(state, status, content_type, body)
}

fn readyz(state: &State) -> (StatusCode, &'static str, Bytes) {
    if state.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, TEXT_PLAIN, Bytes::from_static(b"ok"))
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT_PLAIN,
            Bytes::from_static(UNREADY_BODY.as_bytes()),
        )
    }
}

fn build_response(
    state: &State,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // hyper would add this for a fixed body anyway; set it so it is also
    // there on HEAD and never depends on hyper's choice.
    headers.insert(CONTENT_LENGTH, length);
    headers.insert("x-backend", state.name.clone());
    response
}
