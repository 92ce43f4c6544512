//! The XDP router program against the routing core, packet by packet (issue 11's differential
//! test): for generated frames over flows established in the core, plus the malformed kinds,
//! `slr_router` run through `BPF_PROG_TEST_RUN` and `slr_core::router::Router` must agree.
//!
//! - A frame the program transmits (XDP_TX) is one the core tunnels to the same next hop, and
//!   the two outputs are byte for byte the same but for the outer IP identification (the core
//!   counts per tunnel, the program per CPU: neither is the other's to know; both are only
//!   needed to be unique for reassembly) and hence the outer checksum, which is checked valid
//!   in both. The Ethernet header is the next hop's neighbour entry and the interface's MAC.
//! - A frame the program passes is untouched, with the reason the generator expects.
//! - Every frame also goes through `slr_router_tc` (the same work at tc ingress, on a socket
//!   buffer): it counts the same reason, redirects what XDP transmits as the same packet (but
//!   for its own outer identification) and leaves untouched what XDP passes.
//! - The core sees what the kernel would forward to the slow path (TTL already decremented),
//!   and its flow changes are applied to the map as the daemon applies them; the map always
//!   holds exactly the core's offloadable flows (established TCP, pinned UDP).
//!
//! Needs root (a private network namespace, BPF); fails, not skips, without it.

mod common;

use common::{l4, Ip};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slr_core::flow_table::{FlowKey, FlowState, FlowTableConfig};
use slr_core::router::{Action, NextHopConfig, Router, RouterConfig, UdpMode, VirtualHostConfig};
use slr_core::select::Policy;
use slr_core::time::Instant;
use slr_io::netns::run_in_private_netns;
use slr_wire::checksum;
use slr_wire::ipv4::Ipv4Cidr;
use slr_wire::PacketBuf;
use slr_xdp::{key_record, verdict, Reason, RouterFastPath, RouterSettings};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;

const SRC: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// A next hop the router reaches through a gateway (h1), not on its link.
const BEHIND_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 7);
const MTU: u16 = 1500;
const PACKETS: usize = 100_000;

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd}");
}

fn mac_of(dev: &str) -> [u8; 6] {
    // sysfs shows the namespace it was mounted in; ask the kernel through netlink instead.
    let out = Command::new("ip")
        .args(["-br", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    let mac = s.split_whitespace().nth(2).expect("ip -br link: a MAC");
    let v: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn hop_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, i]
}

/// What the generator made, and what the program must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Forward if the flow is in the map (else pass as `no_flow`), as `no_neigh` for the next
    /// hop without a neighbour entry.
    Flow,
    /// Pass for this reason.
    Pass(Reason),
    /// Pass for this reason if the flow is in the map, else as `no_flow`.
    FlowThen(Reason),
}

struct Gen {
    rng: SmallRng,
    flows: Vec<FlowKey>,
}

const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const SYN: u8 = 0x02;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

impl Gen {
    fn ip_for(&mut self, key: &FlowKey, flags: u8, len: usize) -> Ip {
        let data: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
        let (s, d) = (key.src_addr.octets(), key.dst_addr.octets());
        Ip {
            src: s,
            dst: d,
            proto: key.protocol,
            ttl: self.rng.gen_range(2..=255),
            tos: self.rng.gen(),
            ident: self.rng.gen(),
            df: self.rng.gen_bool(0.7),
            payload: l4(s, d, key.protocol, key.src_port, key.dst_port, flags, &data),
            ..Ip::default()
        }
    }

    fn any_flow(&mut self) -> FlowKey {
        let i = self.rng.gen_range(0..self.flows.len());
        self.flows[i]
    }

