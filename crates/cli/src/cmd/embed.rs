//! `quantsmith embed`: sentence embeddings from an encoder, one per non-empty line.

use std::io::Write;
use std::path::PathBuf;

use quantsmith::Error;

/// Arguments of `quantsmith embed`.
#[derive(clap::Args)]
pub struct Args {
    /// Encoder model (BERT, MPNet): a Hugging Face directory, or a built-in name (`minilm`, `mpnet`).
    pub model: String,
    /// Text file; every non-empty line is embedded on its own.
    #[arg(long)]
    pub text: PathBuf,
    /// Print `{"embeddings": [[...], ...]}` (in line order) instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Lines shown in the human summary.
const SHOWN_LINES: usize = 5;
/// Leading values shown per embedding in the human summary.
const SHOWN_VALUES: usize = 6;

/// Runs the subcommand.
pub fn run(args: Args) -> quantsmith::Result<()> {
    let text = std::fs::read_to_string(&args.text).map_err(|e| Error::io(&args.text, e))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err(Error::Text { path: args.text.clone(), msg: "no non-empty lines to embed".into() });
    }
    let model = quantsmith::io::open_model(&args.model)?;
    let encoder = quantsmith::arch::load_encoder(&model)?;

    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("embed {bar:40} {pos}/{len} lines {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Only worth drawing for runs long enough to be watched.
    if lines.len() < 256 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let embeddings = encoder.embed_with_progress(&lines, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let write_err = |e: std::io::Error| Error::Other(format!("writing to stdout: {e}"));
    if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({ "embeddings": embeddings }))
            .map_err(|e| Error::Other(format!("writing to stdout: {e}")))?;
        writeln!(out).map_err(write_err)?;
    } else {
        let normalised = if encoder.normalize() { ", L2-normalised" } else { "" };
        writeln!(
            out,
            "{} embeddings of dimension {}{normalised} ({})",
            embeddings.len(),
            encoder.dim(),
            model.path().display()
        )
        .map_err(write_err)?;
        for (n, (line, e)) in lines.iter().zip(&embeddings).enumerate().take(SHOWN_LINES) {
            let head: Vec<String> = e.iter().take(SHOWN_VALUES).map(|v| format!("{v:.6}")).collect();
            let mut shown: String = line.trim().chars().take(48).collect();
            if shown.len() < line.trim().len() {
                shown.push('…');
            }
            writeln!(out, "{:>5}  [{}, …]  {shown}", n + 1, head.join(", ")).map_err(write_err)?;
        }
        if embeddings.len() > SHOWN_LINES {
            writeln!(out, "  … {} more (use --json for all values)", embeddings.len() - SHOWN_LINES)
                .map_err(write_err)?;
        }
    }
    out.flush().map_err(write_err)
}
