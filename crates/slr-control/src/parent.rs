//! The parent side of the state update protocol: [`ParentServer`].
//!
//! A parent router serves `slr.control.v1.StateUpdate` over TLS 1.3 with a client certificate
//! from the operator CA required. It accepts TLS itself (so that every refused handshake is
//! counted by reason), then authorizes each request by the peer's certificate name:
//!
//! 1. **Handshake**: a certificate of another CA is refused `unknown_ca`, an expired one
//!    `expired`, one not yet valid `not_yet_valid`, anything else wrong with it (or none)
//!    `bad_certificate`; a handshake that fails otherwise (not TLS, timeout) `handshake_failed`.
//! 2. **Hello**: the certificate's dNSName must be an expected child (see [`ExpectedChildren`],
//!    which the daemon updates at run time) and equal the Hello's `child_name`, otherwise
//!    PERMISSION_DENIED, `unexpected_name`. The reply opens a session.
//! 3. **Report**: must carry the current session of that child (`no_session`, FAILED_PRECONDITION);
//!    a subnet outside the child's allowed subnets is refused `foreign_subnet` and never
//!    delivered (no hijacking), the rest of the report is accepted; a malformed subnet entry is
//!    refused `malformed`; a malformed report as a whole (too many subnets, sequence not
//!    increasing) is refused INVALID_ARGUMENT, `malformed`; a message over the size limit is
//!    refused OUT_OF_RANGE (tonic's code for it), `oversized`.
//!
//! Every refusal is counted ([`ParentCounters`]) and logged at `warn` with the peer's address,
//! name and reason. Accepted reports replace the child's entry in the [`ChildTable`], which the
//! daemon reads when it rebuilds its routing table (subscribe to its changes).
//!
//! The decisions are made by [`ParentState`], which owns no socket: the server and tests feed it
//! requests with the peer's identity and the current time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use crate::counting::CountingStream;
use crate::gateway::GatewayTable;
use crate::pki::Identity;
use crate::proto::state_update_server::{StateUpdate, StateUpdateServer};
use crate::proto::{
    HelloReply, HelloRequest, RefusedSubnet, ReportReply, ReportRequest, ShortcutReply,
    ShortcutRequest,
};
use crate::shortcut::{ShortcutAnswer, ShortcutQuestion, ShortcutSignal, SignalVerdict};
use crate::subnet::{Subnet, SubnetLoad};
use crate::ControlError;

pub use crate::refusal::{ParentCounters, Refusal};

/// The parent's settings.
#[derive(Clone, Debug)]
pub struct ParentConfig {
    /// How often children must report (sent to them in the HelloReply). Default 1 s.
    pub report_interval: Duration,
    /// A child is silent after this many intervals without a report. Default 3.
    pub silent_after: u32,
    /// Largest accepted message, in bytes; larger ones are refused `oversized`. Default 256 KiB.
    pub max_message_bytes: usize,
    /// Most subnets in a Hello or a Report. Default 1024.
    pub max_subnets: usize,
    /// Most metrics per subnet. Default 32.
    pub max_metrics: usize,
    /// Longest metric name, in bytes. Default 64.
    pub max_metric_name_len: usize,
    /// Time allowed for a TLS handshake. Default 5 s.
    pub handshake_timeout: Duration,
    /// Most simultaneous connections (handshaking or established). Default 1024.
    pub max_connections: usize,
    /// HTTP/2 keepalive ping interval, to notice dead children. Default 10 s.
    pub keepalive_interval: Duration,
}

impl Default for ParentConfig {
    fn default() -> Self {
        ParentConfig {
            report_interval: Duration::from_secs(1),
            silent_after: 3,
            max_message_bytes: 256 * 1024,
            max_subnets: 1024,
            max_metrics: 32,
            max_metric_name_len: 64,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            keepalive_interval: Duration::from_secs(10),
        }
    }
}

/// Who is at the other end of a connection: its address and the dNSNames its (verified)
/// certificate proves. Available to gRPC handlers as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// The dNSNames of the peer's certificate.
    pub names: Arc<[String]>,
}

impl PeerInfo {
    pub(crate) fn display_name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or("?")
    }
}

/// The children a parent expects, each with the subnets it may report. Cheap to clone; all
/// clones share one set, which the daemon may change at any time (a change applies to the next
/// request: a removed child's reports are refused `unexpected_name`).
#[derive(Clone, Debug, Default)]
pub struct ExpectedChildren {
    inner: Arc<RwLock<HashMap<String, Arc<[Subnet]>>>>,
}

impl ExpectedChildren {
    /// An empty set.
    pub fn new() -> Self {
        ExpectedChildren::default()
    }

    /// The children of a gateway table, with their subnets.
    pub fn from_gateway_table(table: &GatewayTable) -> Self {
        let expected = ExpectedChildren::new();
        expected.set_from_gateway_table(table);
        expected
    }

    /// Replaces the whole set with the children of `table`.
    pub fn set_from_gateway_table(&self, table: &GatewayTable) {
        self.replace(
            table
                .children
                .iter()
                .map(|entry| (entry.name.clone(), entry.subnets.clone())),
        );
    }

    /// Replaces the whole set.
    pub fn replace(&self, children: impl IntoIterator<Item = (String, Vec<Subnet>)>) {
        let map = children
            .into_iter()
            .map(|(name, subnets)| (name, Arc::from(subnets)))
            .collect();
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = map;
    }

