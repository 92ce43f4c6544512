//! Oscillation: two equal sites, 20 report intervals, the new flows of each interval split by
//! the table exactly as the packet path splits them (rendezvous hashing over the chosen band),
//! each site reporting a load made of the flows it got plus noise.
//!
//! With the defaults (EWMA damping 0.5, band 10 %, hysteresis 0.5) every interval's split stays
//! within 50 % +- 10 %. Without damping and band (damping 1, band 0) the same simulation herds:
//! all new flows go to the site that looked least loaded, which then looks most loaded, and the
//! whole load swings from one site to the other every interval.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slr_core::route_table::{name_hash, rendezvous};
use slr_policy::{Builder, ChildInput, Inputs, PolicyConfig, Priority, ServedSubnet};
use slr_wire::Ipv4Cidr;

const INTERVALS: usize = 20;
const FLOWS: u64 = 10_000;
/// Flows per interval one site can carry at load 1.0.
const CAPACITY: f64 = 10_000.0;
const NOISE: f64 = 0.02;
const SEED: u64 = 0x5eed;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Runs the simulation; returns the share of new flows the first site got in each interval.
fn simulate(config: &str) -> Vec<f64> {
    let policy = toml::from_str::<PolicyConfig>(config)
        .unwrap()
        .compile()
        .unwrap();
    let mut builder = Builder::new(policy);
    let subnet: Ipv4Cidr = "10.99.0.0/24".parse().unwrap();
    let names = ["east", "west"];
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut noise = move || rng.gen_range(-NOISE..=NOISE);
    let report = |load: f64| vec![(subnet, BTreeMap::from([("load".to_owned(), load)]))];
    let mut inputs = Inputs {
        now_unix_ms: 0,
        client_groups: Vec::new(),
        subnets: vec![ServedSubnet {
            subnet,
            priority: Priority::BestEffort,
        }],
        // Both start half loaded.
        children: names
            .iter()
            .map(|n| ChildInput {
                name: (*n).to_owned(),
                live: true,
                report_seq: 1,
                report: report(0.5 + noise()),
                ..Default::default()
            })
            .collect(),
    };
    let mut shares = Vec::new();
    for interval in 0..INTERVALS as u64 {
        let out = builder.build(&inputs);
        let chosen = &out.table.entries[0].chosen;
        let members: Vec<(usize, u64)> = chosen
            .iter()
            .map(|n| {
                (
                    names.iter().position(|x| x == n).unwrap(),
                    name_hash(SEED, n),
                )
            })
            .collect();
        let mut got = [0u64; 2];
        for f in 0..FLOWS {
            let flow_hash = splitmix64(interval << 32 | f);
            got[rendezvous(flow_hash, members.iter().copied()).unwrap()] += 1;
        }
        shares.push(got[0] as f64 / FLOWS as f64);
        for (child, got) in inputs.children.iter_mut().zip(got) {
            child.report_seq += 1;
            child.report = report((got as f64 / CAPACITY + noise()).max(0.0));
        }
        inputs.now_unix_ms += 10_000;
    }
    shares
}

#[test]
fn damping_band_and_hysteresis_keep_equal_sites_balanced() {
    let shares = simulate("");
    println!("east's share per interval: {shares:.3?}");
    for (i, s) in shares.iter().enumerate() {
        assert!(
            (0.4..=0.6).contains(s),
            "interval {i}: east got {:.1} % of new flows ({shares:.3?})",
            s * 100.0
        );
    }
}

#[test]
fn without_damping_and_band_the_sites_herd() {
    let shares = simulate("damping = 1.0\nband = 0.0\nband_abs = 0.0");
    println!("east's share per interval: {shares:.3?}");
    // After the first interval (the sites start with slightly different noise), every
    // interval sends all new flows to one site, alternately.
    for (i, s) in shares.iter().enumerate() {
        assert!(*s == 0.0 || *s == 1.0, "interval {i}: {shares:?}");
        if i > 0 {
            assert_ne!(*s, shares[i - 1], "interval {i} did not swing: {shares:?}");
        }
    }
}
