//! A tiny random MPNet written as a Hugging Face directory (config.json, model.safetensors, a
//! WordPiece tokenizer.json framing with `<s>` … `</s>`): the sentence model against a plain
//! f64 reference written here (one sequence at a time, no GEMMs), and the quantization
//! pipeline through the MPNet `Arch` (RTN and GPTQ, fake-quant and compressed-tensors
//! directories read back as MPNet models).

#[allow(dead_code)]
mod io_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use io_common::{f32_bytes, pseudo_random, write_safetensors};
use quantsmith::arch::mpnet::{relative_position_bucket, Mpnet, NUM_BUCKETS};
use quantsmith::calib::CalibOptions;
use quantsmith::eval::encoder::cosine;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::recipe::Rule;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::solver;
use serde_json::json;

const HIDDEN: usize = 16;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 32;
const POSITIONS: usize = 66;
const EPS: f64 = 1e-5;

/// `<s> <pad> </s> <unk>`, then words, letters and continuation letters (every lower-case
/// word tokenizes), digits and punctuation.
fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["<s>", "<pad>", "</s>", "<unk>"].iter().map(|s| s.to_string()).collect();
    for w in ["the", "and", "of", "to", "a", "her", "she", "was", "in", "it", "not", "be", "that", "he", "emma", "mr"] {
        v.push(w.into());
    }
    for c in ('a'..='z').chain('0'..='9') {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    for p in [".", ",", ";", ":", "!", "?", "'", "\"", "-", "(", ")", "_", "&"] {
        v.push(p.into());
    }
    v
}

fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let added: Vec<serde_json::Value> = vocab[..4]
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let ids: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0], "trim_offsets": true, "add_prefix_space": false},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// Every tensor by Hugging Face name: (shape, values).
fn weights(vocab: usize, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut m = BTreeMap::new();
    let mut seed = seed;
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        let n = shape.iter().product();
        let v = pseudo_random(n, seed).into_iter().map(|x| x * scale + offset).collect();
        m.insert(name, (shape, v));
    };
    put("embeddings.word_embeddings.weight".into(), vec![vocab, HIDDEN], 1.0, 0.0);
    put("embeddings.position_embeddings.weight".into(), vec![POSITIONS, HIDDEN], 0.5, 0.0);
    put("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    put("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.2, 0.0);
    // Large enough that the bias visibly reshapes attention.
    put("encoder.relative_attention_bias.weight".into(), vec![NUM_BUCKETS, HEADS], 2.0, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.attn.q", HIDDEN, HIDDEN),
            ("attention.attn.k", HIDDEN, HIDDEN),
            ("attention.attn.v", HIDDEN, HIDDEN),
            ("attention.attn.o", HIDDEN, HIDDEN),
            ("intermediate.dense", INTER, HIDDEN),
            ("output.dense", HIDDEN, INTER),
        ] {
            put(format!("{p}.{name}.weight"), vec![out, inp], 2.5 / (inp as f32).sqrt(), 0.0);
            put(format!("{p}.{name}.bias"), vec![out], 0.3, 0.0);
        }
        for name in ["attention.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{name}.weight"), vec![HIDDEN], 0.2, 1.0);
            put(format!("{p}.{name}.bias"), vec![HIDDEN], 0.2, 0.0);
        }
    }
    put("pooler.dense.weight".into(), vec![HIDDEN, HIDDEN], 0.3, 0.0);
    put("pooler.dense.bias".into(), vec![HIDDEN], 0.1, 0.0);
    m
}

