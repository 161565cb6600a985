//! `[service.check]` in a file, TLS files included.

use std::{fs, io::Write as _, path::PathBuf, time::Duration};

use crate::config::{
    CheckConfig, CheckKind, Config, TlsCheck,
    test_support::{FILE, apiserver_check, assert_has, service, tempfile, toml_err},
};

/// PEM files for the TLS keys: a CA (self-signed, so also usable as
/// the client certificate), its key, and a key of another certificate.
struct Pki {
    ca: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let write = |pem: String| {
            let (path, mut file) = tempfile("pem");
            file.write_all(pem.as_bytes()).unwrap();
            path
        };
        let gen_ = || {
            rcgen::generate_simple_self_signed(["kubernetes".to_owned()])
                .expect("rcgen generates a certificate")
        };
        let (one, other) = (gen_(), gen_());
        Pki {
            ca: write(one.cert.pem()),
            key: write(one.signing_key.serialize_pem()),
            other_key: write(other.signing_key.serialize_pem()),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        for p in [&self.ca, &self.key, &self.other_key] {
            let _ = fs::remove_file(p);
        }
    }
}

#[test]
fn check_in_the_file() {
    let pki = Pki::new();
    let (ca, key) = (pki.ca.display(), pki.key.display());
    let text = format!(
        "{}  [service.check]\n  ca_file = \"{ca}\"\n  cert_file = \"{ca}\"\n  key_file = \"{key}\"\n  sni = \"kubernetes\"\n  expect = 200\n",
        service("10.0.0.100", &["10.0.0.1:6443"])
    );
    let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        c.services[0].check,
        CheckConfig {
            kind: CheckKind::Https {
                path: "/readyz".into(),
                expect: 200,
                tls: TlsCheck {
                    // Off by default once there is a CA to verify with.
                    insecure_skip_verify: false,
                    ca_file: Some(pki.ca.clone()),
                    cert_file: Some(pki.ca.clone()),
                    key_file: Some(pki.key.clone()),
                    sni: Some("kubernetes".into()),
                },
            },
            ..apiserver_check()
        }
    );
    // That it builds a TLS client is health::tls's test
    // (a_checked_file_builds).

    // Explicit values equal to the defaults are accepted.
    let text = format!(
        "{}  [service.check]\n  kind = \"https\"\n  insecure_skip_verify = true\n  on_down = \"keep\"\n  timeout = \"2s\"\n",
        service("10.0.0.100", &["10.0.0.1:6443"])
    );
    let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        c.services[0].check,
        CheckConfig {
            timeout: Duration::from_secs(2),
            ..apiserver_check()
        }
    );

    // http without a path checks /readyz; timing on its own.
    let text = format!(
        "{}  [service.check]\n  kind = \"http\"\n  interval = \"500ms\"\n",
        service("10.0.0.100", &["10.0.0.1:6443"])
    );
    let c = Config::from_toml_str(&text, FILE).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        c.services[0].check,
        CheckConfig {
            kind: CheckKind::Http {
                path: "/readyz".into(),
                expect: 200
            },
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(500),
            ..apiserver_check()
        }
    );
}

