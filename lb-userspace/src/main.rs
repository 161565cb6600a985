//! `xdplb`: parses its arguments, sets up logging and runs the agent
//! (`lb_userspace::agent`), or, with a subcommand, asks a running agent
//! through its admin endpoint (`lb_userspace::admin::client`).

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use lb_userspace::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
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
    if let Some(command) = &args.command {
        let asked = runtime.block_on(lb_userspace::admin::client::run(
            command,
            args.admin(),
            args.admin_token.as_deref(),
        ));
        return match asked {
            Ok(out) => {
                print!("{out}");
                if !out.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xdplb: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match runtime.block_on(lb_userspace::agent::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
