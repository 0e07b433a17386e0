//! `quantsmith quantize`: calibrate, solve and write a GGUF file llama.cpp loads, or a
//! Hugging Face directory (compressed-tensors, GPTQ, fake-quant) that vLLM and transformers load.

use std::path::PathBuf;

use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::quantize::budget::{parse_bpw, parse_size, Budget, BudgetOptions, ProbeMode};
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::recipe::{parse_solver, read_recipe, Rule};
use quantsmith::quantize::{quantize_with, QuantizeOptions, DEFAULT_CALIB_NAME, DEFAULT_CALIB_TEXT};
use quantsmith::{Error, Result};

use crate::cmd::eval::read_text;
use crate::cmd::progress::Progress;

/// Arguments of `quantsmith quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, a Hugging Face directory (Llama/Qwen2/Mistral decoders; BERT and
    /// MPNet encoders for directory layouts) or a built-in name (smollm2, minilm, mpnet).
    pub model: String,
    /// Output: a `.gguf` file, or a directory for the Hugging Face layouts (written under a
    /// temporary name, renamed when complete). An existing output needs --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Directory for the markdown report and SVG chart (default: beside the output).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Output layout: gguf (default for `.gguf` outputs), compressed-tensors, gptq, fake-quant.
    #[arg(long)]
    pub layout: Option<String>,
    /// Named preset choosing every tensor's type as llama-quantize would
    /// (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, ...; GGUF only, default Q4_K_M).
    #[arg(long)]
    pub preset: Option<String>,
    /// Default solver: rtn (round to nearest), gptq, quantease (GPTQ then coordinate
    /// descent on the same objective; quantease:sweeps=N, default 8), or gptq-asym (GPTQ
    /// fitted to the float model's output on the quantized model's input, GPTAQ's
    /// asymmetric calibration; `:asym=yes` does the same for quantease).
    #[arg(long, default_value = "gptq")]
    pub method: String,
    /// Keep this fraction of each matrix's weights apart in f16 (SpQR-style outliers, chosen
    /// by w² / [H⁻¹]_cc; the rest quantized by --method, gptq or quantease, with a grid fitted
    /// without them). The sparse table (6 bytes a weight) is counted in the size; only the
    /// fake-quant layout stores it.
    #[arg(long, value_name = "FRACTION")]
    pub outliers: Option<f64>,
    /// Add a rank-R correction of the quantization error to every quantized matrix (LoRC),
    /// fitted in the output metric of the calibration statistics; `:int8` stores the factors
    /// in int8 (default f16), `:absorb` takes the top-R part of the weights first and
    /// quantizes the rest (SVDQuant's order; a plain SVD unless `:whiten`), `:plain` fits the
    /// error unweighted. The factors count in the size; only the fake-quant layout stores them.
    #[arg(long, value_name = "R[:int8][:absorb][:plain|:whiten]")]
    pub lowrank: Option<String>,
    /// Nested precision (Matryoshka / MatGPTQ): one code set whose top bits are themselves a
    /// model at each listed width, largest first (`8,4,2`). GPTQ keeps one running copy of
    /// the weights per width, each compensating its own error, and picks each code coarsest
    /// width first (`:joint`: one copy compensating the widths' weighted mean error); the
    /// widths' errors are weighted as given after `@` (`8,4,2@16,4,1`; default 2^((b−b_min)/2))
    /// in the choice of scales (and in `:joint`'s compensation). Needs an asymmetric integer
    /// format of the first width (`--scheme 'blk.*=int8:g64:asym'`) and a layout storing codes
    /// (compressed-tensors, gptq); `quantsmith eval OUT --slice 4` reads it at 4 bits.
    #[arg(long, value_name = "BITS,BITS,...[@W,W,...][:joint]")]
    pub nested: Option<String>,
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
    /// Calibration text file (repeatable; default: the built-in public-domain novel).
    #[arg(long, value_name = "FILE")]
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
    /// How much each calibration token counts in the Hessians: `uniform`, or `rsq` (RSQ's
    /// attention concentration: in proportion to the attention the token receives in the
    /// block being solved; Llama-family decoders).
    #[arg(long, default_value = "uniform", value_name = "uniform|rsq")]
    pub calib_weighting: String,
    /// Evaluate the result against the input on this text (perplexity, KL-divergence).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Chunks of the evaluation.
    #[arg(long, default_value_t = 40)]
    pub eval_chunks: usize,
    /// Tokens per evaluation chunk.
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Rotate the residual stream (QuaRot): `hadamard` (randomized Hadamard), `random`
    /// (seeded random orthogonal) or `none`; `:seed=N` picks the signs/matrix, `:online` also
    /// rotates ffn_down's input at inference (not for GGUF).
    #[arg(long, value_name = "KIND[:seed=N][:online]")]
    pub rotate: Option<String>,
    /// Transform applied to every linear group before it is solved, in order (repeatable):
    /// `smoothquant[:ALPHA][:all]`, `awq[:grid=N]`, `scale-fold:seed=1`; or a correction
    /// applied after it is solved: `bias-correct` (every block linear gets the bias that brings
    /// its mean output on the calibration data back to the float model's; Llama models),
    /// `bias-correct:local` (only the layer's own error, no float pass).
    #[arg(long = "transform")]
    pub transforms: Vec<String>,
    /// Quantize the input of every linear layer (per token) in this format at inference:
    /// int8, int4, fp8_e4m3, fp4_e2m1, mxfp4, nvfp4, … (directory layouts only).
    #[arg(long, value_name = "FORMAT")]
    pub act: Option<String>,
    /// Quantize the KV cache (per token and head, keys after RoPE) in this format at
    /// inference (directory layouts only).
    #[arg(long, value_name = "FORMAT")]
    pub kv: Option<String>,
    /// Replace an existing output (file or directory); never the input.
    #[arg(long)]
    pub force: bool,
    /// Quantize an input that is already quantized (llama-quantize's --allow-requantize): its
    /// rounding errors stay, and the output may be larger than the input.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Largest safetensors shard of directory layouts, in bytes (0: one file).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_bytes: u64,
    /// Start afresh even if OUT.partial/ holds a checkpoint of this run.
    #[arg(long)]
    pub no_resume: bool,
    /// Least seconds between two checkpoints of a calibrated run (0: after every block).
    /// Default: 50 times what the last one took to write (at most ~2 % of the run); the
    /// first and last block always write one.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub checkpoint_every: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Mixed precision under a size budget.
    #[command(flatten)]
    pub budget: BudgetArgs,
}

