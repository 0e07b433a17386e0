//! llama.cpp's named quantization presets (`Q4_K_M`, `Q8_0`, ...) and the ggml type each one
//! gives every tensor of a model.
//!
//! A preset is not one format: `llama-quantize` starts from the preset's base type and then
//! adjusts it tensor by tensor. [`choose_types`] reproduces that choice as llama.cpp commit
//! 0c1e570 makes it (`src/llama-quant.cpp`: `tensor_allows_quantization`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback`), so that a quantsmith file of a preset
//! has the same per-tensor types, hence the same size, as llama.cpp's, and comparisons are fair.
//! The rules, in the order llama.cpp applies them:
//!
//! 1. **Which tensors are quantized at all.** Only tensors with at least two non-trivial
//!    dimensions whose name ends in `weight`, and not norms (`_norm.weight`), MoE router
//!    (`ffn_gate_inp`), positional / token-type embeddings, conv1d and a few other small tables.
//!    All others keep the type they have in the input (the f32 norms stay f32).
//! 2. **Order and counters.** Tensors are visited sorted by layer number (`blk.N.`; tensors
//!    outside blocks first), then by name. Some rules depend on "the i-th attn_v seen" or "the
//!    i-th ffn_down seen", counted in that order — for a dense model this is the layer index.
//!    `use_more_bits(i, n)` is true for the first and last eighth of the layers and for every
//!    third layer in between; `*_M` presets give those layers more bits.
//! 3. **Output head and tied embedding.** `output.weight` — and `token_embd.weight` when the
//!    model has no `output.weight`, because then the embedding *is* the head — become Q6_K, or
//!    Q8_0 when the preset is Q8_0 or when the row length is not a multiple of the base type's
//!    block. An untied embedding keeps the base type.
//! 4. **Per-role bumps** (attn_v, ffn_down, attn_output, attn_k) depending on the preset, the
//!    layer position, grouped-query attention (`n_head / n_head_kv >= 4`), 8-expert MoE,
//!    Falcon, 70B-class models, and whether an imatrix is used: with an imatrix, Q4_0 / Q5_0
//!    give the first eighth of ffn_down Q4_1 / Q5_1; without one, IQ4_NL / IQ4_XS give it Q5_K.
//! 5. **Row-length fallback.** ggml blocks run along a row, so a row length (the innermost
//!    dimension) must be a multiple of the type's block size: 256 for k-quants and IQ4_XS, 32
//!    for the legacy types and IQ4_NL. Where it is not, the 256-block type falls back to a
//!    32-block type of similar bits (Q2_K/Q3_K→Q4_0, Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0,
//!    IQ4_XS→IQ4_NL), and where even 32 does not divide the row, to F16. This is why most of
//!    SmolLM2-135M (576-wide rows) is Q5_0 under Q4_K_M: only its 1536-wide ffn_down rows take
//!    k-quants.
//!
//! llama.cpp's presets that need ggml types quantsmith does not implement (IQ1_*, IQ2_*,
//! IQ3_*, TQ*, MXFP4) are not offered; their branches of the rules are therefore left out.
//! Also left out: the ATTENTION_QKV branch (unreachable in llama.cpp, since a fused qkv
//! tensor is caught by the attn_v branch first) and the GLM5-next special cases.

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

use formats::ggml::GgmlType;

use crate::arch::llama::LlamaConfig;
use crate::io::GgufFile;
use crate::tensor::{DType, TensorInfo};
use crate::{Error, Result};

/// A named llama.cpp quantization preset (`llama-quantize`'s type argument).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Everything f32.
    F32,
    /// 2-D weights f16.
    F16,
    /// 2-D weights bf16.
    BF16,
    /// 4.5 bits, symmetric blocks of 32.
    Q4_0,
    /// 5 bits, blocks of 32 with offset.
    Q4_1,
    /// 5.5 bits, symmetric blocks of 32.
    Q5_0,
    /// 6 bits, blocks of 32 with offset.
    Q5_1,
    /// 8.5 bits, blocks of 32.
    Q8_0,
    /// Q2_K base, Q3_K/Q4_K for sensitive tensors ("Q2_K - Medium").
    Q2_K,
    /// Q2_K base with fewer bumps; needs an imatrix.
    Q2_K_S,
    /// Q3_K everywhere but the head.
    Q3_K_S,
    /// Q3_K base, Q4_K/Q5_K for attn_v, attn_output, ffn_down.
    Q3_K_M,
    /// Q3_K base, Q5_K for attn_v, attn_output, ffn_down.
    Q3_K_L,
    /// Q4_K base, Q5_K for early attn_v/ffn_down.
    Q4_K_S,
    /// Q4_K base, Q6_K for half of attn_v and ffn_down.
    Q4_K_M,
    /// Q5_K everywhere but the head.
    Q5_K_S,
    /// Q5_K base, Q6_K for half of attn_v and ffn_down.
    Q5_K_M,
    /// Q6_K everywhere but the head.
    Q6_K,
    /// Non-linear 4-bit, blocks of 32.
    IQ4_NL,
    /// Non-linear 4-bit, super-blocks of 256.
    IQ4_XS,
}

