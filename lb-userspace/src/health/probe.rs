//! One health check of one backend: TCP connect, or an HTTP(S) GET whose
//! status must match. Every step is bounded by the check's timeout, and a
//! backend that accepts and never answers, resets, or talks garbage is a
//! failure with a reason, never a stuck task.

use std::{
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::state::Outcome;

#[derive(Clone)]
pub enum Probe {
    Tcp,
    Http {
        path: String,
        expect: u16,
    },
    Https {
        path: String,
        expect: u16,
        tls: Arc<rustls::ClientConfig>,
        sni: Option<String>,
    },
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp => write!(f, "tcp"),
            Probe::Http { path, expect } => write!(f, "http:{path} expect {expect}"),
            Probe::Https {
                path, expect, sni, ..
            } => write!(f, "https:{path} expect {expect} sni {sni:?}"),
        }
    }
}

/// Runs one check against `addr`, all of it within `timeout`.
pub async fn run(probe: &Probe, addr: SocketAddrV4, timeout: Duration) -> Outcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, check(probe, addr)).await {
        Ok(Ok(())) => Outcome::Ok {
            latency: start.elapsed(),
        },
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) => Outcome::Failed(format!(
            "{} timed out after {} ms",
            what(probe),
            timeout.as_millis()
        )),
    }
}

fn what(probe: &Probe) -> String {
    match probe {
        Probe::Tcp => "TCP connect".into(),
        Probe::Http { path, .. } | Probe::Https { path, .. } => path.clone(),
    }
}

async fn check(probe: &Probe, addr: SocketAddrV4) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path, expect } => http_status(tcp, addr, path, *expect).await,
        Probe::Https {
            path,
            expect,
            tls,
            sni,
        } => {
            let name = match sni {
                Some(host) => {
                    ServerName::try_from(host.clone()).map_err(|e| format!("SNI {host:?}: {e}"))?
                }
                None => ServerName::IpAddress(std::net::IpAddr::V4(*addr.ip()).into()),
            };
            let stream = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http_status(stream, addr, path, *expect).await
        }
    }
}

/// Sends `GET path` and compares the status code; reads at most the
/// status line (bounded), so a garbage-spewing backend cannot stall us.
async fn http_status<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddrV4,
    path: &str,
    expect: u16,
) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xdplb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{path}: sending request: {e}"))?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    while !buf[..len].windows(2).any(|w| w == b"\r\n") {
        if len == buf.len() {
            return Err(format!(
                "{path}: no HTTP status line in the first {len} bytes"
            ));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("{path}: reading response: {e}"))?;
        if n == 0 {
            return Err(format!("{path}: connection closed before a response"));
        }
        len += n;
    }
    let status =
        parse_status(&buf[..len]).ok_or_else(|| format!("{path}: not an HTTP response"))?;
    if status != expect {
        return Err(format!("{path} returned {status}"));
    }
    Ok(())
}

/// The status code of an `HTTP/1.x NNN ...` status line.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 500 Internal Server Error\r\nx"),
            Some(500)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20\r\n"), None);
        assert_eq!(parse_status(b"\xff\xfe\r\n"), None);
    }

    /// Real sockets on loopback: a server that accepts and never answers,
    /// one that resets, one that talks garbage, one that answers 500.
    #[tokio::test]
    async fn misbehaving_backends_fail_with_a_reason_within_the_timeout() {
        use tokio::net::TcpListener;
        async fn serve(reply: &'static [u8], close: bool) -> SocketAddrV4 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = match l.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                _ => unreachable!(),
            };
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(reply).await;
                    if close {
                        drop(s);
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(s);
                        });
                    }
                }
            });
            addr
        }
        let http = |p: &str| Probe::Http {
            path: p.into(),
            expect: 200,
        };
        let t = Duration::from_millis(300);

        let ok = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        assert!(matches!(
            run(&http("/readyz"), ok, t).await,
            Outcome::Ok { .. }
        ));

        let err500 = serve(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", true).await;
        assert_eq!(
            run(&http("/readyz"), err500, t).await,
            Outcome::Failed("/readyz returned 500".into())
        );

        let silent = serve(b"", false).await;
        let start = Instant::now();
        assert_eq!(
            run(&http("/readyz"), silent, t).await,
            Outcome::Failed("/readyz timed out after 300 ms".into())
        );
        assert!(start.elapsed() < Duration::from_secs(1));

        let garbage = serve(&[0xffu8; 600], true).await;
        assert!(
            matches!(run(&http("/readyz"), garbage, t).await, Outcome::Failed(why) if why.contains("no HTTP status line"))
        );

        let closes = serve(b"", true).await;
        assert!(
            matches!(run(&http("/readyz"), closes, t).await, Outcome::Failed(why) if why.contains("closed"))
        );

        // A port nothing listens on: refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        drop(l);
        assert!(
            matches!(run(&Probe::Tcp, closed, t).await, Outcome::Failed(why) if why.starts_with("connect"))
        );
        assert!(matches!(run(&Probe::Tcp, ok, t).await, Outcome::Ok { .. }));
    }
}
