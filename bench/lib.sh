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
