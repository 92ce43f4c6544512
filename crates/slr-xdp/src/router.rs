//! The router's program, `slr_router`, and its maps.

use crate::maps::{ConfigRecord, LoopRecord};
use crate::{
    attach_tc_to_link, detach_tc_from_link, if_index, load_object, load_programs, map_err,
    program_err, run_program, sum, take_map, xdp_program, Counter, FastPathError, FlowKeyRecord,
    FlowValueRecord, Hook, InstallError, Reason, RouterSettings, TestRunOutput, MAX_NEXT_HOPS,
    MAX_VIRTUAL_HOSTS,
};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use slr_wire::Ipv4Cidr;
use std::path::Path;
use std::time::Duration;

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
    hook: Hook,
    enabled: bool,
    has_parents: bool,
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
        Self::load_with(settings, load_object(settings.max_flows)?)
    }

    /// Loads as [`load`](Self::load), with the flow map pinned at `dir/flows` on a bpf
    /// filesystem (`dir` is made if missing), so that it outlives the process: a map pinned
    /// there by an earlier run (a router killed, or restarted) is taken over, entries and all,
    /// and what it held is returned, for the core to take those flows back
    /// (`slr_core::router::Router::restore_flow`). A pinned map of another shape (the records
    /// changed, or `max_flows`) is replaced by a new one, its entries still returned.
    pub fn load_pinned(
        settings: RouterSettings,
        dir: &Path,
    ) -> Result<(Self, Vec<(FlowKeyRecord, FlowValueRecord)>), FastPathError> {
        let pin_err = |what: String| FastPathError::Pin {
            dir: dir.to_path_buf(),
            what,
        };
        std::fs::create_dir_all(dir).map_err(|e| pin_err(format!("cannot make it: {e}")))?;
        if !crate::is_bpffs(dir) {
            return Err(pin_err(
                "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
            ));
        }
        let pin = dir.join("flows");
        let mut inherited = Vec::new();
        if pin.exists() {
            let info = MapInfo::from_pin(&pin).map_err(map_err("flows"))?;
            let same_records = info.key_size() as usize == size_of::<FlowKeyRecord>()
                && info.value_size() as usize == size_of::<FlowValueRecord>();
            if same_records {
                let old: HashMap<MapData, FlowKeyRecord, FlowValueRecord> = HashMap::try_from(
                    Map::HashMap(MapData::from_pin(&pin).map_err(map_err("flows"))?),
                )
                .map_err(map_err("flows"))?;
                inherited = old.iter().filter_map(Result::ok).collect();
            }
            if !same_records || info.max_entries() != settings.max_flows.max(1) {
                std::fs::remove_file(&pin)
                    .map_err(|e| pin_err(format!("cannot replace {}: {e}", pin.display())))?;
            }
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries("flows", settings.max_flows.max(1))
            .map_pin_path("flows", pin.as_path())
            .load(crate::OBJECT)?;
        Ok((Self::load_with(settings, ebpf)?, inherited))
    }

    fn load_with(settings: RouterSettings, mut ebpf: Ebpf) -> Result<Self, FastPathError> {
        load_programs(
            &mut ebpf,
            &[
                "slr_router",
                "slr_router_tc",
                "slr_pass",
                "slr_bounce",
                "slr_sink",
                "slr_unwrap",
            ],
        )?;
        let flows = HashMap::try_from(take_map(&mut ebpf, "flows")?).map_err(map_err("flows"))?;
        let config = Array::try_from(take_map(&mut ebpf, "config")?).map_err(map_err("config"))?;
        let stats =
            PerCpuArray::try_from(take_map(&mut ebpf, "stats")?).map_err(map_err("stats"))?;
        let next_hop_stats = PerCpuArray::try_from(take_map(&mut ebpf, "next_hop_stats")?)
            .map_err(map_err("next_hop_stats"))?;
        let vhost_stats = PerCpuArray::try_from(take_map(&mut ebpf, "vhost_stats")?)
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
            hook: Hook::Xdp,
            enabled: true,
            has_parents: false,
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
            has_parents: u32::from(self.has_parents),
        };
        self.enabled = enabled;
        self.config.set(0, rec, 0).map_err(map_err("config"))
    }

    /// Makes the router a middle level: tunnels from `parents` (its `trusted_parents`) to its
    /// tunnel address are re-encapsulated toward the flow's next hop in the kernel when the
    /// flow is in the map; IP-in-IP from anyone else is dropped (`untrusted_tunnel`). Empty:
    /// IP-in-IP is left to the slow path.
    pub fn set_trusted_parents(&mut self, parents: &[Ipv4Cidr]) -> Result<(), FastPathError> {
        if parents.len() > 256 {
            return Err(FastPathError::TooMany {
                what: "trusted parents",
                max: 256,
            });
        }
        {
            let map = self.ebpf.map_mut("parents").ok_or(FastPathError::Map {
                map: "parents",
                source: MapError::InvalidName {
                    name: "parents".into(),
                },
            })?;
            let mut trie: LpmTrie<&mut MapData, [u8; 4], u32> =
                LpmTrie::try_from(map).map_err(map_err("parents"))?;
            let old: Vec<_> = trie.keys().filter_map(Result::ok).collect();
            for k in old {
                let _ = trie.remove(&k);
            }
            for p in parents {
                let key =
                    aya::maps::lpm_trie::Key::new(u32::from(p.prefix_len()), p.addr().octets());
                trie.insert(&key, 1, 0).map_err(map_err("parents"))?;
            }
        }
        self.has_parents = !parents.is_empty();
        self.set_enabled(self.enabled)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut Xdp, FastPathError> {
        xdp_program(&mut self.ebpf, name)
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

    /// Attaches `slr_router` to an interface in driver mode through the link itself
    /// (netlink), replacing what ran there: the attachment outlives this value and the process,
    /// so a killed router's established flows go on in the kernel, and the next router takes
    /// over in one step. [`detach_all`](Self::detach_all) ends it (a graceful stop).
    pub fn attach_to_link(&mut self, interface: &str) -> Result<(), FastPathError> {
        self.attach_to_link_at(interface, Hook::Xdp)
    }

    /// Attaches to an interface through the link at `hook`: XDP as
    /// [`attach_to_link`](Self::attach_to_link), or `slr_router_tc` at tc ingress (a netlink
    /// filter, which outlives the process as well and replaces a predecessor's in one step).
    /// Attaching at one hook removes the program from the other. Every interface of one router
    /// takes the same hook.
    pub fn attach_to_link_at(&mut self, interface: &str, hook: Hook) -> Result<(), FastPathError> {
        use std::os::fd::{AsFd, AsRawFd};
        let index = if_index(interface)?;
        match hook {
            Hook::Xdp => {
                let prog = self.program("slr_router")?;
                let fd = prog
                    .fd()
                    .map_err(program_err("slr_router"))?
                    .as_fd()
                    .as_raw_fd();
                crate::attach_fd_to_link(interface, fd)?;
                detach_tc_from_link("slr_router_tc", interface)?;
            }
            Hook::Tc => attach_tc_to_link(&mut self.ebpf, "slr_router_tc", interface)?,
        }
        self.hook = hook;
        self.attached.push((interface.to_string(), index));
        Ok(())
    }

    /// The hook of the last attachment.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Detaches the program from every interface it was attached to through the link.
    pub fn detach_all(&mut self) -> Result<(), FastPathError> {
        for (name, _) in std::mem::take(&mut self.attached) {
            match self.hook {
                Hook::Xdp => crate::detach_from_link(&name)?,
                Hook::Tc => detach_tc_from_link("slr_router_tc", &name)?,
            }
        }
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

    /// Runs `slr_router` on one frame through `BPF_PROG_TEST_RUN`, as if it had arrived on
    /// interface `ingress` (an index in the calling thread's namespace; fib lookups use its
    /// routes and neighbours).
    pub fn test_run(&mut self, frame: &[u8], ingress: u32) -> Result<TestRunOutput, FastPathError> {
        let (r, out) = run_program(&mut self.ebpf, "slr_router", frame, ingress, 1, None)?;
        Ok(TestRunOutput {
            verdict: r.return_value,
            frame: out,
        })
    }

    /// Runs `slr_router_tc` on one frame through `BPF_PROG_TEST_RUN` (the kernel wraps it in a
    /// socket buffer), as if it had arrived on interface `ingress`; the verdict is tc's.
    pub fn test_run_tc(
        &mut self,
        frame: &[u8],
        ingress: u32,
    ) -> Result<TestRunOutput, FastPathError> {
        crate::run_tc_program(&mut self.ebpf, "slr_router_tc", frame, ingress)
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
        Ok(
            run_program(&mut self.ebpf, program, frame, ingress, repeat, Some(batch))?
                .0
                .duration,
        )
    }

    /// Runs `slr_router` on `frame` `repeat` times without transmitting anything
    /// (`BPF_PROG_TEST_RUN`); returns the kernel's time per run. The kernel runs every
    /// repetition on the same buffer, without restoring it: after the first dozen runs of a
    /// frame that it forwards, the headroom the outer header takes is used up and the rest
    /// pass (`no_headroom`). To time the whole forwarding path, run it once per call (`repeat`
    /// 1) and subtract a baseline timed the same way (see `examples/forward_bench.rs`).
    pub fn time_program(
        &mut self,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
    ) -> Result<Duration, FastPathError> {
        self.time_other("slr_router", frame, ingress, repeat)
    }

    /// Like [`time_program`](Self::time_program), for another program of the object
    /// (`slr_bounce`, the benchmarks' baseline).
    pub fn time_other(
        &mut self,
        program: &'static str,
        frame: &[u8],
        ingress: u32,
        repeat: u32,
    ) -> Result<Duration, FastPathError> {
        Ok(
            run_program(&mut self.ebpf, program, frame, ingress, repeat, None)?
                .0
                .duration,
        )
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

    /// How often `program` has run and for how long in all, by the kernel's own statistics
    /// (counted only while `aya::sys::enable_stats(Stats::RunTime)` is held): the benchmarks'
    /// cost per run of each program in the live path.
    pub fn run_stats(&mut self, program: &'static str) -> Result<(u64, Duration), FastPathError> {
        let info = self
            .program(program)?
            .info()
            .map_err(program_err(program))?;
        Ok((info.run_count(), info.run_time()))
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
