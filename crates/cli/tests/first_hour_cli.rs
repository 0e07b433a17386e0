//! What a new user meets in the first hour, through the real binary: requantizing is refused
//! unless asked for, type fallbacks are said, finished outputs are not overwritten, progress
//! shows in logs, `--threads`, order-independent arguments, built-in names everywhere, and
//! reports that explain themselves. The README's commands are checked against the binary.

#[path = "../../quantsmith/tests/tiny/mod.rs"]
mod tiny;

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantsmith"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run quantsmith")
}

/// Succeeds; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

/// Exit 2 with one `error:` line naming every needle.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} should mention {n:?}");
    }
    stderr
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

const FAST: [&str; 4] = ["--calib-samples", "4", "--calib-len", "32"];

#[test]
fn an_already_quantized_input_is_refused_unless_allowed_and_the_report_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let o = out.to_str().unwrap();
    fails(
        &["quantize", "smollm2", "--out", o, "--preset", "Q3_K_M", "--method", "rtn"],
        &["already quantized", "q4_1 ×210", "bits per weight", "--allow-requantize", "larger"],
    );
    assert!(!out.exists());
    // Allowed: said on the console, recorded in the report, and this preset shrinks the file.
    let (stdout, stderr) =
        ok(&["quantize", "smollm2", "--out", o, "--preset", "Q3_K_M", "--method", "rtn", "--allow-requantize"]);
    assert!(stderr.contains("requantizing an already quantized input (q4_1"), "{stderr}");
    assert!(stdout.contains("already quantized: q4_1"), "{stdout}");
    let md = std::fs::read_to_string(dir.path().join("q.md")).unwrap();
    assert!(md.contains("already quantized: q4_1"), "{md}");
    let (j, _) = ok(&[
        "quantize",
        "smollm2",
        "--out",
        o,
        "--preset",
        "Q3_K_M",
        "--method",
        "rtn",
        "--allow-requantize",
        "--force",
        "--json",
    ]);
    let r = json(&j);
    let tensor_bytes: u64 = r["tensors"].as_array().unwrap().iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert!(tensor_bytes < r["input_bytes"].as_u64().unwrap(), "the README's preset must shrink the built-in model");
    assert!(r["input_quantization"].as_str().unwrap().contains("q4_1"));
}

#[test]
fn type_fallbacks_are_said_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q2.gguf");
    let o = out.to_str().unwrap();
    let args = ["quantize", "smollm2", "--out", o, "--preset", "Q2_K", "--method", "rtn", "--allow-requantize"];
    let (stdout, stderr) = ok(&args);
    // One line per (from, to, row length): SmolLM2's 576-wide rows do not hold 256-blocks.
    assert!(stderr.contains("type fallback q2_k → q4_0 for 120 tensors (rows of 576"), "{stderr}");
    assert!(stderr.contains("type fallback q3_k → q4_0 for 60 tensors"), "{stderr}");
    assert!(stderr.contains("blk.*.attn_q.weight"), "{stderr}");
    assert!(stdout.contains("180 tensors fell back"), "{stdout}");
    assert!(stdout.contains("fallback from q2_k"), "{stdout}");
    let md = std::fs::read_to_string(dir.path().join("q2.md")).unwrap();
    assert!(md.contains("## Type fallbacks") && md.contains("q3_k → q4_0"), "{md}");
    let (j, _) = ok(&[&args[..], &["--force", "--json", "--progress", "none"]].concat());
    let r = json(&j);
    assert_eq!(r["fallbacks"].as_array().unwrap().len(), 180);
    // A rule naming the type leaves no fallback to report.
    let (j, _) =
        ok(&[&args[..], &["--force", "--json", "--scheme", "blk.*.attn_q=q8_0", "--scheme", "blk.*.attn_k=q8_0"][..]]
            .concat());
    let r = json(&j);
    let f = r["fallbacks"].as_array().unwrap();
    assert!(f.iter().all(|f| !f["tensor"].as_str().unwrap().contains("attn_q")), "{f:?}");
    assert_eq!(f.len(), 120);
    // Reading order: blocks numerically (blk.2 before blk.10), the embedding first.
    let blocks: Vec<u64> = r["tensors"].as_array().unwrap().iter().filter_map(|t| t["block"].as_u64()).collect();
    assert!(blocks.windows(2).all(|w| w[0] <= w[1]), "{blocks:?}");
    assert_eq!(r["tensors"][0]["name"], "token_embd.weight");
    // The tied embedding under RTN: no statistics were used, and the note does not claim any.
    let note = r["tensors"][0]["note"].as_str().unwrap();
    assert!(note.contains("tied") && !note.contains("statistics"), "{note}");
}

