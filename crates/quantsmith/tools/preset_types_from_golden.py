#!/usr/bin/env python3
"""Extract llama.cpp's per-tensor type choices from the golden file.

The golden file (data/golden/smollm2-dither-llamacpp-0c1e570.json) records, for
SmolLM2-135M's dithered f32 base, what `llama-quantize` (llama.cpp commit 0c1e570) wrote for
every preset, with and without an imatrix. The preset-type test only needs the types, so this
script keeps `file_type` and the `types` maps (dropping sizes and sha256 digests) and writes
crates/quantsmith/testdata/llamacpp_preset_types.json, which lets the test run without
the repository.

Usage (from the repository root):
    python3 crates/quantsmith/tools/preset_types_from_golden.py \
        data/golden/smollm2-dither-llamacpp-0c1e570.json \
        crates/quantsmith/testdata/llamacpp_preset_types.json
"""
import json
import sys


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        golden = json.load(f)
    out = {
        "source": golden["source"],
        "input": golden["input"],
        "imatrix": golden["imatrix"],
        "extracted_from": src.rsplit("/", 1)[-1],
        "presets": {},
    }
    for name, preset in sorted(golden["presets"].items()):
        out["presets"][name] = {
            "file_type": preset["file_type"],
            "plain": dict(sorted(preset["plain"]["types"].items())),
            "imatrix": dict(sorted(preset["imatrix"]["types"].items())),
        }
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
