//! compressed-tensors: the Hugging Face directory layout llm-compressor writes and vLLM and
//! transformers load (`quantization_config.quant_method = "compressed-tensors"`).
//!
//! Facts relied on (compressed-tensors 0.20.1, `compressors/` and `quantization/`):
//!
//! * `pack-quantized` (integer weights, 1-8 bits): `weight_packed` int32 `[out, ceil(in·b/32)]`,
//!   each row one dense LSB-first bit stream of `q + 2^(b-1)` (`q` the signed integer in
//!   `[-2^(b-1), 2^(b-1)-1]`; values straddle words, 32 values fill exactly `b` words:
//!   `pack_quantized/helpers.py::pack_to_int32`); `weight_shape` int64 `[2]`; `weight_scale`
//!   `[out, in/g]` (group), `[out, 1]` (channel) or `[1]` (tensor) in a float dtype;
//!   asymmetric group/channel zero points `weight_zero_point` packed the same way along the
//!   output dimension (`pack_to_int32(zp, b, packed_dim=0)`: int32 `[ceil(out·b/32), groups]`),
//!   per-tensor ones unpacked int8 `[1]`. Dequantized: `(q - zp) · scale` in the scale's dtype
//!   (`lifecycle/forward_helpers.py::_dequantize`).
//! * `float-quantized` FP8: `weight` float8_e4m3fn `[out, in]`, `weight_scale` `[out, 1]` or
//!   `[1]`; dequantized `weight · scale` in the scale's dtype.
//! * `nvfp4-pack-quantized`: `weight_packed` uint8 `[out, in/2]`, two E2M1 codes per byte, the
//!   first element in the low nibble (sign bit 3, magnitude index into
//!   `[0, .5, 1, 1.5, 2, 3, 4, 6]`: `nvfp4/helpers.py`); `weight_scale` float8_e4m3fn
//!   `[out, in/16]`; `weight_global_scale` float32 `[1]`, the *reciprocal* of the per-tensor
//!   scale: the dequantized value is `e2m1 · (weight_scale / weight_global_scale)`
//!   (`_dequantize`: `scale = scale / global_scale`), so it holds `1 / tensor_scale`
//!   (llm-compressor: `448 · 6 / amax`). Strategy `tensor_group`, group size 16.
//! * `mxfp4-pack-quantized`: as NVFP4 without a global scale; `weight_scale` uint8 E8M0
//!   exponents `[out, in/32]`, scale `2^(e - 127)` (`mx_utils.py`). Strategy `group`, 32.
//! * The config: `config_groups` of schemes `{targets, weights: {num_bits, type, symmetric,
//!   strategy, group_size, dynamic, actorder, observer}}`; targets are exact module names or
//!   `re:` regexes or class names, matched exactly (`utils/match.py::match_name`); `ignore`
//!   lists modules kept dense; `format` is the one compression format, or `mixed-precision`
//!   with a `format` per group (`compressors/format.py`); `quantization_status: compressed`;
//!   `version`. vLLM refuses a Linear layer that matches neither a target nor `ignore`
//!   (`find_matched_target`), so every linear layer written dense is listed in `ignore`.
//!
//! Here each distinct format gets its own group whose targets are the exact module names, so
//! mixed recipes are described without regexes. NVFP4's per-tensor scale cannot always be
//! recovered bit-exactly from its reciprocal, so it is also recorded in the shard's
//! `__metadata__` (`quantsmith.tensor_scale.<module>`), which quantsmith's reader uses to give
//! back exactly the weights that were quantized; other readers compute
//! `weight_scale / weight_global_scale`, which differs from quantsmith's `weight_scale ·
//! tensor_scale` by at most one f32 rounding.

use std::collections::BTreeMap;
use std::path::Path;

use formats::element::Element;
use formats::format::{Format, Granularity, Quantized};
use formats::int::IntKind;
use formats::minifloat::Special;
use formats::scale::ScaleStorage;
use serde_json::{json, Value};

use super::hf_dir::{self, FloatDtype, HfDirWriter, StDtype};
use super::{ExportModel, Exporter, QuantTensor, Storage};
use crate::io::quantized_dir::pack_words;
use crate::{Error, Result};

/// The compressed-tensors version whose layout this writes (the `version` config key).
pub const VERSION: &str = "0.20.1";

