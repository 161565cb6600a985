//! The backends (nginx answering "ok") and each load balancer under test,
//! started in the lab with its own config in the run directory, pinned to
//! its CPU and stopped by PID.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lab::{Agent, Host, Lab, proc::Proc};

use super::cpu::{self, LB_CPU, LOAD_CPU};

/// Port the backends serve and the load balancers listen on.
pub const PORT: u16 = 8080;
/// haproxy's and nginx's connection limit: below half the fd hard limit
/// (20000 here), since a proxied connection takes two descriptors.
const MAXCONN: u32 = 9000;
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
const NFT_TABLE: &str = "xdplb_bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lb {
    /// Native XDP in lb1's veth NAPI (a threaded NAPI kthread on the LB CPU).
    Xdplb,
    /// Generic (skb) XDP: in the receive softirq, which RPS puts on the LB
    /// CPU as for the proxies; on a veth it skips the NAPI kthread.
    XdplbGeneric,
    Haproxy,
    Nginx,
    Nft,
    /// No load balancer: the client talks to api1 (the ceiling).
    Direct,
}

impl Lb {
    pub const ALL: [Lb; 6] = [
        Lb::Xdplb,
        Lb::XdplbGeneric,
        Lb::Haproxy,
        Lb::Nginx,
        Lb::Nft,
        Lb::Direct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lb::Xdplb => "xdplb",
            Lb::XdplbGeneric => "xdplb-generic",
            Lb::Haproxy => "haproxy",
            Lb::Nginx => "nginx",
            Lb::Nft => "nft",
            Lb::Direct => "direct",
        }
    }
}

/// A load balancer serving in lb1 until dropped.
pub struct Running {
    pub url: String,
    /// The load balancer's own threads (for the notes): agent, proxy, NAPI kthreads.
    pub pids: Vec<i32>,
    agent: Option<Agent>,
    _proc: Option<Proc>,
    _nft: Option<NftTable>,
}

impl Running {
    /// The address:port `url` names, where the LB listens.
    pub fn addr(&self) -> Result<SocketAddr> {
        let hostport = self.url["http://".len()..].trim_end_matches('/');
        hostport
            .parse()
            .with_context(|| format!("not an address:port in {}", self.url))
    }

    /// xdplb's agent (its pinned counters), for xdplb.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }
}

