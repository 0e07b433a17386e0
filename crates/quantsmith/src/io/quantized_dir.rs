//! Quantized Hugging Face directories: a config.json whose `quantization_config` is
//! compressed-tensors (`pack-quantized`, `float-quantized`, `int-quantized`, `naive-quantized`,
//! `nvfp4-pack-quantized`, `mxfp4-pack-quantized`, or `mixed-precision` of those) or GPTQ
//! (`checkpoint_format` `gptq` or `gptq_v2`). [`QuantView`] exposes each quantized module's
//! weight, dequantized to f32, under the plain `<module>.weight` name and hides its packed
//! parts, so everything that reads a [`crate::tensor::TensorSource`] (eval, inspect, the
//! quantizer) works on these directories unchanged.
//!
//! The layouts (bit packing, which tensor holds what, the zero-point conventions) are
//! described where they are written: `export/compressed_tensors.rs` and `export/gptq.rs`.
//! A compressed-tensors module's scheme is recognised from its tensors (which parts exist,
//! their dtypes and shapes), with the config's groups consulted only for the bit width of
//! packed integers whose rows are too short to tell it, so targets given as regexes or class
//! names need no matching here.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::hf::HfModel;
use super::safetensors::StTensor;
use crate::tensor::{DType, TensorInfo};
use crate::{Error, Result};

/// Packs `n` values of `bits` bits (each < 2^bits) into 32-bit words as one dense LSB-first bit
/// stream: value `i` occupies stream bits `i·bits ..`, stream bit `k` is bit `k % 32` of word
/// `k / 32`, and a value may straddle two words. `ceil(n·bits/32)` words. This is
/// compressed-tensors' `pack_to_int32` and GPTQ's packing (whose 3-bit layout is the same
/// stream: 32 values in 3 words).
pub fn pack_words(vals: impl IntoIterator<Item = u32>, bits: u32, n: usize) -> Vec<u32> {
    let mut out = vec![0u32; (n * bits as usize).div_ceil(32)];
    let mask = if bits == 32 { u32::MAX } else { (1u32 << bits) - 1 };
    for (i, v) in vals.into_iter().take(n).enumerate() {
        let v = (v & mask) as u64;
        let bit = i * bits as usize;
        let (w, off) = (bit / 32, bit % 32);
        let x = v << off;
        out[w] |= x as u32;
        if off + bits as usize > 32 {
            out[w + 1] |= (x >> 32) as u32;
        }
    }
    out
}

/// The inverse of [`pack_words`]: `n` values of `bits` bits from `words`.
pub fn unpack_words(words: &[u32], bits: u32, n: usize) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    (0..n)
        .map(|i| {
            let bit = i * bits as usize;
            let (w, off) = (bit / 32, bit % 32);
            let lo = words[w] as u64;
            let hi = if off + bits as usize > 32 { (words[w + 1] as u64) << 32 } else { 0 };
            (((lo | hi) >> off) & mask) as u32
        })
        .collect()
}

/// E2M1 magnitudes by their 3-bit index (sign is bit 3).
const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

fn e2m1(code: u8) -> f32 {
    let v = E2M1[(code & 7) as usize];
    if code & 8 != 0 {
        -v
    } else {
        v
    }
}

/// How one quantized module's weight is rebuilt.
#[derive(Clone, Debug)]
enum Kind {
    /// compressed-tensors `pack-quantized`: value `(stored - 2^(b-1) - zp) · scale`.
    CtPacked { bits: u32, packed: String, scale: String, zero: Option<String> },
    /// compressed-tensors `float-quantized` / `int-quantized` / `naive-quantized`: an FP8 or
    /// int8 `weight` times `weight_scale` (minus an int8 zero point).
    CtNaive { weight: String, scale: String, zero: Option<String> },
    /// NVFP4: E2M1 codes times E4M3 block scales times the tensor scale.
    CtNvfp4 { packed: String, scale: String, global: String, tensor_scale: Option<f32> },
    /// MXFP4: E2M1 codes times E8M0 block scales.
    CtMxfp4 { packed: String, scale: String },
    /// GPTQ: `qweight` `[in·b/32, out]`, `qzeros` `[groups, out·b/32]` (v1 stores zero − 1),
    /// `scales` `[groups, out]`, `g_idx` `[in]`.
    Gptq {
        bits: u32,
        v1: bool,
        group_size: Option<usize>,
        qweight: String,
        qzeros: String,
        scales: String,
        g_idx: Option<String>,
    },
}

