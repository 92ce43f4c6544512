//! Health checks through the tunnel, with the VIP inside (MISSION F2, F9; FIELD-NOTES: checks
//! that take another path than the data pass while data is dropped).
//!
//! For each next hop a thread opens a real TCP connection from the router's tunnel source to
//! `VIP:port`, after pinning that exact 5-tuple to the next hop in the core. The SYN therefore
//! enters the router's TUN like client traffic, is tunnelled to that one host, decapsulated by its
//! agent and answered by its server *as the VIP*. A pass proves the whole data path: tunnel,
//! trust domain, AnyIP, the server, and the direct return path.
//!
//! `count` consecutive failures mark a next hop down (no new flows; its flows continue), `count`
//! consecutive passes mark it up again. With a check every `interval` and a `timeout` below the
//! interval, a host that stops answering leaves selection within `interval x count + timeout`,
//! which is within `interval x count + 1 s` for any timeout up to 1 s.

use crate::mailbox::Handle;
use crate::rtt::RttTable;
use slr_config::{HealthConfig, RouterDaemonConfig};
use slr_core::flow_table::FlowKey;
use slr_core::router::Control;
use slr_io::{Clock, MonotonicClock};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Checker {
    address: Ipv4Addr,
    vip: Ipv4Addr,
    config: HealthConfig,
    stop: Arc<AtomicBool>,
}

/// Starts, stops and updates one checker thread per next hop.
pub struct HealthSupervisor {
    handle: Handle,
    source: Ipv4Addr,
    checkers: HashMap<String, Checker>,
    rtt: RttTable,
}

impl HealthSupervisor {
    /// No checkers yet.
    pub fn new(handle: Handle, source: Ipv4Addr) -> Self {
        HealthSupervisor {
            handle,
            source,
            checkers: HashMap::new(),
            rtt: RttTable::default(),
        }
    }

    /// The RTTs the checks measure.
    pub fn rtt(&self) -> RttTable {
        self.rtt.clone()
    }

