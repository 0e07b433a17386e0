#!/usr/bin/env bash
# Reproduces the quantize acceptance table: SmolLM2's dithered f32 base (DESIGN.md) quantized
# with each preset by RTN, RTN + imatrix (calibrated on Emma, 50 × 512 tokens, as llama.cpp's
# reference imatrix) and GPTQ (+ imatrix-dependent preset types; 128 × 512 tokens of Emma),
# then evaluated against the base on Pride and Prejudice, --ctx 512 --chunks 40, in one pass.
# Usage: scripts/acceptance_smollm2.sh [WORKDIR]
# The base is made by tools/dither_gguf.py with numpy==2.4.6 gguf==0.19.0 (other versions change
# its bytes), in the venv the tests make under target/pyenv, or in one of the script's own there.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/qs-acceptance}
mkdir -p "$W"
Q=${QUANTSMITH:-./target/release/quantsmith}
[ -x "$Q" ] || cargo build --release -p quantsmith-cli
BASE="$W/smollm2-dither-f32.gguf"
if [ ! -f "$BASE" ]; then
  # The tests' venv (crates/quantsmith/tests/common/pyenv.rs names it by its sorted requirement
  # list's sha256) if complete, else one of this script's own.
  REQS=$'gguf==0.19.0\nnumpy==2.4.6\n'
  V="${CARGO_TARGET_DIR:-target}/pyenv/gguf-numpy-$(printf '%s' "$REQS" | sha256sum | cut -c1-12)"
  if [ "$(cat "$V/quantsmith-requirements.txt" 2>/dev/null)"$'\n' != "$REQS" ]; then
    V="${CARGO_TARGET_DIR:-target}/pyenv/acceptance-dither"
    if [ ! -f "$V/quantsmith-requirements.txt" ]; then
      rm -rf "$V"
      python3 -m venv "$V"
      "$V/bin/python" -m pip install --disable-pip-version-check --quiet numpy==2.4.6 gguf==0.19.0
      printf '%s' "$REQS" > "$V/quantsmith-requirements.txt"
    fi
  fi
  PY="$V/bin/python"
  "$PY" tools/dither_gguf.py "$($Q fetch smollm2)" "$BASE" --seed 0
fi
CALIB=data/text/austen_emma.txt
EVAL=data/text/austen_prideprejudice.txt
PRESETS=${PRESETS:-"Q4_K_M Q3_K_M Q2_K Q4_0 Q6_K Q8_0"}
GPTQ_SAMPLES=${GPTQ_SAMPLES:-64}
for p in $PRESETS; do
  $Q quantize "$BASE" --out "$W/$p-rtn.gguf" --preset "$p" --method rtn --json > "$W/$p-rtn.json"
  $Q quantize "$BASE" --out "$W/$p-rtnim.gguf" --preset "$p" --method rtn --imatrix \
    --calib "$CALIB" --calib-samples 50 --calib-len 512 --json > "$W/$p-rtnim.json"
  $Q quantize "$BASE" --out "$W/$p-gptq.gguf" --preset "$p" --method gptq --imatrix \
    --calib "$CALIB" --calib-samples "$GPTQ_SAMPLES" --calib-len 512 --json > "$W/$p-gptq.json"
  $Q eval "$W/$p-rtn.gguf" "$W/$p-rtnim.gguf" "$W/$p-gptq.gguf" --base "$BASE" --text "$EVAL" \
    --ctx 512 --chunks 40 --json > "$W/$p-eval.json"
  echo "done $p" >&2
done
python3 - "$W" <<'PY'
import json, os, sys
w = sys.argv[1]
ev = []
for f in sorted(os.listdir(w)):
    if f.endswith("-eval.json"):
        ev += json.load(open(os.path.join(w, f)))
print("| preset | method | file bytes | PPL | mean KLD | top-1 | quantize s |")
print("|---|---|---|---|---|---|---|")
for e in ev:
    stem = os.path.basename(e["model"])[:-5]
    q = json.load(open(os.path.join(w, stem + ".json")))
    preset, method = stem.rsplit("-", 1)
    method = {"rtn": "RTN", "rtnim": "RTN + imatrix", "gptq": "GPTQ + imatrix"}[method]
    print(f"| {preset} | {method} | {q['file_bytes']} | {e['ppl']:.3f} | {e['kld_mean']:.6f} ± {e['kld_stderr']:.6f} | {e['top1_agree']:.4f} | {q['seconds']:.0f} |")
print(f"\nbase PPL {ev[0]['base_ppl']:.3f}; {ev[0]['chunks']} chunks × {ev[0]['ctx']}")
PY
