//! Tunnel termination at a host server (MISSION F6, F7).
//!
//! The host agent's whole decision lives here so that it is tested without I/O: accept an
//! IP-in-IP packet only from the trust domain (configured prefixes: the routers of the site and,
//! later, ingress points of the shortcut), only for a virtual subnet this host serves, and only a
//! well-formed, non-nested inner packet. Anything else is dropped and counted, never relayed:
//! an open decapsulator would let anyone inject packets "from" any source into the host.

use core::net::Ipv4Addr;
use slr_wire::ipip::{self, DecapError};
use slr_wire::ipv4::{Ipv4Cidr, Ipv4Packet, Protocol};
use slr_wire::PacketBuf;

macro_rules! reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why the terminator dropped a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TerminateDrop {
            $(#[doc = $doc] $variant,)*
        }
        impl TerminateDrop {
            /// All reasons, in counter order.
            pub const ALL: &'static [TerminateDrop] = &[$(TerminateDrop::$variant,)*];
            /// Metric label.
            pub fn as_str(self) -> &'static str {
                match self { $(TerminateDrop::$variant => $name,)* }
            }
        }
    };
}

reasons! {
    MalformedOuter => "malformed_outer", "Outer header malformed (length, checksum) or fragmented.";
    NotIpIp => "not_ipip", "Outer protocol is not 4.";
    UntrustedSource => "untrusted_source", "Outer source is outside the trust domain.";
    MalformedInner => "malformed_inner", "Inner packet malformed.";
    NestedTunnel => "nested_tunnel", "Inner packet is itself IP-in-IP.";
    NotVirtualSubnet => "not_virtual_subnet", "Inner destination is not a virtual subnet of this host.";
    TtlExpired => "ttl_expired", "Inner TTL is 0.";
}

/// Counters of a [`TunnelTerminator`].
#[derive(Debug, Clone, Default)]
pub struct TerminateCounters {
    /// Tunnel packets seen.
    pub packets_in: u64,
    /// Inner packets delivered.
    pub packets_delivered: u64,
    /// Inner bytes delivered.
    pub bytes_delivered: u64,
    /// Drops, indexed like [`TerminateDrop::ALL`].
    pub drops: Vec<u64>,
    /// Packets delivered per virtual subnet, indexed like the configured subnets.
    pub per_subnet_packets: Vec<u64>,
}

impl TerminateCounters {
    /// Drops for one reason.
    pub fn drops(&self, r: TerminateDrop) -> u64 {
        self.drops[r as usize]
    }
}

/// Decides which tunnelled packets a host accepts.
#[derive(Debug, Clone)]
pub struct TunnelTerminator {
    trusted: Vec<Ipv4Cidr>,
    virtual_subnets: Vec<Ipv4Cidr>,
    counters: TerminateCounters,
}

impl TunnelTerminator {
    /// A terminator for tunnels from `trusted` prefixes carrying packets for `virtual_subnets`.
    pub fn new(trusted: Vec<Ipv4Cidr>, virtual_subnets: Vec<Ipv4Cidr>) -> Self {
        let counters = TerminateCounters {
            drops: vec![0; TerminateDrop::ALL.len()],
            per_subnet_packets: vec![0; virtual_subnets.len()],
            ..Default::default()
        };
        TunnelTerminator {
            trusted,
            virtual_subnets,
            counters,
        }
    }

    /// Trusted prefixes.
    pub fn trusted(&self) -> &[Ipv4Cidr] {
        &self.trusted
    }
    /// Virtual subnets served.
    pub fn virtual_subnets(&self) -> &[Ipv4Cidr] {
        &self.virtual_subnets
    }
    /// Counters.
    pub fn counters(&self) -> &TerminateCounters {
        &self.counters
    }

    /// Strips the tunnel from `buf` if the packet is acceptable, leaving the inner packet to be
    /// delivered to the local stack unchanged; returns the outer source.
    pub fn handle_packet(&mut self, buf: &mut PacketBuf) -> Result<Ipv4Addr, TerminateDrop> {
        self.counters.packets_in += 1;
        let r = self.check(buf);
        match r {
            Ok(_) => {
                self.counters.packets_delivered += 1;
                self.counters.bytes_delivered += buf.len() as u64;
            }
            Err(reason) => self.counters.drops[reason as usize] += 1,
        }
        r
    }

