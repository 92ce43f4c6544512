//! Hot spares with flow mirroring (issue 12, F17b): two routers announce the virtual subnet by
//! BGP and the core spreads connections over both; each router mirrors the flows it pins to
//! the other over mutual TLS. 100 downloads run under `round_robin` (where a fresh choice
//! usually picks another host, whose reset breaks the download); one router is killed
//! (SIGKILL). With mirroring, the survivor already holds the dead router's flows, pinned to
//! the same hosts, and every download completes intact; without it (the control, same lab
//! without `[cluster]`), most of the downloads the dead router carried break.
//!
//! WHOHAS alone saves them where the routers that died and survived share the routers below:
//! in `examples/anycast-sites.toml` the two top routers announce the subnet above four sites
//! that report to both. The survivor asks its neighbours (the dead router, which does not
//! answer, and the sites) who holds each flow it does not know; the site that pinned it
//! answers, and the survivor sends the flow there.

mod common;

use common::{client_flows, signal, wait_until, DownloadOutcome, Downloads, Lab};
use std::time::{Duration, Instant};

const DOWNLOADS: usize = 100;
/// Bytes per download (12 MiB at 512 KB/s: about 24 s; curl lets some go faster at first, and
/// only the downloads with at least 2 MiB to come when r1 dies count as running).
const SIZE: u64 = 12 << 20;

fn topology(name: &str, mirror: bool) -> String {
    topology_with(name, mirror, "")
}

fn topology_with(name: &str, mirror: bool, extra: &str) -> String {
    let cluster = if mirror {
        "[cluster]\nmirror = true\n"
    } else {
        ""
    };
    common::anycast_topology(name, "round_robin", 3, "", &format!("{cluster}\n{extra}"))
}

fn mirror_view(lab: &Lab, router: &str) -> serde_json::Value {
    lab.ctl(router, "status")["snapshot"]["mirror"].clone()
}

/// Runs the downloads, kills r1 while they run, and waits for them all.
fn run(mirror: bool) -> DownloadOutcome {
    let name = if mirror { "cl-mirror" } else { "cl-none" };
    let lab = Lab::up(name, &topology(name, mirror));
    let mut downloads = Downloads::start(&lab, DOWNLOADS, SIZE, "512K");
    std::thread::sleep(Duration::from_millis(1500));
    let r1_own = client_flows(&lab, "r1", true);
    let r2_own = client_flows(&lab, "r2", true);
    println!(
        "mirror {mirror}: {} downloads running through r1, {} through r2",
        r1_own.len(),
        r2_own.len()
    );
    assert!(r1_own.len() >= 10, "equal-cost multipath gives r1 a share");
    if mirror {
        let t = Instant::now();
        wait_until(Duration::from_secs(5), || {
            client_flows(&lab, "r2", false).is_superset(&r1_own)
        })
        .expect("r2 holds a copy of every flow r1 carries");
        let v = mirror_view(&lab, "r2");
        println!(
            "r2 holds copies of all {} flows of r1 (checked in {:?}); mirroring lag last {:.2} ms, max {:.2} ms; {} flows taken in",
            r1_own.len(),
            t.elapsed(),
            v["last_lag_seconds"].as_f64().unwrap_or(-1.0) * 1e3,
            v["max_lag_seconds"].as_f64().unwrap_or(-1.0) * 1e3,
            v["flows_taken_in"]
        );
        assert_eq!(v["peers"][0]["connected"], true, "{v}");
        // The mirroring and BGP families as Prometheus's own checker reads them.
        for r in ["r1", "r2"] {
            let page = lab.sh(r, "curl -sS -m 3 http://127.0.0.1:9464/metrics");
            let page = String::from_utf8_lossy(&page.stdout).into_owned();
            assert!(page.contains("slr_mirror_lag_seconds") && page.contains("slr_bgp_bird_up"));
            if let Err(e) = common::promtool(&page) {
                panic!("promtool check metrics refuses {r}'s page: {e}");
            }
        }
    }
    downloads.mark_running();
    signal(lab.pid("r1", "router"), "KILL");
    let o = downloads.finish(&lab, &r1_own);
    println!(
        "mirror {mirror}: r1 killed; {} of {DOWNLOADS} downloads complete and intact; of the {} r1 carried that were still running, {} intact",
        o.intact, o.carried_running, o.carried_intact
    );
    o
}

