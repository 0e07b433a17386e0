//! What the pipeline hands an exporter: one tensor, its storage choice and its data.

use formats::format::{Format, Quantized};
use formats::ggml::GgmlType;

use crate::{Error, Result};

/// How one tensor is stored in the output: a plan entry's choice.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// A ggml type (block types, and F32/F16/BF16 as ggml spells them).
    Ggml(GgmlType),
    /// Any other format of the formats crate (`int4:g64`, `fp8_e4m3`, `nvfp4`, ...).
    Format(Box<Format>),
}

impl Storage {
    /// Parses a recipe's format name: a ggml type name (`q4_k`, `f16`) or a format spec.
    pub fn parse(spec: &str) -> Result<Storage> {
        let f = Format::parse(spec).map_err(|e| Error::Other(format!("format `{spec}`: {e}")))?;
        Ok(match (f.ggml, spec.to_ascii_lowercase().as_str()) {
            (Some(t), _) => Storage::Ggml(t),
            (None, "f32") => Storage::Ggml(GgmlType::F32),
            (None, "f16") => Storage::Ggml(GgmlType::F16),
            (None, "bf16") => Storage::Ggml(GgmlType::Bf16),
            (None, _) => Storage::Format(Box::new(f)),
        })
    }

    /// The name a recipe or report uses (`q4_k`, `int4:g64`).
    pub fn name(&self) -> String {
        match self {
            Storage::Ggml(t) => t.name().to_string(),
            Storage::Format(f) => f.spec(),
        }
    }

    /// Whether values are kept as plain floats (F32/F16/BF16): nothing to solve.
    pub fn is_float(&self) -> bool {
        matches!(self, Storage::Ggml(t) if t.block_size() == 1)
    }

    /// The ggml type, when the storage is one.
    pub fn ggml(&self) -> Option<GgmlType> {
        match self {
            Storage::Ggml(t) => Some(*t),
            Storage::Format(_) => None,
        }
    }

    /// The solver's target format.
    pub fn target(&self) -> Result<Format> {
        match self {
            Storage::Ggml(t) => Format::parse(t.name()).map_err(|e| Error::Other(format!("{}: {e}", t.name()))),
            Storage::Format(f) => Ok((**f).clone()),
        }
    }

    /// Exact bits a `[rows, cols]` matrix takes in this storage (codes, scales, zero points).
    pub fn storage_bits(&self, rows: usize, cols: usize) -> Result<u64> {
        match self {
            Storage::Ggml(t) => {
                let bs = t.block_size();
                if cols % bs != 0 {
                    return Err(Error::Other(format!(
                        "rows of {cols} values do not divide into {} blocks of {bs}",
                        t.name()
                    )));
                }
                Ok(8 * (rows * cols / bs * t.type_size()) as u64)
            }
            Storage::Format(f) => Ok(f.storage_bits(rows, cols)?),
        }
    }
}

/// A tensor's values as the solver left them.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Plain values (norms, biases, tensors kept in a float type), row-major.
    Float(Vec<f32>),
    /// ggml blocks of [`Storage::Ggml`], rows of the innermost dimension.
    Ggml(Vec<u8>),
    /// Codes, scales and zero points of a [`Storage::Format`] (see [`formats::format::Quantized`]).
    Codes(Quantized),
    /// A quantized tensor with a few weights kept apart in f16 (SpQR-style outliers): the dense
    /// part (ggml blocks or codes of the storage), and a sparse table of flat row-major
    /// indices (ascending) and f16 values that replace the dense values there.
    Sparse {
        /// The dense part.
        dense: Box<TensorData>,
        /// Flat indices `row · cols + col`, ascending.
        idx: Vec<u32>,
        /// f16 bits of the kept values.
        val: Vec<u16>,
    },
    /// A quantized tensor plus a low-rank term (LoRC / SVDQuant): the values are
    /// `base + Aᵀ·B`, with `at` = Aᵀ `[rank, rows]` and `b` = B `[rank, cols]`.
    LowRank {
        /// The quantized part (dense, or with kept weights).
        base: Box<TensorData>,
        /// Rank of the correction.
        rank: usize,
        /// Aᵀ, `[rank, rows]`.
        at: Factor,
        /// B, `[rank, cols]`.
        b: Factor,
    },
}

