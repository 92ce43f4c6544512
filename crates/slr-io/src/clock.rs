//! Where the wrapper devices get the time from.
//!
//! The routing core takes time as an argument; the wrapper devices here need it too (when may a
//! delayed packet leave, what timestamp goes into a capture), so they take a [`Clock`]: the real
//! one in the daemon, a [`ManualClock`] that tests and the simulator move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source of the current time.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock (`Instant::now()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until moved; clones share the same time, so a test keeps one
/// handle and gives another to the device.
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    elapsed_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading the current time, frozen there.
    pub fn new() -> Self {
        ManualClock {
            base: Instant::now(),
            elapsed_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the time forward by `d` (saturating after some 584 years).
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .elapsed_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(d))
            });
    }

    /// Time moved forward since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::new();
        let d = c.clone();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        d.advance(Duration::from_millis(5));
        assert_eq!(c.now() - t0, Duration::from_millis(5));
        assert_eq!(c.elapsed(), Duration::from_millis(5));
    }
}
