//! Configuration files of `slr router` and `slr host` (TOML; every key in docs/CONFIG.md).
//!
//! Parsing happens in two steps: serde reads the file into plain structs (unknown keys and wrong
//! types are refused there, with line and column), then [`RouterFile::into_config`] and
//! [`HostFile::into_config`] check meanings (prefixes, addresses, policies, durations) and turn
//! them into the core's types. Every error names the file, the key and the value at fault.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use slr_core::flow_table::FlowTableConfig;
use slr_core::router::{NextHopConfig, RouterConfig, UdpMode, VirtualHostConfig};
use slr_core::select::Policy;
use slr_wire::Ipv4Cidr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads a configuration file, naming it in errors.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Parses TOML text into `T`, naming `file` (where the text came from) in errors.
fn parse_toml<T: for<'de> Deserialize<'de>>(text: &str, file: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| anyhow!("{}: {}", file.display(), e.to_string().trim_end()))
}

/// Parses and checks the text of a router configuration file; `file` is named in errors.
/// [`RouterFile::load`] is this after reading the file (fuzz/ feeds text here directly).
pub fn parse_router(text: &str, file: &Path) -> Result<RouterDaemonConfig> {
    parse_toml::<RouterFile>(text, file)?.into_config(file)
}

/// Parses and checks the text of a host configuration file; `file` is named in errors.
/// [`HostFile::load`] is this after reading the file (fuzz/ feeds text here directly).
pub fn parse_host(text: &str, file: &Path) -> Result<HostDaemonConfig> {
    parse_toml::<HostFile>(text, file)?.into_config(file)
}

/// Parses a duration such as `"5s"`, `"500ms"`, `"2m"`, `"1h"` or `"250us"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    // `try_`: `Duration::from_secs_f64` panics above u64::MAX seconds ("99999999999999999999h"),
    // and a typo in a config file must be an error, not a crash (fuzz/corpus/config/regression-*).
    Duration::try_from_secs_f64(secs).ok()
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(
        &self,
        key: &str,
        value: impl std::fmt::Debug,
        why: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow!(
            "{}: {}: {} (value {:?})",
            self.file.display(),
            key,
            why,
            value
        )
    }
    fn cidr(&self, key: &str, v: &str) -> Result<Ipv4Cidr> {
        v.parse().map_err(|_| {
            self.err(
                key,
                v,
                "not an IPv4 prefix such as 10.99.0.0/24 (host bits must be zero)",
            )
        })
    }
    fn addr(&self, key: &str, v: &str) -> Result<Ipv4Addr> {
        v.parse()
            .map_err(|_| self.err(key, v, "not an IPv4 address"))
    }
    fn duration(&self, key: &str, v: &str) -> Result<Duration> {
        parse_duration(v)
            .ok_or_else(|| self.err(key, v, "not a duration such as \"500ms\", \"5s\", \"2m\""))
    }
    fn socket(&self, key: &str, v: &str) -> Result<SocketAddr> {
        v.parse()
            .map_err(|_| self.err(key, v, "not an address:port such as 127.0.0.1:9464"))
    }
}

/// `slr router` configuration file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    router: RouterSection,
    #[serde(default)]
    flow_table: FlowTableSection,
    #[serde(default)]
    health_check: HealthSection,
    #[serde(default)]
    virtual_hosts: Vec<VirtualHostSection>,
    #[serde(default)]
    next_hops: Vec<NextHopSection>,
    control: Option<ControlSection>,
    #[serde(default)]
    gateways: GatewaysSection,
    cost: Option<toml::Table>,
    #[serde(default)]
    client_groups: Vec<ClientGroupSection>,
    #[serde(default)]
    fault: FaultSection,
}

/// `[fault]`: fault injection on the router's own tunnel sends (the kernel here has no netem).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultSection {
    #[serde(default)]
    delay: std::collections::BTreeMap<String, String>,
}

