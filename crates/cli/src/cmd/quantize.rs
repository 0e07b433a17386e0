//! `quantsmith quantize`: calibrate, solve and write a GGUF file llama.cpp loads, or a
//! Hugging Face directory (compressed-tensors, GPTQ, fake-quant) that vLLM and transformers load.

use std::path::PathBuf;

use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::recipe::{parse_solver, read_recipe, Rule};
use quantsmith::quantize::{quantize, QuantizeOptions, DEFAULT_CALIB_NAME, DEFAULT_CALIB_TEXT};
use quantsmith::{Error, Result};

use crate::cmd::eval::read_text;
use crate::cmd::progress::Progress;

/// Arguments of `quantsmith quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file (f32/f16/bf16 or quantized), a Hugging Face directory
    /// (Llama/Qwen2/Mistral) or a built-in name (smollm2).
    pub model: String,
    /// Output: a `.gguf` file, or a directory for the Hugging Face layouts (written under a
    /// temporary name, renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Output layout: gguf (default for `.gguf` outputs), compressed-tensors, gptq, fake-quant.
    #[arg(long)]
    pub layout: Option<String>,
    /// Named preset choosing every tensor's type as llama-quantize would
    /// (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, ...; GGUF only, default Q4_K_M).
    #[arg(long)]
    pub preset: Option<String>,
    /// Default solver: rtn (round to nearest) or gptq.
    #[arg(long, default_value = "gptq")]
    pub method: String,
    /// Importance weighting as llama.cpp's imatrix: computed from the calibration text, or
    /// read from FILE (llama.cpp's GGUF or .dat imatrix).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "FILE")]
    pub imatrix: Option<String>,
    /// Override the preset: PATTERN=FORMAT[@SOLVER], e.g. 'blk.*.ffn_down=q6_k' (repeatable).
    #[arg(long)]
    pub scheme: Vec<String>,
    /// TOML recipe file: [[rule]] pattern/format/solver, first match wins.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Calibration text files (default: the built-in public-domain novel).
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    pub calib_len: usize,
    /// Seed of the calibration windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate the result against the input on this text (perplexity, KL-divergence).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Chunks of the evaluation.
    #[arg(long, default_value_t = 40)]
    pub eval_chunks: usize,
    /// Tokens per evaluation chunk.
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Transform applied to every linear group before it is solved, in order (repeatable),
    /// e.g. `scale-fold:seed=1`.
    #[arg(long = "transform")]
    pub transforms: Vec<String>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// Largest safetensors shard of directory layouts, in bytes (0: one file).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_bytes: u64,
    /// Start afresh even if OUT.partial/ holds a checkpoint of this run.
    #[arg(long)]
    pub no_resume: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    let preset = args.preset.as_deref().map(Preset::parse).transpose()?;
    let layout = match (&args.layout, quantsmith::quantize::default_layout(&args.out)) {
        (Some(l), _) => l.clone(),
        (None, Some(l)) => l.to_string(),
        (None, None) => {
            return Err(Error::Other(format!(
                "--out {}: name the layout with --layout ({}), or give a .gguf file",
                args.out.display(),
                quantsmith::export::LAYOUTS.join(", ")
            )))
        }
    };
    let method = parse_solver(&args.method)?;
    let mut rules: Vec<Rule> = args.scheme.iter().map(|s| Rule::parse_scheme(s)).collect::<Result<_>>()?;
    if let Some(r) = &args.recipe {
        rules.extend(read_recipe(r)?);
    }
    let calib_texts = if args.calib.is_empty() {
        vec![(PathBuf::from(DEFAULT_CALIB_NAME), DEFAULT_CALIB_TEXT.to_string())]
    } else {
        args.calib.iter().map(|p| Ok((p.clone(), read_text(p)?))).collect::<Result<Vec<_>>>()?
    };
    let imatrix = match args.imatrix.as_deref() {
        None => ImatrixSource::None,
        Some("") => ImatrixSource::Calibrate,
        Some(f) => ImatrixSource::File(PathBuf::from(f)),
    };
    let eval_text = match &args.eval {
        Some(p) => Some((p.clone(), read_text(p)?)),
        None => None,
    };
    if let Some((p, text)) = &eval_text {
        // By content, so the built-in calibration novel is caught too.
        if calib_texts.iter().any(|(_, c)| c == text) {
            return Err(Error::Text { path: p.clone(), msg: "is also calibration text: never evaluate on it".into() });
        }
    }
    let opts = QuantizeOptions {
        preset,
        method,
        rules,
        layout,
        transforms: args.transforms.clone(),
        force: args.force,
        max_shard_bytes: args.max_shard_bytes,
        pipeline: PipelineOptions {
            out: args.out.clone(),
            calib_texts,
            calib: CalibOptions { samples: args.calib_samples, len: args.calib_len, seed: args.seed },
            imatrix,
            batch_seqs: 8,
            resume: !args.no_resume,
        },
        eval_text,
        eval: PerplexityOptions { ctx: args.eval_ctx, max_chunks: Some(args.eval_chunks), ..Default::default() },
    };
    let blocks = Progress::new("blocks");
    let chunks = Progress::new("eval chunks");
    let report = quantize(&args.model, &opts, &|phase, done, total| {
        if phase == "eval" {
            blocks.finish();
            chunks.update(done, total)
        } else {
            blocks.update(done, total)
        }
    })?;
    blocks.finish();
    chunks.finish();
    let (md, svg) = report.write_files()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?);
        return Ok(());
    }
    println!("{:<28} {:>8} {:>12} {:>8} {:>9} {:>11}", "tensor", "type", "solver", "bits", "SQNR dB", "output err");
    for t in &report.tensors {
        if t.solver == "copy" {
            continue;
        }
        println!(
            "{:<28} {:>8} {:>12} {:>8.3} {:>9} {:>11}",
            t.name,
            t.format,
            t.solver,
            t.bits_per_weight,
            t.sqnr_db.map(|v| format!("{v:.2}")).unwrap_or_default(),
            t.output_err.map(|v| format!("{v:.2e}")).unwrap_or_default()
        );
    }
    println!();
    println!(
        "wrote {} ({}, {} bytes, {:.3} bits/weight; the formats alone {:.3})",
        report.output.display(),
        report.layout,
        report.file_bytes,
        report.bits_per_weight,
        report.format_bits_per_weight
    );
    println!("report {}{}", md.display(), svg.map(|s| format!(", chart {}", s.display())).unwrap_or_default());
    let p = &report.phases;
    println!(
        "time {:.1} s (load {:.1}, calibrate {:.1} [Hessians {:.1}], solve {:.1}, propagate {:.1}, write {:.1}); peak anonymous memory {:.0} MiB",
        report.seconds, p.load, p.calibrate, p.hessian, p.solve, p.propagate, p.write, report.peak_rss_anon_mib
    );
    if let Some(e) = &report.eval {
        println!(
            "eval: PPL {:.4} (base {:.4}), mean KLD {:.6} ± {:.6}, top-1 agreement {:.4}",
            e.ppl,
            e.base_ppl.unwrap_or(f64::NAN),
            e.kld_mean.unwrap_or(f64::NAN),
            e.kld_stderr.unwrap_or(f64::NAN),
            e.top1_agree.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