/// Names `llama-quantize` accepts for the same file type, besides the canonical ones.
const ALIASES: &[(&str, Preset)] = &[("Q3_K", Preset::Q3_K_M), ("Q4_K", Preset::Q4_K_M), ("Q5_K", Preset::Q5_K_M)];

/// llama.cpp presets quantsmith recognizes by name but cannot produce, for a precise error.
const UNSUPPORTED: &[&str] = &[
    "Q1_0",
    "Q2_0",
    "MXFP4_MOE",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ1_S",
    "IQ1_M",
    "TQ1_0",
    "TQ2_0",
    "IQ3_XXS",
    "IQ3_S",
    "IQ3_M",
    "IQ3_XS",
    "COPY",
];

impl Preset {
    /// Every preset quantsmith offers, in llama-quantize's listing order.
    pub const ALL: &'static [Preset] = &[
        Preset::Q4_0,
        Preset::Q4_1,
        Preset::Q5_0,
        Preset::Q5_1,
        Preset::Q2_K,
        Preset::Q2_K_S,
        Preset::Q3_K_S,
        Preset::Q3_K_M,
        Preset::Q3_K_L,
        Preset::IQ4_NL,
        Preset::IQ4_XS,
        Preset::Q4_K_S,
        Preset::Q4_K_M,
        Preset::Q5_K_S,
        Preset::Q5_K_M,
        Preset::Q6_K,
        Preset::Q8_0,
        Preset::F16,
        Preset::BF16,
        Preset::F32,
    ];

    /// Parses a preset as llama-quantize does: a name in any case (`q4_k_m`, the aliases
    /// `Q3_K`/`Q4_K`/`Q5_K`), or the numeric llama.cpp file type (`15`).
    pub fn parse(s: &str) -> Result<Preset> {
        let t = s.trim();
        if let Some(p) = Preset::ALL.iter().find(|p| p.name().eq_ignore_ascii_case(t)) {
            return Ok(*p);
        }
        if let Some((_, p)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(t)) {
            return Ok(*p);
        }
        if let Ok(n) = t.parse::<u32>() {
            if let Some(p) = Preset::from_file_type(n) {
                return Ok(p);
            }
            return Err(Error::Other(format!(
                "preset `{s}`: llama.cpp file type {n} ({}) is not one quantsmith can produce; choose one of {}",
                file_type_name(n),
                Preset::names_list()
            )));
        }
        if UNSUPPORTED.iter().any(|u| u.eq_ignore_ascii_case(t)) {
            return Err(Error::Other(format!(
                "preset `{s}` needs ggml types quantsmith does not implement (IQ1/IQ2/IQ3/TQ/MXFP4); choose one of {}",
                Preset::names_list()
            )));
        }
        Err(Error::Other(format!("unknown preset `{s}`; choose one of {}", Preset::names_list())))
    }

    /// The comma-separated canonical names, for messages and `--help`.
    pub fn names_list() -> String {
        Preset::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    }

    /// The preset whose llama.cpp file type (`general.file_type`) is `ft`, if offered.
    pub fn from_file_type(ft: u32) -> Option<Preset> {
        Preset::ALL.iter().copied().find(|p| p.file_type() == ft)
    }

    /// Canonical name, as llama-quantize spells it (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        use Preset::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q2_K_S => "Q2_K_S",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q6_K => "Q6_K",
            IQ4_NL => "IQ4_NL",
            IQ4_XS => "IQ4_XS",
        }
    }

    /// llama.cpp's `LLAMA_FTYPE_*` number, written to GGUF `general.file_type` (15 for Q4_K_M).
    pub fn file_type(self) -> u32 {
        use Preset::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            Q2_K_S => 21,
            IQ4_NL => 25,
            IQ4_XS => 30,
            BF16 => 32,
        }
    }

    /// The type a tensor gets when no rule adjusts it (llama.cpp's `llama_ftype_get_default_type`).
    pub fn base_type(self) -> GgmlType {
        use Preset::*;
        match self {
            F32 => GgmlType::F32,
            F16 => GgmlType::F16,
            BF16 => GgmlType::Bf16,
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            Q5_0 => GgmlType::Q5_0,
            Q5_1 => GgmlType::Q5_1,
            Q8_0 => GgmlType::Q8_0,
            Q2_K | Q2_K_S => GgmlType::Q2K,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3K,
            Q4_K_S | Q4_K_M => GgmlType::Q4K,
            Q5_K_S | Q5_K_M => GgmlType::Q5K,
            Q6_K => GgmlType::Q6K,
            IQ4_NL => GgmlType::Iq4Nl,
            IQ4_XS => GgmlType::Iq4Xs,
        }
    }

    /// Whether llama.cpp refuses to produce this preset without an imatrix (Q2_K_S: its
    /// Q2_K tensors other than the embedding and head are garbage without one).
    pub fn requires_imatrix(self) -> bool {
        self == Preset::Q2_K_S
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preset> {
        Preset::parse(s)
    }
}

