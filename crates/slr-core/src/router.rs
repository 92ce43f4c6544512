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

use crate::flow_table::{FlowEntry, FlowKey, FlowState, FlowTable, FlowTableConfig, InsertOutcome};
use crate::hash;
use crate::select::{Member, Policy, Selector};
use crate::time::{Duration, Instant};
use crate::tunnel::{IpIpTunnel, Tunnel};
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
    FragmentOrphan => "fragment_orphan", "Non-first fragment whose first fragment never came.";
    FragmentOverflow => "fragment_overflow", "Too many fragments waiting for their first fragment.";
    TooBig => "too_big", "Does not fit the tunnel with DF set (ICMP fragmentation-needed sent).";
    NoHeadroom => "no_headroom", "Buffer had no room for the outer header.";
    UntrustedTunnel => "untrusted_tunnel", "Tunnel from a source that is not a trusted parent.";
    MalformedTunnel => "malformed_tunnel", "Tunnel packet whose outer or inner header is malformed.";
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

/// How long fragment state lives (first fragment seen, or later fragments waiting for it).
const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams whose fragments are tracked at once.
const MAX_FRAGMENT_FLOWS: usize = 4096;
/// Most non-first fragments held while their first fragment is missing.
const MAX_HELD_FRAGMENTS: usize = 256;

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
    /// Number of pinned flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }
    /// The next hop a flow is pinned to.
    pub fn flow_next_hop(&self, key: &FlowKey) -> Option<&NextHopState> {
        self.flows
            .get(key)
            .map(|e| &self.next_hops[e.next_hop() as usize])
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
                    self.rebuild_selectors().map_err(ControlError::Config)?;
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
                if let Some(old) = self.flows.remove(&key) {
                    self.release(old.next_hop());
                }
                let state = match key.protocol {
                    6 => FlowState::TcpHalfOpen,
                    17 => FlowState::Udp,
                    _ => FlowState::Other,
                };
                self.insert_flow(now, key, i, state, 0);
            }
            Control::UnpinFlow { key } => {
                if let Some(old) = self.flows.remove(&key) {
                    self.release(old.next_hop());
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, config: RouterConfig) -> Result<(), ConfigError> {
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
            for n in &a.next_hops {
                if !seen.contains(n.as_str()) {
                    return Err(ConfigError::UnknownNextHop {
                        virtual_host: a.name.clone(),
                        next_hop: n.clone(),
                    });
                }
            }
        }
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
            let i = match existing {
                Some(i) => i,
                None => {
                    // Health carries over by name: a host does not become healthy by moving.
                    let available = self
                        .by_name
                        .get(&c.name)
                        .map(|&i| next_hops[i].available)
                        .unwrap_or(true);
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
                    });
                    next_hops.len() - 1
                }
            };
            next_hops[i].weight = c.weight;
            next_hops[i].configured = true;
            by_name.insert(c.name.clone(), i);
        }
        let mut virtual_hosts = Vec::with_capacity(config.virtual_hosts.len());
        for v in &config.virtual_hosts {
            let members: Vec<usize> = if v.next_hops.is_empty() {
                config.next_hops.iter().map(|n| by_name[&n.name]).collect()
            } else {
                v.next_hops.iter().map(|n| by_name[n]).collect()
            };
            let old = self.virtual_hosts.iter().find(|o| o.config.name == v.name);
            let selector = build_selector(v, &members, &next_hops, config.hash_seed)?;
            virtual_hosts.push(VirtualHostState {
                config: v.clone(),
                members,
                packets: old.map_or(0, |o| o.packets),
                bytes: old.map_or(0, |o| o.bytes),
                flows_created: old.map_or(0, |o| o.flows_created),
                selector,
            });
        }
        if self.config.tunnel_source != config.tunnel_source {
            // Only the IP-in-IP tunnel knows its source; other kinds are built by the caller.
            self.tunnel_source_changed(config.tunnel_source);
        }
        self.next_hops = next_hops;
        self.by_name = by_name;
        self.virtual_hosts = virtual_hosts;
        let mut evicted = Vec::new();
        self.flows
            .set_config(config.flow_table.clone(), |_, e| evicted.push(e.next_hop()));
        for nh in evicted {
            self.release(nh);
            self.counters.flows_evicted += 1;
        }
        self.config = config;
        self.generation += 1;
        self.events.push_back(Event::Reconfigured {
            generation: self.generation,
        });
        Ok(())
    }

    fn tunnel_source_changed(&mut self, _source: Ipv4Addr) {
        // The tunnel was built with the first source. Changing the underlay address of a running
        // router needs a restart; say so instead of silently keeping the old one.
        self.events.push_back(Event::Reconfigured {
            generation: self.generation,
        });
    }

    fn rebuild_selectors(&mut self) -> Result<(), ConfigError> {
        for v in &mut self.virtual_hosts {
            v.selector = build_selector(
                &v.config,
                &v.members,
                &self.next_hops,
                self.config.hash_seed,
            )?;
        }
        Ok(())
    }

    // ---- packets -------------------------------------------------------------------------

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
        let (src, dst, protocol, hl, tl, df, frag_off, is_frag, ident) = {
            let ip = Ipv4Packet::new_checked(buf.as_ref())?;
            if !ip.verify_checksum() {
                return Err(DropReason::BadChecksum);
            }
            if ip.ttl() == 0 || (decrement_ttl && ip.ttl() == 1) {
                return Err(DropReason::TtlExpired);
            }
            let hl = ip.header_len() as usize;
            if hl > ipv4::HEADER_LEN && has_source_route(&ip.header()[ipv4::HEADER_LEN..]) {
                return Err(DropReason::SourceRoute);
            }
            (
                ip.src_addr(),
                ip.dst_addr(),
                ip.protocol(),
                hl,
                ip.total_len() as usize,
                ip.dont_frag(),
                ip.frag_offset(),
                ip.is_fragment(),
                ip.ident(),
            )
        };
        buf.truncate(tl); // link-layer padding is not part of the packet
        if decrement_ttl {
            Ipv4Packet::new_unchecked(buf.as_mut()).decrement_ttl();
        }
        let vh = self
            .find_virtual_host(dst)
            .ok_or(DropReason::NoVirtualHost)?;
        let proto_num: u8 = protocol.into();
        if is_frag {
            let fk = FragKey {
                src,
                dst,
                protocol: proto_num,
                ident,
            };
            if frag_off != 0 {
                return self.route_later_fragment(now, buf, fk, vh, df);
            }
            // A first fragment: classify by what it carries, remember the choice for the rest.
            let nh = self.classify(now, buf, vh, src, dst, protocol, hl, true)?;
            self.remember_fragment(now, fk, nh);
            return self.forward(now, buf, vh, nh, df, hl, None);
        }
        match protocol {
            Protocol::IpIp => Err(DropReason::NestedTunnel),
            Protocol::Icmp => self.route_icmp(now, buf, vh, src, dst, hl, df),
            _ => {
                let syn_mss = matches!(protocol, Protocol::Tcp);
                let nh = self.classify(now, buf, vh, src, dst, protocol, hl, false)?;
                self.forward(now, buf, vh, nh, df, hl, syn_mss.then_some(()))
            }
        }
    }

    fn find_virtual_host(&self, dst: Ipv4Addr) -> Option<usize> {
        self.virtual_hosts
            .iter()
            .position(|v| v.config.subnet.contains(dst))
    }

    /// Finds or makes the flow of a TCP/UDP/other packet; returns the next hop index.
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &mut self,
        now: Instant,
        buf: &PacketBuf,
        vh: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: Protocol,
        hl: usize,
        first_fragment: bool,
    ) -> Result<usize, DropReason> {
        let payload = &buf.as_ref()[hl..];
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
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            protocol: protocol.into(),
        };
        let len = buf.len();
        if protocol == Protocol::Udp && self.virtual_hosts[vh].config.udp == UdpMode::PerDatagram {
            return self.select(vh, &key);
        }
        let is_syn = flags.is_some_and(|f| f & TcpFlags::SYN != 0 && f & TcpFlags::ACK == 0);
        if let Some(e) = self.flows.touch(&key, now, flags.map(TcpFlags), len) {
            let (nh, state) = (e.next_hop() as usize, e.state());
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
                return Ok(nh);
            }
            if let Some(old) = self.flows.remove(&key) {
                self.release(old.next_hop());
            }
            self.counters.flows_rerouted += 1;
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
        Ok(nh)
    }

    fn select(&mut self, vh: usize, key: &FlowKey) -> Result<usize, DropReason> {
        let h = flow_hash(self.config.hash_seed, key);
        let next_hops = &self.next_hops;
        let nh = self.virtual_hosts[vh]
            .selector
            .select(h, |id| next_hops[id].active_flows)
            .ok_or(DropReason::NoNextHop)?;
        self.next_hops[nh].selections += 1;
        Ok(nh)
    }

    fn insert_flow(&mut self, now: Instant, key: FlowKey, nh: usize, state: FlowState, len: usize) {
        let outcome = self.flows.insert(key, nh as u32, state, now, len);
        self.next_hops[nh].active_flows += 1;
        self.counters.flows_created += 1;
        if let InsertOutcome::Replaced(old) = outcome {
            self.release(old.next_hop());
        }
        if let InsertOutcome::Evicted { entry, .. } = outcome {
            self.release(entry.next_hop());
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

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        nh: usize,
        df: bool,
        hl: usize,
        clamp_tcp: Option<()>,
    ) -> Result<Action, DropReason> {
        let overhead = self.tunnel.overhead();
        if buf.len() + overhead > self.config.tunnel_mtu as usize && df {
            self.send_icmp(
                now,
                buf,
                IcmpRepr::FragNeeded {
                    mtu: self.config.tunnel_mtu - overhead as u16,
                },
            );
            self.counters.icmp_frag_needed_sent += 1;
            return Err(DropReason::TooBig);
        }
        if let (Some(()), Some(mss)) = (clamp_tcp, self.config.mss_clamp) {
            if let Ok(mut t) = TcpPacket::new_checked(&mut buf.as_mut()[hl..]) {
                if t.flags().syn() && t.clamp_mss(mss) {
                    self.counters.mss_clamped += 1;
                }
            }
        }
        let address = self.next_hops[nh].address;
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

    #[allow(clippy::too_many_arguments)]
    fn route_icmp(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        vh: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        hl: usize,
        df: bool,
    ) -> Result<Action, DropReason> {
        let (msg_type, is_error, echo_id, quoted) = {
            let m = IcmpPacket::new_checked(&buf.as_ref()[hl..])
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
            self.counters.icmp_errors_routed += 1;
            return self.forward(now, buf, vh, nh, df, hl, None);
        }
        if msg_type == icmp::ECHO_REQUEST {
            // Ping the VIP: one flow per echo identifier, answered by the host it lands on.
            let key = FlowKey {
                src_addr: src,
                dst_addr: dst,
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
            return self.forward(now, buf, vh, nh, df, hl, None);
        }
        Err(DropReason::UnsupportedIcmp)
    }

    fn remember_fragment(&mut self, now: Instant, fk: FragKey, nh: usize) {
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
                if self.tunnel.encapsulate(now, &mut b, address).is_ok() {
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
        fk: FragKey,
        vh: usize,
        df: bool,
    ) -> Result<Action, DropReason> {
        if let Some(&(nh, _)) = self.fragments.get(&fk) {
            self.counters.fragments_routed += 1;
            let hl = Ipv4Packet::new_unchecked(buf.as_ref()).header_len() as usize;
            return self.forward(now, buf, vh, nh, df, hl, None);
        }
        if self.held_count >= MAX_HELD_FRAGMENTS {
            return Err(DropReason::FragmentOverflow);
        }
        // Fragments can overtake the first one: keep this one until it arrives (or times out).
        let capacity = buf.len() + buf.headroom();
        let mut taken = PacketBuf::with_headroom(buf.headroom(), capacity - buf.headroom());
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

    fn send_icmp(&mut self, now: Instant, original: &PacketBuf, repr: IcmpRepr) {
        // Token bucket: an ICMP error per offending packet could otherwise be used to make the
        // router flood clients.
        let rate = self.config.icmp_rate_limit as f64;
        let elapsed = (now - self.icmp_refill).as_secs_f64();
        self.icmp_refill = now;
        self.icmp_tokens = (self.icmp_tokens + elapsed * rate).min(rate.max(1.0));
        if self.icmp_tokens < 1.0 {
            self.counters.icmp_rate_limited += 1;
            return;
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
    }

    // ---- time ----------------------------------------------------------------------------

    /// Expires idle flows and stale fragment state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut released = Vec::new();
        self.flows.expire(now, |_, e| released.push(e.next_hop()));
        self.counters.flows_expired += released.len() as u64;
        for nh in released {
            self.release(nh);
        }
        if self.next_fragment_sweep.is_some_and(|t| t <= now) {
            self.sweep_fragments(now);
        }
    }

    /// When [`Router::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.flows.next_expiry(), self.next_fragment_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

/// The hash that selects a next hop for a flow: the same on every router with the same seed.
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
