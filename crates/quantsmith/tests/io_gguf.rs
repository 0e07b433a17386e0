//! GGUF writer → reader round trips.

mod io_common;

use formats::ggml::GgmlType;
use io_common::{f32_bytes, pseudo_random};
use quantsmith::io::{GgufArray, GgufFile, GgufValue, GgufWriter, ModelFile};
use quantsmith::tensor::{DType, TensorSource};

fn all_kinds_metadata() -> Vec<(String, GgufValue)> {
    let v = |k: &str, v: GgufValue| (k.to_string(), v);
    vec![
        v("general.architecture", GgufValue::String("llama".into())),
        v("t.u8", GgufValue::U8(200)),
        v("t.i8", GgufValue::I8(-100)),
        v("t.u16", GgufValue::U16(60000)),
        v("t.i16", GgufValue::I16(-30000)),
        v("t.u32", GgufValue::U32(4_000_000_000)),
        v("t.i32", GgufValue::I32(-2_000_000_000)),
        v("t.f32", GgufValue::F32(1e-5)),
        v("t.bool", GgufValue::Bool(true)),
        v("t.string", GgufValue::String("héllo ✓".into())),
        v("t.u64", GgufValue::U64(u64::MAX)),
        v("t.i64", GgufValue::I64(i64::MIN)),
        v("t.f64", GgufValue::F64(std::f64::consts::PI)),
        v("t.empty", GgufValue::String(String::new())),
        v("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String((0..5000).map(|i| format!("tok{i}")).collect()))),
        v("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32((0..100).map(|i| i as f32 * 0.5).collect()))),
        v("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(vec![1, 2, 3, -4]))),
        v("t.arr_u8", GgufValue::Array(GgufArray::U8(vec![1, 2, 255]))),
        v("t.arr_i8", GgufValue::Array(GgufArray::I8(vec![-1, 2]))),
        v("t.arr_u16", GgufValue::Array(GgufArray::U16(vec![7]))),
        v("t.arr_i16", GgufValue::Array(GgufArray::I16(vec![-7]))),
        v("t.arr_u32", GgufValue::Array(GgufArray::U32(vec![9, 10]))),
        v("t.arr_bool", GgufValue::Array(GgufArray::Bool(vec![true, false, true]))),
        v("t.arr_u64", GgufValue::Array(GgufArray::U64(vec![1 << 40]))),
        v("t.arr_i64", GgufValue::Array(GgufArray::I64(vec![-(1 << 40)]))),
        v("t.arr_f64", GgufValue::Array(GgufArray::F64(vec![0.25, -0.5]))),
        v("t.arr_empty", GgufValue::Array(GgufArray::F32(vec![]))),
        v(
            "t.nested",
            GgufValue::Array(GgufArray::Array(vec![
                GgufArray::String(vec!["a".into(), "b".into()]),
                GgufArray::U32(vec![1, 2, 3]),
                GgufArray::Array(vec![GgufArray::I8(vec![-1])]),
            ])),
        ),
    ]
}

#[test]
fn round_trip_keeps_metadata_order_and_tensor_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let meta = all_kinds_metadata();
    let w_f32 = pseudo_random(8 * 64, 1);
    let w_f16: Vec<u8> = pseudo_random(3 * 32, 2).iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let w_bf16: Vec<u8> = pseudo_random(32, 3).iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    // Q8_0 blocks: bytes only (decoding is the formats crate's test); 2 rows of 64.
    let q8: Vec<u8> = (0..4 * 34).map(|i| (i * 7 % 251) as u8).collect();

    let mut w = GgufWriter::new(&path).unwrap();
    w.add_metadata_all(&meta).unwrap();
    w.add_tensor("a.weight", &[64, 8], GgmlType::F32, &f32_bytes(&w_f32)).unwrap();
    w.add_tensor("b.weight", &[32, 3], GgmlType::F16, &w_f16).unwrap();
    w.add_tensor("c.bias", &[32], GgmlType::Bf16, &w_bf16).unwrap();
    w.add_tensor("d.weight", &[64, 2], GgmlType::Q8_0, &q8).unwrap();
    w.finish().unwrap();

    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata(), &meta[..]);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.tensor_bytes("a.weight").unwrap(), &f32_bytes(&w_f32)[..]);
    assert_eq!(g.tensor_bytes("b.weight").unwrap(), &w_f16[..]);
    assert_eq!(g.tensor_bytes("c.bias").unwrap(), &w_bf16[..]);
    assert_eq!(g.tensor_bytes("d.weight").unwrap(), &q8[..]);
    for t in g.gguf_tensors() {
        assert_eq!(t.offset % 32, 0, "{} misaligned", t.name);
    }

    let names: Vec<String> = g.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["a.weight", "b.weight", "c.bias", "d.weight"]);
    let a = g.info("a.weight").unwrap();
    assert_eq!(a.shape, vec![8, 64], "shape is outermost first");
    assert_eq!(a.dtype, DType::Ggml(GgmlType::F32));
    assert_eq!(a.n_bytes, 8 * 64 * 4);
    assert_eq!(g.info("d.weight").unwrap().n_bytes, 4 * 34);
    assert_eq!(g.load_f32("a.weight").unwrap(), w_f32);
    let b = g.load_f32("b.weight").unwrap();
    let b_ref: Vec<f32> = w_f16.chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    assert_eq!(b, b_ref);
    let c = g.load_f32("c.bias").unwrap();
    let c_ref: Vec<f32> = w_bf16.chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    assert_eq!(c, c_ref);

    // Re-writing everything read gives the identical file.
    let path2 = dir.path().join("m2.gguf");
    let mut w2 = GgufWriter::new(&path2).unwrap();
    w2.add_metadata_all(g.metadata()).unwrap();
    for t in g.gguf_tensors() {
        w2.add_tensor(&t.name, &t.ne, t.ty, g.tensor_bytes(&t.name).unwrap()).unwrap();
    }
    w2.finish().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&path2).unwrap());

    assert!(matches!(ModelFile::open(&path).unwrap(), ModelFile::Gguf(_)));
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut w = GgufWriter::new(&path).unwrap();
    w.add_metadata_all(&all_kinds_metadata()).unwrap();
    w.finish().unwrap();
    let g = GgufFile::open(&path).unwrap();

    assert_eq!(g.get_u32("t.u8").unwrap(), 200);
    assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_f32("t.f32").unwrap(), 1e-5);
    assert_eq!(g.get_f32("t.f64").unwrap(), std::f64::consts::PI as f32);
    assert!(g.get_bool("t.bool").unwrap());
    assert_eq!(g.get_str("t.string").unwrap(), "héllo ✓");
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 5000);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap()[4999], "tok4999");
    assert_eq!(g.get_f32_array("tokenizer.ggml.scores").unwrap()[3], 1.5);
    assert_eq!(g.get_f32_array("t.arr_f64").unwrap(), vec![0.25, -0.5]);
    assert_eq!(g.get_i32_array("tokenizer.ggml.token_type").unwrap(), vec![1, 2, 3, -4]);
    assert_eq!(g.get_i32_array("t.arr_u8").unwrap(), vec![1, 2, 255]);
    assert_eq!(g.opt_u32("absent").unwrap(), None);
    assert_eq!(g.opt_f32("t.f32").unwrap(), Some(1e-5));
    assert_eq!(g.opt_str("absent").unwrap(), None);

    let e = g.get_u32("t.i32").unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("t.i32") && e.contains("u32"), "{e}");
    let e = g.get_u32("t.missing").unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("t.missing") && e.contains("missing"), "{e}");
    let e = g.get_str("t.u8").unwrap_err().to_string();
    assert!(e.contains("t.u8") && e.contains("string"), "{e}");
    let e = g.opt_bool("t.string").unwrap_err().to_string();
    assert!(e.contains("t.string") && e.contains("bool"), "{e}");
    let e = g.get_i32_array("t.arr_u32").map(|_| ()).and(g.get_i32_array("t.arr_u64").map(|_| ())).unwrap_err();
    assert!(e.to_string().contains("t.arr_u64"), "{e}");
    assert!(g.get_str_array("tokenizer.ggml.scores").is_err());
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let mut w = GgufWriter::new(&path).unwrap();
    w.add_metadata("general.alignment", GgufValue::U32(256)).unwrap();
    w.add_tensor("x", &[3], GgmlType::F32, &f32_bytes(&[1.0, 2.0, 3.0])).unwrap();
    w.add_tensor("y", &[5], GgmlType::F32, &f32_bytes(&[4.0; 5])).unwrap();
    w.finish().unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.alignment(), 256);
    assert_eq!(g.data_offset() % 256, 0);
    assert_eq!(g.gguf_tensor("y").unwrap().offset, 256);
    assert_eq!(g.load_f32("y").unwrap(), vec![4.0; 5]);
}

