//! The input statistics of one linear layer: H = Σ x xᵀ (f64) and per-channel moments.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use crate::linalg::SharedMut;

/// Rows per f32 GEMM before the product is folded into the f64 sum: small enough that f32
/// accumulation loses nothing that matters (relative rounding ~√rows · 2⁻²⁴), large enough for
/// GEMM speed; one calibration batch of 8 × 512 tokens is one product.
const BATCH_ROWS: usize = 4096;

/// Second moments of a linear layer's input over the calibration tokens.
#[derive(Clone, Debug)]
pub struct Hessian {
    /// Input width.
    pub n: usize,
    /// Σ x xᵀ, `n × n` row-major (symmetric), f64; empty for diagonal-only statistics.
    pub sum_xxt: Vec<f64>,
    /// Σ x² per channel, kept by diagonal-only statistics (`sum_xxt` empty).
    pub sum_x2: Vec<f64>,
    /// Σ |x| per channel.
    pub sum_abs: Vec<f64>,
    /// Σ x per channel (the input's mean, for bias correction).
    pub sum_x: Vec<f64>,
    /// max |x| per channel.
    pub max_abs: Vec<f32>,
    /// Number of input rows (tokens) seen.
    pub count: usize,
}

impl Hessian {
    /// Empty statistics for inputs of width `n`.
    pub fn new(n: usize) -> Hessian {
        Hessian {
            n,
            sum_xxt: vec![0.0; n * n],
            sum_x2: Vec::new(),
            sum_abs: vec![0.0; n],
            sum_x: vec![0.0; n],
            max_abs: vec![0.0; n],
            count: 0,
        }
    }

    /// Statistics without the off-diagonal products: Σ x² per channel (llama.cpp's imatrix)
    /// and the moments, at O(n) per token instead of the O(n²) of a full Hessian. For runs
    /// whose solvers need no Hessian (round-to-nearest with an importance matrix).
    pub fn diagonal(n: usize) -> Hessian {
        Hessian {
            n,
            sum_xxt: Vec::new(),
            sum_x2: vec![0.0; n],
            sum_abs: vec![0.0; n],
            sum_x: vec![0.0; n],
            max_abs: vec![0.0; n],
            count: 0,
        }
    }

    /// Whether Σ x xᵀ is kept whole (GPTQ, output errors) or only its diagonal.
    pub fn is_full(&self) -> bool {
        !self.sum_xxt.is_empty() || self.n == 0
    }

    /// Adds `rows` input rows `x` (`[rows, n]`, row-major): one batch, as [`HessianPart`]
    /// computes it, folded in ([`Hessian::fold`]).
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let mut p = self.part();
        p.add(x, rows);
        self.fold(&p);
    }

    /// An empty batch contribution of the same kind (full or diagonal) and width.
    pub fn part(&self) -> HessianPart {
        if self.is_full() {
            HessianPart::full(self.n)
        } else {
            HessianPart::diagonal(self.n)
        }
    }

    /// Adds one batch's contribution. The sum is a sequence of f64 additions in batch order:
    /// folding the same parts in the same order gives the same bits wherever they were
    /// computed (another thread, another MPI rank; [`crate::dist`]).
    pub fn fold(&mut self, p: &HessianPart) {
        let n = self.n;
        debug_assert_eq!(p.n, n);
        for g in &p.grams {
            fold_lower(&mut self.sum_xxt, g, n);
        }
        for (a, b) in self.sum_x2.iter_mut().zip(&p.sum_x2) {
            *a += b;
        }
        for (a, b) in self.sum_abs.iter_mut().zip(&p.sum_abs) {
            *a += b;
        }
        for (a, b) in self.sum_x.iter_mut().zip(&p.sum_x) {
            *a += b;
        }
        for (a, b) in self.max_abs.iter_mut().zip(&p.max_abs) {
            *a = a.max(*b);
        }
        self.count += p.count;
    }

    /// The input's mean per channel, Σx / count.
    pub fn channel_mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.sum_x.iter().map(|v| v / c).collect()
    }

    /// llama.cpp's importance matrix: per input column, the mean of x² over the tokens.
    pub fn imatrix(&self) -> Vec<f32> {
        let c = self.count.max(1) as f64;
        if !self.is_full() {
            return self.sum_x2.iter().map(|&v| (v / c) as f32).collect();
        }
        (0..self.n).map(|i| (self.sum_xxt[i * self.n + i] / c) as f32).collect()
    }

    /// H = Σ x xᵀ / count (the mean; GPTQ's scale does not matter, damping is relative).
    pub fn mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.sum_xxt.iter().map(|v| v / c).collect()
    }

    /// The statistics of the input divided channel-wise by `s` (x' = x / s): H' = S⁻¹ H S⁻¹,
    /// what a transform that folds `s` into the input's producer leaves the layer seeing.
    pub fn divide_channels(&mut self, s: &[f32]) {
        let n = self.n;
        debug_assert_eq!(s.len(), n);
        let full = self.is_full();
        for i in 0..n {
            if full {
                for j in 0..n {
                    self.sum_xxt[i * n + j] /= s[i] as f64 * s[j] as f64;
                }
            } else {
                self.sum_x2[i] /= s[i] as f64 * s[i] as f64;
            }
            self.sum_abs[i] /= s[i].abs() as f64;
            self.sum_x[i] /= s[i] as f64;
            self.max_abs[i] /= s[i].abs();
        }
    }

    /// Folds another layer-input's statistics of the same width into this one.
    pub fn merge(&mut self, other: &Hessian) {
        for (a, b) in self.sum_xxt.iter_mut().zip(&other.sum_xxt) {
            *a += b;
        }
        for (a, b) in self.sum_x2.iter_mut().zip(&other.sum_x2) {
            *a += b;
        }
        for (a, b) in self.sum_abs.iter_mut().zip(&other.sum_abs) {
            *a += b;
        }
        for (a, b) in self.sum_x.iter_mut().zip(&other.sum_x) {
            *a += b;
        }
        for (a, b) in self.max_abs.iter_mut().zip(&other.max_abs) {
            *a = a.max(*b);
        }
        self.count += other.count;
    }
}