/// A low-rank factor as stored: row-major `[rank, len]`, f16, or int8 codes with one f16
/// scale per row.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor {
    /// f16 bits.
    F16(Vec<u16>),
    /// Symmetric int8: value = code · scale of its row.
    Int8 {
        /// Codes, row-major.
        codes: Vec<i8>,
        /// f16 bits of each row's scale.
        scales: Vec<u16>,
    },
}

impl Factor {
    /// The stored values, row-major f32.
    pub fn values(&self) -> Vec<f32> {
        match self {
            Factor::F16(v) => v.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
            Factor::Int8 { codes, scales } => {
                let len = if scales.is_empty() { 0 } else { codes.len() / scales.len() };
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * half::f16::from_bits(scales[i / len.max(1)]).to_f32())
                    .collect()
            }
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            Factor::F16(v) => v.len(),
            Factor::Int8 { codes, .. } => codes.len(),
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes as stored (codes and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Factor::F16(v) => 2 * v.len(),
            Factor::Int8 { codes, scales } => codes.len() + 2 * scales.len(),
        }
    }

    /// `f16` or `int8`.
    pub fn kind(&self) -> &'static str {
        match self {
            Factor::F16(_) => "f16",
            Factor::Int8 { .. } => "int8",
        }
    }

    /// Whether it is a well-formed `[rank, len]` factor.
    fn check(&self, rank: usize, len: usize) -> bool {
        match self {
            Factor::F16(v) => v.len() == rank * len,
            Factor::Int8 { codes, scales } => codes.len() == rank * len && scales.len() == rank,
        }
    }
}

/// Adds `Aᵀ·B` to `out` (`[rows, cols]`), row by row in a fixed order, so the values are the
/// same whatever the thread count (the solver's and the reader's sum agree bit for bit).
pub fn add_low_rank(out: &mut [f32], rows: usize, cols: usize, rank: usize, at: &[f32], b: &[f32]) {
    use rayon::prelude::*;
    debug_assert_eq!(out.len(), rows * cols);
    out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(i, row)| {
        for k in 0..rank {
            let a = at[k * rows + i];
            if a != 0.0 {
                for (o, &bv) in row.iter_mut().zip(&b[k * cols..(k + 1) * cols]) {
                    *o += a * bv;
                }
            }
        }
    });
}

/// Bytes one kept weight takes in the sparse table: a 32-bit index and an f16 value.
pub const SPARSE_ENTRY_BYTES: usize = 6;

/// One tensor for an exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantTensor {
    /// The model's canonical name (GGUF spelling: `blk.3.attn_q.weight`, `token_embd.weight`);
    /// exporters to Hugging Face layouts translate it with the architecture's naming.
    pub name: String,
    /// Dimensions, outermost first (`[out_features, in_features]` for a linear layer).
    pub shape: Vec<usize>,
    /// The storage the plan chose.
    pub storage: Storage,
    /// The data.
    pub data: TensorData,
}

impl QuantTensor {
    /// The tensor's name, shape and storage with empty float data (to rebuild a part).
    fn clone_header(&self) -> QuantTensor {
        QuantTensor {
            name: self.name.clone(),
            shape: self.shape.clone(),
            storage: self.storage.clone(),
            data: TensorData::Float(Vec::new()),
        }
    }

    /// The number of weights kept apart in a sparse table (0 without one).
    pub fn kept_weights(&self) -> usize {
        match &self.data {
            TensorData::Sparse { idx, .. } => idx.len(),
            TensorData::LowRank { base, .. } => {
                QuantTensor { data: (**base).clone(), ..self.clone_header() }.kept_weights()
            }
            _ => 0,
        }
    }

