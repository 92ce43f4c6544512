#!/usr/bin/env bash
# End-to-end benchmark (issue #5): slr against HAProxy and against no load balancer, in one run,
# on one lab topology (client c1, router/LB node r1, hosts h1 h2 h3).
#
#   bench/e2e.sh [DURATION_S=10] [ROUNDS=3]
#
# Setups, measured in every round (the order rotates from round to round, so slow drifts of this
# noisy machine do not always hit the same setup):
#   slr      `slr router` on r1; the client dials the VIP 10.99.0.1; the router tunnels each flow
#            to a host, which answers the client directly (DSR). Policy round_robin.
#   haproxy  Debian's HAProxy in r1's namespace *instead of* slr (the slr router is stopped):
#            TCP mode, roundrobin over the hosts' own addresses, bound to r1's 10.200.2.2:80;
#            the client dials that. It terminates the client's TCP connection and opens one to
#            the host: both directions go through it. nbthread = HAPROXY_THREADS (default 1, like
#            slr's single packet thread).
#   direct   the client dials h1's own address 10.200.3.2: no load balancer, the ceiling.
# Workloads (wrk, each DURATION_S): small answers (`GET /`, ~60 bytes) with keep-alive
# (-t2 -c32) and with `Connection: close` (a TCP connection per request, -t2 -c32); 1 MiB
# downloads (`GET /bytes/1048576`, -t2 -c8, keep-alive); 1 MiB uploads (`POST /upload`,
# wrk Lua body, -t2 -c8, keep-alive).
# CPU: user+system seconds of the LB process (slr router or haproxy) over the workload, per
# request; kernel work done in softirq context is charged to whichever process was running, so
# it is partly missing from (or added to) these figures, for both LBs alike. Whole-machine busy
# share is reported too (client, LB and hosts all share the 2 cores).
# The lab "be2e" (namespaces slr-be2e-*) and every process started here are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DUR=${1:-10}
ROUNDS=${2:-3}
HAPROXY_THREADS=${HAPROXY_THREADS:-1}
[[ $DUR =~ ^[1-9][0-9]*$ && $DUR -le 120 && $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 10 ]] \
  || { echo "usage: $0 [DURATION_S (1..120)] [ROUNDS (1..10)]" >&2; exit 2; }
for p in wrk haproxy curl; do
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

start_setup() {
  case $1 in
    slr)
      ip netns exec "$NS_R" env NO_COLOR=1 "$SLR" router -c "$router_conf" >>"$tmp/router.log" 2>&1 &
      router_pid=$!
      wait_http "http://$VIP" ;;
    haproxy)
      ip netns exec "$NS_R" haproxy -db -f "$tmp/haproxy.cfg" >>"$tmp/haproxy.log" 2>&1 &
      haproxy_pid=$!
      wait_http "http://$LB_ADDR" ;;
    direct) wait_http "http://${HOSTS[0]}" ;;
  esac
}

stop_setup() {
  case $1 in
    slr) stop_pid "$router_pid"; router_pid="" ;;
    haproxy) stop_pid "$haproxy_pid"; haproxy_pid="" ;;
  esac
}

url_of() {
  case $1 in slr) echo "http://$VIP" ;; haproxy) echo "http://$LB_ADDR" ;; direct) echo "http://${HOSTS[0]}" ;; esac
}

lb_pid_of() {
  case $1 in slr) echo "$router_pid" ;; haproxy) echo "$haproxy_pid" ;; *) echo "" ;; esac
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
cpu = float(c1) - float(c0)
row = dict(round=rnd, setup=setup, workload=wl, requests=reqs, rps=reqs / secs,
           p50_ms=dur_ms(p50.group(1)) if p50 else float("nan"),
           p99_ms=dur_ms(p99.group(1)) if p99 else float("nan"),
           errors=errs + (int(non2xx.group(1)) if non2xx else 0),
           lb_cpu_pct=100 * cpu / secs if has_lb else float("nan"),
           lb_cpu_us_per_req=1e6 * cpu / max(1, reqs) if has_lb else float("nan"),
           machine_busy_pct=100 * (b1 - b0) / max(1, t1 - t0))
print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
PY
  tail -1 "$tmp/results"
}

SETUPS=(slr haproxy direct)
WORKLOADS=(small_keepalive small_close download_1MiB upload_1MiB)
echo "command: bench/e2e.sh $DUR $ROUNDS  (HAPROXY_THREADS=$HAPROXY_THREADS)"
echo "wrk: wrk -d${DUR}s --latency -t2 -c32 URL/ | -t2 -c32 -H 'Connection: close' URL/ |" \
  "-t2 -c8 URL/bytes/1048576 | -t2 -c8 -s upload.lua URL/upload"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < 3; k++)); do
    setup=${SETUPS[$(((round - 1 + k) % 3))]}
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
setups = ["slr", "haproxy", "direct"]
n = len({r["round"] for r in rows})
print(f"\nmedians of {n} round(s); req/s (MiB/s for 1 MiB transfers); p50/p99 latency ms;"
      " LB CPU µs per request and % of one core")
print(f"{'workload':16} {'setup':8} {'req/s':>9} {'MiB/s':>7} {'p50':>7} {'p99':>7} {'errors':>6}"
      f" {'LB µs/req':>9} {'LB CPU%':>7} {'machine%':>8}")
for wl in wls:
    for s in setups:
        rps = med(s, wl, "rps")
        mib = rps if wl.endswith("1MiB") else float("nan")
        errs = sum(int(r["errors"]) for r in rows if r["setup"] == s and r["workload"] == wl)
        print(f"{wl:16} {s:8} {rps:9.0f} {mib:7.0f} {med(s, wl, 'p50_ms'):7.2f} {med(s, wl, 'p99_ms'):7.2f}"
              f" {errs:6d} {med(s, wl, 'lb_cpu_us_per_req'):9.1f} {med(s, wl, 'lb_cpu_pct'):7.1f}"
              f" {med(s, wl, 'machine_busy_pct'):8.1f}")
print(f"\n{'workload':16} {'slr/haproxy':>11} {'slr/direct':>10} {'haproxy/direct':>14} {'CPU/req slr/haproxy':>19}")
for wl in wls:
    a, b, c = (med(s, wl, "rps") for s in setups)
    ca, cb = med("slr", wl, "lb_cpu_us_per_req"), med("haproxy", wl, "lb_cpu_us_per_req")
    print(f"{wl:16} {a / b:11.2f} {a / c:10.2f} {b / c:14.2f} {ca / cb:19.2f}")
PY
