//! Corrupt and missing inputs: every one is a clear error naming the file (and the tensor or
//! key), never a panic. Fixtures are written here, not committed.

mod io_common;

use std::path::{Path, PathBuf};

use formats::ggml::GgmlType;
use io_common::{f32_bytes, write_safetensors, write_safetensors_raw};
use quantsmith::io::{open_model, GgufFile, GgufValue, GgufWriter, HfModel, ModelFile};
use quantsmith::tensor::TensorSource;

/// Raw GGUF bytes with whatever counts, lengths and offsets the test wants to lie about.
struct RawGguf(Vec<u8>);

impl RawGguf {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&n_tensors.to_le_bytes());
        v.extend_from_slice(&n_kv.to_le_bytes());
        RawGguf(v)
    }
    fn u32(mut self, x: u32) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut r = self.u64(s.len() as u64);
        r.0.extend_from_slice(s.as_bytes());
        r
    }
    /// One tensor info: name, dims, type id, offset.
    fn tensor(self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(ne.len() as u32);
        for &d in ne {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad_and_data(mut self, data: &[u8]) -> Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend_from_slice(data);
        self
    }
    fn write(self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.0).unwrap();
        p
    }
}

/// Asserts that opening fails with a message holding every one of `needles`.
fn gguf_err(path: &Path, needles: &[&str]) -> String {
    let e = GgufFile::open(path).expect_err("corrupt GGUF must not open").to_string();
    for n in needles {
        assert!(e.contains(n), "error {e:?} should mention {n:?}");
    }
    e
}

fn valid_gguf(dir: &Path) -> PathBuf {
    let p = dir.join("valid.gguf");
    let mut w = GgufWriter::new(&p).unwrap();
    w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        GgufValue::Array(quantsmith::io::GgufArray::String(vec!["a".into(), "bc".into()])),
    )
    .unwrap();
    w.add_metadata("llama.block_count", GgufValue::U32(1)).unwrap();
    w.add_tensor("w", &[32, 2], GgmlType::F32, &f32_bytes(&[0.5; 64])).unwrap();
    w.add_tensor("v", &[8], GgmlType::F16, &[0u8; 16]).unwrap();
    w.finish().unwrap();
    p
}

#[test]
fn every_truncation_of_a_gguf_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(valid_gguf(dir.path())).unwrap();
    assert!(GgufFile::open(&dir.path().join("valid.gguf")).is_ok());
    let p = dir.path().join("cut.gguf");
    for len in 0..full.len() {
        std::fs::write(&p, &full[..len]).unwrap();
        let e = GgufFile::open(&p).expect_err("a truncated file must not open").to_string();
        assert!(e.contains("cut.gguf"), "len {len}: {e}");
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(valid_gguf(dir.path())).unwrap();
    let p = dir.path().join("flip.gguf");
    // Every byte of the header, each replaced by values that make lengths/types absurd.
    let header_len = full.len() - 64 * 4 - 16;
    for i in 0..header_len {
        for x in [0xFFu8, 0x80, 0x01] {
            let mut b = full.clone();
            b[i] ^= x;
            std::fs::write(&p, &b).unwrap();
            if let Ok(g) = GgufFile::open(&p) {
                for t in g.tensors() {
                    let _ = g.load_f32(&t.name);
                }
            }
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = std::fs::read(valid_gguf(dir.path())).unwrap();
    b[..4].copy_from_slice(b"GGML");
    std::fs::write(dir.path().join("magic.gguf"), &b).unwrap();
    gguf_err(&dir.path().join("magic.gguf"), &["magic.gguf", "not a GGUF file", "GGML"]);

    let p = RawGguf::header(1, 0, 0).write(dir.path(), "v1.gguf");
    gguf_err(&p, &["v1.gguf", "version 1"]);
    let p = RawGguf::header(7, 0, 0).write(dir.path(), "v7.gguf");
    gguf_err(&p, &["v7.gguf", "version 7"]);
    let p = RawGguf::header(3u32.swap_bytes(), 0, 0).write(dir.path(), "be.gguf");
    gguf_err(&p, &["be.gguf", "big-endian"]);
    let p = RawGguf::header(2, 0, 0).write(dir.path(), "v2.gguf");
    assert_eq!(GgufFile::open(&p).unwrap().version(), 2, "an empty v2 file is valid");
}

#[test]
fn lying_counts_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let p = RawGguf::header(3, 1_000_000_000, 0).write(dir.path(), "count.gguf");
    gguf_err(&p, &["count.gguf", "1000000000 tensors"]);
    let p = RawGguf::header(3, 0, u64::MAX).write(dir.path(), "kv.gguf");
    gguf_err(&p, &["kv.gguf", "metadata"]);
    // A key whose string length runs past the end.
    let p = RawGguf::header(3, 0, 1).u64(1 << 40).u64(0).write(dir.path(), "strlen.gguf");
    gguf_err(&p, &["strlen.gguf", "past the end"]);
    // A string value whose length runs past the end.
    let p = RawGguf::header(3, 0, 1).str("general.name").u32(8).u64(999).write(dir.path(), "strval.gguf");
    gguf_err(&p, &["strval.gguf", "general.name", "past the end"]);
    // An array that claims 2^60 strings.
    let p =
        RawGguf::header(3, 0, 1).str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1 << 60).write(dir.path(), "arr.gguf");
    gguf_err(&p, &["arr.gguf", "tokenizer.ggml.tokens", "entries"]);
    // Unknown metadata value type.
    let p = RawGguf::header(3, 0, 1).str("k").u32(42).u64(0).write(dir.path(), "vtype.gguf");
    gguf_err(&p, &["vtype.gguf", "`k`", "unknown value type id 42"]);
    // A bool that is neither 0 nor 1.
    let mut r = RawGguf::header(3, 0, 1).str("b").u32(7);
    r.0.push(5);
    let p = r.write(dir.path(), "bool.gguf");
    gguf_err(&p, &["bool.gguf", "`b`"]);
    // Alignment that is not a power of two.
    let p = RawGguf::header(3, 0, 1).str("general.alignment").u32(4).u32(48).write(dir.path(), "align.gguf");
    gguf_err(&p, &["align.gguf", "general.alignment"]);
}

