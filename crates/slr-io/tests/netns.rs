//! End-to-end tests of the kernel devices, each in a private network namespace of its own thread.
//!
//! They need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW) and fail, not skip, without it.
//! Several also pin down kernel behaviour the daemon relies on; the test names say which.

use slr_io::netns::{self, run_in_private_netns};
use slr_io::{
    poll_readable, poll_writable, IoDrop, IpipSocket, PacketBuf, PacketDevice, TunDevice,
};
use slr_wire::checksum;
use slr_wire::{Ipv4Packet, Ipv4Repr, Protocol};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

/// Runs `f` in a fresh namespace (loopback up); a namespace that cannot be made fails the test.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    run_in_private_netns(f).expect("cannot make a private network namespace (run as root)")
}

/// A TUN "slrt0" with 10.250.0.1/24.
fn tun() -> TunDevice {
    let t = TunDevice::create("slrt0", 1500).expect("create TUN");
    netns::set_ipv4_address(t.name(), TUN_ADDR, 24).expect("set address");
    t
}

/// An IPv4/UDP packet with correct checksums.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut v = vec![0u8; 20 + udp_len];
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: Protocol::Udp,
        payload_len: udp_len,
        ttl: 64,
        tos: 0,
        ident: 0x1234,
        dont_frag: false,
    }
    .emit(&mut v);
    let u = &mut v[20..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[8..].copy_from_slice(payload);
    let acc = checksum::pseudo_header(src.octets(), dst.octets(), 17, udp_len as u16);
    let c = match checksum::finish(checksum::sum(acc, u)) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    v
}

/// `inner` behind an outer IP-in-IP header `src -> dst`.
fn encapsulated(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, tos: u8, inner: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::from_slice(inner);
    slr_wire::ipip::encapsulate(&mut b, src, dst, ttl, 7).unwrap();
    Ipv4Packet::new_unchecked(b.as_mut()).set_tos(tos);
    Ipv4Packet::new_unchecked(b.as_mut()).fill_checksum();
    b
}

/// Receives from `dev` until `want` accepts a packet or `timeout` passes. Reads one packet at a
/// time, so that packets after the wanted one stay queued for the next call.
fn recv_until(
    dev: &mut impl PacketDevice,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut bufs = [PacketBuf::new(65_535)];
    loop {
        bufs[0].reset(64);
        if dev.recv_batch(&mut bufs).expect("recv_batch") == 1 {
            if want(bufs[0].as_ref()) {
                return Some(bufs[0].as_ref().to_vec());
            }
            continue;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut ready = [false];
        poll_readable(&[dev.fd()], Some(left), &mut ready).expect("poll");
    }
}

fn is_udp_to(p: &[u8], dst: Ipv4Addr, port: u16) -> bool {
    let ip = Ipv4Packet::new_checked(p).unwrap();
    ip.protocol() == Protocol::Udp
        && ip.dst_addr() == dst
        && ip.payload()[2..4] == port.to_be_bytes()
}

fn is_ipip(p: &[u8]) -> bool {
    Ipv4Packet::new_checked(p).unwrap().protocol() == Protocol::IpIp
}

/// Runs `cmd args` from the calling thread (so in its namespace); returns stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tun_reads_what_the_stack_routes_to_it_and_injects_what_is_written() {
    in_netns(|| {
        let mut tun = tun();
        assert!(tun.ifindex().unwrap() > 1);

        // The stack routes 10.250.0.2 to the TUN; the reader sees the datagram.
        let tx = UdpSocket::bind((TUN_ADDR, 0)).unwrap();
        tx.send_to(b"to the tun", (PEER, 9999)).unwrap();
        let got = recv_until(&mut tun, Duration::from_secs(5), |p| {
            is_udp_to(p, PEER, 9999)
        })
        .expect("datagram read from the TUN");
        let ip = Ipv4Packet::new_checked(&got[..]).unwrap();
        assert_eq!(ip.src_addr(), TUN_ADDR);
        assert_eq!(&ip.payload()[8..], b"to the tun");

        // A packet written to the TUN enters the stack as if received on it.
        let rx = UdpSocket::bind((TUN_ADDR, 0)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = rx.local_addr().unwrap().port();
        let pkt = udp_packet(PEER, TUN_ADDR, 5555, port, b"from the tun");
        assert_eq!(tun.send_batch(&[PacketBuf::from_slice(&pkt)]).unwrap(), 1);
        let mut buf = [0u8; 100];
        let (n, from) = rx
            .recv_from(&mut buf)
            .expect("datagram injected through the TUN");
        assert_eq!(&buf[..n], b"from the tun");
        assert_eq!(from, (PEER, 5555).into());

        let s = tun.stats();
        assert_eq!((s.tx_packets, s.tx_bytes), (1, pkt.len() as u64));
        assert!(s.rx_packets >= 1);
    });
}

#[test]
fn tun_counts_malformed_sends_and_cut_receives() {
    in_netns(|| {
        let mut tun = tun();
        let good = udp_packet(PEER, TUN_ADDR, 1, 9, b"x");
        let pkts = [
            PacketBuf::from_slice(&[0x60; 40]),
            PacketBuf::from_slice(&good[..10]),
            PacketBuf::from_slice(&good),
        ];
        assert_eq!(tun.send_batch(&pkts).unwrap(), 3);
        let s = tun.stats();
        assert_eq!((s.tx_packets, s.drops(IoDrop::TxMalformed)), (1, 2));

        // A packet longer than the buffer: TUN copies what fits and returns that length;
        // recv_batch sees the cut (total length beyond the read) and drops it.
        let tx = UdpSocket::bind((TUN_ADDR, 0)).unwrap();
        tx.send_to(&[7; 100], (PEER, 9999)).unwrap();
        tx.send_to(b"short", (PEER, 9999)).unwrap();
        let mut small = [PacketBuf::with_headroom(0, 60)];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            small[0].reset(0);
            // (The stack also sends an ICMP port unreachable for the datagram injected above.)
            if tun.recv_batch(&mut small).unwrap() == 1 && is_udp_to(small[0].as_ref(), PEER, 9999)
            {
                break;
            }
            assert!(Instant::now() < deadline, "the short datagram never came");
            poll_readable(&[tun.fd()], Some(Duration::from_millis(100)), &mut [false]).unwrap();
        }
        assert_eq!(small[0].len(), 20 + 8 + 5);
        assert_eq!(
            tun.stats().drops(IoDrop::RxTruncated),
            1,
            "{:?}",
            tun.stats()
        );
    });
}

