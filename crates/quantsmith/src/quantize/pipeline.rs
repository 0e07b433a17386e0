//! The streaming calibrated pipeline, one generic loop for every architecture: block by
//! block, group by group (the [`crate::arch::LinearGroup`]s a block declares, in
//! true-sequential order), collect the group's input statistics, let the transforms rewrite
//! the block, solve the group's linears, and run the group forward on the calibration data
//! so the next group sees the quantized ones. Encoded tensors spill to the output's work
//! directory; at the end the exporter writes them, in the checkpoint's order.
//!
//! Memory stays near one block's weights plus the calibration activations. Each finished
//! block is checkpointed (its tensors, the activations after it, the report so far) in
//! `OUT.partial/`; the same command after a kill resumes from the last finished block and,
//! the computation being deterministic, yields a byte-identical file.
//!
//! A run that calibrates nothing (no block depends on the ones before) streams instead
//! ([`run_streaming`]): each block is read and solved when the exporter reaches it, and the
//! output is the only thing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::plan::{matrix_of, Plan, PlanEntry};
use crate::arch::{Arch, Block, BlockState};
use crate::calib::{calibration_windows, CalibOptions, Cross, CrossPart, Hessian, HessianPart};
use crate::dist::Reduce;
use crate::export::{ExportModel, Exporter, QuantTensor, TensorData};
use crate::solve::{layer_error, LayerError, LayerProblem};
use crate::tensor::Weights;
use crate::tokenizer::Tokenizer;
use crate::transform::{GroupCtx, SolvedGroup, Transform};
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
    /// Output path (a file or a directory, as the layout is).
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
    /// Least time between two checkpoints of a calibrated run, in seconds (0: after every
    /// block). `None`: 50 times what the last checkpoint took to write, so that writing them
    /// (the activations entering the next block, mostly) costs at most about 2 % of the run.
    /// A killed run resumes from the last checkpoint written; the first block and the last
    /// always write one.
    pub checkpoint_every: Option<f64>,
}

/// Checkpoints of a calibrated run are at least this many times their own writing time
/// apart (when the options do not say otherwise).
const CHECKPOINT_SPACING: f64 = 50.0;

/// Whether a block writes a checkpoint: `always` (the first block of the run, the last, the
/// fault hook's), or `since` seconds after the last one took `cost` seconds to write, when
/// that is at least `every` (the option) or, without it, [`CHECKPOINT_SPACING`] × `cost`.
fn checkpoint_due(always: bool, since: f64, cost: f64, every: Option<f64>) -> bool {
    always || since >= every.unwrap_or(CHECKPOINT_SPACING * cost)
}

/// Per-tensor outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Storage written (a ggml type or a format spec).
    pub format: String,
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
    /// Wall-clock seconds the earlier run(s) spent on those blocks.
    pub resumed_seconds: f64,
}

/// Checkpoint state written after every finished block.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    next_block: usize,
    tensors: Vec<TensorReport>,
    /// Wall-clock seconds spent on the checkpointed blocks, over every run that worked on them.
    #[serde(default)]
    seconds: f64,
    /// CRC-32 of every file of the checkpoint (`blk.N.bin`, `x.bin`) as written: a damaged
    /// checkpoint is never resumed from.
    #[serde(default)]
    crc32: BTreeMap<String, u32>,
    /// Static activation ranges calibrated so far.
    #[serde(default)]
    act_scales: BTreeMap<String, f32>,
}

impl Checkpoint {
    /// Why the files in `work` are not the ones this state recorded, if they are not.
    fn damage(&self, work: &Path, calibrate: bool) -> Option<String> {
        let mut files: Vec<String> = (0..self.next_block).map(|i| format!("blk.{i}.bin")).collect();
        if calibrate {
            files.push("x.bin".into());
        }
        if self.crc32.contains_key("xf.bin") {
            files.push("xf.bin".into());
        }
        for f in files {
            let Some(&want) = self.crc32.get(&f) else { return Some(format!("{f} has no recorded checksum")) };
            match std::fs::read(work.join(&f)) {
                Err(e) => return Some(format!("{f}: {e}")),
                Ok(b) if crc32fast::hash(&b) != want => return Some(format!("{f} differs from what was written")),
                Ok(_) => {}
            }
        }
        None
    }
}

/// What the pipeline runs on besides its options: the model, the plan, the rewrites and
/// where the result goes.
pub struct RunInputs<'a> {
    /// The model's architecture (reads blocks and globals from the checkpoint).
    pub arch: &'a dyn Arch,
    /// The checkpoint the architecture reads (for the resume fingerprint and messages).
    pub input: &'a Path,
    /// Its tokenizer (calibration text).
    pub tokenizer: &'a Tokenizer,
    /// Every tensor's storage and solver.
    pub plan: &'a Plan,
    /// Rewrites applied to each linear group before it is solved, in order.
    pub transforms: &'a [Box<dyn Transform>],
    /// What runs between the weights (online rotations, activation / KV quantization); the
    /// pipeline fills in static activation ranges as it calibrates them.
    pub runtime: &'a crate::arch::runtime::Runtime,
    /// The output layout.
    pub exporter: &'a dyn Exporter,
    /// Metadata, configs and side files for the exporter.
    pub export: &'a ExportModel,
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The work directory beside the output.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn write_spill(path: &Path, tensors: &[QuantTensor]) -> Result<u32> {
    let mut buf = Vec::new();
    for t in tensors {
        t.write_spill(&mut buf);
    }
    write_atomic(path, &buf)
}

fn read_spill(path: &Path, plan: &Plan) -> Result<Vec<QuantTensor>> {
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut pos = 0;
    let mut out = Vec::new();
    let storage_of = |n: &str| plan.entry(n).map(|e| e.storage.clone());
    while let Some(t) = QuantTensor::read_spill(&buf, &mut pos, &storage_of)
        .map_err(|m| Error::corrupt(path, format!("checkpoint spill file: {m}")))?
    {
        out.push(t);
    }
    Ok(out)
}

/// Writes `bytes` to `path` via a temporary name in the same directory; returns their CRC-32.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<u32> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(crc32fast::hash(bytes))
}

/// Everything a group's solve needs besides the block.
struct SolveCtx<'a> {
    plan: &'a Plan,
    opts: &'a PipelineOptions,
    file_imatrix: Option<&'a super::imatrix::Imatrix>,
    /// Whether the quantized weights feed what follows (the sequential pipeline): the solve
    /// then keeps a dequantized copy.
    sequential: bool,
}

impl SolveCtx<'_> {
    fn entry(&self, name: &str) -> Result<&PlanEntry> {
        self.plan.entry(name).ok_or_else(|| Error::Other(format!("no plan for tensor `{name}`")))
    }

    /// The storage format of each linear of a group (`None` for float storage).
    fn formats(&self, blk: &dyn Block, linears: &[&str]) -> Result<Vec<Option<formats::format::Format>>> {
        linears
            .iter()
            .map(|l| {
                let e = self.entry(&blk.weight_name(l))?;
                if e.storage.is_float() {
                    Ok(None)
                } else {
                    e.storage.target().map(Some)
                }
            })
            .collect()
    }

    /// The per-column importance of `name` (llama.cpp's imatrix meaning), if the run uses one.
    fn importance(&self, name: &str, h: Option<&Hessian>, aliases: &[&str]) -> Option<Vec<f32>> {
        match (&self.opts.imatrix, self.file_imatrix) {
            (ImatrixSource::Calibrate, _) => h.map(|h| h.imatrix()),
            (ImatrixSource::File(_), Some(m)) => {
                std::iter::once(name).chain(aliases.iter().copied()).find_map(|n| m.get(n)).cloned()
            }
            _ => None,
        }
    }

    /// Solves the linears of `group` in block `blk` (index `i`) with the statistics `h` of
    /// their shared input; the dequantized weights replace the originals (they feed what
    /// follows) and the encoded tensors go to `out`.
    #[allow(clippy::too_many_arguments)]
    fn solve_group(
        &self,
        blk: &mut dyn Block,
        linears: &[&str],
        h: Option<&Hessian>,
        cross: Option<&Cross>,
        i: usize,
        out: &mut Vec<QuantTensor>,
        reports: &mut Vec<TensorReport>,
    ) -> Result<()> {
        let comm = crate::dist::world();
        if comm.size() > 1 && linears.len() > 1 {
            return self.solve_group_across_ranks(blk, linears, h, cross, i, out, reports, comm);
        }
        if comm.size() > 1 && self.sequential {
            // A layer alone in its group: its rows shared out, when they are solved apart.
            let lname = linears[0];
            let rows = blk.linear(lname).map_or(0, |l| l.out);
            if rows >= 2 * comm.size() && rows_separable(self.entry(&blk.weight_name(lname))?) {
                return self.solve_rows_across_ranks(blk, lname, h, cross, i, out, reports, comm);
            }
        }
        for &lname in linears {
            let name = blk.weight_name(lname);
            let entry = self.entry(&name)?;
            let importance = self.importance(&name, h, &[]);
            let lin =
                blk.linear_mut(lname).ok_or_else(|| Error::Other(format!("block {i} has no linear `{lname}`")))?;
            let shape = vec![lin.out, lin.inp];
            let target = asymmetric_target_of(entry, &name, &lin.w, &shape, h, cross)?;
            let w = target.as_deref().unwrap_or(&lin.w);
            // Only the sequential pipeline computes with the quantized weights afterwards.
            let (rep, t, dq) =
                solve_entry(entry, &name, w, &shape, h, importance.as_deref(), Some(i), self.sequential)?;
            if let Some(dq) = dq {
                lin.w = dq.into();
            }
            out.push(t);
            reports.push(rep);
        }
        Ok(())
    }
}

