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
        println!("  {level}: {packets} packets of {flows} flows");
        levels.insert(level, packets as f64 / CONNECTIONS as f64);
    }
    (levels, CONNECTIONS as f64 / secs)
}

/// A 100 MiB pattern for uploads, and what the lab's server answers for it.
fn upload_file(name: &str) -> (std::path::PathBuf, String, u64) {
    let size = 100usize << 20;
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let file = std::env::temp_dir().join(format!("slr-e2e-{name}-up.bin"));
    std::fs::write(&file, &data).unwrap();
    let expect = format!("bytes={size} fnv64={:016x}", common::fnv64(&data));
    (file, expect, size as u64)
}

/// Bytes of c1's flows the routers below the ingress hold.
fn below_ingress_bytes(lab: &Lab) -> u64 {
    ["as1", "as2", "site-a", "site-b", "site-c", "site-d"]
        .iter()
        .map(|r| client_traffic(lab, r).1)
        .sum()
}

/// F10: with the shortcut the routers below the ingress see about one packet per connection
/// (the SYN: the ingress holds the next packets until the signal comes) and next to nothing
/// of a 100 MiB upload; without it they see every packet. A shortcut flushed mid-upload sends
/// the rest down the hierarchy, to the same host: the upload completes intact.
#[test]
fn later_packets_skip_the_routers_below_the_ingress() {
    let mut table = Vec::new();
    for shortcut in [false, true] {
        let name = if shortcut { "sc-on" } else { "sc-off" };
        // The slow path everywhere: the cores count every packet of every flow (a fast path
        // would forward the established packets of the runs without the shortcut uncounted).
        let lab = Lab::up_with(name, &topology(name, shortcut), &["--fast-path", "off"]);
        println!("shortcut {}:", if shortcut { "on" } else { "off" });
        let (levels, rate) = per_connection(&lab);
        table.push((shortcut, levels.clone(), rate));
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

        // A 100 MiB upload: what crosses the routers below the ingress.
        let (file, expect, size) = upload_file(name);
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
        assert!(
            share < 0.01,
            "less than 1 % of the upload below the ingress"
        );

        // Flushed mid-upload: the rest goes down the hierarchy, to the same host.
        let child = lab.spawn(
            "c1",
            &format!(
                "curl -sS -m 120 --limit-rate 20M --data-binary @{} {url}",
                file.display()
            ),
        );
        std::thread::sleep(Duration::from_secs(2));
        let before = below_ingress_bytes(&lab);
        let flushed = lab
            .ctl_args("net", &["shortcuts", "flush"])
            .expect("slr ctl net shortcuts flush");
        println!("  flushed mid-upload: {}", flushed["flushed"]);
        assert!(flushed["flushed"].as_u64().unwrap_or(0) >= 1);
        let out = child.wait_with_output().unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = below_ingress_bytes(&lab) - before;
        println!("  after the flush, {after} bytes crossed the routers below the ingress");
        assert!(
            answer.starts_with(&expect),
            "upload intact after the flush: {answer}"
        );
        assert!(
            after > 10 << 20,
            "after the flush the upload went down the hierarchy"
        );
        let _ = std::fs::remove_file(&file);
    }
    println!("| level | packets per connection, shortcut off | on |");
    let (off, on) = (&table[0].1, &table[1].1);
    for (level, n) in off {
        println!("| {level} | {n:.2} | {:.2} |", on[level]);
    }
    println!(
        "new connections per second (one curl, Connection: close): off {:.0}, on {:.0}",
        table[0].2, table[1].2
    );
}
