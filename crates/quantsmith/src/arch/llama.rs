//! The Llama family — Llama, SmolLM2, Mistral, Qwen2 — as one decoder configured by
//! [`LlamaConfig`]: pre-RMSNorm blocks, grouped-query attention with RoPE, SwiGLU MLP.
//! Qwen2 differs only by q/k/v biases and Mistral only by its name.
//!
//! Blocks are loaded and run one at a time ([`Block::load`], [`Block::forward`]) so the
//! quantization pipeline can stream a model block by block.

use std::path::{Path, PathBuf};

use super::layers::{
    add_assign, load_checked, load_checked_weights, load_linear, missing, swiglu, times_transposed, Attention, Linear,
};
pub use super::layers::{rms_norm, RopeLayout, RopeTable};
use crate::io::gguf::GgufFile;
use crate::io::hf::HfModel;
use crate::tensor::{TensorSource, Weights};
use crate::{Error, Result};

/// Which naming convention a checkpoint uses for its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `blk.N.attn_q.weight`, `token_embd.weight`, ...
    Gguf,
    /// `model.layers.N.self_attn.q_proj.weight`, `model.embed_tokens.weight`, ...
    Hf,
}

/// The linear layers of a block, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearRole {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl LinearRole {
    /// Every role, in the order a block runs them.
    pub const ALL: [LinearRole; 7] = [
        LinearRole::Q,
        LinearRole::K,
        LinearRole::V,
        LinearRole::O,
        LinearRole::Gate,
        LinearRole::Up,
        LinearRole::Down,
    ];
}

impl Naming {
    /// Name of the token embedding.
    pub fn embed(self) -> &'static str {
        match self {
            Naming::Gguf => "token_embd.weight",
            Naming::Hf => "model.embed_tokens.weight",
        }
    }
    /// Name of the final norm.
    pub fn out_norm(self) -> &'static str {
        match self {
            Naming::Gguf => "output_norm.weight",
            Naming::Hf => "model.norm.weight",
        }
    }
    /// Name of the output head (absent when tied to the embedding).
    pub fn head(self) -> &'static str {
        match self {
            Naming::Gguf => "output.weight",
            Naming::Hf => "lm_head.weight",
        }
    }
    /// Name of block `i`'s attention norm.
    pub fn attn_norm(self, i: usize) -> String {
        match self {
            Naming::Gguf => format!("blk.{i}.attn_norm.weight"),
            Naming::Hf => format!("model.layers.{i}.input_layernorm.weight"),
        }
    }
    /// Name of block `i`'s MLP norm.
    pub fn ffn_norm(self, i: usize) -> String {
        match self {
            Naming::Gguf => format!("blk.{i}.ffn_norm.weight"),
            Naming::Hf => format!("model.layers.{i}.post_attention_layernorm.weight"),
        }
    }
    /// Name of block `i`'s linear layer `role`, without the `.weight` / `.bias` suffix.
    pub fn linear(self, i: usize, role: LinearRole) -> String {
        use LinearRole::*;
        match self {
            Naming::Gguf => {
                let r = match role {
                    Q => "attn_q",
                    K => "attn_k",
                    V => "attn_v",
                    O => "attn_output",
                    Gate => "ffn_gate",
                    Up => "ffn_up",
                    Down => "ffn_down",
                };
                format!("blk.{i}.{r}")
            }
            Naming::Hf => {
                let r = match role {
                    Q => "self_attn.q_proj",
                    K => "self_attn.k_proj",
                    V => "self_attn.v_proj",
                    O => "self_attn.o_proj",
                    Gate => "mlp.gate_proj",
                    Up => "mlp.up_proj",
                    Down => "mlp.down_proj",
                };
                format!("model.layers.{i}.{r}")
            }
        }
    }
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Family name as the checkpoint gives it (`llama`, `qwen2`, `mistral`).
    pub arch: String,
    /// Number of blocks.
    pub n_layer: usize,
    /// Residual width.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP hidden width.
    pub d_ff: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Pairing of q/k rows for RoPE.
    pub rope: RopeLayout,
    /// Whether q/k/v have biases (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Whether the attention output projection has a bias (Llama with `attention_bias`; a GGUF
    /// file that has `attn_output.bias`, as a bias-corrected quantization writes).
    pub o_bias: bool,
    /// Whether gate/up/down have biases (Llama's `mlp_bias`; GGUF's optional `ffn_*.bias`).
    pub mlp_bias: bool,
    /// Tensor naming convention of the checkpoint.
    pub naming: Naming,
    /// Context length the model was trained for (`context_length`, `max_position_embeddings`).
    pub n_ctx: Option<usize>,
    /// What runs between the weights (activation / KV quantization, online rotations).
    pub runtime: super::runtime::Runtime,
}

