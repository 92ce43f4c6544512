//! End-to-end tests of the shortcut (MISSION F10) in the three-level lab (examples/
//! three-level.toml: net -> as1/as2 -> four sites -> ten hosts), with `[control] shortcut`
//! on and, in the same test, off: how many packets of each connection the routers below the
//! ingress see, how many bytes of a 100 MiB upload cross them, and a shortcut flushed at the
//! ingress in the middle of an upload.
//!
//! Run as root: `cargo test --release -p slr --test shortcut -- --nocapture --test-threads=1`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// New connections per run.
const CONNECTIONS: usize = 1000;

/// The three-level example renamed, with short intervals, closed flows kept long enough to be
/// counted afterwards, and the shortcut on or off.
fn topology(name: &str, shortcut: bool) -> String {
    let path = format!(
        "{}/../../examples/three-level.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let control = if shortcut {
        "[control]\nshortcut = true\n"
    } else {
        "[control]\n"
    };
    text.replacen("name = \"three-level\"", &format!("name = \"{name}\""), 1)
        .replacen("[control]\n", control, 1)
        .replace("report_interval = \"1s\"", "report_interval = \"500ms\"")
        + "\n[router_config.flow_table]\ntcp_closing_timeout = \"120s\"\n"
}

/// Per router: packets and bytes of c1's TCP flows to the VIP's port 80 it holds.
fn client_traffic(lab: &Lab, router: &str) -> (u64, u64, usize) {
    let c1 = format!("{}:", lab.addr("c1"));
    let page = lab
        .ctl_args(router, &["flows", "--all"])
        .unwrap_or_else(|e| panic!("slr ctl {router} flows: {e}"));
    let (mut packets, mut bytes, mut flows) = (0, 0, 0);
    for f in page["flows"].as_array().into_iter().flatten() {
        let client = f["client"].as_str().unwrap_or("");
        if f["protocol"] == "tcp" && client.starts_with(&c1) {
            packets += f["packets"].as_u64().unwrap_or(0);
            bytes += f["bytes"].as_u64().unwrap_or(0);
            flows += 1;
        }
    }
    (packets, bytes, flows)
}

