//! Low-rank compensation: a rank-r term added to a quantized layer, W ≈ Q + A·B.
//!
//! Two orders, both around any inner solver (RTN, GPTQ, QuantEase, with or without kept
//! weights):
//! - `residual` (ZeroQuant-V2's LoRC): quantize W, then fit A·B to the error E = W − Q;
//! - `absorb` (SVDQuant's order): take the top-r part L of W first, quantize the residual
//!   W − L (so the solver compensates for it), and add L back.
//!
//! With calibration statistics the residual fit is whitened by the layer's input: it minimises the
//! output error tr((E − AB) H (E − AB)ᵀ) rather than ‖E − AB‖², so the rank goes where the
//! layer's output needs it. With H = L·Lᵀ (Cholesky, damped as GPTQ damps it), the best rank-r
//! fit is the truncated SVD of E·L mapped back: A·B = [E·L]_r · L⁻¹. The SVD is taken from the
//! eigenvectors of the smaller Gram matrix (min(rows, cols)², f64). The factors are stored in
//! f16 or int8 (one f16 scale per factor row); after B is rounded, A is refitted to it in
//! closed form (A = E·H·B̂ᵀ (B̂·H·B̂ᵀ)⁻¹), so A absorbs B's rounding, then A is rounded.
//! Every stored byte (factors and scales) counts in the layer's size.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Par, Side};

use super::target::{Encoded, Target};
use super::{LayerProblem, Method, Solver};
use crate::export::tensor::{add_low_rank, Factor};
use crate::export::TensorData;
use crate::{Error, Result};

/// Which comes first, the quantization or the low-rank term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Quantize, then fit the error (LoRC).
    Residual,
    /// Take the top-r part of the weights, quantize the rest (SVDQuant).
    Absorb,
}

/// Low-rank settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankOptions {
    /// Rank r.
    pub rank: usize,
    /// Factors in int8 (one f16 scale per factor row) rather than f16.
    pub int8: bool,
    /// Fit in the output metric of the calibration statistics (when the layer has them);
    /// `None`: yes for the residual order, no for absorb (SVDQuant takes the plain SVD, which
    /// keeps the residual's range small; a whitened split can move range into directions the
    /// inputs seldom excite).
    pub whiten: Option<bool>,
    /// Order of quantization and fit.
    pub order: Order,
    /// Damping of the Hessian, as a fraction of its mean diagonal.
    pub damp: f64,
}

impl Default for LowRankOptions {
    fn default() -> Self {
        LowRankOptions { rank: 8, int8: false, whiten: None, order: Order::Residual, damp: 0.01 }
    }
}

impl LowRankOptions {
    /// Whether the fit is weighted by the calibration statistics.
    pub fn whitened(&self) -> bool {
        self.whiten.unwrap_or(self.order == Order::Residual)
    }

    /// The settings as recipes spell them (`:lowrank=32:lowrank-store=int8`).
    pub fn spec_suffix(&self) -> String {
        let mut s = format!(":lowrank={}", self.rank);
        if self.int8 {
            s += ":lowrank-store=int8";
        }
        if self.order == Order::Absorb {
            s += ":lowrank-order=absorb";
        }
        match self.whiten {
            Some(w) if w != (self.order == Order::Residual) => {
                s += if w { ":lowrank-whiten=yes" } else { ":lowrank-whiten=no" }
            }
            _ => {}
        }
        s
    }

    /// Bytes the two factors of a `rows × cols` layer take.
    pub fn factor_bytes(&self, rows: usize, cols: usize) -> usize {
        let n = self.rank * (rows + cols);
        if self.int8 {
            n + 2 * 2 * self.rank
        } else {
            2 * n
        }
    }
}

/// An inner solver with a low-rank term.
#[derive(Debug)]
pub struct LowRank {
    /// The solver that quantizes (the whole layer, or the residual).
    pub inner: Method,
    /// The low-rank settings.
    pub opts: LowRankOptions,
}

