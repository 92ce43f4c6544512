//! The configuration files the lab writes for its daemons (`slr router`, `slr host`).
//!
//! The lab only describes the network: each daemon creates its own TUN device and its
//! own routes (the router `<subnet> dev slr0`, the host the AnyIP route `local <subnet>
//! dev lo`) and removes them on exit, so the lab never adds those.
//!
//! A static lab's routers get `[[next_hops]]` (every host, with its weight) and the virtual
//! hosts' policies. A hierarchy's routers get instead (docs/CONFIG.md has every key):
//!
//! - `[router] level`, and `trusted_parents` (its parent's address: it terminates the
//!   parent's tunnels) below the top;
//! - `[control]`: the lab's CA, the router's certificate and key (`<state>/pki/`), the
//!   address its children report to (`10.200.k.2:7400`) and the lab's intervals;
//!   `[[control.parents]]` below the top;
//! - `[[gateways.children]]`: one per child (lower router or host) with its address, the
//!   virtual subnets, its `cost` and `labels`;
//! - `[cost] f, g` if the topology's `[control]` sets them; `[[client_groups]]` on the top
//!   router, from the clients' `group`;
//! - every virtual host with policy `cost`.
//!
//! A hierarchy's hosts trust tunnels from their parent only, and report to it
//! (`[control]` with certificate and `[[control.parents]]`).

use crate::state::lab_dir;
use crate::topology::{Role, Topology, BACKUP_LOCAL_PREF, CORE_AS, ROUTER_AS};
use slr_config::file::{
    BgpNeighborSection, BgpSection, ClientGroupSection, ClusterPeerSection, ClusterSection,
    ControlSection, FaultSection, FlowTableSection, GatewayChildSection, GatewaysSection,
    HealthSection, HostFile, HostSection, NextHopSection, ParentSection, RouterFile, RouterSection,
    VirtualHostSection,
};

/// Port of the router's metrics endpoint (inside its namespace, on 127.0.0.1).
pub const ROUTER_METRICS_PORT: u16 = 9464;
/// Port of the host agent's metrics endpoint (inside its namespace, on 127.0.0.1).
pub const HOST_METRICS_PORT: u16 = 9465;
/// Port `slr serve` answers HTTP on, on every host.
pub const HTTP_PORT: u16 = 80;
/// Port `slr serve` answers UDP echo on, on every VIP.
pub const UDP_PORT: u16 = 7;
/// Port a hierarchy's routers listen on for their children's reports (on 10.200.k.2).
pub const CONTROL_PORT: u16 = 7400;

/// The lab's PKI directory: the CA (`ca.pem`, `ca.key`) and every router's and host's
/// certificate and key (`NAME.pem`, `NAME.key`), made by `slr ca` at `lab up`.
pub fn pki_dir(lab: &str) -> std::path::PathBuf {
    lab_dir(lab).join("pki")
}

/// `[control]` common to routers and hosts: the CA, the node's certificate and key, the
/// lab's intervals, and its parent (nothing for the top router).
fn control_section(t: &Topology, node: &str) -> ControlSection {
    let pki = pki_dir(&t.name);
    let c = t.control.clone().unwrap_or_default();
    let path = |p: std::path::PathBuf| p.display().to_string();
    let mut s = ControlSection::new(
        &path(pki.join("ca.pem")),
        &path(pki.join(format!("{node}.pem"))),
        &path(pki.join(format!("{node}.key"))),
    );
    s.report_interval = c.report_interval;
    s.silent_after = c.silent_after;
    s.rebuild_interval = c.rebuild_interval;
    if c.shortcut && t.node(node).is_some_and(|n| n.role == Role::Router) {
        s.shortcut = Some(true);
        s.shortcut_hold = c.shortcut_hold.clone();
    }
    for p in t
        .node(node)
        .map(|n| n.parents.as_slice())
        .unwrap_or_default()
    {
        s.parents.push(ParentSection {
            name: p.clone(),
            address: format!(
                "{}:{CONTROL_PORT}",
                t.address(p).expect("parent has a link")
            ),
        });
    }
    s
}

/// The config file of a router or host node, in the lab's state directory.
pub fn config_path(lab: &str, node: &str) -> std::path::PathBuf {
    lab_dir(lab).join(format!("{node}.toml"))
}

