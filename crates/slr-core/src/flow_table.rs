//! The flow table: which next hop each flow is pinned to (MISSION F8).
//!
//! A router picks a host server (or a child router) once per new flow, then every later packet
//! of that flow must go to the same place, even after the set of next hops changed; otherwise
//! established connections break. The flow table is that memory: a map from the flow's 5-tuple
//! ([`FlowKey`]) to a [`FlowEntry`] holding the pinned `next_hop`, a coarse [`FlowState`] and
//! counters. Like the rest of `slr-core` it owns no clock: every call takes `now`.
//!
//! # What the router sees, and the states that follow
//!
//! Replies bypass the router (direct server return), so only the client's direction is seen and
//! the state comes from the client's TCP flags alone ([`FlowState::for_new_flow`],
//! [`FlowState::on_packet`]): a SYN without ACK opens a half-open flow, a later ACK without SYN
//! establishes it, a FIN or RST moves it to closing for good. A TCP flow first seen mid-stream
//! (after a router restart, or when another router handed it over) starts established; one first
//! seen with FIN or RST starts closing, so a stray reset does not hold an entry for ten minutes.
//!
//! # Timeouts and eviction
//!
//! An entry idle (`now - last_seen`) for longer than its state's timeout is removed by
//! [`FlowTable::expire`]. Defaults ([`FlowTableConfig::default`]):
//!
//! | state | timeout | why |
//! |---|---|---|
//! | TCP half-open | 5 s | a SYN flood must not fill the table; a real client retransmits its SYN after 1 s, which refreshes the entry |
//! | TCP established | 600 s | long-lived idle connections must keep their host (Katran users saw idle flows evicted and re-hashed) |
//! | TCP closing | 10 s | after FIN/RST only retransmissions and the last ACKs remain |
//! | UDP | 60 s | no handshake tells us when a UDP flow ends |
//! | other (ICMP, ...) | 30 s | echo and errors are short exchanges |
//!
//! The table never holds more than `max_flows` entries (default 1,048,576). When a new flow
//! arrives at a full table, one entry is evicted first, in this order, so that a flood of spoofed
//! SYNs only ever pushes out its own kind: (1) the half-open entry idle longest, (2) the closing
//! entry idle longest, (3) the UDP or other entry idle longest, (4) only then the established
//! TCP entry idle longest. [`FlowTable::insert`] returns what it evicted, so the caller can
//! decrement its per-next-hop flow counts and count evictions by state.
//!
//! # How it stays O(1) without scanning
//!
//! The map is a `std` [`HashMap`] keyed by the secret-seeded [`SeededState`] (flow keys are
//! chosen by whoever sends packets, so an unkeyed hash would let a flood pick colliding keys).
//! The hot path, [`FlowTable::touch`], is one probe of that map plus in-place updates.
//!
//! Expiry and eviction use one *expiry queue* per state: a record `(last_seen snapshot, key,
//! tag)` per entry, ordered by the snapshot. Touching an entry does **not** move its record
//! (that would cost a second random memory access per packet); records are re-checked lazily
//! when they reach the front of their queue: if the entry was touched since, the record goes
//! back in with the entry's real `last_seen`; if the entry changed state, its new state's queue
//! already holds a newer record and this one is dropped; if the entry is gone or was replaced
//! (the `tag` no longer matches), the record is dropped. A record that survives these checks is
//! exactly the entry of that state idle longest, so expiry is exact to the microsecond. Eviction
//! is exact LRU within a class too, except that one eviction re-queues at most 64 touched flows
//! before it takes the front of the queue anyway (second chance, as in CLOCK): a table full of
//! busy established flows must not stall an insert while a million of them are re-queued.
//!
//! A plain FIFO per state is not enough for exactness: a record re-queued with an older
//! `last_seen` than records pushed after it would sit behind them and expire up to one full
//! timeout late. The queue is therefore a *monotone radix heap*: 65 buckets by the highest bit in
//! which a key differs from the current minimum. It needs keys never smaller than the minimum,
//! which holds here because time only moves forward and a re-queued front record is placed
//! before the next minimum is chosen (a clock that steps back is clamped: such entries expire
//! late by the step, never early). Pushes are one `Vec::push`; each record moves between buckets
//! a few dozen times at most in its life, in sequential scans, so the cost is amortized O(1) and
//! cache-friendly, unlike a binary heap whose pops miss the cache at every level of a
//! million-record heap. A bucket is redistributed in one go, though: with a million flows the
//! largest one (~24 MB) moves in one call, a few milliseconds (4-8 ms measured, see below).
//!
//! Each entry has exactly one live record. State changes (at most two per flow), removals and
//! replacements leave stale records behind; the fronts of the queues drop them as they pass, and
//! when the queues hold more than twice as many records as the table has entries (plus a small
//! slack), [`FlowTable::insert`] also sweeps a few records per call with a rotating cursor, so
//! the queues stay bounded by about two records per flow without ever pausing for a full pass.
//!
//! # Cost (release build, this 2-vCPU machine, 1,048,576 flows, keys in random order)
//!
//! Measured with a throwaway loop under other load (ranges over runs, not constants):
//! - [`FlowTable::touch`] of an existing flow: 65-130 ns (one random memory access dominates);
//!   of an unknown flow: ~20 ns. [`FlowTable::get`]: 70-160 ns.
//! - [`FlowTable::insert`] while the map grows: ~275 ns amortized (rehashing included); into a
//!   full table, evicting each time: 350-460 ns; the worst single insert seen, 4-8 ms (a queue
//!   bucket's redistribution).
//! - [`FlowTable::expire`]: 400-600 ns per record due (expired or re-queued): a random access
//!   each.
//!
//! # Memory per flow (x86-64, measured by the `memory_per_flow` test)
//!
//! - [`FlowKey`]: 14 bytes (13 of data, aligned to 2); [`FlowEntry`]: 40 bytes.
//! - Map slot: key and entry together take 56 bytes, plus 1 control byte per bucket. The map keeps
//!   at most 7/8 of its power-of-two buckets full, so a slot costs between 65 bytes (just before
//!   it doubles) and 130 bytes (just after) per flow: at 1,048,576 flows, 2^21 buckets, 114
//!   bytes. The map never shrinks: memory follows the peak number of flows.
//! - Expiry queue: 24 bytes per record, between one and about two records per flow, plus `Vec`
//!   growth slack.
//! - Measured, map and queues together: 139 bytes per flow at 1,048,576 flows (145 MB); 94 bytes
//!   per flow at 900,000 (85 MB); 106 at 100,000. A `max_flows` of 917,504 (7/8 of 2^20) never
//!   needs the second doubling and stays under ~86 MB.
//!
//! `FlowKey` only holds IPv4 addresses; IPv6 flows will need a wider key (or a second table).

use core::fmt;
use core::hash::{Hash, Hasher};
use core::net::Ipv4Addr;
use std::collections::HashMap;

use slr_wire::TcpFlags;

use crate::hash::SeededState;
use crate::time::{Duration, Instant};

/// A flow's identity as the router sees it: the client-to-virtual-host 5-tuple.
///
/// 14 bytes (13 of data). For ICMP and other port-less protocols the caller chooses what goes in
/// the port fields (for example the echo identifier, or zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address.
    pub src_addr: Ipv4Addr,
    /// The virtual host's address.
    pub dst_addr: Ipv4Addr,
    /// The client's port (0 for port-less protocols unless the caller picks a substitute).
    pub src_port: u16,
    /// The virtual host's port.
    pub dst_port: u16,
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub protocol: u8,
}

impl FlowKey {
    /// A flow key from its five fields.
    pub const fn new(
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self {
        FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            protocol,
        }
    }

    /// The key as two words: addresses, then ports and protocol (40 bits). Injective, so hashing
    /// the words is consistent with `Eq`, and one 128-bit write is cheaper than five field writes.
    #[inline(always)]
    fn pack(&self) -> (u64, u64) {
        let addrs =
            (u64::from(u32::from(self.src_addr)) << 32) | u64::from(u32::from(self.dst_addr));
        let rest = (u64::from(self.src_port) << 24)
            | (u64::from(self.dst_port) << 8)
            | u64::from(self.protocol);
        (addrs, rest)
    }

    /// The inverse of [`FlowKey::pack`].
    #[inline(always)]
    fn unpack(addrs: u64, rest: u64) -> Self {
        FlowKey {
            src_addr: Ipv4Addr::from((addrs >> 32) as u32),
            dst_addr: Ipv4Addr::from(addrs as u32),
            src_port: (rest >> 24) as u16,
            dst_port: (rest >> 8) as u16,
            protocol: rest as u8,
        }
    }
}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (addrs, rest) = self.pack();
        state.write_u128((u128::from(rest) << 64) | u128::from(addrs));
    }
}