impl SolveCtx<'_> {
    /// [`SolveCtx::solve_group`] with the group's linears shared out among the ranks (by
    /// their solve cost, rows·cols² + cols³, largest first onto the least loaded rank); every
    /// rank then receives every result, in the group's order: the dequantized weights (every
    /// rank propagates with them) and, on rank 0, the encoded tensors and reports.
    #[allow(clippy::too_many_arguments)]
    fn solve_group_across_ranks(
        &self,
        blk: &mut dyn Block,
        linears: &[&str],
        h: Option<&Hessian>,
        cross: Option<&Cross>,
        i: usize,
        out: &mut Vec<QuantTensor>,
        reports: &mut Vec<TensorReport>,
        comm: &dyn crate::dist::Collective,
    ) -> Result<()> {
        use crate::dist::wire;
        let costs: Vec<f64> = linears
            .iter()
            .map(|l| blk.linear(l).map_or(0.0, |x| x.out as f64 * (x.inp as f64).powi(2) + (x.inp as f64).powi(3)))
            .collect();
        let owner = crate::dist::share_out(&costs, comm.size());
        let mut mine = Vec::new();
        for (k, &lname) in linears.iter().enumerate() {
            if owner[k] != comm.rank() {
                continue;
            }
            let name = blk.weight_name(lname);
            let entry = self.entry(&name)?;
            let importance = self.importance(&name, h, &[]);
            let lin = blk.linear(lname).ok_or_else(|| Error::Other(format!("block {i} has no linear `{lname}`")))?;
            let shape = vec![lin.out, lin.inp];
            let target = asymmetric_target_of(entry, &name, &lin.w, &shape, h, cross)?;
            let w = target.as_deref().unwrap_or(&lin.w);
            let (rep, t, dq) = solve_entry(entry, &name, w, &shape, h, importance.as_deref(), Some(i), true)?;
            wire::put_u64(&mut mine, k as u64);
            wire::put_bytes(&mut mine, &serde_json::to_vec(&rep).map_err(|e| Error::Other(e.to_string()))?);
            let mut spill = Vec::new();
            t.write_spill(&mut spill);
            wire::put_bytes(&mut mine, &spill);
            wire::put_u64(&mut mine, dq.is_some() as u64);
            wire::put_f32s(&mut mine, dq.as_deref().unwrap_or(&[]));
        }
        let gathered = comm.gather(&mine)?;
        drop(mine);
        let all = comm.broadcast(gathered.map(|g| g.concat()).unwrap_or_default())?;
        let storage_of = |n: &str| self.plan.entry(n).map(|e| e.storage.clone());
        let bad = |m: String| Error::Other(format!("block {i}: a solved layer from another rank: {m}"));
        type Solved = (TensorReport, QuantTensor, Option<Vec<f32>>);
        let mut solved: Vec<Option<Solved>> = vec![None; linears.len()];
        let mut r = wire::Reader::new(&all);
        while !r.is_empty() {
            let k = r.u64().map_err(bad)? as usize;
            let rep: TensorReport = serde_json::from_slice(r.bytes().map_err(bad)?).map_err(|e| bad(e.to_string()))?;
            let spill = r.bytes().map_err(bad)?;
            let mut pos = 0;
            let t = QuantTensor::read_spill(spill, &mut pos, &storage_of)
                .map_err(bad)?
                .ok_or_else(|| bad("an empty tensor".into()))?;
            let has_dq = r.u64().map_err(bad)? != 0;
            let dq = r.f32s().map_err(bad)?;
            if k >= linears.len() || solved[k].is_some() {
                return Err(bad(format!("layer {k} out of place")));
            }
            solved[k] = Some((rep, t, has_dq.then_some(dq)));
        }
        for (k, &lname) in linears.iter().enumerate() {
            let (rep, t, dq) = solved[k].take().ok_or_else(|| bad(format!("layer `{lname}` missing")))?;
            if let Some(dq) = dq {
                let lin =
                    blk.linear_mut(lname).ok_or_else(|| Error::Other(format!("block {i} has no linear `{lname}`")))?;
                if dq.len() != lin.w.len() {
                    return Err(bad(format!("layer `{lname}` of the wrong size")));
                }
                lin.w = dq.into();
            }
            out.push(t);
            reports.push(rep);
        }
        Ok(())
    }
}

impl SolveCtx<'_> {
    /// [`SolveCtx::solve_group`] for a group of one layer whose rows are solved apart
    /// ([`rows_separable`]): each rank solves a contiguous share of the rows with the
    /// group's statistics, every rank receives every share (in row order, so the codes and
    /// values are the single-process ones bit for bit: GPTQ's arithmetic per row does not
    /// depend on the other rows), and each builds the whole tensor, its values and its report.
    #[allow(clippy::too_many_arguments)]
    fn solve_rows_across_ranks(
        &self,
        blk: &mut dyn Block,
        lname: &str,
        h: Option<&Hessian>,
        cross: Option<&Cross>,
        i: usize,
        out: &mut Vec<QuantTensor>,
        reports: &mut Vec<TensorReport>,
        comm: &dyn crate::dist::Collective,
    ) -> Result<()> {
        use crate::dist::wire;
        let t = Instant::now();
        let name = blk.weight_name(lname);
        let entry = self.entry(&name)?;
        let importance = self.importance(&name, h, &[]);
        let lin = blk.linear(lname).ok_or_else(|| Error::Other(format!("block {i} has no linear `{lname}`")))?;
        let (rows, cols) = (lin.out, lin.inp);
        let shape = vec![rows, cols];
        let target = asymmetric_target_of(entry, &name, &lin.w, &shape, h, cross)?;
        let w = target.as_deref().unwrap_or(&lin.w);
        if let Some(k) = formats::format::first_non_finite(w) {
            return Err(Error::Other(format!("tensor `{name}`: non-finite weight {} at index {k}", w[k])));
        }
        let (size, rank) = (comm.size(), comm.rank());
        let share = |r: usize| rows * r / size;
        let (r0, r1) = (share(rank), share(rank + 1));
        let method = method_of(entry, h);
        let fmt = entry.storage.target()?;
        let p = LayerProblem {
            name: &name,
            w: &w[r0 * cols..r1 * cols],
            rows: r1 - r0,
            cols,
            hessian: h,
            importance: importance.as_deref(),
        };
        let part = method.solve(&p, &fmt)?;
        let mut mine = Vec::new();
        let mut spill = Vec::new();
        QuantTensor { name: name.clone(), shape: vec![r1 - r0, cols], storage: entry.storage.clone(), data: part.data }
            .write_spill(&mut spill);
        wire::put_bytes(&mut mine, &spill);
        wire::put_f32s(&mut mine, &part.dequant);
        drop(spill);
        let gathered = comm.gather(&mine)?;
        drop(mine);
        let all = comm.broadcast(gathered.map(|g| g.concat()).unwrap_or_default())?;
        let bad = |m: String| Error::Other(format!("block {i}: rows of `{name}` from another rank: {m}"));
        let storage_of = |n: &str| self.plan.entry(n).map(|e| e.storage.clone());
        let mut r = wire::Reader::new(&all);
        let (mut parts, mut dq) = (Vec::with_capacity(size), Vec::with_capacity(rows * cols));
        for k in 0..size {
            let spill = r.bytes().map_err(bad)?;
            let t = QuantTensor::read_spill(spill, &mut 0, &storage_of)
                .map_err(bad)?
                .ok_or_else(|| bad("an empty tensor".into()))?;
            let values = r.f32s().map_err(bad)?;
            let n = share(k + 1) - share(k);
            if t.name != name || t.shape != [n, cols] || values.len() != n * cols {
                return Err(bad(format!("rank {k} sent another tensor or share")));
            }
            parts.push(t.data);
            dq.extend_from_slice(&values);
        }
        r.done().map_err(bad)?;
        let data = TensorData::concat_rows(parts).map_err(bad)?;
        let qt = QuantTensor { name: name.clone(), shape: shape.clone(), storage: entry.storage.clone(), data };
        let err = layer_error(w, &dq, rows, cols, h);
        let mut rep = new_report(entry, &name, &shape, Some(i));
        finish_report(&mut rep, &qt, &method, importance.is_some(), &err);
        rep.seconds = t.elapsed().as_secs_f64();
        blk.linear_mut(lname).ok_or_else(|| Error::Other(format!("block {i} has no linear `{lname}`")))?.w = dq.into();
        out.push(qt);
        reports.push(rep);
        Ok(())
    }
}

