//! GPTQ (Frantar et al., 2022): quantize a layer column by column, spreading each column's
//! rounding error over the columns not yet quantized through the inverse Hessian of the
//! layer's input, so that the layer's output on the calibration data changes least.
//!
//! The Hessian is damped (λ = damp · mean diag H) and its inverse factored as UᵀU (upper
//! Cholesky of H⁻¹); columns are processed in blocks, with the update of later columns
//! deferred to one GEMM per block ("lazy batch" updates). With act-order, columns are visited
//! by decreasing Hessian diagonal, but every group's grid is fixed from the original weights
//! before any column changes ("static groups"), so the stored layout stays in column order —
//! which is what makes GPTQ into ggml block types possible.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rayon::prelude::*;

use super::target::{grid, Encoded, Grid, Target};
use super::{LayerProblem, Solver};
use crate::linalg::SharedMut;
use crate::{Error, Result};

/// GPTQ settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqOptions {
    /// Damping as a fraction of the mean Hessian diagonal.
    pub damp: f64,
    /// Columns per lazy-update block.
    pub block: usize,
    /// Visit columns by decreasing Hessian diagonal.
    pub act_order: bool,
    /// Fraction of the weights kept apart in f16 (SpQR-style outliers; 0: none): those of
    /// largest w² / [H⁻¹]_cc, the output error zeroing them would cause. The grid is fitted to
    /// the other weights, and the kept ones take their error-compensated value as GPTQ
    /// reaches them.
    pub outliers: f64,
    /// Asymmetric calibration (GPTAQ's objective): fit the float model's output on the
    /// quantized model's input, ‖W·X_f − Q·X_q‖², rather than ‖(W − Q)·X_q‖². The pipeline
    /// collects the cross term and hands the solver the target of [`asymmetric_target`].
    pub asym: bool,
    /// Nested precision: one code set whose top bits serve each listed width, the objective
    /// summed over them ([`super::nested`]).
    pub nested: Option<super::nested::Nesting>,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp: 0.01, block: 128, act_order: true, outliers: 0.0, asym: false, nested: None }
    }
}

impl GptqOptions {
    /// What the settings store beside the format: kept weights, with outliers.
    pub fn side_data(&self) -> Option<String> {
        (self.outliers > 0.0)
            .then(|| format!("keeps {} % of the weights apart in f16 (a sparse table)", 100.0 * self.outliers))
    }

    /// The settings after the solver's name, as recipes spell them (`:outliers=0.01`).
    pub fn spec_suffix(&self) -> String {
        let mut s = String::new();
        if self.outliers > 0.0 {
            s += &format!(":outliers={}", self.outliers);
        }
        if self.damp != GptqOptions::default().damp {
            s += &format!(":damp={}", self.damp);
        }
        if self.asym {
            s += ":asym=yes";
        }
        if let Some(n) = &self.nested {
            s += &n.settings();
        }
        s
    }
}

/// The weights of a layer, and the flat indices (ascending) of those kept apart in f16.
pub struct OnGrid {
    /// The grid every other weight lies on.
    pub grid: Box<dyn Grid>,
    /// `[rows, cols]`: grid values, and f16 values at the kept indices.
    pub q: Vec<f32>,
    /// Flat indices `row · cols + col` of the kept weights, ascending (empty without outliers).
    pub kept: Vec<u32>,
    /// Columns of the layer.
    pub cols: usize,
}

impl OnGrid {
    /// The encoded layer: the grid's encoding of the dense part (kept positions rounded onto
    /// the grid there), plus the sparse table of kept weights when there are any. The
    /// dequantized weights take over `q`'s buffer.
    pub fn encode(self) -> Result<Encoded> {
        if self.kept.is_empty() {
            return self.grid.encode(self.q);
        }
        let cols = self.cols;
        // The kept values (f16) first: the grid's encoding overwrites them.
        let val: Vec<u16> = self.kept.iter().map(|&i| half::f16::from_f32(self.q[i as usize]).to_bits()).collect();
        let mut dense = self.q;
        for &i in &self.kept {
            let i = i as usize;
            dense[i] = self.grid.round(i / cols, i % cols, dense[i]);
        }
        let e = self.grid.encode(dense)?;
        let mut dequant = e.dequant;
        for (&i, &h) in self.kept.iter().zip(&val) {
            dequant[i as usize] = half::f16::from_bits(h).to_f32();
        }
        Ok(Encoded {
            data: crate::export::TensorData::Sparse { dense: Box::new(e.data), idx: self.kept, val },
            dequant,
        })
    }
}

/// Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), f64, for the damped Hessian `h` (`n × n`).
/// Dead input channels (zero diagonal) get a unit diagonal; if the factorisation fails the
/// damping grows tenfold, up to a limit, rather than producing NaN. Errors name the tensor
/// `name` the Hessian belongs to.
pub fn inverse_hessian_factor(name: &str, h: &[f64], n: usize, damp: f64) -> Result<Mat<f64>> {
    if h.len() != n * n {
        return Err(Error::Other(format!("tensor `{name}`: Hessian has {} entries, expected {n}×{n}", h.len())));
    }
    factor_inverse(name, n, damp, |i, j| h[i * n + j])
}

