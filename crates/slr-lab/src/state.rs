//! What a lab has created, on disk, so that `slr lab down` (from another process, after a
//! crash, or twice) removes exactly that and nothing else.
//!
//! Layout of `/run/slr-lab/<lab>/`:
//!
//! - `state.json`: this module's [`State`]: the topology, every namespace created (in
//!   creation order) and every process started (pid plus kernel start time, so that a pid
//!   reused by an unrelated process after a reboot or crash is never signalled).
//! - `router.toml` / `<router>.toml`, `<host>.toml`: daemon configurations.
//! - `logs/<node>-<proc>.log`: stdout and stderr of each process.
//! - `<node>.sock`: the daemons' control sockets.
//!
//! The state is rewritten (atomically, by rename) after every step of `up`, so a crash
//! leaves a file that lists everything created so far.

use super::topology::Topology;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where every lab keeps its state directory.
pub const BASE_DIR: &str = "/run/slr-lab";

/// The state directory of a lab.
pub fn lab_dir(lab: &str) -> PathBuf {
    Path::new(BASE_DIR).join(lab)
}

/// Everything a lab created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Lab name.
    pub lab: String,
    /// The topology file `up` read (for humans; the topology itself is below).
    pub topology_file: PathBuf,
    /// The validated topology.
    pub topology: Topology,
    /// Unix time `up` started.
    pub created_unix: u64,
    /// Namespaces this lab created, in creation order; `down` deletes only these.
    pub namespaces: Vec<String>,
    /// Processes this lab started; `down` signals only these.
    pub processes: Vec<Process>,
    /// Set once `up` saw every host and every VIP answer.
    pub ready: bool,
    /// The lab's Prometheus, if `up --prometheus` started one: its URL and namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
}

/// A process started by the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// Node it runs on.
    pub node: String,
    /// What it is: "router", "host", "serve", "tcpdump".
    pub kind: String,
    /// Namespace it runs in.
    pub netns: String,
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it
    /// identifies the process even if the pid is reused later.
    pub start_time: u64,
    /// Its log file.
    pub log: PathBuf,
    /// The program and its arguments (`slr lab restart` starts it again with them).
    #[serde(default)]
    pub command: Vec<String>,
}

impl State {
    /// A fresh state for a lab about to be created.
    pub fn new(topology: Topology, topology_file: PathBuf) -> State {
        State {
            lab: topology.name.clone(),
            topology_file,
            topology,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            namespaces: Vec::new(),
            processes: Vec::new(),
            ready: false,
            prometheus: None,
        }
    }

    /// The lab's state directory.
    pub fn dir(&self) -> PathBuf {
        lab_dir(&self.lab)
    }

    /// Loads `<dir>/state.json`; `Ok(None)` if there is none (a directory left by a crash
    /// before the first save).
    pub fn load(dir: &Path) -> Result<Option<State>> {
        let path = dir.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a lab state file", path.display()))?;
        Ok(Some(state))
    }

    /// Writes `state.json` atomically (a crash mid-write leaves the previous version).
    pub fn save(&self) -> Result<()> {
        let dir = self.dir();
        let tmp = dir.join("state.json.tmp");
        let json = serde_json::to_string_pretty(self).context("encoding lab state")?;
        std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("state.json"))
            .with_context(|| format!("renaming {} into place", tmp.display()))
    }

    /// Pids of the processes on a node.
    pub fn pids(&self, node: &str) -> Vec<i32> {
        self.processes
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.pid)
            .collect()
    }
}

/// Names of the labs that have a state directory, sorted.
pub fn list_labs() -> Result<Vec<String>> {
    let mut labs = Vec::new();
    let entries = match std::fs::read_dir(BASE_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(labs),
        Err(e) => return Err(e).with_context(|| format!("listing {BASE_DIR}")),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {BASE_DIR}"))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            labs.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    labs.sort();
    Ok(labs)
}

/// Start time (clock ticks since boot) and state letter of a pid, from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((start_time, state))
}

/// Start time of a pid (for [`Process::start_time`]).
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(t, _)| t)
}

impl Process {
    /// Whether this very process (same pid and start time) still runs. Reaps it first if
    /// it is our child (during `lab run`), so that an exited child does not linger as a
    /// zombie that looks alive.
    pub fn is_running(&self) -> bool {
        slr_io::process::reap_if_child(self.pid);
        match proc_stat(self.pid) {
            Some((t, state)) => t == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends a signal if the process is still the one we started.
    pub fn signal(&self, sig: libc::c_int) {
        if self.is_running() {
            // The pid was checked to be ours just now.
            slr_io::process::send_signal(self.pid, sig);
        }
    }
}

/// Stops processes: SIGTERM, up to `grace` for them to exit, then SIGKILL for the rest.
/// Returns the descriptions of those that needed SIGKILL.
pub fn stop_processes(processes: &[Process], grace: Duration) -> Vec<String> {
    for p in processes {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && processes.iter().any(Process::is_running) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for p in processes.iter().filter(|p| p.is_running()) {
        p.signal(libc::SIGKILL);
        killed.push(format!("{} {} (pid {})", p.node, p.kind, p.pid));
    }
    // Give the kernel a moment to tear the killed ones down before namespaces go.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && processes.iter().any(Process::is_running) {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "    (empty)".to_string()
            } else {
                tail.iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_running_with_matching_start_time() {
        let pid = std::process::id() as i32;
        let t = start_time(pid).expect("own /proc/self/stat");
        let me = Process {
            node: "x".into(),
            kind: "test".into(),
            netns: "none".into(),
            pid,
            start_time: t,
            log: PathBuf::new(),
            command: Vec::new(),
        };
        assert!(me.is_running());
        let reused = Process {
            start_time: t + 1,
            ..me
        };
        assert!(
            !reused.is_running(),
            "a pid with another start time is not ours"
        );
    }
}
