//! Lab topology files: parsing, validation and the address plan.
//!
//! A topology file is TOML. Every key, with its default:
//!
//! ```toml
//! [lab]
//! name = "site"            # required; [a-z0-9-], at most 24 characters. Namespaces are
//!                          # "slr-<lab>-<node>", state lives in /run/slr-lab/<lab>/.
//!
//! [[virtual_hosts]]        # at least one
//! name = "web"             # required; unique; [a-z0-9_-]
//! subnet = "10.99.0.0/24"  # required; IPv4 prefix, host bits zero, length 8..=32 (a
//!                          # bare address is a /32); must not overlap another virtual
//!                          # subnet, 10.200.0.0/16 (lab links) or 127.0.0.0/8. Its VIP is
//!                          # the first address (.1; a /32 is its own VIP).
//! policy = "maglev"        # round_robin | weighted | least_flows | maglev (default maglev);
//!                          # in a hierarchy only cost (its default): see below
//! udp = "pin"              # pin | per_datagram (default pin)
//!
//! [[nodes]]                # at least one client, one router and one host
//! name = "h1"              # required; unique; [a-z0-9_-], at most 24 characters (in a
//!                          # hierarchy routers and hosts [a-z0-9-]: their certificates
//!                          # carry the name as a DNS name)
//! role = "host"            # required; client | router | host | core
//! weight = 1               # hosts of a static lab only; 0..=65535, default 1; at least one
//!                          # host needs > 0
//! parent = "site-a"        # hierarchy: the router this router or host is a child of, or
//!                          # several (["r1", "r2"]): it reports to each, trusts each one's
//!                          # tunnels and, with [cluster] whohas, answers each one's WHOHAS
//! level = "as"             # routers only: "network", "as", "site" or any label ([a-z0-9_-]);
//!                          # default "site" if all its children are hosts, else "router"
//! group = "east"           # clients of a hierarchy only: the client group (F13 client
//!                          # location) the top router knows this client's address by
//! cost = 10.0              # routers and hosts of a hierarchy: the static routing cost its
//!                          # parent gives it (finite, >= 0; default 1)
//! labels = { region = "east" }   # routers and hosts of a hierarchy: labels its parent's
//!                          # cost function sees (string values; default none)
//!
//! [control]                # optional, hierarchy only (its presence alone makes one): the
//!                          # state update protocol's settings, the same for every daemon
//! report_interval = "1s"   # how often children report to their parents (default "1s")
//! silent_after = 3         # reports a child may miss before it leaves selection (default 3)
//! rebuild_interval = "1s"  # how often routers rebuild their route tables (default "1s")
//! f = "..."                # the operator's cost function F (CEL), the routers' [cost] f;
//! g = "..."                # and the aggregation G; unset: the routers' defaults
//! shortcut = true          # the shortcut (F10): routers signal and relay the hosts they pick,
//!                          # the top router tunnels later packets straight to the host, and
//!                          # hosts also trust the top router's tunnels (default false)
//! shortcut_hold = "20ms"   # how long the top router holds a new flow's packets for the
//!                          # signal (default "20ms"; "0s": never)
//!
//! [bgp]                    # optional: the core learns the virtual subnets by BGP (BIRD in the
//!                          # core and in every announcing router) instead of static routes
//! hold_time = "3s"         # BGP hold time, whole seconds >= 3 (default "3s")
//! bfd_interval = "100ms"   # BFD on every session, 10ms..10s, or "off" (default "100ms")
//! backup = ["r2"]          # announcing routers the core prefers less (local preference 50
//!                          # against 100): primary/backup instead of equal-cost multipath
//!
//! [cluster]                # optional: the announcing routers (at least two) are peers:
//! mirror = true            # they mirror their flows to each other over mutual TLS (F17b;
//!                          # default true)
//! whohas = true            # and ask each other who holds an unknown mid-flow packet's flow
//!                          # (F17c; default true); in a hierarchy they also ask their child
//!                          # routers, which answer (examples/anycast-sites.toml)
//!
//! [router_config]          # optional: merged over every router configuration the lab writes
//! flow_table = { max_flows = 20000 }       # any key of docs/CONFIG.md's router file, e.g.
//! health_check = { interval = "2s" }       # [router_config.health_check] enabled = false
//!
//! A router node may carry its own `router_config = { ... }` table too, merged after the
//! lab-wide one, for what only that router has: `router_config = { fault = { delay =
//! { site-b = "40ms" } }, cost = { g = "mean(m)" } }`.
//! ```
//!
//! The core namespace, which joins every node, is implicit: a node named "core" with role
//! `core` is added unless the file declares one (at most one; it may have another name).
//!
//! # Static labs and hierarchies
//!
//! A file without any `parent` key and without `[control]` is a **static** lab, as before
//! hierarchies existed: every router (usually one, a site) has every host as a next hop with
//! its `weight`, chooses by the virtual host's `policy`, and the core spreads the virtual
//! subnets over all routers.
//!
//! A file with a `parent` key or a `[control]` table is a **hierarchy** of any depth (F5):
//! a network router above AS routers above site routers above hosts, or any other number of
//! levels. One router has no parent: the *top* router, the only one the core routes the
//! virtual subnets to; with `[bgp]` several may, and the core learns the subnets from each
//! (`examples/anycast-sites.toml`: two top routers above four sites). Every other router and
//! every host names its parent router, or several (`parent = ["r1", "r2"]`: it reports to
//! each, trusts each one's tunnels, and is drawn under each); with exactly one router, hosts
//! without `parent` are its children. Each router tunnels a new flow to one
//! of its children, chosen by cost from the children's reports (policy `cost`); children report
//! to their parents over mutual TLS with certificates `lab up` issues. Lower routers and hosts
//! receive only tunnelled packets from their parents, addressed to their own 10.200.k.2; hosts
//! answer the clients directly through the core. Clients may carry a `group`: the top router
//! gets one client group per name, with those clients' addresses.
//!
//! With `[bgp]`, the announcing routers (a static lab's routers, a hierarchy's top routers) run
//! BIRD (AS 65001) with a session to the core's BIRD (AS 65000), and announce each virtual
//! subnet while they have a live next hop for it; the core installs what it learns, equal
//! routes from several routers as one multipath route.
//!
//! Address plan: the k-th non-core node in file order (k = 1, 2, ...; at most 254) is
//! wired to the core with one veth pair on 10.200.k.0/24: the node side is "eth0" with
//! 10.200.k.2, the core side is `v-<node>` (truncated to 15 characters, the kernel's limit)
//! with 10.200.k.1. The core is not numbered because it has no link to itself.
//!
//! Validation errors name the key and the value (`nodes[2].role: unknown role "hots"
//! (expected client, router, host, core)`); indices are 0-based, as in the file's order of
//! `[[nodes]]` tables. The caller prefixes the file name.

use serde::{Deserialize, Serialize};
pub use slr_core::router::UdpMode;
pub use slr_core::select::Policy;
use slr_wire::Ipv4Cidr;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Longest lab or node name: keeps namespace names and socket paths short.
const MAX_NAME_LEN: usize = 24;
/// Linux interface names hold 15 characters (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;
/// The /16 the lab's links are numbered from (`10.200.k.0/24`); virtual subnets must
/// stay out of it.
const LINK_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 0, 0), 16);

/// A topology error: the key at fault (`nodes[2].role`) and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// Dotted path of the key, e.g. `virtual_hosts[0].subnet`; empty for whole-file errors.
    pub key: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl TopologyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for TopologyError {}

/// The first address of a prefix, the one the lab uses as the VIP: network + 1, or the
/// address itself for a /32 (which has no other).
pub fn first_address(net: Ipv4Cidr) -> Ipv4Addr {
    if net.prefix_len() == 32 {
        net.addr()
    } else {
        Ipv4Addr::from(u32::from(net.addr()) + 1)
    }
}

/// Whether two prefixes share any address (for prefixes: one contains the other).
fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains_cidr(&b) || b.contains_cidr(&a)
}

/// Parses a virtual subnet with slr-wire's parser (the one the daemons use), adding what
/// its refusal does not say: the prefix a value with host bits set probably meant.
fn parse_subnet(s: &str) -> Result<Ipv4Cidr, String> {
    s.parse::<Ipv4Cidr>().map_err(|_| {
        let parts = s.split_once('/').and_then(|(addr, len)| {
            Some((addr.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?))
        });
        match parts.and_then(|(addr, len)| Ipv4Cidr::new(addr, len)) {
            Some(net) => format!("{s:?} has host bits set (did you mean \"{net}\"?)"),
            None => format!("{s:?} is not an IPv4 prefix (expected e.g. \"10.99.0.0/24\")"),
        }
    })
}

/// Serde for a prefix as its "a.b.c.d/len" string (the state file keeps the topology).
mod cidr_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use slr_wire::Ipv4Cidr;

    pub fn serialize<S: Serializer>(net: &Ipv4Cidr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Cidr, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a node does in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs curl and other unmodified clients against the VIPs.
    Client,
    /// Runs `slr router`: captures VIP traffic and tunnels it to a host.
    Router,
    /// Runs `slr host` (tunnel termination, AnyIP) and `slr serve`.
    Host,
    /// The namespace that joins every node (plays the part of the site's network).
    Core,
}

impl Role {
    const NAMES: &'static str = "client, router, host, core";

    /// The role's name as written in topology files and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Router => "router",
            Role::Host => "host",
            Role::Core => "core",
        }
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "client" => Role::Client,
            "router" => Role::Router,
            "host" => Role::Host,
            "core" => Role::Core,
            _ => return Err(()),
        })
    }
}

/// Names of the policies a topology may give, for error messages.
const POLICY_NAMES: &str = "round_robin, weighted, least_flows, maglev, cost";
/// Names of the UDP modes, for error messages.
const UDP_MODE_NAMES: &str = "pin, per_datagram";

/// Serde for the core's enums by their configuration names (the state file keeps the
/// topology): `Policy` and `UdpMode` are the daemons' own types, not copies.
mod by_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::str::FromStr;

    /// A type named in configuration files.
    pub trait Named: FromStr {
        /// Its configuration name.
        fn name(&self) -> &'static str;
    }
    impl Named for slr_core::select::Policy {
        fn name(&self) -> &'static str {
            self.as_str()
        }
    }
    impl Named for slr_core::router::UdpMode {
        fn name(&self) -> &'static str {
            self.as_str()
        }
    }

    pub fn serialize<T: Named, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown name {s:?}")))
    }
}

