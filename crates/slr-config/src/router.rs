//! `slr router`'s file, checked: [`RouterDaemonConfig`], built from a [`RouterFile`] in named
//! steps, one per section.

use crate::check::{ifname, Ctx};
use crate::control::{control, ControlConfig};
use crate::file::{
    ClientGroupSection, FaultSection, FlowTableSection, GatewaysSection, HealthSection,
    NextHopSection, RouterFile, RouterSection, RuleSection, VirtualHostSection,
};
use crate::ConfigError;
use slr_core::flow_table::FlowTableConfig;
use slr_core::route_table::ClientGroup;
use slr_core::router::{NextHopConfig, RouterConfig, SteeringRule, UdpMode, VirtualHostConfig};
use slr_core::select::Policy;
use slr_wire::Ipv4Cidr;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A next-level gateway (a child: lower router or host) from the gateway table.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayChild {
    /// Name (next hop name, certificate name).
    pub name: String,
    /// Tunnel endpoint.
    pub address: Ipv4Addr,
    /// Virtual subnets it may advertise.
    pub subnets: Vec<Ipv4Cidr>,
    /// Static routing cost.
    pub cost: f64,
    /// Operator labels (visible to cost functions).
    pub labels: BTreeMap<String, String>,
}

/// Where the gateway table comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Static entries (also the table until a configuration site answers).
    pub children: Vec<GatewayChild>,
    /// Network configuration site (HTTPS), if any.
    pub url: Option<String>,
    /// Name on the site's certificate (default: the URL's host).
    pub server_name: Option<String>,
    /// How often the site is fetched.
    pub refresh: Duration,
}

/// How the router checks its next hops.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Whether checks run at all (off: every next hop counts as available).
    pub enabled: bool,
    /// `http` (GET path, expect 2xx) or `tcp` (a completed handshake).
    pub http: bool,
    /// Port on the virtual host.
    pub port: u16,
    /// HTTP path.
    pub path: String,
    /// Time between checks of one next hop.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive results that change the state.
    pub count: u32,
    /// Virtual host address to probe (default: first address of the first virtual subnet).
    pub address: Option<Ipv4Addr>,
}

/// `router.fast_path` and `host.fast_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPathMode {
    /// Every packet through the daemon (the router's TUN device and core, the host agent's
    /// raw socket and TUN device).
    Off,
    /// In the kernel by XDP: a router's established flows, a host's tunnels.
    Xdp,
    /// In the kernel at tc ingress: the same programs' work on socket buffers, so that large
    /// (GSO) packets, as a veth from a local stack carries them, go through whole.
    Tc,
}

impl FastPathMode {
    pub(crate) fn parse(c: &Ctx<'_>, key: &str, v: &str) -> Result<Self, ConfigError> {
        match v {
            "off" => Ok(FastPathMode::Off),
            "xdp" => Ok(FastPathMode::Xdp),
            "tc" => Ok(FastPathMode::Tc),
            other => Err(c.err(key, other, "must be \"xdp\", \"tc\" or \"off\"")),
        }
    }
}

/// Everything `slr router` needs.
#[derive(Debug, Clone)]
pub struct RouterDaemonConfig {
    /// Router name.
    pub name: String,
    /// Level label (network, as, site, ...), for inspection and reports.
    pub level: String,
    /// State update protocol, if this router takes part in it.
    pub control: Option<ControlConfig>,
    /// Children (next-level gateways).
    pub gateways: GatewayConfig,
    /// The operator's cost functions (`[cost]`; checked to compile at load).
    pub cost: slr_policy::PolicyConfig,
    /// Client groups (F13 client location).
    pub client_groups: Vec<ClientGroup>,
    /// Priority class per virtual host name: true = high priority.
    pub high_priority: Vec<(String, bool)>,
    /// Injected delay of tunnelled packets per next hop name (`[fault] delay`).
    pub fault_delay: Vec<(String, Duration)>,
    /// TUN device name.
    pub tun: String,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Where runtime overrides are kept.
    pub overrides_file: PathBuf,
    /// How long a stopping router keeps forwarding its established flows.
    pub drain_period: Duration,
    /// Whether established flows are forwarded by the XDP program.
    pub fast_path: FastPathMode,
    /// Interfaces the XDP program attaches to (empty: all but loopback and the TUN device).
    pub fast_path_interfaces: Vec<String>,
    /// Where the fast path's flow map is pinned (None: nowhere; a restart loses the kernel's
    /// flows).
    pub fast_path_pin_dir: Option<PathBuf>,
    /// Entries of the fast path's flow map (at most the flow table's bound).
    pub fast_path_max_flows: usize,
    /// Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Health checks.
    pub health: HealthConfig,
    /// `[bgp]`: the virtual subnets announced through BIRD, if configured.
    pub bgp: Option<crate::BgpConfig>,
    /// `[cluster]`: flow mirroring with the other routers of the cluster, if configured.
    pub cluster: Option<crate::ClusterConfig>,
    /// The core's configuration.
    pub core: RouterConfig,
}

