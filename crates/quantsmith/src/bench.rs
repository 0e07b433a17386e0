//! Throughput measurements: decoder evaluation against the machine's GEMM rate, measured in
//! one run so that the ratio holds on a noisy machine.

use std::time::Instant;

use serde::Serialize;

use crate::arch::llama::Llama;
use crate::linalg::matmul_nt;

/// Figures of one evaluation benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct EvalBench {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks timed.
    pub chunks: usize,
    /// Seconds per chunk (forward over `ctx` tokens, logits for the scored half).
    pub seconds_per_chunk: f64,
    /// Tokens per second.
    pub tokens_per_second: f64,
    /// Floating-point work of one chunk, GFLOP.
    pub gflop_per_chunk: f64,
    /// Achieved rate of the forward pass, GFLOP/s.
    pub forward_gflops: f64,
    /// faer's f32 GEMM rate on the model's largest layer shape, GFLOP/s, measured alongside.
    pub gemm_gflops_layer: f64,
    /// faer's f32 GEMM rate on 1024³, GFLOP/s, measured alongside.
    pub gemm_gflops_1024: f64,
    /// forward_gflops / gemm_gflops_1024.
    pub fraction_of_gemm: f64,
}

/// FLOPs of one perplexity chunk: every linear layer over `ctx` tokens, causal attention
/// (as computed: full score matrices), and the head over the scored half.
pub fn chunk_flops(m: &Llama, ctx: usize) -> f64 {
    let c = &m.cfg;
    let linear: usize = m
        .blocks
        .first()
        .map_or(0, |b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down].iter().map(|l| l.out * l.inp).sum::<usize>());
    let per_layer = 2.0 * ctx as f64 * linear as f64 + 2.0 * 2.0 * (ctx * ctx) as f64 * (c.n_head * c.head_dim) as f64;
    let scored = ctx - 1 - ctx / 2;
    per_layer * c.n_layer as f64 + 2.0 * scored as f64 * (c.vocab * c.d_model) as f64
}

fn gemm_rate(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    matmul_nt(&a, &b, m, n, k, &mut c, true);
    let t = Instant::now();
    for _ in 0..reps {
        matmul_nt(&a, &b, m, n, k, &mut c, true);
    }
    reps as f64 * 2.0 * (m * n * k) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Times `chunks` perplexity-shaped forward passes of `m` (run `batch` chunks at a time, as
/// evaluation does) and the GEMM rates beside them.
pub fn bench_eval(m: &Llama, ctx: usize, chunks: usize, batch: usize) -> crate::Result<EvalBench> {
    let batch = batch.max(1);
    let tokens: Vec<u32> = (0..(ctx * batch) as u32).map(|i| (i * 7919 + 13) % m.cfg.vocab as u32).collect();
    let first = ctx / 2;
    m.logits(&tokens, ctx, first..ctx - 1)?; // warm-up
    let gemm_before = gemm_rate(1024, 1024, 1024, 4);
    let rounds = chunks.max(1).div_ceil(batch);
    let t = Instant::now();
    for _ in 0..rounds {
        m.logits(&tokens, ctx, first..ctx - 1)?;
    }
    let secs = t.elapsed().as_secs_f64() / (rounds * batch) as f64;
    let gemm_after = gemm_rate(1024, 1024, 1024, 4);
    let layer = gemm_rate(ctx, m.cfg.d_ff, m.cfg.d_model, 8);
    let gemm = 0.5 * (gemm_before + gemm_after);
    let gflop = chunk_flops(m, ctx) / 1e9;
    Ok(EvalBench {
        ctx,
        chunks: rounds * batch,
        seconds_per_chunk: secs,
        tokens_per_second: ctx as f64 / secs,
        gflop_per_chunk: gflop,
        forward_gflops: gflop / secs,
        gemm_gflops_layer: layer,
        gemm_gflops_1024: gemm,
        fraction_of_gemm: gflop / secs / gemm,
    })
}
