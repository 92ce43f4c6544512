//! The router's Prometheus families, rendered from a snapshot (the packet path never formats
//! anything).

use crate::metrics::Exposition;
use crate::snapshot::Snapshot;

/// Adds the router's families, from a snapshot, to a scrape.
pub fn add_router_metrics(p: &mut Exposition, s: &Snapshot) {
    let r = [("router", s.name.as_str())];
    p.gauge(
        "slr_router_flows_active",
        "Flows pinned in the flow table.",
        &r,
        s.flows_active as f64,
    );
    p.gauge(
        "slr_router_stopping",
        "1 while the router stops gracefully (no new flows, established ones forwarded).",
        &r,
        f64::from(u8::from(s.stopping)),
    );
    p.gauge(
        "slr_router_flow_table_bytes",
        "Heap memory the flow table holds (estimate from its capacity).",
        &r,
        s.flow_table_bytes as f64,
    );
    p.gauge(
        "slr_router_flows_max",
        "Flow table bound.",
        &r,
        s.max_flows as f64,
    );
    let f = &s.fast_path;
    p.gauge(
        "slr_fast_path_enabled",
        "1 while the XDP program forwards established flows (router.fast_path = \"xdp\" and attached).",
        &r,
        f64::from(u8::from(f.enabled)),
    );
    for (reason, packets, bytes) in &f.reasons {
        let l = [("router", s.name.as_str()), ("reason", reason)];
        p.counter(
            "slr_fast_path_packets_total",
            "Packets the XDP program saw, by what it did: forwarded, or why it passed them to the slow path.",
            &l,
            *packets,
        );
        p.counter(
            "slr_fast_path_bytes_total",
            "Bytes (IP packets) the XDP program saw, by what it did.",
            &l,
            *bytes,
        );
    }
    p.counter(
        "slr_fast_path_map_full_total",
        "Flows the core offered to the fast path that its map had no room for (served by the slow path).",
        &r,
        f.map_full,
    );
    p.counter(
        "slr_fast_path_map_errors_total",
        "Fast path map updates that failed for another reason.",
        &r,
        f.errors,
    );
    if let Some(b) = &s.bgp {
        add_bgp_metrics(p, &s.name, b);
    }
    if let Some(m) = &s.mirror {
        add_mirror_metrics(p, &s.name, m);
    }
    if let Some(w) = &s.whohas {
        add_whohas_metrics(p, &s.name, w);
    }
    let c = &s.counters;
    let get = |k: &str| c[k].as_u64().unwrap_or(0);
    add_shortcut_metrics(p, &s.name, &get);
    p.counter(
        "slr_router_packets_total",
        "Packets handed to the router.",
        &r,
        get("packets_in"),
    );
    p.counter(
        "slr_router_bytes_total",
        "Bytes handed to the router.",
        &r,
        get("bytes_in"),
    );
    p.counter(
        "slr_router_tunneled_packets_total",
        "Packets sent into tunnels.",
        &r,
        get("packets_tunneled"),
    );
    p.counter(
        "slr_router_tunneled_bytes_total",
        "Bytes sent into tunnels.",
        &r,
        get("bytes_tunneled"),
    );
    p.counter(
        "slr_router_flows_created_total",
        "Flows created.",
        &r,
        get("flows_created"),
    );
    p.counter(
        "slr_router_flows_expired_total",
        "Flows expired by idle timeout.",
        &r,
        get("flows_expired"),
    );
    p.counter(
        "slr_router_flows_evicted_total",
        "Flows evicted from a full table.",
        &r,
        get("flows_evicted"),
    );
    p.counter(
        "slr_router_flows_rerouted_total",
        "Reused 5-tuples routed afresh.",
        &r,
        get("flows_rerouted"),
    );
    p.counter(
        "slr_router_flows_restored_total",
        "Flows taken back from the fast path's pinned map at start (each to the next hop it had).",
        &r,
        get("flows_restored"),
    );
    p.counter(
        "slr_router_icmp_frag_needed_total",
        "ICMP fragmentation-needed sent.",
        &r,
        get("icmp_frag_needed_sent"),
    );
    p.counter(
        "slr_router_icmp_errors_routed_total",
        "ICMP errors routed to the host owning the flow.",
        &r,
        get("icmp_errors_routed"),
    );
    p.counter(
        "slr_router_mss_clamped_total",
        "SYNs whose MSS was clamped.",
        &r,
        get("mss_clamped"),
    );
    for (reason, v) in &s.drops {
        p.counter(
            "slr_router_drops_total",
            "Packets dropped, by reason.",
            &[("router", &s.name), ("reason", reason)],
            *v,
        );
    }
    p.counter(
        "slr_router_device_drops_total",
        "Packets the capture device dropped (not IPv4, truncated).",
        &r,
        s.device_drops,
    );
    p.counter(
        "slr_router_tunnel_send_drops_total",
        "Tunnel packets the socket could not send.",
        &r,
        s.tunnel_send_drops,
    );
    for n in &s.next_hops {
        let l = [("router", s.name.as_str()), ("next_hop", n.name.as_str())];
        p.gauge(
            "slr_next_hop_available",
            "1 if the next hop takes new flows (health).",
            &l,
            n.available as u8 as f64,
        );
        p.gauge(
            "slr_next_hop_weight",
            "Weight in force (0 drains): the file's, or a runtime override's.",
            &l,
            n.weight as f64,
        );
        p.gauge(
            "slr_next_hop_drained",
            "1 if drained at run time (slr ctl R drain).",
            &l,
            f64::from(u8::from(n.drained)),
        );
        p.gauge(
            "slr_next_hop_overridden",
            "1 if a runtime override (weight or drain) applies.",
            &l,
            f64::from(u8::from(n.overridden)),
        );
        p.gauge(
            "slr_next_hop_flows_active",
            "Flows pinned to the next hop.",
            &l,
            n.active_flows as f64,
        );
        p.counter(
            "slr_next_hop_selections_total",
            "New flows given to the next hop.",
            &l,
            n.selections,
        );
        p.counter(
            "slr_next_hop_packets_total",
            "Packets tunnelled to the next hop.",
            &l,
            n.packets,
        );
        p.counter(
            "slr_next_hop_bytes_total",
            "Bytes tunnelled to the next hop.",
            &l,
            n.bytes,
        );
    }
    for v in &s.virtual_hosts {
        let l = [
            ("router", s.name.as_str()),
            ("virtual_host", v.name.as_str()),
        ];
        p.counter(
            "slr_virtual_host_packets_total",
            "Packets routed for the virtual host.",
            &l,
            v.packets,
        );
        p.counter(
            "slr_virtual_host_bytes_total",
            "Bytes routed for the virtual host.",
            &l,
            v.bytes,
        );
        p.counter(
            "slr_virtual_host_flows_total",
            "Flows created for the virtual host.",
            &l,
            v.flows_created,
        );
    }
}

