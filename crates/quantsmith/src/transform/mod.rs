//! Transforms: equivalent rewrites of a model that make it easier to quantize (rotations,
//! SmoothQuant, AWQ scaling). One file per transform, one registry line in [`transform`].
//!
//! A transform acts at up to three points. [`Transform::on_globals`] rewrites the tensors
//! outside the blocks once they are loaded, and [`Transform::on_block`] each block as it is
//! loaded, before any calibration data runs through it (a rotation of the residual stream,
//! which must hold for the whole model). [`Transform::on_group`] is called for each linear
//! group of each block, with the full statistics of every group's input taken on the float
//! block in one pass, before any of the block's linears is solved ([`GroupCtx`]). A transform
//! may rewrite the block's norms and linears; when it changes what the group's linears read,
//! it says so through [`GroupCtx::fold_input_scale`] (or keeps `hessian` consistent itself),
//! so the solve and the propagation that follow see the rewritten model. Export takes every
//! tensor from the rewritten block.
//!
//! A fourth point, [`Transform::after_group`], is for corrections rather than rewrites: it is
//! called once a group's linears are quantized, before the group's output is computed for
//! what follows ([`SolvedGroup`]: the float weights, the input's statistics in the partly
//! quantized model and, when asked for, against the float model). Bias correction lives there.

pub mod awq;
pub mod bias_correct;
pub mod hadamard;
pub mod rotate;
pub mod scale_fold;
pub mod smoothquant;

use std::collections::BTreeMap;

use crate::arch::{Arch, Block, Globals, LinearGroup};
use crate::calib::{Cross, Hessian};
use crate::tensor::TensorInfo;
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
    /// The format each of the group's linears will be stored in (`None`: kept in float), in
    /// the order of [`LinearGroup::linears`].
    pub formats: Vec<Option<formats::format::Format>>,
    /// Whether the group's input is rotated online before the linears (a channel scale would
    /// not commute with that rotation).
    pub online_rotated: bool,
}

impl GroupCtx<'_> {
    /// Divides input channel `c` of the group by `s[c]`, where it is produced (the norm's gain,
    /// or the producing linear's rows and bias), and multiplies column `c` of every linear of
    /// the group by `s[c]`: the block computes the same function, and the group's statistics
    /// follow the rewrite.
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
        Ok(())
    }
}

/// What a correcting transform sees of one linear group once its linears are quantized.
pub struct SolvedGroup<'a> {
    /// Block index.
    pub block_index: usize,
    /// The group.
    pub group: &'static LinearGroup,
    /// The block: this group's linears hold their quantized (dequantized) weights.
    pub block: &'a mut dyn Block,
    /// The group's linears' weights before the solve (after any rewrite), by block-local name.
    pub float_weights: &'a BTreeMap<&'a str, crate::tensor::Weights>,
    /// Statistics of the group's input in the partly quantized model, as its linears see it
    /// (through their input hook).
    pub hessian: &'a Hessian,
    /// The cross term against the same input in the float model, when the run keeps the float
    /// stream ([`Transform::needs_float_stream`], or an asymmetric solver).
    pub cross: Option<&'a Cross>,
}

/// A rewrite of the model that keeps its function (up to rounding) and changes how well it
/// quantizes; or, through [`Transform::after_group`], a correction of the quantized model.
pub trait Transform: std::fmt::Debug + Send + Sync {
    /// Name as recipes spell it.
    fn name(&self) -> &'static str;
    /// Checks, before any work, that the transform applies to this model.
    fn check(&self, _arch: &dyn Arch) -> Result<()> {
        Ok(())
    }
    /// Tensors the transform adds to the checkpoint's (a rotation unties a tied head).
    fn added_tensors(&self, _arch: &dyn Arch, _tensors: &[TensorInfo]) -> Vec<TensorInfo> {
        Vec::new()
    }
    /// Linears (block-local names) whose input the rewritten model rotates online.
    fn online_hadamard(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the transform needs the full Σxxᵀ of each group's input (the run then collects
    /// it, whatever the solver).
    fn needs_hessian(&self) -> bool {
        false
    }
    /// Rewrites the tensors outside the blocks, once they are loaded.
    fn on_globals(&self, _arch: &dyn Arch, _globals: &mut Globals) -> Result<()> {
        Ok(())
    }
    /// Rewrites block `index` as it is loaded, before calibration data runs through it.
    fn on_block(&self, _arch: &dyn Arch, _index: usize, _block: &mut dyn Block) -> Result<()> {
        Ok(())
    }
    /// Rewrites one group (see [`GroupCtx`]).
    fn on_group(&self, _ctx: &mut GroupCtx) -> Result<()> {
        Ok(())
    }
    /// Whether [`Transform::after_group`] does anything: the run then computes every group's
    /// input on the partly quantized model (as GPTQ does), whatever the solver.
    fn corrects(&self) -> bool {
        false
    }
    /// Whether [`Transform::after_group`] needs each group's input in the float model too (the
    /// run then keeps the float stream of asymmetric calibration).
    fn needs_float_stream(&self) -> bool {
        false
    }
    /// Corrects one group once its linears are quantized (see [`SolvedGroup`]).
    fn after_group(&self, _ctx: &mut SolvedGroup) -> Result<()> {
        Ok(())
    }
}

/// The transforms by name: the registry. `spec` is `NAME` or `NAME:ARGS`.
pub fn transform(spec: &str) -> Result<Box<dyn Transform>> {
    let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
    match name {
        "rotate" => Ok(Box::new(rotate::Rotate::parse(args)?)),
        "smoothquant" => Ok(Box::new(smoothquant::SmoothQuant::parse(args)?)),
        "awq" => Ok(Box::new(awq::Awq::parse(args)?)),
        "scale-fold" => Ok(Box::new(scale_fold::ScaleFold::parse(args)?)),
        "bias-correct" => Ok(Box::new(bias_correct::BiasCorrect::parse(args)?)),
        other => Err(Error::Other(format!(
            "unknown transform `{other}` (known: rotate, smoothquant[:ALPHA], awq[:grid=N], scale-fold, bias-correct[:local])"
        ))),
    }
}
