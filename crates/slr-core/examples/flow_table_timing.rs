//! TEMPORARY micro-measurement (to be deleted).
#![allow(missing_docs)]
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use slr_core::flow_table::*;
use slr_core::time::Instant;
use slr_wire::TcpFlags;
use std::hint::black_box;
use std::net::Ipv4Addr;

fn main() {
    let n: usize = 1 << 20;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let keys: Vec<FlowKey> = (0..n)
        .map(|_| FlowKey::new(Ipv4Addr::from(rng.gen::<u32>()), Ipv4Addr::new(10, 99, 0, 1), rng.gen(), 80, 6))
        .collect();
    let mut ft = FlowTable::new(FlowTableConfig::default(), rng.gen());
    let mut now = 1_000_000u64;
    let t0 = std::time::Instant::now();
    for k in &keys {
        now += 1;
        let _ = ft.insert(*k, 1, FlowState::TcpEstablished, Instant::from_micros(now), 60);
    }
    let el = t0.elapsed();
    println!("insert {} flows (growing map): {:.0} ns/insert", ft.len(), el.as_nanos() as f64 / n as f64);
    println!("memory after fill: {:.1} bytes/flow", ft.memory_bytes() as f64 / n as f64);

    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let ack = Some(TcpFlags(TcpFlags::ACK));
    for round in 0..3 {
        let t0 = std::time::Instant::now();
        let mut sum = 0u64;
        for &i in &order {
            now += 1;
            let e = ft.touch(&keys[i], Instant::from_micros(now), ack, 1500).unwrap();
            sum += u64::from(e.next_hop());
        }
        black_box(sum);
        let el = t0.elapsed();
        println!("touch (random existing keys, 1M table) round {round}: {:.1} ns/touch", el.as_nanos() as f64 / n as f64);
    }
    // get only, for comparison
    let t0 = std::time::Instant::now();
    let mut sum = 0u64;
    for &i in &order {
        sum += u64::from(ft.get(&keys[i]).unwrap().next_hop());
    }
    black_box(sum);
    println!("get (random, 1M): {:.1} ns", t0.elapsed().as_nanos() as f64 / n as f64);
    // miss lookups
    let misses: Vec<FlowKey> = (0..n).map(|_| FlowKey::new(Ipv4Addr::from(rng.gen::<u32>()), Ipv4Addr::new(10, 99, 0, 2), rng.gen(), 81, 6)).collect();
    let t0 = std::time::Instant::now();
    let mut c = 0;
    for k in &misses {
        c += ft.touch(k, Instant::from_micros(now), None, 0).is_some() as usize;
    }
    black_box(c);
    println!("touch miss (1M): {:.1} ns", t0.elapsed().as_nanos() as f64 / n as f64);

    // Full table: SYN flood inserts evicting (first evicts established LRU, then half-open).
    let syn = Some(TcpFlags(TcpFlags::SYN));
    let t0 = std::time::Instant::now();
    let mut evicted = 0;
    for k in &misses {
        now += 1;
        if let InsertOutcome::Evicted { .. } = ft.insert(*k, 2, FlowState::for_new_flow(6, syn), Instant::from_micros(now), 60) {
            evicted += 1;
        }
    }
    println!("insert into full table ({evicted} evictions, mostly LRU established then half-open): {:.0} ns/insert", t0.elapsed().as_nanos() as f64 / n as f64);

    // Steady state: half the flows touched; advance past the timeouts and expire.
    let mut ft = FlowTable::new(FlowTableConfig::default(), 3);
    let mut now = 1_000_000u64;
    for k in &keys {
        now += 1;
        let _ = ft.insert(*k, 1, FlowState::TcpEstablished, Instant::from_micros(now), 60);
    }
    let mut expire_ns = 0u128;
    let mut expired_total = 0;
    let mut per_round = Vec::new();
    for round in 0..6 {
        // touch 3/4 of the flows, spread over 300 s
        let step = 300_000_000 / n as u64;
        for &i in order.iter().take(n * 3 / 4) {
            now += step;
            if ft.touch(&keys[i], Instant::from_micros(now), ack, 100).is_none() {
                let _ = ft.insert(keys[i], 1, FlowState::TcpEstablished, Instant::from_micros(now), 60);
            }
        }
        now += 400_000_000;
        let t0 = std::time::Instant::now();
        let e = ft.expire(Instant::from_micros(now), |_, _| {});
        expire_ns += t0.elapsed().as_nanos();
        expired_total += e;
        per_round.push((round, e, ft.len(), ft.expiry_records(), ft.memory_bytes() as f64 / ft.len().max(1) as f64));
        order.shuffle(&mut rng);
    }
    for r in per_round {
        println!("steady round {}: expired {}, len {}, records {}, {:.1} bytes/flow", r.0, r.1, r.2, r.3, r.4);
    }
    println!("expire: {} expired, total {:.1} ms", expired_total, expire_ns as f64 / 1e6);
}
