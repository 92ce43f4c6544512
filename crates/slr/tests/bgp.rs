//! The virtual subnets in BGP (issue 12, part 2): two routers announce the same subnet through
//! BIRD to the core's BIRD (the clients' access router), which installs one multipath route and
//! spreads connections over both; a router that dies (`kill -9`) or stops (SIGTERM) is
//! withdrawn, and its connections continue through the other (both choose by Maglev with the
//! same seed, so a moved connection keeps its host); BIRD dying under a router is reported and
//! repaired while the router forwards; a backup router (lower local preference) takes over
//! only when the primary goes. Real BIRD, real kernels' routes, real clients.

mod common;

use common::{core_next_hops, finish_download, signal, start_download, wait_until, Lab};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn anycast(name: &str, bgp_extra: &str) -> String {
    let bgp = format!("hold_time = \"3s\"\nbfd_interval = \"100ms\"\n{bgp_extra}");
    common::anycast_topology(name, "maglev", 3, &bgp, "")
}

/// Polls (every 5 ms, at most `limit`) until `f` holds; the time it took.
fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The client flows (from c1; health probes come from the router itself) in a router's table,
/// by the client's address and port: each connection through that router.
fn client_flows(lab: &Lab, router: &str) -> BTreeSet<String> {
    let c1 = format!("{}:", lab.addr("c1"));
    lab.ctl(router, "flows")["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["client"].as_str())
        .filter(|c| c.starts_with(&c1))
        .map(str::to_owned)
        .collect()
}

/// How many client flows `router` holds now that it did not hold in `before`.
fn new_flows(lab: &Lab, router: &str, before: &BTreeSet<String>) -> usize {
    client_flows(lab, router).difference(before).count()
}

fn bgp_status(lab: &Lab, router: &str) -> serde_json::Value {
    lab.ctl(router, "status")["snapshot"]["bgp"].clone()
}

fn metric(lab: &Lab, router: &str, family: &str) -> f64 {
    let o = lab.sh(router, "curl -sS -m 3 http://127.0.0.1:9464/metrics");
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {family} in the metrics of {router}:\n{text}"))
}

fn served_by(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("served-by="))
        .unwrap_or_default()
        .to_string()
}

