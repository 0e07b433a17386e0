//! Mixed precision under a size budget: the most accurate file that fits.
//!
//! Three steps, each measured in the report:
//!
//! 1. **Sensitivity.** One pass of the *float* model over a few calibration windows, block by
//!    block: for every linear, the Hessian H = E[x xᵀ] of its input; every candidate storage is
//!    tried by importance-weighted rounding (llama.cpp's imatrix quantizers for ggml types) and
//!    scored by the output error it causes, e = tr(ΔW H ΔWᵀ) per token (HAWQ-V2's
//!    trace-weighted measure). The head (or tied embedding) is scored on the head's input.
//! 2. **Probes.** The proxy is in each layer's own units; a short end-to-end measurement turns
//!    it into KL-divergence. A probe quantizes one tensor alone (at its smallest candidate)
//!    and measures the model's mean KLD against the float model on a held calibration window;
//!    the tensor's gain is g = KLD / e. By default every role (attn_q, ffn_down, …) is probed
//!    at four depths and the gains in between are interpolated (log-linear in depth); `all`
//!    probes every tensor and reports how well the cheap predictor ranks the tensors against
//!    the measurement (Spearman).
//! 3. **Allocation.** Predicted KLD of a tensor at a candidate is g·e; contributions add (a
//!    second-order expansion of the KLD: cross terms between tensors are neglected). One
//!    candidate per tensor minimising the total subject to the whole file's bytes ≤ budget is
//!    a multiple-choice knapsack, solved exactly by dynamic programming over a byte grid
//!    (each candidate's bytes rounded *up* to the grid, so the chosen file never exceeds the
//!    budget). The file's fixed part (GGUF header, metadata, tensor infos, alignment padding,
//!    tensors the plan does not choose) is computed exactly from the writer's own code.
//!
//! Interactions between layers: sensitivities are measured with every other tensor float,
//! so the prediction ignores that quantizing one layer changes the inputs of the next. The
//! quantization that follows is sequential (GPTQ solves each layer on the inputs the
//! already-quantized layers produce, which compensates part of the earlier error), so the
//! realised KLD is compared against the prediction in the report rather than assumed.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::plan::{matrix_of, Plan};
use super::recipe::Rule;
use crate::arch::{Arch, Globals};
use crate::calib::{calibration_windows, CalibOptions, Hessian};
use crate::export::{Exporter, Storage};
use crate::io::gguf::GgufValue;
use crate::solve::{quad_form, target};
use crate::tensor::TensorInfo;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The ggml types the planner considers for GGUF output (each tensor keeps those its rows fit).
pub const GGUF_CANDIDATES: &[&str] =
    &["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "q8_0", "f16"];

/// What the file must fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Budget {
    /// The whole output, in bytes.
    Bytes(u64),
    /// Whole-output bits per weight of the model (bytes = bpw · weights / 8).
    Bpw(f64),
}

impl Budget {
    /// The budget in bytes for a model of `n_params` weights.
    pub fn bytes(self, n_params: usize) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Bpw(b) => (b * n_params as f64 / 8.0).floor() as u64,
        }
    }
}

/// Parses a size: plain bytes (`105454400`), or a number with KB/MB/GB (powers of 1000) or
/// KiB/MiB/GiB (powers of 1024); `B` alone means bytes. Case-insensitive, spaces allowed.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let bad = || {
        Error::Other(format!(
            "size `{s}`: expected a number of bytes, optionally with a unit (KB, MB, GB, KiB, MiB, GiB), e.g. 80MB"
        ))
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = v * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > 1e15 {
        return Err(Error::Other(format!("size `{s}`: must be between 1 byte and 1 PB")));
    }
    if unit.is_empty() && num.contains('.') {
        return Err(Error::Other(format!("size `{s}`: a number of bytes is a whole number")));
    }
    Ok(bytes.floor() as u64)
}

/// Parses a bits-per-weight target (`3.5`): finite, above 0 and at most 32.
pub fn parse_bpw(s: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 32.0 => Ok(v),
        _ => Err(Error::Other(format!("--target-bpw `{s}`: expected bits per weight between 0 and 32, e.g. 4.5"))),
    }
}

/// Parses a sweep `FROM:TO:STEP` in bits per weight (e.g. `3.5:8.5:0.5`).
pub fn parse_sweep(s: &str) -> Result<Vec<f64>> {
    let bad = || Error::Other(format!("--sweep `{s}`: expected FROM:TO:STEP in bits per weight, e.g. 3.5:8.5:0.5"));
    let parts: Vec<f64> = s.split(':').map(|p| p.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<_>>()?;
    let [from, to, step] = parts[..] else { return Err(bad()) };
    if !(from > 0.0 && to >= from && step > 0.0 && to <= 32.0) || (to - from) / step > 200.0 {
        return Err(bad());
    }
    let n = ((to - from) / step + 1e-9).floor() as usize;
    Ok((0..=n).map(|i| from + i as f64 * step).collect())
}

/// Which tensors the probes measure end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProbeMode {
    /// Every role at four depths, gains interpolated between them (the default).
    Sampled,
    /// Every tensor (slower; gives the proxy-vs-measured rank correlation over all tensors).
    All,
    /// No probes: the raw proxy, in layer units (not a KLD prediction).
    None,
}

impl ProbeMode {
    /// Parses `sampled|all|none`.
    pub fn parse(s: &str) -> Result<ProbeMode> {
        match s {
            "sampled" => Ok(ProbeMode::Sampled),
            "all" => Ok(ProbeMode::All),
            "none" => Ok(ProbeMode::None),
            o => Err(Error::Other(format!("--probe `{o}`: expected sampled, all or none"))),
        }
    }
}

/// Planner settings.
#[derive(Clone, Debug)]
pub struct BudgetOptions {
    /// The budget to plan for (`None`: a sweep only).
    pub budget: Option<Budget>,
    /// Candidate storages (format specs or ggml type names); empty: [`GGUF_CANDIDATES`] for
    /// GGUF output (directory layouts need a list).
    pub candidates: Vec<String>,
    /// Calibration windows of the sensitivity pass (of the run's calibration text).
    pub samples: usize,
    /// Probes.
    pub probe: ProbeMode,
    /// Calibration windows the probes evaluate.
    pub probe_windows: usize,
    /// Bits-per-weight points of a Pareto sweep.
    pub sweep: Vec<f64>,
}