    /// One frame (Ethernet header included) and what the program must do with it.
    fn frame(&mut self, dmac: [u8; 6]) -> (Vec<u8>, Expect) {
        let key = self.any_flow();
        let plain = if key.protocol == 6 {
            if self.rng.gen_bool(0.5) {
                ACK
            } else {
                PSH_ACK
            }
        } else {
            0
        };
        let small = self.rng.gen_range(0..1400);
        let mut ethertype = 0x0800u16;
        let mut pad = 0;
        let (ip, expect): (Vec<u8>, Expect) = match self.rng.gen_range(0..100) {
            0..=54 => (self.ip_for(&key, plain, small).bytes(), Expect::Flow),
            55..=57 => {
                // Ethernet padding behind a short packet: trimmed, then forwarded.
                pad = self.rng.gen_range(1..30);
                let len = self.rng.gen_range(0..8);
                (self.ip_for(&key, plain, len).bytes(), Expect::Flow)
            }
            58..=61 => {
                // A new flow seen mid-stream: the core pins it and it gets an entry.
                let mut k = key;
                k.src_addr = Ipv4Addr::from(0x0a00_0000 | self.rng.gen_range(0..0xffff));
                k.src_port = self.rng.gen_range(1024..65535);
                self.flows.push(k);
                (
                    self.ip_for(&k, plain, small).bytes(),
                    Expect::Pass(Reason::NoFlow),
                )
            }
            62..=64 if key.protocol == 6 => {
                let f = [SYN, FIN_ACK, RST, SYN | ACK][self.rng.gen_range(0..4)];
                (
                    self.ip_for(&key, f, small).bytes(),
                    Expect::Pass(Reason::TcpControl),
                )
            }
            65..=66 => {
                let mut p = self.ip_for(&key, plain, small);
                p.ttl = self.rng.gen_range(0..=1);
                (p.bytes(), Expect::Pass(Reason::Ttl))
            }
            67..=68 => {
                let mut p = self.ip_for(&key, plain, small);
                p.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
                if self.rng.gen_bool(0.5) {
                    p.options = vec![7, 7, 4, 0, 0, 0, 0, 0]; // record route
                }
                (p.bytes(), Expect::Pass(Reason::Options))
            }
            69..=70 => {
                let mut p = self.ip_for(&key, plain, small & !7);
                if self.rng.gen_bool(0.5) {
                    p.mf = true;
                    p.df = false;
                } else {
                    p.offset = 8 * self.rng.gen_range(1..100);
                }
                (p.bytes(), Expect::Pass(Reason::Fragment))
            }
            71..=72 => {
                let mut b = self.ip_for(&key, plain, small).bytes();
                b[10] ^= 0x5a;
                (b, Expect::Pass(Reason::BadChecksum))
            }
            73..=74 => {
                // Too big for the tunnel: the slow path answers or fragments.
                let h = if key.protocol == 6 { 20 } else { 8 };
                let most = MTU as usize - 20 - h;
                let len = self.rng.gen_range(most - 20 + 1..=most);
                (
                    self.ip_for(&key, plain, len).bytes(),
                    Expect::FlowThen(Reason::TooBig),
                )
            }
            75..=76 => {
                ethertype = [0x0806, 0x86dd, 0x8100][self.rng.gen_range(0..3)];
                (
                    self.ip_for(&key, plain, small).bytes(),
                    Expect::Pass(Reason::NotIpv4),
                )
            }
            77 => {
                let mut b = self.ip_for(&key, plain, small).bytes();
                b[0] = 0x65; // version 6
                (b, Expect::Pass(Reason::NotIpv4))
            }
            78 => {
                let mut b = self.ip_for(&key, plain, small).bytes();
                b[0] = 0x40 | self.rng.gen_range(0..5); // header length below 20
                (b, Expect::Pass(Reason::Malformed))
            }
            79..=80 => {
                // Truncated: the frame ends before the IP total length.
                let b = self.ip_for(&key, plain, small.max(20)).bytes();
                let cut = self.rng.gen_range(0..b.len());
                (b[..cut].to_vec(), Expect::Pass(Reason::Malformed))
            }
            81 => {
                let mut b = self.ip_for(&key, plain, small).bytes();
                b[2..4].copy_from_slice(&(self.rng.gen_range(0..20u16)).to_be_bytes());
                let c = checksum::checksum(&{
                    let mut h = b[..20].to_vec();
                    h[10] = 0;
                    h[11] = 0;
                    h
                });
                b[10..12].copy_from_slice(&c.to_be_bytes());
                (b, Expect::Pass(Reason::Malformed))
            }
            82..=83 => {
                // Transport header broken: TCP data offset or UDP length out of bounds, or cut.
                let mut p = self.ip_for(&key, plain, small);
                if key.protocol == 6 {
                    p.payload[12] = [0x00, 0x40, 0xf0][self.rng.gen_range(0..3)];
                    if p.payload.len() >= 60 && p.payload[12] == 0xf0 {
                        p.payload.truncate(50);
                    }
                } else {
                    let bad = [0u16, 7, p.payload.len() as u16 + 1][self.rng.gen_range(0..3)];
                    p.payload[4..6].copy_from_slice(&bad.to_be_bytes());
                }
                if self.rng.gen_bool(0.2) {
                    p.payload.truncate(self.rng.gen_range(0..8));
                }
                (p.bytes(), Expect::Pass(Reason::Malformed))
            }
            84..=86 => {
                // ICMP, nested IP-in-IP, GRE, SCTP to the virtual host.
                let mut p = self.ip_for(&key, plain, small);
                p.proto = [1, 4, 47, 132][self.rng.gen_range(0..4)];
                (p.bytes(), Expect::Pass(Reason::Protocol))
            }
            87 => {
                // Runt frames: an Ethernet header and less than an IPv4 header (the kernel
                // refuses to test-run frames below 14 bytes; drivers do not deliver them).
                let n = self.rng.gen_range(0..20);
                let ip = (0..n).map(|_| self.rng.gen()).collect();
                (ip, Expect::Pass(Reason::Malformed))
            }
            _ => (self.ip_for(&key, plain, small).bytes(), Expect::Flow),
        };
        let mut frame = Vec::with_capacity(14 + ip.len() + pad);
        frame.extend_from_slice(&dmac);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xee]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend(std::iter::repeat_n(0u8, pad));
        (frame, expect)
    }
}

