//! `quantsmith formats`: list the number formats, round-trip numbers through one.

use std::io::{BufWriter, Read, Write};

use quantsmith::formats::{spec, Format};

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
}

/// Runs the subcommand.
pub fn run(args: Args) -> quantsmith::Result<()> {
    match args.cmd {
        Cmd::List => list(),
        Cmd::Roundtrip { spec } => roundtrip(&spec),
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
    writeln!(
        out,
        "\nbits/w: exact storage of a row of 4096 weights, scales and other metadata included"
    )
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
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| quantsmith::Error::Other(format!("reading stdin: {e}")))?;
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