/// Columns per panel of [`lower_gram`]: wide enough for GEMM speed, narrow enough that the
/// upper parts of the diagonal blocks (computed and discarded) stay a small share. Batches
/// narrower than 1024 take half: at 576 the discarded share falls from 1/4 to 1/7 of the
/// work, and `bench hessian` measured 0.018 s per 4096-token batch instead of 0.021–0.022
/// (at 1536 and 4096 the wider panel measured better).
const PANEL: usize = 192;

/// The lower triangle of XᵀX for `x` (`[rows, n]`), packed row by row (row i holds columns
/// 0..=i). XᵀX is symmetric, so only half of it is needed; it is computed as column panels
/// — panel j is X[:, j0..]ᵀ · X[:, j0..j0+w], plain GEMMs near full GEMM speed — which waste
/// only the upper halves of the w×w diagonal blocks (faer's triangular product runs well
/// below GEMM speed).
pub(crate) fn lower_gram(x: MatRef<'_, f32>) -> Vec<f32> {
    let n = x.ncols();
    // Wide batches are copied channel-contiguous first (see `channels_contiguous`); at
    // SmolLM2's 576 and 1536 the copy costs more than it saves (bench hessian, both ways).
    let xc;
    let x = if n >= CONTIGUOUS_FROM && x.row_stride() != 1 {
        xc = channels_contiguous(x);
        xc.as_ref()
    } else {
        x
    };
    let mut tri = vec![0f32; n * (n + 1) / 2];
    let panel_w = if n >= 1024 { PANEL } else { PANEL / 2 };
    // The panels run in parallel, each a single-threaded GEMM: a GEMM this thin split across
    // threads spends much of its time synchronising them (bench hessian, medians of six
    // alternations with the panel-by-panel parallel GEMMs: 1.18x faster at 576 channels, 50 ->
    // 60 % of faer's GEMM; 1.02x at 1536, 1.04x at 4096). Each element is the same sum either
    // way (faer splits the output, never the sum): GPTQ outputs are byte-identical.
    let out = SharedMut(tri.as_mut_ptr());
    let starts: Vec<usize> = (0..n).step_by(panel_w).collect();
    starts.into_par_iter().for_each(|j0| {
        let w = panel_w.min(n - j0);
        let h = n - j0;
        // Computed transposed, X[:, j0..j0+w]ᵀ · X[:, j0..] (w × h): faer runs that
        // orientation faster here (bench hessian, both ways: 0.467 → 0.367 s per batch at
        // 4096 channels, 5–10 % at 576 and 1536), and each element is the same sum.
        let mut dst_t = Mat::<f32>::zeros(w, h);
        matmul(
            dst_t.as_mut(),
            BlockStructure::Rectangular,
            Accum::Replace,
            x.subcols(j0, w).transpose(),
            BlockStructure::Rectangular,
            x.subcols(j0, h),
            BlockStructure::Rectangular,
            1.0f32,
            Par::Seq,
        );
        let dst = dst_t.as_ref().transpose();
        for i in j0..n {
            for j in j0..(j0 + w).min(i + 1) {
                // SAFETY: element (i, j) of the packed triangle, j0 ≤ j ≤ i < n, lies in
                // this panel's columns, written by this task alone; `tri` outlives the loop.
                unsafe { *out.at(i * (i + 1) / 2 + j) = dst[(i - j0, j - j0)] };
            }
        }
    });
    tri
}

