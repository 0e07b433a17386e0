//! `quantsmith plan`: the most accurate storage per tensor that fits a size budget, written
//! as a recipe `quantize --recipe` runs; or a Pareto sweep of bits per weight against KLD.

use std::path::{Path, PathBuf};

use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::quantize::budget::{parse_sweep, read_reference, write_pareto_svg, BudgetReport};
use quantsmith::quantize::pipeline::PipelineOptions;
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::recipe::{parse_solver, Rule};
use quantsmith::quantize::{plan_with, quantize_with, QuantizeOptions};
use quantsmith::{Error, Result};

use crate::cmd::eval::read_text;
use crate::cmd::quantize::{calib_texts_of, imatrix_of, rules_of, BudgetArgs, Events};

/// Arguments of `quantsmith plan`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, a Hugging Face directory or a built-in name (smollm2, ...).
    pub model: String,
    /// Budget and candidates.
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Pareto sweep FROM:TO:STEP in whole-file bits per weight (e.g. 3.5:8.5:0.5): the
    /// allocation at each point, drawn as an SVG.
    #[arg(long, value_name = "FROM:TO:STEP")]
    pub sweep: Option<String>,
    /// Write the chosen recipe (TOML) here (default: print it).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace an existing --out or --plot file.
    #[arg(long)]
    pub force: bool,
    /// The sweep's chart (default: plan-sweep.svg beside --out, or in the current directory).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Points of another tool to draw on the chart: lines `name,bytes,kld`.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Quantize and evaluate every sweep point on this text (measured KLD beside the
    /// prediction); slow: one quantization per point.
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Chunks of that evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_chunks: usize,
    /// Output layout the plan is for: gguf (default), compressed-tensors, gptq, fake-quant.
    #[arg(long, default_value = "gguf")]
    pub layout: String,
    /// Preset giving the types of the tensors the plan does not choose (GGUF; default Q4_K_M).
    #[arg(long)]
    pub preset: Option<String>,
    /// Solver the quantization will use (recorded; the plan's proxy rounds to nearest).
    #[arg(long, default_value = "gptq")]
    pub method: String,
    /// Importance weighting of the quantization run (its metadata counts in the file size).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "FILE")]
    pub imatrix: Option<String>,
    /// Pin tensors: PATTERN=FORMAT[@SOLVER] (repeatable); the plan chooses the rest.
    #[arg(long)]
    pub scheme: Vec<String>,
    /// TOML recipe whose rules pin tensors.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Calibration text file (repeatable; default: the built-in public-domain novel).
    #[arg(long, value_name = "FILE")]
    pub calib: Vec<PathBuf>,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    pub calib_len: usize,
    /// Seed of the calibration windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the whole plan (sensitivities included) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A directory under the system's temp dir, removed when dropped (also on an error).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("quantsmith-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(ScratchDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn refuse_existing(p: &Path, force: bool) -> Result<()> {
    if p.exists() && !force {
        return Err(Error::Other(format!("{}: already exists; pass --force to replace it", p.display())));
    }
    Ok(())
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    crate::cmd::quantize::check_calib(args.budget.plan_samples.max(1), args.calib_len)?;
    let sweep = args.sweep.as_deref().map(parse_sweep).transpose()?.unwrap_or_default();
    let budget = args.budget.options(sweep.clone())?.ok_or_else(|| {
        Error::Other("quantsmith plan needs --target-size SIZE, --target-bpw BPW or --sweep FROM:TO:STEP".into())
    })?;
    let preset = args.preset.as_deref().map(Preset::parse).transpose()?;
    let method = parse_solver(&args.method)?;
    let rules = rules_of(&args.scheme, args.recipe.as_deref())?;
    let calib_texts = calib_texts_of(&args.calib)?;
    let imatrix = imatrix_of(args.imatrix.as_deref());
    let eval_text = match &args.eval {
        Some(p) => {
            if sweep.is_empty() {
                return Err(Error::Other("--eval measures the points of a --sweep".into()));
            }
            let text = read_text(p)?;
            if calib_texts.iter().any(|(_, c)| *c == text) {
                return Err(Error::Text {
                    path: p.clone(),
                    msg: "is also calibration text: never evaluate on it".into(),
                });
            }
            Some((p.clone(), text))
        }
        None => None,
    };
    if let Some(o) = &args.out {
        refuse_existing(o, args.force)?;
    }
    let plot = match (&args.plot, &args.out) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(o)) if !sweep.is_empty() => Some(o.with_file_name("plan-sweep.svg")),
        (None, None) if !sweep.is_empty() => Some(PathBuf::from("plan-sweep.svg")),
        _ => None,
    };
    if let Some(p) = &plot {
        refuse_existing(p, args.force)?;
    }
    let reference = args.reference.as_deref().map(read_reference).transpose()?.unwrap_or_default();
    let opts = QuantizeOptions {
        preset,
        method,
        rules: rules.clone(),
        layout: args.layout.clone(),
        transforms: Vec::new(),
        act: None,
        kv: None,
        force: false,
        allow_requantize: true,
        max_shard_bytes: 5_000_000_000,
        pipeline: PipelineOptions {
            out: PathBuf::from("plan.out"),
            calib_texts,
            calib: CalibOptions { samples: budget.samples, len: args.calib_len, seed: args.seed, ..Default::default() },
            imatrix,
            batch_seqs: 8,
            resume: false,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions::default(),
        budget: Some(budget),
    };
    let events = Events::new();
    let report = plan_with(&args.model, &opts, &events)?;
    events.plan.finish();

    // Measured sweep points: quantize each allocation and evaluate it.
    let mut measured: Vec<(f64, f64)> = Vec::new();
    if let Some(text) = &eval_text {
        let dir = ScratchDir::new()?;
        for (i, a) in report.sweep.iter().enumerate() {
            let out = dir.path().join(format!("point{i}{}", if args.layout == "gguf" { ".gguf" } else { "" }));
            let mut r = rules.clone();
            r.extend(a.choice.iter().map(|(n, f)| Rule { pattern: n.clone(), format: f.clone(), solver: None }));
            let mut o = opts.clone();
            o.rules = r;
            o.budget = None;
            o.pipeline.out = out.clone();
            // The quantization's own calibration: quantize's default 128 windows.
            o.pipeline.calib.samples = 128;
            o.eval_text = Some(text.clone());
            o.eval = PerplexityOptions { ctx: 512, max_chunks: Some(args.eval_chunks), ..Default::default() };
            let q = quantize_with(&args.model, &o, &events)?;
            events.blocks.finish();
            events.tokens.finish();
            let kld = q.eval.as_ref().and_then(|e| e.kld_mean).unwrap_or(f64::NAN);
            eprintln!(
                "sweep point {:.3} bits per weight: measured mean KLD {kld:.6} (predicted {:.6})",
                q.bits_per_weight, a.predicted_kld
            );
            measured.push((q.bits_per_weight, kld));
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    if let Some(p) = &plot {
        write_pareto_svg(p, &report, &measured, &reference)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?);
    } else {
        print_plan(&report, &measured);
    }
    if let Some(o) = &args.out {
        if report.chosen.is_some() {
            std::fs::write(o, report.recipe_toml(&args.model)).map_err(|e| Error::io(o, e))?;
            eprintln!("wrote the recipe to {}", o.display());
        }
    } else if !args.json && report.chosen.is_some() {
        println!();
        print!("{}", report.recipe_toml(&args.model));
    }
    if let Some(p) = &plot {
        eprintln!("wrote the sweep chart to {}", p.display());
    }
    Ok(())
}

fn print_plan(r: &BudgetReport, measured: &[(f64, f64)]) {
    println!(
        "sensitivity: {} tensors × their candidates on {} calibration tokens ({:.1} s); probes on {} tokens ({:.1} s); allocation {:.2} s",
        r.tensors.len(),
        r.calib_tokens,
        r.seconds_sensitivity,
        r.probe_tokens,
        r.seconds_probes,
        r.seconds_allocate
    );
    if let Some(k) = &r.ranks {
        println!(
            "proxy vs measured KLD over {} probed tensors: Spearman {:.3}{}",
            k.n,
            k.proxy,
            k.interpolated
                .map(|v| format!("; depth-interpolated prediction vs measured (tensors not sampled): {v:.3}"))
                .unwrap_or_default()
        );
    }
    println!(
        "sizes: fixed part {} bytes; smallest file {} bytes ({:.3} bpw), largest {} bytes ({:.3} bpw)",
        r.fixed_bytes,
        r.min_bytes,
        8.0 * r.min_bytes as f64 / r.n_params as f64,
        r.max_bytes,
        8.0 * r.max_bytes as f64 / r.n_params as f64
    );
    if !r.kld_units {
        println!(
            "no probes: predicted figures are the raw proxy, tr(ΔW H ΔWᵀ) per token summed over tensors, not a KLD"
        );
    }
    if let Some(a) = &r.chosen {
        println!();
        println!("{:<28} {:>8} {:>12} {:>13} {:>7}", "tensor", "type", "bytes", "pred. KLD", "probed");
        for (s, (_, f)) in r.tensors.iter().zip(&a.choice) {
            let c = s.candidates.iter().find(|c| &c.format == f).expect("chosen candidate");
            println!(
                "{:<28} {:>8} {:>12} {:>13.3e} {:>7}",
                s.name,
                f,
                c.bytes,
                c.predicted_kld,
                if s.probed { "yes" } else { "" }
            );
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, f) in &a.choice {
            match counts.iter_mut().find(|c| c.0 == f) {
                Some(c) => c.1 += 1,
                None => counts.push((f, 1)),
            }
        }
        println!();
        println!("types: {}", counts.iter().map(|(f, n)| format!("{f} ×{n}")).collect::<Vec<_>>().join(", "));
        println!(
            "plan: budget {} bytes → file {} bytes exactly ({:.4} bits per weight); predicted mean KLD {:.6}",
            a.budget_bytes, a.file_bytes, a.bits_per_weight, a.predicted_kld
        );
    }
    if !r.sweep.is_empty() {
        println!();
        println!("{:>10} {:>14} {:>14} {:>14}", "bpw", "file bytes", "pred. KLD", "measured KLD");
        for (i, a) in r.sweep.iter().enumerate() {
            println!(
                "{:>10.3} {:>14} {:>14.6} {:>14}",
                a.bits_per_weight,
                a.file_bytes,
                a.predicted_kld,
                measured.get(i).map(|m| format!("{:.6}", m.1)).unwrap_or_default()
            );
        }
    }
}
