//! Benchmarks of the routing core alone (no I/O): the per-packet cost a fast path or the daemon
//! pays on top of its device.
//!
//! - `established/lookup+encap/1M`: a packet of an established flow, drawn in random order from
//!   1,000,000 established flows, is classified, looked up, counted and encapsulated in place.
//!   Random order over a table of ~150 MB is the worst case: nearly every packet misses the caches
//!   and the TLB. This is the figure issue #5's target (>= 5 M packets/s/core, <= 200 ns) is about.
//! - `established/lookup+encap/10k`: the same with 10,000 flows, whose table fits in the caches:
//!   the compute cost of the path without the memory misses, for comparison.
//! - `harness/write_packet`: what the two benchmarks above spend outside the core, writing the
//!   next 40-byte packet into the buffer and its IPv4 checksum (a device read would do the
//!   copy). Subtract it to get the core's share; the figures above include it, so they are upper
//!   bounds.
//! - `new_flow/syn+maglev/1M`: a SYN of a never-seen flow (classification, Maglev selection over
//!   10 host servers, flow insertion, encapsulation) into a table already holding 1,000,000
//!   established flows, as a busy router's is. The new flows are expired again outside the timed
//!   region (in chunks small enough that the table never grows), so every sample sees the same
//!   table size and no rehash.
//! - `new_flow/lifecycle/1M`: the same, with the expiry of each flow (one more lookup and a
//!   removal, [`Router::handle_timeout`]) inside the timed region: the whole cost a flow puts on
//!   the router in a steady state where flows end as fast as they start.
//! - `new_flow/syn+maglev/empty`: new flows into a table that starts empty for each sample and
//!   grows (rehashes included, small tables are cache-resident: the optimistic case).
//!
//! - `shortcut/keepalive_chunk/1M`: what one keepalive visit of the shortcut (F10) costs the
//!   packet thread at a router below the ingress that signalled 1,000,000 flows: the next 4,096
//!   keys of the rotation examined and collected. `shortcut/whole_table_scan/1M` is what a visit
//!   cost when it scanned the whole flow table for the signalled flows instead (the packets
//!   waited that long every keepalive interval).
//!
//! Run: `cargo bench -p slr-core --bench core` (or `bench/core.sh`, which also prints a summary).
//! Targets (issue #5): >= 5 M established packets/s per core (200 ns), >= 1 M new flows/s per
//! core (1 us).
#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use slr_core::flow_table::{FlowKey, FlowMark, FlowTableConfig};
use slr_core::router::{Action, NextHopConfig, Router, RouterConfig, UdpMode, VirtualHostConfig};
use slr_core::select::Policy;
use slr_core::time::{Duration, Instant};
use slr_wire::{Ipv4Packet, PacketBuf};
use std::hint::black_box;
use std::net::Ipv4Addr;

const FLOWS: u32 = 1_000_000;
/// Largest number of new flows inserted into the 1M table before they are expired again: the
/// map (2^21 buckets at 1M entries, 7/8 of them usable) then never grows during a sample.
const CHUNK: u64 = 400_000;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn router(max_flows: usize) -> Router {
    let mut c = RouterConfig::new(Ipv4Addr::new(10, 200, 2, 2));
    c.flow_table = FlowTableConfig {
        max_flows,
        // Half-open flows are expired between chunks of the new-flow benchmarks; established
        // ones must stay whatever the clock does.
        tcp_half_open_timeout: Duration::from_secs(1),
        tcp_established_timeout: Duration::from_secs(1 << 30),
        ..FlowTableConfig::default()
    };
    c.virtual_hosts.push(VirtualHostConfig {
        name: "web".into(),
        subnet: "10.99.0.0/16".parse().unwrap(),
        policy: Policy::Maglev,
        udp: UdpMode::Pin,
        next_hops: vec![],
        rules: vec![],
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
#[inline]
fn write_packet(buf: &mut PacketBuf, i: u32, flags: u8) {
    buf.reset(64);
    let slot = buf.read_slot();
    let p = &mut slot[..40];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 63, 6, 0, 0, 0, 0, 0, 0, 10, 99, 0, 1,
    ]);
    // Clients spread over 100.64.0.0/10, ports 1024..: every i < 2^28 a distinct 5-tuple.
    let src = 0x6440_0000u32 | ((i >> 6) & 0x3f_ffff);
    p[12..16].copy_from_slice(&src.to_be_bytes());
    p[20..40].fill(0);
    p[20..22].copy_from_slice(&(1024 + (i & 63) as u16).to_be_bytes());
    p[22..24].copy_from_slice(&80u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    buf.set_len(40);
    Ipv4Packet::new_unchecked(buf.as_mut()).fill_checksum();
}

/// A router holding `flows` established flows (first seen mid-stream, so established at once).
fn router_with_established(flows: u32, now: Instant) -> Router {
    let mut r = router(1 << 25);
    let mut buf = PacketBuf::new(2048);
    for i in 0..flows {
        write_packet(&mut buf, i, ACK);
        assert!(matches!(
            r.handle_packet(now, &mut buf),
            Action::Tunnel { .. }
        ));
    }
    assert_eq!(r.flow_count(), flows as usize);
    r
}

fn established(c: &mut Criterion, flows: u32, name: &str) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let now = Instant::from_secs(1);
    let mut r = router_with_established(flows, now);
    let mut buf = PacketBuf::new(2048);
    let mut order: Vec<u32> = (0..flows).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(7));
    let mut k = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            let i = order[k];
            k = if k + 1 == order.len() { 0 } else { k + 1 };
            write_packet(&mut buf, i, ACK);
            black_box(r.handle_packet(now, &mut buf))
        })
    });
    assert_eq!(r.flow_count(), flows as usize, "no flow came or went");
    // The same, as the daemon does it: batches of 64 packets read from the device, routed
    // with `handle_batch`. Time per packet.
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(2048)).collect();
    let mut actions = [Action::Held; BATCH];
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(format!("{name}/batch64"), |b| {
        b.iter(|| {
            for buf in bufs.iter_mut() {
                let i = order[k];
                k = if k + 1 == order.len() { 0 } else { k + 1 };
                write_packet(buf, i, ACK);
            }
            r.handle_batch(now, &mut bufs, &mut actions);
            black_box(&actions);
        })
    });
    // (Still `Held` when a filter skipped this benchmark.)
    assert!(
        actions.iter().all(|a| matches!(a, Action::Tunnel { .. }))
            || actions.iter().all(|a| matches!(a, Action::Held))
    );
    assert_eq!(r.flow_count(), flows as usize, "no flow came or went");
    g.finish();
}

