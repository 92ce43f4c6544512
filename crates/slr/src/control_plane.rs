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
//! ([`crate::load`]).

use crate::config::{ControlConfig, GatewayChild, RouterDaemonConfig};
use crate::health::RttTable;
use crate::load::LoadSampler;
use crate::router_daemon::Handle;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use slr_control::{
    ChildTable, ExpectedChildren, FetcherConfig, FetcherCounters, GatewayEntry, GatewayFetcher,
    GatewayTable, Identity, ParentConfig, ParentCounters, ParentServer, Reporter, ReporterCounters,
    Subnet, SubnetLoad,
};
use slr_core::router::{Control, NextHopConfig};
use slr_core::select::Policy;
use slr_policy::{Builder, ChildInput, Inputs, Priority, ServedSubnet};
use slr_wire::Ipv4Cidr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What the control thread knows, for `slr ctl` and the metrics page.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ControlView {
    /// This router's level.
    pub level: String,
    /// Children (next-level gateways) with their last reports.
    pub children: Vec<ChildRow>,
    /// The route table as built, entry by entry.
    pub table: Vec<TableRow>,
    /// Table generation (builds so far).
    pub generation: u64,
    /// Tables built.
    pub rebuilds: u64,
    /// Duration of the last build, microseconds.
    pub last_rebuild_us: u64,
    /// Total time spent building, microseconds.
    pub rebuild_us_total: u64,
    /// Evaluation errors of F, G or overload, in all builds.
    pub eval_errors: u64,
    /// The last evaluation error.
    pub last_eval_error: Option<String>,
    /// Tables the core refused (should stay 0).
    pub install_errors: u64,
    /// What this router reports upward, per subnet.
    pub upward: Vec<SubnetRow>,
    /// The reporters to parents.
    pub parents: Vec<ParentRow>,
    /// The gateway table's version and source.
    pub gateway_version: u64,
    /// Where the gateway table came from: "static" or the URL.
    pub gateway_source: String,
    #[serde(skip)]
    parent_counters: Option<Arc<ParentCounters>>,
    #[serde(skip)]
    fetcher_counters: Option<Arc<FetcherCounters>>,
    #[serde(skip)]
    reporter_counters: Vec<(String, Arc<ReporterCounters>)>,
}

/// A child as `slr ctl NAME children` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildRow {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Static cost.
    pub cost: f64,
    /// RTT measured by the health checks, ms.
    pub rtt_ms: Option<f64>,
    /// Level it announced.
    pub level: Option<String>,
    /// Whether it is a candidate (reported within `silent_after` intervals).
    pub live: bool,
    /// Its health check: "up" or "down" (filled in when inspected).
    pub health: Option<String>,
    /// Age of its last report, ms.
    pub report_age_ms: Option<u64>,
    /// Reports accepted from it.
    pub reports: u64,
    /// Its last report.
    pub last_report: Vec<SubnetRow>,
}

/// Metrics of one subnet.
#[derive(Debug, Clone, Serialize)]
pub struct SubnetRow {
    /// The subnet.
    pub subnet: String,
    /// Named metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// One route table entry for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    /// Virtual subnet.
    pub subnet: String,
    /// Client group ("" for none).
    pub client_group: String,
    /// Priority class.
    pub priority: String,
    /// Candidates, lowest cost first.
    pub candidates: Vec<CandidateRow>,
    /// Live children left out, with the reason.
    pub excluded: Vec<(String, String)>,
}

/// A candidate of an entry.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRow {
    /// Child name.
    pub child: String,
    /// Its cost F.
    pub cost: f64,
    /// In the chosen band (takes new flows).
    pub chosen: bool,
    /// Overload predicate held.
    pub overloaded: bool,
}

/// A reporter towards a parent.
#[derive(Debug, Clone, Serialize)]
pub struct ParentRow {
    /// Parent name.
    pub name: String,
    /// Session open.
    pub connected: bool,
    /// Reports accepted by the parent.
    pub reports_sent: u64,
    /// Failures (each followed by a reconnection).
    pub failures: u64,
    /// Subnets the parent refused.
    pub subnets_refused: u64,
    /// Bytes sent (TLS and HTTP/2 included).
    pub bytes_sent: u64,
    /// Last error.
    pub last_error: Option<String>,
}

/// Shared view of the control thread.
pub type SharedView = Arc<Mutex<ControlView>>;

impl ControlView {
    fn refresh_counters(&mut self) {
        self.parents = self
            .reporter_counters
            .iter()
            .map(|(name, c)| ParentRow {
                name: name.clone(),
                connected: c.connected(),
                reports_sent: c.reports_sent(),
                failures: c.failures(),
                subnets_refused: c.subnets_refused(),
                bytes_sent: c.bytes_sent(),
                last_error: c.last_error(),
            })
            .collect();
    }