    /// Adds or replaces one child.
    pub fn insert(&self, name: impl Into<String>, subnets: Vec<Subnet>) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.into(), Arc::from(subnets));
    }

    /// Removes one child; returns whether it was expected.
    pub fn remove(&self, name: &str) -> bool {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    /// The subnets `name` may report, if it is expected.
    pub fn allowed_subnets(&self, name: &str) -> Option<Arc<[Subnet]>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The expected children's names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// A child's last accepted report.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildReport {
    /// The report's sequence number in its session.
    pub sequence: u64,
    /// When the parent received it.
    pub received: Instant,
    /// The accepted subnets with their metrics (refused ones are not here).
    pub subnets: Vec<SubnetLoad>,
}

/// What the parent knows of one child.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildState {
    /// The level the child announced ("as", "site", "host", ...).
    pub level: String,
    /// The software version the child announced.
    pub software_version: String,
    /// The child's current session.
    pub session_id: u64,
    /// When the current session was opened.
    pub session_start: Instant,
    /// The address of the current session's connection.
    pub peer_addr: SocketAddr,
    /// Reports accepted from this child since it was first seen (all sessions).
    pub reports: u64,
    /// The last accepted report (kept across sessions until the daemon removes the child).
    pub last_report: Option<ChildReport>,
    /// The sequence number of the last report of the current session (0: none yet).
    pub last_sequence: u64,
}

