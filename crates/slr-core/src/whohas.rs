//! WHOHAS (MISSION F17c): a mid-flow packet this router holds no state for is held while its
//! neighbours are asked who holds the flow.
//!
//! The seed's third failure: an external routing change makes a flow arrive at another router
//! (another SLR cluster), which without non-local information would pick a host afresh and break
//! the connection. Before the policy picks, the router asks a limited set of neighbours (the
//! driver's transport: authenticated, with a timeout) and, when one answers, pins the flow to
//! the same host as the owner did. This module is the bookkeeping: the flows being asked about,
//! the packets held for each (bounded per flow and in all) and their deadlines. The router
//! ([`crate::router::Router`]) decides what is asked and what an answer means; no I/O here.

use crate::flow_table::FlowKey;
use crate::time::{Duration, Instant};
use slr_wire::PacketBuf;
use std::collections::{HashMap, VecDeque};

/// How a router asks its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhohasConfig {
    /// How long a question waits for its answer before the policy picks (and the held packets
    /// go where it picked).
    pub timeout: Duration,
    /// Most flows asked about at once: beyond it (a storm of unknown flows) a flow goes
    /// straight to the policy, counted.
    pub max_pending: usize,
    /// Most packets held for one flow while it is asked about (later ones are dropped,
    /// counted: TCP retransmits them).
    pub max_held_per_flow: usize,
    /// Most packets held in all.
    pub max_held: usize,
}

impl Default for WhohasConfig {
    fn default() -> Self {
        WhohasConfig {
            timeout: Duration::from_millis(50),
            max_pending: 4096,
            max_held_per_flow: 8,
            max_held: 16_384,
        }
    }
}

/// What a router's neighbours said of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhohasAnswer {
    /// A neighbour holds it: `next_hop` is the tunnel address its packets go to from there,
    /// `holder` the answering router's own tunnel address (a router that holds a flow below
    /// this one is a next hop of it).
    Held {
        /// The holder's next hop for the flow.
        next_hop: core::net::Ipv4Addr,
        /// The holder.
        holder: core::net::Ipv4Addr,
    },
    /// Every neighbour asked answered that it does not hold it (or could not be asked): the
    /// policy picks now, without waiting for the timeout.
    Nobody,
}

/// What a router says when asked about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhohasReply {
    /// It holds the flow; its packets go to this tunnel address.
    Held(core::net::Ipv4Addr),
    /// It does not.
    NotHeld,
    /// The flow's destination is in none of its virtual subnets: a question it must not answer
    /// (counted by the driver as foreign).
    Foreign,
}

/// A flow being asked about.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Its virtual host.
    pub vh: usize,
    /// Packets waiting for the answer (routed, TTL already decremented where it applies).
    pub held: Vec<PacketBuf>,
    /// When the policy decides if nobody answered.
    pub deadline: Instant,
}

/// The flows being asked about.
#[derive(Debug, Default)]
pub(crate) struct PendingTable {
    flows: HashMap<FlowKey, Pending>,
    /// Deadlines in order (the timeout is one constant, so insertion order is deadline order);
    /// entries of flows answered in the meantime are skipped.
    order: VecDeque<(Instant, FlowKey)>,
    held: usize,
    /// Questions for the driver to send.
    questions: VecDeque<FlowKey>,
}

/// Why a packet could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldRefusal {
    /// Too many flows are being asked about: the policy decides at once.
    TooManyPending,
    /// This flow's (or every flow's) queue is full: the packet is dropped.
    QueueFull,
}

impl PendingTable {
    /// Flows being asked about.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Packets held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds `buf` for `key`, asking about the flow if it is new. Returns whether a question
    /// was queued; a refused packet comes back.
    pub fn hold(
        &mut self,
        cfg: &WhohasConfig,
        now: Instant,
        key: FlowKey,
        vh: usize,
        buf: PacketBuf,
    ) -> Result<bool, (HoldRefusal, PacketBuf)> {
        if self.held >= cfg.max_held {
            let why = if self.flows.contains_key(&key) {
                HoldRefusal::QueueFull
            } else {
                HoldRefusal::TooManyPending
            };
            return Err((why, buf));
        }
        if let Some(p) = self.flows.get_mut(&key) {
            if p.held.len() >= cfg.max_held_per_flow {
                return Err((HoldRefusal::QueueFull, buf));
            }
            p.held.push(buf);
            self.held += 1;
            return Ok(false);
        }
        if self.flows.len() >= cfg.max_pending {
            return Err((HoldRefusal::TooManyPending, buf));
        }
        let deadline = now + cfg.timeout;
        self.flows.insert(
            key,
            Pending {
                vh,
                held: vec![buf],
                deadline,
            },
        );
        self.held += 1;
        self.order.push_back((deadline, key));
        self.questions.push_back(key);
        Ok(true)
    }

