#!/usr/bin/env bash
# Rotations, SmoothQuant, AWQ, activation and KV-cache quantization on SmolLM2's dithered base:
# quantizes every configuration of the tables in the issue-8 note, evaluates them against the
# base (40 chunks of Pride and Prejudice), and runs llama.cpp's perplexity tool on the GGUF ones.
#
# usage: scripts/transforms_smollm2.sh BASE.gguf [OUTDIR]   (BASE: see README "Measuring quality")
# env: LLAMACPP_DIR (build cache, default ~/.cache/llamacpp-0c1e570; skipped if not built),
#      SAMPLES (calibration windows, default 64)
# Several GB of fake-quant directories are written under OUTDIR (default target/transforms).
set -euo pipefail
set -f   # the tensor-name patterns below are not file globs
cd "$(dirname "$0")/.."
base=${1:?usage: $0 BASE.gguf [OUTDIR]}
o=${2:-target/transforms}
samples=${SAMPLES:-64}
text=data/text/austen_prideprejudice.txt
mkdir -p "$o"
cargo build --release -q
q=./target/release/quantsmith
run() { # name, quantize args...
  local name=$1; shift
  [ -e "$o/$name.json" ] && return 0
  "$q" quantize "$base" --out "$o/$name" --progress none --json --calib-samples "$samples" "$@" > "$o/$name.json.tmp"
  mv "$o/$name.json.tmp" "$o/$name.json"
}
fq="--layout fake-quant"
head="--scheme *=int8:ch:scale=f16"
w4="--scheme blk.*=int4:scale=f16 $head"
w8="--scheme blk.*=int8:scale=f16 $head"
i3="--scheme blk.*=int3:g64:scale=f16 $head"
run rot-f32 $fq --method rtn --rotate hadamard:online
for kv in int8 int4 fp8_e4m3 fp4_e2m1; do run kv-$kv $fq --method rtn --kv $kv; done
for kv in int4 fp4_e2m1; do run kv-$kv-rot $fq --method rtn --kv $kv --rotate hadamard:online; done
for m in rtn gptq; do
  run w4a4kv4-$m $fq $w4 --method $m --act int4 --kv int4
  run w4a4kv4-$m-rot $fq $w4 --method $m --act int4 --kv int4 --rotate hadamard:online
  run i3-$m $fq $i3 --method $m
  run i3-$m-rot $fq $i3 --method $m --rotate hadamard
  run i3-$m-awq $fq $i3 --method $m --transform awq
  run Q4_0-$m.gguf --preset Q4_0 --method $m
  run Q4_0-$m-rot.gguf --preset Q4_0 --method $m --rotate hadamard
done
run i3-gptq-sq $fq $i3 --method gptq --transform smoothquant:0.5
run w8a8-rtn $fq $w8 --method rtn --act int8
run w8a8-gptq $fq $w8 --method gptq --act int8
run w8a8-rtn-sq $fq $w8 --method rtn --act int8 --transform smoothquant:0.5
run w8a8s-rtn $fq $w8 --method rtn --act int8:static
run w8a8s-rtn-sq $fq $w8 --method rtn --act int8:static --transform smoothquant:0.5
run w8a8s-rtn-rot $fq $w8 --method rtn --act int8:static --rotate hadamard:online
for m in rtn gptq; do
  run w4a8-$m $fq $w4 --method $m --act int8
  run w4a8-$m-rot $fq $w4 --method $m --act int8 --rotate hadamard:online
  run fp8-$m $fq --scheme 'blk.*=fp8_e4m3:ch:scale=f16' $head --method $m --act fp8_e4m3
  run i3-$m-bc $fq $i3 --method $m --transform bias-correct
  run Q4_0-$m-bc.gguf --preset Q4_0 --method $m --transform bias-correct
done

