//! Announcing virtual subnets into IP routing through BIRD 2 (Debian's `bird2`).
//!
//! The seed's access routers reach "the nearest SLR": an operator announces the virtual subnets
//! from the routers that serve them, and the network's own routing (BGP, equal-cost multipath,
//! local preference) spreads clients over them and routes around a dead one. slr does not speak
//! BGP itself: it drives BIRD, the field's daemon.
//!
//! - [`Speaker`]: the configuration of a router's BIRD. One static protocol holds the subnets
//!   the router announces (`unreachable` routes: they are exported to the BGP neighbours, never
//!   installed in the router's kernel); the BGP sessions export only those. BFD, when
//!   configured, takes a dead neighbour's routes away within `interval * 3`; otherwise the hold
//!   time does.
//! - [`Listener`]: the configuration of the access router's BIRD (the lab's core): every
//!   route it learns goes into the kernel, equal routes merged into one multipath route.
//! - [`Bird`]: BIRD's process, started in the foreground and tied to the thread that started
//!   it (`slr_io::process::spawn_tied`), so that `kill -9` of the daemon takes BIRD down with
//!   it and the neighbours withdraw its routes at once (the kernel closes BIRD's sessions);
//!   [`Bird::configure`] loads a rewritten configuration (`birdc configure`), and
//!   [`Bird::protocols`] reads the sessions' states (`birdc show protocols`).

use slr_wire::Ipv4Cidr;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A BGP neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    /// Its address (a directly connected one: the sessions are single-hop eBGP).
    pub address: Ipv4Addr,
    /// Its AS number.
    pub asn: u32,
}

/// BFD (RFC 5880) on the sessions: a neighbour that misses `multiplier` packets of `interval`
/// is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    /// Transmit and receive interval.
    pub interval: Duration,
    /// Missed packets before the session is down.
    pub multiplier: u32,
}

/// What both ends of a session share: identity and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// BGP router ID.
    pub router_id: Ipv4Addr,
    /// This speaker's AS number.
    pub local_as: u32,
    /// The neighbours.
    pub neighbors: Vec<Neighbor>,
    /// BGP hold time (whole seconds, at least 3); keepalives go every third of it.
    pub hold_time: Duration,
    /// BFD on every session, if any.
    pub bfd: Option<Bfd>,
}

/// The name of the static protocol that holds a speaker's announcements.
pub const ANNOUNCE_PROTOCOL: &str = "slr_vips";

impl Session {
    fn header(&self, out: &mut String) {
        let _ = writeln!(out, "# Written by slr; rewritten on every change.");
        let _ = writeln!(out, "router id {};", self.router_id);
        let _ = writeln!(out, "log stderr all;");
        let _ = writeln!(out, "protocol device {{ scan time 10; }}");
        if let Some(b) = &self.bfd {
            let ms = b.interval.as_millis().max(1);
            let _ = writeln!(
                out,
                "protocol bfd {{ interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }}; }}",
                b.multiplier
            );
        }
    }

    fn timers(&self) -> String {
        let hold = self.hold_time.as_secs().max(3);
        let keepalive = (hold / 3).max(1);
        format!(
            "hold time {hold}; keepalive time {keepalive}; connect retry time 1; \
             error wait time 1, 5;{}",
            if self.bfd.is_some() { " bfd on;" } else { "" }
        )
    }
}

/// The BIRD protocol name of the session with `n` (identifiers only).
pub fn protocol_name(n: &Neighbor) -> String {
    format!("n_{}", n.address.to_string().replace('.', "_"))
}

/// A router that announces its virtual subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    /// Identity, neighbours and timers.
    pub session: Session,
}

impl Speaker {
    /// BIRD's configuration announcing exactly `subnets` (none: everything withdrawn, the
    /// sessions stay up).
    pub fn config(&self, subnets: &[Ipv4Cidr]) -> String {
        let s = &self.session;
        let mut out = String::new();
        s.header(&mut out);
        let _ = write!(out, "protocol static {ANNOUNCE_PROTOCOL} {{ ipv4;");
        for p in subnets {
            let _ = write!(out, " route {p} unreachable;");
        }
        let _ = writeln!(out, " }}");
        for n in &s.neighbors {
            let _ = writeln!(
                out,
                "protocol bgp {} {{ local as {}; neighbor {} as {}; {} ipv4 {{ import none; export where proto = \"{ANNOUNCE_PROTOCOL}\"; }}; }}",
                protocol_name(n),
                s.local_as,
                n.address,
                n.asn,
                s.timers()
            );
        }
        out
    }
}

