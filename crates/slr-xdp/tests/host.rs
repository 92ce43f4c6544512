//! The XDP host program against the host agent's terminator, frame by frame: for generated
//! IP-in-IP frames of every kind the agent tells apart (delivered; untrusted, malformed outer or
//! inner, nested, TTL 0, not a virtual subnet) plus the kinds the program leaves to the agent
//! (outer options or fragments, inner options) and frames that are no tunnel at all,
//! `slr_host` run through `BPF_PROG_TEST_RUN` and `slr_core::terminate::TunnelTerminator` must
//! agree:
//!
//! - a frame the program delivers is one the terminator accepts, and what goes up the stack is
//!   the terminator's inner packet byte for byte, behind the frame's own Ethernet addresses;
//! - a frame the program drops is one the terminator drops, for the reason of the same name;
//! - a frame the program passes to the agent is untouched.
//!
//! Every frame also goes through `slr_host_tc` (the same work at tc ingress): the same reason
//! counted, the same verdict in tc's terms, and the same inner packet up the stack (followed by
//! the frame's padding, if any, which the stack trims by the inner packet's length).
//!
//! Needs root (BPF); fails, not skips, without it.

mod common;

use common::{ether, l4, Ip};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slr_core::terminate::TunnelTerminator;
use slr_io::netns::run_in_private_netns;
use slr_wire::ipv4::Ipv4Cidr;
use slr_wire::PacketBuf;
use slr_xdp::{verdict, HostFastPath, HostReason, HostSettings};

const FRAMES: usize = 20_000;
const ROUTER: [u8; 4] = [10, 250, 0, 2];
const STRANGER: [u8; 4] = [192, 0, 2, 66];
const HOST: [u8; 4] = [10, 250, 1, 11];
const VIP: [u8; 4] = [10, 99, 0, 1];
const OTHER_VIP: [u8; 4] = [10, 98, 0, 1];
const CLIENT: [u8; 4] = [10, 200, 1, 2];
const DMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const SMAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// What a generated frame is, and what the program must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    GoodPadded,
    Untrusted,
    OuterBadChecksum,
    OuterTruncated,
    OuterShortHeader,
    OuterOptions,
    OuterFragment,
    InnerBadChecksum,
    InnerTruncated,
    InnerNotIpv4,
    InnerOptions,
    Nested,
    InnerTtlZero,
    NotVirtual,
    NotTunnel,
    NotIp,
}

const KINDS: [Kind; 17] = [
    Kind::Good,
    Kind::GoodPadded,
    Kind::Untrusted,
    Kind::OuterBadChecksum,
    Kind::OuterTruncated,
    Kind::OuterShortHeader,
    Kind::OuterOptions,
    Kind::OuterFragment,
    Kind::InnerBadChecksum,
    Kind::InnerTruncated,
    Kind::InnerNotIpv4,
    Kind::InnerOptions,
    Kind::Nested,
    Kind::InnerTtlZero,
    Kind::NotVirtual,
    Kind::NotTunnel,
    Kind::NotIp,
];

impl Kind {
    /// The program's counter this frame must land in.
    fn reason(self) -> HostReason {
        match self {
            Kind::Good | Kind::GoodPadded => HostReason::Delivered,
            Kind::Untrusted => HostReason::UntrustedSource,
            Kind::OuterBadChecksum | Kind::OuterTruncated | Kind::OuterShortHeader => {
                HostReason::MalformedOuter
            }
            Kind::OuterOptions | Kind::OuterFragment | Kind::InnerOptions => HostReason::SlowPath,
            Kind::InnerBadChecksum | Kind::InnerTruncated | Kind::InnerNotIpv4 => {
                HostReason::MalformedInner
            }
            Kind::Nested => HostReason::NestedTunnel,
            Kind::InnerTtlZero => HostReason::TtlExpired,
            Kind::NotVirtual => HostReason::NotVirtualSubnet,
            Kind::NotTunnel | Kind::NotIp => HostReason::NotTunnel,
        }
    }
}

