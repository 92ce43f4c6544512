//! ICMP for IPv4 (RFC 792): reading errors that quote a packet, and emitting
//! fragmentation-needed (RFC 1191) and time-exceeded errors.

use crate::ipv4::{self, Ipv4Packet, Ipv4Repr, Protocol};
use crate::{checksum, Error, Result};
use core::net::Ipv4Addr;

/// Length of the ICMP header (type, code, checksum, rest-of-header).
pub const HEADER_LEN: usize = 8;

/// Most bytes an ICMP error datagram may have (RFC 1812 4.3.2.3).
pub const MAX_ERROR_DATAGRAM: usize = 576;

/// ICMP type: echo reply.
pub const ECHO_REPLY: u8 = 0;
/// ICMP type: destination unreachable.
pub const DST_UNREACHABLE: u8 = 3;
/// ICMP type: source quench (deprecated, still an error).
pub const SOURCE_QUENCH: u8 = 4;
/// ICMP type: redirect.
pub const REDIRECT: u8 = 5;
/// ICMP type: echo request.
pub const ECHO_REQUEST: u8 = 8;
/// ICMP type: time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// ICMP type: parameter problem.
pub const PARAM_PROBLEM: u8 = 12;
/// Destination-unreachable code: fragmentation needed and DF set.
pub const CODE_FRAG_NEEDED: u8 = 4;

/// A read view of an ICMP message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }
    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }
    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// The 4 bytes after the checksum (the next-hop MTU lives in the low half for frag-needed).
    pub fn rest_of_header(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[4], d[5], d[6], d[7]])
    }
    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
    /// Whether this message is an error that quotes the packet that caused it.
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            DST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAM_PROBLEM
        )
    }
    /// The data after the header: for errors, the quoted packet.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The flow an ICMP error refers to, read from the packet it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedFlow {
    /// Source of the quoted packet.
    pub src_addr: Ipv4Addr,
    /// Destination of the quoted packet.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the quoted packet.
    pub protocol: Protocol,
    /// Source port (0 for protocols without ports).
    pub src_port: u16,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
}

/// Reads the flow from a quoted packet.
///
/// Quoted packets are usually cut short (RFC 792 quotes the IP header plus 8 bytes), so the total
/// length field is not checked against the buffer: only that the IP header and, for TCP and UDP,
/// the 4 port bytes are present.
pub fn quoted_flow(quoted: &[u8]) -> Result<QuotedFlow> {
    if quoted.len() < ipv4::HEADER_LEN {
        return Err(Error::Truncated);
    }
    let p = Ipv4Packet::new_unchecked(quoted);
    if p.version() != 4 {
        return Err(Error::NotIpv4);
    }
    let hl = p.header_len() as usize;
    if hl < ipv4::HEADER_LEN || hl > quoted.len() {
        return Err(Error::BadHeaderLen);
    }
    let protocol = p.protocol();
    let (src_port, dst_port) = match protocol {
        Protocol::Tcp | Protocol::Udp if p.frag_offset() == 0 => {
            let t = quoted.get(hl..hl + 4).ok_or(Error::Truncated)?;
            (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
            )
        }
        _ => (0, 0),
    };
    Ok(QuotedFlow {
        src_addr: p.src_addr(),
        dst_addr: p.dst_addr(),
        protocol,
        src_port,
        dst_port,
    })
}

/// An ICMP error slr emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr {
    /// Destination unreachable, fragmentation needed, with the next-hop MTU (RFC 1191).
    FragNeeded {
        /// The MTU the packet must fit.
        mtu: u16,
    },
    /// Time exceeded in transit (TTL reached 0).
    TimeExceeded,
}

impl IcmpRepr {
    fn type_code_rest(&self) -> (u8, u8, u32) {
        match *self {
            IcmpRepr::FragNeeded { mtu } => (DST_UNREACHABLE, CODE_FRAG_NEEDED, mtu as u32),
            IcmpRepr::TimeExceeded => (TIME_EXCEEDED, 0, 0),
        }
    }

