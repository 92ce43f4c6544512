//! The host agent's tunnel terminator on arbitrary packets: whatever it accepts must be a valid
//! IPv4 packet, not itself a tunnel, for a virtual subnet of the host, that came in a well-formed
//! tunnel from a trusted source; its counters must add up.
//!
//! Input: one packet, as read from the raw IP-in-IP socket (outer IPv4 header first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_core::terminate::TunnelTerminator;
use slr_wire::ipv4::{Ipv4Cidr, Ipv4Packet, Ipv4Repr, Protocol};
use slr_wire::PacketBuf;

fn cidrs(v: &[&str]) -> Vec<Ipv4Cidr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fuzz_target!(|data: &[u8]| {
    let trusted = cidrs(&["10.200.2.0/24", "10.200.7.2/32"]);
    let subnets = cidrs(&["10.99.0.0/24", "10.98.0.0/16"]);
    let mut t = TunnelTerminator::new(trusted.clone(), subnets.clone());
    let mut buf = PacketBuf::from_slice(data);
    let result = t.handle_packet(&mut buf);
    let c = t.counters();
    assert_eq!(c.packets_in, 1);
    assert_eq!(c.packets_delivered + c.drops.iter().sum::<u64>(), 1);
    assert_eq!(
        c.per_subnet_packets.iter().sum::<u64>(),
        c.packets_delivered
    );
    let Ok(src) = result else {
        assert_eq!(c.packets_delivered, 0);
        return;
    };
    assert_eq!(c.bytes_delivered, buf.len() as u64);
    // The outer header was a valid, unfragmented IP-in-IP header from a trusted source.
    let outer = Ipv4Packet::new_checked(data).expect("accepted: outer header");
    let o = Ipv4Repr::parse(&outer).expect("accepted: outer header parses");
    assert_eq!(o.protocol, Protocol::IpIp);
    assert!(!outer.is_fragment());
    assert_eq!(src, o.src_addr);
    assert!(trusted.iter().any(|p| p.contains(src)));
    // The inner packet is exactly the outer payload, cut to its own total length, and valid.
    let inner = Ipv4Packet::new_checked(buf.as_ref()).expect("accepted: inner header");
    let r = Ipv4Repr::parse(&inner).expect("accepted: inner header parses");
    assert_eq!(inner.total_len() as usize, buf.len());
    assert_eq!(buf.as_ref(), &outer.payload()[..buf.len()]);
    assert_ne!(r.protocol, Protocol::IpIp);
    assert_ne!(r.ttl, 0);
    assert!(
        subnets.iter().any(|s| s.contains(r.dst_addr)),
        "delivered to {}",
        r.dst_addr
    );
});