/// llama.cpp's description of a file type number (`llama_model_ftype_name`), for reports:
/// `file_type_name(15)` is `"Q4_K - Medium"`.
pub fn file_type_name(ft: u32) -> &'static str {
    match ft {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        19 => "IQ2_XXS - 2.0625 bpw",
        20 => "IQ2_XS - 2.3125 bpw",
        21 => "Q2_K - Small",
        22 => "IQ3_XS - 3.3 bpw",
        23 => "IQ3_XXS - 3.0625 bpw",
        24 => "IQ1_S - 1.5625 bpw",
        25 => "IQ4_NL - 4.5 bpw",
        26 => "IQ3_S - 3.4375 bpw",
        27 => "IQ3_S mix - 3.66 bpw",
        28 => "IQ2_S - 2.5 bpw",
        29 => "IQ2_M - 2.7 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        31 => "IQ1_M - 1.75 bpw",
        32 => "BF16",
        36 => "TQ1_0 - 1.69 bpw ternary",
        37 => "TQ2_0 - 2.06 bpw ternary",
        38 => "MXFP4 MoE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        _ => "unknown, may not work",
    }
}

/// The model facts llama.cpp's type rules consult (besides the tensor names and shapes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetModelInfo {
    /// GGUF architecture name (`llama`, `qwen2`, `falcon`, ...); Falcon has rules of its own.
    pub arch: String,
    /// Number of blocks (llama.cpp's `n_layer`): the denominator of the layer-position rules.
    pub n_layer: usize,
    /// Query heads (of layer 0).
    pub n_head: usize,
    /// Key/value heads (of layer 0).
    pub n_head_kv: usize,
    /// Experts per MoE layer; 0 for a dense model.
    pub n_expert: usize,
    /// Whether llama.cpp classes the model as 70B (8 query heads per kv head there make attn_v
    /// small, so it gets more bits).
    pub is_70b: bool,
    /// The model file these facts come from, which [`choose_types`]' errors name; empty when
    /// unknown (then errors name only the tensor).
    pub path: PathBuf,
}

impl PresetModelInfo {
    /// Facts for a dense model; `is_70b` is inferred as llama.cpp's loader does.
    pub fn dense(arch: &str, n_layer: usize, n_head: usize, n_head_kv: usize) -> PresetModelInfo {
        PresetModelInfo {
            arch: arch.to_string(),
            n_layer,
            n_head,
            n_head_kv,
            n_expert: 0,
            is_70b: infer_70b(arch, n_layer, n_head, n_head_kv),
            path: PathBuf::new(),
        }
    }

    /// The same facts, naming `path` as the model file in errors.
    pub fn with_path(self, path: impl Into<PathBuf>) -> PresetModelInfo {
        PresetModelInfo { path: path.into(), ..self }
    }

    /// Facts of a Llama-family decoder configuration (dense).
    pub fn from_llama_config(cfg: &LlamaConfig) -> PresetModelInfo {
        PresetModelInfo::dense(&cfg.arch, cfg.n_layer, cfg.n_head, cfg.n_head_kv)
    }

