#!/usr/bin/env bash
# End-to-end benchmark (issues #5, #11): slr against HAProxy, against the kernel's own NAT load
# balancing and against no load balancer, in one run, on one lab topology (client c1, router/LB
# node r1, hosts h1 h2 h3).
#
#   bench/e2e.sh [DURATION_S=10] [ROUNDS=3]
#
# Setups, measured in every round (the order rotates from round to round, so slow drifts of this
# noisy machine do not always hit the same setup):
#   slr      `slr router` on r1 with its kernel fast path (router.fast_path = "xdp", the default)
#            and the hosts' agents decapsulating in XDP (host.fast_path = "xdp"); the client dials
#            the VIP 10.99.0.1; the router tunnels each flow to a host, which answers the client
#            directly (DSR). Policy round_robin.
#   slr-tc   the same with fast_path = "tc" at the router and the hosts: the same programs' work
#            at tc ingress, on socket buffers, so the client's GSO packets (up to 64 KiB) cross
#            the router and the hosts whole; no XDP program anywhere.
#   slr-off  the same with fast_path = "off" at the router and the hosts: every packet through
#            the daemons (TUN devices, raw sockets), as before issue #11.
#   The client computes its own transmit checksums for slr (XDP on veth needs it: see
#   set_client_csum) and offloads them for every other setup, as a sender on a NIC does.
#   For every setup but slr, no XDP program runs anywhere (the hosts' agents run with
#   fast_path = "off", the core's end of r1's link has no pass program): on veth an XDP
#   program turns off the peer's segmentation offload, which the peers must not pay.
#   haproxy  Debian's HAProxy in r1's namespace *instead of* slr (the slr router is stopped):
#            TCP mode, roundrobin over the hosts' own addresses, bound to r1's 10.200.2.2:80;
#            the client dials that. It terminates the client's TCP connection and opens one to
#            the host: both directions go through it. nbthread = HAPROXY_THREADS (default 1, like
#            slr's single packet thread).
#   nft      nftables in r1's namespace instead of slr, as kube-proxy's nftables mode balances a
#            service: DNAT of 10.200.2.2:80 to the hosts by `numgen inc mod 3` (round robin) and
#            masquerade (fully-random ports, as kube-proxy), conntrack keeping each connection on
#            its host (the table flushed when the setup starts); both directions through r1's
#            kernel, no process at all.
#   direct   the client dials h1's own address 10.200.3.2: no load balancer, the ceiling.
# Workloads (wrk, each DURATION_S): small answers (`GET /`, ~60 bytes) with keep-alive
# (-t2 -c32) and with `Connection: close` (a TCP connection per request, -t2 -c32); 1 MiB
# downloads (`GET /bytes/1048576`, -t2 -c8, keep-alive); 1 MiB uploads (`POST /upload`,
# wrk Lua body, -t2 -c8, keep-alive).
# CPU: the whole machine's busy time per request (client, LB, host agents, servers and every
# softirq: what XDP and nftables spend is nowhere else), and user+system seconds of the LB
# process (slr router or haproxy; nft has none) per request.
# The lab "be2e" (namespaces slr-be2e-*) and every process started here are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DUR=${1:-10}
ROUNDS=${2:-3}
HAPROXY_THREADS=${HAPROXY_THREADS:-1}
[[ $DUR =~ ^[1-9][0-9]*$ && $DUR -le 120 && $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 10 ]] \
  || { echo "usage: $0 [DURATION_S (1..120)] [ROUNDS (1..10)]" >&2; exit 2; }
for p in wrk haproxy curl nft conntrack ethtool; do
  command -v $p >/dev/null || { echo "$p missing: run scripts/install-deps" >&2; exit 1; }
done
[[ -x $SLR ]] || { echo "$SLR missing: cargo build --release" >&2; exit 1; }

