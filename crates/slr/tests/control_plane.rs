//! End-to-end tests of the state update protocol and the route tables it feeds (F11, F12, F13),
//! in labs of network namespaces brought up by `slr lab up` from inline topologies:
//!
//! - refused peers (another CA, an expired certificate, a name that is no child, a child
//!   advertising a foreign subnet), each refused and counted by the parent, which keeps
//!   serving its real children and the clients;
//! - RTT steering: `[fault] delay` on one child makes the RTT the health checks measure grow,
//!   and the cost `s.load + r` (r = cost + rtt_weight x rtt) sends new flows to the other one;
//!   without the delay new flows go to both;
//! - the gateway table fetched over HTTPS from `slr gateway-site` (F12): a table of one child,
//!   then of two, then garbage and an unreachable site (the last good table stays);
//! - the aggregation G of the AS routers seen at the network router: the same loads make the
//!   network router pick one AS with G = min and the other with G = mean.
//!
//! Lab names start with `rf-`. Run as root:
//! `cargo test --release -p slr --test control_plane -- --test-threads=1 --nocapture`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// T and R of every lab here: children report every 500 ms, routers rebuild every 500 ms.
const CONTROL: &str = "[control]\nreport_interval = \"500ms\"\nrebuild_interval = \"500ms\"\n";

/// Port of every router's control listener in a lab (`10.200.k.2:7400`).
const CONTROL_PORT: u16 = 7400;

/// What a router's control thread knows (`slr ctl NODE children --json`, its `control`).
fn control(lab: &Lab, router: &str) -> Value {
    lab.ctl(router, "children")["control"].clone()
}

/// A child's row in a router's control view.
fn child<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no child {name} in {view}"))
}

/// The group-less route table entry of `subnet`, if any.
fn entry<'a>(view: &'a Value, subnet: &str) -> Option<&'a Value> {
    view["table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subnet"] == subnet && e["client_group"] == "")
}