    /// Takes a flow out (answered or timed out).
    pub fn take(&mut self, key: &FlowKey) -> Option<Pending> {
        let p = self.flows.remove(key)?;
        self.held -= p.held.len();
        Some(p)
    }

    /// The next flow whose deadline passed by `now`.
    pub fn next_expired(&mut self, now: Instant) -> Option<(FlowKey, Pending)> {
        while let Some(&(deadline, key)) = self.order.front() {
            let live = self.flows.get(&key).is_some_and(|p| p.deadline == deadline);
            if !live {
                self.order.pop_front();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.order.pop_front();
            return self.take(&key).map(|p| (key, p));
        }
        None
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Stale entries at the front only make the driver call a little early.
        self.order.front().map(|&(d, _)| d)
    }

    /// The next question to send.
    pub fn poll_question(&mut self) -> Option<FlowKey> {
        self.questions.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 9, 0, 1),
            port,
            80,
            6,
        )
    }

    fn buf() -> PacketBuf {
        PacketBuf::with_headroom(20, 100)
    }

    #[test]
    fn bounds_per_flow_in_all_and_pending() {
        let cfg = WhohasConfig {
            timeout: Duration::from_millis(10),
            max_pending: 2,
            max_held_per_flow: 2,
            max_held: 3,
        };
        let mut t = PendingTable::default();
        let t0 = Instant::ZERO;
        assert_eq!(t.hold(&cfg, t0, key(1), 0, buf()).ok(), Some(true));
        assert_eq!(t.hold(&cfg, t0, key(1), 0, buf()).ok(), Some(false));
        assert_eq!(
            t.hold(&cfg, t0, key(1), 0, buf()).map_err(|e| e.0),
            Err(HoldRefusal::QueueFull)
        );
        assert_eq!(t.hold(&cfg, t0, key(2), 0, buf()).ok(), Some(true));
        // Three held: the total bound refuses a new flow as a storm, a known one as full.
        assert_eq!(
            t.hold(&cfg, t0, key(3), 0, buf()).map_err(|e| e.0),
            Err(HoldRefusal::TooManyPending)
        );
        assert_eq!(
            t.hold(&cfg, t0, key(2), 0, buf()).map_err(|e| e.0),
            Err(HoldRefusal::QueueFull)
        );
        assert_eq!(t.take(&key(2)).map(|p| p.held.len()), Some(1));
        assert_eq!(t.held(), 2);
        // Pending bound: key(1) and key(3) fill it.
        assert_eq!(t.hold(&cfg, t0, key(3), 0, buf()).ok(), Some(true));
        assert_eq!(
            t.hold(&cfg, t0, key(4), 0, buf()).map_err(|e| e.0),
            Err(HoldRefusal::TooManyPending)
        );
        let questions: Vec<_> = std::iter::from_fn(|| t.poll_question()).collect();
        assert_eq!(questions, vec![key(1), key(2), key(3)]);
    }

    #[test]
    fn deadlines_in_order_skipping_answered_flows() {
        let cfg = WhohasConfig {
            timeout: Duration::from_millis(10),
            ..WhohasConfig::default()
        };
        let mut t = PendingTable::default();
        let t0 = Instant::ZERO;
        assert!(t.hold(&cfg, t0, key(1), 0, buf()).is_ok());
        assert!(t
            .hold(&cfg, t0 + Duration::from_millis(1), key(2), 0, buf())
            .is_ok());
        assert!(t
            .hold(&cfg, t0 + Duration::from_millis(2), key(3), 0, buf())
            .is_ok());
        assert!(t.take(&key(2)).is_some());
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(t.next_expired(t0 + Duration::from_millis(9)).is_none());
        let at = t0 + Duration::from_millis(20);
        let expired: Vec<_> = std::iter::from_fn(|| t.next_expired(at).map(|(k, _)| k)).collect();
        assert_eq!(expired, vec![key(1), key(3)]);
        assert_eq!((t.len(), t.held()), (0, 0));
        // Asked again after an answer: the old deadline entry does not expire the new question.
        assert!(t.hold(&cfg, at, key(1), 0, buf()).is_ok());
        assert!(t.next_expired(at + Duration::from_millis(5)).is_none());
        assert!(t.next_expired(at + Duration::from_millis(10)).is_some());
    }
}
