//! MPNet encoder (all-mpnet-base-v2) with sentence-transformers pooling, and the MPNet family
//! as an [`super::Arch`] for the quantization pipeline.
//!
//! MPNet is BERT's block (post-LayerNorm, q/k/v/o with biases, exact erf GELU) with other
//! positions; the facts below are those of transformers' `modeling_mpnet.py`:
//!
//! - **Embeddings** are word + learned absolute position, then LayerNorm; there are no token
//!   types. The padding index is fixed at 1 ([`PADDING_IDX`]) and position ids count the
//!   non-padding tokens from `PADDING_IDX + 1 = 2` (fairseq's `make_positions`), so a
//!   sequence of `n` tokens uses rows `2..n + 2` of the position table: 514 rows hold 512
//!   tokens.
//! - **A relative position bias** is added to every head's attention scores (after the
//!   1/√d scaling, before the softmax): one `[32, heads]` table (`relative_attention_bias`)
//!   owned by the encoder and shared by all blocks, indexed by the bucket of key position −
//!   query position ([`relative_position_bucket`]: T5's bidirectional buckets, 32 buckets,
//!   exact up to distance 8, logarithmic up to 128).
//!
//! Sentences run *packed*, as in `bert.rs`: all token rows of a batch form one matrix, every
//! linear layer is one GEMM over it, and attention alone looks at each sequence separately.
//! Nothing is padded, so the relative positions are plain `0..len` (transformers pads to the
//! right and uses `arange` too, so its real tokens see the same distances).

use std::path::Path;
use std::sync::Arc;

use faer::Par;
use rayon::prelude::*;
use serde_json::Value;

use super::bert::{l2_normalize, pool, PoolingMode, Tokens};
use super::layers::{
    activate, add_assign, load_checked, load_layer_norm, load_linear, missing, Activation, Attention, LayerNorm, Linear,
};
use super::{BlockState, Globals, LinearGroup, ModelKind};
use crate::io::hf::HfModel;
use crate::io::ModelFile;
use crate::tensor::TensorSource;
use crate::{Error, Result};

/// The padding token's id, fixed by transformers' `MPNetEmbeddings` whatever config.json says;
/// position ids of real tokens start right after it.
pub const PADDING_IDX: u32 = 1;

/// Buckets of the relative position bias (`compute_position_bias` always uses 32).
pub const NUM_BUCKETS: usize = 32;

/// The distance from which all relative positions share the last bucket of their direction.
pub const MAX_DISTANCE: usize = 128;

/// Tokens per forward batch (as in `bert.rs`).
const BATCH_TOKENS: usize = 4096;

/// The bucket of a relative position (key position − query position), as transformers'
/// `MPNetEncoder.relative_position_bucket(relative, num_buckets=32, max_distance=128)`:
/// buckets 0–15 for keys at or before the query, 16–31 for keys after it; within a direction,
/// distances 0–7 have a bucket each, 8–127 share 8 buckets on a logarithmic scale, and 128 and
/// beyond fall in the last.
///
/// transformers computes the logarithm in f32; f64 here gives the same buckets for every
/// distance up to 600 (checked against torch in the tests), which covers the 512 positions.
pub fn relative_position_bucket(relative: i64) -> usize {
    let half = NUM_BUCKETS / 2;
    let max_exact = half / 2;
    // transformers negates first: n > 0 when the key comes before the query.
    let n = -relative;
    let side = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    if n < max_exact {
        return side + n;
    }
    let scaled =
        (n as f64 / max_exact as f64).ln() / (MAX_DISTANCE as f64 / max_exact as f64).ln() * (half - max_exact) as f64;
    side + (max_exact + scaled as usize).min(half - 1)
}

/// The relative position bias every block adds to its attention scores.
#[derive(Clone, Debug, PartialEq)]
pub struct RelativeBias {
    /// `[NUM_BUCKETS, heads]`, as `encoder.relative_attention_bias.weight`.
    pub table: Vec<f32>,
    /// Attention heads.
    pub heads: usize,
}