/// An access router that learns the virtual subnets from the speakers and installs them in its
/// kernel, equal routes merged into one multipath route (the kernel spreads flows over its
/// next hops by hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Identity, neighbours (the speakers) and timers.
    pub session: Session,
    /// Local preference per neighbour (absent: 100, BGP's default); the highest wins, so a
    /// lower one makes a backup.
    pub local_pref: Vec<(Ipv4Addr, u32)>,
}

impl Listener {
    /// BIRD's configuration.
    pub fn config(&self) -> String {
        let s = &self.session;
        let mut out = String::new();
        s.header(&mut out);
        let _ = writeln!(
            out,
            "protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on limit 16; }}"
        );
        for n in &s.neighbors {
            let pref = self
                .local_pref
                .iter()
                .find(|(a, _)| *a == n.address)
                .map_or(100, |(_, p)| *p);
            let _ = writeln!(
                out,
                "protocol bgp {} {{ local as {}; neighbor {} as {}; {} ipv4 {{ import filter {{ bgp_local_pref = {pref}; accept; }}; export none; }}; }}",
                protocol_name(n),
                s.local_as,
                n.address,
                n.asn,
                s.timers()
            );
        }
        out
    }
}

/// One line of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Its name (`n_10_200_1_1` for a session).
    pub name: String,
    /// Its kind (`BGP`, `Static`, `BFD`, ...).
    pub proto: String,
    /// `up`, `down`, `start`, ...
    pub state: String,
    /// For BGP the session's state (`Established`, `Active`, `Connect`, ...) and any error.
    pub info: String,
}

impl Protocol {
    /// A BGP session that is established.
    pub fn established(&self) -> bool {
        self.proto == "BGP" && self.info.starts_with("Established")
    }
}

/// Reads `birdc show protocols`' table (the header line and BIRD's banner are skipped).
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    let mut out = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 5 || w[0] == "BIRD" || w[0] == "Name" {
            continue;
        }
        // name proto table state since [info...]; "since" is a time or a date and a time.
        let mut rest = w[5..].iter().copied();
        let mut info: Vec<&str> = Vec::new();
        for x in rest.by_ref() {
            if x.contains(':') && x.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                continue; // the second half of "since" (a date and a time)
            }
            info.push(x);
        }
        out.push(Protocol {
            name: w[0].to_string(),
            proto: w[1].to_string(),
            state: w[3].to_string(),
            info: info.join(" "),
        });
    }
    out
}

/// What went wrong with BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The program could not be started.
    #[error("cannot start {program} ({source}): BGP needs BIRD 2 (Debian: bird2; scripts/install-deps installs it)")]
    Start {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// BIRD exited during start (its log says why).
    #[error("BIRD exited at start ({status}); its log: {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
    },
    /// BIRD's control socket did not answer in time.
    #[error("BIRD's control socket {0} did not answer within 5 s")]
    NoSocket(String),
    /// A birdc command failed or BIRD refused it.
    #[error("birdc {command}: {message}")]
    Birdc {
        /// The command.
        command: String,
        /// birdc's output or error.
        message: String,
    },
}

