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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
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

/// The near end of a [`VethPeer`]'s pair, in the test's namespace.
const VETH_NEAR: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 1);
/// The far end, in the peer's namespace.
const VETH_FAR: Ipv4Addr = Ipv4Addr::new(10, 252, 0, 2);

/// A second network namespace joined to the calling thread's by a veth pair: "slrv0" here
/// (`VETH_NEAR`/24), "slrv1" there (`VETH_FAR`/24, and a default route through it so that any
/// source passes reverse-path filtering). A thread in it reads every IP-in-IP packet that arrives
/// with an [`IpipSocket`] of its own and passes it back. The namespace goes away with that thread
/// and the pair with the calling thread's namespace: nothing to clean up.
struct VethPeer {
    packets: mpsc::Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<PeerTables>,
}

/// The peer's kernel tables at the end, read while its socket was still open.
struct PeerTables {
    /// `/proc/net/raw` of the peer's namespace.
    raw: String,
    /// `/proc/net/snmp` of the peer's namespace.
    snmp: String,
}

impl VethPeer {
    /// Makes the peer; `mtu` is the MTU of "slrv0", so the path MTU of sends from here.
    fn start(mtu: u32) -> VethPeer {
        let (ns_tx, ns_rx) = mpsc::channel::<String>();
        let (made_tx, made_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (pkt_tx, packets) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            netns::unshare_net_namespace().expect("peer namespace");
            netns::set_loopback_up().unwrap();
            // "PID/task/TID": this thread's namespace is /proc/PID/task/TID/ns/net.
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            ns_tx
                .send(format!("/proc/{}/ns/net", me.display()))
                .unwrap();
            made_rx.recv().expect("the veth pair was made");
            netns::set_ipv4_address("slrv1", VETH_FAR, 24).unwrap();
            netns::set_interface_up("slrv1").unwrap();
            run("ip", &["route", "add", "default", "dev", "slrv1"]);
            let mut sock = IpipSocket::open().unwrap();
            ready_tx.send(()).unwrap();
            let mut bufs: Vec<PacketBuf> = (0..8).map(|_| PacketBuf::new(65_535)).collect();
            while !stopped.load(Ordering::Relaxed) {
                let wait = Some(Duration::from_millis(20));
                poll_readable(&[sock.fd()], wait, &mut [false]).unwrap();
                bufs.iter_mut().for_each(|b| b.reset(0));
                let n = sock.recv_batch(&mut bufs).unwrap();
                for b in &bufs[..n] {
                    let _ = pkt_tx.send(b.as_ref().to_vec());
                }
            }
            let read = |table: &str| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap()
            };
            let tables = PeerTables {
                raw: read("raw"),
                snmp: read("snmp"),
            };
            drop(sock);
            tables
        });
        let ns = ns_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("peer namespace made");
        run(
            "ip",
            &[
                "link", "add", "name", "slrv0", "type", "veth", "peer", "name", "slrv1", "netns",
                &ns,
            ],
        );
        made_tx.send(()).unwrap();
        netns::set_interface_mtu("slrv0", mtu).unwrap();
        netns::set_ipv4_address("slrv0", VETH_NEAR, 24).unwrap();
        netns::set_interface_up("slrv0").unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("peer ready");
        VethPeer {
            packets,
            stop,
            thread,
        }
    }

    /// The next `n` IP-in-IP packets the peer read, fewer if `timeout` passes first.
    fn receive(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.packets.recv_timeout(left) {
                Ok(p) => got.push(p),
                Err(_) => break,
            }
        }
        got
    }

    /// Stops the peer and returns its tables.
    fn finish(self) -> PeerTables {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(t) => t,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The receive queue (bytes) of each raw protocol-4 socket in a `/proc/net/raw` table.
fn ipip_rx_queues(raw: &str) -> Vec<u64> {
    raw.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f.get(1)?.ends_with(":0004") {
                return None;
            }
            u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
        })
        .collect()
}