/// The chosen band of the entry of `subnet` (empty if there is no entry).
fn chosen(view: &Value, subnet: &str) -> Vec<String> {
    entry(view, subnet)
        .map(|e| {
            e["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["chosen"] == true)
                .map(|c| c["child"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Candidates of the entry of `subnet` with their cost F.
fn costs(view: &Value, subnet: &str) -> BTreeMap<String, f64> {
    entry(view, subnet)
        .map(|e| {
            e["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["child"].as_str().unwrap().to_string(),
                        c["cost"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A metric of a subnet in a list of `{subnet, metrics}` rows (a report, or `upward`).
fn subnet_metric(rows: &Value, subnet: &str, metric: &str) -> Option<f64> {
    rows.as_array()?
        .iter()
        .find(|r| r["subnet"] == subnet)
        .and_then(|r| r["metrics"][metric].as_f64())
}

/// One series of a router's metrics page (`slr ctl NODE metrics`): `name{labels}` exactly as
/// printed; 0 when the page does not have it.
fn metric(lab: &Lab, router: &str, series: &str) -> f64 {
    // `slr ctl NODE metrics` prints the page as is (with or without --json).
    let o = Command::new(slr())
        .arg("ctl")
        .arg(lab.dir().join(format!("{router}.sock")))
        .arg("metrics")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "slr ctl {router} metrics: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `slr_control_refused_total{reason="..."}` of a router.
fn refused(lab: &Lab, router: &str, reason: &str) -> f64 {
    metric(
        lab,
        router,
        &format!("slr_control_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// `slr_control_gateway_fetches_total{result="..."}` of a router.
fn fetches(lab: &Lab, router: &str, result: &str) -> f64 {
    metric(
        lab,
        router,
        &format!("slr_control_gateway_fetches_total{{result=\"{result}\"}}"),
    )
}

/// `n` requests to the VIP from `client`, one curl each (a new flow each), one after the other;
/// the answers counted by the host that served them ("FAILED" for requests without an answer).
fn requests(lab: &Lab, client: &str, vip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    let out = lab.sh(
        client,
        &format!(
            "for i in $(seq {n}); do curl -sS -m 5 --noproxy '*' http://{vip}/ || echo FAILED; done"
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let who = field(line, "served-by").unwrap_or("FAILED").to_string();
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(
        served.values().sum::<usize>(),
        n,
        "{n} answers or failures from {client}: {text}"
    );
    served
}

/// Waits (bounded) for `f`; panics with `what` and the time allowed when it does not happen.
fn wait_for(what: &str, limit: Duration, f: impl FnMut() -> bool) -> Duration {
    wait_until(limit, f).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// A fresh scratch directory for certificates and files of one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("slr-e2e-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `slr ARGS` on this machine (outside the lab), asserting success.
fn slr_ok(args: &[&str]) -> String {
    let o = Command::new(slr()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "slr {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `slr ARGS` in a node's namespace.
fn slr_in(lab: &Lab, node: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(node)])
        .arg(slr())
        .args(args)
        .output()
        .unwrap()
}

/// A process this test started in a lab namespace; stopped (by its pid) when dropped, so that
/// a failing test leaves nothing behind.
struct Proc(Option<Child>);

impl Proc {
    /// Stops the process now.
    fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if child.try_wait().unwrap().is_none() {
            signal(child.id() as i32, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.end();
    }
}

/// Starts `program ARGS` in a node's namespace (`ip netns exec` execs it: the child's pid is the
/// program's), its output going to `log`.
fn spawn_in(lab: &Lab, node: &str, log: &Path, program: &str, args: &[&str]) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    Proc(Some(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(node), program])
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    ))
}

/// Whether every named child of a router is live and has reported more than `since[name]`
/// times (fresh reports).
fn live_and_reporting(lab: &Lab, router: &str, since: &BTreeMap<String, u64>) -> bool {
    let v = control(lab, router);
    since.iter().all(|(name, n)| {
        let c = child(&v, name);
        c["live"] == true && c["reports"].as_u64().unwrap_or(0) > *n
    })
}

/// The number of reports each named child has had accepted.
fn report_counts(lab: &Lab, router: &str, names: &[&str]) -> BTreeMap<String, u64> {
    let v = control(lab, router);
    names
        .iter()
        .map(|n| (n.to_string(), child(&v, n)["reports"].as_u64().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Refused peers.
// ---------------------------------------------------------------------------------------------

/// A network router over two sites of one host each.
fn refuse_topology() -> String {
    format!(
        r#"
[lab]
name = "rf-refuse"

{CONTROL}
[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "top"
role = "router"
level = "network"

[[nodes]]
name = "site-a"
role = "router"
level = "site"
parent = "top"

[[nodes]]
name = "site-b"
role = "router"
level = "site"
parent = "top"

[[nodes]]
name = "h1"
role = "host"
parent = "site-a"

[[nodes]]
name = "h2"
role = "host"
parent = "site-b"
"#
    )
}

/// One `slr report` to the top router that it must refuse.
struct Probe<'a> {
    what: &'a str,
    /// The reason the parent must count.
    reason: &'a str,
    /// The name said in the Hello.
    name: &'a str,
    /// The CA the prober trusts for the parent's certificate (the lab's).
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    subnets: &'a [&'a str],
}

const REASONS: [&str; 4] = ["unknown_ca", "expired", "unexpected_name", "foreign_subnet"];

/// Sends the probe from c1, then checks: refused, counted under its reason (and no other of
/// [`REASONS`]), the real children still live and reporting, the VIP still answering.
fn probe_is_refused(lab: &Lab, p: &Probe) -> Output {
    let vip = lab.vip(0);
    let parent = format!("top@{}:{CONTROL_PORT}", lab.addr("top"));
    let before: BTreeMap<&str, f64> = REASONS
        .iter()
        .map(|r| (*r, refused(lab, "top", r)))
        .collect();
    let accepted_before = metric(lab, "top", "slr_control_reports_received_total");
    let mut args = vec![
        "report".to_string(),
        "--parent".into(),
        parent,
        "--name".into(),
        p.name.into(),
        "--ca".into(),
        p.ca.display().to_string(),
        "--cert".into(),
        p.cert.display().to_string(),
        "--key".into(),
        p.key.display().to_string(),
    ];
    for s in p.subnets {
        args.push("--subnet".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = slr_in(lab, "c1", &args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "[{}] slr report exit {:?}\n  stdout: {}\n  stderr: {}",
        p.what,
        out.status.code(),
        stdout.trim().replace('\n', "\n          "),
        stderr.trim().replace('\n', "\n          ")
    );
    assert!(!out.status.success(), "{}: slr report must fail", p.what);

    let counted = wait_for(
        &format!("{}: refused_total{{reason={}}} grows", p.what, p.reason),
        Duration::from_secs(5),
        || refused(lab, "top", p.reason) > before[p.reason],
    );
    let after: BTreeMap<&str, f64> = REASONS
        .iter()
        .map(|r| (*r, refused(lab, "top", r)))
        .collect();
    eprintln!(
        "[{}] refused_total before {before:?} after {after:?} (counted within {counted:?})",
        p.what
    );
    for r in REASONS.iter().filter(|r| **r != p.reason) {
        assert_eq!(after[r], before[r], "{}: no {r} refusal", p.what);
    }

    // The parent keeps serving: its real children report (fresh reports after the probe) and
    // are live, and clients' requests through the VIP are answered.
    let since = report_counts(lab, "top", &["site-a", "site-b"]);
    let back = wait_for(
        &format!("{}: site-a and site-b live and reporting again", p.what),
        Duration::from_secs(5),
        || live_and_reporting(lab, "top", &since),
    );
    assert!(metric(lab, "top", "slr_control_reports_received_total") > accepted_before);
    let served = requests(lab, "c1", vip, 10);
    eprintln!(
        "[{}] children live and reporting within {back:?}; 10 requests: {served:?}",
        p.what
    );
    assert!(!served.contains_key("FAILED"), "{}: {served:?}", p.what);
    out
}

/// F11: a parent refuses and counts peers with a certificate of another CA, an expired
/// certificate, a name that is not one of its children, and a child's report of a subnet
/// outside its gateway entry; it keeps serving its real children and the clients.
#[test]
fn refused_peers_are_counted_and_the_parent_keeps_serving() {
    let started = Instant::now();
    let lab = Lab::up("rf-refuse", &refuse_topology());
    let pki = lab.dir().join("pki");
    let pki_s = pki.display().to_string();
    let work = scratch("rf-refuse");
    let ca = pki.join("ca.pem");
    let since = report_counts(&lab, "top", &["site-a", "site-b"]);
    wait_for(
        "site-a and site-b live at the top",
        Duration::from_secs(10),
        || live_and_reporting(&lab, "top", &since),
    );

    // (a) A certificate from another CA, for the name of a real child.
    let other = work.join("other-ca");
    let other_s = other.display().to_string();
    slr_ok(&["ca", "init", &other_s, "--name", "not the lab's CA"]);
    slr_ok(&["ca", "issue", &other_s, "site-a"]);
    probe_is_refused(
        &lab,
        &Probe {
            what: "another CA",
            reason: "unknown_ca",
            name: "site-a",
            ca: ca.clone(),
            cert: other.join("site-a.pem"),
            key: other.join("site-a.key"),
            subnets: &["10.99.0.0/24:load=0.1"],
        },
    );

    // (b) An expired certificate of the lab's CA, for the name of a real child.
    let expired = work.join("expired");
    let expired_s = expired.display().to_string();
    slr_ok(&[
        "ca",
        "issue",
        &pki_s,
        "site-a",
        "--expired",
        "--out",
        &expired_s,
    ]);
    probe_is_refused(
        &lab,
        &Probe {
            what: "expired certificate",
            reason: "expired",
            name: "site-a",
            ca: ca.clone(),
            cert: expired.join("site-a.pem"),
            key: expired.join("site-a.key"),
            subnets: &["10.99.0.0/24:load=0.1"],
        },
    );

    // (c) A valid certificate of the lab's CA for a name that is none of the top's children.
    let stranger = work.join("stranger");
    let stranger_s = stranger.display().to_string();
    slr_ok(&["ca", "issue", &pki_s, "site-x", "--out", &stranger_s]);
    let out = probe_is_refused(
        &lab,
        &Probe {
            what: "unexpected name",
            reason: "unexpected_name",
            name: "site-x",
            ca: ca.clone(),
            cert: stranger.join("site-x.pem"),
            key: stranger.join("site-x.key"),
            subnets: &["10.99.0.0/24:load=0.1"],
        },
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hello refused") && stderr.contains("PermissionDenied"),
        "{stderr}"
    );

    // (d) A real child's own certificate (the lab's files of site-a), reporting its subnet and
    // a foreign one: the foreign subnet is refused, the rest accepted.
    let out = probe_is_refused(
        &lab,
        &Probe {
            what: "foreign subnet",
            reason: "foreign_subnet",
            name: "site-a",
            ca: ca.clone(),
            cert: pki.join("site-a.pem"),
            key: pki.join("site-a.key"),
            subnets: &["10.99.0.0/24:load=0.1", "10.98.0.0/24:load=0.1"],
        },
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("report: 1 subnet(s) accepted")
            && stdout.contains("refused: 10.98.0.0/24 (foreign_subnet)"),
        "{stdout}"
    );
    let v = control(&lab, "top");
    assert!(
        entry(&v, "10.98.0.0/24").is_none() && chosen(&v, "10.98.0.0/24").is_empty(),
        "no route for the foreign subnet: {}",
        v["table"]
    );
    for c in v["children"].as_array().unwrap() {
        assert!(
            subnet_metric(&c["last_report"], "10.98.0.0/24", "load").is_none(),
            "the foreign subnet was not delivered: {c}"
        );
    }
    eprintln!(
        "top table after the probes: {} -> chosen {:?}",
        serde_json::to_string(&costs(&v, "10.99.0.0/24")).unwrap(),
        chosen(&v, "10.99.0.0/24")
    );
    assert!(!chosen(&v, "10.99.0.0/24").is_empty());
    eprintln!("runtime {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. RTT steering.
// ---------------------------------------------------------------------------------------------

/// One router over two equal children, with `extra` appended (its `[router_config]`).
///
/// The children are hosts, not site routers: the lab merges `[router_config]` over *every*
/// router's configuration, and `[fault] delay` must name a next hop of the router it is given
/// to; with site routers below the top no name is a next hop of every router.
fn two_children_topology(name: &str, extra: &str) -> String {
    format!(
        r#"
[lab]
name = "{name}"

{CONTROL}
[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "top"
role = "router"
level = "network"

[[nodes]]
name = "h1"
role = "host"

[[nodes]]
name = "h2"
role = "host"
{extra}"#
    )
}

/// RTTs of both children as measured by the top's health checks (ms; None before a check
/// passed).
fn rtts(lab: &Lab) -> (Option<f64>, Option<f64>) {
    let v = control(lab, "top");
    (
        child(&v, "h1")["rtt_ms"].as_f64(),
        child(&v, "h2")["rtt_ms"].as_f64(),
    )
}

/// Delay added to h2's tunnelled packets.
const DELAY_MS: f64 = 40.0;

/// The cost both RTT labs use: the default F (`s.load + r`, r = cost + rtt_weight x rtt) with
/// 0.05 per ms of RTT. With the default weight (1 per ms) the health checks' sub-millisecond
/// jitter between two equal children (0.2 vs 0.7 ms measured) is wider than the near-equal band
/// (0.1 x ~1.2): one child takes every new flow even without any delay, so the control case
/// could not show a spread. At 0.05 per ms, 40 ms weigh 2.0 (two fully loaded machines) and
/// a millisecond of jitter 0.05, inside the band.
const RTT_COST: &str = "\n[router_config.cost]\nrtt_weight = 0.05\n";

/// F13 proximity: 40 ms of delay on the tunnel to one child shows in the RTT the health checks
/// measure, and the default cost `s.load + r` (r = cost + rtt_weight x rtt) sends >= 90 % of
/// new flows to the other one.
#[test]
fn rtt_steers_new_flows_to_the_undelayed_child() {
    let started = Instant::now();
    let lab = Lab::up(
        "rf-rtt",
        &two_children_topology(
            "rf-rtt",
            &format!("{RTT_COST}\n[router_config.fault]\ndelay = {{ h2 = \"40ms\" }}\n"),
        ),
    );
    let vip = lab.vip(0);
    let took = wait_for(
        "h2's RTT at least the delay, h1's measured",
        Duration::from_secs(15),
        || matches!(rtts(&lab), (Some(_), Some(b)) if b >= DELAY_MS),
    );
    // A few more checks, so that the smoothed RTTs settle.
    std::thread::sleep(Duration::from_secs(2));
    let (h1, h2) = rtts(&lab);
    let (h1, h2) = (h1.unwrap(), h2.unwrap());
    eprintln!("rtt_ms: h1 {h1:.2}, h2 {h2:.2} (h2 >= {DELAY_MS} within {took:?})");
    assert!(h2 >= DELAY_MS, "delayed child's RTT {h2} ms");
    assert!(
        h1 < DELAY_MS / 4.0,
        "undelayed child's RTT {h1} ms is small"
    );
    wait_for(
        "the top's table chooses h1 only",
        Duration::from_secs(5),
        || chosen(&control(&lab, "top"), "10.99.0.0/24") == ["h1"],
    );
    let v = control(&lab, "top");
    eprintln!(
        "top table: costs {:?}, chosen {:?}",
        costs(&v, "10.99.0.0/24"),
        chosen(&v, "10.99.0.0/24")
    );
    let served = requests(&lab, "c1", vip, 100);
    let to_h1 = served.get("h1").copied().unwrap_or(0);
    eprintln!("100 requests: {served:?}; runtime {:?}", started.elapsed());
    assert!(!served.contains_key("FAILED"), "{served:?}");
    assert!(
        to_h1 >= 90,
        "new flows go to the undelayed child: {served:?}"
    );
}

/// The control case of [`rtt_steers_new_flows_to_the_undelayed_child`]: without the delay both
/// RTTs are small and new flows go to both children.
#[test]
fn rtt_control_without_delay_spreads_over_both() {
    let started = Instant::now();
    let lab = Lab::up("rf-rtt0", &two_children_topology("rf-rtt0", RTT_COST));
    let vip = lab.vip(0);
    wait_for("both RTTs measured", Duration::from_secs(15), || {
        matches!(rtts(&lab), (Some(_), Some(_)))
    });
    std::thread::sleep(Duration::from_secs(2));
    let (h1, h2) = rtts(&lab);
    let (h1, h2) = (h1.unwrap(), h2.unwrap());
    let v = control(&lab, "top");
    eprintln!(
        "rtt_ms: h1 {h1:.2}, h2 {h2:.2}; top table: costs {:?}, chosen {:?}",
        costs(&v, "10.99.0.0/24"),
        chosen(&v, "10.99.0.0/24")
    );
    assert!(
        h1 < DELAY_MS / 4.0 && h2 < DELAY_MS / 4.0,
        "small RTTs: {h1} {h2}"
    );
    let served = requests(&lab, "c1", vip, 100);
    eprintln!("100 requests: {served:?}; runtime {:?}", started.elapsed());
    assert!(!served.contains_key("FAILED"), "{served:?}");
    for h in ["h1", "h2"] {
        assert!(
            served.get(h).copied().unwrap_or(0) >= 10,
            "new flows go to both children: {served:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Gateway table over HTTPS (F12).
// ---------------------------------------------------------------------------------------------

/// Refresh period of the gateway table in this test.
const REFRESH: Duration = Duration::from_secs(2);

/// Writes a gateway table file atomically (the site re-reads it per request).
fn write_table(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn gateway_json(version: u64, lab: &Lab, children: &[&str]) -> String {
    let entries: Vec<Value> = children
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c,
                "address": lab.addr(c).to_string(),
                "subnets": ["10.99.0.0/24"],
            })
        })
        .collect();
    serde_json::json!({"version": version, "children": entries}).to_string()
}

/// F12: the top router's children come from a network configuration site over HTTPS (`slr
/// gateway-site`, certificate of the lab's CA); a new table is followed within the refresh
/// period; garbage and an unreachable site are counted and the last good table stays. One
/// router over two hosts, as the lab merges `[router_config.gateways]` into every router (lower
/// routers would take the top's table as theirs); the cost is [`RTT_COST`]'s, so that both
/// children share new flows whenever both are in the table.
#[test]
fn gateway_table_over_https_is_followed_and_the_last_good_one_kept() {
    let started = Instant::now();
    // The site runs in c1's namespace, the lab's first node: 10.200.1.2.
    let site = "10.200.1.2:7443";
    let lab = Lab::up(
        "rf-gw",
        &two_children_topology(
            "rf-gw",
            &format!(
                "{RTT_COST}\n[router_config.gateways]\nurl = \"https://{site}/gateways.json\"\nserver_name = \"cfg\"\nrefresh = \"{}s\"\n",
                REFRESH.as_secs()
            ),
        ),
    );
    assert_eq!(format!("{}:7443", lab.addr("c1")), site);
    let vip = lab.vip(0);
    let work = scratch("rf-gw");
    let pki = lab.dir().join("pki");
    slr_ok(&[
        "ca",
        "issue",
        &pki.display().to_string(),
        "cfg",
        "--out",
        &work.display().to_string(),
    ]);
    let table = work.join("gateways.json");
    let v0 = control(&lab, "top");
    assert_eq!(
        v0["gateway_source"],
        format!("https://{site}/gateways.json")
    );
    eprintln!(
        "before the site runs: gateway_version {}, fetches ok {} unreachable {} invalid {}",
        v0["gateway_version"],
        fetches(&lab, "top", "ok"),
        fetches(&lab, "top", "unreachable"),
        fetches(&lab, "top", "invalid")
    );

    // A table of h1 only.
    write_table(&table, &gateway_json(1, &lab, &["h1"]));
    let (ca_pem, cert, key) = (
        pki.join("ca.pem").display().to_string(),
        work.join("cfg.pem").display().to_string(),
        work.join("cfg.key").display().to_string(),
    );
    let table_s = table.display().to_string();
    let site_args = [
        "gateway-site",
        "--file",
        &table_s,
        "--listen",
        site,
        "--ca",
        &ca_pem,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let gw = spawn_in(&lab, "c1", &work.join("site.log"), slr(), &site_args);
    let t1 = wait_for(
        "gateway table version 1 applied",
        REFRESH + Duration::from_secs(3),
        || control(&lab, "top")["gateway_version"] == 1,
    );
    let ok1 = fetches(&lab, "top", "ok");
    assert!(ok1 >= 1.0);
    wait_for("the table chooses h1 only", Duration::from_secs(3), || {
        chosen(&control(&lab, "top"), "10.99.0.0/24") == ["h1"]
    });
    let served = requests(&lab, "c1", vip, 30);
    eprintln!("version 1 (h1) applied within {t1:?}; 30 requests: {served:?}");
    assert_eq!(
        served.get("h1"),
        Some(&30),
        "only h1 gets flows: {served:?}"
    );

    // Both children.
    let written = Instant::now();
    write_table(&table, &gateway_json(2, &lab, &["h1", "h2"]));
    let t2 = wait_for(
        "gateway table version 2 applied",
        REFRESH + Duration::from_secs(1),
        || control(&lab, "top")["gateway_version"] == 2,
    );
    // h2 comes back as its reporter reconnects (it was refused while removed: back-off of at
    // most 2 s), reports (T) and the table is rebuilt (R): within the refresh period, the
    // back-off and T + R of the write.
    let both_limit = REFRESH + Duration::from_secs(2) + Duration::from_secs(1);
    let mut h2_first = None;
    let left = both_limit.saturating_sub(written.elapsed());
    wait_for("h2 gets new flows again", left, || {
        let s = requests(&lab, "c1", vip, 4);
        if s.contains_key("h2") {
            h2_first = Some(written.elapsed());
        }
        h2_first.is_some()
    });
    let served = requests(&lab, "c1", vip, 40);
    let v = control(&lab, "top");
    eprintln!(
        "version 2 (h1, h2) applied {t2:?} after the write, h2 served {:?} after it; table {:?} chosen {:?}; 40 requests: {served:?}",
        h2_first.unwrap(),
        costs(&v, "10.99.0.0/24"),
        chosen(&v, "10.99.0.0/24")
    );
    assert!(
        served.contains_key("h1") && served.contains_key("h2") && !served.contains_key("FAILED"),
        "both children get flows: {served:?}"
    );

    // Garbage: counted invalid, the last good table stays.
    let invalid0 = fetches(&lab, "top", "invalid");
    write_table(&table, "{\"version\": 3, \"children\": [ this is not json");
    wait_for(
        "invalid fetches counted",
        REFRESH * 2 + Duration::from_secs(1),
        || fetches(&lab, "top", "invalid") >= invalid0 + 2.0,
    );
    let v = control(&lab, "top");
    assert_eq!(v["gateway_version"], 2, "the last good table stays");
    let served = requests(&lab, "c1", vip, 40);
    eprintln!(
        "garbage: invalid {invalid0} -> {}; gateway_version {}; 40 requests: {served:?}",
        fetches(&lab, "top", "invalid"),
        v["gateway_version"]
    );
    assert!(
        served.contains_key("h1") && served.contains_key("h2") && !served.contains_key("FAILED"),
        "flows still reach both children: {served:?}"
    );

    // The site stops: counted unreachable, the last good table stays.
    gw.stop();
    let unreachable0 = fetches(&lab, "top", "unreachable");
    wait_for(
        "unreachable fetches counted",
        REFRESH * 2 + Duration::from_secs(1),
        || fetches(&lab, "top", "unreachable") >= unreachable0 + 2.0,
    );
    let v = control(&lab, "top");
    assert_eq!(v["gateway_version"], 2, "the last good table stays");
    let served = requests(&lab, "c1", vip, 40);
    eprintln!(
        "site stopped: unreachable {unreachable0} -> {}; gateway_version {}; 40 requests: {served:?}",
        fetches(&lab, "top", "unreachable"),
        v["gateway_version"]
    );
    assert!(
        served.contains_key("h1") && served.contains_key("h2") && !served.contains_key("FAILED"),
        "flows still reach both children: {served:?}"
    );
    eprintln!(
        "fetches: ok {}, unreachable {}, invalid {}; runtime {:?}",
        fetches(&lab, "top", "ok"),
        fetches(&lab, "top", "unreachable"),
        fetches(&lab, "top", "invalid"),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. G visible at the network level.
// ---------------------------------------------------------------------------------------------

/// A network router over two AS routers of two sites each, one host per site, with the
/// aggregation `g` on every router (the lab has no per-router `[cost]`).
///
/// F is `s.load` for a child that is a router (its report carries `children`: the load it
/// reports is its G) and `s.flows / 100` for a host, whose established connections the test
/// controls exactly; no smoothing, so that the tables can be computed by hand.
fn g_topology(name: &str, g: &str) -> String {
    format!(
        r#"
[lab]
name = "{name}"

{CONTROL}f = "has(s.children) ? s.load : s.flows / 100.0"
g = "{g}"

[router_config.cost]
damping = 1.0

[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "net"
role = "router"
level = "network"

[[nodes]]
name = "as1"
role = "router"
level = "as"
parent = "net"

[[nodes]]
name = "as2"
role = "router"
level = "as"
parent = "net"

[[nodes]]
name = "sa1"
role = "router"
level = "site"
parent = "as1"

[[nodes]]
name = "sa2"
role = "router"
level = "site"
parent = "as1"

[[nodes]]
name = "sb1"
role = "router"
level = "site"
parent = "as2"

[[nodes]]
name = "sb2"
role = "router"
level = "site"
parent = "as2"

[[nodes]]
name = "h1"
role = "host"
parent = "sa1"

[[nodes]]
name = "h2"
role = "host"
parent = "sa2"

[[nodes]]
name = "h3"
role = "host"
parent = "sb1"

[[nodes]]
name = "h4"
role = "host"
parent = "sb2"
"#
    )
}

/// Holds `n` TCP connections to the host's own VIP (a listener on 10.99.0.1:9000 in its
/// namespace): `2n` established sockets whose local address is in the virtual subnet, which
/// the host agent reports as `flows`.
const HOLD: &str = "import socket, sys, time
n = int(sys.argv[1])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('10.99.0.1', 9000))
l.listen(512)
c = [socket.create_connection(('10.99.0.1', 9000)) for _ in range(n)]
a = [l.accept() for _ in range(n)]
time.sleep(300)
";

/// Connections held per host: h1 idle, h2 busy, h3 and h4 medium. Each is 2 flows, F = flows
/// / 100: h1 0.0, h2 0.8, h3 0.2, h4 0.2.
const HELD: [(&str, usize); 3] = [("h2", 40), ("h3", 10), ("h4", 10)];

/// The AS each host is under.
fn as_of(host: &str) -> &'static str {
    match host {
        "h1" | "h2" => "as1",
        _ => "as2",
    }
}

/// Evaluates G by hand.
fn g_by_hand(g: &str, m: &[f64]) -> f64 {
    match g {
        "math.least(m)" => m.iter().copied().fold(f64::INFINITY, f64::min),
        "mean(m)" => m.iter().sum::<f64>() / m.len() as f64,
        other => panic!("no hand computation for {other}"),
    }
}

/// Brings up the three-level lab with `g` everywhere, arranges the hosts' flows, computes by
/// hand what each AS reports and which AS the network router must choose, and checks the
/// routers' tables and where new flows go.
fn g_decides_at_the_network(lab_name: &str, g: &str, want_as: &str) {
    let started = Instant::now();
    let lab = Lab::up(lab_name, &g_topology(lab_name, g));
    let vip = lab.vip(0);
    let subnet = "10.99.0.0/24";
    let work = scratch(lab_name);
    let holders: Vec<Proc> = HELD
        .iter()
        .map(|(h, n)| {
            let log = work.join(format!("hold-{h}.log"));
            spawn_in(
                &lab,
                h,
                &log,
                "/usr/bin/python3",
                &["-c", HOLD, &n.to_string()],
            )
        })
        .collect();
    // Each site reports its host's flows / 100 (G of one child is that child's cost).
    let sites = [
        ("sa1", "h1", 0.0),
        ("sa2", "h2", 0.8),
        ("sb1", "h3", 0.2),
        ("sb2", "h4", 0.2),
    ];
    let settled = wait_for(
        "the hosts' held connections reported by the sites",
        Duration::from_secs(15),
        || {
            sites.iter().all(|(site, _, want)| {
                let up = control(&lab, site)["upward"].clone();
                subnet_metric(&up, subnet, "load").is_some_and(|l| (l - want).abs() < 0.015)
            })
        },
    );
    // ... and those reports reached the AS routers.
    let reached = wait_for(
        "the sites' loads reported to the AS routers",
        Duration::from_secs(5),
        || {
            [("as1", 0..2), ("as2", 2..4)]
                .into_iter()
                .all(|(asn, range)| {
                    let v = control(&lab, asn);
                    sites[range].iter().all(|(site, _, want)| {
                        subnet_metric(&child(&v, site)["last_report"], subnet, "load")
                            .is_some_and(|l| (l - want).abs() < 0.015)
                    })
                })
        },
    );
    eprintln!(
        "[{g}] sites report the held flows after {settled:?}, the ASes see them {reached:?} later"
    );
    for (site, host, _) in &sites {
        let v = control(&lab, site);
        eprintln!(
            "[{g}] {site}: {host} reports flows {:?} -> {site} reports load {:?}",
            subnet_metric(&child(&v, host)["last_report"], subnet, "flows"),
            subnet_metric(&v["upward"], subnet, "load")
        );
    }

    // By hand, from what the AS routers see: their children's reported loads (F = s.load,
    // no smoothing) give G; the network router's costs are the ASes' reported loads.
    let mut hand: BTreeMap<&str, f64> = BTreeMap::new();
    let mut agreed = None;
    wait_for(
        "the network router's table agrees with the hand-computed one",
        Duration::from_secs(10),
        || {
            hand.clear();
            let mut lines = Vec::new();
            for (asn, kids) in [("as1", ["sa1", "sa2"]), ("as2", ["sb1", "sb2"])] {
                let v = control(&lab, asn);
                let m: Vec<f64> = kids
                    .iter()
                    .map(|k| {
                        subnet_metric(&child(&v, k)["last_report"], subnet, "load")
                            .unwrap_or(f64::NAN)
                    })
                    .collect();
                let reported = subnet_metric(&v["upward"], subnet, "load").unwrap_or(f64::NAN);
                let by_hand = g_by_hand(g, &m);
                lines.push(format!(
                    "{asn}: {}={:.2} {}={:.2} -> G {by_hand:.3} (reports {reported:.3}, table {:?})",
                    kids[0],
                    m[0],
                    kids[1],
                    m[1],
                    costs(&v, subnet)
                ));
                if (by_hand - reported).abs() > 1e-9 {
                    return false;
                }
                hand.insert(asn, reported);
            }
            let net = control(&lab, "net");
            let net_costs = costs(&net, subnet);
            let agrees = hand
                .iter()
                .all(|(a, l)| net_costs.get(*a).is_some_and(|c| (c - l).abs() < 1e-9));
            lines.push(format!(
                "net: costs {net_costs:?}, chosen {:?}",
                chosen(&net, subnet)
            ));
            agreed = Some((lines, chosen(&net, subnet)));
            agrees
        },
    );
    let (lines, net_chosen) = agreed.unwrap();
    for l in &lines {
        eprintln!("[{g}] {l}");
    }
    let (lowest, _) = hand
        .iter()
        .min_by(|a, b| a.1.partial_cmp(b.1).unwrap())
        .unwrap();
    eprintln!("[{g}] by hand the network router picks {lowest}; its table chose {net_chosen:?}");
    assert_eq!(*lowest, want_as, "the arrangement: {hand:?}");
    assert_eq!(net_chosen, [want_as], "net's chosen band");

    let served = requests(&lab, "c1", vip, 40);
    eprintln!(
        "[{g}] 40 requests: {served:?}; runtime {:?}",
        started.elapsed()
    );
    assert!(!served.contains_key("FAILED"), "{served:?}");
    for (h, n) in &served {
        assert_eq!(as_of(h), want_as, "{n} new flows served by {h}: {served:?}");
    }
    for h in holders {
        h.stop();
    }
}

/// With G = min at every router, AS1 (an idle site and a busy one) reports the idle site's
/// load and the network router picks it over AS2 (two medium sites).
#[test]
fn g_min_at_the_as_routers_makes_the_network_pick_the_as_with_an_idle_site() {
    g_decides_at_the_network("rf-gmin", "math.least(m)", "as1");
}

/// With G = mean, the same loads make AS1 report (idle + busy) / 2, above AS2's medium: the
/// network router picks AS2.
#[test]
fn g_mean_at_the_as_routers_makes_the_network_pick_the_as_of_lower_average() {
    g_decides_at_the_network("rf-gmean", "mean(m)", "as2");
}
