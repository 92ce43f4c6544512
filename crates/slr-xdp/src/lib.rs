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

mod generator;
mod host;
mod maps;
mod router;
mod sync;

pub use generator::{GeneratorSettings, TrafficGenerator, GENERATOR_FRAME};
pub use host::{HostFastPath, HostSettings};
pub use maps::{Counter, FlowKeyRecord, FlowValueRecord, HostReason, Reason};
pub use router::RouterFastPath;
pub use sync::key_record;

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use aya::programs::{
    Program, ProgramError, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp,
};
use aya::{Ebpf, EbpfLoader};
use std::net::Ipv4Addr;

/// The BPF object with every program of the fast path.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/slr.bpf.o"));

/// Per-next-hop counters the program keeps (next-hop indices at or above are not counted).
pub const MAX_NEXT_HOPS: u32 = 4096;
/// Per-virtual-host counters the program keeps.
pub const MAX_VIRTUAL_HOSTS: u32 = 1024;

/// What can go wrong with the fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The object could not be loaded (maps created, programs parsed).
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program was refused (the verifier's log is part of the message) or could not attach.
    #[error("BPF program {program}: {source}")]
    Program {
        /// Which program.
        program: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
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
    /// The flow map could not be pinned where asked.
    #[error("pinning the flow map under {}: {what}", dir.display())]
    Pin {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        what: String,
    },
    /// More entries than the program's maps hold.
    #[error("too many {what} (at most {max})")]
    TooMany {
        /// What.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Attaching through the link (netlink) failed.
    #[error("attaching to the link: {0}")]
    Link(#[from] slr_io::RouteError),
    /// Settings out of range.
    #[error("{0}")]
    Settings(String),
    /// An update of an XDP device map failed.
    #[error("BPF map {map}: {what}")]
    DevMap {
        /// Which map.
        map: &'static str,
        /// Why.
        what: String,
    },
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
    /// tc: up the stack (`TC_ACT_OK`).
    pub const TC_OK: u32 = 0;
    /// tc: dropped (`TC_ACT_SHOT`).
    pub const TC_SHOT: u32 = 2;
    /// tc: out of the interface `bpf_redirect` named (`TC_ACT_REDIRECT`).
    pub const TC_REDIRECT: u32 = 7;
}

/// Whether `dir` is on a bpf filesystem (where maps can be pinned).
pub fn is_bpffs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `struct statfs` is plain integers, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads a NUL-terminated path and writes one `struct statfs`, both valid
    // for the call.
    let r = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Loads the object (maps created; `flows` with `max_flows` entries), no program yet.
pub(crate) fn load_object(max_flows: u32) -> Result<Ebpf, FastPathError> {
    Ok(EbpfLoader::new()
        .map_max_entries("flows", max_flows.max(1))
        .load(OBJECT)?)
}

/// A program of the object, as its type (`Xdp`, `SchedClassifier`).
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, FastPathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(FastPathError::Program {
            program: name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(program_err(name))
}

/// A program of the object, as XDP.
pub(crate) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, FastPathError> {
    typed_program(ebpf, name)
}

/// A program of the object, as a tc classifier.
pub(crate) fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, FastPathError> {
    typed_program(ebpf, name)
}

/// Loads `names` (XDP programs or tc classifiers) into the kernel (the verifier runs; its log
/// is in the error).
pub(crate) fn load_programs(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), FastPathError> {
    for &name in names {
        match ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => p.load(),
            Some(Program::Xdp(p)) => p.load(),
            Some(_) | None => Err(ProgramError::NotLoaded),
        }
        .map_err(program_err(name))?;
    }
    Ok(())
}

/// Where a program of the fast path runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// XDP, in the driver: before the kernel makes a socket buffer. Fastest per packet; on a
    /// veth it sees a peer's large (GSO) packets only after segmentation.
    Xdp,
    /// tc ingress (clsact): on socket buffers, so a GSO packet of up to 64 KiB is handled once,
    /// whole, and leaves whole.
    Tc,
}

impl Hook {
    /// `"xdp"` or `"tc"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

/// The priority and handle of the fast path's tc filters: fixed, so that the next daemon
/// replaces its predecessor's filter in one step.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: aya::programs::tc::TcHandle = aya::programs::tc::TcHandle::new(0, 0x51);

/// Attaches tc classifier `program` at `interface`'s ingress through netlink (a clsact qdisc
/// is added if missing), replacing the filter a previous run left there in one step: the
/// filter outlives this process, as an XDP attachment through the link does. Whatever XDP
/// program `interface` ran goes.
pub(crate) fn attach_tc_to_link(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
) -> Result<(), FastPathError> {
    use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions};
    use aya::programs::TcAttachType;
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => {}
        Err(tc::TcError::AlreadyAttached) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(FastPathError::Program {
                program,
                source: ProgramError::from(e),
            })
        }
    }
    let prog = tc_program(ebpf, program)?;
    let replaced = SchedClassifierLink::attached(
        interface,
        TcAttachType::Ingress,
        TC_PRIORITY,
        TC_HANDLE,
        None,
    )
    .ok()
    .and_then(|old| prog.attach_to_link(old).ok());
    let id = match replaced {
        Some(id) => id,
        None => prog
            .attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(program_err(program))?,
    };
    // The filter stays when this value goes (a dropped link would detach it).
    std::mem::forget(prog.take_link(id).map_err(program_err(program))?);
    detach_from_link(interface)
}

