//! Transforms: equivalent rewrites of a block that make it easier to quantize (SmoothQuant,
//! AWQ scaling, rotations, bias correction). One file per transform, one registry line in
//! [`transform`].
//!
//! The pipeline calls every transform of a run, in order, for each linear group of each
//! block, after the group's input statistics were collected and before its linears are
//! solved ([`GroupCtx`]). A transform may rewrite the block's norms and linears; when it
//! changes what the group's linears read, it says so through [`GroupCtx::fold_input_scale`]
//! (or keeps `hessian` and `inputs` consistent itself), so the solve and the propagation
//! that follow see the rewritten model. Export takes every tensor from the rewritten block.

pub mod scale_fold;

use crate::arch::{Block, LinearGroup};
use crate::calib::Hessian;
use crate::{Error, Result};

/// What a transform may see and rewrite for one linear group.
pub struct GroupCtx<'a> {
    /// Block index.
    pub block_index: usize,
    /// Index of the group in the block's [`Block::groups`].
    pub group_index: usize,
    /// The group.
    pub group: &'static LinearGroup,
    /// The block, with the groups before this one already quantized.
    pub block: &'a mut dyn Block,
    /// Statistics of the group's input (when calibrated).
    pub hessian: Option<&'a mut Hessian>,
    /// The group's recorded inputs per calibration batch (GPTQ's sequential mode; empty
    /// otherwise), `[rows, in]` each.
    pub inputs: &'a mut [Vec<f32>],
}

impl GroupCtx<'_> {
    /// Divides input channel `c` of the group by `s[c]`, where it is produced (the norm's gain,
    /// or the producing linear's rows and bias), and multiplies column `c` of every linear of
    /// the group by `s[c]`: the block computes the same function, and the group's statistics
    /// and recorded inputs follow the rewrite.
    pub fn fold_input_scale(&mut self, s: &[f32]) -> Result<()> {
        let bad = |msg: String| Error::Other(format!("block {}: {msg}", self.block_index));
        if let Some(i) = s.iter().position(|v| !v.is_finite() || *v == 0.0) {
            return Err(bad(format!("scale {} of input channel {i} cannot be folded", s[i])));
        }
        let n = s.len();
        for name in self.group.linears {
            let l = self.block.linear(name).ok_or_else(|| bad(format!("no linear `{name}`")))?;
            if l.inp != n {
                return Err(bad(format!("`{name}` reads {} channels, the scale has {n}", l.inp)));
            }
        }
        match (self.group.norm, self.group.producer) {
            (Some(norm), _) => {
                let g = self.block.norm_mut(norm).ok_or_else(|| bad(format!("no norm `{norm}`")))?;
                if g.len() != n {
                    return Err(bad(format!("norm `{norm}` has {} channels, the scale has {n}", g.len())));
                }
                for (g, s) in g.iter_mut().zip(s) {
                    *g /= s;
                }
            }
            (None, Some(p)) => {
                let l = self.block.linear_mut(p).ok_or_else(|| bad(format!("no linear `{p}`")))?;
                if l.out != n {
                    return Err(bad(format!(
                        "`{p}` produces {} channels but the group reads {n} (grouped-query attention shares them): fold a per-head-group scale instead",
                        l.out
                    )));
                }
                for (row, s) in l.w.chunks_mut(l.inp).zip(s) {
                    row.iter_mut().for_each(|w| *w /= s);
                }
                if let Some(b) = &mut l.b {
                    b.iter_mut().zip(s).for_each(|(b, s)| *b /= s);
                }
            }
            (None, None) => {
                return Err(bad(format!("the input of {:?} has no producer to fold into", self.group.linears)))
            }
        }
        for name in self.group.linears {
            let l = self.block.linear_mut(name).expect("checked above");
            for row in l.w.chunks_mut(n) {
                row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
            }
        }
        if let Some(h) = self.hessian.as_deref_mut() {
            h.divide_channels(s);
        }
        for x in self.inputs.iter_mut() {
            for row in x.chunks_mut(n) {
                row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
            }
        }
        Ok(())
    }
}

/// A rewrite of the model that keeps its function (up to rounding) and changes how well it
/// quantizes.
pub trait Transform: std::fmt::Debug + Send + Sync {
    /// Name as recipes spell it.
    fn name(&self) -> &'static str;
    /// Rewrites one group (see [`GroupCtx`]).
    fn on_group(&self, ctx: &mut GroupCtx) -> Result<()>;
}

/// The transforms by name: the registry. `spec` is `NAME` or `NAME:ARGS`.
pub fn transform(spec: &str) -> Result<Box<dyn Transform>> {
    let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
    match name {
        "scale-fold" => Ok(Box::new(scale_fold::ScaleFold::parse(args)?)),
        other => Err(Error::Other(format!("unknown transform `{other}` (known: scale-fold)"))),
    }
}