/// Whether every row of `entry`'s tensor is solved on its own, so that ranks can share a
/// layer's rows out: plain GPTQ or round-to-nearest (nothing kept apart, no low-rank term,
/// no nested codes) into a ggml type or a format with scales per row or finer, rounding to
/// nearest (no per-tensor scale or grid choice, no integer super-scales, no stochastic
/// rounding seeded by row).
fn rows_separable(entry: &PlanEntry) -> bool {
    use formats::format::{Choice, Granularity, Rounding};
    use formats::scale::ScaleStorage;
    let m = &entry.method;
    if entry.storage.is_float()
        || !matches!(m.name(), "gptq" | "rtn")
        || m.side_data().is_some()
        || m.nesting().is_some()
    {
        return false;
    }
    let Ok(f) = entry.storage.target() else { return false };
    f.ggml.is_some()
        || (matches!(f.granularity, Granularity::Channel | Granularity::Group(_))
            && matches!(f.scale, ScaleStorage::F32 | ScaleStorage::F16 | ScaleStorage::Bf16 | ScaleStorage::E8m0)
            && !(f.elements.len() > 1 && f.choice == Choice::PerTensor)
            && matches!(f.rounding, Rounding::Nearest))
}

/// Quantizes the model `inp.arch` reads as `inp.plan` says, block by block, and writes it
/// with `inp.exporter` to `opts.out`.
///
/// `events` hears of blocks as they finish, and of a resumed checkpoint.
///
/// A run that fails with an error removes its work directory (an error is not resumable:
/// the same input fails the same way); a killed run leaves it, and the same command resumes.
pub fn run(inp: &RunInputs, opts: &PipelineOptions, events: &dyn super::Events) -> Result<PipelineReport> {
    let r = run_checkpointed(inp, opts, events);
    if r.is_err() && crate::dist::is_root() {
        let work = partial_dir(&opts.out);
        if work.is_dir() {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    r
}

fn run_checkpointed(inp: &RunInputs, opts: &PipelineOptions, events: &dyn super::Events) -> Result<PipelineReport> {
    let started = Instant::now();
    let arch = inp.arch;
    let plan = inp.plan;
    let n_blocks = arch.n_blocks();
    let mut phases = PhaseTimes::default();

    let needs_h = plan.needs_hessian();
    let transform_stats = inp.transforms.iter().any(|t| t.needs_hessian());
    // A correcting transform (bias correction) needs each group's input in the quantized model.
    let corrects = inp.transforms.iter().any(|t| t.corrects());
    let static_act = inp.runtime.static_act();
    let calibrate = needs_h || transform_stats || static_act || corrects || opts.imatrix == ImatrixSource::Calibrate;
    // GPTQ sees the activations of the quantized groups; an imatrix those of the original.
    let sequential = needs_h || corrects;
    let file_imatrix = match &opts.imatrix {
        ImatrixSource::File(p) => Some(super::imatrix::read_imatrix(p)?),
        _ => None,
    };
    let sctx = SolveCtx { plan, opts, file_imatrix: file_imatrix.as_ref(), sequential };
    if !calibrate {
        if !crate::dist::is_root() {
            // Rank 0 reads, solves and writes everything; there is nothing to share out.
            return Ok(PipelineReport {
                tensors: Vec::new(),
                file_bytes: 0,
                calib_tokens: 0,
                phases: PhaseTimes::default(),
                resumed_blocks: 0,
                resumed_seconds: 0.0,
            });
        }
        return run_streaming(inp, opts, events, &sctx);
    }
    // Under MPI (crate::dist): rank 0 writes; every rank calibrates and propagates its own
    // batches. Checkpoints hold rank 0's activations only, so such runs do not resume.
    let comm = crate::dist::world();
    let root = comm.rank() == 0;
    let solo = comm.size() == 1;
    if !solo && opts.calib.weighting != crate::calib::TokenWeighting::Uniform && needs_h {
        return Err(Error::Other(format!(
            "--calib-weighting rsq: not supported across MPI ranks yet (its weights are normalised over every rank's tokens); run it in one process ({} ranks here)",
            comm.size()
        )));
    }

    let work = partial_dir(&opts.out);
    let transforms: Vec<String> = inp.transforms.iter().map(|t| format!("{t:?}")).collect();
    let ranks = if solo { String::new() } else { format!("|ranks={}", comm.size()) };
    let fingerprint = plan.fingerprint(
        inp.input,
        opts,
        &format!("{}|{}|{}{ranks}", inp.exporter.name(), transforms.join(";"), inp.runtime.to_json()),
    );
    let mut state = Checkpoint {
        fingerprint: fingerprint.clone(),
        next_block: 0,
        tensors: Vec::new(),
        seconds: 0.0,
        crc32: BTreeMap::new(),
        act_scales: BTreeMap::new(),
    };
    let mut resumed_blocks = 0;
    let mut damaged = None;
    if opts.resume && solo {
        if let Ok(text) = std::fs::read_to_string(work.join("state.json")) {
            match serde_json::from_str::<Checkpoint>(&text) {
                Ok(s) if s.fingerprint == fingerprint && s.next_block <= n_blocks => match s.damage(&work, calibrate) {
                    None => {
                        resumed_blocks = s.next_block;
                        state = s;
                    }
                    Some(why) => damaged = Some(why),
                },
                Ok(_) => {}
                Err(e) => damaged = Some(format!("state.json: {e}")),
            }
        }
    }
    let resumed_seconds = state.seconds;
    if resumed_blocks > 0 {
        events.notice(&format!(
            "resuming at block {} of {n_blocks}: blocks 0–{} come from the checkpoint in {} (an earlier run spent {:.1} s on them)",
            resumed_blocks + 1,
            resumed_blocks - 1,
            work.display(),
            resumed_seconds
        ));
    } else if let Some(why) = damaged {
        events.notice(&format!("{} holds a damaged checkpoint ({why}): starting afresh", work.display()));
    } else if opts.resume && root && work.join("state.json").exists() {
        events.notice(&format!(
            "{} holds a checkpoint of a different run (other input, plan or options): starting afresh",
            work.display()
        ));
    }
    if resumed_blocks == 0 && root {
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        }
        std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    }

    let t = Instant::now();
    let mut globals = arch.load_globals()?;
    for tr in inp.transforms {
        tr.on_globals(arch, &mut globals)?;
    }
    phases.load += t.elapsed().as_secs_f64();

    // Calibration activations: the residual stream entering the next block.
    let seq_len = opts.calib.len.max(1);
    let d = arch.d_model();
    let mut x: Vec<f32> = Vec::new();
    let mut calib_tokens = 0;
    if calibrate {
        let t = Instant::now();
        let mut tokens = calibration_windows(inp.tokenizer, &opts.calib_texts, &opts.calib)?;
        calib_tokens = tokens.len();
        if !solo {
            // This rank's batches only.
            let per_batch = opts.batch_seqs.max(1) * seq_len;
            let n_batches = tokens.len().div_ceil(per_batch);
            tokens = crate::dist::my_batches(n_batches, comm)
                .into_iter()
                .flat_map(|b| tokens[b * per_batch..((b + 1) * per_batch).min(tokens.len())].to_vec())
                .collect();
        }
        if resumed_blocks > 0 {
            let p = work.join("x.bin");
            x = bytes_f32(&std::fs::read(&p).map_err(|e| Error::io(&p, e))?);
            if x.len() != tokens.len() * d {
                return Err(Error::corrupt(p, "checkpointed activations have the wrong size"));
            }
        } else {
            x = arch.embed(&globals, &tokens, seq_len)?;
        }
        phases.load += t.elapsed().as_secs_f64();
    }
    let batch_len = opts.batch_seqs.max(1) * seq_len * d;
    // Rounds of every statistics reduction: each round folds one batch of each rank.
    let n_rounds = crate::dist::rounds(calib_tokens.div_ceil(opts.batch_seqs.max(1) * seq_len), comm);
    // This rank's batch of round j, if it has one.
    let local_batches = x.len().div_ceil(batch_len);
    // Asymmetric calibration: a second stream through the blocks with their float weights,
    // whose group inputs are the targets' (checkpointed beside `x`); bias correction against
    // the float model's means reads it too.
    let asym = sequential && (plan.has_asymmetric() || inp.transforms.iter().any(|t| t.needs_float_stream()));
    let mut xf: Vec<f32> = Vec::new();
    if asym {
        if resumed_blocks > 0 {
            let p = work.join("xf.bin");
            xf = bytes_f32(&std::fs::read(&p).map_err(|e| Error::io(&p, e))?);
            if xf.len() != x.len() {
                return Err(Error::corrupt(p, "checkpointed activations have the wrong size"));
            }
        } else {
            xf = x.clone();
        }
    }

    events.progress("blocks", resumed_blocks, n_blocks);
    let (mut last_checkpoint, mut last_checkpoint_cost) = (Instant::now(), 0f64);
    for i in resumed_blocks..n_blocks {
        let t = Instant::now();
        let mut blk = arch.load_block(i, seq_len)?;
        for tr in inp.transforms {
            tr.on_block(arch, i, &mut *blk)?;
        }
        phases.load += t.elapsed().as_secs_f64();
        let groups = blk.groups();
        let mut spill: Vec<QuantTensor> = Vec::new();
        let mut hs_seconds = 0f64;

        // Group transforms (SmoothQuant, AWQ) choose their scales on the float block, as
        // AutoAWQ does: every group's full input statistics in one pass, then each group is
        // rewritten in turn. A fold changes only its own group's input (its norm or producer
        // feeds nothing else), so the other groups' statistics stay valid; the solve below
        // then sees the rewritten block.
        if !inp.transforms.is_empty() {
            let t = Instant::now();
            let mut hs: Vec<Option<Hessian>> = vec![None; groups.len()];
            if calibrate && transform_stats {
                let widths = groups.iter().map(|grp| group_width(&*blk, grp.linears, i)).collect::<Result<Vec<_>>>()?;
                let mut acc: Vec<Reduce<Hessian>> =
                    widths.iter().map(|&w| Reduce::new(Hessian::new(w), comm)).collect();
                let mut xb_copy = Vec::new();
                for j in 0..n_rounds {
                    let mut parts: Vec<Option<HessianPart>> = vec![None; groups.len()];
                    if let Some(xb) = x.chunks(batch_len).nth(j) {
                        xb_copy.clear();
                        xb_copy.extend_from_slice(xb);
                        let mut st = BlockState { x: &mut xb_copy, seq_len, carry: Vec::new() };
                        for g in 0..groups.len() {
                            let hin = blk.group_input(g, &mut st);
                            let mut p = HessianPart::full(widths[g]);
                            add_seen(&mut p, &*blk, groups[g].linears, &hin, widths[g]);
                            parts[g] = Some(p);
                            blk.advance(g, &mut st, hin);
                        }
                    }
                    for (r, p) in acc.iter_mut().zip(parts) {
                        r.round(p)?;
                    }
                }
                hs = acc.into_iter().map(|r| r.finish().map(Some)).collect::<Result<Vec<_>>>()?;
            }
            transform_groups(inp, &sctx, &mut *blk, i, &mut hs)?;
            phases.calibrate += t.elapsed().as_secs_f64();
        }

        if calibrate && sequential {
            let n_batches = local_batches;
            let mut carries: Vec<Vec<f32>> = vec![Vec::new(); n_batches];
            let mut carries_f: Vec<Vec<f32>> = vec![Vec::new(); if asym { n_batches } else { 0 }];
            // The float weights of the block (after its transforms), for the float stream and
            // the corrections.
            // (A correction changes the biases: the float stream keeps the original ones.)
            let mut float_w: BTreeMap<&str, Weights> = BTreeMap::new();
            let mut float_b: BTreeMap<&str, Option<Vec<f32>>> = BTreeMap::new();
            if asym || corrects {
                for grp in groups.iter() {
                    for &l in grp.linears {
                        if let Some(lin) = blk.linear(l) {
                            float_w.insert(l, lin.w.clone());
                            float_b.insert(l, lin.b.clone());
                        }
                    }
                }
            }
            let token_w = match opts.calib.weighting {
                crate::calib::TokenWeighting::Uniform => None,
                crate::calib::TokenWeighting::AttnCon => {
                    let t = Instant::now();
                    let w = attention_weights(&mut *blk, &x, batch_len, seq_len, d, i)?;
                    phases.calibrate += t.elapsed().as_secs_f64();
                    Some(w)
                }
            };
            let rows_per_batch = batch_len / d;
            let batch_weights =
                |b: usize| token_w.as_deref().map(|w| &w[b * rows_per_batch..((b + 1) * rows_per_batch).min(w.len())]);
            for (g, grp) in groups.iter().enumerate() {
                let t = Instant::now();
                let width = group_width(&*blk, grp.linears, i)?;
                // Without a Hessian-based solver (round-to-nearest under a correcting
                // transform) the diagonal statistics and the moments are enough.
                let mut h = Reduce::new(if needs_h { Hessian::new(width) } else { Hessian::diagonal(width) }, comm);
                let mut inputs = Vec::with_capacity(n_batches);
                let mut chunks = x.chunks_mut(batch_len);
                for b in 0..n_rounds {
                    let mut part = None;
                    if let Some(xb) = chunks.next() {
                        let mut st = BlockState { x: xb, seq_len, carry: std::mem::take(&mut carries[b]) };
                        let hin = blk.group_input(g, &mut st);
                        carries[b] = st.carry;
                        let th = Instant::now();
                        let mut p = if needs_h { HessianPart::full(width) } else { HessianPart::diagonal(width) };
                        add_seen_weighted(&mut p, &*blk, grp.linears, &hin, width, batch_weights(b));
                        hs_seconds += th.elapsed().as_secs_f64();
                        inputs.push(hin);
                        part = Some(p);
                    }
                    h.round(part)?;
                }
                let h = h.finish()?;
                // The same inputs in the float stream, and the cross term against them.
                let mut cross = None;
                let mut inputs_f = Vec::new();
                if asym {
                    let mut c = Reduce::new(Cross::new(width), comm);
                    let mut chunks = xf.chunks_mut(batch_len);
                    for b in 0..n_rounds {
                        let mut part = None;
                        if let Some(xb) = chunks.next() {
                            let mut st = BlockState { x: xb, seq_len, carry: std::mem::take(&mut carries_f[b]) };
                            let hin = blk.group_input(g, &mut st);
                            carries_f[b] = st.carry;
                            let mut p = CrossPart::new(width);
                            add_cross(&mut p, &*blk, grp.linears, &hin, &inputs[b], width, batch_weights(b));
                            inputs_f.push(hin);
                            part = Some(p);
                        }
                        c.round(part)?;
                    }
                    cross = Some(c.finish()?);
                }
                phases.calibrate += t.elapsed().as_secs_f64();
                if static_act {
                    set_static_ranges(inp.runtime, &mut state.act_scales, &mut *blk, i, grp.linears, &h)?;
                }
                let t = Instant::now();
                sctx.solve_group(&mut *blk, grp.linears, Some(&h), cross.as_ref(), i, &mut spill, &mut state.tensors)?;
                for tr in inp.transforms.iter().filter(|t| t.corrects()) {
                    tr.after_group(&mut SolvedGroup {
                        block_index: i,
                        group: grp,
                        block: &mut *blk,
                        float_weights: &float_w,
                        hessian: &h,
                        cross: cross.as_ref(),
                    })?;
                }
                phases.solve += t.elapsed().as_secs_f64();
                let t = Instant::now();
                for (b, xb) in x.chunks_mut(batch_len).enumerate() {
                    let mut st = BlockState { x: xb, seq_len, carry: std::mem::take(&mut carries[b]) };
                    blk.advance(g, &mut st, std::mem::take(&mut inputs[b]));
                    carries[b] = st.carry;
                }
                if asym {
                    // The float stream runs the group with its float weights.
                    swap_weights(&mut *blk, grp.linears, &mut float_w, &mut float_b);
                    for (b, xb) in xf.chunks_mut(batch_len).enumerate() {
                        let mut st = BlockState { x: xb, seq_len, carry: std::mem::take(&mut carries_f[b]) };
                        blk.advance(g, &mut st, std::mem::take(&mut inputs_f[b]));
                        carries_f[b] = st.carry;
                    }
                    swap_weights(&mut *blk, grp.linears, &mut float_w, &mut float_b);
                }
                phases.propagate += t.elapsed().as_secs_f64();
            }
        } else {
            // Statistics of the original model (llama.cpp's imatrix meaning), propagated
            // through the original block in one pass; or no calibration at all.
            let mut hs: Vec<Option<Hessian>> = vec![None; groups.len()];
            if calibrate {
                let t = Instant::now();
                let widths = groups.iter().map(|grp| group_width(&*blk, grp.linears, i)).collect::<Result<Vec<_>>>()?;
                // No solver here needs a Hessian: the diagonal (the importance matrix) is enough.
                let mut acc: Vec<Reduce<Hessian>> =
                    widths.iter().map(|&w| Reduce::new(Hessian::diagonal(w), comm)).collect();
                let mut chunks = x.chunks_mut(batch_len);
                for _ in 0..n_rounds {
                    let mut parts: Vec<Option<HessianPart>> = vec![None; groups.len()];
                    if let Some(xb) = chunks.next() {
                        let mut st = BlockState { x: xb, seq_len, carry: Vec::new() };
                        for g in 0..groups.len() {
                            let hin = blk.group_input(g, &mut st);
                            let th = Instant::now();
                            let mut p = HessianPart::diagonal(widths[g]);
                            add_seen(&mut p, &*blk, groups[g].linears, &hin, widths[g]);
                            hs_seconds += th.elapsed().as_secs_f64();
                            parts[g] = Some(p);
                            blk.advance(g, &mut st, hin);
                        }
                    }
                    for (r, p) in acc.iter_mut().zip(parts) {
                        r.round(p)?;
                    }
                }
                hs = acc.into_iter().map(|r| r.finish().map(Some)).collect::<Result<Vec<_>>>()?;
                phases.calibrate += t.elapsed().as_secs_f64();
            }
            if static_act {
                for (g, grp) in groups.iter().enumerate() {
                    if let Some(h) = &hs[g] {
                        set_static_ranges(inp.runtime, &mut state.act_scales, &mut *blk, i, grp.linears, h)?;
                    }
                }
            }
            let t = Instant::now();
            for (g, grp) in groups.iter().enumerate() {
                sctx.solve_group(&mut *blk, grp.linears, hs[g].as_ref(), None, i, &mut spill, &mut state.tensors)?;
            }
            phases.solve += t.elapsed().as_secs_f64();
        }
        phases.hessian += hs_seconds;

        block_rest(&sctx, &*blk, i, &mut spill, &mut state.tensors)?;
        drop(blk);

        let t = Instant::now();
        if root {
            let crc = write_spill(&work.join(format!("blk.{i}.bin")), &spill)?;
            state.crc32.insert(format!("blk.{i}.bin"), crc);
        }
        // A checkpoint: the activations entering the next block and the state naming them.
        // Between two, the spills stay (their checksums go into the next one), and a kill
        // resumes from the last one written. The crash tests' hook below dies right after a
        // checkpoint: the block it names always writes one.
        let fault_here =
            std::env::var("QUANTSMITH_FAULT_AFTER_BLOCK").ok().and_then(|v| v.parse::<usize>().ok()) == Some(i);
        let since = last_checkpoint.elapsed().as_secs_f64();
        let first_or_last = i == resumed_blocks || i + 1 == n_blocks;
        if checkpoint_due(first_or_last || fault_here, since, last_checkpoint_cost, opts.checkpoint_every) {
            if calibrate && solo {
                let crc = write_atomic(&work.join("x.bin"), &crate::export::hf_dir::f32_le(&x))?;
                state.crc32.insert("x.bin".into(), crc);
            }
            if asym && solo {
                let crc = write_atomic(&work.join("xf.bin"), &crate::export::hf_dir::f32_le(&xf))?;
                state.crc32.insert("xf.bin".into(), crc);
            }
            state.next_block = i + 1;
            state.seconds = resumed_seconds + started.elapsed().as_secs_f64();
            if root {
                let json = serde_json::to_vec(&state).map_err(|e| Error::Other(e.to_string()))?;
                write_atomic(&work.join("state.json"), &json)?;
            }
            last_checkpoint_cost = t.elapsed().as_secs_f64();
            last_checkpoint = Instant::now();
        }
        phases.write += t.elapsed().as_secs_f64();
        events.progress("blocks", i + 1, n_blocks);
        // Fault injection for the crash tests: die here as a kill -9 would (no cleanup).
        if fault_here {
            std::process::abort();
        }
    }

    // The output head (or the tied embedding), with the statistics of the head's input.
    let t = Instant::now();
    let head = arch.head_weight(&globals);
    let mut head_stats = None;
    let mut head_cross = None;
    if calibrate && head.is_some() {
        let mut h = Reduce::new(if needs_h { Hessian::new(d) } else { Hessian::diagonal(d) }, comm);
        let mut c = Reduce::new(Cross::new(if asym { d } else { 0 }), comm);
        for b in 0..n_rounds {
            let (mut hp, mut cp) = (None, None);
            if let Some(xb) = x.chunks(batch_len).nth(b) {
                let normed = arch.head_input(&globals, xb);
                let mut p = if needs_h { HessianPart::full(d) } else { HessianPart::diagonal(d) };
                p.add(&normed, normed.len() / d);
                hp = Some(p);
                if asym {
                    let normed_f = arch.head_input(&globals, &xf[b * batch_len..(b * batch_len + xb.len())]);
                    let mut p = CrossPart::new(d);
                    p.add(&normed_f, &normed, normed.len() / d);
                    cp = Some(p);
                }
            }
            h.round(hp)?;
            if asym {
                c.round(cp)?;
            }
        }
        head_stats = Some(h.finish()?);
        head_cross = if asym { Some(c.finish()?) } else { None };
    }
    phases.calibrate += t.elapsed().as_secs_f64();
    drop(x);
    drop(xf);
    if !root {
        // Rank 0 solves the globals and writes; this rank's part is done.
        return Ok(PipelineReport {
            tensors: state.tensors,
            file_bytes: 0,
            calib_tokens,
            phases,
            resumed_blocks: 0,
            resumed_seconds: 0.0,
        });
    }

    let t = Instant::now();
    let tail = solve_globals(
        &sctx,
        arch,
        globals,
        head.as_deref(),
        head_stats.as_ref(),
        head_cross.as_ref(),
        &mut state.tensors,
    )?;
    phases.solve += t.elapsed().as_secs_f64();

    // Export in the checkpoint's tensor order, block spills read lazily one at a time.
    let t = Instant::now();
    let order = output_order(arch, plan, &tail);
    let mut blocks = (0..n_blocks).map(|k| read_spill(&work.join(format!("blk.{k}.bin")), plan));
    let file_bytes = export(inp, opts, &order, tail, &mut blocks, &state.act_scales)?;
    let ordered = order_reports(&order, std::mem::take(&mut state.tensors));
    phases.write += t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    Ok(PipelineReport { tensors: ordered, file_bytes, calib_tokens, phases, resumed_blocks, resumed_seconds })
}

/// The rest of a solved block (norms, biases), from memory: a transform may have rewritten
/// them.
fn block_rest(
    sctx: &SolveCtx,
    blk: &dyn Block,
    i: usize,
    spill: &mut Vec<QuantTensor>,
    reports: &mut Vec<TensorReport>,
) -> Result<()> {
    let solved: std::collections::HashSet<String> = spill.iter().map(|t| t.name.clone()).collect();
    for (name, shape, values) in blk.tensors() {
        if solved.contains(&name) {
            continue;
        }
        let entry = sctx.entry(&name)?;
        let (rep, t, _) = solve_entry(entry, &name, values, &shape, None, None, Some(i), false)?;
        spill.push(t);
        reports.push(rep);
    }
    Ok(())
}

/// Solves the tensors outside the blocks: the embedding, the final norm, the output head (or
/// the tied embedding, with the statistics of the head's input when the run has them).
fn solve_globals(
    sctx: &SolveCtx,
    arch: &dyn Arch,
    mut globals: crate::arch::Globals,
    head: Option<&str>,
    head_stats: Option<&Hessian>,
    head_cross: Option<&Cross>,
    reports: &mut Vec<TensorReport>,
) -> Result<BTreeMap<String, QuantTensor>> {
    let mut tail: BTreeMap<String, QuantTensor> = BTreeMap::new();
    let tied = arch.head_tied(&globals);
    let names: Vec<String> = globals.tensors.keys().cloned().collect();
    for name in names {
        let (shape, values) = globals.tensors.remove(&name).expect("listed");
        let entry = sctx.entry(&name)?;
        let is_head = head == Some(name.as_str());
        let h = if is_head { head_stats } else { None };
        // A separate embedding is a lookup table: no input statistics apply.
        let importance = if is_head { sctx.importance(&name, h, &["output.weight"]) } else { None };
        // A tied head is also the embedding table: it keeps its own target.
        let cross = if is_head && !tied { head_cross } else { None };
        let target = asymmetric_target_of(entry, &name, &values, &shape, h, cross)?;
        let w = target.as_deref().unwrap_or(&values);
        let (mut rep, qt, _) = solve_entry(entry, &name, w, &shape, h, importance.as_deref(), None, false)?;
        if is_head && tied {
            let tied_note = if h.is_some() {
                "tied to the output head: quantized once, with the statistics of the head's input"
            } else {
                "tied to the output head: quantized once"
            };
            // The solver's own note (kept weights, a low-rank term) stays.
            rep.note = Some(match rep.note.take() {
                Some(n) => format!("{tied_note}; {n}"),
                None => tied_note.to_string(),
            });
        }
        reports.push(rep);
        tail.insert(name, qt);
    }
    Ok(tail)
}

/// The output's tensor order: the architecture's, with tensors a transform added to the
/// blocks (a corrected bias) after their weight and others (an untied head) after the
/// architecture's own.
fn output_order(arch: &dyn Arch, plan: &Plan, tail: &BTreeMap<String, QuantTensor>) -> Vec<String> {
    let mut order = arch.tensor_names();
    for e in &plan.entries {
        if order.contains(&e.name) || tail.contains_key(&e.name) {
            continue;
        }
        let weight = e.name.strip_suffix(".bias").map(|b| format!("{b}.weight"));
        match weight.and_then(|w| order.iter().position(|n| *n == w)) {
            Some(k) => order.insert(k + 1, e.name.clone()),
            None => order.push(e.name.clone()),
        }
    }
    order.extend(tail.keys().filter(|n| !order.contains(n)).cloned().collect::<Vec<_>>());
    order
}

/// The tensors' reports in output order.
fn order_reports(order: &[String], reports: Vec<TensorReport>) -> Vec<TensorReport> {
    let mut by_name: BTreeMap<String, TensorReport> = reports.into_iter().map(|r| (r.name.clone(), r)).collect();
    order.iter().filter_map(|n| by_name.remove(n)).collect()
}

/// Writes the output: the tensors in `order`, the globals from `tail`, each block's tensors
/// from `blocks` (block 0 first), asked for when the order first reaches one of them.
fn export(
    inp: &RunInputs,
    opts: &PipelineOptions,
    order: &[String],
    tail: BTreeMap<String, QuantTensor>,
    blocks: &mut dyn Iterator<Item = Result<Vec<QuantTensor>>>,
    act_scales: &BTreeMap<String, f32>,
) -> Result<u64> {
    let arch = inp.arch;
    let permute = arch.qk_interleaved() != (inp.exporter.name() == "gguf" && arch.gguf_qk_interleaved());
    let mut pending: BTreeMap<String, QuantTensor> = tail;
    let mut more = true;
    let mut names = order.iter();
    let mut next = move || -> Option<Result<QuantTensor>> {
        let Some(name) = names.next() else {
            // Blocks the order did not reach (a checkpoint claiming more blocks than it
            // holds) are still produced, after the last tensor: their error fails the write.
            while more {
                match blocks.next() {
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok(_)) => {}
                    None => more = false,
                }
            }
            return None;
        };
        let mut produce = || -> Result<QuantTensor> {
            while !pending.contains_key(name) && more {
                match blocks.next() {
                    Some(b) => {
                        for t in b? {
                            pending.insert(t.name.clone(), t);
                        }
                    }
                    None => more = false,
                }
            }
            let mut t = pending.remove(name).ok_or_else(|| Error::Tensor {
                path: inp.input.to_path_buf(),
                tensor: name.clone(),
                msg: "not produced by the pipeline (unexpected tensor for this architecture)".into(),
            })?;
            if permute {
                if let Some(heads) = arch.rope_heads(name) {
                    let p = crate::export::tensor::interleave_perm(t.shape[0], heads)?;
                    let p = if arch.qk_interleaved() { crate::export::tensor::invert(&p) } else { p };
                    t.permute_rows(&p)?;
                }
            }
            Ok(t)
        };
        Some(produce())
    };
    let mut iter = std::iter::from_fn(&mut next);
    let export_with_ranges;
    let export = if act_scales.is_empty() {
        inp.export
    } else {
        // The calibrated static ranges join the runtime recorded in config.json.
        let mut e = inp.export.clone();
        let mut rt = inp.runtime.clone();
        rt.act_scales = act_scales.clone();
        if let Some(o) = e.hf_config.as_object_mut() {
            o.insert(crate::arch::runtime::RUNTIME_KEY.into(), rt.to_json());
        }
        export_with_ranges = e;
        &export_with_ranges
    };
    // GGUF writes each tensor's data straight to its place when it knows every tensor's name,
    // shape and type beforehand.
    let planned: Option<Vec<crate::export::PlannedTensor>> = order
        .iter()
        .map(|n| {
            let e = inp.plan.entry(n)?;
            Some(crate::export::PlannedTensor { name: n.clone(), shape: e.shape.clone(), storage: e.storage.clone() })
        })
        .collect();
    inp.exporter.write_planned(&opts.out, export, planned.as_deref(), &mut iter)
}