/// [`inverse_hessian_factor`] of the mean of the statistics `h` with its channels taken in
/// the order `perm` (row and column `k` of the result's H are channel `perm[k]`), read
/// straight from the sums: no copy of the mean or of the permuted matrix.
pub fn inverse_factor_permuted(name: &str, h: &crate::calib::Hessian, perm: &[usize], damp: f64) -> Result<Mat<f64>> {
    let n = h.n;
    if h.sum_xxt.len() != n * n || perm.len() != n {
        return Err(Error::Other(format!("tensor `{name}`: the solver needs the full {n}×{n} Hessian")));
    }
    let c = h.count.max(1) as f64;
    factor_inverse(name, n, damp, |i, j| h.sum_xxt[perm[i] * n + perm[j]] / c)
}

/// The factor of [`inverse_hessian_factor`] for the symmetric matrix whose entry (r, c) is
/// `at(r, c)` (only r ≥ c is read).
fn factor_inverse(name: &str, n: usize, damp: f64, at: impl Fn(usize, usize) -> f64) -> Result<Mat<f64>> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
    // With J the exchange matrix (indices reversed), JHJ = L·Lᵀ gives H = V·Vᵀ with
    // V = J·L·J upper triangular, so H⁻¹ = (V⁻¹)ᵀ·V⁻¹ and U = V⁻¹ = J·L⁻¹·J: one Cholesky
    // factorisation and one triangular inverse, about half the work of factoring H,
    // inverting it and factoring the inverse, and no explicit inverse of H.
    // `jhj` holds the lower triangle of JHJ, column by column (each column one row of H).
    let mut diag: Vec<f64> = (0..n).map(|k| at(k, k)).collect();
    if let Some(v) = diag.iter().find(|v| !v.is_finite()) {
        return Err(Error::Other(format!("tensor `{name}`: the Hessian contains {v}")));
    }
    for v in diag.iter_mut() {
        if *v <= 0.0 {
            *v = 1.0;
        }
    }
    let mean_diag = diag.iter().sum::<f64>() / n.max(1) as f64;
    let par = faer::get_global_parallelism();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let mut jhj = Mat::<f64>::zeros(n, n);
    let first_damp = damp.max(1e-8);
    const GROWTHS: i32 = 6;
    for k in 0..GROWTHS {
        let damp = first_damp * 10f64.powi(k);
        for j in 0..n {
            let hj = n - 1 - j;
            let mut col = jhj.col_mut(j);
            col[j] = diag[hj] + damp * mean_diag;
            for i in j + 1..n {
                col[i] = at(hj, n - 1 - i);
            }
            if k == 0 {
                if let Some(v) = (j + 1..n).map(|i| col[i]).find(|v| !v.is_finite()) {
                    return Err(Error::Other(format!("tensor `{name}`: the Hessian contains {v}")));
                }
            }
        }
        let factored =
            cholesky_in_place(jhj.as_mut(), Default::default(), par, MemStack::new(&mut mem), Default::default());
        if factored.is_ok() {
            let mut u = Mat::<f64>::zeros(n, n);
            faer::linalg::triangular_inverse::invert_lower_triangular(
                u.as_mut().reverse_rows_and_cols_mut(),
                jhj.as_ref(),
                par,
            );
            if u.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Ok(u);
            }
        }
    }
    Err(Error::Other(format!(
        "tensor `{name}`: the Hessian stays singular (not positive definite) even with the damping grown from {first_damp} to {} times its mean diagonal",
        first_damp * 10f64.powi(GROWTHS - 1)
    )))
}

/// The GPTQ solver.
#[derive(Clone, Debug, Default)]
pub struct Gptq {
    /// Its settings.
    pub opts: GptqOptions,
}

impl Solver for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }
    fn spec(&self) -> String {
        format!("gptq{}", self.opts.spec_suffix())
    }
    fn side_data(&self) -> Option<String> {
        self.opts.side_data()
    }
    fn needs_hessian(&self) -> bool {
        true
    }
    fn asymmetric(&self) -> bool {
        self.opts.asym
    }
    fn nesting(&self) -> Option<&super::nested::Nesting> {
        self.opts.nested.as_ref()
    }
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded> {
        solve(p, target, &self.opts)
    }
}

/// The target of asymmetric calibration. With X_q the layer's input in the partly quantized
/// model (H = X_q X_qᵀ) and X_f the float model's, ‖W X_f − Q X_q‖² = ‖(W* − Q) X_q‖² + const
/// for W* = W X_f X_qᵀ H⁻¹ = W + W·D·H⁻¹, D = (X_f − X_q) X_qᵀ: so GPTQ (or any solver of the
/// Hessian objective) run on W* with H minimises the asymmetric objective. `d` is D's mean
/// (`cols × cols`), H is damped as GPTQ damps it (so W* = W exactly where D = 0).
pub fn asymmetric_target(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &crate::calib::Hessian,
    d: &[f64],
    damp: f64,
) -> Result<Vec<f32>> {
    if d.len() != cols * cols || h.n != cols || !h.is_full() {
        return Err(Error::Other(format!(
            "tensor `{name}`: asymmetric statistics do not fit a layer of {cols} inputs"
        )));
    }
    if let Some(v) = d.iter().find(|v| !v.is_finite()) {
        return Err(Error::Other(format!("tensor `{name}`: the asymmetric calibration statistics contain {v}")));
    }
    let hmean = h.mean();
    let mut hm = Mat::<f64>::from_fn(cols, cols, |i, j| hmean[i * cols + j]);
    for i in 0..cols {
        if hm[(i, i)] <= 0.0 {
            hm[(i, i)] = 1.0;
        }
    }
    let mean_diag = (0..cols).map(|i| hm[(i, i)]).sum::<f64>() / cols as f64;
    let dm = Mat::<f64>::from_fn(cols, cols, |i, j| d[i * cols + j]);
    let wm = Mat::<f64>::from_fn(rows, cols, |r, c| w[r * cols + c] as f64);
    // (W·D)ᵀ = Dᵀ·Wᵀ, `cols × rows`; then H⁻¹ from the left: (W·D·H⁻¹)ᵀ = H⁻¹·(W·D)ᵀ.
    let mut wdt = Mat::<f64>::zeros(cols, rows);
    matmul(wdt.as_mut(), Accum::Replace, dm.transpose(), wm.transpose(), 1.0, Par::rayon(0));
    for k in 0..6 {
        let mut a = hm.clone();
        for i in 0..cols {
            a[(i, i)] += damp.max(1e-8) * 10f64.powi(k) * mean_diag;
        }
        if let Ok(llt) = a.llt(Side::Lower) {
            let shift = faer::linalg::solvers::Solve::solve(&llt, wdt.as_ref());
            if shift.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Ok((0..rows * cols).map(|i| (w[i] as f64 + shift[(i % cols, i / cols)]) as f32).collect());
            }
        }
    }
    Err(Error::Other(format!("tensor `{name}`: the calibration statistics do not factor (not positive definite)")))
}

