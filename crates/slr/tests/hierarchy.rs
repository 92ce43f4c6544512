//! End-to-end tests of hierarchies of Service Level Routers (F3, F4, F5, F6, F7, F11, F13) in
//! network namespaces: the lab's examples/three-level.toml and examples/four-level.toml, brought
//! up by `slr lab up` (certificates, reports over mutual TLS, cost routing at every level), then
//! driven by real curl clients of two client groups. What they check is what an operator would:
//! every request answered from the VIP, requests spread over the ASes, sites and hosts, the path
//! of each request through the routers' flow tables (joined by 5-tuple) ending at the host that
//! answered, each level receiving the traffic tunnelled from its parent (tcpdump on the links
//! and the routers' counters), and replies that never cross a router.
//!
//! Run as root: `cargo test --release -p slr --test hierarchy -- --test-threads=1`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The tests of this file build big labs: one at a time (`Lab::up` serializes labs too, but
/// `slr lab run` does not go through it).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Requests each client makes.
const REQUESTS: usize = 60;

/// An example topology renamed to `name`, with intervals short enough for tests, closed
/// flows kept long enough to trace every request afterwards, and the cost function `f` if
/// given (replacing the example's).
fn example(file: &str, name: &str, f: Option<&str>) -> String {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lab_name = text
        .lines()
        .find(|l| l.starts_with("name = "))
        .expect("[lab] name comes first")
        .to_string();
    let text: String = match f {
        Some(f) => text
            .lines()
            .filter(|l| !l.starts_with("f = "))
            .map(|l| {
                if l == "[control]" {
                    format!("[control]\nf = {f:?}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect(),
        None => text,
    };
    text.replacen(&lab_name, &format!("name = \"{name}\""), 1)
        .replace("report_interval = \"1s\"", "report_interval = \"500ms\"")
        .replace("rebuild_interval = \"1s\"", "rebuild_interval = \"500ms\"")
        + "\n[router_config.flow_table]\ntcp_closing_timeout = \"120s\"\n"
}

/// The hierarchy as `slr lab status --json` shows it.
struct Shape {
    parent: HashMap<String, String>,
    level: HashMap<String, String>,
    group: HashMap<String, String>,
    role: HashMap<String, String>,
}

impl Shape {
    fn of(lab: &Lab) -> Shape {
        let mut s = Shape {
            parent: HashMap::new(),
            level: HashMap::new(),
            group: HashMap::new(),
            role: HashMap::new(),
        };
        for n in lab.status["nodes"].as_array().unwrap() {
            let name = n["name"].as_str().unwrap().to_string();
            s.role
                .insert(name.clone(), n["role"].as_str().unwrap().to_string());
            for (key, map) in [
                ("parent", &mut s.parent),
                ("level", &mut s.level),
                ("group", &mut s.group),
            ] {
                if let Some(v) = n[key].as_str() {
                    map.insert(name.clone(), v.to_string());
                }
            }
        }
        s
    }

    fn with_role(&self, role: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .role
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    fn top(&self) -> String {
        let tops: Vec<String> = self
            .with_role("router")
            .into_iter()
            .filter(|r| !self.parent.contains_key(r))
            .collect();
        assert_eq!(tops.len(), 1, "one top router: {tops:?}");
        tops[0].clone()
    }

    /// The routers above a node, top first.
    fn ancestors(&self, node: &str) -> Vec<String> {
        let mut chain = Vec::new();
        let mut cur = self.parent.get(node);
        while let Some(p) = cur {
            chain.push(p.clone());
            cur = self.parent.get(p);
        }
        chain.reverse();
        chain
    }

    /// The router of `level` above a host.
    fn above(&self, host: &str, level: &str) -> Option<String> {
        self.ancestors(host)
            .into_iter()
            .find(|r| self.level.get(r).map(String::as_str) == Some(level))
    }
}

/// One answered request: who answered and the 5-tuple's client side.
struct Answer {
    client: String,
    served_by: String,
    /// `ip:port` of the client as the server saw it.
    peer: String,
}

/// `REQUESTS` curl requests from each client (clients in parallel, one shell loop each);
/// every one must be answered by a host, as the VIP, to the VIP curl dialled.
fn requests_from_every_client(lab: &Lab, shape: &Shape, vip: Ipv4Addr) -> Vec<Answer> {
    let clients = shape.with_role("client");
    let outputs: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                // One line per request: the body's fields, then curl's remote address.
                let cmd = format!(
                    "for i in $(seq {REQUESTS}); do r=$(curl -sS -m 5 --noproxy '*' -w ' remote=%{{remote_ip}}' http://{vip}/) && echo $r || echo FAILED; done"
                );
                s.spawn(move || (c.clone(), lab.sh(c, &cmd)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut answers = Vec::new();
    for (client, out) in outputs {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            REQUESTS,
            "{client}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in lines {
            assert!(
                !line.contains("FAILED"),
                "{client}: a request failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                field(line, "remote"),
                Some(vip.to_string().as_str()),
                "{client} connected to the VIP: {line}"
            );
            assert_eq!(
                field(line, "vip"),
                Some(vip.to_string().as_str()),
                "{client}: the server answered as the VIP: {line}"
            );
            let peer = field(line, "client").expect("client=").to_string();
            assert!(
                peer.starts_with(&format!("{}:", lab.addr(&client))),
                "{client}: the host saw the client's own address: {line}"
            );
            answers.push(Answer {
                client: client.clone(),
                served_by: field(line, "served-by").expect("served-by=").to_string(),
                peer,
            });
        }
    }
    answers
}

/// Every router's flow table: (router, client `ip:port`) -> next hop, for TCP flows to `vip`:80.
fn flow_tables(lab: &Lab, shape: &Shape, vip: Ipv4Addr) -> HashMap<(String, String), String> {
    let mut next = HashMap::new();
    for r in shape.with_role("router") {
        let sock = lab.dir().join(format!("{r}.sock"));
        let o = Command::new(slr())
            .arg("ctl")
            .arg(&sock)
            .args(["flows", "--json", "--all"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "slr ctl {r} flows: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        for f in v["flows"].as_array().unwrap() {
            if f["protocol"] == "tcp" && f["virtual_host"] == format!("{vip}:80") {
                next.insert(
                    (r.clone(), f["client"].as_str().unwrap().to_string()),
                    f["next_hop"].as_str().unwrap().to_string(),
                );
            }
        }
    }
    next
}

/// The path of a client's flow from the top router to a host, by the flow tables.
fn trace(shape: &Shape, tables: &HashMap<(String, String), String>, peer: &str) -> Vec<String> {
    let mut at = shape.top();
    let mut path = vec![at.clone()];
    for _ in 0..shape.role.len() {
        let Some(next) = tables.get(&(at.clone(), peer.to_string())) else {
            path.push("?".into());
            break;
        };
        path.push(next.clone());
        if shape.role.get(next).map(String::as_str) != Some("router") {
            break;
        }
        at = next.clone();
    }
    path
}

/// A capture on the link of every router and host, and of every client (their replies).
fn captures(lab: &Lab, shape: &Shape) -> BTreeMap<String, Capture> {
    let mut caps = BTreeMap::new();
    // On the wire, at the core's end of each link: a node's XDP program (a host's strips the
    // tunnels) acts before a capture on the node's own interface would see the packet.
    for role in ["router", "host"] {
        for n in shape.with_role(role) {
            caps.insert(n.clone(), lab.capture_toward(&n, "ip"));
        }
    }
    for c in shape.with_role("client") {
        caps.insert(c.clone(), lab.capture(&c, "eth0", "tcp and src port 80"));
    }
    caps
}

/// Brings up an example, sends traffic from every client and checks everything the module
/// doc lists. `levels` are the router levels from the top down; `f` the cost function the
/// test uses (the examples' own weigh the measured load and round-trip times, which makes
/// the spread vary from run to run); `group_as`, where each client group must go.
fn hierarchy_works(file: &str, name: &str, levels: &[&str], f: &str, group_as: &[(&str, &str)]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(name, &example(file, name, Some(f)));
    let shape = Shape::of(&lab);
    let vip = lab.vip(0);
    let subnet = lab.status["virtual_hosts"][0]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let top = shape.top();
    assert_eq!(shape.level[&top], levels[0]);
    for r in shape.with_role("router") {
        let depth = shape.ancestors(&r).len();
        assert_eq!(
            shape.level[&r], levels[depth],
            "{r} is at depth {depth}: level from lab status"
        );
    }
    for h in shape.with_role("host") {
        assert_eq!(
            shape
                .level
                .get(shape.parent.get(&h).expect("hosts have a parent")),
            Some(&"site".to_string()),
            "{h}'s parent is a site router"
        );
    }
    let groups: BTreeSet<&String> = shape.group.values().collect();
    assert_eq!(groups.len(), 2, "two client groups: {:?}", shape.group);

    // The top router routes (lab up waited for it; this bounds it again).
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .curl("c1", &format!("http://{vip}/"))
            .is_ok())
        .is_some(),
        "the VIP answers through {top}"
    );

    let caps = captures(&lab, &shape);
    let answers = requests_from_every_client(&lab, &shape, vip);
    let tables = flow_tables(&lab, &shape, vip);
    let files: BTreeMap<String, std::path::PathBuf> =
        caps.into_iter().map(|(n, c)| (n, c.stop())).collect();

    // Every client group got its traffic answered.
    for g in &groups {
        let members: Vec<&String> = shape
            .group
            .iter()
            .filter(|(_, x)| x == g)
            .map(|(c, _)| c)
            .collect();
        let n = answers
            .iter()
            .filter(|a| members.contains(&&a.client))
            .count();
        assert_eq!(n, REQUESTS * members.len(), "group {g}");
    }

    // Spread over both ASes, at least 3 sites and several hosts.
    let per = |level: &str| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for a in &answers {
            let key = if level == "host" {
                Some(a.served_by.clone())
            } else {
                shape.above(&a.served_by, level)
            };
            *m.entry(key.unwrap_or_else(|| panic!("{} has no {level} router", a.served_by)))
                .or_default() += 1;
        }
        m
    };
    let (ases, sites, hosts) = (per("as"), per("site"), per("host"));
    // Client location (F13): the top router steers each group by its own entries.
    for (group, want) in group_as {
        for a in answers
            .iter()
            .filter(|a| shape.group.get(&a.client).map(String::as_str) == Some(*group))
        {
            assert_eq!(
                shape.above(&a.served_by, "as").as_deref(),
                Some(*want),
                "group {group} ({}) goes to {want}, got {}",
                a.client,
                a.served_by
            );
        }
    }
    eprintln!("per as {ases:?}\nper site {sites:?}\nper host {hosts:?}");
    assert_eq!(ases.len(), 2, "both ASes serve: {ases:?}");
    assert!(sites.len() >= 3, "at least 3 sites serve: {sites:?}");
    assert!(hosts.len() >= 4, "several hosts serve: {hosts:?}");

    // The path of every request, through the routers' flow tables joined by 5-tuple, goes
    // down one level at a time and ends at the host that answered.
    for a in &answers {
        let path = trace(&shape, &tables, &a.peer);
        assert_eq!(
            path.last(),
            Some(&a.served_by),
            "{} ({}) -> {} was answered by {}",
            a.client,
            a.peer,
            path.join(" -> "),
            a.served_by
        );
        assert_eq!(path.len(), levels.len() + 1, "{path:?}");
        for pair in path.windows(2) {
            assert_eq!(
                shape.parent.get(&pair[1]),
                Some(&pair[0]),
                "each hop is a child of the previous: {path:?}"
            );
        }
    }
    let sample = &answers[0];
    eprintln!(
        "{}:{} -> {}",
        sample.client,
        sample.peer.rsplit(':').next().unwrap(),
        trace(&shape, &tables, &sample.peer).join(" -> ")
    );

    // Each level received the traffic tunnelled from its parent, and from nobody else; only
    // the top router received it plain. Hosts that served got tunnels from their site router.
    let top_addr = lab.addr(&top);
    assert!(
        count_packets(
            &files[&top],
            &format!("tcp and dst host {vip} and dst port 80")
        ) >= answers.len(),
        "{top} received the clients' requests plain"
    );
    assert_eq!(
        count_packets(&files[&top], &format!("ip proto 4 and dst host {top_addr}")),
        0,
        "nobody tunnels to the top router"
    );
    let served: BTreeSet<&String> = answers.iter().map(|a| &a.served_by).collect();
    for (node, file) in &files {
        let Some(parent) = shape.parent.get(node) else {
            continue;
        };
        let (me, p) = (lab.addr(node), lab.addr(parent));
        let from_parent = count_packets(
            file,
            &format!("ip proto 4 and src host {p} and dst host {me}"),
        );
        let from_others = count_packets(
            file,
            &format!("ip proto 4 and dst host {me} and not src host {p}"),
        );
        let plain = count_packets(file, &format!("dst net {subnet} and not ip proto 4"));
        eprintln!("{node}: {from_parent} tunnelled from {parent}");
        assert_eq!(from_others, 0, "{node} gets tunnels from {parent} only");
        assert_eq!(plain, 0, "{node} gets VIP traffic only in tunnels");
        let carried = shape.role[node] == "router"
            && served.iter().any(|h| shape.ancestors(h).contains(node));
        if served.contains(node) || carried {
            assert!(from_parent > 0, "{node} received tunnels from {parent}");
        }
    }
    for r in shape.with_role("router") {
        let terminated = lab.counter(&r, "tunnels_terminated");
        let tunnelled = lab.counter(&r, "packets_tunneled");
        eprintln!("{r}: terminated {terminated}, tunnelled {tunnelled}");
        assert!(tunnelled > 0, "{r} tunnels to its children");
        if r == top {
            assert_eq!(terminated, 0, "{r} has no parent");
        } else if served.iter().any(|h| shape.ancestors(h).contains(&r)) {
            assert!(terminated > 0, "{r} terminates its parent's tunnels");
            // The first packets of each flow reach the core; an established flow's later
            // packets are re-encapsulated by the router's XDP program.
            let in_kernel = lab.fast_path_count(&r, "retunnelled");
            eprintln!("{r}: {in_kernel} of its parent's tunnels re-encapsulated in XDP");
            assert_eq!(lab.fast_path_enabled(&r), fast_path_expected());
            if fast_path_expected() {
                assert!(
                    in_kernel > 0,
                    "{r} re-encapsulates established flows in the kernel"
                );
            }
        }
    }

    // Replies: straight from the hosts to the clients, from the VIP, never through a router.
    for c in shape.with_role("client") {
        let from_vip = count_packets(&files[&c], &format!("src host {vip}"));
        let other = count_packets(&files[&c], &format!("not src host {vip}"));
        assert!(from_vip > 0, "{c} got replies from the VIP");
        assert_eq!(other, 0, "{c} saw only the VIP as source");
    }
    for r in shape.with_role("router") {
        let replies = count_packets(
            &files[&r],
            &format!(
                "src host {vip} and src port 80 and not dst host {}",
                lab.addr(&r)
            ),
        );
        assert_eq!(replies, 0, "no reply to a client crossed {r}");
    }
}

#[test]
fn three_levels_spread_tunnel_and_answer_from_the_vip() {
    // The example's region preference, without the load and RTT terms: below the top,
    // children of equal cost share new flows by rendezvous hashing of the flow.
    hierarchy_works(
        "three-level.toml",
        "e2e-h3",
        &["network", "as", "site"],
        "cost + (has(labels.region) && labels.region != group ? 10.0 : 0.0)",
        &[("east", "as1"), ("west", "as2")],
    );
}

#[test]
fn four_levels_spread_tunnel_and_answer_from_the_vip() {
    hierarchy_works(
        "four-level.toml",
        "e2e-h4",
        &["network", "as", "region", "site"],
        "cost",
        &[],
    );
}

/// `slr lab run` on the three-level example: a passing summary with the spread per level and
/// a path per client; and nothing left behind.
#[test]
fn lab_run_shows_spread_and_paths() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::env::temp_dir().join("slr-e2e-hrun.toml");
    std::fs::write(&file, example("three-level.toml", "e2e-hrun", None)).unwrap();
    let _ = Command::new(slr())
        .args(["lab", "down", "e2e-hrun"])
        .output();
    let out = Command::new(slr())
        .args(["lab", "run"])
        .arg(&file)
        .args(["--requests", "20", "--timeout", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "slr lab run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "requests   80 made, 0 failed",
        "per group  east (c1 c2) 40: as1 40 as2 0   west (c3 c4) 40: as1 0 as2 40",
        "per as     as1 ",
        "per site   site-a ",
        "80 of 80 answered requests traced",
        "each ends at the host that answered",
        "from any other node 0; VIP packets outside a tunnel below the top 0",
        "client saw source 10.99.0.1 on 100% of replies",
        "result     PASS",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    let paths: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("path     c"))
        .collect();
    assert_eq!(paths.len(), 4, "a path per client:\n{stdout}");
    for p in paths {
        let hops: Vec<&str> = p.split(" -> ").collect();
        assert_eq!(hops.len(), 5, "client, net, AS, site, host: {p}");
        assert!(hops[1] == "net" && hops[2].starts_with("as") && hops[3].starts_with("site-"));
    }
    assert!(!std::path::Path::new("/run/slr-lab/e2e-hrun").exists());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("slr-e2e-hrun-"));
}

/// A topology error stops `lab up` before anything is built, naming the key and the value.
#[test]
fn bad_hierarchy_is_refused_before_anything_is_built() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = example("three-level.toml", "e2e-hbad", None).replace(
        "level = \"as\"\nparent = \"net\"\nlabels = { region = \"east\" }",
        "level = \"as\"\nparent = \"site-a\"\nlabels = { region = \"east\" }",
    );
    let file = std::env::temp_dir().join("slr-e2e-hbad.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(slr())
        .args(["lab", "up"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nodes[3].parent: cycle as1 -> site-a -> as1"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/run/slr-lab/e2e-hbad").exists());
}

/// A middle router terminates only its parent's tunnels. A client that sends it IP-in-IP
/// (inner: a UDP datagram to the VIP's echo port) gets nothing back: the packets are dropped
/// and counted as `untrusted_tunnel`, and nothing reaches a host. The same packets with the
/// parent's address as outer source (spoofed from the client: the data plane trusts the
/// outer source, as every IP-in-IP, GRE or GUE endpoint does; BCP 38 filtering at the edge
/// is what stops such spoofing) are tunnelled on and answered: the check could see a
/// delivery.
#[test]
fn forged_tunnels_to_a_middle_router_are_dropped_counted_and_go_nowhere() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = "e2e-forged";
    let lab = Lab::up(name, &example("three-level.toml", name, None));
    let vip = lab.vip(0);
    let (as1, net) = (lab.addr("as1"), lab.addr("net"));
    let before = lab.drops("as1", "untrusted_tunnel");
    let in_kernel_before = lab.fast_path_count("as1", "untrusted_tunnel");
    let forge = |outer_src: Option<Ipv4Addr>, port: u16| {
        lab.in_ns("c1", move || {
            let reply = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
            reply
                .set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let me: Ipv4Addr = "10.200.1.2".parse().unwrap();
            let mut udp = [0u8; 14];
            udp[0..2].copy_from_slice(&port.to_be_bytes());
            udp[2..4].copy_from_slice(&7u16.to_be_bytes());
            udp[4..6].copy_from_slice(&14u16.to_be_bytes());
            udp[8..14].copy_from_slice(b"forged");
            let inner = ipv4_packet(me, vip, 17, 9, false, &udp);
            let to = std::net::SocketAddr::from((as1, 0)).into();
            for i in 0..20u16 {
                match outer_src {
                    // The kernel writes the outer header, from the client's own address.
                    None => {
                        let raw = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::RAW,
                            Some(socket2::Protocol::from(4)),
                        )
                        .unwrap();
                        raw.send_to(&inner, &to).unwrap();
                    }
                    // The whole outer header is ours (IPPROTO_RAW implies IP_HDRINCL).
                    Some(src) => {
                        let raw = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::RAW,
                            Some(socket2::Protocol::from(255)),
                        )
                        .unwrap();
                        let outer = ipv4_packet(src, as1, 4, 100 + i, false, &inner);
                        raw.send_to(&outer, &to).unwrap();
                    }
                }
            }
            let mut buf = [0u8; 512];
            reply
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    };
    let answer = forge(None, 40021);
    let dropped = lab.drops("as1", "untrusted_tunnel") - before;
    println!(
        "forged: 20 tunnels from the client to as1: {dropped} dropped as untrusted_tunnel, answer {answer:?}"
    );
    assert_eq!(answer, None, "a forged tunnel reached a server");
    assert!(dropped >= 20, "every forged tunnel counted: {dropped}");
    let in_kernel = lab.fast_path_count("as1", "untrusted_tunnel") - in_kernel_before;
    println!("forged: {in_kernel} of them dropped in the kernel by as1's XDP program");
    if fast_path_expected() {
        assert!(in_kernel >= 20, "dropped by XDP: {in_kernel}");
    }

    let answer = forge(Some(net), 40022);
    println!("forged: the same with net's address as outer source: answer {answer:?}");
    let answer = answer.expect("tunnels from the parent's address are terminated and routed on");
    assert!(answer.starts_with("served-by=h"), "{answer}");
    assert_eq!(
        lab.drops("as1", "untrusted_tunnel") - before,
        dropped,
        "the parent's tunnels are not counted as untrusted"
    );
}
