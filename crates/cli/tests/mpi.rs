//! `quantize` across MPI ranks (`mpirun -np N quantsmith quantize …`, the `mpi` feature) on
//! the tiny model: every configuration writes the bytes of the single-process run, whatever
//! the number of ranks (including ranks without a batch in the last round); what MPI cannot
//! run yet, and failures on any rank, are one clear error and leave nothing behind.
//!
//! Run with `cargo test --release -p quantsmith-cli --features mpi --test mpi` (needs
//! `mpirun`: Debian's openmpi-bin).
#![cfg(feature = "mpi")]

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mpirun(np: usize, args: &[String]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_quantsmith"))
        .args(args)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun (Debian: openmpi-bin) must be installed for the mpi feature's tests")
}

fn solo(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantsmith")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `p` (a file or a directory), relative name → bytes.
fn contents(p: &Path) -> Vec<(String, Vec<u8>)> {
    if p.is_file() {
        return vec![(String::new(), std::fs::read(p).unwrap())];
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_file() {
            v.push((e.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&e).unwrap()));
        }
    }
    v.sort();
    v
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    calib: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = tiny::Tiny::default().gguf_in(&root);
    let calib = root.join("calib.txt");
    std::fs::write(&calib, tiny::text(0, 60_000).1).unwrap();
    Setup { _dir: dir, root, model, calib }
}

/// `quantize MODEL --out OUT <tail> --calib … --calib-samples 20 --calib-len 64` (20 windows
/// in batches of 8: three batches, the last short).
fn args(s: &Setup, out: &Path, tail: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        vec!["quantize".into(), s.model.display().to_string(), "--out".into(), out.display().to_string()];
    v.extend(tail.iter().map(|s| s.to_string()));
    v.extend(
        ["--calib", s.calib.to_str().unwrap(), "--calib-samples", "20", "--calib-len", "64", "--progress", "none"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

#[test]
fn every_rank_count_writes_the_single_process_bytes() {
    let s = setup();
    let configs: [(&str, &str, &[&str]); 5] = [
        ("gguf-gptq", "x.gguf", &["--preset", "Q4_0", "--method", "gptq"]),
        ("gguf-rtn-imatrix", "x.gguf", &["--preset", "Q4_0", "--method", "rtn", "--imatrix"]),
        (
            "fq-asym-lowrank",
            "fq",
            &["--layout", "fake-quant", "--scheme", "blk.*=int3:g32", "--method", "gptq-asym", "--lowrank", "4:int8"],
        ),
        (
            "ct-smoothquant",
            "ct",
            &[
                "--layout",
                "compressed-tensors",
                "--scheme",
                "blk.*=int4:g64",
                "--method",
                "gptq",
                "--transform",
                "smoothquant",
            ],
        ),
        (
            "gptq-awq",
            "gq",
            &["--layout", "gptq", "--scheme", "blk.*=int4:g64:scale=f16", "--method", "gptq", "--transform", "awq"],
        ),
    ];
    for (name, out, tail) in configs {
        let d1 = s.root.join(format!("{name}-1"));
        std::fs::create_dir_all(&d1).unwrap();
        let o = solo(&args(&s, &d1.join(out), tail));
        assert!(o.status.success(), "{name}, one process: {}", stderr(&o));
        let reference = contents(&d1.join(out));
        for np in [2, 3] {
            let d = s.root.join(format!("{name}-{np}"));
            std::fs::create_dir_all(&d).unwrap();
            let o = mpirun(np, &args(&s, &d.join(out), &[tail, &["--threads", "1"]].concat()));
            assert!(o.status.success(), "{name}, {np} ranks: {}", stderr(&o));
            assert!(contents(&d.join(out)) == reference, "{name}: {np} ranks wrote other bytes than one process");
            // Rank 0 alone writes: the output, its report and chart; no work directory left.
            let mut left: Vec<String> =
                std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            left.sort();
            let stem = out.split('.').next().unwrap();
            assert_eq!(left, vec![out.to_string(), format!("{stem}.md"), format!("{stem}.svg")], "{name}, {np} ranks");
            // One report, from rank 0.
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert_eq!(stdout.matches("wrote ").count(), 1, "{name}, {np} ranks: {stdout}");
        }
    }
}

#[test]
fn what_mpi_cannot_run_and_failures_on_a_rank_are_clear_errors() {
    let s = setup();
    let d = s.root.join("err");
    std::fs::create_dir_all(&d).unwrap();
    // Only quantize is split across ranks.
    let o =
        mpirun(2, &["eval".to_string(), s.model.display().to_string(), "--text".into(), s.calib.display().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("only `quantize` runs across MPI ranks"), "{}", stderr(&o));
    // RSQ's weights are normalised over every token: refused across ranks.
    let out = d.join("x.gguf");
    let o = mpirun(2, &args(&s, &out, &["--preset", "Q4_0", "--method", "gptq", "--calib-weighting", "rsq"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--calib-weighting rsq: not supported across MPI ranks"), "{}", stderr(&o));
    // A bad input fails on every rank: an error, no hang, nothing written.
    let missing = s.root.join("missing.gguf");
    let mut a = args(&s, &out, &["--preset", "Q4_0", "--method", "gptq"]);
    a[1] = missing.display().to_string();
    let o = mpirun(2, &a);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.gguf"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "something was left in the output directory");
}
