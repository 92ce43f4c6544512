//! Building a [`RouteTable`] and the upward reports from the children's reports.

use std::collections::{BTreeMap, HashMap};

use cel::common::types::{CelMap, CelString};
use slr_core::route_table::{ClientGroup, RouteCandidate, RouteEntry, RouteTable};
use slr_wire::Ipv4Cidr;

use crate::expr::{self, ChildVals, EvalError, FVars, GResult, GVars, TimeVals, Var};
use crate::metrics::{Interner, Metrics};
use crate::Policy;

/// The priority class of a virtual subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// High priority: the overload predicate is ignored, every candidate in the band takes new
    /// flows.
    High,
    /// Best effort: candidates for which the overload predicate holds take no new flows,
    /// unless every candidate is overloaded.
    #[default]
    BestEffort,
}

impl Priority {
    /// The name expressions see in `priority`: `"high"` or `"best_effort"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::BestEffort => "best_effort",
        }
    }
}

/// A virtual subnet this router serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedSubnet {
    /// The subnet.
    pub subnet: Ipv4Cidr,
    /// Its priority class.
    pub priority: Priority,
}

/// One child (a lower router, or a host server) as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChildInput {
    /// Its name: the next hop name entries refer to.
    pub name: String,
    /// The operator's labels (`labels` in expressions).
    pub labels: BTreeMap<String, String>,
    /// The static routing cost (`cost`).
    pub static_cost: f64,
    /// The round-trip time measured by probes, in milliseconds; `None` when not measured.
    pub rtt_ms: Option<f64>,
    /// Whether the child is live (false once it has been silent for the daemon's limit): a
    /// child that is not live is no candidate, and its smoothing state is dropped.
    pub live: bool,
    /// Sequence number of `report`: the report is smoothed into the metrics once per new
    /// sequence number, however often the table is rebuilt.
    pub report_seq: u64,
    /// Its last report: per virtual subnet it serves, named metrics.
    pub report: Vec<(Ipv4Cidr, BTreeMap<String, f64>)>,
}

/// Everything a build reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inputs {
    /// Wall time of the build, in milliseconds since the Unix epoch (`now`, `hour`, ...).
    pub now_unix_ms: i64,
    /// Client groups, copied into the table.
    pub client_groups: Vec<ClientGroup>,
    /// The virtual subnets this router serves.
    pub subnets: Vec<ServedSubnet>,
    /// The children.
    pub children: Vec<ChildInput>,
}

/// How one candidate of an entry was chosen, for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CandidateDetail {
    /// Whether the overload predicate held (evaluated for best-effort subnets only).
    pub overloaded: bool,
    /// Whether it is in the chosen band.
    pub in_band: bool,
}

/// A live child that serves an entry's subnet but is not a candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct ExcludedCandidate {
    /// Its name.
    pub next_hop: String,
    /// Why: the evaluation error, or the unusable cost.
    pub reason: String,
}

/// How an entry was chosen, for inspection: `details[i]` describes `table.entries[i]`, and
/// `details[i].candidates[j]` its candidate `j` (name and cost are in the table).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryDetail {
    /// The subnet's priority class.
    pub priority: Priority,
    /// Per candidate of the entry, in the table's order (lowest cost first).
    pub candidates: Vec<CandidateDetail>,
    /// Live children that serve the subnet but were left out.
    pub excluded: Vec<ExcludedCandidate>,
}

/// Counters of one build.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BuildCounters {
    /// Entries in the table.
    pub entries: u64,
    /// Expression evaluations (F, overload and G).
    pub evaluations: u64,
    /// Evaluations that failed or gave an unusable result (the child is left out of that
    /// entry; for G the subnet is not reported upward).
    pub eval_errors: u64,
    /// The last evaluation error of this build, if any.
    pub last_error: Option<String>,
}

