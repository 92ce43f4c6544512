//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Adds `data` into a running 32-bit one's-complement sum.
#[inline]
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        // Fold early and often so that no input length can overflow.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits and complements it.
#[inline]
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The pseudo-header sum for TCP/UDP over IPv4.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u32 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc + protocol as u32 + len as u32
}

/// Updates checksum `old_check` for a 16-bit field changing from `old` to `new` (RFC 1624 eq. 3).
#[inline]
pub fn update16(old_check: u16, old: u16, new: u16) -> u16 {
    let acc = (!old_check as u32) + (!old as u32) + new as u32;
    finish(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn incremental_matches_full() {
        let mut d = [
            0x45u8, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 99, 0, 1,
        ];
        let c = checksum(&d);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&d), 0);
        // TTL 64 -> 63: the 16-bit word at offset 8 is (ttl, protocol).
        let old = u16::from_be_bytes([d[8], d[9]]);
        d[8] = 63;
        let new = u16::from_be_bytes([d[8], d[9]]);
        let c2 = update16(c, old, new);
        d[10..12].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(checksum(&d), 0);
    }
}
