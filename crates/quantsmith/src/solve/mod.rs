//! Solvers: given a weight matrix, its calibration statistics and a target format, which
//! codes? One file per solver; targets (what a weight can be rounded to) in `target.rs`.

pub mod gptq;
pub mod lowrank;
pub mod nested;
pub mod quantease;
pub mod rtn;
pub mod target;

use crate::calib::Hessian;
use crate::Result;
pub use target::{Encoded, Grid, Target};

/// One linear layer to quantize: `w` is `[rows, cols]` = `[out_features, in_features]`.
pub struct LayerProblem<'a> {
    /// Tensor name (for errors and reports).
    pub name: &'a str,
    /// Weights, row-major.
    pub w: &'a [f32],
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Statistics of the layer's input, when calibrated.
    pub hessian: Option<&'a Hessian>,
    /// Per-input-column importance for block quantizers (llama.cpp's imatrix meaning).
    pub importance: Option<&'a [f32]>,
}

/// A solver: given a layer's weights, its calibration statistics and a target format, the
/// codes. Each solver is one file implementing this trait plus one line in [`solver`].
pub trait Solver: std::fmt::Debug + Send + Sync {
    /// Short name (`rtn`, `gptq`), as recipes and reports spell it.
    fn name(&self) -> &'static str;
    /// Whether the solver needs the layer's Hessian (and so calibration data).
    fn needs_hessian(&self) -> bool {
        false
    }
    /// The solver with its settings, as recipes spell it (`gptq:outliers=0.01`).
    fn spec(&self) -> String {
        self.name().to_string()
    }
    /// What it stores beside the format's codes, in words (`keeps 1 % of the weights apart in
    /// f16`, `adds rank-8 f16 factors`), or `None`: only some layouts have a place for it.
    fn side_data(&self) -> Option<String> {
        None
    }
    /// Whether it fits the float model's output (asymmetric calibration): the pipeline then
    /// runs a float stream beside the quantized one and solves for
    /// [`gptq::asymmetric_target`].
    fn asymmetric(&self) -> bool {
        false
    }
    /// Whether it can solve a `rows × cols` layer (checked when the run is planned, before any
    /// work); the error says why not.
    fn check_shape(&self, _rows: usize, _cols: usize) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The precisions its codes serve, for solvers writing one nested code set
    /// ([`nested`]); `None` for everything else.
    fn nesting(&self) -> Option<&nested::Nesting> {
        None
    }
    /// Whether it can solve into `target` (checked when the run is planned); the error says
    /// why not.
    fn check_target(&self, target: &Target) -> std::result::Result<(), String> {
        match self.nesting() {
            Some(n) => n.check_format(target),
            None => Ok(()),
        }
    }
    /// Quantizes one layer.
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded>;
}

/// A shared solver, as plans hold them.
pub type Method = std::sync::Arc<dyn Solver>;

/// The solvers by name, with settings after colons (`gptq:outliers=0.005`,
/// `quantease:sweeps=16:outliers=0.01`): the registry.
pub fn solver(spec: &str) -> Result<Method> {
    // Low-rank settings wrap whichever solver the rest of the spec names.
    let mut lr: Option<lowrank::LowRankOptions> = None;
    let mut lr_settings = Vec::new();
    let mut rest = Vec::new();
    for (i, p) in spec.split(':').enumerate() {
        if i > 0 && p.starts_with("lowrank") {
            lr_settings.push(p);
        } else {
            rest.push(p);
        }
    }
    if !lr_settings.is_empty() {
        let err = |m: String| crate::Error::Other(format!("solver `{spec}`: {m}"));
        let mut o = lowrank::LowRankOptions::default();
        let mut rank = None;
        for p in lr_settings {
            let (k, v) = p.split_once('=').ok_or_else(|| err(format!("setting `{p}` is not KEY=VALUE")))?;
            match k {
                "lowrank" => {
                    rank = Some(
                        v.parse::<usize>()
                            .ok()
                            .filter(|r| (1..=65536).contains(r))
                            .ok_or_else(|| err(format!("lowrank={v}: a rank from 1 to 65536")))?,
                    )
                }
                "lowrank-store" => {
                    o.int8 = match v {
                        "f16" => false,
                        "int8" => true,
                        _ => return Err(err(format!("lowrank-store={v}: f16 or int8"))),
                    }
                }
                "lowrank-whiten" => {
                    o.whiten = match v {
                        "yes" | "true" | "1" => Some(true),
                        "no" | "false" | "0" => Some(false),
                        _ => return Err(err(format!("lowrank-whiten={v}: yes or no"))),
                    }
                }
                "lowrank-order" => {
                    o.order = match v {
                        "residual" => lowrank::Order::Residual,
                        "absorb" => lowrank::Order::Absorb,
                        _ => return Err(err(format!("lowrank-order={v}: residual (LoRC) or absorb (SVDQuant)"))),
                    }
                }
                _ => {
                    return Err(err(format!(
                        "`{k}` is not a low-rank setting (lowrank, lowrank-store, lowrank-whiten, lowrank-order)"
                    )))
                }
            }
        }
        o.rank = rank.ok_or_else(|| err("low-rank settings without `lowrank=RANK`".into()))?;
        lr = Some(o);
    }
    let inner = plain_solver(spec, &rest.join(":"))?;
    Ok(match lr {
        Some(opts) => std::sync::Arc::new(lowrank::LowRank { inner, opts }),
        None => inner,
    })
}

