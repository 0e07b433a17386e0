//! `awq[:grid=N][:format=SPEC]`: AWQ's activation-aware channel scaling. For each group whose input scale
//! can fold (see [`super::smoothquant::foldable`]; linear-fed groups included, attn_output
//! skipped under grouped-query attention as AutoAWQ does), scales
//! `s = mean|X|^r / (mean_rows(|W|/max|W|)^(1−r) + 1e-4)`, normalised to a geometric mean of
//! 1, are tried for `r` in `0, 1/N, …, (N−1)/N`; each is scored by the group's output error
//! after quantizing `W·diag(s)` in the plan's format, `Σ tr(ΔW H ΔWᵀ)` with the group's full
//! input statistics `H` (equal to the squared output error on the calibration tokens, which
//! AutoAWQ measures by running them). The best scale folds in; if none beats no scaling,
//! nothing changes. `format=SPEC` searches against that format instead of the plan's (the
//! linears are then stored as the plan says, e.g. in float, which is how the equivalence of
//! the rewrite itself is tested).

use super::smoothquant::foldable;
use super::{GroupCtx, Transform};
use crate::solve::quad_form;
use crate::{Error, Result};

/// The AWQ transform.
#[derive(Clone, Debug, PartialEq)]
pub struct Awq {
    /// Grid points over the exponent r ∈ [0, 1).
    pub grid: usize,
    /// Format the search quantizes to, instead of the plan's.
    pub format: Option<formats::format::Format>,
}

impl Awq {
    /// Parses `[grid=N]`.
    pub fn parse(args: &str) -> Result<Awq> {
        let mut t = Awq { grid: 20, format: None };
        // `format=` takes the rest: format specs contain colons themselves.
        let (args, fmt) = match args.find("format=") {
            Some(i) => (&args[..i], Some(&args[i..])),
            None => (args, None),
        };
        for p in args.split([':', ',']).filter(|p| !p.is_empty()).chain(fmt) {
            match p.split_once('=') {
                Some(("grid", v)) => {
                    t.grid = v
                        .parse()
                        .ok()
                        .filter(|g| (1..=1000).contains(g))
                        .ok_or_else(|| Error::Other(format!("awq: grid `{v}` must be from 1 to 1000")))?
                }
                Some(("format", v)) => {
                    t.format = Some(
                        formats::format::Format::parse(v)
                            .map_err(|e| Error::Other(format!("awq: format `{v}`: {e}")))?,
                    )
                }
                _ => return Err(Error::Other(format!("awq: cannot read `{p}` (grid=N, format=SPEC)"))),
            }
        }
        Ok(t)
    }
}

/// Σ over the group's linears of tr(ΔW H ΔWᵀ) after quantizing W·diag(s) and undoing s.
fn scaled_error(ctx: &GroupCtx, formats: &[Option<formats::format::Format>], s: &[f32], h: &[f32]) -> Result<f64> {
    let n = s.len();
    let mut total = 0f64;
    for (name, fmt) in ctx.group.linears.iter().zip(formats) {
        let (Some(l), Some(fmt)) = (ctx.block.linear(name), fmt) else { continue };
        let mut ws = l.w.clone();
        for row in ws.chunks_mut(n) {
            row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
        }
        let q = fmt.fake_quantize(&ws, l.out, n, None).map_err(|e| Error::Other(format!("awq: `{name}`: {e}")))?;
        let mut d = l.w.clone();
        for (drow, qrow) in d.chunks_mut(n).zip(q.chunks(n)) {
            for ((dv, qv), sv) in drow.iter_mut().zip(qrow).zip(s) {
                *dv -= qv / sv;
            }
        }
        total += quad_form(&d, h, n);
    }
    Ok(total)
}

impl Transform for Awq {
    fn name(&self) -> &'static str {
        "awq"
    }
    fn needs_hessian(&self) -> bool {
        true
    }
    fn on_group(&self, ctx: &mut GroupCtx) -> Result<()> {
        let formats: Vec<Option<formats::format::Format>> = match &self.format {
            Some(f) => vec![Some(f.clone()); ctx.group.linears.len()],
            None => ctx.formats.clone(),
        };
        if !foldable(ctx, true) || formats.iter().all(|f| f.is_none()) {
            return Ok(());
        }
        let Some(hs) = ctx.hessian.as_deref() else {
            return Err(Error::Other("awq needs calibration statistics".into()));
        };
        if !hs.is_full() {
            return Err(Error::Other("awq needs the full input statistics of each group".into()));
        }
        let n = hs.n;
        let count = hs.count.max(1) as f64;
        let x_mean: Vec<f64> = hs.sum_abs.iter().map(|v| v / count).collect();
        let h: Vec<f32> = hs.mean().iter().map(|&v| v as f32).collect();
        // Per input channel: the mean over every row of |W| relative to its row group's max.
        let mut w_mean = vec![0f64; n];
        let mut rows = 0usize;
        for (name, fmt) in ctx.group.linears.iter().zip(&formats) {
            let Some(l) = ctx.block.linear(name) else { continue };
            let g = fmt.as_ref().and_then(|f| f.group_len(n).ok()).filter(|&g| g > 0 && n % g == 0).unwrap_or(n);
            for row in l.w.chunks(n) {
                for (chunk, wm) in row.chunks(g).zip(w_mean.chunks_mut(g)) {
                    let m = chunk.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-12) as f64;
                    wm.iter_mut().zip(chunk).for_each(|(o, w)| *o += w.abs() as f64 / m);
                }
                rows += 1;
            }
        }
        w_mean.iter_mut().for_each(|v| *v /= rows.max(1) as f64);
        let ones = vec![1f32; n];
        let base = scaled_error(ctx, &formats, &ones, &h)?;
        let mut best: (f64, Option<Vec<f32>>) = (base, None);
        for k in 0..self.grid {
            let r = k as f64 / self.grid as f64;
            let mut s: Vec<f64> = x_mean
                .iter()
                .zip(&w_mean)
                .map(|(x, w)| (x.max(0.0).powf(r) / (w.powf(1.0 - r) + 1e-4)).max(1e-4))
                .collect();
            let (lo, hi) = s.iter().fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let norm = (lo * hi).sqrt();
            s.iter_mut().for_each(|v| *v /= norm);
            let s: Vec<f32> = s.iter().map(|&v| v as f32).collect();
            if s.iter().any(|v| !v.is_finite() || *v == 0.0) {
                continue;
            }
            let e = scaled_error(ctx, &formats, &s, &h)?;
            if e < best.0 {
                best = (e, Some(s));
            }
        }
        match best.1 {
            Some(s) => ctx.fold_input_scale(&s),
            None => Ok(()),
        }
    }
}