/// `[control]`: the state update protocol (mutual TLS against the operator CA).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    ca: String,
    cert: String,
    key: String,
    listen: Option<String>,
    #[serde(default = "default_report_interval")]
    report_interval: String,
    #[serde(default = "default_silent_after")]
    silent_after: u32,
    #[serde(default = "default_report_interval")]
    rebuild_interval: String,
    #[serde(default)]
    parents: Vec<ParentSection>,
}

fn default_report_interval() -> String {
    "1s".into()
}
fn default_silent_after() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParentSection {
    name: String,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaysSection {
    url: Option<String>,
    server_name: Option<String>,
    #[serde(default = "default_gateway_refresh")]
    refresh: String,
    #[serde(default)]
    children: Vec<GatewayChildSection>,
}

impl Default for GatewaysSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn default_gateway_refresh() -> String {
    "10s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayChildSection {
    name: String,
    address: String,
    subnets: Vec<String>,
    #[serde(default = "default_cost")]
    cost: f64,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

fn default_cost() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientGroupSection {
    name: String,
    prefixes: Vec<String>,
}

/// The state update protocol's settings (`[control]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Operator CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the CA for its name.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Where children report to this router (None: no child reports here).
    pub listen: Option<SocketAddr>,
    /// T: how often children are asked to report.
    pub report_interval: Duration,
    /// N: reports missed before a child leaves selection.
    pub silent_after: u32,
    /// R: how often the route table is rebuilt (also on every change).
    pub rebuild_interval: Duration,
    /// Parents this node reports to.
    pub parents: Vec<ParentConfig>,
}

/// A parent this node reports to.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentConfig {
    /// Its name (its certificate's name).
    pub name: String,
    /// Its control address.
    pub address: SocketAddr,
}

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
    pub labels: std::collections::BTreeMap<String, String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSection {
    name: String,
    #[serde(default)]
    level: Option<String>,
    tunnel_source: String,
    #[serde(default = "default_tun")]
    tun: String,
    #[serde(default = "default_mtu")]
    tunnel_mtu: u16,
    #[serde(default)]
    mss_clamp: bool,
    #[serde(default)]
    hash_seed: u64,
    control_socket: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default = "default_icmp_rate")]
    icmp_rate_limit: u32,
    #[serde(default)]
    trusted_parents: Vec<String>,
}

