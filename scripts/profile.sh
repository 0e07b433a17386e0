#!/usr/bin/env bash
# Where a quantsmith command spends its time: samples it with perf (cpu-clock, call graphs) and
# prints the functions with the most samples of their own, then the split by shared object
# (our binary, libm, the kernel: page faults and writes).
#
# usage: scripts/profile.sh OUTDIR -- quantsmith-args...
#   e.g. scripts/profile.sh target/prof-eval -- bench eval --model M.gguf --chunks 1 --batch 1
#        scripts/profile.sh target/prof-q8 -- quantize M.gguf --out /tmp/q8.gguf --preset Q8_0 --method rtn
# env: QUANTSMITH_BIN (default target/release/quantsmith, built if missing), FREQ (Hz, default 1999),
#      TOP (rows, default 30)
# Needs `perf` (Debian: linux-perf) and permission to use it (perf_event_paranoid ≤ 1, or root).
# Measure on an idle machine: other work on the cores shows up as scheduling noise.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUTDIR -- quantsmith-args...}
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 OUTDIR -- quantsmith-args..." >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 2; }
bin=${QUANTSMITH_BIN:-target/release/quantsmith}
[ -x "$bin" ] || cargo build --release -q -p quantsmith-cli
mkdir -p "$out"
data="$out/perf.data"
# cpu-clock works in VMs without hardware counters.
perf record -e cpu-clock -F "${FREQ:-1999}" -g -o "$data" -- "$bin" "$@" > "$out/stdout.txt" 2> "$out/stderr.txt"
top=${TOP:-30}
{
  echo "# self time by function ($*)"
  perf report -i "$data" --no-children --sort symbol --stdio -g none --percent-limit 0.5 2>/dev/null \
    | grep -E '^ +[0-9]' | head -n "$top"
  echo
  echo "# by shared object"
  perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -n 10
} | tee "$out/profile.txt"
echo "full data: perf report -i $data" >&2
