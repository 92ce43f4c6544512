//! The operator's CEL expressions: compiling, checking and evaluating them.
//!
//! Evaluation does not go through `cel::Context::add_variable` (which would copy every value
//! into a fresh map per evaluation): a [`VariableResolver`] hands the interpreter borrowed,
//! pre-converted values instead, so an evaluation of F allocates only what the expression
//! itself computes.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::traits::{
    Adder, Comparer, Container, Divider, Indexer, Iterable, Modder, Multiplier, Negator, Sizer,
    Subtractor, Zeroer,
};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelString, CelUInt, Type, DYN_TYPE, LIST_TYPE,
};
use cel::common::value::{Builtin, BuiltinRef, CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program};

use crate::direct::Direct;
use crate::metrics::{Interner, Metrics};
use crate::vars::{labels_val, ChildVals, FVars, TimeVals, Var, F_VARS, G_VARS};
use crate::PolicyError;

/// The configuration key of F.
pub(crate) const KEY_F: &str = "cost.f";
/// The configuration key of G.
pub(crate) const KEY_G: &str = "cost.g";
/// The configuration key of the overload predicate.
pub(crate) const KEY_OVERLOAD: &str = "cost.overload";

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
    use crate::metrics::as_cel_map;

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

    /// Every map operation gives the same answer on `Metrics` as on `cel`'s own map, through
    /// the interpreter (this test compiles expressions, hence it lives here and not in
    /// `metrics.rs`, which this module depends on).
    #[test]
    fn metrics_behave_as_a_cel_map() {
        let env = environment();
        let report = BTreeMap::from([("load".to_owned(), 0.5), ("cpu".to_owned(), 0.25)]);
        let mut names = Interner::default();
        let ours = Metrics::new(&report, &mut names);
        let theirs = as_cel_map(&ours);
        let child = ChildVals::new("a", 1.0, 0.0, 1.0, CelMap::default());
        let text = CelString::from(String::new());
        let time = TimeVals::new(0, 0, 0, 0);
        for src in [
            "s.load == 0.5",
            "s['cpu'] == 0.25",
            "has(s.load)",
            "!has(s.missing)",
            "'load' in s",
            "!('x' in s)",
            "!(1 in s)",
            "size(s) == 2",
            "s.size() == 2",
            "s.all(k, k == 'load' || k == 'cpu')",
            "s.exists(k, s[k] > 0.4)",
            "s.map(k, s[k]).size() == 2",
            "s == {'load': 0.5, 'cpu': 0.25}",
            "s != {'load': 0.5}",
            "type(s) == map",
            "s.load + s.cpu == 0.75",
        ] {
            let e = compile(&env, "cost.overload", src, Returns::Bool).unwrap();
            for s in [&ours as &dyn Val, &theirs as &dyn Val] {
                let vars = FVars {
                    s,
                    child: &child,
                    subnet: &text,
                    group: &text,
                    priority: &text,
                    time: &time,
                };
                assert_eq!(eval_bool(&env, &e, &vars), Ok(true), "{src} on {s:?}");
            }
        }
        for src in ["s.missing > 0.0", "s[1] > 0.0"] {
            let e = compile(&env, "cost.overload", src, Returns::Bool).unwrap_or_else(|e| {
                panic!("{src}: {e}");
            });
            let results: Vec<_> = [&ours as &dyn Val, &theirs as &dyn Val]
                .into_iter()
                .map(|s| {
                    let vars = FVars {
                        s,
                        child: &child,
                        subnet: &text,
                        group: &text,
                        priority: &text,
                        time: &time,
                    };
                    eval_bool(&env, &e, &vars).map_err(|e| e.to_string())
                })
                .collect();
            assert!(results[0].is_err(), "{src}");
            assert_eq!(results[0], results[1], "{src}");
        }
    }
}

/// The direct evaluation (`direct.rs`) against the interpreter, on generated expressions. These
/// tests compile expressions, hence they live here and not in `direct.rs`, which this module
/// depends on.
#[cfg(test)]
mod direct_tests {
    use std::collections::BTreeMap;

