//! Nested precision (Matryoshka quantization, MatGPTQ; Double Rounding's idea of one code set
//! for several bit widths): one B-bit asymmetric integer code set whose top b bits are
//! themselves a b-bit model, for every b of a decreasing list (`8,4,2`).
//!
//! **Slicing.** A B-bit code `u` (0 ≤ u < 2^B, value `s·(u − z)`) read at b bits keeps its top
//! b bits, `k = u >> (B − b)`, and stands for the middle of the 2^(B−b) codes sharing them:
//! `s·(k·2^(B−b) + (2^(B−b) − 1)/2 − z)`. The slice is an ordinary b-bit asymmetric integer
//! grid (step `s·2^(B−b)`, zero point `(z − (2^(B−b) − 1)/2) / 2^(B−b)`), spread evenly over
//! the group's range with half a step of margin at each end — the uniform quantizer of that
//! range — so no re-rounding is needed and a runtime reading the top bits computes exactly
//! what [`slice_value`] computes.
//!
//! **Solving.** Every precision of the list is a model of its own, with its own layer
//! objective ‖(W − Q_b) X‖². Without error compensation (nested RTN) the nearest code is
//! nearest at every width at once ([`Nesting::code`] says why). GPTQ compensates in one of two
//! ways:
//! - *cascade* (the default): one running copy of the weights per precision, each
//!   compensating its own precision's error; a weight's code is chosen coarsest width first —
//!   the b_min-bit bucket nearest that precision's running value, then within it the bucket
//!   nearest the next precision's running value, down to the stored code. The coarsest slice
//!   is exactly a GPTQ solution on its own grid, and every finer one a GPTQ solution
//!   constrained to the buckets above it (the solver keeps one weight copy per width).
//! - *joint* (`nested-mode=joint`): one running copy compensating the λ-weighted mean of the
//!   precisions' errors — the gradient of Σ_b λ_b ‖(W − Q_b) X‖² with respect to the columns
//!   not yet quantized — with each code the nearest.
//!
//! On SmolLM2 (g64, 32 × 512 calibration tokens) cascade's `8,4` file has mean KLD 0.012 at
//! 8 bits and 0.076 at 4 (dedicated int4 GPTQ: 0.096), joint's 0.050 / 0.104 with equal
//! weights; for `8,4,2` cascade gives the only usable 2-bit slice (1.56 against dedicated
//! int2 GPTQ's 3.24) at the cost of its wider widths (0.13 / 0.27).
//! Each group's scale and zero point come from a search over shrinking ranges for the least
//! summed error Σ_b λ_b (importance-weighted), since a range fitted to the 8-bit grid alone
//! leaves the 2-bit slice's levels too far out; λ: [`Nesting::default_weights`], or as given.

use formats::format::{Granularity, GroupParams};
use formats::int::IntKind;
use formats::Element;
use rayon::prelude::*;

use super::target::{format_grid, Encoded, FormatGrid, Grid, Target};
use super::{LayerProblem, Solver};
use crate::{Error, Result};

/// Shrink factors of a group's range the parameter search tries: 1.00, 0.96, ..., 0.52.
const SHRINKS: usize = 13;

/// The precisions one code set serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Nesting {
    /// Bit widths, strictly decreasing; the first is the stored codes' width.
    pub bits: Vec<u32>,
    /// Weight of each precision in the objective (same length as `bits`, positive).
    pub weights: Vec<f32>,
    /// How GPTQ compensates: `true` (cascade, the default), one running copy of the weights
    /// per precision, each compensating its own error, the code chosen coarsest first, each
    /// finer precision nearest its own copy within the bucket the coarser ones chose; `false`
    /// (joint), one running copy compensating the λ-weighted mean of the precisions' errors.
    pub cascade: bool,
}

