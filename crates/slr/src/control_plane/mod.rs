//! The control thread of `slr router` and `slr host`: the state update protocol (F11) and the
//! route table it feeds (Fig. 9 of the patent).
//!
//! A router with a `[control]` section runs, on one thread with a tokio runtime:
//!
//! - a **parent server** (if `control.listen` is set): its children (the gateway table's
//!   entries) connect with mutual TLS and report their load per virtual subnet every
//!   `report_interval` (T);
//! - a **table builder**: every `rebuild_interval` (R), and whenever a report arrives, it turns
//!   the children's last reports, their static costs, the RTTs the health checks measure and the
//!   wall time into a route table with the operator's cost function F (`[cost]`,
//!   crates/slr-policy) and installs it into the core (`Control::InstallRouteTable`): the packet
//!   thread only reads the result. A child silent for `silent_after` intervals is not a
//!   candidate until it reports again;
//! - a **reporter per parent** (`[[control.parents]]`): it reports the aggregate G of this
//!   router's children upward, per virtual subnet;
//! - a **gateway fetcher** (if `gateways.url` is set): the table of children is fetched over
//!   HTTPS from a network configuration site, verified against the operator CA; the last good
//!   table is kept when the site fails.
//!
//! A host agent with `[control]` runs only the reporters, with its own load
//! (sampled by the host agent, `host/load.rs`).

mod build;
mod common;
mod host;
mod shortcut;
mod view;

pub use common::ControlThread;
pub use host::start_host;
pub use shortcut::{OwnSignal, ShortcutStats};
pub use view::{ControlView, SharedView};

use crate::mailbox::Handle;
use crate::rtt::RttTable;
use anyhow::{anyhow, Context, Result};
use build::BuildState;
use common::{identity, to_subnet, until_stopped};
use slr_config::{GatewayChild, RouterDaemonConfig};
use slr_control::{
    ExpectedChildren, FetcherConfig, GatewayEntry, GatewayFetcher, GatewayTable, ParentConfig,
    ParentServer, Reporter, SubnetLoad,
};
use slr_policy::Builder;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;
use view::lock;

fn gateway_table(children: &[GatewayChild]) -> Result<GatewayTable> {
    let entries = children
        .iter()
        .map(|c| GatewayEntry {
            name: c.name.clone(),
            address: c.address,
            subnets: c.subnets.iter().copied().map(to_subnet).collect(),
            cost: c.cost,
            labels: c.labels.clone(),
        })
        .collect();
    Ok(GatewayTable::from_entries(0, entries)?)
}

