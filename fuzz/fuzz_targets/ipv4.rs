//! slr-wire on arbitrary bytes: the IPv4 view and repr, the TCP/UDP/ICMP views over its payload,
//! the ICMP quote parser, IP-in-IP decapsulation; and round trips (emit -> parse, encapsulate ->
//! decapsulate, ICMP error -> quoted flow, MSS clamp -> checksum) wherever the input allows one.
//!
//! Input: one IPv4 packet, as it would come off a TUN device (no link header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_wire::checksum;
use slr_wire::icmp::{self, IcmpPacket, IcmpRepr};
use slr_wire::ipip;
use slr_wire::ipv4::{self, Ipv4Cidr, Ipv4Packet, Ipv4Repr, Protocol};
use slr_wire::{PacketBuf, TcpPacket, UdpPacket};
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    ip(data);
    // Mutated headers mostly fail the checksum: go through the repr paths with it repaired too.
    let hl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
    if hl >= ipv4::HEADER_LEN && hl <= data.len() {
        let mut d = data.to_vec();
        d[10..12].fill(0);
        let c = checksum::checksum(&d[..hl]);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        ip(&d);
    }
    // The parsers that see transport headers and ICMP quotes also get the raw bytes.
    transport(data, None);
    let _ = icmp::quoted_flow(data);
    let mut b = PacketBuf::from_slice(data);
    if let Ok(outer) = ipip::decapsulate(&mut b) {
        assert_eq!(outer.protocol, Protocol::IpIp);
        let inner = Ipv4Packet::new_checked(b.as_ref()).expect("decapsulated packet is checked");
        assert!(inner.verify_checksum());
        assert_eq!(inner.total_len() as usize, b.len());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = s.parse::<Ipv4Cidr>() {
            assert_eq!(c.to_string().parse::<Ipv4Cidr>(), Ok(c));
            assert!(c.contains(c.addr()));
        }
    }
});

