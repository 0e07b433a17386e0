//! BERT encoder (all-MiniLM-L6-v2 and kin) with sentence-transformers pooling, and the BERT
//! family as an [`super::Arch`] for the quantization pipeline.
//!
//! Learned absolute positions, post-LayerNorm blocks, exact erf GELU. A batch of sentences is
//! run *packed*: the token rows of all sequences are stacked into one `[tokens, hidden]`
//! matrix, so every linear layer is one GEMM over the whole batch and no compute is spent on
//! padding; attention alone looks at each sequence separately. Because nothing is padded the
//! result of a sentence does not depend on what it was batched with (up to GEMM rounding).
//!
//! The layers (dense, LayerNorm, bidirectional attention, GELU) are the shared ones of
//! [`super::layers`]; a block runs in four stages, one per linear group ([`GROUPS`]), which
//! both the encoder's own forward pass and the pipeline's [`BertBlock`] compose.

use std::path::Path;
use std::sync::Arc;

use faer::Par;
use rayon::prelude::*;
use serde_json::Value;

use super::layers::{activate, add_assign, load_checked, load_layer_norm, load_linear, missing, Attention};
pub use super::layers::{erf_f32, exp_f32, gelu, gelu_tanh, Activation, LayerNorm, Linear};
use super::{BlockState, Globals, LinearGroup, ModelKind};
use crate::io::hf::HfModel;
use crate::io::ModelFile;
use crate::tensor::TensorSource;
use crate::{Error, Result};

/// Tokens per forward batch: large enough that the GEMMs run near peak, small enough that
/// the `[tokens, intermediate]` activation stays in the tens of megabytes.
const BATCH_TOKENS: usize = 4096;

/// sentence-transformers' default `max_seq_length` when sentence_bert_config.json is absent.
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Shape hyper-parameters of a BERT encoder, from config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the learned position table (longest sequence).
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// Feed-forward activation.
    pub hidden_act: Activation,
}

fn config_err(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: path.to_path_buf(), key: key.to_string(), msg: msg.into() }
}

fn json_usize(v: &Value, path: &Path, key: &str) -> Result<usize> {
    let x = v.get(key).ok_or_else(|| config_err(path, key, "missing"))?;
    let n = x.as_u64().ok_or_else(|| config_err(path, key, format!("expected a non-negative integer, found {x}")))?;
    if n == 0 {
        return Err(config_err(path, key, "must be positive"));
    }
    usize::try_from(n).map_err(|_| config_err(path, key, "too large"))
}

impl BertConfig {
    /// Reads the hyper-parameters from a parsed config.json (`path` is only for messages).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if let Some(mt) = v.get("model_type") {
            if mt.as_str() != Some("bert") {
                return Err(config_err(path, "model_type", format!("expected \"bert\", found {mt}")));
            }
        }
        if let Some(pe) = v.get("position_embedding_type") {
            if pe.as_str() != Some("absolute") {
                return Err(config_err(
                    path,
                    "position_embedding_type",
                    format!("only \"absolute\" is supported, found {pe}"),
                ));
            }
        }
        let hidden_act = match v.get("hidden_act").and_then(Value::as_str) {
            Some("gelu") => Activation::Gelu,
            Some("gelu_new") | Some("gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(config_err(
                    path,
                    "hidden_act",
                    format!("unsupported activation \"{other}\" (supported: gelu, gelu_new, gelu_pytorch_tanh)"),
                ))
            }
            None => return Err(config_err(path, "hidden_act", "missing or not a string")),
        };
        let layer_norm_eps =
            match v.get("layer_norm_eps") {
                None => 1e-12,
                Some(x) => x.as_f64().filter(|e| *e > 0.0).ok_or_else(|| {
                    config_err(path, "layer_norm_eps", format!("expected a positive number, found {x}"))
                })? as f32,
            };
        let type_vocab_size = match v.get("type_vocab_size") {
            None => 2,
            Some(_) => json_usize(v, path, "type_vocab_size")?,
        };
        let cfg = BertConfig {
            vocab_size: json_usize(v, path, "vocab_size")?,
            hidden_size: json_usize(v, path, "hidden_size")?,
            num_attention_heads: json_usize(v, path, "num_attention_heads")?,
            num_hidden_layers: json_usize(v, path, "num_hidden_layers")?,
            intermediate_size: json_usize(v, path, "intermediate_size")?,
            max_position_embeddings: json_usize(v, path, "max_position_embeddings")?,
            type_vocab_size,
            layer_norm_eps,
            hidden_act,
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(config_err(
                path,
                "num_attention_heads",
                format!("{} does not divide hidden_size {}", cfg.num_attention_heads, cfg.hidden_size),
            ));
        }
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// One post-LayerNorm transformer block.
#[derive(Clone, Debug)]
pub struct BertLayer {
    /// `attention.self.query`.
    pub query: Linear,
    /// `attention.self.key`.
    pub key: Linear,
    /// `attention.self.value`.
    pub value: Linear,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm,
    /// Bidirectional attention's shape, and its K/V hook.
    pub attn: Attention,
    /// Feed-forward activation.
    pub activation: Activation,
}