impl Nesting {
    /// Parses `8/4/2` (or `8,4,2`), with the default weights, or `8/4/2@16/4/1` (weights
    /// after `@`, as [`Nesting::spec`] writes them).
    pub fn parse(s: &str) -> std::result::Result<Nesting, String> {
        let (b, w) = match s.split_once('@') {
            Some((b, w)) => (b, Some(w)),
            None => (s, None),
        };
        let bits: Vec<u32> = b
            .split(['/', ','])
            .map(|b| b.trim().parse::<u32>().map_err(|_| format!("`{b}` is not a bit width")))
            .collect::<std::result::Result<_, _>>()?;
        let weights = match w {
            Some(w) => Some(Self::parse_weights(w)?),
            None => None,
        };
        Nesting::new(bits, weights)
    }

    /// Parses a weight list, `16/4/1` (or `16,4,1`).
    pub fn parse_weights(s: &str) -> std::result::Result<Vec<f32>, String> {
        s.split(['/', ','])
            .map(|w| w.trim().parse::<f32>().ok().filter(|w| w.is_finite() && *w > 0.0))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| format!("weights `{s}`: positive numbers, one per bit width (16/4/1)"))
    }

    /// The solver settings naming this nesting: `:nested=8/4/2`, with
    /// `:nested-weights=16/4/1` when the weights are not the default.
    pub fn settings(&self) -> String {
        let mode = if self.cascade { "" } else { ":nested-mode=joint" };
        match self.spec().split_once('@') {
            Some((b, w)) => format!(":nested={b}:nested-weights={w}{mode}"),
            None => format!(":nested={}{mode}", self.spec()),
        }
    }

    /// Checks a list of precisions and their weights ([`Nesting::default_weights`] when `None`).
    pub fn new(bits: Vec<u32>, weights: Option<Vec<f32>>) -> std::result::Result<Nesting, String> {
        let list = bits.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        if bits.len() < 2 {
            return Err(format!("nested precision {list}: give at least two bit widths, largest first (8,4,2)"));
        }
        if !(2..=8).contains(&bits[0]) {
            return Err(format!("nested precision {list}: the stored codes have 2 to 8 bits, not {}", bits[0]));
        }
        if let Some(w) = bits.windows(2).find(|w| w[1] >= w[0]) {
            return Err(format!(
                "nested precision {list}: the list must be strictly decreasing ({} then {})",
                w[0], w[1]
            ));
        }
        if bits.last() == Some(&0) {
            return Err(format!("nested precision {list}: a slice needs at least 1 bit"));
        }
        let weights = weights.unwrap_or_else(|| Self::default_weights(&bits));
        if weights.len() != bits.len() || weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(format!("nested precision {list}: one positive weight per bit width"));
        }
        Ok(Nesting { bits, weights, cascade: true })
    }

    /// The default weight of each width: λ_b = 2^((b − b_min)/2), `8/4/2` → 8/2/1, `8/4` → 4/1.
    /// Equal weights let the narrowest width's error, thousands of times the widest's, decide
    /// everything: on SmolLM2 (`8,4,2`, joint GPTQ) they leave the 8-bit model worse than its
    /// own 4-bit slice (mean KLD 0.41 vs 0.37), while weights growing as fast as each width's
    /// own error shrinks (λ_b = 4^b) fit the ranges to the widest width alone. The square
    /// root of the step ratio is a middle; `@W/W/W` sets any other balance.
    pub fn default_weights(bits: &[u32]) -> Vec<f32> {
        let low = *bits.last().unwrap_or(&0) as f32;
        bits.iter().map(|&b| ((b as f32 - low) * 0.5).exp2()).collect()
    }

    /// `8/4/2` (and `@1/1/4` when the weights are not the default).
    pub fn spec(&self) -> String {
        let b = self.bits.iter().map(u32::to_string).collect::<Vec<_>>().join("/");
        if self.weights == Self::default_weights(&self.bits) {
            b
        } else {
            format!("{b}@{}", self.weights.iter().map(f32::to_string).collect::<Vec<_>>().join("/"))
        }
    }

    /// Whether `t` is a format this nesting can solve into: asymmetric integers of the first
    /// width, per channel or per group, with float scales; the error says what would be.
    pub fn check_format(&self, t: &Target) -> std::result::Result<(), String> {
        let want = format!("int{}:gN:asym or int{}:ch:asym", self.bits[0], self.bits[0]);
        if let Some(g) = t.ggml {
            return Err(format!(
                "nested precision stores {}-bit integer codes, not {} blocks (use {want})",
                self.bits[0],
                g.name()
            ));
        }
        let ok_elem = matches!(t.elements.as_slice(), [Element::Int(g)] if g.kind() == IntKind::Unsigned && g.bits() == self.bits[0]);
        if !ok_elem || !t.asym {
            return Err(format!(
                "nested precision {} slices the top bits of {}-bit asymmetric integer codes; {} is not such a format (use {want})",
                self.spec(),
                self.bits[0],
                t.spec()
            ));
        }
        if !matches!(t.granularity, Granularity::Channel | Granularity::Group(_)) {
            return Err(format!(
                "nested precision needs a scale per channel or per group, not {} (use {want})",
                t.spec()
            ));
        }
        if !matches!(
            t.scale,
            formats::scale::ScaleStorage::F32 | formats::scale::ScaleStorage::F16 | formats::scale::ScaleStorage::Bf16
        ) {
            return Err(format!("nested precision needs float scales (f32, f16, bf16), not {}", t.scale.spec_name()));
        }
        Ok(())
    }

    /// The code (0 ≤ u < 2^B) at continuous code position `t = x/s + z` minimising the
    /// weighted squared error of all precisions (in code units): the nearest code. A b-bit
    /// bucket of width W = 2^(B−b) reconstructs at its middle, so the positions nearer its
    /// value than its neighbours' are [kW − ½, kW + W − ½] — exactly those that round into
    /// the bucket. The nearest code therefore lies in the nearest bucket of every width at once,
    /// and minimises every term of the sum whatever the weights (checked against exhaustive
    /// search in the tests).
    #[inline]
    pub fn code(&self, t: f32) -> u16 {
        let qmax = ((1u32 << self.bits[0]) - 1) as f32;
        t.clamp(0.0, qmax).round_ties_even() as u16
    }

    /// The code's value at `bits` of precision, in code units (`u` itself at the top width).
    #[inline]
    pub fn slice_position(top: u32, bits: u32, u: u16) -> f32 {
        let sh = top - bits;
        ((u as u32 >> sh) << sh) as f32 + ((1u32 << sh) as f32 - 1.0) * 0.5
    }

    /// The λ-weighted mean of the code's positions over the precisions.
    #[inline]
    fn mean_position(&self, u: u16) -> f32 {
        let top = self.bits[0];
        let (mut num, mut den) = (0f32, 0f32);
        for (&b, &w) in self.bits.iter().zip(&self.weights) {
            num += w * Self::slice_position(top, b, u);
            den += w;
        }
        num / den
    }

    /// Weighted error of one group under parameters (`s`, `z`): Σ_i imp_i Σ_b λ_b (w_i − v_b)².
    fn group_error(&self, w: &[f32], imp: Option<&[f32]>, s: f32, z: f32) -> f64 {
        let top = self.bits[0];
        let inv = 1.0 / s;
        let mut total = 0f64;
        for (i, &x) in w.iter().enumerate() {
            let u = self.code(x * inv + z);
            let mut e = 0f32;
            for (&b, &lam) in self.bits.iter().zip(&self.weights) {
                let d = x - s * (Self::slice_position(top, b, u) - z);
                e += lam * d * d;
            }
            total += e as f64 * imp.map_or(1.0, |m| m[i] as f64);
        }
        total
    }

    /// Scale and zero point of one group: the range [min, max] shrunk by the factor of least
    /// summed error; scales rounded to their storage (`t.scale`), zero points whole codes.
    fn group_params(&self, t: &Target, w: &[f32], imp: Option<&[f32]>) -> GroupParams {
        let (mn, mx) = formats::format::min_max(w);
        let qmax = ((1u32 << self.bits[0]) - 1) as f32;
        let mut best = GroupParams { scale: 0.0, zero: 0.0, choice: 0 };
        let mut best_err = f64::INFINITY;
        for k in 0..SHRINKS {
            let r = 1.0 - 0.04 * k as f32;
            let (lo, hi) = (mn * r, mx * r);
            let s = t.scale.round((hi - lo) / qmax, 1.0);
            if !(s > 0.0 && s.is_finite()) {
                return GroupParams { scale: 0.0, zero: 0.0, choice: 0 };
            }
            let z = (-lo / s).round_ties_even().clamp(0.0, qmax);
            let e = self.group_error(w, imp, s, z);
            if e < best_err {
                best_err = e;
                best = GroupParams { scale: s, zero: z, choice: 0 };
            }
        }
        best
    }

    /// The nested grid of `t` for `w` (`[rows, cols]`), parameters fitted per group.
    pub fn grid(
        &self,
        t: &Target,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<NestedGrid> {
        self.check_format(t).map_err(|e| Error::Other(format!("tensor `{name}`: {e}")))?;
        let gl = t.group_len(cols).map_err(|e| Error::Other(format!("tensor `{name}`: {e}")))?;
        let groups = cols / gl;
        let params: Vec<GroupParams> = (0..rows)
            .into_par_iter()
            .flat_map_iter(|r| {
                (0..groups).map(move |g| {
                    let seg = &w[r * cols + g * gl..r * cols + (g + 1) * gl];
                    self.group_params(t, seg, importance.map(|im| &im[g * gl..(g + 1) * gl]))
                })
            })
            .collect();
        Ok(NestedGrid { grid: format_grid(t, params, rows, cols, gl), nesting: self.clone() })
    }
}

