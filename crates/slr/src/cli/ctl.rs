//! `slr ctl`: asks a daemon on its control socket (the protocol is `slr-ctl`'s) and prints the
//! answer, as JSON with `--json` and as tables without.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// `slr ctl` arguments.
#[derive(clap::Args)]
pub struct CtlArgs {
    /// The daemon: its name in a running lab (e.g. `r1`, `h2`) or a control socket path.
    pub target: String,
    /// What to show or do: status, flows, hosts, stats, children, table, parents, reload,
    /// metrics; at run time: `weight NEXT_HOP N`, `drain NEXT_HOP`, `undrain NEXT_HOP`,
    /// `overrides`, `clear [NEXT_HOP]`.
    #[arg(default_value = "status")]
    pub command: String,
    /// The command's arguments (a next hop, a weight).
    pub args: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Most flows to list (one page).
    #[arg(long, default_value_t = 1_000)]
    pub limit: usize,
    /// List every flow, streamed page by page.
    #[arg(long)]
    pub all: bool,
}

/// Runs `slr ctl`.
pub fn run(args: CtlArgs) -> Result<()> {
    let path = slr_ctl::resolve_socket(&args.target)?;
    let req = request(&args)?;
    if args.command == "flows" && args.all {
        return stream_flows(&path, &req, args.json);
    }
    let v = slr_ctl::request(&path, &req)?;
    if args.command == "metrics" && !args.json {
        print!("{}", v["text"].as_str().unwrap_or(""));
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", human(&args.command, &v));
    Ok(())
}

/// The request a command line makes.
fn request(args: &CtlArgs) -> Result<Value> {
    let cmd = args.command.as_str();
    let arg = |i: usize, what: &str| -> Result<String> {
        args.args
            .get(i)
            .cloned()
            .ok_or_else(|| anyhow!("slr ctl {} {cmd}: {what} missing", args.target))
    };
    Ok(match cmd {
        "weight" => {
            let n = arg(0, "the next hop")?;
            let w: u64 = arg(1, "the weight")?.parse().map_err(|_| {
                anyhow!(
                    "slr ctl {} weight {n}: the weight is a whole number",
                    args.target
                )
            })?;
            json!({"cmd": cmd, "next_hop": n, "weight": w})
        }
        "drain" | "undrain" => json!({"cmd": cmd, "next_hop": arg(0, "the next hop")?}),
        "clear" => match args.args.first() {
            Some(n) => json!({"cmd": cmd, "next_hop": n}),
            None => json!({"cmd": cmd}),
        },
        "flows" => json!({"cmd": cmd, "limit": args.limit, "all": args.all}),
        "shortcuts" => {
            let action = arg(0, "what to do (flush)")?;
            if action != "flush" {
                bail!(
                    "slr ctl {} shortcuts {action}: unknown (flush clears every shortcut; the flows go down the hierarchy to the same hosts)",
                    args.target
                );
            }
            json!({"cmd": cmd, "action": action})
        }
        "fast-path" => {
            let action = arg(0, "what to do (flush)")?;
            if action != "flush" {
                bail!(
                    "slr ctl {} fast-path {action}: unknown (flush empties the XDP flow map; the core reinstalls what it holds)",
                    args.target
                );
            }
            json!({"cmd": cmd, "action": action})
        }
        _ => {
            if let Some(extra) = args.args.first() {
                bail!(
                    "slr ctl {} {cmd}: unexpected argument {extra:?}",
                    args.target
                );
            }
            json!({"cmd": cmd})
        }
    })
}

/// `slr ctl R flows --all`: the flow table as it streams in, page by page: table rows, or
/// one JSON document (`{"ok": true, "flows": [...], "total": N}`) written as it comes.
fn stream_flows(path: &std::path::Path, req: &Value, as_json: bool) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let mut listed = 0usize;
    if as_json {
        write!(out, "{{\"ok\": true, \"flows\": [")?;
    } else {
        write!(out, "{}", flow_header())?;
    }
    let last = slr_ctl::request_stream(path, req, |part| {
        let rows = part["flows"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        listed += rows.len();
        let written: std::io::Result<()> = rows.iter().try_for_each(|f| {
            if as_json {
                let sep = if first { "\n" } else { ",\n" };
                first = false;
                write!(out, "{sep}{f}")
            } else {
                write!(out, "{}", flow_line(f))
            }
        });
        written.map_err(|e| slr_ctl::CtlError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    })?;
    if as_json {
        writeln!(out, "\n], \"total\": {}}}", last["total"])?;
    } else {
        writeln!(
            out,
            "({listed} flows listed; {} in the table at the end)",
            t(&last["total"])
        )?;
    }
    Ok(())
}

fn flow_header() -> String {
    format!(
        "{:<5} {:<22} {:<20} {:<10} {:<12} {:>8} {:>8} {:>9}\n",
        "proto", "client", "virtual host", "next hop", "state", "age s", "idle s", "packets"
    )
}

fn flow_line(f: &Value) -> String {
    format!(
        "{:<5} {:<22} {:<20} {:<10} {:<12} {:>8.1} {:>8.1} {:>9}\n",
        f["protocol"].as_str().unwrap_or(""),
        f["client"].as_str().unwrap_or(""),
        f["virtual_host"].as_str().unwrap_or(""),
        f["next_hop"].as_str().unwrap_or(""),
        f["state"].as_str().unwrap_or(""),
        f["age_secs"].as_f64().unwrap_or(0.0),
        f["idle_secs"].as_f64().unwrap_or(0.0),
        t(&f["packets"])
    )
}

/// The control plane's views: children with their reports, the route table, the parents.
fn human_control(command: &str, c: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
    let metrics = |m: &Value| {
        m.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", f(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    if command == "children" {
        let _ = writeln!(
            o,
            "level {}  table generation {}  rebuilds {} (last {} us)  eval errors {}",
            t(&c["level"]),
            t(&c["generation"]),
            t(&c["rebuilds"]),
            t(&c["last_rebuild_us"]),
            t(&c["eval_errors"])
        );
        let _ = writeln!(
            o,
            "{:<12} {:<15} {:>6} {:>8} {:<6} {:<5} {:<6} {:>8} {:>8}  last report",
            "child", "address", "cost", "rtt ms", "level", "live", "health", "age ms", "reports"
        );
        for ch in c["children"].as_array().into_iter().flatten() {
            let report = ch["last_report"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{}: {}", t(&r["subnet"]), metrics(&r["metrics"])))
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                o,
                "{:<12} {:<15} {:>6} {:>8} {:<6} {:<5} {:<6} {:>8} {:>8}  {}",
                t(&ch["name"]),
                t(&ch["address"]),
                f(&ch["cost"]),
                f(&ch["rtt_ms"]),
                ch["level"].as_str().unwrap_or("-"),
                if ch["live"] == true { "yes" } else { "NO" },
                ch["health"].as_str().unwrap_or("-"),
                ch["report_age_ms"]
                    .as_u64()
                    .map_or("-".into(), |a| a.to_string()),
                t(&ch["reports"]),
                report
            );
        }
        return o;
    }
    if command == "table" {
        let _ = writeln!(o, "table generation {}", t(&c["generation"]));
        for e in c["table"].as_array().into_iter().flatten() {
            let group = e["client_group"]
                .as_str()
                .filter(|g| !g.is_empty())
                .unwrap_or("*");
            let cands = e["candidates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    format!(
                        "{}{}={}{}",
                        if x["chosen"] == true { "*" } else { "" },
                        t(&x["child"]),
                        f(&x["cost"]),
                        if x["overloaded"] == true {
                            "(overloaded)"
                        } else {
                            ""
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("  ");
            let _ = writeln!(
                o,
                "{:<18} group {:<8} {:<11} {}",
                t(&e["subnet"]),
                group,
                t(&e["priority"]),
                cands
            );
            for x in e["excluded"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "{:<18} excluded {}: {}", "", t(&x[0]), t(&x[1]));
            }
        }
        let _ = writeln!(o, "(* = in the chosen band: new flows spread over these)");
        for u in c["upward"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "reports upward {}: {}",
                t(&u["subnet"]),
                metrics(&u["metrics"])
            );
        }
        return o;
    }
    let _ = writeln!(
        o,
        "{:<12} {:<9} {:>8} {:>8} {:>8} {:>10}  last error",
        "parent", "connected", "reports", "failures", "refused", "bytes sent"
    );
    for p in c["parents"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{:<12} {:<9} {:>8} {:>8} {:>8} {:>10}  {}",
            t(&p["name"]),
            if p["connected"] == true { "yes" } else { "no" },
            t(&p["reports_sent"]),
            t(&p["failures"]),
            t(&p["subnets_refused"]),
            t(&p["bytes_sent"]),
            p["last_error"].as_str().unwrap_or("")
        );
    }
    let r = &c["shortcut_relay"];
    if r.is_object() {
        let _ = writeln!(
            o,
            "shortcut signals: sent {}  accepted {}  refused {}  lost {}  not for a host {}  from children {}; keepalives sent {}  held {}",
            t(&r["sent"]),
            t(&r["accepted"]),
            t(&r["refused"]),
            t(&r["failed"]),
            t(&r["not_host"]),
            t(&r["from_children"]),
            t(&r["keepalives"]),
            t(&r["kept"])
        );
    }
    o
}

fn human(command: &str, v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if !v["control"].is_null() {
        return human_control(command, &v["control"]);
    }
    if v["kind"] == "host" {
        let _ = writeln!(
            o,
            "host {}  subnets {}  trusted {}",
            t(&v["name"]),
            t(&v["virtual_subnets"]),
            t(&v["trusted_tunnel_sources"])
        );
        let _ = writeln!(
            o,
            "tunnel packets {}  delivered {} ({} bytes)  inject failures {}  cpu {:.2}s",
            t(&v["packets_in"]),
            t(&v["packets_delivered"]),
            t(&v["bytes_delivered"]),
            t(&v["inject_failures"]),
            v["cpu_seconds"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(o, "drops {}", nonzero_drops(&v["drops"]));
        return o;
    }
    if command == "flows" {
        let _ = write!(o, "{}", flow_header());
        let rows = v["flows"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for f in rows {
            let _ = write!(o, "{}", flow_line(f));
        }
        if v["total"].as_u64().is_some_and(|t| t > rows.len() as u64) {
            let _ = writeln!(
                o,
                "({} of {} flows; --limit N for more, --all for every flow)",
                rows.len(),
                t(&v["total"])
            );
        }
        return o;
    }
    if command == "reload" {
        return "configuration reloaded: new flows follow it (runtime overrides still apply)\n"
            .into();
    }
    if command == "shortcuts" {
        return format!(
            "shortcuts flushed: {} (their flows go down the hierarchy, to the same hosts)\n",
            v["flushed"].as_u64().unwrap_or(0)
        );
    }
    if command == "fast-path" {
        return format!(
            "fast path flow map flushed: {} entries removed (the core reinstalls each flow at its next packet)\n",
            v["flushed"].as_u64().unwrap_or(0)
        );
    }
    if matches!(
        command,
        "weight" | "drain" | "undrain" | "clear" | "overrides"
    ) {
        return human_overrides(&v["overrides"]);
    }
    let s = &v["snapshot"];
    let c = &s["counters"];
    let _ = writeln!(
        o,
        "router {}  flows {}/{}  packets in {}  tunnelled {}  drops {}  cpu {:.2}s",
        s["name"].as_str().unwrap_or(""),
        t(&s["flows_active"]),
        t(&s["max_flows"]),
        t(&c["packets_in"]),
        t(&c["packets_tunneled"]),
        t(&c["drops_total"]),
        s["cpu_seconds"].as_f64().unwrap_or(0.0)
    );
    if s["stopping"] == true {
        let _ = writeln!(
            o,
            "STOPPING: no new flows; established flows forwarded for {:.1} s more at most",
            s["stop_deadline_secs"].as_f64().unwrap_or(0.0)
        );
    }
    let b = &s["bgp"];
    if b.is_object() {
        let announced: Vec<&str> = b["announced"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let sessions: Vec<String> = b["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                format!(
                    "{} {}",
                    x["neighbor"].as_str().unwrap_or(""),
                    if x["established"] == true {
                        "established".to_string()
                    } else {
                        format!(
                            "{} {}",
                            x["state"].as_str().unwrap_or(""),
                            x["info"].as_str().unwrap_or("")
                        )
                        .trim()
                        .to_string()
                    }
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "BGP: BIRD {} (restarts {})  announcing [{}]  sessions: {}",
            if b["bird_up"] == true { "up" } else { "DOWN" },
            t(&b["bird_restarts"]),
            announced.join(", "),
            if sessions.is_empty() {
                "none".to_string()
            } else {
                sessions.join("; ")
            }
        );
        if b["bird_up"] != true {
            if let Some(e) = b["last_error"].as_str() {
                let _ = writeln!(o, "BGP error: {e}");
            }
        }
    }
    let m = &s["mirror"];
    if m.is_object() {
        let peers: Vec<String> = m["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or(""),
                    if p["connected"] == true {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    }
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "mirroring: peers {}  sent {}  received {} (copies held {})  lag {:.1} ms (max {:.1} ms)",
            if peers.is_empty() {
                "none (this router mirrors to nobody)".to_string()
            } else {
                peers.join(", ")
            },
            t(&m["changes_offered"]),
            t(&m["changes_received"]),
            t(&m["copies"]),
            m["last_lag_seconds"].as_f64().unwrap_or(0.0) * 1e3,
            m["max_lag_seconds"].as_f64().unwrap_or(0.0) * 1e3
        );
    }
    if let Some(w) = s.get("whohas").filter(|w| w.is_object()) {
        let peers: Vec<String> = w["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {} held {}/{}",
                    p["name"].as_str().unwrap_or(""),
                    // A peer is reached when first asked: until then it is neither.
                    if p["connected"] == true {
                        "up"
                    } else if p["last_error"].is_null() {
                        "not asked yet"
                    } else {
                        "DOWN"
                    },
                    t(&p["flows_held"]),
                    t(&p["flows_asked"])
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "WHOHAS: asked {}  resolved {}  nobody {}  timeouts {}  storm {}  pending {}  answered for peers {} ({} held)  peers: {}",
            t(&w["asked"]),
            t(&w["resolved"]),
            t(&w["not_found"]),
            t(&w["timeouts"]),
            t(&w["overflow"]),
            t(&w["pending"]),
            t(&w["flows_asked_here"]),
            t(&w["flows_held_here"]),
            if peers.is_empty() {
                "none (it answers, asks nobody)".to_string()
            } else {
                peers.join(", ")
            }
        );
    }
    let _ = writeln!(
        o,
        "\n{:<10} {:<16} {:>6} {:<10} {:>8} {:>10} {:>10}  override",
        "next hop", "address", "weight", "health", "flows", "selected", "packets"
    );
    for n in s["next_hops"].as_array().into_iter().flatten() {
        let health = match (
            n["configured"].as_bool(),
            n["available"].as_bool(),
            n["weight"].as_u64(),
        ) {
            (Some(false), _, _) => "removed",
            (_, Some(false), _) => "down",
            (_, _, Some(0)) => "draining",
            _ => "up",
        };
        let name = n["name"].as_str().unwrap_or("");
        let over = if n["overridden"] == true {
            override_text(&s["overrides"]["next_hops"][name])
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "{:<10} {:<16} {:>6} {:<10} {:>8} {:>10} {:>10}  {}",
            name,
            n["address"].as_str().unwrap_or(""),
            t(&n["weight"]),
            health,
            t(&n["active_flows"]),
            t(&n["selections"]),
            t(&n["packets"]),
            over
        );
    }
    let _ = writeln!(
        o,
        "\n{:<10} {:<18} {:<12} {:<13} {:>10} {:>10}",
        "virtual host", "subnet", "policy", "udp", "flows", "packets"
    );
    for vh in s["virtual_hosts"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{:<10} {:<18} {:<12} {:<13} {:>10} {:>10}",
            vh["name"].as_str().unwrap_or(""),
            vh["subnet"].as_str().unwrap_or(""),
            vh["policy"].as_str().unwrap_or(""),
            vh["udp"].as_str().unwrap_or(""),
            t(&vh["flows_created"]),
            t(&vh["packets"])
        );
    }
    if command == "stats" {
        let _ = writeln!(
            o,
            "\ncounters {}",
            serde_json::to_string(c).unwrap_or_default()
        );
        let _ = writeln!(o, "drops {}", nonzero_drops(&s["drops"]));
    }
    o
}

/// The runtime overrides (`slr ctl R overrides`, and the answer to a change).
fn human_overrides(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let hops = v["next_hops"].as_object();
    if hops.is_none_or(|h| h.is_empty()) {
        let _ = writeln!(o, "no runtime overrides: every next hop as the file says");
        return o;
    }
    let _ = writeln!(
        o,
        "{:<12} override (slr ctl R clear NAME lifts it)",
        "next hop"
    );
    for (name, ov) in hops.into_iter().flatten() {
        let _ = writeln!(o, "{name:<12} {}", override_text(ov));
    }
    o
}

/// One next hop's override, as text: `drained`, `weight 5`, `drained, weight 5`.
fn override_text(ov: &Value) -> String {
    let mut parts = Vec::new();
    if ov["drained"] == true {
        parts.push("drained".to_owned());
    }
    if let Some(w) = ov["weight"].as_u64() {
        parts.push(format!("weight {w}"));
    }
    parts.join(", ")
}

/// A JSON value as table text (strings without quotes).
fn t(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `reason=count` for every non-zero drop counter of a `[[reason, count], ...]` list, or "none".
fn nonzero_drops(drops: &Value) -> String {
    let nz: Vec<String> = drops
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x[1].as_u64() != Some(0))
        .map(|x| format!("{}={}", x[0].as_str().unwrap_or(""), x[1]))
        .collect();
    if nz.is_empty() {
        "none".into()
    } else {
        nz.join(" ")
    }
}
