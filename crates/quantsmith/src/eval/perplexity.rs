//! Perplexity and KL-divergence of decoders, computed as llama.cpp's `llama-perplexity` does.
//!
//! The text's one trailing newline is dropped; it is tokenized with the vocabulary's special
//! tokens added (special-token text is not parsed); it is cut into `min(N, ⌊tokens/ctx⌋)`
//! chunks of `ctx` tokens; where the vocabulary adds BOS, BOS replaces each chunk's first
//! token; each chunk runs from an empty cache, and positions `ctx/2 … ctx−2` predict their
//! next token and are scored.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::arch::layers::exp_f32;
use crate::arch::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Settings of a perplexity run.
#[derive(Clone, Debug)]
pub struct PerplexityOptions {
    /// Tokens per chunk.
    pub ctx: usize,
    /// At most this many chunks (all that fit when `None`).
    pub max_chunks: Option<usize>,
    /// Chunks run through the model together (each still its own causal sequence from an
    /// empty cache; taller GEMMs run faster). Results do not depend on it.
    pub batch: usize,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions { ctx: 512, max_chunks: None, batch: 4 }
    }
}

/// What a decoder evaluation measured. Keys that do not apply are left out of the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct DecoderReport {
    /// Perplexity over the scored positions.
    pub ppl: f64,
    /// Its standard error.
    pub ppl_stderr: f64,
    /// Number of scored positions.
    pub tokens_scored: usize,
    /// Number of chunks evaluated.
    pub chunks: usize,
    /// Context length per chunk.
    pub ctx: usize,
    /// Wall-clock seconds spent on this model (its forward passes and scoring; the base's
    /// passes, shared by every model evaluated with it, are `base_seconds`).
    pub seconds: f64,
    /// Tokens run through this model (all positions of every chunk) per second.
    pub tokens_per_second: f64,
    /// Wall-clock seconds of the base model's forward passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_seconds: Option<f64>,
    /// The base model's perplexity on the same positions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ppl: Option<f64>,
    /// Mean KL-divergence of the model from the base, Σ p_base (log p_base − log p_model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kld_mean: Option<f64>,
    /// Standard error of the mean KL-divergence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kld_stderr: Option<f64>,
    /// Fraction of positions where model and base agree on the most likely token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agree: Option<f64>,
    /// Model perplexity over base perplexity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl_ratio: Option<f64>,
}

/// The text llama-perplexity evaluates: the file with its one trailing newline dropped.
pub fn perplexity_text(raw: &str) -> &str {
    raw.strip_suffix('\n').unwrap_or(raw)
}

/// Tokens of a text file prepared as llama-perplexity prepares them.
pub fn perplexity_tokens(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode_long(perplexity_text(text), true, None)
}

/// Running sums of a per-position statistic, f64.
#[derive(Default, Clone, Copy)]
struct Moments {
    n: usize,
    sum: f64,
    sum2: f64,
}

impl Moments {
    fn push(&mut self, v: f64) {
        self.n += 1;
        self.sum += v;
        self.sum2 += v * v;
    }
    fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }
    /// Standard error of the mean: sqrt(var / (n − 1)), var the population variance.
    fn stderr(&self) -> f64 {
        let m = self.mean();
        let var = self.sum2 / self.n as f64 - m * m;
        if var > 0.0 && self.n > 1 {
            (var / (self.n - 1) as f64).sqrt()
        } else {
            0.0
        }
    }
}

/// Log-softmax of one logit row, as llama.cpp computes it: f32 max, f64 sum of f32 exps.
/// Returns (max, log of the sum) so that log p(i) = logit[i] − max − log_sum.
fn log_softmax_parts(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, exp_sum_dispatch(logits, max).ln())
}

/// [`exp_sum`], compiled for AVX2 when the CPU has it. (A kernel passed to a generic
/// AVX2 wrapper as a closure is compiled as the closure is, for the baseline: the wrapper
/// names the kernel itself.)
fn exp_sum_dispatch(x: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(x: &[f32], max: f32) -> f64 {
            exp_sum(x, max)
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(x, max) };
        }
    }
    exp_sum(x, max)
}

