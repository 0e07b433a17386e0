#!/usr/bin/env python3
"""Byte-identity stress test against llama.cpp beyond the committed golden vectors: many
seeded random rows (ties, sparse, constant sub-blocks, outliers, magnitudes 1e-8..1e3) per
type, with and without an importance vector, through both the C harness and quantsmith.

usage: ggml_stress.py HARNESS QUANTIZE_BIN [SEED]
  HARNESS: built by ggml_golden_build.sh; QUANTIZE_BIN: the ggml_quantize_file example.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"]
N, ROWS = 512, 400


def rows(rng):
    out = []
    for r in range(ROWS):
        k, s = r % 10, 10.0 ** rng.uniform(-8, 3)
        if k == 0:
            x = rng.standard_normal(N)
        elif k == 1:
            x = rng.standard_t(1.5, N)
        elif k == 2:
            x = rng.integers(-8, 8, N).astype(float)  # exact ties
        elif k == 3:
            x = rng.integers(-3, 4, N) * 0.5
        elif k == 4:
            x = np.where(rng.random(N) < 0.9, 0.0, rng.standard_normal(N))
        elif k == 5:
            x = np.repeat(rng.standard_normal(N // 16), 16)  # constant sub-blocks
        elif k == 6:
            x = np.abs(rng.standard_normal(N)) + rng.uniform(-1, 3)
        elif k == 7:
            x = rng.uniform(-1, 1, N)
            x[rng.integers(0, N, 3)] *= 1000
        elif k == 8:
            x = np.zeros(N)
            x[rng.integers(0, N)] = 1.0
        else:
            x = rng.standard_normal(N) * np.repeat(10.0 ** rng.uniform(-6, 2, N // 32), 32)
        out.append(x * s)
    # Magnitudes at f32's limits, where ggml's scales underflow or overflow.
    for s in (1e-44, 3e-42, 1e-39, 2e-38, 1e-37, 1e36, 3e38):
        out[rng.integers(0, ROWS)] = np.clip(rng.standard_normal(N) * s, -3.4e38, 3.4e38)
        spikes = np.zeros(N)
        spikes[rng.integers(0, N, 5)] = s
        out[rng.integers(0, ROWS)] = spikes
    return np.array(out, dtype=np.float32)


def main():
    harness, binary = sys.argv[1:3]
    rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    tmp = tempfile.mkdtemp()
    xp, wp, cp, rp = (os.path.join(tmp, f) for f in ("x.f32", "w.f32", "c.bin", "r.bin"))
    rows(rng).tofile(xp)
    np.exp(rng.standard_normal(N) * 2).astype(np.float32).tofile(wp)
    bad = 0
    for t in TYPES:
        for w in ("-", wp):
            subprocess.run([harness, "q", t, str(N), xp, w, cp], check=True)
            subprocess.run([binary, t, str(N), xp, w, rp], check=True)
            c, r = open(cp, "rb").read(), open(rp, "rb").read()
            if c != r:
                bad += 1
                rb = len(c) // ROWS
                diff = sorted({i // rb for i in range(len(c)) if c[i] != r[i]})
                print("differs:", t, "imatrix" if w != "-" else "plain", "rows", diff[:20])
    print(f"{len(TYPES) * 2 - bad} of {len(TYPES) * 2} configurations byte-identical")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
