//! `slr`: one binary for every role of the service level routing system.
//!
//! - `slr router -c FILE`: a Service Level Router (any level of the hierarchy).
//! - `slr host -c FILE`: the host agent on a host server (tunnel termination, AnyIP).
//! - `slr lab ...`: a namespace lab that runs the whole system on one machine.
//! - `slr ctl ...`: inspect and steer a running daemon.
//!
//! The routing decisions themselves live in `slr-core`; this crate is the shell around it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod config;
mod control_plane;
mod ctl;
mod daemon;
mod health;
mod host_daemon;
mod lab;
mod load;
mod metrics;
mod pki_cmd;
mod router_daemon;
mod serve;

/// Service level routing: virtual hosts routed per connection to host servers over IP-in-IP.
#[derive(Parser)]
#[command(name = "slr", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Service Level Router.
    Router {
        /// Configuration file (TOML, see docs/CONFIG.md).
        #[arg(short, long)]
        config: PathBuf,
        /// Only check the configuration file, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the host agent on a host server.
    Host {
        /// Configuration file (TOML, see docs/CONFIG.md).
        #[arg(short, long)]
        config: PathBuf,
        /// Only check the configuration file, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Inspect or steer a running router or host agent.
    Ctl(ctl::CtlArgs),
    /// Build, inspect and tear down a lab of network namespaces.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// The operator CA and node certificates of the state update protocol (mutual TLS).
    Ca {
        #[command(subcommand)]
        command: pki_cmd::CaCommand,
    },
    /// Serve a gateway table over HTTPS (a network configuration site).
    GatewaySite(pki_cmd::GatewaySiteArgs),
    /// Say hello and send one load report to a parent, printing its answers.
    Report(pki_cmd::ReportArgs),
    /// Serve HTTP (and UDP echo) on a lab host: answers say which host served them.
    #[command(hide = true)]
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Router { config, check } => router_daemon::run(&config, check),
        Command::Host { config, check } => host_daemon::run(&config, check),
        Command::Ctl(args) => ctl::run(args),
        Command::Lab { command } => lab::run(command),
        Command::Ca { command } => pki_cmd::run_ca(command),
        Command::GatewaySite(args) => pki_cmd::run_gateway_site(args),
        Command::Report(args) => pki_cmd::run_report(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slr: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
