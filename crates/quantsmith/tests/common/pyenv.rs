//! Python virtual environments for the tests that run Python tools (tools/dither_gguf.py, and
//! checkers against reference libraries), so that `cargo test` needs only a `python3` with the
//! `venv` module: nothing installed by hand, nothing in the system Python.
//!
//! `python_with(&["numpy==2.4.6", "gguf==0.19.0"])` returns the `python` of a venv holding
//! exactly those (pinned) requirements, made on first use under the workspace's target
//! directory: `target/pyenv/<names>-<hash of the sorted list>/`. Each package set gets its own
//! venv, so one checker's requirements can never move another's pinned versions (the dithered
//! base's bytes depend on numpy's and gguf's). A venv is complete once its marker file
//! `quantsmith-requirements.txt` exists (written last); one without it is half-made (a killed
//! run) and is rebuilt. Test binaries run concurrently, so the build is done under an exclusive
//! lock file beside the venv (`<venv>.lock`, made with `create_new`, holding the builder's pid);
//! the others wait for it. A lock whose process has died is broken.
//!
//! `QUANTSMITH_PYTHON` names the base interpreter (default `python3`); pip's own settings
//! (`PIP_INDEX_URL`, `PIP_FIND_LINKS`, proxies, pip.conf) apply to the installs.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// Written into a venv after its packages installed; holds the requirement list.
const MARKER: &str = "quantsmith-requirements.txt";

/// Builds that failed in this process (venv name, message): its other threads fail at once
/// instead of retrying pip one after another.
static FAILED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The workspace's target directory: the ancestor of this test binary that cargo tagged with
/// CACHEDIR.TAG, else `$CARGO_TARGET_DIR`, else `target/` at the workspace root.
pub fn target_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe.ancestors().skip(1).find(|d| d.join("CACHEDIR.TAG").is_file()) {
            return t.to_path_buf();
        }
    }
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(t) if t.is_absolute() => t,
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    }
}

/// The `python` of a venv under [`target_dir`] holding `packages` (pip requirement specifiers,
/// pinned: `"numpy==2.4.6"`), made and filled on first use. Safe to call from concurrent test
/// binaries and threads; panics with what to install when python3, venv or pip fail.
pub fn python_with(packages: &[&str]) -> PathBuf {
    let mut reqs: Vec<String> = packages.iter().map(|p| p.trim().to_string()).collect();
    reqs.sort();
    reqs.dedup();
    assert!(!reqs.is_empty(), "python_with: no packages");
    let listing = reqs.join("\n") + "\n";

    let root = target_dir().join("pyenv");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let name = venv_name(&reqs, &listing);
    let dir = root.join(&name);
    let lock = root.join(format!("{name}.lock"));
    let python = venv_python(&dir);
    let ready = || std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m == listing) && python.exists();

    let started = Instant::now();
    let mut announced = false;
    loop {
        if ready() {
            return python;
        }
        let failed = failures().iter().find(|(n, _)| *n == name).map(|(_, m)| m.clone());
        if let Some(msg) = failed {
            panic!("{msg}");
        }
        match OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(mut f) => {
                let _guard = LockGuard(lock.clone());
                let _ = write!(f, "{}", std::process::id());
                drop(f);
                if !ready() {
                    if let Err(msg) = build(&dir, &reqs, &listing) {
                        failures().push((name, msg.clone()));
                        panic!("{msg}");
                    }
                }
                return python;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if lock_is_stale(&lock) {
                    eprintln!("pyenv: breaking stale lock {}", lock.display());
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if !announced {
                    eprintln!("pyenv: waiting for another test to build {}", dir.display());
                    announced = true;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(3600),
                    "waited an hour for {}; remove it if no test is running",
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{}: {e}", lock.display()),
        }
    }
}

fn failures() -> std::sync::MutexGuard<'static, Vec<(String, String)>> {
    FAILED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `gguf-numpy-1a2b3c4d5e6f`: the package names, readable, and a digest of the exact list.
fn venv_name(reqs: &[String], listing: &str) -> String {
    let names: Vec<String> = reqs
        .iter()
        .map(|r| {
            let end =
                r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(r.len());
            r[..end].to_ascii_lowercase()
        })
        .collect();
    let mut names = names.join("-");
    names.truncate(48);
    let digest: String = Sha256::digest(listing.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{names}-{digest}")
}

fn venv_python(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    }
}

/// Removes the lock file when the builder finishes or panics.
struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A lock left by a process that is gone (Linux: no /proc/PID), or, where liveness cannot be
/// told, one untouched for two hours.
fn lock_is_stale(lock: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(lock) else { return false }; // just removed: retry
    let age = std::fs::metadata(lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    match text.trim().parse::<u32>() {
        // Pid not written yet: the holder is between create and write.
        Err(_) => age > Duration::from_secs(60),
        Ok(pid) if Path::new("/proc/self").exists() => !Path::new(&format!("/proc/{pid}")).exists(),
        Ok(_) => age > Duration::from_secs(7200),
    }
}

/// Makes the venv at `dir` (removing a half-made one) and installs `reqs`; the marker last.
/// The error says what failed and what to install.
fn build(dir: &Path, reqs: &[String], listing: &str) -> Result<(), String> {
    let t0 = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing half-made {}: {e}", dir.display()))?;
    }
    let base = std::env::var("QUANTSMITH_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("pyenv: making {} with {base} -m venv, then pip install {}", dir.display(), reqs.join(" "));

    let out = Command::new(&base).arg("-m").arg("venv").arg(dir).output().map_err(|e| {
        format!(
            "cannot run `{base}` ({e}): the tests need Python 3 with the venv module \
             (Debian/Ubuntu: apt-get install python3 python3-venv; or set QUANTSMITH_PYTHON to an interpreter)"
        )
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dir);
        return Err(format!(
            "`{base} -m venv {}` failed: {}\nthe tests need Python 3 with the venv module and ensurepip \
             (Debian/Ubuntu: apt-get install python3-venv)",
            dir.display(),
            tail(&out)
        ));
    }

    let python = venv_python(dir);
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"])
        .args(reqs)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", python.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dir);
        return Err(format!(
            "pip could not install {} into {}: {}\npip needs to reach its index (PyPI, or PIP_INDEX_URL / \
             PIP_FIND_LINKS), and the base Python must be one these versions support \
             (set QUANTSMITH_PYTHON to another interpreter if not)",
            reqs.join(" "),
            dir.display(),
            tail(&out)
        ));
    }
    std::fs::write(dir.join(MARKER), listing).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("pyenv: {} ready in {:.1} s", dir.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// The last lines of a command's stderr (else stdout), for panic messages.
fn tail(out: &Output) -> String {
    let text = if out.stderr.is_empty() { &out.stdout } else { &out.stderr };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
