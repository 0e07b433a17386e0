//! The solvers beyond GPTQ through the binary on the tiny model: QuantEase, kept outliers and
//! low-rank terms into the fake-quant layout, read back by `eval`, with side tables counted.

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::process::Command;

fn run(args: &[&str]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(o.status.success(), "{args:?}: {err}");
    (out, err)
}

/// A directory holding the tiny model, a calibration text and an evaluation text (another
/// part of the novel).
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny::Tiny::default().gguf_in(dir.path());
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, tiny::text(0, 40_000).1).unwrap();
    let eval = dir.path().join("eval.txt");
    std::fs::write(&eval, tiny::text(40_000, 20_000).1).unwrap();
    (dir, model, calib, eval)
}

#[test]
fn quantease_and_outliers_write_fake_quant_that_eval_reads() {
    let (dir, model, calib, eval) = setup();
    let (m, c, e) = (model.to_str().unwrap(), calib.to_str().unwrap(), eval.to_str().unwrap());
    let mut reports = Vec::new();
    for (name, extra) in [
        ("gptq", vec!["--method", "gptq"]),
        ("quantease", vec!["--method", "quantease:sweeps=4"]),
        ("outliers", vec!["--method", "gptq", "--outliers", "0.01"]),
        ("lowrank", vec!["--method", "gptq", "--lowrank", "8:int8"]),
        ("lowrank-f16", vec!["--method", "gptq", "--lowrank", "8"]),
        ("lowrank-absorb", vec!["--method", "gptq", "--lowrank", "8:absorb"]),
        ("combined", vec!["--method", "quantease:sweeps=2", "--outliers", "0.01", "--lowrank", "4:int8"]),
        ("asym", vec!["--method", "gptq-asym"]),
        ("rsq", vec!["--method", "gptq", "--calib-weighting", "rsq"]),
    ] {
        let out = dir.path().join(name);
        let mut args = vec!["quantize", m, "--out", out.to_str().unwrap(), "--layout", "fake-quant", "--scheme"];
        args.extend(["blk.*=int3:g64", "--calib", c, "--calib-samples", "8", "--calib-len", "64", "--json"]);
        args.extend(["--eval", e, "--eval-ctx", "64", "--eval-chunks", "8", "--progress", "none"]);
        args.extend(extra);
        let (stdout, _) = run(&args);
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        reports.push((name, r));
        // eval reads the directory back as dense weights.
        run(&["eval", out.to_str().unwrap(), "--text", e, "--ctx", "64", "--chunks", "2", "--base", m]);
    }
    let find = |n: &str| &reports.iter().find(|(k, _)| *k == n).unwrap().1;
    let q = |r: &serde_json::Value| {
        r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_down.weight").unwrap().clone()
    };
    assert_eq!(q(find("quantease"))["solver"], "quantease:sweeps=4");
    let o = q(find("outliers"));
    assert_eq!(o["solver"], "gptq:outliers=0.01");
    // 1 % of 256 × 512 kept: 1311 weights, 6 bytes each on top of int3:g64's bytes.
    assert!(o["note"].as_str().unwrap().contains("1311 weights"), "{o}");
    let plain_bytes = q(find("gptq"))["bytes"].as_u64().unwrap();
    assert_eq!(o["bytes"].as_u64().unwrap(), plain_bytes + 6 * 1311);
    // The quantized layers' output error: QuantEase and outliers at or below GPTQ's.
    let err = |n: &str| q(find(n))["output_err"].as_f64().unwrap();
    assert!(err("quantease") <= err("gptq") * 1.0001, "{} vs {}", err("quantease"), err("gptq"));
    assert!(err("outliers") < err("gptq"), "{} vs {}", err("outliers"), err("gptq"));
    // Rank 8 of 256 × 512: Aᵀ and B hold 8 × (256 + 512) values, int8 with one f16 scale per
    // row of each (or f16).
    let lr = q(find("lowrank"));
    assert_eq!(lr["solver"], "gptq:lowrank=8:lowrank-store=int8");
    assert_eq!(lr["bytes"].as_u64().unwrap(), plain_bytes + 8 * (256 + 512) + 2 * 2 * 8);
    assert!(lr["note"].as_str().unwrap().contains("rank-8 int8 correction"), "{lr}");
    let lr16 = q(find("lowrank-f16"));
    assert_eq!(lr16["bytes"].as_u64().unwrap(), plain_bytes + 2 * 8 * (256 + 512));
    assert!(err("lowrank") < err("gptq"), "{} vs {}", err("lowrank"), err("gptq"));
    assert!(err("lowrank-f16") <= err("lowrank") * 1.05, "{} vs {}", err("lowrank-f16"), err("lowrank"));
    eprintln!(
        "output errors: {:?}",
        ["gptq", "quantease", "outliers", "lowrank", "lowrank-f16", "lowrank-absorb", "combined"].map(err)
    );
    let ab = q(find("lowrank-absorb"));
    assert_eq!(ab["solver"], "gptq:lowrank=8:lowrank-order=absorb");
    assert_eq!(ab["bytes"].as_u64().unwrap(), plain_bytes + 2 * 8 * (256 + 512));
    // No claim on its error here: the tiny model's weights are uniform noise, whose residual
    // after removing its top directions has a larger range for its energy (the unit test
    // `absorbing_a_low_rank_spike_first_beats_fitting_it_after` checks the order where it pays).
    // Everything at once: QuantEase, kept weights and an int8 rank-4 term, each counted.
    let all = q(find("combined"));
    assert_eq!(all["solver"], "quantease:sweeps=2:outliers=0.01:lowrank=4:lowrank-store=int8");
    assert_eq!(all["bytes"].as_u64().unwrap(), plain_bytes + 6 * 1311 + 4 * (256 + 512) + 2 * 2 * 4);
    let note = all["note"].as_str().unwrap();
    assert!(note.contains("1311 weights") && note.contains("rank-4 int8"), "{note}");
    assert!(err("combined") < err("outliers"), "{} vs {}", err("combined"), err("outliers"));
    // Asymmetric calibration: its own solver spec, the plain layout's bytes, and a different
    // solution (block 0's first group sees the same input in both streams; later ones do not).
    let asym = q(find("asym"));
    assert_eq!(asym["solver"], "gptq:asym=yes");
    assert_eq!(asym["bytes"].as_u64().unwrap(), plain_bytes);
    assert_ne!(asym["sqnr_db"], q(find("gptq"))["sqnr_db"]);
    // Token weighting changes the statistics, not the layout.
    let rsq = q(find("rsq"));
    assert_eq!(rsq["bytes"].as_u64().unwrap(), plain_bytes);
    assert_ne!(rsq["sqnr_db"], q(find("gptq"))["sqnr_db"]);
    for (name, r) in &reports {
        assert!(r["eval"]["kld_mean"].as_f64().unwrap().is_finite(), "{name}");
    }
}

