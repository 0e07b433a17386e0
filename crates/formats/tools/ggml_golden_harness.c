// Golden-vector harness for quantsmith's ggml codecs: links against llama.cpp's
// ggml-quants.c (built outside the repository by ggml_golden_build.sh) and runs its
// quantizers / dequantizers on raw little-endian files.
//
//   harness q   TYPE N_PER_ROW IN.f32 IMATRIX.f32|- OUT.bin   (quantize_TYPE, all rows)
//   harness ref TYPE IN.f32 OUT.bin                          (quantize_row_TYPE_ref)
//   harness dq  TYPE IN.bin OUT.f32                          (dequantize_row_TYPE)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-quants.h"

typedef size_t (*quant_fn)(const float *, void *, int64_t, int64_t, const float *);
typedef void (*ref_fn)(const float *, void *, int64_t);
typedef void (*deq_fn)(const void *, float *, int64_t);

struct entry {
    const char *name;
    int block;
    int bytes;
    quant_fn q;
    ref_fn r;
    deq_fn d;
};

#define E(nm, blk, sz, suffix) \
    { nm, blk, sz, quantize_##suffix, (ref_fn)quantize_row_##suffix##_ref, (deq_fn)dequantize_row_##suffix }

static const struct entry TABLE[] = {
    E("q4_0", 32, 18, q4_0),   E("q4_1", 32, 20, q4_1),   E("q5_0", 32, 22, q5_0),
    E("q5_1", 32, 24, q5_1),   E("q8_0", 32, 34, q8_0),   E("q2_k", 256, 84, q2_K),
    E("q3_k", 256, 110, q3_K), E("q4_k", 256, 144, q4_K), E("q5_k", 256, 176, q5_K),
    E("q6_k", 256, 210, q6_K), E("iq4_nl", 32, 18, iq4_nl), E("iq4_xs", 256, 136, iq4_xs),
};

static void *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void spit(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len) { perror(path); exit(2); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: see source\n"); return 2; }
    const struct entry *e = NULL;
    for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++)
        if (strcmp(TABLE[i].name, argv[2]) == 0) e = &TABLE[i];
    if (!e) { fprintf(stderr, "unknown type %s\n", argv[2]); return 2; }
    size_t len;
    if (strcmp(argv[1], "q") == 0 && argc == 7) {
        int64_t n_per_row = atoll(argv[3]);
        float *x = slurp(argv[4], &len);
        int64_t n = (int64_t)(len / 4);
        int64_t nrow = n / n_per_row;
        const float *w = NULL;
        if (strcmp(argv[5], "-") != 0) {
            size_t wl;
            w = slurp(argv[5], &wl);
            if ((int64_t)(wl / 4) != n_per_row) { fprintf(stderr, "imatrix length\n"); return 2; }
        }
        size_t out_len = (size_t)(n / e->block * e->bytes);
        void *y = calloc(out_len, 1);
        size_t got = e->q(x, y, nrow, n_per_row, w);
        if (got != out_len) { fprintf(stderr, "size %zu != %zu\n", got, out_len); return 1; }
        spit(argv[6], y, out_len);
    } else if (strcmp(argv[1], "ref") == 0) {
        float *x = slurp(argv[3], &len);
        int64_t n = (int64_t)(len / 4);
        size_t out_len = (size_t)(n / e->block * e->bytes);
        void *y = calloc(out_len, 1);
        e->r(x, y, n);
        spit(argv[4], y, out_len);
    } else if (strcmp(argv[1], "dq") == 0) {
        void *x = slurp(argv[3], &len);
        int64_t n = (int64_t)(len / e->bytes * e->block);
        float *y = calloc((size_t)n, 4);
        e->d(x, y, n);
        spit(argv[4], y, (size_t)n * 4);
    } else {
        fprintf(stderr, "bad mode\n");
        return 2;
    }
    return 0;
}
