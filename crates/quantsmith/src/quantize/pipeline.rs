//! The streaming calibrated pipeline: block by block, calibrate on the activations the
//! already-quantized blocks produce, solve every linear layer, spill the encoded tensors to
//! the output's work directory, and finally assemble the GGUF file.
//!
//! Memory stays near one block's weights plus the calibration activations. Each finished
//! block is checkpointed (its tensors, the activations after it, the report so far) in
//! `OUT.partial/`; the same command after a kill resumes from the last finished block and,
//! the computation being deterministic, yields a byte-identical file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use formats::ggml::GgmlType;
use serde::{Deserialize, Serialize};

use super::plan::{Plan, PlanEntry};
use crate::arch::llama::{Block, LinearObserver, LinearRole, LlamaConfig, Naming};
use crate::calib::{calibration_windows, CalibOptions, Hessian};
use crate::io::gguf::{GgufFile, GgufValue};
use crate::io::GgufWriter;
use crate::solve::{layer_error, LayerProblem};
use crate::tensor::TensorSource;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Where per-column importance (llama.cpp's imatrix) comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ImatrixSource {
    /// No importance weighting.
    None,
    /// Mean x² per input column, collected from the unquantized model on the calibration text.
    Calibrate,
    /// Read from a llama.cpp imatrix file (GGUF or legacy .dat).
    File(PathBuf),
}

/// Everything a quantization run needs besides the model.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Output GGUF path.
    pub out: PathBuf,
    /// Calibration texts (path, contents).
    pub calib_texts: Vec<(PathBuf, String)>,
    /// Calibration windows.
    pub calib: CalibOptions,
    /// Importance source.
    pub imatrix: ImatrixSource,
    /// Calibration sequences per forward batch (bounds the transient memory of a block).
    pub batch_seqs: usize,
    /// Resume from `OUT.partial/` when it holds a checkpoint of the same run.
    pub resume: bool,
}

/// Per-tensor outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Storage type written.
    pub ggml_type: String,
    /// Solver used (`copy` for tensors kept as they are).
    pub solver: String,
    /// Bytes in the output.
    pub bytes: usize,
    /// Bits per weight including block metadata.
    pub bits_per_weight: f64,
    /// Weight SQNR in dB (quantized tensors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqnr_db: Option<f64>,
    /// tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the calibration inputs, when they were collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_err: Option<f64>,
    /// Seconds spent solving it.
    pub seconds: f64,
    /// Block index, when the tensor belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<usize>,
    /// A remark for the report (e.g. a tied embedding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Wall-clock seconds by phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Loading weights.
    pub load: f64,
    /// Forward passes of the calibration data, with Hessian accumulation.
    pub calibrate: f64,
    /// Hessian accumulation alone (inside `calibrate`).
    pub hessian: f64,
    /// Solving layers.
    pub solve: f64,
    /// Forward passes through quantized blocks (GPTQ's propagation).
    pub propagate: f64,
    /// Writing checkpoints and the output.
    pub write: f64,
}

/// What the pipeline did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineReport {
    /// Every tensor in file order.
    pub tensors: Vec<TensorReport>,
    /// Output file size.
    pub file_bytes: u64,
    /// Calibration tokens used (0 without calibration).
    pub calib_tokens: usize,
    /// Seconds by phase.
    pub phases: PhaseTimes,
    /// Blocks taken from a checkpoint instead of recomputed.
    pub resumed_blocks: usize,
}

/// Checkpoint state written after every finished block.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    next_block: usize,
    tensors: Vec<TensorReport>,
    phases: PhaseTimes,
}

/// Collects the Hessians of a block's four distinct linear inputs.
struct BlockStats {
    attn: Hessian,
    o: Hessian,
    ffn: Hessian,
    down: Hessian,
    seconds: f64,
}

impl BlockStats {
    fn new(cfg: &LlamaConfig) -> BlockStats {
        BlockStats {
            attn: Hessian::new(cfg.d_model),
            o: Hessian::new(cfg.n_head * cfg.head_dim),
            ffn: Hessian::new(cfg.d_model),
            down: Hessian::new(cfg.d_ff),
            seconds: 0.0,
        }
    }
    fn for_role(&self, role: LinearRole) -> &Hessian {
        match role {
            LinearRole::Q | LinearRole::K | LinearRole::V => &self.attn,
            LinearRole::O => &self.o,
            LinearRole::Gate | LinearRole::Up => &self.ffn,
            LinearRole::Down => &self.down,
        }
    }
}

