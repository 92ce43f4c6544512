//! `[bgp]`: the router announces its virtual subnets through BIRD (issue 12).
//!
//! A thread of its own starts BIRD (tied to that thread: `kill -9` of the router takes BIRD
//! down too, and the neighbours withdraw the routes as soon as its sessions close), rewrites
//! BIRD's configuration and reloads it (`birdc configure`) whenever the set of subnets to
//! announce changes, restarts BIRD if it dies (the router keeps forwarding meanwhile), and
//! reads the sessions' states for `slr ctl R status` and the metrics. The packet thread decides
//! what is announced ([`wanted`]): a subnet whose virtual host has a next hop that may take new
//! flows, while the router is not stopping.

use crate::snapshot::{BgpStatus, SessionStatus};
use slr_config::BgpConfig;
use slr_core::router::Router;
use slr_wire::Ipv4Cidr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The subnets a router announces now: those of virtual hosts with a next hop that may take
/// new flows; none while it stops.
pub(super) fn wanted(router: &Router) -> Vec<Ipv4Cidr> {
    if router.is_stopping() {
        return Vec::new();
    }
    let hops = router.next_hops();
    let mut out: Vec<Ipv4Cidr> = router
        .virtual_hosts()
        .iter()
        .filter(|v| {
            v.members
                .iter()
                .any(|&i| hops.get(i).is_some_and(|h| h.eligible()))
        })
        .map(|v| v.config.subnet)
        .collect();
    out.sort_by_key(|c| (c.addr(), c.prefix_len()));
    out.dedup();
    out
}

