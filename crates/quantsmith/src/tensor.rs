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
    /// As [`TensorSource::load_f32`], but read in place where the file stores the tensor as
    /// aligned f32 (no copy) and kept packed where a reader can multiply it packed (GGUF's
    /// ggml blocks, f16, bf16); a decoded copy otherwise. See [`Weights`].
    fn load_weights(&self, name: &str) -> Result<Weights> {
        self.load_f32(name).map(Weights::from)
    }
    /// Why `name` has no [`TensorSource::info`] although the checkpoint has an entry of that
    /// name (an unsupported dtype, say); `None` when it is simply absent.
    fn absent_reason(&self, _name: &str) -> Option<String> {
        None
    }
}

/// A weight matrix's f32 values: owned; read in place from a file mapping (an f32 tensor of a
/// GGUF or safetensors file, aligned as the formats guarantee); or kept packed as the file
/// stores them (ggml blocks, f16, bf16), decoded a panel of rows at a time by the layer that
/// multiplies them ([`Weights::packed`]). A model evaluated as stored then neither copies its
/// weights nor holds more than their stored size. It reads as a `[f32]` — packed values are
/// decoded whole on the first such read and kept — and writing through it (`DerefMut`) first
/// makes an owned copy, so code that rewrites weights (rotations, scale folding, solvers)
/// works on every kind unchanged.
#[derive(Clone)]
pub struct Weights(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<f32>),
    Mapped(Arc<MappedF32>),
    Packed(Arc<PackedRows>),
}

/// A `[rows, cols]` matrix stored as `ty` rows in a read-only mapping.
pub struct PackedRows {
    map: Arc<memmap2::Mmap>,
    start: usize,
    ty: formats::ggml::GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The whole matrix decoded, once something reads it as a slice.
    dense: std::sync::OnceLock<Vec<f32>>,
}

impl PackedRows {
    /// The storage type.
    pub fn ty(&self) -> formats::ggml::GgmlType {
        self.ty
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Decodes rows `r0..r0 + out.len() / cols` into `out` (in parallel over rows).
    pub fn decode_rows(&self, r0: usize, out: &mut [f32]) -> formats::Result<()> {
        let n = out.len() / self.cols.max(1);
        let a = self.start + r0 * self.row_bytes;
        crate::io::gguf::dequantize_rows(self.ty, &self.map[a..a + n * self.row_bytes], out, self.cols)
    }

    /// Rows per decoded panel: about 1 MiB of f32, a multiple of 16, at least 16.
    pub fn panel_rows(&self) -> usize {
        ((1usize << 18) / self.cols.max(1) / 16 * 16).max(16).min(self.rows)
    }

    fn dense(&self) -> &[f32] {
        self.dense.get_or_init(|| self.decode_all())
    }

    fn decode_all(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.rows * self.cols];
        // The bytes were decoded once when the tensor was loaded (its finiteness check), so
        // this cannot fail unless the file changed underneath; NaN then shows it.
        if self.decode_rows(0, &mut v).is_err() {
            v.fill(f32::NAN);
        }
        v
    }
}

impl Drop for PackedRows {
    fn drop(&mut self) {
        crate::io::release_pages(&self.map, self.start, self.rows * self.row_bytes);
    }
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

    /// A `[rows, cols]` matrix of ggml type `ty` (a block type, f16 or bf16) at byte `start`
    /// of `map`, kept packed; `None` where the bytes do not fit the mapping or rows do not
    /// hold whole blocks.
    pub(crate) fn packed(
        map: &Arc<memmap2::Mmap>,
        start: usize,
        ty: formats::ggml::GgmlType,
        rows: usize,
        cols: usize,
    ) -> Option<Weights> {
        let row_bytes = ty.row_bytes(cols).ok()?;
        let end = start.checked_add(rows.checked_mul(row_bytes)?)?;
        if end > map.len() || rows == 0 || cols == 0 {
            return None;
        }
        Some(Weights(Repr::Packed(Arc::new(PackedRows {
            map: Arc::clone(map),
            start,
            ty,
            rows,
            cols,
            row_bytes,
            dense: std::sync::OnceLock::new(),
        }))))
    }

    /// Number of values (without decoding packed ones).
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Owned(v) => v.len(),
            Repr::Mapped(m) => m.len,
            Repr::Packed(p) => p.rows * p.cols,
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies row `r` of a `[_, out.len()]` matrix into `out`, decoding only that row when
    /// the values are packed.
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> formats::Result<()> {
        match self.packed_rows() {
            Some(p) => p.decode_rows(r, out),
            None => {
                let n = out.len();
                out.copy_from_slice(&self[r * n..(r + 1) * n]);
                Ok(())
            }
        }
    }

    /// Whether the values are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }

    /// The packed rows, while nothing has decoded them whole: a layer then multiplies them a
    /// panel at a time ([`PackedRows::decode_rows`]).
    pub fn packed_rows(&self) -> Option<&PackedRows> {
        match &self.0 {
            Repr::Packed(p) if p.dense.get().is_none() => Some(p),
            _ => None,
        }
    }

    /// The values as an owned vector (a copy when mapped or packed).
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice().to_vec(),
            Repr::Packed(p) => owned_from_packed(p),
        }
    }
}

/// The values of packed rows as an owned vector: the decoded copy itself when nothing else
/// shares it (no second copy), else a copy of it.
fn owned_from_packed(p: Arc<PackedRows>) -> Vec<f32> {
    match Arc::try_unwrap(p) {
        Ok(mut p) => p.dense.take().unwrap_or_else(|| p.decode_all()),
        Err(p) => p.dense().to_vec(),
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
            Repr::Packed(p) => p.dense(),
        }
    }
}

impl std::ops::DerefMut for Weights {
    fn deref_mut(&mut self) -> &mut [f32] {
        if !matches!(self.0, Repr::Owned(_)) {
            let v = std::mem::take(self).into_vec();
            self.0 = Repr::Owned(v);
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            _ => unreachable!("made owned above"),
        }
    }
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Owned(v) => write!(f, "Weights({} values)", v.len()),
            Repr::Mapped(m) => write!(f, "Weights({} values, mapped)", m.len),
            Repr::Packed(p) => write!(f, "Weights({}×{} {}, packed)", p.rows, p.cols, p.ty.name()),
        }
    }
}

impl PartialEq for Weights {
    fn eq(&self, other: &Weights) -> bool {
        **self == **other
    }
}
