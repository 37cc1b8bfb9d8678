//! The `parapet` command. Thin glue: parses the command line and hands each subcommand to its
//! module in `parapet::cli`.

use clap::{Parser, Subcommand};
use parapet::cli;
use std::process::ExitCode;

/// Parapet: runtime guardrails and a tamper-evident audit log for production databases.
#[derive(Parser, Debug)]
#[command(name = "parapet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the PostgreSQL gateway.
    Serve(cli::serve::ServeArgs),
    /// Start a throw-away PostgreSQL cluster, a log and the gateway in front of it; nothing to configure.
    Quickstart(cli::quickstart::QuickstartArgs),
    /// Manage gateway users (e.g. print a SCRAM verifier).
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Create, append to and prove things about a tamper-evident log.
    #[command(subcommand)]
    Log(cli::log::LogCommand),
    /// Verify a log offline: checkpoint signature, every tile, every entry, and consistency.
    Verify(cli::log::VerifyArgs),
    /// Run a transparency-log witness (C2SP tlog-witness) or create its key.
    #[command(subcommand)]
    Witness(cli::witness::WitnessCommand),
    /// Check, evaluate and replay guardrail policies.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(a),
        Command::Quickstart(a) => cli::quickstart::run(a),
        Command::User(c) => cli::user::run(c),
        Command::Log(c) => cli::log::run(c),
        Command::Verify(a) => cli::log::verify(a),
        Command::Policy(c) => cli::policy::run(c),
        Command::Witness(c) => cli::witness::run(c),
    };
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`| head`): nothing to say, and nobody to say it to.
        Err(e) if cli::out::is_stdout_closed(&e) => ExitCode::from(cli::out::STDOUT_CLOSED_STATUS),
        Err(e) => {
            eprintln!("parapet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