/// A run without calibration (round-to-nearest, an importance file, rotations): nothing
/// depends on the blocks before, so each block is read, solved and written when the output
/// reaches it. No checkpoint: the output is the only thing written, and memory holds one
/// block.
fn run_streaming(
    inp: &RunInputs,
    opts: &PipelineOptions,
    events: &dyn super::Events,
    sctx: &SolveCtx,
) -> Result<PipelineReport> {
    let arch = inp.arch;
    let n_blocks = arch.n_blocks();
    let seq_len = opts.calib.len.max(1);
    let mut phases = PhaseTimes::default();
    let work = partial_dir(&opts.out);
    if work.exists() {
        if opts.resume && work.join("state.json").exists() {
            events.notice(&format!(
                "{} holds a checkpoint of a different run (other input, plan or options): removed",
                work.display()
            ));
        }
        std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    }
    let t = Instant::now();
    let mut globals = arch.load_globals()?;
    for tr in inp.transforms {
        tr.on_globals(arch, &mut globals)?;
    }
    let head = arch.head_weight(&globals);
    phases.load += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut reports = Vec::new();
    let tail = solve_globals(sctx, arch, globals, head.as_deref(), None, None, &mut reports)?;
    phases.solve += t.elapsed().as_secs_f64();

    let order = output_order(arch, inp.plan, &tail);
    let t = Instant::now();
    let mut block_seconds = 0f64;
    events.progress("blocks", 0, n_blocks);
    let file_bytes = {
        let mut blocks = (0..n_blocks).map(|i| -> Result<Vec<QuantTensor>> {
            let tb = Instant::now();
            let mut blk = arch.load_block(i, seq_len)?;
            for tr in inp.transforms {
                tr.on_block(arch, i, &mut *blk)?;
            }
            let groups = blk.groups();
            transform_groups(inp, sctx, &mut *blk, i, &mut vec![None; groups.len()])?;
            let mut out = Vec::new();
            for grp in groups.iter() {
                sctx.solve_group(&mut *blk, grp.linears, None, None, i, &mut out, &mut reports)?;
            }
            block_rest(sctx, &*blk, i, &mut out, &mut reports)?;
            block_seconds += tb.elapsed().as_secs_f64();
            events.progress("blocks", i + 1, n_blocks);
            Ok(out)
        });
        export(inp, opts, &order, tail, &mut blocks, &BTreeMap::new())?
    };
    // Reading and solving the blocks happened inside the write.
    phases.solve += block_seconds;
    phases.write += (t.elapsed().as_secs_f64() - block_seconds).max(0.0);
    Ok(PipelineReport {
        tensors: order_reports(&order, reports),
        file_bytes,
        calib_tokens: 0,
        phases,
        resumed_blocks: 0,
        resumed_seconds: 0.0,
    })
}

