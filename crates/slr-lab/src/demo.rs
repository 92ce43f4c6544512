//! `slr lab run`: bring a lab up, send real traffic, show at a glance that it was
//! spread over the hosts and answered by direct server return, and tear it down.
//!
//! The traffic: from every client, `--requests` runs of real `curl` (a new connection
//! each, `-m 5`) to `http://<vip>/` of every virtual host, and a few UDP datagrams to
//! `<vip>:7` (one of 3000 bytes, which travels as IP fragments) whose echoes must come
//! back intact. Meanwhile `tcpdump` records what the core sends to each router and client (on
//! the core's end of their links, so that no XDP program of theirs hides a packet): a reply
//! (source in a virtual subnet, destination a client, plain or inside a tunnel) sent to a
//! router would cross the router, which direct server return forbids; replies seen at the clients
//! show which source address they really carried. After the capture, a few requests go
//! straight to each host's own address, as a latency baseline.
//!
//! The run fails (non-zero exit) if any request or datagram failed, any answer came
//! from another address than the VIP dialled, or any reply crossed a router.
//!
//! In a hierarchy ([`Topology::is_hierarchy`]) the summary also shows how the requests
//! spread per client group and per level (AS, site, ...: the routers above the host that
//! answered), and the path each request took: while the clients run, the routers' flow
//! tables (`slr ctl NODE flows`) are read every second, and each request's 5-tuple (client
//! address and curl's local port, VIP and port 80) is followed from the top router, next hop
//! by next hop, down to a host (`c1:40312 -> net -> as1 -> site-a -> h2`). The captures then
//! also cover the hosts, to show that each router and host received its packets in tunnels
//! from its parent only. The run also fails if a traced path ends at another host than the
//! one that answered, if a lower router or a host received a tunnel from anyone but its
//! parent or a VIP packet outside a tunnel, or if no request could be traced.

use super::configs::{HTTP_PORT, ROUTER_METRICS_PORT, UDP_PORT};
use super::lifecycle::{self, UpOptions};
use super::netns;
use super::pcap;
use super::probe;
use super::state::{self, State};
use super::topology::{Role, Topology};
use super::{check_interrupted, interrupted, sleep_interruptible};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How `lab run` behaves.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// curl requests each client makes to each VIP.
    pub requests_per_client: u32,
    /// Leave the lab up afterwards.
    pub keep: bool,
}

/// Sizes of the UDP datagrams each client sends to each VIP; 3000 bytes is fragmented
/// on the 1500-byte links, so the whole path must carry fragments.
const UDP_SIZES: [usize; 5] = [64, 512, 1400, 3000, 100];
/// Direct requests per client per host for the latency baseline.
const DIRECT_REQUESTS: usize = 3;

/// `slr lab run FILE`.
pub fn run(file: &Path, up_opts: &UpOptions, opts: &DemoOptions) -> Result<()> {
    // `up` tears down by itself if it fails.
    let mut state = lifecycle::up(file, up_opts)?;
    let t = state.topology.clone();
    eprintln!("slr lab: {} is up; sending demo traffic", t.name);
    let outcome = demo(&mut state, opts);
    if let Ok(summary) = &outcome {
        summary.print(&t);
    }
    let down = if opts.keep && !interrupted() {
        println!(
            "lab left up (--keep): slr lab status {0}; slr lab down {0}",
            t.name
        );
        Ok(())
    } else {
        lifecycle::teardown(&state).context("tearing the lab down")
    };
    let summary = match outcome {
        Ok(summary) => summary,
        Err(e) => {
            if let Err(de) = down {
                eprintln!("slr lab: {de:#}");
            }
            return Err(e);
        }
    };
    down?;
    let problems = summary.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("lab run {} failed: {}", t.name, problems.join("; "))
    }
}

/// One curl request's outcome.
#[derive(Debug, Clone)]
struct Request {
    client: String,
    /// The client's address and the local port curl used (with the VIP and port: the
    /// flow's 5-tuple).
    source: Option<SocketAddrV4>,
    /// The VIP it dialled.
    vip: Ipv4Addr,
    url: String,
    /// Host that answered, if it did.
    served_by: Option<String>,
    /// Why it failed, if it did.
    error: Option<String>,
    /// curl's `time_total`, seconds.
    seconds: f64,
    /// In a hierarchy, the routers (top first) and host the flow tables say the request
    /// went through; ends with "?" where no table had its flow.
    path: Vec<String>,
}

impl Request {
    /// Whether the traced path reaches a host.
    fn traced(&self) -> bool {
        !self.path.is_empty() && self.path.last().is_some_and(|h| h != "?")
    }
}

/// What arrived at a lower router or a host of a hierarchy (captured where the core sends it
/// to the node).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TunnelCounts {
    /// IP-in-IP packets from its parent.
    from_parent: usize,
    /// IP-in-IP packets from anyone else.
    from_other: usize,
    /// Packets for a VIP outside a tunnel.
    plain_vip: usize,
}
/// Everything a client did.
#[derive(Debug, Default)]
struct ClientReport {
    requests: Vec<Request>,
    udp_sent: usize,
    udp_answered: usize,
    udp_fragmented_ok: usize,
    udp_resent: usize,
    udp_per_host: BTreeMap<String, usize>,
    udp_errors: Vec<String>,
}

