//! Hugging Face ↔ GGUF conversion pieces for the Llama family, as llama.cpp's
//! `convert_hf_to_gguf.py` does it (facts from that script, gguf-py's `constants.py`,
//! `vocab.py` and `gguf_writer.py`, and llama.cpp's `llama-vocab.cpp`):
//!
//! * [`gguf_metadata_from_hf`]: the GGUF metadata (architecture keys and byte-level BPE
//!   tokenizer) of a Hugging Face `LlamaForCausalLM` / `MistralForCausalLM` (both become GGUF
//!   architecture `llama`, as `convert_hf_to_gguf.py` registers them on its `LlamaModel`) or
//!   `Qwen2ForCausalLM` (GGUF `qwen2`) directory.
//! * [`gguf_name_from_hf`] / [`hf_name_from_gguf`]: tensor names.
//! * [`permute_qk_for_gguf`] / [`unpermute_qk_from_gguf`]: the q/k row order of GGUF `llama`
//!   files (not `qwen2`), see there.
//! * [`hf_config_from_gguf`] / [`hf_tokenizer_files_from_gguf`]: the reverse, a `config.json`
//!   and `tokenizer.json` + `tokenizer_config.json` for a GGUF input.
//!
//! What is *not* written by [`gguf_metadata_from_hf`], because it depends on the tensors the
//! caller writes: `general.file_type` and `general.quantization_version`. The model-card
//! heuristics of the Python converter (`general.basename`, `finetune`, `size_label`,
//! `organization`, `license`, ...) are not reproduced; `general.name` is config.json's
//! `_name_or_path` (last path component) or else the directory's name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::io::gguf::{GgufArray, GgufFile, GgufValue};
use crate::io::hf::{read_json, HfModel};
use crate::{Error, Result};

/// Token types of `tokenizer.ggml.token_type` (gguf-py `TokenType`, llama.cpp
/// `llama_token_type`).
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token (SentencePiece).
    pub const UNKNOWN: i32 = 2;
    /// A special added token (`<|im_start|>`): never produced from plain text by llama.cpp.
    pub const CONTROL: i32 = 3;
    /// A non-special added token: matched in text before BPE.
    pub const USER_DEFINED: i32 = 4;
    /// A hole in the id range (`[PAD{id}]` placeholders).
    pub const UNUSED: i32 = 5;
    /// A byte token (SentencePiece byte fallback).
    pub const BYTE: i32 = 6;
}

/// The Llama-3 split regex as Hugging Face `tokenizer.json` files spell it.
const HF_LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The same with the case-insensitive group spelt out (engines without `(?i:`).
const HF_LLAMA3_SPLIT_EXPANDED: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (Llama 3's with digits one by one), as `tokenizer.json` spells it.
const HF_QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's with the case-insensitive group spelt out.
const HF_QWEN2_SPLIT_EXPANDED: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer names this module reads and writes, for messages.
const SUPPORTED_PRE: &str = "`smollm` (Digits + GPT-2 byte-level split, SmolLM vocabulary), `llama-bpe` (Llama 3 \
     split regex), `qwen2` (Qwen2 split regex), `gpt-2` (plain GPT-2 byte-level split)";

fn cfg_err(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: path.to_path_buf(), key: key.to_string(), msg: msg.into() }
}

// ---------------------------------------------------------------------------------------------
// Tensor names
// ---------------------------------------------------------------------------------------------

/// Per-block tensors: Hugging Face module path inside `model.layers.N.` ↔ GGUF name inside
/// `blk.N.` (gguf-py `tensor_mapping.py`).
const BLOCK_NAMES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Whole-model tensors (without the `.weight` / `.bias` suffix).
const GLOBAL_NAMES: &[(&str, &str)] =
    &[("model.embed_tokens", "token_embd"), ("lm_head", "output"), ("model.norm", "output_norm")];

fn split_suffix(name: &str) -> Option<(&str, &str)> {
    name.strip_suffix(".weight").map(|s| (s, "weight")).or_else(|| name.strip_suffix(".bias").map(|s| (s, "bias")))
}

fn block_index(s: &str) -> Option<(&str, &str)> {
    let (n, rest) = s.split_once('.')?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))).then_some((n, rest))
}

