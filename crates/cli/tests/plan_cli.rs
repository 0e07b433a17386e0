//! `quantsmith plan` and `quantize --target-size` through the real binary: a recipe written,
//! run, and fitting its budget; a sweep drawn; and each bad budget input one clear error with
//! nothing written.

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().expect("run quantsmith")
}

fn ok(args: &[&str]) -> (String, String) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

fn sv(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// Exit 2, one `error:` line naming every needle, and none of `paths` written.
fn fails(args: &[&str], paths: &[&Path], needles: &[&str]) {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} should mention {n:?}");
    }
    for p in paths {
        assert!(!p.exists(), "{args:?} left {}", p.display());
    }
}

const FAST: [&str; 8] = ["--calib-len", "32", "--plan-samples", "4", "--progress", "none", "--method", "rtn"];

#[test]
fn a_planned_recipe_runs_and_fits_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let m = model.to_str().unwrap();
    let recipe = dir.path().join("plan.toml");
    let r = recipe.to_str().unwrap();
    let (stdout, _) = ok(&[&["plan", m, "--target-bpw", "6", "--out", r][..], &FAST].concat());
    assert!(stdout.contains("plan: budget") && stdout.contains("predicted mean KLD"), "{stdout}");
    assert!(stdout.contains("Spearman"), "{stdout}");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("[[rule]]") && text.contains("blk.0.attn_q.weight"), "{text}");
    // An existing recipe is not replaced without --force.
    fails(&[&["plan", m, "--target-bpw", "6", "--out", r][..], &FAST].concat(), &[], &["already exists"]);
    let budget: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("# budget ").and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()))
        .expect("budget in the recipe's header");
    let out = dir.path().join("q.gguf");
    let o = out.to_str().unwrap();
    ok(&["quantize", m, "--recipe", r, "--out", o, "--method", "rtn", "--progress", "none"]);
    assert!(std::fs::metadata(&out).unwrap().len() <= budget);
    // The same budget in one go: the same bytes.
    let out2 = dir.path().join("q2.gguf");
    let o2 = out2.to_str().unwrap();
    let (stdout, _) = ok(&[&["quantize", m, "--target-bpw", "6", "--out", o2][..], &FAST].concat());
    assert!(stdout.contains("plan   budget"), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn a_sweep_draws_the_pareto_chart() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let m = model.to_str().unwrap();
    let svg = dir.path().join("sweep.svg");
    let refs = dir.path().join("refs.csv");
    std::fs::write(&refs, "# name,bytes,kld\nQ4_K_M,300000,0.05\n").unwrap();
    let (stdout, _) =
        ok(
            &[
                &[
                    "plan",
                    m,
                    "--sweep",
                    "4:8:1",
                    "--plot",
                    svg.to_str().unwrap(),
                    "--reference",
                    refs.to_str().unwrap(),
                ][..],
                &FAST,
            ]
            .concat(),
        );
    assert!(stdout.contains("pred. KLD"), "{stdout}");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("<svg") && s.contains("bits per weight") && s.contains("Q4_K_M"), "chart");
    assert!(s.contains("quantsmith plan (predicted)"));
}

#[test]
fn bad_budget_input_is_one_clear_error_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("o.gguf");
    let o = out.to_str().unwrap();
    let partial = dir.path().join("o.gguf.partial");
    let q = |extra: &[&'static str]| -> Vec<String> {
        ["quantize", m, "--out", o].iter().chain(extra).chain(&FAST).map(|s| s.to_string()).collect()
    };
    fails(&sv(&q(&["--target-size", "12XB"])), &[&out, &partial], &["12XB", "KB, MB, GB"]);
    fails(&sv(&q(&["--target-size", "0"])), &[&out, &partial], &["between 1 byte"]);
    fails(&sv(&q(&["--target-bpw", "abc"])), &[&out, &partial], &["--target-bpw", "bits per weight"]);
    fails(&sv(&q(&["--target-size", "10KB"])), &[&out, &partial], &["below the smallest file", "bytes"]);
    fails(&sv(&q(&["--target-size", "10MB", "--candidates", ","])), &[&out, &partial], &["--candidates", "empty"]);
    fails(
        &sv(&q(&["--target-size", "10MB", "--candidates", "q8_0,nvfp4"])),
        &[&out, &partial],
        &["nvfp4 fits no tensor"],
    );
    fails(
        &sv(&q(&["--target-size", "10MB", "--probe", "some"])),
        &[&out, &partial],
        &["--probe", "sampled, all or none"],
    );
    fails(&sv(&q(&["--candidates", "q8_0"])), &[&out, &partial], &["--candidates needs --target-size"]);
    fails(&["plan", m, "--progress", "none"], &[], &["--target-size", "--sweep"]);
    fails(&["plan", m, "--sweep", "8:4:1", "--progress", "none"], &[], &["--sweep", "FROM:TO:STEP"]);
    let bad_ref = dir.path().join("bad.csv");
    std::fs::write(&bad_ref, "Q4_K_M,lots,0.1\n").unwrap();
    fails(
        &["plan", m, "--sweep", "4:8:1", "--reference", bad_ref.to_str().unwrap(), "--progress", "none"],
        &[],
        &["bad.csv", "line 1", "name,bytes,kld"],
    );
}

/// On SmolLM2 (576-wide rows), the preset's k-quant types would fall back to 32-blocks; a
/// budget run chooses every type itself, so no fallback is said or reported.
#[test]
fn a_budget_run_reports_no_preset_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fb.gguf");
    let o = out.to_str().unwrap();
    let (stdout, stderr) = ok(&[
        "quantize",
        "smollm2",
        "--allow-requantize",
        "--target-bpw",
        "6",
        "--method",
        "rtn",
        "--probe",
        "none",
        "--plan-samples",
        "1",
        "--calib-len",
        "64",
        "--candidates",
        "q8_0,q4_0",
        "--out",
        o,
        "--json",
        "--progress",
        "none",
    ]);
    assert!(!stderr.contains("fallback"), "{stderr}");
    assert!(stderr.contains("planned 211 of 211 matrices") && stderr.contains("proxy units, no probes"), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["fallbacks"].as_array().unwrap().len(), 0);
    assert!(r["file_bytes"].as_u64().unwrap() <= r["plan"]["chosen"]["budget_bytes"].as_u64().unwrap());
    let types: std::collections::BTreeSet<&str> =
        r["tensors"].as_array().unwrap().iter().filter_map(|t| t["format"].as_str()).collect();
    assert!(types.contains("q8_0") && types.contains("q4_0"), "{types:?}");
}