/// Size-budget planning (shared by `quantize` and `plan`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BudgetArgs {
    /// Choose every matrix's type so that the whole output fits SIZE: bytes, or a number
    /// with KB/MB/GB (powers of 1000) or KiB/MiB/GiB, e.g. 80MB.
    #[arg(long, value_name = "SIZE", conflicts_with = "target_bpw")]
    pub target_size: Option<String>,
    /// As --target-size, in whole-output bits per weight of the model (e.g. 4.5).
    #[arg(long, value_name = "BPW")]
    pub target_bpw: Option<String>,
    /// Candidate storages for the plan, comma-separated (GGUF default: q2_k q3_k q4_k q5_k
    /// q6_k iq4_xs q4_0 q4_1 iq4_nl q5_0 q5_1 q8_0 f16, each tensor keeping those its rows fit;
    /// directory layouts need a list, e.g. int4:g64,int8,fp8_e4m3).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub candidates: Vec<String>,
    /// Calibration windows the sensitivity pass uses.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub plan_samples: usize,
    /// End-to-end probes that turn the proxy into KL-divergence: sampled (every role at four
    /// depths), all (every tensor), none.
    #[arg(long, default_value = "sampled", value_name = "MODE")]
    pub probe: String,
}

impl BudgetArgs {
    /// The planner's options, or `None` when no budget or sweep was asked for.
    pub fn options(&self, sweep: Vec<f64>) -> Result<Option<BudgetOptions>> {
        let budget = match (&self.target_size, &self.target_bpw) {
            (Some(s), _) => {
                Some(Budget::Bytes(parse_size(s).map_err(|e| Error::Other(format!("--target-size: {e}")))?))
            }
            (None, Some(b)) => Some(Budget::Bpw(parse_bpw(b)?)),
            (None, None) => None,
        };
        if budget.is_none() && sweep.is_empty() {
            if !self.candidates.is_empty() {
                return Err(Error::Other("--candidates needs --target-size or --target-bpw".into()));
            }
            return Ok(None);
        }
        if self.plan_samples == 0 {
            return Err(Error::Other("--plan-samples 0: the sensitivity pass needs at least one window".into()));
        }
        Ok(Some(BudgetOptions {
            budget,
            candidates: self.candidates.clone(),
            samples: self.plan_samples,
            probe: ProbeMode::parse(&self.probe)?,
            probe_windows: 1,
            sweep,
        }))
    }
}

