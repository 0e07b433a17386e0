//! Layers every architecture shares, kept once: the dense layer with its input hook, RMSNorm
//! and LayerNorm, rotary position tables, attention (causal for decoders, bidirectional over
//! packed sequences for encoders) with its K/V hook, the activations, and the tensor loaders.
//! A family file composes these and keeps no second copy.
//!
//! The hooks are where quantization of what flows *between* weights will plug in: a
//! [`Linear`]'s input hook sees the rows it is about to multiply (activation quantization),
//! an [`Attention`]'s K/V hook sees the keys and values it is about to use (KV-cache
//! quantization). Both are `None` by default and then cost nothing.

use std::path::Path;
use std::sync::Arc;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::linalg::{matmul_nn, matmul_nt};
use crate::tensor::{TensorSource, Weights};
use crate::{Error, Result};

/// Rewrites a layer's input rows in place before the layer multiplies them (e.g. fake-quantizes
/// activations). It receives the whole `[rows, inp]` batch; the layer's `inp` gives the width.
pub type InputHook = Arc<dyn Fn(&mut [f32]) + Send + Sync>;

/// Rewrites keys and values in place before attention uses them: `(k, v)`, each
/// `[rows, n_head_kv * head_dim]` (keys after RoPE, as a KV cache would hold them).
pub type KvHook = Arc<dyn Fn(&mut [f32], &mut [f32]) + Send + Sync>;

/// Adds a bias to one head's attention scores before the softmax: `(head, len, scores)` with
/// `scores` `[len, len]` (query rows, key columns) of one sequence, already scaled by 1/√d
/// (MPNet's relative position bias).
pub type ScoreBias<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

// ---- dense layer ----------------------------------------------------------------------

/// A dense layer `y = x Wᵀ + b` with `W` stored `[out, inp]` row-major, as in PyTorch.
#[derive(Clone)]
pub struct Linear {
    /// Weight `[out, inp]`: owned, read in place from the model file, or packed (see
    /// [`Weights`]).
    pub w: Weights,
    /// Optional bias `[out]`.
    pub b: Option<Vec<f32>>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
    /// Applied to a copy of the input before the GEMM, when set.
    pub input_hook: Option<InputHook>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("out", &self.out)
            .field("inp", &self.inp)
            .field("bias", &self.b.is_some())
            .field("input_hook", &self.input_hook.is_some())
            .finish()
    }
}

impl Linear {
    /// A layer without input hook.
    pub fn new(w: impl Into<Weights>, b: Option<Vec<f32>>, out: usize, inp: usize) -> Linear {
        let w = w.into();
        debug_assert_eq!(w.len(), out * inp);
        Linear { w, b, out, inp, input_hook: None }
    }

    /// `x` is `[rows, inp]`; returns `[rows, out]`, the GEMM parallel over the thread pool.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.forward_with(x, rows, Par::rayon(0))
    }

    /// As [`Linear::forward`] with the GEMM's parallelism given (`Par::Seq` when the caller
    /// already runs several batches side by side).
    pub fn forward_with(&self, x: &[f32], rows: usize, par: Par) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.out];
        self.forward_into(x, rows, &mut y, par);
        y
    }

    /// `out[rows, out] = hook(x)[rows, inp] · Wᵀ + b`: one GEMM, accumulating onto the
    /// broadcast bias (one GEMM per decoded panel of rows when the weights are packed).
    pub fn forward_into(&self, x: &[f32], rows: usize, out: &mut [f32], par: Par) {
        debug_assert_eq!(x.len(), rows * self.inp);
        debug_assert_eq!(out.len(), rows * self.out);
        if rows == 0 {
            return;
        }
        let hooked;
        let x = match &self.input_hook {
            Some(hook) => {
                let mut v = x.to_vec();
                hook(&mut v);
                hooked = v;
                hooked.as_slice()
            }
            None => x,
        };
        let accum = match &self.b {
            Some(b) => {
                for row in out.chunks_exact_mut(self.out) {
                    row.copy_from_slice(b);
                }
                Accum::Add
            }
            None => Accum::Replace,
        };
        times_transposed(x, rows, &self.w, self.out, self.inp, out, accum, par);
    }
}