impl LinearObserver for BlockStats {
    fn observe(&mut self, role: LinearRole, x: &[f32], rows: usize) {
        let t = Instant::now();
        match role {
            LinearRole::Q => self.attn.add(x, rows),
            LinearRole::O => self.o.add(x, rows),
            LinearRole::Gate => self.ffn.add(x, rows),
            LinearRole::Down => self.down.add(x, rows),
            // k, v share q's input; up shares gate's.
            _ => {}
        }
        self.seconds += t.elapsed().as_secs_f64();
    }
}

/// Runs `block` over all calibration rows of `x` in batches, in place, observing if asked.
fn run_block(
    cfg: &LlamaConfig,
    rope: &crate::arch::llama::RopeTable,
    block: &Block,
    x: &mut [f32],
    seq_len: usize,
    batch_seqs: usize,
    mut stats: Option<&mut BlockStats>,
) {
    let batch = batch_seqs.max(1) * seq_len * cfg.d_model;
    for chunk in x.chunks_mut(batch) {
        block.forward(cfg, rope, chunk, seq_len, stats.as_deref_mut().map(|s| s as &mut dyn LinearObserver));
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Stores a tensor kept in a float type.
fn encode_plain(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => Ok(f32_bytes(v)),
        GgmlType::F16 => Ok(v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect()),
        GgmlType::Bf16 => Ok(v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect()),
        other => Err(Error::Other(format!("{} is not a plain float type", other.name()))),
    }
}

/// The work directory beside the output.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// A spill file of tensors: for each, name length, name, byte length, bytes.
fn write_spill(path: &Path, tensors: &[(String, Vec<u8>)]) -> Result<()> {
    let mut buf = Vec::new();
    for (name, bytes) in tensors {
        buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    }
    write_atomic(path, &buf)
}

fn read_spill(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut p = 0usize;
    let bad = || Error::corrupt(path, "truncated checkpoint spill file");
    let take = |p: &mut usize, n: usize| -> Result<&[u8]> {
        let end = p.checked_add(n).filter(|&e| e <= buf.len()).ok_or_else(bad)?;
        let s = &buf[*p..end];
        *p = end;
        Ok(s)
    };
    while p < buf.len() {
        let n = u64::from_le_bytes(take(&mut p, 8)?.try_into().map_err(|_| bad())?) as usize;
        let name = String::from_utf8(take(&mut p, n)?.to_vec()).map_err(|_| bad())?;
        let n = u64::from_le_bytes(take(&mut p, 8)?.try_into().map_err(|_| bad())?) as usize;
        out.push((name, take(&mut p, n)?.to_vec()));
    }
    Ok(out)
}

/// Writes `bytes` to `path` via a temporary name in the same directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Quantizes the Llama-family decoder in GGUF file `g` as `plan` says and writes `opts.out`.
///
/// `progress(phase, done, total)` reports blocks as they finish.
pub fn run(
    g: &GgufFile,
    tok: &Tokenizer,
    plan: &Plan,
    metadata: Vec<(String, GgufValue)>,
    opts: &PipelineOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<PipelineReport> {
    let cfg = LlamaConfig::from_gguf(g)?;
    let path = g.path();
    let src: &dyn TensorSource = g;
    let naming = Naming::Gguf;
    let mut phases = PhaseTimes::default();

    let needs_h = plan.entries.iter().any(|e| e.method.needs_hessian());
    let calibrate = needs_h || opts.imatrix == ImatrixSource::Calibrate;
    // GPTQ sees the activations of the quantized blocks; an imatrix those of the original.
    let propagate_quantized = needs_h;
    let file_imatrix = match &opts.imatrix {
        ImatrixSource::File(p) => Some(super::imatrix::read_imatrix(p)?),
        _ => None,
    };

    let work = partial_dir(&opts.out);
    let fingerprint = plan.fingerprint(path, opts);
    let mut state = Checkpoint {
        fingerprint: fingerprint.clone(),
        next_block: 0,
        tensors: Vec::new(),
        phases: PhaseTimes::default(),
    };
    let mut resumed_blocks = 0;
    if opts.resume {
        if let Ok(text) = std::fs::read_to_string(work.join("state.json")) {
            if let Ok(s) = serde_json::from_str::<Checkpoint>(&text) {
                if s.fingerprint == fingerprint && (!calibrate || work.join("x.bin").exists()) {
                    resumed_blocks = s.next_block;
                    state = s;
                    phases = state.phases.clone();
                }
            }
        }
    }
    if resumed_blocks == 0 {
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        }
        std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    }

    // Calibration activations.
    let seq_len = opts.calib.len;
    let mut x: Vec<f32> = Vec::new();
    let mut calib_tokens = 0;
    let rope = crate::arch::llama::RopeTable::new(cfg.head_dim, cfg.rope_theta, cfg.rope, seq_len.max(1));
    if calibrate {
        let t = Instant::now();
        let tokens = calibration_windows(tok, &opts.calib_texts, &opts.calib)?;
        calib_tokens = tokens.len();
        if resumed_blocks > 0 {
            x = bytes_f32(&std::fs::read(work.join("x.bin")).map_err(|e| Error::io(work.join("x.bin"), e))?);
            if x.len() != tokens.len() * cfg.d_model {
                return Err(Error::corrupt(work.join("x.bin"), "checkpointed activations have the wrong size"));
            }
        } else {
            let embed = crate::arch::llama::load_checked(src, path, naming.embed(), &[cfg.vocab, cfg.d_model])?;
            let d = cfg.d_model;
            x = vec![0f32; tokens.len() * d];
            for (row, &tk) in x.chunks_mut(d).zip(&tokens) {
                let tk = tk as usize;
                row.copy_from_slice(&embed[tk * d..(tk + 1) * d]);
            }
        }
        phases.load += t.elapsed().as_secs_f64();
    }

    progress("blocks", resumed_blocks, cfg.n_layer);
    for i in resumed_blocks..cfg.n_layer {
        let t = Instant::now();
        let mut block = Block::load(src, path, &cfg, i)?;
        phases.load += t.elapsed().as_secs_f64();

        let mut spill: Vec<(String, Vec<u8>)> = Vec::new();
        let imx = file_imatrix.as_ref();
        if propagate_quantized {
            // True-sequential within the block: each group of layers is solved on inputs that
            // the already-quantized layers before it produce, and the block's output on the
            // calibration data comes out of the same pass.
            let d = cfg.d_model;
            let batch_rows = opts.batch_seqs.max(1) * seq_len;
            let t = Instant::now();
            let mut hs = 0f64;
            let mut solve_stage = |block: &mut Block, roles: &[LinearRole], h: &Hessian| {
                solve_roles(block, roles, Some(h), i, plan, opts, imx, &mut spill, &mut state.tensors)
            };
            let mut ha = Hessian::new(d);
            for xb in x.chunks(batch_rows * d) {
                let h = block.attn_input(&cfg, xb);
                let th = Instant::now();
                ha.add(&h, h.len() / d);
                hs += th.elapsed().as_secs_f64();
            }
            phases.calibrate += t.elapsed().as_secs_f64();
            let t = Instant::now();
            solve_stage(&mut block, &[LinearRole::Q, LinearRole::K, LinearRole::V], &ha)?;
            phases.solve += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let qd = cfg.n_head * cfg.head_dim;
            let mut attn_all = vec![0f32; x.len() / d * qd];
            let mut ho = Hessian::new(qd);
            for (xb, ab) in x.chunks(batch_rows * d).zip(attn_all.chunks_mut(batch_rows * qd)) {
                let h = block.attn_input(&cfg, xb);
                let a = block.attention(&cfg, &rope, &h, seq_len);
                let th = Instant::now();
                ho.add(&a, a.len() / qd);
                hs += th.elapsed().as_secs_f64();
                ab.copy_from_slice(&a);
            }
            phases.calibrate += t.elapsed().as_secs_f64();
            let t = Instant::now();
            solve_stage(&mut block, &[LinearRole::O], &ho)?;
            phases.solve += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let mut hf = Hessian::new(d);
            for (xb, ab) in x.chunks_mut(batch_rows * d).zip(attn_all.chunks(batch_rows * qd)) {
                block.add_attn_output(xb, ab);
                let h = block.ffn_input(&cfg, xb);
                let th = Instant::now();
                hf.add(&h, h.len() / d);
                hs += th.elapsed().as_secs_f64();
            }
            drop(attn_all);
            phases.calibrate += t.elapsed().as_secs_f64();
            let t = Instant::now();
            solve_stage(&mut block, &[LinearRole::Gate, LinearRole::Up], &hf)?;
            phases.solve += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let ff = cfg.d_ff;
            let mut act_all = vec![0f32; x.len() / d * ff];
            let mut hd = Hessian::new(ff);
            for (xb, ab) in x.chunks(batch_rows * d).zip(act_all.chunks_mut(batch_rows * ff)) {
                let h = block.ffn_input(&cfg, xb);
                let a = block.mlp_activation(&h);
                let th = Instant::now();
                hd.add(&a, a.len() / ff);
                hs += th.elapsed().as_secs_f64();
                ab.copy_from_slice(&a);
            }
            phases.calibrate += t.elapsed().as_secs_f64();
            let t = Instant::now();
            solve_stage(&mut block, &[LinearRole::Down], &hd)?;
            phases.solve += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for (xb, ab) in x.chunks_mut(batch_rows * d).zip(act_all.chunks(batch_rows * ff)) {
                block.add_mlp_output(xb, ab);
            }
            phases.propagate += t.elapsed().as_secs_f64();
            phases.hessian += hs;
        } else {
            // Statistics of the original model (llama.cpp's imatrix meaning), propagated
            // through the original block; or no calibration at all.
            let mut stats = None;
            if calibrate {
                let t = Instant::now();
                let mut s = BlockStats::new(&cfg);
                run_block(&cfg, &rope, &block, &mut x, seq_len, opts.batch_seqs, Some(&mut s));
                phases.calibrate += t.elapsed().as_secs_f64();
                phases.hessian += s.seconds;
                stats = Some(s);
            }
            let t = Instant::now();
            for role in LinearRole::ALL {
                let h = stats.as_ref().map(|s| s.for_role(role));
                solve_roles(&mut block, &[role], h, i, plan, opts, imx, &mut spill, &mut state.tensors)?;
            }
            phases.solve += t.elapsed().as_secs_f64();
        }
        // Norms and biases as the plan says.
        let mut others = vec![naming.attn_norm(i), naming.ffn_norm(i)];
        for role in [LinearRole::Q, LinearRole::K, LinearRole::V] {
            let name = format!("{}.bias", naming.linear(i, role));
            if src.info(&name).is_some() {
                others.push(name);
            }
        }
        for name in others {
            let (rep, bytes) = copy_entry(src, path, plan, &name, Some(i))?;
            spill.push((name, bytes));
            state.tensors.push(rep);
        }

        let t = Instant::now();
        write_spill(&work.join(format!("blk.{i}.bin")), &spill)?;
        if calibrate {
            write_atomic(&work.join("x.bin"), &f32_bytes(&x))?;
        }
        state.next_block = i + 1;
        phases.write += t.elapsed().as_secs_f64();
        state.phases = phases.clone();
        let json = serde_json::to_vec(&state).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&work.join("state.json"), &json)?;
        progress("blocks", i + 1, cfg.n_layer);
    }

    // The output head (or the tied embedding), with the statistics of the head's input.
    let t = Instant::now();
    let mut head_stats = None;
    if calibrate {
        let out_norm = crate::arch::llama::load_checked(src, path, naming.out_norm(), &[cfg.d_model])?;
        let mut h = Hessian::new(cfg.d_model);
        let mut normed = vec![0f32; x.len()];
        crate::arch::llama::rms_norm(&x, &out_norm, cfg.rms_eps, &mut normed);
        h.add(&normed, normed.len() / cfg.d_model);
        head_stats = Some(h);
    }
    phases.calibrate += t.elapsed().as_secs_f64();
    drop(x);

    let t = Instant::now();
    let mut tail: Vec<(String, Vec<u8>)> = Vec::new();
    let tied = src.info(naming.head()).is_none();
    let head_name = if tied { naming.embed() } else { naming.head() };
    {
        let entry = plan.entry(head_name).ok_or_else(|| Error::Other(format!("no plan for tensor `{head_name}`")))?;
        let w = crate::arch::llama::load_checked(src, path, head_name, &[cfg.vocab, cfg.d_model])?;
        let imp_owned: Option<Vec<f32>> = match (&opts.imatrix, &file_imatrix) {
            (ImatrixSource::Calibrate, _) => head_stats.as_ref().map(|h| h.imatrix()),
            (ImatrixSource::File(_), Some(m)) => m.get(naming.head()).or_else(|| m.get(head_name)).cloned(),
            _ => None,
        };
        let (mut rep, bytes, _) =
            solve_entry(entry, head_name, &w, cfg.vocab, cfg.d_model, head_stats.as_ref(), imp_owned.as_deref(), None)?;
        if tied {
            rep.note = Some("tied to the output head: quantized once, with the statistics of the head's input".into());
        }
        tail.push((head_name.to_string(), bytes));
        state.tensors.push(rep);
    }
    if !tied {
        // A separate embedding is a lookup table: no input statistics apply.
        let entry = plan.entry(naming.embed()).ok_or_else(|| Error::Other("no plan for the embedding".into()))?;
        let w = crate::arch::llama::load_checked(src, path, naming.embed(), &[cfg.vocab, cfg.d_model])?;
        let (rep, bytes, _) = solve_entry(entry, naming.embed(), &w, cfg.vocab, cfg.d_model, None, None, None)?;
        tail.push((naming.embed().to_string(), bytes));
        state.tensors.push(rep);
    }
    let (rep, bytes) = copy_entry(src, path, plan, naming.out_norm(), None)?;
    tail.push((naming.out_norm().to_string(), bytes));
    state.tensors.push(rep);
    phases.solve += t.elapsed().as_secs_f64();

    // Assemble the GGUF in the input's tensor order.
    let t = Instant::now();
    let mut by_name: BTreeMap<String, Vec<u8>> = tail.into_iter().collect();
    let mut writer = GgufWriter::new(&opts.out)?;
    writer.add_metadata_all(metadata.iter())?;
    let mut spills_loaded = 0usize;
    let mut reports: BTreeMap<String, TensorReport> = state.tensors.drain(..).map(|r| (r.name.clone(), r)).collect();
    let mut ordered = Vec::new();
    for info in g.gguf_tensors() {
        let name = info.name.clone();
        if !by_name.contains_key(&name) {
            // Load the block spills lazily, one at a time, in order.
            while !by_name.contains_key(&name) && spills_loaded < cfg.n_layer {
                for (n, b) in read_spill(&work.join(format!("blk.{spills_loaded}.bin")))? {
                    by_name.insert(n, b);
                }
                spills_loaded += 1;
            }
        }
        let bytes = by_name.remove(&name).ok_or_else(|| Error::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            msg: "not produced by the pipeline (unexpected tensor for this architecture)".into(),
        })?;
        let entry = plan.entry(&name).ok_or_else(|| Error::Other(format!("no plan for tensor `{name}`")))?;
        let ne: Vec<u64> = info.info().shape.iter().rev().map(|&d| d as u64).collect();
        writer.add_tensor(&name, &ne, entry.ty, &bytes)?;
        if let Some(r) = reports.remove(&name) {
            ordered.push(r);
        }
    }
    writer.finish()?;
    phases.write += t.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&opts.out).map_err(|e| Error::io(&opts.out, e))?.len();
    std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    Ok(PipelineReport { tensors: ordered, file_bytes, calib_tokens, phases, resumed_blocks })
}

