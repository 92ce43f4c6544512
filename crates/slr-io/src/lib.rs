//! Packet I/O for slr: thin shells over the kernel behind one small device trait.
//!
//! The routing core (`slr-core`) owns no socket, thread or clock; the daemon feeds it packets it
//! reads here and writes out the packets the core hands back. This crate is that edge, and the
//! only place in slr with `unsafe` code (every block carries a `// SAFETY:` comment):
//!
//! - [`PacketDevice`], the one device trait: non-blocking batch receive and send of IPv4 packets
//!   in [`PacketBuf`]s, plus a descriptor to poll;
//! - [`TunDevice`], a TUN interface: the router captures packets for virtual hosts on it, and the
//!   host agent injects decapsulated packets through it into its own stack;
//! - [`IpipSocket`], a raw `IPPROTO_IPIP` socket: the tunnel (RFC 2003) between routers and host
//!   servers. This machine's kernel has no ipip device, so both tunnel ends are ours;
//! - wrapper devices that work over any device, in the simulator as on real ones:
//!   [`FaultInjector`] (loss, delay, reordering: the kernel here has no netem) and [`PcapWriter`];
//!   [`MemoryDevice`] is a device with no kernel behind it, for tests;
//! - [`EventFd`], [`poll_readable`] and [`poll_writable`] for the daemon's wait loop, the
//!   network-namespace helpers in [`netns`] that the lab and the end-to-end tests use, and the
//!   process helpers in [`process`] (a detached child, signals, the clock tick);
//! - [`RouteSocket`], the kernel routes of the daemons' virtual subnets over rtnetlink (what
//!   `ip route replace` does, without running `ip`).
//!
//! AF_XDP sockets and an XDP fast path can be added later as further [`PacketDevice`]s without
//! touching the callers.
//!
//! Model: smoltcp's `phy` module (`Device`, `FaultInjector`, `PcapWriter`) and quinn-udp.

mod clock;
mod event;
mod fault;
mod ipip;
mod memory;
pub mod netns;
mod pcap;
pub mod process;
mod route;
mod sys;
mod tun;

use std::io;
use std::os::fd::RawFd;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use event::{poll_readable, poll_writable, EventFd};
pub use fault::{FaultConfigError, FaultInjector, FaultStats, Xorshift64};
pub use ipip::IpipSocket;
pub use memory::MemoryDevice;
pub use pcap::{PcapWriter, LINKTYPE_RAW};
pub use route::{InstalledRoute, Route, RouteError, RouteKind, RouteSocket};
pub use slr_wire::PacketBuf;
pub use sys::InterfaceNameError;
pub use tun::TunDevice;

/// A source and sink of IPv4 packets: a TUN interface, a raw tunnel socket, or a wrapper around
/// another device.
///
/// Both calls are non-blocking and work in batches; wait for [`PacketDevice::fd`] to become
/// readable (see [`poll_readable`]) when [`PacketDevice::recv_batch`] returns 0. What a sent
/// packet must look like depends on the device: each implementation documents it.
pub trait PacketDevice {
    /// Receives up to `bufs.len()` packets without blocking; returns how many were received.
    ///
    /// Packet `i` is read into `bufs[i].read_slot()`, that is at the buffer's current start
    /// (call `reset(headroom)` first to keep room for an outer header), and `bufs[i].as_ref()` is
    /// the packet afterwards. Every packet returned is a well-formed IPv4 packet (checked with
    /// `Ipv4Packet::new_checked`); anything else the kernel hands over is dropped and counted in
    /// [`DeviceStats`]. 0 means nothing is pending. Buffers past the returned count are left in
    /// an unspecified state.
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize>;

    /// Sends packets from the front of `pkts` without blocking; returns how many were consumed.
    ///
    /// `pkts[..n]` are done with: sent, or dropped because they were malformed or because the
    /// kernel refused that packet for good (no route, too big, ...), each counted by
    /// [`IoDrop`]. `pkts[n..]` were not tried because the device is full; a full device is not
    /// an error: retry them once the descriptor is writable ([`poll_writable`]), or drop them.
    /// An `Err` means the device itself failed and nothing was consumed.
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize>;

    /// The descriptor to poll for readability, or -1 for a device with none (poll(2) ignores
    /// negative descriptors).
    fn fd(&self) -> RawFd;

    /// A name for logs and metrics: the interface name, or a description.
    fn name(&self) -> &str;

    /// Packet, byte and drop counters since the device was opened.
    fn stats(&self) -> DeviceStats;
}

/// Why a device dropped a packet instead of passing it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoDrop {
    /// Received: not a well-formed IPv4 packet (an IPv6 packet on a TUN, a runt, bad lengths).
    RxMalformed,
    /// Received: larger than the buffer it was read into.
    RxTruncated,
    /// To send: not what the device accepts (see each device's `send_batch`).
    TxMalformed,
    /// To send: the kernel refused this packet for good (no route, too big, firewall, ...).
    TxRejected,
}

impl IoDrop {
    /// Every reason, in counter order.
    pub const ALL: [IoDrop; 4] = [
        IoDrop::RxMalformed,
        IoDrop::RxTruncated,
        IoDrop::TxMalformed,
        IoDrop::TxRejected,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Packets returned by `recv_batch`.
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes of those packets, as the caller gave them (with the outer header for a tunnel).
    pub tx_bytes: u64,
    /// `errno` of the last packet the kernel refused ([`IoDrop::TxRejected`]).
    pub last_tx_errno: Option<i32>,
    drops: [u64; IoDrop::ALL.len()],
}

impl DeviceStats {
    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: IoDrop) -> u64 {
        self.drops[reason.index()]
    }

    /// Packets dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub(crate) fn count_drop(&mut self, reason: IoDrop) {
        self.count_drops(reason, 1);
    }

    pub(crate) fn count_drops(&mut self, reason: IoDrop, n: u64) {
        self.drops[reason.index()] += n;
    }

    pub(crate) fn count_rx(&mut self, len: usize) {
        self.rx_packets += 1;
        self.rx_bytes += len as u64;
    }

    pub(crate) fn count_tx(&mut self, len: usize) {
        self.tx_packets += 1;
        self.tx_bytes += len as u64;
    }

    pub(crate) fn count_rejected(&mut self, e: &io::Error) {
        self.count_drop(IoDrop::TxRejected);
        self.last_tx_errno = e.raw_os_error();
    }
}

impl<D: PacketDevice + ?Sized> PacketDevice for &mut D {
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        (**self).recv_batch(bufs)
    }
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        (**self).send_batch(pkts)
    }
    fn fd(&self) -> RawFd {
        (**self).fd()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}

impl<D: PacketDevice + ?Sized> PacketDevice for Box<D> {
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        (**self).recv_batch(bufs)
    }
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        (**self).send_batch(pkts)
    }
    fn fd(&self) -> RawFd {
        (**self).fd()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}
