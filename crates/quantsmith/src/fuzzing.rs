//! Entry points for the fuzz targets under `fuzz/` (one per reader of untrusted input), kept
//! in the library so the regression test runs every committed input through the very same
//! code without a fuzzer. Each takes arbitrary bytes, writes them where the reader expects a
//! file, and drives the reader as the commands do; any outcome but a panic, an abort or a hang
//! is acceptable (errors are the expected answer to most inputs).

use std::path::Path;

use crate::io::{HfModel, ModelFile};
use crate::tensor::TensorSource;

/// The harnesses, by target name.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("hf_config", hf_config),
    ("quantized_dir", quantized_dir),
    ("imatrix", imatrix),
    ("format_spec", format_spec),
    ("recipe", recipe),
];

/// Tensors larger than this are not materialised (the harness stays fast; the readers' size
/// checks still see every header).
const MAX_LOAD: usize = 1 << 22;

/// One thread: a panic then happens on the fuzzer's own thread, which saves the input that
/// caused it (a panic on a pool thread aborts the process before libFuzzer can).
fn single_thread() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    });
}

fn scratch() -> tempfile::TempDir {
    single_thread();
    tempfile::tempdir().expect("a temporary directory")
}

/// Loads every tensor of `src` (up to `MAX_LOAD` elements) as the pipeline would.
fn load_all(src: &dyn TensorSource) {
    for t in src.tensors() {
        if t.numel() <= MAX_LOAD {
            let _ = src.load_f32(&t.name);
        }
    }
}

/// Everything the commands do with a model before any computation: the architecture's
/// configuration, the tokenizer (with a short text through it), every tensor.
fn drive_model(path: &Path) {
    let Ok(file) = ModelFile::open(path) else { return };
    let _ = file.inventory();
    if let Ok(arch) = crate::arch::arch_for(&file) {
        let _ = arch.tensor_names();
    }
    match &file {
        ModelFile::Gguf(g) => {
            let _ = crate::arch::llama::LlamaConfig::from_gguf(g);
            if let Ok(tok) = crate::tokenizer::Tokenizer::from_gguf(g) {
                let _ = tok.encode("Emma Woodhouse, handsome, clever, and rich. \u{e9}\u{4e2d}\n\t", true);
            }
            load_all(g);
        }
        ModelFile::Hf(h) => {
            let _ = crate::arch::llama::LlamaConfig::from_hf(h);
            load_all(h);
        }
    }
}

/// A GGUF file: header, metadata, tensor infos, the Llama configuration, the tokenizer built
/// from its metadata, and every tensor's dequantization.
pub fn gguf(data: &[u8]) {
    let d = scratch();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, data).expect("write");
    drive_model(&p);
}

/// A fixed, valid tiny-Llama `config.json` (2 heads of 16, one block, vocabulary 64).
pub const TINY_CONFIG: &str = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
"num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 64,
"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128}"#;

/// A Hugging Face directory whose `model.safetensors` is `data` (the config fixed).
pub fn safetensors(data: &[u8]) {
    let d = scratch();
    std::fs::write(d.path().join("config.json"), TINY_CONFIG).expect("write");
    std::fs::write(d.path().join("model.safetensors"), data).expect("write");
    if let Ok(h) = HfModel::open(d.path()) {
        load_all(&h);
    }
    drive_model(d.path());
}

/// A Hugging Face directory whose `config.json` is `data`, beside a valid tiny safetensors
/// file (every Llama tensor of [`TINY_CONFIG`], zeros).
pub fn hf_config(data: &[u8]) {
    let d = scratch();
    std::fs::write(d.path().join("config.json"), data).expect("write");
    std::fs::write(d.path().join("model.safetensors"), tiny_safetensors()).expect("write");
    drive_model(d.path());
}

/// A quantized directory (the compressed-tensors or GPTQ layout the exporters write, read
/// back as `eval` reads it): the first two bytes give the length of `config.json` (its
/// `quantization_config` included), which follows; the rest is `model.safetensors`.
pub fn quantized_dir(data: &[u8]) {
    let Some(n) = data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize) else { return };
    let Some(config) = data.get(2..2 + n) else { return };
    let d = scratch();
    std::fs::write(d.path().join("config.json"), config).expect("write");
    std::fs::write(d.path().join("model.safetensors"), &data[2 + n..]).expect("write");
    drive_model(d.path());
}

/// The input of [`quantized_dir`] for a directory's `config.json` and `model.safetensors`.
pub fn quantized_dir_input(config: &[u8], safetensors: &[u8]) -> Vec<u8> {
    let mut v = (config.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(config);
    v.extend_from_slice(safetensors);
    v
}

/// An importance-matrix file (llama.cpp's GGUF form or the legacy `.dat`).
pub fn imatrix(data: &[u8]) {
    let d = scratch();
    let p = d.path().join("imatrix.dat");
    std::fs::write(&p, data).expect("write");
    let _ = crate::quantize::imatrix::read_imatrix(&p);
}

/// A format spec string; a valid one quantizes and dequantizes a small matrix.
pub fn format_spec(data: &[u8]) {
    single_thread();
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(f) = formats::spec::parse(s) else { return };
    let cols = 256;
    let rows = 2;
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
    if let Ok(q) = f.quantize(&w, rows, cols, None) {
        let _ = f.dequantize(&q);
    }
}

/// A TOML recipe, and each of its lines as a `--scheme` rule.
pub fn recipe(data: &[u8]) {
    let d = scratch();
    let p = d.path().join("r.toml");
    std::fs::write(&p, data).expect("write");
    let _ = crate::quantize::recipe::read_recipe(&p);
    if let Ok(s) = std::str::from_utf8(data) {
        for line in s.lines().take(64) {
            let _ = crate::quantize::recipe::Rule::parse_scheme(line);
        }
    }
}

/// Every tensor of [`TINY_CONFIG`]'s model as f32 zeros (ones for the norms), as safetensors.
pub fn tiny_safetensors() -> Vec<u8> {
    let (d, ff, v, kv) = (32usize, 64usize, 64usize, 16usize);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, d]),
        ("model.norm.weight".into(), vec![d]),
        ("lm_head.weight".into(), vec![v, d]),
    ];
    let l = "model.layers.0";
    for (n, s) in [
        ("input_layernorm.weight", vec![d]),
        ("post_attention_layernorm.weight", vec![d]),
        ("self_attn.q_proj.weight", vec![d, d]),
        ("self_attn.k_proj.weight", vec![kv, d]),
        ("self_attn.v_proj.weight", vec![kv, d]),
        ("self_attn.o_proj.weight", vec![d, d]),
        ("mlp.gate_proj.weight", vec![ff, d]),
        ("mlp.up_proj.weight", vec![ff, d]),
        ("mlp.down_proj.weight", vec![d, ff]),
    ] {
        t.push((format!("{l}.{n}"), s));
    }
    let mut header = serde_json::Map::new();
    let mut blob = Vec::new();
    for (name, shape) in t {
        let n: usize = shape.iter().product();
        let one = if shape.len() == 1 { 1f32 } else { 0.01 };
        let start = blob.len();
        for _ in 0..n {
            blob.extend_from_slice(&one.to_le_bytes());
        }
        header.insert(name, serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, blob.len()]}));
    }
    let mut h = serde_json::to_vec(&header).expect("json");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&blob);
    out
}