/// What the kernel does to an IPv4 packet it forwards into the slow path: TTL - 1 with the
/// incremental checksum update of ip_decrease_ttl().
fn kernel_forwarded(ip: &[u8]) -> Vec<u8> {
    let mut v = ip.to_vec();
    let mut check = u32::from(u16::from_ne_bytes([v[10], v[11]]));
    check += u32::from(0x0100u16.to_be());
    let check = (check + u32::from(check >= 0xffff)) as u16;
    v[10..12].copy_from_slice(&check.to_ne_bytes());
    v[8] -= 1;
    v
}

/// Whether the kernel would hand this frame's packet to the slow path at all.
fn kernel_forwards(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4
        || hl < 20
        || tot < hl
        || tot > ip.len()
        || checksum::checksum(&ip[..hl]) != 0
        || ip[8] <= 1
    {
        return None;
    }
    Some(kernel_forwarded(&ip[..tot]))
}

fn core_config(hops: &[(String, Ipv4Addr)]) -> RouterConfig {
    let mut cfg = RouterConfig::new(SRC);
    cfg.tunnel_mtu = MTU;
    cfg.flow_table = FlowTableConfig {
        max_flows: 1 << 16,
        ..FlowTableConfig::default()
    };
    cfg.next_hops = hops
        .iter()
        .map(|(n, a)| NextHopConfig {
            name: n.clone(),
            address: *a,
            weight: 1,
        })
        .collect();
    cfg.virtual_hosts = vec![VirtualHostConfig {
        name: "web".into(),
        subnet: "10.99.0.0/24".parse::<Ipv4Cidr>().unwrap(),
        policy: Policy::RoundRobin,
        udp: UdpMode::Pin,
        next_hops: hops.iter().map(|(n, _)| n.clone()).collect(),
        rules: Vec::new(),
    }];
    cfg
}

#[test]
fn xdp_router_and_core_agree_on_100k_packets() {
    run_in_private_netns(differential).expect("a private network namespace (run as root)");
}

