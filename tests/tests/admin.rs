//! The admin endpoint end to end: xdplb on lb1 with `--admin` on lb1's own
//! address; the client namespace scrapes `/metrics`, reads `/status`,
//! runs `xdplb status | backend drain|enable | reload` (the real binary,
//! in the namespace), and loads the status page in headless Chromium —
//! while real HTTPS connections go through the VIP and a backend breaks.
//!
//! Every wait is bounded; commands run under `timeout`.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab::{
    Host, Lab,
    apiserver::PORT,
    bed::{Bed, new_lab},
    netns,
};
use lb_userspace::admin::Status;

const BACKENDS: [&str; 3] = ["api1", "api2", "api3"];
const ADMIN_PORT: u16 = 9640;
/// Fast checks, so a broken backend is DOWN within seconds.
const CHECKS: [&str; 8] = [
    "--check-interval",
    "500ms",
    "--check-timeout",
    "300ms",
    "--rise",
    "2",
    "--fall",
    "3",
];
/// From a backend breaking to its DOWN, at worst (health.rs's bound:
/// fall × interval + timeout + interval, and a margin for a loaded machine).
const DOWN_BOUND: Duration = Duration::from_millis(500 * 3 + 300 + 500 + 2000);
/// Where the last status page screenshot is copied for people to look at.
const SCREENSHOT_COPY: &str = "/tmp/xdplb-status.png";

/// The admin endpoint on lb1's own address.
fn admin_of(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.host("lb1").ip, ADMIN_PORT))
}

/// xdplb on lb1 for the lab's three apiservers with fast checks, the admin
/// endpoint on lb1's address, and `extra` flags.
fn start(extra: &[&str]) -> (Bed, SocketAddr) {
    let lab = new_lab();
    let admin = admin_of(&lab).to_string();
    let mut args = vec!["--admin", admin.as_str()];
    args.extend(CHECKS);
    args.extend(extra);
    let bed = Bed::start_in(lab, &BACKENDS, &args);
    let addr = admin_of(&bed.lab);
    (bed, addr)
}

/// One HTTP/1.0 request from `host`'s namespace (so the answer ends with
/// the connection): the status code and the body.
fn http(
    host: &Host,
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
) -> Result<(u16, String), String> {
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for h in headers {
        request += &format!("{h}\r\n");
    }
    request += "\r\n";
    host.ns
        .run(move || -> Result<(u16, String), String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(request.as_bytes())
                .map_err(|e| format!("sending to {addr}: {e}"))?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)
                .map_err(|e| format!("reading from {addr}: {e}"))?;
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = raw
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("no HTTP head in {raw:?}"))?;
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("no status in {head:?}"))?;
            Ok((code, body.to_owned()))
        })
        .map_err(|e| format!("{e:#}"))?
}

/// `GET path`, which must answer 200.
fn get(bed: &Bed, addr: SocketAddr, path: &str) -> String {
    match http(bed.lab.host("client"), "GET", addr, path, &[]) {
        Ok((200, body)) => body,
        Ok((code, body)) => panic!(
            "expected 200 from GET {addr}{path}, got {code}: {body}{}",
            bed.agent.diag()
        ),
        Err(e) => panic!("GET {addr}{path}: {e}{}", bed.agent.diag()),
    }
}

fn status(bed: &Bed, addr: SocketAddr) -> Status {
    let body = get(bed, addr, "/status");
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/status is not the status JSON ({e}): {body}"))
}