/// Records the calibrated range (max |x| over the calibration tokens, after any online rotation)
/// of a group's input as the static activation range of each of its linears, and installs
/// the quantizing hook, so the solve's propagation runs quantized activations.
fn set_static_ranges(
    rt: &crate::arch::runtime::Runtime,
    ranges: &mut BTreeMap<String, f32>,
    blk: &mut dyn Block,
    i: usize,
    linears: &[&str],
    h: &Hessian,
) -> Result<()> {
    let m = h.max_abs.iter().fold(0f32, |m, &v| m.max(v));
    for l in linears {
        ranges.insert(format!("blk.{i}.{l}"), m);
    }
    let mut rt = rt.clone();
    rt.act_scales = ranges.clone();
    for l in linears {
        let lin = blk.linear_mut(l).ok_or_else(|| Error::Other(format!("block {i} has no linear `{l}`")))?;
        lin.input_hook = rt.input_hook(i, l, lin.inp)?;
    }
    Ok(())
}

/// Adds a group's input to its statistics as its linears see it: through their input hook
/// (an online rotation, activation quantization) when they have one.
fn add_seen(h: &mut HessianPart, blk: &dyn Block, linears: &[&str], x: &[f32], width: usize) {
    add_seen_weighted(h, blk, linears, x, width, None)
}

