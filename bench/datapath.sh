#!/usr/bin/env bash
# Router data path benchmark (issue #5): a flood of small UDP packets to the VIP, from a client
# namespace of a lab, through the router's TUN device, the routing core and the IP-in-IP socket.
#
#   bench/datapath.sh [DURATION_S=10] [RUNS=3]
#
# Environment: UDP_MODE=pin|per_datagram (default pin: every datagram looks up or creates a
# flow), SRC_ADDRS=N client addresses 10.201.0.0..N-1 (default 16; with random source ports,
# N x 65,536 possible flows, so a 10 s flood mixes new and established flows), PIN=1 (default)
# pins the router process to CPU 1 and the generator to CPU 0, PIN=0 lets the scheduler place
# them. HOST_AGENTS=1 (default) keeps the host agents running (full path: they decapsulate and
# deliver every packet, on the same 2 cores); HOST_AGENTS=0 stops them after the lab is up and
# the router is measured alone: an nftables netdev-ingress rule on each host's veth drops the
# tunnelled packets before IP (see below why).
#
# Sink: with the host agents running, a python3 process in each host namespace holds a UDP
# socket on port 9 and never reads it. The kernel drops the datagrams when its buffer is full
# instead of answering each with an ICMP port unreachable (rate-limited, but its route lookup is
# paid per packet, on the same 2 cores the router needs).
#
# Generator: trafgen (netsniff-ng), TX_RING on the client's veth, 64-byte frames (60 + FCS):
# IPv4/UDP to 10.99.0.1:9 from random source ports (port 9: the sink above, or nothing).
# Measured from the router's own counters (slr_router_*_total deltas) and the kernel's
# (slr0 tx_dropped: packets the kernel could not queue to the TUN because the router did not
# read them fast enough). The lab "bdp" (namespaces slr-bdp-*) is created and always removed.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DUR=${1:-10}
RUNS=${2:-3}
UDP_MODE=${UDP_MODE:-pin}
SRC_ADDRS=${SRC_ADDRS:-16}
PIN=${PIN:-1}
HOST_AGENTS=${HOST_AGENTS:-1}
[[ $DUR =~ ^[1-9][0-9]*$ && $DUR -le 120 && $RUNS =~ ^[1-9][0-9]*$ && $RUNS -le 20 ]] \
  || { echo "usage: $0 [DURATION_S (1..120)] [RUNS (1..20)]" >&2; exit 2; }
[[ $UDP_MODE == pin || $UDP_MODE == per_datagram ]] || { echo "UDP_MODE: pin|per_datagram" >&2; exit 2; }
[[ $SRC_ADDRS =~ ^[1-9][0-9]*$ && $SRC_ADDRS -le 256 ]] || { echo "SRC_ADDRS: 1..256" >&2; exit 2; }
[[ $PIN == [01] && $HOST_AGENTS == [01] ]] || { echo "PIN and HOST_AGENTS: 0 or 1" >&2; exit 2; }
command -v trafgen >/dev/null || { echo "trafgen missing: run scripts/install-deps" >&2; exit 1; }
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
[router_config]
flow_table = { max_flows = 4000000 }
health_check = { enabled = false }
TOML
"$SLR" lab up "$tmp/lab.toml" >"$tmp/lab-up.log" 2>&1 || { cat "$tmp/lab-up.log" >&2; exit 1; }
rpid=$(lab_pid "$LAB" router)
hpids=$(lab_pid "$LAB" host)
if [[ $HOST_AGENTS == 0 ]]; then
  for p in $hpids; do stop_pid "$p"; done
  hpids=""
  # The router alone: each host drops the tunnelled packets at its veth's ingress hook, before
  # IP. On separate machines the receivers' work costs the router nothing; on veth it runs in
  # the sender's softirq, i.e. on the router's CPU. Without this sink each host's kernel would
  # answer IP protocol 4 (no handler) with a route lookup for a protocol-unreachable per packet
  # (rate-limited after the lookup), measured at ~30 % of the router's CPU.
  for h in h1 h2 h3; do
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
sink_life=$((RUNS * (DUR + 10) + 30))
for h in h1 h2 h3; do
  [[ $HOST_AGENTS == 1 ]] || break
  ip netns exec "slr-$LAB-$h" python3 -c '
import socket, sys, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 9))
time.sleep(float(sys.argv[1]))' "$sink_life" &
  sink_pids+=($!)
done
if [[ $PIN == 1 ]]; then
  taskset -a -p -c 1 "$rpid" >/dev/null
  gen_cpu="taskset -c 0"
else
  gen_cpu=""
fi

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

