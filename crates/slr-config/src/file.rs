//! The files as written: plain structs that serde reads (unknown keys and wrong types are
//! refused there, with line and column) and writes (the lab builds its daemons' files from
//! these types). Values stay as written (strings for addresses, prefixes and durations); the
//! checks of [`RouterFile::into_config`](crate::RouterFile::into_config) and
//! [`HostFile::into_config`](crate::HostFile::into_config) give them meaning.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `slr router` configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    /// `[router]`.
    pub router: RouterSection,
    /// `[flow_table]`.
    #[serde(default, skip_serializing_if = "FlowTableSection::is_default")]
    pub flow_table: FlowTableSection,
    /// `[health_check]`.
    #[serde(default)]
    pub health_check: HealthSection,
    /// `[[virtual_hosts]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHostSection>,
    /// `[[next_hops]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_hops: Vec<NextHopSection>,
    /// `[control]`: the state update protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSection>,
    /// `[gateways]`: the children (next-level gateways).
    #[serde(default, skip_serializing_if = "GatewaysSection::is_default")]
    pub gateways: GatewaysSection,
    /// `[cost]`: the operator's cost functions (slr-policy's `PolicyConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<toml::Table>,
    /// `[[client_groups]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_groups: Vec<ClientGroupSection>,
    /// `[fault]`: fault injection.
    #[serde(default, skip_serializing_if = "FaultSection::is_empty")]
    pub fault: FaultSection,
    /// `[bgp]`: announcing the virtual subnets through BIRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpSection>,
    /// `[cluster]`: flow mirroring with the routers that back this one up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: the routers of one cluster mirror the flows they pin and let go of to each
/// other over mutual TLS (F17b), so that a survivor forwards a dead router's established flows
/// to the same next hops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Where the peers push to this router ("address:port").
    pub listen: String,
    /// Operator CA certificate.
    pub ca: String,
    /// This router's certificate (its dNSName is the router's name).
    pub cert: String,
    /// Its key.
    pub key: String,
    /// `[[cluster.peers]]`: the other routers of the cluster.
    #[serde(default)]
    pub peers: Vec<ClusterPeerSection>,
    /// Mirror flows to the peers (F17b). Default true.
    pub mirror: Option<bool>,
    /// Ask the peers who holds a mid-flow packet's unknown flow (WHOHAS, F17c). Default true.
    pub whohas: Option<bool>,
    /// How long a WHOHAS question waits before the policy picks. Default "50ms".
    pub whohas_timeout: Option<String>,
    /// Flows per second each peer may ask about (token bucket). Default 50000.
    pub whohas_rate: Option<u32>,
}

/// `[[cluster.peers]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPeerSection {
    /// Its name (its certificate's dNSName).
    pub name: String,
    /// Its `[cluster] listen` address.
    pub address: String,
    /// Mirror flows to this peer (default: `[cluster] mirror`). `false` for a neighbour that is
    /// only asked WHOHAS (a router below, which holds the flows it pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    /// Ask this peer WHOHAS (default: `[cluster] whohas`). `false` for a neighbour this router
    /// only answers (a router above, which asks it who holds a flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<bool>,
}

/// `[bgp]`: the router announces its virtual subnets to its BGP neighbours through BIRD, which
/// it starts (and which dies with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpSection {
    /// This router's AS number.
    pub local_as: u32,
    /// BGP router ID (default: `router.tunnel_source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// BGP hold time, whole seconds (default "3s", the least RFC 4271 allows).
    #[serde(default = "default_hold_time")]
    pub hold_time: String,
    /// BFD on every session with this interval (multiplier 3); absent: no BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_interval: Option<String>,
    /// The `bird` program (default "bird", from Debian's bird2).
    #[serde(default = "default_bird")]
    pub bird: String,
    /// The `birdc` program (default "birdc").
    #[serde(default = "default_birdc")]
    pub birdc: String,
    /// Where BIRD's configuration, control socket and log are kept (default
    /// `/run/slr/bgp-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// `[[bgp.neighbors]]`: the access routers that learn the subnets.
    #[serde(default)]
    pub neighbors: Vec<BgpNeighborSection>,
}

/// `[[bgp.neighbors]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighborSection {
    /// Its address (directly connected).
    pub address: String,
    /// Its AS number.
    #[serde(rename = "as")]
    pub asn: u32,
}

fn default_hold_time() -> String {
    "3s".into()
}
fn default_bird() -> String {
    "bird".into()
}
fn default_birdc() -> String {
    "birdc".into()
}

