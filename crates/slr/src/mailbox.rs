//! The mailbox of the router's packet thread: how every other thread (health checkers, the
//! control thread, the control socket, the metrics endpoint) asks it for something.
//!
//! The packet thread owns the routing core and never blocks on anyone: requests wait in a
//! channel, an eventfd wakes its poll, and it answers each request between two batches of
//! packets. [`Handle`] is the sending side (cheap to clone, one per thread that needs it);
//! [`Mailbox`] the receiving side, which only the packet thread holds. Nothing here depends on
//! the packet loop, so the threads that use a handle do not either.

use crate::snapshot::{FlowPage, Snapshot};
use anyhow::{anyhow, Result};
use slr_config::Overrides;
use slr_core::router::{Control, NextHopConfig};
use slr_io::EventFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// A chunk of the flows a router signalled, for the keepalives to its parents (MISSION F10).
#[derive(Debug, Default)]
pub struct KeptChunk {
    /// Flows still held and signalled.
    pub flows: Vec<slr_control::MirrorFlow>,
    /// Keys of the rotation examined for this chunk (0: the rotation is empty).
    pub examined: usize,
    /// Keys in the rotation before this chunk: one round offers each of them once.
    pub rotation: usize,
}

/// A request to the packet thread, with the channel its answer goes back on.
pub enum Request {
    /// Apply a control input; the answer says whether the core took it.
    Control(Control, Sender<Result<(), String>>),
    /// A snapshot of state and counters.
    Snapshot(Sender<Snapshot>),
    /// A page of the flow table: up to `limit` flows from `offset` on.
    Flows {
        /// Where the page starts.
        offset: usize,
        /// Most flows.
        limit: usize,
        /// The answer.
        reply: Sender<FlowPage>,
    },
    /// Change the runtime overrides; the answer is the overrides now in force.
    Override(OverrideChange, Sender<Result<Overrides, String>>),
    /// Read the configuration file again.
    Reload(Sender<Result<(), String>>),
    /// The children of a fetched gateway table: they replace the file's
    /// `[[gateways.children]]` as next hops, now and after every reload.
    Gateways(Vec<NextHopConfig>, Sender<Result<(), String>>),
    /// Empty the fast path's flow map; the answer is how many entries went.
    FastPathFlush(Sender<Result<usize, String>>),
    /// Flow changes a cluster peer mirrored here, to apply in order (no answer).
    Mirrored(slr_control::ReceivedBatch),
    /// Every flow a peer may take over, with its next hop's tunnel address (a full sync).
    MirrorFlows(Sender<Vec<(slr_control::MirrorFlow, std::net::Ipv4Addr)>>),
    /// What the cluster's peers said of flows the core asked about (WHOHAS; no answer).
    WhohasFound(Vec<(slr_control::MirrorFlow, slr_control::Found)>),
    /// A peer asks which of these flows this router holds; the answer is one reply per flow
    /// and this router's tunnel address.
    WhohasAsk(
        Vec<slr_control::MirrorFlow>,
        Sender<(Vec<slr_control::FlowReply>, std::net::Ipv4Addr)>,
    ),
    /// A child's shortcut signals and keepalives (F10), for the core to judge.
    Shortcut(
        String,
        Vec<slr_control::ShortcutSignal>,
        Vec<slr_control::MirrorFlow>,
        Sender<slr_control::ShortcutAnswer>,
    ),
    /// Flows whose signals the parent accepted: their copies are kept alive from now on.
    ShortcutMark(Vec<slr_control::MirrorFlow>),
    /// The flows this router signalled (to ask the parent about).
    ShortcutKept(usize, Sender<KeptChunk>),
    /// Signalled flows the parent still holds: refresh them here.
    ShortcutRefresh(Vec<slr_control::MirrorFlow>),
    /// Clear every shortcut; the answer is how many went.
    ShortcutFlush(Sender<usize>),
}

/// A change of the runtime overrides (`slr ctl R weight/drain/undrain/clear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideChange {
    /// Set a next hop's weight.
    Weight(String, u32),
    /// Drain a next hop (true) or lift its drain (false).
    Drain(String, bool),
    /// Clear a next hop's overrides, or all of them.
    Clear(Option<String>),
}

/// The handle other threads use to reach the packet thread.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Request>,
    wake: Arc<EventFd>,
}

/// The packet thread's side: the requests, and the eventfd its poll waits on.
pub struct Mailbox {
    /// Pending requests.
    pub requests: Receiver<Request>,
    /// Readable when a request was sent.
    pub wake: Arc<EventFd>,
}

