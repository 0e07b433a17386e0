//! The bad-input matrix: corrupted and adversarial models, texts and options through the real
//! binary (`inspect`, `eval`, `quantize` into every layout). Every case must exit 2 with one
//! `error:` line (notes may come before it) that names the file and what was expected, print
//! no panic, and leave nothing in the output directory. The matrix (case → command → exit →
//! message) is written to `target/tmp/bad-input-matrix.md` for the record.

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use quantsmith::formats::ggml::GgmlType;
use quantsmith::io::{GgufArray, GgufFile, GgufValue, GgufWriter};

// ---------------------------------------------------------------------------------------------
// Models to corrupt

/// A GGUF model held as its parts, to be changed and written again.
#[derive(Clone)]
struct Model {
    meta: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Model {
    fn tiny() -> Model {
        let dir = tempfile::tempdir().unwrap();
        let p = tiny::Tiny::default().gguf_in(dir.path());
        let g = GgufFile::open(&p).unwrap();
        Model {
            meta: g.metadata().to_vec(),
            tensors: g
                .gguf_tensors()
                .iter()
                .map(|t| (t.name.clone(), t.ne.clone(), t.ty, g.tensor_bytes(&t.name).unwrap().to_vec()))
                .collect(),
        }
    }
    fn set(mut self, key: &str, v: GgufValue) -> Model {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.meta.push((key.into(), v)),
        }
        self
    }
    fn remove(mut self, key: &str) -> Model {
        self.meta.retain(|(k, _)| k != key);
        self
    }
    fn drop_tensor(mut self, name: &str) -> Model {
        self.tensors.retain(|t| t.0 != name);
        self
    }
    /// Changes one f32 value of a tensor.
    fn poke(mut self, name: &str, index: usize, v: f32) -> Model {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).unwrap();
        t.3[4 * index..4 * index + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// Adds a copy of `from` under `name`.
    fn copy_tensor(mut self, from: &str, name: &str) -> Model {
        let mut t = self.tensors.iter().find(|t| t.0 == from).unwrap().clone();
        t.0 = name.into();
        self.tensors.push(t);
        self
    }
    fn write(&self, path: &Path) {
        let mut w = GgufWriter::new(path).unwrap();
        for (k, v) in &self.meta {
            w.add_metadata(k, v.clone()).unwrap();
        }
        for (n, ne, ty, b) in &self.tensors {
            w.add_tensor(n, ne, *ty, b).unwrap();
        }
        w.finish().unwrap();
    }
    fn bytes(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        self.write(&p);
        std::fs::read(p).unwrap()
    }
}

/// Byte ranges of a GGUF header's parts, found by a parser of the test's own.
struct Layout {
    /// (what, start, end) of every structural field.
    fields: Vec<(String, usize, usize)>,
    /// Start of the data section.
    data: usize,
    /// Per tensor: name, offset of its `n_dims` field, of its type field, of its offset field,
    /// data offset, data bytes.
    tensors: Vec<(String, usize, usize, usize, u64)>,
    /// Per key: offset of the key's length field, and of the value.
    keys: BTreeMap<String, (usize, usize)>,
}

fn layout(b: &[u8]) -> Layout {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    let mut fields = vec![
        ("magic".to_string(), 0, 4),
        ("version".to_string(), 4, 8),
        ("tensor count".to_string(), 8, 16),
        ("metadata count".to_string(), 16, 24),
    ];
    let n_t = u64_at(8) as usize;
    let n_kv = u64_at(16) as usize;
    let mut p = 24;
    let mut keys = BTreeMap::new();
    fn scalar(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => panic!("type {ty}"),
        }
    }
    for _ in 0..n_kv {
        let start = p;
        let len = u64_at(p) as usize;
        let key = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
        p += 8 + len;
        let ty = u32_at(p);
        p += 4;
        let value = p;
        match ty {
            8 => p += 8 + u64_at(p) as usize,
            9 => {
                let et = u32_at(p);
                let n = u64_at(p + 4) as usize;
                p += 12;
                for _ in 0..n {
                    p += if et == 8 { 8 + u64_at(p) as usize } else { scalar(et) };
                }
            }
            t => p += scalar(t),
        }
        fields.push((format!("metadata `{key}`"), start, p));
        keys.insert(key, (start, value));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_t {
        let start = p;
        let len = u64_at(p) as usize;
        let name = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
        p += 8 + len;
        let dims_at = p;
        let nd = u32_at(p) as usize;
        p += 4 + 8 * nd;
        let type_at = p;
        p += 4;
        let offset_at = p;
        let off = u64_at(p);
        p += 8;
        fields.push((format!("tensor info `{name}`"), start, p));
        tensors.push((name, dims_at, type_at, offset_at, off));
    }
    let data = p.div_ceil(32) * 32;
    Layout { fields, data, tensors, keys }
}

// ---------------------------------------------------------------------------------------------
// Running the binary and recording the matrix

static MATRIX: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(case: &str, cmd: &str, code: Option<i32>, line: &str) {
    let line = line.replace('|', "\\|");
    MATRIX
        .lock()
        .unwrap()
        .push(format!("| {case} | {cmd} | {} | {line} |", code.map(|c| c.to_string()).unwrap_or("signal".into())));
}

fn write_matrix(name: &str) {
    let rows = MATRIX.lock().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let p = dir.join(format!("bad-input-matrix-{name}.md"));
    let mut s = String::from("| case | command | exit | message |\n|---|---|---|---|\n");
    for r in rows.iter().filter(|r| r.starts_with(&format!("| {name}:"))) {
        s.push_str(r);
        s.push('\n');
    }
    std::fs::write(p, s).unwrap();
}

fn texts(dir: &Path) -> (PathBuf, PathBuf) {
    let eval = dir.join("eval.txt");
    std::fs::write(&eval, tiny::text(20_000, 20_000).1).unwrap();
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, tiny::text(0, 20_000).1).unwrap();
    (eval, calib)
}

