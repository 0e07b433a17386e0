//! `quantsmith bench`: throughput figures quoted as ratios measured in one run.

use quantsmith::{arch, Error, Result};

/// Arguments of `quantsmith bench`.
#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[command(subcommand)]
    pub what: What,
}

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum What {
    /// Decoder evaluation speed (tokens/s) against faer's GEMM rate.
    Eval {
        /// Decoder model (default: smollm2).
        #[arg(default_value = "smollm2")]
        model: String,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Chunks to time.
        #[arg(long, default_value_t = 4)]
        chunks: usize,
        /// Chunks per forward pass.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hessian accumulation (XᵀX and the moments, as calibration takes them) against faer's
    /// GEMM on the same product.
    Hessian {
        /// Input widths (default: SmolLM2's 576 and 1536, and 4096).
        #[arg(long, value_delimiter = ',', default_values_t = [576usize, 1536, 4096])]
        widths: Vec<usize>,
        /// Tokens per batch.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Batches to time per width.
        #[arg(long, default_value_t = 4)]
        reps: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Format encoders and decoders on a weight-like matrix against a parallel read of it
    /// (memory bandwidth).
    Encode {
        /// Formats (specs as in recipes).
        #[arg(long, value_delimiter = ',', default_values_t = ["int8".to_string(), "int4:g128".into(), "int4:g128:asym".into(), "int3:g128".into(), "fp8_e4m3".into(), "fp4_e2m1:g32".into(), "mxfp4".into(), "mxfp6_e3m2".into(), "nvfp4".into(), "nf4".into(), "q4_k".into(), "q8_0".into()])]
        formats: Vec<String>,
        /// Matrix rows.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Matrix columns.
        #[arg(long, default_value_t = 4096)]
        cols: usize,
        /// Repetitions per format, each a read, an encode and a decode back to back; the
        /// figures are their medians.
        #[arg(long, default_value_t = 15)]
        reps: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?);
    Ok(())
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Eval { model, ctx, chunks, batch, json } => {
            let file = quantsmith::io::open_model(&model)?;
            let dec = arch::load_decoder(&file)?;
            let b = quantsmith::bench::bench_eval(&dec.model, ctx, chunks, batch)?;
            if json {
                print_json(&b)?;
            } else {
                println!(
                    "eval {model}: {:.3} s per {ctx}-token chunk, {:.0} tokens/s",
                    b.seconds_per_chunk, b.tokens_per_second
                );
                println!(
                    "forward {:.1} GFLOP per chunk at {:.1} GFLOP/s = {:.0} % of faer's f32 GEMM ({:.1} GFLOP/s on 1024³, {:.1} on the {ctx}×{}×{} layer shape)",
                    b.gflop_per_chunk,
                    b.forward_gflops,
                    100.0 * b.fraction_of_gemm,
                    b.gemm_gflops_1024,
                    b.gemm_gflops_layer,
                    dec.model.cfg.d_ff,
                    dec.model.cfg.d_model
                );
            }
            Ok(())
        }
        What::Hessian { widths, rows, reps, json } => {
            if widths.is_empty() || widths.contains(&0) || rows == 0 {
                return Err(Error::Other("bench hessian: widths and rows must be positive".into()));
            }
            let b = quantsmith::bench::bench_hessian(&widths, rows, reps);
            if json {
                return print_json(&b);
            }
            println!(
                "{:>6} {:>6} {:>10} {:>9} {:>12} {:>9} {:>7}",
                "width", "rows", "s/batch", "GFLOP/s", "w/o fold", "GEMM", "of GEMM"
            );
            for h in &b {
                println!(
                    "{:>6} {:>6} {:>10.4} {:>9.1} {:>12.1} {:>9.1} {:>6.0} %",
                    h.width,
                    h.rows,
                    h.seconds_per_batch,
                    h.gflops,
                    h.gflops_without_fold,
                    h.gemm_gflops,
                    100.0 * h.fraction_of_gemm
                );
            }
            println!("(useful flops: the lower triangle of XᵀX, rows·n·(n+1); GEMM: faer's full f32 XᵀX, same run)");
            Ok(())
        }
        What::Encode { formats, rows, cols, reps, json } => {
            if rows == 0 || cols == 0 {
                return Err(Error::Other("bench encode: rows and cols must be positive".into()));
            }
            let b = quantsmith::bench::bench_encode(&formats, rows, cols, reps)?;
            if json {
                return print_json(&b);
            }
            println!(
                "{:<18} {:>11} {:>11} {:>10} {:>9}",
                "format", "encode GB/s", "decode GB/s", "read GB/s", "of read"
            );
            for e in &b {
                println!(
                    "{:<18} {:>11.2} {:>11.2} {:>10.1} {:>8.0} %",
                    e.format,
                    e.encode_gbps,
                    e.decode_gbps,
                    e.read_gbps,
                    100.0 * e.encode_fraction_of_read
                );
            }
            println!(
                "({rows} × {cols} f32 = {} MiB; GB/s of f32 input, medians of {reps}; read: a parallel pass over the same matrix; of read: the median of encode/read in each repetition)",
                (rows * cols * 4) >> 20
            );
            Ok(())
        }
    }
}