impl fmt::Display for FlowKey {
    /// `tcp 10.0.0.1:40000 -> 10.99.0.1:80`, the form `slr ctl flows` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            6 => f.write_str("tcp ")?,
            17 => f.write_str("udp ")?,
            1 => f.write_str("icmp ")?,
            p => write!(f, "proto-{p} ")?,
        }
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src_addr, self.src_port, self.dst_addr, self.dst_port
        )
    }
}

/// What the router knows of a flow's life, from the client's direction only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum FlowState {
    /// TCP, opened by a SYN without ACK and not yet acknowledged by the client.
    TcpHalfOpen = 0,
    /// TCP, the client has sent an ACK without SYN (or the flow was first seen mid-stream).
    TcpEstablished = 1,
    /// TCP, the client has sent FIN or RST; stays here until it expires.
    TcpClosing = 2,
    /// UDP.
    Udp = 3,
    /// Any other protocol (ICMP, ...).
    Other = 4,
}

impl FlowState {
    /// Every state, in the order of their index.
    pub const ALL: [FlowState; 5] = [
        FlowState::TcpHalfOpen,
        FlowState::TcpEstablished,
        FlowState::TcpClosing,
        FlowState::Udp,
        FlowState::Other,
    ];

    /// The state of a flow created by a packet with this protocol and these TCP flags (`None`
    /// for non-TCP packets, or a TCP packet whose header was not seen).
    ///
    /// TCP: SYN without ACK gives half-open; FIN or RST gives closing (a stray reset after a
    /// restart should not hold an entry for the established timeout); anything else is a flow
    /// seen mid-stream and starts established.
    pub fn for_new_flow(protocol: u8, tcp_flags: Option<TcpFlags>) -> FlowState {
        match protocol {
            6 => match tcp_flags {
                Some(f) if f.fin() || f.rst() => FlowState::TcpClosing,
                Some(f) if f.syn() && !f.ack() => FlowState::TcpHalfOpen,
                _ => FlowState::TcpEstablished,
            },
            17 => FlowState::Udp,
            _ => FlowState::Other,
        }
    }

    /// The state after one more client packet with these TCP flags.
    ///
    /// Half-open becomes established on an ACK without SYN; half-open or established becomes
    /// closing on FIN or RST; closing never leaves. Non-TCP states, and packets without flags,
    /// change nothing.
    #[inline]
    pub fn on_packet(self, tcp_flags: Option<TcpFlags>) -> FlowState {
        let Some(f) = tcp_flags else {
            return self;
        };
        match self {
            FlowState::TcpHalfOpen | FlowState::TcpEstablished if f.fin() || f.rst() => {
                FlowState::TcpClosing
            }
            FlowState::TcpHalfOpen if f.ack() && !f.syn() => FlowState::TcpEstablished,
            s => s,
        }
    }

    /// Whether this is one of the TCP states.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            FlowState::TcpHalfOpen | FlowState::TcpEstablished | FlowState::TcpClosing
        )
    }

    /// A stable lowercase name, for metric labels and `slr ctl flows`.
    pub fn name(self) -> &'static str {
        match self {
            FlowState::TcpHalfOpen => "tcp_half_open",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpClosing => "tcp_closing",
            FlowState::Udp => "udp",
            FlowState::Other => "other",
        }
    }

    /// Index into per-state arrays.
    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One pinned flow: where it goes, its state, when it was created and last seen, its counters.
///
/// 40 bytes. Read-only outside this module (through getters), because the table's expiry
/// bookkeeping relies on `state` and `last_seen` changing only through [`FlowTable`].
#[derive(Debug, Clone, Copy)]
pub struct FlowEntry {
    created: Instant,
    last_seen: Instant,
    packets: u64,
    bytes: u64,
    next_hop: u32,
    state: FlowState,
    /// [`FlowMark`] bits (in what would otherwise be padding).
    marks: u8,
    /// Which expiry-queue record is this entry's live one (see the module doc). Lives in what
    /// would otherwise be padding.
    tag: u16,
}

/// Marks a router keeps on a flow for the shortcut (F10); see [`FlowEntry::has_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowMark {
    /// The flow came through a parent's tunnel (this router is not its ingress).
    FromParent = 1,
    /// This router told its parent the flow's shortcut (and keeps its copy alive while the
    /// parent holds the flow).
    Signalled = 2,
    /// The ingress waits for the flow's shortcut (its next packets are held briefly).
    Awaiting = 4,
    /// The ingress has a shortcut for the flow (the host's address is in the router's side
    /// table: only ingresses hold them, so the entry stays 40 bytes everywhere).
    Shortcut = 8,
    /// The control plane pinned the flow before its first packet (a health probe through a
    /// child): its packets must cross that child, so it never takes a shortcut.
    Probe = 16,
}

impl FlowEntry {
    /// The next hop this flow is pinned to (an index the caller assigns: host server or child
    /// router).
    #[inline]
    pub fn next_hop(&self) -> u32 {
        self.next_hop
    }
    /// The flow's state.
    #[inline]
    pub fn state(&self) -> FlowState {
        self.state
    }
    /// When the flow was inserted.
    pub fn created(&self) -> Instant {
        self.created
    }
    /// When the last packet of the flow was seen.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }
    /// Packets seen, including the one that created the flow.
    pub fn packets(&self) -> u64 {
        self.packets
    }
    /// Bytes seen (as reported by the caller), including the first packet's.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// How long the flow has been idle at `now`.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }
    /// Whether the flow carries `mark`.
    #[inline]
    pub fn has_mark(&self, mark: FlowMark) -> bool {
        self.marks & mark as u8 != 0
    }
}

impl PartialEq for FlowEntry {
    /// Compares what the entry says about the flow; the internal queue tag is not part of it.
    fn eq(&self, other: &Self) -> bool {
        self.created == other.created
            && self.last_seen == other.last_seen
            && self.packets == other.packets
            && self.bytes == other.bytes
            && self.next_hop == other.next_hop
            && self.state == other.state
    }
}

impl Eq for FlowEntry {}

/// Limits and timeouts of a [`FlowTable`].
///
/// An entry is removed when it has been idle for *longer* than its state's timeout (an entry
/// idle for exactly the timeout is still there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTableConfig {
    /// Most flows held at once; a new flow beyond it evicts one (see the module doc for the
    /// order). Default 1,048,576 (about 145 MB when full; see the module doc). 0 is treated as
    /// 1.
    pub max_flows: usize,
    /// Idle timeout of half-open TCP flows. Default 5 s: short, against SYN floods.
    pub tcp_half_open_timeout: Duration,
    /// Idle timeout of established TCP flows. Default 600 s.
    pub tcp_established_timeout: Duration,
    /// Idle timeout of TCP flows after FIN or RST. Default 10 s.
    pub tcp_closing_timeout: Duration,
    /// Idle timeout of UDP flows. Default 60 s.
    pub udp_timeout: Duration,
    /// Idle timeout of other flows (ICMP, ...). Default 30 s.
    pub other_timeout: Duration,
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        FlowTableConfig {
            max_flows: 1_048_576,
            tcp_half_open_timeout: Duration::from_secs(5),
            tcp_established_timeout: Duration::from_secs(600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
            other_timeout: Duration::from_secs(30),
        }
    }
}

impl FlowTableConfig {
    /// The idle timeout of flows in `state`.
    #[inline]
    pub fn timeout(&self, state: FlowState) -> Duration {
        match state {
            FlowState::TcpHalfOpen => self.tcp_half_open_timeout,
            FlowState::TcpEstablished => self.tcp_established_timeout,
            FlowState::TcpClosing => self.tcp_closing_timeout,
            FlowState::Udp => self.udp_timeout,
            FlowState::Other => self.other_timeout,
        }
    }
}

/// What [`FlowTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an evicted or replaced flow must be taken off its next hop's flow count"]
pub enum InsertOutcome {
    /// The flow was new and there was room.
    Inserted,
    /// The flow was already in the table; its entry was replaced (a re-pin) and this was the old
    /// one.
    Replaced(FlowEntry),
    /// The table was full: this flow was evicted to make room. Its `entry.state()` tells which
    /// eviction class gave way.
    Evicted {
        /// The evicted flow.
        key: FlowKey,
        /// Its entry as it was.
        entry: FlowEntry,
    },
}

/// Most touched flows one eviction re-queues before it takes the front of the queue anyway (see
/// `FlowTable::settle`). Above any class size the tests use, so their eviction is exact LRU.
const EVICTION_REQUEUE_BUDGET: usize = 64;
/// Expiry queues are swept only while they hold more than `2 * len + SWEEP_SLACK` records.
const SWEEP_SLACK: usize = 1024;
/// Records (or empty buckets) examined per insert while sweeping: well above the at most ~3 stale
/// records a flow creates in its life, so the sweep outruns their creation.
const SWEEP_BUDGET: usize = 8;

