//! BERT encoder (all-MiniLM-L6-v2 and kin) with sentence-transformers pooling.
//!
//! Learned absolute positions, post-LayerNorm blocks, exact erf GELU. A batch of sentences is
//! run *packed*: the token rows of all sequences are stacked into one `[tokens, hidden]`
//! matrix, so every linear layer is one GEMM over the whole batch and no compute is spent on
//! padding; attention alone looks at each sequence separately. Because nothing is padded the
//! result of a sentence does not depend on what it was batched with (up to GEMM rounding).

use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde_json::Value;

use crate::tensor::TensorSource;
use crate::{Error, Result};

/// Tokens per forward batch: large enough that the GEMMs run near peak, small enough that
/// the `[tokens, intermediate]` activation stays in the tens of megabytes.
const BATCH_TOKENS: usize = 4096;

/// sentence-transformers' default `max_seq_length` when sentence_bert_config.json is absent.
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// The feed-forward non-linearity named by `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: x·Φ(x) with the exact erf.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

/// Shape hyper-parameters of a BERT encoder, from config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the learned position table (longest sequence).
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// Feed-forward activation.
    pub hidden_act: Activation,
}

fn config_err(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: path.to_path_buf(), key: key.to_string(), msg: msg.into() }
}

fn json_usize(v: &Value, path: &Path, key: &str) -> Result<usize> {
    let x = v.get(key).ok_or_else(|| config_err(path, key, "missing"))?;
    let n = x.as_u64().ok_or_else(|| config_err(path, key, format!("expected a non-negative integer, found {x}")))?;
    if n == 0 {
        return Err(config_err(path, key, "must be positive"));
    }
    usize::try_from(n).map_err(|_| config_err(path, key, "too large"))
}

impl BertConfig {
    /// Reads the hyper-parameters from a parsed config.json (`path` is only for messages).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if let Some(mt) = v.get("model_type") {
            if mt.as_str() != Some("bert") {
                return Err(config_err(path, "model_type", format!("expected \"bert\", found {mt}")));
            }
        }
        if let Some(pe) = v.get("position_embedding_type") {
            if pe.as_str() != Some("absolute") {
                return Err(config_err(
                    path,
                    "position_embedding_type",
                    format!("only \"absolute\" is supported, found {pe}"),
                ));
            }
        }
        let hidden_act = match v.get("hidden_act").and_then(Value::as_str) {
            Some("gelu") => Activation::Gelu,
            Some("gelu_new") | Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(config_err(
                    path,
                    "hidden_act",
                    format!("unsupported activation \"{other}\" (supported: gelu, gelu_new, gelu_pytorch_tanh)"),
                ))
            }
            None => return Err(config_err(path, "hidden_act", "missing or not a string")),
        };
        let layer_norm_eps =
            match v.get("layer_norm_eps") {
                None => 1e-12,
                Some(x) => x.as_f64().filter(|e| *e > 0.0).ok_or_else(|| {
                    config_err(path, "layer_norm_eps", format!("expected a positive number, found {x}"))
                })? as f32,
            };
        let type_vocab_size = match v.get("type_vocab_size") {
            None => 2,
            Some(_) => json_usize(v, path, "type_vocab_size")?,
        };
        let cfg = BertConfig {
            vocab_size: json_usize(v, path, "vocab_size")?,
            hidden_size: json_usize(v, path, "hidden_size")?,
            num_attention_heads: json_usize(v, path, "num_attention_heads")?,
            num_hidden_layers: json_usize(v, path, "num_hidden_layers")?,
            intermediate_size: json_usize(v, path, "intermediate_size")?,
            max_position_embeddings: json_usize(v, path, "max_position_embeddings")?,
            type_vocab_size,
            layer_norm_eps,
            hidden_act,
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(config_err(
                path,
                "num_attention_heads",
                format!("{} does not divide hidden_size {}", cfg.num_attention_heads, cfg.hidden_size),
            ));
        }
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A dense layer `y = x·Wᵀ + b` with PyTorch's `[out, in]` weight layout.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Row-major `[out_features, in_features]`.
    pub weight: Vec<f32>,
    /// `[out_features]`.
    pub bias: Vec<f32>,
    /// Output width.
    pub out_features: usize,
    /// Input width.
    pub in_features: usize,
}