fn inner(rng: &mut SmallRng, kind: Kind) -> Vec<u8> {
    let proto = if rng.gen_bool(0.5) { 6 } else { 17 };
    let dst = if kind == Kind::NotVirtual {
        OTHER_VIP
    } else {
        VIP
    };
    let len = rng.gen_range(0..1200);
    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let mut ip = Ip {
        src: CLIENT,
        dst,
        proto,
        ttl: if kind == Kind::InnerTtlZero {
            0
        } else {
            rng.gen_range(1..=64)
        },
        tos: rng.gen(),
        ident: rng.gen(),
        df: rng.gen_bool(0.5),
        payload: l4(CLIENT, dst, proto, rng.gen(), 80, 0x10, &data),
        ..Default::default()
    };
    if kind == Kind::Nested {
        ip.proto = 4;
    }
    if kind == Kind::InnerOptions {
        ip.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    }
    let mut v = ip.bytes();
    match kind {
        Kind::InnerBadChecksum => v[10] ^= 0x5a,
        Kind::InnerTruncated => {
            let t = (v.len() + 40) as u16;
            v[2..4].copy_from_slice(&t.to_be_bytes());
            let c = slr_wire::checksum::checksum(&{
                let mut h = v[..20].to_vec();
                h[10] = 0;
                h[11] = 0;
                h
            });
            v[10..12].copy_from_slice(&c.to_be_bytes());
        }
        Kind::InnerNotIpv4 => v[0] = 0x65,
        _ => {}
    }
    v
}

fn frame(rng: &mut SmallRng, kind: Kind) -> Vec<u8> {
    if kind == Kind::NotIp {
        return ether(DMAC, SMAC, 0x0806, &[0u8; 28]);
    }
    let payload = inner(rng, kind);
    let mut outer = Ip {
        src: if kind == Kind::Untrusted {
            STRANGER
        } else {
            ROUTER
        },
        dst: HOST,
        proto: if kind == Kind::NotTunnel { 17 } else { 4 },
        ttl: 64,
        ident: rng.gen(),
        df: rng.gen_bool(0.5),
        payload,
        ..Default::default()
    };
    if kind == Kind::OuterOptions {
        outer.options = vec![1, 1, 1, 0];
    }
    if kind == Kind::OuterFragment {
        outer.mf = true;
    }
    let mut v = outer.bytes();
    match kind {
        Kind::OuterBadChecksum => v[11] ^= 0xa5,
        Kind::OuterTruncated => {
            // The outer total length claims more than the frame holds.
            v.truncate(v.len() - 8);
        }
        Kind::OuterShortHeader => v[0] = 0x44,
        Kind::GoodPadded => v.extend_from_slice(&[0u8; 12]),
        _ => {}
    }
    ether(DMAC, SMAC, 0x0800, &v)
}

fn cidr(a: [u8; 4], len: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(a.into(), len).unwrap()
}

fn reason_packets(fp: &HostFastPath) -> Vec<u64> {
    fp.stats().unwrap().iter().map(|(_, c)| c.packets).collect()
}

#[test]
fn xdp_host_and_terminator_agree() {
    run_in_private_netns(differential).expect("a private network namespace (root needed)");
}

