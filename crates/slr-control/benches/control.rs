//! Benchmarks of the state update protocol.
//!
//! - `handle_report`: the parent's decision path alone ([`ParentState::handle_report`]: session,
//!   authorization, validation of 10 subnets x 3 metrics, delivery to the child table).
//! - `report_rpc`: the full path, gRPC over loopback mutual TLS: 20 children send reports of
//!   10 subnets x 3 metrics concurrently to a parent whose runtime has **one thread** (so the
//!   rate is per core of the parent; the children run on another runtime).
//! - Printed first: control bytes on the wire per report (TCP payload: TLS records and HTTP/2
//!   frames included), steady state, for 1, 10 and 100 subnets.
//!
//! `cargo bench -p slr-control --bench control`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput};
use slr_control::proto::state_update_client::StateUpdateClient;
use slr_control::proto::{HelloRequest, ReportRequest};
use slr_control::reporter::report_request;
use slr_control::{
    create_ca, issue, ExpectedChildren, Identity, ParentConfig, ParentServer, ParentState,
    PeerInfo, Reporter, Subnet, SubnetLoad,
};
use tonic::transport::Channel;

const CHILDREN: usize = 20;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        create_ca(
            &dir.path().join("ca"),
            "bench CA",
            Duration::from_secs(86400),
        )
        .unwrap();
        Pki { dir }
    }

    fn identity(&self, name: &str) -> Identity {
        let now = SystemTime::now();
        let ca = self.dir.path().join("ca");
        let files = issue(
            &ca,
            name,
            self.dir.path(),
            now - Duration::from_secs(60),
            now + Duration::from_secs(86400),
        )
        .unwrap();
        Identity::load(&ca.join("ca.pem"), &files.cert, &files.key).unwrap()
    }
}

fn child_name(i: usize) -> String {
    format!("c{i}")
}

fn child_subnet(i: usize) -> Subnet {
    format!("10.{}.0.0/16", 100 + i).parse().unwrap()
}

fn expected() -> ExpectedChildren {
    let expected = ExpectedChildren::new();
    for i in 0..CHILDREN {
        expected.insert(child_name(i), vec![child_subnet(i)]);
    }
    expected
}

/// A load of `n` subnets inside child `i`'s /16, 3 metrics each.
fn load(i: usize, n: usize) -> Vec<SubnetLoad> {
    let base = u32::from(child_subnet(i).network());
    (0..n)
        .map(|k| {
            let len = if n <= 256 { 24 } else { 32 };
            let shift = if len == 24 { 8 } else { 0 };
            let subnet = Subnet::new((base + ((k as u32) << shift)).into(), len).unwrap();
            SubnetLoad::new(
                subnet,
                [("cpu", 0.42 + k as f64), ("flows", 1234.0), ("load", 0.7)],
            )
        })
        .collect()
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        child_name: name.into(),
        level: "site".into(),
        software_version: "bench".into(),
        subnets: vec![],
    }
}

/// A parent on 127.0.0.1 served by a one-thread runtime on its own OS thread.
fn start_parent(pki: &Pki) -> SocketAddr {
    let server =
        ParentServer::new(&pki.identity("net"), ParentConfig::default(), expected()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

struct Child {
    client: StateUpdateClient<Channel>,
    session_id: u64,
    sequence: u64,
    counters: Arc<slr_control::ReporterCounters>,
}

async fn connect_child(pki: &Pki, addr: SocketAddr, i: usize) -> Child {
    let name = child_name(i);
    let reporter = Reporter::new(&pki.identity(&name), "net", addr, &name, "site").unwrap();
    let counters = reporter.counters();
    let mut client = reporter.connect().await.unwrap();
    let session_id = client
        .hello(hello(&name))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    Child {
        client,
        session_id,
        sequence: 0,
        counters,
    }
}

impl Child {
    async fn report(&mut self, request: &mut ReportRequest) {
        self.sequence += 1;
        request.session_id = self.session_id;
        request.sequence = self.sequence;
        let reply = self
            .client
            .report(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(reply.refused.is_empty());
    }
}

fn print_wire_bytes(rt: &tokio::runtime::Runtime, pki: &Pki, addr: SocketAddr) {
    println!(
        "control bytes on the wire per report (steady state, TCP payload incl. TLS + HTTP/2):"
    );
    for n in [1usize, 10, 100] {
        rt.block_on(async {
            let mut child = connect_child(pki, addr, 0).await;
            let mut request = report_request(0, 0, load(0, n));
            for _ in 0..20 {
                child.report(&mut request).await;
            }
            let (up0, down0) = (child.counters.bytes_sent(), child.counters.bytes_received());
            const N: u64 = 50;
            for _ in 0..N {
                child.report(&mut request).await;
            }
            let up = (child.counters.bytes_sent() - up0) as f64 / N as f64;
            let down = (child.counters.bytes_received() - down0) as f64 / N as f64;
            let payload = prost::Message::encoded_len(&request);
            println!(
                "  {n:>3} subnets x 3 metrics: child->parent {up:>7.1} B, parent->child {down:>5.1} B, total {:>7.1} B per interval (protobuf payload {payload} B)",
                up + down
            );
        });
    }
}

fn main() {
    let pki = Pki::new();
    let addr = start_parent(&pki);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    print_wire_bytes(&rt, &pki, addr);

    let mut criterion = Criterion::default().configure_from_args();

    // The decision path alone.
    let state = ParentState::new(ParentConfig::default(), expected());
    let peer = PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        names: vec![child_name(0)].into(),
    };
    let session_id = state
        .handle_hello(&peer, &hello(&child_name(0)), Instant::now())
        .unwrap()
        .session_id;
    let mut request = report_request(session_id, 0, load(0, 10));
    let mut group = criterion.benchmark_group("parent");
    group.throughput(Throughput::Elements(1));
    group.bench_function("handle_report_10x3", |b| {
        b.iter(|| {
            request.sequence += 1;
            state
                .handle_report(&peer, &request, Instant::now())
                .unwrap()
        })
    });

    // The full RPC path, 20 concurrent children.
    let children: Vec<Child> = rt.block_on(async {
        connect_sequentially((0..CHILDREN).map(|i| connect_child(&pki, addr, i))).await
    });
    let children = Arc::new(tokio::sync::Mutex::new(children));
    group.bench_function("report_rpc_10x3_20_children", |b| {
        b.iter_custom(|iters| {
            let children = children.clone();
            rt.block_on(async move {
                let mut children = children.lock().await;
                let per_child = iters.div_ceil(CHILDREN as u64);
                let start = Instant::now();
                let mut tasks = Vec::new();
                for (i, mut child) in children.drain(..).enumerate() {
                    tasks.push(tokio::spawn(async move {
                        let mut request = report_request(0, 0, load(i, 10));
                        for _ in 0..per_child {
                            child.report(&mut request).await;
                        }
                        child
                    }));
                }
                for task in tasks {
                    children.push(task.await.unwrap());
                }
                // Scale to exactly `iters` reports.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_child * CHILDREN as u64) as f64)
            })
        })
    });
    group.finish();
    criterion.final_summary();
}

async fn connect_sequentially<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
