//! `scale-fold`: folds seeded per-channel scales into every norm (or producing linear) and the
//! linears it feeds. It leaves the model's function unchanged and only moves magnitude
//! between tensors; it exists to check that the transform hook and export carry a rewrite
//! through (tests), and as the folding step that SmoothQuant and AWQ choose scales for.

use super::{GroupCtx, Transform};
use crate::{Error, Result};

/// Scales drawn log-uniformly in [1/spread, spread] from a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleFold {
    /// Seed of the scales.
    pub seed: u64,
    /// Largest factor (≥ 1).
    pub spread: f32,
    /// Only groups fed by a norm (true) or also those fed by a linear (false).
    pub norms_only: bool,
}

impl ScaleFold {
    /// Parses `seed=S,spread=F,all` (every part optional).
    pub fn parse(args: &str) -> Result<ScaleFold> {
        let mut t = ScaleFold { seed: 0, spread: 2.0, norms_only: true };
        for part in args.split(',').filter(|p| !p.is_empty()) {
            let bad = || Error::Other(format!("scale-fold: cannot read `{part}` (seed=N, spread=X ≥ 1, all)"));
            match part.split_once('=') {
                Some(("seed", v)) => t.seed = v.parse().map_err(|_| bad())?,
                Some(("spread", v)) => {
                    t.spread = v.parse().map_err(|_| bad())?;
                    if !(t.spread >= 1.0 && t.spread.is_finite()) {
                        return Err(bad());
                    }
                }
                None if part == "all" => t.norms_only = false,
                _ => return Err(bad()),
            }
        }
        Ok(t)
    }

    /// The scales of `n` channels of group `g` of block `i`.
    pub fn scales(&self, i: usize, g: usize, n: usize) -> Vec<f32> {
        let mut state = self.seed ^ ((i as u64) << 32) ^ ((g as u64) << 16) ^ 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 11) as f64 / (1u64 << 53) as f64;
                (self.spread as f64).powf(2.0 * u - 1.0) as f32
            })
            .collect()
    }
}

impl Transform for ScaleFold {
    fn name(&self) -> &'static str {
        "scale-fold"
    }
    fn on_group(&self, ctx: &mut GroupCtx) -> Result<()> {
        if ctx.group.norm.is_none() && self.norms_only {
            return Ok(());
        }
        let n = match ctx.group.linears.first().and_then(|l| ctx.block.linear(l)) {
            Some(l) => l.inp,
            None => return Ok(()),
        };
        let s = self.scales(ctx.block_index, ctx.group_index, n);
        ctx.fold_input_scale(&s)
    }
}