    /// Prometheus lines for the control plane.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let mut line = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        if let Some(c) = &self.parent_counters {
            line(
                "slr_control_reports_received_total",
                "Reports accepted from children.",
                "counter",
                vec![(String::new(), c.reports_accepted() as f64)],
            );
            line(
                "slr_control_hellos_total",
                "Hellos accepted from children.",
                "counter",
                vec![(String::new(), c.hellos_accepted() as f64)],
            );
            line(
                "slr_control_refused_total",
                "Connections, hellos, reports or subnets refused, by reason.",
                "counter",
                c.refusals()
                    .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.as_str()), n as f64))
                    .collect(),
            );
            line(
                "slr_control_bytes_received_total",
                "Bytes received from children on the wire (TLS included).",
                "counter",
                vec![(String::new(), c.bytes_received() as f64)],
            );
        }
        line(
            "slr_control_table_rebuilds_total",
            "Route tables built.",
            "counter",
            vec![(String::new(), self.rebuilds as f64)],
        );
        line(
            "slr_control_table_rebuild_seconds_total",
            "Time spent building route tables.",
            "counter",
            vec![(String::new(), self.rebuild_us_total as f64 / 1e6)],
        );
        line(
            "slr_control_table_rebuild_last_seconds",
            "Duration of the last route table build.",
            "gauge",
            vec![(String::new(), self.last_rebuild_us as f64 / 1e6)],
        );
        line(
            "slr_control_eval_errors_total",
            "Cost function evaluations that failed (the child was left out).",
            "counter",
            vec![(String::new(), self.eval_errors as f64)],
        );
        line(
            "slr_control_child_live",
            "Whether a child is a candidate (reported recently).",
            "gauge",
            self.children
                .iter()
                .map(|c| {
                    (
                        format!("{{child=\"{}\"}}", c.name),
                        f64::from(u8::from(c.live)),
                    )
                })
                .collect(),
        );
        line(
            "slr_control_reports_sent_total",
            "Reports accepted by each parent.",
            "counter",
            self.parents
                .iter()
                .map(|p| (format!("{{parent=\"{}\"}}", p.name), p.reports_sent as f64))
                .collect(),
        );
        line(
            "slr_control_report_bytes_sent_total",
            "Bytes sent to each parent on the wire (TLS included).",
            "counter",
            self.parents
                .iter()
                .map(|p| (format!("{{parent=\"{}\"}}", p.name), p.bytes_sent as f64))
                .collect(),
        );
        if let Some(f) = &self.fetcher_counters {
            line(
                "slr_control_gateway_fetches_total",
                "Gateway table fetches, by result.",
                "counter",
                vec![
                    ("{result=\"ok\"}".into(), f.fetches_ok() as f64),
                    (
                        "{result=\"unreachable\"}".into(),
                        f.fetch_errors_unreachable() as f64,
                    ),
                    (
                        "{result=\"invalid\"}".into(),
                        f.fetch_errors_invalid() as f64,
                    ),
                ],
            );
        }
    }
}

/// The running control thread; dropping it stops the thread.
pub struct ControlThread {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What it knows.
    pub view: SharedView,
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(v: &SharedView) -> std::sync::MutexGuard<'_, ControlView> {
    v.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_subnet(c: Ipv4Cidr) -> Subnet {
    Subnet::new(c.addr(), c.prefix_len()).expect("an Ipv4Cidr is a valid subnet")
}

fn to_cidr(s: &Subnet) -> Ipv4Cidr {
    Ipv4Cidr::new(s.network(), s.prefix_len()).expect("a Subnet is a valid prefix")
}

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

fn identity(c: &ControlConfig) -> Result<Identity> {
    Ok(Identity::load(&c.ca, &c.cert, &c.key)?)
}

async fn until_stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
        let r = Reporter::new(&identity, &p.name, p.address, &cfg.name, &cfg.level)?;
        lock(&view)
            .reporter_counters
            .push((p.name.clone(), r.counters()));
        reporters.push(r);
    }
    let children = parent.as_ref().map(ParentServer::child_table);
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

struct BuildState {
    cfg: RouterDaemonConfig,
    control: ControlConfig,
    handle: Handle,
    rtt: RttTable,
    view: SharedView,
    upward: Arc<Mutex<Vec<SubnetLoad>>>,
    builder: Builder,
    gateways: Arc<GatewayTable>,
    expected: ExpectedChildren,
}

