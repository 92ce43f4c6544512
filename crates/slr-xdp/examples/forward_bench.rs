//! Forwarding benchmark of the router's XDP program (issue 11, docs/BENCHMARKS.md): frames
//! generated in the kernel (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) on one
//! core, through `slr_router` with a flow map of N entries, against `slr_bounce` (the bare
//! minimum of an XDP_TX forwarder) in the same run; and the program alone (no transmit) in ns
//! per packet.
//!
//! Live frames cannot time `slr_router` itself (recycled frames keep its rewrite), so the
//! forwarding rate comes from a frame loop in the kernel: 64 frames circulate between
//! `slr_router` on one end of a veth pair and `slr_unwrap` on the other (which strips the
//! tunnel, restores the TTL and sends the frame back) until a budget of frames has gone round;
//! the baseline loop has `slr_bounce` in the router's place.
//!
//! `cargo run --release -p slr-xdp --example forward_bench -- [FLOWS] [FRAMES] [LOOP]` (root; a
//! private network namespace of its own; defaults 1,000,000 flows, 20,000,000 frames, a loop
//! budget of 20,000,000).

use slr_xdp::{FlowKeyRecord, FlowValueRecord, Reason, RouterFastPath, RouterSettings};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Instant;

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd}");
}

fn key(i: u32) -> FlowKeyRecord {
    FlowKeyRecord::new(
        Ipv4Addr::from(0x0a00_0000 | (i >> 8)),
        Ipv4Addr::new(10, 99, 0, 1),
        1024 + (i & 0xff) as u16,
        80,
        6,
    )
}

/// A 64-byte Ethernet frame: TCP ACK of flow `i` with 10 bytes of data.
fn frame(i: u32) -> Vec<u8> {
    let k = key(i);
    let mut ip = vec![0u8; 50];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&k.src().octets());
    ip[16..20].copy_from_slice(&k.dst().octets());
    let mut sum: u32 = ip[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip[20..22].copy_from_slice(&k.src_port().to_be_bytes());
    ip[22..24].copy_from_slice(&80u16.to_be_bytes());
    ip[32] = 5 << 4;
    ip[33] = 0x10;
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f
}

fn counts(fp: &RouterFastPath) -> Vec<(Reason, u64)> {
    fp.stats()
        .unwrap()
        .into_iter()
        .map(|(r, c)| (r, c.packets))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let flows: u32 = args.next().map_or(1_000_000, |a| a.parse().expect("FLOWS"));
    let frames: u32 = args
        .next()
        .map_or(20_000_000, |a| a.parse().expect("FRAMES"));
    let budget: u64 = args.next().map_or(20_000_000, |a| a.parse().expect("LOOP"));
    slr_io::netns::run_in_private_netns(move || run(flows, frames, budget))
        .expect("private netns (root)");
}

fn mac_of(dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-br", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    s.split_whitespace().nth(2).expect("a MAC").to_string()
}

/// What one frame loop measured: its wall time, and each end's runs and time in them by the
/// kernel's own statistics.
struct Loop {
    took: std::time::Duration,
    near: (u64, std::time::Duration),
    far: (u64, std::time::Duration),
}

impl Loop {
    fn ns(run: (u64, std::time::Duration)) -> f64 {
        run.1.as_nanos() as f64 / run.0.max(1) as f64
    }
}

