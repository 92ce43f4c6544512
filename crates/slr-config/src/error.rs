//! The one error type of configuration files: every variant names the file.

use std::path::PathBuf;

/// Why a configuration file was refused. Its message names the file, and for a refused value
/// the key (`virtual_hosts[0].policy`) and the value, so that an operator can fix it without
/// reading code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {message}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// Not TOML, an unknown key or a value of the wrong type (the message has line and
    /// column).
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The TOML reader's message.
        message: String,
    },
    /// A key whose value is refused.
    #[error("{}: {key}: {why} (value {value})", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted path of the key, `next_hops[2].address`.
        key: String,
        /// The value, as written (`"10.200.3"`, `0`).
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// An operator expression of `[cost]` that does not compile (the message names the key
    /// and the expression).
    #[error("{}: {message}", file.display())]
    Cost {
        /// The file.
        file: PathBuf,
        /// slr-policy's message.
        message: String,
    },
}

impl ConfigError {
    /// The key at fault, for [`ConfigError::Invalid`].
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
