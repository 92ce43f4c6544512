//! `lab up`, `lab down` and `lab status`.
//!
//! `up` records every namespace and process in the state file *before* moving on, so
//! that whatever stops it (an error, Ctrl-C, a crash) leaves a state that `down` can
//! undo completely, and `down` undoes only what is recorded.

use super::configs::{self, HTTP_PORT};
use super::netns;
use super::probe;
use super::state::{self, lab_dir, Process, State};
use super::topology::{Node, Role, Topology, LINK_PREFIX, NODE_IFNAME};
use super::{check_interrupted, interrupted, sleep_interruptible};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

/// How `up` behaves.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How long to wait for hosts and VIPs to answer.
    pub ready_timeout: Duration,
    /// Start `slr router` and `slr host` (false: network and servers only).
    pub daemons: bool,
    /// Start a Prometheus server scraping every daemon.
    pub prometheus: bool,
    /// The `fast_path` of routers and hosts ("xdp", "tc" or "off"; `None`: the daemons' default).
    pub fast_path: Option<String>,
}

/// Grace period between SIGTERM and SIGKILL in `down`.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Reads and validates a topology file; errors name the file, key and value.
pub fn load_topology(file: &Path) -> Result<Topology> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Topology::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))
}

/// Builds a lab; on any failure (or Ctrl-C) tears down what it built and returns the
/// error.
pub fn up(file: &Path, opts: &UpOptions) -> Result<State> {
    let mut topology = load_topology(file)?;
    topology.fast_path = opts.fast_path.clone();
    let dir = lab_dir(&topology.name);
    if dir.exists() {
        bail!(
            "lab {:?} is already up (state in {}); run `slr lab down {}` first",
            topology.name,
            dir.display(),
            topology.name
        );
    }
    for node in &topology.nodes {
        let ns = topology.netns(&node.name);
        if netns::exists(&ns) {
            bail!(
                "network namespace {ns} already exists but no lab state records it; \
                 remove it (`ip netns delete {ns}`) or rename the lab"
            );
        }
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.join("logs").display()))?;
    let mut state = State::new(topology, file.to_path_buf());
    state.save()?;
    match build(&mut state, opts) {
        Ok(()) => Ok(state),
        Err(e) => {
            let why = if interrupted() {
                "interrupted"
            } else {
                "up failed"
            };
            eprintln!("slr lab: {why}, tearing down lab {:?}", state.lab);
            if let Err(te) = teardown(&state) {
                eprintln!("slr lab: teardown: {te:#}");
            }
            Err(e)
        }
    }
}

/// Builds the lab `up` recorded in `state`: the network, the daemons' configs and
/// processes; then waits until it answers.
fn build(state: &mut State, opts: &UpOptions) -> Result<()> {
    let t = state.topology.clone();
    eprintln!(
        "slr lab: building {:?}: {} namespaces",
        t.name,
        t.nodes.len()
    );
    let core_ns = build_network(state, &t)?;
    if t.bgp.is_none() {
        route_virtual_subnets(&t, &core_ns)?;
    }
    check_interrupted()?;

    let exe = std::env::current_exe().context("finding this executable")?;
    // A hierarchy's daemons authenticate each other with certificates of the lab's own CA.
    // So do a cluster's routers when they mirror their flows.
    if t.is_hierarchy() || t.mirror || t.whohas {
        make_pki(&t, &exe)?;
    }
    check_interrupted()?;

    mount_pin_fs(&state.dir());
    write_configs(&t)?;
    prepare_fast_paths(&t, &core_ns)?;
    start_core_bird(state, &t)?;
    start_processes(state, &t, &exe, opts)?;
    if opts.daemons {
        wait_bgp(state, opts)?;
    }
    wait_ready(state, opts)?;
    if opts.prometheus {
        let command = crate::prometheus::prepare(&t)?;
        let (program, args) = command.split_first().expect("a program");
        start(
            state,
            &t.core().name,
            "prometheus",
            std::ffi::OsStr::new(program),
            args,
        )?;
        let addr = crate::prometheus::wait_ready(&t, opts.ready_timeout)?;
        state.prometheus = Some(format!("http://{addr} in {}", t.netns(&t.core().name)));
    }
    state.ready = true;
    state.save()
}

/// A router whose configuration asks for the XDP fast path transmits established flows back
/// out of its link to the core with XDP_TX: a veth hands such frames only to a peer that runs
/// an XDP program, so the core side of its link gets `slr_pass` (attached through the link,
/// it goes with the namespace at `down`).
fn prepare_fast_paths(t: &Topology, core_ns: &str) -> Result<()> {
    let links: Vec<String> = t
        .nodes_with(Role::Router)
        .filter(|r| crate::configs::router_fast_path(t, &r.name) == "xdp")
        .filter_map(|r| t.link(&r.name).map(|l| l.core_ifname))
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    in_netns(core_ns, move || {
        for l in &links {
            slr_xdp::attach_pass_to_link(l).with_context(|| format!("XDP pass program on {l}"))?;
        }
        Ok(())
    })?;
    // Clients send complete checksums, as packets from a wire have them (see
    // `slr_io::netns::set_tx_checksum`).
    for c in t.nodes_with(Role::Client) {
        in_netns(&t.netns(&c.name), || {
            slr_io::netns::set_tx_checksum(NODE_IFNAME, false)
                .with_context(|| format!("transmit checksum offload off on {NODE_IFNAME}"))
        })?;
    }
    Ok(())
}