#[test]
fn existing_outputs_and_the_input_are_never_overwritten_silently() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let out = dir.path().join("o.gguf");
    let o = out.to_str().unwrap();
    let q = ["quantize", src, "--out", o, "--preset", "Q8_0", "--method", "rtn"];
    ok(&q);
    let first = std::fs::metadata(&out).unwrap().modified().unwrap();
    fails(&q, &[o, "already exists", "--force"]);
    assert_eq!(std::fs::metadata(&out).unwrap().modified().unwrap(), first, "refused, yet rewritten");
    ok(&[&q[..], &["--force"]].concat());
    // The input itself: refused even with --force, and left as it was.
    let before = std::fs::read(src).unwrap();
    fails(&["quantize", src, "--out", src, "--preset", "Q8_0", "--method", "rtn", "--force"], &["overwrite the input"]);
    assert_eq!(std::fs::read(src).unwrap(), before);
}

#[test]
fn progress_is_printed_as_plain_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let text = dir.path().join("eval.txt");
    std::fs::write(&text, tiny::text(50_000, 6_000).1).unwrap();
    let out = dir.path().join("o.gguf");
    // Default (auto) with stderr captured: plain lines, first and last of each activity.
    let (_, stderr) =
        ok(
            &[
                &[
                    "quantize",
                    src,
                    "--out",
                    out.to_str().unwrap(),
                    "--preset",
                    "Q4_0",
                    "--eval",
                    text.to_str().unwrap(),
                ][..],
                &["--eval-ctx", "64", "--eval-chunks", "4"],
                &FAST,
            ]
            .concat(),
        );
    assert!(stderr.contains("blocks 0/2 (0%)") && stderr.contains("blocks 2/2 (100%)"), "{stderr}");
    // Evaluation counts tokens through both models: 4 chunks × 64 × (base + quantized).
    assert!(stderr.contains("eval tokens 512/512 (100%)"), "{stderr}");
    // `none` is silent; `eval` counts tokens too.
    let (_, stderr) =
        ok(&["eval", out.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "64", "--progress", "none"]);
    assert!(stderr.is_empty(), "{stderr}");
    let (_, stderr) =
        ok(&["eval", out.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "64", "--chunks", "3"]);
    assert!(stderr.contains("tokens 192/192 (100%)"), "{stderr}");
}

#[test]
fn threads_are_chosen_by_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let threads = |extra: &[&str], env: Option<&str>| -> u64 {
        let out = dir.path().join("t.gguf");
        let mut c = bin();
        c.args(["quantize", src, "--out", out.to_str().unwrap(), "--preset", "Q8_0", "--method", "rtn", "--json"]);
        c.args(["--force"]).args(extra);
        match env {
            Some(v) => c.env("RAYON_NUM_THREADS", v),
            None => c.env_remove("RAYON_NUM_THREADS"),
        };
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json(&String::from_utf8_lossy(&o.stdout))["threads"].as_u64().unwrap()
    };
    assert_eq!(threads(&["--threads", "1"], None), 1);
    assert_eq!(threads(&["--threads", "3"], Some("1")), 3, "the flag wins over the environment");
    assert_eq!(threads(&[], Some("1")), 1);
    let cores = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    assert_eq!(threads(&[], None), cores);
    fails(&["--threads", "0", "inspect", src], &["--threads 0"]);
}

#[test]
fn arguments_work_in_any_order_and_built_in_names_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    std::fs::write(&a, tiny::text(0, 20_000).1).unwrap();
    std::fs::write(&b, tiny::text(30_000, 20_000).1).unwrap();
    let out = dir.path().join("o.gguf");
    // The model after a --calib: one file per --calib, so the model is not swallowed.
    let (j, _) = ok(&[
        "quantize",
        "--calib",
        a.to_str().unwrap(),
        src,
        "--calib",
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--preset",
        "Q4_0",
        "--calib-samples",
        "4",
        "--calib-len",
        "32",
        "--json",
    ]);
    assert!(json(&j)["calib_tokens"].as_u64().unwrap() > 0);
    // `formats fit` takes built-in names as `inspect` does.
    let (fit, _) = ok(&["formats", "fit", "smollm2", "--formats", "q8_0", "--json"]);
    assert!(json(&fit)["tensors"].as_array().unwrap().len() >= 30 * 7);
}

