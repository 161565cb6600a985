//! `xdplb`: the agent. Checks its inputs, loads and attaches the XDP
//! program, reports what it sees, and detaches cleanly on SIGINT/SIGTERM.

mod cli;
mod loader;
mod preflight;
mod stats;

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Result;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use lb_common::stats::ReasonTotals;

use crate::{cli::Args, loader::Dataplane};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xdplb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // Cheap checks first, each with a sentence a user can act on.
    preflight::interface_index(&args.iface)?;
    preflight::privileges()?;
    let pin_dir = args.pin_dir();
    preflight::bpffs(&pin_dir)?;

    let dp = Dataplane::load(&args.iface, args.xdp_mode, pin_dir)?;
    // The lab (and scripts) wait for this line.
    info!("xdplb ready on {}", args.iface);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut ticker =
        (!args.report_interval.is_zero()).then(|| tokio::time::interval(args.report_interval));
    let mut last = ReasonTotals::default();
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break }
            _ = async { ticker.as_mut().unwrap().tick().await }, if ticker.is_some() => {
                let now = ReasonTotals::read(&dp.reason_stats()?)?;
                info!(iface = %dp.iface, "{}", stats::report(&now, &last));
                last = now;
            }
        }
    }
    drop(dp);
    Ok(())
}
