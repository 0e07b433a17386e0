//! The quantization pipeline: plan (preset + recipe), calibrate, solve, export, report.

pub mod budget;
pub mod imatrix;
pub mod pipeline;
pub mod plan;
pub mod preset;
pub mod recipe;
pub mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::arch;
use crate::eval::perplexity::PerplexityOptions;
use crate::export::{ExportModel, Storage};
use crate::io::gguf::GgufValue;
use crate::io::{open_model, ModelFile};
use crate::solve::Method;
use crate::{Error, Result};
use pipeline::{ImatrixSource, PipelineOptions};
use preset::{choose_types, Preset, PresetModelInfo};
use recipe::Rule;
use report::QuantizeReport;

/// The public-domain calibration text shipped with quantsmith (Jane Austen's *Emma*).
pub const DEFAULT_CALIB_TEXT: &str = include_str!("../../../../data/text/austen_emma.txt");
/// Name under which the built-in calibration text is reported.
pub const DEFAULT_CALIB_NAME: &str = "builtin:austen_emma.txt";

/// A quantization job.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// Named preset choosing every tensor's ggml type as llama.cpp would (GGUF output; `None`
    /// there means Q4_K_M). Directory layouts take no preset: tensors stay as they are unless
    /// a rule names a format.
    pub preset: Option<Preset>,
    /// Default solver.
    pub method: Method,
    /// Rules overriding the preset (command-line schemes first, then the recipe file).
    pub rules: Vec<Rule>,
    /// Output layout (`gguf`, `fake-quant`, `compressed-tensors`, `gptq`).
    pub layout: String,
    /// Transforms (`rotate:hadamard`, `smoothquant:0.5`, `awq`, …), in order.
    pub transforms: Vec<String>,
    /// Activation quantization of every linear's input (a format spec, per token).
    pub act: Option<String>,
    /// KV-cache quantization (a format spec, per token and head).
    pub kv: Option<String>,
    /// Replace an existing output (file or non-empty directory).
    pub force: bool,
    /// Quantize an input that is already quantized (its rounding errors stay and add up).
    pub allow_requantize: bool,
    /// Largest safetensors shard of directory layouts, bytes (0: one file).
    pub max_shard_bytes: u64,
    /// Pipeline settings (output, calibration, importance, resume).
    pub pipeline: PipelineOptions,
    /// Evaluate base vs quantized on this text afterwards.
    pub eval_text: Option<(PathBuf, String)>,
    /// Evaluation settings.
    pub eval: PerplexityOptions,
    /// Plan every matrix's storage to fit a size budget (mixed precision) instead of the
    /// preset's choice; the user's rules still pin what they match.
    pub budget: Option<budget::BudgetOptions>,
}

/// What a run reports while it works: progress of its phases, and notices a user should
/// read before the result (type fallbacks, a resumed checkpoint, a requantized input).
pub trait Events: Sync {
    /// `done` of `total` units of `phase` (`blocks`, `eval`).
    fn progress(&self, phase: &str, done: usize, total: usize);
    /// A line for the user.
    fn notice(&self, _msg: &str) {}
}

/// A progress closure as [`Events`] (notices dropped).
struct ProgressOnly<'a>(&'a (dyn Fn(&str, usize, usize) + Sync));

impl Events for ProgressOnly<'_> {
    fn progress(&self, phase: &str, done: usize, total: usize) {
        (self.0)(phase, done, total)
    }
}

/// A tensor whose preset type does not fit its rows and was replaced, as llama-quantize does.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fallback {
    /// Tensor name.
    pub tensor: String,
    /// The preset's type.
    pub from: String,
    /// The type written.
    pub to: String,
    /// Row length (innermost dimension).
    pub row_len: usize,
    /// Block size of `from`.
    pub block: usize,
}