/// The commands a model case runs, by name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmd {
    Inspect,
    Eval,
    Rtn,
    Gptq,
    Ct,
    Gptqdir,
    Fq,
}

const ALL: &[Cmd] = &[Cmd::Inspect, Cmd::Eval, Cmd::Rtn, Cmd::Gptq, Cmd::Ct, Cmd::Gptqdir, Cmd::Fq];
const USE: &[Cmd] = &[Cmd::Eval, Cmd::Rtn, Cmd::Gptq, Cmd::Ct, Cmd::Gptqdir, Cmd::Fq];
const QUICK: &[Cmd] = &[Cmd::Inspect, Cmd::Eval, Cmd::Rtn];

fn args_of(cmd: Cmd, model: &Path, out: &Path, texts: &(PathBuf, PathBuf)) -> Vec<String> {
    let m = model.to_str().unwrap().to_string();
    let calib = ["--calib", texts.1.to_str().unwrap(), "--calib-samples", "2", "--calib-len", "32"];
    let mut v: Vec<String> = match cmd {
        Cmd::Inspect => vec!["inspect".into(), m],
        Cmd::Eval => vec![
            "eval".into(),
            m,
            "--text".into(),
            texts.0.to_str().unwrap().into(),
            "--ctx".into(),
            "64".into(),
            "--chunks".into(),
            "1".into(),
        ],
        Cmd::Rtn => vec![
            "quantize".into(),
            m,
            "--out".into(),
            out.join("x.gguf").to_str().unwrap().into(),
            "--method".into(),
            "rtn".into(),
            "--preset".into(),
            "Q8_0".into(),
        ],
        Cmd::Gptq => {
            let mut v: Vec<String> = vec![
                "quantize".into(),
                m,
                "--out".into(),
                out.join("x.gguf").to_str().unwrap().into(),
                "--preset".into(),
                "Q4_0".into(),
            ];
            v.extend(calib.iter().map(|s| s.to_string()));
            v
        }
        Cmd::Ct => vec![
            "quantize".into(),
            m,
            "--out".into(),
            out.join("ct").to_str().unwrap().into(),
            "--layout".into(),
            "compressed-tensors".into(),
            "--method".into(),
            "rtn".into(),
            "--scheme".into(),
            "blk.*=int4:g64".into(),
        ],
        Cmd::Gptqdir => {
            let mut v: Vec<String> = vec![
                "quantize".into(),
                m,
                "--out".into(),
                out.join("gq").to_str().unwrap().into(),
                "--layout".into(),
                "gptq".into(),
                "--scheme".into(),
                "blk.*=int4:g64:scale=f16".into(),
            ];
            v.extend(calib.iter().map(|s| s.to_string()));
            v
        }
        Cmd::Fq => vec![
            "quantize".into(),
            m,
            "--out".into(),
            out.join("fq").to_str().unwrap().into(),
            "--layout".into(),
            "fake-quant".into(),
            "--method".into(),
            "rtn".into(),
            "--scheme".into(),
            "blk.*=int8".into(),
        ],
    };
    v.push("--progress".into());
    v.push("none".into());
    v
}

/// Runs `args`; the run must fail as the contract says: exit 2, no panic, one `error:` line
/// last (notes before it), every needle in it, and `out` left empty.
fn must_fail(case: &str, label: &str, args: &[String], out: &Path, needles: &[&str]) -> Vec<String> {
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(args)
        .env("QUANTSMITH_CACHE", out.parent().unwrap().join("cache"))
        .output()
        .expect("run quantsmith");
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let last = lines.last().copied().unwrap_or("");
    record(case, label, o.status.code(), last);
    let mut problems = Vec::new();
    let ctx = format!("[{case} / {label}] {}\n{stderr}", args.join(" "));
    if o.status.code() != Some(2) {
        problems.push(format!("exit {:?}: {ctx}", o.status.code()));
    }
    if stderr.contains("panicked") {
        problems.push(format!("panic: {ctx}"));
    }
    if !last.starts_with("error: ") || !lines[..lines.len().saturating_sub(1)].iter().all(|l| l.starts_with("note: ")) {
        problems.push(format!("not one error line after notes: {ctx}"));
    }
    for n in needles {
        if !last.contains(n) {
            problems.push(format!("message should mention {n:?}: {ctx}"));
        }
    }
    if last.contains("NaN") && !needles.contains(&"NaN") {
        problems.push(format!("NaN in the message: {ctx}"));
    }
    let left: Vec<String> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    if !left.is_empty() {
        problems.push(format!("left {left:?} in the output directory: {ctx}"));
        std::fs::remove_dir_all(out).unwrap();
    }
    problems
}