fn write_model(dir: &Path, w: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, vocab: &[String]) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = json!({
        "architectures": ["MPNetModel"], "model_type": "mpnet", "hidden_act": "gelu", "hidden_size": HIDDEN,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "intermediate_size": INTER,
        "max_position_embeddings": POSITIONS, "vocab_size": vocab.len(), "layer_norm_eps": EPS,
        "relative_attention_num_buckets": NUM_BUCKETS, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(vocab).to_string()).unwrap();
    std::fs::write(
        dir.join("modules.json"),
        json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ])
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        json!({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": true}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        json!({"max_seq_length": 48, "do_lower_case": false}).to_string(),
    )
    .unwrap();
    let mut entries: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        w.iter().map(|(n, (s, v))| (n.as_str(), "F32", s.clone(), f32_bytes(v))).collect();
    // An integer buffer, as real checkpoints carry: not a weight, ignored.
    let ids: Vec<u8> = (0..POSITIONS as i64).flat_map(|i| i.to_le_bytes()).collect();
    entries.push(("embeddings.position_ids", "I64", vec![1, POSITIONS], ids));
    write_safetensors(&dir.join("model.safetensors"), &entries);
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

struct Reference<'a>(&'a BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl Reference<'_> {
    fn t(&self, name: &str) -> Vec<f64> {
        self.0[name].1.iter().map(|&x| x as f64).collect()
    }
    fn linear(&self, base: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (w, b) = (self.t(&format!("{base}.weight")), self.t(&format!("{base}.bias")));
        let inp = x[0].len();
        x.iter()
            .map(|row| (0..b.len()).map(|o| b[o] + (0..inp).map(|i| w[o * inp + i] * row[i]).sum::<f64>()).collect())
            .collect()
    }
    fn norm(&self, base: &str, x: &mut [Vec<f64>]) {
        let (g, b) = (self.t(&format!("{base}.weight")), self.t(&format!("{base}.bias")));
        for row in x {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + EPS).sqrt() * g[i] + b[i];
            }
        }
    }
    /// Mean-pooled, normalised embedding of one sequence of token ids.
    fn embed(&self, ids: &[u32]) -> Vec<f64> {
        let (word, pos) =
            (self.t("embeddings.word_embeddings.weight"), self.t("embeddings.position_embeddings.weight"));
        // transformers' create_position_ids_from_input_ids, padding index 1.
        let mut count = 0;
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .map(|&id| {
                let p = if id == 1 {
                    1
                } else {
                    count += 1;
                    1 + count
                };
                (0..HIDDEN).map(|i| word[id as usize * HIDDEN + i] + pos[p * HIDDEN + i]).collect()
            })
            .collect();
        self.norm("embeddings.LayerNorm", &mut x);
        let table = self.t("encoder.relative_attention_bias.weight");
        let (n, dh) = (ids.len(), HIDDEN / HEADS);
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&format!("{p}.attention.attn.q"), &x);
            let k = self.linear(&format!("{p}.attention.attn.k"), &x);
            let v = self.linear(&format!("{p}.attention.attn.v"), &x);
            let mut ctx = vec![vec![0f64; HIDDEN]; n];
            for h in 0..HEADS {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..dh).map(|d| q[i][h * dh + d] * k[j][h * dh + d]).sum::<f64>() / (dh as f64).sqrt()
                                + table[relative_position_bucket(j as i64 - i as i64) * HEADS + h]
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        ctx[i][h * dh + d] = (0..n).map(|j| e[j] / z * v[j][h * dh + d]).sum();
                    }
                }
            }
            let mut a = self.linear(&format!("{p}.attention.attn.o"), &ctx);
            a.iter_mut().zip(&x).for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, x)| *a += x));
            self.norm(&format!("{p}.attention.LayerNorm"), &mut a);
            let mut inter = self.linear(&format!("{p}.intermediate.dense"), &a);
            inter.iter_mut().flatten().for_each(|v| *v = 0.5 * *v * (1.0 + erf64(*v / std::f64::consts::SQRT_2)));
            let mut out = self.linear(&format!("{p}.output.dense"), &inter);
            out.iter_mut().zip(&a).for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, a)| *o += a));
            self.norm(&format!("{p}.output.LayerNorm"), &mut out);
            x = out;
        }
        let mut pooled: Vec<f64> = (0..HIDDEN).map(|i| x.iter().map(|r| r[i]).sum::<f64>() / n as f64).collect();
        let norm = pooled.iter().map(|v| v * v).sum::<f64>().sqrt();
        pooled.iter_mut().for_each(|v| *v /= norm);
        pooled
    }
}

const TEXTS: [&str; 4] = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
    "She was the youngest of the two daughters.",
    "Mr. Knightley!",
    "It was a black morning's work for her; the want of Miss Taylor would be felt every hour of every day, and \
     the evening was long, long and grey, and she could not be easy in the quiet of it for many a day.",
];

