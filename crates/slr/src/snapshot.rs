//! What the router's packet thread answers when asked: a consistent snapshot of the core's
//! state and counters, and rows of its flow table. Built on the packet thread from the core's
//! getters, then read by the control socket, the metrics endpoint, the health checkers and the
//! control thread, none of which touch the core.

use serde::Serialize;
use serde_json::{json, Value};
use slr_core::flow_table::FlowState;
use slr_core::router::{DropReason, Router};

/// One next hop in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct NextHopRow {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Weight.
    pub weight: u32,
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
    /// Router-wide counters.
    pub counters: Value,
    /// Drops by reason.
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
}

/// A snapshot of the core, with the device counters the packet thread keeps.
pub fn snapshot(name: &str, r: &Router, device_drops: u64, tunnel_send_drops: u64) -> Snapshot {
    let c = r.counters();
    Snapshot {
        name: name.to_string(),
        flows_active: r.flow_count(),
        max_flows: r.config().flow_table.max_flows,
        counters: json!({
            "packets_in": c.packets_in, "bytes_in": c.bytes_in,
            "packets_tunneled": c.packets_tunneled, "bytes_tunneled": c.bytes_tunneled,
            "flows_created": c.flows_created, "flows_expired": c.flows_expired,
            "flows_evicted": c.flows_evicted, "flows_rerouted": c.flows_rerouted,
            "icmp_frag_needed_sent": c.icmp_frag_needed_sent, "icmp_rate_limited": c.icmp_rate_limited,
            "icmp_errors_routed": c.icmp_errors_routed, "mss_clamped": c.mss_clamped,
            "fragments_routed": c.fragments_routed, "fragments_held": c.fragments_held,
            "tunnels_terminated": c.tunnels_terminated, "drops_total": c.drops_total(),
        }),
        drops: DropReason::ALL
            .iter()
            .map(|&d| (d.as_str().to_string(), c.drops(d)))
            .collect(),
        next_hops: r
            .next_hops()
            .iter()
            .map(|n| NextHopRow {
                name: n.name.clone(),
                address: n.address.to_string(),
                weight: n.weight,
                available: n.available,
                configured: n.configured,
                active_flows: n.active_flows,
                selections: n.selections,
                packets: n.packets,
                bytes: n.bytes,
            })
            .collect(),
        virtual_hosts: r
            .virtual_hosts()
            .iter()
            .map(|v| VirtualHostRow {
                name: v.config.name.clone(),
                subnet: v.config.subnet.to_string(),
                policy: v.config.policy.as_str().to_string(),
                udp: v.config.udp.as_str().to_string(),
                next_hops: v
                    .members
                    .iter()
                    .map(|&i| r.next_hops()[i].name.clone())
                    .collect(),
                packets: v.packets,
                bytes: v.bytes,
                flows_created: v.flows_created,
            })
            .collect(),
        device_drops,
        tunnel_send_drops,
        cpu_seconds: crate::metrics::process_cpu_seconds(),
        resident_bytes: crate::metrics::process_resident_bytes(),
    }
}

/// Up to `limit` flows of the table, as `slr ctl flows` shows them.
pub fn flow_rows(r: &Router, now: slr_core::time::Instant, limit: usize) -> Vec<FlowRow> {
    r.flows()
        .take(limit)
        .map(|(k, e)| FlowRow {
            protocol: match k.protocol {
                6 => "tcp".into(),
                17 => "udp".into(),
                1 => "icmp".into(),
                p => p.to_string(),
            },
            client: format!("{}:{}", k.src_addr, k.src_port),
            virtual_host: format!("{}:{}", k.dst_addr, k.dst_port),
            next_hop: r.next_hops()[e.next_hop() as usize].name.clone(),
            state: state_name(e.state()).into(),
            age_secs: (now - e.created()).as_secs_f64(),
            idle_secs: (now - e.last_seen()).as_secs_f64(),
            packets: e.packets(),
            bytes: e.bytes(),
        })
        .collect()
}

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::TcpHalfOpen => "syn",
        FlowState::TcpEstablished => "established",
        FlowState::TcpClosing => "closing",
        FlowState::Udp => "udp",
        FlowState::Other => "other",
    }
}
