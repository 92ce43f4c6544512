//! Packet I/O for slr (placeholder, being written).
