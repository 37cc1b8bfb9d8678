//! `parapet user add`: reads a password and prints a ready `[[users]]` snippet with its
//! SCRAM-SHA-256 verifier (the password itself is never stored).

use anyhow::{bail, Context};
use std::io::BufRead;
use std::process::ExitCode;

/// `parapet user` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Print a SCRAM-SHA-256 verifier for a new user.
    Add {
        /// User name.
        name: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// The `[[users]]` TOML snippet for a user.
pub fn snippet(name: &str, verifier: &str, groups: &[String]) -> String {
    #[derive(serde::Serialize)]
    struct U<'a> {
        name: &'a str,
        scram: &'a str,
        groups: &'a [String],
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        users: [U<'a>; 1],
    }
    let doc = Doc {
        users: [U {
            name,
            scram: verifier,
            groups,
        }],
    };
    toml::to_string(&doc).unwrap_or_else(|_| {
        format!("[[users]]\nname = {name:?}\nscram = {verifier:?}\ngroups = {groups:?}\n")
    })
}

/// Runs `parapet user`.
pub fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            groups,
            password_stdin,
        } => {
            if name.is_empty() {
                bail!("the user name must not be empty");
            }
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from stdin")?;
                line.trim_end_matches(['\n', '\r']).to_string()
            } else {
                let p = rpassword::prompt_password(format!("Password for {name}: "))
                    .context("cannot read the password from the terminal (use --password-stdin)")?;
                let again = rpassword::prompt_password("Repeat password: ")
                    .context("cannot read the password")?;
                if p != again {
                    bail!("the passwords do not match");
                }
                p
            };
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            let verifier = parapet_gateway::Verifier::generate(&password);
            crate::out!("{}", snippet(&name, &verifier, &groups))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