impl Default for BudgetOptions {
    fn default() -> Self {
        BudgetOptions {
            budget: None,
            candidates: Vec::new(),
            samples: 16,
            probe: ProbeMode::Sampled,
            probe_windows: 1,
            sweep: Vec::new(),
        }
    }
}

/// One candidate of one tensor.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateScore {
    /// Storage name (`q5_0`, `int4:g64`).
    pub format: String,
    /// Bytes the tensor takes in the output (aligned as the layout stores it).
    pub bytes: u64,
    /// Proxy: tr(ΔW H ΔWᵀ) per calibration token.
    pub proxy: f64,
    /// Predicted contribution to the model's mean KLD (gain · proxy).
    pub predicted_kld: f64,
}

/// A tensor the planner chooses for.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSensitivity {
    /// Tensor name.
    pub name: String,
    /// Role (the name without `blk.N.`).
    pub role: String,
    /// Block index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<usize>,
    /// Weights.
    pub numel: usize,
    /// KLD per unit of proxy.
    pub gain: f64,
    /// Whether the gain was measured on this tensor (else interpolated).
    pub probed: bool,
    /// Measured mean KLD with only this tensor quantized (at its smallest candidate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_kld: Option<f64>,
    /// The gain the sampled depths would have predicted (only with `--probe all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolated_gain: Option<f64>,
    /// Candidates, by increasing bytes.
    pub candidates: Vec<CandidateScore>,
}

/// One chosen point of the allocation.
#[derive(Clone, Debug, Serialize)]
pub struct Allocation {
    /// Budget, bytes.
    pub budget_bytes: u64,
    /// The planned file's exact size.
    pub file_bytes: u64,
    /// Whole-file bits per weight.
    pub bits_per_weight: f64,
    /// Predicted mean KLD (sum over planned tensors).
    pub predicted_kld: f64,
    /// Chosen storage by tensor, in plan order.
    pub choice: Vec<(String, String)>,
}

/// Spearman rank correlations between predictions and the probes' measured KLD.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RankAgreement {
    /// Tensors probed.
    pub n: usize,
    /// The raw proxy (same candidate: the smallest) against the measured KLD.
    pub proxy: f64,
    /// The depth-interpolated prediction (gains from the four sampled depths only) against
    /// the measured KLD, over the tensors not among the samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolated: Option<f64>,
}

/// What planning found and chose.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    /// Per-tensor sensitivities.
    pub tensors: Vec<TensorSensitivity>,
    /// Bytes of everything the plan does not choose (header, metadata, 1-D tensors, tensors
    /// pinned by rules), exact.
    pub fixed_bytes: u64,
    /// The smallest and largest file the candidates allow.
    pub min_bytes: u64,
    /// Largest file.
    pub max_bytes: u64,
    /// Weights of the model.
    pub n_params: usize,
    /// The allocation at the budget, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Allocation>,
    /// The Pareto sweep's points.
    pub sweep: Vec<Allocation>,
    /// Proxy vs measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<RankAgreement>,
    /// Probe mode.
    pub probe: ProbeMode,
    /// Whether probes turned the proxy into KL-divergence (else `predicted_kld` is the raw
    /// proxy: no probes asked for, or a model without a language-model head).
    pub kld_units: bool,
    /// Calibration tokens of the sensitivity pass, and of the probes.
    pub calib_tokens: usize,
    /// Probe tokens.
    pub probe_tokens: usize,
    /// Seconds: sensitivity pass, probes, allocation.
    pub seconds_sensitivity: f64,
    /// Probe seconds.
    pub seconds_probes: f64,
    /// Allocation seconds.
    pub seconds_allocate: f64,
}

impl BudgetReport {
    /// Total planning seconds.
    pub fn seconds(&self) -> f64 {
        self.seconds_sensitivity + self.seconds_probes + self.seconds_allocate
    }

    /// The chosen allocation as recipe rules (exact tensor names), for `quantize --recipe`.
    pub fn rules(&self) -> Vec<Rule> {
        self.chosen
            .iter()
            .flat_map(|a| a.choice.iter())
            .map(|(n, f)| Rule { pattern: n.clone(), format: f.clone(), solver: None })
            .collect()
    }

    /// The chosen allocation as a TOML recipe file, with its prediction in comments.
    pub fn recipe_toml(&self, model: &str) -> String {
        let mut s = String::new();
        if let Some(a) = &self.chosen {
            s.push_str(&format!(
                "# quantsmith plan for {model}\n# budget {} bytes; planned file {} bytes ({:.4} bits per weight); predicted mean KLD {:.6}\n# use: quantsmith quantize {model} --recipe THIS_FILE --out OUT (same layout, calibration and imatrix options)\n\n",
                a.budget_bytes, a.file_bytes, a.bits_per_weight, a.predicted_kld
            ));
            for (n, f) in &a.choice {
                s.push_str(&format!("[[rule]]\npattern = \"{n}\"\nformat = \"{f}\"\n\n"));
            }
        }
        s
    }
}

/// How the output's size follows from the tensors' storage.
pub enum SizeModel<'a> {
    /// A GGUF file: this metadata, every tensor at its aligned offset (exact).
    Gguf(&'a [(String, GgufValue)]),
    /// A packed directory layout (compressed-tensors, gptq): tensor bytes plus a reserve for
    /// safetensors headers and side files.
    Dir,
    /// The fake-quant layout, whose files hold dequantized weights: the budget is over the
    /// formats' stored bytes (what a packed layout of the same choice holds).
    Formats,
}

/// Reserve for a directory layout's non-tensor bytes: config, tokenizer files and the
/// safetensors headers (a few hundred bytes per stored array).
fn dir_reserve(n_tensors: usize, side_bytes: u64) -> u64 {
    64 * 1024 + 1024 * n_tensors as u64 + side_bytes
}

