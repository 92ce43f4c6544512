//! IPv4 (RFC 791).

use crate::{checksum, Error, Result};
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// IP protocol numbers slr knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// ICMP (1).
    Icmp,
    /// IP-in-IP (4, RFC 2003).
    IpIp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// Any other protocol number.
    Other(u8),
}

impl From<u8> for Protocol {
    fn from(v: u8) -> Self {
        match v {
            1 => Protocol::Icmp,
            4 => Protocol::IpIp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            o => Protocol::Other(o),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::Icmp => 1,
            Protocol::IpIp => 4,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Other(o) => o,
        }
    }
}

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: core::ops::Range<usize> = 2..4;
    pub const IDENT: core::ops::Range<usize> = 4..6;
    pub const FLG_OFF: core::ops::Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: core::ops::Range<usize> = 10..12;
    pub const SRC: core::ops::Range<usize> = 12..16;
    pub const DST: core::ops::Range<usize> = 16..20;
}

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checks; accessors may panic on short input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`Ipv4Packet::check_len`]: then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates version, header length and total length against the buffer.
    ///
    /// The buffer may be longer than the total length (link padding); [`Ipv4Packet::payload`]
    /// ends at the total length.
    pub fn check_len(&self) -> Result<()> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if d[field::VER_IHL] >> 4 != 4 {
            return Err(Error::NotIpv4);
        }
        let hl = self.header_len() as usize;
        if hl < HEADER_LEN || hl > d.len() {
            return Err(Error::BadHeaderLen);
        }
        let tl = self.total_len() as usize;
        if tl < hl {
            return Err(Error::BadTotalLen);
        }
        if tl > d.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4 for a checked packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL x 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// The TOS byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    /// Total length field.
    pub fn total_len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::LENGTH.start], d[field::LENGTH.start + 1]])
    }
    /// Identification field.
    pub fn ident(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::IDENT.start], d[field::IDENT.start + 1]])
    }
    fn flg_off(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::FLG_OFF.start], d[field::FLG_OFF.start + 1]])
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.flg_off() & 0x4000 != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        self.flg_off() & 0x2000 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.flg_off() & 0x1fff) << 3
    }
    /// Whether this is a fragment at all (offset or MF set).
    pub fn is_fragment(&self) -> bool {
        self.flg_off() & 0x3fff != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    /// Protocol of the payload.
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::CHECKSUM.start], d[field::CHECKSUM.start + 1]])
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[12], d[13], d[14], d[15])
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[16], d[17], d[18], d[19])
    }
    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let hl = self.header_len() as usize;
        checksum::checksum(&self.buffer.as_ref()[..hl]) == 0
    }
    /// The header bytes (with options).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len() as usize]
    }
    /// The payload, from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        &d[self.header_len() as usize..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (header_len / 4);
    }
    /// Sets the TOS byte.
    pub fn set_tos(&mut self, v: u8) {
        self.buffer.as_mut()[field::TOS] = v;
    }
    /// Sets the total length.
    pub fn set_total_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the identification.
    pub fn set_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets flags and fragment offset: DF, MF and offset in bytes (a multiple of 8).
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let v = ((dont_frag as u16) << 14) | ((more_frags as u16) << 13) | ((offset >> 3) & 0x1fff);
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the TTL (the checksum is not updated; see [`Ipv4Packet::decrement_ttl`]).
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }
    /// Sets the protocol.
    pub fn set_protocol(&mut self, p: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = p.into();
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len() as usize;
        let d = self.buffer.as_mut();
        d[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&d[..hl]);
        d[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    /// Decrements the TTL by one with an incremental checksum update; returns the new TTL.
    pub fn decrement_ttl(&mut self) -> u8 {
        let d = self.buffer.as_mut();
        let old = u16::from_be_bytes([d[field::TTL], d[field::PROTOCOL]]);
        let ttl = d[field::TTL].saturating_sub(1);
        d[field::TTL] = ttl;
        let new = u16::from_be_bytes([ttl, d[field::PROTOCOL]]);
        let c = u16::from_be_bytes([d[10], d[11]]);
        let c = checksum::update16(c, old, new);
        d[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        ttl
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len() as usize, self.total_len() as usize);
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// A parsed IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub protocol: Protocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// TOS byte.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Parses a checked packet, verifying the header checksum.
    ///
    /// Fragments and headers with options parse too: the caller decides what it supports.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.payload().len(),
            ttl: p.ttl(),
            tos: p.tos(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header (no options, no fragmentation) with its checksum into `buf`.
    ///
    /// `buf` must hold at least [`HEADER_LEN`] bytes; the payload is not touched.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        p.set_version_and_header_len(HEADER_LEN as u8);
        p.set_tos(self.tos);
        p.set_total_len((HEADER_LEN + self.payload_len) as u16);
        p.set_ident(self.ident);
        p.set_flags_and_offset(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
    }
}

/// An IPv4 prefix such as `10.99.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// A prefix; host bits of `addr` are cleared. `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let a = u32::from(addr) & Self::mask_of(prefix_len);
        Some(Ipv4Cidr {
            addr: Ipv4Addr::from(a),
            prefix_len,
        })
    }
    fn mask_of(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - len)
        }
    }
    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
    /// Whether `a` lies in the prefix.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_of(self.prefix_len) == u32::from(self.addr)
    }
    /// Whether `other` lies entirely inside this prefix.
    pub fn contains_cidr(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a prefix string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IPv4 prefix (a.b.c.d/len or a.b.c.d): {0:?}")]
pub struct CidrParseError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_string());
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| err())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let c = Ipv4Cidr::new(addr, l).ok_or_else(err)?;
        if c.addr != addr {
            // 10.99.0.1/16 is almost always a typo for 10.99.0.0/16: say so instead of guessing.
            return Err(err());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A TCP SYN 10.0.0.1 -> 10.99.0.1 (header only, 20-byte TCP header follows).
    const SYN: [u8; 20] = [
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 0, 1, 10,
        99, 0, 1,
    ];

    fn with_checksum(mut h: [u8; 20]) -> [u8; 40] {
        let c = checksum::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut b = [0u8; 40];
        b[..20].copy_from_slice(&h);
        b
    }

    #[test]
    fn parse_fixture() {
        let b = with_checksum(SYN);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.src_addr, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(r.dst_addr, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.payload_len, 20);
        assert!(r.dont_frag);
        assert!(!p.is_fragment());
    }

    #[test]
    fn emit_into_garbage_matches_fixture() {
        let b = with_checksum(SYN);
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap()).unwrap();
        let mut out = [0xa5u8; 20];
        r.emit(&mut out);
        assert_eq!(&out[..], &b[..20]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut b = with_checksum(SYN);
        assert_eq!(
            Ipv4Packet::new_checked(&b[..19]).unwrap_err(),
            Error::Truncated
        );
        b[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        b[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        b[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), Error::NotIpv4);
        b[0] = 0x45;
        b[2..4].copy_from_slice(&41u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            Error::Truncated
        );
        b[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            Error::BadTotalLen
        );
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut b = with_checksum(SYN);
        b[11] ^= 1;
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p).unwrap_err(), Error::BadChecksum);
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut b = with_checksum(SYN);
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
    }

    #[test]
    fn cidr() {
        let c: Ipv4Cidr = "10.99.0.0/16".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 99, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 98, 0, 1)));
        assert!(c.contains_cidr(&"10.99.1.0/24".parse().unwrap()));
        assert!("10.99.0.1/16".parse::<Ipv4Cidr>().is_err());
        assert!("10.99.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix_len(), 0);
        assert_eq!(
            "10.1.2.3".parse::<Ipv4Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
    }
}