/// What a build produces.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOutput {
    /// The table to install into the router (generation one more than the previous build's).
    pub table: RouteTable,
    /// What to report upward: per subnet, G's metrics plus `children` and `flows`.
    pub reports: Vec<(Ipv4Cidr, BTreeMap<String, f64>)>,
    /// Per table entry, how it was chosen (same order as `table.entries`).
    pub details: Vec<EntryDetail>,
    /// Counters.
    pub counters: BuildCounters,
}

/// One reported subnet of a child, smoothed.
#[derive(Debug)]
struct Smoothed {
    subnet: Ipv4Cidr,
    metrics: Metrics,
}

/// What the builder remembers of a live child between builds.
#[derive(Debug)]
struct ChildState {
    /// Stable id (the previous bands refer to it).
    id: u32,
    /// Sequence number of the last report smoothed in.
    seq: u64,
    /// Smoothed reports, sorted by subnet.
    reports: Vec<Smoothed>,
    /// Seen in the current build.
    seen: bool,
}

impl ChildState {
    /// Smooths a new report in (see [`Metrics::smooth`]); a subnet no longer reported is
    /// dropped, a new one starts from its first report. If a subnet appears twice, the last
    /// wins.
    fn apply(
        &mut self,
        report: &[(Ipv4Cidr, BTreeMap<String, f64>)],
        alpha: f64,
        names: &mut Interner,
    ) {
        let same_subnets = report.len() == self.reports.len()
            && report
                .iter()
                .zip(&self.reports)
                .all(|((s, _), r)| *s == r.subnet);
        if same_subnets {
            for ((_, m), r) in report.iter().zip(self.reports.iter_mut()) {
                r.metrics.smooth(m, alpha, names);
            }
            return;
        }
        let mut old = std::mem::take(&mut self.reports);
        let mut next: Vec<Smoothed> = Vec::with_capacity(report.len());
        for (subnet, m) in report {
            let metrics = match old.binary_search_by(|r| r.subnet.cmp(subnet)) {
                Ok(i) => {
                    let mut metrics = std::mem::take(&mut old[i].metrics);
                    metrics.smooth(m, alpha, names);
                    metrics
                }
                Err(_) => Metrics::new(m, names),
            };
            next.push(Smoothed {
                subnet: *subnet,
                metrics,
            });
        }
        // Stable sort, then keep the last of equal subnets.
        next.sort_by(|a, b| a.subnet.cmp(&b.subnet));
        next.reverse();
        next.dedup_by(|a, b| a.subnet == b.subnet);
        next.reverse();
        self.reports = next;
    }
}

/// The previous chosen band of one entry.
#[derive(Debug)]
struct PreviousBand {
    subnet: Ipv4Cidr,
    group: Option<String>,
    /// Range of `Builder::previous_ids`.
    ids: std::ops::Range<usize>,
}

/// The last evaluation error, kept raw until the end of the build.
struct LastError {
    key: &'static str,
    child: Option<usize>,
    subnet: Ipv4Cidr,
    group: Option<usize>,
    error: EvalError,
}

/// One usable candidate of an entry during the build.
struct Cand {
    /// Index in the live children.
    child: usize,
    /// Index of the report used, in the child's smoothed reports.
    report: usize,
    cost: f64,
    overloaded: bool,
    in_band: bool,
}

/// A live child during a build.
struct Live<'a> {
    input: &'a ChildInput,
    state: &'a ChildState,
    vals: ChildVals,
}

/// The served subnets, for the two questions a build asks.
struct Served {
    /// Sorted by subnet.
    sorted: Vec<(Ipv4Cidr, Priority)>,
    /// Prefix lengths present, longest first.
    lengths: Vec<u8>,
}

impl Served {
    fn new(subnets: &[ServedSubnet]) -> Self {
        let mut sorted: Vec<(Ipv4Cidr, Priority)> =
            subnets.iter().map(|s| (s.subnet, s.priority)).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0); // the first of duplicates wins
        let mut lengths: Vec<u8> = sorted.iter().map(|s| s.0.prefix_len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        Served { sorted, lengths }
    }

