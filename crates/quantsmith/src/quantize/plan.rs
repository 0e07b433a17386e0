//! The plan: for every tensor of the model, the storage type and the solver — the preset's
//! choice, overridden by recipe rules.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::pipeline::{ImatrixSource, PipelineOptions};
use super::recipe::{parse_solver, Rule};
use crate::export::{Exporter, Storage};
use crate::solve::Method;
use crate::tensor::TensorInfo;
use crate::{Error, Result};

/// What one tensor becomes.
#[derive(Clone, Debug)]
pub struct PlanEntry {
    /// Tensor name (canonical, GGUF spelling).
    pub name: String,
    /// Shape, outermost first (as the architecture reads it).
    pub shape: Vec<usize>,
    /// Storage in the output: a ggml type or any other format.
    pub storage: Storage,
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
    /// Builds the plan: `base` gives every tensor's storage (a preset's choice, or the
    /// layout's default), the first matching rule (over tensors of two or more dimensions)
    /// overrides it; `method` is the default solver. Every entry is checked against the
    /// output layout, so a format the layout cannot write fails here, before any work.
    pub fn build(
        tensors: &[TensorInfo],
        base: &HashMap<String, Storage>,
        rules: &[Rule],
        method: &Method,
        exporter: &dyn Exporter,
    ) -> Result<Plan> {
        let mut used = vec![false; rules.len()];
        let mut entries = Vec::with_capacity(tensors.len());
        for t in tensors {
            let mut storage = base
                .get(&t.name)
                .cloned()
                .ok_or_else(|| Error::Other(format!("the preset gives no type for tensor `{}`", t.name)))?;
            let mut m = method.clone();
            let mut from_rule = false;
            if t.shape.len() >= 2 {
                if let Some((ri, r)) = rules.iter().enumerate().find(|(_, r)| r.matches(&t.name)) {
                    used[ri] = true;
                    storage = Storage::parse(&r.format)
                        .map_err(|e| Error::Other(format!("rule `{}={}`: {e}", r.pattern, r.format)))?;
                    if let Some(s) = &r.solver {
                        m = parse_solver(s)?;
                    }
                    from_rule = true;
                }
            }
            let (rows, cols) = matrix_of(&t.shape);
            storage
                .storage_bits(rows, cols)
                .map_err(|e| Error::Other(format!("tensor `{}` {:?}: {}: {e}", t.name, t.shape, storage.name())))?;
            exporter.check(&t.name, &t.shape, &storage).map_err(|e| {
                Error::Other(format!("tensor `{}` {:?} cannot be written as {}: {e}", t.name, t.shape, storage.name()))
            })?;
            if !storage.is_float() {
                m.check_shape(rows, cols).map_err(|e| {
                    Error::Other(format!("tensor `{}` {:?}: solver {}: {e}", t.name, t.shape, m.spec()))
                })?;
                let target = storage.target().map_err(|e| Error::Other(format!("tensor `{}`: {e}", t.name)))?;
                m.check_target(&target).map_err(|e| {
                    // A tensor kept in another format can still have a solver of its own.
                    let hint = if m.nesting().is_some() {
                        format!(
                            "; or leave this tensor out of the nesting with a solver of its own: --scheme '{}={}@gptq'",
                            t.name,
                            storage.name()
                        )
                    } else {
                        String::new()
                    };
                    Error::Other(format!("tensor `{}` ({}): solver {}: {e}{hint}", t.name, storage.name(), m.spec()))
                })?;
                if m.nesting().is_some() && !exporter.stores_codes() {
                    return Err(Error::Other(format!(
                        "tensor `{}`: solver {} writes a nested code set, which the {} layout cannot hold (it stores {}); use --layout compressed-tensors or gptq, whose codes `quantsmith eval --slice BITS` reads at each precision",
                        t.name,
                        m.spec(),
                        exporter.name(),
                        if exporter.name() == "gguf" { "llama.cpp's block types" } else { "dequantized values" }
                    )));
                }
            }
            if let Some(side) = m.side_data().filter(|_| !storage.is_float() && !exporter.stores_side_data()) {
                return Err(Error::Other(format!(
                    "tensor `{}`: solver {} {side}, which the {} layout has no place for; use --layout fake-quant",
                    t.name,
                    m.spec(),
                    exporter.name()
                )));
            }
            entries.push(PlanEntry { name: t.name.clone(), shape: t.shape.clone(), storage, method: m, from_rule });
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

    /// Whether some tensor is solved against the float model's output (asymmetric calibration).
    pub fn has_asymmetric(&self) -> bool {
        self.entries.iter().any(|e| !e.storage.is_float() && e.method.asymmetric())
    }

    /// Whether some tensor is solved with a Hessian (so the run calibrates).
    pub fn needs_hessian(&self) -> bool {
        self.entries.iter().any(|e| !e.storage.is_float() && e.method.needs_hessian())
    }

    /// The tensors solved into nested code sets, with their precisions.
    pub fn nested(&self) -> Vec<(&str, &crate::solve::nested::Nesting)> {
        self.entries
            .iter()
            .filter(|e| !e.storage.is_float())
            .filter_map(|e| e.method.nesting().map(|n| (e.name.as_str(), n)))
            .collect()
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&PlanEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// A digest of everything that determines the output, to recognise a checkpoint of the
    /// same run.
    pub fn fingerprint(&self, input: &Path, opts: &PipelineOptions, extra: &str) -> String {
        let mut h = Sha256::new();
        h.update(extra.as_bytes());
        h.update(input.to_string_lossy().as_bytes());
        if let Ok(m) = std::fs::metadata(input) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified() {
                h.update(format!("{t:?}").as_bytes());
            }
        }
        for e in &self.entries {
            h.update(format!("{}|{}|{:?};", e.name, e.storage.name(), e.method).as_bytes());
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

/// A tensor seen as a matrix: (rows, innermost dimension).
pub fn matrix_of(shape: &[usize]) -> (usize, usize) {
    let cols = *shape.last().unwrap_or(&1);
    (shape.iter().product::<usize>() / cols.max(1), cols)
}