/// The router's configuration file (TOML): [`router_file`], with the topology's
/// `[router_config]` and then the node's own `router_config` merged over it.
pub fn router_config(t: &Topology, router: &str) -> String {
    let file = router_file(t, router);
    let mut doc = toml::Table::try_from(&file).expect("a router file serializes");
    let mut header = format!("# Written by `slr lab up` for lab {:?}", t.name);
    if !t.router_config.is_empty() {
        merge(&mut doc, parse_over(&t.router_config));
        header += ", with its [router_config]";
    }
    if let Some(n) = t.node(router).filter(|n| !n.router_config.is_empty()) {
        merge(&mut doc, parse_over(&n.router_config));
        header += &format!(", with router {router:?}'s own router_config");
    }
    format!(
        "{header}.\n{}",
        toml::to_string(&doc).expect("a TOML table serializes")
    )
}

/// The `fast_path` a router of the lab runs with (its written configuration, overrides merged).
pub fn router_fast_path(t: &Topology, router: &str) -> String {
    fast_path_in(&router_config(t, router), "router")
}

/// The `fast_path` a host agent of the lab runs with (its written configuration).
pub fn host_fast_path(t: &Topology, host: &str) -> String {
    fast_path_in(&host_config(t, host), "host")
}

/// `[SECTION] fast_path` of a configuration the lab wrote ("off" when it has none).
fn fast_path_in(text: &str, section: &str) -> String {
    let doc: toml::Table = text.parse().expect("the lab writes valid TOML");
    doc.get(section)
        .and_then(|r| r.get("fast_path"))
        .and_then(|v| v.as_str())
        .unwrap_or("off")
        .to_string()
}

fn parse_over(text: &str) -> toml::Table {
    text.parse().expect("checked when the topology was parsed")
}

/// The router's configuration as the daemon's own file type. Every router of the lab gets
/// the same virtual hosts, next hops and hash seed, so that several routers pick the same
/// host for a flow. A static lab's router has every host as a next hop with its weight; a
/// hierarchy's router has its children as gateways, reports over mutual TLS and policy cost.
pub fn router_file(t: &Topology, router: &str) -> RouterFile {
    let source = t.address(router).expect("router has a link").to_string();
    let mut r = RouterSection::new(router, &source);
    r.control_socket = Some(socket_path(t, router));
    // Every address: Prometheus in the core namespace scrapes 10.200.k.2 (`up --prometheus`),
    // tools inside the namespace 127.0.0.1.
    r.metrics_listen = Some(format!("0.0.0.0:{ROUTER_METRICS_PORT}"));
    r.overrides_file = Some(
        lab_dir(&t.name)
            .join(format!("{router}.overrides.json"))
            .display()
            .to_string(),
    );
    // A lab's routers drain briefly when stopped (`lab down` waits for them).
    r.drain_period = "2s".into();
    r.hash_seed = 1;
    if let Some(f) = &t.fast_path {
        r.fast_path = f.clone();
    }
    r.fast_path_pin_dir = Some(
        crate::lifecycle::pin_fs(&lab_dir(&t.name))
            .join(router)
            .display()
            .to_string(),
    );
    let mut file = RouterFile {
        router: r,
        flow_table: FlowTableSection::default(),
        health_check: HealthSection {
            port: HTTP_PORT,
            count: 2,
            ..HealthSection::default()
        },
        virtual_hosts: t
            .virtual_hosts
            .iter()
            .map(|vh| {
                VirtualHostSection::new(
                    &vh.name,
                    &vh.subnet.to_string(),
                    vh.policy.as_str(),
                    vh.udp.as_str(),
                )
            })
            .collect(),
        next_hops: Vec::new(),
        control: None,
        gateways: GatewaysSection::default(),
        cost: None,
        client_groups: Vec::new(),
        fault: FaultSection::default(),
        bgp: bgp_section(t, router),
        cluster: cluster_section(t, router),
    };
    if t.is_hierarchy() {
        hierarchy_router(t, router, &mut file);
    } else {
        file.next_hops = t
            .nodes_with(Role::Host)
            .map(|host| NextHopSection {
                name: host.name.clone(),
                address: t.address(&host.name).expect("host has a link").to_string(),
                weight: host.weight,
            })
            .collect();
    }
    file
}

