//! `bias-correct[:local]`: bias correction after quantization — the mean-matching step of
//! Nagel et al.'s data-free quantization and of Hubara et al.'s global statistics tuning,
//! with the means taken on the calibration data.
//!
//! Quantizing W to Ŵ shifts the mean of a linear's output by E[W x] − E[Ŵ x̂], where x̂ is
//! the input the quantized model feeds it. Those shifts are systematic: they accumulate along
//! the residual stream block after block. After each group's linears are quantized, every
//! linear of the group gets `b += W μ_f − Ŵ μ_q`, with μ_q the mean of the group's input in the
//! partly quantized model (as the linears see it: through their input hook, so after any
//! online rotation or activation quantization) and W the float weights. By default μ_f is the
//! same input's mean in the *float* model (the run keeps the float stream of asymmetric
//! calibration for it), so the quantized model's calibration means are pulled back to the
//! float model's, drift from the blocks before included. `:local` uses μ_f = μ_q: only this
//! layer's own error, `b += (W − Ŵ) μ_q`, and no float stream.
//!
//! Each group's correction is applied before the group's output is computed for what follows,
//! so the next groups' statistics see the corrected model. On an unquantized model the
//! correction is zero.
//!
//! Llama only: the corrected model has a bias on every block linear, which a Llama model holds
//! in both ecosystems (transformers' `attention_bias` and `mlp_bias`; llama.cpp's optional
//! `attn_*.bias` / `ffn_*.bias`). The biases are stored in f32, counted in the output's size.

use super::{SolvedGroup, Transform};
use crate::arch::Arch;
use crate::tensor::{DType, TensorInfo};
use crate::{Error, Result};

/// Bias correction (see the module header).
#[derive(Clone, Debug, PartialEq)]
pub struct BiasCorrect {
    /// Only each layer's own error (no float stream).
    pub local: bool,
}

impl BiasCorrect {
    /// Parses `` (against the float model) or `local`.
    pub fn parse(args: &str) -> Result<BiasCorrect> {
        match args {
            "" => Ok(BiasCorrect { local: false }),
            "local" => Ok(BiasCorrect { local: true }),
            other => Err(Error::Other(format!(
                "bias-correct: `{other}` is not an option (`bias-correct` matches the float model's means, `bias-correct:local` each layer's own error)"
            ))),
        }
    }
}

/// The block linears' weights in `tensors` (`blk.N.NAME.weight`, a Llama block's linears).
fn linear_weights(tensors: &[TensorInfo]) -> Vec<&TensorInfo> {
    let linears = crate::arch::llama::LINEAR_NAMES;
    tensors
        .iter()
        .filter(|t| {
            t.shape.len() == 2
                && t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')).is_some_and(|(i, rest)| {
                    i.parse::<usize>().is_ok() && rest.strip_suffix(".weight").is_some_and(|l| linears.contains(&l))
                })
        })
        .collect()
}

impl Transform for BiasCorrect {
    fn name(&self) -> &'static str {
        "bias-correct"
    }

    fn check(&self, arch: &dyn Arch) -> Result<()> {
        if arch.family() != "llama" {
            return Err(Error::Other(format!(
                "--transform bias-correct: adds a bias to every block linear, which a `{}` model cannot hold (transformers' config has no o_proj/MLP biases for it); Llama models can",
                arch.family()
            )));
        }
        Ok(())
    }

    fn added_tensors(&self, _arch: &dyn Arch, tensors: &[TensorInfo]) -> Vec<TensorInfo> {
        linear_weights(tensors)
            .into_iter()
            .filter_map(|w| {
                let name = format!("{}.bias", w.name.strip_suffix(".weight")?);
                let out = w.shape[0];
                (!tensors.iter().any(|t| t.name == name)).then(|| TensorInfo {
                    name,
                    shape: vec![out],
                    dtype: DType::F32,
                    n_bytes: 4 * out,
                })
            })
            .collect()
    }

    fn corrects(&self) -> bool {
        true
    }

    fn needs_float_stream(&self) -> bool {
        !self.local
    }

    fn after_group(&self, ctx: &mut SolvedGroup) -> Result<()> {
        let mean_q = ctx.hessian.channel_mean();
        let mean_f = match (self.local, ctx.cross) {
            (false, Some(c)) => c.float_mean(&mean_q),
            (false, None) => {
                return Err(Error::Other(format!(
                    "block {}: bias-correct: the float model's input of {:?} was not collected",
                    ctx.block_index, ctx.group.linears
                )))
            }
            (true, _) => mean_q.clone(),
        };
        for &name in ctx.group.linears {
            let bad = |m: &str| Error::Other(format!("block {}: bias-correct: `{name}` {m}", ctx.block_index));
            let wf = ctx.float_weights.get(name).ok_or_else(|| bad("has no float weights kept"))?;
            let lin = ctx.block.linear_mut(name).ok_or_else(|| bad("is not in the block"))?;
            let (out, inp) = (lin.out, lin.inp);
            if inp != mean_q.len() || wf.len() != out * inp || lin.w.len() != out * inp {
                return Err(bad("does not match its input's width"));
            }
            let shift: Vec<f64> = wf
                .chunks_exact(inp)
                .zip(lin.w.chunks_exact(inp))
                .map(|(f, q)| {
                    let a: f64 = f.iter().zip(&mean_f).map(|(w, m)| *w as f64 * m).sum();
                    let b: f64 = q.iter().zip(&mean_q).map(|(w, m)| *w as f64 * m).sum();
                    a - b
                })
                .collect();
            if shift.iter().any(|s| !s.is_finite()) {
                return Err(bad("got a non-finite correction (its input statistics are not finite)"));
            }
            let b = lin.b.get_or_insert_with(|| vec![0.0; out]);
            for (b, s) in b.iter_mut().zip(&shift) {
                *b += *s as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_two_modes_and_nothing_else() {
        assert_eq!(BiasCorrect::parse("").unwrap(), BiasCorrect { local: false });
        assert_eq!(BiasCorrect::parse("local").unwrap(), BiasCorrect { local: true });
        assert!(BiasCorrect::parse("global").unwrap_err().to_string().contains("bias-correct"));
    }
}