#[test]
fn reports_explain_themselves_and_go_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let out = dir.path().join("o.gguf");
    let o = out.to_str().unwrap();
    let (stdout, _) =
        ok(&[&["quantize", src, "--out", o, "--preset", "Q4_K_M", "--report", reports.to_str().unwrap()][..], &FAST]
            .concat());
    let md_path = reports.join("o.md");
    let svg_path = reports.join("o.svg");
    assert!(md_path.exists() && svg_path.exists() && !dir.path().join("o.md").exists());
    assert!(stdout.contains(&format!("report {}", md_path.display())), "{stdout}");
    // Legends for the columns, in the console and in the file.
    assert!(stdout.contains("SQNR: the weights' signal-to-quantization-noise ratio"), "{stdout}");
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.contains("Output error: the layer's relative output error"), "{md}");
    // The chart: numbers on the error axis, and the legend beside the plot, not over it.
    let svg = std::fs::read_to_string(&svg_path).unwrap().replace('\n', "");
    let texts: Vec<(f64, String)> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| {
            let x = t.split("x=\"").nth(1)?.split('"').next()?.parse::<f64>().ok()?;
            let body = t.split('>').nth(1)?.split('<').next()?.trim().to_string();
            Some((x, body))
        })
        .collect();
    let y_labels = texts.iter().filter(|(_, b)| b.contains("e-") && b.parse::<f64>().is_ok()).count();
    assert!(y_labels >= 3, "{texts:?}");
    let legend = texts.iter().find(|(_, b)| b == "ffn_down").expect("legend entry");
    assert!(legend.0 > 820.0, "legend inside the plot: {legend:?}");
    // One measure of bits per weight, labelled the same in quantize and inspect.
    let (j, _) = ok(&[&["quantize", src, "--out", o, "--preset", "Q4_K_M", "--force", "--json"][..], &FAST].concat());
    let q = json(&j);
    let (i, _) = ok(&["inspect", o, "--json"]);
    let i = json(&i);
    let close = |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9;
    assert!(
        close(&q["format_bits_per_weight"], &i["bits_per_weight"]),
        "{} vs {}",
        q["format_bits_per_weight"],
        i["bits_per_weight"]
    );
    assert!(close(&q["bits_per_weight"], &i["file_bits_per_weight"]));
    assert_eq!(q["file_bytes"], i["file_bytes"]);
    let (text, _) = ok(&["inspect", o]);
    assert!(text.contains("in the tensors") && text.contains("counting the whole file"), "{text}");
}

#[test]
fn eval_times_each_model_and_formats_list_prints_readable_maxima() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny::Tiny::default().gguf_in(dir.path());
    let src = src.to_str().unwrap();
    let text = dir.path().join("eval.txt");
    std::fs::write(&text, tiny::text(50_000, 6_000).1).unwrap();
    let mut outs = Vec::new();
    for p in ["Q8_0", "Q4_0"] {
        let out = dir.path().join(format!("{p}.gguf"));
        ok(&["quantize", src, "--out", out.to_str().unwrap(), "--preset", p, "--method", "rtn"]);
        outs.push(out.to_str().unwrap().to_string());
    }
    let (j, _) =
        ok(&["eval", &outs[0], &outs[1], "--base", src, "--text", text.to_str().unwrap(), "--ctx", "64", "--json"]);
    let v = json(&j);
    let (a, b) = (&v[0], &v[1]);
    assert!(a["base_seconds"].as_f64().unwrap() > 0.0);
    assert_ne!(a["seconds"], b["seconds"], "each model's own time");
    let (list, _) = ok(&["formats", "list"]);
    assert!(list.contains("3.3895314e38"), "{list}");
    assert!(!list.lines().any(|l| l.chars().filter(|c| c.is_ascii_digit()).count() > 30), "{list}");
}

/// The README's commands table: every command exists, and every flag it shows is one that
/// command takes; it points to no file the repository lacks.
#[test]
fn readme_matches_the_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for l in readme.lines().filter(|l| l.starts_with("| `quantsmith ")) {
        let cell = l.split('`').nth(1).unwrap();
        let words: Vec<&str> = cell.split_whitespace().collect();
        let sub = words[1];
        // The command's help, and its subcommands' (`formats list / roundtrip / fit`).
        let mut help = ok(&[sub, "--help"]).0;
        for w in &words[2..] {
            if w.chars().all(|c| c.is_ascii_lowercase()) {
                let o = run(&[sub, w, "--help"]);
                if o.status.success() {
                    help.push_str(&String::from_utf8_lossy(&o.stdout));
                }
            }
        }
        for w in &words {
            let flag = w.trim_start_matches('[').split(['=', ']', '[', ' ']).next().unwrap();
            if flag.starts_with("--") {
                assert!(help.contains(flag), "README shows `{flag}` for `{sub}`, which does not take it");
            }
        }
    }
    for doc in ["DESIGN.md", "ARCHITECTURE.md"] {
        if readme.contains(doc) {
            assert!(root.join(doc).exists(), "README points to {doc}, which is not in the repository");
        }
    }
    // The main command's arguments parse (with --help appended, clap stops before any work;
    // an unknown flag would be a usage error), and it allows the requantization it needs.
    let main_cmd = readme.lines().find(|l| l.starts_with("cargo run --release -- quantize")).expect("main command");
    let main_cmd = main_cmd.split('#').next().unwrap();
    assert!(main_cmd.contains("--allow-requantize"), "the built-in model is quantized: {main_cmd}");
    let mut args: Vec<&str> = main_cmd.split_whitespace().skip(4).collect();
    args.push("--help");
    ok(&args);
}