impl BertLayer {
    /// Loads the block whose Hugging Face names start with `base` (`encoder.layer.3`, or
    /// `bert.encoder.layer.3`).
    pub fn load(src: &dyn TensorSource, path: &Path, base: &str, config: &BertConfig) -> Result<BertLayer> {
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let lin =
            |name: &str, out: usize, inp: usize| load_linear(src, path, &format!("{base}.{name}"), out, inp, true);
        Ok(BertLayer {
            query: lin("attention.self.query", h, h)?,
            key: lin("attention.self.key", h, h)?,
            value: lin("attention.self.value", h, h)?,
            attention_output: lin("attention.output.dense", h, h)?,
            attention_norm: load_layer_norm(src, path, &format!("{base}.attention.output.LayerNorm"), h, eps)?,
            intermediate: lin("intermediate.dense", i, h)?,
            output: lin("output.dense", h, i)?,
            output_norm: load_layer_norm(src, path, &format!("{base}.output.LayerNorm"), h, eps)?,
            attn: Attention::new(config.num_attention_heads, config.num_attention_heads, config.head_dim()),
            activation: config.hidden_act,
        })
    }

    /// Runs the block in place over packed hidden states `x` whose sequences have lengths `lens`.
    pub fn forward(&self, x: &mut [f32], lens: &[usize], par: Par) {
        let ctx = self.attention_context(x, lens, par);
        self.add_attention_output(x, &ctx, par);
        drop(ctx);
        let act = self.ffn_activation(x, par);
        self.add_ffn_output(x, &act, par);
    }

    /// Stage 1: q/k/v of the block input `x` and each sequence's attention: the input of the
    /// attention output projection.
    pub fn attention_context(&self, x: &[f32], lens: &[usize], par: Par) -> Vec<f32> {
        let rows = x.len() / self.query.inp;
        let q = self.query.forward_with(x, rows, par);
        let mut k = self.key.forward_with(x, rows, par);
        let mut v = self.value.forward_with(x, rows, par);
        self.attn.bidirectional(&q, &mut k, &mut v, lens)
    }

    /// Stage 2: `x ← LayerNorm(x + attention_output(ctx))`.
    pub fn add_attention_output(&self, x: &mut [f32], ctx: &[f32], par: Par) {
        let a = self.attention_output.forward_with(ctx, ctx.len() / self.attention_output.inp, par);
        add_assign(x, &a);
        self.attention_norm.forward_in_place(x);
    }

    /// Stage 3: `act(intermediate(x))`: the input of the output projection.
    pub fn ffn_activation(&self, x: &[f32], par: Par) -> Vec<f32> {
        let mut inter = self.intermediate.forward_with(x, x.len() / self.intermediate.inp, par);
        activate(self.activation, &mut inter);
        inter
    }

    /// Stage 4: `x ← LayerNorm(x + output(act))`.
    pub fn add_ffn_output(&self, x: &mut [f32], act: &[f32], par: Par) {
        let o = self.output.forward_with(act, act.len() / self.output.inp, par);
        add_assign(x, &o);
        self.output_norm.forward_in_place(x);
    }
}

/// The token ids of one sequence as the model consumes them (special tokens included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Vocabulary ids.
    pub ids: Vec<u32>,
    /// Segment ids (all 0 for single sentences).
    pub type_ids: Vec<u32>,
}

/// BERT weights and the token-level forward pass.
#[derive(Clone, Debug)]
pub struct BertEncoder {
    /// Hyper-parameters.
    pub config: BertConfig,
    /// `[vocab, hidden]`.
    pub word_embeddings: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Vec<f32>,
    /// `[type_vocab, hidden]`.
    pub token_type_embeddings: Vec<f32>,
    /// `embeddings.LayerNorm`.
    pub embeddings_norm: LayerNorm,
    /// The blocks, in order.
    pub layers: Vec<BertLayer>,
}

/// The prefix of a checkpoint's tensor names: `bert.` (a `BertFor…` model) or none.
fn name_prefix(src: &dyn TensorSource) -> &'static str {
    if src.info("embeddings.word_embeddings.weight").is_none()
        && src.info("bert.embeddings.word_embeddings.weight").is_some()
    {
        "bert."
    } else {
        ""
    }
}

/// Checks a sequence against the model's tables; `n` numbers it in messages.
fn check_sequence(c: &BertConfig, n: usize, ids: &[u32], type_ids: &[u32]) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::Other(format!("sequence {n} has no tokens")));
    }
    if type_ids.len() != ids.len() {
        return Err(Error::Other(format!("sequence {n}: {} type ids for {} tokens", type_ids.len(), ids.len())));
    }
    if ids.len() > c.max_position_embeddings {
        return Err(Error::Other(format!(
            "sequence {n} has {} tokens; the model has {} positions",
            ids.len(),
            c.max_position_embeddings
        )));
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(Error::Other(format!("token id {id} is outside the vocabulary of {}", c.vocab_size)));
    }
    if let Some(&tt) = type_ids.iter().find(|&&tt| tt as usize >= c.type_vocab_size) {
        return Err(Error::Other(format!("token type {tt} is outside the {} token types", c.type_vocab_size)));
    }
    Ok(())
}

