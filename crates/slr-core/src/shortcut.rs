//! The shortcut (MISSION F10): after a flow's first packet, its ingress router tunnels the rest
//! straight to the host the lowest router picked; the routers in between see about one packet
//! per connection.
//!
//! How it goes, at each kind of router (the core decides, the driver carries the messages over
//! the state update protocol's mutual TLS, child to parent):
//!
//! - **The lowest router** (its next hops are hosts) pins a new flow that came through its
//!   parent's tunnel and emits a [`ShortcutSignal`] (the flow and its next hop). The driver
//!   sends it to the parent; once the parent accepted it, the flow is marked
//!   [`Signalled`](crate::flow_table::FlowMark::Signalled).
//! - **A router in between** accepts a signal only from the child the flow is pinned to
//!   ([`Router::accept_shortcut`](crate::router::Router::accept_shortcut)): the flow came
//!   through its own parent's tunnel, so the answer is [`ShortcutAccept::Relay`] and the driver
//!   passes the signal up.
//! - **The ingress** (the flow came from a client) accepts it from that child likewise and pins
//!   the shortcut: later packets of the flow are tunnelled to the host, while the flow stays
//!   pinned to its next hop (drain, health and reload keep their meaning; counters stay per
//!   next hop). Its first packets after the SYN wait a little for the signal
//!   ([`ShortcutConfig::hold`], bounded) when the flow's next hop is a child known to send
//!   signals; without a signal in time they go down the hierarchy, as always.
//! - **Keeping the copies below alive.** The routers below see no packets of a shortcut flow, so
//!   each router that signalled asks its parent, every refresh interval, which of its signalled
//!   flows the parent still holds (pinned to it), and refreshes those
//!   ([`Router::refresh_flow`](crate::router::Router::refresh_flow)). The ingress holds a flow
//!   as long as its packets flow (or its fast path forwards them), so the copies below expire
//!   one refresh interval per level after the ingress's: if the ingress loses the shortcut, the
//!   next packet goes down the hierarchy and reaches the same host.
//!
//! This module holds the types and the ingress's bookkeeping of held packets; no I/O.

use crate::flow_table::FlowKey;
use crate::time::{Duration, Instant};
use slr_wire::PacketBuf;
use std::collections::{HashMap, VecDeque};

/// The shortcut's settings at one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortcutConfig {
    /// Emit a [`ShortcutSignal`] for every new flow that came through a parent's tunnel.
    pub signal: bool,
    /// At the ingress, how long the packets after a SYN wait for the flow's shortcut (only for a
    /// next hop that has sent signals before); `Duration::ZERO`: never wait.
    pub hold: Duration,
    /// Most packets held for one flow; one more sends them all down the hierarchy.
    pub max_held_per_flow: usize,
    /// Most packets held in all; beyond it a flow's packets go down the hierarchy.
    pub max_held: usize,
    /// Most signals waiting for the driver; more are dropped (counted).
    pub max_signals: usize,
}

impl Default for ShortcutConfig {
    fn default() -> Self {
        ShortcutConfig {
            signal: true,
            hold: Duration::from_millis(20),
            max_held_per_flow: 8,
            max_held: 16_384,
            max_signals: 65_536,
        }
    }
}

/// A new flow this router pinned that came through its parent's tunnel: the flow and the next
/// hop it is pinned to (an index of [`Router::next_hops`](crate::router::Router::next_hops)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortcutSignal {
    /// The flow.
    pub key: FlowKey,
    /// Its next hop here.
    pub next_hop: u32,
}

/// What a router did with a child's signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortcutAccept {
    /// This router is the flow's ingress: later packets go to the host.
    Installed,
    /// The flow came through this router's parent: pass the signal up.
    Relay,
    /// The flow keeps its path through the child: it is this router's own health probe of that
    /// child (pinned by the control plane), which must test the child, not bypass it.
    Kept,
}

/// Why a router refused a child's signal (never changing anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortcutRefusal {
    /// The router holds no such flow.
    UnknownFlow,
    /// The flow is pinned to another next hop than the child that signalled it.
    NotPinned,
    /// The host address cannot be a tunnel endpoint (unspecified, broadcast, multicast,
    /// loopback).
    BadAddress,
}

