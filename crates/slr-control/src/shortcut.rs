//! The shortcut's messages (MISSION F10) on the state update protocol.
//!
//! A child router tells its parent, over the session its reporter holds (mutual TLS, the
//! child's certificate name, its current session), the host it picked for each new flow that
//! came through the parent's tunnel (`signals`), and asks which of the flows it signalled
//! earlier the parent still holds (`keepalives`: the child keeps its own copy of those alive,
//! since a shortcut flow's packets no longer cross it).
//!
//! The parent's server checks what needs no flow table: the session, each flow's form, and
//! that its destination lies in a subnet the child may serve (else `foreign_subnet`, counted).
//! The rest goes to the daemon as a [`ShortcutQuestion`]: its routing core accepts a signal
//! only for a flow pinned to that very child (else `not_pinned` / `unknown_flow`, counted), and
//! installs it (the parent is the flow's ingress) or passes it up (`relayed`).
//!
//! On the child's side the daemon hands a [`ShortcutBatch`] to the reporter of its parent,
//! which sends it on its session and hands back the answer.

use std::net::Ipv4Addr;

use tokio::sync::oneshot;

use crate::mirror::MirrorFlow;

/// A flow and the host that serves it (the tunnel address its packets may go to straight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortcutSignal {
    /// The flow.
    pub flow: MirrorFlow,
    /// The host's tunnel address.
    pub host: Ipv4Addr,
}

/// What became of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalVerdict {
    /// The parent is the flow's ingress and tunnels its later packets to the host.
    Installed,
    /// The parent passes it to its own parent.
    Relayed,
    /// The flow keeps its path through the child: it is the parent's own health probe of the
    /// child (not a refusal; the child keeps seeing its packets).
    Kept,
    /// Refused: `foreign_subnet`, `not_pinned`, `unknown_flow`, `bad_address`, `malformed`,
    /// `unavailable` (the parent takes no signals).
    Refused(&'static str),
}

impl SignalVerdict {
    /// The verdict's name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalVerdict::Installed => "installed",
            SignalVerdict::Relayed => "relayed",
            SignalVerdict::Kept => "kept",
            SignalVerdict::Refused(why) => why,
        }
    }

    /// The verdict named `s` (an unknown name is a refusal named `unknown`).
    pub fn parse(s: &str) -> SignalVerdict {
        const REFUSALS: [&str; 6] = [
            "foreign_subnet",
            "not_pinned",
            "unknown_flow",
            "bad_address",
            "malformed",
            "unavailable",
        ];
        match s {
            "installed" => SignalVerdict::Installed,
            "relayed" => SignalVerdict::Relayed,
            "kept" => SignalVerdict::Kept,
            other => SignalVerdict::Refused(
                REFUSALS
                    .iter()
                    .copied()
                    .find(|r| *r == other)
                    .unwrap_or("unknown"),
            ),
        }
    }

    /// Whether the signal was taken (installed or relayed): the child then keeps its copy of
    /// the flow alive while the parent holds it.
    pub fn accepted(self) -> bool {
        matches!(self, SignalVerdict::Installed | SignalVerdict::Relayed)
    }
}

/// The answer to a [`ShortcutQuestion`] or a [`ShortcutBatch`]: one verdict per signal and one
/// `held` per keepalive, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShortcutAnswer {
    /// Per signal.
    pub signals: Vec<SignalVerdict>,
    /// Per keepalive: whether the parent holds the flow, pinned to the child.
    pub held: Vec<bool>,
}

/// A child's signals and keepalives as the parent's daemon gets them: the session and the
/// subnets are checked; the daemon's core decides the rest and answers on `reply`.
#[derive(Debug)]
pub struct ShortcutQuestion {
    /// The child (its certificate's name; a next hop of the daemon by that name).
    pub child: String,
    /// Its signals.
    pub signals: Vec<ShortcutSignal>,
    /// Its keepalives.
    pub keepalives: Vec<MirrorFlow>,
    /// Where the answer goes (one entry per signal and keepalive, in order).
    pub reply: oneshot::Sender<ShortcutAnswer>,
}

/// What a child's daemon hands its reporter to send to the parent (see
/// [`Reporter::with_shortcuts`](crate::Reporter::with_shortcuts)); the answer, or why none
/// came (no session, the call failed), comes back on `reply`.
#[derive(Debug)]
pub struct ShortcutBatch {
    /// New flows and their hosts.
    pub signals: Vec<ShortcutSignal>,
    /// Flows signalled earlier.
    pub keepalives: Vec<MirrorFlow>,
    /// The answer.
    pub reply: oneshot::Sender<Result<ShortcutAnswer, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip() {
        for v in [
            SignalVerdict::Installed,
            SignalVerdict::Relayed,
            SignalVerdict::Kept,
            SignalVerdict::Refused("foreign_subnet"),
            SignalVerdict::Refused("not_pinned"),
        ] {
            assert_eq!(SignalVerdict::parse(v.as_str()), v);
        }
        assert_eq!(
            SignalVerdict::parse("<script>"),
            SignalVerdict::Refused("unknown")
        );
        assert!(!SignalVerdict::Refused("not_pinned").accepted());
        assert!(SignalVerdict::Relayed.accepted() && SignalVerdict::Installed.accepted());
        assert!(
            !SignalVerdict::Kept.accepted(),
            "a kept flow is not kept alive by keepalives"
        );
    }
}
