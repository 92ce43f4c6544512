//! Gateway tables fetched over HTTPS from a network configuration site.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use slr_control::{serve_gateway_site, FetchError, FetcherConfig, GatewayFetcher};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TABLE_V1: &str = r#"{"version": 1, "children": [
  {"name": "as1", "address": "10.200.3.2", "subnets": ["10.99.0.0/16"], "cost": 10.0, "labels": {"region": "east"}}
]}"#;
const TABLE_V2: &str = r#"{"version": 2, "children": [
  {"name": "as1", "address": "10.200.3.2", "subnets": ["10.99.0.0/16"], "cost": 10.0},
  {"name": "as2", "address": "10.200.4.2", "subnets": ["10.99.0.0/16"], "cost": 20.0}
]}"#;

struct Site {
    addr: SocketAddr,
    file: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_site(pki: &Pki, name: &str, content: &str) -> Site {
    let file = pki.dir.path().join("gateways.json");
    std::fs::write(&file, content).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let identity = pki.identity(name);
    let (stop, stopped) = oneshot::channel::<()>();
    let served = file.clone();
    let task = tokio::spawn(async move {
        serve_gateway_site(served, listener, &identity, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Site {
        addr,
        file,
        stop,
        task,
    }
}

impl Site {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn fetcher(pki: &Pki, addr: SocketAddr, server_name: &str) -> GatewayFetcher {
    let mut config = FetcherConfig::new(addr, server_name);
    config.timeout = Duration::from_secs(2);
    config.refresh = Duration::from_millis(20);
    GatewayFetcher::new(&pki.identity("as1"), config).unwrap()
}

#[tokio::test]
async fn fetch_ok_then_unreachable_and_garbage_keep_the_last_good_table() {
    let pki = Pki::new();
    let site = start_site(&pki, "gw", TABLE_V1).await;
    let fetcher = fetcher(&pki, site.addr, "gw");
    let counters = fetcher.counters();
    let mut updates = fetcher.subscribe();

    assert_eq!(fetcher.fetch_once().await, Ok(true));
    assert!(updates.has_changed().unwrap());
    let table = updates.borrow_and_update().clone().unwrap();
    assert_eq!(table.version, 1);
    assert_eq!(table.get("as1").unwrap().labels["region"], "east");
    // The same table again: no change.
    assert_eq!(fetcher.fetch_once().await, Ok(false));
    assert!(!updates.has_changed().unwrap());
    assert_eq!((counters.fetches_ok(), counters.changes()), (2, 1));

    // Garbage in the file: the site answers 500, the fetcher keeps version 1.
    std::fs::write(&site.file, "{ this is not a table").unwrap();
    assert!(matches!(
        fetcher.fetch_once().await,
        Err(FetchError::Invalid(_))
    ));
    // A well-formed JSON that is not a valid table.
    std::fs::write(&site.file, r#"{"version": 9, "children": [{"name": "x"}]}"#).unwrap();
    assert!(matches!(
        fetcher.fetch_once().await,
        Err(FetchError::Invalid(_))
    ));
    assert_eq!(counters.fetch_errors_invalid(), 2);
    assert_eq!(fetcher.table().unwrap().version, 1);
    assert!(!updates.has_changed().unwrap());

    // A new good table.
    std::fs::write(&site.file, TABLE_V2).unwrap();
    assert_eq!(fetcher.fetch_once().await, Ok(true));
    assert_eq!(fetcher.table().unwrap().children.len(), 2);

    // The site goes away: unreachable, version 2 kept.
    site.stop().await;
    let error = fetcher.fetch_once().await.unwrap_err();
    assert!(matches!(error, FetchError::Unreachable(_)), "{error}");
    assert_eq!(counters.fetch_errors_unreachable(), 1);
    assert_eq!(fetcher.table().unwrap().version, 2);
    assert_eq!((counters.fetches_ok(), counters.changes()), (3, 2));

    // Nothing listening at all.
    let closed = fetcher_for_closed_port(&pki).await;
    assert!(matches!(
        closed.fetch_once().await,
        Err(FetchError::Unreachable(_))
    ));
}

async fn fetcher_for_closed_port(pki: &Pki) -> GatewayFetcher {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    fetcher(pki, addr, "gw")
}

#[tokio::test]
async fn site_with_another_name_is_unreachable() {
    let pki = Pki::new();
    let site = start_site(&pki, "evil", TABLE_V1).await;
    let fetcher = fetcher(&pki, site.addr, "gw");
    let error = fetcher.fetch_once().await.unwrap_err();
    assert!(
        matches!(&error, FetchError::Unreachable(m) if m.contains("TLS")),
        "{error}"
    );
    assert!(fetcher.table().is_none());
    site.stop().await;
}

#[tokio::test]
async fn run_publishes_changes() {
    let pki = Pki::new();
    let site = start_site(&pki, "gw", TABLE_V1).await;
    let fetcher = std::sync::Arc::new(fetcher(&pki, site.addr, "gw"));
    let mut updates = fetcher.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = fetcher.clone();
    let task = tokio::spawn(async move {
        running
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updates.borrow_and_update().as_ref().unwrap().version, 1);
    std::fs::write(&site.file, TABLE_V2).unwrap();
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updates.borrow_and_update().as_ref().unwrap().version, 2);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    site.stop().await;
}

#[tokio::test]
async fn site_answers_404_elsewhere() {
    let pki = Pki::new();
    let site = start_site(&pki, "gw", TABLE_V1).await;
    let mut config = FetcherConfig::new(site.addr, "gw");
    config.path = "/other".into();
    let fetcher = GatewayFetcher::new(&pki.identity("as1"), config).unwrap();
    let error = fetcher.fetch_once().await.unwrap_err();
    assert!(
        matches!(&error, FetchError::Invalid(m) if m.contains("404")),
        "{error}"
    );
    site.stop().await;
}
