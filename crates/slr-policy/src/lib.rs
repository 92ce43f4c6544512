//! Operator cost functions (CEL) and the route tables a router builds from its children's
//! reports.
mod builder;
mod config;
mod error;
mod expr;
mod metrics;

pub use builder::{
    BuildCounters, BuildOutput, Builder, CandidateDetail, ChildInput, EntryDetail,
    ExcludedCandidate, Inputs, Priority, ServedSubnet,
};
pub use config::{Policy, PolicyConfig};
pub use error::PolicyError;
