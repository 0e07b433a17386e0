//! The report of a quantization run: JSON (serde), a markdown file beside the output, and an
//! SVG chart of the per-layer error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::pipeline::{PhaseTimes, TensorReport};
use crate::eval::perplexity::DecoderReport;
use crate::{Error, Result};

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    /// Input model.
    pub input: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// Preset name.
    pub preset: String,
    /// llama.cpp file type written to `general.file_type`.
    pub file_type: u32,
    /// Default solver of the run.
    pub method: String,
    /// Importance source (`none`, `calibrated`, or the imatrix file).
    pub imatrix: String,
    /// Calibration tokens used.
    pub calib_tokens: usize,
    /// Weights in the model.
    pub n_params: usize,
    /// Output size: the whole file or directory, metadata and side files included.
    pub file_bytes: u64,
    /// Bits per weight over the whole output (`file_bytes`).
    pub bits_per_weight: f64,
    /// Output layout (`gguf`, `compressed-tensors`, `gptq`, `fake-quant`).
    pub layout: String,
    /// Bits per weight of the tensors as their formats store them (codes, scales, zero
    /// points): what a packed layout holds, and what a fake-quant directory stands for.
    pub format_bits_per_weight: f64,
    /// Wall-clock seconds of this run (evaluation excluded; a resumed run's earlier part is
    /// `resumed_seconds`).
    pub seconds: f64,
    /// Seconds by phase.
    pub phases: PhaseTimes,
    /// Peak anonymous resident memory (RssAnon: not backed by the model file), MiB.
    pub peak_rss_anon_mib: f64,
    /// Blocks taken from a checkpoint (0: the run started afresh).
    pub resumed_blocks: usize,
    /// Blocks in the model.
    pub n_blocks: usize,
    /// Seconds the earlier, interrupted run(s) spent on the resumed blocks (not in `seconds`
    /// nor in `phases`, which count this run only).
    pub resumed_seconds: f64,
    /// Worker threads.
    pub threads: usize,
    /// The input's tensor data, bytes (metadata excluded).
    pub input_bytes: u64,
    /// The input's own quantization when it was already quantized (types, bits per weight).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_quantization: Option<String>,
    /// Tensors whose preset type did not fit their rows and were written in another type.
    pub fallbacks: Vec<super::Fallback>,
    /// Every tensor.
    pub tensors: Vec<TensorReport>,
    /// Base-vs-quantized evaluation, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<DecoderReport>,
    /// A nested output's evaluation at each narrower width (`eval --slice`), same text and
    /// chunks as `eval`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eval_slices: Vec<SliceEval>,
    /// Text the evaluation ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_text: Option<PathBuf>,
    /// The size-budget plan, when the run had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<super::budget::BudgetReport>,
}

/// A nested code set read at fewer bits, evaluated.
#[derive(Clone, Debug, Serialize)]
pub struct SliceEval {
    /// Bits kept of the nested tensors' codes.
    pub bits: u32,
    /// Bits per weight of the model so read (nested tensors' codes at `bits`, their scales
    /// and zero points as stored; other tensors as stored).
    pub format_bits_per_weight: f64,
    /// The evaluation.
    pub eval: DecoderReport,
}

