//! GGUF writer (version 3).
//!
//! Tensor data is spooled to an anonymous temporary file as tensors arrive, so memory stays
//! near one tensor; `finish` writes header, metadata and tensor infos to a temporary file
//! beside the destination, appends the spooled data and renames it into place. A writer told
//! every tensor beforehand ([`GgufWriter::plan`]) writes the header first and each tensor's
//! data straight to its place in that temporary file, without the spool and its copy; a
//! tensor that differs from the plan moves what was written into a spool and goes on the
//! first way. A writer dropped before `finish` (an error, a kill) leaves no file behind.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use formats::ggml::GgmlType;

use super::gguf::{GgufArray, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::{Error, Result};

/// Builds a GGUF v3 file: metadata in insertion order, then tensors in insertion order.
pub struct GgufWriter {
    path: PathBuf,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    data: BufWriter<File>,
    data_len: u64,
    /// Planned mode: `data` writes to the temporary output, after the header.
    planned: Option<Planned>,
}

/// A planned writer's announced tensors (offsets computed) and its temporary output.
struct Planned {
    infos: Vec<PendingTensor>,
    header_len: u64,
    tmp: RemoveOnDrop,
}

struct PendingTensor {
    name: String,
    ne: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

impl GgufWriter {
    /// Starts a file that `finish` will create at `path`.
    pub fn new(path: &Path) -> Result<GgufWriter> {
        let spool = tempfile::tempfile().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        Ok(GgufWriter {
            path: path.to_path_buf(),
            metadata: Vec::new(),
            tensors: Vec::new(),
            data: BufWriter::new(spool),
            data_len: 0,
            planned: None,
        })
    }

    /// Announces every tensor, in order (name, dimensions innermost first, type), before the
    /// first: the header is written now and each tensor's data goes straight to its place.
    /// Metadata must all be added before. A tensor that then differs from the announcement is
    /// still written correctly, through the spool.
    pub fn plan(&mut self, tensors: &[(String, Vec<u64>, GgmlType)]) -> Result<()> {
        if !self.tensors.is_empty() || self.planned.is_some() {
            return Err(Error::Other(format!("{}: tensors planned after the first tensor", self.path.display())));
        }
        let align = self.alignment();
        let mut data_len = 0u64;
        let mut infos = Vec::with_capacity(tensors.len());
        for (name, ne, ty) in tensors {
            let numel = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let Some(numel) =
                numel.filter(|_| !ne.is_empty() && ne.len() <= MAX_DIMS && ne[0] % ty.block_size() as u64 == 0)
            else {
                // add_tensor will say what is wrong with it; no plan then.
                return Ok(());
            };
            let offset = data_len.div_ceil(align) * align;
            data_len = offset + numel / ty.block_size() as u64 * ty.type_size() as u64;
            infos.push(PendingTensor { name: name.clone(), ne: ne.clone(), ty: *ty, offset });
        }
        let header = header_bytes(&self.metadata, &infos);
        let tmp_path = self.tmp_path();
        let guard = RemoveOnDrop(Some(tmp_path.clone()));
        // Readable too: leaving planned mode reads the data back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| Error::io(&tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header).map_err(|e| Error::io(&tmp_path, e))?;
        self.data = out;
        self.planned = Some(Planned { infos, header_len: header.len() as u64, tmp: guard });
        Ok(())
    }

    /// Leaves planned mode: the data written so far moves to a spool (the temporary output is
    /// removed; `finish` writes it afresh).
    fn unplan(&mut self) -> Result<()> {
        let Some(p) = self.planned.take() else { return Ok(()) };
        let tmp_path = self.tmp_path();
        let io = |e| Error::io(&tmp_path, e);
        self.data.flush().map_err(io)?;
        let mut file = self.data.get_ref().try_clone().map_err(io)?;
        file.seek(SeekFrom::Start(p.header_len)).map_err(io)?;
        let spool = tempfile::tempfile().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let mut w = BufWriter::new(spool);
        std::io::copy(&mut std::io::Read::take(&mut file, self.data_len), &mut w).map_err(io)?;
        self.data = w;
        drop(file);
        drop(p.tmp);
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A fixed temporary name beside the output: a killed run's leftover is replaced by the
        // next run's; an error removes it. Created as any new file is (the umask applies).
        dir.join(format!(".{file_name}.tmp"))
    }

    /// Appends one metadata entry (order is kept). A repeated key is an error.
    pub fn add_metadata(&mut self, key: &str, value: GgufValue) -> Result<()> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(self.err(key, "added twice".into()));
        }
        if self.planned.is_some() {
            return Err(self.err(key, "added after the tensors were planned (the header is written)".into()));
        }
        if key == "general.alignment" && !matches!(value, GgufValue::U32(a) if a > 0 && a.is_power_of_two()) {
            return Err(self.err(key, "must be a u32 power of two".into()));
        }
        if !self.tensors.is_empty() && key == "general.alignment" {
            return Err(self.err(key, "must be set before the first tensor".into()));
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Appends every entry of `metadata` in order (e.g. from `GgufFile::metadata`).
    pub fn add_metadata_all<'a>(&mut self, metadata: impl IntoIterator<Item = &'a (String, GgufValue)>) -> Result<()> {
        for (k, v) in metadata {
            self.add_metadata(k, v.clone())?;
        }
        Ok(())
    }

    /// The alignment the file will use.
    pub fn alignment(&self) -> u64 {
        alignment_of(&self.metadata)
    }

    /// Appends one tensor: `ne` is GGUF's dimension order (innermost first), `bytes` its data
    /// in `ty`'s layout.
    pub fn add_tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType, bytes: &[u8]) -> Result<()> {
        if let Some(p) = &self.planned {
            let k = self.tensors.len();
            let same = p.infos.get(k).is_some_and(|t| t.name == name && t.ne == ne && t.ty == ty);
            if !same {
                self.unplan()?;
            }
        }
        let terr = |msg: String| Error::Tensor { path: self.path.clone(), tensor: name.to_string(), msg };
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(terr("added twice".into()));
        }
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(terr(format!("{} dimensions (GGUF allows 1 to {MAX_DIMS})", ne.len())));
        }
        if !ne[0].is_multiple_of(ty.block_size() as u64) {
            return Err(terr(format!(
                "row length {} is not a multiple of {}'s block size {}",
                ne[0],
                ty.name(),
                ty.block_size()
            )));
        }
        let numel = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("dimensions {ne:?} overflow")))?;
        let need = numel / ty.block_size() as u64 * ty.type_size() as u64;
        if bytes.len() as u64 != need {
            return Err(terr(format!("{} bytes given, {} {:?} needs {}", bytes.len(), ty.name(), ne, need)));
        }
        let align = self.alignment();
        let offset = self.data_len.div_ceil(align) * align;
        let spool_path = if self.planned.is_some() { self.tmp_path() } else { std::env::temp_dir() };
        let spool_err = |e| Error::io(&spool_path, e);
        self.data.write_all(&vec![0u8; (offset - self.data_len) as usize]).map_err(spool_err)?;
        self.data.write_all(bytes).map_err(spool_err)?;
        self.data_len = offset + need;
        self.tensors.push(PendingTensor { name: name.to_string(), ne: ne.to_vec(), ty, offset });
        Ok(())
    }

    /// Writes the file under a temporary name beside `path` and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.planned.as_ref().is_some_and(|p| p.infos.len() != self.tensors.len()) {
            // Fewer tensors than announced: the header written is wrong.
            self.unplan()?;
        }
        let tmp_path = self.tmp_path();
        let GgufWriter { path, metadata, tensors, data, data_len: _, planned } = self;
        let io_err = |e| Error::io(&path, e);
        if let Some(p) = planned {
            let tmp = data.into_inner().map_err(|e| Error::io(&tmp_path, e.into_error()))?;
            tmp.sync_all().map_err(io_err)?;
            drop(tmp);
            std::fs::rename(&tmp_path, &path).map_err(io_err)?;
            p.tmp.disarm();
            return Ok(());
        }
        let guard = RemoveOnDrop(Some(tmp_path.clone()));
        let tmp = std::fs::File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        let mut out = BufWriter::new(tmp);

        let header = header_bytes(&metadata, &tensors);
        out.write_all(&header).map_err(io_err)?;

        let mut spool = data.into_inner().map_err(|e| Error::io(std::env::temp_dir(), e.into_error()))?;
        spool.seek(SeekFrom::Start(0)).map_err(|e| Error::io(std::env::temp_dir(), e))?;
        std::io::copy(&mut spool, &mut out).map_err(io_err)?;
        let tmp = out.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.sync_all().map_err(io_err)?;
        drop(tmp);
        std::fs::rename(&tmp_path, &path).map_err(io_err)?;
        guard.disarm();
        Ok(())
    }

    fn err(&self, key: &str, msg: String) -> Error {
        Error::Config { path: self.path.clone(), key: key.to_string(), msg }
    }
}

