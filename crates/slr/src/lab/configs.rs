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

use super::state::lab_dir;
use super::topology::{Role, Topology};

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

/// A string as a TOML string literal (names are validated; labels and CEL expressions
/// may hold quotes).
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A cost as a TOML float (`1.0`, not `1`).
fn float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// `[control]` lines common to routers and hosts: the CA, the node's certificate and key,
/// the lab's intervals.
fn control_section(t: &Topology, node: &str) -> String {
    let pki = pki_dir(&t.name);
    let c = t.control.clone().unwrap_or_default();
    format!(
        "\n[control]\n\
         ca = \"{ca}\"\n\
         cert = \"{cert}\"\n\
         key = \"{key}\"\n\
         report_interval = {ri}\n\
         silent_after = {sa}\n\
         rebuild_interval = {rb}\n",
        ca = pki.join("ca.pem").display(),
        cert = pki.join(format!("{node}.pem")).display(),
        key = pki.join(format!("{node}.key")).display(),
        ri = quote(&c.report_interval),
        sa = c.silent_after,
        rb = quote(&c.rebuild_interval),
    )
}

/// `[[control.parents]]` of a node of a hierarchy (nothing for the top router).
fn parents_section(t: &Topology, node: &str) -> String {
    match t.node(node).and_then(|n| n.parent.as_deref()) {
        Some(p) => format!(
            "\n[[control.parents]]\nname = \"{p}\"\naddress = \"{}:{CONTROL_PORT}\"\n",
            t.address(p).expect("parent has a link")
        ),
        None => String::new(),
    }
}

/// The config file of a router or host node, in the lab's state directory.
pub fn config_path(lab: &str, node: &str) -> std::path::PathBuf {
    lab_dir(lab).join(format!("{node}.toml"))
}

/// The router's configuration (TOML). Every router of the lab gets the same virtual
/// hosts, next hops and hash seed, so that several routers pick the same host for a flow.
pub fn router_config(t: &Topology, router: &str) -> String {
    let s = if t.is_hierarchy() {
        hierarchy_router_config(t, router)
    } else {
        static_router_config(t, router)
    };
    let s = with_router_config(t, s);
    match t.nodes.iter().find(|n| n.name == router) {
        Some(n) if !n.router_config.is_empty() => merge_text(s, &n.router_config, router),
        _ => s,
    }
}

/// Merges a node's own `router_config` over its configuration.
fn merge_text(s: String, over: &str, router: &str) -> String {
    let mut doc: toml::Table = s.parse().expect("the lab writes valid TOML");
    let over: toml::Table = over.parse().expect("checked when the topology was parsed");
    merge(&mut doc, over);
    format!(
        "# Written by `slr lab up`, with router {router:?}'s own router_config.\n{}",
        toml::to_string(&doc).expect("TOML")
    )
}

/// A static lab's router: every host a next hop with its weight.
fn static_router_config(t: &Topology, router: &str) -> String {
    let dir = lab_dir(&t.name);
    let source = t.address(router).expect("router has a link");
    let mut s = format!(
        "# Written by `slr lab up` for lab {lab:?}.\n\
         [router]\n\
         name = \"{router}\"\n\
         tunnel_source = \"{source}\"\n\
         tun = \"slr0\"\n\
         tunnel_mtu = 1500\n\
         control_socket = \"{sock}\"\n\
         metrics_listen = \"127.0.0.1:{ROUTER_METRICS_PORT}\"\n\
         hash_seed = 1\n\
         \n\
         [health_check]\n\
         port = {HTTP_PORT}\n\
         path = \"/health\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         count = 2\n",
        lab = t.name,
        sock = dir.join(format!("{router}.sock")).display(),
    );
    for vh in &t.virtual_hosts {
        s += &format!(
            "\n[[virtual_hosts]]\nname = \"{}\"\nsubnet = \"{}\"\npolicy = \"{}\"\nudp = \"{}\"\n",
            vh.name,
            vh.subnet,
            vh.policy.as_str(),
            vh.udp.as_str()
        );
    }
    for host in t.nodes_with(Role::Host) {
        s += &format!(
            "\n[[next_hops]]\nname = \"{}\"\naddress = \"{}\"\nweight = {}\n",
            host.name,
            t.address(&host.name).expect("host has a link"),
            host.weight
        );
    }
    s
}