/// What the planner runs on.
pub struct PlanInputs<'a> {
    /// The model.
    pub arch: &'a dyn Arch,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Tensors in file order (canonical names).
    pub tensors: &'a [TensorInfo],
    /// The plan without a budget (preset or layout default plus the user's rules): tensors a
    /// rule names, and 1-D tensors, keep their entry.
    pub base: &'a Plan,
    /// The user's rules (they pin what they match).
    pub rules: &'a [Rule],
    /// The output layout.
    pub exporter: &'a dyn Exporter,
    /// Size model of the output.
    pub size: SizeModel<'a>,
    /// Bytes of side files a directory layout writes (config, tokenizer).
    pub side_bytes: u64,
    /// Calibration texts and window settings (the sensitivity pass takes `samples` of them).
    pub calib_texts: &'a [(std::path::PathBuf, String)],
    /// Window settings.
    pub calib: &'a CalibOptions,
}

/// One tensor under planning.
struct Item {
    index: usize,
    sens: TensorSensitivity,
    /// The dequantized weights of the probe candidate (the smallest), kept for the probe.
    probe_dequant: Option<Vec<f32>>,
    /// Whether the sensitivity pass scored it.
    scored: bool,
}

fn role_of(name: &str) -> (String, Option<usize>) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((i, role)) = rest.split_once('.') {
            if let Ok(i) = i.parse::<usize>() {
                return (role.to_string(), Some(i));
            }
        }
    }
    (name.to_string(), None)
}

