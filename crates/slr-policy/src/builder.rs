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

/// Per virtual subnet, named metrics: what a child reports, and what a build reports upward.
pub type Report = Vec<(Ipv4Cidr, BTreeMap<String, f64>)>;

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
    pub report: Report,
}

/// Everything a build reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inputs {
    /// Wall time of the build, in milliseconds since the Unix epoch (`now`, `hour`, ...); a time
    /// outside the years -9999..=9999 counts as the epoch.
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
    pub reports: Report,
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
        next.sort_by_key(|a| a.subnet);
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
        sorted.sort_by_key(|a| a.0);
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
        self.smooth(inputs);
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

        // Every report of every live child, grouped by reported subnet.
        let key = |c: &Ipv4Cidr| u64::from(u32::from(c.addr())) << 8 | u64::from(c.prefix_len());
        let mut reps: Vec<(u64, u32, u32)> = live
            .iter()
            .enumerate()
            .flat_map(|(ci, l)| {
                l.state
                    .reports
                    .iter()
                    .enumerate()
                    .map(move |(ri, r)| (key(&r.subnet), ci as u32, ri as u32))
            })
            .collect();
        reps.sort_unstable_by_key(|r| r.0);
        let mut reported: Vec<(Ipv4Cidr, std::ops::Range<usize>)> = Vec::new();
        for (i, r) in reps.iter().enumerate() {
            match reported.last_mut() {
                Some((_, range)) if reps[range.start].0 == r.0 => range.end = i + 1,
                _ => {
                    let (ci, ri) = (r.1 as usize, r.2 as usize);
                    reported.push((live[ci].state.reports[ri].subnet, i..i + 1));
                }
            }
        }

        // Entry subnets: each reported subnet intersected with each served subnet it overlaps
        // (the more specific of the two).
        let served = Served::new(&inputs.subnets);
        let mut entry_subnets: Vec<Ipv4Cidr> = Vec::new();
        for (x, _) in &reported {
            if served.covering(x).is_some() {
                entry_subnets.push(*x);
            }
            for (v, _) in &served.sorted[inside(&served.sorted, |s| s.0, x)] {
                if v.prefix_len() > x.prefix_len() {
                    entry_subnets.push(*v);
                }
            }
        }
        entry_subnets.sort_unstable();
        entry_subnets.dedup();

        // Candidates per entry subnet: each live child with a report covering it, with its
        // most specific such report.
        let mut cands: Vec<Vec<(usize, usize)>> = vec![Vec::new(); entry_subnets.len()];
        let mut nested = Vec::new();
        for (x, range) in &reported {
            for ei in inside(&entry_subnets, |s| *s, x) {
                if entry_subnets[ei].prefix_len() < x.prefix_len() {
                    continue;
                }
                if !cands[ei].is_empty() {
                    nested.push(ei);
                }
                cands[ei].extend(
                    reps[range.clone()]
                        .iter()
                        .map(|r| (r.1 as usize, r.2 as usize)),
                );
            }
        }
        nested.sort_unstable();
        nested.dedup();
        for ei in nested {
            // Reports of several subnets cover this entry: keep each child's most specific.
            let list = &mut cands[ei];
            let len = |&(ci, ri): &(usize, usize)| live[ci].state.reports[ri].subnet.prefix_len();
            list.sort_by(|a, b| a.0.cmp(&b.0).then(len(b).cmp(&len(a))));
            list.dedup_by_key(|c| c.0);
        }

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
        let no_subnet = CelString::from(String::new());
        let priorities: Vec<Priority> = entry_subnets
            .iter()
            .map(|e| served.covering(e).unwrap_or_default())
            .collect();
        let subnet_vals: Vec<CelString<'static>> = if uses(Var::Subnet) {
            entry_subnets
                .iter()
                .map(|e| CelString::from(e.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let subnet_val = |ei: usize| subnet_vals.get(ei).unwrap_or(&no_subnet);

        // The candidates of entry `ei` are `slots[starts[ei]..starts[ei + 1]]`.
        let mut starts = Vec::with_capacity(entry_subnets.len() + 1);
        let mut slots: Vec<(u32, u32, u32)> = Vec::with_capacity(reps.len());
        for (ei, list) in cands.iter().enumerate() {
            starts.push(slots.len());
            slots.extend(
                list.iter()
                    .map(|&(ci, ri)| (ci as u32, ri as u32, ei as u32)),
            );
        }
        starts.push(slots.len());
        drop(cands);

        // F (and the overload predicate) for every slot, child by child: each child's reports
        // are contiguous in memory, which a subnet-by-subnet order would visit at random.
        let mut by_child = vec![0usize; live.len() + 1];
        for s in &slots {
            by_child[s.0 as usize + 1] += 1;
        }
        for i in 1..by_child.len() {
            by_child[i] += by_child[i - 1];
        }
        let mut order = vec![0u32; slots.len()];
        for (k, s) in slots.iter().enumerate() {
            let at = &mut by_child[s.0 as usize];
            order[*at] = k as u32;
            *at += 1;
        }
        // Per group: the cost of each slot (NaN: excluded, the reason in `errors`), and
        // whether the child is overloaded there.
        let mut costs = vec![f64::NAN; slots.len() * groups.len()];
        let mut overloaded = vec![false; slots.len() * groups.len()];
        let mut errors: HashMap<usize, EvalError> = HashMap::new();
        for (g, (gi, group_val)) in groups.iter().enumerate() {
            for &k in &order {
                let (ci, ri, ei) = slots[k as usize];
                let (ci, ei) = (ci as usize, ei as usize);
                let l = &live[ci];
                let priority = priorities[ei];
                let vars = FVars {
                    s: &l.state.reports[ri as usize].metrics,
                    child: &l.vals,
                    subnet: subnet_val(ei),
                    group: group_val,
                    priority: match priority {
                        Priority::High => &high,
                        Priority::BestEffort => &best_effort,
                    },
                    time: &time,
                };
                let at = g * slots.len() + k as usize;
                counters.evaluations += 1;
                let cost = expr::eval_number(&policy.env, &policy.f, &vars).and_then(|c| {
                    if c.is_finite() && c >= 0.0 {
                        Ok(c)
                    } else {
                        Err(EvalError::Result(format!(
                            "cost {c} is not a finite number >= 0"
                        )))
                    }
                });
                match cost {
                    Ok(c) => costs[at] = c,
                    Err(e) => {
                        counters.eval_errors += 1;
                        last = Some(LastError {
                            key: policy.f.key,
                            child: Some(ci),
                            subnet: entry_subnets[ei],
                            group: *gi,
                            error: e.clone(),
                        });
                        errors.insert(at, e);
                        continue;
                    }
                }
                if let (Some(o), Priority::BestEffort) = (&policy.overload, priority) {
                    counters.evaluations += 1;
                    match expr::eval_bool(&policy.env, o, &vars) {
                        Ok(b) => overloaded[at] = b,
                        Err(e) => {
                            // A failing predicate does not take the child out: it is treated
                            // as not overloaded, and counted.
                            counters.eval_errors += 1;
                            last = Some(LastError {
                                key: o.key,
                                child: Some(ci),
                                subnet: entry_subnets[ei],
                                group: *gi,
                                error: e,
                            });
                        }
                    }
                }
            }
        }

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

        for (ei, subnet) in entry_subnets.iter().enumerate() {
            let priority = priorities[ei];
            for (g, (gi, _)) in groups.iter().enumerate() {
                valid.clear();
                let mut excluded = Vec::new();
                for k in starts[ei]..starts[ei + 1] {
                    let (ci, ri, _) = slots[k];
                    let at = g * slots.len() + k;
                    if let Some(e) = costs[at].is_nan().then(|| errors.get(&at)).flatten() {
                        excluded.push(ExcludedCandidate {
                            next_hop: live[ci as usize].input.name.clone(),
                            reason: format!("{}: {e}", policy.f.key),
                        });
                        continue;
                    }
                    valid.push(Cand {
                        child: ci as usize,
                        report: ri as usize,
                        cost: costs[at],
                        overloaded: overloaded[at],
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
                    // Overloaded children of a best-effort subnet keep their capacity for
                    // high-priority flows, even when the band's members fail.
                    held_back: valid
                        .iter()
                        .filter(|c| !eligible(c))
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
                let r: Vec<f64> = valid.iter().map(|c| live[c.child].vals.r()).collect();
                let m: Vec<f64> = valid.iter().map(|c| c.cost).collect();
                counters.evaluations += 1;
                let result = match expr::eval_g_direct(&policy.g, &m, &r) {
                    Some(g) => Ok(g),
                    None => {
                        let s: Vec<&Metrics> = valid.iter().map(metrics).collect();
                        let names: Vec<&CelString<'static>> =
                            valid.iter().map(|c| live[c.child].vals.name()).collect();
                        let gvars =
                            GVars::new(&s, &r, &m, &names, subnet_val(ei), &time, &policy.g);
                        expr::interpret_g(&policy.env, &policy.g, &gvars)
                    }
                };
                let result = result.and_then(|g| {
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
                    let flows = valid.iter().filter_map(|c| metrics(c).get("flows"));
                    if flows.clone().next().is_some() {
                        out.entry("flows".to_owned()).or_insert(flows.sum());
                    }
                    Ok(out)
                });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyConfig;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn policy(toml_text: &str) -> Policy {
        toml::from_str::<PolicyConfig>(toml_text)
            .unwrap()
            .compile()
            .unwrap()
    }

    /// A live child reporting `metrics` for each of `subnets`.
    fn child(
        name: &str,
        cost: f64,
        rtt: Option<f64>,
        subnets: &[&str],
        metrics: &[(&str, f64)],
    ) -> ChildInput {
        ChildInput {
            name: name.to_owned(),
            static_cost: cost,
            rtt_ms: rtt,
            live: true,
            report_seq: 1,
            report: subnets
                .iter()
                .map(|s| {
                    (
                        cidr(s),
                        metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    fn inputs(children: Vec<ChildInput>) -> Inputs {
        Inputs {
            now_unix_ms: 1_700_000_000_000,
            client_groups: Vec::new(),
            subnets: vec![ServedSubnet {
                subnet: cidr("10.99.1.0/24"),
                priority: Priority::BestEffort,
            }],
            children,
        }
    }

    /// The entry for `subnet` and `group`, with its details.
    fn entry<'a>(
        out: &'a BuildOutput,
        subnet: &str,
        group: Option<&str>,
    ) -> (&'a RouteEntry, &'a EntryDetail) {
        let i = out
            .table
            .entries
            .iter()
            .position(|e| e.subnet == cidr(subnet) && e.client_group.as_deref() == group)
            .unwrap_or_else(|| panic!("no entry for {subnet} {group:?} in {:#?}", out.table));
        (&out.table.entries[i], &out.details[i])
    }

    /// Asserts the candidates (name, cost), in order, and the chosen band.
    fn assert_entry(e: &RouteEntry, costs: &[(&str, f64)], chosen: &[&str]) {
        let got: Vec<(&str, f64)> = e
            .candidates
            .iter()
            .map(|c| (c.next_hop.as_str(), c.cost))
            .collect();
        assert_eq!(got.len(), costs.len(), "{got:?} vs {costs:?}");
        for ((n, c), (wn, wc)) in got.iter().zip(costs) {
            assert_eq!(n, wn, "{got:?} vs {costs:?}");
            assert!((c - wc).abs() < 1e-9, "{n}: cost {c}, expected {wc}");
        }
        assert_eq!(e.chosen, chosen, "chosen band of {}", e.subnet);
    }

    #[test]
    fn f_load_plus_routing_cost() {
        // r = cost + 0.1 * rtt: a 0.1 + 0.1 = 0.2, b 0.0 (rtt not measured), c 0.5 + 0.2 = 0.7.
        // m = s.load + r: a 0.3 + 0.2 = 0.5, b 0.5, c 0.2 + 0.7 = 0.9.
        // Band: 0.5 + max(0.1 * 0.5, 0.01) = 0.55: a and b (equal cost: by name).
        let mut b = Builder::new(policy("rtt_weight = 0.1"));
        let out = b.build(&inputs(vec![
            child(
                "a",
                0.1,
                Some(1.0),
                &["10.99.1.0/24"],
                &[("load", 0.3), ("flows", 10.0)],
            ),
            child(
                "b",
                0.0,
                None,
                &["10.99.1.0/24"],
                &[("load", 0.5), ("flows", 20.0)],
            ),
            child("c", 0.5, Some(2.0), &["10.99.1.0/24"], &[("load", 0.2)]),
        ]));
        let (e, d) = entry(&out, "10.99.1.0/24", None);
        assert_entry(e, &[("a", 0.5), ("b", 0.5), ("c", 0.9)], &["a", "b"]);
        assert_eq!(
            d.candidates.iter().map(|c| c.in_band).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(out.table.generation, 1);
        assert_eq!(out.counters.entries, 1);
        assert_eq!(out.counters.evaluations, 4, "3 F + 1 G");
        // G = math.least(m) = 0.5, plus the count of candidates and the sum of their flows.
        assert_eq!(
            out.reports,
            vec![(
                cidr("10.99.1.0/24"),
                BTreeMap::from([
                    ("load".to_owned(), 0.5),
                    ("children".to_owned(), 3.0),
                    ("flows".to_owned(), 30.0)
                ])
            )]
        );
        out.table.validate().unwrap();
    }

    #[test]
    fn f_cpu_and_rtt() {
        // m = s.cpu * 100 + rtt: a 20 + 30 = 50, b 40 + 5 = 45, c 10 + 40 = 50.
        // Band: 45 + 4.5 = 49.5: b alone.
        let mut b = Builder::new(policy("f = 's.cpu * 100.0 + rtt'"));
        let out = b.build(&inputs(vec![
            child("a", 0.0, Some(30.0), &["10.99.1.0/24"], &[("cpu", 0.2)]),
            child("b", 9.0, Some(5.0), &["10.99.1.0/24"], &[("cpu", 0.4)]),
            child("c", 0.0, Some(40.0), &["10.99.1.0/24"], &[("cpu", 0.1)]),
        ]));
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("b", 45.0), ("a", 50.0), ("c", 50.0)],
            &["b"],
        );
    }

    #[test]
    fn f_by_time_of_day_in_the_configured_time_zone() {
        // Office hours in Paris: load weighs ten times more.
        // a: load 0.5, r 1; b: load 0.1, r 4.
        // Day:   a 5 + 1 = 6,     b 1 + 4 = 5     -> b.
        // Night: a 0.5 + 1 = 1.5, b 0.1 + 4 = 4.1 -> a.
        let cfg = r#"
            f = "hour >= 9 && hour < 17 ? s.load * 10.0 + r : s.load + r"
            timezone = "Europe/Paris"
        "#;
        let children = || {
            vec![
                child("a", 1.0, None, &["10.99.1.0/24"], &[("load", 0.5)]),
                child("b", 4.0, None, &["10.99.1.0/24"], &[("load", 0.1)]),
            ]
        };
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let mut b = Builder::new(policy(cfg));
        // 08:30 UTC is 09:30 in Paris in January (UTC+1): office hours.
        let mut i = inputs(children());
        i.now_unix_ms = at("2024-01-15T08:30:00Z");
        let out = b.build(&i);
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("b", 5.0), ("a", 6.0)],
            &["b"],
        );
        // 16:30 UTC is 17:30 in Paris: evening.
        i.now_unix_ms = at("2024-01-15T16:30:00Z");
        let out = b.build(&i);
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("a", 1.5), ("b", 4.1)],
            &["a"],
        );
        // The same 08:30 UTC in UTC is not office hours.
        let mut b = Builder::new(policy(&cfg.replace("Europe/Paris", "UTC")));
        i.now_unix_ms = at("2024-01-15T08:30:00Z");
        let out = b.build(&i);
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("a", 1.5), ("b", 4.1)],
            &["a"],
        );
    }

    #[test]
    fn f_by_client_location_with_labels_and_groups() {
        // Clients of a group go to a child of their region unless it costs 100 more.
        // a (eu): load 0.5; b (us): load 0.3.
        //   no group: a 0.5, b 0.3          -> b (0.5 > 0.3 + 0.03)
        //   eu:       a 0.5, b 100.3        -> a
        //   us:       b 0.3, a 100.5        -> b
        let cfg = r#"f = "(group != '' && labels.region != group ? 100.0 : 0.0) + s.load + r""#;
        let mut a = child("a", 0.0, None, &["10.99.1.0/24"], &[("load", 0.5)]);
        a.labels.insert("region".into(), "eu".into());
        let mut b = child("b", 0.0, None, &["10.99.1.0/24"], &[("load", 0.3)]);
        b.labels.insert("region".into(), "us".into());
        let mut i = inputs(vec![a, b]);
        i.client_groups = vec![
            ClientGroup {
                name: "eu".into(),
                prefixes: vec![cidr("10.1.0.0/16")],
            },
            ClientGroup {
                name: "us".into(),
                prefixes: vec![cidr("10.2.0.0/16")],
            },
        ];
        let out = Builder::new(policy(cfg)).build(&i);
        assert_eq!(out.table.entries.len(), 3);
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("b", 0.3), ("a", 0.5)],
            &["b"],
        );
        assert_entry(
            entry(&out, "10.99.1.0/24", Some("eu")).0,
            &[("a", 0.5), ("b", 100.3)],
            &["a"],
        );
        assert_entry(
            entry(&out, "10.99.1.0/24", Some("us")).0,
            &[("b", 0.3), ("a", 100.5)],
            &["b"],
        );
        assert_eq!(out.table.client_groups, i.client_groups);
        out.table.validate().unwrap();

        // An F that cannot tell groups apart gives them no entries of their own.
        let out = Builder::new(policy("")).build(&i);
        assert_eq!(out.table.entries.len(), 1);
    }

    /// Two site routers report to an AS router; G decides what the AS router sees.
    fn as_choice(g: &str, parent_f: &str) -> (Report, RouteEntry) {
        let site = |loads: [(f64, f64); 2]| {
            let out =
                Builder::new(policy(&format!("f = 's.load'\ng = '{g}'"))).build(&inputs(vec![
                    child(
                        "h1",
                        0.0,
                        None,
                        &["10.99.1.0/24"],
                        &[("load", loads[0].0), ("flows", loads[0].1)],
                    ),
                    child(
                        "h2",
                        0.0,
                        None,
                        &["10.99.1.0/24"],
                        &[("load", loads[1].0), ("flows", loads[1].1)],
                    ),
                ]));
            out.reports
        };
        let site1 = site([(0.1, 90.0), (0.9, 10.0)]);
        let site2 = site([(0.4, 50.0), (0.5, 50.0)]);
        let parent = |name: &str, report: &Report| ChildInput {
            name: name.to_owned(),
            live: true,
            report_seq: 1,
            report: report.clone(),
            ..Default::default()
        };
        let out = Builder::new(policy(&format!("f = '{parent_f}'"))).build(&inputs(vec![
            parent("site1", &site1),
            parent("site2", &site2),
        ]));
        let e = entry(&out, "10.99.1.0/24", None).0.clone();
        let mut reports = site1;
        reports.extend(site2);
        (reports, e)
    }

    #[test]
    fn g_changes_the_choice_of_the_router_above() {
        // site1: h1 load 0.1 (90 flows), h2 0.9 (10 flows); site2: 0.4 (50), 0.5 (50).
        // G = least of m (m = load): site1 0.1, site2 0.4 -> site1.
        let (r, e) = as_choice("math.least(m)", "s.load");
        assert_eq!(r[0].1["load"], 0.1);
        assert_eq!((r[0].1["children"], r[0].1["flows"]), (2.0, 100.0));
        assert_entry(&e, &[("site1", 0.1), ("site2", 0.4)], &["site1"]);
        // G = mean of the loads: site1 0.5, site2 0.45 -> site2 (0.5 > 0.45 * 1.1).
        let (_, e) = as_choice("mean(s.map(x, x.load))", "s.load");
        assert_entry(&e, &[("site2", 0.45), ("site1", 0.5)], &["site2"]);
        // G = flow-weighted mean load: site1 (9 + 9) / 100 = 0.18, site2 0.45 -> site1.
        let (_, e) = as_choice(
            "sum(s.map(x, x.load * x.flows)) / sum(s.map(x, x.flows))",
            "s.load",
        );
        assert_entry(&e, &[("site1", 0.18), ("site2", 0.45)], &["site1"]);
        // G = a map: the mean and the worst cost; the AS router routes by the worst:
        // site1 0.9, site2 0.5 -> site2. G's map is reported as is, plus children and flows.
        let (r, e) = as_choice(
            "{\"load\": mean(m), \"worst\": math.greatest(m)}",
            "s.worst",
        );
        assert_eq!(
            r[0].1,
            BTreeMap::from([
                ("load".to_owned(), 0.5),
                ("worst".to_owned(), 0.9),
                ("children".to_owned(), 2.0),
                ("flows".to_owned(), 100.0)
            ])
        );
        assert_entry(&e, &[("site2", 0.5), ("site1", 0.9)], &["site2"]);
    }

    #[test]
    fn an_evaluation_error_excludes_the_child_and_is_counted() {
        let mut b = Builder::new(policy("f = 's.latency + r'"));
        let out = b.build(&inputs(vec![
            child("a", 0.0, None, &["10.99.1.0/24"], &[("latency", 3.0)]),
            child("b", 0.0, None, &["10.99.1.0/24"], &[("load", 0.1)]),
        ]));
        let (e, d) = entry(&out, "10.99.1.0/24", None);
        assert_entry(e, &[("a", 3.0)], &["a"]);
        assert_eq!(d.excluded.len(), 1);
        assert_eq!(d.excluded[0].next_hop, "b");
        assert_eq!(d.excluded[0].reason, "cost.f: No such key: latency");
        assert_eq!(out.counters.eval_errors, 1);
        let msg = "cost.f (child \"b\", subnet 10.99.1.0/24, group \"\"): No such key: latency";
        assert_eq!(out.counters.last_error.as_deref(), Some(msg));
        assert_eq!(b.last_error(), Some(msg));

        // A negative or non-finite cost is an error too.
        let out = Builder::new(policy("f = 's.load - 1.0'")).build(&inputs(vec![child(
            "a",
            0.0,
            None,
            &["10.99.1.0/24"],
            &[("load", 0.5)],
        )]));
        let (e, d) = entry(&out, "10.99.1.0/24", None);
        assert!(e.candidates.is_empty() && e.chosen.is_empty());
        assert_eq!(
            d.excluded[0].reason,
            "cost.f: cost -0.5 is not a finite number >= 0"
        );
        assert!(out.reports.is_empty(), "nothing to report upward");
    }

    #[test]
    fn best_effort_leaves_overloaded_children_high_priority_stays() {
        // a is cheaper (r 1 vs 5) but overloaded (load 0.9 > 0.8).
        let mut i = inputs(vec![
            child(
                "a",
                1.0,
                None,
                &["10.99.1.0/24", "10.99.2.0/24"],
                &[("load", 0.9)],
            ),
            child(
                "b",
                5.0,
                None,
                &["10.99.1.0/24", "10.99.2.0/24"],
                &[("load", 0.2)],
            ),
        ]);
        i.subnets.push(ServedSubnet {
            subnet: cidr("10.99.2.0/24"),
            priority: Priority::High,
        });
        let mut b = Builder::new(policy("f = 'r'\noverload = 's.load > 0.8'"));
        let out = b.build(&i);
        let (e, d) = entry(&out, "10.99.1.0/24", None);
        assert_entry(e, &[("a", 1.0), ("b", 5.0)], &["b"]);
        assert_eq!(e.held_back, ["a"], "not even a fallback for best effort");
        assert_eq!(d.priority, Priority::BestEffort);
        assert_eq!(
            d.candidates,
            [
                CandidateDetail {
                    overloaded: true,
                    in_band: false
                },
                CandidateDetail {
                    overloaded: false,
                    in_band: true
                }
            ]
        );
        let (e, d) = entry(&out, "10.99.2.0/24", None);
        assert_entry(e, &[("a", 1.0), ("b", 5.0)], &["a"]);
        assert!(e.held_back.is_empty());
        assert_eq!(d.priority, Priority::High);
        // Every candidate overloaded: best effort keeps the lowest-cost band.
        i.children[1].report_seq += 1;
        i.children[1].report[0].1.insert("load".into(), 0.95);
        let out = Builder::new(policy("f = 'r'\noverload = 's.load > 0.8'")).build(&i);
        assert_entry(
            entry(&out, "10.99.1.0/24", None).0,
            &[("a", 1.0), ("b", 5.0)],
            &["a"],
        );
    }

    #[test]
    fn hysteresis_keeps_a_band_member_until_it_is_clearly_worse() {
        // Band width max(0.1 * 1.0, 0.01) = 0.1; a member stays up to 1.0 + 0.1 * 1.5 = 1.15.
        let cfg = "f = 's.load'\ndamping = 1.0";
        let mut b = Builder::new(policy(cfg));
        let mut i = inputs(vec![
            child("a", 0.0, None, &["10.99.1.0/24"], &[("load", 1.0)]),
            child("b", 0.0, None, &["10.99.1.0/24"], &[("load", 1.05)]),
        ]);
        let mut step = |b: &mut Builder, load_b: f64| {
            i.children[1].report_seq += 1;
            i.children[1].report[0].1.insert("load".into(), load_b);
            b.build(&i).table.entries[0].chosen.clone()
        };
        assert_eq!(step(&mut b, 1.05), ["a", "b"]);
        assert_eq!(
            step(&mut b, 1.14),
            ["a", "b"],
            "outside the band, inside the hysteresis"
        );
        assert_eq!(step(&mut b, 1.16), ["a"], "beyond the hysteresis");
        assert_eq!(
            step(&mut b, 1.14),
            ["a"],
            "a newcomer needs the band itself"
        );
        assert_eq!(step(&mut b, 1.09), ["a", "b"]);
    }

    #[test]
    fn metrics_are_smoothed_once_per_new_report() {
        let mut b = Builder::new(policy("f = 's.load'\ndamping = 0.5"));
        let mut i = inputs(vec![child(
            "a",
            0.0,
            None,
            &["10.99.1.0/24"],
            &[("load", 1.0)],
        )]);
        let s = cidr("10.99.1.0/24");
        b.build(&i);
        assert_eq!(
            b.smoothed("a", s).unwrap()["load"],
            1.0,
            "the first report as is"
        );
        i.children[0].report[0].1.insert("load".into(), 0.0);
        b.build(&i);
        assert_eq!(
            b.smoothed("a", s).unwrap()["load"],
            1.0,
            "same sequence number: not applied"
        );
        i.children[0].report_seq = 2;
        b.build(&i);
        b.build(&i);
        assert_eq!(b.smoothed("a", s).unwrap()["load"], 0.5, "applied once");
        // A child that is not live is no candidate and its state is dropped.
        i.children[0].live = false;
        let out = b.build(&i);
        assert!(out.table.entries.is_empty());
        assert!(b.smoothed("a", s).is_none());
        assert_eq!(b.generation(), 5);
    }

    #[test]
    fn reports_apply_to_the_served_subnets_they_overlap() {
        // Served: 10.99.0.0/16 and 10.98.1.0/24.
        // a reports 10.99.0.0/16, b 10.99.1.0/24, c 10.98.0.0/16, d 10.97.0.0/16 (not served).
        let mut i = inputs(vec![
            child("a", 0.0, None, &["10.99.0.0/16"], &[("load", 0.1)]),
            child("b", 0.0, None, &["10.99.1.0/24"], &[("load", 0.2)]),
            child("c", 0.0, None, &["10.98.0.0/16"], &[("load", 0.3)]),
            child("d", 0.0, None, &["10.97.0.0/16"], &[("load", 0.4)]),
        ]);
        i.subnets = vec![
            ServedSubnet {
                subnet: cidr("10.99.0.0/16"),
                priority: Priority::High,
            },
            ServedSubnet {
                subnet: cidr("10.98.1.0/24"),
                priority: Priority::BestEffort,
            },
        ];
        let out = Builder::new(policy("f = 's.load'")).build(&i);
        let subnets: Vec<String> = out
            .table
            .entries
            .iter()
            .map(|e| e.subnet.to_string())
            .collect();
        assert_eq!(subnets, ["10.98.1.0/24", "10.99.0.0/16", "10.99.1.0/24"]);
        // c's /16 covers the served /24: the entry is the /24.
        assert_entry(entry(&out, "10.98.1.0/24", None).0, &[("c", 0.3)], &["c"]);
        // Only a serves all of 10.99.0.0/16; both serve 10.99.1.0/24 (priority of the /16).
        assert_entry(entry(&out, "10.99.0.0/16", None).0, &[("a", 0.1)], &["a"]);
        let (e, d) = entry(&out, "10.99.1.0/24", None);
        assert_entry(e, &[("a", 0.1), ("b", 0.2)], &["a"]);
        assert_eq!(d.priority, Priority::High);
        assert_eq!(out.reports.len(), 3);
    }
}