/// Removes a file when dropped, unless disarmed: an error leaves no temporary file behind.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The header (magic, counts, metadata, tensor infos), padded to the file's alignment.
fn header_bytes(metadata: &[(String, GgufValue)], tensors: &[PendingTensor]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&GGUF_MAGIC);
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut header, k);
        header.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut header, v);
    }
    for t in tensors {
        put_str(&mut header, &t.name);
        header.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&t.ty.id().to_le_bytes());
        header.extend_from_slice(&t.offset.to_le_bytes());
    }
    let align = alignment_of(metadata) as usize;
    header.resize(header.len().div_ceil(align) * align, 0);
    header
}

fn alignment_of(metadata: &[(String, GgufValue)]) -> u64 {
    metadata
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("general.alignment", GgufValue::U32(a)) => Some(u64::from(*a)),
            _ => None,
        })
        .unwrap_or(DEFAULT_ALIGNMENT)
}

/// The exact size of the file [`GgufWriter`] writes for `metadata` and `tensors` (name, ggml
/// dimensions innermost first, type, data bytes), computed without writing it: the same
/// header bytes, each tensor's data at the next aligned offset.
pub fn planned_file_bytes(metadata: &[(String, GgufValue)], tensors: &[(String, Vec<u64>, GgmlType, u64)]) -> u64 {
    let align = alignment_of(metadata);
    let mut data_len = 0u64;
    let mut infos = Vec::with_capacity(tensors.len());
    for (name, ne, ty, bytes) in tensors {
        let offset = data_len.div_ceil(align) * align;
        data_len = offset + bytes;
        infos.push(PendingTensor { name: name.clone(), ne: ne.clone(), ty: *ty, offset });
    }
    header_bytes(metadata, &infos).len() as u64 + data_len
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&x| u8::from(x))),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
    }
}
