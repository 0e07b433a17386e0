//! Hugging Face model directories: `config.json` plus `model.safetensors` or the shards
//! listed by `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::quantized_dir::QuantView;
use super::safetensors::{SafetensorsFile, StTensor};
use crate::tensor::{TensorInfo, TensorSource, Weights};
use crate::{Error, Result};

/// An open Hugging Face model directory.
#[derive(Debug)]
pub struct HfModel {
    dir: PathBuf,
    config_path: PathBuf,
    config: Value,
    shards: Vec<SafetensorsFile>,
    /// Tensor name → (shard, position in the shard's entries).
    index: HashMap<String, (usize, usize)>,
    /// Tensor names in order: shard by shard, data order within each.
    order: Vec<String>,
    /// Dequantizing view when config.json's `quantization_config` packs weights
    /// (compressed-tensors, GPTQ): see `quantized_dir.rs`.
    quant: Option<QuantView>,
}

/// Reads and parses a JSON file, naming it in every error.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::corrupt(path, format!("not valid JSON: {e}")))
}

impl HfModel {
    /// Opens a directory holding `config.json` and safetensors weights.
    pub fn open(dir: &Path) -> Result<HfModel> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory")));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::corrupt(dir, "not a Hugging Face model directory: config.json is missing"));
        }
        let config = read_json(&config_path)?;
        if !config.is_object() {
            return Err(Error::corrupt(&config_path, "expected a JSON object"));
        }

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        let mut order = Vec::new();
        if index_path.exists() {
            let idx = read_json(&index_path)?;
            let map = idx.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::Config {
                path: index_path.clone(),
                key: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
            // Shards in first-mention order of their sorted names, so the order is stable.
            let mut shard_names: Vec<&str> = Vec::new();
            for (tensor, shard) in map {
                let shard = shard.as_str().ok_or_else(|| Error::Config {
                    path: index_path.clone(),
                    key: format!("weight_map.{tensor}"),
                    msg: "shard name is not a string".into(),
                })?;
                if Path::new(shard).components().count() != 1 || shard.contains("..") {
                    return Err(Error::Config {
                        path: index_path.clone(),
                        key: format!("weight_map.{tensor}"),
                        msg: format!("shard `{shard}` is not a plain file name"),
                    });
                }
                if !shard_names.contains(&shard) {
                    shard_names.push(shard);
                }
            }
            shard_names.sort_unstable();
            for name in &shard_names {
                let p = dir.join(name);
                if !p.exists() {
                    return Err(Error::corrupt(
                        &index_path,
                        format!("names shard `{name}`, which does not exist in {}", dir.display()),
                    ));
                }
                shards.push(SafetensorsFile::open(&p)?);
            }
            for (si, shard) in shards.iter().enumerate() {
                for (ti, t) in shard.entries().iter().enumerate() {
                    if index.insert(t.name.clone(), (si, ti)).is_some() {
                        return Err(Error::Tensor {
                            path: shard.path().to_path_buf(),
                            tensor: t.name.clone(),
                            msg: "appears in more than one shard".into(),
                        });
                    }
                    order.push(t.name.clone());
                }
            }
            for (tensor, shard) in map {
                match index.get(tensor) {
                    Some(&(si, _)) if shard.as_str() == shards[si].path().file_name().and_then(|n| n.to_str()) => {}
                    _ => {
                        return Err(Error::Tensor {
                            path: index_path.clone(),
                            tensor: tensor.clone(),
                            msg: format!("listed in shard {shard}, but that shard does not hold it"),
                        })
                    }
                }
            }
        } else if single.exists() {
            let f = SafetensorsFile::open(&single)?;
            for (ti, t) in f.entries().iter().enumerate() {
                index.insert(t.name.clone(), (0, ti));
                order.push(t.name.clone());
            }
            shards.push(f);
        } else {
            return Err(Error::corrupt(dir, "has neither model.safetensors nor model.safetensors.index.json"));
        }
        let mut model = HfModel { dir: dir.to_path_buf(), config_path, config, shards, index, order, quant: None };
        model.quant = QuantView::detect(&model)?;
        Ok(model)
    }

    /// Reads a nested code set (written by `quantsmith quantize --nested`) at `bits` of
    /// precision from now on: every weight config.json lists under
    /// `quantsmith.recipe.nested` (weight → its bit widths) is read at its top `bits` bits. The
    /// error names the key or the weight when the directory holds no such set or a weight was
    /// not nested at that width.
    pub fn slice_nested(&mut self, bits: u32) -> Result<()> {
        let key = "quantsmith.recipe.nested";
        let cfg = self.config_path.clone();
        let err = |msg: String| Error::Config { path: cfg.clone(), key: key.into(), msg };
        let nested = self
            .config
            .pointer("/quantsmith/recipe/nested")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                err("missing: this model holds no nested code set (`quantsmith quantize --nested 8,4,2` writes one); --slice reads only such models".into())
            })?
            .clone();
        let Some(view) = self.quant.as_mut() else {
            return Err(err("the model's weights are not stored as integer codes (no quantization_config)".into()));
        };
        for (name, list) in &nested {
            let widths: Vec<u32> = list
                .as_array()
                .map(|a| a.iter().filter_map(|b| b.as_u64()).map(|b| b as u32).collect())
                .unwrap_or_default();
            if widths.is_empty() {
                return Err(err(format!("`{name}`: expected a list of bit widths, found {list}")));
            }
            if !widths.contains(&bits) {
                return Err(err(format!(
                    "weight `{name}` was nested at {} bits, not {bits}: --slice takes one of those",
                    widths.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                )));
            }
            view.slice(name, bits).map_err(|e| Error::Tensor {
                path: self.dir.clone(),
                tensor: name.clone(),
                msg: format!("cannot be read at {bits} bits: {e}"),
            })?;
        }
        Ok(())
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of config.json.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The parsed config.json.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The open safetensors files (one unless sharded).
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// Every tensor entry, including dtypes quantsmith does not compute with (integer buffers
    /// such as BERT's `position_ids`), in file order; the packed parts of quantized weights
    /// are left out (their dequantized weights are in `tensors()`).
    pub fn entries(&self) -> Vec<&StTensor> {
        self.order
            .iter()
            .filter(|n| !self.quant.as_ref().is_some_and(|q| q.hides(n)))
            .filter_map(|n| self.entry(n))
            .collect()
    }

    /// Every tensor entry of the files, packed parts included.
    pub fn file_entries(&self) -> Vec<&StTensor> {
        self.order.iter().filter_map(|n| self.entry(n)).collect()
    }

    /// The quantization method whose packed weights are dequantized on load
    /// (`compressed-tensors`, `gptq`), if any.
    pub fn quant_method(&self) -> Option<&str> {
        self.quant.as_ref().map(QuantView::method)
    }

    /// The shard holding a tensor entry.
    pub fn shard_of(&self, name: &str) -> Result<&SafetensorsFile> {
        match self.index.get(name) {
            Some(&(s, _)) => Ok(&self.shards[s]),
            None => {
                Err(Error::Tensor { path: self.dir.clone(), tensor: name.to_string(), msg: "not in this model".into() })
            }
        }
    }

    /// Raw bytes of a tensor entry, whatever its dtype.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        self.shard_of(name)?.tensor_bytes(name)
    }

    /// The `__metadata__` strings of the shard holding a tensor entry.
    pub fn shard_metadata(&self, name: &str) -> Option<&HashMap<String, String>> {
        self.shard_of(name).ok().map(|s| s.metadata())
    }

    /// One tensor entry, whatever its dtype.
    pub fn entry(&self, name: &str) -> Option<&StTensor> {
        self.index.get(name).map(|&(s, t)| &self.shards[s].entries()[t])
    }

    /// The `model_type` (e.g. `llama`, `bert`) or else the first of `architectures`.
    pub fn architecture(&self) -> Result<&str> {
        if let Some(t) = self.config.get("model_type").and_then(Value::as_str) {
            return Ok(t);
        }
        self.config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| self.config_err("model_type", "missing (and no `architectures` list either)".into()))
    }

    fn config_err(&self, key: &str, msg: String) -> Error {
        Error::Config { path: self.config_path.clone(), key: key.to_string(), msg }
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.config.get(key).filter(|v| !v.is_null()).ok_or_else(|| self.config_err(key, "missing".into()))
    }

    /// A required non-negative integer key.
    pub fn config_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.config_err(key, format!("expected a non-negative integer, found {v}")))
    }

    /// A required number key (integers accepted).
    pub fn config_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.config_err(key, format!("expected a number, found {v}")))
    }

    /// A required string key.
    pub fn config_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.config_err(key, format!("expected a string, found {v}")))
    }

    /// A required bool key.
    pub fn config_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.config_err(key, format!("expected true or false, found {v}")))
    }

    /// `config_usize` for an optional key: `Ok(None)` when absent or null.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.config.get(key).filter(|v| !v.is_null()).map(|_| self.config_usize(key)).transpose()
    }

    /// `config_f64` for an optional key.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.config.get(key).filter(|v| !v.is_null()).map(|_| self.config_f64(key)).transpose()
    }

    /// `config_str` for an optional key.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.config.get(key).filter(|v| !v.is_null()).map(|_| self.config_str(key)).transpose()
    }

    /// `config_bool` for an optional key.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.config.get(key).filter(|v| !v.is_null()).map(|_| self.config_bool(key)).transpose()
    }

    /// Reads another JSON file of the directory (`modules.json`, `1_Pooling/config.json`, ...),
    /// or `Ok(None)` when it does not exist.
    pub fn read_json_opt(&self, rel: &str) -> Result<Option<Value>> {
        let p = self.dir.join(rel);
        if p.exists() {
            read_json(&p).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl TensorSource for HfModel {
    /// The tensors quantsmith can compute with (F32/F16/BF16); see `entries` for all.
    fn tensors(&self) -> Vec<TensorInfo> {
        if let Some(q) = &self.quant {
            return q.tensors(|n| self.entry(n).and_then(StTensor::info));
        }
        self.entries().into_iter().filter_map(StTensor::info).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        if let Some(q) = &self.quant {
            return q.info(name, |n| self.entry(n).and_then(StTensor::info));
        }
        self.entry(name).and_then(StTensor::info)
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(r) = self.quant.as_ref().and_then(|q| q.load_f32(self, name)) {
            return r;
        }
        match self.index.get(name) {
            Some(&(s, _)) => self.shards[s].load_f32(name),
            None => {
                Err(Error::Tensor { path: self.dir.clone(), tensor: name.to_string(), msg: "not in this model".into() })
            }
        }
    }

    fn load_weights(&self, name: &str) -> Result<Weights> {
        if let Some(r) = self.quant.as_ref().and_then(|q| q.load_f32(self, name)) {
            return r.map(Weights::from);
        }
        match self.index.get(name) {
            Some(&(s, _)) => self.shards[s].load_weights(name),
            None => self.load_f32(name).map(Weights::from),
        }
    }

    fn absent_reason(&self, name: &str) -> Option<String> {
        let e = self.entry(name)?;
        let file = self.shard_of(name).ok().map(|s| s.path().display().to_string()).unwrap_or_default();
        Some(format!(
            "stored as {} in {file}: a dtype quantsmith does not read as weights (F32, F16 and BF16 are; quantized checkpoints are read through their quantization_config)",
            e.dtype
        ))
    }
}
