//! `parapet user`.

use std::process::ExitCode;

/// `parapet user` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Print a SCRAM-SHA-256 verifier for a new user.
    Add {},
}

/// Runs `parapet user`.
pub fn run(_cmd: UserCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet user` is not implemented yet")
}
