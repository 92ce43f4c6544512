//! `[cluster]`: flow mirroring with the routers that back this one up (MISSION F17b).
//!
//! The core logs every flow it pins for good (TCP established, UDP pinned) and every flow it
//! lets go of (`FlowChange`, the same log the fast path follows); the packet thread hands each
//! change to one sender per peer (`slr_control::MirrorSender`: batched, over mutual TLS, a
//! full sync after every connection). What the peers push arrives through the
//! mailbox and the core takes each flow in with `restore_flow`, pinned to the same next hop
//! (found by its tunnel address): if this router receives the flow's packets later (its peer
//! died, or the network moved the flow), they go where they went before, whatever the policy
//! would pick now. A peer's release removes a copy only while it is still a copy (no packet of
//! the flow reached this router since it was taken in); a flow this router carries is its own.
//!
//! WHOHAS (F17c) runs on the same connections: the core holds a mid-flow packet of a flow it
//! does not hold and logs a question ([`Router::poll_whohas`]); [`Mirror::ask`] hands the
//! questions to a [`WhohasAsker`] (every peer at once, within the core's timeout) and the
//! answers come back through the mailbox ([`Mirror::found`]). A peer's question is answered by
//! the packet thread from the core's table ([`answer_question`]).

use crate::mailbox::Handle;
use crate::snapshot::MirrorView;
use anyhow::{Context, Result};
use slr_config::ClusterConfig;
use slr_control::{
    FlowReply, Found, MirrorChange, MirrorFlow, MirrorSender, MirrorSenderConfig,
    MirrorSenderStats, MirrorServer, MirrorServerConfig, MirrorServerStats, ParentCounters,
    ReceivedBatch, WhohasAsker, WhohasAskerConfig, WhohasPeerStats, WhohasRequest,
    WhohasServerConfig, WhohasServerStats,
};
use slr_core::flow_table::{FlowKey, FlowState};
use slr_core::router::{FlowChange, Router};
use slr_core::time::{Duration, Instant};
use slr_core::whohas::{WhohasAnswer, WhohasReply};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The mirroring as the packet thread holds it.
pub(super) struct Mirror {
    /// One queue per peer, to its sender.
    senders: Vec<(String, tokio::sync::mpsc::Sender<MirrorChange>)>,
    /// Flows taken in from peers, and when (core clock): a copy until a packet touches it.
    copies: HashMap<FlowKey, Instant>,
    /// Copies just taken in, whose own offload (the core's log entry of `restore_flow`) is
    /// still to come through the log.
    restoring: std::collections::HashSet<FlowKey>,
    /// What the peers were last told of each flow this router pinned (its next hop's tunnel
    /// address): the core logs an offload at every packet it sees of an established flow, and
    /// the peers need each change once.
    announced: HashMap<FlowKey, Ipv4Addr>,
    counts: Counts,
    /// Refreshing the peers' copies of flows this router carries (see [`Mirror::refresh`]).
    sweep: Sweep,
    server: Arc<MirrorServerStats>,
    refusals: Arc<ParentCounters>,
    peers: Vec<(String, Arc<MirrorSenderStats>)>,
    /// WHOHAS: questions to the asker, the answering side's and each peer's counters.
    questions: Option<tokio::sync::mpsc::Sender<Vec<MirrorFlow>>>,
    questions_dropped: u64,
    whohas_server: Option<Arc<WhohasServerStats>>,
    whohas_peers: Vec<(String, Arc<WhohasPeerStats>)>,
    whohas_timing: Option<Arc<slr_control::AskTiming>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A pass over the flows this router announced, telling the peers again of those that carried
/// packets since the pass before.
#[derive(Debug, Default)]
struct Sweep {
    /// When the next pass starts.
    next: Option<Instant>,
    /// The pass under way: flows still to look at.
    todo: Vec<FlowKey>,
    /// Activity after this time counts (the start of the pass before).
    since: Instant,
    /// When the pass under way started.
    started: Instant,
}

/// Flows looked at per call of [`Mirror::refresh`] (the packet thread does it between batches).
const SWEEP_CHUNK: usize = 4096;

/// What the packet thread counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    offered: u64,
    queue_full: u64,
    taken_in: u64,
    already_held: u64,
    not_taken: u64,
    copies_released: u64,
    releases_ignored: u64,
    refreshes_sent: u64,
    copies_refreshed: u64,
}

