//! The records the programs and the daemons share, laid out as in `bpf/slr.bpf.c`.

use std::net::Ipv4Addr;

/// A flow's 5-tuple as the programs key it: addresses and ports in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyRecord {
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
    pad: [u8; 3],
}

impl FlowKeyRecord {
    /// The record of a 5-tuple.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> Self {
        FlowKeyRecord {
            src: src.octets(),
            dst: dst.octets(),
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            proto,
            pad: [0; 3],
        }
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src)
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst)
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.sport)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
    /// IP protocol.
    pub fn protocol(&self) -> u8 {
        self.proto
    }
}

/// Where the routing core pinned a flow, and when the program last forwarded a packet of it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowValueRecord {
    tunnel_dst: [u8; 4],
    /// The core's next-hop index (the per-next-hop counters' index).
    pub next_hop: u32,
    /// The core's virtual-host index (the per-virtual-host counters' index).
    pub vhost: u32,
    flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of a recent packet, 0 if none yet; refreshed at
    /// most every 64 ms per flow, so that every packet does not write the entry.
    pub last_used_ns: u64,
}

impl FlowValueRecord {
    /// A flow toward `tunnel_dst`.
    pub fn new(tunnel_dst: Ipv4Addr, next_hop: u32, vhost: u32) -> Self {
        FlowValueRecord {
            tunnel_dst: tunnel_dst.octets(),
            next_hop,
            vhost,
            flags: 0,
            last_used_ns: 0,
        }
    }
    /// The same flow, marked as a shortcut: `tunnel_dst` is a host below the next hop (F10).
    pub fn with_shortcut(mut self) -> Self {
        self.flags |= FLOW_SHORTCUT;
        self
    }
    /// The next hop's tunnel address (a host below it, for a shortcut).
    pub fn tunnel_dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.tunnel_dst)
    }
    /// Whether `tunnel_dst` is a shortcut's host rather than the next hop's address.
    pub fn is_shortcut(&self) -> bool {
        self.flags & FLOW_SHORTCUT != 0
    }
}

/// `flags` bit: the flow is a shortcut (read by the daemon only; the program tunnels to
/// `tunnel_dst` either way).
const FLOW_SHORTCUT: u32 = 1;

/// The program's settings (one entry of the `config` array).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ConfigRecord {
    pub(crate) tunnel_src: [u8; 4],
    pub(crate) tunnel_mtu: u32,
    pub(crate) outer_ttl: u32,
    pub(crate) enabled: u32,
    pub(crate) has_parents: u32,
}

/// The benchmark loop's budget and count (`bench_loop`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LoopRecord {
    pub(crate) budget: u64,
    pub(crate) returned: u64,
}

/// Packets and bytes (one CPU's, or their sum).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes of the inner IP packets.
    pub bytes: u64,
}

impl std::ops::AddAssign for Counter {
    fn add_assign(&mut self, o: Counter) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
    }
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays with no padding (sizes checked
// below): every bit pattern is a valid value, which is what aya's `Pod` asks.
unsafe impl aya::Pod for FlowKeyRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValueRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for ConfigRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for Counter {}
// SAFETY: as above.
unsafe impl aya::Pod for LoopRecord {}

const _: () = assert!(std::mem::size_of::<FlowKeyRecord>() == 16);
const _: () = assert!(std::mem::size_of::<FlowValueRecord>() == 24);
const _: () = assert!(std::mem::size_of::<ConfigRecord>() == 20);
const _: () = assert!(std::mem::size_of::<Counter>() == 16);

macro_rules! reasons {
    ($(#[$meta:meta])* $ty:ident { $($variant:ident => $name:literal, $doc:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ty {
            $(#[doc = $doc] $variant,)*
        }
        impl $ty {
            /// All of them, in index order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];
            /// Metric label.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name,)* }
            }
            /// The reason at `index` of the program's counters.
            pub fn from_index(index: usize) -> Option<$ty> {
                $ty::ALL.get(index).copied()
            }
        }
    };
}

reasons! {
    /// What the router program did with a packet: forwarded it, or passed it to the slow path
    /// for a reason (the `stats` map's index; the order of `enum reason` in the C source).
    Reason {
    Forwarded => "forwarded", "Encapsulated and transmitted in the kernel.";
    Disabled => "disabled", "The program is loaded but switched off.";
    NotIpv4 => "not_ipv4", "Not an IPv4 frame.";
    Malformed => "malformed", "A header is truncated or inconsistent (the slow path counts why).";
    Options => "options", "IPv4 options.";
    Fragment => "fragment", "A fragment.";
    BadChecksum => "bad_checksum", "The IPv4 header checksum does not verify.";
    Ttl => "ttl", "TTL 1 or 0: the kernel answers time-exceeded.";
    Protocol => "protocol", "Neither TCP nor UDP (ICMP and others).";
    TcpControl => "tcp_control", "SYN, FIN or RST: the core sees every change of a flow's state.";
    NoFlow => "no_flow", "No entry: a new flow, or one the core has not installed.";
    TooBig => "too_big", "Larger than the tunnel allows: the slow path fragments or answers.";
    NoRoute => "no_route", "No route to the next hop's tunnel address (or forwarding is off).";
    NoNeigh => "no_neigh", "The next hop's link-layer address is not resolved yet.";
    NoHeadroom => "no_headroom", "No room in front of the frame for the outer header.";
    UntrustedTunnel => "untrusted_tunnel", "Dropped: IP-in-IP to a middle level from outside its trusted parents.";
    Retunnelled => "retunnelled", "A parent's tunnel re-encapsulated toward the flow's next hop in the kernel.";
    }
}

reasons! {
    /// What the host program did with a packet (the `host_stats` map's index; the order of
    /// `enum host_reason` in the C source). The drop reasons carry the host agent's names
    /// (`slr_core::terminate::TerminateDrop`).
    HostReason {
    Delivered => "delivered", "Decapsulated; the inner packet went up the stack.";
    NotTunnel => "not_tunnel", "Not IP-in-IP: passed untouched.";
    SlowPath => "slow_path", "Outer options or fragment, or inner options: passed to the agent.";
    Disabled => "disabled", "The program is loaded but switched off: passed to the agent.";
    MalformedOuter => "malformed_outer", "Dropped: outer header malformed (length, checksum).";
    UntrustedSource => "untrusted_source", "Dropped: outer source outside the trust domain.";
    MalformedInner => "malformed_inner", "Dropped: inner packet malformed.";
    NestedTunnel => "nested_tunnel", "Dropped: the inner packet is itself IP-in-IP.";
    NotVirtualSubnet => "not_virtual_subnet", "Dropped: inner destination not a virtual subnet here.";
    TtlExpired => "ttl_expired", "Dropped: inner TTL 0.";
    }
}

impl HostReason {
    /// Whether the program dropped the packet for this reason.
    pub fn is_drop(self) -> bool {
        !matches!(
            self,
            HostReason::Delivered
                | HostReason::NotTunnel
                | HostReason::SlowPath
                | HostReason::Disabled
        )
    }
}
