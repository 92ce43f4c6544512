//! A child's smoothed metrics for one subnet, stored compactly and shown to CEL as the map `s`.
//!
//! A build evaluates F about once per (subnet, candidate): 100,000 times for 10,000 subnets of
//! 10 candidates, each on a different report. As `cel`'s own map (a `HashMap` of boxed keys
//! and boxed values), each report is half a dozen scattered allocations and reading `s.load`
//! costs several cache misses; here a report is one small vector of (shared name, value)
//! pairs, and the names are interned (shared by every report that uses them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::traits::{self, Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{CelBool, CelDouble, CelInt, CelString, CelUInt, Type, MAP_TYPE};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::ExecutionError;
use smallvec::SmallVec;

/// Metric names shared by every report that uses them.
#[derive(Debug, Default)]
pub(crate) struct Interner(HashMap<Arc<str>, ()>, Vec<Arc<str>>);

impl Interner {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        // Reports use the same few names over and over: look at the recent ones first.
        if let Some(k) = self.1.iter().find(|k| &***k == name) {
            return Arc::clone(k);
        }
        let k = match self.0.get_key_value(name) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k: Arc<str> = Arc::from(name);
                self.0.insert(Arc::clone(&k), ());
                k
            }
        };
        if self.1.len() == 8 {
            self.1.remove(0);
        }
        self.1.push(Arc::clone(&k));
        k
    }

    /// Forgets names no report uses any more.
    pub fn collect_garbage(&mut self) {
        self.1.clear();
        self.0.retain(|k, _| Arc::strong_count(k) > 1);
    }
}

/// Smoothed metrics of one report: a CEL `map(string, double)`.
///
/// It behaves as a map built by `cel` itself (`s.load`, `s["load"]`, `has(s.load)`,
/// `"load" in s`, `size(s)`, comprehensions over its keys, `==` with another map), with one
/// exception: `cel`'s own map type only compares equal to its own type, so a map *literal* on
/// the left of `==` (`{"load": 1.0} == s`) is false; `s == {"load": 1.0}` works.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    /// (name, value), sorted by name, names unique; inline up to a typical report's size, so
    /// that reading a metric touches the report itself and the (shared, hot) names only.
    entries: SmallVec<[(Arc<str>, CelDouble); 4]>,
    /// The keys as CEL strings, made on first iteration only.
    keys: OnceLock<Vec<CelString<'static>>>,
}

impl Metrics {
    /// Metrics from a report (non-finite values are left out).
    pub fn new(report: &BTreeMap<String, f64>, names: &mut Interner) -> Self {
        Metrics {
            entries: report
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| (names.get(k), CelDouble::from(*v)))
                .collect(),
            keys: OnceLock::new(),
        }
    }

    /// Smooths a new report in: a metric already known becomes `alpha * new + (1 - alpha) *
    /// old`, a new one takes the new value, one no longer reported is dropped. Non-finite
    /// values are left out.
    pub fn smooth(&mut self, report: &BTreeMap<String, f64>, alpha: f64, names: &mut Interner) {
        let finite = || report.iter().filter(|(_, v)| v.is_finite());
        let same_names = finite().count() == self.entries.len()
            && finite()
                .zip(&self.entries)
                .all(|((k, _), (n, _))| k.as_str() == &**n);
        if same_names {
            for ((_, &v), (_, old)) in finite().zip(self.entries.iter_mut()) {
                *old = CelDouble::from(alpha * v + (1.0 - alpha) * *old.inner());
            }
            return;
        }
        let entries = finite()
            .map(|(k, &v)| match self.position(k) {
                Some(i) => {
                    let (n, old) = &self.entries[i];
                    (
                        Arc::clone(n),
                        CelDouble::from(alpha * v + (1.0 - alpha) * *old.inner()),
                    )
                }
                None => (names.get(k), CelDouble::from(v)),
            })
            .collect();
        *self = Metrics {
            entries,
            keys: OnceLock::new(),
        };
    }

    fn position(&self, name: &str) -> Option<usize> {
        // Reports carry a handful of metrics: a linear scan beats hashing.
        self.entries.iter().position(|(n, _)| &**n == name)
    }

    /// The value of a metric.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.find(name).map(|v| *v.inner())
    }

    /// The value of a metric, as the CEL value.
    pub fn find(&self, name: &str) -> Option<&CelDouble> {
        self.position(name).map(|i| &self.entries[i].1)
    }

    /// The metrics as an ordinary map.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.entries
            .iter()
            .map(|(n, v)| (n.to_string(), *v.inner()))
            .collect()
    }

    fn keys(&self) -> &[CelString<'static>] {
        self.keys.get_or_init(|| {
            self.entries
                .iter()
                .map(|(n, _)| CelString::from(n.to_string()))
                .collect()
        })
    }
}

