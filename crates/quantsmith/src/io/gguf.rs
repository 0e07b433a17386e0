//! GGUF reader (versions 2 and 3), memory-mapped.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64,
//! the metadata key/value pairs, the tensor infos (name, dims, ggml type, offset), padding to
//! `general.alignment` (default 32), then the data section that tensor offsets point into.
//! Every length and offset read from the file is checked against the bytes that remain before
//! anything is allocated from it, so a corrupt or hostile file gives an error, never a panic
//! or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use formats::ggml::GgmlType;
use memmap2::Mmap;
use rayon::prelude::*;

use crate::tensor::{DType, TensorInfo, TensorSource, Weights};
use crate::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`: no tensor has more dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are refused (no real file nests at all; guards the stack).
const MAX_NESTING: u32 = 16;

/// Type ids of GGUF metadata values (`enum gguf_type`).
pub mod value_type {
    /// u8
    pub const U8: u32 = 0;
    /// i8
    pub const I8: u32 = 1;
    /// u16
    pub const U16: u32 = 2;
    /// i16
    pub const I16: u32 = 3;
    /// u32
    pub const U32: u32 = 4;
    /// i32
    pub const I32: u32 = 5;
    /// f32
    pub const F32: u32 = 6;
    /// bool (one byte, 0 or 1)
    pub const BOOL: u32 = 7;
    /// string (u64 length + UTF-8 bytes)
    pub const STRING: u32 = 8;
    /// array (u32 element type + u64 count + elements)
    pub const ARRAY: u32 = 9;
    /// u64
    pub const U64: u32 = 10;
    /// i64
    pub const I64: u32 = 11;
    /// f64
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array; typed so that token lists load as one Vec and are re-written with their type.
    Array(GgufArray),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

/// A metadata array, stored as one vector of its element type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    /// u8 elements
    U8(Vec<u8>),
    /// i8 elements
    I8(Vec<i8>),
    /// u16 elements
    U16(Vec<u16>),
    /// i16 elements
    I16(Vec<i16>),
    /// u32 elements
    U32(Vec<u32>),
    /// i32 elements
    I32(Vec<i32>),
    /// f32 elements
    F32(Vec<f32>),
    /// bool elements
    Bool(Vec<bool>),
    /// string elements
    String(Vec<String>),
    /// Arrays of arrays: each inner array carries its own element type.
    Array(Vec<GgufArray>),
    /// u64 elements
    U64(Vec<u64>),
    /// i64 elements
    I64(Vec<i64>),
    /// f64 elements
    F64(Vec<f64>),
}

impl GgufValue {
    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            GgufValue::U8(_) => t::U8,
            GgufValue::I8(_) => t::I8,
            GgufValue::U16(_) => t::U16,
            GgufValue::I16(_) => t::I16,
            GgufValue::U32(_) => t::U32,
            GgufValue::I32(_) => t::I32,
            GgufValue::F32(_) => t::F32,
            GgufValue::Bool(_) => t::BOOL,
            GgufValue::String(_) => t::STRING,
            GgufValue::Array(_) => t::ARRAY,
            GgufValue::U64(_) => t::U64,
            GgufValue::I64(_) => t::I64,
            GgufValue::F64(_) => t::F64,
        }
    }

    /// Lower-case type name for messages (`u32`, `string`, `array of string`, ...).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("array of {}", a.elem_type_name()),
            v => type_id_name(v.type_id()).to_string(),
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is an f32 or f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Short human-readable rendering (arrays summarised) for `inspect`.
    pub fn display_short(&self) -> String {
        match self {
            GgufValue::U8(v) => v.to_string(),
            GgufValue::I8(v) => v.to_string(),
            GgufValue::U16(v) => v.to_string(),
            GgufValue::I16(v) => v.to_string(),
            GgufValue::U32(v) => v.to_string(),
            GgufValue::I32(v) => v.to_string(),
            GgufValue::F32(v) => v.to_string(),
            GgufValue::Bool(v) => v.to_string(),
            // Chat templates run to kilobytes; a listing needs the start.
            GgufValue::String(s) if s.chars().count() > 80 => {
                format!("{:?}... ({} chars)", s.chars().take(60).collect::<String>(), s.chars().count())
            }
            GgufValue::String(s) => format!("{s:?}"),
            GgufValue::Array(a) => format!("[{}; {}]", a.elem_type_name(), a.len()),
            GgufValue::U64(v) => v.to_string(),
            GgufValue::I64(v) => v.to_string(),
            GgufValue::F64(v) => v.to_string(),
        }
    }
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        use value_type as t;
        match self {
            GgufArray::U8(_) => t::U8,
            GgufArray::I8(_) => t::I8,
            GgufArray::U16(_) => t::U16,
            GgufArray::I16(_) => t::I16,
            GgufArray::U32(_) => t::U32,
            GgufArray::I32(_) => t::I32,
            GgufArray::F32(_) => t::F32,
            GgufArray::Bool(_) => t::BOOL,
            GgufArray::String(_) => t::STRING,
            GgufArray::Array(_) => t::ARRAY,
            GgufArray::U64(_) => t::U64,
            GgufArray::I64(_) => t::I64,
            GgufArray::F64(_) => t::F64,
        }
    }

    /// Lower-case element type name.
    pub fn elem_type_name(&self) -> &'static str {
        type_id_name(self.elem_type_id())
    }

    /// The elements as i128 if the array holds integers.
    fn ints(&self) -> Option<Vec<i128>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::U64(v) => v.iter().map(|&x| x.into()).collect(),
            GgufArray::I64(v) => v.iter().map(|&x| x.into()).collect(),
            _ => return None,
        })
    }
}

/// Name of a GGUF value type id.
pub fn type_id_name(id: u32) -> &'static str {
    use value_type as t;
    match id {
        t::U8 => "u8",
        t::I8 => "i8",
        t::U16 => "u16",
        t::I16 => "i16",
        t::U32 => "u32",
        t::I32 => "i32",
        t::F32 => "f32",
        t::BOOL => "bool",
        t::STRING => "string",
        t::ARRAY => "array",
        t::U64 => "u64",
        t::I64 => "i64",
        t::F64 => "f64",
        _ => "unknown",
    }
}

/// One tensor as GGUF describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Tensor name (llama.cpp convention, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// GGUF dimensions, innermost first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section, as stored in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl GgufTensor {
    /// Shape outermost first (`ne` reversed), as `TensorInfo` uses.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.ne.iter().product::<u64>() as usize
    }

    /// The library's description of this tensor.
    pub fn info(&self) -> TensorInfo {
        TensorInfo { name: self.name.clone(), shape: self.shape(), dtype: DType::Ggml(self.ty), n_bytes: self.n_bytes }
    }
}

/// An open GGUF file: parsed header and a memory map of the whole file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensor>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Reads little-endian values from the header, with bounds checks that name the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, msg: String) -> Error {
        Error::corrupt(self.path, msg)
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {} at byte {} needs {} bytes, but the file ends at byte {}",
                what(),
                self.pos,
                n,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that promises `count` items of at least `min_size` bytes each; refused when
    /// the file cannot hold them, so the caller may allocate `count` safely.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = (n as u128) * (min_size as u128);
        if need > self.remaining() as u128 {
            return Err(self.err(format!(
                "{} at byte {} claims {} entries (at least {} bytes), but only {} bytes remain",
                what(),
                at,
                n,
                need,
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{} at byte {}: string length {} runs past the end of the file ({} bytes remain)",
                what(),
                at,
                len,
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{} at byte {}: string is not valid UTF-8", what(), at)))
    }
}

/// Minimum encoded size of one value of a type (for plausibility checks on counts).
fn min_value_size(ty: u32) -> usize {
    use value_type as t;
    match ty {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 | t::STRING => 8,
        t::ARRAY => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
    use value_type as t;
    let what = || format!("metadata `{key}`");
    Ok(match ty {
        t::U8 => GgufValue::U8(c.array::<1>(&what)?[0]),
        t::I8 => GgufValue::I8(c.array::<1>(&what)?[0] as i8),
        t::U16 => GgufValue::U16(u16::from_le_bytes(c.array(&what)?)),
        t::I16 => GgufValue::I16(i16::from_le_bytes(c.array(&what)?)),
        t::U32 => GgufValue::U32(u32::from_le_bytes(c.array(&what)?)),
        t::I32 => GgufValue::I32(i32::from_le_bytes(c.array(&what)?)),
        t::F32 => GgufValue::F32(f32::from_le_bytes(c.array(&what)?)),
        t::BOOL => GgufValue::Bool(read_bool(c, key)?),
        t::STRING => GgufValue::String(c.string(&what)?),
        t::ARRAY => GgufValue::Array(read_array(c, key, depth)?),
        t::U64 => GgufValue::U64(u64::from_le_bytes(c.array(&what)?)),
        t::I64 => GgufValue::I64(i64::from_le_bytes(c.array(&what)?)),
        t::F64 => GgufValue::F64(f64::from_le_bytes(c.array(&what)?)),
        other => return Err(c.err(format!("metadata `{key}`: unknown value type id {other}"))),
    })
}

fn read_bool(c: &mut Cursor<'_>, key: &str) -> Result<bool> {
    let at = c.pos;
    match c.array::<1>(&|| format!("metadata `{key}`"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(c.err(format!("metadata `{key}` at byte {at}: bool byte is {b}, not 0 or 1"))),
    }
}

/// Reads `n` fixed-size elements in one pass over one slice.
fn read_fixed<T, const N: usize>(
    c: &mut Cursor<'_>,
    n: usize,
    what: &dyn Fn() -> String,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let bytes = c.take(n * N, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|ch| {
            let mut a = [0u8; N];
            a.copy_from_slice(ch);
            conv(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: u32) -> Result<GgufArray> {
    use value_type as t;
    if depth >= MAX_NESTING {
        return Err(c.err(format!("metadata `{key}`: arrays nested more than {MAX_NESTING} deep")));
    }
    let what = || format!("metadata `{key}` (array)");
    let elem = c.u32(&what)?;
    if type_id_name(elem) == "unknown" {
        return Err(c.err(format!("metadata `{key}`: array of unknown value type id {elem}")));
    }
    let n = c.count(min_value_size(elem), &what)?;
    Ok(match elem {
        t::U8 => GgufArray::U8(c.take(n, &what)?.to_vec()),
        t::I8 => GgufArray::I8(c.take(n, &what)?.iter().map(|&b| b as i8).collect()),
        t::U16 => GgufArray::U16(read_fixed(c, n, &what, u16::from_le_bytes)?),
        t::I16 => GgufArray::I16(read_fixed(c, n, &what, i16::from_le_bytes)?),
        t::U32 => GgufArray::U32(read_fixed(c, n, &what, u32::from_le_bytes)?),
        t::I32 => GgufArray::I32(read_fixed(c, n, &what, i32::from_le_bytes)?),
        t::F32 => GgufArray::F32(read_fixed(c, n, &what, f32::from_le_bytes)?),
        t::U64 => GgufArray::U64(read_fixed(c, n, &what, u64::from_le_bytes)?),
        t::I64 => GgufArray::I64(read_fixed(c, n, &what, i64::from_le_bytes)?),
        t::F64 => GgufArray::F64(read_fixed(c, n, &what, f64::from_le_bytes)?),
        t::BOOL => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(c, key)?);
            }
            GgufArray::Bool(v)
        }
        t::STRING => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.string(&what)?);
            }
            GgufArray::String(v)
        }
        _ => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays in the memory map until asked for.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::corrupt(path, format!("not a GGUF file: only {len} bytes, a GGUF header needs 24")));
        }
        // SAFETY: the map is read-only; a file truncated by another process while open is
        // outside what any reader can defend against (llama.cpp maps the same way).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<GgufFile> {
        let buf: &[u8] = &mmap;
        let mut c = Cursor { buf, pos: 0, path: &path };
        let magic: [u8; 4] = c.array(&|| "magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(c.err(format!(
                "not a GGUF file: magic bytes are {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = c.u32(&|| "version".to_string())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(c.err(
                    "GGUF version 1 is not supported (32-bit counts; re-convert with a current llama.cpp)".into(),
                ))
            }
            // gguf-py can write big-endian files; their version reads byte-swapped here.
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(c.err("big-endian GGUF files are not supported (convert it to little-endian)".into()))
            }
            v => return Err(c.err(format!("unsupported GGUF version {v} (this reader knows 2 and 3)"))),
        }
        // Each tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        let n_tensors = c.u64(&|| "tensor count".to_string())?;
        let n_kv = c.u64(&|| "metadata count".to_string())?;
        // Each key/value pair takes at least 8 (key length) + 4 (type) + 1 byte.
        let need = (n_tensors as u128) * 24 + (n_kv as u128) * 13;
        if need > c.remaining() as u128 {
            return Err(c.err(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries, which need at least {need} bytes, but only {} bytes follow (truncated file or corrupt counts)",
                c.remaining()
            )));
        }
        let (n_tensors, n_kv) = (n_tensors as usize, n_kv as usize);

        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let ty = c.u32(&|| format!("type of metadata `{key}`"))?;
            let value = read_value(&mut c, ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.get(meta_index.get("general.alignment").copied().unwrap_or(usize::MAX)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(Error::Config {
                    path: path.clone(),
                    key: "general.alignment".into(),
                    msg: format!("must be a u32 power of two, found {} {}", v.type_name(), v.display_short()),
                })
            }
        };

        let mut infos = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let what = || format!("tensor `{name}` info");
            let n_dims = c.u32(&what)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(tensor_err(&path, &name, format!("{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let ty = GgmlType::from_id(type_id)
                .ok_or_else(|| tensor_err(&path, &name, format!("unknown ggml type id {type_id}")))?;
            if tensor_index.insert(name.clone(), infos.len()).is_some() {
                return Err(tensor_err(&path, &name, "appears twice".into()));
            }
            infos.push((name, ne, ty, offset));
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        if data_offset > file_len && n_tensors > 0 {
            return Err(Error::corrupt(
                &path,
                format!("data section would start at byte {data_offset}, past the end of the file ({file_len} bytes)"),
            ));
        }
        let data_len = file_len.saturating_sub(data_offset);

        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, ne, ty, offset) in infos {
            let numel = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let numel = match numel {
                Some(n) if n <= usize::MAX as u64 / 4 => n as usize,
                _ => return Err(tensor_err(&path, &name, format!("dimensions {ne:?} overflow"))),
            };
            if ne.contains(&0) {
                return Err(tensor_err(&path, &name, format!("dimensions {ne:?}: a dimension of 0 (an empty tensor)")));
            }
            if ne[0] % ty.block_size() as u64 != 0 {
                return Err(tensor_err(
                    &path,
                    &name,
                    format!("row length {} is not a multiple of {}'s block size {}", ne[0], ty.name(), ty.block_size()),
                ));
            }
            let n_bytes = numel / ty.block_size() * ty.type_size();
            if offset % alignment != 0 {
                return Err(tensor_err(
                    &path,
                    &name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if offset.checked_add(n_bytes as u64).is_none_or(|end| end > data_len) {
                return Err(tensor_err(
                    &path,
                    &name,
                    format!(
                        "data at offset {offset} ({n_bytes} bytes) runs past the end of the data section ({data_len} bytes; file is truncated or the offset is wrong)"
                    ),
                ));
            }
            tensors.push(GgufTensor { name, ne, ty, offset, n_bytes });
        }

        Ok(GgufFile {
            path,
            mmap: Arc::new(mmap),
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every tensor as GGUF describes it, in file order.
    pub fn gguf_tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// One tensor as GGUF describes it.
    pub fn gguf_tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of one tensor, straight from the memory map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.gguf_tensor(name).ok_or_else(|| tensor_err(&self.path, name, "not in this file".into()))?;
        // Bounds were checked in `parse`.
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.mmap[start..start + t.n_bytes])
    }

    fn config_err(&self, key: &str, msg: String) -> Error {
        Error::Config { path: self.path.clone(), key: key.to_string(), msg }
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| self.config_err(key, "missing from the GGUF metadata".into()))
    }

    fn wrong_type(&self, key: &str, want: &str, v: &GgufValue) -> Error {
        self.config_err(key, format!("expected {want}, found {} {}", v.type_name(), v.display_short()))
    }

    /// Integer metadata that fits in u32 (any integer type is accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer fitting in u32", v))
    }

    /// Integer metadata that fits in u64 (any integer type is accepted).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer fitting in u64", v))
    }

    /// Float metadata (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong_type(key, "f32 or f64", v))
    }

    /// String metadata.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    /// Bool metadata.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            GgufValue::Bool(b) => Ok(*b),
            v => Err(self.wrong_type(key, "bool", v)),
        }
    }

    /// Array-of-strings metadata, borrowed (token lists, merges).
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::String(v)) => Ok(v),
            v => Err(self.wrong_type(key, "array of string", v)),
        }
    }

    /// Array-of-floats metadata (f32 or f64 elements) as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.require(key)? {
            GgufValue::Array(GgufArray::F32(v)) => Ok(v.clone()),
            GgufValue::Array(GgufArray::F64(v)) => Ok(v.iter().map(|&x| x as f32).collect()),
            v => Err(self.wrong_type(key, "array of f32", v)),
        }
    }

    /// Array-of-integers metadata whose elements all fit in i32 (token types, ids).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let v = self.require(key)?;
        let ints = match v {
            GgufValue::Array(GgufArray::I32(v)) => return Ok(v.clone()),
            GgufValue::Array(a) => a.ints(),
            _ => None,
        };
        let ints = ints.ok_or_else(|| self.wrong_type(key, "array of integers", v))?;
        ints.into_iter()
            .enumerate()
            .map(|(i, x)| {
                i32::try_from(x).map_err(|_| self.config_err(key, format!("element {i} ({x}) does not fit in i32")))
            })
            .collect()
    }

    /// `get_u32` for an optional key: `Ok(None)` when absent, an error when of the wrong type.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|_| self.get_u32(key)).transpose()
    }

    /// `get_u64` for an optional key.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|_| self.get_u64(key)).transpose()
    }

    /// `get_f32` for an optional key.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key).map(|_| self.get_f32(key)).transpose()
    }

    /// `get_str` for an optional key.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }

    /// `get_bool` for an optional key.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|_| self.get_bool(key)).transpose()
    }

    /// `get_str_array` for an optional key.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.get(key).map(|_| self.get_str_array(key)).transpose()
    }

    /// `get_f32_array` for an optional key.
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.get(key).map(|_| self.get_f32_array(key)).transpose()
    }

    /// `get_i32_array` for an optional key.
    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.get(key).map(|_| self.get_i32_array(key)).transpose()
    }

    /// `general.architecture`, the model family llama.cpp dispatches on.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }
}

fn tensor_err(path: &Path, tensor: &str, msg: String) -> Error {
    Error::Tensor { path: path.to_path_buf(), tensor: tensor.to_string(), msg }
}

/// Decodes `src` of type `ty` into `dst`, in parallel over whole rows of `row_len` elements.
///
/// F32/F16/BF16 are converted here; the block types go to `formats::ggml::dequantize`.
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32], row_len: usize) -> formats::Result<()> {
    let row_bytes = ty.row_bytes(row_len)?;
    let expected = dst.len().checked_div(row_len).map(|rows| rows * row_bytes);
    if row_len == 0 || !dst.len().is_multiple_of(row_len) || expected != Some(src.len()) {
        return Err(formats::FormatError::Length {
            what: format!("{} data for {} values in rows of {}", ty.name(), dst.len(), row_len),
            expected: expected.unwrap_or(0),
            got: src.len(),
        });
    }
    // About 64k values per task: large enough to amortise scheduling, small enough to spread
    // a single embedding matrix over both cores.
    let rows_per_task = (65536 / row_len).max(1);
    dst.par_chunks_mut(rows_per_task * row_len)
        .zip(src.par_chunks(rows_per_task * row_bytes))
        .try_for_each(|(d, s)| decode_plain(ty, s, d))
}

fn decode_plain(ty: GgmlType, s: &[u8], d: &mut [f32]) -> formats::Result<()> {
    match ty {
        GgmlType::F32 => {
            for (o, b) in d.iter_mut().zip(s.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            for (o, b) in d.iter_mut().zip(s.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            Ok(())
        }
        GgmlType::Bf16 => {
            for (o, b) in d.iter_mut().zip(s.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            Ok(())
        }
        _ => formats::ggml::dequantize(ty, s, d),
    }
}

impl TensorSource for GgufFile {
    fn tensors(&self) -> Vec<TensorInfo> {
        self.tensors.iter().map(GgufTensor::info).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.gguf_tensor(name).map(GgufTensor::info)
    }

    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.gguf_tensor(name).ok_or_else(|| tensor_err(&self.path, name, "not in this file".into()))?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; t.numel()];
        if out.is_empty() {
            return Ok(out);
        }
        let row_len = t.ne[0] as usize;
        let err = |e: formats::FormatError| tensor_err(&self.path, name, format!("cannot decode {}: {e}", t.ty.name()));
        let row_bytes = t.ty.row_bytes(row_len).map_err(err)?;
        // Segments of about 8 MiB of the file, each released once decoded: a large tensor is
        // never resident twice (mapped and copied) as a whole.
        let start = (self.data_offset + t.offset) as usize;
        let seg_rows = ((8usize << 20) / row_bytes.max(1)).max(1);
        if row_len == 0 || !out.len().is_multiple_of(row_len) || bytes.len() != out.len() / row_len * row_bytes {
            return dequantize_rows(t.ty, bytes, &mut out, row_len).map(|_| out).map_err(err);
        }
        for (k, (d, s)) in out.chunks_mut(seg_rows * row_len).zip(bytes.chunks(seg_rows * row_bytes)).enumerate() {
            dequantize_rows(t.ty, s, d, row_len).map_err(err)?;
            super::release_pages(&self.mmap, start + k * seg_rows * row_bytes, s.len());
        }
        super::release_pages(&self.mmap, start, t.n_bytes);
        Ok(out)
    }

    /// f32 tensors are read in place, every other type (ggml blocks, f16, bf16) of a matrix
    /// is kept packed ([`Weights`]).
    fn load_weights(&self, name: &str) -> Result<Weights> {
        if let Some(t) = self.gguf_tensor(name) {
            let start = (self.data_offset + t.offset) as usize;
            let cols = t.ne.first().copied().unwrap_or(0) as usize;
            let w = if t.ty == GgmlType::F32 && t.n_bytes == t.numel() * 4 {
                Weights::mapped(&self.mmap, start, t.numel())
            } else if t.ne.len() >= 2 && cols > 0 && t.numel().is_multiple_of(cols) {
                Weights::packed(&self.mmap, start, t.ty, t.numel() / cols, cols)
                    .filter(|_| t.ty.row_bytes(cols).is_ok_and(|rb| rb * (t.numel() / cols) == t.n_bytes))
            } else {
                None
            };
            if let Some(w) = w {
                return Ok(w);
            }
        }
        self.load_f32(name).map(Weights::from)
    }
}
