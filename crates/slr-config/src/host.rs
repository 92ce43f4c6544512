//! `slr host`'s file, checked: [`HostDaemonConfig`].

use crate::check::{ifname, Ctx};
use crate::control::{control, ControlConfig};
use crate::file::HostFile;
use crate::router::FastPathMode;
use crate::ConfigError;
use slr_wire::Ipv4Cidr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// What the reported `load` measures.
    pub load_scope: LoadScope,
    /// Decapsulation in the kernel, or by the agent.
    pub fast_path: FastPathMode,
    /// Interfaces the XDP program attaches to (empty: all but loopback and the TUN device).
    pub fast_path_interfaces: Vec<String>,
}

/// What a host agent's reported `load` measures (`host.load_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadScope {
    /// The machine's busy CPU fraction (`/proc/stat`): a host server with a machine of its own.
    Machine,
    /// The CPU the processes of the agent's network namespace use, as a share of the machine:
    /// hosts that share a machine (the lab, containers). Seeing other processes' namespaces
    /// takes root (or CAP_SYS_PTRACE).
    Netns,
}

impl HostFile {
    /// Checks meanings and converts; `path` is named in errors.
    pub fn into_config(self, path: &Path) -> Result<HostDaemonConfig, ConfigError> {
        let c = Ctx { file: path };
        let control = self
            .control
            .as_ref()
            .map(|s| control(&c, s, false))
            .transpose()?;
        let h = self.host;
        if h.virtual_subnets.is_empty() {
            return Err(c.err(
                "host.virtual_subnets",
                &h.virtual_subnets,
                "must name at least one virtual subnet",
            ));
        }
        if h.trusted_tunnel_sources.is_empty() {
            return Err(c.err(
                "host.trusted_tunnel_sources",
                &h.trusted_tunnel_sources,
                "must name at least one prefix (the routers of the site)",
            ));
        }
        ifname(&c, "host.tun", &h.tun)?;
        let virtual_subnets = c.cidrs("host.virtual_subnets", &h.virtual_subnets)?;
        let trusted_tunnel_sources =
            c.cidrs("host.trusted_tunnel_sources", &h.trusted_tunnel_sources)?;
        let metrics_listen = h
            .metrics_listen
            .as_deref()
            .map(|m| c.socket("host.metrics_listen", m))
            .transpose()?;
        let load_scope = match h.load_scope.as_str() {
            "machine" => LoadScope::Machine,
            "netns" => LoadScope::Netns,
            other => return Err(c.err("host.load_scope", other, "expected machine or netns")),
        };
        let fast_path = FastPathMode::parse(&c, "host.fast_path", &h.fast_path)?;
        for i in &h.fast_path_interfaces {
            ifname(&c, "host.fast_path_interfaces", i)?;
        }
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
            load_scope,
            fast_path,
            fast_path_interfaces: h.fast_path_interfaces,
        })
    }
}
