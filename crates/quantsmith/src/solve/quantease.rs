//! QuantEase (Behdin et al., 2023): cyclic coordinate descent on GPTQ's layer objective
//! tr((W − Q) H (W − Q)ᵀ), each weight moved to the grid point that minimises the objective
//! with every other weight fixed, warm-started from GPTQ's solution on GPTQ's fixed grid.
//!
//! Rows are independent, so a coordinate step updates one column for every row at once. With
//! E = W − Q and G = E·H, the objective along coordinate (r, j) is H_jj·(q − q*)² + const with
//! q* = q_rj + G_rj / H_jj, so the nearest grid point to q* is the exact minimiser: no step
//! raises the objective. A step changes column j of E by Δ and G by Δ·H[j, :]. As in GPTQ's
//! lazy batches, that update is applied at once only to the columns of the current block of
//! 128; the rest of G is brought up to date by one GEMM per block (ΔE_block · H[block, rest]).
//! One sweep costs about one rows × cols × cols GEMM. H is damped as GPTQ damps it, so the
//! objective both solvers minimise is the same.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::gptq::{checked_hessian, solve_on_grid, GptqOptions};
use super::target::{Encoded, Target};
use super::{LayerProblem, Solver};
use crate::Result;

/// QuantEase settings.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantEaseOptions {
    /// Sweeps over every column after the GPTQ start.
    pub sweeps: usize,
    /// The GPTQ start (its damping is the objective's too).
    pub gptq: GptqOptions,
}

impl Default for QuantEaseOptions {
    fn default() -> Self {
        QuantEaseOptions { sweeps: 8, gptq: GptqOptions::default() }
    }
}

/// The QuantEase solver.
#[derive(Clone, Debug, Default)]
pub struct QuantEase {
    /// Its settings.
    pub opts: QuantEaseOptions,
}

impl Solver for QuantEase {
    fn name(&self) -> &'static str {
        "quantease"
    }
    fn spec(&self) -> String {
        let sweeps = if self.opts.sweeps != QuantEaseOptions::default().sweeps {
            format!(":sweeps={}", self.opts.sweeps)
        } else {
            String::new()
        };
        format!("quantease{sweeps}{}", self.opts.gptq.spec_suffix())
    }
    fn side_data(&self) -> Option<String> {
        self.opts.gptq.side_data()
    }
    fn needs_hessian(&self) -> bool {
        true
    }
    fn asymmetric(&self) -> bool {
        self.opts.gptq.asym
    }
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded> {
        solve(p, target, &self.opts)
    }
}

/// Quantizes `p.w` into `target`: GPTQ, then `opts.sweeps` sweeps of coordinate descent.
pub fn solve(p: &LayerProblem, target: &Target, opts: &QuantEaseOptions) -> Result<Encoded> {
    let h = checked_hessian(p, "QuantEase")?;
    let mut s = solve_on_grid(p, target, &opts.gptq)?;
    let cols = p.cols;
    let mut keep = vec![false; if s.kept.is_empty() { 0 } else { p.rows * cols }];
    for &i in &s.kept {
        keep[i as usize] = true;
    }
    // Kept weights are coordinates too, on f16's grid.
    let g = &s.grid;
    let round = |r: usize, c: usize, x: f32| {
        if !keep.is_empty() && keep[r * cols + c] {
            half::f16::from_f32(x).to_f32()
        } else {
            g.round(r, c, x)
        }
    };
    let q = refine(p.w, std::mem::take(&mut s.q), &h.mean(), p.rows, cols, opts.gptq.damp, opts.sweeps, &round);
    s.q = q;
    s.encode()
}