impl RouterDaemonConfig {
    /// The configuration in force when a fetched gateway table replaces the file's static
    /// `[[gateways.children]]` as next hops (`None`: the file's own). Names that are gone drop
    /// out of virtual hosts' lists, rules and fault delays.
    pub fn with_gateway_children(&self, children: Option<&[NextHopConfig]>) -> Self {
        let mut cfg = self.clone();
        let Some(children) = children else {
            return cfg;
        };
        let core = &mut cfg.core;
        core.next_hops
            .retain(|n| !self.gateways.children.iter().any(|g| g.name == n.name));
        for c in children {
            if core.next_hops.iter().all(|n| n.name != c.name) {
                core.next_hops.push(c.clone());
            }
        }
        let known: Vec<String> = core.next_hops.iter().map(|n| n.name.clone()).collect();
        for v in &mut core.virtual_hosts {
            v.next_hops.retain(|n| known.contains(n));
            for r in &mut v.rules {
                r.next_hops.retain(|n| known.contains(n));
            }
            v.rules.retain(|r| !r.next_hops.is_empty());
        }
        cfg.fault_delay.retain(|(n, _)| known.contains(n));
        cfg
    }

    /// The configuration in force: this one with a fetched gateway table's children (see
    /// [`RouterDaemonConfig::with_gateway_children`]) and the operator's runtime overrides.
    pub fn in_force(
        &self,
        gateway_children: Option<&[NextHopConfig]>,
        overrides: &crate::Overrides,
    ) -> Self {
        let mut cfg = self.with_gateway_children(gateway_children);
        overrides.apply(&mut cfg.core);
        cfg
    }

    /// What a reload may not change, named, if `new` changes it: the TUN device and tunnel
    /// source (the kernel routes and the socket are bound to them) and what the control thread
    /// and the fault wrappers read once at start.
    pub fn restart_needed_for(&self, new: &RouterDaemonConfig) -> Option<&'static str> {
        if new.tun != self.tun || new.core.tunnel_source != self.core.tunnel_source {
            return Some("router.tun and router.tunnel_source cannot change without a restart");
        }
        if new.overrides_file != self.overrides_file {
            return Some("router.overrides_file cannot change without a restart");
        }
        if new.control != self.control
            || new.gateways != self.gateways
            || new.cost != self.cost
            || new.client_groups != self.client_groups
            || new.high_priority != self.high_priority
            || new.fault_delay != self.fault_delay
            || new.level != self.level
            || new.bgp != self.bgp
            || new.cluster != self.cluster
        {
            return Some(
                "[control], [gateways], [cost], [[client_groups]], virtual host priorities, [fault], \
                 [bgp], [cluster] and router.level cannot change without a restart",
            );
        }
        None
    }
}