    /// Makes the set of checkers match the configuration.
    pub fn update(&mut self, cfg: &RouterDaemonConfig) {
        let mut wanted = HashMap::new();
        if cfg.health.enabled {
            for n in &cfg.core.next_hops {
                let vip = cfg.health.address.or_else(|| {
                    cfg.core
                        .virtual_hosts
                        .iter()
                        .find(|v| v.next_hops.is_empty() || v.next_hops.contains(&n.name))
                        .map(|v| first_address(v.subnet))
                });
                if let Some(vip) = vip {
                    wanted.insert(n.name.clone(), (n.address, vip));
                }
            }
        }
        self.checkers.retain(|name, c| {
            let keep = wanted.get(name) == Some(&(c.address, c.vip)) && c.config == cfg.health;
            if !keep {
                c.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (name, (address, vip)) in wanted {
            if self.checkers.contains_key(&name) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let c = Checker {
                address,
                vip,
                config: cfg.health.clone(),
                stop: stop.clone(),
            };
            let (handle, source, config) = (self.handle.clone(), self.source, cfg.health.clone());
            let n = name.clone();
            let rtt = self.rtt.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("health-{name}"))
                .spawn(move || check_loop(handle, n, source, vip, config, stop, rtt));
            if let Err(e) = spawned {
                tracing::error!("cannot start health checker for {name}: {e}");
                continue;
            }
            self.checkers.insert(name, c);
        }
    }

    /// Stops every checker.
    pub fn stop_all(&mut self) {
        for c in self.checkers.values() {
            c.stop.store(true, Ordering::Relaxed);
        }
        self.checkers.clear();
    }
}

/// The first usable address of a subnet (the network address itself for a /31 or /32).
pub fn first_address(subnet: slr_wire::Ipv4Cidr) -> Ipv4Addr {
    if subnet.prefix_len() >= 31 {
        subnet.addr()
    } else {
        Ipv4Addr::from(u32::from(subnet.addr()) + 1)
    }
}

/// What one check result asks of the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
enum Verdict {
    /// The result agrees with the state; a streak of differing results, if any, is over.
    Agrees,
    /// The result differs from the state, `streak` times in a row, not yet `count` times.
    Differs {
        /// Consecutive differing results so far.
        streak: u32,
    },
    /// `count` failures in a row: tell the core the next hop is down.
    MarkDown,
    /// `count` passes in a row: tell the core the next hop is up.
    MarkUp,
}

/// The count/interval logic of one next hop's checks, with no thread, socket or clock: fed the
/// time a check started and whether it passed, it answers what to tell the core and when the
/// next check is due. `check_loop` is the shell around it; the tests drive it by hand.
#[derive(Debug, Clone)]
struct HealthState {
    /// What the core has been told (or, at start, believes).
    up: bool,
    /// Consecutive results that differ from `up`.
    streak: u32,
    /// When the next check should start.
    next_due: Instant,
    interval: Duration,
    count: u32,
}

impl HealthState {
    /// A next hop the core holds `up` (or not), with a first check due at once.
    fn new(now: Instant, up: bool, interval: Duration, count: u32) -> Self {
        HealthState {
            up,
            streak: 0,
            next_due: now,
            interval,
            count,
        }
    }

    /// When the next check should start.
    fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Takes the result of a check started at `started` (when it was due, or later).
    ///
    /// The next check is due one interval after this one was: a late check keeps the phase
    /// instead of drifting, but after a stall of more than an interval the schedule restarts
    /// from `started` rather than firing the missed checks in a burst. `count` differing
    /// results in a row flip the state (a `count` of 0 acts like 1).
    fn handle_check(&mut self, started: Instant, passed: bool) -> Verdict {
        self.next_due += self.interval;
        if self.next_due < started {
            self.next_due = started + self.interval;
        }
        if passed == self.up {
            self.streak = 0;
            return Verdict::Agrees;
        }
        self.streak += 1;
        if self.streak < self.count {
            return Verdict::Differs {
                streak: self.streak,
            };
        }
        self.up = passed;
        self.streak = 0;
        if passed {
            Verdict::MarkUp
        } else {
            Verdict::MarkDown
        }
    }
}

/// Records the handshake time of a passing check; a failing one measured nothing.
fn record_rtt<E>(rtt: &RttTable, name: &str, result: &Result<Duration, E>) {
    if let Ok(sample) = result {
        rtt.record(name, *sample);
    }
}

/// One next hop's checker thread: sleeps until the next check is due, runs it and tells the
/// core what [`HealthState`] decides.
fn check_loop(
    handle: Handle,
    name: String,
    source: Ipv4Addr,
    vip: Ipv4Addr,
    cfg: HealthConfig,
    stop: Arc<AtomicBool>,
    rtt: RttTable,
) {
    let clock = MonotonicClock;
    // Start from what the core believes (a checker restarted by a reload must not assume a
    // next hop is up that the core holds down, or it would never tell the core otherwise).
    let up = handle
        .snapshot()
        .ok()
        .and_then(|s| {
            s.next_hops
                .iter()
                .find(|n| n.name == name && n.configured)
                .map(|n| n.available)
        })
        .unwrap_or(true);
    let mut state = HealthState::new(clock.now(), up, cfg.interval, cfg.count);
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        let wait = state.next_due().saturating_duration_since(now);
        if !wait.is_zero() {
            // In short steps, so that a stop is noticed soon.
            std::thread::sleep(wait.min(Duration::from_millis(100)));
            continue;
        }
        let result = check_once(&handle, &name, source, vip, &cfg);
        record_rtt(&rtt, &name, &result);
        let available = match state.handle_check(now, result.is_ok()) {
            Verdict::Agrees => continue,
            Verdict::Differs { streak } => {
                tracing::debug!(next_hop = %name, passed = result.is_ok(), streak, "health check result differs from state: {result:?}");
                continue;
            }
            Verdict::MarkUp => {
                tracing::info!(next_hop = %name, "health check passing: next hop up");
                true
            }
            Verdict::MarkDown => {
                let e = result.err().unwrap_or_default();
                tracing::warn!(next_hop = %name, "health check failing ({e}): next hop down");
                false
            }
        };
        if let Err(e) = handle.control(Control::SetAvailable {
            next_hop: name.clone(),
            available,
        }) {
            tracing::error!(next_hop = %name, "cannot update health: {e:#}");
        }
    }
}

fn check_once(
    handle: &Handle,
    name: &str,
    source: Ipv4Addr,
    vip: Ipv4Addr,
    cfg: &HealthConfig,
) -> Result<Duration, String> {
    let deadline = Instant::now() + cfg.timeout;
    let sock =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    sock.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket_ipv4())
        .ok_or("no local address")?;
    let key = FlowKey {
        src_addr: source,
        dst_addr: vip,
        src_port: local.port(),
        dst_port: cfg.port,
        protocol: 6,
    };
    // Pin before the SYN exists, so that the probe reaches exactly this next hop.
    handle
        .control(Control::PinFlow {
            key,
            next_hop: name.to_string(),
        })
        .map_err(|e| format!("pin: {e:#}"))?;
    let target = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(vip, cfg.port)));
    let started = Instant::now();
    sock.connect_timeout(&target, cfg.timeout)
        .map_err(|e| format!("connect {vip}:{}: {e}", cfg.port))?;
    let handshake = started.elapsed();
    if !cfg.http {
        return Ok(handshake);
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    sock.set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let mut s: std::net::TcpStream = sock.into();
    write!(
        s,
        "GET {} HTTP/1.0\r\nHost: {vip}\r\nUser-Agent: slr-health\r\n\r\n",
        cfg.path
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    if line.starts_with("HTTP/1.") && line.as_bytes().get(9) == Some(&b'2') {
        Ok(handshake)
    } else {
        Err(format!("unexpected answer {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slr_io::ManualClock;

    const INTERVAL: Duration = Duration::from_secs(1);

    /// A machine for a next hop the core holds `up`, started at the clock's time.
    fn machine(clock: &ManualClock, up: bool, count: u32) -> HealthState {
        HealthState::new(clock.now(), up, INTERVAL, count)
    }

    /// What the shell does for one check: sleeps until it is due (here: jumps the clock there),
    /// then feeds in the result of a check started at that time.
    fn check_when_due(clock: &ManualClock, state: &mut HealthState, passed: bool) -> Verdict {
        clock.advance(state.next_due().saturating_duration_since(clock.now()));
        state.handle_check(clock.now(), passed)
    }

    #[test]
    fn fails_count_times_goes_down_at_the_count_th_failure_and_not_before() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let mut state = machine(&clock, true, 3);
        assert_eq!(state.next_due(), t0, "the first check is due at once");
        for streak in 1..3 {
            assert_eq!(
                check_when_due(&clock, &mut state, false),
                Verdict::Differs { streak }
            );
            assert!(state.up);
            assert_eq!(clock.now() - t0, INTERVAL * (streak - 1));
            assert_eq!(state.next_due() - t0, INTERVAL * streak);
        }
        assert_eq!(check_when_due(&clock, &mut state, false), Verdict::MarkDown);
        assert!(!state.up);
        assert_eq!(
            clock.now() - t0,
            INTERVAL * 2,
            "third failure, two intervals in"
        );
        // Further failures agree with the new state: the core is told once.
        for _ in 0..5 {
            assert_eq!(check_when_due(&clock, &mut state, false), Verdict::Agrees);
        }
    }

    #[test]
    fn passes_count_times_after_going_down_comes_back_up() {
        let clock = ManualClock::new();
        let mut state = machine(&clock, true, 3);
        for _ in 0..2 {
            let _ = check_when_due(&clock, &mut state, false);
        }
        assert_eq!(check_when_due(&clock, &mut state, false), Verdict::MarkDown);
        let down_at = clock.now();
        for streak in 1..3 {
            assert_eq!(
                check_when_due(&clock, &mut state, true),
                Verdict::Differs { streak }
            );
            assert!(!state.up);
        }
        assert_eq!(check_when_due(&clock, &mut state, true), Verdict::MarkUp);
        assert!(state.up);
        assert_eq!(clock.now() - down_at, INTERVAL * 3);
        assert_eq!(check_when_due(&clock, &mut state, true), Verdict::Agrees);
    }

    #[test]
    fn a_restarted_checker_starts_from_what_the_core_believes() {
        let clock = ManualClock::new();
        let mut state = machine(&clock, false, 2);
        // A next hop the core holds down: failures agree, passes bring it up.
        assert_eq!(check_when_due(&clock, &mut state, false), Verdict::Agrees);
        assert_eq!(
            check_when_due(&clock, &mut state, true),
            Verdict::Differs { streak: 1 }
        );
        assert_eq!(check_when_due(&clock, &mut state, true), Verdict::MarkUp);
    }

    #[test]
    fn a_flapping_next_hop_never_changes_state() {
        for count in 2..5 {
            for up in [true, false] {
                let clock = ManualClock::new();
                let mut state = machine(&clock, up, count);
                for i in 0..100 {
                    let passed = (i % 2 == 0) != up; // starts with a differing result
                    let verdict = check_when_due(&clock, &mut state, passed);
                    assert!(
                        matches!(verdict, Verdict::Agrees | Verdict::Differs { streak: 1 }),
                        "count {count}, up {up}, check {i}: {verdict:?}"
                    );
                    assert_eq!(state.up, up);
                }
            }
        }
    }

    #[test]
    fn a_pass_interrupts_a_failure_streak_and_counting_restarts() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let mut state = machine(&clock, true, 3);
        let _ = check_when_due(&clock, &mut state, false);
        assert_eq!(
            check_when_due(&clock, &mut state, false),
            Verdict::Differs { streak: 2 }
        );
        assert_eq!(check_when_due(&clock, &mut state, true), Verdict::Agrees);
        assert_eq!(
            check_when_due(&clock, &mut state, false),
            Verdict::Differs { streak: 1 }
        );
        assert_eq!(
            check_when_due(&clock, &mut state, false),
            Verdict::Differs { streak: 2 }
        );
        assert_eq!(check_when_due(&clock, &mut state, false), Verdict::MarkDown);
        assert_eq!(clock.now() - t0, INTERVAL * 5, "the sixth check");
    }

    #[test]
    fn with_count_one_every_differing_result_flips_and_zero_acts_like_one() {
        for count in [0, 1] {
            let clock = ManualClock::new();
            let mut state = machine(&clock, true, count);
            let script = [
                (false, Verdict::MarkDown),
                (false, Verdict::Agrees),
                (true, Verdict::MarkUp),
                (true, Verdict::Agrees),
                (false, Verdict::MarkDown),
                (true, Verdict::MarkUp),
            ];
            for (i, (passed, want)) in script.into_iter().enumerate() {
                assert_eq!(
                    check_when_due(&clock, &mut state, passed),
                    want,
                    "count {count}, check {i}"
                );
            }
        }
    }

    #[test]
    fn a_late_check_keeps_the_phase() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let mut state = machine(&clock, true, 3);
        let _ = check_when_due(&clock, &mut state, true);
        // Due at t0 + 1 s, but the thread only got to it 400 ms later.
        clock.advance(INTERVAL + Duration::from_millis(400));
        let _ = state.handle_check(clock.now(), true);
        assert_eq!(state.next_due() - t0, INTERVAL * 2);
    }

    #[test]
    fn after_a_long_stall_the_schedule_restarts_from_now_without_a_burst() {
        let clock = ManualClock::new();
        let mut state = machine(&clock, true, 3);
        let _ = check_when_due(&clock, &mut state, true);
        // Ten and a bit intervals pass without a check (a stalled thread, a suspended host).
        clock.advance(INTERVAL * 10 + Duration::from_millis(300));
        let stalled = clock.now();
        assert!(state.next_due() < stalled);
        let _ = state.handle_check(stalled, true);
        assert_eq!(
            state.next_due(),
            stalled + INTERVAL,
            "no missed check to catch up"
        );
        // From there, one check per interval again.
        for k in 1..5 {
            let _ = check_when_due(&clock, &mut state, true);
            assert_eq!(clock.now() - stalled, INTERVAL * k);
        }
    }

    /// Runs the checks of one next hop whose host stops answering at `stop`: a check started
    /// before then passes after a 2 ms handshake, one started later fails after the whole
    /// `timeout` (the slowest failure, an unanswered SYN). Returns how long after `stop` the
    /// core is told the next hop is down.
    fn time_to_leave_selection(
        interval: Duration,
        timeout: Duration,
        count: u32,
        stop: Duration,
    ) -> Duration {
        let clock = ManualClock::new();
        let stop = clock.now() + stop;
        let mut state = HealthState::new(clock.now(), true, interval, count);
        for _ in 0..1000 {
            clock.advance(state.next_due().saturating_duration_since(clock.now()));
            let started = clock.now();
            let passed = started < stop;
            clock.advance(if passed {
                Duration::from_millis(2)
            } else {
                timeout
            });
            if state.handle_check(started, passed) == Verdict::MarkDown {
                return clock.now() - stop;
            }
        }
        panic!("never marked down");
    }

    #[test]
    fn a_host_that_stops_answering_leaves_selection_within_interval_times_count_plus_timeout() {
        let ms = Duration::from_millis;
        for (interval, timeout, count) in [
            (ms(1000), ms(500), 3),
            (ms(1000), ms(999), 1),
            (ms(2000), ms(1000), 5),
            (ms(100), ms(50), 2),
        ] {
            let bound = interval * count + timeout;
            let mut worst = Duration::ZERO;
            // The host stops a few intervals in, at every phase of the check schedule.
            for step in 0..=20 {
                let stop = interval * 3 + interval * step / 20 + ms(1);
                let took = time_to_leave_selection(interval, timeout, count, stop);
                assert!(
                    took <= bound,
                    "{interval:?} x {count} + {timeout:?}: stop at {stop:?} took {took:?}"
                );
                worst = worst.max(took);
            }
            // The worst case (stopping just after a check started) comes within 1 ms of it.
            assert_eq!(worst, bound - ms(1), "{interval:?} x {count} + {timeout:?}");
            // The module doc's looser form, for timeouts up to 1 s.
            assert!(worst <= interval * count + Duration::from_secs(1));
        }
    }

    #[test]
    fn rtt_is_recorded_for_passes_only_and_smoothed() {
        let rtt = RttTable::default();
        let failed: Result<Duration, String> = Err("connect: timed out".into());
        record_rtt(&rtt, "a", &failed);
        assert_eq!(rtt.get("a"), None);
        record_rtt::<String>(&rtt, "a", &Ok(Duration::from_millis(10)));
        assert_eq!(rtt.get("a"), Some(10.0), "the first sample is taken as is");
        record_rtt::<String>(&rtt, "a", &Ok(Duration::from_millis(20)));
        assert_eq!(rtt.get("a"), Some(15.0), "then half old, half new");
        record_rtt(&rtt, "a", &failed);
        assert_eq!(rtt.get("a"), Some(15.0));
        assert_eq!(rtt.get("b"), None);
    }
}