/// Runs `birdc -s SOCKET ARGS...` and returns its output; a reply BIRD marks as an error
/// (codes 8xxx and 9xxx) is an error.
pub fn birdc(program: &Path, socket: &Path, args: &[&str]) -> Result<String, BirdError> {
    let out = Command::new(program)
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BirdError::Birdc {
            command: args.join(" "),
            message: format!("cannot run {}: {e}", program.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let failed = !out.status.success()
        || text.lines().any(|l| {
            l.starts_with("Unable to connect")
                || l.starts_with("syntax error")
                || l.contains("Reconfiguration rejected")
        });
    if failed {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BirdError::Birdc {
            command: args.join(" "),
            message: format!("{}{}", text.trim(), err.trim()),
        });
    }
    Ok(text)
}

/// A running BIRD.
#[derive(Debug)]
pub struct Bird {
    child: Option<Child>,
    birdc: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Starts `bird` in the foreground with `config`, its control socket at `socket` and its
    /// output in `log`, tied to the calling thread (SIGTERM when it ends: BIRD then closes its
    /// sessions, which withdraws its routes); returns once the control socket answers.
    pub fn start(
        bird: &Path,
        birdc: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Bird, BirdError> {
        let start_err = |source| BirdError::Start {
            program: bird.display().to_string(),
            source,
        };
        let _ = std::fs::remove_file(socket);
        let out = std::fs::File::create(log).map_err(start_err)?;
        let err = out.try_clone().map_err(start_err)?;
        let mut cmd = Command::new(bird);
        cmd.arg("-f")
            .arg("-c")
            .arg(config)
            .arg("-s")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = slr_io::process::spawn_tied(&mut cmd, libc::SIGTERM).map_err(start_err)?;
        let mut b = Bird {
            child: Some(child),
            birdc: birdc.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let t = Instant::now();
        loop {
            if let Some(status) = b.exited() {
                return Err(BirdError::Exited {
                    status,
                    log: std::fs::read_to_string(log)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                });
            }
            if socket.exists() && b.protocols().is_ok() {
                return Ok(b);
            }
            if t.elapsed() > Duration::from_secs(5) {
                return Err(BirdError::NoSocket(socket.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// BIRD's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(exit status)` once BIRD has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("stopped".into()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
        }
    }

    /// Loads the configuration file again (`birdc configure`): sessions whose settings did not
    /// change stay up; the static protocol's routes become the new ones.
    pub fn configure(&self) -> Result<(), BirdError> {
        birdc(&self.birdc, &self.socket, &["configure"]).map(|_| ())
    }

    /// The protocols and their states (`birdc show protocols`).
    pub fn protocols(&self) -> Result<Vec<Protocol>, BirdError> {
        birdc(&self.birdc, &self.socket, &["show", "protocols"]).map(|t| parse_protocols(&t))
    }

    /// Stops BIRD (SIGTERM: it closes its sessions with a notification), waiting up to 2 s
    /// before SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            slr_io::process::send_signal(pid, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            router_id: Ipv4Addr::new(10, 200, 1, 2),
            local_as: 65001,
            neighbors: vec![Neighbor {
                address: Ipv4Addr::new(10, 200, 1, 1),
                asn: 65000,
            }],
            hold_time: Duration::from_secs(3),
            bfd: Some(Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
        }
    }

    fn parses(config: &str) {
        // BIRD's own parser (`bird -p`), when it is installed.
        let Ok(dir) = std::env::var("CARGO_TARGET_TMPDIR").or_else(|_| {
            std::env::temp_dir()
                .to_str()
                .map(str::to_owned)
                .ok_or(std::env::VarError::NotPresent)
        }) else {
            return;
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = Path::new(&dir).join(format!("slr-bgp-test-{}-{n}.conf", std::process::id()));
        std::fs::write(&path, config).unwrap();
        match Command::new("bird").arg("-p").arg("-c").arg(&path).output() {
            Ok(out) => assert!(
                out.status.success(),
                "bird -p refused:\n{config}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("bird is not installed ({e}): scripts/install-deps installs bird2"),
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_speaker_announces_its_subnets_and_only_them() {
        let s = Speaker { session: session() };
        let subnets: Vec<Ipv4Cidr> = ["10.99.0.0/24", "10.98.0.0/24"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let text = s.config(&subnets);
        assert!(text.contains("route 10.99.0.0/24 unreachable; route 10.98.0.0/24 unreachable;"));
        assert!(text.contains("export where proto = \"slr_vips\""));
        assert!(text.contains("import none"));
        assert!(text.contains("neighbor 10.200.1.1 as 65000"));
        assert!(text.contains("hold time 3; keepalive time 1;"));
        assert!(text.contains("bfd on;") && text.contains("min rx interval 100 ms"));
        parses(&text);
        let none = s.config(&[]);
        assert!(!none.contains("route "));
        parses(&none);
    }

    #[test]
    fn a_listener_merges_equal_routes_and_applies_local_preference() {
        let mut sess = session();
        sess.local_as = 65000;
        sess.neighbors = vec![
            Neighbor {
                address: Ipv4Addr::new(10, 200, 1, 2),
                asn: 65001,
            },
            Neighbor {
                address: Ipv4Addr::new(10, 200, 2, 2),
                asn: 65001,
            },
        ];
        sess.bfd = None;
        let l = Listener {
            session: sess,
            local_pref: vec![(Ipv4Addr::new(10, 200, 2, 2), 50)],
        };
        let text = l.config();
        assert!(text.contains("merge paths on"));
        assert!(text.contains("protocol bgp n_10_200_1_2"));
        assert!(text.contains("bgp_local_pref = 100"));
        assert!(text.contains("bgp_local_pref = 50"));
        assert!(!text.contains("bfd"));
        parses(&text);
    }

    #[test]
    fn show_protocols_is_read_with_dates_or_times() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     18:10:57.995  \n\
            slr_vips   Static     master4    up     18:10:57.995  \n\
            n_10_200_1_1 BGP      ---        up     2026-12-05 18:11:02  Established   \n\
            n_10_200_2_1 BGP      ---        start  18:11:02.330  Active        Socket: Connection refused\n";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].name, "n_10_200_1_1");
        assert!(p[2].established());
        assert_eq!(p[3].state, "start");
        assert_eq!(p[3].info, "Active Socket: Connection refused");
        assert!(!p[3].established());
        assert!(!p[1].established());
    }
}