/// Widths from which [`lower_gram`] copies its batch channel-contiguous first: a token's row
/// is then 8 KB or more, and the GEMM reading straight from the batch slows by 1.5×.
const CONTIGUOUS_FROM: usize = 2048;

/// `x` (`[rows, n]`, any strides) copied so that each channel's values over the tokens are
/// contiguous (column-major). The panel products then read both operands along contiguous
/// memory; straight from a row-major batch, every step along the tokens lands on another
/// page, and at widths of a few thousand the GEMM runs at TLB-miss speed. Columns are copied
/// 16 at a time (16 write streams, one 64-byte read per token), blocks of them in parallel.
fn channels_contiguous(x: MatRef<'_, f32>) -> Mat<f32> {
    const COLS: usize = 16;
    let (rows, n) = (x.nrows(), x.ncols());
    let mut out = Mat::<f32>::zeros(rows, n);
    let stride = out.col_stride() as usize;
    let base = SharedMut(out.as_ptr_mut());
    (0..n.div_ceil(COLS)).into_par_iter().for_each(|b| {
        let c0 = b * COLS;
        let w = COLS.min(n - c0);
        for r in 0..rows {
            for j in 0..w {
                // SAFETY: (r, c0 + j) lies inside both matrices (r < rows, c0 + j < n); each
                // column block of `out` is written by one task only.
                unsafe { *base.at((c0 + j) * stride + r) = *x.get_unchecked(r, c0 + j) };
            }
        }
    });
    out
}

/// Adds the packed lower triangle `g` (row i holds columns 0..=i) to the symmetric `n × n`
/// matrix `sum`, mirrored. Each element receives exactly one addition, so the order in which
/// elements are visited does not change the result; tiles keep the mirrored (column-wise)
/// writes within cache.
fn fold_lower(sum: &mut [f64], g: &[f32], n: usize) {
    const T: usize = 64;
    debug_assert_eq!(g.len(), n * (n + 1) / 2);
    assert_eq!(sum.len(), n * n);
    // Tile row `ib` writes rows ib..ie at columns ≤ the row (the lower part) and, mirrored,
    // columns ib..ie of earlier rows above their diagonal: no two tile rows write the same
    // element, so they run in parallel.
    let out = SharedMut(sum.as_mut_ptr());
    (0..n).step_by(T).collect::<Vec<_>>().into_par_iter().for_each(|ib| {
        let ie = (ib + T).min(n);
        for jb in (0..=ib).step_by(T) {
            for i in ib..ie {
                let je = (jb + T).min(i + 1);
                if je <= jb {
                    continue;
                }
                let row = &g[i * (i + 1) / 2..];
                for (j, &v) in (jb..je).zip(&row[jb..je]) {
                    // SAFETY: (i, j) with j ≤ i, and its mirror (j, i) with j < i, i in this
                    // tile row: written by this task alone (see above); both < n².
                    unsafe {
                        *out.at(i * n + j) += v as f64;
                        if j != i {
                            *out.at(j * n + i) += v as f64;
                        }
                    }
                }
            }
        }
    });
}

/// What one batch of input rows adds to a [`Hessian`]: the f32 Gram matrices of its row
/// chunks (lower triangles, not yet added into the f64 sum) or, for diagonal statistics, Σx²;
/// and the moments. Kept apart from the sum so that batches computed anywhere fold into it in
/// batch order ([`Hessian::fold`], [`crate::dist::Reduce`]).
#[derive(Clone, Debug)]
pub struct HessianPart {
    n: usize,
    full: bool,
    grams: Vec<Vec<f32>>,
    sum_x2: Vec<f64>,
    sum_abs: Vec<f64>,
    sum_x: Vec<f64>,
    max_abs: Vec<f32>,
    count: usize,
}