/// Appends word + position + token-type embedding rows of one (checked) sequence to `x`.
fn push_embeddings(x: &mut Vec<f32>, h: usize, tables: [&[f32]; 3], ids: &[u32], type_ids: &[u32]) {
    let [word, position, types] = tables;
    for (pos, (&id, &tt)) in ids.iter().zip(type_ids).enumerate() {
        let (id, tt) = (id as usize, tt as usize);
        let w = &word[id * h..(id + 1) * h];
        let p = &position[pos * h..(pos + 1) * h];
        let t = &types[tt * h..(tt + 1) * h];
        x.extend(w.iter().zip(p).zip(t).map(|((a, b), c)| a + b + c));
    }
}

impl BertEncoder {
    /// Reads the weights (Hugging Face names, optionally under `bert.`) from `src`; `path`
    /// names the checkpoint in error messages.
    pub fn load(config: BertConfig, src: &dyn TensorSource, path: &Path) -> Result<Self> {
        let prefix = name_prefix(src);
        let h = config.hidden_size;
        let t = |name: &str, shape: &[usize]| load_checked(src, path, &format!("{prefix}{name}"), shape);
        let word_embeddings = t("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position_embeddings = t("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
        let token_type_embeddings = t("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        let embeddings_norm =
            load_layer_norm(src, path, &format!("{prefix}embeddings.LayerNorm"), h, config.layer_norm_eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|n| BertLayer::load(src, path, &format!("{prefix}encoder.layer.{n}"), &config))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertEncoder { config, word_embeddings, position_embeddings, token_type_embeddings, embeddings_norm, layers })
    }

    /// Runs a batch of sequences and returns the final hidden states, packed: the rows of
    /// sequence 0, then those of sequence 1, …, each row `hidden_size` wide.
    pub fn forward(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        self.forward_with(seqs, Par::rayon(0))
    }

    /// As [`BertEncoder::forward`], with the GEMMs' parallelism given: `Par::Seq` when the
    /// caller already runs several batches side by side.
    pub fn forward_with(&self, seqs: &[Tokens], par: Par) -> Result<Vec<f32>> {
        let mut x = self.embed_tokens(seqs)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
        for layer in &self.layers {
            layer.forward(&mut x, &lens, par);
        }
        Ok(x)
    }

    /// Word + position + token-type embeddings followed by LayerNorm, packed as in `forward`.
    pub fn embed_tokens(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        let c = &self.config;
        let h = c.hidden_size;
        let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        let tables = [&self.word_embeddings[..], &self.position_embeddings[..], &self.token_type_embeddings[..]];
        for (n, s) in seqs.iter().enumerate() {
            check_sequence(c, n, &s.ids, &s.type_ids)?;
            push_embeddings(&mut x, h, tables, &s.ids, &s.type_ids);
        }
        self.embeddings_norm.forward_in_place(&mut x);
        Ok(x)
    }

    /// One block over packed hidden states `x` whose sequences have lengths `lens`.
    pub fn layer_forward(&self, layer: &BertLayer, x: &mut [f32], lens: &[usize], par: Par) {
        layer.forward(x, lens, par);
    }
}

/// How token states become one sentence vector (sentence-transformers' Pooling module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state ([CLS]).
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
    /// Mean over the tokens.
    Mean,
    /// Sum over the tokens divided by √length.
    MeanSqrtLen,
    /// The last token's state.
    LastToken,
}

/// Pools the states of one sequence (`hidden[len, hidden_size]`); several modes are
/// concatenated in the given order.
pub fn pool(hidden: &[f32], hidden_size: usize, modes: &[PoolingMode]) -> Vec<f32> {
    let len = hidden.len() / hidden_size;
    let mut out = Vec::with_capacity(hidden_size * modes.len());
    let sum = || {
        let mut s = vec![0.0f64; hidden_size];
        for row in hidden.chunks_exact(hidden_size) {
            s.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
        }
        s
    };
    for mode in modes {
        match mode {
            PoolingMode::Cls => out.extend_from_slice(&hidden[..hidden_size]),
            PoolingMode::LastToken => out.extend_from_slice(&hidden[(len - 1) * hidden_size..]),
            PoolingMode::Max => {
                let mut m = vec![f32::NEG_INFINITY; hidden_size];
                for row in hidden.chunks_exact(hidden_size) {
                    m.iter_mut().zip(row).for_each(|(a, &b)| *a = a.max(b));
                }
                out.extend(m);
            }
            PoolingMode::Mean => out.extend(sum().into_iter().map(|s| (s / len as f64) as f32)),
            PoolingMode::MeanSqrtLen => out.extend(sum().into_iter().map(|s| (s / (len as f64).sqrt()) as f32)),
        }
    }
    out
}

/// Scales `v` to unit Euclidean length (sentence-transformers' Normalize; a zero vector stays
/// zero, as torch's normalize with its epsilon leaves it).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let inv = (1.0 / norm.max(1e-12)) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
}

