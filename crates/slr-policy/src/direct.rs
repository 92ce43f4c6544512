//! Direct evaluation of the common, statically typed subset of CEL cost expressions.
//!
//! The `cel` interpreter walks the syntax tree and boxes every intermediate value: about
//! 0.4 µs for `s.load * 100.0 + r`, which for a 100,000-evaluation rebuild is most of the
//! budget. Cost functions are nearly always arithmetic on doubles with comparisons and
//! conditionals, so at compile time an expression made only of the constructs below is also
//! translated into a small typed tree that evaluates with plain `f64`, `i64` and `&str`:
//!
//! | construct | forms |
//! |---|---|
//! | double | literals, `r`, `cost`, `rtt`, `s.NAME`, `s["NAME"]`, `-x`, `x + y`, `x - y`, `x * y`, `x / y`, `c ? x : y` |
//! | int | literals, `hour`, `minute`, `weekday`, `now` |
//! | string | literals, `child`, `subnet`, `group`, `priority`, `labels.NAME`, `labels["NAME"]` |
//! | bool | literals, `<`, `<=`, `>`, `>=`, `==`, `!=` between two doubles or two ints, `==`, `!=` between two strings, `!`, `&&`, `\|\|`, `c ? x : y`, `has(s.NAME)` |
//! | G | `math.least(L)`, `math.greatest(L)`, `sum(L)`, `mean(L)` where `L` is `m` or `r` |
//!
//! The semantics are CEL's for those types, which for doubles are IEEE 754's (no implicit
//! conversion between int and double: `s.load * 2` is not in the subset, and the interpreter
//! refuses it). Whenever the direct evaluation cannot give CEL's answer on its own — a metric or
//! label that is missing, a comparison with NaN (an error in CEL) — it gives up and the
//! interpreter evaluates the expression, so errors and their messages are always the
//! interpreter's. Anything outside the subset always goes to the interpreter. Tests compare
//! the two on generated expressions.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use crate::metrics::Metrics;
use crate::vars::FVars;

/// An operator on doubles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn of(op: &str) -> Option<Cmp> {
        Some(match op {
            operators::LESS => Cmp::Lt,
            operators::LESS_EQUALS => Cmp::Le,
            operators::GREATER => Cmp::Gt,
            operators::GREATER_EQUALS => Cmp::Ge,
            operators::EQUALS => Cmp::Eq,
            operators::NOT_EQUALS => Cmp::Ne,
            _ => return None,
        })
    }

    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
            Cmp::Eq => o == Equal,
            Cmp::Ne => o != Equal,
        }
    }
}

/// A double-valued expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Num {
    Lit(f64),
    R,
    Cost,
    Rtt,
    Metric(Box<str>),
    Neg(Box<Num>),
    Arith(Arith, Box<Num>, Box<Num>),
    Cond(Box<Bool>, Box<Num>, Box<Num>),
}

/// An int-valued expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Int {
    Lit(i64),
    Hour,
    Minute,
    Weekday,
    Now,
}

/// A string-valued expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Str {
    Lit(Box<str>),
    Child,
    Subnet,
    Group,
    Priority,
    Label(Box<str>),
}

/// A boolean expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bool {
    Lit(bool),
    Num(Cmp, Num, Num),
    Int(Cmp, Int, Int),
    /// `==` (true) or `!=` (false) between strings.
    Str(bool, Str, Str),
    Not(Box<Bool>),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
    Cond(Box<Bool>, Box<Bool>, Box<Bool>),
    HasMetric(Box<str>),
}

/// One of G's lists of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    M,
    R,
}

/// An aggregate of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Least,
    Greatest,
    Sum,
    Mean,
}

/// An expression translated for direct evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Direct {
    /// F.
    Number(Num),
    /// The overload predicate.
    Bool(Bool),
    /// G.
    Aggregate(Aggregate, List),
}

fn ident(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(n) => Some(n),
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `VAR.NAME` or `VAR["NAME"]`: the name.
fn field_of<'e>(e: &'e IdedExpr, var: &str) -> Option<&'e str> {
    match &e.expr {
        Expr::Select(s) if !s.test && ident(&s.operand) == Some(var) => Some(&s.field),
        Expr::Call(c)
            if c.func_name == operators::INDEX
                && c.target.is_none()
                && c.args.len() == 2
                && ident(&c.args[0]) == Some(var) =>
        {
            string_literal(&c.args[1])
        }
        _ => None,
    }
}

/// The arguments of a global call of `name` with `n` arguments.
fn call(e: &IdedExpr, n: usize) -> Option<(&str, &[IdedExpr])> {
    match &e.expr {
        Expr::Call(c) if c.target.is_none() && c.args.len() == n => {
            Some((c.func_name.as_str(), c.args.as_slice()))
        }
        _ => None,
    }
}