LAB=be2e
NS_C=slr-$LAB-c1
NS_R=slr-$LAB-r1
VIP=10.99.0.1
LB_ADDR=10.200.2.2
HOSTS=(10.200.3.2 10.200.4.2 10.200.5.2)
tmp=$(mktemp -d /tmp/slr-bench-e2e.XXXXXX)
router_pid=""
haproxy_pid=""
wrk_pid=""
cleanup() {
  local rc=$?
  stop_pid "$wrk_pid"
  stop_pid "$router_pid"
  stop_pid "$haproxy_pid"
  "$SLR" lab down "$LAB" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_machine
bench_check_idle
echo "haproxy: $(haproxy -v | head -1)"
echo "wrk: $(wrk -v 2>&1 | head -1)"
lab_down_if_up "$LAB"

cat >"$tmp/lab.toml" <<TOML
[lab]
name = "$LAB"

[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "round_robin"
udp = "pin"

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
TOML
"$SLR" lab up "$tmp/lab.toml" >"$tmp/lab-up.log" 2>&1 || { cat "$tmp/lab-up.log" >&2; exit 1; }
# The client opens ~100k connections per `Connection: close` run, to the same address for slr,
# slr-tc and slr-off: with Linux's defaults (ports 32768-60999, a port in TIME_WAIT not reused
# for 60 s) a run that follows another within a minute finds the port space nearly exhausted and
# wrk spends the machine in connect(). As load generators are set up: a wide port range, and
# TIME_WAIT ports reused for new outgoing connections (timestamps make it safe).
ip netns exec "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
# The lab's own router is replaced by one this script starts and stops per round.
stop_pid "$(lab_pid "$LAB" router)"
router_conf=/run/slr-lab/$LAB/r1.toml

cat >"$tmp/haproxy.cfg" <<CFG
global
    maxconn 4096
    nbthread $HAPROXY_THREADS

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind $LB_ADDR:80
    default_backend hosts

backend hosts
    balance roundrobin
    server h1 ${HOSTS[0]}:80
    server h2 ${HOSTS[1]}:80
    server h3 ${HOSTS[2]}:80
CFG
haproxy -c -q -f "$tmp/haproxy.cfg"

cat >"$tmp/upload.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# Waits (bounded, 10 s) until a GET through URL answers.
wait_http() {
  local i
  for ((i = 0; i < 50; i++)); do
    ip netns exec "$NS_C" curl -s -m 1 -o /dev/null -f "$1/" && return 0
    sleep 0.2
  done
  echo "no answer from $1 within 10 s" >&2
  return 1
}

# Sets the fast path (xdp, tc or off) of the router's file and of every host agent (restarted).
set_fast_path() {
  local mode=$1 h
  [[ $mode == "$fast_path_now" ]] && return 0
  for f in "$router_conf" /run/slr-lab/$LAB/h{1,2,3}.toml; do
    python3 - "$f" "$mode" <<'PY'
import re, sys
path, mode = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r'(?m)^fast_path = ".*"\n', "", text)
text = re.sub(r"(?m)^\[(router|host)\]\n", lambda m: m.group(0) + f'fast_path = "{mode}"\n', text, count=1)
open(path, "w").write(text)
PY
  done
  for h in h1 h2 h3; do
    "$SLR" lab restart "$h" --lab "$LAB" >>"$tmp/lab-restart.log" 2>&1
  done
  fast_path_now=$mode
}
fast_path_now=xdp

# The XDP pass program on the core's end of r1's link: slr's XDP_TX on veth needs it, but it
# turns off segmentation offload in r1's namespace, which HAProxy and nftables in r1's place
# must not pay. The peers also run with the hosts' XDP programs off (an XDP program on a veth
# turns off its peer's segmentation offload too): they measure on a plain kernel.
xdp_pass_now=on
set_xdp_pass() {
  [[ $1 == "$xdp_pass_now" ]] && return 0
  "$SLR" lab xdp-pass r1 "$1" --lab "$LAB" >>"$tmp/lab-restart.log" 2>&1
  xdp_pass_now=$1
}

# The client's transmit checksum offload: off only for slr (XDP). On veth a packet with an
# offloaded, still partial checksum leaves an XDP program as it came, so senders toward XDP must
# compute checksums themselves (the lab turns it off for its clients; docs/DEPLOY.md); a sender
# on a physical NIC has the NIC do it, free. Every other setup keeps the offload, as a real
# sender does: the software checksums are slr's (XDP's) cost in this lab, not the others'.
client_csum_now=off
set_client_csum() {
  [[ $1 == "$client_csum_now" ]] && return 0
  ip netns exec "$NS_C" ethtool -K eth0 tx "$1" >/dev/null
  client_csum_now=$1
}

start_setup() {
  case $1 in
    slr) set_xdp_pass on; set_fast_path xdp; set_client_csum off ;;
    slr-tc) set_xdp_pass off; set_fast_path tc; set_client_csum on ;;
    *) set_xdp_pass off; set_fast_path off; set_client_csum on ;;
  esac
  case $1 in
    slr | slr-tc | slr-off)
      ip netns exec "$NS_R" env NO_COLOR=1 "$SLR" router -c "$router_conf" >>"$tmp/router.log" 2>&1 &
      router_pid=$!
      wait_http "http://$VIP" ;;
    nft)
      # Connections an earlier setup left in r1's conntrack table (HAProxy's, in TIME_WAIT)
      # would catch the new ones' SYNs without NAT.
      ip netns exec "$NS_R" conntrack -F >/dev/null 2>&1 || true
      ip netns exec "$NS_R" nft -f - <<NFT
