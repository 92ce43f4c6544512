//! The operator's CEL expressions: compiling, checking and evaluating them.
//!
//! Evaluation does not go through `cel::Context::add_variable` (which would copy every value
//! into a fresh map per evaluation): a [`VariableResolver`] hands the interpreter borrowed,
//! pre-converted values instead, so an evaluation of F allocates only what the expression
//! itself computes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::traits::{
    Adder, Comparer, Container, Divider, Indexer, Iterable, Modder, Multiplier, Negator, Sizer,
    Subtractor, Zeroer,
};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelString, CelUInt, Type, DYN_TYPE,
    LIST_TYPE,
};
use cel::common::value::{Builtin, BuiltinRef, CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program};

use crate::direct::Direct;
use crate::metrics::{Interner, Metrics};
use crate::PolicyError;

/// The configuration key of F.
pub(crate) const KEY_F: &str = "cost.f";
/// The configuration key of G.
pub(crate) const KEY_G: &str = "cost.g";
/// The configuration key of the overload predicate.
pub(crate) const KEY_OVERLOAD: &str = "cost.overload";

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

    fn name(self) -> &'static str {
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

    fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The variables of F and of the overload predicate.
const F_VARS: &[Var] = &[
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
const G_VARS: &[Var] = &[
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

/// Identifiers that are not variables but may appear as such in the syntax tree: function
/// namespaces (`math.ceil(x)` is a call on the identifier `math`) and type names
/// (`type(x) == double`).
const NON_VARIABLES: &[&str] = &[
    "math",
    "lists",
    "strings",
    "cel",
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// What an expression must evaluate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returns {
    /// A number (F).
    Number,
    /// A boolean (the overload predicate).
    Bool,
    /// A number or a map from string to number (G).
    NumberOrMap,
}

/// One compiled expression.
#[derive(Debug)]
pub(crate) struct CompiledExpr {
    /// Its configuration key.
    pub key: &'static str,
    /// The source, as configured.
    pub source: String,
    program: Program,
    /// The variables it refers to.
    refs: u32,
    /// Its translation for direct evaluation, if it lies in the subset.
    direct: Option<Direct>,
    /// Whether to use `direct`.
    use_direct: bool,
    /// Whether `direct` agreed with the interpreter on the sample inputs.
    direct_agrees: bool,
}

impl CompiledExpr {
    /// Whether the expression refers to `v`.
    pub fn uses(&self, v: Var) -> bool {
        self.refs & v.bit() != 0
    }

    /// The syntax tree.
    #[cfg(test)]
    pub fn expression(&self) -> &IdedExpr {
        self.program.expression()
    }

    /// Whether the expression is evaluated directly (see [`crate::direct`]).
    pub fn is_direct(&self) -> bool {
        self.use_direct && self.direct.is_some()
    }

    /// Turns direct evaluation on or off (off: every evaluation goes to the interpreter). It
    /// stays off for an expression whose direct evaluation disagreed with the interpreter on
    /// the sample inputs.
    pub fn set_direct(&mut self, on: bool) {
        self.use_direct = on && self.direct_agrees;
    }
}

/// The CEL environment every expression is compiled and evaluated in: the standard library,
/// the `math`, `lists` and `strings` extensions, and `sum(list)` and `mean(list)`.
pub(crate) fn environment() -> Arc<Env> {
    let mut env = Env::stdlib();
    // The extensions and our two functions declare names the standard library does not: a
    // failure here is a programming error caught by every test.
    cel::extensions::math(&mut env).expect("math extension");
    cel::extensions::lists(&mut env).expect("lists extension");
    cel::extensions::strings(&mut env).expect("strings extension");
    env.add_overload("sum", "sum(list)", vec![LIST_TYPE], sum)
        .expect("sum");
    env.add_overload("mean", "mean(list)", vec![LIST_TYPE], mean)
        .expect("mean");
    Arc::new(env)
}

/// The numbers of a list, as doubles.
fn numbers(function: &str, list: &dyn Val) -> Result<Vec<f64>, ExecutionError> {
    let it = list
        .as_iterable()
        .ok_or_else(|| ExecutionError::function_error(function, "argument is not a list"))?;
    let mut out = Vec::new();
    let mut it = it.iter();
    while let Some(v) = it.next() {
        out.push(number(v).ok_or_else(|| {
            ExecutionError::function_error(
                function,
                format!("element of type {} is not a number", v.get_type().name()),
            )
        })?);
    }
    Ok(out)
}

/// `sum(list)`: the sum of a list of numbers, as a double (0.0 for an empty list).
fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list] = args.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(1, args.len()));
    };
    let total: f64 = numbers("sum", list.as_ref())?.iter().sum();
    Ok(CowVal::owned(CelDouble::from(total)))
}

