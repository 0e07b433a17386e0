//! Faults through the real binary on the tiny model: crashes at every checkpoint and kills at
//! random moments (the rerun resumes and writes the same bytes, in every layout), a damaged
//! checkpoint (never resumed from), a full disk (`ulimit -f`: a clear error, nothing left),
//! leftovers of killed writers, thread counts (same bytes), file modes, and control
//! characters in a file's strings (never sent raw to the terminal).

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use quantsmith::formats::ggml::GgmlType;
use quantsmith::io::{GgufValue, GgufWriter};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantsmith"));
    c.env_remove("QUANTSMITH_FAULT_AFTER_BLOCK");
    c
}

fn run(args: &[String]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `p` (a file or a directory), relative name → bytes.
fn contents(p: &Path) -> Vec<(String, Vec<u8>)> {
    if p.is_file() {
        return vec![(String::new(), std::fs::read(p).unwrap())];
    }
    let mut v = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                v.push((e.strip_prefix(p).unwrap().display().to_string(), std::fs::read(&e).unwrap()));
            }
        }
    }
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    calib: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = tiny::Tiny::default().gguf_in(&root);
    let calib = root.join("calib.txt");
    std::fs::write(&calib, tiny::text(0, 60_000).1).unwrap();
    Setup { _dir: dir, root, model, calib }
}

