//! Building a [`RouteTable`] and the upward reports from the children's reports.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use cel::common::types::{CelMap, CelString};
use slr_core::route_table::{ClientGroup, RouteCandidate, RouteEntry, RouteTable};
use slr_wire::Ipv4Cidr;

use crate::expr::{self, EvalError, GResult, GVars};
use crate::metrics::{Interner, Metrics};
use crate::vars::{self, ChildVals, FVars, TimeVals, Var};
use crate::{Policy, PolicyConfig};

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
    ids: Range<usize>,
}

/// The last evaluation error, kept raw until the end of the build.
struct LastError {
    key: &'static str,
    child: Option<usize>,
    subnet: Ipv4Cidr,
    group: Option<usize>,
    error: EvalError,
}

/// The counters of a build, with its last evaluation error kept raw.
#[derive(Default)]
struct Tally {
    counters: BuildCounters,
    last: Option<LastError>,
}

impl Tally {
    /// Counts a failed evaluation, which becomes the build's last error.
    fn failed(&mut self, error: LastError) {
        self.counters.eval_errors += 1;
        self.last = Some(error);
    }
}

/// One usable candidate of an entry during the build.
struct Cand {
    /// Index in the live children.
    child: usize,
    /// Index of the report used, in the child's smoothed reports.
    report: usize,
    cost: f64,
    overloaded: bool,
    /// Overloaded while another candidate is not: it takes no new flows of the entry.
    held_back: bool,
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
fn inside<T>(sorted: &[T], key: impl Fn(&T) -> Ipv4Cidr, c: &Ipv4Cidr) -> Range<usize> {
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
        let build = Build::new(&self.policy, &self.children, inputs);
        let mut tally = Tally::default();
        let costs = build.evaluate(&mut tally);
        let chosen = self.choose(&build, &costs, &mut tally);

        let mut counters = tally.counters;
        counters.entries = chosen.entries.len() as u64;
        if let Some(l) = tally.last {
            let msg = build.error_message(&l);
            self.last_error = Some(msg.clone());
            counters.last_error = Some(msg);
        }
        let mut bands = chosen.bands;
        bands.sort();
        self.previous = bands.previous;
        self.previous_ids = bands.ids;
        self.generation += 1;
        BuildOutput {
            table: RouteTable {
                generation: self.generation,
                client_groups: inputs.client_groups.clone(),
                entries: chosen.entries,
            },
            reports: chosen.reports,
            details: chosen.details,
            counters,
        }
    }

    /// Per entry (subnet, then group): its usable candidates, its band, its table entry and
    /// details, and for the group-less entry of each subnet the upward report (G).
    ///
    /// Runs after every F is evaluated: a G error outranks any F error as the build's last
    /// error.
    fn choose(&self, build: &Build<'_>, costs: &Costs, tally: &mut Tally) -> Chosen {
        let subnets = &build.entries.subnets;
        let capacity = subnets.len() * build.vals.groups.len();
        let mut chosen = Chosen {
            entries: Vec::with_capacity(capacity),
            details: Vec::with_capacity(capacity),
            reports: Vec::with_capacity(subnets.len()),
            bands: Bands {
                previous: Vec::with_capacity(capacity),
                ids: Vec::with_capacity(self.previous_ids.len()),
            },
        };
        let mut valid: Vec<Cand> = Vec::new();
        for (ei, subnet) in subnets.iter().enumerate() {
            for g in 0..build.vals.groups.len() {
                let excluded = build.candidates(ei, g, costs, &mut valid);
                let group = build.group_name(g);
                let previous = self.previous_band(*subnet, group);
                choose_band(&self.policy.config, previous, &build.live, &mut valid);
                chosen.bands.push(
                    *subnet,
                    group,
                    valid
                        .iter()
                        .filter(|c| c.in_band)
                        .map(|c| build.live[c.child].state.id),
                );
                let (entry, detail) = build.entry(ei, group, &valid, excluded);
                chosen.entries.push(entry);
                chosen.details.push(detail);

                // G, once per subnet, over the group-less entry's candidates.
                if group.is_some() || valid.is_empty() {
                    continue;
                }
                if let Some(report) = build.aggregate(ei, &valid, tally) {
                    chosen.reports.push((*subnet, report));
                }
            }
        }
        chosen
    }

