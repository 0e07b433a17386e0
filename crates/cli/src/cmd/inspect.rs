//! `quantsmith inspect`: a model's architecture, tensors, storage types and size.

use quantsmith::io::{open_model, ModelFile};

/// Arguments of `quantsmith inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, a Hugging Face directory, or a built-in name (smollm2, minilm, mpnet).
    pub model: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> quantsmith::Result<()> {
    let file = open_model(&args.model)?;
    let inv = file.inventory()?;
    let on_disk = quantsmith::io::path_bytes(file.path())?;
    let file_bpw = if inv.parameters == 0 { 0.0 } else { 8.0 * on_disk as f64 / inv.parameters as f64 };
    let metadata: Vec<(String, String)> = match &file {
        ModelFile::Gguf(g) => g.metadata().iter().map(|(k, v)| (k.clone(), v.display_short())).collect(),
        ModelFile::Hf(h) => h
            .config()
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
            .unwrap_or_default(),
    };
    if args.json {
        let tensors: Vec<_> = inv
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "shape": t.shape, "dtype": t.dtype.name(), "bytes": t.n_bytes}))
            .collect();
        let other: Vec<_> = inv
            .other
            .iter()
            .map(|(name, dtype, shape, bytes)| serde_json::json!({"name": name, "shape": shape, "dtype": dtype, "bytes": bytes}))
            .collect();
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        let out = serde_json::json!({
            "path": file.path().display().to_string(),
            "format": inv.format,
            "architecture": inv.architecture,
            "parameters": inv.parameters,
            "bytes": inv.bytes,
            "bits_per_weight": inv.bits_per_weight(),
            "file_bytes": on_disk,
            "file_bits_per_weight": file_bpw,
            "tensors": tensors,
            "non_weight_tensors": other,
            "metadata": meta,
        });
        println!("{out}");
        return Ok(());
    }

    let p = crate::cmd::printable;
    println!("model:           {}", p(&file.path().display().to_string()));
    println!("format:          {}", inv.format);
    println!("architecture:    {}", p(&inv.architecture));
    println!("parameters:      {} ({:.1} M)", inv.parameters, inv.parameters as f64 / 1e6);
    println!("weight bytes:    {} ({:.1} MiB)", inv.bytes, inv.bytes as f64 / (1024.0 * 1024.0));
    println!("size on disk:    {} ({:.1} MiB)", on_disk, on_disk as f64 / (1024.0 * 1024.0));
    println!(
        "bits per weight: {:.3} in the tensors ({:.3} counting the whole {}, metadata included)",
        inv.bits_per_weight(),
        file_bpw,
        if file.path().is_dir() { "directory" } else { "file" }
    );
    println!("metadata:");
    for (k, v) in &metadata {
        println!("  {} = {}", p(k), p(v));
    }
    let mut by_type: Vec<(&str, usize, usize, usize)> = Vec::new();
    for t in &inv.tensors {
        match by_type.iter_mut().find(|e| e.0 == t.dtype.name()) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.numel();
                e.3 += t.n_bytes;
            }
            None => by_type.push((t.dtype.name(), 1, t.numel(), t.n_bytes)),
        }
    }
    println!("storage types:");
    for (name, n, params, bytes) in &by_type {
        println!("  {name:<8} {n:>5} tensors {params:>12} weights {bytes:>12} bytes");
    }
    let w = inv.tensors.iter().map(|t| p(&t.name).chars().count()).max().unwrap_or(4).max(4);
    println!("tensors ({}):", inv.tensors.len());
    println!("  {:<w$}  {:<20}  {:<7}  {:>12}", "name", "shape", "type", "bytes");
    for t in &inv.tensors {
        let shape = format!("{:?}", t.shape);
        println!("  {:<w$}  {:<20}  {:<7}  {:>12}", p(&t.name), shape, t.dtype.name(), t.n_bytes);
    }
    if !inv.other.is_empty() {
        println!("not weights (not counted above):");
        for (name, dtype, shape, bytes) in &inv.other {
            println!("  {:<w$}  {:<20}  {:<7}  {:>12}", p(name), format!("{shape:?}"), p(&dtype.to_lowercase()), bytes);
        }
    }
    Ok(())
}