/// `out[rows, n] (+)= x[rows, k] · Wᵀ` for `w` `[n, k]`. Packed weights are decoded a panel of
/// about 1 MiB at a time (it stays in cache for its GEMM), so a quantized model is multiplied
/// without ever being held in f32.
#[allow(clippy::too_many_arguments)]
pub fn times_transposed(
    x: &[f32],
    rows: usize,
    w: &Weights,
    n: usize,
    k: usize,
    out: &mut [f32],
    accum: Accum,
    par: Par,
) {
    debug_assert_eq!(w.len(), n * k);
    let lhs = MatRef::from_row_major_slice(x, rows, k);
    let mut dst = MatMut::from_row_major_slice_mut(out, rows, n);
    let Some(p) = w.packed_rows() else {
        let rhs = MatRef::from_row_major_slice(w, n, k).transpose();
        matmul(dst, accum, lhs, rhs, 1.0f32, par);
        return;
    };
    let panel = p.panel_rows();
    let mut buf = vec![0f32; panel * k];
    for r0 in (0..n).step_by(panel) {
        let h = panel.min(n - r0);
        let wp = &mut buf[..h * k];
        // Loading checked that every row decodes (and is finite); a failure now means the
        // file changed underneath, which NaN outputs then show.
        if p.decode_rows(r0, wp).is_err() {
            wp.fill(f32::NAN);
        }
        let rhs = MatRef::from_row_major_slice(wp, h, k).transpose();
        matmul(dst.as_mut().subcols_mut(r0, h), accum, lhs, rhs, 1.0f32, par);
    }
}

/// `x += y` element-wise, in parallel chunks.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(x, y)| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    });
}

// ---- norms ----------------------------------------------------------------------------

/// RMSNorm of every row of `x` (width = `gain.len()`) into `out`; sums in f64.
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let d = gain.len();
    out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, r)| {
        let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let mean = (ss / d as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(r).zip(gain) {
            *o = v * scale * g;
        }
    });
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

// ---- rotary position embeddings -------------------------------------------------------

/// How q/k rows pair up for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" RoPE, for which llama-architecture
    /// GGUF converters permute the q/k rows of Hugging Face checkpoints.
    Interleaved,
    /// Half-split pairs (i, i + d/2): Hugging Face checkpoints and Qwen2 GGUFs ("neox").
    Halves,
}

/// Cosine/sine tables of rotary position embeddings for positions `0..max_len`.
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    layout: RopeLayout,
}

impl RopeTable {
    /// Tables for head width `head_dim`, base `theta`, up to `max_len` positions.
    pub fn new(head_dim: usize, theta: f64, layout: RopeLayout, max_len: usize) -> RopeTable {
        let half = head_dim / 2;
        let mut cos = vec![0f32; max_len * half];
        let mut sin = vec![0f32; max_len * half];
        for p in 0..max_len {
            for i in 0..half {
                let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                let a = p as f64 * freq;
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        RopeTable { cos, sin, half, layout }
    }

    /// Positions covered.
    pub fn max_len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates `x` = `[rows, n_heads * head_dim]` in place; row r is position r % seq_len.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, seq_len: usize) {
        let half = self.half;
        let hd = 2 * half;
        let width = n_heads * hd;
        x.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            let p = r % seq_len;
            let c = &self.cos[p * half..(p + 1) * half];
            let s = &self.sin[p * half..(p + 1) * half];
            for head in row.chunks_mut(hd) {
                match self.layout {
                    RopeLayout::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * c[i] - b * s[i];
                            head[2 * i + 1] = a * s[i] + b * c[i];
                        }
                    }
                    RopeLayout::Halves => {
                        for i in 0..half {
                            let (a, b) = (head[i], head[i + half]);
                            head[i] = a * c[i] - b * s[i];
                            head[i + half] = a * s[i] + b * c[i];
                        }
                    }
                }
            }
        });
    }
}

// ---- attention ------------------------------------------------------------------------

