#!/usr/bin/env bash
# Side by side, in one run on one machine: quantsmith and llama.cpp (commit 0c1e570, vendored in the
# PyPI sdist llama-cpp-python==0.3.36; built here once, CPU, AMX off) on the same model and text.
# Whole processes, median of 3 (wall seconds and peak RSS from /usr/bin/time), then the ratios.
#
# usage: scripts/bench_vs_llamacpp.sh MODEL.gguf [TEXT] [THREADS]
#   MODEL: an f32/f16 GGUF (e.g. SmolLM2's dithered base, see README "Measuring quality")
#   TEXT:  default data/text/austen_prideprejudice.txt;  THREADS: default nproc
# env: LLAMACPP_DIR (build cache, default ~/.cache/llamacpp-0c1e570), RUNS (default 3),
#      CARGO_TARGET_DIR (where this checkout's release build goes, default target)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: $0 MODEL.gguf [TEXT] [THREADS]}
text=${2:-data/text/austen_prideprejudice.txt}
threads=${3:-$(nproc)}
runs=${RUNS:-3}
dir=${LLAMACPP_DIR:-$HOME/.cache/llamacpp-0c1e570}
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package 'time')"; exit 1; }

# --- the peer ---------------------------------------------------------------------------------
src=$dir/llama_cpp_python-0.3.36/vendor/llama.cpp
bin=$src/build/bin
if [ ! -x "$bin/llama-perplexity" ] || [ ! -x "$bin/llama-quantize" ] || [ ! -x "$bin/llama-imatrix" ]; then
  echo "building llama.cpp 0c1e570 in $dir (about 8 minutes on 2 cores) ..." >&2
  mkdir -p "$dir"
  venv=$dir/venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q cmake scikit-build-core
  if [ ! -d "$dir/llama_cpp_python-0.3.36" ]; then
    # The sdist's metadata step needs the build backend present: no build isolation.
    "$venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$dir/sdist" llama-cpp-python==0.3.36
    tar xzf "$dir/sdist/llama_cpp_python-0.3.36.tar.gz" -C "$dir"
  fi
  # AMX off: its code path crashes on the CPUs this was measured on.
  "$venv/bin/cmake" -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > "$dir/build.log"
  "$venv/bin/cmake" --build "$src/build" -j"$(nproc)" --target llama-perplexity llama-quantize llama-imatrix >> "$dir/build.log"
fi

# --- quantsmith ------------------------------------------------------------------------------
cargo build --release -q -p quantsmith-cli
qs=$(realpath "${CARGO_TARGET_DIR:-target}")/release/quantsmith
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure NAME CMD...: median wall seconds and peak RSS (MiB) of $runs runs -> "$name wall rss"
measure() {
  local name=$1; shift
  local walls=() rsss=()
  for _ in $(seq "$runs"); do
    rm -f "$work"/out.* "$work"/*.md "$work"/*.svg
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" > "$work/log" 2>&1 || { cat "$work/log" >&2; echo "$name failed" >&2; exit 1; }
    read -r w m < "$work/t"
    walls+=("$w"); rsss+=("$m")
  done
  local mw mr
  mw=$(printf '%s\n' "${walls[@]}" | sort -g | sed -n "$(( (runs + 1) / 2 ))p")
  mr=$(printf '%s\n' "${rsss[@]}" | sort -g | sed -n "$(( (runs + 1) / 2 ))p")
  echo "$name $mw $(( mr / 1024 ))"
}

qsq=("$qs" --threads "$threads" --progress none)
results=()
results+=("$(measure qs_ppl "${qsq[@]}" eval "$model" --text "$text" --ctx 512 --chunks 4)")
results+=("$(measure ll_ppl "$bin/llama-perplexity" -m "$model" -f "$text" -c 512 --chunks 4 -t "$threads")")
results+=("$(measure qs_imatrix "${qsq[@]}" quantize "$model" --out "$work/out.gguf" --method rtn --imatrix --calib "$text" --calib-samples 8 --preset Q4_K_M)")
results+=("$(measure ll_imatrix "$bin/llama-imatrix" -m "$model" -f "$text" -c 512 --chunks 8 -t "$threads" -o "$work/out.imatrix.gguf")")
results+=("$(measure qs_q4km "${qsq[@]}" quantize "$model" --out "$work/out.gguf" --method rtn --preset Q4_K_M)")
results+=("$(measure ll_q4km "$bin/llama-quantize" "$model" "$work/out.gguf" Q4_K_M "$threads")")
results+=("$(measure qs_q80 "${qsq[@]}" quantize "$model" --out "$work/out.gguf" --method rtn --preset Q8_0)")
results+=("$(measure ll_q80 "$bin/llama-quantize" "$model" "$work/out.gguf" Q8_0 "$threads")")
# The quantized case: both evaluate llama-quantize's Q4_K_M of the model (llama.cpp multiplies
# its blocks with 8-bit activations, quantsmith decodes them to f32 a panel at a time, so the
# perplexities differ slightly).
"$bin/llama-quantize" "$model" "$work/q4km.gguf" Q4_K_M "$threads" > /dev/null 2>&1
results+=("$(measure qs_pplq "${qsq[@]}" eval "$work/q4km.gguf" --text "$text" --ctx 512 --chunks 4)")
results+=("$(measure ll_pplq "$bin/llama-perplexity" -m "$work/q4km.gguf" -f "$text" -c 512 --chunks 4 -t "$threads")")
"${qsq[@]}" bench eval "$model" --chunks 4 | tail -2

echo
echo "model $model, text $text, $threads threads, median of $runs whole-process runs, $(date -u +%F)"
printf '%-44s %10s %10s %10s %10s %8s\n' job "qs s" "llama s" "qs MiB" "llama MiB" "speed"
get() { printf '%s\n' "${results[@]}" | awk -v n="$1" '$1 == n { print $'"$2"' }'; }
for job in "ppl:perplexity 4×512" "pplq:perplexity 4×512 of a Q4_K_M" "imatrix:imatrix 8×512 (quantsmith also writes Q4_K_M)" "q4km:RTN Q4_K_M" "q80:RTN Q8_0"; do
  k=${job%%:*}; label=${job#*:}
  qw=$(get "qs_$k" 2); lw=$(get "ll_$k" 2); qm=$(get "qs_$k" 3); lm=$(get "ll_$k" 3)
  printf '%-44s %10s %10s %10s %10s %7.2fx\n' "$label" "$qw" "$lw" "$qm" "$lm" "$(echo "$lw / $qw" | bc -l)"
done
echo "speed: llama.cpp's time / quantsmith's (above 1: quantsmith faster)"