/// `[router]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Names the daemon in logs, metrics and `slr ctl`.
    pub name: String,
    /// Level label (network, as, site, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Outer source of the tunnels it starts.
    pub tunnel_source: String,
    /// TUN device that captures virtual-host traffic.
    #[serde(default = "default_tun")]
    pub tun: String,
    /// MTU of the path to next hops.
    #[serde(default = "default_mtu")]
    pub tunnel_mtu: u16,
    /// Clamp SYN MSS so that segments fit the tunnel.
    #[serde(default)]
    pub mss_clamp: bool,
    /// Seed of the flow hash (Maglev).
    #[serde(default)]
    pub hash_seed: u64,
    /// Control socket path (default `/run/slr/<name>.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    /// Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// ICMP errors per second.
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate_limit: u32,
    /// Prefixes whose tunnels it terminates.
    #[serde(default)]
    pub trusted_parents: Vec<String>,
    /// Where runtime overrides (`slr ctl R drain H`) are kept (default
    /// `/var/lib/slr/<name>.overrides.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides_file: Option<String>,
    /// How long a stopping router (SIGTERM) keeps forwarding its established flows.
    #[serde(default = "default_drain_period")]
    pub drain_period: String,
    /// The kernel fast path: "xdp" (established flows forwarded by an XDP program on the
    /// ingress interfaces) or "off" (every packet through the TUN device and the core).
    #[serde(default = "default_fast_path")]
    pub fast_path: String,
    /// Interfaces the XDP program attaches to (default: every interface but loopback and the
    /// TUN device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fast_path_interfaces: Vec<String>,
    /// Where the fast path's flow map is pinned (a directory on a bpf filesystem; default
    /// /sys/fs/bpf/slr/NAME; "" pins nothing): a restarted router takes its flows back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_pin_dir: Option<String>,
    /// Entries of the fast path's flow map (default: `flow_table.max_flows`): established
    /// flows beyond it stay on the TUN path, counted in slr_fast_path_map_full_total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_max_flows: Option<u64>,
}

impl RouterSection {
    /// A `[router]` with every default: only the name and the tunnel source are set.
    pub fn new(name: &str, tunnel_source: &str) -> Self {
        RouterSection {
            name: name.to_owned(),
            level: None,
            tunnel_source: tunnel_source.to_owned(),
            tun: default_tun(),
            tunnel_mtu: default_mtu(),
            mss_clamp: false,
            hash_seed: 0,
            control_socket: None,
            metrics_listen: None,
            icmp_rate_limit: default_icmp_rate(),
            trusted_parents: Vec::new(),
            overrides_file: None,
            drain_period: default_drain_period(),
            fast_path: default_fast_path(),
            fast_path_interfaces: Vec::new(),
            fast_path_pin_dir: None,
            fast_path_max_flows: None,
        }
    }
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
fn default_fast_path() -> String {
    "xdp".into()
}
fn default_drain_period() -> String {
    "30s".into()
}

/// `[flow_table]`: the bound and the idle timeouts (absent: the core's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTableSection {
    /// Most flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flows: Option<usize>,
    /// SYN seen, no ACK yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_half_open_timeout: Option<String>,
    /// Idle established connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established_timeout: Option<String>,
    /// After FIN or RST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_closing_timeout: Option<String>,
    /// Idle pinned UDP flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<String>,
    /// ICMP echo and other protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_timeout: Option<String>,
}

impl FlowTableSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[health_check]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Off: every next hop counts as available.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `http` or `tcp`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Port on the virtual host.
    #[serde(default = "default_port")]
    pub port: u16,
    /// HTTP path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Between checks of one next hop.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Per check.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Consecutive results that change the state.
    #[serde(default = "default_count")]
    pub count: u32,
    /// VIP to probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            enabled: true,
            kind: default_kind(),
            port: default_port(),
            path: default_path(),
            interval: default_interval(),
            timeout: default_timeout(),
            count: default_count(),
            address: None,
        }
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

/// `[[virtual_hosts]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostSection {
    /// Name.
    pub name: String,
    /// Virtual subnet.
    pub subnet: String,
    /// Selection policy (`slr_core::select::Policy` by name).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// UDP mode (`slr_core::router::UdpMode` by name).
    #[serde(default = "default_udp")]
    pub udp: String,
    /// Member next hops (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_hops: Vec<String>,
    /// `high` or `best_effort`.
    #[serde(default = "default_priority")]
    pub priority: String,
    /// `[[virtual_hosts.rules]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSection>,
}