#[derive(Clone, Debug)]
struct Logical {
    shape: Vec<usize>,
    n_bytes: usize,
    kind: Kind,
}

/// The dequantizing view of a quantized Hugging Face directory.
#[derive(Clone, Debug)]
pub struct QuantView {
    method: String,
    /// Tensor names quantsmith sees, in file order.
    order: Vec<String>,
    /// The quantized weights among them.
    logical: HashMap<String, Logical>,
    /// File entries consumed by quantized weights.
    hidden: HashSet<String>,
    /// Nested code sets read at fewer bits (`quantsmith eval --slice`): weight → bits kept.
    slices: HashMap<String, u32>,
}

fn cfg_err(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: path.to_path_buf(), key: key.to_string(), msg: msg.into() }
}

fn terr(path: &Path, tensor: &str, msg: impl Into<String>) -> Error {
    Error::Tensor { path: path.to_path_buf(), tensor: tensor.to_string(), msg: msg.into() }
}

impl QuantView {
    /// The view for a directory whose config.json has a `quantization_config` quantsmith
    /// dequantizes; `Ok(None)` for plain directories (and for methods whose weights are plain).
    pub fn detect(model: &HfModel) -> Result<Option<QuantView>> {
        let Some(qc) = model.config().get("quantization_config").filter(|v| !v.is_null()) else { return Ok(None) };
        let cfg = model.config_path();
        let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or("");
        match method {
            "compressed-tensors" => Self::compressed_tensors(model, qc).map(Some),
            "gptq" => Self::gptq(model, qc).map(Some),
            "" => Err(cfg_err(cfg, "quantization_config.quant_method", "missing")),
            // Other methods: the weights quantsmith finds are what it computes with, or it says
            // the packed tensors' dtypes are not supported when asked for them.
            _ => Ok(None),
        }
    }

    /// `compressed-tensors` or `gptq`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Whether a file entry is a packed part hidden behind a dequantized weight.
    pub fn hides(&self, name: &str) -> bool {
        self.hidden.contains(name)
    }

    fn build(model: &HfModel, method: &str, mut found: Vec<(String, Logical, Vec<String>)>) -> QuantView {
        let mut hidden = HashSet::new();
        let mut logical = HashMap::new();
        // A quantized weight takes the place of its first part in file order.
        let pos: HashMap<&str, usize> =
            model.file_entries().iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
        let first =
            |parts: &[String]| parts.iter().filter_map(|p| pos.get(p.as_str()).copied()).min().unwrap_or(usize::MAX);
        found.sort_by_key(|(_, _, parts)| first(parts));
        let mut at: HashMap<usize, String> = HashMap::new();
        for (name, l, parts) in found {
            at.insert(first(&parts), name.clone());
            hidden.extend(parts);
            logical.insert(name, l);
        }
        let mut order = Vec::new();
        for (i, e) in model.file_entries().iter().enumerate() {
            if let Some(n) = at.get(&i) {
                order.push(n.clone());
            }
            if !hidden.contains(&e.name) && !logical.contains_key(&e.name) {
                order.push(e.name.clone());
            }
        }
        QuantView { method: method.to_string(), order, logical, hidden, slices: HashMap::new() }
    }