/// [`add_seen`] with each token's row counted `weights[t]` times (rows scaled by √w).
fn add_seen_weighted(
    h: &mut HessianPart,
    blk: &dyn Block,
    linears: &[&str],
    x: &[f32],
    width: usize,
    weights: Option<&[f32]>,
) {
    let hook = linears.first().and_then(|l| blk.linear(l)).and_then(|l| l.input_hook.clone());
    if hook.is_none() && weights.is_none() {
        return h.add(x, x.len() / width);
    }
    let mut seen = x.to_vec();
    if let Some(hook) = hook {
        hook(&mut seen);
    }
    if let Some(w) = weights {
        scale_rows(&mut seen, width, w);
    }
    h.add(&seen, seen.len() / width);
}

fn scale_rows(x: &mut [f32], width: usize, w: &[f32]) {
    for (row, &wt) in x.chunks_exact_mut(width).zip(w) {
        let s = wt.sqrt();
        row.iter_mut().for_each(|v| *v *= s);
    }
}

/// RSQ's token importance for one block: the attention each calibration token receives in
/// it (summed over queries and heads, on the block before its solve), over its mean, clipped
/// to [1/20, 20] and brought back to mean 1.
fn attention_weights(
    blk: &mut dyn Block,
    x: &[f32],
    batch_len: usize,
    seq_len: usize,
    d: usize,
    i: usize,
) -> Result<Vec<f32>> {
    let rows = x.len() / d;
    let mut scores: Vec<f64> = Vec::with_capacity(rows);
    let mut copy = Vec::new();
    let groups = blk.groups().len();
    for xb in x.chunks(batch_len) {
        let probe: crate::arch::layers::AttnProbe =
            std::sync::Arc::new(std::sync::Mutex::new(vec![0f64; xb.len() / d]));
        if !blk.set_attention_probe(Some(probe.clone())) {
            return Err(Error::Other(format!(
                "block {i}: --calib-weighting rsq weights tokens by the attention they receive, which this architecture's blocks do not report (Llama-family decoders do)"
            )));
        }
        copy.clear();
        copy.extend_from_slice(xb);
        let mut st = BlockState { x: &mut copy, seq_len, carry: Vec::new() };
        // Run the block's groups only until its attention has run.
        for g in 0..groups {
            let hin = blk.group_input(g, &mut st);
            blk.advance(g, &mut st, hin);
            if probe.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|v| *v > 0.0) {
                break;
            }
        }
        blk.set_attention_probe(None);
        scores.extend(probe.lock().unwrap_or_else(|e| e.into_inner()).iter());
    }
    let mean = scores.iter().sum::<f64>() / rows.max(1) as f64;
    if !(mean > 0.0 && mean.is_finite()) {
        return Ok(vec![1.0; rows]);
    }
    let clipped: Vec<f64> = scores.iter().map(|s| (s / mean).clamp(0.05, 20.0)).collect();
    let m2 = clipped.iter().sum::<f64>() / rows.max(1) as f64;
    Ok(clipped.iter().map(|w| (w / m2) as f32).collect())
}