/// Runs `f` on a thread of its own in network namespace `ns`.
fn in_netns(ns: &str, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let name = ns.to_string();
    std::thread::spawn(move || -> Result<()> {
        slr_io::netns::enter_netns(&name).with_context(|| format!("entering {name}"))?;
        f().with_context(|| format!("in {name}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread working in {ns} panicked"))?
}

/// Makes every namespace, each node's link to the core and their sysctls; returns the
/// core's namespace.
fn build_network(state: &mut State, t: &Topology) -> Result<String> {
    let core_ns = t.netns(&t.core().name);
    // The core forwards between all links. rp_filter stays off everywhere: paths are
    // asymmetric by design (requests via the router, replies straight back).
    // Recorded before it is created: a crash in between leaves `down` a name to delete
    // (deleting one that does not exist is fine), never a namespace nobody knows about.
    state.namespaces.push(core_ns.clone());
    state.save()?;
    netns::add(&core_ns)?;
    let mut core_sysctls = vec![
        ("net.ipv4.ip_forward".to_string(), "1"),
        ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
        ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
        // With several routers, spread flows over them by 5-tuple, not address pair.
        ("net.ipv4.fib_multipath_hash_policy".to_string(), "1"),
    ];
    for node in t.nodes.iter().filter(|n| n.role != Role::Core) {
        check_interrupted()?;
        let core_ifname = add_node(state, t, node, &core_ns)?;
        core_sysctls.push((format!("net.ipv4.conf.{core_ifname}.rp_filter"), "0"));
    }
    netns::sysctl(&core_ns, &core_sysctls)?;
    Ok(core_ns)
}

/// Makes a node's namespace (recorded first, like the core's) and its link to the core;
/// returns the core side's interface name.
fn add_node(state: &mut State, t: &Topology, node: &Node, core_ns: &str) -> Result<String> {
    let ns = t.netns(&node.name);
    let link = t.link(&node.name).expect("non-core node has a link");
    state.namespaces.push(ns.clone());
    state.save()?;
    netns::add(&ns)?;
    netns::add_veth(core_ns, &link.core_ifname, &ns, NODE_IFNAME)?;
    netns::add_address(
        &ns,
        NODE_IFNAME,
        &format!("{}/{LINK_PREFIX}", link.node_address),
    )?;
    netns::add_address(
        core_ns,
        &link.core_ifname,
        &format!("{}/{LINK_PREFIX}", link.core_address),
    )?;
    netns::ip_in(
        &ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &link.core_address.to_string(),
        ],
    )?;
    let mut sysctls = vec![
        ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
        ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
        (format!("net.ipv4.conf.{NODE_IFNAME}.rp_filter"), "0"),
    ];
    if node.role == Role::Router {
        sysctls.push(("net.ipv4.ip_forward".to_string(), "1"));
    }
    netns::sysctl(&ns, &sysctls)?;
    Ok(link.core_ifname)
}

/// Routes each virtual subnet in the core to the router(s), so clients reach the VIPs
/// through them.
fn route_virtual_subnets(t: &Topology, core_ns: &str) -> Result<()> {
    // In a hierarchy only to the top router: lower routers and hosts receive only tunnels
    // addressed to their own 10.200.k.2, which the core routes anyway.
    let routers: Vec<Ipv4Addr> = t
        .announcing_routers()
        .iter()
        .map(|r| t.address(&r.name).expect("router has a link"))
        .collect();
    for vh in &t.virtual_hosts {
        let subnet = vh.subnet.to_string();
        let mut args = vec!["route".to_string(), "add".to_string(), subnet];
        if let [only] = routers.as_slice() {
            args.extend(["via".to_string(), only.to_string()]);
        } else {
            for r in &routers {
                args.extend(["nexthop".to_string(), "via".to_string(), r.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        netns::ip_in(core_ns, &args)?;
    }
    Ok(())
}

/// BIRD's control socket in the core of a lab with `[bgp]`.
pub fn core_bird_socket(lab: &str) -> std::path::PathBuf {
    lab_dir(lab).join("core-bird.ctl")
}

/// Starts the core's BIRD in a lab with `[bgp]`: the routers' announcements become the core's
/// routes to the virtual subnets.
fn start_core_bird(state: &mut State, t: &Topology) -> Result<()> {
    let Some(text) = configs::core_bird_config(t) else {
        return Ok(());
    };
    let conf = lab_dir(&t.name).join("core-bird.conf");
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    let args = vec![
        "-f".to_string(),
        "-c".to_string(),
        conf.display().to_string(),
        "-s".to_string(),
        core_bird_socket(&t.name).display().to_string(),
    ];
    start(
        state,
        &t.core().name,
        "bird",
        std::ffi::OsStr::new("bird"),
        &args,
    )
    .context("starting BIRD in the core (Debian: bird2; scripts/install-deps installs it)")
}

/// In a lab with `[bgp]`, waits until the core's BIRD has an established session with every
/// announcing router and a route to every virtual subnet in its kernel.
fn wait_bgp(state: &State, opts: &UpOptions) -> Result<()> {
    let t = &state.topology;
    if t.bgp.is_none() {
        return Ok(());
    }
    eprintln!("slr lab: waiting for the core's BGP sessions and routes");
    let socket = core_bird_socket(&t.name);
    let core_ns = t.netns(&t.core().name);
    let deadline = Instant::now() + opts.ready_timeout;
    let sessions = t.announcing_routers().len();
    let backups = t.bgp.as_ref().map(|b| b.backup.clone()).unwrap_or_default();
    let primaries: Vec<String> = t
        .announcing_routers()
        .iter()
        .filter(|r| !backups.contains(&r.name))
        .map(|r| t.address(&r.name).expect("router has a link").to_string())
        .collect();
    loop {
        check_interrupted()?;
        check_processes(state)?;
        let established = slr_bgp::birdc(
            std::path::Path::new("birdc"),
            &socket,
            &["show", "protocols"],
        )
        .map(|text| {
            slr_bgp::parse_protocols(&text)
                .iter()
                .filter(|p| p.established())
                .count()
        })
        .unwrap_or(0);
        // Every subnet through every primary router (backups stay out of the kernel's route).
        let routed = t.virtual_hosts.iter().all(|v| {
            netns::ip_in(&core_ns, &["route", "show", &v.subnet.to_string()]).is_ok_and(|out| {
                primaries
                    .iter()
                    .all(|a| out.split_whitespace().any(|w| w == a.as_str()))
            })
        });
        if established == sessions && routed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the core's BGP: {established} of {sessions} sessions established, virtual subnets \
                 {} routed after {:?} (logs in {})",
                if routed { "all" } else { "not all" },
                opts.ready_timeout,
                lab_dir(&t.name).join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes every router's and host's daemon configuration.
fn write_configs(t: &Topology) -> Result<()> {
    for node in t
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Router | Role::Host))
    {
        let text = if node.role == Role::Router {
            configs::router_config(t, &node.name)
        } else {
            configs::host_config(t, &node.name)
        };
        let path = configs::config_path(&t.name, &node.name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Starts the processes: routers and host agents (unless `--no-daemons`), then the hosts'
/// servers.
fn start_processes(state: &mut State, t: &Topology, exe: &Path, opts: &UpOptions) -> Result<()> {
    if opts.daemons {
        for role in [Role::Router, Role::Host] {
            for node in t.nodes_with(role) {
                let config = configs::config_path(&t.name, &node.name);
                let args = vec![
                    role.as_str().to_string(),
                    "-c".to_string(),
                    config.display().to_string(),
                ];
                start(state, &node.name, role.as_str(), exe.as_os_str(), &args)?;
            }
        }
    }
    for host in t.nodes_with(Role::Host) {
        let args = configs::serve_args(t, &host.name);
        start(state, &host.name, "serve", exe.as_os_str(), &args)?;
    }
    Ok(())
}

/// Makes the lab's CA and a certificate for every router and host (`slr ca init`, `slr ca
/// issue`) in [`configs::pki_dir`], which goes with the state directory at `down`.
fn make_pki(t: &Topology, exe: &Path) -> Result<()> {
    let dir = configs::pki_dir(&t.name);
    eprintln!(
        "slr lab: making the lab's CA and certificates in {}",
        dir.display()
    );
    let exe_s = exe.display().to_string();
    let dir_s = dir.display().to_string();
    netns::run(&exe_s, ["ca", "init", dir_s.as_str()]).with_context(|| {
        format!(
            "creating the lab's CA with `{exe_s} ca init {dir_s}` (a hierarchy lab needs an slr with the `ca` subcommand)"
        )
    })?;
    for node in t
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Router | Role::Host))
    {
        check_interrupted()?;
        netns::run(&exe_s, ["ca", "issue", dir_s.as_str(), node.name.as_str()])
            .with_context(|| format!("issuing the certificate of {}", node.name))?;
    }
    Ok(())
}

/// Starts a process in a node's namespace and records it at once.
pub fn start(
    state: &mut State,
    node: &str,
    kind: &str,
    program: &std::ffi::OsStr,
    args: &[String],
) -> Result<()> {
    let ns = state.topology.netns(node);
    let log = lab_dir(&state.lab)
        .join("logs")
        .join(format!("{node}-{kind}.log"));
    let child = netns::spawn_in(&ns, program, args, &log)?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let start_time = state::start_time(pid).unwrap_or(0);
    let mut command = vec![program.to_string_lossy().into_owned()];
    command.extend(args.iter().cloned());
    state.processes.push(Process {
        node: node.to_string(),
        kind: kind.to_string(),
        netns: ns,
        pid,
        start_time,
        log,
        command,
    });
    state.save()
}

/// `slr lab restart NODE`: stops a node's daemon with `signal` (SIGTERM: its graceful stop;
/// SIGKILL: a crash, nothing cleaned up), waits until it is gone, and starts it again with
/// the same command line, in the same namespace, writing on to the same log.
pub fn restart(name: Option<&str>, node: &str, signal: i32, wait: Duration) -> Result<()> {
    let lab = select_lab(name)?.ok_or_else(|| anyhow!("no lab is up"))?;
    let dir = lab_dir(&lab);
    let mut state = State::load(&dir)?.ok_or_else(|| anyhow!("lab {lab:?} has no state"))?;
    let at = state
        .processes
        .iter()
        .position(|p| p.node == node && matches!(p.kind.as_str(), "router" | "host"))
        .ok_or_else(|| anyhow!("lab {lab:?} has no router or host daemon on node {node:?}"))?;
    let old = state.processes[at].clone();
    let Some((program, args)) = old.command.split_first() else {
        bail!("{node}: its command line was not recorded (a lab from an older slr): bring the lab down and up again");
    };
    let started = Instant::now();
    old.signal(signal);
    while old.is_running() {
        if started.elapsed() > wait {
            bail!(
                "{node} {} (pid {}) did not exit within {wait:?} of signal {signal}",
                old.kind,
                old.pid
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = started.elapsed();
    state.processes.remove(at);
    start(
        &mut state,
        node,
        &old.kind,
        std::ffi::OsStr::new(program),
        args,
    )?;
    let new = state.processes.last().expect("just started");
    println!(
        "slr lab: {node} {} restarted (pid {} exited {:.3} s after signal {signal}; pid {} now)",
        old.kind,
        old.pid,
        stopped.as_secs_f64(),
        new.pid
    );
    Ok(())
}

/// Log tails of every process, for error messages.
fn log_tails(state: &State) -> String {
    state
        .processes
        .iter()
        .map(|p| {
            format!(
                "\n--- {} {} (pid {}), {}:\n{}",
                p.node,
                p.kind,
                p.pid,
                p.log.display(),
                state::log_tail(&p.log, 15)
            )
        })
        .collect()
}

/// Fails if a process the lab started has exited.
fn check_processes(state: &State) -> Result<()> {
    if let Some(p) = state.processes.iter().find(|p| !p.is_running()) {
        bail!(
            "{} {} (pid {}) exited; its log {}:\n{}",
            p.node,
            p.kind,
            p.pid,
            p.log.display(),
            state::log_tail(&p.log, 20)
        );
    }
    Ok(())
}

/// Waits until every host answers `/health` on its own address and every VIP answers
/// `/` through the router, from the first client (in a hierarchy: from the first client of
/// each client group, whose flows the top router may route by other entries, and from the
/// first client without a group). A hierarchy then waits until every router hears from
/// every child ([`wait_reports`]).
fn wait_ready(state: &State, opts: &UpOptions) -> Result<()> {
    let t = &state.topology;
    let first_client = t
        .nodes_with(Role::Client)
        .next()
        .expect("validated: a client");
    let deadline = Instant::now() + opts.ready_timeout;
    let mut targets: Vec<(String, &str, SocketAddrV4, &str)> = t
        .nodes_with(Role::Host)
        .map(|h| {
            let addr = t.address(&h.name).expect("host has a link");
            (
                format!("host {} at {addr}", h.name),
                first_client.name.as_str(),
                SocketAddrV4::new(addr, HTTP_PORT),
                "/health",
            )
        })
        .collect();
    let mut vip_clients: Vec<&str> = vec![first_client.name.as_str()];
    if t.is_hierarchy() {
        vip_clients = t
            .client_groups()
            .iter()
            .map(|(_, members)| members[0].name.as_str())
            .chain(
                t.nodes_with(Role::Client)
                    .find(|c| c.group.is_none())
                    .map(|c| c.name.as_str()),
            )
            .collect();
    }
    if opts.daemons {
        for client in vip_clients {
            targets.extend(t.virtual_hosts.iter().map(|v| {
                (
                    format!(
                        "virtual host {} at {} (through the router), from {client}",
                        v.name,
                        v.vip()
                    ),
                    client,
                    SocketAddrV4::new(v.vip(), HTTP_PORT),
                    "/",
                )
            }));
        }
    }
    for (what, client, addr, path) in targets {
        eprintln!("slr lab: waiting for {what}");
        let client_ns = t.netns(client);
        let mut last_error;
        loop {
            check_interrupted()?;
            check_processes(state)?;
            let attempt = netns::in_netns(&client_ns, move || {
                probe::http_get(addr, path, Duration::from_millis(700))
            });
            match attempt {
                Ok((200, body)) if path != "/" || body.starts_with("served-by=") => break,
                Ok((status, body)) => {
                    last_error = format!("status {status}, body {:?}", body.trim())
                }
                Err(e) => last_error = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what} did not answer from {} within {:?} (last: {last_error}){}",
                    client_ns,
                    opts.ready_timeout,
                    log_tails(state)
                );
            }
            sleep_interruptible(Duration::from_millis(200));
        }
    }
    if opts.daemons && t.is_hierarchy() {
        wait_reports(state, opts)?;
    }
    Ok(())
}

/// Waits until every router of a hierarchy has heard from every child (`slr ctl NODE
/// children`: each child `live`), then one more report and rebuild interval, so that the
/// top router's table holds every branch. Routers that cannot say (no `children`
/// command) get [`settle_time`] instead.
fn wait_reports(state: &State, opts: &UpOptions) -> Result<()> {
    let t = &state.topology;
    let c = t.control.clone().unwrap_or_default();
    let parse = |s: &str| slr_config::parse_duration(s).unwrap_or(Duration::from_secs(1));
    let deadline = Instant::now() + opts.ready_timeout;
    eprintln!("slr lab: waiting for every router to hear from each of its children");
    loop {
        check_interrupted()?;
        check_processes(state)?;
        let mut silent = Vec::new();
        for r in t.nodes_with(Role::Router) {
            let sock = lab_dir(&t.name).join(format!("{}.sock", r.name));
            let view = match slr_ctl::request(&sock, &serde_json::json!({"cmd": "children"})) {
                Ok(v) => v,
                Err(e) if format!("{e:#}").contains("unknown command") => {
                    let settle = settle_time(t);
                    eprintln!(
                        "slr lab: {} cannot list its children; giving the reports {settle:?} to reach the top",
                        r.name
                    );
                    sleep_interruptible(settle);
                    return check_interrupted();
                }
                Err(e) => {
                    silent.push(format!("{} ({e:#})", r.name));
                    continue;
                }
            };
            let rows = view["control"]["children"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for child in t.children(&r.name) {
                let live = rows
                    .iter()
                    .any(|row| row["name"] == child.name.as_str() && row["live"] == true);
                if !live {
                    silent.push(format!("{} -> {}", r.name, child.name));
                }
            }
        }
        if silent.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {:?}, routers had not heard from these children: {}{}",
                opts.ready_timeout,
                silent.join(", "),
                log_tails(state)
            );
        }
        sleep_interruptible(Duration::from_millis(250));
    }
    // The last reports climb one more level per interval; the top rebuilds its table.
    sleep_interruptible(parse(&c.report_interval) + parse(&c.rebuild_interval));
    check_interrupted()
}

/// How long reports take to climb a hierarchy once the first path works: at each level a
/// router learns its children's load within a report interval and rebuilds its table within
/// a rebuild interval; one more report interval for the slowest first connection.
pub fn settle_time(t: &Topology) -> Duration {
    let c = t.control.clone().unwrap_or_default();
    let parse = |s: &str| slr_config::parse_duration(s).unwrap_or(Duration::from_secs(1));
    let (report, rebuild) = (parse(&c.report_interval), parse(&c.rebuild_interval));
    let depth = t
        .nodes_with(Role::Router)
        .map(|r| t.depth(&r.name) + 1)
        .max()
        .unwrap_or(1) as u32;
    (report + rebuild) * depth + report
}

/// Where the lab's routers pin their fast path's flow maps (`router.fast_path_pin_dir`): a bpf
/// filesystem of the lab's own, mounted in the machine's mount namespace, so that every daemon
/// (each started by `ip netns exec`, whose fresh /sys hides /sys/fs/bpf) sees the same one and
/// a restarted router finds what its predecessor pinned.
pub fn pin_fs(dir: &Path) -> std::path::PathBuf {
    dir.join("bpf")
}

/// Mounts the lab's bpf filesystem; where it cannot, the routers run unpinned (they say so).
fn mount_pin_fs(dir: &Path) {
    let at = pin_fs(dir);
    let made = std::fs::create_dir_all(&at)
        .map_err(anyhow::Error::from)
        .and_then(|()| netns::run("mount", ["-t", "bpf", "slr-lab", &at.display().to_string()]));
    if let Err(e) = made {
        eprintln!(
            "slr lab: no bpf filesystem at {} ({e:#}): routers will not pin their flows",
            at.display()
        );
    }
}

/// Unmounts the lab's bpf filesystem (its pinned maps go with it), if mounted.
fn unmount_pin_fs(dir: &Path) -> Result<()> {
    let at = pin_fs(dir);
    if slr_xdp::is_bpffs(&at) {
        netns::run("umount", ["-l", &at.display().to_string()])?;
    }
    Ok(())
}

/// `slr lab xdp-pass NODE on|off`: the XDP pass program on the core's end of a node's link.
pub fn xdp_pass(name: Option<&str>, node: &str, on: bool) -> Result<()> {
    let lab = select_lab(name)?.ok_or_else(|| anyhow!("no lab is up"))?;
    let state = State::load(&lab_dir(&lab))?.ok_or_else(|| anyhow!("lab {lab:?} has no state"))?;
    let t = &state.topology;
    let link = t
        .link(node)
        .ok_or_else(|| anyhow!("lab {lab:?} has no node {node:?} with a link"))?
        .core_ifname;
    let core_ns = t.netns(&t.core().name);
    let l = link.clone();
    in_netns(&core_ns, move || {
        if on {
            slr_xdp::attach_pass_to_link(&l)
        } else {
            slr_xdp::detach_from_link(&l)
        }
        .with_context(|| format!("XDP pass program on {l}"))
    })?;
    println!(
        "slr lab: XDP pass program {} on {link} (core side of {node}'s link)",
        if on { "attached" } else { "detached" }
    );
    Ok(())
}

/// `slr lab core-xdp on|off`: the lab core's XDP forwarder (`slr_fwd`) on every link of the
/// core, forwarding in XDP to the links whose node runs an XDP program (routers and hosts with
/// the fast path), so that a benchmark does not spend most of the machine on the core's kernel
/// forwarding, which stands for the network. `off` takes it away and puts back what `lab up`
/// attached (`slr_pass` toward routers with the fast path).
pub fn core_xdp(name: Option<&str>, on: bool) -> Result<()> {
    let lab = select_lab(name)?.ok_or_else(|| anyhow!("no lab is up"))?;
    let state = State::load(&lab_dir(&lab))?.ok_or_else(|| anyhow!("lab {lab:?} has no state"))?;
    let t = &state.topology;
    let core_ns = t.netns(&t.core().name);
    let links: Vec<String> = t
        .nodes
        .iter()
        .filter_map(|n| t.link(&n.name).map(|l| l.core_ifname))
        .collect();
    let xdp_node = |n: &Node| match n.role {
        Role::Router => configs::router_fast_path(t, &n.name) == "xdp",
        Role::Host => configs::host_fast_path(t, &n.name) == "xdp",
        _ => false,
    };
    let ports: Vec<String> = t
        .nodes
        .iter()
        .filter(|n| xdp_node(n))
        .filter_map(|n| t.link(&n.name).map(|l| l.core_ifname))
        .collect();
    let routers: Vec<String> = t
        .nodes_with(Role::Router)
        .filter(|r| configs::router_fast_path(t, &r.name) == "xdp")
        .filter_map(|r| t.link(&r.name).map(|l| l.core_ifname))
        .collect();
    let (l, p) = (links.clone(), ports.clone());
    in_netns(&core_ns, move || {
        if on {
            slr_xdp::attach_forwarder_to_links(&l, &p).context("the core's XDP forwarder")
        } else {
            for i in &l {
                slr_xdp::detach_from_link(i).with_context(|| format!("detaching XDP from {i}"))?;
            }
            for i in &routers {
                slr_xdp::attach_pass_to_link(i)
                    .with_context(|| format!("XDP pass program on {i}"))?;
            }
            Ok(())
        }
    })?;
    if on {
        println!(
            "slr lab: the core forwards in XDP on {} links, to {}",
            links.len(),
            ports.join(" ")
        );
    } else {
        println!("slr lab: the core forwards in its kernel again");
    }
    Ok(())
}

/// Stops a lab's recorded processes, deletes its recorded namespaces (newest first) and
/// removes its state directory. Keeps going past errors so as much as possible goes.
pub fn teardown(state: &State) -> Result<()> {
    let killed = state::stop_processes(&state.processes, STOP_GRACE);
    if !killed.is_empty() {
        eprintln!(
            "slr lab: killed after {:?}: {}",
            STOP_GRACE,
            killed.join(", ")
        );
    }
    let mut errors = Vec::new();
    for ns in state.namespaces.iter().rev() {
        if let Err(e) = netns::delete(ns) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Err(e) = unmount_pin_fs(&state.dir()) {
        errors.push(format!("{e:#}"));
    }
    if errors.is_empty() {
        let dir = state.dir();
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        Ok(())
    } else {
        // Keep the state so that another `down` can retry.
        bail!("{}", errors.join("\n"))
    }
}

/// Picks the lab a command is about: the named one, or the only one up.
/// `Ok(None)` when none is up.
pub(crate) fn select_lab(name: Option<&str>) -> Result<Option<String>> {
    if let Some(name) = name {
        // The name becomes a path under /run/slr-lab that `down` removes: accept only
        // what a topology could have produced.
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            bail!("{name:?} is not a lab name");
        }
        return Ok(lab_dir(name).exists().then(|| name.to_string()));
    }
    let labs = state::list_labs()?;
    match labs.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => bail!("several labs are up ({}); name one", many.join(", ")),
    }
}

/// `slr lab down [NAME]`.
pub fn down(name: Option<&str>) -> Result<()> {
    let Some(lab) = select_lab(name)? else {
        match name {
            Some(n) => println!("slr lab: lab {n:?} is not up"),
            None => println!("slr lab: no lab is up"),
        }
        return Ok(());
    };
    let dir = lab_dir(&lab);
    let Some(state) = State::load(&dir)? else {
        // A crash before the first save: nothing was created yet.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!(
            "slr lab: lab {lab:?} had nothing recorded; removed {}",
            dir.display()
        );
        return Ok(());
    };
    teardown(&state).with_context(|| format!("tearing down lab {lab:?}"))?;
    println!(
        "slr lab: lab {lab:?} is down ({} processes stopped, {} namespaces deleted)",
        state.processes.len(),
        state.namespaces.len()
    );
    Ok(())
}

/// `slr lab status [--json] [NAME]`.
pub fn status(name: Option<&str>, json: bool) -> Result<()> {
    let Some(lab) = select_lab(name)? else {
        match name {
            Some(n) => bail!("lab {n:?} is not up"),
            None => bail!("no lab is up (start one with `slr lab up examples/site.toml`)"),
        }
    };
    let state = State::load(&lab_dir(&lab))?
        .with_context(|| format!("lab {lab:?} has no state file yet (still starting?)"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&state))?);
    } else {
        print_status(&state);
    }
    Ok(())
}

/// The JSON form of `status` (a struct, so keys keep this documented order).
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Lab name.
    pub lab: String,
    /// Whether `up` finished (every host and VIP answered).
    pub ready: bool,
    /// The lab's state directory (configs, logs, sockets).
    pub state_dir: String,
    /// Every node, the core included.
    pub nodes: Vec<NodeJson>,
    /// Every virtual host.
    pub virtual_hosts: Vec<VirtualHostJson>,
    /// Every process the lab started.
    pub processes: Vec<ProcessJson>,
    /// The lab's Prometheus (`up --prometheus`): its URL and namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
}

/// A node in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct NodeJson {
    /// Node name.
    pub name: String,
    /// client, router, host or core.
    pub role: &'static str,
    /// Its network namespace.
    pub netns: String,
    /// Its addresses, CIDR notation.
    pub addresses: Vec<String>,
    /// Pids of the processes the lab runs there.
    pub pids: Vec<i32>,
    /// In a hierarchy, the (first) router above this router or host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Every router above it, when it has several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// A router's level ("network", "as", "site", ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// A client's client group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A virtual host in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct VirtualHostJson {
    /// Name.
    pub name: String,
    /// Virtual subnet.
    pub subnet: String,
    /// The first address of the subnet, which the lab's servers and clients use.
    pub vip: String,
}

