//! `wrk` from the client namespace: run one load, parse what it printed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use lab::Netns;

/// The three loads of the issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// 64 keep-alive connections, one thread.
    KeepAlive,
    /// 64 connections, a new one for every request (`Connection: close`),
    /// as kubectl and controllers do when they start.
    Close,
    /// One keep-alive connection: latency without queueing.
    Single,
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Load::KeepAlive => "keep-alive",
            Load::Close => "close",
            Load::Single => "c=1",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Load::KeepAlive => &["-t1", "-c64"],
            Load::Close => &["-t1", "-c64", "-H", "Connection: close"],
            Load::Single => &["-t1", "-c1"],
        }
    }
}

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
}

/// Runs `wrk --latency` against `url` from `ns`, pinned to `cpu`.
pub fn run(ns: &Netns, cpu: usize, load: Load, duration: Duration, url: &str) -> Result<WrkResult> {
    let secs = format!("{}s", duration.as_secs().max(1));
    let cpu = cpu.to_string();
    let mut args = vec![
        "-c",
        cpu.as_str(),
        "wrk",
        "--latency",
        "-d",
        secs.as_str(),
        "--timeout",
        "2s",
    ];
    args.extend(load.args());
    args.push(url);
    let out = ns
        .exec("taskset", &args)
        .with_context(|| format!("wrk {} against {url}", load.name()))?;
    parse(&out).with_context(|| format!("parsing wrk output:\n{out}"))
}

pub fn parse(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut saw_rate = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = duration_us(v)?,
            ["99%", v] => r.p99_us = duration_us(v)?,
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            ["Requests/sec:", v] => {
                r.req_per_s = v.parse()?;
                saw_rate = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>()?,
            _ if line.starts_with("Socket errors:") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                for part in line["Socket errors:".len()..].split(',') {
                    if let Some(n) = part.split_whitespace().nth(1) {
                        r.errors += n.parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_rate {
        bail!("no Requests/sec line");
    }
    Ok(r)
}

/// wrk prints latencies as `512.00us`, `1.23ms` or `2.00s`.
fn duration_us(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown duration {v:?}")
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("duration {v:?}"))?
        * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 3s test @ http://10.77.3.11:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.37ms  356.13us   7.12ms   89.10%
    Req/Sec    27.10k     1.10k   28.64k    76.67%
  Latency Distribution
     50%    2.31ms
     75%    2.45ms
     90%    2.69ms
     99%    3.71ms
  81066 requests in 3.00s, 11.75MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  27005.21
Transfer/sec:      3.91MB
";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 81066);
        assert_eq!(r.errors, 6);
        assert!((r.p50_us - 2310.0).abs() < 1e-6, "{r:?}");
        assert!((r.p99_us - 3710.0).abs() < 1e-6, "{r:?}");
        assert!((r.req_per_s - 27005.21).abs() < 1e-6);
        assert!((duration_us("512.00us").unwrap() - 512.0).abs() < 1e-9);
    }
}