impl RelativeBias {
    /// The bias of the `[NUM_BUCKETS, heads]` table.
    pub fn new(table: Vec<f32>, heads: usize) -> RelativeBias {
        debug_assert_eq!(table.len(), NUM_BUCKETS * heads);
        RelativeBias { table, heads }
    }

    /// Adds head `head`'s bias to the scores `[len, len]` (query rows, key columns) of one
    /// sequence.
    pub fn add_to(&self, head: usize, len: usize, scores: &mut [f32]) {
        // The bias depends on key − query only: gather it once per offset, offset + len − 1.
        let by_offset: Vec<f32> = (0..2 * len - 1)
            .map(|d| self.table[relative_position_bucket(d as i64 - (len as i64 - 1)) * self.heads + head])
            .collect();
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let b = &by_offset[len - 1 - i..2 * len - 1 - i];
            row.iter_mut().zip(b).for_each(|(s, b)| *s += b);
        }
    }
}

/// Shape hyper-parameters of an MPNet encoder, from config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct MpnetConfig {
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
    /// Rows of the position table (two more than the longest sequence, see [`PADDING_IDX`]).
    pub max_position_embeddings: usize,
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

impl MpnetConfig {
    /// Reads the hyper-parameters from a parsed config.json (`path` is only for messages).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        if let Some(mt) = v.get("model_type") {
            if mt.as_str() != Some("mpnet") {
                return Err(config_err(path, "model_type", format!("expected \"mpnet\", found {mt}")));
            }
        }
        if let Some(b) = v.get("relative_attention_num_buckets") {
            if b.as_u64() != Some(NUM_BUCKETS as u64) {
                return Err(config_err(
                    path,
                    "relative_attention_num_buckets",
                    format!("only {NUM_BUCKETS} is supported (transformers' MPNet always uses {NUM_BUCKETS} buckets), found {b}"),
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
        let cfg = MpnetConfig {
            vocab_size: json_usize(v, path, "vocab_size")?,
            hidden_size: json_usize(v, path, "hidden_size")?,
            num_attention_heads: json_usize(v, path, "num_attention_heads")?,
            num_hidden_layers: json_usize(v, path, "num_hidden_layers")?,
            intermediate_size: json_usize(v, path, "intermediate_size")?,
            max_position_embeddings: json_usize(v, path, "max_position_embeddings")?,
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
        if cfg.max_position_embeddings <= PADDING_IDX as usize + 1 {
            return Err(config_err(
                path,
                "max_position_embeddings",
                format!("{} leaves no position after the padding index {PADDING_IDX}", cfg.max_position_embeddings),
            ));
        }
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The longest sequence the position table holds (positions start after the padding index).
    pub fn max_len(&self) -> usize {
        self.max_position_embeddings - PADDING_IDX as usize - 1
    }
}

/// The position ids of one sequence, as transformers' `create_position_ids_from_input_ids`:
/// the count of non-padding tokens so far, after [`PADDING_IDX`]; padding tokens get
/// `PADDING_IDX` itself.
pub fn position_ids(ids: &[u32]) -> Vec<usize> {
    let mut count = 0;
    ids.iter()
        .map(|&id| {
            if id == PADDING_IDX {
                PADDING_IDX as usize
            } else {
                count += 1;
                PADDING_IDX as usize + count
            }
        })
        .collect()
}

/// Checks a sequence against the model's tables; `n` numbers it in messages.
fn check_sequence(c: &MpnetConfig, n: usize, ids: &[u32]) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::Other(format!("sequence {n} has no tokens")));
    }
    if ids.len() > c.max_len() {
        return Err(Error::Other(format!(
            "sequence {n} has {} tokens; the model has positions for {}",
            ids.len(),
            c.max_len()
        )));
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(Error::Other(format!("token id {id} is outside the vocabulary of {}", c.vocab_size)));
    }
    Ok(())
}

/// Appends word + position embedding rows of one (checked) sequence to `x`.
fn push_embeddings(x: &mut Vec<f32>, h: usize, word: &[f32], position: &[f32], ids: &[u32]) {
    for (&id, pos) in ids.iter().zip(position_ids(ids)) {
        let w = &word[id as usize * h..(id as usize + 1) * h];
        let p = &position[pos * h..(pos + 1) * h];
        x.extend(w.iter().zip(p).map(|(a, b)| a + b));
    }
}

/// One post-LayerNorm MPNet block.
#[derive(Clone, Debug)]
pub struct MpnetLayer {
    /// `attention.attn.q`.
    pub q: Linear,
    /// `attention.attn.k`.
    pub k: Linear,
    /// `attention.attn.v`.
    pub v: Linear,
    /// `attention.attn.o`.
    pub o: Linear,
    /// `attention.LayerNorm`.
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
    /// The encoder's relative position bias (shared by all blocks).
    pub bias: Arc<RelativeBias>,
}

impl MpnetLayer {
    /// Loads the block whose Hugging Face names start with `base` (`encoder.layer.3`).
    pub fn load(
        src: &dyn TensorSource,
        path: &Path,
        base: &str,
        config: &MpnetConfig,
        bias: Arc<RelativeBias>,
    ) -> Result<MpnetLayer> {
        let (h, i, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let lin =
            |name: &str, out: usize, inp: usize| load_linear(src, path, &format!("{base}.{name}"), out, inp, true);
        Ok(MpnetLayer {
            q: lin("attention.attn.q", h, h)?,
            k: lin("attention.attn.k", h, h)?,
            v: lin("attention.attn.v", h, h)?,
            o: lin("attention.attn.o", h, h)?,
            attention_norm: load_layer_norm(src, path, &format!("{base}.attention.LayerNorm"), h, eps)?,
            intermediate: lin("intermediate.dense", i, h)?,
            output: lin("output.dense", h, i)?,
            output_norm: load_layer_norm(src, path, &format!("{base}.output.LayerNorm"), h, eps)?,
            attn: Attention::new(config.num_attention_heads, config.num_attention_heads, config.head_dim()),
            activation: config.hidden_act,
            bias,
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

    /// Stage 1: q/k/v of the block input `x` and each sequence's attention with the relative
    /// position bias: the input of the `o` projection.
    pub fn attention_context(&self, x: &[f32], lens: &[usize], par: Par) -> Vec<f32> {
        let rows = x.len() / self.q.inp;
        let q = self.q.forward_with(x, rows, par);
        let mut k = self.k.forward_with(x, rows, par);
        let mut v = self.v.forward_with(x, rows, par);
        let bias = |head: usize, len: usize, scores: &mut [f32]| self.bias.add_to(head, len, scores);
        self.attn.bidirectional_biased(&q, &mut k, &mut v, lens, Some(&bias))
    }

    /// Stage 2: `x ← LayerNorm(x + o(ctx))`.
    pub fn add_attention_output(&self, x: &mut [f32], ctx: &[f32], par: Par) {
        let a = self.o.forward_with(ctx, ctx.len() / self.o.inp, par);
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

/// The prefix of a checkpoint's tensor names: `mpnet.` (an `MPNetFor…` model) or none.
fn name_prefix(src: &dyn TensorSource) -> &'static str {
    if src.info("embeddings.word_embeddings.weight").is_none()
        && src.info("mpnet.embeddings.word_embeddings.weight").is_some()
    {
        "mpnet."
    } else {
        ""
    }
}

/// Loads the shared relative position bias under `prefix`.
fn load_bias(src: &dyn TensorSource, path: &Path, prefix: &str, heads: usize) -> Result<RelativeBias> {
    let table =
        load_checked(src, path, &format!("{prefix}encoder.relative_attention_bias.weight"), &[NUM_BUCKETS, heads])?;
    Ok(RelativeBias::new(table, heads))
}

/// MPNet weights and the token-level forward pass.
#[derive(Clone, Debug)]
pub struct MpnetEncoder {
    /// Hyper-parameters.
    pub config: MpnetConfig,
    /// `[vocab, hidden]`.
    pub word_embeddings: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Vec<f32>,
    /// `embeddings.LayerNorm`.
    pub embeddings_norm: LayerNorm,
    /// `encoder.relative_attention_bias`, shared by the blocks.
    pub bias: Arc<RelativeBias>,
    /// The blocks, in order.
    pub layers: Vec<MpnetLayer>,
}

impl MpnetEncoder {
    /// Reads the weights (Hugging Face names, optionally under `mpnet.`) from `src`; `path`
    /// names the checkpoint in error messages.
    pub fn load(config: MpnetConfig, src: &dyn TensorSource, path: &Path) -> Result<Self> {
        let prefix = name_prefix(src);
        let h = config.hidden_size;
        let t = |name: &str, shape: &[usize]| load_checked(src, path, &format!("{prefix}{name}"), shape);
        let word_embeddings = t("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position_embeddings = t("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
        let embeddings_norm =
            load_layer_norm(src, path, &format!("{prefix}embeddings.LayerNorm"), h, config.layer_norm_eps)?;
        let bias = Arc::new(load_bias(src, path, prefix, config.num_attention_heads)?);
        let layers = (0..config.num_hidden_layers)
            .map(|n| MpnetLayer::load(src, path, &format!("{prefix}encoder.layer.{n}"), &config, bias.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(MpnetEncoder { config, word_embeddings, position_embeddings, embeddings_norm, bias, layers })
    }

    /// Runs a batch of sequences and returns the final hidden states, packed: the rows of
    /// sequence 0, then those of sequence 1, …, each row `hidden_size` wide.
    pub fn forward(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        self.forward_with(seqs, Par::rayon(0))
    }

    /// As [`MpnetEncoder::forward`], with the GEMMs' parallelism given.
    pub fn forward_with(&self, seqs: &[Tokens], par: Par) -> Result<Vec<f32>> {
        let mut x = self.embed_tokens(seqs)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
        for layer in &self.layers {
            layer.forward(&mut x, &lens, par);
        }
        Ok(x)
    }

    /// Word + position embeddings followed by LayerNorm, packed as in `forward` (token
    /// types, if the tokenizer gives any, are ignored: MPNet has none).
    pub fn embed_tokens(&self, seqs: &[Tokens]) -> Result<Vec<f32>> {
        let c = &self.config;
        let h = c.hidden_size;
        let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        for (n, s) in seqs.iter().enumerate() {
            check_sequence(c, n, &s.ids)?;
            push_embeddings(&mut x, h, &self.word_embeddings, &self.position_embeddings, &s.ids);
        }
        self.embeddings_norm.forward_in_place(&mut x);
        Ok(x)
    }
}

// ---- sentence-transformers settings ------------------------------------------------------
// The same files and rules as `bert.rs` reads (modules.json, 1_Pooling/config.json,
// sentence_bert_config.json).

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

/// Pooling and normalisation as modules.json (+ the Pooling module's config.json) say; mean
/// pooling and normalisation when there is no modules.json.
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
        match ty.rsplit('.').next().unwrap_or(ty) {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("1_Pooling");
                pooling = Some(read_pooling_config(&dir.join(sub).join("config.json"), hidden_size)?);
            }
            _ => {
                return Err(config_err(&modules_path, "type", format!("unsupported sentence-transformers module {ty}")))
            }
        }
    }
    Ok((pooling.unwrap_or_else(|| vec![PoolingMode::Mean]), normalize))
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

/// A sentence-transformers MPNet model: tokenizer, encoder, pooling and normalisation.
pub struct Mpnet {
    /// The transformer.
    pub encoder: MpnetEncoder,
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

impl Mpnet {
    /// Builds the sentence model from a directory holding tokenizer.json (and optionally
    /// sentence_bert_config.json, modules.json, 1_Pooling/config.json), the parsed
    /// config.json, and the weights in `src`.
    pub fn load(dir: &Path, config_json: &Value, src: &dyn TensorSource) -> Result<Self> {
        let config = MpnetConfig::from_json(config_json, &dir.join("config.json"))?;
        let encoder = MpnetEncoder::load(config, src, dir)?;
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
        let hf = HfModel::open(dir)?;
        Self::load(hf.dir(), hf.config(), &hf)
    }

    /// Builds the sentence model from an opened checkpoint (Hugging Face directories only).
    pub fn from_model(model: &ModelFile) -> Result<Self> {
        match model {
            ModelFile::Hf(hf) => Self::load(hf.dir(), hf.config(), hf),
            ModelFile::Gguf(g) => Err(Error::corrupt(
                g.path(),
                "MPNet encoders are read from Hugging Face directories (config.json, model.safetensors, tokenizer.json), not GGUF",
            )),
        }
    }

    /// Joins an encoder with a tokenizer, reading the sentence-transformers settings from
    /// `dir` (all optional there: the longest sequence the positions hold, mean pooling, L2
    /// normalisation).
    pub fn from_parts(encoder: MpnetEncoder, mut tokenizer: tokenizers::Tokenizer, dir: &Path) -> Result<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > encoder.config.vocab_size {
            return Err(Error::Tokenizer(format!(
                "{}: {vocab} tokens, but the model's vocab_size is {}",
                dir.join("tokenizer.json").display(),
                encoder.config.vocab_size
            )));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let mut max_seq_length = encoder.config.max_len();
        let mut lowercase = false;
        if let Some(st) = read_json_if_exists(&st_path)? {
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
        let max_seq_length = max_seq_length.min(encoder.config.max_len());
        let (pooling, normalize) = read_sentence_modules(dir, encoder.config.hidden_size)?;
        // all-mpnet-base-v2's tokenizer.json pads to and truncates at 128: we run packed and
        // truncate at sentence-transformers' max_seq_length (384).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Mpnet { encoder, pooling, normalize, max_seq_length, lowercase, tokenizer })
    }

    /// Length of a sentence vector.
    pub fn dim(&self) -> usize {
        self.encoder.config.hidden_size * self.pooling.len()
    }

    /// Token ids of each text, with the special tokens the tokenizer's post-processor adds
    /// (`<s>` … `</s>`), truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        let inputs: Vec<String> =
            texts.iter().map(|t| if self.lowercase { t.to_lowercase() } else { t.to_string() }).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        encodings
            .into_iter()
            .map(|e| {
                let ids = e.get_ids().to_vec();
                if ids.is_empty() {
                    return Err(Error::Tokenizer("a text produced no tokens".into()));
                }
                let type_ids = vec![0; ids.len()];
                Ok(Tokens { ids, type_ids })
            })
            .collect()
    }

    /// Pooled sentence vectors before normalisation, in input order.
    pub fn pooled(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenize(texts)?;
        self.pooled_tokens(&tokens, progress)
    }

    /// As [`Mpnet::pooled`], from tokens: batches of similar length (longest first) of up to
    /// 4096 tokens, several side by side with single-threaded GEMMs (as `bert.rs` runs them);
    /// `progress(done, total)` after each group of batches.
    pub fn pooled_tokens(&self, tokens: &[Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let h = self.encoder.config.hidden_size;
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

    /// As [`Mpnet::embed`], reporting `(done, total)` after each batch.
    pub fn embed_with_progress(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let mut v = self.pooled(texts, progress)?;
        if self.normalize {
            v.iter_mut().for_each(|e| l2_normalize(e));
        }
        Ok(v)
    }
}

// ---- the MPNet family as an Arch ---------------------------------------------------------

/// A block's tensors: (canonical name inside the block, Hugging Face name inside
/// `encoder.layer.N`). The canonical names are BERT's in llama.cpp's spelling (the blocks are
/// BERT's), so recipes written for one encoder fit the other.
const BLOCK_NAMES: [(&str, &str); 8] = [
    ("attn_q", "attention.attn.q"),
    ("attn_k", "attention.attn.k"),
    ("attn_v", "attention.attn.v"),
    ("attn_output", "attention.attn.o"),
    ("attn_output_norm", "attention.LayerNorm"),
    ("ffn_up", "intermediate.dense"),
    ("ffn_down", "output.dense"),
    ("layer_output_norm", "output.LayerNorm"),
];

/// Canonical name of the shared relative position bias (llama.cpp's T5 calls its per-block
/// tables `attn_rel_b`; MPNet has one, outside the blocks).
pub const REL_BIAS: &str = "attn_rel_b.weight";

/// (canonical, Hugging Face name without prefix) of every tensor an MPNet checkpoint with
/// `n_layer` blocks can hold.
fn canonical_pairs(n_layer: usize) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("token_embd.weight".into(), "embeddings.word_embeddings.weight".into()),
        ("position_embd.weight".into(), "embeddings.position_embeddings.weight".into()),
        (REL_BIAS.into(), "encoder.relative_attention_bias.weight".into()),
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
    // Sentence embeddings do not use the pooler; it is kept so that a written directory is
    // still a complete `MPNetModel`.
    both("pooler.dense", "pooler.dense");
    v
}

/// MPNet's linear groups, in true-sequential order: BERT's, for the same post-LN block.
///
/// As for BERT, no group records a norm a per-channel scale could fold into (a post-LN
/// LayerNorm's output is also the residual), and GELU is not positively homogeneous; only the
/// attention output's input can be rescaled through `attn_v`'s rows (attention, relative
/// bias included, is linear in the values).
pub const GROUPS: [LinearGroup; 4] = [
    LinearGroup { input: "block_input", linears: &["attn_q", "attn_k", "attn_v"], norm: None, producer: None },
    LinearGroup { input: "attention", linears: &["attn_output"], norm: None, producer: Some("attn_v") },
    LinearGroup { input: "attn_output_norm", linears: &["ffn_up"], norm: None, producer: None },
    LinearGroup { input: "activation", linears: &["ffn_down"], norm: None, producer: None },
];

/// An MPNet block as the generic pipeline runs it (see [`super::Block`]): the residual stream
/// `st.x` is the block input, then the attention LayerNorm's output, then the block output.
pub struct MpnetBlock {
    /// The weights.
    pub layer: MpnetLayer,
    index: usize,
}

impl MpnetBlock {
    /// Block `index` made of `layer`.
    pub fn new(layer: MpnetLayer, index: usize) -> MpnetBlock {
        MpnetBlock { layer, index }
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

impl super::Block for MpnetBlock {
    fn groups(&self) -> &'static [LinearGroup] {
        &GROUPS
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        let l = &self.layer;
        Some(match name {
            "attn_q" => &l.q,
            "attn_k" => &l.k,
            "attn_v" => &l.v,
            "attn_output" => &l.o,
            "ffn_up" => &l.intermediate,
            "ffn_down" => &l.output,
            _ => return None,
        })
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let l = &mut self.layer;
        Some(match name {
            "attn_q" => &mut l.q,
            "attn_k" => &mut l.k,
            "attn_v" => &mut l.v,
            "attn_output" => &mut l.o,
            "ffn_up" => &mut l.intermediate,
            "ffn_down" => &mut l.output,
            _ => return None,
        })
    }
    /// None: a post-LN LayerNorm cannot take a scale (see [`GROUPS`]).
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
                let n_seq = input.len() / self.layer.q.inp / st.seq_len.max(1);
                st.carry = self.layer.attention_context(&input, &vec![st.seq_len; n_seq], par);
            }
            1 => self.layer.add_attention_output(st.x, &input, par),
            2 => st.carry = self.layer.ffn_activation(&input, par),
            _ => self.layer.add_ffn_output(st.x, &input, par),
        }
    }
}

/// The tokens the tokenizer in `dir` frames a single sequence with (`<s>`, `</s>`), read from
/// its post-processor; `None` without tokenizer.json or without such framing.
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

/// The MPNet family as an [`super::Arch`]: a Hugging Face `MPNetModel` checkpoint (names
/// optionally under `mpnet.`), canonical names in llama.cpp's BERT spelling.
pub struct MpnetArch<'a> {
    hf: &'a HfModel,
    cfg: Arc<MpnetConfig>,
    prefix: &'static str,
    /// (canonical, source) names of every tensor, in the checkpoint's order.
    names: Vec<(String, String)>,
    frame: Option<(u32, u32)>,
    bias: Arc<RelativeBias>,
}

impl<'a> MpnetArch<'a> {
    /// The architecture of an MPNet checkpoint (Hugging Face directories only).
    pub fn new(file: &'a ModelFile) -> Result<MpnetArch<'a>> {
        let hf = match file {
            ModelFile::Hf(h) => h,
            ModelFile::Gguf(g) => {
                return Err(Error::corrupt(
                    g.path(),
                    "MPNet encoders are read from Hugging Face directories (config.json, model.safetensors, tokenizer.json), not GGUF",
                ))
            }
        };
        let cfg = MpnetConfig::from_json(hf.config(), &hf.dir().join("config.json"))?;
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
                        "not a tensor of an MPNet encoder with {} blocks (quantsmith quantizes MPNetModel checkpoints)",
                        cfg.num_hidden_layers
                    ),
                    })
                }
            }
        }
        let bias = Arc::new(load_bias(src, hf.dir(), prefix, cfg.num_attention_heads)?);
        let frame = special_frame(hf.dir())?;
        Ok(MpnetArch { hf, cfg: Arc::new(cfg), prefix, names, frame, bias })
    }

    /// The configuration.
    pub fn config(&self) -> &MpnetConfig {
        &self.cfg
    }

    /// The shape a tensor outside the blocks must have.
    fn global_shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.cfg;
        let h = c.hidden_size;
        Some(match name {
            "token_embd.weight" => vec![c.vocab_size, h],
            "position_embd.weight" => vec![c.max_position_embeddings, h],
            REL_BIAS => vec![NUM_BUCKETS, c.num_attention_heads],
            "pooler.dense.weight" => vec![h, h],
            "token_embd_norm.weight" | "token_embd_norm.bias" | "pooler.dense.bias" => vec![h],
            _ => return None,
        })
    }
}