fn differential() {
    let trusted = vec![cidr([10, 250, 0, 0], 24)];
    let subnets = vec![cidr([10, 99, 0, 0], 24), cidr([10, 97, 0, 0], 24)];
    let mut fp = HostFastPath::load(HostSettings {
        trusted_tunnel_sources: trusted.clone(),
        virtual_subnets: subnets.clone(),
    })
    .expect("slr_host loads (the verifier accepts it)");
    let mut term = TunnelTerminator::new(trusted, subnets);
    let lo = slr_xdp::if_index("lo").unwrap();
    let mut rng = SmallRng::seed_from_u64(11);
    let mut seen = vec![0usize; KINDS.len()];
    let mut delivered_bytes = 0u64;
    for n in 0..FRAMES {
        let k = rng.gen_range(0..KINDS.len());
        let kind = KINDS[k];
        seen[k] += 1;
        let f = frame(&mut rng, kind);
        let before = reason_packets(&fp);
        let out = fp.test_run(&f, lo).unwrap();
        let after = reason_packets(&fp);
        let moved: Vec<HostReason> = HostReason::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(
            moved,
            vec![kind.reason()],
            "frame {n} ({kind:?}): counted as {moved:?}"
        );
        let tc = fp.test_run_tc(&f, lo).unwrap();
        let after_tc = reason_packets(&fp);
        let moved_tc: Vec<HostReason> = HostReason::ALL
            .iter()
            .zip(after.iter().zip(&after_tc))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(moved_tc, moved, "frame {n} ({kind:?}): tc counts the same");
        // What the agent's terminator makes of the same IP packet.
        let mut buf = PacketBuf::from_slice(&f[14..]);
        let agent = term.handle_packet(&mut buf);
        let reason = kind.reason();
        match reason {
            HostReason::Delivered => {
                assert_eq!(out.verdict, verdict::PASS, "frame {n} ({kind:?})");
                assert!(agent.is_ok(), "frame {n} ({kind:?}): agent says {agent:?}");
                assert_eq!(&out.frame[..6], &DMAC, "frame {n}: destination MAC kept");
                assert_eq!(&out.frame[6..12], &SMAC, "frame {n}: source MAC kept");
                assert_eq!(&out.frame[12..14], &[0x08, 0x00]);
                assert_eq!(
                    &out.frame[14..],
                    buf.as_ref(),
                    "frame {n} ({kind:?}): the stack gets the agent's inner packet"
                );
                assert_eq!(tc.verdict, verdict::TC_OK, "frame {n} ({kind:?}): tc");
                assert_eq!(
                    &tc.frame[..14],
                    &out.frame[..14],
                    "frame {n}: tc's Ethernet"
                );
                assert_eq!(
                    tc.frame.get(14..14 + buf.len()),
                    Some(buf.as_ref()),
                    "frame {n} ({kind:?}): tc's inner packet"
                );
                assert_eq!(
                    tc.frame.len(),
                    f.len() - 20,
                    "frame {n}: tc strips 20 bytes"
                );
                delivered_bytes += buf.len() as u64;
            }
            r if r.is_drop() => {
                assert_eq!(out.verdict, verdict::DROP, "frame {n} ({kind:?})");
                assert_eq!(tc.verdict, verdict::TC_SHOT, "frame {n} ({kind:?}): tc");
                let d = agent.expect_err("the agent drops it too");
                assert_eq!(d.as_str(), r.as_str(), "frame {n} ({kind:?}): same reason");
            }
            _ => {
                assert_eq!(out.verdict, verdict::PASS, "frame {n} ({kind:?})");
                assert_eq!(out.frame, f, "frame {n} ({kind:?}): passed untouched");
                assert_eq!(tc.verdict, verdict::TC_OK, "frame {n} ({kind:?}): tc");
                assert_eq!(tc.frame, f, "frame {n} ({kind:?}): tc passes it untouched");
            }
        }
    }
    for (k, n) in KINDS.iter().zip(&seen) {
        assert!(*n > 500, "{k:?} generated {n} times");
    }
    let stats = fp.stats().unwrap();
    let delivered = stats[HostReason::Delivered as usize].1;
    // Each delivered frame is counted twice, by slr_host and by slr_host_tc.
    assert_eq!(delivered.bytes, 2 * delivered_bytes);
    assert_eq!(
        fp.subnet_counter(0).unwrap().packets,
        delivered.packets,
        "every delivered packet was for the first subnet"
    );
    assert_eq!(fp.subnet_counter(1).unwrap().packets, 0);
    println!(
        "{FRAMES} frames, {} kinds; by reason: {}",
        KINDS.len(),
        stats
            .iter()
            .map(|(r, c)| format!("{}={}", r.as_str(), c.packets))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
