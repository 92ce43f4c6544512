//! Route tables: which child a new flow goes to, under the `cost` policy (F11, F13).
//!
//! The patent's routers collect load reports from the level below, compute a cost
//! `m_kj = F(s_kj, r_j)` for every virtual subnet `k` and child `j`, and periodically build a
//! table that names, per subnet, the child with the least cost (Fig. 9). That computation
//! belongs to the control path (it evaluates the operator's expressions); this module holds its
//! *result*, the [`RouteTable`], which the control path installs into the router with
//! [`Control::InstallRouteTable`](crate::router::Control::InstallRouteTable) and which the packet
//! path only reads, once per new flow.
//!
//! # What a table says
//!
//! An entry is keyed by a virtual subnet and, optionally, a *client group* (a set of client
//! source prefixes, F13 "client location"): two client groups can be steered to different
//! children for the same subnet. For a new flow to `dst` from `src`:
//!
//! 1. the flow's group is the group with the longest prefix containing `src` (none if no
//!    group contains it);
//! 2. the entry is the one with the longest subnet containing `dst` among the entries of that
//!    group; if the group has none, among the entries without a group;
//! 3. the flow goes to one of the entry's `chosen` next hops: the band of lowest, near-equal
//!    costs the builder chose. Among them it is spread by *rendezvous hashing* of the flow hash
//!    (highest `hash(flow, name)` wins): every router with the same seed and table agrees, and
//!    a next hop leaving the band moves only its own share of new flows, so near-equal children
//!    share new flows instead of all of them herding to a momentary minimum;
//! 4. a chosen next hop the router itself considers ineligible (failed health check, weight 0,
//!    no longer configured) is skipped; if none of the band is eligible, the eligible candidate
//!    with the lowest cost takes the flow, except candidates the entry holds back;
//! 5. no entry at all, or no eligible candidate: the packet is dropped and counted
//!    (`no_route`, `no_next_hop`). A router never guesses a child for a subnet that no child
//!    reported.
//!
//! Established flows never consult the table (F9): a new table steers only new flows.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use slr_wire::Ipv4Cidr;

use crate::hash::{hash_bytes, hash_u64s};

/// A named set of client source prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientGroup {
    /// Name, as entries refer to it.
    pub name: String,
    /// Source prefixes of the group's clients.
    pub prefixes: Vec<Ipv4Cidr>,
}

/// One child that serves an entry's subnet, with its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCandidate {
    /// Next hop name.
    pub next_hop: String,
    /// Its cost `m_kj` (lower is better).
    pub cost: f64,
}

/// The choice for one (virtual subnet, client group).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteEntry {
    /// The virtual subnet.
    pub subnet: Ipv4Cidr,
    /// The client group the entry is for; `None`: clients of no group (or of a group without
    /// its own entry for this subnet).
    pub client_group: Option<String>,
    /// Every usable candidate, lowest cost first (also what inspection shows).
    pub candidates: Vec<RouteCandidate>,
    /// Names of the candidates new flows spread over (the lowest-cost band); a subset of
    /// `candidates`.
    pub chosen: Vec<String>,
    /// Candidates that take no new flow of this entry even when no band member is eligible
    /// (overloaded children of a best-effort subnet: they keep their capacity for high-priority
    /// flows). A subset of `candidates`, disjoint from `chosen`.
    pub held_back: Vec<String>,
}

/// A complete table, replacing the previous one when installed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteTable {
    /// Increases with every table the control path builds (inspection only).
    pub generation: u64,
    /// Client groups.
    pub client_groups: Vec<ClientGroup>,
    /// Entries.
    pub entries: Vec<RouteEntry>,
}

/// A table the core refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTableError {
    /// Two client groups share a name.
    #[error("client group {0:?} is defined twice")]
    DuplicateGroup(String),
    /// An entry names a group that is not defined.
    #[error("entry for {subnet} names client group {group:?}, which is not defined")]
    UnknownGroup {
        /// The entry's subnet.
        subnet: Ipv4Cidr,
        /// The group.
        group: String,
    },
    /// Two entries for the same subnet and group.
    #[error("two entries for subnet {subnet} and client group {group:?}")]
    DuplicateEntry {
        /// The subnet.
        subnet: Ipv4Cidr,
        /// The group, if any.
        group: Option<String>,
    },
    /// A chosen next hop is not among the entry's candidates.
    #[error("entry for {subnet}: chosen next hop {next_hop:?} is not a candidate")]
    ChosenNotCandidate {
        /// The subnet.
        subnet: Ipv4Cidr,
        /// The name.
        next_hop: String,
    },
    /// A cost is NaN.
    #[error("entry for {subnet}: cost of {next_hop:?} is not a number")]
    BadCost {
        /// The subnet.
        subnet: Ipv4Cidr,
        /// The name.
        next_hop: String,
    },
}

