#!/usr/bin/env python3
"""Golden vectors for quantsmith's minifloats, from ml_dtypes (an independent reference).

For every minifloat ml_dtypes has, writes crates/formats/testdata/minifloat_golden.json:
  decode: [code, f32 bits of its value] for every code (8-bit and narrower types) or a
          sample of codes (16-bit types: every 61st code plus zero/subnormal/top regions);
          NaN values are written as null.
  cast:   [input f32 bits, expected code, f32 bits of the decoded result (null for NaN)]
          for all representable values, every midpoint (tie) between neighbours, the f32
          values just below and above each midpoint, overflow around the largest value,
          NaN, +-inf, +-0, f32 subnormals and values around the smallest subnormal.
Usage: pip install ml_dtypes numpy; python3 minifloat_golden.py [OUT.json]
"""
import json
import sys

import ml_dtypes
import numpy as np

TYPES = [
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
    "float8_e3m4", "float8_e4m3", "float6_e3m2fn", "float6_e2m3fn", "float4_e2m1fn",
    "float8_e8m0fnu", "bfloat16", "float16",
]
BITS = {"float6_e3m2fn": 6, "float6_e2m3fn": 6, "float4_e2m1fn": 4, "bfloat16": 16, "float16": 16}


def f32_bits(x):
    x = np.float32(x)
    return None if np.isnan(x) else int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def codes_of(dtype, bits):
    storage = np.uint16 if bits == 16 else np.uint8
    n = 1 << bits
    if bits == 16:
        sample = set(range(0, n, 61)) | set(range(0, 40)) | set(range(0x7F00, 0x8028)) | set(range(0xFF00, 0x10000))
        sample |= set(range(0x7B00, 0x7C10)) | set(range(0xFB00, 0xFC10))
        return np.array(sorted(sample), dtype=storage)
    return np.arange(n, dtype=storage)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "crates/formats/testdata/minifloat_golden.json"
    result = {"ml_dtypes_version": ml_dtypes.__version__, "types": {}}
    for name in TYPES:
        # float16 is numpy's own (IEEE binary16, correctly rounded casts); the rest ml_dtypes'.
        dt = np.float16 if name == "float16" else getattr(ml_dtypes, name, None)
        if dt is None:
            continue
        bits = BITS.get(name, 8)
        codes = codes_of(dt, bits)
        vals = codes.view(dt).astype(np.float32)
        decode = [[int(c), f32_bits(v)] for c, v in zip(codes, vals)]
        # Inputs for the cast: neighbours, midpoints and the f32 values around each midpoint.
        all_codes = np.arange(1 << bits, dtype=np.uint16 if bits == 16 else np.uint8)
        finite = all_codes.view(dt).astype(np.float32)
        finite = np.unique(finite[np.isfinite(finite)])
        pos = finite[finite >= 0].astype(np.float64)
        if bits == 16:
            # Every 61st neighbour pair keeps the 16-bit files small.
            idx = sorted(set(range(0, len(pos) - 1, 61)) | set(range(0, 40)) | set(range(len(pos) - 40, len(pos) - 1)))
        else:
            idx = range(len(pos) - 1)
        inputs = set()
        for i in idx:
            a, b = pos[i], pos[i + 1]
            mid = np.float32((a + b) / 2)
            for v in (a, b, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))):
                inputs.add(float(np.float32(v)))
        mx = float(pos[-1])
        ulp = float(pos[-1] - pos[-2])
        tiny = float(pos[1]) if len(pos) > 1 else 1.0
        for v in (mx, mx + ulp / 2, np.nextafter(np.float32(mx + ulp / 2), np.float32(np.inf)),
                  np.nextafter(np.float32(mx + ulp / 2), np.float32(-np.inf)), mx + ulp, mx * 2, mx * 1000,
                  float(np.finfo(np.float32).max), tiny / 2, tiny / 4, tiny * 0.75, 1e-45, 1e-40, 1.1754944e-38,
                  0.0, 1.0, 3.0, 1e30):
            inputs.add(float(np.float32(v)))
        inputs = sorted(inputs)
        inputs = inputs + [-v for v in inputs if v != 0.0]
        arr = np.array(inputs, dtype=np.float32)
        arr = np.concatenate([arr, np.array([-0.0, np.inf, -np.inf, np.nan], dtype=np.float32)])
        with np.errstate(all="ignore"):
            cast = arr.astype(dt)
        cast_codes = cast.view(np.uint16 if bits == 16 else np.uint8)
        back = cast.astype(np.float32)
        cases = []
        for x, c, y in zip(arr, cast_codes, back):
            xb = int(np.array([x], dtype=np.float32).view(np.uint32)[0])
            cases.append([xb, int(c), f32_bits(y)])
        result["types"][name] = {"bits": bits, "decode": decode, "cast": cases}
        print(f"{name}: {len(decode)} codes, {len(cases)} cast cases", file=sys.stderr)
    with open(out_path, "w") as f:
        json.dump(result, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