/// Child name -> [`ChildState`], shared between the parent server (which writes it) and the
/// daemon (which reads it when it rebuilds its routing table). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChildTable {
    inner: Arc<RwLock<BTreeMap<String, ChildState>>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for ChildTable {
    fn default() -> Self {
        ChildTable {
            inner: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

impl ChildTable {
    /// An empty table.
    pub fn new() -> Self {
        ChildTable::default()
    }

    /// One child's state.
    pub fn get(&self, name: &str) -> Option<ChildState> {
        self.read().get(name).cloned()
    }

    /// A copy of the whole table.
    pub fn snapshot(&self) -> BTreeMap<String, ChildState> {
        self.read().clone()
    }

    /// The children whose last report is at most `silent_after` report intervals old at `now`,
    /// sorted. A child that has not reported yet is not live.
    pub fn live_children(
        &self,
        now: Instant,
        interval: Duration,
        silent_after: u32,
    ) -> Vec<String> {
        let limit = interval.saturating_mul(silent_after);
        self.read()
            .iter()
            .filter(|(_, state)| {
                state
                    .last_report
                    .as_ref()
                    .is_some_and(|r| now.saturating_duration_since(r.received) <= limit)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The children in the table that are not live (see [`ChildTable::live_children`]).
    pub fn silent_children(
        &self,
        now: Instant,
        interval: Duration,
        silent_after: u32,
    ) -> Vec<String> {
        let live: HashSet<String> = self
            .live_children(now, interval, silent_after)
            .into_iter()
            .collect();
        self.read()
            .keys()
            .filter(|name| !live.contains(*name))
            .cloned()
            .collect()
    }

    /// Removes a child (its session ends: its next report is refused `no_session`).
    pub fn remove(&self, name: &str) -> Option<ChildState> {
        let removed = self
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if removed.is_some() {
            self.changed();
        }
        removed
    }

    /// A receiver that sees a new value whenever a report is accepted or a child removed; the
    /// daemon awaits `changed()` on it to rebuild its routing table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many changes the table has seen.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ChildState>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ChildState>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }
}

/// A refused request: the reason (counted) and a message for the peer and the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct RefusedRequest {
    /// Why.
    pub reason: Refusal,
    /// Details.
    pub message: String,
}

impl RefusedRequest {
    fn new(reason: Refusal, message: impl Into<String>) -> Self {
        RefusedRequest {
            reason,
            message: message.into(),
        }
    }

    /// The gRPC status sent to the peer.
    pub fn to_status(&self) -> tonic::Status {
        let message = format!("{}: {}", self.reason, self.message);
        match self.reason {
            Refusal::NoSession => tonic::Status::failed_precondition(message),
            Refusal::Malformed => tonic::Status::invalid_argument(message),
            Refusal::Oversized => tonic::Status::out_of_range(message),
            _ => tonic::Status::permission_denied(message),
        }
    }
}

/// The parent's decisions, without I/O: authorization, validation, sessions, delivery to the
/// [`ChildTable`], counters and refusal logs. [`ParentServer`] feeds it every request.
#[derive(Debug)]
pub struct ParentState {
    config: ParentConfig,
    expected: ExpectedChildren,
    table: ChildTable,
    counters: Arc<ParentCounters>,
    next_session: AtomicU64,
}

/// Most flows (signals and keepalives together) in one shortcut request.
pub const MAX_SHORTCUT_FLOWS: usize = 8192;

/// A shortcut request that passed the session and subnet checks (see
/// [`ParentState::check_shortcut`]).
#[derive(Debug)]
pub struct CheckedShortcut {
    /// The child.
    pub child: String,
    /// The signals for the daemon.
    pub signals: Vec<ShortcutSignal>,
    /// The keepalives for the daemon.
    pub keepalives: Vec<crate::mirror::MirrorFlow>,
    /// Per signal of the request: its verdict already (refused), or `None` (in `signals`, in
    /// order).
    pub verdicts: Vec<Option<SignalVerdict>>,
    /// Per keepalive of the request: `Some(false)` already (malformed, foreign), or `None`.
    pub held: Vec<Option<bool>>,
}

impl CheckedShortcut {
    /// The reply, given the daemon's answer to the checked flows (missing answers are
    /// refusals `unavailable` and not held).
    pub fn reply(&self, answer: &ShortcutAnswer) -> ShortcutReply {
        let mut asked = answer.signals.iter();
        let signals = self
            .verdicts
            .iter()
            .map(|v| {
                v.or_else(|| asked.next().copied())
                    .unwrap_or(SignalVerdict::Refused("unavailable"))
                    .as_str()
                    .to_owned()
            })
            .collect();
        let mut asked = answer.held.iter();
        let held = self
            .held
            .iter()
            .map(|h| h.or_else(|| asked.next().copied()).unwrap_or(false))
            .collect();
        ShortcutReply { signals, held }
    }
}

/// Longest accepted `level` and `software_version`, in bytes.
const MAX_LABEL_LEN: usize = 128;

impl ParentState {
    /// A parent expecting `expected`, delivering to a new [`ChildTable`].
    pub fn new(config: ParentConfig, expected: ExpectedChildren) -> Self {
        // Session ids start at a random point so that a restarted parent does not accept a
        // session of its previous life.
        let mut seed = [0u8; 8];
        let _ = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut seed);
        ParentState {
            config,
            expected,
            table: ChildTable::new(),
            counters: Arc::default(),
            next_session: AtomicU64::new(u64::from_le_bytes(seed) >> 1 | 1),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ParentConfig {
        &self.config
    }

    /// The child table (a shared handle).
    pub fn child_table(&self) -> ChildTable {
        self.table.clone()
    }

    /// The counters.
    pub fn counters(&self) -> Arc<ParentCounters> {
        self.counters.clone()
    }

    /// The expected children (a shared handle).
    pub fn expected_children(&self) -> ExpectedChildren {
        self.expected.clone()
    }

    /// Handles a Hello from `peer` at `now`: opens (or replaces) the child's session.
    pub fn handle_hello(
        &self,
        peer: &PeerInfo,
        request: &HelloRequest,
        now: Instant,
    ) -> Result<HelloReply, RefusedRequest> {
        let result = self.hello(peer, request, now);
        if let Err(refused) = &result {
            self.refuse(peer, refused);
        }
        result
    }

    fn hello(
        &self,
        peer: &PeerInfo,
        request: &HelloRequest,
        now: Instant,
    ) -> Result<HelloReply, RefusedRequest> {
        let name = request.child_name.as_str();
        if !peer.names.iter().any(|n| n == name) {
            return Err(RefusedRequest::new(
                Refusal::UnexpectedName,
                format!(
                    "hello name {:?} is not the certificate's name {:?}",
                    truncate(name),
                    peer.display_name()
                ),
            ));
        }
        let allowed = self.expected.allowed_subnets(name).ok_or_else(|| {
            RefusedRequest::new(
                Refusal::UnexpectedName,
                format!("{name:?} is not an expected child"),
            )
        })?;
        if request.level.len() > MAX_LABEL_LEN || request.software_version.len() > MAX_LABEL_LEN {
            return Err(RefusedRequest::new(
                Refusal::Malformed,
                format!("level or software version longer than {MAX_LABEL_LEN} bytes"),
            ));
        }
        if request.subnets.len() > self.config.max_subnets {
            return Err(RefusedRequest::new(
                Refusal::Malformed,
                format!(
                    "{} subnets, more than {}",
                    request.subnets.len(),
                    self.config.max_subnets
                ),
            ));
        }
        for text in &request.subnets {
            let subnet: Subnet = text
                .parse()
                .map_err(|e| RefusedRequest::new(Refusal::Malformed, format!("{e}")))?;
            if !allowed.iter().any(|a| a.contains(&subnet)) {
                info!(peer = %peer.addr, name, %subnet, "child intends to serve a subnet it is not allowed; its reports of it will be refused");
            }
        }

        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        {
            let mut table = self.table.write();
            let previous = table.remove(name);
            table.insert(
                name.to_owned(),
                ChildState {
                    level: request.level.clone(),
                    software_version: request.software_version.clone(),
                    session_id,
                    session_start: now,
                    peer_addr: peer.addr,
                    reports: previous.as_ref().map_or(0, |p| p.reports),
                    last_report: previous.and_then(|p| p.last_report),
                    last_sequence: 0,
                },
            );
        }
        self.counters.count_hello_accepted();
        info!(peer = %peer.addr, name, level = %request.level, version = %request.software_version, session_id, "child session opened");
        Ok(HelloReply {
            session_id,
            report_interval_ms: u32::try_from(self.config.report_interval.as_millis())
                .unwrap_or(u32::MAX),
            allowed_subnets: allowed.iter().map(Subnet::to_string).collect(),
            silent_after: self.config.silent_after,
        })
    }

    /// Handles a Report from `peer` at `now`: delivers the accepted subnets to the child table.
    /// Refused subnets are listed in the reply; a refused report changes nothing.
    pub fn handle_report(
        &self,
        peer: &PeerInfo,
        request: &ReportRequest,
        now: Instant,
    ) -> Result<ReportReply, RefusedRequest> {
        let result = self.report(peer, request, now);
        if let Err(refused) = &result {
            self.refuse(peer, refused);
        }
        result
    }

    fn report(
        &self,
        peer: &PeerInfo,
        request: &ReportRequest,
        now: Instant,
    ) -> Result<ReportReply, RefusedRequest> {
        // The session must be the current one of a child this certificate names.
        let name = self.session_name(peer, request.session_id)?;
        let allowed = self.expected.allowed_subnets(&name).ok_or_else(|| {
            RefusedRequest::new(
                Refusal::UnexpectedName,
                format!("{name:?} is no longer an expected child"),
            )
        })?;
        if request.subnets.len() > self.config.max_subnets {
            return Err(RefusedRequest::new(
                Refusal::Malformed,
                format!(
                    "{} subnets, more than {}",
                    request.subnets.len(),
                    self.config.max_subnets
                ),
            ));
        }

        let mut accepted = Vec::with_capacity(request.subnets.len());
        let mut refused = Vec::new();
        let mut seen = HashSet::with_capacity(request.subnets.len());
        let (mut foreign, mut malformed) = (0u64, 0u64);
        for entry in &request.subnets {
            match self.check_subnet(entry, &allowed, &mut seen) {
                Ok(load) => accepted.push(load),
                Err((reason, why)) => {
                    match reason {
                        Refusal::ForeignSubnet => foreign += 1,
                        _ => malformed += 1,
                    }
                    debug!(peer = %peer.addr, name, subnet = truncate(&entry.subnet), reason = reason.as_str(), why, "subnet refused");
                    refused.push(RefusedSubnet {
                        subnet: truncate(&entry.subnet).to_owned(),
                        reason: reason.as_str().to_owned(),
                    });
                }
            }
        }

        let n_accepted = accepted.len();
        {
            let mut table = self.table.write();
            let state = match table.get_mut(&name) {
                Some(state) if state.session_id == request.session_id => state,
                _ => {
                    return Err(RefusedRequest::new(
                        Refusal::NoSession,
                        "the session was replaced meanwhile",
                    ))
                }
            };
            if request.sequence <= state.last_sequence {
                return Err(RefusedRequest::new(
                    Refusal::Malformed,
                    format!(
                        "sequence {} not after {}",
                        request.sequence, state.last_sequence
                    ),
                ));
            }
            state.last_sequence = request.sequence;
            state.reports += 1;
            state.last_report = Some(ChildReport {
                sequence: request.sequence,
                received: now,
                subnets: accepted,
            });
        }
        self.table.changed();
        self.counters.count_report_accepted();
        self.counters.count_subnets_accepted(n_accepted as u64);
        for (reason, n) in [
            (Refusal::ForeignSubnet, foreign),
            (Refusal::Malformed, malformed),
        ] {
            if n > 0 {
                self.counters.add_refusals(reason, n);
                let examples: Vec<&str> = refused
                    .iter()
                    .filter(|r| r.reason == reason.as_str())
                    .take(4)
                    .map(|r| r.subnet.as_str())
                    .collect();
                warn!(peer = %peer.addr, name, reason = reason.as_str(), count = n, ?examples, "subnets refused");
            }
        }
        Ok(ReportReply {
            accepted: u32::try_from(n_accepted).unwrap_or(u32::MAX),
            refused,
        })
    }

    /// Checks a child's shortcut request (F10) against its session and its subnets: the
    /// question for the daemon (the flows that passed), and the verdicts of the signals that
    /// did not (`None`: asked). Foreign and malformed entries are counted.
    pub fn check_shortcut(
        &self,
        peer: &PeerInfo,
        request: &ShortcutRequest,
    ) -> Result<CheckedShortcut, RefusedRequest> {
        let result = self.shortcut(peer, request);
        if let Err(refused) = &result {
            self.refuse(peer, refused);
        }
        result
    }

    fn shortcut(
        &self,
        peer: &PeerInfo,
        request: &ShortcutRequest,
    ) -> Result<CheckedShortcut, RefusedRequest> {
        let name = self.session_name(peer, request.session_id)?;
        let allowed = self.expected.allowed_subnets(&name).ok_or_else(|| {
            RefusedRequest::new(
                Refusal::UnexpectedName,
                format!("{name:?} is no longer an expected child"),
            )
        })?;
        let n = request.signals.len() + request.keepalives.len();
        if n > MAX_SHORTCUT_FLOWS {
            return Err(RefusedRequest::new(
                Refusal::Malformed,
                format!("{n} flows, more than {MAX_SHORTCUT_FLOWS}"),
            ));
        }
        let inside = |f: &crate::mirror::MirrorFlow| allowed.iter().any(|s| s.contains_addr(f.dst));
        let (mut foreign, mut malformed) = (0u64, 0u64);
        let mut verdicts = Vec::with_capacity(request.signals.len());
        let mut signals = Vec::new();
        for f in &request.signals {
            let verdict = match crate::mirror::flow_of(f) {
                None => Some(Refusal::Malformed),
                Some(_) if f.next_hop == 0 => Some(Refusal::Malformed),
                Some(flow) if !inside(&flow) => Some(Refusal::ForeignSubnet),
                Some(flow) => {
                    signals.push(ShortcutSignal {
                        flow,
                        host: std::net::Ipv4Addr::from(f.next_hop),
                    });
                    None
                }
            };
            match verdict {
                Some(Refusal::ForeignSubnet) => foreign += 1,
                Some(_) => malformed += 1,
                None => {}
            }
            verdicts.push(verdict.map(|r| SignalVerdict::Refused(r.as_str())));
        }
        let mut held = Vec::with_capacity(request.keepalives.len());
        let mut keepalives = Vec::new();
        for f in &request.keepalives {
            match crate::mirror::flow_of(f).filter(inside) {
                Some(flow) => {
                    keepalives.push(flow);
                    held.push(None);
                }
                None => held.push(Some(false)),
            }
        }
        for (reason, n) in [
            (Refusal::ForeignSubnet, foreign),
            (Refusal::Malformed, malformed),
        ] {
            if n > 0 {
                self.counters.add_refusals(reason, n);
                warn!(peer = %peer.addr, name, reason = reason.as_str(), count = n, "shortcut signals refused");
            }
        }
        Ok(CheckedShortcut {
            child: name,
            signals,
            keepalives,
            verdicts,
            held,
        })
    }

    /// The child whose current session `session_id` is, among the certificate's names.
    fn session_name(&self, peer: &PeerInfo, session_id: u64) -> Result<String, RefusedRequest> {
        let table = self.table.read();
        peer.names
            .iter()
            .find(|n| {
                table
                    .get(n.as_str())
                    .is_some_and(|s| s.session_id == session_id)
            })
            .cloned()
            .ok_or_else(|| {
                RefusedRequest::new(
                    Refusal::NoSession,
                    format!(
                        "session {} is not the current session of {:?}: say hello first",
                        session_id,
                        peer.display_name()
                    ),
                )
            })
    }

    /// Counts the daemon's refusals of signals (`not_pinned`, `unknown_flow`: a child that
    /// names a flow it does not carry; `bad_address`: malformed).
    pub fn count_shortcut_answer(&self, peer: &PeerInfo, child: &str, answer: &[SignalVerdict]) {
        let (mut not_pinned, mut bad) = (0u64, 0u64);
        for v in answer {
            match v {
                SignalVerdict::Refused("not_pinned" | "unknown_flow") => not_pinned += 1,
                SignalVerdict::Refused(_) => bad += 1,
                _ => {}
            }
        }
        for (reason, n) in [(Refusal::NotPinned, not_pinned), (Refusal::Malformed, bad)] {
            if n > 0 {
                self.counters.add_refusals(reason, n);
                warn!(peer = %peer.addr, name = child, reason = reason.as_str(), count = n, "shortcut signals refused");
            }
        }
    }

    fn check_subnet(
        &self,
        entry: &crate::proto::SubnetLoad,
        allowed: &[Subnet],
        seen: &mut HashSet<Subnet>,
    ) -> Result<SubnetLoad, (Refusal, String)> {
        let malformed = |why: String| (Refusal::Malformed, why);
        let subnet: Subnet = entry
            .subnet
            .parse()
            .map_err(|e: crate::subnet::SubnetError| malformed(e.to_string()))?;
        if entry.metrics.len() > self.config.max_metrics {
            return Err(malformed(format!(
                "{} metrics, more than {}",
                entry.metrics.len(),
                self.config.max_metrics
            )));
        }
        for (metric, value) in &entry.metrics {
            if !is_valid_metric_name(metric, self.config.max_metric_name_len) {
                return Err(malformed(format!(
                    "invalid metric name {:?}",
                    truncate(metric)
                )));
            }
            if !value.is_finite() {
                return Err(malformed(format!("metric {metric} is {value}")));
            }
        }
        if !seen.insert(subnet) {
            return Err(malformed(format!("{subnet} reported twice")));
        }
        if !allowed.iter().any(|a| a.contains(&subnet)) {
            return Err((
                Refusal::ForeignSubnet,
                format!("{subnet} is not inside the allowed subnets"),
            ));
        }
        Ok(SubnetLoad {
            subnet,
            metrics: entry.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }

    fn refuse(&self, peer: &PeerInfo, refused: &RefusedRequest) {
        self.counters.count_refusal(refused.reason);
        warn!(peer = %peer.addr, name = peer.display_name(), reason = refused.reason.as_str(), "request refused: {}", refused.message);
    }
}

/// Whether `name` is a valid metric name: 1..=`max_len` bytes of `[A-Za-z0-9_.:-]`.
pub fn is_valid_metric_name(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// At most 64 bytes of untrusted text, for logs and replies.
fn truncate(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The gRPC service: extracts the peer's identity and hands the request to [`ParentState`].
struct Handler {
    state: Arc<ParentState>,
    shortcuts: Option<mpsc::Sender<ShortcutQuestion>>,
}

pub(crate) fn peer_of<T>(request: &tonic::Request<T>) -> Result<PeerInfo, tonic::Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified peer"))
}

#[tonic::async_trait]
impl StateUpdate for Handler {
    async fn hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let peer = peer_of(&request)?;
        self.state
            .handle_hello(&peer, request.get_ref(), Instant::now())
            .map(tonic::Response::new)
            .map_err(|r| r.to_status())
    }

    async fn report(
        &self,
        request: tonic::Request<ReportRequest>,
    ) -> Result<tonic::Response<ReportReply>, tonic::Status> {
        let peer = peer_of(&request)?;
        self.state
            .handle_report(&peer, request.get_ref(), Instant::now())
            .map(tonic::Response::new)
            .map_err(|r| r.to_status())
    }

    async fn shortcut(
        &self,
        request: tonic::Request<ShortcutRequest>,
    ) -> Result<tonic::Response<ShortcutReply>, tonic::Status> {
        let peer = peer_of(&request)?;
        let checked = self
            .state
            .check_shortcut(&peer, request.get_ref())
            .map_err(|r| r.to_status())?;
        let mut answer = ShortcutAnswer::default();
        if let Some(tx) = &self.shortcuts {
            if !checked.signals.is_empty() || !checked.keepalives.is_empty() {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let question = ShortcutQuestion {
                    child: checked.child.clone(),
                    signals: checked.signals.clone(),
                    keepalives: checked.keepalives.clone(),
                    reply,
                };
                if tx.try_send(question).is_ok() {
                    if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), rx).await {
                        answer = a;
                    }
                }
            }
        }
        self.state
            .count_shortcut_answer(&peer, &checked.child, &answer.signals);
        Ok(tonic::Response::new(checked.reply(&answer)))
    }
}

/// An accepted, verified TLS connection, carrying its [`PeerInfo`] to the gRPC handlers and
/// holding its slot of `max_connections`.
pub(crate) struct ConnIo {
    tls: TlsStream<CountingStream<TcpStream>>,
    peer: PeerInfo,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Connected for ConnIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Counts the requests that tonic refuses before any handler sees them: OUT_OF_RANGE (message
/// over `max_decoding_message_size`) or RESOURCE_EXHAUSTED as `oversized`, INTERNAL (a protobuf decoding
/// error: the handlers never answer INTERNAL) as `malformed`.
#[derive(Clone)]
pub(crate) struct CountCodecRefusals<S> {
    pub(crate) inner: S,
    pub(crate) counters: Arc<ParentCounters>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CountCodecRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let path = request.uri().path().to_owned();
        let counters = self.counters.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = response.headers().get("grpc-status").map(|v| v.as_bytes());
            let reason = match status {
                Some(b"11") | Some(b"8") => Some(Refusal::Oversized),
                Some(b"13") => Some(Refusal::Malformed),
                _ => None,
            };
            if let Some(reason) = reason {
                counters.count_refusal(reason);
                let message = response
                    .headers()
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let addr = peer
                    .as_ref()
                    .map(|p| p.addr.to_string())
                    .unwrap_or_default();
                let name = peer.as_ref().map(|p| p.display_name()).unwrap_or("?");
                warn!(peer = %addr, name, reason = reason.as_str(), path, "request refused: {message}");
            }
            Ok(response)
        })
    }
}

/// The parent side of the protocol: a gRPC server over mutual TLS that delivers children's
/// reports into a [`ChildTable`].
///
/// Create it, keep the handles you need ([`ParentServer::child_table`],
/// [`ParentServer::counters`], [`ParentServer::expected_children`]), then spawn
/// [`ParentServer::serve`].
pub struct ParentServer {
    state: Arc<ParentState>,
    tls: Arc<rustls::ServerConfig>,
    shortcuts: Option<mpsc::Sender<ShortcutQuestion>>,
}

impl std::fmt::Debug for ParentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParentServer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ParentServer {
    /// A parent with this node's `identity`, which accepts the children in `expected`.
    pub fn new(
        identity: &Identity,
        config: ParentConfig,
        expected: ExpectedChildren,
    ) -> Result<Self, ControlError> {
        let state = Arc::new(ParentState::new(config, expected));
        let tls = crate::tls::parent_server_config(identity, state.counters())?;
        Ok(ParentServer {
            state,
            tls,
            shortcuts: None,
        })
    }

    /// Takes children's shortcut signals and keepalives (F10): the checked ones go to the
    /// daemon on `questions`, which answers each. Without it every signal is refused
    /// `unavailable` and no keepalive is held.
    pub fn with_shortcuts(mut self, questions: mpsc::Sender<ShortcutQuestion>) -> Self {
        self.shortcuts = Some(questions);
        self
    }

    /// The table of children and their last reports.
    pub fn child_table(&self) -> ChildTable {
        self.state.child_table()
    }

    /// The counters.
    pub fn counters(&self) -> Arc<ParentCounters> {
        self.state.counters()
    }

    /// The expected children, to update at run time (e.g. on a new gateway table).
    pub fn expected_children(&self) -> ExpectedChildren {
        self.state.expected_children()
    }

    /// The decision core.
    pub fn state(&self) -> Arc<ParentState> {
        self.state.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, lets open
    /// connections finish their requests and returns. Errors of single connections never end
    /// it.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ControlError> {
        let config = self.state.config().clone();
        let (tx, rx) = mpsc::channel::<ConnIo>(64);
        let acceptor = AcceptLoop {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(self.tls.clone()),
            counters: self.state.counters(),
            limit: Arc::new(Semaphore::new(config.max_connections.max(1))),
            handshake_timeout: config.handshake_timeout,
        };
        let accept_task = AbortOnDrop(tokio::spawn(acceptor.run(tx)));

        let service = StateUpdateServer::new(Handler {
            state: self.state.clone(),
            shortcuts: self.shortcuts.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let counters = self.state.counters();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Ok::<_, std::io::Error>,
        );
        let result = tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(move |inner| CountCodecRefusals {
                inner,
                counters: counters.clone(),
            }))
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_interval))
            .max_concurrent_streams(Some(32))
            .http2_max_header_list_size(Some(16 * 1024))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        drop(accept_task);
        result.map_err(ControlError::from)
    }
}

/// Aborts a task when dropped (so the listener closes when `serve` returns or is dropped).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts TCP connections and runs each TLS handshake in its own task, with a timeout, so a
/// slow or hostile peer delays no one else.
pub(crate) struct AcceptLoop {
    pub(crate) listener: TcpListener,
    pub(crate) tls: tokio_rustls::TlsAcceptor,
    pub(crate) counters: Arc<ParentCounters>,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) handshake_timeout: Duration,
}

impl AcceptLoop {
    pub(crate) async fn run(self, tx: mpsc::Sender<ConnIo>) {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically out of file descriptors: wait a little instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                self.counters.count_connection_over_limit();
                warn!(peer = %addr, "connection refused: too many connections");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.clone();
            let counters = self.counters.clone();
            let tx = tx.clone();
            let timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let stream = CountingStream::new(tcp, counters.byte_counter().clone());
                match tokio::time::timeout(timeout, tls.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let names = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|cert| crate::pki::dns_names(cert).ok())
                            .unwrap_or_default();
                        counters.count_connection_accepted();
                        debug!(peer = %addr, ?names, "TLS connection accepted");
                        let peer = PeerInfo {
                            addr,
                            names: names.into(),
                        };
                        let _ = tx
                            .send(ConnIo {
                                tls,
                                peer,
                                _permit: permit,
                            })
                            .await;
                    }
                    Ok(Err(e)) => {
                        let tls_error = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                        let reason = match tls_error {
                            // Counted by the certificate verifier.
                            Some(rustls::Error::InvalidCertificate(_)) => {
                                tls_error.and_then(crate::tls::classify)
                            }
                            Some(other) => {
                                let reason =
                                    crate::tls::classify(other).unwrap_or(Refusal::HandshakeFailed);
                                counters.count_refusal(reason);
                                Some(reason)
                            }
                            None => {
                                counters.count_refusal(Refusal::HandshakeFailed);
                                Some(Refusal::HandshakeFailed)
                            }
                        };
                        let reason = reason.unwrap_or(Refusal::BadCertificate);
                        warn!(peer = %addr, name = "?", reason = reason.as_str(), error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        counters.count_refusal(Refusal::HandshakeFailed);
                        warn!(peer = %addr, name = "?", reason = "handshake_failed", "TLS handshake timed out");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn peer(name: &str) -> PeerInfo {
        PeerInfo {
            addr: "127.0.0.1:1234".parse().unwrap(),
            names: vec![name.to_owned()].into(),
        }
    }

    fn state() -> ParentState {
        let expected = ExpectedChildren::new();
        expected.insert("as1", vec!["10.99.0.0/16".parse().unwrap()]);
        ParentState::new(
            ParentConfig {
                max_subnets: 4,
                max_metrics: 2,
                ..ParentConfig::default()
            },
            expected,
        )
    }

    fn hello(name: &str) -> HelloRequest {
        HelloRequest {
            child_name: name.into(),
            level: "as".into(),
            software_version: "test".into(),
            subnets: vec!["10.99.0.0/16".into()],
        }
    }

    fn load(subnet: &str, metrics: &[(&str, f64)]) -> proto::SubnetLoad {
        proto::SubnetLoad {
            subnet: subnet.into(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn sflow(dst: [u8; 4], port: u32, host: u32) -> proto::MirrorFlow {
        proto::MirrorFlow {
            src: u32::from_be_bytes([10, 200, 1, 2]),
            dst: u32::from_be_bytes(dst),
            src_port: port,
            dst_port: 80,
            protocol: 6,
            next_hop: host,
        }
    }

    /// Shortcut requests (F10): only on the child's session; signals for flows outside its
    /// subnets are refused `foreign_subnet`, malformed ones `malformed`, both counted; the rest
    /// goes to the daemon, whose answers fill the reply in order; `not_pinned` is counted.
    #[test]
    fn shortcut_checks() {
        let s = state();
        let now = Instant::now();
        let p = peer("as1");
        let host = u32::from_be_bytes([10, 200, 9, 2]);
        let req = |session_id| ShortcutRequest {
            session_id,
            signals: vec![
                sflow([10, 99, 0, 1], 40000, host),
                sflow([10, 98, 0, 1], 40001, host),
                sflow([10, 99, 0, 1], 0, host),
                sflow([10, 99, 0, 1], 40003, 0),
                sflow([10, 99, 0, 1], 40004, host),
            ],
            keepalives: vec![sflow([10, 99, 0, 1], 40000, 0), sflow([10, 1, 0, 1], 1, 0)],
        };
        assert_eq!(
            s.check_shortcut(&p, &req(9)).unwrap_err().reason,
            Refusal::NoSession
        );
        let session_id = s.handle_hello(&p, &hello("as1"), now).unwrap().session_id;
        // Another certificate cannot use as1's session.
        assert_eq!(
            s.check_shortcut(&peer("as2"), &req(session_id))
                .unwrap_err()
                .reason,
            Refusal::NoSession
        );
        let checked = s.check_shortcut(&p, &req(session_id)).unwrap();
        assert_eq!(checked.child, "as1");
        assert_eq!(
            checked.signals.len(),
            2,
            "two well-formed signals in as1's subnets"
        );
        assert_eq!(checked.keepalives.len(), 1);
        assert_eq!(s.counters().refused(Refusal::ForeignSubnet), 1);
        assert_eq!(s.counters().refused(Refusal::Malformed), 2);
        let answer = ShortcutAnswer {
            signals: vec![
                SignalVerdict::Installed,
                SignalVerdict::Refused("not_pinned"),
            ],
            held: vec![true],
        };
        s.count_shortcut_answer(&p, "as1", &answer.signals);
        assert_eq!(s.counters().refused(Refusal::NotPinned), 1);
        let reply = checked.reply(&answer);
        assert_eq!(
            reply.signals,
            [
                "installed",
                "foreign_subnet",
                "malformed",
                "malformed",
                "not_pinned"
            ]
        );
        assert_eq!(reply.held, [true, false]);
        // Without an answer from the daemon: unavailable, not held.
        let reply = checked.reply(&ShortcutAnswer::default());
        assert_eq!(reply.signals[0], "unavailable");
        assert_eq!(reply.held, [false, false]);
    }

    #[test]
    fn hello_authorization() {
        let s = state();
        let now = Instant::now();
        let err = s
            .handle_hello(&peer("as2"), &hello("as2"), now)
            .unwrap_err();
        assert_eq!(err.reason, Refusal::UnexpectedName);
        let err = s
            .handle_hello(&peer("as2"), &hello("as1"), now)
            .unwrap_err();
        assert_eq!(err.reason, Refusal::UnexpectedName);
        let mut bad = hello("as1");
        bad.subnets = vec!["10.99.0.1/16".into()];
        assert_eq!(
            s.handle_hello(&peer("as1"), &bad, now).unwrap_err().reason,
            Refusal::Malformed
        );
        let reply = s.handle_hello(&peer("as1"), &hello("as1"), now).unwrap();
        assert_eq!(reply.allowed_subnets, vec!["10.99.0.0/16".to_string()]);
        assert_eq!(reply.report_interval_ms, 1000);
        assert_eq!(s.counters().refused(Refusal::UnexpectedName), 2);
        assert_eq!(s.counters().refused(Refusal::Malformed), 1);
        assert_eq!(s.counters().hellos_accepted(), 1);
    }

    #[test]
    fn report_validation() {
        let s = state();
        let now = Instant::now();
        let p = peer("as1");
        let no = ReportRequest {
            session_id: 7,
            sequence: 1,
            subnets: vec![],
        };
        assert_eq!(
            s.handle_report(&p, &no, now).unwrap_err().reason,
            Refusal::NoSession
        );
        let session_id = s.handle_hello(&p, &hello("as1"), now).unwrap().session_id;
        let report = ReportRequest {
            session_id,
            sequence: 1,
            subnets: vec![
                load("10.99.1.0/24", &[("cpu", 0.5), ("flows", 10.0)]),
                load("10.98.0.0/24", &[("cpu", 0.5)]),
                load("10.99.2.0/24", &[("cpu", f64::NAN)]),
                load("10.99.3.0/24", &[("", 1.0)]),
            ],
        };
        let reply = s.handle_report(&p, &report, now).unwrap();
        assert_eq!(reply.accepted, 1);
        let reasons: Vec<&str> = reply.refused.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["foreign_subnet", "malformed", "malformed"]);
        let child = s.child_table().get("as1").unwrap();
        let last = child.last_report.unwrap();
        assert_eq!(last.subnets.len(), 1);
        assert_eq!(last.subnets[0].metrics["flows"], 10.0);
        // Same sequence again: refused.
        assert_eq!(
            s.handle_report(&p, &report, now).unwrap_err().reason,
            Refusal::Malformed
        );
        // Too many subnets, too many metrics, duplicates.
        let mut big = report.clone();
        big.sequence = 5;
        big.subnets.push(load("10.99.4.0/24", &[]));
        assert_eq!(
            s.handle_report(&p, &big, now).unwrap_err().reason,
            Refusal::Malformed
        );
        let dup = ReportRequest {
            session_id,
            sequence: 6,
            subnets: vec![
                load("10.99.1.0/24", &[("a", 1.0), ("b", 1.0), ("c", 1.0)]),
                load("10.99.5.0/24", &[]),
                load("10.99.5.0/24", &[]),
            ],
        };
        let reply = s.handle_report(&p, &dup, now).unwrap();
        assert_eq!(reply.accepted, 1);
        assert_eq!(reply.refused.len(), 2);
        // Removing the child from the expected set refuses its reports.
        s.expected_children().remove("as1");
        let next = ReportRequest {
            session_id,
            sequence: 7,
            subnets: vec![],
        };
        assert_eq!(
            s.handle_report(&p, &next, now).unwrap_err().reason,
            Refusal::UnexpectedName
        );
    }

    #[test]
    fn liveness() {
        let s = state();
        let t0 = Instant::now();
        let p = peer("as1");
        let session_id = s.handle_hello(&p, &hello("as1"), t0).unwrap().session_id;
        let table = s.child_table();
        let second = Duration::from_secs(1);
        assert!(table.live_children(t0, second, 3).is_empty());
        let r = ReportRequest {
            session_id,
            sequence: 1,
            subnets: vec![load("10.99.0.0/16", &[("load", 1.0)])],
        };
        let mut changes = table.subscribe();
        s.handle_report(&p, &r, t0).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(table.live_children(t0 + 3 * second, second, 3), ["as1"]);
        assert!(table.live_children(t0 + 4 * second, second, 3).is_empty());
        assert_eq!(table.silent_children(t0 + 4 * second, second, 3), ["as1"]);
    }

    #[test]
    fn metric_names() {
        assert!(is_valid_metric_name("cpu", 64));
        assert!(is_valid_metric_name("rtt_ms.p99:x-1", 64));
        assert!(!is_valid_metric_name("", 64));
        assert!(!is_valid_metric_name("a b", 64));
        assert!(!is_valid_metric_name("é", 64));
        assert!(!is_valid_metric_name(&"a".repeat(65), 64));
    }
}