    fn compressed_tensors(model: &HfModel, qc: &Value) -> Result<QuantView> {
        let cfg = model.config_path();
        let groups = qc.get("config_groups").and_then(Value::as_object);
        // Integer bit widths the config names, for packed rows too short to tell.
        let mut int_bits: Vec<u32> = groups
            .into_iter()
            .flat_map(|g| g.values())
            .filter_map(|g| g.get("weights"))
            .filter(|w| w.get("type").and_then(Value::as_str) == Some("int"))
            .filter_map(|w| w.get("num_bits").and_then(Value::as_u64))
            .map(|b| b as u32)
            .collect();
        int_bits.sort_unstable();
        int_bits.dedup();
        let entry = |n: &str| model.entry(n);
        let mut found = Vec::new();
        for e in model.file_entries() {
            let Some(module) = e.name.strip_suffix(".weight_scale") else { continue };
            let part = |s: &str| format!("{module}.{s}");
            let scale_e = e;
            let bytes_of = |names: &[String]| names.iter().filter_map(|n| entry(n)).map(|t| t.n_bytes).sum::<usize>();
            if let Some(p) = entry(&part("weight_packed")) {
                match p.dtype.as_str() {
                    "I32" => {
                        let shape_t = entry(&part("weight_shape"))
                            .ok_or_else(|| terr(model.dir(), &p.name, "packed integers without `weight_shape`"))?;
                        let shape = read_shape(model, shape_t)?;
                        let (rows, cols) = two_d(model, &p.name, &shape)?;
                        let words = *p.shape.last().unwrap_or(&0);
                        if p.shape.len() != 2 || p.shape[0] != rows {
                            return Err(terr(
                                model.dir(),
                                &p.name,
                                format!("shape {:?} does not fit weight_shape {shape:?}", p.shape),
                            ));
                        }
                        let fits: Vec<u32> =
                            (1..=8u32).filter(|b| (cols * *b as usize).div_ceil(32) == words).collect();
                        let bits = match fits.as_slice() {
                            [b] => *b,
                            [] => {
                                return Err(terr(
                                    model.dir(),
                                    &p.name,
                                    format!("{words} words per row fit no bit width for {cols} values"),
                                ))
                            }
                            many => match int_bits.iter().filter(|b| many.contains(b)).collect::<Vec<_>>().as_slice() {
                                [b] => **b,
                                _ => {
                                    return Err(cfg_err(
                                        cfg,
                                        "quantization_config.config_groups",
                                        format!("cannot tell the bit width of `{}`", p.name),
                                    ))
                                }
                            },
                        };
                        let zero = entry(&part("weight_zero_point")).map(|z| z.name.clone());
                        let mut parts = vec![p.name.clone(), scale_e.name.clone(), shape_t.name.clone()];
                        parts.extend(zero.clone());
                        let l = Logical {
                            shape: vec![rows, cols],
                            n_bytes: bytes_of(&parts),
                            kind: Kind::CtPacked { bits, packed: p.name.clone(), scale: scale_e.name.clone(), zero },
                        };
                        found.push((part("weight"), l, parts));
                    }
                    "U8" => {
                        let (rows, half) = two_d(model, &p.name, &p.shape)?;
                        let shape = vec![rows, half * 2];
                        match scale_e.dtype.as_str() {
                            "F8_E4M3" => {
                                let global = entry(&part("weight_global_scale"))
                                    .ok_or_else(|| terr(model.dir(), &p.name, "NVFP4 weights without `weight_global_scale`"))?;
                                let tensor_scale = model
                                    .shard_metadata(&p.name)
                                    .and_then(|m| m.get(&format!("quantsmith.tensor_scale.{module}")))
                                    .and_then(|s| s.parse::<f32>().ok());
                                let parts = vec![p.name.clone(), scale_e.name.clone(), global.name.clone()];
                                let l = Logical {
                                    shape,
                                    n_bytes: bytes_of(&parts),
                                    kind: Kind::CtNvfp4 { packed: p.name.clone(), scale: scale_e.name.clone(), global: global.name.clone(), tensor_scale },
                                };
                                found.push((part("weight"), l, parts));
                            }
                            "U8" => {
                                let parts = vec![p.name.clone(), scale_e.name.clone()];
                                let l = Logical {
                                    shape,
                                    n_bytes: bytes_of(&parts),
                                    kind: Kind::CtMxfp4 { packed: p.name.clone(), scale: scale_e.name.clone() },
                                };
                                found.push((part("weight"), l, parts));
                            }
                            other => return Err(terr(model.dir(), &scale_e.name, format!("FP4 block scales of dtype {other} are not supported (E4M3 for NVFP4, U8 E8M0 for MXFP4)"))),
                        }
                    }
                    other => {
                        return Err(terr(
                            model.dir(),
                            &p.name,
                            format!("packed weights of dtype {other} are not supported"),
                        ))
                    }
                }
            } else if let Some(wt) = entry(&part("weight")).filter(|w| matches!(w.dtype.as_str(), "F8_E4M3" | "I8")) {
                let zero = entry(&part("weight_zero_point")).map(|z| z.name.clone());
                let (rows, cols) = two_d(model, &wt.name, &wt.shape)?;
                let mut parts = vec![wt.name.clone(), scale_e.name.clone()];
                parts.extend(zero.clone());
                let l = Logical {
                    shape: vec![rows, cols],
                    n_bytes: bytes_of(&parts),
                    kind: Kind::CtNaive { weight: wt.name.clone(), scale: scale_e.name.clone(), zero },
                };
                // The logical weight has the same name as its stored part.
                found.push((part("weight"), l, parts));
            }
        }
        Ok(Self::build(model, "compressed-tensors", found))
    }