/// Polls `/status` every 100 ms until `ok` holds, at most `limit`.
fn wait_status(
    bed: &Bed,
    addr: SocketAddr,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(bed, addr);
        if ok(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {what} within {limit:?}; /status says {s:#?}{}",
                bed.agent.diag()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the one sample of `name` whose labels include all of
/// `labels` (Prometheus text: `name{k="v",…} value`).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name
            || !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        assert!(
            found.is_none(),
            "more than one {name} sample with {labels:?}:\n{metrics}"
        );
        found = value.parse().ok();
    }
    found
}

fn must(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(metrics, name, labels)
        .unwrap_or_else(|| panic!("no {name} sample with {labels:?} in /metrics:\n{metrics}"))
}

/// `xdplb ARGS` run in `host`'s namespace, under `timeout 60`.
fn xdplb(host: &Host, args: &[&str]) -> Output {
    let bin = lab::bins::path("xdplb").expect("the xdplb binary");
    netns::command_in(&host.ns.name, "timeout")
        .arg("60")
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running xdplb {args:?} in {}: {e}", host.name))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn metrics_status_and_the_status_command_show_the_lab() {
    let (bed, admin) = start(&["--vrid", "51", "--state", "master"]);
    let lab = &bed.lab;
    wait_status(
        &bed,
        admin,
        Duration::from_secs(10),
        "lb1 to be VRRP master",
        |s| s.role == "master" && s.vrrp.iter().any(|v| v.state == "master"),
    );

    // /status matches the lab: one service on the VIP, three backends up.
    let s = status(&bed, admin);
    assert_eq!(s.services.len(), 1, "{s:#?}");
    let svc = &s.services[0];
    assert_eq!(
        (svc.vip.as_str(), svc.port),
        (lab.vip().to_string().as_str(), PORT)
    );
    let mut addrs: Vec<&str> = svc.backends.iter().map(|b| b.address.as_str()).collect();
    addrs.sort_unstable();
    let mut want: Vec<String> = bed.backends.values().map(|a| a.to_string()).collect();
    want.sort_unstable();
    assert_eq!(addrs, want, "/status backends vs the lab's");
    for b in &svc.backends {
        assert!(b.up && b.state == "up", "expected {} up: {b:?}", b.address);
    }
    assert_eq!(s.vrrp.len(), 1);
    assert_eq!(s.vrrp[0].vrid, 51);

    // Counters move by at least the traffic sent.
    let before = get(&bed, admin, "/metrics");
    let n = 30;
    let counts = bed.spread(n);
    let after = get(&bed, admin, "/metrics");
    let svc_labels = [("service", svc.name.as_str())];
    let grew = |name: &str, labels: &[(&str, &str)]| {
        must(&after, name, labels) - sample(&before, name, labels).unwrap_or(0.0)
    };
    assert!(
        grew("xdplb_service_connections_total", &svc_labels) >= n as f64,
        "expected xdplb_service_connections_total to grow by at least {n}"
    );
    assert!(grew("xdplb_service_packets_total", &svc_labels) >= 3.0 * n as f64);
    assert!(grew("xdplb_service_bytes_total", &svc_labels) >= 300.0 * n as f64);
    for (host, addr) in &bed.backends {
        let a = addr.to_string();
        let labels = [("address", a.as_str())];
        let answered = counts.get(host).copied().unwrap_or(0) as f64;
        let conns = grew("xdplb_backend_connections_total", &labels);
        assert!(
            conns >= answered,
            "{host} answered {answered} connections, its xdplb_backend_connections_total grew by {conns}"
        );
        assert_eq!(must(&after, "xdplb_backend_up", &labels), 1.0);
        assert!(must(&after, "xdplb_backend_checks_total", &labels) >= 1.0);
        assert!(sample(&after, "xdplb_backend_check_duration_seconds", &labels).is_some());
        assert_eq!(
            must(&after, "xdplb_backend_check_failures_total", &labels),
            0.0
        );
    }
    let forwarded = grew(
        "xdplb_dataplane_packets_total",
        &[("verdict", "tx"), ("reason", "tx_forward")],
    ) + grew(
        "xdplb_dataplane_packets_total",
        &[("verdict", "redirect"), ("reason", "redirect_forward")],
    );
    assert!(
        forwarded >= 3.0 * n as f64,
        "{n} connections forwarded only {forwarded} packets per /metrics"
    );
    assert!(must(&after, "xdplb_flow_table_max_entries", &[]) >= 1024.0);
    // The VRRP series, keepalived-exporter style.
    let vrrp = [("vrid", "51")];
    assert_eq!(must(&after, "xdplb_vrrp_state", &vrrp), 2.0, "MASTER is 2");
    assert!(must(&after, "xdplb_vrrp_advert_sent_total", &vrrp) >= 1.0);
    assert!(sample(&after, "xdplb_vrrp_advert_rcvd_total", &vrrp).is_some());
    assert_eq!(must(&after, "xdplb_vrrp_priority", &vrrp), 100.0);
    assert_eq!(must(&after, "xdplb_vrrp_effective_priority", &vrrp), 100.0);
    assert!(
        sample(
            &after,
            "xdplb_vrrp_rejects_total",
            &[("vrid", "51"), ("reason", "bad_ttl")]
        )
        .is_some()
    );
    assert!(after.contains("# HELP xdplb_backend_up "), "help texts");

    // `xdplb status` from the client namespace.
    let out = xdplb(
        lab.host("client"),
        &["status", "--admin", &admin.to_string()],
    );
    let table = text(&out.stdout);
    assert!(
        out.status.success(),
        "xdplb status failed: {}",
        text(&out.stderr)
    );
    println!("xdplb status:\n{table}");
    assert!(table.contains(": MASTER, up "), "{table}");
    assert!(table.contains("VRRP "), "{table}");
    assert!(table.contains("(vrid 51): MASTER, priority 100"), "{table}");
    assert!(
        table.contains(&format!("{}:{PORT}/tcp", lab.vip())),
        "{table}"
    );
    assert!(table.contains("flows: "), "{table}");
    for addr in bed.backends.values() {
        let row = table
            .lines()
            .find(|l| l.contains(&format!(" {addr} ")))
            .unwrap_or_else(|| panic!("no row for {addr} in:\n{table}"));
        assert!(row.contains(" UP "), "{addr} not UP: {row}");
    }
    let json = xdplb(
        lab.host("client"),
        &["status", "--json", "--admin", &admin.to_string()],
    );
    serde_json::from_slice::<Status>(&json.stdout)
        .unwrap_or_else(|e| panic!("xdplb status --json is not the status ({e})"));

    // Reachable where bound, and nowhere else: not on lb1's loopback, not
    // on the VIP (which is on the same interface).
    let refused = |host: &str, addr: SocketAddr| {
        let r = http(lab.host(host), "GET", addr, "/status", &[]);
        assert!(
            r.is_err(),
            "expected nothing to answer on {addr} from {host}, got {r:?}"
        );
    };
    refused("lb1", SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)));
    refused("client", SocketAddr::from((lab.vip(), ADMIN_PORT)));
    // An address given with --admin must be had: a second agent asking for
    // the taken one stops before it touches the kernel, saying why.
    // lb2's pin directory: unused here, and the lab removes it.
    let pins = lab.pin_dir("lb2");
    let vip = lab.vip().to_string();
    let backend = bed.backends["api1"].to_string();
    let second = xdplb(
        lab.host("lb1"),
        &[
            "--iface",
            "eth0",
            "--vip",
            &vip,
            "--backend",
            &backend,
            "--admin",
            &admin.to_string(),
            "--pin-dir",
            &pins.display().to_string(),
        ],
    );
    assert!(
        !second.status.success()
            && text(&second.stderr)
                .contains(&format!("the admin endpoint cannot listen on {admin}")),
        "expected a second agent with the same --admin to refuse to start, got {:?}: {}",
        second.status,
        text(&second.stderr)
    );
    let pinned = fs::read_dir(&pins).map_or(0, |d| d.count());
    assert_eq!(pinned, 0, "the second agent pinned maps before failing");
    let out = xdplb(lab.host("client"), &["status"]);
    assert!(
        !out.status.success()
            && text(&out.stderr).contains("cannot reach the xdplb admin endpoint"),
        "expected `xdplb status` at the default 127.0.0.1:9640 in the client namespace to fail \
         saying so, got {:?}: {}",
        out.status,
        text(&out.stderr)
    );
}

