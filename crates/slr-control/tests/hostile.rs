//! Hostile control messages: whatever a child sends, the parent's decision path never panics,
//! accepts only well-formed, allowed subnets, and counts everything it refuses.

use proptest::prelude::*;
use slr_control::proto::{HelloRequest, ReportRequest, SubnetLoad};
use slr_control::{ExpectedChildren, ParentConfig, ParentState, PeerInfo, Refusal, Subnet};
use std::time::Instant;

fn state() -> ParentState {
    let expected = ExpectedChildren::new();
    expected.insert("h1", vec!["10.99.0.0/16".parse::<Subnet>().unwrap()]);
    ParentState::new(ParentConfig::default(), expected)
}

fn peer(name: &str) -> PeerInfo {
    PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        names: vec![name.to_owned()].into(),
    }
}

/// Subnet strings: well-formed and allowed, well-formed and foreign, or garbage.
fn subnet() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=255, 16u8..=32).prop_map(|(b, l)| format!("10.99.{b}.0/{l}")),
        (0u8..=255, 0u8..=32).prop_map(|(b, l)| format!("{b}.1.0.0/{l}")),
        "[0-9./a-z]{0,24}",
    ]
}

fn metrics() -> impl Strategy<Value = Vec<(String, f64)>> {
    prop::collection::vec(
        (
            "[a-z_]{0,8}|.{0,70}",
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                -1e9f64..1e9
            ],
        ),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_report_is_accepted_or_counted_never_a_panic(
        names in prop::collection::vec(prop_oneof![Just("h1".to_owned()), "[a-z0-9]{1,6}"], 1..3),
        subnets in prop::collection::vec((subnet(), metrics()), 0..20),
        sequence in any::<u64>(),
        session in prop::option::of(any::<u64>()),
    ) {
        let s = state();
        let now = Instant::now();
        let p = peer(&names[0]);
        let hello = s.handle_hello(&p, &HelloRequest {
            child_name: names.last().unwrap().clone(),
            level: "host".into(),
            software_version: "x".into(),
            subnets: subnets.iter().map(|(n, _)| n.clone()).collect(),
        }, now);
        let session_id = match (&hello, session) {
            (_, Some(forged)) => forged,
            (Ok(h), None) => h.session_id,
            (Err(_), None) => 0,
        };
        let total: usize = subnets.len();
        let before: u64 = s.counters().refusals().map(|(_, n)| n).sum();
        let r = s.handle_report(&p, &ReportRequest {
            session_id,
            sequence,
            subnets: subnets
                .iter()
                .map(|(n, m)| SubnetLoad { subnet: n.clone(), metrics: m.iter().cloned().collect() })
                .collect(),
        }, now);
        let after: u64 = s.counters().refusals().map(|(_, n)| n).sum();
        match r {
            Ok(reply) => {
                // Every subnet is accounted for: accepted or refused with a reason.
                prop_assert_eq!(reply.accepted as usize + reply.refused.len(), total);
                prop_assert_eq!(after - before, reply.refused.len() as u64);
                // What was accepted is allowed: inside 10.99.0.0/16, finite metrics.
                let st = s.child_table().get("h1");
                if let Some(report) = st.and_then(|c| c.last_report) {
                    for l in &report.subnets {
                        prop_assert!("10.99.0.0/16".parse::<Subnet>().unwrap().contains(&l.subnet));
                        prop_assert!(l.metrics.values().all(|v| v.is_finite()));
                    }
                }
            }
            Err(e) => {
                prop_assert!(after > before, "a refused report is counted ({e})");
                prop_assert!(Refusal::ALL.contains(&e.reason));
            }
        }
    }
}
