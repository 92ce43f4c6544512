//! Flow mirroring between the routers of one cluster (MISSION F17b): [`MirrorServer`] and
//! [`MirrorSender`].
//!
//! Routers that back each other up (hot spares, or peers behind one equal-cost multipath route)
//! push the flows they pin and let go of to each other, so that when one dies a survivor
//! forwards its established flows to the same next hops, whatever its policy would pick now.
//! It is `slr.control.v1.FlowMirror` over the same mutual TLS as the state update protocol:
//!
//! - **[`MirrorServer`]**: TLS 1.3 with a client certificate from the operator CA required
//!   (refused handshakes counted by reason, as a parent counts them); a batch is accepted only
//!   from a configured peer whose certificate's dNSName is the batch's `router`
//!   (`unexpected_name`, PERMISSION_DENIED otherwise); a batch over the size limits is refused
//!   whole (`malformed`); a malformed flow in it (not TCP or UDP, a zero address or port, a
//!   pinned flow without next hop) is refused and counted, the rest delivered. Accepted batches
//!   go to the daemon as [`ReceivedBatch`]es, with the lag measured from the sender's clock.
//! - **[`MirrorSender`]**: one per peer. It keeps one HTTP/2 connection, and after every
//!   (re)connection first sends every flow its [`MirrorSource`] holds (`full_sync`), then the
//!   changes it is given, in order, batched: a batch leaves when it holds `max_batch` changes
//!   or `max_delay` after its first change. Changes made while the peer is unreachable are
//!   dropped: the next full sync carries the flows that still exist.
//!
//! The protocol speaks in its own [`MirrorFlow`] type (slr-control does not know the core's);
//! the daemon converts.

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::counting::ByteCounter;
use crate::parent::{peer_of, AbortOnDrop, AcceptLoop, ConnIo, CountCodecRefusals};
use crate::pki::Identity;
use crate::proto::flow_mirror_client::FlowMirrorClient;
use crate::proto::flow_mirror_server::{FlowMirror, FlowMirrorServer};
use crate::proto::{MirrorAck, MirrorBatch};
use crate::refusal::{ParentCounters, Refusal};
use crate::reporter::TlsConnector;
use crate::ControlError;

/// A flow as mirrored: its 5-tuple and, for a pinned flow, the tunnel address of its next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MirrorFlow {
    /// Client address.
    pub src: Ipv4Addr,
    /// Virtual address.
    pub dst: Ipv4Addr,
    /// Client port.
    pub src_port: u16,
    /// Virtual port.
    pub dst_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
}

/// One change of a sender's flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorChange {
    /// The flow is pinned to the next hop with this tunnel address.
    Pinned(MirrorFlow, Ipv4Addr),
    /// The flow was let go of (closed, expired, evicted).
    Released(MirrorFlow),
}

/// A batch as the receiving daemon gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBatch {
    /// The peer that sent it (its certificate's name).
    pub from: String,
    /// Whether it belongs to a full sync (every flow the peer holds).
    pub full_sync: bool,
    /// The accepted changes, in the sender's order (pinned ones before released ones of the
    /// same batch: a batch never holds both for one flow, see [`MirrorSender`]).
    pub changes: Vec<MirrorChange>,
    /// From the sender's clock at sending to this server's at receiving (zero if the clocks
    /// disagree the other way).
    pub lag: Duration,
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct MirrorServerConfig {
    /// The peers that may push (their certificates' dNSNames).
    pub peers: Vec<String>,
    /// Most changes in one batch; a larger batch is refused whole. Default 4096.
    pub max_changes: usize,
    /// Largest message in bytes. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Time allowed for a TLS handshake. Default 5 s.
    pub handshake_timeout: Duration,
    /// Most simultaneous connections. Default 64.
    pub max_connections: usize,
}