/// Scaled dot-product attention over heads side by side (`[rows, heads * head_dim]`, Hugging
/// Face's layout), grouped-query when `n_head_kv < n_head`, with an optional K/V hook.
#[derive(Clone)]
pub struct Attention {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` is a multiple of it).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Applied to the keys and values before they are used, when set.
    pub kv_hook: Option<KvHook>,
    /// An orthogonal map applied to every query and key head after RoPE, before the K/V hook
    /// (QuaRot's online Hadamard: scores unchanged, keys easier to quantize).
    pub qk_rotation: Option<Arc<crate::transform::hadamard::Orthogonal>>,
    /// When set, causal attention adds to it, per row (token), the attention that token
    /// receives: the probabilities of every query and head on it (RSQ's attention
    /// concentration). Sized to the rows of the batch by the caller.
    pub probe: Option<AttnProbe>,
}

/// Attention received per token, summed over queries and heads (see [`Attention::probe`]).
pub type AttnProbe = Arc<std::sync::Mutex<Vec<f64>>>;

impl std::fmt::Debug for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attention")
            .field("n_head", &self.n_head)
            .field("n_head_kv", &self.n_head_kv)
            .field("head_dim", &self.head_dim)
            .field("kv_hook", &self.kv_hook.is_some())
            .finish()
    }
}

impl Attention {
    /// Attention of this shape, without hook.
    pub fn new(n_head: usize, n_head_kv: usize, head_dim: usize) -> Attention {
        Attention { n_head, n_head_kv, head_dim, kv_hook: None, qk_rotation: None, probe: None }
    }

    fn hook(&self, k: &mut [f32], v: &mut [f32]) {
        if let Some(h) = &self.kv_hook {
            h(k, v);
        }
    }

    /// Causal attention over `rows / seq_len` sequences of `seq_len` positions; returns
    /// `[rows, n_head * head_dim]`.
    ///
    /// One task per (sequence, head), each copying its head into contiguous tiles: decoder
    /// sequences are long and few, so heads are the parallelism.
    pub fn causal(&self, q: &[f32], k: &mut [f32], v: &mut [f32], seq_len: usize) -> Vec<f32> {
        self.hook(k, v);
        let (k, v) = (&*k, &*v);
        let hd = self.head_dim;
        let n_head = self.n_head;
        let qw = n_head * hd;
        let kw = self.n_head_kv * hd;
        let group = n_head / self.n_head_kv;
        let rows = q.len() / qw;
        let n_seq = rows / seq_len;
        let scale = 1.0 / (hd as f32).sqrt();
        // One task per (sequence, head); each writes its own [seq_len, hd] tile. Queries go in
        // blocks of CAUSAL_BLOCK rows against the keys up to the block's end only: the masked
        // half of the score matrix is never computed.
        let tiles: Vec<Vec<f32>> = (0..n_seq * n_head)
            .into_par_iter()
            .map(|task| {
                let (s, h) = (task / n_head, task % n_head);
                let g = h / group;
                let base = s * seq_len;
                let mut qh = vec![0f32; seq_len * hd];
                let mut kh = vec![0f32; seq_len * hd];
                let mut vh = vec![0f32; seq_len * hd];
                for t in 0..seq_len {
                    let r = base + t;
                    qh[t * hd..(t + 1) * hd].copy_from_slice(&q[r * qw + h * hd..r * qw + (h + 1) * hd]);
                    kh[t * hd..(t + 1) * hd].copy_from_slice(&k[r * kw + g * hd..r * kw + (g + 1) * hd]);
                    vh[t * hd..(t + 1) * hd].copy_from_slice(&v[r * kw + g * hd..r * kw + (g + 1) * hd]);
                }
                let mut out = vec![0f32; seq_len * hd];
                let mut scores = vec![0f32; CAUSAL_BLOCK.min(seq_len) * seq_len];
                let mut received = vec![0f64; if self.probe.is_some() { seq_len } else { 0 }];
                let mut t0 = 0;
                while t0 < seq_len {
                    let t1 = (t0 + CAUSAL_BLOCK).min(seq_len);
                    let m = t1 - t0;
                    let sc = &mut scores[..m * t1];
                    matmul_nt(&qh[t0 * hd..t1 * hd], &kh[..t1 * hd], m, t1, hd, sc, false);
                    causal_softmax(sc, t0, t1, scale);
                    if !received.is_empty() {
                        for row in sc.chunks_exact(t1) {
                            for (r, &p) in received.iter_mut().zip(row) {
                                *r += p as f64;
                            }
                        }
                    }
                    matmul_nn(sc, &vh[..t1 * hd], m, hd, t1, &mut out[t0 * hd..t1 * hd], false);
                    t0 = t1;
                }
                if let Some(probe) = &self.probe {
                    let mut acc = probe.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(dst) = acc.get_mut(base..base + seq_len) {
                        for (d, r) in dst.iter_mut().zip(&received) {
                            *d += r;
                        }
                    }
                }
                out
            })
            .collect();
        let mut out = vec![0f32; rows * qw];
        for (task, tile) in tiles.into_iter().enumerate() {
            let (s, h) = (task / n_head, task % n_head);
            for t in 0..seq_len {
                let r = s * seq_len + t;
                out[r * qw + h * hd..r * qw + (h + 1) * hd].copy_from_slice(&tile[t * hd..(t + 1) * hd]);
            }
        }
        out
    }

    /// Bidirectional attention of each packed sequence with itself (sequence `i` owns the next
    /// `lens[i]` rows); returns `[rows, n_head * head_dim]`.
    ///
    /// One task per sequence, its heads in turn on strided views of q/k/v (no copies): encoder
    /// batches hold many short sentences, so sequences are the parallelism.
    pub fn bidirectional(&self, q: &[f32], k: &mut [f32], v: &mut [f32], lens: &[usize]) -> Vec<f32> {
        self.bidirectional_biased(q, k, v, lens, None)
    }

    /// As [`Attention::bidirectional`], with `bias` added to every head's scores before the
    /// softmax.
    pub fn bidirectional_biased(
        &self,
        q: &[f32],
        k: &mut [f32],
        v: &mut [f32],
        lens: &[usize],
        bias: Option<ScoreBias>,
    ) -> Vec<f32> {
        self.hook(k, v);
        let (k, v) = (&*k, &*v);
        let dh = self.head_dim;
        let qw = self.n_head * dh;
        let kw = self.n_head_kv * dh;
        let group = self.n_head / self.n_head_kv;
        let scale = 1.0 / (dh as f32).sqrt();
        let mut ctx = vec![0.0f32; q.len()];
        // Each sequence owns a contiguous block of rows, so sequences run in parallel safely.
        let mut jobs = Vec::with_capacity(lens.len());
        let mut rest: &mut [f32] = &mut ctx;
        let mut offset = 0;
        for &len in lens {
            let (mine, tail) = rest.split_at_mut(len * qw);
            if len > 0 {
                jobs.push((offset, len, mine));
            }
            rest = tail;
            offset += len;
        }
        jobs.into_par_iter().for_each(|(off, len, out)| {
            let mut scores = vec![0.0f32; len * len];
            let (qspan, kspan) = ((len - 1) * qw + dh, (len - 1) * kw + dh);
            for head in 0..self.n_head {
                let qs = off * qw + head * dh;
                let ks = off * kw + (head / group) * dh;
                let qh = MatRef::from_row_major_slice_with_stride(&q[qs..qs + qspan], len, dh, qw);
                let kh = MatRef::from_row_major_slice_with_stride(&k[ks..ks + kspan], len, dh, kw);
                let vh = MatRef::from_row_major_slice_with_stride(&v[ks..ks + kspan], len, dh, kw);
                let s = MatMut::from_row_major_slice_mut(&mut scores, len, len);
                matmul(s, Accum::Replace, qh, kh.transpose(), scale, Par::Seq);
                if let Some(add) = bias {
                    add(head, len, &mut scores);
                }
                softmax_rows(&mut scores, len);
                let s = MatRef::from_row_major_slice(&scores, len, len);
                // Not `MatMut::from_row_major_slice_with_stride_mut`: in faer 0.22.6 it swaps
                // the strides (it builds a column-major view) and writes out of bounds.
                let oh = MatMut::from_column_major_slice_with_stride_mut(
                    &mut out[head * dh..head * dh + qspan],
                    dh,
                    len,
                    qw,
                )
                .transpose_mut();
                matmul(oh, Accum::Replace, s, vh, 1.0f32, Par::Seq);
            }
        });
        ctx
    }
}

/// Query rows per block of causal attention.
const CAUSAL_BLOCK: usize = 64;

/// Softmax of the rows of a causal score block in place: `s` is `[t1 − t0, t1]`, row `i`
/// (position `t0 + i`) sees keys `0..=t0 + i`; the rest is zeroed. Scores are scaled by
/// `scale` first.
fn causal_softmax(s: &mut [f32], t0: usize, t1: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { causal_softmax_avx2(s, t0, t1, scale) };
            return;
        }
    }
    causal_softmax_portable(s, t0, t1, scale);
}

#[inline(always)]
fn causal_softmax_portable(s: &mut [f32], t0: usize, t1: usize, scale: f32) {
    for (i, row) in s.chunks_exact_mut(t1).enumerate() {
        let (seen, masked) = row.split_at_mut(t0 + i + 1);
        seen.iter_mut().for_each(|x| *x *= scale);
        softmax_in_place(seen);
        masked.iter_mut().for_each(|x| *x = 0.0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn causal_softmax_avx2(s: &mut [f32], t0: usize, t1: usize, scale: f32) {
    // The same code, compiled with 8-wide vectors.
    causal_softmax_portable(s, t0, t1, scale)
}

/// Softmax of each `len`-long row of `s` in place, compiled for AVX2 when the CPU has it.
fn softmax_rows(s: &mut [f32], len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(s: &mut [f32], len: usize) {
            s.chunks_exact_mut(len).for_each(softmax_in_place);
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { avx2(s, len) };
            return;
        }
    }
    s.chunks_exact_mut(len).for_each(softmax_in_place);
}

/// Softmax of one row in place: exponentials in a separate pass so they vectorise, the sum in
/// f64. Inlined so that it is compiled with its callers' AVX2.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = exp_f32(*v - max));
    let inv = (1.0 / lane_sum(row, |v| v as f64)) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

// ---- activations ----------------------------------------------------------------------

/// A feed-forward non-linearity applied element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: x·Φ(x) with the exact erf.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

/// Applies `act` to every element of `x`, in parallel chunks, with AVX2 when the CPU has it:
/// the activation is a sizeable share of an encoder's time, and the portable build only has
/// 4-wide SSE2.
pub fn activate(act: Activation, x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| activate_chunk(act, c));
}

fn activate_chunk(act: Activation, x: &mut [f32]) {
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

/// SiLU, x·σ(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// SwiGLU in place: `g ← SiLU(g) · u`, in parallel chunks, with AVX2 when the CPU has it
/// (the exponential is [`exp_f32`], which vectorises; libm's `expf` does not).
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    g.par_chunks_mut(4096).zip(u.par_chunks(4096)).for_each(|(g, u)| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { swiglu_avx2(g, u) };
                return;
            }
        }
        swiglu_portable(g, u);
    });
}

#[inline(always)]
fn swiglu_portable(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn swiglu_avx2(g: &mut [f32], u: &[f32]) {
    // The same code, compiled with 8-wide vectors.
    swiglu_portable(g, u)
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
    let t = x * LOG2E + ROUND;
    let kf = t - ROUND;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // k sits in t's low mantissa bits, two's complement over t's bits 0x4B40_0000 (a multiple
    // of 2^9): k + 127, in 1..=254 here, lands in the exponent field and the rest shifts out.
    // (`kf as i32` would be a saturating conversion, which LLVM does lane by lane.)
    let bits = t.to_bits().wrapping_add(127) << 23;
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

// ---- loaders --------------------------------------------------------------------------

/// The error for a tensor the checkpoint lacks.
pub fn missing(path: &Path, name: &str) -> Error {
    Error::Tensor { path: path.to_path_buf(), tensor: name.into(), msg: "missing".into() }
}

/// Loads tensor `name` as f32 and checks its shape (and that the source gave every value).
pub fn load_checked(src: &dyn TensorSource, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    checked(src, path, name, shape, |n| src.load_f32(n))
}

/// As [`load_checked`], read in place from the file where it stores the tensor as f32, and
/// kept packed where it stores it packed (see [`Weights`]); packed rows are decoded once here,
/// a panel at a time, to check that they decode and are finite.
pub fn load_checked_weights(src: &dyn TensorSource, path: &Path, name: &str, shape: &[usize]) -> Result<Weights> {
    let w = expect_shape(src, path, name, shape)?;
    let err = |msg: String| Error::Tensor { path: path.to_path_buf(), tensor: name.into(), msg };
    let data = src.load_weights(name)?;
    if data.len() != w {
        return Err(err(format!("{} values read, expected {w}", data.len())));
    }
    match data.packed_rows() {
        Some(p) => {
            let panel = p.panel_rows();
            let mut buf = vec![0f32; panel * p.cols()];
            for r0 in (0..p.rows()).step_by(panel) {
                let h = panel.min(p.rows() - r0);
                let b = &mut buf[..h * p.cols()];
                p.decode_rows(r0, b).map_err(|e| err(format!("cannot decode {}: {e}", p.ty().name())))?;
                if let Some(i) = formats::format::first_non_finite(b) {
                    return Err(err(non_finite_message(r0 * p.cols() + i, b[i], shape)));
                }
            }
        }
        None => check_finite(&data, shape).map_err(err)?,
    }
    Ok(data)
}

/// The element count of tensor `name` once its shape is checked to be `shape`.
fn expect_shape(src: &dyn TensorSource, path: &Path, name: &str, shape: &[usize]) -> Result<usize> {
    let err = |msg: String| Error::Tensor { path: path.to_path_buf(), tensor: name.into(), msg };
    let info = src.info(name).ok_or_else(|| src.absent_reason(name).map(err).unwrap_or_else(|| missing(path, name)))?;
    if info.shape != shape {
        return Err(err(format!("expected shape {shape:?}, found {:?}", info.shape)));
    }
    Ok(info.numel())
}

fn checked(
    src: &dyn TensorSource,
    path: &Path,
    name: &str,
    shape: &[usize],
    load: impl FnOnce(&str) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let n = expect_shape(src, path, name, shape)?;
    let err = |msg: String| Error::Tensor { path: path.to_path_buf(), tensor: name.into(), msg };
    let data = load(name)?;
    if data.len() != n {
        return Err(err(format!("{} values read, expected {n}", data.len())));
    }
    check_finite(&data, shape).map_err(err)?;
    Ok(data)
}

/// An error message for the first value of `data` (of `shape`) that is NaN or infinite:
/// such a weight makes every result NaN, so it is refused where it is read.
pub fn check_finite(data: &[f32], shape: &[usize]) -> std::result::Result<(), String> {
    let Some(i) = formats::format::first_non_finite(data) else { return Ok(()) };
    Err(non_finite_message(i, data[i], shape))
}

fn non_finite_message(i: usize, value: f32, shape: &[usize]) -> String {
    let row = shape.last().copied().filter(|&c| c > 0 && shape.len() > 1);
    let at = match row {
        Some(c) => format!("row {}, column {}", i / c, i % c),
        None => format!("index {i}"),
    };
    format!("value {value} at {at}: weights must be finite")
}

/// Loads `{base}.weight` `[out, inp]` and, with `bias`, `{base}.bias` `[out]`.
pub fn load_linear(
    src: &dyn TensorSource,
    path: &Path,
    base: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let w = load_checked_weights(src, path, &format!("{base}.weight"), &[out, inp])?;
    let b = if bias { Some(load_checked(src, path, &format!("{base}.bias"), &[out])?) } else { None };
    Ok(Linear::new(w, b, out, inp))
}

/// Loads a LayerNorm's `{base}.weight` and `{base}.bias`, `[n]` each.
pub fn load_layer_norm(src: &dyn TensorSource, path: &Path, base: &str, n: usize, eps: f32) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: load_checked(src, path, &format!("{base}.weight"), &[n])?,
        bias: load_checked(src, path, &format!("{base}.bias"), &[n])?,
        eps,
    })
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

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Plain f64 attention of one sequence: `causal` masks the future.
    fn attention_ref(q: &[f32], k: &[f32], v: &[f32], a: &Attention, len: usize, causal: bool) -> Vec<f64> {
        let (hd, qw, kw) = (a.head_dim, a.n_head * a.head_dim, a.n_head_kv * a.head_dim);
        let group = a.n_head / a.n_head_kv;
        let mut out = vec![0f64; len * qw];
        for h in 0..a.n_head {
            let g = h / group;
            for t in 0..len {
                let span = if causal { t + 1 } else { len };
                let s: Vec<f64> = (0..span)
                    .map(|u| {
                        (0..hd).map(|i| q[t * qw + h * hd + i] as f64 * k[u * kw + g * hd + i] as f64).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    out[t * qw + h * hd + i] = (0..span).map(|u| e[u] / z * v[u * kw + g * hd + i] as f64).sum::<f64>();
                }
            }
        }
        out
    }

    #[test]
    fn both_attentions_match_a_reference_with_grouped_heads() {
        let a = Attention::new(4, 2, 8);
        let (qw, kw) = (32, 16);
        let lens = [5usize, 1, 7];
        let rows: usize = lens.iter().sum();
        let q = rand_vec(rows * qw, 1);
        let k = rand_vec(rows * kw, 2);
        let v = rand_vec(rows * kw, 3);
        let bi = a.bidirectional(&q, &mut k.clone(), &mut v.clone(), &lens);
        let mut off = 0;
        for &len in &lens {
            let r = attention_ref(&q[off * qw..], &k[off * kw..], &v[off * kw..], &a, len, false);
            for (i, want) in r.iter().enumerate().take(len * qw) {
                assert!((bi[off * qw + i] as f64 - want).abs() < 1e-5, "bidirectional len {len} at {i}");
            }
            off += len;
        }
        // Causal over two sequences of 6.
        let q = rand_vec(12 * qw, 4);
        let k = rand_vec(12 * kw, 5);
        let v = rand_vec(12 * kw, 6);
        let ca = a.causal(&q, &mut k.clone(), &mut v.clone(), 6);
        for s in 0..2 {
            let r = attention_ref(&q[s * 6 * qw..], &k[s * 6 * kw..], &v[s * 6 * kw..], &a, 6, true);
            for (i, want) in r.iter().enumerate() {
                assert!((ca[s * 6 * qw + i] as f64 - want).abs() < 1e-5, "causal seq {s} at {i}");
            }
        }
    }

    #[test]
    fn the_probe_sums_the_attention_each_token_receives() {
        // Every query's probabilities sum to 1: per sequence, the probe totals heads × length;
        // the last token is seen only by itself; output unchanged by the probe.
        let mut a = Attention::new(4, 2, 8);
        let (qw, kw, len) = (32, 16, 70);
        let q = rand_vec(2 * len * qw, 7);
        let k = rand_vec(2 * len * kw, 8);
        let v = rand_vec(2 * len * kw, 9);
        let plain = a.causal(&q, &mut k.clone(), &mut v.clone(), len);
        let probe: AttnProbe = Arc::new(std::sync::Mutex::new(vec![0f64; 2 * len]));
        a.probe = Some(probe.clone());
        assert_eq!(a.causal(&q, &mut k.clone(), &mut v.clone(), len), plain);
        let got = probe.lock().unwrap().clone();
        for s in 0..2 {
            let total: f64 = got[s * len..(s + 1) * len].iter().sum();
            assert!((total - 4.0 * len as f64).abs() < 1e-3, "sequence {s}: {total}");
            // The first token is seen by every query of its sequence, with weight 1 by the first.
            assert!(got[s * len] >= 4.0 - 1e-4);
        }
        let r = attention_probs_last(&q, &k, &a, len);
        assert!((got[len - 1] - r).abs() < 1e-4, "{} vs {r}", got[len - 1]);
    }

    /// The attention the last token of sequence 0 receives: its own query's probability on it,
    /// summed over heads.
    fn attention_probs_last(q: &[f32], k: &[f32], a: &Attention, len: usize) -> f64 {
        let (hd, qw, kw) = (a.head_dim, a.n_head * a.head_dim, a.n_head_kv * a.head_dim);
        let t = len - 1;
        (0..a.n_head)
            .map(|h| {
                let g = h / (a.n_head / a.n_head_kv);
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd).map(|x| (q[t * qw + h * hd + x] * k[j * kw + g * hd + x]) as f64).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                (s[t] - m).exp() / z
            })
            .sum()
    }

    #[test]
    fn hooks_see_the_inputs_before_use() {
        // An input hook that zeroes the input leaves only the bias.
        let mut l = Linear::new(vec![1.0, 2.0, 3.0, 4.0], Some(vec![0.5, -0.5]), 2, 2);
        assert_eq!(l.forward(&[1.0, 1.0], 1), vec![3.5, 6.5]);
        l.input_hook = Some(Arc::new(|x: &mut [f32]| x.iter_mut().for_each(|v| *v = 0.0)));
        assert_eq!(l.forward(&[1.0, 1.0], 1), vec![0.5, -0.5]);
        // A K/V hook that zeroes the values zeroes the output; one that scales them scales it.
        let mut a = Attention::new(2, 2, 2);
        let q = rand_vec(3 * 4, 7);
        let (k, v) = (rand_vec(3 * 4, 8), rand_vec(3 * 4, 9));
        let plain = a.bidirectional(&q, &mut k.clone(), &mut v.clone(), &[3]);
        a.kv_hook = Some(Arc::new(|_k: &mut [f32], v: &mut [f32]| v.iter_mut().for_each(|x| *x *= 2.0)));
        let doubled = a.bidirectional(&q, &mut k.clone(), &mut v.clone(), &[3]);
        let causal = a.causal(&q, &mut k.clone(), &mut v.clone(), 3);
        for (p, d) in plain.iter().zip(&doubled) {
            assert!((2.0 * p - d).abs() < 1e-6);
        }
        assert!((causal[0] - 2.0 * v[0]).abs() < 1e-6, "first position attends to itself only");
    }
}
