//! `quantsmith formats`: list the number formats, round-trip numbers through one.

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use quantsmith::formats::{metrics, spec, Format};
use quantsmith::io::open_model;

/// Arguments of `quantsmith formats`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Every format with its bits per weight (rows of 4096) and a description, then the grammar.
    List,
    /// Read whitespace-separated numbers from stdin, print them quantized and dequantized,
    /// one per line. The input is one row, grouped from its start; a bare element format
    /// (fp8_e4m3, fp4_e2m1, int8) is the raw grid with scale 1.
    Roundtrip {
        /// Format spec, e.g. fp4_e2m1, int4:g32, mxfp4, nvfp4.
        spec: String,
    },
    /// For every 2-D weight tensor of a model: SQNR (dB) and relative MSE under each format,
    /// and the format with the highest SQNR.
    Fit {
        /// A GGUF file, a Hugging Face model directory or a built-in name (smollm2, minilm, mpnet).
        model: String,
        /// Comma-separated format specs, e.g. int4:g128,nf4,mxfp4,q4_k.
        #[arg(long, value_delimiter = ',', required = true)]
        formats: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the subcommand.
pub fn run(args: Args) -> quantsmith::Result<()> {
    match args.cmd {
        Cmd::List => list(),
        Cmd::Roundtrip { spec } => roundtrip(&spec),
        Cmd::Fit { model, formats, json } => fit(&model, &formats, json),
    }
}

fn write_err(e: std::io::Error) -> quantsmith::Error {
    quantsmith::Error::Other(format!("writing to stdout: {e}"))
}

fn list() -> quantsmith::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    writeln!(out, "{:<22} {:>7}  description", "spec", "bits/w").map_err(write_err)?;
    for s in spec::LISTED {
        let f = Format::parse(s)?;
        let bpw = f.bits_per_weight(4096)?;
        writeln!(out, "{:<22} {:>7.4}  {}", s, bpw, f.describe()).map_err(write_err)?;
    }
    writeln!(out, "\nbits/w: exact storage of a row of 4096 weights, scales and other metadata included")
        .map_err(write_err)?;
    writeln!(out, "\nGrammar:\n{}", spec::GRAMMAR).map_err(write_err)?;
    out.flush().map_err(write_err)
}

/// Parses one input number; `nan`, `inf`, `-inf` (any case) are accepted.
fn parse_number(tok: &str, index: usize) -> quantsmith::Result<f32> {
    tok.parse::<f32>()
        .map_err(|_| quantsmith::Error::Other(format!("stdin: number {} `{tok}` is not a number", index + 1)))
}

fn show(v: f32) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn roundtrip(spec: &str) -> quantsmith::Result<()> {
    let f = Format::parse(spec)?.raw_if_bare();
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| quantsmith::Error::Other(format!("reading stdin: {e}")))?;
    let values = text
        .split_whitespace()
        .enumerate()
        .map(|(i, t)| parse_number(t, i))
        .collect::<quantsmith::Result<Vec<f32>>>()?;
    let out_values = f.roundtrip(&values)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for v in out_values {
        writeln!(out, "{}", show(v)).map_err(write_err)?;
    }
    out.flush().map_err(write_err)
}

/// One format's result on one tensor.
enum Outcome {
    Fit(metrics::Fit),
    /// The format does not apply (row length not a multiple of its group, ...).
    Skipped(String),
}

fn fit(model: &str, specs: &[String], json: bool) -> quantsmith::Result<()> {
    let formats = specs.iter().map(|s| Format::parse(s.trim())).collect::<Result<Vec<_>, _>>()?;
    let file = open_model(model)?;
    let model: &Path = file.path();
    let src = file.source();
    // Weight matrices: 2-D tensors (norm and bias vectors are 1-D).
    let tensors: Vec<_> = src.tensors().into_iter().filter(|t| t.shape.len() == 2).collect();
    if tensors.is_empty() {
        return Err(quantsmith::Error::Other(format!("{}: no 2-D weight tensors", model.display())));
    }
    let mut rows_out = Vec::new();
    for t in &tensors {
        let data = src.load_f32(&t.name)?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let results: Vec<Outcome> = formats
            .iter()
            .map(|f| match metrics::fit(f, &data, rows, cols, None) {
                Ok(fit) => Ok(Outcome::Fit(fit)),
                Err(quantsmith::formats::FormatError::NonFinite { index, value }) => Err(quantsmith::Error::Tensor {
                    path: model.to_path_buf(),
                    tensor: t.name.clone(),
                    msg: format!("non-finite weight {value} at element {index}"),
                }),
                Err(e) => Ok(Outcome::Skipped(e.to_string())),
            })
            .collect::<quantsmith::Result<_>>()?;
        if !json {
            eprintln!("{}: done", t.name);
        }
        rows_out.push((t, results));
    }
    let best = |results: &[Outcome]| -> Option<usize> {
        let mut b: Option<(usize, f64)> = None;
        for (i, r) in results.iter().enumerate() {
            if let Outcome::Fit(f) = r {
                if b.map_or(true, |(_, s)| f.sqnr_db > s) {
                    b = Some((i, f.sqnr_db));
                }
            }
        }
        b.map(|(i, _)| i)
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if json {
        let tensors_json: Vec<serde_json::Value> = rows_out
            .iter()
            .map(|(t, results)| {
                let per: Vec<serde_json::Value> = results
                    .iter()
                    .zip(specs)
                    .map(|(r, s)| match r {
                        Outcome::Fit(f) => serde_json::json!({
                            "format": s.trim(),
                            "sqnr_db": if f.sqnr_db.is_finite() { serde_json::json!(f.sqnr_db) } else { serde_json::json!("inf") },
                            "rel_mse": f.rel_mse,
                            "bits_per_weight": f.bits_per_weight,
                        }),
                        Outcome::Skipped(e) => serde_json::json!({ "format": s.trim(), "error": e }),
                    })
                    .collect();
                serde_json::json!({
                    "name": t.name,
                    "shape": t.shape,
                    "results": per,
                    "best": best(results).map(|i| specs[i].trim().to_string()),
                })
            })
            .collect();
        let doc =
            serde_json::json!({ "model": model.display().to_string(), "formats": specs, "tensors": tensors_json });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| quantsmith::Error::Other(format!("JSON: {e}")))?;
        writeln!(out, "{text}").map_err(write_err)?;
        return out.flush().map_err(write_err);
    }
    write!(out, "{:<40} {:>12}", "tensor (SQNR dB / rel. MSE)", "shape").map_err(write_err)?;
    for s in specs {
        write!(out, " {:>22}", s.trim()).map_err(write_err)?;
    }
    writeln!(out, "  best").map_err(write_err)?;
    for (t, results) in &rows_out {
        write!(out, "{:<40} {:>12}", t.name, format!("{}x{}", t.shape[0], t.shape[1])).map_err(write_err)?;
        for r in results {
            let cell = match r {
                Outcome::Fit(f) => format!("{:.2} / {:.2e}", f.sqnr_db, f.rel_mse),
                Outcome::Skipped(_) => "n/a".to_string(),
            };
            write!(out, " {cell:>22}").map_err(write_err)?;
        }
        let b = best(results).map_or("-".to_string(), |i| specs[i].trim().to_string());
        writeln!(out, "  {b}").map_err(write_err)?;
    }
    writeln!(out, "\nSQNR = 10 log10(sum w^2 / sum (w - q(w))^2); n/a: the format does not fit the row length.")
        .map_err(write_err)?;
    out.flush().map_err(write_err)
}
