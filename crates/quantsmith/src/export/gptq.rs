//! GPTQ: the layout of AutoGPTQ / GPTQModel checkpoints, which transformers (through optimum
//! and GPTQModel) and vLLM load (`quantization_config.quant_method = "gptq"`).
//!
//! Per quantized linear layer `m` (weights `[out, in]`, `b` bits, groups of `g` inputs):
//!
//! * `m.qweight` int32 `[in·b/32, out]`: for each output column, the unsigned codes
//!   `u = q + 2^(b-1)` (symmetric) or `u` (asymmetric) along the input dimension as one dense
//!   LSB-first bit stream of 32-bit words. For 2/4/8 bits that is `32/b` values per word; for 3
//!   bits AutoGPTQ's packing (`qlinear` `pack`: ten values, then one split across the word
//!   boundary, ...) is the same stream, 32 values in 3 words.
//! * `m.qzeros` int32 `[in/g, out·b/32]`: per group, the zero points of all output columns in
//!   the same stream packing along the output dimension.
//! * `m.scales` f16 `[in/g, out]`; `m.g_idx` int32 `[in]` = `i / g` (no act-order
//!   permutation: quantsmith's act-order keeps groups contiguous, `desc_act: false`);
//!   `m.bias` as a plain tensor when the layer has one.
//! * Dequantized: `(u - zero) · scale`.
//!
//! Zero points: AutoGPTQ's v1 checkpoints (`checkpoint_format: "gptq"`) store `zero - 1`
//! (masked to `b` bits) and every v1 kernel adds the 1 back; GPTQModel's v2 (`gptq_v2`)
//! stores `zero`. v1 is what transformers/optimum and vLLM load by default (vLLM reads every
//! GPTQ checkpoint as v1), so [`Gptq`] writes v1; a symmetric `b`-bit format has zero
//! `2^(b-1)` (stored `2^(b-1) - 1`: `0x77777777` words for 4 bits). v1 cannot store a zero
//! point of 0 (an asymmetric group with no negative value): such a tensor is refused with a
//! message pointing to v2 ([`Gptq::v2`], layout name `gptq-v2`), which GPTQModel loads.
//!
//! A GPTQ config describes one format for the whole model (bits, group size, sym) and runtimes
//! expect every linear layer of the blocks to be quantized with it, so mixed recipes and
//! block linear layers kept in float are refused. The output head may be quantized with the
//! same format (`lm_head: true`, which GPTQModel reads); embeddings may not.

use std::collections::BTreeMap;
use std::path::Path;

use formats::element::Element;
use formats::format::{Format, Granularity, Quantized};
use formats::int::IntKind;
use formats::scale::ScaleStorage;
use serde_json::{json, Value};

use super::hf_dir::{self, HfDirWriter, StDtype};
use super::{ExportModel, Exporter, QuantTensor, Storage};
use crate::io::quantized_dir::pack_words;
use crate::{Error, Result};

/// What the layout can store, for error messages.
pub const STORABLE: &str = "int2/int3/int4/int8 (signed, :restricted, ternary or :asym) with :gN or :ch and \
     scale=f16 (e.g. int4:g128:scale=f16), one format for every quantized tensor; f32/f16/bf16 kept dense \
     for tensors outside the blocks' linear layers";

/// The GPTQ exporter; `v2` writes GPTQModel's `gptq_v2` zero points instead of v1's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gptq {
    /// Write `checkpoint_format: "gptq_v2"` (zero points as they are).
    pub v2: bool,
}

/// One GPTQ quantization setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqFormat {
    /// Bits per weight.
    pub bits: u32,
    /// Inputs per group; `None` for one group per row (`group_size: -1`).
    pub group_size: Option<usize>,
    /// Symmetric (no zero points of its own).
    pub sym: bool,
}