impl RouterFile {
    /// Checks meanings and converts; `file` is named in errors.
    pub fn into_config(self, file: &Path) -> Result<RouterDaemonConfig, ConfigError> {
        let c = Ctx { file };
        let r = &self.router;
        let mut core = router_section(&c, r)?;
        core.flow_table = flow_table(&c, &self.flow_table)?;
        core.next_hops = next_hops(&c, &self.next_hops)?;
        let gateways = gateways(&c, &self.gateways)?;
        add_gateway_next_hops(&c, &gateways, &mut core.next_hops)?;
        let (virtual_hosts, high_priority) =
            virtual_hosts(&c, &self.virtual_hosts, &core.next_hops)?;
        core.virtual_hosts = virtual_hosts;
        let health = health(&c, &self.health_check)?;
        let control_socket = PathBuf::from(
            r.control_socket
                .clone()
                .unwrap_or_else(|| format!("/run/slr/{}.sock", r.name)),
        );
        let overrides_file = PathBuf::from(
            r.overrides_file
                .clone()
                .unwrap_or_else(|| format!("/var/lib/slr/{}.overrides.json", r.name)),
        );
        let drain_period = c.duration("router.drain_period", &r.drain_period)?;
        if drain_period > Duration::from_secs(24 * 3600) {
            return Err(c.err("router.drain_period", &r.drain_period, "at most 24h"));
        }
        let fast_path = FastPathMode::parse(&c, "router.fast_path", &r.fast_path)?;
        for i in &r.fast_path_interfaces {
            ifname(&c, "router.fast_path_interfaces", i)?;
        }
        let metrics_listen = r
            .metrics_listen
            .as_deref()
            .map(|m| c.socket("router.metrics_listen", m))
            .transpose()?;
        let control = self
            .control
            .as_ref()
            .map(|s| control(&c, s, true))
            .transpose()?;
        let client_groups = client_groups(&c, &self.client_groups)?;
        let cost = cost(&c, self.cost.as_ref())?;
        let uses_cost = core.virtual_hosts.iter().any(|v| v.policy == Policy::Cost);
        if uses_cost && control.as_ref().is_none_or(|c| c.listen.is_none()) {
            return Err(c.err(
                "control.listen",
                "(missing)",
                "a virtual host with policy \"cost\" needs [control] with listen (children report there)",
            ));
        }
        let fault_delay = fault(&c, &self.fault, &core.next_hops)?;
        let bgp = self
            .bgp
            .as_ref()
            .map(|b| crate::bgp::bgp(&c, b, &r.name, core.tunnel_source))
            .transpose()?;
        let cluster = self
            .cluster
            .as_ref()
            .map(|s| crate::bgp::cluster(&c, s, &r.name))
            .transpose()?;
        // The core holds a mid-flow packet of an unknown flow while the peers are asked.
        // Only a router that asks someone holds them: one that only answers forwards at once.
        core.whohas = cluster
            .as_ref()
            .filter(|c| !c.ask_peers().is_empty())
            .and_then(|c| c.whohas)
            .map(|w| slr_core::whohas::WhohasConfig {
                timeout: slr_core::time::Duration::from_micros(w.timeout.as_micros() as u64),
                ..slr_core::whohas::WhohasConfig::default()
            });
        // The shortcut: signals for flows from a parent, the ingress's wait for them.
        core.shortcut = control.as_ref().and_then(|c| c.shortcut).map(|hold| {
            slr_core::shortcut::ShortcutConfig {
                hold: slr_core::time::Duration::from_micros(hold.as_micros() as u64),
                ..slr_core::shortcut::ShortcutConfig::default()
            }
        });
        Ok(RouterDaemonConfig {
            bgp,
            cluster,
            fault_delay,
            level: r.level.clone().unwrap_or_else(|| "site".into()),
            control,
            gateways,
            cost,
            client_groups,
            high_priority,
            name: r.name.clone(),
            tun: r.tun.clone(),
            control_socket,
            overrides_file,
            drain_period,
            fast_path,
            fast_path_interfaces: r.fast_path_interfaces.clone(),
            fast_path_max_flows: match r.fast_path_max_flows {
                None => core.flow_table.max_flows,
                Some(n) if n >= 1 && n as usize <= core.flow_table.max_flows => n as usize,
                Some(n) => {
                    return Err(c.err(
                        "router.fast_path_max_flows",
                        n,
                        "must be from 1 to flow_table.max_flows",
                    ))
                }
            },
            fast_path_pin_dir: match r.fast_path_pin_dir.as_deref() {
                None => Some(PathBuf::from(format!("/sys/fs/bpf/slr/{}", r.name))),
                Some("") => None,
                Some(d) if Path::new(d).is_absolute() => Some(PathBuf::from(d)),
                Some(d) => {
                    return Err(c.err(
                        "router.fast_path_pin_dir",
                        d,
                        "must be an absolute path (on a bpf filesystem), or \"\" for none",
                    ))
                }
            },
            metrics_listen,
            health,
            core,
        })
    }
}

