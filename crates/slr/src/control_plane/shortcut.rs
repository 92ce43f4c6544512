//! The shortcut's relay on the control thread (MISSION F10).
//!
//! - The core's signals (new flows from the parent's tunnel) come from the packet thread; those
//!   whose next hop is a child that said Hello as a host are sent to every parent through the
//!   reporters' sessions (batched: whatever waits when a batch leaves goes in it). When a parent
//!   takes a signal, the flow is marked in the core (its copy is kept alive from then on).
//! - Children's signals and keepalives come from the parent server, already checked against
//!   the child's session and subnets; the core judges them (pinned to that child?) and the
//!   signals it relays go up like its own.
//! - Every `keepalive` interval the flows this router signalled are offered to the parents as
//!   keepalives, in chunks of at most `MAX_BATCH` (each a short visit to the packet thread, never
//!   a scan of the whole table); those a parent still holds are refreshed in the core.

use crate::mailbox::Handle;
use slr_control::{
    ChildTable, MirrorFlow, ShortcutAnswer, ShortcutBatch, ShortcutQuestion, ShortcutSignal,
    SignalVerdict,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A signal of this router's core: the flow, the host, and the child it is pinned to.
#[derive(Debug, Clone)]
pub struct OwnSignal {
    /// The flow and the host.
    pub signal: ShortcutSignal,
    /// The next hop's name.
    pub child: String,
}

/// Most flows in one request to a parent.
const MAX_BATCH: usize = 4096;

/// The relay's counters (for `slr ctl` and metrics).
#[derive(Debug, Default)]
pub struct ShortcutStats {
    /// Signals sent to parents (own and relayed).
    pub sent: AtomicU64,
    /// Signals a parent installed or relayed.
    pub accepted: AtomicU64,
    /// Signals no parent took (refused, or kept on its path: a parent's own health probe).
    pub refused: AtomicU64,
    /// Signals not sent: no parent session answered.
    pub failed: AtomicU64,
    /// Own signals not sent because the next hop is no host.
    pub not_host: AtomicU64,
    /// Children's signals judged here.
    pub from_children: AtomicU64,
    /// Keepalives sent.
    pub keepalives: AtomicU64,
    /// Keepalives a parent held.
    pub kept: AtomicU64,
}

/// The relay's inputs and outputs.
pub struct Relay {
    /// The core's signals.
    pub own: mpsc::Receiver<Vec<OwnSignal>>,
    /// Children's checked requests (none without a parent server).
    pub questions: Option<mpsc::Receiver<ShortcutQuestion>>,
    /// One per parent.
    pub parents: Vec<mpsc::Sender<ShortcutBatch>>,
    /// The children's Hellos (their levels); none without a parent server.
    pub children: Option<ChildTable>,
    /// The packet thread.
    pub handle: Handle,
    /// How often signalled flows are offered as keepalives.
    pub keepalive: Duration,
    /// Counters.
    pub stats: Arc<ShortcutStats>,
    /// A keepalive round is going.
    pub round_busy: Arc<AtomicBool>,
}

impl Relay {
    /// Runs until `stop` completes.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(self.keepalive);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (up_tx, mut up_rx) = mpsc::channel::<Vec<ShortcutSignal>>(1024);
        loop {
            let question = async {
                match self.questions.as_mut() {
                    Some(q) => q.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                own = self.own.recv() => {
                    let Some(first) = own else { return };
                    let mut batch = self.hosts_only(first);
                    while batch.len() < MAX_BATCH {
                        match self.own.try_recv() {
                            Ok(more) => batch.extend(self.hosts_only(more)),
                            Err(_) => break,
                        }
                    }
                    while batch.len() < MAX_BATCH {
                        match up_rx.try_recv() {
                            Ok(more) => batch.extend(more),
                            Err(_) => break,
                        }
                    }
                    self.send_up(batch);
                }
                relayed = up_rx.recv() => {
                    if let Some(mut batch) = relayed {
                        while batch.len() < MAX_BATCH {
                            match up_rx.try_recv() {
                                Ok(more) => batch.extend(more),
                                Err(_) => break,
                            }
                        }
                        self.send_up(batch);
                    }
                }
                q = question => {
                    match q {
                        Some(q) => self.judge(q, up_tx.clone()),
                        None => self.questions = None,
                    }
                }
                _ = ticks.tick() => self.keepalives(),
            }
        }
    }

    /// Keeps the signals whose next hop is a child that said Hello as a host.
    fn hosts_only(&self, signals: Vec<OwnSignal>) -> Vec<ShortcutSignal> {
        let Some(children) = &self.children else {
            self.stats
                .not_host
                .fetch_add(signals.len() as u64, Ordering::Relaxed);
            return Vec::new();
        };
        let snapshot = children.snapshot();
        let mut out = Vec::with_capacity(signals.len());
        for s in signals {
            if snapshot.get(&s.child).is_some_and(|c| c.level == "host") {
                out.push(s.signal);
            } else {
                self.stats.not_host.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    /// Sends signals to every parent; marks in the core the flows a parent took.
    fn send_up(&self, signals: Vec<ShortcutSignal>) {
        if signals.is_empty() || self.parents.is_empty() {
            return;
        }
        let stats = self.stats.clone();
        stats
            .sent
            .fetch_add(signals.len() as u64, Ordering::Relaxed);
        let handle = self.handle.clone();
        let parents = self.parents.clone();
        tokio::spawn(async move {
            let mut taken: HashSet<MirrorFlow> = HashSet::new();
            let mut answered = false;
            for p in &parents {
                let Some(answer) = ask(p, signals.clone(), Vec::new()).await else {
                    continue;
                };
                answered = true;
                for (s, v) in signals.iter().zip(&answer.signals) {
                    if v.accepted() {
                        taken.insert(s.flow);
                    }
                }
            }
            if !answered {
                stats
                    .failed
                    .fetch_add(signals.len() as u64, Ordering::Relaxed);
                return;
            }
            let n = taken.len() as u64;
            stats.accepted.fetch_add(n, Ordering::Relaxed);
            stats
                .refused
                .fetch_add(signals.len() as u64 - n, Ordering::Relaxed);
            if !taken.is_empty() {
                let _ = handle.shortcut_mark(taken.into_iter().collect());
            }
        });
    }

    /// Has the core judge a child's request; relays what it says to relay, answers the child.
    fn judge(&self, q: ShortcutQuestion, up: mpsc::Sender<Vec<ShortcutSignal>>) {
        self.stats
            .from_children
            .fetch_add(q.signals.len() as u64, Ordering::Relaxed);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let ShortcutQuestion {
                child,
                signals,
                keepalives,
                reply,
            } = q;
            let asked = signals.clone();
            let answer =
                tokio::task::spawn_blocking(move || handle.shortcut(child, signals, keepalives))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
            let relay: Vec<ShortcutSignal> = asked
                .iter()
                .zip(&answer.signals)
                .filter(|(_, v)| **v == SignalVerdict::Relayed)
                .map(|(s, _)| *s)
                .collect();
            let _ = reply.send(answer);
            if !relay.is_empty() {
                let _ = up.send(relay).await;
            }
        });
    }

    /// Offers the signalled flows to the parents, a chunk at a time (the packet thread never
    /// scans more than `MAX_BATCH` keys for one); refreshes those a parent holds. One round at a
    /// time: a round still going when the next tick comes (slow parents) skips that tick.
    fn keepalives(&self) {
        if self.parents.is_empty() || self.round_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let handle = self.handle.clone();
        let parents = self.parents.clone();
        let stats = self.stats.clone();
        let busy = self.round_busy.clone();
        tokio::spawn(async move {
            let mut left: Option<usize> = None;
            while left != Some(0) {
                let h = handle.clone();
                let max = left.unwrap_or(MAX_BATCH).min(MAX_BATCH);
                let Ok(Ok(chunk)) = tokio::task::spawn_blocking(move || h.shortcut_kept(max)).await
                else {
                    break;
                };
                if chunk.examined == 0 {
                    break;
                }
                let rest = left.unwrap_or(chunk.rotation);
                left = Some(rest.saturating_sub(chunk.examined));
                let flows = chunk.flows;
                if flows.is_empty() {
                    continue;
                }
                stats
                    .keepalives
                    .fetch_add(flows.len() as u64, Ordering::Relaxed);
                let mut held: HashSet<MirrorFlow> = HashSet::new();
                for p in &parents {
                    if let Some(answer) = ask(p, Vec::new(), flows.clone()).await {
                        for (f, h) in flows.iter().zip(&answer.held) {
                            if *h {
                                held.insert(*f);
                            }
                        }
                    }
                }
                stats.kept.fetch_add(held.len() as u64, Ordering::Relaxed);
                if !held.is_empty() {
                    let _ = handle.shortcut_refresh(held.into_iter().collect());
                }
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// One request to a parent through its reporter; `None` when it did not answer.
async fn ask(
    parent: &mpsc::Sender<ShortcutBatch>,
    signals: Vec<ShortcutSignal>,
    keepalives: Vec<MirrorFlow>,
) -> Option<ShortcutAnswer> {
    let (reply, rx) = oneshot::channel();
    parent
        .try_send(ShortcutBatch {
            signals,
            keepalives,
            reply,
        })
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(answer))) => Some(answer),
        _ => None,
    }
}