/// `mean(list)`: the mean of a non-empty list of numbers, as a double.
fn mean<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list] = args.as_slice() else {
        return Err(ExecutionError::invalid_argument_count(1, args.len()));
    };
    let xs = numbers("mean", list.as_ref())?;
    if xs.is_empty() {
        return Err(ExecutionError::function_error("mean", "empty list"));
    }
    Ok(CowVal::owned(CelDouble::from(
        xs.iter().sum::<f64>() / xs.len() as f64,
    )))
}

/// A CEL number as a double.
pub(crate) fn number(v: &dyn Val) -> Option<f64> {
    if let Some(d) = v.downcast_ref::<CelDouble>() {
        Some(*d.inner())
    } else if let Some(i) = v.downcast_ref::<CelInt>() {
        Some(*i.inner() as f64)
    } else {
        v.downcast_ref::<CelUInt>().map(|u| *u.inner() as f64)
    }
}

/// Collects the free identifiers of `e` (comprehension variables are bound, not free).
fn free_idents<'e>(e: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<&'e str>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                out.push(name);
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                free_idents(t, bound, out);
            }
            for a in &call.args {
                free_idents(a, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            free_idents(&c.iter_range, bound, out);
            free_idents(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2);
            }
            bound.push(&c.accu_var);
            free_idents(&c.loop_cond, bound, out);
            free_idents(&c.loop_step, bound, out);
            free_idents(&c.result, bound, out);
            bound.truncate(depth);
        }
        Expr::List(l) => {
            for x in &l.elements {
                free_idents(x, bound, out);
            }
        }
        Expr::Map(m) => entries(&m.entries, bound, out),
        Expr::Struct(s) => entries(&s.entries, bound, out),
        Expr::Select(s) => free_idents(&s.operand, bound, out),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entries<'e>(
    es: &'e [cel::common::ast::IdedEntryExpr],
    bound: &mut Vec<&'e str>,
    out: &mut Vec<&'e str>,
) {
    for entry in es {
        match &entry.expr {
            EntryExpr::StructField(f) => free_idents(&f.value, bound, out),
            EntryExpr::MapEntry(m) => {
                free_idents(&m.key, bound, out);
                free_idents(&m.value, bound, out);
            }
        }
    }
}

/// Every field name selected and every string literal of `e`: the keys the sample inputs of
/// the test evaluation give `s` and `labels`, so that `s.cpu` or `labels["region"]` resolve.
fn names_in<'e>(e: &'e IdedExpr, out: &mut Vec<&'e str>) {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => out.push(s.inner()),
        Expr::Select(s) => {
            out.push(&s.field);
            names_in(&s.operand, out);
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                names_in(t, out);
            }
            for a in &call.args {
                names_in(a, out);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                names_in(x, out);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| names_in(x, out)),
        Expr::Map(m) => m.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => names_in(&f.value, out),
            EntryExpr::MapEntry(me) => {
                names_in(&me.key, out);
                names_in(&me.value, out);
            }
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => names_in(&f.value, out),
            EntryExpr::MapEntry(me) => {
                names_in(&me.key, out);
                names_in(&me.value, out);
            }
        }),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Errors of a test evaluation that sample inputs can cause in a correct expression (a key the
/// real reports have, an index the real lists have, a division by a sample zero): they do not
/// refuse the expression. Every other error is a type error, which real inputs would hit too.
fn tolerated(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::NoSuchKey(_)
            | ExecutionError::IndexOutOfBounds(_)
            | ExecutionError::DivisionByZero(_)
            | ExecutionError::RemainderByZero(_)
            | ExecutionError::Overflow(..)
            | ExecutionError::FunctionError { .. }
    )
}