/// `chromium --headless` in `host`'s namespace with `args`, bounded; its
/// stdout goes to `out`, its noise to `out`.log.
fn chromium(lab: &Lab, host: &str, args: &[String], out: &Path) {
    let profile = lab.run_dir.join("chromium-profile");
    let log = out.with_extension("log");
    let mut cmd = netns::command_in(&lab.host(host).ns.name, "chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(fs::File::create(out).expect("creating chromium's output"))
    .stderr(fs::File::create(&log).expect("creating chromium's log"));
    let mut child = cmd
        .spawn()
        .expect("starting chromium (apt-get install chromium)");
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} did not finish within {limit:?}; log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}); log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The page as Chromium renders it (`--dump-dom`).
fn dump_dom(lab: &Lab, url: &str, name: &str) -> String {
    let out = lab.run_dir.join(format!("{name}.html"));
    chromium(lab, "client", &["--dump-dom".into(), url.into()], &out);
    fs::read_to_string(&out).expect("reading chromium's DOM dump")
}

fn screenshot(lab: &Lab, url: &str, name: &str) -> PathBuf {
    let png = lab.run_dir.join(format!("{name}.png"));
    let out = lab.run_dir.join(format!("{name}.stdout"));
    chromium(
        lab,
        "client",
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,900".into(),
            url.into(),
        ],
        &out,
    );
    let size = fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1000,
        "expected a screenshot at {}, got {size} bytes",
        png.display()
    );
    png
}