/// Plans: sensitivities, probes, and the allocation at `opts.budget` (and the sweep).
pub fn plan(inp: &PlanInputs, opts: &BudgetOptions, progress: &dyn Fn(usize, usize)) -> Result<BudgetReport> {
    let arch = inp.arch;
    let n_blocks = arch.n_blocks();
    let d = arch.d_model();
    let n_params: usize = inp.tensors.iter().map(|t| t.numel()).sum();

    // Candidates.
    let cand_names: Vec<String> = if opts.candidates.is_empty() {
        if inp.exporter.name() != "gguf" {
            return Err(Error::Other(format!(
                "--target-size with the {} layout: name the candidate formats with --candidates (e.g. int4:g64,int8,fp8_e4m3)",
                inp.exporter.name()
            )));
        }
        GGUF_CANDIDATES.iter().map(|s| s.to_string()).collect()
    } else {
        opts.candidates.clone()
    };
    if cand_names.iter().all(|c| c.trim().is_empty()) {
        return Err(Error::Other("--candidates: the list is empty".into()));
    }
    let mut candidates: Vec<Storage> = Vec::new();
    for c in cand_names.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
        let s = Storage::parse(c).map_err(|e| Error::Other(format!("--candidates: {e}")))?;
        if !candidates.contains(&s) {
            candidates.push(s);
        }
    }

    // Which tensors the plan chooses: the blocks' matrices, the token embedding and the
    // head, unless a user rule names them. Other tables (position or token-type embeddings)
    // keep their base storage: the proxy has no measure for them.
    let plannable = |name: &str| role_of(name).1.is_some() || name == "token_embd.weight" || name == "output.weight";
    let free: Vec<usize> = inp
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.shape.len() >= 2 && plannable(&t.name) && !inp.rules.iter().any(|r| r.matches(&t.name)))
        .map(|(i, _)| i)
        .collect();
    if free.is_empty() {
        return Err(Error::Other("the recipe's rules name every matrix: nothing is left to plan".into()));
    }
    let fits = |t: &TensorInfo, s: &Storage| -> bool {
        let (rows, cols) = matrix_of(&t.shape);
        s.storage_bits(rows, cols).is_ok() && inp.exporter.check(&t.name, &t.shape, s).is_ok()
    };
    for s in &candidates {
        if !free.iter().any(|&i| fits(&inp.tensors[i], s)) {
            let widths: std::collections::BTreeSet<usize> =
                free.iter().map(|&i| *inp.tensors[i].shape.last().unwrap_or(&0)).collect();
            return Err(Error::Other(format!(
                "--candidates: {} fits no tensor of this model in the {} layout (row lengths {:?})",
                s.name(),
                inp.exporter.name(),
                widths
            )));
        }
    }
    let align = match inp.size {
        SizeModel::Gguf(meta) => meta
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", GgufValue::U32(a)) => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(crate::io::gguf::DEFAULT_ALIGNMENT),
        SizeModel::Dir | SizeModel::Formats => 1,
    };
    let bytes_of = |t: &TensorInfo, s: &Storage| -> u64 {
        let (rows, cols) = matrix_of(&t.shape);
        let b = s.storage_bits(rows, cols).unwrap_or(0).div_ceil(8);
        b.div_ceil(align) * align
    };
    let mut items: Vec<Item> = Vec::new();
    for &i in &free {
        let t = &inp.tensors[i];
        let mut cands: Vec<Storage> = candidates.iter().filter(|s| fits(t, s)).cloned().collect();
        if cands.is_empty() {
            return Err(Error::Other(format!(
                "tensor `{}` {:?}: none of the candidates fits its rows of {} (the layout takes: {})",
                t.name,
                t.shape,
                t.shape.last().unwrap_or(&0),
                candidates.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
            )));
        }
        cands.sort_by_key(|s| bytes_of(t, s));
        let (role, block) = role_of(&t.name);
        let sens = TensorSensitivity {
            name: t.name.clone(),
            role,
            block,
            numel: t.numel(),
            gain: 1.0,
            probed: false,
            probe_kld: None,
            interpolated_gain: None,
            candidates: cands
                .iter()
                .map(|s| CandidateScore { format: s.name(), bytes: bytes_of(t, s), proxy: 0.0, predicted_kld: 0.0 })
                .collect(),
        };
        items.push(Item { index: i, sens, probe_dequant: None, scored: false });
    }
    let by_name: HashMap<String, usize> = items.iter().enumerate().map(|(k, it)| (it.sens.name.clone(), k)).collect();

    // The exact fixed part: everything at its base storage except the planned tensors,
    // which count zero bytes here (their aligned bytes are added by the allocation).
    let storage_of = |name: &str| -> Result<Storage> {
        inp.base.entry(name).map(|e| e.storage.clone()).ok_or_else(|| Error::Other(format!("no plan for `{name}`")))
    };
    let size_with = |choice: &HashMap<&str, &str>| -> Result<u64> {
        match inp.size {
            SizeModel::Gguf(meta) => {
                let mut ts = Vec::with_capacity(inp.tensors.len());
                for t in inp.tensors {
                    let s = match choice.get(t.name.as_str()) {
                        Some(f) => Storage::parse(f)?,
                        None => storage_of(&t.name)?,
                    };
                    let Some(ty) = s.ggml() else {
                        return Err(Error::Other(format!("tensor `{}`: {} is not a ggml type", t.name, s.name())));
                    };
                    let (rows, cols) = matrix_of(&t.shape);
                    let bytes = s.storage_bits(rows, cols)?.div_ceil(8);
                    ts.push((t.name.clone(), t.shape.iter().rev().map(|&d| d as u64).collect(), ty, bytes));
                }
                Ok(crate::io::planned_file_bytes(meta, &ts))
            }
            SizeModel::Dir | SizeModel::Formats => {
                let mut total = match inp.size {
                    SizeModel::Dir => dir_reserve(inp.tensors.len(), inp.side_bytes),
                    _ => 0,
                };
                for t in inp.tensors {
                    let s = match choice.get(t.name.as_str()) {
                        Some(f) => Storage::parse(f)?,
                        None => storage_of(&t.name)?,
                    };
                    let (rows, cols) = matrix_of(&t.shape);
                    total += s.storage_bits(rows, cols)?.div_ceil(8);
                }
                Ok(total)
            }
        }
    };
    // Fixed bytes: the file with every planned tensor at its smallest candidate, minus those.
    let smallest: HashMap<&str, &str> =
        items.iter().map(|it| (it.sens.name.as_str(), it.sens.candidates[0].format.as_str())).collect();
    let min_bytes = size_with(&smallest)?;
    let fixed_bytes = min_bytes - items.iter().map(|it| it.sens.candidates[0].bytes).sum::<u64>();
    let largest: HashMap<&str, &str> =
        items.iter().map(|it| (it.sens.name.as_str(), it.sens.candidates.last().unwrap().format.as_str())).collect();
    let max_bytes = size_with(&largest)?;
    let budget_bytes = opts.budget.map(|b| b.bytes(n_params));
    if let Some(b) = budget_bytes {
        if b < min_bytes {
            return Err(Error::Other(format!(
                "budget {b} bytes is below the smallest file these candidates allow: {min_bytes} bytes ({:.2} MB, {:.3} bits per weight; every planned tensor at its smallest candidate)",
                min_bytes as f64 / 1e6,
                8.0 * min_bytes as f64 / n_params as f64
            )));
        }
    }

    // 1. Sensitivity: the float model over a few calibration windows.
    let t0 = Instant::now();
    let calib = CalibOptions { samples: opts.samples.max(opts.probe_windows).max(1), ..inp.calib.clone() };
    let tokens = calibration_windows(inp.tokenizer, inp.calib_texts, &calib)?;
    let seq_len = calib.len.max(1);
    let n_tokens = tokens.len();
    let probe_tokens = if opts.probe == ProbeMode::None { 0 } else { opts.probe_windows.max(1) * seq_len };
    let mut globals = arch.load_globals()?;
    let mut x = arch.embed(&globals, &tokens, seq_len)?;
    let mut probe_inputs: Vec<Vec<f32>> = Vec::with_capacity(n_blocks + 1);
    let probe_blocks = sampled_blocks(n_blocks);
    let wants_probe = |sens: &TensorSensitivity| match opts.probe {
        ProbeMode::None => false,
        ProbeMode::All => true,
        ProbeMode::Sampled => sens.block.is_none_or(|b| probe_blocks.contains(&b)),
    };
    let batch_len = 8 * seq_len * d;
    let total_steps = n_blocks + 1;
    for bi in 0..n_blocks {
        progress(bi, total_steps);
        probe_inputs.push(x[..probe_tokens * d].to_vec());
        let blk = arch.load_block(bi, seq_len)?;
        let groups = blk.groups();
        let widths: Vec<usize> = groups.iter().map(|g| blk.linear(g.linears[0]).map(|l| l.inp).unwrap_or(0)).collect();
        let mut hs: Vec<Hessian> = widths.iter().map(|&w| Hessian::new(w)).collect();
        for xb in x.chunks_mut(batch_len) {
            let mut st = crate::arch::BlockState { x: xb, seq_len, carry: Vec::new() };
            for g in 0..groups.len() {
                let hin = blk.group_input(g, &mut st);
                hs[g].add(&hin, hin.len() / widths[g]);
                blk.advance(g, &mut st, hin);
            }
        }
        for (g, grp) in groups.iter().enumerate() {
            let hmean: Vec<f32> = hs[g].mean().iter().map(|&v| v as f32).collect();
            let imp = hs[g].imatrix();
            for &lname in grp.linears {
                let name = blk.weight_name(lname);
                let Some(&k) = by_name.get(&name) else { continue };
                let lin = blk.linear(lname).expect("group linear");
                let want = wants_probe(&items[k].sens);
                score(&mut items[k], &lin.w, lin.out, lin.inp, &hmean, &imp, want)?;
            }
        }
    }
    probe_inputs.push(x[..probe_tokens * d].to_vec());
    // The head (or the tied embedding) on the head's input; a separate embedding by the
    // token counts (a lookup: row v's error enters once per occurrence of token v).
    let head = arch.head_weight(&globals);
    if let Some(hn) = &head {
        if let Some(&k) = by_name.get(hn) {
            let mut h = Hessian::new(d);
            for xb in x.chunks(batch_len) {
                let normed = arch.head_input(&globals, xb);
                h.add(&normed, normed.len() / d);
            }
            let hmean: Vec<f32> = h.mean().iter().map(|&v| v as f32).collect();
            let imp = h.imatrix();
            let w = globals.get(hn).expect("head").to_vec();
            let want = wants_probe(&items[k].sens);
            score(&mut items[k], &w, w.len() / d, d, &hmean, &imp, want)?;
        }
    }
    for (name, (shape, w)) in &globals.tensors {
        if head.as_deref() == Some(name.as_str()) || shape.len() < 2 {
            continue;
        }
        let Some(&k) = by_name.get(name) else { continue };
        let (rows, cols) = matrix_of(shape);
        let mut counts = vec![0f64; rows];
        for &t in &tokens {
            if (t as usize) < rows {
                counts[t as usize] += 1.0;
            }
        }
        let want = wants_probe(&items[k].sens);
        score_lookup(&mut items[k], w, rows, cols, &counts, n_tokens, want)?;
    }
    drop(x);
    if let Some(it) = items.iter().find(|it| !it.scored) {
        return Err(Error::Other(format!(
            "tensor `{}`: the sensitivity pass found no input statistics for it (not a linear of its block, nor the head or embedding); pin it with a rule",
            it.sens.name
        )));
    }
    progress(total_steps, total_steps);
    let seconds_sensitivity = t0.elapsed().as_secs_f64();

    // 2. Probes.
    let t1 = Instant::now();
    let mut ranks = None;
    let kld_units = opts.probe != ProbeMode::None && head.is_some();
    if kld_units {
        let vocab = arch.vocab();
        let head_name = head.clone().expect("head");
        let logits = |globals: &Globals, x: &[f32]| -> Vec<f32> {
            let normed = arch.head_input(globals, x);
            let w = globals.get(&head_name).expect("head");
            let rows = normed.len() / d;
            let mut out = vec![0f32; rows * vocab];
            crate::linalg::matmul_nt(&normed, w, rows, vocab, d, &mut out, true);
            out
        };
        let reference = logits(&globals, &probe_inputs[n_blocks]);
        let run_from = |mut x: Vec<f32>, from: usize| -> Result<Vec<f32>> {
            for bj in from..n_blocks {
                arch.load_block(bj, seq_len)?.forward(&mut x, seq_len);
            }
            Ok(x)
        };
        let probe_list: Vec<usize> = (0..items.len()).filter(|&k| items[k].probe_dequant.is_some()).collect();
        for (pi, &k) in probe_list.iter().enumerate() {
            progress(pi, probe_list.len());
            let dq = items[k].probe_dequant.take().expect("probe weights");
            let name = items[k].sens.name.clone();
            let kld = match items[k].sens.block {
                Some(b) => {
                    let mut x = probe_inputs[b].clone();
                    let mut blk = arch.load_block(b, seq_len)?;
                    let lname = blk
                        .groups()
                        .iter()
                        .flat_map(|g| g.linears.iter())
                        .find(|l| blk.weight_name(l) == name)
                        .copied()
                        .ok_or_else(|| Error::Other(format!("block {b} has no linear for `{name}`")))?;
                    blk.linear_mut(lname).expect("linear").w = dq.into();
                    blk.forward(&mut x, seq_len);
                    drop(blk);
                    let x = run_from(x, b + 1)?;
                    crate::eval::perplexity::mean_kld(&reference, &logits(&globals, &x), vocab)
                }
                None => {
                    // A global: swap it in, rerun what it feeds (the embedding feeds every
                    // block; the head only itself), swap it back.
                    let old = std::mem::replace(&mut globals.tensors.get_mut(&name).expect("global").1, dq);
                    let feeds_blocks = name != head_name || arch.head_tied(&globals);
                    let x = if feeds_blocks {
                        let x0 = arch.embed(&globals, &tokens[..probe_tokens], seq_len)?;
                        run_from(x0, 0)?
                    } else {
                        probe_inputs[n_blocks].clone()
                    };
                    let kld = crate::eval::perplexity::mean_kld(&reference, &logits(&globals, &x), vocab);
                    globals.tensors.get_mut(&name).expect("global").1 = old;
                    kld
                }
            };
            let s = &mut items[k].sens;
            s.probe_kld = Some(kld);
            let e = s.candidates[0].proxy;
            if e > 0.0 && kld.is_finite() && kld > 0.0 {
                s.gain = kld / e;
                s.probed = true;
            }
        }
        // Gains of unprobed tensors: log-linear in depth between the sampled blocks of
        // their role; with every tensor probed, the same interpolation from the sampled
        // depths alone checks how well it predicts.
        let sampled_gain = |role: &str, block: usize, items: &[Item]| -> Option<f64> {
            let mut pts: Vec<(f64, f64)> = items
                .iter()
                .filter(|it| it.sens.role == role && it.sens.probed)
                .filter_map(|it| {
                    it.sens.block.filter(|b| probe_blocks.contains(b)).map(|b| (b as f64, it.sens.gain.ln()))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            interpolate(&pts, block as f64).map(f64::exp)
        };
        let median_gain = {
            let mut g: Vec<f64> = items.iter().filter(|it| it.sens.probed).map(|it| it.sens.gain).collect();
            g.sort_by(f64::total_cmp);
            g.get(g.len() / 2).copied().unwrap_or(1.0)
        };
        let fitted: Vec<Option<f64>> =
            items.iter().map(|it| it.sens.block.and_then(|b| sampled_gain(&it.sens.role, b, &items))).collect();
        for (it, f) in items.iter_mut().zip(&fitted) {
            if !it.sens.probed {
                it.sens.gain = f.unwrap_or(median_gain);
            } else if opts.probe == ProbeMode::All && it.sens.block.is_some_and(|b| !probe_blocks.contains(&b)) {
                it.sens.interpolated_gain = *f;
            }
        }
        let probed: Vec<&TensorSensitivity> =
            items.iter().map(|it| &it.sens).filter(|s| s.probe_kld.is_some_and(|v| v > 0.0)).collect();
        if probed.len() >= 3 {
            let measured: Vec<f64> = probed.iter().map(|s| s.probe_kld.unwrap()).collect();
            let proxy: Vec<f64> = probed.iter().map(|s| s.candidates[0].proxy).collect();
            let held: Vec<&&TensorSensitivity> = probed.iter().filter(|s| s.interpolated_gain.is_some()).collect();
            let interpolated = (held.len() >= 3).then(|| {
                let m: Vec<f64> = held.iter().map(|s| s.probe_kld.unwrap()).collect();
                let p: Vec<f64> = held.iter().map(|s| s.interpolated_gain.unwrap() * s.candidates[0].proxy).collect();
                spearman(&p, &m)
            });
            ranks = Some(RankAgreement { n: probed.len(), proxy: spearman(&proxy, &measured), interpolated });
        }
    }
    for it in items.iter_mut() {
        let g = it.sens.gain;
        for c in it.sens.candidates.iter_mut() {
            c.predicted_kld = g * c.proxy;
        }
    }
    let seconds_probes = t1.elapsed().as_secs_f64();

    // 3. Allocation.
    let t2 = Instant::now();
    let sens: Vec<TensorSensitivity> = {
        let mut v: Vec<(usize, TensorSensitivity)> = items.into_iter().map(|it| (it.index, it.sens)).collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, s)| s).collect()
    };
    let allocate_at = |budget: u64| -> Result<Allocation> {
        // The grid works on aligned bytes; the exact size can differ by the last tensor's
        // padding: should it exceed the budget, plan again with that much less room.
        let mut room = budget.saturating_sub(fixed_bytes);
        for _ in 0..4 {
            let pick = knapsack(&sens, room)
                .ok_or_else(|| Error::Other(format!("budget {budget} bytes: no allocation fits")))?;
            let choice: Vec<(String, String)> =
                sens.iter().zip(&pick).map(|(s, &j)| (s.name.clone(), s.candidates[j].format.clone())).collect();
            let map: HashMap<&str, &str> = choice.iter().map(|(n, f)| (n.as_str(), f.as_str())).collect();
            let file_bytes = size_with(&map)?;
            if file_bytes > budget {
                room = room.saturating_sub(file_bytes - budget);
                continue;
            }
            let predicted_kld = sens.iter().zip(&pick).map(|(s, &j)| s.candidates[j].predicted_kld).sum();
            return Ok(Allocation {
                budget_bytes: budget,
                file_bytes,
                bits_per_weight: 8.0 * file_bytes as f64 / n_params as f64,
                predicted_kld,
                choice,
            });
        }
        Err(Error::Other(format!("budget {budget} bytes: no allocation fits once the file's padding is counted")))
    };
    let chosen = budget_bytes.map(allocate_at).transpose()?;
    let mut sweep = Vec::new();
    for &bpw in &opts.sweep {
        let b = Budget::Bpw(bpw).bytes(n_params);
        if b >= min_bytes {
            sweep.push(allocate_at(b.min(max_bytes.max(min_bytes)))?);
        }
    }
    let seconds_allocate = t2.elapsed().as_secs_f64();
    Ok(BudgetReport {
        tensors: sens,
        fixed_bytes,
        min_bytes,
        max_bytes,
        n_params,
        chosen,
        sweep,
        ranks,
        probe: opts.probe,
        kld_units,
        calib_tokens: n_tokens,
        probe_tokens,
        seconds_sensitivity,
        seconds_probes,
        seconds_allocate,
    })
}

