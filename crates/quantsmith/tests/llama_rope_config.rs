//! RoPE settings of a Hugging Face `config.json`, in both spellings: transformers <= 4 writes
//! `rope_theta` / `rope_scaling` / `partial_rotary_factor` at the top level, transformers 5
//! moves them into `rope_parameters`. The base must be read from either; any RoPE scaling or
//! partial rotation must be refused by its key, never run as plain RoPE.

mod io_common;

use io_common::{f32_bytes, write_safetensors};
use quantsmith::arch::llama::LlamaConfig;
use quantsmith::io::HfModel;
use serde_json::{json, Value};

/// `LlamaConfig::from_hf` on a tiny directory whose config.json is the base Llama settings
/// merged with `rope` (a JSON object; `null` values remove a key).
fn from_config(rope: Value) -> (tempfile::TempDir, quantsmith::Result<LlamaConfig>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "rms_norm_eps": 1e-5,
    });
    for (k, v) in rope.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    write_safetensors(&dir.path().join("model.safetensors"), &[("w", "F32", vec![2], f32_bytes(&[0.0, 1.0]))]);
    let m = HfModel::open(dir.path()).unwrap();
    let cfg = LlamaConfig::from_hf(&m);
    (dir, cfg)
}

fn theta(rope: Value) -> f64 {
    let (_dir, cfg) = from_config(rope);
    cfg.unwrap().rope_theta
}

fn refusal(rope: Value) -> String {
    let (_dir, cfg) = from_config(rope);
    let e = cfg.expect_err("config must be refused").to_string();
    assert!(e.contains("config.json"), "{e}");
    e
}

#[test]
fn transformers5_rope_parameters_give_the_base() {
    let t = theta(json!({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}));
    assert_eq!(t, 500000.0);
    // The old spelling, with the null rope_scaling transformers 4 writes.
    assert_eq!(theta(json!({"rope_theta": 100000, "rope_scaling": null})), 100000.0);
    // Both spellings, agreeing (and `type`, the oldest spelling of rope_type).
    let t = theta(json!({"rope_theta": 250000.0, "rope_scaling": {"type": "default"},
                         "rope_parameters": {"rope_theta": 250000.0, "rope_type": "default",
                                             "partial_rotary_factor": 1.0}}));
    assert_eq!(t, 250000.0);
    // Neither: transformers' default for Llama, and only then.
    assert_eq!(theta(json!({})), 10000.0);
    assert_eq!(theta(json!({"rope_parameters": {"rope_type": "default"}})), 10000.0);
}

#[test]
fn rope_scaling_of_any_kind_is_refused_by_key() {
    let e = refusal(json!({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 4096}}));
    assert!(
        e.contains("key `rope_parameters.rope_type`") && e.contains("`yarn`") && e.contains("not implemented"),
        "{e}"
    );
    let e = refusal(json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}));
    assert!(e.contains("key `rope_scaling.rope_type`") && e.contains("`llama3`"), "{e}");
    let e = refusal(json!({"rope_scaling": {"type": "linear", "factor": 2.0}}));
    assert!(e.contains("key `rope_scaling.type`") && e.contains("`linear`"), "{e}");
    let e = refusal(json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}));
    assert!(e.contains("key `rope_scaling.type`") && e.contains("`dynamic`"), "{e}");
    // A scaling setting without a type cannot be identified.
    let e = refusal(json!({"rope_scaling": {"factor": 2.0}}));
    assert!(e.contains("key `rope_scaling`") && e.contains("factor"), "{e}");
    let e = refusal(json!({"rope_scaling": "linear"}));
    assert!(e.contains("key `rope_scaling`") && e.contains("object"), "{e}");
}

#[test]
fn partial_rotary_and_bad_bases_are_refused() {
    let e = refusal(json!({"partial_rotary_factor": 0.5}));
    assert!(e.contains("key `partial_rotary_factor`") && e.contains("0.5"), "{e}");
    let e = refusal(json!({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                                               "partial_rotary_factor": 0.25}}));
    assert!(e.contains("key `rope_parameters.partial_rotary_factor`"), "{e}");
    // A base that is not a number is an error, not a silent 10000.
    let e = refusal(json!({"rope_theta": "1e6"}));
    assert!(e.contains("key `rope_theta`") && e.contains("number"), "{e}");
    let e = refusal(json!({"rope_parameters": {"rope_theta": -1.0, "rope_type": "default"}}));
    assert!(e.contains("key `rope_parameters.rope_theta`") && e.contains("positive"), "{e}");
    // The two spellings disagreeing.
    let e =
        refusal(json!({"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}));
    assert!(e.contains("key `rope_parameters.rope_theta`") && e.contains("disagrees"), "{e}");
}
