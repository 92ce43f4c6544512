//! The router state machine on arbitrary packets: plain (`handle_packet`) and tunnelled from a
//! parent (`handle_tunnelled_packet`), interleaved with time passing (`handle_timeout`) and a few
//! control inputs, with its accounting and output checked after every step.
//!
//! Input: one flags byte, then records. A record is an opcode byte and its operands:
//! - `op & 3 == 0`: plain packet, `len: u16 le` then `len` bytes (fewer if the input ends);
//! - `op & 3 == 1`: tunnelled packet, same layout;
//! - with `op & 4` set, the IPv4 header checksum of the packet (and of the inner packet of a
//!   tunnelled one) is recomputed first, so that mutated headers get past the checksum;
//! - `op & 3 == 2`: time passes by `u16 le` units of 1 us, 1 ms, 100 ms or 10 s (`op >> 2 & 3`),
//!   then `handle_timeout`;
//! - `op & 3 == 3`: control (`op >> 2 & 3`): toggle a next hop's health, reconfigure weights and
//!   addresses, pin a flow, unpin it; one operand byte; the first 16 only.
//!
//! At most 256 records are run.
//!
//! Flags: bits 0-1 the policy (round robin, weighted, least flows, weighted), bit 2 UDP per
//! datagram, bit 3 MSS clamping, bit 4 a 576-byte tunnel MTU, bit 5 a flow table of 8 entries
//! (eviction).
//!
//! Checked: every input packet ends as exactly one of tunnelled, dropped (counted under one
//! reason) or held; `packets_in == drops_total + packets_tunneled + still held`, and nothing is
//! held any more once fragment state has timed out; every tunnelled packet (returned or released
//! later) is a valid IPv4 IP-in-IP packet to a next hop, carrying a valid packet for the virtual
//! subnet that fits the tunnel MTU when DF is set; every ICMP error is well formed; the flow table
//! stays within its bound and the per-next-hop flow counts add up to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_core::flow_table::{FlowKey, FlowTableConfig};
use slr_core::router::{
    Action, Control, Destination, DropReason, NextHopConfig, Router, RouterConfig, SteeringRule,
    UdpMode, VirtualHostConfig,
};
use slr_core::select::Policy;
use slr_core::time::{Duration, Instant};
use slr_wire::icmp::{self, IcmpPacket};
use slr_wire::ipv4::{Ipv4Cidr, Ipv4Packet, Ipv4Repr, Protocol};
use slr_wire::PacketBuf;
use std::net::Ipv4Addr;

const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

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

struct Harness {
    router: Router,
    config: RouterConfig,
    now: Instant,
    calls: u64,
    tunneled: u64,
    dropped: Vec<u64>,
    held: u64,
    released: u64,
}

fn config(flags: u8) -> RouterConfig {
    let mut c = RouterConfig::new(SOURCE);
    c.hash_seed = 7;
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
        // Not Maglev: its 65537-slot table, built per router and per change of next hops, takes
        // ~10 ms under instrumentation, 50 times a whole run of the others; Maglev's lookup is
        // covered by slr-core's own tests, and routing does not depend on the policy.
        policy: [
            Policy::RoundRobin,
            Policy::Weighted,
            Policy::LeastFlows,
            Policy::Weighted,
        ][(flags & 3) as usize],
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

impl Harness {
    fn packet(&mut self, bytes: &[u8], tunnelled: bool) {
        let mut buf = PacketBuf::from_slice(bytes);
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
    }

    fn control(&mut self, op: u8, input: &mut Input) {
        match (op >> 2) & 3 {
            0 => {
                let i = input.byte().unwrap_or(0) as usize % HOSTS.len();
                let available = !self
                    .router
                    .next_hops()
                    .iter()
                    .any(|n| n.name == HOSTS[i] && n.configured && !n.available);
                let r = self.router.handle_control(
                    self.now,
                    Control::SetAvailable {
                        next_hop: HOSTS[i].into(),
                        available,
                    },
                );
                r.expect("SetAvailable of a configured next hop");
            }
            1 => {
                // New weights (0 drains) and addresses (a moved host is a new next hop; the old
                // one keeps serving its flows).
                let w = input.byte().unwrap_or(0);
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
            }
            2 => {
                let k = input.byte().unwrap_or(0);
                let r = self.router.handle_control(
                    self.now,
                    Control::PinFlow {
                        key: flow_key(k),
                        next_hop: HOSTS[(k >> 6) as usize % HOSTS.len()].into(),
                    },
                );
                r.expect("PinFlow to a configured next hop");
            }
            _ => {
                let k = input.byte().unwrap_or(0);
                self.router
                    .handle_control(self.now, Control::UnpinFlow { key: flow_key(k) })
                    .unwrap();
            }
        }
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
        now: Instant::from_secs(1),
        calls: 0,
        tunneled: 0,
        dropped: vec![0; DropReason::ALL.len()],
        held: 0,
        released: 0,
    };
    let (mut steps, mut controls) = (0, 0);
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
