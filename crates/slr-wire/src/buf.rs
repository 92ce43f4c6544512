//! A packet buffer with headroom.

/// Default headroom: room for an outer IPv4 header (20 bytes) and then some, so that a packet can be
/// encapsulated more than once (at an intermediate router) without a copy.
pub const DEFAULT_HEADROOM: usize = 64;

/// Largest packet slr handles (IPv4 total length is a 16-bit field).
pub const MAX_PACKET: usize = 65535;

/// A packet in a fixed buffer, with headroom in front of it.
///
/// I/O reads a packet into [`PacketBuf::read_slot`], the core may strip headers from the front
/// ([`PacketBuf::advance`]) or prepend one ([`PacketBuf::prepend`]); the payload never moves.
#[derive(Clone)]
pub struct PacketBuf {
    storage: Box<[u8]>,
    start: usize,
    end: usize,
}

impl core::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("start", &self.start)
            .field("len", &self.len())
            .finish()
    }
}

impl PacketBuf {
    /// A buffer for packets up to `max_packet` bytes with [`DEFAULT_HEADROOM`].
    pub fn new(max_packet: usize) -> Self {
        Self::with_headroom(DEFAULT_HEADROOM, max_packet)
    }

    /// A buffer with `headroom` bytes in front of room for `max_packet` bytes.
    pub fn with_headroom(headroom: usize, max_packet: usize) -> Self {
        PacketBuf {
            storage: vec![0u8; headroom + max_packet].into_boxed_slice(),
            start: headroom,
            end: headroom,
        }
    }

    /// A buffer holding a copy of `bytes`, with default headroom (for tests and tools).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = Self::new(bytes.len());
        b.read_slot()[..bytes.len()].copy_from_slice(bytes);
        b.set_len(bytes.len());
        b
    }

    /// Empties the buffer and restores `headroom` (clamped to the storage) for the next read.
    pub fn reset(&mut self, headroom: usize) {
        self.start = headroom.min(self.storage.len());
        self.end = self.start;
    }

    /// Writable room from the current start to the end of the storage: read a packet here, then
    /// call [`PacketBuf::set_len`].
    pub fn read_slot(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..]
    }

    /// Sets the packet length after a read into [`PacketBuf::read_slot`] (clamped to the room).
    pub fn set_len(&mut self, len: usize) {
        self.end = (self.start + len).min(self.storage.len());
    }

    /// Length of the packet.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes free in front of the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Grows the packet at the front by `n` bytes and returns them, or `None` without headroom.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(&mut self.storage[self.start..self.start + n])
    }

    /// Drops `n` bytes from the front (a header that was consumed); clamped to the length.
    pub fn advance(&mut self, n: usize) {
        self.start += n.min(self.len());
    }

    /// Cuts the packet to `len` bytes (no-op if it is shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }
}

impl AsRef<[u8]> for PacketBuf {
    fn as_ref(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }
}

impl AsMut<[u8]> for PacketBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_and_advance_keep_the_payload_in_place() {
        let mut b = PacketBuf::with_headroom(20, 100);
        b.read_slot()[..3].copy_from_slice(&[1, 2, 3]);
        b.set_len(3);
        let hdr = b.prepend(20).unwrap();
        hdr.fill(9);
        assert_eq!(b.len(), 23);
        assert!(b.prepend(1).is_none());
        b.advance(20);
        assert_eq!(b.as_ref(), &[1, 2, 3]);
        b.advance(100);
        assert!(b.is_empty());
    }
}
