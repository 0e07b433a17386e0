//! What a layer is quantized into: a number format of the formats crate (ggml block types
//! included), seen by solvers as "round to nearest" and as a fixed per-group grid (GPTQ).

use formats::format::{Choice, Format, Granularity, GroupParams, Quantized};
use formats::ggml::GgmlType;
use formats::scale::ScaleStorage;
use rayon::prelude::*;

use crate::export::TensorData;
use crate::{Error, Result};

/// The target format of one tensor.
pub type Target = Format;

/// A quantized layer: what an exporter writes, and the weights a runtime computes with.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// ggml blocks ([`TensorData::Ggml`]) or codes, scales and zero points
    /// ([`TensorData::Codes`]), for every target format.
    pub data: TensorData,
    /// The weights as the runtime will see them, `[rows, cols]`.
    pub dequant: Vec<f32>,
}

/// Fixed rounding grids for every (row, group) of a matrix, chosen from the original weights
/// before any of them is updated (GPTQ's static groups).
pub trait Grid: Sync {
    /// The representable value nearest to `x` at (`row`, `col`).
    fn round(&self, row: usize, col: usize, x: f32) -> f32;
    /// Encodes a matrix whose every value lies on the grid; its buffer then holds the
    /// dequantized weights (no second copy of the matrix).
    fn encode(&self, q: Vec<f32>) -> Result<Encoded>;
    /// Rounds `x` at (`row`, `col`) for an error-compensating solver: the value stored (on the
    /// grid) and the value whose difference from `x` is the error to compensate. They differ
    /// for grids serving several precisions at once ([`super::nested`]), where the error is
    /// the precisions' weighted mean.
    #[inline]
    fn round_compensated(&self, row: usize, col: usize, x: f32) -> (f32, f32) {
        let q = self.round(row, col, x);
        (q, q)
    }
    /// How many running copies of the weights an error-compensating solver keeps for this
    /// grid: 1, or one per precision for a grid whose precisions each compensate their own
    /// error (a cascaded nested grid, [`super::nested`]).
    fn streams(&self) -> usize {
        1
    }
    /// Rounds one weight given its running value in each stream (`xs`, [`Grid::streams`]
    /// long): returns the stored value and writes into `seen` the value whose difference
    /// from each stream's `x` is that stream's error.
    #[inline]
    fn round_streams(&self, row: usize, col: usize, xs: &[f32], seen: &mut [f32]) -> f32 {
        let (q, s) = self.round_compensated(row, col, xs[0]);
        seen[0] = s;
        q
    }
}

/// The ggml type of a target, if it is one.
pub fn ggml_type(t: &Target) -> Option<GgmlType> {
    t.ggml
}

fn fmt_err(name: &str, e: formats::FormatError) -> Error {
    Error::Other(format!("tensor `{name}`: {e}"))
}