/// Solves the linear layers `roles` of block `i` with the statistics `h` of their (shared)
/// input, puts the dequantized weights back into the block (they feed later stages), and
/// records the encoded tensors and their reports.
#[allow(clippy::too_many_arguments)]
fn solve_roles(
    block: &mut Block,
    roles: &[LinearRole],
    h: Option<&Hessian>,
    i: usize,
    plan: &Plan,
    opts: &PipelineOptions,
    file_imatrix: Option<&super::imatrix::Imatrix>,
    spill: &mut Vec<(String, Vec<u8>)>,
    reports: &mut Vec<TensorReport>,
) -> Result<()> {
    let imatrix = match (&opts.imatrix, h) {
        (ImatrixSource::Calibrate, Some(h)) => Some(h.imatrix()),
        _ => None,
    };
    for &role in roles {
        let name = format!("{}.weight", Naming::Gguf.linear(i, role));
        let entry = plan.entry(&name).ok_or_else(|| Error::Other(format!("no plan for tensor `{name}`")))?;
        let importance = match &opts.imatrix {
            ImatrixSource::File(_) => file_imatrix.and_then(|m| m.get(&name)).map(|v| v.as_slice()),
            _ => imatrix.as_deref(),
        };
        let lin = block.linear_mut(role);
        let (rows, cols) = (lin.out, lin.inp);
        let (rep, bytes, dequant) = solve_entry(entry, &name, &lin.w, rows, cols, h, importance, Some(i))?;
        if let Some(dq) = dequant {
            lin.w = dq;
        }
        spill.push((name, bytes));
        reports.push(rep);
    }
    Ok(())
}

