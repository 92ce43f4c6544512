#!/usr/bin/env bash
# Router data path benchmark (issues #5 and #11): a flood of small UDP packets to the VIP, from
# a client namespace of a lab, through the router and to the hosts, once for each fast path
# setting in one run: "off" (every packet through the router's TUN device, the routing core and
# the IP-in-IP socket, and the host agents' raw socket and TUN) and "xdp" (established flows
# forwarded by the router's XDP program and decapsulated by the hosts' XDP program; new flows
# through the core).
#
#   bench/datapath.sh [DURATION_S=10] [RUNS=3]
#
# Environment:
#   GEN=kernel (default) | trafgen. kernel: `slr lab generate` (an XDP program in live-frame
#     mode writes and transmits every frame: the generator costs the path almost nothing, see
#     FIELD-NOTES); trafgen: netsniff-ng's PF_PACKET TX_RING generator with random source ports.
#   FAST_PATHS="off xdp" (default): the setups, in order, each a fresh lab.
#   FLOWS=4096: flows of the kernel generator (source address x port); SRC_ADDRS=16 client
#     addresses 10.201.0.0..N-1 (both generators; with trafgen's random source ports, N x 65,536
#     possible flows, so a 10 s flood mixes new and established flows).
#   GEN_THREADS=1: the kernel generator's threads, one per CPU from CPU 0.
#   CORE_XDP=0 (default) | 1: 1 makes the lab's core (which stands for the network) forward in
#     XDP toward routers and hosts that run the fast path (`slr lab core-xdp on`), so that the
#     machine's CPU goes to the path under test; with the fast path off it changes nothing (no
#     node has an XDP program to take redirected frames), so compare setups with CORE_XDP=0.
#   UDP_MODE=pin|per_datagram (default pin: every datagram looks up or creates a flow).
#   PIN=1 (default) pins the router process to CPU 1 and the generator to CPU 0; PIN=0 lets the
#     scheduler place them.
#   HOST_AGENTS=1 (default) keeps the host agents running (full path: they, or their XDP
#     program, decapsulate and deliver every packet, on the same 2 cores); HOST_AGENTS=0 stops
#     them after the lab is up and the router is measured alone: an nftables netdev-ingress rule
#     on each host's veth drops the tunnelled packets before IP (see below why).
#
# Sink: with the host agents running, a python3 process in each host namespace holds a UDP
# socket on port 9 and never reads it. The kernel drops the datagrams when its buffer is full
# instead of answering each with an ICMP port unreachable (rate-limited, but its route lookup is
# paid per packet, on the same 2 cores the router needs).
#
# Frames: 64 bytes (60 + FCS), IPv4/UDP to 10.99.0.1:9. Measured from the router's counters
# (the core's slr_router_*_total and the XDP program's slr_fast_path_packets_total deltas),
# the hosts' (slr_host_delivered_packets_total: inner packets delivered, by the agent or its
# XDP program), the kernel's (slr0 tx_dropped: packets the kernel could not queue to the TUN
# because the router did not read them fast enough), and the CPU time of the processes and the
# machine (/proc). The lab "bdp" (namespaces slr-bdp-*) is created and always removed.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DUR=${1:-10}
RUNS=${2:-3}
GEN=${GEN:-kernel}
FAST_PATHS=${FAST_PATHS:-off xdp}
FLOWS=${FLOWS:-4096}
GEN_THREADS=${GEN_THREADS:-1}
CORE_XDP=${CORE_XDP:-0}
UDP_MODE=${UDP_MODE:-pin}
SRC_ADDRS=${SRC_ADDRS:-16}
PIN=${PIN:-1}
HOST_AGENTS=${HOST_AGENTS:-1}
[[ $DUR =~ ^[1-9][0-9]*$ && $DUR -le 120 && $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 20 ]] \
  || { echo "usage: $0 [DURATION_S (1..120)] [RUNS (1..20)]" >&2; exit 2; }