/// The sampled depths of the default probes: first, a third, two thirds, last.
fn sampled_blocks(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [0, n / 3, (2 * n) / 3, n.saturating_sub(1)].into_iter().filter(|&b| b < n).collect();
    v.dedup();
    v
}

/// Scores every candidate of a linear with input statistics `hmean` (E[x xᵀ]), rounding with
/// the importance diag(H) whatever the run's own weighting: measured on SmolLM2 at the
/// Q3_K_M size, plans from importance-weighted rounding gave GPTQ files of lower KLD (0.0172)
/// than plans from plain rounding (0.0203), the solver's H doing what the importance does.
fn score(
    it: &mut Item,
    w: &[f32],
    rows: usize,
    cols: usize,
    hmean: &[f32],
    imp: &[f32],
    keep_probe: bool,
) -> Result<()> {
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::Other(format!("tensor `{}`: non-finite weight {} at index {i}", it.sens.name, w[i])));
    }
    for (j, c) in it.sens.candidates.iter_mut().enumerate() {
        let dq = candidate_weights(&c.format, &it.sens.name, w, rows, cols, Some(imp))?;
        let delta: Vec<f32> = w.iter().zip(&dq).map(|(a, b)| a - b).collect();
        c.proxy = quad_form(&delta, hmean, cols).max(0.0);
        if j == 0 && keep_probe {
            it.probe_dequant = Some(dq);
        }
    }
    it.scored = true;
    Ok(())
}

