//! `parapet log …` and `parapet verify`: create a log, bulk-append lines, print proofs, and
//! verify a log offline. The log itself lives in the `parapet-log` crate.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use parapet_log::note::NoteVerifier;
use parapet_log::verify::verify_log;
use parapet_log::{Log, LogReader};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// `parapet log` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LogCommand {
    /// Create an empty log and a signing key; prints the verifier key as the last line.
    Init {
        /// Directory of the new log (created if missing; must not hold a log).
        #[arg(long)]
        dir: PathBuf,
        /// Origin: the log's unique name, also the key name (e.g. example.com/audit).
        #[arg(long)]
        origin: String,
        /// File for the new Ed25519 signing key (mode 0600; never overwritten).
        #[arg(long)]
        key: PathBuf,
    },
    /// Append each line of standard input (without its newline) as one entry, durably.
    Append {
        /// Log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Signing key file of the log.
        #[arg(long)]
        key: PathBuf,
    },
    /// Finish what a crash left: publish the tiles and checkpoint of every acknowledged entry
    /// still only in the journal, and remove half-written files. Opening the log for writing
    /// (`parapet serve`, `log append`) does the same; this is for a log that is not reopened.
    Recover {
        /// Log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Signing key file of the log.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print a proof against the current checkpoint.
    #[command(subcommand)]
    Proof(ProofCommand),
    /// Load generator for crash tests: TASKS concurrent appenders, printing "INDEX ENTRY" for
    /// every acknowledged entry.
    #[command(hide = true)]
    Torture {
        /// Log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Signing key file of the log.
        #[arg(long)]
        key: PathBuf,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 32)]
        tasks: usize,
        /// Prefix of every entry (to tell runs apart).
        #[arg(long, default_value = "run")]
        tag: String,
    },
}

/// `parapet log proof` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ProofCommand {
    /// Inclusion proof of one entry, in C2SP tlog-proof format.
    Inclusion {
        /// Log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Index of the entry.
        #[arg(long)]
        index: u64,
    },
    /// Consistency proof from an older tree size to the current checkpoint.
    Consistency {
        /// Log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The older tree size.
        #[arg(long)]
        old: u64,
    },
}

/// Arguments of `parapet verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Log directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Verifier key (name+keyid+base64), or a file containing it.
    #[arg(long)]
    pub vkey: String,
    /// An older signed checkpoint: also prove it is a prefix of the current log.
    #[arg(long)]
    pub old: Option<PathBuf>,
}

/// Runs `parapet log …`.
pub fn run(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LogCommand::Init { dir, origin, key } => {
            let vkey = Log::init(&dir, &origin, &key)?;
            crate::outln!("created log {origin} in {}", dir.display())?;
            crate::outln!("signing key: {} (keep it secret)", key.display())?;
            crate::outln!("verifier key:")?;
            crate::outln!("{vkey}")?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Append { dir, key } => append(dir, key),
        LogCommand::Recover { dir, key } => {
            let before = LogReader::open(&dir)?.size();
            drop(Log::open(&dir, &key)?);
            let after = LogReader::open(&dir)?.size();
            crate::outln!(
                "log {} recovered: {after} entries ({} published from the journal)",
                dir.display(),
                after.saturating_sub(before)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Proof(ProofCommand::Inclusion { dir, index }) => {
            let r = LogReader::open(&dir)?;
            crate::out!("{}", r.inclusion_proof_text(index)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Proof(ProofCommand::Consistency { dir, old }) => {
            let r = LogReader::open(&dir)?;
            crate::out!("{}", r.consistency_proof_text(old)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Torture {
            dir,
            key,
            tasks,
            tag,
        } => torture(dir, key, tasks, tag),
    }
}

fn append(dir: PathBuf, key: PathBuf) -> anyhow::Result<ExitCode> {
    let log = Log::open(&dir, &key)?;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {human_pos} entries durable ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let stdin = std::io::stdin().lock();
    let result = parapet_log::bulk::append_lines(&log, stdin, |n| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let summary = result?;
    crate::outln!(
        "appended {} entries (indices {}..{}); log size {}",
        summary.indices.end - summary.indices.start,
        summary.indices.start,
        summary.indices.end,
        log.size()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn torture(dir: PathBuf, key: PathBuf, tasks: usize, tag: String) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let log = Log::open(&dir, &key)?;
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let log = log.clone();
            let tag = tag.clone();
            set.spawn(async move {
                let mut seq = 0u64;
                loop {
                    let entry = format!("{tag}-{t}-{seq}");
                    let idx = log.append(entry.clone().into_bytes()).await?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{idx} {entry}").map_err(crate::cli::out::stdout_error)?;
                    seq += 1;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn parse_vkey(arg: &str) -> anyhow::Result<NoteVerifier> {
    match NoteVerifier::parse(arg) {
        Ok(v) => Ok(v),
        Err(e) => {
            let p = std::path::Path::new(arg);
            if p.is_file() {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading verifier key file {arg}"))?;
                let line = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default();
                Ok(NoteVerifier::parse(line)?)
            } else {
                Err(e.into())
            }
        }
    }
}

/// Runs `parapet verify`.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let vkey = parse_vkey(&args.vkey)?;
    let old = match &args.old {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading old checkpoint {}", p.display()))?,
        ),
        None => None,
    };
    let bar = if std::io::stderr().is_terminal() {
        let size = LogReader::open(&args.dir).map(|r| r.size()).unwrap_or(0);
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} entries ({per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let result = verify_log(&args.dir, &vkey, old.as_deref(), &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(report) => {
            crate::outln!("{report}")?;
            // The summary stays one line on stdout; what the journal adds goes to stderr.
            match parapet_log::unpublished_entries(&args.dir, report.checkpoint.size) {
                Ok(0) => {}
                Ok(n) => eprintln!(
                    "note: the journal of {} holds {n} acknowledged entries beyond this checkpoint: \
                     a running writer publishes them within {} ms; if none is running (a crash), \
                     run `parapet log recover --dir {} --key KEYFILE` and verify again",
                    args.dir.display(),
                    parapet_log::PUBLISH_INTERVAL.as_millis(),
                    args.dir.display()
                ),
                Err(e) => eprintln!("note: could not read the journal: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("verification FAILED for {}: {e}", args.dir.display()),
    }
}
