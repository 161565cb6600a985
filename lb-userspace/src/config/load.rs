//! The ways in: what the command line asks for ([`Overrides`]), or a file
//! alone.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    model::{CheckKind, Config, DEFAULT_PORT, OnDown, Proto},
    resolve::Draft,
    source::Source,
    values::BackendSpec,
};

/// What the command line says about the configuration: a file to read, or
/// the one service of the flags; and the settings given on it, which win
/// over the file's. The CLI fills it (`cli::Args::overrides`); each value
/// has already passed its own check (the parsers in `values`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overrides {
    /// Read the services and settings from this file (`--config`), again
    /// on every [`Config::load`].
    pub file: Option<PathBuf>,

    // The single service, used only without a file.
    pub vip: Option<Ipv4Addr>,
    pub port: u16,
    pub proto: Proto,
    pub backends: Vec<BackendSpec>,
    /// `None`: the default for the port and protocol.
    pub check: Option<CheckKind>,
    pub check_interval: Option<Duration>,
    pub check_timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub on_down: Option<OnDown>,

    // Settings that win over the file; `None`: the file's, or the default.
    /// `--snat-ip`, each time it is given: the SNAT pool, replacing the
    /// file's; empty: the file's.
    pub snat_ips: Vec<Ipv4Addr>,
    pub nat_ports: Option<super::NatPorts>,
    pub max_flows: Option<u32>,
    pub max_embryos: Option<u32>,
    pub keep_dataplane: Option<bool>,
    pub assign_vip: Option<bool>,
    /// `--vrid` and its companions: one VRRP instance, replacing the file's.
    pub vrrp: Option<super::VrrpFlags>,
}

/// Nothing given: what the flags mean when left out.
impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            file: None,
            vip: None,
            port: DEFAULT_PORT,
            proto: Proto::Tcp,
            backends: Vec::new(),
            check: None,
            check_interval: None,
            check_timeout: None,
            rise: None,
            fall: None,
            on_down: None,
            snat_ips: Vec::new(),
            nat_ports: None,
            max_flows: None,
            max_embryos: None,
            keep_dataplane: None,
            assign_vip: None,
            vrrp: None,
        }
    }
}

impl Config {
    /// The configuration the command line asks for: the single service of
    /// the flags, or the file with the settings given on the command line
    /// winning over it. Call it again on SIGHUP to re-read the file and keep
    /// the overrides.
    pub fn load(flags: &Overrides) -> Result<Config> {
        match &flags.file {
            Some(path) => {
                let text = read(path)?;
                let name = path.display().to_string();
                let src = Source::File {
                    name: &name,
                    text: &text,
                };
                let mut draft = Draft::from_toml(&src, &text)?;
                draft.override_with(flags)?;
                draft.finish(&src)
            }
            None => Draft::from_flags(flags)?.finish(&Source::CommandLine),
        }
    }

    /// A configuration file's contents; `source` names it in messages.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config> {
        let src = Source::File { name: source, text };
        Draft::from_toml(&src, text)?.finish(&src)
    }

    /// Reads and checks a configuration file, without command-line
    /// overrides.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = read(path)?;
        Config::from_toml_str(&text, &path.display().to_string())
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .with_context(|| format!("config error: cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::assert_has;

    #[test]
    fn missing_file_is_named() {
        let e = Config::load_file("/nonexistent/xdplb.toml").unwrap_err();
        assert_has(
            &format!("{e:#}"),
            "config error: cannot read /nonexistent/xdplb.toml: ",
        );
    }

    /// clap refuses a command line without --vip or --config; a caller that
    /// fills `Overrides` itself gets the same advice.
    #[test]
    fn overrides_without_a_service_are_refused() {
        let e = Config::load(&Overrides::default()).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "config error: command line: give --vip and --backend, or --config FILE"
        );
    }

    #[test]
    fn overrides_without_clap() {
        let flags = Overrides {
            vip: Some(Ipv4Addr::new(10, 0, 0, 100)),
            backends: vec![BackendSpec {
                addr: "10.0.0.1:6443".parse().unwrap(),
                weight: 1,
            }],
            assign_vip: Some(false),
            ..Overrides::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.services[0].name, "10.0.0.100:6443/tcp");
        assert!(!c.assign_vip);
    }
}
