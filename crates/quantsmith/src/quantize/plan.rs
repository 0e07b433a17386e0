//! The plan: for every tensor of the model, the storage type and the solver — the preset's
//! choice, overridden by recipe rules.

use std::collections::HashMap;
use std::path::Path;

use formats::format::Format;
use formats::ggml::GgmlType;
use sha2::{Digest, Sha256};

use super::pipeline::{ImatrixSource, PipelineOptions};
use super::recipe::{parse_solver, Rule};
use crate::solve::Method;
use crate::tensor::TensorInfo;
use crate::{Error, Result};

/// What one tensor becomes.
#[derive(Clone, Debug)]
pub struct PlanEntry {
    /// Tensor name.
    pub name: String,
    /// Storage type in the output.
    pub ty: GgmlType,
    /// Solver (ignored for tensors kept in a float type).
    pub method: Method,
    /// Whether a recipe rule (rather than the preset) chose it.
    pub from_rule: bool,
}

/// Every tensor's entry, in file order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Entries in file order.
    pub entries: Vec<PlanEntry>,
    index: HashMap<String, usize>,
}

impl Plan {
    /// Builds the plan: `preset` gives every tensor's type, the first matching rule (over
    /// tensors of two or more dimensions) overrides it; `method` is the default solver.
    pub fn build(
        tensors: &[TensorInfo],
        preset: &HashMap<String, GgmlType>,
        rules: &[Rule],
        method: &Method,
    ) -> Result<Plan> {
        let mut used = vec![false; rules.len()];
        let mut entries = Vec::with_capacity(tensors.len());
        for t in tensors {
            let mut ty = *preset
                .get(&t.name)
                .ok_or_else(|| Error::Other(format!("the preset gives no type for tensor `{}`", t.name)))?;
            let mut m = method.clone();
            let mut from_rule = false;
            if t.shape.len() >= 2 {
                if let Some((ri, r)) = rules.iter().enumerate().find(|(_, r)| r.matches(&t.name)) {
                    used[ri] = true;
                    let f = Format::parse(&r.format).map_err(|e| Error::Other(format!("rule `{}`: {e}", r.pattern)))?;
                    ty = match f.ggml {
                        Some(g) => g,
                        None if f.spec() == "f32" || r.format == "f32" => GgmlType::F32,
                        None if r.format == "f16" => GgmlType::F16,
                        None if r.format == "bf16" => GgmlType::Bf16,
                        None => {
                            return Err(Error::Other(format!(
                                "rule `{}={}`: `{}` cannot be stored in GGUF; use a ggml type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k … q6_k, iq4_nl, iq4_xs, f16, f32)",
                                r.pattern, r.format, r.format
                            )))
                        }
                    };
                    if let Some(s) = &r.solver {
                        m = parse_solver(s)?;
                    }
                    from_rule = true;
                }
            }
            let row = *t.shape.last().unwrap_or(&1);
            if row % ty.block_size() != 0 {
                return Err(Error::Other(format!(
                    "tensor `{}`: rows of {row} values do not divide into {} blocks of {}",
                    t.name,
                    ty.name(),
                    ty.block_size()
                )));
            }
            entries.push(PlanEntry { name: t.name.clone(), ty, method: m, from_rule });
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(Error::Other(format!(
                "rule `{}={}` matches no tensor of two or more dimensions in this model",
                rules[i].pattern, rules[i].format
            )));
        }
        let index = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(Plan { entries, index })
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&PlanEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// A digest of everything that determines the output, to recognise a checkpoint of the
    /// same run.
    pub fn fingerprint(&self, input: &Path, opts: &PipelineOptions) -> String {
        let mut h = Sha256::new();
        h.update(input.to_string_lossy().as_bytes());
        if let Ok(m) = std::fs::metadata(input) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified() {
                h.update(format!("{t:?}").as_bytes());
            }
        }
        for e in &self.entries {
            h.update(format!("{}|{}|{:?};", e.name, e.ty.name(), e.method).as_bytes());
        }
        h.update(format!("{:?}|{}", opts.calib, opts.batch_seqs).as_bytes());
        match &opts.imatrix {
            ImatrixSource::File(p) => h.update(format!("imatrix file {}", p.display()).as_bytes()),
            other => h.update(format!("{other:?}").as_bytes()),
        }
        for (p, text) in &opts.calib_texts {
            h.update(p.to_string_lossy().as_bytes());
            h.update(Sha256::digest(text.as_bytes()));
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
