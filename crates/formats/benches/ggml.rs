//! ggml block codecs: encode (llama.cpp's reference path, and the importance-weighted one)
//! and decode of a 4096 x 4096 f32 matrix (64 MiB), reported as input GB/s (f32 bytes in for
//! encoding, f32 bytes out for decoding, so both sides are comparable).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use formats::ggml::{dequantize, quantize, GgmlType};

const ROWS: usize = 4096;
const COLS: usize = 4096;

/// Deterministic weight-like data (sum of sines), no RNG dependency.
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
    let importance: Vec<f32> = (0..COLS).map(|i| 1.0 + (i % 13) as f32 * 0.25).collect();
    let mut g = c.benchmark_group("ggml_4096x4096");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K] {
        g.bench_with_input(BenchmarkId::new("encode", ty.name()), &data, |b, d| {
            b.iter(|| quantize(ty, d, COLS, None).expect("quantize"))
        });
        if ty != GgmlType::Q8_0 {
            g.bench_with_input(BenchmarkId::new("encode_imatrix", ty.name()), &data, |b, d| {
                b.iter(|| quantize(ty, d, COLS, Some(&importance)).expect("quantize"))
            });
        }
        let q = quantize(ty, &data, COLS, None).expect("quantize");
        let mut out = vec![0f32; ROWS * COLS];
        g.bench_with_input(BenchmarkId::new("decode", ty.name()), &q, |b, q| {
            b.iter(|| dequantize(ty, q, &mut out).expect("dequantize"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
