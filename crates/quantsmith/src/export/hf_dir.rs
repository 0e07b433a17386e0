//! The Hugging Face directory writer every directory layout shares: safetensors tensors
//! streamed into shard files as they come, the shard index, config.json with the layout's
//! `quantization_config`, and the side files (tokenizer.json, ...).
//!
//! Everything is written into a temporary directory beside the output and renamed onto it when
//! complete, so a failed or killed export never leaves a half directory at the output path. An
//! existing non-empty output directory is refused unless `force`, and then replaced only once
//! the new one is complete; a file at the output path is always refused.
//!
//! Each shard's tensor data is spooled to a file as tensors arrive (only one tensor is in
//! memory at a time); when a shard is full its header is written and the data copied after it.
//! The safetensors header (u64 LE length, JSON `{name: {dtype, shape, data_offsets}}`,
//! `__metadata__: {"format": "pt"}`, padded with spaces to 8 bytes) is written here rather
//! than by the `safetensors` crate, whose serializer wants every tensor in memory at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{Error, Result};

/// A safetensors element type this writer emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// FP8 E4M3FN (`torch.float8_e4m3fn`).
    F8E4m3,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
}

impl StDtype {
    /// The dtype string of the safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::Bf16 => "BF16",
            StDtype::F8E4m3 => "F8_E4M3",
            StDtype::I32 => "I32",
            StDtype::I64 => "I64",
            StDtype::I8 => "I8",
            StDtype::U8 => "U8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StDtype::F32 | StDtype::I32 => 4,
            StDtype::F16 | StDtype::Bf16 => 2,
            StDtype::I64 => 8,
            StDtype::F8E4m3 | StDtype::I8 | StDtype::U8 => 1,
        }
    }
}

/// A plain float type tensors are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FloatDtype {
    /// 32-bit float (exact for every dequantized value).
    #[default]
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl FloatDtype {
    /// Parses `f32`, `f16` / `float16`, `bf16` / `bfloat16`.
    pub fn parse(s: &str) -> Result<FloatDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(FloatDtype::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(FloatDtype::F16),
            "bf16" | "bfloat16" => Ok(FloatDtype::Bf16),
            _ => Err(Error::Other(format!("unknown float dtype `{s}` (expected f32, f16 or bf16)"))),
        }
    }

    /// The safetensors dtype.
    pub fn st(self) -> StDtype {
        match self {
            FloatDtype::F32 => StDtype::F32,
            FloatDtype::F16 => StDtype::F16,
            FloatDtype::Bf16 => StDtype::Bf16,
        }
    }

    /// The name PyTorch gives it (`torch_dtype` in config.json).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::F16 => "float16",
            FloatDtype::Bf16 => "bfloat16",
        }
    }

    /// Short name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "f32",
            FloatDtype::F16 => "f16",
            FloatDtype::Bf16 => "bf16",
        }
    }

    /// The float type of a ggml storage that keeps plain values (F32/F16/BF16), if it is one.
    pub fn of_ggml(t: formats::ggml::GgmlType) -> Option<FloatDtype> {
        use formats::ggml::GgmlType;
        match t {
            GgmlType::F32 => Some(FloatDtype::F32),
            GgmlType::F16 => Some(FloatDtype::F16),
            GgmlType::Bf16 => Some(FloatDtype::Bf16),
            _ => None,
        }
    }

    /// Values as little-endian bytes of this type (f16/bf16 round to nearest even).
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            FloatDtype::F32 => f32_bytes(v),
            FloatDtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            FloatDtype::Bf16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        }
    }

    /// Whether every value converts to this type exactly (finite values only).
    pub fn holds_exactly(self, v: &[f32]) -> bool {
        match self {
            FloatDtype::F32 => true,
            FloatDtype::F16 => v.iter().all(|&x| half::f16::from_f32(x).to_f32() == x),
            FloatDtype::Bf16 => v.iter().all(|&x| half::bf16::from_f32(x).to_f32() == x),
        }
    }
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    f32_le(v).into_owned()
}

