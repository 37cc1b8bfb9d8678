//! `parapet events` (the console's search and live tail, from a terminal, straight from the log)
//! and `parapet index rebuild` (the console's search index, made anew from the log).

use crate::console::index::{self, Filter, Indexed, Preparer};
use anyhow::Context;
use parapet_log::LogReader;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `parapet events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Log directory.
    #[arg(long)]
    pub log: PathBuf,
    /// Gateway user.
    #[arg(long)]
    pub user: Option<String>,
    /// Target name.
    #[arg(long)]
    pub target: Option<String>,
    /// allow, deny, review or monitor.
    #[arg(long)]
    pub decision: Option<String>,
    /// A rule id among the decision's rules.
    #[arg(long)]
    pub rule: Option<String>,
    /// A table read or written (`schema.name`, or a bare name).
    #[arg(long)]
    pub table: Option<String>,
    /// Session id.
    #[arg(long)]
    pub session: Option<String>,
    /// Event type (decision, outcome, session_start, …).
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Full text: every word required, "…" a phrase, a trailing * a prefix.
    #[arg(long)]
    pub q: Option<String>,
    /// RFC 3339: events at or after.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339: events before.
    #[arg(long)]
    pub until: Option<String>,
    /// How many of the newest matching events to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Keep going: print new matching events as they are published.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line (`{"index":N,"event":{…}}`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `parapet index` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum IndexCommand {
    /// Make the console's search index anew from the log (stop `parapet serve` first).
    Rebuild {
        /// Configuration file (its `[log] dir` and `[console] index`).
        #[arg(long, short, default_value = "parapet.toml", env = "PARAPET_CONFIG")]
        config: PathBuf,
    },
}

fn filter(a: &EventsArgs) -> anyhow::Result<Filter> {
    for t in [&a.since, &a.until].into_iter().flatten() {
        index::normalise_time(t)?;
    }
    Ok(Filter {
        user: a.user.clone(),
        target: a.target.clone(),
        decision: a.decision.clone(),
        rule: a.rule.clone(),
        table: a.table.clone(),
        session: a.session.clone(),
        kind: a.kind.clone(),
        q: a.q.clone(),
        since: a.since.clone(),
        until: a.until.clone(),
        before: None,
        limit: None,
    })
}

/// One line of the table.
fn row(e: &Indexed) -> String {
    let event = e.event();
    let f = |k: &str| event.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let time = f("time").get(..19).unwrap_or(f("time")).replace('T', " ");
    let what = match f("type") {
        "decision" => {
            let rule = e.rules.first().map(String::as_str).unwrap_or("");
            format!("{:<7} {:<28}", f("decision"), rule)
        }
        "outcome" => format!(
            "{:<7} {:<28}",
            "",
            event
                .get("tag")
                .and_then(|v| v.as_str())
                .or(event.get("sqlstate").and_then(|v| v.as_str()))
                .unwrap_or("")
        ),
        other => format!("{:<36}", other),
    };
    let text: String = f("sql")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    format!(
        "{:>8}  {time}  {:<10} {:<8} {:<14} {what} {text}",
        e.index,
        e.user.as_deref().unwrap_or("-"),
        e.target.as_deref().unwrap_or("-"),
        f("type")
    )
}

fn print(e: &Indexed, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{{\"index\":{},\"event\":{}}}", e.index, e.event())
    } else {
        crate::outln!("{}", row(e))
    }
}

/// Reads entries `from..to` of the published log in `dir`, in order, through `prep`.
fn scan(
    dir: &Path,
    prep: &mut Preparer,
    from: u64,
    to: u64,
    mut each: impl FnMut(Indexed) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let r = LogReader::open(dir)?;
    for item in r.entries(from, to) {
        let (i, bytes) = item?;
        each(prep.prepare(i, &bytes))?;
    }
    Ok(())
}

/// Runs `parapet events`. It reads the log itself (every entry, in order: the console's index
/// answers faster on large logs).
pub fn events(a: EventsArgs) -> anyhow::Result<ExitCode> {
    let f = filter(&a)?;
    let r = LogReader::open(&a.log)
        .with_context(|| format!("cannot read the log in {}", a.log.display()))?;
    let mut size = r.size();
    drop(r);
    let mut prep = Preparer::default();
    let mut newest: VecDeque<Indexed> = VecDeque::new();
    scan(&a.log, &mut prep, 0, size, |e| {
        if index::matches(&f, &e) {
            newest.push_back(e);
            if newest.len() > a.limit {
                newest.pop_front();
            }
        }
        Ok(())
    })?;
    if !a.json {
        crate::outln!(
            "{:>8}  {:<19}  {:<10} {:<8} {:<14} {:<36} statement",
            "index",
            "time (UTC)",
            "user",
            "target",
            "type",
            "decision / rule / tag"
        )?;
    }
    for e in &newest {
        print(e, a.json)?;
    }
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = LogReader::open(&a.log)?.size();
        if now > size {
            scan(&a.log, &mut prep, size, now, |e| {
                if index::matches(&f, &e) {
                    print(&e, a.json)?;
                }
                Ok(())
            })?;
            size = now;
        }
    }
}

/// Runs `parapet index …`.
pub fn index(cmd: IndexCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IndexCommand::Rebuild { config } => {
            let config = crate::config::Config::load(&config)?;
            let log_dir = &config.log.dir;
            let dir = crate::console::index_dir(config.console.as_ref(), log_dir);
            index::remove(&dir)?;
            let r = LogReader::open(log_dir)?;
            let (origin, size) = (r.checkpoint().origin.clone(), r.size());
            let mut ix = index::Index::open(&dir, &origin)?;
            let mut batch = Vec::with_capacity(10_000);
            for item in r.entries(0, size) {
                let (i, bytes) = item?;
                batch.push(ix.prepare_owned(i, bytes));
                if batch.len() == 10_000 {
                    ix.store(&batch)?;
                    batch.clear();
                }
            }
            ix.store(&batch)?;
            ix.settle()?;
            crate::outln!("indexed {size} entries of {origin} into {}", dir.display())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
