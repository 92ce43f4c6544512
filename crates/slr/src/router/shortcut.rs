//! The packet thread's side of the shortcut (MISSION F10; the core decides, see
//! `slr_core::shortcut`): the core's signals go to the control thread, which sends them to the
//! parent ([`crate::control_plane`]'s relay); children's signals and keepalives come back
//! through the mailbox and are judged by the core here.

use super::mirror::{flow_key, mirror_flow};
use crate::control_plane::OwnSignal;
use crate::mailbox::KeptChunk;
use slr_control::{MirrorFlow, ShortcutAnswer, ShortcutSignal, SignalVerdict};
use slr_core::router::Router;
use slr_core::shortcut::ShortcutAccept;
use slr_core::time::Instant;
use tokio::sync::mpsc;

/// Where the core's signals go: the control thread's relay (none without the shortcut).
#[derive(Default)]
pub(super) struct SignalOutbox {
    tx: Option<mpsc::Sender<Vec<OwnSignal>>>,
    /// Signals lost because the relay was behind (its queue full).
    pub(super) dropped: u64,
}

impl SignalOutbox {
    /// An outbox to the relay.
    pub(super) fn new(tx: mpsc::Sender<Vec<OwnSignal>>) -> Self {
        SignalOutbox {
            tx: Some(tx),
            dropped: 0,
        }
    }

    /// Hands the core's pending signals to the relay, in one message.
    pub(super) fn forward(&mut self, router: &mut Router) {
        let mut batch = Vec::new();
        while let Some(s) = router.poll_shortcut_signal() {
            let nh = &router.next_hops()[s.next_hop as usize];
            batch.push(OwnSignal {
                signal: ShortcutSignal {
                    flow: mirror_flow(&s.key),
                    host: nh.address,
                },
                child: nh.name.clone(),
            });
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match &self.tx {
            Some(tx) if tx.try_send(batch).is_ok() => {}
            _ => self.dropped += n,
        }
    }
}

/// The core's verdicts on a child's signals, and whether it holds each keepalive's flow pinned
/// to that child.
pub(super) fn judge(
    router: &mut Router,
    now: Instant,
    child: &str,
    signals: &[ShortcutSignal],
    keepalives: &[MirrorFlow],
) -> ShortcutAnswer {
    let idx = router
        .next_hops()
        .iter()
        .position(|n| n.configured && n.name == child);
    let Some(idx) = idx else {
        return ShortcutAnswer {
            signals: vec![SignalVerdict::Refused("not_pinned"); signals.len()],
            held: vec![false; keepalives.len()],
        };
    };
    let signals = signals
        .iter()
        .map(
            |s| match router.accept_shortcut(now, &flow_key(&s.flow), idx, s.host) {
                Ok(ShortcutAccept::Installed) => SignalVerdict::Installed,
                Ok(ShortcutAccept::Relay) => SignalVerdict::Relayed,
                Ok(ShortcutAccept::Kept) => SignalVerdict::Kept,
                Err(why) => SignalVerdict::Refused(why.as_str()),
            },
        )
        .collect();
    let held = keepalives
        .iter()
        .map(|f| router.holds_for(&flow_key(f), idx))
        .collect();
    ShortcutAnswer { signals, held }
}

/// Marks flows whose signals the parent took.
pub(super) fn mark(router: &mut Router, flows: &[MirrorFlow]) {
    for f in flows {
        router.mark_signalled(&flow_key(f));
    }
}

/// The next chunk of the flows this router signalled (at most `max` keys of the rotation
/// examined: the packets wait for no more than that).
pub(super) fn kept(router: &mut Router, max: usize) -> KeptChunk {
    let rotation = router.signalled_rotation();
    let mut keys = Vec::with_capacity(max.min(rotation));
    let examined = router.next_signalled(max, &mut keys);
    KeptChunk {
        flows: keys.iter().map(mirror_flow).collect(),
        examined,
        rotation,
    }
}

/// Refreshes the signalled flows the parent still holds.
pub(super) fn refresh(router: &mut Router, now: Instant, flows: &[MirrorFlow]) {
    for f in flows {
        router.refresh_flow(now, &flow_key(f));
    }
}
