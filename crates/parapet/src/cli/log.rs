//! `parapet log …` and `parapet verify`: create a log, bulk-append lines, print proofs, and
//! verify a log offline. The log itself lives in the `parapet-log` crate.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use parapet_log::http_source::HttpSource;
use parapet_log::note::{CosignatureVerifier, NoteVerifier};
use parapet_log::verify::{verify_source, verify_witnessed_source};
use parapet_log::{Log, LogReader, TileSource};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// `parapet log` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LogCommand {
    /// Create an empty log and a signing key; prints the verifier key as the last line.
    /// `--dir DIR --origin ORIGIN` creates a log directory; `--config FILE` creates the log of
    /// whichever backend the config's `[log]` names (for `backend = "postgres"`: the tables in
    /// PostgreSQL and the first checkpoint in the bucket).
    #[command(group(clap::ArgGroup::new("where").required(true).args(["dir", "config"])))]
    Init {
        /// Directory of the new log (created if missing; must not hold a log).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A parapet config file: create the log its `[log]` section describes.
        #[arg(long, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// Origin: the log's unique name, also the key name (e.g. example.com/audit). With
        /// --config, defaults to `[log] origin`.
        #[arg(long, required_unless_present = "config")]
        origin: Option<String>,
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
    /// Check a receipt (the output of `log proof inclusion`) offline: the checkpoint's
    /// signature, the witnesses' cosignatures and the inclusion proof of the entry.
    Check {
        /// The log's verifier key, or a file containing it.
        #[arg(long)]
        vkey: String,
        /// File holding the entry's exact bytes.
        #[arg(long)]
        entry: PathBuf,
        /// The receipt file (default: standard input).
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// A witness's cosignature/v1 verifier key (or a file holding it). Repeatable.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Valid cosignatures required (default: a majority of the --witness keys).
        #[arg(long)]
        min_witnesses: Option<usize>,
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
#[command(group(clap::ArgGroup::new("log").required(true).args(["dir", "url"])))]
pub struct VerifyArgs {
    /// Log directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Base URL of a log served over HTTP(S) by the C2SP tlog-tiles read API (URL/checkpoint,
    /// URL/tile/…), e.g. the console's http://HOST:PORT/log/ or a public bucket.
    #[arg(long, conflicts_with = "dir")]
    pub url: Option<String>,
    /// With --url: send `Authorization: Bearer TOKEN` (the console's /log/ needs a token
    /// unless `[console] public_log = true`).
    #[arg(long, requires = "url")]
    pub token: Option<String>,
    /// With an https:// --url: PEM file of the CA certificates to trust (default: the
    /// system's).
    #[arg(long, requires = "url")]
    pub ca_file: Option<PathBuf>,
    /// Verifier key (name+keyid+base64), or a file containing it.
    #[arg(long)]
    pub vkey: String,
    /// An older signed checkpoint: also prove it is a prefix of the current log.
    #[arg(long)]
    pub old: Option<PathBuf>,
    /// A witness's cosignature/v1 verifier key (or a file holding it). Repeatable.
    #[arg(long = "witness")]
    pub witnesses: Vec<String>,
    /// Require this many valid cosignatures, by distinct --witness keys, on a checkpoint that
    /// covers the whole verified log (default: a majority of the --witness keys).
    #[arg(long)]
    pub min_witnesses: Option<usize>,
}

/// Runs `parapet log …`.
pub fn run(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LogCommand::Init {
            dir,
            config,
            origin,
            key,
        } => {
            let (vkey, origin, place) = match (dir, config) {
                (Some(dir), _) => {
                    let origin = origin.context("--origin is required with --dir")?;
                    (
                        Log::init(&dir, &origin, &key)?,
                        origin,
                        dir.display().to_string(),
                    )
                }
                (None, Some(config)) => init_from_config(&config, origin, &key)?,
                (None, None) => bail!("give where to create the log: --dir DIR or --config FILE"),
            };
            crate::outln!("created log {origin} in {place}")?;
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
            let r = receipt_reader(&dir, index)?;
            crate::out!("{}", r.inclusion_proof_text(index)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Proof(ProofCommand::Check {
            vkey,
            entry,
            receipt,
            witnesses,
            min_witnesses,
        }) => check_receipt(vkey, entry, receipt, witnesses, min_witnesses),
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

/// `parapet log init --config FILE`: creates the log of the config's backend; returns the
/// verifier key, the origin and where the log is.
fn init_from_config(
    config: &std::path::Path,
    origin: Option<String>,
    key: &std::path::Path,
) -> anyhow::Result<(String, String, String)> {
    let config = crate::config::Config::load(config)?;
    let origin = origin.or(config.log.origin.clone()).context(
        "the log's origin is not set: add origin = \"example.com/audit\" to [log] or pass --origin",
    )?;
    match config.log.fleet() {
        Some((url, s3)) => {
            let vkey = Log::init_fleet(url, &s3, &origin, key).with_context(|| {
                format!(
                    "cannot create the fleet log (PostgreSQL {}, bucket {})",
                    redact_url(url),
                    s3.bucket
                )
            })?;
            let place = format!("PostgreSQL {} and bucket {}", redact_url(url), s3.bucket);
            Ok((vkey, origin, place))
        }
        None => {
            let dir = &config.log.dir;
            Ok((
                Log::init(dir, &origin, key)?,
                origin,
                dir.display().to_string(),
            ))
        }
    }
}

/// A PostgreSQL URL without its credentials, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((scheme, host)) => match scheme.split_once("://") {
            Some((s, _)) => format!("{s}://…@{host}"),
            None => format!("…@{host}"),
        },
        None if url.contains("password") => "(conninfo with a password)".to_string(),
        None => url.to_string(),
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

/// A log's verifier key given as text, or as a file whose last non-empty line is the key (the
/// output of `parapet log init`).
pub(crate) fn parse_vkey(arg: &str) -> anyhow::Result<NoteVerifier> {
    key_or_file(arg, NoteVerifier::parse)
}

/// A witness's `cosignature/v1` verifier key, as text or a file (the output of
/// `parapet witness init`).
pub(crate) fn parse_witness_vkey(arg: &str) -> anyhow::Result<CosignatureVerifier> {
    key_or_file(arg, CosignatureVerifier::parse)
}

fn key_or_file<T>(
    arg: &str,
    parse: impl Fn(&str) -> Result<T, parapet_log::LogError>,
) -> anyhow::Result<T> {
    match parse(arg) {
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
                Ok(parse(line)?)
            } else {
                Err(e.into())
            }
        }
    }
}

/// The reader whose checkpoint a receipt for entry `index` embeds: the cosigned checkpoint
/// when it covers the entry (so the receipt carries the witnesses' cosignatures), otherwise
/// the latest checkpoint (with a note on stderr if the log is witnessed but not yet up to the
/// entry; a log without `checkpoint.cosigned` is not witnessed, and its receipts never were).
fn receipt_reader(dir: &std::path::Path, index: u64) -> anyhow::Result<LogReader> {
    let latest = LogReader::open(dir)?;
    let path = dir.join(parapet_log::COSIGNED_CHECKPOINT);
    let cosigned = match std::fs::read(&path) {
        Ok(note) => Some(LogReader::open_at(dir, note, &path.display().to_string())?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match cosigned {
        Some(c) if c.size() > index && c.size() <= latest.size() => Ok(c),
        Some(c) if index < latest.size() => {
            eprintln!(
                "note: entry {index} is not yet covered by the cosigned checkpoint (size {}); this \
                 receipt carries the log's signature only. A running log has it cosigned within \
                 seconds; if it stays behind, the witnesses refuse the log (see its warnings).",
                c.size()
            );
            Ok(latest)
        }
        _ => Ok(latest),
    }
}

/// The `--witness` keys and the quorum of `--min-witnesses` (default: a majority of them).
fn witness_args(
    args: &[String],
    min: Option<usize>,
) -> anyhow::Result<(Vec<CosignatureVerifier>, usize)> {
    let witnesses = args
        .iter()
        .map(|w| parse_witness_vkey(w).with_context(|| format!("--witness {w}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let min = match min {
        Some(k) if witnesses.is_empty() && k > 0 => bail!(
            "--min-witnesses {k} needs the witnesses' verifier keys: give each with --witness VKEY"
        ),
        Some(k) if k > witnesses.len() => bail!(
            "--min-witnesses {k} is more than the {} --witness keys given",
            witnesses.len()
        ),
        Some(k) => k,
        None => witnesses.len() / 2 + usize::from(!witnesses.is_empty()),
    };
    Ok((witnesses, min))
}

fn check_receipt(
    vkey: String,
    entry: PathBuf,
    receipt: Option<PathBuf>,
    witnesses: Vec<String>,
    min_witnesses: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let vkey = parse_vkey(&vkey)?;
    let (witnesses, min) = witness_args(&witnesses, min_witnesses)?;
    let entry =
        std::fs::read(&entry).with_context(|| format!("reading entry {}", entry.display()))?;
    let text = match &receipt {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading receipt {}", p.display()))?,
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the receipt from standard input")?;
            s
        }
    };
    let r = parapet_log::verify::verify_receipt(&text, &entry, &vkey, &witnesses, min)
        .map_err(|e| anyhow::anyhow!("receipt check FAILED: {e}"))?;
    let by = if r.cosigners.is_empty() {
        String::new()
    } else {
        format!(", cosigned by {}", names(&r.cosigners))
    };
    crate::outln!(
        "OK: entry {} is in log {} at tree size {}{by}",
        r.index,
        r.checkpoint.origin,
        r.checkpoint.size
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `parapet verify`: the log of `--dir`, or the one served at `--url`.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.dir.is_some() && (args.token.is_some() || args.ca_file.is_some()) {
        bail!("--token and --ca-file are for a log served over HTTP (--url), not --dir");
    }
    let vkey = parse_vkey(&args.vkey)?;
    let (witnesses, min_witnesses) = witness_args(&args.witnesses, args.min_witnesses)?;
    let old = match &args.old {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading old checkpoint {}", p.display()))?,
        ),
        None => None,
    };
    let (source, what): (Box<dyn TileSource + Sync>, String) = match (&args.dir, &args.url) {
        (Some(dir), _) => (
            Box::new(parapet_log::driver::LocalDir::new(dir)),
            dir.display().to_string(),
        ),
        (None, Some(url)) => {
            let s = HttpSource::new(url, args.token.as_deref(), args.ca_file.as_deref())?;
            let what = s.base().to_string();
            (Box::new(s), what)
        }
        (None, None) => bail!("give the log to verify: --dir DIR or --url URL"),
    };
    let bar = if std::io::stderr().is_terminal() {
        let size = match &args.dir {
            Some(dir) => LogReader::open(dir).map(|r| r.size()).unwrap_or(0),
            None => 0,
        };
        let b = ProgressBar::new(size);
        let template = if size > 0 {
            "{bar:40} {human_pos}/{human_len} entries ({per_sec}, {eta})"
        } else {
            "{spinner} {human_pos} entries ({per_sec})"
        };
        b.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
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
    let result = verify_source(source.as_ref(), &vkey, old.as_deref(), &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let result = result.and_then(|report| {
        if min_witnesses == 0 {
            return Ok((report, None));
        }
        let w =
            verify_witnessed_source(source.as_ref(), &vkey, &report, &witnesses, min_witnesses)?;
        Ok((report, Some(w)))
    });
    match result {
        Ok((report, witnessed)) => {
            if let Some(w) = &witnessed {
                if !w.complete() {
                    let by = if w.cosigners.is_empty() {
                        "no valid cosignature by the given witnesses".to_string()
                    } else {
                        format!(
                            "the best cosigned checkpoint carries {} valid cosignature(s), by {}",
                            w.cosigners.len(),
                            names(&w.cosigners)
                        )
                    };
                    let invalid = if w.invalid.is_empty() {
                        String::new()
                    } else {
                        format!("; invalid cosignatures: {}", w.invalid.join("; "))
                    };
                    bail!(
                        "verification FAILED for {what}: the log is unwitnessed beyond entry {}: \
                         {} of its {} entries (indices {}..{}) lack {} valid cosignature(s) \
                         ({by}{invalid}). A running log has new entries cosigned within \
                         seconds: verify again once it is idle. If this persists, the witnesses \
                         refuse to cosign the log: it may have been rewritten or truncated (see \
                         the log's warnings).",
                        w.witnessed_size,
                        w.unwitnessed(),
                        w.log_size,
                        w.witnessed_size,
                        w.log_size,
                        w.min_witnesses
                    );
                }
                crate::outln!(
                    "{report}; witnessed: cosigned by {} of the {} given witnesses ({}; {} required)",
                    w.cosigners.len(),
                    witnesses.len(),
                    names(&w.cosigners),
                    w.min_witnesses
                )?;
            } else {
                crate::outln!("{report}")?;
            }
            // The summary stays one line on stdout; what the journal adds goes to stderr.
            if let Some(dir) = &args.dir {
                journal_note(dir, report.checkpoint.size);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("verification FAILED for {what}: {e}"),
    }
}

/// Says on stderr if the journal of `dir` holds acknowledged entries beyond size `size`.
fn journal_note(dir: &std::path::Path, size: u64) {
    match parapet_log::unpublished_entries(dir, size) {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "note: the journal of {} holds {n} acknowledged entries beyond this checkpoint: \
             a running writer publishes them within {} ms; if none is running (a crash), \
             run `parapet log recover --dir {} --key KEYFILE` and verify again",
            dir.display(),
            parapet_log::PUBLISH_INTERVAL.as_millis(),
            dir.display()
        ),
        Err(e) => eprintln!("note: could not read the journal: {e}"),
    }
}

fn names(cosigners: &[(String, u64)]) -> String {
    cosigners
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