/// `[bgp]` of an announcing router of a lab with `[bgp]`: one session, to the core's side of
/// its link.
fn bgp_section(t: &Topology, router: &str) -> Option<BgpSection> {
    let b = t.bgp.as_ref()?;
    if !t.announcing_routers().iter().any(|n| n.name == router) {
        return None;
    }
    let link = t.link(router).expect("router has a link");
    Some(BgpSection {
        local_as: ROUTER_AS,
        router_id: None,
        hold_time: b.hold_time.clone(),
        bfd_interval: b.bfd_interval.clone(),
        bird: "bird".into(),
        birdc: "birdc".into(),
        state_dir: Some(
            lab_dir(&t.name)
                .join(format!("bgp-{router}"))
                .display()
                .to_string(),
        ),
        neighbors: vec![BgpNeighborSection {
            address: link.core_address.to_string(),
            asn: CORE_AS,
        }],
    })
}

/// Port the routers of a lab with `[cluster]` listen on for their peers' mirrored flows.
pub const MIRROR_PORT: u16 = 7401;

/// `[cluster]` of a router of a lab with `[cluster]`.
///
/// - An announcing router: every other announcing router is a peer (mirrored to, asked); in a
///   hierarchy with WHOHAS, its child routers are peers too, asked but not mirrored to (they
///   hold the flows they pinned, so that a top router that takes over a dead one's flows
///   finds them below).
/// - In such a hierarchy, a child router of the top routers answers their questions
///   (its peers are its parents, never asked, never mirrored to).
fn cluster_section(t: &Topology, router: &str) -> Option<ClusterSection> {
    let announcing = t.announcing_routers();
    let is_top = announcing.iter().any(|n| n.name == router);
    let tops_above: Vec<&str> = match t.node(router) {
        Some(n) if t.is_hierarchy() && t.whohas && n.role == Role::Router => n
            .parents
            .iter()
            .filter(|p| announcing.iter().any(|a| a.name == **p))
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    };
    if !(t.mirror || t.whohas) || (!is_top && tops_above.is_empty()) {
        return None;
    }
    let pki = pki_dir(&t.name);
    let path = |p: std::path::PathBuf| p.display().to_string();
    let at = |r: &str| format!("{}:{MIRROR_PORT}", t.address(r).expect("router has a link"));
    Some(ClusterSection {
        listen: at(router),
        ca: path(pki.join("ca.pem")),
        cert: path(pki.join(format!("{router}.pem"))),
        key: path(pki.join(format!("{router}.key"))),
        peers: if is_top {
            let below = t
                .children(router)
                .into_iter()
                .filter(|c| t.is_hierarchy() && t.whohas && c.role == Role::Router);
            announcing
                .iter()
                .filter(|n| n.name != router)
                .map(|n| ClusterPeerSection {
                    name: n.name.clone(),
                    address: at(&n.name),
                    mirror: None,
                    ask: None,
                })
                .chain(below.map(|c| ClusterPeerSection {
                    name: c.name.clone(),
                    address: at(&c.name),
                    mirror: Some(false),
                    ask: None,
                }))
                .collect()
        } else {
            tops_above
                .iter()
                .map(|p| ClusterPeerSection {
                    name: (*p).to_owned(),
                    address: at(p),
                    mirror: None,
                    ask: Some(false),
                })
                .collect()
        },
        mirror: Some(t.mirror && is_top),
        whohas: Some(t.whohas),
        whohas_timeout: None,
        whohas_rate: None,
    })
}

/// BIRD's configuration for the core of a lab with `[bgp]`: a session with every announcing
/// router, what it learns installed in the core's kernel (equal routes as one multipath
/// route), backups at a lower local preference.
pub fn core_bird_config(t: &Topology) -> Option<String> {
    let b = t.bgp.as_ref()?;
    let routers = t.announcing_routers();
    let neighbors = routers
        .iter()
        .map(|r| slr_bgp::Neighbor {
            address: t.address(&r.name).expect("router has a link"),
            asn: ROUTER_AS,
        })
        .collect();
    let session = slr_bgp::Session {
        router_id: std::net::Ipv4Addr::new(10, 200, 0, 1),
        local_as: CORE_AS,
        neighbors,
        hold_time: slr_config::parse_duration(&b.hold_time).expect("checked at parse"),
        bfd: b.bfd_interval.as_deref().map(|i| slr_bgp::Bfd {
            interval: slr_config::parse_duration(i).expect("checked at parse"),
            multiplier: 3,
        }),
    };
    let local_pref = b
        .backup
        .iter()
        .map(|r| (t.address(r).expect("router has a link"), BACKUP_LOCAL_PREF))
        .collect();
    Some(
        slr_bgp::Listener {
            session,
            local_pref,
        }
        .config(),
    )
}

