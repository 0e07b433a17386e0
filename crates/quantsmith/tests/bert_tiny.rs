//! A tiny random BERT built in memory, checked against a plain f64 reference written here
//! (one sequence at a time, no GEMMs, libm-free erf by series), plus the sentence pipeline
//! (tokenizer, truncation, pooling, normalisation) and bad-input errors.

use std::collections::HashMap;
use std::path::Path;

use quantsmith::arch::bert::{Bert, BertConfig, BertEncoder, Tokens};
use quantsmith::tensor::{DType, TensorInfo, TensorSource};
use quantsmith::Error;
use serde_json::json;

const VOCAB: usize = 24;
const HIDDEN: usize = 8;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 16;
const POSITIONS: usize = 16;

struct MemSource(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl TensorSource for MemSource {
    fn tensors(&self) -> Vec<TensorInfo> {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        names.into_iter().filter_map(|n| self.info(n)).collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.get(name).map(|(shape, _)| TensorInfo {
            name: name.into(),
            shape: shape.clone(),
            dtype: DType::F32,
            n_bytes: 4 * shape.iter().product::<usize>(),
        })
    }
    fn load_f32(&self, name: &str) -> quantsmith::Result<Vec<f32>> {
        self.0.get(name).map(|(_, d)| d.clone()).ok_or_else(|| Error::Other(format!("no tensor {name}")))
    }
}

/// xorshift64*: seeded, dependency-free uniform numbers in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn config_json() -> serde_json::Value {
    json!({
        "model_type": "bert", "hidden_act": "gelu", "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "intermediate_size": INTER, "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2, "vocab_size": VOCAB, "layer_norm_eps": 1e-12
    })
}

fn random_weights(seed: u64, prefix: &str) -> MemSource {
    let mut rng = Rng(seed);
    let mut m = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        let data = rng.vec(n, scale).into_iter().map(|x| x + offset).collect();
        m.insert(format!("{prefix}{name}"), (shape, data));
    };
    put("embeddings.word_embeddings.weight".into(), vec![VOCAB, HIDDEN], 1.0, 0.0, &mut rng);
    put("embeddings.position_embeddings.weight".into(), vec![POSITIONS, HIDDEN], 0.5, 0.0, &mut rng);
    put("embeddings.token_type_embeddings.weight".into(), vec![2, HIDDEN], 0.5, 0.0, &mut rng);
    put("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.2, 1.0, &mut rng);
    put("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.2, 0.0, &mut rng);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", INTER, HIDDEN),
            ("output.dense", HIDDEN, INTER),
        ] {
            // Large enough weights that attention is far from uniform and GELU sees both tails.
            put(format!("{p}.{name}.weight"), vec![out, inp], 1.5 / (inp as f32).sqrt() * 1.7, 0.0, &mut rng);
            put(format!("{p}.{name}.bias"), vec![out], 0.3, 0.0, &mut rng);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{name}.weight"), vec![HIDDEN], 0.2, 1.0, &mut rng);
            put(format!("{p}.{name}.bias"), vec![HIDDEN], 0.2, 0.0, &mut rng);
        }
    }
    MemSource(m)
}

fn encoder(src: &MemSource) -> BertEncoder {
    let cfg = BertConfig::from_json(&config_json(), Path::new("config.json")).unwrap();
    BertEncoder::load(cfg, src, Path::new("mem")).unwrap()
}

// ---- the f64 reference ----------------------------------------------------------------

fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

