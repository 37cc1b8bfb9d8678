//! `parapet quickstart`.

use std::process::ExitCode;

/// Arguments of `parapet quickstart`.
#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {}

/// Runs `parapet quickstart`.
pub fn run(_args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet quickstart` is not implemented yet")
}