/// Compiles `source` for `key`: parse, check the free variables, then evaluate it on sample
/// inputs to catch type errors and a wrong result type.
pub(crate) fn compile(
    env: &Arc<Env>,
    key: &'static str,
    source: &str,
    returns: Returns,
) -> Result<CompiledExpr, PolicyError> {
    let program = env.compile(source).map_err(|e| PolicyError::Parse {
        key,
        expr: source.to_owned(),
        message: e.to_string().replace('\n', "; "),
    })?;
    let allowed = if returns == Returns::NumberOrMap {
        G_VARS
    } else {
        F_VARS
    };
    let mut free = Vec::new();
    free_idents(program.expression(), &mut Vec::new(), &mut free);
    let mut refs = 0u32;
    for name in free {
        match Var::from_name(name).filter(|v| allowed.contains(v)) {
            Some(v) => refs |= v.bit(),
            None if NON_VARIABLES.contains(&name) => {}
            None => {
                return Err(PolicyError::UnknownVariable {
                    key,
                    expr: source.to_owned(),
                    name: name.to_owned(),
                    known: allowed
                        .iter()
                        .map(|v| v.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    let direct = match returns {
        Returns::Number => Direct::number(program.expression()),
        Returns::Bool => Direct::boolean(program.expression()),
        Returns::NumberOrMap => Direct::aggregate(program.expression()),
    };
    let mut compiled = CompiledExpr {
        key,
        source: source.to_owned(),
        program,
        refs,
        direct,
        use_direct: false,
        direct_agrees: false,
    };
    // The sample evaluations go to the interpreter, and also check that the direct evaluation
    // agrees with it (if it ever did not, the expression would stay with the interpreter).
    let agrees = sample_check(env, &compiled, returns)?;
    compiled.direct_agrees = agrees;
    compiled.use_direct = agrees;
    Ok(compiled)
}

/// Evaluates `e` on a few sample inputs (three times of day, each priority class, the empty
/// and a named group) and refuses type errors and results of the wrong type. Returns whether
/// the direct evaluation, if any, agreed with the interpreter on every sample.
fn sample_check(env: &Arc<Env>, e: &CompiledExpr, returns: Returns) -> Result<bool, PolicyError> {
    let mut agrees = true;
    let mut names = vec!["load", "cpu", "flows"];
    names_in(e.program.expression(), &mut names);
    let metrics: BTreeMap<String, f64> = names.iter().map(|n| ((*n).to_owned(), 1.0)).collect();
    let labels: BTreeMap<String, String> = names
        .iter()
        .map(|n| ((*n).to_owned(), "sample".to_owned()))
        .collect();
    let s = Metrics::new(&metrics, &mut Interner::default());
    let labels = labels_val(&labels);
    let refuse = |what: String| PolicyError::Type {
        key: e.key,
        expr: e.source.clone(),
        message: what,
    };
    for (hour, priority, group) in [(3, "high", ""), (12, "best_effort", "sample"), (20, "", "")] {
        let time = TimeVals::new(1_700_000_000, hour, 0, 3);
        let child = ChildVals::new("sample", 1.0, 10.0, 11.0, labels.clone());
        let subnet = CelString::from("10.0.0.0/24".to_owned());
        let group = CelString::from(group.to_owned());
        let priority = CelString::from(priority.to_owned());
        let what =
            format!("on sample inputs (s = {metrics:?}, r = 11.0, rtt = 10.0, hour = {hour})");
        match returns {
            Returns::Number | Returns::Bool => {
                let vars = FVars {
                    s: &s,
                    child: &child,
                    subnet: &subnet,
                    group: &group,
                    priority: &priority,
                    time: &time,
                };
                let r = if returns == Returns::Number {
                    let r = interpret_number(env, e, &vars);
                    if let Some(x) = e.direct.as_ref().and_then(|d| d.eval_number(&vars)) {
                        agrees &= r.as_ref().is_ok_and(|y| x.to_bits() == y.to_bits());
                    }
                    r.map(|_| ())
                } else {
                    let r = interpret_bool(env, e, &vars);
                    if let Some(x) = e.direct.as_ref().and_then(|d| d.eval_bool(&vars)) {
                        agrees &= r == Ok(x);
                    }
                    r.map(|_| ())
                };
                match r {
                    Ok(()) => {}
                    Err(EvalError::Cel(err)) if tolerated(&err) => {}
                    Err(EvalError::Cel(err)) => return Err(refuse(format!("fails {what}: {err}"))),
                    Err(EvalError::Result(msg)) => return Err(refuse(format!("{msg} {what}"))),
                }
            }
            Returns::NumberOrMap => {
                let maps = [&s, &s, &s];
                let names = ["a", "b", "c"].map(|n| CelString::from(n.to_owned()));
                let vars = GVars::new(
                    &maps,
                    &[11.0, 12.0, 13.0],
                    &[1.0, 2.0, 3.0],
                    &[&names[0], &names[1], &names[2]],
                    &subnet,
                    &time,
                    e,
                );
                let what = format!("on sample inputs (3 children, m = [1.0, 2.0, 3.0], s[i] = {metrics:?}, hour = {hour})");
                let r = interpret_g(env, e, &vars);
                if let Some(x) = e
                    .direct
                    .as_ref()
                    .and_then(|d| d.eval_aggregate(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]))
                {
                    agrees &= matches!(r, Ok(GResult::Number(y)) if x.to_bits() == y.to_bits());
                }
                match r {
                    Ok(_) => {}
                    Err(EvalError::Cel(err)) if tolerated(&err) => {}
                    Err(EvalError::Cel(err)) => return Err(refuse(format!("fails {what}: {err}"))),
                    Err(EvalError::Result(msg)) => return Err(refuse(format!("{msg} {what}"))),
                }
            }
        }
    }
    Ok(agrees)
}

/// Why one evaluation gave no usable result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EvalError {
    /// The interpreter failed.
    Cel(ExecutionError),
    /// The result has the wrong type or value.
    Result(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Cel(e) => write!(f, "{e}"),
            EvalError::Result(m) => f.write_str(m),
        }
    }
}

/// Metrics as `cel`'s own `map(string, double)`.
#[cfg(test)]
pub(crate) fn metrics_val(metrics: &BTreeMap<String, f64>) -> CelMap<'static> {
    let m: HashMap<CelMapKey<'static>, Box<dyn Val>> = metrics
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

    fn resolve(&self, name: &str) -> Option<&dyn Val> {
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

/// The variables of one evaluation of G: lists built only for the variables G uses.
pub(crate) struct GVars<'a> {
    s: CelList<'a>,
    r: CelList<'a>,
    m: CelList<'a>,
    children: CelList<'a>,
    subnet: &'a CelString<'static>,
    time: &'a TimeVals,
}

impl<'a> GVars<'a> {
    /// The variables over the candidates of one subnet, in cost order.
    pub fn new(
        s: &[&'a Metrics],
        r: &[f64],
        m: &[f64],
        children: &[&'a CelString<'static>],
        subnet: &'a CelString<'static>,
        time: &'a TimeVals,
        g: &CompiledExpr,
    ) -> Self {
        let doubles = |xs: &[f64]| -> CelList<'a> {
            CelList::from(
                xs.iter()
                    .map(|x| Box::new(CelDouble::from(*x)) as Box<dyn Val + 'a>)
                    .collect::<Vec<_>>(),
            )
        };
        GVars {
            s: if g.uses(Var::S) {
                CelList::from(
                    s.iter()
                        .map(|m| Box::new(ValRef(*m)) as Box<dyn Val + 'a>)
                        .collect::<Vec<_>>(),
                )
            } else {
                CelList::default()
            },
            r: if g.uses(Var::R) {
                doubles(r)
            } else {
                CelList::default()
            },
            m: if g.uses(Var::M) {
                doubles(m)
            } else {
                CelList::default()
            },
            children: if g.uses(Var::Children) {
                CelList::from(
                    children
                        .iter()
                        .map(|n| Box::new(ValRef(*n)) as Box<dyn Val + 'a>)
                        .collect::<Vec<_>>(),
                )
            } else {
                CelList::default()
            },
            subnet,
            time,
        }
    }
}

impl VariableResolver for GVars<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let v: &dyn Val = match name {
            "s" => &self.s,
            "r" => &self.r,
            "m" => &self.m,
            "children" => &self.children,
            "subnet" => self.subnet,
            _ => return self.time.resolve(name).map(CowVal::Borrowed),
        };
        Some(CowVal::Borrowed(v))
    }
}

/// Evaluates `e` against `vars` and hands the result to `f`.
fn eval<T>(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &dyn VariableResolver,
    f: impl FnOnce(&dyn Val) -> Result<T, EvalError>,
) -> Result<T, EvalError> {
    let mut ctx = Context::with_env(Arc::clone(env));
    ctx.set_variable_resolver(vars);
    let v = cel::Value::resolve_val(e.program.expression(), &ctx).map_err(EvalError::Cel)?;
    f(v.as_ref())
}

/// Evaluates a number-valued expression (F): directly if it can, else with the interpreter.
pub(crate) fn eval_number(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &FVars<'_>,
) -> Result<f64, EvalError> {
    if e.use_direct {
        if let Some(x) = e.direct.as_ref().and_then(|d| d.eval_number(vars)) {
            return Ok(x);
        }
    }
    interpret_number(env, e, vars)
}

/// Evaluates a number-valued expression with the interpreter.
pub(crate) fn interpret_number(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &dyn VariableResolver,
) -> Result<f64, EvalError> {
    eval(env, e, vars, |v| {
        number(v).ok_or_else(|| {
            EvalError::Result(format!("returned a {}, not a number", v.get_type().name()))
        })
    })
}

/// Evaluates a boolean expression (the overload predicate): directly if it can, else with the
/// interpreter.
pub(crate) fn eval_bool(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &FVars<'_>,
) -> Result<bool, EvalError> {
    if e.use_direct {
        if let Some(x) = e.direct.as_ref().and_then(|d| d.eval_bool(vars)) {
            return Ok(x);
        }
    }
    interpret_bool(env, e, vars)
}

/// Evaluates a boolean expression with the interpreter.
pub(crate) fn interpret_bool(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &dyn VariableResolver,
) -> Result<bool, EvalError> {
    eval(env, e, vars, |v| {
        v.downcast_ref::<CelBool>()
            .map(|b| *b.inner())
            .ok_or_else(|| {
                EvalError::Result(format!("returned a {}, not a bool", v.get_type().name()))
            })
    })
}

/// What G returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GResult {
    /// A number: reported as `load`.
    Number(f64),
    /// A map: reported as is.
    Map(BTreeMap<String, f64>),
}

/// Evaluates G directly, if it can (`m` and `r` non-empty).
pub(crate) fn eval_g_direct(e: &CompiledExpr, m: &[f64], r: &[f64]) -> Option<GResult> {
    if !e.use_direct {
        return None;
    }
    e.direct
        .as_ref()
        .and_then(|d| d.eval_aggregate(m, r))
        .map(GResult::Number)
}

/// Evaluates G with the interpreter.
pub(crate) fn interpret_g(
    env: &Arc<Env>,
    e: &CompiledExpr,
    vars: &dyn VariableResolver,
) -> Result<GResult, EvalError> {
    eval(env, e, vars, |v| {
        if let Some(x) = number(v) {
            return Ok(GResult::Number(x));
        }
        if let Some(m) = v.downcast_ref::<Metrics>() {
            return Ok(GResult::Map(m.to_map()));
        }
        let Some(map) = v.downcast_ref::<CelMap>() else {
            return Err(EvalError::Result(format!(
                "returned a {}, not a number or a map(string, number)",
                v.get_type().name()
            )));
        };
        let mut out = BTreeMap::new();
        for (k, x) in map.inner() {
            let Some(k) = k.inner().downcast_ref::<CelString>() else {
                return Err(EvalError::Result(format!(
                    "returned a map with a {} key, not a string",
                    k.inner().get_type().name()
                )));
            };
            let Some(x) = number(x.as_ref()) else {
                return Err(EvalError::Result(format!(
                    "returned a map whose value at {:?} is a {}, not a number",
                    k.inner(),
                    x.get_type().name()
                )));
            };
            out.insert(k.inner().to_owned(), x);
        }
        Ok(GResult::Map(out))
    })
}

/// A value borrowed from elsewhere, so that G's lists (`s`, `children`) refer to the values
/// converted for F instead of copying them. It behaves exactly as the value it refers to.
#[derive(Debug)]
struct ValRef<'a>(&'a (dyn Val + 'a));

impl<'a> Val for ValRef<'a> {
    fn get_type(&self) -> &Type {
        self.0.get_type()
    }
    fn cel_type() -> &'static Type
    where
        Self: Sized,
    {
        &DYN_TYPE
    }
    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        self.0.as_adder()
    }
    fn as_comparer(&self) -> Option<&dyn Comparer> {
        self.0.as_comparer()
    }
    fn as_container(&self) -> Option<&dyn Container> {
        self.0.as_container()
    }
    fn as_divider<'b, 'v>(&'b self) -> Option<&'b (dyn Divider + 'v)>
    where
        Self: 'v,
    {
        self.0.as_divider()
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        self.0.as_indexer()
    }
    fn into_indexer<'v>(self: Box<Self>) -> Option<Box<dyn Indexer + 'v>>
    where
        Self: 'v,
    {
        self.0.clone_as_boxed().into_indexer()
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        self.0.as_iterable()
    }
    fn as_modder<'b, 'v>(&'b self) -> Option<&'b (dyn Modder + 'v)>
    where
        Self: 'v,
    {
        self.0.as_modder()
    }
    fn as_multiplier<'b, 'v>(&'b self) -> Option<&'b (dyn Multiplier + 'v)>
    where
        Self: 'v,
    {
        self.0.as_multiplier()
    }
    fn as_negator<'b, 'v>(&'b self) -> Option<&'b (dyn Negator + 'v)>
    where
        Self: 'v,
    {
        self.0.as_negator()
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        self.0.as_sizer()
    }
    fn as_subtractor<'b, 'v>(&'b self) -> Option<&'b (dyn Subtractor + 'v)>
    where
        Self: 'v,
    {
        self.0.as_subtractor()
    }
    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        self.0.as_zeroer()
    }
    fn equals(&self, other: &dyn Val) -> bool {
        self.0.equals(other)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(ValRef(self.0))
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.0.as_any()
    }
    fn as_builtin<'b, 'v>(&'b self) -> BuiltinRef<'b, 'v>
    where
        Self: 'v,
    {
        self.0.as_builtin()
    }
    fn into_builtin<'v>(self: Box<Self>) -> Option<Builtin<'v>>
    where
        Self: 'v,
    {
        self.0.clone_as_boxed().into_builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(src: &str) -> Result<CompiledExpr, PolicyError> {
        compile(&environment(), KEY_F, src, Returns::Number)
    }

    #[test]
    fn free_variables_exclude_comprehension_variables() {
        let env = environment();
        let g = compile(
            &env,
            KEY_G,
            "m.all(x, x >= 0.0) ? math.least(m) : 0.0",
            Returns::NumberOrMap,
        )
        .unwrap();
        assert!(g.uses(Var::M));
        assert!(!g.uses(Var::S));
        let err = compile(&env, KEY_G, "m.all(x, x >= y)", Returns::NumberOrMap).unwrap_err();
        assert!(
            matches!(err, PolicyError::UnknownVariable { ref name, .. } if name == "y"),
            "{err}"
        );
    }

    #[test]
    fn sample_evaluation_refuses_type_errors_but_not_missing_keys() {
        assert!(matches!(f("s.load + 1"), Err(PolicyError::Type { .. })));
        assert!(matches!(f("child"), Err(PolicyError::Type { .. })));
        f("s.load + r").unwrap();
        f("has(s.cpu) ? s.cpu : 1.0").unwrap();
        f("labels.region == 'eu' ? r : r * 2.0").unwrap();
        f("double(hour) + s.load").unwrap();
    }

    #[test]
    fn sum_and_mean() {
        let env = environment();
        let g = compile(
            &env,
            KEY_G,
            "sum(m) + mean([1, 2u, 3.0])",
            Returns::NumberOrMap,
        )
        .unwrap();
        let time = TimeVals::new(0, 0, 0, 0);
        let subnet = CelString::from("x".to_owned());
        let vars = GVars::new(&[], &[], &[1.5, 2.5], &[], &subnet, &time, &g);
        assert_eq!(interpret_g(&env, &g, &vars), Ok(GResult::Number(6.0)));
    }
}