impl BuildState {
    async fn run(
        mut self,
        children: Option<ChildTable>,
        mut gateway_rx: Option<watch::Receiver<Option<Arc<GatewayTable>>>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        let mut changes = children.as_ref().map(ChildTable::subscribe);
        let mut tick = tokio::time::interval(self.control.rebuild_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The moment the next live child turns silent: rebuild right then, so that a
            // silent child leaves selection N intervals after its last report, not up to R
            // later.
            let silence = children.as_ref().and_then(|c| self.next_silence(c));
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
                _ = async { match silence { Some(at) => tokio::time::sleep_until(at.into()).await, None => std::future::pending().await } } => {}
                Ok(()) = async { match changes.as_mut() { Some(c) => c.changed().await, None => std::future::pending().await } } => {
                    // Reports come one child at a time: let a burst settle (a few ms) so that
                    // one rebuild covers it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(()) = async { match gateway_rx.as_mut() { Some(g) => g.changed().await, None => std::future::pending().await } } => {
                    let table = gateway_rx.as_ref().and_then(|g| g.borrow().clone());
                    if let Some(t) = table {
                        self.apply_gateways(t);
                    }
                }
            }
            self.rebuild(children.as_ref());
        }
    }

    /// When the earliest live child becomes silent (its last report older than N intervals).
    fn next_silence(&self, children: &ChildTable) -> Option<Instant> {
        let limit = self
            .control
            .report_interval
            .saturating_mul(self.control.silent_after)
            + Duration::from_millis(1);
        let now = Instant::now();
        children
            .snapshot()
            .values()
            .filter_map(|c| c.last_report.as_ref().map(|r| r.received + limit))
            .filter(|&at| at > now)
            .min()
    }

    /// A new gateway table: expected children and the core's next hops follow it.
    fn apply_gateways(&mut self, table: Arc<GatewayTable>) {
        if *table == *self.gateways {
            return;
        }
        tracing::info!(
            version = table.version,
            children = table.children.len(),
            "new gateway table"
        );
        self.expected.set_from_gateway_table(&table);
        let children = table
            .children
            .iter()
            .map(|c| NextHopConfig {
                name: c.name.clone(),
                address: c.address,
                weight: 1,
            })
            .collect();
        match self.handle.set_gateways(children) {
            Ok(()) => {
                self.gateways = table.clone();
                lock(&self.view).gateway_version = table.version;
            }
            Err(e) => tracing::error!("gateway table not applied: {e:#}"),
        }
    }

    fn rebuild(&mut self, children: Option<&ChildTable>) {
        let started = Instant::now();
        let snapshot = children.map(ChildTable::snapshot).unwrap_or_default();
        let live: Vec<String> = children
            .map(|c| {
                c.live_children(
                    started,
                    self.control.report_interval,
                    self.control.silent_after,
                )
            })
            .unwrap_or_default();
        let subnets = self
            .cfg
            .core
            .virtual_hosts
            .iter()
            .filter(|v| v.policy == Policy::Cost)
            .map(|v| ServedSubnet {
                subnet: v.subnet,
                priority: if self
                    .cfg
                    .high_priority
                    .iter()
                    .any(|(n, high)| n == &v.name && *high)
                {
                    Priority::High
                } else {
                    Priority::BestEffort
                },
            })
            .collect();
        let inputs = Inputs {
            now_unix_ms: wall_ms(),
            client_groups: self.cfg.client_groups.clone(),
            subnets,
            children: self
                .gateways
                .children
                .iter()
                .map(|g| {
                    let state = snapshot.get(&g.name);
                    let report = state.and_then(|s| s.last_report.as_ref());
                    ChildInput {
                        name: g.name.clone(),
                        labels: g.labels.clone(),
                        static_cost: g.cost,
                        rtt_ms: self.rtt.get(&g.name),
                        live: live.contains(&g.name),
                        report_seq: state.map_or(0, |s| s.reports),
                        report: report
                            .map(|r| {
                                r.subnets
                                    .iter()
                                    .map(|l| (to_cidr(&l.subnet), l.metrics.clone()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        };
        let out = self.builder.build(&inputs);
        let took = started.elapsed();
        let installed = self
            .handle
            .control(Control::InstallRouteTable(Box::new(out.table.clone())));
        *self.upward.lock().unwrap_or_else(PoisonError::into_inner) = out
            .reports
            .iter()
            .map(|(n, m)| SubnetLoad {
                subnet: to_subnet(*n),
                metrics: m.clone(),
            })
            .collect();
        let mut v = lock(&self.view);
        if let Err(e) = installed {
            v.install_errors += 1;
            tracing::error!("route table refused by the core: {e:#}");
        }
        v.generation = out.table.generation;
        v.rebuilds += 1;
        v.last_rebuild_us = took.as_micros() as u64;
        v.rebuild_us_total += took.as_micros() as u64;
        v.eval_errors += out.counters.eval_errors;
        if out.counters.last_error.is_some() {
            v.last_eval_error = out.counters.last_error.clone();
        }
        v.upward = out
            .reports
            .iter()
            .map(|(n, m)| SubnetRow {
                subnet: n.to_string(),
                metrics: m.clone(),
            })
            .collect();
        v.table = out
            .table
            .entries
            .iter()
            .zip(&out.details)
            .map(|(e, d)| TableRow {
                subnet: e.subnet.to_string(),
                client_group: e.client_group.clone().unwrap_or_default(),
                priority: d.priority.as_str().into(),
                candidates: e
                    .candidates
                    .iter()
                    .zip(&d.candidates)
                    .map(|(c, cd)| CandidateRow {
                        child: c.next_hop.clone(),
                        cost: c.cost,
                        chosen: cd.in_band,
                        overloaded: cd.overloaded,
                    })
                    .collect(),
                excluded: d
                    .excluded
                    .iter()
                    .map(|e| (e.next_hop.clone(), e.reason.clone()))
                    .collect(),
            })
            .collect();
        v.children = self
            .gateways
            .children
            .iter()
            .map(|g| {
                let s = snapshot.get(&g.name);
                let r = s.and_then(|s| s.last_report.as_ref());
                ChildRow {
                    name: g.name.clone(),
                    address: g.address.to_string(),
                    cost: g.cost,
                    rtt_ms: self.rtt.get(&g.name),
                    level: s.map(|s| s.level.clone()),
                    live: live.contains(&g.name),
                    health: None,
                    report_age_ms: r
                        .map(|r| started.saturating_duration_since(r.received).as_millis() as u64),
                    reports: s.map_or(0, |s| s.reports),
                    last_report: r
                        .map(|r| {
                            r.subnets
                                .iter()
                                .map(|l| SubnetRow {
                                    subnet: l.subnet.to_string(),
                                    metrics: l.metrics.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        v.refresh_counters();
    }
}

/// Starts a host agent's reporters (None without `[control]`).
pub fn start_host(
    name: &str,
    control: Option<&ControlConfig>,
    subnets: &[Ipv4Cidr],
) -> Result<Option<ControlThread>> {
    let Some(control) = control else {
        return Ok(None);
    };
    let identity = identity(control)?;
    let view: SharedView = Arc::new(Mutex::new(ControlView {
        level: "host".into(),
        ..ControlView::default()
    }));
    let mut reporters = Vec::new();
    for p in &control.parents {
        let r = Reporter::new(&identity, &p.name, p.address, name, "host")?.with_config(
            slr_control::ReporterConfig {
                subnets: subnets.iter().copied().map(to_subnet).collect(),
                ..slr_control::ReporterConfig::default()
            },
        );
        lock(&view)
            .reporter_counters
            .push((p.name.clone(), r.counters()));
        reporters.push(r);
    }
    let (stop, stop_rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sampler = Arc::new(Mutex::new(LoadSampler::new(subnets.to_vec())));
    let v2 = view.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                // One sample per interval, shared by every parent's reporter (the first caller
                // in an interval takes it; a sample covers the time since the previous one).
                let last: Arc<Mutex<(Option<Instant>, Vec<SubnetLoad>)>> = Arc::default();
                for r in reporters {
                    let (sampler, last) = (sampler.clone(), last.clone());
                    let s = until_stopped(stop_rx.clone());
                    tasks.spawn(async move {
                        let source = move || {
                            let mut l = last.lock().unwrap_or_else(PoisonError::into_inner);
                            let fresh =
                                l.0.is_some_and(|t| t.elapsed() < Duration::from_millis(200));
                            if !fresh {
                                let report = sampler
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .sample();
                                l.1 = report
                                    .into_iter()
                                    .map(|(n, metrics)| SubnetLoad {
                                        subnet: to_subnet(n),
                                        metrics,
                                    })
                                    .collect();
                                l.0 = Some(Instant::now());
                            }
                            l.1.clone()
                        };
                        r.run(source, s).await;
                    });
                }
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut stop = std::pin::pin!(until_stopped(stop_rx.clone()));
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tick.tick() => lock(&v2).refresh_counters(),
                    }
                }
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok(Some(ControlThread {
        stop,
        thread: Some(thread),
        view,
    }))
}
