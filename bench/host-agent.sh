#!/usr/bin/env bash
# Host agent CPU per request: the CPU the three host agents (decapsulation and re-injection)
# spend per HTTP request through the VIP, for small answers with and without keep-alive.
#
#   bench/host-agent.sh [SECONDS]        (root; builds nothing: run `cargo build --release` first)
#
# Brings up examples/site.toml under the lab name "bha", runs wrk from c1 against the VIP, reads
# each host agent's CPU seconds (slr ctl ... stats) before and after, prints microseconds per
# request, and tears the lab down (also on error or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
SLR=target/release/slr
LAB=bha
topo=$(mktemp /tmp/slr-bench-bha.XXXXXX.toml)
trap '"$SLR" lab down "$LAB" >/dev/null 2>&1 || true; rm -f "$topo"' EXIT INT TERM
sed 's/^name = "site"/name = "bha"/' examples/site.toml >"$topo"
"$SLR" lab up "$topo" >/dev/null
cpu() {
  local sum=0 h
  for h in h1 h2 h3; do
    sum=$(python3 -c "import json,sys; print($sum + json.load(sys.stdin)['cpu_seconds'])" \
      < <("$SLR" ctl "/run/slr-lab/$LAB/$h.sock" stats --json))
  done
  echo "$sum"
}
for mode in keepalive close; do
  args=(-t2 -c32 -d"${DUR}s")
  [[ $mode == close ]] && args+=(-H "Connection: close")
  c0=$(cpu)
  out=$(ip netns exec "slr-$LAB-c1" timeout -k 5 $((DUR + 30)) wrk "${args[@]}" http://10.99.0.1/)
  c1=$(cpu)
  reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
  python3 -c "
c0, c1, reqs, dur = $c0, $c1, $reqs, $DUR
print(f'$mode: {reqs} requests in {dur} s ({reqs/dur:.0f}/s); host agents {c1-c0:.2f} CPU s '
      f'= {1e6*(c1-c0)/max(1,reqs):.1f} us per request ({100*(c1-c0)/dur:.0f}% of one core)')"
done
