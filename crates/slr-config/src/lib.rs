//! The configuration files of slr's daemons, `slr router` and `slr host` (TOML; every key in
//! docs/CONFIG.md).
//!
//! A file is read in two steps. serde reads it into the plain structs of [`file`](mod@file) (unknown
//! keys and wrong types are refused there, with line and column); then
//! [`RouterFile::into_config`] and [`HostFile::into_config`] check meanings (prefixes,
//! addresses, policies, durations, names that must exist) one section at a time and build the
//! configurations the daemons run with ([`RouterDaemonConfig`], [`HostDaemonConfig`]), in the
//! core's own types. Every error is a [`ConfigError`] that names the file, the key and the
//! value at fault.
//!
//! The file structs serialize too: the lab writes its daemons' files from them, so the lab and
//! the daemons cannot disagree on a key. This crate does no I/O beyond reading the file it is
//! asked to load.

mod bgp;
mod check;
mod control;
mod duration;
mod error;
pub mod file;
mod host;
mod overrides;
mod router;

pub use bgp::{BgpConfig, ClusterConfig, ClusterPeer, WhohasSettings};
pub use control::{ControlConfig, ParentConfig};
pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use file::{HostFile, RouterFile};
pub use host::{HostDaemonConfig, LoadScope};
pub use overrides::{NextHopOverride, Overrides};
pub use router::{FastPathMode, GatewayChild, GatewayConfig, HealthConfig, RouterDaemonConfig};

use serde::Deserialize;
use std::path::Path;

/// Reads a configuration file, naming it in errors.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parses TOML text into `T`, naming `file` (where the text came from) in errors.
fn parse_toml<T: for<'de> Deserialize<'de>>(text: &str, file: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Parses and checks the text of a router configuration file; `file` is named in errors.
/// [`load_router`] is this after reading the file (fuzz/ feeds text here directly).
pub fn parse_router(text: &str, file: &Path) -> Result<RouterDaemonConfig, ConfigError> {
    parse_toml::<RouterFile>(text, file)?.into_config(file)
}

/// Parses and checks the text of a host configuration file; `file` is named in errors.
/// [`load_host`] is this after reading the file (fuzz/ feeds text here directly).
pub fn parse_host(text: &str, file: &Path) -> Result<HostDaemonConfig, ConfigError> {
    parse_toml::<HostFile>(text, file)?.into_config(file)
}

/// Reads and checks a router configuration file.
pub fn load_router(path: &Path) -> Result<RouterDaemonConfig, ConfigError> {
    parse_router(&read_text(path)?, path)
}

/// Reads and checks a host configuration file.
pub fn load_host(path: &Path) -> Result<HostDaemonConfig, ConfigError> {
    parse_host(&read_text(path)?, path)
}

/// Which daemon a file configures, by its first table (`[router]` or `[host]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `slr router`.
    Router,
    /// `slr host`.
    Host,
}

