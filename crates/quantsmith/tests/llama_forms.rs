//! A tiny random Llama / Qwen2 written as a Hugging Face directory and as GGUF (with the
//! q/k row permutation llama.cpp's converter applies for llama-architecture files) must
//! give identical logits. The GGUF path itself is checked against llama.cpp's figures on the
//! real SmolLM2 (tests/smollm2.rs), so this pins the Hugging Face path to it.

use std::collections::BTreeMap;
use std::path::Path;

use quantsmith::arch::llama::{Llama, LlamaConfig, RopeLayout};
use quantsmith::formats::ggml::GgmlType;
use quantsmith::io::{GgufValue, GgufWriter, ModelFile};

const N_LAYER: usize = 2;
const D: usize = 64;
const N_HEAD: usize = 4;
const N_KV: usize = 2;
const HD: usize = D / N_HEAD;
const FF: usize = 96;
const VOCAB: usize = 50;

/// Deterministic pseudo-random numbers (xorshift), scaled to ±scale.
struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
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

/// Tensors in Hugging Face naming, shapes outermost first.
fn random_hf(qwen: bool) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut r = Rng(0x9E3779B97F4A7C15);
    let mut t = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, r: &mut Rng| {
        let n = shape.iter().product();
        t.insert(name, (shape, r.vec(n, scale)));
    };
    put("model.embed_tokens.weight".into(), vec![VOCAB, D], 1.0, &mut r);
    put("model.norm.weight".into(), vec![D], 1.0, &mut r);
    put("lm_head.weight".into(), vec![VOCAB, D], 0.3, &mut r);
    for i in 0..N_LAYER {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), vec![D], 1.0, &mut r);
        put(format!("{p}.post_attention_layernorm.weight"), vec![D], 1.0, &mut r);
        put(format!("{p}.self_attn.q_proj.weight"), vec![N_HEAD * HD, D], 0.4, &mut r);
        put(format!("{p}.self_attn.k_proj.weight"), vec![N_KV * HD, D], 0.4, &mut r);
        put(format!("{p}.self_attn.v_proj.weight"), vec![N_KV * HD, D], 0.3, &mut r);
        put(format!("{p}.self_attn.o_proj.weight"), vec![D, N_HEAD * HD], 0.2, &mut r);
        put(format!("{p}.mlp.gate_proj.weight"), vec![FF, D], 0.2, &mut r);
        put(format!("{p}.mlp.up_proj.weight"), vec![FF, D], 0.2, &mut r);
        put(format!("{p}.mlp.down_proj.weight"), vec![D, FF], 0.2, &mut r);
        if qwen {
            put(format!("{p}.self_attn.q_proj.bias"), vec![N_HEAD * HD], 0.3, &mut r);
            put(format!("{p}.self_attn.k_proj.bias"), vec![N_KV * HD], 0.3, &mut r);
            put(format!("{p}.self_attn.v_proj.bias"), vec![N_KV * HD], 0.3, &mut r);
        }
    }
    t
}

fn write_hf(dir: &Path, qwen: bool, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let config = serde_json::json!({
        "model_type": if qwen { "qwen2" } else { "llama" },
        "hidden_size": D, "intermediate_size": FF, "num_hidden_layers": N_LAYER,
        "num_attention_heads": N_HEAD, "num_key_value_heads": N_KV, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes: BTreeMap<&String, Vec<u8>> =
        tensors.iter().map(|(k, (_, v))| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views = tensors.iter().map(|(k, (shape, _))| {
        (k.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes[k]).unwrap())
    });
    let data = safetensors::serialize(views, &None).unwrap();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
}

/// llama.cpp's converter: within each head, row (j, i) of the half-split layout moves to
/// row (i, j) of the interleaved one.
fn permute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let half = HD / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let src = h * HD + j * half + i;
                let dst = h * HD + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn write_gguf(path: &Path, qwen: bool, hf: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let arch = if qwen { "qwen2" } else { "llama" };
    let mut w = GgufWriter::new(path).unwrap();
    w.add_metadata("general.architecture", GgufValue::String(arch.into())).unwrap();
    for (k, v) in [
        ("block_count", N_LAYER),
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
    let rename = |n: &str| -> String {
        let n = n
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        n
    };
    for (name, (shape, data)) in hf {
        let mut data = data.clone();
        if !qwen && name.ends_with("q_proj.weight") {
            data = permute_rows(&data, N_HEAD, D);
        }
        if !qwen && name.ends_with("k_proj.weight") {
            data = permute_rows(&data, N_KV, D);
        }
        let ne: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(&rename(name), &ne, GgmlType::F32, &bytes).unwrap();
    }
    w.finish().unwrap();
}

fn logits_of(file: &ModelFile, tokens: &[u32]) -> Vec<f32> {
    let cfg = match file {
        ModelFile::Gguf(g) => LlamaConfig::from_gguf(g).unwrap(),
        ModelFile::Hf(h) => LlamaConfig::from_hf(h).unwrap(),
    };
    let m = Llama::load(file.source(), file.path(), cfg).unwrap();
    m.logits(tokens, tokens.len() / 2, 0..tokens.len() / 2).unwrap()
}

fn check(qwen: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let hf = random_hf(qwen);
    let dir = tmp.path().join("hf");
    std::fs::create_dir(&dir).unwrap();
    write_hf(&dir, qwen, &hf);
    let gguf = tmp.path().join("m.gguf");
    write_gguf(&gguf, qwen, &hf);

    let a = ModelFile::open(&dir).unwrap();
    let b = ModelFile::open(&gguf).unwrap();
    if let (ModelFile::Gguf(g), ModelFile::Hf(h)) = (&b, &a) {
        let (cg, ch) = (LlamaConfig::from_gguf(g).unwrap(), LlamaConfig::from_hf(h).unwrap());
        assert_eq!(cg.rope, if qwen { RopeLayout::Halves } else { RopeLayout::Interleaved });
        assert_eq!(ch.rope, RopeLayout::Halves);
        assert_eq!(cg.qkv_bias, qwen);
        assert_eq!(ch.qkv_bias, qwen);
    }
    // Two sequences of 12 tokens in one batch.
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 17 + 3) % VOCAB as u32).collect();
    let la = logits_of(&a, &tokens);
    let lb = logits_of(&b, &tokens);
    assert_eq!(la.len(), 2 * 12 * VOCAB);
    let scale = la.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        assert!((x - y).abs() <= 1e-4 * scale, "logit {i}: hf {x} vs gguf {y}");
    }
    // Causality: the first sequence's logits do not depend on later tokens.
    let mut t2 = tokens.clone();
    t2[11] = (t2[11] + 1) % VOCAB as u32;
    let lc = logits_of(&a, &t2);
    assert_eq!(la[..11 * VOCAB], lc[..11 * VOCAB]);
    assert_ne!(la[11 * VOCAB..12 * VOCAB], lc[11 * VOCAB..12 * VOCAB]);
    assert_eq!(la[12 * VOCAB..], lc[12 * VOCAB..], "sequences in a batch are independent");
}

#[test]
fn llama_hf_and_gguf_give_identical_logits() {
    check(false);
}

#[test]
fn qwen2_hf_and_gguf_give_identical_logits() {
    check(true);
}
