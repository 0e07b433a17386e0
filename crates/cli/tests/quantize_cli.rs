//! `quantsmith quantize` through the real binary: resuming after a kill, and bad input.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantsmith"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run quantsmith")
}

/// A command that must fail: exit 2, one `error:` line naming every needle, and no output.
fn fails(args: &[&str], out: &Path, needles: &[&str]) {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    // One error line, last; only notes (what the run would have done) before it.
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert!(lines.last().is_some_and(|l| l.starts_with("error: ")), "{args:?}: {stderr}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l.starts_with("note: ")), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} should mention {n:?}");
    }
    assert!(!out.exists(), "{args:?} left {}", out.display());
}

#[test]
fn resume_after_kill_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    let common = [
        "--preset",
        "Q4_0",
        "--method",
        "rtn",
        "--imatrix",
        "--calib-samples",
        "8",
        "--calib-len",
        "128",
        "--allow-requantize",
    ];
    // Interrupted run: kill it once three blocks are checkpointed.
    let mut child = bin()
        .args(["quantize", "smollm2", "--out", a.to_str().unwrap()])
        .args(common)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.path().join("a.gguf.partial/state.json");
    let t = Instant::now();
    loop {
        let done = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["next_block"].as_u64())
            .unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        assert!(t.elapsed() < Duration::from_secs(600), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!a.exists(), "a killed run left a (half) output");
    // The same command continues from the checkpoint ...
    let o = bin().args(["quantize", "smollm2", "--out", a.to_str().unwrap(), "--json"]).args(common).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let resumed = report["resumed_blocks"].as_u64().unwrap();
    assert!(resumed >= 3);
    // Said on the console, and times accounted honestly: this run's phases fit in its total,
    // the earlier run's time is reported apart.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&format!("resuming at block {} of 30", resumed + 1)), "{stderr}");
    assert!(report["resumed_seconds"].as_f64().unwrap() > 0.0, "{report}");
    let p = &report["phases"];
    let phase_sum: f64 =
        ["load", "calibrate", "solve", "propagate", "write"].iter().map(|k| p[k].as_f64().unwrap()).sum();
    assert!(
        phase_sum <= report["seconds"].as_f64().unwrap() + 0.05,
        "phases {p} exceed the run's {}",
        report["seconds"]
    );
    assert!(!dir.path().join("a.gguf.partial").exists(), "the work directory is removed when done");
    // ... and yields the bytes of an uninterrupted run.
    let o = bin().args(["quantize", "smollm2", "--out", b.to_str().unwrap()]).args(common).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "resumed output differs");
    assert!(dir.path().join("b.md").exists() && dir.path().join("b.svg").exists(), "report files beside the output");
}

#[test]
fn bad_quantize_input_is_one_clear_error_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let o = out.to_str().unwrap();
    let q = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["quantize", "smollm2", "--out", o, "--method", "rtn", "--allow-requantize"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let args = q(extra);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        fails(&refs, &out, needles);
    };
    check(&["--scheme", "blk.*.ffn_dwn=q6_k"], &["blk.*.ffn_dwn", "matches no tensor"]);
    check(&["--scheme", "blk.*.ffn_down=q9_x"], &["q9_x"]);
    check(&["--scheme", "blk.*.ffn_down=int4:g128"], &["int4:g128", "GGUF stores only ggml types", "q8_0"]);
    check(&["--scheme", "blk.*.attn_q=q4_k"], &["blk.0.attn_q.weight", "256"]);
    check(&["--scheme", "blk.*.ffn_down=q4_0@magic"], &["magic"]);
    check(&["--preset", "Q9_K"], &["Q9_K"]);
    let emma = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/text/austen_emma.txt");
    check(&["--eval", emma], &["austen_emma.txt", "calibration text"]);
    check(&["--imatrix", "--calib-samples", "100000"], &["calibration samples"]);
    check(&["--imatrix", "/nonexistent/imatrix.dat"], &["/nonexistent/imatrix.dat"]);
    fails(
        &["quantize", "smollm2", "--out", "/nonexistent-dir/x.gguf", "--method", "rtn", "--allow-requantize"],
        Path::new("/nonexistent-dir/x.gguf"),
        &["/nonexistent-dir"],
    );
    let recipe = dir.path().join("r.toml");
    std::fs::write(&recipe, "[[rule]]\npattern = 3\n").unwrap();
    check(&["--recipe", recipe.to_str().unwrap()], &["r.toml"]);
}
