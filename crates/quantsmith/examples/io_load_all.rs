//! Materializes every tensor of a model once and reports the decode rate:
//! `cargo run --release -p quantsmith --example io_load_all -- smollm2`.

use std::time::Instant;

fn main() -> quantsmith::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    let t0 = Instant::now();
    let file = quantsmith::io::open_model(&name)?;
    let opened = t0.elapsed().as_secs_f64();
    let src = file.source();
    let (mut values, mut bytes) = (0usize, 0usize);
    let t1 = Instant::now();
    for t in src.tensors() {
        let v = src.load_f32(&t.name)?;
        values += v.len();
        bytes += t.n_bytes;
    }
    let s = t1.elapsed().as_secs_f64();
    println!(
        "{}: opened in {:.3} s; {} values from {} stored bytes in {:.3} s ({:.2} G values/s, {:.2} GB/s of f32 out)",
        file.path().display(),
        opened,
        values,
        bytes,
        s,
        values as f64 / s / 1e9,
        values as f64 * 4.0 / s / 1e9
    );
    Ok(())
}
