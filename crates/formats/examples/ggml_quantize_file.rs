//! Quantizes a raw little-endian f32 file with quantsmith's ggml encoders, for comparing with
//! llama.cpp outside Rust (tools/ggml_stress.py, tools/ggml_llamacpp_check.py).
//!
//!   cargo run --release -p quantsmith-formats --example ggml_quantize_file -- \
//!       TYPE N_PER_ROW IN.f32 IMATRIX.f32|- OUT.bin

use formats::ggml::{quantize, GgmlType};
use std::process::ExitCode;

fn read_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{path}: {} bytes is not a whole number of f32", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn run(args: &[String]) -> Result<(), String> {
    let [ty, n, input, imatrix, out] = args else {
        return Err("usage: ggml_quantize_file TYPE N_PER_ROW IN.f32 IMATRIX.f32|- OUT.bin".into());
    };
    let ty = (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name() == ty.to_lowercase())
        .ok_or_else(|| format!("unknown ggml type `{ty}`"))?;
    let n: usize = n.parse().map_err(|e| format!("N_PER_ROW `{n}`: {e}"))?;
    let x = read_f32(input)?;
    let w = if imatrix == "-" { None } else { Some(read_f32(imatrix)?) };
    let q = quantize(ty, &x, n, w.as_deref()).map_err(|e| format!("{input}: {e}"))?;
    std::fs::write(out, q).map_err(|e| format!("{out}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