#[test]
fn unfinished_writer_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.gguf");
    {
        let mut w = GgufWriter::new(&path).unwrap();
        w.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
        w.add_tensor("x", &[4], GgmlType::F32, &f32_bytes(&[0.0; 4])).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped writer left a file");
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new(&dir.path().join("w.gguf")).unwrap();
    let e = w.add_tensor("x", &[4], GgmlType::F32, &[0u8; 15]).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("15"), "{e}");
    let e = w.add_tensor("q", &[48, 2], GgmlType::Q8_0, &[0u8; 34 * 3]).unwrap_err().to_string();
    assert!(e.contains("block size"), "{e}");
    w.add_tensor("x", &[4], GgmlType::F32, &[0u8; 16]).unwrap();
    assert!(w.add_tensor("x", &[4], GgmlType::F32, &[0u8; 16]).is_err());
    assert!(w.add_metadata("k", GgufValue::U8(1)).is_ok());
    assert!(w.add_metadata("k", GgufValue::U8(1)).is_err());
}

/// A writer told the tensors beforehand writes the same bytes as one that spools them, also
/// when a tensor differs from the plan or fewer arrive than planned; a failed planned writer
/// leaves nothing.
#[test]
fn planned_writer_gives_the_spooled_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let meta = all_kinds_metadata();
    let a = f32_bytes(&pseudo_random(8 * 64, 1));
    let q8: Vec<u8> = (0..4 * 34).map(|i| (i * 7 % 251) as u8).collect();
    let c = f32_bytes(&pseudo_random(3, 2));
    let tensors: Vec<(&str, Vec<u64>, GgmlType, &[u8])> = vec![
        ("a.weight", vec![64, 8], GgmlType::F32, &a),
        ("d.weight", vec![64, 2], GgmlType::Q8_0, &q8),
        ("c.bias", vec![3], GgmlType::F32, &c),
    ];
    let write = |name: &str, plan: Option<Vec<(String, Vec<u64>, GgmlType)>>, take: usize| {
        let path = dir.path().join(name);
        let mut w = GgufWriter::new(&path).unwrap();
        w.add_metadata_all(&meta).unwrap();
        if let Some(p) = plan {
            w.plan(&p).unwrap();
            assert!(w.add_metadata("late", GgufValue::U8(1)).is_err(), "metadata after the header");
        }
        for (n, ne, ty, b) in tensors.iter().take(take) {
            w.add_tensor(n, ne, *ty, b).unwrap();
        }
        w.finish().unwrap();
        std::fs::read(&path).unwrap()
    };
    let plan: Vec<(String, Vec<u64>, GgmlType)> =
        tensors.iter().map(|(n, ne, ty, _)| (n.to_string(), ne.clone(), *ty)).collect();
    let spooled = write("spooled.gguf", None, 3);
    assert_eq!(write("planned.gguf", Some(plan.clone()), 3), spooled);
    // The second tensor announced with another type: the data written so far moves to the spool.
    let mut other = plan.clone();
    other[1].2 = GgmlType::F16;
    other[1].1 = vec![64, 2];
    assert_eq!(write("mismatch.gguf", Some(other), 3), spooled);
    // One more tensor planned than arrives.
    let mut more = plan.clone();
    more.push(("e.weight".into(), vec![32], GgmlType::F32));
    assert_eq!(write("more.gguf", Some(more), 3), spooled);
    // Fewer planned than arrive.
    assert_eq!(write("fewer.gguf", Some(plan[..2].to_vec()), 3), spooled);
    // Dropped before finish: nothing left beside the outputs above.
    {
        let mut w = GgufWriter::new(&dir.path().join("never.gguf")).unwrap();
        w.add_metadata_all(&meta).unwrap();
        w.plan(&plan).unwrap();
        w.add_tensor("a.weight", &[64, 8], GgmlType::F32, &a).unwrap();
    }
    let mut left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["fewer.gguf", "mismatch.gguf", "more.gguf", "planned.gguf", "spooled.gguf"]);
}

