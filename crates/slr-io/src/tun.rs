//! A TUN interface (layer 3, no packet-information header).

use crate::netns;
use crate::sys::{self, cvt_size};
use crate::{DeviceStats, IoDrop, PacketDevice};
use slr_wire::{Ipv4Packet, PacketBuf};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// A TUN interface: IPv4 packets routed to it by the local stack are read here, and IPv4 packets
/// written here enter the local stack as if they had arrived on it.
///
/// The router reads the packets for its virtual hosts from one; the host agent writes
/// decapsulated packets into one, so that the host's stack answers as the virtual host. Writing
/// needs no route: the stack takes the packet as received on this interface (reverse-path
/// filtering applies, and it is off in a fresh namespace).
///
/// The interface lives as long as this value, in the network namespace of the thread that
/// created it, and goes away with its descriptor.
#[derive(Debug)]
pub struct TunDevice {
    fd: OwnedFd,
    name: String,
    stats: DeviceStats,
}

impl TunDevice {
    /// Opens `/dev/net/tun` and creates (or attaches to) interface `name` with `IFF_TUN |
    /// IFF_NO_PI`, non-blocking, then sets its MTU and brings it up.
    ///
    /// `name` may be a template such as `slr%d`; [`PacketDevice::name`] is the name the kernel
    /// chose. The interface is created in the calling thread's network namespace. The MTU is
    /// what the local stack may route into the device; longer packets written to it are taken.
    pub fn create(name: &str, mtu: u32) -> io::Result<Self> {
        let mut ifr = sys::ifreq(name)?;
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a NUL-terminated string; the result is checked and owned at once.
        let fd = sys::owned_fd(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })?;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF takes a `struct ifreq *`.
        unsafe { sys::ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr)? };
        let name = sys::ifreq_name(&ifr);
        netns::set_interface_mtu(&name, mtu)?;
        netns::set_interface_up(&name)?;
        Ok(TunDevice {
            fd,
            name,
            stats: DeviceStats::default(),
        })
    }

    /// Sets the interface's transmit queue length (packets the stack may queue towards the
    /// reader before it drops; 500 by default for TUN).
    pub fn set_txqueuelen(&self, len: u32) -> io::Result<()> {
        let sock = sys::control_socket()?;
        let mut ifr = sys::ifreq(&self.name)?;
        ifr.ifr_ifru.ifru_metric = len.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: SIOCSIFTXQLEN takes a `struct ifreq *` (the length in the int member).
        unsafe { sys::ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut ifr) }
    }

    /// The interface index.
    pub fn ifindex(&self) -> io::Result<u32> {
        netns::interface_index(&self.name)
    }
}

impl PacketDevice for TunDevice {
    /// Reads packets with one `read(2)` each until the kernel has none left or the batch is full.
    /// Non-IPv4 packets (the stack sends IPv6 router solicitations to a fresh TUN) are dropped as
    /// [`IoDrop::RxMalformed`].
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            let slot = bufs[n].read_slot();
            if slot.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "packet buffer has no room",
                ));
            }
            // SAFETY: `slot` is a live, exclusive byte slice; read(2) writes at most its length.
            let r = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    slot.as_mut_ptr() as *mut libc::c_void,
                    slot.len(),
                )
            };
            let room = slot.len();
            let len = match cvt_size(r) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The error comes back on the next call; deliver what we have first.
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            };
            // TUN copies at most `room` bytes and returns the copied length, so a cut packet
            // shows as a full read whose IPv4 total length runs past it.
            if len > room {
                self.stats.count_drop(IoDrop::RxTruncated);
                continue;
            }
            bufs[n].set_len(len);
            match Ipv4Packet::new_checked(bufs[n].as_ref()) {
                Ok(_) => {}
                Err(slr_wire::Error::Truncated) if len == room => {
                    self.stats.count_drop(IoDrop::RxTruncated);
                    continue;
                }
                Err(_) => {
                    self.stats.count_drop(IoDrop::RxMalformed);
                    continue;
                }
            }
            self.stats.count_rx(len);
            n += 1;
        }
        Ok(n)
    }

    /// Writes each packet with one `write(2)`. A packet must be a plain IPv4 packet to inject
    /// into the local stack (no outer header); bytes after its total length are not written.
    /// Anything that is not a well-formed IPv4 packet is dropped as [`IoDrop::TxMalformed`].
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        let mut i = 0;
        while i < pkts.len() {
            let bytes = match Ipv4Packet::new_checked(pkts[i].as_ref()) {
                Ok(p) => &pkts[i].as_ref()[..p.total_len() as usize],
                Err(_) => {
                    self.stats.count_drop(IoDrop::TxMalformed);
                    i += 1;
                    continue;
                }
            };
            // SAFETY: `bytes` is a live slice; write(2) reads at most its length.
            let r = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                )
            };
            match cvt_size(r) {
                Ok(_) => self.stats.count_tx(bytes.len()),
                Err(e) if sys::is_full(&e) => return Ok(i),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if sys::is_per_packet_send_error(&e) => self.stats.count_rejected(&e),
                Err(_) if i > 0 => return Ok(i),
                Err(e) => return Err(e),
            }
            i += 1;
        }
        Ok(i)
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}