impl GptqFormat {
    /// The GPTQ setting of a format, or why there is none.
    pub fn of(f: &Format) -> std::result::Result<GptqFormat, String> {
        if let Some(t) = f.ggml {
            return Err(format!("{} is a ggml block type", t.name()));
        }
        let [Element::Int(g)] = f.elements.as_slice() else {
            return Err("GPTQ stores integer grids only".into());
        };
        let bits = g.bits();
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(format!("GPTQ kernels take 2, 3, 4 or 8 bits, not {bits}"));
        }
        let sym = match g.kind() {
            IntKind::Signed | IntKind::Restricted if !f.asym => true,
            IntKind::Unsigned if f.asym => false,
            k => return Err(format!("{k:?} integers are not a GPTQ grid")),
        };
        let group_size = match f.granularity {
            Granularity::Group(g) => Some(g),
            Granularity::Channel => None,
            _ => return Err("GPTQ has group or per-channel scales only (:gN or :ch)".into()),
        };
        if f.scale != ScaleStorage::F16 {
            return Err(format!(
                "GPTQ stores f16 scales, this format has {} scales (add :scale=f16)",
                f.scale.spec_name()
            ));
        }
        Ok(GptqFormat { bits, group_size, sym })
    }

    /// Values per 32-bit word along a packed dimension (which must be a multiple of it; 32 for 3 bits).
    fn align(self) -> usize {
        if self.bits == 3 {
            32
        } else {
            32 / self.bits as usize
        }
    }
}

fn refuse(name: &str, what: &str, why: &str) -> Error {
    Error::Other(format!("gptq cannot store tensor `{name}` as {what}: {why}; it can store {STORABLE}"))
}

/// Whether a canonical name is one of the blocks' linear layers (what GPTQ quantizes).
fn is_block_linear(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.starts_with("blk.") && !name.contains("gate_inp") && !hf_dir::is_embedding(name)
}