[[ $UDP_MODE == pin || $UDP_MODE == per_datagram ]] || { echo "UDP_MODE: pin|per_datagram" >&2; exit 2; }
[[ $SRC_ADDRS =~ ^[1-9][0-9]*$ && $SRC_ADDRS -le 256 ]] || { echo "SRC_ADDRS: 1..256" >&2; exit 2; }
[[ $PIN == [01] && $HOST_AGENTS == [01] && $CORE_XDP == [01] ]] || { echo "PIN, HOST_AGENTS and CORE_XDP: 0 or 1" >&2; exit 2; }
[[ $GEN == kernel || $GEN == trafgen ]] || { echo "GEN: kernel|trafgen" >&2; exit 2; }
for f in $FAST_PATHS; do [[ $f == off || $f == xdp ]] || { echo "FAST_PATHS: off and/or xdp" >&2; exit 2; }; done
[[ $FLOWS =~ ^[1-9][0-9]*$ && $GEN_THREADS =~ ^[1-9]$ ]] || { echo "FLOWS: >= 1; GEN_THREADS: 1..9" >&2; exit 2; }
[[ $GEN == kernel ]] || command -v trafgen >/dev/null || { echo "trafgen missing: run scripts/install-deps" >&2; exit 1; }
[[ $HOST_AGENTS == 1 ]] || command -v nft >/dev/null || { echo "nft missing: run scripts/install-deps" >&2; exit 1; }
[[ -x $SLR ]] || { echo "$SLR missing: cargo build --release" >&2; exit 1; }

