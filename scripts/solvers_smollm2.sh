#!/usr/bin/env bash
# The solvers beyond GPTQ on SmolLM2's dithered base: weight-only int3:g64 and int2:g64 (f16
# scales) on every block linear, the token embedding / tied head int8 per channel, fake-quant
# layout, each evaluated against the base on 40 chunks of Pride and Prejudice (calibration: the
# built-in text, 128 × 512 tokens; CALIB_SAMPLES=N for N × 512). Prints one table row per configuration: the block linears'
# bits per weight (side tables counted), PPL, mean KLD ± s.e., top-1.
#
# usage: scripts/solvers_smollm2.sh BASE.gguf [OUTDIR] [NAME...]   (BASE: README "Measuring quality")
# With NAMEs, only those configurations run. Each run writes a ~0.5 GB directory under OUTDIR
# (default target/solvers), removed once its report is kept.
set -euo pipefail
set -f   # the tensor-name patterns below are not file globs
cd "$(dirname "$0")/.."
base=${1:?usage: $0 BASE.gguf [OUTDIR] [NAME...]}
o=${2:-target/solvers}
shift $(( $# >= 2 ? 2 : 1 ))
names=("$@")
text=data/text/austen_prideprejudice.txt
mkdir -p "$o"
# QUANTSMITH_BIN: a binary to measure instead of building this checkout's (e.g. a copy kept
# while the tree is rebuilt).
if [ -n "${QUANTSMITH_BIN:-}" ]; then
  q=$QUANTSMITH_BIN
else
  cargo build --release -q
  q=./target/release/quantsmith
fi
calib=(--calib-samples "${CALIB_SAMPLES:-128}")
embd="--scheme token_embd=int8:ch:scale=f16"
# Configurations are declared first (`run` records them), then run: in the order given on the
# command line, or in the order below.
declare -A conf
order=()
run() { # name, format, quantize args...
  conf[$1]="${*:2}"
  order+=("$1")
}
go() { # name, format (or a GGUF preset: Q4_K_M, ...), quantize args...
  local name=$1 fmt=$2; shift 2
  if [ ! -e "$o/$name.json" ]; then
    case $fmt in
      Q*) local out=$o/$name.gguf; local how=(--preset "$fmt") ;;
      # (the embedding keeps its int8 per-channel format, with plain GPTQ: not nested)
      nested:*) local out=$o/$name; local how=(--layout compressed-tensors --scheme "blk.*=${fmt#nested:}:scale=f16" $embd@gptq) ;;
      *) local out=$o/$name; local how=(--layout fake-quant --scheme "blk.*=$fmt:scale=f16" $embd) ;;
    esac
    "$q" quantize "$base" --out "$out" "${how[@]}" \
      --eval "$text" --eval-chunks 40 --progress none --json --force "${calib[@]}" "$@" > "$o/$name.json.tmp"
    mv "$o/$name.json.tmp" "$o/$name.json"
    rm -rf "${out:?}"
  fi
  python3 - "$o/$name.json" "$name" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lin = [t for t in r["tensors"] if t["name"].startswith("blk.") and t["name"].endswith(".weight") and len(t.get("shape", [0, 0])) == 2]
# A bias a correction added to a block linear is part of it: counted.
bias = [t for t in r["tensors"] if t["name"].startswith("blk.") and t["name"].endswith(".bias") and any(t["name"][:-5] + ".weight" == w["name"] for w in lin)]
bits = sum(8 * t["bytes"] for t in lin + bias) / sum(t["shape"][0] * t["shape"][1] for t in lin)
e = r["eval"]
print(f"| {sys.argv[2]} | {bits:.3f} | {e['ppl']:.2f} | {e['kld_mean']:.4f} ± {e['kld_stderr']:.4f} | {e['top1_agree']:.3f} |")
# A nested code set: one more row per narrower width read from the same file (the block
# linears' codes at that width, their scales and zero points as stored).
top = max([8] + [int(t["format"][4:].split(":")[0]) for t in lin if t["format"].startswith("uint")]) if r.get("eval_slices") else 0
for s in r.get("eval_slices", []):
    e = s["eval"]
    print(f"| {sys.argv[2]}, read at {s['bits']} bits | {bits - (top - s['bits']):.3f} | {e['ppl']:.2f} | {e['kld_mean']:.4f} ± {e['kld_stderr']:.4f} | {e['top1_agree']:.3f} |")