/// Quantizes one matrix as its plan entry says. Returns the report, the encoded bytes and
/// the dequantized weights.
#[allow(clippy::too_many_arguments)]
fn solve_entry(
    entry: &PlanEntry,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: Option<&Hessian>,
    importance: Option<&[f32]>,
    block: Option<usize>,
) -> Result<(TensorReport, Vec<u8>, Option<Vec<f32>>)> {
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::Other(format!("tensor `{name}`: non-finite weight {} at index {i}", w[i])));
    }
    let t = Instant::now();
    let shape = vec![rows, cols];
    if entry.ty.block_size() == 1 {
        let bytes = encode_plain(entry.ty, w)?;
        let rep = TensorReport {
            name: name.to_string(),
            shape,
            ggml_type: entry.ty.name().to_string(),
            solver: "copy".into(),
            bytes: bytes.len(),
            bits_per_weight: 8.0 * bytes.len() as f64 / (rows * cols) as f64,
            sqnr_db: None,
            output_err: None,
            seconds: t.elapsed().as_secs_f64(),
            block,
            note: None,
        };
        return Ok((rep, bytes, None));
    }
    let fmt =
        formats::format::Format::parse(entry.ty.name()).map_err(|e| Error::Other(format!("tensor `{name}`: {e}")))?;
    let p = LayerProblem { name, w, rows, cols, hessian: h, importance };
    // GPTQ without statistics cannot run; the plan only asks for it where they exist.
    let rtn: crate::solve::Method = std::sync::Arc::new(crate::solve::rtn::Rtn);
    let method = if entry.method.needs_hessian() && h.is_none() { &rtn } else { &entry.method };
    let enc = method.solve(&p, &fmt)?;
    let bytes = enc
        .bytes
        .ok_or_else(|| Error::Other(format!("tensor `{name}`: {} produced no ggml bytes", entry.ty.name())))?;
    let err = layer_error(w, &enc.dequant, rows, cols, h);
    let rep = TensorReport {
        name: name.to_string(),
        shape,
        ggml_type: entry.ty.name().to_string(),
        solver: method.name().to_string()
            + if importance.is_some() && method.name() == "rtn" { "+imatrix" } else { "" },
        bytes: bytes.len(),
        bits_per_weight: 8.0 * bytes.len() as f64 / (rows * cols) as f64,
        sqnr_db: Some(err.sqnr_db),
        output_err: err.output_err,
        seconds: t.elapsed().as_secs_f64(),
        block,
        note: None,
    };
    Ok((rep, bytes, Some(enc.dequant)))
}