impl Linear {
    /// `out[rows, out_features] = x[rows, in_features]·Wᵀ + b`, one GEMM with parallelism `par`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], par: Par) {
        debug_assert_eq!(x.len(), rows * self.in_features);
        debug_assert_eq!(out.len(), rows * self.out_features);
        for row in out.chunks_exact_mut(self.out_features) {
            row.copy_from_slice(&self.bias);
        }
        if rows == 0 {
            return;
        }
        let lhs = MatRef::from_row_major_slice(x, rows, self.in_features);
        let rhs = MatRef::from_row_major_slice(&self.weight, self.out_features, self.in_features).transpose();
        let dst = MatMut::from_row_major_slice_mut(out, rows, self.out_features);
        matmul(dst, Accum::Add, lhs, rhs, 1.0f32, par);
    }
}

/// LayerNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale, `[hidden]`.
    pub weight: Vec<f32>,
    /// Shift, `[hidden]`.
    pub bias: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalises every row of `x` (row width = `weight.len()`) in place.
    pub fn forward_in_place(&self, x: &mut [f32]) {
        let n = self.weight.len();
        x.par_chunks_mut(n).for_each(|row| {
            // Statistics in f64: rows of the residual stream can carry large outliers.
            let mean = lane_sum(row, |v| v as f64) / n as f64;
            let var = lane_sum(row, |v| (v as f64 - mean) * (v as f64 - mean)) / n as f64;
            let inv = 1.0 / (var + self.eps as f64).sqrt();
            let (mean, inv) = (mean as f32, inv as f32);
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        });
    }
}

/// One post-LayerNorm transformer block.
#[derive(Clone, Debug)]
pub struct BertLayer {
    /// `attention.self.query`.
    pub query: Linear,
    /// `attention.self.key`.
    pub key: Linear,
    /// `attention.self.value`.
    pub value: Linear,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm,
}

/// The token ids of one sequence as the model consumes them (special tokens included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Vocabulary ids.
    pub ids: Vec<u32>,
    /// Segment ids (all 0 for single sentences).
    pub type_ids: Vec<u32>,
}

/// BERT weights and the token-level forward pass.
#[derive(Clone, Debug)]
pub struct BertEncoder {
    /// Hyper-parameters.
    pub config: BertConfig,
    /// `[vocab, hidden]`.
    pub word_embeddings: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Vec<f32>,
    /// `[type_vocab, hidden]`.
    pub token_type_embeddings: Vec<f32>,
    /// `embeddings.LayerNorm`.
    pub embeddings_norm: LayerNorm,
    /// The blocks, in order.
    pub layers: Vec<BertLayer>,
}

/// Loads tensors by Hugging Face name, checking presence and shape.
struct Loader<'a> {
    src: &'a dyn TensorSource,
    path: &'a Path,
    prefix: &'static str,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{}", self.prefix, name);
        let err = |msg: String| Error::Tensor { path: self.path.to_path_buf(), tensor: full.clone(), msg };
        let info = self.src.info(&full).ok_or_else(|| err("missing".into()))?;
        if info.shape != shape {
            return Err(err(format!("shape {:?}, expected {:?}", info.shape, shape)));
        }
        let data = self.src.load_f32(&full)?;
        if data.len() != info.numel() {
            return Err(err(format!("{} values read, expected {}", data.len(), info.numel())));
        }
        Ok(data)
    }

    fn linear(&self, name: &str, out_features: usize, in_features: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.tensor(&format!("{name}.weight"), &[out_features, in_features])?,
            bias: self.tensor(&format!("{name}.bias"), &[out_features])?,
            out_features,
            in_features,
        })
    }

    fn norm(&self, name: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{name}.weight"), &[n])?,
            bias: self.tensor(&format!("{name}.bias"), &[n])?,
            eps,
        })
    }
}

