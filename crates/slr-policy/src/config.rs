//! The `[cost]` section of a router's configuration and its compiled form.

use std::sync::Arc;

use serde::Deserialize;

use crate::expr::{self, CompiledExpr, Returns, KEY_F, KEY_G, KEY_OVERLOAD};
use crate::PolicyError;

/// The `[cost]` section: the operator's cost function F, aggregation G, and how the chosen band
/// is drawn. See the [crate documentation](crate) for the variables and the band.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// F: the cost `m_kj` of child `j` for virtual subnet `k` (CEL, a number, lower is better).
    pub f: String,
    /// G: what this router reports upward for subnet `k` (CEL, a number reported as `load`, or
    /// a map from metric name to number).
    pub g: String,
    /// Relative width of the near-equal band: children whose cost is within
    /// `max(band * min, band_abs)` of the lowest cost share new flows.
    pub band: f64,
    /// Absolute floor of the band's width (in cost units), for costs near zero.
    pub band_abs: f64,
    /// A child already in the band stays while its cost is within the band's width times
    /// `1 + hysteresis` of the lowest cost.
    pub hysteresis: f64,
    /// EWMA factor applied to every reported metric on each new report:
    /// `s = damping * new + (1 - damping) * s`. 1 means no smoothing.
    pub damping: f64,
    /// Optional CEL predicate over F's variables: when true for a child and subnet, the child
    /// takes no new best-effort flows there (high-priority subnets ignore it).
    pub overload: Option<String>,
    /// IANA time zone of `hour`, `minute` and `weekday`.
    pub timezone: String,
    /// Weight of the measured round-trip time in `r = cost + rtt_weight * rtt_ms`.
    pub rtt_weight: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            f: "s.load + r".to_owned(),
            g: "math.least(m)".to_owned(),
            band: 0.1,
            band_abs: 0.01,
            hysteresis: 0.5,
            damping: 0.5,
            overload: None,
            timezone: "UTC".to_owned(),
            rtt_weight: 0.01,
        }
    }
}

fn check(key: &'static str, value: f64, ok: bool, range: &'static str) -> Result<(), PolicyError> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(PolicyError::Range { key, value, range })
    }
}

impl PolicyConfig {
    /// Compiles the expressions once, checks them (syntax, unknown variables, and a test
    /// evaluation on sample inputs that catches type errors and a result of the wrong type),
    /// resolves the time zone and checks the numeric keys.
    pub fn compile(&self) -> Result<Policy, PolicyError> {
        check("cost.band", self.band, self.band >= 0.0, ">= 0")?;
        check("cost.band_abs", self.band_abs, self.band_abs >= 0.0, ">= 0")?;
        check(
            "cost.hysteresis",
            self.hysteresis,
            self.hysteresis >= 0.0,
            ">= 0",
        )?;
        check(
            "cost.damping",
            self.damping,
            self.damping > 0.0 && self.damping <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "cost.rtt_weight",
            self.rtt_weight,
            self.rtt_weight >= 0.0,
            ">= 0",
        )?;
        let timezone =
            jiff::tz::TimeZone::get(&self.timezone).map_err(|e| PolicyError::Timezone {
                name: self.timezone.clone(),
                message: e.to_string(),
            })?;
        let env = expr::environment();
        let f = expr::compile(&env, KEY_F, &self.f, Returns::Number)?;
        let g = expr::compile(&env, KEY_G, &self.g, Returns::NumberOrMap)?;
        let overload = self
            .overload
            .as_deref()
            .map(|o| expr::compile(&env, KEY_OVERLOAD, o, Returns::Bool))
            .transpose()?;
        Ok(Policy {
            env,
            f,
            g,
            overload,
            timezone,
            config: self.clone(),
        })
    }
}