/// Removes tc classifier `program` from `interface`'s ingress (nothing there is not an error).
pub(crate) fn detach_tc_from_link(
    program: &'static str,
    interface: &str,
) -> Result<(), FastPathError> {
    use aya::programs::tc::{self, TcError};
    use aya::programs::TcAttachType;
    match tc::qdisc_detach_program(interface, TcAttachType::Ingress, program) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FastPathError::Program {
            program,
            source: ProgramError::from(e),
        }),
    }
}

/// Takes a map out of the object, to own it typed.
pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, FastPathError> {
    ebpf.take_map(name).ok_or(FastPathError::Map {
        map: name,
        source: MapError::InvalidName { name: name.into() },
    })
}

/// One `BPF_PROG_TEST_RUN` of `program` on `frame` as if it had arrived on `ingress`:
/// `repeat` times, in live-frame mode with `live_batch` (frames really leave), or else with the
/// output frame returned.
pub(crate) fn run_program(
    ebpf: &mut Ebpf,
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
    let r = xdp_program(ebpf, program)?
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

/// Attaches program `fd` to `interface` in driver mode through the link itself (netlink), so
/// that the attachment outlives the process; replaces what was attached.
pub(crate) fn attach_fd_to_link(interface: &str, fd: i32) -> Result<(), FastPathError> {
    // XDP_FLAGS_DRV_MODE
    slr_io::RouteSocket::open()?.set_link_xdp(interface, Some(fd), 4)?;
    Ok(())
}

/// Detaches whatever XDP program runs on `interface` (the counterpart of an attachment through
/// the link).
pub fn detach_from_link(interface: &str) -> Result<(), FastPathError> {
    slr_io::RouteSocket::open()?.set_link_xdp(interface, None, 4)?;
    Ok(())
}

/// Attaches `slr_pass` (XDP_PASS) to `interface` in driver mode through the link itself, so
/// that it stays after this process exits and goes with the interface: the far end of a veth
/// whose near end runs `slr_router` needs it (a veth hands XDP_TX and redirected frames only to
/// a peer with an XDP program or NAPI on).
pub fn attach_pass_to_link(interface: &str) -> Result<(), FastPathError> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut ebpf = load_object(1)?;
    load_programs(&mut ebpf, &["slr_pass"])?;
    let prog = xdp_program(&mut ebpf, "slr_pass")?;
    let fd = prog
        .fd()
        .map_err(program_err("slr_pass"))?
        .as_fd()
        .as_raw_fd();
    attach_fd_to_link(interface, fd)
}

/// Attaches `slr_fwd` (the lab core's XDP forwarder) to each of `links` through the link
/// itself (it stays after this process exits and goes with the interface), forwarding to
/// `ports` (links whose far end runs an XDP program); the rest goes to the kernel as before.
pub fn attach_forwarder_to_links(links: &[String], ports: &[String]) -> Result<(), FastPathError> {
    use aya::maps::DevMapHash;
    use std::os::fd::{AsFd, AsRawFd};
    let mut ebpf = load_object(1)?;
    load_programs(&mut ebpf, &["slr_fwd"])?;
    let map = ebpf.map_mut("fwd_ports").ok_or(FastPathError::Map {
        map: "fwd_ports",
        source: MapError::InvalidName {
            name: "fwd_ports".into(),
        },
    })?;
    let mut devmap: DevMapHash<&mut MapData> =
        DevMapHash::try_from(map).map_err(map_err("fwd_ports"))?;
    for p in ports {
        let index = if_index(p)?;
        devmap
            .insert(index, index, None, 0)
            .map_err(|e| FastPathError::DevMap {
                map: "fwd_ports",
                what: format!("{p}: {e}"),
            })?;
    }
    let prog = xdp_program(&mut ebpf, "slr_fwd")?;
    let fd = prog
        .fd()
        .map_err(program_err("slr_fwd"))?
        .as_fd()
        .as_raw_fd();
    for l in links {
        attach_fd_to_link(l, fd)?;
    }
    Ok(())
}

/// One `BPF_PROG_TEST_RUN` of tc classifier `program` on `frame` as if it had arrived on
/// `ingress` (the kernel builds a socket buffer around it); the frame as the program left it.
pub(crate) fn run_tc_program(
    ebpf: &mut Ebpf,
    program: &'static str,
    frame: &[u8],
    ingress: u32,
) -> Result<TestRunOutput, FastPathError> {
    // A `struct __sk_buff` up to its ifindex: ingress_ifindex at 36, ifindex at 40.
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ingress.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = tc_program(ebpf, program)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out[..]),
            ctx_in: Some(&ctx),
            ctx_out: None,
            repeat: 1,
            attrs: TestRunAttrs::new(),
        })
        .map_err(program_err(program))?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutput {
        verdict: r.return_value,
        frame: out,
    })
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