/// The `<tr>` of a backend in the page.
fn row<'a>(dom: &'a str, addr: &SocketAddrV4) -> &'a str {
    let start = dom
        .find(&format!("<tr id=\"backend-{addr}\""))
        .unwrap_or_else(|| panic!("no row for {addr} in the page:\n{dom}"));
    let len = dom[start..].find("</tr>").expect("a row ends");
    &dom[start..start + len]
}

#[test]
fn status_page_in_headless_chromium_shows_a_backend_going_down() {
    let (mut bed, admin) = start(&["--vrid", "51", "--state", "master"]);
    wait_status(
        &bed,
        admin,
        Duration::from_secs(10),
        "lb1 to be VRRP master",
        |s| s.role == "master",
    );
    // Checks have run (a latency to show) and traffic went through.
    wait_status(
        &bed,
        admin,
        Duration::from_secs(5),
        "a passed check of every backend",
        |s| {
            s.services[0]
                .backends
                .iter()
                .all(|b| b.health.as_ref().is_some_and(|h| h.latency_ms.is_some()))
        },
    );
    bed.spread(30);
    let url = format!("http://{admin}/");

    let dom = dump_dom(&bed.lab, &url, "page-up");
    assert!(
        dom.contains("<span id=\"role\" class=\"badge master\">MASTER</span>"),
        "expected the page to show the MASTER role:\n{dom}"
    );
    assert!(dom.contains("<table id=\"vrrp\">"), "no VRRP table:\n{dom}");
    for addr in bed.backends.values() {
        let r = row(&dom, addr);
        assert!(
            r.contains("data-state=\"up\"") && r.contains(">UP<"),
            "expected {addr} UP in the page: {r}"
        );
    }
    screenshot(&bed.lab, &url, "status-up");

    let api2 = bed.backends["api2"];
    bed.lab
        .apiserver("api2")
        .and_then(|a| a.set_ready(false))
        .expect("SIGUSR1 to api2");
    wait_status(
        &bed,
        admin,
        DOWN_BOUND,
        "api2 DOWN after /readyz turned 500",
        |s| {
            s.services[0]
                .backends
                .iter()
                .any(|b| b.address == api2.to_string() && b.state == "down")
        },
    );
    let dom = dump_dom(&bed.lab, &url, "page-down");
    let r = row(&dom, &api2);
    assert!(
        r.contains("data-state=\"down\"") && r.contains(">DOWN<"),
        "expected api2 DOWN in the page: {r}"
    );
    assert!(
        r.contains("/readyz returned 500"),
        "the reason, in the row: {r}"
    );
    for host in ["api1", "api3"] {
        let r = row(&dom, &bed.backends[host]);
        assert!(r.contains(">UP<"), "expected {host} still UP: {r}");
    }
    assert!(
        dom.contains("DOWN: /readyz returned 500"),
        "the event: {dom}"
    );
    let png = screenshot(&bed.lab, &url, "status-down");
    fs::copy(&png, SCREENSHOT_COPY)
        .unwrap_or_else(|e| panic!("copying {} to {SCREENSHOT_COPY}: {e}", png.display()));
    println!(
        "status page screenshot: {SCREENSHOT_COPY} (and {})",
        png.display()
    );
}

/// The TOML for one service on the VIP with `backends` (host names).
fn config_toml(lab: &Lab, backends: &[&str]) -> String {
    let mut s = format!(
        "[[service]]\nname = \"k8s\"\nvip = \"{}\"\nport = {PORT}\n  [service.check]\n  \
         interval = \"500ms\"\n  timeout = \"300ms\"\n",
        lab.vip()
    );
    for b in backends {
        s += &format!(
            "  [[service.backend]]\n  name = \"{b}\"\n  address = \"{}:{PORT}\"\n",
            lab.host(b).ip
        );
    }
    s
}