#[test]
fn mirrored_flows_survive_a_routers_death_under_round_robin() {
    run(true).assert_saved(&run(false), DOWNLOADS, 100, "mirroring, r1 killed");
}

/// A copy ages at the peer like a flow without packets: the owner tells its peers again of the
/// flows that carried packets (every quarter of the idle timeout), and the peers keep their
/// copies alive. Here the established timeout is 3 s and 30 uploads (whose data crosses the
/// routers all the time, unlike a download's ACKs, which a rate-limited client pauses) last
/// about 20 s: after three timeouts the survivor still holds a copy of every flow r1 carries,
/// and carries them all when r1 dies. WHOHAS is off: the copies alone must do it.
#[test]
fn copies_outlive_the_idle_timeout_while_their_owner_carries_them() {
    let name = "cl-fresh";
    let extra = "[router_config.flow_table]\ntcp_established_timeout = \"3s\"\n";
    let topology =
        topology_with(name, true, extra).replace("mirror = true", "mirror = true\nwhohas = false");
    let lab = Lab::up(name, &topology);
    // Small send buffers: the uploads leave at curl's pace.
    let o = lab.sh("c1", "sysctl -qw net.ipv4.tcp_wmem='4096 16384 65536'");
    assert!(o.status.success());
    let upload = common::Upload::new(name, 5 << 20);
    let (file, expect) = (&upload.path, upload.expect());
    let url = format!("http://{}/upload", lab.vip(0));
    let uploads: Vec<_> = (0..30)
        .map(|_| {
            lab.spawn(
                "c1",
                &format!(
                    "curl -sS -m 60 --limit-rate 256K --data-binary @{} -w ' port=%{{local_port}}' {url}",
                    file.display()
                ),
            )
        })
        .collect();
    // Three idle timeouts and more.
    std::thread::sleep(Duration::from_secs(10));
    let r1_own = client_flows(&lab, "r1", true);
    let r2_all = client_flows(&lab, "r2", false);
    let missing: Vec<_> = r1_own.difference(&r2_all).collect();
    println!(
        "after 10 s (timeout 3 s): r1 carries {} uploads, r2 lacks a copy of {}; r1 sent {} refreshes, r2 refreshed {} copies",
        r1_own.len(),
        missing.len(),
        mirror_view(&lab, "r1")["refreshes_sent"],
        mirror_view(&lab, "r2")["copies_refreshed"]
    );
    assert!(r1_own.len() >= 5, "r1 carries uploads");
    assert!(
        missing.is_empty(),
        "r2 still holds a copy of every flow r1 carries: missing {missing:?}"
    );
    signal(lab.pid("r1", "router"), "KILL");
    let c1 = lab.addr("c1");
    let (mut intact, mut r1_carried, mut r1_intact) = (0, 0, 0);
    for child in uploads {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ok = out.status.success() && text.starts_with(&expect);
        intact += usize::from(ok);
        let port = text.rsplit("port=").next().unwrap_or("").trim();
        if r1_own.contains(&format!("{c1}:{port}")) {
            r1_carried += 1;
            r1_intact += usize::from(ok);
        }
    }
    println!(
        "r1 killed after 10 s: {intact} of 30 uploads intact; {r1_intact} of the {r1_carried} r1 carried"
    );
    assert!(r1_carried >= 5, "r1 carried uploads when it died");
    assert_eq!(intact, 30, "every upload survives on r2's fresh copies");
}

