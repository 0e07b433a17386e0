//! safetensors reader, memory-mapped.
//!
//! Layout: u64 little-endian header length N, N bytes of JSON mapping each tensor name to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of the header),
//! an optional `__metadata__` object, then the data. The header is parsed here rather than
//! by the `safetensors` crate so that every error names the file and tensor, and so that
//! tensors of types quantsmith does not compute with (an i64 `position_ids` buffer) are
//! listed rather than rejecting the whole file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::tensor::{DType, TensorInfo, Weights};
use crate::{Error, Result};

/// Headers larger than this are refused (the format's own reference limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// A safetensors dtype name and its element size, for every dtype the format defines.
fn dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// One tensor as the safetensors header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    /// Tensor name.
    pub name: String,
    /// The dtype string of the file (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Byte range of the data, absolute in the file.
    pub start: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl StTensor {
    /// The library's storage type, if quantsmith computes with this dtype.
    pub fn dtype(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::Bf16),
            _ => None,
        }
    }

    /// The library's description, if the dtype is one quantsmith computes with.
    pub fn info(&self) -> Option<TensorInfo> {
        Some(TensorInfo {
            name: self.name.clone(),
            shape: self.shape.clone(),
            dtype: self.dtype()?,
            n_bytes: self.n_bytes,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    tensors: Vec<StTensor>,
    index: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl SafetensorsFile {
    /// Opens a safetensors file and checks its header against the file's size.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(Error::corrupt(path, format!("not a safetensors file: only {len} bytes")));
        }
        // SAFETY: read-only map; see GgufFile::open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut head = [0u8; 8];
        head.copy_from_slice(&mmap[..8]);
        let n = u64::from_le_bytes(head);
        if n > MAX_HEADER || n > len - 8 {
            return Err(Error::corrupt(
                path,
                format!("safetensors header length {n} is larger than the file ({len} bytes) allows"),
            ));
        }
        let header_end = 8 + n as usize;
        let json: serde_json::Value = serde_json::from_slice(&mmap[8..header_end])
            .map_err(|e| Error::corrupt(path, format!("safetensors header is not valid JSON: {e}")))?;
        let obj = json.as_object().ok_or_else(|| Error::corrupt(path, "safetensors header is not a JSON object"))?;
        let data_len = mmap.len() - header_end;

        let mut tensors = Vec::with_capacity(obj.len());
        let mut metadata = HashMap::new();
        for (name, entry) in obj {
            let terr = |msg: String| Error::Tensor { path: path.to_path_buf(), tensor: name.clone(), msg };
            if name == "__metadata__" {
                if let Some(m) = entry.as_object() {
                    for (k, v) in m {
                        metadata.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                    }
                }
                continue;
            }
            let dtype = entry
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| terr("header entry has no `dtype` string".into()))?;
            let size = dtype_size(dtype).ok_or_else(|| terr(format!("unknown safetensors dtype `{dtype}`")))?;
            let shape = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| terr("header entry has no `shape` array".into()))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| terr("`shape` must hold non-negative integers".into()))?;
            let offs = entry
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| terr("header entry needs `data_offsets: [begin, end]`".into()))?;
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let need =
                numel.and_then(|n| n.checked_mul(size)).ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
            let (b, e) = offs;
            if b > e || e - b != need as u64 {
                return Err(terr(format!(
                    "data_offsets [{b}, {e}] hold {} bytes, but {dtype} {shape:?} needs {need}",
                    e.saturating_sub(b)
                )));
            }
            if e > data_len as u64 {
                return Err(terr(format!(
                    "data_offsets [{b}, {e}] run past the end of the data ({data_len} bytes; file truncated?)"
                )));
            }
            tensors.push(StTensor {
                name: name.clone(),
                dtype: dtype.to_string(),
                shape,
                start: header_end + b as usize,
                n_bytes: need,
            });
        }
        // File order is data order; JSON object order is not guaranteed to be.
        tensors.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap: Arc::new(mmap), tensors, index, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor of the header, whatever its dtype, in data order.
    pub fn entries(&self) -> &[StTensor] {
        &self.tensors
    }

    /// One tensor of the header.
    pub fn entry(&self, name: &str) -> Option<&StTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Raw bytes of one tensor, from the memory map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.entry(name).ok_or_else(|| self.terr(name, "not in this file".into()))?;
        Ok(&self.mmap[t.start..t.start + t.n_bytes])
    }

    /// Materializes one tensor as f32 (F32, F16 or BF16 storage).
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.entry(name).ok_or_else(|| self.terr(name, "not in this file".into()))?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; t.numel()];
        let width = match t.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(
                    self.terr(name, format!("dtype {other} is not supported (quantsmith reads F32, F16 and BF16)"))
                )
            }
        };
        // Chunks of 64k values keep both cores busy on an embedding matrix; segments of 8 MiB
        // of the file are released once decoded, so a large tensor is never resident twice.
        const CHUNK: usize = 65536;
        const SEGMENT: usize = 128 * CHUNK;
        for (k, (seg, src)) in out.chunks_mut(SEGMENT).zip(bytes.chunks(SEGMENT * width)).enumerate() {
            match width {
                4 => seg.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK * 4)).for_each(|(d, s)| {
                    for (o, b) in d.iter_mut().zip(s.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }),
                _ if t.dtype == "F16" => seg.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK * 2)).for_each(|(d, s)| {
                    for (o, b) in d.iter_mut().zip(s.chunks_exact(2)) {
                        *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }),
                _ => seg.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK * 2)).for_each(|(d, s)| {
                    for (o, b) in d.iter_mut().zip(s.chunks_exact(2)) {
                        *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }),
            }
            super::release_pages(&self.mmap, t.start + k * SEGMENT * width, src.len());
        }
        super::release_pages(&self.mmap, t.start, t.n_bytes);
        Ok(out)
    }

    /// As [`SafetensorsFile::load_f32`], read in place when stored as aligned F32.
    pub fn load_weights(&self, name: &str) -> Result<Weights> {
        if let Some(t) = self.entry(name).filter(|t| t.dtype == "F32" && t.n_bytes == t.numel() * 4) {
            if let Some(w) = Weights::mapped(&self.mmap, t.start, t.numel()) {
                return Ok(w);
            }
        }
        self.load_f32(name).map(Weights::from)
    }

    fn terr(&self, name: &str, msg: String) -> Error {
        Error::Tensor { path: self.path.clone(), tensor: name.to_string(), msg }
    }
}