/// `sweeps` sweeps of cyclic coordinate descent from `q` (`[rows, cols]`, on the grid
/// `round`) on tr((W − Q) Hd (W − Q)ᵀ), Hd = `h` (`cols × cols`) damped by `damp` times its
/// mean diagonal. Returns the refined weights.
#[allow(clippy::too_many_arguments)]
pub fn refine(
    w: &[f32],
    q: Vec<f32>,
    h: &[f64],
    rows: usize,
    cols: usize,
    damp: f64,
    sweeps: usize,
    round: &(dyn Fn(usize, usize, f32) -> f32 + Sync),
) -> Vec<f32> {
    if sweeps == 0 || rows == 0 || cols == 0 {
        return q;
    }
    let mean_diag = (0..cols).map(|i| h[i * cols + i].max(0.0)).sum::<f64>() / cols as f64;
    let lambda = damp * if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let hd: Vec<f32> = (0..cols * cols)
        .map(|k| {
            let (i, j) = (k / cols, k % cols);
            (if i == j { h[k].max(0.0) + lambda } else { h[k] }) as f32
        })
        .collect();
    // Transposed layouts: column j of E, Q and G is contiguous over rows.
    let mut qt = vec![0f32; cols * rows];
    let mut et = vec![0f32; cols * rows];
    for r in 0..rows {
        for c in 0..cols {
            qt[c * rows + r] = q[r * cols + c];
            et[c * rows + r] = w[r * cols + c] - q[r * cols + c];
        }
    }
    // Gᵀ = Hd · Eᵀ (Hd symmetric).
    let mut gt = vec![0f32; cols * rows];
    matmul(
        MatMut::from_row_major_slice_mut(&mut gt, cols, rows),
        Accum::Replace,
        MatRef::from_row_major_slice(&hd, cols, cols),
        MatRef::from_row_major_slice(&et, cols, rows),
        1.0f32,
        Par::rayon(0),
    );
    let bs = 128.min(cols);
    let mut delta = vec![0f32; bs * rows];
    for _ in 0..sweeps {
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + bs).min(cols);
            let nb = i2 - i1;
            delta[..nb * rows].iter_mut().for_each(|d| *d = 0.0);
            for j in i1..i2 {
                let hjj = hd[j * cols + j];
                let dj = &mut delta[(j - i1) * rows..(j - i1 + 1) * rows];
                {
                    let gcol = &gt[j * rows..(j + 1) * rows];
                    let qcol = &mut qt[j * rows..(j + 1) * rows];
                    qcol.par_iter_mut().zip(dj.par_iter_mut()).zip(gcol.par_iter()).enumerate().for_each(
                        |(r, ((q, d), &g))| {
                            let target = *q + g / hjj;
                            let nq = round(r, j, target);
                            // E = W − Q: the error moves by the opposite of the weight.
                            *d = *q - nq;
                            *q = nq;
                        },
                    );
                }
                let dj = &delta[(j - i1) * rows..(j - i1 + 1) * rows];
                if dj.iter().all(|&d| d == 0.0) {
                    continue;
                }
                // Columns of this block: updated now (the later ones are visited next).
                let hrow = &hd[j * cols..(j + 1) * cols];
                gt[i1 * rows..i2 * rows].par_chunks_mut(rows).enumerate().for_each(|(kk, gcol)| {
                    let hjk = hrow[i1 + kk];
                    if hjk != 0.0 {
                        for (g, &d) in gcol.iter_mut().zip(dj) {
                            *g += d * hjk;
                        }
                    }
                });
            }
            // Every other column: Gᵀ[k] += Σ_{j in block} Hd[j, k] Δ_j, one GEMM per side.
            let dmat = MatRef::from_row_major_slice(&delta[..nb * rows], nb, rows);
            let hblock = MatRef::from_row_major_slice(&hd[i1 * cols..i2 * cols], nb, cols);
            if i1 > 0 {
                matmul(
                    MatMut::from_row_major_slice_mut(&mut gt[..i1 * rows], i1, rows),
                    Accum::Add,
                    hblock.submatrix(0, 0, nb, i1).transpose(),
                    dmat,
                    1.0f32,
                    Par::rayon(0),
                );
            }
            if i2 < cols {
                matmul(
                    MatMut::from_row_major_slice_mut(&mut gt[i2 * rows..], cols - i2, rows),
                    Accum::Add,
                    hblock.submatrix(0, i2, nb, cols - i2).transpose(),
                    dmat,
                    1.0f32,
                    Par::rayon(0),
                );
            }
            i1 = i2;
        }
    }
    let mut out = vec![0f32; rows * cols];
    for c in 0..cols {
        for r in 0..rows {
            out[r * cols + c] = qt[c * rows + r];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::Hessian;
    use crate::solve::{gptq, layer_error, quad_form};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn problem(rows: usize, cols: usize) -> (Vec<f32>, Hessian) {
        let n = 4 * cols;
        let mut s = 11u64;
        let basis: Vec<f32> = (0..6 * cols).map(|_| lcg(&mut s)).collect();
        let mut x = vec![0f32; n * cols];
        for t in 0..n {
            let coef: Vec<f32> = (0..6).map(|_| lcg(&mut s)).collect();
            for c in 0..cols {
                let mut v = 0.2 * lcg(&mut s);
                for (k, co) in coef.iter().enumerate() {
                    v += co * basis[k * cols + c];
                }
                x[t * cols + c] = v * if c % 13 == 0 { 3.0 } else { 1.0 };
            }
        }
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s) * 0.05).collect();
        (w, h)
    }

    /// The damped objective both solvers minimise.
    fn objective(w: &[f32], q: &[f32], h: &Hessian, cols: usize, damp: f64) -> f64 {
        let hm = h.mean();
        let md = (0..cols).map(|i| hm[i * cols + i]).sum::<f64>() / cols as f64;
        let hd: Vec<f32> =
            (0..cols * cols).map(|k| (hm[k] + if k / cols == k % cols { damp * md } else { 0.0 }) as f32).collect();
        let d: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
        quad_form(&d, &hd, cols)
    }

    /// Coordinate descent never raises GPTQ's objective, and lowers it, in integer groups,
    /// per-channel and ggml block formats; its values stay on the grid (they encode).
    #[test]
    fn sweeps_lower_the_gptq_objective() {
        for (spec, rows, cols) in [("int3:g32", 40, 192), ("int4", 24, 160), ("q4_k", 8, 256), ("q3_k", 8, 256)] {
            let (w, h) = problem(rows, cols);
            let t = formats::format::Format::parse(spec).unwrap();
            let p = LayerProblem { name: "w", w: &w, rows, cols, hessian: Some(&h), importance: None };
            let g = gptq::solve(&p, &t, &GptqOptions::default()).unwrap();
            let mut last = objective(&w, &g.dequant, &h, cols, 0.01);
            let first = last;
            for sweeps in [1, 2, 6] {
                let o = QuantEaseOptions { sweeps, ..Default::default() };
                let e = solve(&p, &t, &o).unwrap();
                let f = objective(&w, &e.dequant, &h, cols, 0.01);
                assert!(f <= last * (1.0 + 1e-5), "{spec}: {sweeps} sweeps gave {f}, more than {last}");
                last = f;
            }
            eprintln!("{spec}: GPTQ {first:.4e} -> QuantEase {last:.4e} ({:.1} % lower)", 100.0 * (1.0 - last / first));
            assert!(last < 0.999 * first, "{spec}: QuantEase {last} vs GPTQ {first}");
            // The output error report agrees (undamped).
            let e = solve(&p, &t, &QuantEaseOptions::default()).unwrap();
            let eq = layer_error(&w, &e.dequant, rows, cols, Some(&h)).output_err.unwrap();
            let eg = layer_error(&w, &g.dequant, rows, cols, Some(&h)).output_err.unwrap();
            assert!(eq < eg, "{spec}: {eq} vs {eg}");
        }
    }

    /// A diagonal Hessian makes the objective separable: coordinate descent then lands on
    /// round-to-nearest of the grid, whatever the start.
    #[test]
    fn a_diagonal_hessian_gives_nearest_rounding() {
        let (rows, cols) = (3, 8);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut h = vec![0f64; cols * cols];
        for i in 0..cols {
            h[i * cols + i] = 1.0 + i as f64;
        }
        let round = |_: usize, _: usize, x: f32| (x * 4.0).round() / 4.0;
        let q = refine(&w, vec![0.0; rows * cols], &h, rows, cols, 0.0, 1, &round);
        for (a, b) in w.iter().zip(&q) {
            assert_eq!(*b, round(0, 0, *a));
        }
    }
}
