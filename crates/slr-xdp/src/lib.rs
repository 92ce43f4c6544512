//! slr's kernel fast path (MISSION F20).
//!
//! The XDP programs are C (`bpf/slr.bpf.c`), built by `build.rs` with clang `-target bpf` and
//! embedded in the binary; this crate loads them with aya, attaches them, and gives the daemons
//! typed access to their maps.
//!
//! [`RouterFastPath`] runs `slr_router` on a router's ingress interfaces: packets of flows the
//! routing core has pinned (entries of the `flows` map) are encapsulated toward their next hop
//! and transmitted in the kernel; everything else passes to the slow path (the TUN device and
//! the core), counted by [`Reason`]. The map is the core's cache, never a second brain: the
//! daemon installs an entry when the core pins an established flow and removes it when the core
//! lets the flow go, and the core ages flows by the last use the program records.

mod maps;
mod sync;

pub use maps::{Counter, FlowKeyRecord, FlowValueRecord, Reason};
pub use sync::key_record;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use maps::{ConfigRecord, LoopRecord};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The BPF object with every program of the fast path.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/slr.bpf.o"));

/// Per-next-hop counters the program keeps (next-hop indices at or above are not counted).
pub const MAX_NEXT_HOPS: u32 = 4096;
/// Per-virtual-host counters the program keeps.
pub const MAX_VIRTUAL_HOSTS: u32 = 1024;