/// The GGUF name of a Hugging Face Llama-family tensor (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`); `None` for anything else (`rotary_emb.inv_freq`, vision towers).
pub fn gguf_name_from_hf(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some(&(_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (n, module) = block_index(stem.strip_prefix("model.layers.")?)?;
    let &(_, g) = BLOCK_NAMES.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{n}.{g}.{suffix}"))
}

/// The Hugging Face name of a GGUF Llama-family tensor (`blk.3.ffn_up.weight` →
/// `model.layers.3.mlp.up_proj.weight`); `None` for anything else (`rope_freqs.weight`).
pub fn hf_name_from_gguf(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some(&(h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == stem) {
        return Some(format!("{h}.{suffix}"));
    }
    let (n, module) = block_index(stem.strip_prefix("blk.")?)?;
    let &(h, _) = BLOCK_NAMES.iter().find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{n}.{h}.{suffix}"))
}

// ---------------------------------------------------------------------------------------------
// q/k permutation
// ---------------------------------------------------------------------------------------------

fn check_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> usize {
    assert!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "{rows} rows cannot be split into {n_head} heads of even width"
    );
    assert_eq!(w.len(), rows * cols, "a [{rows}, {cols}] matrix has {} elements, not {}", rows * cols, w.len());
    rows / n_head / 2
}

/// Reorders the rows of a Hugging Face q or k projection (`[rows, cols]`, row-major, rows =
/// `n_head * head_dim`; a bias is `cols = 1`) into the order GGUF `llama` files store them.
///
/// Hugging Face's RoPE rotates the pairs (i, i + head_dim/2) of each head ("rotate half");
/// llama.cpp's `llama` architecture uses its normal RoPE, which rotates adjacent pairs
/// (2i, 2i + 1). `convert_hf_to_gguf.py` (`LlamaModel.permute`) therefore reorders each head's
/// rows: `reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2)`, i.e. within head h
///
/// `out[h·head_dim + 2i + j] = in[h·head_dim + j·head_dim/2 + i]`   (i < head_dim/2, j ∈ {0, 1}).
///
/// Which files need it: GGUF architecture `llama` (Llama, Mistral, SmolLM2: everything
/// `convert_hf_to_gguf.py` registers on `LlamaModel`, which sets `undo_permute = True`), for
/// `attn_q` with `n_head` = the query head count and `attn_k` with `n_head` = the key/value
/// head count (`num_key_value_heads`), weights and biases alike. Not `qwen2`: llama.cpp runs
/// Qwen2 with NEOX-style RoPE, which rotates the Hugging Face half-split pairs as stored.
///
/// Panics when `rows` is not a multiple of `2 * n_head` or `w` is not `rows * cols` long.
pub fn permute_qk_for_gguf(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = check_qk(w, rows, cols, n_head);
    let hd = 2 * half;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let dst = (h * hd + 2 * i + j) * cols;
                let src = (h * hd + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The inverse of [`permute_qk_for_gguf`]: GGUF `llama` q/k rows (adjacent RoPE pairs) back to
/// the Hugging Face half-split order, `out[h·head_dim + j·head_dim/2 + i] = in[h·head_dim + 2i + j]`.
/// Same arguments and panics.
pub fn unpermute_qk_from_gguf(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = check_qk(w, rows, cols, n_head);
    let hd = 2 * half;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * hd + 2 * i + j) * cols;
                let dst = (h * hd + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HF → GGUF metadata
// ---------------------------------------------------------------------------------------------

/// The GGUF architecture of a Hugging Face config: `architectures[0]` as
/// `convert_hf_to_gguf.py` dispatches on it, else `model_type`.
fn gguf_arch_of_hf(c: &Value, path: &Path) -> Result<&'static str> {
    let supported =
        "supported: LlamaForCausalLM and MistralForCausalLM (GGUF `llama`), Qwen2ForCausalLM (GGUF `qwen2`)";
    if let Some(first) = c.get("architectures").and_then(Value::as_array).and_then(|a| a.first()) {
        let name = first.as_str().ok_or_else(|| cfg_err(path, "architectures", "expected a list of strings"))?;
        return match name {
            "LlamaForCausalLM" | "MistralForCausalLM" => Ok("llama"),
            "Qwen2ForCausalLM" => Ok("qwen2"),
            other => Err(cfg_err(path, "architectures", format!("`{other}` is not supported; {supported}"))),
        };
    }
    match c.get("model_type").and_then(Value::as_str) {
        Some("llama") | Some("mistral") => Ok("llama"),
        Some("qwen2") => Ok("qwen2"),
        Some(other) => Err(cfg_err(path, "model_type", format!("`{other}` is not supported; {supported}"))),
        None => Err(cfg_err(
            path,
            "architectures",
            format!("neither `architectures` nor `model_type` is given; {supported}"),
        )),
    }
}

struct Cfg<'a> {
    c: &'a Value,
    path: &'a Path,
}

impl Cfg<'_> {
    fn present(&self, key: &str) -> Option<&Value> {
        self.c.get(key).filter(|v| !v.is_null())
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.present(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| cfg_err(self.path, key, format!("expected a non-negative integer, found {v}")))
            })
            .transpose()
    }

    fn req_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| cfg_err(self.path, key, "missing"))
    }

    /// The first of `keys` that is present.
    fn first_u32(&self, keys: &[&str]) -> Result<Option<u32>> {
        for k in keys {
            if let Some(v) = self.opt_u32(k)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn opt_f64_in(&self, obj: &Value, key: &str, label: &str) -> Result<Option<f64>> {
        obj.get(key)
            .filter(|v| !v.is_null())
            .map(|v| v.as_f64().ok_or_else(|| cfg_err(self.path, label, format!("expected a number, found {v}"))))
            .transpose()
    }
}

/// RoPE parameters: config.json's `rope_theta` and `rope_scaling`, or transformers 5's
/// `rope_parameters` object (which holds both).
struct Rope {
    theta: Option<f64>,
    /// (type, the object it came from, its key)
    scaling: Option<(String, Value, &'static str)>,
}

fn rope_of(cfg: &Cfg) -> Result<Rope> {
    let mut theta = cfg.opt_f64_in(cfg.c, "rope_theta", "rope_theta")?;
    let mut scaling = None;
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(obj) = cfg.present(key) else { continue };
        if !obj.is_object() {
            return Err(cfg_err(cfg.path, key, format!("expected an object or null, found {obj}")));
        }
        if theta.is_none() {
            theta = cfg.opt_f64_in(obj, "rope_theta", &format!("{key}.rope_theta"))?;
        }
        let ty = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
        if ty != "default" && scaling.is_none() {
            scaling = Some((ty.to_string(), obj.clone(), key));
        }
    }
    Ok(Rope { theta, scaling })
}

fn push(md: &mut Vec<(String, GgufValue)>, key: impl Into<String>, value: GgufValue) {
    let key = key.into();
    md.retain(|(k, _)| *k != key);
    md.push((key, value));
}

fn gstr(s: impl Into<String>) -> GgufValue {
    GgufValue::String(s.into())
}

/// The GGUF metadata `convert_hf_to_gguf.py` writes for a Hugging Face Llama / Mistral / Qwen2
/// directory with a byte-level BPE `tokenizer.json`: `general.architecture`, `general.type`,
/// `general.name`, the `{arch}.*` hyperparameters and the `tokenizer.*` keys, in the script's
/// order and value types (u32 counts, f32 floats, i32 token types).
///
/// As the script does: `llama` gets `{arch}.vocab_size` and `{arch}.rope.dimension_count`,
/// `qwen2` neither (llama.cpp defaults the rotary width to the head width);
/// `attention.key_length` / `value_length` are written only when config.json states
/// `head_dim`; `rms_norm_eps`, when absent, is transformers' default 1e-6 (llama.cpp requires
/// the key). RoPE scaling other than `linear` is refused (`llama3` needs a `rope_freqs`
/// tensor, `yarn` / `dynamic` / `longrope` keys this module does not write); MistralForCausalLM's
/// `sliding_window` is ignored, as the script ignores it.
///
/// Errors (`Error::Config`, naming the file and key): an architecture other than those three,
/// a tokenizer that is not byte-level BPE (SentencePiece `tokenizer.model`, Unigram,
/// WordPiece, BPE with byte fallback), or a pre-tokenizer this module cannot name for
/// llama.cpp (see [`hf_tokenizer_files_from_gguf`] for the list).
pub fn gguf_metadata_from_hf(m: &HfModel) -> Result<Vec<(String, GgufValue)>> {
    let cfg = Cfg { c: m.config(), path: m.config_path() };
    let arch = gguf_arch_of_hf(cfg.c, cfg.path)?;
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, GgufValue)> = Vec::new();
    push(&mut md, "general.architecture", gstr(arch));
    push(&mut md, "general.type", gstr("model"));
    let name = cfg
        .present("_name_or_path")
        .and_then(Value::as_str)
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| m.dir().canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    push(&mut md, "general.name", gstr(name));

    let n_layer = cfg.req_u32("num_hidden_layers")?;
    let n_embd = cfg.req_u32("hidden_size")?;
    let n_head = cfg.req_u32("num_attention_heads")?;
    if n_head == 0 {
        return Err(cfg_err(cfg.path, "num_attention_heads", "must be positive"));
    }
    push(&mut md, k("block_count"), GgufValue::U32(n_layer));
    if let Some(n_ctx) = cfg.first_u32(&["max_position_embeddings", "n_ctx", "n_positions", "max_length"])? {
        push(&mut md, k("context_length"), GgufValue::U32(n_ctx));
    }
    push(&mut md, k("embedding_length"), GgufValue::U32(n_embd));
    push(&mut md, k("feed_forward_length"), GgufValue::U32(cfg.req_u32("intermediate_size")?));
    push(&mut md, k("attention.head_count"), GgufValue::U32(n_head));
    if let Some(kv) = cfg.opt_u32("num_key_value_heads")? {
        if kv == 0 || n_head % kv != 0 {
            return Err(cfg_err(
                cfg.path,
                "num_key_value_heads",
                format!("{n_head} query heads cannot share {kv} key/value heads"),
            ));
        }
        push(&mut md, k("attention.head_count_kv"), GgufValue::U32(kv));
    }
    let rope = rope_of(&cfg)?;
    if let Some(theta) = rope.theta {
        push(&mut md, k("rope.freq_base"), GgufValue::F32(theta as f32));
    }
    let eps = cfg.opt_f64_in(cfg.c, "rms_norm_eps", "rms_norm_eps")?.unwrap_or(1e-6);
    push(&mut md, k("attention.layer_norm_rms_epsilon"), GgufValue::F32(eps as f32));
    let explicit_head_dim = cfg.opt_u32("head_dim")?;
    if let Some(hd) = explicit_head_dim {
        push(&mut md, k("attention.key_length"), GgufValue::U32(hd));
        push(&mut md, k("attention.value_length"), GgufValue::U32(hd));
    }
    let head_dim = match explicit_head_dim {
        Some(hd) => hd,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(cfg_err(
                cfg.path,
                "hidden_size",
                format!("{n_embd} is not a multiple of {n_head} heads and no head_dim is given"),
            ))
        }
    };
    if let Some(f) = cfg.opt_f64_in(cfg.c, "partial_rotary_factor", "partial_rotary_factor")? {
        if f != 1.0 {
            return Err(cfg_err(
                cfg.path,
                "partial_rotary_factor",
                format!("{f}: partial rotary embeddings are not supported"),
            ));
        }
    }
    let vocab_size = cfg.opt_u32("vocab_size")?;
    if arch == "llama" {
        let vs = vocab_size.ok_or_else(|| cfg_err(cfg.path, "vocab_size", "missing"))?;
        push(&mut md, k("vocab_size"), GgufValue::U32(vs));
        push(&mut md, k("rope.dimension_count"), GgufValue::U32(head_dim));
    }
    if let Some((ty, obj, key)) = &rope.scaling {
        let factor = cfg.opt_f64_in(obj, "factor", &format!("{key}.factor"))?;
        match (ty.as_str(), factor) {
            ("linear", Some(f)) => {
                push(&mut md, k("rope.scaling.type"), gstr("linear"));
                push(&mut md, k("rope.scaling.factor"), GgufValue::F32(f as f32));
            }
            _ => {
                return Err(cfg_err(
                    cfg.path,
                    key,
                    format!(
                        "RoPE scaling `{ty}` cannot be written: only `linear` (with a `factor`) is supported \
                         (`llama3` needs llama.cpp's rope_freqs tensor; yarn/dynamic/longrope keys are not written)"
                    ),
                ))
            }
        }
    }

    let tok = tokenizer_metadata(m.dir(), &cfg, arch, vocab_size)?;
    md.extend(tok);
    Ok(md)
}

/// One entry of tokenizer.json's `added_tokens`.
struct Added {
    id: u32,
    content: String,
    special: bool,
}

/// llama.cpp's `does_token_look_special` (convert_hf_to_gguf.py): added tokens that some
/// models forget to mark special but that are control tokens.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The content of a tokenizer_config.json special-token entry: a string or an AddedToken
/// object with `content`.
fn token_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

