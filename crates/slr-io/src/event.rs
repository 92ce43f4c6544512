//! Waking a poll loop: an eventfd, and poll(2) over a few descriptors.

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking eventfd: another thread (a control task, a signal handler thread) calls
/// [`EventFd::notify`] to wake a loop that polls [`EventFd::fd`] next to its devices.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with counter 0, non-blocking and close-on-exec.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2) call; the result is checked and owned at once.
        let fd =
            sys::owned_fd(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFd { fd })
    }

    /// Makes the descriptor readable until the next [`EventFd::drain`]. Never blocks; notifying
    /// an already notified eventfd is harmless.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64, as eventfd requires.
        let r = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
        match sys::cvt_size(r) {
            Ok(_) => Ok(()),
            // The counter is at its maximum: it is readable already, which is all we want.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter; returns how many notifications arrived since the last drain (0 if
    /// none).
    pub fn drain(&self) -> io::Result<u64> {
        let mut v: u64 = 0;
        loop {
            // SAFETY: reads at most 8 bytes into a live u64, as eventfd requires.
            let r = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    &mut v as *mut u64 as *mut libc::c_void,
                    8,
                )
            };
            return match sys::cvt_size(r) {
                Ok(_) => Ok(v),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Descriptors polled without a heap allocation.
const STACK_FDS: usize = 8;

/// Waits until at least one of `fds` is readable, or `timeout` passes (`None`: no limit).
///
/// Sets `ready[i]` for each readable `fds[i]` (errors and hang-ups count as readable, so that the
/// next receive reports them) and returns how many are. A negative descriptor is never ready
/// (poll(2) skips it). `ready` must be at least as long as `fds`. A timeout is rounded up to
/// whole milliseconds so that a short one does not spin; a signal may end the wait early with 0.
/// Up to 8 descriptors need no allocation.
pub fn poll_readable(
    fds: &[RawFd],
    timeout: Option<Duration>,
    ready: &mut [bool],
) -> io::Result<usize> {
    if ready.len() < fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ready is shorter than fds",
        ));
    }
    let empty = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut stack = [empty; STACK_FDS];
    let mut heap = Vec::new();
    let pfds: &mut [libc::pollfd] = if fds.len() <= STACK_FDS {
        &mut stack[..fds.len()]
    } else {
        heap.resize(fds.len(), empty);
        &mut heap
    };
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        *p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
    }
    let n = poll(pfds, timeout)?;
    for (r, p) in ready.iter_mut().zip(pfds.iter()) {
        *r = n > 0 && p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    }
    Ok(ready[..fds.len()].iter().filter(|&&r| r).count())
}

/// Waits until `fd` can take more packets, or `timeout` passes (`None`: no limit); returns
/// whether it can. For a device whose `send_batch` stopped short because it was full. Errors
/// count as writable, so that the next send reports them. Same timeout rules as
/// [`poll_readable`].
pub fn poll_writable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = [libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    }];
    let n = poll(&mut pfd, timeout)?;
    Ok(n > 0 && pfd[0].revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0)
}

/// poll(2) with the timeout rules of [`poll_readable`]; an interrupted wait returns 0.
fn poll(pfds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    };
    // SAFETY: `pfds` is a live, exclusive array of exactly `pfds.len()` pollfds.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    match sys::cvt(r) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn notify_wakes_poll_and_drain_resets() {
        let ev = EventFd::new().unwrap();
        let mut ready = [false; 1];
        assert_eq!(
            poll_readable(&[ev.fd()], Some(Duration::ZERO), &mut ready).unwrap(),
            0
        );
        assert_eq!(ev.drain().unwrap(), 0);
        ev.notify().unwrap();
        ev.notify().unwrap();
        assert_eq!(
            poll_readable(&[ev.fd()], Some(Duration::ZERO), &mut ready).unwrap(),
            1
        );
        assert!(ready[0]);
        assert_eq!(ev.drain().unwrap(), 2);
        assert_eq!(
            poll_readable(&[ev.fd()], Some(Duration::ZERO), &mut ready).unwrap(),
            0
        );
        assert!(!ready[0]);
    }

    #[test]
    fn notify_from_another_thread_wakes_a_blocked_poll() {
        let ev = std::sync::Arc::new(EventFd::new().unwrap());
        let other = EventFd::new().unwrap();
        let t0 = Instant::now();
        let waker = {
            let ev = ev.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                ev.notify().unwrap();
            })
        };
        let mut ready = [false; 3];
        // -1 is skipped by poll; `other` never fires.
        let n = poll_readable(
            &[other.fd(), -1, ev.fd()],
            Some(Duration::from_secs(10)),
            &mut ready,
        )
        .unwrap();
        let waited = t0.elapsed();
        waker.join().unwrap();
        assert_eq!(n, 1);
        assert_eq!(ready, [false, false, true]);
        assert!(
            waited >= Duration::from_millis(40),
            "woke too early: {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "did not wake: {waited:?}");
    }

    #[test]
    fn timeout_expires_and_many_fds_work() {
        let evs: Vec<EventFd> = (0..12).map(|_| EventFd::new().unwrap()).collect();
        let fds: Vec<RawFd> = evs.iter().map(EventFd::fd).collect();
        let mut ready = vec![false; fds.len()];
        let t0 = Instant::now();
        assert_eq!(
            poll_readable(&fds, Some(Duration::from_micros(1500)), &mut ready).unwrap(),
            0
        );
        assert!(t0.elapsed() >= Duration::from_millis(1));
        evs[10].notify().unwrap();
        assert_eq!(poll_readable(&fds, None, &mut ready).unwrap(), 1);
        assert!(ready[10]);
        assert!(poll_readable(&fds, None, &mut [false; 2]).is_err());
    }
}