/// The input's storage when it is already quantized: `q4_1 ×210, q8_0 ×1` and its bits per
/// weight (tensor data), or `None` for a float checkpoint.
pub fn input_quantization(file: &ModelFile) -> Result<Option<(String, f64)>> {
    let inv = file.inventory()?;
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in &inv.tensors {
        if let crate::tensor::DType::Ggml(g) = t.dtype {
            use crate::formats::ggml::GgmlType as G;
            if !matches!(g, G::F32 | G::F16 | G::Bf16) {
                match counts.iter_mut().find(|c| c.0 == g.name()) {
                    Some(c) => c.1 += 1,
                    None => counts.push((g.name(), 1)),
                }
            }
        }
    }
    let desc = match file {
        ModelFile::Hf(h) => h.quant_method().map(|m| m.to_string()),
        ModelFile::Gguf(_) if counts.is_empty() => None,
        ModelFile::Gguf(_) => {
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            Some(counts.iter().map(|(n, c)| format!("{n} ×{c}")).collect::<Vec<_>>().join(", "))
        }
    };
    Ok(desc.map(|d| (d, inv.bits_per_weight())))
}

/// Groups fallbacks for a console line each: `q6_k → q8_0 (rows of 576 are not a multiple of
/// 256): 30 tensors, blk.*.ffn_down.weight`.
pub fn describe_fallbacks(fallbacks: &[Fallback]) -> Vec<String> {
    let mut groups: Vec<((String, String, usize, usize), Vec<&str>)> = Vec::new();
    for f in fallbacks {
        let key = (f.from.clone(), f.to.clone(), f.row_len, f.block);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(&f.tensor),
            None => groups.push((key, vec![&f.tensor])),
        }
    }
    groups
        .into_iter()
        .map(|((from, to, row, block), names)| {
            // blk.N.role → blk.*.role, each role once.
            let mut roles: Vec<String> = Vec::new();
            for n in &names {
                let r = match n.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
                    Some((i, rest)) if i.parse::<usize>().is_ok() => format!("blk.*.{rest}"),
                    _ => n.to_string(),
                };
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
            format!(
                "type fallback {from} → {to} for {} tensor{} (rows of {row} are not a multiple of {from}'s {block}-element block): {}",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                roles.join(", ")
            )
        })
        .collect()
}

/// The layout an output path implies when none is named: `.gguf` files are GGUF.
pub fn default_layout(out: &std::path::Path) -> Option<&'static str> {
    out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")).then_some("gguf")
}

/// The metadata, configs and side files every layout may need, from either kind of input.
fn export_model(
    file: &ModelFile,
    arch: &dyn arch::Arch,
    opts: &QuantizeOptions,
    added: &[crate::tensor::TensorInfo],
) -> Result<ExportModel> {
    let mut m = ExportModel { max_shard_bytes: opts.max_shard_bytes, force: opts.force, ..Default::default() };
    for name in arch.tensor_names().into_iter().chain(added.iter().map(|t| t.name.clone())) {
        let hf = arch.hf_name(&name);
        m.hf_names.insert(name, hf);
    }
    match file {
        ModelFile::Gguf(g) => {
            m.gguf_metadata = g.metadata().to_vec();
            if opts.layout != "gguf" {
                m.hf_config = crate::io::convert::hf_config_from_gguf(g)?;
                m.side_files = crate::io::convert::hf_tokenizer_files_from_gguf(g)?;
            }
        }
        ModelFile::Hf(h) => {
            let mut cfg = h.config().clone();
            if let Some(o) = cfg.as_object_mut() {
                o.remove("quantization_config");
            }
            m.hf_config = cfg;
            // The sentence-transformers files (pooling, normalisation, lengths) make an encoder's
            // output a sentence model again; vocab.txt serves slow WordPiece tokenizers.
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
                "vocab.txt",
                "modules.json",
                "sentence_bert_config.json",
                "config_sentence_transformers.json",
                "1_Pooling/config.json",
            ] {
                let p = h.dir().join(f);
                if p.is_file() {
                    m.side_files.push((f.to_string(), std::fs::read(&p).map_err(|e| Error::io(&p, e))?));
                }
            }
            if opts.layout == "gguf" {
                m.gguf_metadata = crate::io::convert::gguf_metadata_from_hf(h)?;
            }
        }
    }
    Ok(m)
}