/// A flow key as mirrored.
pub(super) fn mirror_flow(k: &FlowKey) -> MirrorFlow {
    MirrorFlow {
        src: k.src_addr,
        dst: k.dst_addr,
        src_port: k.src_port,
        dst_port: k.dst_port,
        protocol: k.protocol,
    }
}

pub(super) fn flow_key(f: &MirrorFlow) -> FlowKey {
    FlowKey::new(f.src, f.dst, f.src_port, f.dst_port, f.protocol)
}

/// This router's answer to a peer's WHOHAS question: one reply per flow, and its own tunnel
/// address.
pub(super) fn answer_question(router: &Router, flows: &[MirrorFlow]) -> (Vec<FlowReply>, Ipv4Addr) {
    let replies = flows
        .iter()
        .map(|f| match router.whohas_reply(&flow_key(f)) {
            WhohasReply::Held(hop) => FlowReply::Held(hop),
            WhohasReply::NotHeld => FlowReply::NotHeld,
            WhohasReply::Foreign => FlowReply::Foreign,
        })
        .collect();
    (replies, router.config().tunnel_source)
}

/// Every flow a peer may take over: established TCP and pinned UDP, with the tunnel address of
/// its next hop.
pub(super) fn mirrorable(router: &Router) -> Vec<(MirrorFlow, Ipv4Addr)> {
    let hops = router.next_hops();
    router
        .flows()
        .filter(|(_, e)| matches!(e.state(), FlowState::TcpEstablished | FlowState::Udp))
        .filter_map(|(k, e)| {
            hops.get(e.next_hop() as usize)
                .map(|h| (mirror_flow(k), h.address))
        })
        .collect()
}

