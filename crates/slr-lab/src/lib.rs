//! `slr lab`: the whole system on one machine, in network namespaces.
//!
//! A lab is built from a topology file (format: [`topology`]). Every node is a network
//! namespace `slr-<lab>-<node>` joined to a core namespace by a veth pair; the core
//! routes each virtual subnet to the router(s), so a client's packets to a VIP go
//! client → core → router → (IP-in-IP) → core → host, and the host's answer goes
//! host → core → client without touching the router (direct server return).
//!
//! A topology can also be a hierarchy of any depth (network router → AS routers → site
//! routers → hosts, or more levels): the core then routes the virtual subnets to the top
//! router only, and every level tunnels a new flow to one of its children through the core
//! (client → core → net → core → as1 → core → site-a → core → h2), each router choosing by
//! the cost its children report over mutual TLS with certificates `up` makes
//! (`<state>/pki/`); the host still answers straight to the client.
//!
//! - `slr lab up FILE` builds the namespaces and links, writes the daemons' configs,
//!   starts `slr router`, `slr host` and `slr serve`, and waits until every host and
//!   every VIP answers. A failure (or Ctrl-C) tears down what was built.
//! - `slr lab status [--json] [NAME]` shows nodes, addresses, processes and VIPs.
//! - `slr lab down [NAME]` stops the lab's processes and deletes its namespaces: only
//!   what its state file (module `state`) records, so it is safe after a crash and idempotent.
//! - `slr lab run FILE` is up, a demo of real traffic with a one-screen summary
//!   (module `demo`; for a hierarchy also the spread per client group and level and each
//!   request's path through the routers' flow tables), and down.
//!
//! Everything needs root (namespaces) and the `ip` command; the demo also uses `curl`
//! and `tcpdump`.

use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod configs;
mod demo;
pub mod generate;
mod lifecycle;
mod netns;
mod pcap;
mod probe;
mod prometheus;
pub mod serve;
mod state;
pub mod topology;

