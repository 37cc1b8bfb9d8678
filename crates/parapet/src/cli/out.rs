//! Writing to standard output. A reader that closes it early (`parapet … | head`) ends the
//! command quietly: the write returns [`StdoutClosed`], the command unwinds normally (closing
//! what it opened), and `parapet` exits with status [`STDOUT_CLOSED_STATUS`] and no message.

use std::io::Write;

/// Exit status when standard output was closed by its reader: 141, what a shell reports for a
/// process ended by SIGPIPE (128 + 13), as `yes | head` shows.
pub const STDOUT_CLOSED_STATUS: u8 = 141;

/// Standard output was closed by its reader (EPIPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Turns an error writing to standard output into [`StdoutClosed`] (a closed pipe) or an error
/// that says what failed.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// Whether `e` comes from a closed standard output.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

/// Writes `args` to standard output (what [`out!`](crate::out) and
/// [`outln!`](crate::outln) expand to).
pub fn write(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).map_err(stdout_error)
}

/// Writes raw bytes to standard output.
pub fn write_all(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).map_err(stdout_error)
}

/// `print!` that returns an error instead of panicking (see [`crate::cli::out`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}

/// `println!` that returns an error instead of panicking (see [`crate::cli::out`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
