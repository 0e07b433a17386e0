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
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Eval { model, ctx, chunks, batch, json } => {
            let file = quantsmith::io::open_model(&model)?;
            let dec = arch::load_decoder(&file)?;
            let b = quantsmith::bench::bench_eval(&dec.model, ctx, chunks, batch)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b).map_err(|e| Error::Other(e.to_string()))?);
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
    }
}