/// A sentence-transformers BERT model: tokenizer, encoder, pooling and normalisation.
pub struct Bert {
    /// The transformer.
    pub encoder: BertEncoder,
    /// Pooling modes, concatenated in this order.
    pub pooling: Vec<PoolingMode>,
    /// Whether sentence vectors are L2-normalised (a Normalize module is present).
    pub normalize: bool,
    /// Longest token sequence (special tokens included); longer inputs are truncated.
    pub max_seq_length: usize,
    /// sentence-transformers' `do_lower_case`: lower-case the text before tokenizing.
    lowercase: bool,
    tokenizer: tokenizers::Tokenizer,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Pooling and normalisation as modules.json (+ the Pooling module's config.json) say.
fn read_sentence_modules(dir: &Path, hidden_size: usize) -> Result<(Vec<PoolingMode>, bool)> {
    let modules_path = dir.join("modules.json");
    let Some(modules) = read_json_if_exists(&modules_path)? else {
        return Ok((vec![PoolingMode::Mean], true));
    };
    let list = modules.as_array().ok_or_else(|| config_err(&modules_path, "(root)", "expected a list of modules"))?;
    let mut pooling = None;
    let mut normalize = false;
    for m in list {
        let ty = m
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| config_err(&modules_path, "type", "missing or not a string"))?;
        let kind = ty.rsplit('.').next().unwrap_or(ty);
        match kind {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("1_Pooling");
                let cfg_path = dir.join(sub).join("config.json");
                pooling = Some(read_pooling_config(&cfg_path, hidden_size)?);
            }
            _ => {
                return Err(config_err(&modules_path, "type", format!("unsupported sentence-transformers module {ty}")))
            }
        }
    }
    let pooling = pooling.unwrap_or_else(|| vec![PoolingMode::Mean]);
    Ok((pooling, normalize))
}

