//! The quantization pipeline: plan (preset + recipe), calibrate, solve, export, report.

pub mod imatrix;
pub mod pipeline;
pub mod plan;
pub mod preset;
pub mod recipe;
pub mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::arch::{self, ModelKind};
use crate::eval::perplexity::{evaluate_decoder, PerplexityOptions};
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
    /// Named preset choosing every tensor's type as llama.cpp would.
    pub preset: Preset,
    /// Default solver.
    pub method: Method,
    /// Rules overriding the preset (command-line schemes first, then the recipe file).
    pub rules: Vec<Rule>,
    /// Pipeline settings (output, calibration, importance, resume).
    pub pipeline: PipelineOptions,
    /// Evaluate base vs quantized on this text afterwards.
    pub eval_text: Option<(PathBuf, String)>,
    /// Evaluation settings.
    pub eval: PerplexityOptions,
}

/// Runs a quantization job on the model `input` (path or built-in name).
///
/// `progress(phase, done, total)` reports blocks and evaluation chunks.
pub fn quantize(
    input: &str,
    opts: &QuantizeOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<QuantizeReport> {
    let start = Instant::now();
    let sampler = crate::memory::PeakSampler::start();
    let file = open_model(input)?;
    if arch::model_kind(&file)? != ModelKind::Decoder {
        return Err(Error::Other(format!(
            "{}: only decoders (Llama family) can be quantized to GGUF",
            file.path().display()
        )));
    }
    let ModelFile::Gguf(g) = &file else {
        return Err(Error::Other(format!(
            "{}: GGUF output needs a GGUF input (its tokenizer and metadata are carried over); convert the Hugging Face model with llama.cpp's convert_hf_to_gguf.py first",
            file.path().display()
        )));
    };
    let out = &opts.pipeline.out;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::Other(format!("{}: the output directory does not exist", dir.display())));
        }
    }
    let tok = crate::tokenizer::Tokenizer::from_gguf(g)?;
    let tensors = file.source().tensors();
    let info = PresetModelInfo::from_gguf(g)?;
    let uses_imatrix = opts.pipeline.imatrix != ImatrixSource::None;
    let choices = choose_types(opts.preset, &tensors, &info, uses_imatrix)?;
    let preset_types: HashMap<String, formats::ggml::GgmlType> =
        choices.into_iter().map(|c| (c.name, c.ggml_type)).collect();
    let plan = plan::Plan::build(&tensors, &preset_types, &opts.rules, &opts.method)?;

    // Metadata: the input's, with the file type and the imatrix provenance.
    let mut meta: Vec<(String, GgufValue)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("quantize.imatrix.") && k != "general.file_type" && k != "general.quantization_version"
        })
        .cloned()
        .collect();
    meta.push(("general.quantization_version".into(), GgufValue::U32(2)));
    meta.push(("general.file_type".into(), GgufValue::U32(opts.preset.file_type())));
    let imatrix_desc = match &opts.pipeline.imatrix {
        ImatrixSource::None => "none".to_string(),
        ImatrixSource::Calibrate => {
            let names: Vec<String> = opts.pipeline.calib_texts.iter().map(|(p, _)| p.display().to_string()).collect();
            meta.push(("quantize.imatrix.file".into(), GgufValue::String("quantsmith (calibrated)".into())));
            meta.push(("quantize.imatrix.dataset".into(), GgufValue::String(names.join(", "))));
            let n_entries = plan.entries.iter().filter(|e| e.ty.block_size() > 1).count();
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

    let pr = pipeline::run(g, &tok, &plan, meta, &opts.pipeline, progress)?;
    let seconds = start.elapsed().as_secs_f64();
    let peak = sampler.finish();
    let n_params: usize = tensors.iter().map(|t| t.numel()).sum();

    let mut report = QuantizeReport {
        input: file.path().to_path_buf(),
        output: out.clone(),
        preset: opts.preset.name().to_string(),
        file_type: opts.preset.file_type(),
        method: opts.method.name().to_string(),
        imatrix: imatrix_desc,
        calib_tokens: pr.calib_tokens,
        n_params,
        file_bytes: pr.file_bytes,
        bits_per_weight: 8.0 * pr.file_bytes as f64 / n_params.max(1) as f64,
        seconds,
        phases: pr.phases,
        peak_rss_anon_mib: peak as f64 / 1024.0,
        resumed_blocks: pr.resumed_blocks,
        tensors: pr.tensors,
        eval: None,
        eval_text: None,
    };
    if let Some((path, text)) = &opts.eval_text {
        let base = arch::load_decoder(&file)?;
        let qfile = ModelFile::open(out)?;
        let quant = arch::load_decoder(&qfile)?;
        let r = evaluate_decoder(&quant.model, Some(&base.model), &base.tokenizer, text, path, &opts.eval, &|d, t| {
            progress("eval", d, t)
        })?;
        report.eval = Some(r);
        report.eval_text = Some(path.clone());
    }
    Ok(report)
}