/// The value of code `u` read at `bits` of a `top`-bit nested code set with scale `s` and
/// zero point `z`.
#[inline]
pub fn slice_value(top: u32, bits: u32, u: u16, s: f32, z: f32) -> f32 {
    s * (Nesting::slice_position(top, bits, u) - z)
}

/// A format's grid whose codes serve every precision of a [`Nesting`].
pub struct NestedGrid {
    grid: FormatGrid,
    nesting: Nesting,
}

impl NestedGrid {
    #[inline]
    fn code_at(&self, row: usize, col: usize, x: f32) -> (u16, GroupParams) {
        let p = *self.grid.params(row, col);
        if p.scale <= 0.0 {
            return (p.zero as u16, p);
        }
        (self.nesting.code(x / p.scale + p.zero), p)
    }
}

impl Grid for NestedGrid {
    fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        let (u, p) = self.code_at(row, col, x);
        p.scale * (u as f32 - p.zero)
    }
    fn round_compensated(&self, row: usize, col: usize, x: f32) -> (f32, f32) {
        let (u, p) = self.code_at(row, col, x);
        (p.scale * (u as f32 - p.zero), p.scale * (self.nesting.mean_position(u) - p.zero))
    }
    fn encode(&self, q: Vec<f32>) -> Result<Encoded> {
        self.grid.encode(q)
    }
    fn streams(&self) -> usize {
        if self.nesting.cascade {
            self.nesting.bits.len()
        } else {
            1
        }
    }
    fn round_streams(&self, row: usize, col: usize, xs: &[f32], seen: &mut [f32]) -> f32 {
        if !self.nesting.cascade {
            let (q, s) = self.round_compensated(row, col, xs[0]);
            seen[0] = s;
            return q;
        }
        let p = *self.grid.params(row, col);
        let top = self.nesting.bits[0];
        if p.scale <= 0.0 {
            seen.fill(0.0);
            return 0.0;
        }
        let inv = 1.0 / p.scale;
        // Coarsest first: each precision picks the bucket nearest its own running value
        // within the bucket chosen above it.
        let (mut lo, mut hi) = (0u32, (1u32 << top) - 1);
        for s in (0..self.nesting.bits.len()).rev() {
            let sh = top - self.nesting.bits[s];
            let width = (1u32 << sh) as f32;
            let half = (width - 1.0) * 0.5;
            let t = xs[s] * inv + p.zero;
            let k = ((t - half) / width).round_ties_even().clamp((lo >> sh) as f32, (hi >> sh) as f32) as u32;
            lo = k << sh;
            hi = lo + (1u32 << sh) - 1;
            seen[s] = p.scale * (k as f32 * width + half - p.zero);
        }
        seen[0]
    }
}

