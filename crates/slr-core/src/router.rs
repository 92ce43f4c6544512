//! The router: one state machine for every level of the hierarchy (MISSION F2-F5, F8, F9).
//!
//! A [`Router`] owns the virtual hosts it serves, the next hops it may choose from (host servers
//! at the site level, lower routers above it), the flow table and the tunnel. It is driven by:
//!
//! - [`Router::handle_packet`]: a packet addressed to a virtual host, captured by whatever device
//!   the driver uses (TUN, AF_XDP, a simulator). The packet is routed *in place*: on
//!   [`Action::Tunnel`] the buffer now holds the encapsulated packet, ready to send.
//! - [`Router::handle_tunnelled_packet`]: an IP-in-IP packet from a parent router; the tunnel is
//!   terminated (only from trusted parents), the inner TTL decremented and the inner packet routed.
//! - [`Router::handle_timeout`]: time passed; expires flows and fragment state.
//! - [`Router::handle_control`]: configuration, health and pinned flows from the control plane.
//! - [`Router::answer_whohas`]: what the neighbours said of a flow the core asked about
//!   ([`Router::poll_whohas`], when [`RouterConfig::whohas`] is set; see [`crate::whohas`]).
//!
//! and hands back, in this order after every `handle_*` call:
//!
//! 1. [`Router::poll_transmit`]: extra packets the core made or released (ICMP errors, buffered
//!    fragments whose first fragment arrived), each ready for the tunnel or the local stack;
//! 2. [`Router::poll_event`]: things worth logging (a next hop went down, a reload applied);
//! 3. [`Router::poll_timeout`]: when to call `handle_timeout` next.
//!
//! Getters ([`Router::flows`], [`Router::next_hops`], [`Router::virtual_hosts`],
//! [`Router::counters`]) serve inspection (`slr ctl`) and metrics.
//!
//! The per-packet path reads only prepared tables (selectors, the flow table); no policy is
//! interpreted per packet.

use crate::flow_table::{
    FlowEntry, FlowKey, FlowMark, FlowState, FlowTable, FlowTableConfig, InsertOutcome,
};
use crate::hash;
use crate::route_table::{CompiledTable, RouteTable, RouteTableError};
use crate::select::{Member, Policy, Selector};
use crate::shortcut::{
    AwaitTable, ShortcutAccept, ShortcutConfig, ShortcutRefusal, ShortcutSignal,
};
use crate::time::{Duration, Instant};
use crate::tunnel::{IpIpTunnel, Tunnel};
use crate::whohas::{HoldRefusal, Pending, PendingTable, WhohasAnswer, WhohasConfig, WhohasReply};
use core::net::Ipv4Addr;
use slr_wire::icmp::{self, IcmpPacket, IcmpRepr};
use slr_wire::ipv4::{self, Ipv4Cidr, Ipv4Packet, Protocol};
use slr_wire::{ipip, PacketBuf, TcpFlags, TcpPacket, UdpPacket};
use std::collections::{HashMap, VecDeque};

/// How UDP traffic to a virtual host is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// A flow entry pins the 5-tuple to a next hop, like TCP.
    Pin,
    /// Every datagram is routed by the policy on its own (the patent's connectionless case).
    PerDatagram,
}

impl UdpMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpMode::Pin => "pin",
            UdpMode::PerDatagram => "per_datagram",
        }
    }
}

impl core::str::FromStr for UdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pin" => Ok(UdpMode::Pin),
            "per_datagram" => Ok(UdpMode::PerDatagram),
            _ => Err(format!(
                "unknown udp mode {s:?} (expected pin or per_datagram)"
            )),
        }
    }
}

/// A virtual host (a VIP or a whole virtual subnet) the router serves.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHostConfig {
    /// Name, for inspection and metrics.
    pub name: String,
    /// The virtual subnet (every address and port in it).
    pub subnet: Ipv4Cidr,
    /// How new flows pick a next hop.
    pub policy: Policy,
    /// How UDP is routed.
    pub udp: UdpMode,
    /// Names of the next hops that serve it; empty means all of them.
    pub next_hops: Vec<String>,
    /// Request-sensitive steering (F14): the first rule a new flow matches restricts it to the
    /// rule's next hops (chosen among them by the virtual host's policy); flows matching no
    /// rule use every next hop of the virtual host.
    pub rules: Vec<SteeringRule>,
}

/// A steering rule: new flows matching every condition go only to `next_hops`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SteeringRule {
    /// Destination port ranges (inclusive); empty matches every port.
    pub dst_ports: Vec<(u16, u16)>,
    /// Source (client) prefixes; empty matches every source.
    pub src_prefixes: Vec<Ipv4Cidr>,
    /// Source port ranges (inclusive); empty matches every port.
    pub src_ports: Vec<(u16, u16)>,
    /// Next hops the matching flows may go to (at least one).
    pub next_hops: Vec<String>,
}

impl SteeringRule {
    /// Whether a flow matches.
    pub fn matches(&self, key: &FlowKey) -> bool {
        let port_in = |ranges: &[(u16, u16)], p: u16| {
            ranges.is_empty() || ranges.iter().any(|&(a, b)| a <= p && p <= b)
        };
        port_in(&self.dst_ports, key.dst_port)
            && port_in(&self.src_ports, key.src_port)
            && (self.src_prefixes.is_empty()
                || self.src_prefixes.iter().any(|n| n.contains(key.src_addr)))
    }
}

#[derive(Debug)]
struct RuleState {
    rule: SteeringRule,
    members: Vec<usize>,
    selector: Selector,
}

/// A next hop: a host server (site level) or a lower-level router.
#[derive(Debug, Clone, PartialEq)]
pub struct NextHopConfig {
    /// Stable name; Maglev tables are built from names, so routers that agree on names agree on
    /// tables.
    pub name: String,
    /// Tunnel endpoint address.
    pub address: Ipv4Addr,
    /// Relative weight; 0 drains (no new flows, existing flows continue).
    pub weight: u32,
}

/// Everything the core needs to route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Outer source address of tunnels this router starts.
    pub tunnel_source: Ipv4Addr,
    /// MTU of the path to next hops: a packet plus the tunnel header must fit.
    pub tunnel_mtu: u16,
    /// Clamp the MSS option of TCP SYNs so that segments fit the tunnel (None: off).
    pub mss_clamp: Option<u16>,
    /// Seed of the flow hash used for selection (Maglev); routers that must agree share it.
    pub hash_seed: u64,
    /// Secret seed of the flow table's hash (against collision attacks); per process.
    pub flow_table_seed: u64,
    /// Flow table bound and timeouts.
    pub flow_table: FlowTableConfig,
    /// Parents whose tunnels this router terminates (empty: it takes only plain packets).
    pub trusted_parents: Vec<Ipv4Cidr>,
    /// ICMP errors this router may generate per second (token bucket, burst of the same size).
    pub icmp_rate_limit: u32,
    /// Virtual hosts.
    pub virtual_hosts: Vec<VirtualHostConfig>,
    /// Next hops.
    pub next_hops: Vec<NextHopConfig>,
    /// Ask neighbours who holds a mid-flow packet's flow before the policy picks (F17c);
    /// `None`: the policy picks at once.
    pub whohas: Option<WhohasConfig>,
    /// The shortcut (F10): signals for flows from a parent, and the ingress's wait for them;
    /// `None`: neither.
    pub shortcut: Option<ShortcutConfig>,
}

impl RouterConfig {
    /// A configuration with defaults for everything but the tunnel source.
    pub fn new(tunnel_source: Ipv4Addr) -> Self {
        RouterConfig {
            tunnel_source,
            tunnel_mtu: 1500,
            mss_clamp: None,
            hash_seed: 0,
            flow_table_seed: 0x5eed,
            flow_table: FlowTableConfig::default(),
            trusted_parents: Vec::new(),
            icmp_rate_limit: 1000,
            virtual_hosts: Vec::new(),
            next_hops: Vec::new(),
            whohas: None,
            shortcut: None,
        }
    }
}

/// A configuration the core cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A virtual host names a next hop that is not configured.
    #[error("virtual host {virtual_host:?} names next hop {next_hop:?}, which is not configured")]
    UnknownNextHop {
        /// The virtual host.
        virtual_host: String,
        /// The missing name.
        next_hop: String,
    },
    /// Two next hops share a name.
    #[error("next hop name {0:?} is used twice")]
    DuplicateNextHop(String),
    /// Two virtual hosts overlap.
    #[error("virtual hosts {0:?} and {1:?} overlap")]
    OverlappingVirtualHosts(String, String),
    /// A reconfiguration changes the tunnel source of a running router.
    #[error("tunnel_source cannot change from {running} to {new} without a restart")]
    TunnelSourceChanged {
        /// The source in use.
        running: Ipv4Addr,
        /// The source asked for.
        new: Ipv4Addr,
    },
    /// The tunnel MTU leaves no room for a packet.
    #[error("tunnel_mtu {0} is too small (minimum 576)")]
    TunnelMtu(u16),
    /// The selector could not be built (e.g. a Maglev table).
    #[error("virtual host {virtual_host:?}: {reason}")]
    Selector {
        /// The virtual host.
        virtual_host: String,
        /// What went wrong.
        reason: String,
    },
}

/// A control input.
#[derive(Debug, Clone)]
pub enum Control {
    /// Apply a new configuration. Only new flows are steered by it (F9): established flows keep
    /// their next hop, even one that is no longer configured, until they end.
    Reconfigure(Box<RouterConfig>),
    /// Health of a next hop changed: an unavailable next hop gets no new flows.
    SetAvailable {
        /// Next hop name.
        next_hop: String,
        /// Whether it may take new flows.
        available: bool,
    },
    /// Pin a flow to a named next hop before its first packet (health probes through the
    /// tunnel use this to reach one chosen host through the VIP).
    PinFlow {
        /// The flow.
        key: FlowKey,
        /// Next hop name.
        next_hop: String,
    },
    /// Forget a pinned flow.
    UnpinFlow {
        /// The flow.
        key: FlowKey,
    },
    /// Install a route table for virtual hosts under [`Policy::Cost`] (built on the control
    /// path from the children's reports). Replaces the previous table; steers only new flows.
    InstallRouteTable(Box<RouteTable>),
    /// A stopping router takes no new flows (their packets are dropped as
    /// [`DropReason::Stopping`]) while it keeps forwarding the flows it has: a graceful stop.
    /// `false` takes new flows again.
    SetStopping(bool),
}

/// A control input the core refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No next hop has that name.
    #[error("no next hop named {0:?}")]
    UnknownNextHop(String),
    /// The route table is inconsistent.
    #[error(transparent)]
    RouteTable(#[from] RouteTableError),
}

/// What the driver does with a packet after [`Router::handle_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the buffer (now encapsulated) into the tunnel towards `next_hop`.
    Tunnel {
        /// The tunnel endpoint.
        next_hop: Ipv4Addr,
    },
    /// The core kept the packet (a fragment waiting for its first fragment); the buffer was
    /// replaced by an empty one.
    Held,
    /// Drop the packet; it was counted under the reason.
    Drop(DropReason),
}

/// Where an extra packet from [`Router::poll_transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Into the tunnel towards this endpoint (the buffer holds the outer header).
    Tunnel(Ipv4Addr),
    /// Into the local stack, which routes it (ICMP errors to clients).
    Local,
}

/// A packet the core produced.
#[derive(Debug)]
pub struct Transmit {
    /// Where it goes.
    pub destination: Destination,
    /// The packet.
    pub buf: PacketBuf,
}

/// A change a fast path that caches the flow table must follow (see [`Router::set_flow_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowChange {
    /// A flow whose later packets may bypass the core: TCP established or UDP pinned, seen at
    /// the core (its first packet after the handshake, or a packet the fast path missed).
    /// Installing it again is harmless.
    Offload {
        /// The flow.
        key: FlowKey,
        /// Its next hop (index of [`Router::next_hops`]).
        next_hop: u32,
        /// Its virtual host (index of [`Router::virtual_hosts`]).
        virtual_host: u32,
        /// Where its packets are tunnelled instead of the next hop's address (F10), if the
        /// flow has a shortcut.
        shortcut: Option<Ipv4Addr>,
    },
    /// A flow the core let go of (expired, evicted, closing, re-routed, unpinned): the fast path
    /// must stop forwarding it, so that its next packet reaches the core.
    Withdraw {
        /// The flow.
        key: FlowKey,
    },
}

/// Why [`Router::restore_flow`] did not take a flow back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreRefusal {
    /// Neither TCP nor UDP.
    Protocol,
    /// No virtual host holds its destination (any more).
    NoVirtualHost,
    /// UDP of a virtual host that routes every datagram afresh.
    PerDatagram,
    /// Its next hop is not configured (any more).
    NoNextHop,
    /// Idle longer than its state's timeout.
    Expired,
    /// The table already holds it.
    Present,
}

impl RestoreRefusal {
    /// Label.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreRefusal::Protocol => "protocol",
            RestoreRefusal::NoVirtualHost => "no_virtual_host",
            RestoreRefusal::PerDatagram => "per_datagram",
            RestoreRefusal::NoNextHop => "no_next_hop",
            RestoreRefusal::Expired => "expired",
            RestoreRefusal::Present => "present",
        }
    }
}

/// Something worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A next hop's availability changed.
    NextHopAvailability {
        /// Name.
        next_hop: String,
        /// New state.
        available: bool,
    },
    /// A configuration was applied.
    Reconfigured {
        /// Count of configurations applied so far, this one included.
        generation: u64,
    },
    /// The flow table is full and entries are being evicted (once per minute at most).
    FlowTableFull,
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a packet was dropped. Every drop is counted under one of these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }
        impl DropReason {
            /// All reasons, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Metric label.
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated", "Shorter than its headers claim.";
    NotIpv4 => "not_ipv4", "IP version is not 4.";
    BadHeaderLen => "bad_header_len", "IPv4 header length below 20 bytes or beyond the packet.";
    BadTotalLen => "bad_total_len", "IPv4 total length shorter than the header.";
    BadChecksum => "bad_checksum", "IPv4 header checksum does not verify.";
    TtlExpired => "ttl_expired", "TTL is (or would become) 0.";
    SourceRoute => "source_route", "Carries a source-route option (dropped, as Linux does).";
    NoVirtualHost => "no_virtual_host", "Destination is not in a virtual subnet of this router.";
    BadTransportHeader => "bad_transport_header", "TCP or UDP header malformed or truncated.";
    NestedTunnel => "nested_tunnel", "IP-in-IP inside a packet for a virtual host.";
    UnsupportedIcmp => "unsupported_icmp", "ICMP type this router does not route.";
    IcmpMalformed => "icmp_malformed", "ICMP error too short or quoting a malformed packet.";
    IcmpNoFlow => "icmp_no_flow", "ICMP error about a flow this router does not know.";
    NoNextHop => "no_next_hop", "No next hop is available for the virtual host.";
    NoRoute => "no_route", "Cost policy: the route table has no entry for the destination.";
    FragmentOrphan => "fragment_orphan", "Non-first fragment whose first fragment never came.";
    FragmentOverflow => "fragment_overflow", "Too many fragments waiting for their first fragment.";
    TooBig => "too_big", "Does not fit the tunnel with DF set (ICMP fragmentation-needed sent).";
    NoHeadroom => "no_headroom", "Buffer had no room for the outer header.";
    UntrustedTunnel => "untrusted_tunnel", "Tunnel from a source that is not a trusted parent.";
    MalformedTunnel => "malformed_tunnel", "Tunnel packet whose outer or inner header is malformed.";
    Stopping => "stopping", "A new flow at a stopping router (graceful stop: only established flows go on).";
    WhohasQueueFull => "whohas_queue_full", "Mid-flow packet of a flow being asked about (WHOHAS) beyond the bound of held packets.";
    HeldFlowGone => "held_flow_gone", "Packet held for its flow (a shortcut's wait, a WHOHAS question) whose flow left the table (evicted, unpinned) before the packet could go.";
}

impl From<slr_wire::Error> for DropReason {
    fn from(e: slr_wire::Error) -> Self {
        use slr_wire::Error as E;
        match e {
            E::Truncated => DropReason::Truncated,
            E::NotIpv4 => DropReason::NotIpv4,
            E::BadHeaderLen => DropReason::BadHeaderLen,
            E::BadTotalLen => DropReason::BadTotalLen,
            E::BadChecksum => DropReason::BadChecksum,
            E::BadTransportLen => DropReason::BadTransportHeader,
            E::NoHeadroom => DropReason::NoHeadroom,
        }
    }
}

/// Router-wide counters.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets handed to the router.
    pub packets_in: u64,
    /// Bytes handed to the router.
    pub bytes_in: u64,
    /// Packets sent into tunnels.
    pub packets_tunneled: u64,
    /// Bytes sent into tunnels (outer headers included).
    pub bytes_tunneled: u64,
    /// Drops, indexed like [`DropReason::ALL`].
    pub drops: Vec<u64>,
    /// Flows created.
    pub flows_created: u64,
    /// Flows expired by idle timeout.
    pub flows_expired: u64,
    /// Flows evicted because the table was full.
    pub flows_evicted: u64,
    /// Flows re-routed because a new SYN reused the 5-tuple of a closed flow or one whose next
    /// hop is gone.
    pub flows_rerouted: u64,
    /// Flows taken back from a fast path's map at start ([`Router::restore_flow`]).
    pub flows_restored: u64,
    /// ICMP fragmentation-needed errors sent.
    pub icmp_frag_needed_sent: u64,
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: u64,
    /// ICMP errors about host replies routed to the owning next hop.
    pub icmp_errors_routed: u64,
    /// SYNs whose MSS was clamped.
    pub mss_clamped: u64,
    /// Fragments routed after their first fragment.
    pub fragments_routed: u64,
    /// Fragments held until their first fragment arrived.
    pub fragments_held: u64,
    /// Tunnels from parents terminated.
    pub tunnels_terminated: u64,
    /// Flows asked about (WHOHAS: a mid-flow packet without state).
    pub whohas_asked: u64,
    /// Flows a neighbour said it holds, pinned to the same next hop.
    pub whohas_resolved: u64,
    /// Flows nobody held: the policy picked.
    pub whohas_not_found: u64,
    /// Flows whose answer did not come in time: the policy picked.
    pub whohas_timeouts: u64,
    /// Mid-flow packets of unknown flows routed by the policy at once because too many flows
    /// were being asked about (a storm).
    pub whohas_overflow: u64,
    /// Answers naming a holder and next hop this router has no next hop for: the policy picked.
    pub whohas_unusable: u64,
    /// Packets held while their flow was asked about.
    pub whohas_packets_held: u64,
    /// Shortcut signals emitted for new flows from a parent (F10).
    pub shortcut_signals: u64,
    /// Signals dropped because the driver did not take them (queue full).
    pub shortcut_signals_dropped: u64,
    /// Flows from a parent signalled again because their packets still came this way (the
    /// first signal lost, or the ingress lost its entry): at their 16th, 32nd, 64th, ...
    /// packet here.
    pub shortcut_resignals: u64,
    /// Children's signals installed (this router is the flow's ingress).
    pub shortcuts_installed: u64,
    /// Children's signals to pass up (the flow came from this router's parent).
    pub shortcuts_relayed: u64,
    /// Children's signals for this router's own health probes, which keep their path through
    /// the child they test.
    pub shortcuts_kept: u64,
    /// Children's signals refused, by reason ([`ShortcutRefusal`]: unknown flow, not pinned to
    /// that child, bad address).
    pub shortcuts_refused: [u64; 3],
    /// Packets tunnelled straight to a host by a shortcut.
    pub shortcut_packets: u64,
    /// Packets held at the ingress while their flow's shortcut was awaited.
    pub shortcut_packets_held: u64,
    /// Flows whose shortcut did not come in time (their held packets went down the hierarchy).
    pub shortcut_hold_expired: u64,
    /// Shortcuts cleared by [`Router::flush_shortcuts`].
    pub shortcuts_flushed: u64,
}

impl Counters {
    /// Count of drops for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
    /// All drops.
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// A next hop as the router sees it.
#[derive(Debug, Clone)]
pub struct NextHopState {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: Ipv4Addr,
    /// Weight (0: draining).
    pub weight: u32,
    /// Health: whether it may take new flows.
    pub available: bool,
    /// Whether the current configuration still has it (a removed one only serves its old flows).
    pub configured: bool,
    /// Flows pinned to it now.
    pub active_flows: u32,
    /// New flows given to it.
    pub selections: u64,
    /// Packets sent to it.
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Shortcut signals accepted from it (a child that signals: the ingress holds the packets
    /// after a SYN for a moment, waiting for the signal).
    pub shortcut_signals: u64,
}

impl NextHopState {
    /// Whether new flows may go here.
    pub fn eligible(&self) -> bool {
        self.available && self.configured && self.weight > 0
    }
}

/// A virtual host as the router sees it.
#[derive(Debug)]
pub struct VirtualHostState {
    /// Its configuration.
    pub config: VirtualHostConfig,
    /// Indices into [`Router::next_hops`] of its members.
    pub members: Vec<usize>,
    /// Packets routed for it.
    pub packets: u64,
    /// Bytes routed for it.
    pub bytes: u64,
    /// Flows created for it.
    pub flows_created: u64,
    selector: Selector,
    rules: Vec<RuleState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

/// The IPv4 header fields the per-packet steps use, read once by [`PacketMeta::parse`] when the
/// header has been validated and handed down by value: no step reads the header again, and none
/// takes its fields as a row of loose arguments.
///
/// Only the IPv4 header is here. Ports and TCP flags are read where the packet's kind says
/// where they are ([`Router::classify`]: TCP, UDP, first fragments; [`Router::route_icmp`]: the
/// echo identifier or the quoted flow) and go straight into a [`FlowKey`].
#[derive(Debug, Clone, Copy)]
struct PacketMeta {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: Protocol,
    /// Where the transport header starts (options included).
    header_len: usize,
    /// Where the packet ends: link-layer padding after it is not part of it.
    total_len: usize,
    /// Too big for the tunnel with DF set: fragmentation-needed goes back, nothing is fragmented.
    dont_frag: bool,
    /// More fragments or an offset: a fragment ([`PacketMeta::fragment`] says which). Kept as
    /// the header has it, like `frag_offset`: a whole packet then pays one test, where working
    /// out the [`Fragment`] up front cost every packet several instructions.
    is_fragment: bool,
    /// Offset of a fragment in bytes (0 in the first one).
    frag_offset: u16,
    /// Identification: which datagram a fragment belongs to.
    ident: u16,
}

/// Where a packet stands in IPv4 fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// A whole datagram.
    Whole,
    /// Offset 0 with more fragments to come: it carries the transport header, so it is
    /// classified and its choice remembered for the rest.
    First,
    /// Offset above 0: no transport header, it follows its first fragment.
    Later,
}

impl PacketMeta {
    /// Validates the IPv4 header of `packet` (lengths, checksum, TTL, no source route) and reads
    /// it. With `decrement_ttl` (the packet came out of a tunnel and this router is a hop) a TTL
    /// of 1 has expired too.
    // `#[inline]`: the router is generic, so the per-packet path is compiled in the driver's
    // crate; without it this step (inline in that path before it had a name) would be a call
    // across crates on every packet.
    #[inline]
    fn parse(packet: &[u8], decrement_ttl: bool) -> Result<Self, DropReason> {
        let ip = Ipv4Packet::new_checked(packet)?;
        if !ip.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        if ip.ttl() == 0 || (decrement_ttl && ip.ttl() == 1) {
            return Err(DropReason::TtlExpired);
        }
        let header_len = ip.header_len() as usize;
        if header_len > ipv4::HEADER_LEN && has_source_route(&ip.header()[ipv4::HEADER_LEN..]) {
            return Err(DropReason::SourceRoute);
        }
        Ok(PacketMeta {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol: ip.protocol(),
            header_len,
            total_len: ip.total_len() as usize,
            dont_frag: ip.dont_frag(),
            is_fragment: ip.is_fragment(),
            frag_offset: ip.frag_offset(),
            ident: ip.ident(),
        })
    }

    /// Where the packet stands in fragmentation.
    #[inline]
    fn fragment(&self) -> Fragment {
        match (self.is_fragment, self.frag_offset) {
            (false, _) => Fragment::Whole,
            (true, 0) => Fragment::First,
            (true, _) => Fragment::Later,
        }
    }

    /// The datagram a fragment belongs to.
    #[inline]
    fn frag_key(&self) -> FragKey {
        FragKey {
            src: self.src,
            dst: self.dst,
            protocol: self.protocol.into(),
            ident: self.ident,
        }
    }

    /// Whether a SYN's MSS option may be clamped: only in a whole TCP segment, as the TCP
    /// checksum covers the whole segment, which a fragment does not hold.
    #[inline]
    fn may_clamp_mss(&self) -> bool {
        self.protocol == Protocol::Tcp && !self.is_fragment
    }

    /// Whether the packet (`bytes`, this header's) is an ICMP error message.
    fn is_icmp_error(&self, bytes: &[u8]) -> bool {
        self.protocol == Protocol::Icmp
            && bytes
                .get(self.header_len..)
                .and_then(|m| IcmpPacket::new_checked(m).ok())
                .is_some_and(|m| m.is_error())
    }
}

/// How long fragment state lives (first fragment seen, or later fragments waiting for it).
const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams whose fragments are tracked at once.
const MAX_FRAGMENT_FLOWS: usize = 4096;
/// Most non-first fragments held while their first fragment is missing.
const MAX_HELD_FRAGMENTS: usize = 256;
/// Under the shortcut, a flow from the parent whose packets keep coming to this router is
/// signalled again at its `RESIGNAL_FROM`th packet here and at every power of two after (a flow
/// whose shortcut works sends this router its first packet or two only): a lost signal costs a
/// few more packets down the hierarchy, never the whole flow, at most 60 signals in all.
pub const RESIGNAL_FROM: u64 = 16;

/// The router state machine. See the module documentation for the calling order.
pub struct Router<T: Tunnel = IpIpTunnel> {
    config: RouterConfig,
    tunnel: T,
    next_hops: Vec<NextHopState>,
    by_name: HashMap<String, usize>,
    virtual_hosts: Vec<VirtualHostState>,
    flows: FlowTable,
    fragments: HashMap<FragKey, (usize, Instant)>,
    held: HashMap<FragKey, (Vec<PacketBuf>, Instant)>,
    held_count: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
    icmp_tokens: f64,
    icmp_refill: Instant,
    generation: u64,
    last_full_event: Option<Instant>,
    next_fragment_sweep: Option<Instant>,
    route_table: Option<(RouteTable, CompiledTable)>,
    stopping: bool,
    /// Changes for a fast path, when one follows the table.
    flow_log: Option<VecDeque<FlowChange>>,
    /// Flows being asked about (WHOHAS).
    pending: PendingTable,
    /// Signals for the driver (F10).
    signals: VecDeque<ShortcutSignal>,
    /// Packets waiting for their flow's shortcut (F10).
    awaiting: AwaitTable,
    /// The flows this router signalled, in the order they are offered to the parent as
    /// keepalives: a rotation, so that the keepalives go in chunks and never stall the packets
    /// behind a scan of the whole table. Keys of flows gone drop out when they come round.
    signalled: VecDeque<FlowKey>,
    /// The ingress's shortcuts: flow -> host (for flows marked [`FlowMark::Shortcut`]).
    shortcuts: HashMap<FlowKey, Ipv4Addr>,
    /// Where the packet being routed goes instead of its next hop (set by `classify`, taken by
    /// `forward`).
    shortcut_to: Option<Ipv4Addr>,
}

impl Router<IpIpTunnel> {
    /// A router with an IP-in-IP tunnel from `config.tunnel_source`.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        let tunnel = IpIpTunnel::new(config.tunnel_source, crate::tunnel::DEFAULT_OUTER_TTL);
        Self::with_tunnel(config, tunnel)
    }
}

impl<T: Tunnel> Router<T> {
    /// A router with the given tunnel kind.
    pub fn with_tunnel(config: RouterConfig, tunnel: T) -> Result<Self, ConfigError> {
        let flows = FlowTable::new(config.flow_table.clone(), config.flow_table_seed);
        let mut r = Router {
            tunnel,
            next_hops: Vec::new(),
            by_name: HashMap::new(),
            virtual_hosts: Vec::new(),
            flows,
            fragments: HashMap::new(),
            held: HashMap::new(),
            held_count: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters {
                drops: vec![0; DropReason::ALL.len()],
                ..Counters::default()
            },
            icmp_tokens: config.icmp_rate_limit as f64,
            icmp_refill: Instant::ZERO,
            generation: 0,
            last_full_event: None,
            next_fragment_sweep: None,
            route_table: None,
            stopping: false,
            flow_log: None,
            pending: PendingTable::default(),
            signals: VecDeque::new(),
            awaiting: AwaitTable::default(),
            signalled: VecDeque::new(),
            shortcuts: HashMap::new(),
            shortcut_to: None,
            config: config.clone(),
        };
        r.apply(config)?;
        Ok(r)
    }

