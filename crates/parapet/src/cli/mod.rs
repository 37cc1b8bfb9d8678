//! One module per subcommand. Each exposes its clap argument type(s) and a `run` function
//! returning the process exit code.

pub mod approvals;
pub mod console;
pub mod docs;
pub mod doctor;
pub mod events;
pub mod fleet;
pub mod init;
pub mod log;
pub mod out;
pub mod policy;
pub mod quickstart;
pub mod serve;
pub mod user;
pub mod witness;

/// `n` random letters and digits (passwords, origins).
pub fn random_text(n: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}
