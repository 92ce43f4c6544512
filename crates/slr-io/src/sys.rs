//! Small wrappers over libc shared by the devices: error conversion, `struct ifreq`, socket
//! options. Everything `unsafe` that more than one module needs is here.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Why an interface name was refused before it reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad interface name {name:?}: {reason}")]
pub struct InterfaceNameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Turns a `-1` return into the thread's `errno`.
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Turns a `-1` return of a `ssize_t` call into the thread's `errno`.
pub(crate) fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Wraps a descriptor just returned by the kernel (`r` from a call that yields a new fd or -1).
pub(crate) fn owned_fd(r: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(r)?;
    // SAFETY: `fd` was just returned by a successful open/socket/eventfd call, so it is a valid
    // descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` with `name` in `ifr_name` and a zeroed union.
pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bad = |reason| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            InterfaceNameError {
                name: name.to_string(),
                reason,
            },
        )
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(bad("longer than 15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(bad("contains NUL, '/' or white space"));
    }
    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers, sockaddrs and a
    // pointer); all-zero bytes are a valid value of every member.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The name the kernel left in `ifr_name` (it fills in templates such as `tun%d`).
pub(crate) fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `ioctl(fd, request, ifr)`.
///
/// # Safety
///
/// `request` must be an ioctl whose argument is a `struct ifreq *` (the SIOC*IF* family and
/// TUNSETIFF), so that the kernel reads and writes only within `ifr`.
pub(crate) unsafe fn ioctl_ifreq(
    fd: RawFd,
    request: libc::Ioctl,
    ifr: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: `ifr` is a valid, exclusive `ifreq` for the duration of the call, and the caller
    // guarantees that `request` takes exactly that argument type.
    cvt(unsafe { libc::ioctl(fd, request, ifr as *mut libc::ifreq) })?;
    Ok(())
}

/// An `AF_INET` datagram socket used only as a handle for interface ioctls. It lives in the
/// network namespace of the calling thread, so the ioctls act on that namespace's interfaces.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and wrapped at once.
    owned_fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
pub(crate) fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at a live `c_int` and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(fd, level, name)` for an `int` option.
pub(crate) fn getsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point at live locals of the sizes passed.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(value)
}

/// A `sockaddr_in` for `addr` (port 0: raw sockets ignore it).
pub(crate) fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// The same address as a generic `sockaddr` (for `ifreq` address ioctls).
pub(crate) fn sockaddr(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    // `sockaddr_in` laid over `sa_data`: 2 bytes of port (0), 4 of address, 8 of zero.
    let mut sa_data = [0 as libc::c_char; 14];
    for (dst, src) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// Errors after which a send of the *same* packet can never succeed: the packet is dropped and
/// counted, and the batch goes on. Everything else that is not "try later" is returned.
pub(crate) fn is_per_packet_send_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EINVAL
                | libc::EMSGSIZE
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::EHOSTDOWN
                | libc::EPERM
                | libc::EACCES
                | libc::EADDRNOTAVAIL
                | libc::EIO
                | libc::ECONNREFUSED
                | libc::ENOPROTOOPT
                | libc::ENONET
        )
    )
}

/// Whether a send failed only because the device is full for now: `EAGAIN`, or `ENOBUFS`, which
/// is how a raw socket without `IP_HDRINCL` says its send buffer is full (`ip_append_data`
/// allocates without waiting; drops by the qdisc, also `ENOBUFS`, are not reported to it).
pub(crate) fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}
