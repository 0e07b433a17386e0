//! Encode and decode throughput of a 4096 x 4096 f32 matrix (64 MiB) per format, reported
//! as input GB/s (criterion's bytes throughput). Compare with the machine's read bandwidth.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use formats::Format;

const ROWS: usize = 4096;
const COLS: usize = 4096;

/// Deterministic weight-like data: a sum of sines, no RNG dependency.
fn matrix() -> Vec<f32> {
    (0..ROWS * COLS)
        .map(|i| {
            let x = i as f32;
            0.02 * ((x * 0.618_034).sin() + 0.5 * (x * 0.0137).cos() + 0.1 * (x * 1.3e-5).sin())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = matrix();
    let mut g = c.benchmark_group("formats_4096x4096");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
    // Baseline under the same conditions: a parallel read of the matrix (sum), i.e. the
    // memory bandwidth the encoders are compared with.
    g.bench_with_input(BenchmarkId::new("read", "sum"), &data, |b, d| {
        b.iter(|| {
            use rayon::prelude::*;
            // min/max in eight lanes vectorises (a plain f32 sum is one serial add chain).
            d.par_chunks(1 << 16).map(|c| formats::format::min_max(c).1).reduce(|| 0.0, f32::max)
        })
    });
    for spec in ["int4:g128", "mxfp4", "nvfp4", "fp8_e4m3", "nf4"] {
        let f = Format::parse(spec).expect("bench spec parses");
        g.bench_with_input(BenchmarkId::new("encode", spec), &data, |b, d| {
            b.iter(|| f.quantize(d, ROWS, COLS, None).expect("quantize"))
        });
        let q = f.quantize(&data, ROWS, COLS, None).expect("quantize");
        let mut out = vec![0f32; ROWS * COLS];
        g.bench_with_input(BenchmarkId::new("decode", spec), &q, |b, q| {
            b.iter(|| f.dequantize_into(q, &mut out).expect("dequantize"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