/// The flow table. See the module documentation.
///
/// Getters: [`len`](Self::len), [`get`](Self::get), [`iter`](Self::iter),
/// [`next_expiry`](Self::next_expiry), [`config`](Self::config). Per packet:
/// [`touch`](Self::touch), then [`insert`](Self::insert) if it returned `None`. Periodically, at
/// `next_expiry`: [`expire`](Self::expire).
pub struct FlowTable {
    config: FlowTableConfig,
    /// `config.max_flows`, at least 1.
    max_flows: usize,
    map: HashMap<FlowKey, FlowEntry, SeededState>,
    /// One per [`FlowState`], by [`FlowState::index`].
    queues: [ExpiryQueue; 5],
    /// Source of entry tags (wrapping; a collision only keeps one stale record alive a little
    /// longer, never changes a result).
    next_tag: u16,
    sweep: SweepCursor,
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable")
            .field("len", &self.len())
            .field("max_flows", &self.max_flows)
            .field("expiry_records", &self.expiry_records())
            .finish_non_exhaustive()
    }
}

impl FlowTable {
    /// An empty table. `hash_seed` keys the map's hash: draw it from a random source outside the
    /// core and keep it secret (it is what stops a flood from choosing colliding keys).
    ///
    /// Memory grows with the flows held; nothing is reserved up front.
    pub fn new(config: FlowTableConfig, hash_seed: u64) -> Self {
        FlowTable {
            max_flows: config.max_flows.max(1),
            config,
            map: HashMap::with_hasher(SeededState::new(hash_seed)),
            queues: [const { ExpiryQueue::new() }; 5],
            next_tag: 0,
            sweep: SweepCursor::default(),
        }
    }

    /// Flows held.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no flow is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Most flows held at once (`config().max_flows`, at least 1).
    pub fn capacity(&self) -> usize {
        self.max_flows
    }

    /// The configuration in force.
    pub fn config(&self) -> &FlowTableConfig {
        &self.config
    }

    /// Replaces the configuration. New timeouts apply to every entry at the next
    /// [`expire`](Self::expire) (they are measured from `last_seen`, not stored per entry). If
    /// `max_flows` shrank below `len()`, entries are evicted in the usual order and passed to
    /// `on_evicted`.
    pub fn set_config(
        &mut self,
        config: FlowTableConfig,
        mut on_evicted: impl FnMut(FlowKey, FlowEntry),
    ) {
        self.max_flows = config.max_flows.max(1);
        self.config = config;
        while self.map.len() > self.max_flows {
            match self.evict_one() {
                Some((key, entry)) => on_evicted(key, entry),
                None => break,
            }
        }
    }