    // ---- getters -------------------------------------------------------------------------

    /// The configuration in force.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Next hops, including removed ones that still carry flows.
    pub fn next_hops(&self) -> &[NextHopState] {
        &self.next_hops
    }
    /// Virtual hosts.
    pub fn virtual_hosts(&self) -> &[VirtualHostState] {
        &self.virtual_hosts
    }
    /// Pinned flows.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.flows.iter()
    }
    /// Heap memory the flow table holds, in bytes (an estimate: see
    /// [`FlowTable::memory_bytes`](crate::flow_table::FlowTable::memory_bytes)).
    pub fn flow_table_bytes(&self) -> usize {
        self.flows.memory_bytes()
    }
    /// Whether the router is stopping (takes no new flows; see [`Control::SetStopping`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }
    /// Number of pinned flows.
    /// Whether [`FlowChange`]s are recorded.
    pub fn flow_log_enabled(&self) -> bool {
        self.flow_log.is_some()
    }

    /// Starts (or stops) recording [`FlowChange`]s for a fast path that caches the flow table;
    /// the driver drains them with [`poll_flow_change`](Self::poll_flow_change) after every
    /// input. Starting offers every flow already in the table that may be offloaded.
    pub fn set_flow_log(&mut self, on: bool) {
        if !on {
            self.flow_log = None;
            return;
        }
        let mut log = VecDeque::new();
        for (key, e) in self.flows.iter() {
            if offloadable(e.state()) {
                log.push_back(FlowChange::Offload {
                    key: *key,
                    next_hop: e.next_hop(),
                    virtual_host: self.virtual_host_of(key).unwrap_or(u32::MAX),
                    shortcut: self.shortcut_of(key, e),
                });
            }
        }
        self.flow_log = Some(log);
    }

    /// The next change for the fast path, oldest first.
    pub fn poll_flow_change(&mut self) -> Option<FlowChange> {
        self.flow_log.as_mut()?.pop_front()
    }

    /// The shortcut of a flow, if it has one.
    #[inline]
    fn shortcut_of(&self, key: &FlowKey, e: &FlowEntry) -> Option<Ipv4Addr> {
        if e.has_mark(FlowMark::Shortcut) {
            self.shortcuts.get(key).copied()
        } else {
            None
        }
    }

    /// Pins (or, with `None`, clears) a flow's shortcut; whether the table holds the flow.
    fn set_shortcut(&mut self, key: &FlowKey, to: Option<Ipv4Addr>) -> bool {
        match to {
            Some(host) => {
                if !self.flows.mark(key, &[FlowMark::Shortcut], &[]) {
                    return false;
                }
                self.shortcuts.insert(*key, host);
            }
            None => {
                self.shortcuts.remove(key);
                if !self.flows.mark(key, &[], &[FlowMark::Shortcut]) {
                    return false;
                }
            }
        }
        true
    }

    /// The index of the virtual host whose subnet holds the flow's destination.
    fn virtual_host_of(&self, key: &FlowKey) -> Option<u32> {
        self.virtual_hosts
            .iter()
            .position(|v| v.config.subnet.contains(key.dst_addr))
            .map(|i| i as u32)
    }

    fn log_flow(&mut self, change: FlowChange) {
        if let Some(log) = self.flow_log.as_mut() {
            log.push_back(change);
        }
    }

    /// Takes back a flow that a fast path forwarded (MISSION F17a: the core and the fast path
    /// refill each other; after a restart the core reloads its table from the fast path's
    /// pinned map, so established flows keep their hosts whatever the policy would pick now).
    ///
    /// The flow is pinned to `next_hop` (an index of [`next_hops`](Self::next_hops)) as
    /// established TCP or pinned UDP, seen at `now`; `idle` is how long ago the fast path last
    /// forwarded a packet of it. Refused (and not inserted) when it is not TCP or UDP, no
    /// virtual host holds its destination, its virtual host takes UDP per datagram, the next
    /// hop does not exist, it has been idle longer than its state's timeout, or the table
    /// already holds it. A fast path is offered it again (its entry rewritten, indices as now).
    pub fn restore_flow(
        &mut self,
        now: Instant,
        key: FlowKey,
        next_hop: usize,
        idle: Duration,
    ) -> Result<(), RestoreRefusal> {
        let state = match key.protocol {
            6 => FlowState::TcpEstablished,
            17 => FlowState::Udp,
            _ => return Err(RestoreRefusal::Protocol),
        };
        let vh = self
            .virtual_host_of(&key)
            .ok_or(RestoreRefusal::NoVirtualHost)? as usize;
        if state == FlowState::Udp && self.virtual_hosts[vh].config.udp == UdpMode::PerDatagram {
            return Err(RestoreRefusal::PerDatagram);
        }
        if next_hop >= self.next_hops.len() {
            return Err(RestoreRefusal::NoNextHop);
        }
        if idle > self.flows.config().timeout(state) {
            return Err(RestoreRefusal::Expired);
        }
        if self.flows.get(&key).is_some() {
            return Err(RestoreRefusal::Present);
        }
        self.place_flow(now, key, next_hop, state, 0);
        self.counters.flows_restored += 1;
        self.log_flow(FlowChange::Offload {
            key,
            next_hop: next_hop as u32,
            virtual_host: vh as u32,
            shortcut: None,
        });
        Ok(())
    }

    /// The next hop with tunnel address `addr`, if any.
    pub fn next_hop_by_address(&self, addr: Ipv4Addr) -> Option<usize> {
        self.next_hops.iter().position(|n| n.address == addr)
    }

    /// Removes a flow, releasing its next hop and telling the fast path.
    fn remove_flow(&mut self, key: &FlowKey) -> Option<FlowEntry> {
        let old = self.flows.remove(key)?;
        if old.has_mark(FlowMark::Shortcut) {
            self.shortcuts.remove(key);
        }
        self.release(old.next_hop());
        self.log_flow(FlowChange::Withdraw { key: *key });
        Some(old)
    }

    /// Flows in the table.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }
    /// A flow's entry.
    pub fn flow(&self, key: &FlowKey) -> Option<&FlowEntry> {
        self.flows.get(key)
    }

    /// Lets go of a flow that another router pinned and no longer holds (flow mirroring, F17b:
    /// the driver calls it only for a copy that carried no packet here); a fast path is told.
    /// Whether the table held it.
    pub fn forget_flow(&mut self, key: &FlowKey) -> bool {
        self.remove_flow(key).is_some()
    }

    /// Keeps a flow alive as if a packet of it was seen at `now` (counters unchanged): a
    /// mirrored copy whose owner still carries it (F17b), which would otherwise idle out here
    /// while the owner's flow lives on. Whether the table holds it.
    pub fn refresh_flow(&mut self, now: Instant, key: &FlowKey) -> bool {
        self.flows.refresh(key, now)
    }

    /// The next hop a flow is pinned to.
    pub fn flow_next_hop(&self, key: &FlowKey) -> Option<&NextHopState> {
        self.flows
            .get(key)
            .map(|e| &self.next_hops[e.next_hop() as usize])
    }

    // ---- WHOHAS (F17c) ---------------------------------------------------------------------

    /// The next flow to ask the neighbours about (a mid-flow TCP packet arrived for a flow this
    /// router does not hold; its packets are held until [`answer_whohas`](Self::answer_whohas)
    /// or the timeout). Drain after every input, like [`poll_transmit`](Self::poll_transmit).
    pub fn poll_whohas(&mut self) -> Option<FlowKey> {
        self.pending.poll_question()
    }

    /// Flows being asked about, and packets held for them.
    pub fn whohas_pending(&self) -> (usize, usize) {
        (self.pending.len(), self.pending.held())
    }

    /// What the neighbours said of a flow asked about. A holder's answer pins the flow to the
    /// next hop with the holder's next-hop address (a router beside this one, with the same
    /// next hops) or else with the holder's own address (a router below this one); the held
    /// packets go there (through [`poll_transmit`](Self::poll_transmit)). `Nobody`, or an answer
    /// naming no next hop of this router, lets the policy pick. An answer for a flow no longer
    /// asked about (answered already, timed out) changes nothing.
    pub fn answer_whohas(&mut self, now: Instant, key: FlowKey, answer: WhohasAnswer) {
        let Some(p) = self.pending.take(&key) else {
            return;
        };
        let found = match answer {
            WhohasAnswer::Held { next_hop, holder } => {
                let nh = self
                    .next_hop_by_address(next_hop)
                    .or_else(|| self.next_hop_by_address(holder));
                if nh.is_none() {
                    self.counters.whohas_unusable += 1;
                }
                nh
            }
            WhohasAnswer::Nobody => {
                self.counters.whohas_not_found += 1;
                None
            }
        };
        match found {
            Some(nh) => {
                if self.flows.get(&key).is_none() {
                    self.place_flow(now, key, nh, FlowState::TcpEstablished, 0);
                    self.log_flow(FlowChange::Offload {
                        key,
                        next_hop: nh as u32,
                        virtual_host: p.vh as u32,
                        shortcut: None,
                    });
                }
                self.counters.whohas_resolved += 1;
                self.release_held(now, key, Some(p.vh), p.held);
            }
            None => self.fall_back(now, key, p),
        }
    }

    /// What this router says when a neighbour asks about a flow: the tunnel address of the
    /// flow's next hop if it holds it (a closing flow included: its last packets must still
    /// reach its host).
    pub fn whohas_reply(&self, key: &FlowKey) -> WhohasReply {
        if self.virtual_host_of(key).is_none() {
            return WhohasReply::Foreign;
        }
        match self.flows.get(key) {
            Some(e) => WhohasReply::Held(self.next_hops[e.next_hop() as usize].address),
            None => WhohasReply::NotHeld,
        }
    }

    // ---- the shortcut (F10) ----------------------------------------------------------------

    /// The next signal for the driver to send to the parent (a new flow from the parent's
    /// tunnel, with [`ShortcutConfig::signal`]). Drain after every input.
    pub fn poll_shortcut_signal(&mut self) -> Option<ShortcutSignal> {
        self.signals.pop_front()
    }

    /// A child's signal: the flow `key` goes to the host `host` below the child `child` (an
    /// index of [`next_hops`](Self::next_hops), the child the driver authenticated). Accepted
    /// only for a flow pinned to that child. At the flow's ingress the shortcut is pinned (and
    /// packets held for it leave for the host); for a flow from this router's parent the driver
    /// passes the signal up. A refusal changes nothing.
    pub fn accept_shortcut(
        &mut self,
        now: Instant,
        key: &FlowKey,
        child: usize,
        host: Ipv4Addr,
    ) -> Result<ShortcutAccept, ShortcutRefusal> {
        let result = self.check_shortcut(key, child, host);
        match result {
            Err(why) => self.counters.shortcuts_refused[why as usize] += 1,
            Ok(ShortcutAccept::Relay) => self.counters.shortcuts_relayed += 1,
            Ok(ShortcutAccept::Kept) => self.counters.shortcuts_kept += 1,
            Ok(ShortcutAccept::Installed) => {
                self.counters.shortcuts_installed += 1;
                self.next_hops[child].shortcut_signals += 1;
                self.set_shortcut(key, Some(host));
                self.flows.mark(key, &[], &[FlowMark::Awaiting]);
                let held = self.awaiting.take(key);
                self.release_held(now, *key, None, held);
                self.offload_shortcut(key, host);
            }
        }
        result
    }

    /// Offers a flow that got a shortcut to the fast path again (its entry then names the
    /// host), once it may be offloaded.
    fn offload_shortcut(&mut self, key: &FlowKey, host: Ipv4Addr) {
        let Some(e) = self.flows.get(key).filter(|e| offloadable(e.state())) else {
            return;
        };
        let change = FlowChange::Offload {
            key: *key,
            next_hop: e.next_hop(),
            virtual_host: self.virtual_host_of(key).unwrap_or(u32::MAX),
            shortcut: Some(host),
        };
        self.log_flow(change);
    }

    fn check_shortcut(
        &self,
        key: &FlowKey,
        child: usize,
        host: Ipv4Addr,
    ) -> Result<ShortcutAccept, ShortcutRefusal> {
        if host.is_unspecified() || host.is_broadcast() || host.is_multicast() || host.is_loopback()
        {
            return Err(ShortcutRefusal::BadAddress);
        }
        let e = self.flows.get(key).ok_or(ShortcutRefusal::UnknownFlow)?;
        if e.next_hop() as usize != child {
            return Err(ShortcutRefusal::NotPinned);
        }
        Ok(if e.has_mark(FlowMark::Probe) {
            ShortcutAccept::Kept
        } else if e.has_mark(FlowMark::FromParent) {
            ShortcutAccept::Relay
        } else {
            ShortcutAccept::Installed
        })
    }

    /// Gives a restored flow back its shortcut (a fast path's pinned map named its host).
    /// Whether the table holds the flow.
    pub fn restore_shortcut(&mut self, key: &FlowKey, host: Ipv4Addr) -> bool {
        if !self.set_shortcut(key, Some(host)) {
            return false;
        }
        self.offload_shortcut(key, host);
        true
    }

    /// Whether this router holds `key` pinned to `child`: what a child that signalled the flow
    /// asks to keep its own copy alive.
    pub fn holds_for(&self, key: &FlowKey, child: usize) -> bool {
        self.flows
            .get(key)
            .is_some_and(|e| e.next_hop() as usize == child)
    }

    /// Marks a flow whose signal the parent accepted: its copy here is kept alive while the
    /// parent holds it. Whether the table holds it.
    pub fn mark_signalled(&mut self, key: &FlowKey) -> bool {
        match self.flows.get(key) {
            None => false,
            Some(e) if e.has_mark(FlowMark::Signalled) => true,
            Some(_) => {
                self.flows.mark(key, &[FlowMark::Signalled], &[]);
                self.signalled.push_back(*key);
                true
            }
        }
    }

    /// Keys in the rotation of signalled flows (those of flows gone included, until they come
    /// round): a caller that wants every signalled flow once takes
    /// [`next_signalled`](Self::next_signalled) chunks until it has examined this many.
    pub fn signalled_rotation(&self) -> usize {
        self.signalled.len()
    }

    /// The next signalled flows of the rotation (to ask the parent whether it still holds
    /// them): examines at most `max` keys, and each key at most once per call; appends those of
    /// flows still held and signalled to `out` (they go round again), forgets the others. How
    /// many keys it examined (0: none left).
    pub fn next_signalled(&mut self, max: usize, out: &mut Vec<FlowKey>) -> usize {
        let max = max.min(self.signalled.len());
        let mut examined = 0;
        while examined < max {
            let Some(key) = self.signalled.pop_front() else {
                break;
            };
            examined += 1;
            if self
                .flows
                .get(&key)
                .is_some_and(|e| e.has_mark(FlowMark::Signalled))
            {
                out.push(key);
                self.signalled.push_back(key);
            }
        }
        examined
    }

    /// Clears every shortcut (the flows stay pinned: their next packets go down the hierarchy,
    /// to the same host, which the routers below still hold). How many went.
    pub fn flush_shortcuts(&mut self) -> usize {
        let flushed: Vec<FlowKey> = self.shortcuts.keys().copied().collect();
        for k in &flushed {
            self.set_shortcut(k, None);
            self.log_flow(FlowChange::Withdraw { key: *k });
        }
        self.counters.shortcuts_flushed += flushed.len() as u64;
        flushed.len()
    }

    /// Packets held at the ingress waiting for their flows' shortcuts.
    pub fn shortcut_held(&self) -> usize {
        self.awaiting.held()
    }

    /// Nobody answered (or could be used): the policy picks, as it would have without WHOHAS.
    fn fall_back(&mut self, now: Instant, key: FlowKey, p: Pending) {
        if self.flows.get(&key).is_none() {
            match self.select(p.vh, &key) {
                Ok(nh) => {
                    self.insert_flow(now, key, nh, FlowState::TcpEstablished, 0);
                    self.virtual_hosts[p.vh].flows_created += 1;
                    self.log_flow(FlowChange::Offload {
                        key,
                        next_hop: nh as u32,
                        virtual_host: p.vh as u32,
                        shortcut: None,
                    });
                }
                Err(reason) => {
                    self.counters.drops[reason as usize] += p.held.len() as u64;
                    return;
                }
            }
        }
        self.release_held(now, key, Some(p.vh), p.held);
    }

    // ---- control -------------------------------------------------------------------------

    /// Applies a control input.
    pub fn handle_control(&mut self, now: Instant, control: Control) -> Result<(), ControlError> {
        match control {
            Control::Reconfigure(cfg) => self.apply(*cfg)?,
            Control::SetAvailable {
                next_hop,
                available,
            } => {
                let i = *self
                    .by_name
                    .get(&next_hop)
                    .ok_or(ControlError::UnknownNextHop(next_hop.clone()))?;
                if self.next_hops[i].available != available {
                    self.next_hops[i].available = available;
                    // Only the virtual hosts this next hop serves change; the others keep their
                    // tables and round-robin positions.
                    for v in &mut self.virtual_hosts {
                        let name = &v.config.name;
                        let selectors = core::iter::once((&v.members, &mut v.selector))
                            .chain(v.rules.iter_mut().map(|r| (&r.members, &mut r.selector)));
                        for (members, selector) in selectors {
                            if members.contains(&i) {
                                selector.set_available(i, available).map_err(|e| {
                                    ControlError::Config(ConfigError::Selector {
                                        virtual_host: name.clone(),
                                        reason: e.to_string(),
                                    })
                                })?;
                                selector.refresh();
                            }
                        }
                    }
                    self.events.push_back(Event::NextHopAvailability {
                        next_hop,
                        available,
                    });
                }
            }
            Control::PinFlow { key, next_hop } => {
                let i = *self
                    .by_name
                    .get(&next_hop)
                    .ok_or(ControlError::UnknownNextHop(next_hop))?;
                self.remove_flow(&key);
                let state = match key.protocol {
                    6 => FlowState::TcpHalfOpen,
                    17 => FlowState::Udp,
                    _ => FlowState::Other,
                };
                self.insert_flow(now, key, i, state, 0);
                self.flows.mark(&key, &[FlowMark::Probe], &[]);
            }
            Control::UnpinFlow { key } => {
                self.remove_flow(&key);
            }
            Control::InstallRouteTable(table) => {
                let compiled = self.compile_route_table(&table)?;
                self.route_table = Some((*table, compiled));
            }
            Control::SetStopping(stopping) => self.stopping = stopping,
        }
        Ok(())
    }

    fn compile_route_table(&self, table: &RouteTable) -> Result<CompiledTable, RouteTableError> {
        let by_name = &self.by_name;
        let next_hops = &self.next_hops;
        CompiledTable::compile(table, self.config.hash_seed, |n| {
            by_name.get(n).copied().filter(|&i| next_hops[i].configured)
        })
    }

    /// The installed route table, if any (inspection).
    pub fn route_table(&self) -> Option<&RouteTable> {
        self.route_table.as_ref().map(|(t, _)| t)
    }

    /// Names in the installed route table that are not configured next hops (they cannot be
    /// chosen).
    pub fn route_table_unknown_next_hops(&self) -> &[String] {
        self.route_table
            .as_ref()
            .map_or(&[], |(_, c)| c.unknown_next_hops.as_slice())
    }

    /// Applies a configuration: checks it, then resolves next hops and virtual hosts against
    /// the running state, and only then changes anything (a refused configuration leaves the
    /// router as it was).
    fn apply(&mut self, config: RouterConfig) -> Result<(), ConfigError> {
        self.check_config(&config)?;
        let (next_hops, by_name) = self.resolve_next_hops(&config);
        let virtual_hosts = self.build_virtual_hosts(&config, &next_hops, &by_name)?;
        self.next_hops = next_hops;
        self.by_name = by_name;
        self.virtual_hosts = virtual_hosts;
        let mut evicted = Vec::new();
        self.flows.set_config(config.flow_table.clone(), |k, e| {
            evicted.push((k, e.next_hop()))
        });
        for (key, nh) in evicted {
            self.release(nh);
            self.counters.flows_evicted += 1;
            self.log_flow(FlowChange::Withdraw { key });
        }
        self.config = config;
        // Next-hop indices and the hash seed may have changed: the installed table is resolved
        // again (it was validated when installed, so this cannot fail).
        if let Some((table, _)) = self.route_table.take() {
            if let Ok(compiled) = self.compile_route_table(&table) {
                self.route_table = Some((table, compiled));
            }
        }
        self.generation += 1;
        self.events.push_back(Event::Reconfigured {
            generation: self.generation,
        });
        Ok(())
    }