    use cel::common::types::CelString;
    use cel::common::value::Val;
    use proptest::prelude::*;

    use super::{compile, environment, interpret_bool, interpret_number, Direct, Returns};
    use crate::metrics::{as_cel_map, Interner, Metrics};
    use crate::vars::{labels_val, ChildVals, FVars, TimeVals};

    fn num_expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("0.0".to_owned()),
            Just("1.5".to_owned()),
            Just("100.0".to_owned()),
            Just("1e308".to_owned()),
            Just("r".to_owned()),
            Just("cost".to_owned()),
            Just("rtt".to_owned()),
            Just("s.load".to_owned()),
            Just("s.cpu".to_owned()),
            Just("s['flows']".to_owned()),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("-({a})")),
                (
                    inner.clone(),
                    prop_oneof![Just("+"), Just("-"), Just("*"), Just("/")],
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (bool_leaf(), inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
                (inner.clone(), cmp(), inner.clone(), inner.clone(), inner)
                    .prop_map(|(x, op, y, a, b)| format!("({x} {op} {y} ? {a} : {b})")),
            ]
        })
    }

    fn cmp() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">="),
            Just("=="),
            Just("!=")
        ]
    }

    fn bool_leaf() -> impl Strategy<Value = String> {
        let int = prop_oneof![
            Just("hour"),
            Just("minute"),
            Just("weekday"),
            Just("now"),
            Just("9"),
            Just("17")
        ];
        let string = prop_oneof![
            Just("group"),
            Just("priority"),
            Just("child"),
            Just("subnet"),
            Just("labels.region"),
            Just("'eu'"),
            Just("''")
        ];
        prop_oneof![
            Just("true".to_owned()),
            Just("has(s.cpu)".to_owned()),
            (int.clone(), cmp(), int).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (string.clone(), prop_oneof![Just("=="), Just("!=")], string)
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        ]
    }

    fn bool_expr() -> impl Strategy<Value = String> {
        bool_leaf().prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("!({a})")),
                (
                    inner.clone(),
                    prop_oneof![Just("&&"), Just("||")],
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
                (num_expr(), cmp(), num_expr()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            ]
        })
    }

    #[derive(Debug, Clone)]
    struct Sample {
        load: f64,
        cpu: Option<f64>,
        flows: Option<f64>,
        region: Option<&'static str>,
        r: f64,
        rtt: f64,
        hour: i64,
        group: &'static str,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        let x = prop_oneof![Just(0.0), Just(-0.0), Just(1.5), Just(1e308), -1e3..1e3f64];
        (
            x.clone(),
            proptest::option::of(x.clone()),
            proptest::option::of(x.clone()),
            proptest::option::of(prop_oneof![Just("eu"), Just("us")]),
            x.clone(),
            x,
            0..24i64,
            prop_oneof![Just(""), Just("eu")],
        )
            .prop_map(|(load, cpu, flows, region, r, rtt, hour, group)| Sample {
                load,
                cpu,
                flows,
                region,
                r,
                rtt,
                hour,
                group,
            })
    }

    /// Evaluates `src` directly (if it can) and with the interpreter, on `Metrics` and on
    /// `cel`'s own map, and checks that they agree.
    fn check(src: &str, returns: Returns, x: &Sample) -> Result<(), TestCaseError> {
        let env = environment();
        let Ok(e) = compile(&env, "cost.f", src, returns) else {
            return Ok(()); // refused at compile time: never evaluated
        };
        let direct = match returns {
            Returns::Number => Direct::number(e.expression()),
            _ => Direct::boolean(e.expression()),
        };
        prop_assert!(direct.is_some(), "{src} is in the subset");
        let mut report = BTreeMap::from([("load".to_owned(), x.load)]);
        if let Some(c) = x.cpu {
            report.insert("cpu".to_owned(), c);
        }
        if let Some(f) = x.flows {
            report.insert("flows".to_owned(), f);
        }
        let metrics = Metrics::new(&report, &mut Interner::default());
        let map = as_cel_map(&metrics);
        let labels: BTreeMap<String, String> = x
            .region
            .map(|r| ("region".to_owned(), r.to_owned()))
            .into_iter()
            .collect();
        let child = ChildVals::new("a", 2.0, x.rtt, x.r, labels_val(&labels));
        let subnet = CelString::from("10.99.1.0/24".to_owned());
        let group = CelString::from(x.group.to_owned());
        let priority = CelString::from("high".to_owned());
        let time = TimeVals::new(1_700_000_000, x.hour, 30, 2);
        let vars = |s: &dyn Val| -> String {
            let v = FVars {
                s,
                child: &child,
                subnet: &subnet,
                group: &group,
                priority: &priority,
                time: &time,
            };
            match returns {
                Returns::Number => {
                    format!("{:?}", interpret_number(&env, &e, &v).map(f64::to_bits))
                }
                _ => format!("{:?}", interpret_bool(&env, &e, &v)),
            }
        };
        let on_metrics = vars(&metrics);
        prop_assert_eq!(
            &on_metrics,
            &vars(&map),
            "{} on Metrics and on cel's map",
            src
        );
        let v = FVars {
            s: &metrics,
            child: &child,
            subnet: &subnet,
            group: &group,
            priority: &priority,
            time: &time,
        };
        let d = direct.unwrap();
        let got = match returns {
            Returns::Number => d
                .eval_number(&v)
                .map(|x| format!("{:?}", Ok::<u64, ()>(x.to_bits()))),
            _ => d.eval_bool(&v).map(|b| format!("{:?}", Ok::<bool, ()>(b))),
        };
        if let Some(got) = got {
            prop_assert_eq!(got, on_metrics, "{}", src);
        }
        Ok(())
    }

    /// Runs `test` on 2,000 generated cases, on a thread with a large stack: in debug builds
    /// the `cel` parser takes about 100 KiB of stack per level of nesting (release builds,
    /// which stop at 100 levels, fit in the usual 2 MiB).
    fn run<S: Strategy + 'static>(
        strategy: fn() -> S,
        test: fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: 'static,
    {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let strategy = strategy();
                let mut runner =
                    proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2000));
                if let Err(e) = runner.run(&strategy, test) {
                    panic!("{e}");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn direct_numbers_agree_with_the_interpreter() {
        run(
            || (num_expr(), sample()),
            |(src, x)| check(&src, Returns::Number, &x),
        );
    }

    #[test]
    fn direct_booleans_agree_with_the_interpreter() {
        run(
            || (bool_expr(), sample()),
            |(src, x)| check(&src, Returns::Bool, &x),
        );
    }

    #[test]
    fn the_usual_expressions_are_in_the_subset() {
        let env = environment();
        for (src, returns) in [
            ("s.load + r", Returns::Number),
            ("s.load * 100.0 + r", Returns::Number),
            ("s.cpu * 100.0 + rtt", Returns::Number),
            (
                "hour >= 9 && hour < 17 ? s.load * 2.0 + r : s.load + r",
                Returns::Number,
            ),
            (
                "(group != '' && labels.region != group ? 100.0 : 0.0) + s.load + r",
                Returns::Number,
            ),
            (
                "s.load > 0.8 || priority == 'best_effort' && has(s.cpu) && s.cpu > 0.9",
                Returns::Bool,
            ),
            ("math.least(m)", Returns::NumberOrMap),
            ("mean(r)", Returns::NumberOrMap),
        ] {
            let e = compile(&env, "cost.f", src, returns).unwrap();
            assert!(e.is_direct(), "{src}");
        }
        for (src, returns) in [
            ("double(hour) + s.load", Returns::Number),
            (
                "s.load * 2.0 + (child.startsWith('h') ? 1.0 : 0.0)",
                Returns::Number,
            ),
            ("mean(s.map(x, x.load))", Returns::NumberOrMap),
        ] {
            let e = compile(&env, "cost.f", src, returns).unwrap();
            assert!(!e.is_direct(), "{src}");
        }
    }
}