/// f32 values as little-endian bytes, borrowed where the machine is little-endian (no copy:
/// what writing a large buffer needs).
pub fn f32_le(v: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: the bytes of `v` (no padding; any byte is a valid u8, whose alignment is 1),
        // borrowed for as long as `v`.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v))
        })
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// i32 values as little-endian bytes.
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor of a shard: name, dtype, shape, byte range in the shard's data.
struct Entry {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

/// The shard being filled: its data spool and its entries.
struct Spool {
    path: PathBuf,
    file: BufWriter<File>,
    entries: Vec<Entry>,
    bytes: u64,
    metadata: BTreeMap<String, String>,
}

/// Writes a Hugging Face model directory; see the module documentation.
pub struct HfDirWriter {
    out: PathBuf,
    tmp: PathBuf,
    force: bool,
    max_shard_bytes: u64,
    /// Completed shards (file names inside `tmp`, before the final renaming) and their tensors.
    shards: Vec<(String, Vec<String>)>,
    current: Option<Spool>,
    names: std::collections::HashSet<String>,
    total_size: u64,
    finished: bool,
}

impl std::fmt::Debug for HfDirWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfDirWriter").field("out", &self.out).field("tmp", &self.tmp).finish()
    }
}

/// Refuses an output path that is a file, or a non-empty directory without `force`.
pub fn check_destination(out: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, e)),
        Ok(m) if !m.is_dir() => Err(Error::Other(format!(
            "{}: exists and is not a directory (this layout writes a directory); remove it or choose another --out",
            out.display()
        ))),
        Ok(_) => {
            let non_empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some();
            if non_empty && !force {
                Err(Error::Other(format!(
                    "{}: directory exists and is not empty; pass --force to replace it (it is replaced only once the new one is complete)",
                    out.display()
                )))
            } else {
                Ok(())
            }
        }
    }
}

