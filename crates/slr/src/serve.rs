//! Lab servers (being written).

/// Arguments of `slr serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Name reported in answers.
    #[arg(long)]
    name: String,
}

/// Runs the servers.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve {}: not built yet", args.name)
}
