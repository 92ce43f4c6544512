//! Why the parent refuses a connection, a request or a subnet ([`Refusal`]), and the parent's
//! counters ([`ParentCounters`]): refusals by reason, accepted connections, hellos, reports
//! and subnets, bytes on the wire.
//!
//! Both the parent's server (`parent.rs`) and the client certificate verifier that counts the
//! certificates it refuses (`tls.rs`) count into them; they live here so that the TLS
//! configuration does not depend on the server that uses it. Public as
//! `slr_control::parent::{Refusal, ParentCounters}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::counting::ByteCounter;

/// Why the parent refused a connection, a request or a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The client certificate is not from the operator CA.
    UnknownCa,
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet.
    NotYetValid,
    /// The client certificate is wrong otherwise, or missing.
    BadCertificate,
    /// The TLS handshake failed for another reason (not TLS, protocol error, timeout).
    HandshakeFailed,
    /// The certificate's name is not an expected child, or differs from the Hello's name.
    UnexpectedName,
    /// A reported subnet is not inside the child's allowed subnets.
    ForeignSubnet,
    /// A Report without a valid session (no Hello, or a replaced session).
    NoSession,
    /// Invalid content: subnet syntax, metric names or values, limits, sequence.
    Malformed,
    /// A message over the size limit.
    Oversized,
    /// Over the peer's rate limit (WHOHAS questions).
    RateLimited,
    /// A shortcut signal for a flow the parent does not hold pinned to that child (F10).
    NotPinned,
}

impl Refusal {
    /// Every reason, in a stable order (for metrics).
    pub const ALL: [Refusal; 12] = [
        Refusal::UnknownCa,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::BadCertificate,
        Refusal::HandshakeFailed,
        Refusal::UnexpectedName,
        Refusal::ForeignSubnet,
        Refusal::NoSession,
        Refusal::Malformed,
        Refusal::Oversized,
        Refusal::RateLimited,
        Refusal::NotPinned,
    ];

    /// The reason's name in logs, metrics and replies (`unknown_ca`, `foreign_subnet`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownCa => "unknown_ca",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::UnexpectedName => "unexpected_name",
            Refusal::ForeignSubnet => "foreign_subnet",
            Refusal::NoSession => "no_session",
            Refusal::Malformed => "malformed",
            Refusal::Oversized => "oversized",
            Refusal::RateLimited => "rate_limited",
            Refusal::NotPinned => "not_pinned",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parent's counters: atomics, cheap to read for Prometheus at any time.
#[derive(Debug, Default)]
pub struct ParentCounters {
    connections_accepted: AtomicU64,
    connections_over_limit: AtomicU64,
    hellos_accepted: AtomicU64,
    reports_accepted: AtomicU64,
    subnets_accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    bytes: Arc<ByteCounter>,
}

impl ParentCounters {
    /// TLS connections that completed the handshake.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// TCP connections closed at once because `max_connections` were open.
    pub fn connections_over_limit(&self) -> u64 {
        self.connections_over_limit.load(Ordering::Relaxed)
    }

    /// Hellos accepted (sessions opened).
    pub fn hellos_accepted(&self) -> u64 {
        self.hellos_accepted.load(Ordering::Relaxed)
    }

    /// Reports accepted (possibly with some subnets refused).
    pub fn reports_accepted(&self) -> u64 {
        self.reports_accepted.load(Ordering::Relaxed)
    }

    /// Subnet loads accepted and delivered to the child table.
    pub fn subnets_accepted(&self) -> u64 {
        self.subnets_accepted.load(Ordering::Relaxed)
    }

    /// Refusals for `reason`: connections for the certificate reasons and `handshake_failed`,
    /// subnets for `foreign_subnet` and per-subnet `malformed`, requests otherwise.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Every refusal reason with its count, in [`Refusal::ALL`] order.
    pub fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|&r| (r, self.refused(r)))
    }

    /// Bytes received from children on the wire (TLS records, handshakes included).
    pub fn bytes_received(&self) -> u64 {
        self.bytes.read()
    }

    /// Bytes sent to children on the wire.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.written()
    }

    /// The shared byte counts of the parent's connections, for their [`CountingStream`]s.
    ///
    /// [`CountingStream`]: crate::CountingStream
    pub(crate) fn byte_counter(&self) -> &Arc<ByteCounter> {
        &self.bytes
    }

    pub(crate) fn count_connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_connection_over_limit(&self) {
        self.connections_over_limit.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_hello_accepted(&self) {
        self.hellos_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_report_accepted(&self) {
        self.reports_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_subnets_accepted(&self, n: u64) {
        self.subnets_accepted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_refusal(&self, reason: Refusal) {
        self.add_refusals(reason, 1);
    }

    pub(crate) fn add_refusals(&self, reason: Refusal, n: u64) {
        self.refused[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}
