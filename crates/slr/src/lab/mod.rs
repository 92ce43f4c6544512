//! The namespace lab (being written).
use clap::Subcommand;

/// `slr lab` subcommands.
#[derive(Subcommand)]
pub enum LabCommand {
    /// Bring a lab up from a topology file.
    Up {
        /// Topology file.
        file: std::path::PathBuf,
    },
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up { file } => anyhow::bail!("lab up {}: not built yet", file.display()),
    }
}