fn default_tun() -> String {
    "slr0".into()
}
fn default_mtu() -> u16 {
    1500
}
fn default_icmp_rate() -> u32 {
    1000
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlowTableSection {
    max_flows: Option<usize>,
    tcp_half_open_timeout: Option<String>,
    tcp_established_timeout: Option<String>,
    tcp_closing_timeout: Option<String>,
    udp_timeout: Option<String>,
    other_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_count")]
    count: u32,
    address: Option<String>,
}

impl Default for HealthSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn yes() -> bool {
    true
}
fn default_kind() -> String {
    "http".into()
}
fn default_port() -> u16 {
    80
}
fn default_path() -> String {
    "/health".into()
}
fn default_interval() -> String {
    "1s".into()
}
fn default_timeout() -> String {
    "500ms".into()
}
fn default_count() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VirtualHostSection {
    name: String,
    subnet: String,
    #[serde(default = "default_policy")]
    policy: String,
    #[serde(default = "default_udp")]
    udp: String,
    #[serde(default)]
    next_hops: Vec<String>,
    #[serde(default = "default_priority")]
    priority: String,
    #[serde(default)]
    rules: Vec<RuleSection>,
}

/// `[[virtual_hosts.rules]]`: request-sensitive steering (F14).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    #[serde(default)]
    dst_ports: Vec<String>,
    #[serde(default)]
    src_ports: Vec<String>,
    #[serde(default)]
    src_prefixes: Vec<String>,
    next_hops: Vec<String>,
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

fn default_priority() -> String {
    "high".into()
}

fn default_policy() -> String {
    "maglev".into()
}
fn default_udp() -> String {
    "pin".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextHopSection {
    name: String,
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
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
    pub client_groups: Vec<slr_core::route_table::ClientGroup>,
    /// Priority class per virtual host name: true = high priority.
    pub high_priority: Vec<(String, bool)>,
    /// Injected delay of tunnelled packets per next hop name (`[fault] delay`).
    pub fault_delay: Vec<(String, Duration)>,
    /// TUN device name.
    pub tun: String,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Health checks.
    pub health: HealthConfig,
    /// The core's configuration.
    pub core: RouterConfig,
}

impl RouterFile {
    /// Reads and checks a router configuration file.
    pub fn load(path: &Path) -> Result<RouterDaemonConfig> {
        parse_router(&read_text(path)?, path)
    }

    /// Checks meanings and converts.
    pub fn into_config(self, file: &Path) -> Result<RouterDaemonConfig> {
        let c = Ctx { file };
        let r = &self.router;
        let tunnel_source = c.addr("router.tunnel_source", &r.tunnel_source)?;
        if r.tunnel_mtu < 576 {
            bail!(c.err("router.tunnel_mtu", r.tunnel_mtu, "must be at least 576"));
        }
        if r.tun.is_empty() || r.tun.len() > 15 {
            bail!(c.err(
                "router.tun",
                &r.tun,
                "an interface name has 1 to 15 characters"
            ));
        }
        let mut core = RouterConfig::new(tunnel_source);
        core.tunnel_mtu = r.tunnel_mtu;
        // Clamp so that a full segment plus TCP/IP headers (40) plus the tunnel fits the MTU.
        core.mss_clamp = r
            .mss_clamp
            .then(|| r.tunnel_mtu - 40 - slr_core::router::IPIP_OVERHEAD as u16);
        core.hash_seed = r.hash_seed;
        core.icmp_rate_limit = r.icmp_rate_limit;
        for (i, p) in r.trusted_parents.iter().enumerate() {
            core.trusted_parents
                .push(c.cidr(&format!("router.trusted_parents[{i}]"), p)?);
        }
        let mut ft = FlowTableConfig::default();
        let f = &self.flow_table;
        if let Some(m) = f.max_flows {
            if m == 0 {
                bail!(c.err("flow_table.max_flows", m, "must be at least 1"));
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
                    bail!(c.err(key, v, "must be above zero"));
                }
                *slot = d.into();
            }
        }
        core.flow_table = ft;
        for (i, n) in self.next_hops.iter().enumerate() {
            let key = format!("next_hops[{i}]");
            if n.name.is_empty() {
                bail!(c.err(&format!("{key}.name"), &n.name, "must not be empty"));
            }
            if core
                .next_hops
                .iter()
                .any(|o: &NextHopConfig| o.name == n.name)
            {
                bail!(c.err(
                    &format!("{key}.name"),
                    &n.name,
                    "is used by another next hop"
                ));
            }
            core.next_hops.push(NextHopConfig {
                name: n.name.clone(),
                address: c.addr(&format!("{key}.address"), &n.address)?,
                weight: n.weight,
            });
        }
        let gateways = gateways(&c, &self.gateways)?;
        for g in &gateways.children {
            if core.next_hops.iter().any(|o| o.name == g.name) {
                bail!(c.err(
                    "gateways.children.name",
                    &g.name,
                    "is also a [[next_hops]] name"
                ));
            }
            core.next_hops.push(NextHopConfig {
                name: g.name.clone(),
                address: g.address,
                weight: 1,
            });
        }
        let mut high_priority = Vec::new();
        for (i, v) in self.virtual_hosts.iter().enumerate() {
            let key = format!("virtual_hosts[{i}]");
            let high = match v.priority.as_str() {
                "high" => true,
                "best_effort" => false,
                other => bail!(c.err(
                    &format!("{key}.priority"),
                    other,
                    "expected high or best_effort"
                )),
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
                if !core.next_hops.iter().any(|h| &h.name == n) {
                    bail!(c.err(
                        &format!("{key}.next_hops[{j}]"),
                        n,
                        "no [[next_hops]] entry has this name"
                    ));
                }
            }
            let mut rules = Vec::new();
            for (j, r) in v.rules.iter().enumerate() {
                let rk = format!("{key}.rules[{j}]");
                let ports = |field: &str, list: &[String]| -> Result<Vec<(u16, u16)>> {
                    list.iter()
                        .enumerate()
                        .map(|(k, p)| {
                            port_range(p).ok_or_else(|| {
                                c.err(
                                    &format!("{rk}.{field}[{k}]"),
                                    p,
                                    "not a port or range such as \"443\" or \"8000-8080\"",
                                )
                            })
                        })
                        .collect()
                };
                if r.next_hops.is_empty() {
                    bail!(c.err(
                        &format!("{rk}.next_hops"),
                        &r.next_hops,
                        "must name at least one next hop"
                    ));
                }
                for (k, n) in r.next_hops.iter().enumerate() {
                    if !core.next_hops.iter().any(|h| &h.name == n) {
                        bail!(c.err(
                            &format!("{rk}.next_hops[{k}]"),
                            n,
                            "no next hop or gateway child has this name"
                        ));
                    }
                }
                rules.push(slr_core::router::SteeringRule {
                    dst_ports: ports("dst_ports", &r.dst_ports)?,
                    src_ports: ports("src_ports", &r.src_ports)?,
                    src_prefixes: r
                        .src_prefixes
                        .iter()
                        .enumerate()
                        .map(|(k, p)| c.cidr(&format!("{rk}.src_prefixes[{k}]"), p))
                        .collect::<Result<Vec<_>>>()?,
                    next_hops: r.next_hops.clone(),
                });
            }
            if let Some(o) = core.virtual_hosts.iter().find(|o: &&VirtualHostConfig| {
                o.subnet.contains_cidr(&subnet) || subnet.contains_cidr(&o.subnet)
            }) {
                bail!(c.err(
                    &format!("{key}.subnet"),
                    &v.subnet,
                    format!("overlaps virtual host {:?}", o.name)
                ));
            }
            core.virtual_hosts.push(VirtualHostConfig {
                name: v.name.clone(),
                subnet,
                policy,
                udp,
                next_hops: v.next_hops.clone(),
                rules,
            });
        }
        let h = &self.health_check;
        let http = match h.kind.as_str() {
            "http" => true,
            "tcp" => false,
            other => bail!(c.err("health_check.kind", other, "expected http or tcp")),
        };
        let interval = c.duration("health_check.interval", &h.interval)?;
        let timeout = c.duration("health_check.timeout", &h.timeout)?;
        if timeout >= interval || timeout.is_zero() {
            bail!(c.err(
                "health_check.timeout",
                &h.timeout,
                "must be above zero and below health_check.interval"
            ));
        }
        if h.count == 0 {
            bail!(c.err("health_check.count", h.count, "must be at least 1"));
        }
        let address = h
            .address
            .as_deref()
            .map(|a| c.addr("health_check.address", a))
            .transpose()?;
        let health = HealthConfig {
            enabled: h.enabled,
            http,
            port: h.port,
            path: h.path.clone(),
            interval,
            timeout,
            count: h.count,
            address,
        };
        let control_socket = PathBuf::from(
            r.control_socket
                .clone()
                .unwrap_or_else(|| format!("/run/slr/{}.sock", r.name)),
        );
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
        let mut client_groups = Vec::new();
        for (i, g) in self.client_groups.iter().enumerate() {
            let key = format!("client_groups[{i}]");
            if g.name.is_empty()
                || client_groups
                    .iter()
                    .any(|o: &slr_core::route_table::ClientGroup| o.name == g.name)
            {
                bail!(c.err(
                    &format!("{key}.name"),
                    &g.name,
                    "must be non-empty and unique"
                ));
            }
            let prefixes = g
                .prefixes
                .iter()
                .enumerate()
                .map(|(j, p)| c.cidr(&format!("{key}.prefixes[{j}]"), p))
                .collect::<Result<Vec<_>>>()?;
            client_groups.push(slr_core::route_table::ClientGroup {
                name: g.name.clone(),
                prefixes,
            });
        }
        let cost: slr_policy::PolicyConfig = match &self.cost {
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|e| anyhow!("{}: [cost]: {}", file.display(), e.to_string().trim_end()))?,
            None => slr_policy::PolicyConfig::default(),
        };
        cost.compile()
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let uses_cost = core.virtual_hosts.iter().any(|v| v.policy == Policy::Cost);
        if uses_cost && control.as_ref().is_none_or(|c| c.listen.is_none()) {
            bail!(c.err(
                "control.listen",
                "(missing)",
                "a virtual host with policy \"cost\" needs [control] with listen (children report there)"
            ));
        }
        let mut fault_delay = Vec::new();
        for (name, d) in &self.fault.delay {
            let key = format!("fault.delay.{name}");
            if !core.next_hops.iter().any(|h| &h.name == name) {
                bail!(c.err(&key, name, "no next hop or gateway child has this name"));
            }
            let d = c.duration(&key, d)?;
            if d > Duration::from_secs(10) {
                bail!(c.err(&key, d, "at most 10s"));
            }
            fault_delay.push((name.clone(), d));
        }
        Ok(RouterDaemonConfig {
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
            metrics_listen,
            health,
            core,
        })
    }
}

