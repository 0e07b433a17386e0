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

/// Figures of the Hessian benchmark at one input width.
#[derive(Clone, Debug, Serialize)]
pub struct HessianBench {
    /// Input width n.
    pub width: usize,
    /// Input rows (tokens) per batch.
    pub rows: usize,
    /// Seconds to add one batch (the f32 Gram's lower triangle, its copy out and the
    /// moments) and fold it into the f64 sum, as calibration does.
    pub seconds_per_batch: f64,
    /// Useful work: rows · n · (n + 1) flops (the lower triangle of XᵀX).
    pub gflops: f64,
    /// The same seconds with the fold left out.
    pub gflops_without_fold: f64,
    /// faer's full f32 GEMM on the same shapes (XᵀX as a plain GEMM), measured alongside.
    pub gemm_gflops: f64,
    /// gflops / gemm_gflops.
    pub fraction_of_gemm: f64,
}

fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Uniform in [-1, 1): activation-like magnitudes do not matter to the rate.
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Times Hessian accumulation for inputs of each width in `widths` over batches of `rows`
/// tokens against faer's GEMM on the same product, measured in the same run.
pub fn bench_hessian(widths: &[usize], rows: usize, reps: usize) -> Vec<HessianBench> {
    use crate::calib::hessian::Hessian;
    let reps = reps.max(1);
    widths
        .iter()
        .map(|&n| {
            let x = seeded(rows * n, n as u64);
            let mut h = Hessian::new(n);
            h.add(&x, rows); // warm-up
            let t = Instant::now();
            let mut parts = Vec::with_capacity(reps);
            for _ in 0..reps {
                let mut p = h.part();
                p.add(&x, rows);
                parts.push(p);
            }
            let add = t.elapsed().as_secs_f64();
            for p in &parts {
                h.fold(p);
            }
            let total = t.elapsed().as_secs_f64();
            // XᵀX as a full GEMM: A = Xᵀ ([n, rows]), B = Xᵀ as matmul_nt's [n, rows] too.
            let xt: Vec<f32> = {
                let mut v = vec![0f32; rows * n];
                for r in 0..rows {
                    for c in 0..n {
                        v[c * rows + r] = x[r * n + c];
                    }
                }
                v
            };
            let mut c = vec![0f32; n * n];
            matmul_nt(&xt, &xt, n, n, rows, &mut c, true);
            let tg = Instant::now();
            for _ in 0..reps {
                matmul_nt(&xt, &xt, n, n, rows, &mut c, true);
            }
            let gemm = reps as f64 * 2.0 * (n * n * rows) as f64 / tg.elapsed().as_secs_f64() / 1e9;
            let flop = reps as f64 * (rows * n * (n + 1)) as f64;
            HessianBench {
                width: n,
                rows,
                seconds_per_batch: total / reps as f64,
                gflops: flop / total / 1e9,
                gflops_without_fold: flop / add / 1e9,
                gemm_gflops: gemm,
                fraction_of_gemm: flop / total / 1e9 / gemm,
            }
        })
        .collect()
}

/// Figures of the encoder benchmark for one format: medians over the repetitions, each of
/// which reads the matrix, encodes it and decodes it, one after the other.
#[derive(Clone, Debug, Serialize)]
pub struct EncodeBench {
    /// The format's spec.
    pub format: String,
    /// Input f32 bytes encoded per second, GB/s (10⁹).
    pub encode_gbps: f64,
    /// Input-sized f32 bytes decoded per second, GB/s.
    pub decode_gbps: f64,
    /// The parallel read of the same matrix, GB/s, measured alongside.
    pub read_gbps: f64,
    /// The median over repetitions of encode rate / read rate, each pair taken back to back
    /// (the machine's bandwidth drifts between repetitions; a pair shares its conditions).
    pub encode_fraction_of_read: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times encoding and decoding of a `rows × cols` f32 matrix in each format against a parallel
/// read of the same matrix (memory bandwidth), measured in the same run: each repetition reads,
/// encodes and decodes once, and the figures are medians over the repetitions.
pub fn bench_encode(specs: &[String], rows: usize, cols: usize, reps: usize) -> crate::Result<Vec<EncodeBench>> {
    use formats::Format;
    use rayon::prelude::*;
    let reps = reps.max(1);
    // Weight-like: a smooth spread with a few larger values per row.
    let data: Vec<f32> = seeded(rows * cols, 7).iter().map(|v| 0.02 * v * (1.0 + 3.0 * v * v * v * v)).collect();
    let gb = (rows * cols * 4) as f64 / 1e9;
    let rate = |t: Instant| gb / t.elapsed().as_secs_f64();
    let read = || {
        let t = Instant::now();
        let m = data.par_chunks(1 << 16).map(|c| formats::format::min_max(c).1).reduce(|| 0.0, f32::max);
        std::hint::black_box(m);
        rate(t)
    };
    read();
    let mut deq = vec![0f32; rows * cols];
    let mut out = Vec::new();
    for spec in specs {
        let f = Format::parse(spec).map_err(|e| crate::Error::Other(format!("{spec}: {e}")))?;
        let encode = || f.quantize(&data, rows, cols, None).map_err(|e| crate::Error::Other(format!("{spec}: {e}")));
        // One untimed round first: page faults of first allocations, caches, clocks.
        let q = encode()?;
        f.dequantize_into(&q, &mut deq).map_err(|e| crate::Error::Other(e.to_string()))?;
        let (mut rd, mut enc, mut dec, mut frac) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let r = read();
            let t = Instant::now();
            let q = std::hint::black_box(encode()?);
            let e = rate(t);
            let t = Instant::now();
            f.dequantize_into(&q, &mut deq).map_err(|e| crate::Error::Other(e.to_string()))?;
            dec.push(rate(t));
            rd.push(r);
            enc.push(e);
            frac.push(e / r);
        }
        out.push(EncodeBench {
            format: spec.clone(),
            encode_gbps: median(enc),
            decode_gbps: median(dec),
            read_gbps: median(rd),
            encode_fraction_of_read: median(frac),
        });
    }
    Ok(out)
}