impl QuantizeReport {
    /// Bytes of the output's tensors as their formats store them.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes as u64).sum()
    }

    /// One line comparing the output with the input: sizes, bits per weight, the ratio of
    /// tensor bytes (like with like: both without metadata).
    pub fn size_line(&self) -> String {
        let ratio = self.tensor_bytes() as f64 / self.input_bytes.max(1) as f64;
        format!(
            "{:.2} MiB on disk; {:.3} bits per weight in the tensors ({:.3} counting the whole {}) against the input's {:.3}: {:.2}× the input's tensor bytes{}",
            self.file_bytes as f64 / 1048576.0,
            self.format_bits_per_weight,
            self.bits_per_weight,
            if self.layout == "gguf" { "file" } else { "directory" },
            8.0 * self.input_bytes as f64 / self.n_params.max(1) as f64,
            ratio,
            if ratio > 1.0 { " (larger: the input's types were smaller than these)" } else { "" }
        )
    }

    /// One line on where the time went; a resumed run says what the earlier run did.
    pub fn time_line(&self) -> String {
        let p = &self.phases;
        let mut s = format!(
            "{:.1} s with {} thread{} (load {:.1}, calibrate {:.1} [Hessians {:.1}], solve {:.1}, propagate {:.1}, write {:.1})",
            self.seconds,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            p.load,
            p.calibrate,
            p.hessian,
            p.solve,
            p.propagate,
            p.write
        );
        if self.resumed_blocks > 0 {
            let _ = write!(
                s,
                "; resumed at block {} of {}: an earlier run spent {:.1} s on blocks 0–{}",
                self.resumed_blocks + 1,
                self.n_blocks,
                self.resumed_seconds,
                self.resumed_blocks - 1
            );
        }
        s
    }

    /// The markdown report.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# quantsmith report: {}\n", self.output.display());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| input | `{}` |", self.input.display());
        if let Some(q) = &self.input_quantization {
            let _ = writeln!(s, "| input storage | already quantized: {q}; requantized (--allow-requantize) |");
        }
        let _ = writeln!(s, "| preset | {} (file type {}) |", self.preset, self.file_type);
        let _ = writeln!(s, "| solver | {} |", self.method);
        let _ = writeln!(s, "| importance | {} |", self.imatrix);
        let _ = writeln!(s, "| calibration tokens | {} |", self.calib_tokens);
        let _ = writeln!(s, "| layout | {} |", self.layout);
        let _ = writeln!(
            s,
            "| size | {} bytes ({:.2} MiB) in all; tensors {} bytes, {:.2}× the input's {} bytes |",
            self.file_bytes,
            self.file_bytes as f64 / 1048576.0,
            self.tensor_bytes(),
            self.tensor_bytes() as f64 / self.input_bytes.max(1) as f64,
            self.input_bytes
        );
        let _ = writeln!(
            s,
            "| bits per weight | {:.3} in the tensors (codes, scales, zero points: what `quantsmith inspect` reports); {:.3} counting the whole output, metadata included |",
            self.format_bits_per_weight, self.bits_per_weight
        );
        let _ = writeln!(s, "| time | {} |", self.time_line());
        let _ = writeln!(s, "| peak anonymous memory | {:.0} MiB |", self.peak_rss_anon_mib);
        if !self.fallbacks.is_empty() {
            let _ = writeln!(s, "\n## Type fallbacks\n");
            let _ = writeln!(
                s,
                "The preset's type did not fit these tensors' rows (a ggml block runs along a row), so a type of a smaller block was written, as llama-quantize does:\n"
            );
            for line in super::describe_fallbacks(&self.fallbacks) {
                let _ = writeln!(s, "- {line}");
            }
        }
        if let Some(p) = &self.plan {
            let _ = writeln!(s, "\n## Size budget\n");
            let units = if p.kld_units { "mean KLD" } else { "proxy units (no probes)" };
            if let Some(a) = &p.chosen {
                let _ = writeln!(
                    s,
                    "Budget {} bytes; planned {} bytes exactly ({:.4} bits per weight), {} written. Predicted error {:.6} ({units}){}.\n",
                    a.budget_bytes,
                    a.file_bytes,
                    a.bits_per_weight,
                    self.file_bytes,
                    a.predicted_kld,
                    self.eval.as_ref().and_then(|e| e.kld_mean).map(|k| format!("; measured mean KLD {k:.6}")).unwrap_or_default()
                );
                let mut counts: Vec<(&str, usize)> = Vec::new();
                for (_, f) in &a.choice {
                    match counts.iter_mut().find(|c| c.0 == f) {
                        Some(c) => c.1 += 1,
                        None => counts.push((f, 1)),
                    }
                }
                counts.sort_by(|a, b| b.1.cmp(&a.1));
                let list: Vec<String> = counts.iter().map(|(f, n)| format!("{f} ×{n}")).collect();
                let _ = writeln!(s, "Types chosen: {}.\n", list.join(", "));
            }
            let _ = writeln!(
                s,
                "Planning {:.1} s ({:.0} % of this run): sensitivity of every candidate on {} calibration tokens {:.1} s, probes on {} tokens {:.1} s, allocation {:.2} s.{}",
                p.seconds(),
                100.0 * p.seconds() / self.seconds.max(1e-9),
                p.calib_tokens,
                p.seconds_sensitivity,
                p.probe_tokens,
                p.seconds_probes,
                p.seconds_allocate,
                p.ranks
                    .as_ref()
                    .map(|r| format!(" Proxy vs measured KLD over {} probed tensors: Spearman {:.3}.", r.n, r.proxy))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                s,
                "\nThe prediction adds per-tensor errors measured one tensor at a time on the float model (cross terms neglected); the solver then quantizes sequentially, each layer on the inputs the quantized layers before it produce, which GPTQ partly compensates — compare the measured KLD, not the prediction."
            );
        }
        if let Some(e) = &self.eval {
            let _ = writeln!(s, "\n## Evaluation against the input model\n");
            if let Some(t) = &self.eval_text {
                let _ = writeln!(
                    s,
                    "Text `{}`, {} chunks of {} tokens, {} scored positions.\n",
                    t.display(),
                    e.chunks,
                    e.ctx,
                    e.tokens_scored
                );
            }
            let _ = writeln!(s, "| metric | value |\n|---|---|");
            let _ = writeln!(s, "| perplexity | {:.4} ± {:.4} |", e.ppl, e.ppl_stderr);
            if let Some(b) = e.base_ppl {
                let _ = writeln!(s, "| base perplexity | {b:.4} |");
            }
            if let (Some(k), Some(ks)) = (e.kld_mean, e.kld_stderr) {
                let _ = writeln!(s, "| mean KL-divergence | {k:.6} ± {ks:.6} |");
            }
            if let Some(t) = e.top1_agree {
                let _ = writeln!(s, "| top-1 agreement | {t:.4} |");
            }
            if let Some(r) = e.ppl_ratio {
                let _ = writeln!(s, "| perplexity ratio | {r:.5} |");
            }
            if !self.eval_slices.is_empty() {
                let _ = writeln!(s, "\nThe nested code set read at each width (`quantsmith eval OUT --slice BITS`):\n");
                let _ = writeln!(
                    s,
                    "| width | bits/weight (tensors) | perplexity | mean KL-divergence | top-1 agreement |"
                );
                let _ = writeln!(s, "|---|---|---|---|---|");
                let row = |s: &mut String, w: String, bpw: f64, e: &DecoderReport| {
                    let _ = writeln!(
                        s,
                        "| {w} | {bpw:.3} | {:.4} | {} | {} |",
                        e.ppl,
                        e.kld_mean.zip(e.kld_stderr).map(|(k, ks)| format!("{k:.6} ± {ks:.6}")).unwrap_or_default(),
                        e.top1_agree.map(|t| format!("{t:.4}")).unwrap_or_default()
                    );
                };
                row(&mut s, "as stored".into(), self.format_bits_per_weight, e);
                for sl in &self.eval_slices {
                    row(&mut s, format!("{} bits", sl.bits), sl.format_bits_per_weight, &sl.eval);
                }
            }
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(s, "\n## Error by layer\n\n![per-layer error]({svg})");
        }
        let _ = writeln!(s, "\n## Tensors\n");
        let _ = writeln!(s, "{}\n", LEGEND);
        let _ = writeln!(s, "| tensor | shape | type | solver | bits/weight | SQNR dB | output error | note |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for t in &self.tensors {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {:.3} | {} | {} | {} |",
                t.name,
                shape.join("×"),
                t.format,
                t.solver,
                t.bits_per_weight,
                t.sqnr_db.map(|v| format!("{v:.2}")).unwrap_or_default(),
                t.output_err.map(|v| format!("{v:.3e}")).unwrap_or_default(),
                t.note.clone().unwrap_or_default()
            );
        }
        s
    }

    /// Writes the markdown report and the SVG chart into `dir` (default: beside the output),
    /// named after the output: `OUT.md`, `OUT.svg`.
    pub fn write_files(&self, dir: Option<&Path>) -> Result<(PathBuf, Option<PathBuf>)> {
        let (md, svg) = match dir {
            Some(d) => {
                let name = report_name(&self.output);
                (d.join(format!("{name}.md")), d.join(format!("{name}.svg")))
            }
            None => (sibling(&self.output, "md"), sibling(&self.output, "svg")),
        };
        if let Some(d) = dir {
            if !d.is_dir() {
                return Err(Error::Other(format!("--report {}: not a directory", d.display())));
            }
        }
        let svg_written = self.write_svg(&svg)?;
        let svg_name = svg_written.then(|| svg.file_name().map(|n| n.to_string_lossy().into_owned())).flatten();
        let text = self.markdown(svg_name.as_deref());
        std::fs::write(&md, text).map_err(|e| Error::io(&md, e))?;
        Ok((md, svg_written.then_some(svg)))
    }

    /// Per-layer relative output error (or, without calibration, weight noise 10^(−SQNR/10))
    /// by block, one line per linear role, log scale. Returns false when there is nothing
    /// to plot.
    fn write_svg(&self, path: &Path) -> Result<bool> {
        use plotters::prelude::*;
        let roles = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
        let use_output = self.tensors.iter().any(|t| t.output_err.is_some());
        for r in roles {
            let pts: Vec<(f64, f64)> = self
                .tensors
                .iter()
                .filter(|t| t.name.contains(&format!(".{r}.")))
                .filter_map(|t| {
                    let v = if use_output { t.output_err? } else { 10f64.powf(-t.sqnr_db? / 10.0) };
                    Some((t.block? as f64, v.max(1e-12)))
                })
                .collect();
            if !pts.is_empty() {
                // File order is lexicographic (blk.1, blk.10, …): plot by block number.
                let mut pts = pts;
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                series.push((r, pts));
            }
        }
        if series.is_empty() {
            return Ok(false);
        }
        let n_blocks = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(0f64, f64::max) + 1.0;
        // Plotted as log10 on a linear axis: labels then exist however narrow the range is
        // (a log axis within one decade has no labelled points).
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1.log10()))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.08).max(0.05);
        let (lo, hi) = (lo - pad, hi + pad);
        let err = |e: String| Error::Other(format!("{}: drawing the chart: {e}", path.display()));
        {
            let root = SVGBackend::new(path, (980, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            // The legend has its own strip on the right, so it never covers the data.
            let (plot_area, legend_area) = root.split_horizontally(820);
            let caption = if use_output {
                "relative output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) by block (log scale)"
            } else {
                "relative weight error 10^(−SQNR/10) by block (log scale)"
            };
            let mut chart = ChartBuilder::on(&plot_area)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(72)
                .build_cartesian_2d(-0.5f64..n_blocks - 0.5, lo..hi)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("block")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_desc("error")
                .y_labels(8)
                .y_label_formatter(&|v| format!("{:.2e}", 10f64.powf(*v)))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().map(|&(x, y)| (x, y.log10())), color.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?;
                let y = 60 + 24 * i as i32;
                legend_area
                    .draw(&PathElement::new(vec![(8, y), (32, y)], color.stroke_width(3)))
                    .map_err(|e| err(e.to_string()))?;
                legend_area
                    .draw(&Text::new(name.to_string(), (38, y - 7), ("sans-serif", 14)))
                    .map_err(|e| err(e.to_string()))?;
            }
            root.present().map_err(|e| err(e.to_string()))?;
        }
        Ok(true)
    }
}

