//! WHOHAS over mutual TLS (F17c): a peer that holds a flow answers with its next hop and its own
//! tunnel address; nobody holding it, a foreign flow and a dead peer give `Nobody` without
//! stalling the question; strangers, other CAs and liars are refused and counted; a flood is
//! rate-limited per peer.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use slr_control::{
    FlowReply, Found, MirrorFlow, MirrorServer, MirrorServerConfig, ParentCounters, Refusal,
    WhohasAsker, WhohasAskerConfig, WhohasRequest, WhohasServerConfig, WhohasServerStats,
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

struct Answerer {
    addr: SocketAddr,
    counters: Arc<ParentCounters>,
    stats: Arc<WhohasServerStats>,
    stop: oneshot::Sender<()>,
}

/// A router `name` holding `held` (flow port -> next hop), whose tunnel address is `me`, that
/// accepts `peers`; flows to outside 10.99.0.0/24 are foreign to it.
async fn start_answerer(
    pki: &Pki,
    name: &str,
    peers: &[&str],
    me: Ipv4Addr,
    held: HashMap<u16, Ipv4Addr>,
    config: WhohasServerConfig,
) -> Answerer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MirrorServer::new(
        &pki.identity(name),
        MirrorServerConfig::new(peers.iter().map(|p| p.to_string()).collect()),
    )
    .unwrap();
    let (requests, mut questions) = mpsc::channel::<WhohasRequest>(64);
    let (server, stats) = server.with_whohas(config, requests);
    let counters = server.counters();
    tokio::spawn(async move {
        while let Some(q) = questions.recv().await {
            let answers = q
                .flows
                .iter()
                .map(|f| {
                    if f.dst.octets()[..3] != [10, 99, 0] {
                        FlowReply::Foreign
                    } else {
                        held.get(&f.src_port)
                            .map_or(FlowReply::NotHeld, |h| FlowReply::Held(*h))
                    }
                })
                .collect();
            let _ = q.reply.send((answers, me));
        }
    });
    let (batches, _unused) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .serve(listener, batches, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Answerer {
        addr,
        counters,
        stats,
        stop,
    }
}

const H1: Ipv4Addr = Ipv4Addr::new(10, 200, 4, 1);
const H2: Ipv4Addr = Ipv4Addr::new(10, 200, 4, 2);
const R2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
const R3: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 3);

#[tokio::test]
async fn holders_answer_nobody_and_dead_peers_do_not_stall() {
    let pki = Pki::new();
    let r2 = start_answerer(
        &pki,
        "r2",
        &["r1"],
        R2,
        HashMap::from([(1000, H1)]),
        WhohasServerConfig::default(),
    )
    .await;
    let r3 = start_answerer(
        &pki,
        "r3",
        &["r1"],
        R3,
        HashMap::from([(2000, H2), (1000, H2)]),
        WhohasServerConfig::default(),
    )
    .await;
    // A peer that is gone: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let asker = WhohasAsker::new(
        &pki.identity("r1"),
        "r1",
        &[
            ("r4".to_string(), dead_addr),
            ("r2".to_string(), r2.addr),
            ("r3".to_string(), r3.addr),
        ],
        WhohasAskerConfig {
            timeout: Duration::from_secs(2),
            ..WhohasAskerConfig::default()
        },
    )
    .unwrap();
    let mut foreign = flow(3000);
    foreign.dst = Ipv4Addr::new(10, 98, 0, 1);
    let flows = [flow(1000), flow(2000), flow(2500), foreign];
    let t = Instant::now();
    let found = asker.ask(&flows).await;
    assert_eq!(
        found,
        vec![
            // Both hold it: the first peer in configured order that answers wins.
            Found::Held {
                next_hop: H1,
                holder: R2
            },
            Found::Held {
                next_hop: H2,
                holder: R3
            },
            Found::Nobody,
            Found::Nobody,
        ]
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the dead peer fails fast: {:?}",
        t.elapsed()
    );
    let stats = asker.stats();
    assert_eq!(stats[0].0, "r4");
    assert_eq!(stats[0].1.failures(), 1);
    assert!(!stats[0].1.connected() && stats[1].1.connected() && stats[2].1.connected());
    // Asked again: the dead peer is skipped, the others answer.
    let found = asker.ask(&flows[..1]).await;
    assert_eq!(
        found,
        vec![Found::Held {
            next_hop: H1,
            holder: R2
        }]
    );
    assert_eq!(stats[0].1.skipped(), 1);
    assert_eq!(stats[0].1.failures(), 1, "a skip is not a failure");
    // After the skip, the dead peer is tried again (and fails again).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    asker.ask(&flows[..1]).await;
    assert_eq!((stats[0].1.failures(), stats[0].1.skipped()), (2, 1));
    assert_eq!((stats[1].1.questions(), stats[1].1.flows_held()), (3, 3));
    assert_eq!(r2.stats.flows_asked(), 6);
    assert_eq!(r3.counters.refused(Refusal::ForeignSubnet), 1);
    let _ = r2.stop.send(());
    let _ = r3.stop.send(());
}

#[tokio::test]
async fn strangers_other_cas_and_liars_are_refused_and_floods_limited() {
    let pki = Pki::new();
    let r2 = start_answerer(
        &pki,
        "r2",
        &["r1"],
        R2,
        HashMap::from([(1000, H1)]),
        WhohasServerConfig {
            rate: 10.0,
            burst: 100.0,
            ..WhohasServerConfig::default()
        },
    )
    .await;
    let ask = |identity, me: &str| {
        WhohasAsker::new(
            &identity,
            me,
            &[("r2".to_string(), r2.addr)],
            WhohasAskerConfig {
                timeout: Duration::from_secs(2),
                ..WhohasAskerConfig::default()
            },
        )
        .unwrap()
    };
    // Not a configured peer; another CA's r1; r3's certificate claiming r1.
    for asker in [
        ask(pki.identity("r3"), "r3"),
        ask(pki.foreign_identity("r1"), "r1"),
        ask(pki.identity("r3"), "r1"),
    ] {
        assert_eq!(asker.ask(&[flow(1000)]).await, vec![Found::Nobody]);
        assert_eq!(asker.stats()[0].1.failures(), 1);
    }
    assert_eq!(r2.counters.refused(Refusal::UnexpectedName), 2);
    assert!(r2.counters.refused(Refusal::UnknownCa) >= 1);
    assert_eq!(
        r2.stats.flows_asked(),
        0,
        "nothing refused reaches the router"
    );
    // The real r1: a flood of 300 flows against a bucket of 100 (10/s).
    let r1 = ask(pki.identity("r1"), "r1");
    let flows: Vec<_> = (1000..1300).map(flow).collect();
    let found = r1.ask(&flows).await;
    assert_eq!(
        found[0],
        Found::Held {
            next_hop: H1,
            holder: R2
        }
    );
    assert!(found[100..].iter().all(|f| *f == Found::Nobody));
    assert_eq!(r2.counters.refused(Refusal::RateLimited), 200);
    let _ = r2.stop.send(());
}
