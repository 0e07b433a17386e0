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
    /// Output file size.
    pub file_bytes: u64,
    /// Bits per weight over the whole output (file or directory).
    pub bits_per_weight: f64,
    /// Output layout (`gguf`, `compressed-tensors`, `gptq`, `fake-quant`).
    pub layout: String,
    /// Bits per weight of the tensors as their formats store them (codes, scales, zero
    /// points): what a packed layout holds, and what a fake-quant directory stands for.
    pub format_bits_per_weight: f64,
    /// Wall-clock seconds of the whole run (evaluation excluded).
    pub seconds: f64,
    /// Seconds by phase.
    pub phases: PhaseTimes,
    /// Peak anonymous resident memory (RssAnon: not backed by the model file), MiB.
    pub peak_rss_anon_mib: f64,
    /// Blocks taken from a checkpoint.
    pub resumed_blocks: usize,
    /// Every tensor.
    pub tensors: Vec<TensorReport>,
    /// Base-vs-quantized evaluation, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<DecoderReport>,
    /// Text the evaluation ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_text: Option<PathBuf>,
}

impl QuantizeReport {
    /// The markdown report.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# quantsmith report: {}\n", self.output.display());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| input | `{}` |", self.input.display());
        let _ = writeln!(s, "| preset | {} (file type {}) |", self.preset, self.file_type);
        let _ = writeln!(s, "| solver | {} |", self.method);
        let _ = writeln!(s, "| importance | {} |", self.imatrix);
        let _ = writeln!(s, "| calibration tokens | {} |", self.calib_tokens);
        let _ =
            writeln!(s, "| file size | {} bytes ({:.2} MiB) |", self.file_bytes, self.file_bytes as f64 / 1048576.0);
        let _ = writeln!(s, "| layout | {} |", self.layout);
        let _ = writeln!(
            s,
            "| bits per weight | {:.3} (the formats alone: {:.3}) |",
            self.bits_per_weight, self.format_bits_per_weight
        );
        let _ = writeln!(s, "| time | {:.1} s |", self.seconds);
        let _ = writeln!(s, "| peak anonymous memory | {:.0} MiB |", self.peak_rss_anon_mib);
        let p = &self.phases;
        let _ = writeln!(
            s,
            "| phases | load {:.1} s, calibrate {:.1} s (Hessians {:.1} s), solve {:.1} s, propagate {:.1} s, write {:.1} s |",
            p.load, p.calibrate, p.hessian, p.solve, p.propagate, p.write
        );
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
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(s, "\n## Error by layer\n\n![per-layer error]({svg})");
        }
        let _ = writeln!(s, "\n## Tensors\n");
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

    /// Writes the markdown report and the SVG chart beside the output: `OUT.md`, `OUT.svg`.
    pub fn write_files(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let md = sibling(&self.output, "md");
        let svg = sibling(&self.output, "svg");
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
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
        let err = |e: String| Error::Other(format!("{}: drawing the chart: {e}", path.display()));
        {
            let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            let caption = if use_output {
                "relative output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) by block"
            } else {
                "relative weight error 10^(−SQNR/10) by block"
            };
            let mut chart = ChartBuilder::on(&root)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5f64..n_blocks - 0.5, (lo * 0.8..hi * 1.25).log_scale())
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("block")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_desc("error")
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(e.to_string()))?;
            root.present().map_err(|e| err(e.to_string()))?;
        }
        Ok(true)
    }
}

/// `out.gguf` → `out.EXT` (the extension replaced), beside it.
pub fn sibling(out: &Path, ext: &str) -> PathBuf {
    out.with_extension(ext)
}