    fn gptq(model: &HfModel, qc: &Value) -> Result<QuantView> {
        let cfg = model.config_path();
        let bits = qc
            .get("bits")
            .and_then(Value::as_u64)
            .filter(|b| matches!(b, 2 | 3 | 4 | 8))
            .ok_or_else(|| cfg_err(cfg, "quantization_config.bits", "missing or not 2, 3, 4 or 8"))?
            as u32;
        let group_size = match qc.get("group_size").and_then(Value::as_i64) {
            Some(g) if g > 0 => Some(g as usize),
            _ => None,
        };
        let format = qc.get("checkpoint_format").or_else(|| qc.get("format")).and_then(Value::as_str).unwrap_or("gptq");
        let v1 = match format {
            "gptq" => true,
            "gptq_v2" => false,
            other => {
                return Err(cfg_err(
                    cfg,
                    "quantization_config.checkpoint_format",
                    format!("`{other}` is not supported (gptq, gptq_v2)"),
                ))
            }
        };
        let entry = |n: &str| model.entry(n);
        let mut found = Vec::new();
        for e in model.file_entries() {
            let Some(module) = e.name.strip_suffix(".qweight") else { continue };
            let part = |s: &str| format!("{module}.{s}");
            let (qz, sc) = match (entry(&part("qzeros")), entry(&part("scales"))) {
                (Some(z), Some(s)) => (z, s),
                _ => return Err(terr(model.dir(), &e.name, "GPTQ qweight without qzeros and scales")),
            };
            let (packed_rows, out) = two_d(model, &e.name, &e.shape)?;
            let in_features = packed_rows * 32 / bits as usize;
            let g_idx = entry(&part("g_idx")).map(|g| g.name.clone());
            let mut parts = vec![e.name.clone(), qz.name.clone(), sc.name.clone()];
            parts.extend(g_idx.clone());
            let n_bytes = parts.iter().filter_map(|n| entry(n)).map(|t| t.n_bytes).sum();
            let l = Logical {
                shape: vec![out, in_features],
                n_bytes,
                kind: Kind::Gptq {
                    bits,
                    v1,
                    group_size,
                    qweight: e.name.clone(),
                    qzeros: qz.name.clone(),
                    scales: sc.name.clone(),
                    g_idx,
                },
            };
            found.push((part("weight"), l, parts));
        }
        Ok(Self::build(model, "gptq", found))
    }