/// Runs every command of `cmds` on the model file `path`.
fn model_case(case: &str, path: &Path, cmds: &[Cmd], needles: &[&str], texts: &(PathBuf, PathBuf)) -> Vec<String> {
    let out = path.parent().unwrap().join("out");
    let mut problems = Vec::new();
    for &c in cmds {
        let args = args_of(c, path, &out, texts);
        problems.extend(must_fail(case, &format!("{c:?}").to_lowercase(), &args, &out, needles));
    }
    problems
}

fn check(problems: Vec<String>) {
    assert!(problems.is_empty(), "{} problems:\n\n{}", problems.len(), problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// GGUF files

#[test]
fn gguf_structure_truncations_and_lying_fields() {
    let dir = tempfile::tempdir().unwrap();
    let t = texts(dir.path());
    let good = Model::tiny().bytes();
    let lay = layout(&good);
    let case_dir = dir.path().join("case");
    std::fs::create_dir_all(&case_dir).unwrap();
    let path = case_dir.join("bad.gguf");
    let mut problems = Vec::new();
    let mut run = |case: String, bytes: Vec<u8>, cmds: &[Cmd], needles: &[&str]| {
        std::fs::write(&path, &bytes).unwrap();
        problems.extend(model_case(&format!("gguf:{case}"), &path, cmds, needles, &t));
    };
    // Truncated at the start, the end and the middle of every structural field.
    let mut cuts: Vec<(String, usize)> = Vec::new();
    for (what, s, e) in &lay.fields {
        cuts.push((format!("cut at the start of {what}"), *s));
        cuts.push((format!("cut inside {what}"), (s + e) / 2));
    }
    cuts.push(("cut before the data section".into(), lay.data));
    for (name, _, _, _, off) in &lay.tensors {
        cuts.push((format!("cut inside `{name}`'s data"), lay.data + *off as usize + 1));
    }
    cuts.push(("cut one byte short".into(), good.len() - 1));
    for (what, at) in cuts {
        let cmds: &[Cmd] = if at == 0 { QUICK } else { &[Cmd::Inspect, Cmd::Rtn] };
        run(what, good[..at].to_vec(), cmds, &["bad.gguf"]);
    }
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    run("wrong magic".into(), patch(0, b"GGUX"), QUICK, &["bad.gguf", "magic"]);
    run("version 1".into(), patch(4, &1u32.to_le_bytes()), QUICK, &["bad.gguf", "version"]);
    run("version 99".into(), patch(4, &99u32.to_le_bytes()), QUICK, &["bad.gguf", "version"]);
    run("tensor count one more".into(), patch(8, &(lay.tensors.len() as u64 + 1).to_le_bytes()), QUICK, &["bad.gguf"]);
    run("tensor count 2^62".into(), patch(8, &(1u64 << 62).to_le_bytes()), QUICK, &["bad.gguf"]);
    run("metadata count 2^62".into(), patch(16, &(1u64 << 62).to_le_bytes()), QUICK, &["bad.gguf"]);
    let (k0, _) = lay.keys["general.architecture"];
    run("key length 2^60".into(), patch(k0, &(1u64 << 60).to_le_bytes()), QUICK, &["bad.gguf"]);
    let (_, tok) = lay.keys["tokenizer.ggml.tokens"];
    run("token array count 2^61".into(), patch(tok + 4, &(1u64 << 61).to_le_bytes()), QUICK, &["bad.gguf"]);
    run("token array of unknown type".into(), patch(tok, &77u32.to_le_bytes()), QUICK, &["bad.gguf"]);
    let (_, arch_v) = lay.keys["general.architecture"];
    run("value type 99".into(), patch(arch_v - 4, &99u32.to_le_bytes()), QUICK, &["bad.gguf"]);
    let q = lay.tensors.iter().find(|t| t.0 == "blk.0.attn_q.weight").unwrap().clone();
    run("9 dimensions".into(), patch(q.1, &9u32.to_le_bytes()), QUICK, &["bad.gguf", "blk.0.attn_q.weight"]);
    run(
        "dimension 2^40".into(),
        patch(q.1 + 4, &(1u64 << 40).to_le_bytes()),
        QUICK,
        &["bad.gguf", "blk.0.attn_q.weight"],
    );
    run("dimension 0".into(), patch(q.1 + 4, &0u64.to_le_bytes()), QUICK, &["bad.gguf", "blk.0.attn_q.weight"]);
    run("unknown ggml type".into(), patch(q.2, &99u32.to_le_bytes()), QUICK, &["bad.gguf", "blk.0.attn_q.weight"]);
    run(
        "offset past the end".into(),
        patch(q.3, &(1u64 << 40).to_le_bytes()),
        QUICK,
        &["bad.gguf", "blk.0.attn_q.weight"],
    );
    run("misaligned offset".into(), patch(q.3, &(q.4 + 1).to_le_bytes()), QUICK, &["bad.gguf", "blk.0.attn_q.weight"]);
    // The name `blk.0.attn_k.weight` rewritten as `blk.0.attn_q.weight`: a duplicate, and a
    // missing tensor.
    let k = lay.tensors.iter().find(|t| t.0 == "blk.0.attn_k.weight").unwrap().clone();
    let name_at = k.1 - "blk.0.attn_k.weight".len();
    run(
        "duplicate tensor name".into(),
        patch(name_at, b"blk.0.attn_q.weight"),
        QUICK,
        &["bad.gguf", "blk.0.attn_q.weight"],
    );
    write_matrix("gguf");
    check(problems);
}

#[test]
fn gguf_semantic_defects() {
    let dir = tempfile::tempdir().unwrap();
    let t = texts(dir.path());
    let base = Model::tiny();
    let mut problems = Vec::new();
    let mut n = 0;
    let mut run = |case: &str, m: Model, cmds: &[Cmd], needles: &[&str]| {
        n += 1;
        let d = dir.path().join(format!("case{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("bad.gguf");
        m.write(&p);
        let mut needles = needles.to_vec();
        needles.push("bad.gguf");
        problems.extend(model_case(&format!("model:{case}"), &p, cmds, &needles, &t));
    };
    let f32v = GgufValue::F32;
    let u32v = GgufValue::U32;
    run("NaN weight", base.clone().poke("blk.0.attn_q.weight", 7, f32::NAN), USE, &["blk.0.attn_q.weight", "NaN"]);
    run(
        "+Inf in the embedding",
        base.clone().poke("token_embd.weight", 300, f32::INFINITY),
        USE,
        &["token_embd.weight", "inf"],
    );
    run(
        "NaN norm gain",
        base.clone().poke("blk.1.ffn_norm.weight", 3, f32::NAN),
        USE,
        &["blk.1.ffn_norm.weight", "NaN"],
    );
    run("NaN output norm", base.clone().poke("output_norm.weight", 0, f32::NAN), USE, &["output_norm.weight", "NaN"]);
    run("NaN head", base.clone().poke("output.weight", 5, f32::NAN), USE, &["output.weight", "NaN"]);
    run("missing tensor", base.clone().drop_tensor("blk.1.ffn_up.weight"), USE, &["blk.1.ffn_up.weight"]);
    run("missing output norm", base.clone().drop_tensor("output_norm.weight"), USE, &["output_norm.weight"]);
    run(
        "block_count smaller than the blocks",
        base.clone().set("llama.block_count", u32v(1)),
        USE,
        &["llama.block_count", "blk.1"],
    );
    run("block_count larger than the blocks", base.clone().set("llama.block_count", u32v(3)), USE, &["blk.2"]);
    run("a stray block", base.clone().copy_tensor("blk.0.attn_q.weight", "blk.7.attn_q.weight"), USE, &["blk.7"]);
    run("head_count 0", base.clone().set("llama.attention.head_count", u32v(0)), USE, &["llama.attention.head_count"]);
    run("embedding_length 0", base.clone().set("llama.embedding_length", u32v(0)), USE, &["llama.embedding_length"]);
    run(
        "head_count_kv 3",
        base.clone().set("llama.attention.head_count_kv", u32v(3)),
        USE,
        &["llama.attention.head_count_kv"],
    );
    run("feed_forward_length wrong", base.clone().set("llama.feed_forward_length", u32v(384)), USE, &["ffn", "384"]);
    run(
        "epsilon NaN",
        base.clone().set("llama.attention.layer_norm_rms_epsilon", f32v(f32::NAN)),
        USE,
        &["layer_norm_rms_epsilon", "NaN"],
    );
    run(
        "epsilon negative",
        base.clone().set("llama.attention.layer_norm_rms_epsilon", f32v(-1e-5)),
        USE,
        &["layer_norm_rms_epsilon"],
    );
    run("RoPE base 0", base.clone().set("llama.rope.freq_base", f32v(0.0)), USE, &["llama.rope.freq_base"]);
    run(
        "RoPE base NaN",
        base.clone().set("llama.rope.freq_base", f32v(f32::NAN)),
        USE,
        &["llama.rope.freq_base", "NaN"],
    );
    run(
        "unknown architecture",
        base.clone().set("general.architecture", GgufValue::String("gptj".into())),
        USE,
        &["general.architecture", "gptj"],
    );
    run("no architecture", base.clone().remove("general.architecture"), ALL, &["general.architecture"]);
    run(
        "feed_forward_length missing",
        base.clone().remove("llama.feed_forward_length"),
        USE,
        &["llama.feed_forward_length"],
    );
    run(
        "block_count as a string",
        base.clone().set("llama.block_count", GgufValue::String("2".into())),
        USE,
        &["llama.block_count"],
    );
    let mut tokens = tiny::byte_tokens();
    tokens.push("<s>".into());
    for i in 0..40 {
        tokens.push(format!("<extra{i}>"));
    }
    let ntok = tokens.len();
    let big_vocab = base
        .clone()
        .set("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens)))
        .set("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(vec![1; ntok])));
    run("vocabulary larger than the embedding", big_vocab, USE, &["297", "257"]);
    run("no tokenizer", base.clone().remove("tokenizer.ggml.tokens"), USE, &["tokenizer.ggml.tokens"]);
    run(
        "unknown tokenizer model",
        base.clone().set("tokenizer.ggml.model", GgufValue::String("sentencepiece-x".into())),
        USE,
        &["tokenizer.ggml.model"],
    );
    run(
        "BOS id out of range",
        base.clone().set("tokenizer.ggml.bos_token_id", u32v(5000)),
        USE,
        &["tokenizer.ggml.bos_token_id", "5000"],
    );
    let mut transposed = base.clone();
    transposed.tensors.iter_mut().find(|t| t.0 == "blk.0.ffn_down.weight").unwrap().1 =
        vec![tiny::D as u64, tiny::FF as u64];
    run("tensor transposed", transposed, USE, &["blk.0.ffn_down.weight", "shape"]);
    write_matrix("model");
    check(problems);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directories

/// Runs the binary and insists on success.
fn ok(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {stderr}");
    stderr
}

/// The tiny model as a Hugging Face directory of f32 safetensors, written by quantsmith.
fn hf_tiny(dir: &Path) -> PathBuf {
    let g = tiny::Tiny::default().gguf_in(dir);
    let hf = dir.join("hf");
    ok(&[
        "quantize",
        g.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
        "--layout",
        "fake-quant:f32",
        "--method",
        "rtn",
        "--progress",
        "none",
    ]);
    for f in ["hf.md", "hf.svg"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::remove_file(&g).unwrap();
    hf
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Rewrites a safetensors file: `f(name, dtype, bytes)` may change any entry.
fn rewrite_st(path: &Path, f: &mut dyn FnMut(&str, &mut String, &mut Vec<u8>)) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    let mut entries: Vec<(String, serde_json::Value)> = header.into_iter().collect();
    entries.sort_by_key(|(k, v)| if k == "__metadata__" { 0 } else { v["data_offsets"][0].as_u64().unwrap() + 1 });
    let mut out_header = serde_json::Map::new();
    let mut blob = Vec::new();
    for (k, mut v) in entries {
        if k == "__metadata__" {
            out_header.insert(k, v);
            continue;
        }
        let (s, e) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        let mut dtype = v["dtype"].as_str().unwrap().to_string();
        let mut bytes = data[s..e].to_vec();
        f(&k, &mut dtype, &mut bytes);
        v["dtype"] = dtype.into();
        v["data_offsets"] = serde_json::json!([blob.len(), blob.len() + bytes.len()]);
        blob.extend_from_slice(&bytes);
        out_header.insert(k, v);
    }
    let mut h = serde_json::to_vec(&out_header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&blob);
    std::fs::write(path, file).unwrap();
}

#[test]
fn hugging_face_directory_defects() {
    let dir = tempfile::tempdir().unwrap();
    let t = texts(dir.path());
    let good = hf_tiny(dir.path());
    let st = |d: &Path| d.join("model.safetensors");
    let mut problems = Vec::new();
    let mut n = 0;
    let mut run = |case: &str, change: &mut dyn FnMut(&Path), cmds: &[Cmd], needles: &[&str]| {
        n += 1;
        let d = dir.path().join(format!("case{n}"));
        let m = d.join("model");
        copy_dir(&good, &m);
        change(&m);
        problems.extend(model_case(&format!("hf:{case}"), &m, cmds, needles, &t));
    };
    let config = |m: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = m.join("config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(p, serde_json::to_vec(&c).unwrap()).unwrap();
    };
    run(
        "config.json not JSON",
        &mut |m| std::fs::write(m.join("config.json"), "{ \"model_type\": ").unwrap(),
        ALL,
        &["config.json"],
    );
    run(
        "config.json missing hidden_size",
        &mut |m| {
            config(m, &|c| {
                c.as_object_mut().unwrap().remove("hidden_size");
            })
        },
        USE,
        &["config.json", "hidden_size"],
    );
    run(
        "unknown model_type",
        &mut |m| config(m, &|c| c["model_type"] = "gptj".into()),
        USE,
        &["config.json", "model_type", "gptj"],
    );
    run(
        "no attention heads",
        &mut |m| config(m, &|c| c["num_attention_heads"] = 0.into()),
        USE,
        &["config.json", "num_attention_heads"],
    );
    run(
        "negative epsilon",
        &mut |m| config(m, &|c| c["rms_norm_eps"] = (-1e-6).into()),
        USE,
        &["config.json", "rms_norm_eps"],
    );
    run(
        "fewer layers than stored",
        &mut |m| config(m, &|c| c["num_hidden_layers"] = 1.into()),
        USE,
        &["config.json", "num_hidden_layers", "model.layers.1"],
    );
    run(
        "header length past the end",
        &mut |m| {
            let mut b = std::fs::read(st(m)).unwrap();
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            std::fs::write(st(m), b).unwrap();
        },
        ALL,
        &["model.safetensors"],
    );
    run(
        "header not JSON",
        &mut |m| {
            let mut b = std::fs::read(st(m)).unwrap();
            b[8] = b'!';
            std::fs::write(st(m), b).unwrap();
        },
        ALL,
        &["model.safetensors"],
    );
    run(
        "truncated data",
        &mut |m| {
            let b = std::fs::read(st(m)).unwrap();
            std::fs::write(st(m), &b[..b.len() - 1000]).unwrap();
        },
        ALL,
        &["model.safetensors"],
    );
    run(
        "weight stored as I8",
        &mut |m| {
            rewrite_st(&st(m), &mut |name, dtype, bytes| {
                if name == "model.layers.0.self_attn.q_proj.weight" {
                    *dtype = "I8".into();
                    bytes.truncate(bytes.len() / 4);
                }
            })
        },
        USE,
        &["model.layers.0.self_attn.q_proj.weight", "I8"],
    );
    run(
        "weight stored as F8_E4M3",
        &mut |m| {
            rewrite_st(&st(m), &mut |name, dtype, bytes| {
                if name == "model.layers.1.mlp.down_proj.weight" {
                    *dtype = "F8_E4M3".into();
                    bytes.truncate(bytes.len() / 4);
                }
            })
        },
        USE,
        &["model.layers.1.mlp.down_proj.weight", "F8_E4M3"],
    );
    run(
        "weight of an unknown dtype",
        &mut |m| {
            rewrite_st(&st(m), &mut |name, dtype, _| {
                if name == "model.norm.weight" {
                    *dtype = "Q9".into();
                }
            })
        },
        ALL,
        &["model.safetensors", "Q9"],
    );
    run(
        "NaN in a norm",
        &mut |m| {
            rewrite_st(&st(m), &mut |name, _, bytes| {
                if name == "model.layers.1.post_attention_layernorm.weight" {
                    bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
                }
            })
        },
        USE,
        &["model.layers.1.post_attention_layernorm.weight", "NaN"],
    );
    run(
        "no tokenizer.json",
        &mut |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap(),
        USE,
        &["tokenizer.json"],
    );
    run(
        "tokenizer.json not JSON",
        &mut |m| std::fs::write(m.join("tokenizer.json"), "{").unwrap(),
        USE,
        &["tokenizer.json"],
    );
    write_matrix("hf");
    check(problems);
}

// ---------------------------------------------------------------------------------------------
// Texts, options and outputs

#[test]
fn texts_options_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let t = texts(dir.path());
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap().to_string();
    let x = format!("{o}/x.gguf");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [0x47u8, 0x00, 0xff, 0xfe, 0x80, 0x41]).unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Call me Ishmael.").unwrap();
    let (e, c) = (t.0.to_str().unwrap(), t.1.to_str().unwrap());
    let (empty, binary, short) = (empty.to_str().unwrap(), binary.to_str().unwrap(), short.to_str().unwrap());
    let mut problems = Vec::new();
    let mut run = |case: &str, args: &[&str], needles: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--progress".to_string(), "none".to_string()]);
        problems.extend(must_fail(&format!("io:{case}"), args[0], &v, &out, needles));
    };
    let rtn = ["quantize", m, "--out", &x, "--method", "rtn", "--preset", "Q8_0"];
    let gptq =
        ["quantize", m, "--out", &x, "--preset", "Q4_0", "--calib", c, "--calib-samples", "2", "--calib-len", "32"];
    let gptq_sl = |samples: &str, len: &str| -> Vec<String> {
        ["quantize", m, "--out", &x, "--preset", "Q4_0", "--calib", c, "--calib-samples", samples, "--calib-len", len]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let with =
        |base: &[&str], extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let mut run_v = |case: &str, v: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        run(case, &a, needles)
    };
    run_v("eval on an empty text", with(&["eval", m, "--text", empty, "--ctx", "64"], &[]), &["empty.txt"]);
    run_v("eval on a binary file", with(&["eval", m, "--text", binary, "--ctx", "64"], &[]), &["binary.txt", "UTF-8"]);
    run_v(
        "eval on a text too short",
        with(&["eval", m, "--text", short, "--ctx", "64"], &[]),
        &["short.txt", "too short"],
    );
    run_v("eval --ctx 0", with(&["eval", m, "--text", e, "--ctx", "0"], &[]), &["--ctx"]);
    run_v("eval --ctx 10^10", with(&["eval", m, "--text", e, "--ctx", "10000000000"], &[]), &["--ctx"]);
    run_v("eval --chunks 0", with(&["eval", m, "--text", e, "--ctx", "64", "--chunks", "0"], &[]), &["--chunks"]);
    run_v("eval of a missing file", with(&["eval", "nosuch.gguf", "--text", e], &[]), &["nosuch.gguf"]);
    run_v("calibration on an empty text", with(&gptq, &["--calib", empty]), &["empty.txt"]);
    run_v("calibration on a binary file", with(&gptq, &["--calib", binary]), &["binary.txt", "UTF-8"]);
    run_v(
        "calibration text too short",
        with(
            &[
                "quantize",
                m,
                "--out",
                &x,
                "--preset",
                "Q4_0",
                "--calib",
                short,
                "--calib-samples",
                "4",
                "--calib-len",
                "64",
            ],
            &[],
        ),
        &["short.txt"],
    );
    run_v("--calib-len 0", gptq_sl("2", "0"), &["--calib-len"]);
    run_v("--calib-len 10^10 (rtn)", with(&rtn, &["--calib-len", "10000000000"]), &["--calib-len"]);
    run_v("--calib-len 10^10", gptq_sl("2", "10000000000"), &["--calib-len"]);
    run_v("--calib-len past the context", gptq_sl("2", "100000"), &["--calib-len", "512"]);
    run_v("--calib-samples 0", gptq_sl("0", "32"), &["--calib-samples"]);
    run_v("--calib-samples 10^12", gptq_sl("1000000000000", "32"), &["--calib-samples"]);
    run_v("--eval-ctx 0", with(&rtn, &["--eval", e, "--eval-ctx", "0"]), &["--eval-ctx"]);
    run_v("--eval-chunks 0", with(&rtn, &["--eval", e, "--eval-chunks", "0"]), &["--eval-chunks"]);
    run_v("--eval on a text too short", with(&rtn, &["--eval", short]), &["short.txt", "too short"]);
    run_v("--threads 0", with(&rtn, &["--threads", "0"]), &["--threads"]);
    run_v("--out is the input", with(&["quantize", m, "--out", m, "--method", "rtn", "--force"], &[]), &["input"]);
    run_v("--outliers into GGUF", with(&gptq, &["--outliers", "0.01"]), &["fake-quant", "gptq:outliers=0.01"]);
    run_v(
        "--outliers 0.5",
        with(
            &[
                "quantize",
                m,
                "--out",
                &format!("{o}/fq"),
                "--layout",
                "fake-quant",
                "--scheme",
                "blk.*=int4:g64",
                "--calib",
                c,
                "--calib-samples",
                "2",
                "--calib-len",
                "32",
            ],
            &["--outliers", "0.5"],
        ),
        &["--outliers", "(0, 0.2]"],
    );
    run_v("--lowrank into GGUF", with(&gptq, &["--lowrank", "8"]), &["fake-quant", "gptq:lowrank=8", "rank-8"]);
    let fq = format!("{o}/fq");
    let fq_int4 = [
        "quantize",
        m,
        "--out",
        &fq,
        "--layout",
        "fake-quant",
        "--scheme",
        "blk.*=int4:g64",
        "--calib",
        c,
        "--calib-samples",
        "2",
        "--calib-len",
        "32",
    ];
    run_v(
        "--lowrank larger than the layer",
        with(&fq_int4, &["--lowrank", "300"]),
        &["blk.0.attn_q.weight", "rank-300", "from 1 to 255"],
    );
    run_v("--lowrank 0", with(&fq_int4, &["--lowrank", "0"]), &["--lowrank 0", "rank"]);
    run_v("--calib-weighting foo", with(&fq_int4, &["--calib-weighting", "foo"]), &["--calib-weighting foo", "rsq"]);
    run_v(
        "--lowrank with a size budget",
        with(&fq_int4, &["--lowrank", "4", "--target-bpw", "5"]),
        &["size budget", "lowrank=4"],
    );
    run_v("--lowrank 8:int4", with(&fq_int4, &["--lowrank", "8:int4"]), &["--lowrank 8:int4", "int8"]);
    run_v("--outliers with rtn", with(&rtn, &["--outliers", "0.01"]), &["--outliers", "gptq"]);
    run_v(
        "--method quantease:sweeps=0",
        with(&["quantize", m, "--out", &x, "--method", "quantease:sweeps=0"], &[]),
        &["sweeps=0"],
    );
    // Nested precision: a list that does not decrease, a layout or format that cannot hold
    // nested codes, a solver that fits one precision, kept outliers beside it.
    let ct = format!("{o}/ct");
    let nested = |scheme: &str, layout: &str, extra: &[&str]| -> Vec<String> {
        let method = if extra.contains(&"--method") { &[][..] } else { &["--method", "rtn"][..] };
        let mut v: Vec<String> = ["quantize", m, "--out", &ct, "--layout", layout, "--scheme", scheme]
            .iter()
            .chain(method)
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let i8a = "blk.*=int8:g64:asym";
    run_v("--nested 4,8", nested(i8a, "compressed-tensors", &["--nested", "4,8"]), &["--nested 4,8", "decreasing"]);
    run_v("--nested 8", nested(i8a, "compressed-tensors", &["--nested", "8"]), &["--nested 8", "two bit widths"]);
    run_v("--nested 8,4,x", nested(i8a, "compressed-tensors", &["--nested", "8,4,x"]), &["`x`"]);
    run_v("--nested 8,4:foo", nested(i8a, "compressed-tensors", &["--nested", "8,4:foo"]), &["`foo`", "joint"]);
    run_v("--nested 8,4@1", nested(i8a, "compressed-tensors", &["--nested", "8,4@1"]), &["--nested 8,4@1", "weight"]);
    run_v(
        "--nested into fake-quant",
        nested(i8a, "fake-quant", &["--nested", "8,4,2"]),
        &["nested", "compressed-tensors", "gptq", "--slice"],
    );
    run_v("--nested into GGUF", with(&gptq, &["--nested", "8,4,2"]), &["nested", "q4_0"]);
    run_v(
        "--nested on symmetric codes",
        nested("blk.*=int8:g64", "compressed-tensors", &["--nested", "8,4,2"]),
        &["blk.", "asymmetric", "int8:gN:asym"],
    );
    run_v(
        "--nested 4,2 on int8 codes",
        nested(i8a, "compressed-tensors", &["--nested", "4,2"]),
        &["4-bit", "int4:gN:asym"],
    );
    run_v(
        "--nested with quantease",
        nested(i8a, "compressed-tensors", &["--nested", "8,4,2", "--method", "quantease"]),
        &["--nested 8,4,2", "quantease"],
    );
    run_v(
        "--nested with --outliers",
        nested(
            i8a,
            "compressed-tensors",
            &["--method", "gptq", "--nested", "8,4,2", "--outliers", "0.01", "--calib", c],
        ),
        &["nested", "outliers"],
    );
    run_v(
        "--nested with no integer tensor",
        nested("blk.*=f16", "compressed-tensors", &["--nested", "8,4,2"]),
        &["nested", "integer", "int8:g64:asym"],
    );
    run_v(
        "eval --slice on a plain model",
        with(&["eval", m, "--text", e, "--slice", "4"], &[]),
        &["tiny.gguf", "nested"],
    );
    run_v("eval --slice 9", with(&["eval", m, "--text", e, "--slice", "9"], &[]), &["--slice"]);
    // An existing (empty) directory where a GGUF file should go: refused before any work.
    let adir = dir.path().join("adir.gguf");
    std::fs::create_dir_all(&adir).unwrap();
    run_v(
        "--out an existing empty directory (gguf)",
        with(&["quantize", m, "--out", adir.to_str().unwrap(), "--method", "rtn"], &[]),
        &["adir.gguf", "is a directory"],
    );
    run_v(
        "--out in a missing directory",
        with(&["quantize", m, "--out", &format!("{o}/no/such/x.gguf"), "--method", "rtn"], &[]),
        &["does not exist"],
    );
    write_matrix("io");
    check(problems);
}

#[test]
fn calibration_options_that_change_nothing_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let out = dir.path().join("x.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(["quantize", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn"])
        .args(["--preset", "Q8_0", "--calib-samples", "7", "--calib-len", "99", "--progress", "none"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("note: --calib-samples, --calib-len have no effect: --method rtn without --imatrix"), "{e}");
    // With --imatrix they calibrate: nothing to say.
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(["quantize", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn", "--imatrix"])
        .args(["--preset", "Q8_0", "--calib-samples", "2", "--calib-len", "64", "--progress", "none", "--force"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !e.contains("no effect"), "{e}");
}

/// Issue 8's options: rotations, scale transforms, activation and KV-cache formats, and a
/// recorded runtime that does not make sense.
#[test]
fn rotation_and_online_quantization_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap().to_string();
    let (x, d) = (format!("{o}/x.gguf"), format!("{o}/d"));
    let mut problems = Vec::new();
    let mut run = |case: &str, extra: &[&str], gguf: bool, needles: &[&str]| {
        let mut v: Vec<String> = ["quantize", m, "--out"].iter().map(|s| s.to_string()).collect();
        if gguf {
            v.extend(["x".into(), "--preset".into(), "Q4_0".into()]);
            v[3] = x.clone();
        } else {
            v.extend([d.clone(), "--layout".into(), "fake-quant".into()]);
        }
        v.extend(["--method", "rtn", "--progress", "none"].iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        problems.extend(must_fail(&format!("transforms:{case}"), "quantize", &v, &out, needles));
    };
    run("--act with a ggml block type", &["--act", "q4_k"], false, &["--act", "q4_k", "ggml block type"]);
    run("--kv groups that do not divide a head", &["--kv", "int4:g48"], false, &["--kv", "int4:g48"]);
    run("--act per tensor", &["--act", "int8:t"], false, &["--act", "per-tensor"]);
    run("--act static with groups", &["--act", "int8:g32:static"], false, &["--act", "static"]);
    run("--act into GGUF", &["--act", "int8"], true, &["GGUF cannot carry", "fake-quant"]);
    run("--kv into GGUF", &["--kv", "int4"], true, &["GGUF cannot carry", "KV-cache"]);
    run("online rotation into GGUF", &["--rotate", "hadamard:online"], true, &["GGUF cannot carry", "online Hadamard"]);
    run("unknown rotation", &["--rotate", "spiral"], true, &["not a rotation"]);
    run(
        "rotation among the transforms",
        &["--transform", "smoothquant", "--transform", "rotate:hadamard"],
        true,
        &["--rotate"],
    );
    run("SmoothQuant strength past 1", &["--transform", "smoothquant:1.5"], true, &["migration strength"]);
    run("AWQ grid of 0", &["--transform", "awq:grid=0"], true, &["grid"]);
    run("unknown transform", &["--transform", "quarot"], true, &["unknown transform", "rotate"]);
    run("bias correction option", &["--transform", "bias-correct:global"], true, &["bias-correct:local"]);
    // A directory whose recorded runtime is not one quantsmith can run.
    let hf = dir.path().join("hf");
    ok(&[
        "quantize",
        m,
        "--out",
        hf.to_str().unwrap(),
        "--layout",
        "fake-quant",
        "--method",
        "rtn",
        "--act",
        "int8",
        "--progress",
        "none",
    ]);
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["quantsmith_runtime"]["act"], "int8");
    cfg["quantsmith_runtime"]["act"] = serde_json::json!("q4_k");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let t = texts(dir.path());
    let v: Vec<String> =
        ["eval", hf.to_str().unwrap(), "--text", t.0.to_str().unwrap(), "--ctx", "64", "--progress", "none"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    problems.extend(must_fail(
        "transforms:recorded runtime with a ggml type",
        "eval",
        &v,
        &out,
        &["config.json", "quantsmith_runtime.act"],
    ));
    write_matrix("transforms");
    check(problems);
}
