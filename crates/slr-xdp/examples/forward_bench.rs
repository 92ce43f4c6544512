//! Forwarding benchmark of the router's XDP program (issue 11, docs/BENCHMARKS.md): frames
//! generated in the kernel (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`) on one
//! core, through `slr_router` with a flow map of N entries, against `slr_bounce` (the bare
//! minimum of an XDP_TX forwarder) in the same run; and the program alone (no transmit) in ns
//! per packet.
//!
//! `cargo run --release -p slr-xdp --example forward_bench -- [FLOWS] [FRAMES]` (root; a
//! private network namespace of its own; defaults 1,000,000 flows, 20,000,000 frames).

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
    slr_io::netns::run_in_private_netns(move || run(flows, frames)).expect("private netns (root)");
}

fn run(flows: u32, frames: u32) {
    sh("ip link add xa type veth peer name xb && ip link set xa up && ip link set xb up");
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

    // The program alone: no transmit, the kernel's average per run.
    let alone = fp.time_program(&f, ingress, 1_000_000).expect("test run");
    println!(
        "slr_router alone ({flows} flows in the map): {} ns per packet",
        alone.as_nanos()
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
    let deltas: Vec<(&str, u64)> = before
        .iter()
        .zip(&after)
        .map(|((r, a), (_, b))| (r.as_str(), b - a))
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
    let (router, bounce) = (best("slr_router"), best("slr_bounce"));
    println!("slr_bounce (bare XDP_TX), best of two: {bounce:.2} Mpps");
    if forwarded < 2 * u64::from(frames) * 99 / 100 {
        // The kernel recycles live frames with the program's changes in them: a program that
        // rewrites headers sees its own output again and passes it. The rate is then not a
        // forwarding rate and is not reported as one.
        println!(
            "slr_router live rate not measurable this way: only {forwarded} of {} frames were \
             forwarded (recycled frames keep the program's rewrite)",
            2 * frames
        );
    } else {
        println!(
            "slr_router, best of two: {router:.2} Mpps: {:.0} % of the bare XDP_TX rate",
            100.0 * router / bounce
        );
    }
}