/// Round-to-nearest quantization of `w` (`[rows, cols]`) into `t`.
pub fn rtn(t: &Target, name: &str, w: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<Encoded> {
    if let Some(ty) = t.ggml {
        let bytes = formats::ggml::quantize(ty, w, cols, importance).map_err(|e| fmt_err(name, e))?;
        let mut dequant = vec![0f32; rows * cols];
        formats::ggml::dequantize(ty, &bytes, &mut dequant).map_err(|e| fmt_err(name, e))?;
        return Ok(Encoded { data: TensorData::Ggml(bytes), dequant });
    }
    let q = t.quantize(w, rows, cols, importance).map_err(|e| fmt_err(name, e))?;
    let dequant = t.dequantize(&q).map_err(|e| fmt_err(name, e))?;
    Ok(Encoded { data: TensorData::Codes(q), dequant })
}

/// Round-to-nearest as [`rtn`], without the dequantized copy of the whole matrix: the encoded
/// data and the weight error (Σ w², Σ (w − ŵ)²), each work unit (ggml types) or row (other
/// formats) decoded and measured as it is encoded.
pub fn rtn_measured(
    t: &Target,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<(TensorData, formats::ggml::ErrorSums)> {
    if let Some(ty) = t.ggml {
        let (bytes, sums) = formats::ggml::quantize_measured(ty, w, cols, importance).map_err(|e| fmt_err(name, e))?;
        return Ok((TensorData::Ggml(bytes), sums));
    }
    let (q, sums) = t.quantize_measured(w, rows, cols, importance).map_err(|e| fmt_err(name, e))?;
    Ok((TensorData::Codes(q), sums))
}

/// The static grid of `t` for `w`.
pub fn grid(
    t: &Target,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<Box<dyn Grid>> {
    if let Some(ty) = t.ggml {
        let g = formats::ggml::grid::BlockGrid::new(ty, w, rows, cols, importance).map_err(|e| fmt_err(name, e))?;
        return Ok(Box::new(GgmlGrid { g, name: name.to_string() }));
    }
    let gl = t.group_len(cols).map_err(|e| fmt_err(name, e))?;
    if t.elements.len() > 1 && t.choice == Choice::PerTensor {
        return Err(Error::Other(format!(
            "tensor `{name}`: {} chooses its grid per tensor, which a fixed-grid solver cannot do; use rtn",
            t.spec()
        )));
    }
    let ts = t.tensor_scale(w);
    // Per-channel/group: one set of parameters per (row, group); per-tensor and unscaled
    // formats: one for the whole matrix (repeated per row so lookups stay uniform).
    let (groups, params) = match t.granularity {
        Granularity::Tensor | Granularity::None => {
            let imp = importance.map(|imp| imp.iter().cycle().take(w.len()).copied().collect::<Vec<f32>>());
            let p = if t.granularity == Granularity::None {
                GroupParams { scale: 1.0, zero: 0.0, choice: 0 }
            } else {
                t.group_params(w, imp.as_deref(), ts)
            };
            (1, vec![p; rows])
        }
        _ => {
            let groups = cols / gl;
            let per_row: Vec<(Vec<GroupParams>, Vec<f32>)> = (0..rows)
                .into_par_iter()
                .map(|r| {
                    let mut ps: Vec<GroupParams> = (0..groups)
                        .map(|g| {
                            let seg = &w[r * cols + g * gl..r * cols + (g + 1) * gl];
                            t.group_params(seg, importance.map(|im| &im[g * gl..(g + 1) * gl]), ts)
                        })
                        .collect();
                    // Integer-coded scales are rounded per super block, as the format does.
                    let mut sup = Vec::new();
                    if let ScaleStorage::UInt { bits, super_groups } = t.scale {
                        let mut s: Vec<f32> = ps.iter().map(|p| p.scale).collect();
                        sup = formats::scale::quantize_uint_scales(&mut s, bits, super_groups);
                        for (p, s) in ps.iter_mut().zip(s) {
                            p.scale = s;
                        }
                    }
                    (ps, sup)
                })
                .collect();
            let supers: Vec<f32> = per_row.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            let params = per_row.into_iter().flat_map(|(p, _)| p).collect();
            return Ok(Box::new(FormatGrid { t: t.clone(), params, gl, groups, rows, cols, ts, supers }));
        }
    };
    Ok(Box::new(FormatGrid { t: t.clone(), params, gl: cols, groups, rows, cols, ts, supers: Vec::new() }))
}

/// The fixed grid of a non-ggml format with given per-(row, group) parameters (`groups`
/// groups of `gl` columns per row), e.g. chosen by a solver with its own objective
/// ([`super::nested`]). Scales must already be as stored (float scale storage).
pub(crate) fn format_grid(t: &Format, params: Vec<GroupParams>, rows: usize, cols: usize, gl: usize) -> FormatGrid {
    FormatGrid { t: t.clone(), params, gl, groups: cols / gl, rows, cols, ts: 1.0, supers: Vec::new() }
}

/// A format's grid: every (row, group)'s parameters.
pub(crate) struct FormatGrid {
    t: Format,
    params: Vec<GroupParams>,
    gl: usize,
    groups: usize,
    rows: usize,
    cols: usize,
    ts: f32,
    supers: Vec<f32>,
}

impl FormatGrid {
    /// The parameters of the group holding (`row`, `col`).
    #[inline]
    pub(crate) fn params(&self, row: usize, col: usize) -> &GroupParams {
        &self.params[row * self.groups + col / self.gl]
    }
}

impl Grid for FormatGrid {
    fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        self.t.quantize_value(x, &self.params[row * self.groups + col / self.gl])
    }
    /// Codes of values already on the grid, laid out as [`Format::quantize`] lays them out,
    /// so every exporter and [`Format::dequantize`] read them alike.
    fn encode(&self, mut q: Vec<f32>) -> Result<Encoded> {
        let (rows, cols) = (self.rows, self.cols);
        let bits = self.t.code_bits();
        let row_bytes = formats::pack::row_bytes(cols, bits);
        let mut codes = vec![0u8; rows * row_bytes];
        codes.par_chunks_mut(row_bytes.max(1)).enumerate().for_each_init(Vec::new, |buf: &mut Vec<u16>, (r, out)| {
            buf.clear();
            for c in 0..cols {
                buf.push(self.t.encode_value(q[r * cols + c], &self.params[r * self.groups + c / self.gl]));
            }
            formats::pack::pack(buf, bits, out);
        });
        let tensor_wide = matches!(self.t.granularity, Granularity::Tensor | Granularity::None);
        let metas: &[GroupParams] = if tensor_wide { &self.params[..1] } else { &self.params };
        let quantized = Quantized {
            rows,
            cols,
            code_bits: bits,
            codes,
            row_bytes,
            scales: if self.t.granularity == Granularity::None {
                Vec::new()
            } else {
                metas.iter().map(|p| p.scale).collect()
            },
            zeros: if self.t.asym { metas.iter().map(|p| p.zero).collect() } else { Vec::new() },
            choices: if self.t.elements.len() > 1 && self.t.choice == Choice::PerGroup {
                metas.iter().map(|p| p.choice).collect()
            } else {
                Vec::new()
            },
            super_scales: self.supers.clone(),
            tensor_scale: self.ts,
            ggml: Vec::new(),
        };
        self.t.dequantize_into(&quantized, &mut q).map_err(|e| Error::Other(format!("GPTQ codes: {e}")))?;
        Ok(Encoded { data: TensorData::Codes(quantized), dequant: q })
    }
}

struct GgmlGrid {
    g: formats::ggml::grid::BlockGrid,
    name: String,
}

impl Grid for GgmlGrid {
    fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        self.g.round(row, col, x)
    }
    fn encode(&self, mut q: Vec<f32>) -> Result<Encoded> {
        let bytes = self.g.encode(&q).map_err(|e| fmt_err(&self.name, e))?;
        formats::ggml::dequantize(self.g.ty(), &bytes, &mut q).map_err(|e| fmt_err(&self.name, e))?;
        Ok(Encoded { data: TensorData::Ggml(bytes), dequant: q })
    }
}