fn ip(data: &[u8]) {
    let Ok(p) = Ipv4Packet::new_checked(data) else {
        return;
    };
    // A checked view: no accessor may panic.
    let hl = p.header_len() as usize;
    let tl = p.total_len() as usize;
    assert_eq!(p.version(), 4);
    assert!(hl >= ipv4::HEADER_LEN && hl <= tl && tl <= data.len());
    let _ = (
        p.tos(),
        p.ident(),
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
    );
    let _ = (
        p.is_fragment(),
        p.ttl(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
    );
    assert_eq!(p.header().len(), hl);
    assert_eq!(p.payload().len(), tl - hl);
    let proto = p.protocol();
    assert_eq!(Protocol::from(u8::from(proto)), proto);

    let repr = Ipv4Repr::parse(&p);
    assert_eq!(repr.is_ok(), p.verify_checksum());
    if let Ok(r) = repr {
        assert_eq!(r.payload_len, tl - hl);
        // emit -> parse gives the same repr back (the emitted header has no options, no
        // fragmentation, hence the repr has neither).
        let mut out = vec![0xa5u8; r.buffer_len() + r.payload_len];
        r.emit(&mut out);
        out[r.buffer_len()..].copy_from_slice(p.payload());
        let q = Ipv4Packet::new_checked(&out[..]).expect("emitted packet is checked");
        assert_eq!(Ipv4Repr::parse(&q), Ok(r));
        assert!(!q.is_fragment());
        assert_eq!(q.payload(), p.payload());

        // TTL decrement keeps the checksum valid.
        let mut d = data[..tl].to_vec();
        let mut m = Ipv4Packet::new_checked(&mut d[..]).unwrap();
        let ttl = m.decrement_ttl();
        assert_eq!(ttl, p.ttl().saturating_sub(1));
        assert!(m.verify_checksum());

        // encapsulate -> decapsulate gives the packet back, byte for byte.
        let mut b = PacketBuf::from_slice(&data[..tl]);
        let src = Ipv4Addr::new(10, 200, 2, 2);
        let dst = Ipv4Addr::new(10, 200, 3, 2);
        match ipip::encapsulate(&mut b, src, dst, 64, 7) {
            Ok(()) => {
                assert_eq!(b.len(), tl + ipip::OVERHEAD);
                let outer = ipip::decapsulate(&mut b).expect("own encapsulation decapsulates");
                assert_eq!(
                    (outer.src_addr, outer.dst_addr, outer.protocol),
                    (src, dst, Protocol::IpIp)
                );
                assert_eq!((outer.tos, outer.dont_frag), (p.tos(), p.dont_frag()));
                assert_eq!(b.as_ref(), &data[..tl]);
            }
            Err(e) => assert_eq!(e, slr_wire::Error::BadTotalLen, "tl {tl}"),
        }
    }

    // The ICMP errors the router emits about this packet are well formed and quote its flow.
    for e in [IcmpRepr::FragNeeded { mtu: 1480 }, IcmpRepr::TimeExceeded] {
        let orig = &data[..tl];
        let mut out = vec![0u8; IcmpRepr::datagram_len(orig)];
        let n = e.emit_datagram(Ipv4Addr::new(10, 99, 0, 1), orig, 3, &mut out);
        assert_eq!(n, out.len());
        assert!(n <= icmp::MAX_ERROR_DATAGRAM);
        let q = Ipv4Packet::new_checked(&out[..]).expect("ICMP error is checked");
        let r = Ipv4Repr::parse(&q).expect("ICMP error parses");
        assert_eq!((r.protocol, r.dst_addr), (Protocol::Icmp, p.src_addr()));
        let m = IcmpPacket::new_checked(q.payload()).expect("ICMP error has a header");
        assert!(m.verify_checksum());
        assert!(m.is_error());
        assert_eq!(icmp::quoted_flow(m.data()), icmp::quoted_flow(orig));
    }

    transport(p.payload(), Some((p.src_addr(), p.dst_addr(), proto)));
}

/// TCP, UDP and ICMP views over `seg`; `ip` is the enclosing header when there is one.
fn transport(seg: &[u8], ip: Option<(Ipv4Addr, Ipv4Addr, Protocol)>) {
    if let Ok(t) = TcpPacket::new_checked(seg) {
        let hl = t.header_len() as usize;
        assert!(hl >= 20 && hl <= seg.len());
        let _ = (
            t.src_port(),
            t.dst_port(),
            t.seq_number(),
            t.flags(),
            t.checksum(),
        );
        assert_eq!(t.options().len(), hl - 20);
        let mss = t.mss();
        // Clamping the MSS rewrites it and keeps a valid checksum valid (incremental update, at
        // either alignment of the option).
        for max in [0u16, 536, 1360, u16::MAX] {
            let mut s = seg.to_vec();
            let mut c = TcpPacket::new_checked(&mut s[..]).unwrap();
            let changed = c.clamp_mss(max);
            assert_eq!(changed, mss.is_some_and(|m| m > max));
            assert_eq!(c.mss(), mss.map(|m| m.min(max)));
            if let Some((src, dst, Protocol::Tcp)) = ip {
                if seg.len() <= u16::MAX as usize {
                    let verify = |b: &[u8]| {
                        let ph =
                            checksum::pseudo_header(src.octets(), dst.octets(), 6, b.len() as u16);
                        checksum::finish(checksum::sum(ph, b)) == 0
                    };
                    if verify(seg) {
                        assert!(verify(&s), "clamp_mss({max}) broke the checksum");
                    }
                }
            }
            if !changed {
                assert_eq!(&s[..], seg);
            }
        }
    }
    if let Ok(u) = UdpPacket::new_checked(seg) {
        let _ = (u.src_port(), u.dst_port());
        assert_eq!(u.payload().len() + 8, u.len() as usize);
    }
    if let Ok(m) = IcmpPacket::new_checked(seg) {
        let _ = (
            m.msg_type(),
            m.code(),
            m.rest_of_header(),
            m.verify_checksum(),
            m.is_error(),
        );
        assert_eq!(m.data().len() + 8, seg.len());
        if let Ok(f) = icmp::quoted_flow(m.data()) {
            if !matches!(f.protocol, Protocol::Tcp | Protocol::Udp) {
                assert_eq!((f.src_port, f.dst_port), (0, 0));
            }
        }
    }
}
