//! The checking context: which file is read, and errors that name it, the key and the value.

use crate::duration::parse_duration;
use crate::ConfigError;
use slr_wire::Ipv4Cidr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What every check needs: the file, for its errors.
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
}

impl Ctx<'_> {
    /// A refused value of `key`.
    pub(crate) fn err(
        &self,
        key: &str,
        value: impl std::fmt::Debug,
        why: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value: format!("{value:?}"),
            why: why.to_string(),
        }
    }

    /// An IPv4 prefix with its host bits zero.
    pub(crate) fn cidr(&self, key: &str, v: &str) -> Result<Ipv4Cidr, ConfigError> {
        v.parse().map_err(|_| {
            self.err(
                key,
                v,
                "not an IPv4 prefix such as 10.99.0.0/24 (host bits must be zero)",
            )
        })
    }

    /// A list of prefixes, each key indexed (`key[2]`).
    pub(crate) fn cidrs(&self, key: &str, list: &[String]) -> Result<Vec<Ipv4Cidr>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, v)| self.cidr(&format!("{key}[{i}]"), v))
            .collect()
    }

    /// An IPv4 address.
    pub(crate) fn addr(&self, key: &str, v: &str) -> Result<Ipv4Addr, ConfigError> {
        v.parse()
            .map_err(|_| self.err(key, v, "not an IPv4 address"))
    }

    /// A duration with its unit.
    pub(crate) fn duration(&self, key: &str, v: &str) -> Result<Duration, ConfigError> {
        parse_duration(v)
            .ok_or_else(|| self.err(key, v, "not a duration such as \"500ms\", \"5s\", \"2m\""))
    }

    /// An address and port.
    pub(crate) fn socket(&self, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| self.err(key, v, "not an address:port such as 127.0.0.1:9464"))
    }

    /// A path from the file, relative to the file's directory.
    pub(crate) fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// Checks an interface name (the kernel's limit is 15 characters).
pub(crate) fn ifname(c: &Ctx, key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 {
        return Err(c.err(key, name, "an interface name has 1 to 15 characters"));
    }
    Ok(())
}