    /// The rank and storage of a low-rank correction, if the tensor has one.
    pub fn low_rank(&self) -> Option<(usize, &'static str, usize)> {
        match &self.data {
            TensorData::LowRank { rank, at, b, .. } => Some((*rank, at.kind(), at.bytes() + b.bytes())),
            _ => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rows and columns of the tensor seen as a matrix (innermost dimension = columns).
    pub fn matrix(&self) -> (usize, usize) {
        let cols = *self.shape.last().unwrap_or(&1);
        (self.numel() / cols.max(1), cols)
    }

    /// The values a runtime will compute with, row-major f32.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let bad = |e: formats::FormatError| Error::Other(format!("tensor `{}`: {e}", self.name));
        match (&self.data, &self.storage) {
            (TensorData::Float(v), _) => Ok(v.clone()),
            (TensorData::Ggml(b), Storage::Ggml(t)) => {
                let mut out = vec![0f32; self.numel()];
                formats::ggml::dequantize(*t, b, &mut out).map_err(bad)?;
                Ok(out)
            }
            (TensorData::Codes(q), Storage::Format(f)) => f.dequantize(q).map_err(bad),
            (TensorData::Sparse { dense, idx, val }, _) => {
                let d = QuantTensor { data: (**dense).clone(), ..self.clone_header() };
                let mut out = d.dequantize()?;
                for (&i, &v) in idx.iter().zip(val) {
                    let slot = out.get_mut(i as usize).ok_or_else(|| {
                        Error::Other(format!("tensor `{}`: kept weight index {i} is out of range", self.name))
                    })?;
                    *slot = half::f16::from_bits(v).to_f32();
                }
                Ok(out)
            }
            (TensorData::LowRank { base, rank, at, b }, _) => {
                let (rows, cols) = self.matrix();
                if !at.check(*rank, rows) || !b.check(*rank, cols) {
                    return Err(Error::Other(format!(
                        "tensor `{}`: low-rank factors do not fit a rank-{rank} correction of {rows}×{cols}",
                        self.name
                    )));
                }
                let mut out = QuantTensor { data: (**base).clone(), ..self.clone_header() }.dequantize()?;
                add_low_rank(&mut out, rows, cols, *rank, &at.values(), &b.values());
                Ok(out)
            }
            _ => Err(Error::Other(format!(
                "tensor `{}`: data does not match storage {}",
                self.name,
                self.storage.name()
            ))),
        }
    }

    /// Bytes the tensor's data takes as stored (codes, scales, zero points; f32 for floats
    /// kept as [`TensorData::Float`] unless the storage says f16/bf16).
    pub fn stored_bytes(&self) -> usize {
        let (rows, cols) = self.matrix();
        match &self.data {
            TensorData::Ggml(b) => b.len(),
            TensorData::Sparse { dense, idx, .. } => {
                QuantTensor { data: (**dense).clone(), ..self.clone_header() }.stored_bytes()
                    + SPARSE_ENTRY_BYTES * idx.len()
            }
            TensorData::LowRank { base, at, b, .. } => {
                QuantTensor { data: (**base).clone(), ..self.clone_header() }.stored_bytes() + at.bytes() + b.bytes()
            }
            _ => self.storage.storage_bits(rows, cols).map(|b| b.div_ceil(8) as usize).unwrap_or(4 * self.numel()),
        }
    }
}

/// The row order that turns half-split RoPE pairs (Hugging Face: row `s·d/2 + j` of a head
/// of `d` rows) into llama.cpp's interleaved pairs (row `2j + s`): `perm[new] = old`, for a
/// tensor of `heads` heads. Its inverse ([`invert`]) goes back.
pub fn interleave_perm(rows: usize, heads: usize) -> Result<Vec<usize>> {
    if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        return Err(Error::Other(format!("{rows} rows do not split into {heads} heads of even width")));
    }
    let d = rows / heads;
    let mut perm = vec![0; rows];
    for h in 0..heads {
        for j in 0..d / 2 {
            for s in 0..2 {
                perm[h * d + 2 * j + s] = h * d + s * d / 2 + j;
            }
        }
    }
    Ok(perm)
}

