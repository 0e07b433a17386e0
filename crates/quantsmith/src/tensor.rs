//! Tensors as the readers expose them: described up front, materialized one at a time.

use std::sync::Arc;

use crate::Result;

/// Storage type of a tensor in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// A ggml type (GGUF files), including F32/F16/BF16.
    Ggml(formats::ggml::GgmlType),
    /// safetensors F32.
    F32,
    /// safetensors F16.
    F16,
    /// safetensors BF16.
    Bf16,
}

impl DType {
    /// Lower-case name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            DType::Ggml(t) => t.name(),
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

/// Name, shape and storage of one tensor.
///
/// `shape` is outermost first, as in PyTorch / safetensors: a linear layer's weight is
/// `[out_features, in_features]` whether it came from GGUF (whose `ne` lists the innermost
/// dimension first) or from safetensors.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Name in the file's own convention (GGUF or Hugging Face).
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: DType,
    /// Bytes the tensor occupies in its file.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A collection of named tensors, read lazily.
pub trait TensorSource: Send + Sync {
    /// Every tensor, in file order.
    fn tensors(&self) -> Vec<TensorInfo>;
    /// Description of one tensor, if present.
    fn info(&self, name: &str) -> Option<TensorInfo>;
    /// Materializes one tensor as f32, row-major with `info(name).shape`.
    fn load_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// As [`TensorSource::load_f32`], read in place where the file stores the tensor as
    /// aligned f32 (no copy); a copy otherwise.
    fn load_weights(&self, name: &str) -> Result<Weights> {
        self.load_f32(name).map(Weights::from)
    }
    /// Why `name` has no [`TensorSource::info`] although the checkpoint has an entry of that
    /// name (an unsupported dtype, say); `None` when it is simply absent.
    fn absent_reason(&self, _name: &str) -> Option<String> {
        None
    }
}

/// A weight matrix's f32 values, either owned or read in place from a file mapping (an f32
/// tensor of a GGUF file, aligned as the format guarantees): a model evaluated as stored then
/// neither copies its weights nor holds them twice. It reads as a `[f32]`; writing through it
/// (`DerefMut`) first copies mapped values into an owned vector, so code that rewrites weights
/// (rotations, scale folding, solvers) works on either kind unchanged.
#[derive(Clone)]
pub struct Weights(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<f32>),
    Mapped(Arc<MappedF32>),
}

/// `len` f32 values at byte `start` of a read-only mapping. When the last reference goes, the
/// range's pages leave this process's resident set (as a tensor copied out of the map does).
struct MappedF32 {
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
}

impl Drop for MappedF32 {
    fn drop(&mut self) {
        crate::io::release_pages(&self.map, self.start, self.len * 4);
    }
}

impl Weights {
    /// The `len` little-endian f32 values at byte `start` of `map`, in place; `None` where
    /// they cannot be read so (out of bounds, misaligned, or a big-endian host).
    pub(crate) fn mapped(map: &Arc<memmap2::Mmap>, start: usize, len: usize) -> Option<Weights> {
        let end = start.checked_add(len.checked_mul(4)?)?;
        let aligned = (map.as_ptr() as usize + start).is_multiple_of(std::mem::align_of::<f32>());
        if cfg!(target_endian = "big") || end > map.len() || !aligned || len == 0 {
            return None;
        }
        Some(Weights(Repr::Mapped(Arc::new(MappedF32 { map: Arc::clone(map), start, len }))))
    }

    /// Whether the values are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }

    /// The values as an owned vector (a copy when mapped).
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice().to_vec(),
        }
    }
}

impl MappedF32 {
    fn as_slice(&self) -> &[f32] {
        // SAFETY: `Weights::mapped` checked that the range lies inside the mapping and is
        // aligned for f32 on a little-endian host; every bit pattern is a valid f32; the mapping
        // is read-only and lives as long as `self` holds its `Arc`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start).cast::<f32>(), self.len) }
    }
}

impl Default for Weights {
    fn default() -> Weights {
        Weights(Repr::Owned(Vec::new()))
    }
}

impl From<Vec<f32>> for Weights {
    fn from(v: Vec<f32>) -> Weights {
        Weights(Repr::Owned(v))
    }
}

impl std::ops::Deref for Weights {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice(),
        }
    }
}

impl std::ops::DerefMut for Weights {
    fn deref_mut(&mut self) -> &mut [f32] {
        if let Repr::Mapped(m) = &self.0 {
            self.0 = Repr::Owned(m.as_slice().to_vec());
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(_) => unreachable!("made owned above"),
        }
    }
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weights({} values{})", self.len(), if self.is_mapped() { ", mapped" } else { "" })
    }
}

impl PartialEq for Weights {
    fn eq(&self, other: &Weights) -> bool {
        **self == **other
    }
}