/// What can go wrong with the fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The object could not be loaded (maps created, programs parsed).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program was refused (the verifier's log is part of the message) or could not attach.
    #[error("XDP program {program}: {source}")]
    Program {
        /// Which program.
        program: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("XDP map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// An interface name that does not exist.
    #[error("no interface named {0:?}")]
    NoInterface(String),
    /// Attaching through the link (netlink) failed.
    #[error("attaching XDP to the link: {0}")]
    Link(#[from] slr_io::RouteError),
}

/// Why an entry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The map holds `max_flows` entries: the flow stays on the slow path.
    #[error("the fast path's flow map is full")]
    Full,
    /// Another failure.
    #[error(transparent)]
    Other(#[from] FastPathError),
}

/// The router program's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSettings {
    /// Entries of the flow map (the core's `max_flows`).
    pub max_flows: u32,
    /// The outer source address (the core's tunnel source).
    pub tunnel_source: Ipv4Addr,
    /// The largest outer packet; larger ones take the slow path.
    pub tunnel_mtu: u32,
    /// The outer TTL.
    pub outer_ttl: u8,
}

fn program_err(program: &'static str) -> impl FnOnce(ProgramError) -> FastPathError {
    move |source| FastPathError::Program { program, source }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> FastPathError {
    move |source| FastPathError::Map { map, source }
}

/// The index of an interface by name, in the calling thread's network namespace.
pub fn if_index(name: &str) -> Result<u32, FastPathError> {
    slr_io::netns::interface_index(name).map_err(|_| FastPathError::NoInterface(name.into()))
}

/// Now on the clock the programs stamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), in ns.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which is valid for writes.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(r, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// What `BPF_PROG_TEST_RUN` made of one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The XDP verdict (`XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4, ...).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// XDP verdicts.
pub mod verdict {
    /// Dropped.
    pub const DROP: u32 = 1;
    /// Up the stack.
    pub const PASS: u32 = 2;
    /// Back out of the interface it came in by.
    pub const TX: u32 = 3;
    /// Out of another interface.
    pub const REDIRECT: u32 = 4;
}

/// The router's fast path: the loaded `slr_router` program, its maps, and where it is attached.
pub struct RouterFastPath {
    ebpf: Ebpf,
    flows: HashMap<MapData, FlowKeyRecord, FlowValueRecord>,
    config: Array<MapData, ConfigRecord>,
    stats: PerCpuArray<MapData, Counter>,
    next_hop_stats: PerCpuArray<MapData, Counter>,
    vhost_stats: PerCpuArray<MapData, Counter>,
    settings: RouterSettings,
    attached: Vec<(String, u32)>,
}

impl std::fmt::Debug for RouterFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterFastPath")
            .field("settings", &self.settings)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl RouterFastPath {
    /// Loads the programs (through the verifier) and creates the maps, enabled with
    /// `settings`. Attaches nothing.
    pub fn load(settings: RouterSettings) -> Result<Self, FastPathError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("flows", settings.max_flows.max(1))
            .load(OBJECT)?;
        for name in [
            "slr_router",
            "slr_pass",
            "slr_bounce",
            "slr_sink",
            "slr_unwrap",
        ] {
            let name: &'static str = name;
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| FastPathError::Program {
                    program: name,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(program_err(name))?;
            prog.load().map_err(program_err(name))?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(FastPathError::Map {
                map: name,
                source: MapError::InvalidName { name: name.into() },
            })
        };
        let flows = HashMap::try_from(take(&mut ebpf, "flows")?).map_err(map_err("flows"))?;
        let config = Array::try_from(take(&mut ebpf, "config")?).map_err(map_err("config"))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, "stats")?).map_err(map_err("stats"))?;
        let next_hop_stats = PerCpuArray::try_from(take(&mut ebpf, "next_hop_stats")?)
            .map_err(map_err("next_hop_stats"))?;
        let vhost_stats = PerCpuArray::try_from(take(&mut ebpf, "vhost_stats")?)
            .map_err(map_err("vhost_stats"))?;
        let mut fp = RouterFastPath {
            ebpf,
            flows,
            config,
            stats,
            next_hop_stats,
            vhost_stats,
            settings,
            attached: Vec::new(),
        };
        fp.set_enabled(true)?;
        Ok(fp)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> RouterSettings {
        self.settings
    }

    /// Switches forwarding on or off (off: every packet passes to the slow path).
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), FastPathError> {
        let s = self.settings;
        let rec = ConfigRecord {
            tunnel_src: s.tunnel_source.octets(),
            tunnel_mtu: s.tunnel_mtu,
            outer_ttl: u32::from(s.outer_ttl),
            enabled: u32::from(enabled),
        };
        self.config.set(0, rec, 0).map_err(map_err("config"))
    }

    fn program(&mut self, name: &'static str) -> Result<&mut Xdp, FastPathError> {
        self.ebpf
            .program_mut(name)
            .ok_or(FastPathError::Program {
                program: name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(program_err(name))
    }

    /// Attaches `slr_router` to an interface in native (driver) mode; the attachment lasts as
    /// long as this value.
    pub fn attach(&mut self, interface: &str) -> Result<(), FastPathError> {
        let index = if_index(interface)?;
        self.program("slr_router")?
            .attach_to_if_index(index, XdpMode::Driver)
            .map_err(program_err("slr_router"))?;
        self.attached.push((interface.to_string(), index));
        Ok(())
    }

    /// The interfaces it is attached to, with their indices.
    pub fn attached(&self) -> &[(String, u32)] {
        &self.attached
    }

    /// Installs (or replaces) a flow's entry.
    pub fn install(
        &mut self,
        key: FlowKeyRecord,
        value: FlowValueRecord,
    ) -> Result<(), InstallError> {
        match self.flows.insert(key, value, 0) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Err(InstallError::Full)
            }
            Err(e) => Err(InstallError::Other(map_err("flows")(e))),
        }
    }

    /// Removes a flow's entry; whether there was one.
    pub fn withdraw(&mut self, key: &FlowKeyRecord) -> Result<bool, FastPathError> {
        match self.flows.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err("flows")(e)),
        }
    }

    /// A flow's entry, if installed.
    pub fn lookup(&self, key: &FlowKeyRecord) -> Result<Option<FlowValueRecord>, FastPathError> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("flows")(e)),
        }
    }

    /// Every installed entry (a walk of the map, one system call per entry).
    pub fn entries(&self) -> Vec<(FlowKeyRecord, FlowValueRecord)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// Entries in the map (a walk).
    pub fn len(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.flows.keys().next().is_none()
    }

    /// Removes every entry; returns how many.
    pub fn flush(&mut self) -> Result<usize, FastPathError> {
        let keys: Vec<FlowKeyRecord> = self.flows.keys().filter_map(Result::ok).collect();
        let mut n = 0;
        for k in &keys {
            if self.withdraw(k)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// What the program did, by reason, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(Reason, Counter)>, FastPathError> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for (i, &r) in Reason::ALL.iter().enumerate() {
            out.push((r, sum(&self.stats, i as u32)?));
        }
        Ok(out)
    }

    /// Packets forwarded to next hop `index` (the core's), summed over CPUs.
    pub fn next_hop_counter(&self, index: u32) -> Result<Counter, FastPathError> {
        if index >= MAX_NEXT_HOPS {
            return Ok(Counter::default());
        }
        sum(&self.next_hop_stats, index)
    }

    /// Packets forwarded for virtual host `index` (the core's), summed over CPUs.
    pub fn virtual_host_counter(&self, index: u32) -> Result<Counter, FastPathError> {
        if index >= MAX_VIRTUAL_HOSTS {
            return Ok(Counter::default());
        }
        sum(&self.vhost_stats, index)
    }

    /// One `BPF_PROG_TEST_RUN` of `program` on `frame` as if it had arrived on `ingress`:
    /// `repeat` times, in live-frame mode with `live_batch` (frames really leave), or else
    /// with the output frame returned.
    fn run_program(
        &mut self,
        program: &'static str,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
        live_batch: Option<u32>,
    ) -> Result<(aya::programs::TestRunResult, Vec<u8>), FastPathError> {
        let ctx = xdp_md(frame.len(), ingress);
        let mut out = vec![
            0u8;
            if live_batch.is_some() {
                0
            } else {
                frame.len() + 256
            }
        ];
        let r = self
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: live_batch.is_none().then_some(&mut out[..]),
                ctx_in: Some(&ctx),
                ctx_out: None,
                repeat,
                attrs: match live_batch {
                    Some(b) => TestRunAttrs::new().xdp_live_frames(b),
                    None => TestRunAttrs::new(),
                },
            })
            .map_err(program_err(program))?;
        out.truncate(r.data_size_out as usize);
        Ok((r, out))
    }

    /// Runs `slr_router` on one frame through `BPF_PROG_TEST_RUN`, as if it had arrived on
    /// interface `ingress` (an index in the calling thread's namespace; fib lookups use its
    /// routes and neighbours).
    pub fn test_run(&mut self, frame: &[u8], ingress: u32) -> Result<TestRunOutput, FastPathError> {
        let (r, out) = self.run_program("slr_router", frame, ingress, 1, None)?;
        Ok(TestRunOutput {
            verdict: r.return_value,
            frame: out,
        })
    }

    /// Runs `program` (`slr_router`, `slr_bounce` or `slr_pass`) on `frame` `repeat` times in
    /// the kernel's live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): frames the program
    /// transmits really leave by the interface `ingress`. Returns the time per frame the
    /// kernel measured.
    pub fn live_frames(
        &mut self,
        program: &'static str,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
        batch: u32,
    ) -> Result<Duration, FastPathError> {
        Ok(self
            .run_program(program, frame, ingress, repeat, Some(batch))?
            .0
            .duration)
    }

    /// Runs `slr_router` on `frame` `repeat` times without transmitting anything
    /// (`BPF_PROG_TEST_RUN`); returns the kernel's time per run: the program alone.
    pub fn time_program(
        &mut self,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
    ) -> Result<Duration, FastPathError> {
        Ok(self
            .run_program("slr_router", frame, ingress, repeat, None)?
            .0
            .duration)
    }

    /// Starts the benchmark loop's count: `slr_unwrap` sends `budget` more frames back, then
    /// drops.
    pub fn set_loop_budget(&mut self, budget: u64) -> Result<(), FastPathError> {
        let map = self.ebpf.map_mut("bench_loop").ok_or(FastPathError::Map {
            map: "bench_loop",
            source: MapError::InvalidName {
                name: "bench_loop".into(),
            },
        })?;
        let mut a: Array<&mut MapData, LoopRecord> =
            Array::try_from(map).map_err(map_err("bench_loop"))?;
        a.set(
            0,
            LoopRecord {
                budget,
                returned: 0,
            },
            0,
        )
        .map_err(map_err("bench_loop"))
    }

    /// Frames `slr_unwrap` has seen since [`set_loop_budget`](Self::set_loop_budget) (sent
    /// back, and beyond the budget dropped).
    pub fn loop_returned(&self) -> Result<u64, FastPathError> {
        let map = self.ebpf.map("bench_loop").ok_or(FastPathError::Map {
            map: "bench_loop",
            source: MapError::InvalidName {
                name: "bench_loop".into(),
            },
        })?;
        let a: Array<&MapData, LoopRecord> = Array::try_from(map).map_err(map_err("bench_loop"))?;
        Ok(a.get(&0, 0).map_err(map_err("bench_loop"))?.returned)
    }

    /// Attaches `slr_pass`, `slr_sink` (XDP_DROP), `slr_bounce` or `slr_unwrap` to an interface
    /// (native mode), for as long as this value lives.
    pub fn attach_other(
        &mut self,
        program: &'static str,
        interface: &str,
    ) -> Result<(), FastPathError> {
        let index = if_index(interface)?;
        self.program(program)?
            .attach_to_if_index(index, XdpMode::Driver)
            .map_err(program_err(program))?;
        Ok(())
    }
}