    fn check(&mut self, buf: &mut PacketBuf) -> Result<Ipv4Addr, TerminateDrop> {
        // Trust is decided on the outer source before anything of the inner packet is read.
        let src = {
            let p =
                Ipv4Packet::new_checked(buf.as_ref()).map_err(|_| TerminateDrop::MalformedOuter)?;
            p.src_addr()
        };
        if !self.trusted.iter().any(|t| t.contains(src)) {
            return Err(TerminateDrop::UntrustedSource);
        }
        ipip::decapsulate(buf).map_err(|e| match e {
            DecapError::NotIpIp => TerminateDrop::NotIpIp,
            DecapError::Outer(_) | DecapError::Fragment => TerminateDrop::MalformedOuter,
            DecapError::Inner(_) => TerminateDrop::MalformedInner,
        })?;
        let inner = Ipv4Packet::new_unchecked(buf.as_ref());
        if inner.protocol() == Protocol::IpIp {
            return Err(TerminateDrop::NestedTunnel);
        }
        if inner.ttl() == 0 {
            return Err(TerminateDrop::TtlExpired);
        }
        let dst = inner.dst_addr();
        let i = self
            .virtual_subnets
            .iter()
            .position(|s| s.contains(dst))
            .ok_or(TerminateDrop::NotVirtualSubnet)?;
        self.counters.per_subnet_packets[i] += 1;
        Ok(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slr_wire::ipv4::Ipv4Repr;

    fn inner(dst: Ipv4Addr, protocol: Protocol) -> Vec<u8> {
        let mut v = vec![0u8; 28];
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 200, 1, 2),
            dst_addr: dst,
            protocol,
            payload_len: 8,
            ttl: 63,
            tos: 0,
            ident: 1,
            dont_frag: false,
        }
        .emit(&mut v);
        v
    }

    fn tunnel(outer_src: Ipv4Addr, inner: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::from_slice(inner);
        ipip::encapsulate(&mut b, outer_src, Ipv4Addr::new(10, 200, 3, 2), 64, 9).unwrap();
        b
    }

    fn terminator() -> TunnelTerminator {
        TunnelTerminator::new(
            vec!["10.200.2.2/32".parse().unwrap()],
            vec!["10.99.0.0/24".parse().unwrap()],
        )
    }

    #[test]
    fn accepts_trusted_tunnel_for_virtual_subnet() {
        let mut t = terminator();
        let i = inner(Ipv4Addr::new(10, 99, 0, 1), Protocol::Udp);
        let mut b = tunnel(Ipv4Addr::new(10, 200, 2, 2), &i);
        assert_eq!(t.handle_packet(&mut b), Ok(Ipv4Addr::new(10, 200, 2, 2)));
        assert_eq!(b.as_ref(), &i[..]);
        assert_eq!(t.counters().per_subnet_packets, vec![1]);
    }

    #[test]
    fn refuses_spoofed_nested_and_foreign() {
        let mut t = terminator();
        let i = inner(Ipv4Addr::new(10, 99, 0, 1), Protocol::Udp);
        let mut b = tunnel(Ipv4Addr::new(10, 200, 9, 9), &i);
        assert_eq!(t.handle_packet(&mut b), Err(TerminateDrop::UntrustedSource));
        let mut b = tunnel(
            Ipv4Addr::new(10, 200, 2, 2),
            &inner(Ipv4Addr::new(10, 98, 0, 1), Protocol::Udp),
        );
        assert_eq!(
            t.handle_packet(&mut b),
            Err(TerminateDrop::NotVirtualSubnet)
        );
        let mut b = tunnel(
            Ipv4Addr::new(10, 200, 2, 2),
            &inner(Ipv4Addr::new(10, 99, 0, 1), Protocol::IpIp),
        );
        assert_eq!(t.handle_packet(&mut b), Err(TerminateDrop::NestedTunnel));
        // Cut short after its header (total length 28, 24 bytes present): `encapsulate` itself
        // refuses anything shorter than an IPv4 header, so the inner header must be there.
        let mut b = tunnel(Ipv4Addr::new(10, 200, 2, 2), &i[..24]);
        assert_eq!(t.handle_packet(&mut b), Err(TerminateDrop::MalformedInner));
        let mut b = PacketBuf::from_slice(&i);
        assert_eq!(t.handle_packet(&mut b), Err(TerminateDrop::UntrustedSource));
        assert_eq!(t.counters().drops(TerminateDrop::UntrustedSource), 2);
        assert_eq!(t.counters().packets_delivered, 0);
    }
}