impl MirrorServerConfig {
    /// The defaults, accepting `peers`.
    pub fn new(peers: Vec<String>) -> Self {
        MirrorServerConfig {
            peers,
            max_changes: 4096,
            max_message_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// What the server counts besides the connection-level refusals of its [`ParentCounters`].
#[derive(Debug, Default)]
pub struct MirrorServerStats {
    batches: AtomicU64,
    changes: AtomicU64,
    refused_changes: AtomicU64,
    last_lag_ns: AtomicU64,
    max_lag_ns: AtomicU64,
    total_lag_ns: AtomicU64,
}

impl MirrorServerStats {
    /// Batches accepted.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Changes accepted and delivered.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
    /// Changes refused as malformed (the rest of their batches accepted).
    pub fn refused_changes(&self) -> u64 {
        self.refused_changes.load(Ordering::Relaxed)
    }
    /// The lag of the last batch.
    pub fn last_lag(&self) -> Duration {
        Duration::from_nanos(self.last_lag_ns.load(Ordering::Relaxed))
    }
    /// The largest lag seen.
    pub fn max_lag(&self) -> Duration {
        Duration::from_nanos(self.max_lag_ns.load(Ordering::Relaxed))
    }
    /// The mean lag over every batch accepted.
    pub fn mean_lag(&self) -> Duration {
        let n = self.batches().max(1);
        Duration::from_nanos(self.total_lag_ns.load(Ordering::Relaxed) / n)
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The decisions of the server, without a socket: authorization and validation of one batch.
#[derive(Debug)]
pub struct MirrorState {
    config: MirrorServerConfig,
    peers: HashSet<String>,
    counters: Arc<ParentCounters>,
    stats: Arc<MirrorServerStats>,
}

impl MirrorState {
    /// A state accepting `config.peers`.
    pub fn new(config: MirrorServerConfig) -> Self {
        MirrorState {
            peers: config.peers.iter().cloned().collect(),
            config,
            counters: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Checks a batch from a peer whose certificate proves `names`: the accepted changes, or
    /// the refusal (counted).
    pub fn handle_batch(
        &self,
        names: &[String],
        batch: &MirrorBatch,
        now_unix_ns: u64,
    ) -> Result<(ReceivedBatch, MirrorAck), Refusal> {
        let authorized = self.peers.contains(&batch.router) && names.contains(&batch.router);
        if !authorized {
            self.counters.count_refusal(Refusal::UnexpectedName);
            return Err(Refusal::UnexpectedName);
        }
        if batch.pinned.len() + batch.released.len() > self.config.max_changes {
            self.counters.count_refusal(Refusal::Malformed);
            return Err(Refusal::Malformed);
        }
        let mut changes = Vec::with_capacity(batch.pinned.len() + batch.released.len());
        let mut refused = 0u32;
        for f in &batch.pinned {
            match (flow_of(f), f.next_hop) {
                (Some(flow), hop) if hop != 0 => {
                    changes.push(MirrorChange::Pinned(flow, Ipv4Addr::from(hop)))
                }
                _ => refused += 1,
            }
        }
        for f in &batch.released {
            match flow_of(f) {
                Some(flow) => changes.push(MirrorChange::Released(flow)),
                None => refused += 1,
            }
        }
        if refused > 0 {
            self.counters
                .add_refusals(Refusal::Malformed, u64::from(refused));
            self.stats
                .refused_changes
                .fetch_add(u64::from(refused), Ordering::Relaxed);
        }
        let lag = Duration::from_nanos(now_unix_ns.saturating_sub(batch.sent_unix_ns));
        let lag_ns = lag.as_nanos() as u64;
        self.stats.last_lag_ns.store(lag_ns, Ordering::Relaxed);
        self.stats.max_lag_ns.fetch_max(lag_ns, Ordering::Relaxed);
        self.stats.total_lag_ns.fetch_add(lag_ns, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        let ack = MirrorAck {
            accepted: changes.len() as u32,
            refused,
        };
        Ok((
            ReceivedBatch {
                from: batch.router.clone(),
                full_sync: batch.full_sync,
                changes,
                lag,
            },
            ack,
        ))
    }
}

pub(crate) fn flow_of(f: &crate::proto::MirrorFlow) -> Option<MirrorFlow> {
    let port = |p: u32| u16::try_from(p).ok().filter(|p| *p != 0);
    let protocol = u8::try_from(f.protocol)
        .ok()
        .filter(|p| *p == 6 || *p == 17)?;
    if f.src == 0 || f.dst == 0 {
        return None;
    }
    Some(MirrorFlow {
        src: Ipv4Addr::from(f.src),
        dst: Ipv4Addr::from(f.dst),
        src_port: port(f.src_port)?,
        dst_port: port(f.dst_port)?,
        protocol,
    })
}

pub(crate) fn proto_flow(f: &MirrorFlow, next_hop: Option<Ipv4Addr>) -> crate::proto::MirrorFlow {
    crate::proto::MirrorFlow {
        src: u32::from(f.src),
        dst: u32::from(f.dst),
        src_port: u32::from(f.src_port),
        dst_port: u32::from(f.dst_port),
        protocol: u32::from(f.protocol),
        next_hop: next_hop.map_or(0, u32::from),
    }
}

struct Handler {
    state: Arc<MirrorState>,
    sink: mpsc::Sender<ReceivedBatch>,
}

#[tonic::async_trait]
impl FlowMirror for Handler {
    async fn push(
        &self,
        request: tonic::Request<MirrorBatch>,
    ) -> Result<tonic::Response<MirrorAck>, tonic::Status> {
        let peer = peer_of(&request)?;
        match self
            .state
            .handle_batch(&peer.names, request.get_ref(), unix_ns())
        {
            Ok((batch, ack)) => {
                // The daemon applies batches in order; a full queue slows the sender down.
                self.sink
                    .send(batch)
                    .await
                    .map_err(|_| tonic::Status::unavailable("the router is stopping"))?;
                Ok(tonic::Response::new(ack))
            }
            Err(reason) => {
                warn!(peer = %peer.addr, name = peer.display_name(), router = request.get_ref().router, reason = reason.as_str(), "mirror batch refused");
                Err(match reason {
                    Refusal::UnexpectedName => tonic::Status::permission_denied(
                        "not a peer of this cluster, or the certificate is not the router's",
                    ),
                    _ => tonic::Status::invalid_argument("batch too large"),
                })
            }
        }
    }
}

/// The receiving side: a gRPC server over mutual TLS that delivers the peers' batches (and,
/// with [`with_whohas`](Self::with_whohas), answers their WHOHAS questions).
pub struct MirrorServer {
    state: Arc<MirrorState>,
    tls: Arc<rustls::ServerConfig>,
    whohas: Option<crate::whohas::Handler>,
}

impl std::fmt::Debug for MirrorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorServer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MirrorServer {
    /// A server with this router's `identity`.
    pub fn new(identity: &Identity, config: MirrorServerConfig) -> Result<Self, ControlError> {
        let state = Arc::new(MirrorState::new(config));
        let tls = crate::tls::parent_server_config(identity, state.counters.clone())?;
        Ok(MirrorServer {
            state,
            tls,
            whohas: None,
        })
    }

    /// Serves `slr.control.v1.Whohas` too, to the same peers: checked questions go to
    /// `requests`, whose receiver answers them. Returns the answering side's counters with the
    /// server (refusals are counted in [`counters`](Self::counters)).
    pub fn with_whohas(
        mut self,
        config: crate::whohas::WhohasServerConfig,
        requests: mpsc::Sender<crate::whohas::WhohasRequest>,
    ) -> (Self, Arc<crate::whohas::WhohasServerStats>) {
        let state = Arc::new(crate::whohas::WhohasState::new(
            config,
            &self.state.config.peers,
            self.state.counters.clone(),
        ));
        let stats = state.stats();
        self.whohas = Some(crate::whohas::Handler { state, requests });
        (self, stats)
    }

    /// Connection-level counters and refusals by reason.
    pub fn counters(&self) -> Arc<ParentCounters> {
        self.state.counters.clone()
    }

    /// Batches, changes and lag.
    pub fn stats(&self) -> Arc<MirrorServerStats> {
        self.state.stats.clone()
    }

    /// Serves on `listener` until `shutdown`, delivering accepted batches to `sink` in the
    /// order each peer sent them.
    pub async fn serve(
        self,
        listener: TcpListener,
        sink: mpsc::Sender<ReceivedBatch>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ControlError> {
        let config = self.state.config.clone();
        let (tx, rx) = mpsc::channel::<ConnIo>(16);
        let acceptor = AcceptLoop {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(self.tls.clone()),
            counters: self.state.counters.clone(),
            limit: Arc::new(Semaphore::new(config.max_connections.max(1))),
            handshake_timeout: config.handshake_timeout,
        };
        let accept_task = AbortOnDrop(tokio::spawn(acceptor.run(tx)));
        let service = FlowMirrorServer::new(Handler {
            state: self.state.clone(),
            sink,
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let counters = self.state.counters.clone();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Ok::<_, std::io::Error>,
        );
        let result = tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(move |inner| CountCodecRefusals {
                inner,
                counters: counters.clone(),
            }))
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .max_concurrent_streams(Some(32))
            .add_service(service)
            .add_optional_service(self.whohas.map(|h| {
                crate::proto::whohas_server::WhohasServer::new(h)
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes)
            }))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        drop(accept_task);
        result.map_err(ControlError::from)
    }
}

/// An HTTP/2 channel over mutual TLS to a peer of the cluster (`uri` only names it in
/// requests), with keepalives; bytes written are counted.
pub(crate) async fn connect_channel(
    tls: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    addr: SocketAddr,
    bytes: Arc<ByteCounter>,
    timeout: Duration,
    uri: &'static str,
) -> Result<Channel, ControlError> {
    let connector = TlsConnector {
        tls,
        name,
        addr,
        bytes,
    };
    let endpoint = Endpoint::from_static(uri)
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| ControlError::Timeout("connect"))?
        .map_err(ControlError::from)
}

/// Where a sender gets every flow its router holds, for a full sync after each connection.
/// Called on the sender's task: it must not block for long.
pub trait MirrorSource: Send {
    /// Every pinned flow with its next hop's tunnel address.
    fn flows(&mut self) -> Vec<(MirrorFlow, Ipv4Addr)>;
}

impl<F: FnMut() -> Vec<(MirrorFlow, Ipv4Addr)> + Send> MirrorSource for F {
    fn flows(&mut self) -> Vec<(MirrorFlow, Ipv4Addr)> {
        self()
    }
}

/// A sender's settings.
#[derive(Clone, Debug)]
pub struct MirrorSenderConfig {
    /// Most changes per batch. Default 1024.
    pub max_batch: usize,
    /// Longest a change waits for its batch to fill. Default 2 ms.
    pub max_delay: Duration,
    /// First wait after a failure (doubling to 2 s). Default 100 ms.
    pub backoff_min: Duration,
    /// Time allowed to connect and for one call. Default 3 s.
    pub timeout: Duration,
}

impl Default for MirrorSenderConfig {
    fn default() -> Self {
        MirrorSenderConfig {
            max_batch: 1024,
            max_delay: Duration::from_millis(2),
            backoff_min: Duration::from_millis(100),
            timeout: Duration::from_secs(3),
        }
    }
}

/// A sender's counters.
#[derive(Debug, Default)]
pub struct MirrorSenderStats {
    batches: AtomicU64,
    changes: AtomicU64,
    dropped: AtomicU64,
    full_syncs: AtomicU64,
    failures: AtomicU64,
    connected: AtomicBool,
    bytes: Arc<ByteCounter>,
    last_error: Mutex<Option<String>>,
}

impl MirrorSenderStats {
    /// Batches the peer accepted.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Changes the peer accepted (full syncs included).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
    /// Changes dropped while the peer was unreachable (a full sync follows).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Full syncs completed.
    pub fn full_syncs(&self) -> u64 {
        self.full_syncs.load(Ordering::Relaxed)
    }
    /// Failed connections and calls.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Whether the peer is connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Bytes sent on the wire (TLS and HTTP/2 included).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.written()
    }
    /// The last failure.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The sending side, toward one peer.
pub struct MirrorSender {
    me: String,
    peer_name: ServerName<'static>,
    peer_addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    config: MirrorSenderConfig,
    stats: Arc<MirrorSenderStats>,
}

impl std::fmt::Debug for MirrorSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorSender")
            .field("me", &self.me)
            .field("peer_name", &self.peer_name)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl MirrorSender {
    /// A sender of router `me` to the peer `peer_name` at `peer_addr`.
    pub fn new(
        identity: &Identity,
        me: &str,
        peer_name: &str,
        peer_addr: SocketAddr,
        config: MirrorSenderConfig,
    ) -> Result<Self, ControlError> {
        let name = ServerName::try_from(peer_name.to_owned())
            .map_err(|_| ControlError::InvalidName(peer_name.to_owned()))?;
        Ok(MirrorSender {
            me: me.to_owned(),
            peer_name: name,
            peer_addr,
            tls: crate::tls::client_config(identity, b"h2")?,
            config,
            stats: Arc::default(),
        })
    }

    /// The counters (a shared handle).
    pub fn stats(&self) -> Arc<MirrorSenderStats> {
        self.stats.clone()
    }

    /// Mirrors until `changes` closes: connect, full sync from `source`, then the changes in
    /// batches; on any error reconnect with backoff (changes meanwhile are dropped and counted).
    pub async fn run(
        self,
        mut source: impl MirrorSource,
        mut changes: mpsc::Receiver<MirrorChange>,
    ) {
        let mut backoff = self.config.backoff_min;
        loop {
            let error = match self.connect().await {
                Ok(client) => {
                    backoff = self.config.backoff_min;
                    match self.session(client, &mut source, &mut changes).await {
                        None => return,
                        Some(e) => e,
                    }
                }
                Err(e) => e,
            };
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.stats.connected.store(false, Ordering::Relaxed);
            *self
                .stats
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
            warn!(peer = ?self.peer_name, addr = %self.peer_addr, error = %error, retry_in = ?backoff, "flow mirroring to a peer failed");
            // What arrives while the peer is away is covered by the next full sync.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    c = changes.recv() => match c {
                        Some(_) => { self.stats.dropped.fetch_add(1, Ordering::Relaxed); }
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(&self) -> Result<FlowMirrorClient<Channel>, ControlError> {
        let channel = connect_channel(
            self.tls.clone(),
            self.peer_name.clone(),
            self.peer_addr,
            self.stats.bytes.clone(),
            self.config.timeout,
            "http://slr-mirror",
        )
        .await?;
        Ok(FlowMirrorClient::new(channel))
    }

    /// One connection: the full sync, then changes until an error (`Some`) or the end of
    /// `changes` (`None`).
    async fn session(
        &self,
        mut client: FlowMirrorClient<Channel>,
        source: &mut impl MirrorSource,
        changes: &mut mpsc::Receiver<MirrorChange>,
    ) -> Option<ControlError> {
        let mut sequence = 0u64;
        // Changes queued before the connection are older than the full sync: drop them.
        while let Ok(_c) = changes.try_recv() {}
        let all: Vec<MirrorChange> = source
            .flows()
            .into_iter()
            .map(|(f, hop)| MirrorChange::Pinned(f, hop))
            .collect();
        let synced = all.len();
        for chunk in all.chunks(self.config.max_batch.max(1)) {
            sequence += 1;
            if let Err(e) = self.push(&mut client, sequence, chunk, true).await {
                return Some(e);
            }
        }
        self.stats.full_syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        info!(peer = ?self.peer_name, flows = synced, "flow mirroring: connected, full sync sent");
        let mut batch = Vec::with_capacity(self.config.max_batch);
        loop {
            // Wait for a first change, then fill the batch for at most max_delay.
            match changes.recv().await {
                Some(c) => batch.push(c),
                None => return None,
            }
            let deadline = tokio::time::Instant::now() + self.config.max_delay;
            while batch.len() < self.config.max_batch {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Ok(Some(c)) => batch.push(c),
                    Ok(None) | Err(_) => break,
                }
            }
            sequence += 1;
            if let Err(e) = self.push(&mut client, sequence, &batch, false).await {
                self.stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return Some(e);
            }
            batch.clear();
        }
    }

    async fn push(
        &self,
        client: &mut FlowMirrorClient<Channel>,
        sequence: u64,
        changes: &[MirrorChange],
        full_sync: bool,
    ) -> Result<(), ControlError> {
        // A flow pinned and released in one batch: the receiver applies pinned flows before
        // released ones, so the release must win; keep only the last change of each flow.
        let mut last: std::collections::HashMap<MirrorFlow, usize> =
            std::collections::HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            let f = match c {
                MirrorChange::Pinned(f, _) | MirrorChange::Released(f) => *f,
            };
            last.insert(f, i);
        }
        let mut pinned = Vec::new();
        let mut released = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            match c {
                MirrorChange::Pinned(f, hop) if last[f] == i => {
                    pinned.push(proto_flow(f, Some(*hop)))
                }
                MirrorChange::Released(f) if last[f] == i => released.push(proto_flow(f, None)),
                _ => {}
            }
        }
        let batch = MirrorBatch {
            router: self.me.clone(),
            sequence,
            sent_unix_ns: unix_ns(),
            pinned,
            released,
            full_sync,
        };
        let reply = tokio::time::timeout(self.config.timeout, client.push(batch))
            .await
            .map_err(|_| ControlError::Timeout("Push"))?
            .map_err(|status| ControlError::Status {
                rpc: "Push",
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .changes
            .fetch_add(u64::from(reply.accepted), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn flow(port: u32, hop: u32) -> proto::MirrorFlow {
        proto::MirrorFlow {
            src: u32::from(Ipv4Addr::new(10, 200, 1, 2)),
            dst: u32::from(Ipv4Addr::new(10, 99, 0, 1)),
            src_port: port,
            dst_port: 80,
            protocol: 6,
            next_hop: hop,
        }
    }

    fn batch(router: &str, pinned: Vec<proto::MirrorFlow>) -> MirrorBatch {
        MirrorBatch {
            router: router.into(),
            sequence: 1,
            sent_unix_ns: 1_000,
            pinned,
            released: vec![flow(999, 0)],
            full_sync: false,
        }
    }

    #[test]
    fn only_a_configured_peer_under_its_own_name_may_push() {
        let s = MirrorState::new(MirrorServerConfig::new(vec!["r2".into()]));
        let names = vec!["r2".to_string()];
        let hop = u32::from(Ipv4Addr::new(10, 200, 4, 2));
        let (got, ack) = s
            .handle_batch(&names, &batch("r2", vec![flow(1000, hop)]), 5_000)
            .unwrap();
        assert_eq!(ack.accepted, 2);
        assert_eq!(got.lag, Duration::from_nanos(4_000));
        assert!(matches!(got.changes[0], MirrorChange::Pinned(f, h)
            if f.src_port == 1000 && h == Ipv4Addr::new(10, 200, 4, 2)));
        assert!(matches!(got.changes[1], MirrorChange::Released(f) if f.src_port == 999));
        // Another router's name in the batch, or a certificate of another router.
        assert_eq!(
            s.handle_batch(&names, &batch("r3", vec![]), 0).unwrap_err(),
            Refusal::UnexpectedName
        );
        assert_eq!(
            s.handle_batch(&["r3".to_string()], &batch("r2", vec![]), 0)
                .unwrap_err(),
            Refusal::UnexpectedName
        );
        assert_eq!(s.counters.refused(Refusal::UnexpectedName), 2);
    }

    #[test]
    fn malformed_flows_are_refused_one_by_one_and_oversized_batches_whole() {
        let mut config = MirrorServerConfig::new(vec!["r2".into()]);
        config.max_changes = 3;
        let s = MirrorState::new(config);
        let names = vec!["r2".to_string()];
        let hop = u32::from(Ipv4Addr::new(10, 200, 4, 2));
        let mut icmp = flow(1, hop);
        icmp.protocol = 1;
        let (got, ack) = s
            .handle_batch(&names, &batch("r2", vec![icmp, flow(0, hop)]), 0)
            .unwrap();
        assert_eq!((ack.accepted, ack.refused), (1, 2));
        assert_eq!(got.changes.len(), 1);
        let (_, ack) = s
            .handle_batch(&names, &batch("r2", vec![flow(5, 0)]), 0)
            .unwrap();
        assert_eq!(ack.refused, 1, "a pinned flow without next hop");
        assert_eq!(
            s.handle_batch(&names, &batch("r2", vec![flow(1, hop); 3]), 0)
                .unwrap_err(),
            Refusal::Malformed
        );
        assert_eq!(s.counters.refused(Refusal::Malformed), 4);
        assert_eq!(s.stats.refused_changes(), 3);
    }
}
