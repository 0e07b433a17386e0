//! `quantsmith eval`: perplexity and KL-divergence (decoders), embedding fidelity (encoders).

use std::path::PathBuf;

use quantsmith::arch::{self, ModelKind};
use quantsmith::eval::perplexity::{evaluate_decoders_on, PerplexityOptions};
use quantsmith::io::open_model;
use quantsmith::{Error, Result};

use crate::cmd::progress::Progress;

/// Arguments of `quantsmith eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, a Hugging Face directory, or a built-in name (smollm2, minilm, mpnet).
    /// Several decoders may be given: they are evaluated on the same chunks, the base run once.
    #[arg(required = true, num_args = 1..)]
    pub models: Vec<String>,
    /// UTF-8 text to evaluate on.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per chunk (decoders).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Evaluate at most this many chunks (decoders; default: all that fit).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Reference model to compare against (KL-divergence / cosine similarity).
    #[arg(long)]
    pub base: Option<String>,
    /// Read nested code sets (written by `quantize --nested 8,4,2`) at these bit widths:
    /// every model is evaluated once per width given (`--slice 4,2`).
    #[arg(long, value_delimiter = ',')]
    pub slice: Vec<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Reads a UTF-8 text file with an error naming it.
pub fn read_text(path: &PathBuf) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| Error::Text {
        path: path.clone(),
        msg: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    crate::cmd::check_range("--ctx", args.ctx, 4, crate::cmd::MAX_LEN, "tokens per chunk")?;
    if let Some(c) = args.chunks {
        crate::cmd::check_range("--chunks", c, 1, usize::MAX, "chunks to evaluate")?;
    }
    let text = read_text(&args.text)?;
    let mut file = open_model(&args.models[0])?;
    for &b in &args.slice {
        crate::cmd::check_range("--slice", b as usize, 1, 8, "bits of a nested code set to read")?;
    }
    if let Some(&b) = args.slice.first() {
        // Checked before any work: the first model must hold a nested set at that width.
        file.slice_nested(b)?;
    }
    match arch::model_kind(&file)? {
        ModelKind::Decoder => eval_decoder(&args, &file, &text),
        ModelKind::Encoder => eval_encoder(&args, &file, &text),
    }
}