    /// The priority of the most specific served subnet that covers `c`, if any does.
    fn covering(&self, c: &Ipv4Cidr) -> Option<Priority> {
        self.lengths
            .iter()
            .filter(|&&l| l <= c.prefix_len())
            .find_map(|&l| {
                let v = Ipv4Cidr::new(c.addr(), l)?;
                let i = self.sorted.binary_search_by(|s| s.0.cmp(&v)).ok()?;
                Some(self.sorted[i].1)
            })
    }
}

/// The indices of the sorted prefixes whose address lies inside `c` (callers check lengths).
fn inside<T>(sorted: &[T], key: impl Fn(&T) -> Ipv4Cidr, c: &Ipv4Cidr) -> std::ops::Range<usize> {
    let lo = u32::from(c.addr());
    let hi = if c.prefix_len() == 0 {
        u32::MAX
    } else {
        lo | (u32::MAX >> c.prefix_len())
    };
    let start = sorted.partition_point(|x| u32::from(key(x).addr()) < lo);
    let end = sorted.partition_point(|x| u32::from(key(x).addr()) <= hi);
    start..end
}

/// Builds route tables, keeping what must persist from one build to the next: the smoothed
/// metrics (EWMA state) of every live child and the previous chosen band of every entry.
#[derive(Debug)]
pub struct Builder {
    policy: Policy,
    generation: u64,
    children: HashMap<String, ChildState>,
    next_id: u32,
    names: Interner,
    /// Previous chosen bands, sorted by (subnet, group).
    previous: Vec<PreviousBand>,
    previous_ids: Vec<u32>,
    last_error: Option<String>,
}

