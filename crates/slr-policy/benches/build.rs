#![allow(missing_docs)] // criterion_group! generates an undocumented public function
//! A full table rebuild at scale: 1,000 children x 10,000 virtual subnets, 10 candidate
//! children per subnet (100,000 evaluations of F, 10,000 of G).
//!
//! `cargo bench -p slr-policy --bench build`
//!
//! - `cold`: a new builder every time (every report smoothed and converted, no previous bands);
//! - `new_reports`: every child sends a new report before each rebuild (the steady state of a
//!   router rebuilding once per report interval);
//! - `same_reports`: rebuild with no new report (smoothing state reused);
//! - `interpreted/*`: the same with direct evaluation off, every F and G through the `cel`
//!   interpreter.
//!
//! Before criterion's figures it prints plain means of 10 builds of each kind, in wall time and
//! in this thread's CPU time (on a shared machine, CPU time leaves out waiting for a core). The
//! outputs of the builds are dropped inside the measurement, as a daemon drops its old table.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use slr_policy::{Builder, ChildInput, Inputs, PolicyConfig, Priority, ServedSubnet};
use slr_wire::Ipv4Cidr;

const CHILDREN: usize = 1_000;
const SUBNETS: usize = 10_000;
const PER_SUBNET: usize = 10;

fn subnet(k: usize) -> Ipv4Cidr {
    format!("10.{}.{}.0/24", k / 256, k % 256).parse().unwrap()
}

fn inputs() -> Inputs {
    let mut children: Vec<ChildInput> = (0..CHILDREN)
        .map(|j| ChildInput {
            name: format!("child-{j:04}"),
            labels: BTreeMap::from([("region".to_owned(), format!("r{}", j % 7))]),
            static_cost: (j % 13) as f64,
            rtt_ms: Some(1.0 + (j % 17) as f64),
            live: true,
            report_seq: 1,
            report: Vec::new(),
        })
        .collect();
    for k in 0..SUBNETS {
        for i in 0..PER_SUBNET {
            let j = (k + i * (CHILDREN / PER_SUBNET)) % CHILDREN;
            let load = ((k * 31 + j * 17) % 100) as f64 / 100.0;
            children[j].report.push((
                subnet(k),
                BTreeMap::from([
                    ("load".to_owned(), load),
                    ("cpu".to_owned(), load / 2.0),
                    ("flows".to_owned(), (k % 50) as f64),
                ]),
            ));
        }
    }
    Inputs {
        now_unix_ms: 1_700_000_000_000,
        client_groups: Vec::new(),
        subnets: (0..SUBNETS)
            .map(|k| ServedSubnet {
                subnet: subnet(k),
                priority: if k % 2 == 0 {
                    Priority::High
                } else {
                    Priority::BestEffort
                },
            })
            .collect(),
        children,
    }
}

/// CPU time of this thread so far (from /proc: user + system clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_millis(10 * f.iter().sum::<u64>())
}

fn config() -> PolicyConfig {
    PolicyConfig {
        f: "s.load * 100.0 + r".to_owned(),
        ..PolicyConfig::default()
    }
}

fn bench_mode(c: &mut Criterion, inputs: &mut Inputs, direct: bool) {
    let policy = || {
        let mut p = config().compile().unwrap();
        p.set_direct_evaluation(direct);
        p
    };
    let mode = if direct { "direct" } else { "interpreted" };
    assert_eq!(policy().evaluated_directly().is_empty(), !direct);

    // Plain figures first, wall time and this thread's CPU time (the machine is shared: CPU
    // time leaves out the time spent waiting for a core), then criterion's.
    let out = Builder::new(policy()).build(inputs);
    assert_eq!(out.counters.entries, SUBNETS as u64);
    assert_eq!(out.counters.eval_errors, 0);
    assert_eq!(out.reports.len(), SUBNETS);
    println!(
        "{mode}: {} entries, {} evaluations per build",
        out.counters.entries, out.counters.evaluations
    );
    let runs = 10;
    let measure = |what: &str, f: &mut dyn FnMut()| {
        let (t, cpu) = (Instant::now(), thread_cpu());
        for _ in 0..runs {
            f();
        }
        let (wall, cpu) = (t.elapsed() / runs, (thread_cpu() - cpu) / runs);
        println!("{mode}/{what}: {wall:.1?} wall, {cpu:.1?} CPU per build (mean of {runs})");
    };
    measure("cold", &mut || {
        black_box(Builder::new(policy()).build(inputs));
    });
    let mut b = Builder::new(policy());
    b.build(inputs);
    measure("same_reports", &mut || {
        black_box(b.build(inputs));
    });
    measure("new_reports", &mut || {
        for c in &mut inputs.children {
            c.report_seq += 1;
        }
        black_box(b.build(inputs));
    });

    let mut g = c.benchmark_group(format!("build_1000x10000/{mode}"));
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.bench_function("cold", |bch| {
        bch.iter(|| {
            let mut b = Builder::new(policy());
            black_box(b.build(inputs))
        })
    });
    let mut b = Builder::new(policy());
    b.build(inputs);
    g.bench_function("same_reports", |bch| {
        bch.iter(|| black_box(b.build(inputs)))
    });
    g.bench_function("new_reports", |bch| {
        bch.iter(|| {
            for c in &mut inputs.children {
                c.report_seq += 1;
            }
            black_box(b.build(inputs))
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let mut inputs = inputs();
    bench_mode(c, &mut inputs, true);
    bench_mode(c, &mut inputs, false);
}

criterion_group!(benches, bench);
criterion_main!(benches);