/// A virtual host: a virtual subnet served by every host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// Name, unique in the lab.
    pub name: String,
    /// The virtual subnet.
    #[serde(with = "cidr_serde")]
    pub subnet: Ipv4Cidr,
    /// Host selection policy.
    #[serde(with = "by_name")]
    pub policy: Policy,
    /// UDP steering.
    #[serde(with = "by_name")]
    pub udp: UdpMode,
}

impl VirtualHost {
    /// The address the lab's servers bind and its clients dial (first of the subnet).
    pub fn vip(&self) -> Ipv4Addr {
        first_address(self.subnet)
    }
}

/// A node: one network namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Name, unique in the lab.
    pub name: String,
    /// What runs there.
    pub role: Role,
    /// Router weight of a host (1 for other roles, where it means nothing).
    pub weight: u32,
    /// In a hierarchy, the routers above this router or host, in file order (resolved: a
    /// host of a one-router hierarchy that names none gets that router). Empty for the top
    /// routers, clients, the core, and every node of a static lab.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// A router's level ("network", "as", "site", ...; resolved to its default when the
    /// file names none); `None` for other roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// A client's client group, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The static routing cost the parent gives this router or host (default 1).
    #[serde(default = "default_cost")]
    pub cost: f64,
    /// Labels the parent's cost function sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A router's own `router_config` table (TOML text), merged after the lab-wide
    /// `[router_config]`; empty if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub router_config: String,
}

impl Node {
    /// The first of its parents (the one the lab draws it under), if it has any.
    pub fn parent(&self) -> Option<&str> {
        self.parents.first().map(String::as_str)
    }

    /// Whether `router` is one of its parents.
    pub fn has_parent(&self, router: &str) -> bool {
        self.parents.iter().any(|p| p == router)
    }
}

fn default_cost() -> f64 {
    1.0
}

/// `[control]`: the state update protocol's settings, the same for every daemon of a
/// hierarchy (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlSettings {
    /// How often children report (a duration such as "1s").
    pub report_interval: String,
    /// Reports a child may miss before it leaves selection.
    pub silent_after: u32,
    /// How often routers rebuild their route tables.
    pub rebuild_interval: String,
    /// The operator's cost function F (CEL), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<String>,
    /// The aggregation G (CEL), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g: Option<String>,
    /// The shortcut (F10).
    #[serde(default)]
    pub shortcut: bool,
    /// The ingress's wait for a signal, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut_hold: Option<String>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            report_interval: "1s".into(),
            silent_after: 3,
            rebuild_interval: "1s".into(),
            f: None,
            g: None,
            shortcut: false,
            shortcut_hold: None,
        }
    }
}

/// A validated topology. `nodes` holds exactly one core node (declared or implicit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Lab name.
    pub name: String,
    /// Virtual hosts, in file order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Nodes in file order; an implicit core comes first.
    pub nodes: Vec<Node>,
    /// `[router_config]`: TOML merged over the router configuration the lab writes (for
    /// example `[router_config.flow_table] max_flows = 20000`), kept as text; empty if none.
    #[serde(default)]
    pub router_config: String,
    /// `Some` (with defaults filled in) when the lab is a hierarchy (a `parent` key or a
    /// `[control]` table in the file), `None` for a static lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSettings>,
    /// The routers' and hosts' `fast_path` when `slr lab up --fast-path` set one (a `[router_config]`
    /// still goes over it); `None`: the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<String>,
    /// `[bgp]`, when the core learns the virtual subnets by BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpSettings>,
    /// `[cluster] mirror`: the announcing routers mirror their flows to each other.
    #[serde(default)]
    pub mirror: bool,
    /// `[cluster] whohas`: the announcing routers ask each other who holds unknown flows.
    #[serde(default)]
    pub whohas: bool,
}

/// `[bgp]`: the core learns the virtual subnets by BGP from the announcing routers (defaults
/// filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSettings {
    /// BGP hold time ("3s").
    pub hold_time: String,
    /// BFD interval, `None` for no BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_interval: Option<String>,
    /// Announcing routers the core prefers less (backups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup: Vec<String>,
}

/// The AS number of the lab's core (the clients' access router).
pub const CORE_AS: u32 = 65000;
/// The AS number of the lab's announcing routers (one anycast service, one AS).
pub const ROUTER_AS: u32 = 65001;
/// The core's local preference for a backup router (others have BGP's default, 100).
pub const BACKUP_LOCAL_PREF: u32 = 50;

/// One node's link to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// k: the link uses 10.200.k.0/24.
    pub index: u8,
    /// The node side ("eth0" inside the node), 10.200.k.2.
    pub node_address: Ipv4Addr,
    /// The core side, 10.200.k.1: the node's default gateway.
    pub core_address: Ipv4Addr,
    /// Interface name of the core side, `v-<node>` truncated to 15 characters.
    pub core_ifname: String,
}

/// Interface name of every node's side of its link.
pub const NODE_IFNAME: &str = "eth0";
/// Prefix length of every link.
pub const LINK_PREFIX: u8 = 24;