struct Ref<'a>(&'a MemSource);
impl Ref<'_> {
    fn t(&self, name: &str) -> Vec<f64> {
        self.0 .0[name].1.iter().map(|&x| x as f64).collect()
    }
    fn linear(&self, name: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let w = self.t(&format!("{name}.weight"));
        let b = self.t(&format!("{name}.bias"));
        let inp = x[0].len();
        x.iter()
            .map(|row| {
                b.iter()
                    .enumerate()
                    .map(|(o, bo)| bo + (0..inp).map(|i| w[o * inp + i] * row[i]).sum::<f64>())
                    .collect()
            })
            .collect()
    }
    fn norm(&self, name: &str, x: &mut [Vec<f64>]) {
        let (w, b) = (self.t(&format!("{name}.weight")), self.t(&format!("{name}.bias")));
        for row in x {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + 1e-12).sqrt() * w[i] + b[i];
            }
        }
    }
    /// Final hidden states of one sequence, `[len][HIDDEN]`.
    fn forward(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let (we, pe, te) = (
            self.t("embeddings.word_embeddings.weight"),
            self.t("embeddings.position_embeddings.weight"),
            self.t("embeddings.token_type_embeddings.weight"),
        );
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(p, &id)| (0..HIDDEN).map(|j| we[id as usize * HIDDEN + j] + pe[p * HIDDEN + j] + te[j]).collect())
            .collect();
        self.norm("embeddings.LayerNorm", &mut x);
        let dh = HIDDEN / HEADS;
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&format!("{p}.attention.self.query"), &x);
            let k = self.linear(&format!("{p}.attention.self.key"), &x);
            let v = self.linear(&format!("{p}.attention.self.value"), &x);
            let mut ctx = vec![vec![0.0; HIDDEN]; x.len()];
            for h in 0..HEADS {
                let cols = h * dh..(h + 1) * dh;
                for i in 0..x.len() {
                    let s: Vec<f64> = (0..x.len())
                        .map(|j| cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (dh as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in cols.clone() {
                        ctx[i][c] = (0..x.len()).map(|j| e[j] / z * v[j][c]).sum();
                    }
                }
            }
            let mut a = self.linear(&format!("{p}.attention.output.dense"), &ctx);
            a.iter_mut().zip(&x).for_each(|(r, xr)| r.iter_mut().zip(xr).for_each(|(u, w)| *u += w));
            self.norm(&format!("{p}.attention.output.LayerNorm"), &mut a);
            let mut i = self.linear(&format!("{p}.intermediate.dense"), &a);
            i.iter_mut().flatten().for_each(|u| *u = 0.5 * *u * (1.0 + erf64(*u / std::f64::consts::SQRT_2)));
            let mut o = self.linear(&format!("{p}.output.dense"), &i);
            o.iter_mut().zip(&a).for_each(|(r, ar)| r.iter_mut().zip(ar).for_each(|(u, w)| *u += w));
            self.norm(&format!("{p}.output.LayerNorm"), &mut o);
            x = o;
        }
        x
    }
}