/// What the layout can store, for error messages.
pub const STORABLE: &str = "int2..int8 (signed, :restricted, ternary or :asym) with :gN or :ch and f32/f16/bf16 \
     scales; fp8_e4m3 with :ch or :t and f32/f16/bf16 scales; nvfp4; mxfp4; f32/f16/bf16 kept dense";

/// The compressed-tensors exporter.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressedTensors;

/// Scale sharing as compressed-tensors names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// One scale (`[1]`).
    Tensor,
    /// One scale per output row (`[out, 1]`).
    Channel,
    /// One scale per group of this many inputs (`[out, in/g]`).
    Group(usize),
}

impl Strategy {
    fn of(g: Granularity) -> Option<Strategy> {
        match g {
            Granularity::Tensor => Some(Strategy::Tensor),
            Granularity::Channel => Some(Strategy::Channel),
            Granularity::Group(g) => Some(Strategy::Group(g)),
            Granularity::None => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Strategy::Tensor => "tensor",
            Strategy::Channel => "channel",
            Strategy::Group(_) => "group",
        }
    }
    fn group_size(self) -> Value {
        match self {
            Strategy::Group(g) => json!(g),
            _ => Value::Null,
        }
    }
}

/// A format as compressed-tensors stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `pack-quantized` integers.
    Int {
        /// Bits per value.
        bits: u32,
        /// Zero points (unsigned grid).
        asym: bool,
        /// Scale sharing.
        strategy: Strategy,
        /// Scale dtype.
        scale: FloatDtypeKey,
    },
    /// `float-quantized` FP8 E4M3.
    Fp8 {
        /// Scale sharing.
        strategy: Strategy,
        /// Scale dtype.
        scale: FloatDtypeKey,
    },
    /// `nvfp4-pack-quantized`.
    Nvfp4,
    /// `mxfp4-pack-quantized`.
    Mxfp4,
}

/// [`FloatDtype`] with an order, for grouping schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloatDtypeKey {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    Bf16,
}

impl FloatDtypeKey {
    fn of(s: ScaleStorage) -> Option<FloatDtypeKey> {
        match s {
            ScaleStorage::F32 => Some(FloatDtypeKey::F32),
            ScaleStorage::F16 => Some(FloatDtypeKey::F16),
            ScaleStorage::Bf16 => Some(FloatDtypeKey::Bf16),
            _ => None,
        }
    }
    fn dtype(self) -> FloatDtype {
        match self {
            FloatDtypeKey::F32 => FloatDtype::F32,
            FloatDtypeKey::F16 => FloatDtype::F16,
            FloatDtypeKey::Bf16 => FloatDtype::Bf16,
        }
    }
}

fn is_minifloat(e: &Element, exp: u32, man: u32, bias: i32, special: Special) -> bool {
    matches!(e, Element::Float(f) if f.exp_bits() == exp && f.man_bits() == man && f.bias() == bias && f.special() == special)
}

