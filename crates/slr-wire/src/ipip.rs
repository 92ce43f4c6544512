//! IP-in-IP encapsulation (RFC 2003).
//!
//! Encapsulation writes a 20-byte outer header into the headroom of a [`PacketBuf`] in front of
//! the untouched inner packet. The outer header copies the inner TOS and DF bit (RFC 2003 3.1);
//! its TTL is the tunnel's own. The inner TTL rule lives with the caller (see `slr-core`).

use crate::buf::PacketBuf;
use crate::ipv4::{self, Ipv4Packet, Ipv4Repr, Protocol};
use crate::{Error, Result};
use core::net::Ipv4Addr;

/// Bytes one level of IP-in-IP adds.
pub const OVERHEAD: usize = ipv4::HEADER_LEN;

/// Prepends an outer header `src -> dst` to the IPv4 packet in `buf`.
///
/// The inner packet must already be a checked IPv4 packet. `ident` fills the outer IP id (callers
/// vary it for entropy and fragment reassembly).
pub fn encapsulate(
    buf: &mut PacketBuf,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    ident: u16,
) -> Result<()> {
    let inner_len = buf.len();
    if inner_len + OVERHEAD > u16::MAX as usize {
        return Err(Error::BadTotalLen);
    }
    let (tos, dont_frag) = {
        let inner = Ipv4Packet::new_unchecked(buf.as_ref());
        if inner_len < ipv4::HEADER_LEN {
            return Err(Error::Truncated);
        }
        (inner.tos(), inner.dont_frag())
    };
    let hdr = buf.prepend(OVERHEAD).ok_or(Error::NoHeadroom)?;
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: Protocol::IpIp,
        payload_len: inner_len,
        ttl,
        tos,
        ident,
        dont_frag,
    }
    .emit(hdr);
    Ok(())
}

/// Why a packet could not be decapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// The outer header is malformed.
    #[error("outer header: {0}")]
    Outer(Error),
    /// The outer header is not protocol 4.
    #[error("not an IP-in-IP packet")]
    NotIpIp,
    /// The outer packet is a fragment (reassemble before decapsulating).
    #[error("outer packet is a fragment")]
    Fragment,
    /// The inner packet is malformed.
    #[error("inner packet: {0}")]
    Inner(Error),
}

/// Strips the outer IP-in-IP header from `buf`, leaving exactly the inner packet, and returns the
/// parsed outer header.
///
/// Checks the outer header (lengths, checksum, protocol 4, not a fragment) and that the inner
/// packet is a well-formed IPv4 packet; link padding after the outer total length is dropped.
pub fn decapsulate(buf: &mut PacketBuf) -> core::result::Result<Ipv4Repr, DecapError> {
    let (outer, hl, tl) = {
        let p = Ipv4Packet::new_checked(buf.as_ref()).map_err(DecapError::Outer)?;
        let r = Ipv4Repr::parse(&p).map_err(DecapError::Outer)?;
        if r.protocol != Protocol::IpIp {
            return Err(DecapError::NotIpIp);
        }
        if p.is_fragment() {
            return Err(DecapError::Fragment);
        }
        (r, p.header_len() as usize, p.total_len() as usize)
    };
    buf.truncate(tl);
    buf.advance(hl);
    let inner = Ipv4Packet::new_checked(buf.as_ref()).map_err(DecapError::Inner)?;
    if !inner.verify_checksum() {
        return Err(DecapError::Inner(Error::BadChecksum));
    }
    let itl = inner.total_len() as usize;
    buf.truncate(itl);
    Ok(outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Vec<u8> {
        let mut v = vec![0x5au8; 60];
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 99, 0, 1),
            protocol: Protocol::Udp,
            payload_len: 40,
            ttl: 63,
            tos: 0x28,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut v);
        v
    }

    #[test]
    fn round_trip_does_not_move_the_payload() {
        let i = inner();
        let mut b = PacketBuf::from_slice(&i);
        let before = b.as_ref().as_ptr();
        encapsulate(
            &mut b,
            Ipv4Addr::new(10, 200, 0, 2),
            Ipv4Addr::new(10, 200, 1, 2),
            64,
            3,
        )
        .unwrap();
        assert_eq!(b.len(), 80);
        assert_eq!(unsafe_free_offset(&b, before), 20);
        let o = Ipv4Packet::new_checked(b.as_ref()).unwrap();
        let r = Ipv4Repr::parse(&o).unwrap();
        assert_eq!(
            (r.protocol, r.tos, r.dont_frag, r.payload_len),
            (Protocol::IpIp, 0x28, true, 60)
        );
        let outer = decapsulate(&mut b).unwrap();
        assert_eq!(outer.src_addr, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(b.as_ref(), &i[..]);
    }

    fn unsafe_free_offset(b: &PacketBuf, inner_start: *const u8) -> usize {
        inner_start as usize - b.as_ref().as_ptr() as usize
    }

    #[test]
    fn decap_rejects() {
        let i = inner();
        let mut b = PacketBuf::from_slice(&i);
        assert_eq!(decapsulate(&mut b).unwrap_err(), DecapError::NotIpIp);
        let mut b = PacketBuf::from_slice(&i[..30]);
        encapsulate(&mut b, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 64, 0).unwrap();
        assert_eq!(
            decapsulate(&mut b).unwrap_err(),
            DecapError::Inner(Error::Truncated)
        );
        let mut b = PacketBuf::with_headroom(0, 100);
        b.set_len(60);
        assert_eq!(
            encapsulate(&mut b, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 64, 0).unwrap_err(),
            Error::NoHeadroom
        );
    }
}
