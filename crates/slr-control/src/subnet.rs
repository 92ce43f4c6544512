//! IPv4 subnets as they appear in reports, hellos and gateway tables: `"a.b.c.d/len"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet: a network address with no host bits set and a prefix length of 0..=32.
///
/// Parsed strictly from `"a.b.c.d/len"`: `"10.1.2.3/16"` (host bits set) and `"10.1.0.0"` (no
/// length) are refused, so that two routers never read the same text differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// Why a subnet was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// The text is not of the form `a.b.c.d/len`.
    #[error("invalid subnet {0:?}: expected a.b.c.d/len")]
    Syntax(String),
    /// The prefix length is over 32.
    #[error("invalid subnet {0:?}: prefix length over 32")]
    PrefixLength(String),
    /// Bits below the prefix length are set in the address.
    #[error("invalid subnet {text:?}: host bits set (did you mean {suggestion}?)")]
    HostBits {
        /// The subnet as written.
        text: String,
        /// The same address with the host bits cleared.
        suggestion: String,
    },
}

impl Subnet {
    /// The subnet `network/prefix_len`; refused if `prefix_len > 32` or host bits are set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        let text = || format!("{network}/{prefix_len}");
        if prefix_len > 32 {
            return Err(SubnetError::PrefixLength(text()));
        }
        let subnet = Subnet {
            network,
            prefix_len,
        };
        if u32::from(network) & !subnet.netmask() != 0 {
            let cleared = Ipv4Addr::from(u32::from(network) & subnet.netmask());
            return Err(SubnetError::HostBits {
                text: text(),
                suggestion: format!("{cleared}/{prefix_len}"),
            });
        }
        Ok(subnet)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, 0..=32.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as a host-order integer.
    pub fn netmask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// Whether `other` lies entirely inside this subnet (a subnet contains itself).
    pub fn contains(&self, other: &Subnet) -> bool {
        other.prefix_len >= self.prefix_len
            && u32::from(other.network) & self.netmask() == u32::from(self.network)
    }

    /// Whether `addr` is in this subnet.
    pub fn contains_addr(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.netmask() == u32::from(self.network)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(text: &str) -> Result<Self, SubnetError> {
        let syntax = || SubnetError::Syntax(text.chars().take(64).collect());
        // "255.255.255.255/32" is the longest valid form.
        if text.len() > 18 {
            return Err(syntax());
        }
        let (addr, len) = text.split_once('/').ok_or_else(syntax)?;
        let network = Ipv4Addr::from_str(addr).map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix_len: u8 = len.parse().map_err(|_| syntax())?;
        Subnet::new(network, prefix_len)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The load of one subnet a child serves: named metrics (`cpu`, `flows`, `load`, ...).
///
/// The load "can be anything": the protocol carries any finite metrics the operator's cost
/// function uses; names are 1..=64 characters of `[A-Za-z0-9_.:-]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetLoad {
    /// The subnet.
    pub subnet: Subnet,
    /// Metric name -> value.
    pub metrics: BTreeMap<String, f64>,
}

impl SubnetLoad {
    /// A subnet's load from `(name, value)` pairs.
    pub fn new<'a>(subnet: Subnet, metrics: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        SubnetLoad {
            subnet,
            metrics: metrics
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: Subnet = "10.99.0.0/16".parse().unwrap();
        assert_eq!(s.network(), Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(s.prefix_len(), 16);
        assert_eq!(s.to_string(), "10.99.0.0/16");
        assert_eq!("0.0.0.0/0".parse::<Subnet>().unwrap().netmask(), 0);
        assert_eq!("1.2.3.4/32".parse::<Subnet>().unwrap().netmask(), u32::MAX);
    }

    #[test]
    fn refuses_bad_syntax() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "010.0.0.0/8",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "10.0.0.0/255",
            "hello/world",
            "10.0.0.0/8000000000000000000",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(SubnetError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Subnet>(),
            Err(SubnetError::PrefixLength("10.0.0.0/33".into()))
        );
        assert_eq!(
            "10.1.2.3/16".parse::<Subnet>(),
            Err(SubnetError::HostBits {
                text: "10.1.2.3/16".into(),
                suggestion: "10.1.0.0/16".into()
            })
        );
    }

    #[test]
    fn containment() {
        let a: Subnet = "10.99.0.0/16".parse().unwrap();
        let b: Subnet = "10.99.4.0/24".parse().unwrap();
        let c: Subnet = "10.98.0.0/24".parse().unwrap();
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(a.contains(&a));
        assert!(a.contains(&b));
        assert!(!b.contains(&a));
        assert!(!a.contains(&c));
        assert!(all.contains(&a));
        assert!(a.contains_addr(Ipv4Addr::new(10, 99, 255, 1)));
        assert!(!a.contains_addr(Ipv4Addr::new(10, 100, 0, 1)));
    }
}