impl Exporter for Gptq {
    fn name(&self) -> &'static str {
        if self.v2 {
            "gptq-v2"
        } else {
            "gptq"
        }
    }

    fn stores_codes(&self) -> bool {
        true
    }

    fn check(&self, name: &str, shape: &[usize], storage: &Storage) -> Result<()> {
        match storage {
            Storage::Ggml(t) if t.block_size() == 1 => {
                if is_block_linear(name, shape) {
                    Err(refuse(name, t.name(), "GPTQ runtimes expect every linear layer of the blocks quantized"))
                } else {
                    Ok(())
                }
            }
            Storage::Ggml(t) => Err(refuse(name, t.name(), "ggml block types are GGUF's")),
            Storage::Format(f) => {
                let g = GptqFormat::of(f).map_err(|why| refuse(name, &f.spec(), &why))?;
                let [out, inp] = shape else {
                    return Err(refuse(name, &f.spec(), &format!("only 2-D weights are quantized, this is {shape:?}")));
                };
                if hf_dir::is_embedding(name) {
                    return Err(refuse(name, &f.spec(), "GPTQ does not quantize embeddings"));
                }
                f.group_len(*inp).map_err(|e| refuse(name, &f.spec(), &e.to_string()))?;
                let a = g.align();
                if inp % a != 0 || out % a != 0 {
                    return Err(refuse(
                        name,
                        &f.spec(),
                        &format!(
                            "{}-bit packing needs both dimensions to be multiples of {a}, this is {out}x{inp}",
                            g.bits
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    fn write(
        &self,
        out: &Path,
        model: &ExportModel,
        tensors: &mut dyn Iterator<Item = Result<QuantTensor>>,
    ) -> Result<u64> {
        let mut w = HfDirWriter::create(out, model.force, model.max_shard_bytes)?;
        let mut setting: Option<(GptqFormat, String)> = None;
        let mut lm_head = false;
        let mut formats = BTreeMap::new();
        for t in tensors {
            let t = t?;
            self.check(&t.name, &t.shape, &t.storage)?;
            let hf = hf_dir::hf_name(model, &t.name).to_string();
            formats.insert(hf.clone(), json!(t.storage.name()));
            match &t.storage {
                Storage::Format(f) => {
                    let g = GptqFormat::of(f).map_err(|why| refuse(&t.name, &f.spec(), &why))?;
                    match &setting {
                        None => setting = Some((g, f.spec())),
                        Some((s, spec)) if *s != g => {
                            return Err(Error::Other(format!(
                                "gptq stores one format for the whole model: tensor `{}` is {}, earlier ones {spec}",
                                t.name,
                                f.spec()
                            )))
                        }
                        Some(_) => {}
                    }
                    if !t.name.starts_with("blk.") {
                        lm_head = true;
                    }
                    let module = hf_dir::module_of(&hf, &t.name)?;
                    let q = hf_dir::codes_of(&t)?;
                    write_module(&mut w, module, g, &q, &t.name, self.v2)?;
                }
                Storage::Ggml(_) => {
                    let values = t.dequantize()?;
                    hf_dir::add_float(&mut w, &hf, &t.shape, &values, hf_dir::plain_dtype(&t.storage))?;
                }
            }
        }
        let mut config = model.hf_config.clone();
        if let Some(o) = config.as_object_mut() {
            o.insert("quantsmith".into(), json!({"recipe": model.recipe, "formats": formats}));
        }
        let (qc, json_files) = match setting {
            Some((g, _)) => {
                let qc = quantization_config(g, lm_head, self.v2);
                (Some(qc.clone()), vec![("quantize_config.json".to_string(), qc)])
            }
            None => (None, Vec::new()),
        };
        w.finish(&config, qc, &json_files, &model.side_files)
    }
}

/// The `quantization_config` (also written as `quantize_config.json`).
pub fn quantization_config(g: GptqFormat, lm_head: bool, v2: bool) -> Value {
    json!({
        "quant_method": "gptq",
        "bits": g.bits,
        "group_size": g.group_size.map_or(-1, |s| s as i64),
        "desc_act": false,
        "sym": g.sym,
        "static_groups": false,
        "true_sequential": true,
        "lm_head": lm_head,
        "checkpoint_format": if v2 { "gptq_v2" } else { "gptq" },
        "meta": {"quantizer": ["quantsmith"]},
    })
}

fn err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("tensor `{name}`: {msg}"))
}

fn write_module(w: &mut HfDirWriter, module: &str, g: GptqFormat, q: &Quantized, name: &str, v2: bool) -> Result<()> {
    let (out, inp) = (q.rows, q.cols);
    let bits = g.bits;
    let mask = (1u32 << bits) - 1;
    if q.code_bits != bits {
        return Err(err(name, "codes do not match the format"));
    }
    let groups = g.group_size.map_or(1, |s| inp / s);
    let glen = g.group_size.unwrap_or(inp);
    if q.scales.len() != out * groups {
        return Err(err(name, "scales do not match the format"));
    }
    // qweight: column o = output row o's codes as a stream along the input dimension.
    let flip = if g.sym { 1u32 << (bits - 1) } else { 0 };
    let prow = inp * bits as usize / 32;
    let mut qweight = vec![0u32; prow * out];
    let mut codes = vec![0u16; inp];
    for o in 0..out {
        formats::pack::unpack(&q.codes[o * q.row_bytes..(o + 1) * q.row_bytes], bits, &mut codes);
        let col = pack_words(codes.iter().map(|&c| c as u32 ^ flip), bits, inp);
        for (k, v) in col.into_iter().enumerate() {
            qweight[k * out + o] = v;
        }
    }
    // Zero points per (group, output), v1 storing zero - 1.
    let zero_of = |o: usize, gi: usize| -> Result<u32> {
        let z = if g.sym {
            1u32 << (bits - 1)
        } else {
            let z = q.zeros[o * groups + gi];
            if !(z.fract() == 0.0 && z >= 0.0 && z <= mask as f32) {
                return Err(err(name, format!("zero point {z} is not an integer in 0..={mask}")));
            }
            z as u32
        };
        if v2 {
            Ok(z)
        } else if z == 0 {
            Err(err(
                name,
                format!(
                    "group {gi} of row {o} has zero point 0, which GPTQ v1 checkpoints cannot store (they hold zero - 1); \
                     use a symmetric format or the gptq-v2 layout"
                ),
            ))
        } else {
            Ok(z - 1)
        }
    };
    let zcols = out * bits as usize / 32;
    let mut qzeros = Vec::with_capacity(groups * zcols);
    for gi in 0..groups {
        let zs = (0..out).map(|o| zero_of(o, gi)).collect::<Result<Vec<u32>>>()?;
        qzeros.extend(pack_words(zs, bits, out));
    }
    // scales [groups, out] from row-major [out, groups].
    let mut scales = vec![0f32; groups * out];
    for o in 0..out {
        for gi in 0..groups {
            scales[gi * out + o] = q.scales[o * groups + gi];
        }
    }
    if !hf_dir::FloatDtype::F16.holds_exactly(&scales) {
        return Err(err(name, "scales are not f16 values"));
    }
    let g_idx: Vec<i32> = (0..inp).map(|i| (i / glen) as i32).collect();
    let as_i32 = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    w.add(&format!("{module}.qweight"), StDtype::I32, &[prow, out], &as_i32(&qweight))?;
    w.add(&format!("{module}.qzeros"), StDtype::I32, &[groups, zcols], &as_i32(&qzeros))?;
    w.add(&format!("{module}.scales"), StDtype::F16, &[groups, out], &hf_dir::FloatDtype::F16.encode(&scales))?;
    w.add(&format!("{module}.g_idx"), StDtype::I32, &[inp], &hf_dir::i32_bytes(&g_idx))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(spec: &str) -> std::result::Result<GptqFormat, String> {
        GptqFormat::of(&Format::parse(spec).unwrap())
    }

    #[test]
    fn settings_of_specs() {
        assert_eq!(of("int4:g128:scale=f16"), Ok(GptqFormat { bits: 4, group_size: Some(128), sym: true }));
        assert_eq!(of("int3:g64:asym:scale=f16"), Ok(GptqFormat { bits: 3, group_size: Some(64), sym: false }));
        assert_eq!(of("int8:ch:scale=f16"), Ok(GptqFormat { bits: 8, group_size: None, sym: true }));
        for bad in
            ["int4:g128", "int5:g32:scale=f16", "nvfp4", "q4_k", "fp8_e4m3", "int4:t:scale=f16", "int4:g32:scale=bf16"]
        {
            assert!(of(bad).is_err(), "{bad}");
        }
        let e = of("int4:g128").unwrap_err();
        assert!(e.contains("scale=f16"), "{e}");
    }

    #[test]
    fn check_rules() {
        let g = Gptq::default();
        let s = |x| Storage::parse(x).unwrap();
        assert!(g.check("blk.0.attn_q.weight", &[64, 64], &s("int4:g32:scale=f16")).is_ok());
        assert!(g.check("blk.0.attn_q.weight", &[64, 64], &s("f16")).is_err());
        assert!(g.check("blk.0.attn_norm.weight", &[64], &Storage::Ggml(formats::ggml::GgmlType::F32)).is_ok());
        assert!(g.check("token_embd.weight", &[64, 64], &s("int4:g32:scale=f16")).is_err());
        assert!(g.check("blk.0.attn_q.weight", &[64, 48], &s("int3:g16:scale=f16")).is_err());
        let e = g.check("blk.0.attn_q.weight", &[64, 64], &s("q4_k")).unwrap_err().to_string();
        assert!(e.contains("int2/int3/int4/int8"), "{e}");
    }

    #[test]
    fn symmetric_4bit_zeros_are_sevens() {
        let f = Format::parse("int4:g32:scale=f16").unwrap();
        let data: Vec<f32> = (0..64 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let q = f.quantize(&data, 64, 64, None).unwrap();
        let d = tempfile::tempdir().unwrap();
        let mut w = HfDirWriter::create(&d.path().join("m"), false, 0).unwrap();
        write_module(&mut w, "l", GptqFormat::of(&f).unwrap(), &q, "l", false).unwrap();
        w.finish(&json!({}), None, &[], &[]).unwrap();
        let st = crate::io::safetensors::SafetensorsFile::open(&d.path().join("m/model.safetensors")).unwrap();
        let z = st.tensor_bytes("l.qzeros").unwrap();
        assert_eq!(st.entry("l.qzeros").unwrap().shape, vec![2, 8]);
        assert!(z.chunks_exact(4).all(|c| u32::from_le_bytes(c.try_into().unwrap()) == 0x7777_7777));
        assert_eq!(st.entry("l.qweight").unwrap().shape, vec![8, 64]);
    }
}