impl HessianPart {
    /// An empty contribution to a full Hessian of width `n`.
    pub fn full(n: usize) -> HessianPart {
        HessianPart {
            n,
            full: true,
            grams: Vec::new(),
            sum_x2: Vec::new(),
            sum_abs: vec![0.0; n],
            sum_x: vec![0.0; n],
            max_abs: vec![0.0; n],
            count: 0,
        }
    }

    /// An empty contribution to diagonal statistics of width `n` ([`Hessian::diagonal`]).
    pub fn diagonal(n: usize) -> HessianPart {
        HessianPart { full: false, sum_x2: vec![0.0; n], ..HessianPart::full(n) }
    }

    /// Adds `rows` input rows `x` (`[rows, n]`, row-major).
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let n = self.n;
        debug_assert_eq!(x.len(), rows * n);
        if self.full {
            for chunk in x.chunks(BATCH_ROWS * n) {
                let r = chunk.len() / n;
                self.grams.push(lower_gram(MatRef::from_row_major_slice(chunk, r, n)));
            }
        }
        self.add_moments(x);
        self.count += rows;
    }

    /// The per-channel moments of `x` (and Σx² for diagonal statistics). Column blocks run in
    /// parallel; each channel still sums its rows in order, so the bits do not depend on the
    /// threads.
    fn add_moments(&mut self, x: &[f32]) {
        let n = self.n;
        const COLS: usize = 64;
        let with_x2 = !self.full;
        let mut x2_dummy = Vec::new();
        let sum_x2 = if with_x2 { &mut self.sum_x2[..] } else { &mut x2_dummy[..] };
        let blocks: Vec<(usize, &mut [f64], &mut [f64], &mut [f64], &mut [f32])> = {
            let mut out = Vec::new();
            let (mut q, mut s, mut t, mut m) =
                (sum_x2, &mut self.sum_abs[..], &mut self.sum_x[..], &mut self.max_abs[..]);
            let mut c0 = 0;
            while c0 < n {
                let w = COLS.min(n - c0);
                let (q1, q2) = std::mem::take(&mut q).split_at_mut(if with_x2 { w } else { 0 });
                let (s1, s2) = std::mem::take(&mut s).split_at_mut(w);
                let (t1, t2) = std::mem::take(&mut t).split_at_mut(w);
                let (m1, m2) = std::mem::take(&mut m).split_at_mut(w);
                out.push((c0, q1, s1, t1, m1));
                (q, s, t, m) = (q2, s2, t2, m2);
                c0 += w;
            }
            out
        };
        blocks.into_par_iter().for_each(|(c0, q, s, t, m)| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { moments_block_avx2(x, n, c0, q, s, t, m) };
                }
            }
            moments_block(x, n, c0, q, s, t, m)
        });
    }
}

/// [`moments_block`] compiled for AVX2 (four f64 lanes instead of SSE2's two).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn moments_block_avx2(
    x: &[f32],
    n: usize,
    c0: usize,
    q: &mut [f64],
    s: &mut [f64],
    t: &mut [f64],
    m: &mut [f32],
) {
    moments_block(x, n, c0, q, s, t, m)
}

/// The moments of channels `c0 .. c0 + s.len()` of `x` (`[rows, n]`): Σ|x|, Σx and max |x|
/// into `s`, `t`, `m`, and Σx² into `q` when it is not empty; each channel sums its rows in
/// order.
#[inline(always)]
fn moments_block(x: &[f32], n: usize, c0: usize, q: &mut [f64], s: &mut [f64], t: &mut [f64], m: &mut [f32]) {
    let w = s.len();
    for row in x.chunks_exact(n) {
        let row = &row[c0..c0 + w];
        for (((s, m), t), &v) in s.iter_mut().zip(m.iter_mut()).zip(t.iter_mut()).zip(row) {
            *s += v.abs() as f64;
            *t += v as f64;
            *m = m.max(v.abs());
        }
        for (q, &v) in q.iter_mut().zip(row) {
            *q += v as f64 * v as f64;
        }
    }
}

impl crate::dist::Stat for Hessian {
    type Part = HessianPart;

    fn fold(&mut self, part: &HessianPart) {
        Hessian::fold(self, part)
    }