/// [`kl_row`], compiled for AVX2 when the CPU has it.
fn kl_row_dispatch(base: &[f32], model: &[f32], bmax: f32, blse: f64, mmax: f32, mlse: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(base: &[f32], model: &[f32], bmax: f32, blse: f64, mmax: f32, mlse: f64) -> f64 {
            kl_row(base, model, bmax, blse, mmax, mlse)
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(base, model, bmax, blse, mmax, mlse) };
        }
    }
    kl_row(base, model, bmax, blse, mmax, mlse)
}

/// Σ exp(x − max) in f64 over eight interleaved partial sums (the f32 exponentials by
/// [`exp_f32`], which vectorises).
#[inline(always)]
fn exp_sum(x: &[f32], max: f32) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| exp_f32(v - max) as f64).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp_f32(v - max) as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// KL(base ‖ model) of one row: Σ p_b (log p_b − log p_m), with log p = logit − max − lse.
/// The difference of the log-probabilities is exact in f64; p_b (≤ 1) is formed in f32,
/// whose 1e-7 relative error is far below the figures reported.
#[inline(always)]
fn kl_row(base: &[f32], model: &[f32], bmax: f32, blse: f64, mmax: f32, mlse: f64) -> f64 {
    let inv = (-blse).exp() as f32;
    let c = (bmax as f64 - mmax as f64) + (blse - mlse);
    let mut acc = [0f64; 8];
    let term = |b: f32, m: f32| -> f64 {
        let p = exp_f32(b - bmax) * inv;
        p as f64 * ((b as f64 - m as f64) - c)
    };
    let (bc, mc) = (base.chunks_exact(8), model.chunks_exact(8));
    let tail: f64 = bc.remainder().iter().zip(mc.remainder()).map(|(&b, &m)| term(b, m)).sum();
    for (b8, m8) in bc.zip(mc) {
        for ((a, &b), &m) in acc.iter_mut().zip(b8).zip(m8) {
            *a += term(b, m);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Mean KL(base ‖ model) over the rows of two `[rows, vocab]` logit matrices.
pub fn mean_kld(base: &[f32], model: &[f32], vocab: usize) -> f64 {
    let rows = base.len() / vocab.max(1);
    let total: f64 = base
        .par_chunks(vocab)
        .zip(model.par_chunks(vocab))
        .map(|(b, m)| {
            let (bmax, blse) = log_softmax_parts(b);
            let (mmax, mlse) = log_softmax_parts(m);
            kl_row_dispatch(b, m, bmax, blse, mmax, mlse)
        })
        .sum();
    total / rows.max(1) as f64
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Per-position figures of one scored row.
struct RowStats {
    nll: f64,
    base_nll: f64,
    kld: f64,
    agree: bool,
}

fn row_stats(model: &[f32], base: Option<&[f32]>, target: usize) -> RowStats {
    let (mmax, mlse) = log_softmax_parts(model);
    let nll = -((model[target] - mmax) as f64 - mlse);
    let Some(base) = base else {
        return RowStats { nll, base_nll: 0.0, kld: 0.0, agree: true };
    };
    let (bmax, blse) = log_softmax_parts(base);
    let base_nll = -((base[target] - bmax) as f64 - blse);
    let kld = kl_row_dispatch(base, model, bmax, blse, mmax, mlse);
    RowStats { nll, base_nll, kld, agree: argmax(model) == argmax(base) }
}

/// Evaluates `model` (and, with `base`, its divergence from `base`) on `text`.
///
/// `progress(done, total)` counts tokens through the models (each model's and the base's
/// passes), updated as every block finishes.
pub fn evaluate_decoder(
    model: &Llama,
    base: Option<&Llama>,
    tok: &Tokenizer,
    text: &str,
    text_path: &Path,
    opts: &PerplexityOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<DecoderReport> {
    let mut r = evaluate_decoders(&[model], base, tok, text, text_path, opts, progress)?;
    Ok(r.remove(0))
}

/// Running sums of one model's evaluation.
#[derive(Default)]
struct Accum {
    nll: Moments,
    base_nll: Moments,
    kld: Moments,
    agree: usize,
}

/// The evaluation's tokens and the number of chunks of `opts.ctx` it scores, or the error
/// that `opts` or a text too short gives.
pub fn eval_tokens(
    tok: &Tokenizer,
    text: &str,
    text_path: &Path,
    opts: &PerplexityOptions,
) -> Result<(Vec<u32>, usize)> {
    let ctx = opts.ctx;
    if ctx < 4 {
        return Err(Error::Other(format!("a context of {ctx} tokens is too small: at least 4 tokens are needed")));
    }
    if opts.max_chunks == Some(0) {
        return Err(Error::Other("0 chunks evaluate nothing".into()));
    }
    // With a number of chunks, only the text's first pages that hold them are tokenized.
    let need = opts.max_chunks.map(|m| m.saturating_mul(ctx).max(2 * ctx));
    let tokens = tok.encode_long(perplexity_text(text), true, need)?;
    if tokens.len() < 2 * ctx {
        return Err(Error::Text {
            path: text_path.to_path_buf(),
            msg: format!(
                "{} tokens is too short for perplexity at a context of {ctx} tokens: at least {} tokens (2 × the context) are needed",
                tokens.len(),
                2 * ctx
            ),
        });
    }
    let mut n_chunks = tokens.len() / ctx;
    if let Some(m) = opts.max_chunks {
        n_chunks = n_chunks.min(m);
    }
    Ok((tokens, n_chunks))
}

/// Evaluates several models on the same chunks, running the base only once per chunk.
pub fn evaluate_decoders(
    models: &[&Llama],
    base: Option<&Llama>,
    tok: &Tokenizer,
    text: &str,
    text_path: &Path,
    opts: &PerplexityOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<DecoderReport>> {
    check_vocabularies(models, base)?;
    let tokens = eval_tokens(tok, text, text_path, opts)?;
    evaluate_decoders_on(models, base, tok, tokens, text_path, opts, progress)
}

/// The models' (and the base's) vocabularies are one size; the vocabulary of the first.
fn check_vocabularies(models: &[&Llama], base: Option<&Llama>) -> Result<usize> {
    let Some(first_model) = models.first() else {
        return Err(Error::Other("no model to evaluate".into()));
    };
    let vocab = first_model.cfg.vocab;
    for m in models.iter().copied().chain(base) {
        if m.cfg.vocab != vocab {
            return Err(Error::Other(format!(
                "{} has a vocabulary of {} tokens but {} has {}",
                m.path.display(),
                m.cfg.vocab,
                first_model.path.display(),
                vocab
            )));
        }
    }
    Ok(vocab)
}

/// [`evaluate_decoders`] on tokens already prepared by [`eval_tokens`] (a caller can
/// tokenize the text while the models load: see [`crate::arch::load_decoder_while`]).
pub fn evaluate_decoders_on(
    models: &[&Llama],
    base: Option<&Llama>,
    tok: &Tokenizer,
    (tokens, n_chunks): (Vec<u32>, usize),
    text_path: &Path,
    opts: &PerplexityOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<DecoderReport>> {
    let ctx = opts.ctx;
    let vocab = check_vocabularies(models, base)?;
    let first = ctx / 2;
    let scored = ctx - 1 - first;
    let mut acc: Vec<Accum> = models.iter().map(|_| Accum::default()).collect();
    let mut model_seconds = vec![0f64; models.len()];
    let mut base_seconds = 0f64;
    let runs = models.len() + base.is_some() as usize;
    let total_tokens = n_chunks * ctx * runs;
    let done_tokens = std::sync::atomic::AtomicUsize::new(0);
    progress(0, total_tokens);
    // Tokens of one pass over `nb` chunks, spread over the model's blocks as they finish.
    let pass = |m: &Llama, chunk: &[u32], nb: usize| -> Result<Vec<f32>> {
        let start = done_tokens.load(std::sync::atomic::Ordering::Relaxed);
        let n_layer = m.blocks.len().max(1);
        let logits = m.logits_observed(chunk, ctx, first..ctx - 1, &|i| {
            progress(start + nb * ctx * (i + 1) / n_layer, total_tokens)
        })?;
        done_tokens.store(start + nb * ctx, std::sync::atomic::Ordering::Relaxed);
        progress(start + nb * ctx, total_tokens);
        Ok(logits)
    };
    let batch = opts.batch.max(1);
    let mut c0 = 0;
    while c0 < n_chunks {
        let nb = batch.min(n_chunks - c0);
        let mut chunk = tokens[c0 * ctx..(c0 + nb) * ctx].to_vec();
        if tok.add_bos() {
            if let Some(b) = tok.bos() {
                for s in 0..nb {
                    chunk[s * ctx] = b;
                }
            }
        }
        let t = Instant::now();
        let base_logits = match base {
            Some(b) => Some(pass(b, &chunk, nb)?),
            None => None,
        };
        base_seconds += t.elapsed().as_secs_f64();
        for ((model, a), secs) in models.iter().zip(acc.iter_mut()).zip(model_seconds.iter_mut()) {
            let t = Instant::now();
            let logits = pass(model, &chunk, nb)?;
            // Row j of the logits is position first + j % scored of sequence j / scored.
            let rows: Vec<RowStats> = (0..nb * scored)
                .into_par_iter()
                .map(|j| {
                    let target = chunk[(j / scored) * ctx + first + j % scored + 1] as usize;
                    let m = &logits[j * vocab..(j + 1) * vocab];
                    let b = base_logits.as_ref().map(|b| &b[j * vocab..(j + 1) * vocab]);
                    row_stats(m, b, target)
                })
                .collect();
            // A result is never NaN: a model that computes non-finite logits is an error.
            if let Some(j) =
                rows.iter().position(|r| !(r.nll.is_finite() && r.base_nll.is_finite() && r.kld.is_finite()))
            {
                let who =
                    if rows[j].nll.is_finite() { base.map(|b| &b.path).unwrap_or(&model.path) } else { &model.path };
                return Err(Error::Other(format!(
                    "{}: the forward pass gave non-finite logits in chunk {} of {} (its weights or hyper-parameters overflow)",
                    who.display(),
                    c0 + j / scored + 1,
                    text_path.display()
                )));
            }
            for r in rows {
                a.nll.push(r.nll);
                if base.is_some() {
                    a.base_nll.push(r.base_nll);
                    a.kld.push(r.kld);
                    a.agree += r.agree as usize;
                }
            }
            *secs += t.elapsed().as_secs_f64();
        }
        c0 += nb;
    }
    Ok(acc
        .iter()
        .zip(&model_seconds)
        .map(|(a, &seconds)| {
            let ppl = a.nll.mean().exp();
            let mut report = DecoderReport {
                ppl,
                ppl_stderr: ppl * a.nll.stderr(),
                tokens_scored: a.nll.n,
                chunks: n_chunks,
                ctx,
                seconds,
                tokens_per_second: (n_chunks * ctx) as f64 / seconds,
                base_seconds: base.is_some().then_some(base_seconds),
                base_ppl: None,
                kld_mean: None,
                kld_stderr: None,
                top1_agree: None,
                ppl_ratio: None,
            };
            if base.is_some() {
                let bppl = a.base_nll.mean().exp();
                report.base_ppl = Some(bppl);
                report.kld_mean = Some(a.kld.mean());
                report.kld_stderr = Some(a.kld.stderr());
                report.top1_agree = Some(a.agree as f64 / a.kld.n as f64);
                report.ppl_ratio = Some(ppl / bppl);
            }
            report
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_newline_dropped_once() {
        assert_eq!(perplexity_text("a\n\n"), "a\n");
        assert_eq!(perplexity_text("a"), "a");
    }

    #[test]
    fn kld_of_identical_rows_is_zero_and_positive_otherwise() {
        let a = [1.0f32, 2.0, 3.0, -1.0];
        let s = row_stats(&a, Some(&a), 2);
        assert!(s.kld.abs() < 1e-12);
        assert!(s.agree);
        let b = [1.0f32, 2.5, 2.0, -1.0];
        let s = row_stats(&b, Some(&a), 2);
        assert!(s.kld > 0.01);
        assert!(!s.agree);
        // nll is −log softmax(target)
        let z: f64 = a.iter().map(|&v| (v as f64).exp()).sum();
        assert!((s.base_nll - (z.ln() - 3.0)).abs() < 1e-6);
    }

    #[test]
    fn stderr_matches_definition() {
        let mut m = Moments::default();
        for v in [1.0, 2.0, 4.0, 7.0] {
            m.push(v);
        }
        let mean = 3.5;
        let var = (6.25 + 2.25 + 0.25 + 12.25) / 4.0;
        assert!((m.stderr() - (var / 3.0f64).sqrt()).abs() < 1e-12);
        assert!((m.mean() - mean).abs() < 1e-12);
    }
}