EOF
}
echo "| configuration | bits/weight (block linears) | PPL | mean KLD ± s.e. | top-1 |"
echo "|---|---|---|---|---|"
for fmt in int3:g64 int2:g64; do
  f=i${fmt:3:1}
  run $f-rtn $fmt --method rtn
  run $f-gptq $fmt --method gptq
  run $f-gptq-lr8 $fmt --method gptq --lowrank 8
  run $f-gptq-lr8-int8 $fmt --method gptq --lowrank 8:int8
  run $f-gptq-lr32 $fmt --method gptq --lowrank 32
  run $f-gptq-lr8-plain $fmt --method gptq --lowrank 8:plain
  run $f-gptq-lr8-absorb $fmt --method gptq --lowrank 8:absorb
  run $f-gptq-asym $fmt --method gptq-asym
  run $f-asym-lr8-int8 $fmt --method gptq-asym --lowrank 8:int8
  run $f-asym-rsq $fmt --method gptq-asym --calib-weighting rsq
  run $f-gptq-rsq $fmt --method gptq --calib-weighting rsq
  run $f-quantease $fmt --method quantease
  run $f-gptq-out0.5 $fmt --method gptq --outliers 0.005
  run $f-gptq-out1 $fmt --method gptq --outliers 0.01
done
# GGUF presets (llama.cpp's types, same bytes): do coordinate descent and asymmetric
# calibration help there too?
for p in Q4_K_M Q3_K_M Q2_K; do
  run $p-gptq $p --method gptq
  run $p-quantease $p --method quantease
  run $p-gptq-asym $p --method gptq-asym
done
# Nested precision (compressed-tensors, int8:g64 asymmetric codes; one row per width read from
# the one file) against dedicated asymmetric files of each width.
for b in 8 4 2; do
  run i$b-asym-gptq nested:int$b:g64:asym --method gptq
done
run i4-asym-rtn nested:int4:g64:asym --method rtn
run nest84-gptq nested:int8:g64:asym --method gptq --nested 8,4
run nest842-gptq nested:int8:g64:asym --method gptq --nested 8,4,2
run nest842-rtn nested:int8:g64:asym --method rtn --nested 8,4,2
run nest84-gptq-joint nested:int8:g64:asym --method gptq --nested 8,4@1,1:joint
run nest842-gptq-joint nested:int8:g64:asym --method gptq --nested 8,4,2@16,16,1:joint
# Bias correction after the solve (issue 8's `--transform bias-correct`: each block linear's
# mean output on the calibration data brought back to the float model's; `:local` only its own
# error). It adds an f32 bias per output row, counted: 0.047 bits per weight on SmolLM2's.
run i3-rtn-bc int3:g64 --method rtn --transform bias-correct
run i3-gptq-bc int3:g64 --method gptq --transform bias-correct
run i3-gptq-bcl int3:g64 --method gptq --transform bias-correct:local
run i3-asym-bc int3:g64 --method gptq-asym --transform bias-correct
run i2-gptq-bc int2:g64 --method gptq --transform bias-correct
# Combinations at about 3.5 bits per weight.
run i3-qe-lr8-int8 int3:g64 --method quantease --lowrank 8:int8
run i3-qe-out0.1-lr8-int8 int3:g64 --method quantease --outliers 0.001 --lowrank 8:int8
run i3-gptq-out0.25-lr4-int8 int3:g64 --method gptq --outliers 0.0025 --lowrank 4:int8
run i3-qe-asym-out0.1-lr8-int8 int3:g64 --method quantease:asym=yes --outliers 0.001 --lowrank 8:int8

[ ${#names[@]} -gt 0 ] || names=("${order[@]}")
for n in "${names[@]}"; do
  [ -n "${conf[$n]:-}" ] || { echo "unknown configuration $n" >&2; exit 2; }
  # shellcheck disable=SC2086
  go "$n" ${conf[$n]}
done
