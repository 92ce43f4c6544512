//! `[bgp]`: a router announces its virtual subnets through BIRD; `[cluster]`: it mirrors its
//! flows to the routers that back it up (issue 12).

use crate::check::Ctx;
use crate::file::BgpSection;
use crate::ConfigError;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// How the router announces its virtual subnets: BGP sessions run by BIRD, which it starts and
/// drives. A subnet is announced while the router is up, not stopping, and has a live next hop
/// for it; it is withdrawn otherwise, and all are withdrawn when the router dies (BIRD dies
/// with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    /// This router's AS number.
    pub local_as: u32,
    /// BGP router ID (default: the tunnel source).
    pub router_id: Ipv4Addr,
    /// The neighbours (address, AS number): the access routers that learn the subnets.
    pub neighbors: Vec<(Ipv4Addr, u32)>,
    /// BGP hold time (whole seconds, 3 to 65535).
    pub hold_time: Duration,
    /// BFD interval on every session (multiplier 3), if any.
    pub bfd_interval: Option<Duration>,
    /// The `bird` program.
    pub bird: PathBuf,
    /// The `birdc` program.
    pub birdc: PathBuf,
    /// Where BIRD's configuration, control socket and log are kept.
    pub state_dir: PathBuf,
}

/// Checks `[bgp]`; `name` and `tunnel_source` give the defaults.
pub(crate) fn bgp(
    c: &Ctx,
    s: &BgpSection,
    name: &str,
    tunnel_source: Ipv4Addr,
) -> Result<BgpConfig, ConfigError> {
    let asn = |key: &str, v: u32| {
        if v == 0 || v == u32::MAX || v == 23456 {
            Err(c.err(
                key,
                v,
                "not a usable AS number (1 to 4294967294, not 23456)",
            ))
        } else {
            Ok(v)
        }
    };
    let local_as = asn("bgp.local_as", s.local_as)?;
    let router_id = match &s.router_id {
        Some(r) => c.addr("bgp.router_id", r)?,
        None => tunnel_source,
    };
    if s.neighbors.is_empty() {
        return Err(c.err(
            "bgp.neighbors",
            "[]",
            "at least one neighbour (address and as) is needed",
        ));
    }
    let mut neighbors = Vec::new();
    for (i, n) in s.neighbors.iter().enumerate() {
        let a = c.addr(&format!("bgp.neighbors[{i}].address"), &n.address)?;
        if neighbors.iter().any(|(b, _)| *b == a) {
            return Err(c.err(
                &format!("bgp.neighbors[{i}].address"),
                &n.address,
                "listed twice",
            ));
        }
        neighbors.push((a, asn(&format!("bgp.neighbors[{i}].as"), n.asn)?));
    }
    let hold_time = c.duration("bgp.hold_time", &s.hold_time)?;
    if hold_time < Duration::from_secs(3)
        || hold_time > Duration::from_secs(65_535)
        || hold_time.subsec_nanos() != 0
    {
        return Err(c.err(
            "bgp.hold_time",
            &s.hold_time,
            "must be whole seconds from 3s to 65535s (RFC 4271)",
        ));
    }
    let bfd_interval = match &s.bfd_interval {
        None => None,
        Some(v) => {
            let d = c.duration("bgp.bfd_interval", v)?;
            if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
                return Err(c.err("bgp.bfd_interval", v, "must be from 10ms to 10s"));
            }
            Some(d)
        }
    };
    let state_dir = match &s.state_dir {
        Some(d) => c.relative(d),
        None => PathBuf::from(format!("/run/slr/bgp-{name}")),
    };
    Ok(BgpConfig {
        local_as,
        router_id,
        neighbors,
        hold_time,
        bfd_interval,
        bird: PathBuf::from(&s.bird),
        birdc: PathBuf::from(&s.birdc),
        state_dir,
    })
}

