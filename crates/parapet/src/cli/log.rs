//! `parapet log …` and `parapet verify`.

use std::process::ExitCode;

/// `parapet log` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LogCommand {
    /// Create an empty log and a signing key.
    Init {},
}

/// Arguments of `parapet verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

/// Runs `parapet log …`.
pub fn run(_cmd: LogCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet log` is not implemented yet")
}

/// Runs `parapet verify`.
pub fn verify(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`parapet verify` is not implemented yet")
}