table ip slr_bench {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr $LB_ADDR tcp dport 80 dnat to numgen inc mod 3 map { 0 : ${HOSTS[0]}, 1 : ${HOSTS[1]}, 2 : ${HOSTS[2]} }
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    ip daddr { ${HOSTS[0]}, ${HOSTS[1]}, ${HOSTS[2]} } tcp dport 80 masquerade fully-random
  }
}
NFT
      wait_http "http://$LB_ADDR" ;;
    haproxy)
      ip netns exec "$NS_R" haproxy -db -f "$tmp/haproxy.cfg" >>"$tmp/haproxy.log" 2>&1 &
      haproxy_pid=$!
      wait_http "http://$LB_ADDR" ;;
    direct) wait_http "http://${HOSTS[0]}" ;;
  esac
}

stop_setup() {
  case $1 in
    slr | slr-tc | slr-off) stop_pid "$router_pid"; router_pid="" ;;
    haproxy) stop_pid "$haproxy_pid"; haproxy_pid="" ;;
    nft) ip netns exec "$NS_R" nft delete table ip slr_bench ;;
  esac
}

url_of() {
  case $1 in
    slr | slr-tc | slr-off) echo "http://$VIP" ;;
    haproxy | nft) echo "http://$LB_ADDR" ;;
    direct) echo "http://${HOSTS[0]}" ;;
  esac
}

lb_pid_of() {
  case $1 in slr | slr-tc | slr-off) echo "$router_pid" ;; haproxy) echo "$haproxy_pid" ;; *) echo "" ;; esac
}

# run_workload ROUND SETUP WORKLOAD: one wrk run; appends a result line.
run_workload() {
  local round=$1 setup=$2 wl=$3 url args=() pid cpu0 cpu1 m0 m1
  url=$(url_of "$setup")
  case $wl in
    small_keepalive) args=(-t2 -c32 "$url/") ;;
    small_close) args=(-t2 -c32 -H "Connection: close" "$url/") ;;
    download_1MiB) args=(-t2 -c8 "$url/bytes/1048576") ;;
    upload_1MiB) args=(-t2 -c8 -s "$tmp/upload.lua" "$url/upload") ;;
  esac
  pid=$(lb_pid_of "$setup")
  cpu0=$([[ -n $pid ]] && cpu_seconds "$pid" || echo 0)
  m0=$(machine_jiffies)
  ip netns exec "$NS_C" timeout -k 5 $((DUR + 30)) wrk -d"${DUR}s" --latency "${args[@]}" \
    >"$tmp/wrk.out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || true
  wrk_pid=""
  m1=$(machine_jiffies)
  cpu1=$([[ -n $pid ]] && cpu_seconds "$pid" || echo 0)
  if [[ -n $pid ]] && ! alive "$pid"; then
    echo "the $setup LB process died during $wl" >&2
    exit 1
  fi
  python3 - "$tmp/wrk.out" "$round" "$setup" "$wl" "$cpu0" "$cpu1" "$m0" "$m1" "${pid:+lb}" \
    >>"$tmp/results" <<'PY'
import re, sys
out, rnd, setup, wl, c0, c1, m0, m1, has_lb = (sys.argv[1:] + [""])[:9]
text = open(out).read()
def dur_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[m.group(2)] if m else float("nan")
m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
if not m:
    sys.stderr.write(text)
    sys.exit("wrk output not understood")