fn eval_decoder(args: &Args, file: &quantsmith::io::ModelFile, text: &str) -> Result<()> {
    // Every model, once per slice width (or once as stored): (name, slice, decoder).
    let slices: Vec<Option<u32>> =
        if args.slice.is_empty() { vec![None] } else { args.slice.iter().map(|&b| Some(b)).collect() };
    let mut decs = Vec::new();
    let mut labels: Vec<(String, Option<u32>)> = Vec::new();
    let opts = PerplexityOptions { ctx: args.ctx, max_chunks: args.chunks, ..Default::default() };
    // The text is tokenized while the first model loads.
    let mut tokens = None;
    for (i, m) in args.models.iter().enumerate() {
        for &sl in &slices {
            let d = if i == 0 && sl == slices[0] {
                let (d, t) = arch::load_decoder_while(file, |tok| {
                    quantsmith::eval::perplexity::eval_tokens(tok, text, &args.text, &opts)
                })?;
                tokens = Some(t);
                d
            } else {
                let mut f = open_model(m)?;
                if let Some(b) = sl {
                    f.slice_nested(b)?;
                }
                if arch::model_kind(&f)? != ModelKind::Decoder {
                    return Err(Error::Other(format!("{m} is not a decoder like {}", args.models[0])));
                }
                arch::load_decoder(&f)?
            };
            decs.push(d);
            labels.push((m.clone(), sl));
        }
    }
    let base = match &args.base {
        Some(b) => {
            let bf = open_model(b)?;
            if arch::model_kind(&bf)? != ModelKind::Decoder {
                return Err(Error::Other(format!("--base {b} is not a decoder like {}", args.models[0])));
            }
            Some(arch::load_decoder(&bf)?)
        }
        None => None,
    };
    let tokens = tokens.ok_or_else(|| Error::Other("no model to evaluate".into()))??;
    let bar = Progress::new("tokens");
    let models: Vec<&quantsmith::arch::llama::Llama> = decs.iter().map(|d| &d.model).collect();
    let reports = evaluate_decoders_on(
        &models,
        base.as_ref().map(|b| &b.model),
        &decs[0].tokenizer,
        tokens,
        &args.text,
        &opts,
        &|done, total| bar.update(done, total),
    )?;
    bar.finish();
    if args.json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0]).map(|mut v| {
                if let Some(b) = labels[0].1 {
                    v["slice_bits"] = serde_json::json!(b);
                }
                v
            })
        } else {
            let list: Vec<serde_json::Value> = reports
                .iter()
                .zip(&labels)
                .map(|(r, (m, sl))| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["model"] = serde_json::Value::String(m.clone());
                    if let Some(b) = sl {
                        v["slice_bits"] = serde_json::json!(b);
                    }
                    v
                })
                .collect();
            Ok(serde_json::Value::Array(list))
        };
        let v = v.map_err(|e| Error::Other(e.to_string()))?;
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?);
        return Ok(());
    }
    if let Some(bs) = reports.first().and_then(|r| r.base_seconds) {
        println!(
            "base             {} ({bs:.1} s, run once for every model)",
            base.as_ref().map(|b| b.model.path.display().to_string()).unwrap_or_default()
        );
        println!();
    }
    for ((report, dec), (_, sl)) in reports.iter().zip(&decs).zip(&labels) {
        match sl {
            Some(b) => println!("model            {} (nested codes read at {b} bits)", dec.model.path.display()),
            None => println!("model            {}", dec.model.path.display()),
        }
        println!("text             {}", args.text.display());
        println!("chunks           {} × {} tokens ({} scored)", report.chunks, report.ctx, report.tokens_scored);
        println!("perplexity       {:.4} ± {:.5}", report.ppl, report.ppl_stderr);
        if let (Some(bp), Some(k), Some(ks), Some(t), Some(r)) =
            (report.base_ppl, report.kld_mean, report.kld_stderr, report.top1_agree, report.ppl_ratio)
        {
            println!("base perplexity  {bp:.4}");
            println!("ppl ratio        {r:.5}");
            println!("mean KLD         {k:.6} ± {ks:.6}");
            println!("top-1 agreement  {:.4}", t);
        }
        println!("time             {:.1} s on this model ({:.0} tokens/s)", report.seconds, report.tokens_per_second);
        println!();
    }
    Ok(())
}

fn eval_encoder(args: &Args, file: &quantsmith::io::ModelFile, text: &str) -> Result<()> {
    if args.models.len() > 1 || args.slice.len() > 1 {
        return Err(Error::Other("encoders are evaluated one model (and one --slice width) at a time".into()));
    }
    let model = arch::load_encoder(file)?;
    let base = match &args.base {
        Some(b) => {
            let bf = open_model(b)?;
            if arch::model_kind(&bf)? != ModelKind::Encoder {
                return Err(Error::Other(format!("--base {b} is not an encoder like {}", args.models[0])));
            }
            Some(arch::load_encoder(&bf)?)
        }
        None => None,
    };
    let bar = Progress::new("sentences");
    let report = quantsmith::eval::encoder::evaluate_encoder(&*model, base.as_deref(), text, &|d, t| bar.update(d, t))
        .map_err(|e| match e {
            Error::Other(msg) => Error::Text { path: args.text.clone(), msg },
            other => other,
        })?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?);
        return Ok(());
    }
    println!("model            {}", file.path().display());
    println!("text             {}", args.text.display());
    println!("sentences        {} ({} tokens)", report.sentences, report.tokens);
    if let (Some(m), Some(mn)) = (report.cosine_mean, report.cosine_min) {
        println!("cosine to base   mean {m:.6}, min {mn:.6}");
    }
    if let Some(r) = report.retrieval_agreement {
        println!("retrieval agree  {r:.4} (nearest neighbour among the sentences, as under the base)");
    }
    println!("time             {:.1} s ({:.0} sentences/s)", report.seconds, report.sentences_per_second);
    Ok(())
}