/// A process in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct ProcessJson {
    /// Node it runs on.
    pub node: String,
    /// router, host, serve or tcpdump.
    pub kind: String,
    /// Process id.
    pub pid: i32,
    /// Whether it still runs.
    pub running: bool,
    /// Its log file.
    pub log: String,
}

/// Builds the JSON form of `status`.
pub fn status_json(state: &State) -> StatusJson {
    let t = &state.topology;
    StatusJson {
        lab: state.lab.clone(),
        ready: state.ready,
        state_dir: state.dir().display().to_string(),
        nodes: t
            .nodes
            .iter()
            .map(|n| NodeJson {
                name: n.name.clone(),
                role: n.role.as_str(),
                netns: t.netns(&n.name),
                addresses: t.addresses(n),
                pids: state.pids(&n.name),
                parent: n.parent().map(str::to_owned),
                parents: if n.parents.len() > 1 {
                    n.parents.clone()
                } else {
                    Vec::new()
                },
                level: n.level.clone(),
                group: n.group.clone(),
            })
            .collect(),
        virtual_hosts: t
            .virtual_hosts
            .iter()
            .map(|v| VirtualHostJson {
                name: v.name.clone(),
                subnet: v.subnet.to_string(),
                vip: v.vip().to_string(),
            })
            .collect(),
        processes: state
            .processes
            .iter()
            .map(|p| ProcessJson {
                node: p.node.clone(),
                kind: p.kind.clone(),
                pid: p.pid,
                running: p.is_running(),
                log: p.log.display().to_string(),
            })
            .collect(),
        prometheus: state.prometheus.clone(),
    }
}