/// `[bgp]`: BIRD, the sessions and the announcements.
fn add_bgp_metrics(p: &mut Exposition, router: &str, b: &crate::snapshot::BgpStatus) {
    let r = [("router", router)];
    p.gauge(
        "slr_bgp_bird_up",
        "1 while the router's BIRD runs and answers on its control socket.",
        &r,
        f64::from(u8::from(b.bird_up)),
    );
    p.counter(
        "slr_bgp_bird_restarts_total",
        "Times the router's BIRD died or failed to start and was started again.",
        &r,
        b.bird_restarts,
    );
    p.gauge(
        "slr_bgp_announced_subnets",
        "Virtual subnets the router announces (virtual hosts with a next hop that takes new flows; 0 while stopping).",
        &r,
        b.announced.len() as f64,
    );
    p.counter(
        "slr_bgp_announcement_changes_total",
        "Changes of the announced subnets loaded into BIRD.",
        &r,
        b.announcement_changes,
    );
    for sess in &b.sessions {
        p.gauge(
            "slr_bgp_session_established",
            "1 while the BGP session with this neighbour is established.",
            &[("router", router), ("neighbor", sess.neighbor.as_str())],
            f64::from(u8::from(sess.established)),
        );
    }
}

/// `[cluster] whohas`: WHOHAS.
fn add_whohas_metrics(p: &mut Exposition, router: &str, w: &crate::snapshot::WhohasView) {
    let r = [("router", router)];
    p.counter(
        "slr_whohas_asked_total",
        "Flows this router asked its peers about (a mid-flow packet of a flow it did not hold).",
        &r,
        w.asked,
    );
    for (outcome, n) in [
        ("resolved", w.resolved),
        ("nobody", w.not_found),
        ("timeout", w.timeouts),
        ("unusable", w.unusable),
        ("storm", w.overflow),
    ] {
        p.counter(
            "slr_whohas_flows_total",
            "Unknown mid-flow flows by outcome: resolved (pinned where a peer sends it), or routed by the policy (nobody held it, no answer in time, an answer naming no next hop here, too many questions pending).",
            &[("router", router), ("outcome", outcome)],
            n,
        );
    }
    p.counter(
        "slr_whohas_packets_held_total",
        "Packets held while their flow was asked about.",
        &r,
        w.packets_held,
    );
    p.gauge(
        "slr_whohas_pending",
        "Flows being asked about now.",
        &r,
        w.pending as f64,
    );
    p.counter(
        "slr_whohas_questions_dropped_total",
        "Questions dropped because the asker's queue was full (the policy picked at the timeout).",
        &r,
        w.questions_dropped,
    );
    p.gauge(
        "slr_whohas_ask_mean_seconds",
        "Mean time of this router's questions, from asking to every peer's answer.",
        &r,
        w.ask_mean_seconds,
    );
    p.gauge(
        "slr_whohas_ask_max_seconds",
        "The longest question.",
        &r,
        w.ask_max_seconds,
    );
    p.counter(
        "slr_whohas_answered_flows_total",
        "Flows peers asked this router about.",
        &r,
        w.flows_asked_here,
    );
    p.counter(
        "slr_whohas_answered_held_total",
        "Flows peers asked about that this router held.",
        &r,
        w.flows_held_here,
    );
    for peer in &w.peers {
        let l = [("router", router), ("peer", peer.name.as_str())];
        p.counter(
            "slr_whohas_peer_flows_held_total",
            "Flows the peer said it held.",
            &l,
            peer.flows_held,
        );
        p.counter(
            "slr_whohas_peer_failures_total",
            "Questions to the peer that failed (unreachable, refused, timed out).",
            &l,
            peer.failures,
        );
        p.counter(
            "slr_whohas_peer_skipped_total",
            "Questions not sent to the peer because it was unreachable a moment before.",
            &l,
            peer.skipped,
        );
    }
}