fn differential() {
    sh("ip link add xa type veth peer name xb && ip link set xa up && ip link set xb up");
    sh("ip addr add 10.251.0.1/24 dev xa");
    // A router forwards (the fib lookup refuses on an interface that does not).
    sh("sysctl -qw net.ipv4.ip_forward=1");
    // Next hops h1..h4 have neighbour entries; h5 has none (the program leaves it to the kernel).
    let mut hops = Vec::new();
    for i in 2..=6u8 {
        let a = Ipv4Addr::new(10, 251, 0, i);
        if i <= 5 {
            let m = hop_mac(i);
            sh(&format!(
                "ip neigh add {a} lladdr {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} dev xa nud permanent",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ));
        }
        hops.push((format!("h{}", i - 1), a));
    }
    // Next hop h6 is behind a gateway (h1's address): the frame goes to the gateway's MAC,
    // the tunnel to h6's address (the fib lookup returns the gateway's in its place).
    sh("ip route add 10.252.0.0/24 via 10.251.0.2 dev xa");
    hops.push(("h6".to_string(), BEHIND_GATEWAY));
    let xa_mac = mac_of("xa");
    let ingress = slr_xdp::if_index("xa").unwrap();
    let mut fp = RouterFastPath::load(RouterSettings {
        max_flows: 1 << 16,
        tunnel_source: SRC,
        tunnel_mtu: u32::from(MTU),
        outer_ttl: 64,
    })
    .expect("the verifier accepts slr_router");
    let mut core = Router::new(core_config(&hops)).unwrap();
    core.set_flow_log(true);
    let mut now_us = 1_000_000u64;

    // Flows established in the core: TCP by handshake (SYN, then ACK), UDP by a first datagram.
    let mut gen = Gen {
        rng: SmallRng::seed_from_u64(0x5172_0011),
        flows: Vec::new(),
    };
    for i in 0..2000u32 {
        let proto = if i % 4 == 3 { 17 } else { 6 };
        let key = FlowKey {
            src_addr: Ipv4Addr::from(0xc0a8_0000 | (i >> 6)),
            dst_addr: Ipv4Addr::new(10, 99, 0, 1 + (i % 3) as u8),
            src_port: 20_000 + i as u16,
            dst_port: if proto == 6 { 80 } else { 7 },
            protocol: proto,
        };
        let steps: &[u8] = if proto == 6 { &[SYN, ACK] } else { &[0] };
        for &f in steps {
            let ip = gen.ip_for(&key, f, 0);
            let mut b = PacketBuf::from_slice(&kernel_forwarded(&ip.bytes()));
            let a = core.handle_packet(Instant::from_micros(now_us), &mut b);
            assert!(matches!(a, Action::Tunnel { .. }), "{a:?}");
        }
        gen.flows.push(key);
    }
    // Every seventh flow has a shortcut (F10: this router is its ingress, and a host below its
    // next hop was signalled): the core tunnels it to the host, the map entry carries the host,
    // and the program remembers the host's route in a slot of its own.
    let mut shortcuts = 0;
    for key in gen.flows.iter().step_by(7) {
        let Some(nh) = core.flow(key).map(|e| e.next_hop() as usize) else {
            continue;
        };
        let host = hops[(nh + 1) % 4].1; // h1..h4: with neighbour entries
        core.accept_shortcut(Instant::from_micros(now_us), key, nh, host)
            .expect("a shortcut for a flow pinned to that next hop");
        shortcuts += 1;
    }
    assert!(shortcuts > 200);
    sync(&mut core, &mut fp);
    assert_eq!(
        map_keys(&fp),
        offloadable(&core),
        "every established flow installed"
    );
    let in_map = gen
        .flows
        .iter()
        .step_by(7)
        .filter_map(|k| fp.lookup(&slr_xdp::key_record(k)).unwrap())
        .filter(|v| v.is_shortcut())
        .count();
    assert_eq!(
        in_map, shortcuts,
        "the map entries of shortcut flows name their hosts"
    );

    let mut forwarded = 0usize;
    let mut passes = std::collections::BTreeMap::<&str, usize>::new();
    let mut core_tunnelled_after_pass = 0usize;
    let mut tc_not_run = 0usize;
    let mut stats = reason_counts(&fp);
    for n in 0..PACKETS {
        now_us += 10;
        let now = Instant::from_micros(now_us);
        let (frame, expect) = gen.frame(xa_mac);
        let out = fp.test_run(&frame, ingress).expect("test run");
        let changed = counted_since(&fp, &mut stats);
        assert_eq!(
            changed.len(),
            1,
            "packet {n}: exactly one reason counted: {changed:?}"
        );
        let reason = changed[0];
        // The same frame through slr_router_tc (the program at tc ingress, on a socket
        // buffer): the same reason, and the same packet out (checked below). The kernel
        // builds no socket buffer for a test run of a frame shorter than the network header
        // its EtherType names (IPv4 20 bytes, IPv6 40); those (truncated kinds) are left
        // out, and counted.
        let header_named = match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => 20,
            0x86dd => 40,
            _ => 0,
        };
        let tc = match fp.test_run_tc(&frame, ingress) {
            Ok(tc) => Some(tc),
            Err(e) if frame.len() < 14 + header_named => {
                let _ = e;
                tc_not_run += 1;
                None
            }
            Err(e) => panic!(
                "packet {n} ({reason:?}): tc test run of {} bytes {:02x?}: {e}",
                frame.len(),
                &frame[..48.min(frame.len())]
            ),
        };
        if tc.is_some() {
            let changed_tc = counted_since(&fp, &mut stats);
            assert_eq!(
                changed_tc,
                [reason],
                "packet {n}: tc counts what XDP counted"
            );
        }
        // The next hop in the map of the flow this frame belongs to (for the kinds of frame
        // that expect a flow: no options, ports at offset 20).
        let tunnel_dst_of_frame = |fp: &RouterFastPath| -> Option<Ipv4Addr> {
            let ip = frame.get(14..38)?;
            let k = slr_xdp::FlowKeyRecord::new(
                Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                u16::from_be_bytes([ip[20], ip[21]]),
                u16::from_be_bytes([ip[22], ip[23]]),
                ip[9],
            );
            fp.lookup(&k).unwrap().map(|v| v.tunnel_dst())
        };
        match expect {
            Expect::Flow => {
                let want = match tunnel_dst_of_frame(&fp) {
                    None => Reason::NoFlow,
                    Some(a) if a == Ipv4Addr::new(10, 251, 0, 6) => Reason::NoNeigh,
                    Some(_) => Reason::Forwarded,
                };
                assert_eq!(reason, want, "packet {n}");
            }
            Expect::Pass(r) => assert_eq!(reason, r, "packet {n}"),
            Expect::FlowThen(r) => {
                let want = match tunnel_dst_of_frame(&fp) {
                    Some(_) => r,
                    None => Reason::NoFlow,
                };
                assert_eq!(reason, want, "packet {n}")
            }
        }
        // What the slow path makes of it (when the kernel would forward it at all).
        let core_in = kernel_forwards(&frame);
        if reason == Reason::Forwarded {
            assert_eq!(out.verdict, verdict::TX, "packet {n}");
            let core_in = core_in.expect("a frame the program forwards is a valid IPv4 packet");
            let mut b = PacketBuf::from_slice(&core_in);
            let a = core.handle_packet(now, &mut b);
            let Action::Tunnel { next_hop } = a else {
                panic!("packet {n}: the program forwarded what the core does not tunnel: {a:?}")
            };
            let hop = next_hop;
            assert_eq!(
                Some(hop),
                tunnel_dst_of_frame(&fp),
                "packet {n}: same next hop"
            );
            let o = &out.frame;
            let gateway = if hop == BEHIND_GATEWAY {
                2
            } else {
                hop.octets()[3]
            };
            assert_eq!(&o[..6], &hop_mac(gateway), "packet {n}: next hop MAC");
            assert_eq!(&o[6..12], &xa_mac, "packet {n}: source MAC");
            assert_eq!(&o[12..14], &[0x08, 0x00]);
            let (x, c) = (&o[14..], b.as_ref());
            assert_eq!(x.len(), c.len(), "packet {n}: lengths");
            assert_eq!(
                checksum::checksum(&x[..20]),
                0,
                "packet {n}: program's outer checksum"
            );
            assert_eq!(
                checksum::checksum(&c[..20]),
                0,
                "packet {n}: core's outer checksum"
            );
            for i in (0..x.len()).filter(|i| ![4, 5, 10, 11].contains(i)) {
                assert_eq!(
                    x[i],
                    c[i],
                    "packet {n}: byte {i} differs\n xdp  {:02x?}\n core {:02x?}",
                    &x[..48.min(x.len())],
                    &c[..48.min(c.len())]
                );
            }
            let tc = tc.expect("a forwarded frame has a whole IPv4 header");
            assert_eq!(tc.verdict, verdict::TC_REDIRECT, "packet {n}: tc redirects");
            assert_same_but_ident(&tc.frame, o, &format!("packet {n}"));
            forwarded += 1;
        } else {
            assert_eq!(out.verdict, verdict::PASS, "packet {n}");
            assert_eq!(out.frame, frame, "packet {n}: a passed frame is untouched");
            if let Some(tc) = tc {
                assert_eq!(tc.verdict, verdict::TC_OK, "packet {n}: tc passes it");
                assert_eq!(
                    tc.frame, frame,
                    "packet {n}: tc leaves a passed frame untouched"
                );
            }
            *passes.entry(reason.as_str()).or_default() += 1;
            if let Some(core_in) = core_in {
                let mut b = PacketBuf::from_slice(&core_in);
                if let Action::Tunnel { .. } = core.handle_packet(now, &mut b) {
                    core_tunnelled_after_pass += 1;
                }
            }
        }
        sync(&mut core, &mut fp);
        if n % 10_000 == 0 {
            assert_eq!(
                map_keys(&fp),
                offloadable(&core),
                "packet {n}: the map is the core's cache"
            );
        }
    }
    assert_eq!(
        map_keys(&fp),
        offloadable(&core),
        "the map is the core's cache"
    );
    println!(
        "{PACKETS} frames: {forwarded} forwarded in XDP, identical to the core's but for the outer IP id; passed by reason: {passes:?}; the core tunnelled {core_tunnelled_after_pass} of the passed ones; {} flows in the map; slr_router_tc agreed on all but {tc_not_run} (truncated below their network header: no test run)",
        map_keys(&fp).len()
    );
    assert!(
        tc_not_run < PACKETS / 50,
        "slr_router_tc ran on all but {tc_not_run} frames"
    );
    assert!(
        forwarded > PACKETS * 2 / 5,
        "the fast path forwards the plain frames: {forwarded}"
    );
    for r in Reason::ALL.iter().filter(|r| {
        **r != Reason::Forwarded
            && **r != Reason::Disabled
            && **r != Reason::NoRoute
            && **r != Reason::NoHeadroom
            // A middle level's (the next test's).
            && **r != Reason::UntrustedTunnel
            && **r != Reason::Retunnelled
    }) {
        assert!(
            passes.get(r.as_str()).copied().unwrap_or(0) > 0,
            "no frame passed as {}",
            r.as_str()
        );
    }
}

