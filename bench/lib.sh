# Shared helpers of the bench/ scripts (sourced, not run).

# Prints the machine a result was measured on: nproc, CPU model, kernel, date, load.
bench_machine() {
  local model
  model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  echo "machine: nproc=$(nproc) cpu=\"${model}\" kernel=$(uname -r) date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
}

# Warns when something else is using the CPU (the machine has 2 cores; a concurrent build or
# fuzzer halves any figure). Samples /proc/stat over one second.
bench_check_idle() {
  local a b busy
  read -r _ a1 a2 a3 a4 a5 a6 a7 _ </proc/stat
  sleep 1
  read -r _ b1 b2 b3 b4 b5 b6 b7 _ </proc/stat
  local total=$(( (b1+b2+b3+b4+b5+b6+b7) - (a1+a2+a3+a4+a5+a6+a7) ))
  local idle=$(( (b4+b5) - (a4+a5) ))
  busy=$(( total > 0 ? 100 * (total - idle) / total : 0 ))
  echo "cpu busy before the run: ${busy}% of all cores"
  if (( busy > 15 )); then
    echo "WARNING: the machine is busy (${busy}%): figures will be low; rerun when idle" >&2
    ps -eo pid,pcpu,comm --sort=-pcpu | head -5 >&2
  fi
}

SLR=${SLR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/slr}
CLK_TCK=$(getconf CLK_TCK)

# CPU time (user + system) of a process in seconds, or 0 if it is gone. Parses past the
# command name, which is in parentheses and may contain spaces.
cpu_seconds() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  # After "pid (comm) ": field 3 is state, so utime (field 14) is the 12th word here.
  awk -v t="$CLK_TCK" '{ printf "%.2f\n", ($12 + $13) / t }' <<<"$stat"
}

# Resident memory of a process in KiB (VmRSS), or 0 if it is gone.
rss_kib() {
  awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Whole-machine CPU counters: "busy total" jiffies, all cores.
machine_jiffies() {
  awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print t - idle, t; exit }' /proc/stat
}

# Pid of the process of kind KIND (router, host, serve) on NODE of lab LAB, from its state file.
lab_pid() {
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
lab, kind, node = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(open(f"/run/slr-lab/{lab}/state.json"))
print(" ".join(str(p["pid"]) for p in s["processes"] if p["kind"] == kind and (not node or p["node"] == node)))
PY
}

# Whether a pid is alive (a zombie counts as gone: the lab's daemons are reparented).
alive() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $st != Z ]]
}

# Stops a process by pid: SIGTERM, up to 5 s, then SIGKILL. Bounded.
stop_pid() {
  local pid=$1 i
  [[ -n $pid ]] || return 0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do alive "$pid" || return 0; sleep 0.1; done
  echo "warning: pid $pid did not exit" >&2
}

# Brings a lab down if it exists (a leftover of an interrupted run of the same script).
lab_down_if_up() {
  if [[ -e /run/slr-lab/$1/state.json ]] || ip netns list | grep -q "^slr-$1-"; then
    "$SLR" lab down "$1" >/dev/null 2>&1 || true
  fi
}