/// Packets per connection at each level (network, as, site), after `CONNECTIONS` new
/// connections from c1 (`Connection: close`: one connection per request), and the rate.
fn per_connection(lab: &Lab) -> (BTreeMap<&'static str, f64>, f64) {
    let url = format!("http://{}/?n=[1-{CONNECTIONS}]", lab.vip(0));
    let routers = ["net", "as1", "as2", "site-a", "site-b", "site-c", "site-d"];
    let cost = |r: &str| (cpu_seconds(lab.pid(r, "router")), report_bytes(lab, r));
    let before: Vec<(f64, u64)> = routers.iter().map(|r| cost(r)).collect();
    let start = Instant::now();
    let o = lab.sh(
        "c1",
        &format!(
            "curl -sS -m 120 -H 'Connection: close' -o /dev/null -w '%{{http_code}}\\n' '{url}'"
        ),
    );
    let secs = start.elapsed().as_secs_f64();
    let codes = String::from_utf8_lossy(&o.stdout);
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(
        ok,
        CONNECTIONS,
        "every request answered: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // What the run cost each level: the routers' CPU (all their threads) and the bytes they
    // sent their parents on the control channel (reports every 500 ms, and the shortcut's
    // signals and keepalives).
    let after: Vec<(f64, u64)> = routers.iter().map(|r| cost(r)).collect();
    let delta = |names: &[&str]| {
        let (mut cpu, mut bytes) = (0.0, 0);
        for (i, r) in routers.iter().enumerate() {
            if names.contains(r) {
                cpu += after[i].0 - before[i].0;
                bytes += after[i].1 - before[i].1;
            }
        }
        (cpu, bytes)
    };
    let mut levels = BTreeMap::new();
    for (level, routers) in [
        ("1 network (ingress)", &["net"][..]),
        ("2 as", &["as1", "as2"][..]),
        ("3 site", &["site-a", "site-b", "site-c", "site-d"][..]),
    ] {
        let (mut packets, mut flows) = (0, 0);
        for r in routers {
            let (p, _, f) = client_traffic(lab, r);
            packets += p;
            flows += f;
        }
        let (cpu, bytes) = delta(routers);
        println!(
            "  {level}: {packets} packets of {flows} flows; {:.1} us CPU and {:.1} control bytes up per connection ({secs:.1} s)",
            cpu * 1e6 / CONNECTIONS as f64,
            bytes as f64 / CONNECTIONS as f64
        );
        levels.insert(level, packets as f64 / CONNECTIONS as f64);
    }
    (levels, CONNECTIONS as f64 / secs)
}

/// CPU seconds (user and system) of a process, all its threads.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// Bytes a router sent its parents on the control channel (0 for the top router).
fn report_bytes(lab: &Lab, router: &str) -> u64 {
    let page = lab.ctl(router, "metrics");
    page["text"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("slr_control_report_bytes_sent_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `kill -9` of the ingress mid-upload and a restart: its XDP program goes on forwarding the
/// shortcut meanwhile, and the restarted core takes the flow back from the pinned map with its
/// shortcut (F17a with F10): the upload completes intact, still past the routers below.
fn ingress_restart_keeps_the_shortcut(lab: &Lab, upload: &Upload) {
    let (file, expect, size) = (&upload.path, upload.expect(), upload.size);
    let url = format!("http://{}/upload", lab.vip(0));
    let child = lab.spawn(
        "c1",
        &format!(
            "curl -sS -m 120 --limit-rate 20M --data-binary @{} {url}",
            file.display()
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before = below_ingress_bytes(lab);
    let o = std::process::Command::new(slr())
        .args([
            "lab", "restart", "net", "--signal", "KILL", "--lab", "sc-xdp",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "slr lab restart net: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let below = below_ingress_bytes(lab) - before;
    let restored = lab.counter("net", "flows_restored");
    println!(
        "  net killed (-9) and restarted mid-upload: {restored} flows restored, {below} bytes below the ingress after"
    );
    assert!(
        answer.starts_with(&expect),
        "upload intact across the restart: {answer}"
    );
    assert!(restored >= 1, "the restarted core took the flows back");
    assert!(
        (below as f64) < 0.01 * size as f64,
        "the shortcut survived the restart"
    );
}

/// UDP pinned flows get shortcuts too: 200 datagrams of one flow, 5 ms apart, all echoed from
/// the VIP by one host; the routers below the ingress see only the first few (those sent before
/// the signal came: UDP is not held).
fn udp_takes_the_shortcut(lab: &Lab) {
    let vip = lab.vip(0);
    let (port, answers) = lab.in_ns("c1", move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answers = std::collections::BTreeSet::new();
        for i in 0..200u32 {
            s.send_to(&i.to_be_bytes(), (vip, 7)).unwrap();
            let mut buf = [0u8; 2048];
            let (n, from) = s.recv_from(&mut buf).expect("UDP answer");
            assert_eq!(
                from.ip(),
                std::net::IpAddr::V4(vip),
                "answered from the VIP"
            );
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            answers.insert(text.split_whitespace().next().unwrap_or("").to_owned());
            std::thread::sleep(Duration::from_millis(5));
        }
        (s.local_addr().unwrap().port(), answers.len())
    });
    let c1 = format!("{}:{port}", lab.addr("c1"));
    let mut below = 0;
    for r in ["as1", "as2", "site-a", "site-b", "site-c", "site-d"] {
        let page = lab.ctl_args(r, &["flows", "--all"]).unwrap();
        for f in page["flows"].as_array().into_iter().flatten() {
            if f["client"] == c1.as_str() && f["protocol"] == "udp" {
                below += f["packets"].as_u64().unwrap_or(0);
            }
        }
    }
    println!("  UDP: 200 datagrams of one flow, {below} of them crossed the routers below the ingress (both levels)");
    assert_eq!(answers, 1, "one host answered them all");
    assert!(below >= 2, "the first datagram went down the hierarchy");
    assert!(below <= 20, "the rest took the shortcut: {below}");
}

/// The routers below the ingress that hold c1's one established flow at the ingress (the
/// upload in progress), seen more than 5 s ago (the half-open timeout of the copies below).
fn copies_below_of_the_upload(lab: &Lab) -> Vec<&'static str> {
    let c1 = format!("{}:", lab.addr("c1"));
    let flows = |r: &str| {
        lab.ctl_args(r, &["flows", "--all"])
            .unwrap_or_else(|e| panic!("slr ctl {r} flows: {e}"))["flows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let upload: Vec<String> = flows("net")
        .iter()
        .filter(|f| {
            f["state"] == "established"
                && f["protocol"] == "tcp"
                && f["client"].as_str().is_some_and(|c| c.starts_with(&c1))
        })
        .map(|f| f["client"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(upload.len(), 1, "one upload at the ingress: {upload:?}");
    ["as1", "as2", "site-a", "site-b", "site-c", "site-d"]
        .into_iter()
        .filter(|r| {
            flows(r).iter().any(|f| {
                f["client"] == upload[0].as_str() && f["age_secs"].as_f64().unwrap_or(0.0) > 5.0
            })
        })
        .collect()
}

/// Bytes of c1's flows the routers below the ingress carried: their cores' counts, plus what
/// their XDP programs forwarded (0 with the fast path off).
fn below_ingress_bytes(lab: &Lab) -> u64 {
    ["as1", "as2", "site-a", "site-b", "site-c", "site-d"]
        .iter()
        .map(|r| client_traffic(lab, r).1 + lab.fast_path_bytes(r, "forwarded"))
        .sum()
}

/// F10: with the shortcut the routers below the ingress see about one packet per connection
/// (the SYN: the ingress holds the next packets until the signal comes) and next to nothing
/// of a 100 MiB upload; without it they see every packet. A shortcut flushed mid-upload sends
/// the rest down the hierarchy, to the same host: the upload completes intact.
#[test]
fn later_packets_skip_the_routers_below_the_ingress() {
    let mut table = Vec::new();
    for (shortcut, fast_path) in [(false, "off"), (true, "off"), (true, "xdp")] {
        let name = match (shortcut, fast_path) {
            (false, _) => "sc-off",
            (true, "off") => "sc-on",
            _ => "sc-xdp",
        };
        // The slow path everywhere for the comparison: the cores count every packet of every
        // flow (a fast path forwards the established packets uncounted by the core). Then the
        // shortcut again with the XDP fast path, as deployed: the routers below the ingress
        // still see only SYNs (never offloaded), so their cores' counts stay exact; the ingress
        // installs the shortcut flows in its XDP map, with the host's address.
        let lab = Lab::up_with(name, &topology(name, shortcut), &["--fast-path", fast_path]);
        println!(
            "shortcut {}, fast path {fast_path}:",
            if shortcut { "on" } else { "off" }
        );
        let (levels, rate) = per_connection(&lab);
        table.push((name, levels.clone(), rate));
        if !shortcut {
            for (level, n) in levels.iter().skip(1) {
                assert!(
                    *n >= 4.0,
                    "without the shortcut {level} sees every packet: {n:.2}"
                );
            }
            continue;
        }
        for (level, n) in levels.iter().skip(1) {
            assert!(
                *n <= 1.2,
                "{level}: {n:.2} packets per connection (at most 1.2)"
            );
        }

        if fast_path == "off" {
            udp_takes_the_shortcut(&lab);
        }
        // Only ingresses tunnel to the hosts, never a router in between: its own health probes
        // of a child keep their path through that child (the signal is kept, not installed),
        // so no host drops a tunnel as untrusted and no probe fails.
        let kept: u64 = ["as1", "as2"]
            .iter()
            .map(|r| lab.counter(r, "shortcuts_kept"))
            .sum();
        println!("  signals for the AS routers' own health probes, kept on their path: {kept}");
        // The shortcut's families, as Prometheus's own checker reads them, at every level.
        for r in ["net", "as1", "site-a"] {
            let page = lab.sh(r, "curl -sS -m 3 http://127.0.0.1:9464/metrics");
            let page = String::from_utf8_lossy(&page.stdout).into_owned();
            assert!(
                page.contains("slr_shortcut_relay_signals_total")
                    && page.contains("slr_shortcut_resignals_total"),
                "{r}"
            );
            if let Err(e) = common::promtool(&page) {
                panic!("promtool check metrics refuses {r}'s page: {e}");
            }
        }
        assert!(
            kept > 0,
            "the AS routers' probes of their sites were signalled"
        );
        for h in (1..=10).map(|i| format!("h{i}")) {
            assert_eq!(
                lab.host_drops(&h, "untrusted_source") + lab.host_fast_path(&h, "untrusted_source"),
                0,
                "{h} got tunnels only from its site and the ingress"
            );
        }

        // A 100 MiB upload: what crosses the routers below the ingress.
        let upload = Upload::new(name, 100 << 20);
        let (file, expect, size) = (&upload.path, upload.expect(), upload.size);
        let before = below_ingress_bytes(&lab);
        let url = format!("http://{}/upload", lab.vip(0));
        let o = lab.sh(
            "c1",
            &format!("curl -sS -m 120 --data-binary @{} {url}", file.display()),
        );
        let answer = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(answer.starts_with(&expect), "upload intact: {answer}");
        let below = below_ingress_bytes(&lab) - before;
        let share = below as f64 / size as f64;
        println!(
            "  100 MiB upload: {below} bytes through the routers below the ingress ({:.4} %)",
            share * 100.0
        );
        if share >= 0.01 {
            // What the signals did, level by level, before the assertion below fails.
            for r in ["net", "as1", "as2", "site-a", "site-b", "site-c", "site-d"] {
                let c = &lab.ctl(r, "stats")["snapshot"]["counters"];
                let keys = [
                    "shortcut_signals",
                    "shortcut_resignals",
                    "shortcut_signals_dropped",
                    "shortcuts_installed",
                    "shortcuts_relayed",
                    "shortcuts_refused_unknown_flow",
                    "shortcuts_refused_not_pinned",
                    "shortcut_hold_expired",
                ];
                let shown: Vec<String> = keys.iter().map(|k| format!("{k} {}", c[k])).collect();
                println!("  {r}: {}", shown.join(", "));
                println!(
                    "  {r} relay: {}",
                    lab.ctl(r, "parents")["control"]["shortcut_relay"]
                );
            }
        }
        assert!(
            share < 0.01,
            "less than 1 % of the upload below the ingress"
        );
        if fast_path == "xdp" {
            let forwarded = lab.fast_path_forwarded("net");
            println!("  the ingress's XDP program forwarded {forwarded} packets");
            assert!(
                forwarded > 10_000,
                "the ingress's fast path carried the shortcut"
            );
            ingress_restart_keeps_the_shortcut(&lab, &upload);
            continue;
        }

        // Flushed mid-upload: the next packets go down the hierarchy, to the same host, and
        // the site, seeing the flow again, signals it anew: the ingress gets its shortcut back.
        // The upload takes about 10 s; the flush comes after 7, when the copies below (which
        // saw only its SYN: half-open, 5 s) live only because their routers' keepalives found
        // the flow at the ingress.
        let child = lab.spawn(
            "c1",
            &format!(
                "curl -sS -m 120 --limit-rate 10M --data-binary @{} {url}",
                file.display()
            ),
        );
        std::thread::sleep(Duration::from_secs(7));
        let held = copies_below_of_the_upload(&lab);
        println!("  after 7 s, the upload's flow is still held below the ingress by {held:?}");
        assert_eq!(
            held.len(),
            2,
            "one AS and one site kept their copy alive past its half-open timeout: {held:?}"
        );
        let before = below_ingress_bytes(&lab);
        let sites = ["site-a", "site-b", "site-c", "site-d"];
        let resignals = |lab: &Lab| -> u64 {
            sites
                .iter()
                .map(|r| lab.counter(r, "shortcut_resignals"))
                .sum()
        };
        let (resignals_before, installed_before) =
            (resignals(&lab), lab.counter("net", "shortcuts_installed"));
        let flushed = lab
            .ctl_args("net", &["shortcuts", "flush"])
            .expect("slr ctl net shortcuts flush");
        println!("  flushed mid-upload: {}", flushed["flushed"]);
        assert!(flushed["flushed"].as_u64().unwrap_or(0) >= 1);
        let out = child.wait_with_output().unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = below_ingress_bytes(&lab) - before;
        let (resignalled, reinstalled) = (
            resignals(&lab) - resignals_before,
            lab.counter("net", "shortcuts_installed") - installed_before,
        );
        println!(
            "  after the flush, {after} bytes crossed the routers below the ingress; the site signalled the flow again {resignalled} time(s), the ingress installed {reinstalled}"
        );
        assert!(
            answer.starts_with(&expect),
            "upload intact after the flush: {answer}"
        );
        assert!(
            after > 0,
            "after the flush the upload went down the hierarchy"
        );
        assert!(
            resignalled >= 1 && reinstalled >= 1,
            "the site signalled the flow again and the ingress took its shortcut back"
        );
        assert!(
            after < 10 << 20,
            "the rest of the upload skipped the hierarchy again ({after} bytes below)"
        );
    }
    println!("| level | packets per connection: shortcut off | on | on, XDP |");
    let (off, on, xdp) = (&table[0].1, &table[1].1, &table[2].1);
    for (level, n) in off {
        println!(
            "| {level} | {n:.2} | {:.2} | {:.2} |",
            on[level], xdp[level]
        );
    }
    for (name, _, rate) in &table {
        println!("new connections per second (one curl, Connection: close), {name}: {rate:.0}");
    }
}

/// `slr report` from c1's namespace as `name` (with the lab's certificate of `cert`), sending
/// `signal`: its output and whether it succeeded.
fn forge(lab: &Lab, pki: &std::path::Path, name: &str, cert: &str, signal: &str) -> (bool, String) {
    let net = lab.addr("net");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("c1"), slr()])
        .args([
            "report",
            "--parent",
            &format!("net@{net}:7400"),
            "--name",
            name,
        ])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{cert}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{cert}.key")))
        .args(["--subnet", "10.99.0.0/24:load=0.5", "--shortcut", signal])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// The network router's refusals of a reason (state update protocol).
fn refusals(lab: &Lab, reason: &str) -> u64 {
    let page = lab.ctl("net", "metrics");
    let text = page["text"].as_str().unwrap_or_default().to_owned();
    let series = format!("slr_control_refused_total{{reason=\"{reason}\"}}");
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// F10, bad input: signals that would redirect a running upload are refused and counted, by
/// the network router, from the other AS (the flow is not pinned to it), for a subnet outside
/// that AS's gateway entry, and from a certificate of another CA; the upload goes on to its
/// first host, intact.
#[test]
fn forged_shortcut_signals_are_refused_and_the_flow_keeps_its_host() {
    let name = "sc-forge";
    let lab = Lab::up_with(name, &topology(name, true), &["--fast-path", "off"]);
    let upload = Upload::new(name, 100 << 20);
    let (file, expect) = (&upload.path, upload.expect());
    let url = format!("http://{}/upload", lab.vip(0));
    let child = lab.spawn(
        "c1",
        &format!(
            "curl -sS -m 120 --limit-rate 10M --data-binary @{} -w ' port=%{{local_port}}' {url}",
            file.display()
        ),
    );
    // The upload's flow (the one c1 flow at the network router with megabytes already), and
    // the AS it is pinned to.
    let c1 = format!("{}:", lab.addr("c1"));
    let mut client = None;
    wait_until(Duration::from_secs(10), || {
        let page = lab.ctl_args("net", &["flows", "--all"]).unwrap();
        client = page["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| {
                f["protocol"] == "tcp"
                    && f["client"].as_str().is_some_and(|c| c.starts_with(&c1))
                    && f["bytes"].as_u64().unwrap_or(0) > 1 << 20
            })
            .and_then(|f| f["client"].as_str().map(str::to_owned));
        client.is_some()
    })
    .expect("the upload's flow appears");
    let client = client.unwrap();
    let holder = ["as1", "as2"]
        .into_iter()
        .find(|r| {
            let page = lab.ctl_args(r, &["flows", "--all"]).unwrap();
            page["flows"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["client"] == client.as_str())
        })
        .expect("an AS holds the upload's flow")
        .to_owned();
    let other = if holder == "as1" { "as2" } else { "as1" };
    let vip = lab.vip(0);
    // A host below the other AS: where a forger would send the flow.
    let target = lab.addr(if other == "as1" { "h1" } else { "h6" });
    println!("upload {client} pinned to {holder}; {other} forges signals to {target}");
    let pki = std::path::PathBuf::from(format!("/run/slr-lab/{name}/pki"));

    let before = refusals(&lab, "not_pinned");
    let (ok, text) = forge(
        &lab,
        &pki,
        other,
        other,
        &format!("{client}-{vip}:80/tcp@{target}"),
    );
    println!("not pinned to {other}: {}", text.trim());
    assert!(!ok && text.contains("not_pinned"), "{text}");
    assert_eq!(refusals(&lab, "not_pinned"), before + 1);

    let before = refusals(&lab, "foreign_subnet");
    let (ok, text) = forge(
        &lab,
        &pki,
        other,
        other,
        &format!("{client}-10.98.0.1:80/tcp@{target}"),
    );
    println!("foreign subnet: {}", text.trim());
    assert!(!ok && text.contains("foreign_subnet"), "{text}");
    assert_eq!(refusals(&lab, "foreign_subnet"), before + 1);

    // Another CA's certificate for the same name: refused in the handshake.
    let rogue = std::env::temp_dir().join(format!("slr-e2e-{name}-rogue"));
    let _ = std::fs::remove_dir_all(&rogue);
    let dir = rogue.display().to_string();
    for args in [vec!["ca", "init", &dir], vec!["ca", "issue", &dir, other]] {
        let o = std::process::Command::new(slr())
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::copy(pki.join("ca.pem"), rogue.join("lab-ca.pem")).unwrap();
    let before = refusals(&lab, "unknown_ca");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("c1"), slr()])
        .args([
            "report",
            "--parent",
            &format!("net@{}:7400", lab.addr("net")),
            "--name",
            other,
        ])
        .arg("--ca")
        .arg(rogue.join("lab-ca.pem"))
        .arg("--cert")
        .arg(rogue.join(format!("{other}.pem")))
        .arg("--key")
        .arg(rogue.join(format!("{other}.key")))
        .args(["--subnet", "10.99.0.0/24:load=0.5", "--shortcut"])
        .arg(format!("{client}-{vip}:80/tcp@{target}"))
        .output()
        .unwrap();
    println!("another CA: {}", String::from_utf8_lossy(&o.stderr).trim());
    assert!(!o.status.success());
    wait_until(Duration::from_secs(3), || {
        refusals(&lab, "unknown_ca") > before
    })
    .expect("the handshake refusal is counted");
    let _ = std::fs::remove_dir_all(&rogue);

    let out = child.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.starts_with(&expect), "upload intact: {answer}");
    let port = answer
        .rsplit("port=")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    assert!(client.ends_with(&format!(":{port}")));
    // Its bytes went to the host its own AS's site picked, never to the forger's target.
    let page = lab.ctl_args(&holder, &["flows", "--all"]).unwrap();
    assert!(page["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f["client"] == client.as_str()));
}