    /// The entry of `key`, without touching it.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<&FlowEntry> {
        self.map.get(key)
    }

    /// Every flow, in no particular order (for `slr ctl flows` and tests; O(capacity)).
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> + '_ {
        self.map.iter()
    }

    /// The hot path: looks `key` up and, if present, records one more packet of `bytes` bytes
    /// seen at `now` (last seen, counters, state from `tcp_flags`), all in one hash probe.
    /// Returns the updated entry, or `None` for a new flow (then pick a next hop and
    /// [`insert`](Self::insert)).
    ///
    /// `tcp_flags` is `None` for non-TCP packets.
    #[inline]
    pub fn touch(
        &mut self,
        key: &FlowKey,
        now: Instant,
        tcp_flags: Option<TcpFlags>,
        bytes: usize,
    ) -> Option<&FlowEntry> {
        let entry = self.map.get_mut(key)?;
        // `max`: a clock that steps back must not make an entry look older than it is.
        entry.last_seen = entry.last_seen.max(now);
        entry.packets = entry.packets.saturating_add(1);
        entry.bytes = entry.bytes.saturating_add(bytes as u64);
        let state = entry.state.on_packet(tcp_flags);
        if state != entry.state {
            // At most twice in a flow's life: the old state's record goes stale (the state no
            // longer matches) and the new state's queue gets the live one.
            entry.state = state;
            self.queues[state.index()].push(Record::new(entry.last_seen, key, entry.tag));
        }
        Some(entry)
    }

    /// Marks a flow as seen at `now` without a packet (its counters and state stay): what
    /// keeps a flow that another router carries alive here (a mirrored copy). Whether the table
    /// holds it.
    pub fn refresh(&mut self, key: &FlowKey, now: Instant) -> bool {
        match self.map.get_mut(key) {
            Some(entry) => {
                // Its expiry record moves lazily, as after a packet (see `expire_with`).
                entry.last_seen = entry.last_seen.max(now);
                true
            }
            None => false,
        }
    }

    /// Sets and clears marks of a flow; whether the table holds it.
    pub fn mark(&mut self, key: &FlowKey, set: &[FlowMark], clear: &[FlowMark]) -> bool {
        let Some(entry) = self.map.get_mut(key) else {
            return false;
        };
        for m in clear {
            entry.marks &= !(*m as u8);
        }
        for m in set {
            entry.marks |= *m as u8;
        }
        true
    }

    /// Inserts a new flow pinned to `next_hop`, seen at `now` with a first packet of `bytes`
    /// bytes (use [`FlowState::for_new_flow`] for `state`).
    ///
    /// If the table is full, first evicts one flow (half-open, then closing, then UDP/other, then
    /// established; the one idle longest in its class) and returns it, so the table never holds
    /// more than [`capacity`](Self::capacity) flows. If `key` is already present its entry is
    /// replaced by a fresh one (new `created`, counters restarted) and the old one returned.
    pub fn insert(
        &mut self,
        key: FlowKey,
        next_hop: u32,
        state: FlowState,
        now: Instant,
        bytes: usize,
    ) -> InsertOutcome {
        let mut outcome = InsertOutcome::Inserted;
        if self.map.len() >= self.max_flows && !self.map.contains_key(&key) {
            if let Some((key, entry)) = self.evict_one() {
                outcome = InsertOutcome::Evicted { key, entry };
            }
        }
        self.next_tag = self.next_tag.wrapping_add(1);
        let entry = FlowEntry {
            created: now,
            last_seen: now,
            packets: 1,
            bytes: bytes as u64,
            next_hop,
            state,
            marks: 0,
            tag: self.next_tag,
        };
        if let Some(old) = self.map.insert(key, entry) {
            // The old entry's record is now stale (its tag no longer matches).
            outcome = InsertOutcome::Replaced(old);
        }
        self.queues[state.index()].push(Record::new(now, &key, entry.tag));
        if self.expiry_records() > 2 * self.map.len() + SWEEP_SLACK {
            self.sweep(SWEEP_BUDGET);
        }
        outcome
    }

    /// Removes a flow, returning its entry.
    pub fn remove(&mut self, key: &FlowKey) -> Option<FlowEntry> {
        // Its expiry record goes stale and is dropped when it reaches a queue front or the sweep.
        self.map.remove(key)
    }

    /// Keeps only the flows for which `keep` returns true (for example, to drop every flow of a
    /// removed next hop). O(capacity).
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &FlowEntry) -> bool) {
        self.map.retain(|key, entry| keep(key, entry));
    }

    /// Removes every flow.
    pub fn clear(&mut self) {
        self.map.clear();
        for queue in &mut self.queues {
            queue.clear();
        }
        self.sweep = SweepCursor::default();
    }

    /// Removes every flow idle for longer than its state's timeout at `now`, passing each to
    /// `on_expired`; returns how many. Work is proportional to the records due, never to the
    /// table's size.
    pub fn expire(&mut self, now: Instant, on_expired: impl FnMut(FlowKey, FlowEntry)) -> usize {
        self.expire_with(now, |_| None, on_expired)
    }

    /// [`expire`](Self::expire), for a table that has a cache elsewhere (a kernel fast path)
    /// which forwards some of the flows' packets without touching the table: before a flow is
    /// removed, `seen_elsewhere` is asked when the cache last saw it, and a later time counts as
    /// a packet (the entry's `last_seen` moves, counters do not). It is asked only about flows
    /// that are due, so the work stays proportional to them.
    pub fn expire_with(
        &mut self,
        now: Instant,
        mut seen_elsewhere: impl FnMut(&FlowKey) -> Option<Instant>,
        mut on_expired: impl FnMut(FlowKey, FlowEntry),
    ) -> usize {
        let now = now.as_micros();
        let mut expired = 0;
        for state in FlowState::ALL {
            let timeout = self.config.timeout(state).as_micros();
            let queue = &mut self.queues[state.index()];
            while let Some(&record) = queue.peek() {
                // Records hold a `last_seen` no later than the entry's: nothing behind this one
                // is due.
                if record.at.saturating_add(timeout) >= now {
                    break;
                }
                let key = record.key();
                match self.map.get_mut(&key) {
                    Some(entry) if entry.state == state && entry.tag == record.tag() => {
                        let last_seen = entry.last_seen.as_micros();
                        if last_seen > record.at && last_seen.saturating_add(timeout) >= now {
                            // Touched since this record was queued: back in at its real place.
                            self.next_tag = self.next_tag.wrapping_add(1);
                            entry.tag = self.next_tag;
                            queue.requeue_front(last_seen, entry.tag);
                            continue;
                        }
                        if let Some(seen) = seen_elsewhere(&key) {
                            let seen = seen.as_micros();
                            if seen > last_seen && seen.saturating_add(timeout) >= now {
                                entry.last_seen = Instant::from_micros(seen);
                                self.next_tag = self.next_tag.wrapping_add(1);
                                entry.tag = self.next_tag;
                                queue.requeue_front(seen, entry.tag);
                                continue;
                            }
                        }
                    }
                    _ => {
                        queue.pop(); // stale
                        continue;
                    }
                }
                queue.pop();
                if let Some(entry) = self.map.remove(&key) {
                    expired += 1;
                    on_expired(key, entry);
                }
            }
        }
        expired
    }

    /// The earliest time at which [`expire`](Self::expire) may remove a flow, or `None` if it
    /// has nothing to do. Never later than the true earliest expiry; may be earlier (a queue
    /// front touched since it was queued, or a removed flow), in which case `expire` at that
    /// time removes nothing and this moves on. After `expire(now)` it is always later than
    /// `now`, so a driver that sleeps until it cannot spin. O(1).
    pub fn next_expiry(&self) -> Option<Instant> {
        FlowState::ALL
            .iter()
            .filter_map(|&state| {
                let record = self.queues[state.index()].peek()?;
                let timeout = self.config.timeout(state).as_micros();
                // Idle *longer* than the timeout: the first instant is one microsecond after.
                Some(record.at.saturating_add(timeout).saturating_add(1))
            })
            .min()
            .map(Instant::from_micros)
    }

    /// Records held by the expiry queues, live and stale (between `len()` and about
    /// `2 * len() + 1024` after inserts; exposed for tests and memory metrics).
    pub fn expiry_records(&self) -> usize {
        self.queues.iter().map(|q| q.len).sum()
    }

    /// An estimate of the heap memory held, in bytes: the map's buckets (slot plus control byte)
    /// and the queues' allocated capacity.
    pub fn memory_bytes(&self) -> usize {
        // std's map keeps at most 7/8 of its power-of-two bucket count occupied (all but one
        // below 8 buckets) and reports that as its capacity.
        let capacity = self.map.capacity();
        let buckets = match capacity {
            0 => 0,
            c if c < 7 => (c + 1).next_power_of_two(),
            c => (c / 7 * 8).next_power_of_two(),
        };
        let slot = core::mem::size_of::<(FlowKey, FlowEntry)>() + 1;
        let map = buckets * slot + if buckets > 0 { 16 } else { 0 };
        let queues: usize = self
            .queues
            .iter()
            .map(|q| q.capacity() * core::mem::size_of::<Record>())
            .sum();
        map + queues
    }

    /// Evicts one flow in the documented order, or returns `None` if the table is empty.
    fn evict_one(&mut self) -> Option<(FlowKey, FlowEntry)> {
        const CLASSES: [&[FlowState]; 4] = [
            &[FlowState::TcpHalfOpen],
            &[FlowState::TcpClosing],
            &[FlowState::Udp, FlowState::Other],
            &[FlowState::TcpEstablished],
        ];
        for class in CLASSES {
            let mut oldest: Option<(u64, FlowState)> = None;
            for &state in class {
                if let Some(at) = self.settle(state) {
                    if oldest.is_none_or(|(best, _)| at < best) {
                        oldest = Some((at, state));
                    }
                }
            }
            if let Some((_, state)) = oldest {
                let record = self.queues[state.index()].pop()?;
                let key = record.key();
                let entry = self.map.remove(&key)?;
                return Some((key, entry));
            }
        }
        // Unreachable while every entry has a live record; never exceed the bound regardless.
        debug_assert!(self.map.is_empty(), "flow without an expiry record");
        let key = *self.map.keys().next()?;
        self.map.remove(&key).map(|entry| (key, entry))
    }

    /// Drops stale records and re-queues touched ones at the front of `state`'s queue until the
    /// front is the live record of the entry in `state` idle longest; returns its `last_seen`.
    ///
    /// After [`EVICTION_REQUEUE_BUDGET`] re-queues it stops and offers the front as it is: a
    /// flow touched since it was queued, the one queued longest ago (second chance, as in CLOCK).
    /// Without the cap, the first eviction from a queue of a million busy flows would re-queue
    /// all of them in one call (each re-queue is paid for by an earlier touch, so the cost is
    /// amortized, but a router cannot stall for the ~300 ms that takes).
    fn settle(&mut self, state: FlowState) -> Option<u64> {
        let queue = &mut self.queues[state.index()];
        let mut budget = EVICTION_REQUEUE_BUDGET;
        loop {
            let record = *queue.peek()?;
            match self.map.get_mut(&record.key()) {
                Some(entry) if entry.state == state && entry.tag == record.tag() => {
                    let last_seen = entry.last_seen.as_micros();
                    // `<=`, not `==`: after the clock stepped back, `push` clamps a record to the
                    // queue's minimum, later than its entry's `last_seen`. Such a record is as
                    // far forward as it can go (the entry is evicted late by the step, as it
                    // expires late); re-queueing it would clamp it again, for ever (a hang found
                    // by fuzz/ flow_table: insert after a step back, then evict).
                    if last_seen <= record.at || budget == 0 {
                        return Some(last_seen);
                    }
                    budget -= 1;
                    // A fresh tag retires any other record that happens to carry the old one.
                    self.next_tag = self.next_tag.wrapping_add(1);
                    entry.tag = self.next_tag;
                    queue.requeue_front(last_seen, entry.tag);
                }
                _ => {
                    queue.pop();
                }
            }
        }
    }

    /// Examines up to `budget` records (or empty buckets) from the rotating cursor, dropping the
    /// stale ones.
    fn sweep(&mut self, budget: usize) {
        for _ in 0..budget {
            let cursor = &mut self.sweep;
            let queue = &mut self.queues[cursor.queue];
            let Some(&record) = queue.buckets[cursor.bucket].get(cursor.pos) else {
                cursor.advance();
                continue;
            };
            let state = FlowState::ALL[cursor.queue];
            let live = self
                .map
                .get(&record.key())
                .is_some_and(|entry| entry.state == state && entry.tag == record.tag());
            if live {
                cursor.pos += 1;
            } else {
                // Order inside a bucket does not matter, so this is O(1); the cursor stays put
                // to look at the record swapped in.
                queue.swap_remove(cursor.bucket, cursor.pos);
            }
        }
    }
}

/// Where the sweep resumes: queue, bucket, position.
#[derive(Debug, Default, Clone, Copy)]
struct SweepCursor {
    queue: usize,
    bucket: usize,
    pos: usize,
}

impl SweepCursor {
    fn advance(&mut self) {
        self.pos = 0;
        self.bucket += 1;
        if self.bucket == BUCKETS {
            self.bucket = 0;
            self.queue = (self.queue + 1) % FlowState::ALL.len();
        }
    }
}

/// An expiry-queue record: the entry's `last_seen` (µs) when queued, its key packed, and its tag.
/// 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: u64,
    addrs: u64,
    /// Ports and protocol (40 bits) above the 16-bit tag.
    rest_tag: u64,
}

impl Record {
    #[inline(always)]
    fn new(at: Instant, key: &FlowKey, tag: u16) -> Self {
        let (addrs, rest) = key.pack();
        Record {
            at: at.as_micros(),
            addrs,
            rest_tag: (rest << 16) | u64::from(tag),
        }
    }

    #[inline(always)]
    fn key(&self) -> FlowKey {
        FlowKey::unpack(self.addrs, self.rest_tag >> 16)
    }

    #[inline(always)]
    fn tag(&self) -> u16 {
        self.rest_tag as u16
    }
}

/// Buckets of a radix heap over `u64` keys: bucket 0 holds keys equal to `last`, bucket `i > 0`
/// keys whose highest bit differing from `last` is bit `i - 1`.
const BUCKETS: usize = 65;

/// Drained buckets keep their allocation up to this many records and free a larger one (a big
/// bucket is refilled only about once per timeout; keeping every bucket's peak would hold several
/// times the records).
const KEEP_DRAINED_CAPACITY: usize = 256;

/// A monotone radix heap of [`Record`]s by `at` (see the module doc). Invariant: if it holds
/// anything, bucket 0 does, so the minimum is found in O(1) through `&self`.
#[derive(Debug)]
struct ExpiryQueue {
    /// The key of the records in bucket 0, that is the minimum (when empty: the last minimum
    /// taken out or re-queued). Every record is placed by its highest bit differing from it, so
    /// no record below it can be held: a push must not be earlier than the current minimum
    /// (true of `now` while the clock moves forward), and a re-queue of the minimum goes through
    /// [`ExpiryQueue::requeue_front`].
    last: u64,
    len: usize,
    buckets: [Vec<Record>; BUCKETS],
}