fn tokenizer_metadata(dir: &Path, cfg: &Cfg, arch: &str, vocab_size: Option<u32>) -> Result<Vec<(String, GgufValue)>> {
    let tj_path = dir.join("tokenizer.json");
    if !tj_path.exists() {
        let what = if dir.join("tokenizer.model").exists() {
            "missing; the directory has a SentencePiece tokenizer.model, which is not supported (quantsmith converts \
             byte-level BPE tokenizers, GGUF `gpt2`)"
        } else {
            "missing (quantsmith converts byte-level BPE tokenizers given as tokenizer.json)"
        };
        return Err(cfg_err(&tj_path, "tokenizer.json", what));
    }
    let tj = read_json(&tj_path)?;
    let terr = |key: &str, msg: String| cfg_err(&tj_path, key, msg);
    let model =
        tj.get("model").filter(|v| v.is_object()).ok_or_else(|| terr("model", "missing or not an object".into()))?;
    let mtype = match model.get("type").and_then(Value::as_str) {
        Some(t) => t,
        None if model.get("merges").is_some() => "BPE",
        None => return Err(terr("model.type", "missing".into())),
    };
    if mtype != "BPE" {
        return Err(terr(
            "model.type",
            format!(
                "tokenizer model `{mtype}` is not supported: quantsmith converts byte-level BPE tokenizers (GGUF \
                 `gpt2`) only; SentencePiece/Unigram/WordPiece vocabularies are not"
            ),
        ));
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(terr(
            "model.byte_fallback",
            "a SentencePiece-style BPE (byte fallback, GGUF `llama` tokenizer) is not supported; quantsmith converts \
             byte-level BPE (GGUF `gpt2`) only"
                .into(),
        ));
    }

    // Vocabulary: the BPE model's entries and the added tokens, by id.
    let vocab_obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| terr("model.vocab", "missing or not an object".into()))?;
    let mut by_id: HashMap<u32, String> = HashMap::with_capacity(vocab_obj.len());
    for (t, id) in vocab_obj {
        let id = id
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| terr("model.vocab", format!("token {t:?} has id {id}, not a u32")))?;
        by_id.insert(id, t.clone());
    }
    let mut added: Vec<Added> = Vec::new();
    if let Some(list) = tj.get("added_tokens").filter(|v| !v.is_null()) {
        let list = list.as_array().ok_or_else(|| terr("added_tokens", "expected a list".into()))?;
        for (i, a) in list.iter().enumerate() {
            let id = a.get("id").and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok());
            let content = a.get("content").and_then(Value::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                return Err(terr("added_tokens", format!("entry {i} lacks an integer `id` or a string `content`")));
            };
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            by_id.insert(id, content.to_string());
            added.push(Added { id, content: content.to_string(), special });
        }
    }
    let max_id = by_id.keys().copied().max().ok_or_else(|| terr("model.vocab", "empty".into()))?;
    let n_vocab = vocab_size.unwrap_or(max_id + 1);
    if max_id >= n_vocab {
        return Err(cfg_err(
            cfg.path,
            "vocab_size",
            format!("{n_vocab}, but {} has token id {max_id}", tj_path.display()),
        ));
    }
    let mut tokens = Vec::with_capacity(n_vocab as usize);
    let mut types = Vec::with_capacity(n_vocab as usize);
    let added_by_id: HashMap<u32, &Added> = added.iter().map(|a| (a.id, a)).collect();
    for id in 0..n_vocab {
        match (by_id.get(&id), added_by_id.get(&id)) {
            (_, Some(a)) => {
                if a.special || looks_special(&a.content) {
                    tokens.push(a.content.clone());
                    types.push(token_type::CONTROL);
                } else {
                    // llama.cpp expects user-defined tokens pre-normalized: SentencePiece's ▁ as a space.
                    tokens.push(a.content.replace('\u{2581}', " "));
                    types.push(token_type::USER_DEFINED);
                }
            }
            (Some(t), None) => {
                tokens.push(t.clone());
                types.push(token_type::NORMAL);
            }
            (None, None) => {
                tokens.push(format!("[PAD{id}]"));
                types.push(token_type::UNUSED);
            }
        }
    }

    // Merges: "a b" strings, or (transformers >= 4.45) [a, b] pairs whose spaces gguf-py
    // encodes as U+0120, as SpecialVocab does.
    let merges_v = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| terr("model.merges", "missing or not a list".into()))?;
    let mut merges = Vec::with_capacity(merges_v.len());
    for (i, mv) in merges_v.iter().enumerate() {
        match mv {
            Value::String(s) => merges.push(s.clone()),
            Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                let enc = |v: &Value| v.as_str().unwrap_or_default().replace(' ', "\u{120}");
                merges.push(format!("{} {}", enc(&p[0]), enc(&p[1])));
            }
            other => return Err(terr("model.merges", format!("entry {i} is neither \"a b\" nor [a, b]: {other}"))),
        }
    }

    let pre = detect_pre(&tj, &tj_path, arch, &tokens)?;

    // tokenizer_config.json, then config.json, as gguf-py's SpecialVocab reads them.
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() { Some(read_json(&tc_path)?) } else { None };
    let tc = tc.filter(|v| v.as_object().is_some_and(|o| !o.is_empty()));
    let mut special_ids: Vec<(&str, u32)> = Vec::new();
    let mut add_bos = None;
    let mut add_eos = None;
    post_processor_flags(&tj, &tj_path, tc.as_ref(), &mut add_bos, &mut add_eos)?;
    const TYPES: [(&str, &str); 6] = [
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("sep", "tokenizer.ggml.seperator_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
        ("mask", "tokenizer.ggml.mask_token_id"),
    ];
    if let Some(tc) = &tc {
        for (typ, _) in TYPES {
            if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Value::as_bool) {
                match typ {
                    "bos" => add_bos = Some(b),
                    "eos" => add_eos = Some(b),
                    _ => {}
                }
            }
            let content = token_content(tc.get(format!("{typ}_token")));
            if let Some(id) = content.and_then(|c| added.iter().find(|a| a.content == c)).map(|a| a.id) {
                special_ids.push((typ, id));
            }
        }
    }
    for (typ, _) in TYPES {
        if special_ids.iter().any(|(t, _)| *t == typ) {
            continue;
        }
        // Only a plain integer counts (Llama 3.1 lists several EOS ids there).
        if let Some(id) =
            cfg.c.get(format!("{typ}_token_id")).and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok())
        {
            special_ids.push((typ, id));
        }
    }

    let mut md = Vec::new();
    push(&mut md, "tokenizer.ggml.model", gstr("gpt2"));
    push(&mut md, "tokenizer.ggml.pre", gstr(pre));
    push(&mut md, "tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens)));
    push(&mut md, "tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types)));
    push(&mut md, "tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(merges)));
    for (typ, key) in TYPES {
        if let Some(&(_, id)) = special_ids.iter().find(|(t, _)| *t == typ) {
            push(&mut md, key, GgufValue::U32(id));
        }
    }
    // convert_hf_to_gguf.py's LlamaModel forces add_bos_token = false for 49152-token
    // vocabularies (SmolLM, granite small models).
    if arch == "llama" && vocab_size == Some(49152) {
        add_bos = Some(false);
    }
    if let Some(b) = add_bos {
        push(&mut md, "tokenizer.ggml.add_bos_token", GgufValue::Bool(b));
    }
    if let Some(b) = add_eos {
        push(&mut md, "tokenizer.ggml.add_eos_token", GgufValue::Bool(b));
    }
    if let Some(tc) = &tc {
        chat_templates(tc, &tc_path, dir, &mut md)?;
        if arch == "llama" {
            if let Some(b) = tc.get("add_prefix_space").and_then(Value::as_bool) {
                push(&mut md, "tokenizer.ggml.add_space_prefix", GgufValue::Bool(b));
            }
        }
    }
    Ok(md)
}

/// BOS/EOS addition from tokenizer.json's post-processor (a TemplateProcessing, alone or in a
/// Sequence), as gguf-py's SpecialVocab reads simple templates.
fn post_processor_flags(
    tj: &Value,
    tj_path: &Path,
    tc: Option<&Value>,
    add_bos: &mut Option<bool>,
    add_eos: &mut Option<bool>,
) -> Result<()> {
    let Some(pp) = tj.get("post_processor").filter(|v| !v.is_null()) else { return Ok(()) };
    let list: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
        Some(l) => l.iter().collect(),
        None => vec![pp],
    };
    let tc_bos = tc.and_then(|c| token_content(c.get("bos_token")));
    let tc_eos = tc.and_then(|c| token_content(c.get("eos_token")));
    for p in list {
        match p.get("type").and_then(Value::as_str) {
            Some("TemplateProcessing") => {
                let single = p.get("single").and_then(Value::as_array).cloned().unwrap_or_default();
                if single.len() > 1 {
                    let special = |v: &Value| {
                        v.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str).map(str::to_string)
                    };
                    // Without a tokenizer_config.json the template's tokens define BOS/EOS.
                    if let Some(first) = special(&single[0]) {
                        *add_bos = Some(tc.is_none() || tc_bos == Some(first.as_str()));
                    }
                    if let Some(last) = special(&single[single.len() - 1]) {
                        if tc.is_some() && tc_eos != Some(last.as_str()) {
                            // SpecialVocab would make `last` the EOS and the configured one EOT.
                            return Err(cfg_err(
                                tj_path,
                                "post_processor",
                                format!(
                                    "the template appends `{last}`, which is not tokenizer_config.json's eos_token \
                                     ({tc_eos:?}); re-pointing EOS/EOT is not supported"
                                ),
                            ));
                        }
                        *add_eos = Some(true);
                    }
                }
            }
            Some("ByteLevel") | None => {}
            Some(other) => {
                return Err(cfg_err(
                    tj_path,
                    "post_processor",
                    format!("post-processor `{other}` is not supported (ByteLevel and TemplateProcessing are)"),
                ))
            }
        }
    }
    Ok(())
}

