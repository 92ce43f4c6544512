//! The slr state update protocol: how the routers of the hierarchy (network -> AS -> site)
//! learn the load of their children, and which children they may choose from.
//!
//! Each router chooses, per new connection, a child (a lower router or a host server) by cost.
//! To compute that cost it needs the children's load: every child reports it to its parent(s)
//! every report interval over **gRPC over mutual TLS** against the operator CA. This crate is
//! that whole control protocol as a library; the `slr` daemon drives it from a tokio runtime on
//! its control thread and feeds what it learns into the routing core (which owns no socket).
//!
//! - [`pki`]: the operator CA and node certificates (`create_ca`, `issue`), and a node's
//!   [`Identity`] (CA, certificate, key) loaded from PEM files.
//! - [`parent`]: [`ParentServer`], the parent side: mutual TLS with refusals counted by reason,
//!   authorization of expected children, validation, the [`ChildTable`] the daemon reads.
//! - [`reporter`]: [`Reporter`], the child side: connects, says hello, reports every interval,
//!   reconnects with capped backoff.
//! - [`gateway`]: gateway tables (F12), the next-level gateways a router may choose from, from a
//!   static list or fetched over HTTPS from a network configuration site ([`GatewayFetcher`],
//!   [`serve_gateway_site`]).
//! - [`mirror`]: flow mirroring between the routers of one cluster (F17b): [`MirrorServer`]
//!   and [`MirrorSender`].
//! - [`whohas`]: WHOHAS between the routers of one cluster (F17c): [`WhohasAsker`], and the
//!   answering side that [`MirrorServer::with_whohas`] adds.
//! - [`proto`]: the generated protobuf messages and gRPC stubs (package `slr.control.v1`).
//!
//! The protocol, refusal reasons, gateway schema and measured costs are described in this
//! crate's `README.md`.

pub mod counting;
pub mod gateway;
pub mod mirror;
pub mod parent;
pub mod pki;
mod refusal;
pub mod reporter;
pub mod shortcut;
pub mod subnet;
mod tls;
pub mod whohas;

/// The generated protobuf messages and gRPC client and server of `slr.control.v1`
/// (`proto/slr_control_v1.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("slr.control.v1");
}

pub use counting::{ByteCounter, CountingStream};
pub use gateway::{
    serve_gateway_site, FetchError, FetcherConfig, FetcherCounters, GatewayEntry, GatewayError,
    GatewayFetcher, GatewayTable,
};
pub use mirror::{
    MirrorChange, MirrorFlow, MirrorSender, MirrorSenderConfig, MirrorSenderStats, MirrorServer,
    MirrorServerConfig, MirrorServerStats, MirrorSource, MirrorState, ReceivedBatch,
};
pub use parent::{
    ChildReport, ChildState, ChildTable, ExpectedChildren, ParentConfig, ParentCounters,
    ParentServer, ParentState, PeerInfo, Refusal, RefusedRequest,
};
pub use pki::{create_ca, issue, Identity, PkiError};
pub use reporter::{LoadSource, Reporter, ReporterConfig, ReporterCounters};
pub use shortcut::{
    ShortcutAnswer, ShortcutBatch, ShortcutQuestion, ShortcutSignal, SignalVerdict,
};
pub use subnet::{Subnet, SubnetError, SubnetLoad};
pub use whohas::{
    AskTiming, CheckedQuestion, FlowReply, Found, WhohasAsker, WhohasAskerConfig, WhohasPeerStats,
    WhohasRequest, WhohasServerConfig, WhohasServerStats, WhohasState,
};

/// Errors of the control protocol's servers and clients (setup and transport).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (bad certificate or key for this use).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A node name is not usable as a TLS server name (dNSName).
    #[error("invalid node name {0:?}: not a DNS name")]
    InvalidName(String),
    /// The gRPC transport failed (connection, TLS, HTTP/2); the message has the whole chain of
    /// causes.
    #[error("gRPC transport: {0}")]
    Transport(String),
    /// The peer answered a request with an error status.
    #[error("{rpc} refused: {code:?}: {message}")]
    Status {
        /// Which call.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// A call or a connection took longer than allowed.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl From<tonic::transport::Error> for ControlError {
    fn from(error: tonic::transport::Error) -> Self {
        ControlError::Transport(error_chain(&error))
    }
}

/// `error: cause: cause...`, skipping causes whose text the previous one already contains.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
