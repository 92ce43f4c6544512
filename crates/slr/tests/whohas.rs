//! WHOHAS (issue 12, F17c): a routing change moves established flows to a router that holds no
//! state for them. Two routers announce the virtual subnet by BGP and the core spreads 100
//! downloads over both under `round_robin` over four hosts (where a fresh choice usually picks another host,
//! whose reset breaks the download); mirroring is off. Mid-download the core's BGP session to
//! r1 is disabled: the core's route keeps only r2, and every packet of r1's flows now reaches
//! r2. With WHOHAS, r2 holds each such flow's first packets, asks r1 (alive, it holds the flow)
//! and pins the flow to the same host: the downloads complete. Without it (the control, the
//! same lab without `[cluster]`), r2 picks afresh and most of r1's downloads break.

mod common;

use common::{core_next_hops, is_pattern, wait_until, Lab};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DOWNLOADS: usize = 100;
/// Bytes per download (12 MiB at 512 KB/s: about 24 s; curl lets some go faster at first).
const SIZE: u64 = 12 << 20;

fn topology(name: &str, whohas: bool) -> String {
    format!(
        r#"
[lab]
name = "{name}"

[bgp]

{cluster}

[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "round_robin"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "r1"
role = "router"

[[nodes]]
name = "r2"
role = "router"

[[nodes]]
name = "h1"
role = "host"

[[nodes]]
name = "h2"
role = "host"

[[nodes]]
name = "h3"
role = "host"

[[nodes]]
name = "h4"
role = "host"
"#,
        cluster = if whohas {
            "[cluster]\nmirror = false\nwhohas = true"
        } else {
            ""
        }
    )
}

/// The established client flows (from c1) whose packets a router carried.
fn own_flows(lab: &Lab, router: &str) -> BTreeSet<String> {
    let c1 = format!("{}:", lab.addr("c1"));
    let page = lab
        .ctl_args(router, &["flows", "--all"])
        .unwrap_or_else(|e| panic!("slr ctl {router} flows: {e}"));
    page["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["protocol"] == "tcp" && f["state"] == "established")
        .filter(|f| f["bytes"].as_u64().unwrap_or(0) > 0)
        .filter_map(|f| f["client"].as_str())
        .filter(|c| c.starts_with(&c1))
        .map(str::to_owned)
        .collect()
}

/// Disables (or enables) the core's BGP session to a router: its route leaves (or rejoins)
/// the core's kernel table while the router itself runs on.
fn core_session(lab: &Lab, router: &str, enable: bool) {
    let socket = format!("/run/slr-lab/{}/core-bird.ctl", lab.name);
    let protocol = format!("n_{}", lab.addr(router).to_string().replace('.', "_"));
    let verb = if enable { "enable" } else { "disable" };
    let out = std::process::Command::new("birdc")
        .args(["-s", &socket, verb, &protocol])
        .output()
        .expect("run birdc");
    assert!(
        out.status.success(),
        "birdc {verb} {protocol}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Outcome {
    intact: usize,
    r1_running: usize,
    r1_intact: usize,
    whohas: serde_json::Value,
}

fn run(whohas: bool) -> Outcome {
    let name = if whohas { "wh-on" } else { "wh-none" };
    let lab = Lab::up(name, &topology(name, whohas));
    let o = lab.sh("c1", "sysctl -qw net.ipv4.tcp_rmem='4096 131072 262144'");
    assert!(o.status.success());
    let (r1, r2) = (lab.addr("r1"), lab.addr("r2"));
    assert_eq!(core_next_hops(&lab), BTreeSet::from([r1, r2]));
    let url = format!("http://{}/bytes/{}", lab.vip(0), SIZE);
    let downloads: Vec<_> = (0..DOWNLOADS)
        .map(|i| {
            let body = format!("/tmp/slr-e2e-{name}-{i}.bin");
            let _ = std::fs::remove_file(&body);
            let child = lab.spawn(
                "c1",
                &format!("curl -sS -m 60 --limit-rate 512K -o {body} -w '%{{local_port}}' {url}"),
            );
            (child, body)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let r1_own = own_flows(&lab, "r1");
    println!(
        "whohas {whohas}: {} downloads running through r1, {} through r2",
        r1_own.len(),
        own_flows(&lab, "r2").len()
    );
    assert!(r1_own.len() >= 10, "equal-cost multipath gives r1 a share");
    let size = |b: &String| std::fs::metadata(b).map_or(0, |m| m.len());
    let running: Vec<bool> = downloads
        .iter()
        .map(|(_, b)| size(b) + (2 << 20) <= SIZE)
        .collect();
    // The route change: the core forgets r1's route, r2 gets every flow.
    let t = Instant::now();
    core_session(&lab, "r1", false);
    wait_until(Duration::from_secs(5), || {
        core_next_hops(&lab) == BTreeSet::from([r2])
    })
    .expect("the core's route keeps only r2");
    println!(
        "whohas {whohas}: the core routes only to r2 after {:?}",
        t.elapsed()
    );
    let status = lab.ctl("r2", "status");
    let c1 = lab.addr("c1");
    let (mut intact, mut r1_running, mut r1_intact) = (0, 0, 0);
    for ((child, body), was_running) in downloads.into_iter().zip(running) {
        let out = child.wait_with_output().unwrap();
        let port = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let data = std::fs::read(&body).unwrap_or_default();
        let ok = out.status.success() && data.len() as u64 == SIZE && is_pattern(&data);
        intact += usize::from(ok);
        if was_running && r1_own.contains(&format!("{c1}:{port}")) {
            r1_running += 1;
            r1_intact += usize::from(ok);
        }
        let _ = std::fs::remove_file(&body);
    }
    let whohas_view = lab.ctl("r2", "status")["snapshot"]["whohas"].clone();
    println!(
        "whohas {whohas}: route moved; {intact} of {DOWNLOADS} downloads complete and intact; of the {r1_running} r1 carried that were still running, {r1_intact} intact; r2 WHOHAS {whohas_view}"
    );
    if whohas {
        let r1_view = lab.ctl("r1", "status")["snapshot"]["whohas"].clone();
        println!("r1 answered: {r1_view}");
        assert!(
            status["snapshot"]["whohas"].is_object(),
            "r2 shows WHOHAS in its status"
        );
        // The WHOHAS families as Prometheus's own checker reads them.
        for r in ["r1", "r2"] {
            let page = lab.sh(r, "curl -sS -m 3 http://127.0.0.1:9464/metrics");
            let page = String::from_utf8_lossy(&page.stdout).into_owned();
            assert!(page.contains("slr_whohas_flows_total"), "{r}");
            if let Err(e) = common::promtool(&page) {
                panic!("promtool check metrics refuses {r}'s page: {e}");
            }
        }
    }
    Outcome {
        intact,
        r1_running,
        r1_intact,
        whohas: whohas_view,
    }
}

#[test]
fn whohas_carries_flows_across_a_route_change() {
    let w = run(true);
    assert!(
        w.r1_running >= 10,
        "r1 carried running downloads when the route moved"
    );
    assert!(
        w.intact * 100 >= DOWNLOADS * 99,
        "with WHOHAS at least 99 % of the downloads survive the route change ({} of {DOWNLOADS})",
        w.intact
    );
    let resolved = w.whohas["resolved"].as_u64().unwrap_or(0);
    assert!(
        resolved as usize >= w.r1_running,
        "r2 found r1's flows through WHOHAS ({resolved} resolved, {} running)",
        w.r1_running
    );
    let c = run(false);
    assert!(
        c.r1_running >= 10,
        "r1 carried running downloads when the route moved"
    );
    assert!(
        c.r1_intact * 2 < c.r1_running,
        "the control: without WHOHAS most of r1's running downloads break ({} of {} intact)",
        c.r1_intact,
        c.r1_running
    );
}