/// Runs a frame loop seeded with 64 frames of `program` on `ingress` until `budget` frames
/// have come back.
fn frame_loop(
    fp: &mut RouterFastPath,
    program: &'static str,
    ingress: u32,
    frame: &[u8],
    budget: u64,
) -> Loop {
    fp.set_loop_budget(budget).expect("loop budget");
    let near0 = fp.run_stats(program).expect("run stats");
    let far0 = fp.run_stats("slr_unwrap").expect("run stats");
    let t = Instant::now();
    fp.live_frames(program, frame, ingress, 64, 64)
        .expect("seed");
    loop {
        let n = fp.loop_returned().expect("loop count");
        if n >= budget {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "the loop stalled at {n} of {budget} frames"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let took = t.elapsed();
    let (near1, far1) = (
        fp.run_stats(program).expect("run stats"),
        fp.run_stats("slr_unwrap").expect("run stats"),
    );
    Loop {
        took,
        near: (near1.0 - near0.0, near1.1 - near0.1),
        far: (far1.0 - far0.0, far1.1 - far0.1),
    }
}

fn run(flows: u32, frames: u32, budget: u64) {
    sh("ip link add xa type veth peer name xb && \
        sysctl -qw net.ipv6.conf.xa.disable_ipv6=1 net.ipv6.conf.xb.disable_ipv6=1 && \
        ip link set xa up && ip link set xb up");
    sh("ip addr add 10.251.0.1/24 dev xa && sysctl -qw net.ipv4.ip_forward=1");
    sh("ip neigh add 10.251.0.2 lladdr 02:00:00:00:00:02 dev xa nud permanent");
    let ingress = slr_xdp::if_index("xa").unwrap();
    let mut fp = RouterFastPath::load(RouterSettings {
        max_flows: flows,
        tunnel_source: Ipv4Addr::new(10, 251, 0, 1),
        tunnel_mtu: 1500,
        outer_ttl: 64,
    })
    .expect("load");
    // XDP_TX out of xa reaches xb only if xb runs an XDP program; it drops them, so that the
    // far end's stack costs nothing.
    fp.attach_other("slr_sink", "xb").expect("slr_sink on xb");
    let t = Instant::now();
    for i in 0..flows {
        fp.install(
            key(i),
            FlowValueRecord::new(Ipv4Addr::new(10, 251, 0, 2), 0, 0),
        )
        .expect("install");
    }
    println!("{flows} flows installed in {:?}", t.elapsed());
    // What the kernel charges for the flow map (bpftool reads it from the map's fdinfo).
    let show = Command::new("bpftool")
        .args(["map", "show", "name", "flows"])
        .output()
        .expect("bpftool");
    let show = String::from_utf8_lossy(&show.stdout);
    if let Some(bytes) = show
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "memlock").nth(1))
        .filter_map(|b| b.trim_end_matches('B').parse::<u64>().ok())
        .max()
    {
        println!(
            "flow map: {} MiB for {flows} entries of capacity {flows}: {} bytes per flow",
            bytes >> 20,
            bytes / u64::from(flows.max(1))
        );
    }
    let f = frame(flows / 2);

    // The program alone: no transmit, by the kernel's clock. The kernel runs repetitions on
    // one buffer without restoring it, so a forwarding run cannot be repeated in one call
    // (the outer headers use the headroom up after a dozen runs, and the rest pass as
    // no_headroom): one run per call, the mean of the kernel's per-call figures, against
    // slr_bounce timed the same way (the clock reads around each run are in both).
    let once = |fp: &mut RouterFastPath, program: &'static str| -> f64 {
        let n = 200_000u32;
        let total: u128 = (0..n)
            .map(|_| {
                fp.time_other(program, &f, ingress, 1)
                    .expect("test run")
                    .as_nanos()
            })
            .sum();
        total as f64 / f64::from(n)
    };
    let before = counts(&fp);
    let (router_once, bounce_once) = (once(&mut fp, "slr_router"), once(&mut fp, "slr_bounce"));
    let (forwarded, passed) = verdicts(&before, &counts(&fp));
    assert!(
        passed == 0 && forwarded == 200_000,
        "every timed run forwards: {forwarded} forwarded, {passed} passed"
    );
    let repeated = fp.time_program(&f, ingress, 1_000_000).expect("test run");
    println!(
        "slr_router alone ({flows} flows in the map), one run per BPF_PROG_TEST_RUN, every run \
         forwarding: {router_once:.1} ns per run, slr_bounce {bounce_once:.1} ns: {:.1} ns more \
         (1,000,000 repetitions in one call, mostly no_headroom passes: {} ns per run)",
        router_once - bounce_once,
        repeated.as_nanos()
    );

    let before = counts(&fp);
    let mut rates = Vec::new();
    for program in ["slr_bounce", "slr_router", "slr_bounce", "slr_router"] {
        let per = fp
            .live_frames(program, &f, ingress, frames, 64)
            .expect("live frames");
        let mpps = 1e3 / per.as_nanos().max(1) as f64;
        println!(
            "{program}: {:.2} Mpps ({} ns per frame, {frames} frames, one core)",
            mpps,
            per.as_nanos()
        );
        rates.push((program, mpps));
    }
    let after = counts(&fp);
    let deltas: Vec<(&str, u64)> = delta(&before, &after)
        .into_iter()
        .filter(|(_, d)| *d > 0)
        .collect();
    println!("slr_router's verdicts in the live runs: {deltas:?}");
    let forwarded = deltas
        .iter()
        .find(|(r, _)| *r == "forwarded")
        .map_or(0, |(_, d)| *d);
    let best = |p: &str| {
        rates
            .iter()
            .filter(|(n, _)| *n == p)
            .map(|(_, r)| *r)
            .fold(0.0, f64::max)
    };
    println!(
        "slr_bounce (bare XDP_TX) in live-frame mode, best of two: {:.2} Mpps",
        best("slr_bounce")
    );
    if forwarded < 2 * u64::from(frames) * 99 / 100 {
        // The kernel recycles live frames with the program's changes in them: a program that
        // rewrites headers sees its own output again and passes it. That rate is not a
        // forwarding rate and is not reported as one; the frame loop below measures it.
        println!(
            "slr_router in live-frame mode: only {forwarded} of {} frames forwarded (recycled \
             frames keep the program's rewrite): no rate; see the frame loop",
            2 * frames
        );
    }

    // The frame loops: za (slr_router) <-> zb (slr_unwrap), and ya (slr_bounce) <-> yb
    // (slr_unwrap, bouncing only).
    // No IPv6 on the loops' links: the kernel's own neighbour and router solicitations would
    // join a loop and be counted as frames that came back.
    for (a, b) in [("za", "zb"), ("ya", "yb")] {
        sh(&format!(
            "ip link add {a} type veth peer name {b} && \
             sysctl -qw net.ipv6.conf.{a}.disable_ipv6=1 net.ipv6.conf.{b}.disable_ipv6=1 && \
             ip link set {a} up && ip link set {b} up"
        ));
    }
    sh("ip addr add 10.252.0.1/24 dev za");
    sh(&format!(
        "ip neigh add 10.252.0.2 lladdr {} dev za nud permanent",
        mac_of("zb")
    ));
    let loop_flow = flows / 2;
    fp.install(
        key(loop_flow),
        FlowValueRecord::new(Ipv4Addr::new(10, 252, 0, 2), 1, 0),
    )
    .expect("the loop's flow");
    fp.attach("za").expect("slr_router on za");
    fp.attach_other("slr_unwrap", "zb")
        .expect("slr_unwrap on zb");
    fp.attach_other("slr_bounce", "ya")
        .expect("slr_bounce on ya");
    fp.attach_other("slr_unwrap", "yb")
        .expect("slr_unwrap on yb");
    let (za, ya) = (
        slr_xdp::if_index("za").unwrap(),
        slr_xdp::if_index("ya").unwrap(),
    );
    let loop_frame = frame(loop_flow);
    // Rates: three rounds of each loop, best of each.
    let (mut router, mut bounce) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let before = counts(&fp);
        let r = frame_loop(&mut fp, "slr_router", za, &loop_frame, budget);
        let (forwarded, passed) = verdicts(&before, &counts(&fp));
        assert!(
            passed <= 128,
            "the loop's frames are forwarded, not passed: {passed}"
        );
        let b = frame_loop(&mut fp, "slr_bounce", ya, &loop_frame, budget);
        let (r_rate, b_rate) = (
            forwarded as f64 / r.took.as_secs_f64() / 1e6,
            budget as f64 / b.took.as_secs_f64() / 1e6,
        );
        println!(
            "frame loop, {budget} frames back: slr_router forwarded {forwarded} in {:?} \
             ({r_rate:.2} Mpps, {passed} passed); slr_bounce in {:?} ({b_rate:.2} Mpps)",
            r.took, b.took
        );
        router = router.max(r_rate);
        bounce = bounce.max(b_rate);
    }
    println!(
        "frame loop, best of three: slr_router {router:.2} Mpps, bare XDP_TX {bounce:.2} Mpps: \
         {:.0} % of the bare loop's rate",
        100.0 * router / bounce
    );

    // Each program's own cost in the loop, by the kernel's run-time statistics (held only for
    // this round: they read a clock twice per run, which slows both loops down).
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let before = counts(&fp);
    let r = frame_loop(&mut fp, "slr_router", za, &loop_frame, budget);
    let (forwarded, _) = verdicts(&before, &counts(&fp));
    let b = frame_loop(&mut fp, "slr_bounce", ya, &loop_frame, budget);
    drop(stats);
    assert!(
        forwarded.abs_diff(r.near.0) <= 128 && r.far.0 >= budget,
        "every run of the router is a forwarded frame and every one came back: {forwarded} \
         forwarded, {} runs, {} back",
        r.near.0,
        r.far.0
    );
    println!(
        "per run, by the kernel's statistics (their own clock reads included): slr_router \
         {:.1} ns, slr_bounce {:.1} ns; slr_unwrap {:.1} ns behind slr_router, {:.1} ns behind \
         slr_bounce",
        Loop::ns(r.near),
        Loop::ns(b.near),
        Loop::ns(r.far),
        Loop::ns(b.far)
    );
}

/// Frames the router forwarded, and the ones it passed for any reason, between two counts.
fn verdicts(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> (u64, u64) {
    let d = delta(before, after);
    let forwarded = d
        .iter()
        .filter(|(n, _)| *n == "forwarded")
        .map(|(_, n)| n)
        .sum();
    let passed = d
        .iter()
        .filter(|(n, _)| *n != "forwarded")
        .map(|(_, n)| n)
        .sum();
    (forwarded, passed)
}

fn delta(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> Vec<(&'static str, u64)> {
    before
        .iter()
        .zip(after)
        .map(|((r, a), (_, b))| (r.as_str(), b - a))
        .collect()
}