impl Topology {
    /// Parses and validates a topology from TOML text.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| TopologyError::new("", e.to_string().trim_end()))?;
        Self::from_table(&table)
    }

    /// Validates a parsed topology file, one step per part of the file; the first error
    /// found wins, so the steps run in the order a reader meets the parts.
    fn from_table(table: &toml::Table) -> Result<Topology, TopologyError> {
        let router_config = parse_top_level(table)?;
        let name = parse_lab(table)?;
        let node_tables = array_of_tables(table, "nodes")?;
        let control = parse_lab_kind(table, &node_tables)?;
        let hierarchy = control.is_some();
        let virtual_hosts = parse_virtual_hosts(table, hierarchy)?;
        let mut nodes = ParsedNodes::parse(&node_tables, hierarchy)?;
        nodes.add_implicit_core();
        check_required_roles(&nodes.nodes)?;
        if hierarchy {
            nodes.resolve_hierarchy(table.contains_key("bgp"))?;
        } else {
            check_some_host_weighs(&nodes.nodes)?;
        }
        fill_default_levels(&mut nodes.nodes, hierarchy);
        check_link_count(&nodes.nodes)?;
        let mut topology = Topology {
            name,
            virtual_hosts,
            nodes: nodes.nodes,
            router_config,
            control,
            fast_path: None,
            bgp: None,
            mirror: false,
            whohas: false,
        };
        topology.bgp = parse_bgp(table.get("bgp"), &topology)?;
        (topology.mirror, topology.whohas) = parse_cluster(table.get("cluster"), &topology)?;
        Ok(topology)
    }

    /// The core node.
    pub fn core(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Core)
            .expect("validated topology has a core")
    }

    /// Nodes with the given role, in file order.
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The namespace of a node: `slr-<lab>-<node>`.
    pub fn netns(&self, node: &str) -> String {
        format!("slr-{}-{}", self.name, node)
    }

    /// The node's link to the core, or `None` for the core itself (or an unknown name).
    pub fn link(&self, node: &str) -> Option<Link> {
        let k = self
            .nodes
            .iter()
            .filter(|n| n.role != Role::Core)
            .position(|n| n.name == node)?
            + 1;
        let index = u8::try_from(k).ok()?;
        Some(Link {
            index,
            node_address: Ipv4Addr::new(10, 200, index, 2),
            core_address: Ipv4Addr::new(10, 200, index, 1),
            core_ifname: core_ifname(node),
        })
    }

    /// The node's own address (the node side of its link), `None` for the core.
    pub fn address(&self, node: &str) -> Option<Ipv4Addr> {
        self.link(node).map(|l| l.node_address)
    }

    /// Addresses a node holds, as CIDR strings (the core holds every link's core side).
    pub fn addresses(&self, node: &Node) -> Vec<String> {
        if node.role == Role::Core {
            self.nodes
                .iter()
                .filter_map(|n| self.link(&n.name))
                .map(|l| format!("{}/{LINK_PREFIX}", l.core_address))
                .collect()
        } else {
            self.link(&node.name)
                .map(|l| format!("{}/{LINK_PREFIX}", l.node_address))
                .into_iter()
                .collect()
        }
    }

    /// Whether `ip` is in any virtual subnet.
    pub fn is_virtual(&self, ip: Ipv4Addr) -> bool {
        self.virtual_hosts.iter().any(|v| v.subnet.contains(ip))
    }

    /// Whether the lab is a hierarchy (its routers choose by the cost their children
    /// report) rather than a static lab.
    pub fn is_hierarchy(&self) -> bool {
        self.control.is_some()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The top routers of a hierarchy (those without parent, which the core routes the
    /// virtual subnets to: one, or several with `[bgp]`), in file order; empty in a static lab.
    pub fn top_routers(&self) -> Vec<&Node> {
        if !self.is_hierarchy() {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Router && n.parents.is_empty())
            .collect()
    }

    /// The first top router of a hierarchy; `None` in a static lab.
    pub fn top_router(&self) -> Option<&Node> {
        self.top_routers().into_iter().next()
    }

    /// The routers the core routes the virtual subnets to: a hierarchy's top routers, every
    /// router of a static lab.
    pub fn announcing_routers(&self) -> Vec<&Node> {
        if self.is_hierarchy() {
            self.top_routers()
        } else {
            self.nodes_with(Role::Router).collect()
        }
    }

    /// A router's children in file order: in a hierarchy the routers and hosts that name
    /// it as a parent; in a static lab every host.
    pub fn children(&self, router: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| {
                if self.is_hierarchy() {
                    n.has_parent(router)
                } else {
                    n.role == Role::Host
                        && self.node(router).is_some_and(|r| r.role == Role::Router)
                }
            })
            .collect()
    }

    /// Every router above a node (through each of its parents), each once, top first (empty
    /// for the top routers, clients, the core and every node of a static lab).
    pub fn ancestors(&self, node: &str) -> Vec<&Node> {
        let mut found: Vec<(usize, &Node)> = Vec::new();
        let mut frontier: std::collections::VecDeque<(usize, &str)> = self
            .node(node)
            .map(|n| n.parents.iter().map(|p| (1, p.as_str())).collect())
            .unwrap_or_default();
        // Breadth first: nearer routers first, each level in file order.
        while let Some((d, p)) = frontier.pop_front() {
            let Some(parent) = self.node(p) else { continue };
            // Validated topologies have no cycle; do not loop on a hand-edited state.
            if found.iter().any(|(_, c)| c.name == parent.name) || found.len() > self.nodes.len() {
                continue;
            }
            found.push((d, parent));
            frontier.extend(parent.parents.iter().map(|g| (d + 1, g.as_str())));
        }
        found.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
        found.into_iter().map(|(_, n)| n).collect()
    }

    /// How many routers lie above a node on its longest way up (0 for a top router).
    pub fn depth(&self, node: &str) -> usize {
        fn walk(t: &Topology, node: &str, seen: usize) -> usize {
            let Some(n) = t.node(node) else { return 0 };
            if seen > t.nodes.len() {
                return 0; // a cycle in a hand-edited state
            }
            n.parents
                .iter()
                .map(|p| 1 + walk(t, p, seen + 1))
                .max()
                .unwrap_or(0)
        }
        walk(self, node, 0)
    }

    /// Routers' levels, top first: each level name once, ordered by the least depth at which
    /// a router of that level sits.
    pub fn router_levels(&self) -> Vec<String> {
        let mut levels: Vec<(usize, String)> = Vec::new();
        for r in self.nodes_with(Role::Router) {
            let depth = self.depth(&r.name);
            let level = r.level.clone().unwrap_or_else(|| "router".into());
            match levels.iter_mut().find(|(_, l)| *l == level) {
                Some((d, _)) => *d = (*d).min(depth),
                None => levels.push((depth, level)),
            }
        }
        levels.sort_by_key(|(d, _)| *d);
        levels.into_iter().map(|(_, l)| l).collect()
    }

    /// A hierarchy drawn as indented lines, each top router with its subtree: a router as
    /// `name (level)` with its cost and labels when set, its host children on the same line
    /// (`site-a (site): h1 h2 h3`); a router with several parents under each. Empty for a
    /// static lab.
    pub fn tree(&self) -> Vec<String> {
        fn walk(t: &Topology, node: &Node, depth: usize, out: &mut Vec<String>) {
            let mut line = format!(
                "{}{} ({})",
                "  ".repeat(depth),
                node.name,
                node.level.as_deref().unwrap_or("router")
            );
            if !node.parents.is_empty() && node.cost != 1.0 {
                line += &format!(" cost {}", node.cost);
            }
            for (k, v) in &node.labels {
                line += &format!(" {k}={v}");
            }
            let children = t.children(&node.name);
            let hosts: Vec<&str> = children
                .iter()
                .filter(|c| c.role == Role::Host)
                .map(|c| c.name.as_str())
                .collect();
            if !hosts.is_empty() {
                line += &format!(": {}", hosts.join(" "));
            }
            out.push(line);
            for c in children.iter().filter(|c| c.role == Role::Router) {
                walk(t, c, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        for top in self.top_routers() {
            walk(self, top, 0, &mut out);
        }
        out
    }

    /// Client groups in order of first appearance, with their clients.
    pub fn client_groups(&self) -> Vec<(String, Vec<&Node>)> {
        let mut groups: Vec<(String, Vec<&Node>)> = Vec::new();
        for c in self.nodes_with(Role::Client) {
            let Some(g) = &c.group else { continue };
            match groups.iter_mut().find(|(name, _)| name == g) {
                Some((_, members)) => members.push(c),
                None => groups.push((g.clone(), vec![c])),
            }
        }
        groups
    }
}

/// Checks the file's top-level keys and reads `[router_config]` (as TOML text; empty if
/// absent).
fn parse_top_level(table: &toml::Table) -> Result<String, TopologyError> {
    check_keys(
        table,
        "",
        &[
            "lab",
            "virtual_hosts",
            "nodes",
            "router_config",
            "control",
            "bgp",
            "cluster",
        ],
    )?;
    router_config_text(table.get("router_config"), "router_config")
}

/// Reads a `router_config` table (the lab-wide one or a router's own) as TOML text, empty
/// if absent; `key` is its path for errors.
fn router_config_text(v: Option<&toml::Value>, key: &str) -> Result<String, TopologyError> {
    match v {
        None => Ok(String::new()),
        Some(toml::Value::Table(t)) => {
            toml::to_string(t).map_err(|e| TopologyError::new(key, e.to_string()))
        }
        Some(v) => Err(TopologyError::new(
            key,
            format!("must be a table of router configuration keys, not {v}"),
        )),
    }
}

/// Reads `[lab]`: the lab's name.
fn parse_lab(table: &toml::Table) -> Result<String, TopologyError> {
    let lab = table
        .get("lab")
        .ok_or_else(|| TopologyError::new("lab", "missing [lab] table"))?
        .as_table()
        .ok_or_else(|| TopologyError::new("lab", "must be a table ([lab])"))?;
    check_keys(lab, "lab", &["name"])?;
    let name = req_str(lab, "lab", "name")?;
    check_name(&name, "lab.name", false)?;
    Ok(name)
}

/// Decides whether the lab is a hierarchy and, if so, reads its `[control]`: `Some` for a
/// hierarchy, `None` for a static lab.
fn parse_lab_kind(
    table: &toml::Table,
    node_tables: &[&toml::Table],
) -> Result<Option<ControlSettings>, TopologyError> {
    // A `parent` anywhere or a [control] table makes the lab a hierarchy; what is valid
    // later (policies, weights, costs) depends on it.
    let hierarchy =
        table.contains_key("control") || node_tables.iter().any(|t| t.contains_key("parent"));
    if hierarchy {
        parse_control(table.get("control")).map(Some)
    } else {
        Ok(None)
    }
}

/// One `[[virtual_hosts]]` or `[[nodes]]` table being read: its key path and the kind of
/// lab it belongs to.
struct Entry<'a> {
    /// The table.
    table: &'a toml::Table,
    /// Its path for errors, e.g. `nodes[2]`.
    at: String,
    /// Whether the lab is a hierarchy.
    hierarchy: bool,
}

impl Entry<'_> {
    /// The path of one of the table's keys, e.g. `nodes[2].role`.
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }
}

/// Reads `[[virtual_hosts]]`: at least one.
fn parse_virtual_hosts(
    table: &toml::Table,
    hierarchy: bool,
) -> Result<Vec<VirtualHost>, TopologyError> {
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    for (i, t) in array_of_tables(table, "virtual_hosts")?.iter().enumerate() {
        let entry = Entry {
            table: t,
            at: format!("virtual_hosts[{i}]"),
            hierarchy,
        };
        let virtual_host = parse_virtual_host(&entry, &virtual_hosts)?;
        virtual_hosts.push(virtual_host);
    }
    if virtual_hosts.is_empty() {
        return Err(TopologyError::new(
            "virtual_hosts",
            "no virtual host (add a [[virtual_hosts]] table with name and subnet)",
        ));
    }
    Ok(virtual_hosts)
}

/// Reads one `[[virtual_hosts]]` table; `earlier` are the ones before it in the file (names
/// and subnets must not clash with theirs).
fn parse_virtual_host(
    entry: &Entry<'_>,
    earlier: &[VirtualHost],
) -> Result<VirtualHost, TopologyError> {
    let (t, at) = (entry.table, entry.at.as_str());
    check_keys(t, at, &["name", "subnet", "policy", "udp"])?;
    let name = req_str(t, at, "name")?;
    check_name(&name, &entry.key("name"), true)?;
    if earlier.iter().any(|v| v.name == name) {
        return Err(TopologyError::new(
            entry.key("name"),
            format!("duplicate virtual host name {name:?}"),
        ));
    }
    let subnet_s = req_str(t, at, "subnet")?;
    let subnet = parse_subnet(&subnet_s).map_err(|e| TopologyError::new(entry.key("subnet"), e))?;
    check_virtual_subnet(subnet, &entry.key("subnet"), earlier)?;
    let default_policy = if entry.hierarchy {
        Policy::Cost
    } else {
        Policy::Maglev
    };
    let policy = opt_enum(t, at, "policy", default_policy, "policy", POLICY_NAMES)?;
    check_policy(entry, policy)?;
    let udp = opt_enum(t, at, "udp", UdpMode::Pin, "udp mode", UDP_MODE_NAMES)?;
    Ok(VirtualHost {
        name,
        subnet,
        policy,
        udp,
    })
}

/// The policy rule: a hierarchy chooses only by cost, a static lab by anything but cost.
fn check_policy(entry: &Entry<'_>, policy: Policy) -> Result<(), TopologyError> {
    match (entry.hierarchy, policy) {
        (true, Policy::Cost)
        | (false, Policy::RoundRobin)
        | (false, Policy::Weighted)
        | (false, Policy::LeastFlows)
        | (false, Policy::Maglev) => Ok(()),
        (true, p) => Err(TopologyError::new(
            entry.key("policy"),
            format!(
                "{:?}: in a hierarchy every router chooses by the cost its children report; use \"cost\" or leave policy out",
                p.as_str()
            ),
        )),
        (false, Policy::Cost) => Err(TopologyError::new(
            entry.key("policy"),
            "\"cost\" needs a hierarchy (routers learn costs from their children's reports): give routers and hosts a parent, or add a [control] table",
        )),
    }
}

/// The nodes read so far, with each one's index in the file (for error keys).
struct ParsedNodes {
    /// Nodes in file order (an implicit core, once added, first).
    nodes: Vec<Node>,
    /// Index in the file of each node in `nodes`; `usize::MAX` for the implicit core.
    file_index: Vec<usize>,
}

impl ParsedNodes {
    /// Reads `[[nodes]]`, each table checked against the nodes before it.
    fn parse(node_tables: &[&toml::Table], hierarchy: bool) -> Result<Self, TopologyError> {
        let mut parsed = ParsedNodes {
            nodes: Vec::new(),
            file_index: Vec::new(),
        };
        for (i, t) in node_tables.iter().enumerate() {
            let entry = Entry {
                table: t,
                at: format!("nodes[{i}]"),
                hierarchy,
            };
            let node = parse_node(&entry, &parsed.nodes)?;
            parsed.nodes.push(node);
            parsed.file_index.push(i);
        }
        Ok(parsed)
    }