/// The inverse of a permutation.
pub fn invert(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (new, &old) in perm.iter().enumerate() {
        inv[old] = new;
    }
    inv
}

fn permute_chunks<T: Clone>(v: &mut Vec<T>, rows: usize, perm: &[usize]) {
    if rows == 0 || v.is_empty() || v.len() % rows != 0 {
        return;
    }
    let per = v.len() / rows;
    let old = std::mem::take(v);
    v.reserve(old.len());
    for &r in perm {
        v.extend_from_slice(&old[r * per..(r + 1) * per]);
    }
}

impl QuantTensor {
    /// Reorders the tensor's rows (`perm[new] = old`), exactly: every format here encodes
    /// rows independently (per-tensor metadata stays as it is).
    pub fn permute_rows(&mut self, perm: &[usize]) -> Result<()> {
        let rows = self.shape.first().copied().unwrap_or(1);
        if perm.len() != rows || self.shape.len() > 2 {
            return Err(Error::Other(format!(
                "tensor `{}`: cannot reorder {} rows of {:?}",
                self.name,
                perm.len(),
                self.shape
            )));
        }
        let cols = self.numel() / rows.max(1);
        permute_data(&mut self.data, &self.storage, rows, cols, perm);
        Ok(())
    }
}

fn permute_within_rows<T: Copy>(v: &mut [T], n: usize, len: usize, perm: &[usize]) {
    for row in v.chunks_exact_mut(len).take(n) {
        let old = row.to_vec();
        for (new, &o) in perm.iter().enumerate() {
            row[new] = old[o];
        }
    }
}

fn permute_data(data: &mut TensorData, storage: &Storage, rows: usize, cols: usize, perm: &[usize]) {
    {
        match data {
            TensorData::Sparse { dense, idx, val } => {
                permute_data(dense, storage, rows, cols, perm);
                let inv = invert(perm);
                let mut pairs: Vec<(u32, u16)> = idx
                    .iter()
                    .zip(val.iter())
                    .map(|(&i, &v)| {
                        let (r, c) = (i as usize / cols, i as usize % cols);
                        ((inv[r] * cols + c) as u32, v)
                    })
                    .collect();
                pairs.sort_unstable();
                *idx = pairs.iter().map(|p| p.0).collect();
                *val = pairs.iter().map(|p| p.1).collect();
            }
            TensorData::LowRank { base, rank, at, .. } => {
                permute_data(base, storage, rows, cols, perm);
                // Aᵀ holds one value per output row in each of its rows: permute within rows.
                match at {
                    Factor::F16(v) => permute_within_rows(v, *rank, rows, perm),
                    Factor::Int8 { codes, .. } => permute_within_rows(codes, *rank, rows, perm),
                }
            }
            TensorData::Float(v) => permute_chunks(v, rows, perm),
            TensorData::Ggml(b) => permute_chunks(b, rows, perm),
            TensorData::Codes(q) => {
                permute_chunks(&mut q.codes, rows, perm);
                let per_row = matches!(
                    storage,
                    Storage::Format(ref f) if matches!(f.granularity, formats::Granularity::Channel | formats::Granularity::Group(_))
                );
                if per_row {
                    permute_chunks(&mut q.scales, rows, perm);
                    permute_chunks(&mut q.zeros, rows, perm);
                    permute_chunks(&mut q.choices, rows, perm);
                    permute_chunks(&mut q.super_scales, rows, perm);
                }
            }
        }
    }
}