/// Starts nginx in every backend, pinned to the load CPU.
///
/// The backends keep no TIME_WAIT sockets: with `Connection: close` they
/// close first, and a load balancer that hands a backend a source port it
/// used a moment ago (nft's masquerade does, at thousands of connections
/// a second over its port range) would otherwise meet its own TIME_WAIT
/// and wait out a SYN retransmit. That measures the port choice, not the
/// load balancer; without TIME_WAIT none pays it.
pub fn start_backends(lab: &Lab) -> Result<Vec<Proc>> {
    for (name, _) in backend_ips(lab) {
        lab.host(&name)
            .ns
            .exec("sysctl", &["-qw", "net.ipv4.tcp_max_tw_buckets=0"])?;
    }
    backend_ips(lab)
        .into_iter()
        .map(|(name, _)| {
            let host = lab.host(&name);
            let dir = lab.run_dir.join(format!("{name}-nginx"));
            let mut conf = nginx_head(&dir, 1024)?;
            conf.push_str(&format!(
                "http {{\n    access_log off;\n    default_type text/plain;\n    keepalive_requests 10000000;\n\
                 \x20   client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
                 \x20   uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 \x20   server {{\n        listen {PORT} backlog=4096;\n        location / {{ return 200 \"ok\\n\"; }}\n    }}\n}}\n",
                d = dir.display()
            ));
            start_nginx(
                host,
                &dir,
                &conf,
                &LOAD_CPU.to_string(),
                &format!("nginx backend on {name}"),
            )
        })
        .collect()
}

/// Starts `lb` in lb1 (or nothing, for `Direct`), its work pinned to the LB
/// CPU, or (`pinned` false) left where the kernel and scheduler put it.
pub fn start(lab: &Lab, lb: Lb, pinned: bool) -> Result<Running> {
    let lb_cpus = if pinned {
        LB_CPU.to_string()
    } else {
        cpu::online()
    };
    let lb1 = lab.host("lb1");
    let backends = backend_ips(lab);
    let on_lb1 = format!("http://{}:{PORT}/", lb1.ip);
    let mut running = Running {
        url: on_lb1,
        pids: Vec::new(),
        agent: None,
        _proc: None,
        _nft: None,
    };
    match lb {
        Lb::Xdplb | Lb::XdplbGeneric => {
            let generic = lb == Lb::XdplbGeneric;
            let vip = lab.vip().to_string();
            let port = PORT.to_string();
            let bs: Vec<String> = backends
                .iter()
                .map(|(_, ip)| format!("{ip}:{PORT}"))
                .collect();
            let mut args = vec![
                "--vip",
                vip.as_str(),
                "--port",
                port.as_str(),
                "--check",
                "tcp",
            ];
            for b in &bs {
                args.extend(["--backend", b.as_str()]);
            }
            // Named, not left to `auto`: the measurement must not depend
            // on what auto concludes about the lab's veth peer.
            args.extend(["--xdp-mode", if generic { "generic" } else { "native" }]);
            let napi_before = cpu::napi_threads("eth0");
            let agent = lab.start_agent("lb1", &args)?;
            // The agent (health checks, flow ageing) is LB work too.
            if pinned {
                cpu::pin(agent.proc.pid(), LB_CPU, true)?;
            }
            running.pids.push(agent.proc.pid());
            // Native XDP on a veth runs in the veth's NAPI poll, scheduled
            // on the sender's CPU; threaded NAPI moves it into a kthread we
            // can pin. Generic XDP runs where RPS put lb1's receive path.
            if !generic && pinned {
                running.pids.extend(cpu::thread_napi(
                    &lb1.ns.name,
                    "eth0",
                    LB_CPU,
                    &napi_before,
                )?);
            } else if !generic {
                // The device remembers an earlier run's setting; its NAPI
                // exists only while XDP is attached, so reset it now.
                cpu::unthread_napi(&lb1.ns.name, "eth0")?;
            }
            running.url = format!("http://{vip}:{PORT}/");
            running.agent = Some(agent);
        }
        Lb::Haproxy => {
            let dir = lab.run_dir.join("lb1-haproxy");
            fs::create_dir_all(&dir)?;
            let mut conf = format!(
                "global\n    maxconn {MAXCONN}\n    nbthread 1\n    pidfile {}\n\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
                 frontend fe\n    bind {}:{PORT}\n    default_backend be\n\n\
                 backend be\n    balance roundrobin\n",
                dir.join("haproxy.pid").display(),
                lb1.ip
            );
            for (name, ip) in &backends {
                writeln!(conf, "    server {name} {ip}:{PORT} check inter 2s")?;
            }
            let cfg = dir.join("haproxy.cfg");
            fs::write(&cfg, conf).with_context(|| format!("writing {}", cfg.display()))?;
            let mut cmd = lb1.ns.command("taskset");
            cmd.args(["-c", &lb_cpus, "haproxy", "-db", "-f"]).arg(&cfg);
            let p = Proc::spawn("haproxy on lb1", cmd, &dir.join("haproxy.log"))?;
            running.pids.push(p.pid());
            running._proc = Some(p);
        }
        Lb::Nginx => {
            let dir = lab.run_dir.join("lb1-nginx");
            let mut conf = format!("load_module {STREAM_MODULE};\n");
            conf.push_str(&nginx_head(&dir, MAXCONN)?);
            conf.push_str("stream {\n    upstream be {\n");
            for (_, ip) in &backends {
                writeln!(conf, "        server {ip}:{PORT};")?;
            }
            writeln!(
                conf,
                "    }}\n    server {{\n        listen {}:{PORT} backlog=4096;\n        proxy_pass be;\n    }}\n}}",
                lb1.ip
            )?;
            let p = start_nginx(lb1, &dir, &conf, &lb_cpus, "nginx stream on lb1")?;
            running.pids.push(p.pid());
            running._proc = Some(p);
        }
        Lb::Nft => {
            let map: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(i, (_, ip))| format!("{i} : {ip}"))
                .collect();
            let conf = format!(
                "table ip {NFT_TABLE} {{\n\
                 \x20   chain pre {{\n        type nat hook prerouting priority dstnat;\n\
                 \x20       ip daddr {lb} tcp dport {PORT} dnat to numgen inc mod {n} map {{ {map} }}\n    }}\n\
                 \x20   chain post {{\n        type nat hook postrouting priority srcnat;\n\
                 \x20       ip saddr != {lb} tcp dport {PORT} masquerade to :10000-19999\n    }}\n}}\n",
                lb = lb1.ip,
                n = backends.len(),
                map = map.join(", ")
            );
            // Masquerade keeps the client's port, which lies in lb1's own
            // ephemeral range: the backends still hold TIME_WAIT for those
            // ports from haproxy's and nginx's connections a moment ago, with
            // other TCP timestamps, and drop the SYNs (PAWS) for a 1 s
            // retransmit. A range nothing else here uses, as xdplb's NAT ports are.
            let file = lab.run_dir.join("lb1-nft.conf");
            fs::write(&file, conf)?;
            for kv in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ] {
                lb1.ns.exec("sysctl", &["-qw", kv])?;
            }
            // Conntrack keeps closed connections 120 s by default; xdplb keeps
            // them 10 s. Same rule for both, and the shared table does not
            // fill up over repeated close-mode runs.
            // (The sysctl exists once the table has pulled conntrack in.)
            lb1.ns.exec("nft", &["-f", &file.to_string_lossy()])?;
            running._nft = Some(NftTable {
                ns: lb1.ns.name.clone(),
            });
            lb1.ns.exec(
                "sysctl",
                &["-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=10"],
            )?;
        }
        Lb::Direct => {
            running.url = format!("http://{}:{PORT}/", backends[0].1);
        }
    }
    // A proxy says nothing when it listens: connect from the client until
    // it answers (this also proves the path through xdplb works).
    let target = running.addr()?;
    let ok = lab.host("client").ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })?;
    if !ok {
        bail!(
            "{} did not accept connections on {target} within 10 s",
            lb.name()
        );
    }
    Ok(running)
}