/// The run's transforms: the rotation first (it rewrites the model as it loads), then the
/// command line's `--transform`s, else the recipe's.
pub fn transforms_of(
    rotate: Option<&str>,
    cli: &[String],
    recipe: &quantsmith::quantize::recipe::RecipeSettings,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match rotate {
        None | Some("none") => {}
        Some(r) if r.starts_with("rotate:") => out.push(r.to_string()),
        Some(r) => out.push(format!("rotate:{r}")),
    }
    out.extend(if cli.is_empty() { recipe.transforms.clone() } else { cli.to_vec() });
    if let Some(t) = out.iter().skip(1).find(|t| t.starts_with("rotate")) {
        return Err(Error::Other(format!(
            "--transform `{t}`: name the rotation with --rotate (it runs before every other transform)"
        )));
    }
    for t in &out {
        quantsmith::transform::transform(t)?;
    }
    Ok(out)
}

/// `--scheme` rules, then the `--recipe` file's.
pub fn rules_of(scheme: &[String], recipe: Option<&std::path::Path>) -> Result<Vec<Rule>> {
    let mut rules: Vec<Rule> = scheme.iter().map(|s| Rule::parse_scheme(s)).collect::<Result<_>>()?;
    if let Some(r) = recipe {
        rules.extend(read_recipe(r)?);
    }
    Ok(rules)
}

/// The `--calib` files' texts, or the built-in novel.
pub fn calib_texts_of(files: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    if files.is_empty() {
        return Ok(vec![(PathBuf::from(DEFAULT_CALIB_NAME), DEFAULT_CALIB_TEXT.to_string())]);
    }
    files
        .iter()
        .map(|p| {
            let t = read_text(p)?;
            if t.trim().is_empty() {
                return Err(Error::Text {
                    path: p.clone(),
                    msg: "is empty: there is no calibration text in it".into(),
                });
            }
            Ok((p.clone(), t))
        })
        .collect()
}

/// `--imatrix` absent (none), bare (calibrate) or with a file.
pub fn imatrix_of(arg: Option<&str>) -> ImatrixSource {
    match arg {
        None => ImatrixSource::None,
        Some("") => ImatrixSource::Calibrate,
        Some(f) => ImatrixSource::File(PathBuf::from(f)),
    }
}

/// Bounds of the calibration options (checked before anything is read).
pub fn check_calib(samples: usize, len: usize) -> Result<()> {
    crate::cmd::check_range("--calib-samples", samples, 1, 1 << 20, "calibration windows")?;
    crate::cmd::check_range("--calib-len", len, 2, crate::cmd::MAX_LEN, "tokens per calibration window")
}

