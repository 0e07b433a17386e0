//! The readers on the real built-in models, against values computed by independent readers
//! (gguf-py's dequantize, numpy over the safetensors header): see
//! tools/io_reference_values.py. The models are fetched (pip) on first use.

use quantsmith::io::{open_model, ModelFile};
use quantsmith::tensor::{DType, TensorSource};
use serde_json::Value;

fn reference() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/io_reference_values.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn check_tensor(src: &dyn TensorSource, want: &Value) {
    let name = want["name"].as_str().unwrap();
    let info = src.info(name).unwrap_or_else(|| panic!("{name} missing"));
    let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(info.shape, shape, "{name}");
    assert_eq!(info.dtype.name(), want["dtype"].as_str().unwrap(), "{name}");
    let v = src.load_f32(name).unwrap();
    assert_eq!(v.len(), info.numel());
    for (i, w) in want["first"].as_array().unwrap().iter().enumerate() {
        let w = w.as_f64().unwrap() as f32;
        assert!((v[i] - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {} vs {w}", v[i]);
    }
    let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
    let sum_sq: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap());
    assert!((sum - ws).abs() <= 1e-6 * wq.sqrt().max(1.0), "{name}: sum {sum} vs {ws}");
    assert!((sum_sq - wq).abs() <= 1e-6 * wq, "{name}: sum of squares {sum_sq} vs {wq}");
}

#[test]
fn smollm2_gguf_reads_like_gguf_py() {
    let file = open_model("smollm2").expect("fetch smollm2");
    let ModelFile::Gguf(g) = &file else { panic!("smollm2 is a GGUF file") };
    let r = reference();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());

    let inv = file.inventory().unwrap();
    assert_eq!(inv.tensors.len() as u64, r["smollm2"]["n_tensors"].as_u64().unwrap());
    assert_eq!(inv.parameters, 134_515_008);
    let q8: Vec<_> = inv.tensors.iter().filter(|t| t.dtype == DType::Ggml(formats::ggml::GgmlType::Q8_0)).collect();
    assert_eq!(q8.len(), 1);
    assert_eq!(q8[0].name, "token_embd.weight");
    for t in r["smollm2"]["tensors"].as_array().unwrap() {
        check_tensor(file.source(), t);
    }
}

#[test]
fn minilm_safetensors_reads_like_numpy() {
    let file = open_model("minilm").expect("fetch minilm");
    let ModelFile::Hf(h) = &file else { panic!("minilm is a Hugging Face directory") };
    let r = reference();
    assert_eq!(h.architecture().unwrap(), "bert");
    assert_eq!(h.config_usize("hidden_size").unwrap(), 384);
    assert_eq!(h.config_f64("layer_norm_eps").unwrap(), 1e-12);
    assert_eq!(h.entries().len() as u64, r["minilm"]["n_entries"].as_u64().unwrap());
    let pooling = h.read_json_opt("1_Pooling/config.json").unwrap().expect("1_Pooling/config.json");
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);
    assert!(h.dir().join("tokenizer.json").exists() && h.dir().join("modules.json").exists());
    let e = h.load_f32("embeddings.position_ids").unwrap_err().to_string();
    assert!(e.contains("I64"), "{e}");
    assert_eq!(file.inventory().unwrap().parameters, 22_713_216);
    for t in r["minilm"]["tensors"].as_array().unwrap() {
        check_tensor(file.source(), t);
    }
}