fn read_pooling_config(path: &Path, hidden_size: usize) -> Result<Vec<PoolingMode>> {
    let v = read_json(path)?;
    let flag = |key: &str| -> Result<bool> {
        match v.get(key) {
            None => Ok(false),
            Some(x) => x.as_bool().ok_or_else(|| config_err(path, key, format!("expected true or false, found {x}"))),
        }
    };
    if let Some(d) = v.get("word_embedding_dimension") {
        if d.as_u64() != Some(hidden_size as u64) {
            return Err(config_err(
                path,
                "word_embedding_dimension",
                format!("{d} differs from the model's hidden_size {hidden_size}"),
            ));
        }
    }
    if flag("pooling_mode_weightedmean_tokens")? {
        return Err(config_err(path, "pooling_mode_weightedmean_tokens", "weighted-mean pooling is not supported"));
    }
    // sentence-transformers concatenates the enabled modes in this order.
    let mut modes = Vec::new();
    for (key, mode) in [
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
        ("pooling_mode_lasttoken", PoolingMode::LastToken),
    ] {
        if flag(key)? {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        return Err(config_err(path, "pooling_mode_mean_tokens", "no pooling mode is enabled"));
    }
    Ok(modes)
}

impl Bert {
    /// Builds the sentence model from a directory holding tokenizer.json (and optionally
    /// sentence_bert_config.json, modules.json, 1_Pooling/config.json), the parsed
    /// config.json, and the weights in `src`.
    pub fn load(dir: &Path, config_json: &Value, src: &dyn TensorSource) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = BertConfig::from_json(config_json, &config_path)?;
        let encoder = BertEncoder::load(config, src, dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::Tokenizer(format!("{}: not found", tokenizer_path.display())));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        Self::from_parts(encoder, tokenizer, dir)
    }

    /// Opens a Hugging Face directory (config.json, safetensors weights, tokenizer.json).
    pub fn open(dir: &Path) -> Result<Self> {
        let hf = crate::io::hf::HfModel::open(dir)?;
        Self::load(hf.dir(), hf.config(), &hf)
    }

    /// Builds the sentence model from an opened checkpoint (Hugging Face directories only:
    /// a GGUF file carries no sentence-transformers pooling configuration).
    pub fn from_model(model: &crate::io::ModelFile) -> Result<Self> {
        match model {
            crate::io::ModelFile::Hf(hf) => Self::load(hf.dir(), hf.config(), hf),
            crate::io::ModelFile::Gguf(g) => Err(Error::corrupt(
                g.path(),
                "BERT encoders are read from Hugging Face directories (config.json, model.safetensors, tokenizer.json), not GGUF",
            )),
        }
    }

    /// Joins an encoder with a tokenizer, reading the sentence-transformers settings from
    /// `dir` (all optional there: max length 256, mean pooling, L2 normalisation).
    pub fn from_parts(encoder: BertEncoder, mut tokenizer: tokenizers::Tokenizer, dir: &Path) -> Result<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > encoder.config.vocab_size {
            return Err(Error::Tokenizer(format!(
                "{}: {vocab} tokens, but the model's vocab_size is {}",
                dir.join("tokenizer.json").display(),
                encoder.config.vocab_size
            )));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let st = read_json_if_exists(&st_path)?;
        let mut max_seq_length = DEFAULT_MAX_SEQ_LENGTH;
        let mut lowercase = false;
        if let Some(st) = &st {
            if let Some(m) = st.get("max_seq_length") {
                max_seq_length = m.as_u64().filter(|&m| m >= 2).ok_or_else(|| {
                    config_err(&st_path, "max_seq_length", format!("expected an integer ≥ 2, found {m}"))
                })? as usize;
            }
            if let Some(l) = st.get("do_lower_case") {
                lowercase = l.as_bool().ok_or_else(|| {
                    config_err(&st_path, "do_lower_case", format!("expected true or false, found {l}"))
                })?;
            }
        }
        // sentence-transformers caps the length at the position table as well.
        let max_seq_length = max_seq_length.min(encoder.config.max_position_embeddings);
        let (pooling, normalize) = read_sentence_modules(dir, encoder.config.hidden_size)?;
        // tokenizer.json of MiniLM pads to and truncates at 128: sentence-transformers pads
        // nothing (we run packed) and truncates at its own max_seq_length.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Bert { encoder, pooling, normalize, max_seq_length, lowercase, tokenizer })
    }

    /// Length of a sentence vector.
    pub fn dim(&self) -> usize {
        self.encoder.config.hidden_size * self.pooling.len()
    }

    /// Token ids of each text, with the special tokens the tokenizer's post-processor adds,
    /// truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let inputs: Vec<String> =
            texts.iter().map(|t| if self.lowercase { t.to_lowercase() } else { t.to_string() }).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        encodings
            .into_iter()
            .map(|e| {
                let t = Tokens { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() };
                if t.ids.is_empty() {
                    // Only a tokenizer without a post-processor yields nothing for "".
                    Err(Error::Tokenizer("a text produced no tokens".into()))
                } else {
                    Ok(t)
                }
            })
            .collect()
    }

    /// Pooled sentence vectors before normalisation, in input order. Sentences are run in
    /// batches of similar length; `progress(done, total)` is called after each batch.
    pub fn pooled(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenize(texts)?;
        self.pooled_tokens(&tokens, progress)
    }

    /// As [`Bert::pooled`], from tokens.
    pub fn pooled_tokens(&self, tokens: &[Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let h = self.encoder.config.hidden_size;
        // Longest first: the attention of a batch runs one sequence per thread, so similar
        // lengths keep the threads evenly loaded.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].ids.len()));
        let mut batches: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut n_tok = 0;
            while end < order.len() && (end == start || n_tok + tokens[order[end]].ids.len() <= BATCH_TOKENS) {
                n_tok += tokens[order[end]].ids.len();
                end += 1;
            }
            batches.push(&order[start..end]);
            start = end;
        }
        // Several batches run side by side, each with single-threaded GEMMs: no barrier per
        // GEMM, and idle cores are filled by the next batch rather than spun on. A lone batch
        // parallelises inside its GEMMs instead.
        let threads = rayon::current_num_threads().max(1);
        let par = if batches.len() > 1 { Par::Seq } else { Par::rayon(0) };
        let mut out = vec![Vec::new(); tokens.len()];
        let mut done = 0;
        for group in batches.chunks(threads) {
            let pooled: Vec<Vec<Vec<f32>>> = group
                .par_iter()
                .map(|idx| {
                    let batch: Vec<Tokens> = idx.iter().map(|&i| tokens[i].clone()).collect();
                    let hidden = self.encoder.forward_with(&batch, par)?;
                    let mut off = 0;
                    Ok(batch
                        .iter()
                        .map(|t| {
                            let len = t.ids.len();
                            let v = pool(&hidden[off * h..(off + len) * h], h, &self.pooling);
                            off += len;
                            v
                        })
                        .collect())
                })
                .collect::<Result<_>>()?;
            for (idx, vecs) in group.iter().zip(pooled) {
                for (&i, v) in idx.iter().zip(vecs) {
                    out[i] = v;
                }
                done += idx.len();
            }
            progress(done, tokens.len());
        }
        Ok(out)
    }

    /// Sentence embeddings, pooled and normalised as the model's configuration says.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with_progress(texts, &|_, _| {})
    }

    /// As [`Bert::embed`], reporting `(done, total)` after each batch.
    pub fn embed_with_progress(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let mut v = self.pooled(texts, progress)?;
        if self.normalize {
            v.iter_mut().for_each(|e| l2_normalize(e));
        }
        Ok(v)
    }
}

// ---- the BERT family as an Arch ---------------------------------------------------------

/// A block's tensors: (canonical name inside the block, Hugging Face name inside
/// `encoder.layer.N`), in llama.cpp's GGUF spelling for BERT (gguf-py `TENSOR_NAMES`, mapped
/// from these names by `tensor_mapping.py`).
const BLOCK_NAMES: [(&str, &str); 8] = [
    ("attn_q", "attention.self.query"),
    ("attn_k", "attention.self.key"),
    ("attn_v", "attention.self.value"),
    ("attn_output", "attention.output.dense"),
    ("attn_output_norm", "attention.output.LayerNorm"),
    ("ffn_up", "intermediate.dense"),
    ("ffn_down", "output.dense"),
    ("layer_output_norm", "output.LayerNorm"),
];

