//! Output layouts through the real binary on a tiny random model: each directory layout is
//! written and read back by `eval` and `inspect`; mistakes get one clear error, exit 2, and
//! leave nothing behind.

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().expect("run quantsmith")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 2, one `error:` line naming every needle, no panic, and `out` not created.
fn fails(args: &[&str], out: &Path, needles: &[&str]) {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} should mention {n:?}");
    }
    assert!(!out.exists(), "{args:?} left {}", out.display());
    let partial = format!("{}.partial", out.display());
    assert!(!Path::new(&partial).exists(), "{args:?} left {partial}");
}

const CALIB: [&str; 4] = ["--calib-samples", "4", "--calib-len", "32"];

#[test]
fn directory_layouts_are_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let text = dir.path().join("eval.txt");
    std::fs::write(&text, tiny::text(50_000, 6_000).1).unwrap();
    for (layout, scheme) in [
        ("fake-quant", "blk.*=int3:g64"),
        ("compressed-tensors", "blk.*=int4:g32"),
        ("gptq", "blk.*=int4:g64:scale=f16"),
    ] {
        let out = dir.path().join(layout);
        let o = out.to_str().unwrap();
        ok(&[&["quantize", src, "--out", o, "--layout", layout, "--scheme", scheme][..], &CALIB].concat());
        let inspect = ok(&["inspect", o]);
        assert!(inspect.contains("llama"), "{inspect}");
        let eval = ok(&["eval", o, "--base", src, "--text", text.to_str().unwrap(), "--ctx", "64", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
        let kld =
            v.pointer("/models/0/kld_mean").or_else(|| v.pointer("/0/kld_mean")).or_else(|| v.pointer("/kld_mean"));
        assert!(kld.and_then(|k| k.as_f64()).is_some_and(|k| k > 0.0 && k.is_finite()), "{layout}: {eval}");
        // Written again over a finished directory: refused without --force.
        fails(
            &[&["quantize", src, "--out", o, "--layout", layout, "--scheme", scheme][..], &CALIB].concat(),
            Path::new("/nonexistent"),
            &[o, "--force"],
        );
        ok(&[&["quantize", src, "--out", o, "--layout", layout, "--scheme", scheme, "--force"][..], &CALIB].concat());
    }
}

#[test]
fn layout_and_input_mistakes_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = tiny::Tiny::default().gguf_in(dir.path());
    let src = src_path.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let g = dir.path().join("o.gguf");
    let gs = g.to_str().unwrap();
    // A format GGUF cannot store: the tensor and the types that fit its rows.
    fails(&["quantize", src, "--out", gs, "--scheme", "blk.*=int4:g64"], &g, &["blk.0.attn_q.weight", "q4_k", "q8_0"]);
    // A format a layout cannot store: what it can.
    fails(&["quantize", src, "--out", o, "--layout", "gptq", "--scheme", "blk.*=nvfp4"], &out, &["gptq", "int4"]);
    // Presets are llama.cpp's types: GGUF only.
    fails(&["quantize", src, "--out", o, "--layout", "fake-quant", "--preset", "Q4_0"], &out, &["--scheme"]);
    // A directory output needs a layout.
    fails(&["quantize", src, "--out", o], &out, &["--layout"]);
    fails(&["quantize", src, "--out", o, "--layout", "onnx"], &out, &["onnx", "compressed-tensors"]);
    // The output must not be the input.
    let before = std::fs::read(&src_path).unwrap();
    let r = run(&["quantize", src, "--out", src, "--preset", "Q8_0", "--method", "rtn"]);
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&src_path).unwrap(), before);

    // A Hugging Face directory without tokenizer.json, and one of an unknown architecture.
    let hf = dir.path().join("hf");
    ok(&["quantize", src, "--out", hf.to_str().unwrap(), "--layout", "fake-quant"]);
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    fails(&["quantize", hf.to_str().unwrap(), "--out", gs, "--preset", "Q8_0"], &g, &["tokenizer.json"]);
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails(&["quantize", hf.to_str().unwrap(), "--out", gs, "--preset", "Q8_0"], &g, &["gpt_neox", "llama"]);
}