/// Adds a group's input in the float and the quantized stream to the cross term, both as the
/// linears see them (through their input hook).
fn add_cross(
    c: &mut CrossPart,
    blk: &dyn Block,
    linears: &[&str],
    xf: &[f32],
    xq: &[f32],
    width: usize,
    weights: Option<&[f32]>,
) {
    let hook = linears.first().and_then(|l| blk.linear(l)).and_then(|l| l.input_hook.clone());
    if hook.is_none() && weights.is_none() {
        return c.add(xf, xq, xq.len() / width);
    }
    let (mut f, mut q) = (xf.to_vec(), xq.to_vec());
    if let Some(hook) = hook {
        hook(&mut f);
        hook(&mut q);
    }
    if let Some(w) = weights {
        scale_rows(&mut f, width, w);
        scale_rows(&mut q, width, w);
    }
    c.add(&f, &q, q.len() / width);
}

/// Exchanges the weights and biases of a group's linears with those kept in `weights` and
/// `biases`.
fn swap_weights(
    blk: &mut dyn Block,
    linears: &[&str],
    weights: &mut BTreeMap<&str, Weights>,
    biases: &mut BTreeMap<&str, Option<Vec<f32>>>,
) {
    for &l in linears {
        if let Some(lin) = blk.linear_mut(l) {
            if let Some(w) = weights.get_mut(l) {
                std::mem::swap(&mut lin.w, w);
            }
            if let Some(b) = biases.get_mut(l) {
                std::mem::swap(&mut lin.b, b);
            }
        }
    }
}

