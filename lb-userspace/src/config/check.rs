//! A service's `[service.check]` in the file: the keys it may have, and the
//! check they make together with the defaults of the service's port.

use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{
    model::{CheckConfig, CheckKind, DEFAULT_CHECK_PATH, DEFAULT_EXPECT, OnDown, Proto, TlsCheck},
    pem,
    source::{Loc, Source, span},
    values::{
        check_count, check_expect, check_path, check_sni, check_timing, default_timeout,
        parse_check_interval, parse_check_timeout,
    },
};

/// `[service.check]`. Only what is written; defaults depend on the port.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    kind: Option<Spanned<RawKind>>,
    path: Option<Spanned<String>>,
    expect: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    on_down: Option<OnDown>,
    insecure_skip_verify: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    sni: Option<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Tcp,
    Http,
    Https,
    None,
}

/// A service's `[service.check]`; what it leaves out is the default for the
/// service's port and protocol.
pub(super) fn check_from_toml(
    src: &Source,
    c: RawCheck,
    port: u16,
    proto: Proto,
) -> Result<CheckConfig> {
    let default = CheckConfig::default_for(port, proto);
    let interval = match &c.interval {
        Some(s) => src.check(&span(s), parse_check_interval(s.get_ref()))?,
        None => default.interval,
    };
    let timeout = match &c.timeout {
        Some(s) => {
            let t = src.check(&span(s), parse_check_timeout(s.get_ref()))?;
            src.check(&span(s), check_timing(interval, t))?;
            t
        }
        None => default_timeout(interval),
    };
    let count = |key: &str, n: &Option<Spanned<i64>>, default: u32| match n {
        Some(n) => src.check(&span(n), check_count(key, *n.get_ref())),
        None => Ok(default),
    };
    let rise = count("rise", &c.rise, default.rise)?;
    let fall = count("fall", &c.fall, default.fall)?;

    // Keys that mean nothing to the check's kind are mistakes (a `path`
    // on a tcp check would otherwise be silently ignored).
    let (kind, whose) = match &c.kind {
        Some(k) => (*k.get_ref(), String::new()),
        None => {
            let kind = match default.kind {
                CheckKind::None => RawKind::None,
                CheckKind::Tcp => RawKind::Tcp,
                CheckKind::Http { .. } => RawKind::Http,
                CheckKind::Https { .. } => RawKind::Https,
            };
            let whose = match proto {
                Proto::Udp => " (the default for UDP services; set kind)".into(),
                Proto::Tcp => format!(" (the default for port {port}; set kind)"),
            };
            (kind, whose)
        }
    };
    let kind_name = kind.name();
    let http_keys = [
        ("path", c.path.as_ref().map(span)),
        ("expect", c.expect.as_ref().map(span)),
    ];
    if !matches!(kind, RawKind::Http | RawKind::Https)
        && let Some((key, Some(loc))) = http_keys.iter().find(|(_, loc)| loc.is_some())
    {
        return Err(src.error(
            loc,
            format!(
                "{key} is for kind \"http\" or \"https\"; this check is \"{kind_name}\"{whose}"
            ),
        ));
    }
    let tls_keys = [
        (
            "insecure_skip_verify",
            c.insecure_skip_verify.as_ref().map(span),
        ),
        ("ca_file", c.ca_file.as_ref().map(span)),
        ("cert_file", c.cert_file.as_ref().map(span)),
        ("key_file", c.key_file.as_ref().map(span)),
        ("sni", c.sni.as_ref().map(span)),
    ];
    if kind != RawKind::Https
        && let Some((key, Some(loc))) = tls_keys.iter().find(|(_, loc)| loc.is_some())
    {
        return Err(src.error(
            loc,
            format!("{key} is for kind \"https\"; this check is \"{kind_name}\"{whose}"),
        ));
    }

    let path = match &c.path {
        Some(p) => src.check(&span(p), check_path(p.get_ref()))?,
        None => DEFAULT_CHECK_PATH.into(),
    };
    let expect = match &c.expect {
        Some(n) => src.check(&span(n), check_expect(*n.get_ref()))?,
        None => DEFAULT_EXPECT,
    };
    let kind = match kind {
        RawKind::None => CheckKind::None,
        RawKind::Tcp => CheckKind::Tcp,
        RawKind::Http => CheckKind::Http { path, expect },
        RawKind::Https => CheckKind::Https {
            path,
            expect,
            tls: tls_from_toml(src, &c)?,
        },
    };
    Ok(CheckConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
        on_down: c.on_down.unwrap_or(default.on_down),
    })
}

