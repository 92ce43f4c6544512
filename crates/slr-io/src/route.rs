//! Kernel routes over rtnetlink: the routes the daemons install for their virtual subnets.
//!
//! The router sends each virtual subnet into its TUN device (what `ip route replace SUBNET dev
//! slr0` does) and the host agent takes its virtual subnets as local addresses, "AnyIP" (what
//! `ip route replace local SUBNET dev lo` does). [`RouteSocket`] makes exactly the routes those
//! commands make, over a `NETLINK_ROUTE` socket instead of a process per route:
//!
//! | [`Route`] | type | table | protocol | scope |
//! |---|---|---|---|---|
//! | [`Route::unicast`]`(SUBNET, DEV)` | `unicast` | `main` | `boot` | `link` |
//! | [`Route::local`]`(SUBNET)` (dev `lo`) | `local` | `local` | `boot` | `host` |
//!
//! (`ip -d route show table all` prints every field; `ip route show table local` shows the local
//! ones, which `ip route show` leaves out.)
//!
//! The messages are built and parsed by `netlink-packet-route`, the socket is `netlink-sys`'s:
//! blocking, one request at a time, as fits the packet thread, which is not async. No `unsafe`
//! here. Like every socket, a [`RouteSocket`] acts in the network namespace of the thread that
//! opened it (see [`crate::netns`]).

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_MULTIPART, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use slr_wire::Ipv4Cidr;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// Receive buffer: the kernel sends dumps in datagrams of at most 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// What a route does with packets to its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// They leave through the route's interface: type `unicast`, table `main`, scope `link`.
    Unicast,
    /// They are delivered to this machine, whatever their address in the subnet ("AnyIP"):
    /// type `local`, table `local`, scope `host`.
    Local,
}

/// A route that [`RouteSocket`] installs or deletes: a subnet, what to do with it and through
/// which interface. It prints as `ip route` arguments: `10.99.0.0/24 dev slr0`,
/// `local 10.99.0.0/24 dev lo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    subnet: Ipv4Cidr,
    kind: RouteKind,
    dev: String,
}

impl Route {
    /// `SUBNET dev DEV`: packets to `subnet` leave through interface `dev`.
    pub fn unicast(subnet: Ipv4Cidr, dev: impl Into<String>) -> Self {
        Route {
            subnet,
            kind: RouteKind::Unicast,
            dev: dev.into(),
        }
    }

    /// `local SUBNET dev lo`: every address of `subnet` is this machine's.
    pub fn local(subnet: Ipv4Cidr) -> Self {
        Route {
            subnet,
            kind: RouteKind::Local,
            dev: "lo".into(),
        }
    }

    /// The destination prefix.
    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    /// Unicast or local.
    pub fn kind(&self) -> RouteKind {
        self.kind
    }

    /// The interface's name.
    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// The kernel's route type, table and scope for this route, as `ip` chooses them.
    fn type_table_scope(&self) -> (RouteType, u8, RouteScope) {
        match self.kind {
            RouteKind::Unicast => (RouteType::Unicast, libc::RT_TABLE_MAIN, RouteScope::Link),
            RouteKind::Local => (RouteType::Local, libc::RT_TABLE_LOCAL, RouteScope::Host),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RouteKind::Local {
            f.write_str("local ")?;
        }
        write!(f, "{} dev {}", self.subnet, self.dev)
    }
}

/// Why a route operation failed. Each variant keeps the `errno`, so tests can assert on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Installing or deleting `route` failed: the kernel refused (`EEXIST`, `ENETDOWN` for a
    /// device that is down, `EPERM` without `CAP_NET_ADMIN`), the device does not exist
    /// (`ENODEV`), or the socket failed while asking.
    #[error("route {route}: {}", describe(*errno))]
    Route {
        /// The route asked for.
        route: Route,
        /// The error number.
        errno: i32,
    },
    /// The routes of interface `dev` could not be listed (`ENODEV`: no such interface).
    #[error("interface {dev}: {}", describe(*errno))]
    Interface {
        /// The interface's name.
        dev: String,
        /// The error number.
        errno: i32,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink route socket: {}", describe(*errno))]
    Open {
        /// The error number.
        errno: i32,
    },
    /// The kernel's answer did not parse.
    #[error("netlink route socket: malformed answer: {detail}")]
    Malformed {
        /// What the parser said.
        detail: String,
    },
}

impl RouteError {
    /// The error number, if the failure has one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RouteError::Route { errno, .. }
            | RouteError::Interface { errno, .. }
            | RouteError::Open { errno } => Some(*errno),
            RouteError::Malformed { .. } => None,
        }
    }
}

