//! Loss, delay and reordering in front of any device (the kernel here has no netem).

use crate::clock::{Clock, MonotonicClock};
use crate::{DeviceStats, PacketDevice};
use slr_wire::buf::DEFAULT_HEADROOM;
use slr_wire::PacketBuf;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A tiny seeded PRNG (xorshift64*), so that fault injection repeats exactly for a seed.
///
/// Not for anything that needs unpredictability; it never touches OS randomness.
#[derive(Debug, Clone)]
pub struct Xorshift64 {
    state: u64,
}

impl Xorshift64 {
    /// A generator for `seed`. Seeds are mixed first (splitmix64), so nearby seeds give unrelated
    /// sequences, and seed 0 is as good as any other.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Xorshift64 {
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (no draw when `p` is 0).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}

/// A fault-injection setting that makes no sense.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    /// A probability outside `0.0..=1.0` (or NaN).
    #[error("probability {0} is not within 0..=1")]
    BadProbability(f64),
}

fn check_probability(p: f64) -> Result<f64, FaultConfigError> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(FaultConfigError::BadProbability(p))
    }
}

/// What a [`FaultInjector`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Packets dropped on send, by the drop probability.
    pub send_dropped: u64,
    /// Packets dropped on receive, by the drop probability.
    pub recv_dropped: u64,
    /// Packets held back on send (delayed, reordered or both).
    pub delayed: u64,
    /// Of those, packets given the extra reordering delay.
    pub reordered: u64,
    /// Packets dropped on send because the hold queue was full.
    pub overflow_dropped: u64,
    /// Held packets handed to the inner device after their delay.
    pub released: u64,
}

/// A packet held back until `due`; `seq` keeps packets with the same due time in send order.
#[derive(Debug)]
struct Held {
    due: Instant,
    seq: u64,
    buf: PacketBuf,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed, so that the max-heap pops the earliest packet first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// What happens to one packet given to `send_batch`.
enum SendFate {
    Pass,
    Drop,
    Hold(Duration),
}

/// Held packets handed to the inner device per call.
const RELEASE_BATCH: usize = 64;

/// Spare buffers kept for held packets.
const MAX_SPARE: usize = 1024;

/// A device wrapper that drops, delays and reorders packets, deterministically for a seed.
///
/// - **Loss**: each sent packet is dropped with probability [`FaultInjector::set_send_drop`],
///   each received one with [`FaultInjector::set_recv_drop`].
/// - **Delay**: each sent packet is copied and held for [`FaultInjector::set_send_delay`], then
///   handed to the inner device. Nothing runs by itself: held packets leave on the next
///   `send_batch`, `recv_batch` or [`FaultInjector::flush_due`] at or after their due time, so a
///   driver polls with a timeout until [`FaultInjector::next_due`].
/// - **Reordering**: with probability `p` a sent packet is held for an extra delay
///   ([`FaultInjector::set_reorder`]), so that later packets overtake it.
///
/// Time comes from a [`Clock`]: [`MonotonicClock`] in a daemon, a [`crate::ManualClock`] in tests
/// and the simulator. Given the seed, the settings and the same sequence of calls, results and
/// inner device, the same packets are dropped and delayed. The hold queue is bounded
/// ([`FaultInjector::set_max_held`]); a packet that finds it full is dropped and counted, like a
/// full qdisc. Delayed packets wait in the queue if the inner device is full.
#[derive(Debug)]
pub struct FaultInjector<D, C = MonotonicClock> {
    inner: D,
    clock: C,
    rng: Xorshift64,
    send_drop: f64,
    recv_drop: f64,
    send_delay: Duration,
    reorder: f64,
    reorder_delay: Duration,
    max_held: usize,
    held: BinaryHeap<Held>,
    next_seq: u64,
    spare: Vec<PacketBuf>,
    staging: Vec<PacketBuf>,
    staging_keys: Vec<(Instant, u64)>,
    stats: FaultStats,
}

impl<D: PacketDevice> FaultInjector<D> {
    /// Wraps `inner` with no faults yet, on the system clock.
    pub fn new(inner: D, seed: u64) -> Self {
        Self::with_clock(inner, seed, MonotonicClock)
    }
}

impl<D: PacketDevice, C: Clock> FaultInjector<D, C> {
    /// Wraps `inner` with no faults yet, taking time from `clock`.
    pub fn with_clock(inner: D, seed: u64, clock: C) -> Self {
        FaultInjector {
            inner,
            clock,
            rng: Xorshift64::new(seed),
            send_drop: 0.0,
            recv_drop: 0.0,
            send_delay: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            max_held: 65_536,
            held: BinaryHeap::new(),
            next_seq: 0,
            spare: Vec::new(),
            staging: Vec::with_capacity(RELEASE_BATCH),
            staging_keys: Vec::with_capacity(RELEASE_BATCH),
            stats: FaultStats::default(),
        }
    }