impl LlamaConfig {
    /// Reads the configuration from a GGUF file's `{arch}.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope = match arch.as_str() {
            "llama" | "mistral" => RopeLayout::Interleaved,
            "qwen2" => RopeLayout::Halves,
            other => {
                return Err(Error::Config {
                    path: g.path().to_path_buf(),
                    key: "general.architecture".into(),
                    msg: format!("`{other}` is not a Llama-family decoder (llama, mistral, qwen2)"),
                })
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let n_head = g.get_u32(&k("attention.head_count"))? as usize;
        let d_model = g.get_u32(&k("embedding_length"))? as usize;
        let n_head_kv = g.opt_u32(&k("attention.head_count_kv"))?.map(|v| v as usize).unwrap_or(n_head);
        let head_dim = match g.opt_u32(&k("attention.key_length"))? {
            Some(v) => v as usize,
            None => d_model / n_head.max(1),
        };
        let embed = g.info(Naming::Gguf.embed()).ok_or_else(|| missing(g.path(), Naming::Gguf.embed()))?;
        let cfg = LlamaConfig {
            n_layer: g.get_u32(&k("block_count"))? as usize,
            d_model,
            n_head,
            n_head_kv,
            head_dim,
            d_ff: g.get_u32(&k("feed_forward_length"))? as usize,
            vocab: embed.shape[0],
            rope_theta: g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10000.0) as f64,
            rms_eps: g.get_f32(&k("attention.layer_norm_rms_epsilon"))?,
            rope,
            qkv_bias: g.info("blk.0.attn_q.bias").is_some(),
            o_bias: g.info("blk.0.attn_output.bias").is_some(),
            mlp_bias: g.info("blk.0.ffn_down.bias").is_some(),
            naming: Naming::Gguf,
            n_ctx: g.opt_u32(&k("context_length"))?.map(|v| v as usize),
            arch: arch.clone(),
            runtime: Default::default(),
        };
        cfg.validate(g.path(), &|f| k(gguf_key(f)))?;
        if let Some(rd) = g.opt_u32(&k("rope.dimension_count"))? {
            if rd as usize != cfg.head_dim {
                return Err(Error::Config {
                    path: g.path().to_path_buf(),
                    key: k("rope.dimension_count"),
                    msg: format!("partial rotary embeddings ({rd} of {}) are not supported", cfg.head_dim),
                });
            }
        }
        // Blocks past `block_count` would be silently ignored: a file that has them is not
        // what its metadata says.
        if let Some(t) =
            g.gguf_tensors().iter().find(|t| block_index(&t.name, "blk.").is_some_and(|b| b >= cfg.n_layer))
        {
            return Err(Error::Config {
                path: g.path().to_path_buf(),
                key: k("block_count"),
                msg: format!("is {}, but the file has tensor `{}` of a block past it", cfg.n_layer, t.name),
            });
        }
        Ok(cfg)
    }

    /// Reads the configuration from a Hugging Face `config.json`.
    pub fn from_hf(m: &HfModel) -> Result<LlamaConfig> {
        let path = m.dir().join("config.json");
        let c = m.config();
        let err = |key: &str, msg: String| Error::Config { path: path.clone(), key: key.into(), msg };
        let get_usize = |key: &str| -> Result<usize> {
            c.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| err(key, "missing or not a non-negative integer".into()))
        };
        let arch = c
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("model_type", "missing".into()))?
            .to_string();
        let flag = |key: &str| c.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        // transformers' Llama gives q/k/v *and* o a bias under `attention_bias`, and gate/up/
        // down one under `mlp_bias`; Qwen2 has q/k/v biases only.
        let (qkv_bias, o_bias, mlp_bias) = match arch.as_str() {
            "llama" => (flag("attention_bias"), flag("attention_bias"), flag("mlp_bias")),
            "mistral" => (flag("attention_bias"), false, false),
            "qwen2" => (true, false, false),
            other => {
                return Err(err(
                    "model_type",
                    format!("`{other}` is not a Llama-family decoder (llama, mistral, qwen2)"),
                ))
            }
        };
        // RoPE. transformers <= 4 writes `rope_theta`, `rope_scaling` and
        // `partial_rotary_factor` at the top level; transformers 5 moves them into
        // `rope_parameters` (`rope_theta`, `rope_type`, ...). Only plain, full-width RoPE is
        // implemented: any scaling type or partial rotation is refused by its key, never run
        // as plain RoPE.
        let num = |key: &str, v: &serde_json::Value| -> Result<f64> {
            v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| err(key, format!("expected a number, found {v}")))
        };
        let object = |key: &str| -> Result<Option<&serde_json::Map<String, serde_json::Value>>> {
            match c.get(key) {
                None => Ok(None),
                Some(v) if v.is_null() => Ok(None),
                Some(v) => v.as_object().map(Some).ok_or_else(|| err(key, format!("expected an object, found {v}"))),
            }
        };
        let rope_parameters = object("rope_parameters")?;
        let rope_scaling = object("rope_scaling")?;
        for (section, obj) in [("rope_parameters", rope_parameters), ("rope_scaling", rope_scaling)] {
            let Some(obj) = obj else { continue };
            let mut typed = false;
            for field in ["rope_type", "type"] {
                let Some(v) = obj.get(field).filter(|v| !v.is_null()) else { continue };
                let key = format!("{section}.{field}");
                let ty = v.as_str().ok_or_else(|| err(&key, format!("expected a string, found {v}")))?;
                if ty != "default" {
                    return Err(err(
                        &key,
                        format!(
                            "RoPE scaling type `{ty}` is not implemented yet (only the default, unscaled RoPE is); \
                             running it as plain RoPE would give wrong results"
                        ),
                    ));
                }
                typed = true;
            }
            // Without a type, any scaling setting (factor, ...) cannot be identified; transformers
            // itself cannot build the rotary embedding then.
            let extra: Vec<&str> = obj
                .keys()
                .map(String::as_str)
                .filter(|k| !matches!(*k, "rope_type" | "type" | "rope_theta" | "partial_rotary_factor"))
                .collect();
            if !typed && !extra.is_empty() {
                return Err(err(
                    section,
                    format!("has no `rope_type`, so its RoPE scaling ({}) cannot be identified", extra.join(", ")),
                ));
            }
        }
        let mut theta: Option<(String, f64)> = None;
        for (key, v) in [
            ("rope_theta".to_string(), c.get("rope_theta")),
            ("rope_parameters.rope_theta".to_string(), rope_parameters.and_then(|o| o.get("rope_theta"))),
        ] {
            let Some(v) = v.filter(|v| !v.is_null()) else { continue };
            let t = num(&key, v)?;
            if t <= 0.0 {
                return Err(err(&key, format!("RoPE base {t} must be positive")));
            }
            if let Some((k0, t0)) = &theta {
                if *t0 != t {
                    return Err(err(&key, format!("{t} disagrees with `{k0}` = {t0}")));
                }
            }
            theta = Some((key, t));
        }
        // Neither spelling: transformers' default for these models.
        let rope_theta = theta.map(|(_, t)| t).unwrap_or(10000.0);
        for (key, v) in [
            ("partial_rotary_factor".to_string(), c.get("partial_rotary_factor")),
            (
                "rope_parameters.partial_rotary_factor".to_string(),
                rope_parameters.and_then(|o| o.get("partial_rotary_factor")),
            ),
        ] {
            let Some(v) = v.filter(|v| !v.is_null()) else { continue };
            let f = num(&key, v)?;
            if f != 1.0 {
                return Err(err(&key, format!("partial rotary embeddings (factor {f}) are not supported")));
            }
        }
        let d_model = get_usize("hidden_size")?;
        let n_head = get_usize("num_attention_heads")?;
        let head_dim = match c.get("head_dim").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => d_model / n_head.max(1),
        };
        let cfg = LlamaConfig {
            n_layer: get_usize("num_hidden_layers")?,
            d_model,
            n_head,
            n_head_kv: c.get("num_key_value_heads").and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(n_head),
            head_dim,
            d_ff: get_usize("intermediate_size")?,
            vocab: get_usize("vocab_size")?,
            rope_theta,
            rms_eps: c.get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6) as f32,
            rope: RopeLayout::Halves,
            qkv_bias,
            o_bias,
            mlp_bias,
            naming: Naming::Hf,
            n_ctx: c.get("max_position_embeddings").and_then(|v| v.as_u64()).map(|v| v as usize),
            arch,
            runtime: match c.get(super::runtime::RUNTIME_KEY) {
                Some(v) => super::runtime::Runtime::from_json(v, &path)?,
                None => Default::default(),
            },
        };
        cfg.runtime.validate(&LINEAR_NAMES)?;
        cfg.validate(&path, &|f| hf_key(f).to_string())?;
        if let Some(t) = m
            .file_entries()
            .into_iter()
            .map(|e| e.name.as_str())
            .find(|t| block_index(t, "model.layers.").is_some_and(|b| b >= cfg.n_layer))
        {
            return Err(err(
                "num_hidden_layers",
                format!("is {}, but the checkpoint has tensor `{t}` of a layer past it", cfg.n_layer),
            ));
        }
        Ok(cfg)
    }

    /// Checks the hyper-parameters; `key(field)` names a field as the checkpoint spells it
    /// (`head_count`, `head_count_kv`, `embedding_length`, `feed_forward_length`,
    /// `block_count`, `key_length`, `epsilon`, `rope_base`).
    fn validate(&self, path: &Path, key: &dyn Fn(&str) -> String) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Config { path: path.to_path_buf(), key: key(field), msg });
        for (field, v) in [
            ("head_count", self.n_head),
            ("embedding_length", self.d_model),
            ("feed_forward_length", self.d_ff),
            ("block_count", self.n_layer),
        ] {
            if v == 0 {
                return bad(field, "is 0: the model would have no weights there".into());
            }
            // Far past any real model, and past what the forward pass can index.
            if v > 1 << 20 {
                return bad(field, format!("{v} is absurdly large"));
            }
        }
        if self.vocab == 0 {
            return bad("embedding_length", "the token embedding has no rows".into());
        }
        if self.n_head_kv == 0 || self.n_head % self.n_head_kv != 0 {
            return bad(
                "head_count_kv",
                format!("{} query heads cannot be grouped over {} key/value heads", self.n_head, self.n_head_kv),
            );
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 || self.head_dim > 1 << 16 {
            return bad("key_length", format!("head width {} must be even, positive and sane", self.head_dim));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return bad("epsilon", format!("RMSNorm epsilon {} must be a small positive number", self.rms_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_base", format!("RoPE base {} must be a positive number", self.rope_theta));
        }
        Ok(())
    }
}

/// The GGUF key (after `{arch}.`) of a [`LlamaConfig::validate`] field.
fn gguf_key(field: &str) -> &str {
    match field {
        "head_count" => "attention.head_count",
        "head_count_kv" => "attention.head_count_kv",
        "key_length" => "attention.key_length",
        "epsilon" => "attention.layer_norm_rms_epsilon",
        "rope_base" => "rope.freq_base",
        f => f,
    }
}

/// The `config.json` key of a [`LlamaConfig::validate`] field.
fn hf_key(field: &str) -> &str {
    match field {
        "head_count" => "num_attention_heads",
        "head_count_kv" => "num_key_value_heads",
        "key_length" => "head_dim",
        "epsilon" => "rms_norm_eps",
        "rope_base" => "rope_theta",
        "embedding_length" => "hidden_size",
        "feed_forward_length" => "intermediate_size",
        "block_count" => "num_hidden_layers",
        f => f,
    }
}

/// The block number of a tensor named `{prefix}N.…`.
fn block_index(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// One decoder block's weights.
pub struct Block {
    /// Attention RMSNorm gain.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Attention output projection.
    pub o: Linear,
    /// MLP RMSNorm gain.
    pub ffn_norm: Vec<f32>,
    /// MLP gate projection.
    pub gate: Linear,
    /// MLP up projection.
    pub up: Linear,
    /// MLP down projection.
    pub down: Linear,
    /// Causal attention's shape, and its K/V hook.
    pub attn: Attention,
}

impl Block {
    /// Loads block `i` from `src`.
    pub fn load(src: &dyn TensorSource, path: &Path, cfg: &LlamaConfig, i: usize) -> Result<Block> {
        let n = cfg.naming;
        let d = cfg.d_model;
        let qd = cfg.n_head * cfg.head_dim;
        let kvd = cfg.n_head_kv * cfg.head_dim;
        let lin = |role: LinearRole, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            load_linear(src, path, &n.linear(i, role), out, inp, bias)
        };
        let mut b = Block {
            attn_norm: load_checked(src, path, &n.attn_norm(i), &[d])?,
            q: lin(LinearRole::Q, qd, d, cfg.qkv_bias)?,
            k: lin(LinearRole::K, kvd, d, cfg.qkv_bias)?,
            v: lin(LinearRole::V, kvd, d, cfg.qkv_bias)?,
            o: lin(LinearRole::O, d, qd, cfg.o_bias)?,
            ffn_norm: load_checked(src, path, &n.ffn_norm(i), &[d])?,
            gate: lin(LinearRole::Gate, cfg.d_ff, d, cfg.mlp_bias)?,
            up: lin(LinearRole::Up, cfg.d_ff, d, cfg.mlp_bias)?,
            down: lin(LinearRole::Down, d, cfg.d_ff, cfg.mlp_bias)?,
            attn: Attention::new(cfg.n_head, cfg.n_head_kv, cfg.head_dim),
        };
        b.install_runtime(&cfg.runtime, i)?;
        Ok(b)
    }

    /// Sets every linear's input hook and the attention's K/V hook as `rt` says (and clears
    /// them where it says nothing).
    pub fn install_runtime(&mut self, rt: &super::runtime::Runtime, index: usize) -> Result<()> {
        for (role, name) in LinearRole::ALL.into_iter().zip(LINEAR_NAMES) {
            let l = self.linear_mut(role);
            l.input_hook = rt.input_hook(index, name, l.inp)?;
        }
        self.attn.kv_hook = rt.kv_hook(self.attn.head_dim)?;
        self.attn.qk_rotation = rt.qk_rotation(self.attn.head_dim)?;
        Ok(())
    }

    /// The linear layer of `role`.
    pub fn linear(&self, role: LinearRole) -> &Linear {
        match role {
            LinearRole::Q => &self.q,
            LinearRole::K => &self.k,
            LinearRole::V => &self.v,
            LinearRole::O => &self.o,
            LinearRole::Gate => &self.gate,
            LinearRole::Up => &self.up,
            LinearRole::Down => &self.down,
        }
    }

    /// Mutable access to the linear layer of `role` (to swap in quantized weights).
    pub fn linear_mut(&mut self, role: LinearRole) -> &mut Linear {
        match role {
            LinearRole::Q => &mut self.q,
            LinearRole::K => &mut self.k,
            LinearRole::V => &mut self.v,
            LinearRole::O => &mut self.o,
            LinearRole::Gate => &mut self.gate,
            LinearRole::Up => &mut self.up,
            LinearRole::Down => &mut self.down,
        }
    }

    /// Runs the block in place over `x` = `n_seq` sequences of `seq_len` positions each,
    /// `[n_seq * seq_len, d_model]` row-major, causal within each sequence.
    pub fn forward(&self, cfg: &LlamaConfig, rope: &RopeTable, x: &mut [f32], seq_len: usize) {
        let h = self.attn_input(cfg, x);
        let attn = self.attention(cfg, rope, &h, seq_len);
        self.add_attn_output(x, &attn);
        let h = self.ffn_input(cfg, x);
        let act = self.mlp_activation(&h);
        self.add_mlp_output(x, &act);
    }

    /// Stage 1: the input of q/k/v, RMSNorm(x).
    pub fn attn_input(&self, cfg: &LlamaConfig, x: &[f32]) -> Vec<f32> {
        let mut h = vec![0f32; x.len()];
        rms_norm(x, &self.attn_norm, cfg.rms_eps, &mut h);
        h
    }

    /// Stage 2: q/k/v projections, RoPE and causal attention: the input of `o`.
    pub fn attention(&self, cfg: &LlamaConfig, rope: &RopeTable, h: &[f32], seq_len: usize) -> Vec<f32> {
        let rows = h.len() / cfg.d_model;
        let mut q = self.q.forward(h, rows);
        let mut k = self.k.forward(h, rows);
        let mut v = self.v.forward(h, rows);
        rope.apply(&mut q, cfg.n_head, seq_len);
        rope.apply(&mut k, cfg.n_head_kv, seq_len);
        if let Some(r) = &self.attn.qk_rotation {
            r.apply_rows(&mut q);
            r.apply_rows(&mut k);
        }
        self.attn.causal(&q, &mut k, &mut v, seq_len)
    }

    /// Stage 3: the residual update x += o(attn).
    pub fn add_attn_output(&self, x: &mut [f32], attn: &[f32]) {
        let out = self.o.forward(attn, attn.len() / self.o.inp);
        add_assign(x, &out);
    }

    /// Stage 4: the input of gate/up, RMSNorm(x).
    pub fn ffn_input(&self, cfg: &LlamaConfig, x: &[f32]) -> Vec<f32> {
        let mut h = vec![0f32; x.len()];
        rms_norm(x, &self.ffn_norm, cfg.rms_eps, &mut h);
        h
    }

    /// Stage 5: SiLU(gate(h)) · up(h): the input of `down`.
    pub fn mlp_activation(&self, h: &[f32]) -> Vec<f32> {
        let rows = h.len() / self.gate.inp;
        let mut g = self.gate.forward(h, rows);
        let u = self.up.forward(h, rows);
        swiglu(&mut g, &u);
        g
    }

    /// Stage 6: the residual update x += down(act).
    pub fn add_mlp_output(&self, x: &mut [f32], act: &[f32]) {
        let out = self.down.forward(act, act.len() / self.down.inp);
        add_assign(x, &out);
    }
}

/// A whole Llama-family decoder held in memory as f32.
pub struct Llama {
    /// Hyper-parameters.
    pub cfg: LlamaConfig,
    /// Token embedding `[vocab, d_model]`.
    pub embed: Weights,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final RMSNorm gain.
    pub out_norm: Vec<f32>,
    /// Output head `[vocab, d_model]`; `None` when tied to the embedding.
    pub head: Option<Linear>,
    /// Where the weights came from.
    pub path: PathBuf,
}

impl Llama {
    /// Loads every tensor of a Llama-family decoder: weight matrices as [`Weights`] (in place
    /// or packed where the file allows), the rest as f32.
    pub fn load(src: &dyn TensorSource, path: &Path, cfg: LlamaConfig) -> Result<Llama> {
        let n = cfg.naming;
        let embed = load_checked_weights(src, path, n.embed(), &[cfg.vocab, cfg.d_model])?;
        let blocks = (0..cfg.n_layer).map(|i| Block::load(src, path, &cfg, i)).collect::<Result<Vec<_>>>()?;
        let out_norm = load_checked(src, path, n.out_norm(), &[cfg.d_model])?;
        let head = if src.info(n.head()).is_some() {
            let w = load_checked_weights(src, path, n.head(), &[cfg.vocab, cfg.d_model])?;
            Some(Linear::new(w, None, cfg.vocab, cfg.d_model))
        } else {
            None
        };
        Ok(Llama { cfg, embed, blocks, out_norm, head, path: path.to_path_buf() })
    }

    /// Embedding rows of `tokens`, `[tokens.len(), d_model]`.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.cfg.d_model;
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &t) in x.chunks_mut(d).zip(tokens) {
            let t = t as usize;
            if t >= self.cfg.vocab {
                return Err(Error::Other(format!(
                    "{}: token id {t} is outside the vocabulary ({})",
                    self.path.display(),
                    self.cfg.vocab
                )));
            }
            self.embed.row_into(t, row).map_err(|e| Error::Tensor {
                path: self.path.clone(),
                tensor: self.cfg.naming.embed().into(),
                msg: format!("cannot decode row {t}: {e}"),
            })?;
        }
        Ok(x)
    }

    /// A RoPE table long enough for `seq_len`.
    pub fn rope_table(&self, seq_len: usize) -> RopeTable {
        RopeTable::new(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope, seq_len)
    }

    /// Logits `[positions.len() * n_seq, vocab]` for `n_seq` sequences of `seq_len` tokens
    /// each (concatenated in `tokens`), at the given positions of every sequence.
    pub fn logits(&self, tokens: &[u32], seq_len: usize, positions: std::ops::Range<usize>) -> Result<Vec<f32>> {
        self.logits_observed(tokens, seq_len, positions, &|_| {})
    }

    /// As [`Llama::logits`], calling `after_block(i)` as each block finishes (progress).
    pub fn logits_observed(
        &self,
        tokens: &[u32],
        seq_len: usize,
        positions: std::ops::Range<usize>,
        after_block: &dyn Fn(usize),
    ) -> Result<Vec<f32>> {
        let rope = self.rope_table(seq_len);
        let mut x = self.embed_tokens(tokens)?;
        for (i, b) in self.blocks.iter().enumerate() {
            b.forward(&self.cfg, &rope, &mut x, seq_len);
            after_block(i);
        }
        Ok(self.head_logits(&x, seq_len, positions))
    }

    /// Final norm and output head over the selected positions of hidden states `x`.
    pub fn head_logits(&self, x: &[f32], seq_len: usize, positions: std::ops::Range<usize>) -> Vec<f32> {
        let d = self.cfg.d_model;
        let n_seq = x.len() / d / seq_len;
        let np = positions.len();
        let mut sel = Vec::with_capacity(n_seq * np * d);
        for s in 0..n_seq {
            let a = (s * seq_len + positions.start) * d;
            sel.extend_from_slice(&x[a..a + np * d]);
        }
        let mut h = vec![0f32; sel.len()];
        rms_norm(&sel, &self.out_norm, self.cfg.rms_eps, &mut h);
        let rows = n_seq * np;
        match &self.head {
            Some(head) => head.forward(&h, rows),
            None => {
                let mut out = vec![0f32; rows * self.cfg.vocab];
                let par = faer::Par::rayon(0);
                times_transposed(&h, rows, &self.embed, self.cfg.vocab, d, &mut out, faer::Accum::Replace, par);
                out
            }
        }
    }
}