/// `[router]`: the tunnel (source, MTU, MSS clamping), the hash seed, ICMP rate and the
/// trusted parents, as the core's configuration without next hops or virtual hosts.
fn router_section(c: &Ctx, r: &RouterSection) -> Result<RouterConfig, ConfigError> {
    let tunnel_source = c.addr("router.tunnel_source", &r.tunnel_source)?;
    if r.tunnel_mtu < 576 {
        return Err(c.err("router.tunnel_mtu", r.tunnel_mtu, "must be at least 576"));
    }
    ifname(c, "router.tun", &r.tun)?;
    let mut core = RouterConfig::new(tunnel_source);
    core.tunnel_mtu = r.tunnel_mtu;
    // Clamp so that a full segment plus TCP/IP headers (40) plus the tunnel fits the MTU.
    core.mss_clamp = r
        .mss_clamp
        .then(|| r.tunnel_mtu - 40 - slr_core::router::IPIP_OVERHEAD as u16);
    core.hash_seed = r.hash_seed;
    core.icmp_rate_limit = r.icmp_rate_limit;
    core.trusted_parents = c.cidrs("router.trusted_parents", &r.trusted_parents)?;
    Ok(core)
}

/// `[flow_table]`: the bound and the idle timeouts over the core's defaults.
fn flow_table(c: &Ctx, f: &FlowTableSection) -> Result<FlowTableConfig, ConfigError> {
    let mut ft = FlowTableConfig::default();
    if let Some(m) = f.max_flows {
        if m == 0 {
            return Err(c.err("flow_table.max_flows", m, "must be at least 1"));
        }
        ft.max_flows = m;
    }
    let timeouts: [(&str, &Option<String>, &mut slr_core::time::Duration); 5] = [
        (
            "flow_table.tcp_half_open_timeout",
            &f.tcp_half_open_timeout,
            &mut ft.tcp_half_open_timeout,
        ),
        (
            "flow_table.tcp_established_timeout",
            &f.tcp_established_timeout,
            &mut ft.tcp_established_timeout,
        ),
        (
            "flow_table.tcp_closing_timeout",
            &f.tcp_closing_timeout,
            &mut ft.tcp_closing_timeout,
        ),
        (
            "flow_table.udp_timeout",
            &f.udp_timeout,
            &mut ft.udp_timeout,
        ),
        (
            "flow_table.other_timeout",
            &f.other_timeout,
            &mut ft.other_timeout,
        ),
    ];
    for (key, v, slot) in timeouts {
        if let Some(v) = v {
            let d = c.duration(key, v)?;
            if d.is_zero() {
                return Err(c.err(key, v, "must be above zero"));
            }
            *slot = d.into();
        }
    }
    Ok(ft)
}

/// `[[next_hops]]`: unique, non-empty names and tunnel endpoints.
fn next_hops(c: &Ctx, list: &[NextHopSection]) -> Result<Vec<NextHopConfig>, ConfigError> {
    let mut out: Vec<NextHopConfig> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let key = format!("next_hops[{i}]");
        if n.name.is_empty() {
            return Err(c.err(&format!("{key}.name"), &n.name, "must not be empty"));
        }
        if out.iter().any(|o| o.name == n.name) {
            return Err(c.err(
                &format!("{key}.name"),
                &n.name,
                "is used by another next hop",
            ));
        }
        out.push(NextHopConfig {
            name: n.name.clone(),
            address: c.addr(&format!("{key}.address"), &n.address)?,
            weight: n.weight,
        });
    }
    Ok(out)
}

/// `[gateways]`: the static children (unique names, finite costs, their subnets) and the
/// configuration site.
fn gateways(c: &Ctx, s: &GatewaysSection) -> Result<GatewayConfig, ConfigError> {
    let mut children: Vec<GatewayChild> = Vec::new();
    for (i, g) in s.children.iter().enumerate() {
        let key = format!("gateways.children[{i}]");
        if g.name.is_empty() || children.iter().any(|o| o.name == g.name) {
            return Err(c.err(
                &format!("{key}.name"),
                &g.name,
                "must be non-empty and unique",
            ));
        }
        if !g.cost.is_finite() || g.cost < 0.0 {
            return Err(c.err(
                &format!("{key}.cost"),
                g.cost,
                "must be a finite number >= 0",
            ));
        }
        children.push(GatewayChild {
            name: g.name.clone(),
            address: c.addr(&format!("{key}.address"), &g.address)?,
            subnets: c.cidrs(&format!("{key}.subnets"), &g.subnets)?,
            cost: g.cost,
            labels: g.labels.clone(),
        });
    }
    if let Some(u) = &s.url {
        if !u.starts_with("https://") {
            return Err(c.err(
                "gateways.url",
                u,
                "must be an https:// URL (verified against the operator CA)",
            ));
        }
    }
    Ok(GatewayConfig {
        children,
        url: s.url.clone(),
        server_name: s.server_name.clone(),
        refresh: c.duration("gateways.refresh", &s.refresh)?,
    })
}