impl Scheme {
    /// How compressed-tensors stores `f`, or why it cannot.
    pub fn of(f: &Format) -> std::result::Result<Scheme, String> {
        if let Some(t) = f.ggml {
            return Err(format!("{} is a ggml block type", t.name()));
        }
        if f.elements.len() != 1 {
            return Err("formats choosing among several grids have no compressed-tensors scheme".into());
        }
        let e = &f.elements[0];
        let strategy = Strategy::of(f.granularity).ok_or("unscaled grids have no compressed-tensors scheme")?;
        match e {
            Element::Int(g) => {
                let bits = g.bits();
                let ok_kind = match g.kind() {
                    IntKind::Signed | IntKind::Restricted => !f.asym,
                    IntKind::Unsigned => f.asym,
                    IntKind::Binary => false,
                };
                if !ok_kind || !(2..=8).contains(&bits) {
                    return Err(format!("{}-bit {:?} integers are not a compressed-tensors grid", bits, g.kind()));
                }
                if strategy == Strategy::Tensor && f.asym {
                    return Err("per-tensor asymmetric integers are not supported here (use :ch or :gN)".into());
                }
                if strategy == Strategy::Tensor {
                    return Err(
                        "per-tensor integer scales are not loaded by vLLM's weight-only kernels (use :ch or :gN)"
                            .into(),
                    );
                }
                let scale = FloatDtypeKey::of(f.scale).ok_or_else(|| {
                    format!("integer formats need f32, f16 or bf16 scales, not {}", f.scale.spec_name())
                })?;
                Ok(Scheme::Int { bits, asym: f.asym, strategy, scale })
            }
            _ if is_minifloat(e, 4, 3, 7, Special::Fn) => {
                if matches!(strategy, Strategy::Group(_)) {
                    return Err("FP8 with group scales is not a weight-only scheme vLLM loads (use :ch or :t)".into());
                }
                let scale = FloatDtypeKey::of(f.scale)
                    .ok_or_else(|| format!("FP8 needs f32, f16 or bf16 scales, not {}", f.scale.spec_name()))?;
                Ok(Scheme::Fp8 { strategy, scale })
            }
            _ if is_minifloat(e, 2, 1, 1, Special::Finite) && !f.asym => match (strategy, f.scale) {
                (Strategy::Group(16), ScaleStorage::E4m3) => Ok(Scheme::Nvfp4),
                (Strategy::Group(32), ScaleStorage::E8m0) => Ok(Scheme::Mxfp4),
                _ => Err("FP4 E2M1 is stored as nvfp4 (g16, e4m3 scales) or mxfp4 (g32, e8m0 scales) only".into()),
            },
            _ => Err(format!("element {} has no compressed-tensors scheme", e.spec_name())),
        }
    }

    /// The compression format (`pack-quantized`, ...).
    pub fn format(self) -> &'static str {
        match self {
            Scheme::Int { .. } => "pack-quantized",
            Scheme::Fp8 { .. } => "float-quantized",
            Scheme::Nvfp4 => "nvfp4-pack-quantized",
            Scheme::Mxfp4 => "mxfp4-pack-quantized",
        }
    }

    /// The `weights` quantization arguments.
    pub fn weights(self) -> Value {
        let (bits, ty, sym, strategy, group) = match self {
            Scheme::Int { bits, asym, strategy, .. } => (bits, "int", !asym, strategy.name(), strategy.group_size()),
            Scheme::Fp8 { strategy, .. } => (8, "float", true, strategy.name(), strategy.group_size()),
            Scheme::Nvfp4 => (4, "float", true, "tensor_group", json!(16)),
            Scheme::Mxfp4 => (4, "float", true, "group", json!(32)),
        };
        json!({
            "num_bits": bits,
            "type": ty,
            "symmetric": sym,
            "strategy": strategy,
            "group_size": group,
            "block_structure": null,
            "dynamic": false,
            "actorder": null,
            "observer": "minmax",
            "observer_kwargs": {},
        })
    }
}

fn refuse(name: &str, what: &str, why: &str) -> Error {
    Error::Other(format!("compressed-tensors cannot store tensor `{name}` as {what}: {why}; it can store {STORABLE}"))
}