/// `File exists (os error 17)`.
fn describe(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// How one request failed, before the caller says which route or interface it was about.
enum Failure {
    Errno(i32),
    Malformed(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl Failure {
    fn for_route(self, route: &Route) -> RouteError {
        match self {
            Failure::Errno(errno) => RouteError::Route {
                route: route.clone(),
                errno,
            },
            Failure::Malformed(detail) => RouteError::Malformed { detail },
        }
    }

    fn for_interface(self, dev: &str) -> RouteError {
        match self {
            Failure::Errno(errno) => RouteError::Interface {
                dev: dev.to_string(),
                errno,
            },
            Failure::Malformed(detail) => RouteError::Malformed { detail },
        }
    }
}

/// A route as the kernel lists it ([`RouteSocket::list`]): any IPv4 route of an interface, in
/// any table, not only those slr installs.
///
/// It prints the way `ip -d route show table all` prints it (`local 10.99.0.0/24 dev lo table
/// local proto boot scope host`), without route metrics such as `mtu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRoute {
    /// The destination prefix.
    pub subnet: Ipv4Cidr,
    /// The route type (`RTN_UNICAST`, `RTN_LOCAL`, `RTN_BROADCAST`, ...).
    pub kind: u8,
    /// The routing table (`RT_TABLE_MAIN`, `RT_TABLE_LOCAL`, ...).
    pub table: u32,
    /// Who installed it (`RTPROT_BOOT` for `ip` and slr, `RTPROT_KERNEL`, ...).
    pub protocol: u8,
    /// The scope (`RT_SCOPE_LINK`, `RT_SCOPE_HOST`, ...).
    pub scope: u8,
    /// The route's flags (`RTNH_F_LINKDOWN`, ...).
    pub flags: u32,
    /// The interface's name.
    pub dev: String,
    /// The next hop, for a route through a gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The preferred source address.
    pub pref_src: Option<Ipv4Addr>,
    /// The metric (priority).
    pub metric: Option<u32>,
}

impl InstalledRoute {
    /// The [`Route`] that [`RouteSocket::replace`] would install as this route, if this is one.
    pub fn route(&self) -> Option<Route> {
        if self.protocol != libc::RTPROT_BOOT || self.gateway.is_some() || self.metric.is_some() {
            return None;
        }
        let route = match self.kind {
            libc::RTN_UNICAST => Route::unicast(self.subnet, self.dev.clone()),
            libc::RTN_LOCAL if self.dev == "lo" => Route::local(self.subnet),
            _ => return None,
        };
        let (_, table, scope) = route.type_table_scope();
        (self.table == u32::from(table) && self.scope == u8::from(scope)).then_some(route)
    }
}

impl fmt::Display for InstalledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names as iproute2 has them (rtnl_rtntype_n2a, rt_tables, rt_protos, rt_scopes).
        const TYPES: [&str; 12] = [
            "none",
            "unicast",
            "local",
            "broadcast",
            "anycast",
            "multicast",
            "blackhole",
            "unreachable",
            "prohibit",
            "throw",
            "nat",
            "xresolve",
        ];
        match TYPES.get(usize::from(self.kind)) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "{}", self.kind)?,
        }
        match self.subnet.prefix_len() {
            0 => f.write_str(" default")?,
            32 => write!(f, " {}", self.subnet.addr())?,
            _ => write!(f, " {}", self.subnet)?,
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev {}", self.dev)?;
        match self.table {
            255 => f.write_str(" table local")?,
            254 => f.write_str(" table main")?,
            253 => f.write_str(" table default")?,
            t => write!(f, " table {t}")?,
        }
        match self.protocol {
            1 => f.write_str(" proto redirect")?,
            2 => f.write_str(" proto kernel")?,
            3 => f.write_str(" proto boot")?,
            4 => f.write_str(" proto static")?,
            p => write!(f, " proto {p}")?,
        }
        match self.scope {
            0 => f.write_str(" scope global")?,
            200 => f.write_str(" scope site")?,
            253 => f.write_str(" scope link")?,
            254 => f.write_str(" scope host")?,
            255 => f.write_str(" scope nowhere")?,
            s => write!(f, " scope {s}")?,
        }
        if let Some(src) = self.pref_src {
            write!(f, " src {src}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        const FLAGS: [(u32, &str); 8] = [
            (1, "dead"),
            (4, "onlink"),
            (2, "pervasive"),
            (8, "offload"),
            (64, "trap"),
            (0x100, "notify"),
            (16, "linkdown"),
            (32, "unresolved"),
        ];
        for (bit, name) in FLAGS {
            if self.flags & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// A `NETLINK_ROUTE` socket that installs, deletes and lists IPv4 routes, as `ip route` does.
///
/// Blocking, one request at a time; each call waits for the kernel's answer. Changing routes
/// needs `CAP_NET_ADMIN` in the socket's network namespace.
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for RouteSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSocket")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, RouteError> {
        let open = || -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            // Errors carry only the error code, not a copy of the request.
            let _ = socket.set_cap_ack(true);
            Ok(socket)
        };
        let socket = open().map_err(|e| RouteError::Open {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
        Ok(RouteSocket {
            socket,
            sequence: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Installs `route`, or replaces the route the kernel has for the same subnet in the same
    /// table (`ip route replace`). Installing the same route again changes nothing and succeeds.
    ///
    /// A device that does not exist fails with `ENODEV`, one that is down with `ENETDOWN`.
    pub fn replace(&mut self, route: &Route) -> Result<(), RouteError> {
        let index = self
            .interface_index(&route.dev)
            .map_err(|f| f.for_route(route))?;
        let (kind, table, scope) = route.type_table_scope();
        let message = route_message(route, index, kind, table, RouteProtocol::Boot, scope);
        self.exchange(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(|f| f.for_route(route))
    }

    /// Deletes `route` (`ip route del`): `Ok(true)` if it was there, `Ok(false)` if it was not
    /// (also when its device does not exist: a route cannot outlive its device). So deleting is
    /// idempotent; a route to the same subnet through another device is left alone.
    pub fn delete(&mut self, route: &Route) -> Result<bool, RouteError> {
        let index = match self.interface_index(&route.dev) {
            Ok(index) => index,
            Err(Failure::Errno(libc::ENODEV)) => return Ok(false),
            Err(f) => return Err(f.for_route(route)),
        };
        let (kind, table, _) = route.type_table_scope();
        // Protocol "any" and scope "nowhere" match any route of that type, subnet and device.
        let message = route_message(
            route,
            index,
            kind,
            table,
            RouteProtocol::Unspec,
            RouteScope::NoWhere,
        );
        match self.exchange(RouteNetlinkMessage::DelRoute(message), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Failure::Errno(libc::ESRCH)) => Ok(false),
            Err(f) => Err(f.for_route(route)),
        }
    }

    /// The IPv4 routes through interface `dev` in every table, in the kernel's order.
    pub fn list(&mut self, dev: &str) -> Result<Vec<InstalledRoute>, RouteError> {
        let index = self
            .interface_index(dev)
            .map_err(|f| f.for_interface(dev))?;
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let answers = self
            .exchange(RouteNetlinkMessage::GetRoute(request), NLM_F_DUMP)
            .map_err(|f| f.for_interface(dev))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => installed_route(r, index, dev),
                _ => None,
            })
            .collect())
    }

    /// The index of interface `dev` (`RTM_GETLINK` by name), from this socket's namespace.
    /// Attaches the XDP program `prog_fd` to interface `dev` (`None`: detaches), the way
    /// `ip link set dev DEV xdp...` does: through the link itself, not a BPF link, so the
    /// attachment outlives this process and goes with the interface. `flags` are the kernel's
    /// `XDP_FLAGS_*` (2 = SKB mode, 4 = driver mode).
    pub fn set_link_xdp(
        &mut self,
        dev: &str,
        prog_fd: Option<std::os::fd::RawFd>,
        flags: u32,
    ) -> Result<(), RouteError> {
        let index = self
            .interface_index(dev)
            .map_err(|f| f.for_interface(dev))?;
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(prog_fd.unwrap_or(-1)),
            LinkXdp::Flags(flags),
        ]));
        self.exchange(RouteNetlinkMessage::SetLink(message), NLM_F_ACK)
            .map(drop)
            .map_err(|f| f.for_interface(dev))
    }

    fn interface_index(&mut self, dev: &str) -> Result<u32, Failure> {
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(dev.to_string()));
        let answers = self.exchange(RouteNetlinkMessage::GetLink(request), 0)?;
        answers
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| Failure::Malformed(format!("no link in the answer about {dev}")))
    }

    /// Sends one request and collects the messages of its answer: up to the acknowledgement
    /// (with `NLM_F_ACK`), the end of a dump (`NLM_F_DUMP`), or else the first message.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        retry_interrupted(|| self.socket.send(&out, 0))?;

        let mut answers = Vec::new();
        loop {
            let n = retry_interrupted(|| self.socket.recv(&mut &mut self.buf[..], 0))?;
            let mut at = 0;
            while at < n {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| Failure::Malformed(e.to_string()))?;
                let len = message.header.length as usize;
                if len == 0 {
                    return Err(Failure::Malformed("netlink message of length 0".into()));
                }
                at += len.next_multiple_of(4);
                // Answers to an earlier request that failed half-way through a dump.
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                let multipart = message.header.flags & NLM_F_MULTIPART != 0;
                match message.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(Failure::Errno(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(Failure::Errno(-done.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if !multipart && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Runs `op` again while it fails with `EINTR` (a signal arrived).
fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The request for `route` through interface `index`.
fn route_message(
    route: &Route,
    index: u32,
    kind: RouteType,
    table: u8,
    protocol: RouteProtocol,
    scope: RouteScope,
) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: route.subnet.prefix_len(),
        table,
        protocol,
        scope,
        kind,
        ..RouteHeader::default()
    };
    if route.subnet.prefix_len() > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                route.subnet.addr(),
            )));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

/// `message` as an [`InstalledRoute`] if it is an IPv4 route through interface `index`.
fn installed_route(message: RouteMessage, index: u32, dev: &str) -> Option<InstalledRoute> {
    if message.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut route = InstalledRoute {
        subnet: Ipv4Cidr::new(destination, 0)?,
        kind: message.header.kind.into(),
        table: u32::from(message.header.table),
        protocol: message.header.protocol.into(),
        scope: message.header.scope.into(),
        flags: message.header.flags.bits(),
        dev: dev.to_string(),
        gateway: None,
        pref_src: None,
        metric: None,
    };
    let mut oif = None;
    for attribute in message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.pref_src = Some(a),
            RouteAttribute::Priority(m) => route.metric = Some(m),
            RouteAttribute::Table(t) => route.table = t,
            RouteAttribute::Oif(i) => oif = Some(i),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    route.subnet = Ipv4Cidr::new(destination, message.header.destination_prefix_length)?;
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_private_netns;
    use crate::{PacketDevice, TunDevice};
    use std::process::Command;

    /// Runs `f` in a fresh namespace (loopback up); a namespace that cannot be made fails the
    /// test: these tests need root and must not pass without it.
    fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in_private_netns(f).expect("cannot make a private network namespace (run as root)")
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    /// `ip ARGS` in the calling thread's namespace, its output.
    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// What `ip -d route show table all` prints about routes through `dev`, one line each.
    fn ip_lines(dev: &str) -> Vec<String> {
        let mut lines: Vec<String> = ip(&["-d", "-4", "route", "show", "table", "all"])
            .lines()
            .filter(|l| l.contains(&format!(" dev {dev} ")))
            .map(|l| l.trim_end().to_string())
            .collect();
        lines.sort();
        lines
    }

    /// Our listing of `dev`, printed the same way.
    fn our_lines(sock: &mut RouteSocket, dev: &str) -> Vec<String> {
        let mut lines: Vec<String> = sock
            .list(dev)
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        lines.sort();
        lines
    }

    fn routes_of(sock: &mut RouteSocket, dev: &str) -> Vec<Route> {
        sock.list(dev)
            .unwrap()
            .iter()
            .filter_map(InstalledRoute::route)
            .collect()
    }

    #[test]
    fn routes_print_as_ip_arguments() {
        let subnet = cidr("10.99.0.0/24");
        assert_eq!(
            Route::unicast(subnet, "slr0").to_string(),
            "10.99.0.0/24 dev slr0"
        );
        assert_eq!(
            Route::local(subnet).to_string(),
            "local 10.99.0.0/24 dev lo"
        );
        let e = RouteError::Route {
            route: Route::unicast(subnet, "slr0"),
            errno: libc::EEXIST,
        };
        assert_eq!(
            e.to_string(),
            "route 10.99.0.0/24 dev slr0: File exists (os error 17)"
        );
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn local_route_is_what_ip_makes_in_table_local() {
        in_netns(|| {
            let mut sock = RouteSocket::open().unwrap();
            let route = Route::local(cidr("10.99.0.0/24"));
            sock.replace(&route).unwrap();
            sock.replace(&route).unwrap(); // idempotent
            assert_eq!(routes_of(&mut sock, "lo"), vec![route.clone()]);
            let ours = sock
                .list("lo")
                .unwrap()
                .into_iter()
                .find(|r| r.subnet == route.subnet())
                .unwrap();
            assert_eq!(
                (ours.kind, ours.table, ours.protocol, ours.scope),
                (
                    libc::RTN_LOCAL,
                    u32::from(libc::RT_TABLE_LOCAL),
                    libc::RTPROT_BOOT,
                    libc::RT_SCOPE_HOST
                )
            );
            assert_eq!(
                ours.to_string(),
                "local 10.99.0.0/24 dev lo table local proto boot scope host"
            );
            // Every route of lo, ours and the kernel's three for 127.0.0.1/8, as ip shows them.
            assert_eq!(ip_lines("lo").len(), 4, "{:?}", ip_lines("lo"));
            assert_eq!(our_lines(&mut sock, "lo"), ip_lines("lo"));
            assert!(ip(&["route", "show", "table", "local"])
                .lines()
                .any(|l| l.trim_end() == "local 10.99.0.0/24 dev lo scope host"));
            assert!(!ip(&["route", "show"]).contains("10.99.0.0"));
            // The addresses are this machine's now: a socket binds to one.
            std::net::UdpSocket::bind("10.99.0.7:0").expect("AnyIP address");

            // The same route made by ip is the same route: we delete it, ip finds none after.
            assert!(sock.delete(&route).unwrap());
            ip(&["route", "replace", "local", "10.99.0.0/24", "dev", "lo"]);
            assert_eq!(routes_of(&mut sock, "lo"), vec![route.clone()]);
            assert!(sock.delete(&route).unwrap());
            assert!(!sock.delete(&route).unwrap(), "deleting twice is Ok(false)");
            assert_eq!(routes_of(&mut sock, "lo"), vec![]);
            assert!(!ip(&["route", "show", "table", "all"]).contains("10.99.0.0"));
        });
    }

    #[test]
    fn unicast_route_through_a_tun_is_what_ip_makes() {
        in_netns(|| {
            let tun = TunDevice::create("slrt0", 1500).unwrap();
            let mut sock = RouteSocket::open().unwrap();
            let route = Route::unicast(cidr("10.98.0.0/24"), tun.name());
            sock.replace(&route).unwrap();
            sock.replace(&route).unwrap();
            assert_eq!(routes_of(&mut sock, "slrt0"), vec![route.clone()]);
            assert_eq!(
                our_lines(&mut sock, "slrt0"),
                vec!["unicast 10.98.0.0/24 dev slrt0 table main proto boot scope link"]
            );
            assert_eq!(our_lines(&mut sock, "slrt0"), ip_lines("slrt0"));
            assert_eq!(
                ip(&["route", "show"]).trim_end(),
                "10.98.0.0/24 dev slrt0 scope link"
            );
            // A host route prints without its /32, as ip prints it.
            let host = Route::unicast(cidr("10.98.1.1/32"), "slrt0");
            sock.replace(&host).unwrap();
            assert_eq!(our_lines(&mut sock, "slrt0"), ip_lines("slrt0"));
            assert!(sock.delete(&host).unwrap());

            // Deleting through another device leaves the route alone.
            let elsewhere = Route::unicast(route.subnet(), "lo");
            assert!(!sock.delete(&elsewhere).unwrap());
            assert!(sock.delete(&route).unwrap());
            assert!(!sock.delete(&route).unwrap());
            assert_eq!(sock.list("slrt0").unwrap(), vec![]);
            assert_eq!(ip(&["route", "show"]), "");

            // The kernel drops the routes of a device that goes away; deleting them then is Ok.
            sock.replace(&route).unwrap();
            drop(tun);
            assert!(!sock.delete(&route).unwrap());
        });
    }

    #[test]
    fn errors_name_the_route_and_the_device() {
        in_netns(|| {
            let mut sock = RouteSocket::open().unwrap();
            let route = Route::unicast(cidr("10.97.0.0/24"), "nosuch0");
            let e = sock.replace(&route).unwrap_err();
            assert_eq!(
                e,
                RouteError::Route {
                    route: route.clone(),
                    errno: libc::ENODEV
                }
            );
            assert_eq!(
                e.to_string(),
                "route 10.97.0.0/24 dev nosuch0: No such device (os error 19)"
            );
            assert_eq!(sock.delete(&route), Ok(false));
            let e = sock.list("nosuch0").unwrap_err();
            assert_eq!(
                e.to_string(),
                "interface nosuch0: No such device (os error 19)"
            );

            // A device that is down takes no route.
            let tun = TunDevice::create("slrt1", 1500).unwrap();
            ip(&["link", "set", "slrt1", "down"]);
            let down = Route::unicast(cidr("10.97.0.0/24"), tun.name());
            assert_eq!(
                sock.replace(&down).unwrap_err().errno(),
                Some(libc::ENETDOWN)
            );
            assert_eq!(sock.list("slrt1").unwrap(), vec![]);
        });
    }

    #[test]
    fn a_socket_acts_in_the_namespace_it_was_opened_in() {
        let mut outside = RouteSocket::open().unwrap();
        let route = Route::local(cidr("10.96.0.0/24"));
        let inside = in_netns(move || {
            let mut sock = RouteSocket::open().unwrap();
            sock.replace(&route).unwrap();
            routes_of(&mut sock, "lo")
        });
        assert_eq!(inside, vec![Route::local(cidr("10.96.0.0/24"))]);
        assert!(!routes_of(&mut outside, "lo").contains(&Route::local(cidr("10.96.0.0/24"))));
    }
}