/// Round-to-nearest into a nested code set: every weight's code chosen for all precisions at
/// once, without error compensation (the baseline of nested GPTQ).
#[derive(Clone, Debug)]
pub struct NestedRtn {
    /// The precisions.
    pub nesting: Nesting,
}

impl Solver for NestedRtn {
    fn name(&self) -> &'static str {
        "rtn"
    }
    fn spec(&self) -> String {
        format!("rtn{}", self.nesting.settings())
    }
    fn nesting(&self) -> Option<&Nesting> {
        Some(&self.nesting)
    }
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded> {
        let g = self.nesting.grid(target, p.name, p.w, p.rows, p.cols, p.importance)?;
        let cols = p.cols;
        let q: Vec<f32> = p.w.par_iter().enumerate().map(|(i, &x)| g.round(i / cols, i % cols, x)).collect();
        g.encode(q)
    }
}

/// The b-bit slice of a nested code set `q` (`top`-bit asymmetric codes, scales and zero
/// points per group of `gl` columns), dequantized.
pub fn dequantize_slice(q: &formats::format::Quantized, gl: usize, bits: u32) -> Vec<f32> {
    let top = q.code_bits;
    let groups = q.cols / gl;
    let mut out = vec![0f32; q.rows * q.cols];
    out.par_chunks_mut(q.cols).enumerate().for_each(|(r, row)| {
        let mut codes = vec![0u16; q.cols];
        formats::pack::unpack(&q.codes[r * q.row_bytes..(r + 1) * q.row_bytes], top, &mut codes);
        for (c, (o, &u)) in row.iter_mut().zip(&codes).enumerate() {
            let gi = r * groups + c / gl;
            *o = slice_value(top, bits, u, q.scales[gi], q.zeros[gi]);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::format::Format;

    fn brute(n: &Nesting, t: f32) -> (f32, u16) {
        let top = n.bits[0];
        (0..1u16 << top)
            .map(|u| {
                let c: f32 = n
                    .bits
                    .iter()
                    .zip(&n.weights)
                    .map(|(&b, &w)| {
                        let d = t - Nesting::slice_position(top, b, u);
                        w * d * d
                    })
                    .sum();
                (c, u)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
    }

    /// The nearest code is the exhaustive minimum (or one as good, to rounding) for positions
    /// across and beyond the code range, for several lists and weights.
    #[test]
    fn code_search_matches_exhaustive_search() {
        for (bits, weights) in [
            (vec![8, 4, 2], None),
            (vec![8, 4, 2], Some(vec![1.0, 2.0, 8.0])),
            (vec![8, 6, 4, 3, 2], None),
            (vec![4, 2], None),
            (vec![8, 1], Some(vec![1.0, 0.3])),
            (vec![3, 2, 1], None),
        ] {
            let n = Nesting::new(bits.clone(), weights).unwrap();
            let top = (1u32 << bits[0]) as f32;
            for i in 0..20000 {
                let t = -3.0 + (top + 6.0) * i as f32 / 20000.0;
                let u = n.code(t);
                let c: f32 = n
                    .bits
                    .iter()
                    .zip(&n.weights)
                    .map(|(&b, &w)| {
                        let d = t - Nesting::slice_position(bits[0], b, u);
                        w * d * d
                    })
                    .sum();
                let (cb, ub) = brute(&n, t);
                assert!(c <= cb * (1.0 + 1e-5) + 1e-4, "{bits:?} t={t}: code {u} cost {c}, best {ub} cost {cb}");
            }
        }
    }

    /// A slice is the top bits of the code and their bucket's middle; the 8-bit value is the
    /// code itself; the mean position weighs the slices.
    #[test]
    fn slices_take_the_top_bits() {
        assert_eq!(Nesting::slice_position(8, 8, 201), 201.0);
        // 201 = 0b1100_1001: 4-bit bucket 12 covers 192..207, middle 199.5; 2-bit bucket 3
        // covers 192..255, middle 223.5.
        assert_eq!(Nesting::slice_position(8, 4, 201), 199.5);
        assert_eq!(Nesting::slice_position(8, 2, 201), 223.5);
        let n = Nesting::parse("8,4,2").unwrap();
        assert_eq!(n.weights, [8.0, 2.0, 1.0]);
        assert_eq!(n.mean_position(201), (8.0 * 201.0 + 2.0 * 199.5 + 223.5) / 11.0);
        assert_eq!(slice_value(8, 4, 201, 0.5, 100.0), 0.5 * (199.5 - 100.0));
    }

    /// Cascaded rounding: with every stream at the same value it is the nearest code; with
    /// the streams apart, each coarser stream fixes the bucket the finer ones choose within,
    /// and each stream's seen value is its slice's value of the chosen code.
    #[test]
    fn cascade_rounds_coarsest_first() {
        let mut n = Nesting::parse("8,4,2").unwrap();
        n.cascade = true;
        let t = Format::parse("int8:g64:asym").unwrap();
        let w: Vec<f32> = (0..64).map(|i| i as f32 / 63.0 - 0.3).collect();
        let g = n.grid(&t, "w", &w, 1, 64, None).unwrap();
        assert_eq!(g.streams(), 3);
        let p = *g.grid.params(0, 5);
        let code = |x: f32| n.code(x / p.scale + p.zero);
        let mut seen = [0f32; 3];
        for x in [-0.3, -0.01, 0.2, 0.45, 0.7] {
            let q = g.round_streams(0, 5, &[x, x, x], &mut seen);
            assert_eq!(q, g.round(0, 5, x), "{x}");
        }
        for (x8, x4, x2) in [(0.65, 0.6, -0.2), (-0.3, 0.1, 0.5), (0.2, 0.21, 0.19), (0.7, -0.3, 0.69)] {
            let q = g.round_streams(0, 5, &[x8, x4, x2], &mut seen);
            let u = code(q);
            assert_eq!(u >> 6, code(x2) >> 6, "2-bit bucket from the 2-bit stream");
            let (lo, hi) = ((u >> 6) << 6, ((u >> 6) << 6) + 63);
            let u4 = code(x4).clamp(lo, hi);
            assert_eq!(u >> 4, u4 >> 4, "4-bit bucket nearest the 4-bit stream within it");
            assert_eq!(u, code(x8).clamp((u >> 4) << 4, ((u >> 4) << 4) + 15), "code nearest the 8-bit stream");
            for (s, b) in [8, 4, 2].into_iter().enumerate() {
                assert_eq!(seen[s], slice_value(8, b, u, p.scale, p.zero));
            }
        }
    }

    #[test]
    fn bad_lists_are_refused() {
        for bad in ["8", "8,8", "4,8", "8,4,0", "9,4", "8,x", "1,0", "8,4@1", "8,4@1,0", "8,4@1,x"] {
            assert!(Nesting::parse(bad).is_err(), "{bad}");
        }
        assert!(Nesting::new(vec![8, 4], Some(vec![1.0, -1.0])).is_err());
        assert_eq!(Nesting::parse("8/4/2").unwrap().spec(), "8/4/2");
        let n = Nesting::new(vec![8, 4, 2], Some(vec![1.0, 1.0, 4.0])).unwrap();
        assert_eq!(n.spec(), "8/4/2@1/1/4");
        assert_eq!(Nesting::parse("8,4,2@1,1,4").unwrap(), n);
        assert_eq!(Nesting::parse(&n.spec()).unwrap(), n);
        assert_eq!(n.settings(), ":nested=8/4/2:nested-weights=1/1/4");
        assert_eq!(Nesting::parse("8,4").unwrap().settings(), ":nested=8/4");
        let mut j = Nesting::parse("8,4").unwrap();
        j.cascade = false;
        assert_eq!(j.settings(), ":nested=8/4:nested-mode=joint");
        assert_eq!(Nesting::parse("8,4").unwrap().weights, [4.0, 1.0]);
        assert_eq!(Nesting::parse("8,4@4,1").unwrap().spec(), "8/4");
        let f = |s: &str| Format::parse(s).unwrap();
        let n = Nesting::parse("8,4,2").unwrap();
        assert!(n.check_format(&f("int8:g64:asym")).is_ok());
        assert!(n.check_format(&f("int8:ch:asym")).is_ok());
        for bad in ["int8:g64", "int4:g64:asym", "q8_0", "fp8_e4m3", "int8:t:asym"] {
            assert!(n.check_format(&f(bad)).is_err(), "{bad}");
        }
    }
}