/// Quantizes `p.w` into `target` with GPTQ. Needs `p.hessian`.
pub fn solve(p: &LayerProblem, target: &Target, opts: &GptqOptions) -> Result<Encoded> {
    solve_on_grid(p, target, opts)?.encode()
}

/// GPTQ's result before encoding: the fixed grid it rounded onto, and the quantized weights
/// `[rows, cols]` (every value on that grid) — the start of solvers that refine it.
pub fn solve_on_grid(p: &LayerProblem, target: &Target, opts: &GptqOptions) -> Result<OnGrid> {
    solve_in_chunks(p, target, opts, chunk_rows(p.rows, p.cols))
}

/// [`solve_on_grid`] on `chunk` rows at a time (the same result for any chunk).
fn solve_in_chunks(p: &LayerProblem, target: &Target, opts: &GptqOptions, chunk: usize) -> Result<OnGrid> {
    let h = checked_hessian(p, "GPTQ")?;
    let (rows, cols) = (p.rows, p.cols);
    // Importance for the grid's scale choice: the given imatrix, else the Hessian diagonal.
    let diag_imp: Vec<f32>;
    let importance = match p.importance {
        Some(i) => Some(i),
        None => {
            diag_imp = h.imatrix();
            Some(diag_imp.as_slice())
        }
    };
    // Column order: by decreasing Hessian diagonal (act-order).
    let count = h.count.max(1) as f64;
    let diag: Vec<f64> = (0..cols).map(|c| h.sum_xxt[c * cols + c] / count).collect();
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let u = inverse_factor_permuted(p.name, h, &perm, opts.damp)?;
    let uf = Mat::<f32>::from_fn(cols, cols, |i, j| u[(i, j)] as f32);

    // Weights kept apart: the largest w² / [H⁻¹]_cc (H⁻¹ = UᵀU, in permuted order).
    let mut keep = vec![false; if opts.outliers > 0.0 { rows * cols } else { 0 }];
    let mut kept: Vec<u32> = Vec::new();
    if opts.outliers > 0.0 {
        if rows * cols > u32::MAX as usize {
            return Err(Error::Other(format!("tensor `{}`: too large to keep outliers", p.name)));
        }
        let mut hinv = vec![0f64; cols];
        for (i, &c) in perm.iter().enumerate() {
            hinv[c] = (0..=i).map(|k| u[(k, i)] * u[(k, i)]).sum::<f64>().max(1e-30);
        }
        let sal: Vec<f32> =
            p.w.par_iter().enumerate().map(|(i, &w)| ((w as f64) * (w as f64) / hinv[i % cols]) as f32).collect();
        let n = ((opts.outliers * (rows * cols) as f64).round() as usize).clamp(1, rows * cols);
        let mut order: Vec<u32> = (0..(rows * cols) as u32).collect();
        order.select_nth_unstable_by(n - 1, |&a, &b| sal[b as usize].total_cmp(&sal[a as usize]));
        kept = order[..n].to_vec();
        kept.sort_unstable();
        for &i in &kept {
            keep[i as usize] = true;
        }
    }
    // The grid, fitted to the weights that are not kept apart.
    let g: Box<dyn Grid> = if let Some(n) = &opts.nested {
        Box::new(n.grid(target, p.name, p.w, rows, cols, importance)?)
    } else if kept.is_empty() {
        grid(target, p.name, p.w, rows, cols, importance)?
    } else {
        let mut wg = p.w.to_vec();
        for &i in &kept {
            wg[i as usize] = 0.0;
        }
        grid(target, p.name, &wg, rows, cols, importance)?
    };

    // Rows are independent given the Hessian (a row's error moves only that row's later
    // weights), so GPTQ runs on chunks of rows, each transposed into working copies of its
    // own, and writes each chunk's result straight into q: the working memory is a few
    // chunks rather than two more copies of the matrix (an output head of a large vocabulary
    // is by far the largest matrix; a layer up to CHUNK_BYTES is one chunk).
    let chunk = chunk.clamp(1, rows.max(1));
    let bs = opts.block.max(1);
    // One running copy of the weights per stream of the grid (one, but for a cascaded nested
    // grid, whose precisions each compensate their own error), each with its error block.
    let ns = g.streams();
    let mut wts = vec![vec![0f32; cols * chunk]; ns];
    let mut qt = vec![0f32; cols * chunk];
    let mut errs = vec![vec![0f32; bs * chunk]; ns];
    let mut seen_all = vec![0f32; if ns > 1 { chunk * ns } else { 0 }];
    let mut q = vec![0f32; rows * cols];
    for base in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - base);
        let ctx = ChunkCtx { base, n, uf: &uf, perm: &perm, keep: &keep, cols, g: &*g };
        // Wᵀ of the chunk in permuted column order: column k of it is (permuted) column k,
        // contiguous over the chunk's rows. Dead channels (zero Hessian diagonal) carry no
        // signal: their weights are zeroed, as in the reference implementation, so their
        // rounding error is not spread over live ones.
        for (k, &c) in perm.iter().enumerate() {
            let dead = diag[c] <= 0.0;
            for (r, w) in wts[0][k * n..(k + 1) * n].iter_mut().enumerate() {
                *w = if dead { 0.0 } else { p.w[(base + r) * cols + c] };
            }
        }
        let (first, others) = wts.split_at_mut(1);
        for wt in others {
            wt[..cols * n].copy_from_slice(&first[0][..cols * n]);
        }
        let qt = &mut qt[..cols * n];
        let seen_all = &mut seen_all[..if ns > 1 { n * ns } else { 0 }];
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + bs).min(cols);
            let nb = i2 - i1;
            if ns == 1 {
                // One task per piece of rows runs the whole block: rows are independent within
                // a block, so this is GPTQ's column-by-column loop with the same arithmetic per
                // weight, without two parallel dispatches per column.
                block_by_rows(&mut wts[0][..cols * n], qt, &mut errs[0][..bs * n], (i1, i2), &ctx);
            } else {
                // Several streams (a cascaded nested grid): column by column, every stream's
                // value of the column rounded together.
                for i in i1..i2 {
                    let d = uf[(i, i)];
                    let c = perm[i];
                    let qcol = &mut qt[i * n..(i + 1) * n];
                    // The stored value, and each stream's error.
                    let wts_ref = &wts;
                    qcol.par_iter_mut().zip(seen_all.par_chunks_mut(ns)).enumerate().for_each(|(r, (q, seen))| {
                        let mut xs = [0f32; 8];
                        for (s, x) in xs[..ns].iter_mut().enumerate() {
                            *x = wts_ref[s][i * n + r];
                        }
                        *q = g.round_streams(base + r, c, &xs[..ns], seen);
                        for (sv, x) in seen.iter_mut().zip(&xs) {
                            *sv = (x - *sv) / d;
                        }
                    });
                    for (s, err) in errs.iter_mut().enumerate() {
                        for (r, e) in err[(i - i1) * n..(i - i1 + 1) * n].iter_mut().enumerate() {
                            *e = seen_all[r * ns + s];
                        }
                    }
                    // Within the block, update the remaining columns right away.
                    for (wt, err) in wts.iter_mut().zip(&errs) {
                        let tail = &mut wt[(i + 1) * n..cols * n];
                        let ecol = &err[(i - i1) * n..(i - i1 + 1) * n];
                        tail[..(i2 - i - 1) * n].par_chunks_mut(n).enumerate().for_each(|(jj, wcol)| {
                            let uij = uf[(i, i + 1 + jj)];
                            for (w, e) in wcol.iter_mut().zip(ecol) {
                                *w -= e * uij;
                            }
                        });
                    }
                }
            }
            // Lazy update of all later columns: Wᵀ[i2.., :] -= U[i1..i2, i2..]ᵀ · E.
            if i2 < cols {
                for (wt, err) in wts.iter_mut().zip(&errs) {
                    let later = &mut wt[i2 * n..cols * n];
                    let dst = MatMut::from_row_major_slice_mut(later, cols - i2, n);
                    let e = MatRef::from_row_major_slice(&err[..nb * n], nb, n);
                    let usub = uf.as_ref().submatrix(i1, i2, nb, cols - i2);
                    matmul(dst, Accum::Add, usub.transpose(), e, -1.0f32, Par::rayon(0));
                }
            }
            i1 = i2;
        }
        // Back to [rows, cols] in the original column order.
        for (k, &c) in perm.iter().enumerate() {
            for (r, &v) in qt[k * n..(k + 1) * n].iter().enumerate() {
                q[(base + r) * cols + c] = v;
            }
        }
    }
    Ok(OnGrid { grid: g, q, kept, cols })
}