/// (canonical, Hugging Face name without prefix) of every tensor a BERT checkpoint with
/// `n_layer` blocks can hold.
fn canonical_pairs(n_layer: usize) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("token_embd.weight".into(), "embeddings.word_embeddings.weight".into()),
        ("position_embd.weight".into(), "embeddings.position_embeddings.weight".into()),
        ("token_types.weight".into(), "embeddings.token_type_embeddings.weight".into()),
    ];
    let mut both = |c: &str, h: &str| {
        for suffix in ["weight", "bias"] {
            v.push((format!("{c}.{suffix}"), format!("{h}.{suffix}")));
        }
    };
    both("token_embd_norm", "embeddings.LayerNorm");
    for i in 0..n_layer {
        for (c, h) in BLOCK_NAMES {
            both(&format!("blk.{i}.{c}"), &format!("encoder.layer.{i}.{h}"));
        }
    }
    // llama.cpp's converter drops the pooler (sentence embeddings do not use it); it is kept,
    // under its own name, so that a written directory is still a complete `BertModel`.
    both("pooler.dense", "pooler.dense");
    v
}

/// BERT's linear groups, in true-sequential order.
///
/// No group records a norm or producer a per-channel scale could fold into, except the
/// attention output's (`attn_v`: attention is linear in the values). BERT is post-LN: a
/// LayerNorm's output is both the next group's input *and* the residual the next sub-layer
/// adds to, so scaling the LayerNorm (gain and bias) would change the residual too — no
/// equivalent rewrite; the q/k/v input is moreover produced in the previous block (or the
/// embeddings). GELU is not positively homogeneous, so `ffn_up` cannot absorb a scale of the
/// `ffn_down` input either.
pub const GROUPS: [LinearGroup; 4] = [
    LinearGroup { input: "block_input", linears: &["attn_q", "attn_k", "attn_v"], norm: None, producer: None },
    LinearGroup { input: "attention", linears: &["attn_output"], norm: None, producer: Some("attn_v") },
    LinearGroup { input: "attn_output_norm", linears: &["ffn_up"], norm: None, producer: None },
    LinearGroup { input: "activation", linears: &["ffn_down"], norm: None, producer: None },
];

/// A BERT block as the generic pipeline runs it (see [`super::Block`]): the residual stream
/// `st.x` is the block input, then the attention LayerNorm's output, then the block output.
pub struct BertBlock {
    /// The weights.
    pub layer: BertLayer,
    index: usize,
}

impl BertBlock {
    /// Block `index` made of `layer`.
    pub fn new(layer: BertLayer, index: usize) -> BertBlock {
        BertBlock { layer, index }
    }
}

type NamedTensor<'a> = (String, Vec<usize>, &'a [f32]);

fn push_linear<'a>(out: &mut Vec<NamedTensor<'a>>, base: &str, l: &'a Linear) {
    out.push((format!("{base}.weight"), vec![l.out, l.inp], &l.w));
    if let Some(b) = &l.b {
        out.push((format!("{base}.bias"), vec![l.out], b));
    }
}

fn push_norm<'a>(out: &mut Vec<NamedTensor<'a>>, base: &str, n: &'a LayerNorm) {
    out.push((format!("{base}.weight"), vec![n.weight.len()], &n.weight));
    out.push((format!("{base}.bias"), vec![n.bias.len()], &n.bias));
}

impl super::Block for BertBlock {
    fn groups(&self) -> &'static [LinearGroup] {
        &GROUPS
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        let l = &self.layer;
        Some(match name {
            "attn_q" => &l.query,
            "attn_k" => &l.key,
            "attn_v" => &l.value,
            "attn_output" => &l.attention_output,
            "ffn_up" => &l.intermediate,
            "ffn_down" => &l.output,
            _ => return None,
        })
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let l = &mut self.layer;
        Some(match name {
            "attn_q" => &mut l.query,
            "attn_k" => &mut l.key,
            "attn_v" => &mut l.value,
            "attn_output" => &mut l.attention_output,
            "ffn_up" => &mut l.intermediate,
            "ffn_down" => &mut l.output,
            _ => return None,
        })
    }
    /// None: a LayerNorm's gain alone cannot take a scale (its bias would have to follow, and
    /// its output is also the residual; see [`GROUPS`]).
    fn norm_mut(&mut self, _name: &str) -> Option<&mut Vec<f32>> {
        None
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let l = &self.layer;
        let mut out = Vec::with_capacity(16);
        for (c, _) in BLOCK_NAMES {
            let base = format!("blk.{}.{c}", self.index);
            match c {
                "attn_output_norm" => push_norm(&mut out, &base, &l.attention_norm),
                "layer_output_norm" => push_norm(&mut out, &base, &l.output_norm),
                _ => push_linear(&mut out, &base, self.linear(c).expect("a linear of BLOCK_NAMES")),
            }
        }
        out
    }
    fn weight_name(&self, linear: &str) -> String {
        format!("blk.{}.{linear}.weight", self.index)
    }
    fn group_input(&self, g: usize, st: &mut BlockState) -> Vec<f32> {
        match g {
            // The residual stream itself: the block input, then the attention LayerNorm's output.
            0 | 2 => st.x.to_vec(),
            _ => std::mem::take(&mut st.carry),
        }
    }
    fn advance(&self, g: usize, st: &mut BlockState, input: Vec<f32>) {
        let par = Par::rayon(0);
        match g {
            0 => {
                let n_seq = input.len() / self.layer.query.inp / st.seq_len.max(1);
                st.carry = self.layer.attention_context(&input, &vec![st.seq_len; n_seq], par);
            }
            1 => self.layer.add_attention_output(st.x, &input, par),
            2 => st.carry = self.layer.ffn_activation(&input, par),
            _ => self.layer.add_ffn_output(st.x, &input, par),
        }
    }
}

