//! The `parapet` command. Thin glue: parses the command line and hands each subcommand to its
//! module in `parapet::cli`.

use clap::{CommandFactory, Parser, Subcommand};
use parapet::cli;
use std::process::ExitCode;

/// Parapet: runtime guardrails and a tamper-evident audit log for production databases.
#[derive(Parser, Debug)]
#[command(name = "parapet", version, about, long_about = None)]
struct Cli {
    /// Format of the gateway's own logging on stderr: `text`, or `json` (one object per line,
    /// for journald and log shippers). Default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<cli::serve::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the PostgreSQL gateway.
    Serve(cli::serve::ServeArgs),
    /// Start a throw-away PostgreSQL cluster, a log and the gateway in front of it; nothing to configure.
    Quickstart(cli::quickstart::QuickstartArgs),
    /// Set up the gateway in front of a real database: log, key, first user, parapet.toml.
    Init(cli::init::InitArgs),
    /// Check a set-up: config, upstreams and their roles, log, key mode, TLS certificate, policies,
    /// alert receivers.
    Doctor(cli::doctor::DoctorArgs),
    /// Write man pages (one per command) into a directory.
    Man(cli::docs::ManArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cli::docs::CompletionsArgs),
    /// Manage gateway users (e.g. print a SCRAM verifier).
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Create, append to and prove things about a tamper-evident log.
    #[command(subcommand)]
    Log(cli::log::LogCommand),
    /// Verify a log (a directory, or one served over HTTP): checkpoint signature, every tile,
    /// every entry, and consistency.
    Verify(cli::log::VerifyArgs),
    /// Search the audit log, or follow it live, from a terminal.
    Events(cli::events::EventsArgs),
    /// The console's search index.
    #[command(subcommand)]
    Index(cli::events::IndexCommand),
    /// Approval requests of `review` rules: list, approve (once or as a window), deny.
    #[command(subcommand)]
    Approvals(cli::approvals::ApprovalsCommand),
    /// Console tokens (the HTTP API over the audit trail).
    #[command(subcommand)]
    Console(cli::console::ConsoleCommand),
    /// Run a transparency-log witness (C2SP tlog-witness) or create its key.
    #[command(subcommand)]
    Witness(cli::witness::WitnessCommand),
    /// Check, evaluate and replay guardrail policies.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::serve::set_log_format(cli.log_format);
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(a),
        Command::Quickstart(a) => cli::quickstart::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Doctor(a) => cli::doctor::run(a),
        Command::Man(a) => cli::docs::man(Cli::command(), a),
        Command::Completions(a) => cli::docs::completions(Cli::command(), a),
        Command::User(c) => cli::user::run(c),
        Command::Log(c) => cli::log::run(c),
        Command::Verify(a) => cli::log::verify(a),
        Command::Policy(c) => cli::policy::run(c),
        Command::Console(c) => cli::console::run(c),
        Command::Approvals(c) => cli::approvals::run(c),
        Command::Events(a) => cli::events::events(a),
        Command::Index(c) => cli::events::index(c),
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