/// Counter `name` of the "Ip:" lines of a `/proc/net/snmp` table.
fn ip_counter(snmp: &str, name: &str) -> u64 {
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// `/proc/net/snmp` of the calling thread's namespace.
fn own_snmp() -> String {
    std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap()
}

/// A UDP packet of `len` bytes to port `tag` (which tells the packets of a test apart) with the
/// DF bit `dont_frag`.
fn tagged_inner(tag: u16, dont_frag: bool, len: usize) -> Vec<u8> {
    let payload = vec![tag as u8; len - 28];
    let mut v = udp_packet(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 99, 0, 1),
        40000,
        tag,
        &payload,
    );
    let mut ip = Ipv4Packet::new_unchecked(&mut v[..]);
    ip.set_flags_and_offset(dont_frag, false, 0);
    ip.fill_checksum();
    v
}

/// The tag ([`tagged_inner`]) of the packet inside tunnel packet `outer`.
fn tag_of(outer: &Ipv4Packet<&[u8]>) -> usize {
    let inner = Ipv4Packet::new_checked(outer.payload()).unwrap();
    u16::from_be_bytes([inner.payload()[2], inner.payload()[3]]) as usize
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

/// RFC 2003 3.1: "if the inner header has DF set, the outer header MUST have it"; and DF clear
/// stays clear. In both modes, for a batch that alternates runs of both, with real packets across
/// a veth. The default mode's DF socket keeps the caller's source, TTL and TOS, honours
/// `set_any_source`, and keeps nothing it receives.
#[test]
fn ipip_outer_df_is_the_inner_df_in_both_modes_across_a_veth() {
    in_netns(|| {
        let peer = VethPeer::start(1500);
        let dfs = [true, true, false, true, false, false];
        let inners: Vec<Vec<u8>> = dfs
            .iter()
            .enumerate()
            .map(|(tag, &df)| tagged_inner(tag as u16, df, 200))
            .collect();
        let pkts: Vec<PacketBuf> = inners
            .iter()
            .map(|i| encapsulated(VETH_NEAR, VETH_FAR, 33, 0x28, i))
            .collect();
        for (p, &df) in pkts.iter().zip(&dfs) {
            let o = Ipv4Packet::new_checked(p.as_ref()).unwrap();
            assert_eq!(o.dont_frag(), df, "encapsulate copies DF");
        }
        for header_included in [false, true] {
            let mut sock = IpipSocket::open().unwrap();
            if header_included {
                sock = sock.with_header_included().unwrap();
            }
            assert_eq!(sock.send_batch(&pkts).unwrap(), pkts.len());
            let s = sock.stats();
            assert_eq!((s.tx_packets, s.total_drops()), (6, 0), "{}", sock.name());
            let got = peer.receive(6, Duration::from_secs(5));
            assert_eq!(got.len(), 6, "{}", sock.name());
            let mut seen = [false; 6];
            for g in &got {
                let o = Ipv4Packet::new_checked(&g[..]).unwrap();
                let tag = tag_of(&o);
                let inner = Ipv4Packet::new_checked(o.payload()).unwrap();
                assert_eq!(
                    (o.dont_frag(), inner.dont_frag()),
                    (dfs[tag], dfs[tag]),
                    "{}: packet {tag}",
                    sock.name()
                );
                assert_eq!(
                    (o.src_addr(), o.ttl(), o.tos(), o.is_fragment()),
                    (VETH_NEAR, 33, 0x28, false)
                );
                assert!(o.verify_checksum());
                assert_eq!(o.payload(), &inners[tag][..]);
                seen[tag] = true;
            }
            assert_eq!(seen, [true; 6], "{}", sock.name());
        }

        // IP_TRANSPARENT is set on both sockets of the default mode.
        let mut sock = IpipSocket::open().unwrap();
        let foreign = Ipv4Addr::new(192, 0, 2, 9);
        let pkts = [(6, true), (7, false)]
            .map(|(tag, df)| encapsulated(foreign, VETH_FAR, 64, 0, &tagged_inner(tag, df, 100)));
        assert_eq!(sock.send_batch(&pkts).unwrap(), 2);
        let s = sock.stats();
        assert_eq!(
            (s.drops(IoDrop::TxRejected), s.last_tx_errno),
            (2, Some(libc::ENETUNREACH))
        );
        sock.set_any_source(true).unwrap();
        assert_eq!(sock.send_batch(&pkts).unwrap(), 2);
        assert_eq!(sock.stats().tx_packets, 2);
        let got = peer.receive(2, Duration::from_secs(5));
        let mut arrived: Vec<(usize, bool, Ipv4Addr)> = got
            .iter()
            .map(|g| {
                let o = Ipv4Packet::new_checked(&g[..]).unwrap();
                (tag_of(&o), o.dont_frag(), o.src_addr())
            })
            .collect();
        arrived.sort();
        assert_eq!(arrived, [(6, true, foreign), (7, false, foreign)]);

        // The peer's IpipSocket is two raw protocol-4 sockets: the DF one was handed a copy of
        // each of the 14 packets and kept none; the receiving one was read empty.
        let tables = peer.finish();
        assert_eq!(ipip_rx_queues(&tables.raw), [0, 0], "{}", tables.raw);
    });
}

/// The other half of RFC 2003 3.1 on the default mode: a DF tunnel packet larger than the path
/// MTU is refused and counted, never sent in fragments, and the rest of the batch goes on; a
/// DF-clear one is fragmented and arrives (reassembled). With `IP_HDRINCL` both are refused.
#[test]
fn a_df_tunnel_packet_over_the_path_mtu_is_refused_while_a_df_clear_one_is_fragmented() {
    in_netns(|| {
        let peer = VethPeer::start(1400);
        // Outer 1520 bytes with DF, 1520 without, and 1400 with DF: exactly the MTU.
        let inners = [
            tagged_inner(0, true, 1500),
            tagged_inner(1, false, 1500),
            tagged_inner(2, true, 1380),
        ];
        let pkts = inners
            .each_ref()
            .map(|i| encapsulated(VETH_NEAR, VETH_FAR, 64, 0, i));

        let before = own_snmp();
        let mut sock = IpipSocket::open().unwrap();
        assert_eq!(sock.send_batch(&pkts).unwrap(), 3);
        let s = sock.stats();
        assert_eq!(
            (s.tx_packets, s.drops(IoDrop::TxRejected), s.last_tx_errno),
            (2, 1, Some(libc::EMSGSIZE))
        );
        let after = own_snmp();
        let delta = |name| ip_counter(&after, name) - ip_counter(&before, name);
        assert_eq!(
            (delta("FragOKs"), delta("FragCreates"), delta("FragFails")),
            (1, 2, 0),
            "one packet, the DF-clear one, went out in two fragments"
        );
        // Wait a second for a third packet that must not come.
        let got = peer.receive(3, Duration::from_secs(1));
        let mut arrived: Vec<(usize, bool, u16)> = got
            .iter()
            .map(|g| {
                let o = Ipv4Packet::new_checked(&g[..]).unwrap();
                assert_eq!(o.payload(), &inners[tag_of(&o)][..]);
                (tag_of(&o), o.dont_frag(), o.total_len())
            })
            .collect();
        arrived.sort();
        assert_eq!(arrived, [(1, false, 1520), (2, true, 1400)]);

        let mut hdrincl = IpipSocket::open().unwrap().with_header_included().unwrap();
        assert_eq!(hdrincl.send_batch(&pkts).unwrap(), 3);
        let s = hdrincl.stats();
        assert_eq!(
            (s.tx_packets, s.drops(IoDrop::TxRejected), s.last_tx_errno),
            (1, 2, Some(libc::EMSGSIZE))
        );
        let got = peer.receive(2, Duration::from_secs(1));
        assert_eq!(got.len(), 1);
        let o = Ipv4Packet::new_checked(&got[0][..]).unwrap();
        assert_eq!((tag_of(&o), o.dont_frag()), (2, true));

        let tables = peer.finish();
        assert_eq!(
            (
                ip_counter(&tables.snmp, "ReasmReqds"),
                ip_counter(&tables.snmp, "ReasmOKs")
            ),
            (2, 1),
            "the peer reassembled the DF-clear packet from two fragments"
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
