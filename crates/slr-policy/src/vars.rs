//! The variables an expression sees: their names, which of them F, the overload predicate and
//! G may use, and their values for one evaluation of F or of the overload predicate
//! ([`FVars`]), converted once per build and borrowed by every evaluation.
//!
//! Both ways of evaluating F read these values: the interpreter through [`FVars`]'
//! [`VariableResolver`] (see `expr.rs`), the direct evaluation through its fields (see
//! `direct.rs`). They live here so that neither of those two modules depends on the other for
//! them.

use std::collections::{BTreeMap, HashMap};

use cel::common::types::{CelDouble, CelInt, CelMap, CelMapKey, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;

use crate::metrics::Metrics;

/// A variable an expression may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    S,
    R,
    Cost,
    Rtt,
    Labels,
    Child,
    Subnet,
    Group,
    Priority,
    Hour,
    Minute,
    Weekday,
    Now,
    M,
    Children,
}

impl Var {
    const ALL: [Var; 15] = [
        Var::S,
        Var::R,
        Var::Cost,
        Var::Rtt,
        Var::Labels,
        Var::Child,
        Var::Subnet,
        Var::Group,
        Var::Priority,
        Var::Hour,
        Var::Minute,
        Var::Weekday,
        Var::Now,
        Var::M,
        Var::Children,
    ];

    /// The variable's name in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Var::S => "s",
            Var::R => "r",
            Var::Cost => "cost",
            Var::Rtt => "rtt",
            Var::Labels => "labels",
            Var::Child => "child",
            Var::Subnet => "subnet",
            Var::Group => "group",
            Var::Priority => "priority",
            Var::Hour => "hour",
            Var::Minute => "minute",
            Var::Weekday => "weekday",
            Var::Now => "now",
            Var::M => "m",
            Var::Children => "children",
        }
    }

    /// The variable of that name, if any.
    pub fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The variable's bit in a set of variables.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The variables of F and of the overload predicate.
pub(crate) const F_VARS: &[Var] = &[
    Var::S,
    Var::R,
    Var::Cost,
    Var::Rtt,
    Var::Labels,
    Var::Child,
    Var::Subnet,
    Var::Group,
    Var::Priority,
    Var::Hour,
    Var::Minute,
    Var::Weekday,
    Var::Now,
];

/// The variables of G.
pub(crate) const G_VARS: &[Var] = &[
    Var::S,
    Var::R,
    Var::M,
    Var::Children,
    Var::Subnet,
    Var::Hour,
    Var::Minute,
    Var::Weekday,
    Var::Now,
];

/// A child's labels as a CEL `map(string, string)`.
pub(crate) fn labels_val(labels: &BTreeMap<String, String>) -> CelMap<'static> {
    let m: HashMap<CelMapKey<'static>, Box<dyn Val>> = labels
        .iter()
        .map(|(k, v)| {
            (
                CelMapKey::from(k.clone()),
                Box::new(CelString::from(v.clone())) as Box<dyn Val>,
            )
        })
        .collect();
    CelMap::from(m)
}

/// The per-child variables of F, converted once per build.
#[derive(Debug)]
pub(crate) struct ChildVals {
    name: CelString<'static>,
    cost: CelDouble,
    rtt: CelDouble,
    r: CelDouble,
    labels: CelMap<'static>,
}

impl ChildVals {
    /// The values for a child.
    pub fn new(name: &str, cost: f64, rtt: f64, r: f64, labels: CelMap<'static>) -> Self {
        ChildVals {
            name: CelString::from(name.to_owned()),
            cost: CelDouble::from(cost),
            rtt: CelDouble::from(rtt),
            r: CelDouble::from(r),
            labels,
        }
    }

    /// The routing cost `r`.
    pub fn r(&self) -> f64 {
        *self.r.inner()
    }

    /// The static cost `cost`.
    pub fn cost(&self) -> f64 {
        *self.cost.inner()
    }

    /// The round-trip time `rtt`.
    pub fn rtt(&self) -> f64 {
        *self.rtt.inner()
    }

    /// A label.
    pub fn label(&self, name: &str) -> Option<&str> {
        let key = CelString::from(name);
        match self.labels.as_indexer()?.get(&key).ok()? {
            CowVal::Borrowed(v) => v.downcast_ref::<CelString>().map(|s| s.inner()),
            CowVal::Owned(_) => None,
        }
    }

    /// The name as a CEL value.
    pub fn name(&self) -> &CelString<'static> {
        &self.name
    }
}

/// The time variables of one build.
#[derive(Debug)]
pub(crate) struct TimeVals {
    now: CelInt,
    hour: CelInt,
    minute: CelInt,
    weekday: CelInt,
}

impl TimeVals {
    /// The values for a wall time.
    pub fn new(now: i64, hour: i64, minute: i64, weekday: i64) -> Self {
        TimeVals {
            now: CelInt::from(now),
            hour: CelInt::from(hour),
            minute: CelInt::from(minute),
            weekday: CelInt::from(weekday),
        }
    }

    /// `hour`.
    pub fn hour(&self) -> i64 {
        *self.hour.inner()
    }

    /// `minute`.
    pub fn minute(&self) -> i64 {
        *self.minute.inner()
    }

    /// `weekday`.
    pub fn weekday(&self) -> i64 {
        *self.weekday.inner()
    }

    /// `now`.
    pub fn now(&self) -> i64 {
        *self.now.inner()
    }

    /// The time variable of that name, if it is one.
    pub fn resolve(&self, name: &str) -> Option<&dyn Val> {
        Some(match name {
            "hour" => &self.hour,
            "minute" => &self.minute,
            "weekday" => &self.weekday,
            "now" => &self.now,
            _ => return None,
        })
    }
}

/// The variables of one evaluation of F or of the overload predicate, all borrowed.
pub(crate) struct FVars<'a> {
    /// The child's smoothed metrics for the subnet (a [`Metrics`]; any CEL map in tests).
    pub s: &'a dyn Val,
    /// The child's other variables.
    pub child: &'a ChildVals,
    /// The entry's subnet.
    pub subnet: &'a CelString<'static>,
    /// The entry's client group.
    pub group: &'a CelString<'static>,
    /// The subnet's priority class.
    pub priority: &'a CelString<'static>,
    /// Time of the build.
    pub time: &'a TimeVals,
}

impl VariableResolver for FVars<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(field) = name.strip_prefix("s.") {
            // `s.load` is first looked up as the qualified name "s.load": answering it here is
            // what selecting `load` on `s` would give, without the interpreter's detour.
            let m = self.s.downcast_ref::<Metrics>()?;
            return m.find(field).map(|v| CowVal::Borrowed(v as &dyn Val));
        }
        let v: &dyn Val = match name {
            "s" => self.s,
            "r" => &self.child.r,
            "cost" => &self.child.cost,
            "rtt" => &self.child.rtt,
            "labels" => &self.child.labels,
            "child" => &self.child.name,
            "subnet" => self.subnet,
            "group" => self.group,
            "priority" => self.priority,
            _ => return self.time.resolve(name).map(CowVal::Borrowed),
        };
        Some(CowVal::Borrowed(v))
    }
}
