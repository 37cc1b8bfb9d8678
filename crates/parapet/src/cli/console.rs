//! `parapet console token`: makes a console token and prints it with the `[[console.tokens]]`
//! block to paste into `parapet.toml` (which holds only the token's SHA-256).

use crate::config::ConsoleRole;
use std::process::ExitCode;

/// `parapet console` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ConsoleCommand {
    /// Make a token; prints it (first line) and a ready `[[console.tokens]]` block.
    Token {
        /// Who will hold it (named in the audit events of what it does).
        #[arg(long)]
        name: String,
        /// `auditor` (reads the audit trail) or `operator` (also acts).
        #[arg(long, value_enum)]
        role: ConsoleRole,
        /// The gateway user whose groups decide what the token may approve.
        #[arg(long)]
        user: Option<String>,
    },
}

/// The `[[console.tokens]]` block for a token.
pub fn token_block(name: &str, role: ConsoleRole, sha256: &str, user: Option<&str>) -> String {
    let q = |s: &str| toml::Value::from(s).to_string();
    let role = match role {
        ConsoleRole::Auditor => "auditor",
        ConsoleRole::Operator => "operator",
    };
    let mut b = format!(
        "[[console.tokens]]\nname = {}\nrole = {}\nsha256 = {}\n",
        q(name),
        q(role),
        q(sha256)
    );
    if let Some(u) = user {
        b.push_str(&format!("user = {}\n", q(u)));
    }
    b
}

/// Runs `parapet console …`.
pub fn run(cmd: ConsoleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConsoleCommand::Token { name, role, user } => {
            let token = crate::console::auth::generate();
            crate::outln!("{token}")?;
            crate::outln!()?;
            crate::outln!(
                "# Add to parapet.toml (only the token's SHA-256 is stored; keep the token itself secret):"
            )?;
            crate::out!(
                "{}",
                token_block(
                    &name,
                    role,
                    &crate::console::auth::digest(&token),
                    user.as_deref()
                )
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
