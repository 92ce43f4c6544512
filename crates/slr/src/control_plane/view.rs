//! What the control thread knows, as `slr ctl` and the metrics page show it.

use crate::metrics::Exposition;
use serde::Serialize;
use slr_control::{FetcherCounters, ParentCounters, ReporterCounters};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

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
    /// The shortcut's relay (with `[control] shortcut`): what became of the signals and
    /// keepalives this router sent up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortcut_relay: Option<RelayRow>,
    #[serde(skip)]
    pub(super) parent_counters: Option<Arc<ParentCounters>>,
    #[serde(skip)]
    pub(super) fetcher_counters: Option<Arc<FetcherCounters>>,
    #[serde(skip)]
    pub(super) reporter_counters: Vec<(String, Arc<ReporterCounters>)>,
    #[serde(skip)]
    pub(super) relay_stats: Option<Arc<super::shortcut::ShortcutStats>>,
}

/// The shortcut relay's counters, as `slr ctl R parents` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayRow {
    /// Signals sent to the parents (own and relayed).
    pub sent: u64,
    /// Signals a parent installed or relayed.
    pub accepted: u64,
    /// Signals no parent took (refused, or kept on its path).
    pub refused: u64,
    /// Signals lost: no parent session answered.
    pub failed: u64,
    /// Own signals not sent because the next hop is no host.
    pub not_host: u64,
    /// Children's signals judged here.
    pub from_children: u64,
    /// Keepalives sent.
    pub keepalives: u64,
    /// Keepalives a parent held.
    pub kept: u64,
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
    /// Reads the reporters' counters into [`ControlView::parents`].
    pub(super) fn refresh_counters(&mut self) {
        self.shortcut_relay = self.relay_stats.as_ref().map(|s| {
            let get =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            RelayRow {
                sent: get(&s.sent),
                accepted: get(&s.accepted),
                refused: get(&s.refused),
                failed: get(&s.failed),
                not_host: get(&s.not_host),
                from_children: get(&s.from_children),
                keepalives: get(&s.keepalives),
                kept: get(&s.kept),
            }
        });
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

    /// Adds the control plane's families to a scrape.
    pub fn add_metrics(&self, p: &mut Exposition) {
        if let Some(c) = &self.parent_counters {
            p.counter(
                "slr_control_reports_received_total",
                "Reports accepted from children.",
                &[],
                c.reports_accepted(),
            );
            p.counter(
                "slr_control_hellos_total",
                "Hellos accepted from children.",
                &[],
                c.hellos_accepted(),
            );
            for (r, n) in c.refusals() {
                p.counter(
                    "slr_control_refused_total",
                    "Connections, hellos, reports or subnets refused, by reason.",
                    &[("reason", r.as_str())],
                    n,
                );
            }
            p.counter(
                "slr_control_bytes_received_total",
                "Bytes received from children on the wire (TLS included).",
                &[],
                c.bytes_received(),
            );
        }
        p.counter(
            "slr_control_table_rebuilds_total",
            "Route tables built.",
            &[],
            self.rebuilds,
        );
        p.counter_f64(
            "slr_control_table_rebuild_seconds_total",
            "Time spent building route tables.",
            &[],
            self.rebuild_us_total as f64 / 1e6,
        );
        p.gauge(
            "slr_control_table_rebuild_last_seconds",
            "Duration of the last route table build.",
            &[],
            self.last_rebuild_us as f64 / 1e6,
        );
        p.counter(
            "slr_control_eval_errors_total",
            "Cost function evaluations that failed (the child was left out).",
            &[],
            self.eval_errors,
        );
        p.counter(
            "slr_control_route_table_install_errors_total",
            "Route tables the core refused (should stay 0).",
            &[],
            self.install_errors,
        );
        for c in &self.children {
            p.gauge(
                "slr_control_child_live",
                "Whether a child is a candidate (reported recently).",
                &[("child", &c.name)],
                f64::from(u8::from(c.live)),
            );
        }
        for r in &self.parents {
            p.counter(
                "slr_control_reports_sent_total",
                "Reports accepted by each parent.",
                &[("parent", &r.name)],
                r.reports_sent,
            );
            p.counter(
                "slr_control_report_bytes_sent_total",
                "Bytes sent to each parent on the wire (TLS included).",
                &[("parent", &r.name)],
                r.bytes_sent,
            );
            p.gauge(
                "slr_control_parent_connected",
                "Whether the session to a parent is open.",
                &[("parent", &r.name)],
                f64::from(u8::from(r.connected)),
            );
        }
        if let Some(r) = &self.shortcut_relay {
            for (outcome, n) in [
                ("sent", r.sent),
                ("accepted", r.accepted),
                ("refused", r.refused),
                ("failed", r.failed),
                ("not_host", r.not_host),
            ] {
                p.counter(
                    "slr_shortcut_relay_signals_total",
                    "Shortcut signals the control thread handled: sent to the parents (own and relayed), accepted or refused by them, failed (no parent answered: lost), not sent (next hop not a host).",
                    &[("outcome", outcome)],
                    n,
                );
            }
            for (outcome, n) in [("sent", r.keepalives), ("held", r.kept)] {
                p.counter(
                    "slr_shortcut_keepalives_total",
                    "Keepalives for signalled flows sent to the parents, and those a parent still held.",
                    &[("outcome", outcome)],
                    n,
                );
            }
        }
        if let Some(f) = &self.fetcher_counters {
            for (result, n) in [
                ("ok", f.fetches_ok()),
                ("unreachable", f.fetch_errors_unreachable()),
                ("invalid", f.fetch_errors_invalid()),
            ] {
                p.counter(
                    "slr_control_gateway_fetches_total",
                    "Gateway table fetches, by result.",
                    &[("result", result)],
                    n,
                );
            }
        }
    }
}

/// Locks the view (a panicked holder left it usable: it only holds plain data).
pub(super) fn lock(v: &SharedView) -> std::sync::MutexGuard<'_, ControlView> {
    v.lock().unwrap_or_else(PoisonError::into_inner)
}
