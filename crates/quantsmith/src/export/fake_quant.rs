//! Fake-quant safetensors: every tensor written dequantized, as plain floats, under its
//! Hugging Face name. Any runtime loads the directory as an ordinary model, computing with
//! exactly the values the quantized model has (in f32; f16/bf16 round them once more), so it
//! measures a format's accuracy where no kernel for the format exists.
//!
//! The recipe and each tensor's format are recorded in config.json under `quantsmith`
//! (`{"quant_method": "quantsmith-fake-quant", "recipe", "formats": {hf_name: format}}`), not
//! under `quantization_config`: vLLM refuses a config whose `quantization_config.quant_method`
//! it does not know (`ModelConfig._verify_quantization`), and transformers only warns, so the
//! record there would stop the one runtime the plain weights are meant to reach.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::hf_dir::{self, FloatDtype, HfDirWriter};
use super::{ExportModel, Exporter, QuantTensor, Storage};
use crate::Result;

/// The fake-quant exporter, writing every tensor in `dtype`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeQuant {
    /// The float type of every tensor (f32 keeps the dequantized values exactly).
    pub dtype: FloatDtype,
}

impl Exporter for FakeQuant {
    fn stores_side_data(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "fake-quant"
    }

    /// Every storage: the values are written dequantized.
    fn check(&self, _name: &str, _shape: &[usize], _storage: &Storage) -> Result<()> {
        Ok(())
    }

    fn write(
        &self,
        out: &Path,
        model: &ExportModel,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64> {
        let mut w = HfDirWriter::create(out, model.force, model.max_shard_bytes)?;
        let mut formats = BTreeMap::new();
        for t in tensors {
            let t = t?;
            let hf = hf_dir::hf_name(model, &t.name).to_string();
            let values = hf_dir::runtime_values(&t)?;
            hf_dir::add_float(&mut w, &hf, &t.shape, &values, self.dtype)?;
            formats.insert(hf, json!(t.storage.name()));
        }
        let mut config = model.hf_config.clone();
        if let Some(o) = config.as_object_mut() {
            // transformers 5 writes `dtype`, earlier versions `torch_dtype`; both are read.
            if o.contains_key("dtype") {
                o.insert("dtype".into(), json!(self.dtype.torch_name()));
            }
            o.insert("torch_dtype".into(), json!(self.dtype.torch_name()));
            o.insert(
                "quantsmith".into(),
                json!({"quant_method": "quantsmith-fake-quant", "recipe": model.recipe, "formats": formats}),
            );
        }
        w.finish(&config, None, &[], &model.side_files)
    }
}