/// The error `cel`'s own map gives for a key it does not have, or cannot have.
fn missing(key: &dyn Val) -> ExecutionError {
    let text = if let Some(s) = key.downcast_ref::<CelString>() {
        s.inner().to_owned()
    } else if let Some(i) = key.downcast_ref::<CelInt>() {
        i.inner().to_string()
    } else if let Some(u) = key.downcast_ref::<CelUInt>() {
        u.inner().to_string()
    } else if let Some(d) = key.downcast_ref::<CelDouble>() {
        d.inner().to_string()
    } else if let Some(b) = key.downcast_ref::<CelBool>() {
        b.inner().to_string()
    } else {
        return ExecutionError::UnexpectedType {
            got: key.get_type().name().to_owned(),
            want: "map key".to_owned(),
        };
    };
    ExecutionError::no_such_key(&text)
}

impl Val for Metrics {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn into_indexer<'v>(self: Box<Self>) -> Option<Box<dyn Indexer + 'v>>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }
    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        if let Some(o) = other.downcast_ref::<Metrics>() {
            return self.entries.len() == o.entries.len()
                && self
                    .entries
                    .iter()
                    .zip(&o.entries)
                    .all(|((a, x), (b, y))| a == b && x.equals(y));
        }
        let (Some(size), Some(idx)) = (other.as_sizer(), other.as_indexer()) else {
            return false;
        };
        other.get_type() == &MAP_TYPE
            && usize::try_from(*size.size().inner()) == Ok(self.entries.len())
            && self.entries.iter().all(|(n, v)| {
                let key = CelString::from(&**n);
                idx.get(&key).is_ok_and(|ov| v.equals(ov.as_ref()))
            })
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for Metrics {}

impl Indexer for Metrics {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        idx.downcast_ref::<CelString>()
            .and_then(|k| self.find(k.inner()))
            .map(|v| CowVal::Borrowed(v as &dyn Val))
            .ok_or_else(|| missing(idx))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Indexer::get(&*self, idx).map(CowVal::into_owned)
    }
}

impl Container for Metrics {
    fn contains(&self, key: &dyn Val) -> Result<bool, ExecutionError> {
        if let Some(k) = key.downcast_ref::<CelString>() {
            Ok(self.find(k.inner()).is_some())
        } else if key.downcast_ref::<CelInt>().is_some()
            || key.downcast_ref::<CelUInt>().is_some()
            || key.downcast_ref::<CelDouble>().is_some()
            || key.downcast_ref::<CelBool>().is_some()
        {
            Ok(false)
        } else {
            Err(ExecutionError::UnsupportedKeyType(
                key.try_into().unwrap_or(cel::Value::Null),
            ))
        }
    }
}

struct Keys<'b>(std::slice::Iter<'b, CelString<'static>>);

impl<'b, 'v> traits::Iterator<'b, 'v> for Keys<'b> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|k| k as &dyn Val)
    }
}

impl Iterable for Metrics {
    fn iter<'b, 'v>(&'b self) -> Box<dyn traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(Keys(self.keys().iter()))
    }
}

impl Sizer for Metrics {
    fn size(&self) -> CelInt {
        CelInt::from(self.entries.len() as i64)
    }
}

impl Zeroer for Metrics {
    fn is_zero_value(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `m` as `cel`'s own map, for comparisons in tests.
#[cfg(test)]
pub(crate) fn as_cel_map(m: &Metrics) -> cel::common::types::CelMap<'static> {
    use cel::common::types::{CelMap, CelMapKey};
    let m: HashMap<CelMapKey<'static>, Box<dyn Val>> = m
        .to_map()
        .iter()
        .map(|(k, v)| {
            (
                CelMapKey::from(k.clone()),
                Box::new(CelDouble::from(*v)) as Box<dyn Val>,
            )
        })
        .collect();
    CelMap::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_an_ewma_per_metric() {
        let mut names = Interner::default();
        let r = |l: f64, c: Option<f64>| {
            let mut m = BTreeMap::from([("load".to_owned(), l)]);
            if let Some(c) = c {
                m.insert("cpu".to_owned(), c);
            }
            m
        };
        let mut m = Metrics::new(&r(1.0, None), &mut names);
        m.smooth(&r(0.0, None), 0.25, &mut names);
        assert_eq!(m.get("load"), Some(0.75));
        m.smooth(&r(1.0, Some(0.5)), 0.5, &mut names);
        assert_eq!((m.get("load"), m.get("cpu")), (Some(0.875), Some(0.5)));
        m.smooth(&r(f64::NAN, Some(1.0)), 0.5, &mut names);
        assert_eq!((m.get("load"), m.get("cpu")), (None, Some(0.75)));
        drop(m);
        names.collect_garbage();
        assert!(names.0.is_empty());
    }
}