impl HfDirWriter {
    /// Starts a directory for `out`: checks the destination and makes the temporary directory
    /// beside it. `max_shard_bytes` 0 writes one `model.safetensors`.
    pub fn create(out: &Path, force: bool, max_shard_bytes: u64) -> Result<HfDirWriter> {
        check_destination(out, force)?;
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Other(format!("{}: output path has no usable file name", out.display())))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::io(
                &parent,
                std::io::Error::new(std::io::ErrorKind::NotFound, "the output's parent directory does not exist"),
            ));
        }
        // A fixed name: a killed run's leftover is removed by the next run.
        let tmp = parent.join(format!(".{name}.writing"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(HfDirWriter {
            out: out.to_path_buf(),
            tmp,
            force,
            max_shard_bytes,
            shards: Vec::new(),
            current: None,
            names: Default::default(),
            total_size: 0,
            finished: false,
        })
    }

    /// The temporary directory being filled.
    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Adds one tensor (little-endian bytes of `dtype`, row-major `shape`).
    pub fn add(&mut self, name: &str, dtype: StDtype, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let numel: usize = shape.iter().product();
        if numel * dtype.size() != bytes.len() {
            return Err(Error::Other(format!(
                "tensor `{name}`: {} {shape:?} needs {} bytes, got {}",
                dtype.name(),
                numel * dtype.size(),
                bytes.len()
            )));
        }
        if name == "__metadata__" || !self.names.insert(name.to_string()) {
            return Err(Error::Other(format!("tensor `{name}` is written twice (or is a reserved name)")));
        }
        let n = bytes.len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| self.max_shard_bytes > 0 && !c.entries.is_empty() && c.bytes + n > self.max_shard_bytes);
        if full {
            self.close_shard()?;
        }
        if self.current.is_none() {
            let path = self.tmp.join(format!("shard-{:05}.spool", self.shards.len() + 1));
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.current = Some(Spool {
                path,
                file: BufWriter::with_capacity(1 << 20, file),
                entries: Vec::new(),
                bytes: 0,
                metadata: BTreeMap::new(),
            });
        }
        let cur = self.current.as_mut().expect("a shard is open");
        cur.file.write_all(bytes).map_err(|e| Error::io(&cur.path, e))?;
        cur.entries.push(Entry {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            begin: cur.bytes,
            end: cur.bytes + n,
        });
        cur.bytes += n;
        self.total_size += n;
        Ok(())
    }

    /// Adds a `__metadata__` string to the shard holding the tensor added last (safetensors
    /// readers ignore keys they do not know).
    pub fn add_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        let cur = self.current.as_mut().ok_or_else(|| Error::Other("metadata before any tensor".into()))?;
        if key == "format" {
            return Err(Error::Other("`format` is the safetensors framework key".into()));
        }
        cur.metadata.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Writes the current shard as `shard-N.safetensors` (header, then the spooled data).
    fn close_shard(&mut self) -> Result<()> {
        let Some(spool) = self.current.take() else { return Ok(()) };
        let Spool { path, file, entries, metadata, .. } = spool;
        let file = file.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        drop(file);
        let mut header = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        meta.insert("format".into(), json!("pt"));
        for (k, v) in metadata {
            meta.insert(k, json!(v));
        }
        header.insert("__metadata__".into(), Value::Object(meta));
        for e in &entries {
            header.insert(
                e.name.clone(),
                json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [e.begin, e.end]}),
            );
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::Other(e.to_string()))?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let index = self.shards.len() + 1;
        let name = format!("shard-{index:05}.safetensors");
        let dest = self.tmp.join(&name);
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&dest).map_err(|e| Error::io(&dest, e))?);
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(|e| Error::io(&dest, e))?;
        w.write_all(&h).map_err(|e| Error::io(&dest, e))?;
        let mut src = File::open(&path).map_err(|e| Error::io(&path, e))?;
        std::io::copy(&mut src, &mut w).map_err(|e| Error::io(&dest, e))?;
        let f = w.into_inner().map_err(|e| Error::io(&dest, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&dest, e))?;
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        self.shards.push((name, entries.into_iter().map(|e| e.name).collect()));
        Ok(())
    }

    /// Completes the directory: the last shard, the index (several shards), config.json (the
    /// given object with `quantization_config` set when given), any other JSON files and the
    /// side files, then renames it onto the output (replacing an old one only now). Returns
    /// the bytes of every file written.
    pub fn finish(
        mut self,
        config: &Value,
        quantization_config: Option<Value>,
        json_files: &[(String, Value)],
        side_files: &[(String, Vec<u8>)],
    ) -> Result<u64> {
        self.close_shard()?;
        let n = self.shards.len();
        let mut weight_map = BTreeMap::new();
        for (i, (tmp_name, tensors)) in self.shards.iter().enumerate() {
            let final_name = if n <= 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            };
            let (a, b) = (self.tmp.join(tmp_name), self.tmp.join(&final_name));
            std::fs::rename(&a, &b).map_err(|e| Error::io(&a, e))?;
            for t in tensors {
                weight_map.insert(t.clone(), final_name.clone());
            }
        }
        if n == 0 {
            return Err(Error::Other(format!("{}: no tensors to write", self.out.display())));
        }
        if n > 1 {
            let index = json!({"metadata": {"total_size": self.total_size}, "weight_map": weight_map});
            self.write_json("model.safetensors.index.json", &index)?;
        }
        let mut cfg = config.clone();
        let obj = cfg.as_object_mut().ok_or_else(|| Error::Other("config.json: expected a JSON object".into()))?;
        obj.remove("quantization_config");
        if let Some(q) = quantization_config {
            obj.insert("quantization_config".into(), q);
        }
        self.write_json("config.json", &cfg)?;
        for (name, v) in json_files {
            self.write_json(name, v)?;
        }
        for (name, bytes) in side_files {
            let p = self.side_path(name)?;
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }
        let bytes = dir_bytes(&self.tmp)?;
        self.install()?;
        self.finished = true;
        Ok(bytes)
    }

    /// A side file's path inside the temporary directory; names must stay inside it and must
    /// not overwrite what the writer itself makes.
    fn side_path(&self, name: &str) -> Result<PathBuf> {
        let p = Path::new(name);
        let plain = !name.is_empty()
            && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
            && !(name.ends_with(".safetensors") || name == "config.json" || name == "model.safetensors.index.json");
        if !plain {
            return Err(Error::Other(format!(
                "side file `{name}`: not a relative path of its own inside the model directory"
            )));
        }
        Ok(self.tmp.join(p))
    }

    fn write_json(&self, name: &str, v: &Value) -> Result<()> {
        let p = self.tmp.join(name);
        let mut text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
        text.push('\n');
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    }

    /// Moves the finished temporary directory onto the output.
    fn install(&self) -> Result<()> {
        // Checked again: the destination may have appeared while the tensors were written.
        check_destination(&self.out, self.force)?;
        let old = if self.out.exists() {
            let parent = self.tmp.parent().unwrap_or(Path::new("."));
            let name = self.out.file_name().and_then(|n| n.to_str()).unwrap_or("out");
            let old = parent.join(format!(".{name}.old"));
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&self.out, &old).map_err(|e| Error::io(&self.out, e))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
            if let Some(old) = &old {
                let _ = std::fs::rename(old, &self.out);
            }
            return Err(Error::io(&self.out, e));
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for HfDirWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.current = None;
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let m = e.metadata().map_err(|x| Error::io(e.path(), x))?;
        total += if m.is_dir() { dir_bytes(&e.path())? } else { m.len() };
    }
    Ok(total)
}