    /// Tensor names and descriptions as quantsmith sees them; `plain` describes file entries.
    pub fn tensors(&self, plain: impl Fn(&str) -> Option<TensorInfo>) -> Vec<TensorInfo> {
        self.order.iter().filter_map(|n| self.info(n, &plain)).collect()
    }

    /// One tensor's description. A quantized weight reports dtype F32 (what it loads as) and
    /// the bytes of all its stored parts.
    pub fn info(&self, name: &str, plain: impl Fn(&str) -> Option<TensorInfo>) -> Option<TensorInfo> {
        match self.logical.get(name) {
            Some(l) => Some(TensorInfo {
                name: name.to_string(),
                shape: l.shape.clone(),
                dtype: DType::F32,
                n_bytes: l.n_bytes,
            }),
            None if self.hidden.contains(name) => None,
            None => plain(name),
        }
    }

    /// Whether `name` is a dequantized weight of this view.
    pub fn is_quantized(&self, name: &str) -> bool {
        self.logical.contains_key(name)
    }

    /// Materializes a quantized weight as f32 (`None` when `name` is not one).
    /// Reads the integer codes of weight `name` at their top `bits` bits from now on (each code
    /// standing for the middle of the codes sharing those bits: see `solve/nested.rs`).
    /// Packed integers with zero points (compressed-tensors) and GPTQ weights can be sliced;
    /// the error says why another cannot.
    pub fn slice(&mut self, name: &str, bits: u32) -> std::result::Result<(), String> {
        let l = self.logical.get(name).ok_or("it is not stored as packed integer codes")?;
        let top = match &l.kind {
            Kind::CtPacked { bits, zero: Some(_), .. } | Kind::Gptq { bits, .. } => *bits,
            _ => return Err("it is not stored as asymmetric integer codes".into()),
        };
        if bits == 0 || bits > top {
            return Err(format!("its codes have {top} bits; a slice keeps 1 to {top} of them, not {bits}"));
        }
        if bits == top {
            self.slices.remove(name);
        } else {
            self.slices.insert(name.to_string(), top - bits);
        }
        Ok(())
    }

    pub fn load_f32(&self, model: &HfModel, name: &str) -> Option<Result<Vec<f32>>> {
        let l = self.logical.get(name)?;
        Some(dequantize(model, name, l, self.slices.get(name).copied().unwrap_or(0)))
    }
}

fn two_d(model: &HfModel, name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [r, c] => Ok((*r, *c)),
        _ => Err(terr(model.dir(), name, format!("expected a 2-D tensor, found shape {shape:?}"))),
    }
}

fn read_shape(model: &HfModel, t: &StTensor) -> Result<Vec<usize>> {
    let b = model.tensor_bytes(&t.name)?;
    let v: Vec<i64> = match t.dtype.as_str() {
        "I64" => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        "I32" => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        other => return Err(terr(model.dir(), &t.name, format!("weight_shape of dtype {other}"))),
    };
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| terr(model.dir(), &t.name, format!("negative dimension {d}"))))
        .collect()
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Float values of a scale or global-scale tensor (F32/F16/BF16/F8_E4M3/F64).
fn floats(model: &HfModel, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = model.entry(name).ok_or_else(|| terr(model.dir(), name, "missing"))?;
    let v = match t.dtype.as_str() {
        "F32" | "F16" | "BF16" => model.shard_of(name)?.load_f32(name)?,
        "F8_E4M3" => {
            let e4m3 = formats::scale::e4m3();
            model.tensor_bytes(name)?.iter().map(|&c| e4m3.decode_code(c as u16)).collect()
        }
        "F64" => model
            .tensor_bytes(name)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => return Err(terr(model.dir(), name, format!("scales of dtype {other} are not supported"))),
    };
    Ok((v, t.shape.clone()))
}