/// Nested precision through the binary: `--nested 8,4,2` writes one int8 code set (both code
/// layouts), the quantize report evaluates every width, and `eval --slice` reading the file
/// back at 4 and 2 bits finds the same figures; narrower slices cost accuracy, and the
/// cascade's coarsest slice beats nested rounding's and joint compensation's.
#[test]
fn nested_codes_are_read_back_at_every_width() {
    let (dir, model, calib, eval) = setup();
    let (m, c, e) = (model.to_str().unwrap(), calib.to_str().unwrap(), eval.to_str().unwrap());
    let mut kld = std::collections::HashMap::new();
    for (name, layout, method, nested, spec) in [
        ("ct-gptq", "compressed-tensors", "gptq", "8,4,2", "gptq:nested=8/4/2"),
        ("gptq-gptq", "gptq", "gptq", "8,4,2", "gptq:nested=8/4/2"),
        ("ct-rtn", "compressed-tensors", "rtn", "8,4,2", "rtn:nested=8/4/2"),
        (
            "ct-joint",
            "compressed-tensors",
            "gptq",
            "8,4,2@4,2,1:joint",
            "gptq:nested=8/4/2:nested-weights=4/2/1:nested-mode=joint",
        ),
    ] {
        let out = dir.path().join(name);
        let o = out.to_str().unwrap();
        let scheme = "blk.*=int8:g64:asym:scale=f16";
        let (stdout, _) = run(&[
            "quantize",
            m,
            "--out",
            o,
            "--layout",
            layout,
            "--scheme",
            scheme,
            "--method",
            method,
            "--nested",
            nested,
            "--calib",
            c,
            "--calib-samples",
            "8",
            "--calib-len",
            "64",
            "--eval",
            e,
            "--eval-ctx",
            "64",
            "--eval-chunks",
            "8",
            "--progress",
            "none",
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_down.weight").unwrap();
        assert_eq!(t["solver"], spec, "{t}");
        let slices = r["eval_slices"].as_array().unwrap_or_else(|| panic!("{name}: no eval_slices in {r}"));
        assert_eq!(slices.iter().map(|s| s["bits"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 2]);
        let mut k = vec![r["eval"]["kld_mean"].as_f64().unwrap()];
        // eval reads the directory at each width: the same figures as the quantize report's.
        let (ev, _) =
            run(&["eval", o, "--text", e, "--ctx", "64", "--chunks", "8", "--base", m, "--slice", "4,2", "--json"]);
        let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
        let ev = ev.as_array().unwrap_or_else(|| panic!("{ev}"));
        for (s, back) in slices.iter().zip(ev) {
            assert_eq!(back["slice_bits"], s["bits"]);
            let (a, b) = (s["eval"]["kld_mean"].as_f64().unwrap(), back["kld_mean"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-6 * a.max(1e-3), "{name} at {} bits: report {a}, eval {b}", s["bits"]);
            k.push(b);
        }
        assert!(k.iter().all(|x| x.is_finite()) && k[0] < k[1] && k[1] < k[2], "{name}: {k:?}");
        // A width the set was not nested at: one clear error, exit 2.
        let o3 = Command::new(env!("CARGO_BIN_EXE_quantsmith"))
            .args(["eval", o, "--text", e, "--ctx", "64", "--chunks", "2", "--slice", "3"])
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&o3.stderr);
        assert_eq!(o3.status.code(), Some(2), "{msg}");
        assert!(msg.contains("nested at 8, 4, 2 bits, not 3") && msg.contains("config.json"), "{msg}");
        kld.insert(name, k);
    }
    eprintln!("mean KLD at 8/4/2 bits: {kld:?}");
    // The same codes in both layouts; GPTQ's slices ahead of rounding's (its 8-bit model pays
    // for them: the objective sums the widths).
    assert_eq!(kld["ct-gptq"], kld["gptq-gptq"]);
    // Cascade's coarsest slice is GPTQ on its own grid: ahead of rounding's and of joint
    // compensation's there (the wider widths pay for it, constrained to its buckets).
    assert!(kld["ct-gptq"][2] < kld["ct-rtn"][2], "{kld:?}");
    assert!(kld["ct-gptq"][2] < kld["ct-joint"][2], "{kld:?}");
}