/// `slr lab` subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab from a topology file and wait until its VIPs answer.
    Up {
        /// Topology file (TOML), e.g. examples/site.toml.
        file: PathBuf,
        /// Seconds to wait for the hosts and the VIPs to answer.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
        /// Build the network and start `slr serve` on the hosts, but not the router and
        /// host daemons (to run those by hand, e.g. under a debugger). VIPs will not answer
        /// until they run; hosts answer on their own addresses.
        #[arg(long)]
        no_daemons: bool,
        /// Also start a Prometheus server (Debian's) in the core namespace, scraping every
        /// router and host agent each second (http://127.0.0.1:9090 in the core namespace).
        #[arg(long)]
        prometheus: bool,
        /// The kernel fast path of routers and hosts: "xdp" (the daemons' default: routers
        /// forward established flows by XDP, hosts decapsulate by XDP), "tc" (the same at tc
        /// ingress, where large GSO packets go through whole) or "off" (every packet through
        /// the daemons).
        #[arg(long, value_parser = ["xdp", "tc", "off"])]
        fast_path: Option<String>,
    },
    /// Show a lab: nodes, namespaces, addresses, processes, virtual hosts.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Lab name (optional when exactly one lab is up).
        name: Option<String>,
    },
    /// Stop a lab's processes and delete its namespaces (only what it created).
    Down {
        /// Lab name (optional when exactly one lab is up).
        name: Option<String>,
    },
    /// Stop a node's router or host daemon and start it again (the same command line).
    Restart {
        /// The node.
        node: String,
        /// The signal that stops it: TERM (graceful) or KILL (a crash).
        #[arg(long, default_value = "TERM")]
        signal: String,
        /// Seconds to wait for it to exit (a router drains its flows first).
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Lab name (optional when exactly one lab is up).
        #[arg(long)]
        lab: Option<String>,
    },
    /// Attach (on) or detach (off) the XDP pass program on the core's end of a node's link. A
    /// router's fast path needs it there (on veth, XDP_TX frames reach only a peer with an XDP
    /// program), and `lab up` attaches it; but it also turns off segmentation offload in the
    /// node's namespace, which another load balancer measured in the router's place must not
    /// pay (bench/e2e.sh detaches it for those).
    XdpPass {
        /// The node.
        node: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Lab name (optional when exactly one lab is up).
        #[arg(long)]
        lab: Option<String>,
    },
    /// Attach (on) or detach (off) the core's XDP forwarder: the lab's core (which stands for
    /// the network) forwards in XDP toward routers and hosts that run the fast path, instead of
    /// in its kernel, so that a benchmark's CPU goes to the path under test (bench/datapath.sh).
    CoreXdp {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Lab name (optional when exactly one lab is up).
        #[arg(long)]
        lab: Option<String>,
    },
    /// Send UDP from a node, built and transmitted by the kernel (an XDP program in live-frame
    /// mode, one thread per CPU): a load generator that costs the path it measures little.
    /// Prints one JSON line (frames sent, seconds, frames per second).
    Generate(generate::GenerateOptions),
    /// Bring a lab up, send demo traffic, print a summary, and tear it down.
    Run {
        /// Topology file (TOML), e.g. examples/site.toml.
        file: PathBuf,
        /// HTTP requests each client makes to each VIP (a new connection each).
        #[arg(long, default_value_t = 30)]
        requests: u32,
        /// Seconds to wait for the hosts and the VIPs to answer.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
        /// Leave the lab up afterwards (tear it down later with `slr lab down`).
        #[arg(long)]
        keep: bool,
        /// The kernel fast path of routers and hosts: "xdp" (the daemons' default: routers
        /// forward established flows by XDP, hosts decapsulate by XDP), "tc" (the same at tc
        /// ingress, where large GSO packets go through whole) or "off" (every packet through
        /// the daemons).
        #[arg(long, value_parser = ["xdp", "tc", "off"])]
        fast_path: Option<String>,
    },
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up {
            file,
            timeout,
            no_daemons,
            prometheus,
            fast_path,
        } => {
            install_signal_handlers();
            let opts = lifecycle::UpOptions {
                ready_timeout: Duration::from_secs(timeout),
                daemons: !no_daemons,
                prometheus,
                fast_path,
            };
            let state = lifecycle::up(&file, &opts)?;
            lifecycle::print_up_summary(&state);
            Ok(())
        }
        LabCommand::Status { json, name } => lifecycle::status(name.as_deref(), json),
        LabCommand::Down { name } => lifecycle::down(name.as_deref()),
        LabCommand::Restart {
            node,
            signal,
            wait,
            lab,
        } => {
            let sig = match signal.trim_start_matches("SIG") {
                "TERM" => libc::SIGTERM,
                "KILL" => libc::SIGKILL,
                "INT" => libc::SIGINT,
                other => bail!("--signal {other}: TERM, KILL or INT"),
            };
            lifecycle::restart(lab.as_deref(), &node, sig, Duration::from_secs(wait))
        }
        LabCommand::XdpPass { node, state, lab } => {
            lifecycle::xdp_pass(lab.as_deref(), &node, state == "on")
        }
        LabCommand::CoreXdp { state, lab } => lifecycle::core_xdp(lab.as_deref(), state == "on"),
        LabCommand::Generate(opts) => {
            install_signal_handlers();
            generate::generate(&opts)
        }
        LabCommand::Run {
            file,
            requests,
            timeout,
            keep,
            fast_path,
        } => {
            install_signal_handlers();
            let opts = lifecycle::UpOptions {
                ready_timeout: Duration::from_secs(timeout),
                daemons: true,
                prometheus: false,
                fast_path,
            };
            demo::run(
                &file,
                &opts,
                &demo::DemoOptions {
                    requests_per_client: requests,
                    keep,
                },
            )
        }
    }
}

/// Set by SIGINT/SIGTERM; long operations check it between steps and in waits.
static INTERRUPTED: std::sync::LazyLock<Arc<AtomicBool>> =
    std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Makes Ctrl-C (and SIGTERM) set [`INTERRUPTED`] instead of killing the process, so
/// `up` and `run` can tear down what they built.
fn install_signal_handlers() {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, INTERRUPTED.clone()) {
            eprintln!("slr lab: cannot handle signal {sig}: {e} (Ctrl-C will not clean up)");
        }
    }
}

/// Whether Ctrl-C or SIGTERM arrived.
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if Ctrl-C or SIGTERM arrived (call between steps).
fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, waking early if interrupted.
fn sleep_interruptible(d: Duration) {
    let end = std::time::Instant::now() + d;
    while !interrupted() {
        let now = std::time::Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
