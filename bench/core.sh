#!/usr/bin/env bash
# Core benchmark (issue #5): the routing core alone, no I/O.
#
#   bench/core.sh [RUNS]      # RUNS (default 1) runs of `cargo bench -p slr-core --bench core`
#
# Prints, per benchmark, criterion's estimate of ns per packet (or per new flow) and the
# packets/s it means on one core, and the median over RUNS; checks the issue #5 targets
# (>= 5 M established packets/s/core, i.e. <= 200 ns; >= 1 M new flows/s/core, <= 1 us).
# See crates/slr-core/benches/core.rs for what each benchmark does.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
runs=${1:-1}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }

bench_machine
bench_check_idle
echo "command: cargo bench -p slr-core --bench core   (x${runs})"
cargo bench -p slr-core --bench core --no-run >/dev/null 2>&1 \
  || cargo bench -p slr-core --bench core --no-run

logs=()
trap 'rm -f "${logs[@]}"' EXIT
for ((i = 1; i <= runs; i++)); do
  log=$(mktemp /tmp/slr-bench-core.XXXXXX)
  logs+=("$log")
  cargo bench -p slr-core --bench core 2>/dev/null >"$log"
  echo "run $i done ($(cut -d' ' -f1 /proc/loadavg) load)"
done

python3 - "${logs[@]}" <<'PY'
import re, statistics, sys
UNIT = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
runs = []
for path in sys.argv[1:]:
    res, name = {}, None
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^(core/\S+)", line)
        if m:
            name = m.group(1)
        m = re.search(r"time:\s+\[(\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\]", line)
        if m and name:
            # Batch benchmarks time 64 packets per iteration: report per packet.
            per = 64 if name.endswith("/batch64") else 1
            res[name] = float(m.group(3)) * UNIT[m.group(4)] / per
            name = None
    runs.append(res)
names = list(runs[0])
targets = {
    "core/established/lookup+encap/1M": 200.0,
    "core/established/lookup+encap/1M/batch64": 200.0,
    "core/new_flow/syn+maglev/1M": 1000.0,
}
print(f"\n{'benchmark (batch64: per packet)':44} {'ns/op (each run)':>20} {'median ns':>10} {'M ops/s':>8}  target")
for n in names:
    vals = [r[n] for r in runs if n in r]
    med = statistics.median(vals)
    t = targets.get(n)
    verdict = "" if t is None else (f"<= {t:.0f} ns: " + ("met" if med <= t else "NOT met"))
    each = " ".join(f"{v:.1f}" for v in vals)
    print(f"{n:44} {each:>20} {med:10.1f} {1e3 / med:8.2f}  {verdict}")
h = statistics.median([r["core/harness/write_packet"] for r in runs if "core/harness/write_packet" in r] or [0])
if h:
    for n in ("core/established/lookup+encap/1M", "core/established/lookup+encap/10k"):
        vals = [r[n] for r in runs if n in r]
        if vals:
            core = statistics.median(vals) - h
            print(f"{n} minus harness ({h:.1f} ns): {core:.1f} ns = {1e3 / core:.2f} M packets/s")
PY