    /// Adds the implicit core, first, unless the file declares one.
    fn add_implicit_core(&mut self) {
        if self.nodes.iter().any(|n| n.role == Role::Core) {
            return;
        }
        self.nodes.insert(
            0,
            Node {
                name: "core".into(),
                role: Role::Core,
                weight: 1,
                parents: Vec::new(),
                level: None,
                group: None,
                cost: default_cost(),
                labels: BTreeMap::new(),
                router_config: String::new(),
            },
        );
        self.file_index.insert(0, usize::MAX);
    }
}

/// Every key a `[[nodes]]` table may have.
const NODE_KEYS: &[&str] = &[
    "name",
    "role",
    "weight",
    "parent",
    "level",
    "group",
    "cost",
    "labels",
    "router_config",
];

/// Reads one `[[nodes]]` table; `earlier` are the nodes before it in the file (names,
/// the core and interface names must not clash with theirs).
fn parse_node(entry: &Entry<'_>, earlier: &[Node]) -> Result<Node, TopologyError> {
    let (t, at) = (entry.table, entry.at.as_str());
    check_keys(t, at, NODE_KEYS)?;
    let (name, role) = parse_node_name_and_role(entry, earlier)?;
    check_node_keys_for_role(entry, role)?;
    let router_config = router_config_text(t.get("router_config"), &entry.key("router_config"))?;
    let weight = parse_node_weight(entry)?;
    let parents = parse_parents(entry)?;
    let level = opt_str(t, at, "level")?;
    if let Some(l) = &level {
        check_name(l, &entry.key("level"), true)?;
    }
    let group = opt_str(t, at, "group")?;
    if let Some(g) = &group {
        check_name(g, &entry.key("group"), true)?;
    }
    let cost = parse_node_cost(entry)?;
    let labels = parse_labels(t.get("labels"), &entry.key("labels"))?;
    if role != Role::Core {
        check_core_ifname_free(entry, &name, earlier)?;
    }
    Ok(Node {
        name,
        role,
        weight,
        parents,
        level,
        group,
        cost,
        labels,
        router_config,
    })
}

/// Reads a node's `parent`: a router's name, or a non-empty array of distinct names.
fn parse_parents(entry: &Entry<'_>) -> Result<Vec<String>, TopologyError> {
    let key = entry.key("parent");
    match entry.table.get("parent") {
        None => Ok(Vec::new()),
        Some(toml::Value::String(p)) => Ok(vec![p.clone()]),
        Some(toml::Value::Array(a)) if !a.is_empty() => {
            let mut parents: Vec<String> = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(p) if !parents.iter().any(|q| q == p) => parents.push(p.to_owned()),
                    Some(p) => {
                        return Err(TopologyError::new(
                            format!("{key}[{i}]"),
                            format!("{p:?} is named twice"),
                        ))
                    }
                    None => {
                        return Err(TopologyError::new(
                            format!("{key}[{i}]"),
                            format!("expected a router's name, found {v}"),
                        ))
                    }
                }
            }
            Ok(parents)
        }
        Some(v) => Err(TopologyError::new(
            key,
            format!("expected a router's name or a non-empty array of names, found {v}"),
        )),
    }
}

/// Reads a node's name and role: a unique name, a known role, at most one core, "core" only
/// for the core, and in a hierarchy router and host names usable as DNS names.
fn parse_node_name_and_role(
    entry: &Entry<'_>,
    earlier: &[Node],
) -> Result<(String, Role), TopologyError> {
    let (t, at) = (entry.table, entry.at.as_str());
    let name = req_str(t, at, "name")?;
    check_name(&name, &entry.key("name"), true)?;
    if earlier.iter().any(|n| n.name == name) {
        return Err(TopologyError::new(
            entry.key("name"),
            format!("duplicate node name {name:?}"),
        ));
    }
    let role_s = req_str(t, at, "role")?;
    let role: Role = role_s.parse().map_err(|()| {
        TopologyError::new(
            entry.key("role"),
            format!("unknown role {role_s:?} (expected {})", Role::NAMES),
        )
    })?;
    if role == Role::Core && earlier.iter().any(|n| n.role == Role::Core) {
        return Err(TopologyError::new(
            entry.key("role"),
            "a second core node (there is one core namespace per lab)",
        ));
    }
    if role != Role::Core && name == "core" {
        return Err(TopologyError::new(
            entry.key("name"),
            format!(
                "\"core\" is the implicit core node's name; give this {} another name",
                role.as_str()
            ),
        ));
    }
    if entry.hierarchy && matches!(role, Role::Router | Role::Host) && name.contains('_') {
        return Err(TopologyError::new(
            entry.key("name"),
            format!(
                "{name:?}: in a hierarchy router and host names are certificate DNS names ([a-z0-9-], no '_')"
            ),
        ));
    }
    Ok((name, role))
}

/// Which role may carry which node key, and whether only a hierarchy uses it (in the order
/// the keys are checked).
const NODE_KEYS_BY_ROLE: &[(&str, &[Role], bool)] = &[
    ("weight", &[Role::Host], false),
    ("parent", &[Role::Router, Role::Host], true),
    ("level", &[Role::Router], false),
    ("group", &[Role::Client], true),
    ("cost", &[Role::Router, Role::Host], true),
    ("labels", &[Role::Router, Role::Host], true),
    ("router_config", &[Role::Router], false),
];

/// Refuses a key the node's role does not have, or a hierarchy-only key in a static lab.
fn check_node_keys_for_role(entry: &Entry<'_>, role: Role) -> Result<(), TopologyError> {
    for &(key, roles, needs_hierarchy) in NODE_KEYS_BY_ROLE {
        if !entry.table.contains_key(key) {
            continue;
        }
        if !roles.contains(&role) {
            let who = roles
                .iter()
                .map(|r| format!("{}s", r.as_str()))
                .collect::<Vec<_>>()
                .join(" and ");
            return Err(TopologyError::new(
                entry.key(key),
                format!("only {who} have a {key} (this node is a {})", role.as_str()),
            ));
        }
        if needs_hierarchy && !entry.hierarchy {
            return Err(TopologyError::new(
                entry.key(key),
                "only a hierarchy uses it: give routers and hosts a parent, or add a [control] table",
            ));
        }
    }
    Ok(())
}

/// Reads a host's `weight` (default 1): 0..=65535, and only in a static lab.
fn parse_node_weight(entry: &Entry<'_>) -> Result<u32, TopologyError> {
    if entry.hierarchy && entry.table.contains_key("weight") {
        return Err(TopologyError::new(
            entry.key("weight"),
            "a hierarchy chooses by cost and reports, not by weight (use cost)",
        ));
    }
    match entry.table.get("weight") {
        None => Ok(1),
        Some(v) => v
            .as_integer()
            .and_then(|w| u32::try_from(w).ok())
            .filter(|w| *w <= 65535)
            .ok_or_else(|| {
                TopologyError::new(
                    entry.key("weight"),
                    format!("{v} is not an integer 0..=65535"),
                )
            }),
    }
}

/// Reads a router's or host's `cost` (default 1): a finite number >= 0.
fn parse_node_cost(entry: &Entry<'_>) -> Result<f64, TopologyError> {
    match entry.table.get("cost") {
        None => Ok(default_cost()),
        Some(v) => v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .filter(|c| c.is_finite() && *c >= 0.0)
            .ok_or_else(|| {
                TopologyError::new(
                    entry.key("cost"),
                    format!("{v} is not a finite number >= 0"),
                )
            }),
    }
}

/// Refuses a node whose core-side interface name an earlier node already makes.
fn check_core_ifname_free(
    entry: &Entry<'_>,
    name: &str,
    earlier: &[Node],
) -> Result<(), TopologyError> {
    // Interface names are cut to 15 characters: two long names with a common prefix would
    // collide in the core namespace.
    let ifname = core_ifname(name);
    match earlier
        .iter()
        .find(|n| n.role != Role::Core && core_ifname(&n.name) == ifname)
    {
        None => Ok(()),
        Some(other) => Err(TopologyError::new(
            entry.key("name"),
            format!(
                "{name:?} and {:?} both make interface name {ifname:?} (names are cut to {MAX_IFNAME_LEN} characters)",
                other.name
            ),
        )),
    }
}

/// Refuses a lab without a client, a router or a host.
fn check_required_roles(nodes: &[Node]) -> Result<(), TopologyError> {
    for (role, what) in [
        (Role::Client, "a client"),
        (Role::Router, "a router"),
        (Role::Host, "a host"),
    ] {
        if !nodes.iter().any(|n| n.role == role) {
            return Err(TopologyError::new(
                "nodes",
                format!("no node with role {:?}: a lab needs {what}", role.as_str()),
            ));
        }
    }
    Ok(())
}

/// Refuses a static lab where every host has weight 0.
fn check_some_host_weighs(nodes: &[Node]) -> Result<(), TopologyError> {
    if nodes.iter().any(|n| n.role == Role::Host && n.weight > 0) {
        return Ok(());
    }
    Err(TopologyError::new(
        "nodes",
        "every host has weight 0: nothing would serve the virtual hosts",
    ))
}

/// Gives routers without a `level` their default: "site" above hosts only, "router"
/// otherwise (in a static lab every router's children are the hosts).
fn fill_default_levels(nodes: &mut [Node], hierarchy: bool) {
    let levels: Vec<Option<String>> = nodes
        .iter()
        .map(|n| {
            if n.role != Role::Router {
                return None;
            }
            if let Some(l) = &n.level {
                return Some(l.clone());
            }
            let mut children = nodes.iter().filter(|c| {
                if hierarchy {
                    c.has_parent(&n.name)
                } else {
                    c.role == Role::Host
                }
            });
            Some(if children.all(|c| c.role == Role::Host) {
                "site".to_string()
            } else {
                "router".to_string()
            })
        })
        .collect();
    for (n, level) in nodes.iter_mut().zip(levels) {
        n.level = level;
    }
}

/// Refuses more than 254 nodes besides the core: links are numbered 10.200.k.0/24.
fn check_link_count(nodes: &[Node]) -> Result<(), TopologyError> {
    let linked = nodes.iter().filter(|n| n.role != Role::Core).count();
    if linked > 254 {
        return Err(TopologyError::new(
            "nodes",
            format!("{linked} nodes besides the core; 10.200.k.0/24 numbering allows 254"),
        ));
    }
    Ok(())
}

/// The core side's interface name for a node: `v-<node>` cut to 15 characters.
fn core_ifname(node: &str) -> String {
    format!("v-{node}").chars().take(MAX_IFNAME_LEN).collect()
}