#[test]
fn reload_command_reports_a_broken_config_and_applies_a_good_one() {
    let lab = new_lab();
    let file = lab.run_dir.join("xdplb.toml");
    fs::write(&file, config_toml(&lab, &["api1", "api2"])).expect("writing the config");
    let admin = admin_of(&lab).to_string();
    let bed = Bed::with_args(
        lab,
        vec![
            "--config".into(),
            file.display().to_string(),
            "--admin".into(),
            admin.clone(),
        ],
    );
    let lb1 = bed.lab.host("lb1");
    let before = bed.spread(30);
    assert!(!before.contains_key("api3"), "{before:?}");

    // Line 9 of the file gets an address that is not one.
    let broken = config_toml(&bed.lab, &["api1", "api2", "api3"]).replace(
        &format!("\"{}:{PORT}\"", bed.lab.host("api3").ip),
        "\"10.0.0.300:6443\"",
    );
    let line = broken
        .lines()
        .position(|l| l.contains("10.0.0.300"))
        .expect("the broken line")
        + 1;
    fs::write(&file, &broken).expect("writing the broken config");
    let out = xdplb(lb1, &["reload", "--admin", &admin]);
    let stderr = text(&out.stderr);
    println!("xdplb reload (broken file): {:?}\n{stderr}", out.status);
    assert!(
        !out.status.success(),
        "expected xdplb reload to fail on a broken config, it said: {}{}",
        text(&out.stdout),
        stderr
    );
    let at = format!("{}:{line}", file.display());
    assert!(
        stderr.contains("reload rejected, the running configuration stays") && stderr.contains(&at),
        "expected the rejection with {at} in: {stderr}"
    );
    let s = status(&bed, admin.parse().unwrap());
    assert!(
        !s.reloads.last_ok && s.reloads.failed == 1,
        "the rejected reload, in /status: {:?}",
        s.reloads
    );
    // Traffic goes on with the running configuration.
    let during = bed.spread(30);
    assert!(!during.contains_key("api3"), "{during:?}");

    fs::write(&file, config_toml(&bed.lab, &BACKENDS)).expect("writing the good config");
    let out = xdplb(lb1, &["reload", "--admin", &admin]);
    let stdout = text(&out.stdout);
    println!("xdplb reload (good file): {:?}\n{stdout}", out.status);
    assert!(
        out.status.success()
            && stdout.contains("reloaded the configuration: 1 services, 3 backends"),
        "expected the reload to succeed and say so, got {:?}: {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    let after = bed.spread(60);
    assert!(
        after.get("api3").copied().unwrap_or(0) > 0,
        "expected new connections to reach api3 after the reload added it, got {after:?}{}",
        bed.agent.diag()
    );
}

#[test]
fn drain_and_enable_by_command_with_a_token() {
    let (bed, admin) = start(&["--admin-token", "s3cret"]);
    let client = bed.lab.host("client");
    let admin_s = admin.to_string();
    let api2 = bed.backends["api2"].to_string();

    // Without the token: refused, and the command says what is missing.
    let r = http(client, "GET", admin, "/status", &[]);
    assert!(
        matches!(r, Ok((401, _))),
        "expected 401 without a token, got {r:?}"
    );
    let r = http(
        client,
        "GET",
        admin,
        "/metrics",
        &["Authorization: Bearer s3cret"],
    );
    assert!(
        matches!(r, Ok((200, _))),
        "expected 200 with the token, got {r:?}"
    );
    let out = xdplb(client, &["backend", "drain", &api2, "--admin", &admin_s]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("--admin-token"),
        "expected a drain without the token to fail naming --admin-token, got {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    let token = ["--admin", admin_s.as_str(), "--admin-token", "s3cret"];
    let cmd = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(token);
        xdplb(client, &all)
    };

    let out = cmd(&["backend", "drain", "10.1.2.3:6443"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("is not a backend of any service"),
        "expected an unknown backend to be refused, got {:?}: {}",
        out.status,
        text(&out.stderr)
    );

    let out = cmd(&["backend", "drain", &api2]);
    println!("xdplb backend drain {api2}: {}", text(&out.stdout));
    assert!(
        out.status.success() && text(&out.stdout).contains("drained"),
        "xdplb backend drain: {:?} {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let drained = bed.spread(60);
    assert!(
        !drained.contains_key("api2"),
        "expected no new connection on drained api2, got {drained:?}{}",
        bed.agent.diag()
    );
    let r = http(
        client,
        "GET",
        admin,
        "/status",
        &["Authorization: Bearer s3cret"],
    )
    .expect("/status with the token");
    let s: Status = serde_json::from_str(&r.1).expect("status JSON");
    let b = s.services[0]
        .backends
        .iter()
        .find(|b| b.address == api2)
        .expect("api2 in /status");
    assert!(b.drained && b.state == "drain", "{b:?}");

    let out = cmd(&["backend", "enable", &api2]);
    assert!(
        out.status.success() && text(&out.stdout).contains("enabled"),
        "xdplb backend enable: {:?} {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let enabled = bed.spread(60);
    assert!(
        enabled.get("api2").copied().unwrap_or(0) > 0,
        "expected api2 to take new connections again, got {enabled:?}{}",
        bed.agent.diag()
    );
}