    /// Facts from a GGUF file's `{arch}.*` metadata (any architecture): block_count,
    /// attention.head_count(_kv) — a per-layer array counts by its first entry, as llama.cpp's
    /// grouped-query factor does — and expert_count.
    pub fn from_gguf(g: &GgufFile) -> Result<PresetModelInfo> {
        let arch = g.architecture()?.to_string();
        let key = |s: &str| format!("{arch}.{s}");
        let n_layer = g.get_u32(&key("block_count"))? as usize;
        let n_head = first_count(g, &key("attention.head_count"))?.ok_or_else(|| Error::Config {
            path: g.path().to_path_buf(),
            key: key("attention.head_count"),
            msg: "missing".into(),
        })?;
        let n_head_kv = first_count(g, &key("attention.head_count_kv"))?.unwrap_or(n_head);
        let n_expert = g.opt_u32(&key("expert_count"))?.unwrap_or(0) as usize;
        let mut info = PresetModelInfo::dense(&arch, n_layer, n_head, n_head_kv).with_path(g.path());
        info.n_expert = n_expert;
        Ok(info)
    }

    /// llama.cpp's grouped-query factor `n_head / n_head_kv` (0 when there are no kv heads).
    pub fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }
}

/// A head count stored as a scalar or as a per-layer array (first entry).
fn first_count(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    use crate::io::{GgufArray, GgufValue};
    let bad = |msg: &str| Error::Config { path: g.path().to_path_buf(), key: key.to_string(), msg: msg.to_string() };
    match g.get(key) {
        None => Ok(None),
        Some(GgufValue::Array(arr)) => {
            let first = match arr {
                GgufArray::U32(v) => v.first().map(|&x| x as i128),
                GgufArray::I32(v) => v.first().map(|&x| x as i128),
                GgufArray::U64(v) => v.first().map(|&x| x as i128),
                GgufArray::I64(v) => v.first().map(|&x| x as i128),
                GgufArray::U16(v) => v.first().map(|&x| x as i128),
                GgufArray::U8(v) => v.first().map(|&x| x as i128),
                _ => return Err(bad("expected an integer or an array of integers")),
            };
            match first {
                Some(n) if n >= 0 => Ok(Some(n as usize)),
                Some(_) => Err(bad("negative head count")),
                None => Err(bad("empty array")),
            }
        }
        Some(v) => match v.as_i128() {
            Some(n) if n >= 0 => Ok(Some(n as usize)),
            _ => Err(bad("expected a non-negative integer")),
        },
    }
}

/// llama.cpp's loaders set the 70B class from the layer count for these architectures
/// (Llama only when it uses grouped-query attention; 80 layers with equal heads is 65B).
fn infer_70b(arch: &str, n_layer: usize, n_head: usize, n_head_kv: usize) -> bool {
    match arch {
        "llama" => n_layer == 80 && n_head != n_head_kv,
        "qwen2" | "deci" | "olmo" => n_layer == 80,
        "jais2" => n_layer == 68,
        _ => false,
    }
}

/// The type llama.cpp gives one tensor under a preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorChoice {
    /// Tensor name (GGUF convention).
    pub name: String,
    /// The type it is stored in: the quantized type, or its input type when not quantized.
    pub ggml_type: GgmlType,
    /// Whether llama.cpp quantizes this tensor at all (false: norms, 1-D tensors, ...).
    pub quantizable: bool,
    /// The type the preset's rules chose before the row-length fallback replaced it.
    pub fallback_from: Option<GgmlType>,
}

/// Broad tensor roles, from name substrings as llama.cpp classifies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        if name == "output.weight" {
            return Category::Output;
        }
        if is_token_embd(name) {
            return Category::TokenEmbd;
        }
        // Order matters: the first substring that matches decides.
        let table: [(&str, Category); 10] = [
            ("attn_qkv.weight", Category::AttnQkv),
            ("attn_kv_b.weight", Category::AttnKvB),
            ("attn_v.weight", Category::AttnV),
            ("attn_k.weight", Category::AttnK),
            ("attn_q.weight", Category::AttnQ),
            ("attn_output.weight", Category::AttnOutput),
            ("ffn_up", Category::FfnUp),
            ("ffn_gate", Category::FfnGate),
            ("ffn_down", Category::FfnDown),
            ("", Category::Other),
        ];
        table.iter().find(|(s, _)| name.contains(s)).map(|&(_, c)| c).unwrap_or(Category::Other)
    }

    /// attn_v-like tensors (v projection, fused qkv, MLA's kv_b) share one counter and rule set.
    fn is_attn_v(self) -> bool {
        matches!(self, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
    }
}

fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

/// Number of dimensions as ggml counts them: trailing size-1 dimensions (outermost here) do
/// not count, so a `[1, n]` tensor is 1-D.
fn ggml_n_dims(shape: &[usize]) -> usize {
    // shape is outermost first; ggml's ne is innermost first.
    let ne: Vec<usize> = shape.iter().rev().copied().collect();
    (1..ne.len()).rev().find(|&i| ne[i] > 1).map(|i| i + 1).unwrap_or(1)
}

/// Row length: the innermost dimension (ggml's `ne[0]`).
fn row_len(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

/// Substrings of tensor names llama.cpp never quantizes (small or special tables).
const NEVER_QUANTIZED: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Whether llama.cpp quantizes a tensor (`tensor_allows_quantization` with default params).
fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    if ggml_n_dims(shape) < 2 || !name.ends_with("weight") {
        return false;
    }
    // BERT's position and token-type embeddings.
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    !NEVER_QUANTIZED.iter().any(|s| name.contains(s))
}

/// The layer number llama.cpp reads with `sscanf(name, "blk.%d.")`, if the name has one.
fn parse_layer(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start();
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1i64, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    digits[..end].parse::<i64>().ok().map(|v| sign * v)
}

/// The layer number for ordering: -1 for tensors outside blocks, as llama.cpp's loader.
fn layer_of(name: &str) -> i64 {
    parse_layer(name).unwrap_or(-1)
}

/// llama.cpp's model-loader order: by layer (non-block tensors first), then by name.
fn loader_order(a: &str, b: &str) -> Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.cmp(b))
}

/// First and last eighth of the layers, and every third layer in between.
fn use_more_bits(i_layer: i64, n_layer: i64) -> bool {
    i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer - n_layer / 8) % 3 == 2
}

/// Running state of one pass over the model, as llama.cpp's `quantize_state_impl`.
struct State<'a> {
    preset: Preset,
    model: &'a PresetModelInfo,
    imatrix: bool,
    tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_layer: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