reqs = int(m.group(1))
secs = float(m.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
b0, t0 = map(int, m0.split()); b1, t1 = map(int, m1.split())
import os
hz = os.sysconf("SC_CLK_TCK")
cpu = float(c1) - float(c0)
row = dict(round=rnd, setup=setup, workload=wl, requests=reqs, rps=reqs / secs,
           p50_ms=dur_ms(p50.group(1)) if p50 else float("nan"),
           p99_ms=dur_ms(p99.group(1)) if p99 else float("nan"),
           errors=errs + (int(non2xx.group(1)) if non2xx else 0),
           lb_cpu_pct=100 * cpu / secs if has_lb else float("nan"),
           lb_cpu_us_per_req=1e6 * cpu / max(1, reqs) if has_lb else float("nan"),
           machine_busy_pct=100 * (b1 - b0) / max(1, t1 - t0),
           machine_us_per_req=1e6 * (b1 - b0) / hz / max(1, reqs))
print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
PY
  tail -1 "$tmp/results"
}

SETUPS=(slr slr-tc slr-off haproxy nft direct)
WORKLOADS=(small_keepalive small_close download_1MiB upload_1MiB)
echo "command: bench/e2e.sh $DUR $ROUNDS  (HAPROXY_THREADS=$HAPROXY_THREADS)"
echo "wrk: wrk -d${DUR}s --latency -t2 -c32 URL/ | -t2 -c32 -H 'Connection: close' URL/ |" \
  "-t2 -c8 URL/bytes/1048576 | -t2 -c8 -s upload.lua URL/upload"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < ${#SETUPS[@]}; k++)); do
    setup=${SETUPS[$(((round - 1 + k) % ${#SETUPS[@]}))]}
    start_setup "$setup"
    for wl in "${WORKLOADS[@]}"; do
      run_workload "$round" "$setup" "$wl"
    done
    stop_setup "$setup"
  done
done

python3 - "$tmp/results" <<'PY'
import math, statistics, sys
rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]
def med(setup, wl, key):
    vals = [float(r[key]) for r in rows if r["setup"] == setup and r["workload"] == wl]
    vals = [v for v in vals if not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")
wls = ["small_keepalive", "small_close", "download_1MiB", "upload_1MiB"]
setups = ["slr", "slr-tc", "slr-off", "haproxy", "nft", "direct"]
n = len({r["round"] for r in rows})
print(f"\nmedians of {n} round(s); req/s (MiB/s for 1 MiB transfers); p50/p99 latency ms;"
      " machine CPU µs per request (everything: client, LB, hosts, softirq); LB process CPU")
print(f"{'workload':16} {'setup':8} {'req/s':>9} {'MiB/s':>7} {'p50':>7} {'p99':>7} {'errors':>6}"
      f" {'mach µs/req':>11} {'LB µs/req':>9} {'LB CPU%':>7} {'machine%':>8}")
for wl in wls:
    for s in setups:
        rps = med(s, wl, "rps")
        mib = rps if wl.endswith("1MiB") else float("nan")
        errs = sum(int(r["errors"]) for r in rows if r["setup"] == s and r["workload"] == wl)
        print(f"{wl:16} {s:8} {rps:9.0f} {mib:7.0f} {med(s, wl, 'p50_ms'):7.2f} {med(s, wl, 'p99_ms'):7.2f}"
              f" {errs:6d} {med(s, wl, 'machine_us_per_req'):11.1f} {med(s, wl, 'lb_cpu_us_per_req'):9.1f}"
              f" {med(s, wl, 'lb_cpu_pct'):7.1f} {med(s, wl, 'machine_busy_pct'):8.1f}")
for fast in ("slr", "slr-tc"):
    print(f"\n{fast + ':':8} {'workload':16} {'/direct':>8} {'/haproxy':>8} {'/nft':>6} {'/slr-off':>8}"
          f" {'machine µs/req /nft':>19} {'/haproxy':>8}")
    for wl in wls:
        r = {s: med(s, wl, "rps") for s in setups}
        c = {s: med(s, wl, "machine_us_per_req") for s in setups}
        print(f"{'':8} {wl:16} {r[fast] / r['direct']:8.2f} {r[fast] / r['haproxy']:8.2f} {r[fast] / r['nft']:6.2f}"
              f" {r[fast] / r['slr-off']:8.2f} {c[fast] / c['nft']:19.2f} {c[fast] / c['haproxy']:8.2f}")
PY