impl RawKind {
    fn name(self) -> &'static str {
        match self {
            RawKind::None => "none",
            RawKind::Tcp => "tcp",
            RawKind::Http => "http",
            RawKind::Https => "https",
        }
    }
}

/// The TLS keys of an https check. The files are read here, so that a
/// wrong path, or a key where the certificate should be, is refused at load
/// time with the line that names it, not found by the first check.
fn tls_from_toml(src: &Source, c: &RawCheck) -> Result<TlsCheck> {
    let file = |key: &str, v: &Option<Spanned<String>>| -> Result<Option<(PathBuf, Loc)>> {
        let Some(v) = v else { return Ok(None) };
        let loc = span(v);
        if v.get_ref().trim().is_empty() {
            return Err(src.error(&loc, format!("{key} is empty")));
        }
        Ok(Some((PathBuf::from(v.get_ref()), loc)))
    };
    let ca = file("ca_file", &c.ca_file)?;
    let cert = file("cert_file", &c.cert_file)?;
    let key = file("key_file", &c.key_file)?;

    let insecure_skip_verify = match (&c.insecure_skip_verify, &ca) {
        (Some(v), Some(_)) if *v.get_ref() => {
            return Err(src.error(
                &span(v),
                "insecure_skip_verify = true contradicts ca_file: verify against the CA or skip verification, not both",
            ));
        }
        (Some(v), None) if !*v.get_ref() => {
            return Err(src.error(
                &span(v),
                "insecure_skip_verify = false needs a ca_file to verify against (xdplb has no built-in CA list)",
            ));
        }
        (_, ca) => ca.is_none(),
    };
    match (&cert, &key) {
        (Some((_, loc)), None) => {
            return Err(src.error(
                loc,
                "cert_file needs key_file, the client certificate's private key",
            ));
        }
        (None, Some((_, loc))) => {
            return Err(src.error(loc, "key_file needs cert_file, the client certificate"));
        }
        _ => {}
    }
    let msg = |r: Result<()>| r.map_err(|e| format!("{e:#}"));
    for (what, file) in [("ca_file", &ca), ("cert_file", &cert)] {
        if let Some((path, loc)) = file {
            src.check(loc, msg(pem::load_certs(what, path).map(drop)))?;
        }
    }
    if let Some((path, loc)) = &key {
        src.check(loc, msg(pem::load_key("key_file", path).map(drop)))?;
    }
    let sni = match &c.sni {
        Some(s) => Some(src.check(&span(s), check_sni(s.get_ref()))?),
        None => None,
    };

    let blame = cert
        .as_ref()
        .or(ca.as_ref())
        .map_or(Loc::Whole, |(_, loc)| loc.clone());
    let tls = TlsCheck {
        insecure_skip_verify,
        ca_file: ca.map(|(p, _)| p),
        cert_file: cert.map(|(p, _)| p),
        key_file: key.map(|(p, _)| p),
        sni,
    };
    // What only the files together can tell: a key that is not the
    // certificate's, a CA certificate rustls cannot use. The probes build
    // their TLS configuration from the same functions, so what passes here
    // builds there.
    let together = || -> Result<()> {
        if let Some(ca) = &tls.ca_file {
            pem::root_store(ca)?;
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            pem::client_key(cert, key, &pem::provider())?;
        }
        Ok(())
    };
    src.check(&blame, msg(together()))?;
    Ok(tls)
}

#[cfg(test)]
mod tests;