#[test]
fn txqueuelen_is_set_and_commands_see_the_namespace_of_the_spawning_thread() {
    let outside = netns::current_netns_id().unwrap();
    let (inside, from_thread, from_command, link) = in_netns(|| {
        let tun = tun();
        tun.set_txqueuelen(4321).unwrap();
        let inside = netns::current_netns_id().unwrap();
        let from_thread = std::thread::spawn(|| netns::current_netns_id().unwrap())
            .join()
            .unwrap();
        let from_command = run("readlink", &["/proc/self/ns/net"]);
        let link = run("ip", &["-o", "link", "show", "slrt0"]);
        (inside, from_thread, from_command, link)
    });
    assert_ne!(inside, outside);
    assert_eq!(
        from_thread, inside,
        "a thread spawned in the namespace is in it"
    );
    assert_eq!(
        from_command.trim(),
        format!("net:[{inside}]"),
        "Command::spawn inherits the thread's netns"
    );
    assert!(
        link.contains("slrt0") && link.contains("qlen 4321"),
        "{link}"
    );
    assert!(link.contains("mtu 1500") && link.contains(",UP"), "{link}");
}

#[test]
fn enter_netns_joins_a_named_namespace() {
    let name = format!("slr-io-test-{}", std::process::id());
    run("ip", &["netns", "add", &name]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(name.clone());
    let want = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/var/run/netns/{name}"))
            .unwrap()
            .ino()
    };
    let outside = netns::current_netns_id().unwrap();
    let got = std::thread::spawn(move || {
        netns::enter_netns(&name).unwrap();
        netns::current_netns_id().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(got, want);
    assert_eq!(
        netns::current_netns_id().unwrap(),
        outside,
        "only the entering thread moved"
    );
    assert!(netns::enter_netns("../etc").is_err());
}

#[test]
fn ipip_socket_receives_its_own_packets_sent_to_loopback() {
    in_netns(|| {
        let lo = Ipv4Addr::LOCALHOST;
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        for header_included in [false, true] {
            let mut sock = IpipSocket::open().unwrap();
            if header_included {
                sock = sock.with_header_included().unwrap();
            }
            assert!(sock.recv_buffer_size().unwrap() >= 4 << 20);
            let pkt = encapsulated(lo, lo, 64, 0, &inner);
            assert_eq!(sock.send_batch(&[pkt]).unwrap(), 1, "{}", sock.name());
            let got = recv_until(&mut sock, Duration::from_secs(5), is_ipip)
                .expect("IP-in-IP packet back");
            let outer = Ipv4Packet::new_checked(&got[..]).unwrap();
            assert_eq!(
                (outer.protocol(), outer.src_addr(), outer.dst_addr()),
                (Protocol::IpIp, lo, lo)
            );
            assert_eq!(outer.payload(), &inner[..], "{}", sock.name());
            let s = sock.stats();
            assert_eq!((s.tx_packets, s.rx_packets, s.total_drops()), (1, 1, 0));
        }
    });
}

#[test]
fn ipip_default_mode_keeps_source_ttl_and_tos_and_does_not_see_outgoing_packets() {
    in_netns(|| {
        let mut tun = tun();
        let mut sock = IpipSocket::open().unwrap();
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        let pkts = [
            encapsulated(TUN_ADDR, PEER, 33, 0x28, &inner),
            encapsulated(Ipv4Addr::UNSPECIFIED, PEER, 0, 0, &inner),
        ];
        assert_eq!(sock.send_batch(&pkts).unwrap(), 2);

        let first = recv_until(&mut tun, Duration::from_secs(5), is_ipip)
            .expect("first tunnel packet on the TUN");
        let o = Ipv4Packet::new_checked(&first[..]).unwrap();
        assert_eq!(
            (o.src_addr(), o.dst_addr(), o.ttl(), o.tos()),
            (TUN_ADDR, PEER, 33, 0x28)
        );
        assert!(!o.dont_frag() && o.verify_checksum());
        assert_eq!(o.payload(), &inner[..]);

        // Source 0.0.0.0 and TTL 0 leave the choice to the kernel: route source, default TTL.
        let second =
            recv_until(&mut tun, Duration::from_secs(5), is_ipip).expect("second tunnel packet");
        let o = Ipv4Packet::new_checked(&second[..]).unwrap();
        assert_eq!((o.src_addr(), o.ttl(), o.tos()), (TUN_ADDR, 64, 0));

        // A raw socket sees incoming packets only, not its own outgoing ones.
        let mut bufs = [PacketBuf::new(2048)];
        assert_eq!(sock.recv_batch(&mut bufs).unwrap(), 0);

        // A source that is not local is refused (without IP_TRANSPARENT), and counted.
        let foreign = encapsulated(Ipv4Addr::new(192, 0, 2, 9), PEER, 64, 0, &inner);
        assert_eq!(sock.send_batch(std::slice::from_ref(&foreign)).unwrap(), 1);
        let s = sock.stats();
        assert_eq!(
            (s.drops(IoDrop::TxRejected), s.last_tx_errno),
            (1, Some(libc::ENETUNREACH))
        );
        sock.set_any_source(true).unwrap();
        assert_eq!(sock.send_batch(&[foreign]).unwrap(), 1);
        let third = recv_until(&mut tun, Duration::from_secs(5), is_ipip)
            .expect("packet with a foreign source");
        assert_eq!(
            Ipv4Packet::new_checked(&third[..]).unwrap().src_addr(),
            Ipv4Addr::new(192, 0, 2, 9)
        );
    });
}

#[test]
fn ipip_header_included_sends_the_callers_header_as_written() {
    in_netns(|| {
        let mut tun = tun();
        let mut sock = IpipSocket::open().unwrap().with_header_included().unwrap();
        assert!(sock.header_included());
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        let mut pkt = encapsulated(TUN_ADDR, PEER, 17, 0xb8, &inner);
        Ipv4Packet::new_unchecked(pkt.as_mut()).set_flags_and_offset(true, false, 0);
        Ipv4Packet::new_unchecked(pkt.as_mut()).fill_checksum();
        assert_eq!(sock.send_batch(std::slice::from_ref(&pkt)).unwrap(), 1);
        let got = recv_until(&mut tun, Duration::from_secs(5), is_ipip)
            .expect("tunnel packet on the TUN");
        assert_eq!(got, pkt.as_ref());
    });
}

#[test]
fn big_tunnel_packets_fragment_in_default_mode_and_are_refused_with_header_included() {
    in_netns(|| {
        let mut tun = tun();
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            &[0xab; 1572],
        );
        assert_eq!(inner.len(), 1600);
        let pkt = encapsulated(TUN_ADDR, PEER, 64, 0, &inner);

        let mut sock = IpipSocket::open().unwrap();
        assert_eq!(sock.send_batch(std::slice::from_ref(&pkt)).unwrap(), 1);
        let first = recv_until(&mut tun, Duration::from_secs(5), is_ipip).expect("first fragment");
        let second =
            recv_until(&mut tun, Duration::from_secs(5), is_ipip).expect("second fragment");
        let (f1, f2) = (
            Ipv4Packet::new_checked(&first[..]).unwrap(),
            Ipv4Packet::new_checked(&second[..]).unwrap(),
        );
        assert_eq!(
            (f1.total_len(), f1.more_frags(), f1.frag_offset()),
            (1500, true, 0)
        );
        assert_eq!((f2.more_frags(), f2.frag_offset()), (false, 1480));
        assert_eq!(f1.ident(), f2.ident());
        assert_eq!([f1.payload(), f2.payload()].concat(), inner);

        let mut hdrincl = IpipSocket::open().unwrap().with_header_included().unwrap();
        assert_eq!(hdrincl.send_batch(&[pkt]).unwrap(), 1);
        let s = hdrincl.stats();
        assert_eq!(
            (s.tx_packets, s.drops(IoDrop::TxRejected), s.last_tx_errno),
            (0, 1, Some(libc::EMSGSIZE))
        );
    });
}

#[test]
fn ipip_socket_receives_outer_fragments_reassembled() {
    in_netns(|| {
        let mut tun = tun();
        let mut sock = IpipSocket::open().unwrap();
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            &[0xcd; 1572],
        );
        let frag = |offset: usize, data: &[u8], more: bool| {
            let mut v = vec![0u8; 20 + data.len()];
            Ipv4Repr {
                src_addr: PEER,
                dst_addr: TUN_ADDR,
                protocol: Protocol::IpIp,
                payload_len: data.len(),
                ttl: 64,
                tos: 0,
                ident: 0x4242,
                dont_frag: false,
            }
            .emit(&mut v);
            let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
            p.set_flags_and_offset(false, more, offset as u16);
            p.fill_checksum();
            v[20..].copy_from_slice(data);
            PacketBuf::from_slice(&v)
        };
        let frags = [
            frag(0, &inner[..1480], true),
            frag(1480, &inner[1480..], false),
        ];
        assert_eq!(tun.send_batch(&frags).unwrap(), 2);
        let got =
            recv_until(&mut sock, Duration::from_secs(5), is_ipip).expect("reassembled packet");
        let o = Ipv4Packet::new_checked(&got[..]).unwrap();
        assert_eq!(
            (o.total_len(), o.is_fragment(), o.src_addr()),
            (1620, false, PEER)
        );
        assert_eq!(o.payload(), &inner[..]);
    });
}

