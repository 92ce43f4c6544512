//! Flow mirroring over mutual TLS (F17b): a sender's full sync and changes reach the peer in
//! order; a router of another CA, or one that is not a configured peer, is refused and counted;
//! a sender reconnects and syncs again after the peer comes back.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use slr_control::{
    MirrorChange, MirrorFlow, MirrorSender, MirrorSenderConfig, MirrorServer, MirrorServerConfig,
    ReceivedBatch, Refusal,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

fn flow(port: u16) -> MirrorFlow {
    MirrorFlow {
        src: Ipv4Addr::new(10, 200, 1, 2),
        dst: Ipv4Addr::new(10, 99, 0, 1),
        src_port: port,
        dst_port: 80,
        protocol: 6,
    }
}

const HOP: Ipv4Addr = Ipv4Addr::new(10, 200, 4, 2);

struct Receiver {
    addr: SocketAddr,
    batches: mpsc::Receiver<ReceivedBatch>,
    counters: std::sync::Arc<slr_control::ParentCounters>,
    stats: std::sync::Arc<slr_control::MirrorServerStats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_receiver(pki: &Pki, name: &str, peers: &[&str], at: Option<SocketAddr>) -> Receiver {
    let listener = TcpListener::bind(at.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MirrorServer::new(
        &pki.identity(name),
        MirrorServerConfig::new(peers.iter().map(|p| p.to_string()).collect()),
    )
    .unwrap();
    let (counters, stats) = (server.counters(), server.stats());
    let (tx, batches) = mpsc::channel(64);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, tx, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Receiver {
        addr,
        batches,
        counters,
        stats,
        stop,
        task,
    }
}

async fn next(r: &mut Receiver) -> ReceivedBatch {
    tokio::time::timeout(Duration::from_secs(5), r.batches.recv())
        .await
        .expect("a batch within 5 s")
        .expect("the server runs")
}

#[tokio::test]
async fn full_sync_then_changes_in_order() {
    let pki = Pki::new();
    let mut r2 = start_receiver(&pki, "r2", &["r1"], None).await;
    let sender = MirrorSender::new(
        &pki.identity("r1"),
        "r1",
        "r2",
        r2.addr,
        MirrorSenderConfig::default(),
    )
    .unwrap();
    let stats = sender.stats();
    let (tx, rx) = mpsc::channel(1024);
    let held = vec![(flow(1000), HOP), (flow(1001), HOP)];
    let task = tokio::spawn(sender.run(move || held.clone(), rx));

    let sync = next(&mut r2).await;
    assert!(sync.full_sync);
    assert_eq!(sync.from, "r1");
    assert_eq!(
        sync.changes,
        vec![
            MirrorChange::Pinned(flow(1000), HOP),
            MirrorChange::Pinned(flow(1001), HOP)
        ]
    );
    wait_until("the sender is connected", || stats.connected()).await;

    tx.send(MirrorChange::Pinned(flow(2000), HOP))
        .await
        .unwrap();
    tx.send(MirrorChange::Released(flow(1000))).await.unwrap();
    // Pinned and released within one batch: only the release is sent.
    tx.send(MirrorChange::Pinned(flow(3000), HOP))
        .await
        .unwrap();
    tx.send(MirrorChange::Released(flow(3000))).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let b = next(&mut r2).await;
        assert!(!b.full_sync);
        assert!(b.lag < Duration::from_secs(1), "lag {:?}", b.lag);
        got.extend(b.changes);
    }
    assert!(got.contains(&MirrorChange::Pinned(flow(2000), HOP)));
    assert!(got.contains(&MirrorChange::Released(flow(1000))));
    assert!(got.contains(&MirrorChange::Released(flow(3000))));
    assert!(!got.contains(&MirrorChange::Pinned(flow(3000), HOP)));
    assert_eq!(r2.stats.changes(), 5);
    assert!(stats.bytes_sent() > 0);

    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let _ = r2.stop.send(());
    let _ = r2.task.await;
}

#[tokio::test]
async fn strangers_and_other_cas_are_refused_and_counted() {
    let pki = Pki::new();
    let mut r2 = start_receiver(&pki, "r2", &["r1"], None).await;
    // A router of the operator CA that is not a configured peer.
    let (tx3, rx3) = mpsc::channel(16);
    let r3 = MirrorSender::new(
        &pki.identity("r3"),
        "r3",
        "r2",
        r2.addr,
        MirrorSenderConfig::default(),
    )
    .unwrap();
    let r3_stats = r3.stats();
    let t3 = tokio::spawn(r3.run(move || vec![(flow(7), HOP)], rx3));
    // A router claiming to be r1 with a certificate of another CA.
    let (tx4, rx4) = mpsc::channel(16);
    let forged = MirrorSender::new(
        &pki.foreign_identity("r1"),
        "r1",
        "r2",
        r2.addr,
        MirrorSenderConfig::default(),
    )
    .unwrap();
    let forged_stats = forged.stats();
    let t4 = tokio::spawn(forged.run(move || vec![(flow(8), HOP)], rx4));
    // A sender that names itself r1 with r3's certificate.
    let (tx5, rx5) = mpsc::channel(16);
    let liar = MirrorSender::new(
        &pki.identity("r3"),
        "r1",
        "r2",
        r2.addr,
        MirrorSenderConfig::default(),
    )
    .unwrap();
    let t5 = tokio::spawn(liar.run(move || vec![(flow(9), HOP)], rx5));

    wait_until("refusals counted", || {
        r2.counters.refused(Refusal::UnexpectedName) >= 2
            && r2.counters.refused(Refusal::UnknownCa) >= 1
    })
    .await;
    wait_until("the refused senders fail", || {
        r3_stats.failures() >= 1 && forged_stats.failures() >= 1
    })
    .await;
    assert!(!r3_stats.connected() && !forged_stats.connected());
    assert!(
        r2.batches.try_recv().is_err(),
        "nothing refused reaches the router"
    );
    assert_eq!(r2.stats.changes(), 0);
    drop((tx3, tx4, tx5));
    for t in [t3, t4, t5] {
        t.abort();
    }
    let _ = r2.stop.send(());
    let _ = r2.task.await;
}

#[tokio::test]
async fn a_sender_syncs_again_after_the_peer_comes_back() {
    let pki = Pki::new();
    let r2 = start_receiver(&pki, "r2", &["r1"], None).await;
    let addr = r2.addr;
    let config = MirrorSenderConfig {
        backoff_min: Duration::from_millis(20),
        ..MirrorSenderConfig::default()
    };
    let sender = MirrorSender::new(&pki.identity("r1"), "r1", "r2", addr, config).unwrap();
    let stats = sender.stats();
    let (tx, rx) = mpsc::channel(1024);
    let held = std::sync::Arc::new(std::sync::Mutex::new(vec![(flow(1), HOP)]));
    let source = {
        let held = held.clone();
        move || held.lock().unwrap().clone()
    };
    let task = tokio::spawn(sender.run(source, rx));
    let mut r2 = r2;
    assert!(next(&mut r2).await.full_sync);
    // The peer goes away; changes meanwhile are dropped; the flow table moves on.
    let _ = r2.stop.send(());
    let _ = r2.task.await;
    drop(r2.batches);
    held.lock().unwrap().push((flow(2), HOP));
    for p in 10..20 {
        let _ = tx.send(MirrorChange::Pinned(flow(p), HOP)).await;
    }
    wait_until("the sender notices", || stats.failures() >= 1).await;
    // The peer is back on the same address: a new full sync carries what the table holds.
    let mut r2 = start_receiver(&pki, "r2", &["r1"], Some(addr)).await;
    let sync = next(&mut r2).await;
    assert!(sync.full_sync);
    assert_eq!(
        sync.changes,
        vec![
            MirrorChange::Pinned(flow(1), HOP),
            MirrorChange::Pinned(flow(2), HOP)
        ]
    );
    wait_until("the second full sync completes", || stats.full_syncs() == 2).await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let _ = r2.stop.send(());
}
