//! Network namespaces, veth pairs, addresses and routes, through the `ip` command.
//!
//! The `ip` command (iproute2) is what every operator already knows: each helper runs
//! one `ip` invocation and on failure reports the exact command line and its stderr, so
//! a failed `lab up` can be reproduced by hand. The only thing done in-process is
//! [`in_netns`], which runs a closure on a thread that entered a namespace (network
//! namespaces are per thread), for probes and demo sockets.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Runs a command to completion; the error names the command line and quotes its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let line = command_line(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{line}` (is {program} installed?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command as it would be typed (for error messages and logs).
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `ip -n NS ARGS...` (the command applied inside a namespace).
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", all)
}

/// Whether a named namespace exists.
pub fn exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

/// Creates a namespace and brings its loopback up.
pub fn add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace; one that is already gone is not an error (down is idempotent).
pub fn delete(ns: &str) -> Result<()> {
    if !exists(ns) {
        return Ok(());
    }
    ip(&["netns", "delete", ns]).map(|_| ())
}

/// Creates a veth pair between two namespaces and names both ends, without ever placing
/// an end in the root namespace (where names of two labs could collide).
pub fn add_veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    ip_in(
        ns_a,
        &[
            "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ],
    )
    .map(|_| ())
}

/// Adds an address to an interface in a namespace and brings the interface up.
pub fn add_address(ns: &str, ifname: &str, cidr: &str) -> Result<()> {
    ip_in(ns, &["addr", "add", cidr, "dev", ifname])?;
    ip_in(ns, &["link", "set", ifname, "up"])?;
    Ok(())
}

/// Sets sysctls inside a namespace (`ip netns exec NS sysctl -q -w K=V ...`): /proc/sys/net
/// shows the namespace of whoever opens it, so this must run inside.
pub fn sysctl(ns: &str, settings: &[(String, &str)]) -> Result<()> {
    let mut args: Vec<String> = ["netns", "exec", ns, "sysctl", "-q", "-w"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    run("ip", &args).map(|_| ())
}

/// Starts `program args...` in a namespace (`ip netns exec`, which execs in place so the
/// pid we get is the program's), detached: a session (and process group) of its own, so
/// neither a Ctrl-C meant for the lab command nor a closed terminal reaches it; stdin
/// from /dev/null, stdout and stderr appended to `log` (a restarted process writes on).
pub fn spawn_in(ns: &str, program: &OsStr, args: &[String], log: &Path) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        // Logs go to files: no colour escapes (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("duplicating a log file handle")?)
        .stderr(file);
    let line = command_line(&cmd);
    slr_io::process::spawn_detached(&mut cmd).with_context(|| format!("starting `{line}`"))
}

/// Runs `f` on a new thread that entered the network namespace `ns`, and returns its
/// result. Sockets the closure creates live in that namespace; the calling thread is
/// unaffected (a network namespace belongs to a thread, not to the process).
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns_name = ns.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || -> Result<T> {
            // Moves only this thread, which ends when the closure returns.
            slr_io::netns::enter_netns(&ns_name)
                .with_context(|| format!("entering network namespace {ns_name}"))?;
            f()
        })
        .context("spawning a thread")?;
    thread
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_command_shows_command_line_and_stderr() {
        let e = run("sh", ["-c", "echo boom >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sh -c echo boom >&2; exit 3` failed"), "{e}");
        assert!(e.contains("boom"), "{e}");
    }

    #[test]
    fn missing_program_is_named() {
        let e = run("no-such-program-slr", ["x"]).unwrap_err().to_string();
        assert!(e.contains("no-such-program-slr"), "{e}");
    }
}