    /// How many bytes of `original` the error quotes: as much as fits in a 576-byte datagram.
    pub fn quote_len(original: &[u8]) -> usize {
        original
            .len()
            .min(MAX_ERROR_DATAGRAM - ipv4::HEADER_LEN - HEADER_LEN)
    }

    /// Length of the whole IPv4 datagram [`IcmpRepr::emit_datagram`] writes for `original`.
    pub fn datagram_len(original: &[u8]) -> usize {
        ipv4::HEADER_LEN + HEADER_LEN + Self::quote_len(original)
    }

    /// Writes a complete IPv4 datagram carrying this error about `original` into `out`, from `src`
    /// back to the original's source; returns its length.
    ///
    /// The IP header has DF clear and fragment offset 0, TTL 64; the ICMP checksum covers the
    /// message. `out` must hold [`IcmpRepr::datagram_len`] bytes and `original` must be a checked
    /// IPv4 packet (at least its 20-byte header).
    pub fn emit_datagram(
        &self,
        src: Ipv4Addr,
        original: &[u8],
        ident: u16,
        out: &mut [u8],
    ) -> usize {
        let q = Self::quote_len(original);
        let icmp_len = HEADER_LEN + q;
        let orig = Ipv4Packet::new_unchecked(original);
        Ipv4Repr {
            src_addr: src,
            dst_addr: orig.src_addr(),
            protocol: Protocol::Icmp,
            payload_len: icmp_len,
            ttl: 64,
            tos: 0xc0, // internetwork control, as routers send errors
            ident,
            dont_frag: false,
        }
        .emit(out);
        let m = &mut out[ipv4::HEADER_LEN..ipv4::HEADER_LEN + icmp_len];
        let (t, c, rest) = self.type_code_rest();
        m[0] = t;
        m[1] = c;
        m[2] = 0;
        m[3] = 0;
        m[4..8].copy_from_slice(&rest.to_be_bytes());
        m[8..].copy_from_slice(&original[..q]);
        let ck = checksum::checksum(m);
        m[2..4].copy_from_slice(&ck.to_be_bytes());
        ipv4::HEADER_LEN + icmp_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(len: usize) -> Vec<u8> {
        let mut v = vec![0x77u8; len];
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 99, 0, 1),
            protocol: Protocol::Tcp,
            payload_len: len - 20,
            ttl: 63,
            tos: 0,
            ident: 7,
            dont_frag: true,
        }
        .emit(&mut v);
        v[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        v
    }

    #[test]
    fn frag_needed_is_well_formed() {
        let o = original(1500);
        let mut out = vec![0xa5u8; 1600];
        let n = IcmpRepr::FragNeeded { mtu: 1480 }.emit_datagram(
            Ipv4Addr::new(10, 200, 0, 1),
            &o,
            9,
            &mut out,
        );
        assert_eq!(n, 576);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let r = Ipv4Repr::parse(&ip).unwrap();
        assert_eq!(r.dst_addr, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip.frag_offset(), 0);
        assert!(!ip.dont_frag() && !ip.more_frags());
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            (icmp.msg_type(), icmp.code()),
            (DST_UNREACHABLE, CODE_FRAG_NEEDED)
        );
        assert_eq!(icmp.rest_of_header() & 0xffff, 1480);
        let f = quoted_flow(icmp.data()).unwrap();
        assert_eq!((f.src_port, f.dst_port), (40000, 80));
    }

    #[test]
    fn quote_of_header_plus_8_bytes_is_accepted() {
        let o = original(1000);
        let f = quoted_flow(&o[..28]).unwrap();
        assert_eq!(f.dst_addr, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(f.src_port, 40000);
        assert_eq!(quoted_flow(&o[..23]).unwrap_err(), Error::Truncated);
        assert_eq!(quoted_flow(&o[..19]).unwrap_err(), Error::Truncated);
    }
}
