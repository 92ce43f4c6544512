//! WHOHAS between the routers of one cluster (MISSION F17c): [`WhohasAsker`] and the
//! `slr.control.v1.Whohas` service that [`MirrorServer::with_whohas`](crate::MirrorServer::with_whohas) serves beside flow
//! mirroring.
//!
//! A router that receives a mid-flow packet of a flow it holds no state for (the connection
//! began at another router: a routing change moved it, or that router died) asks its
//! configured neighbours who holds the flow before its policy picks a host afresh (seed: "a
//! limited scope WHOHAS query to neighboring SLR clusters to retrieve the state of that
//! connection"). The scope is the configured peers; the channel is the cluster's mutual TLS:
//!
//! - **Answering** ([`WhohasState`], no socket): a question is accepted only from a configured
//!   peer whose certificate's dNSName is the query's `router` (`unexpected_name` otherwise); at
//!   most `max_flows` flows per question (`malformed` beyond); each peer has a token bucket of
//!   flows per second, and flows over it are not answered (`rate_limited`, counted) so that a
//!   flood of questions costs the answerer a bounded share of its packet thread. Malformed
//!   flows are not answered; flows outside the answerer's virtual subnets are answered with
//!   nothing and counted (`foreign_subnet`). The rest go to the daemon as a
//!   [`WhohasRequest`], which answers from its flow table.
//! - **Asking** ([`WhohasAsker`]): one question per batch of flows to every peer at once, each
//!   bounded by a timeout; a peer that cannot be reached is skipped for a second (a dead router
//!   must not make every question wait for its timeout). The first peer (in configured order)
//!   that holds a flow answers it; a flow nobody holds is [`Found::Nobody`], and the router's
//!   policy picks at once.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tracing::warn;

use crate::counting::ByteCounter;
use crate::mirror::{flow_of, proto_flow, MirrorFlow};
use crate::parent::peer_of;
use crate::pki::Identity;
use crate::proto::whohas_client::WhohasClient;
use crate::proto::whohas_server::Whohas;
use crate::proto::{WhohasQuery, WhohasReply};
use crate::refusal::{ParentCounters, Refusal};
use crate::ControlError;

/// What the daemon says of one flow it was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowReply {
    /// It holds the flow; its packets go to this tunnel address.
    Held(Ipv4Addr),
    /// It does not.
    NotHeld,
    /// The destination is in none of its virtual subnets.
    Foreign,
}

/// A question for the daemon: the flows a peer asked about (checked), and where the answer
/// goes: one [`FlowReply`] per flow, in order, and the daemon's own tunnel address.
#[derive(Debug)]
pub struct WhohasRequest {
    /// The asking peer.
    pub from: String,
    /// The flows.
    pub flows: Vec<MirrorFlow>,
    /// The answer.
    pub reply: oneshot::Sender<(Vec<FlowReply>, Ipv4Addr)>,
}

/// The answering side's settings.
#[derive(Debug, Clone)]
pub struct WhohasServerConfig {
    /// Most flows in one question; a larger one is refused whole. Default 1024.
    pub max_flows: usize,
    /// Flows per second a peer may ask about (token bucket). Default 50,000.
    pub rate: f64,
    /// The bucket's size. Default 5,000.
    pub burst: f64,
    /// Longest the daemon may take to answer. Default 1 s.
    pub answer_timeout: Duration,
}

impl Default for WhohasServerConfig {
    fn default() -> Self {
        WhohasServerConfig {
            max_flows: 1024,
            rate: 50_000.0,
            burst: 5_000.0,
            answer_timeout: Duration::from_secs(1),
        }
    }
}

/// What the answering side counts (connection-level refusals are in the server's
/// [`ParentCounters`], with `rate_limited` and `foreign_subnet` flows).
#[derive(Debug, Default)]
pub struct WhohasServerStats {
    questions: AtomicU64,
    flows_asked: AtomicU64,
    flows_held: AtomicU64,
}

impl WhohasServerStats {
    /// Questions accepted.
    pub fn questions(&self) -> u64 {
        self.questions.load(Ordering::Relaxed)
    }
    /// Flows asked about in accepted questions.
    pub fn flows_asked(&self) -> u64 {
        self.flows_asked.load(Ordering::Relaxed)
    }
    /// Flows answered as held.
    pub fn flows_held(&self) -> u64 {
        self.flows_held.load(Ordering::Relaxed)
    }
}