/// Integer values of a zero-point tensor (I8/I32/I64/U8, unpacked).
fn ints(model: &HfModel, name: &str) -> Result<(Vec<i64>, Vec<usize>, String)> {
    let t = model.entry(name).ok_or_else(|| terr(model.dir(), name, "missing"))?;
    let b = model.tensor_bytes(name)?;
    let v = match t.dtype.as_str() {
        "I8" => b.iter().map(|&x| x as i8 as i64).collect(),
        "U8" => b.iter().map(|&x| x as i64).collect(),
        "I32" => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        "I64" => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        other => return Err(terr(model.dir(), name, format!("zero points of dtype {other} are not supported"))),
    };
    Ok((v, t.shape.clone(), t.dtype.clone()))
}

/// Group count and the group of each column for a per-row scale tensor of `shape`
/// (`[1]` tensor, `[rows, 1]` channel, `[rows, G]` groups of cols/G).
fn scale_layout(path: &Path, name: &str, shape: &[usize], rows: usize, cols: usize) -> Result<(usize, usize)> {
    let n: usize = shape.iter().product();
    match shape {
        _ if n == 1 => Ok((0, cols)),
        [r, g] if *r == rows && *g > 0 && cols.is_multiple_of(*g) => Ok((*g, cols / g)),
        _ => Err(terr(path, name, format!("scale shape {shape:?} does not fit a {rows}x{cols} weight"))),
    }
}

/// The code `u` read without its low `shift` bits: the middle of the codes sharing its top
/// bits (`u` itself when `shift` is 0).
#[inline]
fn sliced(u: u32, shift: u32) -> f32 {
    ((u >> shift) << shift) as f32 + ((1u32 << shift) as f32 - 1.0) * 0.5
}