/// Resolves a path from a config file relative to the file's directory.
fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn control(c: &Ctx, s: &ControlSection, router: bool) -> Result<ControlConfig> {
    let listen = match &s.listen {
        Some(l) if router => Some(c.socket("control.listen", l)?),
        Some(l) => bail!(c.err("control.listen", l, "hosts have no children: remove it")),
        None => None,
    };
    let report_interval = c.duration("control.report_interval", &s.report_interval)?;
    if report_interval < Duration::from_millis(50) {
        bail!(c.err(
            "control.report_interval",
            &s.report_interval,
            "must be at least 50ms"
        ));
    }
    let rebuild_interval = c.duration("control.rebuild_interval", &s.rebuild_interval)?;
    if rebuild_interval < Duration::from_millis(50) {
        bail!(c.err(
            "control.rebuild_interval",
            &s.rebuild_interval,
            "must be at least 50ms"
        ));
    }
    if s.silent_after == 0 {
        bail!(c.err("control.silent_after", s.silent_after, "must be at least 1"));
    }
    let mut parents = Vec::new();
    for (i, p) in s.parents.iter().enumerate() {
        if p.name.is_empty() {
            bail!(c.err(
                &format!("control.parents[{i}].name"),
                &p.name,
                "must not be empty"
            ));
        }
        parents.push(ParentConfig {
            name: p.name.clone(),
            address: c.socket(&format!("control.parents[{i}].address"), &p.address)?,
        });
    }
    Ok(ControlConfig {
        ca: relative_to(c.file, &s.ca),
        cert: relative_to(c.file, &s.cert),
        key: relative_to(c.file, &s.key),
        listen,
        report_interval,
        silent_after: s.silent_after,
        rebuild_interval,
        parents,
    })
}