/// The Llama family's linear groups, in true-sequential order.
pub const GROUPS: [super::LinearGroup; 4] = [
    super::LinearGroup {
        input: "attn_norm",
        linears: &["attn_q", "attn_k", "attn_v"],
        norm: Some("attn_norm"),
        producer: None,
    },
    super::LinearGroup { input: "attention", linears: &["attn_output"], norm: None, producer: Some("attn_v") },
    super::LinearGroup { input: "ffn_norm", linears: &["ffn_gate", "ffn_up"], norm: Some("ffn_norm"), producer: None },
    super::LinearGroup { input: "activation", linears: &["ffn_down"], norm: None, producer: Some("ffn_up") },
];

/// The block-local names of the linears, in [`LinearRole::ALL`]'s order.
pub const LINEAR_NAMES: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

fn role_of(name: &str) -> Option<LinearRole> {
    Some(match name {
        "attn_q" => LinearRole::Q,
        "attn_k" => LinearRole::K,
        "attn_v" => LinearRole::V,
        "attn_output" => LinearRole::O,
        "ffn_gate" => LinearRole::Gate,
        "ffn_up" => LinearRole::Up,
        "ffn_down" => LinearRole::Down,
        _ => return None,
    })
}

/// A Llama block as the generic pipeline runs it (see [`super::Block`]).
pub struct StagedBlock {
    /// The weights.
    pub block: Block,
    cfg: std::sync::Arc<LlamaConfig>,
    rope: std::sync::Arc<RopeTable>,
    index: usize,
}