/// Tells a router file from a host file, for `slr check` (None: neither table is there).
pub fn file_kind(text: &str) -> Option<FileKind> {
    let table: toml::Table = text.parse().ok()?;
    if table.contains_key("router") {
        Some(FileKind::Router)
    } else if table.contains_key("host") {
        Some(FileKind::Host)
    } else {
        None
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use slr_core::router::UdpMode;
    use slr_core::select::Policy;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slr-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
[router]
name = "r1"
tunnel_source = "10.200.2.2"
[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "weighted"
udp = "per_datagram"
[[next_hops]]
name = "h1"
address = "10.200.3.2"
weight = 2
"#;

    #[test]
    fn good_router_file() {
        let p = write("good.toml", GOOD);
        let c = load_router(&p).unwrap();
        assert_eq!(c.core.virtual_hosts[0].policy, Policy::Weighted);
        assert_eq!(c.core.virtual_hosts[0].udp, UdpMode::PerDatagram);
        assert_eq!(c.core.next_hops[0].weight, 2);
        assert_eq!(c.health.count, 3);
        assert_eq!(c.control_socket, PathBuf::from("/run/slr/r1.sock"));
    }

    #[test]
    fn errors_name_file_key_and_value() {
        let cases = [
            (
                GOOD.replace("10.99.0.0/24", "10.99.0.1/24"),
                "virtual_hosts[0].subnet",
                "10.99.0.1/24",
            ),
            (
                GOOD.replace("\"weighted\"", "\"fastest\""),
                "virtual_hosts[0].policy",
                "fastest",
            ),
            (
                GOOD.replace("\"10.200.3.2\"", "\"10.200.3\""),
                "next_hops[0].address",
                "10.200.3",
            ),
            (
                GOOD.replace("per_datagram", "sometimes"),
                "virtual_hosts[0].udp",
                "sometimes",
            ),
            (
                GOOD.to_string() + "[health_check]\ntimeout = \"2s\"\n",
                "health_check.timeout",
                "2s",
            ),
            (
                GOOD.to_string() + "[flow_table]\nudp_timeout = \"soon\"\n",
                "flow_table.udp_timeout",
                "soon",
            ),
            (
                GOOD.to_string() + "[cost]\nf = \"s.load +\"\n",
                "cost.f",
                "s.load +",
            ),
            (
                GOOD.to_string() + "[cost]\ng = \"mystery(m)\"\n",
                "cost.g",
                "mystery(m)",
            ),
            (
                GOOD.to_string() + "[cost]\ntimezone = \"Mars/Olympus\"\n",
                "cost.timezone",
                "Mars/Olympus",
            ),
            (
                GOOD.replace("\"weighted\"", "\"cost\""),
                "control.listen",
                "(missing)",
            ),
            (
                GOOD.to_string()
                    + "[[gateways.children]]\nname = \"as1\"\naddress = \"10.200.9.2\"\nsubnets = [\"10.99.0.1/16\"]\n",
                "gateways.children[0].subnets[0]",
                "10.99.0.1/16",
            ),
            (
                GOOD.replace("udp = \"per_datagram\"", "udp = \"pin\"\n[[virtual_hosts.rules]]\ndst_ports = [\"90-80\"]\nnext_hops = [\"h1\"]"),
                "virtual_hosts[0].rules[0].dst_ports[0]",
                "90-80",
            ),
        ];
        for (i, (text, key, value)) in cases.iter().enumerate() {
            let p = write(&format!("bad{i}.toml"), text);
            let e = format!("{:#}", load_router(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(key), "{e}");
            assert!(e.contains(value), "{e}");
        }
        let p = write("typo.toml", &GOOD.replace("policy =", "polcy ="));
        let e = format!("{:#}", load_router(&p).unwrap_err());
        assert!(e.contains("polcy") && e.contains("typo.toml"), "{e}");
    }

    const BGP: &str = "[bgp]\nlocal_as = 65001\nbfd_interval = \"100ms\"\n[[bgp.neighbors]]\naddress = \"10.200.2.1\"\nas = 65000\n";

    #[test]
    fn bgp_section_defaults_and_checks() {
        let p = write("bgp.toml", &(GOOD.to_string() + BGP));
        let b = load_router(&p).unwrap().bgp.expect("[bgp]");
        assert_eq!(b.local_as, 65001);
        assert_eq!(
            b.router_id,
            Ipv4Addr::new(10, 200, 2, 2),
            "the tunnel source"
        );
        assert_eq!(b.neighbors, vec![(Ipv4Addr::new(10, 200, 2, 1), 65000)]);
        assert_eq!(b.hold_time, std::time::Duration::from_secs(3));
        assert_eq!(b.bfd_interval, Some(std::time::Duration::from_millis(100)));
        assert_eq!(b.state_dir, PathBuf::from("/run/slr/bgp-r1"));
        assert!(load_router(&write("nobgp.toml", GOOD))
            .unwrap()
            .bgp
            .is_none());
        let cases = [
            (BGP.replace("65001", "0"), "bgp.local_as", "0"),
            (
                BGP.replace("as = 65000", "as = 23456"),
                "bgp.neighbors[0].as",
                "23456",
            ),
            (
                BGP.replace("10.200.2.1", "10.200.2"),
                "bgp.neighbors[0].address",
                "10.200.2",
            ),
            (
                BGP.replace("bfd_interval = \"100ms\"", "hold_time = \"2s\""),
                "bgp.hold_time",
                "2s",
            ),
            (
                BGP.replace("bfd_interval = \"100ms\"", "hold_time = \"3500ms\""),
                "bgp.hold_time",
                "3500ms",
            ),
            (BGP.replace("100ms", "1ms"), "bgp.bfd_interval", "1ms"),
            (
                "[bgp]\nlocal_as = 65001\n".to_string(),
                "bgp.neighbors",
                "[]",
            ),
            (
                BGP.to_string() + "[[bgp.neighbors]]\naddress = \"10.200.2.1\"\nas = 65002\n",
                "bgp.neighbors[1].address",
                "10.200.2.1",
            ),
        ];
        for (i, (bgp, key, value)) in cases.iter().enumerate() {
            let p = write(&format!("badbgp{i}.toml"), &(GOOD.to_string() + bgp));
            let e = format!("{:#}", load_router(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains(value), "{value}: {e}");
        }
    }

    #[test]
    fn shortcut_keys() {
        let control = "[control]\nca = \"ca.pem\"\ncert = \"r.pem\"\nkey = \"r.key\"\n";
        let p = write("shortcut-off.toml", &format!("{GOOD}{control}"));
        assert_eq!(
            load_router(&p).unwrap().core.shortcut,
            None,
            "off by default"
        );
        let p = write(
            "shortcut-on.toml",
            &format!("{GOOD}{control}shortcut = true\n"),
        );
        let sc = load_router(&p).unwrap().core.shortcut.expect("on");
        assert_eq!(sc.hold, slr_core::time::Duration::from_millis(20));
        let p = write(
            "shortcut-hold.toml",
            &format!("{GOOD}{control}shortcut = true\nshortcut_hold = \"0s\"\n"),
        );
        let sc = load_router(&p).unwrap().core.shortcut.expect("on");
        assert_eq!(sc.hold, slr_core::time::Duration::ZERO);
        for (i, (extra, value)) in [
            ("shortcut_hold = \"5ms\"\n", "5ms"),
            ("shortcut = true\nshortcut_hold = \"2s\"\n", "2s"),
            ("shortcut = true\nshortcut_hold = \"soon\"\n", "soon"),
        ]
        .iter()
        .enumerate()
        {
            let p = write(
                &format!("badshortcut{i}.toml"),
                &format!("{GOOD}{control}{extra}"),
            );
            let e = format!("{:#}", load_router(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(
                e.contains("control.shortcut_hold") && e.contains(value),
                "{e}"
            );
        }
    }

    #[test]
    fn cluster_section_checks() {
        let base = "[cluster]\nlisten = \"10.200.2.2:7401\"\nca = \"ca.pem\"\ncert = \"r1.pem\"\nkey = \"r1.key\"\n";
        let peer = "[[cluster.peers]]\nname = \"r2\"\naddress = \"10.200.3.2:7401\"\n";
        let p = write("cluster.toml", &format!("{GOOD}{base}{peer}"));
        let c = load_router(&p).unwrap().cluster.expect("[cluster]");
        assert_eq!(c.peers.len(), 1);
        assert!(c.ca.is_absolute(), "relative to the file");
        assert!(c.mirror, "mirroring by default");
        let w = c.whohas.expect("WHOHAS by default");
        assert_eq!(
            (w.timeout, w.rate),
            (std::time::Duration::from_millis(50), 50_000)
        );
        assert_eq!(
            load_router(&p).unwrap().core.whohas.map(|w| w.timeout),
            Some(slr_core::time::Duration::from_millis(50)),
            "the core holds unknown mid-flow packets that long"
        );
        let only = base.to_string() + "mirror = false\nwhohas_timeout = \"20ms\"\n" + peer;
        let p = write("cluster-whohas.toml", &format!("{GOOD}{only}"));
        let c = load_router(&p).unwrap().cluster.expect("[cluster]");
        assert!(!c.mirror);
        assert_eq!(
            c.whohas.map(|w| w.timeout),
            Some(std::time::Duration::from_millis(20))
        );
        // Per peer: a router below is asked but not mirrored to; a router above is answered
        // but never asked (and a router that asks nobody holds no packet for a question).
        let below = peer.to_string() + "mirror = false\n";
        let p = write("cluster-below.toml", &format!("{GOOD}{base}{below}"));
        let c = load_router(&p).unwrap().cluster.expect("[cluster]");
        assert!(!c.mirror && c.mirror_peers().is_empty());
        assert_eq!(c.ask_peers().len(), 1);
        let above = base.to_string() + "mirror = false\n" + peer + "ask = false\n";
        let p = write("cluster-above.toml", &format!("{GOOD}{above}"));
        let r = load_router(&p).unwrap();
        assert!(r.core.whohas.is_none(), "it asks nobody");
        let c = r.cluster.expect("[cluster]");
        assert!(c.whohas.is_some(), "it answers");
        assert!(c.ask_peers().is_empty() && c.mirror_peers().is_empty());
        let cases = [
            (
                format!("{base}mirror = false\n{peer}mirror = true\n"),
                "cluster.peers[0].mirror",
                "true",
            ),
            (
                format!("{base}whohas = false\n{peer}ask = true\n"),
                "cluster.peers[0].ask",
                "true",
            ),
            (
                format!("{base}whohas = false\n{peer}mirror = false\n"),
                "cluster.whohas",
                "false",
            ),
            (base.to_string(), "cluster.peers", "[]"),
            (
                base.replace("10.200.2.2:7401", "10.200.2.2"),
                "cluster.listen",
                "10.200.2.2",
            ),
            (
                format!("{base}{}", peer.replace("\"r2\"", "\"r1\"")),
                "cluster.peers[0].name",
                "r1",
            ),
            (format!("{base}{peer}{peer}"), "cluster.peers[1].name", "r2"),
            (
                format!("{base}{}", peer.replace(":7401", "")),
                "cluster.peers[0].address",
                "10.200.3.2",
            ),
            (
                format!("{base}whohas_timeout = \"10s\"\n{peer}"),
                "cluster.whohas_timeout",
                "10s",
            ),
            (
                format!("{base}whohas_timeout = \"soon\"\n{peer}"),
                "cluster.whohas_timeout",
                "soon",
            ),
            (
                format!("{base}whohas_rate = 0\n{peer}"),
                "cluster.whohas_rate",
                "0",
            ),
            (
                format!("{base}mirror = false\nwhohas = false\n{peer}"),
                "cluster.whohas",
                "false",
            ),
        ];
        for (i, (cluster, key, value)) in cases.iter().enumerate() {
            let p = write(&format!("badcluster{i}.toml"), &format!("{GOOD}{cluster}"));
            let e = format!("{:#}", load_router(&p).unwrap_err());
            assert!(e.contains(key) && e.contains(value), "{key} {value}: {e}");
        }
    }

    /// The examples in docs/CONFIG.md are real configurations: they must load.
    #[test]
    fn documented_examples_load() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"))
                .unwrap();
        let block_after = |heading: &str| -> String {
            let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
            let rest = &doc[at..];
            let start = rest.find("```toml\n").unwrap() + 8;
            rest[start..start + rest[start..].find("```").unwrap()].to_string()
        };
        let file = Path::new("docs/CONFIG.md");
        let r = parse_router(&block_after("## Router"), file).unwrap();
        assert_eq!(r.core.virtual_hosts.len(), 1);
        assert_eq!(r.health.address, Some(Ipv4Addr::new(10, 99, 0, 1)));
        let h = parse_host(&block_after("## Host agent"), file).unwrap();
        assert_eq!(h.virtual_subnets.len(), 1);
        let bgp = GOOD.to_string() + &block_after("## Announcing the virtual subnets by BGP");
        let b = parse_router(&bgp, file).unwrap().bgp.expect("[bgp]");
        assert_eq!(b.neighbors, vec![(Ipv4Addr::new(10, 200, 2, 1), 65000)]);
        let cluster = GOOD.to_string() + &block_after("## Mirroring flows to hot spares");
        let c = parse_router(&cluster, file)
            .unwrap()
            .cluster
            .expect("[cluster]");
        assert_eq!(c.peers[0].name, "r2");
        assert_eq!(c.listen, "10.200.2.2:7401".parse().unwrap());
        let up = parse_router(&block_after("## A router of the hierarchy"), file).unwrap();
        let c = up.control.as_ref().unwrap();
        assert_eq!(c.parents[0].name, "net");
        assert_eq!(up.gateways.children.len(), 2);
        assert_eq!(up.core.next_hops.len(), 2, "gateway children are next hops");
        assert_eq!(
            up.core.virtual_hosts[0].rules[0].dst_ports,
            vec![(443, 443), (8443, 8444)]
        );
        assert_eq!(up.client_groups[0].name, "east");
        let at = doc
            .find("without\n`listen`")
            .expect("host [control] example");
        let rest = &doc[at..];
        let start = rest.find("```toml\n").unwrap() + 8;
        let host = parse_host(
            &rest[start..start + rest[start..].find("```").unwrap()],
            file,
        )
        .unwrap();
        assert_eq!(host.control.unwrap().parents[0].name, "site-a");
    }
}