/// The demo's findings.
#[derive(Debug, Default)]
pub struct Summary {
    requests: Vec<Request>,
    udp_sent: usize,
    udp_answered: usize,
    udp_fragmented: usize,
    udp_fragmented_ok: usize,
    /// Datagrams answered only after a resend.
    udp_resent: usize,
    udp_per_host: BTreeMap<String, usize>,
    udp_errors: Vec<String>,
    /// Replies (source in a virtual subnet, to a client) that arrived at a router.
    router_reply_packets: usize,
    /// Packets that arrived at routers in total.
    router_packets: usize,
    /// Replies captured at clients with a VIP as source.
    client_vip_replies: usize,
    /// Replies (from port 80 or 7) captured at clients with any other source.
    client_other_replies: usize,
    /// Sum of `slr_router_packets_total` over routers, if every router exposes it.
    router_metric: Option<f64>,
    /// curl `time_total` of the direct baseline requests, seconds.
    direct_seconds: Vec<f64>,
    /// Hierarchy only: what arrived at each lower router and host.
    tunnels: BTreeMap<String, TunnelCounts>,
    /// Hierarchy only: why reading a flow table failed, if it did.
    flow_errors: Vec<String>,
    /// Whether the lab is a hierarchy (paths and tunnels are checked).
    hierarchy: bool,
}

fn median_ms(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2] * 1000.0)
}

impl Summary {
    fn failed_requests(&self) -> Vec<&Request> {
        self.requests.iter().filter(|r| r.error.is_some()).collect()
    }