/// The weights an asymmetric solver fits ([`crate::solve::gptq::asymmetric_target`]), when the
/// entry's solver is one and the cross term was collected; `None` means the weights as they are.
fn asymmetric_target_of(
    entry: &PlanEntry,
    name: &str,
    w: &[f32],
    shape: &[usize],
    h: Option<&Hessian>,
    cross: Option<&Cross>,
) -> Result<Option<Vec<f32>>> {
    let (Some(h), Some(c)) = (h, cross) else { return Ok(None) };
    if entry.storage.is_float() || !entry.method.asymmetric() || c.is_zero() || !h.is_full() {
        return Ok(None);
    }
    let (rows, cols) = matrix_of(shape);
    let damp = crate::solve::gptq::GptqOptions::default().damp;
    crate::solve::gptq::asymmetric_target(name, w, rows, cols, h, &c.mean(), damp).map(Some)
}

/// Lets the transforms rewrite each group of block `i`, with the group's statistics in `hs`
/// where the run collected them.
fn transform_groups(
    inp: &RunInputs,
    sctx: &SolveCtx,
    blk: &mut dyn Block,
    i: usize,
    hs: &mut [Option<Hessian>],
) -> Result<()> {
    let groups = blk.groups();
    for (g, grp) in groups.iter().enumerate() {
        let formats = sctx.formats(&*blk, grp.linears)?;
        let mut ctx = GroupCtx {
            block_index: i,
            group_index: g,
            group: grp,
            block: &mut *blk,
            hessian: hs[g].as_mut(),
            formats,
            online_rotated: grp.linears.iter().any(|l| inp.runtime.online_hadamard.iter().any(|o| o == l)),
        };
        apply_transforms(inp.transforms, &mut ctx)?;
    }
    Ok(())
}

/// Runs the transforms, in order, on one group.
fn apply_transforms(transforms: &[Box<dyn Transform>], ctx: &mut GroupCtx) -> Result<()> {
    for t in transforms {
        t.on_group(ctx)?;
    }
    Ok(())
}

/// The input width of a group's linears (they share one input).
fn group_width(blk: &dyn Block, linears: &[&str], i: usize) -> Result<usize> {
    linears
        .first()
        .and_then(|l| blk.linear(l))
        .map(|l| l.inp)
        .ok_or_else(|| Error::Other(format!("block {i}: a linear group names no linear the block has")))
}

/// Quantizes one tensor as its plan entry says. Returns the report, the tensor for the
/// exporter and, for solved tensors, the dequantized weights.
///
/// `keep_dequant`: whether the caller computes with the quantized weights afterwards (the
/// sequential pipeline propagates through them). Without it, round-to-nearest measures its
/// error as it encodes and no dequantized copy of the matrix is made.
#[allow(clippy::too_many_arguments)]
pub fn solve_entry(
    entry: &PlanEntry,
    name: &str,
    w: &[f32],
    shape: &[usize],
    h: Option<&Hessian>,
    importance: Option<&[f32]>,
    block: Option<usize>,
    keep_dequant: bool,
) -> Result<(TensorReport, QuantTensor, Option<Vec<f32>>)> {
    let non_finite = |w: &[f32]| match formats::format::first_non_finite(w) {
        Some(i) => Err(Error::Other(format!("tensor `{name}`: non-finite weight {} at index {i}", w[i]))),
        None => Ok(()),
    };
    let t = Instant::now();
    let (rows, cols) = matrix_of(shape);
    let mut rep = new_report(entry, name, shape, block);
    let storage = entry.storage.clone();
    if storage.is_float() {
        non_finite(w)?;
        let qt = QuantTensor { name: name.into(), shape: shape.to_vec(), storage, data: TensorData::Float(w.to_vec()) };
        rep.bytes = qt.stored_bytes();
        rep.bits_per_weight = 8.0 * rep.bytes as f64 / (rows * cols).max(1) as f64;
        rep.seconds = t.elapsed().as_secs_f64();
        return Ok((rep, qt, None));
    }
    let fmt = storage.target()?;
    let p = LayerProblem { name, w, rows, cols, hessian: h, importance };
    let method = &method_of(entry, h);
    // Plain round-to-nearest takes the format's streaming encoder (a nested set has its own).
    let plain_rtn = method.name() == "rtn" && method.nesting().is_none();
    // The streaming encoders refuse non-finite input themselves, in the pass that encodes it
    // (same message shape: the tensor, the value, its index); the solvers are checked here.
    let (data, err, dequant) = if !keep_dequant && plain_rtn && h.is_none_or(|h| !h.is_full()) {
        let (data, sums) = crate::solve::target::rtn_measured(&fmt, name, w, rows, cols, importance)?;
        (data, LayerError { sqnr_db: sums.sqnr_db(), output_err: None }, None)
    } else {
        non_finite(w)?;
        let enc = method.solve(&p, &fmt)?;
        let err = layer_error(w, &enc.dequant, rows, cols, h);
        (enc.data, err, Some(enc.dequant))
    };
    let qt = QuantTensor { name: name.into(), shape: shape.to_vec(), storage, data };
    finish_report(&mut rep, &qt, method, importance.is_some(), &err);
    rep.seconds = t.elapsed().as_secs_f64();
    Ok((rep, qt, dequant))
}

/// A tensor's report before its solve: a copy, nothing measured.
fn new_report(entry: &PlanEntry, name: &str, shape: &[usize], block: Option<usize>) -> TensorReport {
    TensorReport {
        name: name.to_string(),
        shape: shape.to_vec(),
        format: entry.storage.name(),
        solver: "copy".into(),
        bytes: 0,
        bits_per_weight: 0.0,
        sqnr_db: None,
        output_err: None,
        seconds: 0.0,
        block,
        note: None,
    }
}

/// The solver that runs for `entry`: GPTQ without statistics cannot run (1-D tensors, a
/// separate embedding) and rounds instead; a nested code set is rounded for all its
/// precisions at once, still nested.
fn method_of(entry: &PlanEntry, h: Option<&Hessian>) -> crate::solve::Method {
    if !(entry.method.needs_hessian() && h.is_none()) {
        return entry.method.clone();
    }
    match entry.method.nesting() {
        Some(n) => std::sync::Arc::new(crate::solve::nested::NestedRtn { nesting: n.clone() }),
        None => std::sync::Arc::new(crate::solve::rtn::Rtn),
    }
}

/// The report of a solved tensor `qt` (the fields [`solve_entry`] starts it with filled in):
/// the solver, notes on what is stored beside the codes, bytes and the error.
fn finish_report(
    rep: &mut TensorReport,
    qt: &QuantTensor,
    method: &crate::solve::Method,
    with_importance: bool,
    err: &LayerError,
) {
    let (rows, cols) = matrix_of(&qt.shape);
    rep.solver = method.spec() + if with_importance && method.name() == "rtn" { "+imatrix" } else { "" };
    let mut notes = Vec::new();
    if qt.kept_weights() > 0 {
        notes.push(format!(
            "{} weights ({:.2} %) kept apart in f16, {} bytes of sparse table counted",
            qt.kept_weights(),
            100.0 * qt.kept_weights() as f64 / (rows * cols) as f64,
            crate::export::tensor::SPARSE_ENTRY_BYTES * qt.kept_weights()
        ));
    }
    if let Some((rank, kind, bytes)) = qt.low_rank() {
        notes.push(format!(
            "rank-{rank} {kind} correction, {bytes} bytes ({:.2} bits per weight) counted",
            8.0 * bytes as f64 / (rows * cols) as f64
        ));
    }
    if !notes.is_empty() {
        rep.note = Some(notes.join("; "));
    }
    rep.bytes = qt.stored_bytes();
    rep.bits_per_weight = 8.0 * rep.bytes as f64 / (rows * cols) as f64;
    rep.sqnr_db = Some(err.sqnr_db);
    rep.output_err = err.output_err;
}

#[cfg(test)]
mod tests {
    use super::checkpoint_due;

    #[test]
    fn checkpoints_are_spaced_by_their_cost_or_the_option() {
        // The first, last and fault-hook blocks always write one.
        assert!(checkpoint_due(true, 0.0, 10.0, Some(3600.0)));
        // By default 50 times the last one's cost apart.
        assert!(!checkpoint_due(false, 19.9, 0.4, None));
        assert!(checkpoint_due(false, 20.0, 0.4, None));
        // The option overrides it: 0 is after every block.
        assert!(checkpoint_due(false, 0.0, 0.4, Some(0.0)));
        assert!(!checkpoint_due(false, 100.0, 0.0, Some(3600.0)));
        assert!(checkpoint_due(false, 3600.0, 0.0, Some(3600.0)));
    }
}
