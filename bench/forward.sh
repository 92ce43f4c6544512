#!/usr/bin/env bash
# Forwarding on veth (issue #11), in one run: the router's XDP program in a frame loop in the
# kernel against a bare XDP_TX program (crates/slr-xdp/examples/forward_bench.rs: 64 frames
# circulate between slr_router and slr_unwrap, one core), and the TUN path: the router daemon
# with fast_path = "off", alone (host agents stopped), flooded by the in-kernel generator
# (bench/datapath.sh). Prints the ratio of the two rates.
#
#   bench/forward.sh [FLOWS=1000000]     (root; ~3 min)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

FLOWS=${1:-1000000}
[[ $FLOWS =~ ^[1-9][0-9]*$ && $FLOWS -le 4000000 ]] || { echo "usage: $0 [FLOWS (1..4000000)]" >&2; exit 2; }
[[ -x $SLR ]] || { echo "$SLR missing: cargo build --release" >&2; exit 1; }
tmp=$(mktemp -d /tmp/slr-bench-forward.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

bench_machine
bench_check_idle
cargo build --release -q -p slr-xdp --example forward_bench
fb="${CARGO_TARGET_DIR:-target}/release/examples/forward_bench"
echo "command: $fb $FLOWS 1000000 10000000"
"$fb" "$FLOWS" 1000000 10000000 | tee "$tmp/xdp"
echo
echo "command: HOST_AGENTS=0 FAST_PATHS=off GEN=kernel bench/datapath.sh 10 3"
HOST_AGENTS=0 FAST_PATHS=off GEN=kernel bash bench/datapath.sh 10 3 | tee "$tmp/tun"
python3 - "$tmp/xdp" "$tmp/tun" <<'PY'
import re, sys
xdp = float(re.search(r"best of three: slr_router ([0-9.]+) Mpps", open(sys.argv[1]).read()).group(1))
tun = float(re.search(r"fast_path=off: median ([0-9.]+) kpps arrived", open(sys.argv[2]).read()).group(1))
print(f"\nslr_router in XDP {xdp:.2f} Mpps (one core, frame loop) / the TUN path {tun / 1e3:.3f} Mpps "
      f"(the router daemon's core, in-kernel generator): {xdp * 1e3 / tun:.0f}x")
PY