impl super::Block for StagedBlock {
    fn groups(&self) -> &'static [super::LinearGroup] {
        &GROUPS
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        role_of(name).map(|r| self.block.linear(r))
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        role_of(name).map(|r| self.block.linear_mut(r))
    }
    fn norm_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        match name {
            "attn_norm" => Some(&mut self.block.attn_norm),
            "ffn_norm" => Some(&mut self.block.ffn_norm),
            _ => None,
        }
    }
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let i = self.index;
        let n = Naming::Gguf;
        let mut out = vec![(n.attn_norm(i), vec![self.cfg.d_model], self.block.attn_norm.as_slice())];
        for role in LinearRole::ALL {
            let l = self.block.linear(role);
            let base = n.linear(i, role);
            out.push((format!("{base}.weight"), vec![l.out, l.inp], &l.w[..]));
            if let Some(b) = &l.b {
                out.push((format!("{base}.bias"), vec![l.out], b.as_slice()));
            }
            if role == LinearRole::O {
                out.push((n.ffn_norm(i), vec![self.cfg.d_model], self.block.ffn_norm.as_slice()));
            }
        }
        out
    }
    fn weight_name(&self, linear: &str) -> String {
        format!("blk.{}.{linear}.weight", self.index)
    }
    fn set_attention_probe(&mut self, probe: Option<super::layers::AttnProbe>) -> bool {
        self.block.attn.probe = probe;
        true
    }
    fn rotation_map(&self) -> Option<super::RotationMap> {
        Some(super::RotationMap {
            writers: &["attn_output", "ffn_down"],
            value_output: Some(("attn_v", "attn_output")),
            head_dim: self.cfg.head_dim,
        })
    }
    fn group_input(&self, g: usize, st: &mut super::BlockState) -> Vec<f32> {
        match g {
            0 => self.block.attn_input(&self.cfg, st.x),
            2 => self.block.ffn_input(&self.cfg, st.x),
            _ => std::mem::take(&mut st.carry),
        }
    }
    fn advance(&self, g: usize, st: &mut super::BlockState, input: Vec<f32>) {
        match g {
            0 => st.carry = self.block.attention(&self.cfg, &self.rope, &input, st.seq_len),
            1 => self.block.add_attn_output(st.x, &input),
            2 => st.carry = self.block.mlp_activation(&input),
            _ => self.block.add_mlp_output(st.x, &input),
        }
    }
}

