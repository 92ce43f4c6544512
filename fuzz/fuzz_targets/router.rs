//! The router state machine on arbitrary packets: plain (`handle_packet`) and tunnelled from a
//! parent (`handle_tunnelled_packet`), interleaved with time passing (`handle_timeout`), control
//! inputs and route tables, with its accounting and output checked after every step.
//!
//! Input: one flags byte, then records. A record is an opcode byte and its operands:
//! - `op & 3 == 0`: plain packet, `len: u16 le` then `len` bytes (fewer if the input ends);
//! - `op & 3 == 1`: tunnelled packet, same layout;
//! - with `op & 4` set, the IPv4 header checksum of the packet (and of the inner packet of a
//!   tunnelled one) is recomputed first, so that mutated headers get past the checksum;
//! - `op & 3 == 2`: time passes by `u16 le` units of 1 us, 1 ms, 100 ms or 10 s (`op >> 2 & 3`),
//!   then `handle_timeout`;
//! - `op & 3 == 3`, `op & 0x10` clear: control (`op >> 2 & 3`): toggle a next hop's health,
//!   reconfigure weights and addresses, pin a flow, unpin it; one operand byte; the first 16
//!   only (the first 2 health toggles and reconfigurations only under Maglev, see below);
//! - `op & 3 == 3`, `op & 0x10` set: install a route table ([`route_table`] has the layout); the
//!   first 16 only.
//!
//! At most 256 records are run.
//!
//! Flags: bits 0-1 and 7 the policy (round robin, weighted, least flows, cost; with bit 7:
//! Maglev, cost, cost, cost), bit 2 UDP per datagram, bit 3 MSS clamping, bit 4 a 576-byte
//! tunnel MTU, bit 5 a flow table of 8 entries (eviction), bit 6 a steering rule (destination
//! ports 0-1023 to `h1` only).
//!
//! Maglev builds a 65,537-slot table per selector when the router is made and whenever the
//! next hops' health or weights change: ~10 ms under instrumentation, where a whole run under
//! another policy takes a fraction of a millisecond. So a Maglev input gets at most
//! [`MAGLEV_REBUILDS`] health toggles and reconfigurations; the rest of its records run as usual.
//!
//! Checked: every input packet ends as exactly one of tunnelled, dropped (counted under one
//! reason) or held; `packets_in == drops_total + packets_tunneled + still held`, and nothing is
//! held any more once fragment state has timed out; every tunnelled packet (returned or released
//! later) is a valid IPv4 IP-in-IP packet to a next hop, carrying a valid packet for the virtual
//! subnet that fits the tunnel MTU when DF is set; every ICMP error is well formed; the flow table
//! stays within its bound and the per-next-hop flow counts add up to it.
//!
//! Selection: a packet selects at most one next hop, an eligible one (configured, available,
//! weight > 0), `h1` when the steering rule matches; `no_next_hop` only when no next hop is
//! eligible. Maglev gives a flow the same next hop again while health and weights stay. Under
//! cost, a route table is accepted exactly when `RouteTable::validate` accepts it (a refused one
//! leaves the installed table in place), and its names that are no configured next hop are
//! listed; a new flow goes to the rendezvous choice among the eligible `chosen` of the flow's
//! entry (group of the longest client prefix, then the longest subnet, else the group-less
//! entries) or, if none is eligible, to the lowest-cost eligible candidate not held back;
//! `no_route` when there is no table or no entry, `no_next_hop` when the entry has no eligible
//! candidate. Established flows keep their next hop across every control input (F9).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_core::flow_table::{FlowKey, FlowTableConfig};
use slr_core::route_table::{
    name_hash, rendezvous, ClientGroup, RouteCandidate, RouteEntry, RouteTable,
};
use slr_core::router::{
    flow_hash, Action, Control, ControlError, Destination, DropReason, NextHopConfig, Router,
    RouterConfig, SteeringRule, UdpMode, VirtualHostConfig,
};
use slr_core::select::Policy;
use slr_core::time::{Duration, Instant};
use slr_wire::icmp::{self, IcmpPacket};
use slr_wire::ipv4::{Ipv4Cidr, Ipv4Packet, Ipv4Repr, Protocol};
use slr_wire::PacketBuf;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const HASH_SEED: u64 = 7;
/// Health toggles and reconfigurations a Maglev input may make: each one rebuilds the Maglev
/// tables (one per selector: the virtual host's and the steering rule's), ~10 ms apiece.
const MAGLEV_REBUILDS: u32 = 2;

