#!/usr/bin/env python3
"""Reference values for crates/quantsmith/tests/io_real.rs, from independent readers.

SmolLM2's GGUF is read with gguf-py (`gguf.GGUFReader`, `gguf.quants.dequantize`), MiniLM's
safetensors with numpy over the raw header. For a few tensors of each it records the shape,
the first values and the f64 sum and sum of squares of the dequantized values.

    pip install numpy gguf
    python3 tools/io_reference_values.py SMOLLM2.gguf MINILM_DIR > tests/data/io_reference_values.json
"""
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

GGUF_TENSORS = [
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.17.ffn_down.weight",
    "blk.29.ffn_norm.weight",
    "output_norm.weight",
]
ST_TENSORS = [
    "embeddings.word_embeddings.weight",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.5.output.LayerNorm.bias",
]


def summary(name, shape, dtype, values):
    v = values.astype(np.float64).ravel()
    return {
        "name": name,
        "shape": [int(d) for d in shape],
        "dtype": dtype,
        "first": [float(x) for x in values.ravel()[:8]],
        "sum": float(v.sum()),
        "sum_sq": float((v * v).sum()),
    }


def gguf_part(path):
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    out = []
    for name in GGUF_TENSORS:
        t = by_name[name]
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        out.append(summary(name, shape, t.tensor_type.name.lower(), values.reshape(shape)))
    return {"n_tensors": len(r.tensors), "tensors": out}


def safetensors_part(model_dir):
    path = model_dir + "/model.safetensors"
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = []
    for name in ST_TENSORS:
        e = header[name]
        b, end = e["data_offsets"]
        values = np.frombuffer(data[b:end], dtype="<f4").reshape(e["shape"])
        out.append(summary(name, e["shape"], e["dtype"].lower(), values))
    return {"n_entries": len([k for k in header if k != "__metadata__"]), "tensors": out}


if __name__ == "__main__":
    print(json.dumps({"smollm2": gguf_part(sys.argv[1]), "minilm": safetensors_part(sys.argv[2])}, indent=1))
