//! The child side of the state update protocol: [`Reporter`].
//!
//! A reporter keeps one HTTP/2 connection with mutual TLS to one parent (it checks the parent's
//! certificate against the operator CA and that its dNSName is the expected parent name), says
//! Hello, then every report interval the parent asked for takes the current load from a
//! [`LoadSource`] and sends a Report. On any error it drops the connection, waits (100 ms
//! doubling to 2 s by default) and starts again with a new Hello. It never returns until its
//! shutdown future completes. A child with several parents runs one reporter per parent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::counting::{ByteCounter, CountingStream};
use crate::pki::Identity;
use crate::proto::state_update_client::StateUpdateClient;
use crate::proto::{HelloRequest, ReportRequest, ShortcutRequest};
use crate::shortcut::{ShortcutAnswer, ShortcutBatch, SignalVerdict};
use crate::subnet::{Subnet, SubnetLoad};
use crate::ControlError;

/// Where a reporter gets the load to report, once per interval.
///
/// Implemented for closures `FnMut() -> Vec<SubnetLoad>`. It is called on the reporter's task:
/// it must not block (read a snapshot the daemon keeps up to date).
pub trait LoadSource: Send {
    /// The child's current load, per subnet it serves.
    fn load(&mut self) -> Vec<SubnetLoad>;
}

impl<F: FnMut() -> Vec<SubnetLoad> + Send> LoadSource for F {
    fn load(&mut self) -> Vec<SubnetLoad> {
        self()
    }
}

