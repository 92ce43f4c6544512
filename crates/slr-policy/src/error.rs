//! Why a `[cost]` section is refused.

/// A `[cost]` section that cannot be compiled. Every variant names the configuration key at
/// fault (`cost.f`, `cost.g`, `cost.overload`, `cost.timezone`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The expression does not parse as CEL.
    #[error("{key}: cannot parse {expr:?}: {message}")]
    Parse {
        /// The configuration key (`cost.f`, `cost.g` or `cost.overload`).
        key: &'static str,
        /// The expression as written.
        expr: String,
        /// The CEL parser's message.
        message: String,
    },
    /// The expression refers to a variable that does not exist for it.
    #[error("{key}: {expr:?} refers to unknown variable {name:?} (known here: {known})")]
    UnknownVariable {
        /// The configuration key.
        key: &'static str,
        /// The expression as written.
        expr: String,
        /// The unknown name.
        name: String,
        /// The variables the expression may use, comma separated.
        known: String,
    },
    /// A test evaluation on sample inputs failed with a type error (for example `s.load + 1`:
    /// CEL does not add a double and an int) or returned a value of the wrong type.
    #[error("{key}: {expr:?} {message}")]
    Type {
        /// The configuration key.
        key: &'static str,
        /// The expression as written.
        expr: String,
        /// What went wrong, with the sample inputs that showed it.
        message: String,
    },
    /// `cost.timezone` is not an IANA time zone name known to the bundled database.
    #[error("cost.timezone: unknown time zone {name:?}: {message}")]
    Timezone {
        /// The name as written.
        name: String,
        /// The time zone database's message.
        message: String,
    },
    /// A numeric key is out of its range.
    #[error("{key}: {value} is out of range (must be {range})")]
    Range {
        /// The configuration key.
        key: &'static str,
        /// The value as configured.
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
}