    fn part_bytes(p: &HessianPart) -> Vec<u8> {
        use crate::dist::wire::*;
        let mut out = Vec::new();
        put_u64(&mut out, p.n as u64);
        put_u64(&mut out, p.full as u64);
        put_u64(&mut out, p.count as u64);
        put_u64(&mut out, p.grams.len() as u64);
        for g in &p.grams {
            put_f32s(&mut out, g);
        }
        put_f64s(&mut out, &p.sum_x2);
        put_f64s(&mut out, &p.sum_abs);
        put_f64s(&mut out, &p.sum_x);
        put_f32s(&mut out, &p.max_abs);
        out
    }

    fn part_from_bytes(b: &[u8]) -> Result<HessianPart, String> {
        let mut r = crate::dist::wire::Reader::new(b);
        let n = r.u64()? as usize;
        let full = r.u64()? != 0;
        let count = r.u64()? as usize;
        let k = r.u64()? as usize;
        let mut grams = Vec::new();
        for _ in 0..k {
            let g = r.f32s()?;
            if g.len() != n * (n + 1) / 2 {
                return Err(format!("a Gram matrix of {} entries for width {n}", g.len()));
            }
            grams.push(g);
        }
        let (sum_x2, sum_abs, sum_x, max_abs) = (r.f64s()?, r.f64s()?, r.f64s()?, r.f32s()?);
        r.done()?;
        if sum_abs.len() != n || sum_x.len() != n || max_abs.len() != n || sum_x2.len() != if full { 0 } else { n } {
            return Err(format!("moments of the wrong width (expected {n})"));
        }
        Ok(HessianPart { n, full, grams, sum_x2, sum_abs, sum_x, max_abs, count })
    }

    fn to_bytes(&self) -> Vec<u8> {
        use crate::dist::wire::*;
        let mut out = Vec::new();
        put_u64(&mut out, self.n as u64);
        put_u64(&mut out, self.count as u64);
        put_f64s(&mut out, &self.sum_xxt);
        put_f64s(&mut out, &self.sum_x2);
        put_f64s(&mut out, &self.sum_abs);
        put_f64s(&mut out, &self.sum_x);
        put_f32s(&mut out, &self.max_abs);
        out
    }

    fn from_bytes(b: &[u8]) -> Result<Hessian, String> {
        let mut r = crate::dist::wire::Reader::new(b);
        let n = r.u64()? as usize;
        let count = r.u64()? as usize;
        let h = Hessian {
            n,
            count,
            sum_xxt: r.f64s()?,
            sum_x2: r.f64s()?,
            sum_abs: r.f64s()?,
            sum_x: r.f64s()?,
            max_abs: r.f32s()?,
        };
        r.done()?;
        let full_ok = h.sum_xxt.len() == n * n || h.sum_xxt.is_empty();
        if !full_ok || h.sum_abs.len() != n || h.sum_x.len() != n || h.max_abs.len() != n {
            return Err(format!("statistics of the wrong width (expected {n})"));
        }
        Ok(h)
    }
}

/// The cross term of asymmetric calibration: Σ (x_f − x_q) x_qᵀ over the calibration tokens,
/// where x_q is a linear's input in the partly quantized model (what its Hessian is taken on)
/// and x_f the same input in the model with float weights. `n × n` row-major, f64.
#[derive(Clone, Debug)]
pub struct Cross {
    /// Input width.
    pub n: usize,
    /// Σ (x_f − x_q) x_qᵀ.
    pub sum: Vec<f64>,
    /// Σ (x_f − x_q) per channel (the float input's mean is the quantized one's plus this
    /// over `count`).
    pub sum_delta: Vec<f64>,
    /// Number of input rows (tokens) seen.
    pub count: usize,
}

impl Cross {
    /// Empty statistics for inputs of width `n`.
    pub fn new(n: usize) -> Cross {
        Cross { n, sum: vec![0.0; n * n], sum_delta: vec![0.0; n], count: 0 }
    }

    /// Adds `rows` rows of both inputs (`[rows, n]` each, row-major): one batch, as
    /// [`CrossPart`] computes it, folded in.
    pub fn add(&mut self, xf: &[f32], xq: &[f32], rows: usize) {
        let mut p = self.part();
        p.add(xf, xq, rows);
        self.fold(&p);
    }

    /// An empty batch contribution of this width.
    pub fn part(&self) -> CrossPart {
        CrossPart::new(self.n)
    }

