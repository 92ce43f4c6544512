//! A host agent's control thread: reporters of its own load to its parents.

use super::common::{identity, to_subnet, until_stopped, ControlThread};
use super::view::{lock, ControlView, SharedView};
use anyhow::Result;
use slr_config::ControlConfig;
use slr_control::{Reporter, SubnetLoad};
use slr_wire::Ipv4Cidr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The host's load per virtual subnet, named metrics each: what a sample reports.
pub type LoadReport = Vec<(Ipv4Cidr, BTreeMap<String, f64>)>;

/// Starts a host agent's reporters (None without `[control]`). `sample` measures the host's
/// load since its previous call; one sample serves every parent of an interval.
pub fn start_host(
    name: &str,
    control: Option<&ControlConfig>,
    subnets: &[Ipv4Cidr],
    sample: impl FnMut() -> LoadReport + Send + 'static,
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
    let sampler = Arc::new(Mutex::new(sample));
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
                                let report =
                                    (*sampler.lock().unwrap_or_else(PoisonError::into_inner))();
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
        signals: None,
    }))
}