impl TensorData {
    /// The data of consecutive row ranges of one matrix, each encoded on its own (the same
    /// storage; every row's blocks or codes and group parameters its own), as one matrix:
    /// ggml blocks and codes with their per-group parameters concatenated in order. Kept
    /// weights, low-rank terms and per-tensor scales are refused; a per-tensor grid choice or
    /// scale entry cannot be told from a per-row one in parts of one row, so callers join
    /// only formats without them.
    pub fn concat_rows(parts: Vec<TensorData>) -> std::result::Result<TensorData, String> {
        let mut parts = parts.into_iter();
        let first = parts.next().ok_or("no rows to join")?;
        match first {
            TensorData::Ggml(mut b) => {
                for p in parts {
                    let TensorData::Ggml(more) = p else { return Err("parts of different kinds".into()) };
                    b.extend_from_slice(&more);
                }
                Ok(TensorData::Ggml(b))
            }
            TensorData::Codes(mut q) => {
                if q.tensor_scale != 1.0 || !q.ggml.is_empty() {
                    return Err("codes with a per-tensor scale".into());
                }
                for p in parts {
                    let TensorData::Codes(m) = p else { return Err("parts of different kinds".into()) };
                    let same = (m.cols, m.code_bits, m.row_bytes, m.tensor_scale.to_bits())
                        == (q.cols, q.code_bits, q.row_bytes, q.tensor_scale.to_bits());
                    // Group parameters so far and of the part: as many per row in both.
                    let rowwise = |a: usize, b: usize| {
                        (a == 0 && b == 0)
                            || (q.rows > 0
                                && m.rows > 0
                                && a.is_multiple_of(q.rows)
                                && b.is_multiple_of(m.rows)
                                && a / q.rows == b / m.rows)
                    };
                    let params = rowwise(q.scales.len(), m.scales.len())
                        && rowwise(q.zeros.len(), m.zeros.len())
                        && rowwise(q.choices.len(), m.choices.len())
                        && rowwise(q.super_scales.len(), m.super_scales.len());
                    if !same || !params || m.codes.len() != m.rows * m.row_bytes {
                        return Err("codes of different shapes or with parameters spanning rows".into());
                    }
                    q.rows += m.rows;
                    q.codes.extend_from_slice(&m.codes);
                    q.scales.extend_from_slice(&m.scales);
                    q.zeros.extend_from_slice(&m.zeros);
                    q.choices.extend_from_slice(&m.choices);
                    q.super_scales.extend_from_slice(&m.super_scales);
                }
                Ok(TensorData::Codes(q))
            }
            _ => Err("only ggml blocks and plain codes join by rows".into()),
        }
    }
}

impl QuantTensor {
    /// Appends the tensor to a checkpoint spill (its storage is the plan's, not stored).
    pub fn write_spill(&self, out: &mut Vec<u8>) {
        let put = spill_put;
        put(out, self.name.as_bytes());
        put(out, &self.shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect::<Vec<u8>>());
        write_data(&self.data, out);
    }

    /// Reads one tensor written by [`QuantTensor::write_spill`] at `*pos`; `storage_of` gives
    /// the plan's storage of a name. `None` at the end of the buffer.
    pub fn read_spill(
        buf: &[u8],
        pos: &mut usize,
        storage_of: &dyn Fn(&str) -> Option<Storage>,
    ) -> std::result::Result<Option<QuantTensor>, String> {
        if *pos >= buf.len() {
            return Ok(None);
        }
        let name = String::from_utf8(spill_take(buf, pos)?.to_vec()).map_err(|_| "bad name")?;
        let shape = spill_u64s(spill_take(buf, pos)?);
        let data = read_data(buf, pos, 0)?;
        let storage = storage_of(&name).ok_or_else(|| format!("tensor `{name}` is not in the plan"))?;
        Ok(Some(QuantTensor { name, shape, storage, data }))
    }
}