/// A question that passed the checks: the flows for the daemon, with their places in the
/// question.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckedQuestion {
    /// Flows asked about in the question.
    pub total: usize,
    /// The flows to answer and their index in the question.
    pub flows: Vec<(usize, MirrorFlow)>,
    /// Flows over the rate limit.
    pub rate_limited: u32,
}

/// The decisions of the answering side, without a socket.
#[derive(Debug)]
pub struct WhohasState {
    config: WhohasServerConfig,
    peers: HashSet<String>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    counters: Arc<ParentCounters>,
    stats: Arc<WhohasServerStats>,
}

impl WhohasState {
    /// Accepts questions from `peers`; refusals go to `counters`.
    pub fn new(
        config: WhohasServerConfig,
        peers: &[String],
        counters: Arc<ParentCounters>,
    ) -> Self {
        WhohasState {
            config,
            peers: peers.iter().cloned().collect(),
            buckets: Mutex::default(),
            counters,
            stats: Arc::default(),
        }
    }

    /// The counters (a shared handle).
    pub fn stats(&self) -> Arc<WhohasServerStats> {
        self.stats.clone()
    }

    /// Checks a question from a peer whose certificate proves `names`, at `now`.
    pub fn check(
        &self,
        names: &[String],
        query: &WhohasQuery,
        now: Instant,
    ) -> Result<CheckedQuestion, Refusal> {
        if !(self.peers.contains(&query.router) && names.contains(&query.router)) {
            self.counters.count_refusal(Refusal::UnexpectedName);
            return Err(Refusal::UnexpectedName);
        }
        let total = query.flows.len();
        if total > self.config.max_flows {
            self.counters.count_refusal(Refusal::Malformed);
            return Err(Refusal::Malformed);
        }
        let allowed = {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            let (tokens, at) = buckets
                .entry(query.router.clone())
                .or_insert((self.config.burst, now));
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            *tokens = (*tokens + elapsed * self.config.rate).min(self.config.burst);
            *at = now;
            let allowed = (*tokens as usize).min(total);
            *tokens -= allowed as f64;
            allowed
        };
        let rate_limited = (total - allowed) as u32;
        if rate_limited > 0 {
            self.counters
                .add_refusals(Refusal::RateLimited, u64::from(rate_limited));
        }
        let mut flows = Vec::with_capacity(allowed);
        let mut malformed = 0u64;
        for (i, f) in query.flows.iter().take(allowed).enumerate() {
            match flow_of(f) {
                Some(flow) => flows.push((i, flow)),
                None => malformed += 1,
            }
        }
        if malformed > 0 {
            self.counters.add_refusals(Refusal::Malformed, malformed);
        }
        self.stats.questions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .flows_asked
            .fetch_add(total as u64, Ordering::Relaxed);
        Ok(CheckedQuestion {
            total,
            flows,
            rate_limited,
        })
    }

    /// The reply to a checked question, from the daemon's answers (counted).
    pub fn reply(
        &self,
        question: &CheckedQuestion,
        answers: &[FlowReply],
        holder: Ipv4Addr,
    ) -> WhohasReply {
        let mut next_hop = vec![0u32; question.total];
        let mut foreign = 0u32;
        for ((i, _), a) in question.flows.iter().zip(answers) {
            match a {
                FlowReply::Held(hop) => next_hop[*i] = u32::from(*hop),
                FlowReply::NotHeld => {}
                FlowReply::Foreign => foreign += 1,
            }
        }
        let held = next_hop.iter().filter(|h| **h != 0).count();
        self.stats
            .flows_held
            .fetch_add(held as u64, Ordering::Relaxed);
        if foreign > 0 {
            self.counters
                .add_refusals(Refusal::ForeignSubnet, u64::from(foreign));
        }
        WhohasReply {
            next_hop,
            holder: u32::from(holder),
            foreign,
            rate_limited: question.rate_limited,
        }
    }
}

/// The gRPC handler: checks, asks the daemon, replies.
pub(crate) struct Handler {
    pub(crate) state: Arc<WhohasState>,
    pub(crate) requests: mpsc::Sender<WhohasRequest>,
}