/// The solvers without a low-rank term (`inner` is `spec` less its low-rank settings).
fn plain_solver(spec: &str, inner: &str) -> Result<Method> {
    let err = |m: String| crate::Error::Other(format!("solver `{spec}`: {m}"));
    let mut parts = inner.split(':');
    let mut name = parts.next().unwrap_or("");
    let mut gptq_opts = gptq::GptqOptions::default();
    // `gptq-asym` is GPTQ with asymmetric calibration (`gptq:asym=yes`).
    if name == "gptq-asym" {
        name = "gptq";
        gptq_opts.asym = true;
    }
    let mut sweeps = quantease::QuantEaseOptions::default().sweeps;
    let mut nesting: Option<nested::Nesting> = None;
    let mut nested_weights: Option<Vec<f32>> = None;
    let mut nested_cascade = None;
    for p in parts {
        let (k, v) = p.split_once('=').ok_or_else(|| err(format!("setting `{p}` is not KEY=VALUE")))?;
        match (name, k) {
            ("gptq" | "quantease", "outliers") => {
                gptq_opts.outliers = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 0.2)
                    .ok_or_else(|| err(format!("outliers={v}: a fraction of the weights in (0, 0.2]")))?;
            }
            ("gptq" | "quantease", "damp") => {
                gptq_opts.damp = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 1.0)
                    .ok_or_else(|| err(format!("damp={v}: a fraction of the mean Hessian diagonal in (0, 1]")))?;
            }
            ("gptq" | "quantease", "asym") => {
                gptq_opts.asym = match v {
                    "yes" | "true" | "1" => true,
                    "no" | "false" | "0" => false,
                    _ => return Err(err(format!("asym={v}: yes or no"))),
                }
            }
            ("gptq" | "rtn", "nested") => {
                nesting = Some(nested::Nesting::parse(v).map_err(err)?);
            }
            ("gptq" | "rtn", "nested-mode") => {
                nested_cascade = Some(match v {
                    "joint" => false,
                    "cascade" => true,
                    _ => return Err(err(format!("nested-mode={v}: cascade or joint"))),
                });
            }
            ("gptq" | "rtn", "nested-weights") => {
                nested_weights =
                    Some(nested::Nesting::parse_weights(v).map_err(|e| err(format!("nested-weights={v}: {e}")))?);
            }
            ("quantease", "sweeps") => {
                sweeps = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| err(format!("sweeps={v}: a whole number from 1 to 1000")))?;
            }
            ("rtn" | "gptq" | "quantease", _) => return Err(err(format!("`{k}` is not a setting of {name}"))),
            _ => break,
        }
    }
    if let Some(w) = nested_weights {
        let n = nesting.take().ok_or_else(|| err("nested-weights without nested=BITS".into()))?;
        nesting = Some(nested::Nesting::new(n.bits, Some(w)).map_err(err)?);
    }
    if let Some(c) = nested_cascade {
        let n = nesting.as_mut().ok_or_else(|| err("nested-mode without nested=BITS".into()))?;
        n.cascade = c;
    }
    if let Some(n) = nesting {
        if gptq_opts.outliers > 0.0 {
            return Err(err(
                "nested precision keeps no outliers: the layouts holding nested codes have no place for a sparse table"
                    .into(),
            ));
        }
        if name == "rtn" {
            return Ok(std::sync::Arc::new(nested::NestedRtn { nesting: n }));
        }
        gptq_opts.nested = Some(n);
    }
    Ok(match name {
        "rtn" if inner == "rtn" => std::sync::Arc::new(rtn::Rtn),
        "gptq" => std::sync::Arc::new(gptq::Gptq { opts: gptq_opts }),
        "quantease" => {
            std::sync::Arc::new(quantease::QuantEase { opts: quantease::QuantEaseOptions { sweeps, gptq: gptq_opts } })
        }
        _ => {
            return Err(crate::Error::Other(format!(
                "unknown solver `{spec}` (known: rtn[:nested=8/4/2], gptq[:outliers=F][:damp=D][:asym=yes][:nested=8/4/2[:nested-weights=8/2/1][:nested-mode=cascade|joint]], gptq-asym, quantease[:sweeps=N][:outliers=F][:damp=D][:asym=yes]; \
                 each with [:lowrank=R][:lowrank-store=f16|int8][:lowrank-whiten=yes|no][:lowrank-order=residual|absorb])"
            )))
        }
    })
}

