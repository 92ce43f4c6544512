//! The flow table under arbitrary sequences of operations, against a plain map as the model:
//! same keys, next hops and states; never more than `max_flows` entries; expiry exact (no entry
//! expires before its idle timeout, none outlives it while the clock moves forward); eviction
//! and replacement reported for exactly the entries that left.
//!
//! Input: one byte for `max_flows` (1 to 16), one for the timeouts, then operations, each an
//! opcode byte (`op & 7`) and its operands: insert (key, state, next hop), touch (key, flags),
//! remove (key), expire, advance the clock (u16 le, unit from `op >> 3 & 3`), step the clock
//! back, change `max_flows`, check `next_expiry`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slr_core::flow_table::{FlowKey, FlowState, FlowTable, FlowTableConfig, InsertOutcome};
use slr_core::time::{Duration, Instant};
use slr_wire::TcpFlags;
use std::collections::HashMap;
use std::net::Ipv4Addr;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn b(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }
}

/// 64 keys: enough to collide with a bound of 16, few enough to hit the same key again.
fn key(b: u8) -> FlowKey {
    let i = b & 63;
    let proto = [6, 17, 1][(i % 3) as usize];
    FlowKey::new(
        Ipv4Addr::new(10, 0, 0, i),
        Ipv4Addr::new(10, 99, 0, 1),
        1000 + u16::from(i),
        80,
        proto,
    )
}

fn flags(b: u8) -> Option<TcpFlags> {
    (b & 0x80 == 0).then_some(TcpFlags(b & 0x1f))
}

fn class(s: FlowState) -> u8 {
    match s {
        FlowState::TcpHalfOpen => 0,
        FlowState::TcpClosing => 1,
        FlowState::Udp | FlowState::Other => 2,
        FlowState::TcpEstablished => 3,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Model {
    next_hop: u32,
    state: FlowState,
    last_seen: Instant,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut max_flows = 1 + (input.b() % 16) as usize;
    let t = input.b();
    // Timeouts from 1 us to minutes, differing per state so that eviction order and expiry
    // interleave across the per-state queues.
    let scale = [1u64, 1_000, 1_000_000][(t % 3) as usize];
    let d = |k: u64| Duration::from_micros(k * scale * u64::from(1 + (t >> 2)));
    let mut config = FlowTableConfig {
        max_flows,
        tcp_half_open_timeout: d(5),
        tcp_established_timeout: d(600),
        tcp_closing_timeout: d(10),
        udp_timeout: d(60),
        other_timeout: d(30),
    };
    let mut table = FlowTable::new(config.clone(), 0x5eed);
    let mut model: HashMap<FlowKey, Model> = HashMap::new();
    let mut now = Instant::from_secs(1);
    // After the clock stepped back, entries may expire late by the step (documented); never early.
    let mut stepped_back = false;
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 2048 {
            break;
        }
        match op & 7 {
            0 => {
                let k = key(input.b());
                let state = FlowState::ALL[(input.b() % 5) as usize];
                let nh = u32::from(input.b());
                let existed = model.contains_key(&k);
                let full = model.len() >= max_flows;
                let outcome = table.insert(k, nh, state, now, 100);
                match outcome {
                    InsertOutcome::Inserted => assert!(
                        !existed && !full,
                        "plain insert into a full table or over an entry"
                    ),
                    InsertOutcome::Replaced(old) => {
                        assert!(existed);
                        let m = model[&k];
                        assert_eq!((old.next_hop(), old.state()), (m.next_hop, m.state));
                    }
                    InsertOutcome::Evicted { key: ek, entry } => {
                        assert!(!existed && full);
                        // Eviction order: half-open, closing, UDP and other, established; the
                        // entry idle longest within the first class that has one.
                        if !stepped_back {
                            let c = class(entry.state());
                            for (k, m) in &model {
                                assert!(
                                    c <= class(m.state),
                                    "evicted {ek} ({:?}) before {k} ({:?})",
                                    entry.state(),
                                    m.state
                                );
                                if c == class(m.state) {
                                    assert!(
                                        entry.last_seen() <= m.last_seen,
                                        "evicted {ek} before the older {k}"
                                    );
                                }
                            }
                        }
                        let m = model.remove(&ek).expect("evicted key was in the table");
                        assert_eq!((entry.next_hop(), entry.state()), (m.next_hop, m.state));
                    }
                }
                model.insert(
                    k,
                    Model {
                        next_hop: nh,
                        state,
                        last_seen: now,
                    },
                );
            }
            1 => {
                let k = key(input.b());
                let f = flags(input.b());
                let r = table
                    .touch(&k, now, f, 100)
                    .map(|e| (e.next_hop(), e.state()));
                match model.get_mut(&k) {
                    Some(m) => {
                        m.state = m.state.on_packet(f);
                        m.last_seen = m.last_seen.max(now);
                        assert_eq!(r, Some((m.next_hop, m.state)));
                    }
                    None => assert_eq!(r, None),
                }
            }
            2 => {
                let k = key(input.b());
                let r = table.remove(&k).map(|e| (e.next_hop(), e.state()));
                assert_eq!(r, model.remove(&k).map(|m| (m.next_hop, m.state)));
            }
            3 => {
                let mut reported = 0;
                let n = table.expire(now, |k, e| {
                    reported += 1;
                    let m = model.remove(&k).expect("expired key was in the table");
                    assert_eq!((e.next_hop(), e.state()), (m.next_hop, m.state));
                    assert!(
                        e.idle(now) > config.timeout(e.state()),
                        "expired early: {k}"
                    );
                });
                assert_eq!(n, reported);
                if !stepped_back {
                    for (k, m) in &model {
                        assert!(
                            now - m.last_seen <= config.timeout(m.state),
                            "outlived its timeout: {k}"
                        );
                    }
                }
            }
            4 => {
                let v = u64::from(u16::from_le_bytes([input.b(), input.b()]));
                let unit = [1, 1_000, 1_000_000, 60_000_000][(op >> 3 & 3) as usize];
                now += Duration::from_micros(v * unit);
            }
            5 => {
                let back = u64::from(input.b()) * 1000;
                now = Instant::from_micros(now.as_micros().saturating_sub(back));
                stepped_back = true;
            }
            6 => {
                max_flows = 1 + (input.b() % 16) as usize;
                config.max_flows = max_flows;
                let before = model.len();
                let mut evicted = 0;
                table.set_config(config.clone(), |k, e| {
                    evicted += 1;
                    let m = model.remove(&k).expect("evicted key was in the table");
                    assert_eq!(e.next_hop(), m.next_hop);
                });
                assert_eq!(evicted, before.saturating_sub(max_flows));
            }
            _ => {
                // The next expiry is never later than the earliest real deadline.
                let first = model
                    .values()
                    .map(|m| m.last_seen + config.timeout(m.state) + Duration::from_micros(1))
                    .min();
                match (table.next_expiry(), first) {
                    (_, None) => {}
                    (None, Some(f)) => panic!("no next expiry with entries due at {f:?}"),
                    (Some(n), Some(f)) => assert!(
                        stepped_back || n <= f,
                        "next expiry {n:?} after the first deadline {f:?}"
                    ),
                }
            }
        }
        assert!(
            table.len() <= max_flows,
            "{} flows over the bound {max_flows}",
            table.len()
        );
        assert_eq!(table.len(), model.len());
        for (k, m) in &model {
            let e = table.get(k).expect("model key in the table");
            assert_eq!(
                (e.next_hop(), e.state(), e.last_seen()),
                (m.next_hop, m.state, m.last_seen)
            );
        }
    }
});