#[test]
fn sentences_match_an_f64_reference() {
    let vocab = vocab();
    let w = weights(vocab.len(), 7);
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &w, &vocab);
    let model = Mpnet::open(dir.path()).unwrap();
    assert_eq!((model.max_seq_length, model.dim(), model.normalize), (48, HIDDEN, true));
    let tokens = model.tokenize(&TEXTS).unwrap();
    assert_eq!((tokens[2].ids[0], *tokens[2].ids.last().unwrap()), (0, 2), "<s> … </s>");
    assert_eq!(tokens[3].ids.len(), 48, "truncated at max_seq_length");
    assert_eq!(*tokens[3].ids.last().unwrap(), 2, "</s> kept after truncation");
    let got = model.embed(&TEXTS).unwrap();
    let reference = Reference(&w);
    for ((g, t), text) in got.iter().zip(&tokens).zip(TEXTS) {
        let want = reference.embed(&t.ids);
        let d = g.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(d < 2e-5, "{text:?}: max |Δ| {d}");
    }
    // A padding token inside a sequence keeps position 1 and does not advance the others.
    let mut ids = tokens[1].ids.clone();
    ids.insert(3, 1);
    let seq = quantsmith::arch::bert::Tokens { type_ids: vec![0; ids.len()], ids: ids.clone() };
    let pooled = model.pooled_tokens(&[seq], &|_, _| {}).unwrap().remove(0);
    let n = pooled.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let want = reference.embed(&ids);
    assert!(pooled.iter().zip(&want).all(|(a, b)| (*a as f64 / n - b).abs() < 2e-5));
}

fn options(out: &Path, method: &str, layout: &str, scheme: &str) -> QuantizeOptions {
    let emma = include_str!("../../../data/text/austen_emma.txt");
    QuantizeOptions {
        preset: None,
        method: solver(method).unwrap(),
        rules: vec![Rule::parse_scheme(scheme).unwrap()],
        layout: layout.into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out: out.to_path_buf(),
            calib_texts: vec![(PathBuf::from("austen_emma.txt"), emma[..60_000].to_string())],
            calib: CalibOptions { samples: 24, len: 32, seed: 0, ..Default::default() },
            imatrix: ImatrixSource::None,
            batch_seqs: 5,
            resume: false,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions::default(),
        budget: None,
    }
}

fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / a.len() as f64
}

#[test]
fn quantized_directories_read_back_as_mpnet() {
    let vocab = vocab();
    let w = weights(vocab.len(), 11);
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    write_model(&base_dir, &w, &vocab);
    let base = Mpnet::open(&base_dir).unwrap().embed(&TEXTS).unwrap();
    let input = base_dir.to_str().unwrap();

    let mut cos = BTreeMap::new();
    for (method, scheme) in [("rtn", "blk.*=int8"), ("rtn", "blk.*=int4:g16"), ("gptq", "blk.*=int4:g16")] {
        let mut embeddings = Vec::new();
        for layout in ["fake-quant", "compressed-tensors"] {
            let out = tmp.path().join(format!("{method}-{}-{layout}", scheme.replace([':', '*', '='], "_")));
            let report = quantize(input, &options(&out, method, layout, scheme), &|_, _, _| {}).unwrap();
            let quantized: Vec<&str> =
                report.tensors.iter().filter(|t| t.solver != "copy").map(|t| t.name.as_str()).collect();
            assert_eq!(quantized.len(), 6 * LAYERS, "{method} {scheme}: {quantized:?}");
            assert!(quantized.iter().all(|n| n.starts_with("blk.") && n.ends_with(".weight")));
            // The directory holds the input's tensors under their Hugging Face names.
            let hf = quantsmith::io::HfModel::open(&out).unwrap();
            let names: Vec<String> =
                quantsmith::tensor::TensorSource::tensors(&hf).into_iter().map(|t| t.name).collect();
            let mut want: Vec<&String> = w.keys().collect();
            let mut got: Vec<&String> = names.iter().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{method} {scheme} {layout}");
            embeddings.push(Mpnet::open(&out).unwrap().embed(&TEXTS).unwrap());
        }
        // Both layouts store the same quantized weights.
        for (a, b) in embeddings[0].iter().zip(&embeddings[1]) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5), "{method} {scheme}: layouts differ");
        }
        cos.insert(format!("{method} {scheme}"), mean_cosine(&embeddings[0], &base));
    }
    eprintln!("mean cosine to the base: {cos:?}");
    assert!(cos["rtn blk.*=int8"] > 0.999, "{cos:?}");
    assert!(cos["rtn blk.*=int4:g16"] > 0.9, "{cos:?}");
    assert!(cos["gptq blk.*=int4:g16"] > 0.9, "{cos:?}");
    assert!(cos["rtn blk.*=int8"] > cos["rtn blk.*=int4:g16"], "{cos:?}");
}
