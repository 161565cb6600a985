//! What the tests of the configuration share, here and in `cli`: files
//! written on the fly and the messages they must produce.

use std::{fs, net::SocketAddrV4, path::PathBuf, time::Duration};

use super::{CheckConfig, CheckKind, Config, OnDown, TlsCheck};

/// The name files are read under, as the messages show it.
pub const FILE: &str = "/etc/xdplb.toml";

/// The message of a file that must be refused.
pub fn toml_err(text: &str) -> String {
    match Config::from_toml_str(text, FILE) {
        Ok(c) => panic!("should be refused:\n{text}\nparsed as {c:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[track_caller]
pub fn assert_has(msg: &str, want: &str) {
    assert!(
        msg.contains(want),
        "expected {want:?} in the message, got {msg:?}"
    );
}

pub fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// One service at `vip` with `backends` (addresses).
pub fn service(vip: &str, backends: &[&str]) -> String {
    let mut t = format!("[[service]]\nvip = \"{vip}\"\n");
    for b in backends {
        t += &format!("  [[service.backend]]\n  address = \"{b}\"\n");
    }
    t
}

/// The check a service on 6443 gets when it names none.
pub fn apiserver_check() -> CheckConfig {
    CheckConfig {
        kind: CheckKind::Https {
            path: "/readyz".into(),
            expect: 200,
            tls: TlsCheck::default(),
        },
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
        on_down: OnDown::Keep,
    }
}

/// A fresh file under the temp directory (no tempfile crate needed).
pub fn tempfile(ext: &str) -> (PathBuf, fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "xdplb-config-test-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let file = fs::File::create(&path).unwrap();
    (path, file)
}