/// Rows at most this many bytes of a matrix (one working copy) are solved at a time.
const CHUNK_BYTES: usize = 32 << 20;

/// Rows per chunk of a `rows × cols` matrix: all of them up to [`CHUNK_BYTES`], else as many as
/// fit (at least 256).
fn chunk_rows(rows: usize, cols: usize) -> usize {
    (CHUNK_BYTES / (4 * cols.max(1))).max(256).min(rows).max(1)
}

/// What every step of one chunk of rows shares: rows `base .. base + n` of the matrix, the
/// inverse-Hessian factor, the column order, the kept weights (flat indices of the whole
/// matrix), the grid.
struct ChunkCtx<'a> {
    base: usize,
    n: usize,
    uf: &'a Mat<f32>,
    perm: &'a [usize],
    keep: &'a [bool],
    cols: usize,
    g: &'a dyn Grid,
}

/// GPTQ's columns `i1..i2` (one block) for every row of the chunk, rows split into pieces run
/// in parallel: `wt`, `qt` hold (permuted) columns of the chunk's `n` rows, `err` the block's
/// scaled errors.
fn block_by_rows(wt: &mut [f32], qt: &mut [f32], err: &mut [f32], (i1, i2): (usize, usize), ctx: &ChunkCtx) {
    let rows = ctx.n;
    // Pieces of at least 16 rows, about four per thread.
    let piece = (rows / (4 * rayon::current_num_threads()).max(1)).max(16).min(rows);
    let (wp, qp, ep) = (SharedMut(wt.as_mut_ptr()), SharedMut(qt.as_mut_ptr()), SharedMut(err.as_mut_ptr()));
    (0..rows.div_ceil(piece)).into_par_iter().for_each(|t| {
        let (r0, r1) = (t * piece, ((t + 1) * piece).min(rows));
        let task = RowsTask { wp, qp, ep, r0, n: r1 - r0, i1, i2, ctx };
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { task.run_avx2() };
            }
        }
        task.run()
    });
}

