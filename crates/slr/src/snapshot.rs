//! What the router's packet thread answers when asked: a consistent snapshot of the core's
//! state and counters, and rows of its flow table. Built on the packet thread from the core's
//! getters, then read by the control socket, the metrics endpoint, the health checkers and the
//! control thread, none of which touch the core.

use serde::Serialize;
use serde_json::{json, Value};
use slr_config::Overrides;
use slr_core::flow_table::{FlowKey, FlowState};
use slr_core::router::{DropReason, Router};
use slr_core::time::Instant;
use std::time::Duration;

/// One next hop in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct NextHopRow {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Weight in force (0 drains): the file's, or a runtime override's.
    pub weight: u32,
    /// A runtime override (`slr ctl R weight/drain`) applies to it.
    pub overridden: bool,
    /// Drained at run time (`slr ctl R drain`).
    pub drained: bool,
    /// Health.
    pub available: bool,
    /// Still in the configuration.
    pub configured: bool,
    /// Active flows.
    pub active_flows: u32,
    /// New flows given to it.
    pub selections: u64,
    /// Packets sent to it.
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
}

/// One virtual host in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHostRow {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Policy.
    pub policy: String,
    /// UDP mode.
    pub udp: String,
    /// Member next hops.
    pub next_hops: Vec<String>,
    /// Packets routed.
    pub packets: u64,
    /// Bytes routed.
    pub bytes: u64,
    /// Flows created.
    pub flows_created: u64,
}

/// One flow.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    /// Protocol name or number.
    pub protocol: String,
    /// Client address:port.
    pub client: String,
    /// Virtual host address:port.
    pub virtual_host: String,
    /// Next hop name.
    pub next_hop: String,
    /// State.
    pub state: String,
    /// Seconds since the flow began.
    pub age_secs: f64,
    /// Seconds since its last packet.
    pub idle_secs: f64,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A consistent view of the router.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Router name.
    pub name: String,
    /// Flows pinned now.
    pub flows_active: usize,
    /// Flow table bound.
    pub max_flows: usize,
    /// Heap memory the flow table holds (an estimate from its capacity).
    pub flow_table_bytes: usize,
    /// Router-wide counters.
    pub counters: Value,
    /// Drops by reason: the core's, and the XDP program's under the same name
    /// (`untrusted_tunnel`).
    pub drops: Vec<(String, u64)>,
    /// Next hops.
    pub next_hops: Vec<NextHopRow>,
    /// Virtual hosts.
    pub virtual_hosts: Vec<VirtualHostRow>,
    /// Packets the TUN device dropped before the core saw them (not IPv4, truncated).
    pub device_drops: u64,
    /// Tunnel packets the socket could not send.
    pub tunnel_send_drops: u64,
    /// CPU seconds used by the process.
    pub cpu_seconds: f64,
    /// Resident memory of the process.
    pub resident_bytes: u64,
    /// Runtime overrides in force (`slr ctl R overrides`).
    pub overrides: Overrides,
    /// Stopping gracefully: no new flows, established ones forwarded until the deadline.
    pub stopping: bool,
    /// The kernel fast path.
    pub fast_path: FastPathView,
    /// Seconds left of the drain period, while stopping.
    pub stop_deadline_secs: Option<f64>,
    /// `[bgp]`: BIRD and the announcements, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// `[cluster]`: flow mirroring, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorView>,
    /// `[cluster] whohas`: WHOHAS, if on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whohas: Option<WhohasView>,
}

/// What the packet thread knows besides the core, for a snapshot.
/// One BGP session as BIRD reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionStatus {
    /// The neighbour's address.
    pub neighbor: String,
    /// BIRD's protocol state (up, start, down, ...).
    pub state: String,
    /// The BGP state and last error (Established, Active, Connect ...).
    pub info: String,
    /// Whether the session is established.
    pub established: bool,
}

/// What `slr ctl R status` and the metrics show of the announcements.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BgpStatus {
    /// Whether BIRD runs and answers.
    pub bird_up: bool,
    /// Its pid.
    pub bird_pid: Option<u32>,
    /// Times BIRD died (or failed to start) and was started again.
    pub bird_restarts: u64,
    /// The last error (BIRD's exit, a refused configuration), if any.
    pub last_error: Option<String>,
    /// The subnets BIRD has been told to announce.
    pub announced: Vec<String>,
    /// Changes of the announced set loaded into BIRD.
    pub announcement_changes: u64,
    /// The sessions.
    pub sessions: Vec<SessionStatus>,
}