/// The weights `w` as candidate `format` leaves them: rounded to nearest (with importance
/// `imp`, where given) for quantized formats, through the float type for f16/bf16/f32.
fn candidate_weights(
    format: &str,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    imp: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let s = Storage::parse(format)?;
    Ok(match s.ggml() {
        Some(formats::ggml::GgmlType::F16) => w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        Some(formats::ggml::GgmlType::Bf16) => w.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        _ if s.is_float() => w.to_vec(),
        _ => target::rtn(&s.target()?, name, w, rows, cols, imp)?.dequant,
    })
}

/// Scores an embedding lookup: Σ_v count(v)·‖ΔE_v‖² per token.
fn score_lookup(
    it: &mut Item,
    w: &[f32],
    rows: usize,
    cols: usize,
    counts: &[f64],
    n_tokens: usize,
    keep_probe: bool,
) -> Result<()> {
    for (j, c) in it.sens.candidates.iter_mut().enumerate() {
        let dq = candidate_weights(&c.format, &it.sens.name, w, rows, cols, None)?;
        let mut e = 0f64;
        for r in 0..rows {
            if counts[r] > 0.0 {
                let s2: f64 = (0..cols).map(|k| ((w[r * cols + k] - dq[r * cols + k]) as f64).powi(2)).sum();
                e += counts[r] * s2;
            }
        }
        c.proxy = e / n_tokens.max(1) as f64;
        if j == 0 && keep_probe {
            it.probe_dequant = Some(dq);
        }
    }
    it.scored = true;
    Ok(())
}