/// A new mailbox and the first handle to it.
pub fn channel() -> Result<(Handle, Mailbox)> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new()?);
    Ok((
        Handle {
            tx,
            wake: wake.clone(),
        },
        Mailbox { requests: rx, wake },
    ))
}

impl Handle {
    fn send(&self, r: Request) -> Result<()> {
        self.tx
            .send(r)
            .map_err(|_| anyhow!("router is shutting down"))?;
        self.wake.notify()?;
        Ok(())
    }

    /// Applies a control input and waits for the core's answer.
    pub fn control(&self, c: Control) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Control(c, tx))?;
        rx.recv_timeout(Duration::from_secs(5))?
            .map_err(|e| anyhow!(e))
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Snapshot(tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(5))?)
    }

    /// A page of the flow table: up to `limit` flows from `offset` on.
    pub fn flows(&self, offset: usize, limit: usize) -> Result<FlowPage> {
        let (tx, reply) = mpsc::channel();
        self.send(Request::Flows {
            offset,
            limit,
            reply: tx,
        })?;
        Ok(reply.recv_timeout(Duration::from_secs(10))?)
    }

    /// Changes the runtime overrides; returns those in force.
    pub fn set_override(&self, change: OverrideChange) -> Result<Overrides> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Override(change, tx))?;
        rx.recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow!(e))
    }

    /// Reads the configuration file again.
    pub fn reload(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Reload(tx))?;
        rx.recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow!(e))
    }

    /// Empties the fast path's flow map (the core keeps its flows and reinstalls each one at
    /// its next packet); returns how many entries went.
    pub fn fast_path_flush(&self) -> Result<usize> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::FastPathFlush(tx))?;
        rx.recv_timeout(Duration::from_secs(30))?
            .map_err(|e| anyhow!(e))
    }

    /// Hands a peer's mirrored batch to the packet thread.
    pub fn mirrored(&self, batch: slr_control::ReceivedBatch) -> Result<()> {
        self.send(Request::Mirrored(batch))
    }

    /// Every flow a cluster peer may take over (for a full sync).
    pub fn mirror_flows(&self) -> Result<Vec<(slr_control::MirrorFlow, std::net::Ipv4Addr)>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::MirrorFlows(tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(30))?)
    }

    /// Hands the peers' answers to WHOHAS questions to the packet thread.
    pub fn whohas_found(
        &self,
        found: Vec<(slr_control::MirrorFlow, slr_control::Found)>,
    ) -> Result<()> {
        self.send(Request::WhohasFound(found))
    }

    /// Asks the packet thread which of `flows` it holds (a peer's WHOHAS question).
    pub fn whohas_ask(
        &self,
        flows: Vec<slr_control::MirrorFlow>,
    ) -> Result<(Vec<slr_control::FlowReply>, std::net::Ipv4Addr)> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::WhohasAsk(flows, tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(1))?)
    }

    /// Has the core judge a child's shortcut signals and keepalives.
    pub fn shortcut(
        &self,
        child: String,
        signals: Vec<slr_control::ShortcutSignal>,
        keepalives: Vec<slr_control::MirrorFlow>,
    ) -> Result<slr_control::ShortcutAnswer> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Shortcut(child, signals, keepalives, tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(2))?)
    }

    /// Marks flows whose signals the parent accepted.
    pub fn shortcut_mark(&self, flows: Vec<slr_control::MirrorFlow>) -> Result<()> {
        self.send(Request::ShortcutMark(flows))
    }

    /// The next chunk of the flows this router signalled: at most `max` keys of the rotation
    /// examined (see [`KeptChunk`]).
    pub fn shortcut_kept(&self, max: usize) -> Result<KeptChunk> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::ShortcutKept(max, tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(2))?)
    }

    /// Refreshes signalled flows the parent still holds.
    pub fn shortcut_refresh(&self, flows: Vec<slr_control::MirrorFlow>) -> Result<()> {
        self.send(Request::ShortcutRefresh(flows))
    }

    /// Clears every shortcut of this router (it is the ingress of their flows).
    pub fn shortcut_flush(&self) -> Result<usize> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::ShortcutFlush(tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(10))?)
    }

    /// Replaces the gateway children (next hops) with a fetched table's.
    pub fn set_gateways(&self, children: Vec<NextHopConfig>) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Gateways(children, tx))?;
        rx.recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow!(e))
    }
}
