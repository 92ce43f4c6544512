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

mod cli;
mod control_plane;
mod daemon;
mod health;
mod host;
mod mailbox;
mod metrics;
mod router;
mod rtt;
mod snapshot;

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
        /// Log lines as text or as JSON objects.
        #[arg(long, value_enum, default_value_t)]
        log_format: daemon::LogFormat,
    },
    /// Run the host agent on a host server.
    Host {
        /// Configuration file (TOML, see docs/CONFIG.md).
        #[arg(short, long)]
        config: PathBuf,
        /// Only check the configuration file, then exit.
        #[arg(long)]
        check: bool,
        /// Log lines as text or as JSON objects.
        #[arg(long, value_enum, default_value_t)]
        log_format: daemon::LogFormat,
    },
    /// Check a router or host configuration file without starting anything (which daemon it
    /// configures is told by its `[router]` or `[host]` table).
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Inspect or steer a running router or host agent.
    Ctl(cli::ctl::CtlArgs),
    /// Build, inspect and tear down a lab of network namespaces.
    Lab {
        #[command(subcommand)]
        command: slr_lab::LabCommand,
    },
    /// The operator CA and node certificates of the state update protocol (mutual TLS).
    Ca {
        #[command(subcommand)]
        command: cli::pki::CaCommand,
    },
    /// Serve a gateway table over HTTPS (a network configuration site).
    GatewaySite(cli::pki::GatewaySiteArgs),
    /// Say hello and send one load report to a parent, printing its answers.
    Report(cli::pki::ReportArgs),
    /// Serve HTTP (and UDP echo) on a lab host: answers say which host served them.
    #[command(hide = true)]
    Serve(slr_lab::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Router {
            config,
            check,
            log_format,
        } => router::run(&config, check, log_format),
        Command::Host {
            config,
            check,
            log_format,
        } => host::run(&config, check, log_format),
        Command::Check { config } => cli::check::run(&config),
        Command::Ctl(args) => cli::ctl::run(args),
        Command::Lab { command } => slr_lab::run(command),
        Command::Ca { command } => cli::pki::run_ca(command),
        Command::GatewaySite(args) => cli::pki::run_gateway_site(args),
        Command::Report(args) => cli::pki::run_report(args),
        Command::Serve(args) => slr_lab::serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slr: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
