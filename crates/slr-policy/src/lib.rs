//! Operator cost functions (CEL) and the route tables a router builds from its children's
//! reports (F11, F13; the patent's Fig. 9).
//!
//! Every interval a router's children (lower routers, or at the bottom host servers) report,
//! per virtual subnet they serve, named metrics (`load`, `cpu`, `flows`, ...). On the control
//! path this crate turns those reports into
//!
//! - the [`RouteTable`](slr_core::route_table::RouteTable) the packet path reads (it never
//!   interprets an expression): per (virtual subnet, client group), the candidates with their
//!   cost `m_kj = F(s_kj, r_j)`, lowest first, and the *chosen band* new flows spread over;
//! - the report this router sends upward, per subnet: `M_k = G(s_k1..s_kJ, r_1..r_J)`;
//! - details and counters for inspection.
//!
//! F, G and an optional overload predicate are [CEL](https://cel.dev) expressions from the
//! `[cost]` section of the router's configuration ([`PolicyConfig`]), compiled once
//! ([`PolicyConfig::compile`]) and evaluated by a [`Builder`], which keeps the state that
//! lives across rebuilds (smoothed metrics, previous bands). The crate has no I/O and reads no
//! clock: the wall time is part of the [`Inputs`].
//!
//! # Configuration
//!
//! ```toml
//! [cost]
//! f = "s.load + r"          # cost of a child for a subnet (lower is better)
//! g = "math.least(m)"       # reported upward per subnet: a number (as `load`) or a map
//! band = 0.1                # children within max(band * min, band_abs) of the lowest cost
//! band_abs = 0.01           #   share new flows
//! hysteresis = 0.5          # a band member stays until it is beyond the band by 50 % more
//! damping = 0.5             # EWMA factor on every reported metric (1 = no smoothing)
//! # overload = "s.load > 0.9"  # optional: true = no new best-effort flows for that child
//! timezone = "UTC"          # IANA name, for hour, minute and weekday
//! rtt_weight = 0.01         # r = cost + rtt_weight * rtt (ms)
//! ```
//!
//! An expression that does not parse, refers to a variable it cannot see, or fails with a type
//! error (or returns the wrong type) on sample inputs is refused with a [`PolicyError`] naming
//! the key (`cost.f`, `cost.g`, `cost.overload`), the expression and the parser's message.
//!
//! # Variables
//!
//! F and `overload` are evaluated per (subnet, client group, live candidate child):
//!
//! | variable | type | meaning |
//! |---|---|---|
//! | `s` | `map(string, double)` | the child's smoothed metrics for this subnet (`s.load`, `s["cpu"]`, `has(s.flows)`) |
//! | `r` | `double` | routing cost: `cost + rtt_weight * rtt` |
//! | `cost` | `double` | the child's static cost |
//! | `rtt` | `double` | round-trip time to the child measured by probes, in ms; 0 when not measured |
//! | `labels` | `map(string, string)` | the child's labels (`labels.region`) |
//! | `child` | `string` | the child's name |
//! | `subnet` | `string` | the virtual subnet, `"a.b.c.d/n"` |
//! | `group` | `string` | the client group of the entry, `""` for the entry of no group |
//! | `priority` | `string` | the subnet's class: `"high"` or `"best_effort"` |
//! | `hour`, `minute` | `int` | local time of the build in `timezone` (0-23, 0-59) |
//! | `weekday` | `int` | local day of the week, 0 = Sunday .. 6 = Saturday |
//! | `now` | `int` | wall time of the build, Unix seconds |
//!
//! G is evaluated once per subnet, over the candidates of the subnet's group-less entry, lowest
//! cost first:
//!
//! | variable | type | meaning |
//! |---|---|---|
//! | `s` | `list(map(string, double))` | each candidate's smoothed metrics |
//! | `r` | `list(double)` | each candidate's routing cost |
//! | `m` | `list(double)` | each candidate's cost (F) |
//! | `children` | `list(string)` | each candidate's name |
//! | `subnet`, `hour`, `minute`, `weekday`, `now` | | as for F |
//!
//! G returns a number, reported upward as the metric `load`, or a `map(string, number)`,
//! reported as is. The report also carries `children` (the number of candidates) and `flows`
//! (the sum of the candidates' smoothed `flows`, when any reports it) unless G's map sets them.
//! Besides CEL's standard library, expressions can use the `math` (`math.least`,
//! `math.greatest`, ...), `lists` and `strings` extensions, and `sum(list)` and `mean(list)`
//! of numbers (as doubles). CEL does not mix int and double arithmetic: write `2.0`, not `2`,
//! next to a double, and `double(hour)` to compute with the hour.
//!
//! # How a table is built
//!
//! 1. **Smoothing.** Each metric of a child's report goes through an EWMA,
//!    `s = damping * new + (1 - damping) * s`, once per new report (a new
//!    [`ChildInput::report_seq`]), however often the table is rebuilt. A child that is not live
//!    is no candidate and its smoothing state is dropped; it starts afresh when it returns.
//! 2. **Entries.** A report for subnet `X` applies to every served subnet `V` it overlaps; the
//!    entry is the more specific of the two: a child reporting `10.99.0.0/16` to a router
//!    serving `10.99.1.0/24` is a candidate for `10.99.1.0/24`; a child reporting
//!    `10.99.1.0/24` to a router serving `10.99.0.0/16` gives an entry `10.99.1.0/24` (flows to
//!    the rest of the /16 do not go to it). The candidates of an entry are the live children
//!    with a report covering it, with their most specific such report. The entry's priority is
//!    that of the most specific served subnet covering it. Reports for subnets the router does
//!    not serve are ignored.
//! 3. **Client groups.** With client groups, each subnet gets an entry per group besides the
//!    group-less one, but only when F or `overload` uses `group`: otherwise the group entries
//!    would repeat the group-less one, which flows of a group without an entry fall back to.
//! 4. **Costs.** F per candidate. An evaluation error, a result that is not a number, or a
//!    cost that is negative or not finite leaves that child out of that entry, listed in
//!    [`EntryDetail::excluded`] with the reason and counted ([`BuildCounters::eval_errors`],
//!    the last message kept in [`BuildCounters::last_error`] and [`Builder::last_error`]).
//!    Candidates are sorted by cost, then name.
//! 5. **Band.** With `min` the lowest cost and `w = max(band * min, band_abs)`, the chosen band
//!    is the candidates with cost `<= min + w`, plus those chosen in the previous build whose
//!    cost is still `<= min + w * (1 + hysteresis)`.
//! 6. **Priority classes.** For a `best_effort` subnet, `overload` is evaluated per candidate;
//!    overloaded candidates stay listed (flagged in [`CandidateDetail::overloaded`]) but the
//!    band is drawn over the others only, so they take no new best-effort flows. If *every*
//!    candidate is overloaded, best effort keeps the band drawn over all of them (degraded
//!    service rather than none). `high` subnets ignore `overload` (it is not evaluated). An
//!    `overload` evaluation error counts as not overloaded (and is counted).
//! 7. **Upward report.** G over the group-less entry's candidates. A subnet with no candidate,
//!    or whose G fails (counted), is not reported upward: the router above then stops sending
//!    that subnet's new flows here.
//!
//! # Why equal children do not oscillate
//!
//! Reports lag the flows they describe by an interval. Sending every new flow to the momentary
//! minimum makes that child the most loaded at the next report and the other one the minimum:
//! the whole load swings from one child to the other every interval (herding). Three mechanisms
//! prevent it:
//!
//! - **EWMA damping** of every metric: a child's smoothed load moves only part of the way
//!   towards each new report, so noise and one interval's imbalance move costs a little;
//! - **a near-equal band with rendezvous spreading**: children whose costs are within the band
//!   all take new flows, spread by rendezvous hashing on the packet path, so near-equal
//!   children share new flows in proportion to their count instead of one taking all;
//! - **hysteresis**: a child leaves the band only when its cost exceeds the band by a further
//!   margin, so a child near the band's edge does not flap in and out every interval.
//!
//! The test `tests/oscillation.rs` simulates two equal sites over 20 intervals, splitting 10,000
//! new flows per interval with the packet path's rendezvous hashing and reporting load = flows
//! / capacity + noise: with the defaults every interval's split stays within 50 +- 10 % (it
//! measures 49-51 %); with `damping = 1` and `band = 0` the same simulation sends 100 % then 0 %
//! of new flows to a site, alternately.
//!
//! # Cost of a rebuild
//!
//! F is evaluated about once per (subnet, candidate): 100,000 times for 10,000 subnets of 10
//! candidates. The `cel` interpreter takes a few hundred nanoseconds per evaluation, so
//! expressions made of arithmetic, comparisons and conditionals over doubles, ints and strings
//! (the usual cost functions, and G as `math.least(m)`, `sum(m)`, ...) are also translated into
//! a typed tree evaluated directly, with the interpreter taking over whenever that cannot give
//! CEL's answer by itself (a missing metric, a NaN comparison); see
//! [`Policy::evaluated_directly`]. Tests compare the two on generated expressions.
//! `cargo bench -p slr-policy --bench build` measures both.

mod builder;
mod config;
mod direct;
mod error;
mod expr;
mod metrics;
mod vars;

pub use builder::{
    BuildCounters, BuildOutput, Builder, CandidateDetail, ChildInput, EntryDetail,
    ExcludedCandidate, Inputs, Priority, Report, ServedSubnet,
};
pub use config::{Policy, PolicyConfig};
pub use error::PolicyError;