/// What `slr ctl` and the metrics show of flow mirroring (`[cluster]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MirrorView {
    /// Changes of this router's flows handed to the peers' senders.
    pub changes_offered: u64,
    /// Changes a sender's full queue dropped (its next full sync repairs them).
    pub changes_dropped_queue_full: u64,
    /// Flows peers pinned that the core took in.
    pub flows_taken_in: u64,
    /// Flows peers pinned that the core already held.
    pub flows_already_held: u64,
    /// Flows peers pinned that the core could not take (unknown next hop, ...).
    pub flows_not_taken: u64,
    /// Copies removed when their peer let the flow go.
    pub copies_released: u64,
    /// Flows this router carries that it told the peers of again (they carried packets since
    /// the last pass), so that the peers' copies do not idle out.
    pub refreshes_sent: u64,
    /// Copies kept alive here because their owner told of them again.
    pub copies_refreshed: u64,
    /// Releases of flows that were not (or no longer) unused copies here.
    pub releases_ignored: u64,
    /// Copies held now (flows taken in that carried no packet here yet).
    pub copies: usize,
    /// Batches accepted from peers.
    pub batches_received: u64,
    /// Changes accepted from peers.
    pub changes_received: u64,
    /// Mirroring lag of the last batch received, seconds.
    pub last_lag_seconds: f64,
    /// Largest lag seen, seconds.
    pub max_lag_seconds: f64,
    /// Refusals by reason (connections and batches from strangers, malformed flows).
    pub refused: Vec<(String, u64)>,
    /// The senders, one per peer.
    pub peers: Vec<MirrorPeerView>,
}

/// What `slr ctl` and the metrics show of WHOHAS (`[cluster] whohas`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhohasView {
    /// Flows the core asked the peers about (a mid-flow packet without state).
    pub asked: u64,
    /// Flows a peer held: pinned to the same next hop.
    pub resolved: u64,
    /// Flows nobody held: the policy picked.
    pub not_found: u64,
    /// Flows whose answer came too late: the policy picked.
    pub timeouts: u64,
    /// Unknown flows routed by the policy at once (too many questions pending).
    pub overflow: u64,
    /// Answers naming no next hop of this router: the policy picked.
    pub unusable: u64,
    /// Packets held while their flow was asked about.
    pub packets_held: u64,
    /// Flows being asked about now.
    pub pending: usize,
    /// Packets held now.
    pub held_now: usize,
    /// Questions dropped because the asker's queue was full.
    pub questions_dropped: u64,
    /// Questions from peers answered.
    pub questions_answered: u64,
    /// Flows peers asked about.
    pub flows_asked_here: u64,
    /// Of those, flows this router held.
    pub flows_held_here: u64,
    /// Mean time of this router's questions (asked to answered, every peer), seconds.
    pub ask_mean_seconds: f64,
    /// The longest, seconds.
    pub ask_max_seconds: f64,
    /// The peers asked.
    pub peers: Vec<WhohasPeerView>,
}

/// One peer as this router asks it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhohasPeerView {
    /// The peer's name.
    pub name: String,
    /// Whether the last question reached it.
    pub connected: bool,
    /// Questions it answered.
    pub questions: u64,
    /// Flows asked about in them.
    pub flows_asked: u64,
    /// Flows it held.
    pub flows_held: u64,
    /// Questions that failed.
    pub failures: u64,
    /// Questions not sent (unreachable a moment ago).
    pub skipped: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// One peer's sender.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MirrorPeerView {
    /// The peer's name.
    pub name: String,
    /// Whether it is connected.
    pub connected: bool,
    /// Batches it accepted.
    pub batches_sent: u64,
    /// Changes it accepted.
    pub changes_sent: u64,
    /// Changes dropped while it was unreachable.
    pub changes_dropped: u64,
    /// Full syncs sent.
    pub full_syncs: u64,
    /// Failed connections and calls.
    pub failures: u64,
    /// Bytes sent on the wire.
    pub bytes_sent: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// What the metrics show of the kernel fast path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FastPathView {
    /// Whether the XDP program forwards.
    pub enabled: bool,
    /// Packets and bytes by what the program did with them (`forwarded`, or why it passed).
    pub reasons: Vec<(&'static str, u64, u64)>,
    /// Flows the core offered that the map had no room for (they stay on the slow path).
    pub map_full: u64,
    /// Map updates that failed otherwise.
    pub errors: u64,
    /// Packets and inner bytes the program forwarded per next hop (the core's indices).
    #[serde(skip)]
    pub next_hops: Vec<(u64, u64)>,
    /// Packets and inner bytes the program forwarded per virtual host (the core's indices).
    #[serde(skip)]
    pub virtual_hosts: Vec<(u64, u64)>,
}

