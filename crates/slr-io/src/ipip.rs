//! A raw IP-in-IP socket: one end of every tunnel (RFC 2003, IP protocol 4).

use crate::sys;
use crate::{DeviceStats, IoDrop, PacketDevice};
use slr_wire::{Ipv4Packet, PacketBuf, Protocol};
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Packets per `recvmmsg`/`sendmmsg` call; the scratch arrays live on the stack.
const BATCH: usize = 64;

/// Socket buffer size asked for at open (the kernel doubles it for bookkeeping).
const DEFAULT_BUFFER: usize = 4 << 20;

/// Room for the control messages of one send: IP_PKTINFO, IP_TTL and IP_TOS.
const CMSG_ROOM: usize = 96;

/// Bytes of a `cmsghdr` (`size_t len; int level; int type;`), data follows aligned to `size_t`.
const CMSG_HDR: usize = mem::size_of::<libc::cmsghdr>();
const _: () = assert!(CMSG_HDR == mem::size_of::<usize>() + 8);

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_ROOM]);

/// A raw `socket(AF_INET, SOCK_RAW, IPPROTO_IPIP)`: sends and receives IP-in-IP packets.
///
/// **Receiving** gets every protocol-4 packet addressed to this host (in the socket's network
/// namespace), with its outer IPv4 header first; outer fragments arrive reassembled. That
/// includes packets this host sent to one of its own addresses. While such a socket is open the
/// kernel does not answer protocol 4 with ICMP protocol-unreachable (it does when none is).
/// ICMP errors about packets this socket sent (protocol-unreachable from a host with no tunnel
/// endpoint, fragmentation-needed) never reach it: the kernel reports them to an unconnected raw
/// socket only with `IP_RECVERR`, which this type does not set. Watch them with an ICMP socket.
///
/// **Sending** takes IPv4 packets whose *first* header is the outer IP-in-IP header (protocol 4),
/// written by the caller in front of the inner packet (see `slr_wire::ipip::encapsulate`, which
/// copies the inner DF bit into it, as RFC 2003 3.1 asks). Two modes:
///
/// - default ([`IpipSocket::open`]): the socket sends the bytes after the outer header to the
///   outer destination, and the kernel writes the outer header itself (the fastest path on this
///   machine). From the caller's header it keeps the destination; the source, unless 0.0.0.0
///   (it must be a local address, else [`IoDrop::TxRejected`] with `ENETUNREACH`; see
///   [`IpipSocket::set_any_source`]); the TTL, unless 0 (then the system default); the TOS
///   byte; and the DF bit. Source, a TTL other than the default and a TOS other than 0 travel as
///   control messages, a few percent of throughput each. Linux has no control message for DF,
///   so the type holds two sockets and sends each packet through the one whose
///   `IP_MTU_DISCOVER` gives its DF bit, one `sendmmsg` per run of consecutive packets with the
///   same bit:
///   - DF clear (`IP_PMTUDISC_DONT`): an outer packet larger than the route MTU is fragmented by
///     the kernel;
///   - DF set (`IP_PMTUDISC_PROBE`): an outer packet larger than the MTU of the outgoing
///     interface is refused ([`IoDrop::TxRejected`] with `EMSGSIZE`), never fragmented. Path
///     MTUs learnt from ICMP fragmentation-needed are ignored: senders answer DF inner packets
///     that would not fit the configured tunnel MTU with ICMP fragmentation-needed before they
///     get here.
///
///   The kernel chooses the identification (0 on DF packets, which nobody may fragment).
///   Outer options are not sent.
/// - [`IpipSocket::with_header_included`] (`IP_HDRINCL`): the caller's outer header goes out as
///   written, DF bit included, except that the kernel rewrites the total length and checksum
///   (and fills a zero identification and a 0.0.0.0 source). Slower here (a route per packet),
///   and a packet larger than the route MTU is refused (`EMSGSIZE`) rather than fragmented,
///   whatever its DF bit. One socket does all.
///
/// A packet whose first header is not a well-formed, unfragmented IPv4 header with protocol 4
/// and a destination is dropped as [`IoDrop::TxMalformed`]; the inner packet is not checked.
#[derive(Debug)]
pub struct IpipSocket {
    /// Receives; sends the packets whose outer DF bit is clear (`IP_PMTUDISC_DONT`), and every
    /// packet with `IP_HDRINCL`.
    fd: OwnedFd,
    /// In the default mode, sends the packets whose outer DF bit is set (`IP_PMTUDISC_PROBE`)
    /// and never receives (see [`make_send_only`]). `None` with `IP_HDRINCL`, where the caller's
    /// header carries DF itself.
    df_fd: Option<OwnedFd>,
    /// The TTL the kernel gives outer headers without an IP_TTL control message.
    default_ttl: u8,
    stats: DeviceStats,
}

