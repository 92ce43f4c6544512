//! Runtime overrides: what an operator changed with `slr ctl` on top of the file (a next hop's
//! weight, a drain), kept in a small JSON file of their own so that they survive reloads and
//! restarts, and shown and cleared with `slr ctl`.
//!
//! The file stays the operator's intent for the long run; an override is the exception of the
//! moment ("drain h2 while we patch it"). They never edit the file: a reload reads the file
//! again and applies the overrides over it, so a drained host stays drained across reloads
//! (keepalived users lost exactly this) until `slr ctl R undrain h2` or `slr ctl R clear h2`.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use slr_core::router::RouterConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// The overrides of one router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Per next hop name.
    #[serde(default)]
    pub next_hops: BTreeMap<String, NextHopOverride>,
}

/// What is overridden for one next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextHopOverride {
    /// The weight set with `slr ctl R weight NAME N`, in place of the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Drained with `slr ctl R drain NAME`: no new flows whatever the weight; its flows go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

impl NextHopOverride {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && !self.drained
    }
}

impl Overrides {
    /// Reads the overrides file; a file that does not exist yet holds none.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ConfigError::Read {
                    file: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        };
        serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
            file: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Writes the overrides file whole (a new file renamed over the old one: a crash leaves
    /// the old or the new, never half of one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.new");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, path)
    }

    /// Sets a next hop's weight.
    pub fn set_weight(&mut self, next_hop: &str, weight: u32) {
        self.next_hops
            .entry(next_hop.to_owned())
            .or_default()
            .weight = Some(weight);
    }

    /// Drains a next hop (or lifts its drain), keeping any weight override.
    pub fn set_drained(&mut self, next_hop: &str, drained: bool) {
        let o = self.next_hops.entry(next_hop.to_owned()).or_default();
        o.drained = drained;
        if o.is_empty() {
            self.next_hops.remove(next_hop);
        }
    }

    /// Clears the overrides of one next hop, or all (`None`); says whether any was there.
    pub fn clear(&mut self, next_hop: Option<&str>) -> bool {
        match next_hop {
            Some(n) => self.next_hops.remove(n).is_some(),
            None => {
                let any = !self.next_hops.is_empty();
                self.next_hops.clear();
                any
            }
        }
    }

    /// The override of a next hop, if it has one.
    pub fn get(&self, next_hop: &str) -> Option<&NextHopOverride> {
        self.next_hops.get(next_hop)
    }

    /// Applies the overrides to a core configuration: a drained next hop gets weight 0 (no new
    /// flows; established flows keep it), an overridden weight replaces the file's. Overrides
    /// of names the configuration does not have wait, unapplied, until such a next hop exists
    /// again (a gateway table may bring it back).
    pub fn apply(&self, core: &mut RouterConfig) {
        for n in &mut core.next_hops {
            if let Some(o) = self.next_hops.get(&n.name) {
                if let Some(w) = o.weight {
                    n.weight = w;
                }
                if o.drained {
                    n.weight = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slr_core::router::NextHopConfig;
    use std::net::Ipv4Addr;

    fn core() -> RouterConfig {
        let mut c = RouterConfig::new(Ipv4Addr::new(10, 0, 0, 1));
        for (i, name) in ["h1", "h2", "h3"].iter().enumerate() {
            c.next_hops.push(NextHopConfig {
                name: (*name).to_owned(),
                address: Ipv4Addr::new(10, 0, 1, i as u8 + 1),
                weight: 2,
            });
        }
        c
    }

    fn weights(c: &RouterConfig) -> Vec<u32> {
        c.next_hops.iter().map(|n| n.weight).collect()
    }

    #[test]
    fn drain_wins_over_weight_and_undrain_restores_the_override() {
        let mut o = Overrides::default();
        o.set_weight("h1", 5);
        o.set_drained("h1", true);
        o.set_drained("h3", true);
        o.set_weight("gone", 9);
        let mut c = core();
        o.apply(&mut c);
        assert_eq!(weights(&c), [0, 2, 0]);
        o.set_drained("h1", false);
        o.set_drained("h3", false);
        let mut c = core();
        o.apply(&mut c);
        assert_eq!(weights(&c), [5, 2, 2]);
        assert!(
            o.get("h3").is_none(),
            "an undrained next hop without a weight has no override"
        );
        assert!(o.clear(Some("h1")));
        assert!(!o.clear(Some("h1")));
        assert!(o.clear(None));
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn saved_overrides_load_back_and_a_missing_file_holds_none() {
        let dir = std::env::temp_dir().join(format!("slr-overrides-{}", std::process::id()));
        let path = dir.join("r1.overrides.json");
        assert_eq!(Overrides::load(&path).unwrap(), Overrides::default());
        let mut o = Overrides::default();
        o.set_drained("h2", true);
        o.set_weight("h3", 0);
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), o);
        std::fs::write(&path, "{\"next_hops\": {\"h2\": {\"drianed\": true}}}").unwrap();
        let e = Overrides::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("r1.overrides.json") && e.contains("drianed"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
