//! Checkpoint readers and writers: GGUF, safetensors, Hugging Face directories.

pub mod convert;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod quantized_dir;
pub mod safetensors;

use std::io::Read;
use std::path::Path;

pub use gguf::{GgufArray, GgufFile, GgufTensor, GgufValue};
pub use gguf_write::{planned_file_bytes, GgufWriter};
pub use hf::HfModel;

use crate::tensor::{TensorInfo, TensorSource};
use crate::{Error, Result};

/// A model checkpoint of either kind quantsmith reads.
#[derive(Debug)]
pub enum ModelFile {
    /// A GGUF file (llama.cpp).
    Gguf(GgufFile),
    /// A Hugging Face directory (config.json + safetensors).
    Hf(HfModel),
}

impl ModelFile {
    /// Opens a path: a directory as a Hugging Face model, a file starting with `GGUF` as GGUF.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return HfModel::open(path).map(ModelFile::Hf);
        }
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
        if n == 4 && magic == gguf::GGUF_MAGIC {
            return GgufFile::open(path).map(ModelFile::Gguf);
        }
        let hint = if path.extension().is_some_and(|e| e == "safetensors") {
            "; for safetensors weights pass the directory holding config.json and the .safetensors file".to_string()
        } else if n == 0 {
            " (the file is empty)".to_string()
        } else {
            format!(
                " (a GGUF file starts with the magic bytes \"GGUF\"; this one starts with {})",
                magic[..n].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
            )
        };
        Err(Error::corrupt(path, format!("not a model: neither a GGUF file nor a Hugging Face model directory{hint}")))
    }

    /// Reads a nested code set at `bits` of precision ([`HfModel::slice_nested`]); GGUF files
    /// hold none.
    pub fn slice_nested(&mut self, bits: u32) -> Result<()> {
        match self {
            ModelFile::Hf(h) => h.slice_nested(bits),
            ModelFile::Gguf(g) => Err(Error::corrupt(
                g.path(),
                "a GGUF file holds no nested code set (nested models are compressed-tensors or GPTQ directories)",
            )),
        }
    }

    /// The tensors of the checkpoint.
    pub fn source(&self) -> &dyn TensorSource {
        match self {
            ModelFile::Gguf(g) => g,
            ModelFile::Hf(h) => h,
        }
    }

    /// The file or directory the model was opened from.
    pub fn path(&self) -> &Path {
        match self {
            ModelFile::Gguf(g) => g.path(),
            ModelFile::Hf(h) => h.dir(),
        }
    }

    /// The architecture name: GGUF `general.architecture`, or config.json's `model_type`.
    pub fn architecture(&self) -> Result<&str> {
        match self {
            ModelFile::Gguf(g) => g.architecture(),
            ModelFile::Hf(h) => h.architecture(),
        }
    }
}

/// What a checkpoint holds, for `inspect`: its weights and their storage cost.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// Short name of the container (`GGUF v3`, `safetensors (2 files)`).
    pub format: String,
    /// Architecture name (`llama`, `bert`).
    pub architecture: String,
    /// Every tensor quantsmith computes with, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Entries that are not weights (integer buffers such as `position_ids`): name, dtype,
    /// shape, bytes.
    pub other: Vec<(String, String, Vec<usize>, usize)>,
    /// Sum of the weights' element counts.
    pub parameters: usize,
    /// Sum of the weights' stored bytes.
    pub bytes: usize,
}

impl Inventory {
    /// Average stored bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        if self.parameters == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.parameters as f64
        }
    }
}

impl ModelFile {
    /// Lists the checkpoint's tensors with their counts and sizes.
    pub fn inventory(&self) -> Result<Inventory> {
        let tensors = self.source().tensors();
        let (format, other) = match self {
            ModelFile::Gguf(g) => (format!("GGUF v{}", g.version()), Vec::new()),
            ModelFile::Hf(h) => {
                let n = h.shards().len();
                let format = if n == 1 { "safetensors".to_string() } else { format!("safetensors ({n} files)") };
                let format = match h.quant_method() {
                    Some(m) => format!("{format}, {m}"),
                    None => format,
                };
                let other = h
                    .entries()
                    .into_iter()
                    .filter(|e| e.dtype().is_none())
                    .map(|e| (e.name.clone(), e.dtype.clone(), e.shape.clone(), e.n_bytes))
                    .collect();
                (format, other)
            }
        };
        Ok(Inventory {
            format,
            architecture: self.architecture()?.to_string(),
            parameters: tensors.iter().map(TensorInfo::numel).sum(),
            bytes: tensors.iter().map(|t| t.n_bytes).sum(),
            tensors,
            other,
        })
    }
}

/// Drops the whole pages of `start..start + len` of a read-only file mapping from this
/// process's resident set once a tensor has been copied out of it: a model read tensor by
/// tensor then does not keep the whole file resident (the pages are read again, from the page
/// cache or the file, if touched later). Rounded inward to 64 KiB so that it is aligned for
/// every page size up to that; failures are ignored (it is only advice).
pub(crate) fn release_pages(map: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        const ALIGN: usize = 65536;
        let a = start.div_ceil(ALIGN) * ALIGN;
        let b = (start + len) / ALIGN * ALIGN;
        if b > a && b <= map.len() {
            // SAFETY: the mapping is read-only and file-backed: dropping its pages cannot lose
            // data, and any later access (including through outstanding slices) faults the
            // same bytes back in from the file.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
        }
    }
}

/// Bytes on disk of a file, or of every file under a directory: the measure of a whole output.
pub fn path_bytes(p: &Path) -> Result<u64> {
    let m = std::fs::metadata(p).map_err(|e| crate::Error::io(p, e))?;
    if !m.is_dir() {
        return Ok(m.len());
    }
    let mut n = 0;
    for e in std::fs::read_dir(p).map_err(|e| crate::Error::io(p, e))? {
        let e = e.map_err(|e| crate::Error::io(p, e))?;
        n += path_bytes(&e.path())?;
    }
    Ok(n)
}

/// Opens a model by path, or by built-in name (`smollm2`, `minilm`), fetching it on first use.
pub fn open_model(name_or_path: &str) -> Result<ModelFile> {
    let path = crate::fetch::resolve(name_or_path)?;
    ModelFile::open(&path)
}
