//! GGUF (llama.cpp): ggml block types and plain floats, with the metadata llama.cpp reads.

use std::path::Path;

use formats::ggml::GgmlType;

use super::{ExportModel, Exporter, PlannedTensor, QuantTensor, Storage, TensorData};
use crate::io::GgufWriter;
use crate::{Error, Result};

/// The GGUF exporter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gguf;

/// The ggml types llama.cpp can store rows of `cols` values in.
pub fn types_for_row(cols: usize) -> Vec<&'static str> {
    use GgmlType::*;
    let all = [Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Xs, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Iq4Nl, F16, Bf16, F32];
    all.iter().filter(|t| cols % t.block_size() == 0).map(|t| t.name()).collect()
}

/// A plain float type's bytes.
pub fn encode_float(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        GgmlType::F16 => Ok(v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect()),
        GgmlType::Bf16 => Ok(v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect()),
        other => formats::ggml::quantize(other, v, v.len(), None).map_err(|e| Error::Other(e.to_string())),
    }
}

impl Exporter for Gguf {
    fn name(&self) -> &'static str {
        "gguf"
    }

    fn check(&self, _name: &str, shape: &[usize], storage: &Storage) -> Result<()> {
        let cols = *shape.last().unwrap_or(&1);
        match storage {
            Storage::Ggml(t) if cols % t.block_size() == 0 => Ok(()),
            _ => Err(Error::Other(format!(
                "GGUF stores only ggml types; rows of {cols} values fit: {}",
                types_for_row(cols).join(", ")
            ))),
        }
    }

    fn write(
        &self,
        out: &Path,
        model: &ExportModel,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64> {
        self.write_planned(out, model, None, tensors)
    }

    fn write_planned(
        &self,
        out: &Path,
        model: &ExportModel,
        planned: Option<&[PlannedTensor]>,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64> {
        let mut w = GgufWriter::new(out)?;
        w.add_metadata_all(model.gguf_metadata.iter())?;
        // Every tensor's name, dimensions and type known: data goes straight to its place.
        let infos: Option<Vec<(String, Vec<u64>, GgmlType)>> = planned.and_then(|p| {
            p.iter()
                .map(|t| match t.storage {
                    Storage::Ggml(ty) => Some((t.name.clone(), t.shape.iter().rev().map(|&d| d as u64).collect(), ty)),
                    _ => None,
                })
                .collect()
        });
        if let Some(infos) = infos {
            w.plan(&infos)?;
        }
        for t in tensors {
            let t = t?;
            let Storage::Ggml(ty) = t.storage else {
                return Err(Error::Other(format!("tensor `{}`: {} is not a ggml type", t.name, t.storage.name())));
            };
            let ne: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            match &t.data {
                TensorData::Ggml(b) => w.add_tensor(&t.name, &ne, ty, b)?,
                TensorData::Float(v) => {
                    let cols = *t.shape.last().unwrap_or(&1);
                    let bytes = if ty.block_size() == 1 {
                        encode_float(ty, v)?
                    } else {
                        formats::ggml::quantize(ty, v, cols, None)
                            .map_err(|e| Error::Other(format!("tensor `{}`: {e}", t.name)))?
                    };
                    w.add_tensor(&t.name, &ne, ty, &bytes)?
                }
                TensorData::Codes(_) => {
                    return Err(Error::Other(format!("tensor `{}`: codes of a non-ggml format reached GGUF", t.name)))
                }
                TensorData::Sparse { .. } | TensorData::LowRank { .. } => {
                    return Err(Error::Other(format!(
                        "tensor `{}`: GGUF has no place for weights kept apart (outliers) or low-rank factors; use the fake-quant layout",
                        t.name
                    )))
                }
            }
        }
        w.finish()?;
        Ok(std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len())
    }
}