impl BertEncoder {
    /// Reads the weights (Hugging Face names, optionally under `bert.`) from `src`; `path`
    /// names the checkpoint in error messages.
    pub fn load(config: BertConfig, src: &dyn TensorSource, path: &Path) -> Result<Self> {
        let prefix = if src.info("embeddings.word_embeddings.weight").is_none()
            && src.info("bert.embeddings.word_embeddings.weight").is_some()
        {
            "bert."
        } else {
            ""
        };
        let l = Loader { src, path, prefix };
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let word_embeddings = l.tensor("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position_embeddings =
            l.tensor("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
        let token_type_embeddings =
            l.tensor("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        let embeddings_norm = l.norm("embeddings.LayerNorm", h, eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let p = format!("encoder.layer.{n}");
                Ok(BertLayer {
                    query: l.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: l.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: l.linear(&format!("{p}.attention.self.value"), h, h)?,
                    attention_output: l.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attention_norm: l.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    intermediate: l.linear(&format!("{p}.intermediate.dense"), i, h)?,
                    output: l.linear(&format!("{p}.output.dense"), h, i)?,
                    output_norm: l.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertEncoder { config, word_embeddings, position_embeddings, token_type_embeddings, embeddings_norm, layers })
    }

    /// Runs a batch of sequences and returns the final hidden states, packed: the rows of
    /// sequence 0, then those of sequence 1, …, each row `hidden_size` wide.
    pub fn forward(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        self.forward_with(seqs, Par::rayon(0))
    }

    /// As [`BertEncoder::forward`], with the GEMMs' parallelism given: `Par::Seq` when the
    /// caller already runs several batches side by side.
    pub fn forward_with(&self, seqs: &[Tokens], par: Par) -> Result<Vec<f32>> {
        let mut x = self.embed_tokens(seqs)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
        for layer in &self.layers {
            self.layer_forward(layer, &mut x, &lens, par);
        }
        Ok(x)
    }

    /// Word + position + token-type embeddings followed by LayerNorm, packed as in `forward`.
    pub fn embed_tokens(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        let c = &self.config;
        let h = c.hidden_size;
        let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        for (n, s) in seqs.iter().enumerate() {
            if s.ids.is_empty() {
                return Err(Error::Other(format!("sequence {n} has no tokens")));
            }
            if s.type_ids.len() != s.ids.len() {
                return Err(Error::Other(format!(
                    "sequence {n}: {} type ids for {} tokens",
                    s.type_ids.len(),
                    s.ids.len()
                )));
            }
            if s.ids.len() > c.max_position_embeddings {
                return Err(Error::Other(format!(
                    "sequence {n} has {} tokens; the model has {} positions",
                    s.ids.len(),
                    c.max_position_embeddings
                )));
            }
            for (pos, (&id, &tt)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                let (id, tt) = (id as usize, tt as usize);
                if id >= c.vocab_size {
                    return Err(Error::Other(format!("token id {id} is outside the vocabulary of {}", c.vocab_size)));
                }
                if tt >= c.type_vocab_size {
                    return Err(Error::Other(format!(
                        "token type {tt} is outside the {} token types",
                        c.type_vocab_size
                    )));
                }
                let w = &self.word_embeddings[id * h..(id + 1) * h];
                let p = &self.position_embeddings[pos * h..(pos + 1) * h];
                let t = &self.token_type_embeddings[tt * h..(tt + 1) * h];
                x.extend(w.iter().zip(p).zip(t).map(|((a, b), c)| a + b + c));
            }
        }
        self.embeddings_norm.forward_in_place(&mut x);
        Ok(x)
    }

    /// One block over packed hidden states `x` whose sequences have lengths `lens`.
    pub fn layer_forward(&self, layer: &BertLayer, x: &mut [f32], lens: &[usize], par: Par) {
        let h = self.config.hidden_size;
        let rows = x.len() / h;
        let mut q = vec![0.0f32; rows * h];
        let mut k = vec![0.0f32; rows * h];
        let mut v = vec![0.0f32; rows * h];
        layer.query.forward(x, rows, &mut q, par);
        layer.key.forward(x, rows, &mut k, par);
        layer.value.forward(x, rows, &mut v, par);
        let ctx = self.attention(&q, &k, &v, lens);
        drop((q, k, v));

        let mut a = vec![0.0f32; rows * h];
        layer.attention_output.forward(&ctx, rows, &mut a, par);
        add_in_place(&mut a, x);
        layer.attention_norm.forward_in_place(&mut a);

        let mut inter = vec![0.0f32; rows * self.config.intermediate_size];
        layer.intermediate.forward(&a, rows, &mut inter, par);
        let act = self.config.hidden_act;
        inter.par_chunks_mut(4096).for_each(|c| activate(act, c));
        layer.output.forward(&inter, rows, x, par);
        add_in_place(x, &a);
        layer.output_norm.forward_in_place(x);
    }

    /// Scaled dot-product self-attention of each sequence with itself; returns the context
    /// `[rows, hidden]`, heads side by side as in Hugging Face's layout.
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], lens: &[usize]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let dh = self.config.head_dim();
        let heads = self.config.num_attention_heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let mut ctx = vec![0.0f32; q.len()];
        // Each sequence owns a contiguous block of rows, so sequences run in parallel safely.
        let mut jobs = Vec::with_capacity(lens.len());
        let mut rest: &mut [f32] = &mut ctx;
        let mut offset = 0;
        for &len in lens {
            let (mine, tail) = rest.split_at_mut(len * h);
            jobs.push((offset, len, mine));
            rest = tail;
            offset += len;
        }
        jobs.into_par_iter().for_each(|(off, len, out)| {
            let mut scores = vec![0.0f32; len * len];
            let span = (len - 1) * h + dh;
            for head in 0..heads {
                let start = off * h + head * dh;
                let qh = MatRef::from_row_major_slice_with_stride(&q[start..start + span], len, dh, h);
                let kh = MatRef::from_row_major_slice_with_stride(&k[start..start + span], len, dh, h);
                let vh = MatRef::from_row_major_slice_with_stride(&v[start..start + span], len, dh, h);
                let s = MatMut::from_row_major_slice_mut(&mut scores, len, len);
                matmul(s, Accum::Replace, qh, kh.transpose(), scale, Par::Seq);
                for row in scores.chunks_exact_mut(len) {
                    softmax_in_place(row);
                }
                let s = MatRef::from_row_major_slice(&scores, len, len);
                // Not `MatMut::from_row_major_slice_with_stride_mut`: in faer 0.22.6 it swaps
                // the strides (it builds a column-major view) and writes out of bounds.
                let oh =
                    MatMut::from_column_major_slice_with_stride_mut(&mut out[head * dh..head * dh + span], dh, len, h)
                        .transpose_mut();
                matmul(oh, Accum::Replace, s, vh, 1.0f32, Par::Seq);
            }
        });
        ctx
    }
}

/// Applies the activation to a slice, with AVX2 when the CPU has it: the activation is a
/// sizeable share of an encoder's time, and the portable build only has 4-wide SSE2.
fn activate(act: Activation, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { activate_avx2(act, x) };
            return;
        }
    }
    activate_portable(act, x);
}