/// What a send needs from the caller's outer header.
struct Outer {
    dst: Ipv4Addr,
    src: Ipv4Addr,
    ttl: u8,
    tos: u8,
    dont_frag: bool,
    header_len: usize,
    total_len: usize,
}

fn parse_outer(bytes: &[u8]) -> Option<Outer> {
    let p = Ipv4Packet::new_checked(bytes).ok()?;
    if p.protocol() != Protocol::IpIp || p.is_fragment() || p.dst_addr().is_unspecified() {
        return None;
    }
    Some(Outer {
        dst: p.dst_addr(),
        src: p.src_addr(),
        ttl: p.ttl(),
        tos: p.tos(),
        dont_frag: p.dont_frag(),
        header_len: p.header_len() as usize,
        total_len: p.total_len() as usize,
    })
}

/// Appends one control message at `off` of `buf`; returns the offset of the next.
fn push_cmsg(
    buf: &mut [u8],
    off: usize,
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> usize {
    let align = mem::size_of::<usize>();
    let len = CMSG_HDR + data.len();
    buf[off..off + align].copy_from_slice(&len.to_ne_bytes());
    buf[off + align..off + align + 4].copy_from_slice(&level.to_ne_bytes());
    buf[off + align + 4..off + CMSG_HDR].copy_from_slice(&ty.to_ne_bytes());
    buf[off + CMSG_HDR..off + len].copy_from_slice(data);
    off + CMSG_HDR + data.len().div_ceil(align) * align
}

/// Control messages that carry the caller's outer source, TTL and TOS into a default-mode send.
/// A TTL equal to the socket's default and TOS 0 (the socket's) need none; each control message
/// costs a few percent of throughput.
fn outer_cmsgs(buf: &mut CmsgBuf, o: &Outer, default_ttl: u8) -> usize {
    let b = &mut buf.0[..];
    let mut off = 0;
    if !o.src.is_unspecified() {
        // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
        let mut info = [0u8; 12];
        info[4..8].copy_from_slice(&o.src.octets());
        off = push_cmsg(b, off, libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
    }
    if o.ttl != 0 && o.ttl != default_ttl {
        let ttl = libc::c_int::from(o.ttl).to_ne_bytes();
        off = push_cmsg(b, off, libc::IPPROTO_IP, libc::IP_TTL, &ttl);
    }
    if o.tos != 0 {
        let tos = libc::c_int::from(o.tos).to_ne_bytes();
        off = push_cmsg(b, off, libc::IPPROTO_IP, libc::IP_TOS, &tos);
    }
    off
}

/// A new non-blocking raw `IPPROTO_IPIP` socket in the calling thread's network namespace.
fn raw_ipip_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and owned at once.
    sys::owned_fd(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_IPIP,
        )
    })
}

/// Packets [`make_send_only`] reads at most to empty a queue filled before its filter was on.
const DRAIN_MAX: usize = 1024;