/// Both routers announce; the core's route has both as next hops; connections go through
/// both; `slr ctl` and the metrics show the announcements and the sessions. Then one router
/// is killed (SIGKILL) in the middle of 12 downloads (64 MiB at 40 MB/s each): its route is gone
/// from the core within the hold time (in practice at once: BIRD dies with the router and its
/// sessions close), every download moves on and completes intact through the other router, and
/// new connections are served; the times to the first new connection and to the last download
/// moving on are printed.
#[test]
fn two_routers_announce_the_vip_and_a_killed_one_is_withdrawn_at_once() {
    let name = "bgp-ecmp";
    let lab = Lab::up(name, &anycast(name, ""));
    let (r1, r2) = (lab.addr("r1"), lab.addr("r2"));
    let hops = core_next_hops(&lab);
    assert_eq!(
        hops,
        BTreeSet::from([r1, r2]),
        "one multipath route through both routers"
    );
    for r in ["r1", "r2"] {
        // The router reads BIRD's sessions twice a second.
        wait_until(Duration::from_secs(3), || {
            bgp_status(&lab, r)["sessions"][0]["established"] == true
        });
        let b = bgp_status(&lab, r);
        assert_eq!(b["bird_up"], true, "{r}: {b}");
        assert_eq!(
            b["announced"],
            serde_json::json!(["10.99.0.0/24"]),
            "{r}: {b}"
        );
        assert_eq!(b["sessions"][0]["established"], true, "{r}: {b}");
        assert_eq!(metric(&lab, r, "slr_bgp_bird_up"), 1.0);
        assert_eq!(metric(&lab, r, "slr_bgp_announced_subnets"), 1.0);
        assert_eq!(metric(&lab, r, "slr_bgp_session_established"), 1.0);
    }
    let text = std::process::Command::new(common::slr())
        .args(["ctl", "r1", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("BGP: BIRD up") && text.contains("announcing [10.99.0.0/24]"),
        "slr ctl r1 status shows the announcements:\n{text}"
    );

    // The core spreads connections over both routers (by 5-tuple hash).
    let before = (client_flows(&lab, "r1"), client_flows(&lab, "r2"));
    let vip = lab.vip(0);
    for _ in 0..40 {
        let body = lab.curl("c1", &format!("http://{vip}/")).expect("served");
        assert!(!served_by(&body).is_empty(), "{body}");
    }
    let spread = (
        new_flows(&lab, "r1", &before.0),
        new_flows(&lab, "r2", &before.1),
    );
    println!(
        "40 connections: {} through r1, {} through r2",
        spread.0, spread.1
    );
    assert!(
        spread.0 >= 5 && spread.1 >= 5 && spread.0 + spread.1 >= 38,
        "equal-cost multipath spreads connections over both routers: {spread:?}"
    );

    // Downloads through both routers, then r1 is killed. A small receive buffer at the client
    // (at most 256 KiB in flight), so that its files grow with what crosses the network.
    let o = lab.sh("c1", "sysctl -qw net.ipv4.tcp_rmem='4096 131072 262144'");
    assert!(o.status.success());
    let before = (client_flows(&lab, "r1"), client_flows(&lab, "r2"));
    let downloads: Vec<_> = (0..12)
        .map(|i| start_download(&lab, "c1", &format!("k{i}"), 64, "40M"))
        .collect();
    for (_, _, head) in &downloads {
        common::download_host(head);
    }
    let on_r1 = new_flows(&lab, "r1", &before.0);
    let on_r2 = new_flows(&lab, "r2", &before.1);
    println!("12 downloads: {on_r1} through r1, {on_r2} through r2");
    assert!(on_r1 >= 1, "some downloads go through r1 (the one killed)");
    assert_eq!(on_r1 + on_r2, 12, "each download is one flow at one router");
    let pid = lab.pid("r1", "router");
    let size = |b: &String| std::fs::metadata(b).map_or(0, |m| m.len());
    let at_kill: Vec<u64> = downloads.iter().map(|(_, b, _)| size(b)).collect();
    let t0 = Instant::now();
    signal(pid, "KILL");
    let withdrawn = poll(Duration::from_secs(5), || {
        !core_next_hops(&lab).contains(&r1)
    })
    .expect("r1's route is withdrawn");
    let since_kill = t0.elapsed();
    println!(
        "kill -9 r1: its route left the core {:.1} ms after the kill (hold time 3 s, BFD 3 x 100 ms)",
        withdrawn.as_secs_f64() * 1e3
    );
    assert!(
        since_kill < Duration::from_secs(3),
        "withdrawn within the hold time: {since_kill:?}"
    );
    assert_eq!(core_next_hops(&lab), BTreeSet::from([r2]));
    let t_new = Instant::now();
    let body = lab
        .curl("c1", &format!("http://{vip}/"))
        .expect("a new connection is served after the kill");
    println!(
        "first new connection after the kill served by {} in {:.1} ms",
        served_by(&body),
        t_new.elapsed().as_secs_f64() * 1e3
    );
    // Every download moves on again: its file grows by more than twice the receive buffer.
    let mut resumed = vec![None; downloads.len()];
    while t0.elapsed() < Duration::from_secs(10) && resumed.iter().any(Option::is_none) {
        for (i, (_, b, _)) in downloads.iter().enumerate() {
            let total = 64u64 << 20;
            if resumed[i].is_none() && (size(b) > at_kill[i] + (512 << 10) || size(b) == total) {
                resumed[i] = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let last = resumed
        .iter()
        .map(|r| r.expect("every download moves on after the kill"))
        .max()
        .unwrap();
    println!(
        "the last of the 12 downloads moved on {:.0} ms after the kill",
        last.as_secs_f64() * 1e3
    );
    let failed = new_connections_failing(&lab, 20);
    assert_eq!(failed, 0, "every new connection after the kill is served");
    for (child, body, _) in downloads {
        finish_download(child, &body, 64);
    }
    println!("all 12 downloads completed intact (r2 chose their hosts again by Maglev)");
}

/// Of `n` new connections from c1 (2 s each at most), how many fail.
fn new_connections_failing(lab: &Lab, n: usize) -> usize {
    let vip = lab.vip(0);
    (0..n)
        .filter(|_| {
            !lab.sh("c1", &format!("curl -sS -m 2 http://{vip}/"))
                .status
                .success()
        })
        .count()
}

/// The control: the same two routers behind a static multipath route (no BGP). A killed router
/// stays in the core's route, and the new connections hashed to it fail.
#[test]
fn without_bgp_a_killed_router_keeps_its_share_of_new_connections() {
    let name = "bgp-none";
    let topology =
        anycast(name, "").replace("[bgp]\nhold_time = \"3s\"\nbfd_interval = \"100ms\"\n", "");
    assert!(!topology.contains("[bgp]"));
    let lab = Lab::up(name, &topology);
    signal(lab.pid("r1", "router"), "KILL");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.sh("core", "ip route show 10.99.0.0/24");
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(route.contains(&lab.addr("r1").to_string()), "{route}");
    let failed = new_connections_failing(&lab, 20);
    println!("static routes, r1 killed: {failed} of 20 new connections failed");
    assert!(
        failed >= 3,
        "without BGP the dead router keeps its share: {failed} of 20 failed"
    );
}

/// SIGTERM: the router withdraws its subnet when the stop begins, while it still drains its
/// established flows, so new connections move to the other router before it exits.
#[test]
fn a_stopping_router_withdraws_before_it_exits() {
    let name = "bgp-stop";
    let extra = "";
    let topology = format!(
        "{}\n[router_config.router]\ndrain_period = \"20s\"\n",
        anycast(name, extra)
    );
    let lab = Lab::up(name, &topology);
    let (r1, r2) = (lab.addr("r1"), lab.addr("r2"));
    assert_eq!(core_next_hops(&lab), BTreeSet::from([r1, r2]));
    // Downloads keep r2 draining for a while.
    let downloads: Vec<_> = (0..8)
        .map(|i| start_download(&lab, "c1", &format!("s{i}"), 16, "4M"))
        .collect();
    for (_, _, head) in &downloads {
        common::download_host(head);
    }
    let pid = lab.pid("r2", "router");
    signal(pid, "TERM");
    let withdrawn = poll(Duration::from_secs(3), || {
        !core_next_hops(&lab).contains(&r2)
    })
    .expect("r2's route is withdrawn when the stop begins");
    let still_running = std::fs::metadata(format!("/proc/{pid}")).is_ok();
    println!(
        "SIGTERM r2: withdrawn after {:.1} ms, r2 still running: {still_running}",
        withdrawn.as_secs_f64() * 1e3
    );
    assert!(
        still_running,
        "the route went before the router exited (it drains for up to 20 s)"
    );
    let before = client_flows(&lab, "r1");
    let vip = lab.vip(0);
    for _ in 0..10 {
        lab.curl("c1", &format!("http://{vip}/"))
            .expect("new connections are served while r2 stops");
    }
    assert!(
        new_flows(&lab, "r1", &before) >= 10,
        "new connections go through r1 only"
    );
    for (child, body, _) in downloads {
        finish_download(child, &body, 16);
    }
}

/// BIRD killed under a router: the router reports it (`slr ctl`, slr_bgp_bird_up,
/// slr_bgp_bird_restarts_total), starts it again, and is announced again; it forwards all along
/// (the other router carries new connections meanwhile).
#[test]
fn birds_death_is_reported_and_repaired_while_the_router_forwards() {
    let name = "bgp-bird";
    let lab = Lab::up(name, &anycast(name, ""));
    let r1 = lab.addr("r1");
    let bird = bgp_status(&lab, "r1")["bird_pid"]
        .as_i64()
        .expect("BIRD's pid in slr ctl r1 status") as i32;
    signal(bird, "KILL");
    poll(Duration::from_secs(3), || {
        !core_next_hops(&lab).contains(&r1)
    })
    .expect("r1's route goes with its BIRD");
    let vip = lab.vip(0);
    lab.curl("c1", &format!("http://{vip}/"))
        .expect("served while r1's BIRD is down");
    wait_until(Duration::from_secs(5), || {
        bgp_status(&lab, "r1")["bird_restarts"].as_u64() >= Some(1)
    })
    .expect("the router restarts BIRD");
    assert!(metric(&lab, "r1", "slr_bgp_bird_restarts_total") >= 1.0);
    let back = wait_until(Duration::from_secs(15), || {
        core_next_hops(&lab).contains(&r1)
    })
    .expect("r1 is announced again");
    println!("r1's BIRD killed: restarted and announced again in {back:?}");
    assert_eq!(bgp_status(&lab, "r1")["bird_up"], true);
    assert_eq!(metric(&lab, "r1", "slr_bgp_bird_up"), 1.0);
    for _ in 0..10 {
        lab.curl("c1", &format!("http://{vip}/")).expect("served");
    }

    // A hung speaker (BIRD frozen, as on a machine that stops answering): BFD takes its route
    // away within 3 intervals of 100 ms, well inside the 3 s hold time.
    let r2 = lab.addr("r2");
    let bird2 = bgp_status(&lab, "r2")["bird_pid"]
        .as_i64()
        .expect("r2's BIRD") as i32;
    signal(bird2, "STOP");
    let t = poll(Duration::from_secs(5), || {
        !core_next_hops(&lab).contains(&r2)
    });
    signal(bird2, "CONT");
    let t = t.expect("a frozen speaker's route is withdrawn");
    println!(
        "r2's BIRD frozen: its route left the core after {:.0} ms (BFD 3 x 100 ms; hold time 3 s)",
        t.as_secs_f64() * 1e3
    );
    assert!(t < Duration::from_secs(3), "within the hold time: {t:?}");
}

/// BIRD that cannot start under a router (its program missing, as on a machine without
/// bird2): the router says so (`slr ctl` status with the error, slr_bgp_bird_up 0), tries
/// again every second, and forwards what reaches it; the core routes the subnet by the other
/// router alone.
#[test]
fn a_bird_that_cannot_start_is_reported_and_the_router_forwards() {
    let name = "bgp-nobird";
    let lab = Lab::up(name, &anycast(name, ""));
    let (r1, r2, vip) = (lab.addr("r1"), lab.addr("r2"), lab.vip(0));
    let path = lab.router_config("r1");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("bird = \"bird\""), "{text}");
    std::fs::write(
        &path,
        text.replace("bird = \"bird\"", "bird = \"/nonexistent/bird\""),
    )
    .unwrap();
    let o = std::process::Command::new(common::slr())
        .args(["lab", "restart", "r1", "--lab", name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    poll(Duration::from_secs(5), || {
        core_next_hops(&lab) == BTreeSet::from([r2])
    })
    .expect("the core routes the subnet by r2 alone");
    // (The restarted router's control socket comes up a moment after it starts.)
    wait_until(Duration::from_secs(10), || {
        lab.ctl_args("r1", &["status"])
            .ok()
            .and_then(|v| v["snapshot"]["bgp"]["bird_restarts"].as_u64())
            >= Some(2)
    })
    .expect("r1 runs, and tries again every second");
    let status = bgp_status(&lab, "r1");
    println!("r1 without BIRD: {status}");
    assert_eq!(status["bird_up"], false);
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/bird")),
        "the error names the program: {status}"
    );
    assert_eq!(metric(&lab, "r1", "slr_bgp_bird_up"), 0.0);
    let text = lab.ctl_args("r1", &["status"]);
    assert!(text.is_ok(), "r1 answers slr ctl");
    // r1 forwards what reaches it: the core sends the VIP (a /32, more specific than the
    // announced /24) to r1 for a moment.
    let before = client_flows(&lab, "r1");
    let o = lab.sh("core", &format!("ip route add {vip}/32 via {r1}"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for _ in 0..5 {
        lab.curl("c1", &format!("http://{vip}/"))
            .expect("served through r1 without BIRD");
    }
    let through_r1 = new_flows(&lab, "r1", &before);
    let _ = lab.sh("core", &format!("ip route del {vip}/32 via {r1}"));
    assert!(through_r1 >= 5, "r1 carried the connections ({through_r1})");
}

/// A router withdraws a subnet when it has no next hop that takes new flows (every host
/// drained here), and announces it again when one comes back.
#[test]
fn a_router_without_a_live_next_hop_withdraws() {
    let name = "bgp-drain";
    let lab = Lab::up(name, &anycast(name, ""));
    let r1 = lab.addr("r1");
    for h in ["h1", "h2", "h3"] {
        lab.ctl_args("r1", &["drain", h]).expect("drain");
    }
    let t = poll(Duration::from_secs(3), || {
        !core_next_hops(&lab).contains(&r1)
    })
    .expect("r1 withdraws when no host takes new flows");
    println!(
        "every host drained at r1: withdrawn after {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    assert_eq!(bgp_status(&lab, "r1")["announced"], serde_json::json!([]));
    assert_eq!(metric(&lab, "r1", "slr_bgp_announced_subnets"), 0.0);
    let vip = lab.vip(0);
    let before = client_flows(&lab, "r2");
    for _ in 0..10 {
        lab.curl("c1", &format!("http://{vip}/"))
            .expect("served by r2");
    }
    assert!(
        new_flows(&lab, "r2", &before) >= 10,
        "every new connection through r2"
    );
    lab.ctl_args("r1", &["undrain", "h2"]).expect("undrain");
    poll(Duration::from_secs(5), || {
        core_next_hops(&lab).contains(&r1)
    })
    .expect("r1 announces again once a host takes new flows");
}

/// Primary/backup by local preference: the core routes only to the primary while it lives; a
/// killed primary hands every connection to the backup.
#[test]
fn a_backup_router_takes_over_only_when_the_primary_goes() {
    let name = "bgp-backup";
    let lab = Lab::up(name, &anycast(name, "backup = [\"r2\"]"));
    let (r1, r2) = (lab.addr("r1"), lab.addr("r2"));
    assert_eq!(
        core_next_hops(&lab),
        BTreeSet::from([r1]),
        "only the primary is in the core's route"
    );
    assert_eq!(
        bgp_status(&lab, "r2")["announced"],
        serde_json::json!(["10.99.0.0/24"]),
        "the backup announces too"
    );
    let vip = lab.vip(0);
    let before = client_flows(&lab, "r2");
    for _ in 0..10 {
        lab.curl("c1", &format!("http://{vip}/")).expect("served");
    }
    assert_eq!(
        new_flows(&lab, "r2", &before),
        0,
        "nothing through the backup"
    );
    signal(lab.pid("r1", "router"), "KILL");
    let took = poll(Duration::from_secs(5), || {
        core_next_hops(&lab) == BTreeSet::from([r2])
    })
    .expect("the backup takes over");
    println!(
        "primary killed: the backup's route in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    for _ in 0..10 {
        lab.curl("c1", &format!("http://{vip}/"))
            .expect("served by the backup");
    }
    assert!(new_flows(&lab, "r2", &before) >= 10);
}