impl ExpiryQueue {
    const fn new() -> Self {
        ExpiryQueue {
            last: 0,
            len: 0,
            buckets: [const { Vec::new() }; BUCKETS],
        }
    }

    #[inline(always)]
    fn bucket_for(&self, at: u64) -> usize {
        (u64::BITS - (at ^ self.last).leading_zeros()) as usize
    }

    #[inline]
    fn push(&mut self, mut record: Record) {
        if self.len == 0 {
            // Keeps the invariant: the sole record is the minimum, in bucket 0.
            self.last = self.last.max(record.at);
        }
        // Only a clock stepping back gets here with an earlier key: clamp (expires late, never
        // early) rather than break the heap.
        record.at = record.at.max(self.last);
        let bucket = self.bucket_for(record.at);
        self.buckets[bucket].push(record);
        self.len += 1;
    }

    #[inline]
    fn peek(&self) -> Option<&Record> {
        self.buckets[0].last()
    }

    #[inline]
    fn pop(&mut self) -> Option<Record> {
        let record = self.buckets[0].pop()?;
        self.len -= 1;
        if self.buckets[0].is_empty() {
            self.refill();
        }
        Some(record)
    }

    /// Moves the minimum record to `at` (not earlier than its current key) with a new `tag`.
    ///
    /// This is what makes lazy re-checking exact: the record is placed *before* bucket 0 is
    /// refilled, while `last` still equals its old key, so `at` may be anything from there on,
    /// including earlier than the records that a refill would make the new minimum. (Popping
    /// first and pushing after would clamp `at` up to that new minimum: late expiry, and an
    /// endless re-queue loop in eviction.)
    fn requeue_front(&mut self, at: u64, tag: u16) {
        let Some(mut record) = self.buckets[0].pop() else {
            return;
        };
        debug_assert!(at >= self.last);
        record.at = at.max(self.last);
        record.rest_tag = (record.rest_tag & !0xffff) | u64::from(tag);
        let bucket = self.bucket_for(record.at);
        self.buckets[bucket].push(record);
        if self.buckets[0].is_empty() {
            self.refill();
        }
    }

    fn swap_remove(&mut self, bucket: usize, pos: usize) {
        self.buckets[bucket].swap_remove(pos);
        self.len -= 1;
        if bucket == 0 && self.buckets[0].is_empty() {
            self.refill();
        }
    }

    /// With bucket 0 empty: makes the smallest record of the first non-empty bucket the new
    /// `last` and spreads that bucket over the lower ones (each record lands strictly lower, and
    /// records in higher buckets keep their place because the new `last` shares their high bits).
    fn refill(&mut self) {
        let Some(index) = (1..BUCKETS).find(|&i| !self.buckets[i].is_empty()) else {
            return;
        };
        let mut drained = core::mem::take(&mut self.buckets[index]);
        self.last = drained.iter().map(|r| r.at).min().unwrap_or(self.last);
        for record in drained.drain(..) {
            let bucket = self.bucket_for(record.at);
            debug_assert!(bucket < index);
            self.buckets[bucket].push(record);
        }
        if drained.capacity() <= KEEP_DRAINED_CAPACITY {
            self.buckets[index] = drained;
        }
    }

    fn clear(&mut self) {
        *self = ExpiryQueue::new();
    }

