//! The child side over real sockets: reports arrive every interval, the reporter reconnects
//! after the parent restarts, and it checks the parent's name.

mod common;

use std::time::Duration;

use common::*;
use slr_control::{ParentConfig, Reporter, ReporterConfig, Subnet, SubnetLoad};
use tokio::sync::oneshot;

fn fast_parent() -> ParentConfig {
    ParentConfig {
        report_interval: Duration::from_millis(20),
        ..ParentConfig::default()
    }
}

fn fast_reporter() -> ReporterConfig {
    ReporterConfig {
        subnets: vec!["10.99.0.0/16".parse().unwrap()],
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ReporterConfig::default()
    }
}

fn source() -> impl FnMut() -> Vec<SubnetLoad> + Send {
    let subnet: Subnet = "10.99.0.0/16".parse().unwrap();
    let mut flows = 0.0;
    move || {
        flows += 1.0;
        vec![SubnetLoad::new(subnet, [("flows", flows), ("cpu", 0.5)])]
    }
}

#[tokio::test]
async fn reporter_reports_and_reconnects_after_the_parent_restarts() {
    let pki = Pki::new();
    let children: &[(&str, &[&str])] = &[("site-a", &["10.99.0.0/16"])];
    let parent = Parent::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        children,
        fast_parent(),
    )
    .await;
    let addr = parent.addr;

    let reporter = Reporter::new(&pki.identity("site-a"), "net", addr, "site-a", "site")
        .unwrap()
        .with_config(fast_reporter());
    let counters = reporter.counters();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(reporter.run(source(), async {
        let _ = stopped.await;
    }));

    let table = parent.table.clone();
    wait_until("3 reports", || {
        table.get("site-a").is_some_and(|s| s.reports >= 3)
    })
    .await;
    let state = table.get("site-a").unwrap();
    assert_eq!(state.level, "site");
    let last = state.last_report.unwrap();
    assert_eq!(last.subnets[0].metrics["cpu"], 0.5);
    assert!(last.subnets[0].metrics["flows"] >= 3.0);
    assert!(counters.connected());
    assert!(counters.bytes_sent() > 0);
    assert_eq!(counters.failures(), 0);

    parent.stop().await;
    wait_until("a failure", || counters.failures() >= 1).await;
    assert!(!counters.connected());
    assert!(counters.last_error().is_some());

    // A new parent on the same address: the reporter says hello again and reports.
    let parent = Parent::start(&pki, addr, children, fast_parent()).await;
    let table = parent.table.clone();
    wait_until("reports to the new parent", || {
        table.get("site-a").is_some_and(|s| s.reports >= 2)
    })
    .await;
    assert!(counters.hellos() >= 2);
    assert!(counters.connected());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    parent.stop().await;
}

#[tokio::test]
async fn reporter_refuses_a_parent_with_another_name() {
    let pki = Pki::new();
    let children: &[(&str, &[&str])] = &[("site-a", &["10.99.0.0/16"])];
    let parent = Parent::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        children,
        fast_parent(),
    )
    .await;
    // The parent's certificate says "net"; this reporter expects "as1".
    let reporter = Reporter::new(
        &pki.identity("site-a"),
        "as1",
        parent.addr,
        "site-a",
        "site",
    )
    .unwrap()
    .with_config(fast_reporter());
    let counters = reporter.counters();
    let task = tokio::spawn(reporter.run(source(), std::future::pending()));
    wait_until("two failures", || counters.failures() >= 2).await;
    let error = counters.last_error().unwrap();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(counters.hellos(), 0);
    assert!(parent.table.get("site-a").is_none());
    task.abort();
    parent.stop().await;
}

#[tokio::test]
async fn reporter_with_a_foreign_subnet_keeps_reporting_the_rest() {
    let pki = Pki::new();
    let children: &[(&str, &[&str])] = &[("site-a", &["10.99.0.0/24"])];
    let parent = Parent::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        children,
        fast_parent(),
    )
    .await;
    let reporter = Reporter::new(
        &pki.identity("site-a"),
        "net",
        parent.addr,
        "site-a",
        "site",
    )
    .unwrap()
    .with_config(fast_reporter());
    let counters = reporter.counters();
    let own: Subnet = "10.99.0.0/24".parse().unwrap();
    let foreign: Subnet = "10.98.0.0/24".parse().unwrap();
    let task = tokio::spawn(reporter.run(
        move || {
            vec![
                SubnetLoad::new(own, [("load", 1.0)]),
                SubnetLoad::new(foreign, [("load", 1.0)]),
            ]
        },
        std::future::pending(),
    ));
    let table = parent.table.clone();
    wait_until("2 reports", || {
        table.get("site-a").is_some_and(|s| s.reports >= 2)
    })
    .await;
    let subnets = table.get("site-a").unwrap().last_report.unwrap().subnets;
    assert_eq!(subnets.len(), 1);
    assert_eq!(subnets[0].subnet, own);
    // The reporter learns of the refusals from the replies, just after the parent's table.
    wait_until("2 refusals", || counters.subnets_refused() >= 2).await;
    assert_eq!(counters.failures(), 0);
    task.abort();
    parent.stop().await;
}
