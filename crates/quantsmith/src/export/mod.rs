//! Exporters: how a quantized model is written for a runtime. One file per layout, one
//! registry line in [`exporter`].
//!
//! The pipeline hands an exporter every tensor of the model, in output order, as a
//! [`QuantTensor`] taken from the in-memory model (never re-read from the source, so what a
//! transform folded into a norm is what gets written). Each tensor carries its
//! [`Storage`] (what the plan chose) and its [`TensorData`] (what the solver produced).

pub mod compressed_tensors;
pub mod fake_quant;
pub mod gguf;
pub mod gptq;
pub mod hf_dir;
pub mod tensor;

use std::collections::BTreeMap;
use std::path::Path;

pub use tensor::{QuantTensor, Storage, TensorData};

use crate::io::gguf::GgufValue;
use crate::Result;

/// Everything an exporter needs besides the tensors.
#[derive(Clone, Debug, Default)]
pub struct ExportModel {
    /// GGUF metadata (architecture keys, tokenizer, `general.*`), for GGUF output.
    pub gguf_metadata: Vec<(String, GgufValue)>,
    /// The Hugging Face `config.json` (without `quantization_config`), for directory layouts.
    pub hf_config: serde_json::Value,
    /// Tokenizer and other side files copied into directory layouts (file name, contents):
    /// `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, ...
    pub side_files: Vec<(String, Vec<u8>)>,
    /// Canonical (GGUF-spelt) tensor name → Hugging Face name, for directory layouts.
    pub hf_names: BTreeMap<String, String>,
    /// Canonical names of the tensors the checkpoint stores transposed relative to
    /// `[out, in]` or permuted (e.g. q/k rows for llama.cpp's RoPE): handled by the arch,
    /// listed here only for reports.
    pub notes: Vec<String>,
    /// The recipe as run (preset, rules, solver), recorded in directory layouts' configs.
    pub recipe: serde_json::Value,
    /// Largest safetensors shard, bytes (directory layouts); 0 = one file.
    pub max_shard_bytes: u64,
    /// Replace an existing non-empty output directory.
    pub force: bool,
}

/// A layout quantized models are written in.
pub trait Exporter: Send + Sync {
    /// Name as `--layout` spells it (`gguf`, `compressed-tensors`, `gptq`, `fake-quant`).
    fn name(&self) -> &'static str;
    /// Whether this layout can store tensor `name` of `shape` as `storage`; the error says
    /// what it can store instead.
    fn check(&self, name: &str, shape: &[usize], storage: &Storage) -> Result<()>;
    /// Whether the layout stores what a solver adds beside the format's codes: weights kept
    /// apart in a sparse table ([`TensorData::Sparse`], outliers) and low-rank factors
    /// ([`TensorData::LowRank`]). Only layouts of dense values can.
    fn stores_side_data(&self) -> bool {
        false
    }
    /// Whether the layout stores integer codes, scales and zero points as the solver chose
    /// them (so a nested code set can be sliced when read back); layouts of dense values and
    /// GGUF's block types cannot.
    fn stores_codes(&self) -> bool {
        false
    }
    /// Writes the model to `out` (a file or a directory, as the layout is), through a
    /// temporary name renamed when complete. `tensors` yields every tensor in output order.
    /// Returns the bytes written.
    fn write(
        &self,
        out: &Path,
        model: &ExportModel,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64>;
    /// [`Exporter::write`], told beforehand what `tensors` will yield (names, shapes and
    /// storage, in order), when the caller knows: a layout whose header lists every tensor
    /// (GGUF) then writes each tensor's data straight to its place instead of spooling it.
    /// A tensor that differs from what was announced is an error.
    fn write_planned(
        &self,
        out: &Path,
        model: &ExportModel,
        planned: Option<&[PlannedTensor]>,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64> {
        let _ = planned;
        self.write(out, model, tensors)
    }
}

/// A tensor an exporter is told to expect: its name, shape (`[out, in]` order) and storage.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// Canonical name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// The storage the plan chose.
    pub storage: Storage,
}

/// The exporters by `--layout` name: the registry.
pub fn exporter(layout: &str) -> Result<Box<dyn Exporter>> {
    match layout {
        "gguf" => Ok(Box::new(gguf::Gguf)),
        "compressed-tensors" => Ok(Box::new(compressed_tensors::CompressedTensors)),
        "gptq" => Ok(Box::new(gptq::Gptq { v2: false })),
        "gptq-v2" => Ok(Box::new(gptq::Gptq { v2: true })),
        "fake-quant" => Ok(Box::new(fake_quant::FakeQuant::default())),
        // `fake-quant:bf16`: the float type of the written tensors (default f32, exact).
        _ if layout.starts_with("fake-quant:") => {
            Ok(Box::new(fake_quant::FakeQuant { dtype: hf_dir::FloatDtype::parse(&layout["fake-quant:".len()..])? }))
        }
        other => Err(crate::Error::Other(format!("unknown layout `{other}` (known: {})", LAYOUTS.join(", ")))),
    }
}

/// Every layout [`exporter`] knows.
pub const LAYOUTS: &[&str] = &["gguf", "compressed-tensors", "gptq", "gptq-v2", "fake-quant[:f32|f16|bf16]"];