/// The quantize command of `layout` (GPTQ, so that calibration state is checkpointed too).
fn quantize_args(s: &Setup, layout: &str, out: &Path, samples: usize) -> Vec<String> {
    let mut v: Vec<String> =
        vec!["quantize".into(), s.model.display().to_string(), "--out".into(), out.display().to_string()];
    let tail: Vec<&str> = match layout {
        "gguf" => vec!["--preset", "Q4_0"],
        "compressed-tensors" => vec!["--layout", "compressed-tensors", "--scheme", "blk.*=int4:g64"],
        "gptq" => vec!["--layout", "gptq", "--scheme", "blk.*=int4:g64:scale=f16"],
        _ => vec!["--layout", "fake-quant", "--scheme", "blk.*=int4:g64"],
    };
    v.extend(tail.iter().map(|s| s.to_string()));
    let samples = samples.to_string();
    v.extend(
        ["--calib", s.calib.to_str().unwrap(), "--calib-samples", &samples, "--calib-len", "64", "--progress", "none"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

fn out_name(layout: &str) -> &'static str {
    match layout {
        "gguf" => "x.gguf",
        "compressed-tensors" => "ct",
        "gptq" => "gq",
        _ => "fq",
    }
}

const LAYOUTS: [&str; 4] = ["gguf", "compressed-tensors", "gptq", "fake-quant"];

#[test]
fn a_crash_after_any_block_resumes_to_the_same_bytes_in_every_layout() {
    let s = setup();
    for layout in LAYOUTS {
        let reference = s.root.join(format!("ref-{layout}"));
        std::fs::create_dir_all(&reference).unwrap();
        let r = reference.join(out_name(layout));
        let o = run(&quantize_args(&s, layout, &r, 8));
        assert!(o.status.success(), "{layout}: {}", stderr(&o));
        let want = contents(&r);
        for crash_after in 0..tiny::N_LAYER {
            let d = s.root.join(format!("crash-{layout}-{crash_after}"));
            std::fs::create_dir_all(&d).unwrap();
            let out = d.join(out_name(layout));
            let args = quantize_args(&s, layout, &out, 8);
            let o = bin().args(&args).env("QUANTSMITH_FAULT_AFTER_BLOCK", crash_after.to_string()).output().unwrap();
            assert!(!o.status.success(), "{layout}: the injected crash did not happen");
            assert!(!out.exists(), "{layout}: a crashed run left an output");
            let o = run(&args);
            let e = stderr(&o);
            assert!(o.status.success(), "{layout}: {e}");
            if crash_after + 1 < tiny::N_LAYER {
                assert!(
                    e.contains(&format!("resuming at block {} of {}", crash_after + 2, tiny::N_LAYER)),
                    "{layout}: {e}"
                );
            }
            assert!(
                contents(&out) == want,
                "{layout}: the resumed output differs after a crash after block {crash_after}"
            );
            assert!(!d.join(format!("{}.partial", out_name(layout))).exists(), "{layout}: checkpoint left");
            let left: Vec<String> = names(&d).into_iter().filter(|n| n.starts_with('.')).collect();
            assert!(left.is_empty(), "{layout}: left {left:?}");
        }
    }
}

#[test]
fn asymmetric_and_low_rank_runs_resume_to_the_same_bytes() {
    // Asymmetric calibration checkpoints a second (float) stream, and low-rank terms spill
    // their factors: a crash after each block resumes to the same bytes, and a flipped byte in
    // the float stream's checkpoint is never resumed from.
    let s = setup();
    let args_of = |out: &Path| {
        let mut a = quantize_args(&s, "fake-quant", out, 6);
        a.extend(["--method", "gptq-asym", "--lowrank", "4:int8"].iter().map(|s| s.to_string()));
        a
    };
    let r = s.root.join("asym-ref");
    let o = run(&args_of(&r));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = contents(&r);
    for crash_after in 0..tiny::N_LAYER - 1 {
        let out = s.root.join(format!("asym-{crash_after}"));
        let args = args_of(&out);
        let o = bin().args(&args).env("QUANTSMITH_FAULT_AFTER_BLOCK", crash_after.to_string()).output().unwrap();
        assert!(!o.status.success(), "the injected crash did not happen");
        let xf = s.root.join(format!("asym-{crash_after}.partial/xf.bin"));
        assert!(xf.exists(), "no float-stream checkpoint");
        if crash_after == 0 {
            // Damaged: started afresh, same bytes.
            let mut b = std::fs::read(&xf).unwrap();
            b[100] ^= 0x40;
            std::fs::write(&xf, b).unwrap();
            let o = run(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(stderr(&o).contains("damaged checkpoint (xf.bin"), "{}", stderr(&o));
        } else {
            let o = run(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(stderr(&o).contains(&format!("resuming at block {}", crash_after + 2)), "{}", stderr(&o));
        }
        assert!(contents(&out) == want, "the resumed output differs after a crash after block {crash_after}");
    }
}

/// Checkpoints spaced out (`--checkpoint-every`): blocks between two write only their spill,
/// and a kill between checkpoints (emulated: the spill of a block after the last checkpoint
/// left behind, as such a kill leaves it) resumes from the last checkpoint to the same bytes.
#[test]
fn spaced_checkpoints_resume_from_the_last_one_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = tiny::Tiny { layers: 5, ..Default::default() }.gguf_in(&root);
    let calib = root.join("calib.txt");
    std::fs::write(&calib, tiny::text(0, 60_000).1).unwrap();
    let s = Setup { _dir: dir, root, model, calib };
    let args_of = |out: &Path, every: &str| {
        let mut a = quantize_args(&s, "gguf", out, 8);
        a.push(format!("--checkpoint-every={every}"));
        a
    };
    let r = s.root.join("ref.gguf");
    let o = run(&args_of(&r, "0"));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = std::fs::read(&r).unwrap();
    // An hour apart: block 0 (the first) writes one and block 2 (where the hook dies) another;
    // block 1 writes only its spill.
    let out = s.root.join("x.gguf");
    let args = args_of(&out, "3600");
    let o = bin().args(&args).env("QUANTSMITH_FAULT_AFTER_BLOCK", "2").output().unwrap();
    assert!(!o.status.success(), "the injected crash did not happen");
    let work = s.root.join("x.gguf.partial");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["next_block"], 3);
    assert!(state["crc32"]["blk.1.bin"].is_number(), "{state}");
    // A spill of block 3 from a run killed before its checkpoint: not resumed from, replaced.
    std::fs::write(work.join("blk.3.bin"), b"left by a killed run").unwrap();
    let o = run(&args);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("resuming at block 4 of 5"), "{e}");
    assert!(std::fs::read(&out).unwrap() == want, "the resumed output differs");
    assert!(!work.exists(), "checkpoint left");
    // The default spacing writes the same bytes.
    std::fs::remove_file(&out).unwrap();
    let o = run(&quantize_args(&s, "gguf", &out, 8));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == want, "the default spacing's output differs");
    // A negative or non-numeric spacing is refused before any work.
    for bad in ["-1", "soon", "NaN"] {
        let o = run(&args_of(&s.root.join("bad.gguf"), bad));
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("not a number of seconds"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn kills_at_random_moments_resume_to_the_same_bytes() {
    let s = setup();
    for layout in ["gguf", "compressed-tensors"] {
        let reference = s.root.join(format!("ref-{layout}"));
        std::fs::create_dir_all(&reference).unwrap();
        let r = reference.join(out_name(layout));
        let t = Instant::now();
        let o = run(&quantize_args(&s, layout, &r, 48));
        let full = t.elapsed();
        assert!(o.status.success(), "{}", stderr(&o));
        let want = contents(&r);
        // Kill moments spread over the whole run, the final write included; a fixed seed.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for k in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = full.mul_f64((k as f64 + (x % 1000) as f64 / 1000.0) / 6.0);
            let d = s.root.join(format!("kill-{layout}-{k}"));
            std::fs::create_dir_all(&d).unwrap();
            let out = d.join(out_name(layout));
            let args = quantize_args(&s, layout, &out, 48);
            let mut child = bin().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(at);
            let _ = child.kill();
            child.wait().unwrap();
            let work = d.join(format!("{}.partial", out_name(layout)));
            if out.exists() {
                // Killed after its output was installed (complete: it is renamed into place
                // whole); the checkpoint may remain, and a rerun says so.
                if work.exists() {
                    let o = run(&args);
                    assert_eq!(o.status.code(), Some(2));
                    assert!(stderr(&o).contains("stopped after writing it"), "{}", stderr(&o));
                    std::fs::remove_dir_all(&work).unwrap();
                }
            } else {
                let o = run(&args);
                assert!(o.status.success(), "{layout}, kill at {at:?}: {}", stderr(&o));
            }
            assert!(contents(&out) == want, "{layout}: output differs after a kill at {at:?} of {full:?}");
            let left: Vec<String> =
                names(&d).into_iter().filter(|n| n.starts_with('.') || n.ends_with(".partial")).collect();
            assert!(left.is_empty(), "{layout}: left {left:?} after a kill at {at:?}");
        }
    }
}

#[test]
fn a_damaged_checkpoint_is_never_resumed_from() {
    let s = setup();
    let r = s.root.join("ref.gguf");
    assert!(run(&quantize_args(&s, "gguf", &r, 8)).status.success());
    let out = s.root.join("x.gguf");
    let args = quantize_args(&s, "gguf", &out, 8);
    let work = s.root.join("x.gguf.partial");
    for (file, damage) in
        [("blk.0.bin", "flip"), ("x.bin", "flip"), ("blk.0.bin", "truncate"), ("state.json", "truncate")]
    {
        let o = bin().args(&args).env("QUANTSMITH_FAULT_AFTER_BLOCK", "0").output().unwrap();
        assert!(!o.status.success());
        let p = work.join(file);
        let mut b = std::fs::read(&p).unwrap();
        if damage == "flip" {
            let i = b.len() / 2;
            b[i] ^= 0x10;
        } else {
            b.truncate(b.len() / 2);
        }
        std::fs::write(&p, b).unwrap();
        let o = run(&args);
        let e = stderr(&o);
        assert!(o.status.success(), "{file} {damage}: {e}");
        assert!(e.contains("damaged checkpoint") && e.contains("starting afresh"), "{file} {damage}: {e}");
        assert!(!e.contains("resuming"), "{e}");
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&r).unwrap(), "{file} {damage}: output differs");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn a_full_disk_is_one_clear_error_and_leaves_nothing() {
    let s = setup();
    // `ulimit -f` (512-byte blocks) stands in for a full disk: writes past it fail with EFBIG.
    // 40 KiB stops the first checkpoint; 1000 KiB lets the checkpoints through and stops the
    // output itself.
    for (layout, blocks) in [("gguf", 80), ("gguf", 2000), ("compressed-tensors", 80), ("compressed-tensors", 1600)] {
        let d = s.root.join(format!("full-{layout}-{blocks}"));
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join(out_name(layout));
        let mut args = quantize_args(&s, layout, &out, 4);
        if layout == "gguf" {
            args = [
                "quantize",
                s.model.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--method",
                "rtn",
                "--preset",
                "Q8_0",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
        }
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("ulimit -f {blocks}; exec '{}' {}", env!("CARGO_BIN_EXE_quantsmith"), quoted.join(" "));
        let o = Command::new("sh").arg("-c").arg(&script).env("TMPDIR", &d).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{layout} {blocks}: {e}");
        let last = e.trim_end().lines().last().unwrap_or("");
        assert!(last.starts_with("error: ") && last.contains("too large"), "{layout} {blocks}: {e}");
        assert!(names(&d).is_empty(), "{layout} {blocks}: left {:?}", names(&d));
    }
}

#[test]
fn leftovers_of_a_killed_writer_are_replaced() {
    let s = setup();
    for layout in ["gguf", "compressed-tensors"] {
        let d = s.root.join(format!("left-{layout}"));
        std::fs::create_dir_all(&d).unwrap();
        let name = out_name(layout);
        // What a writer killed mid-write leaves: a temporary file, or a half directory.
        if layout == "gguf" {
            std::fs::write(d.join(format!(".{name}.tmp")), b"half a file").unwrap();
        } else {
            std::fs::create_dir_all(d.join(format!(".{name}.writing"))).unwrap();
            std::fs::write(d.join(format!(".{name}.writing/model.safetensors")), b"half").unwrap();
        }
        let out = d.join(name);
        let o = run(&quantize_args(&s, layout, &out, 4));
        assert!(o.status.success(), "{}", stderr(&o));
        let hidden: Vec<String> = names(&d).into_iter().filter(|n| n.starts_with('.')).collect();
        assert!(hidden.is_empty(), "{layout}: {hidden:?}");
    }
}

#[test]
fn one_and_two_threads_write_the_same_bytes() {
    let s = setup();
    for layout in LAYOUTS {
        let mut outs = Vec::new();
        for threads in ["1", "2"] {
            let d = s.root.join(format!("t{threads}-{layout}"));
            std::fs::create_dir_all(&d).unwrap();
            let out = d.join(out_name(layout));
            let mut args = quantize_args(&s, layout, &out, 8);
            args.extend(["--threads".to_string(), threads.to_string()]);
            let o = run(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            outs.push(contents(&out));
        }
        assert!(outs[0] == outs[1], "{layout}: 1 and 2 threads differ");
    }
}

#[cfg(unix)]
#[test]
fn outputs_respect_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    for layout in ["gguf", "compressed-tensors"] {
        let d = s.root.join(format!("mode-{layout}"));
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join(out_name(layout));
        let args: Vec<String> = quantize_args(&s, layout, &out, 4).iter().map(|a| format!("'{a}'")).collect();
        let script = format!("umask 022; exec '{}' {}", env!("CARGO_BIN_EXE_quantsmith"), args.join(" "));
        let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if layout == "gguf" {
            assert_eq!(mode(&out), 0o644, "{}", out.display());
        } else {
            assert_eq!(mode(&out), 0o755, "{}", out.display());
            assert_eq!(mode(&out.join("model.safetensors")), 0o644);
            assert_eq!(mode(&out.join("config.json")), 0o644);
        }
        let md = d.join(format!("{}.md", out.file_stem().unwrap().to_string_lossy()));
        assert_eq!(mode(&md), 0o644, "{}", md.display());
    }
}

#[test]
fn control_characters_in_a_file_never_reach_the_terminal_raw() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("evil.gguf");
    let mut w = GgufWriter::new(&p).unwrap();
    w.add_metadata("general.architecture", GgufValue::String("llama\u{1b}[2J".into())).unwrap();
    w.add_metadata("general.name\u{1b}]0;owned\u{7}", GgufValue::String("x\r\u{202e}gnp.exe".into())).unwrap();
    w.add_tensor("t\u{1b}[31m.weight", &[32], GgmlType::F32, &[0u8; 128]).unwrap();
    w.finish().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, tiny::text(0, 5000).1).unwrap();
    for args in
        [vec!["inspect", p.to_str().unwrap()], vec!["eval", p.to_str().unwrap(), "--text", text.to_str().unwrap()]]
    {
        let o = bin().args(&args).output().unwrap();
        for (what, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text.chars().any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r' || c == '\u{202e}'),
                "{args:?} {what}: {text:?}"
            );
        }
        if args[0] == "inspect" {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(out.contains("t\\u{1b}[31m.weight") && out.contains("general.name\\u{1b}]0;owned\\u{7}"), "{out}");
        } else {
            assert_eq!(o.status.code(), Some(2));
        }
    }
}
