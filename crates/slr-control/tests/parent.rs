//! The parent side over real sockets: mutual TLS refusals, authorization, validation, delivery.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use slr_control::{ParentConfig, Refusal};
use tokio::io::AsyncWriteExt;

const AS1: (&str, &[&str]) = ("as1", &["10.99.0.0/16"]);
const AS2: (&str, &[&str]) = ("as2", &["10.99.0.0/16"]);

async fn parent(pki: &Pki) -> Parent {
    Parent::start(
        pki,
        "127.0.0.1:0".parse().unwrap(),
        &[AS1, AS2],
        ParentConfig::default(),
    )
    .await
}

#[tokio::test]
async fn valid_child_reports_arrive_with_all_metrics() {
    let pki = Pki::new();
    let parent = parent(&pki).await;
    let mut changes = parent.table.subscribe();
    let mut client = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let mut request = hello("as1");
    request.subnets = vec!["10.99.0.0/16".into()];
    let session = client.hello(request).await.unwrap().into_inner();
    assert_eq!(session.report_interval_ms, 1000);
    assert_eq!(session.silent_after, 3);
    assert_eq!(session.allowed_subnets, ["10.99.0.0/16"]);

    let metrics = [("cpu", 0.5), ("flows", 1200.0), ("load", -3.25)];
    let reply = client
        .report(report(
            session.session_id,
            1,
            vec![
                subnet_load("10.99.1.0/24", &metrics),
                subnet_load("10.99.2.0/24", &metrics[..1]),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 2);
    assert!(reply.refused.is_empty());
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();

    let state = parent.table.get("as1").unwrap();
    assert_eq!(state.level, "as");
    assert_eq!(state.reports, 1);
    let last = state.last_report.unwrap();
    assert_eq!(last.sequence, 1);
    assert_eq!(last.subnets.len(), 2);
    assert_eq!(last.subnets[0].subnet.to_string(), "10.99.1.0/24");
    assert_eq!(last.subnets[0].metrics.len(), 3);
    assert_eq!(last.subnets[0].metrics["flows"], 1200.0);
    assert_eq!(last.subnets[0].metrics["load"], -3.25);
    assert_eq!(last.subnets[1].metrics.len(), 1);
    assert_eq!(
        parent
            .table
            .live_children(Instant::now(), Duration::from_secs(1), 3),
        ["as1"]
    );

    let c = &parent.counters;
    assert_eq!(
        (
            c.hellos_accepted(),
            c.reports_accepted(),
            c.subnets_accepted()
        ),
        (1, 1, 2)
    );
    assert!(c.bytes_received() > 500, "{}", c.bytes_received());
    assert!(c.refusals().all(|(_, n)| n == 0));
    parent.stop().await;
}

/// A client whose certificate the parent refuses: the call fails and the reason is counted.
async fn refused_at_handshake(
    pki: &Pki,
    parent: &Parent,
    identity: slr_control::Identity,
    reason: Refusal,
) {
    // With TLS 1.3 the client may finish its side of the handshake before the parent refuses
    // it: the refusal shows on the first call then.
    let result = match client(&identity, parent.addr).await {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => c
            .hello(hello(identity.name()))
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
    };
    assert!(result.is_err(), "{reason} certificate accepted");
    wait_until(reason.as_str(), || parent.counters.refused(reason) == 1).await;
    assert_eq!(parent.counters.hellos_accepted(), 0);
    for (other, n) in parent.counters.refusals() {
        if other != reason {
            assert_eq!(n, 0, "{other} counted for a {reason} certificate");
        }
    }
    good_child_works(pki, parent, "as2").await;
}

#[tokio::test]
async fn certificate_of_another_ca_is_refused_unknown_ca() {
    let pki = Pki::new();
    let parent = parent(&pki).await;
    refused_at_handshake(
        &pki,
        &parent,
        pki.foreign_identity("as1"),
        Refusal::UnknownCa,
    )
    .await;
    parent.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused_expired() {
    let pki = Pki::new();
    let parent = parent(&pki).await;
    let now = SystemTime::now();
    let expired = pki.identity_valid("as1", now - 2 * HOUR, now - HOUR);
    refused_at_handshake(&pki, &parent, expired, Refusal::Expired).await;
    parent.stop().await;
}

#[tokio::test]
async fn future_certificate_is_refused_not_yet_valid() {
    let pki = Pki::new();
    let parent = parent(&pki).await;
    let now = SystemTime::now();
    let future = pki.identity_valid("as1", now + HOUR, now + 2 * HOUR);
    refused_at_handshake(&pki, &parent, future, Refusal::NotYetValid).await;
    parent.stop().await;
}

#[tokio::test]
async fn unexpected_names_are_refused() {
    let pki = Pki::new();
    let parent = parent(&pki).await;

    // A valid certificate of the operator CA, but not an expected child.
    let mut client9 = client(&pki.identity("as9"), parent.addr).await.unwrap();
    let status = client9.hello(hello("as9")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("unexpected_name"), "{status:?}");
    assert_eq!(parent.counters.refused(Refusal::UnexpectedName), 1);

    // An expected child's certificate, but a hello in another child's name.
    let mut client2 = client(&pki.identity("as2"), parent.addr).await.unwrap();
    let status = client2.hello(hello("as1")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(parent.counters.refused(Refusal::UnexpectedName), 2);
    assert!(parent.table.get("as1").is_none());

    // A child removed from the expected set at run time.
    good_child_works(&pki, &parent, "as1").await;
    let session = parent.table.get("as1").unwrap().session_id;
    assert!(parent.expected.remove("as1"));
    let mut client1 = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let status = client1
        .report(report(session, 2, vec![]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(parent.counters.refused(Refusal::UnexpectedName), 3);

    good_child_works(&pki, &parent, "as2").await;
    parent.stop().await;
}

#[tokio::test]
async fn foreign_subnet_is_refused_and_not_delivered() {
    let pki = Pki::new();
    let parent = Parent::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        &[("as1", &["10.99.0.0/16"]), ("as2", &["10.98.0.0/16"])],
        ParentConfig::default(),
    )
    .await;
    let mut client = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let session = client.hello(hello("as1")).await.unwrap().into_inner();
    let reply = client
        .report(report(
            session.session_id,
            1,
            vec![
                subnet_load("10.99.0.0/16", &[("load", 1.0)]),
                // as2's subnet, and a larger subnet covering as1's own.
                subnet_load("10.98.0.0/16", &[("load", 0.0)]),
                subnet_load("10.0.0.0/8", &[("load", 0.0)]),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    let refused: Vec<_> = reply
        .refused
        .iter()
        .map(|r| (r.subnet.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("10.98.0.0/16", "foreign_subnet"),
            ("10.0.0.0/8", "foreign_subnet")
        ]
    );
    assert_eq!(parent.counters.refused(Refusal::ForeignSubnet), 2);
    let delivered = parent
        .table
        .get("as1")
        .unwrap()
        .last_report
        .unwrap()
        .subnets;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].subnet.to_string(), "10.99.0.0/16");
    assert_eq!(parent.counters.subnets_accepted(), 1);
    parent.stop().await;
}

#[tokio::test]
async fn report_without_hello_is_refused_no_session() {
    let pki = Pki::new();
    let parent = parent(&pki).await;
    let mut c1 = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let status = c1
        .report(report(
            42,
            1,
            vec![subnet_load("10.99.0.0/16", &[("load", 1.0)])],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(parent.counters.refused(Refusal::NoSession), 1);

    // A stale session: replaced by a new hello.
    let old = c1
        .hello(hello("as1"))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let new = c1
        .hello(hello("as1"))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    assert_ne!(old, new);
    let status = c1.report(report(old, 1, vec![])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(parent.counters.refused(Refusal::NoSession), 2);

    // Another child's session.
    let mut client2 = client(&pki.identity("as2"), parent.addr).await.unwrap();
    let status = client2.report(report(new, 1, vec![])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(parent.counters.refused(Refusal::NoSession), 3);
    assert!(c1.report(report(new, 1, vec![])).await.is_ok());
    parent.stop().await;
}

/// A message with a field 3 that is not a valid SubnetLoad.
#[derive(Clone, PartialEq, prost::Message)]
struct GarbageReport {
    #[prost(uint64, tag = "1")]
    session_id: u64,
    #[prost(bytes = "vec", tag = "3")]
    subnets: Vec<u8>,
}

#[tokio::test]
async fn malformed_reports_are_refused() {
    let pki = Pki::new();
    let config = ParentConfig {
        max_subnets: 8,
        max_metrics: 4,
        ..ParentConfig::default()
    };
    let parent = Parent::start(&pki, "127.0.0.1:0".parse().unwrap(), &[AS1, AS2], config).await;
    let mut client = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let session = client
        .hello(hello("as1"))
        .await
        .unwrap()
        .into_inner()
        .session_id;

    // Bad entries are refused one by one; the good one is delivered.
    let long = "m".repeat(65);
    let reply = client
        .report(report(
            session,
            1,
            vec![
                subnet_load("10.99.1.0/24", &[("load", 1.0)]),
                subnet_load("10.99.2.0/33", &[("load", 1.0)]),
                subnet_load("10.99.3.1/24", &[("load", 1.0)]),
                subnet_load("not a subnet", &[("load", 1.0)]),
                subnet_load("10.99.4.0/24", &[("load", f64::INFINITY)]),
                subnet_load("10.99.5.0/24", &[("load", f64::NAN)]),
                subnet_load("10.99.6.0/24", &[("", 1.0)]),
                subnet_load("10.99.7.0/24", &[(long.as_str(), 1.0)]),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    assert_eq!(reply.refused.len(), 7);
    assert!(reply.refused.iter().all(|r| r.reason == "malformed"));
    assert_eq!(parent.counters.refused(Refusal::Malformed), 7);

    // Too many subnets, too many metrics.
    let many: Vec<_> = (0..9)
        .map(|i| subnet_load(&format!("10.99.{i}.0/24"), &[]))
        .collect();
    let status = client.report(report(session, 2, many)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(parent.counters.refused(Refusal::Malformed), 8);
    let metrics = [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0), ("e", 1.0)];
    let reply = client
        .report(report(
            session,
            3,
            vec![subnet_load("10.99.1.0/24", &metrics)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.refused.len()), (0, 1));
    assert_eq!(parent.counters.refused(Refusal::Malformed), 9);

    // A sequence that does not increase.
    let status = client.report(report(session, 3, vec![])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(parent.counters.refused(Refusal::Malformed), 10);

    // Bytes that are not a ReportRequest at all.
    let reporter =
        slr_control::Reporter::new(&pki.identity("as1"), "net", parent.addr, "as1", "as").unwrap();
    let mut raw = tonic::client::Grpc::new(reporter.connect_channel().await.unwrap());
    raw.ready().await.unwrap();
    let status = raw
        .unary::<GarbageReport, slr_control::proto::ReportReply, _>(
            tonic::Request::new(GarbageReport {
                session_id: session,
                subnets: vec![0xff, 0xff, 0xff],
            }),
            http::uri::PathAndQuery::from_static("/slr.control.v1.StateUpdate/Report"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    wait_until("malformed decode", || {
        parent.counters.refused(Refusal::Malformed) == 11
    })
    .await;

    let delivered = parent.table.get("as1").unwrap().last_report.unwrap();
    assert_eq!(delivered.sequence, 3);
    good_child_works(&pki, &parent, "as2").await;
    parent.stop().await;
}

#[tokio::test]
async fn oversized_report_is_refused() {
    let pki = Pki::new();
    let config = ParentConfig {
        max_message_bytes: 16 * 1024,
        max_subnets: 100_000,
        ..ParentConfig::default()
    };
    let parent = Parent::start(&pki, "127.0.0.1:0".parse().unwrap(), &[AS1, AS2], config).await;
    let mut client = client(&pki.identity("as1"), parent.addr).await.unwrap();
    let session = client
        .hello(hello("as1"))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let big: Vec<_> = (0..2000)
        .map(|i| {
            subnet_load(
                &format!("10.99.{}.{}/32", i / 256, i % 256),
                &[("cpu", 1.0), ("flows", 2.0)],
            )
        })
        .collect();
    let status = client.report(report(session, 1, big)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    wait_until("oversized", || {
        parent.counters.refused(Refusal::Oversized) == 1
    })
    .await;
    assert_eq!(parent.counters.reports_accepted(), 0);
    // The same connection still works.
    let reply = client
        .report(report(
            session,
            1,
            vec![subnet_load("10.99.0.0/24", &[("cpu", 1.0)])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    good_child_works(&pki, &parent, "as2").await;
    parent.stop().await;
}

#[tokio::test]
async fn garbage_and_silence_do_not_take_the_parent_down() {
    let pki = Pki::new();
    let config = ParentConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ParentConfig::default()
    };
    let parent = Parent::start(&pki, "127.0.0.1:0".parse().unwrap(), &[AS1, AS2], config).await;
    // Not TLS at all.
    let mut tcp = tokio::net::TcpStream::connect(parent.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Silent: connects and says nothing (handshake timeout).
    let _silent = tokio::net::TcpStream::connect(parent.addr).await.unwrap();
    wait_until("handshake failures", || {
        parent.counters.refused(Refusal::HandshakeFailed) == 2
    })
    .await;
    good_child_works(&pki, &parent, "as1").await;
    parent.stop().await;
}
