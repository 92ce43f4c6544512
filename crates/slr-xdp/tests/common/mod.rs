//! Frame builders the slr-xdp tests share.
#![allow(dead_code)]

use slr_wire::checksum;

/// An IPv4 packet to build, fields as on the wire (options and payload verbatim).
#[derive(Default, Clone)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub df: bool,
    pub mf: bool,
    pub offset: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Ip {
    pub fn bytes(&self) -> Vec<u8> {
        let hl = 20 + self.options.len();
        let mut v = vec![0u8; hl + self.payload.len()];
        v[0] = 0x40 | (hl / 4) as u8;
        v[1] = self.tos;
        let total = v.len() as u16;
        v[2..4].copy_from_slice(&total.to_be_bytes());
        v[4..6].copy_from_slice(&self.ident.to_be_bytes());
        let flags = (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | (self.offset / 8);
        v[6..8].copy_from_slice(&flags.to_be_bytes());
        v[8] = self.ttl;
        v[9] = self.proto;
        v[12..16].copy_from_slice(&self.src);
        v[16..20].copy_from_slice(&self.dst);
        v[20..hl].copy_from_slice(&self.options);
        let c = checksum::checksum(&v[..hl]);
        v[10..12].copy_from_slice(&c.to_be_bytes());
        v[hl..].copy_from_slice(&self.payload);
        v
    }
}

/// A TCP (with `flags`) or UDP header with `data`, checksummed.
pub fn l4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut v = if proto == 6 {
        vec![0u8; 20]
    } else {
        vec![0u8; 8]
    };
    v[0..2].copy_from_slice(&sport.to_be_bytes());
    v[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        v[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
        v[12] = 5 << 4;
        v[13] = flags;
        v[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    } else {
        v[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    }
    v.extend_from_slice(data);
    let at = if proto == 6 { 16 } else { 6 };
    let acc = checksum::pseudo_header(src, dst, proto, v.len() as u16);
    let c = checksum::finish(checksum::sum(acc, &v));
    v[at..at + 2].copy_from_slice(&c.to_be_bytes());
    v
}

/// An Ethernet frame around `ip`.
pub fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}