    /// Sets the probability that a sent packet is dropped.
    pub fn set_send_drop(&mut self, p: f64) -> Result<(), FaultConfigError> {
        self.send_drop = check_probability(p)?;
        Ok(())
    }

    /// Sets the probability that a received packet is dropped.
    pub fn set_recv_drop(&mut self, p: f64) -> Result<(), FaultConfigError> {
        self.recv_drop = check_probability(p)?;
        Ok(())
    }

    /// Sets the delay every sent packet gets (zero: none, packets go straight through).
    pub fn set_send_delay(&mut self, d: Duration) {
        self.send_delay = d;
    }

    /// Gives a sent packet, with probability `p`, `extra` delay on top of the send delay.
    pub fn set_reorder(&mut self, p: f64, extra: Duration) -> Result<(), FaultConfigError> {
        self.reorder = check_probability(p)?;
        self.reorder_delay = extra;
        Ok(())
    }

    /// Bounds the number of held packets (65536 by default).
    pub fn set_max_held(&mut self, n: usize) {
        self.max_held = n;
    }

    /// What the injector did so far. The inner device's own counters are in
    /// [`PacketDevice::stats`].
    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// When the earliest held packet may leave, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.due)
    }

    /// Packets held now.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutable (sending through it bypasses the faults).
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Unwraps the device; held packets are lost.
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// Hands every held packet whose time has come to the inner device, earliest first; returns
    /// how many it consumed. Packets the inner device has no room for stay held.
    pub fn flush_due(&mut self) -> io::Result<usize> {
        let now = self.clock.now();
        let mut released = 0;
        loop {
            self.staging.clear();
            self.staging_keys.clear();
            while self.staging.len() < RELEASE_BATCH
                && self.held.peek().is_some_and(|h| h.due <= now)
            {
                let Some(h) = self.held.pop() else { break };
                self.staging.push(h.buf);
                self.staging_keys.push((h.due, h.seq));
            }
            if self.staging.is_empty() {
                return Ok(released);
            }
            let batch = self.staging.len();
            let sent = self.inner.send_batch(&self.staging);
            let n = *sent.as_ref().unwrap_or(&0);
            for (i, (buf, (due, seq))) in self
                .staging
                .drain(..)
                .zip(self.staging_keys.drain(..))
                .enumerate()
            {
                if i < n {
                    if self.spare.len() < MAX_SPARE {
                        self.spare.push(buf);
                    }
                } else {
                    self.held.push(Held { due, seq, buf });
                }
            }
            released += n;
            self.stats.released += n as u64;
            match sent {
                Err(e) if released == 0 => return Err(e),
                Err(_) => return Ok(released),
                Ok(n) if n < batch => return Ok(released),
                Ok(_) => {}
            }
        }
    }

    fn decide_send(&mut self) -> SendFate {
        if self.rng.chance(self.send_drop) {
            return SendFate::Drop;
        }
        let mut delay = self.send_delay;
        let reorder = self.rng.chance(self.reorder);
        if reorder {
            delay += self.reorder_delay;
        }
        if delay.is_zero() {
            SendFate::Pass
        } else {
            if reorder {
                self.stats.reordered += 1;
            }
            SendFate::Hold(delay)
        }
    }

    fn hold(&mut self, pkt: &PacketBuf, delay: Duration) {
        if self.held.len() >= self.max_held {
            self.stats.overflow_dropped += 1;
            return;
        }
        let mut buf = match self.spare.pop() {
            Some(mut b) => {
                b.reset(DEFAULT_HEADROOM);
                if b.read_slot().len() >= pkt.len() {
                    b
                } else {
                    PacketBuf::new(pkt.len())
                }
            }
            None => PacketBuf::new(pkt.len().max(2048)),
        };
        buf.read_slot()[..pkt.len()].copy_from_slice(pkt.as_ref());
        buf.set_len(pkt.len());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held.push(Held {
            due: self.clock.now() + delay,
            seq,
            buf,
        });
        self.stats.delayed += 1;
    }
}