const PARENT: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 9);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 9);
const MIDDLE_FRAMES: usize = 20_000;

/// A parent's (or anyone's) tunnel from `src` to `dst` around `inner`, in a frame to `dmac`.
fn tunnel_frame(src: Ipv4Addr, dst: Ipv4Addr, inner: Vec<u8>, dmac: [u8; 6], id: u16) -> Vec<u8> {
    let outer = Ip {
        src: src.octets(),
        dst: dst.octets(),
        proto: 4,
        ttl: 63,
        ident: id,
        payload: inner,
        ..Default::default()
    };
    common::ether(dmac, [0x02, 0, 0, 0, 0, 0xee], 0x0800, &outer.bytes())
}

/// A middle level (`trusted_parents`): its parent's tunnels of flows established in the core
/// are re-encapsulated toward the flow's next hop in XDP, byte for byte as the core does it
/// (`handle_tunnelled_packet`: inner TTL - 1, outer TOS and DF from the inner header) but for
/// the outer IP identification; tunnels from anyone else are dropped in the kernel, as the
/// core drops them (`untrusted_tunnel`); the rest passes untouched to the slow path.
#[test]
fn xdp_middle_level_and_core_agree_on_tunnels() {
    run_in_private_netns(middle).expect("a private network namespace (run as root)");
}

