//! Benchmark of WHOHAS (issue 12, docs/BENCHMARKS.md): a router answering questions
//! (`MirrorServer::with_whohas` on a runtime of one thread, and an "answering" thread standing
//! for the packet thread, which looks each flow up in a hash map of `HELD` flows) and a
//! `WhohasAsker` on another runtime, over loopback mutual TLS, in one process.
//!
//! 1. **Latency**: `N` questions of one flow, one after the other: the time from asking to the
//!    answer (median, p99, max). In a router this is what a resolved flow's first packet waits
//!    beyond the two mailbox hops (measured in the lab: `slr ctl R status`, WHOHAS line).
//! 2. **Rate**: questions of 1024 flows from 4 tasks at once for `SECS` seconds: flows answered
//!    per second, and the answering side's CPU per flow (its runtime thread and the answering
//!    thread, from /proc): flows per CPU-second of the answering router.
//!
//! `cargo run --release -p slr-control --example whohas_bench -- [N=5000] [SECS=5] [HELD=1000000]`

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slr_control::{
    FlowReply, Found, MirrorFlow, MirrorServer, MirrorServerConfig, WhohasAsker, WhohasAskerConfig,
    WhohasRequest, WhohasServerConfig,
};
use tokio::sync::mpsc;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(5000, |a| a.parse().expect("N"));
    let secs: u64 = args.next().map_or(5, |a| a.parse().expect("SECS"));
    let held: u32 = args.next().map_or(1_000_000, |a| a.parse().expect("HELD"));
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = common::two_routers(dir.path());
    let hop = Ipv4Addr::new(10, 200, 4, 2);
    let me = Ipv4Addr::new(10, 200, 2, 2);

    // The answering router: its runtime thread, and the thread that stands for its packet
    // thread (a hash map of the flows it holds).
    let (requests, mut questions) = mpsc::channel::<WhohasRequest>(256);
    let answerer_tid = Arc::new(AtomicU64::new(0));
    {
        let answerer_tid = answerer_tid.clone();
        std::thread::spawn(move || {
            answerer_tid.store(common::tid(), Ordering::Relaxed);
            let table: HashMap<MirrorFlow, Ipv4Addr> =
                (0..held).map(|i| (common::flow(i), hop)).collect();
            while let Some(q) = questions.blocking_recv() {
                let answers = q
                    .flows
                    .iter()
                    .map(|f| {
                        table
                            .get(f)
                            .map_or(FlowReply::NotHeld, |h| FlowReply::Held(*h))
                    })
                    .collect();
                let _ = q.reply.send((answers, me));
            }
        });
    }
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MirrorServer::new(&r2, MirrorServerConfig::new(vec!["r1".into()])).unwrap();
    let config = WhohasServerConfig {
        rate: 1e9,
        burst: 1e9,
        ..WhohasServerConfig::default()
    };
    let (server, _stats) = server.with_whohas(config, requests);
    let server_tid = Arc::new(AtomicU64::new(0));
    {
        let server_tid = server_tid.clone();
        std::thread::spawn(move || {
            server_tid.store(common::tid(), Ordering::Relaxed);
            server_rt.block_on(async move {
                let (tx, _rx) = mpsc::channel(1);
                server
                    .serve(listener, tx, std::future::pending())
                    .await
                    .unwrap();
            });
        });
    }

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let asker = Arc::new(
        WhohasAsker::new(
            &r1,
            "r1",
            &[("r2".to_string(), addr)],
            WhohasAskerConfig {
                timeout: Duration::from_secs(2),
                ..WhohasAskerConfig::default()
            },
        )
        .unwrap(),
    );
    // Warm up: the connection.
    let first = client_rt.block_on(asker.ask(&[common::flow(1)]));
    assert_eq!(
        first,
        vec![Found::Held {
            next_hop: hop,
            holder: me
        }]
    );

    // 1. Latency of one question of one flow.
    let mut times = Vec::with_capacity(n);
    client_rt.block_on(async {
        for i in 0..n {
            let t = Instant::now();
            let f = asker.ask(&[common::flow(i as u32 % held)]).await;
            times.push(t.elapsed());
            assert!(matches!(f[0], Found::Held { .. }));
        }
    });
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "latency: {n} questions of one flow, one at a time: median {:.1?}, p99 {:.1?}, max {:.1?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );

    // 2. Rate: 4 tasks asking 1024 flows at a time.
    let (stid, atid) = (
        server_tid.load(Ordering::Relaxed),
        answerer_tid.load(Ordering::Relaxed),
    );
    let cpu0 = common::thread_cpu(stid) + common::thread_cpu(atid);
    let t0 = Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    client_rt.block_on(async {
        let tasks: Vec<_> = (0..4u32)
            .map(|k| {
                let (asker, answered) = (asker.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut i = k * 1_000_003;
                    while t0.elapsed() < Duration::from_secs(secs) {
                        let batch: Vec<_> =
                            (0..1024).map(|j| common::flow((i + j) % held)).collect();
                        i = i.wrapping_add(1024);
                        let found = asker.ask(&batch).await;
                        let held = found.iter().filter(|f| **f != Found::Nobody).count();
                        answered.fetch_add(held as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let took = t0.elapsed();
    let cpu = common::thread_cpu(stid) + common::thread_cpu(atid) - cpu0;
    let flows = answered.load(Ordering::Relaxed);
    println!(
        "rate: {flows} flows answered (held) in {took:.2?}: {:.0} flows/s; answering side {:.2?} CPU = {:.0} ns per flow ({:.0} flows per CPU-second; {:.0} questions of 1024 per CPU-second)",
        flows as f64 / took.as_secs_f64(),
        cpu,
        cpu.as_nanos() as f64 / flows as f64,
        flows as f64 / cpu.as_secs_f64().max(1e-9),
        flows as f64 / 1024.0 / cpu.as_secs_f64().max(1e-9),
    );
}