    fn capacity(&self) -> usize {
        self.buckets.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const SYN: Option<TcpFlags> = Some(TcpFlags(TcpFlags::SYN));
    const ACK: Option<TcpFlags> = Some(TcpFlags(TcpFlags::ACK));
    const SYN_ACK: Option<TcpFlags> = Some(TcpFlags(TcpFlags::SYN | TcpFlags::ACK));
    const FIN_ACK: Option<TcpFlags> = Some(TcpFlags(TcpFlags::FIN | TcpFlags::ACK));
    const RST: Option<TcpFlags> = Some(TcpFlags(TcpFlags::RST));

    fn key(i: u32, protocol: u8) -> FlowKey {
        FlowKey::new(
            Ipv4Addr::from(0x0a00_0000 | (i >> 8)),
            Ipv4Addr::new(10, 99, 0, 1),
            1024 + (i & 0xff) as u16,
            80,
            protocol,
        )
    }

    fn t(micros: u64) -> Instant {
        Instant::from_micros(micros)
    }

    fn table(max_flows: usize) -> FlowTable {
        FlowTable::new(
            FlowTableConfig {
                max_flows,
                ..FlowTableConfig::default()
            },
            0x5eed,
        )
    }

    fn expire_keys(table: &mut FlowTable, now: Instant) -> Vec<FlowKey> {
        let mut keys = Vec::new();
        table.expire(now, |k, _| keys.push(k));
        keys.sort();
        keys
    }

    #[test]
    fn expire_with_asks_about_due_flows_only_and_a_later_use_keeps_them() {
        let mut tb = table(100);
        let udp = FlowTableConfig::default().udp_timeout.as_micros();
        for i in 0..3 {
            let _ = tb.insert(key(i, 17), 0, FlowState::Udp, t(0), 100);
        }
        // Flow 1 seen by the fast path half a timeout later; flow 2 at a time no later than
        // the table's own; flow 0 never.
        let mut asked = Vec::new();
        let gone = {
            let mut ids = Vec::new();
            tb.expire_with(
                t(udp + 1),
                |k| {
                    asked.push(*k);
                    match k {
                        k if *k == key(1, 17) => Some(t(udp / 2)),
                        k if *k == key(2, 17) => Some(t(0)),
                        _ => None,
                    }
                },
                |k, _| ids.push(k),
            );
            ids.sort();
            ids
        };
        assert_eq!(gone, vec![key(0, 17), key(2, 17)]);
        assert_eq!(asked.len(), 3, "each due flow asked once: {asked:?}");
        assert_eq!(tb.get(&key(1, 17)).unwrap().last_seen(), t(udp / 2));
        // Nothing is asked before a flow is due.
        let mut asked = 0;
        tb.expire_with(
            t(udp / 2 + udp),
            |_| {
                asked += 1;
                None
            },
            |_, _| {},
        );
        assert_eq!(asked, 0);
        assert_eq!(tb.len(), 1);
        // Due again, and the fast path saw nothing since: it goes.
        assert_eq!(
            tb.expire_with(t(udp / 2 + udp + 1), |_| Some(t(udp / 2)), |_, _| {}),
            1
        );
        assert!(tb.is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 14);
        assert_eq!(core::mem::size_of::<FlowEntry>(), 40);
        assert_eq!(core::mem::size_of::<(FlowKey, FlowEntry)>(), 56);
        assert_eq!(core::mem::size_of::<Record>(), 24);
    }

    #[test]
    fn key_packing_round_trips_and_displays() {
        let k = FlowKey::new(
            Ipv4Addr::new(192, 0, 2, 7),
            Ipv4Addr::new(10, 99, 0, 1),
            65535,
            443,
            6,
        );
        let r = Record::new(t(5), &k, 0xbeef);
        assert_eq!(r.key(), k);
        assert_eq!(r.tag(), 0xbeef);
        assert_eq!(k.to_string(), "tcp 192.0.2.7:65535 -> 10.99.0.1:443");
        assert_eq!(key(1, 17).to_string(), "udp 10.0.0.0:1025 -> 10.99.0.1:80");
        assert_eq!(
            key(1, 47).to_string(),
            "proto-47 10.0.0.0:1025 -> 10.99.0.1:80"
        );
    }

    #[test]
    fn state_of_new_flows() {
        use FlowState::*;
        assert_eq!(FlowState::for_new_flow(6, SYN), TcpHalfOpen);
        assert_eq!(FlowState::for_new_flow(6, ACK), TcpEstablished);
        assert_eq!(FlowState::for_new_flow(6, SYN_ACK), TcpEstablished);
        assert_eq!(FlowState::for_new_flow(6, None), TcpEstablished);
        assert_eq!(FlowState::for_new_flow(6, FIN_ACK), TcpClosing);
        assert_eq!(FlowState::for_new_flow(6, RST), TcpClosing);
        assert_eq!(FlowState::for_new_flow(17, None), Udp);
        assert_eq!(FlowState::for_new_flow(1, None), Other);
        assert_eq!(FlowState::for_new_flow(17, SYN), Udp);
    }

    #[test]
    fn state_transitions() {
        use FlowState::*;
        assert_eq!(TcpHalfOpen.on_packet(SYN), TcpHalfOpen); // retransmitted SYN
        assert_eq!(TcpHalfOpen.on_packet(None), TcpHalfOpen);
        assert_eq!(TcpHalfOpen.on_packet(SYN_ACK), TcpHalfOpen);
        assert_eq!(TcpHalfOpen.on_packet(ACK), TcpEstablished);
        assert_eq!(TcpHalfOpen.on_packet(RST), TcpClosing);
        assert_eq!(TcpEstablished.on_packet(ACK), TcpEstablished);
        assert_eq!(TcpEstablished.on_packet(FIN_ACK), TcpClosing);
        assert_eq!(TcpEstablished.on_packet(RST), TcpClosing);
        assert_eq!(TcpClosing.on_packet(ACK), TcpClosing);
        assert_eq!(TcpClosing.on_packet(SYN), TcpClosing);
        assert_eq!(Udp.on_packet(FIN_ACK), Udp);
        assert_eq!(Other.on_packet(RST), Other);

        // The same through the table, with counters.
        let mut ft = table(16);
        let k = key(1, 6);
        assert_eq!(
            ft.insert(k, 7, TcpHalfOpen, t(0), 60),
            InsertOutcome::Inserted
        );
        assert_eq!(ft.touch(&k, t(1), SYN, 60).unwrap().state(), TcpHalfOpen);
        let e = *ft.touch(&k, t(2), ACK, 52).unwrap();
        assert_eq!(e.state(), TcpEstablished);
        assert_eq!((e.next_hop(), e.packets(), e.bytes()), (7, 3, 172));
        assert_eq!((e.created(), e.last_seen()), (t(0), t(2)));
        assert_eq!(ft.touch(&k, t(3), FIN_ACK, 52).unwrap().state(), TcpClosing);
        assert_eq!(ft.touch(&k, t(4), ACK, 52).unwrap().state(), TcpClosing);
        assert_eq!(ft.get(&k).unwrap().packets(), 5);
        assert!(ft.touch(&key(2, 6), t(5), ACK, 52).is_none());
    }

    #[test]
    fn each_state_times_out_after_its_idle_timeout() {
        let config = FlowTableConfig::default();
        for state in FlowState::ALL {
            let timeout = config.timeout(state).as_micros();
            let mut ft = FlowTable::new(config.clone(), 1);
            let start = 1_000_000;
            let k = key(3, if state.is_tcp() { 6 } else { 17 });
            let _ = ft.insert(k, 1, state, t(start), 0);
            assert_eq!(ft.next_expiry(), Some(t(start + timeout + 1)), "{state}");
            assert!(
                expire_keys(&mut ft, t(start + timeout - 1)).is_empty(),
                "{state}"
            );
            // Idle exactly the timeout: not yet longer than it.
            assert!(
                expire_keys(&mut ft, t(start + timeout)).is_empty(),
                "{state}"
            );
            assert!(ft.get(&k).is_some());
            assert_eq!(
                expire_keys(&mut ft, t(start + timeout + 1)),
                vec![k],
                "{state}"
            );
            assert!(ft.is_empty());
            assert_eq!(ft.next_expiry(), None);
        }
    }

    #[test]
    fn touching_keeps_a_flow_alive() {
        let mut ft = table(16);
        let k = key(4, 6);
        let _ = ft.insert(k, 1, FlowState::TcpEstablished, t(0), 0);
        let timeout = ft.config().tcp_established_timeout.as_micros();
        let mut now = 0;
        for _ in 0..10 {
            now += timeout - 5;
            assert!(ft.touch(&k, t(now), ACK, 0).is_some());
            assert!(expire_keys(&mut ft, t(now + timeout)).is_empty());
        }
        assert_eq!(expire_keys(&mut ft, t(now + timeout + 1)), vec![k]);
    }

    #[test]
    fn state_change_applies_the_new_timeout() {
        let mut ft = table(16);
        let k = key(5, 6);
        let _ = ft.insert(k, 1, FlowState::TcpHalfOpen, t(0), 0);
        let _ = ft.touch(&k, t(10), ACK, 0);
        // Established: the half-open timeout no longer applies.
        assert!(expire_keys(&mut ft, Instant::from_secs(6)).is_empty());
        let _ = ft.touch(&k, Instant::from_secs(7), FIN_ACK, 0);
        // Closing: 10 s after the FIN, not 600 s.
        assert!(expire_keys(&mut ft, Instant::from_secs(17)).is_empty());
        assert_eq!(expire_keys(&mut ft, t(17_000_001)), vec![k]);
    }

    #[test]
    fn next_expiry_tracks_the_earliest_deadline() {
        let mut ft = table(16);
        assert_eq!(ft.next_expiry(), None);
        let (a, b, c) = (key(1, 6), key(2, 17), key(3, 6));
        let _ = ft.insert(a, 1, FlowState::TcpEstablished, t(0), 0); // 600 s
        let _ = ft.insert(b, 1, FlowState::Udp, t(0), 0); // 60 s
        assert_eq!(ft.next_expiry(), Some(t(60_000_001)));
        let _ = ft.insert(c, 1, FlowState::TcpHalfOpen, Instant::from_secs(1), 0); // 5 s
        assert_eq!(ft.next_expiry(), Some(t(6_000_001)));
        assert_eq!(expire_keys(&mut ft, t(6_000_001)), vec![c]);
        assert_eq!(ft.next_expiry(), Some(t(60_000_001)));
        // A touch may leave next_expiry early, never late; expire then moves it on.
        let _ = ft.touch(&b, Instant::from_secs(30), None, 0);
        let early = ft.next_expiry().unwrap();
        assert!(early <= t(90_000_001));
        assert!(expire_keys(&mut ft, early).is_empty());
        assert_eq!(ft.next_expiry(), Some(t(90_000_001)));
        // A removed flow may leave a stale deadline, which also moves on.
        assert!(ft.remove(&b).is_some());
        let next = ft.next_expiry().unwrap();
        assert!(expire_keys(&mut ft, next).is_empty());
        assert_eq!(ft.next_expiry(), Some(t(600_000_001)));
    }

    #[test]
    fn the_bound_is_never_exceeded() {
        let mut ft = table(100);
        for i in 0..10_000u32 {
            let state = FlowState::ALL[(i % 5) as usize];
            let protocol = if state.is_tcp() { 6 } else { 17 };
            let outcome = ft.insert(key(i, protocol), i, state, t(u64::from(i)), 0);
            assert!(ft.len() <= 100);
            if i >= 100 {
                assert!(
                    matches!(outcome, InsertOutcome::Evicted { .. }),
                    "{outcome:?}"
                );
            }
        }
        assert_eq!(ft.len(), 100);
    }

    #[test]
    fn eviction_order_half_open_closing_datagram_established() {
        let mut ft = table(8);
        let mut now = 0;
        let mut at = || {
            now += 1;
            t(now)
        };
        // Oldest first, so that a pure LRU would pick the established ones.
        let est = [key(1, 6), key(2, 6)];
        for k in est {
            let _ = ft.insert(k, 0, FlowState::TcpEstablished, at(), 0);
        }
        let udp = [key(3, 17), key(4, 17)];
        for k in udp {
            let _ = ft.insert(k, 0, FlowState::Udp, at(), 0);
        }
        let other = key(5, 1);
        let _ = ft.insert(other, 0, FlowState::Other, at(), 0);
        let closing = [key(6, 6), key(7, 6)];
        for k in closing {
            let _ = ft.insert(k, 0, FlowState::TcpHalfOpen, at(), 0);
            let _ = ft.touch(&k, at(), RST, 0);
        }
        let half_open = key(8, 6);
        let _ = ft.insert(half_open, 0, FlowState::TcpHalfOpen, at(), 0);
        // Touch the older UDP flow so that the other UDP one is idle longest, then the ICMP one.
        let _ = ft.touch(&udp[0], at(), None, 0);
        assert_eq!(ft.len(), 8);

        let mut evicted = Vec::new();
        for i in 0..8 {
            match ft.insert(key(100 + i, 6), 1, FlowState::TcpEstablished, at(), 0) {
                InsertOutcome::Evicted { key, entry } => evicted.push((key, entry.state())),
                other => panic!("{other:?}"),
            }
        }
        use FlowState::*;
        assert_eq!(
            evicted,
            vec![
                (half_open, TcpHalfOpen),
                (closing[0], TcpClosing),
                (closing[1], TcpClosing),
                (udp[1], Udp),
                (other, Other),
                (udp[0], Udp),
                (est[0], TcpEstablished),
                (est[1], TcpEstablished),
            ]
        );
    }

    #[test]
    fn established_lru_respects_touches() {
        let mut ft = table(3);
        let ks = [key(1, 6), key(2, 6), key(3, 6)];
        for (i, k) in ks.iter().enumerate() {
            let _ = ft.insert(*k, 0, FlowState::TcpEstablished, t(i as u64), 0);
        }
        let _ = ft.touch(&ks[0], t(10), ACK, 0);
        let _ = ft.touch(&ks[1], t(11), ACK, 0);
        match ft.insert(key(4, 6), 0, FlowState::TcpEstablished, t(12), 0) {
            InsertOutcome::Evicted { key, .. } => assert_eq!(key, ks[2]),
            other => panic!("{other:?}"),
        }
        match ft.insert(key(5, 6), 0, FlowState::TcpEstablished, t(13), 0) {
            InsertOutcome::Evicted { key, .. } => assert_eq!(key, ks[0]),
            other => panic!("{other:?}"),
        }
    }

    /// A touched front record goes back in at its `last_seen`, which may be earlier than the
    /// record that would become the next minimum: it must still come out first (a clamp here once
    /// made eviction re-queue the same record for ever).
    #[test]
    fn requeue_below_the_next_minimum() {
        let mut ft = table(2);
        let (a, b) = (key(1, 6), key(2, 6));
        let _ = ft.insert(a, 0, FlowState::TcpEstablished, t(0), 0);
        let _ = ft.insert(b, 0, FlowState::TcpEstablished, t(100), 0);
        let _ = ft.touch(&a, t(50), ACK, 0);
        match ft.insert(key(3, 6), 0, FlowState::TcpEstablished, t(200), 0) {
            InsertOutcome::Evicted { key, .. } => assert_eq!(key, a),
            other => panic!("{other:?}"),
        }
        let timeout = ft.config().tcp_established_timeout.as_micros();
        assert_eq!(ft.next_expiry(), Some(t(100 + timeout + 1)));
    }

    /// One eviction re-queues at most `EVICTION_REQUEUE_BUDGET` touched flows, then takes the
    /// front as it is (second chance) instead of walking the whole queue.
    #[test]
    fn eviction_work_is_bounded() {
        let mut ft = table(200);
        for i in 0..200 {
            let _ = ft.insert(key(i, 6), 0, FlowState::TcpEstablished, t(u64::from(i)), 0);
        }
        for i in 0..200 {
            let _ = ft.touch(&key(i, 6), t(1_000 + u64::from(i)), ACK, 0);
        }
        let budget = EVICTION_REQUEUE_BUDGET as u32;
        let mut victims = Vec::new();
        for i in 0..14 {
            match ft.insert(key(1_000 + i, 6), 0, FlowState::TcpEstablished, t(2_000), 0) {
                InsertOutcome::Evicted { key, .. } => victims.push(key),
                other => panic!("{other:?}"),
            }
        }
        // Each of the first evictions re-queues the next `budget` touched flows and takes the one
        // after them; once every touched flow is back in order, eviction is exact LRU again.
        let mut want = vec![
            key(budget, 6),
            key(2 * budget + 1, 6),
            key(3 * budget + 2, 6),
        ];
        want.extend((0..11).map(|i| key(i, 6)));
        assert_eq!(victims, want);
    }

    #[test]
    fn syn_flood_never_evicts_established_flows() {
        const MAX: usize = 10_000;
        let mut ft = table(MAX);
        let mut now = 1_000_000u64;
        let established: Vec<FlowKey> = (0..1_000).map(|i| key(i, 6)).collect();
        for &k in &established {
            assert_eq!(
                ft.insert(k, 1, FlowState::TcpEstablished, t(now), 60),
                InsertOutcome::Inserted
            );
        }
        let mut evicted = 0;
        for i in 0..100_000u32 {
            now += 1;
            // Spoofed sources: a different address and port for each SYN.
            let spoofed = FlowKey::new(
                Ipv4Addr::from(0xc000_0000 | i.wrapping_mul(2_654_435_761)),
                Ipv4Addr::new(10, 99, 0, 1),
                (i % 50_000) as u16 + 10_000,
                80,
                6,
            );
            match ft.insert(spoofed, 2, FlowState::TcpHalfOpen, t(now), 60) {
                InsertOutcome::Evicted { entry, .. } => {
                    assert_eq!(entry.state(), FlowState::TcpHalfOpen);
                    evicted += 1;
                }
                InsertOutcome::Inserted => {}
                other => panic!("{other:?}"),
            }
            assert!(ft.len() <= MAX);
            if i % 100 == 0 {
                for &k in &established[(i as usize / 100) % 10 * 100..][..100] {
                    assert!(ft.touch(&k, t(now), ACK, 60).is_some());
                }
            }
        }
        assert_eq!(ft.len(), MAX);
        assert_eq!(evicted, 100_000 - (MAX - 1_000));
        for k in &established {
            assert_eq!(ft.get(k).unwrap().state(), FlowState::TcpEstablished);
        }
        assert!(
            ft.expiry_records() <= 2 * MAX + SWEEP_SLACK + 1,
            "{}",
            ft.expiry_records()
        );
    }

    #[test]
    fn replace_returns_the_old_entry_and_restarts_it() {
        let mut ft = table(4);
        let k = key(1, 17);
        let _ = ft.insert(k, 1, FlowState::Udp, t(0), 10);
        let _ = ft.touch(&k, t(5), None, 10);
        match ft.insert(k, 2, FlowState::Udp, t(6), 30) {
            InsertOutcome::Replaced(old) => {
                assert_eq!((old.next_hop(), old.packets(), old.bytes()), (1, 2, 20))
            }
            other => panic!("{other:?}"),
        }
        let e = ft.get(&k).unwrap();
        assert_eq!(
            (e.next_hop(), e.packets(), e.bytes(), e.created()),
            (2, 1, 30, t(6))
        );
        assert_eq!(ft.len(), 1);
        // Replacing into a full table evicts nobody.
        for i in 2..5 {
            let _ = ft.insert(key(i, 17), 1, FlowState::Udp, t(7), 0);
        }
        assert!(matches!(
            ft.insert(k, 3, FlowState::Udp, t(8), 0),
            InsertOutcome::Replaced(_)
        ));
        assert_eq!(ft.len(), 4);
    }

    #[test]
    fn stale_records_stay_bounded_under_churn() {
        let mut ft = table(1_000_000);
        let mut now = 0;
        let mut peak = 0;
        // Short connections: SYN, ACK, FIN, then removed by the caller; and re-pins of the same
        // key. Without the sweep the established queue would keep one stale record per flow for
        // ten minutes.
        for i in 0..200_000u32 {
            now += 1;
            let k = key(i % 5_000, 6);
            let _ = ft.insert(k, 1, FlowState::TcpHalfOpen, t(now), 0);
            let _ = ft.touch(&k, t(now), ACK, 0);
            let _ = ft.touch(&k, t(now), FIN_ACK, 0);
            if i % 3 == 0 {
                ft.remove(&k);
            }
            peak = peak.max(ft.expiry_records());
        }
        println!(
            "churn: {} flows, {} records (peak {peak})",
            ft.len(),
            ft.expiry_records()
        );
        assert!(peak <= 3 * ft.len() + 2 * SWEEP_SLACK, "peak {peak}");
    }

    #[test]
    fn a_clock_stepping_back_does_not_break_anything() {
        let mut ft = table(4);
        let _ = ft.insert(key(1, 6), 1, FlowState::TcpEstablished, t(1_000_000), 0);
        let _ = ft.insert(key(2, 6), 1, FlowState::TcpHalfOpen, t(500), 0);
        let _ = ft.touch(&key(1, 6), t(10), ACK, 0);
        assert_eq!(ft.get(&key(1, 6)).unwrap().last_seen(), t(1_000_000));
        assert_eq!(expire_keys(&mut ft, Instant::from_secs(7)), vec![key(2, 6)]);
        let _ = ft.insert(key(3, 17), 1, FlowState::Udp, t(0), 0);
        for i in 4..10 {
            let _ = ft.insert(key(i, 1), 1, FlowState::Other, t(3), 0);
        }
        assert!(ft.len() <= 4);
        assert!(ft.next_expiry().is_some());
        ft.clear();
        assert!(ft.is_empty());
        assert_eq!(ft.next_expiry(), None);
    }

    #[test]
    fn set_config_shrinks_and_changes_timeouts() {
        let mut ft = table(10);
        for i in 0..10 {
            let _ = ft.insert(key(i, 17), 1, FlowState::Udp, t(u64::from(i)), 0);
        }
        let mut evicted = Vec::new();
        let config = FlowTableConfig {
            max_flows: 4,
            udp_timeout: Duration::from_micros(100),
            ..FlowTableConfig::default()
        };
        ft.set_config(config, |k, _| evicted.push(k));
        assert_eq!(evicted, (0..6).map(|i| key(i, 17)).collect::<Vec<_>>());
        assert_eq!(ft.capacity(), 4);
        assert_eq!(ft.next_expiry(), Some(t(107)));
        assert_eq!(expire_keys(&mut ft, t(110)).len(), 4);
    }

    #[test]
    fn retain_and_iter() {
        let mut ft = table(10);
        for i in 0..10 {
            let _ = ft.insert(key(i, 6), i % 2, FlowState::TcpEstablished, t(0), 0);
        }
        ft.retain(|_, e| e.next_hop() == 0);
        assert_eq!(ft.len(), 5);
        assert!(ft.iter().all(|(_, e)| e.next_hop() == 0));
        assert_eq!(expire_keys(&mut ft, Instant::from_secs(601)).len(), 5);
        assert_eq!(ft.next_expiry(), None);
    }

    /// Fills tables with established flows and prints the memory per flow (map and queues),
    /// the figures quoted in the module doc.
    #[test]
    fn memory_per_flow() {
        for flows in [10_000u32, 100_000, 900_000, 1_048_576] {
            let mut ft = FlowTable::new(FlowTableConfig::default(), 7);
            for i in 0..flows {
                let k = FlowKey::new(Ipv4Addr::from(i), Ipv4Addr::new(10, 99, 0, 1), 40000, 80, 6);
                let _ = ft.insert(k, 1, FlowState::TcpEstablished, t(u64::from(i)), 0);
            }
            let total = ft.memory_bytes();
            println!(
                "memory: {flows} flows: {total} bytes = {:.1} bytes/flow ({} map capacity, {} queue records, queue capacity {})",
                total as f64 / f64::from(flows),
                ft.map.capacity(),
                ft.expiry_records(),
                ft.queues.iter().map(ExpiryQueue::capacity).sum::<usize>(),
            );
            assert!(total as f64 / f64::from(flows) < 200.0);
        }
    }

    // ---- property tests against a reference model with linear scans ----

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            key: u8,
            next_hop: u32,
            state: u8,
            bytes: u16,
        },
        Touch {
            key: u8,
            flags: Option<u8>,
            bytes: u16,
        },
        Remove {
            key: u8,
        },
        Expire,
        Advance {
            micros: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, 0u32..4, 0u8..5, any::<u16>())
                .prop_map(|(key, next_hop, state, bytes)| Op::Insert { key, next_hop, state, bytes }),
            4 => (0u8..24, proptest::option::of(any::<u8>()), any::<u16>())
                .prop_map(|(key, flags, bytes)| Op::Touch { key, flags, bytes }),
            1 => (0u8..24).prop_map(|key| Op::Remove { key }),
            2 => Just(Op::Expire),
            3 => (0u16..40).prop_map(|micros| Op::Advance { micros }),
        ]
    }

    fn model_key(i: u8) -> FlowKey {
        key(u32::from(i) * 0x0101, [17, 6, 6][usize::from(i % 3)])
    }

    /// The class rank of a state in the eviction order.
    fn class(state: FlowState) -> u8 {
        match state {
            FlowState::TcpHalfOpen => 0,
            FlowState::TcpClosing => 1,
            FlowState::Udp | FlowState::Other => 2,
            FlowState::TcpEstablished => 3,
        }
    }

    fn run_model(max_flows: usize, timeouts: [u64; 5], ops: Vec<Op>) -> Result<(), TestCaseError> {
        let config = FlowTableConfig {
            max_flows,
            tcp_half_open_timeout: Duration::from_micros(timeouts[0]),
            tcp_established_timeout: Duration::from_micros(timeouts[1]),
            tcp_closing_timeout: Duration::from_micros(timeouts[2]),
            udp_timeout: Duration::from_micros(timeouts[3]),
            other_timeout: Duration::from_micros(timeouts[4]),
        };
        let mut ft = FlowTable::new(config.clone(), 99);
        let mut model: BTreeMap<FlowKey, FlowEntry> = BTreeMap::new();
        let mut now = 1_000u64;
        for op in ops {
            match op {
                Op::Insert {
                    key,
                    next_hop,
                    state,
                    bytes,
                } => {
                    let k = model_key(key);
                    let state = FlowState::ALL[usize::from(state)];
                    let outcome = ft.insert(k, next_hop, state, t(now), usize::from(bytes));
                    let old = model.get(&k).copied();
                    match outcome {
                        InsertOutcome::Replaced(e) => prop_assert_eq!(Some(e), old),
                        InsertOutcome::Inserted => {
                            prop_assert!(old.is_none());
                            prop_assert!(model.len() < max_flows);
                        }
                        InsertOutcome::Evicted { key: victim, entry } => {
                            prop_assert!(old.is_none());
                            prop_assert_eq!(model.len(), max_flows);
                            prop_assert_eq!(model.get(&victim).copied(), Some(entry));
                            // The victim is in the best non-empty class and idle longest in it.
                            let best = model.values().map(|e| class(e.state)).min().unwrap();
                            prop_assert_eq!(class(entry.state), best);
                            let oldest = model
                                .values()
                                .filter(|e| class(e.state) == best)
                                .map(|e| e.last_seen)
                                .min()
                                .unwrap();
                            prop_assert_eq!(entry.last_seen, oldest);
                            model.remove(&victim);
                        }
                    }
                    let mut fresh = *ft.get(&k).unwrap();
                    prop_assert_eq!(fresh.created, t(now));
                    fresh.tag = 0;
                    model.insert(k, fresh);
                }
                Op::Touch { key, flags, bytes } => {
                    let k = model_key(key);
                    let flags = flags.map(TcpFlags);
                    let got = ft.touch(&k, t(now), flags, usize::from(bytes)).copied();
                    if let Some(e) = model.get_mut(&k) {
                        e.last_seen = e.last_seen.max(t(now));
                        e.packets += 1;
                        e.bytes += u64::from(bytes);
                        e.state = e.state.on_packet(flags);
                    }
                    prop_assert_eq!(got, model.get(&k).copied());
                }
                Op::Remove { key } => {
                    let k = model_key(key);
                    prop_assert_eq!(ft.remove(&k), model.remove(&k));
                }
                Op::Expire => {
                    let mut got = Vec::new();
                    let n = ft.expire(t(now), |k, e| got.push((k, e)));
                    prop_assert_eq!(n, got.len());
                    got.sort_by_key(|(k, _)| *k);
                    let want: Vec<(FlowKey, FlowEntry)> = model
                        .iter()
                        .filter(|(_, e)| {
                            now - e.last_seen.as_micros() > config.timeout(e.state).as_micros()
                        })
                        .map(|(k, e)| (*k, *e))
                        .collect();
                    for (k, _) in &want {
                        model.remove(k);
                    }
                    prop_assert_eq!(got, want);
                    if let Some(next) = ft.next_expiry() {
                        prop_assert!(next > t(now));
                    }
                }
                Op::Advance { micros } => now += u64::from(micros),
            }
            prop_assert!(ft.len() <= max_flows);
            prop_assert_eq!(ft.len(), model.len());
            // next_expiry is never later than the true earliest expiry.
            let earliest = model
                .values()
                .map(|e| e.last_seen.as_micros() + config.timeout(e.state).as_micros() + 1)
                .min();
            match (earliest, ft.next_expiry()) {
                (Some(earliest), Some(next)) => prop_assert!(next <= t(earliest)),
                (Some(_), None) => prop_assert!(false, "next_expiry None with flows held"),
                (None, _) => {}
            }
            for i in 0..24 {
                let k = model_key(i);
                prop_assert_eq!(ft.get(&k), model.get(&k));
            }
            prop_assert!(ft.expiry_records() <= 3 * ft.len() + SWEEP_SLACK + 8);
        }
        let mut listed: Vec<FlowKey> = ft.iter().map(|(k, _)| *k).collect();
        listed.sort();
        prop_assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_reference_model(
            max_flows in 1usize..12,
            timeouts in [1u64..60, 1u64..200, 1u64..60, 1u64..100, 1u64..80],
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            run_model(max_flows, timeouts, ops)?;
        }
    }

    /// The radix heap alone, against a binary heap: pops and re-queues of the minimum (to any
    /// later key, even one earlier than the next minimum) come out in order.
    #[test]
    fn expiry_queue_pops_in_order() {
        let mut q = ExpiryQueue::new();
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut clock = 0u64;
        let mut reference = std::collections::BinaryHeap::new();
        let k = key(0, 6);
        for _ in 0..100_000 {
            // The clock, like `now`, only moves forward, and never past the keys pushed.
            clock += next() % 1_000;
            match next() % 4 {
                0 => {
                    let got = q.pop().map(|r| r.at);
                    let want = reference.pop().map(|core::cmp::Reverse(x)| x);
                    assert_eq!(got, want);
                }
                1 => {
                    if let Some(front) = q.peek().map(|r| r.at) {
                        let at = front + next() % (clock - front + 1);
                        q.requeue_front(at, 1);
                        reference.pop();
                        reference.push(core::cmp::Reverse(at));
                    }
                }
                _ => {
                    q.push(Record::new(t(clock), &k, 0));
                    reference.push(core::cmp::Reverse(clock));
                }
            }
            assert_eq!(q.len, reference.len());
            assert_eq!(
                q.peek().map(|r| r.at),
                reference.peek().map(|core::cmp::Reverse(x)| *x)
            );
        }
    }
}