impl VirtualHostSection {
    /// A virtual host with the given policy and UDP mode and every other default.
    pub fn new(name: &str, subnet: &str, policy: &str, udp: &str) -> Self {
        VirtualHostSection {
            name: name.to_owned(),
            subnet: subnet.to_owned(),
            policy: policy.to_owned(),
            udp: udp.to_owned(),
            next_hops: Vec::new(),
            priority: default_priority(),
            rules: Vec::new(),
        }
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

/// `[[virtual_hosts.rules]]`: request-sensitive steering (F14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Destination ports or ranges.
    #[serde(default)]
    pub dst_ports: Vec<String>,
    /// Client ports or ranges.
    #[serde(default)]
    pub src_ports: Vec<String>,
    /// Client prefixes.
    #[serde(default)]
    pub src_prefixes: Vec<String>,
    /// Where matching flows may go.
    pub next_hops: Vec<String>,
}

/// `[[next_hops]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextHopSection {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Relative share; 0 drains.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `[control]`: the state update protocol (mutual TLS against the operator CA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Operator CA certificate.
    pub ca: String,
    /// This node's certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
    /// Where children report (routers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// T.
    #[serde(default = "default_report_interval")]
    pub report_interval: String,
    /// N.
    #[serde(default = "default_silent_after")]
    pub silent_after: u32,
    /// R.
    #[serde(default = "default_report_interval")]
    pub rebuild_interval: String,
    /// `[[control.parents]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentSection>,
    /// The shortcut (F10): signal the hosts picked for flows from a parent, relay children's
    /// signals, and (at the ingress) tunnel later packets straight to the host. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<bool>,
    /// How long the ingress holds the packets after a SYN waiting for the flow's shortcut
    /// ("0s": never). Default "20ms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut_hold: Option<String>,
}

impl ControlSection {
    /// A `[control]` with the certificate paths and every default.
    pub fn new(ca: &str, cert: &str, key: &str) -> Self {
        ControlSection {
            ca: ca.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            listen: None,
            report_interval: default_report_interval(),
            silent_after: default_silent_after(),
            rebuild_interval: default_report_interval(),
            parents: Vec::new(),
            shortcut: None,
            shortcut_hold: None,
        }
    }
}

fn default_report_interval() -> String {
    "1s".into()
}
fn default_silent_after() -> u32 {
    3
}

/// `[[control.parents]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSection {
    /// The parent's certificate name.
    pub name: String,
    /// Its control address.
    pub address: String,
}

/// `[gateways]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaysSection {
    /// Network configuration site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name on the site's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// How often the site is fetched.
    #[serde(default = "default_gateway_refresh")]
    pub refresh: String,
    /// `[[gateways.children]]`: static entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<GatewayChildSection>,
}

impl Default for GatewaysSection {
    fn default() -> Self {
        GatewaysSection {
            url: None,
            server_name: None,
            refresh: default_gateway_refresh(),
            children: Vec::new(),
        }
    }
}

impl GatewaysSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_gateway_refresh() -> String {
    "10s".into()
}

/// `[[gateways.children]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayChildSection {
    /// Next hop name = certificate name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Subnets it may advertise.
    pub subnets: Vec<String>,
    /// Static routing cost.
    #[serde(default = "default_cost")]
    pub cost: f64,
    /// Labels the cost function sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_cost() -> f64 {
    1.0
}

/// `[[client_groups]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientGroupSection {
    /// Name.
    pub name: String,
    /// Client prefixes.
    pub prefixes: Vec<String>,
}

/// `[fault]`: fault injection on the router's own tunnel sends (the kernel here has no netem).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    /// Delay of tunnelled packets per next hop name.
    #[serde(default)]
    pub delay: BTreeMap<String, String>,
}

impl FaultSection {
    fn is_empty(&self) -> bool {
        self.delay.is_empty()
    }
}

/// `slr host` configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// `[host]`.
    pub host: HostSection,
    /// `[control]`: the parents it reports its load to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSection>,
}

/// `[host]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Name.
    pub name: String,
    /// Virtual subnets made local (AnyIP).
    pub virtual_subnets: Vec<String>,
    /// The trust domain.
    pub trusted_tunnel_sources: Vec<String>,
    /// TUN device that re-injects decapsulated packets.
    #[serde(default = "default_host_tun")]
    pub tun: String,
    /// Control socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    /// Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Whether the agent adds and removes the AnyIP routes.
    #[serde(default = "yes")]
    pub manage_routes: bool,
    /// What the reported `load` measures: `machine` (the machine's busy CPU fraction) or
    /// `netns` (the CPU of the processes of the agent's network namespace, for hosts that share
    /// a machine: the lab, containers).
    #[serde(default = "default_load_scope")]
    pub load_scope: String,
    /// Decapsulation in the kernel: "xdp" (an XDP program on the host's interfaces strips
    /// trusted tunnels and passes the inner packets up the stack) or "off" (the agent's raw
    /// socket and TUN device).
    #[serde(default = "default_fast_path")]
    pub fast_path: String,
    /// Interfaces the XDP program attaches to (default: every interface but loopback and the
    /// TUN device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fast_path_interfaces: Vec<String>,
}

impl HostSection {
    /// A `[host]` with every default.
    pub fn new(name: &str, virtual_subnets: Vec<String>, trusted: Vec<String>) -> Self {
        HostSection {
            name: name.to_owned(),
            virtual_subnets,
            trusted_tunnel_sources: trusted,
            tun: default_host_tun(),
            control_socket: None,
            metrics_listen: None,
            manage_routes: true,
            load_scope: default_load_scope(),
            fast_path: default_fast_path(),
            fast_path_interfaces: Vec::new(),
        }
    }
}

fn default_host_tun() -> String {
    "slrh0".into()
}
fn default_load_scope() -> String {
    "machine".into()
}