impl Exporter for CompressedTensors {
    fn name(&self) -> &'static str {
        "compressed-tensors"
    }

    fn stores_codes(&self) -> bool {
        true
    }

    fn check(&self, name: &str, shape: &[usize], storage: &Storage) -> Result<()> {
        match storage {
            Storage::Ggml(t) if t.block_size() == 1 => Ok(()),
            Storage::Ggml(t) => Err(refuse(name, t.name(), "ggml block types are GGUF's")),
            Storage::Format(f) => {
                let scheme = Scheme::of(f).map_err(|why| refuse(name, &f.spec(), &why))?;
                if shape.len() != 2 {
                    return Err(refuse(name, &f.spec(), &format!("only 2-D weights are quantized, this is {shape:?}")));
                }
                f.group_len(shape[1]).map_err(|e| refuse(name, &f.spec(), &e.to_string()))?;
                if matches!(scheme, Scheme::Nvfp4 | Scheme::Mxfp4) && !shape[1].is_multiple_of(2) {
                    return Err(refuse(name, &f.spec(), "rows of FP4 need an even length"));
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
        // Scheme → modules, in order of first appearance.
        let mut groups: Vec<(Scheme, Vec<String>)> = Vec::new();
        let mut ignore = Vec::new();
        let mut formats = BTreeMap::new();
        for t in tensors {
            let t = t?;
            self.check(&t.name, &t.shape, &t.storage)?;
            let hf = hf_dir::hf_name(model, &t.name).to_string();
            formats.insert(hf.clone(), json!(t.storage.name()));
            match &t.storage {
                Storage::Format(f) => {
                    let scheme = Scheme::of(f).map_err(|why| refuse(&t.name, &f.spec(), &why))?;
                    let module = hf_dir::module_of(&hf, &t.name)?.to_string();
                    let q = hf_dir::codes_of(&t)?;
                    write_module(&mut w, &module, f, scheme, &q, &t.name)?;
                    match groups.iter_mut().find(|(s, _)| *s == scheme) {
                        Some((_, m)) => m.push(module),
                        None => groups.push((scheme, vec![module])),
                    }
                }
                Storage::Ggml(_) => {
                    let values = t.dequantize()?;
                    hf_dir::add_float(&mut w, &hf, &t.shape, &values, hf_dir::plain_dtype(&t.storage))?;
                    if t.shape.len() == 2 && !hf_dir::is_embedding(&t.name) {
                        if let Some(m) = hf.strip_suffix(".weight") {
                            ignore.push(m.to_string());
                        }
                    }
                }
            }
        }
        let mut config = model.hf_config.clone();
        if let Some(o) = config.as_object_mut() {
            o.insert("quantsmith".into(), json!({"recipe": model.recipe, "formats": formats}));
        }
        let qc = if groups.is_empty() { None } else { Some(quantization_config(&groups, ignore)) };
        w.finish(&config, qc, &[], &model.side_files)
    }
}

/// The `quantization_config` for groups of modules (each scheme one group).
pub fn quantization_config(groups: &[(Scheme, Vec<String>)], ignore: Vec<String>) -> Value {
    let mixed = groups.len() > 1;
    let mut cg = serde_json::Map::new();
    for (i, (scheme, modules)) in groups.iter().enumerate() {
        let mut g = json!({
            "targets": modules,
            "weights": scheme.weights(),
            "input_activations": null,
            "output_activations": null,
        });
        if mixed {
            g["format"] = json!(scheme.format());
        }
        cg.insert(format!("group_{i}"), g);
    }
    json!({
        "quant_method": "compressed-tensors",
        "format": if mixed { "mixed-precision" } else { groups[0].0.format() },
        "config_groups": cg,
        "ignore": ignore,
        "quantization_status": "compressed",
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
        "sparsity_config": {},
        "version": VERSION,
    })
}

fn err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("tensor `{name}`: {msg}"))
}

/// Scales as stored by a float scale storage (exact: the solver rounded them to it).
fn scale_bytes(scales: &[f32], dtype: FloatDtype, name: &str) -> Result<Vec<u8>> {
    if !dtype.holds_exactly(scales) {
        return Err(err(name, format!("scales are not {} values", dtype.name())));
    }
    Ok(dtype.encode(scales))
}

/// Shape of a scale tensor.
fn scale_shape(strategy: Strategy, rows: usize, cols: usize) -> Vec<usize> {
    match strategy {
        Strategy::Tensor => vec![1],
        Strategy::Channel => vec![rows, 1],
        Strategy::Group(g) => vec![rows, cols / g],
    }
}

/// Integer zero points (grid units) as unsigned integers below 2^bits.
fn zero_points(zeros: &[f32], bits: u32, name: &str) -> Result<Vec<u32>> {
    zeros
        .iter()
        .map(|&z| {
            if z.fract() == 0.0 && z >= 0.0 && z < (1u32 << bits) as f32 {
                Ok(z as u32)
            } else {
                Err(err(name, format!("zero point {z} is not an integer in 0..{}", 1u32 << bits)))
            }
        })
        .collect()
}

