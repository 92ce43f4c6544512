//! `slr check -c FILE`: checks a router or host configuration file without starting anything,
//! as the daemons would read it at start and at reload; exits non-zero with the file, key and
//! value at fault.

use anyhow::{bail, Result};
use slr_config::FileKind;
use std::path::Path;

/// Checks the file and prints what it configures.
pub fn run(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    match slr_config::file_kind(&text) {
        Some(FileKind::Router) => {
            let c = slr_config::parse_router(&text, path)?;
            // The core checks what the file cannot say alone (names that must exist, ...).
            slr_core::router::Router::new(c.core.clone())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!(
                "{}: ok: router {:?} ({} level), {} virtual hosts, {} next hops",
                path.display(),
                c.name,
                c.level,
                c.core.virtual_hosts.len(),
                c.core.next_hops.len()
            );
        }
        Some(FileKind::Host) => {
            let c = slr_config::parse_host(&text, path)?;
            println!(
                "{}: ok: host agent {:?}, {} virtual subnets",
                path.display(),
                c.name,
                c.virtual_subnets.len()
            );
        }
        None => bail!(
            "{}: neither a router file ([router] table) nor a host file ([host] table)",
            path.display()
        ),
    }
    Ok(())
}
