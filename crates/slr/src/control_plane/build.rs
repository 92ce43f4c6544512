//! The table builder of a router's control thread (Fig. 9 of the patent): children's reports,
//! static costs, RTTs and wall time in; a route table for the core and the aggregate G for the
//! parents out.

use super::common::{to_cidr, to_subnet, wall_ms};
use super::view::{lock, CandidateRow, ChildRow, SharedView, SubnetRow, TableRow};
use crate::mailbox::Handle;
use crate::rtt::RttTable;
use slr_config::{ControlConfig, RouterDaemonConfig};
use slr_control::{ChildTable, ExpectedChildren, GatewayTable, SubnetLoad};
use slr_core::router::{Control, NextHopConfig};
use slr_core::select::Policy;
use slr_policy::{Builder, ChildInput, Inputs, Priority, ServedSubnet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The builder's state, owned by the control thread's build task.
pub(super) struct BuildState {
    pub(super) cfg: RouterDaemonConfig,
    pub(super) control: ControlConfig,
    pub(super) handle: Handle,
    pub(super) rtt: RttTable,
    pub(super) view: SharedView,
    pub(super) upward: Arc<Mutex<Vec<SubnetLoad>>>,
    pub(super) builder: Builder,
    pub(super) gateways: Arc<GatewayTable>,
    pub(super) expected: ExpectedChildren,
}

impl BuildState {
    /// Rebuilds every R, on reports, at silences and on new gateway tables, until `stop`.
    pub(super) async fn run(
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

    /// One rebuild: what each child reported, the table F makes of it, installed into the core,
    /// G reported upward, and the view for `slr ctl` and the metrics.
    fn rebuild(&mut self, children: Option<&ChildTable>) {
        let started = Instant::now();
        let observed = self.observe_children(children, started);
        let inputs = Inputs {
            now_unix_ms: wall_ms(),
            client_groups: self.cfg.client_groups.clone(),
            subnets: self.served_subnets(),
            children: observed.iter().map(|c| c.input.clone()).collect(),
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
        v.table = table_rows(&out);
        v.children = observed.into_iter().map(|c| c.row).collect();
        v.refresh_counters();
    }

    /// Each child of the gateway table, seen once: its last report, liveness and RTT, as the
    /// builder's input and as the row `slr ctl R children` shows.
    fn observe_children(&self, children: Option<&ChildTable>, now: Instant) -> Vec<Observed> {
        let snapshot = children.map(ChildTable::snapshot).unwrap_or_default();
        let live: Vec<String> = children
            .map(|c| c.live_children(now, self.control.report_interval, self.control.silent_after))
            .unwrap_or_default();
        self.gateways
            .children
            .iter()
            .map(|g| {
                let state = snapshot.get(&g.name);
                let report = state.and_then(|s| s.last_report.as_ref());
                let is_live = live.contains(&g.name);
                let rtt_ms = self.rtt.get(&g.name);
                let reports = state.map_or(0, |s| s.reports);
                Observed {
                    input: ChildInput {
                        name: g.name.clone(),
                        labels: g.labels.clone(),
                        static_cost: g.cost,
                        rtt_ms,
                        live: is_live,
                        report_seq: reports,
                        report: report
                            .map(|r| {
                                r.subnets
                                    .iter()
                                    .map(|l| (to_cidr(&l.subnet), l.metrics.clone()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                    row: ChildRow {
                        name: g.name.clone(),
                        address: g.address.to_string(),
                        cost: g.cost,
                        rtt_ms,
                        level: state.map(|s| s.level.clone()),
                        live: is_live,
                        health: None,
                        report_age_ms: report
                            .map(|r| now.saturating_duration_since(r.received).as_millis() as u64),
                        reports,
                        last_report: report
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
                    },
                }
            })
            .collect()
    }

    /// The virtual subnets this router routes by cost, with their priority classes.
    fn served_subnets(&self) -> Vec<ServedSubnet> {
        self.cfg
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
            .collect()
    }
}

/// One child as a rebuild sees it: the builder's input and the inspection row.
struct Observed {
    input: ChildInput,
    row: ChildRow,
}

/// The built table, entry by entry, as `slr ctl R table` shows it.
fn table_rows(out: &slr_policy::BuildOutput) -> Vec<TableRow> {
    out.table
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
        .collect()
}