#[test]
fn f32_weights_are_read_in_place_and_copied_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let w = pseudo_random(8 * 64, 5);
    let w_f16: Vec<u8> = w.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let mut wr = GgufWriter::new(&path).unwrap();
    wr.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    wr.add_tensor("a", &[64, 8], GgmlType::F32, &f32_bytes(&w)).unwrap();
    wr.add_tensor("h", &[64, 8], GgmlType::F16, &w_f16).unwrap();
    wr.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();

    let mut a = f.load_weights("a").unwrap();
    assert!(a.is_mapped(), "an aligned f32 tensor is read in place");
    assert_eq!(&a[..], &w[..]);
    assert_eq!(&a[..], &f.load_f32("a").unwrap()[..]);
    let shared = a.clone();
    a[3] = 42.0;
    assert!(!a.is_mapped(), "writing makes an owned copy");
    assert_eq!(a[3], 42.0);
    assert_eq!(&shared[..], &w[..], "the other reference and the file are unchanged");
    assert_eq!(f.load_f32("a").unwrap()[3], w[3]);
    drop(shared);
    // Pages released on drop are read again from the file.
    assert_eq!(&f.load_weights("a").unwrap()[..], &w[..]);

    let h = f.load_weights("h").unwrap();
    assert!(!h.is_mapped(), "f16 is decoded into an owned copy");
    assert_eq!(&h[..], &f.load_f32("h").unwrap()[..]);
    assert!(f.load_weights("missing").is_err());
}