    /// Why the run failed; empty if it passed.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let failed = self.failed_requests().len();
        if failed > 0 {
            p.push(format!(
                "{failed} of {} requests failed",
                self.requests.len()
            ));
        }
        if self.udp_answered < self.udp_sent {
            p.push(format!(
                "{} of {} UDP datagrams got no intact answer",
                self.udp_sent - self.udp_answered,
                self.udp_sent
            ));
        }
        if self.router_reply_packets > 0 {
            p.push(format!(
                "{} reply packets crossed the router",
                self.router_reply_packets
            ));
        }
        if self.client_other_replies > 0 {
            p.push(format!(
                "clients received {} replies from an address other than the VIP",
                self.client_other_replies
            ));
        }
        if self.client_vip_replies == 0 && !self.requests.is_empty() {
            p.push("the client capture saw no reply from a VIP (is tcpdump working?)".into());
        }
        if self.hierarchy {
            let wrong = self.wrong_paths().len();
            if wrong > 0 {
                p.push(format!(
                    "{wrong} traced paths end at another host than the one that answered"
                ));
            }
            let answered = self.requests.iter().filter(|r| r.error.is_none()).count();
            if answered > 0 && !self.requests.iter().any(Request::traced) {
                p.push(format!(
                    "no request could be traced through the routers' flow tables{}",
                    self.flow_errors
                        .last()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            let other: usize = self.tunnels.values().map(|c| c.from_other).sum();
            if other > 0 {
                p.push(format!(
                    "{other} tunnelled packets reached a router or host from another node than its parent"
                ));
            }
            let plain: usize = self.tunnels.values().map(|c| c.plain_vip).sum();
            if plain > 0 {
                p.push(format!(
                    "{plain} packets for a VIP reached a lower router or a host outside a tunnel"
                ));
            }
        }
        p
    }

    /// Answered requests whose traced path ends at another host than the one that answered.
    fn wrong_paths(&self) -> Vec<&Request> {
        self.requests
            .iter()
            .filter(|r| {
                r.traced() && r.served_by.is_some() && r.path.last() != r.served_by.as_ref()
            })
            .collect()
    }

    /// Prints the summary readable at a glance.
    fn print(&self, t: &Topology) {
        println!();
        self.print_lab(t);
        self.print_requests(t);
        self.print_udp(t);
        self.print_replies(t);
        self.print_latency();
        let problems = self.problems();
        if problems.is_empty() {
            println!("result     PASS");
        } else {
            println!("result     FAIL: {}", problems.join("; "));
        }
    }

    /// The summary's first line: the lab's name and size, and for a hierarchy its tree.
    fn print_lab(&self, t: &Topology) {
        let count = |r| t.nodes_with(r).count();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        if self.hierarchy {
            let groups = t.client_groups().len();
            println!(
                "slr lab run: {} ({} in {}, {}, {}{})",
                t.name,
                plural(count(Role::Router), "router"),
                plural(t.router_levels().len(), "level"),
                plural(count(Role::Host), "host"),
                plural(count(Role::Client), "client"),
                if groups > 0 {
                    format!(" in {}", plural(groups, "client group"))
                } else {
                    String::new()
                }
            );
            for line in t.tree() {
                println!("  {line}");
            }
        } else {
            println!(
                "slr lab run: {} ({}, {}, {})",
                t.name,
                plural(count(Role::Router), "router"),
                plural(count(Role::Host), "host"),
                plural(count(Role::Client), "client")
            );
        }
    }

    /// The requests: how many failed, (hierarchy) their spread, how many each host
    /// answered, the first failures and (hierarchy) their paths.
    fn print_requests(&self, t: &Topology) {
        let failed = self.failed_requests();
        println!(
            "requests   {} made, {} failed  (curl http://{}/, a new connection each)",
            self.requests.len(),
            failed.len(),
            vips(t).join("/, http://")
        );
        let mut per_host: BTreeMap<&str, usize> = t
            .nodes_with(Role::Host)
            .map(|h| (h.name.as_str(), 0))
            .collect();
        for r in &self.requests {
            if let Some(h) = &r.served_by {
                *per_host.entry(h.as_str()).or_default() += 1;
            }
        }
        if self.hierarchy {
            self.print_spread(t);
        }
        println!(
            "per host   {}",
            hosts_line(t, |h| per_host.get(h).copied().unwrap_or(0))
        );
        for r in failed.iter().take(3) {
            println!(
                "  failed   {} -> {}: {}",
                r.client,
                r.url,
                r.error.as_deref().unwrap_or("")
            );
        }
        if failed.len() > 3 {
            println!("  failed   ... and {} more", failed.len() - 3);
        }
        if self.hierarchy {
            self.print_paths(t);
        }
    }

    /// The UDP datagrams: how many came back intact, fragmented ones included, per host.
    fn print_udp(&self, t: &Topology) {
        println!(
            "udp        {} datagrams, {} answered intact ({} of {} fragmented 3000-byte ones{}); per host {}",
            self.udp_sent,
            self.udp_answered,
            self.udp_fragmented_ok,
            self.udp_fragmented,
            if self.udp_resent > 0 {
                format!(", {} after a resend", self.udp_resent)
            } else {
                String::new()
            },
            hosts_line(t, |h| self.udp_per_host.get(h).copied().unwrap_or(0))
        );
        for e in self.udp_errors.iter().take(3) {
            println!("  failed   {e}");
        }
    }

    /// Direct server return: the replies' source at the clients, the replies that crossed
    /// a router, and what the routers say they forwarded.
    fn print_replies(&self, t: &Topology) {
        let replies = self.client_vip_replies + self.client_other_replies;
        if replies == 0 {
            println!("client saw no reply packets in the capture (is tcpdump working?)");
        } else {
            let pct = 100.0 * self.client_vip_replies as f64 / replies as f64;
            println!(
                "client saw source {} on {}% of replies{}",
                vips(t).join(" or "),
                if pct == 100.0 {
                    "100".to_string()
                } else {
                    format!("{pct:.1}")
                },
                if self.client_other_replies == 0 {
                    " (direct server return)".to_string()
                } else {
                    format!("; {} came from another address", self.client_other_replies)
                }
            );
        }
        println!(
            "router     saw {} reply packets (of {} arriving{}); clients received {} reply packets from the VIP, {}",
            self.router_reply_packets,
            self.router_packets,
            if self.hierarchy { " at all the routers" } else { "" },
            self.client_vip_replies,
            if self.router_reply_packets == 0 {
                format!(
                    "all bypassing the router{}",
                    if self.hierarchy { "s" } else { "" }
                )
            } else {
                format!("{} of them through the router", self.router_reply_packets)
            }
        );
        if let Some(m) = self.router_metric {
            println!(
                "router     forwarded {m} packets (slr_router_packets_total{})",
                if self.hierarchy {
                    ", summed over every router"
                } else {
                    ""
                }
            );
        }
    }

    /// Median latency through the VIP against the direct baseline, if both were measured.
    fn print_latency(&self) {
        let vip_ms = median_ms(
            &self
                .requests
                .iter()
                .filter(|r| r.error.is_none())
                .map(|r| r.seconds)
                .collect::<Vec<_>>(),
        );
        if let (Some(v), Some(d)) = (vip_ms, median_ms(&self.direct_seconds)) {
            println!(
                "latency    median {v:.1} ms through the VIP, {d:.1} ms direct to a host (curl time_total, new connection)"
            );
        }
    }
}

/// The lab's VIPs, in virtual host order.
fn vips(t: &Topology) -> Vec<String> {
    t.virtual_hosts
        .iter()
        .map(|v| v.vip().to_string())
        .collect()
}

/// Every host with its count, `h1 3  h2 4`.
fn hosts_line(t: &Topology, counts: impl Fn(&str) -> usize) -> String {
    t.nodes_with(Role::Host)
        .map(|h| format!("{} {}", h.name, counts(&h.name)))
        .collect::<Vec<_>>()
        .join("  ")
}

impl Summary {
    /// Hierarchy: answered requests per client group (by the top router's children) and
    /// per router of each level below the top (by the routers above the host that answered).
    fn print_spread(&self, t: &Topology) {
        let answered: Vec<&Request> = self.requests.iter().filter(|r| r.error.is_none()).collect();
        let Some(top) = t.top_router() else { return };
        let top_children: Vec<&str> = t
            .children(&top.name)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // The child of the top router a host sits below (the host itself if it is one).
        let branch = |host: &str| -> Option<String> {
            if t.node(host)?.has_parent(&top.name) {
                return Some(host.to_string());
            }
            t.ancestors(host)
                .iter()
                .find(|a| a.has_parent(&top.name))
                .map(|a| a.name.clone())
        };
        let mut groups: Vec<(String, Vec<String>)> = t
            .client_groups()
            .into_iter()
            .map(|(g, m)| (g, m.iter().map(|c| c.name.clone()).collect()))
            .collect();
        let ungrouped: Vec<String> = t
            .nodes_with(Role::Client)
            .filter(|c| c.group.is_none())
            .map(|c| c.name.clone())
            .collect();
        if !groups.is_empty() && !ungrouped.is_empty() {
            groups.push(("(none)".into(), ungrouped));
        }
        if !groups.is_empty() {
            let parts: Vec<String> = groups
                .iter()
                .map(|(g, members)| {
                    let mine: Vec<&&Request> = answered
                        .iter()
                        .filter(|r| members.contains(&r.client))
                        .collect();
                    let per: Vec<String> = top_children
                        .iter()
                        .map(|c| {
                            let n = mine
                                .iter()
                                .filter(|r| {
                                    r.served_by.as_deref().and_then(branch).as_deref() == Some(c)
                                })
                                .count();
                            format!("{c} {n}")
                        })
                        .collect();
                    format!(
                        "{g} ({}) {}: {}",
                        members.join(" "),
                        mine.len(),
                        per.join(" ")
                    )
                })
                .collect();
            println!("per group  {}", parts.join("   "));
        }
        for level in t.router_levels().iter().skip(1) {
            let routers: Vec<&str> = t
                .nodes_with(Role::Router)
                .filter(|r| r.level.as_deref() == Some(level.as_str()) && !r.parents.is_empty())
                .map(|r| r.name.as_str())
                .collect();
            let counts: Vec<String> = routers
                .iter()
                .map(|r| {
                    let n = answered
                        .iter()
                        .filter(|q| {
                            q.served_by
                                .as_deref()
                                .is_some_and(|h| t.ancestors(h).iter().any(|a| a.name == *r))
                        })
                        .count();
                    format!("{r} {n}")
                })
                .collect();
            println!("per {:<6} {}", level, counts.join("  "));
        }
    }

    /// Hierarchy: how many requests were traced through the flow tables, a sample path per
    /// client, and what arrived at each level in tunnels.
    fn print_paths(&self, t: &Topology) {
        let answered: Vec<&Request> = self.requests.iter().filter(|r| r.error.is_none()).collect();
        let traced = answered.iter().filter(|r| r.traced()).count();
        let wrong = self.wrong_paths();
        println!(
            "paths      {traced} of {} answered requests traced hop by hop through the routers' flow tables (slr ctl NODE flows, joined by 5-tuple); {}",
            answered.len(),
            if wrong.is_empty() {
                "each ends at the host that answered".to_string()
            } else {
                format!("{} end at another host than the one that answered", wrong.len())
            }
        );
        if let Some(e) = self.flow_errors.last() {
            println!("  flows    reading a flow table failed: {e}");
        }
        let show = |r: &Request| {
            let from = r
                .source
                .map(|s| format!("{}:{}", r.client, s.port()))
                .unwrap_or_else(|| r.client.clone());
            println!("  path     {from} -> {}", r.path.join(" -> "));
        };
        // One traced request per client, then the wrong ones.
        for c in t.nodes_with(Role::Client) {
            if let Some(r) = answered.iter().find(|r| r.client == c.name && r.traced()) {
                show(r);
            }
        }
        for r in wrong.iter().take(3) {
            show(r);
            println!(
                "           ^ answered by {}",
                r.served_by.as_deref().unwrap_or("?")
            );
        }
        // What each level received, tunnelled from its parent (hosts last).
        let mut parts = Vec::new();
        let mut total = TunnelCounts::default();
        let levels = t.router_levels();
        for level in levels.iter().skip(1).map(Some).chain([None]) {
            let members: Vec<&str> = t
                .nodes
                .iter()
                .filter(|n| match level {
                    Some(l) => {
                        n.role == Role::Router
                            && !n.parents.is_empty()
                            && n.level.as_deref() == Some(l.as_str())
                    }
                    None => n.role == Role::Host,
                })
                .map(|n| n.name.as_str())
                .collect();
            if members.is_empty() {
                continue;
            }
            let mut sum = TunnelCounts::default();
            for c in members.iter().filter_map(|m| self.tunnels.get(*m)) {
                sum.from_parent += c.from_parent;
                sum.from_other += c.from_other;
                sum.plain_vip += c.plain_vip;
            }
            total.from_other += sum.from_other;
            total.plain_vip += sum.plain_vip;
            parts.push(format!(
                "{} ({}) {}",
                level
                    .map(|l| format!("{l} routers"))
                    .unwrap_or_else(|| "hosts".into()),
                members.len(),
                sum.from_parent
            ));
        }
        println!(
            "tunnels    IP-in-IP packets each level received from its parent: {}; from any other node {}; VIP packets outside a tunnel below the top {}",
            parts.join(", "),
            total.from_other,
            total.plain_vip
        );
        for (node, c) in self
            .tunnels
            .iter()
            .filter(|(_, c)| c.from_other > 0 || c.plain_vip > 0)
            .take(5)
        {
            println!(
                "  tunnels  {node}: {} tunnelled from another node than its parent, {} untunnelled to a VIP",
                c.from_other, c.plain_vip
            );
        }
    }
}

/// Runs curl in a namespace: returns (exit ok, stdout, stderr).
fn curl(ns: &str, url: &str, write_out: &str, max_seconds: u32) -> Result<(bool, String, String)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-sS", "--noproxy", "*", "-m"])
        .arg(max_seconds.to_string())
        .args(["-o", "-", "-w", write_out, url])
        .stdin(Stdio::null());
    // A proxy from the environment would send lab traffic elsewhere.
    for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .context("running `ip netns exec ... curl` (is curl installed?)")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// One request to a VIP, checked: status 200, `served-by=` present, and both the
/// server's `vip=` and curl's `remote_ip` equal to the VIP.
fn vip_request(
    ns: &str,
    client: &str,
    client_addr: Option<Ipv4Addr>,
    vip: Ipv4Addr,
) -> Result<Request> {
    let url = format!("http://{vip}/");
    let (ok, stdout, stderr) = curl(
        ns,
        &url,
        "\n%{http_code} %{remote_ip} %{time_total} %{local_port}",
        5,
    )?;
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let mut fields = trailer.split_whitespace();
    let code = fields.next().unwrap_or("");
    let remote_ip = fields.next().unwrap_or("");
    let seconds: f64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let local_port: Option<u16> = fields.next().and_then(|s| s.parse().ok());
    let served_by = body
        .split_whitespace()
        .find_map(|f| f.strip_prefix("served-by="))
        .map(str::to_string);
    let server_vip = crate::serve::vip_of(body);
    let error = if !ok {
        Some(if stderr.is_empty() {
            "curl failed".into()
        } else {
            stderr
        })
    } else if code != "200" {
        Some(format!("HTTP status {code}"))
    } else if served_by.is_none() {
        Some(format!("unexpected body {:?}", body.trim()))
    } else if remote_ip != vip.to_string() {
        Some(format!("curl connected to {remote_ip}, not {vip}"))
    } else if server_vip != Some(std::net::IpAddr::V4(vip)) {
        Some(format!(
            "server saw local address {server_vip:?}, not {vip}"
        ))
    } else {
        None
    };
    Ok(Request {
        client: client.to_string(),
        source: client_addr
            .zip(local_port)
            .map(|(a, p)| SocketAddrV4::new(a, p)),
        vip,
        url,
        served_by: if error.is_none() { served_by } else { None },
        error,
        seconds,
        path: Vec::new(),
    })
}

fn client_traffic(t: &Topology, client: &str, requests: u32) -> Result<ClientReport> {
    let ns = t.netns(client);
    let addr = t.address(client);
    let mut report = ClientReport::default();
    for vh in &t.virtual_hosts {
        for _ in 0..requests {
            if interrupted() {
                return Ok(report);
            }
            report
                .requests
                .push(vip_request(&ns, client, addr, vh.vip())?);
        }
    }
    for vh in &t.virtual_hosts {
        let target = SocketAddrV4::new(vh.vip(), UDP_PORT);
        let client_name = client.to_string();
        let echoes = netns::in_netns(&ns, move || {
            Ok(UDP_SIZES
                .iter()
                .enumerate()
                .map(|(seq, &size)| {
                    // Distinct content per datagram, so a mixed-up answer shows.
                    let payload: Vec<u8> =
                        (0..size).map(|i| (i * 31 + seq * 7 + 1) as u8).collect();
                    let echo = probe::udp_echo(target, &payload, 3, Duration::from_secs(1));
                    (size, echo)
                })
                .collect::<Vec<_>>())
        })?;
        for (size, echo) in echoes {
            report.udp_sent += 1;
            match echo {
                Ok(e) if e.intact && e.from == std::net::SocketAddr::V4(target) => {
                    report.udp_answered += 1;
                    if e.attempts > 1 {
                        report.udp_resent += 1;
                    }
                    if size > 1472 {
                        report.udp_fragmented_ok += 1;
                    }
                    *report.udp_per_host.entry(e.served_by).or_default() += 1;
                }
                Ok(e) => report.udp_errors.push(format!(
                    "{client_name} -> {target} ({size} bytes): answer from {} by {} {}",
                    e.from,
                    e.served_by,
                    if e.intact { "intact" } else { "NOT intact" }
                )),
                Err(e) => report
                    .udp_errors
                    .push(format!("{client_name} -> {target} ({size} bytes): {e:#}")),
            }
        }
    }
    Ok(report)
}

/// A running capture.
struct Capture {
    node: String,
    role: Role,
    pcap: PathBuf,
}

fn start_captures(state: &mut State) -> Result<Vec<Capture>> {
    let t = state.topology.clone();
    let mut captures = Vec::new();
    // A hierarchy also captures at the hosts: what reaches them must come from their parent.
    for node in t.nodes.iter().filter(|n| match n.role {
        Role::Router | Role::Client => true,
        Role::Host => t.is_hierarchy(),
        Role::Core => false,
    }) {
        let pcap = state.dir().join(format!("capture-{}.pcap", node.name));
        // On the wire: at the core's end of the node's link, what the core sends the node
        // (-Q out), before anything of the node's sees it (its XDP program strips a host's
        // tunnels and forwards a router's flows before a capture on its own eth0 would).
        // --immediate-mode: hand each packet over at once (TPACKET_V3 otherwise holds
        // them in a ring block for up to a second, and SIGTERM discards that block);
        // -U: write each packet at once; -Z root: Debian's tcpdump otherwise drops to
        // its own user, which may not write here.
        let link = t.link(&node.name).expect("a non-core node has a link");
        let args: Vec<String> = [
            "-i",
            link.core_ifname.as_str(),
            "-Q",
            "out",
            "-n",
            "--immediate-mode",
            "-U",
            "-s",
            "160",
            "-Z",
            "root",
            "-w",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([pcap.display().to_string()])
        .collect();
        lifecycle::start(
            state,
            &t.core().name,
            "tcpdump",
            std::ffi::OsStr::new("tcpdump"),
            &args,
        )?;
        captures.push(Capture {
            node: node.name.clone(),
            role: node.role,
            pcap,
        });
    }
    // tcpdump says "listening on" once the capture is armed.
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in state.processes.iter().filter(|p| p.kind == "tcpdump") {
        loop {
            check_interrupted()?;
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            if log.contains("listening on") {
                break;
            }
            if !p.is_running() || Instant::now() >= deadline {
                bail!(
                    "tcpdump on {} did not start (is it installed? `apt-get install tcpdump`); {}:\n{}",
                    p.node,
                    p.log.display(),
                    state::log_tail(&p.log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(captures)
}

fn stop_captures(state: &mut State) -> Result<()> {
    let (tcpdumps, rest): (Vec<_>, Vec<_>) =
        state.processes.drain(..).partition(|p| p.kind == "tcpdump");
    state.processes = rest;
    state::stop_processes(&tcpdumps, Duration::from_secs(3));
    state.save()
}

/// `slr_router_packets_total` summed over every router; `None` if any router does not
/// expose it (the metric is optional).
fn router_metric(t: &Topology) -> Option<f64> {
    let mut total = 0.0;
    for r in t.nodes_with(Role::Router) {
        let url = format!("http://127.0.0.1:{ROUTER_METRICS_PORT}/metrics");
        let (ok, text, _) = curl(&t.netns(&r.name), &url, "", 2).ok()?;
        if !ok {
            return None;
        }
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix("slr_router_packets_total")
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.split_whitespace().last()?.parse().ok())
            .collect();
        if values.is_empty() {
            return None;
        }
        total += values.iter().sum::<f64>();
    }
    Some(total)
}

/// A flow as the routers' flow tables name it: protocol, client `a.b.c.d:port`, virtual
/// host `a.b.c.d:port`.
type FlowKey = (String, String, String);

/// The routers' flow tables, read repeatedly while the demo runs (a closed flow leaves a
/// table some seconds after its last packet), merged: router -> flow -> next hop.
#[derive(Debug, Default)]
struct FlowTables {
    next_hops: HashMap<String, HashMap<FlowKey, String>>,
    errors: Vec<String>,
}

impl FlowTables {
    /// Reads every router's flow table once (`slr ctl NODE flows`, over its control socket).
    fn read(&mut self, t: &Topology) {
        for r in t.nodes_with(Role::Router) {
            let sock = state::lab_dir(&t.name).join(format!("{}.sock", r.name));
            let table = self.next_hops.entry(r.name.clone()).or_default();
            // Every flow, page by page.
            let read = slr_ctl::request_stream(&sock, &json!({"cmd": "flows", "all": true}), |v| {
                for f in v["flows"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let field = |k: &str| f[k].as_str().unwrap_or("").to_string();
                    table.insert(
                        (field("protocol"), field("client"), field("virtual_host")),
                        field("next_hop"),
                    );
                }
                Ok(())
            });
            match read {
                Ok(_) => {}
                Err(e) => {
                    if self.errors.len() < 10 {
                        self.errors.push(format!("{}: {e:#}", r.name));
                    }
                }
            }
        }
    }

    /// The path of a TCP flow from the top router that holds it (the first if none does)
    /// down: each next hop in turn, until a host (or "?" where no table knows the flow).
    fn trace(&self, t: &Topology, source: SocketAddrV4, vip: SocketAddrV4) -> Vec<String> {
        let key: FlowKey = ("tcp".into(), source.to_string(), vip.to_string());
        let tops = t.top_routers();
        let Some(top) = tops
            .iter()
            .find(|r| {
                self.next_hops
                    .get(&r.name)
                    .is_some_and(|m| m.contains_key(&key))
            })
            .or(tops.first())
        else {
            return Vec::new();
        };
        let mut path = vec![top.name.clone()];
        let mut at = top.name.clone();
        // A tree of n nodes has paths of at most n hops; the bound only guards a loop.
        for _ in 0..t.nodes.len() {
            let Some(next) = self.next_hops.get(&at).and_then(|m| m.get(&key)) else {
                path.push("?".into());
                return path;
            };
            path.push(next.clone());
            match t.node(next).map(|n| n.role) {
                Some(Role::Router) => at = next.clone(),
                _ => return path,
            }
        }
        path
    }
}

/// Captures while the clients send their traffic, then reads the captures and measures the
/// direct baseline.
fn demo(state: &mut State, opts: &DemoOptions) -> Result<Summary> {
    let t = state.topology.clone();
    let captures = start_captures(state)?;
    let mut tables = FlowTables::default();
    let reports = run_clients(&t, opts, &mut tables);
    check_interrupted()?;
    if t.is_hierarchy() {
        tables.read(&t);
    }
    // Let the last packets (FINs, ACKs) reach the captures.
    sleep_interruptible(Duration::from_millis(300));
    stop_captures(state)?;

    let mut summary = Summary::from_reports(&t, reports)?;
    if t.is_hierarchy() {
        summary.hierarchy = true;
        summary.trace_paths(&t, tables);
    }
    for cap in &captures {
        summary.count_capture(&t, cap)?;
    }
    summary.direct_seconds = direct_baseline(&t)?;
    summary.router_metric = router_metric(&t);
    Ok(summary)
}

/// Runs every client's traffic in a thread of its own and, in a hierarchy, reads the
/// routers' flow tables into `tables` every second meanwhile.
fn run_clients(
    t: &Topology,
    opts: &DemoOptions,
    tables: &mut FlowTables,
) -> Vec<Result<ClientReport>> {
    let clients_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = t
            .nodes_with(Role::Client)
            .map(|c| {
                let name = c.name.clone();
                s.spawn(move || client_traffic(t, &name, opts.requests_per_client))
            })
            .collect();
        // A hierarchy's paths: read the flow tables every second while the clients run.
        if t.is_hierarchy() {
            let done = &clients_done;
            s.spawn(move || {
                while !done.load(Ordering::SeqCst) && !interrupted() {
                    tables.read(t);
                    let next = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < next && !done.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            });
        }
        let reports = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("client thread panicked")))
            .collect();
        clients_done.store(true, Ordering::SeqCst);
        reports
    })
}

impl Summary {
    /// Adds up the clients' reports (the first client that failed fails the demo).
    fn from_reports(t: &Topology, reports: Vec<Result<ClientReport>>) -> Result<Summary> {
        let mut summary = Summary::default();
        for report in reports {
            let r = report?;
            summary.requests.extend(r.requests);
            summary.udp_sent += r.udp_sent;
            summary.udp_answered += r.udp_answered;
            summary.udp_fragmented_ok += r.udp_fragmented_ok;
            summary.udp_resent += r.udp_resent;
            summary.udp_errors.extend(r.udp_errors);
            for (h, n) in r.udp_per_host {
                *summary.udp_per_host.entry(h).or_default() += n;
            }
        }
        summary.udp_fragmented = t.nodes_with(Role::Client).count()
            * t.virtual_hosts.len()
            * UDP_SIZES.iter().filter(|s| **s > 1472).count();
        Ok(summary)
    }

    /// Hierarchy: follows each answered request through the flow tables read meanwhile.
    fn trace_paths(&mut self, t: &Topology, tables: FlowTables) {
        for r in self.requests.iter_mut().filter(|r| r.error.is_none()) {
            if let Some(source) = r.source {
                r.path = tables.trace(t, source, SocketAddrV4::new(r.vip, HTTP_PORT));
            }
        }
        self.flow_errors = tables.errors;
    }

    /// Counts what one capture saw: replies arriving at a router, the source of replies at
    /// a client and, below the top of a hierarchy, where the tunnels came from.
    fn count_capture(&mut self, t: &Topology, cap: &Capture) -> Result<()> {
        let clients: Vec<Ipv4Addr> = t
            .nodes_with(Role::Client)
            .filter_map(|c| t.address(&c.name))
            .collect();
        let packets = pcap::read_ipv4(&cap.pcap)?;
        match cap.role {
            Role::Router => {
                self.router_packets += packets.len();
                let is_reply =
                    |ip: &pcap::Ipv4Info| t.is_virtual(ip.src) && clients.contains(&ip.dst);
                self.router_reply_packets += packets
                    .iter()
                    .filter(|p| is_reply(&p.outer) || p.inner.as_ref().is_some_and(is_reply))
                    .count();
            }
            Role::Host => {}
            Role::Client => {
                let me = t.address(&cap.node).expect("client has a link");
                for p in packets.iter().filter(|p| p.outer.dst == me) {
                    if t.is_virtual(p.outer.src) {
                        self.client_vip_replies += 1;
                    } else if matches!(p.outer.src_port, Some(HTTP_PORT | UDP_PORT)) {
                        self.client_other_replies += 1;
                    }
                }
            }
            Role::Core => {}
        }
        // Below the top of a hierarchy: everything for a VIP must come tunnelled from the
        // node's parent.
        let parent = t.node(&cap.node).and_then(|n| n.parent());
        if let (true, Some(parent)) = (t.is_hierarchy(), parent) {
            let parent_addr = t.address(parent).expect("parent has a link");
            let mut c = TunnelCounts::default();
            for p in &packets {
                match p.inner {
                    Some(_) if p.outer.src == parent_addr => c.from_parent += 1,
                    Some(_) => c.from_other += 1,
                    None if t.is_virtual(p.outer.dst) => c.plain_vip += 1,
                    None => {}
                }
            }
            self.tunnels.insert(cap.node.clone(), c);
        }
        Ok(())
    }
}

/// Baseline: the same request straight to each host's own address, from every client;
/// curl's `time_total` of those that succeeded, seconds.
fn direct_baseline(t: &Topology) -> Result<Vec<f64>> {
    let mut seconds = Vec::new();
    for c in t.nodes_with(Role::Client) {
        for h in t.nodes_with(Role::Host) {
            for _ in 0..DIRECT_REQUESTS {
                check_interrupted()?;
                let addr = t.address(&h.name).expect("host has a link");
                let url = format!("http://{addr}/");
                let (ok, out, _) = curl(&t.netns(&c.name), &url, "\n%{time_total}", 5)?;
                if let (true, Some(secs)) = (
                    ok,
                    out.rsplit_once('\n')
                        .and_then(|(_, s)| s.trim().parse().ok()),
                ) {
                    seconds.push(secs);
                }
            }
        }
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(served_by: Option<&str>, error: Option<&str>) -> Request {
        Request {
            client: "c1".into(),
            source: Some(SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 2), 40312)),
            vip: Ipv4Addr::new(10, 99, 0, 1),
            url: "http://10.99.0.1/".into(),
            served_by: served_by.map(str::to_string),
            error: error.map(str::to_string),
            seconds: 0.002,
            path: Vec::new(),
        }
    }

    #[test]
    fn passes_only_with_no_failure_and_no_reply_through_the_router() {
        let mut s = Summary {
            requests: vec![request(Some("h1"), None), request(Some("h2"), None)],
            udp_sent: 2,
            udp_answered: 2,
            client_vip_replies: 10,
            ..Summary::default()
        };
        assert!(s.problems().is_empty());
        s.router_reply_packets = 1;
        assert_eq!(s.problems(), ["1 reply packets crossed the router"]);
        s.router_reply_packets = 0;
        s.requests.push(request(None, Some("curl: (28) timeout")));
        assert_eq!(s.problems(), ["1 of 3 requests failed"]);
        s.requests.pop();
        s.client_vip_replies = 0;
        assert_eq!(s.problems().len(), 1, "an empty capture is a failure");
    }

    #[test]
    fn median() {
        assert_eq!(median_ms(&[]), None);
        assert_eq!(median_ms(&[0.003, 0.001, 0.002]), Some(2.0));
    }

    #[test]
    fn a_hierarchy_fails_on_wrong_paths_foreign_tunnels_and_no_trace() {
        let mut traced = request(Some("h2"), None);
        traced.path = vec!["net".into(), "as1".into(), "site-a".into(), "h2".into()];
        let mut untraced = request(Some("h3"), None);
        untraced.path = vec!["net".into(), "?".into()];
        let mut s = Summary {
            requests: vec![traced.clone(), untraced.clone()],
            udp_sent: 1,
            udp_answered: 1,
            client_vip_replies: 10,
            hierarchy: true,
            ..Summary::default()
        };
        assert!(traced.traced() && !untraced.traced());
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        s.requests[0].path[3] = "h1".into();
        assert_eq!(
            s.problems(),
            ["1 traced paths end at another host than the one that answered"]
        );
        s.requests = vec![untraced];
        assert_eq!(
            s.problems(),
            ["no request could be traced through the routers' flow tables"]
        );
        s.requests = vec![traced];
        s.tunnels.insert(
            "as1".into(),
            TunnelCounts {
                from_parent: 10,
                from_other: 2,
                plain_vip: 1,
            },
        );
        assert_eq!(
            s.problems(),
            [
                "2 tunnelled packets reached a router or host from another node than its parent",
                "1 packets for a VIP reached a lower router or a host outside a tunnel"
            ]
        );
    }

    #[test]
    fn paths_follow_the_flow_tables_from_the_top() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/three-level.toml"
        );
        let t = Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 2), 40312);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80);
        let key: FlowKey = ("tcp".into(), client.to_string(), vip.to_string());
        let mut tables = FlowTables::default();
        for (router, next) in [("net", "as1"), ("as1", "site-b"), ("site-b", "h5")] {
            tables
                .next_hops
                .entry(router.into())
                .or_default()
                .insert(key.clone(), next.into());
        }
        assert_eq!(
            tables.trace(&t, client, vip),
            ["net", "as1", "site-b", "h5"]
        );
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 2), 40313);
        assert_eq!(tables.trace(&t, other, vip), ["net", "?"]);
        tables.next_hops.get_mut("site-b").unwrap().clear();
        assert_eq!(tables.trace(&t, client, vip), ["net", "as1", "site-b", "?"]);
    }
}