fn middle() {
    sh("ip link add xa type veth peer name xb && ip link set xa up && ip link set xb up");
    sh("ip addr add 10.251.0.1/24 dev xa");
    sh("sysctl -qw net.ipv4.ip_forward=1");
    let mut hops = Vec::new();
    for i in 2..=5u8 {
        let a = Ipv4Addr::new(10, 251, 0, i);
        let m = hop_mac(i);
        sh(&format!(
            "ip neigh add {a} lladdr {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} dev xa nud permanent",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ));
        hops.push((format!("s{}", i - 1), a));
    }
    let xa_mac = mac_of("xa");
    let ingress = slr_xdp::if_index("xa").unwrap();
    let mut fp = RouterFastPath::load(RouterSettings {
        max_flows: 1 << 16,
        tunnel_source: SRC,
        tunnel_mtu: u32::from(MTU),
        outer_ttl: 64,
    })
    .expect("the verifier accepts slr_router");
    let parents: Vec<Ipv4Cidr> = vec!["10.252.0.0/24".parse().unwrap()];
    fp.set_trusted_parents(&parents).unwrap();
    let mut cfg = core_config(&hops);
    cfg.trusted_parents = parents;
    let mut core = Router::new(cfg).unwrap();
    core.set_flow_log(true);
    let mut now_us = 1_000_000u64;
    let mut gen = Gen {
        rng: SmallRng::seed_from_u64(0x6d1d),
        flows: Vec::new(),
    };
    // Flows established through the parent's tunnels.
    for i in 0..500u32 {
        let proto = if i % 4 == 3 { 17 } else { 6 };
        let key = FlowKey {
            src_addr: Ipv4Addr::from(0xc0a8_0000 | (i >> 6)),
            dst_addr: Ipv4Addr::new(10, 99, 0, 1 + (i % 3) as u8),
            src_port: 30_000 + i as u16,
            dst_port: if proto == 6 { 80 } else { 7 },
            protocol: proto,
        };
        let steps: &[u8] = if proto == 6 { &[SYN, ACK] } else { &[0] };
        for &f in steps {
            let frame = tunnel_frame(PARENT, SRC, gen.ip_for(&key, f, 0).bytes(), xa_mac, 1);
            let mut b = PacketBuf::from_slice(&frame[14..]);
            let a = core.handle_tunnelled_packet(Instant::from_micros(now_us), &mut b);
            assert!(matches!(a, Action::Tunnel { .. }), "{a:?}");
        }
        gen.flows.push(key);
    }
    sync(&mut core, &mut fp);
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let mut stats = reason_counts(&fp);
    for n in 0..MIDDLE_FRAMES {
        now_us += 10;
        let now = Instant::from_micros(now_us);
        let key = gen.flows[gen.rng.gen_range(0..gen.flows.len())];
        let len = gen.rng.gen_range(0..1300);
        let plain = if key.protocol == 6 { PSH_ACK } else { 0 };
        let (frame, want) = match gen.rng.gen_range(0..100) {
            0..=59 => {
                let inner = gen.ip_for(&key, plain, len).bytes();
                (
                    tunnel_frame(PARENT, SRC, inner, xa_mac, n as u16),
                    Reason::Retunnelled,
                )
            }
            60..=69 => {
                let inner = gen.ip_for(&key, plain, len).bytes();
                (
                    tunnel_frame(STRANGER, SRC, inner, xa_mac, n as u16),
                    Reason::UntrustedTunnel,
                )
            }
            70..=74 if key.protocol == 6 => {
                let f = [SYN, FIN_ACK, RST][gen.rng.gen_range(0..3)];
                let inner = gen.ip_for(&key, f, len).bytes();
                (
                    tunnel_frame(PARENT, SRC, inner, xa_mac, n as u16),
                    Reason::TcpControl,
                )
            }
            75..=79 => {
                let mut k = key;
                k.src_port = gen.rng.gen_range(1024..20_000);
                let inner = gen.ip_for(&k, plain, len).bytes();
                gen.flows.push(k);
                (
                    tunnel_frame(PARENT, SRC, inner, xa_mac, n as u16),
                    Reason::NoFlow,
                )
            }
            80..=84 => {
                let mut p = gen.ip_for(&key, plain, len);
                p.ttl = 1;
                (
                    tunnel_frame(PARENT, SRC, p.bytes(), xa_mac, n as u16),
                    Reason::Ttl,
                )
            }
            85..=89 => {
                let mut inner = gen.ip_for(&key, plain, len).bytes();
                inner[10] ^= 0x33;
                (
                    tunnel_frame(PARENT, SRC, inner, xa_mac, n as u16),
                    Reason::BadChecksum,
                )
            }
            _ => {
                // To another tunnel endpoint: not this router's to open.
                let inner = gen.ip_for(&key, plain, len).bytes();
                let other = Ipv4Addr::new(10, 251, 0, 77);
                (
                    tunnel_frame(PARENT, other, inner, xa_mac, n as u16),
                    Reason::Protocol,
                )
            }
        };
        // A flow the core let go of (closed by an earlier FIN or RST) has no entry.
        let want = if want == Reason::Retunnelled && fp.lookup(&key_record(&key)).unwrap().is_none()
        {
            Reason::NoFlow
        } else {
            want
        };
        let out = fp.test_run(&frame, ingress).expect("test run");
        let changed = counted_since(&fp, &mut stats);
        assert_eq!(changed.len(), 1, "frame {n}: {changed:?}");
        let reason = changed[0];
        assert_eq!(reason, want, "frame {n}");
        let tc = fp.test_run_tc(&frame, ingress).expect("tc test run");
        let changed_tc = counted_since(&fp, &mut stats);
        assert_eq!(
            changed_tc,
            [reason],
            "frame {n}: tc counts what XDP counted"
        );
        *seen.entry(reason.as_str()).or_default() += 1;
        let mut b = PacketBuf::from_slice(&frame[14..]);
        let core_action = core.handle_tunnelled_packet(now, &mut b);
        match reason {
            Reason::Retunnelled => {
                assert_eq!(out.verdict, verdict::TX, "frame {n}");
                let Action::Tunnel { next_hop } = core_action else {
                    panic!("frame {n}: the program re-tunnelled what the core does not: {core_action:?}")
                };
                let o = &out.frame;
                assert_eq!(
                    &o[..6],
                    &hop_mac(next_hop.octets()[3]),
                    "frame {n}: same next hop"
                );
                assert_eq!(&o[6..12], &xa_mac);
                let (x, c) = (&o[14..], b.as_ref());
                assert_eq!(x.len(), c.len(), "frame {n}: lengths");
                assert_eq!(checksum::checksum(&x[..20]), 0, "frame {n}: outer checksum");
                for i in (0..x.len()).filter(|i| ![4, 5, 10, 11].contains(i)) {
                    assert_eq!(
                        x[i],
                        c[i],
                        "frame {n}: byte {i} differs\n xdp  {:02x?}\n core {:02x?}",
                        &x[..48.min(x.len())],
                        &c[..48.min(c.len())]
                    );
                }
                assert_eq!(tc.verdict, verdict::TC_REDIRECT, "frame {n}: tc redirects");
                assert_same_but_ident(&tc.frame, o, &format!("frame {n}"));
            }
            Reason::UntrustedTunnel => {
                assert_eq!(out.verdict, verdict::DROP, "frame {n}");
                assert_eq!(tc.verdict, verdict::TC_SHOT, "frame {n}: tc drops it");
                assert_eq!(
                    core_action,
                    Action::Drop(slr_core::router::DropReason::UntrustedTunnel),
                    "frame {n}"
                );
            }
            _ => {
                assert_eq!(out.verdict, verdict::PASS, "frame {n}");
                assert_eq!(out.frame, frame, "frame {n}: a passed frame is untouched");
                assert_eq!(tc.verdict, verdict::TC_OK, "frame {n}: tc passes it");
                assert_eq!(tc.frame, frame, "frame {n}: tc leaves it untouched");
            }
        }
        sync(&mut core, &mut fp);
    }
    assert_eq!(
        map_keys(&fp),
        offloadable(&core),
        "the map is the core's cache"
    );
    println!("{MIDDLE_FRAMES} tunnelled frames at a middle level: {seen:?}");
    for r in [
        Reason::Retunnelled,
        Reason::UntrustedTunnel,
        Reason::TcpControl,
        Reason::NoFlow,
        Reason::Ttl,
        Reason::BadChecksum,
        Reason::Protocol,
    ] {
        assert!(
            seen.get(r.as_str()).copied().unwrap_or(0) > 100,
            "{}: {seen:?}",
            r.as_str()
        );
    }
}