fn check_keys(t: &toml::Table, at: &str, allowed: &[&str]) -> Result<(), TopologyError> {
    for key in t.keys() {
        if !allowed.contains(&key.as_str()) {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            return Err(TopologyError::new(
                path,
                format!("unknown key (expected one of {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Reads `[control]` (absent: every default).
fn parse_control(v: Option<&toml::Value>) -> Result<ControlSettings, TopologyError> {
    let mut c = ControlSettings::default();
    let Some(v) = v else { return Ok(c) };
    let t = v.as_table().ok_or_else(|| {
        TopologyError::new(
            "control",
            format!("must be a table ([control]), found a {}", v.type_str()),
        )
    })?;
    check_keys(
        t,
        "control",
        &[
            "report_interval",
            "silent_after",
            "rebuild_interval",
            "f",
            "g",
            "shortcut",
            "shortcut_hold",
        ],
    )?;
    if let Some(v) = t.get("shortcut") {
        c.shortcut = v.as_bool().ok_or_else(|| {
            TopologyError::new("control.shortcut", format!("{v} is not true or false"))
        })?;
    }
    if let Some(h) = opt_str(t, "control", "shortcut_hold")? {
        if slr_config::parse_duration(&h).is_none() {
            return Err(TopologyError::new(
                "control.shortcut_hold",
                format!("{h:?} is not a duration (e.g. \"20ms\")"),
            ));
        }
        c.shortcut_hold = Some(h);
    }
    for (key, slot) in [
        ("report_interval", &mut c.report_interval),
        ("rebuild_interval", &mut c.rebuild_interval),
    ] {
        if let Some(s) = opt_str(t, "control", key)? {
            match slr_config::parse_duration(&s) {
                Some(d) if d >= std::time::Duration::from_millis(50) => *slot = s,
                _ => {
                    return Err(TopologyError::new(
                        format!("control.{key}"),
                        format!(
                            "{s:?} is not a duration of at least 50ms (e.g. \"500ms\", \"1s\")"
                        ),
                    ))
                }
            }
        }
    }
    if let Some(v) = t.get("silent_after") {
        c.silent_after = v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                TopologyError::new(
                    "control.silent_after",
                    format!("{v} is not an integer >= 1"),
                )
            })?;
    }
    for (key, slot) in [("f", &mut c.f), ("g", &mut c.g)] {
        if let Some(s) = opt_str(t, "control", key)? {
            if s.trim().is_empty() {
                return Err(TopologyError::new(
                    format!("control.{key}"),
                    "an empty expression (leave the key out for the routers' default)",
                ));
            }
            *slot = Some(s);
        }
    }
    Ok(c)
}

/// Reads a node's `labels` table: names to strings.
fn parse_labels(
    v: Option<&toml::Value>,
    at: &str,
) -> Result<BTreeMap<String, String>, TopologyError> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let t = v.as_table().ok_or_else(|| {
        TopologyError::new(
            at,
            format!(
                "must be a table such as {{ region = \"east\" }}, found {} {v}",
                v.type_str()
            ),
        )
    })?;
    let mut labels = BTreeMap::new();
    for (k, v) in t {
        check_name(k, &format!("{at}.{k}"), true)?;
        let s = v.as_str().ok_or_else(|| {
            TopologyError::new(
                format!("{at}.{k}"),
                format!("expected a string, found {} {v}", v.type_str()),
            )
        })?;
        labels.insert(k.clone(), s.to_string());
    }
    Ok(labels)
}

impl ParsedNodes {
    /// Checks a hierarchy's shape and fills in implicit parents: every parent is a router,
    /// no cycles, exactly one top router (several with `[bgp]`: the core learns the virtual
    /// subnets from each), every router has a child.
    fn resolve_hierarchy(&mut self, bgp: bool) -> Result<(), TopologyError> {
        self.resolve_parents()?;
        self.check_no_cycles()?;
        self.check_tree_shape(bgp)
    }

    /// The key path of `nodes[i]` in the file, for errors.
    fn at(&self, i: usize) -> String {
        format!("nodes[{}]", self.file_index[i])
    }

    /// Gives hosts of a one-router hierarchy that name no parent that router, and checks
    /// every named parent is another node, and a router.
    fn resolve_parents(&mut self) -> Result<(), TopologyError> {
        let routers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Router)
            .map(|n| n.name.clone())
            .collect();
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.parents.is_empty() {
                if n.role == Role::Host {
                    if let [only] = routers.as_slice() {
                        self.nodes[i].parents = vec![only.clone()];
                        continue;
                    }
                    return Err(TopologyError::new(
                        format!("{}.parent", self.at(i)),
                        format!(
                            "missing: with {} routers every host names its (site) router as parent",
                            routers.len()
                        ),
                    ));
                }
                continue;
            }
            self.check_parents_of(i)?;
        }
        Ok(())
    }

    /// Checks every parent `nodes[i]` names is another node, and a router.
    fn check_parents_of(&self, i: usize) -> Result<(), TopologyError> {
        let n = &self.nodes[i];
        for (j, p) in n.parents.iter().enumerate() {
            let key = if n.parents.len() == 1 {
                format!("{}.parent", self.at(i))
            } else {
                format!("{}.parent[{j}]", self.at(i))
            };
            if p == &n.name {
                return Err(TopologyError::new(key, format!("{p:?} is the node itself")));
            }
            match self.nodes.iter().find(|o| &o.name == p) {
                None => return Err(TopologyError::new(key, format!("unknown node {p:?}"))),
                Some(o) if o.role != Role::Router => {
                    return Err(TopologyError::new(
                        key,
                        format!(
                            "{p:?} is a {}, not a router (a {}'s parent is {})",
                            o.role.as_str(),
                            n.role.as_str(),
                            if n.role == Role::Host {
                                "its site router"
                            } else {
                                "the router of the level above"
                            }
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Refuses cycles: walks up from every router through each of its parents; a path that
    /// comes back to a node on it is one.
    fn check_no_cycles(&self) -> Result<(), TopologyError> {
        fn walk(nodes: &[Node], path: &mut Vec<String>) -> bool {
            let last = path.last().expect("path starts at a node").clone();
            let parents = nodes
                .iter()
                .find(|o| o.name == last)
                .map(|o| o.parents.clone())
                .unwrap_or_default();
            for p in parents {
                let looped = path.contains(&p);
                path.push(p);
                if looped || walk(nodes, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.role != Role::Router {
                continue;
            }
            let mut path = vec![n.name.clone()];
            if walk(&self.nodes, &mut path) {
                return Err(TopologyError::new(
                    format!("{}.parent", self.at(i)),
                    format!(
                        "cycle {} (a hierarchy is a tree below its top routers)",
                        path.join(" -> ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks the tree has one top router (several with `[bgp]`) and every router has a child.
    fn check_tree_shape(&self, bgp: bool) -> Result<(), TopologyError> {
        let nodes = &self.nodes;
        let tops: Vec<&str> = nodes
            .iter()
            .filter(|n| n.role == Role::Router && n.parents.is_empty())
            .map(|n| n.name.as_str())
            .collect();
        if tops.is_empty() || (tops.len() > 1 && !bgp) {
            return Err(TopologyError::new(
                "nodes",
                format!(
                    "routers {} have no parent: without [bgp] a hierarchy has exactly one top router (the one the core routes the clients' VIP traffic to); give the others a parent, or add [bgp] so that the core learns the virtual subnets from each",
                    tops.iter()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for (i, n) in nodes.iter().enumerate() {
            if n.role == Role::Router && !nodes.iter().any(|c| c.has_parent(&n.name)) {
                return Err(TopologyError::new(
                    self.at(i),
                    format!(
                        "router {:?} has no child (no router or host names it as parent)",
                        n.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads `[cluster]`: whether the announcing routers (at least two) mirror their flows, and
/// whether they ask each other WHOHAS.
fn parse_cluster(v: Option<&toml::Value>, t: &Topology) -> Result<(bool, bool), TopologyError> {
    let Some(v) = v else {
        return Ok((false, false));
    };
    let table = v.as_table().ok_or_else(|| {
        TopologyError::new(
            "cluster",
            format!("must be a table ([cluster]), found a {}", v.type_str()),
        )
    })?;
    check_keys(table, "cluster", &["mirror", "whohas"])?;
    let flag = |key: &str| match table.get(key) {
        None => Ok(true),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(other) => Err(TopologyError::new(
            format!("cluster.{key}"),
            format!("expected true or false, found {other}"),
        )),
    };
    let (mirror, whohas) = (flag("mirror")?, flag("whohas")?);
    if (mirror || whohas) && t.announcing_routers().len() < 2 {
        return Err(TopologyError::new(
            "cluster",
            "flow mirroring and WHOHAS need at least two routers the core routes the virtual subnets to",
        ));
    }
    Ok((mirror, whohas))
}

/// Reads `[bgp]` (after the nodes: `backup` names announcing routers).
fn parse_bgp(v: Option<&toml::Value>, t: &Topology) -> Result<Option<BgpSettings>, TopologyError> {
    let Some(v) = v else { return Ok(None) };
    let table = v.as_table().ok_or_else(|| {
        TopologyError::new(
            "bgp",
            format!("must be a table ([bgp]), found a {}", v.type_str()),
        )
    })?;
    check_keys(table, "bgp", &["hold_time", "bfd_interval", "backup"])?;
    let mut b = BgpSettings {
        hold_time: "3s".into(),
        bfd_interval: Some("100ms".into()),
        backup: Vec::new(),
    };
    if let Some(h) = opt_str(table, "bgp", "hold_time")? {
        match slr_config::parse_duration(&h) {
            Some(d) if d.as_secs() >= 3 && d.subsec_nanos() == 0 && d.as_secs() <= 65_535 => {
                b.hold_time = h
            }
            _ => {
                return Err(TopologyError::new(
                    "bgp.hold_time",
                    format!("{h:?} is not whole seconds from 3s to 65535s"),
                ))
            }
        }
    }
    if let Some(i) = opt_str(table, "bgp", "bfd_interval")? {
        b.bfd_interval = match slr_config::parse_duration(&i) {
            _ if i == "off" => None,
            Some(d)
                if d >= std::time::Duration::from_millis(10)
                    && d <= std::time::Duration::from_secs(10) =>
            {
                Some(i)
            }
            _ => {
                return Err(TopologyError::new(
                    "bgp.bfd_interval",
                    format!("{i:?} is not a duration from 10ms to 10s, or \"off\""),
                ))
            }
        };
    }
    if let Some(list) = table.get("backup") {
        let items = list.as_array().ok_or_else(|| {
            TopologyError::new(
                "bgp.backup",
                format!("must be a list of router names, not {list}"),
            )
        })?;
        let announcing: Vec<&str> = t
            .announcing_routers()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        for (i, item) in items.iter().enumerate() {
            let name = item.as_str().ok_or_else(|| {
                TopologyError::new(
                    format!("bgp.backup[{i}]"),
                    format!("expected a router name, found {item}"),
                )
            })?;
            if !announcing.contains(&name) {
                return Err(TopologyError::new(
                    format!("bgp.backup[{i}]"),
                    format!(
                        "{name:?} is not a router the core routes the virtual subnets to ({})",
                        announcing.join(", ")
                    ),
                ));
            }
            b.backup.push(name.to_string());
        }
        if b.backup.len() >= announcing.len() {
            return Err(TopologyError::new(
                "bgp.backup",
                "every announcing router is a backup: leave at least one primary",
            ));
        }
    }
    Ok(Some(b))
}

fn opt_str(t: &toml::Table, at: &str, key: &str) -> Result<Option<String>, TopologyError> {
    if t.contains_key(key) {
        req_str(t, at, key).map(Some)
    } else {
        Ok(None)
    }
}

fn req_str(t: &toml::Table, at: &str, key: &str) -> Result<String, TopologyError> {
    let path = format!("{at}.{key}");
    match t.get(key) {
        None => Err(TopologyError::new(path, "missing")),
        Some(toml::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(TopologyError::new(
            path,
            format!("expected a string, found {} {v}", v.type_str()),
        )),
    }
}

fn opt_enum<T: FromStr>(
    t: &toml::Table,
    at: &str,
    key: &str,
    default: T,
    what: &str,
    names: &str,
) -> Result<T, TopologyError> {
    if t.get(key).is_none() {
        return Ok(default);
    }
    let s = req_str(t, at, key)?;
    s.parse().map_err(|_| {
        TopologyError::new(
            format!("{at}.{key}"),
            format!("unknown {what} {s:?} (expected {names})"),
        )
    })
}

fn array_of_tables<'a>(
    t: &'a toml::Table,
    key: &str,
) -> Result<Vec<&'a toml::Table>, TopologyError> {
    match t.get(key) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_table().ok_or_else(|| {
                    TopologyError::new(
                        format!("{key}[{i}]"),
                        format!("must be a table ([[{key}]]), found a {}", v.type_str()),
                    )
                })
            })
            .collect(),
        Some(v) => Err(TopologyError::new(
            key,
            format!(
                "must be an array of tables ([[{key}]]), found a {}",
                v.type_str()
            ),
        )),
    }
}

fn check_name(name: &str, key: &str, allow_underscore: bool) -> Result<(), TopologyError> {
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allow_underscore && c == '_')
    };
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        let chars = if allow_underscore {
            "a-z, 0-9, '-', '_'"
        } else {
            "a-z, 0-9, '-'"
        };
        Err(TopologyError::new(
            key,
            format!(
                "invalid name {name:?} (1 to {MAX_NAME_LEN} of {chars}, starting with a letter or digit)"
            ),
        ))
    }
}

fn check_virtual_subnet(
    subnet: Ipv4Cidr,
    key: &str,
    earlier: &[VirtualHost],
) -> Result<(), TopologyError> {
    if subnet.prefix_len() < 8 {
        return Err(TopologyError::new(
            key,
            format!("\"{subnet}\" is too wide (prefix length at least 8)"),
        ));
    }
    let reserved = [
        (LINK_NET, "the lab's links"),
        ((Ipv4Addr::new(127, 0, 0, 0), 8), "loopback"),
    ];
    for ((addr, len), why) in reserved {
        let reserved = Ipv4Cidr::new(addr, len).expect("a valid prefix");
        if overlaps(subnet, reserved) {
            return Err(TopologyError::new(
                key,
                format!("\"{subnet}\" overlaps {reserved}, used for {why}"),
            ));
        }
    }
    if let Some(other) = earlier.iter().find(|v| overlaps(v.subnet, subnet)) {
        return Err(TopologyError::new(
            key,
            format!(
                "\"{subnet}\" overlaps virtual host {:?} ({})",
                other.name, other.subnet
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = r#"
        [lab]
        name = "site"
        [[virtual_hosts]]
        name = "web"
        subnet = "10.99.0.0/24"
        policy = "maglev"
        udp = "pin"
        [[nodes]]
        name = "c1"
        role = "client"
        [[nodes]]
        name = "r1"
        role = "router"
        [[nodes]]
        name = "h1"
        role = "host"
        weight = 2
        [[nodes]]
        name = "h2"
        role = "host"
    "#;

    fn node<'a>(t: &'a Topology, name: &str) -> &'a Node {
        t.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn err(text: &str) -> String {
        Topology::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bgp_table_defaults_and_checks() {
        let two = SITE.replace(
            "[[nodes]]\n        name = \"h1\"",
            "[[nodes]]\n        name = \"r2\"\n        role = \"router\"\n        [[nodes]]\n        name = \"h1\"",
        );
        assert!(Topology::parse(&two).unwrap().bgp.is_none());
        let t = Topology::parse(&format!("[bgp]\n{two}")).unwrap();
        let b = t.bgp.as_ref().unwrap();
        assert_eq!(b.hold_time, "3s");
        assert_eq!(b.bfd_interval.as_deref(), Some("100ms"));
        assert!(b.backup.is_empty());
        let names: Vec<&str> = t
            .announcing_routers()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["r1", "r2"]);
        let t = Topology::parse(&format!(
            "[bgp]\nbfd_interval = \"off\"\nbackup = [\"r2\"]\n{two}"
        ))
        .unwrap();
        assert_eq!(t.bgp.as_ref().unwrap().bfd_interval, None);
        assert_eq!(t.bgp.as_ref().unwrap().backup, ["r2"]);
        assert_eq!(
            err(&format!("[bgp]\nhold_time = \"1s\"\n{two}")),
            "bgp.hold_time: \"1s\" is not whole seconds from 3s to 65535s"
        );
        assert!(err(&format!("[bgp]\nbfd_interval = \"fast\"\n{two}"))
            .starts_with("bgp.bfd_interval: \"fast\""));
        assert!(err(&format!("[bgp]\nbackup = [\"h1\"]\n{two}"))
            .starts_with("bgp.backup[0]: \"h1\" is not a router"));
        assert!(err(&format!("[bgp]\nbackup = [\"r1\", \"r2\"]\n{two}"))
            .starts_with("bgp.backup: every announcing router"));
        assert!(err(&format!("[bgp]\ncolour = 1\n{two}")).contains("colour"));
        assert!(
            Topology::parse(&format!("[cluster]\n{two}"))
                .unwrap()
                .mirror
        );
        assert!(
            !Topology::parse(&format!("[cluster]\nmirror = false\n{two}"))
                .unwrap()
                .mirror
        );
        assert!(!Topology::parse(&two).unwrap().mirror);
        let w = Topology::parse(&format!("[cluster]\nmirror = false\n{two}")).unwrap();
        assert!(w.whohas && !w.mirror);
        assert!(!Topology::parse(&two).unwrap().whohas);
        assert!(err(&format!("[cluster]\nwhohas = \"yes\"\n{two}"))
            .starts_with("cluster.whohas: expected true or false"));
        assert!(err(&format!("[cluster]\n{SITE}"))
            .starts_with("cluster: flow mirroring and WHOHAS need at least two routers"));
        assert!(err(&format!("[cluster]\nmirror = 1\n{two}"))
            .starts_with("cluster.mirror: expected true or false"));
    }

    #[test]
    fn parses_site_and_adds_implicit_core() {
        let t = Topology::parse(SITE).unwrap();
        assert_eq!(t.name, "site");
        assert_eq!(t.nodes.len(), 5);
        assert_eq!(t.nodes[0].role, Role::Core);
        assert_eq!(t.nodes[0].name, "core");
        assert_eq!(node(&t, "h1").weight, 2);
        assert_eq!(node(&t, "h2").weight, 1);
        assert_eq!(t.virtual_hosts[0].vip(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(t.virtual_hosts[0].policy, Policy::Maglev);
    }

    #[test]
    fn defaults_policy_and_udp() {
        let text = SITE
            .replace("policy = \"maglev\"", "")
            .replace("udp = \"pin\"", "");
        let t = Topology::parse(&text).unwrap();
        assert_eq!(t.virtual_hosts[0].policy, Policy::Maglev);
        assert_eq!(t.virtual_hosts[0].udp, UdpMode::Pin);
    }

    #[test]
    fn address_plan_numbers_non_core_nodes_in_file_order() {
        let t = Topology::parse(SITE).unwrap();
        let r1 = t.link("r1").unwrap();
        assert_eq!(r1.index, 2);
        assert_eq!(r1.node_address, Ipv4Addr::new(10, 200, 2, 2));
        assert_eq!(r1.core_address, Ipv4Addr::new(10, 200, 2, 1));
        assert_eq!(r1.core_ifname, "v-r1");
        assert_eq!(t.address("c1"), Some(Ipv4Addr::new(10, 200, 1, 2)));
        assert_eq!(t.address("h2"), Some(Ipv4Addr::new(10, 200, 4, 2)));
        assert_eq!(t.link("core"), None);
        assert_eq!(t.netns("h1"), "slr-site-h1");
        assert_eq!(
            t.addresses(t.core()),
            [
                "10.200.1.1/24",
                "10.200.2.1/24",
                "10.200.3.1/24",
                "10.200.4.1/24"
            ]
        );
        assert_eq!(t.addresses(node(&t, "h1")), ["10.200.3.2/24"]);
    }

    #[test]
    fn declared_core_is_not_numbered_wherever_it_is() {
        let text = SITE.replace(
            "[[nodes]]\n        name = \"r1\"",
            "[[nodes]]\n        name = \"sw\"\n        role = \"core\"\n        [[nodes]]\n        name = \"r1\"",
        );
        let t = Topology::parse(&text).unwrap();
        assert_eq!(t.core().name, "sw");
        assert_eq!(t.nodes.len(), 5);
        assert_eq!(t.address("r1"), Some(Ipv4Addr::new(10, 200, 2, 2)));
        assert_eq!(t.netns("sw"), "slr-site-sw");
    }

    #[test]
    fn long_names_are_truncated_and_collisions_rejected() {
        let text = SITE
            .replace("\"h1\"", "\"host-abcdefghijk1\"")
            .replace("\"h2\"", "\"host-abcdefghijk2\"");
        assert_eq!(
            err(&text),
            "nodes[3].name: \"host-abcdefghijk2\" and \"host-abcdefghijk1\" both make interface name \"v-host-abcdefgh\" (names are cut to 15 characters)"
        );
        let ok = SITE.replace("\"h1\"", "\"host-abcdefghijk1\"");
        let t = Topology::parse(&ok).unwrap();
        assert_eq!(
            t.link("host-abcdefghijk1").unwrap().core_ifname,
            "v-host-abcdefgh"
        );
    }

    #[test]
    fn unknown_role_names_key_and_value() {
        let text = SITE.replace("role = \"host\"\n        weight = 2", "role = \"hots\"");
        assert_eq!(
            err(&text),
            "nodes[2].role: unknown role \"hots\" (expected client, router, host, core)"
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            err(&SITE.replace("\"maglev\"", "\"random\"")),
            "virtual_hosts[0].policy: unknown policy \"random\" (expected round_robin, weighted, least_flows, maglev, cost)"
        );
        assert_eq!(
            err(&SITE.replace("udp = \"pin\"", "udp = \"sticky\"")),
            "virtual_hosts[0].udp: unknown udp mode \"sticky\" (expected pin, per_datagram)"
        );
        assert_eq!(
            err(&SITE.replace("10.99.0.0/24", "10.99.0.1/24")),
            "virtual_hosts[0].subnet: \"10.99.0.1/24\" has host bits set (did you mean \"10.99.0.0/24\"?)"
        );
        assert_eq!(
            err(&SITE.replace("10.99.0.0/24", "10.200.9.0/24")),
            "virtual_hosts[0].subnet: \"10.200.9.0/24\" overlaps 10.200.0.0/16, used for the lab's links"
        );
        assert_eq!(
            err(&SITE.replace("10.99.0.0/24", "10.99.0.0/33")),
            "virtual_hosts[0].subnet: \"10.99.0.0/33\" is not an IPv4 prefix (expected e.g. \"10.99.0.0/24\")"
        );
        assert_eq!(
            err(&SITE.replace("weight = 2", "weight = -1")),
            "nodes[2].weight: -1 is not an integer 0..=65535"
        );
        assert_eq!(
            err(&SITE.replace("weight = 2", "wieght = 2")),
            "nodes[2].wieght: unknown key (expected one of name, role, weight, parent, level, group, cost, labels, router_config)"
        );
        assert_eq!(
            err(&SITE.replace("name = \"site\"", "name = \"Site\"")),
            "lab.name: invalid name \"Site\" (1 to 24 of a-z, 0-9, '-', starting with a letter or digit)"
        );
        assert_eq!(
            err(&SITE.replace("name = \"h2\"", "name = \"h1\"")),
            "nodes[3].name: duplicate node name \"h1\""
        );
        assert_eq!(
            err(&SITE.replace("role = \"client\"", "role = \"client\"\n weight = 3")),
            "nodes[0].weight: only hosts have a weight (this node is a client)"
        );
        assert_eq!(
            err(&SITE.replace("name = \"c1\"", "name = 7")),
            "nodes[0].name: expected a string, found integer 7"
        );
    }

    #[test]
    fn rejects_missing_roles_and_tables() {
        assert_eq!(
            err(&SITE.replace("role = \"router\"", "role = \"client\"")),
            "nodes: no node with role \"router\": a lab needs a router"
        );
        assert_eq!(
            err("x = 1"),
            "x: unknown key (expected one of lab, virtual_hosts, nodes, router_config, control, bgp, cluster)"
        );
        assert_eq!(
            err(&format!("router_config = 3\n{SITE}")),
            "router_config: must be a table of router configuration keys, not 3"
        );
        assert_eq!(err("[[nodes]]\nname=\"a\""), "lab: missing [lab] table");
        assert!(err("[lab\n").contains("TOML parse error"));
        let two_vhosts =
            format!("{SITE}\n[[virtual_hosts]]\nname = \"api\"\nsubnet = \"10.99.0.128/25\"\n");
        assert_eq!(
            err(&two_vhosts),
            "virtual_hosts[1].subnet: \"10.99.0.128/25\" overlaps virtual host \"web\" (10.99.0.0/24)"
        );
    }

    #[test]
    fn vip_and_containment() {
        let n: Ipv4Cidr = "10.99.0.0/24".parse().unwrap();
        assert_eq!(first_address(n), Ipv4Addr::new(10, 99, 0, 1));
        assert!(n.contains(Ipv4Addr::new(10, 99, 0, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 99, 1, 1)));
        let host: Ipv4Cidr = "192.0.2.7/32".parse().unwrap();
        assert_eq!(first_address(host), Ipv4Addr::new(192, 0, 2, 7));
        let t = Topology::parse(SITE).unwrap();
        assert!(t.is_virtual(Ipv4Addr::new(10, 99, 0, 1)));
        assert!(!t.is_virtual(Ipv4Addr::new(10, 200, 3, 2)));
    }

    #[test]
    fn round_trips_through_json() {
        let t = Topology::parse(SITE).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"subnet\":\"10.99.0.0/24\""));
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
    }

    /// Three levels: network, two AS, two sites per AS (one with a mixed set of children
    /// is not needed here), hosts; two client groups.
    const THREE: &str = r#"
        [lab]
        name = "three"
        [control]
        report_interval = "500ms"
        f = 'cost + load'
        [[virtual_hosts]]
        name = "web"
        subnet = "10.99.0.0/24"
        [[nodes]]
        name = "c1"
        role = "client"
        group = "east"
        [[nodes]]
        name = "net"
        role = "router"
        level = "network"
        [[nodes]]
        name = "as1"
        role = "router"
        level = "as"
        parent = "net"
        labels = { region = "east" }
        [[nodes]]
        name = "as2"
        role = "router"
        parent = "net"
        cost = 10
        [[nodes]]
        name = "site-a"
        role = "router"
        parent = "as1"
        [[nodes]]
        name = "site-c"
        role = "router"
        parent = "as2"
        [[nodes]]
        name = "h1"
        role = "host"
        parent = "site-a"
        cost = 2.5
        [[nodes]]
        name = "h2"
        role = "host"
        parent = "site-c"
        [[nodes]]
        name = "c2"
        role = "client"
        group = "west"
        [[nodes]]
        name = "c3"
        role = "client"
    "#;

    #[test]
    fn parses_a_hierarchy_with_levels_groups_costs_and_labels() {
        let t = Topology::parse(THREE).unwrap();
        assert!(t.is_hierarchy());
        let c = t.control.as_ref().unwrap();
        assert_eq!(c.report_interval, "500ms");
        assert_eq!(c.rebuild_interval, "1s");
        assert_eq!(c.silent_after, 3);
        assert_eq!(c.f.as_deref(), Some("cost + load"));
        assert_eq!(c.g, None);
        assert_eq!(t.virtual_hosts[0].policy, Policy::Cost);
        assert_eq!(t.top_router().unwrap().name, "net");
        assert_eq!(node(&t, "net").level.as_deref(), Some("network"));
        assert_eq!(node(&t, "as1").level.as_deref(), Some("as"));
        assert_eq!(
            node(&t, "as2").level.as_deref(),
            Some("router"),
            "default above routers"
        );
        assert_eq!(
            node(&t, "site-a").level.as_deref(),
            Some("site"),
            "default above hosts"
        );
        assert_eq!(node(&t, "h1").level, None);
        assert_eq!(node(&t, "as2").cost, 10.0);
        assert_eq!(node(&t, "h1").cost, 2.5);
        assert_eq!(node(&t, "h2").cost, 1.0);
        assert_eq!(node(&t, "as1").labels["region"], "east");
        assert_eq!(node(&t, "c1").group.as_deref(), Some("east"));
        assert_eq!(node(&t, "c3").group, None);
        let names = |v: Vec<&Node>| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(t.children("net")), ["as1", "as2"]);
        assert_eq!(names(t.children("site-a")), ["h1"]);
        assert!(t.children("h1").is_empty());
        assert_eq!(names(t.ancestors("h1")), ["net", "as1", "site-a"]);
        assert!(t.ancestors("net").is_empty());
        assert_eq!(t.router_levels(), ["network", "as", "router", "site"]);
        let groups: Vec<(String, Vec<String>)> = t
            .client_groups()
            .into_iter()
            .map(|(g, m)| (g, names(m)))
            .collect();
        assert_eq!(
            groups,
            [
                ("east".to_string(), vec!["c1".to_string()]),
                ("west".to_string(), vec!["c2".to_string()])
            ]
        );
        assert_eq!(
            t.tree(),
            [
                "net (network)",
                "  as1 (as) region=east",
                "    site-a (site): h1",
                "  as2 (router) cost 10",
                "    site-c (site): h2"
            ]
        );
        // The address plan is unchanged: file order.
        assert_eq!(t.address("net"), Some(Ipv4Addr::new(10, 200, 2, 2)));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
    }

    #[test]
    fn static_labs_stay_static_and_old_state_files_load() {
        let t = Topology::parse(SITE).unwrap();
        assert!(!t.is_hierarchy());
        assert_eq!(t.top_router(), None);
        assert_eq!(node(&t, "r1").level.as_deref(), Some("site"));
        assert_eq!(node(&t, "h1").parent(), None);
        assert_eq!(t.children("r1").len(), 2);
        assert!(t.tree().is_empty());
        // A state file written before hierarchies existed.
        let old = r#"{"name":"site","virtual_hosts":[{"name":"web","subnet":"10.99.0.0/24","policy":"maglev","udp":"pin"}],
            "nodes":[{"name":"core","role":"core","weight":1},{"name":"c1","role":"client","weight":1}],"router_config":""}"#;
        let t: Topology = serde_json::from_str(old).unwrap();
        assert!(!t.is_hierarchy());
        assert_eq!(t.nodes[1].cost, 1.0);
    }

    #[test]
    fn one_router_hierarchy_adopts_hosts_without_parent() {
        let text = format!("{SITE}\n[control]\nsilent_after = 5\n")
            .replace("        weight = 2\n", "")
            .replace("policy = \"maglev\"", "");
        let t = Topology::parse(&text).unwrap();
        assert!(t.is_hierarchy());
        assert_eq!(node(&t, "h1").parent(), Some("r1"));
        assert_eq!(t.top_router().unwrap().name, "r1");
        assert_eq!(t.control.as_ref().unwrap().silent_after, 5);
        assert_eq!(t.virtual_hosts[0].policy, Policy::Cost);
    }

    #[test]
    fn rejects_bad_hierarchies_naming_key_and_value() {
        let three = |from: &str, to: &str| {
            assert!(THREE.contains(from), "{from}");
            err(&THREE.replacen(from, to, 1))
        };
        assert_eq!(
            three("parent = \"site-a\"", "parent = \"site-x\""),
            "nodes[6].parent: unknown node \"site-x\""
        );
        assert_eq!(
            three("parent = \"site-a\"", "parent = \"h2\""),
            "nodes[6].parent: \"h2\" is a host, not a router (a host's parent is its site router)"
        );
        assert_eq!(
            three("parent = \"as1\"", "parent = \"c1\""),
            "nodes[4].parent: \"c1\" is a client, not a router (a router's parent is the router of the level above)"
        );
        assert_eq!(
            three("parent = \"as1\"", "parent = \"site-a\""),
            "nodes[4].parent: \"site-a\" is the node itself"
        );
        // as1 -> site-a -> as1, with net's other child as2 still below net.
        assert_eq!(
            three(
                "level = \"as\"\n        parent = \"net\"",
                "level = \"as\"\n        parent = \"site-a\""
            ),
            "nodes[2].parent: cycle as1 -> site-a -> as1 (a hierarchy is a tree below its top routers)"
        );
        // Several parents: each is checked, and a cycle through the second is found.
        assert_eq!(
            three("parent = \"site-a\"", "parent = [\"site-a\", \"site-x\"]"),
            "nodes[6].parent[1]: unknown node \"site-x\""
        );
        assert_eq!(
            three("parent = \"site-a\"", "parent = [\"site-a\", \"site-a\"]"),
            "nodes[6].parent[1]: \"site-a\" is named twice"
        );
        assert_eq!(
            three("parent = \"site-a\"", "parent = []"),
            "nodes[6].parent: expected a router's name or a non-empty array of names, found []"
        );
        assert_eq!(
            three("parent = \"site-a\"", "parent = [\"site-a\", 2]"),
            "nodes[6].parent[1]: expected a router's name, found 2"
        );
        assert_eq!(
            three(
                "level = \"as\"\n        parent = \"net\"",
                "level = \"as\"\n        parent = [\"net\", \"site-a\"]"
            ),
            "nodes[2].parent: cycle as1 -> site-a -> as1 (a hierarchy is a tree below its top routers)"
        );
        assert_eq!(
            three(
                "level = \"network\"",
                "level = \"network\"\n        parent = \"net\""
            ),
            "nodes[1].parent: \"net\" is the node itself"
        );
        assert_eq!(
            three("role = \"router\"\n        parent = \"as2\"", "role = \"router\""),
            "nodes: routers \"net\", \"site-c\" have no parent: without [bgp] a hierarchy has exactly one top router (the one the core routes the clients' VIP traffic to); give the others a parent, or add [bgp] so that the core learns the virtual subnets from each"
        );
        assert_eq!(
            three(
                "name = \"h2\"\n        role = \"host\"\n        parent = \"site-c\"",
                "name = \"h2\"\n        role = \"host\"\n        parent = \"site-a\""
            ),
            "nodes[5]: router \"site-c\" has no child (no router or host names it as parent)"
        );
        assert_eq!(
            three("parent = \"site-c\"", ""),
            "nodes[7].parent: missing: with 5 routers every host names its (site) router as parent"
        );
        assert_eq!(
            three(
                "group = \"east\"",
                "group = \"east\"\n        parent = \"net\""
            ),
            "nodes[0].parent: only routers and hosts have a parent (this node is a client)"
        );
        assert_eq!(
            three("cost = 2.5", "cost = -1"),
            "nodes[6].cost: -1 is not a finite number >= 0"
        );
        assert_eq!(
            three("cost = 2.5", "cost = \"cheap\""),
            "nodes[6].cost: \"cheap\" is not a finite number >= 0"
        );
        assert_eq!(
            three("cost = 2.5", "weight = 2"),
            "nodes[6].weight: a hierarchy chooses by cost and reports, not by weight (use cost)"
        );
        assert_eq!(
            three(
                "group = \"east\"",
                "group = \"east\"\n        level = \"x\""
            ),
            "nodes[0].level: only routers have a level (this node is a client)"
        );
        assert_eq!(
            three("level = \"as\"", "group = \"as\""),
            "nodes[2].group: only clients have a group (this node is a router)"
        );
        assert_eq!(
            three("{ region = \"east\" }", "{ region = 3 }"),
            "nodes[2].labels.region: expected a string, found integer 3"
        );
        assert_eq!(
            three("{ region = \"east\" }", "\"east\""),
            "nodes[2].labels: must be a table such as { region = \"east\" }, found string \"east\""
        );
        assert_eq!(
            three("name = \"h2\"", "name = \"h_2\""),
            "nodes[7].name: \"h_2\": in a hierarchy router and host names are certificate DNS names ([a-z0-9-], no '_')"
        );
        assert_eq!(
            three("[[virtual_hosts]]", "[[virtual_hosts]]\n        policy = \"maglev\""),
            "virtual_hosts[0].policy: \"maglev\": in a hierarchy every router chooses by the cost its children report; use \"cost\" or leave policy out"
        );
        assert_eq!(
            three("report_interval = \"500ms\"", "report_interval = \"soon\""),
            "control.report_interval: \"soon\" is not a duration of at least 50ms (e.g. \"500ms\", \"1s\")"
        );
        assert_eq!(
            three("report_interval = \"500ms\"", "silent_after = 0"),
            "control.silent_after: 0 is not an integer >= 1"
        );
        assert_eq!(
            three("report_interval = \"500ms\"", "interval = \"1s\""),
            "control.interval: unknown key (expected one of report_interval, silent_after, rebuild_interval, f, g, shortcut, shortcut_hold)"
        );
        assert_eq!(
            three("report_interval = \"500ms\"", "shortcut = \"yes\""),
            "control.shortcut: \"yes\" is not true or false"
        );
        assert_eq!(
            three("report_interval = \"500ms\"", "shortcut_hold = \"soon\""),
            "control.shortcut_hold: \"soon\" is not a duration (e.g. \"20ms\")"
        );
    }

    #[test]
    fn static_labs_refuse_hierarchy_only_keys() {
        assert_eq!(
            err(&SITE.replace("role = \"client\"", "role = \"client\"\n group = \"east\"")),
            "nodes[0].group: only a hierarchy uses it: give routers and hosts a parent, or add a [control] table"
        );
        assert_eq!(
            err(&SITE.replace("weight = 2", "cost = 2")),
            "nodes[2].cost: only a hierarchy uses it: give routers and hosts a parent, or add a [control] table"
        );
        assert_eq!(
            err(&SITE.replace("\"maglev\"", "\"cost\"")),
            "virtual_hosts[0].policy: \"cost\" needs a hierarchy (routers learn costs from their children's reports): give routers and hosts a parent, or add a [control] table"
        );
        // Two routers without parents stay a valid static lab (the core spreads over both).
        let two = format!("{SITE}\n[[nodes]]\nname = \"r2\"\nrole = \"router\"\n");
        assert!(!Topology::parse(&two).unwrap().is_hierarchy());
    }

    /// `examples/anycast-sites.toml`: two top routers announced by BGP above four sites with
    /// both as parents.
    #[test]
    fn top_routers_share_the_sites_below_them() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/anycast-sites.toml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let t = Topology::parse(&text).unwrap();
        let names = |v: Vec<&Node>| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(t.top_routers()), ["r1", "r2"]);
        assert_eq!(names(t.announcing_routers()), ["r1", "r2"]);
        assert_eq!(node(&t, "site-a").parents, ["r1", "r2"]);
        assert_eq!(node(&t, "site-a").parent(), Some("r1"));
        assert_eq!(
            names(t.children("r2")),
            ["site-a", "site-b", "site-c", "site-d"]
        );
        assert_eq!(names(t.ancestors("h1")), ["r1", "r2", "site-a"]);
        assert_eq!((t.depth("h1"), t.depth("site-a"), t.depth("r2")), (2, 1, 0));
        assert_eq!(t.router_levels(), ["network", "site"]);
        assert!(t.whohas && !t.mirror);
        let tree = t.tree();
        assert_eq!(tree.len(), 10, "each top with its four sites: {tree:?}");
        assert_eq!(tree[5], "r2 (network)");
        // Several top routers need the core to learn the subnet from each (BGP).
        let no_bgp = text
            .replace("[bgp]", "[bgp_off]")
            .replace("hold_time", "# ");
        let no_bgp: String = no_bgp
            .lines()
            .filter(|l| !l.starts_with("[bgp_off]") && !l.starts_with("bfd_interval"))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = Topology::parse(&no_bgp).unwrap_err().to_string();
        assert!(
            e.starts_with("nodes: routers \"r1\", \"r2\" have no parent: without [bgp]"),
            "{e}"
        );
    }

    #[test]
    fn examples_parse() {
        for (file, top, depth) in [
            ("site.toml", None, 1),
            ("three-level.toml", Some("net"), 3),
            ("four-level.toml", Some("net"), 4),
        ] {
            let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
            let t = Topology::parse(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(t.top_router().map(|n| n.name.as_str()), top, "{file}");
            assert_eq!(
                t.nodes_with(Role::Router)
                    .map(|r| t.ancestors(&r.name).len() + 1)
                    .max(),
                Some(depth),
                "{file}"
            );
            if t.is_hierarchy() {
                assert_eq!(t.client_groups().len(), 2, "{file}");
                for r in t.nodes_with(Role::Router) {
                    assert!(!t.children(&r.name).is_empty(), "{file}: {}", r.name);
                }
            }
        }
    }
}
