//! UDP headers (RFC 768).

use crate::{Error, Result};

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;

/// A read view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps a whole (unfragmented) datagram: the length field must lie in `8..=buffer.len()`.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let d = p.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = p.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::BadTransportLen);
        }
        if l > d.len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[0], d[1]])
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[2], d[3]])
    }
    /// Length field (header and payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[4], d[5]])
    }
    /// Payload (up to the length field).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        let d = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x0a, 0, 0, 0xab, 0xcd];
        let p = UdpPacket::new_checked(&d[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.payload()),
            (40000, 53, &[0xab, 0xcd][..])
        );
        let mut bad = d;
        bad[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&bad[..]).unwrap_err(),
            Error::BadTransportLen
        );
        bad[5] = 11;
        assert_eq!(
            UdpPacket::new_checked(&bad[..]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&d[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
