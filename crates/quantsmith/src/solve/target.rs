//! What a layer is quantized into: a number format of the formats crate (ggml block types
//! included), seen by solvers as "round to nearest" and as a fixed per-group grid (GPTQ).

use formats::format::{Format, GroupParams};
use formats::ggml::GgmlType;
use rayon::prelude::*;

use crate::{Error, Result};

/// The target format of one tensor.
pub type Target = Format;

/// A quantized layer: its dequantized weights and, for ggml types, the encoded blocks.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// ggml block bytes (ggml targets), ready for a GGUF file.
    pub bytes: Option<Vec<u8>>,
    /// The weights as the runtime will see them, `[rows, cols]`.
    pub dequant: Vec<f32>,
}

/// Fixed rounding grids for every (row, group) of a matrix, chosen from the original weights
/// before any of them is updated (GPTQ's static groups).
pub trait Grid: Sync {
    /// The representable value nearest to `x` at (`row`, `col`).
    fn round(&self, row: usize, col: usize, x: f32) -> f32;
    /// Encodes a matrix whose every value lies on the grid.
    fn encode(&self, q: &[f32]) -> Result<Encoded>;
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
        return Ok(Encoded { bytes: Some(bytes), dequant });
    }
    let q = t.quantize(w, rows, cols, importance).map_err(|e| fmt_err(name, e))?;
    let dequant = t.dequantize(&q).map_err(|e| fmt_err(name, e))?;
    Ok(Encoded { bytes: None, dequant })
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
    let ts = t.tensor_scale(w);
    let groups = cols / gl;
    let params: Vec<GroupParams> = (0..rows * groups)
        .into_par_iter()
        .map(|i| {
            let (r, g) = (i / groups, i % groups);
            let seg = &w[r * cols + g * gl..r * cols + (g + 1) * gl];
            let imp: Option<Vec<f32>> = importance.map(|im| im[g * gl..(g + 1) * gl].to_vec());
            t.group_params(seg, imp.as_deref(), ts)
        })
        .collect();
    Ok(Box::new(FormatGrid { t: t.clone(), params, gl, groups }))
}

struct FormatGrid {
    t: Format,
    params: Vec<GroupParams>,
    gl: usize,
    groups: usize,
}

impl Grid for FormatGrid {
    fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        self.t.quantize_value(x, &self.params[row * self.groups + col / self.gl])
    }
    fn encode(&self, q: &[f32]) -> Result<Encoded> {
        Ok(Encoded { bytes: None, dequant: q.to_vec() })
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
    fn encode(&self, q: &[f32]) -> Result<Encoded> {
        let bytes = self.g.encode(q).map_err(|e| fmt_err(&self.name, e))?;
        let mut dequant = vec![0f32; q.len()];
        formats::ggml::dequantize(self.g.ty(), &bytes, &mut dequant).map_err(|e| fmt_err(&self.name, e))?;
        Ok(Encoded { bytes: Some(bytes), dequant })
    }
}
