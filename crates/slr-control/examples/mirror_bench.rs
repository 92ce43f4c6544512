//! Benchmark of flow mirroring (issue 12, docs/BENCHMARKS.md): a `MirrorServer` on a runtime of
//! one thread (the receiving router's core) and a `MirrorSender` on another, over loopback
//! mutual TLS, in one process.
//!
//! 1. **Rate**: `FLOWS` pinned flows pushed as fast as the sender batches them: flows per second
//!    through the receiver's core, and the receiver's CPU per flow (its runtime thread's CPU
//!    time, from /proc).
//! 2. **Bytes per flow** on the wire (TLS records and HTTP/2 frames included), from the same run.
//! 3. **Lag at a paced rate**: `RATE` new flows per second for 5 s (one change every 1/RATE s,
//!    as a router pinning new flows would hand them over), with the mean and largest lag from
//!    the sender's clock at sending to the receiver's at receiving.
//!
//! `cargo run --release -p slr-control --example mirror_bench -- [FLOWS=1000000] [RATE=10000]`

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slr_control::{
    MirrorChange, MirrorSender, MirrorSenderConfig, MirrorServer, MirrorServerConfig,
};
use tokio::sync::mpsc;

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().map_or(1_000_000, |a| a.parse().expect("FLOWS"));
    let rate: u32 = args.next().map_or(10_000, |a| a.parse().expect("RATE"));
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = common::two_routers(dir.path());

    // The receiver: one runtime thread, whose CPU time is measured.
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = MirrorServer::new(&r2, MirrorServerConfig::new(vec!["r1".into()])).unwrap();
    let stats = server.stats();
    let received = Arc::new(AtomicU64::new(0));
    let server_tid = Arc::new(AtomicU64::new(0));
    {
        let (received, server_tid) = (received.clone(), server_tid.clone());
        std::thread::spawn(move || {
            // This thread's id, for its CPU time in /proc.
            server_tid.store(common::tid(), Ordering::Relaxed);
            server_rt.block_on(async move {
                let (tx, mut rx) = mpsc::channel(1024);
                tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        let b: slr_control::ReceivedBatch = b;
                        received.fetch_add(b.changes.len() as u64, Ordering::Relaxed);
                    }
                });
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
    let sender = MirrorSender::new(&r1, "r1", "r2", addr, MirrorSenderConfig::default()).unwrap();
    let sstats = sender.stats();
    let (tx, rx) = mpsc::channel::<MirrorChange>(1 << 20);
    client_rt.spawn(sender.run(Vec::new, rx));
    while !sstats.connected() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tid = server_tid.load(Ordering::Relaxed);
    let hop = Ipv4Addr::new(10, 200, 4, 2);

    // 1 and 2: as fast as it goes.
    let (cpu0, bytes0, t0) = (common::thread_cpu(tid), sstats.bytes_sent(), Instant::now());
    let feeder = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for i in 0..flows {
                tx.blocking_send(MirrorChange::Pinned(common::flow(i), hop))
                    .unwrap();
            }
        })
    };
    while received.load(Ordering::Relaxed) < u64::from(flows) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t0.elapsed();
    feeder.join().unwrap();
    let cpu = common::thread_cpu(tid) - cpu0;
    let bytes = sstats.bytes_sent() - bytes0;
    println!(
        "rate: {flows} flows mirrored in {took:.2?}: {:.0} flows/s; receiver's core {:.2?} CPU = {:.0} ns per flow ({:.0} flows per CPU-second); {:.1} bytes per flow on the wire ({} batches)",
        f64::from(flows) / took.as_secs_f64(),
        cpu,
        cpu.as_nanos() as f64 / f64::from(flows),
        f64::from(flows) / cpu.as_secs_f64().max(1e-9),
        bytes as f64 / f64::from(flows),
        stats.batches()
    );

    // 3: paced.
    let batches0 = stats.batches();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let n = rate * 5;
    let (cpu0, t0) = (common::thread_cpu(tid), Instant::now());
    let start = received.load(Ordering::Relaxed);
    let mut lags = Vec::new();
    let mut next = Instant::now();
    for i in 0..n {
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        tx.blocking_send(MirrorChange::Pinned(common::flow(flows + i), hop))
            .unwrap();
        if i % 97 == 0 {
            lags.push(stats.last_lag());
        }
    }
    while received.load(Ordering::Relaxed) < start + u64::from(n) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let cpu = common::thread_cpu(tid) - cpu0;
    lags.sort();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize];
    println!(
        "paced: {n} flows at {rate}/s in {:.2?}, {} batches: lag of the last batch, sampled every 97 flows: median {:.2?}, p99 {:.2?}, max {:.2?}; receiver's core {:.1} % busy",
        t0.elapsed(),
        stats.batches() - batches0,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        100.0 * cpu.as_secs_f64() / t0.elapsed().as_secs_f64()
    );
}