/// Packets per batch in the `/batch64` benchmarks, as the daemon reads them.
const BATCH: usize = 64;

fn bench_established(c: &mut Criterion) {
    established(c, FLOWS, "established/lookup+encap/1M");
    established(c, 10_000, "established/lookup+encap/10k");

    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let mut buf = PacketBuf::new(2048);
    let mut i = 0u32;
    g.bench_function("harness/write_packet", |b| {
        b.iter(|| {
            i = (i + 1) % FLOWS;
            write_packet(&mut buf, i, ACK);
            black_box(buf.as_ref()[11])
        })
    });
    g.finish();
}

fn bench_new_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));

    // One 1M-flow table shared by both 1M benchmarks; the clock only moves forward.
    let mut now = Instant::from_secs(1);
    let mut r = router_with_established(FLOWS, now);
    // Keys of new flows: beyond the established ones, never repeated within 2^28.
    let mut next_key = FLOWS;
    for (name, time_expiry) in [
        ("new_flow/syn+maglev/1M", false),
        ("new_flow/lifecycle/1M", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut buf = PacketBuf::new(2048);
                let mut timed = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    left -= n;
                    // The benchmark, not the core, reads the clock.
                    #[allow(clippy::disallowed_types)]
                    let start = std::time::Instant::now();
                    for _ in 0..n {
                        write_packet(&mut buf, next_key, SYN);
                        next_key = if next_key + 1 >= 1 << 28 {
                            FLOWS
                        } else {
                            next_key + 1
                        };
                        black_box(r.handle_packet(now, &mut buf));
                    }
                    if !time_expiry {
                        timed += start.elapsed();
                    }
                    // Expire this chunk's half-open flows (1 s timeout); established ones stay.
                    now = Instant::from_micros(now.as_micros() + 2_000_000);
                    r.handle_timeout(now);
                    if time_expiry {
                        timed += start.elapsed();
                    }
                    assert_eq!(r.flow_count(), FLOWS as usize);
                }
                timed
            })
        });
    }
    drop(r);

    g.bench_function("new_flow/syn+maglev/empty", |b| {
        b.iter_custom(|iters| {
            let mut r = router(1 << 25);
            let mut buf = PacketBuf::new(2048);
            let now = Instant::from_secs(1);
            #[allow(clippy::disallowed_types)]
            let start = std::time::Instant::now();
            for i in 0..iters {
                write_packet(&mut buf, i as u32, SYN);
                black_box(r.handle_packet(now, &mut buf));
            }
            start.elapsed()
        })
    });
    g.finish();
}

/// Keys examined per keepalive visit (the daemon's chunk).
const KEEPALIVE_CHUNK: usize = 4096;

fn bench_keepalives(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    let now = Instant::from_secs(1);
    let mut r = router_with_established(FLOWS, now);
    let keys: Vec<FlowKey> = r.flows().map(|(k, _)| *k).collect();
    for k in &keys {
        assert!(r.mark_signalled(k));
    }
    assert_eq!(r.signalled_rotation(), FLOWS as usize);
    let mut out = Vec::with_capacity(KEEPALIVE_CHUNK);
    g.throughput(Throughput::Elements(1));
    g.bench_function("shortcut/keepalive_chunk/1M", |b| {
        b.iter(|| {
            out.clear();
            black_box(r.next_signalled(KEEPALIVE_CHUNK, &mut out));
        })
    });
    g.bench_function("shortcut/whole_table_scan/1M", |b| {
        b.iter(|| {
            let all: Vec<FlowKey> = r
                .flows()
                .filter(|(_, e)| e.has_mark(FlowMark::Signalled))
                .map(|(k, _)| *k)
                .collect();
            black_box(all.len())
        })
    });
    assert_eq!(
        r.signalled_rotation(),
        FLOWS as usize,
        "every flow goes round"
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench_established, bench_new_flow, bench_keepalives
}
criterion_main!(benches);
