#!/bin/sh
# Builds tools/ggml_golden_harness.c against llama.cpp's ggml-quants.c (commit 0c1e570, from
# the llama-cpp-python==0.3.36 sdist) OUTSIDE the repository. Plain -O2, no CPU-specific
# flags (so no FMA contraction), as llama.cpp's generic reference path computes.
#   usage: ggml_golden_build.sh GGML_DIR BUILD_DIR
#   GGML_DIR: .../vendor/llama.cpp/ggml of the unpacked sdist
#   (pip download --no-deps --no-binary :all: -d /tmp/lcpp llama-cpp-python==0.3.36)
set -eu
GGML=$1
OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
CFLAGS="-O2 -DNDEBUG -std=c11 -D_GNU_SOURCE -I$GGML/include -I$GGML/src -I$GGML/src/ggml-cpu"
cc $CFLAGS -c "$GGML/src/ggml-quants.c" -o "$OUT/ggml-quants.o"
cc $CFLAGS -c "$HERE/ggml_golden_stubs.c" -o "$OUT/stubs.o"
cc $CFLAGS -c "$HERE/ggml_golden_harness.c" -o "$OUT/harness.o"
cc -o "$OUT/ggml_golden_harness" "$OUT/harness.o" "$OUT/ggml-quants.o" "$OUT/stubs.o" -lm
