//! llama.cpp importance-matrix files: the GGUF form (`NAME.in_sum2` / `NAME.counts` tensors,
//! `imatrix.*` metadata) and the legacy `.dat` form. Each entry becomes llama.cpp's
//! per-column importance: the mean of x² over the tokens it saw.

use std::collections::HashMap;
use std::path::Path;

use crate::io::gguf::GgufFile;
use crate::tensor::TensorSource;
use crate::{Error, Result};

/// Importance per input column, by weight-tensor name.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    /// Tensor name → importance per input column.
    pub entries: HashMap<String, Vec<f32>>,
    /// Datasets the file says it was computed on.
    pub datasets: Vec<String>,
    /// Chunks it was computed on.
    pub chunks: u32,
}

impl Imatrix {
    /// Importance of the tensor `name`.
    pub fn get(&self, name: &str) -> Option<&Vec<f32>> {
        self.entries.get(name)
    }
}

/// Reads an imatrix file in either form.
pub fn read_imatrix(path: &Path) -> Result<Imatrix> {
    let head = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if head.starts_with(b"GGUF") {
        return read_gguf(path);
    }
    read_legacy(path, &head)
}

fn read_gguf(path: &Path) -> Result<Imatrix> {
    let g = GgufFile::open(path)?;
    let mut m = Imatrix {
        datasets: g.opt_str_array("imatrix.datasets")?.map(|a| a.to_vec()).unwrap_or_default(),
        chunks: g.opt_u32("imatrix.chunk_count")?.unwrap_or(0),
        ..Default::default()
    };
    for t in g.tensors() {
        let Some(name) = t.name.strip_suffix(".in_sum2") else { continue };
        let counts_name = format!("{name}.counts");
        let sums = g.load_f32(&t.name)?;
        let counts = g.load_f32(&counts_name).map_err(|_| Error::Tensor {
            path: path.to_path_buf(),
            tensor: counts_name.clone(),
            msg: "missing: every .in_sum2 needs its .counts".into(),
        })?;
        if counts.is_empty() || sums.len() % counts.len() != 0 {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                tensor: counts_name,
                msg: format!("{} counts do not divide {} sums", counts.len(), sums.len()),
            });
        }
        let per = sums.len() / counts.len();
        let v: Vec<f32> = sums
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let c = counts[i / per];
                if c > 0.0 {
                    s / c
                } else {
                    1.0
                }
            })
            .collect();
        m.entries.insert(name.to_string(), v);
    }
    if m.entries.is_empty() {
        return Err(Error::corrupt(path, "a GGUF file without imatrix tensors (NAME.in_sum2)"));
    }
    Ok(m)
}

fn read_legacy(path: &Path, b: &[u8]) -> Result<Imatrix> {
    let bad = |msg: &str| Error::corrupt(path, format!("not an imatrix file: {msg}"));
    let mut p = 0usize;
    let i32_at = |p: &mut usize| -> Option<i32> {
        let v = b.get(*p..*p + 4)?;
        *p += 4;
        Some(i32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    };
    let n = i32_at(&mut p).filter(|&n| n >= 1).ok_or_else(|| bad("no entries"))?;
    let mut m = Imatrix::default();
    for i in 0..n {
        let len =
            i32_at(&mut p).filter(|&l| l > 0).ok_or_else(|| bad(&format!("entry {i}: bad name length")))? as usize;
        let name = b.get(p..p + len).ok_or_else(|| bad(&format!("entry {i}: truncated name")))?;
        let name = String::from_utf8_lossy(name).into_owned();
        p += len;
        let ncall = i32_at(&mut p).ok_or_else(|| bad(&format!("entry {i}: truncated")))?;
        let nval =
            i32_at(&mut p).filter(|&v| v >= 1).ok_or_else(|| bad(&format!("entry {i}: bad value count")))? as usize;
        let raw = b.get(p..p + 4 * nval).ok_or_else(|| bad(&format!("entry `{name}`: truncated values")))?;
        p += 4 * nval;
        // Legacy sums hold (raw / count) · ncall.
        let div = if ncall > 0 { ncall as f32 } else { 1.0 };
        let v = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / div).collect();
        m.entries.insert(name, v);
    }
    if let Some(c) = i32_at(&mut p) {
        m.chunks = c.max(0) as u32;
        if let Some(len) = i32_at(&mut p) {
            if let Some(d) = b.get(p..p + len.max(0) as usize) {
                if len > 0 {
                    m.datasets.push(String::from_utf8_lossy(d).into_owned());
                }
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_file_divides_by_counts() {
        use crate::io::{GgufArray, GgufValue, GgufWriter};
        use formats::ggml::GgmlType;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("imatrix.gguf");
        let mut w = GgufWriter::new(&p).unwrap();
        w.add_metadata("imatrix.datasets", GgufValue::Array(GgufArray::String(vec!["emma.txt".into()]))).unwrap();
        w.add_metadata("imatrix.chunk_count", GgufValue::U32(50)).unwrap();
        w.add_metadata("imatrix.chunk_size", GgufValue::U32(512)).unwrap();
        let f = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        w.add_tensor("blk.0.ffn_up.weight.in_sum2", &[4], GgmlType::F32, &f(&[10.0, 20.0, 0.0, 4.0])).unwrap();
        w.add_tensor("blk.0.ffn_up.weight.counts", &[1], GgmlType::F32, &f(&[10.0])).unwrap();
        w.add_tensor("blk.0.attn_q.weight.in_sum2", &[2], GgmlType::F32, &f(&[3.0, 3.0])).unwrap();
        w.add_tensor("blk.0.attn_q.weight.counts", &[1], GgmlType::F32, &f(&[0.0])).unwrap();
        w.finish().unwrap();
        let m = read_imatrix(&p).unwrap();
        assert_eq!(m.get("blk.0.ffn_up.weight").unwrap(), &vec![1.0, 2.0, 0.0, 0.4]);
        // No tokens seen: llama.cpp treats every column as equally important.
        assert_eq!(m.get("blk.0.attn_q.weight").unwrap(), &vec![1.0, 1.0]);
        assert_eq!(m.chunks, 50);
        assert_eq!(m.datasets, vec!["emma.txt".to_string()]);
    }

    #[test]
    fn legacy_file_divides_by_ncall() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        let name = b"blk.0.attn_q.weight";
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&4i32.to_le_bytes());
        b.extend_from_slice(&2i32.to_le_bytes());
        b.extend_from_slice(&8f32.to_le_bytes());
        b.extend_from_slice(&2f32.to_le_bytes());
        b.extend_from_slice(&50i32.to_le_bytes());
        b.extend_from_slice(&4i32.to_le_bytes());
        b.extend_from_slice(b"emma");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dat");
        std::fs::write(&p, &b).unwrap();
        let m = read_imatrix(&p).unwrap();
        assert_eq!(m.get("blk.0.attn_q.weight").unwrap(), &vec![2.0, 0.5]);
        assert_eq!(m.chunks, 50);
        assert_eq!(m.datasets, vec!["emma".to_string()]);
        std::fs::write(&p, &b[..20]).unwrap();
        let e = read_imatrix(&p).unwrap_err().to_string();
        assert!(e.contains("x.dat"), "{e}");
    }
}
