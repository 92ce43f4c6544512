//! Network namespaces and interface configuration, for the end-to-end tests and the lab.
//!
//! In Linux a network namespace belongs to a *thread*, not to the process: after
//! [`unshare_net_namespace`] or [`enter_netns`] only the calling thread is in the new namespace.
//! Sockets, TUN devices and interface ioctls made from that thread act in it, and so do
//! threads it spawns and processes it starts with `std::process::Command` (fork and clone copy
//! the namespaces of the calling thread; `tests/netns.rs` checks both). A private namespace made
//! with `unshare` disappears when the last thread in it ends and the last socket in it closes,
//! so a test needs no cleanup: see [`run_in_private_netns`].
//!
//! Two traps: `/proc/self/net/...` shows the namespace of the process's *main* thread (use
//! `/proc/thread-self/net`), while `/proc/sys/net/...` follows the calling thread.
//!
//! The interface helpers use ioctls on an `AF_INET` socket of the calling thread's namespace.
//! They cover what the tests need (up, MTU, one IPv4 address); routes and more addresses are
//! left to `ip`, run from the same thread.

use crate::sys;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Moves the calling thread into a new, empty network namespace (`unshare(CLONE_NEWNET)`).
///
/// The namespace has only a loopback interface, and that is down (see [`set_loopback_up`]).
/// Other threads of the process stay where they are. Needs `CAP_SYS_ADMIN`.
pub fn unshare_net_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) with CLONE_NEWNET touches only the calling thread's namespace set.
    sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    Ok(())
}

/// Moves the calling thread into the named network namespace `/var/run/netns/NAME` (made by
/// `ip netns add NAME`).
pub fn enter_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad network namespace name {name:?}"),
        ));
    }
    enter_netns_path(Path::new("/var/run/netns").join(name))
}

/// Moves the calling thread into the network namespace that `path` names: a file under
/// `/var/run/netns`, or `/proc/PID/ns/net` (for example `/proc/thread-self/ns/net`, opened earlier,
/// to come back).
pub fn enter_netns_path(path: impl AsRef<Path>) -> io::Result<()> {
    let file = File::open(path.as_ref())?;
    // SAFETY: `file` is an open descriptor for the duration of the call; setns(2) only reads it.
    sys::cvt(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// An identifier of the calling thread's network namespace (the inode of
/// `/proc/thread-self/ns/net`), to check which namespace a thread or process is in.
pub fn current_netns_id() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Runs `f` on a new thread in a new private network namespace with its loopback up, and returns
/// its result. Panics in `f` propagate to the caller.
///
/// The namespace disappears with the thread (and the last socket in it). An error means the
/// namespace could not be made: callers that need one must fail, not skip.
pub fn run_in_private_netns<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name("private-netns".into())
        .spawn(move || {
            unshare_net_namespace()?;
            set_loopback_up()?;
            Ok(f())
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Brings the loopback interface up (down in a fresh namespace).
pub fn set_loopback_up() -> io::Result<()> {
    set_interface_up("lo")
}

/// Sets `IFF_UP` on interface `name`.
pub fn set_interface_up(name: &str) -> io::Result<()> {
    let sock = sys::control_socket()?;
    let mut ifr = sys::ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS takes a `struct ifreq *`.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)? };
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS takes a `struct ifreq *`.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) }
}

/// Sets the MTU of interface `name`.
pub fn set_interface_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = sys::control_socket()?;
    let mut ifr = sys::ifreq(name)?;
    ifr.ifr_ifru.ifru_mtu = i32::try_from(mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("MTU {mtu} too large")))?;
    // SAFETY: SIOCSIFMTU takes a `struct ifreq *`.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut ifr) }
}

/// Switches transmit checksum offload of interface `name` on or off (`ethtool -K NAME tx
/// on|off`; off also turns off the segmentation offloads that depend on it).
///
/// A veth sender with offload on hands its peer TCP and UDP packets whose checksum is only
/// the pseudo-header's (`CHECKSUM_PARTIAL`), to be completed by whoever transmits them on a
/// wire. Packets forwarded in XDP never pass that point: they arrive with a broken checksum.
/// Real NICs deliver complete checksums; test senders on veth must send them complete too.
pub fn set_tx_checksum(name: &str, on: bool) -> io::Result<()> {
    /// `struct ethtool_value { __u32 cmd; __u32 data; }`, ETHTOOL_STXCSUM.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let sock = sys::control_socket()?;
    let mut ifr = sys::ifreq(name)?;
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL takes a `struct ifreq *` whose data member points at an ethtool
    // command, here `value`, which outlives the call.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) }
}

/// The index of interface `name`.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let sock = sys::control_socket()?;
    let mut ifr = sys::ifreq(name)?;
    // SAFETY: SIOCGIFINDEX takes a `struct ifreq *`.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr)? };
    // SAFETY: SIOCGIFINDEX just filled the ifindex member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex } as u32)
}

/// Sets the primary IPv4 address of interface `name` to `addr/prefix_len`, which also installs
/// the route to the prefix (as `ip addr add` does for the first address).
///
/// The ioctls replace the interface's primary address rather than adding one more; use
/// `ip addr add` for secondary addresses.
pub fn set_ipv4_address(name: &str, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    if prefix_len > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("prefix length {prefix_len} is over 32"),
        ));
    }
    let sock = sys::control_socket()?;
    let mut ifr = sys::ifreq(name)?;
    ifr.ifr_ifru.ifru_addr = sys::sockaddr(addr);
    // SAFETY: SIOCSIFADDR takes a `struct ifreq *` with an AF_INET address.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFADDR, &mut ifr)? };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let mut ifr = sys::ifreq(name)?;
    ifr.ifr_ifru.ifru_netmask = sys::sockaddr(Ipv4Addr::from(mask));
    // SAFETY: SIOCSIFNETMASK takes a `struct ifreq *` with an AF_INET mask.
    unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &mut ifr) }
}