impl Mirror {
    /// Starts the server and one sender per peer on a thread of their own; `handle` reaches
    /// the packet thread.
    pub(super) fn start(cfg: &ClusterConfig, name: &str, handle: Handle) -> Result<Self> {
        let identity = slr_control::Identity::load(&cfg.ca, &cfg.cert, &cfg.key)
            .context("[cluster] ca, cert, key")?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("[cluster] listen {}", cfg.listen))?;
        listener.set_nonblocking(true)?;
        let mut server = MirrorServer::new(
            &identity,
            MirrorServerConfig::new(cfg.peers.iter().map(|p| p.name.clone()).collect()),
        )?;
        let (server_stats, refusals) = (server.stats(), server.counters());
        // WHOHAS: the answering side beside the mirror service, and an asker.
        let mut whohas_server = None;
        let mut answering = None;
        let mut asking = None;
        let mut whohas_peers = Vec::new();
        let mut whohas_timing = None;
        let ask_peers = cfg.ask_peers();
        if let Some(w) = cfg.whohas {
            let (tx, rx) = tokio::sync::mpsc::channel::<WhohasRequest>(256);
            let config = WhohasServerConfig {
                rate: f64::from(w.rate),
                burst: (f64::from(w.rate) / 10.0).max(1024.0),
                ..WhohasServerConfig::default()
            };
            let (s, stats) = server.with_whohas(config, tx);
            server = s;
            whohas_server = Some(stats);
            answering = Some(rx);
            // A router that only answers (its peers are the routers above it) asks nobody.
            if !ask_peers.is_empty() {
                let asker = WhohasAsker::new(
                    &identity,
                    name,
                    &ask_peers,
                    WhohasAskerConfig {
                        timeout: w.timeout,
                        ..WhohasAskerConfig::default()
                    },
                )?;
                whohas_peers = asker.stats();
                whohas_timing = Some(asker.timing());
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<MirrorFlow>>(1024);
                asking = Some((Arc::new(asker), rx, tx));
            }
        }
        if let Some(mut rx) = answering {
            // Peers' questions, one at a time: the packet thread answers each between two
            // batches of packets (a thread of its own, so that a storm of questions waits in
            // their queue, bounded, instead of taking threads).
            let h = handle.clone();
            std::thread::Builder::new()
                .name("whohas-answer".into())
                .spawn(move || {
                    while let Some(q) = rx.blocking_recv() {
                        if let Ok(answer) = h.whohas_ask(q.flows) {
                            let _ = q.reply.send(answer);
                        }
                    }
                })?;
        }
        let questions = asking.as_ref().map(|(_, _, tx)| tx.clone());
        let mut senders = Vec::new();
        let mut peers = Vec::new();
        let mut tasks = Vec::new();
        for (peer, addr) in &cfg.mirror_peers() {
            let s = MirrorSender::new(&identity, name, peer, *addr, MirrorSenderConfig::default())?;
            peers.push((peer.clone(), s.stats()));
            let (tx, rx) = tokio::sync::mpsc::channel(65_536);
            senders.push((peer.clone(), tx));
            tasks.push((s, rx));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mirror")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("mirror".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("[cluster] listen: {e}");
                            return;
                        }
                    };
                    let (sink, mut batches) = tokio::sync::mpsc::channel::<ReceivedBatch>(256);
                    let h = handle.clone();
                    tokio::spawn(async move {
                        while let Some(b) = batches.recv().await {
                            if h.mirrored(b).is_err() {
                                return;
                            }
                        }
                    });
                    if let Some((asker, mut rx, _)) = asking {
                        // This router's questions: each batch asked at once, answers back to
                        // the packet thread.
                        let h = handle.clone();
                        tokio::spawn(async move {
                            while let Some(flows) = rx.recv().await {
                                let (asker, h) = (asker.clone(), h.clone());
                                tokio::spawn(async move {
                                    let found = asker.ask(&flows).await;
                                    let _ = h.whohas_found(flows.into_iter().zip(found).collect());
                                });
                            }
                        });
                    }
                    for (sender, rx) in tasks {
                        let h = handle.clone();
                        // The full sync asks the packet thread for every flow (a blocking call
                        // on this runtime's worker: it may wait for one batch of packets).
                        let source = move || {
                            tokio::task::block_in_place(|| h.mirror_flows()).unwrap_or_default()
                        };
                        tokio::spawn(sender.run(source, rx));
                    }
                    let served = server
                        .serve(listener, sink, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!("[cluster] mirror server: {e}");
                    }
                });
            })?;
        tracing::info!(listen = %cfg.listen, mirror_to = ?cfg.mirror_peers(), ask = ?ask_peers, whohas = ?cfg.whohas, "cluster on");
        Ok(Mirror {
            senders,
            copies: HashMap::new(),
            restoring: std::collections::HashSet::new(),
            announced: HashMap::new(),
            counts: Counts::default(),
            sweep: Sweep::default(),
            server: server_stats,
            refusals,
            peers,
            questions,
            questions_dropped: 0,
            whohas_server,
            whohas_peers,
            whohas_timing,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Hands one of the core's flow changes to every peer's sender, once per change of the
    /// flow (a full queue drops it: the peer is far behind, and its next full sync repairs
    /// that).
    pub(super) fn offer(&mut self, change: &FlowChange, router: &Router) {
        if self.senders.is_empty() {
            return; // mirrors to nobody (a router below that answers WHOHAS only)
        }
        let m = match change {
            FlowChange::Offload { key, next_hop, .. } => {
                if self.restoring.remove(key) {
                    return; // the core's own log of a copy just taken in
                }
                // A copy whose packets now reach the core: this router carries it, it is its
                // own from here on.
                self.copies.remove(key);
                let Some(h) = router.next_hops().get(*next_hop as usize) else {
                    return;
                };
                if self.announced.insert(*key, h.address) == Some(h.address) {
                    return;
                }
                MirrorChange::Pinned(mirror_flow(key), h.address)
            }
            FlowChange::Withdraw { key } => {
                self.restoring.remove(key);
                if self.copies.remove(key).is_some() {
                    return; // a copy let go of here: nothing the peers need
                }
                if self.announced.remove(key).is_none() {
                    return;
                }
                MirrorChange::Released(mirror_flow(key))
            }
        };
        self.counts.offered += 1;
        for (_, tx) in &self.senders {
            if tx.try_send(m).is_err() {
                self.counts.queue_full += 1;
            }
        }
    }

    /// Keeps the peers' copies of the flows this router carries alive: a copy ages at the
    /// peer like a flow without packets, and the owner's packets never reach it. A pass every
    /// quarter of the shortest pinned-flow timeout (established TCP, UDP) tells the peers again
    /// of every flow that carried a packet since the pass before (`last_used`: when the fast
    /// path last forwarded one, if it has the flow); the peers then refresh their copies.
    /// Called from the packet loop; works in chunks.
    pub(super) fn refresh(
        &mut self,
        router: &Router,
        now: Instant,
        last_used: impl Fn(&FlowKey) -> Option<Instant>,
    ) {
        if self.senders.is_empty() {
            return;
        }
        if self.sweep.todo.is_empty() {
            let cfg = &router.config().flow_table;
            let shortest = cfg
                .timeout(FlowState::TcpEstablished)
                .min(cfg.timeout(FlowState::Udp));
            let period = Duration::from_micros(shortest.as_micros() / 4);
            let next = *self.sweep.next.get_or_insert(now + period);
            if now < next {
                return;
            }
            self.sweep.next = Some(now + period);
            self.sweep.since = self.sweep.started;
            self.sweep.started = now;
            self.sweep.todo = self.announced.keys().copied().collect();
        }
        let since = self.sweep.since;
        let at = self.sweep.todo.len().saturating_sub(SWEEP_CHUNK);
        for key in self.sweep.todo.split_off(at) {
            let (Some(e), Some(&hop)) = (router.flow(&key), self.announced.get(&key)) else {
                continue;
            };
            let active = e.last_seen() > since || last_used(&key).is_some_and(|t| t > since);
            if !active {
                continue;
            }
            self.counts.refreshes_sent += 1;
            let m = MirrorChange::Pinned(mirror_flow(&key), hop);
            for (_, tx) in &self.senders {
                if tx.try_send(m).is_err() {
                    self.counts.queue_full += 1;
                }
            }
        }
    }

    /// Hands the core's WHOHAS questions to the asker (a full queue drops them: the core's
    /// timeout then lets the policy pick, as it would without WHOHAS).
    pub(super) fn ask(&mut self, keys: Vec<FlowKey>) {
        let Some(tx) = &self.questions else {
            return;
        };
        for chunk in keys.chunks(1024) {
            if tx
                .try_send(chunk.iter().map(mirror_flow).collect())
                .is_err()
            {
                self.questions_dropped += chunk.len() as u64;
            }
        }
    }

    /// What the peers said of the core's questions.
    pub(super) fn found(
        &mut self,
        router: &mut Router,
        now: Instant,
        found: Vec<(MirrorFlow, Found)>,
    ) {
        for (f, found) in found {
            let answer = match found {
                Found::Held { next_hop, holder } => WhohasAnswer::Held { next_hop, holder },
                Found::Nobody => WhohasAnswer::Nobody,
            };
            router.answer_whohas(now, flow_key(&f), answer);
        }
    }

    /// Applies a peer's batch to the core. `used_since` tells whether a packet of a flow
    /// reached this router (core or kernel) since the given time.
    pub(super) fn apply(
        &mut self,
        router: &mut Router,
        now: Instant,
        batch: ReceivedBatch,
        used_since: impl Fn(&Router, &FlowKey, Instant) -> bool,
    ) {
        for change in batch.changes {
            match change {
                MirrorChange::Pinned(f, hop) => {
                    let key = flow_key(&f);
                    let Some(nh) = router.next_hop_by_address(hop) else {
                        self.counts.not_taken += 1;
                        continue;
                    };
                    match router.restore_flow(now, key, nh, Duration::ZERO) {
                        Ok(()) => {
                            self.counts.taken_in += 1;
                            self.copies.insert(key, now);
                            self.restoring.insert(key);
                        }
                        Err(slr_core::router::RestoreRefusal::Present) => {
                            if let Some(since) = self.copies.get_mut(&key) {
                                // The owner still carries it: the copy lives on here.
                                router.refresh_flow(now, &key);
                                *since = now;
                                self.counts.copies_refreshed += 1;
                            } else {
                                self.counts.already_held += 1
                            }
                        }
                        Err(_) => self.counts.not_taken += 1,
                    }
                }
                MirrorChange::Released(f) => {
                    let key = flow_key(&f);
                    match self.copies.get(&key) {
                        Some(&since) if !used_since(router, &key, since) => {
                            // The core logs the removal; `offer` then drops the copy's mark.
                            router.forget_flow(&key);
                            self.counts.copies_released += 1;
                        }
                        _ => self.counts.releases_ignored += 1,
                    }
                }
            }
        }
    }

    /// What `slr ctl` and the metrics show of WHOHAS (with the core's counters).
    pub(super) fn whohas_view(&self, router: &Router) -> Option<crate::snapshot::WhohasView> {
        let server = self.whohas_server.as_ref()?;
        let c = router.counters();
        let (pending, held) = router.whohas_pending();
        Some(crate::snapshot::WhohasView {
            asked: c.whohas_asked,
            resolved: c.whohas_resolved,
            not_found: c.whohas_not_found,
            timeouts: c.whohas_timeouts,
            overflow: c.whohas_overflow,
            unusable: c.whohas_unusable,
            packets_held: c.whohas_packets_held,
            pending,
            held_now: held,
            questions_dropped: self.questions_dropped,
            questions_answered: server.questions(),
            flows_asked_here: server.flows_asked(),
            flows_held_here: server.flows_held(),
            ask_mean_seconds: self
                .whohas_timing
                .as_ref()
                .map_or(0.0, |t| t.mean().as_secs_f64()),
            ask_max_seconds: self
                .whohas_timing
                .as_ref()
                .map_or(0.0, |t| t.max().as_secs_f64()),
            peers: self
                .whohas_peers
                .iter()
                .map(|(name, s)| crate::snapshot::WhohasPeerView {
                    name: name.clone(),
                    connected: s.connected(),
                    questions: s.questions(),
                    flows_asked: s.flows_asked(),
                    flows_held: s.flows_held(),
                    failures: s.failures(),
                    skipped: s.skipped(),
                    last_error: s.last_error(),
                })
                .collect(),
        })
    }

    /// What `slr ctl` and the metrics show.
    pub(super) fn view(&self) -> MirrorView {
        MirrorView {
            changes_offered: self.counts.offered,
            changes_dropped_queue_full: self.counts.queue_full,
            flows_taken_in: self.counts.taken_in,
            flows_already_held: self.counts.already_held,
            flows_not_taken: self.counts.not_taken,
            copies_released: self.counts.copies_released,
            refreshes_sent: self.counts.refreshes_sent,
            copies_refreshed: self.counts.copies_refreshed,
            releases_ignored: self.counts.releases_ignored,
            copies: self.copies.len(),
            batches_received: self.server.batches(),
            changes_received: self.server.changes(),
            last_lag_seconds: self.server.last_lag().as_secs_f64(),
            max_lag_seconds: self.server.max_lag().as_secs_f64(),
            refused: self
                .refusals
                .refusals()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(name, s)| crate::snapshot::MirrorPeerView {
                    name: name.clone(),
                    connected: s.connected(),
                    batches_sent: s.batches(),
                    changes_sent: s.changes(),
                    changes_dropped: s.dropped(),
                    full_syncs: s.full_syncs(),
                    failures: s.failures(),
                    bytes_sent: s.bytes_sent(),
                    last_error: s.last_error(),
                })
                .collect(),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.senders.clear();
        self.questions = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