fn backend_ips(lab: &Lab) -> Vec<(String, Ipv4Addr)> {
    lab.hosts()
        .filter(|h| h.name.starts_with("api"))
        .map(|h| (h.name.clone(), h.ip))
        .collect()
}

/// The part of an nginx config every instance shares: one worker, in the
/// foreground, every file in `dir`.
fn nginx_head(dir: &Path, connections: u32) -> Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile {};\n\
         pid {};\nerror_log {} warn;\nevents {{\n    worker_connections {connections};\n}}\n",
        connections * 2 + 100,
        dir.join("nginx.pid").display(),
        dir.join("error.log").display()
    ))
}

/// `cpus`: a taskset CPU list.
fn start_nginx(host: &Host, dir: &Path, conf: &str, cpus: &str, name: &str) -> Result<Proc> {
    let cfg = dir.join("nginx.conf");
    fs::write(&cfg, conf).with_context(|| format!("writing {}", cfg.display()))?;
    let mut cmd = host.ns.command("taskset");
    cmd.args(["-c", cpus, "nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&cfg);
    let mut p = Proc::spawn(name, cmd, &dir.join("stderr.log"))?;
    // nginx says nothing when it is ready: wait for its pid file.
    let pidfile = dir.join("nginx.pid");
    for _ in 0..250 {
        if pidfile.exists() {
            return Ok(p);
        }
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{name} exited ({status}): {}{}",
                p.output(),
                fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{name} wrote no pid file within 5 s: {}",
        fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    )
}

/// The nft table in lb1; deleted on drop.
struct NftTable {
    ns: String,
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = lab::netns::command_in(&self.ns, "nft")
            .args(["delete", "table", "ip", NFT_TABLE])
            .output();
    }
}