impl Solver for LowRank {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn spec(&self) -> String {
        self.inner.spec() + &self.opts.spec_suffix()
    }
    fn needs_hessian(&self) -> bool {
        self.inner.needs_hessian() || self.opts.whitened()
    }
    fn asymmetric(&self) -> bool {
        self.inner.asymmetric()
    }
    fn nesting(&self) -> Option<&super::nested::Nesting> {
        self.inner.nesting()
    }
    fn side_data(&self) -> Option<String> {
        let lr = format!(
            "adds rank-{} {} factors (LoRC{})",
            self.opts.rank,
            if self.opts.int8 { "int8" } else { "f16" },
            if self.opts.order == Order::Absorb { ", SVDQuant order" } else { "" }
        );
        Some(match self.inner.side_data() {
            Some(s) => format!("{s} and {lr}"),
            None => lr,
        })
    }
    fn check_shape(&self, rows: usize, cols: usize) -> std::result::Result<(), String> {
        rank_fits(self.opts.rank, rows, cols)
    }
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded> {
        solve(p, target, self.inner.as_ref(), &self.opts)
    }
}

fn rank_fits(r: usize, rows: usize, cols: usize) -> std::result::Result<(), String> {
    if r == 0 || r >= rows.min(cols) {
        return Err(format!(
            "a rank-{r} correction of a {rows}×{cols} layer: the rank must be from 1 to {} (below the layer's smaller side)",
            rows.min(cols).saturating_sub(1)
        ));
    }
    Ok(())
}

/// Quantizes `p.w` with `inner` plus a rank-`opts.rank` term.
pub fn solve(p: &LayerProblem, target: &Target, inner: &dyn Solver, opts: &LowRankOptions) -> Result<Encoded> {
    let (rows, cols, r) = (p.rows, p.cols, opts.rank);
    rank_fits(r, rows, cols).map_err(|e| Error::Other(format!("tensor `{}`: {e}", p.name)))?;
    let h = match p.hessian {
        Some(h) if opts.whitened() && h.is_full() => {
            let h = super::gptq::checked_hessian(p, "low-rank compensation")?;
            Some(damped(p.name, &h.mean(), cols, opts.damp)?)
        }
        _ => None,
    };
    match opts.order {
        Order::Residual => {
            let enc = inner.solve(p, target)?;
            let e: Vec<f32> = p.w.iter().zip(&enc.dequant).map(|(a, b)| a - b).collect();
            let (at, b) = fit(&e, rows, cols, r, h.as_ref(), opts.int8);
            let mut dequant = enc.dequant;
            add_low_rank(&mut dequant, rows, cols, r, &at.values(), &b.values());
            Ok(Encoded { data: TensorData::LowRank { base: Box::new(enc.data), rank: r, at, b }, dequant })
        }
        Order::Absorb => {
            let (at, b) = fit(p.w, rows, cols, r, h.as_ref(), opts.int8);
            let mut low = vec![0f32; rows * cols];
            let (atv, bv) = (at.values(), b.values());
            add_low_rank(&mut low, rows, cols, r, &atv, &bv);
            let residual: Vec<f32> = p.w.iter().zip(&low).map(|(a, b)| a - b).collect();
            let enc = inner.solve(&LayerProblem { w: &residual, ..*p }, target)?;
            let mut dequant = enc.dequant;
            add_low_rank(&mut dequant, rows, cols, r, &atv, &bv);
            Ok(Encoded { data: TensorData::LowRank { base: Box::new(enc.data), rank: r, at, b }, dequant })
        }
    }
}

/// The damped Hessian and its lower Cholesky factor.
struct Whitening {
    h: Mat<f64>,
    l: Mat<f64>,
}