/// The announcing thread, as the router holds it.
pub(super) struct Announcer {
    wanted: Sender<Vec<Ipv4Cidr>>,
    last_sent: Option<Vec<Ipv4Cidr>>,
    last_check: Instant,
    status: Arc<Mutex<BgpStatus>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcer {
    /// Starts the thread (BIRD starts on it at once, announcing nothing until told).
    pub(super) fn start(cfg: BgpConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| anyhow::anyhow!("[bgp] state_dir {}: {e}", cfg.state_dir.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let status = Arc::new(Mutex::new(BgpStatus::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (status, stop) = (status.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bgp".into())
                .spawn(move || Supervisor::new(cfg, status).run(&rx, &stop))?
        };
        Ok(Announcer {
            wanted: tx,
            last_sent: None,
            last_check: Instant::now() - Duration::from_secs(1),
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// Tells the thread what to announce, if it changed (looked at ten times a second at
    /// most; `now` forces a look, as when a stop begins).
    pub(super) fn follow(&mut self, router: &Router, now: bool) {
        if !now && self.last_check.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_check = Instant::now();
        let w = wanted(router);
        if self.last_sent.as_ref() != Some(&w) {
            let _ = self.wanted.send(w.clone());
            self.last_sent = Some(w);
        }
    }

    /// A copy of the status.
    pub(super) fn status(&self) -> BgpStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's state: BIRD and what it was told.
struct Supervisor {
    cfg: BgpConfig,
    speaker: slr_bgp::Speaker,
    status: Arc<Mutex<BgpStatus>>,
    bird: Option<slr_bgp::Bird>,
    wanted: Vec<Ipv4Cidr>,
    applied: Option<Vec<Ipv4Cidr>>,
    last_start: Option<Instant>,
    last_read: Instant,
}

impl Supervisor {
    fn new(cfg: BgpConfig, status: Arc<Mutex<BgpStatus>>) -> Self {
        let speaker = slr_bgp::Speaker {
            session: slr_bgp::Session {
                router_id: cfg.router_id,
                local_as: cfg.local_as,
                neighbors: cfg
                    .neighbors
                    .iter()
                    .map(|&(address, asn)| slr_bgp::Neighbor { address, asn })
                    .collect(),
                hold_time: cfg.hold_time,
                bfd: cfg.bfd_interval.map(|interval| slr_bgp::Bfd {
                    interval,
                    multiplier: 3,
                }),
            },
        };
        Supervisor {
            cfg,
            speaker,
            status,
            bird: None,
            wanted: Vec::new(),
            applied: None,
            last_start: None,
            last_read: Instant::now(),
        }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("bird.conf")
    }

    fn set(&self, f: impl FnOnce(&mut BgpStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn run(mut self, rx: &Receiver<Vec<Ipv4Cidr>>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            while let Ok(w) = rx.try_recv() {
                self.wanted = w;
            }
            self.keep_bird();
            self.apply();
            if self.last_read.elapsed() >= Duration::from_millis(500) {
                self.read_sessions();
            }
            if let Ok(w) = rx.recv_timeout(Duration::from_millis(100)) {
                self.wanted = w;
            }
        }
        if let Some(mut b) = self.bird.take() {
            b.stop();
        }
        self.set(|s| {
            s.bird_up = false;
            s.bird_pid = None;
        });
    }

    /// Starts BIRD if it is not running (at most once a second), with what is wanted now.
    fn keep_bird(&mut self) {
        if let Some(b) = self.bird.as_mut() {
            let Some(exit) = b.exited() else { return };
            let log = b.log().display().to_string();
            let why = format!("BIRD exited ({exit}); its log: {log}");
            tracing::error!(error = %why, "BGP: the virtual subnets are not announced until BIRD is back; forwarding goes on");
            self.bird = None;
            self.applied = None;
            self.set(|s| {
                s.bird_up = false;
                s.bird_pid = None;
                s.sessions.clear();
                s.last_error = Some(why);
            });
        }
        if self
            .last_start
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let restart = self.last_start.is_some();
        self.last_start = Some(Instant::now());
        if let Err(e) = std::fs::write(self.config_path(), self.speaker.config(&self.wanted)) {
            self.set(|s| {
                s.last_error = Some(format!("writing {}: {e}", self.config_path().display()))
            });
            return;
        }
        let started = slr_bgp::Bird::start(
            &self.cfg.bird,
            &self.cfg.birdc,
            &self.config_path(),
            &self.cfg.state_dir.join("bird.ctl"),
            &self.cfg.state_dir.join("bird.log"),
        );
        match started {
            Ok(b) => {
                let pid = b.pid();
                tracing::info!(
                    pid = ?pid, neighbors = ?self.cfg.neighbors, announced = ?self.wanted,
                    "BGP: BIRD started"
                );
                self.bird = Some(b);
                self.applied = Some(self.wanted.clone());
                let announced = self.wanted.iter().map(ToString::to_string).collect();
                self.set(|s| {
                    s.bird_up = true;
                    s.bird_pid = pid;
                    s.announced = announced;
                    if restart {
                        s.bird_restarts += 1;
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "BGP: BIRD did not start; retrying every second");
                self.set(|s| {
                    s.last_error = Some(e.to_string());
                    if restart {
                        s.bird_restarts += 1;
                    }
                });
            }
        }
    }

    /// Loads the wanted announcements into BIRD if they changed.
    fn apply(&mut self) {
        let Some(b) = &self.bird else { return };
        if self.applied.as_ref() == Some(&self.wanted) {
            return;
        }
        let result = std::fs::write(self.config_path(), self.speaker.config(&self.wanted))
            .map_err(|e| e.to_string())
            .and_then(|()| b.configure().map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                tracing::info!(announced = ?self.wanted, "BGP: announcements changed");
                self.applied = Some(self.wanted.clone());
                let announced = self.wanted.iter().map(ToString::to_string).collect();
                self.set(|s| {
                    s.announced = announced;
                    s.announcement_changes += 1;
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "BGP: BIRD refused the new announcements");
                self.set(|s| s.last_error = Some(e));
            }
        }
    }

    /// Reads the sessions' states.
    fn read_sessions(&mut self) {
        self.last_read = Instant::now();
        let Some(b) = &self.bird else { return };
        match b.protocols() {
            Ok(list) => {
                let sessions = self
                    .cfg
                    .neighbors
                    .iter()
                    .map(|&(address, asn)| {
                        let name = slr_bgp::protocol_name(&slr_bgp::Neighbor { address, asn });
                        let p = list.iter().find(|p| p.name == name);
                        SessionStatus {
                            neighbor: address.to_string(),
                            state: p.map_or("missing".into(), |p| p.state.clone()),
                            info: p.map_or(String::new(), |p| p.info.clone()),
                            established: p.is_some_and(slr_bgp::Protocol::established),
                        }
                    })
                    .collect();
                self.set(|s| {
                    s.bird_up = true;
                    s.sessions = sessions;
                });
            }
            Err(e) => self.set(|s| {
                s.bird_up = false;
                s.last_error = Some(e.to_string());
            }),
        }
    }
}