impl super::Arch for MpnetArch<'_> {
    fn family(&self) -> &str {
        "mpnet"
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
        let layer = MpnetLayer::load(self.hf, self.hf.dir(), &base, &self.cfg, self.bias.clone())?;
        Ok(Box::new(MpnetBlock::new(layer, i)))
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
        for name in
            ["token_embd.weight", "position_embd.weight", REL_BIAS, "token_embd_norm.weight", "token_embd_norm.bias"]
        {
            if !g.tensors.contains_key(name) {
                return Err(missing(path, &self.hf_name(name)));
            }
        }
        Ok(g)
    }
    /// Embeddings of calibration windows of `seq_len` tokens, each framed as the encoder sees
    /// every input: `<s>` first, `</s>` last (the calibration tokenizer already starts a
    /// window with `<s>`, the BOS its post-processor adds), positions from 2 as for any
    /// sentence. The frame tokens carry the largest activations of the residual stream, so a
    /// window without them would calibrate on inputs the model never meets. Windows longer
    /// than the position table holds are refused.
    fn embed(&self, globals: &Globals, tokens: &[u32], seq_len: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let path = self.hf.dir();
        if seq_len < 2 || seq_len > c.max_len() {
            return Err(Error::Other(format!(
                "{}: calibration windows of {seq_len} tokens do not fit the model's positions (use 2 to {} tokens)",
                path.display(),
                c.max_len()
            )));
        }
        if tokens.len() % seq_len != 0 {
            return Err(Error::Other(format!("{} tokens are not whole windows of {seq_len}", tokens.len())));
        }
        let get = |name: &str| globals.get(name).ok_or_else(|| missing(path, name));
        let (word, position) = (get("token_embd.weight")?, get("position_embd.weight")?);
        let norm = LayerNorm {
            weight: get("token_embd_norm.weight")?.to_vec(),
            bias: get("token_embd_norm.bias")?.to_vec(),
            eps: c.layer_norm_eps,
        };
        let h = c.hidden_size;
        let mut ids = vec![0u32; seq_len];
        let mut x = Vec::with_capacity(tokens.len() * h);
        for (n, w) in tokens.chunks_exact(seq_len).enumerate() {
            ids.copy_from_slice(w);
            if let Some((cls, sep)) = self.frame {
                ids[0] = cls;
                ids[seq_len - 1] = sep;
            }
            check_sequence(c, n, &ids)
                .map_err(|e| Error::Other(format!("{}: calibration window {e}", path.display())))?;
            push_embeddings(&mut x, h, word, position, &ids);
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
    /// The checkpoint's own name: MPNet checkpoints are Hugging Face ones.
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
    fn buckets_match_transformers() {
        // Where transformers' relative_position_bucket (torch 2.15, f32 logarithm) changes
        // value, from relative position -600 up to 600: (first relative position, bucket).
        let steps: [(i64, usize); 31] = [
            (-600, 15),
            (-90, 14),
            (-63, 13),
            (-45, 12),
            (-31, 11),
            (-22, 10),
            (-15, 9),
            (-11, 8),
            (-7, 7),
            (-6, 6),
            (-5, 5),
            (-4, 4),
            (-3, 3),
            (-2, 2),
            (-1, 1),
            (0, 0),
            (1, 17),
            (2, 18),
            (3, 19),
            (4, 20),
            (5, 21),
            (6, 22),
            (7, 23),
            (8, 24),
            (12, 25),
            (16, 26),
            (23, 27),
            (32, 28),
            (46, 29),
            (64, 30),
            (91, 31),
        ];
        let mut k = 0;
        for r in -600i64..=600 {
            if k + 1 < steps.len() && r == steps[k + 1].0 {
                k += 1;
            }
            assert_eq!(relative_position_bucket(r), steps[k].1, "relative position {r}");
        }
    }

    #[test]
    fn bias_is_added_by_offset() {
        let heads = 2;
        let table: Vec<f32> = (0..NUM_BUCKETS * heads).map(|i| i as f32).collect();
        let bias = RelativeBias::new(table.clone(), heads);
        let len = 20;
        let mut s = vec![0f32; len * len];
        bias.add_to(1, len, &mut s);
        for i in 0..len {
            for j in 0..len {
                let want = table[relative_position_bucket(j as i64 - i as i64) * heads + 1];
                assert_eq!(s[i * len + j], want, "query {i}, key {j}");
            }
        }
        // A single token sees itself at distance 0.
        let mut one = vec![0.5f32];
        bias.add_to(0, 1, &mut one);
        assert_eq!(one[0], 0.5 + table[0]);
    }

    #[test]
    fn positions_skip_padding() {
        assert_eq!(position_ids(&[0, 5, 6, 2]), vec![2, 3, 4, 5]);
        assert_eq!(position_ids(&[0, 1, 6, 1, 2]), vec![2, 1, 3, 1, 4]);
    }

    #[test]
    fn config_errors_name_the_key() {
        let p = Path::new("config.json");
        let good = serde_json::json!({
            "model_type": "mpnet", "hidden_act": "gelu", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 1, "intermediate_size": 16, "max_position_embeddings": 10, "vocab_size": 30,
            "relative_attention_num_buckets": 32, "layer_norm_eps": 1e-5
        });
        let c = MpnetConfig::from_json(&good, p).unwrap();
        assert_eq!((c.max_len(), c.head_dim()), (8, 4));
        let bad = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            match MpnetConfig::from_json(&v, p) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        };
        bad("relative_attention_num_buckets", serde_json::json!(64));
        bad("model_type", serde_json::json!("bert"));
        bad("hidden_act", serde_json::json!("relu"));
        bad("max_position_embeddings", serde_json::json!(2));
        bad("num_attention_heads", serde_json::json!(3));
    }
}
