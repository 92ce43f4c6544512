//! `slr lab generate NODE`: UDP traffic from a lab node, built and sent by the kernel
//! (`slr_gen` in live-frame mode, one thread per CPU), for benchmarks that must not measure
//! their own generator (bench/datapath.sh). The frames leave the node's link toward the core;
//! a veth hands them only to a peer with an XDP program, so the core's end of the link gets
//! `slr_pass` for the run.

use super::netns::in_netns;
use super::state::{lab_dir, State};
use super::topology::NODE_IFNAME;
use anyhow::{anyhow, bail, Context, Result};
use slr_xdp::{GeneratorSettings, TrafficGenerator};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

/// What to send (`slr lab generate`'s arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateOptions {
    /// The sending node (a client).
    pub node: String,
    /// Destination ADDRESS:PORT (a VIP).
    #[arg(long)]
    pub to: SocketAddrV4,
    /// The first source address (default: the node's own).
    #[arg(long)]
    pub from: Option<Ipv4Addr>,
    /// Consecutive source addresses.
    #[arg(long, default_value_t = 1)]
    pub sources: u32,
    /// Flows in all: source addresses x source ports (from 1024).
    #[arg(long, default_value_t = 1024)]
    pub flows: u32,
    /// How long, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Sending threads, one per CPU from CPU 0 (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Lab name (optional when exactly one lab is up).
    #[arg(long)]
    pub lab: Option<String>,
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", dev])
        .output()
        .context("running ip")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("no MAC address for {dev} in {ns}: {text:?}"))?;
    let mut b = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address of {dev} in {ns}: {mac:?}");
    }
    for (o, p) in b.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {mac:?}"))?;
    }
    Ok(b)
}

/// Whether `dev` in namespace `ns` runs an XDP program.
fn has_xdp(ns: &str, dev: &str) -> Result<bool> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .context("running ip")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("ip -j link show dev {dev} in {ns}"))?;
    Ok(v.get(0).and_then(|l| l.get("xdp")).is_some())
}

/// Runs the generator; prints one JSON line: frames sent, seconds, frames per second.
pub fn generate(opts: &GenerateOptions) -> Result<()> {
    let lab = super::lifecycle::select_lab(opts.lab.as_deref())?
        .ok_or_else(|| anyhow!("no lab is up"))?;
    let state = State::load(&lab_dir(&lab))?.ok_or_else(|| anyhow!("lab {lab:?} has no state"))?;
    let t = &state.topology;
    let link = t
        .link(&opts.node)
        .ok_or_else(|| anyhow!("lab {lab:?} has no node {:?} with a link", opts.node))?
        .core_ifname;
    let node_ns = t.netns(&opts.node);
    let core_ns = t.netns(&t.core().name);
    let from = match opts.from {
        Some(a) => a,
        None => t
            .address(&opts.node)
            .ok_or_else(|| anyhow!("node {:?} has no address", opts.node))?,
    };
    if !(opts.seconds > 0.0 && opts.seconds <= 3600.0) {
        bail!("--seconds {}: more than 0, at most 3600", opts.seconds);
    }
    let settings = GeneratorSettings {
        dmac: mac_of(&core_ns, &link)?,
        smac: mac_of(&node_ns, NODE_IFNAME)?,
        src: from,
        sources: opts.sources,
        flows: opts.flows,
        dst: *opts.to.ip(),
        dport: opts.to.port(),
    };
    // Refused settings fail here, before anything is attached.
    drop(TrafficGenerator::load(settings)?);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = opts.threads.unwrap_or(cpus).clamp(1, cpus);

    // The core's end of the link may already run a program (`slr lab core-xdp on`): kept.
    let attach = !has_xdp(&core_ns, &link)?;
    if attach {
        let l = link.clone();
        in_netns(&core_ns, move || {
            slr_xdp::attach_pass_to_link(&l).with_context(|| format!("XDP pass program on {l}"))
        })?;
    }
    let seconds = opts.seconds;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|cpu| {
            let ns = node_ns.clone();
            std::thread::spawn(move || -> Result<u64> {
                in_netns(&ns, move || {
                    slr_io::process::pin_current_thread(cpu)
                        .with_context(|| format!("pinning a generator thread to CPU {cpu}"))?;
                    let mut g = TrafficGenerator::load(settings)?;
                    let ifindex = slr_xdp::if_index(NODE_IFNAME)?;
                    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
                    let mut sent = 0u64;
                    // Each test run sets up and tears down a page pool, which waits for RCU
                    // (~10 ms): runs of about 200 ms keep that below 5 %, and the last one
                    // ends near the deadline.
                    let mut batch = 16_384u32;
                    loop {
                        let now = Instant::now();
                        if now >= deadline || super::interrupted() {
                            break;
                        }
                        g.send(ifindex, batch)?;
                        sent += u64::from(batch);
                        let rate = f64::from(batch) / now.elapsed().as_secs_f64().max(1e-6);
                        let left = deadline.saturating_duration_since(Instant::now());
                        let want = rate * left.as_secs_f64().min(0.2);
                        batch = (want as u32).clamp(1_024, 1 << 24);
                    }
                    Ok(sent)
                })
            })
        })
        .collect();
    let mut sent = 0u64;
    let mut failure = None;
    for w in workers {
        match w.join() {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow!("a generator thread panicked")),
        }
    }
    let took = started.elapsed().as_secs_f64();
    let l = link.clone();
    let detached = if attach {
        in_netns(&core_ns, move || {
            slr_xdp::detach_from_link(&l).with_context(|| format!("detaching XDP from {l}"))
        })
    } else {
        Ok(())
    };
    if let Some(e) = failure {
        return Err(e);
    }
    detached?;
    println!(
        "{}",
        serde_json::json!({
            "node": opts.node,
            "frames": sent,
            "seconds": took,
            "frames_per_second": sent as f64 / took,
            "threads": threads,
            "to": opts.to.to_string(),
            "from": from.to_string(),
            "sources": opts.sources,
            "flows": opts.flows,
            "frame_bytes": slr_xdp::GENERATOR_FRAME,
        })
    );
    Ok(())
}