# Evaluations, a few models at a time (each f32 model is ~0.6 GB in memory).
ev() { local name=$1; shift; "$q" eval "$@" --base "$base" --text "$text" --chunks 40 --json --progress none > "$o/eval-$name.json"; }
ev kv "$o"/kv-int8 "$o"/kv-int4 "$o"/kv-fp8_e4m3 "$o"/kv-fp4_e2m1 "$o"/kv-int4-rot "$o"/kv-fp4_e2m1-rot "$o"/rot-f32
ev w4a4 "$o"/w4a4kv4-rtn "$o"/w4a4kv4-rtn-rot "$o"/w4a4kv4-gptq "$o"/w4a4kv4-gptq-rot
ev i3 "$o"/i3-rtn "$o"/i3-rtn-rot "$o"/i3-rtn-awq "$o"/i3-rtn-bc "$o"/i3-gptq "$o"/i3-gptq-rot "$o"/i3-gptq-awq "$o"/i3-gptq-sq "$o"/i3-gptq-bc
ev w8 "$o"/w8a8-rtn "$o"/w8a8-gptq "$o"/w8a8-rtn-sq "$o"/w8a8s-rtn "$o"/w8a8s-rtn-sq "$o"/w8a8s-rtn-rot
ev w48 "$o"/w4a8-rtn "$o"/w4a8-rtn-rot "$o"/w4a8-gptq "$o"/w4a8-gptq-rot "$o"/fp8-rtn "$o"/fp8-gptq
ev q40 "$o"/Q4_0-rtn.gguf "$o"/Q4_0-rtn-rot.gguf "$o"/Q4_0-rtn-bc.gguf "$o"/Q4_0-gptq.gguf "$o"/Q4_0-gptq-rot.gguf "$o"/Q4_0-gptq-bc.gguf
python3 - "$o" <<'PY'
import glob, json, os, sys
o = sys.argv[1]
print("| configuration | bits/weight (quantized tensors) | output bytes | PPL | mean KLD ± s.e. | top-1 |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(o, "eval-*.json"))):
    v = json.load(open(f))
    for r in v if isinstance(v, list) else [v]:
        name = os.path.basename(r.get("model", "?"))
        qj = os.path.join(o, name + ".json")
        q = json.load(open(qj)) if os.path.exists(qj) else {}
        bpw = q.get("format_bits_per_weight", float("nan"))
        print(f"| {name} | {bpw:.3f} | {q.get('file_bytes', 0):,} | {r['ppl']:.3f} | {r['kld_mean']:.5f} ± {r['kld_stderr']:.5f} | {r['top1_agree']:.4f} |")
PY

# llama.cpp's own figures for the GGUF files (its repacked kernels need CPU features some VMs
# trap: --no-repack).
bin=${LLAMACPP_DIR:-$HOME/.cache/llamacpp-0c1e570}/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
if [ -x "$bin/llama-perplexity" ]; then
  "$bin/llama-perplexity" -m "$base" -f "$text" -c 512 --chunks 40 -t "$(nproc)" --kl-divergence-base "$o/base.kld" > "$o/lcpp-base.out" 2>&1
  for m in Q4_0-rtn Q4_0-rtn-rot Q4_0-rtn-bc Q4_0-gptq Q4_0-gptq-rot Q4_0-gptq-bc; do
    "$bin/llama-perplexity" -m "$o/$m.gguf" -f "$text" -c 512 --chunks 40 -t "$(nproc)" --no-repack \
      --kl-divergence-base "$o/base.kld" --kl-divergence > "$o/lcpp-$m.out" 2>&1
    echo "llama.cpp $m: $(grep -E 'Mean PPL\(Q\) ' "$o/lcpp-$m.out") $(grep -E 'Mean +KLD' "$o/lcpp-$m.out")"
  done
  rm -f "$o/base.kld"
else
  echo "llama.cpp not built in $bin: run scripts/bench_vs_llamacpp.sh once (it builds llama.cpp 0c1e570 into that cache)"
fi
