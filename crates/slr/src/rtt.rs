//! Round-trip times to next hops, measured by the health checks and read by the control
//! thread's cost functions (F13 proximity).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Round-trip times measured by the checks, per next hop name (milliseconds, smoothed).
///
/// A check's TCP handshake goes out through the tunnel (router -> next hop -> ... -> host) and
/// its answer comes straight back from the host, like a client's: its duration is the RTT of the
/// path a flow sent to that next hop takes. The cost functions see it as `rtt` (F13 proximity).
#[derive(Debug, Clone, Default)]
pub struct RttTable(Arc<std::sync::Mutex<HashMap<String, f64>>>);

impl RttTable {
    /// Weight of a new sample in the smoothed value.
    const ALPHA: f64 = 0.5;

    /// Records a check's handshake time.
    pub fn record(&self, name: &str, sample: Duration) {
        let ms = sample.as_secs_f64() * 1e3;
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(name.to_owned()).or_insert(ms);
        *v = Self::ALPHA * ms + (1.0 - Self::ALPHA) * *v;
    }

    /// The smoothed RTT of a next hop, if any check has passed.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }
}
