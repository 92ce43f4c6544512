//! Benchmarks of the routing core alone (no I/O): the per-packet cost a fast path or the daemon
//! pays on top of its device.
//!
//! - `established/lookup+encap/1M`: a packet of an established flow, drawn in random order from
//!   1,000,000 pinned flows, is classified, looked up, counted and encapsulated in place. The
//!   timing also includes writing the 40-byte packet into the buffer and its IPv4 checksum, so it
//!   is an upper bound of the core's share.
//! - `new_flow/syn+maglev`: a SYN of a never-seen flow: classification, Maglev selection over 10
//!   host servers, flow insertion, encapsulation.
//!
//! Run: `cargo bench -p slr-core --bench core`. Targets (issue #5): >= 5 M established packets/s
//! per core (200 ns), >= 1 M new flows/s per core (1 us).
#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use slr_core::flow_table::FlowTableConfig;
use slr_core::router::{Action, NextHopConfig, Router, RouterConfig, UdpMode, VirtualHostConfig};
use slr_core::select::Policy;
use slr_core::time::Instant;
use slr_wire::{Ipv4Packet, PacketBuf};
use std::hint::black_box;
use std::net::Ipv4Addr;

const FLOWS: u32 = 1_000_000;

fn router(max_flows: usize) -> Router {
    let mut c = RouterConfig::new(Ipv4Addr::new(10, 200, 2, 2));
    c.flow_table = FlowTableConfig {
        max_flows,
        ..FlowTableConfig::default()
    };
    c.virtual_hosts.push(VirtualHostConfig {
        name: "web".into(),
        subnet: "10.99.0.0/16".parse().unwrap(),
        policy: Policy::Maglev,
        udp: UdpMode::Pin,
        next_hops: vec![],
    });
    for i in 0..10u8 {
        c.next_hops.push(NextHopConfig {
            name: format!("h{i}"),
            address: Ipv4Addr::new(10, 200, 3, i + 1),
            weight: 1,
        });
    }
    Router::new(c).unwrap()
}

/// A 40-byte TCP packet from client `i` to 10.99.0.1:80 with the given flags.
fn write_packet(buf: &mut PacketBuf, i: u32, flags: u8) {
    buf.reset(64);
    let slot = buf.read_slot();
    let p = &mut slot[..40];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 63, 6, 0, 0, 0, 0, 0, 0, 10, 99, 0, 1,
    ]);
    // Clients spread over 100.64.0.0/10, ports 1024..: every i a distinct 5-tuple.
    let src = 0x6440_0000u32 | (i >> 6);
    p[12..16].copy_from_slice(&src.to_be_bytes());
    p[20..40].fill(0);
    p[20..22].copy_from_slice(&(1024 + (i & 63) as u16).to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    buf.set_len(40);
    Ipv4Packet::new_unchecked(buf.as_mut()).fill_checksum();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));

    // Established: pin 1M flows, then look them up in random order.
    let mut r = router(FLOWS as usize * 2);
    let mut buf = PacketBuf::new(2048);
    let now = Instant::from_secs(1);
    for i in 0..FLOWS {
        write_packet(&mut buf, i, 0x02);
        assert!(matches!(
            r.handle_packet(now, &mut buf),
            Action::Tunnel { .. }
        ));
    }
    assert_eq!(r.flow_count(), FLOWS as usize);
    let mut order: Vec<u32> = (0..FLOWS).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(7));
    let mut k = 0usize;
    g.bench_function("established/lookup+encap/1M", |b| {
        b.iter(|| {
            let i = order[k];
            k = if k + 1 == order.len() { 0 } else { k + 1 };
            write_packet(&mut buf, i, 0x10);
            black_box(r.handle_packet(now, &mut buf))
        })
    });
    drop(r);

    g.bench_function("new_flow/syn+maglev", |b| {
        b.iter_custom(|iters| {
            let mut r = router(1 << 25);
            let mut buf = PacketBuf::new(2048);
            // The benchmark, not the core, reads the clock.
            #[allow(clippy::disallowed_types)]
            let start = std::time::Instant::now();
            for i in 0..iters {
                write_packet(&mut buf, i as u32, 0x02);
                black_box(r.handle_packet(now, &mut buf));
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