/// Error figures of one quantized layer.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerError {
    /// Weight signal-to-quantization-noise ratio, dB.
    pub sqnr_db: f64,
    /// tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the relative output error on the calibration inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_err: Option<f64>,
}

/// Σ over the rows r of `m` (`[rows, cols]`) of r H rᵀ, with `h` the `cols × cols` matrix
/// (row-major, f32): tr(M H Mᵀ), a few thousand rows per GEMM (a head has 49k rows).
pub fn quad_form(m: &[f32], h: &[f32], cols: usize) -> f64 {
    quad_form_of(m, None, h, cols)
}

/// [`quad_form`] of `a` − `b` (of `a` alone without `b`): the difference is formed a chunk of
/// rows at a time, never as a whole matrix (the same values and sums as of a difference made
/// whole).
fn quad_form_of(a: &[f32], b: Option<&[f32]>, h: &[f32], cols: usize) -> f64 {
    const CHUNK_ROWS: usize = 4096;
    let mut total = 0f64;
    let mut diff = Vec::new();
    let mut mh = Vec::new();
    for (k, chunk) in a.chunks(CHUNK_ROWS * cols).enumerate() {
        let r = chunk.len() / cols;
        let m: &[f32] = match b {
            Some(b) => {
                let b = &b[k * CHUNK_ROWS * cols..][..chunk.len()];
                diff.clear();
                diff.extend(chunk.iter().zip(b).map(|(x, y)| x - y));
                &diff
            }
            None => chunk,
        };
        mh.clear();
        mh.resize(r * cols, 0f32);
        crate::linalg::matmul_nn(m, h, r, cols, cols, &mut mh, true);
        total += mh.iter().zip(m).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
    }
    total
}

/// Measures how far `q` is from `w` (and, with `h`, the relative output error).
pub fn layer_error(w: &[f32], q: &[f32], rows: usize, cols: usize, h: Option<&Hessian>) -> LayerError {
    debug_assert_eq!(w.len(), rows * cols);
    let (mut sw, mut se) = (0f64, 0f64);
    for (&a, &b) in w.iter().zip(q) {
        sw += (a as f64) * (a as f64);
        se += ((a - b) as f64) * ((a - b) as f64);
    }
    let sqnr_db = if se > 0.0 { 10.0 * (sw / se).log10() } else { f64::INFINITY };
    // Diagonal-only statistics do not give tr(ΔW H ΔWᵀ): no output error then.
    let output_err = h.filter(|h| h.is_full()).map(|h| {
        let hf: Vec<f32> = h.mean().iter().map(|&v| v as f32).collect();
        let den = quad_form(w, &hf, cols);
        if den > 0.0 {
            quad_form_of(w, Some(q), &hf, cols) / den
        } else {
            0.0
        }
    });
    LayerError { sqnr_db, output_err }
}