impl<D: PacketDevice, C: Clock> PacketDevice for FaultInjector<D, C> {
    /// Releases due held packets (an error doing so is left for the next send), then receives
    /// from the inner device and drops packets by the receive drop probability. Returns 0 only
    /// when the inner device had nothing left, not because everything it had was dropped.
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let _ = self.flush_due();
        loop {
            let n = self.inner.recv_batch(bufs)?;
            let mut kept = 0;
            for j in 0..n {
                if self.rng.chance(self.recv_drop) {
                    self.stats.recv_dropped += 1;
                } else {
                    bufs.swap(kept, j);
                    kept += 1;
                }
            }
            if kept > 0 || n < bufs.len() {
                return Ok(kept);
            }
        }
    }

    /// Releases due held packets, then decides each packet's fate in order: dropped, held, or
    /// passed straight to the inner device (in runs, without a copy). Returns how many of `pkts`
    /// were consumed, as [`PacketDevice::send_batch`] says; what the inner device expects is what
    /// this one expects.
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        self.flush_due()?;
        let mut run_start = 0;
        for i in 0..=pkts.len() {
            let fate = if i < pkts.len() {
                self.decide_send()
            } else {
                SendFate::Drop
            };
            if matches!(fate, SendFate::Pass) {
                continue;
            }
            if run_start < i {
                match self.inner.send_batch(&pkts[run_start..i]) {
                    Ok(n) if n < i - run_start => return Ok(run_start + n),
                    Ok(_) => {}
                    Err(_) if run_start > 0 => return Ok(run_start),
                    Err(e) => return Err(e),
                }
            }
            if i == pkts.len() {
                break;
            }
            match fate {
                SendFate::Drop => self.stats.send_dropped += 1,
                SendFate::Hold(d) => self.hold(&pkts[i], d),
                SendFate::Pass => unreachable!("passed packets continue the run"),
            }
            run_start = i + 1;
        }
        Ok(pkts.len())
    }

    fn fd(&self) -> RawFd {
        self.inner.fd()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MemoryDevice};

    fn packet(tag: u16) -> PacketBuf {
        let mut v = vec![0u8; 28];
        slr_wire::Ipv4Repr {
            src_addr: [10, 0, 0, 1].into(),
            dst_addr: [10, 0, 0, 2].into(),
            protocol: slr_wire::Protocol::Udp,
            payload_len: 8,
            ttl: 64,
            tos: 0,
            ident: tag,
            dont_frag: false,
        }
        .emit(&mut v);
        PacketBuf::from_slice(&v)
    }

    fn tag(bytes: &[u8]) -> u16 {
        u16::from_be_bytes([bytes[4], bytes[5]])
    }

    fn sent_tags(dev: &mut MemoryDevice) -> Vec<u16> {
        std::iter::from_fn(|| dev.pop_tx())
            .map(|p| tag(&p))
            .collect()
    }

    #[test]
    fn xorshift_is_deterministic_and_roughly_uniform() {
        let a: Vec<u64> = {
            let mut r = Xorshift64::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Xorshift64::new(7);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(Xorshift64::new(0).next_u64(), Xorshift64::new(1).next_u64());
        let mut r = Xorshift64::new(0);
        let mean = (0..100_000).map(|_| r.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!(!Xorshift64::new(3).chance(0.0));
        assert!(Xorshift64::new(3).chance(1.0));
    }

    #[test]
    fn half_of_ten_thousand_sends_are_dropped_the_same_way_for_a_seed() {
        let run = |seed| {
            let mut f = FaultInjector::new(MemoryDevice::new("mem"), seed);
            f.set_send_drop(0.5).unwrap();
            let pkts: Vec<PacketBuf> = (0..10_000u16).map(packet).collect();
            for chunk in pkts.chunks(100) {
                assert_eq!(f.send_batch(chunk).unwrap(), chunk.len());
            }
            let stats = f.fault_stats();
            (sent_tags(f.inner_mut()), stats)
        };
        let (kept, stats) = run(42);
        assert_eq!(kept.len() as u64 + stats.send_dropped, 10_000);
        assert!((4_700..=5_300).contains(&kept.len()), "kept {}", kept.len());
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "order kept");
        assert_eq!(run(42).0, kept, "same seed, same drops");
        assert_ne!(run(43).0, kept, "another seed, other drops");
    }

    #[test]
    fn receive_drops_follow_the_probability() {
        let mut dev = MemoryDevice::new("mem");
        for i in 0..10_000u16 {
            dev.push_rx(packet(i).as_ref());
        }
        let mut f = FaultInjector::new(dev, 1);
        f.set_recv_drop(0.5).unwrap();
        let mut bufs: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::new(2048)).collect();
        let mut got = Vec::new();
        loop {
            bufs.iter_mut().for_each(|b| b.reset(DEFAULT_HEADROOM));
            let n = f.recv_batch(&mut bufs).unwrap();
            if n == 0 {
                break;
            }
            got.extend(bufs[..n].iter().map(|b| tag(b.as_ref())));
        }
        assert!((4_700..=5_300).contains(&got.len()), "kept {}", got.len());
        assert_eq!(got.len() as u64 + f.fault_stats().recv_dropped, 10_000);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept");
        assert_eq!(f.inner().rx_len(), 0);
    }

    #[test]
    fn delay_holds_packets_until_due() {
        let clock = ManualClock::new();
        let mut f = FaultInjector::with_clock(MemoryDevice::new("mem"), 5, clock.clone());
        f.set_send_delay(Duration::from_millis(10));
        let t0 = clock.now();
        assert_eq!(f.send_batch(&[packet(1), packet(2), packet(3)]).unwrap(), 3);
        assert_eq!(f.inner().tx_len(), 0);
        assert_eq!(f.next_due(), Some(t0 + Duration::from_millis(10)));
        clock.advance(Duration::from_millis(4));
        assert_eq!(f.send_batch(&[packet(4)]).unwrap(), 1);
        clock.advance(Duration::from_millis(5));
        assert_eq!(f.flush_due().unwrap(), 0);
        assert_eq!(f.inner().tx_len(), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(f.flush_due().unwrap(), 3);
        assert_eq!(sent_tags(f.inner_mut()), [1, 2, 3]);
        assert_eq!(f.next_due(), Some(t0 + Duration::from_millis(14)));
        clock.advance(Duration::from_millis(4));
        // A receive call releases due packets too.
        assert_eq!(f.recv_batch(&mut [PacketBuf::new(100)]).unwrap(), 0);
        assert_eq!(sent_tags(f.inner_mut()), [4]);
        assert_eq!(f.next_due(), None);
        let s = f.fault_stats();
        assert_eq!((s.delayed, s.released, s.send_dropped), (4, 4, 0));
    }

    #[test]
    fn held_packets_wait_for_a_full_inner_device() {
        let clock = ManualClock::new();
        let mut dev = MemoryDevice::new("mem");
        dev.set_tx_capacity(Some(2));
        let mut f = FaultInjector::with_clock(dev, 5, clock.clone());
        f.set_send_delay(Duration::from_millis(1));
        let pkts: Vec<PacketBuf> = (0..5).map(packet).collect();
        assert_eq!(f.send_batch(&pkts).unwrap(), 5);
        clock.advance(Duration::from_millis(1));
        assert_eq!(f.flush_due().unwrap(), 2);
        assert_eq!(f.held_len(), 3);
        assert_eq!(sent_tags(f.inner_mut()), [0, 1]);
        assert_eq!(f.flush_due().unwrap(), 2);
        assert_eq!(sent_tags(f.inner_mut()), [2, 3]);
        assert_eq!(f.flush_due().unwrap(), 1);
        assert_eq!(sent_tags(f.inner_mut()), [4]);
    }

    #[test]
    fn pass_through_stops_at_a_full_inner_device() {
        let mut dev = MemoryDevice::new("mem");
        dev.set_tx_capacity(Some(3));
        let mut f = FaultInjector::new(dev, 5);
        let pkts: Vec<PacketBuf> = (0..5).map(packet).collect();
        assert_eq!(f.send_batch(&pkts).unwrap(), 3);
        assert_eq!(sent_tags(f.inner_mut()), [0, 1, 2]);
        assert_eq!(f.send_batch(&pkts[3..]).unwrap(), 2);
        assert_eq!(sent_tags(f.inner_mut()), [3, 4]);
    }

    #[test]
    fn reordering_lets_later_packets_overtake() {
        let clock = ManualClock::new();
        let mut f = FaultInjector::with_clock(MemoryDevice::new("mem"), 9, clock.clone());
        f.set_reorder(0.3, Duration::from_millis(5)).unwrap();
        let pkts: Vec<PacketBuf> = (0..100).map(packet).collect();
        assert_eq!(f.send_batch(&pkts).unwrap(), 100);
        let first = sent_tags(f.inner_mut());
        clock.advance(Duration::from_millis(5));
        f.flush_due().unwrap();
        let late = sent_tags(f.inner_mut());
        assert_eq!(late.len() as u64, f.fault_stats().reordered);
        assert!((15..=45).contains(&late.len()), "reordered {}", late.len());
        assert!(
            late.windows(2).all(|w| w[0] < w[1]),
            "held ones leave in send order"
        );
        let mut all: Vec<u16> = first.iter().chain(&late).copied().collect();
        assert_ne!(all, (0..100).collect::<Vec<_>>());
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn full_hold_queue_drops_and_bad_settings_are_refused() {
        let mut f = FaultInjector::new(MemoryDevice::new("mem"), 5);
        f.set_send_delay(Duration::from_secs(60));
        f.set_max_held(2);
        let pkts: Vec<PacketBuf> = (0..5).map(packet).collect();
        assert_eq!(f.send_batch(&pkts).unwrap(), 5);
        assert_eq!((f.held_len(), f.fault_stats().overflow_dropped), (2, 3));
        assert_eq!(
            f.set_send_drop(1.5),
            Err(FaultConfigError::BadProbability(1.5))
        );
        assert!(f.set_recv_drop(f64::NAN).is_err());
        assert!(f.set_reorder(-0.1, Duration::ZERO).is_err());
    }
}
