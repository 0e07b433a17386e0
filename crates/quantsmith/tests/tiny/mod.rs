//! A tiny random Llama-family decoder written as GGUF, with a byte-level BPE tokenizer in its
//! metadata: the whole pipeline runs on it in seconds, with no download.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use quantsmith::formats::ggml::GgmlType;
use quantsmith::io::{GgufArray, GgufValue, GgufWriter};

/// Blocks.
pub const N_LAYER: usize = 2;
/// Residual width (256: every ggml type fits).
pub const D: usize = 256;
/// Query heads.
pub const N_HEAD: usize = 4;
/// Key/value heads.
pub const N_KV: usize = 2;
/// Head width.
pub const HD: usize = D / N_HEAD;
/// MLP width.
pub const FF: usize = 512;
/// 256 byte tokens and a BOS.
pub const VOCAB: usize = 257;

/// Deterministic pseudo-random numbers (xorshift), scaled to ±scale.
pub struct Rng(pub u64);
impl Rng {
    /// `n` values in ±scale.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// GPT-2's byte-to-character map (the byte-level BPE alphabet).
pub fn byte_tokens() -> Vec<String> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut map = vec![0u32; 256];
    for &b in &printable {
        map[b as usize] = b;
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = 256 + n;
            n += 1;
        }
    }
    printable.clear();
    map.iter().map(|&c| char::from_u32(c).unwrap().to_string()).collect()
}

/// Options of the tiny model.
#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    /// `qwen2` (q/k/v biases, half-split RoPE) instead of `llama`.
    pub qwen: bool,
    /// Head tied to the embedding (no `output.weight`).
    pub tied: bool,
    /// Seed of the weights.
    pub seed: u64,
    /// Blocks ([`N_LAYER`] unless a test needs more).
    pub layers: usize,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny { qwen: false, tied: false, seed: 0x9E37_79B9_7F4A_7C15, layers: N_LAYER }
    }
}

impl Tiny {
    /// Writes the model as an f32 GGUF file at `path`.
    pub fn write_gguf(&self, path: &Path) {
        let arch = if self.qwen { "qwen2" } else { "llama" };
        let mut w = GgufWriter::new(path).unwrap();
        w.add_metadata("general.architecture", GgufValue::String(arch.into())).unwrap();
        w.add_metadata("general.name", GgufValue::String("tiny".into())).unwrap();
        for (k, v) in [
            ("block_count", self.layers),
            ("context_length", 512),
            ("embedding_length", D),
            ("feed_forward_length", FF),
            ("attention.head_count", N_HEAD),
            ("attention.head_count_kv", N_KV),
            ("rope.dimension_count", HD),
        ] {
            w.add_metadata(&format!("{arch}.{k}"), GgufValue::U32(v as u32)).unwrap();
        }
        w.add_metadata(&format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5)).unwrap();
        w.add_metadata(&format!("{arch}.rope.freq_base"), GgufValue::F32(10000.0)).unwrap();
        let mut tokens = byte_tokens();
        tokens.push("<s>".into());
        let mut types = vec![1i32; 256];
        types.push(3);
        w.add_metadata("tokenizer.ggml.model", GgufValue::String("gpt2".into())).unwrap();
        w.add_metadata("tokenizer.ggml.pre", GgufValue::String("gpt-2".into())).unwrap();
        w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens))).unwrap();
        w.add_metadata("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types))).unwrap();
        w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(vec![]))).unwrap();
        w.add_metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(256)).unwrap();
        w.add_metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(256)).unwrap();
        w.add_metadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)).unwrap();
        let mut r = Rng(self.seed);
        let mut put = |name: &str, shape: &[usize], v: Vec<f32>| {
            let ne: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.add_tensor(name, &ne, GgmlType::F32, &bytes).unwrap();
        };
        put("token_embd.weight", &[VOCAB, D], r.vec(VOCAB * D, 1.0));
        for i in 0..self.layers {
            let p = format!("blk.{i}");
            // Norm gains around 1, with a few large channels (activation outliers).
            let norm = |r: &mut Rng| {
                r.vec(D, 0.3)
                    .iter()
                    .enumerate()
                    .map(|(c, v)| 1.0 + v + if c % 37 == 0 { 3.0 } else { 0.0 })
                    .collect::<Vec<f32>>()
            };
            put(&format!("{p}.attn_norm.weight"), &[D], norm(&mut r));
            put(&format!("{p}.attn_q.weight"), &[N_HEAD * HD, D], r.vec(N_HEAD * HD * D, 0.12));
            put(&format!("{p}.attn_k.weight"), &[N_KV * HD, D], r.vec(N_KV * HD * D, 0.12));
            put(&format!("{p}.attn_v.weight"), &[N_KV * HD, D], r.vec(N_KV * HD * D, 0.1));
            if self.qwen {
                put(&format!("{p}.attn_q.bias"), &[N_HEAD * HD], r.vec(N_HEAD * HD, 0.2));
                put(&format!("{p}.attn_k.bias"), &[N_KV * HD], r.vec(N_KV * HD, 0.2));
                put(&format!("{p}.attn_v.bias"), &[N_KV * HD], r.vec(N_KV * HD, 0.2));
            }
            put(&format!("{p}.attn_output.weight"), &[D, N_HEAD * HD], r.vec(D * N_HEAD * HD, 0.08));
            put(&format!("{p}.ffn_norm.weight"), &[D], norm(&mut r));
            put(&format!("{p}.ffn_gate.weight"), &[FF, D], r.vec(FF * D, 0.1));
            put(&format!("{p}.ffn_up.weight"), &[FF, D], r.vec(FF * D, 0.1));
            put(&format!("{p}.ffn_down.weight"), &[D, FF], r.vec(D * FF, 0.06));
        }
        put("output_norm.weight", &[D], r.vec(D, 0.2).iter().map(|v| 1.0 + v).collect());
        if !self.tied {
            put("output.weight", &[VOCAB, D], r.vec(VOCAB * D, 0.2));
        }
        w.finish().unwrap();
    }

    /// Writes the model into `dir` as `tiny.gguf` and returns the path.
    pub fn gguf_in(&self, dir: &Path) -> PathBuf {
        let p = dir.join("tiny.gguf");
        self.write_gguf(&p);
        p
    }
}

/// A short calibration / evaluation text (a slice of the shipped novel).
pub fn text(offset: usize, len: usize) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text/austen_emma.txt");
    let t = std::fs::read_to_string(&p).unwrap();
    let start = t.char_indices().nth(offset).map(|(i, _)| i).unwrap_or(0);
    let s: String = t[start..].chars().take(len).collect();
    (p.with_file_name(format!("emma_{offset}_{len}.txt")), s)
}
