//! Command-line flags. Flags named in issues as "exact" are a contract with
//! tests outside the project: add new ones, never rename these.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "xdplb",
    version,
    about = "XDP L4 load balancer for Kubernetes control planes"
)]
pub struct Args {
    /// Interface to attach the XDP program to (the one that owns the VIP).
    #[arg(long, short = 'i', env = "XDPLB_IFACE")]
    pub iface: String,

    /// How the program is attached: `native` runs in the driver (fast; veth,
    /// virtio, mlx5, i40e…), `generic` in the kernel stack (any device,
    /// slower), `auto` tries native and falls back to generic.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
    pub xdp_mode: XdpAttachMode,

    /// Directory for pinned maps. Default: /sys/fs/bpf/xdplb/<iface>.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,

    /// How often to log the packet counters; 0 turns the report off.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub report_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

impl Args {
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(lb_common::maps::DEFAULT_PIN_ROOT).join(&self.iface))
    }
}

/// Durations as users write them in keepalived/haproxy configs: `500ms`,
/// `2s`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_haproxy() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }
}
