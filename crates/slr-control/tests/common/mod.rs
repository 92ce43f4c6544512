//! Test helpers: a throwaway operator CA, parents on ephemeral ports, bounded waits.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use slr_control::proto::state_update_client::StateUpdateClient;
use slr_control::proto::{HelloRequest, ReportRequest};
use slr_control::{
    create_ca, issue, ChildTable, ExpectedChildren, Identity, ParentConfig, ParentCounters,
    ParentServer, Reporter,
};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const HOUR: Duration = Duration::from_secs(3600);

/// An operator CA (and a second, foreign one) in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        create_ca(&dir.path().join("ca"), "slr test operator CA", 24 * HOUR).unwrap();
        create_ca(&dir.path().join("other-ca"), "another CA", 24 * HOUR).unwrap();
        Pki { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// A node identity valid for the next hour.
    pub fn identity(&self, name: &str) -> Identity {
        let now = SystemTime::now();
        self.identity_valid(name, now - HOUR, now + HOUR)
    }

    /// A node identity with the given validity.
    pub fn identity_valid(
        &self,
        name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Identity {
        let out = self.dir.path().join(format!(
            "valid-{}",
            not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        ));
        self.issue_in(&self.ca_dir(), name, &out, not_before, not_after)
    }

    /// A node identity issued by the other CA (trusting the operator CA, to check the parent).
    pub fn foreign_identity(&self, name: &str) -> Identity {
        let now = SystemTime::now();
        let out = self.dir.path().join("foreign");
        self.issue_in(
            &self.dir.path().join("other-ca"),
            name,
            &out,
            now - HOUR,
            now + HOUR,
        )
    }

    fn issue_in(
        &self,
        ca: &Path,
        name: &str,
        out: &Path,
        nb: SystemTime,
        na: SystemTime,
    ) -> Identity {
        let files = issue(ca, name, out, nb, na).unwrap();
        Identity::load(&self.ca_pem(), &files.cert, &files.key).unwrap()
    }
}

/// A running parent.
pub struct Parent {
    pub addr: SocketAddr,
    pub table: ChildTable,
    pub counters: Arc<ParentCounters>,
    pub expected: ExpectedChildren,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Parent {
    /// Starts parent `net` on `addr` (port 0: ephemeral) expecting `children`.
    pub async fn start(
        pki: &Pki,
        addr: SocketAddr,
        children: &[(&str, &[&str])],
        config: ParentConfig,
    ) -> Parent {
        let expected = ExpectedChildren::new();
        for (name, subnets) in children {
            expected.insert(*name, subnets.iter().map(|s| s.parse().unwrap()).collect());
        }
        let server = ParentServer::new(&pki.identity("net"), config, expected).unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let table = server.child_table();
        let counters = server.counters();
        let expected = server.expected_children();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Parent {
            addr,
            table,
            counters,
            expected,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the parent and waits until its port is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("parent did not stop")
            .unwrap();
    }
}

/// A raw gRPC client of the parent at `addr` with `identity`.
pub async fn client(
    identity: &Identity,
    addr: SocketAddr,
) -> Result<StateUpdateClient<Channel>, slr_control::ControlError> {
    let reporter = Reporter::new(identity, "net", addr, identity.name(), "as").unwrap();
    reporter.connect().await
}

pub fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        child_name: name.into(),
        level: "as".into(),
        software_version: "test".into(),
        subnets: vec![],
    }
}

pub fn subnet_load(subnet: &str, metrics: &[(&str, f64)]) -> slr_control::proto::SubnetLoad {
    slr_control::proto::SubnetLoad {
        subnet: subnet.into(),
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

pub fn report(
    session_id: u64,
    sequence: u64,
    subnets: Vec<slr_control::proto::SubnetLoad>,
) -> ReportRequest {
    ReportRequest {
        session_id,
        sequence,
        subnets,
    }
}

/// Waits until `condition` holds, at most 5 s.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A full good exchange (hello, report) by `name`, which must be expected with 10.99.0.0/16.
pub async fn good_child_works(pki: &Pki, parent: &Parent, name: &str) {
    let identity = pki.identity(name);
    let mut client = tokio::time::timeout(Duration::from_secs(5), client(&identity, parent.addr))
        .await
        .unwrap()
        .unwrap();
    let session = client.hello(hello(name)).await.unwrap().into_inner();
    let reply = client
        .report(report(
            session.session_id,
            1,
            vec![subnet_load("10.99.7.0/24", &[("load", 0.25)])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    let state = parent.table.get(name).unwrap();
    assert_eq!(state.session_id, session.session_id);
}