/// `tokenizer.chat_template` (and named templates) from tokenizer_config.json, else
/// chat_template.jinja / chat_template.json beside it.
fn chat_templates(tc: &Value, tc_path: &Path, dir: &Path, md: &mut Vec<(String, GgufValue)>) -> Result<()> {
    let mut tmpl = tc.get("chat_template").filter(|v| !v.is_null()).cloned();
    if tmpl.is_none() {
        let jinja = dir.join("chat_template.jinja");
        let jsonf = dir.join("chat_template.json");
        if jinja.exists() {
            tmpl = Some(Value::String(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?));
        } else if jsonf.exists() {
            tmpl = read_json(&jsonf)?.get("chat_template").filter(|v| !v.is_null()).cloned();
        }
    }
    match tmpl {
        None => {}
        Some(Value::String(s)) => push(md, "tokenizer.chat_template", gstr(s)),
        Some(Value::Array(list)) => {
            let mut names = Vec::new();
            for entry in &list {
                let name: String = entry
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let Some(t) = entry.get("template").and_then(Value::as_str) else { continue };
                if name == "default" {
                    push(md, "tokenizer.chat_template", gstr(t));
                } else if !name.is_empty() {
                    push(md, format!("tokenizer.chat_template.{name}"), gstr(t));
                    names.push(name);
                }
            }
            if !names.is_empty() {
                names.sort();
                names.dedup();
                push(md, "tokenizer.chat_templates", GgufValue::Array(GgufArray::String(names)));
            }
        }
        Some(other) => {
            return Err(cfg_err(
                tc_path,
                "chat_template",
                format!("expected a string or a list, found {}", short(&other)),
            ))
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..s.char_indices().nth(77).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// llama.cpp's pre-tokenizer name for a tokenizer.json. `convert_hf_to_gguf.py` hashes the
/// ids of a test string; without Python tokenizers this reads the pre-tokenizer's structure:
///
/// * `Sequence[Digits(individual), ByteLevel(use_regex)]` with SmolLM's vocabulary
///   (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at ids 0–2) → `smollm` (StarCoder-style
///   vocabularies share the split but llama.cpp names them differently: refused);
/// * `Sequence[Split(Llama 3 regex), ByteLevel(no regex)]` → `llama-bpe` (llama.cpp treats
///   `falcon3`, `pixtral` alike);
/// * `Sequence[Split(Qwen2 regex), ByteLevel(no regex)]` → `qwen2`;
/// * `ByteLevel(use_regex)` alone → `gpt-2`.
fn detect_pre(tj: &Value, tj_path: &Path, arch: &str, tokens: &[String]) -> Result<&'static str> {
    let unsupported = |what: String| {
        cfg_err(
            tj_path,
            "pre_tokenizer",
            format!("{what}: llama.cpp's pre-tokenizer cannot be named for it (supported: {SUPPORTED_PRE})"),
        )
    };
    match tj.get("normalizer").filter(|v| !v.is_null()) {
        None => {}
        // Qwen2's tokenizer.json asks for NFC; llama.cpp's qwen2 pre-tokenizer does not apply it
        // (convert_hf_to_gguf.py writes the same file either way).
        Some(n) if n.get("type").and_then(Value::as_str) == Some("NFC") => {}
        Some(n) => {
            return Err(cfg_err(
                tj_path,
                "normalizer",
                format!("normalizer {} is not supported (byte-level BPE vocabularies have none, or NFC)", short(n)),
            ))
        }
    }
    let pt = tj.get("pre_tokenizer").filter(|v| !v.is_null()).ok_or_else(|| unsupported("no pre_tokenizer".into()))?;
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let stages: Vec<&Value> = if ty(pt) == "Sequence" {
        pt.get("pretokenizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
    } else {
        vec![pt]
    };
    let shape: Vec<String> = stages.iter().map(|s| ty(s)).collect();
    let Some(last) = stages.last().filter(|s| ty(s) == "ByteLevel") else {
        return Err(unsupported(format!(
            "pre-tokenizer [{}] is not byte-level (SentencePiece-style vocabularies are not supported)",
            shape.join(", ")
        )));
    };
    if last.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("ByteLevel with add_prefix_space = true".into()));
    }
    let use_regex = last.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    match (&stages[..stages.len() - 1], use_regex) {
        ([], true) => Ok("gpt-2"),
        ([d], true) if ty(d) == "Digits" && d.get("individual_digits").and_then(Value::as_bool) == Some(true) => {
            let smollm = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
            if arch == "llama" && tokens.len() >= 3 && tokens[..3].iter().zip(smollm).all(|(a, b)| a == b) {
                Ok("smollm")
            } else {
                Err(unsupported(
                    "individual digits before the GPT-2 split without SmolLM's vocabulary (StarCoder-family \
                     tokenizers share that split under other llama.cpp names)"
                        .into(),
                ))
            }
        }
        ([s], false) if ty(s) == "Split" => {
            let re = s.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str).unwrap_or_default();
            let behavior = s.get("behavior").and_then(Value::as_str).unwrap_or_default();
            let invert = s.get("invert").and_then(Value::as_bool).unwrap_or(false);
            if behavior != "Isolated" || invert {
                return Err(unsupported(format!("Split with behavior {behavior}, invert {invert}")));
            }
            if re == HF_LLAMA3_SPLIT || re == HF_LLAMA3_SPLIT_EXPANDED {
                Ok("llama-bpe")
            } else if re == HF_QWEN2_SPLIT || re == HF_QWEN2_SPLIT_EXPANDED {
                Ok("qwen2")
            } else {
                Err(unsupported(format!("split regex {re:?}")))
            }
        }
        _ => Err(unsupported(format!("pre-tokenizer [{}] (ByteLevel use_regex = {use_regex})", shape.join(", ")))),
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF → HF
// ---------------------------------------------------------------------------------------------

/// An f32 from GGUF as the decimal it was written from (1e-5, not 9.99999974737875e-6), so
/// that writing it back as f32 gives the same bits.
fn f32_decimal(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

/// A Hugging Face `config.json` (LlamaForCausalLM for GGUF `llama`, Qwen2ForCausalLM for
/// `qwen2`) describing a GGUF file, for transformers' AutoConfig: sizes, heads, `head_dim`
/// (only when the GGUF states `attention.key_length` or the head width is not
/// hidden/heads), `rms_norm_eps`, `rope_theta` (llama.cpp's default 10000 when absent),
/// `rope_scaling` (linear only), `max_position_embeddings`, `vocab_size` (rows of
/// `token_embd.weight`), `tie_word_embeddings` (no `output.weight`), q/k/v biases, BOS/EOS/pad
/// ids, `torch_dtype` (float16 / bfloat16 when every matrix is stored so, else float32: what
/// dequantized weights need), and `general.name` as `_name_or_path`.
///
/// The tensors themselves are the caller's: GGUF `llama` q/k rows must go through
/// [`unpermute_qk_from_gguf`].
pub fn hf_config_from_gguf(g: &GgufFile) -> Result<Value> {
    let path = g.path();
    let arch = g.architecture()?;
    let (hf_arch, model_type) = match arch {
        "llama" => ("LlamaForCausalLM", "llama"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        other => {
            return Err(cfg_err(
                path,
                "general.architecture",
                format!("`{other}` cannot be written as a Hugging Face model (supported: llama, qwen2)"),
            ))
        }
    };
    let k = |s: &str| format!("{arch}.{s}");
    let n_embd = g.get_u32(&k("embedding_length"))?;
    let n_head = g.get_u32(&k("attention.head_count"))?;
    if n_head == 0 {
        return Err(cfg_err(path, &k("attention.head_count"), "must be positive"));
    }
    let n_head_kv = g.opt_u32(&k("attention.head_count_kv"))?.unwrap_or(n_head);
    let key_len = g.opt_u32(&k("attention.key_length"))?;
    let val_len = g.opt_u32(&k("attention.value_length"))?;
    if let (Some(a), Some(b)) = (key_len, val_len) {
        if a != b {
            return Err(cfg_err(path, &k("attention.value_length"), format!("{b} differs from key_length {a}")));
        }
    }
    let head_dim = match key_len.or(val_len) {
        Some(hd) => hd,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(cfg_err(path, &k("embedding_length"), format!("{n_embd} is not a multiple of {n_head} heads")))
        }
    };
    if let Some(rd) = g.opt_u32(&k("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(cfg_err(
                path,
                &k("rope.dimension_count"),
                format!("{rd} of {head_dim}: partial rotary embeddings have no {hf_arch} form"),
            ));
        }
    }
    let rope_scaling = match g.opt_str(&k("rope.scaling.type"))? {
        None | Some("none") => Value::Null,
        Some("linear") => {
            let f = g.get_f32(&k("rope.scaling.factor"))?;
            json!({"rope_type": "linear", "type": "linear", "factor": f32_decimal(f)})
        }
        Some(other) => {
            return Err(cfg_err(path, &k("rope.scaling.type"), format!("`{other}` is not supported (none, linear)")))
        }
    };
    let vocab = match g.gguf_tensor("token_embd.weight") {
        Some(t) if t.ne.len() == 2 => t.ne[1],
        _ => match g.opt_str_array("tokenizer.ggml.tokens")? {
            Some(t) => t.len() as u64,
            None => g.get_u64(&k("vocab_size"))?,
        },
    };
    let dtype = {
        use formats::ggml::GgmlType;
        let mats: Vec<GgmlType> = g.gguf_tensors().iter().filter(|t| t.ne.len() >= 2).map(|t| t.ty).collect();
        if !mats.is_empty() && mats.iter().all(|&t| t == GgmlType::F16) {
            "float16"
        } else if !mats.is_empty() && mats.iter().all(|&t| t == GgmlType::Bf16) {
            "bfloat16"
        } else {
            "float32"
        }
    };
    let n_layer = g.get_u32(&k("block_count"))?;
    let mut c = Map::new();
    c.insert("architectures".into(), json!([hf_arch]));
    c.insert("model_type".into(), json!(model_type));
    if let Some(name) = g.opt_str("general.name")? {
        c.insert("_name_or_path".into(), json!(name));
    }
    c.insert("hidden_size".into(), json!(n_embd));
    c.insert("intermediate_size".into(), json!(g.get_u32(&k("feed_forward_length"))?));
    c.insert("num_hidden_layers".into(), json!(n_layer));
    c.insert("num_attention_heads".into(), json!(n_head));
    c.insert("num_key_value_heads".into(), json!(n_head_kv));
    if key_len.is_some() || val_len.is_some() || head_dim * n_head != n_embd {
        c.insert("head_dim".into(), json!(head_dim));
    }
    c.insert("rms_norm_eps".into(), json!(f32_decimal(g.get_f32(&k("attention.layer_norm_rms_epsilon"))?)));
    c.insert("rope_theta".into(), json!(f32_decimal(g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10000.0))));
    c.insert("rope_scaling".into(), rope_scaling);
    c.insert("max_position_embeddings".into(), json!(g.get_u32(&k("context_length"))?));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("tie_word_embeddings".into(), json!(g.gguf_tensor("output.weight").is_none()));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("use_cache".into(), json!(true));
    c.insert("torch_dtype".into(), json!(dtype));
    match arch {
        "llama" => {
            c.insert("attention_bias".into(), json!(g.gguf_tensor("blk.0.attn_q.bias").is_some()));
            c.insert("mlp_bias".into(), json!(g.gguf_tensor("blk.0.ffn_gate.bias").is_some()));
            c.insert("pretraining_tp".into(), json!(1));
        }
        _ => {
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("sliding_window".into(), Value::Null);
            c.insert("max_window_layers".into(), json!(n_layer));
        }
    }
    for (key, gkey) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = g.opt_u32(gkey)? {
            c.insert(key.into(), json!(id));
        }
    }
    Ok(Value::Object(c))
}

