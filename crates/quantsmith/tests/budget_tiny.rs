//! Mixed precision under a size budget on a tiny random model (seconds, no download): the
//! planned file fits the budget and has exactly the predicted size, the recipe the planner
//! writes reproduces the run, more bytes never predict more error, probes measure every
//! tensor, and budgets that cannot be met are refused before anything is written.

mod tiny;

use std::path::Path;

use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::quantize::budget::{Budget, BudgetOptions, BudgetReport, ProbeMode};
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::report::QuantizeReport;
use quantsmith::quantize::{plan_with, quantize_with, Events, QuantizeOptions};
use quantsmith::solve::solver;
use tiny::Tiny;

struct Quiet;
impl Events for Quiet {
    fn progress(&self, _: &str, _: usize, _: usize) {}
}

fn opts(out: &Path, layout: &str, budget: Option<BudgetOptions>) -> QuantizeOptions {
    QuantizeOptions {
        preset: None,
        method: solver("gptq").unwrap(),
        rules: vec![],
        layout: layout.into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out: out.to_path_buf(),
            calib_texts: vec![tiny::text(0, 40_000)],
            calib: CalibOptions { samples: 8, len: 64, seed: 0, ..Default::default() },
            imatrix: ImatrixSource::None,
            batch_seqs: 3,
            resume: true,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions { ctx: 64, max_chunks: Some(4), ..Default::default() },
        budget,
    }
}

fn budget(b: Option<Budget>, probe: ProbeMode, sweep: Vec<f64>) -> BudgetOptions {
    BudgetOptions { budget: b, candidates: vec![], samples: 4, probe, probe_windows: 1, sweep }
}

fn plan(model: &Path, b: BudgetOptions) -> BudgetReport {
    plan_with(model.to_str().unwrap(), &opts(Path::new("unused.gguf"), "gguf", Some(b)), &Quiet).unwrap()
}

fn quantize(model: &Path, o: &QuantizeOptions) -> QuantizeReport {
    quantize_with(model.to_str().unwrap(), o, &Quiet).unwrap()
}

#[test]
fn the_planned_file_fits_its_budget_exactly_as_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let model = Tiny { tied: true, ..Tiny::default() }.gguf_in(dir.path());
    // The range the candidates allow, from a sweep over every bit width.
    let r = plan(&model, budget(None, ProbeMode::Sampled, vec![2.0, 4.0, 6.0, 8.0, 12.0, 16.0]));
    assert!(r.min_bytes < r.max_bytes);
    assert!(r.chosen.is_none() && !r.sweep.is_empty());
    // More bytes never predict more error; every point fits its budget.
    for w in r.sweep.windows(2) {
        assert!(w[1].predicted_kld <= w[0].predicted_kld + 1e-15, "{} then {}", w[0].predicted_kld, w[1].predicted_kld);
    }
    for a in &r.sweep {
        assert!(a.file_bytes <= a.budget_bytes);
    }
    // Every tensor's candidates are scored and probed into KLD units.
    assert!(r.tensors.iter().all(|t| t.gain > 0.0 && t.candidates.iter().all(|c| c.proxy.is_finite())));

    let target = (r.min_bytes + r.max_bytes) / 3;
    let out = dir.path().join("planned.gguf");
    let q =
        quantize(&model, &opts(&out, "gguf", Some(budget(Some(Budget::Bytes(target)), ProbeMode::Sampled, vec![]))));
    let p = q.plan.as_ref().unwrap().chosen.as_ref().unwrap();
    let written = std::fs::metadata(&out).unwrap().len();
    assert_eq!(written, q.file_bytes);
    assert_eq!(written, p.file_bytes, "the prediction is the exact size");
    assert!(written <= target);
    // A mixed file: more than one type among the planned tensors.
    let types: std::collections::BTreeSet<&str> = p.choice.iter().map(|(_, f)| f.as_str()).collect();
    assert!(types.len() > 1, "{types:?}");
    // The plan as a recipe reproduces the file byte for byte.
    let out2 = dir.path().join("recipe.gguf");
    let mut o = opts(&out2, "gguf", None);
    o.rules = q.plan.as_ref().unwrap().rules();
    quantize(&model, &o);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    // The recipe text parses back to the same rules.
    let toml = dir.path().join("plan.toml");
    std::fs::write(&toml, q.plan.as_ref().unwrap().recipe_toml("tiny")).unwrap();
    assert_eq!(quantsmith::quantize::recipe::read_recipe(&toml).unwrap(), o.rules);
}