    /// The ids of the children in the band chosen for (`subnet`, `group`) by the previous
    /// build, if it had that entry.
    fn previous_band(&self, subnet: Ipv4Cidr, group: Option<&str>) -> Option<&[u32]> {
        self.previous
            .binary_search_by(|p| (p.subnet, p.group.as_deref()).cmp(&(subnet, group)))
            .ok()
            .map(|i| &self.previous_ids[self.previous[i].ids.clone()])
    }
}

/// The chosen bands of one build, kept for the next build's hysteresis.
struct Bands {
    /// In the order of the entries (sorted at the end of the build).
    previous: Vec<PreviousBand>,
    /// The children of every band (`PreviousBand::ids` are ranges of it).
    ids: Vec<u32>,
}

impl Bands {
    /// Records the band of entry (`subnet`, `group`).
    fn push(&mut self, subnet: Ipv4Cidr, group: Option<&str>, ids: impl Iterator<Item = u32>) {
        let start = self.ids.len();
        self.ids.extend(ids);
        self.previous.push(PreviousBand {
            subnet,
            group: group.map(str::to_owned),
            ids: start..self.ids.len(),
        });
    }

    /// Sorts the bands by (subnet, group), for [`Builder::previous_band`]'s binary search.
    fn sort(&mut self) {
        self.previous
            .sort_by(|a, b| (a.subnet, a.group.as_deref()).cmp(&(b.subnet, b.group.as_deref())));
    }
}

/// What [`Builder::choose`] produces: the table's entries with their details, the upward
/// reports and the bands to remember.
struct Chosen {
    entries: Vec<RouteEntry>,
    details: Vec<EntryDetail>,
    reports: Report,
    bands: Bands,
}

/// Marks the band of one entry's candidates (sorted by cost): drawn over the candidates that
/// are not overloaded (all of them if every one is), with hysteresis for the members of the
/// `previous` band so that a child near the band's edge does not flap in and out.
fn choose_band(
    cfg: &PolicyConfig,
    previous: Option<&[u32]>,
    live: &[Live<'_>],
    valid: &mut [Cand],
) {
    let any_free = valid.iter().any(|c| !c.overloaded);
    for c in valid.iter_mut() {
        c.held_back = any_free && c.overloaded;
    }
    if let Some(min) = valid.iter().find(|c| !c.held_back).map(|c| c.cost) {
        let width = (cfg.band * min).max(cfg.band_abs);
        let sticky = min + width * (1.0 + cfg.hysteresis);
        for c in valid.iter_mut() {
            let was = previous.is_some_and(|p| p.contains(&live[c.child].state.id));
            c.in_band = !c.held_back && (c.cost <= min + width || (was && c.cost <= sticky));
        }
    }
}

/// Whether F, G or the overload predicate uses `v` (if none does, it need not be converted).
fn any_uses(policy: &Policy, v: Var) -> bool {
    policy.f.uses(v) || policy.g.uses(v) || policy.overload.as_ref().is_some_and(|o| o.uses(v))
}

/// One build in progress: what its evaluation and selection steps read, prepared once.
struct Build<'a> {
    policy: &'a Policy,
    client_groups: &'a [ClientGroup],
    /// The live children, each once.
    live: Vec<Live<'a>>,
    entries: Entries,
    vals: SharedVals,
}

/// The live children, each once (the first of a name given twice), with their variables
/// converted for the expressions.
fn live_children<'a>(
    policy: &Policy,
    states: &'a HashMap<String, ChildState>,
    children: &'a [ChildInput],
) -> Vec<Live<'a>> {
    let cfg = &policy.config;
    let convert_labels = any_uses(policy, Var::Labels);
    let no_labels = CelMap::default();
    let mut seen_names = std::collections::HashSet::new();
    children
        .iter()
        .filter(|c| c.live && seen_names.insert(c.name.as_str()))
        .map(|c| {
            let rtt = c.rtt_ms.unwrap_or(0.0);
            let r = c.static_cost + cfg.rtt_weight * rtt;
            let labels = if convert_labels {
                vars::labels_val(&c.labels)
            } else {
                no_labels.clone()
            };
            Live {
                input: c,
                state: &states[&c.name],
                vals: ChildVals::new(&c.name, c.static_cost, rtt, r, labels),
            }
        })
        .collect()
}

