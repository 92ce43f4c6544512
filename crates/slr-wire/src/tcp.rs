//! TCP headers (RFC 9293): only what a layer-4 router reads or rewrites.

use crate::{checksum, Error, Result};

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// TCP flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// FIN set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// SYN set.
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// RST set.
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// ACK set.
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after checking that the header, with its options, fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let d = p.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = p.header_len() as usize;
        if hl < HEADER_LEN {
            return Err(Error::BadTransportLen);
        }
        if hl > d.len() {
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
    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[4], d[5], d[6], d[7]])
    }
    /// Header length in bytes (data offset x 4).
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[12] >> 4) * 4
    }
    /// Flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[13])
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[16], d[17]])
    }
    /// The options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }
    /// The MSS option, if present and well formed.
    pub fn mss(&self) -> Option<u16> {
        find_mss(self.options()).map(|i| {
            let o = self.options();
            u16::from_be_bytes([o[i + 2], o[i + 3]])
        })
    }
}

/// Offset of a well-formed MSS option (kind 2, length 4) within `opts`.
fn find_mss(opts: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = *opts.get(i + 1)? as usize;
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return Some(i);
                }
                i += len;
            }
        }
    }
    None
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Lowers the MSS option to `max` if it is larger, updating the checksum incrementally.
    /// Returns whether the segment changed.
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        let Some(i) = find_mss(self.options()) else {
            return false;
        };
        let at = HEADER_LEN + i + 2;
        let d = self.buffer.as_mut();
        let old = u16::from_be_bytes([d[at], d[at + 1]]);
        if old <= max {
            return false;
        }
        d[at..at + 2].copy_from_slice(&max.to_be_bytes());
        let c = u16::from_be_bytes([d[16], d[17]]);
        // The MSS field sits at an even offset within the segment, so it is one checksum word.
        let c = if at.is_multiple_of(2) {
            checksum::update16(c, old, max)
        } else {
            // Odd alignment (after a NOP): the two bytes straddle two words; recompute both.
            let (o0, o1) = ((old >> 8) as u8, old as u8);
            let (n0, n1) = ((max >> 8) as u8, max as u8);
            let w0o = u16::from_be_bytes([d[at - 1], o0]);
            let w0n = u16::from_be_bytes([d[at - 1], n0]);
            let nxt = d.get(at + 2).copied().unwrap_or(0);
            let w1o = u16::from_be_bytes([o1, nxt]);
            let w1n = u16::from_be_bytes([n1, nxt]);
            checksum::update16(checksum::update16(c, w0o, w0n), w1o, w1n)
        };
        d[16..18].copy_from_slice(&c.to_be_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{finish, pseudo_header, sum};

    fn syn_with_mss(mss: u16, nop_first: bool) -> Vec<u8> {
        let mut s = vec![0u8; 28];
        s[0..2].copy_from_slice(&40000u16.to_be_bytes());
        s[2..4].copy_from_slice(&80u16.to_be_bytes());
        s[12] = 7 << 4;
        s[13] = TcpFlags::SYN;
        if nop_first {
            s[20] = 1;
            s[21..25].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            s[25..28].copy_from_slice(&[1, 1, 0]);
        } else {
            s[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            s[24..28].copy_from_slice(&[1, 1, 1, 0]);
        }
        let ph = pseudo_header([10, 0, 0, 1], [10, 99, 0, 1], 6, s.len() as u16);
        let c = finish(sum(ph, &s));
        s[16..18].copy_from_slice(&c.to_be_bytes());
        s
    }

    fn verifies(s: &[u8]) -> bool {
        let ph = pseudo_header([10, 0, 0, 1], [10, 99, 0, 1], 6, s.len() as u16);
        finish(sum(ph, s)) == 0
    }

    #[test]
    fn clamp_mss_both_alignments() {
        for nop in [false, true] {
            let mut s = syn_with_mss(1460, nop);
            assert!(verifies(&s));
            let mut p = TcpPacket::new_checked(&mut s[..]).unwrap();
            assert_eq!(p.mss(), Some(1460));
            assert!(p.clamp_mss(1400));
            assert_eq!(p.mss(), Some(1400));
            assert!(!p.clamp_mss(1440));
            assert!(verifies(&s), "nop_first={nop}");
        }
    }

    #[test]
    fn rejects_bad_offsets() {
        let mut s = syn_with_mss(1460, false);
        s[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&s[..]).unwrap_err(),
            Error::BadTransportLen
        );
        s[12] = 15 << 4;
        assert_eq!(
            TcpPacket::new_checked(&s[..]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            TcpPacket::new_checked(&s[..10]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn malformed_options_do_not_loop_or_panic() {
        assert_eq!(find_mss(&[3, 0, 2, 4]), None);
        assert_eq!(find_mss(&[2, 4, 5]), None);
        assert_eq!(find_mss(&[1, 1, 2, 4, 1, 2]), Some(2));
        assert_eq!(find_mss(&[8, 200]), None);
    }
}