#[test]
fn packed_weights_are_decoded_by_panels_and_checked_at_load() {
    use quantsmith::arch::layers::{load_checked_weights, Linear};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    // 1000 rows of 64: more rows than one decode panel, and a last panel that is not full.
    let (rows, cols) = (1000usize, 64usize);
    let w = pseudo_random(rows * cols, 9);
    let q8 = formats::ggml::quantize(GgmlType::Q8_0, &w, cols, None).unwrap();
    let mut bad = q8.clone();
    // Row 700's first block gets a NaN scale (f16 0x7e00).
    let at = 700 * GgmlType::Q8_0.row_bytes(cols).unwrap();
    bad[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let mut wr = GgufWriter::new(&path).unwrap();
    wr.add_metadata("general.architecture", GgufValue::String("llama".into())).unwrap();
    wr.add_tensor("q", &[cols as u64, rows as u64], GgmlType::Q8_0, &q8).unwrap();
    wr.add_tensor("bad", &[cols as u64, rows as u64], GgmlType::Q8_0, &bad).unwrap();
    wr.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    let dense = f.load_f32("q").unwrap();

    let p = load_checked_weights(&f, &path, "q", &[rows, cols]).unwrap();
    assert!(p.packed_rows().is_some(), "a Q8_0 matrix stays packed");
    assert_eq!(p.len(), rows * cols);
    let mut row = vec![0f32; cols];
    p.row_into(777, &mut row).unwrap();
    assert_eq!(&row[..], &dense[777 * cols..778 * cols]);

    // A layer on packed weights gives the dense layer's outputs.
    let x = pseudo_random(5 * cols, 10);
    let bias = pseudo_random(rows, 11);
    let packed = Linear::new(p.clone(), Some(bias.clone()), rows, cols);
    let plain = Linear::new(dense.clone(), Some(bias), rows, cols);
    let (a, b) = (packed.forward(&x, 5), plain.forward(&x, 5));
    assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())), "packed and dense layers agree");
    assert!(p.packed_rows().is_some(), "multiplying does not decode the whole matrix");

    // Reading it as a slice decodes it whole, once; writing makes an owned copy.
    assert_eq!(&p[..], &dense[..]);
    assert!(p.packed_rows().is_none());
    let mut owned = p.clone();
    owned[0] = 1.0;
    assert_eq!(owned[0], 1.0);
    assert_eq!(p[0], dense[0]);

    let e = load_checked_weights(&f, &path, "bad", &[rows, cols]).unwrap_err().to_string();
    assert!(e.contains("bad") && e.contains("row 700, column 0") && e.contains("NaN"), "{e}");
}