/// ICMP destination-unreachable `code` from `from` about `quoted` (header and 8 bytes).
fn icmp_unreachable(from: Ipv4Addr, to: Ipv4Addr, code: u8, quoted: &[u8]) -> PacketBuf {
    let q = &quoted[..28.min(quoted.len())];
    let mut v = vec![0u8; 20 + 8 + q.len()];
    Ipv4Repr {
        src_addr: from,
        dst_addr: to,
        protocol: Protocol::Icmp,
        payload_len: 8 + q.len(),
        ttl: 64,
        tos: 0,
        ident: 9,
        dont_frag: false,
    }
    .emit(&mut v);
    v[20] = 3;
    v[21] = code;
    v[28..].copy_from_slice(q);
    let c = checksum::checksum(&v[20..]);
    v[22..24].copy_from_slice(&c.to_be_bytes());
    PacketBuf::from_slice(&v)
}

/// A counter of the calling thread's namespace from `/proc/thread-self/net/snmp`.
fn snmp_counter(group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn icmp_errors_about_tunnel_packets_never_reach_the_ipip_socket() {
    in_netns(|| {
        let mut tun = tun();
        let mut sock = IpipSocket::open().unwrap();
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        assert_eq!(
            sock.send_batch(&[encapsulated(TUN_ADDR, PEER, 64, 0, &inner)])
                .unwrap(),
            1
        );
        let sent = recv_until(&mut tun, Duration::from_secs(5), is_ipip)
            .expect("tunnel packet on the TUN");

        // The far end runs no tunnel endpoint and says so: protocol unreachable (code 2). The
        // kernel takes it (the counter moves) but tells an unconnected raw socket without
        // IP_RECVERR nothing: no pending error, no wake-up, and the socket keeps working.
        let before = snmp_counter("Icmp", "InDestUnreachs");
        assert_eq!(
            tun.send_batch(&[icmp_unreachable(PEER, TUN_ADDR, 2, &sent)])
                .unwrap(),
            1
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while snmp_counter("Icmp", "InDestUnreachs") == before {
            assert!(
                Instant::now() < deadline,
                "the stack never took the ICMP error"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut ready = [false];
        assert_eq!(
            poll_readable(&[sock.fd()], Some(Duration::from_millis(200)), &mut ready).unwrap(),
            0
        );
        assert_eq!(sock.recv_batch(&mut [PacketBuf::new(2048)]).unwrap(), 0);

        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(
            sock.send_batch(&[encapsulated(lo, lo, 64, 0, &inner)])
                .unwrap(),
            1
        );
        assert!(recv_until(&mut sock, Duration::from_secs(5), is_ipip).is_some());
    });
}

#[test]
fn kernel_answers_protocol_4_with_icmp_only_while_no_ipip_socket_is_open() {
    in_netns(|| {
        let mut tun = tun();
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        let pkt = encapsulated(PEER, TUN_ADDR, 64, 0, &inner);
        let is_icmp = |p: &[u8]| Ipv4Packet::new_checked(p).unwrap().protocol() == Protocol::Icmp;

        // With a socket open: it gets the packet, and no ICMP goes back. (First, so that ICMP
        // rate limiting cannot hide an answer.)
        let mut sock = IpipSocket::open().unwrap();
        assert_eq!(tun.send_batch(std::slice::from_ref(&pkt)).unwrap(), 1);
        assert!(recv_until(&mut sock, Duration::from_secs(5), is_ipip).is_some());
        assert_eq!(
            recv_until(&mut tun, Duration::from_millis(300), is_icmp),
            None
        );
        drop(sock);

        // Without: ICMP protocol unreachable to the sender.
        assert_eq!(tun.send_batch(&[pkt]).unwrap(), 1);
        let icmp = recv_until(&mut tun, Duration::from_secs(5), is_icmp).expect("ICMP answer");
        let ip = Ipv4Packet::new_checked(&icmp[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (TUN_ADDR, PEER));
        assert_eq!(
            (ip.payload()[0], ip.payload()[1]),
            (3, 2),
            "destination unreachable, protocol"
        );
    });
}

#[test]
fn ipip_drops_malformed_sends_and_counts_them() {
    in_netns(|| {
        let mut sock = IpipSocket::open().unwrap();
        let lo = Ipv4Addr::LOCALHOST;
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            b"inner",
        );
        let mut fragment = encapsulated(lo, lo, 64, 0, &inner);
        Ipv4Packet::new_unchecked(fragment.as_mut()).set_flags_and_offset(false, true, 0);
        let pkts = [
            PacketBuf::from_slice(b"not a packet at all, not at all"),
            PacketBuf::from_slice(&inner), // IPv4, but protocol 17
            fragment,
            encapsulated(lo, Ipv4Addr::UNSPECIFIED, 64, 0, &inner),
            encapsulated(lo, lo, 64, 0, &inner),
        ];
        assert_eq!(sock.send_batch(&pkts).unwrap(), 5);
        let s = sock.stats();
        assert_eq!((s.tx_packets, s.drops(IoDrop::TxMalformed)), (1, 4));
        // The inner packet is not checked: hostile inner packets can be tunnelled on purpose.
        assert_eq!(
            sock.send_batch(&[encapsulated(lo, lo, 64, 0, &[0xff; 30])])
                .unwrap(),
            1
        );
        assert_eq!(sock.stats().tx_packets, 2);
    });
}

#[test]
fn a_full_ipip_socket_stops_the_batch_without_error_and_counts_drops_once() {
    in_netns(|| {
        let egress = TunDevice::create("slrt1", 1500).unwrap();
        netns::set_ipv4_address(egress.name(), Ipv4Addr::new(10, 251, 0, 1), 24).unwrap();
        // A token bucket of 1 kB/s with room for the whole queue: packets wait in the qdisc,
        // charged to the sending socket, until its small send buffer is full.
        run(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                "slrt1",
                "root",
                "tbf",
                "rate",
                "8kbit",
                "burst",
                "1600",
                "limit",
                "100000000",
            ],
        );
        let inner = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 99, 0, 1),
            40000,
            80,
            &[0; 200],
        );
        let good = encapsulated(
            Ipv4Addr::new(10, 251, 0, 1),
            Ipv4Addr::new(10, 251, 0, 2),
            64,
            0,
            &inner,
        );
        let pkts: Vec<PacketBuf> = (0..200)
            .map(|i| {
                if i % 10 == 5 {
                    PacketBuf::from_slice(&[0xff; 40])
                } else {
                    good.clone()
                }
            })
            .collect();
        for header_included in [false, true] {
            // Raw sockets say "send buffer full" as ENOBUFS (kernel-built header) or EAGAIN
            // (IP_HDRINCL); both stop the batch.
            let mut sock = IpipSocket::open().unwrap();
            if header_included {
                sock = sock.with_header_included().unwrap();
            }
            sock.set_send_buffer_size(0).unwrap();
            assert!(poll_writable(sock.fd(), Some(Duration::ZERO)).unwrap());
            let n = sock.send_batch(&pkts).unwrap();
            assert!(
                0 < n && n < pkts.len(),
                "stopped part way: {n} {:?}",
                sock.stats()
            );
            assert_eq!(sock.send_batch(&pkts[n..]).unwrap(), 0, "still full");
            assert!(!poll_writable(sock.fd(), Some(Duration::from_millis(1))).unwrap());
            let s = sock.stats();
            let malformed = (0..n).filter(|i| i % 10 == 5).count() as u64;
            assert_eq!(
                (s.tx_packets, s.drops(IoDrop::TxMalformed)),
                (n as u64 - malformed, malformed)
            );
            assert_eq!(s.drops(IoDrop::TxRejected), 0, "{}", sock.name());
        }
        drop(egress);
    });
}

/// Not a benchmark (those belong in docs/BENCHMARKS.md): a sanity check that the path from a TUN
/// read to a tunnel send moves packets at a plausible rate. It prints, it does not assert speed.
///
/// A UDP socket cannot offer more than about 100 kpps here, so the load is queued first: each
/// round fills the TUN's queue with 16,000 small datagrams, then times how fast the loop (TUN
/// `recv_batch` of 64, encapsulate, IP-in-IP `send_batch`) drains it.
#[test]
fn throughput_sanity_tun_read_to_ipip_send() {
    in_netns(|| {
        const ROUND: u64 = 16_000;
        let mut tun = tun();
        tun.set_txqueuelen(2 * ROUND as u32).unwrap();
        // Tunnel packets go out through a second TUN that nobody reads: like a NIC, it takes
        // them and drops what overflows its queue.
        let egress = TunDevice::create("slrt1", 1500).unwrap();
        netns::set_ipv4_address(egress.name(), Ipv4Addr::new(10, 251, 0, 1), 24).unwrap();
        let mut sock = IpipSocket::open().unwrap();
        let (src, dst) = (Ipv4Addr::new(10, 251, 0, 1), Ipv4Addr::new(10, 251, 0, 2));
        let sender = UdpSocket::bind((TUN_ADDR, 0)).unwrap();
        let mut bufs: Vec<PacketBuf> = (0..64).map(|_| PacketBuf::new(2048)).collect();
        let (mut moved, mut busy) = (0u64, Duration::ZERO);
        for _round in 0..5 {
            let mut offered = 0;
            while offered < ROUND {
                offered += sender.send_to(&[0u8; 18], (PEER, 9999)).is_ok() as u64;
            }
            let t0 = Instant::now();
            loop {
                bufs.iter_mut().for_each(|b| b.reset(64));
                let n = tun.recv_batch(&mut bufs).unwrap();
                if n == 0 {
                    break;
                }
                moved += n as u64;
                for b in &mut bufs[..n] {
                    slr_wire::ipip::encapsulate(b, src, dst, 64, 1).unwrap();
                }
                let mut done = 0;
                while done < n {
                    done += sock.send_batch(&bufs[done..n]).unwrap();
                }
            }
            busy += t0.elapsed();
        }
        let s = sock.stats();
        println!(
            "TUN recv_batch(64) -> encapsulate -> IpipSocket send_batch, 46-byte IP packets: {} of {} \
             queued packets moved at {:.0} kpps ({} tunnel drops)",
            moved,
            5 * ROUND,
            moved as f64 / busy.as_secs_f64() / 1e3,
            s.total_drops(),
        );
        assert!(moved > ROUND);
        assert_eq!((s.tx_packets, s.total_drops()), (moved, 0));
    });
}