/// `examples/anycast-sites.toml` as lab `name`, with r2 hashing by another seed than r1 (a
/// fresh choice at r2 lands on another site three times in four, as when the costs the two
/// routers see have drifted apart); `whohas`: with its `[cluster]` (WHOHAS on, mirroring off),
/// else without (the control: neither).
fn sites_topology(name: &str, whohas: bool) -> String {
    let r2 = "name = \"r2\"\nrole = \"router\"\nlevel = \"network\"\n";
    let example = include_str!("../../../examples/anycast-sites.toml")
        .replace("name = \"anycast-sites\"", &format!("name = \"{name}\""))
        .replace(
            r2,
            &format!("{r2}router_config = {{ router = {{ hash_seed = 2 }} }}\n"),
        );
    assert!(example.contains("hash_seed = 2"));
    assert!(example.contains("mirror = false") && example.contains("whohas = true"));
    if whohas {
        return example;
    }
    let mut out = String::new();
    let mut skipping = false;
    for line in example.lines() {
        if line.starts_with('[') {
            skipping = line == "[cluster]";
        }
        if !skipping {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// What became of the downloads in the sites lab, and r2's WHOHAS view.
fn run_sites(whohas: bool) -> (DownloadOutcome, serde_json::Value) {
    let name = if whohas { "cl-sites" } else { "cl-sites-none" };
    let lab = Lab::up(name, &sites_topology(name, whohas));
    let mut downloads = Downloads::start(&lab, DOWNLOADS, SIZE, "512K");
    std::thread::sleep(Duration::from_millis(1500));
    let r1_own = client_flows(&lab, "r1", true);
    println!(
        "sites, whohas {whohas}: {} downloads running through r1, {} through r2",
        r1_own.len(),
        client_flows(&lab, "r2", true).len()
    );
    assert!(r1_own.len() >= 10, "equal-cost multipath gives r1 a share");
    downloads.mark_running();
    signal(lab.pid("r1", "router"), "KILL");
    let killed = Instant::now();
    // For 8 s: new connections (while the core still routes some to the dead router), and
    // the survivor finding the dead router's flows (each is found once, at its first packet).
    let url = format!("http://{}/", lab.vip(0));
    let (mut first_served, mut last_failed, mut last_found) = (None, None, None);
    let mut found = 0;
    while killed.elapsed() < Duration::from_secs(8) {
        let o = lab.sh(
            "c1",
            &format!("curl -sS -m 0.3 -o /dev/null -w '%{{http_code}}' {url}"),
        );
        if String::from_utf8_lossy(&o.stdout) == "200" {
            first_served.get_or_insert(killed.elapsed());
        } else {
            last_failed = Some(killed.elapsed());
        }
        let now = lab.ctl("r2", "status")["snapshot"]["whohas"]["resolved"]
            .as_u64()
            .unwrap_or(0);
        if now > found {
            (found, last_found) = (now, Some(killed.elapsed()));
        }
    }
    println!(
        "sites, whohas {whohas}: after r1's death the first new connection was served at {first_served:?}, the last failed at {last_failed:?}; r2 found the last of {found} flows at {last_found:?}"
    );
    let o = downloads.finish(&lab, &r1_own);
    let view = lab.ctl("r2", "status")["snapshot"]["whohas"].clone();
    println!(
        "sites, whohas {whohas}: r1 killed; {} of {DOWNLOADS} downloads complete and intact; of the {} r1 carried that were still running, {} intact; r2 WHOHAS {view}",
        o.intact, o.carried_running, o.carried_intact
    );
    if whohas {
        for site in ["site-a", "site-b", "site-c", "site-d"] {
            let v = lab.ctl(site, "status")["snapshot"]["whohas"].clone();
            println!("{site} answered: {v}");
        }
        // A router that answers and asks nobody, and one that asks, as Prometheus reads them.
        for r in ["site-a", "r2"] {
            let page = lab.sh(r, "curl -sS -m 3 http://127.0.0.1:9464/metrics");
            let page = String::from_utf8_lossy(&page.stdout).into_owned();
            assert!(page.contains("slr_whohas_answered_flows_total"), "{r}");
            if let Err(e) = common::promtool(&page) {
                panic!("promtool check metrics refuses {r}'s page: {e}");
            }
        }
    }
    (o, view)
}

/// Router death with mirroring off and WHOHAS on: at least 99 % of 100 downloads complete
/// intact; with neither (the control), most of the dead router's running downloads break,
/// since the survivor hashes with another seed and sends them to other sites.
#[test]
fn whohas_finds_a_dead_routers_flows_at_the_sites_below() {
    let (w, view) = run_sites(true);
    let resolved = view["resolved"].as_u64().unwrap_or(0);
    assert!(
        resolved as usize >= w.carried_running,
        "r2 found r1's flows at the sites through WHOHAS ({resolved} resolved, {} running)",
        w.carried_running
    );
    w.assert_saved(&run_sites(false).0, DOWNLOADS, 99, "WHOHAS, r1 killed");
}