#[inline(always)]
fn activate_portable(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
        Activation::GeluTanh => x.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn activate_avx2(act: Activation, x: &mut [f32]) {
    // The same code, compiled with 8-wide vectors.
    activate_portable(act, x)
}

fn add_in_place(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(4096)
        .zip(src.par_chunks(4096))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(a, b)| *a += b));
}

/// Σ f(x) in f64 over eight interleaved partial sums: a single running sum is a serial
/// dependency chain the compiler may not reorder, eight independent ones vectorise.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + tail
}

fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Separate passes so the exponentials vectorise; the sum is accumulated in f64.
    row.iter_mut().for_each(|v| *v = exp_f32(*v - max));
    let inv = (1.0 / lane_sum(row, |v| v as f64)) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// e^x in f32 without branches or library calls, so loops over it vectorise.
///
/// x = k·ln2 + r with |r| ≤ ln2/2; e^r by its Taylor polynomial of degree 7 (truncation error
/// below 6e-9 relative), 2^k assembled in the exponent bits. Inputs are clamped to the range
/// where 2^k is a normal float, so the result saturates instead of turning into NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the constants are quoted exactly as derived
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k·LN2_HI is exact for |k| < 2^8.
    const LN2_HI: f32 = 0.693_145_751_953_125;
    const LN2_LO: f32 = 1.428_606_765_330_187e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer with SSE2 alone.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let kf = (x * LOG2E + ROUND) - ROUND;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let bits = ((kf as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Coefficients (highest power first) of P in erfc(a) = t·exp(−a² + P(t)), t = 1/(1 + a/2),
/// fitted to double-precision erfc on a ∈ [0, 10] by tools/erfc_fit.py (max relative error
/// 4e-9 before f32 rounding).
#[allow(clippy::excessive_precision)] // quoted as the generator prints them
const ERFC_P: [f32; 12] = [
    -8.598080681e-02,
    4.065444852e-01,
    -5.759389732e-01,
    -2.424179565e-01,
    1.535884341e+00,
    -1.613969654e+00,
    7.120797119e-01,
    -3.892044735e-01,
    1.526647630e-01,
    3.650691715e-01,
    1.000810202e+00,
    -1.265540812e+00,
];

/// erfc(a) for a ≥ 0 (relative error a few f32 ulps), branch-free.
#[inline(always)]
pub fn erfc_nonneg_f32(a: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = ERFC_P[0];
    for &c in &ERFC_P[1..] {
        p = p * t + c;
    }
    t * exp_f32(p - a * a)
}

/// erf(x) in f32.
pub fn erf_f32(x: f32) -> f32 {
    let e = 1.0 - erfc_nonneg_f32(x.abs());
    if x < 0.0 {
        -e
    } else {
        e
    }
}

/// Exact GELU: x·Φ(x) = x·(1 + erf(x/√2))/2.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    // Written through erfc of |x| so that the tail for negative x keeps its relative accuracy
    // (1 + erf(x/√2) would cancel).
    let half_erfc = 0.5 * erfc_nonneg_f32(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let neg = x * half_erfc;
    if x < 0.0 {
        neg
    } else {
        x - neg
    }
}

/// GELU's tanh approximation (`gelu_new`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    let u = C * (x + 0.044_715 * x * x * x);
    // tanh(u) = 1 − 2/(e^{2u} + 1), finite for every u thanks to exp_f32's clamping.
    let tanh = 1.0 - 2.0 / (exp_f32(2.0 * u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// How token states become one sentence vector (sentence-transformers' Pooling module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state ([CLS]).
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
    /// Mean over the tokens.
    Mean,
    /// Sum over the tokens divided by √length.
    MeanSqrtLen,
    /// The last token's state.
    LastToken,
}

/// Pools the states of one sequence (`hidden[len, hidden_size]`); several modes are
/// concatenated in the given order.
pub fn pool(hidden: &[f32], hidden_size: usize, modes: &[PoolingMode]) -> Vec<f32> {
    let len = hidden.len() / hidden_size;
    let mut out = Vec::with_capacity(hidden_size * modes.len());
    let sum = || {
        let mut s = vec![0.0f64; hidden_size];
        for row in hidden.chunks_exact(hidden_size) {
            s.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
        }
        s
    };
    for mode in modes {
        match mode {
            PoolingMode::Cls => out.extend_from_slice(&hidden[..hidden_size]),
            PoolingMode::LastToken => out.extend_from_slice(&hidden[(len - 1) * hidden_size..]),
            PoolingMode::Max => {
                let mut m = vec![f32::NEG_INFINITY; hidden_size];
                for row in hidden.chunks_exact(hidden_size) {
                    m.iter_mut().zip(row).for_each(|(a, &b)| *a = a.max(b));
                }
                out.extend(m);
            }
            PoolingMode::Mean => out.extend(sum().into_iter().map(|s| (s / len as f64) as f32)),
            PoolingMode::MeanSqrtLen => out.extend(sum().into_iter().map(|s| (s / (len as f64).sqrt()) as f32)),
        }
    }
    out
}

/// Scales `v` to unit Euclidean length (sentence-transformers' Normalize; a zero vector stays
/// zero, as torch's normalize with its epsilon leaves it).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let inv = (1.0 / norm.max(1e-12)) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
}

/// A sentence-transformers BERT model: tokenizer, encoder, pooling and normalisation.
pub struct Bert {
    /// The transformer.
    pub encoder: BertEncoder,
    /// Pooling modes, concatenated in this order.
    pub pooling: Vec<PoolingMode>,
    /// Whether sentence vectors are L2-normalised (a Normalize module is present).
    pub normalize: bool,
    /// Longest token sequence (special tokens included); longer inputs are truncated.
    pub max_seq_length: usize,
    /// sentence-transformers' `do_lower_case`: lower-case the text before tokenizing.
    lowercase: bool,
    tokenizer: tokenizers::Tokenizer,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Pooling and normalisation as modules.json (+ the Pooling module's config.json) say.
fn read_sentence_modules(dir: &Path, hidden_size: usize) -> Result<(Vec<PoolingMode>, bool)> {
    let modules_path = dir.join("modules.json");
    let Some(modules) = read_json_if_exists(&modules_path)? else {
        return Ok((vec![PoolingMode::Mean], true));
    };
    let list = modules.as_array().ok_or_else(|| config_err(&modules_path, "(root)", "expected a list of modules"))?;
    let mut pooling = None;
    let mut normalize = false;
    for m in list {
        let ty = m
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| config_err(&modules_path, "type", "missing or not a string"))?;
        let kind = ty.rsplit('.').next().unwrap_or(ty);
        match kind {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("1_Pooling");
                let cfg_path = dir.join(sub).join("config.json");
                pooling = Some(read_pooling_config(&cfg_path, hidden_size)?);
            }
            _ => {
                return Err(config_err(&modules_path, "type", format!("unsupported sentence-transformers module {ty}")))
            }
        }
    }
    let pooling = pooling.unwrap_or_else(|| vec![PoolingMode::Mean]);
    Ok((pooling, normalize))
}

fn read_pooling_config(path: &Path, hidden_size: usize) -> Result<Vec<PoolingMode>> {
    let v = read_json(path)?;
    let flag = |key: &str| -> Result<bool> {
        match v.get(key) {
            None => Ok(false),
            Some(x) => x.as_bool().ok_or_else(|| config_err(path, key, format!("expected true or false, found {x}"))),
        }
    };
    if let Some(d) = v.get("word_embedding_dimension") {
        if d.as_u64() != Some(hidden_size as u64) {
            return Err(config_err(
                path,
                "word_embedding_dimension",
                format!("{d} differs from the model's hidden_size {hidden_size}"),
            ));
        }
    }
    if flag("pooling_mode_weightedmean_tokens")? {
        return Err(config_err(path, "pooling_mode_weightedmean_tokens", "weighted-mean pooling is not supported"));
    }
    // sentence-transformers concatenates the enabled modes in this order.
    let mut modes = Vec::new();
    for (key, mode) in [
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
        ("pooling_mode_lasttoken", PoolingMode::LastToken),
    ] {
        if flag(key)? {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        return Err(config_err(path, "pooling_mode_mean_tokens", "no pooling mode is enabled"));
    }
    Ok(modes)
}

impl Bert {
    /// Builds the sentence model from a directory holding tokenizer.json (and optionally
    /// sentence_bert_config.json, modules.json, 1_Pooling/config.json), the parsed
    /// config.json, and the weights in `src`.
    pub fn load(dir: &Path, config_json: &Value, src: &dyn TensorSource) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = BertConfig::from_json(config_json, &config_path)?;
        let encoder = BertEncoder::load(config, src, dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::Tokenizer(format!("{}: not found", tokenizer_path.display())));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        Self::from_parts(encoder, tokenizer, dir)
    }

    /// Opens a Hugging Face directory (config.json, safetensors weights, tokenizer.json).
    pub fn open(dir: &Path) -> Result<Self> {
        let hf = crate::io::hf::HfModel::open(dir)?;
        Self::load(hf.dir(), hf.config(), &hf)
    }

    /// Builds the sentence model from an opened checkpoint (Hugging Face directories only:
    /// a GGUF file carries no sentence-transformers pooling configuration).
    pub fn from_model(model: &crate::io::ModelFile) -> Result<Self> {
        match model {
            crate::io::ModelFile::Hf(hf) => Self::load(hf.dir(), hf.config(), hf),
            crate::io::ModelFile::Gguf(g) => Err(Error::corrupt(
                g.path(),
                "BERT encoders are read from Hugging Face directories (config.json, model.safetensors, tokenizer.json), not GGUF",
            )),
        }
    }

    /// Joins an encoder with a tokenizer, reading the sentence-transformers settings from
    /// `dir` (all optional there: max length 256, mean pooling, L2 normalisation).
    pub fn from_parts(encoder: BertEncoder, mut tokenizer: tokenizers::Tokenizer, dir: &Path) -> Result<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > encoder.config.vocab_size {
            return Err(Error::Tokenizer(format!(
                "{}: {vocab} tokens, but the model's vocab_size is {}",
                dir.join("tokenizer.json").display(),
                encoder.config.vocab_size
            )));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let st = read_json_if_exists(&st_path)?;
        let mut max_seq_length = DEFAULT_MAX_SEQ_LENGTH;
        let mut lowercase = false;
        if let Some(st) = &st {
            if let Some(m) = st.get("max_seq_length") {
                max_seq_length = m.as_u64().filter(|&m| m >= 2).ok_or_else(|| {
                    config_err(&st_path, "max_seq_length", format!("expected an integer ≥ 2, found {m}"))
                })? as usize;
            }
            if let Some(l) = st.get("do_lower_case") {
                lowercase = l.as_bool().ok_or_else(|| {
                    config_err(&st_path, "do_lower_case", format!("expected true or false, found {l}"))
                })?;
            }
        }
        // sentence-transformers caps the length at the position table as well.
        let max_seq_length = max_seq_length.min(encoder.config.max_position_embeddings);
        let (pooling, normalize) = read_sentence_modules(dir, encoder.config.hidden_size)?;
        // tokenizer.json of MiniLM pads to and truncates at 128: sentence-transformers pads
        // nothing (we run packed) and truncates at its own max_seq_length.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Bert { encoder, pooling, normalize, max_seq_length, lowercase, tokenizer })
    }

    /// Length of a sentence vector.
    pub fn dim(&self) -> usize {
        self.encoder.config.hidden_size * self.pooling.len()
    }

    /// Token ids of each text, with the special tokens the tokenizer's post-processor adds,
    /// truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let inputs: Vec<String> =
            texts.iter().map(|t| if self.lowercase { t.to_lowercase() } else { t.to_string() }).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        encodings
            .into_iter()
            .map(|e| {
                let t = Tokens { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() };
                if t.ids.is_empty() {
                    // Only a tokenizer without a post-processor yields nothing for "".
                    Err(Error::Tokenizer("a text produced no tokens".into()))
                } else {
                    Ok(t)
                }
            })
            .collect()
    }

    /// Pooled sentence vectors before normalisation, in input order. Sentences are run in
    /// batches of similar length; `progress(done, total)` is called after each batch.
    pub fn pooled(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenize(texts)?;
        self.pooled_tokens(&tokens, progress)
    }

    /// As [`Bert::pooled`], from tokens.
    pub fn pooled_tokens(&self, tokens: &[Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let h = self.encoder.config.hidden_size;
        // Longest first: the attention of a batch runs one sequence per thread, so similar
        // lengths keep the threads evenly loaded.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].ids.len()));
        let mut batches: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut n_tok = 0;
            while end < order.len() && (end == start || n_tok + tokens[order[end]].ids.len() <= BATCH_TOKENS) {
                n_tok += tokens[order[end]].ids.len();
                end += 1;
            }
            batches.push(&order[start..end]);
            start = end;
        }
        // Several batches run side by side, each with single-threaded GEMMs: no barrier per
        // GEMM, and idle cores are filled by the next batch rather than spun on. A lone batch
        // parallelises inside its GEMMs instead.
        let threads = rayon::current_num_threads().max(1);
        let par = if batches.len() > 1 { Par::Seq } else { Par::rayon(0) };
        let mut out = vec![Vec::new(); tokens.len()];
        let mut done = 0;
        for group in batches.chunks(threads) {
            let pooled: Vec<Vec<Vec<f32>>> = group
                .par_iter()
                .map(|idx| {
                    let batch: Vec<Tokens> = idx.iter().map(|&i| tokens[i].clone()).collect();
                    let hidden = self.encoder.forward_with(&batch, par)?;
                    let mut off = 0;
                    Ok(batch
                        .iter()
                        .map(|t| {
                            let len = t.ids.len();
                            let v = pool(&hidden[off * h..(off + len) * h], h, &self.pooling);
                            off += len;
                            v
                        })
                        .collect())
                })
                .collect::<Result<_>>()?;
            for (idx, vecs) in group.iter().zip(pooled) {
                for (&i, v) in idx.iter().zip(vecs) {
                    out[i] = v;
                }
                done += idx.len();
            }
            progress(done, tokens.len());
        }
        Ok(out)
    }

    /// Sentence embeddings, pooled and normalised as the model's configuration says.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, &|_, _| {})
    }

    /// As [`Bert::embed`], reporting `(done, total)` after each batch.
    pub fn embed_with_progress(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let mut v = self.pooled(texts, progress)?;
        if self.normalize {
            v.iter_mut().for_each(|e| l2_normalize(e));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 by its Maclaurin series (|x| < 3) or continued fraction for erfc.
    fn erf_ref(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let mut term = a;
            let mut sum = a;
            let mut n = 0.0;
            while term.abs() > 1e-18 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got / want - 1.0).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), exp_f32(-87.0));
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let mut worst_erf = 0.0f64;
        let mut worst_gelu = 0.0f64;
        for i in -1000..=1000 {
            let x = i as f64 * 0.01;
            worst_erf = worst_erf.max((erf_f32(x as f32) as f64 - erf_ref(x)).abs());
            let want = 0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
            let got = gelu(x as f32) as f64;
            worst_gelu = worst_gelu.max((got - want).abs() / want.abs().max(1e-3));
        }
        assert!(worst_erf < 3e-7, "erf error {worst_erf}");
        assert!(worst_gelu < 1e-5, "gelu error {worst_gelu}");
        // The far negative tail keeps relative accuracy: gelu(-6) ≈ -5.9e-9.
        let want = 0.5 * -6.0 * (1.0 - erf_ref(6.0 / std::f64::consts::SQRT_2));
        assert!(((gelu(-6.0) as f64) / want - 1.0).abs() < 1e-4);
    }

    #[test]
    fn gelu_tanh_matches_formula() {
        for i in -200..=200 {
            let x = i as f64 * 0.05;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!((gelu_tanh(x as f32) as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "x={x}");
        }
    }

    #[test]
    fn pooling_modes() {
        let h = [1.0, 2.0, 3.0, -4.0, 5.0, 0.0];
        assert_eq!(pool(&h, 2, &[PoolingMode::Cls]), vec![1.0, 2.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::LastToken]), vec![5.0, 0.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::Max]), vec![5.0, 2.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::Mean, PoolingMode::Cls]), vec![3.0, -2.0 / 3.0, 1.0, 2.0]);
        let s = pool(&h, 2, &[PoolingMode::MeanSqrtLen]);
        assert!((s[0] - 9.0 / 3f32.sqrt()).abs() < 1e-6);
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