/// Attaches `slr_pass` (XDP_PASS) to `interface` in driver mode through the link itself, so
/// that it stays after this process exits and goes with the interface: the far end of a veth
/// whose near end runs `slr_router` needs it (a veth hands XDP_TX and redirected frames only to
/// a peer with an XDP program or NAPI on).
pub fn attach_pass_to_link(interface: &str) -> Result<(), FastPathError> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut ebpf = EbpfLoader::new().map_max_entries("flows", 1).load(OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut("slr_pass")
        .ok_or(FastPathError::Program {
            program: "slr_pass",
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(program_err("slr_pass"))?;
    prog.load().map_err(program_err("slr_pass"))?;
    let fd = prog
        .fd()
        .map_err(program_err("slr_pass"))?
        .as_fd()
        .as_raw_fd();
    // XDP_FLAGS_DRV_MODE
    slr_io::RouteSocket::open()?.set_link_xdp(interface, Some(fd), 4)?;
    Ok(())
}

/// A `struct xdp_md` for a test run: data from 0 to `len`, the ingress interface.
fn xdp_md(len: usize, ingress: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes()); // ingress_ifindex
    ctx
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Counter, FastPathError> {
    let per_cpu = map.get(&index, 0).map_err(map_err("stats"))?;
    let mut total = Counter::default();
    for c in per_cpu.iter() {
        total += *c;
    }
    Ok(total)
}