#[test]
fn bad_tensor_infos() {
    let dir = tempfile::tempdir().unwrap();
    let data = f32_bytes(&[1.0; 32]);
    let ok = RawGguf::header(3, 1, 0).tensor("w", &[32], 0, 0).pad_and_data(&data).write(dir.path(), "ok.gguf");
    assert_eq!(GgufFile::open(&ok).unwrap().load_f32("w").unwrap(), vec![1.0; 32]);

    let p = RawGguf::header(3, 1, 0).tensor("w", &[32], 99, 0).pad_and_data(&data).write(dir.path(), "type.gguf");
    gguf_err(&p, &["type.gguf", "`w`", "unknown ggml type id 99"]);
    let p = RawGguf::header(3, 1, 0).tensor("w", &[32], 0, 1 << 20).pad_and_data(&data).write(dir.path(), "off.gguf");
    gguf_err(&p, &["off.gguf", "`w`", "past the end"]);
    let p = RawGguf::header(3, 1, 0)
        .tensor("w", &[32], 0, u64::MAX - 31)
        .pad_and_data(&data)
        .write(dir.path(), "wrap.gguf");
    gguf_err(&p, &["wrap.gguf", "`w`"]);
    let p = RawGguf::header(3, 1, 0).tensor("w", &[64], 0, 0).pad_and_data(&data).write(dir.path(), "short.gguf");
    gguf_err(&p, &["short.gguf", "`w`", "past the end"]);
    let p = RawGguf::header(3, 1, 0).tensor("w", &[32], 0, 4).pad_and_data(&data).write(dir.path(), "unaligned.gguf");
    gguf_err(&p, &["unaligned.gguf", "`w`", "alignment"]);
    let p = RawGguf::header(3, 1, 0)
        .tensor("w", &[1 << 32, 1 << 32, 1 << 32], 0, 0)
        .pad_and_data(&data)
        .write(dir.path(), "huge.gguf");
    gguf_err(&p, &["huge.gguf", "`w`"]);
    let p =
        RawGguf::header(3, 1, 0).tensor("w", &[1, 1, 1, 1, 1], 0, 0).pad_and_data(&data).write(dir.path(), "dims.gguf");
    gguf_err(&p, &["dims.gguf", "`w`", "dimensions"]);
    // Q8_0 rows must be whole blocks.
    let p = RawGguf::header(3, 1, 0).tensor("q", &[16], 8, 0).pad_and_data(&[0u8; 34]).write(dir.path(), "block.gguf");
    gguf_err(&p, &["block.gguf", "`q`", "block size"]);
    let p = RawGguf::header(3, 2, 0)
        .tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .pad_and_data(&[0u8; 64])
        .write(dir.path(), "dup.gguf");
    gguf_err(&p, &["dup.gguf", "`w`", "twice"]);
}

#[test]
fn missing_metadata_and_tensors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(&valid_gguf(dir.path())).unwrap();
    let e = g.get_f32("llama.rope.freq_base").unwrap_err().to_string();
    assert!(e.contains("valid.gguf") && e.contains("llama.rope.freq_base"), "{e}");
    let e = g.load_f32("output.weight").unwrap_err().to_string();
    assert!(e.contains("valid.gguf") && e.contains("output.weight"), "{e}");
    let e = g.tensor_bytes("output.weight").unwrap_err().to_string();
    assert!(e.contains("output.weight"), "{e}");
}

fn hf_dir(dir: &Path) -> PathBuf {
    let d = dir.join("model");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    d
}

fn hf_err(dir: &Path, needles: &[&str]) -> String {
    let e = HfModel::open(dir).expect_err("corrupt model must not open").to_string();
    for n in needles {
        assert!(e.contains(n), "error {e:?} should mention {n:?}");
    }
    // The same error through the front door.
    let e2 = ModelFile::open(dir).expect_err("corrupt model must not open").to_string();
    assert_eq!(e, e2);
    e
}

