//! Wire formats for slr.
//!
//! This crate is the byte layer under the routing core (`slr-core`): IPv4, TCP, UDP and ICMP
//! headers, IP-in-IP encapsulation (RFC 2003) and the [`PacketBuf`] that carries a packet with
//! headroom in front of it, so that an outer header can be written without copying the payload.
//!
//! Every format follows the same shape (after smoltcp's `wire` module):
//! - a *view* `XxxPacket<T: AsRef<[u8]>>` over the bytes, made with `new_checked` (validates every
//!   length the accessors rely on, after which no accessor can panic) or `new_unchecked`;
//! - a parsed *representation* `XxxRepr` with `parse`, `buffer_len` and `emit`.
//!
//! Nothing here allocates on the packet path and nothing panics on untrusted input: every parser
//! returns a typed [`Error`].

pub mod buf;
pub mod checksum;
pub mod icmp;
pub mod ipip;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use buf::PacketBuf;
pub use icmp::{IcmpPacket, IcmpRepr};
pub use ipv4::{Ipv4Cidr, Ipv4Packet, Ipv4Repr, Protocol};
pub use tcp::{TcpFlags, TcpPacket};
pub use udp::UdpPacket;

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header (or the length a header field claims).
    #[error("truncated packet")]
    Truncated,
    /// The IP version field is not 4.
    #[error("not an IPv4 packet")]
    NotIpv4,
    /// The IPv4 header length (IHL) is below 5 words or beyond the buffer.
    #[error("bad IPv4 header length")]
    BadHeaderLen,
    /// The IPv4 total length is shorter than the header or longer than the buffer.
    #[error("bad IPv4 total length")]
    BadTotalLen,
    /// A transport length field is inconsistent (TCP data offset, UDP length).
    #[error("bad transport header length")]
    BadTransportLen,
    /// A header checksum does not verify.
    #[error("bad checksum")]
    BadChecksum,
    /// The headroom of a [`PacketBuf`] is too small for the header to prepend.
    #[error("no headroom for the outer header")]
    NoHeadroom,
}

/// Result of parsing.
pub type Result<T> = core::result::Result<T, Error>;