/// Weight `name` dequantized; integer codes read without their low `shift` bits (a slice of a
/// nested code set; 0: as stored).
fn dequantize(model: &HfModel, name: &str, l: &Logical, shift: u32) -> Result<Vec<f32>> {
    let dir: PathBuf = model.dir().to_path_buf();
    let (rows, cols) = (l.shape[0], l.shape[1]);
    let mut out = vec![0f32; rows * cols];
    match &l.kind {
        Kind::CtPacked { bits, packed, scale, zero } => {
            let bits = *bits;
            let w = words(model.tensor_bytes(packed)?);
            let per_row = (cols * bits as usize).div_ceil(32);
            if w.len() != rows * per_row {
                return Err(terr(&dir, packed, "packed size does not match the weight shape"));
            }
            let (s, sshape) = floats(model, scale)?;
            let (groups, glen) = scale_layout(&dir, scale, &sshape, rows, cols)?;
            let offset = 1i64 << (bits - 1);
            // Zero points per (row, group), signed grid units.
            let zp: Option<Vec<i64>> = match zero {
                None => None,
                Some(zn) => {
                    let (v, zshape, dtype) = ints(model, zn)?;
                    if groups == 0 {
                        Some(vec![v.first().copied().unwrap_or(0); 1])
                    } else if dtype == "I32"
                        && zshape.len() == 2
                        && zshape[1] == groups
                        && zshape[0] == (rows * bits as usize).div_ceil(32)
                    {
                        let zw: Vec<u32> = v.iter().map(|&x| x as u32).collect();
                        let mut z = vec![0i64; rows * groups];
                        for g in 0..groups {
                            let col: Vec<u32> = (0..zshape[0]).map(|k| zw[k * groups + g]).collect();
                            for (r, u) in unpack_words(&col, bits, rows).into_iter().enumerate() {
                                z[r * groups + g] = u as i64 - offset;
                            }
                        }
                        Some(z)
                    } else if zshape.iter().product::<usize>() == rows * groups {
                        Some(v)
                    } else {
                        return Err(terr(&dir, zn, format!("zero point shape {zshape:?} does not fit")));
                    }
                }
            };
            out.par_chunks_mut(cols).enumerate().for_each(|(r, orow)| {
                let q = unpack_words(&w[r * per_row..(r + 1) * per_row], bits, cols);
                for (c, (o, u)) in orow.iter_mut().zip(q).enumerate() {
                    let gi = if groups == 0 { 0 } else { r * groups + c / glen };
                    let z = zp.as_ref().map_or(0, |z| z[gi]);
                    *o = if shift == 0 {
                        ((u as i64 - offset - z) as f32) * s[gi]
                    } else {
                        (sliced(u, shift) - (offset + z) as f32) * s[gi]
                    };
                }
            });
        }
        Kind::CtNaive { weight, scale, zero } => {
            let t = model.entry(weight).ok_or_else(|| terr(&dir, weight, "missing"))?;
            let b = model.tensor_bytes(weight)?;
            let vals: Vec<f32> = match t.dtype.as_str() {
                "F8_E4M3" => {
                    let table: Vec<f32> = (0..256u16).map(|c| formats::scale::e4m3().decode_code(c)).collect();
                    b.iter().map(|&c| table[c as usize]).collect()
                }
                _ => b.iter().map(|&c| c as i8 as f32).collect(),
            };
            let (s, sshape) = floats(model, scale)?;
            let (groups, glen) = scale_layout(&dir, scale, &sshape, rows, cols)?;
            let zp = match zero {
                Some(z) => {
                    let v = ints(model, z)?.0;
                    if v.len() != 1 && v.len() != s.len() {
                        return Err(terr(&dir, z, format!("{} zero points for {} scales", v.len(), s.len())));
                    }
                    Some(v)
                }
                None => None,
            };
            for r in 0..rows {
                for c in 0..cols {
                    let gi = if groups == 0 { 0 } else { r * groups + c / glen };
                    let z = zp.as_ref().map_or(0.0, |z| z[if z.len() == 1 { 0 } else { gi }] as f32);
                    out[r * cols + c] = (vals[r * cols + c] - z) * s[gi];
                }
            }
        }
        Kind::CtNvfp4 { packed, scale, global, tensor_scale } => {
            let codes = model.tensor_bytes(packed)?;
            let (s, sshape) = floats(model, scale)?;
            let (groups, glen) = scale_layout(&dir, scale, &sshape, rows, cols)?;
            let (g, _) = floats(model, global)?;
            let gs = *g.first().ok_or_else(|| terr(&dir, global, "empty"))?;
            // quantsmith's own files record the tensor scale the solver multiplied by; others
            // divide by the global scale, as compressed-tensors does.
            let block: Vec<f32> = match tensor_scale {
                Some(ts) if (1.0f64 / *ts as f64) as f32 == gs => s.iter().map(|&v| v * ts).collect(),
                _ => s.iter().map(|&v| v / gs).collect(),
            };
            fp4(codes, &block, groups, glen, rows, cols, &mut out);
        }
        Kind::CtMxfp4 { packed, scale } => {
            let codes = model.tensor_bytes(packed)?;
            let t = model.entry(scale).ok_or_else(|| terr(&dir, scale, "missing"))?;
            let block: Vec<f32> = model.tensor_bytes(scale)?.iter().map(|&e| formats::scale::e8m0_decode(e)).collect();
            let (groups, glen) = scale_layout(&dir, scale, &t.shape, rows, cols)?;
            fp4(codes, &block, groups, glen, rows, cols, &mut out);
        }
        Kind::Gptq { bits, v1, group_size, qweight, qzeros, scales, g_idx } => {
            let bits = *bits;
            let mask = (1u32 << bits) - 1;
            let qw = words(model.tensor_bytes(qweight)?);
            let (s, sshape) = floats(model, scales)?;
            let groups = match sshape.as_slice() {
                [g, o] if *o == rows => *g,
                _ => return Err(terr(&dir, scales, format!("shape {sshape:?} does not fit {rows} output channels"))),
            };
            let zt = model.entry(qzeros).ok_or_else(|| terr(&dir, qzeros, "missing"))?;
            let zw = words(model.tensor_bytes(qzeros)?);
            let zcols = (rows * bits as usize).div_ceil(32);
            if zt.shape != [groups, zcols] {
                return Err(terr(&dir, qzeros, format!("shape {:?}, expected [{groups}, {zcols}]", zt.shape)));
            }
            let zeros: Vec<u32> = (0..groups)
                .flat_map(|g| {
                    unpack_words(&zw[g * zcols..(g + 1) * zcols], bits, rows)
                        .into_iter()
                        .map(|z| if *v1 { (z + 1) & mask } else { z })
                        .collect::<Vec<_>>()
                })
                .collect();
            let gidx: Vec<usize> = match g_idx {
                Some(n) => ints(model, n)?.0.into_iter().map(|g| g.max(0) as usize).collect(),
                None => {
                    let gs = group_size.unwrap_or(cols);
                    (0..cols).map(|i| i / gs).collect()
                }
            };
            if gidx.len() != cols || gidx.iter().any(|&g| g >= groups) {
                return Err(terr(&dir, name, "g_idx does not fit the groups"));
            }
            let prow = (cols * bits as usize).div_ceil(32);
            if qw.len() != prow * rows {
                return Err(terr(&dir, qweight, "size does not match"));
            }
            out.par_chunks_mut(cols).enumerate().for_each(|(o, orow)| {
                let col: Vec<u32> = (0..prow).map(|k| qw[k * rows + o]).collect();
                for (i, (d, u)) in orow.iter_mut().zip(unpack_words(&col, bits, cols)).enumerate() {
                    let g = gidx[i];
                    *d = (sliced(u, shift) - zeros[g * rows + o] as f32) * s[g * rows + o];
                }
            });
        }
    }
    Ok(out)
}

