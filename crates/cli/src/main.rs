//! The `quantsmith` binary: argument parsing, progress and printing; the work is in the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quantsmith", version, about = "Quantize transformer models on the CPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
}

fn main() {
    let cli = Cli::parse();
    let result: quantsmith::Result<()> = match cli.cmd {};
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