/// How a GGUF pre-tokenizer name is written as a tokenizer.json pre-tokenizer: (stages, BPE
/// `ignore_merges`, `clean_up_tokenization_spaces`).
fn pre_tokenizer_for(pre: &str, path: &Path) -> Result<(Vec<PreTokenizerWrapper>, bool, bool)> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| Error::Tokenizer(format!("split regex: {e}")))
    };
    let bl = |use_regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    // clean_spaces follows llama-vocab.cpp (false for smollm and qwen2, true otherwise).
    Ok(match pre {
        "smollm" => (vec![PreTokenizerWrapper::Digits(Digits::new(true)), bl(true)], false, false),
        "llama-bpe" | "llama3" | "llama-v3" => (vec![split(HF_LLAMA3_SPLIT)?, bl(false)], true, true),
        "qwen2" | "deepseek-r1-qwen" => (vec![split(HF_QWEN2_SPLIT)?, bl(false)], false, false),
        "gpt-2" | "gpt2" => (vec![bl(true)], false, true),
        other => {
            return Err(cfg_err(
                path,
                "tokenizer.ggml.pre",
                format!("pre-tokenizer `{other}` cannot be written as tokenizer.json (supported: {SUPPORTED_PRE})"),
            ))
        }
    })
}

/// Builds a TemplateProcessing post-processor adding `bos` before and/or `eos` after each
/// sequence (through serde, so token texts with spaces or colons are safe).
fn template_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Result<PostProcessorWrapper> {
    let tok = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    if let Some((b, id)) = bos {
        single.push(tok(b, 0));
        pair.push(tok(b, 0));
        specials.insert(b.to_string(), json!({"id": b, "ids": [id], "tokens": [b]}));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some((e, id)) = eos {
        single.push(tok(e, 0));
        pair.push(tok(e, 0));
        specials.insert(e.to_string(), json!({"id": e, "ids": [id], "tokens": [e]}));
    }
    if let Some((b, _)) = bos {
        pair.push(tok(b, 1));
    }
    pair.push(seq("B", 1));
    if let Some((e, _)) = eos {
        pair.push(tok(e, 1));
    }
    let v = json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials});
    serde_json::from_value(v).map_err(|e| Error::Tokenizer(format!("post-processor: {e}")))
}