/// The Hugging Face name of a canonical tensor name (falls back to the name itself).
pub fn hf_name<'a>(model: &'a super::ExportModel, canonical: &'a str) -> &'a str {
    model.hf_names.get(canonical).map(String::as_str).unwrap_or(canonical)
}

/// The module of a quantized weight's Hugging Face name (`model.layers.0.mlp.up_proj.weight`
/// → `model.layers.0.mlp.up_proj`); quantized layouts store a module's parts beside it.
pub fn module_of<'a>(hf_name: &'a str, canonical: &str) -> Result<&'a str> {
    hf_name.strip_suffix(".weight").ok_or_else(|| {
        Error::Other(format!(
            "tensor `{canonical}` (`{hf_name}`): a quantized tensor must be a module's `.weight` in this layout"
        ))
    })
}

/// Whether a canonical (GGUF-spelt) name is an embedding table rather than a linear layer.
pub fn is_embedding(canonical: &str) -> bool {
    canonical.contains("embd") || canonical.starts_with("token_types") || canonical.contains("embed")
}

/// The float type a plain tensor is written in: its storage's (F32/F16/BF16), else f32.
pub fn plain_dtype(storage: &super::Storage) -> FloatDtype {
    storage.ggml().and_then(FloatDtype::of_ggml).unwrap_or(FloatDtype::F32)
}

/// Whether a tensor is kept as plain floats (float storage, or plain data of any storage the
/// layout does not quantize itself).
pub fn is_plain(t: &super::QuantTensor) -> bool {
    t.storage.is_float()
}

/// The codes of a tensor whose storage is a format: its solver's codes, or, for plain data
/// handed over with a format storage, the format's own round-to-nearest quantization (as the
/// GGUF exporter quantizes plain data given a ggml type).
pub fn codes_of(t: &super::QuantTensor) -> Result<std::borrow::Cow<'_, formats::format::Quantized>> {
    use super::{Storage, TensorData};
    let (rows, cols) = t.matrix();
    let q = match (&t.data, &t.storage) {
        (TensorData::Codes(q), Storage::Format(_)) => std::borrow::Cow::Borrowed(q),
        (TensorData::Float(v), Storage::Format(f)) => std::borrow::Cow::Owned(
            f.quantize(v, rows, cols, None).map_err(|e| Error::Other(format!("tensor `{}`: {e}", t.name)))?,
        ),
        _ => {
            return Err(Error::Other(format!("tensor `{}`: data does not match storage {}", t.name, t.storage.name())))
        }
    };
    if q.rows != rows || q.cols != cols {
        return Err(Error::Other(format!(
            "tensor `{}`: codes are {}x{}, the shape says {rows}x{cols}",
            t.name, q.rows, q.cols
        )));
    }
    Ok(q)
}

/// The values a runtime computes with for any tensor: dequantized codes, or plain data
/// quantized first when its storage is a quantized type (ggml or format).
pub fn runtime_values(t: &super::QuantTensor) -> Result<Vec<f32>> {
    use super::{Storage, TensorData};
    let (rows, cols) = t.matrix();
    let bad = |e: formats::FormatError| Error::Other(format!("tensor `{}`: {e}", t.name));
    match (&t.data, &t.storage) {
        (TensorData::Float(v), Storage::Format(f)) => f.fake_quantize(v, rows, cols, None).map_err(bad),
        (TensorData::Float(v), Storage::Ggml(ty)) if ty.block_size() > 1 => {
            let b = formats::ggml::quantize(*ty, v, cols, None).map_err(bad)?;
            let mut out = vec![0f32; v.len()];
            formats::ggml::dequantize(*ty, &b, &mut out).map_err(bad)?;
            Ok(out)
        }
        _ => t.dequantize(),
    }
}