# Router counters of interest, one "name value" per line (drops summed over reasons).
router_counters() {
  ip netns exec "$NS_R" curl -s -m 5 http://127.0.0.1:9464/metrics | awk '
    /^slr_router_packets_total/ { print "in", $2 }
    /^slr_router_tunneled_packets_total/ { print "tunneled", $2 }
    /^slr_router_flows_created_total/ { print "flows_created", $2 }
    /^slr_router_flows_active/ { print "flows_active", $2 }
    /^slr_router_drops_total/ { d += $2 }
    /^slr_router_(tunnel_send|device)_drops_total/ { sd += $2 }
    END { print "drops", d + 0; print "send_drops", sd + 0 }'
  echo "tun_tx_dropped $(ip netns exec "$NS_R" cat /sys/class/net/slr0/statistics/tx_dropped)"
  # Tunnelled packets that reached the hosts' veths (the sink's counters; 0 with the agents on).
  local h arrived=0 n
  for h in h1 h2 h3; do
    [[ $HOST_AGENTS == 0 ]] || break
    n=$(ip netns exec "slr-$LAB-$h" nft list table netdev slr_bench_sink | awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }')
    arrived=$((arrived + ${n:-0}))
  done
  echo "arrived $arrived"
  echo "router_cpu $(cpu_seconds "$rpid")"
  local h c=0
  for h in $hpids; do c=$(awk -v a="$c" -v b="$(cpu_seconds "$h")" 'BEGIN { print a + b }'); done
  echo "hosts_cpu $c"
  echo "machine $(machine_jiffies)"
}

echo "command: bench/datapath.sh $DUR $RUNS  (UDP_MODE=$UDP_MODE SRC_ADDRS=$SRC_ADDRS PIN=$PIN HOST_AGENTS=$HOST_AGENTS)"
echo "generator: ${gen_cpu:+$gen_cpu }trafgen -o eth0 -P 1 -q -i udp.trafgen (in $NS_C, ${DUR}s per run):"
sed 's/^/  /' "$tmp/udp.trafgen"
for ((run = 1; run <= RUNS; run++)); do
  router_counters >"$tmp/before"
  # trafgen has no duration: timeout stops it with SIGINT (it prints its totals), then kills.
  ip netns exec "$NS_C" timeout -s INT -k 5 "$DUR" $gen_cpu trafgen -o eth0 -P 1 -q \
    -i "$tmp/udp.trafgen" >"$tmp/gen.$run" 2>&1 &
  gen_pid=$!
  wait "$gen_pid" || true
  gen_pid=""
  sleep 0.5 # let the TUN queue drain
  router_counters >"$tmp/after"
  python3 - "$tmp/before" "$tmp/after" "$tmp/gen.$run" "$run" "$DUR" >>"$tmp/results" <<'PY'
import re, sys
def load(p):
    d = {}
    for line in open(p):
        k, *v = line.split()
        d[k] = [float(x) for x in v]
    return d
b, a = load(sys.argv[1]), load(sys.argv[2])
gen = open(sys.argv[3]).read()
run, dur = int(sys.argv[4]), float(sys.argv[5])
sent = sum(int(x) for x in re.findall(r"(\d+) packets outgoing", gen))
m = re.search(r"(\d+) sec, (\d+) usec on CPU", gen)
secs = int(m.group(1)) + int(m.group(2)) / 1e6 if m else dur
d = {k: a[k][0] - b[k][0] for k in a}
busy = (a["machine"][0] - b["machine"][0]) / max(1.0, a["machine"][1] - b["machine"][1])
row = {
    "run": run, "secs": secs, "offered_kpps": sent / secs / 1e3,
    "router_in_kpps": d["in"] / secs / 1e3, "forwarded_kpps": d["tunneled"] / secs / 1e3,
    "arrived_kpps": d["arrived"] / secs / 1e3,
    "tun_drop_kpps": d["tun_tx_dropped"] / secs / 1e3, "core_drops": d["drops"],
    "send_drops": d["send_drops"],
    "new_flow_pct": 100 * d["flows_created"] / max(1, d["in"]),
    "flows_active": a["flows_active"][0],
    "router_cpu_pct": 100 * d["router_cpu"] / secs,
    "router_ns_per_pkt": 1e9 * d["router_cpu"] / max(1, d["tunneled"]),
    "hosts_cpu_pct": 100 * d["hosts_cpu"] / secs, "machine_busy_pct": 100 * busy,
}
print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
PY
  tail -1 "$tmp/results"
done

python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1])]
cols = [("offered_kpps", "offered kpps"), ("router_in_kpps", "router read kpps"),
        ("forwarded_kpps", "forwarded kpps"),
        ("arrived_kpps", "arrived at hosts kpps"), ("tun_drop_kpps", "TUN-queue drops kpps"),
        ("core_drops", "core drops (pkts)"), ("send_drops", "send drops (pkts)"), ("new_flow_pct", "new flows % of read"),
        ("router_cpu_pct", "router CPU %"), ("router_ns_per_pkt", "router CPU ns/pkt"),
        ("hosts_cpu_pct", "host agents CPU %"), ("machine_busy_pct", "machine busy %")]
print(f"\n{'metric':24} " + " ".join(f"{'run ' + r['run']:>9}" for r in rows) + f" {'median':>9}")
for k, name in cols:
    vals = [float(r[k]) for r in rows]
    if k == "arrived_kpps" and not any(vals):
        continue  # the host agents ran: no sink counter
    print(f"{name:24} " + " ".join(f"{v:9.1f}" for v in vals) + f" {statistics.median(vals):9.1f}")
med = statistics.median(float(r["forwarded_kpps"]) for r in rows)
print(f"\nforwarded (median): {med:.1f} kpps; target >= 150 kpps: {'met' if med >= 150 else 'NOT met'}")
PY