/// The Llama family as an [`super::Arch`]: canonical tensor names are GGUF's; a Hugging Face
/// checkpoint is read through its own names.
pub struct LlamaArch<'a> {
    file: &'a crate::io::ModelFile,
    cfg: std::sync::Arc<LlamaConfig>,
    /// (canonical, source) names of every tensor, in the checkpoint's order.
    names: Vec<(String, String)>,
}

impl<'a> LlamaArch<'a> {
    /// The architecture of a Llama-family checkpoint.
    pub fn new(file: &'a crate::io::ModelFile) -> Result<LlamaArch<'a>> {
        let cfg = match file {
            crate::io::ModelFile::Gguf(g) => LlamaConfig::from_gguf(g)?,
            crate::io::ModelFile::Hf(h) => LlamaConfig::from_hf(h)?,
        };
        let src = file.source();
        let pairs = canonical_pairs(&cfg);
        let by_source: std::collections::HashMap<&str, &str> =
            pairs.iter().map(|(c, s)| (s.as_str(), c.as_str())).collect();
        let mut names = Vec::new();
        for t in src.tensors() {
            match by_source.get(t.name.as_str()) {
                Some(c) => names.push((c.to_string(), t.name.clone())),
                // Rotary caches some HF exports carry are derived data, not weights.
                None if t.name.ends_with("rotary_emb.inv_freq") => {}
                None => {
                    return Err(Error::Tensor {
                        path: file.path().to_path_buf(),
                        tensor: t.name.clone(),
                        msg: format!("not a tensor of a {} model with this configuration", cfg.arch),
                    })
                }
            }
        }
        Ok(LlamaArch { file, cfg: std::sync::Arc::new(cfg), names })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

/// (GGUF name, checkpoint name) of every tensor a Llama-family model of `cfg` can hold.
fn canonical_pairs(cfg: &LlamaConfig) -> Vec<(String, String)> {
    let (g, s) = (Naming::Gguf, cfg.naming);
    let mut v = vec![
        (g.embed().to_string(), s.embed().to_string()),
        (g.out_norm().to_string(), s.out_norm().to_string()),
        (g.head().to_string(), s.head().to_string()),
    ];
    for i in 0..cfg.n_layer {
        v.push((g.attn_norm(i), s.attn_norm(i)));
        v.push((g.ffn_norm(i), s.ffn_norm(i)));
        for role in LinearRole::ALL {
            for suffix in ["weight", "bias"] {
                v.push((format!("{}.{suffix}", g.linear(i, role)), format!("{}.{suffix}", s.linear(i, role))));
            }
        }
    }
    v
}

impl super::Arch for LlamaArch<'_> {
    fn family(&self) -> &str {
        &self.cfg.arch
    }
    fn kind(&self) -> super::ModelKind {
        super::ModelKind::Decoder
    }
    fn n_blocks(&self) -> usize {
        self.cfg.n_layer
    }
    fn d_model(&self) -> usize {
        self.cfg.d_model
    }
    fn vocab(&self) -> usize {
        self.cfg.vocab
    }
    fn max_len(&self) -> Option<usize> {
        self.cfg.n_ctx.filter(|&n| n > 0)
    }
    fn load_block(&self, i: usize, max_len: usize) -> Result<Box<dyn super::Block>> {
        let block = Block::load(self.file.source(), self.file.path(), &self.cfg, i)?;
        let rope = RopeTable::new(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope, max_len.max(1));
        Ok(Box::new(StagedBlock { block, cfg: self.cfg.clone(), rope: std::sync::Arc::new(rope), index: i }))
    }
    fn load_globals(&self) -> Result<super::Globals> {
        let (src, path, n) = (self.file.source(), self.file.path(), self.cfg.naming);
        let (v, d) = (self.cfg.vocab, self.cfg.d_model);
        let mut g = super::Globals::default();
        g.tensors.insert(Naming::Gguf.embed().into(), (vec![v, d], load_checked(src, path, n.embed(), &[v, d])?));
        g.tensors.insert(Naming::Gguf.out_norm().into(), (vec![d], load_checked(src, path, n.out_norm(), &[d])?));
        if src.info(n.head()).is_some() {
            g.tensors.insert(Naming::Gguf.head().into(), (vec![v, d], load_checked(src, path, n.head(), &[v, d])?));
        }
        Ok(g)
    }
    fn embed(&self, globals: &super::Globals, tokens: &[u32], _seq_len: usize) -> Result<Vec<f32>> {
        let d = self.cfg.d_model;
        let e = globals.get(Naming::Gguf.embed()).ok_or_else(|| missing(self.file.path(), Naming::Gguf.embed()))?;
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &t) in x.chunks_mut(d).zip(tokens) {
            let t = t as usize;
            if t >= self.cfg.vocab {
                return Err(Error::Other(format!(
                    "{}: token id {t} is outside the embedding's {} rows (the tokenizer's vocabulary is larger than the model's)",
                    self.file.path().display(),
                    self.cfg.vocab
                )));
            }
            row.copy_from_slice(&e[t * d..(t + 1) * d]);
        }
        Ok(x)
    }
    fn head_weight(&self, globals: &super::Globals) -> Option<String> {
        let head = Naming::Gguf.head();
        Some(if globals.tensors.contains_key(head) { head } else { Naming::Gguf.embed() }.to_string())
    }
    fn head_tied(&self, globals: &super::Globals) -> bool {
        !globals.tensors.contains_key(Naming::Gguf.head())
    }
    fn head_input(&self, globals: &super::Globals, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        if let Some(norm) = globals.get(Naming::Gguf.out_norm()) {
            rms_norm(x, norm, self.cfg.rms_eps, &mut out);
        }
        out
    }
    fn tensor_names(&self) -> Vec<String> {
        self.names.iter().map(|(c, _)| c.clone()).collect()
    }
    fn source_name(&self, name: &str) -> String {
        self.names.iter().find(|(c, _)| c == name).map(|(_, s)| s.clone()).unwrap_or_else(|| name.to_string())
    }
    fn hf_name(&self, name: &str) -> String {
        let cfg = LlamaConfig { naming: Naming::Hf, ..(*self.cfg).clone() };
        canonical_pairs(&cfg).into_iter().find(|(c, _)| c == name).map(|(_, h)| h).unwrap_or_else(|| name.to_string())
    }
    fn qk_interleaved(&self) -> bool {
        self.cfg.rope == RopeLayout::Interleaved
    }
    fn gguf_qk_interleaved(&self) -> bool {
        matches!(self.cfg.arch.as_str(), "llama" | "mistral")
    }
    fn rotation_globals(&self) -> Option<super::RotationGlobals> {
        let g = Naming::Gguf;
        Some(super::RotationGlobals {
            embed: g.embed().into(),
            out_norm: g.out_norm().into(),
            head: g.head().into(),
            d_model: self.cfg.d_model,
            head_dim: self.cfg.head_dim,
            online: vec![("ffn_down", self.cfg.d_ff)],
        })
    }
    fn set_runtime(&mut self, rt: super::runtime::Runtime) -> Result<()> {
        rt.validate(&LINEAR_NAMES)?;
        // Every hook built once for the real widths, so a format that does not fit fails here.
        let c = &self.cfg;
        let qd = c.n_head * c.head_dim;
        for (name, inp) in
            LINEAR_NAMES.into_iter().zip([c.d_model, c.d_model, c.d_model, qd, c.d_model, c.d_model, c.d_ff])
        {
            rt.input_hook(0, name, inp)?;
        }
        rt.kv_hook(c.head_dim)?;
        rt.qk_rotation(c.head_dim)?;
        self.cfg = std::sync::Arc::new(LlamaConfig { runtime: rt, ..(*self.cfg).clone() });
        Ok(())
    }
    fn rope_heads(&self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix("blk.")?;
        let (_, local) = rest.split_once('.')?;
        match local {
            "attn_q.weight" | "attn_q.bias" => Some(self.cfg.n_head),
            "attn_k.weight" | "attn_k.bias" => Some(self.cfg.n_head_kv),
            _ => None,
        }
    }
}