/// Piecewise-linear interpolation through sorted points, constant beyond the ends.
fn interpolate(pts: &[(f64, f64)], x: f64) -> Option<f64> {
    let first = pts.first()?;
    let last = pts.last()?;
    if x <= first.0 {
        return Some(first.1);
    }
    if x >= last.0 {
        return Some(last.1);
    }
    pts.windows(2).find(|w| x >= w[0].0 && x <= w[1].0).map(|w| {
        let t = if w[1].0 > w[0].0 { (x - w[0].0) / (w[1].0 - w[0].0) } else { 0.0 };
        w[0].1 + t * (w[1].1 - w[0].1)
    })
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            for &k in &idx[i..=j] {
                r[k] = avg;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// Grid cells of the knapsack: rounding every tensor's bytes up to a cell gives away at most
/// n/2¹⁷ of the budget for n planned tensors (0.16 % for SmolLM2's 211), and the program
/// stays well under a second.
const GRID_CELLS: u64 = 1 << 17;

/// One candidate per tensor minimising the total predicted KLD with Σ bytes ≤ `capacity`:
/// an exact dynamic program over a byte grid (bytes rounded up to the cell, so a feasible
/// grid solution is feasible in bytes). Returns the chosen candidate index per tensor, or
/// `None` when even the smallest candidates do not fit.
pub fn knapsack(tensors: &[TensorSensitivity], capacity: u64) -> Option<Vec<usize>> {
    let min_total: u64 = tensors.iter().map(|t| t.candidates.iter().map(|c| c.bytes).min().unwrap_or(0)).sum();
    if min_total > capacity {
        return None;
    }
    let unit = capacity.div_ceil(GRID_CELLS).max(1);
    let cap = (capacity / unit) as usize;
    // Per tensor: candidates not dominated (fewer bytes and no more error than another).
    let options: Vec<Vec<(usize, usize, f64)>> = tensors
        .iter()
        .map(|t| {
            let mut o: Vec<(usize, usize, f64)> = t
                .candidates
                .iter()
                .enumerate()
                .map(|(j, c)| (j, c.bytes.div_ceil(unit) as usize, c.predicted_kld))
                .collect();
            o.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
            let mut kept: Vec<(usize, usize, f64)> = Vec::new();
            for c in o {
                if kept.last().is_none_or(|k| c.2 < k.2) {
                    kept.push(c);
                }
            }
            kept
        })
        .collect();
    let inf = f64::INFINITY;
    // dp[b]: least error of the tensors so far within b cells.
    let mut dp = vec![0f64; cap + 1];
    let mut choice: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for opts in &options {
        let mut next = vec![inf; cap + 1];
        let mut ch = vec![u8::MAX; cap + 1];
        for (k, &(_, w, v)) in opts.iter().enumerate() {
            if w > cap {
                continue;
            }
            for b in w..=cap {
                let cand = dp[b - w] + v;
                if cand < next[b] {
                    next[b] = cand;
                    ch[b] = k as u8;
                }
            }
        }
        dp = next;
        choice.push(ch);
    }
    if !dp[cap].is_finite() {
        return None;
    }
    let mut pick = vec![0usize; tensors.len()];
    let mut b = cap;
    for i in (0..tensors.len()).rev() {
        let k = choice[i][b] as usize;
        let (j, w, _) = options[i][k];
        pick[i] = j;
        b -= w;
    }
    Some(pick)
}

/// A point of another tool to draw beside the sweep (e.g. llama.cpp's presets).
#[derive(Clone, Debug, Serialize)]
pub struct ReferencePoint {
    /// Label.
    pub name: String,
    /// File bytes.
    pub bytes: u64,
    /// Its mean KLD.
    pub kld: f64,
}

/// Reads reference points: one `name,bytes,kld` per line; `#` starts a comment.
pub fn read_reference(path: &std::path::Path) -> Result<Vec<ReferencePoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = (f.len() == 3)
            .then(|| Some((f[1].parse::<u64>().ok()?, f[2].parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0)?)))
            .flatten();
        let Some((bytes, kld)) = parsed else {
            return Err(Error::corrupt(
                path,
                format!("line {}: expected `name,bytes,kld` (bytes a whole number, kld above 0), got `{line}`", i + 1),
            ));
        };
        out.push(ReferencePoint { name: f[0].to_string(), bytes, kld });
    }
    Ok(out)
}

