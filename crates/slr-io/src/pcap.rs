//! Capturing what passes through a device into a pcap file.

use crate::clock::{Clock, MonotonicClock};
use crate::{DeviceStats, PacketDevice};
use slr_wire::PacketBuf;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// pcap link type for packets that begin with an IPv4 or IPv6 header (`LINKTYPE_RAW`).
pub const LINKTYPE_RAW: u32 = 101;

/// Longest packet a record holds.
const SNAPLEN: u32 = 65_535;

/// A device wrapper that appends every packet it receives or sends to a classic pcap file
/// (`LINKTYPE_RAW`: records start at the IPv4 header), readable by tcpdump and Wireshark.
///
/// Received packets are written as `recv_batch` returns them; sent packets as the inner device
/// consumed them (including those it dropped as malformed or refused, so a capture shows what
/// the caller asked for). Classic pcap has no direction field: filter on addresses. Timestamps
/// are `epoch` plus the time the clock moved since the wrapper was made, so a simulator with a
/// [`crate::ManualClock`] writes reproducible files.
///
/// A failed write does not fail the packet operation: capture stops (a half-written record
/// would corrupt the rest of the file) and [`PcapWriter::capture_error`] says why.
#[derive(Debug)]
pub struct PcapWriter<D, W: Write, C = MonotonicClock> {
    inner: D,
    sink: W,
    clock: C,
    start: Instant,
    epoch: Duration,
    error: Option<io::ErrorKind>,
    packets: u64,
}

impl<D: PacketDevice> PcapWriter<D, BufWriter<File>> {
    /// Wraps `inner`, capturing into a new file at `path` (truncated if it exists), with wall
    /// clock timestamps.
    pub fn create(inner: D, path: impl AsRef<Path>) -> io::Result<Self> {
        Self::new(inner, BufWriter::new(File::create(path)?))
    }
}

impl<D: PacketDevice, W: Write> PcapWriter<D, W> {
    /// Wraps `inner`, capturing into `sink` with wall clock timestamps; writes the file header.
    pub fn new(inner: D, sink: W) -> io::Result<Self> {
        Self::with_clock(inner, sink, MonotonicClock, SystemTime::now())
    }
}

impl<D: PacketDevice, W: Write, C: Clock> PcapWriter<D, W, C> {
    /// Wraps `inner`, capturing into `sink`, stamping each record with `epoch` plus the time
    /// `clock` moved since now; writes the file header.
    pub fn with_clock(inner: D, mut sink: W, clock: C, epoch: SystemTime) -> io::Result<Self> {
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
        hdr[4..6].copy_from_slice(&2u16.to_ne_bytes());
        hdr[6..8].copy_from_slice(&4u16.to_ne_bytes());
        // thiszone and sigfigs stay 0.
        hdr[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
        hdr[20..24].copy_from_slice(&LINKTYPE_RAW.to_ne_bytes());
        sink.write_all(&hdr)?;
        let epoch = epoch
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let start = clock.now();
        Ok(PcapWriter {
            inner,
            sink,
            clock,
            start,
            epoch,
            error: None,
            packets: 0,
        })
    }

    /// Why capture stopped, if it did.
    pub fn capture_error(&self) -> Option<io::ErrorKind> {
        self.error
    }

    /// Packets written so far.
    pub fn captured(&self) -> u64 {
        self.packets
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutable (packets sent through it are not captured).
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Flushes and unwraps the device and the sink.
    pub fn into_parts(mut self) -> (D, W) {
        let _ = self.sink.flush();
        (self.inner, self.sink)
    }

    fn record(&mut self, pkt: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let ts = self.epoch + self.clock.now().saturating_duration_since(self.start);
        let incl = pkt.len().min(SNAPLEN as usize);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&(ts.as_secs() as u32).to_ne_bytes());
        hdr[4..8].copy_from_slice(&ts.subsec_micros().to_ne_bytes());
        hdr[8..12].copy_from_slice(&(incl as u32).to_ne_bytes());
        hdr[12..16].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        match self
            .sink
            .write_all(&hdr)
            .and_then(|()| self.sink.write_all(&pkt[..incl]))
        {
            Ok(()) => self.packets += 1,
            Err(e) => self.error = Some(e.kind()),
        }
    }
}

impl<D: PacketDevice, W: Write, C: Clock> PacketDevice for PcapWriter<D, W, C> {
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let n = self.inner.recv_batch(bufs)?;
        for b in &bufs[..n] {
            self.record(b.as_ref());
        }
        Ok(n)
    }

    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        let n = self.inner.send_batch(pkts)?;
        for p in &pkts[..n] {
            self.record(p.as_ref());
        }
        Ok(n)
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

    #[test]
    fn writes_a_classic_raw_ip_capture() {
        let clock = ManualClock::new();
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut dev = MemoryDevice::new("mem");
        let pkt = {
            let mut v = vec![0xeeu8; 28];
            slr_wire::Ipv4Repr {
                src_addr: [10, 0, 0, 1].into(),
                dst_addr: [10, 0, 0, 2].into(),
                protocol: slr_wire::Protocol::Udp,
                payload_len: 8,
                ttl: 64,
                tos: 0,
                ident: 1,
                dont_frag: false,
            }
            .emit(&mut v);
            v
        };
        dev.push_rx(&pkt);
        let mut w = PcapWriter::with_clock(dev, Vec::new(), clock.clone(), epoch).unwrap();
        clock.advance(Duration::from_micros(1_500_002));
        let mut bufs = [PacketBuf::new(100)];
        assert_eq!(w.recv_batch(&mut bufs).unwrap(), 1);
        assert_eq!(
            w.send_batch(&[PacketBuf::from_slice(&pkt[..20])]).unwrap(),
            1
        );
        assert_eq!(w.captured(), 2);
        let (_, file) = w.into_parts();
        let u32_at = |o: usize| u32::from_ne_bytes(file[o..o + 4].try_into().unwrap());
        assert_eq!(file.len(), 24 + 16 + 28 + 16 + 20);
        assert_eq!(
            (u32_at(0), u32_at(16), u32_at(20)),
            (0xa1b2_c3d4, 65_535, 101)
        );
        assert_eq!(&file[4..8], &[2, 0, 4, 0][..]);
        assert_eq!(
            (u32_at(24), u32_at(28), u32_at(32), u32_at(36)),
            (1_001, 500_002, 28, 28)
        );
        assert_eq!(&file[40..68], &pkt[..]);
        assert_eq!((u32_at(76), u32_at(80)), (20, 20));
        assert_eq!(&file[84..], &pkt[..20]);
    }

    #[test]
    fn a_failing_sink_stops_capture_but_not_the_device() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(PcapWriter::new(MemoryDevice::new("mem"), Broken).is_err());
        struct FailsAfterHeader(usize);
        impl Write for FailsAfterHeader {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 >= 24 {
                    return Err(io::Error::other("disk full"));
                }
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = PcapWriter::new(MemoryDevice::new("mem"), FailsAfterHeader(0)).unwrap();
        assert_eq!(
            w.send_batch(&[PacketBuf::from_slice(&[0x45; 20])]).unwrap(),
            1
        );
        assert_eq!(w.capture_error(), Some(io::ErrorKind::Other));
        assert_eq!(w.inner().tx_len(), 1);
    }
}
