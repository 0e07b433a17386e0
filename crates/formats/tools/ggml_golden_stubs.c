// The few ggml.c functions ggml-quants.c calls, for the golden-vector harness only: type
// sizes of the types the harness exercises, and abort.
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include "ggml.h"

static size_t blck(enum ggml_type t) {
    switch (t) {
    case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K: case GGML_TYPE_Q8_K: case GGML_TYPE_IQ4_XS: return 256;
    default: return 32;
    }
}

size_t ggml_type_size(enum ggml_type t) {
    switch (t) {
    case GGML_TYPE_Q4_0: return 18; case GGML_TYPE_Q4_1: return 20;
    case GGML_TYPE_Q5_0: return 22; case GGML_TYPE_Q5_1: return 24;
    case GGML_TYPE_Q8_0: return 34; case GGML_TYPE_Q2_K: return 84;
    case GGML_TYPE_Q3_K: return 110; case GGML_TYPE_Q4_K: return 144;
    case GGML_TYPE_Q5_K: return 176; case GGML_TYPE_Q6_K: return 210;
    case GGML_TYPE_IQ4_NL: return 18; case GGML_TYPE_IQ4_XS: return 136;
    default: fprintf(stderr, "stub ggml_type_size: type %d not supported\n", (int)t); abort();
    }
}

size_t ggml_row_size(enum ggml_type t, int64_t ne) { return ggml_type_size(t) * (size_t)ne / blck(t); }

const char *ggml_type_name(enum ggml_type t) { (void)t; return "?"; }

void ggml_abort(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    abort();
}