fn num(e: &IdedExpr) -> Option<Num> {
    if let Some(name) = field_of(e, "s") {
        return Some(Num::Metric(name.into()));
    }
    match &e.expr {
        Expr::Literal(LiteralValue::Double(d)) => return Some(Num::Lit(*d.inner())),
        Expr::Ident(n) => {
            return match n.as_str() {
                "r" => Some(Num::R),
                "cost" => Some(Num::Cost),
                "rtt" => Some(Num::Rtt),
                _ => None,
            }
        }
        _ => {}
    }
    if let Some((operators::NEGATE, [x])) = call(e, 1) {
        return Some(Num::Neg(Box::new(num(x)?)));
    }
    if let Some((operators::CONDITIONAL, [c, a, b])) = call(e, 3) {
        return Some(Num::Cond(
            Box::new(boolean(c)?),
            Box::new(num(a)?),
            Box::new(num(b)?),
        ));
    }
    let (op, [a, b]) = call(e, 2)? else {
        return None;
    };
    let op = match op {
        operators::ADD => Arith::Add,
        operators::SUBSTRACT => Arith::Sub,
        operators::MULTIPLY => Arith::Mul,
        operators::DIVIDE => Arith::Div,
        _ => return None,
    };
    Some(Num::Arith(op, Box::new(num(a)?), Box::new(num(b)?)))
}

fn int(e: &IdedExpr) -> Option<Int> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(Int::Lit(*i.inner())),
        Expr::Ident(n) => match n.as_str() {
            "hour" => Some(Int::Hour),
            "minute" => Some(Int::Minute),
            "weekday" => Some(Int::Weekday),
            "now" => Some(Int::Now),
            _ => None,
        },
        _ => None,
    }
}

fn string(e: &IdedExpr) -> Option<Str> {
    if let Some(name) = field_of(e, "labels") {
        return Some(Str::Label(name.into()));
    }
    if let Some(s) = string_literal(e) {
        return Some(Str::Lit(s.into()));
    }
    match ident(e)? {
        "child" => Some(Str::Child),
        "subnet" => Some(Str::Subnet),
        "group" => Some(Str::Group),
        "priority" => Some(Str::Priority),
        _ => None,
    }
}

fn boolean(e: &IdedExpr) -> Option<Bool> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => return Some(Bool::Lit(*b.inner())),
        Expr::Select(s) if s.test && ident(&s.operand) == Some("s") => {
            return Some(Bool::HasMetric(s.field.as_str().into()))
        }
        _ => {}
    }
    if let Some((operators::LOGICAL_NOT, [x])) = call(e, 1) {
        return Some(Bool::Not(Box::new(boolean(x)?)));
    }
    if let Some((operators::CONDITIONAL, [c, a, b])) = call(e, 3) {
        return Some(Bool::Cond(
            Box::new(boolean(c)?),
            Box::new(boolean(a)?),
            Box::new(boolean(b)?),
        ));
    }
    let (op, [a, b]) = call(e, 2)? else {
        return None;
    };
    match op {
        operators::LOGICAL_AND => Some(Bool::And(Box::new(boolean(a)?), Box::new(boolean(b)?))),
        operators::LOGICAL_OR => Some(Bool::Or(Box::new(boolean(a)?), Box::new(boolean(b)?))),
        _ => {
            let cmp = Cmp::of(op)?;
            if let (Some(x), Some(y)) = (num(a), num(b)) {
                return Some(Bool::Num(cmp, x, y));
            }
            if let (Some(x), Some(y)) = (int(a), int(b)) {
                return Some(Bool::Int(cmp, x, y));
            }
            match (cmp, string(a), string(b)) {
                (Cmp::Eq, Some(x), Some(y)) => Some(Bool::Str(true, x, y)),
                (Cmp::Ne, Some(x), Some(y)) => Some(Bool::Str(false, x, y)),
                _ => None,
            }
        }
    }
}

impl Direct {
    /// The translation of a number-valued expression, if it lies in the subset.
    pub fn number(e: &IdedExpr) -> Option<Direct> {
        num(e).map(Direct::Number)
    }

    /// The translation of a boolean expression, if it lies in the subset.
    pub fn boolean(e: &IdedExpr) -> Option<Direct> {
        boolean(e).map(Direct::Bool)
    }

    /// The translation of G, if it lies in the subset.
    pub fn aggregate(e: &IdedExpr) -> Option<Direct> {
        let (f, [arg]) = call(e, 1)? else {
            return None;
        };
        let agg = match f {
            "math.@min" => Aggregate::Least,
            "math.@max" => Aggregate::Greatest,
            "sum" => Aggregate::Sum,
            "mean" => Aggregate::Mean,
            _ => return None,
        };
        let list = match ident(arg)? {
            "m" => List::M,
            "r" => List::R,
            _ => return None,
        };
        Some(Direct::Aggregate(agg, list))
    }