fn fp4(codes: &[u8], block: &[f32], groups: usize, glen: usize, rows: usize, cols: usize, out: &mut [f32]) {
    out.par_chunks_mut(cols).enumerate().for_each(|(r, orow)| {
        let row = &codes[r * cols / 2..(r + 1) * cols / 2];
        for (c, o) in orow.iter_mut().enumerate() {
            let b = row[c / 2];
            let code = if c % 2 == 0 { b & 15 } else { b >> 4 };
            let gi = if groups == 0 { 0 } else { r * groups + c / glen };
            *o = e2m1(code) * block[gi];
        }
    });
    let _ = rows;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_every_width() {
        for bits in 1..=8u32 {
            for n in [1usize, 7, 31, 32, 33, 100] {
                let vals: Vec<u32> =
                    (0..n as u32).map(|i| (i.wrapping_mul(2654435761u32) >> 7) & ((1 << bits) - 1)).collect();
                let w = pack_words(vals.iter().copied(), bits, n);
                assert_eq!(w.len(), (n * bits as usize).div_ceil(32));
                assert_eq!(unpack_words(&w, bits, n), vals, "bits {bits} n {n}");
            }
        }
    }

    #[test]
    fn three_bit_layout_is_autogptq() {
        // AutoGPTQ's 3-bit pack: values 0..9 in word 0 bits 0..29, value 10 in bits 30-31 of
        // word 0 and bit 0 of word 1, values 11..20 from bit 1, value 21 in bit 31 and bits
        // 0-1 of word 2, values 22..31 from bit 2.
        let mut vals = [0u32; 32];
        vals[10] = 0b111;
        vals[21] = 0b101;
        vals[31] = 0b110;
        let w = pack_words(vals.iter().copied(), 3, 32);
        assert_eq!(w, vec![0b11 << 30, (1 << 31) | 1, (0b10) | (0b110 << 29)]);
    }

    #[test]
    fn four_bit_words_are_nibbles() {
        let w = pack_words([1, 2, 3, 4, 5, 6, 7, 8], 4, 8);
        assert_eq!(w, vec![0x8765_4321]);
    }
}