    /// Adds one batch's contribution (in batch order, as [`Hessian::fold`]).
    pub fn fold(&mut self, p: &CrossPart) {
        for m in &p.mats {
            for (s, &v) in self.sum.iter_mut().zip(m) {
                *s += v as f64;
            }
        }
        for (s, v) in self.sum_delta.iter_mut().zip(&p.sum_delta) {
            *s += v;
        }
        self.count += p.count;
    }

    /// The mean, (1/count) Σ (x_f − x_q) x_qᵀ.
    pub fn mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.sum.iter().map(|v| v / c).collect()
    }

    /// The float input's mean per channel, given the quantized input's (`mean_q`).
    pub fn float_mean(&self, mean_q: &[f64]) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        mean_q.iter().zip(&self.sum_delta).map(|(m, d)| m + d / c).collect()
    }

    /// Whether both inputs were the same on every token (nothing quantized before them).
    pub fn is_zero(&self) -> bool {
        self.sum.iter().all(|v| *v == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_gram_equals_the_products() {
        // The last width takes the channel-contiguous copy.
        for (rows, n) in [(50usize, 1usize), (300, 130), (97, 257), (2048, 300), (37, CONTIGUOUS_FROM + 5)] {
            let x: Vec<f32> = (0..rows * n).map(|k| ((k * 40503) % 2003) as f32 / 1001.0 - 1.0).collect();
            let tri = lower_gram(MatRef::from_row_major_slice(&x, rows, n));
            let mut k = 0;
            for i in 0..n {
                for j in 0..=i {
                    let want: f64 = (0..rows).map(|r| x[r * n + i] as f64 * x[r * n + j] as f64).sum();
                    let scale: f64 = (0..rows).map(|r| (x[r * n + i] as f64 * x[r * n + j] as f64).abs()).sum();
                    assert!(
                        (tri[k] as f64 - want).abs() <= 1e-5 * scale.max(1e-30),
                        "({i}, {j}): {} vs {want}",
                        tri[k]
                    );
                    k += 1;
                }
            }
        }
    }

    #[test]
    fn tiled_fold_equals_the_row_by_row_fold_bit_for_bit() {
        for n in [1usize, 7, 64, 65, 130, 200] {
            let g: Vec<f32> = (0..n * (n + 1) / 2).map(|k| ((k * 2654435761) % 10007) as f32 / 97.0 - 51.0).collect();
            let start: Vec<f64> = (0..n * n).map(|k| (k % 13) as f64 * 0.1 + 1e-9 * k as f64).collect();
            let mut want = start.clone();
            let mut k = 0;
            for i in 0..n {
                for j in 0..=i {
                    want[i * n + j] += g[k] as f64;
                    if i != j {
                        want[j * n + i] += g[k] as f64;
                    }
                    k += 1;
                }
            }
            let mut got = start;
            fold_lower(&mut got, &g, n);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
        }
    }

    #[test]
    fn diagonal_statistics_give_the_full_ones_importance() {
        let (rows, n) = (3000, 9);
        let x: Vec<f32> = (0..rows * n).map(|i| (((i * 7919) % 1000) as f32 - 500.0) / 250.0).collect();
        let mut full = Hessian::new(n);
        let mut diag = Hessian::diagonal(n);
        full.add(&x, rows);
        diag.add(&x[..1000 * n], 1000);
        diag.add(&x[1000 * n..], 2000);
        assert!(full.is_full() && !diag.is_full());
        for (a, b) in full.imatrix().iter().zip(diag.imatrix()) {
            assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(full.sum_abs.len(), diag.sum_abs.len());
        for (a, b) in full.max_abs.iter().zip(&diag.max_abs) {
            assert_eq!(a, b);
        }
        let s: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        full.divide_channels(&s);
        diag.divide_channels(&s);
        for (a, b) in full.imatrix().iter().zip(diag.imatrix()) {
            assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn matches_naive_sum() {
        let (rows, n) = (5000, 7);
        let x: Vec<f32> = (0..rows * n).map(|i| (((i * 7919) % 1000) as f32 - 500.0) / 250.0).collect();
        let mut h = Hessian::new(n);
        h.add(&x[..3000 * n], 3000);
        h.add(&x[3000 * n..], 2000);
        assert_eq!(h.count, rows);
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..rows).map(|r| x[r * n + i] as f64 * x[r * n + j] as f64).sum();
                let got = h.sum_xxt[i * n + j];
                assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{i},{j}: {got} vs {want}");
            }
        }
        let im = h.imatrix();
        assert!((im[3] as f64 - h.sum_xxt[3 * n + 3] / rows as f64).abs() < 1e-5);
    }
}

/// What one batch adds to a [`Cross`]: the f32 products of its row chunks (chunks where both
/// streams agree add nothing and are left out).
#[derive(Clone, Debug)]
pub struct CrossPart {
    n: usize,
    mats: Vec<Vec<f32>>,
    sum_delta: Vec<f64>,
    count: usize,
}

impl CrossPart {
    /// An empty contribution to a cross term of width `n`.
    pub fn new(n: usize) -> CrossPart {
        CrossPart { n, mats: Vec::new(), sum_delta: vec![0.0; n], count: 0 }
    }

    /// Adds `rows` rows of both inputs (`[rows, n]` each, row-major).
    pub fn add(&mut self, xf: &[f32], xq: &[f32], rows: usize) {
        let n = self.n;
        debug_assert_eq!(xf.len(), rows * n);
        debug_assert_eq!(xq.len(), rows * n);
        for start in (0..rows).step_by(BATCH_ROWS) {
            let r = BATCH_ROWS.min(rows - start);
            let (a, b) = (start * n, (start + r) * n);
            let delta: Vec<f32> = xf[a..b].iter().zip(&xq[a..b]).map(|(f, q)| f - q).collect();
            if delta.iter().all(|v| *v == 0.0) {
                continue;
            }
            for row in delta.chunks_exact(n) {
                for (s, &v) in self.sum_delta.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
            let mut p = Mat::<f32>::zeros(n, n);
            let dm = MatRef::from_row_major_slice(&delta, r, n);
            let qm = MatRef::from_row_major_slice(&xq[a..b], r, n);
            faer::linalg::matmul::matmul(p.as_mut(), Accum::Replace, dm.transpose(), qm, 1.0f32, Par::rayon(0));
            let mut m = Vec::with_capacity(n * n);
            for i in 0..n {
                for j in 0..n {
                    m.push(p[(i, j)]);
                }
            }
            self.mats.push(m);
        }
        self.count += rows;
    }
}

impl crate::dist::Stat for Cross {
    type Part = CrossPart;

    fn fold(&mut self, part: &CrossPart) {
        Cross::fold(self, part)
    }

    fn part_bytes(p: &CrossPart) -> Vec<u8> {
        use crate::dist::wire::*;
        let mut out = Vec::new();
        put_u64(&mut out, p.n as u64);
        put_u64(&mut out, p.count as u64);
        put_u64(&mut out, p.mats.len() as u64);
        for m in &p.mats {
            put_f32s(&mut out, m);
        }
        put_f64s(&mut out, &p.sum_delta);
        out
    }

    fn part_from_bytes(b: &[u8]) -> Result<CrossPart, String> {
        let mut r = crate::dist::wire::Reader::new(b);
        let n = r.u64()? as usize;
        let count = r.u64()? as usize;
        let k = r.u64()? as usize;
        let mut mats = Vec::new();
        for _ in 0..k {
            let m = r.f32s()?;
            if m.len() != n * n {
                return Err(format!("a cross term of {} entries for width {n}", m.len()));
            }
            mats.push(m);
        }
        let sum_delta = r.f64s()?;
        r.done()?;
        if sum_delta.len() != n {
            return Err(format!("{} channel sums for width {n}", sum_delta.len()));
        }
        Ok(CrossPart { n, mats, sum_delta, count })
    }

    fn to_bytes(&self) -> Vec<u8> {
        use crate::dist::wire::*;
        let mut out = Vec::new();
        put_u64(&mut out, self.n as u64);
        put_u64(&mut out, self.count as u64);
        put_f64s(&mut out, &self.sum);
        put_f64s(&mut out, &self.sum_delta);
        out
    }

    fn from_bytes(b: &[u8]) -> Result<Cross, String> {
        let mut r = crate::dist::wire::Reader::new(b);
        let n = r.u64()? as usize;
        let count = r.u64()? as usize;
        let (sum, sum_delta) = (r.f64s()?, r.f64s()?);
        r.done()?;
        if sum.len() != n * n || sum_delta.len() != n {
            return Err(format!("a cross term of {} entries for width {n}", sum.len()));
        }
        Ok(Cross { n, sum, sum_delta, count })
    }
}
