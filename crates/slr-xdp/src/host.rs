//! The host's program, `slr_host`: IP-in-IP from trusted routers decapsulated in the kernel.

use crate::{
    attach_fd_to_link, attach_tc_to_link, detach_from_link, detach_tc_from_link, load_object,
    load_programs, map_err, program_err, run_program, sum, take_map, xdp_program, Counter,
    FastPathError, Hook, HostReason, TestRunOutput,
};
use aya::maps::{Array, LpmTrie, MapData, PerCpuArray};
use aya::Ebpf;
use slr_wire::Ipv4Cidr;

/// Virtual subnets the program counts separately (and at most accepts).
pub const MAX_HOST_SUBNETS: usize = 256;

/// What the host program accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// Outer sources whose tunnels are terminated (the routers of the trust domain).
    pub trusted_tunnel_sources: Vec<Ipv4Cidr>,
    /// Virtual subnets served here; an inner destination outside them is dropped.
    pub virtual_subnets: Vec<Ipv4Cidr>,
}

/// The host's fast path: `slr_host` loaded with its maps filled. Attachments are made through
/// the link (netlink) and outlive this value and the process: a host agent that dies does not
/// stop delivery, and the next agent replaces the program in one step.
pub struct HostFastPath {
    ebpf: Ebpf,
    enabled: Array<MapData, u32>,
    stats: PerCpuArray<MapData, Counter>,
    subnet_stats: PerCpuArray<MapData, Counter>,
    settings: HostSettings,
    attached: Vec<String>,
    hook: Hook,
}

impl std::fmt::Debug for HostFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFastPath")
            .field("settings", &self.settings)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl HostFastPath {
    /// Loads `slr_host` (through the verifier) and fills its maps; attaches nothing.
    pub fn load(settings: HostSettings) -> Result<Self, FastPathError> {
        if settings.virtual_subnets.len() > MAX_HOST_SUBNETS
            || settings.trusted_tunnel_sources.len() > MAX_HOST_SUBNETS
        {
            return Err(FastPathError::TooMany {
                what: "prefixes",
                max: MAX_HOST_SUBNETS,
            });
        }
        let mut ebpf = load_object(1)?;
        load_programs(&mut ebpf, &["slr_host", "slr_host_tc"])?;
        {
            let mut trusted: LpmTrie<MapData, [u8; 4], u32> =
                LpmTrie::try_from(take_map(&mut ebpf, "host_trusted")?)
                    .map_err(map_err("host_trusted"))?;
            for c in &settings.trusted_tunnel_sources {
                trusted
                    .insert(&lpm_key(c), 1, 0)
                    .map_err(map_err("host_trusted"))?;
            }
            let mut subnets: LpmTrie<MapData, [u8; 4], u32> =
                LpmTrie::try_from(take_map(&mut ebpf, "host_subnets")?)
                    .map_err(map_err("host_subnets"))?;
            for (i, c) in settings.virtual_subnets.iter().enumerate() {
                subnets
                    .insert(&lpm_key(c), i as u32, 0)
                    .map_err(map_err("host_subnets"))?;
            }
            // The maps stay alive with the program that uses them.
        }
        let enabled = Array::try_from(take_map(&mut ebpf, "host_enabled")?)
            .map_err(map_err("host_enabled"))?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "host_stats")?)
            .map_err(map_err("host_stats"))?;
        let subnet_stats = PerCpuArray::try_from(take_map(&mut ebpf, "host_subnet_stats")?)
            .map_err(map_err("host_subnet_stats"))?;
        let mut fp = HostFastPath {
            ebpf,
            enabled,
            stats,
            subnet_stats,
            settings,
            attached: Vec::new(),
            hook: Hook::Xdp,
        };
        fp.set_enabled(true)?;
        Ok(fp)
    }

    /// Switches decapsulation on or off (off: every tunnel passes to the agent).
    pub fn set_enabled(&mut self, on: bool) -> Result<(), FastPathError> {
        self.enabled
            .set(0, u32::from(on), 0)
            .map_err(map_err("host_enabled"))
    }

    /// What it accepts.
    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }

    /// Attaches `slr_host` to `interface` (driver mode) through the link, replacing what ran
    /// there (a previous agent's program) in one step.
    pub fn attach(&mut self, interface: &str) -> Result<(), FastPathError> {
        self.attach_at(interface, Hook::Xdp)
    }

    /// Attaches at `hook`: XDP as [`attach`](Self::attach), or `slr_host_tc` at tc ingress
    /// (a netlink filter, which outlives the agent too and replaces a predecessor's). Attaching
    /// at one hook removes the program from the other.
    pub fn attach_at(&mut self, interface: &str, hook: Hook) -> Result<(), FastPathError> {
        use std::os::fd::{AsFd, AsRawFd};
        match hook {
            Hook::Xdp => {
                let prog = xdp_program(&mut self.ebpf, "slr_host")?;
                let fd = prog
                    .fd()
                    .map_err(program_err("slr_host"))?
                    .as_fd()
                    .as_raw_fd();
                attach_fd_to_link(interface, fd)?;
                detach_tc_from_link("slr_host_tc", interface)?;
            }
            Hook::Tc => attach_tc_to_link(&mut self.ebpf, "slr_host_tc", interface)?,
        }
        self.hook = hook;
        if !self.attached.iter().any(|a| a == interface) {
            self.attached.push(interface.to_string());
        }
        Ok(())
    }

    /// Detaches from every interface it was attached to (a graceful stop: the agent's raw
    /// socket, or nothing, takes tunnels again).
    pub fn detach_all(&mut self) -> Result<(), FastPathError> {
        for i in std::mem::take(&mut self.attached) {
            match self.hook {
                Hook::Xdp => detach_from_link(&i)?,
                Hook::Tc => detach_tc_from_link("slr_host_tc", &i)?,
            }
        }
        Ok(())
    }

    /// The interfaces it is attached to.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// What the program did, by reason, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(HostReason, Counter)>, FastPathError> {
        let mut out = Vec::with_capacity(HostReason::ALL.len());
        for (i, &r) in HostReason::ALL.iter().enumerate() {
            out.push((r, sum(&self.stats, i as u32)?));
        }
        Ok(out)
    }

    /// Inner packets delivered for virtual subnet `index` (of the settings), summed over CPUs.
    pub fn subnet_counter(&self, index: usize) -> Result<Counter, FastPathError> {
        if index >= MAX_HOST_SUBNETS {
            return Ok(Counter::default());
        }
        sum(&self.subnet_stats, index as u32)
    }

    /// Runs `slr_host_tc` on one frame through `BPF_PROG_TEST_RUN`; the verdict is tc's.
    pub fn test_run_tc(
        &mut self,
        frame: &[u8],
        ingress: u32,
    ) -> Result<TestRunOutput, FastPathError> {
        crate::run_tc_program(&mut self.ebpf, "slr_host_tc", frame, ingress)
    }

    /// Runs `slr_host` on one frame through `BPF_PROG_TEST_RUN`.
    pub fn test_run(&mut self, frame: &[u8], ingress: u32) -> Result<TestRunOutput, FastPathError> {
        let (r, out) = run_program(&mut self.ebpf, "slr_host", frame, ingress, 1, None)?;
        Ok(TestRunOutput {
            verdict: r.return_value,
            frame: out,
        })
    }
}

/// A prefix as the LPM tries key it (address in network byte order).
fn lpm_key(c: &Ipv4Cidr) -> aya::maps::lpm_trie::Key<[u8; 4]> {
    aya::maps::lpm_trie::Key::new(u32::from(c.prefix_len()), c.addr().octets())
}