#[test]
fn probing_every_tensor_reports_the_rank_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let model = Tiny::default().gguf_in(dir.path());
    let r = plan(&model, budget(Some(Budget::Bpw(8.0)), ProbeMode::All, vec![]));
    let ranks = r.ranks.as_ref().expect("rank agreement");
    assert_eq!(ranks.n, r.tensors.len(), "every matrix probed");
    assert!((-1.0..=1.0).contains(&ranks.proxy));
    assert!(r.tensors.iter().all(|t| t.probed && t.probe_kld.unwrap() > 0.0));
    // Bits per weight: the budget is that many bits per weight of the model.
    let a = r.chosen.as_ref().unwrap();
    assert_eq!(a.budget_bytes, (8.0 * r.n_params as f64 / 8.0) as u64);
    assert!(a.bits_per_weight <= 8.0);
}

#[test]
fn directory_layouts_plan_over_the_listed_formats() {
    let dir = tempfile::tempdir().unwrap();
    let model = Tiny::default().gguf_in(dir.path());
    // A packed layout: the directory itself fits.
    let out = dir.path().join("ct");
    let mut b = budget(Some(Budget::Bpw(12.0)), ProbeMode::Sampled, vec![]);
    b.candidates = vec!["int4:g64".into(), "int8".into()];
    let q = quantize(&model, &opts(&out, "compressed-tensors", Some(b.clone())));
    let a = q.plan.as_ref().unwrap().chosen.as_ref().unwrap();
    assert!(q.file_bytes <= a.budget_bytes, "{} > {}", q.file_bytes, a.budget_bytes);
    let types: std::collections::BTreeSet<&str> = a.choice.iter().map(|(_, f)| f.as_str()).collect();
    assert!(types.iter().all(|f| ["int4:g64", "int8"].contains(f)), "{types:?}");
    // Fake-quant holds dequantized weights: the budget is over the formats' stored bytes.
    let out = dir.path().join("fq");
    let mut b = budget(Some(Budget::Bpw(6.0)), ProbeMode::None, vec![]);
    b.candidates = vec!["int4:g64".into(), "int8".into(), "f16".into()];
    let q = quantize(&model, &opts(&out, "fake-quant", Some(b.clone())));
    let a = q.plan.as_ref().unwrap().chosen.as_ref().unwrap();
    assert!(q.tensor_bytes() <= a.budget_bytes && q.tensor_bytes() == a.file_bytes);
    // Without a candidate list a directory layout is refused (it has no default).
    b.candidates.clear();
    let e = quantize_with(model.to_str().unwrap(), &opts(&dir.path().join("fq2"), "fake-quant", Some(b)), &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--candidates"), "{e}");
    assert!(!dir.path().join("fq2").exists());
}

#[test]
fn budgets_that_cannot_be_met_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = Tiny::default().gguf_in(dir.path());
    let r = plan(&model, budget(Some(Budget::Bpw(32.0)), ProbeMode::None, vec![]));
    let out = dir.path().join("small.gguf");
    let o = opts(&out, "gguf", Some(budget(Some(Budget::Bytes(r.min_bytes - 1)), ProbeMode::Sampled, vec![])));
    let e = quantize_with(model.to_str().unwrap(), &o, &Quiet).unwrap_err().to_string();
    assert!(e.contains(&format!("smallest file these candidates allow: {} bytes", r.min_bytes)), "{e}");
    assert!(!out.exists() && !dir.path().join("small.gguf.partial").exists());
    // At exactly the minimum it fits.
    let o = opts(&out, "gguf", Some(budget(Some(Budget::Bytes(r.min_bytes)), ProbeMode::None, vec![])));
    let q = quantize(&model, &o);
    assert_eq!(q.file_bytes, r.min_bytes);
    // A candidate no tensor can take, and an empty list.
    let mut b = budget(Some(Budget::Bpw(8.0)), ProbeMode::None, vec![]);
    b.candidates = vec!["q8_0".into(), "int4:g64".into()];
    let e = quantize_with(model.to_str().unwrap(), &opts(&dir.path().join("x.gguf"), "gguf", Some(b.clone())), &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("int4:g64 fits no tensor"), "{e}");
    b.candidates = vec![" ".into()];
    let e = quantize_with(model.to_str().unwrap(), &opts(&dir.path().join("x.gguf"), "gguf", Some(b)), &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(!dir.path().join("x.gguf").exists());
}