fn gateways(c: &Ctx, s: &GatewaysSection) -> Result<GatewayConfig> {
    let mut children: Vec<GatewayChild> = Vec::new();
    for (i, g) in s.children.iter().enumerate() {
        let key = format!("gateways.children[{i}]");
        if g.name.is_empty() || children.iter().any(|o| o.name == g.name) {
            bail!(c.err(
                &format!("{key}.name"),
                &g.name,
                "must be non-empty and unique"
            ));
        }
        if !g.cost.is_finite() || g.cost < 0.0 {
            bail!(c.err(
                &format!("{key}.cost"),
                g.cost,
                "must be a finite number >= 0"
            ));
        }
        let subnets = g
            .subnets
            .iter()
            .enumerate()
            .map(|(j, n)| c.cidr(&format!("{key}.subnets[{j}]"), n))
            .collect::<Result<Vec<_>>>()?;
        children.push(GatewayChild {
            name: g.name.clone(),
            address: c.addr(&format!("{key}.address"), &g.address)?,
            subnets,
            cost: g.cost,
            labels: g.labels.clone(),
        });
    }
    if let Some(u) = &s.url {
        if !u.starts_with("https://") {
            bail!(c.err(
                "gateways.url",
                u,
                "must be an https:// URL (verified against the operator CA)"
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

/// `slr host` configuration file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    host: HostSection,
    control: Option<ControlSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    name: String,
    virtual_subnets: Vec<String>,
    trusted_tunnel_sources: Vec<String>,
    #[serde(default = "default_host_tun")]
    tun: String,
    control_socket: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default = "yes")]
    manage_routes: bool,
}

fn default_host_tun() -> String {
    "slrh0".into()
}

/// Everything `slr host` needs.
#[derive(Debug, Clone)]
pub struct HostDaemonConfig {
    /// Host name.
    pub name: String,
    /// Virtual subnets accepted as local (AnyIP).
    pub virtual_subnets: Vec<Ipv4Cidr>,
    /// Outer sources whose tunnels are terminated.
    pub trusted_tunnel_sources: Vec<Ipv4Cidr>,
    /// TUN device for re-injection.
    pub tun: String,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether the agent adds and removes the AnyIP routes itself.
    pub manage_routes: bool,
    /// State update protocol: the parents this host reports its load to.
    pub control: Option<ControlConfig>,
}

impl HostFile {
    /// Reads and checks a host configuration file.
    pub fn load(path: &Path) -> Result<HostDaemonConfig> {
        parse_host(&read_text(path)?, path)
    }

    /// Checks meanings and converts.
    pub fn into_config(self, path: &Path) -> Result<HostDaemonConfig> {
        let c = Ctx { file: path };
        let control = self
            .control
            .as_ref()
            .map(|s| control(&c, s, false))
            .transpose()?;
        let h = self.host;
        if h.virtual_subnets.is_empty() {
            bail!(c.err(
                "host.virtual_subnets",
                &h.virtual_subnets,
                "must name at least one virtual subnet"
            ));
        }
        if h.trusted_tunnel_sources.is_empty() {
            bail!(c.err(
                "host.trusted_tunnel_sources",
                &h.trusted_tunnel_sources,
                "must name at least one prefix (the routers of the site)"
            ));
        }
        if h.tun.is_empty() || h.tun.len() > 15 {
            bail!(c.err(
                "host.tun",
                &h.tun,
                "an interface name has 1 to 15 characters"
            ));
        }
        let virtual_subnets = h
            .virtual_subnets
            .iter()
            .enumerate()
            .map(|(i, s)| c.cidr(&format!("host.virtual_subnets[{i}]"), s))
            .collect::<Result<Vec<_>>>()?;
        let trusted_tunnel_sources = h
            .trusted_tunnel_sources
            .iter()
            .enumerate()
            .map(|(i, s)| c.cidr(&format!("host.trusted_tunnel_sources[{i}]"), s))
            .collect::<Result<Vec<_>>>()?;
        let metrics_listen = h
            .metrics_listen
            .as_deref()
            .map(|m| c.socket("host.metrics_listen", m))
            .transpose()?;
        Ok(HostDaemonConfig {
            control_socket: PathBuf::from(
                h.control_socket
                    .unwrap_or_else(|| format!("/run/slr/{}.sock", h.name)),
            ),
            name: h.name,
            virtual_subnets,
            trusted_tunnel_sources,
            tun: h.tun,
            metrics_listen,
            manage_routes: h.manage_routes,
            control,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slr-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
[router]
name = "r1"
tunnel_source = "10.200.2.2"
[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "weighted"
udp = "per_datagram"
[[next_hops]]
name = "h1"
address = "10.200.3.2"
weight = 2
"#;

    #[test]
    fn good_router_file() {
        let p = write("good.toml", GOOD);
        let c = RouterFile::load(&p).unwrap();
        assert_eq!(c.core.virtual_hosts[0].policy, Policy::Weighted);
        assert_eq!(c.core.virtual_hosts[0].udp, UdpMode::PerDatagram);
        assert_eq!(c.core.next_hops[0].weight, 2);
        assert_eq!(c.health.count, 3);
        assert_eq!(c.control_socket, PathBuf::from("/run/slr/r1.sock"));
    }

    #[test]
    fn errors_name_file_key_and_value() {
        let cases = [
            (
                GOOD.replace("10.99.0.0/24", "10.99.0.1/24"),
                "virtual_hosts[0].subnet",
                "10.99.0.1/24",
            ),
            (
                GOOD.replace("\"weighted\"", "\"fastest\""),
                "virtual_hosts[0].policy",
                "fastest",
            ),
            (
                GOOD.replace("\"10.200.3.2\"", "\"10.200.3\""),
                "next_hops[0].address",
                "10.200.3",
            ),
            (
                GOOD.replace("per_datagram", "sometimes"),
                "virtual_hosts[0].udp",
                "sometimes",
            ),
            (
                GOOD.to_string() + "[health_check]\ntimeout = \"2s\"\n",
                "health_check.timeout",
                "2s",
            ),
            (
                GOOD.to_string() + "[flow_table]\nudp_timeout = \"soon\"\n",
                "flow_table.udp_timeout",
                "soon",
            ),
            (
                GOOD.to_string() + "[cost]\nf = \"s.load +\"\n",
                "cost.f",
                "s.load +",
            ),
            (
                GOOD.to_string() + "[cost]\ng = \"mystery(m)\"\n",
                "cost.g",
                "mystery(m)",
            ),
            (
                GOOD.to_string() + "[cost]\ntimezone = \"Mars/Olympus\"\n",
                "cost.timezone",
                "Mars/Olympus",
            ),
            (
                GOOD.replace("\"weighted\"", "\"cost\""),
                "control.listen",
                "(missing)",
            ),
            (
                GOOD.to_string()
                    + "[[gateways.children]]\nname = \"as1\"\naddress = \"10.200.9.2\"\nsubnets = [\"10.99.0.1/16\"]\n",
                "gateways.children[0].subnets[0]",
                "10.99.0.1/16",
            ),
            (
                GOOD.replace("udp = \"per_datagram\"", "udp = \"pin\"\n[[virtual_hosts.rules]]\ndst_ports = [\"90-80\"]\nnext_hops = [\"h1\"]"),
                "virtual_hosts[0].rules[0].dst_ports[0]",
                "90-80",
            ),
        ];
        for (i, (text, key, value)) in cases.iter().enumerate() {
            let p = write(&format!("bad{i}.toml"), text);
            let e = format!("{:#}", RouterFile::load(&p).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(key), "{e}");
            assert!(e.contains(value), "{e}");
        }
        let p = write("typo.toml", &GOOD.replace("policy =", "polcy ="));
        let e = format!("{:#}", RouterFile::load(&p).unwrap_err());
        assert!(e.contains("polcy") && e.contains("typo.toml"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    /// The examples in docs/CONFIG.md are real configurations: they must load.
    #[test]
    fn documented_examples_load() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"))
                .unwrap();
        let block_after = |heading: &str| -> String {
            let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
            let rest = &doc[at..];
            let start = rest.find("```toml\n").unwrap() + 8;
            rest[start..start + rest[start..].find("```").unwrap()].to_string()
        };
        let file = Path::new("docs/CONFIG.md");
        let r = parse_router(&block_after("## Router"), file).unwrap();
        assert_eq!(r.core.virtual_hosts.len(), 1);
        assert_eq!(r.health.address, Some(Ipv4Addr::new(10, 99, 0, 1)));
        let h = parse_host(&block_after("## Host agent"), file).unwrap();
        assert_eq!(h.virtual_subnets.len(), 1);
        let up = parse_router(&block_after("## A router of the hierarchy"), file).unwrap();
        let c = up.control.as_ref().unwrap();
        assert_eq!(c.parents[0].name, "net");
        assert_eq!(up.gateways.children.len(), 2);
        assert_eq!(up.core.next_hops.len(), 2, "gateway children are next hops");
        assert_eq!(
            up.core.virtual_hosts[0].rules[0].dst_ports,
            vec![(443, 443), (8443, 8444)]
        );
        assert_eq!(up.client_groups[0].name, "east");
        let at = doc
            .find("without\n`listen`")
            .expect("host [control] example");
        let rest = &doc[at..];
        let start = rest.find("```toml\n").unwrap() + 8;
        let host = parse_host(
            &rest[start..start + rest[start..].find("```").unwrap()],
            file,
        )
        .unwrap();
        assert_eq!(host.control.unwrap().parents[0].name, "site-a");
    }
}