/// Draws bits per weight against mean KLD (log scale): the sweep's predicted points, measured
/// points where given (bits per weight, KLD), and reference points.
pub fn write_pareto_svg(
    path: &std::path::Path,
    report: &BudgetReport,
    measured: &[(f64, f64)],
    reference: &[ReferencePoint],
) -> Result<()> {
    use plotters::prelude::*;
    let n = report.n_params as f64;
    let predicted: Vec<(f64, f64)> =
        report.sweep.iter().filter(|a| a.predicted_kld > 0.0).map(|a| (a.bits_per_weight, a.predicted_kld)).collect();
    let refs: Vec<(f64, f64, &str)> =
        reference.iter().map(|r| (8.0 * r.bytes as f64 / n, r.kld, r.name.as_str())).collect();
    let all: Vec<(f64, f64)> = predicted
        .iter()
        .chain(measured.iter())
        .copied()
        .chain(refs.iter().map(|r| (r.0, r.1)))
        .filter(|p| p.1 > 0.0 && p.1.is_finite())
        .collect();
    if all.is_empty() {
        return Err(Error::Other(format!("{}: no sweep point to draw", path.display())));
    }
    let (x0, x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) =
        all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1.log10()), b.max(p.1.log10())));
    let (xpad, ypad) = (((x1 - x0) * 0.06).max(0.1), ((y1 - y0) * 0.08).max(0.05));
    let err = |e: String| Error::Other(format!("{}: drawing the chart: {e}", path.display()));
    let root = SVGBackend::new(path, (1060, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (plot_area, legend_area) = root.split_horizontally(800); // the legend strip: 260 px
    let mut chart = ChartBuilder::on(&plot_area)
        .caption("mean KL-divergence against bits per weight (whole file)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(x0 - xpad..x1 + xpad, y0 - ypad..y1 + ypad)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("bits per weight")
        .y_desc("mean KLD")
        .y_labels(8)
        .y_label_formatter(&|v| format!("{:.2e}", 10f64.powf(*v)))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let mut legend: Vec<(String, RGBColor)> = Vec::new();
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let grey = RGBColor(90, 90, 90);
    if !predicted.is_empty() {
        chart
            .draw_series(LineSeries::new(predicted.iter().map(|&(x, y)| (x, y.log10())), blue.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(predicted.iter().map(|&(x, y)| Circle::new((x, y.log10()), 4, blue.filled())))
            .map_err(|e| err(e.to_string()))?;
        legend.push(("quantsmith plan (predicted)".into(), blue));
    }
    if !measured.is_empty() {
        chart
            .draw_series(LineSeries::new(measured.iter().map(|&(x, y)| (x, y.log10())), orange.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(measured.iter().map(|&(x, y)| TriangleMarker::new((x, y.log10()), 6, orange.filled())))
            .map_err(|e| err(e.to_string()))?;
        legend.push(("quantsmith plan (measured)".into(), orange));
    }
    for (x, y, name) in &refs {
        chart
            .draw_series(std::iter::once(Cross::new((*x, y.log10()), 6, grey.stroke_width(2))))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Text::new(name.to_string(), (*x, y.log10()), ("sans-serif", 12))))
            .map_err(|e| err(e.to_string()))?;
    }
    if !refs.is_empty() {
        legend.push(("reference points (file)".into(), grey));
    }
    for (i, (name, color)) in legend.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        legend_area
            .draw(&PathElement::new(vec![(8, y), (32, y)], color.stroke_width(3)))
            .map_err(|e| err(e.to_string()))?;
        legend_area.draw(&Text::new(name.clone(), (38, y - 7), ("sans-serif", 13))).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cands: &[(u64, f64)]) -> TensorSensitivity {
        TensorSensitivity {
            name: "x".into(),
            role: "x".into(),
            block: None,
            numel: 1,
            gain: 1.0,
            probed: false,
            probe_kld: None,
            interpolated_gain: None,
            candidates: cands
                .iter()
                .map(|&(b, e)| CandidateScore { format: "q".into(), bytes: b, proxy: e, predicted_kld: e })
                .collect(),
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("105454400").unwrap(), 105454400);
        assert_eq!(parse_size("80MB").unwrap(), 80_000_000);
        assert_eq!(parse_size("80 mb").unwrap(), 80_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 1610612736);
        assert_eq!(parse_size("100KiB").unwrap(), 102400);
        assert_eq!(parse_size("3kb").unwrap(), 3000);
        for bad in ["", "MB", "12XB", "-5MB", "1e3", "0", "1.5", "nanMB", "1..2MB"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn sweep_and_bpw_parse() {
        assert_eq!(parse_sweep("3.5:4.5:0.5").unwrap(), vec![3.5, 4.0, 4.5]);
        assert!(parse_sweep("4:3:0.5").is_err());
        assert!(parse_sweep("3:4").is_err());
        assert!(parse_sweep("3:4:0").is_err());
        assert_eq!(parse_bpw("4.5").unwrap(), 4.5);
        assert!(parse_bpw("0").is_err() && parse_bpw("nan").is_err() && parse_bpw("40").is_err());
    }

    /// The dynamic program finds the optimum a brute force finds, on random instances.
    #[test]
    fn knapsack_matches_brute_force() {
        let mut seed = 7u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..200 {
            let n = 1 + rnd(5) as usize;
            let ts: Vec<TensorSensitivity> = (0..n)
                .map(|_| {
                    let m = 1 + rnd(4) as usize;
                    let c: Vec<(u64, f64)> = (0..m).map(|_| (1 + rnd(40), rnd(1000) as f64 / 10.0)).collect();
                    t(&c)
                })
                .collect();
            let cap = rnd(120);
            // Brute force.
            let mut best: Option<(f64, Vec<usize>)> = None;
            let total: usize = ts.iter().map(|t| t.candidates.len()).product();
            for mut code in 0..total {
                let mut pick = Vec::new();
                for t in &ts {
                    pick.push(code % t.candidates.len());
                    code /= t.candidates.len();
                }
                let bytes: u64 = ts.iter().zip(&pick).map(|(t, &j)| t.candidates[j].bytes).sum();
                let err: f64 = ts.iter().zip(&pick).map(|(t, &j)| t.candidates[j].predicted_kld).sum();
                if bytes <= cap && best.as_ref().is_none_or(|b| err < b.0 - 1e-12) {
                    best = Some((err, pick));
                }
            }
            let got = knapsack(&ts, cap);
            match (best, got) {
                (None, None) => {}
                (Some((e, _)), Some(p)) => {
                    let ge: f64 = ts.iter().zip(&p).map(|(t, &j)| t.candidates[j].predicted_kld).sum();
                    let gb: u64 = ts.iter().zip(&p).map(|(t, &j)| t.candidates[j].bytes).sum();
                    assert!(gb <= cap);
                    assert!((ge - e).abs() < 1e-9, "dp {ge} vs brute {e}");
                }
                (b, g) => panic!("feasibility differs: brute {b:?} dp {g:?}"),
            }
        }
    }

    #[test]
    fn spearman_of_monotone_and_reversed() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn interpolation_is_piecewise_linear_and_clamped() {
        let pts = [(0.0, 1.0), (10.0, 3.0)];
        assert_eq!(interpolate(&pts, 5.0), Some(2.0));
        assert_eq!(interpolate(&pts, -1.0), Some(1.0));
        assert_eq!(interpolate(&pts, 11.0), Some(3.0));
        assert_eq!(interpolate(&[], 1.0), None);
    }
}