/// `[cluster]`: flow mirroring with the other routers of the cluster (F17b).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where the peers push.
    pub listen: std::net::SocketAddr,
    /// Operator CA certificate (PEM).
    pub ca: PathBuf,
    /// This router's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The other routers: every one may push mirrored flows and ask WHOHAS questions.
    pub peers: Vec<ClusterPeer>,
    /// Whether flows are mirrored to some peer (F17b).
    pub mirror: bool,
    /// WHOHAS (F17c), if on: this router answers its peers' questions, and asks the peers
    /// with [`ClusterPeer::ask`].
    pub whohas: Option<WhohasSettings>,
}

/// `[[cluster.peers]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPeer {
    /// Its name (its certificate's dNSName).
    pub name: String,
    /// Its `[cluster] listen` address.
    pub address: std::net::SocketAddr,
    /// Flows are mirrored to it.
    pub mirror: bool,
    /// It is asked WHOHAS.
    pub ask: bool,
}

impl ClusterConfig {
    /// The peers flows are mirrored to: name and address.
    pub fn mirror_peers(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.peers
            .iter()
            .filter(|p| p.mirror)
            .map(|p| (p.name.clone(), p.address))
            .collect()
    }

    /// The peers asked WHOHAS (none when WHOHAS is off): name and address.
    pub fn ask_peers(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.peers
            .iter()
            .filter(|p| p.ask && self.whohas.is_some())
            .map(|p| (p.name.clone(), p.address))
            .collect()
    }
}

/// `[cluster] whohas`: asking the peers who holds an unknown flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhohasSettings {
    /// How long a question waits before the policy picks.
    pub timeout: Duration,
    /// Flows per second each peer may ask this router about.
    pub rate: u32,
}

/// Checks `[cluster]`; `name` is this router's (not a peer of itself).
pub(crate) fn cluster(
    c: &Ctx,
    s: &crate::file::ClusterSection,
    name: &str,
) -> Result<ClusterConfig, ConfigError> {
    let listen = c.socket("cluster.listen", &s.listen)?;
    if s.peers.is_empty() {
        return Err(c.err(
            "cluster.peers",
            "[]",
            "at least one peer (name and address) is needed",
        ));
    }
    let (mirror, whohas_on) = (s.mirror.unwrap_or(true), s.whohas.unwrap_or(true));
    let mut peers: Vec<ClusterPeer> = Vec::new();
    for (i, p) in s.peers.iter().enumerate() {
        let key = format!("cluster.peers[{i}].name");
        if p.name.is_empty() || p.name == name || peers.iter().any(|q| q.name == p.name) {
            return Err(c.err(&key, &p.name, "must be another router's name, listed once"));
        }
        let address = c.socket(&format!("cluster.peers[{i}].address"), &p.address)?;
        if p.mirror == Some(true) && !mirror {
            return Err(c.err(
                &format!("cluster.peers[{i}].mirror"),
                true,
                "needs [cluster] mirror = true",
            ));
        }
        if p.ask == Some(true) && !whohas_on {
            return Err(c.err(
                &format!("cluster.peers[{i}].ask"),
                true,
                "needs [cluster] whohas = true",
            ));
        }
        peers.push(ClusterPeer {
            name: p.name.clone(),
            address,
            mirror: p.mirror.unwrap_or(mirror),
            ask: p.ask.unwrap_or(whohas_on),
        });
    }
    let mirror = peers.iter().any(|p| p.mirror);
    let whohas = if whohas_on {
        let text = s.whohas_timeout.as_deref().unwrap_or("50ms");
        let timeout = c.duration("cluster.whohas_timeout", text)?;
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(5) {
            return Err(c.err(
                "cluster.whohas_timeout",
                text,
                "must be from 1ms to 5s (packets wait that long)",
            ));
        }
        let rate = s.whohas_rate.unwrap_or(50_000);
        if rate == 0 {
            return Err(c.err("cluster.whohas_rate", rate, "must be at least 1"));
        }
        Some(WhohasSettings { timeout, rate })
    } else {
        None
    };
    if !mirror && whohas.is_none() {
        return Err(c.err(
            "cluster.whohas",
            false,
            "with no peer mirrored to, [cluster] would do nothing: remove it",
        ));
    }
    Ok(ClusterConfig {
        listen,
        ca: c.relative(&s.ca),
        cert: c.relative(&s.cert),
        key: c.relative(&s.key),
        peers,
        mirror,
        whohas,
    })
}