    /// Evaluates G over `m` and `r` (non-empty); `None`: let the interpreter do it.
    pub fn eval_aggregate(&self, m: &[f64], r: &[f64]) -> Option<f64> {
        let Direct::Aggregate(agg, list) = self else {
            return None;
        };
        let xs = match list {
            List::M => m,
            List::R => r,
        };
        let (first, rest) = xs.split_first()?;
        match agg {
            // As `math.least`: the first of equal values wins; NaN is an error (the
            // interpreter's).
            Aggregate::Least | Aggregate::Greatest => {
                let mut best = *first;
                for &x in std::iter::once(first).chain(rest) {
                    if x.is_nan() {
                        return None;
                    }
                    if (*agg == Aggregate::Least && x < best)
                        || (*agg == Aggregate::Greatest && x > best)
                    {
                        best = x;
                    }
                }
                Some(best)
            }
            // As the interpreter's `sum` and `mean`: the same additions in the same order.
            Aggregate::Sum => Some(xs.iter().sum()),
            Aggregate::Mean => Some(xs.iter().sum::<f64>() / xs.len() as f64),
        }
    }

    /// Evaluates F; `None`: let the interpreter do it.
    pub fn eval_number(&self, v: &FVars<'_>) -> Option<f64> {
        let s = v.s.downcast_ref::<Metrics>()?;
        match self {
            Direct::Number(n) => n.eval(s, v),
            _ => None,
        }
    }

    /// Evaluates the overload predicate; `None`: let the interpreter do it.
    pub fn eval_bool(&self, v: &FVars<'_>) -> Option<bool> {
        let s = v.s.downcast_ref::<Metrics>()?;
        match self {
            Direct::Bool(b) => b.eval(s, v),
            _ => None,
        }
    }
}

impl Num {
    fn eval(&self, s: &Metrics, v: &FVars<'_>) -> Option<f64> {
        Some(match self {
            Num::Lit(x) => *x,
            Num::R => v.child.r(),
            Num::Cost => v.child.cost(),
            Num::Rtt => v.child.rtt(),
            Num::Metric(name) => s.get(name)?,
            Num::Neg(x) => -x.eval(s, v)?,
            Num::Arith(op, a, b) => {
                let (a, b) = (a.eval(s, v)?, b.eval(s, v)?);
                match op {
                    Arith::Add => a + b,
                    Arith::Sub => a - b,
                    Arith::Mul => a * b,
                    Arith::Div => a / b,
                }
            }
            Num::Cond(c, a, b) => {
                if c.eval(s, v)? {
                    a.eval(s, v)?
                } else {
                    b.eval(s, v)?
                }
            }
        })
    }
}

impl Int {
    fn eval(&self, v: &FVars<'_>) -> i64 {
        match self {
            Int::Lit(i) => *i,
            Int::Hour => v.time.hour(),
            Int::Minute => v.time.minute(),
            Int::Weekday => v.time.weekday(),
            Int::Now => v.time.now(),
        }
    }
}

impl Str {
    fn eval<'a>(&'a self, v: &'a FVars<'_>) -> Option<&'a str> {
        Some(match self {
            Str::Lit(s) => s,
            Str::Child => v.child.name().inner(),
            Str::Subnet => v.subnet.inner(),
            Str::Group => v.group.inner(),
            Str::Priority => v.priority.inner(),
            Str::Label(name) => v.child.label(name)?,
        })
    }
}

impl Bool {
    fn eval(&self, s: &Metrics, v: &FVars<'_>) -> Option<bool> {
        Some(match self {
            Bool::Lit(b) => *b,
            Bool::Num(cmp, a, b) => {
                let (a, b) = (a.eval(s, v)?, b.eval(s, v)?);
                match cmp {
                    Cmp::Eq => a == b,
                    Cmp::Ne => a != b,
                    // Ordering NaN is an error in CEL: the interpreter reports it.
                    _ => cmp.holds(a.partial_cmp(&b)?),
                }
            }
            Bool::Int(cmp, a, b) => cmp.holds(a.eval(v).cmp(&b.eval(v))),
            Bool::Str(eq, a, b) => (a.eval(v)? == b.eval(v)?) == *eq,
            Bool::Not(x) => !x.eval(s, v)?,
            Bool::And(a, b) => a.eval(s, v)? && b.eval(s, v)?,
            Bool::Or(a, b) => a.eval(s, v)? || b.eval(s, v)?,
            Bool::Cond(c, a, b) => {
                if c.eval(s, v)? {
                    a.eval(s, v)?
                } else {
                    b.eval(s, v)?
                }
            }
            Bool::HasMetric(name) => s.get(name).is_some(),
        })
    }
}