/// What a hierarchy's router has besides a static one's: its level and parent, `[control]`
/// with the address its children report to, its children as `[[gateways.children]]`, the
/// cost functions, and (the top router) the client groups.
fn hierarchy_router(t: &Topology, router: &str, file: &mut RouterFile) {
    let node = t.node(router).expect("router of the topology");
    let source = t.address(router).expect("router has a link");
    file.router.level = Some(node.level.clone().unwrap_or_else(|| "router".into()));
    file.router.trusted_parents = node
        .parents
        .iter()
        .map(|p| format!("{}/32", t.address(p).expect("parent has a link")))
        .collect();
    let mut control = control_section(t, router);
    control.listen = Some(format!("{source}:{CONTROL_PORT}"));
    file.control = Some(control);
    let subnets: Vec<String> = t
        .virtual_hosts
        .iter()
        .map(|v| v.subnet.to_string())
        .collect();
    file.gateways.children = t
        .children(router)
        .into_iter()
        .map(|child| GatewayChildSection {
            name: child.name.clone(),
            address: t
                .address(&child.name)
                .expect("child has a link")
                .to_string(),
            subnets: subnets.clone(),
            cost: child.cost,
            labels: child.labels.clone(),
        })
        .collect();
    let c = t.control.clone().unwrap_or_default();
    if c.f.is_some() || c.g.is_some() {
        let mut cost = toml::Table::new();
        if let Some(f) = c.f {
            cost.insert("f".into(), toml::Value::String(f));
        }
        if let Some(g) = c.g {
            cost.insert("g".into(), toml::Value::String(g));
        }
        file.cost = Some(cost);
    }
    if node.parents.is_empty() {
        file.client_groups = t
            .client_groups()
            .into_iter()
            .map(|(group, clients)| ClientGroupSection {
                name: group,
                prefixes: clients
                    .iter()
                    .map(|c| format!("{}/32", t.address(&c.name).expect("client has a link")))
                    .collect(),
            })
            .collect();
    }
}

/// The control socket of a lab daemon.
fn socket_path(t: &Topology, node: &str) -> String {
    lab_dir(&t.name)
        .join(format!("{node}.sock"))
        .display()
        .to_string()
}

/// Merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The host agent's configuration file (TOML): [`host_file`].
pub fn host_config(t: &Topology, host: &str) -> String {
    format!(
        "# Written by `slr lab up` for lab {:?}.\n{}",
        t.name,
        toml::to_string(&host_file(t, host)).expect("a host file serializes")
    )
}

/// The host agent's configuration as the daemon's own file type: accept every virtual
/// subnet, and tunnels only from the lab's routers (in a hierarchy: from its parent, which
/// it also reports to).
pub fn host_file(t: &Topology, host: &str) -> HostFile {
    let parents = t
        .node(host)
        .map(|n| n.parents.as_slice())
        .unwrap_or_default();
    // With the shortcut, the top routers (the ingresses) tunnel straight to the hosts too.
    let shortcut = t.control.as_ref().is_some_and(|c| c.shortcut);
    let routers: Vec<String> = t
        .nodes_with(Role::Router)
        .filter(|r| {
            parents.is_empty() || parents.contains(&r.name) || (shortcut && r.parents.is_empty())
        })
        .map(|r| format!("{}/32", t.address(&r.name).expect("router has a link")))
        .collect();
    let subnets = t
        .virtual_hosts
        .iter()
        .map(|v| v.subnet.to_string())
        .collect();
    let mut h = HostSection::new(host, subnets, routers);
    h.control_socket = Some(socket_path(t, host));
    h.metrics_listen = Some(format!("0.0.0.0:{HOST_METRICS_PORT}"));
    // The lab's hosts share one machine: a host's load is what its own namespace uses.
    h.load_scope = "netns".into();
    if let Some(f) = &t.fast_path {
        h.fast_path = f.clone();
    }
    HostFile {
        host: h,
        control: t.is_hierarchy().then(|| control_section(t, host)),
    }
}