/// `--lowrank R[:int8][:absorb][:plain]` as solver settings (`:lowrank=R:lowrank-store=int8…`).
fn lowrank_settings(spec: &str) -> std::result::Result<String, String> {
    let mut parts = spec.split(':');
    let rank = parts.next().unwrap_or("");
    let rank: usize = rank
        .parse()
        .ok()
        .filter(|r| *r >= 1)
        .ok_or_else(|| format!("`{rank}` is not a rank (a whole number from 1)"))?;
    let mut s = format!(":lowrank={rank}");
    for p in parts {
        s += match p {
            "int8" => ":lowrank-store=int8",
            "f16" => ":lowrank-store=f16",
            "absorb" => ":lowrank-order=absorb",
            "plain" => ":lowrank-whiten=no",
            "whiten" => ":lowrank-whiten=yes",
            _ => return Err(format!("`{p}` is not a low-rank option (int8, f16, absorb, plain, whiten)")),
        };
    }
    Ok(s)
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    check_calib(args.calib_samples, args.calib_len)?;
    if args.eval.is_some() {
        crate::cmd::check_range("--eval-ctx", args.eval_ctx, 4, crate::cmd::MAX_LEN, "tokens per evaluation chunk")?;
        crate::cmd::check_range("--eval-chunks", args.eval_chunks, 1, usize::MAX, "evaluation chunks")?;
    }
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
    let mut method_spec = match args.outliers {
        None => args.method.clone(),
        Some(_) if args.method == "rtn" => {
            return Err(Error::Other(
                "--outliers needs a solver that compensates with the Hessian: --method gptq or quantease".into(),
            ))
        }
        Some(f) => {
            parse_solver(&format!("{}:outliers={f}", args.method))
                .map_err(|e| Error::Other(format!("--outliers {f}: {e}")))?;
            format!("{}:outliers={f}", args.method)
        }
    };
    if let Some(lr) = &args.lowrank {
        let settings = lowrank_settings(lr).map_err(|e| Error::Other(format!("--lowrank {lr}: {e}")))?;
        method_spec += &settings;
        parse_solver(&method_spec).map_err(|e| Error::Other(format!("--lowrank {lr}: {e}")))?;
    }
    if let Some(n) = &args.nested {
        let (list, mode) = match n.split_once(':') {
            Some((l, m)) => (l, Some(m)),
            None => (n.as_str(), None),
        };
        let mut bits =
            quantsmith::solve::nested::Nesting::parse(list).map_err(|e| Error::Other(format!("--nested {n}: {e}")))?;
        match mode {
            None | Some("cascade") => {}
            Some("joint") => bits.cascade = false,
            Some(m) => return Err(Error::Other(format!("--nested {n}: `{m}` is not a mode (cascade or joint)"))),
        }
        if args.method.starts_with("quantease") {
            return Err(Error::Other(format!(
                "--nested {n}: works with --method gptq, gptq-asym or rtn (quantease's coordinate descent fits one precision)"
            )));
        }
        method_spec += &bits.settings();
        parse_solver(&method_spec).map_err(|e| Error::Other(format!("--nested {n}: {e}")))?;
    }
    let method = parse_solver(&method_spec)?;
    let rules = rules_of(&args.scheme, args.recipe.as_deref())?;
    // Calibration options that change nothing are said (once the options are checked), not
    // silently dropped.
    let settings = match &args.recipe {
        Some(p) => quantsmith::quantize::recipe::read_recipe_file(p)?.1,
        None => Default::default(),
    };
    let transforms = transforms_of(args.rotate.as_deref().or(settings.rotate.as_deref()), &args.transforms, &settings)?;
    let act = args.act.clone().or(settings.act.clone());
    let kv = args.kv.clone().or(settings.kv.clone());
    let mut unused_note = None;
    let calibrates = method.needs_hessian()
        || act.as_deref().is_some_and(|a| quantsmith::arch::runtime::split_static(a).1)
        || transforms.iter().any(|t| quantsmith::transform::transform(t).is_ok_and(|t| t.needs_hessian()))
        || args.imatrix.as_deref() == Some("")
        || args.budget.target_size.is_some()
        || args.budget.target_bpw.is_some()
        || rules.iter().any(|r| r.solver.as_deref().is_some_and(|s| s != "rtn"));
    if !calibrates {
        let d = CalibOptions::default();
        let unused: Vec<&str> = [
            (!args.calib.is_empty(), "--calib"),
            (args.calib_samples != d.samples, "--calib-samples"),
            (args.calib_len != d.len, "--calib-len"),
            (args.seed != d.seed, "--seed"),
            (args.calib_weighting != "uniform", "--calib-weighting"),
        ]
        .iter()
        .filter_map(|&(given, flag)| given.then_some(flag))
        .collect();
        if !unused.is_empty() {
            unused_note = Some(format!(
                "{} {} no effect: --method {} without --imatrix does not calibrate (add --imatrix to weight the rounding by calibration statistics, or --method gptq)",
                unused.join(", "),
                if unused.len() == 1 { "has" } else { "have" },
                args.method
            ));
        }
    }
    let calib_texts = calib_texts_of(&args.calib)?;
    let imatrix = imatrix_of(args.imatrix.as_deref());
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
        transforms,
        act,
        kv,
        force: args.force,
        allow_requantize: args.allow_requantize,
        max_shard_bytes: args.max_shard_bytes,
        pipeline: PipelineOptions {
            out: args.out.clone(),
            calib_texts,
            calib: CalibOptions {
                samples: args.calib_samples,
                len: args.calib_len,
                seed: args.seed,
                weighting: quantsmith::calib::TokenWeighting::parse(&args.calib_weighting).ok_or_else(|| {
                    Error::Other(format!(
                        "--calib-weighting {}: uniform, or rsq (tokens weighted by the attention they receive)",
                        args.calib_weighting
                    ))
                })?,
            },
            imatrix,
            batch_seqs: 8,
            resume: !args.no_resume,
            checkpoint_every: args.checkpoint_every,
        },
        eval_text,
        eval: PerplexityOptions { ctx: args.eval_ctx, max_chunks: Some(args.eval_chunks), ..Default::default() },
        budget: args.budget.options(Vec::new())?,
    };
    if let Some(d) = &args.report {
        if !d.is_dir() {
            return Err(Error::Other(format!("--report {}: not a directory", d.display())));
        }
    }
    if let Some(n) = unused_note {
        crate::cmd::progress::notice(&n);
    }
    let events = Events::new();
    let report = quantize_with(&args.model, &opts, &events)?;
    if !quantsmith::dist::is_root() {
        // Under MPI, rank 0 wrote the output and reports it.
        return Ok(());
    }
    events.plan.finish();
    events.blocks.finish();
    events.tokens.finish();
    let (md, svg) = report.write_files(args.report.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?);
        eprintln!("report {}{}", md.display(), svg.map(|s| format!(", chart {}", s.display())).unwrap_or_default());
        return Ok(());
    }
    println!("{:<28} {:>8} {:>12} {:>8} {:>9} {:>11}", "tensor", "type", "solver", "bits", "SQNR dB", "output err");
    for t in &report.tensors {
        if t.solver == "copy" {
            continue;
        }
        println!(
            "{:<28} {:>8} {:>12} {:>8.3} {:>9} {:>11}{}",
            t.name,
            t.format,
            t.solver,
            t.bits_per_weight,
            t.sqnr_db.map(|v| format!("{v:.2}")).unwrap_or_default(),
            t.output_err.map(|v| format!("{v:.2e}")).unwrap_or_default(),
            t.note.as_ref().map(|n| format!("  ({n})")).unwrap_or_default()
        );
    }
    println!(
        "({} tensors kept as they are: norms, biases)",
        report.tensors.iter().filter(|t| t.solver == "copy").count()
    );
    println!("{}", quantsmith::quantize::report::LEGEND);
    println!();
    if let Some(q) = &report.input_quantization {
        println!("input  {} (already quantized: {q})", report.input.display());
    } else {
        println!("input  {}", report.input.display());
    }
    println!("wrote  {} ({} layout, {} bytes)", report.output.display(), report.layout, report.file_bytes);
    println!("size   {}", report.size_line());
    if !report.fallbacks.is_empty() {
        println!(
            "types  {} tensors fell back to a type of a smaller block (their rows do not fit the preset's type; see the report)",
            report.fallbacks.len()
        );
    }
    println!("time   {}; peak anonymous memory {:.0} MiB", report.time_line(), report.peak_rss_anon_mib);
    if let Some(p) = &report.plan {
        if let Some(a) = &p.chosen {
            println!(
                "plan   budget {} bytes → planned {} bytes ({} written); predicted mean KLD {:.5}; planning {:.1} s = {:.0} % of the run",
                a.budget_bytes,
                a.file_bytes,
                report.file_bytes,
                a.predicted_kld,
                p.seconds(),
                100.0 * p.seconds() / report.seconds.max(1e-9)
            );
        }
    }
    if let Some(e) = &report.eval {
        println!(
            "eval   PPL {:.4} (base {:.4}), mean KLD {:.6} ± {:.6}, top-1 agreement {:.4}",
            e.ppl,
            e.base_ppl.unwrap_or(f64::NAN),
            e.kld_mean.unwrap_or(f64::NAN),
            e.kld_stderr.unwrap_or(f64::NAN),
            e.top1_agree.unwrap_or(f64::NAN)
        );
        for sl in &report.eval_slices {
            let e = &sl.eval;
            if let (Some(k), Some(ks), Some(t)) = (e.kld_mean, e.kld_stderr, e.top1_agree) {
                println!(
                    "eval   {}-bit slice ({:.3} bits per weight): PPL {:.4}, mean KLD {k:.6} ± {ks:.6}, top-1 agreement {t:.4}",
                    sl.bits, sl.format_bits_per_weight, e.ppl
                );
            }
        }
    }
    println!("report {}{}", md.display(), svg.map(|s| format!(", chart {}", s.display())).unwrap_or_default());
    Ok(())
}

/// Bars (or plain lines) for planning, blocks and evaluation, notices on stderr.
pub struct Events {
    /// The size-budget planner (sensitivity blocks, then probes).
    pub plan: Progress,
    /// Quantized blocks.
    pub blocks: Progress,
    /// Evaluation tokens.
    pub tokens: Progress,
}

impl Events {
    /// Fresh, silent until the first update.
    pub fn new() -> Events {
        Events {
            plan: Progress::new("plan steps"),
            blocks: Progress::new("blocks"),
            tokens: Progress::new("eval tokens"),
        }
    }
}

impl quantsmith::quantize::Events for Events {
    fn progress(&self, phase: &str, done: usize, total: usize) {
        if phase == "plan" {
            self.plan.update(done, total)
        } else if phase == "eval" {
            self.blocks.finish();
            self.tokens.update(done, total)
        } else {
            self.plan.finish();
            self.blocks.update(done, total)
        }
    }

    fn notice(&self, msg: &str) {
        crate::cmd::progress::notice(msg)
    }
}

/// A number of seconds: finite and not negative.
fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("`{s}` is not a number of seconds (0 or more)"))
}
