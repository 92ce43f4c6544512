//! Processes: starting a detached child, signalling and reaping a pid, and the kernel's clock
//! tick (what the lab and the host agent's load sampler need from libc).

use std::io;
use std::process::{Child, Command};

/// Starts `cmd` in a session (and process group) of its own, so that neither a Ctrl-C meant
/// for the caller nor a closed terminal reaches it.
pub fn spawn_detached(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it is all the
    // child does between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts `cmd` like [`spawn_detached`], tied to the calling thread: the kernel sends the child
/// `signal` when that thread ends, however it ends (`kill -9` of the process included). What a
/// daemon starts to act for it (BIRD announcing the router's subnets) must not outlive it.
/// Spawn from a thread that lives as long as the child should (the kernel ties the child to the
/// thread, not the process).
pub fn spawn_tied(cmd: &mut Command, signal: i32) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid reads no memory.
    let parent = unsafe { libc::getpid() };
    // SAFETY: setsid, prctl and getppid are async-signal-safe and touch no memory of the
    // parent; they are all the child does between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the tie was made: then no signal would come.
            if libc::getppid() != parent {
                return Err(io::Error::other(
                    "the parent exited while the child started",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Reaps `pid` if it is an exited child of this process (so that it does not linger as a
/// zombie that looks alive); for any other pid nothing happens.
pub fn reap_if_child(pid: i32) {
    // SAFETY: waitpid with WNOHANG on a pid only reaps it if it is our exited child; for any
    // other pid it fails with ECHILD and changes nothing. No memory is passed.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
}

/// Sends `signal` to `pid`; true if it was delivered (the process exists and may be signalled).
pub fn send_signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The kernel's clock ticks per second (`USER_HZ`, the unit of `/proc/*/stat` times).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck > 0 {
        tck as u64
    } else {
        100
    }
}

/// Pins the calling thread to CPU `cpu` (a load generator's thread per CPU).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: cpu_set_t is a bit array, for which all zeroes is valid (the empty set).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`; `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads one cpu_set_t of the given size; pid 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_child_runs_in_its_own_session_and_is_reaped() {
        let mut child = spawn_detached(Command::new("sleep").arg("5")).unwrap();
        let pid = child.id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Field 6 (after the command in parentheses) is the session id: the child's own pid.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        assert_eq!(
            fields[3],
            pid.to_string(),
            "session id = the child's pid: {stat}"
        );
        assert!(send_signal(pid, 0), "signal 0 reaches a live process");
        assert!(send_signal(pid, libc::SIGKILL));
        let _ = child.wait();
        reap_if_child(pid);
        assert!(!send_signal(pid, 0), "gone after SIGKILL and wait");
        assert!(clock_ticks_per_second() >= 100);
    }
}