    /// The checks of [`Router::apply`] that need no selector built.
    fn check_config(&self, config: &RouterConfig) -> Result<(), ConfigError> {
        if self.generation > 0 && self.config.tunnel_source != config.tunnel_source {
            // The tunnel was built with the first source; the underlay address of a running
            // router changes only with a restart.
            return Err(ConfigError::TunnelSourceChanged {
                running: self.config.tunnel_source,
                new: config.tunnel_source,
            });
        }
        if config.tunnel_mtu < 576 {
            return Err(ConfigError::TunnelMtu(config.tunnel_mtu));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &config.next_hops {
            if !seen.insert(n.name.as_str()) {
                return Err(ConfigError::DuplicateNextHop(n.name.clone()));
            }
        }
        for (i, a) in config.virtual_hosts.iter().enumerate() {
            for b in &config.virtual_hosts[i + 1..] {
                if a.subnet.contains_cidr(&b.subnet) || b.subnet.contains_cidr(&a.subnet) {
                    return Err(ConfigError::OverlappingVirtualHosts(
                        a.name.clone(),
                        b.name.clone(),
                    ));
                }
            }
            for n in a
                .next_hops
                .iter()
                .chain(a.rules.iter().flat_map(|r| &r.next_hops))
            {
                if !seen.contains(n.as_str()) {
                    return Err(ConfigError::UnknownNextHop {
                        virtual_host: a.name.clone(),
                        next_hop: n.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The next hops under `config` (the running ones, updated, then new ones) and the index of
    /// each configured name.
    fn resolve_next_hops(
        &self,
        config: &RouterConfig,
    ) -> (Vec<NextHopState>, HashMap<String, usize>) {
        // Next hops keep their index (flows refer to it) while name and address stay the same;
        // a changed address is a new next hop, and the old one keeps serving its flows.
        let mut next_hops = self.next_hops.clone();
        for n in &mut next_hops {
            n.configured = false;
        }
        let mut by_name = HashMap::new();
        for c in &config.next_hops {
            let existing = self
                .by_name
                .get(&c.name)
                .copied()
                .filter(|&i| next_hops[i].address == c.address);
            // Health carries over by name: a host does not become healthy by moving.
            let available = self
                .by_name
                .get(&c.name)
                .map(|&i| next_hops[i].available)
                .unwrap_or(true);
            // A next hop removed earlier and now configured again (same name and address) takes
            // back its old slot: its flows still point there, and a second slot for the same
            // host would split its flow count (least_flows would overload it), make a SYN
            // reusing one of its 5-tuples look like one to a removed host, and grow the list at
            // every remove and re-add. Its health was not tracked while it was out of the
            // configuration, so it gets the same as a new slot would.
            let readded = || {
                next_hops
                    .iter()
                    .rposition(|n| !n.configured && n.name == c.name && n.address == c.address)
            };
            let i = match existing.or_else(readded) {
                Some(i) if Some(i) == existing => i,
                Some(i) => {
                    next_hops[i].available = available;
                    i
                }
                None => {
                    next_hops.push(NextHopState {
                        name: c.name.clone(),
                        address: c.address,
                        weight: c.weight,
                        available,
                        configured: true,
                        active_flows: 0,
                        selections: 0,
                        packets: 0,
                        bytes: 0,
                        shortcut_signals: 0,
                    });
                    next_hops.len() - 1
                }
            };
            next_hops[i].weight = c.weight;
            next_hops[i].configured = true;
            by_name.insert(c.name.clone(), i);
        }
        (next_hops, by_name)
    }

    /// The virtual hosts under `config`, with their selectors built over `next_hops`; each keeps
    /// the counters of the running virtual host of the same name.
    fn build_virtual_hosts(
        &self,
        config: &RouterConfig,
        next_hops: &[NextHopState],
        by_name: &HashMap<String, usize>,
    ) -> Result<Vec<VirtualHostState>, ConfigError> {
        let mut virtual_hosts = Vec::with_capacity(config.virtual_hosts.len());
        for v in &config.virtual_hosts {
            let members: Vec<usize> = if v.next_hops.is_empty() {
                config.next_hops.iter().map(|n| by_name[&n.name]).collect()
            } else {
                v.next_hops.iter().map(|n| by_name[n]).collect()
            };
            let old = self.virtual_hosts.iter().find(|o| o.config.name == v.name);
            let selector = build_selector(v, &members, next_hops, config.hash_seed)?;
            let mut rules = Vec::with_capacity(v.rules.len());
            for rule in &v.rules {
                if rule.next_hops.is_empty() {
                    return Err(ConfigError::Selector {
                        virtual_host: v.name.clone(),
                        reason: "a steering rule names no next hop".into(),
                    });
                }
                let members: Vec<usize> = rule.next_hops.iter().map(|n| by_name[n]).collect();
                let selector = build_selector(v, &members, next_hops, config.hash_seed)?;
                rules.push(RuleState {
                    rule: rule.clone(),
                    members,
                    selector,
                });
            }
            virtual_hosts.push(VirtualHostState {
                config: v.clone(),
                members,
                packets: old.map_or(0, |o| o.packets),
                bytes: old.map_or(0, |o| o.bytes),
                flows_created: old.map_or(0, |o| o.flows_created),
                selector,
                rules,
            });
        }
        Ok(virtual_hosts)
    }

    // ---- packets -------------------------------------------------------------------------

    /// Routes a batch of packets in place: the same as [`Router::handle_packet`] on each in
    /// order (`actions[i]` is packet `i`'s action; extra entries of the longer slice are left
    /// alone), but faster on large flow tables.
    ///
    /// With a million flows nearly every lookup misses the caches twice, and one packet's misses
    /// cannot overlap with work that depends on them. So the batch is walked twice: first a bare
    /// lookup of each packet's flow, independent of one another, so that the processor fetches
    /// the table entries of several packets at once; then the real routing, which finds them in
    /// the cache. The first pass changes nothing.
    pub fn handle_batch(&mut self, now: Instant, bufs: &mut [PacketBuf], actions: &mut [Action]) {
        let mut found = 0u32;
        for b in bufs.iter() {
            if let Some(key) = quick_flow_key(b.as_ref()) {
                if let Some(e) = self.flows.get(&key) {
                    found = found.wrapping_add(e.next_hop());
                }
            }
        }
        core::hint::black_box(found);
        for (b, a) in bufs.iter_mut().zip(actions.iter_mut()) {
            *a = self.handle_packet(now, b);
        }
    }

    /// Routes a packet addressed to a virtual host, in place. See [`Action`].
    pub fn handle_packet(&mut self, now: Instant, buf: &mut PacketBuf) -> Action {
        self.counters.packets_in += 1;
        self.counters.bytes_in += buf.len() as u64;
        match self.route(now, buf, false) {
            Ok(a) => a,
            Err(reason) => self.dropped(reason),
        }
    }

    /// Terminates an IP-in-IP tunnel from a parent router and routes the inner packet, in place.
    ///
    /// Only tunnels whose outer source is in `trusted_parents` are accepted (no open relay).
    pub fn handle_tunnelled_packet(&mut self, now: Instant, buf: &mut PacketBuf) -> Action {
        self.counters.packets_in += 1;
        self.counters.bytes_in += buf.len() as u64;
        let outer = match self.tunnel.decapsulate(buf) {
            Ok(o) => o,
            Err(_) => return self.dropped(DropReason::MalformedTunnel),
        };
        if !self
            .config
            .trusted_parents
            .iter()
            .any(|p| p.contains(outer.src_addr))
        {
            return self.dropped(DropReason::UntrustedTunnel);
        }
        self.counters.tunnels_terminated += 1;
        match self.route(now, buf, true) {
            Ok(a) => a,
            Err(reason) => self.dropped(reason),
        }
    }

    fn dropped(&mut self, reason: DropReason) -> Action {
        self.counters.drops[reason as usize] += 1;
        Action::Drop(reason)
    }

    fn route(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        decrement_ttl: bool,
    ) -> Result<Action, DropReason> {
        let packet = PacketMeta::parse(buf.as_ref(), decrement_ttl)?;
        buf.truncate(packet.total_len); // link-layer padding is not part of the packet
        if decrement_ttl {
            Ipv4Packet::new_unchecked(buf.as_mut()).decrement_ttl();
        }
        let vh = self
            .find_virtual_host(packet.dst)
            .ok_or(DropReason::NoVirtualHost)?;
        if packet.protocol == Protocol::IpIp {
            // Checked before fragments are: fragmenting a nested tunnel must not smuggle it
            // past this check (the first fragment would otherwise be routed as a port-less flow).
            return Err(DropReason::NestedTunnel);
        }
        match packet.fragment() {
            Fragment::Later => self.route_later_fragment(now, buf, vh, packet),
            Fragment::First => {
                // A first fragment: classify by what it carries, remember the choice for the rest.
                // (Never held for WHOHAS: its later fragments could not follow it.)
                let Some(nh) = self.classify(now, buf, vh, packet, decrement_ttl)? else {
                    return Ok(Action::Held);
                };
                self.remember_fragment(now, packet.frag_key(), vh, nh);
                self.forward(now, buf, vh, nh, packet)
            }
            Fragment::Whole if packet.protocol == Protocol::Icmp => {
                self.route_icmp(now, buf, vh, packet)
            }
            Fragment::Whole => match self.classify(now, buf, vh, packet, decrement_ttl)? {
                Some(nh) => self.forward(now, buf, vh, nh, packet),
                None => Ok(Action::Held),
            },
        }
    }

    fn find_virtual_host(&self, dst: Ipv4Addr) -> Option<usize> {
        self.virtual_hosts
            .iter()
            .position(|v| v.config.subnet.contains(dst))
    }

    /// Finds or makes the flow of a TCP/UDP/other packet; returns the next hop index, or `None`
    /// when the packet was held while its neighbours are asked who holds its flow (WHOHAS).
    fn classify(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        packet: PacketMeta,
        from_parent: bool,
    ) -> Result<Option<usize>, DropReason> {
        let protocol = packet.protocol;
        // Later fragments never get here: a fragment is a first one.
        let first_fragment = packet.is_fragment;
        let payload = &buf.as_ref()[packet.header_len..];
        let (src_port, dst_port, flags) = match protocol {
            Protocol::Tcp if first_fragment => {
                let p = payload.get(..14).ok_or(DropReason::BadTransportHeader)?;
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                    Some(p[13]),
                )
            }
            Protocol::Tcp => {
                let t =
                    TcpPacket::new_checked(payload).map_err(|_| DropReason::BadTransportHeader)?;
                (t.src_port(), t.dst_port(), Some(t.flags().0))
            }
            Protocol::Udp if first_fragment => {
                let p = payload.get(..8).ok_or(DropReason::BadTransportHeader)?;
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                    None,
                )
            }
            Protocol::Udp => {
                let u =
                    UdpPacket::new_checked(payload).map_err(|_| DropReason::BadTransportHeader)?;
                (u.src_port(), u.dst_port(), None)
            }
            _ => (0, 0, None),
        };
        let key = FlowKey {
            src_addr: packet.src,
            dst_addr: packet.dst,
            src_port,
            dst_port,
            protocol: protocol.into(),
        };
        let len = buf.len();
        if protocol == Protocol::Udp && self.virtual_hosts[vh].config.udp == UdpMode::PerDatagram {
            return self.select(vh, &key).map(Some);
        }
        let is_syn = flags.is_some_and(|f| f & TcpFlags::SYN != 0 && f & TcpFlags::ACK == 0);
        if let Some(e) = self.flows.touch(&key, now, flags.map(TcpFlags), len) {
            let (nh, state) = (e.next_hop() as usize, e.state());
            let (has_shortcut, awaiting, created) = (
                e.has_mark(FlowMark::Shortcut),
                e.has_mark(FlowMark::Awaiting),
                e.created(),
            );
            // A flow from the parent that still comes this way has no shortcut at its ingress:
            // a signal was lost (a session reset, a parent that took no signals for a moment)
            // or the ingress lost its entry. Signal it again, at exponentially spaced packets.
            let resignal = from_parent
                && e.has_mark(FlowMark::FromParent)
                && e.packets() >= RESIGNAL_FROM
                && e.packets().is_power_of_two();
            let shortcut = if has_shortcut {
                self.shortcuts.get(&key).copied()
            } else {
                None
            };
            // A SYN on a flow that is not half-open is a reused 5-tuple, a new connection:
            // route it afresh if the old one closed (FIN/RST seen) or if its next hop can take
            // no new flows (drained, failed, removed), so that a client reusing a port does not
            // land on a dead backend. A SYN on a half-open flow is a retransmission and always
            // stays: the first SYN-ACK may only have been delayed, and a second host would
            // answer the client's ACK with a reset. (Health probes rely on this too: their
            // pinned SYN must reach the host they test, healthy or not.)
            let reuse = is_syn
                && match state {
                    FlowState::TcpHalfOpen => false,
                    FlowState::TcpClosing => true,
                    _ => !self.next_hops[nh].eligible(),
                };
            if !reuse {
                if resignal {
                    self.resignal(key, nh);
                }
                if shortcut.is_some() {
                    self.shortcut_to = shortcut;
                } else if awaiting && !is_syn && self.await_shortcut(now, key, created, buf) {
                    return Ok(None);
                }
                if self.flow_log.is_some() {
                    // A closing flow leaves the fast path: kept there, closing entries would
                    // take the room of established flows in a full map (the core evicts closing
                    // flows first; the map cannot). Its last ACKs come here.
                    let change = match state {
                        FlowState::TcpEstablished | FlowState::Udp => FlowChange::Offload {
                            key,
                            next_hop: nh as u32,
                            virtual_host: vh as u32,
                            shortcut,
                        },
                        FlowState::TcpClosing => FlowChange::Withdraw { key },
                        _ => return Ok(Some(nh)),
                    };
                    self.log_flow(change);
                }
                return Ok(Some(nh));
            }
            self.remove_flow(&key);
            self.counters.flows_rerouted += 1;
        } else if protocol == Protocol::Tcp && !is_syn && !first_fragment {
            // A mid-flow packet of a flow this router does not hold: its connection began
            // elsewhere (a routing change, a router's death). Ask who holds it, if configured.
            if let Some(cfg) = self.config.whohas {
                if self.hold_for_whohas(now, &cfg, key, vh, buf)? {
                    return Ok(None);
                }
            }
        }
        let nh = self.select(vh, &key)?;
        let state = match (protocol, is_syn) {
            (Protocol::Tcp, true) => FlowState::TcpHalfOpen,
            (Protocol::Tcp, false) => FlowState::TcpEstablished,
            (Protocol::Udp, _) => FlowState::Udp,
            _ => FlowState::Other,
        };
        self.insert_flow(now, key, nh, state, len);
        self.virtual_hosts[vh].flows_created += 1;
        if let Some(sc) = self.config.shortcut {
            self.new_flow_shortcut(&sc, key, nh, from_parent, is_syn);
        } else if from_parent {
            self.flows.mark(&key, &[FlowMark::FromParent], &[]);
        }
        if offloadable(state) {
            self.log_flow(FlowChange::Offload {
                key,
                next_hop: nh as u32,
                virtual_host: vh as u32,
                shortcut: None,
            });
        }
        Ok(Some(nh))
    }

    /// A new flow under the shortcut: from a parent, marked and signalled; at the ingress, a
    /// SYN towards a child that signals waits for its shortcut.
    fn new_flow_shortcut(
        &mut self,
        sc: &ShortcutConfig,
        key: FlowKey,
        nh: usize,
        from_parent: bool,
        is_syn: bool,
    ) {
        if from_parent {
            self.flows.mark(&key, &[FlowMark::FromParent], &[]);
            if self.signal(key, nh) {
                self.counters.shortcut_signals += 1;
            }
        } else if is_syn && sc.hold > Duration::ZERO && self.next_hops[nh].shortcut_signals > 0 {
            self.flows.mark(&key, &[FlowMark::Awaiting], &[]);
        }
    }

    /// Queues a signal for a TCP or UDP flow from the parent pinned to next hop `nh`, if this
    /// router signals; `false` if it does not, or the queue is full (counted).
    fn signal(&mut self, key: FlowKey, nh: usize) -> bool {
        let Some(sc) = self.config.shortcut.filter(|sc| sc.signal) else {
            return false;
        };
        if key.protocol != 6 && key.protocol != 17 {
            return false;
        }
        if self.signals.len() >= sc.max_signals {
            self.counters.shortcut_signals_dropped += 1;
            return false;
        }
        self.signals.push_back(ShortcutSignal {
            key,
            next_hop: nh as u32,
        });
        true
    }

    /// Signals again a flow from the parent whose packets still come this way (see
    /// [`RESIGNAL_FROM`]).
    fn resignal(&mut self, key: FlowKey, nh: usize) {
        if self.signal(key, nh) {
            self.counters.shortcut_resignals += 1;
        }
    }

    /// Holds a packet of a flow whose shortcut the ingress awaits: `true` held; `false` to go
    /// down the hierarchy now (the wait is over, or a bound was reached: then the packets held
    /// so far go first).
    fn await_shortcut(
        &mut self,
        now: Instant,
        key: FlowKey,
        created: Instant,
        buf: &mut PacketBuf,
    ) -> bool {
        let Some(sc) = self.config.shortcut else {
            return false;
        };
        let deadline = created + sc.hold;
        if now < deadline {
            let room = buf.read_slot().len();
            let mut taken = PacketBuf::with_headroom(buf.headroom(), room);
            core::mem::swap(&mut taken, buf);
            match self.awaiting.hold(&sc, key, deadline, taken) {
                Ok(()) => {
                    buf.reset(buf.headroom());
                    self.counters.shortcut_packets_held += 1;
                    return true;
                }
                Err(taken) => *buf = taken,
            }
        } else {
            self.counters.shortcut_hold_expired += 1;
        }
        self.flows.mark(&key, &[], &[FlowMark::Awaiting]);
        let held = self.awaiting.take(&key);
        self.release_held(now, key, None, held);
        false
    }

    /// Sends packets held for a flow (a shortcut's wait, a WHOHAS question) to where it goes
    /// now, its shortcut or its next hop, in order, through [`poll_transmit`](Self::poll_transmit).
    /// `vh` is the flow's virtual host when the caller knows it. Packets whose flow left the
    /// table meanwhile (evicted, unpinned) are dropped as [`DropReason::HeldFlowGone`].
    fn release_held(
        &mut self,
        now: Instant,
        key: FlowKey,
        vh: Option<usize>,
        held: Vec<PacketBuf>,
    ) {
        if held.is_empty() {
            return;
        }
        let route = self
            .flows
            .get(&key)
            .map(|e| (e.next_hop() as usize, self.shortcut_of(&key, e)));
        let vh = vh.or_else(|| self.virtual_host_of(&key).map(|v| v as usize));
        let (Some((nh, shortcut)), Some(vh)) = (route, vh) else {
            self.counters.drops[DropReason::HeldFlowGone as usize] += held.len() as u64;
            return;
        };
        for mut b in held {
            self.shortcut_to = shortcut;
            // Parsed (and TTL-checked) when it arrived; its TTL is not decremented again.
            let result = PacketMeta::parse(b.as_ref(), false)
                .and_then(|meta| self.forward(now, &mut b, vh, nh, meta));
            match result {
                Ok(Action::Tunnel { next_hop }) => self.transmits.push_back(Transmit {
                    destination: Destination::Tunnel(next_hop),
                    buf: b,
                }),
                Ok(_) => {}
                Err(reason) => self.counters.drops[reason as usize] += 1,
            }
        }
    }

    /// Holds a packet while its flow is asked about: `true` held, `false` to be routed now (a
    /// storm: too many flows pending), or dropped (its flow's queue is full).
    fn hold_for_whohas(
        &mut self,
        now: Instant,
        cfg: &WhohasConfig,
        key: FlowKey,
        vh: usize,
        buf: &mut PacketBuf,
    ) -> Result<bool, DropReason> {
        // The driver gets back an empty buffer as big as the one it lent (see fragments).
        let room = buf.read_slot().len();
        let mut taken = PacketBuf::with_headroom(buf.headroom(), room);
        core::mem::swap(&mut taken, buf);
        match self.pending.hold(cfg, now, key, vh, taken) {
            Ok(asked) => {
                buf.reset(buf.headroom());
                self.counters.whohas_packets_held += 1;
                if asked {
                    self.counters.whohas_asked += 1;
                }
                Ok(true)
            }
            Err((HoldRefusal::QueueFull, taken)) => {
                *buf = taken;
                Err(DropReason::WhohasQueueFull)
            }
            Err((HoldRefusal::TooManyPending, taken)) => {
                // The packet comes back untouched: the policy routes it.
                *buf = taken;
                self.counters.whohas_overflow += 1;
                Ok(false)
            }
        }
    }

    fn select(&mut self, vh: usize, key: &FlowKey) -> Result<usize, DropReason> {
        if self.stopping {
            return Err(DropReason::Stopping);
        }
        let h = flow_hash(self.config.hash_seed, key);
        let v = &mut self.virtual_hosts[vh];
        let rule = v.rules.iter_mut().find(|r| r.rule.matches(key));
        let nh = if v.config.policy == Policy::Cost {
            let allowed = rule.map(|r| r.members.as_slice());
            Self::select_by_cost(&self.route_table, &self.next_hops, h, key, allowed)?
        } else {
            let selector = match rule {
                Some(r) => &mut r.selector,
                None => &mut v.selector,
            };
            let next_hops = &self.next_hops;
            selector
                .select(h, |id| next_hops[id].active_flows)
                .ok_or(DropReason::NoNextHop)?
        };
        self.next_hops[nh].selections += 1;
        Ok(nh)
    }

    /// The route table's choice (see [`route_table`](crate::route_table)), among `allowed`
    /// next hops if a steering rule matched.
    fn select_by_cost(
        route_table: &Option<(RouteTable, CompiledTable)>,
        next_hops: &[NextHopState],
        flow_hash: u64,
        key: &FlowKey,
        allowed: Option<&[usize]>,
    ) -> Result<usize, DropReason> {
        let (_, table) = route_table.as_ref().ok_or(DropReason::NoRoute)?;
        let entry = table
            .lookup(key.src_addr, key.dst_addr)
            .ok_or(DropReason::NoRoute)?;
        let eligible = |i: usize| next_hops[i].eligible() && allowed.is_none_or(|a| a.contains(&i));
        crate::route_table::rendezvous(
            flow_hash,
            entry.chosen.iter().copied().filter(|&(i, _)| eligible(i)),
        )
        .or_else(|| entry.by_cost.iter().copied().find(|&i| eligible(i)))
        .ok_or(DropReason::NoNextHop)
    }

    fn insert_flow(&mut self, now: Instant, key: FlowKey, nh: usize, state: FlowState, len: usize) {
        self.place_flow(now, key, nh, state, len);
        self.counters.flows_created += 1;
    }

    /// Puts a flow in the table (evicting one if it is full), uncounted.
    fn place_flow(&mut self, now: Instant, key: FlowKey, nh: usize, state: FlowState, len: usize) {
        let outcome = self.flows.insert(key, nh as u32, state, now, len);
        self.next_hops[nh].active_flows += 1;
        if let InsertOutcome::Replaced(old) = outcome {
            if old.has_mark(FlowMark::Shortcut) {
                self.shortcuts.remove(&key);
            }
            self.release(old.next_hop());
            self.log_flow(FlowChange::Withdraw { key });
        }
        if let InsertOutcome::Evicted { entry, key } = outcome {
            if entry.has_mark(FlowMark::Shortcut) {
                self.shortcuts.remove(&key);
            }
            self.release(entry.next_hop());
            self.log_flow(FlowChange::Withdraw { key });
            self.counters.flows_evicted += 1;
            if self
                .last_full_event
                .is_none_or(|t| now - t >= Duration::from_secs(60))
            {
                self.last_full_event = Some(now);
                self.events.push_back(Event::FlowTableFull);
            }
        }
    }

    fn release(&mut self, nh: u32) {
        let n = &mut self.next_hops[nh as usize];
        n.active_flows = n.active_flows.saturating_sub(1);
    }

    fn forward(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        nh: usize,
        packet: PacketMeta,
    ) -> Result<Action, DropReason> {
        let shortcut = self.shortcut_to.take();
        let overhead = self.tunnel.overhead();
        if buf.len() + overhead > self.config.tunnel_mtu as usize && packet.dont_frag {
            // Never an ICMP error about an ICMP error (RFC 1122 3.2.2): two routers could
            // otherwise answer each other's errors for ever.
            let repr = IcmpRepr::FragNeeded {
                mtu: self.config.tunnel_mtu - overhead as u16,
            };
            if !packet.is_icmp_error(buf.as_ref()) && self.send_icmp(now, buf, repr) {
                // Counted only when sent: a rate-limited error is counted as such instead.
                self.counters.icmp_frag_needed_sent += 1;
            }
            return Err(DropReason::TooBig);
        }
        if let (true, Some(mss)) = (packet.may_clamp_mss(), self.config.mss_clamp) {
            if let Ok(mut t) = TcpPacket::new_checked(&mut buf.as_mut()[packet.header_len..]) {
                if t.flags().syn() && t.clamp_mss(mss) {
                    self.counters.mss_clamped += 1;
                }
            }
        }
        let address = match shortcut {
            Some(host) => {
                self.counters.shortcut_packets += 1;
                host
            }
            None => self.next_hops[nh].address,
        };
        let inner_len = buf.len() as u64;
        self.tunnel.encapsulate(now, buf, address)?;
        let n = &mut self.next_hops[nh];
        n.packets += 1;
        n.bytes += buf.len() as u64;
        let v = &mut self.virtual_hosts[vh];
        v.packets += 1;
        v.bytes += inner_len;
        self.counters.packets_tunneled += 1;
        self.counters.bytes_tunneled += buf.len() as u64;
        Ok(Action::Tunnel { next_hop: address })
    }

    fn route_icmp(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        packet: PacketMeta,
    ) -> Result<Action, DropReason> {
        let (msg_type, is_error, echo_id, quoted) = {
            let m = IcmpPacket::new_checked(&buf.as_ref()[packet.header_len..])
                .map_err(|_| DropReason::IcmpMalformed)?;
            let quoted = if m.is_error() {
                Some(icmp::quoted_flow(m.data()).map_err(|_| DropReason::IcmpMalformed)?)
            } else {
                None
            };
            (
                m.msg_type(),
                m.is_error(),
                (m.rest_of_header() >> 16) as u16,
                quoted,
            )
        };
        if let (true, Some(q)) = (is_error, quoted) {
            // The quoted packet is one a host server sent: from a virtual host to the client.
            // Route the error to the host that owns that flow, found by the reversed 5-tuple.
            let key = FlowKey {
                src_addr: q.dst_addr,
                dst_addr: q.src_addr,
                src_port: q.dst_port,
                dst_port: q.src_port,
                protocol: q.protocol.into(),
            };
            let nh = self
                .flows
                .get(&key)
                .map(|e| e.next_hop() as usize)
                .ok_or(DropReason::IcmpNoFlow)?;
            let action = self.forward(now, buf, vh, nh, packet)?;
            // Counted once it is on its way, not when it was dropped as too big.
            self.counters.icmp_errors_routed += 1;
            return Ok(action);
        }
        if msg_type == icmp::ECHO_REQUEST {
            // Ping the VIP: one flow per echo identifier, answered by the host it lands on.
            let key = FlowKey {
                src_addr: packet.src,
                dst_addr: packet.dst,
                src_port: echo_id,
                dst_port: 0,
                protocol: 1,
            };
            let len = buf.len();
            let nh = match self.flows.touch(&key, now, None, len) {
                Some(e) => e.next_hop() as usize,
                None => {
                    let nh = self.select(vh, &key)?;
                    self.insert_flow(now, key, nh, FlowState::Other, len);
                    self.virtual_hosts[vh].flows_created += 1;
                    nh
                }
            };
            return self.forward(now, buf, vh, nh, packet);
        }
        Err(DropReason::UnsupportedIcmp)
    }

    fn remember_fragment(&mut self, now: Instant, fk: FragKey, vh: usize, nh: usize) {
        if self.fragments.len() >= MAX_FRAGMENT_FLOWS && !self.fragments.contains_key(&fk) {
            self.sweep_fragments(now);
        }
        if self.fragments.len() < MAX_FRAGMENT_FLOWS {
            self.fragments.insert(fk, (nh, now + FRAGMENT_TIMEOUT));
            self.schedule_sweep(now + FRAGMENT_TIMEOUT);
        }
        if let Some((bufs, _)) = self.held.remove(&fk) {
            self.held_count -= bufs.len();
            let address = self.next_hops[nh].address;
            for mut b in bufs {
                let inner_len = b.len() as u64;
                if self.tunnel.encapsulate(now, &mut b, address).is_ok() {
                    // The same counters as `forward`: per next hop and virtual host too.
                    let n = &mut self.next_hops[nh];
                    n.packets += 1;
                    n.bytes += b.len() as u64;
                    let v = &mut self.virtual_hosts[vh];
                    v.packets += 1;
                    v.bytes += inner_len;
                    self.counters.fragments_routed += 1;
                    self.counters.packets_tunneled += 1;
                    self.counters.bytes_tunneled += b.len() as u64;
                    self.transmits.push_back(Transmit {
                        destination: Destination::Tunnel(address),
                        buf: b,
                    });
                } else {
                    self.counters.drops[DropReason::NoHeadroom as usize] += 1;
                }
            }
        }
    }

    fn route_later_fragment(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        packet: PacketMeta,
    ) -> Result<Action, DropReason> {
        let fk = packet.frag_key();
        if let Some(&(nh, _)) = self.fragments.get(&fk) {
            let action = self.forward(now, buf, vh, nh, packet)?;
            self.counters.fragments_routed += 1;
            return Ok(action);
        }
        if self.held_count >= MAX_HELD_FRAGMENTS {
            return Err(DropReason::FragmentOverflow);
        }
        // Fragments can overtake the first one: keep this one until it arrives (or times out).
        // The driver gets back an empty buffer as big as the one it lent (headroom and room to
        // read into): drivers reuse their buffers, and one sized to this fragment would truncate
        // every later packet read into it.
        let room = buf.read_slot().len();
        let mut taken = PacketBuf::with_headroom(buf.headroom(), room);
        core::mem::swap(&mut taken, buf);
        buf.reset(taken.headroom());
        let entry = self
            .held
            .entry(fk)
            .or_insert_with(|| (Vec::new(), now + FRAGMENT_TIMEOUT));
        entry.0.push(taken);
        self.held_count += 1;
        self.counters.fragments_held += 1;
        self.schedule_sweep(now + FRAGMENT_TIMEOUT);
        Ok(Action::Held)
    }

    fn schedule_sweep(&mut self, at: Instant) {
        if self.next_fragment_sweep.is_none_or(|t| at < t) {
            self.next_fragment_sweep = Some(at);
        }
    }

    fn sweep_fragments(&mut self, now: Instant) {
        self.fragments.retain(|_, (_, deadline)| *deadline > now);
        let mut orphans = 0;
        self.held.retain(|_, (bufs, deadline)| {
            let keep = *deadline > now;
            if !keep {
                orphans += bufs.len();
            }
            keep
        });
        self.held_count -= orphans;
        self.counters.drops[DropReason::FragmentOrphan as usize] += orphans as u64;
        let next = self
            .fragments
            .values()
            .map(|v| v.1)
            .chain(self.held.values().map(|v| v.1))
            .min();
        self.next_fragment_sweep = next;
    }

    /// Queues an ICMP error about `original` unless the rate limit says no; returns whether it
    /// was queued.
    fn send_icmp(&mut self, now: Instant, original: &PacketBuf, repr: IcmpRepr) -> bool {
        // Token bucket: an ICMP error per offending packet could otherwise be used to make the
        // router flood clients.
        let rate = self.config.icmp_rate_limit as f64;
        let elapsed = (now - self.icmp_refill).as_secs_f64();
        self.icmp_refill = now;
        self.icmp_tokens = (self.icmp_tokens + elapsed * rate).min(rate.max(1.0));
        if self.icmp_tokens < 1.0 {
            self.counters.icmp_rate_limited += 1;
            return false;
        }
        self.icmp_tokens -= 1.0;
        let orig = original.as_ref();
        // The error comes from the virtual host the client addressed: the router owns no address
        // the client knows, and an error from the VIP is what a client expects of the path to it.
        let from = Ipv4Packet::new_unchecked(orig).dst_addr();
        let mut b = PacketBuf::new(IcmpRepr::datagram_len(orig));
        let n = repr.emit_datagram(
            from,
            orig,
            self.counters.icmp_frag_needed_sent as u16,
            b.read_slot(),
        );
        b.set_len(n);
        self.transmits.push_back(Transmit {
            destination: Destination::Local,
            buf: b,
        });
        true
    }

    // ---- time ----------------------------------------------------------------------------

    /// Expires idle flows and stale fragment state.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_with(now, |_| None);
    }

    /// [`handle_timeout`](Self::handle_timeout) for a router whose fast path forwards some
    /// packets without the core: before a flow expires, `seen_by_fast_path` is asked when the
    /// fast path last forwarded one of its packets (`None`: never, or not known), and a later
    /// time keeps the flow alive as a packet would.
    pub fn handle_timeout_with(
        &mut self,
        now: Instant,
        seen_by_fast_path: impl FnMut(&FlowKey) -> Option<Instant>,
    ) {
        let mut released = Vec::new();
        let shortcuts = &mut self.shortcuts;
        self.flows.expire_with(now, seen_by_fast_path, |k, e| {
            if e.has_mark(FlowMark::Shortcut) {
                shortcuts.remove(&k);
            }
            released.push((k, e.next_hop()))
        });
        self.counters.flows_expired += released.len() as u64;
        for (key, nh) in released {
            self.release(nh);
            self.log_flow(FlowChange::Withdraw { key });
        }
        if self.next_fragment_sweep.is_some_and(|t| t <= now) {
            self.sweep_fragments(now);
        }
        while let Some((key, p)) = self.pending.next_expired(now) {
            self.counters.whohas_timeouts += 1;
            self.fall_back(now, key, p);
        }
        while let Some((key, held)) = self.awaiting.next_expired(now) {
            self.counters.shortcut_hold_expired += 1;
            self.flows.mark(&key, &[], &[FlowMark::Awaiting]);
            self.release_held(now, key, None, held);
        }
    }

    /// When [`Router::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.flows.next_expiry(),
            self.next_fragment_sweep,
            self.pending.next_deadline(),
            self.awaiting.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next packet the core produced, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

fn build_selector(
    v: &VirtualHostConfig,
    members: &[usize],
    next_hops: &[NextHopState],
    seed: u64,
) -> Result<Selector, ConfigError> {
    let m = members
        .iter()
        .map(|&i| {
            let n = &next_hops[i];
            Member {
                id: i,
                name: n.name.clone(),
                weight: n.weight,
                available: n.available && n.configured,
            }
        })
        .collect();
    Selector::new(v.policy, m, seed).map_err(|e| ConfigError::Selector {
        virtual_host: v.name.clone(),
        reason: e.to_string(),
    })
}

/// The 5-tuple of an unfragmented TCP or UDP packet, read without validation (only to warm
/// the caches in [`Router::handle_batch`]; routing validates everything).
fn quick_flow_key(p: &[u8]) -> Option<FlowKey> {
    let h = p.get(..20)?;
    let hl = ((h[0] & 0x0f) as usize) * 4;
    let protocol = h[9];
    if h[0] >> 4 != 4
        || (protocol != 6 && protocol != 17)
        || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0
    {
        return None;
    }
    let ports = p.get(hl..hl + 4)?;
    Some(FlowKey {
        src_addr: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst_addr: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        protocol,
    })
}

/// The hash that selects a next hop for a flow: the same on every router with the same seed.
/// Whether a flow in `state` may be forwarded by a fast path (its later packets change nothing
/// the core must see but their time, which the fast path records).
fn offloadable(state: FlowState) -> bool {
    matches!(state, FlowState::TcpEstablished | FlowState::Udp)
}

/// The flow hash the selectors use.
pub fn flow_hash(seed: u64, key: &FlowKey) -> u64 {
    let a = (u32::from(key.src_addr) as u64) << 32 | u32::from(key.dst_addr) as u64;
    let b = (key.src_port as u64) << 32 | (key.dst_port as u64) << 16 | key.protocol as u64;
    hash::hash_u64s(seed, &[a, b])
}

/// Whether IPv4 options contain loose or strict source routing.
fn has_source_route(mut opts: &[u8]) -> bool {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return false,
            1 => opts = &opts[1..],
            131 | 137 => return true,
            _ => {
                let Some(&len) = opts.get(1) else {
                    return false;
                };
                if len < 2 || len as usize > opts.len() {
                    return false;
                }
                opts = &opts[len as usize..];
            }
        }
    }
    false
}

/// Re-exported for drivers that build tunnel packets by hand.
pub use ipip::OVERHEAD as IPIP_OVERHEAD;

#[cfg(test)]
mod tests {
    //! The router driven as a driver would: packets built as bytes, time jumped by hand.

    use super::*;
    use crate::testutil::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
    const PARENT: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
    const REPORTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const T0: Instant = Instant::from_millis(1_000);

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const FIN_ACK: u8 = TcpFlags::FIN | TcpFlags::ACK;
    const RST: u8 = TcpFlags::RST;

    fn host(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 1, i as u8 + 1)
    }

    fn name(i: usize) -> String {
        format!("h{i}")
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn hosts(weights: &[u32]) -> Vec<NextHopConfig> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| NextHopConfig {
                name: name(i),
                address: host(i),
                weight,
            })
            .collect()
    }

    /// One virtual host 10.99.0.0/24 served by `n` next hops of weight 1; parents in
    /// 10.100.0.0/24 are trusted.
    fn config(policy: Policy, n: usize) -> RouterConfig {
        let mut c = RouterConfig::new(SOURCE);
        c.trusted_parents = vec!["10.100.0.0/24".parse().unwrap()];
        c.virtual_hosts = vec![VirtualHostConfig {
            name: "web".into(),
            subnet: "10.99.0.0/24".parse().unwrap(),
            policy,
            udp: UdpMode::Pin,
            next_hops: Vec::new(),
            rules: Vec::new(),
        }];
        c.next_hops = hosts(&vec![1; n]);
        c
    }

    fn router(c: RouterConfig) -> Router {
        Router::new(c).expect("valid configuration")
    }

    fn send(r: &mut Router, now: Instant, packet: &[u8]) -> (Action, PacketBuf) {
        let mut b = PacketBuf::from_slice(packet);
        let a = r.handle_packet(now, &mut b);
        (a, b)
    }

    /// Checks that `b` is one IP-in-IP packet from the router to `next_hop` and returns the inner
    /// packet (which is never itself a tunnel).
    fn check_outer(b: &[u8], next_hop: Ipv4Addr) -> &[u8] {
        let o = Ipv4Packet::new_checked(b).expect("outer header parses");
        assert!(o.verify_checksum(), "outer checksum");
        assert_eq!(o.header_len(), 20);
        assert_eq!(o.protocol(), Protocol::IpIp);
        assert_eq!((o.src_addr(), o.dst_addr()), (SOURCE, next_hop));
        assert_eq!(o.total_len() as usize, b.len());
        assert!(!o.is_fragment());
        assert_eq!(o.ttl(), crate::tunnel::DEFAULT_OUTER_TTL);
        let inner = &b[20..];
        let i = Ipv4Packet::new_checked(inner).expect("inner header parses");
        assert!(i.verify_checksum(), "inner checksum");
        assert_ne!(i.protocol(), Protocol::IpIp, "tunnels are never nested");
        assert_eq!(
            o.dont_frag(),
            i.dont_frag(),
            "outer DF copies the inner one"
        );
        assert_eq!(o.tos(), i.tos());
        inner
    }

    /// Routes `packet`, expects a tunnel with the packet untouched inside; returns the next hop.
    #[track_caller]
    fn tunnelled(r: &mut Router, now: Instant, packet: &[u8]) -> Ipv4Addr {
        let (a, b) = send(r, now, packet);
        let Action::Tunnel { next_hop } = a else {
            panic!("expected a tunnel, got {a:?}")
        };
        assert_eq!(check_outer(b.as_ref(), next_hop), packet);
        next_hop
    }

    /// The fast path follows a connection: nothing while it is half-open, offloaded from the
    /// handshake's ACK, withdrawn at its FIN (closing entries would crowd established flows out
    /// of a full map), and a SYN reusing the 5-tuple is a new connection, routed afresh and
    /// offloaded after its own handshake, to its own host.
    #[test]
    fn the_fast_path_follows_a_connection_and_a_reused_tuple() {
        let mut r = router(config(Policy::RoundRobin, 3));
        r.set_flow_log(true);
        let key = tcp_key(40000);
        let changes =
            |r: &mut Router| std::iter::from_fn(|| r.poll_flow_change()).collect::<Vec<_>>();
        let offload = |nh| FlowChange::Offload {
            key,
            next_hop: nh,
            virtual_host: 0,
            shortcut: None,
        };
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
        assert_eq!(changes(&mut r), vec![]);
        tunnelled(&mut r, T0, &ack(40000));
        assert_eq!(changes(&mut r), vec![offload(0)]);
        tunnelled(&mut r, T0 + ms(5), &tcp(CLIENT, 40000, VIP, 80, FIN_ACK));
        assert_eq!(r.flows.get(&key).unwrap().state(), FlowState::TcpClosing);
        assert_eq!(changes(&mut r), vec![FlowChange::Withdraw { key }]);
        // The client reuses the 5-tuple: the old flow goes, the new one is not offloaded before
        // its handshake completes, and then to its own host.
        assert_eq!(tunnelled(&mut r, T0 + ms(2000), &syn(40000)), host(1));
        assert_eq!(changes(&mut r), vec![FlowChange::Withdraw { key }]);
        tunnelled(&mut r, T0 + ms(2001), &ack(40000));
        assert_eq!(changes(&mut r), vec![offload(1)]);
    }

    /// F17a: flows a fast path held come back pinned to their next hop, whatever the policy
    /// would pick now; what cannot come back is refused by reason; the fast path is offered
    /// each restored flow again.
    #[test]
    fn restored_flows_keep_their_next_hop_and_bad_ones_are_refused() {
        let mut r = router(config(Policy::RoundRobin, 3));
        r.set_flow_log(true);
        let key = tcp_key(4000);
        // Round robin would send a new flow to the first host; the fast path had it on the third.
        assert_eq!(r.restore_flow(T0, key, 2, ms(1_000)), Ok(()));
        assert_eq!(
            r.poll_flow_change(),
            Some(FlowChange::Offload {
                key,
                next_hop: 2,
                virtual_host: 0,
                shortcut: None,
            })
        );
        assert_eq!(r.poll_flow_change(), None);
        assert_eq!(
            tunnelled(&mut r, T0 + ms(10), &tcp(CLIENT, 4000, VIP, 80, ACK)),
            host(2)
        );
        assert_eq!(r.flow_next_hop(&key).unwrap().address, host(2));
        assert_eq!(
            r.restore_flow(T0, key, 0, ms(0)),
            Err(RestoreRefusal::Present)
        );
        let udp_key = FlowKey {
            protocol: 17,
            ..tcp_key(4001)
        };
        assert_eq!(r.restore_flow(T0, udp_key, 1, ms(0)), Ok(()));
        let icmp = FlowKey {
            protocol: 1,
            ..tcp_key(4002)
        };
        assert_eq!(
            r.restore_flow(T0, icmp, 1, ms(0)),
            Err(RestoreRefusal::Protocol)
        );
        let foreign = FlowKey {
            dst_addr: NOT_A_VIP,
            ..tcp_key(4003)
        };
        assert_eq!(
            r.restore_flow(T0, foreign, 1, ms(0)),
            Err(RestoreRefusal::NoVirtualHost)
        );
        assert_eq!(
            r.restore_flow(T0, tcp_key(4004), 3, ms(0)),
            Err(RestoreRefusal::NoNextHop)
        );
        let too_idle = r.config().flow_table.timeout(FlowState::TcpEstablished) + ms(1);
        assert_eq!(
            r.restore_flow(T0, tcp_key(4005), 1, too_idle),
            Err(RestoreRefusal::Expired)
        );
        assert_eq!(r.counters().flows_restored, 2);
        assert_eq!(r.counters().flows_created, 0);
        assert_eq!(r.flow_count(), 2);
        assert_eq!(r.next_hop_by_address(host(1)), Some(1));
        assert_eq!(r.next_hop_by_address(NOT_A_VIP), None);
    }

    #[track_caller]
    fn dropped(r: &mut Router, now: Instant, packet: &[u8]) -> DropReason {
        match send(r, now, packet).0 {
            Action::Drop(reason) => reason,
            a => panic!("expected a drop, got {a:?}"),
        }
    }

    fn tcp_key(sport: u16) -> FlowKey {
        FlowKey::new(CLIENT, VIP, sport, 80, 6)
    }

    fn syn(sport: u16) -> Vec<u8> {
        tcp(CLIENT, sport, VIP, 80, SYN)
    }

    fn ack(sport: u16) -> Vec<u8> {
        tcp(CLIENT, sport, VIP, 80, ACK)
    }

    fn next_hop<'a>(r: &'a Router, name: &str) -> &'a NextHopState {
        r.next_hops()
            .iter()
            .rev()
            .find(|n| n.name == name)
            .expect("next hop exists")
    }

    fn set_available(r: &mut Router, i: usize, available: bool) {
        r.handle_control(
            T0,
            Control::SetAvailable {
                next_hop: name(i),
                available,
            },
        )
        .unwrap();
    }

    fn reconfigure(r: &mut Router, c: &RouterConfig) {
        r.handle_control(T0, Control::Reconfigure(Box::new(c.clone())))
            .unwrap();
    }

    fn transmits(r: &mut Router) -> Vec<Transmit> {
        core::iter::from_fn(|| r.poll_transmit()).collect()
    }

    fn events(r: &mut Router) -> Vec<Event> {
        core::iter::from_fn(|| r.poll_event()).collect()
    }

    /// Packets handed in are all accounted for: dropped (once), tunnelled (once) or still held
    /// (fragments waiting for their first, packets of flows asked about).
    #[track_caller]
    fn assert_accounted(r: &Router) {
        let c = r.counters();
        let held = r.held_count + r.pending.held() + r.awaiting.held();
        assert_eq!(
            c.drops_total() + c.packets_tunneled + held as u64,
            c.packets_in,
            "drops {} + tunnelled {} + held {} != packets in {}",
            c.drops_total(),
            c.packets_tunneled,
            held,
            c.packets_in
        );
    }

    // ---- Graceful stop ---------------------------------------------------------------------

    #[test]
    fn a_stopping_router_takes_no_new_flow_and_forwards_its_flows() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let first = tunnelled(&mut r, T0, &syn(40000));
        r.handle_control(T0, Control::SetStopping(true)).unwrap();
        assert!(r.is_stopping());
        // The established flow goes on to the same next hop; a new one is refused and counted.
        assert_eq!(tunnelled(&mut r, T0, &ack(40000)), first);
        assert_eq!(dropped(&mut r, T0, &syn(40001)), DropReason::Stopping);
        assert_eq!(dropped(&mut r, T0, &ack(40002)), DropReason::Stopping);
        assert_eq!(r.counters().drops(DropReason::Stopping), 2);
        assert_eq!(r.flow_count(), 1, "refused packets pin nothing");
        assert_accounted(&r);
        // Back in service.
        r.handle_control(T0, Control::SetStopping(false)).unwrap();
        tunnelled(&mut r, T0, &syn(40001));
        assert_eq!(r.flow_count(), 2);
    }

    // ---- TCP -----------------------------------------------------------------------------

    #[test]
    fn later_packets_of_a_tcp_flow_follow_its_first_packet() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let mut chosen = Vec::new();
        for sport in 40000..40006 {
            chosen.push(tunnelled(&mut r, T0, &syn(sport)));
        }
        // Round robin over three hosts, in configuration order.
        assert_eq!(
            chosen,
            [host(0), host(1), host(2), host(0), host(1), host(2)]
        );
        for (k, sport) in (40000..40006).enumerate() {
            let t = T0 + ms(10);
            assert_eq!(tunnelled(&mut r, t, &ack(sport)), chosen[k]);
            let data = Ip::new(
                CLIENT,
                VIP,
                Protocol::Tcp,
                tcp_segment(
                    CLIENT,
                    sport,
                    VIP,
                    80,
                    ACK | TcpFlags::PSH,
                    &[],
                    b"GET / HTTP/1.0\r\n\r\n",
                ),
            )
            .build();
            assert_eq!(tunnelled(&mut r, t, &data), chosen[k]);
            assert_eq!(
                tunnelled(&mut r, t, &tcp(CLIENT, sport, VIP, 80, FIN_ACK)),
                chosen[k]
            );
            assert_eq!(
                r.flows.get(&tcp_key(sport)).unwrap().state(),
                FlowState::TcpClosing
            );
            assert_eq!(r.flows.get(&tcp_key(sport)).unwrap().packets(), 4);
        }
        let c = r.counters();
        assert_eq!(
            (
                c.packets_in,
                c.packets_tunneled,
                c.flows_created,
                c.flows_rerouted
            ),
            (24, 24, 6, 0)
        );
        assert_eq!(c.drops_total(), 0);
        assert_eq!(r.flow_count(), 6);
        for i in 0..3 {
            let n = next_hop(&r, &name(i));
            assert_eq!((n.active_flows, n.selections, n.packets), (2, 2, 8));
        }
        assert_eq!(r.virtual_hosts()[0].flows_created, 6);
        assert_eq!(r.virtual_hosts()[0].packets, 24);
    }

    #[test]
    fn retransmitted_syn_goes_to_the_same_host() {
        let mut r = router(config(Policy::RoundRobin, 3));
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
        // The SYN-ACK was lost: the client retransmits, twice. A fresh choice would be h1.
        assert_eq!(tunnelled(&mut r, T0 + ms(1000), &syn(40000)), host(0));
        assert_eq!(tunnelled(&mut r, T0 + ms(3000), &syn(40000)), host(0));
        let e = r.flows.get(&tcp_key(40000)).unwrap();
        assert_eq!((e.state(), e.packets()), (FlowState::TcpHalfOpen, 3));
        assert_eq!(
            (r.counters().flows_created, r.counters().flows_rerouted),
            (1, 0)
        );
        assert_eq!(next_hop(&r, "h0").active_flows, 1);
        // The round robin moved on only once.
        assert_eq!(tunnelled(&mut r, T0, &syn(40001)), host(1));
    }

    #[test]
    fn new_syn_after_fin_or_rst_is_routed_afresh() {
        let mut r = router(config(Policy::RoundRobin, 3));
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
        tunnelled(&mut r, T0, &ack(40000));
        tunnelled(&mut r, T0, &tcp(CLIENT, 40000, VIP, 80, FIN_ACK));
        assert_eq!(
            r.flows.get(&tcp_key(40000)).unwrap().state(),
            FlowState::TcpClosing
        );
        // The client reuses the 5-tuple for a new connection.
        assert_eq!(tunnelled(&mut r, T0 + ms(2000), &syn(40000)), host(1));
        assert_eq!(r.counters().flows_rerouted, 1);
        assert_eq!(
            r.flows.get(&tcp_key(40000)).unwrap().state(),
            FlowState::TcpHalfOpen
        );
        assert_eq!(r.flow_next_hop(&tcp_key(40000)).unwrap().name, "h1");
        assert_eq!(
            [0, 1, 2].map(|i| next_hop(&r, &name(i)).active_flows),
            [0, 1, 0],
            "the old flow released its next hop"
        );
        // The new connection stays where it went...
        assert_eq!(tunnelled(&mut r, T0 + ms(2001), &ack(40000)), host(1));
        // ...until it is reset, after which the next SYN is a new flow again.
        assert_eq!(
            tunnelled(&mut r, T0 + ms(2002), &tcp(CLIENT, 40000, VIP, 80, RST)),
            host(1)
        );
        assert_eq!(tunnelled(&mut r, T0 + ms(3000), &syn(40000)), host(2));
        assert_eq!(r.counters().flows_rerouted, 2);
        assert_eq!(r.counters().flows_created, 3);
        assert_eq!(r.flow_count(), 1);
        assert_eq!(
            [0, 1, 2].map(|i| next_hop(&r, &name(i)).active_flows),
            [0, 0, 1]
        );
    }

    /// Makes next hop h0 of a two-host round-robin router unable to take new flows.
    fn make_ineligible(r: &mut Router, change: &str) {
        match change {
            "unavailable" => set_available(r, 0, false),
            "drained" => {
                let mut c = config(Policy::RoundRobin, 2);
                c.next_hops[0].weight = 0;
                reconfigure(r, &c);
            }
            _ => {
                let mut c = config(Policy::RoundRobin, 2);
                c.next_hops.remove(0);
                reconfigure(r, &c);
            }
        }
    }

    #[test]
    fn reused_five_tuple_whose_host_can_take_no_new_flows_is_rerouted() {
        for change in ["unavailable", "drained", "removed"] {
            let mut r = router(config(Policy::RoundRobin, 2));
            assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0), "{change}");
            assert_eq!(tunnelled(&mut r, T0, &ack(40000)), host(0), "{change}");
            make_ineligible(&mut r, change);
            // The connection ended without the router seeing it (the host reset it: replies
            // bypass the router); the client reuses the port. The new connection must not go
            // to a host that is leaving (IPVS sent such SYNs to dead backends).
            assert_eq!(
                tunnelled(&mut r, T0 + ms(1000), &syn(40000)),
                host(1),
                "{change}"
            );
            assert_eq!(r.counters().flows_rerouted, 1, "{change}");
            assert_eq!(next_hop(&r, "h0").active_flows, 0, "{change}");
            assert_eq!(next_hop(&r, "h1").active_flows, 1, "{change}");
            assert_eq!(r.flow_next_hop(&tcp_key(40000)).unwrap().name, "h1");
            assert_eq!(
                r.flows.get(&tcp_key(40000)).unwrap().state(),
                FlowState::TcpHalfOpen
            );
        }
        // To a host that still takes new flows, a SYN on an open flow stays where it is.
        let mut r = router(config(Policy::RoundRobin, 2));
        tunnelled(&mut r, T0, &syn(40000));
        tunnelled(&mut r, T0, &ack(40000));
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
        assert_eq!(r.counters().flows_rerouted, 0);
    }

    #[test]
    fn retransmitted_syn_stays_even_when_its_host_can_take_no_new_flows() {
        for change in ["unavailable", "drained", "removed"] {
            let mut r = router(config(Policy::RoundRobin, 2));
            assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0), "{change}");
            make_ineligible(&mut r, change);
            // The first SYN-ACK may only be late: a second host would reset the client's ACK.
            assert_eq!(
                tunnelled(&mut r, T0 + ms(1000), &syn(40000)),
                host(0),
                "{change}"
            );
            assert_eq!(r.counters().flows_rerouted, 0, "{change}");
            assert_eq!(next_hop(&r, "h0").active_flows, 1, "{change}");
        }
        // Health probes pin their SYN to the host they test, healthy or not.
        let mut r = router(config(Policy::RoundRobin, 2));
        set_available(&mut r, 1, false);
        let key = tcp_key(50000);
        r.handle_control(
            T0,
            Control::PinFlow {
                key,
                next_hop: "h1".into(),
            },
        )
        .unwrap();
        assert_eq!(tunnelled(&mut r, T0, &syn(50000)), host(1));
        assert_eq!(tunnelled(&mut r, T0 + ms(1000), &syn(50000)), host(1));
    }

    #[test]
    fn established_flows_stay_on_a_drained_or_unhealthy_host() {
        let mut r = router(config(Policy::RoundRobin, 2));
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
        assert_eq!(tunnelled(&mut r, T0, &ack(40000)), host(0));
        events(&mut r);

        set_available(&mut r, 0, false);
        assert_eq!(
            events(&mut r),
            [Event::NextHopAvailability {
                next_hop: "h0".into(),
                available: false
            }]
        );
        // Setting the same state again is no event.
        set_available(&mut r, 0, false);
        assert_eq!(events(&mut r), []);
        assert_eq!(tunnelled(&mut r, T0 + ms(1), &ack(40000)), host(0));
        for sport in 41000..41004 {
            assert_eq!(
                tunnelled(&mut r, T0 + ms(1), &syn(sport)),
                host(1),
                "unhealthy gets no new flow"
            );
        }
        set_available(&mut r, 0, true);

        let mut c = config(Policy::RoundRobin, 2);
        c.next_hops[0].weight = 0;
        reconfigure(&mut r, &c);
        assert_eq!(tunnelled(&mut r, T0 + ms(2), &ack(40000)), host(0));
        for sport in 42000..42004 {
            assert_eq!(
                tunnelled(&mut r, T0 + ms(2), &syn(sport)),
                host(1),
                "drained gets no new flow"
            );
        }
        assert_eq!(
            tunnelled(&mut r, T0 + ms(3), &tcp(CLIENT, 40000, VIP, 80, FIN_ACK)),
            host(0)
        );
        assert_eq!(r.counters().flows_rerouted, 0);
        assert_eq!(next_hop(&r, "h0").active_flows, 1);
        assert_eq!(next_hop(&r, "h0").selections, 1);
    }

    #[test]
    fn weight_zero_drains_under_every_policy() {
        for policy in Policy::ALL {
            let mut c = config(policy, 3);
            c.next_hops[1].weight = 0;
            let mut r = router(c);
            if policy == Policy::Cost {
                let all = vec![(0, 1.0), (1, 1.0), (2, 1.0)];
                install(
                    &mut r,
                    cost_table(1, vec![("10.99.0.0/24", None, all, vec![0, 1, 2])]),
                );
            }
            let mut seen = BTreeSet::new();
            for sport in 0..300 {
                seen.insert(tunnelled(&mut r, T0, &syn(10000 + sport)));
            }
            assert_eq!(seen, BTreeSet::from([host(0), host(2)]), "{policy}");
            assert_eq!(next_hop(&r, "h1").selections, 0, "{policy}");
        }
    }

    #[test]
    fn pinned_flow_goes_to_the_chosen_next_hop() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let key = tcp_key(40000);
        r.handle_control(
            T0,
            Control::PinFlow {
                key,
                next_hop: "h2".into(),
            },
        )
        .unwrap();
        assert_eq!(next_hop(&r, "h2").active_flows, 1);
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(2));
        assert_eq!(
            r.handle_control(
                T0,
                Control::PinFlow {
                    key,
                    next_hop: "nope".into()
                }
            ),
            Err(ControlError::UnknownNextHop("nope".into()))
        );
        // Re-pinning moves the flow and its count.
        r.handle_control(
            T0,
            Control::PinFlow {
                key,
                next_hop: "h1".into(),
            },
        )
        .unwrap();
        assert_eq!(
            [0, 1, 2].map(|i| next_hop(&r, &name(i)).active_flows),
            [0, 1, 0]
        );
        assert_eq!(tunnelled(&mut r, T0, &ack(40000)), host(1));
        r.handle_control(T0, Control::UnpinFlow { key }).unwrap();
        assert_eq!(r.flow_count(), 0);
        assert_eq!(
            [0, 1, 2].map(|i| next_hop(&r, &name(i)).active_flows),
            [0, 0, 0]
        );
        assert_eq!(
            r.handle_control(
                T0,
                Control::SetAvailable {
                    next_hop: "nope".into(),
                    available: false
                }
            ),
            Err(ControlError::UnknownNextHop("nope".into()))
        );
    }

    // ---- reconfiguration -----------------------------------------------------------------

    #[test]
    fn reconfigure_steers_only_new_flows_and_removed_hosts_keep_theirs() {
        let mut r = router(config(Policy::RoundRobin, 3));
        assert_eq!(events(&mut r), [Event::Reconfigured { generation: 1 }]);
        for sport in 40000..40003 {
            tunnelled(&mut r, T0, &syn(sport));
            tunnelled(&mut r, T0, &ack(sport));
        }
        let udp_flow = udp(CLIENT, 5000, VIP, 53, b"q");
        assert_eq!(tunnelled(&mut r, T0, &udp_flow), host(0));
        assert_eq!(r.flow_next_hop(&tcp_key(40002)).unwrap().name, "h2");

        // h2 and h0 leave the configuration; h3 joins.
        let mut c = config(Policy::RoundRobin, 4);
        c.next_hops.retain(|n| n.name != "h2" && n.name != "h0");
        reconfigure(&mut r, &c);
        assert_eq!(events(&mut r), [Event::Reconfigured { generation: 2 }]);
        assert_eq!(r.config(), &c);
        let h2 = next_hop(&r, "h2");
        assert!(!h2.configured && !h2.eligible());
        assert_eq!(h2.active_flows, 1);

        // Established flows keep their next hop, configured or not.
        for (sport, h) in [(40000, 0), (40001, 1), (40002, 2)] {
            assert_eq!(tunnelled(&mut r, T0 + ms(5), &ack(sport)), host(h));
        }
        assert_eq!(tunnelled(&mut r, T0 + ms(5), &udp_flow), host(0));
        // New flows only go to configured next hops.
        let mut seen = BTreeSet::new();
        for sport in 41000..41010 {
            seen.insert(tunnelled(&mut r, T0 + ms(5), &syn(sport)));
        }
        assert_eq!(seen, BTreeSet::from([host(1), host(3)]));

        // When the removed host's last flow ends, its count goes back to zero.
        tunnelled(&mut r, T0 + ms(6), &tcp(CLIENT, 40002, VIP, 80, FIN_ACK));
        r.handle_timeout(T0 + Duration::from_secs(20));
        assert_eq!(next_hop(&r, "h2").active_flows, 0);
        assert!(r.flow_next_hop(&tcp_key(40002)).is_none());
    }

    #[test]
    fn health_carries_over_by_name_across_reconfigure() {
        let mut r = router(config(Policy::RoundRobin, 3));
        tunnelled(&mut r, T0, &syn(40000));
        assert_eq!(tunnelled(&mut r, T0, &syn(40001)), host(1));
        tunnelled(&mut r, T0, &ack(40001));
        set_available(&mut r, 1, false);

        // The same hosts with new weights: h1 is still down.
        let mut c = config(Policy::Weighted, 3);
        c.next_hops[0].weight = 2;
        reconfigure(&mut r, &c);
        assert!(!next_hop(&r, "h1").available);
        for sport in 41000..41020 {
            assert_ne!(tunnelled(&mut r, T0, &syn(sport)), host(1));
        }

        // h1 moves to a new address: a new next hop, still down (a host does not become healthy
        // by moving), while its established flow stays on the old address.
        let moved = Ipv4Addr::new(10, 200, 9, 9);
        c.next_hops[1].address = moved;
        reconfigure(&mut r, &c);
        let h1 = next_hop(&r, "h1");
        assert_eq!(
            (h1.address, h1.available, h1.configured),
            (moved, false, true)
        );
        assert_eq!(tunnelled(&mut r, T0, &ack(40001)), host(1));
        for sport in 42000..42020 {
            assert_ne!(tunnelled(&mut r, T0, &syn(sport)), moved);
        }
        // Healthy again: new flows reach the new address; the old flow still goes to the old one.
        set_available(&mut r, 1, true);
        let mut seen = BTreeSet::new();
        for sport in 43000..43020 {
            seen.insert(tunnelled(&mut r, T0, &syn(sport)));
        }
        assert!(seen.contains(&moved));
        assert!(!seen.contains(&host(1)));
        assert_eq!(tunnelled(&mut r, T0, &ack(40001)), host(1));
    }

    #[test]
    fn a_next_hop_removed_and_added_back_takes_back_its_slot() {
        let mut r = router(config(Policy::LeastFlows, 2));
        for sport in 40000..40004 {
            tunnelled(&mut r, T0, &syn(sport));
            tunnelled(&mut r, T0, &ack(sport));
        }
        assert_eq!(
            [
                next_hop(&r, "h0").active_flows,
                next_hop(&r, "h1").active_flows
            ],
            [2, 2]
        );
        let mut without = config(Policy::LeastFlows, 2);
        without.next_hops.remove(1);
        for _ in 0..3 {
            reconfigure(&mut r, &without);
            reconfigure(&mut r, &config(Policy::LeastFlows, 2));
        }
        // One slot per host, not one per reload, and the flows still count on it.
        assert_eq!(r.next_hops().len(), 2);
        let h1 = next_hop(&r, "h1");
        assert!(h1.configured && h1.eligible());
        assert_eq!(h1.active_flows, 2);
        // A SYN reusing one of its 5-tuples is no SYN to a removed host: it stays.
        let on_h1 = (40000..40004)
            .find(|&p| r.flow_next_hop(&tcp_key(p)).unwrap().name == "h1")
            .unwrap();
        assert_eq!(tunnelled(&mut r, T0, &syn(on_h1)), host(1));
        assert_eq!(r.counters().flows_rerouted, 0);
        // least_flows sees its real count: with 2 each, new flows alternate.
        let next: Vec<_> = (41000..41004)
            .map(|p| tunnelled(&mut r, T0, &syn(p)))
            .collect();
        assert_eq!(next.iter().filter(|&&h| h == host(1)).count(), 2);
    }

    #[test]
    fn invalid_configuration_is_refused_and_the_old_one_stays() {
        let mut r = router(config(Policy::RoundRobin, 2));
        events(&mut r);
        let base = config(Policy::RoundRobin, 2);
        let mut dup = base.clone();
        dup.next_hops[1].name = "h0".into();
        let mut unknown = base.clone();
        unknown.virtual_hosts[0].next_hops = vec!["h9".into()];
        let mut overlap = base.clone();
        let mut other = overlap.virtual_hosts[0].clone();
        other.name = "inner".into();
        other.subnet = "10.99.0.128/25".parse().unwrap();
        overlap.virtual_hosts.push(other);
        let mut mtu = base.clone();
        mtu.tunnel_mtu = 575;
        let mut moved = base.clone();
        moved.tunnel_source = Ipv4Addr::new(10, 200, 9, 9);
        let cases = [
            (
                moved,
                ConfigError::TunnelSourceChanged {
                    running: base.tunnel_source,
                    new: Ipv4Addr::new(10, 200, 9, 9),
                },
            ),
            (dup, ConfigError::DuplicateNextHop("h0".into())),
            (
                unknown,
                ConfigError::UnknownNextHop {
                    virtual_host: "web".into(),
                    next_hop: "h9".into(),
                },
            ),
            (
                overlap,
                ConfigError::OverlappingVirtualHosts("web".into(), "inner".into()),
            ),
            (mtu, ConfigError::TunnelMtu(575)),
        ];
        for (c, e) in cases {
            assert_eq!(
                r.handle_control(T0, Control::Reconfigure(Box::new(c))),
                Err(ControlError::Config(e))
            );
        }
        assert_eq!(events(&mut r), []);
        assert_eq!(r.config(), &base);
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0));
    }

    /// Routes a SYN of each flow and returns the next hops chosen.
    fn choices(r: &mut Router, sports: core::ops::Range<u16>, src: Ipv4Addr) -> Vec<Ipv4Addr> {
        sports
            .map(|sport| {
                let (a, _) = send(r, T0, &tcp(src, sport, VIP, 80, SYN));
                match a {
                    Action::Tunnel { next_hop } => next_hop,
                    a => panic!("{a:?}"),
                }
            })
            .collect()
    }

    /// (subnet, client group, (host, cost) candidates, chosen hosts)
    type TestEntry<'a> = (&'a str, Option<&'a str>, Vec<(usize, f64)>, Vec<usize>);

    fn cost_table(generation: u64, entries: Vec<TestEntry<'_>>) -> RouteTable {
        use crate::route_table::{ClientGroup, RouteCandidate, RouteEntry};
        RouteTable {
            generation,
            client_groups: vec![ClientGroup {
                name: "east".into(),
                prefixes: vec!["10.0.1.0/24".parse().unwrap()],
            }],
            entries: entries
                .into_iter()
                .map(|(subnet, group, costs, chosen)| RouteEntry {
                    subnet: subnet.parse().unwrap(),
                    client_group: group.map(str::to_owned),
                    candidates: costs
                        .into_iter()
                        .map(|(i, cost)| RouteCandidate {
                            next_hop: name(i),
                            cost,
                        })
                        .collect(),
                    chosen: chosen.into_iter().map(name).collect(),
                    held_back: Vec::new(),
                })
                .collect(),
        }
    }

    fn install(r: &mut Router, t: RouteTable) {
        r.handle_control(T0, Control::InstallRouteTable(Box::new(t)))
            .unwrap();
    }

    #[test]
    fn cost_policy_follows_the_installed_table_and_only_for_new_flows() {
        let mut r = router(config(Policy::Cost, 3));
        // No table yet: no route, counted.
        assert_eq!(dropped(&mut r, T0, &syn(40000)), DropReason::NoRoute);
        // h1 is cheapest alone: every new flow goes there.
        install(
            &mut r,
            cost_table(
                1,
                vec![(
                    "10.99.0.0/24",
                    None,
                    vec![(0, 5.0), (1, 1.0), (2, 3.0)],
                    vec![1],
                )],
            ),
        );
        assert!(choices(&mut r, 1000..1100, CLIENT)
            .iter()
            .all(|&a| a == host(1)));
        // An established flow stays when the table changes; new flows follow the new table.
        let est = tunnelled(&mut r, T0, &ack(5000));
        install(
            &mut r,
            cost_table(
                2,
                vec![("10.99.0.0/24", None, vec![(0, 1.0), (1, 5.0)], vec![0])],
            ),
        );
        assert_eq!(tunnelled(&mut r, T0, &ack(5000)), est);
        assert!(choices(&mut r, 2000..2100, CLIENT)
            .iter()
            .all(|&a| a == host(0)));
        // The chosen next hop fails its health check: the cheapest eligible candidate takes over.
        set_available(&mut r, 0, false);
        assert!(choices(&mut r, 3000..3100, CLIENT)
            .iter()
            .all(|&a| a == host(1)));
        // No eligible candidate at all: no next hop.
        set_available(&mut r, 1, false);
        assert_eq!(dropped(&mut r, T0, &syn(40001)), DropReason::NoNextHop);
        // A destination outside every entry: no route.
        install(
            &mut r,
            cost_table(3, vec![("10.99.0.128/25", None, vec![(2, 1.0)], vec![2])]),
        );
        assert_eq!(dropped(&mut r, T0, &syn(40002)), DropReason::NoRoute);
        assert_eq!(r.counters().drops(DropReason::NoRoute), 2);
        assert_accounted(&r);
    }

    #[test]
    fn cost_policy_spreads_a_near_equal_band_by_rendezvous_and_steers_client_groups() {
        let mut r = router(config(Policy::Cost, 4));
        install(
            &mut r,
            cost_table(
                1,
                vec![
                    (
                        "10.99.0.0/24",
                        None,
                        vec![(0, 1.0), (1, 1.05), (2, 9.0)],
                        vec![0, 1],
                    ),
                    (
                        "10.99.0.0/24",
                        Some("east"),
                        vec![(3, 1.0), (0, 2.0)],
                        vec![3],
                    ),
                ],
            ),
        );
        let west = choices(&mut r, 1000..3000, CLIENT);
        let on = |v: &[Ipv4Addr], h: usize| v.iter().filter(|&&a| a == host(h)).count();
        let (a, b) = (on(&west, 0), on(&west, 1));
        assert_eq!(a + b, 2000, "only the chosen band");
        assert!(
            (900..=1100).contains(&a),
            "band shared about evenly: {a} / {b}"
        );
        let east = choices(&mut r, 1000..1100, Ipv4Addr::new(10, 0, 1, 7));
        assert_eq!(on(&east, 3), 100, "client group east has its own entry");
        // Another router with the same seed and table picks the same next hop for each flow.
        let mut r2 = router(config(Policy::Cost, 4));
        install(
            &mut r2,
            cost_table(
                1,
                vec![(
                    "10.99.0.0/24",
                    None,
                    vec![(0, 1.0), (1, 1.05), (2, 9.0)],
                    vec![0, 1],
                )],
            ),
        );
        assert_eq!(choices(&mut r2, 1000..3000, CLIENT), west);
        // A table naming a group that does not exist is refused; the old one stays.
        let mut bad = cost_table(
            2,
            vec![("10.99.0.0/24", Some("nope"), vec![(0, 1.0)], vec![0])],
        );
        bad.client_groups.clear();
        assert!(r
            .handle_control(T0, Control::InstallRouteTable(Box::new(bad)))
            .is_err());
        assert_eq!(r.route_table().unwrap().generation, 1);
    }

    #[test]
    fn held_back_candidates_take_no_fallback_flows() {
        let mut r = router(config(Policy::Cost, 3));
        // Band: h0. h1 is cheaper than h2 but held back (an overloaded child of a best-effort
        // subnet): when h0 fails, h2 takes the flows, not h1.
        let mut t = cost_table(
            1,
            vec![(
                "10.99.0.0/24",
                None,
                vec![(0, 1.0), (1, 2.0), (2, 3.0)],
                vec![0],
            )],
        );
        t.entries[0].held_back = vec![name(1)];
        install(&mut r, t);
        assert!(choices(&mut r, 1000..1050, CLIENT)
            .iter()
            .all(|&a| a == host(0)));
        set_available(&mut r, 0, false);
        assert!(choices(&mut r, 2000..2050, CLIENT)
            .iter()
            .all(|&a| a == host(2)));
        set_available(&mut r, 2, false);
        assert_eq!(dropped(&mut r, T0, &syn(40000)), DropReason::NoNextHop);
    }

    #[test]
    fn steering_rules_restrict_new_flows_by_port_and_source_under_any_policy() {
        for policy in [Policy::Maglev, Policy::RoundRobin, Policy::Cost] {
            let mut c = config(policy, 4);
            c.virtual_hosts[0].rules = vec![
                SteeringRule {
                    dst_ports: vec![(443, 443)],
                    next_hops: vec![name(2), name(3)],
                    ..SteeringRule::default()
                },
                SteeringRule {
                    src_prefixes: vec!["10.0.7.0/24".parse().unwrap()],
                    next_hops: vec![name(0)],
                    ..SteeringRule::default()
                },
            ];
            let mut r = router(c);
            install(
                &mut r,
                cost_table(
                    1,
                    vec![(
                        "10.99.0.0/24",
                        None,
                        vec![(0, 1.0), (1, 1.0), (2, 2.0), (3, 3.0)],
                        vec![0, 1],
                    )],
                ),
            );
            let pick = |r: &mut Router, src: Ipv4Addr, sport: u16, dport: u16| match send(
                r,
                T0,
                &tcp(src, sport, VIP, dport, SYN),
            )
            .0
            {
                Action::Tunnel { next_hop } => next_hop,
                a => panic!("{policy}: {a:?}"),
            };
            let https: HashSet<Ipv4Addr> =
                (1000..1200).map(|p| pick(&mut r, CLIENT, p, 443)).collect();
            let lab: HashSet<Ipv4Addr> = (1000..1200)
                .map(|p| pick(&mut r, Ipv4Addr::new(10, 0, 7, 9), p, 80))
                .collect();
            let rest: HashSet<Ipv4Addr> =
                (1000..1200).map(|p| pick(&mut r, CLIENT, p, 80)).collect();
            match policy {
                // Cost: inside the rule, the band (h0, h1) is not allowed; the cheapest allowed
                // candidate (h2) takes the flows.
                Policy::Cost => assert_eq!(https, HashSet::from([host(2)]), "{policy}"),
                _ => assert_eq!(https, HashSet::from([host(2), host(3)]), "{policy}"),
            }
            assert_eq!(lab, HashSet::from([host(0)]), "{policy}");
            match policy {
                Policy::Cost => assert_eq!(rest, HashSet::from([host(0), host(1)]), "{policy}"),
                _ => assert_eq!(rest.len(), 4, "{policy}"),
            }
            // A rule's next hop failing: the rule's other next hop takes its flows.
            set_available(&mut r, 2, false);
            assert!(
                (2000..2100).all(|p| pick(&mut r, CLIENT, p, 443) == host(3)),
                "{policy}"
            );
        }
    }

    #[test]
    fn maglev_host_changes_remap_few_new_flows_and_no_established_one() {
        const FLOWS: u16 = 2000;
        // New flows are sampled more finely (sampling noise ~0.2 % at 20,000) so that the
        // bound below can be Maglev's own, 1/N + 1 %.
        const NEW_FLOWS: u16 = 20_000;
        let ten = config(Policy::Maglev, 10);
        let eleven = config(Policy::Maglev, 11);
        let mut nine = ten.clone();
        nine.next_hops.retain(|n| n.name != "h3");

        // Established flows on a router that then gains a host, then loses one.
        let mut r = router(ten.clone());
        let before = choices(&mut r, 10000..10000 + FLOWS, CLIENT);
        for sport in 10000..10000 + FLOWS {
            tunnelled(&mut r, T0, &ack(sport));
        }
        for c in [&eleven, &nine] {
            reconfigure(&mut r, c);
            for (k, sport) in (10000..10000 + FLOWS).enumerate() {
                assert_eq!(
                    tunnelled(&mut r, T0, &ack(sport)),
                    before[k],
                    "established flow moved"
                );
            }
        }
        assert_eq!(r.counters().flows_rerouted, 0);

        // New flows: what the old and the new host sets choose for the same 5-tuples.
        let client = Ipv4Addr::new(10, 7, 7, 7);
        let ports = 20000..20000 + NEW_FLOWS;
        let old = choices(&mut router(ten.clone()), ports.clone(), client);
        let added = choices(&mut router(eleven), ports.clone(), client);
        let removed = choices(&mut router(nine), ports, client);
        let n = NEW_FLOWS as usize;
        let moved: Vec<usize> = (0..n).filter(|&k| old[k] != added[k]).collect();
        let to_new = moved.iter().filter(|&&k| added[k] == host(10)).count();
        // About 1/11 of the flows belong to the new host; Maglev moves only a few more: at most
        // 1/N + 1 % of all new flows change host when 1 of N = 11 hosts is added.
        assert!(to_new > n / 11 / 2, "the new host gets its share: {to_new}");
        assert!(
            moved.len() - to_new <= n / 100,
            "{} flows moved between old hosts",
            moved.len() - to_new
        );
        let bound = n as f64 * (1.0 / 11.0 + 0.01);
        assert!(
            moved.len() as f64 <= bound,
            "{} of {n} flows moved, bound 1/11 + 1 % = {bound:.0}",
            moved.len()
        );
        // Removing h3 moves its flows and only a few others.
        let from_h3 = (0..n).filter(|&k| old[k] == host(3)).count();
        let others_moved = (0..n)
            .filter(|&k| old[k] != host(3) && old[k] != removed[k])
            .count();
        assert!(from_h3 > 0);
        assert!((0..n).all(|k| removed[k] != host(3)));
        assert!(
            others_moved <= n / 100,
            "{others_moved} flows not on h3 moved"
        );
        println!(
            "maglev: 1 of 11 hosts added: {:.2} % of new flows moved ({:.2} % to the new host); \
             1 of 10 removed: {:.2} % of the others moved",
            moved.len() as f64 * 100.0 / n as f64,
            to_new as f64 * 100.0 / n as f64,
            others_moved as f64 * 100.0 / n as f64
        );
    }

    #[test]
    fn maglev_choice_does_not_depend_on_next_hop_order() {
        let c = config(Policy::Maglev, 6);
        let mut reversed = c.clone();
        reversed.next_hops.reverse();
        let a = choices(&mut router(c), 30000..30500, CLIENT);
        let b = choices(&mut router(reversed), 30000..30500, CLIENT);
        assert_eq!(a, b);
        assert!(a.iter().collect::<HashSet<_>>().len() == 6);
    }

    // ---- UDP -----------------------------------------------------------------------------

    #[test]
    fn udp_flows_are_pinned_by_default() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let d = udp(CLIENT, 5000, VIP, 53, b"query");
        assert_eq!(tunnelled(&mut r, T0, &d), host(0));
        assert_eq!(tunnelled(&mut r, T0 + ms(10), &d), host(0));
        assert_eq!(tunnelled(&mut r, T0 + ms(20), &d), host(0));
        let key = FlowKey::new(CLIENT, VIP, 5000, 53, 17);
        let e = r.flows.get(&key).unwrap();
        assert_eq!((e.state(), e.packets()), (FlowState::Udp, 3));
        assert_eq!(
            tunnelled(&mut r, T0, &udp(CLIENT, 5001, VIP, 53, b"query")),
            host(1)
        );
        assert_eq!(r.flow_count(), 2);
    }

    #[test]
    fn udp_per_datagram_spreads_one_five_tuple_over_hosts() {
        let mut c = config(Policy::RoundRobin, 3);
        c.virtual_hosts[0].udp = UdpMode::PerDatagram;
        let mut r = router(c);
        let d = udp(CLIENT, 5000, VIP, 53, b"query");
        let chosen: Vec<_> = (0..6).map(|_| tunnelled(&mut r, T0, &d)).collect();
        assert_eq!(
            chosen,
            [host(0), host(1), host(2), host(0), host(1), host(2)]
        );
        assert_eq!(r.flow_count(), 0);
        assert_eq!(r.counters().flows_created, 0);
        assert_eq!(
            [0, 1, 2].map(|i| next_hop(&r, &name(i)).selections),
            [2, 2, 2]
        );
        // TCP to the same virtual host is still pinned.
        let h = tunnelled(&mut r, T0, &syn(40000));
        assert_eq!(tunnelled(&mut r, T0, &ack(40000)), h);
        assert_eq!(r.flow_count(), 1);
    }

    #[test]
    fn udp_mode_names_round_trip_and_drop_labels_are_distinct() {
        for m in [UdpMode::Pin, UdpMode::PerDatagram] {
            assert_eq!(m.as_str().parse::<UdpMode>(), Ok(m));
        }
        assert!("sticky".parse::<UdpMode>().is_err());
        let names: HashSet<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names.len(),
            DropReason::ALL.len(),
            "metric labels are distinct"
        );
    }

    // ---- fragments -----------------------------------------------------------------------

    /// A 3000-byte UDP datagram from `sport` (IP total length 3000) in three fragments of id
    /// `ident`: 1480, 1480 and 20 payload bytes.
    fn three_fragments(sport: u16, ident: u16) -> Vec<Vec<u8>> {
        let datagram = udp(CLIENT, sport, VIP, 4789, &[0xab; 2972]);
        assert_eq!(datagram.len(), 3000);
        let f = fragment(&datagram, ident, 1480);
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [1500, 1500, 40]);
        f
    }

    #[test]
    fn fragments_of_a_datagram_all_go_to_one_host() {
        let mut r = router(config(Policy::RoundRobin, 3));
        assert_eq!(
            tunnelled(&mut r, T0, &udp(CLIENT, 6000, VIP, 4789, b"x")),
            host(0)
        );
        let f = three_fragments(6001, 0x4242);
        let h = tunnelled(&mut r, T0, &f[0]);
        assert_eq!(h, host(1));
        assert_eq!(tunnelled(&mut r, T0 + ms(1), &f[1]), h);
        assert_eq!(tunnelled(&mut r, T0 + ms(2), &f[2]), h);
        // The first fragment was classified by its ports: the flow is the datagram's 5-tuple.
        assert_eq!(
            r.flow_next_hop(&FlowKey::new(CLIENT, VIP, 6001, 4789, 17))
                .unwrap()
                .address,
            h
        );
        assert_eq!(
            tunnelled(&mut r, T0 + ms(3), &udp(CLIENT, 6001, VIP, 4789, b"y")),
            h
        );
        let c = r.counters();
        assert_eq!(
            (c.fragments_routed, c.fragments_held, c.packets_tunneled),
            (2, 0, 5)
        );
        assert!(transmits(&mut r).is_empty());
        // A second datagram of the same flow (new id) follows the flow too.
        for (k, frag) in three_fragments(6001, 0x4243).iter().enumerate() {
            assert_eq!(tunnelled(&mut r, T0 + ms(4 + k as u64), frag), h);
        }
        assert_accounted(&r);
    }

    #[test]
    fn fragments_ahead_of_the_first_are_held_then_released_to_its_host() {
        let mut r = router(config(Policy::RoundRobin, 3));
        tunnelled(&mut r, T0, &udp(CLIENT, 6000, VIP, 4789, b"x")); // h0 taken: the next is h1
        let f = three_fragments(6001, 0x4242);
        let other = three_fragments(6002, 0x5555);
        // The driver reads into big reusable buffers; a held fragment must not shrink them.
        for frag in [&f[2], &f[1], &other[1]] {
            let mut b = PacketBuf::new(9000);
            let room = b.read_slot().len();
            b.read_slot()[..frag.len()].copy_from_slice(frag);
            b.set_len(frag.len());
            assert_eq!(r.handle_packet(T0, &mut b), Action::Held);
            assert!(b.is_empty());
            assert_eq!(b.headroom(), slr_wire::buf::DEFAULT_HEADROOM);
            assert_eq!(
                b.read_slot().len(),
                room,
                "the driver's buffer keeps its room"
            );
        }
        assert!(transmits(&mut r).is_empty());
        assert_eq!(r.counters().fragments_held, 3);
        assert_accounted(&r);

        assert_eq!(tunnelled(&mut r, T0 + ms(1), &f[0]), host(1));
        let t = transmits(&mut r);
        assert_eq!(
            t.len(),
            2,
            "both held fragments of this datagram, not the other's"
        );
        for (tx, expected) in t.iter().zip([&f[2], &f[1]]) {
            assert_eq!(tx.destination, Destination::Tunnel(host(1)));
            assert_eq!(check_outer(tx.buf.as_ref(), host(1)), &expected[..]);
        }
        let c = r.counters();
        assert_eq!(
            (c.fragments_held, c.fragments_routed, c.packets_tunneled),
            (3, 2, 4)
        );
        // Released fragments count on the next hop and the virtual host like any other packet.
        assert_eq!(next_hop(&r, "h1").packets, 3);
        assert_eq!(next_hop(&r, "h1").bytes, (1520 + 1520 + 60) as u64);
        assert_eq!(r.virtual_hosts()[0].packets, 4);
        assert_eq!(r.held_count, 1);
        assert_accounted(&r);
        // Later fragments of the released datagram go straight through.
        assert_eq!(tunnelled(&mut r, T0 + ms(2), &f[2]), host(1));
    }

    #[test]
    fn orphan_fragments_expire_and_are_counted() {
        let mut r = router(config(Policy::RoundRobin, 3));
        assert_eq!(r.poll_timeout(), None);
        let f = three_fragments(6001, 0x4242);
        assert_eq!(send(&mut r, T0, &f[1]).0, Action::Held);
        assert_eq!(send(&mut r, T0 + ms(100), &f[2]).0, Action::Held);
        let deadline = T0 + FRAGMENT_TIMEOUT;
        assert_eq!(r.poll_timeout(), Some(deadline));
        r.handle_timeout(deadline);
        let c = r.counters();
        assert_eq!(c.drops(DropReason::FragmentOrphan), 2);
        assert_eq!(r.held_count, 0);
        assert_eq!(r.poll_timeout(), None);
        assert_accounted(&r);
        // The first fragment, too late: routed on its own, nothing is released.
        tunnelled(&mut r, deadline + ms(1000), &f[0]);
        assert!(transmits(&mut r).is_empty());
        assert_accounted(&r);
    }

    #[test]
    fn orphans_are_kept_until_the_fragment_timeout() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let f = three_fragments(6001, 0x4242);
        let just_before = Instant::from_micros((T0 + FRAGMENT_TIMEOUT).as_micros() - 1);
        assert_eq!(send(&mut r, T0, &f[1]).0, Action::Held);
        r.handle_timeout(just_before);
        assert_eq!(r.counters().drops(DropReason::FragmentOrphan), 0);
        assert_eq!(tunnelled(&mut r, just_before, &f[0]), host(0));
        assert_eq!(transmits(&mut r).len(), 1);
        // The first fragment's choice outlives the held fragments' deadline...
        r.handle_timeout(T0 + FRAGMENT_TIMEOUT);
        assert_eq!(r.counters().drops_total(), 0);
        assert_eq!(tunnelled(&mut r, T0 + FRAGMENT_TIMEOUT, &f[2]), host(0));
        // ...and is forgotten after its own.
        r.handle_timeout(just_before + FRAGMENT_TIMEOUT);
        assert!(r.fragments.is_empty());
        assert_eq!(
            send(&mut r, just_before + FRAGMENT_TIMEOUT, &f[2]).0,
            Action::Held
        );
        assert_accounted(&r);
    }

    #[test]
    fn held_fragments_are_capped() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let firsts: Vec<Vec<u8>> = (0..MAX_HELD_FRAGMENTS as u16 + 1)
            .map(|ident| {
                let f = three_fragments(7000, ident);
                assert_eq!(
                    send(&mut r, T0, &f[2]).0,
                    if (ident as usize) < MAX_HELD_FRAGMENTS {
                        Action::Held
                    } else {
                        Action::Drop(DropReason::FragmentOverflow)
                    }
                );
                f[0].clone()
            })
            .collect();
        assert_eq!(r.counters().drops(DropReason::FragmentOverflow), 1);
        assert_eq!(r.held_count, MAX_HELD_FRAGMENTS);
        // A first fragment releases its datagram's fragment and makes room.
        tunnelled(&mut r, T0, &firsts[0]);
        assert_eq!(transmits(&mut r).len(), 1);
        assert_eq!(
            send(&mut r, T0, &three_fragments(7000, 9999)[1]).0,
            Action::Held
        );
        assert_accounted(&r);
    }

    #[test]
    fn nested_tunnel_is_refused_even_in_fragments() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let inner = udp(CLIENT, 1, VIP, 2, &[7; 100]);
        let nested = Ip::new(CLIENT, VIP, Protocol::IpIp, inner).build();
        assert_eq!(dropped(&mut r, T0, &nested), DropReason::NestedTunnel);
        for frag in fragment(&nested, 77, 64) {
            assert_eq!(dropped(&mut r, T0, &frag), DropReason::NestedTunnel);
        }
        assert_eq!(r.counters().drops(DropReason::NestedTunnel), 3);
        assert_eq!(r.held_count, 0);
    }

    // ---- MTU -----------------------------------------------------------------------------

    /// A TCP segment from the client to the VIP with DF (or not) and `len` bytes in all.
    fn big_tcp(sport: u16, len: usize, df: bool) -> Vec<u8> {
        let seg = tcp_segment(CLIENT, sport, VIP, 80, ACK, &[], &vec![0x5a; len - 40]);
        let ip = Ip::new(CLIENT, VIP, Protocol::Tcp, seg);
        if df { ip.df() } else { ip }.build()
    }

    #[track_caller]
    fn check_frag_needed(t: &Transmit, original: &[u8], mtu: u16) {
        assert_eq!(t.destination, Destination::Local);
        let b = t.buf.as_ref();
        let ip = Ipv4Packet::new_checked(b).expect("ICMP datagram parses");
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len() as usize, b.len());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.protocol()),
            (VIP, CLIENT, Protocol::Icmp)
        );
        assert_eq!(ip.frag_offset(), 0);
        assert!(!ip.dont_frag() && !ip.more_frags() && !ip.is_fragment());
        assert!(ip.ttl() > 0);
        assert!(b.len() <= icmp::MAX_ERROR_DATAGRAM);
        let m = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(m.verify_checksum());
        assert_eq!(
            (m.msg_type(), m.code()),
            (icmp::DST_UNREACHABLE, icmp::CODE_FRAG_NEEDED)
        );
        assert_eq!(m.rest_of_header(), u32::from(mtu));
        let quoted = original.len().min(icmp::MAX_ERROR_DATAGRAM - 28);
        assert_eq!(
            m.data(),
            &original[..quoted],
            "quotes the original header and data"
        );
    }

    #[test]
    fn df_packet_that_does_not_fit_the_tunnel_gets_frag_needed() {
        let mut r = router(config(Policy::RoundRobin, 2));
        tunnelled(&mut r, T0, &syn(40000));
        // 1480 + 20 = 1500 fits exactly.
        let fits = big_tcp(40000, 1480, true);
        let (a, b) = send(&mut r, T0, &fits);
        assert_eq!(a, Action::Tunnel { next_hop: host(0) });
        assert_eq!(b.len(), 1500);
        assert!(Ipv4Packet::new_unchecked(b.as_ref()).dont_frag());
        // One byte more does not.
        let big = big_tcp(40000, 1481, true);
        assert_eq!(dropped(&mut r, T0, &big), DropReason::TooBig);
        let t = transmits(&mut r);
        assert_eq!(t.len(), 1);
        check_frag_needed(&t[0], &big, 1480);
        assert_eq!(r.counters().icmp_frag_needed_sent, 1);
        assert_eq!(r.counters().drops(DropReason::TooBig), 1);

        // The same for a packet that came through a parent's tunnel, with a smaller tunnel MTU.
        let mut c = config(Policy::RoundRobin, 2);
        c.tunnel_mtu = 1400;
        let mut r = router(c);
        let big = big_tcp(40001, 1381, true);
        let mut b = PacketBuf::from_slice(&big);
        ipip::encapsulate(&mut b, PARENT, SOURCE, 64, 1).unwrap();
        assert_eq!(
            r.handle_tunnelled_packet(T0, &mut b),
            Action::Drop(DropReason::TooBig)
        );
        let t = transmits(&mut r);
        let mut decremented = big.clone();
        decremented[8] -= 1;
        fix_ip_checksum(&mut decremented);
        check_frag_needed(&t[0], &decremented, 1380);
        assert_accounted(&r);
    }

    #[test]
    fn frag_needed_is_rate_limited() {
        let mut c = config(Policy::RoundRobin, 2);
        c.icmp_rate_limit = 2;
        let mut r = router(c);
        let big = big_tcp(40000, 1600, true);
        for _ in 0..3 {
            assert_eq!(dropped(&mut r, T0, &big), DropReason::TooBig);
        }
        assert_eq!(transmits(&mut r).len(), 2);
        let c = r.counters();
        assert_eq!(
            (
                c.icmp_frag_needed_sent,
                c.icmp_rate_limited,
                c.drops(DropReason::TooBig)
            ),
            (2, 1, 3)
        );
        // Half a second later one token has come back.
        assert_eq!(dropped(&mut r, T0 + ms(500), &big), DropReason::TooBig);
        assert_eq!(dropped(&mut r, T0 + ms(500), &big), DropReason::TooBig);
        assert_eq!(transmits(&mut r).len(), 1);
        let c = r.counters();
        assert_eq!((c.icmp_frag_needed_sent, c.icmp_rate_limited), (3, 2));
        // A long pause refills no more than the burst.
        for _ in 0..3 {
            dropped(&mut r, T0 + Duration::from_secs(100), &big);
        }
        assert_eq!(transmits(&mut r).len(), 2);
        assert_accounted(&r);
    }

    #[test]
    fn big_packet_without_df_is_tunnelled() {
        let mut r = router(config(Policy::RoundRobin, 2));
        let big = big_tcp(40000, 1500, false);
        let (a, b) = send(&mut r, T0, &big);
        assert_eq!(a, Action::Tunnel { next_hop: host(0) });
        assert_eq!(b.len(), 1520);
        assert!(
            !Ipv4Packet::new_unchecked(b.as_ref()).dont_frag(),
            "the path may fragment it"
        );
        assert_eq!(check_outer(b.as_ref(), host(0)), &big[..]);
        assert!(transmits(&mut r).is_empty());
        assert_eq!(r.counters().bytes_tunneled, 1520);
    }

    fn syn_with_options(sport: u16, flags: u8, options: &[u8]) -> Vec<u8> {
        Ip::new(
            CLIENT,
            VIP,
            Protocol::Tcp,
            tcp_segment(CLIENT, sport, VIP, 80, flags, options, &[]),
        )
        .df()
        .build()
    }

    fn inner_mss(b: &PacketBuf) -> Option<u16> {
        let inner = &b.as_ref()[20..];
        assert!(
            transport_checksum_ok(inner),
            "TCP checksum verifies with the pseudo-header"
        );
        let ip = Ipv4Packet::new_checked(inner).unwrap();
        assert!(ip.verify_checksum());
        TcpPacket::new_checked(ip.payload()).unwrap().mss()
    }

    #[test]
    fn mss_of_syns_is_clamped_and_the_checksum_stays_valid() {
        let mut c = config(Policy::RoundRobin, 2);
        c.mss_clamp = Some(1400);
        let mut r = router(c);
        let m = mss_option(1460);
        // MSS first (even offset), after a NOP (odd offset), and with a timestamp before it.
        let layouts: [Vec<u8>; 3] = [
            [&m[..], &[1, 1, 1, 0]].concat(),
            [&[1][..], &m, &[1, 1, 0]].concat(),
            [&[1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8][..], &m].concat(),
        ];
        for (k, opts) in layouts.iter().enumerate() {
            let p = syn_with_options(40000 + k as u16, SYN, opts);
            assert!(transport_checksum_ok(&p));
            let (a, b) = send(&mut r, T0, &p);
            assert!(matches!(a, Action::Tunnel { .. }));
            assert_eq!(inner_mss(&b), Some(1400), "layout {k}");
            // Nothing else changed.
            let inner = &b.as_ref()[20..];
            let differing: Vec<usize> = (0..p.len()).filter(|&i| inner[i] != p[i]).collect();
            assert!(
                differing.iter().all(|&i| (36..38).contains(&i) || i >= 40),
                "{differing:?}"
            );
        }
        assert_eq!(r.counters().mss_clamped, 3);
        // A smaller MSS, or a segment that is no SYN, is left alone.
        for p in [
            syn_with_options(41000, SYN, &[&mss_option(1300)[..], &[1, 1, 1, 0]].concat()),
            syn_with_options(41001, ACK, &[&m[..], &[1, 1, 1, 0]].concat()),
        ] {
            let (_, b) = send(&mut r, T0, &p);
            assert_eq!(&b.as_ref()[20..], &p[..]);
        }
        assert_eq!(r.counters().mss_clamped, 3);
        // Clamping off: untouched.
        let mut r = router(config(Policy::RoundRobin, 2));
        let p = syn_with_options(40000, SYN, &[&m[..], &[1, 1, 1, 0]].concat());
        assert_eq!(tunnelled(&mut r, T0, &p), host(0));
        assert_eq!(r.counters().mss_clamped, 0);
    }

    #[test]
    fn link_padding_is_not_tunnelled() {
        let mut r = router(config(Policy::RoundRobin, 2));
        let p = syn(40000);
        let padded = [&p[..], &[0u8; 6]].concat();
        let (a, b) = send(&mut r, T0, &padded);
        assert_eq!(a, Action::Tunnel { next_hop: host(0) });
        assert_eq!(check_outer(b.as_ref(), host(0)), &p[..]);
    }

    // ---- ICMP ----------------------------------------------------------------------------

    #[test]
    fn icmp_error_about_a_host_reply_goes_to_the_host_owning_the_flow() {
        let mut r = router(config(Policy::RoundRobin, 3));
        for sport in 40000..40003 {
            tunnelled(&mut r, T0, &syn(sport));
            tunnelled(&mut r, T0, &ack(sport));
        }
        assert_eq!(
            tunnelled(&mut r, T0, &udp(CLIENT, 5353, VIP, 53, b"q")),
            host(0)
        );
        let flows = r.flow_count();

        // The host's replies come from the VIP; a router on the way back reports a problem.
        let reply = |sport: u16| {
            Ip::new(
                VIP,
                CLIENT,
                Protocol::Tcp,
                tcp_segment(VIP, 80, CLIENT, sport, ACK, &[], &[0x33; 1400]),
            )
            .df()
            .build()
        };
        let cases: [(Vec<u8>, Ipv4Addr); 5] = [
            // The whole reply quoted (as much as fits), frag-needed: the host must lower its MSS.
            (
                icmp_error(REPORTER, VIP, 3, 4, &reply(40001)[..548]),
                host(1),
            ),
            // Only the IP header and 8 bytes (RFC 792): must be accepted.
            (
                icmp_error(REPORTER, VIP, 3, 4, &reply(40002)[..28]),
                host(2),
            ),
            (
                icmp_error(REPORTER, VIP, icmp::TIME_EXCEEDED, 0, &reply(40000)[..28]),
                host(0),
            ),
            (
                icmp_error(REPORTER, VIP, icmp::PARAM_PROBLEM, 0, &reply(40001)[..60]),
                host(1),
            ),
            (
                icmp_error(REPORTER, VIP, 3, 3, &udp(VIP, 53, CLIENT, 5353, b"answer")),
                host(0),
            ),
        ];
        for (k, (err, h)) in cases.iter().enumerate() {
            assert_eq!(tunnelled(&mut r, T0, err), *h, "case {k}");
        }
        assert_eq!(r.counters().icmp_errors_routed, 5);
        assert_eq!(r.flow_count(), flows, "errors create no flow");

        // An error about a flow nobody knows.
        let unknown = icmp_error(REPORTER, VIP, 3, 4, &reply(49999)[..28]);
        assert_eq!(dropped(&mut r, T0, &unknown), DropReason::IcmpNoFlow);
        assert_eq!(r.counters().icmp_errors_routed, 5);
    }

    #[test]
    fn icmp_error_that_does_not_fit_the_tunnel_is_dropped_quietly() {
        let mut c = config(Policy::RoundRobin, 3);
        c.tunnel_mtu = 576;
        let mut r = router(c);
        tunnelled(&mut r, T0, &syn(40000));
        let reply = Ip::new(
            VIP,
            CLIENT,
            Protocol::Tcp,
            tcp_segment(VIP, 80, CLIENT, 40000, ACK, &[], &[1; 600]),
        )
        .build();
        let err = Ip::new(
            REPORTER,
            VIP,
            Protocol::Icmp,
            icmp_message(3, 4, 1300, &reply[..560]),
        )
        .df()
        .build();
        assert_eq!(dropped(&mut r, T0, &err), DropReason::TooBig);
        assert_eq!(r.counters().icmp_errors_routed, 0);
        // No ICMP error about an ICMP error (RFC 1122 3.2.2).
        assert!(transmits(&mut r).is_empty());
        assert_eq!(r.counters().icmp_frag_needed_sent, 0);
    }

    #[test]
    fn echo_requests_to_the_vip_are_pinned_by_identifier() {
        let mut r = router(config(Policy::RoundRobin, 3));
        for seq in 1..5 {
            assert_eq!(
                tunnelled(
                    &mut r,
                    T0 + ms(seq as u64 * 1000),
                    &echo_request(CLIENT, VIP, 7, seq)
                ),
                host(0)
            );
        }
        assert_eq!(
            tunnelled(&mut r, T0, &echo_request(CLIENT, VIP, 8, 1)),
            host(1)
        );
        let e = r.flows.get(&FlowKey::new(CLIENT, VIP, 7, 0, 1)).unwrap();
        assert_eq!((e.state(), e.packets()), (FlowState::Other, 4));
        assert_eq!(r.flow_count(), 2);
        let reply = Ip::new(
            CLIENT,
            VIP,
            Protocol::Icmp,
            icmp_message(icmp::ECHO_REPLY, 0, 0, b"x"),
        )
        .build();
        assert_eq!(dropped(&mut r, T0, &reply), DropReason::UnsupportedIcmp);
    }

    // ---- malformed input -----------------------------------------------------------------

    fn with(mut p: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        edit(&mut p);
        p
    }

    fn with_fixed_checksum(p: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        with(p, |p| {
            edit(p);
            fix_ip_checksum(p);
        })
    }

    /// Packets `handle_packet` drops for what they are, each with its reason, given a router
    /// whose one flow is that of `syn(40000)` (drops that need more state are made in
    /// `every_drop_reason_of_handle_packet_is_produced_and_counted` itself).
    fn malformed_packets() -> Vec<(&'static str, Vec<u8>, DropReason)> {
        use DropReason as D;
        let good = udp(CLIENT, 5000, VIP, 53, b"hello");
        let tcp_good = ack(40001);
        let reply = tcp(VIP, 80, CLIENT, 40000, ACK);
        let mut ipv6 = vec![0u8; 48];
        ipv6[0] = 0x60;
        ipv6[4..6].copy_from_slice(&8u16.to_be_bytes());
        ipv6[6] = 17;
        ipv6[7] = 64;
        let first_tcp_fragment = {
            let mut ip = Ip::new(
                CLIENT,
                VIP,
                Protocol::Tcp,
                vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1],
            );
            ip.more_frags = true;
            ip.build()
        };
        vec![
            ("empty", vec![], D::Truncated),
            ("19 bytes", good[..19].to_vec(), D::Truncated),
            (
                "total length beyond the buffer",
                with_fixed_checksum(good.clone(), |p| {
                    p[2..4].copy_from_slice(&200u16.to_be_bytes())
                }),
                D::Truncated,
            ),
            ("version 6", ipv6, D::NotIpv4),
            (
                "version 6 in a v4 header",
                with_fixed_checksum(good.clone(), |p| p[0] = 0x65),
                D::NotIpv4,
            ),
            (
                "IHL 4",
                with_fixed_checksum(good.clone(), |p| p[0] = 0x44),
                D::BadHeaderLen,
            ),
            (
                "IHL 0",
                with(good.clone(), |p| p[0] = 0x40),
                D::BadHeaderLen,
            ),
            (
                "IHL beyond the buffer",
                with(good.clone(), |p| p[0] = 0x4f),
                D::BadHeaderLen,
            ),
            (
                "total length below the header",
                with_fixed_checksum(good.clone(), |p| {
                    p[2..4].copy_from_slice(&19u16.to_be_bytes())
                }),
                D::BadTotalLen,
            ),
            (
                "bad checksum",
                with(good.clone(), |p| p[10] ^= 0xff),
                D::BadChecksum,
            ),
            (
                "TTL 0",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Udp,
                    udp_datagram(CLIENT, 1, VIP, 2, b""),
                )
                .ttl(0)
                .build(),
                D::TtlExpired,
            ),
            (
                "LSRR",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Udp,
                    udp_datagram(CLIENT, 1, VIP, 2, b""),
                )
                .options(&[131, 7, 4, 10, 0, 0, 9])
                .build(),
                D::SourceRoute,
            ),
            (
                "SSRR after a NOP",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Udp,
                    udp_datagram(CLIENT, 1, VIP, 2, b""),
                )
                .options(&[1, 137, 7, 4, 10, 0, 0, 9])
                .build(),
                D::SourceRoute,
            ),
            (
                "LSRR after a timestamp",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Udp,
                    udp_datagram(CLIENT, 1, VIP, 2, b""),
                )
                .options(&[68, 8, 5, 0, 0, 0, 0, 0, 131, 7, 4, 10, 0, 0, 9])
                .build(),
                D::SourceRoute,
            ),
            (
                "not a virtual host",
                udp(CLIENT, 5000, NOT_A_VIP, 53, b"x"),
                D::NoVirtualHost,
            ),
            (
                "TCP data offset 4",
                with(tcp_good.clone(), |p| p[32] = 4 << 4),
                D::BadTransportHeader,
            ),
            (
                "TCP data offset beyond the packet",
                with(tcp_good.clone(), |p| p[32] = 15 << 4),
                D::BadTransportHeader,
            ),
            (
                "TCP cut short",
                Ip::new(CLIENT, VIP, Protocol::Tcp, tcp_good[20..30].to_vec()).build(),
                D::BadTransportHeader,
            ),
            (
                "first TCP fragment without flags",
                first_tcp_fragment,
                D::BadTransportHeader,
            ),
            (
                "UDP length 7",
                with(good.clone(), |p| {
                    p[24..26].copy_from_slice(&7u16.to_be_bytes())
                }),
                D::BadTransportHeader,
            ),
            (
                "UDP length beyond the packet",
                with(good.clone(), |p| {
                    p[24..26].copy_from_slice(&200u16.to_be_bytes())
                }),
                D::BadTransportHeader,
            ),
            (
                "UDP cut short",
                Ip::new(CLIENT, VIP, Protocol::Udp, vec![0; 6]).build(),
                D::BadTransportHeader,
            ),
            (
                "IP-in-IP to a virtual host",
                Ip::new(CLIENT, VIP, Protocol::IpIp, good.clone()).build(),
                D::NestedTunnel,
            ),
            (
                "echo reply",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Icmp,
                    icmp_message(icmp::ECHO_REPLY, 0, 0, b""),
                )
                .build(),
                D::UnsupportedIcmp,
            ),
            (
                "timestamp request",
                Ip::new(
                    CLIENT,
                    VIP,
                    Protocol::Icmp,
                    icmp_message(13, 0, 0, &[0; 12]),
                )
                .build(),
                D::UnsupportedIcmp,
            ),
            (
                "ICMP cut short",
                Ip::new(CLIENT, VIP, Protocol::Icmp, vec![3, 4, 0, 0]).build(),
                D::IcmpMalformed,
            ),
            (
                "error quoting 10 bytes",
                icmp_error(REPORTER, VIP, 3, 4, &reply[..10]),
                D::IcmpMalformed,
            ),
            (
                "error quoting an IPv6 header",
                icmp_error(
                    REPORTER,
                    VIP,
                    3,
                    4,
                    &with(reply.clone(), |p| p[0] = 0x60)[..28],
                ),
                D::IcmpMalformed,
            ),
            (
                "error quoting IHL 4",
                icmp_error(
                    REPORTER,
                    VIP,
                    3,
                    4,
                    &with(reply.clone(), |p| p[0] = 0x44)[..28],
                ),
                D::IcmpMalformed,
            ),
            (
                "error quoting IHL beyond the quote",
                icmp_error(
                    REPORTER,
                    VIP,
                    3,
                    4,
                    &with(reply.clone(), |p| p[0] = 0x4f)[..28],
                ),
                D::IcmpMalformed,
            ),
            (
                "error quoting no ports",
                icmp_error(REPORTER, VIP, 3, 4, &reply[..22]),
                D::IcmpMalformed,
            ),
            (
                "error about an unknown flow",
                icmp_error(REPORTER, VIP, 3, 4, &tcp(VIP, 80, CLIENT, 1, ACK)[..28]),
                D::IcmpNoFlow,
            ),
            ("too big with DF", big_tcp(40000, 1600, true), D::TooBig),
        ]
    }

    #[test]
    fn every_drop_reason_of_handle_packet_is_produced_and_counted() {
        use DropReason as D;
        let mut r = router(config(Policy::RoundRobin, 3));
        tunnelled(&mut r, T0, &syn(40000));
        let cases = malformed_packets();
        let mut produced = BTreeSet::new();
        let mut expected_counts = vec![0u64; DropReason::ALL.len()];
        for (what, packet, reason) in &cases {
            let before = r.counters().clone();
            assert_eq!(dropped(&mut r, T0, packet), *reason, "{what}");
            assert_eq!(
                r.counters().drops_total(),
                before.drops_total() + 1,
                "{what}: one counter"
            );
            assert_eq!(
                r.counters().packets_tunneled,
                before.packets_tunneled,
                "{what}"
            );
            if *reason != D::TooBig {
                assert!(transmits(&mut r).is_empty(), "{what}");
            }
            produced.insert(reason.as_str());
            expected_counts[*reason as usize] += 1;
        }

        // No headroom for the outer header.
        let mut b = PacketBuf::with_headroom(0, 100);
        let s = syn(40002);
        b.read_slot()[..s.len()].copy_from_slice(&s);
        b.set_len(s.len());
        assert_eq!(r.handle_packet(T0, &mut b), Action::Drop(D::NoHeadroom));
        produced.insert(D::NoHeadroom.as_str());
        expected_counts[D::NoHeadroom as usize] += 1;

        // Too many fragments waiting for their first.
        for ident in 0..MAX_HELD_FRAGMENTS as u16 {
            assert_eq!(
                send(&mut r, T0, &three_fragments(7000, ident)[2]).0,
                Action::Held
            );
        }
        assert_eq!(
            dropped(&mut r, T0, &three_fragments(7000, 9999)[2]),
            D::FragmentOverflow
        );
        produced.insert(D::FragmentOverflow.as_str());
        expected_counts[D::FragmentOverflow as usize] += 1;

        // Every next hop down.
        for i in 0..3 {
            set_available(&mut r, i, false);
        }
        assert_eq!(dropped(&mut r, T0, &syn(40003)), D::NoNextHop);
        // An established flow is still served.
        assert_eq!(tunnelled(&mut r, T0, &ack(40000)), host(0));
        produced.insert(D::NoNextHop.as_str());
        expected_counts[D::NoNextHop as usize] += 1;

        // The cost policy without a route table.
        let mut c = r.config().clone();
        c.virtual_hosts[0].policy = Policy::Cost;
        reconfigure(&mut r, &c);
        assert_eq!(dropped(&mut r, T0, &syn(40004)), D::NoRoute);
        produced.insert(D::NoRoute.as_str());
        expected_counts[D::NoRoute as usize] += 1;

        // A stopping router.
        r.handle_control(T0, Control::SetStopping(true)).unwrap();
        assert_eq!(dropped(&mut r, T0, &syn(40005)), D::Stopping);
        produced.insert(D::Stopping.as_str());
        expected_counts[D::Stopping as usize] += 1;

        // A flow being asked about (WHOHAS) beyond its bound of held packets.
        let mut c = r.config().clone();
        c.whohas = Some(WhohasConfig {
            max_held_per_flow: 1,
            ..WhohasConfig::default()
        });
        reconfigure(&mut r, &c);
        assert_eq!(send(&mut r, T0, &ack(40006)).0, Action::Held);
        assert_eq!(dropped(&mut r, T0, &ack(40006)), D::WhohasQueueFull);
        produced.insert(D::WhohasQueueFull.as_str());
        expected_counts[D::WhohasQueueFull as usize] += 1;

        for reason in DropReason::ALL {
            assert_eq!(
                r.counters().drops(*reason),
                expected_counts[*reason as usize],
                "{}",
                reason.as_str()
            );
        }
        // Everything but what only timeouts and tunnel termination produce (held_flow_gone:
        // packets_held_for_a_flow_that_left_the_table_are_counted).
        let others = [
            D::FragmentOrphan,
            D::UntrustedTunnel,
            D::MalformedTunnel,
            D::HeldFlowGone,
        ]
        .map(|d| d.as_str());
        let all: BTreeSet<_> = DropReason::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            produced
                .union(&others.into())
                .copied()
                .collect::<BTreeSet<_>>(),
            all
        );
        assert_accounted(&r);
    }

    #[test]
    fn harmless_ip_options_are_forwarded_untouched() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let option_lists: [&[u8]; 6] = [
            &[1, 1, 1, 0],                               // NOPs and end of options
            &[68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],     // timestamp
            &[7, 7, 4, 0, 0, 0, 0],                      // record route
            &[148, 4, 0, 0],                             // router alert
            &[0, 131, 7, 4, 10, 0, 0, 9],                // after end of options: padding, not LSRR
            &[1, 130, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], // security, after a NOP
        ];
        for (k, opts) in option_lists.iter().enumerate() {
            let sport = 40000 + k as u16;
            let p = Ip::new(
                CLIENT,
                VIP,
                Protocol::Tcp,
                tcp_segment(CLIENT, sport, VIP, 80, SYN, &[], &[]),
            )
            .options(opts)
            .build();
            let h = tunnelled(&mut r, T0, &p);
            // The flow is the TCP flow behind the options.
            assert_eq!(
                r.flow_next_hop(&tcp_key(sport)).unwrap().address,
                h,
                "options {k}"
            );
        }
        assert_eq!(r.counters().drops_total(), 0);
    }

    // ---- the shortcut (F10) ----------------------------------------------------------------

    /// ingress (no parent) -> mid -> site (this test's `SOURCE`) -> hosts, each a core.
    struct Chain {
        ingress: Router,
        mid: Router,
        site: Router,
    }

    const MID: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);

    impl Chain {
        fn new() -> Chain {
            let vhs = config(Policy::RoundRobin, 1).virtual_hosts;
            let mut ic = RouterConfig::new(PARENT);
            ic.virtual_hosts = vhs.clone();
            ic.next_hops = vec![
                NextHopConfig {
                    name: "mid".into(),
                    address: MID,
                    weight: 1,
                },
                NextHopConfig {
                    name: "other".into(),
                    address: Ipv4Addr::new(10, 100, 0, 3),
                    weight: 0,
                },
            ];
            ic.shortcut = Some(ShortcutConfig::default());
            let mut mc = RouterConfig::new(MID);
            mc.trusted_parents = vec!["10.100.0.1/32".parse().unwrap()];
            mc.virtual_hosts = vhs;
            mc.next_hops = vec![NextHopConfig {
                name: "site".into(),
                address: SOURCE,
                weight: 1,
            }];
            mc.shortcut = Some(ShortcutConfig::default());
            let mut sc = config(Policy::RoundRobin, 3);
            sc.shortcut = Some(ShortcutConfig::default());
            Chain {
                ingress: router(ic),
                mid: router(mc),
                site: router(sc),
            }
        }

        /// A client packet through the whole chain: where it left the ingress, and the host it
        /// reached (`None`: it went straight to a host, or was held).
        fn send(&mut self, now: Instant, packet: &[u8]) -> (Action, Option<Ipv4Addr>) {
            let mut b = PacketBuf::from_slice(packet);
            let a = self.ingress.handle_packet(now, &mut b);
            if a != (Action::Tunnel { next_hop: MID }) {
                return (a, None);
            }
            (a, Some(self.down(now, b)))
        }

        /// A packet the ingress tunnelled to `mid`, on through mid and site: the host.
        fn down(&mut self, now: Instant, mut b: PacketBuf) -> Ipv4Addr {
            assert_eq!(
                self.mid.handle_tunnelled_packet(now, &mut b),
                Action::Tunnel { next_hop: SOURCE }
            );
            match self.site.handle_tunnelled_packet(now, &mut b) {
                Action::Tunnel { next_hop } => next_hop,
                a => panic!("site: {a:?}"),
            }
        }

        /// Carries the site's signals up as the drivers do: the mid relays, the ingress installs.
        fn signal(&mut self, now: Instant) -> usize {
            let mut n = 0;
            while let Some(sig) = self.site.poll_shortcut_signal() {
                let host = self.site.next_hops()[sig.next_hop as usize].address;
                assert_eq!(
                    self.mid.accept_shortcut(now, &sig.key, 0, host),
                    Ok(ShortcutAccept::Relay)
                );
                assert!(self.site.mark_signalled(&sig.key));
                assert_eq!(
                    self.ingress.accept_shortcut(now, &sig.key, 0, host),
                    Ok(ShortcutAccept::Installed)
                );
                assert!(self.mid.mark_signalled(&sig.key));
                n += 1;
            }
            n
        }
    }

    /// F10: after the site's signal crosses the mid, the ingress tunnels a flow's later packets
    /// straight to its host; forged signals change nothing; the packets after a SYN wait for the
    /// signal (bounded), then go down the hierarchy; a flushed shortcut sends the flow down the
    /// hierarchy to the same host.
    #[test]
    fn shortcut_signals_climb_to_the_ingress_which_then_skips_the_hierarchy() {
        let mut c = Chain::new();
        // The first connection: no child has signalled yet, nothing waits.
        let (_, h) = c.send(T0, &syn(40000));
        let host0 = h.unwrap();
        assert!(
            c.mid.poll_shortcut_signal().is_some(),
            "the mid signals too"
        );
        while c.mid.poll_shortcut_signal().is_some() {}
        // Forged or foreign signals: refused, nothing changes.
        let key = tcp_key(40000);
        let other = host(2);
        assert_eq!(
            c.ingress.accept_shortcut(T0, &key, 1, other),
            Err(ShortcutRefusal::NotPinned)
        );
        assert_eq!(
            c.ingress.accept_shortcut(T0, &tcp_key(1), 0, other),
            Err(ShortcutRefusal::UnknownFlow)
        );
        assert_eq!(
            c.ingress.accept_shortcut(T0, &key, 0, Ipv4Addr::BROADCAST),
            Err(ShortcutRefusal::BadAddress)
        );
        assert_eq!(c.ingress.counters().shortcuts_refused, [1, 1, 1]);
        assert_eq!(c.ingress.counters().shortcuts_installed, 0);
        // Until the signal comes, later packets go down the hierarchy, to the same host.
        assert_eq!(c.send(T0, &ack(40000)).1, Some(host0));
        assert_eq!(c.signal(T0), 1);
        // Now straight to the host, whatever follows.
        for _ in 0..5 {
            assert_eq!(
                c.send(T0 + ms(1), &ack(40000)).0,
                Action::Tunnel { next_hop: host0 }
            );
        }
        assert_eq!(c.ingress.counters().shortcut_packets, 5);
        assert_eq!(
            c.site.counters().packets_in,
            2,
            "the site saw the SYN and one ACK"
        );
        // Keeping the copies below alive: each asks its parent.
        assert_eq!(c.site.signalled_rotation(), 1);
        let mut kept = Vec::new();
        assert_eq!(c.site.next_signalled(1, &mut kept), 1);
        assert_eq!(kept, vec![key]);
        assert!(c.mid.holds_for(&key, 0) && c.ingress.holds_for(&key, 0));
        assert!(!c.ingress.holds_for(&key, 1));

        // The next connection: the mid has signalled before, so the ingress holds its ACK and
        // request for the signal, and sends them to the host when it comes.
        let (_, h1) = c.send(T0 + ms(2), &syn(40001));
        let host1 = h1.unwrap();
        assert_eq!(c.send(T0 + ms(2), &ack(40001)).0, Action::Held);
        assert_eq!(c.send(T0 + ms(3), &ack(40001)).0, Action::Held);
        assert_eq!(c.ingress.shortcut_held(), 2);
        assert_eq!(c.signal(T0 + ms(4)), 1);
        let out = transmits(&mut c.ingress);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|t| t.destination == Destination::Tunnel(host1)));
        assert_eq!(c.ingress.shortcut_held(), 0);

        // A signal that does not come in time: the held packets go down the hierarchy.
        let (_, h2) = c.send(T0 + ms(10), &syn(40002));
        let host2 = h2.unwrap();
        assert_eq!(c.send(T0 + ms(11), &ack(40002)).0, Action::Held);
        assert!(c.ingress.poll_timeout().unwrap() <= T0 + ms(30));
        c.ingress.handle_timeout(T0 + ms(31));
        let out = transmits(&mut c.ingress);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].destination, Destination::Tunnel(MID));
        assert_eq!(c.ingress.counters().shortcut_hold_expired, 1);
        assert_eq!(c.send(T0 + ms(32), &ack(40002)).1, Some(host2));

        // Flushed at the ingress: down the hierarchy again, to the same hosts.
        c.ingress.set_flow_log(true);
        while c.ingress.poll_flow_change().is_some() {}
        assert_eq!(c.ingress.flush_shortcuts(), 2);
        let withdrawn: HashSet<_> = std::iter::from_fn(|| c.ingress.poll_flow_change()).collect();
        let expect = [key, tcp_key(40001)].map(|key| FlowChange::Withdraw { key });
        assert_eq!(withdrawn, expect.into_iter().collect());
        assert_eq!(c.send(T0 + ms(40), &ack(40000)).1, Some(host0));
        assert_eq!(c.send(T0 + ms(40), &ack(40001)).1, Some(host1));
        assert_ne!(host0, host1, "round robin: a fresh choice would differ");
        assert_accounted(&c.ingress);
        assert_accounted(&c.site);

        // The side table of shortcuts follows the flow table: expired flows leave it.
        assert_eq!(
            c.ingress.accept_shortcut(T0 + ms(50), &key, 0, host0),
            Ok(ShortcutAccept::Installed)
        );
        assert_eq!(c.ingress.shortcuts.len(), 1);
        c.ingress.handle_timeout(T0 + Duration::from_secs(3600));
        assert_eq!(c.ingress.flow_count(), 0);
        assert!(c.ingress.shortcuts.is_empty());
    }

    /// F10 keeps the flow model: a shortcut flow stays on its host when its next hop at the
    /// ingress is drained, fails its health check or leaves the configuration; a new SYN on
    /// the tuple after the connection closed is a new flow, routed down the hierarchy afresh
    /// (the old shortcut goes with the old entry).
    #[test]
    fn shortcut_flows_keep_their_host_through_drain_health_and_reload() {
        let mut c = Chain::new();
        let host0 = c.send(T0, &syn(40000)).1.unwrap();
        assert_eq!(c.signal(T0), 1);
        let to_host = Action::Tunnel { next_hop: host0 };
        let mut drained = c.ingress.config().clone();
        drained.next_hops[0].weight = 0;
        c.ingress
            .handle_control(T0, Control::Reconfigure(Box::new(drained)))
            .unwrap();
        assert_eq!(c.send(T0, &ack(40000)).0, to_host, "drained");
        c.ingress
            .handle_control(
                T0,
                Control::SetAvailable {
                    next_hop: "mid".into(),
                    available: false,
                },
            )
            .unwrap();
        assert_eq!(c.send(T0, &ack(40000)).0, to_host, "failed health check");
        let mut removed = c.ingress.config().clone();
        removed.next_hops.remove(0);
        removed.next_hops[0].weight = 1;
        c.ingress
            .handle_control(T0, Control::Reconfigure(Box::new(removed)))
            .unwrap();
        assert_eq!(c.send(T0, &ack(40000)).0, to_host, "removed by a reload");
        // Closed, then the tuple reused: a new flow by the policy (now "other", the only
        // eligible next hop), without the old shortcut.
        let fin = tcp(CLIENT, 40000, VIP, 80, FIN_ACK);
        assert_eq!(c.send(T0, &fin).0, to_host);
        let (a, _) = c.send(T0 + ms(1), &syn(40000));
        assert_eq!(
            a,
            Action::Tunnel {
                next_hop: Ipv4Addr::new(10, 100, 0, 3)
            }
        );
        assert!(c.ingress.shortcuts.is_empty());
        assert_accounted(&c.ingress);
    }

    /// Packets held for a shortcut whose flow leaves the table before the wait is over are
    /// dropped and counted, never lost silently.
    #[test]
    fn packets_held_for_a_flow_that_left_the_table_are_counted() {
        let mut c = Chain::new();
        c.send(T0, &syn(40000));
        assert_eq!(c.signal(T0), 1);
        c.send(T0, &syn(40001));
        assert_eq!(c.send(T0, &ack(40001)).0, Action::Held);
        assert_eq!(c.send(T0, &ack(40001)).0, Action::Held);
        c.ingress
            .handle_control(
                T0,
                Control::UnpinFlow {
                    key: tcp_key(40001),
                },
            )
            .unwrap();
        c.ingress.handle_timeout(T0 + ms(30));
        assert_eq!(c.ingress.shortcut_held(), 0);
        assert_eq!(
            c.ingress.counters().drops[DropReason::HeldFlowGone as usize],
            2
        );
        assert_accounted(&c.ingress);
    }

    /// The keepalives go in chunks of a rotation: every signalled flow once per round, refreshed
    /// flows stay, flows that ended drop out when they come round.
    #[test]
    fn signalled_flows_are_offered_in_chunks_of_a_rotation() {
        let mut c = Chain::new();
        for port in 0..10 {
            c.send(T0, &syn(41000 + port));
        }
        assert_eq!(c.signal(T0), 10);
        assert!(c.site.mark_signalled(&tcp_key(41000)), "marking twice");
        assert_eq!(c.site.signalled_rotation(), 10, "each flow once");
        let mut all = Vec::new();
        assert_eq!(
            c.site.next_signalled(100, &mut all),
            10,
            "each key once per call"
        );
        assert_eq!(all.len(), 10);
        let mut round = Vec::new();
        assert_eq!(c.site.next_signalled(4, &mut round), 4);
        assert_eq!(c.site.next_signalled(4, &mut round), 4);
        // A round is as many keys as the rotation held when it began (live keys go round
        // again at once).
        assert_eq!(c.site.next_signalled(2, &mut round), 2);
        round.sort_by_key(|k| k.src_port);
        assert_eq!(
            round,
            (0..10).map(|p| tcp_key(41000 + p)).collect::<Vec<_>>()
        );
        // Keep five alive; the others expire (half-open, 5 s): they leave the rotation when
        // they come round.
        let later = T0 + Duration::from_secs(4);
        for port in 0..5 {
            c.site.refresh_flow(later, &tcp_key(41000 + port));
        }
        c.site.handle_timeout(T0 + Duration::from_secs(6));
        assert_eq!(c.site.flow_count(), 5);
        let mut live = Vec::new();
        assert_eq!(c.site.next_signalled(10, &mut live), 10);
        assert_eq!(live.len(), 5);
        assert_eq!(c.site.signalled_rotation(), 5);
    }

    /// A router's own health probe of a child (a flow the control plane pinned before its first
    /// packet) must cross that child: the child's signal for it is kept, not installed, and
    /// every packet of the probe still goes down the hierarchy (a shortcut would bypass the
    /// child it tests, and reach a host that trusts only its own ingresses). Nothing waits for
    /// a signal either.
    #[test]
    fn a_health_probe_keeps_its_path_through_the_child_it_tests() {
        let mut c = Chain::new();
        // A first connection teaches the ingress that "mid" signals.
        c.send(T0, &syn(40000));
        assert_eq!(c.signal(T0), 1);
        let key = tcp_key(40001);
        c.ingress
            .handle_control(
                T0,
                Control::PinFlow {
                    key,
                    next_hop: "mid".into(),
                },
            )
            .unwrap();
        let host0 = c
            .send(T0, &syn(40001))
            .1
            .expect("the probe's SYN crosses mid");
        assert_eq!(c.send(T0, &ack(40001)).1, Some(host0), "not held");
        while let Some(sig) = c.site.poll_shortcut_signal() {
            let host = c.site.next_hops()[sig.next_hop as usize].address;
            assert_eq!(
                c.mid.accept_shortcut(T0, &sig.key, 0, host),
                Ok(ShortcutAccept::Relay)
            );
            assert_eq!(
                c.ingress.accept_shortcut(T0, &sig.key, 0, host),
                Ok(ShortcutAccept::Kept)
            );
        }
        assert_eq!(c.ingress.counters().shortcuts_kept, 1);
        for _ in 0..3 {
            assert_eq!(
                c.send(T0 + ms(1), &ack(40001)).1,
                Some(host0),
                "the probe keeps crossing mid"
            );
        }
        assert!(!c.ingress.shortcuts.contains_key(&key));
        assert_accounted(&c.ingress);
    }

    /// A signal lost on its way up (a session reset, a parent that took no signals for a
    /// moment): the flow's packets keep coming down the hierarchy, and the site signals it again
    /// at its 16th packet, then at every power of two. The first of those that arrives gives
    /// the ingress its shortcut; the rest of the flow skips the hierarchy.
    #[test]
    fn a_lost_signal_is_sent_again_while_the_flow_still_comes_this_way() {
        let mut c = Chain::new();
        let host0 = c.send(T0, &syn(40000)).1.expect("down the hierarchy");
        assert!(c.site.poll_shortcut_signal().is_some(), "the first signal");
        while c.mid.poll_shortcut_signal().is_some() {}
        // That signal is lost. Packets 2..=15 at the site: nothing more.
        for _ in 2..RESIGNAL_FROM {
            assert_eq!(c.send(T0 + ms(1), &ack(40000)).1, Some(host0));
            assert!(c.site.poll_shortcut_signal().is_none());
        }
        assert_eq!(c.send(T0 + ms(2), &ack(40000)).1, Some(host0));
        assert_eq!(c.site.counters().shortcut_resignals, 1, "the 16th packet");
        while c.mid.poll_shortcut_signal().is_some() {}
        assert_eq!(c.signal(T0 + ms(3)), 1, "it reaches the ingress");
        for _ in 0..40 {
            assert_eq!(
                c.send(T0 + ms(4), &ack(40000)).0,
                Action::Tunnel { next_hop: host0 }
            );
        }
        assert_eq!(c.site.counters().packets_in, RESIGNAL_FROM);
        assert_eq!(c.site.counters().shortcut_resignals, 1);
        // Lost again (the ingress flushed, and its re-signals went nowhere): at 32 and 64.
        c.ingress.flush_shortcuts();
        for _ in 0..48 {
            assert_eq!(c.send(T0 + ms(5), &ack(40000)).1, Some(host0));
        }
        assert_eq!(c.site.counters().packets_in, 64);
        assert_eq!(c.site.counters().shortcut_resignals, 3);
        assert_eq!(c.signal(T0 + ms(6)), 2, "each re-signal installs again");
        assert_eq!(
            c.send(T0 + ms(7), &ack(40000)).0,
            Action::Tunnel { next_hop: host0 }
        );
        assert_accounted(&c.site);
    }

    // ---- tunnels from parents ------------------------------------------------------------

    fn wrap(inner: &[u8], outer_src: Ipv4Addr) -> PacketBuf {
        let mut b = PacketBuf::from_slice(inner);
        ipip::encapsulate(&mut b, outer_src, SOURCE, 64, 1).unwrap();
        b
    }

    /// `out` is `input` with the TTL one lower and a valid checksum.
    #[track_caller]
    fn assert_ttl_decremented(out: &[u8], input: &[u8]) {
        assert_eq!(out.len(), input.len());
        assert_eq!(out[8], input[8] - 1, "TTL");
        assert!(Ipv4Packet::new_unchecked(out).verify_checksum());
        for i in (0..input.len()).filter(|&i| !(8..12).contains(&i) || i == 9) {
            assert_eq!(out[i], input[i], "byte {i}");
        }
    }

    #[test]
    fn tunnel_from_a_trusted_parent_is_terminated_and_routed_with_one_outer_header() {
        // A parent router whose next hop is this router.
        let mut pc = RouterConfig::new(PARENT);
        pc.virtual_hosts = config(Policy::RoundRobin, 1).virtual_hosts;
        pc.next_hops = vec![NextHopConfig {
            name: "site".into(),
            address: SOURCE,
            weight: 1,
        }];
        let mut parent = router(pc);
        let mut r = router(config(Policy::RoundRobin, 3));

        let s = syn(40000);
        let mut b = PacketBuf::from_slice(&s);
        assert_eq!(
            parent.handle_packet(T0, &mut b),
            Action::Tunnel { next_hop: SOURCE }
        );
        assert_eq!(b.len(), s.len() + 20);
        assert_eq!(
            r.handle_tunnelled_packet(T0, &mut b),
            Action::Tunnel { next_hop: host(0) }
        );
        assert_eq!(b.len(), s.len() + 20, "one outer header, not two");
        let inner = check_outer(b.as_ref(), host(0));
        assert_ttl_decremented(inner, &s);
        let c = r.counters();
        assert_eq!(
            (c.packets_in, c.tunnels_terminated, c.packets_tunneled),
            (1, 1, 1)
        );

        // Later packets of the flow, tunnelled or not, follow it.
        let a = ack(40000);
        let mut b = wrap(&a, PARENT);
        assert_eq!(
            r.handle_tunnelled_packet(T0, &mut b),
            Action::Tunnel { next_hop: host(0) }
        );
        assert_ttl_decremented(check_outer(b.as_ref(), host(0)), &a);
        assert_eq!(tunnelled(&mut r, T0, &a), host(0));
        assert_eq!(r.flow_count(), 1);
        assert_accounted(&r);
    }

    #[test]
    fn untrusted_or_malformed_tunnels_are_dropped() {
        use DropReason as D;
        let mut r = router(config(Policy::RoundRobin, 3));
        let s = syn(40000);
        let fragmented_outer = {
            let mut b = wrap(&s, PARENT);
            let mut o = Ipv4Packet::new_unchecked(b.as_mut());
            o.set_flags_and_offset(false, true, 0);
            o.fill_checksum();
            b
        };
        let bad_outer_checksum = {
            let mut b = wrap(&s, PARENT);
            b.as_mut()[10] ^= 1;
            b
        };
        let cases: Vec<(&str, PacketBuf, DropReason, bool)> = vec![
            (
                "untrusted parent",
                wrap(&s, STRANGER),
                D::UntrustedTunnel,
                false,
            ),
            (
                "garbage",
                PacketBuf::from_slice(&[0xde; 60]),
                D::MalformedTunnel,
                false,
            ),
            (
                "empty",
                PacketBuf::from_slice(&[]),
                D::MalformedTunnel,
                false,
            ),
            (
                "not IP-in-IP",
                PacketBuf::from_slice(&s),
                D::MalformedTunnel,
                false,
            ),
            (
                "outer checksum",
                bad_outer_checksum,
                D::MalformedTunnel,
                false,
            ),
            (
                "outer fragment",
                fragmented_outer,
                D::MalformedTunnel,
                false,
            ),
            (
                "inner checksum",
                wrap(&with(s.clone(), |p| p[10] ^= 1), PARENT),
                D::MalformedTunnel,
                false,
            ),
            (
                "inner cut short",
                wrap(&s[..30], PARENT),
                D::MalformedTunnel,
                false,
            ),
            (
                "inner not IPv4",
                wrap(&with(s.clone(), |p| p[0] = 0x65), PARENT),
                D::MalformedTunnel,
                false,
            ),
            (
                "inner TTL 1",
                wrap(
                    &Ip::new(
                        CLIENT,
                        VIP,
                        Protocol::Udp,
                        udp_datagram(CLIENT, 1, VIP, 2, b""),
                    )
                    .ttl(1)
                    .build(),
                    PARENT,
                ),
                D::TtlExpired,
                true,
            ),
            (
                "inner TTL 0",
                wrap(
                    &Ip::new(
                        CLIENT,
                        VIP,
                        Protocol::Udp,
                        udp_datagram(CLIENT, 1, VIP, 2, b""),
                    )
                    .ttl(0)
                    .build(),
                    PARENT,
                ),
                D::TtlExpired,
                true,
            ),
            (
                "nested tunnel",
                wrap(
                    &Ip::new(CLIENT, VIP, Protocol::IpIp, s.clone()).build(),
                    PARENT,
                ),
                D::NestedTunnel,
                true,
            ),
            (
                "inner not for a virtual host",
                wrap(&udp(CLIENT, 1, NOT_A_VIP, 2, b""), PARENT),
                D::NoVirtualHost,
                true,
            ),
        ];
        let mut terminated = 0;
        for (what, mut b, reason, inner_level) in cases {
            let before = r.counters().drops_total();
            assert_eq!(
                r.handle_tunnelled_packet(T0, &mut b),
                Action::Drop(reason),
                "{what}"
            );
            assert_eq!(r.counters().drops_total(), before + 1, "{what}");
            terminated += inner_level as u64;
            assert_eq!(r.counters().tunnels_terminated, terminated, "{what}");
        }
        assert_eq!(r.counters().drops(D::MalformedTunnel), 8);
        assert_eq!(r.counters().drops(D::TtlExpired), 2);
        assert_eq!(r.flow_count(), 0);
        assert_accounted(&r);

        // Without trusted parents, no tunnel is taken at all.
        let mut c = config(Policy::RoundRobin, 3);
        c.trusted_parents.clear();
        let mut r = router(c);
        assert_eq!(
            r.handle_tunnelled_packet(T0, &mut wrap(&s, PARENT)),
            Action::Drop(D::UntrustedTunnel)
        );
    }

    // ---- time ----------------------------------------------------------------------------

    #[test]
    fn expired_flows_release_their_next_hop() {
        let mut r = router(config(Policy::LeastFlows, 2));
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(tunnelled(&mut r, T0, &syn(40000)), host(0)); // half-open: 5 s
        assert_eq!(
            tunnelled(&mut r, T0, &udp(CLIENT, 5000, VIP, 53, b"q")),
            host(1)
        ); // 60 s
        let half_open = Duration::from_secs(5);
        assert_eq!(
            r.poll_timeout(),
            Some(T0 + half_open + Duration::from_micros(1))
        );

        // Idle for exactly the timeout: still there.
        r.handle_timeout(T0 + half_open);
        assert_eq!(r.flow_count(), 2);
        r.handle_timeout(T0 + half_open + Duration::from_micros(1));
        assert_eq!(r.flow_count(), 1);
        assert_eq!(r.counters().flows_expired, 1);
        assert_eq!(
            [
                next_hop(&r, "h0").active_flows,
                next_hop(&r, "h1").active_flows
            ],
            [0, 1]
        );
        // least_flows sees the release: the next flow goes to the emptier host.
        let t = T0 + Duration::from_secs(6);
        assert_eq!(tunnelled(&mut r, t, &syn(40001)), host(0));
        tunnelled(&mut r, t, &ack(40001));
        assert_eq!(
            [
                next_hop(&r, "h0").active_flows,
                next_hop(&r, "h1").active_flows
            ],
            [1, 1]
        );
        assert!(r.poll_timeout().is_some());

        // Long after everything is idle: nothing left, nothing to wake up for.
        r.handle_timeout(T0 + Duration::from_secs(3600));
        assert_eq!(r.flow_count(), 0);
        assert_eq!(r.counters().flows_expired, 3);
        assert_eq!(
            [
                next_hop(&r, "h0").active_flows,
                next_hop(&r, "h1").active_flows
            ],
            [0, 0]
        );
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_flow_touched_in_time_does_not_expire() {
        let mut r = router(config(Policy::RoundRobin, 2));
        let d = udp(CLIENT, 5000, VIP, 53, b"q");
        let mut now = T0;
        for _ in 0..5 {
            assert_eq!(tunnelled(&mut r, now, &d), host(0));
            now += Duration::from_secs(50);
            r.handle_timeout(now);
        }
        assert_eq!(r.counters().flows_created, 1);
        assert_eq!(r.counters().flows_expired, 0);
    }

    #[test]
    fn a_full_flow_table_evicts_and_says_so() {
        let mut c = config(Policy::RoundRobin, 2);
        c.flow_table.max_flows = 4;
        let mut r = router(c);
        events(&mut r);
        for sport in 40000..40006 {
            tunnelled(&mut r, T0, &syn(sport));
        }
        assert_eq!(r.flow_count(), 4);
        assert_eq!(r.counters().flows_evicted, 2);
        assert_eq!(
            events(&mut r),
            [Event::FlowTableFull],
            "one event, not one per eviction"
        );
        let active: u32 = r.next_hops().iter().map(|n| n.active_flows).sum();
        assert_eq!(active, 4, "evicted flows released their next hops");
        // Shrinking the table by reconfiguration evicts too.
        let mut c = config(Policy::RoundRobin, 2);
        c.flow_table.max_flows = 1;
        reconfigure(&mut r, &c);
        assert_eq!(r.flow_count(), 1);
        assert_eq!(r.next_hops().iter().map(|n| n.active_flows).sum::<u32>(), 1);
        assert_eq!(r.counters().flows_evicted, 5);
    }

    // ---- property tests ------------------------------------------------------------------

    /// A driver's-eye model of one router: whatever goes in is checked on the way out.
    struct Harness {
        r: Router,
        /// Inner packets held by the router, as they must come out when released.
        held: Vec<Vec<u8>>,
    }

    /// The inner packet a routed `input` must become: the IPv4 packet as far as its total length,
    /// and for tunnelled input the inner packet with its TTL decremented.
    fn expected_inner(input: &[u8], via_tunnel: bool) -> Option<Vec<u8>> {
        if via_tunnel {
            let mut b = PacketBuf::from_slice(input);
            ipip::decapsulate(&mut b).ok()?;
            let mut inner = b.as_ref().to_vec();
            let mut p = Ipv4Packet::new_checked(&mut inner[..]).ok()?;
            p.set_ttl(p.ttl().checked_sub(1)?);
            p.fill_checksum();
            Some(inner)
        } else {
            let p = Ipv4Packet::new_checked(input).ok()?;
            Some(input[..p.total_len() as usize].to_vec())
        }
    }

    /// Equal but for the IPv4 header checksum, which may be either encoding of zero after an
    /// incremental update (both verify; `check_outer` checks that).
    fn same_packet(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.len() >= 12 && a[..10] == b[..10] && a[12..] == b[12..]
    }

    impl Harness {
        fn new(c: RouterConfig) -> Self {
            Harness {
                r: router(c),
                held: Vec::new(),
            }
        }

        fn step(&mut self, now: Instant, input: &[u8], via_tunnel: bool) -> Action {
            let before = self.r.counters().clone();
            let held_before = self.r.held_count;
            let mut b = PacketBuf::from_slice(input);
            let a = if via_tunnel {
                self.r.handle_tunnelled_packet(now, &mut b)
            } else {
                self.r.handle_packet(now, &mut b)
            };
            let after = self.r.counters().clone();
            assert_eq!(after.packets_in, before.packets_in + 1);
            let mut released = 0;
            for t in transmits(&mut self.r) {
                match t.destination {
                    Destination::Tunnel(nh) => {
                        let inner = check_outer(t.buf.as_ref(), nh);
                        let k = self.held.iter().position(|h| same_packet(h, inner));
                        self.held
                            .remove(k.expect("a released packet is one that was held"));
                        released += 1;
                    }
                    Destination::Local => {
                        assert_eq!(a, Action::Drop(DropReason::TooBig));
                        let ip = Ipv4Packet::new_checked(t.buf.as_ref()).unwrap();
                        assert!(ip.verify_checksum() && ip.frag_offset() == 0 && !ip.dont_frag());
                        let m = IcmpPacket::new_checked(ip.payload()).unwrap();
                        assert!(m.verify_checksum());
                        assert_eq!(
                            (m.msg_type(), m.code()),
                            (icmp::DST_UNREACHABLE, icmp::CODE_FRAG_NEEDED)
                        );
                    }
                }
            }
            match a {
                Action::Tunnel { next_hop } => {
                    let inner = check_outer(b.as_ref(), next_hop);
                    let expected = expected_inner(input, via_tunnel)
                        .expect("only valid packets are tunnelled");
                    if via_tunnel {
                        assert!(same_packet(inner, &expected));
                    } else {
                        assert_eq!(inner, &expected[..]);
                    }
                    assert_eq!(
                        after.packets_tunneled,
                        before.packets_tunneled + 1 + released
                    );
                    assert_eq!(after.drops_total(), before.drops_total());
                }
                Action::Drop(reason) => {
                    assert_eq!(after.drops(reason), before.drops(reason) + 1);
                    assert_eq!(
                        after.drops_total(),
                        before.drops_total() + 1,
                        "exactly one counter"
                    );
                    assert_eq!(after.packets_tunneled, before.packets_tunneled + released);
                }
                Action::Held => {
                    assert!(b.is_empty());
                    assert_eq!(self.r.held_count, held_before + 1);
                    assert_eq!(after.drops_total(), before.drops_total());
                    assert_eq!(after.packets_tunneled, before.packets_tunneled);
                    self.held.push(
                        expected_inner(input, via_tunnel).expect("only valid packets are held"),
                    );
                }
            }
            assert_eq!(self.r.held_count, self.held.len());
            assert_accounted(&self.r);
            a
        }

        /// Time passes: orphaned fragments are dropped, and no longer expected back.
        fn timeout(&mut self, now: Instant) {
            self.r.handle_timeout(now);
            let mut still_held = Vec::new();
            for (bufs, _) in self.r.held.values() {
                for b in bufs {
                    let k = self.held.iter().position(|h| same_packet(h, b.as_ref()));
                    still_held.push(
                        self.held
                            .remove(k.expect("the router holds only what it was given")),
                    );
                }
            }
            self.held = still_held;
            assert_eq!(self.r.held_count, self.held.len());
            assert!(
                transmits(&mut self.r).is_empty(),
                "timeouts release nothing"
            );
            assert_accounted(&self.r);
        }

        fn finish(&mut self, now: Instant) {
            self.timeout(now + Duration::from_secs(3600));
            assert_eq!(self.r.held_count, 0);
            assert!(transmits(&mut self.r).is_empty());
            assert_accounted(&self.r);
            assert_eq!(self.r.flow_count(), 0);
            assert!(self.r.next_hops().iter().all(|n| n.active_flows == 0));
        }
    }

    fn fuzz_config() -> RouterConfig {
        let mut c = config(Policy::RoundRobin, 3);
        c.tunnel_mtu = 600;
        c.icmp_rate_limit = 3;
        c
    }

    /// Valid packets of every kind the router handles, to mutate.
    fn seeds() -> Vec<Vec<u8>> {
        let mut v = vec![
            syn(40000),
            Ip::new(
                CLIENT,
                VIP,
                Protocol::Tcp,
                tcp_segment(CLIENT, 40000, VIP, 80, ACK, &[], &[7; 100]),
            )
            .build(),
            tcp(CLIENT, 40000, VIP, 80, FIN_ACK),
            udp(CLIENT, 5000, VIP, 53, &[9; 50]),
            echo_request(CLIENT, VIP, 3, 1),
            icmp_error(REPORTER, VIP, 3, 4, &tcp(VIP, 80, CLIENT, 40000, ACK)[..28]),
            icmp_error(REPORTER, VIP, 11, 0, &udp(VIP, 53, CLIENT, 5000, &[1; 200])),
            Ip::new(
                CLIENT,
                VIP,
                Protocol::Tcp,
                tcp_segment(CLIENT, 40001, VIP, 80, SYN, &mss_option(1460), &[]),
            )
            .options(&[68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .build(),
            big_tcp(40000, 700, true),
            big_tcp(40000, 700, false),
            Ip::new(CLIENT, VIP, Protocol::IpIp, syn(1)).build(),
            Ip::new(
                CLIENT,
                VIP,
                Protocol::Udp,
                udp_datagram(CLIENT, 1, VIP, 2, b""),
            )
            .options(&[131, 3, 4])
            .build(),
            Ip::new(CLIENT, VIP, Protocol::Other(47), vec![0; 24]).build(),
        ];
        v.extend(fragment(
            &udp(CLIENT, 5001, VIP, 4789, &[3; 992]),
            0x77,
            400,
        ));
        v
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Set(usize, u8),
        Truncate(usize),
        HeaderLen(u8),
        TotalLen(u16),
        Append(Vec<u8>),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        // Mostly in the headers, where the parsing is.
        let index = prop_oneof![4 => 0..64usize, 1 => any::<usize>()];
        prop_oneof![
            (index.clone(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
            (index, any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
            any::<usize>().prop_map(Mutation::Truncate),
            (0..16u8).prop_map(Mutation::HeaderLen),
            any::<u16>().prop_map(Mutation::TotalLen),
            prop::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Append),
        ]
    }

    fn mutate(p: &mut Vec<u8>, m: &Mutation) {
        let n = p.len();
        match m {
            Mutation::Flip(i, x) if n > 0 => p[i % n] ^= x,
            Mutation::Set(i, v) if n > 0 => p[i % n] = *v,
            Mutation::Truncate(len) => p.truncate(len % (n + 1)),
            Mutation::HeaderLen(ihl) if n > 0 => p[0] = (p[0] & 0xf0) | ihl,
            Mutation::TotalLen(tl) if n >= 4 => p[2..4].copy_from_slice(&tl.to_be_bytes()),
            Mutation::Append(bytes) => p.extend_from_slice(bytes),
            _ => {}
        }
    }

    /// Makes the IPv4 header checksum valid again where the header allows it, so that the
    /// mutation reaches the checks behind it.
    fn refix(p: &mut [u8]) {
        let hl = p.first().map_or(0, |b| (b & 0x0f) as usize * 4);
        if hl >= 20 && hl <= p.len() {
            fix_ip_checksum(p);
        }
    }

    #[derive(Debug, Clone)]
    struct Input {
        seed: usize,
        mutations: Vec<Mutation>,
        fix_checksum: bool,
        via_tunnel: bool,
        mutate_outer: bool,
        advance_ms: u64,
    }

    fn input() -> impl Strategy<Value = Input> {
        (
            0..seeds().len(),
            prop::collection::vec(mutation(), 0..4),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0..2500u64,
        )
            .prop_map(
                |(seed, mutations, fix_checksum, via_tunnel, mutate_outer, advance_ms)| Input {
                    seed,
                    mutations,
                    fix_checksum,
                    via_tunnel,
                    mutate_outer,
                    advance_ms,
                },
            )
    }

    fn build(seeds: &[Vec<u8>], i: &Input) -> Vec<u8> {
        let mut p = seeds[i.seed].clone();
        let wrap_now = |p: &mut Vec<u8>| {
            if p.len() >= 20 {
                *p = wrap(p, PARENT).as_ref().to_vec();
            }
        };
        if i.via_tunnel && i.mutate_outer {
            wrap_now(&mut p);
        }
        for m in &i.mutations {
            mutate(&mut p, m);
        }
        if i.fix_checksum {
            refix(&mut p);
        }
        if i.via_tunnel && !i.mutate_outer {
            wrap_now(&mut p);
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all: no panic, and the packet is tunnelled intact or dropped and counted.
        #[test]
        fn arbitrary_bytes_are_tunnelled_intact_or_dropped_and_counted(
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
            make_plausible in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if make_plausible && bytes.len() >= 20 {
                // An IPv4 header to a virtual host, so that the rest of the bytes get parsed.
                bytes[0] = 0x45;
                bytes[16..20].copy_from_slice(&VIP.octets());
                let tl = bytes.len().min(usize::from(u16::MAX)) as u16;
                bytes[2..4].copy_from_slice(&tl.to_be_bytes());
                refix(&mut bytes);
            }
            let mut h = Harness::new(fuzz_config());
            h.step(T0, &bytes, false);
            h.step(T0, &bytes, true);
            if bytes.len() >= 20 {
                h.step(T0, wrap(&bytes, PARENT).as_ref(), true);
            }
            h.finish(T0);
        }

        /// Sequences of mutated valid packets, plain and tunnelled, with time passing.
        #[test]
        fn mutated_packets_are_tunnelled_intact_or_dropped_and_counted(
            inputs in prop::collection::vec(input(), 1..12),
        ) {
            let seeds = seeds();
            let mut h = Harness::new(fuzz_config());
            let mut now = T0;
            for i in &inputs {
                let p = build(&seeds, i);
                h.step(now, &p, i.via_tunnel);
                now += ms(i.advance_ms);
                h.timeout(now);
            }
            h.finish(now);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A packet of flow `flow`: 0 SYN, 1 ACK, 2 FIN, 3 RST, 4 data, 5 UDP.
        Packet {
            flow: u16,
            kind: u8,
        },
        Available {
            host: usize,
            up: bool,
        },
        Reconfigure {
            present: [bool; 4],
            weights: [u32; 4],
            policy: usize,
        },
        Advance {
            millis: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..6u16, 0..6u8).prop_map(|(flow, kind)| Op::Packet { flow, kind }),
            1 => (0..4usize, any::<bool>()).prop_map(|(host, up)| Op::Available { host, up }),
            1 => (any::<[bool; 4]>(), [0..3u32, 0..3u32, 0..3u32, 0..3u32], 0..4usize)
                .prop_map(|(present, weights, policy)| Op::Reconfigure { present, weights, policy }),
            2 => (0..20_000u64).prop_map(|millis| Op::Advance { millis }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever happens to configuration, health and time, a flow's next hop changes only
        /// when a SYN re-routes it; a packet of a known flow goes to that flow's next hop, and a
        /// new flow only to a next hop that may take new flows.
        #[test]
        fn a_flow_keeps_its_next_hop_unless_a_syn_reroutes_it(ops in prop::collection::vec(op(), 1..48)) {
            let mut r = router(config(Policy::RoundRobin, 4));
            let mut now = T0;
            for op in ops {
                let before: HashMap<FlowKey, (Ipv4Addr, FlowState)> = r
                    .flows()
                    .map(|(k, e)| (*k, (r.next_hops()[e.next_hop() as usize].address, e.state())))
                    .collect();
                let rerouted = r.counters().flows_rerouted;
                let mut subject = None;
                match op {
                    Op::Packet { flow, kind } => {
                        let sport = 40000 + flow;
                        let (packet, key) = match kind {
                            5 => (udp(CLIENT, sport, VIP, 53, b"d"), FlowKey::new(CLIENT, VIP, sport, 53, 17)),
                            k => {
                                let flags = [SYN, ACK, FIN_ACK, RST, ACK | TcpFlags::PSH][k as usize];
                                (tcp(CLIENT, sport, VIP, 80, flags), tcp_key(sport))
                            }
                        };
                        let is_syn = kind == 0;
                        let eligible = |r: &Router, a: Ipv4Addr| r.next_hops().iter().any(|n| n.address == a && n.eligible());
                        let (a, _) = send(&mut r, now, &packet);
                        match (before.get(&key), a) {
                            (Some(&(old, state)), a) if !is_syn || state == FlowState::TcpHalfOpen => {
                                // A retransmitted SYN stays too.
                                prop_assert_eq!(a, Action::Tunnel { next_hop: old });
                            }
                            (Some(&(old, state)), Action::Tunnel { next_hop }) if next_hop != old => {
                                prop_assert!(
                                    state == FlowState::TcpClosing || !eligible(&r, old),
                                    "a SYN left a flow whose host takes new flows"
                                );
                                prop_assert_eq!(r.counters().flows_rerouted, rerouted + 1);
                                prop_assert!(eligible(&r, next_hop));
                            }
                            (_, Action::Tunnel { next_hop }) => {
                                if !before.contains_key(&key) {
                                    prop_assert!(eligible(&r, next_hop), "new flow to {}", next_hop);
                                }
                            }
                            (_, Action::Drop(DropReason::NoNextHop)) => {
                                prop_assert!(!r.next_hops().iter().any(|n| n.eligible()));
                                prop_assert!(r.flow_next_hop(&key).is_none());
                            }
                            (_, a) => prop_assert!(false, "unexpected {:?}", a),
                        }
                        if !is_syn {
                            prop_assert_eq!(r.counters().flows_rerouted, rerouted);
                        }
                        subject = Some(key);
                    }
                    Op::Available { host: i, up } => {
                        let _ = r.handle_control(now, Control::SetAvailable { next_hop: name(i), available: up });
                    }
                    Op::Reconfigure { present, weights, policy } => {
                        let mut c = config(Policy::ALL[policy], 4);
                        for (i, n) in c.next_hops.iter_mut().enumerate() {
                            n.weight = weights[i];
                        }
                        c.next_hops.retain(|n| present[n.name[1..].parse::<usize>().unwrap()]);
                        r.handle_control(now, Control::Reconfigure(Box::new(c))).unwrap();
                    }
                    Op::Advance { millis } => {
                        now += ms(millis);
                        r.handle_timeout(now);
                    }
                }
                for (k, e) in r.flows() {
                    if Some(*k) == subject {
                        continue;
                    }
                    if let Some(&(old, _)) = before.get(k) {
                        prop_assert_eq!(r.next_hops()[e.next_hop() as usize].address, old, "flow {} moved", k);
                    }
                }
                // Every flow counts on exactly one next hop.
                let active: u64 = r.next_hops().iter().map(|n| u64::from(n.active_flows)).sum();
                prop_assert_eq!(active, r.flow_count() as u64);
                for (i, n) in r.next_hops().iter().enumerate() {
                    let held = r.flows().filter(|(_, e)| e.next_hop() as usize == i).count();
                    prop_assert_eq!(n.active_flows as usize, held, "{}", n.name);
                }
            }
        }
    }

    fn whohas_config(policy: Policy, n: usize) -> RouterConfig {
        let mut c = config(policy, n);
        c.whohas = Some(WhohasConfig {
            timeout: ms(50),
            max_pending: 4,
            max_held_per_flow: 3,
            max_held: 100,
        });
        c
    }

    fn data(sport: u16, payload: &[u8]) -> Vec<u8> {
        let seg = tcp_segment(CLIENT, sport, VIP, 80, ACK, &[], payload);
        Ip::new(CLIENT, VIP, Protocol::Tcp, seg).build()
    }

    fn tunnel_transmits(r: &mut Router) -> Vec<(Ipv4Addr, Vec<u8>)> {
        std::iter::from_fn(|| r.poll_transmit())
            .map(|t| match t.destination {
                Destination::Tunnel(a) => (a, t.buf.as_ref().to_vec()),
                Destination::Local => panic!("no local transmits expected"),
            })
            .collect()
    }

    /// A mid-flow packet of an unknown flow is held and asked about once; the holder's answer
    /// pins it to the holder's next hop (not the policy's pick), the held packets go there in
    /// order, intact, and so do later ones.
    #[test]
    fn whohas_pins_an_unknown_flow_where_its_holder_sends_it() {
        let mut r = router(whohas_config(Policy::RoundRobin, 3));
        r.set_flow_log(true);
        let key = tcp_key(40000);
        let first = data(40000, b"one");
        let second = data(40000, b"two");
        let (a, mut b) = send(&mut r, T0, &first);
        assert_eq!(a, Action::Held);
        assert!(b.is_empty(), "the driver gets an empty buffer back");
        assert!(
            b.read_slot().len() >= first.len(),
            "as big as the one it lent"
        );
        assert_eq!(send(&mut r, T0 + ms(1), &second).0, Action::Held);
        assert_eq!(r.poll_whohas(), Some(key));
        assert_eq!(r.poll_whohas(), None, "asked once");
        assert_eq!(r.whohas_pending(), (1, 2));
        assert!(r.poll_timeout().is_some_and(|t| t <= T0 + ms(50)));
        assert_eq!(r.flow_count(), 0);
        // The policy would pick h0 for the first flow of a round robin: the holder says h2.
        r.answer_whohas(
            T0 + ms(2),
            key,
            WhohasAnswer::Held {
                next_hop: host(2),
                holder: Ipv4Addr::new(10, 100, 9, 9),
            },
        );
        let out = tunnel_transmits(&mut r);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, host(2));
        assert_eq!(check_outer(&out[0].1, host(2)), first);
        assert_eq!(check_outer(&out[1].1, host(2)), second);
        assert_eq!(tunnelled(&mut r, T0 + ms(3), &ack(40000)), host(2));
        assert_eq!(r.flow_next_hop(&key).map(|n| n.address), Some(host(2)));
        assert_eq!(
            r.flow(&key).map(|e| e.state()),
            Some(FlowState::TcpEstablished)
        );
        let c = r.counters();
        assert_eq!(
            (c.whohas_asked, c.whohas_resolved, c.whohas_packets_held),
            (1, 1, 2)
        );
        assert_eq!(r.whohas_pending(), (0, 0));
        let changes: Vec<_> = std::iter::from_fn(|| r.poll_flow_change()).collect();
        assert_eq!(
            changes[0],
            FlowChange::Offload {
                key,
                next_hop: 2,
                virtual_host: 0,
                shortcut: None,
            },
            "the fast path (and mirror peers) learn of it"
        );
        // An answer that comes again, late, changes nothing.
        r.answer_whohas(
            T0 + ms(4),
            key,
            WhohasAnswer::Held {
                next_hop: host(0),
                holder: host(0),
            },
        );
        assert_eq!(r.flow_next_hop(&key).map(|n| n.address), Some(host(2)));
        // A router below this one holds it: its own address is the next hop.
        let key2 = tcp_key(40001);
        assert_eq!(send(&mut r, T0, &ack(40001)).0, Action::Held);
        r.answer_whohas(
            T0 + ms(1),
            key2,
            WhohasAnswer::Held {
                next_hop: Ipv4Addr::new(192, 0, 2, 77),
                holder: host(1),
            },
        );
        assert_eq!(tunnel_transmits(&mut r)[0].0, host(1));
        assert_eq!(r.flow_next_hop(&key2).map(|n| n.address), Some(host(1)));
    }

    /// Nobody holds it, nobody answers in time, or the answer names no next hop of this
    /// router: the policy picks and the held packets follow its pick. SYNs, UDP and first
    /// fragments are never held, and a router without WHOHAS never holds anything.
    #[test]
    fn whohas_falls_back_to_the_policy() {
        let mut r = router(whohas_config(Policy::RoundRobin, 3));
        let (k1, k2, k3) = (tcp_key(1), tcp_key(2), tcp_key(3));
        for p in [1, 2, 3] {
            assert_eq!(send(&mut r, T0, &ack(p)).0, Action::Held);
        }
        r.answer_whohas(T0 + ms(1), k1, WhohasAnswer::Nobody);
        let out = tunnel_transmits(&mut r);
        assert_eq!(out.len(), 1);
        let picked = r.flow_next_hop(&k1).map(|n| n.address);
        assert_eq!(Some(out[0].0), picked);
        r.answer_whohas(
            T0 + ms(1),
            k2,
            WhohasAnswer::Held {
                next_hop: Ipv4Addr::new(192, 0, 2, 1),
                holder: REPORTER,
            },
        );
        assert_eq!(tunnel_transmits(&mut r).len(), 1);
        assert!(r.flow(&k2).is_some());
        // k3: no answer. Nothing happens before the deadline, the policy picks at it.
        r.handle_timeout(T0 + ms(49));
        assert!(r.flow(&k3).is_none());
        assert_eq!(r.poll_timeout(), Some(T0 + ms(50)));
        r.handle_timeout(T0 + ms(50));
        assert_eq!(tunnel_transmits(&mut r).len(), 1);
        assert!(r.flow(&k3).is_some());
        let c = r.counters();
        assert_eq!(
            (
                c.whohas_asked,
                c.whohas_not_found,
                c.whohas_unusable,
                c.whohas_timeouts
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(c.whohas_resolved, 0);
        // A late answer for a flow the policy placed changes nothing.
        let before = r.flow_next_hop(&k3).map(|n| n.address);
        r.answer_whohas(
            T0 + ms(60),
            k3,
            WhohasAnswer::Held {
                next_hop: host(0),
                holder: host(0),
            },
        );
        assert_eq!(r.flow_next_hop(&k3).map(|n| n.address), before);
        assert_accounted(&r);

        // Never held: a SYN, UDP, a first fragment.
        assert!(matches!(
            send(&mut r, T0, &syn(10)).0,
            Action::Tunnel { .. }
        ));
        assert!(matches!(
            send(&mut r, T0, &udp(CLIENT, 10, VIP, 53, b"q")).0,
            Action::Tunnel { .. }
        ));
        let big = data(11, &[7u8; 600]);
        let frags = fragment(&big, 9, 256);
        assert!(matches!(
            send(&mut r, T0, &frags[0]).0,
            Action::Tunnel { .. }
        ));
        assert_eq!(r.counters().whohas_asked, 3);

        // Without WHOHAS the policy picks at once.
        let mut plain = router(config(Policy::RoundRobin, 3));
        assert!(matches!(
            send(&mut plain, T0, &ack(1)).0,
            Action::Tunnel { .. }
        ));
        assert_eq!(plain.poll_whohas(), None);
    }

    /// A storm of unknown flows: beyond the pending bound they go to the policy at once
    /// (counted); beyond a flow's held-packet bound its packets are dropped (counted); known
    /// flows are forwarded throughout.
    #[test]
    fn whohas_bounds_a_storm() {
        let mut r = router(whohas_config(Policy::RoundRobin, 3));
        let known = tunnelled(&mut r, T0, &syn(9000));
        for p in 1..=4 {
            assert_eq!(send(&mut r, T0, &ack(p)).0, Action::Held);
        }
        for p in 5..=10 {
            assert!(matches!(send(&mut r, T0, &ack(p)).0, Action::Tunnel { .. }));
            assert_eq!(tunnelled(&mut r, T0, &ack(9000)), known);
        }
        assert_eq!(r.counters().whohas_overflow, 6);
        for _ in 0..2 {
            assert_eq!(send(&mut r, T0, &ack(1)).0, Action::Held);
        }
        assert_eq!(
            send(&mut r, T0, &ack(1)).0,
            Action::Drop(DropReason::WhohasQueueFull)
        );
        assert_eq!(r.whohas_pending(), (4, 6));
        assert_eq!(std::iter::from_fn(|| r.poll_whohas()).count(), 4);
        r.handle_timeout(T0 + ms(50));
        assert_eq!(tunnel_transmits(&mut r).len(), 6);
        assert_eq!(r.whohas_pending(), (0, 0));
        assert_accounted(&r);
    }

    /// A refreshed flow outlives its idle timeout; one left alone expires.
    #[test]
    fn a_refreshed_flow_does_not_idle_out() {
        let mut c = config(Policy::RoundRobin, 3);
        c.flow_table.tcp_established_timeout = ms(1000);
        let mut r = router(c);
        for p in [1, 2] {
            r.restore_flow(T0, tcp_key(p), 1, Duration::ZERO).unwrap();
        }
        let packets = r.flow(&tcp_key(1)).map(|e| e.packets());
        for step in 1..=5u64 {
            let now = T0 + ms(500 * step);
            assert!(r.refresh_flow(now, &tcp_key(1)));
            r.handle_timeout(now);
        }
        assert!(r.flow(&tcp_key(1)).is_some(), "refreshed every 500 ms");
        assert!(r.flow(&tcp_key(2)).is_none(), "idle 2.5 s, timeout 1 s");
        assert_eq!(
            r.flow(&tcp_key(1)).map(|e| e.packets()),
            packets,
            "no packet counted"
        );
        assert!(!r.refresh_flow(T0, &tcp_key(3)));
    }

    /// What a router answers: the next hop of a flow it holds, nothing for one it does not,
    /// and "foreign" for a destination outside its virtual subnets.
    #[test]
    fn whohas_replies() {
        let mut r = router(config(Policy::RoundRobin, 3));
        let nh = tunnelled(&mut r, T0, &syn(1));
        assert_eq!(r.whohas_reply(&tcp_key(1)), WhohasReply::Held(nh));
        assert_eq!(r.whohas_reply(&tcp_key(2)), WhohasReply::NotHeld);
        assert_eq!(
            r.whohas_reply(&FlowKey::new(CLIENT, NOT_A_VIP, 1, 80, 6)),
            WhohasReply::Foreign
        );
    }
}