/// The reasons counted since `stats` (which becomes the counts now).
fn counted_since(fp: &RouterFastPath, stats: &mut Vec<u64>) -> Vec<Reason> {
    let after = reason_counts(fp);
    let changed = Reason::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| after[*i] != stats[*i])
        .map(|(_, r)| *r)
        .collect();
    *stats = after;
    changed
}

/// slr_router_tc's tunnelled frame against slr_router's: the same bytes but for the outer IP
/// identification (each program counts one per packet sent) and so the outer checksum (frame
/// bytes 18-19 and 24-25), which must be valid.
fn assert_same_but_ident(tc: &[u8], xdp: &[u8], what: &str) {
    assert_eq!(tc.len(), xdp.len(), "{what}: tc's length");
    for i in (0..xdp.len()).filter(|i| ![18, 19, 24, 25].contains(i)) {
        assert_eq!(
            tc[i],
            xdp[i],
            "{what}: byte {i} differs\n tc  {:02x?}\n xdp {:02x?}",
            &tc[..48.min(tc.len())],
            &xdp[..48.min(xdp.len())]
        );
    }
    assert_eq!(
        checksum::checksum(&tc[14..34]),
        0,
        "{what}: tc's outer checksum"
    );
}

fn reason_counts(fp: &RouterFastPath) -> Vec<u64> {
    fp.stats().unwrap().iter().map(|(_, c)| c.packets).collect()
}

fn sync(core: &mut Router, fp: &mut RouterFastPath) {
    while let Some(c) = core.poll_flow_change() {
        fp.apply(c, core.next_hops()).expect("map update");
    }
}

fn map_keys(fp: &RouterFastPath) -> HashSet<slr_xdp::FlowKeyRecord> {
    fp.entries().into_iter().map(|(k, _)| k).collect()
}

fn offloadable(core: &Router) -> HashSet<slr_xdp::FlowKeyRecord> {
    core.flows()
        .filter(|(k, e)| {
            matches!(e.state(), FlowState::TcpEstablished | FlowState::Udp)
                && (k.protocol == 6 || k.protocol == 17)
        })
        .map(|(k, _)| key_record(k))
        .collect()
}
