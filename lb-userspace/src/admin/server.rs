//! The HTTP side of the admin endpoint (axum): routes, the token check,
//! and the round trips to the agent's loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{Path, Request as HttpRequest, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    time::timeout,
};
use tracing::{error, info, warn};

use super::{Outcome, Reply, Request, Status, metrics, page};

/// How long a page waits for a fresh snapshot before it shows the last
/// one published (the loop may be busy, e.g. adding a VIP).
const FRESH_WAIT: Duration = Duration::from_secs(2);
/// How long a command waits for its outcome.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

type Ask = Arc<dyn Fn(Request) -> bool + Send + Sync>;

#[derive(Clone)]
struct Shared {
    status: watch::Receiver<Arc<Status>>,
    ask: Ask,
    token: Option<Arc<str>>,
}

/// Binds the endpoint's socket: done before the data plane is loaded, so a
/// taken port stops the agent before it touches the kernel.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "the admin endpoint cannot listen on {addr} (is another xdplb running on this node? \
             choose another with --admin ADDR:PORT, or --admin off)"
        )
    })
}

/// Serves the endpoint on `listener` until the runtime ends: pages from the
/// snapshots in `status`, requests to the loop through `ask` (false: the
/// loop is gone).
pub fn spawn<F>(
    listener: TcpListener,
    token: Option<String>,
    status: watch::Receiver<Arc<Status>>,
    ask: F,
) where
    F: Fn(Request) -> bool + Send + Sync + 'static,
{
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        info!("admin endpoint on http://{addr}/ (status page, /status, /metrics, commands)");
        if !addr.ip().is_loopback() && token.is_none() {
            warn!(
                "the admin endpoint on {addr} takes commands (drain, reload) from anyone who can \
                 reach it: set --admin-token"
            );
        }
    }
    let shared = Shared {
        status,
        ask: Arc::new(ask),
        token: token.map(Arc::from),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/reload", post(reload))
        .route("/backends/{addr}/{action}", post(backend))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("the admin endpoint stopped: {e}");
        }
    });
}

/// The token (when there is one) on every request, and no command from a
/// browser: a page elsewhere must not reload or drain through the
/// operator's browser (a cross-site POST carries `Origin`; our clients
/// send none).
async fn guard(State(s): State<Shared>, req: HttpRequest, next: Next) -> Response {
    if let Some(token) = &s.token
        && !authorized(req.headers(), token)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"xdplb\"")],
            "this xdplb admin endpoint needs its token: Authorization: Bearer TOKEN, \
             or basic auth with TOKEN as the password\n",
        )
            .into_response();
    }
    if req.method() == axum::http::Method::POST && req.headers().contains_key(header::ORIGIN) {
        return outcome(
            StatusCode::FORBIDDEN,
            false,
            "commands are not taken from web pages; use xdplb reload | backend drain|enable".into(),
        );
    }
    next.run(req).await
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(t) = value.strip_prefix("Bearer ") {
        return same(t.trim().as_bytes(), token.as_bytes());
    }
    if let Some(b64) = value.strip_prefix("Basic ")
        && let Some(decoded) = base64_decode(b64.trim())
        && let Some(pos) = decoded.iter().position(|&c| c == b':')
    {
        return same(&decoded[pos + 1..], token.as_bytes());
    }
    false
}

/// Compares in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 (RFC 4648 §4, with or without padding), for basic auth.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

impl Shared {
    /// A snapshot built now by the loop, or the last one it published if
    /// it does not answer in time.
    async fn fresh(&self) -> Arc<Status> {
        let (tx, rx) = oneshot::channel();
        if (self.ask)(Request::Status(tx))
            && let Ok(Ok(s)) = timeout(FRESH_WAIT, rx).await
        {
            return s;
        }
        self.status.borrow().clone()
    }

    async fn command(&self, make: impl FnOnce(Reply) -> Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if !(self.ask)(make(tx)) {
            return outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                "the agent is shutting down".into(),
            );
        }
        match timeout(COMMAND_WAIT, rx).await {
            Ok(Ok(Ok(message))) => outcome(StatusCode::OK, true, message),
            Ok(Ok(Err(message))) => outcome(StatusCode::UNPROCESSABLE_ENTITY, false, message),
            Ok(Err(_)) => outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                "the agent stopped before it answered".into(),
            ),
            Err(_) => outcome(
                StatusCode::GATEWAY_TIMEOUT,
                false,
                format!("the agent did not answer within {COMMAND_WAIT:?}"),
            ),
        }
    }
}

fn outcome(code: StatusCode, ok: bool, message: String) -> Response {
    (code, Json(Outcome { ok, message })).into_response()
}

async fn index(State(s): State<Shared>) -> Html<String> {
    Html(page::render(&*s.fresh().await))
}

async fn status_json(State(s): State<Shared>) -> Json<Status> {
    Json(Status::clone(&*s.fresh().await))
}

async fn metrics_text(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = metrics::render(s.fresh().await, openmetrics);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn reload(State(s): State<Shared>) -> Response {
    s.command(Request::Reload).await
}

async fn backend(
    State(s): State<Shared>,
    Path((addr, action)): Path<(String, String)>,
) -> Response {
    let Ok(addr) = addr.parse() else {
        return outcome(
            StatusCode::BAD_REQUEST,
            false,
            format!("{addr:?} is not a backend address (IP:PORT)"),
        );
    };
    let drained = match action.as_str() {
        "drain" => true,
        "enable" => false,
        _ => return not_found().await.into_response(),
    };
    s.command(|reply| Request::Drain(addr, drained, reply))
        .await
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not here; try / (status page), /status, /metrics, POST /reload, \
         POST /backends/IP:PORT/drain|enable\n",
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn base64_as_browsers_send_it() {
        assert_eq!(
            base64_decode("YWRtaW46czNjcmV0").as_deref(),
            Some(&b"admin:s3cret"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("*"), None);
    }

    #[test]
    fn bearer_or_basic_with_the_token_as_password() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            authorized(&h, "s3cret")
        };
        assert!(with("Bearer s3cret"));
        assert!(with("Basic YWRtaW46czNjcmV0"), "admin:s3cret");
        assert!(!with("Bearer s3cre"));
        assert!(!with("Basic YWRtaW46bm9wZQ=="), "admin:nope");
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