/// One task of [`block_by_rows`]: rows `r0 .. r0 + n` of the chunk, one block of columns.
struct RowsTask<'a> {
    wp: SharedMut<f32>,
    qp: SharedMut<f32>,
    ep: SharedMut<f32>,
    r0: usize,
    n: usize,
    i1: usize,
    i2: usize,
    ctx: &'a ChunkCtx<'a>,
}

impl RowsTask<'_> {
    /// [`RowsTask::run`] compiled for AVX2 (the column updates are 8 wide instead of 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self) {
        self.run()
    }

    #[inline(always)]
    fn run(&self) {
        let RowsTask { wp, qp, ep, r0, n, i1, i2, ctx } = *self;
        let ChunkCtx { base, n: rows, uf, perm, keep, cols, g } = *ctx;
        // SAFETY: the task reads and writes rows r0..r0 + n of columns i1..cols of `wt` and
        // `qt` and of the block's columns of `err`, and no other task touches those rows; each
        // slice below lies inside its buffer (columns of `rows` values) and lives only during
        // one step of this task, while the buffers outlive the parallel loop.
        let col = |p: SharedMut<f32>, k: usize| unsafe { std::slice::from_raw_parts_mut(p.at(k * rows + r0), n) };
        for i in i1..i2 {
            let d = uf[(i, i)];
            let c = perm[i];
            let (w, q, e) = (col(wp, i), col(qp, i), col(ep, i - i1));
            for (k, ((q, e), &x)) in q.iter_mut().zip(e.iter_mut()).zip(w.iter()).enumerate() {
                let r = base + r0 + k;
                let seen = if !keep.is_empty() && keep[r * cols + c] {
                    *q = half::f16::from_f32(x).to_f32();
                    *q
                } else {
                    let (stored, seen) = g.round_compensated(r, c, x);
                    *q = stored;
                    seen
                };
                *e = (x - seen) / d;
            }
            // Within the block, update the remaining columns right away.
            let e: &[f32] = e;
            for j in i + 1..i2 {
                let uij = uf[(i, j)];
                for (w, e) in col(wp, j).iter_mut().zip(e) {
                    *w -= e * uij;
                }
            }
        }
    }
}

