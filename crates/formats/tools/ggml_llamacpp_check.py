#!/usr/bin/env python3
"""Checks quantsmith's ggml encoders against real llama-quantize output: every tensor of the
dithered SmolLM2 base (see shared/DESIGN.md) is quantized to the type llama.cpp 0c1e570 chose
in each plain preset, and the sha256 of the bytes is compared with
shared/data/golden/smollm2-dither-llamacpp-0c1e570.json.

usage: ggml_llamacpp_check.py GOLDEN.json smollm2-dither-f32.gguf QUANTIZE_BIN
  QUANTIZE_BIN: target/release/examples/ggml_quantize_file
  (cargo build --release -p quantsmith-formats --example ggml_quantize_file)
needs: pip install numpy gguf
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader


def main():
    golden, model, binary = sys.argv[1:4]
    d = json.load(open(golden))
    tensors = {t.name: t for t in GGUFReader(model).tensors}
    tmp = tempfile.mkdtemp()
    xin, qout = os.path.join(tmp, "x.f32"), os.path.join(tmp, "q.bin")
    cache = {}
    ok, bad = 0, []
    for preset, v in d["presets"].items():
        plain = v["plain"]
        for name, ty in plain["types"].items():
            if (name, ty) not in cache:
                t = tensors[name]
                x = np.asarray(t.data, dtype=np.float32)
                if ty == "F32":
                    got = hashlib.sha256(x.tobytes()).hexdigest()
                else:
                    x.tofile(xin)
                    subprocess.run([binary, ty.lower(), str(int(t.shape[0])), xin, "-", qout], check=True)
                    got = hashlib.sha256(open(qout, "rb").read()).hexdigest()
                cache[(name, ty)] = got
            if cache[(name, ty)] == plain["sha256"][name]:
                ok += 1
            else:
                bad.append((preset, name, ty))
    print(f"{ok} tensors match, {len(bad)} differ")
    for b in bad[:30]:
        print("differs:", *b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