/// Every gateway child is a next hop too (weight 1), under a name no `[[next_hops]]` uses.
fn add_gateway_next_hops(
    c: &Ctx,
    gateways: &GatewayConfig,
    next_hops: &mut Vec<NextHopConfig>,
) -> Result<(), ConfigError> {
    for g in &gateways.children {
        if next_hops.iter().any(|o| o.name == g.name) {
            return Err(c.err(
                "gateways.children.name",
                &g.name,
                "is also a [[next_hops]] name",
            ));
        }
        next_hops.push(NextHopConfig {
            name: g.name.clone(),
            address: g.address,
            weight: 1,
        });
    }
    Ok(())
}

/// Priority class per virtual host name: true = high priority.
type PriorityClasses = Vec<(String, bool)>;

/// `[[virtual_hosts]]`: subnets that do not overlap, policies, UDP modes, member next hops
/// and steering rules; with each one's priority class (true: high).
fn virtual_hosts(
    c: &Ctx,
    list: &[VirtualHostSection],
    next_hops: &[NextHopConfig],
) -> Result<(Vec<VirtualHostConfig>, PriorityClasses), ConfigError> {
    let mut out: Vec<VirtualHostConfig> = Vec::new();
    let mut high_priority = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("virtual_hosts[{i}]");
        let high = match v.priority.as_str() {
            "high" => true,
            "best_effort" => false,
            other => {
                return Err(c.err(
                    &format!("{key}.priority"),
                    other,
                    "expected high or best_effort",
                ))
            }
        };
        high_priority.push((v.name.clone(), high));
        let subnet = c.cidr(&format!("{key}.subnet"), &v.subnet)?;
        let policy: Policy = v.policy.parse().map_err(|_| {
            c.err(
                &format!("{key}.policy"),
                &v.policy,
                "unknown policy (expected round_robin, weighted, least_flows, maglev or cost)",
            )
        })?;
        let udp: UdpMode = v.udp.parse().map_err(|_| {
            c.err(
                &format!("{key}.udp"),
                &v.udp,
                "unknown udp mode (expected pin or per_datagram)",
            )
        })?;
        for (j, n) in v.next_hops.iter().enumerate() {
            if !next_hops.iter().any(|h| &h.name == n) {
                return Err(c.err(
                    &format!("{key}.next_hops[{j}]"),
                    n,
                    "no [[next_hops]] entry has this name",
                ));
            }
        }
        let rules = v
            .rules
            .iter()
            .enumerate()
            .map(|(j, r)| rule(c, &format!("{key}.rules[{j}]"), r, next_hops))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(o) = out
            .iter()
            .find(|o| o.subnet.contains_cidr(&subnet) || subnet.contains_cidr(&o.subnet))
        {
            return Err(c.err(
                &format!("{key}.subnet"),
                &v.subnet,
                format!("overlaps virtual host {:?}", o.name),
            ));
        }
        out.push(VirtualHostConfig {
            name: v.name.clone(),
            subnet,
            policy,
            udp,
            next_hops: v.next_hops.clone(),
            rules,
        });
    }
    Ok((out, high_priority))
}

