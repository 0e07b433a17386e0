//! Shared fixtures of the real-model tests.

#![allow(dead_code)]

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// sha256 of the dithered SmolLM2 base that llama.cpp's golden figures start from.
pub const DITHERED_SHA256: &str = "24ae1dde7c741cae766aa9df88048a562a1f01c19a52320e0618f4ec6148e532";

/// `../shared` beside the checkout (CI and developers have it).
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The golden file of llama.cpp's presets for the dithered base.
pub fn golden() -> serde_json::Value {
    let p = shared().join("data/golden/smollm2-dither-llamacpp-0c1e570.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (../shared must be beside the checkout)", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A text shipped in the repository.
pub fn repo_text(name: &str) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text").join(name);
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, t)
}

fn sha256_file(p: &std::path::Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The dithered f32 SmolLM2 base (DESIGN.md), made once with ../shared/tools/dither_gguf.py
/// (needs `pip install numpy gguf`) into the model cache, and checked by digest. Only one
/// test binary (quantize_smollm2.rs) uses it, so a process-wide once suffices.
pub fn dithered_base() -> PathBuf {
    static BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let cache = std::env::var_os("QUANTSMITH_CACHE")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("quantsmith")))
            .expect("a cache directory");
        let out = cache.join("smollm2-dither-f32.gguf");
        std::fs::create_dir_all(&cache).unwrap();
        if !out.exists() || sha256_file(&out) != DITHERED_SHA256 {
            let src = quantsmith::fetch::resolve("smollm2").expect("fetch smollm2");
            let tmp = cache.join("smollm2-dither-f32.gguf.tmp");
            let status = std::process::Command::new("python3")
                .arg(shared().join("tools/dither_gguf.py"))
                .arg(&src)
                .arg(&tmp)
                .args(["--seed", "0"])
                .status()
                .expect("python3");
            assert!(status.success(), "dither_gguf.py failed (it needs: pip install numpy gguf)");
            std::fs::rename(&tmp, &out).unwrap();
        }
        assert_eq!(sha256_file(&out), DITHERED_SHA256, "{} is not the dithered base", out.display());
        out
    })
    .clone()
}