/// The checks every Hessian solver makes of its problem; returns the Hessian.
pub fn checked_hessian<'a>(p: &LayerProblem<'a>, solver: &str) -> Result<&'a crate::calib::Hessian> {
    let h =
        p.hessian.ok_or_else(|| Error::Other(format!("tensor `{}`: {solver} needs calibration statistics", p.name)))?;
    let (rows, cols) = (p.rows, p.cols);
    if h.n != cols {
        return Err(Error::Other(format!(
            "tensor `{}`: Hessian is {}×{} but the layer has {cols} input columns",
            p.name, h.n, h.n
        )));
    }
    if p.w.len() != rows * cols || h.sum_xxt.len() != cols * cols {
        return Err(Error::Other(format!(
            "tensor `{}`: {} weights and {} Hessian entries for a {rows}×{cols} layer",
            p.name,
            p.w.len(),
            h.sum_xxt.len()
        )));
    }
    if h.sum_xxt.iter().any(|v| !v.is_finite()) {
        return Err(Error::Other(format!("tensor `{}`: the calibration statistics contain NaN or infinity", p.name)));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_target_fits_the_float_output() {
        // X_q = X_f + noise: GPTQ's target W* makes W* X_q the least-squares fit of W X_f (the
        // residual is orthogonal to X_q's rows, up to the damping), and beats W itself.
        let (rows, cols, n) = (12, 24, 400);
        let mut s = 17u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let xf: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
        let xq: Vec<f32> = xf.iter().map(|v| v + 0.2 * rnd() + 0.05).collect();
        let mut h = crate::calib::Hessian::new(cols);
        h.add(&xq, n);
        let mut c = crate::calib::Cross::new(cols);
        c.add(&xf, &xq, n);
        // The cross term against a direct sum.
        let naive = |i: usize, j: usize| {
            (0..n).map(|t| ((xf[t * cols + i] - xq[t * cols + i]) * xq[t * cols + j]) as f64).sum::<f64>()
        };
        for (i, j) in [(0, 0), (3, 7), (23, 1)] {
            assert!((c.sum[i * cols + j] - naive(i, j)).abs() < 1e-3 * (1.0 + naive(i, j).abs()));
        }
        let ws = asymmetric_target("t", &w, rows, cols, &h, &c.mean(), 1e-6).unwrap();
        let out = |m: &[f32], x: &[f32]| {
            let mut y = vec![0f64; rows * n];
            for r in 0..rows {
                for t in 0..n {
                    y[r * n + t] = (0..cols).map(|k| (m[r * cols + k] * x[t * cols + k]) as f64).sum();
                }
            }
            y
        };
        let yf = out(&w, &xf);
        let err = |m: &[f32]| out(m, &xq).iter().zip(&yf).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        assert!(err(&ws) < 0.8 * err(&w), "{} vs {}", err(&ws), err(&w));
        // Orthogonality: (W X_f − W* X_q) X_qᵀ ≈ 0.
        let res: Vec<f64> = out(&ws, &xq).iter().zip(&yf).map(|(a, b)| b - a).collect();
        let scale = yf.iter().map(|v| v * v).sum::<f64>().sqrt() * (n as f64).sqrt();
        for r in 0..rows {
            for k in 0..cols {
                let g: f64 = (0..n).map(|t| res[r * n + t] * xq[t * cols + k] as f64).sum();
                assert!(g.abs() < 1e-3 * scale, "gradient {g} at ({r}, {k})");
            }
        }
        // No difference between the streams: the target is W.
        let mut same = crate::calib::Cross::new(cols);
        same.add(&xq, &xq, n);
        assert!(same.is_zero());
        assert_eq!(asymmetric_target("t", &w, rows, cols, &h, &same.mean(), 0.01).unwrap(), w);
    }
    use crate::calib::Hessian;
    use crate::solve::{layer_error, rtn, LayerProblem};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Correlated inputs (low-rank plus noise, some channels much louder), random weights:
    /// GPTQ must cut the output error well below round-to-nearest's, in the same format.
    fn check(spec: &str) {
        let (rows, cols, n) = (48, 128, 2048);
        let mut s = 7u64;
        let basis: Vec<f32> = (0..8 * cols).map(|_| lcg(&mut s)).collect();
        let mut x = vec![0f32; n * cols];
        for t in 0..n {
            let coef: Vec<f32> = (0..8).map(|_| lcg(&mut s)).collect();
            for c in 0..cols {
                let mut v = 0.1 * lcg(&mut s);
                for (k, co) in coef.iter().enumerate() {
                    v += co * basis[k * cols + c];
                }
                x[t * cols + c] = v * if c % 16 == 0 { 4.0 } else { 1.0 };
            }
        }
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.05).collect();
        let t = formats::format::Format::parse(spec).unwrap();
        let p = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let r = rtn::Rtn.solve(&p, &t).unwrap();
        let g = solve(&p, &t, &GptqOptions::default()).unwrap();
        let er = layer_error(&w, &r.dequant, rows, cols, Some(&h)).output_err.unwrap();
        let eg = layer_error(&w, &g.dequant, rows, cols, Some(&h)).output_err.unwrap();
        assert!(eg < 0.7 * er, "{spec}: GPTQ output error {eg} not well below RTN's {er}");
        // Every GPTQ value is representable: re-rounding with RTN-chosen grids is not
        // guaranteed to match, but the values must be finite and not all zero.
        assert!(g.dequant.iter().all(|v| v.is_finite()));
        assert!(g.dequant.iter().any(|&v| v != 0.0));
        let no_order = solve(&p, &t, &GptqOptions { act_order: false, ..Default::default() }).unwrap();
        let en = layer_error(&w, &no_order.dequant, rows, cols, Some(&h)).output_err.unwrap();
        assert!(en < er, "{spec}: GPTQ without act-order {en} vs RTN {er}");
    }

    /// Rows are independent in GPTQ and round-to-nearest: any split of a layer's rows, each
    /// part solved alone with the same statistics, gives the whole layer's values bit for
    /// bit, and its parts' codes joined by rows are the whole layer's (what MPI ranks
    /// sharing out one layer's rows rely on).
    #[test]
    fn rows_solved_apart_equal_rows_solved_together() {
        use crate::export::TensorData;
        use crate::solve::Solver;
        let cases = [
            ("q4_k", 96, 512),
            ("int4:g64", 100, 320),
            ("int4:g32:asym", 20, 128),
            ("q6_k", 40, 256),
            ("q5_0", 70, 192),
            ("fp4_e2m1:g32", 33, 160),
            ("mxfp4", 24, 128),
            ("int8", 30, 96),
            ("q4_k", 577, 1536),
        ];
        for (spec, rows, cols) in cases {
            let mut s = 11u64;
            let n = 400;
            let x: Vec<f32> = (0..n * cols).map(|i| lcg(&mut s) * (1.0 + (i % cols % 7) as f32)).collect();
            let mut h = Hessian::new(cols);
            h.add(&x, n);
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.1).collect();
            let t = formats::format::Format::parse(spec).unwrap();
            let whole = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
            let solvers: [(&str, &dyn Solver); 2] = [("gptq", &Gptq::default()), ("rtn", &crate::solve::rtn::Rtn)];
            for (sname, solver) in solvers {
                let full = solver.solve(&whole, &t).unwrap();
                for split in [1, rows / 3, rows / 2, rows - 1] {
                    let top = LayerProblem { w: &w[..split * cols], rows: split, ..whole };
                    let bottom = LayerProblem { w: &w[split * cols..], rows: rows - split, ..whole };
                    let a = solver.solve(&top, &t).unwrap();
                    let b = solver.solve(&bottom, &t).unwrap();
                    let joined: Vec<u32> = a.dequant.iter().chain(&b.dequant).map(|v| v.to_bits()).collect();
                    let want: Vec<u32> = full.dequant.iter().map(|v| v.to_bits()).collect();
                    let first = joined.iter().zip(&want).position(|(x, y)| x != y);
                    assert!(first.is_none(), "{sname} {spec} split at {split}: first difference at {first:?}");
                    let data = TensorData::concat_rows(vec![a.data, b.data]).unwrap();
                    assert!(data == full.data, "{sname} {spec} split at {split}: the joined codes differ");
                }
            }
        }
        // Parts that cannot be joined by rows are refused.
        let f = TensorData::Float(vec![1.0]);
        assert!(TensorData::concat_rows(vec![f.clone(), f]).is_err());
        assert!(TensorData::concat_rows(vec![TensorData::Ggml(vec![0]), TensorData::Float(vec![])]).is_err());
        assert!(TensorData::concat_rows(vec![]).is_err());
    }

    /// GPTQ run on a layer's rows a chunk at a time (how a large output head is solved without
    /// two more copies of it) gives the values of one pass over all rows, bit for bit: uneven
    /// chunks, single rows, with weights kept apart (indices of the whole matrix) and with a
    /// cascaded nested grid (one running copy per precision).
    #[test]
    fn chunks_of_rows_equal_one_pass() {
        let (rows, cols, n) = (45, 96, 600);
        let mut s = 23u64;
        let x: Vec<f32> = (0..n * cols).map(|i| lcg(&mut s) * (1.0 + (i % cols % 5) as f32)).collect();
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        let mut w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.1).collect();
        for k in 0..12 {
            w[(k * 353) % (rows * cols)] = 0.9;
        }
        let p = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let nested = crate::solve::nested::Nesting::parse("8,4,2").unwrap();
        let cases = [
            ("q5_0", GptqOptions::default()),
            ("int4:g32", GptqOptions { block: 40, ..Default::default() }),
            ("int3:g32", GptqOptions { outliers: 0.01, ..Default::default() }),
            ("int8:g32:asym", GptqOptions { nested: Some(nested), ..Default::default() }),
        ];
        for (spec, opts) in cases {
            let t = formats::format::Format::parse(spec).unwrap();
            let one = solve_in_chunks(&p, &t, &opts, rows).unwrap();
            let bits = |q: &[f32]| q.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            for chunk in [1, 7, 16, rows - 1] {
                let parts = solve_in_chunks(&p, &t, &opts, chunk).unwrap();
                assert!(bits(&parts.q) == bits(&one.q), "{spec}: chunks of {chunk} rows");
                assert_eq!(parts.kept, one.kept, "{spec}: chunks of {chunk} rows");
            }
            assert_eq!(one.kept.is_empty(), opts.outliers == 0.0);
        }
        assert_eq!(chunk_rows(49152, 576), CHUNK_BYTES / (4 * 576));
        assert_eq!(chunk_rows(1536, 576), 1536);
    }

    /// Weights kept apart in f16 (a few planted outliers among them) lower the output error,
    /// are stored as a sorted sparse table that dequantizes, spills, reorders and counts its
    /// bytes; QuantEase keeps them too.
    #[test]
    fn kept_outliers_lower_the_error_and_are_stored_apart() {
        use crate::export::{QuantTensor, Storage, TensorData};
        let (rows, cols, n) = (32, 128, 1024);
        let mut s = 5u64;
        let x: Vec<f32> = (0..n * cols).map(|i| lcg(&mut s) * if i % cols % 9 == 0 { 3.0 } else { 1.0 }).collect();
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        let mut w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.05).collect();
        for k in 0..20 {
            w[(k * 389) % (rows * cols)] = 0.6 * if k % 2 == 0 { 1.0 } else { -1.0 };
        }
        let t = formats::format::Format::parse("int3:g32").unwrap();
        let p = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let plain = solve(&p, &t, &GptqOptions::default()).unwrap();
        let opts = GptqOptions { outliers: 0.01, ..Default::default() };
        let kept = solve(&p, &t, &opts).unwrap();
        let ep = layer_error(&w, &plain.dequant, rows, cols, Some(&h)).output_err.unwrap();
        let ek = layer_error(&w, &kept.dequant, rows, cols, Some(&h)).output_err.unwrap();
        assert!(ek < 0.8 * ep, "outliers {ek} vs plain {ep}");
        let TensorData::Sparse { idx, val, .. } = &kept.data else { panic!("no sparse table") };
        assert_eq!(idx.len(), (0.01 * (rows * cols) as f64).round() as usize);
        assert!(idx.windows(2).all(|p| p[0] < p[1]) && val.len() == idx.len());
        let storage = Storage::Format(Box::new(t.clone()));
        let qt = QuantTensor {
            name: "w".into(),
            shape: vec![rows, cols],
            storage: storage.clone(),
            data: kept.data.clone(),
        };
        assert_eq!(qt.dequantize().unwrap(), kept.dequant);
        let dense_bytes = storage.storage_bits(rows, cols).unwrap().div_ceil(8) as usize;
        assert_eq!(qt.stored_bytes(), dense_bytes + 6 * idx.len());
        let mut buf = Vec::new();
        qt.write_spill(&mut buf);
        let back = QuantTensor::read_spill(&buf, &mut 0, &|_| Some(storage.clone())).unwrap().unwrap();
        assert_eq!(back, qt);
        // Reordering rows moves the kept weights with them.
        let perm: Vec<usize> = (0..rows).rev().collect();
        let mut moved = qt.clone();
        moved.permute_rows(&perm).unwrap();
        let d = moved.dequantize().unwrap();
        for r in 0..rows {
            assert_eq!(&d[r * cols..(r + 1) * cols], &kept.dequant[perm[r] * cols..(perm[r] + 1) * cols]);
        }
        // QuantEase from the same start keeps the same weights and lowers the error further.
        let qe = crate::solve::quantease::QuantEaseOptions { sweeps: 4, gptq: opts };
        let e = crate::solve::quantease::solve(&p, &t, &qe).unwrap();
        let TensorData::Sparse { idx: idx2, .. } = &e.data else { panic!("no sparse table") };
        assert_eq!(idx2, idx);
        let eq = layer_error(&w, &e.dequant, rows, cols, Some(&h)).output_err.unwrap();
        assert!(eq <= ek * 1.0001, "QuantEase {eq} vs GPTQ {ek}");
    }

    #[test]
    fn gptq_beats_rtn_int4_groups() {
        check("int4:g32");
    }

    #[test]
    fn gptq_beats_rtn_int3_channel() {
        check("int3");
    }

    #[test]
    fn dead_channels_and_singular_hessians_do_not_make_nan() {
        let (rows, cols) = (4, 8);
        let mut h = Hessian::new(cols);
        // Only channel 0 is ever active: H is rank one.
        let x: Vec<f32> = (0..100).flat_map(|t| (0..cols).map(move |c| if c == 0 { t as f32 } else { 0.0 })).collect();
        h.add(&x, 100);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.1 - 1.0).collect();
        let t = formats::format::Format::parse("int4").unwrap();
        let p = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let g = solve(&p, &t, &GptqOptions::default()).unwrap();
        assert!(g.dequant.iter().all(|v| v.is_finite()));
    }

    /// The factor is the upper Cholesky factor of the damped inverse: upper triangular with
    /// a positive diagonal, UᵀU·(H + λI) = I, equal to the factor of H's explicit inverse
    /// (factor H, invert, factor the inverse) to rounding; read from the sums in a
    /// permuted order it equals the factor of the explicitly permuted mean bit for bit.
    #[test]
    fn inverse_factor_is_the_upper_cholesky_factor_of_the_inverse() {
        use faer::linalg::solvers::DenseSolveCore;
        let (n, rows) = (37, 90);
        let mut seed = 7u64;
        let x: Vec<f32> = (0..rows * n).map(|i| lcg(&mut seed) * (1.0 + (i % n % 5) as f32)).collect();
        let mut h = Hessian::new(n);
        h.add(&x, rows);
        let perm: Vec<usize> = (0..n).map(|k| (k * 11 + 3) % n).collect();
        let mean = h.mean();
        let hp: Vec<f64> = (0..n * n).map(|k| mean[perm[k / n] * n + perm[k % n]]).collect();
        let u = inverse_factor_permuted("w", &h, &perm, 0.01).unwrap();
        let u2 = inverse_hessian_factor("w", &hp, n, 0.01).unwrap();
        assert!((0..n).all(|j| (0..n).all(|i| u[(i, j)].to_bits() == u2[(i, j)].to_bits())));
        let lambda = 0.01 * (0..n).map(|i| hp[i * n + i]).sum::<f64>() / n as f64;
        let damped = Mat::<f64>::from_fn(n, n, |i, j| hp[i * n + j] + if i == j { lambda } else { 0.0 });
        let id = u.transpose() * &u * &damped;
        let old = damped.llt(Side::Lower).unwrap().inverse().llt(Side::Lower).unwrap().L().transpose().to_owned();
        for i in 0..n {
            assert!(u[(i, i)] > 0.0);
            for j in 0..n {
                if i > j {
                    assert_eq!(u[(i, j)], 0.0);
                }
                assert!((id[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "({i}, {j}): {}", id[(i, j)]);
                assert!((u[(i, j)] - old[(i, j)]).abs() <= 1e-10 * old[(i, i)].abs(), "({i}, {j})");
            }
        }
    }

    /// A Hessian no damping makes positive definite (off-diagonal entries far larger than the
    /// diagonal: not a Gram matrix, e.g. corrupted statistics) fails after the damping has
    /// grown to its limit, and the error names the tensor.
    #[test]
    fn singular_hessian_error_names_the_tensor() {
        let (rows, cols) = (2, 4);
        let mut h = Hessian::new(cols);
        for i in 0..cols {
            for j in 0..cols {
                h.sum_xxt[i * cols + j] = if i == j { 1.0 } else { 1e9 };
            }
        }
        h.count = 1;
        let w = vec![0.5f32; rows * cols];
        let t = formats::format::Format::parse("int4").unwrap();
        let p = LayerProblem { name: "blk.3.attn_v.weight", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let e = solve(&p, &t, &GptqOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("tensor `blk.3.attn_v.weight`: the Hessian stays singular"), "{e}");
        // The factor itself, called directly, names the tensor it is given too, NaN included.
        let e = inverse_hessian_factor("x", &h.mean(), cols, 0.01).unwrap_err().to_string();
        assert!(e.starts_with("tensor `x`: the Hessian stays singular"), "{e}");
        let e = inverse_hessian_factor("x", &[f64::NAN, 0.0, 0.0, 1.0], 2, 0.01).unwrap_err().to_string();
        assert!(e.starts_with("tensor `x`: "), "{e}");
        // Non-finite statistics and a width mismatch are named as well.
        let mut hn = Hessian::new(cols);
        hn.sum_xxt[5] = f64::NAN;
        let p = LayerProblem { hessian: Some(&hn), ..p };
        let e = solve(&p, &t, &GptqOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("tensor `blk.3.attn_v.weight`: "), "{e}");
        let h3 = Hessian::new(3);
        let p = LayerProblem { hessian: Some(&h3), ..p };
        let e = solve(&p, &t, &GptqOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("tensor `blk.3.attn_v.weight`: Hessian is 3×3"), "{e}");
        let p = LayerProblem { hessian: None, ..p };
        let e = solve(&p, &t, &GptqOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("tensor `blk.3.attn_v.weight`: GPTQ needs"), "{e}");
    }
}
