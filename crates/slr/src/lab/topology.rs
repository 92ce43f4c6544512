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
//! policy = "maglev"        # round_robin | weighted | least_flows | maglev (default maglev)
//! udp = "pin"              # pin | per_datagram (default pin)
//!
//! [[nodes]]                # at least one client, one router and one host
//! name = "h1"              # required; unique; [a-z0-9_-], at most 24 characters
//! role = "host"            # required; client | router | host | core
//! weight = 1               # hosts only; 0..=65535, default 1; at least one host needs > 0
//!
//! [router_config]          # optional: merged over the router configuration the lab writes
//! flow_table = { max_flows = 20000 }       # any key of docs/CONFIG.md's router file, e.g.
//! health_check = { interval = "2s" }       # [router_config.health_check] enabled = false
//! ```
//!
//! The core namespace, which joins every node, is implicit: a node named "core" with role
//! `core` is added unless the file declares one (at most one; it may have another name).
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
use slr_wire::Ipv4Cidr;
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

/// How the router picks a host server for a new flow (passed to the router config as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each new flow to the next host in turn.
    RoundRobin,
    /// Hosts chosen in proportion to their weight.
    Weighted,
    /// The host with the fewest active flows.
    LeastFlows,
    /// Consistent hashing of the flow (Maglev table).
    Maglev,
}

impl Policy {
    const NAMES: &'static str = "round_robin, weighted, least_flows, maglev";

    /// The policy's name as written in topology and router config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::Weighted => "weighted",
            Policy::LeastFlows => "least_flows",
            Policy::Maglev => "maglev",
        }
    }
}

impl FromStr for Policy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "round_robin" => Policy::RoundRobin,
            "weighted" => Policy::Weighted,
            "least_flows" => Policy::LeastFlows,
            "maglev" => Policy::Maglev,
            _ => return Err(()),
        })
    }
}

/// How connectionless (UDP) traffic to a virtual host is steered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpMode {
    /// Datagrams of one 5-tuple stick to one host, like a TCP flow.
    Pin,
    /// Every datagram is steered on its own.
    PerDatagram,
}

impl UdpMode {
    const NAMES: &'static str = "pin, per_datagram";

    /// The mode's name as written in topology and router config files.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpMode::Pin => "pin",
            UdpMode::PerDatagram => "per_datagram",
        }
    }
}

impl FromStr for UdpMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "pin" => UdpMode::Pin,
            "per_datagram" => UdpMode::PerDatagram,
            _ => return Err(()),
        })
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
    pub policy: Policy,
    /// UDP steering.
    pub udp: UdpMode,
}

impl VirtualHost {
    /// The address the lab's servers bind and its clients dial (first of the subnet).
    pub fn vip(&self) -> Ipv4Addr {
        first_address(self.subnet)
    }
}

/// A node: one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Name, unique in the lab.
    pub name: String,
    /// What runs there.
    pub role: Role,
    /// Router weight of a host (1 for other roles, where it means nothing).
    pub weight: u32,
}