impl State<'_> {
    /// (layer, n_layer) of a per-layer FFN tensor: its running count for a dense model; for
    /// MoE, whose expert tensors are not in layer order, the number in its name.
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64)> {
        if self.model.n_expert > 1 {
            let path = &self.model.path;
            let l = parse_layer(name)
                .ok_or_else(|| tensor_err(path, name, "cannot determine its layer (expected a `blk.N.` name)"))?;
            if l < 0 || l >= self.n_layer {
                return Err(tensor_err(path, name, &format!("layer {l} is outside [0, {})", self.n_layer)));
            }
            return Ok((l, self.n_layer));
        }
        Ok((counter, self.n_layer))
    }

    /// The preset's choice for one quantizable tensor before the row-length fallback
    /// (llama.cpp's `llama_tensor_get_type_impl`, restricted to the presets offered here).
    fn rule_type(&mut self, name: &str, ncols: usize, cat: Category) -> Result<GgmlType> {
        use GgmlType as T;
        use Preset as P;
        let p = self.preset;
        let base = p.base_type();
        let gqa = self.model.n_gqa();
        let falcon = self.model.is_falcon();
        let n_expert = self.model.n_expert;

        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            // The head decides the logits directly; it gets Q6_K unless that is not an upgrade.
            return Ok(if falcon || !ncols.is_multiple_of(base.block_size()) {
                T::Q8_0
            } else if base != T::Q8_0 {
                T::Q6K
            } else {
                base
            });
        }
        if cat == Category::TokenEmbd {
            return Ok(base);
        }
        if cat.is_attn_v() {
            let i = self.i_attention_wv;
            let mut t = match p {
                P::Q2_K => {
                    if gqa >= 4 {
                        T::Q4K
                    } else {
                        T::Q3K
                    }
                }
                P::Q2_K_S if gqa >= 4 => T::Q4K,
                P::Q3_K_M => {
                    if i < 2 {
                        T::Q5K
                    } else {
                        T::Q4K
                    }
                }
                P::Q3_K_L => T::Q5K,
                P::IQ4_NL | P::IQ4_XS if gqa >= 4 => T::Q5K,
                P::Q4_K_M | P::Q5_K_M if use_more_bits(i, self.n_attention_wv) => T::Q6K,
                P::Q4_K_S if i < 4 => T::Q5K,
                _ => base,
            };
            if self.model.is_70b && matches!(t, T::Q3K | T::Q4K) {
                t = T::Q5K;
            }
            if n_expert == 8 {
                t = T::Q8_0;
            }
            self.i_attention_wv += 1;
            return Ok(t);
        }
        match cat {
            Category::AttnK if n_expert == 8 => Ok(T::Q8_0),
            Category::FfnDown => {
                let (il, nl) = self.layer_info(self.i_ffn_down, name)?;
                let umb = use_more_bits(il, nl);
                let t = match p {
                    P::Q2_K => T::Q3K,
                    P::Q2_K_S if il < nl / 8 => T::Q4K,
                    P::Q3_K_M => {
                        if il < nl / 16 {
                            T::Q5K
                        } else if !falcon || umb {
                            T::Q4K
                        } else {
                            T::Q3K
                        }
                    }
                    P::Q3_K_L => {
                        if falcon {
                            T::Q4K
                        } else {
                            T::Q5K
                        }
                    }
                    P::Q4_K_M if falcon => {
                        if il < nl / 16 {
                            T::Q6K
                        } else if umb {
                            T::Q5K
                        } else {
                            T::Q4K
                        }
                    }
                    P::Q4_K_M if umb => T::Q6K,
                    P::IQ4_NL | P::IQ4_XS if il < nl / 8 && !self.imatrix => T::Q5K,
                    P::Q5_K_M if umb => T::Q6K,
                    P::Q4_K_S if !falcon && il < nl / 8 => T::Q5K,
                    // Guards the first ffn_down layers, which misbehave even with an imatrix;
                    // only with one, so that plain Q4_0/Q5_0 files stay as they always were.
                    P::Q4_0 if self.imatrix && il < nl / 8 => T::Q4_1,
                    P::Q5_0 if self.imatrix && il < nl / 8 => T::Q5_1,
                    _ => base,
                };
                self.i_ffn_down += 1;
                Ok(t)
            }
            Category::AttnOutput => Ok(if falcon {
                if p == P::Q3_K_L {
                    T::Q4K
                } else {
                    base
                }
            } else if n_expert == 8 {
                match p {
                    P::Q2_K | P::Q3_K_S | P::Q3_K_M | P::IQ4_NL | P::Q4_K_S | P::Q4_K_M | P::IQ4_XS => T::Q5K,
                    _ => base,
                }
            } else {
                match p {
                    P::Q2_K => T::Q3K,
                    P::Q3_K_M => T::Q4K,
                    P::Q3_K_L => T::Q5K,
                    _ => base,
                }
            }),
            Category::FfnGate => {
                // No offered preset adjusts ffn_gate, but llama.cpp still validates the layer.
                self.layer_info(self.i_ffn_gate, name)?;
                self.i_ffn_gate += 1;
                Ok(base)
            }
            Category::FfnUp => {
                self.layer_info(self.i_ffn_up, name)?;
                self.i_ffn_up += 1;
                Ok(base)
            }
            _ => Ok(base),
        }
    }
}

/// Replaces a type whose block does not divide the row length (llama.cpp's
/// `tensor_type_fallback`). Returns the type to use; errors name `path` and the tensor.
fn fallback(path: &Path, name: &str, ncols: usize, target: GgmlType) -> Result<GgmlType> {
    use GgmlType as T;
    if ncols.is_multiple_of(target.block_size()) {
        return Ok(target);
    }
    let smaller = match target {
        T::Iq4Xs => T::Iq4Nl,
        T::Q2K | T::Q3K => T::Q4_0,
        T::Q4K => T::Q5_0,
        T::Q5K => T::Q5_1,
        T::Q6K => T::Q8_0,
        t if t.block_size() <= 32 => t,
        t => {
            return Err(tensor_err(
                path,
                name,
                &format!(
                    "row length {ncols} is not a multiple of {}'s block and no fallback type is defined",
                    t.name()
                ),
            ))
        }
    };
    // Rows not even a multiple of 32 (rare): no block type fits, store f16.
    Ok(if ncols.is_multiple_of(smaller.block_size()) { smaller } else { T::F16 })
}

/// An error about one tensor of the model file `path`; without a path (facts built by hand),
/// the message starts with the tensor rather than an empty file name.
fn tensor_err(path: &Path, name: &str, msg: &str) -> Error {
    if path.as_os_str().is_empty() {
        return Error::Other(format!("tensor `{name}`: {msg}"));
    }
    Error::Tensor { path: path.to_path_buf(), tensor: name.to_string(), msg: msg.to_string() }
}

