//! The fuzz targets' inputs without a fuzzer: the seed corpora (small valid files of every
//! kind the readers take, made here) and every committed crash reproducer under
//! `fuzz/regressions/<target>/` go through the same harnesses as `cargo fuzz` runs
//! (`quantsmith::fuzzing`); none may panic. `QUANTSMITH_WRITE_FUZZ_SEEDS=1` also writes the
//! seeds to `fuzz/seeds/<target>/`, where `cargo fuzz run` starts from them.

use std::path::{Path, PathBuf};
use std::process::Command;

use quantsmith::formats::ggml::{quantize, GgmlType};
use quantsmith::fuzzing;
use quantsmith::io::{GgufArray, GgufValue, GgufWriter};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// GPT-2's byte alphabet (printable stand-ins for the 256 bytes).
fn byte_tokens() -> Vec<String> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                n += 1;
                255 + n
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn tensor(w: &mut GgufWriter, name: &str, shape: &[usize], ty: GgmlType, seed: u64) {
    let n: usize = shape.iter().product();
    let cols = *shape.last().unwrap();
    let v = if shape.len() == 1 { vec![1.0; n] } else { values(n, seed) };
    let bytes = match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        t => quantize(t, &v, cols, None).unwrap(),
    };
    let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    w.add_tensor(name, &ne, ty, &bytes).unwrap();
}

/// A one-block Llama (width 64, two heads of 32, MLP 128) with a byte-level BPE tokenizer and
/// a ggml type of a 32-block per tensor.
fn mini_gguf(path: &Path) {
    let mut w = GgufWriter::new(path).unwrap();
    w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    for (k, v) in [
        ("block_count", 1u32),
        ("context_length", 256),
        ("embedding_length", 64),
        ("feed_forward_length", 128),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
    ] {
        w.add_metadata(&format!("llama.{k}"), GgufValue::U32(v)).unwrap();
    }
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)).unwrap();
    w.add_metadata("llama.rope.freq_base", GgufValue::F32(10000.0)).unwrap();
    let mut tokens = byte_tokens();
    tokens.extend(["Em".to_string(), "ma".to_string(), "<s>".to_string()]);
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().unwrap() = 3;
    w.add_metadata("tokenizer.ggml.model", GgufValue::String("gpt2".into())).unwrap();
    w.add_metadata("tokenizer.ggml.pre", GgufValue::String("gpt-2".into())).unwrap();
    w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens))).unwrap();
    w.add_metadata("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types))).unwrap();
    w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(vec!["E m".into(), "m a".into()])))
        .unwrap();
    w.add_metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(258)).unwrap();
    w.add_metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(258)).unwrap();
    let v = 259;
    tensor(&mut w, "token_embd.weight", &[v, 64], GgmlType::Q8_0, 1);
    tensor(&mut w, "blk.0.attn_norm.weight", &[64], GgmlType::F32, 2);
    tensor(&mut w, "blk.0.attn_q.weight", &[64, 64], GgmlType::Q4_0, 3);
    tensor(&mut w, "blk.0.attn_k.weight", &[32, 64], GgmlType::F16, 4);
    tensor(&mut w, "blk.0.attn_v.weight", &[32, 64], GgmlType::Q8_0, 5);
    tensor(&mut w, "blk.0.attn_output.weight", &[64, 64], GgmlType::Q5_0, 6);
    tensor(&mut w, "blk.0.ffn_norm.weight", &[64], GgmlType::F32, 7);
    tensor(&mut w, "blk.0.ffn_gate.weight", &[128, 64], GgmlType::Q4_1, 8);
    tensor(&mut w, "blk.0.ffn_up.weight", &[128, 64], GgmlType::Q5_1, 9);
    tensor(&mut w, "blk.0.ffn_down.weight", &[64, 128], GgmlType::Iq4Nl, 10);
    tensor(&mut w, "output_norm.weight", &[64], GgmlType::F32, 11);
    tensor(&mut w, "output.weight", &[v, 64], GgmlType::Bf16, 12);
    w.finish().unwrap();
}