/// H + λI (λ = `damp` · mean diagonal; dead channels get a unit diagonal), grown tenfold until
/// it factors.
fn damped(name: &str, h: &[f64], n: usize, damp: f64) -> Result<Whitening> {
    let mut hm = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j]);
    for i in 0..n {
        if hm[(i, i)] <= 0.0 {
            hm[(i, i)] = 1.0;
        }
    }
    let mean_diag = (0..n).map(|i| hm[(i, i)]).sum::<f64>() / n as f64;
    for k in 0..6 {
        let mut a = hm.clone();
        for i in 0..n {
            a[(i, i)] += damp.max(1e-8) * 10f64.powi(k) * mean_diag;
        }
        if let Ok(llt) = a.llt(Side::Lower) {
            let l = llt.L().to_owned();
            if l.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Ok(Whitening { h: a, l });
            }
        }
    }
    Err(Error::Other(format!("tensor `{name}`: the calibration statistics do not factor (not positive definite)")))
}

fn mat_f32(v: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(v, rows, cols)
}

/// The rank-`r` factors (Aᵀ `[r, rows]`, B `[r, cols]`, stored) that best fit `e`
/// (`[rows, cols]`) in the metric of `w` (the identity without one).
fn fit(e: &[f32], rows: usize, cols: usize, r: usize, w: Option<&Whitening>, int8: bool) -> (Factor, Factor) {
    let par = Par::rayon(0);
    let em = mat_f32(e, rows, cols);
    // M = E·L (whitened) or E.
    let m: Mat<f32> = match w {
        Some(w) => {
            let lf = Mat::<f32>::from_fn(cols, cols, |i, j| w.l[(i, j)] as f32);
            let mut m = Mat::<f32>::zeros(rows, cols);
            matmul(m.as_mut(), Accum::Replace, em, lf.as_ref(), 1.0f32, par);
            m
        }
        None => Mat::<f32>::from_fn(rows, cols, |i, j| e[i * cols + j]),
    };
    // Top-r singular directions of M from the smaller Gram matrix: A·Bw = [M]_r.
    let small = rows.min(cols);
    let mut g32 = Mat::<f32>::zeros(small, small);
    if rows <= cols {
        matmul(g32.as_mut(), Accum::Replace, m.as_ref(), m.transpose(), 1.0f32, par);
    } else {
        matmul(g32.as_mut(), Accum::Replace, m.transpose(), m.as_ref(), 1.0f32, par);
    }
    let g = Mat::<f64>::from_fn(small, small, |i, j| 0.5 * (g32[(i, j)] as f64 + g32[(j, i)] as f64));
    let vecs: Mat<f64> = match g.self_adjoint_eigen(Side::Lower) {
        Ok(evd) => {
            let s = evd.S().column_vector();
            let mut order: Vec<usize> = (0..small).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            Mat::from_fn(small, r, |i, k| evd.U()[(i, order[k])])
        }
        // An eigensolver failure leaves no correction rather than a wrong one.
        Err(_) => Mat::zeros(small, r),
    };
    let vf = Mat::<f32>::from_fn(small, r, |i, k| vecs[(i, k)] as f32);
    // a: rows × r, bw: r × cols (f64).
    let (mut a, bw): (Mat<f64>, Mat<f64>) = if rows <= cols {
        let mut bw = Mat::<f32>::zeros(r, cols);
        matmul(bw.as_mut(), Accum::Replace, vf.transpose(), m.as_ref(), 1.0f32, par);
        (vecs.clone(), Mat::from_fn(r, cols, |k, j| bw[(k, j)] as f64))
    } else {
        let mut a = Mat::<f32>::zeros(rows, r);
        matmul(a.as_mut(), Accum::Replace, m.as_ref(), vf.as_ref(), 1.0f32, par);
        (Mat::from_fn(rows, r, |i, k| a[(i, k)] as f64), vecs.transpose().to_owned())
    };
    // B = Bw·L⁻¹: Lᵀ·Bᵀ = Bwᵀ.
    let mut bt = bw.transpose().to_owned();
    if let Some(w) = w {
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(w.l.transpose(), bt.as_mut(), par);
    }
    let mut b = bt.transpose().to_owned();
    // Balance each component's two halves (same norm), which suits both storages.
    for k in 0..r {
        let na = a.col(k).norm_l2();
        let nb = b.row(k).norm_l2();
        if na > 0.0 && nb > 0.0 && na.is_finite() && nb.is_finite() {
            let s = (na / nb).sqrt();
            for i in 0..rows {
                a[(i, k)] /= s;
            }
            for j in 0..cols {
                b[(k, j)] *= s;
            }
        }
    }
    let b_stored = store(&Mat::from_fn(r, cols, |k, j| b[(k, j)]), int8);
    let bq = b_stored.values();
    // Refit A to the stored B: A = E·H·B̂ᵀ (B̂·H·B̂ᵀ)⁻¹ (H = I unwhitened).
    let bq64 = Mat::<f64>::from_fn(r, cols, |k, j| bq[k * cols + j] as f64);
    let t: Mat<f64> = match w {
        Some(w) => {
            let mut t = Mat::<f64>::zeros(cols, r);
            matmul(t.as_mut(), Accum::Replace, w.h.as_ref(), bq64.transpose(), 1.0, par);
            t
        }
        None => bq64.transpose().to_owned(),
    };
    let mut c = Mat::<f64>::zeros(r, r);
    matmul(c.as_mut(), Accum::Replace, bq64.as_ref(), t.as_ref(), 1.0, par);
    let tf = Mat::<f32>::from_fn(cols, r, |j, k| t[(j, k)] as f32);
    let mut p = Mat::<f32>::zeros(rows, r);
    matmul(p.as_mut(), Accum::Replace, em, tf.as_ref(), 1.0f32, par);
    let trace = (0..r).map(|k| c[(k, k)]).sum::<f64>();
    let refit = if trace > 0.0 && trace.is_finite() {
        for k in 0..r {
            c[(k, k)] += 1e-9 * trace / r as f64;
        }
        c.llt(Side::Lower).ok().map(|llt| {
            let rhs = Mat::<f64>::from_fn(r, rows, |k, i| p[(i, k)] as f64);
            llt.solve(rhs) // [r, rows] = (A)ᵀ
        })
    } else {
        None
    };
    let at = match refit {
        Some(at) if at.col_iter().all(|c| c.iter().all(|v| v.is_finite())) => at,
        _ => a.transpose().to_owned(),
    };
    (store(&at, int8), b_stored)
}

