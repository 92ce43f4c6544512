//! A Prometheus server for the lab (`slr lab up --prometheus`): Debian's `prometheus` in the
//! lab's core namespace, scraping every router's and host agent's metrics endpoint each
//! second, as an operator's Prometheus would. Its configuration is written from a JSON value
//! (YAML reads JSON), its data lives in the lab's state directory and goes at `down`.

use crate::configs::{HOST_METRICS_PORT, ROUTER_METRICS_PORT};
use crate::netns;
use crate::probe;
use crate::state::lab_dir;
use crate::topology::{Role, Topology};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Port of the lab's Prometheus, on every address of the core namespace.
pub const PORT: u16 = 9090;

/// The scrape configuration: one target per router and host, labelled with its node and role.
pub fn config(t: &Topology) -> serde_json::Value {
    let targets: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .filter_map(|n| {
            let port = match n.role {
                Role::Router => ROUTER_METRICS_PORT,
                Role::Host => HOST_METRICS_PORT,
                _ => return None,
            };
            let addr = t.address(&n.name)?;
            Some(json!({
                "targets": [format!("{addr}:{port}")],
                "labels": {"node": n.name, "role": n.role.as_str()},
            }))
        })
        .collect();
    json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{"job_name": "slr", "static_configs": targets}],
    })
}

/// Writes the configuration and returns the command line of the server (`prometheus` and its
/// arguments), for the lab to start in the core namespace.
pub fn prepare(t: &Topology) -> Result<Vec<String>> {
    let dir = lab_dir(&t.name).join("prometheus");
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, serde_json::to_string_pretty(&config(t))?)
        .with_context(|| format!("writing {}", file.display()))?;
    let which = std::process::Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .context("looking for prometheus")?;
    if !which.status.success() {
        bail!("--prometheus: the prometheus server is not installed (apt-get install prometheus; scripts/install-deps does it)");
    }
    Ok(vec![
        "prometheus".into(),
        format!("--config.file={}", file.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=0.0.0.0:{PORT}"),
        "--storage.tsdb.retention.time=2h".into(),
        "--log.level=warn".into(),
    ])
}

/// Waits until the started server is ready; returns the address it answers on (in the core
/// namespace).
pub fn wait_ready(t: &Topology, timeout: Duration) -> Result<SocketAddrV4> {
    let core = t.core().name.clone();
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    let ns = t.netns(&core);
    let started = Instant::now();
    loop {
        let ready = netns::in_netns(&ns, move || {
            Ok(
                probe::http_get(addr, "/-/ready", Duration::from_millis(500))
                    .map(|(code, _)| code == 200)
                    .unwrap_or(false),
            )
        })?;
        if ready {
            return Ok(addr);
        }
        if started.elapsed() > timeout {
            bail!("prometheus in {ns} was not ready within {timeout:?} (its log: lab dir logs/{core}-prometheus.log)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_router_and_host_is_a_target() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/site.toml");
        let t = Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let c = config(&t);
        let targets = c["scrape_configs"][0]["static_configs"].as_array().unwrap();
        let routers = t.nodes_with(Role::Router).count();
        let hosts = t.nodes_with(Role::Host).count();
        assert_eq!(targets.len(), routers + hosts);
        let r1 = targets
            .iter()
            .find(|x| x["labels"]["node"] == "r1")
            .unwrap();
        assert_eq!(
            r1["targets"][0],
            format!("{}:9464", t.address("r1").unwrap())
        );
        assert_eq!(r1["labels"]["role"], "router");
        assert_eq!(c["global"]["scrape_interval"], "1s");
    }
}