fn since(created_unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created_unix);
    let s = now.saturating_sub(created_unix);
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn print_status(state: &State) {
    let t = &state.topology;
    println!(
        "lab {}: {}, up for {} (topology {}, state {})",
        state.lab,
        if state.ready { "ready" } else { "NOT READY" },
        since(state.created_unix),
        state.topology_file.display(),
        state.dir().display()
    );
    // A hierarchy adds where each node sits: a router's level, a node's parent, a client's
    // group.
    let place = |n: &super::topology::Node| -> String {
        if !t.is_hierarchy() {
            return String::new();
        }
        let mut p: Vec<String> = Vec::new();
        if let Some(l) = &n.level {
            p.push(l.clone());
        }
        if !n.parents.is_empty() {
            p.push(format!("< {}", n.parents.join(",")));
        }
        if let Some(g) = &n.group {
            p.push(format!("group {g}"));
        }
        format!(
            " {:<18}",
            if p.is_empty() {
                "-".into()
            } else {
                p.join(" ")
            }
        )
    };
    // Columns as wide as the longest name (at least the widths a one-site lab needs).
    let node_w = t
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let netns_w = t
        .nodes
        .iter()
        .map(|n| t.netns(&n.name).len())
        .max()
        .unwrap_or(0)
        .max(20);
    println!(
        "  {:<node_w$} {:<7}{} {:<netns_w$} {:<18} PROCESSES",
        "NODE",
        "ROLE",
        if t.is_hierarchy() {
            format!(" {:<18}", "PLACE")
        } else {
            String::new()
        },
        "NETNS",
        "ADDRESS"
    );
    for n in &t.nodes {
        let addrs = t.addresses(n);
        let addr = match addrs.as_slice() {
            [] => "-".to_string(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} +{}", rest.len()),
        };
        let procs: Vec<String> = state
            .processes
            .iter()
            .filter(|p| p.node == n.name)
            .map(|p| {
                format!(
                    "{} {}{}",
                    p.kind,
                    p.pid,
                    if p.is_running() { "" } else { " (exited)" }
                )
            })
            .collect();
        println!(
            "  {:<node_w$} {:<7}{} {:<netns_w$} {:<18} {}",
            n.name,
            n.role.as_str(),
            place(n),
            t.netns(&n.name),
            addr,
            if procs.is_empty() {
                "-".to_string()
            } else {
                procs.join(", ")
            }
        );
    }
    println!(
        "  {:<10} {:<18} {:<15} {:<12} UDP",
        "VHOST", "SUBNET", "VIP", "POLICY"
    );
    for v in &t.virtual_hosts {
        println!(
            "  {:<10} {:<18} {:<15} {:<12} {}",
            v.name,
            v.subnet.to_string(),
            v.vip().to_string(),
            v.policy.as_str(),
            v.udp.as_str()
        );
    }
}