/// A tensor stored without solving (norms, biases): converted to the plan's float type.
fn copy_entry(
    src: &dyn TensorSource,
    path: &Path,
    plan: &Plan,
    name: &str,
    block: Option<usize>,
) -> Result<(TensorReport, Vec<u8>)> {
    let info = src.info(name).ok_or_else(|| Error::Tensor {
        path: path.to_path_buf(),
        tensor: name.into(),
        msg: "missing".into(),
    })?;
    let entry = plan.entry(name).ok_or_else(|| Error::Other(format!("no plan for tensor `{name}`")))?;
    let v = src.load_f32(name)?;
    let bytes = if entry.ty.block_size() == 1 {
        encode_plain(entry.ty, &v)?
    } else {
        formats::ggml::quantize(entry.ty, &v, *info.shape.last().unwrap_or(&1), None)
            .map_err(|e| Error::Other(format!("tensor `{name}`: {e}")))?
    };
    let n = info.numel().max(1);
    let rep = TensorReport {
        name: name.to_string(),
        shape: info.shape.clone(),
        ggml_type: entry.ty.name().to_string(),
        solver: "copy".into(),
        bytes: bytes.len(),
        bits_per_weight: 8.0 * bytes.len() as f64 / n as f64,
        sqnr_db: None,
        output_err: None,
        seconds: 0.0,
        block,
        note: None,
    };
    Ok((rep, bytes))
}