/// `[cluster]`: flow mirroring.
fn add_mirror_metrics(p: &mut Exposition, router: &str, m: &crate::snapshot::MirrorView) {
    let r = [("router", router)];
    p.counter(
        "slr_mirror_changes_offered_total",
        "Changes of this router's flows (pinned, let go of) handed to the peers' senders.",
        &r,
        m.changes_offered,
    );
    p.counter(
        "slr_mirror_changes_dropped_total",
        "Changes a sender's full queue dropped (the peer's next full sync repairs them).",
        &r,
        m.changes_dropped_queue_full,
    );
    for (result, n) in [
        ("taken_in", m.flows_taken_in),
        ("already_held", m.flows_already_held),
        ("not_taken", m.flows_not_taken),
    ] {
        p.counter(
            "slr_mirror_flows_received_total",
            "Flows peers pinned, by what the core did with them.",
            &[("router", router), ("result", result)],
            n,
        );
    }
    p.counter(
        "slr_mirror_refreshes_sent_total",
        "Flows this router carries that it told the peers of again (active since the last pass), so that their copies do not idle out.",
        &r,
        m.refreshes_sent,
    );
    p.counter(
        "slr_mirror_copies_refreshed_total",
        "Copies kept alive because their owner told of them again.",
        &r,
        m.copies_refreshed,
    );
    p.counter(
        "slr_mirror_copies_released_total",
        "Copies removed when their peer let the flow go.",
        &r,
        m.copies_released,
    );
    p.gauge(
        "slr_mirror_copies",
        "Flows taken in from peers that carried no packet here yet.",
        &r,
        m.copies as f64,
    );
    p.counter(
        "slr_mirror_batches_received_total",
        "Batches accepted from peers.",
        &r,
        m.batches_received,
    );
    p.gauge(
        "slr_mirror_lag_seconds",
        "From a peer's sending to this router's receiving of the last batch.",
        &r,
        m.last_lag_seconds,
    );
    p.gauge(
        "slr_mirror_lag_max_seconds",
        "The largest mirroring lag seen.",
        &r,
        m.max_lag_seconds,
    );
    for (reason, n) in &m.refused {
        p.counter(
            "slr_mirror_refused_total",
            "Connections, batches and flows refused from strangers or malformed, by reason.",
            &[("router", router), ("reason", reason.as_str())],
            *n,
        );
    }
    for peer in &m.peers {
        let l = [("router", router), ("peer", peer.name.as_str())];
        p.gauge(
            "slr_mirror_peer_connected",
            "1 while this router's sender is connected to the peer.",
            &l,
            f64::from(u8::from(peer.connected)),
        );
        p.counter(
            "slr_mirror_changes_sent_total",
            "Changes the peer accepted (full syncs included).",
            &l,
            peer.changes_sent,
        );
        p.counter(
            "slr_mirror_bytes_sent_total",
            "Bytes sent to the peer on the wire (TLS and HTTP/2 included).",
            &l,
            peer.bytes_sent,
        );
        p.counter(
            "slr_mirror_full_syncs_total",
            "Full syncs sent to the peer (one per connection).",
            &l,
            peer.full_syncs,
        );
    }
}

