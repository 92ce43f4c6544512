//! Packet builders for the core's unit tests: packets as byte arrays, made with slr-wire, so a
//! test reads as "a SYN from the client to the VIP" rather than as a hex dump.
//!
//! Every builder makes a well-formed packet (lengths and checksums right); tests that need a
//! malformed one break a well-formed one on purpose, so the breakage is the only thing wrong.

use core::net::Ipv4Addr;
use slr_wire::checksum;
use slr_wire::icmp;
use slr_wire::ipv4::{Ipv4Packet, Protocol};
use slr_wire::tcp::TcpFlags;

/// An IPv4 packet to build: every header field settable, options included.
#[derive(Debug, Clone)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
    /// Options; padded with end-of-options to a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Ip {
    /// A packet with TTL 64, id 0x1234, DF clear, no options.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: Protocol, payload: Vec<u8>) -> Self {
        Ip {
            src,
            dst,
            protocol: protocol.into(),
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            options: Vec::new(),
            payload,
        }
    }

    /// Sets DF.
    pub fn df(mut self) -> Self {
        self.dont_frag = true;
        self
    }

    /// Sets the options.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// The bytes, with a valid header checksum.
    pub fn build(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0); // end-of-options padding
        let hl = 20 + options.len();
        assert!(hl <= 60, "options too long for an IPv4 header");
        let mut v = vec![0u8; hl + self.payload.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.set_version_and_header_len(hl as u8);
        p.set_tos(self.tos);
        p.set_total_len((hl + self.payload.len()) as u16);
        p.set_ident(self.ident);
        p.set_flags_and_offset(self.dont_frag, self.more_frags, self.frag_offset);
        p.set_ttl(self.ttl);
        p.set_protocol(Protocol::from(self.protocol));
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        v[20..hl].copy_from_slice(&options);
        v[hl..].copy_from_slice(&self.payload);
        Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
        v
    }
}

/// Recomputes the IPv4 header checksum of `packet` in place (after a test edited the header).
pub fn fix_ip_checksum(packet: &mut [u8]) {
    Ipv4Packet::new_unchecked(packet).fill_checksum();
}

/// A TCP segment (`options` already padded to whole words by the caller) with a checksum valid
/// for `src -> dst`; sequence 1000, acknowledgement 2000 when ACK is set.
pub fn tcp_segment(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "TCP options must fill whole words");
    let hl = 20 + options.len();
    let mut s = vec![0u8; hl + payload.len()];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&1000u32.to_be_bytes());
    if flags & TcpFlags::ACK != 0 {
        s[8..12].copy_from_slice(&2000u32.to_be_bytes());
    }
    s[12] = ((hl / 4) as u8) << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&65535u16.to_be_bytes());
    s[20..hl].copy_from_slice(options);
    s[hl..].copy_from_slice(payload);
    let c = checksum::finish(checksum::sum(
        checksum::pseudo_header(src.octets(), dst.octets(), 6, s.len() as u16),
        &s,
    ));
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram with a valid checksum for `src -> dst`.
pub fn udp_datagram(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut d = vec![0u8; len];
    d[0..2].copy_from_slice(&sport.to_be_bytes());
    d[2..4].copy_from_slice(&dport.to_be_bytes());
    d[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    d[8..].copy_from_slice(payload);
    let c = checksum::finish(checksum::sum(
        checksum::pseudo_header(src.octets(), dst.octets(), 17, len as u16),
        &d,
    ));
    let c = if c == 0 { 0xffff } else { c };
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// A whole TCP/IPv4 packet without options or payload.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    Ip::new(
        src,
        dst,
        Protocol::Tcp,
        tcp_segment(src, sport, dst, dport, flags, &[], &[]),
    )
    .build()
}

/// A whole UDP/IPv4 packet.
pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    Ip::new(
        src,
        dst,
        Protocol::Udp,
        udp_datagram(src, sport, dst, dport, payload),
    )
    .build()
}

/// An ICMP message (type, code, rest of header, data) with a valid checksum.
pub fn icmp_message(msg_type: u8, code: u8, rest: u32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 8 + data.len()];
    m[0] = msg_type;
    m[1] = code;
    m[4..8].copy_from_slice(&rest.to_be_bytes());
    m[8..].copy_from_slice(data);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP error from `reporter` to `dst` quoting `quoted` (as much of it as the caller passes).
pub fn icmp_error(
    reporter: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    Ip::new(
        reporter,
        dst,
        Protocol::Icmp,
        icmp_message(msg_type, code, 0, quoted),
    )
    .build()
}

/// An ICMP echo request.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let rest = (u32::from(id) << 16) | u32::from(seq);
    Ip::new(
        src,
        dst,
        Protocol::Icmp,
        icmp_message(icmp::ECHO_REQUEST, 0, rest, b"ping"),
    )
    .build()
}

/// A TCP MSS option.
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

/// Splits the IPv4 packet `datagram` (no options) into fragments of at most `chunk` payload bytes
/// (a multiple of 8) with id `ident`, in order: first fragment first.
pub fn fragment(datagram: &[u8], ident: u16, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let p = Ipv4Packet::new_checked(datagram).expect("a valid datagram");
    assert_eq!(
        p.header_len(),
        20,
        "fragment() takes packets without options"
    );
    let payload = p.payload();
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let end = (offset + chunk).min(payload.len());
        let mut ip = Ip::new(
            p.src_addr(),
            p.dst_addr(),
            p.protocol(),
            payload[offset..end].to_vec(),
        );
        ip.ident = ident;
        ip.ttl = p.ttl();
        ip.dont_frag = false;
        ip.more_frags = end < payload.len();
        ip.frag_offset = offset as u16;
        out.push(ip.build());
        offset = end;
    }
    out
}

/// Whether the TCP or UDP checksum of the IPv4 packet `packet` verifies (pseudo-header included).
pub fn transport_checksum_ok(packet: &[u8]) -> bool {
    let p = Ipv4Packet::new_checked(packet).expect("a valid packet");
    let seg = p.payload();
    let proto: u8 = p.protocol().into();
    let ph = checksum::pseudo_header(
        p.src_addr().octets(),
        p.dst_addr().octets(),
        proto,
        seg.len() as u16,
    );
    checksum::finish(checksum::sum(ph, seg)) == 0
}