/// A hierarchy's router: its children as gateways, reports over mutual TLS, policy cost.
fn hierarchy_router_config(t: &Topology, router: &str) -> String {
    let dir = lab_dir(&t.name);
    let node = t.node(router).expect("router of the topology");
    let source = t.address(router).expect("router has a link");
    let parent = node.parent.as_deref();
    let trusted = parent
        .map(|p| format!("\"{}/32\"", t.address(p).expect("parent has a link")))
        .unwrap_or_default();
    let mut s = format!(
        "# Written by `slr lab up` for lab {lab:?}: {level} router{below}.\n\
         [router]\n\
         name = \"{router}\"\n\
         level = {level_q}\n\
         tunnel_source = \"{source}\"\n\
         trusted_parents = [{trusted}]\n\
         tun = \"slr0\"\n\
         tunnel_mtu = 1500\n\
         control_socket = \"{sock}\"\n\
         metrics_listen = \"127.0.0.1:{ROUTER_METRICS_PORT}\"\n\
         hash_seed = 1\n\
         \n\
         [health_check]\n\
         port = {HTTP_PORT}\n\
         path = \"/health\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         count = 2\n",
        lab = t.name,
        level = node.level.as_deref().unwrap_or("router"),
        level_q = quote(node.level.as_deref().unwrap_or("router")),
        below = parent
            .map(|p| format!(" below {p}"))
            .unwrap_or_else(|| ", the top".into()),
        sock = dir.join(format!("{router}.sock")).display(),
    );
    s += &control_section(t, router);
    s += &format!("listen = \"{source}:{CONTROL_PORT}\"\n");
    s += &parents_section(t, router);
    let subnets = subnet_list(t);
    for child in t.children(router) {
        s += &format!(
            "\n[[gateways.children]]\nname = \"{}\"\naddress = \"{}\"\nsubnets = [{subnets}]\ncost = {}\n",
            child.name,
            t.address(&child.name).expect("child has a link"),
            float(child.cost),
        );
        if !child.labels.is_empty() {
            let labels: Vec<String> = child
                .labels
                .iter()
                .map(|(k, v)| format!("{k} = {}", quote(v)))
                .collect();
            s += &format!("labels = {{ {} }}\n", labels.join(", "));
        }
    }
    let c = t.control.clone().unwrap_or_default();
    if c.f.is_some() || c.g.is_some() {
        s += "\n[cost]\n";
        if let Some(f) = &c.f {
            s += &format!("f = {}\n", quote(f));
        }
        if let Some(g) = &c.g {
            s += &format!("g = {}\n", quote(g));
        }
    }
    if parent.is_none() {
        for (group, clients) in t.client_groups() {
            let prefixes: Vec<String> = clients
                .iter()
                .map(|c| format!("\"{}/32\"", t.address(&c.name).expect("client has a link")))
                .collect();
            s += &format!(
                "\n[[client_groups]]\nname = \"{group}\"\nprefixes = [{}]\n",
                prefixes.join(", ")
            );
        }
    }
    for vh in &t.virtual_hosts {
        s += &format!(
            "\n[[virtual_hosts]]\nname = \"{}\"\nsubnet = \"{}\"\npolicy = \"{}\"\nudp = \"{}\"\n",
            vh.name,
            vh.subnet,
            vh.policy.as_str(),
            vh.udp.as_str()
        );
    }
    s
}

/// Every virtual subnet, as the items of a TOML array.
fn subnet_list(t: &Topology) -> String {
    t.virtual_hosts
        .iter()
        .map(|v| format!("\"{}\"", v.subnet))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The topology's `[router_config]` merged over a router configuration the lab wrote.
fn with_router_config(t: &Topology, s: String) -> String {
    if t.router_config.is_empty() {
        return s;
    }
    // The topology's [router_config] goes over what the lab wrote, table by table.
    let mut doc: toml::Table = s.parse().expect("the lab writes valid TOML");
    let over: toml::Table = t
        .router_config
        .parse()
        .expect("checked when the topology was parsed");
    merge(&mut doc, over);
    format!(
        "# Written by `slr lab up` for lab {:?}, with its [router_config].\n{}",
        t.name,
        toml::to_string(&doc).expect("TOML")
    )
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

/// The host agent's configuration (TOML): accept every virtual subnet, and tunnels only
/// from the lab's routers (in a hierarchy: from its parent, which it also reports to).
pub fn host_config(t: &Topology, host: &str) -> String {
    let parent = t.node(host).and_then(|n| n.parent.as_deref());
    let routers: Vec<String> = t
        .nodes_with(Role::Router)
        .filter(|r| parent.is_none_or(|p| p == r.name))
        .map(|r| format!("\"{}/32\"", t.address(&r.name).expect("router has a link")))
        .collect();
    let mut s = format!(
        "# Written by `slr lab up` for lab {lab:?}.\n\
         [host]\n\
         name = \"{host}\"\n\
         virtual_subnets = [{subnets}]\n\
         trusted_tunnel_sources = [{routers}]\n\
         tun = \"slrh0\"\n\
         control_socket = \"{sock}\"\n\
         metrics_listen = \"127.0.0.1:{HOST_METRICS_PORT}\"\n",
        lab = t.name,
        subnets = subnet_list(t),
        routers = routers.join(", "),
        sock = lab_dir(&t.name).join(format!("{host}.sock")).display(),
    );
    if t.is_hierarchy() {
        s += &control_section(t, host);
        s += &parents_section(t, host);
    }
    s
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
        assert_eq!(router["metrics_listen"].as_str(), Some("127.0.0.1:9464"));
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
        assert_eq!(host["metrics_listen"].as_str(), Some("127.0.0.1:9465"));
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
        crate::config::parse_router(&router_config(&t, "as1"), std::path::Path::new("as1.toml"))
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
                        crate::config::parse_router(&router_config(&t, &n.name), &file)
                            .unwrap_or_else(|e| panic!("{}: {e:#}", n.name));
                    }
                    Role::Host => {
                        crate::config::parse_host(&host_config(&t, &n.name), &file)
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
