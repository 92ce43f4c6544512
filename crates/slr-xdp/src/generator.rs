//! The lab's traffic generator in the kernel: `slr_gen` run in live-frame mode
//! (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) on a client's interface. The kernel
//! builds and transmits the frames itself; a socket-based generator spends more on its own
//! sends than the path it measures (see FIELD-NOTES on xdp-trafgen and pktgen).

use crate::{load_object, load_programs, map_err, run_program, FastPathError};
use aya::maps::{Array, MapData};
use aya::Ebpf;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The frames `slr_gen` writes: IPv4/UDP, `flows` flows from `sources` consecutive source
/// addresses starting at `src` (the source port varies above the address), to `dst`:`dport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorSettings {
    /// Destination MAC (the next hop's: the client's gateway).
    pub dmac: [u8; 6],
    /// Source MAC (the sending interface's).
    pub smac: [u8; 6],
    /// First source address.
    pub src: Ipv4Addr,
    /// Consecutive source addresses, 1..=65,536.
    pub sources: u32,
    /// Flows in all, 1..=`sources` x 64,512 (source ports from 1024).
    pub flows: u32,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
}

impl GeneratorSettings {
    /// The most flows `sources` addresses give (ports 1024..=65535 each).
    pub fn max_flows(sources: u32) -> u64 {
        u64::from(sources) * 64_512
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct GenConfigRecord {
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sources: u32,
    flows: u32,
    dport: [u8; 2],
    pad: u16,
}
// SAFETY: plain integers and byte arrays, `repr(C)` without implicit padding (asserted below),
// the layout of `struct gen_config`.
unsafe impl aya::Pod for GenConfigRecord {}
const _: () = assert!(std::mem::size_of::<GenConfigRecord>() == 32);

/// `slr_gen`, loaded and configured.
pub struct TrafficGenerator {
    ebpf: Ebpf,
}

/// The frame length `slr_gen` writes (the shortest Ethernet frame without its FCS).
pub const GENERATOR_FRAME: usize = 60;

impl TrafficGenerator {
    /// Loads `slr_gen` (the verifier runs) with `settings`.
    pub fn load(settings: GeneratorSettings) -> Result<Self, FastPathError> {
        if settings.sources == 0
            || settings.sources > 65_536
            || settings.flows == 0
            || u64::from(settings.flows) > GeneratorSettings::max_flows(settings.sources)
        {
            return Err(FastPathError::Settings(format!(
                "generator: {} flows from {} sources (1..=65,536 sources, 1..=sources x 64,512 \
                 flows)",
                settings.flows, settings.sources
            )));
        }
        let mut ebpf = load_object(1)?;
        load_programs(&mut ebpf, &["slr_gen"])?;
        let map = ebpf.map_mut("gen_config").ok_or(FastPathError::Map {
            map: "gen_config",
            source: aya::maps::MapError::InvalidName {
                name: "gen_config".into(),
            },
        })?;
        let mut a: Array<&mut MapData, GenConfigRecord> =
            Array::try_from(map).map_err(map_err("gen_config"))?;
        a.set(
            0,
            GenConfigRecord {
                dmac: settings.dmac,
                smac: settings.smac,
                src: settings.src.octets(),
                dst: settings.dst.octets(),
                sources: settings.sources,
                flows: settings.flows,
                dport: settings.dport.to_be_bytes(),
                pad: 0,
            },
            0,
        )
        .map_err(map_err("gen_config"))?;
        Ok(TrafficGenerator { ebpf })
    }

    /// Sends `frames` frames out of interface `ifindex` (an index in the calling thread's
    /// namespace) from the calling CPU, in batches of 64; the kernel's time per frame. The
    /// peer of a veth must run an XDP program, or the frames are dropped at its end.
    pub fn send(&mut self, ifindex: u32, frames: u32) -> Result<Duration, FastPathError> {
        let template = [0u8; GENERATOR_FRAME];
        Ok(run_program(
            &mut self.ebpf,
            "slr_gen",
            &template,
            ifindex,
            frames,
            Some(64),
        )?
        .0
        .duration)
    }
}