/// A reporter's settings.
#[derive(Clone, Debug)]
pub struct ReporterConfig {
    /// The subnets announced in the Hello (informative; the parent decides what it accepts).
    pub subnets: Vec<Subnet>,
    /// The software version announced in the Hello. Default: this crate's version.
    pub software_version: String,
    /// First wait after a failure. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest wait after repeated failures. Default 2 s.
    pub backoff_max: Duration,
    /// Time allowed to connect (TCP and TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for one call. Default 5 s.
    pub call_timeout: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            subnets: Vec::new(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// A reporter's counters, readable at any time.
#[derive(Debug, Default)]
pub struct ReporterCounters {
    hellos: AtomicU64,
    reports_sent: AtomicU64,
    subnets_refused: AtomicU64,
    failures: AtomicU64,
    connected: AtomicBool,
    bytes: Arc<ByteCounter>,
    last_error: Mutex<Option<String>>,
}

impl ReporterCounters {
    /// Sessions opened (Hellos accepted by the parent).
    pub fn hellos(&self) -> u64 {
        self.hellos.load(Ordering::Relaxed)
    }

    /// Reports the parent accepted.
    pub fn reports_sent(&self) -> u64 {
        self.reports_sent.load(Ordering::Relaxed)
    }

    /// Subnets the parent refused in accepted reports.
    pub fn subnets_refused(&self) -> u64 {
        self.subnets_refused.load(Ordering::Relaxed)
    }

    /// Failures (connect, Hello or Report), each followed by a reconnection.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether a session is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Bytes sent on the wire (TLS and HTTP/2 included).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.written()
    }

    /// Bytes received on the wire.
    pub fn bytes_received(&self) -> u64 {
        self.bytes.read()
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, error: &ControlError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

/// The child side of the protocol, towards one parent.
pub struct Reporter {
    parent_name: ServerName<'static>,
    parent_addr: SocketAddr,
    my_name: String,
    level: String,
    config: ReporterConfig,
    tls: Arc<rustls::ClientConfig>,
    counters: Arc<ReporterCounters>,
    shortcuts: Option<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ShortcutBatch>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("parent_name", &self.parent_name)
            .field("parent_addr", &self.parent_addr)
            .field("my_name", &self.my_name)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// A reporter of child `my_name` (at `level`: "as", "site", "host", ...) to the parent
    /// `parent_name` at `parent_addr`, with the default [`ReporterConfig`].
    pub fn new(
        identity: &Identity,
        parent_name: &str,
        parent_addr: SocketAddr,
        my_name: &str,
        level: &str,
    ) -> Result<Self, ControlError> {
        let parent_name = ServerName::try_from(parent_name.to_owned())
            .map_err(|_| ControlError::InvalidName(parent_name.to_owned()))?;
        Ok(Reporter {
            parent_name,
            parent_addr,
            my_name: my_name.to_owned(),
            level: level.to_owned(),
            config: ReporterConfig::default(),
            tls: crate::tls::client_config(identity, b"h2")?,
            counters: Arc::default(),
            shortcuts: None,
        })
    }

    /// Also sends the daemon's shortcut batches (F10) on the session, each as soon as it comes,
    /// and hands back the parent's answer. Batches wait while no session is open.
    pub fn with_shortcuts(mut self, batches: tokio::sync::mpsc::Receiver<ShortcutBatch>) -> Self {
        self.shortcuts = Some(tokio::sync::Mutex::new(batches));
        self
    }

    /// Replaces the settings.
    pub fn with_config(mut self, config: ReporterConfig) -> Self {
        self.config = config;
        self
    }

    /// The counters (a shared handle).
    pub fn counters(&self) -> Arc<ReporterCounters> {
        self.counters.clone()
    }

    /// Reports until `shutdown` completes: connect, Hello, a Report per interval; on any error
    /// reconnect with capped exponential backoff.
    pub async fn run(self, mut source: impl LoadSource, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.run_forever(&mut source) => {}
        }
        self.counters.connected.store(false, Ordering::Relaxed);
        debug!(parent = ?self.parent_name, "reporter stopped");
    }

    async fn run_forever(&self, source: &mut impl LoadSource) {
        let mut backoff = self.config.backoff_min;
        loop {
            let mut opened = false;
            let error = self.session(source, &mut opened).await;
            if opened {
                backoff = self.config.backoff_min;
            }
            self.counters.fail(&error);
            warn!(parent = ?self.parent_name, addr = %self.parent_addr, error = %error, retry_in = ?backoff, "state update session failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// One session; returns why it ended. Sets `opened` once the Hello was accepted.
    async fn session(&self, source: &mut impl LoadSource, opened: &mut bool) -> ControlError {
        let mut client = match self.connect().await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let hello = HelloRequest {
            child_name: self.my_name.clone(),
            level: self.level.clone(),
            software_version: self.config.software_version.clone(),
            subnets: self.config.subnets.iter().map(Subnet::to_string).collect(),
        };
        let reply = match self.call("Hello", client.hello(hello)).await {
            Ok(reply) => reply,
            Err(e) => return e,
        };
        *opened = true;
        self.counters.hellos.fetch_add(1, Ordering::Relaxed);
        self.counters.connected.store(true, Ordering::Relaxed);
        let period = Duration::from_millis(u64::from(reply.report_interval_ms))
            .clamp(Duration::from_millis(10), Duration::from_secs(3600));
        info!(parent = ?self.parent_name, session_id = reply.session_id, ?period, allowed = ?reply.allowed_subnets, "state update session opened");

        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence = 0u64;
        let mut warned_refusals = false;
        let mut outbox = match &self.shortcuts {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        loop {
            let next_batch = async {
                match outbox.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticks.tick() => {}
                batch = next_batch => {
                    let Some(batch) = batch else {
                        outbox = None;
                        continue;
                    };
                    let request = ShortcutRequest {
                        session_id: reply.session_id,
                        signals: batch
                            .signals
                            .iter()
                            .map(|s| crate::mirror::proto_flow(&s.flow, Some(s.host)))
                            .collect(),
                        keepalives: batch
                            .keepalives
                            .iter()
                            .map(|f| crate::mirror::proto_flow(f, None))
                            .collect(),
                    };
                    match self.call("Shortcut", client.shortcut(request)).await {
                        Ok(answer) => {
                            let _ = batch.reply.send(Ok(ShortcutAnswer {
                                signals: answer.signals.iter().map(|v| SignalVerdict::parse(v)).collect(),
                                held: answer.held,
                            }));
                        }
                        Err(e) => {
                            let _ = batch.reply.send(Err(e.to_string()));
                            return e;
                        }
                    }
                    continue;
                }
            }
            sequence += 1;
            let report = report_request(reply.session_id, sequence, source.load());
            let answer = match self.call("Report", client.report(report)).await {
                Ok(answer) => answer,
                Err(e) => return e,
            };
            self.counters.reports_sent.fetch_add(1, Ordering::Relaxed);
            if !answer.refused.is_empty() {
                self.counters
                    .subnets_refused
                    .fetch_add(answer.refused.len() as u64, Ordering::Relaxed);
                if !warned_refusals {
                    warned_refusals = true;
                    warn!(parent = ?self.parent_name, refused = ?answer.refused, "parent refuses some subnets (logged once per session)");
                }
            }
        }
    }

    async fn call<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ControlError> {
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Err(_) => Err(ControlError::Timeout(rpc)),
            Ok(Err(status)) => Err(ControlError::Status {
                rpc,
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Opens a connection to the parent (TCP, TLS, HTTP/2) and returns a raw gRPC client on
    /// it, whose bytes count in this reporter's counters. [`Reporter::run`] does this itself;
    /// this is for tools, tests and benchmarks that craft their own requests.
    pub async fn connect(&self) -> Result<StateUpdateClient<Channel>, ControlError> {
        Ok(StateUpdateClient::new(self.connect_channel().await?))
    }

    /// Like [`Reporter::connect`], but returns the HTTP/2 channel itself.
    pub async fn connect_channel(&self) -> Result<Channel, ControlError> {
        let connector = TlsConnector {
            tls: self.tls.clone(),
            name: self.parent_name.clone(),
            addr: self.parent_addr,
            bytes: self.counters.bytes.clone(),
        };
        // The URI is not used to connect (the connector does), only as :authority.
        let endpoint = Endpoint::from_static("http://slr-parent")
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = tokio::time::timeout(
            self.config.connect_timeout,
            endpoint.connect_with_connector(connector),
        )
        .await
        .map_err(|_| ControlError::Timeout("connect"))??;
        Ok(channel)
    }
}

/// A tonic connector that opens TCP to `addr`, counts its bytes, and runs TLS checking that the
/// server is `name`.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) name: ServerName<'static>,
    pub(crate) addr: SocketAddr,
    pub(crate) bytes: Arc<ByteCounter>,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<CountingStream<TcpStream>>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = self.name.clone();
        let bytes = self.bytes.clone();
        let addr = self.addr;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, CountingStream::new(tcp, bytes)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The protobuf Report of `load` (what [`Reporter::run`] sends).
pub fn report_request(session_id: u64, sequence: u64, load: Vec<SubnetLoad>) -> ReportRequest {
    ReportRequest {
        session_id,
        sequence,
        subnets: load
            .into_iter()
            .map(|l| crate::proto::SubnetLoad {
                subnet: l.subnet.to_string(),
                metrics: l.metrics.into_iter().collect(),
            })
            .collect(),
    }
}