#[test]
fn corrupt_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = hf_dir(dir.path());
    let st = d.join("model.safetensors");

    std::fs::write(&st, [1u8, 2, 3]).unwrap();
    hf_err(&d, &["model.safetensors", "only 3 bytes"]);
    std::fs::write(&st, (1u64 << 50).to_le_bytes()).unwrap();
    hf_err(&d, &["model.safetensors", "header length"]);
    write_safetensors_raw(&st, "{not json", &[]);
    hf_err(&d, &["model.safetensors", "not valid JSON"]);
    write_safetensors_raw(&st, "[1, 2]", &[]);
    hf_err(&d, &["model.safetensors", "not a JSON object"]);
    write_safetensors(&st, &[("w", "Q7", vec![2], vec![0; 2])]);
    hf_err(&d, &["model.safetensors", "`w`", "unknown safetensors dtype `Q7`"]);
    write_safetensors_raw(&st, r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, &[0u8; 8]);
    hf_err(&d, &["model.safetensors", "`w`", "past the end"]);
    write_safetensors_raw(&st, r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}"#, &[0u8; 16]);
    hf_err(&d, &["model.safetensors", "`w`", "needs 16"]);
    write_safetensors_raw(&st, r#"{"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}"#, &[0u8; 16]);
    hf_err(&d, &["model.safetensors", "`w`", "shape"]);
    write_safetensors_raw(
        &st,
        r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 16]}}"#,
        &[0u8; 16],
    );
    hf_err(&d, &["model.safetensors", "`w`"]);
    write_safetensors_raw(&st, r#"{"w": {"dtype": "F32", "shape": [4]}}"#, &[0u8; 16]);
    hf_err(&d, &["model.safetensors", "`w`", "data_offsets"]);
    write_safetensors_raw(&st, r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}"#, &[0u8; 16]);
    hf_err(&d, &["model.safetensors", "`w`"]);
}

#[test]
fn every_truncation_of_a_safetensors_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = hf_dir(dir.path());
    let st = d.join("model.safetensors");
    write_safetensors(&st, &[("a", "F32", vec![2, 3], f32_bytes(&[1.0; 6])), ("b", "F16", vec![4], vec![0; 8])]);
    let full = std::fs::read(&st).unwrap();
    assert!(HfModel::open(&d).is_ok());
    for len in 0..full.len() {
        std::fs::write(&st, &full[..len]).unwrap();
        let e = HfModel::open(&d).expect_err("a truncated file must not open").to_string();
        assert!(e.contains("model.safetensors"), "len {len}: {e}");
    }
}

#[test]
fn broken_hf_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = hf_dir(dir.path());
    hf_err(&d, &["model", "neither model.safetensors nor model.safetensors.index.json"]);

    write_safetensors(&d.join("model-1.safetensors"), &[("a", "F32", vec![1], f32_bytes(&[1.0]))]);
    let idx = d.join("model.safetensors.index.json");
    std::fs::write(&idx, r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#).unwrap();
    hf_err(&d, &["model.safetensors.index.json", "model-2.safetensors", "does not exist"]);
    std::fs::write(&idx, r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-1.safetensors"}}"#).unwrap();
    hf_err(&d, &["model.safetensors.index.json", "`b`"]);
    std::fs::write(&idx, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    hf_err(&d, &["model.safetensors.index.json", "not a plain file name"]);
    std::fs::write(&idx, r#"{"metadata": {}}"#).unwrap();
    hf_err(&d, &["model.safetensors.index.json", "weight_map"]);
    std::fs::write(&idx, "{").unwrap();
    hf_err(&d, &["model.safetensors.index.json", "not valid JSON"]);
    std::fs::remove_file(&idx).unwrap();

    write_safetensors(&d.join("model.safetensors"), &[("a", "F32", vec![1], f32_bytes(&[1.0]))]);
    std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap();
    hf_err(&d, &["config.json", "not valid JSON"]);
    std::fs::write(d.join("config.json"), "[]").unwrap();
    hf_err(&d, &["config.json", "JSON object"]);
    std::fs::remove_file(d.join("config.json")).unwrap();
    hf_err(&d, &["model", "config.json is missing"]);
    std::fs::write(d.join("config.json"), "{}").unwrap();
    let m = HfModel::open(&d).unwrap();
    let e = m.architecture().unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("model_type"), "{e}");
}

#[test]
fn nonexistent_and_unrecognised_paths() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.gguf");
    let e = ModelFile::open(&missing).unwrap_err().to_string();
    assert!(e.contains("nowhere.gguf"), "{e}");
    let e = open_model(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("nowhere.gguf") && e.contains("built-in"), "{e}");
    let e = GgufFile::open(&missing).unwrap_err().to_string();
    assert!(e.contains("nowhere.gguf"), "{e}");

    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let e = ModelFile::open(&txt).unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("neither a GGUF file nor a Hugging Face"), "{e}");
    let st = dir.path().join("w.safetensors");
    write_safetensors(&st, &[("a", "F32", vec![1], f32_bytes(&[1.0]))]);
    let e = ModelFile::open(&st).unwrap_err().to_string();
    assert!(e.contains("w.safetensors") && e.contains("config.json"), "{e}");
}