/// What the packet thread knows besides the core.
pub struct DaemonState<'a> {
    /// Router name.
    pub name: &'a str,
    /// Packets the capture device dropped.
    pub device_drops: u64,
    /// Tunnel packets the socket could not send.
    pub tunnel_send_drops: u64,
    /// Runtime overrides.
    pub overrides: &'a Overrides,
    /// Time left of a graceful stop's drain period.
    pub stop_deadline: Option<std::time::Duration>,
    /// The kernel fast path.
    pub fast_path: FastPathView,
    /// `[bgp]`: BIRD and the announcements, if configured.
    pub bgp: Option<BgpStatus>,
    /// `[cluster]`: flow mirroring, if configured.
    pub mirror: Option<MirrorView>,
    /// `[cluster] whohas`, if on.
    pub whohas: Option<WhohasView>,
}

/// A snapshot of the core, with what the packet thread keeps besides.
pub fn snapshot(r: &Router, d: &DaemonState) -> Snapshot {
    let (name, device_drops, tunnel_send_drops) = (d.name, d.device_drops, d.tunnel_send_drops);
    let c = r.counters();
    Snapshot {
        name: name.to_string(),
        flows_active: r.flow_count(),
        max_flows: r.config().flow_table.max_flows,
        flow_table_bytes: r.flow_table_bytes(),
        counters: json!({
            "packets_in": c.packets_in, "bytes_in": c.bytes_in,
            "packets_tunneled": c.packets_tunneled, "bytes_tunneled": c.bytes_tunneled,
            "flows_created": c.flows_created, "flows_expired": c.flows_expired,
            "flows_evicted": c.flows_evicted, "flows_rerouted": c.flows_rerouted,
            "flows_restored": c.flows_restored,
            "icmp_frag_needed_sent": c.icmp_frag_needed_sent, "icmp_rate_limited": c.icmp_rate_limited,
            "icmp_errors_routed": c.icmp_errors_routed, "mss_clamped": c.mss_clamped,
            "fragments_routed": c.fragments_routed, "fragments_held": c.fragments_held,
            "tunnels_terminated": c.tunnels_terminated, "drops_total": c.drops_total(),
            "shortcut_signals": c.shortcut_signals,
            "shortcut_signals_dropped": c.shortcut_signals_dropped,
            "shortcut_resignals": c.shortcut_resignals,
            "shortcuts_installed": c.shortcuts_installed,
            "shortcuts_relayed": c.shortcuts_relayed,
            "shortcuts_kept": c.shortcuts_kept,
            "shortcuts_refused_unknown_flow": c.shortcuts_refused[0],
            "shortcuts_refused_not_pinned": c.shortcuts_refused[1],
            "shortcuts_refused_bad_address": c.shortcuts_refused[2],
            "shortcut_packets": c.shortcut_packets,
            "shortcut_packets_held": c.shortcut_packets_held,
            "shortcut_hold_expired": c.shortcut_hold_expired,
            "shortcuts_flushed": c.shortcuts_flushed,
            "shortcut_held_now": r.shortcut_held(),
        }),
        drops: DropReason::ALL
            .iter()
            .map(|&reason| {
                let name = reason.as_str();
                // The one reason the XDP program drops for itself; it passes everything else.
                let kernel = if name == slr_xdp::Reason::UntrustedTunnel.as_str() {
                    d.fast_path
                        .reasons
                        .iter()
                        .find(|(r, _, _)| *r == name)
                        .map_or(0, |(_, p, _)| *p)
                } else {
                    0
                };
                (name.to_string(), c.drops(reason) + kernel)
            })
            .collect(),
        next_hops: r
            .next_hops()
            .iter()
            .enumerate()
            .map(|(i, n)| (n, kernel(&d.fast_path.next_hops, i)))
            .map(|(n, (kp, kb))| NextHopRow {
                name: n.name.clone(),
                address: n.address.to_string(),
                weight: n.weight,
                overridden: d.overrides.get(&n.name).is_some() && n.configured,
                drained: d.overrides.get(&n.name).is_some_and(|o| o.drained) && n.configured,
                available: n.available,
                configured: n.configured,
                active_flows: n.active_flows,
                selections: n.selections,
                // The core's and the XDP program's; the program counts inner bytes, the core
                // the tunnelled packet's (the 20-byte outer header included).
                packets: n.packets + kp,
                bytes: n.bytes + kb + 20 * kp,
            })
            .collect(),
        virtual_hosts: r
            .virtual_hosts()
            .iter()
            .enumerate()
            .map(|(i, v)| (v, kernel(&d.fast_path.virtual_hosts, i)))
            .map(|(v, (kp, kb))| VirtualHostRow {
                name: v.config.name.clone(),
                subnet: v.config.subnet.to_string(),
                policy: v.config.policy.as_str().to_string(),
                udp: v.config.udp.as_str().to_string(),
                next_hops: v
                    .members
                    .iter()
                    .map(|&i| r.next_hops()[i].name.clone())
                    .collect(),
                packets: v.packets + kp,
                bytes: v.bytes + kb,
                flows_created: v.flows_created,
            })
            .collect(),
        device_drops,
        tunnel_send_drops,
        cpu_seconds: crate::metrics::process_cpu_seconds(),
        resident_bytes: crate::metrics::process_resident_bytes(),
        overrides: d.overrides.clone(),
        stopping: r.is_stopping(),
        fast_path: d.fast_path.clone(),
        bgp: d.bgp.clone(),
        mirror: d.mirror.clone(),
        whohas: d.whohas.clone(),
        stop_deadline_secs: d.stop_deadline.map(|t| t.as_secs_f64()),
    }
}