LAB=bdp
NS_C=slr-$LAB-c1
NS_R=slr-$LAB-r1
tmp=$(mktemp -d /tmp/slr-bench-datapath.XXXXXX)
gen_pid=""
sink_pids=()
cleanup() {
  local rc=$?
  [[ -n $gen_pid ]] && stop_pid "$gen_pid"
  for p in "${sink_pids[@]}"; do stop_pid "$p"; done
  "$SLR" lab down "$LAB" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_machine
bench_check_idle
lab_down_if_up "$LAB"

cat >"$tmp/lab.toml" <<TOML
[lab]
name = "$LAB"

[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "maglev"
udp = "$UDP_MODE"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "r1"
role = "router"

[[nodes]]
name = "h1"
role = "host"

[[nodes]]
name = "h2"
role = "host"

[[nodes]]
name = "h3"
role = "host"

# Room for every flow of the flood (SRC_ADDRS x 65,536 at most). Health checks off: under a
# flood that overfills the TUN queue their probes are dropped like any packet (they share the
# data path by design), hosts would be marked down and the rest of the flood dropped as
# no_next_hop, which measures the checks, not the forwarding.
# The XDP flow map holds 1,048,576 of them (104 B each in the kernel); flows beyond stay on the
# TUN path, counted.
[router_config]
flow_table = { max_flows = 4000000 }
health_check = { enabled = false }
router = { fast_path_max_flows = 1048576 }
TOML

# Counters of interest, one "name value" per line.
counters() {
  ip netns exec "$NS_R" curl -s -m 5 http://127.0.0.1:9464/metrics | awk '
    /^slr_router_packets_total/ { print "in", $2 }
    /^slr_router_tunneled_packets_total/ { print "tunneled", $2 }
    /^slr_fast_path_packets_total\{reason="forwarded"/ { print "xdp_forwarded", $2 }
    /^slr_router_flows_created_total/ { print "flows_created", $2 }
    /^slr_router_flows_active/ { print "flows_active", $2 }
    /^slr_router_drops_total/ { d += $2 }
    /^slr_router_(tunnel_send|device)_drops_total/ { sd += $2 }
    END { print "drops", d + 0; print "send_drops", sd + 0 }'
  echo "tun_tx_dropped $(ip netns exec "$NS_R" cat /sys/class/net/slr0/statistics/tx_dropped)"
  local h arrived=0 n
  for h in h1 h2 h3; do
    if [[ $HOST_AGENTS == 0 ]]; then
      # Tunnelled packets that reached the host's veth (the sink's counter).
      n=$(ip netns exec "slr-$LAB-$h" nft list table netdev slr_bench_sink | awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }')
    else
      # Inner packets the host delivered to its stack (by the agent or its XDP program).
      n=$(ip netns exec "slr-$LAB-$h" curl -s -m 5 http://127.0.0.1:9465/metrics | awk '/^slr_host_delivered_packets_total/ { print $2 }')
    fi
    arrived=$(awk -v a="$arrived" -v b="${n:-0}" 'BEGIN { printf "%.0f", a + b }')
  done
  echo "arrived $arrived"
  echo "router_cpu $(cpu_seconds "$rpid")"
  local c=0
  for h in $hpids; do c=$(awk -v a="$c" -v b="$(cpu_seconds "$h")" 'BEGIN { print a + b }'); done
  echo "hosts_cpu $c"
  echo "machine $(machine_jiffies)"
}

# One setup: a fresh lab with fast path $1, RUNS runs of the flood.
run_setup() {
  local fp=$1 run
  "$SLR" lab up --fast-path "$fp" "$tmp/lab.toml" >"$tmp/lab-up.log" 2>&1 || { cat "$tmp/lab-up.log" >&2; exit 1; }
  rpid=$(lab_pid "$LAB" router)
  hpids=$(lab_pid "$LAB" host)
  local rss0
  rss0=$(rss_kib "$rpid")
  [[ $CORE_XDP == 0 ]] || "$SLR" lab core-xdp on --lab "$LAB"
  if [[ $HOST_AGENTS == 0 ]]; then
    for p in $hpids; do stop_pid "$p"; done
    hpids=""
    # The router alone: each host drops the tunnelled packets at its veth's ingress hook, before
    # IP (and before XDP, which would decapsulate them: the agents' XDP programs stay attached
    # after a stop). On separate machines the receivers' work costs the router nothing; on veth
    # it runs in the sender's softirq, i.e. on the router's CPU. Without this sink each host's
    # kernel would answer IP protocol 4 (no handler) with a route lookup for a
    # protocol-unreachable per packet (rate-limited after the lookup), measured at ~30 % of the
    # router's CPU.
    for h in h1 h2 h3; do
      ip netns exec "slr-$LAB-$h" ip link set dev eth0 xdp off 2>/dev/null || true
      ip netns exec "slr-$LAB-$h" nft -f - <<'NFT'
table netdev slr_bench_sink {
  chain ingress {
    type filter hook ingress device "eth0" priority 0; policy accept;
    ip protocol 4 counter drop
  }
}
NFT
    done
  fi
  local sink_life=$((RUNS * (DUR + 10) + 30)) h
  sink_pids=()
  for h in h1 h2 h3; do
    [[ $HOST_AGENTS == 1 ]] || break
    ip netns exec "slr-$LAB-$h" python3 -c '
import socket, sys, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 9))
time.sleep(float(sys.argv[1]))' "$sink_life" &
    sink_pids+=($!)
  done
  local gen_cpu=""
  if [[ $PIN == 1 ]]; then
    taskset -a -p -c 1 "$rpid" >/dev/null
    gen_cpu="taskset -c 0"
  fi
  local dmac smac
  dmac=$(ip netns exec slr-$LAB-core cat /sys/class/net/v-c1/address)
  smac=$(ip netns exec "$NS_C" cat /sys/class/net/eth0/address)
  cat >"$tmp/udp.trafgen" <<CFG
{
  eth(da=$dmac, sa=$smac),
  ipv4(sa=10.201.0.0, sa[3]=drnd(0, $((SRC_ADDRS - 1))), da=10.99.0.1, ttl=64, df),
  udp(sp=drnd(), dp=9),
  fill(0x00, 18)
}
CFG
  local gen_cmd
  if [[ $GEN == kernel ]]; then
    gen_cmd="$SLR lab generate c1 --lab $LAB --to 10.99.0.1:9 --from 10.201.0.0 --sources $SRC_ADDRS --flows $FLOWS --seconds $DUR --threads $GEN_THREADS"
  else
    gen_cmd="${gen_cpu:+$gen_cpu }trafgen -o eth0 -P 1 -q -i udp.trafgen (in $NS_C, ${DUR}s per run)"
  fi
  echo
  echo "setup: fast_path=$fp; generator: $gen_cmd"
  [[ $GEN == kernel ]] || sed 's/^/  /' "$tmp/udp.trafgen"
  for ((run = 1; run <= RUNS; run++)); do
    counters >"$tmp/before"
    if [[ $GEN == kernel ]]; then
      $gen_cmd >"$tmp/gen.$fp.$run" 2>&1 &
    else
      # trafgen has no duration: timeout stops it with SIGINT (it prints its totals), then kills.
      ip netns exec "$NS_C" timeout -s INT -k 5 "$DUR" $gen_cpu trafgen -o eth0 -P 1 -q \
        -i "$tmp/udp.trafgen" >"$tmp/gen.$fp.$run" 2>&1 &
    fi
    gen_pid=$!
    wait "$gen_pid" || { [[ $GEN == trafgen ]] || { cat "$tmp/gen.$fp.$run" >&2; exit 1; }; }
    gen_pid=""
    sleep 0.5 # let the TUN queue drain
    counters >"$tmp/after"
    python3 - "$tmp/before" "$tmp/after" "$tmp/gen.$fp.$run" "$run" "$DUR" "$fp" >>"$tmp/results" <<'PY'
import json, re, sys
def load(p):
    d = {}
    for line in open(p):
        k, *v = line.split()
        d[k] = [float(x) for x in v]
    return d
b, a = load(sys.argv[1]), load(sys.argv[2])
gen = open(sys.argv[3]).read()
run, dur, fp = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
if gen.lstrip().startswith("{"):
    g = json.loads(gen.strip().splitlines()[-1])
    sent, secs = g["frames"], g["seconds"]
else:
    sent = sum(int(x) for x in re.findall(r"(\d+) packets outgoing", gen))
    m = re.search(r"(\d+) sec, (\d+) usec on CPU", gen)
    secs = int(m.group(1)) + int(m.group(2)) / 1e6 if m else dur
d = {k: a[k][0] - b[k][0] for k in a}
d.setdefault("xdp_forwarded", 0.0)
busy = (a["machine"][0] - b["machine"][0]) / max(1.0, a["machine"][1] - b["machine"][1])
fwd = d["tunneled"] + d["xdp_forwarded"]
row = {
    "setup": fp, "run": run, "secs": secs, "offered_kpps": sent / secs / 1e3,
    "router_in_kpps": d["in"] / secs / 1e3, "forwarded_kpps": fwd / secs / 1e3,
    "xdp_pct": 100 * d["xdp_forwarded"] / max(1, fwd),
    "arrived_kpps": d["arrived"] / secs / 1e3,
    "arrived_pct": 100 * d["arrived"] / max(1, sent),
    "tun_drop_kpps": d["tun_tx_dropped"] / secs / 1e3, "core_drops": d["drops"],
    "send_drops": d["send_drops"],
    "new_flow_pct": 100 * d["flows_created"] / max(1, fwd),
    "flows_active": a["flows_active"][0],
    "router_cpu_pct": 100 * d["router_cpu"] / secs,
    "hosts_cpu_pct": 100 * d["hosts_cpu"] / secs, "machine_busy_pct": 100 * busy,
    "machine_ns_per_pkt": 1e9 * busy * 2 * secs / max(1, d["arrived"]) if d["arrived"] else 0,
}
print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
PY
    tail -1 "$tmp/results"
  done
  # Memory for the flows held: the router process's resident set (its growth since the lab
  # came up) and what the kernel charges for the pinned flow map.
  local rss1 flows memlock
  rss1=$(rss_kib "$rpid")
  flows=$(ip netns exec "$NS_R" curl -s -m 5 http://127.0.0.1:9464/metrics | awk '/^slr_router_flows_active/ { print $2 }')
  memlock=0
  if [[ -e /run/slr-lab/$LAB/bpf/r1/flows ]]; then
    memlock=$(bpftool -j map show pinned "/run/slr-lab/$LAB/bpf/r1/flows" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("bytes_memlock", 0))')
  fi
  python3 - "$fp" "$rss0" "$rss1" "${flows:-0}" "$memlock" <<'PY'
import sys
fp, rss0, rss1, flows, memlock = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
grew = (rss1 - rss0) * 1024
per = lambda b: f"{b / flows:.0f} B per flow" if flows else "-"
print(f"memory, fast_path={fp}: {flows:.0f} flows held; router resident {rss1 / 1024:.0f} MiB "
      f"(+{grew / 2**20:.0f} MiB since up: {per(grew)}); flow map {memlock / 2**20:.0f} MiB "
      f"(bpftool memlock: {per(memlock)}); both {(grew + memlock) / 2**20:.0f} MiB")
PY
  for p in "${sink_pids[@]}"; do stop_pid "$p"; done
  sink_pids=()
  "$SLR" lab down "$LAB" >/dev/null 2>&1
}

echo "command: bench/datapath.sh $DUR $RUNS  (GEN=$GEN FAST_PATHS=\"$FAST_PATHS\" FLOWS=$FLOWS GEN_THREADS=$GEN_THREADS CORE_XDP=$CORE_XDP UDP_MODE=$UDP_MODE SRC_ADDRS=$SRC_ADDRS PIN=$PIN HOST_AGENTS=$HOST_AGENTS)"
for fp in $FAST_PATHS; do
  run_setup "$fp"
done

python3 - "$tmp/results" "$(nproc)" <<'PY'
import statistics, sys
rows = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1])]
cores = int(sys.argv[2])
cols = [("offered_kpps", "offered kpps"), ("router_in_kpps", "core read kpps"),
        ("forwarded_kpps", "forwarded kpps"), ("xdp_pct", "forwarded by XDP %"),
        ("arrived_kpps", "arrived at hosts kpps"), ("arrived_pct", "arrived % of offered"),
        ("tun_drop_kpps", "TUN-queue drops kpps"),
        ("core_drops", "core drops (pkts)"), ("send_drops", "send drops (pkts)"),
        ("new_flow_pct", "new flows % of fwd"),
        ("router_cpu_pct", "router process CPU %"), ("hosts_cpu_pct", "host agents CPU %"),
        ("machine_busy_pct", "machine busy %"), ("machine_ns_per_pkt", "machine CPU ns/arrived")]
medians = {}
for setup in dict.fromkeys(r["setup"] for r in rows):
    rs = [r for r in rows if r["setup"] == setup]
    print(f"\nfast_path={setup}")
    print(f"{'metric':26} " + " ".join(f"{'run ' + r['run']:>9}" for r in rs) + f" {'median':>9}")
    for k, name in cols:
        vals = [float(r[k]) for r in rs]
        medians[(setup, k)] = statistics.median(vals)
        print(f"{name:26} " + " ".join(f"{v:9.1f}" for v in vals) + f" {statistics.median(vals):9.1f}")
print()
for setup in dict.fromkeys(r["setup"] for r in rows):
    print(f"fast_path={setup}: median {medians[(setup, 'arrived_kpps')]:.1f} kpps arrived at the hosts, "
          f"{medians[(setup, 'arrived_pct')]:.1f} % of the offered {medians[(setup, 'offered_kpps')]:.1f} kpps")
if ("xdp", "arrived_kpps") in medians and ("off", "arrived_kpps") in medians:
    ratio = medians[("xdp", "arrived_kpps")] / max(0.001, medians[("off", "arrived_kpps")])
    print(f"xdp / off, arrived at the hosts: {ratio:.1f}x (same generator, same run)")
PY
