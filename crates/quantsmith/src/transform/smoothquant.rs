//! `smoothquant[:ALPHA][:all]`: SmoothQuant's migration of activation range into the weights.
//! For each group fed by a norm (with `all`, also each group fed by a linear whose rows it can
//! take), input channel `j` is divided by `s_j = max|X_j|^α / max|W_{·j}|^(1−α)` (maxima over
//! the calibration tokens and over the rows of every linear of the group) and the linears'
//! column `j` multiplied by it: the same function, with the activations' outlier channels
//! flattened for activation quantization. α defaults to 0.5.

use super::{GroupCtx, Transform};
use crate::{Error, Result};

/// The SmoothQuant transform.
#[derive(Clone, Debug, PartialEq)]
pub struct SmoothQuant {
    /// Migration strength in [0, 1].
    pub alpha: f32,
    /// Also groups fed by a linear (ffn_down ← ffn_up; attn_output ← attn_v without GQA).
    pub all: bool,
}

impl SmoothQuant {
    /// Parses `[ALPHA][:all]` (or `alpha=A`).
    pub fn parse(args: &str) -> Result<SmoothQuant> {
        let mut t = SmoothQuant { alpha: 0.5, all: false };
        for p in args.split([':', ',']).filter(|p| !p.is_empty()) {
            if p == "all" {
                t.all = true;
                continue;
            }
            let v = p.strip_prefix("alpha=").unwrap_or(p);
            t.alpha = v.parse::<f32>().ok().filter(|a| (0.0..=1.0).contains(a)).ok_or_else(|| {
                Error::Other(format!("smoothquant: `{p}` is not a migration strength in [0, 1] (or `all`)"))
            })?;
        }
        Ok(t)
    }
}

/// Whether a scale can fold where this group's input is produced (a norm, or a producing
/// linear with one row per input channel), and the group is not rotated online.
pub fn foldable(ctx: &GroupCtx, include_linear_fed: bool) -> bool {
    if ctx.online_rotated {
        return false;
    }
    if ctx.group.norm.is_some() {
        return true;
    }
    let (Some(p), Some(first)) = (ctx.group.producer, ctx.group.linears.first()) else { return false };
    include_linear_fed
        && match (ctx.block.linear(p), ctx.block.linear(first)) {
            (Some(p), Some(l)) => p.out == l.inp,
            _ => false,
        }
}

/// max |W_{·j}| over the rows of every linear of the group, per input channel.
pub fn weight_col_max(ctx: &GroupCtx, n: usize) -> Vec<f32> {
    let mut m = vec![0f32; n];
    for name in ctx.group.linears {
        if let Some(l) = ctx.block.linear(name) {
            for row in l.w.chunks(n) {
                m.iter_mut().zip(row).for_each(|(m, w)| *m = m.max(w.abs()));
            }
        }
    }
    m
}

impl Transform for SmoothQuant {
    fn name(&self) -> &'static str {
        "smoothquant"
    }
    fn needs_hessian(&self) -> bool {
        true
    }
    fn on_group(&self, ctx: &mut GroupCtx) -> Result<()> {
        if !foldable(ctx, self.all) {
            return Ok(());
        }
        let Some(h) = ctx.hessian.as_deref() else {
            return Err(Error::Other("smoothquant needs calibration statistics".into()));
        };
        let n = h.n;
        let xmax = h.max_abs.clone();
        let wmax = weight_col_max(ctx, n);
        let a = self.alpha as f64;
        let s: Vec<f32> = xmax
            .iter()
            .zip(&wmax)
            .map(|(&x, &w)| {
                if x <= 0.0 || w <= 0.0 {
                    return 1.0;
                }
                ((x as f64).powf(a) / (w as f64).powf(1.0 - a)).clamp(1e-5, 1e5) as f32
            })
            .collect();
        ctx.fold_input_scale(&s)
    }
}
