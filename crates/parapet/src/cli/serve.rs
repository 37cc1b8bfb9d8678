//! `parapet serve`.

use std::process::ExitCode;

/// Arguments of `parapet serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs `parapet serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet serve` is not implemented yet")
}