#[test]
fn check_errors_name_file_and_line() {
    let pki = Pki::new();
    let (ca, key, other_key) = (
        pki.ca.display().to_string(),
        pki.key.display().to_string(),
        pki.other_key.display().to_string(),
    );
    // The [service.check] keys start on line 6.
    let checked = |keys: &str| {
        let keys: String = keys.lines().map(|l| format!("  {l}\n")).collect();
        service("10.0.0.100", &["10.0.0.1:6443"]) + "  [service.check]\n" + &keys
    };
    for (keys, want) in [
        (
            "kind = \"tls\"".to_owned(),
            "6: unknown variant `tls`, expected one of `tcp`, `http`, `https`, `none`".to_owned(),
        ),
        (
            "kind = \"http\"\nretries = 3".into(),
            "7: unknown field `retries`".into(),
        ),
        (
            "path = \"readyz\"".into(),
            "6: check path 'readyz' must start with '/' (e.g. /readyz)".into(),
        ),
        (
            "path = \"/readyz\\r\\nHost: x\"".into(),
            "6: check path \"/readyz\\r\\nHost: x\" contains '\\r'".into(),
        ),
        (
            "expect = 99".into(),
            "6: check expect 99 is not an HTTP status (100-599)".into(),
        ),
        (
            "expect = 600".into(),
            "6: check expect 600 is not an HTTP status".into(),
        ),
        (
            "rise = 0".into(),
            "6: check rise 0 must be between 1 and 100".into(),
        ),
        (
            "rise = 2\nfall = 101".into(),
            "7: check fall 101 must be between 1 and 100".into(),
        ),
        (
            "fall = -1".into(),
            "6: check fall -1 must be between 1 and 100".into(),
        ),
        (
            "interval = \"50ms\"".into(),
            "6: check interval '50ms' is below the minimum of 100ms".into(),
        ),
        (
            "interval = \"soon\"".into(),
            "6: check interval: 'soon' is not a duration".into(),
        ),
        (
            "timeout = \"0s\"".into(),
            "6: check timeout '0s' must be longer than 0".into(),
        ),
        (
            "interval = \"1s\"\ntimeout = \"2s\"".into(),
            "7: check timeout 2s is longer than the interval 1s; a check must finish before the next one starts".into(),
        ),
        (
            "timeout = \"3s\"".into(),
            "6: check timeout 3s is longer than the interval 2s".into(),
        ),
        (
            "on_down = \"drop\"".into(),
            "6: unknown variant `drop`, expected `keep` or `reset`".into(),
        ),
        (
            "kind = \"tcp\"\npath = \"/readyz\"".into(),
            "7: path is for kind \"http\" or \"https\"; this check is \"tcp\"".into(),
        ),
        (
            "kind = \"none\"\nexpect = 200".into(),
            "7: expect is for kind \"http\" or \"https\"; this check is \"none\"".into(),
        ),
        (
            "kind = \"http\"\nca_file = \"/etc/kubernetes/pki/ca.crt\"".into(),
            "7: ca_file is for kind \"https\"; this check is \"http\"".into(),
        ),
        (
            "kind = \"http\"\ninsecure_skip_verify = true".into(),
            "7: insecure_skip_verify is for kind \"https\"; this check is \"http\"".into(),
        ),
        (
            "kind = \"tcp\"\nsni = \"kubernetes\"".into(),
            "7: sni is for kind \"https\"; this check is \"tcp\"".into(),
        ),
        (
            format!("kind = \"tcp\"\ncert_file = \"{ca}\"\nkey_file = \"{key}\""),
            "7: cert_file is for kind \"https\"; this check is \"tcp\"".into(),
        ),
        (
            format!("cert_file = \"{ca}\""),
            "6: cert_file needs key_file, the client certificate's private key".into(),
        ),
        (
            format!("key_file = \"{key}\""),
            "6: key_file needs cert_file, the client certificate".into(),
        ),
        (
            format!("insecure_skip_verify = true\nca_file = \"{ca}\""),
            "6: insecure_skip_verify = true contradicts ca_file".into(),
        ),
        (
            "insecure_skip_verify = false".into(),
            "6: insecure_skip_verify = false needs a ca_file to verify against".into(),
        ),
        (
            "ca_file = \"/nonexistent/ca.crt\"".into(),
            "6: ca_file /nonexistent/ca.crt: cannot read: ".into(),
        ),
        ("ca_file = \" \"".into(), "6: ca_file is empty".into()),
        (
            format!("ca_file = \"{key}\""),
            format!("6: ca_file {key}: no PEM certificate"),
        ),
        (
            format!("cert_file = \"{key}\"\nkey_file = \"{key}\""),
            format!("6: cert_file {key}: no PEM certificate"),
        ),
        (
            format!("cert_file = \"{ca}\"\nkey_file = \"{ca}\""),
            format!("7: key_file {ca}: no PEM private key"),
        ),
        (
            format!("cert_file = \"{ca}\"\nkey_file = \"/nonexistent/client.key\""),
            "7: key_file /nonexistent/client.key: cannot read: ".into(),
        ),
        (
            format!("cert_file = \"{ca}\"\nkey_file = \"{other_key}\""),
            format!("6: TLS: client certificate: cert_file {ca} with key_file {other_key}"),
        ),
        (
            "sni = \"not a name\"".into(),
            "6: sni 'not a name' is not a valid DNS name".into(),
        ),
    ] {
        assert_has(&toml_err(&checked(&keys)), &format!("config error: {FILE}:{want}"));
    }

    // A kind-specific key on the port's default kind says where that
    // kind came from.
    let text = service("10.0.0.100", &["10.0.0.1:8080"]).replace("vip =", "port = 8080\nvip =")
        + "  [service.check]\n  path = \"/healthz\"\n";
    assert_has(
        &toml_err(&text),
        &format!(
            "config error: {FILE}:7: path is for kind \"http\" or \"https\"; this check is \"tcp\" (the default for port 8080; set kind)"
        ),
    );
    let text = service("10.0.0.100", &["10.0.0.1:53"])
        .replace("vip =", "port = 53\nproto = \"udp\"\nvip =")
        + "  [service.check]\n  sni = \"dns\"\n";
    assert_has(
        &toml_err(&text),
        &format!(
            "config error: {FILE}:8: sni is for kind \"https\"; this check is \"none\" (the default for UDP services; set kind)"
        ),
    );
}