/// Rounds a `[n, len]` factor to its storage.
fn store(m: &Mat<f64>, int8: bool) -> Factor {
    let (n, len) = (m.nrows(), m.ncols());
    if !int8 {
        let v = (0..n)
            .flat_map(|k| (0..len).map(move |j| (k, j)))
            .map(|(k, j)| half::f16::from_f64(m[(k, j)].clamp(-65504.0, 65504.0)).to_bits())
            .collect();
        return Factor::F16(v);
    }
    let mut codes = Vec::with_capacity(n * len);
    let mut scales = Vec::with_capacity(n);
    for k in 0..n {
        let amax = (0..len).map(|j| m[(k, j)].abs()).fold(0f64, f64::max);
        let s = half::f16::from_f64((amax / 127.0).min(65504.0));
        let sf = s.to_f64();
        scales.push(s.to_bits());
        for j in 0..len {
            let q = if sf > 0.0 { (m[(k, j)] / sf).round().clamp(-127.0, 127.0) } else { 0.0 };
            codes.push(q as i8);
        }
    }
    Factor::Int8 { codes, scales }
}

#[cfg(test)]
mod tests_support {
    use crate::calib::Hessian;
    pub fn layer(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    pub fn hessian(cols: usize, n: usize, seed: u64) -> Hessian {
        // Inputs with a few loud channels, as real activations have.
        let x = layer(n, cols, seed);
        let mut h = Hessian::new(cols);
        let x: Vec<f32> = x.iter().enumerate().map(|(i, v)| if i % cols < 3 { v * 20.0 } else { *v }).collect();
        h.add(&x, n);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{hessian, layer};
    use super::*;

    fn out_err(w: &[f32], q: &[f32], h: &crate::calib::Hessian, cols: usize) -> f64 {
        super::super::layer_error(w, q, w.len() / cols, cols, Some(h)).output_err.unwrap()
    }

    #[test]
    fn exact_low_rank_matrix_is_recovered() {
        // E of rank 2 is fitted (almost) exactly by rank 2, whitened or not.
        let (rows, cols) = (24, 40);
        let u = layer(rows, 2, 1);
        let v = layer(2, cols, 2);
        let mut e = vec![0f32; rows * cols];
        let ut: Vec<f32> = (0..2).flat_map(|k| (0..rows).map(move |i| (k, i))).map(|(k, i)| u[i * 2 + k]).collect();
        add_low_rank(&mut e, rows, cols, 2, &ut, &v);
        let h = hessian(cols, 200, 3);
        let wh = damped("t", &h.mean(), cols, 0.01).unwrap();
        for w in [None, Some(&wh)] {
            let (at, b) = fit(&e, rows, cols, 2, w, false);
            let mut got = vec![0f32; rows * cols];
            add_low_rank(&mut got, rows, cols, 2, &at.values(), &b.values());
            let err: f32 = e.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let amax = e.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err < 2e-3 * amax, "max error {err} of {amax}");
        }
    }

    #[test]
    fn correction_lowers_output_error_and_whitening_helps() {
        let (rows, cols) = (64, 96);
        let w = layer(rows, cols, 7);
        let h = hessian(cols, 400, 8);
        let target = formats::format::Format::parse("int3:g32").unwrap();
        let p = LayerProblem { name: "t", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let gptq = super::super::gptq::Gptq::default();
        let base = gptq.solve(&p, &target).unwrap();
        let e0 = out_err(&w, &base.dequant, &h, cols);
        let mut last = e0;
        for rank in [4, 16] {
            let opts = LowRankOptions { rank, ..Default::default() };
            let enc = solve(&p, &target, &gptq, &opts).unwrap();
            let e = out_err(&w, &enc.dequant, &h, cols);
            assert!(e < last, "rank {rank}: {e} not below {last}");
            last = e;
            let plain = solve(&p, &target, &gptq, &LowRankOptions { whiten: Some(false), ..opts.clone() }).unwrap();
            assert!(e < out_err(&w, &plain.dequant, &h, cols), "whitening should lower the output error");
            let int8 = solve(&p, &target, &gptq, &LowRankOptions { int8: true, ..opts.clone() }).unwrap();
            let e8 = out_err(&w, &int8.dequant, &h, cols);
            assert!(e8 < e0 && e8 < 1.1 * e, "int8 factors: {e8} vs f16 {e} vs none {e0}");
            let absorb = solve(&p, &target, &gptq, &LowRankOptions { order: Order::Absorb, ..opts.clone() }).unwrap();
            assert!(out_err(&w, &absorb.dequant, &h, cols) < e0);
            // What the solver computes with is what a reader of the stored data gets.
            for enc in [&enc, &int8, &absorb] {
                let qt = crate::export::QuantTensor {
                    name: "t".into(),
                    shape: vec![rows, cols],
                    storage: crate::export::Storage::Format(Box::new(target.clone())),
                    data: enc.data.clone(),
                };
                assert_eq!(qt.dequantize().unwrap(), enc.dequant);
                let bytes = qt.stored_bytes();
                let dense = target.storage_bits(rows, cols).unwrap().div_ceil(8) as usize;
                assert_eq!(bytes, dense + opts_of(enc).factor_bytes(rows, cols));
            }
        }
    }

    fn opts_of(e: &Encoded) -> LowRankOptions {
        match &e.data {
            TensorData::LowRank { rank, at, .. } => {
                LowRankOptions { rank: *rank, int8: matches!(at, Factor::Int8 { .. }), ..Default::default() }
            }
            _ => panic!("no low-rank data"),
        }
    }

    #[test]
    fn stored_term_spills_and_reorders_with_its_rows() {
        // GPTQ with kept weights inside a low-rank term, int8 factors: the checkpoint spill
        // reads back the same, and reordering rows reorders the values.
        let (rows, cols) = (16, 64);
        let w = layer(rows, cols, 11);
        let h = hessian(cols, 300, 12);
        let target = formats::format::Format::parse("int3:g32").unwrap();
        let p = LayerProblem { name: "t", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let inner =
            super::super::gptq::Gptq { opts: super::super::gptq::GptqOptions { outliers: 0.02, ..Default::default() } };
        let opts = LowRankOptions { rank: 3, int8: true, ..Default::default() };
        let enc = solve(&p, &target, &inner, &opts).unwrap();
        let storage = crate::export::Storage::Format(Box::new(target.clone()));
        let qt = crate::export::QuantTensor {
            name: "t".into(),
            shape: vec![rows, cols],
            storage: storage.clone(),
            data: enc.data,
        };
        assert_eq!(qt.kept_weights(), 20);
        assert_eq!(qt.low_rank().map(|l| l.0), Some(3));
        let mut buf = Vec::new();
        qt.write_spill(&mut buf);
        let back = crate::export::QuantTensor::read_spill(&buf, &mut 0, &|_| Some(storage.clone())).unwrap().unwrap();
        assert_eq!(back, qt);
        let perm: Vec<usize> = (0..rows).rev().collect();
        let mut moved = qt.clone();
        moved.permute_rows(&perm).unwrap();
        let (a, b) = (qt.dequantize().unwrap(), moved.dequantize().unwrap());
        for (new, &old) in perm.iter().enumerate() {
            assert_eq!(&b[new * cols..(new + 1) * cols], &a[old * cols..(old + 1) * cols]);
        }
        // A spill cut short is an error, not a panic.
        for cut in [1, buf.len() / 2, buf.len() - 1] {
            assert!(crate::export::QuantTensor::read_spill(&buf[..cut], &mut 0, &|_| Some(storage.clone())).is_err());
        }
    }

    #[test]
    fn absorbing_a_low_rank_spike_first_beats_fitting_it_after() {
        // Weights with a strong rank-1 component (as smoothing leaves them): the groups' ranges
        // are set by the spike, so quantizing the residual (SVDQuant's order) is far finer.
        let (rows, cols) = (64, 128);
        let mut w = layer(rows, cols, 21);
        let u = layer(rows, 1, 22);
        let v = layer(1, cols, 23);
        for i in 0..rows {
            for j in 0..cols {
                w[i * cols + j] += 40.0 * u[i] * v[j];
            }
        }
        let h = hessian(cols, 500, 24);
        let target = formats::format::Format::parse("int3:g32").unwrap();
        let p = LayerProblem { name: "t", w: &w, rows, cols, hessian: Some(&h), importance: None };
        let gptq = super::super::gptq::Gptq::default();
        let e0 = out_err(&w, &gptq.solve(&p, &target).unwrap().dequant, &h, cols);
        let mut errs = Vec::new();
        for whiten in [false, true] {
            for order in [Order::Residual, Order::Absorb] {
                let o = LowRankOptions { rank: 2, whiten: Some(whiten), order, ..Default::default() };
                errs.push(out_err(&w, &solve(&p, &target, &gptq, &o).unwrap().dequant, &h, cols));
            }
        }
        eprintln!("gptq {e0}, (plain, whitened) × (residual, absorb): {errs:?}");
        assert!(errs[1] < 0.5 * errs[0] && errs[1] < 0.5 * e0, "{errs:?} vs {e0}");
        // The default for absorb is the plain split.
        let default = LowRankOptions { rank: 2, order: Order::Absorb, ..Default::default() };
        assert!(!default.whitened());
        assert_eq!(out_err(&w, &solve(&p, &target, &gptq, &default).unwrap().dequant, &h, cols), errs[1]);
    }

    #[test]
    fn rank_must_be_below_the_smaller_side() {
        let w = layer(8, 16, 1);
        let p = LayerProblem { name: "blk.0.attn_q.weight", w: &w, rows: 8, cols: 16, hessian: None, importance: None };
        let t = formats::format::Format::parse("int4").unwrap();
        let e = solve(
            &p,
            &t,
            &super::super::rtn::Rtn,
            &LowRankOptions { rank: 8, whiten: Some(false), ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("from 1 to 7"), "{e}");
    }
}