/// The special tokens the tokenizer in `dir` frames a single sequence with (`[CLS]`, `[SEP]`),
/// read from its post-processor; `None` without tokenizer.json or without such framing.
fn special_frame(dir: &Path) -> Result<Option<(u32, u32)>> {
    let p = dir.join("tokenizer.json");
    if !p.is_file() {
        return Ok(None);
    }
    let err = |e: String| Error::Tokenizer(format!("{}: {e}", p.display()));
    let mut t = tokenizers::Tokenizer::from_file(&p).map_err(|e| err(e.to_string()))?;
    t.with_padding(None);
    t.with_truncation(None).map_err(|e| err(e.to_string()))?;
    let e = t.encode("", true).map_err(|e| err(e.to_string()))?;
    let ids = e.get_ids();
    Ok((ids.len() >= 2).then(|| (ids[0], ids[ids.len() - 1])))
}

/// The BERT family as an [`super::Arch`]: a Hugging Face `BertModel` checkpoint (names
/// optionally under `bert.`), canonical names in llama.cpp's spelling.
pub struct BertArch<'a> {
    hf: &'a HfModel,
    cfg: Arc<BertConfig>,
    prefix: &'static str,
    /// (canonical, source) names of every tensor, in the checkpoint's order.
    names: Vec<(String, String)>,
    frame: Option<(u32, u32)>,
}