fn toks(ids: &[u32]) -> Tokens {
    Tokens { ids: ids.to_vec(), type_ids: vec![0; ids.len()] }
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn batched_forward_matches_reference() {
    let src = random_weights(7, "");
    let enc = encoder(&src);
    let seqs =
        [vec![2u32, 5, 9, 17, 3], vec![2, 3], vec![2, 23, 4, 4, 4, 11, 12, 13, 6, 7, 8, 0, 1, 3], vec![2, 19, 20, 3]];
    let batch: Vec<Tokens> = seqs.iter().map(|s| toks(s)).collect();
    let packed = enc.forward(&batch).unwrap();
    let mut off = 0;
    for (n, s) in seqs.iter().enumerate() {
        let want: Vec<f64> = Ref(&src).forward(s).into_iter().flatten().collect();
        assert_close(&packed[off * HIDDEN..(off + s.len()) * HIDDEN], &want, 2e-5, &format!("sequence {n}"));
        off += s.len();
    }
}

#[test]
fn batch_companions_do_not_change_results() {
    let src = random_weights(11, "");
    let enc = encoder(&src);
    let a = toks(&[2, 8, 9, 10, 3]);
    let alone = enc.forward(&[a.clone()]).unwrap();
    let long = toks(&(0..POSITIONS as u32).map(|i| i % VOCAB as u32).collect::<Vec<_>>());
    let with = enc.forward(&[long.clone(), a.clone(), toks(&[2, 3])]).unwrap();
    let start = long.ids.len() * HIDDEN;
    let want: Vec<f64> = alone.iter().map(|&x| x as f64).collect();
    assert_close(&with[start..start + alone.len()], &want, 1e-6, "a within a batch");
}

#[test]
fn bert_prefix_is_accepted() {
    let plain = encoder(&random_weights(3, ""));
    let prefixed = encoder(&random_weights(3, "bert."));
    let t = [toks(&[2, 4, 5, 3])];
    assert_eq!(plain.forward(&t).unwrap(), prefixed.forward(&t).unwrap());
}

#[test]
fn bad_weights_and_config_are_clear_errors() {
    let cfg = BertConfig::from_json(&config_json(), Path::new("config.json")).unwrap();
    let mut src = random_weights(5, "");
    src.0.remove("encoder.layer.1.intermediate.dense.bias");
    match BertEncoder::load(cfg.clone(), &src, Path::new("m")) {
        Err(Error::Tensor { tensor, msg, .. }) => {
            assert_eq!((tensor.as_str(), msg.as_str()), ("encoder.layer.1.intermediate.dense.bias", "missing"))
        }
        other => panic!("expected a missing-tensor error, got {:?}", other.map(|_| ())),
    }
    let mut src = random_weights(5, "");
    src.0.get_mut("encoder.layer.0.attention.self.key.weight").unwrap().0 = vec![HIDDEN, HIDDEN + 1];
    match BertEncoder::load(cfg, &src, Path::new("m")) {
        Err(Error::Tensor { tensor, .. }) => {
            assert_eq!(tensor, "encoder.layer.0.attention.self.key.weight")
        }
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    for (key, value) in [("hidden_act", json!("relu")), ("hidden_size", json!(-3)), ("num_attention_heads", json!(3))] {
        let mut c = config_json();
        c[key] = value;
        match BertConfig::from_json(&c, Path::new("config.json")) {
            Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected a config error, got {other:?}"),
        }
    }
    let mut c = config_json();
    c.as_object_mut().unwrap().remove("vocab_size");
    assert!(
        matches!(BertConfig::from_json(&c, Path::new("config.json")), Err(Error::Config { key, .. }) if key == "vocab_size")
    );

    let enc = encoder(&random_weights(5, ""));
    assert!(enc.forward(&[toks(&[2, VOCAB as u32])]).is_err(), "token id past the vocabulary");
    assert!(enc.forward(&[toks(&vec![2; POSITIONS + 1])]).is_err(), "longer than the position table");
    assert!(enc.forward(&[toks(&[])]).is_err(), "empty sequence");
    assert!(enc.forward(&[Tokens { ids: vec![2, 3], type_ids: vec![0, 2] }]).is_err(), "token type past the table");
}

// ---- the sentence pipeline ----------------------------------------------------------

const WORDS: [&str; 20] = [
    "the", "a", "man", "wife", "truth", "fortune", "good", "single", "in", "of", "must", "be", "want", "it", "is",
    "levels", "small", "set", "##s", ".",
];

fn tokenizer_json(extra_vocab: usize) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for i in 0..extra_vocab {
        vocab.insert(format!("extra{i}"), json!(24 + i));
    }
    let special = |id: usize, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    json!({
        "version": "1.0", "truncation": {"max_length": 3, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

fn write(dir: &Path, rel: &str, v: &serde_json::Value) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec(v).unwrap()).unwrap();
}

fn sentence_dir(
    modules: Option<serde_json::Value>,
    pooling: serde_json::Value,
    max_seq_length: Option<usize>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer.json", &tokenizer_json(0));
    if let Some(m) = modules {
        write(dir.path(), "modules.json", &m);
        write(dir.path(), "1_Pooling/config.json", &pooling);
    }
    if let Some(n) = max_seq_length {
        write(dir.path(), "sentence_bert_config.json", &json!({"max_seq_length": n, "do_lower_case": false}));
    }
    dir
}

fn st_modules(normalize: bool) -> serde_json::Value {
    let mut m = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if normalize {
        m.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    json!(m)
}

fn mean_pooling() -> serde_json::Value {
    json!({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false})
}

#[test]
fn sentence_embeddings_mean_pool_and_normalise() {
    let src = random_weights(21, "");
    let dir = sentence_dir(Some(st_modules(true)), mean_pooling(), None);
    let bert = Bert::load(dir.path(), &config_json(), &src).unwrap();
    assert_eq!(
        (bert.max_seq_length, bert.normalize, bert.dim()),
        (POSITIONS, true, HIDDEN),
        "256 capped at the position table"
    );
    let texts = ["It is a single man.", "The good wife", "wants"];
    let tokens = bert.tokenize(&texts).unwrap();
    // tokenizer.json's own truncation (3) and padding (12) are replaced by ours.
    assert_eq!(tokens[0].ids, vec![2, 17, 18, 5, 11, 6, 23, 3]);
    assert_eq!(tokens[2].ids, vec![2, 16, 22, 3], "wordpiece want + ##s");
    let got = bert.embed(&texts).unwrap();
    for (t, g) in tokens.iter().zip(&got) {
        let states = Ref(&src).forward(&t.ids);
        let mut mean: Vec<f64> =
            (0..HIDDEN).map(|j| states.iter().map(|r| r[j]).sum::<f64>() / states.len() as f64).collect();
        let n = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        mean.iter_mut().for_each(|x| *x /= n);
        assert_close(g, &mean, 2e-5, "embedding");
    }
}

#[test]
fn sentence_settings_truncate_and_choose_pooling() {
    let src = random_weights(22, "");
    let cls =
        json!({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false});
    let dir = sentence_dir(Some(st_modules(false)), cls, Some(5));
    let bert = Bert::load(dir.path(), &config_json(), &src).unwrap();
    let tokens = bert.tokenize(&["the good single man must be in want of a wife"]).unwrap();
    assert_eq!(tokens[0].ids, vec![2, 4, 10, 11, 3], "truncated to 5 with [SEP] kept");
    let got = bert.embed(&["the good single man must be in want of a wife"]).unwrap();
    let want = Ref(&src).forward(&tokens[0].ids)[0].clone();
    assert_close(&got[0], &want, 2e-5, "[CLS] state, not normalised");

    // Without modules.json: mean pooling and L2 normalisation.
    let dir = sentence_dir(None, json!({}), None);
    let bert = Bert::load(dir.path(), &config_json(), &src).unwrap();
    assert_eq!((bert.normalize, bert.max_seq_length), (true, POSITIONS));
    let norm: f32 = bert.embed(&["a man"]).unwrap()[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}

#[test]
fn bad_sentence_configuration_is_a_clear_error() {
    let src = random_weights(23, "");
    // A tokenizer with more tokens than the embedding table.
    let dir = sentence_dir(None, json!({}), None);
    write(dir.path(), "tokenizer.json", &tokenizer_json(3));
    assert!(matches!(Bert::load(dir.path(), &config_json(), &src), Err(Error::Tokenizer(_))));
    // No tokenizer at all.
    let dir = tempfile::tempdir().unwrap();
    assert!(
        matches!(Bert::load(dir.path(), &config_json(), &src), Err(Error::Tokenizer(m)) if m.contains("tokenizer.json"))
    );
    // An unsupported module.
    let mut m = st_modules(true);
    m.as_array_mut()
        .unwrap()
        .push(json!({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}));
    let dir = sentence_dir(Some(m), mean_pooling(), None);
    assert!(
        matches!(Bert::load(dir.path(), &config_json(), &src), Err(Error::Config { msg, .. }) if msg.contains("Dense"))
    );
    // A pooling width that disagrees with the model.
    let dir = sentence_dir(
        Some(st_modules(true)),
        json!({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}),
        None,
    );
    assert!(
        matches!(Bert::load(dir.path(), &config_json(), &src), Err(Error::Config { key, .. }) if key == "word_embedding_dimension")
    );
    // Corrupt JSON.
    let dir = sentence_dir(None, json!({}), None);
    std::fs::write(dir.path().join("sentence_bert_config.json"), b"{ not json").unwrap();
    assert!(matches!(Bert::load(dir.path(), &config_json(), &src), Err(Error::Corrupt { .. })));
}

#[test]
fn encoder_evaluation_compares_model_with_base() {
    use quantsmith::eval::encoder::{cosine, evaluate_encoder, split_sentences};
    use std::sync::Mutex;
    let dir = sentence_dir(Some(st_modules(true)), mean_pooling(), None);
    let base_src = random_weights(31, "");
    // The "quantized" model: the same weights with a little noise on every tensor.
    let mut noisy = random_weights(31, "");
    let mut rng = Rng(99);
    for (_, data) in noisy.0.values_mut() {
        data.iter_mut().for_each(|x| *x += 0.05 * rng.next());
    }
    let base = Bert::load(dir.path(), &config_json(), &base_src).unwrap();
    let model = Bert::load(dir.path(), &config_json(), &noisy).unwrap();
    let text = "It is a truth. The single man must\nbe in want of a wife!\n\nA good fortune? The small set of levels.";
    let calls = Mutex::new(Vec::new());
    let report = evaluate_encoder(&model, Some(&base), text, &|d, t| calls.lock().unwrap().push((d, t))).unwrap();

    let sentences = split_sentences(text);
    assert_eq!(report.sentences, 4);
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let (m, b) = (model.embed(&texts).unwrap(), base.embed(&texts).unwrap());
    let cos: Vec<f64> = m.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
    let mean = cos.iter().sum::<f64>() / 4.0;
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!((report.cosine_mean.unwrap() - mean).abs() < 1e-6);
    assert!((report.cosine_min.unwrap() - min).abs() < 1e-6);
    assert!(min < 0.99999 && min > 0.5, "noise should cost a little similarity: {min}");
    assert_eq!(calls.lock().unwrap().last(), Some(&(8, 8)), "progress ends at both models' sentences");

    // Without a base: statistics only. The pairwise mean from the sum trick equals the
    // direct mean over all pairs.
    let alone = evaluate_encoder(&model, None, text, &|_, _| {}).unwrap();
    assert_eq!((alone.cosine_mean, alone.cosine_min), (None, None));
    let mut pairs = Vec::new();
    for i in 0..4 {
        for j in 0..4 {
            if i != j {
                pairs.push(cosine(&m[i], &m[j]));
            }
        }
    }
    let direct = pairs.iter().sum::<f64>() / pairs.len() as f64;
    assert!((alone.pairwise_cosine_mean.unwrap() - direct).abs() < 1e-6);
    assert!(evaluate_encoder(&model, None, " \n\n ", &|_, _| {}).is_err(), "no sentences");
}

#[test]
fn many_batches_give_the_same_embeddings_as_one_at_a_time() {
    let src = random_weights(41, "");
    let dir = sentence_dir(Some(st_modules(true)), mean_pooling(), None);
    let bert = Bert::load(dir.path(), &config_json(), &src).unwrap();
    // About 700 texts of 3 to 12 tokens: more than one 4096-token batch, so batches run
    // side by side with single-threaded GEMMs and results are put back in input order.
    let mut rng = Rng(5);
    let texts: Vec<String> = (0..700)
        .map(|_| {
            let n = 1 + ((rng.next() + 1.0) * 5.0) as usize;
            (0..n).map(|_| WORDS[((rng.next() + 1.0) * 9.5) as usize]).collect::<Vec<_>>().join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = bert.tokenize(&refs).unwrap().iter().map(|t| t.ids.len()).sum();
    assert!(tokens > 4096, "only {tokens} tokens: a single batch");
    let calls = std::sync::Mutex::new(0);
    let all = bert.embed_with_progress(&refs, &|_, _| *calls.lock().unwrap() += 1).unwrap();
    assert!(*calls.lock().unwrap() >= 1);
    for i in [0, 1, 350, 699] {
        let alone = bert.embed(&refs[i..=i]).unwrap().remove(0);
        let want: Vec<f64> = alone.iter().map(|&x| x as f64).collect();
        assert_close(&all[i], &want, 1e-6, &format!("text {i} ({})", texts[i]));
    }
}