/// What `up` prints when the lab is ready: where things are and what to try.
pub fn print_up_summary(state: &State) {
    let t = &state.topology;
    let count = |r| t.nodes_with(r).count();
    println!(
        "slr lab: {} is up ({} router(s), {} host(s), {} client(s)); state and logs in {}",
        state.lab,
        count(Role::Router),
        count(Role::Host),
        count(Role::Client),
        state.dir().display()
    );
    for line in t.tree() {
        println!("  {line}");
    }
    if let Some(p) = &state.prometheus {
        println!(
            "  prometheus: {p}: ip netns exec {} curl -s 'http://127.0.0.1:{}/api/v1/query?query=up'",
            t.netns(&t.core().name),
            crate::prometheus::PORT
        );
    }
    let client = t.nodes_with(Role::Client).next().map(|c| t.netns(&c.name));
    let host = t.nodes_with(Role::Host).next();
    if let (Some(client_ns), Some(host)) = (client, host) {
        for v in &t.virtual_hosts {
            println!("  try: ip netns exec {client_ns} curl http://{}/", v.vip());
        }
        println!(
            "  direct to a host: ip netns exec {client_ns} curl http://{}/",
            t.address(&host.name).expect("host has a link")
        );
    }
    if let Some(top) = t.top_router() {
        println!(
            "  routers: slr ctl {0} children; slr ctl {0} table; slr ctl {0} flows",
            top.name
        );
    }
    println!(
        "  status: slr lab status; tear down: slr lab down {}",
        state.lab
    );
    if interrupted() {
        println!("  (interrupted after it came up)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(file: &str) -> Topology {
        let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
        Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn status_json_adds_parent_level_and_group() {
        let state = State::new(example("three-level.toml"), "three-level.toml".into());
        let v = serde_json::to_value(status_json(&state)).unwrap();
        let node = |name: &str| {
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == name)
                .unwrap()
                .clone()
        };
        let net = node("net");
        assert_eq!(net["role"], "router");
        assert_eq!(net["level"], "network");
        assert!(net.get("parent").is_none(), "the top router has none");
        assert_eq!(net["addresses"][0], "10.200.3.2/24");
        assert_eq!(node("as2")["parent"], "net");
        assert_eq!(node("site-c")["level"], "site");
        assert_eq!(node("h10")["parent"], "site-d");
        assert!(node("h10").get("level").is_none());
        assert_eq!(node("c3")["group"], "west");
        assert_eq!(node("core")["role"], "core");
        for key in ["name", "role", "netns", "addresses", "pids"] {
            assert!(node("c1").get(key).is_some(), "{key}");
        }
        // A static lab keeps its keys; its one router is a site.
        let state = State::new(example("site.toml"), "site.toml".into());
        let v = serde_json::to_value(status_json(&state)).unwrap();
        let r1 = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "r1")
            .unwrap();
        assert_eq!(r1["level"], "site");
        assert!(r1.get("parent").is_none());
    }

    #[test]
    fn settle_time_grows_with_depth() {
        assert_eq!(
            settle_time(&example("three-level.toml")),
            Duration::from_secs(7)
        );
        assert_eq!(
            settle_time(&example("four-level.toml")),
            Duration::from_secs(9)
        );
    }
}