/// Starts the router's control thread (None without `[control]`). Fails if the certificates
/// cannot be loaded or the listener cannot bind.
pub fn start_router(
    cfg: &RouterDaemonConfig,
    handle: Handle,
    rtt: RttTable,
) -> Result<Option<ControlThread>> {
    let Some(control) = cfg.control.clone() else {
        return Ok(None);
    };
    let identity = identity(&control)?;
    let policy = cfg.cost.compile().map_err(|e| anyhow!("[cost]: {e}"))?;
    let static_table = gateway_table(&cfg.gateways.children)?;
    let view: SharedView = Arc::new(Mutex::new(ControlView {
        level: cfg.level.clone(),
        gateway_source: cfg.gateways.url.clone().unwrap_or_else(|| "static".into()),
        ..ControlView::default()
    }));
    let (stop, stop_rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Bind now, so that a bad address fails the start, not a log line later.
    let listener = match control.listen {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("control.listen: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let expected = ExpectedChildren::from_gateway_table(&static_table);
    let parent = listener
        .as_ref()
        .map(|_| {
            ParentServer::new(
                &identity,
                ParentConfig {
                    report_interval: control.report_interval,
                    silent_after: control.silent_after,
                    ..ParentConfig::default()
                },
                expected.clone(),
            )
        })
        .transpose()?;
    // The shortcut (F10): children's requests from the parent server, batches to each parent
    // through its reporter, the core's signals from the packet thread.
    let shortcut = control.shortcut.is_some();
    let (questions_tx, questions_rx) = tokio::sync::mpsc::channel(1024);
    let parent = parent.map(|p| {
        if shortcut {
            p.with_shortcuts(questions_tx)
        } else {
            p
        }
    });
    let (signals_tx, signals_rx) = tokio::sync::mpsc::channel(4096);
    let mut batch_senders = Vec::new();
    let fetcher = match &cfg.gateways.url {
        Some(url) => {
            let (addr, host) = parse_https_url(url)?;
            let name = cfg.gateways.server_name.clone().unwrap_or(host);
            let mut fc = FetcherConfig::new(addr, &name);
            fc.refresh = cfg.gateways.refresh;
            Some(GatewayFetcher::new(&identity, fc)?.with_initial_table(static_table.clone()))
        }
        None => None,
    };
    {
        let mut v = lock(&view);
        v.parent_counters = parent.as_ref().map(ParentServer::counters);
        v.fetcher_counters = fetcher.as_ref().map(GatewayFetcher::counters);
    }
    let upward: Arc<Mutex<Vec<SubnetLoad>>> = Arc::default();
    let mut reporters = Vec::new();
    for p in &control.parents {
        let mut r = Reporter::new(&identity, &p.name, p.address, &cfg.name, &cfg.level)?;
        if shortcut {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            batch_senders.push(tx);
            r = r.with_shortcuts(rx);
        }
        lock(&view)
            .reporter_counters
            .push((p.name.clone(), r.counters()));
        reporters.push(r);
    }
    let children = parent.as_ref().map(ParentServer::child_table);
    let stats: Arc<ShortcutStats> = Arc::default();
    if shortcut {
        lock(&view).relay_stats = Some(stats.clone());
    }
    let relay = shortcut.then(|| shortcut::Relay {
        own: signals_rx,
        questions: parent.as_ref().map(|_| questions_rx),
        parents: batch_senders,
        children: children.clone(),
        handle: handle.clone(),
        // The copies below a shortcut are refreshed well within their shortest timeout (a
        // half-open TCP entry: only its SYN crossed them).
        keepalive: {
            let ft = &cfg.core.flow_table;
            let shortest = ft.tcp_half_open_timeout.min(ft.udp_timeout).as_micros();
            std::time::Duration::from_micros(shortest / 4)
                .max(std::time::Duration::from_millis(100))
        },
        stats: stats.clone(),
        round_busy: Arc::default(),
    });
    let state = BuildState {
        cfg: cfg.clone(),
        control: control.clone(),
        handle,
        rtt,
        view: view.clone(),
        upward: upward.clone(),
        builder: Builder::new(policy),
        gateways: Arc::new(static_table),
        expected,
    };
    let thread_view = view.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                if let (Some(parent), Some(listener)) = (parent, listener) {
                    let s = until_stopped(stop_rx.clone());
                    tasks.spawn(async move {
                        if let Err(e) = parent.serve(listener, s).await {
                            tracing::error!("control server failed: {e}");
                        }
                    });
                }
                for r in reporters {
                    let up = upward.clone();
                    let s = until_stopped(stop_rx.clone());
                    tasks.spawn(async move {
                        let source =
                            move || up.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        r.run(source, s).await;
                    });
                }
                if let Some(relay) = relay {
                    let s = until_stopped(stop_rx.clone());
                    tasks.spawn(relay.run(s));
                }
                let gateway_rx = fetcher.as_ref().map(GatewayFetcher::subscribe);
                if let Some(f) = fetcher {
                    let s = until_stopped(stop_rx.clone());
                    tasks.spawn(async move { f.run(s).await });
                }
                state
                    .run(children, gateway_rx, until_stopped(stop_rx.clone()))
                    .await;
                while tasks.join_next().await.is_some() {}
            });
            tracing::debug!(view = ?lock(&thread_view).generation, "control thread stopped");
        })?;
    Ok(Some(ControlThread {
        stop,
        thread: Some(thread),
        view,
        signals: shortcut.then_some(signals_tx),
    }))
}

/// `https://10.200.9.2:7443/gateways.json` -> (address, host text).
fn parse_https_url(url: &str) -> Result<(std::net::SocketAddr, String)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("gateways.url: {url:?} is not an https:// URL"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let addr: std::net::SocketAddr = hostport.parse().map_err(|_| {
        anyhow!("gateways.url: {url:?}: expected https://ADDRESS:PORT/... with an IP address")
    })?;
    Ok((addr, addr.ip().to_string()))
}