impl<'a> BertArch<'a> {
    /// The architecture of a BERT checkpoint (Hugging Face directories only: a GGUF file
    /// carries no sentence-transformers configuration).
    pub fn new(file: &'a ModelFile) -> Result<BertArch<'a>> {
        let hf = match file {
            ModelFile::Hf(h) => h,
            ModelFile::Gguf(g) => {
                return Err(Error::corrupt(
                    g.path(),
                    "BERT encoders are read from Hugging Face directories (config.json, model.safetensors, tokenizer.json), not GGUF",
                ))
            }
        };
        let cfg = BertConfig::from_json(hf.config(), &hf.dir().join("config.json"))?;
        let src: &dyn TensorSource = hf;
        let prefix = name_prefix(src);
        let by_source: std::collections::HashMap<String, String> =
            canonical_pairs(cfg.num_hidden_layers).into_iter().map(|(c, h)| (format!("{prefix}{h}"), c)).collect();
        let mut names = Vec::new();
        for t in src.tensors() {
            match by_source.get(&t.name) {
                Some(c) => names.push((c.clone(), t.name.clone())),
                None => {
                    return Err(Error::Tensor {
                        path: hf.dir().to_path_buf(),
                        tensor: t.name.clone(),
                        msg: format!(
                        "not a tensor of a BERT encoder with {} blocks (quantsmith quantizes BertModel checkpoints)",
                        cfg.num_hidden_layers
                    ),
                    })
                }
            }
        }
        let frame = special_frame(hf.dir())?;
        Ok(BertArch { hf, cfg: Arc::new(cfg), prefix, names, frame })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The token ids a calibration window is framed with (`[CLS]`, `[SEP]`), when the
    /// tokenizer has them.
    pub fn frame(&self) -> Option<(u32, u32)> {
        self.frame
    }

    /// The shape a tensor outside the blocks must have.
    fn global_shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.cfg;
        let h = c.hidden_size;
        Some(match name {
            "token_embd.weight" => vec![c.vocab_size, h],
            "position_embd.weight" => vec![c.max_position_embeddings, h],
            "token_types.weight" => vec![c.type_vocab_size, h],
            "pooler.dense.weight" => vec![h, h],
            "token_embd_norm.weight" | "token_embd_norm.bias" | "pooler.dense.bias" => vec![h],
            _ => return None,
        })
    }
}

impl super::Arch for BertArch<'_> {
    fn family(&self) -> &str {
        "bert"
    }
    fn kind(&self) -> ModelKind {
        ModelKind::Encoder
    }
    fn n_blocks(&self) -> usize {
        self.cfg.num_hidden_layers
    }
    fn d_model(&self) -> usize {
        self.cfg.hidden_size
    }
    fn vocab(&self) -> usize {
        self.cfg.vocab_size
    }
    fn load_block(&self, i: usize, _max_len: usize) -> Result<Box<dyn super::Block>> {
        let base = format!("{}encoder.layer.{i}", self.prefix);
        let layer = BertLayer::load(self.hf, self.hf.dir(), &base, &self.cfg)?;
        Ok(Box::new(BertBlock::new(layer, i)))
    }
    fn load_globals(&self) -> Result<Globals> {
        let path = self.hf.dir();
        let mut g = Globals::default();
        for (c, s) in &self.names {
            if let Some(shape) = self.global_shape(c) {
                let v = load_checked(self.hf, path, s, &shape)?;
                g.tensors.insert(c.clone(), (shape, v));
            }
        }
        for name in [
            "token_embd.weight",
            "position_embd.weight",
            "token_types.weight",
            "token_embd_norm.weight",
            "token_embd_norm.bias",
        ] {
            if !g.tensors.contains_key(name) {
                return Err(missing(path, &self.hf_name(name)));
            }
        }
        Ok(g)
    }
    /// Embeddings of calibration windows of `seq_len` tokens, each framed as the encoder sees
    /// every input: `[CLS]` first, `[SEP]` last, segment 0, positions from 0.
    ///
    /// The windows are spans of running text (`calib/windows.rs`) cut regardless of sentence
    /// ends, which an encoder tolerates (its inputs are often fragments or several sentences);
    /// their first token is already the tokenizer's `[CLS]` (its post-processor adds it, which
    /// the calibration tokenizer reports as BOS) and the last is replaced by `[SEP]` here. The
    /// two frame tokens matter: BERT's heads attend to them heavily and their rows carry the
    /// largest activations of the residual stream, so a window without them would calibrate
    /// on a distribution the model never meets. Windows longer than the position table are
    /// refused.
    ///
    /// The window length should be near the inputs' (`--calib-len`): on MiniLM, GPTQ at
    /// int4:g32 calibrated on *Emma* gives sentences of *Pride and Prejudice* (24 tokens on
    /// average) a mean cosine to the base of 0.988 with 32-token windows, 0.981 with 128 and
    /// 0.970 with 512 (the decoders' default).
    fn embed(&self, globals: &Globals, tokens: &[u32], seq_len: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let path = self.hf.dir();
        if seq_len < 2 || seq_len > c.max_position_embeddings {
            return Err(Error::Other(format!(
                "{}: calibration windows of {seq_len} tokens do not fit the model's {} positions (use 2 to {} tokens)",
                path.display(),
                c.max_position_embeddings,
                c.max_position_embeddings
            )));
        }
        if tokens.len() % seq_len != 0 {
            return Err(Error::Other(format!("{} tokens are not whole windows of {seq_len}", tokens.len())));
        }
        let get = |name: &str| globals.get(name).ok_or_else(|| missing(path, name));
        let tables = [get("token_embd.weight")?, get("position_embd.weight")?, get("token_types.weight")?];
        let norm = LayerNorm {
            weight: get("token_embd_norm.weight")?.to_vec(),
            bias: get("token_embd_norm.bias")?.to_vec(),
            eps: c.layer_norm_eps,
        };
        let h = c.hidden_size;
        let types = vec![0u32; seq_len];
        let mut ids = vec![0u32; seq_len];
        let mut x = Vec::with_capacity(tokens.len() * h);
        for (n, w) in tokens.chunks_exact(seq_len).enumerate() {
            ids.copy_from_slice(w);
            if let Some((cls, sep)) = self.frame {
                ids[0] = cls;
                ids[seq_len - 1] = sep;
            }
            check_sequence(c, n, &ids, &types)
                .map_err(|e| Error::Other(format!("{}: calibration window {e}", path.display())))?;
            push_embeddings(&mut x, h, tables, &ids, &types);
        }
        norm.forward_in_place(&mut x);
        Ok(x)
    }
    /// None: a sentence encoder has no output head.
    fn head_weight(&self, _globals: &Globals) -> Option<String> {
        None
    }
    fn head_input(&self, _globals: &Globals, x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }
    fn tensor_names(&self) -> Vec<String> {
        self.names.iter().map(|(c, _)| c.clone()).collect()
    }
    fn source_name(&self, name: &str) -> String {
        self.names.iter().find(|(c, _)| c == name).map(|(_, s)| s.clone()).unwrap_or_else(|| name.to_string())
    }
    /// The checkpoint's own name: BERT checkpoints are Hugging Face ones.
    fn hf_name(&self, name: &str) -> String {
        if let Some((_, s)) = self.names.iter().find(|(c, _)| c == name) {
            return s.clone();
        }
        canonical_pairs(self.cfg.num_hidden_layers)
            .into_iter()
            .find(|(c, _)| c == name)
            .map(|(_, h)| format!("{}{h}", self.prefix))
            .unwrap_or_else(|| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let h = [1.0, 2.0, 3.0, -4.0, 5.0, 0.0];
        assert_eq!(pool(&h, 2, &[PoolingMode::Cls]), vec![1.0, 2.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::LastToken]), vec![5.0, 0.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::Max]), vec![5.0, 2.0]);
        assert_eq!(pool(&h, 2, &[PoolingMode::Mean, PoolingMode::Cls]), vec![3.0, -2.0 / 3.0, 1.0, 2.0]);
        let s = pool(&h, 2, &[PoolingMode::MeanSqrtLen]);
        assert!((s[0] - 9.0 / 3f32.sqrt()).abs() < 1e-6);
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
