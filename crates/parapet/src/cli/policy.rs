//! `parapet policy …`.

use std::process::ExitCode;

/// `parapet policy` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate policies against the schema.
    Check {},
}

/// Runs `parapet policy …`.
pub fn run(_cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet policy` is not implemented yet")
}