/// The Hugging Face tokenizer files of a GGUF byte-level BPE vocabulary: `tokenizer.json`
/// (BPE over every token in id order, the pre-tokenizer `tokenizer.ggml.pre` names, control
/// tokens as special added tokens and user-defined ones as added tokens, a post-processor
/// adding BOS/EOS as `add_bos_token`/`add_eos_token` say), `tokenizer_config.json` (special
/// tokens, `add_bos_token`, `add_eos_token`, `add_prefix_space`, `chat_template`, the added
/// tokens) and `special_tokens_map.json`. Encoding plain text with it gives the ids
/// `Tokenizer::from_gguf` gives.
///
/// Supported pre-tokenizers: `smollm`, `llama-bpe` (with `llama3`, `llama-v3`; BPE
/// `ignore_merges` as llama.cpp sets it), `qwen2` (with `deepseek-r1-qwen`), `gpt-2`.
/// Anything else, or a tokenizer model other than `gpt2`, is an `Error::Config`.
pub fn hf_tokenizer_files_from_gguf(g: &GgufFile) -> Result<Vec<(String, Vec<u8>)>> {
    let path = g.path();
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(cfg_err(
            path,
            "tokenizer.ggml.model",
            format!("tokenizer model `{model}` cannot be written as tokenizer.json (quantsmith converts byte-level BPE, `gpt2`)"),
        ));
    }
    let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let (stages, ignore_merges, clean_spaces) = pre_tokenizer_for(pre, path)?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let types = match g.opt_i32_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t,
        Some(t) => {
            return Err(cfg_err(
                path,
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", t.len(), tokens.len()),
            ))
        }
        None => vec![token_type::NORMAL; tokens.len()],
    };
    let merges_raw = g.get_str_array("tokenizer.ggml.merges")?;
    let mut vocab: Vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_some() {
            return Err(cfg_err(
                path,
                "tokenizer.ggml.tokens",
                format!("token {t:?} appears twice (second at id {i})"),
            ));
        }
    }
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(cfg_err(path, "tokenizer.ggml.merges", format!("merge {i} `{m}` is not two tokens")));
        };
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| cfg_err(path, "tokenizer.ggml.merges", e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let pre_tok = if stages.len() == 1 {
        stages.into_iter().next().expect("one stage")
    } else {
        PreTokenizerWrapper::Sequence(Sequence::new(stages))
    };
    tk.with_pre_tokenizer(Some(pre_tok));
    tk.with_decoder(Some(ByteLevel::new(false, true, true)));

    let tok_of = |key: &str| -> Result<Option<(u32, &str)>> {
        match g.opt_u32(key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id as usize) {
                Some(t) => Ok(Some((id, t.as_str()))),
                None => Err(cfg_err(path, key, format!("{id} is outside the vocabulary ({})", tokens.len()))),
            },
        }
    };
    let bos = tok_of("tokenizer.ggml.bos_token_id")?;
    let eos = tok_of("tokenizer.ggml.eos_token_id")?;
    let unk = tok_of("tokenizer.ggml.unknown_token_id")?;
    let pad = tok_of("tokenizer.ggml.padding_token_id")?;
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?;
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?;
    fn need(flag: Option<bool>, t: Option<(u32, &str)>) -> std::result::Result<Option<(&str, u32)>, ()> {
        match (flag, t) {
            (Some(true), Some((id, text))) => Ok(Some((text, id))),
            (Some(true), None) => Err(()),
            _ => Ok(None),
        }
    }
    let missing = |key: &str| cfg_err(path, key, "is true but the token id is not given".to_string());
    let pp_bos = need(add_bos, bos).map_err(|_| missing("tokenizer.ggml.add_bos_token"))?;
    let pp_eos = need(add_eos, eos).map_err(|_| missing("tokenizer.ggml.add_eos_token"))?;
    if pp_bos.is_some() || pp_eos.is_some() {
        tk.with_post_processor(Some(template_processor(pp_bos, pp_eos)?));
    } else {
        tk.with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    }

    let mut special = Vec::new();
    let mut user = Vec::new();
    let mut decoder = Map::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let is_special = match ty {
            token_type::CONTROL => true,
            token_type::USER_DEFINED => false,
            _ => continue,
        };
        let at = AddedToken::from(t.clone(), is_special);
        decoder.insert(
            i.to_string(),
            json!({"content": t, "lstrip": at.lstrip, "normalized": at.normalized, "rstrip": at.rstrip,
                   "single_word": at.single_word, "special": is_special}),
        );
        if is_special {
            special.push(at);
        } else {
            user.push(at);
        }
    }
    tk.add_special_tokens(&special);
    tk.add_tokens(&user);
    let tokenizer_json =
        tk.to_string(true).map_err(|e| Error::Tokenizer(format!("serializing tokenizer.json: {e}")))?;

    let mut tc = Map::new();
    let mut stm = Map::new();
    if let Some(b) = add_bos {
        tc.insert("add_bos_token".into(), json!(b));
    }
    if let Some(b) = add_eos {
        tc.insert("add_eos_token".into(), json!(b));
    }
    if let Some(b) = g.opt_bool("tokenizer.ggml.add_space_prefix")? {
        tc.insert("add_prefix_space".into(), json!(b));
    }
    tc.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (name, t) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
        if let Some((_, text)) = t {
            tc.insert(name.into(), json!(text));
            stm.insert(name.into(), json!(text));
        }
    }
    let named = g.opt_str_array("tokenizer.chat_templates")?;
    match (g.opt_str("tokenizer.chat_template")?, named) {
        (default, Some(names)) if !names.is_empty() => {
            let mut list = Vec::new();
            if let Some(d) = default {
                list.push(json!({"name": "default", "template": d}));
            }
            for n in names {
                let key = format!("tokenizer.chat_template.{n}");
                list.push(json!({"name": n, "template": g.get_str(&key)?}));
            }
            tc.insert("chat_template".into(), Value::Array(list));
        }
        (Some(d), _) => {
            tc.insert("chat_template".into(), json!(d));
        }
        (None, _) => {}
    }
    tc.insert("clean_up_tokenization_spaces".into(), json!(clean_spaces));
    if let Some(n_ctx) = g.opt_u32(&format!("{}.context_length", g.architecture()?))? {
        tc.insert("model_max_length".into(), json!(n_ctx));
    }
    tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));

    let pretty = |v: Value| -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(&v).expect("JSON values serialize");
        s.push('\n');
        s.into_bytes()
    };
    let mut tj = tokenizer_json.into_bytes();
    tj.push(b'\n');
    Ok(vec![
        ("tokenizer.json".to_string(), tj),
        ("tokenizer_config.json".to_string(), pretty(Value::Object(tc))),
        ("special_tokens_map.json".to_string(), pretty(Value::Object(stm))),
    ])
}