/// A compiled `[cost]` section, ready for a [`Builder`](crate::Builder).
pub struct Policy {
    pub(crate) env: Arc<cel::Env>,
    pub(crate) f: CompiledExpr,
    pub(crate) g: CompiledExpr,
    pub(crate) overload: Option<CompiledExpr>,
    pub(crate) timezone: jiff::tz::TimeZone,
    pub(crate) config: PolicyConfig,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("f", &self.f.source)
            .field("g", &self.g.source)
            .field("overload", &self.overload.as_ref().map(|o| &o.source))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// The configuration it was compiled from.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The keys of the expressions evaluated directly, without the CEL interpreter, when they
    /// can be (`cost.f`, `cost.g`, `cost.overload`; see the crate documentation).
    pub fn evaluated_directly(&self) -> Vec<&'static str> {
        [Some(&self.f), Some(&self.g), self.overload.as_ref()]
            .into_iter()
            .flatten()
            .filter(|e| e.is_direct())
            .map(|e| e.key)
            .collect()
    }

    /// Turns direct evaluation on (the default) or off; off, every evaluation goes to the CEL
    /// interpreter (for comparisons and benchmarks: the results are the same).
    pub fn set_direct_evaluation(&mut self, on: bool) {
        self.f.set_direct(on);
        self.g.set_direct(on);
        if let Some(o) = &mut self.overload {
            o.set_direct(on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile_and_unknown_keys_are_refused() {
        let c: PolicyConfig = toml::from_str("").unwrap();
        assert_eq!(c, PolicyConfig::default());
        c.compile().unwrap();
        let err = toml::from_str::<PolicyConfig>("fee = 's.load'").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    fn refused(toml_text: &str) -> String {
        let c: PolicyConfig = toml::from_str(toml_text).unwrap();
        c.compile().unwrap_err().to_string()
    }

    #[test]
    fn invalid_expressions_are_refused_naming_the_key_and_the_expression() {
        let m = refused("f = 's.load +'");
        assert!(m.starts_with("cost.f: cannot parse \"s.load +\": "), "{m}");
        let m = refused("g = 'math.least(m'");
        assert!(
            m.starts_with("cost.g: cannot parse \"math.least(m\": "),
            "{m}"
        );
        let m = refused("overload = 's.load >'");
        assert!(m.starts_with("cost.overload: cannot parse"), "{m}");
        // unknown variables, per expression kind: m is G's, labels is F's
        let m = refused("f = 'm[0] + r'");
        assert!(
            m.starts_with("cost.f: \"m[0] + r\" refers to unknown variable \"m\""),
            "{m}"
        );
        let m = refused("g = 'math.least(m) + labels.x'");
        assert!(m.starts_with("cost.g: ") && m.contains("\"labels\""), "{m}");
        let m = refused("overload = 'load > 0.9'");
        assert!(
            m.starts_with("cost.overload: ") && m.contains("\"load\""),
            "{m}"
        );
        // type errors found by the test evaluation
        let m = refused("f = 's.load + 1'");
        assert!(
            m.starts_with("cost.f: \"s.load + 1\" fails on sample inputs"),
            "{m}"
        );
        let m = refused("f = 'child'");
        assert!(m.contains("returned a string, not a number"), "{m}");
        let m = refused("overload = 's.load'");
        assert!(
            m.starts_with("cost.overload: ") && m.contains("not a bool"),
            "{m}"
        );
        let m = refused("g = 'children'");
        assert!(
            m.starts_with("cost.g: ") && m.contains("not a number or a map"),
            "{m}"
        );
        let m = refused("g = '{\"load\": \"high\"}'");
        assert!(
            m.starts_with("cost.g: ") && m.contains("not a number"),
            "{m}"
        );
    }

    #[test]
    fn numeric_keys_and_the_timezone_are_checked() {
        assert!(refused("damping = 0.0").starts_with("cost.damping: 0 is out of range"));
        assert!(refused("band = -0.1").starts_with("cost.band: "));
        assert!(refused("timezone = 'Mars/Olympus'")
            .starts_with("cost.timezone: unknown time zone \"Mars/Olympus\""));
        let c: PolicyConfig = toml::from_str("timezone = 'Europe/Paris'").unwrap();
        c.compile().unwrap();
    }
}