/// The shortcut (F10), from the core's counters (all zero without `[control] shortcut`).
fn add_shortcut_metrics(p: &mut Exposition, router: &str, get: &dyn Fn(&str) -> u64) {
    let r = [("router", router)];
    p.counter(
        "slr_shortcut_signals_total",
        "Shortcut signals this router's core emitted for new flows from its parent (sent up when the next hop is a host).",
        &r,
        get("shortcut_signals"),
    );
    p.counter(
        "slr_shortcut_resignals_total",
        "Flows from the parent signalled again because their packets still came this way (a lost signal, or an ingress that lost its entry), at their 16th, 32nd, 64th, ... packet here.",
        &r,
        get("shortcut_resignals"),
    );
    p.counter(
        "slr_shortcut_signals_dropped_total",
        "Shortcut signals lost because the queue to the control thread was full.",
        &r,
        get("shortcut_signals_dropped"),
    );
    for (outcome, key) in [
        ("installed", "shortcuts_installed"),
        ("relayed", "shortcuts_relayed"),
        ("kept", "shortcuts_kept"),
        ("unknown_flow", "shortcuts_refused_unknown_flow"),
        ("not_pinned", "shortcuts_refused_not_pinned"),
        ("bad_address", "shortcuts_refused_bad_address"),
    ] {
        p.counter(
            "slr_shortcut_child_signals_total",
            "Children's shortcut signals by outcome: installed (this router is the flow's ingress), relayed to the parent, kept (this router's own health probe, which must cross the child it tests), or refused (a flow not held, or not pinned to that child; a bad host address).",
            &[("router", router), ("outcome", outcome)],
            get(key),
        );
    }
    p.counter(
        "slr_shortcut_packets_total",
        "Packets tunnelled by a shortcut straight to a host (slow path; the fast path counts its own).",
        &r,
        get("shortcut_packets"),
    );
    p.counter(
        "slr_shortcut_packets_held_total",
        "Packets held at the ingress while their flow's shortcut was awaited.",
        &r,
        get("shortcut_packets_held"),
    );
    p.counter(
        "slr_shortcut_hold_expired_total",
        "Flows whose shortcut did not come within control.shortcut_hold (their packets went down the hierarchy).",
        &r,
        get("shortcut_hold_expired"),
    );
    p.counter(
        "slr_shortcuts_flushed_total",
        "Shortcuts cleared by slr ctl R shortcuts flush.",
        &r,
        get("shortcuts_flushed"),
    );
}
