//! Tensors as the readers expose them: described up front, materialized one at a time.

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
    /// Why `name` has no [`TensorSource::info`] although the checkpoint has an entry of that
    /// name (an unsupported dtype, say); `None` when it is simply absent.
    fn absent_reason(&self, _name: &str) -> Option<String> {
        None
    }
}