/// Makes `fd`, a raw IP-in-IP socket used only for sending, keep nothing it receives.
///
/// The kernel hands every raw socket of protocol 4 a copy of each incoming IP-in-IP packet; one
/// that is never read would fill its buffer and hold that memory for good. A classic BPF filter
/// that accepts nothing ("ret 0") drops each copy before it is queued (the kernel still clones
/// the packet for the socket, a small cost per tunnel packet received), the receive buffer is
/// the smallest the kernel allows, and what arrived before the filter was attached is read
/// away. `bind` or `connect` would keep the copies away earlier (raw sockets are matched on
/// their bound and connected addresses), but they also fix the source address of sends that
/// carry no `IP_PKTINFO` (the caller's 0.0.0.0, "the route's source"), and `connect` needs a
/// route to an address that never sends tunnels; `SO_BINDTODEVICE` would confine sends too.
fn make_send_only(fd: &OwnedFd) -> io::Result<()> {
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 0)?;
    let mut reject_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: reject_all.len() as libc::c_ushort,
        filter: reject_all.as_mut_ptr(),
    };
    // SAFETY: the option value points at a live `sock_fprog` of the size passed, whose `filter`
    // points at `len` live instructions; the kernel copies the program during the call.
    sys::cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    // A raw socket takes packets from the moment it exists: read away those that came before the
    // filter. Nothing joins them now, so the queue empties (EAGAIN) well before the bound; a
    // packet left over on another error only holds a little memory.
    let mut byte = 0u8;
    for _ in 0..DRAIN_MAX {
        // SAFETY: the buffer is a live local byte and its length 1 is passed; a datagram longer
        // than that is cut and dropped whole.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            break;
        }
    }
    Ok(())
}