/// Arguments of `slr serve` on a host: HTTP on every address, UDP echo on each VIP.
pub fn serve_args(t: &Topology, host: &str) -> Vec<String> {
    let udp: Vec<String> = t
        .virtual_hosts
        .iter()
        .map(|v| format!("{}:{UDP_PORT}", v.vip()))
        .collect();
    vec![
        "serve".into(),
        "--name".into(),
        host.into(),
        "--http".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--udp".into(),
        udp.join(","),
    ]
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
        [[virtual_hosts]]
        name = "dns"
        subnet = "10.98.0.0/24"
        udp = "per_datagram"
        policy = "round_robin"
        [[nodes]]
        name = "c1"
        role = "client"
        [[nodes]]
        name = "r1"
        role = "router"
        [[nodes]]
        name = "h1"
        role = "host"
        [[nodes]]
        name = "h2"
        role = "host"
        weight = 3
    "#;

    #[test]
    fn router_config_is_the_documented_toml() {
        let t = Topology::parse(SITE).unwrap();
        let text = router_config(&t, "r1");
        let v: toml::Table = text.parse().expect("valid TOML");
        let router = v["router"].as_table().unwrap();
        assert_eq!(router["name"].as_str(), Some("r1"));
        assert_eq!(router["tunnel_source"].as_str(), Some("10.200.2.2"));
        assert_eq!(router["tun"].as_str(), Some("slr0"));
        assert_eq!(router["tunnel_mtu"].as_integer(), Some(1500));
        assert_eq!(
            router["control_socket"].as_str(),
            Some("/run/slr-lab/site/r1.sock")
        );
        assert_eq!(router["metrics_listen"].as_str(), Some("0.0.0.0:9464"));
        assert_eq!(
            router["overrides_file"].as_str(),
            Some("/run/slr-lab/site/r1.overrides.json")
        );
        assert_eq!(router["drain_period"].as_str(), Some("2s"));
        assert_eq!(router["hash_seed"].as_integer(), Some(1));
        let hc = v["health_check"].as_table().unwrap();
        assert_eq!(hc["port"].as_integer(), Some(80));
        assert_eq!(hc["path"].as_str(), Some("/health"));
        assert_eq!(hc["interval"].as_str(), Some("1s"));
        assert_eq!(hc["timeout"].as_str(), Some("500ms"));
        assert_eq!(hc["count"].as_integer(), Some(2));
        let vhs = v["virtual_hosts"].as_array().unwrap();
        assert_eq!(vhs.len(), 2);
        assert_eq!(vhs[0]["subnet"].as_str(), Some("10.99.0.0/24"));
        assert_eq!(vhs[0]["policy"].as_str(), Some("maglev"));
        assert_eq!(vhs[1]["udp"].as_str(), Some("per_datagram"));
        assert_eq!(vhs[1]["policy"].as_str(), Some("round_robin"));
        let hops = v["next_hops"].as_array().unwrap();
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0]["name"].as_str(), Some("h1"));
        assert_eq!(hops[0]["address"].as_str(), Some("10.200.3.2"));
        assert_eq!(hops[0]["weight"].as_integer(), Some(1));
        assert_eq!(hops[1]["address"].as_str(), Some("10.200.4.2"));
        assert_eq!(hops[1]["weight"].as_integer(), Some(3));
    }

    #[test]
    fn host_config_is_the_documented_toml() {
        let t = Topology::parse(SITE).unwrap();
        let v: toml::Table = host_config(&t, "h2").parse().expect("valid TOML");
        let host = v["host"].as_table().unwrap();
        assert_eq!(host["name"].as_str(), Some("h2"));
        let subnets: Vec<&str> = host["virtual_subnets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(subnets, ["10.99.0.0/24", "10.98.0.0/24"]);
        assert_eq!(
            host["trusted_tunnel_sources"].as_array().unwrap()[0].as_str(),
            Some("10.200.2.2/32")
        );
        assert_eq!(host["tun"].as_str(), Some("slrh0"));
        assert_eq!(
            host["control_socket"].as_str(),
            Some("/run/slr-lab/site/h2.sock")
        );
        assert_eq!(host["metrics_listen"].as_str(), Some("0.0.0.0:9465"));
    }

    #[test]
    fn serve_listens_on_every_vip() {
        let t = Topology::parse(SITE).unwrap();
        assert_eq!(
            serve_args(&t, "h1"),
            [
                "serve",
                "--name",
                "h1",
                "--http",
                "0.0.0.0:80",
                "--udp",
                "10.99.0.1:7,10.98.0.1:7"
            ]
        );
    }

    #[test]
    fn router_config_table_is_merged_over_the_written_config() {
        let site = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/site.toml");
        let text = std::fs::read_to_string(site).unwrap()
            + "\n[router_config.router]\nhash_seed = 5\n"
            + "[router_config.health_check]\nenabled = false\n"
            + "[router_config.flow_table]\nmax_flows = 20000\n";
        let t = Topology::parse(&text).unwrap();
        let v: toml::Table = router_config(&t, "r1").parse().unwrap();
        assert_eq!(v["router"]["hash_seed"].as_integer(), Some(5));
        assert_eq!(
            v["router"]["tun"].as_str(),
            Some("slr0"),
            "merged, not replaced"
        );
        assert_eq!(v["health_check"]["enabled"].as_bool(), Some(false));
        assert_eq!(
            v["health_check"]["port"].as_integer(),
            Some(80),
            "merged, not replaced"
        );
        assert_eq!(v["flow_table"]["max_flows"].as_integer(), Some(20000));
        assert_eq!(v["next_hops"].as_array().unwrap().len(), 3);
    }

    fn three_level() -> Topology {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-level.toml"
        );
        Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn strings(v: &toml::Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_routers_own_router_config_applies_to_it_alone() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-level.toml"
        );
        let text = std::fs::read_to_string(path).unwrap().replace(
            "name = \"as1\"\nrole = \"router\"",
            "name = \"as1\"\nrole = \"router\"\nrouter_config = { fault = { delay = { site-b = \"40ms\" } }, cost = { g = \"mean(m)\" } }",
        );
        let t = Topology::parse(&text).unwrap();
        let as1: toml::Table = router_config(&t, "as1").parse().unwrap();
        assert_eq!(as1["fault"]["delay"]["site-b"].as_str(), Some("40ms"));
        assert_eq!(as1["cost"]["g"].as_str(), Some("mean(m)"));
        assert!(
            as1["cost"].get("f").is_some(),
            "merged key by key: the lab's f stays"
        );
        let as2: toml::Table = router_config(&t, "as2").parse().unwrap();
        assert!(as2.get("fault").is_none());
        // And the daemon accepts it.
        slr_config::parse_router(&router_config(&t, "as1"), std::path::Path::new("as1.toml"))
            .unwrap();
        // Only routers have one.
        let bad = text.replace(
            "name = \"h1\"\nrole = \"host\"",
            "name = \"h1\"\nrole = \"host\"\nrouter_config = { }",
        );
        let e = Topology::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("router_config"), "{e}");
    }

    #[test]
    fn hierarchy_router_configs_have_control_gateways_and_parents() {
        let t = three_level();
        // net is the 3rd node (10.200.3.2), as1 the 4th, as2 the 5th, site-a the 6th.
        let net: toml::Table = router_config(&t, "net").parse().expect("valid TOML");
        let r = net["router"].as_table().unwrap();
        assert_eq!(r["name"].as_str(), Some("net"));
        assert_eq!(r["level"].as_str(), Some("network"));
        assert_eq!(r["tunnel_source"].as_str(), Some("10.200.3.2"));
        assert!(r["trusted_parents"].as_array().unwrap().is_empty());
        let c = net["control"].as_table().unwrap();
        assert_eq!(
            c["ca"].as_str(),
            Some("/run/slr-lab/three-level/pki/ca.pem")
        );
        assert_eq!(
            c["cert"].as_str(),
            Some("/run/slr-lab/three-level/pki/net.pem")
        );
        assert_eq!(
            c["key"].as_str(),
            Some("/run/slr-lab/three-level/pki/net.key")
        );
        assert_eq!(c["listen"].as_str(), Some("10.200.3.2:7400"));
        assert_eq!(c["report_interval"].as_str(), Some("1s"));
        assert_eq!(c["silent_after"].as_integer(), Some(3));
        assert_eq!(c["rebuild_interval"].as_str(), Some("1s"));
        assert!(
            c.get("parents").is_none(),
            "the top router reports to nobody"
        );
        let children = net["gateways"]["children"].as_array().unwrap();
        let names: Vec<&str> = children
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["as1", "as2"]);
        assert_eq!(children[0]["address"].as_str(), Some("10.200.4.2"));
        assert_eq!(strings(&children[0]["subnets"]), ["10.99.0.0/24"]);
        assert_eq!(children[0]["cost"].as_float(), Some(1.0));
        assert_eq!(children[1]["labels"]["region"].as_str(), Some("west"));
        let groups = net["client_groups"].as_array().unwrap();
        assert_eq!(groups[0]["name"].as_str(), Some("east"));
        assert_eq!(
            strings(&groups[0]["prefixes"]),
            ["10.200.1.2/32", "10.200.2.2/32"]
        );
        assert_eq!(groups[1]["name"].as_str(), Some("west"));
        assert_eq!(
            strings(&groups[1]["prefixes"]),
            ["10.200.20.2/32", "10.200.21.2/32"]
        );
        let vh = &net["virtual_hosts"].as_array().unwrap()[0];
        assert_eq!(vh["policy"].as_str(), Some("cost"));
        assert_eq!(vh["udp"].as_str(), Some("pin"));
        assert!(net.get("next_hops").is_none());
        assert_eq!(
            net["cost"]["f"].as_str(),
            Some("s.load + r + (has(labels.region) && labels.region != group ? 10.0 : 0.0)"),
            "the topology's [control] f"
        );
        assert!(net["cost"].get("g").is_none(), "no g in the topology");

        let as1: toml::Table = router_config(&t, "as1").parse().unwrap();
        assert_eq!(as1["router"]["level"].as_str(), Some("as"));
        assert_eq!(
            strings(&as1["router"]["trusted_parents"]),
            ["10.200.3.2/32"]
        );
        assert_eq!(as1["control"]["listen"].as_str(), Some("10.200.4.2:7400"));
        let parents = as1["control"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0]["name"].as_str(), Some("net"));
        assert_eq!(parents[0]["address"].as_str(), Some("10.200.3.2:7400"));
        assert!(as1.get("client_groups").is_none(), "top router only");

        let site: toml::Table = router_config(&t, "site-a").parse().unwrap();
        assert_eq!(site["router"]["level"].as_str(), Some("site"));
        let hosts: Vec<&str> = site["gateways"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(hosts, ["h1", "h2", "h3"]);
    }

    #[test]
    fn hierarchy_host_config_trusts_and_reports_to_its_parent() {
        let t = three_level();
        let v: toml::Table = host_config(&t, "h4").parse().unwrap();
        let host = v["host"].as_table().unwrap();
        // h4's parent is site-b, the 7th node.
        assert_eq!(strings(&host["trusted_tunnel_sources"]), ["10.200.7.2/32"]);
        assert_eq!(strings(&host["virtual_subnets"]), ["10.99.0.0/24"]);
        let c = v["control"].as_table().unwrap();
        assert_eq!(
            c["cert"].as_str(),
            Some("/run/slr-lab/three-level/pki/h4.pem")
        );
        assert_eq!(
            c["key"].as_str(),
            Some("/run/slr-lab/three-level/pki/h4.key")
        );
        assert!(c.get("listen").is_none(), "hosts have no children");
        let parents = c["parents"].as_array().unwrap();
        assert_eq!(parents[0]["name"].as_str(), Some("site-b"));
        assert_eq!(parents[0]["address"].as_str(), Some("10.200.7.2:7400"));
    }

    #[test]
    fn hierarchy_configs_load_in_the_daemons_parsers() {
        for t in [three_level(), {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/four-level.toml"
            );
            Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
        }] {
            for n in &t.nodes {
                let file = config_path(&t.name, &n.name);
                match n.role {
                    Role::Router => {
                        slr_config::parse_router(&router_config(&t, &n.name), &file)
                            .unwrap_or_else(|e| panic!("{}: {e:#}", n.name));
                    }
                    Role::Host => {
                        slr_config::parse_host(&host_config(&t, &n.name), &file)
                            .unwrap_or_else(|e| panic!("{}: {e:#}", n.name));
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn hierarchy_cost_functions_costs_and_labels_are_quoted() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-level.toml"
        ))
        .unwrap()
        .replace(
            "f = \"s.load + r + (has(labels.region) && labels.region != group ? 10.0 : 0.0)\"",
            "f = 'cost * 2.0 + (labels.region == \"east\" ? 0.0 : 1.0)'",
        )
        .replace(
            "labels = { region = \"west\" }",
            "labels = { region = \"we\\\"st\" }\ncost = 10",
        );
        let t = Topology::parse(&text).unwrap();
        let v: toml::Table = router_config(&t, "net").parse().unwrap();
        assert_eq!(
            v["cost"]["f"].as_str(),
            Some("cost * 2.0 + (labels.region == \"east\" ? 0.0 : 1.0)")
        );
        assert!(v["cost"].get("g").is_none());
        let as2 = &v["gateways"]["children"].as_array().unwrap()[1];
        assert_eq!(as2["labels"]["region"].as_str(), Some("we\"st"));
        assert_eq!(as2["cost"].as_float(), Some(10.0));
    }

    /// Sites with two top routers as parents trust, report to and answer WHOHAS from both;
    /// the tops ask each other and the sites, and mirror to nobody (mirror = false).
    #[test]
    fn sites_below_two_top_routers_serve_both() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/anycast-sites.toml"
        ))
        .unwrap();
        let t = Topology::parse(&text).unwrap();
        let site = router_file(&t, "site-a");
        assert_eq!(
            site.router.trusted_parents,
            ["10.200.2.2/32", "10.200.3.2/32"]
        );
        let parents: Vec<&str> = site
            .control
            .as_ref()
            .unwrap()
            .parents
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(parents, ["r1", "r2"]);
        assert!(site.bgp.is_none(), "only the top routers announce");
        let c = site.cluster.expect("a site answers its parents' WHOHAS");
        assert_eq!(c.listen, "10.200.4.2:7401");
        assert_eq!((c.mirror, c.whohas), (Some(false), Some(true)));
        let peers: Vec<(&str, Option<bool>, Option<bool>)> = c
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.mirror, p.ask))
            .collect();
        assert_eq!(
            peers,
            [("r1", None, Some(false)), ("r2", None, Some(false))],
            "a site asks nobody"
        );
        let top = router_file(&t, "r2");
        assert!(top.bgp.is_some());
        assert!(top.router.trusted_parents.is_empty());
        let c = top.cluster.expect("a top router asks");
        let peers: Vec<(&str, Option<bool>)> = c
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.mirror))
            .collect();
        assert_eq!(
            peers,
            [
                ("r1", None),
                ("site-a", Some(false)),
                ("site-b", Some(false)),
                ("site-c", Some(false)),
                ("site-d", Some(false))
            ]
        );
        let h = host_file(&t, "h1");
        assert_eq!(
            h.host.trusted_tunnel_sources,
            ["10.200.4.2/32"],
            "a host trusts its site"
        );
        // The written files load as the daemons read them: the site holds no packet for a
        // question (it asks nobody), the top does.
        let dir = std::env::temp_dir().join(format!("slr-lab-sites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (r, holds) in [("site-a", false), ("r2", true)] {
            let path = dir.join(format!("{r}.toml"));
            std::fs::write(&path, router_config(&t, r)).unwrap();
            let cfg = slr_config::load_router(&path).unwrap_or_else(|e| panic!("{r}: {e:#}"));
            assert_eq!(cfg.core.whohas.is_some(), holds, "{r}");
            let cluster = cfg.cluster.unwrap();
            assert_eq!(cluster.ask_peers().len(), if holds { 5 } else { 0 }, "{r}");
            assert!(cluster.mirror_peers().is_empty(), "{r}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn router_config_table_is_merged_over_a_hierarchy_config() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-level.toml"
        ))
        .unwrap()
            + "\n[router_config.health_check]\ninterval = \"2s\"\n";
        let t = Topology::parse(&text).unwrap();
        let v: toml::Table = router_config(&t, "as2").parse().unwrap();
        assert_eq!(v["health_check"]["interval"].as_str(), Some("2s"));
        assert_eq!(v["control"]["listen"].as_str(), Some("10.200.5.2:7400"));
        assert_eq!(v["gateways"]["children"].as_array().unwrap().len(), 2);
    }
}
