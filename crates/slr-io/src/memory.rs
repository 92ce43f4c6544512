//! A device with no kernel behind it.

use crate::{DeviceStats, IoDrop, PacketDevice};
use slr_wire::{Ipv4Packet, PacketBuf};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// A device made of two queues: packets a test pushes with [`MemoryDevice::push_rx`] come out of
/// `recv_batch`, and packets given to `send_batch` can be taken with [`MemoryDevice::pop_tx`].
///
/// For unit tests of code written against [`PacketDevice`] and of the wrapper devices. It has no
/// descriptor ([`PacketDevice::fd`] is -1): drive it by calling it, not by polling.
#[derive(Debug, Default)]
pub struct MemoryDevice {
    name: String,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    tx_capacity: Option<usize>,
    stats: DeviceStats,
}

impl MemoryDevice {
    /// An empty device with unbounded queues.
    pub fn new(name: &str) -> Self {
        MemoryDevice {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Queues `pkt` for a later `recv_batch`. Like a kernel device, `recv_batch` drops it if it
    /// is not a well-formed IPv4 packet.
    pub fn push_rx(&mut self, pkt: &[u8]) {
        self.rx.push_back(pkt.to_vec());
    }

    /// Takes the oldest sent packet.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Packets sent and not yet taken.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// Packets pushed and not yet received.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// Makes `send_batch` stop (as a full socket does) while `n` sent packets are not taken;
    /// `None` removes the bound.
    pub fn set_tx_capacity(&mut self, n: Option<usize>) {
        self.tx_capacity = n;
    }
}

impl PacketDevice for MemoryDevice {
    fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            let Some(pkt) = self.rx.pop_front() else {
                break;
            };
            let slot = bufs[n].read_slot();
            if pkt.len() > slot.len() {
                self.stats.count_drop(IoDrop::RxTruncated);
                continue;
            }
            slot[..pkt.len()].copy_from_slice(&pkt);
            bufs[n].set_len(pkt.len());
            if Ipv4Packet::new_checked(bufs[n].as_ref()).is_err() {
                self.stats.count_drop(IoDrop::RxMalformed);
                continue;
            }
            self.stats.count_rx(pkt.len());
            n += 1;
        }
        Ok(n)
    }

    /// Records every packet as it is, valid or not.
    fn send_batch(&mut self, pkts: &[PacketBuf]) -> io::Result<usize> {
        for (i, p) in pkts.iter().enumerate() {
            if self.tx_capacity.is_some_and(|cap| self.tx.len() >= cap) {
                return Ok(i);
            }
            self.tx.push_back(p.as_ref().to_vec());
            self.stats.count_tx(p.len());
        }
        Ok(pkts.len())
    }

    fn fd(&self) -> RawFd {
        -1
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}
