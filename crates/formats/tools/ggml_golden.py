#!/usr/bin/env python3
"""Generates crates/formats/testdata/ggml/: golden vectors for quantsmith's ggml codecs.

Two independent references:
  * llama.cpp's ggml-quants.c (commit 0c1e570) through tools/ggml_golden_harness.c, built by
    tools/ggml_golden_build.sh outside the repository: quantize_<type> with and without an
    importance vector for every type, and dequantize_row_<type> of random blocks.
  * gguf-py's gguf.quants (pip install gguf numpy): it quantizes the legacy types and
    dequantizes all of them; the script checks it agrees with the C reference bit for bit.

usage: ggml_golden.py HARNESS_BINARY [OUT_DIR]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

TYPES = {  # name: (block elements, block bytes, gguf-py type)
    "q4_0": (32, 18, QT.Q4_0), "q4_1": (32, 20, QT.Q4_1), "q5_0": (32, 22, QT.Q5_0),
    "q5_1": (32, 24, QT.Q5_1), "q8_0": (32, 34, QT.Q8_0), "q2_k": (256, 84, QT.Q2_K),
    "q3_k": (256, 110, QT.Q3_K), "q4_k": (256, 144, QT.Q4_K), "q5_k": (256, 176, QT.Q5_K),
    "q6_k": (256, 210, QT.Q6_K), "iq4_nl": (32, 18, QT.IQ4_NL), "iq4_xs": (256, 136, QT.IQ4_XS),
}
LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
ROWS = 3


def make_input(kind, n, rng):
    """ROWS rows of n f32 values of one distribution."""
    if kind == "gauss":
        x = rng.standard_normal((ROWS, n))
    elif kind == "uniform":
        x = rng.uniform(-0.05, 0.05, (ROWS, n))
    elif kind == "heavy":
        x = rng.standard_t(2.0, (ROWS, n)) * 0.02
        idx = rng.integers(0, n, 6)
        x[0, idx] *= 40.0
        x[1, 7] = 3.0
    elif kind == "zeros":
        x = rng.standard_normal((ROWS, n))
        x[rng.random((ROWS, n)) < 0.3] = 0.0
        x[0, 32:64] = 0.0          # one all-zero 32-block
        x[1, :256] = 0.0           # one all-zero 256-block
        x[2, :] = 0.0              # one all-zero row
    elif kind == "tiny":
        x = rng.standard_normal((ROWS, n))
        x[0] *= 1e-5
        x[1] *= 1e-9               # scales below f16's smallest subnormal
        x[2] *= 3e-7
    elif kind == "positive":
        x = np.abs(rng.standard_normal((ROWS, n))) + 0.5
        x[1] = -x[1]               # all negative
        x[2, :] = 0.25             # constant
        x[2, 100:140] = -1.5
    elif kind == "extreme":
        # Scales that underflow (1/d infinite: C's float-to-int conversion of inf/NaN) and
        # magnitudes near f32's limits.
        x = rng.standard_normal((ROWS, n))
        x[0] *= 1e-39
        x[1] = 0.0
        x[1, rng.integers(0, n, 5)] = 1e-37
        x[2] *= 1e37
        x[2, ::5] *= 1e-60
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def run(harness, *args):
    subprocess.run([harness, *args], check=True)


def main():
    harness = os.path.abspath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "testdata", "ggml")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20261122)
    tmp = tempfile.mkdtemp()
    cases = []
    blobs = {}  # file name -> bytes

    kinds = ["gauss", "uniform", "heavy", "zeros", "tiny", "positive", "extreme"]
    for n in (256, 512, 576):
        imat = np.exp(rng.standard_normal(n)).astype(np.float32)
        blobs[f"imatrix_{n}.f32"] = imat.tobytes()
        for kind in kinds:
            x = make_input(kind, n, rng)
            blobs[f"in_{kind}_{n}.f32"] = x.tobytes()
    for tname, (blk, nbytes, qt) in TYPES.items():
        lengths = (256, 576) if blk == 32 else (256, 512)
        for n in lengths:
            for kind in kinds:
                inp = f"in_{kind}_{n}.f32"
                x = np.frombuffer(blobs[inp], dtype=np.float32).reshape(ROWS, n)
                xin = os.path.join(tmp, "x.f32")
                with open(xin, "wb") as f:
                    f.write(blobs[inp])
                wpath = os.path.join(tmp, "w.f32")
                with open(wpath, "wb") as f:
                    f.write(blobs[f"imatrix_{n}.f32"])
                for weighted in (False, True):
                    dst = os.path.join(tmp, "q.bin")
                    run(harness, "q", tname, str(n), xin, wpath if weighted else "-", dst)
                    q = open(dst, "rb").read()
                    assert len(q) == ROWS * n // blk * nbytes
                    dq = os.path.join(tmp, "dq.f32")
                    run(harness, "dq", tname, dst, dq)
                    deq = np.frombuffer(open(dq, "rb").read(), dtype=np.float32)
                    # gguf-py's dequantizer must agree with the C one bit for bit.
                    py = gguf.quants.dequantize(np.frombuffer(q, dtype=np.uint8).reshape(ROWS, -1), qt)
                    assert np.array_equal(py.reshape(-1).view(np.uint32), deq.view(np.uint32)) or \
                        np.array_equal(py.reshape(-1), deq), f"gguf-py dequant differs: {tname} {kind} {n}"
                    if not weighted and tname in LEGACY:
                        pyq = gguf.quants.quantize(x, qt).tobytes()
                        if pyq != q:
                            print(f"note: gguf-py quantize differs from C for {tname} {kind} {n}")
                    tag = "imat" if weighted else "plain"
                    qname = f"{tname}_{kind}_{n}_{tag}.bin"
                    blobs[qname] = q
                    cases.append({"type": tname, "input": inp, "n_per_row": n, "rows": ROWS,
                                  "imatrix": f"imatrix_{n}.f32" if weighted else None,
                                  "quantized": qname})
                    if kind == "gauss" and n == lengths[0]:
                        dname = f"{tname}_{kind}_{n}_{tag}.deq.f32"
                        blobs[dname] = deq.tobytes()
                        cases[-1]["dequantized"] = dname
    # Random blocks (arbitrary codes, finite f16 scales) to exercise every bit of each decoder.
    randoms = []
    for tname, (blk, nbytes, qt) in TYPES.items():
        nblocks = 8
        raw = rng.integers(0, 256, (nblocks, nbytes), dtype=np.uint8)
        # Overwrite the f16 scale fields with finite values (NaN/Inf scales are not useful).
        offs = {"q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0],
                "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208],
                "iq4_nl": [0], "iq4_xs": [0]}[tname]
        for o in offs:
            vals = (rng.standard_normal(nblocks) * 0.01).astype(np.float16)
            raw[:, o:o + 2] = vals.view(np.uint8).reshape(nblocks, 2)
        src = os.path.join(tmp, "r.bin")
        with open(src, "wb") as f:
            f.write(raw.tobytes())
        dq = os.path.join(tmp, "r.f32")
        run(harness, "dq", tname, src, dq)
        deq = np.frombuffer(open(dq, "rb").read(), dtype=np.float32)
        py = gguf.quants.dequantize(raw.reshape(1, -1), qt).reshape(-1)
        assert np.array_equal(py, deq), f"gguf-py dequant differs on random {tname}"
        blobs[f"random_{tname}.bin"] = raw.tobytes()
        blobs[f"random_{tname}.deq.f32"] = deq.tobytes()
        randoms.append({"type": tname, "blocks": f"random_{tname}.bin", "dequantized": f"random_{tname}.deq.f32"})

    # All blobs go into one file; the manifest maps each name to its [offset, length].
    index, offset = {}, 0
    with open(os.path.join(out, "golden.bin"), "wb") as f:
        for name, data in blobs.items():
            f.write(data)
            index[name] = [offset, len(data)]
            offset += len(data)
    manifest = {"reference": "llama.cpp 0c1e570 ggml-quants.c; gguf-py " + getattr(gguf, "__version__", "0.19.0"),
                "blobs": index, "quantize": cases, "random_blocks": randoms}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(blobs)} blobs, {offset} bytes in {out}/golden.bin")


if __name__ == "__main__":
    main()