impl ShortcutRefusal {
    /// The label used in counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ShortcutRefusal::UnknownFlow => "unknown_flow",
            ShortcutRefusal::NotPinned => "not_pinned",
            ShortcutRefusal::BadAddress => "bad_address",
        }
    }
}

/// The ingress's packets waiting for their flows' shortcuts, with their deadlines.
#[derive(Debug, Default)]
pub(crate) struct AwaitTable {
    flows: HashMap<FlowKey, Vec<PacketBuf>>,
    /// Deadlines in the order they were set (one hold for all: they come due in order).
    deadlines: VecDeque<(Instant, FlowKey)>,
    held: usize,
}

impl AwaitTable {
    /// Holds `buf` for `key` until `deadline` (the first packet held sets it); gives it back when
    /// the flow's or the table's bound is reached.
    pub(crate) fn hold(
        &mut self,
        cfg: &ShortcutConfig,
        key: FlowKey,
        deadline: Instant,
        buf: PacketBuf,
    ) -> Result<(), PacketBuf> {
        if self.held >= cfg.max_held {
            return Err(buf);
        }
        let q = self.flows.entry(key).or_insert_with(|| {
            self.deadlines.push_back((deadline, key));
            Vec::new()
        });
        if q.len() >= cfg.max_held_per_flow {
            return Err(buf);
        }
        q.push(buf);
        self.held += 1;
        Ok(())
    }

    /// Takes the packets held for `key`.
    pub(crate) fn take(&mut self, key: &FlowKey) -> Vec<PacketBuf> {
        let q = self.flows.remove(key).unwrap_or_default();
        self.held -= q.len();
        q
    }

    /// The next flow whose deadline passed at `now` (with its held packets; none if they were
    /// taken meanwhile).
    pub(crate) fn next_expired(&mut self, now: Instant) -> Option<(FlowKey, Vec<PacketBuf>)> {
        while let Some(&(at, key)) = self.deadlines.front() {
            if at > now && self.flows.contains_key(&key) {
                return None;
            }
            self.deadlines.pop_front();
            if let Some(q) = self.flows.remove(&key) {
                self.held -= q.len();
                return Some((key, q));
            }
        }
        None
    }

    /// When the next deadline comes.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|(_, k)| self.flows.contains_key(k))
            .map(|&(at, _)| at)
    }

    /// Packets held.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u16) -> FlowKey {
        FlowKey {
            src_addr: [10, 0, 0, 1].into(),
            dst_addr: [10, 99, 0, 1].into(),
            src_port: p,
            dst_port: 80,
            protocol: 6,
        }
    }

    #[test]
    fn holds_are_bounded_and_come_due_in_order() {
        let cfg = ShortcutConfig {
            max_held_per_flow: 2,
            max_held: 3,
            ..ShortcutConfig::default()
        };
        let mut t = AwaitTable::default();
        let at = |ms| Instant::ZERO + Duration::from_millis(ms);
        let b = || PacketBuf::with_headroom(20, 100);
        assert!(t.hold(&cfg, key(1), at(10), b()).is_ok());
        assert!(t.hold(&cfg, key(1), at(99), b()).is_ok());
        assert!(t.hold(&cfg, key(1), at(99), b()).is_err(), "per flow");
        assert!(t.hold(&cfg, key(2), at(20), b()).is_ok());
        assert!(t.hold(&cfg, key(3), at(30), b()).is_err(), "in all");
        assert_eq!(t.held(), 3);
        assert_eq!(t.next_deadline(), Some(at(10)));
        assert!(t.next_expired(at(5)).is_none());
        assert_eq!(t.take(&key(1)).len(), 2);
        assert_eq!(t.next_deadline(), Some(at(20)));
        let (k, q) = t.next_expired(at(25)).unwrap();
        assert_eq!((k, q.len()), (key(2), 1));
        assert!(t.next_expired(at(1000)).is_none());
        assert_eq!(t.held(), 0);
    }
}