/// The fast path's count at `index`, (0, 0) when it keeps none.
fn kernel(counts: &[(u64, u64)], index: usize) -> (u64, u64) {
    counts.get(index).copied().unwrap_or((0, 0))
}

/// Most flows copied per request: a page is a plain copy (about 64 bytes a flow), so that
/// even `slr ctl R flows --all` of a million flows holds the packet thread a millisecond at a
/// time.
pub const MAX_FLOW_PAGE: usize = 65_536;

/// One flow as the packet thread copies it: plain numbers, formatted on another thread.
#[derive(Debug, Clone, Copy)]
pub struct RawFlow {
    key: FlowKey,
    next_hop: u32,
    state: FlowState,
    age: Duration,
    idle: Duration,
    packets: u64,
    bytes: u64,
}

/// Flows of the table from `offset` on, copied by the packet thread.
///
/// A live walk: pages are taken between batches of packets, and a flow table that grows in
/// between may rehash, so a walk of a table that changes may miss or repeat flows that come
/// and go; a flow present for the whole walk is listed.
#[derive(Debug, Clone)]
pub struct FlowPage {
    /// Flows in the table when the page was taken.
    pub total: usize,
    flows: Vec<RawFlow>,
    next_hops: Vec<String>,
}

/// Copies up to `limit` flows (at most [`MAX_FLOW_PAGE`]) from `offset` on: no formatting, no
/// allocation per flow, on the packet thread.
pub fn flow_page(r: &Router, now: Instant, offset: usize, limit: usize) -> FlowPage {
    let flows = r
        .flows()
        .skip(offset)
        .take(limit.min(MAX_FLOW_PAGE))
        .map(|(k, e)| RawFlow {
            key: *k,
            next_hop: e.next_hop(),
            state: e.state(),
            age: (now - e.created()).into(),
            idle: (now - e.last_seen()).into(),
            packets: e.packets(),
            bytes: e.bytes(),
        })
        .collect();
    FlowPage {
        total: r.flow_count(),
        flows,
        next_hops: r.next_hops().iter().map(|n| n.name.clone()).collect(),
    }
}

impl FlowPage {
    /// How many flows the page holds.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// The page as `slr ctl flows` shows it (formatted on the caller's thread).
    pub fn rows(&self) -> Vec<FlowRow> {
        self.flows
            .iter()
            .map(|f| {
                let k = &f.key;
                FlowRow {
                    protocol: match k.protocol {
                        6 => "tcp".into(),
                        17 => "udp".into(),
                        1 => "icmp".into(),
                        p => p.to_string(),
                    },
                    client: format!("{}:{}", k.src_addr, k.src_port),
                    virtual_host: format!("{}:{}", k.dst_addr, k.dst_port),
                    next_hop: self
                        .next_hops
                        .get(f.next_hop as usize)
                        .cloned()
                        .unwrap_or_default(),
                    state: state_name(f.state).into(),
                    age_secs: f.age.as_secs_f64(),
                    idle_secs: f.idle.as_secs_f64(),
                    packets: f.packets,
                    bytes: f.bytes,
                }
            })
            .collect()
    }
}

/// Whether the router still has traffic to forward: a TCP connection not yet closing, or a
/// UDP or other flow with a packet in the last second. A stopping router exits early when
/// none is left.
pub fn has_live_flows(r: &Router, now: Instant) -> bool {
    r.flows().any(|(_, e)| match e.state() {
        FlowState::TcpHalfOpen | FlowState::TcpEstablished => true,
        FlowState::TcpClosing => false,
        FlowState::Udp | FlowState::Other => (now - e.last_seen()) < SECOND,
    })
}

const SECOND: slr_core::time::Duration = slr_core::time::Duration::from_secs(1);

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::TcpHalfOpen => "syn",
        FlowState::TcpEstablished => "established",
        FlowState::TcpClosing => "closing",
        FlowState::Udp => "udp",
        FlowState::Other => "other",
    }
}