/// Every report of every live child, grouped by reported subnet.
struct Reported {
    /// (key of the subnet, index in the live children, index of the report), sorted by key.
    reps: Vec<(u64, u32, u32)>,
    /// Each reported subnet, with its range of `reps`.
    subnets: Vec<(Ipv4Cidr, Range<usize>)>,
}

impl Reported {
    /// Groups the smoothed reports of the live children by subnet, so that the later steps
    /// visit each reported subnet once.
    fn new(live: &[Live<'_>]) -> Self {
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
        let mut subnets: Vec<(Ipv4Cidr, Range<usize>)> = Vec::new();
        for (i, r) in reps.iter().enumerate() {
            match subnets.last_mut() {
                Some((_, range)) if reps[range.start].0 == r.0 => range.end = i + 1,
                _ => {
                    let (ci, ri) = (r.1 as usize, r.2 as usize);
                    subnets.push((live[ci].state.reports[ri].subnet, i..i + 1));
                }
            }
        }
        Reported { reps, subnets }
    }
}

/// One candidate of one entry: a live child and the report of it that applies.
#[derive(Clone, Copy)]
struct Slot {
    /// Index in the live children.
    child: u32,
    /// Index of the report, in the child's smoothed reports.
    report: u32,
    /// Index of the entry subnet.
    entry: u32,
}

/// The entry subnets, their priorities and their candidates.
struct Entries {
    /// Sorted.
    subnets: Vec<Ipv4Cidr>,
    /// The priority of each entry subnet.
    priorities: Vec<Priority>,
    /// The candidates of entry `ei` are `slots[starts[ei]..starts[ei + 1]]`.
    starts: Vec<usize>,
    slots: Vec<Slot>,
}

impl Entries {
    /// The entries of the live children's reports and the served subnets, each with its
    /// candidates, flattened into one list of slots.
    fn new(live: &[Live<'_>], served: &Served) -> Self {
        let reported = Reported::new(live);
        let subnets = entry_subnets(&reported, served);
        let cands = candidates(&reported, live, &subnets);
        let mut starts = Vec::with_capacity(subnets.len() + 1);
        let mut slots: Vec<Slot> = Vec::with_capacity(reported.reps.len());
        for (ei, list) in cands.iter().enumerate() {
            starts.push(slots.len());
            slots.extend(list.iter().map(|&(ci, ri)| Slot {
                child: ci as u32,
                report: ri as u32,
                entry: ei as u32,
            }));
        }
        starts.push(slots.len());
        let priorities = subnets
            .iter()
            .map(|e| served.covering(e).unwrap_or_default())
            .collect();
        Entries {
            subnets,
            priorities,
            starts,
            slots,
        }
    }
}

/// The entry subnets: each reported subnet intersected with each served subnet it overlaps
/// (the more specific of the two), sorted.
fn entry_subnets(reported: &Reported, served: &Served) -> Vec<Ipv4Cidr> {
    let mut entry_subnets: Vec<Ipv4Cidr> = Vec::new();
    for (x, _) in &reported.subnets {
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
    entry_subnets
}

/// Per entry subnet, its candidates as (live child, report): each live child with a report
/// covering it, with its most specific such report.
fn candidates(
    reported: &Reported,
    live: &[Live<'_>],
    entry_subnets: &[Ipv4Cidr],
) -> Vec<Vec<(usize, usize)>> {
    let mut cands: Vec<Vec<(usize, usize)>> = vec![Vec::new(); entry_subnets.len()];
    let mut nested = Vec::new();
    for (x, range) in &reported.subnets {
        for ei in inside(entry_subnets, |s| *s, x) {
            if entry_subnets[ei].prefix_len() < x.prefix_len() {
                continue;
            }
            if !cands[ei].is_empty() {
                nested.push(ei);
            }
            cands[ei].extend(
                reported.reps[range.clone()]
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
    cands
}

/// The values expressions see that do not depend on the child, converted once per build.
struct SharedVals {
    time: TimeVals,
    /// The groups entries are built for: first no group (`""`), then each client group (its
    /// index in [`Inputs::client_groups`]) if it gets entries of its own.
    groups: Vec<(Option<usize>, CelString<'static>)>,
    /// Per entry subnet, `subnet`; empty if no expression uses it.
    subnets: Vec<CelString<'static>>,
    no_subnet: CelString<'static>,
    high: CelString<'static>,
    best_effort: CelString<'static>,
}

impl SharedVals {
    fn new(policy: &Policy, inputs: &Inputs, entry_subnets: &[Ipv4Cidr]) -> Self {
        let subnets = if any_uses(policy, Var::Subnet) {
            entry_subnets
                .iter()
                .map(|e| CelString::from(e.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        SharedVals {
            time: time_vals(policy, inputs.now_unix_ms),
            groups: groups(policy, &inputs.client_groups),
            subnets,
            no_subnet: CelString::from(String::new()),
            high: CelString::from(Priority::High.as_str().to_owned()),
            best_effort: CelString::from(Priority::BestEffort.as_str().to_owned()),
        }
    }

    /// `subnet` for entry subnet `ei`.
    fn subnet(&self, ei: usize) -> &CelString<'static> {
        self.subnets.get(ei).unwrap_or(&self.no_subnet)
    }

    /// `priority` for a subnet of class `priority`.
    fn priority(&self, priority: Priority) -> &CelString<'static> {
        match priority {
            Priority::High => &self.high,
            Priority::BestEffort => &self.best_effort,
        }
    }
}

/// `now`, `hour`, `minute` and `weekday` for a build at `now_unix_ms`, in the policy's time
/// zone.
fn time_vals(policy: &Policy, now_unix_ms: i64) -> TimeVals {
    let ts = jiff::Timestamp::from_millisecond(now_unix_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let zoned = ts.to_zoned(policy.timezone.clone());
    TimeVals::new(
        ts.as_second(),
        i64::from(zoned.hour()),
        i64::from(zoned.minute()),
        i64::from(zoned.weekday().to_sunday_zero_offset()),
    )
}

/// The groups entries are built for, with their `group` values: no group, then the client
/// groups, but those only when an expression can tell them apart: otherwise they would be
/// copies of the group-less entry, which their flows fall back to anyway.
fn groups(
    policy: &Policy,
    client_groups: &[ClientGroup],
) -> Vec<(Option<usize>, CelString<'static>)> {
    let per_group =
        policy.f.uses(Var::Group) || policy.overload.as_ref().is_some_and(|o| o.uses(Var::Group));
    let mut groups: Vec<(Option<usize>, CelString<'static>)> =
        vec![(None, CelString::from(String::new()))];
    if per_group {
        groups.extend(
            client_groups
                .iter()
                .enumerate()
                .map(|(i, g)| (Some(i), CelString::from(g.name.clone()))),
        );
    }
    groups
}

/// F and the overload predicate per (group `g`, slot `k`), at index `g * slots.len() + k`.
struct Costs {
    /// The cost; NaN if the candidate is excluded, the reason in `errors`.
    costs: Vec<f64>,
    /// Whether the candidate is overloaded.
    overloaded: Vec<bool>,
    errors: HashMap<usize, EvalError>,
}

impl<'a> Build<'a> {
    /// Finds the live children, the entries with their candidates, and the values the
    /// expressions will see.
    fn new(
        policy: &'a Policy,
        states: &'a HashMap<String, ChildState>,
        inputs: &'a Inputs,
    ) -> Self {
        let live = live_children(policy, states, &inputs.children);
        let served = Served::new(&inputs.subnets);
        let entries = Entries::new(&live, &served);
        let vals = SharedVals::new(policy, inputs, &entries.subnets);
        Build {
            policy,
            client_groups: &inputs.client_groups,
            live,
            entries,
            vals,
        }
    }

    /// The name of group `g` (`None` for the group-less entries).
    fn group_name(&self, g: usize) -> Option<&'a str> {
        let client_groups = self.client_groups;
        self.vals.groups[g]
            .0
            .map(|i| client_groups[i].name.as_str())
    }

    /// The slots, child by child: each child's reports are contiguous in memory, which a
    /// subnet-by-subnet order would visit at random.
    fn child_order(&self) -> Vec<u32> {
        let slots = &self.entries.slots;
        let mut by_child = vec![0usize; self.live.len() + 1];
        for s in slots {
            by_child[s.child as usize + 1] += 1;
        }
        for i in 1..by_child.len() {
            by_child[i] += by_child[i - 1];
        }
        let mut order = vec![0u32; slots.len()];
        for (k, s) in slots.iter().enumerate() {
            let at = &mut by_child[s.child as usize];
            order[*at] = k as u32;
            *at += 1;
        }
        order
    }

    /// F (and the overload predicate) for every slot and group, in [`Build::child_order`].
    fn evaluate(&self, tally: &mut Tally) -> Costs {
        let len = self.entries.slots.len() * self.vals.groups.len();
        let mut costs = Costs {
            costs: vec![f64::NAN; len],
            overloaded: vec![false; len],
            errors: HashMap::new(),
        };
        let order = self.child_order();
        for g in 0..self.vals.groups.len() {
            for &k in &order {
                self.evaluate_slot(g, k as usize, &mut costs, tally);
            }
        }
        costs
    }

    /// F for slot `k` in group `g`, and for a best-effort subnet the overload predicate.
    ///
    /// A failing F, or a cost that is not a finite number >= 0, excludes the candidate (the
    /// error is kept as the reason). A failing predicate does not take the child out: it is
    /// treated as not overloaded. Both are counted.
    fn evaluate_slot(&self, g: usize, k: usize, costs: &mut Costs, tally: &mut Tally) {
        let policy = self.policy;
        let slot = self.entries.slots[k];
        let (ci, ei) = (slot.child as usize, slot.entry as usize);
        let (gi, group_val) = &self.vals.groups[g];
        let l = &self.live[ci];
        let priority = self.entries.priorities[ei];
        let vars = FVars {
            s: &l.state.reports[slot.report as usize].metrics,
            child: &l.vals,
            subnet: self.vals.subnet(ei),
            group: group_val,
            priority: self.vals.priority(priority),
            time: &self.vals.time,
        };
        let at = g * self.entries.slots.len() + k;
        let error = |key, error| LastError {
            key,
            child: Some(ci),
            subnet: self.entries.subnets[ei],
            group: *gi,
            error,
        };
        tally.counters.evaluations += 1;
        match self.cost(&vars) {
            Ok(c) => costs.costs[at] = c,
            Err(e) => {
                tally.failed(error(policy.f.key, e.clone()));
                costs.errors.insert(at, e);
                return;
            }
        }
        if let (Some(o), Priority::BestEffort) = (&policy.overload, priority) {
            tally.counters.evaluations += 1;
            match expr::eval_bool(&policy.env, o, &vars) {
                Ok(b) => costs.overloaded[at] = b,
                Err(e) => tally.failed(error(o.key, e)),
            }
        }
    }

    /// F for `vars`, refused unless a finite number >= 0.
    fn cost(&self, vars: &FVars<'_>) -> Result<f64, EvalError> {
        let policy = self.policy;
        expr::eval_number(&policy.env, &policy.f, vars).and_then(|c| {
            if c.is_finite() && c >= 0.0 {
                Ok(c)
            } else {
                Err(EvalError::Result(format!(
                    "cost {c} is not a finite number >= 0"
                )))
            }
        })
    }

    /// Fills `valid` with the usable candidates of entry `ei` in group `g`, sorted by cost
    /// then name, and returns the candidates left out because F failed for them.
    fn candidates(
        &self,
        ei: usize,
        g: usize,
        costs: &Costs,
        valid: &mut Vec<Cand>,
    ) -> Vec<ExcludedCandidate> {
        let slots = &self.entries.slots;
        valid.clear();
        let mut excluded = Vec::new();
        for k in self.entries.starts[ei]..self.entries.starts[ei + 1] {
            let slot = slots[k];
            let at = g * slots.len() + k;
            let cost = costs.costs[at];
            if let Some(e) = cost.is_nan().then(|| costs.errors.get(&at)).flatten() {
                excluded.push(ExcludedCandidate {
                    next_hop: self.live[slot.child as usize].input.name.clone(),
                    reason: format!("{}: {e}", self.policy.f.key),
                });
                continue;
            }
            valid.push(Cand {
                child: slot.child as usize,
                report: slot.report as usize,
                cost,
                overloaded: costs.overloaded[at],
                held_back: false,
                in_band: false,
            });
        }
        valid.sort_by(|a, b| {
            a.cost
                .total_cmp(&b.cost)
                .then_with(|| self.name(a).cmp(self.name(b)))
        });
        excluded
    }

    /// The name of a candidate's child.
    fn name(&self, c: &Cand) -> &'a String {
        &self.live[c.child].input.name
    }

    /// The table entry of entry subnet `ei` for `group` once its band is chosen, and its
    /// details.
    fn entry(
        &self,
        ei: usize,
        group: Option<&str>,
        valid: &[Cand],
        excluded: Vec<ExcludedCandidate>,
    ) -> (RouteEntry, EntryDetail) {
        let names = |keep: fn(&Cand) -> bool| -> Vec<String> {
            valid
                .iter()
                .filter(|c| keep(c))
                .map(|c| self.name(c).clone())
                .collect()
        };
        let entry = RouteEntry {
            subnet: self.entries.subnets[ei],
            client_group: group.map(str::to_owned),
            candidates: valid
                .iter()
                .map(|c| RouteCandidate {
                    next_hop: self.name(c).clone(),
                    cost: c.cost,
                })
                .collect(),
            chosen: names(|c| c.in_band),
            // Overloaded children of a best-effort subnet keep their capacity for
            // high-priority flows, even when the band's members fail.
            held_back: names(|c| c.held_back),
        };
        let detail = EntryDetail {
            priority: self.entries.priorities[ei],
            candidates: valid
                .iter()
                .map(|c| CandidateDetail {
                    overloaded: c.overloaded,
                    in_band: c.in_band,
                })
                .collect(),
            excluded,
        };
        (entry, detail)
    }

    /// The upward report of entry subnet `ei` from its group-less candidates `valid` (not
    /// empty); `None` if G fails or reports a non-finite number (counted).
    fn aggregate(
        &self,
        ei: usize,
        valid: &[Cand],
        tally: &mut Tally,
    ) -> Option<BTreeMap<String, f64>> {
        tally.counters.evaluations += 1;
        let result = self
            .eval_g(ei, valid)
            .and_then(|g| self.upward_report(g, valid));
        match result {
            Ok(report) => Some(report),
            Err(e) => {
                tally.failed(LastError {
                    key: self.policy.g.key,
                    child: None,
                    subnet: self.entries.subnets[ei],
                    group: None,
                    error: e,
                });
                None
            }
        }
    }

    /// G over `valid`: directly if it can, else with the interpreter.
    fn eval_g(&self, ei: usize, valid: &[Cand]) -> Result<GResult, EvalError> {
        let policy = self.policy;
        let r: Vec<f64> = valid.iter().map(|c| self.live[c.child].vals.r()).collect();
        let m: Vec<f64> = valid.iter().map(|c| c.cost).collect();
        if let Some(g) = expr::eval_g_direct(&policy.g, &m, &r) {
            return Ok(g);
        }
        let s: Vec<&Metrics> = valid.iter().map(|c| self.metrics(c)).collect();
        let names: Vec<&CelString<'static>> = valid
            .iter()
            .map(|c| self.live[c.child].vals.name())
            .collect();
        let gvars = GVars::new(
            &s,
            &r,
            &m,
            &names,
            self.vals.subnet(ei),
            &self.vals.time,
            &policy.g,
        );
        expr::interpret_g(&policy.env, &policy.g, &gvars)
    }

    /// The smoothed metrics of the report a candidate was chosen by.
    fn metrics(&self, c: &Cand) -> &'a Metrics {
        &self.live[c.child].state.reports[c.report].metrics
    }

    /// G's result as a report: a number becomes `load`; `children` and `flows` are added
    /// unless G sets them. Refused if any value is not finite.
    fn upward_report(
        &self,
        g: GResult,
        valid: &[Cand],
    ) -> Result<BTreeMap<String, f64>, EvalError> {
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
        let flows = valid.iter().filter_map(|c| self.metrics(c).get("flows"));
        if flows.clone().next().is_some() {
            out.entry("flows".to_owned()).or_insert(flows.sum());
        }
        Ok(out)
    }

    /// The message of the build's last error, naming the expression, child, subnet and group.
    fn error_message(&self, l: &LastError) -> String {
        let child = l
            .child
            .map(|c| format!("child {:?}, ", self.live[c].input.name))
            .unwrap_or_default();
        let group = l
            .group
            .map(|g| self.client_groups[g].name.as_str())
            .unwrap_or("");
        format!(
            "{} ({child}subnet {}, group {group:?}): {}",
            l.key, l.subnet, l.error
        )
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