#[tonic::async_trait]
impl Whohas for Handler {
    async fn ask(
        &self,
        request: tonic::Request<WhohasQuery>,
    ) -> Result<tonic::Response<WhohasReply>, tonic::Status> {
        let peer = peer_of(&request)?;
        let query = request.get_ref();
        let question = match self.state.check(&peer.names, query, Instant::now()) {
            Ok(q) => q,
            Err(reason) => {
                warn!(peer = %peer.addr, name = peer.display_name(), router = query.router, reason = reason.as_str(), "WHOHAS question refused");
                return Err(match reason {
                    Refusal::UnexpectedName => tonic::Status::permission_denied(
                        "not a peer of this cluster, or the certificate is not the router's",
                    ),
                    _ => tonic::Status::invalid_argument("too many flows in one question"),
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        let asked = WhohasRequest {
            from: query.router.clone(),
            flows: question.flows.iter().map(|(_, f)| *f).collect(),
            reply: tx,
        };
        if !question.flows.is_empty() {
            self.requests
                .send(asked)
                .await
                .map_err(|_| tonic::Status::unavailable("the router is stopping"))?;
            let (answers, holder) = tokio::time::timeout(self.state.config.answer_timeout, rx)
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("the router did not answer"))?
                .map_err(|_| tonic::Status::unavailable("the router is stopping"))?;
            return Ok(tonic::Response::new(
                self.state.reply(&question, &answers, holder),
            ));
        }
        Ok(tonic::Response::new(self.state.reply(
            &question,
            &[],
            Ipv4Addr::UNSPECIFIED,
        )))
    }
}

/// What a cluster said of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `holder` (a peer's tunnel address) holds it and sends it to `next_hop`.
    Held {
        /// The holder's next hop for the flow.
        next_hop: Ipv4Addr,
        /// The holder's own tunnel address.
        holder: Ipv4Addr,
    },
    /// No peer that answered holds it.
    Nobody,
}

/// The asking side's settings.
#[derive(Debug, Clone)]
pub struct WhohasAskerConfig {
    /// How long a question may take, connection included. Default 50 ms.
    pub timeout: Duration,
    /// How long an unreachable peer is skipped. Default 1 s.
    pub skip_unreachable: Duration,
}

impl Default for WhohasAskerConfig {
    fn default() -> Self {
        WhohasAskerConfig {
            timeout: Duration::from_millis(50),
            skip_unreachable: Duration::from_secs(1),
        }
    }
}

/// One peer's counters on the asking side.
#[derive(Debug, Default)]
pub struct WhohasPeerStats {
    questions: AtomicU64,
    flows_asked: AtomicU64,
    flows_held: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
    connected: AtomicBool,
    bytes: Arc<ByteCounter>,
    last_error: Mutex<Option<String>>,
}

impl WhohasPeerStats {
    /// Questions answered.
    pub fn questions(&self) -> u64 {
        self.questions.load(Ordering::Relaxed)
    }
    /// Flows asked about in answered questions.
    pub fn flows_asked(&self) -> u64 {
        self.flows_asked.load(Ordering::Relaxed)
    }
    /// Flows the peer said it holds.
    pub fn flows_held(&self) -> u64 {
        self.flows_held.load(Ordering::Relaxed)
    }
    /// Questions that failed (unreachable, refused, timed out).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Questions not sent because the peer was unreachable a moment ago.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Whether the last question reached it.
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

struct Peer {
    name: ServerName<'static>,
    addr: SocketAddr,
    channel: tokio::sync::Mutex<Option<Channel>>,
    skip_until: Mutex<Option<Instant>>,
    stats: Arc<WhohasPeerStats>,
}

/// The asking side: every configured peer, asked at once.
pub struct WhohasAsker {
    me: String,
    tls: Arc<rustls::ClientConfig>,
    config: WhohasAskerConfig,
    peers: Vec<Peer>,
    timing: Arc<AskTiming>,
}

/// How long questions take, from the call to [`WhohasAsker::ask`] to its answers.
#[derive(Debug, Default)]
pub struct AskTiming {
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl AskTiming {
    /// Questions asked.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// Their mean time.
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.total_ns.load(Ordering::Relaxed) / self.count().max(1))
    }
    /// The longest.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }
    /// The last.
    pub fn last(&self) -> Duration {
        Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
    fn record(&self, d: Duration) {
        let ns = d.as_nanos() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.last_ns.store(ns, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WhohasAsker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhohasAsker")
            .field("me", &self.me)
            .field(
                "peers",
                &self.peers.iter().map(|p| p.addr).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl WhohasAsker {
    /// Router `me` asking `peers` (certificate name, address).
    pub fn new(
        identity: &Identity,
        me: &str,
        peers: &[(String, SocketAddr)],
        config: WhohasAskerConfig,
    ) -> Result<Self, ControlError> {
        let peers = peers
            .iter()
            .map(|(n, addr)| {
                let name = ServerName::try_from(n.clone())
                    .map_err(|_| ControlError::InvalidName(n.clone()))?;
                Ok(Peer {
                    name,
                    addr: *addr,
                    channel: tokio::sync::Mutex::new(None),
                    skip_until: Mutex::new(None),
                    stats: Arc::default(),
                })
            })
            .collect::<Result<Vec<_>, ControlError>>()?;
        Ok(WhohasAsker {
            me: me.to_owned(),
            tls: crate::tls::client_config(identity, b"h2")?,
            config,
            peers,
            timing: Arc::default(),
        })
    }

    /// How long questions take (a shared handle).
    pub fn timing(&self) -> Arc<AskTiming> {
        self.timing.clone()
    }

    /// Each peer's name and counters.
    pub fn stats(&self) -> Vec<(String, Arc<WhohasPeerStats>)> {
        self.peers
            .iter()
            .map(|p| (peer_name(&p.name), p.stats.clone()))
            .collect()
    }

    /// Asks every peer about `flows` at once; one answer per flow, in order. Returns when every
    /// peer answered or failed, or at the timeout (what came by then counts).
    pub async fn ask(&self, flows: &[MirrorFlow]) -> Vec<Found> {
        let started = Instant::now();
        let query = WhohasQuery {
            router: self.me.clone(),
            flows: flows.iter().map(|f| proto_flow(f, None)).collect(),
        };
        let asks = self.peers.iter().map(|p| {
            let query = query.clone();
            async move {
                if Self::skipped(p) {
                    // Unreachable a moment ago: not asked, and not a new failure (which would
                    // push the end of the skip further for as long as questions come).
                    p.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                tokio::time::timeout(self.config.timeout, self.ask_peer(p, query))
                    .await
                    .unwrap_or(Err(ControlError::Timeout("Ask")))
                    .map_err(|e| self.failed(p, e))
                    .ok()
            }
        });
        let replies = futures_util::future::join_all(asks).await;
        let mut found = vec![Found::Nobody; flows.len()];
        for reply in replies.into_iter().flatten() {
            let holder = Ipv4Addr::from(reply.holder);
            for (f, hop) in found.iter_mut().zip(&reply.next_hop) {
                if *f == Found::Nobody && *hop != 0 {
                    *f = Found::Held {
                        next_hop: Ipv4Addr::from(*hop),
                        holder,
                    };
                }
            }
        }
        self.timing.record(started.elapsed());
        found
    }

    fn failed(&self, p: &Peer, e: ControlError) {
        p.stats.failures.fetch_add(1, Ordering::Relaxed);
        p.stats.connected.store(false, Ordering::Relaxed);
        *p.skip_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + self.config.skip_unreachable);
        *p.stats
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }

    fn skipped(p: &Peer) -> bool {
        let skip = *p.skip_until.lock().unwrap_or_else(PoisonError::into_inner);
        skip.is_some_and(|t| Instant::now() < t)
    }

    async fn ask_peer(&self, p: &Peer, query: WhohasQuery) -> Result<WhohasReply, ControlError> {
        let channel = {
            let mut slot = p.channel.lock().await;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = crate::mirror::connect_channel(
                        self.tls.clone(),
                        p.name.clone(),
                        p.addr,
                        p.stats.bytes.clone(),
                        self.config.timeout,
                        "http://slr-whohas",
                    )
                    .await?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let n = query.flows.len() as u64;
        let result = WhohasClient::new(channel).ask(query).await;
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // The connection may be gone: make a new one next time.
                *p.channel.lock().await = None;
                return Err(ControlError::Status {
                    rpc: "Ask",
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        };
        p.stats.questions.fetch_add(1, Ordering::Relaxed);
        p.stats.flows_asked.fetch_add(n, Ordering::Relaxed);
        let held = reply.next_hop.iter().filter(|h| **h != 0).count();
        p.stats.flows_held.fetch_add(held as u64, Ordering::Relaxed);
        p.stats.connected.store(true, Ordering::Relaxed);
        Ok(reply)
    }
}

fn peer_name(n: &ServerName<'static>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn flow(port: u32) -> proto::MirrorFlow {
        proto::MirrorFlow {
            src: u32::from(Ipv4Addr::new(10, 200, 1, 2)),
            dst: u32::from(Ipv4Addr::new(10, 99, 0, 1)),
            src_port: port,
            dst_port: 80,
            protocol: 6,
            next_hop: 0,
        }
    }

    fn some_flow() -> MirrorFlow {
        flow_of(&flow(1)).unwrap()
    }

    fn query(router: &str, flows: Vec<proto::MirrorFlow>) -> WhohasQuery {
        WhohasQuery {
            router: router.into(),
            flows,
        }
    }

    #[test]
    fn only_a_configured_peer_under_its_own_name_may_ask() {
        let counters = Arc::new(ParentCounters::default());
        let s = WhohasState::new(
            WhohasServerConfig::default(),
            &["r2".to_string()],
            counters.clone(),
        );
        let t0 = Instant::now();
        let names = vec!["r2".to_string()];
        let q = s.check(&names, &query("r2", vec![flow(1)]), t0).unwrap();
        assert_eq!(q.flows.len(), 1);
        assert_eq!(
            s.check(&names, &query("r3", vec![]), t0).unwrap_err(),
            Refusal::UnexpectedName
        );
        assert_eq!(
            s.check(&["r3".to_string()], &query("r2", vec![]), t0)
                .unwrap_err(),
            Refusal::UnexpectedName
        );
        assert_eq!(counters.refused(Refusal::UnexpectedName), 2);
    }

    #[test]
    fn floods_are_rate_limited_per_peer_and_malformed_flows_skipped() {
        let counters = Arc::new(ParentCounters::default());
        let cfg = WhohasServerConfig {
            max_flows: 100,
            rate: 1000.0,
            burst: 150.0,
            ..WhohasServerConfig::default()
        };
        let peers = ["r2".to_string(), "r3".to_string()];
        let s = WhohasState::new(cfg, &peers, counters.clone());
        let t0 = Instant::now();
        let r2 = vec!["r2".to_string()];
        let many: Vec<_> = (1..=100).map(flow).collect();
        assert_eq!(
            s.check(&r2, &query("r2", many.clone()), t0)
                .unwrap()
                .rate_limited,
            0
        );
        let q = s.check(&r2, &query("r2", many.clone()), t0).unwrap();
        assert_eq!((q.flows.len(), q.rate_limited), (50, 50));
        // Another peer has its own bucket; r2's refills with time (1000/s: 100 in 100 ms).
        let r3 = vec!["r3".to_string()];
        assert_eq!(
            s.check(&r3, &query("r3", many.clone()), t0)
                .unwrap()
                .rate_limited,
            0
        );
        let q = s
            .check(
                &r2,
                &query("r2", many.clone()),
                t0 + Duration::from_millis(100),
            )
            .unwrap();
        assert_eq!(q.rate_limited, 0);
        assert_eq!(counters.refused(Refusal::RateLimited), 50);
        // Too many flows in one question; malformed flows are skipped, counted.
        let too_many: Vec<_> = (1..=101).map(flow).collect();
        assert_eq!(
            s.check(&r3, &query("r3", too_many), t0 + Duration::from_secs(1))
                .unwrap_err(),
            Refusal::Malformed
        );
        let mut icmp = flow(7);
        icmp.protocol = 1;
        let q = s
            .check(
                &r3,
                &query("r3", vec![icmp, flow(0), flow(9)]),
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(q.flows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2]);
        assert_eq!(counters.refused(Refusal::Malformed), 3);
        // The reply: one slot per flow asked, foreign flows counted.
        let reply = s.reply(
            &CheckedQuestion {
                total: 3,
                flows: vec![(0, some_flow()), (2, some_flow())],
                rate_limited: 1,
            },
            &[
                FlowReply::Held(Ipv4Addr::new(10, 0, 0, 9)),
                FlowReply::Foreign,
            ],
            Ipv4Addr::new(10, 0, 0, 1),
        );
        assert_eq!(
            reply.next_hop,
            vec![u32::from(Ipv4Addr::new(10, 0, 0, 9)), 0, 0]
        );
        assert_eq!((reply.foreign, reply.rate_limited), (1, 1));
        assert_eq!(counters.refused(Refusal::ForeignSubnet), 1);
        assert_eq!(s.stats().flows_held(), 1);
    }
}
