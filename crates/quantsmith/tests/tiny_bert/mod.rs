//! A tiny random BERT written as a Hugging Face sentence-transformers directory (config.json,
//! model.safetensors, a WordPiece tokenizer.json that pads and truncates like MiniLM's,
//! modules.json): the quantization pipeline runs on it in seconds, with no download.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::json;

/// Blocks.
pub const LAYERS: usize = 2;
/// Residual width (a multiple of 32, for int4:g32).
pub const HIDDEN: usize = 64;
/// Attention heads.
pub const HEADS: usize = 4;
/// Feed-forward width.
pub const INTER: usize = 128;
/// Rows of the position table.
pub const POSITIONS: usize = 64;

/// Deterministic pseudo-random numbers (xorshift), in ±scale.
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

/// The WordPiece vocabulary: specials, then letters, digits and punctuation, each also as a
/// `##` continuation, so that every lower-case ASCII word has a tokenization.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    v.extend(chars.iter().map(|c| c.to_string()));
    v.extend(chars.iter().map(|c| format!("##{c}")));
    v.extend([".", ",", "!", "?", ";", ":", "'", "\"", "-", "(", ")", "_", "&"].iter().map(|s| s.to_string()));
    v
}

/// tokenizer.json for [`vocab`], with MiniLM's post-processor, padding and truncation.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab = vocab();
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = vocab[..5]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": {"max_length": 32, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 32}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": map}
    })
}

/// config.json of the tiny model.
pub fn config_json() -> serde_json::Value {
    json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": HIDDEN,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "intermediate_size": INTER,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "vocab_size": vocab().len(),
        "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "pad_token_id": 0
    })
}

/// Writes a safetensors file of f32 tensors (plus MiniLM's int64 `position_ids` buffer).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], position_ids: Option<&str>) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    if let Some(name) = position_ids {
        let begin = data.len();
        for i in 0..POSITIONS as i64 {
            data.extend_from_slice(&i.to_le_bytes());
        }
        header
            .insert(name.into(), json!({"dtype": "I64", "shape": [1, POSITIONS], "data_offsets": [begin, data.len()]}));
    }
    for (name, shape, values) in tensors {
        let begin = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// The tiny model's tensors under Hugging Face names (with `prefix`, e.g. `bert.`).
pub fn tensors(seed: u64, prefix: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut r = Rng(seed);
    let v = vocab().len();
    let mut out = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32, r: &mut Rng| {
        let n = shape.iter().product();
        let data = r.vec(n, scale).into_iter().map(|x| x + offset).collect();
        out.push((format!("{prefix}{name}"), shape, data));
    };
    put("embeddings.word_embeddings.weight".into(), vec![v, HIDDEN], 1.0, 0.0, &mut r);
    put("embeddings.position_embeddings.weight".into(), vec![POSITIONS, HIDDEN], 0.5, 0.0, &mut r);
    put("embeddings.token_type_embeddings.weight".into(), vec![2, HIDDEN], 0.5, 0.0, &mut r);
    put("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.2, 1.0, &mut r);
    put("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.2, 0.0, &mut r);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, o, i) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", INTER, HIDDEN),
            ("output.dense", HIDDEN, INTER),
        ] {
            // Large enough that attention is far from uniform and GELU sees both tails.
            put(format!("{p}.{name}.weight"), vec![o, i], 2.5 / (i as f32).sqrt(), 0.0, &mut r);
            put(format!("{p}.{name}.bias"), vec![o], 0.3, 0.0, &mut r);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{name}.weight"), vec![HIDDEN], 0.2, 1.0, &mut r);
            put(format!("{p}.{name}.bias"), vec![HIDDEN], 0.2, 0.0, &mut r);
        }
    }
    put("pooler.dense.weight".into(), vec![HIDDEN, HIDDEN], 0.1, 0.0, &mut r);
    put("pooler.dense.bias".into(), vec![HIDDEN], 0.1, 0.0, &mut r);
    out
}

/// Writes the tiny model as a sentence-transformers directory `dir/name` and returns it.
pub fn write_dir(dir: &Path, name: &str, seed: u64, prefix: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("1_Pooling")).unwrap();
    let json = |p: PathBuf, v: serde_json::Value| std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    json(d.join("config.json"), config_json());
    json(d.join("tokenizer.json"), tokenizer_json());
    json(
        d.join("modules.json"),
        json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    );
    json(
        d.join("1_Pooling/config.json"),
        json!({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": true}),
    );
    json(d.join("sentence_bert_config.json"), json!({"max_seq_length": POSITIONS, "do_lower_case": false}));
    write_safetensors(
        &d.join("model.safetensors"),
        &tensors(seed, prefix),
        Some(&format!("{prefix}embeddings.position_ids")),
    );
    d
}

/// Sentences of a novel for evaluation (never the calibration novel).
pub fn eval_sentences(n: usize) -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text/austen_prideprejudice.txt");
    let text = std::fs::read_to_string(p).unwrap();
    quantsmith::eval::encoder::split_sentences(&text).into_iter().skip(200).take(n).collect()
}