/// Writes a tensor kept as plain floats (any storage's dequantized values) in `dtype`.
pub fn add_float(w: &mut HfDirWriter, name: &str, shape: &[usize], values: &[f32], dtype: FloatDtype) -> Result<()> {
    w.add(name, dtype.st(), shape, &dtype.encode(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafetensorsFile;

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn single_file_and_config() {
        let d = tmpdir();
        let out = d.path().join("m");
        let mut w = HfDirWriter::create(&out, false, 0).unwrap();
        w.add("a.weight", StDtype::F32, &[2, 2], &f32_bytes(&[1.0, 2.0, 3.0, 4.0])).unwrap();
        w.add("b.qweight", StDtype::I32, &[1], &i32_bytes(&[-5])).unwrap();
        let n = w
            .finish(
                &json!({"model_type": "llama", "quantization_config": {"old": 1}}),
                Some(json!({"quant_method": "x"})),
                &[],
                &[("tokenizer.json".into(), b"{}".to_vec())],
            )
            .unwrap();
        assert!(n > 0);
        let cfg: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["quantization_config"], json!({"quant_method": "x"}));
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), b"{}");
        let f = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
        assert_eq!(f.load_f32("a.weight").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f.tensor_bytes("b.qweight").unwrap(), (-5i32).to_le_bytes());
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        assert!(!out.join("model.safetensors.index.json").exists());
        // Nothing left beside the output.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn shards_with_index() {
        let d = tmpdir();
        let out = d.path().join("m");
        let mut w = HfDirWriter::create(&out, false, 20).unwrap();
        for i in 0..5 {
            w.add(&format!("t{i}"), StDtype::F32, &[3], &f32_bytes(&[i as f32; 3])).unwrap();
        }
        w.finish(&json!({}), None, &[], &[]).unwrap();
        let idx: Value =
            serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(idx["metadata"]["total_size"], json!(60));
        assert_eq!(idx["weight_map"]["t0"], json!("model-00001-of-00005.safetensors"));
        assert_eq!(idx["weight_map"]["t4"], json!("model-00005-of-00005.safetensors"));
        let m = crate::io::hf::HfModel::open(&out).unwrap();
        use crate::tensor::TensorSource;
        assert_eq!(m.load_f32("t3").unwrap(), vec![3.0; 3]);
        assert_eq!(m.shards().len(), 5);
    }

    #[test]
    fn destination_rules() {
        let d = tmpdir();
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(HfDirWriter::create(&file, true, 0).is_err());
        let full = d.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("old.txt"), b"x").unwrap();
        let e = HfDirWriter::create(&full, false, 0).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        // With force the old directory survives a failed export...
        let w = HfDirWriter::create(&full, true, 0).unwrap();
        drop(w);
        assert!(full.join("old.txt").exists());
        // ... and is replaced by a complete one.
        let mut w = HfDirWriter::create(&full, true, 0).unwrap();
        w.add("x", StDtype::F16, &[1], &[0, 0x3c]).unwrap();
        w.finish(&json!({}), None, &[], &[]).unwrap();
        assert!(!full.join("old.txt").exists());
        assert!(full.join("model.safetensors").exists());
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        // An empty directory is fine without force.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let mut w = HfDirWriter::create(&empty, false, 0).unwrap();
        w.add("x", StDtype::U8, &[2], &[1, 2]).unwrap();
        w.finish(&json!({}), None, &[], &[]).unwrap();
        assert!(empty.join("model.safetensors").exists());
    }

    #[test]
    fn refuses_bad_input() {
        let d = tmpdir();
        let mut w = HfDirWriter::create(&d.path().join("m"), false, 0).unwrap();
        assert!(w.add("x", StDtype::F32, &[2], &[0; 4]).is_err());
        w.add("x", StDtype::F32, &[1], &[0; 4]).unwrap();
        assert!(w.add("x", StDtype::F32, &[1], &[0; 4]).is_err());
        assert!(w.finish(&json!({}), None, &[], &[("../evil".into(), vec![])]).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