impl IpipSocket {
    /// Opens a non-blocking raw IP-in-IP socket in the calling thread's network namespace, in the
    /// default (kernel-built outer header) mode: two raw sockets, one receiving and sending
    /// DF-clear packets (`IP_PMTUDISC_DONT`), one only sending DF packets (`IP_PMTUDISC_PROBE`),
    /// both with 4 MiB send buffers, the receiving one with a 4 MiB receive buffer. Needs
    /// `CAP_NET_RAW`.
    pub fn open() -> io::Result<Self> {
        let fd = raw_ipip_socket()?;
        sys::setsockopt_int(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )?;
        // Pin the sockets' TTL to the system default, so that a caller's TTL equal to it needs
        // no control message and route metrics cannot change it behind the caller's back.
        let default_ttl = sys::getsockopt_int(&fd, libc::IPPROTO_IP, libc::IP_TTL)?.clamp(1, 255);
        sys::setsockopt_int(&fd, libc::IPPROTO_IP, libc::IP_TTL, default_ttl)?;

        let df_fd = raw_ipip_socket()?;
        make_send_only(&df_fd)?;
        // PROBE, not DO: DF on every packet, checked against the interface MTU only. The tunnel
        // MTU is the caller's (slr-core answers the inner sender with fragmentation-needed); a
        // path MTU the kernel learnt from ICMP (maybe forged) would refuse here packets the
        // caller already accepted, and nobody would tell the inner sender.
        sys::setsockopt_int(
            &df_fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
        sys::setsockopt_int(&df_fd, libc::IPPROTO_IP, libc::IP_TTL, default_ttl)?;

        let s = IpipSocket {
            fd,
            df_fd: Some(df_fd),
            default_ttl: default_ttl as u8,
            stats: DeviceStats::default(),
        };
        s.set_recv_buffer_size(DEFAULT_BUFFER)?;
        s.set_send_buffer_size(DEFAULT_BUFFER)?;
        Ok(s)
    }

    /// Switches to `IP_HDRINCL`: sends use the caller's outer header as written (see the type's
    /// documentation). The DF socket of the default mode is closed: the receiving socket sends
    /// every packet.
    pub fn with_header_included(mut self) -> io::Result<Self> {
        sys::setsockopt_int(&self.fd, libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
        self.df_fd = None;
        Ok(self)
    }

    /// Whether sends use the caller's outer header as written (`IP_HDRINCL`).
    pub fn header_included(&self) -> bool {
        self.df_fd.is_none()
    }

    /// The sockets that send: the receiving one, and in the default mode the DF one.
    fn sending_fds(&self) -> impl Iterator<Item = &OwnedFd> {
        std::iter::once(&self.fd).chain(self.df_fd.as_ref())
    }

    /// Sets `SO_RCVBUF` of the receiving socket, past `net.core.rmem_max` if the process may
    /// (`SO_RCVBUFFORCE`).
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        sys::setsockopt_int(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
            .or_else(|_| sys::setsockopt_int(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v))
    }

    /// Sets `SO_SNDBUF` of each sending socket (each gets `bytes`), past `net.core.wmem_max` if
    /// the process may (`SO_SNDBUFFORCE`).
    pub fn set_send_buffer_size(&self, bytes: usize) -> io::Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        for fd in self.sending_fds() {
            sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v)
                .or_else(|_| sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, v))?;
        }
        Ok(())
    }

    /// The receive buffer size the kernel granted (twice what was asked: it counts overhead).
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        Ok(sys::getsockopt_int(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUF)? as usize)
    }

    /// Allows outer source addresses that are not local to this host (`IP_TRANSPARENT`), for
    /// example to vary the outer source per flow for receive-side scaling at the far end. Needs
    /// `CAP_NET_ADMIN`. Without it, a non-local source is refused with `ENETUNREACH`. Applies to
    /// each sending socket.
    pub fn set_any_source(&self, on: bool) -> io::Result<()> {
        for fd in self.sending_fds() {
            sys::setsockopt_int(
                fd,
                libc::IPPROTO_IP,
                libc::IP_TRANSPARENT,
                on as libc::c_int,
            )?;
        }
        Ok(())
    }

    /// Sends at most [`BATCH`] packets; same contract as `send_batch`.
    fn send_chunk(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        debug_assert!(pkts.len() <= BATCH);
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs for which all-zero bytes
        // are valid (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { mem::zeroed() };
        let mut cmsgs = [CmsgBuf([0; CMSG_ROOM]); BATCH];
        let mut cmsg_lens = [0usize; BATCH];
        // For message j: the packet it sends, its length, how many malformed packets came
        // before it (counted only once they are consumed, so that a retry does not count twice),
        // and whether it goes through the DF socket.
        let mut index = [0usize; BATCH];
        let mut lens = [0usize; BATCH];
        let mut malformed_before = [0usize; BATCH];
        let mut via_df = [false; BATCH];

        let mut m = 0;
        let mut malformed = 0;
        for (i, p) in pkts.iter().enumerate() {
            let bytes = p.as_ref();
            let Some(o) = parse_outer(bytes) else {
                malformed += 1;
                continue;
            };
            let payload = if self.header_included() {
                &bytes[..o.total_len]
            } else {
                &bytes[o.header_len..o.total_len]
            };
            addrs[m] = sys::sockaddr_in(o.dst);
            iovs[m] = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            if !self.header_included() {
                cmsg_lens[m] = outer_cmsgs(&mut cmsgs[m], &o, self.default_ttl);
            }
            index[m] = i;
            lens[m] = o.total_len;
            malformed_before[m] = malformed;
            via_df[m] = o.dont_frag && self.df_fd.is_some();
            m += 1;
        }
        for j in 0..m {
            let h = &mut msgs[j].msg_hdr;
            h.msg_name = &mut addrs[j] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[j];
            h.msg_iovlen = 1;
            if cmsg_lens[j] > 0 {
                h.msg_control = cmsgs[j].0.as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = cmsg_lens[j] as _;
            }
        }

        let mut sent = 0;
        // None: every message went out; Some(None): the socket is full; Some(Some(e)): it failed.
        let stopped = loop {
            if sent == m {
                break None;
            }
            // The run of messages from `sent` on that go through the same socket, in order: a
            // full socket stops the batch there, so packets never overtake each other.
            let df = via_df[sent];
            let end = sent + via_df[sent..m].iter().take_while(|&&d| d == df).count();
            let fd = match &self.df_fd {
                Some(df_fd) if df => df_fd.as_raw_fd(),
                _ => self.fd.as_raw_fd(),
            };
            // SAFETY: msgs[sent..end] are initialised mmsghdrs whose name, iovec and control
            // pointers point into the arrays above and into `pkts`, all alive and unmoved until
            // the call returns; the kernel only reads them (and writes msg_len).
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[sent..end].as_mut_ptr(),
                    (end - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            match sys::cvt(r) {
                Ok(k) => {
                    for &len in &lens[sent..sent + k as usize] {
                        self.stats.count_tx(len);
                    }
                    sent += k as usize;
                }
                Err(e) if sys::is_full(&e) => break Some(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_per_packet_send_error(&e) => {
                    self.stats.count_rejected(&e);
                    sent += 1;
                }
                Err(e) => break Some(Some(e)),
            }
        };
        let (consumed, malformed) = match stopped {
            None => (pkts.len(), malformed),
            Some(_) => (index[sent], malformed_before[sent]),
        };
        self.stats
            .count_drops(IoDrop::TxMalformed, malformed as u64);
        match stopped {
            Some(Some(e)) if consumed == 0 => Err(e),
            _ => Ok(consumed),
        }
    }

    /// Receives at most [`BATCH`] packets into `bufs`; returns (packets kept, whether the kernel
    /// filled every slot, that is may have more).
    fn recv_chunk(&mut self, bufs: &mut [PacketBuf]) -> io::Result<(usize, bool)> {
        let want = bufs.len().min(BATCH);
        // SAFETY: mmsghdr and iovec are plain C structs for which all-zero bytes are valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        for (iov, b) in iovs.iter_mut().zip(bufs[..want].iter_mut()) {
            let slot = b.read_slot();
            if slot.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "packet buffer has no room",
                ));
            }
            *iov = libc::iovec {
                iov_base: slot.as_mut_ptr() as *mut libc::c_void,
                iov_len: slot.len(),
            };
        }
        for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()).take(want) {
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let k = loop {
            // SAFETY: msgs[..want] point at iovecs above, which point into the read slots of
            // bufs[..want]; all stay alive and unmoved (no other access to `bufs`) until the call
            // returns, and the kernel writes at most iov_len bytes into each.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    want as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            match sys::cvt(r) {
                Ok(k) => break k as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((0, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let mut kept = 0;
        for (j, msg) in msgs.iter().enumerate().take(k) {
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.count_drop(IoDrop::RxTruncated);
                continue;
            }
            let len = msg.msg_len as usize;
            bufs[j].set_len(len);
            let ok = Ipv4Packet::new_checked(bufs[j].as_ref())
                .is_ok_and(|p| p.protocol() == Protocol::IpIp);
            if !ok {
                self.stats.count_drop(IoDrop::RxMalformed);
                continue;
            }
            self.stats.count_rx(len);
            bufs.swap(kept, j);
            kept += 1;
        }
        Ok((kept, k == want))
    }
}

impl PacketDevice for IpipSocket {
    /// Receives with `recvmmsg`, 64 packets per call. Each packet starts with its outer IPv4
    /// header (protocol 4); decapsulate with `slr_wire::ipip::decapsulate`.
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            match self.recv_chunk(&mut bufs[n..]) {
                Ok((kept, more)) => {
                    n += kept;
                    if !more {
                        break;
                    }
                }
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Sends with `sendmmsg`, up to 64 packets per call; in the default mode one call per run of
    /// consecutive packets with the same outer DF bit (each run goes through its own socket).
    /// Each packet is an outer IP-in-IP header (protocol 4) followed by the inner packet; see the
    /// type's documentation for which outer fields are kept in each mode.
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        let mut done = 0;
        for chunk in pkts.chunks(BATCH) {
            match self.send_chunk(chunk) {
                Ok(n) if n == chunk.len() => done += n,
                Ok(n) => return Ok(done + n),
                Err(_) if done > 0 => return Ok(done),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The receiving socket. It also sends the DF-clear packets (every packet with
    /// `IP_HDRINCL`), so its writability says nothing about the DF socket of the default mode:
    /// after a batch that stopped on a full DF socket, a writable descriptor does not mean room.
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn name(&self) -> &str {
        if self.header_included() {
            "ipip-hdrincl"
        } else {
            "ipip"
        }
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}
