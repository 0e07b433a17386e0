//! Shared fixtures of the real-model tests.

#![allow(dead_code)]

use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub mod pyenv;

/// What tools/dither_gguf.py needs; other versions change the output bytes.
pub const DITHER_PACKAGES: &[&str] = &["numpy==2.4.6", "gguf==0.19.0"];

/// sha256 of the dithered SmolLM2 base that llama.cpp's golden figures start from.
pub const DITHERED_SHA256: &str = "24ae1dde7c741cae766aa9df88048a562a1f01c19a52320e0618f4ec6148e532";

/// The workspace root (data/, tools/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The golden file of llama.cpp's presets for the dithered base (data/golden).
pub fn golden() -> serde_json::Value {
    let p = repo().join("data/golden/smollm2-dither-llamacpp-0c1e570.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A text shipped in the repository.
pub fn repo_text(name: &str) -> (PathBuf, String) {
    let p = repo().join("data/text").join(name);
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, t)
}

fn sha256_file(p: &std::path::Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The dithered f32 SmolLM2 base (DESIGN.md), made once with tools/dither_gguf.py (run by the
/// python of a venv under target/ holding [`DITHER_PACKAGES`], see [`pyenv`]) into the model
/// cache, and checked by digest. Only one test binary (quantize_smollm2.rs) uses it, so a
/// process-wide once suffices.
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
            let python = pyenv::python_with(DITHER_PACKAGES);
            let status = std::process::Command::new(&python)
                .arg(repo().join("tools/dither_gguf.py"))
                .arg(&src)
                .arg(&tmp)
                .args(["--seed", "0"])
                .status()
                .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
            assert!(status.success(), "tools/dither_gguf.py failed (run by {})", python.display());
            std::fs::rename(&tmp, &out).unwrap();
        }
        assert_eq!(sha256_file(&out), DITHERED_SHA256, "{} is not the dithered base", out.display());
        out
    })
    .clone()
}