/// What the per-tensor columns mean.
pub const LEGEND: &str = "SQNR: the weights' signal-to-quantization-noise ratio, 10·log10(Σw² / Σ(w − q(w))²) in dB, higher is better. Output error: the layer's relative output error on the calibration inputs, tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with H = Σ x xᵀ, lower is better (only when the run calibrated). bits/weight: the tensor's stored bits (codes, scales, zero points) per weight.";

/// `out.gguf` → `out.EXT` beside it; a directory `out` → `out.EXT`.
pub fn sibling(out: &Path, ext: &str) -> PathBuf {
    out.with_file_name(format!("{}.{ext}", report_name(out)))
}

/// The name reports take after an output: a `.gguf` file's stem, a directory's whole name
/// (`int3.g64-lr8` gives `int3.g64-lr8.md`, not `int3.md`).
fn report_name(out: &Path) -> String {
    let is_gguf = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let name = if is_gguf { out.file_stem() } else { out.file_name() };
    name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_named_after_the_whole_output() {
        assert_eq!(sibling(Path::new("/o/m.Q4_K_M.gguf"), "md"), Path::new("/o/m.Q4_K_M.md"));
        assert_eq!(sibling(Path::new("/o/int3.g64-lr8"), "svg"), Path::new("/o/int3.g64-lr8.svg"));
        assert_eq!(sibling(Path::new("/o/fq"), "md"), Path::new("/o/fq.md"));
    }
}