/// The ggml type a tensor of storage `d` keeps when it is not quantized.
pub fn input_type(d: DType) -> GgmlType {
    match d {
        DType::Ggml(t) => t,
        DType::F32 => GgmlType::F32,
        DType::F16 => GgmlType::F16,
        DType::Bf16 => GgmlType::Bf16,
    }
}

/// The ggml type llama.cpp's `llama-quantize` (0c1e570) gives every tensor of a model under
/// `preset`, with default options (no overrides, not `--pure`), given whether an imatrix is
/// used. `tensors` carry GGUF names and shapes outermost first; the result is in the same
/// order. Tensors llama.cpp does not quantize keep their input type. A model without
/// `output.weight` is taken to tie its head to `token_embd.weight`.
///
/// Errors: duplicate tensor names, an MoE tensor without a valid layer number, a row length
/// without a fallback, and Q2_K_S without an imatrix (llama.cpp refuses it too).
pub fn choose_types(
    preset: Preset,
    tensors: &[TensorInfo],
    model: &PresetModelInfo,
    imatrix: bool,
) -> Result<Vec<TensorChoice>> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| loader_order(&tensors[a].name, &tensors[b].name));
    for w in order.windows(2) {
        if tensors[w[0]].name == tensors[w[1]].name {
            return Err(tensor_err(&model.path, &tensors[w[0]].name, "appears twice in the model"));
        }
    }
    let cats: Vec<Category> = tensors.iter().map(|t| Category::of(&t.name)).collect();
    let mut st = State {
        preset,
        model,
        imatrix,
        tied_embeddings: !cats.contains(&Category::Output),
        n_attention_wv: cats.iter().filter(|c| c.is_attn_v()).count() as i64,
        i_attention_wv: 0,
        n_layer: model.n_layer as i64,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    let base = preset.base_type();
    let base_is_quantized = !matches!(base, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);

    let mut out: Vec<Option<TensorChoice>> = vec![None; tensors.len()];
    for &i in &order {
        let t = &tensors[i];
        let quantizable = allows_quantization(&t.name, &t.shape);
        let mut choice =
            TensorChoice { name: t.name.clone(), ggml_type: input_type(t.dtype), quantizable, fallback_from: None };
        if quantizable {
            if base_is_quantized {
                let ncols = row_len(&t.shape);
                let ruled = st.rule_type(&t.name, ncols, cats[i])?;
                let fitted = fallback(&model.path, &t.name, ncols, ruled)?;
                choice.ggml_type = fitted;
                if fitted != ruled {
                    choice.fallback_from = Some(ruled);
                }
            } else {
                choice.ggml_type = base;
            }
            if preset.requires_imatrix()
                && !imatrix
                && choice.ggml_type == GgmlType::Q2K
                && !is_token_embd(&t.name)
                && t.name != "output.weight"
            {
                return Err(tensor_err(
                    &model.path,
                    &t.name,
                    &format!("preset {preset} quantizes it to q2_k, which needs an imatrix (--imatrix)"),
                ));
            }
        }
        out[i] = Some(choice);
    }
    // Every index was visited exactly once above.
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_dims_ignores_trailing_ones() {
        assert_eq!(ggml_n_dims(&[576]), 1);
        assert_eq!(ggml_n_dims(&[1, 576]), 1);
        assert_eq!(ggml_n_dims(&[2, 576]), 2);
        assert_eq!(ggml_n_dims(&[8, 1, 576]), 3);
        assert_eq!(ggml_n_dims(&[1, 1, 576]), 1);
    }

    #[test]
    fn loader_order_is_numeric_by_layer() {
        let mut v = vec![
            "blk.10.attn_v.weight",
            "output.weight",
            "blk.2.ffn_up.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        v.sort_by(|a, b| loader_order(a, b));
        assert_eq!(
            v,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_v.weight"
            ]
        );
    }

    #[test]
    fn more_bits_pattern_for_30_layers() {
        let got: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0..3, 26..30, and 3 + 3k + 2.
        assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn fallbacks() {
        use GgmlType as T;
        assert_eq!(fallback(Path::new(""), "x", 576, T::Q4K).unwrap(), T::Q5_0);
        assert_eq!(fallback(Path::new(""), "x", 576, T::Q5K).unwrap(), T::Q5_1);
        assert_eq!(fallback(Path::new(""), "x", 576, T::Q6K).unwrap(), T::Q8_0);
        assert_eq!(fallback(Path::new(""), "x", 576, T::Q2K).unwrap(), T::Q4_0);
        assert_eq!(fallback(Path::new(""), "x", 576, T::Iq4Xs).unwrap(), T::Iq4Nl);
        assert_eq!(fallback(Path::new(""), "x", 1536, T::Q4K).unwrap(), T::Q4K);
        assert_eq!(fallback(Path::new(""), "x", 100, T::Q4K).unwrap(), T::F16);
        assert_eq!(fallback(Path::new(""), "x", 100, T::Q4_0).unwrap(), T::F16);
        assert!(fallback(Path::new(""), "x", 100, T::Q8K).is_err());
    }

    /// Every error of `choose_types` starts with the model file (not ": tensor ..."), and
    /// `from_gguf` records that file.
    #[test]
    fn choose_types_errors_name_the_model_file() {
        use crate::io::{GgufValue, GgufWriter};
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("tiny.gguf");
        let mut w = GgufWriter::new(&file).unwrap();
        w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
        w.add_metadata("llama.block_count", GgufValue::U32(1)).unwrap();
        w.add_metadata("llama.attention.head_count", GgufValue::U32(4)).unwrap();
        w.add_tensor("blk.0.attn_q.weight", &[32, 4], GgmlType::F32, &[0u8; 4 * 32 * 4]).unwrap();
        w.finish().unwrap();
        let g = GgufFile::open(&file).unwrap();
        let info = PresetModelInfo::from_gguf(&g).unwrap();
        assert_eq!(info.path, file);
        let prefix = format!("{}: tensor `", file.display());

        let t = |name: &str| TensorInfo {
            name: name.into(),
            shape: vec![256, 256],
            dtype: DType::F32,
            n_bytes: 256 * 256 * 4,
        };
        let dup = [t("blk.0.attn_q.weight"), t("blk.0.attn_q.weight")];
        let e = choose_types(Preset::Q4_0, &dup, &info, false).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{prefix}blk.0.attn_q.weight`: appears twice")), "{e}");
        // Q2_K_S without an imatrix.
        let e = choose_types(Preset::Q2_K_S, &[t("blk.0.attn_q.weight")], &info, false).unwrap_err().to_string();
        assert!(e.starts_with(&prefix) && e.contains("imatrix"), "{e}");
        // An MoE tensor whose layer is out of range.
        let moe = PresetModelInfo { n_expert: 8, ..info.clone() };
        let e = choose_types(Preset::Q4_K_M, &[t("blk.7.ffn_down_exps.weight")], &moe, false).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{prefix}blk.7.ffn_down_exps.weight`: layer 7")), "{e}");
        // A row length without a fallback.
        let e = fallback(&info.path, "x", 100, GgmlType::Q8K).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{prefix}x`: row length 100")), "{e}");

        // Facts built by hand carry no file: the message starts with the tensor, not ": ".
        let bare = PresetModelInfo::dense("llama", 1, 4, 4);
        let e = choose_types(Preset::Q4_0, &dup, &bare, false).unwrap_err().to_string();
        assert!(e.starts_with("tensor `blk.0.attn_q.weight`: appears twice"), "{e}");
        let e = choose_types(Preset::Q4_0, &dup, &bare.with_path("m.gguf"), false).unwrap_err().to_string();
        assert!(e.starts_with("m.gguf: tensor `blk.0.attn_q.weight`"), "{e}");
    }

    #[test]
    fn parse_names_aliases_numbers() {
        assert_eq!(Preset::parse("q4_k_m").unwrap(), Preset::Q4_K_M);
        assert_eq!(Preset::parse("Q4_K").unwrap(), Preset::Q4_K_M);
        assert_eq!(Preset::parse("15").unwrap(), Preset::Q4_K_M);
        assert_eq!(Preset::parse("7").unwrap(), Preset::Q8_0);
        let e = Preset::parse("IQ2_XXS").unwrap_err().to_string();
        assert!(e.contains("does not implement"), "{e}");
        assert!(Preset::parse("Q9_9").is_err());
        assert!(Preset::parse("19").is_err());
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.name()).unwrap(), *p);
            assert_eq!(Preset::from_file_type(p.file_type()), Some(*p));
        }
        assert_eq!(file_type_name(Preset::Q4_K_M.file_type()), "Q4_K - Medium");
    }
}
