//! The configuration files the lab writes for its daemons (`slr router`, `slr host`).
//!
//! The lab only describes the network: each daemon creates its own TUN device and its
//! own routes (the router `<subnet> dev slr0`, the host the AnyIP route `local <subnet>
//! dev lo`) and removes them on exit, so the lab never adds those.

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

/// The config file of a router or host node, in the lab's state directory.
pub fn config_path(lab: &str, node: &str) -> std::path::PathBuf {
    lab_dir(lab).join(format!("{node}.toml"))
}

/// The router's configuration (TOML). Every router of the lab gets the same virtual
/// hosts, next hops and hash seed, so that several routers pick the same host for a flow.
pub fn router_config(t: &Topology, router: &str) -> String {
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
/// from the lab's routers.
pub fn host_config(t: &Topology, host: &str) -> String {
    let subnets: Vec<String> = t
        .virtual_hosts
        .iter()
        .map(|v| format!("\"{}\"", v.subnet))
        .collect();
    let routers: Vec<String> = t
        .nodes_with(Role::Router)
        .map(|r| format!("\"{}/32\"", t.address(&r.name).expect("router has a link")))
        .collect();
    format!(
        "# Written by `slr lab up` for lab {lab:?}.\n\
         [host]\n\
         name = \"{host}\"\n\
         virtual_subnets = [{subnets}]\n\
         trusted_tunnel_sources = [{routers}]\n\
         tun = \"slrh0\"\n\
         control_socket = \"{sock}\"\n\
         metrics_listen = \"127.0.0.1:{HOST_METRICS_PORT}\"\n",
        lab = t.name,
        subnets = subnets.join(", "),
        routers = routers.join(", "),
        sock = lab_dir(&t.name).join(format!("{host}.sock")).display(),
    )
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
}