/// Tensors of every 256-block type (no model around them).
fn ktypes_gguf(path: &Path) {
    let mut w = GgufWriter::new(path).unwrap();
    w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    for (i, ty) in
        [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::Iq4Xs, GgmlType::Q8K]
            .into_iter()
            .enumerate()
    {
        if quantize(ty, &values(256, 1), 256, None).is_err() {
            continue;
        }
        tensor(&mut w, &format!("t{i}.weight"), &[2, 256], ty, i as u64 + 20);
    }
    w.finish().unwrap();
}

fn quantsmith(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Every target's seeds: (target, file name, bytes).
fn seeds(dir: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mini = dir.join("mini.gguf");
    mini_gguf(&mini);
    let ktypes = dir.join("ktypes.gguf");
    ktypes_gguf(&ktypes);
    v.push(("gguf", "mini-llama".into(), std::fs::read(&mini).unwrap()));
    v.push(("gguf", "k-types".into(), std::fs::read(&ktypes).unwrap()));

    let st = fuzzing::tiny_safetensors();
    v.push(("safetensors", "tiny-f32".into(), st.clone()));
    v.push(("hf_config", "llama".into(), fuzzing::TINY_CONFIG.as_bytes().to_vec()));
    let mut c: serde_json::Value = serde_json::from_str(fuzzing::TINY_CONFIG).unwrap();
    c["model_type"] = "qwen2".into();
    v.push(("hf_config", "qwen2".into(), c.to_string().into_bytes()));
    c["model_type"] = "llama".into();
    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    v.push(("hf_config", "rope-scaling".into(), c.to_string().into_bytes()));

    // The directory layouts, as quantsmith writes them for the mini model.
    let p = mini.to_str().unwrap();
    for (name, args) in [
        ("fake-quant-f16", vec!["--layout", "fake-quant:f16", "--method", "rtn"]),
        ("ct-int4-g64", vec!["--layout", "compressed-tensors", "--method", "rtn", "--scheme", "blk.*=int4:g64"]),
        ("ct-fp8", vec!["--layout", "compressed-tensors", "--method", "rtn", "--scheme", "blk.*=fp8_e4m3:ch"]),
        ("ct-int8-asym", vec!["--layout", "compressed-tensors", "--method", "rtn", "--scheme", "blk.*=int8:g32:asym"]),
        ("gptq-int4", vec!["--layout", "gptq", "--method", "rtn", "--scheme", "blk.*=int4:g64:scale=f16"]),
    ] {
        let out = dir.join(name);
        let mut a = vec!["quantize", p, "--out", out.to_str().unwrap(), "--allow-requantize", "--progress", "none"];
        a.extend(["--scheme", "token_embd=f16", "--scheme", "output=f16"]);
        a.extend(args);
        quantsmith(&a);
        let cfg = std::fs::read(out.join("config.json")).unwrap();
        let st = std::fs::read(out.join("model.safetensors")).unwrap();
        if name.starts_with("fake") {
            v.push(("safetensors", name.into(), st));
            v.push(("hf_config", name.into(), cfg));
        } else {
            v.push(("quantized_dir", name.into(), fuzzing::quantized_dir_input(&cfg, &st)));
        }
    }

    // Importance matrices: llama.cpp's legacy .dat and its GGUF form.
    let mut dat = Vec::new();
    dat.extend_from_slice(&2i32.to_le_bytes());
    for (name, n) in [("blk.0.attn_q.weight", 64usize), ("blk.0.ffn_down.weight", 128)] {
        dat.extend_from_slice(&(name.len() as i32).to_le_bytes());
        dat.extend_from_slice(name.as_bytes());
        dat.extend_from_slice(&4i32.to_le_bytes());
        dat.extend_from_slice(&(n as i32).to_le_bytes());
        for x in values(n, 3) {
            dat.extend_from_slice(&(x.abs() * 4.0).to_le_bytes());
        }
    }
    dat.extend_from_slice(&4i32.to_le_bytes());
    dat.extend_from_slice(&8i32.to_le_bytes());
    dat.extend_from_slice(b"emma.txt");
    v.push(("imatrix", "legacy-dat".into(), dat));
    let gi = dir.join("imatrix.gguf");
    let mut w = GgufWriter::new(&gi).unwrap();
    w.add_metadata("general.type", GgufValue::String("imatrix".into())).unwrap();
    w.add_metadata("imatrix.datasets", GgufValue::Array(GgufArray::String(vec!["emma.txt".into()]))).unwrap();
    w.add_metadata("imatrix.chunk_count", GgufValue::U32(4)).unwrap();
    let sums: Vec<u8> = values(64, 5).iter().flat_map(|x| (x.abs() * 16.0).to_le_bytes()).collect();
    w.add_tensor("blk.0.attn_q.weight.in_sum2", &[64, 1], GgmlType::F32, &sums).unwrap();
    w.add_tensor("blk.0.attn_q.weight.counts", &[1, 1], GgmlType::F32, &16f32.to_le_bytes()).unwrap();
    w.finish().unwrap();
    v.push(("imatrix", "gguf".into(), std::fs::read(&gi).unwrap()));

    for (i, spec) in quantsmith::formats::spec::LISTED.iter().enumerate() {
        v.push(("format_spec", format!("listed-{i:02}"), spec.as_bytes().to_vec()));
    }
    for spec in ["int4:g128:clip=mse", "e3m2:g32:scale=e8m0", "int3:g64:asym:scale=u4:sg=4", "log4:ch", "fixed8.4"] {
        v.push(("format_spec", spec.replace([':', '=', '.'], "_"), spec.as_bytes().to_vec()));
    }
    v.push((
        "recipe",
        "rules".into(),
        b"[[rule]]\npattern = \"blk.*.ffn_down.weight\"\nformat = \"q6_k\"\nsolver = \"gptq\"\n\n[[rule]]\npattern = \"blk.?.attn_*\"\nformat = \"int4:g64\"\n".to_vec(),
    ));
    v.push(("recipe", "scheme-lines".into(), b"blk.*=q4_k@rtn\noutput=q8_0\n".to_vec()));
    v
}

fn harness(target: &str) -> fn(&[u8]) {
    fuzzing::TARGETS.iter().find(|(n, _)| *n == target).map(|(_, f)| *f).unwrap_or_else(|| panic!("no target {target}"))
}

#[test]
fn seeds_and_crash_reproducers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    for (target, _, _) in fuzzing::TARGETS.iter().map(|(t, _)| (t, 0, 0)) {
        assert!(seeds.iter().any(|s| s.0 == *target), "no seed for target {target}");
    }
    let write = std::env::var("QUANTSMITH_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1");
    for (target, name, bytes) in &seeds {
        harness(target)(bytes);
        if write {
            let d = root().join("seeds").join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
    // Every committed input: the seeds the fuzzer starts from and the crashes it found.
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        for (target, f) in fuzzing::TARGETS {
            let d = root().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries {
                let p = e.unwrap().path();
                f(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
    }
    assert!(n >= seeds.len() || write, "the committed seeds are missing ({n} inputs under fuzz/)");
}

#[test]
fn the_seeds_are_valid_inputs() {
    // The seeds must get past the readers, or the fuzzer starts from nothing useful.
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    let mini = seeds.iter().find(|s| s.1 == "mini-llama").unwrap();
    let p = dir.path().join("check.gguf");
    std::fs::write(&p, &mini.2).unwrap();
    let g = quantsmith::io::GgufFile::open(&p).unwrap();
    quantsmith::arch::llama::LlamaConfig::from_gguf(&g).unwrap();
    let tok = quantsmith::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    assert!(!tok.encode("Emma", false).unwrap().is_empty());
    for (target, name, bytes) in &seeds {
        if *target == "quantized_dir" {
            let n = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), &bytes[2..2 + n]).unwrap();
            std::fs::write(d.join("model.safetensors"), &bytes[2 + n..]).unwrap();
            let m = quantsmith::io::ModelFile::open(&d).unwrap();
            quantsmith::arch::arch_for(&m).unwrap();
        }
        if *target == "format_spec" {
            quantsmith::formats::spec::parse(std::str::from_utf8(bytes).unwrap()).unwrap();
        }
    }
}
