//! Tunnels: how a packet is carried to the chosen next hop (MISSION F6).
//!
//! The router decides *where* a packet goes; a [`Tunnel`] decides *how* it is wrapped. IP-in-IP
//! (RFC 2003) is the first kind; GUE or other encapsulations can be added behind the same trait.
//!
//! # Inner TTL rule
//!
//! The inner TTL is decremented exactly once per SLR hop, like any router would:
//! - on a router that captures plain packets (through a TUN device or a fast path), the kernel
//!   or the fast path has already decremented it while forwarding the packet into slr, so
//!   encapsulation leaves it alone;
//! - on a router that terminates a tunnel from its parent and re-encapsulates (an intermediate
//!   level), the core decrements it once ([`crate::router::Router`] does this on tunnelled input);
//! - a host agent that strips the last tunnel does not touch it (RFC 2003 3.1: the decapsulator
//!   forwards the inner packet unchanged to its own stack).
//!
//! A packet whose inner TTL would reach 0 is dropped and counted (`ttl_expired`). The outer TTL is
//! the tunnel's own (64 by default), so the underlay path length never eats the client's TTL.

use crate::time::Instant;
use core::net::Ipv4Addr;
use slr_wire::ipip::{self, DecapError};
use slr_wire::{Ipv4Repr, PacketBuf};

/// Default TTL of the outer header.
pub const DEFAULT_OUTER_TTL: u8 = 64;

/// A kind of tunnel.
pub trait Tunnel {
    /// Bytes this tunnel adds in front of a packet.
    fn overhead(&self) -> usize;
    /// Wraps the IPv4 packet in `buf` for the tunnel endpoint `dst`, in place (into headroom).
    fn encapsulate(
        &mut self,
        now: Instant,
        buf: &mut PacketBuf,
        dst: Ipv4Addr,
    ) -> Result<(), slr_wire::Error>;
    /// Strips the tunnel header from `buf`, leaving the inner IPv4 packet; returns the outer header.
    fn decapsulate(&self, buf: &mut PacketBuf) -> Result<Ipv4Repr, DecapError>;
}

/// IP-in-IP (RFC 2003): a 20-byte outer IPv4 header, protocol 4.
#[derive(Debug, Clone)]
pub struct IpIpTunnel {
    source: Ipv4Addr,
    ttl: u8,
    next_ident: u16,
}

impl IpIpTunnel {
    /// A tunnel whose outer headers come from `source` with TTL `ttl`.
    pub fn new(source: Ipv4Addr, ttl: u8) -> Self {
        IpIpTunnel {
            source,
            ttl,
            next_ident: 1,
        }
    }
    /// The outer source address.
    pub fn source(&self) -> Ipv4Addr {
        self.source
    }
}

impl Tunnel for IpIpTunnel {
    fn overhead(&self) -> usize {
        ipip::OVERHEAD
    }

    fn encapsulate(
        &mut self,
        _now: Instant,
        buf: &mut PacketBuf,
        dst: Ipv4Addr,
    ) -> Result<(), slr_wire::Error> {
        // A fresh IP id per outer packet: the outer header may be fragmented on the way when the
        // inner packet allows it (DF clear), and reassembly needs ids that do not repeat quickly.
        let ident = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        ipip::encapsulate(buf, self.source, dst, self.ttl, ident)
    }

    fn decapsulate(&self, buf: &mut PacketBuf) -> Result<Ipv4Repr, DecapError> {
        ipip::decapsulate(buf)
    }
}