/// Runs a quantization job on the model `input` (path or built-in name).
///
/// `progress(phase, done, total)` reports blocks and evaluation tokens.
pub fn quantize(
    input: &str,
    opts: &QuantizeOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<QuantizeReport> {
    quantize_with(input, opts, &ProgressOnly(progress))
}

/// Is there something at `out` a run would replace?
fn occupied(out: &std::path::Path) -> bool {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// As [`quantize`], with notices as well as progress.
pub fn quantize_with(input: &str, opts: &QuantizeOptions, events: &dyn Events) -> Result<QuantizeReport> {
    match run_job(input, opts, events, false)? {
        Job::Quantized(r) => Ok(*r),
        Job::Planned(_) => Err(Error::Other("internal: a quantization run only planned".into())),
    }
}

/// Plans a size budget (`opts.budget`) without quantizing: the sensitivities, the chosen
/// storage per tensor (as recipe rules) and the predicted size and KLD. The output path is
/// not touched.
pub fn plan_with(input: &str, opts: &QuantizeOptions, events: &dyn Events) -> Result<budget::BudgetReport> {
    if opts.budget.is_none() {
        return Err(Error::Other("planning needs --target-size, --target-bpw or --sweep".into()));
    }
    match run_job(input, opts, events, true)? {
        Job::Planned(r) => Ok(*r),
        Job::Quantized(_) => Err(Error::Other("internal: a planning run quantized".into())),
    }
}

enum Job {
    Quantized(Box<QuantizeReport>),
    Planned(Box<budget::BudgetReport>),
}

fn run_job(input: &str, opts: &QuantizeOptions, events: &dyn Events, plan_only: bool) -> Result<Job> {
    let start = Instant::now();
    let sampler = crate::memory::PeakSampler::start();
    let file = open_model(input)?;
    let exporter = crate::export::exporter(&opts.layout)?;
    let gguf_out = exporter.name() == "gguf";
    if opts.preset.is_some() && !gguf_out {
        return Err(Error::Other(format!(
            "presets choose llama.cpp's types for GGUF output; for the {} layout name formats with --scheme (e.g. --scheme 'blk.*=int4:g128')",
            opts.layout
        )));
    }
    let mut arch = arch::arch_for(&file)?;
    // Transforms and what runs between the weights: checked against the model up front.
    let transforms = opts.transforms.iter().map(|t| crate::transform::transform(t)).collect::<Result<Vec<_>>>()?;
    for t in &transforms {
        t.check(&*arch)?;
    }
    let runtime = arch::runtime::Runtime {
        act: opts.act.clone(),
        kv: opts.kv.clone(),
        online_hadamard: transforms.iter().flat_map(|t| t.online_hadamard()).collect(),
        act_scales: Default::default(),
    };
    if !runtime.is_empty() {
        if gguf_out {
            let mut what = Vec::new();
            if let Some(a) = &runtime.act {
                what.push(format!("activation quantization ({a})"));
            }
            if let Some(k) = &runtime.kv {
                what.push(format!("KV-cache quantization ({k})"));
            }
            if !runtime.online_hadamard.is_empty() {
                what.push(format!("online Hadamard rotations ({})", runtime.online_hadamard.join(", ")));
            }
            return Err(Error::Other(format!(
                "GGUF cannot carry {}: llama.cpp would run the model without it. Write a directory layout (--layout fake-quant, compressed-tensors or gptq; the runtime is recorded in its config.json and `quantsmith eval` applies it), or drop those options (a rotation without `online` gives a plain model GGUF can hold)",
                what.join(" or ")
            )));
        }
        arch.set_runtime(runtime.clone())?;
    }
    if arch.kind() == arch::ModelKind::Encoder {
        if gguf_out {
            return Err(Error::Other(format!(
                "{}: encoders are not written as GGUF; use --layout compressed-tensors, gptq or fake-quant",
                file.path().display()
            )));
        }
        if opts.eval_text.is_some() {
            return Err(Error::Other(
                "--eval measures decoders (perplexity); for an encoder run `quantsmith eval OUT --base MODEL --text FILE`"
                    .into(),
            ));
        }
    }
    let out = &opts.pipeline.out;
    if plan_only {
        // The output is not written: nothing to check about it.
    } else if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::Other(format!("{}: the output directory does not exist", dir.display())));
        }
    }
    let canon_in = std::fs::canonicalize(file.path()).ok();
    if !plan_only
        && std::fs::canonicalize(out)
            .ok()
            .is_some_and(|o| canon_in.as_ref().is_some_and(|i| o == *i || i.starts_with(&o)))
    {
        return Err(Error::Other(format!(
            "{}: the output would overwrite the input {} (choose another --out)",
            out.display(),
            file.path().display()
        )));
    }
    if !plan_only && gguf_out && out.is_dir() {
        return Err(Error::Other(format!(
            "{}: is a directory, but the gguf layout writes one file (name a .gguf file, or choose a directory layout with --layout)",
            out.display()
        )));
    }
    if !plan_only && occupied(out) && !opts.force {
        // A run killed between installing its output and removing its checkpoint leaves both.
        let work = pipeline::partial_dir(out);
        let leftover = if work.is_dir() {
            format!(
                "; {} is the checkpoint of a run that was stopped after writing it (remove it, or pass --force to redo the run)",
                work.display()
            )
        } else {
            String::new()
        };
        return Err(Error::Other(format!(
            "{}: already exists; pass --force to replace it (nothing was done){leftover}",
            out.display()
        )));
    }
    // Said once everything is validated, just before the work starts.
    let mut notices: Vec<String> = Vec::new();
    let input_quant = input_quantization(&file)?;
    if let Some((types, bpw)) = &input_quant {
        if !opts.allow_requantize {
            return Err(Error::Other(format!(
                "{}: the input is already quantized ({types}; {bpw:.2} bits per weight): quantizing it again adds new rounding error to the old, and the output may even be larger; pass --allow-requantize to do it anyway, or start from a float (f32/f16/bf16) checkpoint",
                file.path().display()
            )));
        }
        notices.push(format!(
            "requantizing an already quantized input ({types}; {bpw:.2} bits per weight): its rounding errors stay in the output"
        ));
    }
    let tok = match &file {
        ModelFile::Gguf(g) => crate::tokenizer::Tokenizer::from_gguf(g)?,
        ModelFile::Hf(h) => {
            let p = h.dir().join("tokenizer.json");
            if !p.is_file() {
                return Err(Error::Other(format!(
                    "{}: missing (the tokenizer is needed for calibration and export)",
                    p.display()
                )));
            }
            crate::tokenizer::Tokenizer::from_json_file(&p)?
        }
    };
    if tok.vocab_size() > arch.vocab() {
        return Err(Error::Tokenizer(format!(
            "{}: the tokenizer has {} tokens but the model's embedding has only {} rows",
            file.path().display(),
            tok.vocab_size(),
            arch.vocab()
        )));
    }
    // The checkpoint's tensors under their canonical names.
    let src = file.source();
    let mut tensors: Vec<crate::tensor::TensorInfo> = arch
        .tensor_names()
        .into_iter()
        .map(|n| {
            let mut info = src.info(&arch.source_name(&n)).expect("the arch lists the checkpoint's tensors");
            info.name = n;
            info
        })
        .collect();
    let mut added: Vec<crate::tensor::TensorInfo> = Vec::new();
    for t in &transforms {
        for a in t.added_tensors(&*arch, &tensors) {
            tensors.push(a.clone());
            added.push(a);
        }
    }
    let preset = opts.preset.unwrap_or(Preset::parse("Q4_K_M")?);
    let uses_imatrix = opts.pipeline.imatrix != ImatrixSource::None;
    let mut preset_fallbacks: Vec<Fallback> = Vec::new();
    let base: HashMap<String, Storage> = if gguf_out {
        let info = match &file {
            ModelFile::Gguf(g) => PresetModelInfo::from_gguf(g)?,
            ModelFile::Hf(h) => {
                let c = crate::arch::llama::LlamaConfig::from_hf(h)?;
                PresetModelInfo::dense(arch.family(), c.n_layer, c.n_head, c.n_head_kv).with_path(h.dir())
            }
        };
        let choices = choose_types(preset, &tensors, &info, uses_imatrix)?;
        for c in &choices {
            if let (Some(from), Some(t)) = (c.fallback_from, tensors.iter().find(|t| t.name == c.name)) {
                preset_fallbacks.push(Fallback {
                    tensor: c.name.clone(),
                    from: from.name().to_string(),
                    to: c.ggml_type.name().to_string(),
                    row_len: t.shape.last().copied().unwrap_or(0),
                    block: from.block_size(),
                });
            }
        }
        choices.into_iter().map(|c| (c.name, Storage::Ggml(c.ggml_type))).collect()
    } else {
        tensors.iter().map(|t| (t.name.clone(), Storage::Ggml(preset::input_type(t.dtype)))).collect()
    };
    let mut plan = plan::Plan::build(&tensors, &base, &opts.rules, &opts.method, &*exporter)?;
    // A rule that names the tensor's type replaces the preset's choice: no fallback then.
    let mut fallbacks: Vec<Fallback> = preset_fallbacks
        .into_iter()
        .filter(|f| plan.entry(&f.tensor).is_some_and(|e| !e.from_rule && e.storage.name() == f.to))
        .collect();
    let calibrates = opts.budget.is_some()
        || opts.pipeline.imatrix == ImatrixSource::Calibrate
        || plan.needs_hessian()
        || transforms.iter().any(|t| t.corrects() || t.needs_hessian());
    if calibrates {
        if let Some(n) = arch.max_len().filter(|&n| opts.pipeline.calib.len > n) {
            return Err(Error::Other(format!(
                "--calib-len {}: calibration windows longer than the model's context of {n} tokens (its checkpoint says so) would calibrate positions it never runs at",
                opts.pipeline.calib.len
            )));
        }
    }
    if let Some((path, text)) = &opts.eval_text {
        // Checked now, so that a text too short fails before anything is written.
        crate::eval::perplexity::eval_tokens(&tok, text, path, &opts.eval)?;
    }
    let mut export = export_model(&file, &*arch, opts, &added)?;
    if let Some(o) = export.hf_config.as_object_mut() {
        if added.iter().any(|t| t.name == "output.weight") {
            o.insert("tie_word_embeddings".into(), serde_json::Value::Bool(false));
        }
        // Biases a correction added: transformers' Llama reads them under these flags (q/k/v
        // and o under `attention_bias`, gate/up/down under `mlp_bias`).
        if added.iter().any(|t| t.name.ends_with(".attn_output.bias")) {
            o.insert("attention_bias".into(), serde_json::Value::Bool(true));
        }
        if added.iter().any(|t| t.name.ends_with(".ffn_down.bias")) {
            o.insert("mlp_bias".into(), serde_json::Value::Bool(true));
        }
        if !runtime.is_empty() {
            o.insert(arch::runtime::RUNTIME_KEY.into(), runtime.to_json());
        }
    }
    export.recipe = serde_json::json!({
        "preset": if gguf_out { Some(preset.name()) } else { None },
        "method": opts.method.spec(),
        "rules": opts.rules.iter().map(|r| serde_json::json!({"pattern": r.pattern, "format": r.format, "solver": r.solver})).collect::<Vec<_>>(),
        "transforms": opts.transforms,
        "act": opts.act,
        "kv": opts.kv,
        "calibration": {"samples": opts.pipeline.calib.samples, "len": opts.pipeline.calib.len, "seed": opts.pipeline.calib.seed},
    });

    // GGUF metadata: the input's, with the file type and the imatrix provenance.
    let mut meta: Vec<(String, GgufValue)> = export
        .gguf_metadata
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("quantize.imatrix.") && k != "general.file_type" && k != "general.quantization_version"
        })
        .cloned()
        .collect();
    meta.push(("general.quantization_version".into(), GgufValue::U32(2)));
    let file_type = preset.file_type();
    let mut preset_label = preset.name().to_string();
    meta.push(("general.file_type".into(), GgufValue::U32(file_type)));
    let imatrix_desc = match &opts.pipeline.imatrix {
        ImatrixSource::None => "none".to_string(),
        ImatrixSource::Calibrate => {
            let names: Vec<String> = opts.pipeline.calib_texts.iter().map(|(p, _)| p.display().to_string()).collect();
            meta.push(("quantize.imatrix.file".into(), GgufValue::String("quantsmith (calibrated)".into())));
            meta.push(("quantize.imatrix.dataset".into(), GgufValue::String(names.join(", "))));
            let n_entries = plan.entries.iter().filter(|e| !e.storage.is_float()).count();
            meta.push(("quantize.imatrix.entries_count".into(), GgufValue::I32(n_entries as i32)));
            meta.push(("quantize.imatrix.chunks_count".into(), GgufValue::I32(opts.pipeline.calib.samples as i32)));
            format!("calibrated on {}", names.join(", "))
        }
        ImatrixSource::File(p) => {
            let m = imatrix::read_imatrix(p)?;
            meta.push(("quantize.imatrix.file".into(), GgufValue::String(p.display().to_string())));
            if let Some(d) = m.datasets.first() {
                meta.push(("quantize.imatrix.dataset".into(), GgufValue::String(d.clone())));
            }
            meta.push(("quantize.imatrix.entries_count".into(), GgufValue::I32(m.entries.len() as i32)));
            if m.chunks > 0 {
                meta.push(("quantize.imatrix.chunks_count".into(), GgufValue::I32(m.chunks as i32)));
            }
            p.display().to_string()
        }
    };
    if gguf_out {
        export.gguf_metadata = meta;
    }

    // A size budget: plan every matrix no rule pins, then rebuild the plan from the choice.
    let mut budget_report = None;
    if opts.budget.is_some() && (!opts.transforms.is_empty() || !runtime.is_empty()) {
        return Err(Error::Other(
            "a size budget is planned on the model as it is: it cannot be combined with --rotate, --transform, --act or --kv (a rotation unties the head and changes every tensor's sensitivity); plan without them, or quantize with a recipe"
                .into(),
        ));
    }
    if let Some(side) =
        opts.budget.as_ref().and_then(|_| plan.entries.iter().find_map(|e| e.method.side_data().map(|s| (e, s))))
    {
        return Err(Error::Other(format!(
            "a size budget plans the formats' bytes: solver {} {}, which it does not count; plan without --outliers / --lowrank",
            side.0.method.spec(),
            side.1
        )));
    }
    if let Some(bo) = &opts.budget {
        let side_bytes: u64 = export.side_files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            + serde_json::to_vec(&export.hf_config).map(|v| v.len() as u64).unwrap_or(0);
        let pin = budget::PlanInputs {
            arch: &*arch,
            tokenizer: &tok,
            tensors: &tensors,
            base: &plan,
            rules: &opts.rules,
            exporter: &*exporter,
            size: match opts.layout.split(':').next() {
                _ if gguf_out => budget::SizeModel::Gguf(&export.gguf_metadata),
                Some("fake-quant") => budget::SizeModel::Formats,
                _ => budget::SizeModel::Dir,
            },
            side_bytes,
            calib_texts: &opts.pipeline.calib_texts,
            calib: &opts.pipeline.calib,
        };
        let br = budget::plan(&pin, bo, &|d, t| events.progress("plan", d, t))?;
        if plan_only {
            return Ok(Job::Planned(Box::new(br)));
        }
        let mut rules = opts.rules.clone();
        rules.extend(br.rules());
        plan = plan::Plan::build(&tensors, &base, &rules, &opts.method, &*exporter)?;
        // The plan chose the types: no preset type fell back.
        fallbacks.retain(|f| plan.entry(&f.tensor).is_some_and(|e| !e.from_rule));
        // The file type stays the preset's (llama.cpp only displays it), so that the plan
        // written as a recipe and run with `--recipe` gives the same bytes.
        preset_label = format!("{} file type; every matrix planned for a size budget", preset.name());
        if let Some(a) = &br.chosen {
            notices.push(format!(
                "planned {} of {} matrices for a budget of {} bytes: {} bytes exactly ({:.3} bits per weight), predicted {} {:.5}; planning took {:.1} s",
                a.choice.len(),
                tensors.iter().filter(|t| t.shape.len() >= 2).count(),
                a.budget_bytes,
                a.file_bytes,
                a.bits_per_weight,
                if br.kld_units { "mean KLD" } else { "error (proxy units, no probes)" },
                a.predicted_kld,
                br.seconds()
            ));
        }
        export.recipe["budget"] = serde_json::json!({
            "budget_bytes": br.chosen.as_ref().map(|a| a.budget_bytes),
            "planned_bytes": br.chosen.as_ref().map(|a| a.file_bytes),
            "predicted_kld": br.chosen.as_ref().map(|a| a.predicted_kld),
        });
        budget_report = Some(br);
    } else if plan_only {
        return Err(Error::Other("planning needs a budget".into()));
    }

    // Nested code sets: recorded per weight (Hugging Face name → bit widths) so that `eval
    // --slice` knows what it may read at fewer bits.
    let nested = plan.nested();
    if opts.method.nesting().is_some() && nested.is_empty() {
        return Err(Error::Other(format!(
            "solver {} writes nested code sets, but no tensor is quantized to an integer format: give one, e.g. --scheme 'blk.*=int{}:g64:asym'",
            opts.method.spec(),
            opts.method.nesting().map_or(8, |n| n.bits[0])
        )));
    }
    if !nested.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = nested
            .iter()
            .map(|(name, n)| (crate::export::hf_dir::hf_name(&export, name).to_string(), serde_json::json!(n.bits)))
            .collect();
        export.recipe["nested"] = serde_json::Value::Object(map);
    }
    // The narrower widths every nested tensor serves (a recipe may nest tensors differently;
    // `eval --slice` reads a width only where every nested weight has it).
    let slice_widths: Vec<u32> = {
        let mut w: Vec<u32> = nested.iter().flat_map(|(_, n)| n.bits[1..].iter().copied()).collect();
        w.sort_unstable_by(|a, b| b.cmp(a));
        w.dedup();
        w.retain(|b| nested.iter().all(|(_, n)| n.bits[1..].contains(b)));
        w
    };
    let nested_numel: Vec<(usize, u32)> = nested
        .iter()
        .filter_map(|(name, n)| tensors.iter().find(|t| t.name == *name).map(|t| (t.numel(), n.bits[0])))
        .collect();
    let run_inputs = pipeline::RunInputs {
        arch: &*arch,
        input: file.path(),
        tokenizer: &tok,
        plan: &plan,
        transforms: &transforms,
        runtime: &runtime,
        exporter: &*exporter,
        export: &export,
    };
    notices.extend(describe_fallbacks(&fallbacks));
    for n in &notices {
        events.notice(n);
    }
    let mut pr = pipeline::run(&run_inputs, &opts.pipeline, events)?;
    for f in &fallbacks {
        if let Some(t) = pr.tensors.iter_mut().find(|t| t.name == f.tensor) {
            let n = format!("fallback from {} (rows of {} are not a multiple of {})", f.from, f.row_len, f.block);
            t.note = Some(match t.note.take() {
                Some(old) => format!("{old}; {n}"),
                None => n,
            });
        }
    }
    // Reading order: the embedding, block 0, 1, 2, … 10 (numerically), the head.
    pr.tensors.sort_by_key(|t| match t.block {
        Some(b) => (1, b),
        None if t.name.starts_with("output") => (2, 0),
        None => (0, 0),
    });
    let seconds = start.elapsed().as_secs_f64();
    let peak = sampler.finish();
    let n_params: usize = tensors.iter().map(|t| t.numel()).sum();

    let mut report = QuantizeReport {
        input: file.path().to_path_buf(),
        output: out.clone(),
        preset: if gguf_out { preset_label } else { format!("none ({} layout)", opts.layout) },
        file_type: if gguf_out { file_type } else { 0 },
        method: opts.method.spec(),
        imatrix: imatrix_desc,
        calib_tokens: pr.calib_tokens,
        n_params,
        file_bytes: pr.file_bytes,
        bits_per_weight: 8.0 * pr.file_bytes as f64 / n_params.max(1) as f64,
        layout: opts.layout.clone(),
        format_bits_per_weight: 8.0 * pr.tensors.iter().map(|t| t.bytes as f64).sum::<f64>() / n_params.max(1) as f64,
        seconds,
        phases: pr.phases,
        peak_rss_anon_mib: peak as f64 / 1024.0,
        resumed_blocks: pr.resumed_blocks,
        n_blocks: arch.n_blocks(),
        resumed_seconds: pr.resumed_seconds,
        threads: rayon::current_num_threads(),
        input_bytes: file.inventory()?.bytes as u64,
        input_quantization: input_quant.map(|(t, b)| format!("{t} ({b:.2} bits per weight)")),
        fallbacks,
        tensors: pr.tensors,
        eval: None,
        eval_slices: Vec::new(),
        eval_text: None,
        plan: budget_report,
    };
    if !crate::dist::is_root() {
        // Under MPI, rank 0 wrote the output and measures it.
        return Ok(Job::Quantized(Box::new(report)));
    }
    if let Some(a) = report.plan.as_ref().and_then(|p| p.chosen.as_ref()) {
        // GGUF sizes are exact; a packed directory's must be within the budget; a fake-quant
        // directory holds dequantized weights: its budget is over the formats' bytes.
        let (measured, exact) = if gguf_out {
            (report.file_bytes, true)
        } else if opts.layout.starts_with("fake-quant") {
            (report.tensor_bytes(), false)
        } else {
            (report.file_bytes, false)
        };
        if (exact && measured != a.file_bytes) || measured > a.budget_bytes {
            let _ = if out.is_dir() { std::fs::remove_dir_all(out) } else { std::fs::remove_file(out) };
            return Err(Error::Other(format!(
                "internal: the plan predicted {} bytes for a budget of {} bytes, but {measured} were written (output removed)",
                a.file_bytes, a.budget_bytes
            )));
        }
    }
    if let Some((path, text)) = &opts.eval_text {
        let base = arch::load_decoder(&file)?;
        let qfile = ModelFile::open(out)?;
        let quant = arch::load_decoder(&qfile)?;
        // A nested output is evaluated at each of its widths too, against one base run.
        let mut slices = Vec::new();
        for &b in &slice_widths {
            let mut f = ModelFile::open(out)?;
            f.slice_nested(b)?;
            slices.push(arch::load_decoder(&f)?);
        }
        let models: Vec<&crate::arch::llama::Llama> =
            std::iter::once(&quant.model).chain(slices.iter().map(|d| &d.model)).collect();
        let mut rs = crate::eval::perplexity::evaluate_decoders(
            &models,
            Some(&base.model),
            &base.tokenizer,
            text,
            path,
            &opts.eval,
            &|d, t| events.progress("eval", d, t),
        )?;
        let stored_bits = 8.0 * report.tensor_bytes() as f64;
        for (r, &b) in rs.drain(1..).zip(&slice_widths) {
            // The slice's size: the nested tensors' codes at b bits (their scales and zero
            // points as stored).
            let saved: f64 = nested_numel.iter().map(|&(n, top)| n as f64 * top.saturating_sub(b) as f64).sum();
            report.eval_slices.push(report::SliceEval {
                bits: b,
                format_bits_per_weight: (stored_bits - saved) / n_params.max(1) as f64,
                eval: r,
            });
        }
        report.eval = rs.pop();
        report.eval_text = Some(path.clone());
    }
    Ok(Job::Quantized(Box::new(report)))
}