impl RouteTable {
    /// Checks the table's own consistency (names of next hops are resolved by the router).
    pub fn validate(&self) -> Result<(), RouteTableError> {
        let mut groups = std::collections::HashSet::new();
        for g in &self.client_groups {
            if !groups.insert(g.name.as_str()) {
                return Err(RouteTableError::DuplicateGroup(g.name.clone()));
            }
        }
        let mut keys = std::collections::HashSet::new();
        for e in &self.entries {
            if let Some(g) = &e.client_group {
                if !groups.contains(g.as_str()) {
                    return Err(RouteTableError::UnknownGroup {
                        subnet: e.subnet,
                        group: g.clone(),
                    });
                }
            }
            if !keys.insert((e.subnet, e.client_group.as_deref())) {
                return Err(RouteTableError::DuplicateEntry {
                    subnet: e.subnet,
                    group: e.client_group.clone(),
                });
            }
            for c in &e.candidates {
                if c.cost.is_nan() {
                    return Err(RouteTableError::BadCost {
                        subnet: e.subnet,
                        next_hop: c.next_hop.clone(),
                    });
                }
            }
            for n in &e.chosen {
                if !e.candidates.iter().any(|c| &c.next_hop == n) {
                    return Err(RouteTableError::ChosenNotCandidate {
                        subnet: e.subnet,
                        next_hop: n.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The hash of a next hop's name that rendezvous hashing combines with the flow hash.
pub fn name_hash(seed: u64, name: &str) -> u64 {
    hash_bytes(seed ^ 0x7265_6e64_657a_766f, name.as_bytes())
}

/// Rendezvous (highest random weight) choice: the member whose `hash(flow, name)` is highest.
/// `members` yields `(id, name_hash)`; returns the winning id.
pub fn rendezvous(
    flow_hash: u64,
    members: impl IntoIterator<Item = (usize, u64)>,
) -> Option<usize> {
    members
        .into_iter()
        .map(|(id, nh)| (hash_u64s(flow_hash, &[nh]), id))
        .max()
        .map(|(_, id)| id)
}

/// An entry with names resolved to next-hop indices.
#[derive(Debug, Clone)]
pub(crate) struct CompiledEntry {
    /// Chosen band: (next hop index, name hash).
    pub chosen: Vec<(usize, u64)>,
    /// All candidates, lowest cost first: next hop index.
    pub by_cost: Vec<usize>,
}

/// The table as the packet path reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledTable {
    /// Client group prefixes, longest first: (prefix, group index).
    groups: Vec<(Ipv4Cidr, u32)>,
    /// (masked destination, prefix length, group index or u32::MAX) -> entry.
    entries: HashMap<(u32, u8, u32), CompiledEntry>,
    /// Prefix lengths present among entries, longest first.
    lengths: Vec<u8>,
    /// Candidates whose name the router does not know (they cannot be chosen).
    pub unknown_next_hops: Vec<String>,
}

const NO_GROUP: u32 = u32::MAX;

fn mask(addr: Ipv4Addr, len: u8) -> u32 {
    let a = u32::from(addr);
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

impl CompiledTable {
    /// Resolves names with `index_of`; candidates with unknown names are left out (and listed).
    pub fn compile(
        table: &RouteTable,
        seed: u64,
        index_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Self, RouteTableError> {
        table.validate()?;
        let group_index: HashMap<&str, u32> = table
            .client_groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i as u32))
            .collect();
        let mut groups: Vec<(Ipv4Cidr, u32)> = table
            .client_groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.prefixes.iter().map(move |p| (*p, i as u32)))
            .collect();
        groups.sort_by_key(|(p, _)| core::cmp::Reverse(p.prefix_len()));
        let mut out = CompiledTable {
            groups,
            ..Default::default()
        };
        for e in &table.entries {
            let mut resolve = |n: &str| {
                let i = index_of(n);
                if i.is_none() && !out.unknown_next_hops.iter().any(|u| u == n) {
                    out.unknown_next_hops.push(n.to_owned());
                }
                i
            };
            let mut sorted: Vec<&RouteCandidate> = e.candidates.iter().collect();
            sorted.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(a.next_hop.cmp(&b.next_hop)));
            let by_cost = sorted
                .iter()
                .filter(|c| !e.held_back.contains(&c.next_hop))
                .filter_map(|c| resolve(&c.next_hop))
                .collect();
            let chosen = e
                .chosen
                .iter()
                .filter_map(|n| resolve(n).map(|i| (i, name_hash(seed, n))))
                .collect();
            let g = e
                .client_group
                .as_deref()
                .map_or(NO_GROUP, |g| group_index[g]);
            let len = e.subnet.prefix_len();
            out.entries.insert(
                (mask(e.subnet.addr(), len), len, g),
                CompiledEntry { chosen, by_cost },
            );
            if !out.lengths.contains(&len) {
                out.lengths.push(len);
            }
        }
        out.lengths.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// The entry for a new flow from `src` to `dst` (see the module documentation).
    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&CompiledEntry> {
        let group = self
            .groups
            .iter()
            .find(|(p, _)| p.contains(src))
            .map(|&(_, g)| g);
        if let Some(g) = group {
            if let Some(e) = self.find(dst, g) {
                return Some(e);
            }
        }
        self.find(dst, NO_GROUP)
    }

    fn find(&self, dst: Ipv4Addr, group: u32) -> Option<&CompiledEntry> {
        self.lengths
            .iter()
            .find_map(|&len| self.entries.get(&(mask(dst, len), len, group)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn entry(
        subnet: &str,
        group: Option<&str>,
        costs: &[(&str, f64)],
        chosen: &[&str],
    ) -> RouteEntry {
        RouteEntry {
            subnet: cidr(subnet),
            client_group: group.map(str::to_owned),
            candidates: costs
                .iter()
                .map(|(n, c)| RouteCandidate {
                    next_hop: (*n).to_owned(),
                    cost: *c,
                })
                .collect(),
            chosen: chosen.iter().map(|s| (*s).to_owned()).collect(),
            held_back: Vec::new(),
        }
    }

    fn names(n: &str) -> Option<usize> {
        ["a", "b", "c", "d"].iter().position(|x| *x == n)
    }

    #[test]
    fn lookup_prefers_the_flows_group_then_the_longest_subnet() {
        let t = RouteTable {
            generation: 1,
            client_groups: vec![
                ClientGroup {
                    name: "east".into(),
                    prefixes: vec![cidr("10.1.0.0/16")],
                },
                ClientGroup {
                    name: "east-core".into(),
                    prefixes: vec![cidr("10.1.2.0/24")],
                },
            ],
            entries: vec![
                entry("10.99.0.0/16", None, &[("a", 1.0)], &["a"]),
                entry("10.99.1.0/24", None, &[("b", 1.0)], &["b"]),
                entry("10.99.0.0/16", Some("east"), &[("c", 1.0)], &["c"]),
            ],
        };
        let c = CompiledTable::compile(&t, 0, names).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let pick = |src: &str, dst: &str| c.lookup(ip(src), ip(dst)).map(|e| e.by_cost[0]);
        assert_eq!(
            pick("10.2.0.1", "10.99.0.1"),
            Some(0),
            "no group: /16 entry"
        );
        assert_eq!(
            pick("10.2.0.1", "10.99.1.1"),
            Some(1),
            "no group: longer /24 wins"
        );
        assert_eq!(
            pick("10.1.0.1", "10.99.1.1"),
            Some(2),
            "group east has its own entry"
        );
        // east-core (longer prefix) has no entries: falls back to the group-less entries.
        assert_eq!(pick("10.1.2.1", "10.99.1.1"), Some(1));
        assert_eq!(pick("10.2.0.1", "10.98.0.1"), None, "no entry: no route");
    }

    #[test]
    fn invalid_tables_are_refused() {
        let mut t = RouteTable {
            entries: vec![entry("10.99.0.0/16", Some("nope"), &[("a", 1.0)], &["a"])],
            ..Default::default()
        };
        assert!(matches!(
            t.validate(),
            Err(RouteTableError::UnknownGroup { .. })
        ));
        t.entries = vec![entry("10.99.0.0/16", None, &[("a", 1.0)], &["b"])];
        assert!(matches!(
            t.validate(),
            Err(RouteTableError::ChosenNotCandidate { .. })
        ));
        t.entries = vec![entry("10.99.0.0/16", None, &[("a", f64::NAN)], &[])];
        assert!(matches!(t.validate(), Err(RouteTableError::BadCost { .. })));
        t.entries = vec![
            entry("10.99.0.0/16", None, &[("a", 1.0)], &["a"]),
            entry("10.99.0.0/16", None, &[("b", 1.0)], &["b"]),
        ];
        assert!(matches!(
            t.validate(),
            Err(RouteTableError::DuplicateEntry { .. })
        ));
    }

    #[test]
    fn rendezvous_spreads_evenly_and_moves_only_the_leavers_share() {
        let members: Vec<(usize, u64)> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| (i, name_hash(7, n)))
            .collect();
        let n = 40_000u64;
        let mut counts = [0u32; 4];
        let mut moved_wrongly = 0;
        for f in 0..n {
            let h = hash_u64s(99, &[f]);
            let all = rendezvous(h, members.iter().copied()).unwrap();
            counts[all] += 1;
            let without_d = rendezvous(h, members[..3].iter().copied()).unwrap();
            if all != 3 && without_d != all {
                moved_wrongly += 1;
            }
        }
        for c in counts {
            let share = f64::from(c) / n as f64;
            assert!((share - 0.25).abs() < 0.01, "share {share}");
        }
        assert_eq!(moved_wrongly, 0, "only d's flows move when d leaves");
    }
}