fn subnet() -> Ipv4Cidr {
    "10.99.0.0/24".parse().unwrap()
}

fn host_address(i: usize, moved: bool) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 3 + i as u8, if moved { 3 } else { 2 })
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> u16 {
        let lo = self.byte().unwrap_or(0);
        let hi = self.byte().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// A flow's next hop as inspection shows it: (name, address).
type FlowSnapshot = BTreeMap<FlowKey, (String, Ipv4Addr)>;

struct Harness {
    router: Router,
    config: RouterConfig,
    policy: Policy,
    /// Whether the steering rule (destination ports 0-1023 to `h1`) is configured.
    rule: bool,
    now: Instant,
    calls: u64,
    tunneled: u64,
    dropped: Vec<u64>,
    held: u64,
    released: u64,
    /// The route table the router should have installed.
    table: Option<RouteTable>,
    /// Maglev: each flow's choice since health or weights last changed.
    maglev_choices: BTreeMap<FlowKey, usize>,
    maglev_rebuilds: u32,
}

/// The policy of flags bits 0-1 and 7 (see the top of the file).
fn policy(flags: u8) -> Policy {
    match (flags & 0x80 != 0, flags & 3) {
        (false, 0) => Policy::RoundRobin,
        (false, 1) => Policy::Weighted,
        (false, 2) => Policy::LeastFlows,
        (true, 0) => Policy::Maglev,
        _ => Policy::Cost,
    }
}

fn config(flags: u8) -> RouterConfig {
    let mut c = RouterConfig::new(SOURCE);
    c.hash_seed = HASH_SEED;
    c.tunnel_mtu = if flags & 0x10 != 0 { 576 } else { 1500 };
    c.mss_clamp = (flags & 0x08 != 0).then_some(c.tunnel_mtu - 60);
    c.trusted_parents = vec!["10.200.1.0/24".parse().unwrap()];
    c.icmp_rate_limit = 100;
    if flags & 0x20 != 0 {
        c.flow_table = FlowTableConfig {
            max_flows: 8,
            ..FlowTableConfig::default()
        };
    }
    c.virtual_hosts = vec![VirtualHostConfig {
        name: "web".into(),
        subnet: subnet(),
        policy: policy(flags),
        udp: if flags & 0x04 != 0 {
            UdpMode::PerDatagram
        } else {
            UdpMode::Pin
        },
        next_hops: Vec::new(),
        // Steering rules on some inputs: well-known destination ports to the first host.
        rules: if flags & 0x40 != 0 {
            vec![SteeringRule {
                dst_ports: vec![(0, 1023)],
                next_hops: vec![HOSTS[0].into()],
                ..SteeringRule::default()
            }]
        } else {
            Vec::new()
        },
    }];
    c.next_hops = HOSTS
        .iter()
        .enumerate()
        .map(|(i, n)| NextHopConfig {
            name: (*n).into(),
            address: host_address(i, false),
            weight: 1,
        })
        .collect();
    c
}

/// The flow key the router makes of a packet (the inner packet of a tunnelled one), for as far
/// as the packet gets: addresses and protocol from the IPv4 header; ports of TCP and UDP; the
/// echo identifier as the source port of ICMP; zero ports otherwise. `None` when the header is
/// too short to route.
fn routed_key(bytes: &[u8], tunnelled: bool) -> Option<FlowKey> {
    let b = if tunnelled {
        bytes.get(usize::from(bytes.first()? & 0x0f) * 4..)?
    } else {
        bytes
    };
    let h = b.get(..20)?;
    let payload = b.get(usize::from(h[0] & 0x0f) * 4..).unwrap_or(&[]);
    let be16 = |i: usize| {
        payload
            .get(i..i + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    let (src_port, dst_port) = match h[9] {
        6 | 17 => (be16(0)?, be16(2)?),
        1 => (be16(4).unwrap_or(0), 0),
        _ => (0, 0),
    };
    Some(FlowKey::new(
        Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        src_port,
        dst_port,
        h[9],
    ))
}

/// The route table entry for a new flow from `src` to `dst`, as `route_table`'s documentation
/// says: the flow's group is that of the longest client prefix containing `src`; the entry is
/// that group's longest subnet containing `dst`, else the longest among the group-less entries.
fn lookup(t: &RouteTable, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&RouteEntry> {
    let group = t
        .client_groups
        .iter()
        .flat_map(|g| g.prefixes.iter().map(move |p| (p, g.name.as_str())))
        .filter(|(p, _)| p.contains(src))
        // The first of the longest: `max_by_key` keeps the last of equals, so go backwards.
        .rev()
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, g)| g);
    let best = |g: Option<&str>| {
        t.entries
            .iter()
            .filter(|e| e.client_group.as_deref() == g && e.subnet.contains(dst))
            .max_by_key(|e| e.subnet.prefix_len())
    };
    group.and_then(|g| best(Some(g))).or_else(|| best(None))
}

impl Harness {
    /// The index of the configured next hop `name`.
    fn configured(&self, name: &str) -> Option<usize> {
        self.router
            .next_hops()
            .iter()
            .position(|n| n.configured && n.name == name)
    }

    /// Whether a new flow may go to next hop `i` (eligible, and `h1` if the rule matches).
    fn may_take(&self, i: usize, rule_matches: bool) -> bool {
        let n = &self.router.next_hops()[i];
        n.eligible() && (!rule_matches || n.name == HOSTS[0])
    }

    /// Where the installed route table sends a new flow `key`: the route table's own rules,
    /// written out here from its documentation.
    fn cost_choice(&self, key: &FlowKey, rule_matches: bool) -> Result<usize, DropReason> {
        let t = self.table.as_ref().ok_or(DropReason::NoRoute)?;
        let e = lookup(t, key.src_addr, key.dst_addr).ok_or(DropReason::NoRoute)?;
        let usable = |n: &str| {
            self.configured(n)
                .filter(|&i| self.may_take(i, rule_matches))
        };
        let band = e
            .chosen
            .iter()
            .filter_map(|n| usable(n).map(|i| (i, name_hash(HASH_SEED, n))));
        if let Some(i) = rendezvous(flow_hash(HASH_SEED, key), band) {
            return Ok(i);
        }
        let mut by_cost: Vec<&RouteCandidate> = e.candidates.iter().collect();
        by_cost.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(a.next_hop.cmp(&b.next_hop)));
        by_cost
            .iter()
            .filter(|c| !e.held_back.contains(&c.next_hop))
            .find_map(|c| usable(&c.next_hop))
            .ok_or(DropReason::NoNextHop)
    }

    fn packet(&mut self, bytes: &[u8], tunnelled: bool) {
        let mut buf = PacketBuf::from_slice(bytes);
        let selections: Vec<u64> = self
            .router
            .next_hops()
            .iter()
            .map(|n| n.selections)
            .collect();
        self.calls += 1;
        let action = if tunnelled {
            self.router.handle_tunnelled_packet(self.now, &mut buf)
        } else {
            self.router.handle_packet(self.now, &mut buf)
        };
        if trace() {
            eprintln!(
                "{} {} bytes -> {action:?}",
                if tunnelled { "tunnelled" } else { "plain" },
                bytes.len()
            );
        }
        match action {
            Action::Tunnel { next_hop } => {
                self.tunneled += 1;
                self.check_tunnel(&buf, next_hop);
            }
            Action::Held => {
                self.held += 1;
                assert!(
                    buf.is_empty(),
                    "a held packet's buffer is replaced by an empty one"
                );
            }
            Action::Drop(r) => self.dropped[r as usize] += 1,
        }
        self.check_selection(&selections, routed_key(bytes, tunnelled), action);
    }

    /// The next hop a packet selected (compared with the `selections` counters from before it),
    /// checked against the policy; and the drops that say no next hop could be selected.
    fn check_selection(&mut self, before: &[u64], key: Option<FlowKey>, action: Action) {
        let next_hops = self.router.next_hops();
        assert_eq!(
            next_hops.len(),
            before.len(),
            "next hops changed by a packet"
        );
        let mut selected = None;
        for (i, (n, &b)) in next_hops.iter().zip(before).enumerate() {
            match n.selections - b {
                0 => {}
                1 if selected.is_none() => selected = Some(i),
                d => panic!("{d} more selections of {} by one packet", n.name),
            }
        }
        let rule_matches = self.rule && key.is_some_and(|k| k.dst_port <= 1023);
        if let Some(i) = selected {
            let key = key.expect("a packet that selected a next hop has a flow key");
            assert!(
                self.may_take(i, rule_matches),
                "new flow {key:?} to {:?} (rule matches: {rule_matches})",
                next_hops[i]
            );
            match self.policy {
                Policy::Cost => assert_eq!(
                    self.cost_choice(&key, rule_matches),
                    Ok(i),
                    "cost: new flow {key:?} not where the route table says"
                ),
                Policy::Maglev => {
                    let first = *self.maglev_choices.entry(key).or_insert(i);
                    assert_eq!(first, i, "maglev: flow {key:?} moved without a change");
                }
                _ => {}
            }
        }
        match action {
            Action::Drop(DropReason::NoRoute) => {
                assert_eq!(
                    self.policy,
                    Policy::Cost,
                    "no_route without the cost policy"
                );
                let key = key.expect("no_route: a flow key");
                assert_eq!(
                    self.cost_choice(&key, rule_matches),
                    Err(DropReason::NoRoute)
                );
            }
            Action::Drop(DropReason::NoNextHop) => {
                let key = key.expect("no_next_hop: a flow key");
                if self.policy == Policy::Cost {
                    assert_eq!(
                        self.cost_choice(&key, rule_matches),
                        Err(DropReason::NoNextHop)
                    );
                } else {
                    assert!(
                        !(0..next_hops.len())
                            .any(|i| next_hops[i].configured && self.may_take(i, rule_matches)),
                        "no_next_hop with an eligible next hop"
                    );
                }
            }
            _ => {}
        }
    }

    fn check_tunnel(&self, buf: &PacketBuf, next_hop: Ipv4Addr) {
        let outer = Ipv4Packet::new_checked(buf.as_ref()).expect("tunnel packet: outer header");
        let r = Ipv4Repr::parse(&outer).expect("tunnel packet: outer header parses");
        assert_eq!(r.protocol, Protocol::IpIp);
        assert_eq!((r.src_addr, r.dst_addr), (SOURCE, next_hop));
        assert!(
            (0..HOSTS.len())
                .any(|i| next_hop == host_address(i, false) || next_hop == host_address(i, true)),
            "tunnel to {next_hop}, not a next hop"
        );
        assert_eq!(outer.total_len() as usize, buf.len());
        assert!(!outer.is_fragment());
        let inner = Ipv4Packet::new_checked(outer.payload()).expect("tunnel packet: inner header");
        assert!(inner.verify_checksum(), "tunnel packet: inner checksum");
        assert_eq!(inner.total_len() as usize, outer.payload().len());
        assert!(subnet().contains(inner.dst_addr()));
        assert_ne!(inner.ttl(), 0);
        assert_ne!(inner.protocol(), Protocol::IpIp);
        if inner.dont_frag() {
            assert!(
                buf.len() <= self.router.config().tunnel_mtu as usize,
                "DF packet over the tunnel MTU"
            );
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.router.poll_transmit() {
            match t.destination {
                Destination::Tunnel(a) => {
                    self.released += 1;
                    self.check_tunnel(&t.buf, a);
                }
                Destination::Local => {
                    let ip =
                        Ipv4Packet::new_checked(t.buf.as_ref()).expect("ICMP error: IPv4 header");
                    let r = Ipv4Repr::parse(&ip).expect("ICMP error: parses");
                    assert_eq!(r.protocol, Protocol::Icmp);
                    assert!(subnet().contains(r.src_addr), "ICMP error from the VIP");
                    assert!(t.buf.len() <= icmp::MAX_ERROR_DATAGRAM);
                    let m = IcmpPacket::new_checked(ip.payload()).expect("ICMP error: header");
                    assert!(m.verify_checksum());
                    assert_eq!(
                        (m.msg_type(), m.code()),
                        (icmp::DST_UNREACHABLE, icmp::CODE_FRAG_NEEDED)
                    );
                    assert_eq!(
                        m.rest_of_header(),
                        u32::from(self.router.config().tunnel_mtu) - 20
                    );
                }
            }
        }
        while self.router.poll_event().is_some() {}
        let _ = self.router.poll_timeout();
    }

    fn check(&self) {
        let c = self.router.counters();
        assert_eq!(c.packets_in, self.calls);
        assert_eq!(
            self.calls,
            self.tunneled + self.dropped.iter().sum::<u64>() + self.held
        );
        // Held fragments end tunnelled (released), dropped as orphans, or are still held.
        assert_eq!(c.packets_tunneled, self.tunneled + self.released);
        let orphans = c.drops(DropReason::FragmentOrphan);
        let held_no_room =
            c.drops(DropReason::NoHeadroom) - self.dropped[DropReason::NoHeadroom as usize];
        for &r in DropReason::ALL {
            if r != DropReason::FragmentOrphan && r != DropReason::NoHeadroom {
                assert_eq!(c.drops(r), self.dropped[r as usize], "drops of {r:?}");
            }
        }
        assert_eq!(self.dropped[DropReason::FragmentOrphan as usize], 0);
        let resolved = self.released + orphans + held_no_room;
        assert!(
            resolved <= self.held,
            "{resolved} held fragments resolved, {} held",
            self.held
        );
        let still_held = self.held - resolved;
        assert_eq!(
            c.packets_in,
            c.drops_total() + c.packets_tunneled + still_held
        );

        let flows = self.router.flow_count();
        assert!(flows <= self.config.flow_table.max_flows.max(1));
        assert_eq!(self.router.flows().count(), flows);
        let active: u64 = self
            .router
            .next_hops()
            .iter()
            .map(|n| u64::from(n.active_flows))
            .sum();
        assert_eq!(
            active, flows as u64,
            "per-next-hop flow counts do not add up to the table"
        );

        // The table's names that are no configured next hop (only `h4` here) are listed, once
        // each: those of candidates not held back, and of the band.
        assert_eq!(self.router.route_table(), self.table.as_ref());
        let mut expected: Vec<&str> = self
            .table
            .iter()
            .flat_map(|t| &t.entries)
            .flat_map(|e| {
                e.candidates
                    .iter()
                    .map(|c| &c.next_hop)
                    .filter(|n| !e.held_back.contains(n))
                    .chain(&e.chosen)
            })
            .map(String::as_str)
            .filter(|n| self.configured(n).is_none())
            .collect();
        expected.sort_unstable();
        expected.dedup();
        let mut unknown: Vec<&str> = self
            .router
            .route_table_unknown_next_hops()
            .iter()
            .map(String::as_str)
            .collect();
        unknown.sort_unstable();
        assert_eq!(unknown, expected, "route table names that are no next hop");
    }

    fn flows(&self) -> FlowSnapshot {
        let next_hops = self.router.next_hops();
        self.router
            .flows()
            .map(|(k, e)| {
                let n = &next_hops[e.next_hop() as usize];
                (*k, (n.name.clone(), n.address))
            })
            .collect()
    }

    fn control(&mut self, op: u8, input: &mut Input) {
        let operand = input.byte().unwrap_or(0);
        let kind = (op >> 2) & 3;
        if self.policy == Policy::Maglev && kind <= 1 {
            if self.maglev_rebuilds == MAGLEV_REBUILDS {
                return;
            }
            self.maglev_rebuilds += 1;
            self.maglev_choices.clear();
        }
        if trace() {
            eprintln!("control {kind} {operand:#04x}");
        }
        let before = self.flows();
        match kind {
            0 => {
                // Toggle: down if it is up, up if it is down.
                let i = operand as usize % HOSTS.len();
                let available = !self
                    .router
                    .next_hops()
                    .iter()
                    .any(|n| n.name == HOSTS[i] && n.configured && n.available);
                let r = self.router.handle_control(
                    self.now,
                    Control::SetAvailable {
                        next_hop: HOSTS[i].into(),
                        available,
                    },
                );
                r.expect("SetAvailable of a configured next hop");
                assert_eq!(self.flows(), before, "a health change moved flows");
            }
            1 => {
                // New weights (0 drains) and addresses (a moved host is a new next hop; the old
                // one keeps serving its flows).
                let w = operand;
                let mut c = self.config.clone();
                for (i, n) in c.next_hops.iter_mut().enumerate() {
                    n.weight = u32::from((w >> (2 * i)) & 3);
                    n.address = host_address(i, w & 0x40 != 0 && i == 0);
                }
                if w & 0x80 != 0 {
                    c.flow_table.max_flows = 4;
                }
                self.router
                    .handle_control(self.now, Control::Reconfigure(Box::new(c.clone())))
                    .expect("valid config");
                self.config = c;
                // Flows may be evicted (a smaller table), none moves (F9).
                for (k, nh) in self.flows() {
                    assert_eq!(before.get(&k), Some(&nh), "reconfiguration moved {k:?}");
                }
            }
            2 => {
                let key = flow_key(operand);
                let next_hop = HOSTS[(operand >> 6) as usize % HOSTS.len()];
                let r = self.router.handle_control(
                    self.now,
                    Control::PinFlow {
                        key,
                        next_hop: next_hop.into(),
                    },
                );
                r.expect("PinFlow to a configured next hop");
                let after = self.flows();
                let pinned = &after.get(&key).expect("a pinned flow is in the table").0;
                assert_eq!(pinned, next_hop);
                for (k, nh) in after.iter().filter(|(k, _)| **k != key) {
                    assert_eq!(before.get(k), Some(nh), "pinning a flow moved {k:?}");
                }
            }
            _ => {
                let key = flow_key(operand);
                self.router
                    .handle_control(self.now, Control::UnpinFlow { key })
                    .unwrap();
                let mut expected = before;
                expected.remove(&key);
                assert_eq!(self.flows(), expected, "unpinning a flow moved others");
            }
        }
    }

    fn install_route_table(&mut self, table: RouteTable) {
        let expected = table.validate().map_err(ControlError::RouteTable);
        let before = self.flows();
        let r = self.router.handle_control(
            self.now,
            Control::InstallRouteTable(Box::new(table.clone())),
        );
        if trace() {
            eprintln!("install {table:?} -> {r:?}");
        }
        assert_eq!(
            r, expected,
            "route table accepted or refused against validate()"
        );
        if r.is_ok() {
            self.table = Some(table);
        }
        // A refused table leaves the installed one; neither moves an established flow (F9).
        assert_eq!(self.router.route_table(), self.table.as_ref());
        assert_eq!(
            self.flows(),
            before,
            "a route table moved established flows"
        );
    }
}

/// Client prefixes for client groups; the seeds' clients are 10.0.0.1 and 10.0.0.254.
const CLIENT_PREFIXES: [&str; 8] = [
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.1/32",
    "10.0.0.128/25",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "10.0.0.254/32",
    "10.0.0.0/31",
];
/// Subnets of route table entries: the virtual subnet, parts of it, wider ones and others.
const ENTRY_SUBNETS: [&str; 8] = [
    "10.99.0.0/24",
    "10.99.0.0/25",
    "10.99.0.128/25",
    "10.99.0.1/32",
    "10.0.0.0/8",
    "10.99.0.0/16",
    "10.98.0.0/24",
    "0.0.0.0/0",
];
/// Group names; "east" twice, so that a table can define a group twice (refused).
const GROUP_NAMES: [&str; 4] = ["east", "west", "core", "east"];
/// Names in route tables: the next hops, and `h4`, which the router does not know.
const TABLE_NAMES: [&str; 4] = ["h1", "h2", "h3", "h4"];
const COSTS: [f64; 16] = [
    0.0,
    1.0,
    1.0,
    2.0,
    10.0,
    0.5,
    -1.0,
    -0.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN, // refused
    1e-300,
    1e300,
    3.0,
    1.0 + f64::EPSILON,
    f64::MIN_POSITIVE,
];

/// A route table from the input:
/// - `generation: u8` (spread over the u64 range);
/// - `groups: u8`, `groups & 3` client groups of one byte each: bits 0-2 a prefix of
///   [`CLIENT_PREFIXES`], bits 3-4 the name ([`GROUP_NAMES`]), bit 5 a second prefix (3 on);
/// - `entries: u8`, `entries & 7` entries, each one byte: bits 0-2 the subnet
///   ([`ENTRY_SUBNETS`]), bits 3-4 the client group (none, east, west, core), bits 5-6 the
///   number of candidates, bit 7 an extra byte; then a byte per candidate: bits 0-1 the name
///   ([`TABLE_NAMES`]), bit 2 chosen, bit 3 held back, bits 4-7 the cost ([`COSTS`]); then the
///   extra byte if any: bits 0-1 a name added to `chosen` and bits 2-3 one added to
///   `held_back`, candidates or not.
///
/// Every way `RouteTable::validate` refuses a table can come out of it.
fn route_table(input: &mut Input) -> RouteTable {
    let mut b = || input.byte().unwrap_or(0);
    let generation = u64::from(b()).wrapping_mul(0x0101_0101_0101_0101);
    let cidr = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
    let client_groups = (0..b() & 3)
        .map(|_| {
            let g = b();
            let p = usize::from(g & 7);
            let mut prefixes = vec![cidr(CLIENT_PREFIXES[p])];
            if g & 0x20 != 0 {
                prefixes.push(cidr(CLIENT_PREFIXES[(p + 3) % 8]));
            }
            ClientGroup {
                name: GROUP_NAMES[usize::from(g >> 3 & 3)].into(),
                prefixes,
            }
        })
        .collect();
    let mut entries = Vec::new();
    for _ in 0..b() & 7 {
        let e = b();
        let mut entry = RouteEntry {
            subnet: cidr(ENTRY_SUBNETS[usize::from(e & 7)]),
            client_group: [None, Some("east"), Some("west"), Some("core")][usize::from(e >> 3 & 3)]
                .map(str::to_owned),
            candidates: Vec::new(),
            chosen: Vec::new(),
            held_back: Vec::new(),
        };
        for _ in 0..(e >> 5 & 3) {
            let c = b();
            let name = TABLE_NAMES[usize::from(c & 3)].to_owned();
            if c & 4 != 0 {
                entry.chosen.push(name.clone());
            }
            if c & 8 != 0 {
                entry.held_back.push(name.clone());
            }
            entry.candidates.push(RouteCandidate {
                next_hop: name,
                cost: COSTS[usize::from(c >> 4)],
            });
        }
        if e & 0x80 != 0 {
            let x = b();
            entry.chosen.push(TABLE_NAMES[usize::from(x & 3)].into());
            entry
                .held_back
                .push(TABLE_NAMES[usize::from(x >> 2 & 3)].into());
        }
        entries.push(entry);
    }
    RouteTable {
        generation,
        client_groups,
        entries,
    }
}

/// Recomputes the header checksum of the IPv4 header at the start of `b`, if the header fits.
fn fix_ipv4_checksum(b: &mut [u8]) {
    let hl = usize::from(b.first().copied().unwrap_or(0) & 0x0f) * 4;
    if hl >= 20 && hl <= b.len() {
        b[10..12].fill(0);
        let c = slr_wire::checksum::checksum(&b[..hl]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// `SLR_FUZZ_TRACE=1 fuzz/target/.../router <file>` prints what each packet did.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SLR_FUZZ_TRACE").is_some())
}

fn flow_key(k: u8) -> FlowKey {
    let proto = [6, 17, 1, 47][(k & 3) as usize];
    FlowKey::new(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 99, 0, 1),
        40000 + u16::from(k >> 2 & 15),
        80,
        proto,
    )
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte().unwrap_or(0);
    let config = config(flags);
    let router = Router::new(config.clone()).expect("valid config");
    let mut h = Harness {
        router,
        config,
        policy: policy(flags),
        rule: flags & 0x40 != 0,
        now: Instant::from_secs(1),
        calls: 0,
        tunneled: 0,
        dropped: vec![0; DropReason::ALL.len()],
        held: 0,
        released: 0,
        table: None,
        maglev_choices: BTreeMap::new(),
        maglev_rebuilds: 0,
    };
    if trace() {
        eprintln!("policy {}", h.policy);
    }
    let (mut steps, mut controls, mut tables) = (0, 0, 0);
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op & 3 {
            0 | 1 => {
                let len = input.u16() as usize;
                let bytes = input.bytes(len);
                if op & 4 != 0 {
                    // Mutated headers mostly fail the checksum: repair it so they get further.
                    let mut b = bytes.to_vec();
                    fix_ipv4_checksum(&mut b);
                    if op & 3 == 1 {
                        let hl = usize::from(b.first().copied().unwrap_or(0) & 0x0f) * 4;
                        if let Some(inner) = b.get_mut(hl..) {
                            fix_ipv4_checksum(inner);
                        }
                    }
                    h.packet(&b, op & 3 == 1);
                } else {
                    h.packet(bytes, op & 3 == 1);
                }
            }
            2 => {
                let unit = [1, 1_000, 100_000, 10_000_000][(op >> 2 & 3) as usize];
                h.now += Duration::from_micros(u64::from(input.u16()) * unit);
                h.router.handle_timeout(h.now);
            }
            _ if op & 0x10 != 0 => {
                let table = route_table(&mut input);
                if tables < 16 {
                    tables += 1;
                    h.install_route_table(table);
                }
            }
            _ if controls < 16 => {
                controls += 1;
                h.control(op, &mut input);
            }
            _ => {}
        }
        h.drain();
        h.check();
    }
    // Long after: every flow has expired and every held fragment has been given up.
    h.now += Duration::from_secs(3600);
    h.router.handle_timeout(h.now);
    h.drain();
    h.check();
    assert_eq!(h.router.flow_count(), 0);
    let c = h.router.counters();
    if trace() {
        eprintln!("{c:?}");
    }
    assert_eq!(
        c.packets_in,
        c.drops_total() + c.packets_tunneled,
        "fragments still held after their timeout"
    );
});