/// Writes one quantized module's parts.
fn write_module(
    w: &mut HfDirWriter,
    module: &str,
    f: &Format,
    scheme: Scheme,
    q: &Quantized,
    name: &str,
) -> Result<()> {
    let (rows, cols) = (q.rows, q.cols);
    let expect_bits = f.code_bits();
    if q.code_bits != expect_bits || q.row_bytes != formats::pack::row_bytes(cols, expect_bits) {
        return Err(err(name, "codes do not match the format"));
    }
    match scheme {
        Scheme::Int { bits, asym, strategy, scale } => {
            let words = (cols * bits as usize).div_ceil(32);
            let flip = if asym { 0 } else { 1u32 << (bits - 1) };
            let mut packed = Vec::with_capacity(rows * words * 4);
            let mut codes = vec![0u16; cols];
            for r in 0..rows {
                formats::pack::unpack(&q.codes[r * q.row_bytes..(r + 1) * q.row_bytes], bits, &mut codes);
                // Two's complement q plus 2^(b-1) is q with its sign bit flipped.
                let row = pack_words(codes.iter().map(|&c| c as u32 ^ flip), bits, cols);
                packed.extend(row.iter().flat_map(|x| x.to_le_bytes()));
            }
            w.add(&format!("{module}.weight_packed"), StDtype::I32, &[rows, words], &packed)?;
            w.add(
                &format!("{module}.weight_shape"),
                StDtype::I64,
                &[2],
                &[rows as i64, cols as i64].map(i64::to_le_bytes).concat(),
            )?;
            let sshape = scale_shape(strategy, rows, cols);
            w.add(
                &format!("{module}.weight_scale"),
                scale.dtype().st(),
                &sshape,
                &scale_bytes(&q.scales, scale.dtype(), name)?,
            )?;
            if asym {
                let z = zero_points(&q.zeros, bits, name)?;
                let groups = sshape[1];
                // Packed along the output dimension: column g of [ceil(rows·b/32), groups] is the
                // bit stream of group g's zero points over the rows.
                let zwords = (rows * bits as usize).div_ceil(32);
                let mut out = vec![0u32; zwords * groups];
                for g in 0..groups {
                    let col = pack_words((0..rows).map(|r| z[r * groups + g]), bits, rows);
                    for (k, v) in col.into_iter().enumerate() {
                        out[k * groups + g] = v;
                    }
                }
                w.add(
                    &format!("{module}.weight_zero_point"),
                    StDtype::I32,
                    &[zwords, groups],
                    &hf_dir::i32_bytes(&out.iter().map(|&x| x as i32).collect::<Vec<_>>()),
                )?;
            }
        }
        Scheme::Fp8 { strategy, scale } => {
            w.add(&format!("{module}.weight"), StDtype::F8E4m3, &[rows, cols], &q.codes)?;
            let sshape = scale_shape(strategy, rows, cols);
            w.add(
                &format!("{module}.weight_scale"),
                scale.dtype().st(),
                &sshape,
                &scale_bytes(&q.scales, scale.dtype(), name)?,
            )?;
        }
        Scheme::Nvfp4 => {
            let ts = q.tensor_scale;
            if !(ts.is_finite() && ts > 0.0) {
                return Err(err(name, format!("NVFP4 tensor scale {ts} is not positive")));
            }
            let e4m3 = formats::scale::e4m3();
            let mut codes = Vec::with_capacity(q.scales.len());
            for &s in &q.scales {
                let c = e4m3.encode(s / ts);
                // The stored scale must be what the solver used: e4m3 value times the tensor scale.
                if e4m3.decode_code(c) * ts != s {
                    return Err(err(name, format!("block scale {s} is not an E4M3 value times the tensor scale {ts}")));
                }
                codes.push(c as u8);
            }
            w.add(&format!("{module}.weight_packed"), StDtype::U8, &[rows, cols / 2], &q.codes)?;
            w.add(&format!("{module}.weight_scale"), StDtype::F8E4m3, &[rows, cols / 16], &codes)?;
            let global = (1.0f64 / ts as f64) as f32;
            w.add(&format!("{module}.weight_global_scale"), StDtype::F32, &[1], &global.to_le_bytes())?;
            w.add_metadata(&format!("quantsmith.tensor_scale.{module}"), &format!("{ts:e}"))?;
        }
        Scheme::Mxfp4 => {
            let mut codes = Vec::with_capacity(q.scales.len());
            for &s in &q.scales {
                let c = formats::scale::e8m0_code(s);
                if formats::scale::e8m0_decode(c) != s {
                    return Err(err(name, format!("scale {s} is not a power of two E8M0 holds")));
                }
                codes.push(c);
            }
            w.add(&format!("{module}.weight_packed"), StDtype::U8, &[rows, cols / 2], &q.codes)?;
            w.add(&format!("{module}.weight_scale"), StDtype::U8, &[rows, cols / 32], &codes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(spec: &str) -> std::result::Result<Scheme, String> {
        Scheme::of(&Format::parse(spec).unwrap())
    }

    #[test]
    fn schemes_of_specs() {
        let int = |bits, asym, strategy| Scheme::Int { bits, asym, strategy, scale: FloatDtypeKey::F32 };
        assert_eq!(scheme("int4:g128"), Ok(int(4, false, Strategy::Group(128))));
        assert_eq!(scheme("int4:g32:asym"), Ok(int(4, true, Strategy::Group(32))));
        assert_eq!(scheme("uint8:ch"), Ok(int(8, true, Strategy::Channel)));
        assert_eq!(scheme("int8"), Ok(int(8, false, Strategy::Channel)));
        assert_eq!(scheme("ternary:g64"), Ok(int(2, false, Strategy::Group(64))));
        assert_eq!(scheme("int3:g64:clip=mse"), Ok(int(3, false, Strategy::Group(64))));
        assert_eq!(
            scheme("int4:g64:scale=bf16"),
            Ok(Scheme::Int { bits: 4, asym: false, strategy: Strategy::Group(64), scale: FloatDtypeKey::Bf16 })
        );
        assert_eq!(scheme("fp8_e4m3"), Ok(Scheme::Fp8 { strategy: Strategy::Channel, scale: FloatDtypeKey::F32 }));
        assert_eq!(scheme("fp8_e4m3:t"), Ok(Scheme::Fp8 { strategy: Strategy::Tensor, scale: FloatDtypeKey::F32 }));
        assert_eq!(scheme("nvfp4"), Ok(Scheme::Nvfp4));
        assert_eq!(scheme("fp4_e2m1:g16:scale=e4m3"), Ok(Scheme::Nvfp4));
        assert_eq!(scheme("mxfp4"), Ok(Scheme::Mxfp4));
        for bad in [
            "int1:g64",
            "nf4",
            "int4:g32:dq",
            "int4:g32:scale=u6",
            "fp8_e5m2",
            "mxfp8_e4m3",
            "bitmod4:g128",
            "fp4:g64",
            "int4:t",
            "fp8_e4m3:g64",
            "fp4_e2m1:g32",
            "q4_k",
        ] {
            assert!(scheme(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn check_lists_what_it_stores() {
        let ct = CompressedTensors;
        let e = ct.check("blk.0.attn_q.weight", &[64, 64], &Storage::parse("q4_k").unwrap()).unwrap_err().to_string();
        assert!(e.contains("int2..int8") && e.contains("nvfp4"), "{e}");
        let e = ct.check("x", &[64, 64], &Storage::parse("nf4").unwrap()).unwrap_err().to_string();
        assert!(e.contains("it can store"), "{e}");
        assert!(ct.check("x", &[64, 64], &Storage::parse("int4:g32").unwrap()).is_ok());
        assert!(ct.check("x", &[64, 48], &Storage::parse("int4:g32").unwrap()).is_err());
        assert!(ct.check("x", &[64], &Storage::parse("f16").unwrap()).is_ok());
        assert!(ct.check("x", &[64], &Storage::parse("int4:g32").unwrap()).is_err());
    }

    #[test]
    fn config_groups_per_format() {
        let a = Scheme::of(&Format::parse("int4:g32").unwrap()).unwrap();
        let b = Scheme::Nvfp4;
        let c = quantization_config(
            &[(a, vec!["m.a".into()]), (b, vec!["m.b".into(), "m.c".into()])],
            vec!["lm_head".into()],
        );
        assert_eq!(c["format"], json!("mixed-precision"));
        assert_eq!(c["config_groups"]["group_0"]["format"], json!("pack-quantized"));
        assert_eq!(c["config_groups"]["group_1"]["targets"], json!(["m.b", "m.c"]));
        assert_eq!(c["config_groups"]["group_1"]["weights"]["strategy"], json!("tensor_group"));
        let single = quantization_config(&[(a, vec!["m.a".into()])], vec![]);
        assert_eq!(single["format"], json!("pack-quantized"));
        assert!(single["config_groups"]["group_0"].get("format").is_none());
    }
}