/// Writes `files` (name, bytes) into `dir`, e.g. the result of [`hf_tokenizer_files_from_gguf`].
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::GgufWriter;
    use formats::ggml::GgmlType;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
            ("model.layers.12.self_attn.k_proj.bias", "blk.12.attn_k.bias"),
            ("model.layers.3.self_attn.v_proj.bias", "blk.3.attn_v.bias"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
            ("model.layers.29.mlp.gate_proj.weight", "blk.29.ffn_gate.weight"),
            ("model.layers.29.mlp.up_proj.weight", "blk.29.ffn_up.weight"),
            ("model.layers.29.mlp.down_proj.weight", "blk.29.ffn_down.weight"),
            ("model.layers.7.input_layernorm.weight", "blk.7.attn_norm.weight"),
            ("model.layers.7.post_attention_layernorm.weight", "blk.7.ffn_norm.weight"),
        ];
        for (hf, gg) in pairs {
            assert_eq!(gguf_name_from_hf(hf).as_deref(), Some(gg), "{hf}");
            assert_eq!(hf_name_from_gguf(gg).as_deref(), Some(hf), "{gg}");
        }
        for bad in [
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "model.layers.x.mlp.up_proj.weight",
            "model.layers.01.mlp.up_proj.weight",
            "model.layers..mlp.up_proj.weight",
            "model.layers.0.mlp.up_proj.scales",
            "vision_tower.blocks.0.weight",
            "model.embed_tokens",
        ] {
            assert_eq!(gguf_name_from_hf(bad), None, "{bad}");
        }
        for bad in ["rope_freqs.weight", "blk.0.attn_qkv.weight", "blk.a.attn_q.weight", "token_embd"] {
            assert_eq!(hf_name_from_gguf(bad), None, "{bad}");
        }
    }

    #[test]
    fn permutation_matches_llama_cpp_row_order() {
        // convert_hf_to_gguf.py: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).
        // Two heads of width 4, two columns; element (r, c) = 10 r + c.
        let (rows, cols, n_head) = (8, 2, 2);
        let w: Vec<f32> = (0..rows).flat_map(|r| (0..cols).map(move |c| (10 * r + c) as f32)).collect();
        let p = permute_qk_for_gguf(&w, rows, cols, n_head);
        // Head 0 rows [0 1 | 2 3] (halves) become pairs (0,2), (1,3); head 1 likewise.
        let want_rows = [0, 2, 1, 3, 4, 6, 5, 7];
        let want: Vec<f32> = want_rows.iter().flat_map(|&r| (0..cols).map(move |c| (10 * r + c) as f32)).collect();
        assert_eq!(p, want);
        assert_eq!(unpermute_qk_from_gguf(&p, rows, cols, n_head), w);
        // A bias (one column), one head of width 6: rows (0,3), (1,4), (2,5).
        let b = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(permute_qk_for_gguf(&b, 6, 1, 1), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // Larger shapes: inverses both ways.
        let w: Vec<f32> = (0..64 * 3).map(|i| i as f32 * 0.5 - 7.0).collect();
        for n_head in [1, 2, 4, 8, 16, 32] {
            let p = permute_qk_for_gguf(&w, 64, 3, n_head);
            assert_eq!(unpermute_qk_from_gguf(&p, 64, 3, n_head), w);
            assert_eq!(permute_qk_for_gguf(&unpermute_qk_from_gguf(&w, 64, 3, n_head), 64, 3, n_head), w);
        }
    }

    /// The reason for the permutation: rotating HF's half-split pairs and then permuting equals
    /// permuting and then rotating llama.cpp's adjacent pairs, with the same frequencies.
    #[test]
    fn permutation_turns_half_split_rope_into_adjacent_pairs() {
        let (n_head, hd) = (3, 8);
        let half = hd / 2;
        let q: Vec<f32> = (0..n_head * hd).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let pos = 5.0f32;
        let angle = |i: usize| pos * 10000f32.powf(-2.0 * i as f32 / hd as f32);
        let halves = |x: &[f32]| {
            let mut y = x.to_vec();
            for h in 0..n_head {
                for i in 0..half {
                    let (a, b) = (x[h * hd + i], x[h * hd + i + half]);
                    let (s, c) = angle(i).sin_cos();
                    y[h * hd + i] = a * c - b * s;
                    y[h * hd + i + half] = a * s + b * c;
                }
            }
            y
        };
        let adjacent = |x: &[f32]| {
            let mut y = x.to_vec();
            for h in 0..n_head {
                for i in 0..half {
                    let (a, b) = (x[h * hd + 2 * i], x[h * hd + 2 * i + 1]);
                    let (s, c) = angle(i).sin_cos();
                    y[h * hd + 2 * i] = a * c - b * s;
                    y[h * hd + 2 * i + 1] = a * s + b * c;
                }
            }
            y
        };
        let rows = n_head * hd;
        let lhs = permute_qk_for_gguf(&halves(&q), rows, 1, n_head);
        let rhs = adjacent(&permute_qk_for_gguf(&q, rows, 1, n_head));
        for (a, b) in lhs.iter().zip(&rhs) {
            assert!((a - b).abs() < 1e-6, "{lhs:?} vs {rhs:?}");
        }
    }

    #[test]
    #[should_panic(expected = "heads of even width")]
    fn permutation_refuses_odd_heads() {
        permute_qk_for_gguf(&[0.0; 6], 6, 1, 2);
    }

    // -----------------------------------------------------------------------------------------
    // Synthetic Hugging Face directories
    // -----------------------------------------------------------------------------------------

    /// A safetensors file with one small tensor: HfModel needs weights to open a directory.
    fn dummy_safetensors(dir: &Path) {
        let mut header = br#"{"dummy":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&1f32.to_le_bytes());
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    }

    fn hf_dir(config: Value, tokenizer: Option<Value>, tokenizer_config: Option<Value>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
        if let Some(t) = tokenizer {
            std::fs::write(d.path().join("tokenizer.json"), t.to_string()).unwrap();
        }
        if let Some(t) = tokenizer_config {
            std::fs::write(d.path().join("tokenizer_config.json"), t.to_string()).unwrap();
        }
        dummy_safetensors(d.path());
        d
    }

    fn llama_config(extra: Value) -> Value {
        let mut c = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 2048, "vocab_size": 12, "bos_token_id": 10, "eos_token_id": 11
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn byte_level(pre: Value, vocab: Value, merges: Value, added: Value, post: Value) -> Value {
        json!({
            "version": "1.0", "added_tokens": added, "normalizer": null, "pre_tokenizer": pre,
            "post_processor": post, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": merges}
        })
    }

    fn llama3_pre() -> Value {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": HF_LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    }

    fn small_vocab() -> Value {
        json!({"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġa": 5, "Ġab": 6, "1": 7, "2": 8})
    }

    fn get<'a>(md: &'a [(String, GgufValue)], key: &str) -> Option<&'a GgufValue> {
        md.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn config_err_of(r: Result<Vec<(String, GgufValue)>>) -> (PathBuf, String, String) {
        match r {
            Err(Error::Config { path, key, msg }) => (path, key, msg),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn llama3_style_directory() {
        let added = json!([
            {"id": 9, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
            {"id": 10, "content": "<|begin_of_text|>", "special": true},
            {"id": 11, "content": "<|eot_id|>", "special": false}
        ]);
        let post = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {}}]});
        // Merges in transformers >= 4.45's pair form.
        let tj = byte_level(llama3_pre(), small_vocab(), json!([["a", "b"], ["Ġ", "a"], ["Ġa", "b"]]), added, post);
        let tc = json!({"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "__type": "AddedToken"},
                        "chat_template": "{{ messages }}", "add_prefix_space": false});
        let d = hf_dir(llama_config(json!({"vocab_size": 13, "_name_or_path": "meta/Tiny-3"})), Some(tj), Some(tc));
        let m = HfModel::open(d.path()).unwrap();
        let md = gguf_metadata_from_hf(&m).unwrap();
        let s = |k: &str| get(&md, k).and_then(GgufValue::as_str).map(str::to_string);
        let u = |k: &str| get(&md, k).cloned();
        assert_eq!(s("general.architecture").as_deref(), Some("llama"));
        assert_eq!(s("general.name").as_deref(), Some("Tiny-3"));
        assert_eq!(s("tokenizer.ggml.model").as_deref(), Some("gpt2"));
        assert_eq!(s("tokenizer.ggml.pre").as_deref(), Some("llama-bpe"));
        assert_eq!(u("llama.block_count"), Some(GgufValue::U32(2)));
        assert_eq!(u("llama.attention.head_count_kv"), Some(GgufValue::U32(2)));
        assert_eq!(u("llama.rope.freq_base"), Some(GgufValue::F32(500000.0)));
        assert_eq!(u("llama.attention.layer_norm_rms_epsilon"), Some(GgufValue::F32(1e-5)));
        assert_eq!(u("llama.rope.dimension_count"), Some(GgufValue::U32(16)));
        assert_eq!(u("llama.vocab_size"), Some(GgufValue::U32(13)));
        assert_eq!(u("llama.attention.key_length"), None, "no head_dim in config.json");
        let Some(GgufValue::Array(GgufArray::String(tokens))) = u("tokenizer.ggml.tokens") else { panic!() };
        assert_eq!(tokens.len(), 13);
        assert_eq!(tokens[9], "<tool>");
        assert_eq!(tokens[12], "[PAD12]");
        // 9: non-special added → user-defined; 10: special → control; 11: not flagged but
        // looks special (<|...|>) → control; 12: hole → unused.
        let Some(GgufValue::Array(GgufArray::I32(types))) = u("tokenizer.ggml.token_type") else { panic!() };
        assert_eq!(types, vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 3, 3, 5]);
        let Some(GgufValue::Array(GgufArray::String(merges))) = u("tokenizer.ggml.merges") else { panic!() };
        assert_eq!(merges, vec!["a b", "Ġ a", "Ġa b"]);
        assert_eq!(u("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(10)));
        assert_eq!(u("tokenizer.ggml.eos_token_id"), Some(GgufValue::U32(11)));
        assert_eq!(u("tokenizer.ggml.add_bos_token"), Some(GgufValue::Bool(true)), "from the TemplateProcessing");
        assert_eq!(u("tokenizer.ggml.add_eos_token"), None);
        assert_eq!(u("tokenizer.ggml.add_space_prefix"), Some(GgufValue::Bool(false)));
        assert_eq!(s("tokenizer.chat_template").as_deref(), Some("{{ messages }}"));
    }

    #[test]
    fn mistral_qwen2_and_transformers5_configs() {
        let tj = byte_level(llama3_pre(), small_vocab(), json!(["a b"]), json!([]), Value::Null);
        // MistralForCausalLM is GGUF llama; transformers 5 keeps rope_theta in rope_parameters.
        let cfg = llama_config(json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "rope_theta": null, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "head_dim": 32, "sliding_window": 4096}));
        let d = hf_dir(cfg, Some(tj.clone()), None);
        let md = gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()).unwrap();
        assert_eq!(get(&md, "general.architecture"), Some(&gstr("llama")));
        assert_eq!(get(&md, "llama.rope.freq_base"), Some(&GgufValue::F32(1e6)));
        assert_eq!(get(&md, "llama.attention.key_length"), Some(&GgufValue::U32(32)));
        assert_eq!(get(&md, "llama.attention.value_length"), Some(&GgufValue::U32(32)));
        assert_eq!(get(&md, "llama.rope.dimension_count"), Some(&GgufValue::U32(32)));
        // No tokenizer_config.json: ids from config.json, nothing about BOS addition.
        assert_eq!(get(&md, "tokenizer.ggml.bos_token_id"), Some(&GgufValue::U32(10)));
        assert_eq!(get(&md, "tokenizer.ggml.add_bos_token"), None);

        // Qwen2: qwen2 regex, NFC normalizer accepted; no vocab_size / rope.dimension_count keys.
        let qpre = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": HF_QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        let mut qtj = byte_level(qpre, small_vocab(), json!(["a b"]), json!([]), Value::Null);
        qtj["normalizer"] = json!({"type": "NFC"});
        let qcfg = llama_config(json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}));
        let d = hf_dir(qcfg, Some(qtj), None);
        let md = gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()).unwrap();
        assert_eq!(get(&md, "general.architecture"), Some(&gstr("qwen2")));
        assert_eq!(get(&md, "tokenizer.ggml.pre"), Some(&gstr("qwen2")));
        assert_eq!(get(&md, "qwen2.embedding_length"), Some(&GgufValue::U32(64)));
        assert_eq!(get(&md, "qwen2.vocab_size"), None);
        assert_eq!(get(&md, "qwen2.rope.dimension_count"), None);

        // Linear RoPE scaling is written; llama3 scaling is refused by name.
        let d =
            hf_dir(llama_config(json!({"rope_scaling": {"type": "linear", "factor": 2.0}})), Some(tj.clone()), None);
        let md = gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()).unwrap();
        assert_eq!(get(&md, "llama.rope.scaling.type"), Some(&gstr("linear")));
        assert_eq!(get(&md, "llama.rope.scaling.factor"), Some(&GgufValue::F32(2.0)));
        let cfg = llama_config(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}));
        let d = hf_dir(cfg, Some(tj.clone()), None);
        let (path, key, msg) = config_err_of(gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()));
        assert!(path.ends_with("config.json") && key == "rope_scaling" && msg.contains("llama3"), "{key}: {msg}");

        // Unknown architecture.
        let cfg = llama_config(json!({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}));
        let d = hf_dir(cfg, Some(tj), None);
        let (_, key, msg) = config_err_of(gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()));
        assert!(
            key == "architectures" && msg.contains("GemmaForCausalLM") && msg.contains("Qwen2ForCausalLM"),
            "{msg}"
        );
    }

    #[test]
    fn unsupported_tokenizers_are_named() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]},
                       "pre_tokenizer": {"type": "Metaspace"}}),
                "model.type",
                "Unigram",
            ),
            (json!({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}), "model.type", "WordPiece"),
            (
                json!({"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}, "merges": []},
                       "pre_tokenizer": null}),
                "model.byte_fallback",
                "SentencePiece",
            ),
            (
                // SmolLM's split without SmolLM's vocabulary.
                byte_level(
                    json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true},
                           {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]}),
                    small_vocab(),
                    json!([]),
                    json!([]),
                    Value::Null,
                ),
                "pre_tokenizer",
                "smollm",
            ),
            (
                byte_level(
                    json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false},
                        {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}),
                    small_vocab(),
                    json!([]),
                    json!([]),
                    Value::Null,
                ),
                "pre_tokenizer",
                "llama-bpe",
            ),
        ];
        for (tj, want_key, want_text) in cases {
            let d = hf_dir(llama_config(json!({})), Some(tj), None);
            let (path, key, msg) = config_err_of(gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()));
            assert!(path.ends_with("tokenizer.json"), "{}", path.display());
            assert_eq!(key, want_key, "{msg}");
            assert!(msg.contains(want_text), "{key}: {msg}");
        }
        // Only a SentencePiece model file.
        let d = hf_dir(llama_config(json!({})), None, None);
        std::fs::write(d.path().join("tokenizer.model"), b"sp").unwrap();
        let (_, key, msg) = config_err_of(gguf_metadata_from_hf(&HfModel::open(d.path()).unwrap()));
        assert!(key == "tokenizer.json" && msg.contains("SentencePiece"), "{key}: {msg}");
    }

    // -----------------------------------------------------------------------------------------
    // Synthetic GGUF files, both directions
    // -----------------------------------------------------------------------------------------

    fn tiny_gguf(dir: &Path, arch: &str, pre: &str, add_bos: bool, with_output: bool) -> PathBuf {
        let p = dir.join(format!("{arch}-{pre}.gguf"));
        let mut w = GgufWriter::new(&p).unwrap();
        let k = |s: &str| format!("{arch}.{s}");
        let tokens: Vec<String> =
            ["a", "b", "c", "Ġ", "ab", "Ġa", "Ġab", "1", "2", "<tool>", "<|begin_of_text|>", "<|eot_id|>"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let n = tokens.len();
        let md = vec![
            ("general.architecture".to_string(), gstr(arch)),
            ("general.type".to_string(), gstr("model")),
            ("general.name".to_string(), gstr("Tiny")),
            (k("block_count"), GgufValue::U32(1)),
            (k("context_length"), GgufValue::U32(4096)),
            (k("embedding_length"), GgufValue::U32(16)),
            (k("feed_forward_length"), GgufValue::U32(32)),
            (k("attention.head_count"), GgufValue::U32(2)),
            (k("attention.head_count_kv"), GgufValue::U32(1)),
            (k("rope.freq_base"), GgufValue::F32(1e6)),
            (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6)),
            ("tokenizer.ggml.model".to_string(), gstr("gpt2")),
            ("tokenizer.ggml.pre".to_string(), gstr(pre)),
            ("tokenizer.ggml.tokens".to_string(), GgufValue::Array(GgufArray::String(tokens))),
            (
                "tokenizer.ggml.token_type".to_string(),
                GgufValue::Array(GgufArray::I32(vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 3, 3])),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                // Ranked so that every multi-character token is reachable by merges: then
                // llama-bpe's ignore_merges (set in the exported tokenizer.json, not by
                // Tokenizer::from_gguf) cannot change the ids.
                GgufValue::Array(GgufArray::String(vec!["Ġ a".into(), "Ġa b".into(), "a b".into()])),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), GgufValue::U32(10)),
            ("tokenizer.ggml.eos_token_id".to_string(), GgufValue::U32(11)),
            ("tokenizer.ggml.add_bos_token".to_string(), GgufValue::Bool(add_bos)),
            ("tokenizer.chat_template".to_string(), gstr("{{ x }}")),
        ];
        w.add_metadata_all(&md).unwrap();
        let zeros = |len: usize| vec![0u8; len * 4];
        w.add_tensor("token_embd.weight", &[16, n as u64], GgmlType::F32, &zeros(16 * n)).unwrap();
        if with_output {
            w.add_tensor("output.weight", &[16, n as u64], GgmlType::F32, &zeros(16 * n)).unwrap();
        }
        w.add_tensor("blk.0.attn_q.bias", &[16], GgmlType::F32, &zeros(16)).unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn gguf_to_hf_and_back_for_llama3_and_qwen2_vocabularies() {
        let d = tempfile::tempdir().unwrap();
        for (arch, pre, hf_arch) in [("llama", "llama-bpe", "LlamaForCausalLM"), ("qwen2", "qwen2", "Qwen2ForCausalLM")]
        {
            let add_bos = arch == "llama";
            let g = GgufFile::open(&tiny_gguf(d.path(), arch, pre, add_bos, arch == "qwen2")).unwrap();
            let cfg = hf_config_from_gguf(&g).unwrap();
            assert_eq!(cfg["architectures"], json!([hf_arch]));
            assert_eq!(cfg["model_type"], json!(arch));
            assert_eq!(cfg["hidden_size"], json!(16));
            assert_eq!(cfg["num_key_value_heads"], json!(1));
            assert_eq!(cfg["rms_norm_eps"], json!(1e-6));
            assert_eq!(cfg["rope_theta"], json!(1e6));
            assert_eq!(cfg["vocab_size"], json!(12));
            assert_eq!(cfg["max_position_embeddings"], json!(4096));
            assert_eq!(cfg["tie_word_embeddings"], json!(arch == "llama"));
            assert_eq!(cfg["torch_dtype"], json!("float32"));
            assert!(cfg.get("head_dim").is_none());
            if arch == "llama" {
                assert_eq!(cfg["attention_bias"], json!(true));
            }
            let files = hf_tokenizer_files_from_gguf(&g).unwrap();
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]);

            let hf = tempfile::tempdir().unwrap();
            std::fs::write(hf.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
            write_files(hf.path(), &files).unwrap();
            dummy_safetensors(hf.path());

            // The exported tokenizer.json loads and encodes like the GGUF vocabulary.
            let tk = tokenizers::Tokenizer::from_file(hf.path().join("tokenizer.json")).unwrap();
            let ids = tk.encode("ab ab a12", true).unwrap().get_ids().to_vec();
            let plain = vec![4, 6, 5, 7, 8];
            let tj: Value = serde_json::from_slice(&files[0].1).unwrap();
            assert_eq!(tj["model"]["ignore_merges"], json!(pre == "llama-bpe"), "llama.cpp's llama-bpe ignores merges");
            let want: Vec<u32> = if add_bos { [vec![10], plain].concat() } else { plain };
            assert_eq!(ids, want, "{pre}");
            let from_gguf = crate::tokenizer::Tokenizer::from_gguf(&g).unwrap();
            assert_eq!(from_gguf.encode("ab ab a12", true).unwrap(), want, "{pre}");

            let md = gguf_metadata_from_hf(&HfModel::open(hf.path()).unwrap()).unwrap();
            for (key, value) in g.metadata() {
                assert_eq!(get(&md, key), Some(value), "{arch}: {key}");
            }
        }
        // A pre-tokenizer this module cannot write.
        let g = GgufFile::open(&tiny_gguf(d.path(), "llama", "starcoder", false, false)).unwrap();
        match hf_tokenizer_files_from_gguf(&g) {
            Err(Error::Config { key, msg, .. }) => assert!(key == "tokenizer.ggml.pre" && msg.contains("starcoder")),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