/// A validated topology. `nodes` holds exactly one core node (declared or implicit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

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

    fn from_table(table: &toml::Table) -> Result<Topology, TopologyError> {
        check_keys(
            table,
            "",
            &["lab", "virtual_hosts", "nodes", "router_config"],
        )?;
        let router_config = match table.get("router_config") {
            None => String::new(),
            Some(toml::Value::Table(t)) => toml::to_string(t)
                .map_err(|e| TopologyError::new("router_config", e.to_string()))?,
            Some(v) => {
                return Err(TopologyError::new(
                    "router_config",
                    format!("must be a table of router configuration keys, not {v}"),
                ))
            }
        };

        let lab = table
            .get("lab")
            .ok_or_else(|| TopologyError::new("lab", "missing [lab] table"))?
            .as_table()
            .ok_or_else(|| TopologyError::new("lab", "must be a table ([lab])"))?;
        check_keys(lab, "lab", &["name"])?;
        let name = req_str(lab, "lab", "name")?;
        check_name(&name, "lab.name", false)?;

        let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
        for (i, t) in array_of_tables(table, "virtual_hosts")?.iter().enumerate() {
            let at = format!("virtual_hosts[{i}]");
            check_keys(t, &at, &["name", "subnet", "policy", "udp"])?;
            let vh_name = req_str(t, &at, "name")?;
            check_name(&vh_name, &format!("{at}.name"), true)?;
            if virtual_hosts.iter().any(|v| v.name == vh_name) {
                return Err(TopologyError::new(
                    format!("{at}.name"),
                    format!("duplicate virtual host name {vh_name:?}"),
                ));
            }
            let subnet_s = req_str(t, &at, "subnet")?;
            let subnet = parse_subnet(&subnet_s)
                .map_err(|e| TopologyError::new(format!("{at}.subnet"), e))?;
            check_virtual_subnet(subnet, &format!("{at}.subnet"), &virtual_hosts)?;
            let policy = opt_enum(t, &at, "policy", Policy::Maglev, "policy", Policy::NAMES)?;
            let udp = opt_enum(t, &at, "udp", UdpMode::Pin, "udp mode", UdpMode::NAMES)?;
            virtual_hosts.push(VirtualHost {
                name: vh_name,
                subnet,
                policy,
                udp,
            });
        }
        if virtual_hosts.is_empty() {
            return Err(TopologyError::new(
                "virtual_hosts",
                "no virtual host (add a [[virtual_hosts]] table with name and subnet)",
            ));
        }

        let mut nodes: Vec<Node> = Vec::new();
        for (i, t) in array_of_tables(table, "nodes")?.iter().enumerate() {
            let at = format!("nodes[{i}]");
            check_keys(t, &at, &["name", "role", "weight"])?;
            let node_name = req_str(t, &at, "name")?;
            check_name(&node_name, &format!("{at}.name"), true)?;
            if nodes.iter().any(|n| n.name == node_name) {
                return Err(TopologyError::new(
                    format!("{at}.name"),
                    format!("duplicate node name {node_name:?}"),
                ));
            }
            let role_s = req_str(t, &at, "role")?;
            let role: Role = role_s.parse().map_err(|()| {
                TopologyError::new(
                    format!("{at}.role"),
                    format!("unknown role {role_s:?} (expected {})", Role::NAMES),
                )
            })?;
            if role == Role::Core && nodes.iter().any(|n| n.role == Role::Core) {
                return Err(TopologyError::new(
                    format!("{at}.role"),
                    "a second core node (there is one core namespace per lab)",
                ));
            }
            if role != Role::Core && node_name == "core" {
                return Err(TopologyError::new(
                    format!("{at}.name"),
                    format!(
                        "\"core\" is the implicit core node's name; give this {} another name",
                        role.as_str()
                    ),
                ));
            }
            let weight = match t.get("weight") {
                None => 1,
                Some(_) if role != Role::Host => {
                    return Err(TopologyError::new(
                        format!("{at}.weight"),
                        format!(
                            "only hosts have a weight (this node is a {})",
                            role.as_str()
                        ),
                    ))
                }
                Some(v) => v
                    .as_integer()
                    .and_then(|w| u32::try_from(w).ok())
                    .filter(|w| *w <= 65535)
                    .ok_or_else(|| {
                        TopologyError::new(
                            format!("{at}.weight"),
                            format!("{v} is not an integer 0..=65535"),
                        )
                    })?,
            };
            if role != Role::Core {
                // Interface names are cut to 15 characters: two long names with a common
                // prefix would collide in the core namespace.
                let ifname = core_ifname(&node_name);
                if let Some(other) = nodes
                    .iter()
                    .find(|n| n.role != Role::Core && core_ifname(&n.name) == ifname)
                {
                    return Err(TopologyError::new(
                        format!("{at}.name"),
                        format!(
                            "{node_name:?} and {:?} both make interface name {ifname:?} (names are cut to {MAX_IFNAME_LEN} characters)",
                            other.name
                        ),
                    ));
                }
            }
            nodes.push(Node {
                name: node_name,
                role,
                weight,
            });
        }
        if !nodes.iter().any(|n| n.role == Role::Core) {
            nodes.insert(
                0,
                Node {
                    name: "core".into(),
                    role: Role::Core,
                    weight: 1,
                },
            );
        }

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
        if !nodes.iter().any(|n| n.role == Role::Host && n.weight > 0) {
            return Err(TopologyError::new(
                "nodes",
                "every host has weight 0: nothing would serve the virtual hosts",
            ));
        }
        let linked = nodes.iter().filter(|n| n.role != Role::Core).count();
        if linked > 254 {
            return Err(TopologyError::new(
                "nodes",
                format!("{linked} nodes besides the core; 10.200.k.0/24 numbering allows 254"),
            ));
        }

        Ok(Topology {
            name,
            virtual_hosts,
            nodes,
            router_config,
        })
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
            "virtual_hosts[0].policy: unknown policy \"random\" (expected round_robin, weighted, least_flows, maglev)"
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
            "nodes[2].wieght: unknown key (expected one of name, role, weight)"
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
            "x: unknown key (expected one of lab, virtual_hosts, nodes, router_config)"
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
}