impl Builder {
    /// A builder with no state: the first build smooths nothing and has no previous bands.
    pub fn new(policy: Policy) -> Self {
        Builder {
            policy,
            generation: 0,
            children: HashMap::new(),
            next_id: 0,
            names: Interner::default(),
            previous: Vec::new(),
            previous_ids: Vec::new(),
            last_error: None,
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (configuration reload), keeping the smoothed metrics, the previous
    /// bands and the generation.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The generation of the last table built (0 before the first build).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last evaluation error of any build so far, for inspection.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The smoothed metrics of a live child for a subnet it reports (what `s` shows F).
    pub fn smoothed(&self, child: &str, subnet: Ipv4Cidr) -> Option<BTreeMap<String, f64>> {
        let st = self.children.get(child)?;
        st.reports
            .binary_search_by(|r| r.subnet.cmp(&subnet))
            .ok()
            .map(|i| st.reports[i].metrics.to_map())
    }

    /// Smooths the new reports in and forgets the children that are gone or not live.
    fn smooth(&mut self, inputs: &Inputs) {
        let alpha = self.policy.config.damping;
        for st in self.children.values_mut() {
            st.seen = false;
        }
        for c in inputs.children.iter().filter(|c| c.live) {
            let st = match self.children.get_mut(&c.name) {
                Some(st) => st,
                None => {
                    let id = self.next_id;
                    self.next_id = self.next_id.wrapping_add(1);
                    self.children.entry(c.name.clone()).or_insert(ChildState {
                        id,
                        seq: c.report_seq,
                        reports: Vec::new(),
                        seen: false,
                    })
                }
            };
            if st.seen {
                continue; // a name given twice: the first wins
            }
            st.seen = true;
            if st.seq != c.report_seq || st.reports.is_empty() {
                st.apply(&c.report, alpha, &mut self.names);
                st.seq = c.report_seq;
            }
        }
        self.children.retain(|_, st| st.seen);
        self.names.collect_garbage();
    }

    /// Builds the table, the upward reports and the details from `inputs` (see the crate
    /// documentation for the rules).
    pub fn build(&mut self, inputs: &Inputs) -> BuildOutput {
        let t0 = std::time::Instant::now();
        self.smooth(inputs);
        eprintln!("smooth {:?}", t0.elapsed());
        let policy = &self.policy;
        let cfg = &policy.config;
        let mut counters = BuildCounters::default();
        let mut last: Option<LastError> = None;

        // Time variables.
        let ts = jiff::Timestamp::from_millisecond(inputs.now_unix_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let zoned = ts.to_zoned(policy.timezone.clone());
        let time = TimeVals::new(
            ts.as_second(),
            i64::from(zoned.hour()),
            i64::from(zoned.minute()),
            i64::from(zoned.weekday().to_sunday_zero_offset()),
        );
        let uses = |v: Var| {
            policy.f.uses(v)
                || policy.g.uses(v)
                || policy.overload.as_ref().is_some_and(|o| o.uses(v))
        };
        let no_labels = CelMap::default();

        // Live children, each once, with their variables converted.
        let mut seen_names = std::collections::HashSet::new();
        let live: Vec<Live<'_>> = inputs
            .children
            .iter()
            .filter(|c| c.live && seen_names.insert(c.name.as_str()))
            .map(|c| {
                let rtt = c.rtt_ms.unwrap_or(0.0);
                let r = c.static_cost + cfg.rtt_weight * rtt;
                let labels = if uses(Var::Labels) {
                    expr::labels_val(&c.labels)
                } else {
                    no_labels.clone()
                };
                Live {
                    input: c,
                    state: &self.children[&c.name],
                    vals: ChildVals::new(&c.name, c.static_cost, rtt, r, labels),
                }
            })
            .collect();

        eprintln!("live {:?}", t0.elapsed());
        // Entry subnets: each reported subnet intersected with each served subnet it overlaps
        // (the more specific of the two).
        let served = Served::new(&inputs.subnets);
        let mut entry_subnets: Vec<Ipv4Cidr> = Vec::new();
        for l in &live {
            for rep in &l.state.reports {
                let x = rep.subnet;
                if served.covering(&x).is_some() {
                    entry_subnets.push(x);
                }
                for (v, _) in &served.sorted[inside(&served.sorted, |s| s.0, &x)] {
                    if v.prefix_len() > x.prefix_len() {
                        entry_subnets.push(*v);
                    }
                }
            }
        }
        entry_subnets.sort_unstable();
        entry_subnets.dedup();

        eprintln!("entries {:?}", t0.elapsed());
        // Candidates per entry subnet: each live child with a report covering it, with its
        // most specific such report.
        let mut cands: Vec<Vec<(usize, usize)>> = vec![Vec::new(); entry_subnets.len()];
        for (ci, l) in live.iter().enumerate() {
            for (ri, rep) in l.state.reports.iter().enumerate() {
                let x = rep.subnet;
                for ei in inside(&entry_subnets, |s| *s, &x) {
                    if entry_subnets[ei].prefix_len() < x.prefix_len() {
                        continue;
                    }
                    let list = &mut cands[ei];
                    match list.last_mut() {
                        Some(last) if last.0 == ci => {
                            if l.state.reports[last.1].subnet.prefix_len() < x.prefix_len() {
                                last.1 = ri;
                            }
                        }
                        _ => list.push((ci, ri)),
                    }
                }
            }
        }

        eprintln!("cands {:?}", t0.elapsed());
        // Client groups get entries of their own only when an expression can tell them apart:
        // otherwise they would be copies of the group-less entry, which their flows fall back
        // to anyway.
        let per_group = policy.f.uses(Var::Group)
            || policy.overload.as_ref().is_some_and(|o| o.uses(Var::Group));
        let mut groups: Vec<(Option<usize>, CelString<'static>)> =
            vec![(None, CelString::from(String::new()))];
        if per_group {
            groups.extend(
                inputs
                    .client_groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (Some(i), CelString::from(g.name.clone()))),
            );
        }
        let high = CelString::from(Priority::High.as_str().to_owned());
        let best_effort = CelString::from(Priority::BestEffort.as_str().to_owned());
        let uses_subnet = uses(Var::Subnet);

        let mut table = RouteTable {
            generation: self.generation + 1,
            client_groups: inputs.client_groups.clone(),
            entries: Vec::with_capacity(entry_subnets.len() * groups.len()),
        };
        let mut details = Vec::with_capacity(table.entries.capacity());
        let mut reports = Vec::with_capacity(entry_subnets.len());
        let mut previous = Vec::with_capacity(table.entries.capacity());
        let mut previous_ids = Vec::with_capacity(self.previous_ids.len());
        let mut valid: Vec<Cand> = Vec::new();
        let name = |c: &Cand| &live[c.child].input.name;

        let mut f_time = std::time::Duration::ZERO;
        let mut g_time = std::time::Duration::ZERO;
        for (ei, subnet) in entry_subnets.iter().enumerate() {
            let priority = served.covering(subnet).unwrap_or_default();
            let subnet_val = CelString::from(if uses_subnet {
                subnet.to_string()
            } else {
                String::new()
            });
            let priority_val = match priority {
                Priority::High => &high,
                Priority::BestEffort => &best_effort,
            };
            for (gi, group_val) in &groups {
                valid.clear();
                let mut excluded = Vec::new();
                for &(ci, ri) in &cands[ei] {
                    let l = &live[ci];
                    let vars = FVars {
                        s: &l.state.reports[ri].metrics,
                        child: &l.vals,
                        subnet: &subnet_val,
                        group: group_val,
                        priority: priority_val,
                        time: &time,
                    };
                    counters.evaluations += 1;
                    let tf = std::time::Instant::now();
                    let cost = expr::eval_number(&policy.env, &policy.f, &vars);
                    f_time += tf.elapsed();
                    let cost = cost.and_then(|c| {
                        if c.is_finite() && c >= 0.0 {
                            Ok(c)
                        } else {
                            Err(EvalError::Result(format!(
                                "cost {c} is not a finite number >= 0"
                            )))
                        }
                    });
                    let cost = match cost {
                        Ok(c) => c,
                        Err(e) => {
                            counters.eval_errors += 1;
                            excluded.push(ExcludedCandidate {
                                next_hop: l.input.name.clone(),
                                reason: format!("{}: {e}", policy.f.key),
                            });
                            last = Some(LastError {
                                key: policy.f.key,
                                child: Some(ci),
                                subnet: *subnet,
                                group: *gi,
                                error: e,
                            });
                            continue;
                        }
                    };
                    let overloaded = match (&policy.overload, priority) {
                        (Some(o), Priority::BestEffort) => {
                            counters.evaluations += 1;
                            match expr::eval_bool(&policy.env, o, &vars) {
                                Ok(b) => b,
                                Err(e) => {
                                    // A failing predicate does not take the child out: it is
                                    // treated as not overloaded, and counted.
                                    counters.eval_errors += 1;
                                    last = Some(LastError {
                                        key: o.key,
                                        child: Some(ci),
                                        subnet: *subnet,
                                        group: *gi,
                                        error: e,
                                    });
                                    false
                                }
                            }
                        }
                        _ => false,
                    };
                    valid.push(Cand {
                        child: ci,
                        report: ri,
                        cost,
                        overloaded,
                        in_band: false,
                    });
                }
                valid.sort_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| name(a).cmp(name(b))));

                // The band, over the candidates that are not overloaded (all of them if every
                // one is), with hysteresis for the previous members.
                let group = gi.map(|g| inputs.client_groups[g].name.as_str());
                let prev = self
                    .previous
                    .binary_search_by(|p| (p.subnet, p.group.as_deref()).cmp(&(*subnet, group)))
                    .ok()
                    .map(|i| &self.previous_ids[self.previous[i].ids.clone()]);
                let any_free = valid.iter().any(|c| !c.overloaded);
                let eligible = |c: &Cand| !any_free || !c.overloaded;
                if let Some(min) = valid.iter().find(|c| eligible(c)).map(|c| c.cost) {
                    let width = (cfg.band * min).max(cfg.band_abs);
                    let sticky = min + width * (1.0 + cfg.hysteresis);
                    for c in valid.iter_mut() {
                        let was = prev.is_some_and(|p| p.contains(&live[c.child].state.id));
                        c.in_band =
                            eligible(c) && (c.cost <= min + width || (was && c.cost <= sticky));
                    }
                }
                let start = previous_ids.len();
                previous_ids.extend(
                    valid
                        .iter()
                        .filter(|c| c.in_band)
                        .map(|c| live[c.child].state.id),
                );
                previous.push(PreviousBand {
                    subnet: *subnet,
                    group: group.map(str::to_owned),
                    ids: start..previous_ids.len(),
                });

                table.entries.push(RouteEntry {
                    subnet: *subnet,
                    client_group: group.map(str::to_owned),
                    candidates: valid
                        .iter()
                        .map(|c| RouteCandidate {
                            next_hop: name(c).clone(),
                            cost: c.cost,
                        })
                        .collect(),
                    chosen: valid
                        .iter()
                        .filter(|c| c.in_band)
                        .map(|c| name(c).clone())
                        .collect(),
                });
                details.push(EntryDetail {
                    priority,
                    candidates: valid
                        .iter()
                        .map(|c| CandidateDetail {
                            overloaded: c.overloaded,
                            in_band: c.in_band,
                        })
                        .collect(),
                    excluded,
                });

                // G, once per subnet, over the group-less entry's candidates.
                if gi.is_some() || valid.is_empty() {
                    continue;
                }
                let metrics = |c: &Cand| &live[c.child].state.reports[c.report].metrics;
                let s: Vec<&Metrics> = valid.iter().map(metrics).collect();
                let r: Vec<f64> = valid.iter().map(|c| live[c.child].vals.r()).collect();
                let m: Vec<f64> = valid.iter().map(|c| c.cost).collect();
                let names: Vec<&CelString<'static>> =
                    valid.iter().map(|c| live[c.child].vals.name()).collect();
                let tg = std::time::Instant::now();
                let gvars = GVars::new(&s, &r, &m, &names, &subnet_val, &time, &policy.g);
                counters.evaluations += 1;
                let result = expr::eval_g(&policy.env, &policy.g, &gvars).and_then(|g| {
                    let mut out = match g {
                        GResult::Number(x) => BTreeMap::from([("load".to_owned(), x)]),
                        GResult::Map(m) => m,
                    };
                    if let Some((k, x)) = out.iter().find(|(_, x)| !x.is_finite()) {
                        return Err(EvalError::Result(format!(
                            "reported {k} = {x}, not a finite number"
                        )));
                    }
                    out.entry("children".to_owned())
                        .or_insert(valid.len() as f64);
                    let flows = s.iter().filter_map(|m| m.get("flows"));
                    if flows.clone().next().is_some() {
                        out.entry("flows".to_owned()).or_insert(flows.sum());
                    }
                    Ok(out)
                });
                g_time += tg.elapsed();
                match result {
                    Ok(out) => reports.push((*subnet, out)),
                    Err(e) => {
                        counters.eval_errors += 1;
                        last = Some(LastError {
                            key: policy.g.key,
                            child: None,
                            subnet: *subnet,
                            group: None,
                            error: e,
                        });
                    }
                }
            }
        }

        eprintln!("loop {:?} f {f_time:?} g {g_time:?}", t0.elapsed());
        counters.entries = table.entries.len() as u64;
        if let Some(l) = last {
            let child = l
                .child
                .map(|c| format!("child {:?}, ", live[c].input.name))
                .unwrap_or_default();
            let group = l
                .group
                .map(|g| inputs.client_groups[g].name.as_str())
                .unwrap_or("");
            let msg = format!(
                "{} ({child}subnet {}, group {group:?}): {}",
                l.key, l.subnet, l.error
            );
            self.last_error = Some(msg.clone());
            counters.last_error = Some(msg);
        }
        drop(live);
        previous
            .sort_by(|a, b| (a.subnet, a.group.as_deref()).cmp(&(b.subnet, b.group.as_deref())));
        self.previous = previous;
        self.previous_ids = previous_ids;
        self.generation += 1;
        BuildOutput {
            table,
            reports,
            details,
            counters,
        }
    }
}
