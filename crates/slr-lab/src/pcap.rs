//! Just enough of the pcap file format to count the demo's packets: the IPv4 addresses,
//! protocol and ports of each captured packet, and those of the inner packet of an
//! IP-in-IP tunnel. Reading it ourselves (rather than `tcpdump -r` with filters) keeps
//! the counting exact and testable.

use anyhow::{bail, Context, Result};
use slr_wire::{Ipv4Packet, TcpPacket, UdpPacket};
use std::net::Ipv4Addr;
use std::path::Path;

/// The IPv4 header fields the demo looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number (4 = IP-in-IP, 6 = TCP, 17 = UDP).
    pub protocol: u8,
    /// Source port of TCP/UDP (first fragment only).
    pub src_port: Option<u16>,
}

/// One captured IPv4 packet, with its tunnelled inner packet if it is IP-in-IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The outer (or only) header.
    pub outer: Ipv4Info,
    /// The inner header of an IP-in-IP packet.
    pub inner: Option<Ipv4Info>,
}

/// Link types we can find an IPv4 header in.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// The IPv4 header (slr-wire's view) and, for an unfragmented or first fragment, the TCP
/// or UDP source port; with the payload for the inner packet of a tunnel.
fn parse_ipv4(b: &[u8]) -> Option<(Ipv4Info, &[u8])> {
    let ip = Ipv4Packet::new_checked(b).ok()?;
    let payload = &b[usize::from(ip.header_len())..usize::from(ip.total_len())];
    let protocol = u8::from(ip.protocol());
    let src_port = if ip.frag_offset() != 0 {
        None
    } else if protocol == 6 {
        TcpPacket::new_checked(payload).ok().map(|t| t.src_port())
    } else if protocol == 17 {
        UdpPacket::new_checked(payload).ok().map(|u| u.src_port())
    } else {
        None
    };
    Some((
        Ipv4Info {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            protocol,
            src_port,
        },
        payload,
    ))
}

fn parse_packet(linktype: u32, frame: &[u8]) -> Option<Packet> {
    let ip = match linktype {
        LINKTYPE_ETHERNET => {
            let mut off = 12;
            let mut ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
            // Skip VLAN tags.
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4;
                ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
            }
            if ethertype != 0x0800 {
                return None;
            }
            frame.get(off + 2..)?
        }
        LINKTYPE_LINUX_SLL => {
            if u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]) != 0x0800 {
                return None;
            }
            frame.get(16..)?
        }
        LINKTYPE_LINUX_SLL2 => {
            if u16::from_be_bytes([*frame.first()?, *frame.get(1)?]) != 0x0800 {
                return None;
            }
            frame.get(20..)?
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 => frame,
        _ => return None,
    };
    let (outer, payload) = parse_ipv4(ip)?;
    let inner = if outer.protocol == 4 {
        parse_ipv4(payload).map(|(i, _)| i)
    } else {
        None
    };
    Some(Packet { outer, inner })
}

/// Reads the IPv4 packets of a classic pcap file (either byte order, µs or ns stamps);
/// frames without an IPv4 header (ARP, IPv6) are skipped. A record cut short by a
/// capture that was stopped mid-write ends the list without an error.
pub fn read_ipv4(path: &Path) -> Result<Vec<Packet>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_file(&bytes).with_context(|| format!("{}: not a pcap file", path.display()))
}

fn parse_file(bytes: &[u8]) -> Result<Vec<Packet>> {
    if bytes.len() < 24 {
        bail!("shorter than a pcap header ({} bytes)", bytes.len());
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("unknown magic {magic:#010x}"),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    // The low 16 bits are the link type; the high bits may carry FCS flags.
    let linktype = u32_at(bytes, 20) & 0xffff;
    let mut packets = Vec::new();
    let mut off = 24;
    let mut frame = Vec::new();
    while off + 16 <= bytes.len() {
        let caplen = u32_at(bytes, off + 8) as usize;
        let orig_len = u32_at(bytes, off + 12) as usize;
        let start = off + 16;
        let Some(captured) = bytes.get(start..start + caplen) else {
            break;
        };
        // The demo captures the first 160 bytes of each packet (`tcpdump -s 160`): what the
        // snap length cut off reads as zeros, so that the headers, which are all within it,
        // parse as the whole packet they came from.
        frame.clear();
        frame.extend_from_slice(captured);
        frame.resize(orig_len.clamp(caplen, caplen + 65_536), 0);
        if let Some(p) = parse_packet(linktype, &frame) {
            packets.push(p);
        }
        off = start + caplen;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
        let len = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    /// A TCP header (SYN, data offset 5) with these ports.
    fn tcp(src: u16, dst: u16) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[..2].copy_from_slice(&src.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = 0x02;
        h
    }

    /// A UDP header with these ports and 4 bytes of data.
    fn udp(src: u16, dst: u16) -> Vec<u8> {
        let mut h = vec![0u8; 12];
        h[..2].copy_from_slice(&src.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h[4..6].copy_from_slice(&12u16.to_be_bytes());
        h
    }

    fn ether(ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0xaa; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(ip);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 4, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn reads_plain_tunnelled_and_skips_other_frames() {
        let reply = ipv4([10, 99, 0, 1], [10, 200, 1, 2], 6, &tcp(80, 40000));
        let inner = ipv4([10, 200, 1, 2], [10, 99, 0, 1], 17, &udp(40000, 7));
        let tunnelled = ipv4([10, 200, 2, 2], [10, 200, 3, 2], 4, &inner);
        let mut arp = vec![0xaa; 12];
        arp.extend_from_slice(&[0x08, 0x06, 1, 2, 3]);
        let mut file = pcap(&[ether(&reply), arp, ether(&tunnelled)]);
        file.extend_from_slice(&[1, 2, 3]); // a torn last record
        let packets = parse_file(&file).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].outer.src, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(packets[0].outer.src_port, Some(80));
        assert_eq!(packets[0].inner, None);
        assert_eq!(packets[1].outer.protocol, 4);
        let i = packets[1].inner.unwrap();
        assert_eq!(
            (i.src, i.dst),
            (Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(10, 99, 0, 1))
        );
        assert_eq!(i.src_port, Some(40000));
    }

    #[test]
    fn packets_cut_at_the_snap_length_still_parse() {
        let mut body = tcp(80, 40000);
        body.extend_from_slice(&[7u8; 1400]);
        let frame = ether(&ipv4([10, 99, 0, 1], [10, 200, 1, 2], 6, &body));
        let mut file = pcap(&[]);
        // One record of which only the first 160 bytes were captured.
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&160u32.to_le_bytes());
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&frame[..160]);
        let packets = parse_file(&file).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].outer.src_port, Some(80));
    }

    #[test]
    fn rejects_non_pcap() {
        assert!(parse_file(&[0u8; 40]).is_err());
        assert!(parse_file(b"short").is_err());
    }
}
