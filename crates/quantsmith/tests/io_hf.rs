//! Hugging Face directories: single-file and sharded safetensors, config.json helpers.

mod io_common;

use io_common::{f32_bytes, pseudo_random, write_safetensors};
use quantsmith::io::{HfModel, ModelFile};
use quantsmith::tensor::{DType, TensorSource};

fn write_config(dir: &std::path::Path) {
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000,
            "tie_word_embeddings": true, "hidden_act": "silu", "rope_scaling": null}"#,
    )
    .unwrap();
}

#[test]
fn single_file_model_loads_f32_f16_bf16_and_lists_integer_buffers() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let w = pseudo_random(4 * 6, 7);
    let h: Vec<u8> = w.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let b: Vec<u8> = w.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let ids: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            ("pos_ids", "I64", vec![1, 4], ids),
            ("w32", "F32", vec![4, 6], f32_bytes(&w)),
            ("w16", "F16", vec![4, 6], h),
            ("wbf", "BF16", vec![24], b),
        ],
    );
    let m = HfModel::open(dir.path()).unwrap();
    assert_eq!(m.architecture().unwrap(), "llama");
    let names: Vec<String> = m.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["w32", "w16", "wbf"], "float tensors in file order");
    assert_eq!(m.entries().len(), 4);
    let info = m.info("w16").unwrap();
    assert_eq!((info.shape.clone(), info.dtype, info.n_bytes), (vec![4, 6], DType::F16, 48));
    assert_eq!(m.load_f32("w32").unwrap(), w);
    let mapped = m.load_weights("w32").unwrap();
    assert!(mapped.is_mapped(), "aligned F32 is read in place");
    assert_eq!(&mapped[..], &w[..]);
    let copied = m.load_weights("w16").unwrap();
    assert!(!copied.is_mapped());
    assert_eq!(&copied[..], &m.load_f32("w16").unwrap()[..]);
    for (name, tol) in [("w16", 1e-3), ("wbf", 1e-2)] {
        let got = m.load_f32(name).unwrap();
        assert!(got.iter().zip(&w).all(|(a, b)| (a - b).abs() <= tol), "{name}");
    }
    let e = m.load_f32("pos_ids").unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("pos_ids") && e.contains("I64"), "{e}");
    let e = m.load_f32("nope").unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");

    assert_eq!(m.config_usize("hidden_size").unwrap(), 64);
    assert_eq!(m.config_f64("rope_theta").unwrap(), 100000.0);
    assert_eq!(m.config_f64("rms_norm_eps").unwrap(), 1e-5);
    assert!(m.config_bool("tie_word_embeddings").unwrap());
    assert_eq!(m.config_str("hidden_act").unwrap(), "silu");
    assert_eq!(m.opt_f64("rope_scaling").unwrap(), None, "null counts as absent");
    assert_eq!(m.opt_usize("num_key_value_heads").unwrap(), None);
    let e = m.config_usize("num_attention_heads").unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("num_attention_heads") && e.contains("missing"), "{e}");
    let e = m.config_usize("hidden_act").unwrap_err().to_string();
    assert!(e.contains("hidden_act") && e.contains("integer"), "{e}");

    assert!(matches!(ModelFile::open(dir.path()).unwrap(), ModelFile::Hf(_)));
}

#[test]
fn sharded_model_loads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let a = pseudo_random(8, 1);
    let b = pseudo_random(6, 2);
    let c = pseudo_random(3, 3);
    write_safetensors(&dir.path().join("model-00001-of-00002.safetensors"), &[("a", "F32", vec![2, 4], f32_bytes(&a))]);
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("b", "F32", vec![6], f32_bytes(&b)), ("c", "F32", vec![3], f32_bytes(&c))],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 68}, "weight_map": {
            "c": "model-00002-of-00002.safetensors",
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let m = match ModelFile::open(dir.path()).unwrap() {
        ModelFile::Hf(m) => m,
        ModelFile::Gguf(_) => panic!("a directory must open as a Hugging Face model"),
    };
    assert_eq!(m.shards().len(), 2);
    let names: Vec<String> = m.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(m.load_f32("a").unwrap(), a);
    assert_eq!(m.load_f32("b").unwrap(), b);
    assert_eq!(m.load_f32("c").unwrap(), c);
}

#[test]
fn sentence_transformers_files_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    write_safetensors(&dir.path().join("model.safetensors"), &[("x", "F32", vec![1], f32_bytes(&[1.0]))]);
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(dir.path().join("1_Pooling/config.json"), r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
    let m = HfModel::open(dir.path()).unwrap();
    let pool = m.read_json_opt("1_Pooling/config.json").unwrap().unwrap();
    assert_eq!(pool["pooling_mode_mean_tokens"], true);
    assert!(m.read_json_opt("modules.json").unwrap().is_none());
    assert_eq!(m.dir(), dir.path());
}