/// One `[[virtual_hosts.rules]]` (F14): port ranges, client prefixes, known next hops.
fn rule(
    c: &Ctx,
    key: &str,
    r: &RuleSection,
    next_hops: &[NextHopConfig],
) -> Result<SteeringRule, ConfigError> {
    let ports = |field: &str, list: &[String]| -> Result<Vec<(u16, u16)>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(k, p)| {
                port_range(p).ok_or_else(|| {
                    c.err(
                        &format!("{key}.{field}[{k}]"),
                        p,
                        "not a port or range such as \"443\" or \"8000-8080\"",
                    )
                })
            })
            .collect()
    };
    if r.next_hops.is_empty() {
        return Err(c.err(
            &format!("{key}.next_hops"),
            &r.next_hops,
            "must name at least one next hop",
        ));
    }
    for (k, n) in r.next_hops.iter().enumerate() {
        if !next_hops.iter().any(|h| &h.name == n) {
            return Err(c.err(
                &format!("{key}.next_hops[{k}]"),
                n,
                "no next hop or gateway child has this name",
            ));
        }
    }
    Ok(SteeringRule {
        dst_ports: ports("dst_ports", &r.dst_ports)?,
        src_ports: ports("src_ports", &r.src_ports)?,
        src_prefixes: c.cidrs(&format!("{key}.src_prefixes"), &r.src_prefixes)?,
        next_hops: r.next_hops.clone(),
    })
}

/// Parses "80" or "8000-8080".
fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some((a, b))
        }
        None => s.trim().parse().ok().map(|p| (p, p)),
    }
}

/// `[health_check]`: kind, timing (a timeout below the interval), count, address.
fn health(c: &Ctx, h: &HealthSection) -> Result<HealthConfig, ConfigError> {
    let http = match h.kind.as_str() {
        "http" => true,
        "tcp" => false,
        other => return Err(c.err("health_check.kind", other, "expected http or tcp")),
    };
    let interval = c.duration("health_check.interval", &h.interval)?;
    let timeout = c.duration("health_check.timeout", &h.timeout)?;
    if timeout >= interval || timeout.is_zero() {
        return Err(c.err(
            "health_check.timeout",
            &h.timeout,
            "must be above zero and below health_check.interval",
        ));
    }
    if h.count == 0 {
        return Err(c.err("health_check.count", h.count, "must be at least 1"));
    }
    let address = h
        .address
        .as_deref()
        .map(|a| c.addr("health_check.address", a))
        .transpose()?;
    Ok(HealthConfig {
        enabled: h.enabled,
        http,
        port: h.port,
        path: h.path.clone(),
        interval,
        timeout,
        count: h.count,
        address,
    })
}

/// `[[client_groups]]`: unique names and their prefixes.
fn client_groups(c: &Ctx, list: &[ClientGroupSection]) -> Result<Vec<ClientGroup>, ConfigError> {
    let mut out: Vec<ClientGroup> = Vec::new();
    for (i, g) in list.iter().enumerate() {
        let key = format!("client_groups[{i}]");
        if g.name.is_empty() || out.iter().any(|o| o.name == g.name) {
            return Err(c.err(
                &format!("{key}.name"),
                &g.name,
                "must be non-empty and unique",
            ));
        }
        out.push(ClientGroup {
            name: g.name.clone(),
            prefixes: c.cidrs(&format!("{key}.prefixes"), &g.prefixes)?,
        });
    }
    Ok(out)
}

/// `[cost]`: slr-policy's configuration, whose expressions must compile.
fn cost(c: &Ctx, table: Option<&toml::Table>) -> Result<slr_policy::PolicyConfig, ConfigError> {
    let cost: slr_policy::PolicyConfig = match table {
        Some(t) => t
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Cost {
                file: c.file.to_path_buf(),
                message: format!("[cost]: {}", e.to_string().trim_end()),
            })?,
        None => slr_policy::PolicyConfig::default(),
    };
    cost.compile().map_err(|e| ConfigError::Cost {
        file: c.file.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(cost)
}

/// `[fault] delay`: per next hop (which must exist), at most 10 s.
fn fault(
    c: &Ctx,
    f: &FaultSection,
    next_hops: &[NextHopConfig],
) -> Result<Vec<(String, Duration)>, ConfigError> {
    let mut out = Vec::new();
    for (name, d) in &f.delay {
        let key = format!("fault.delay.{name}");
        if !next_hops.iter().any(|h| &h.name == name) {
            return Err(c.err(&key, name, "no next hop or gateway child has this name"));
        }
        let d = c.duration(&key, d)?;
        if d > Duration::from_secs(10) {
            return Err(c.err(&key, d, "at most 10s"));
        }
        out.push((name.clone(), d));
    }
    Ok(out)
}