fn spill_put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn write_data(data: &TensorData, out: &mut Vec<u8>) {
    let put = spill_put;
    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    match data {
        TensorData::Float(v) => {
            out.push(0);
            put(out, &f32s(v));
        }
        TensorData::Ggml(b) => {
            out.push(1);
            put(out, b);
        }
        TensorData::Codes(q) => {
            out.push(2);
            let dims = [q.rows as u64, q.cols as u64, q.code_bits as u64, q.row_bytes as u64];
            put(out, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>());
            put(out, &q.codes);
            put(out, &f32s(&q.scales));
            put(out, &f32s(&q.zeros));
            put(out, &q.choices);
            put(out, &f32s(&q.super_scales));
            put(out, &q.tensor_scale.to_le_bytes());
            put(out, &q.ggml);
        }
        TensorData::Sparse { dense, idx, val } => {
            out.push(3);
            put(out, &idx.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
            put(out, &val.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            write_data(dense, out);
        }
        TensorData::LowRank { base, rank, at, b } => {
            out.push(4);
            put(out, &(*rank as u64).to_le_bytes());
            for f in [at, b] {
                match f {
                    Factor::F16(v) => {
                        out.push(0);
                        put(out, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
                    }
                    Factor::Int8 { codes, scales } => {
                        out.push(1);
                        put(out, &codes.iter().map(|&c| c as u8).collect::<Vec<u8>>());
                        put(out, &scales.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
                    }
                }
            }
            write_data(base, out);
        }
    }
}

fn read_factor(buf: &[u8], pos: &mut usize) -> std::result::Result<Factor, String> {
    let u16s = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>();
    let tag = *buf.get(*pos).ok_or("truncated")?;
    *pos += 1;
    match tag {
        0 => Ok(Factor::F16(u16s(spill_take(buf, pos)?))),
        1 => {
            let codes = spill_take(buf, pos)?.iter().map(|&c| c as i8).collect();
            let scales = u16s(spill_take(buf, pos)?);
            Ok(Factor::Int8 { codes, scales })
        }
        _ => Err("unknown factor record".into()),
    }
}

fn spill_take<'b>(buf: &'b [u8], pos: &mut usize) -> std::result::Result<&'b [u8], String> {
    let n = buf.get(*pos..*pos + 8).ok_or("truncated")?;
    let n = u64::from_le_bytes(n.try_into().map_err(|_| "truncated")?) as usize;
    let start = *pos + 8;
    let end = start.checked_add(n).filter(|&e| e <= buf.len()).ok_or("truncated")?;
    *pos = end;
    Ok(&buf[start..end])
}

fn spill_u64s(b: &[u8]) -> Vec<usize> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as usize).collect()
}

fn read_data(buf: &[u8], pos: &mut usize, depth: u32) -> std::result::Result<TensorData, String> {
    let take = spill_take;
    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    let tag = *buf.get(*pos).ok_or("truncated")?;
    *pos += 1;
    let data = match tag {
        0 => TensorData::Float(f32s(take(buf, pos)?)),
        1 => TensorData::Ggml(take(buf, pos)?.to_vec()),
        2 => {
            let d = spill_u64s(take(buf, pos)?);
            if d.len() != 4 {
                return Err("bad dimensions".into());
            }
            let codes = take(buf, pos)?.to_vec();
            let scales = f32s(take(buf, pos)?);
            let zeros = f32s(take(buf, pos)?);
            let choices = take(buf, pos)?.to_vec();
            let super_scales = f32s(take(buf, pos)?);
            let ts = f32s(take(buf, pos)?);
            let ggml = take(buf, pos)?.to_vec();
            TensorData::Codes(Quantized {
                rows: d[0],
                cols: d[1],
                code_bits: d[2] as u32,
                codes,
                row_bytes: d[3],
                scales,
                zeros,
                choices,
                super_scales,
                tensor_scale: *ts.first().ok_or("truncated")?,
                ggml,
            })
        }
        3 if depth <= 1 => {
            let idx = take(buf, pos)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let val = take(buf, pos)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let dense = read_data(buf, pos, 2)?;
            TensorData::Sparse { dense: Box::new(dense), idx, val }
        }
        // A low-rank term wraps a dense or a sparse part, never another low-rank term.
        4 if depth == 0 => {
            let rank = spill_u64s(take(buf, pos)?).first().copied().ok_or("truncated")?;
            let at = read_factor(buf, pos)?;
            let b = read_factor(buf, pos)?;
            let base = read_data(buf, pos, 1)?;
            TensorData::LowRank { base: Box::new(base), rank, at, b }
        }
        _ => return Err("unknown record".into()),
    };
    Ok(data)
}
