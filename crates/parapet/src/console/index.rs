//! The console's search index, derived from the log and rebuildable from it — the log stays the
//! only source of truth. One indexer thread tails the published log (what a checkpoint covers),
//! so the index never holds an entry a verifier could not check, and never sits on the statement
//! path.
//!
//! One contentless FTS5 table holds it: the statement text and reason in column `body`, and every
//! filter's value as one token of column `tags` (`u`+hex(user), `d`+hex(decision), …), so FTS5
//! intersects filters and words itself, newest first; plain tables keep each event's time and each
//! block of 1,024 events' earliest and latest time (for `since`/`until`). The events are not
//! copied: a page is read from the log's entry bundles. Indexing is cheap because it appends to
//! few B-trees (about 9 µs of CPU and 100 bytes written per event; a row, six indexes and two side
//! tables per event cost 54 µs and 3.4 KB). Outcomes and session ends take the user and target of
//! their session; tables come from the guard's analysis of the statement.

use parapet_gateway::events::{rule_ids, Fed, TextReassembler};
use rusqlite::types::Value as Val;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Search filters (the query parameters of `/api/events` and its stream).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Gateway user.
    pub user: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// `allow`, `deny`, `review` or `monitor`.
    pub decision: Option<String>,
    /// A rule id among the decision's rules.
    pub rule: Option<String>,
    /// A table read or written (`schema.name`, or `name` for any schema).
    pub table: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// Event type (`decision`, `outcome`, `session_start`, …).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Full text over statement text and reasons: every word required, `"…"` a phrase, a
    /// trailing `*` a prefix.
    pub q: Option<String>,
    /// RFC 3339; events at or after.
    pub since: Option<String>,
    /// RFC 3339; events before.
    pub until: Option<String>,
    /// Cursor: events with a smaller index (the `next` of the previous page).
    pub before: Option<String>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// One indexed event with what the filters look at.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// Its index in the log.
    pub index: u64,
    /// The event as JSON text: the entry's own bytes, or, when its `sql` was stored in parts
    /// (or it was not one line of JSON), the event rewritten (see [`Indexed::event`]).
    pub json: String,
    /// Its `type`, `time`, `decision` and `session`, when they are strings.
    pub kind: Option<String>,
    /// Time (RFC 3339, as logged).
    pub time: Option<String>,
    /// Decision (`allow`, `deny`, …).
    pub decision: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// The `count` of an `auth_failure_summary` (0 elsewhere).
    pub count: u64,
    /// User and target (of its session when the event does not name them).
    pub user: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// Rule ids.
    pub rules: Vec<String>,
    /// Tables read or written (`schema.name`).
    pub tables: Arc<BTreeSet<String>>,
    /// Statement text and reason, for full-text search.
    pub text: String,
}

impl Indexed {
    /// The event (parsed from [`Indexed::json`]).
    pub fn event(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

/// One term of a full-text query: its words (as typed: split where the index splits them, case
/// kept), and whether the last is a prefix.
struct Term {
    words: Vec<String>,
    prefix: bool,
}

/// The terms of the user's query `q` (every one required; `"…"` a phrase; a trailing `*` a
/// prefix), read once for both [`fts_query`] and [`text_matches`] so that they agree. A quoted
/// phrase of punctuation alone stays, with no words: it matches nothing, as in FTS5. A bare word
/// of punctuation alone is dropped.
fn query_terms(q: &str) -> Vec<Term> {
    let runs = |t: &str| -> Vec<String> {
        t.split(separates)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut terms = Vec::new();
    let mut rest = q.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let (phrase, after) = r.split_once('"').unwrap_or((r, ""));
            rest = after.trim_start();
            if !phrase.trim().is_empty() {
                terms.push(Term {
                    words: runs(phrase),
                    prefix: false,
                });
            }
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = rest[end..].trim_start();
        let (w, prefix) = word.strip_suffix('*').map_or((word, false), |w| (w, true));
        let words = runs(w);
        if !words.is_empty() {
            terms.push(Term { words, prefix });
        }
    }
    terms
}

/// A full-text query in FTS5 syntax built from the user's words (never passed through raw).
pub fn fts_query(q: &str) -> Option<String> {
    let terms: Vec<String> = query_terms(q)
        .iter()
        .map(|t| {
            let star = if t.prefix { "*" } else { "" };
            format!("\"{}\"{star}", t.words.join(" "))
        })
        .collect();
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// Normalises an RFC 3339 time to the log's own form (UTC, microseconds), so times compare as
/// text.
pub fn normalise_time(t: &str) -> anyhow::Result<String> {
    let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("{t:?} is not an RFC 3339 time ({e})"))?;
    Ok(parapet_gateway::events::rfc3339_micros(
        parsed.to_offset(time::UtcOffset::UTC),
    ))
}

/// Whether `e` passes `f` (the stream's live filter; the same meaning as the SQL search).
pub fn matches(f: &Filter, e: &Indexed) -> bool {
    let eq = |want: &Option<String>, got: Option<&str>| {
        want.as_ref().is_none_or(|w| Some(w.as_str()) == got)
    };
    if !eq(&f.user, e.user.as_deref())
        || !eq(&f.target, e.target.as_deref())
        || !eq(&f.decision, e.decision.as_deref())
        || !eq(&f.session, e.session.as_deref())
        || !eq(&f.kind, e.kind.as_deref())
    {
        return false;
    }
    if let Some(r) = &f.rule {
        if !e.rules.iter().any(|x| x == r) {
            return false;
        }
    }
    if let Some(t) = &f.table {
        let hit = e
            .tables
            .iter()
            .any(|x| x == t || (!t.contains('.') && x.rsplit('.').next() == Some(t.as_str())));
        if !hit {
            return false;
        }
    }
    let time = e.time.as_deref().unwrap_or("");
    if let Some(s) = f.since.as_deref().and_then(|s| normalise_time(s).ok()) {
        if time < s.as_str() {
            return false;
        }
    }
    if let Some(u) = f.until.as_deref().and_then(|s| normalise_time(s).ok()) {
        if time >= u.as_str() {
            return false;
        }
    }
    if let Some(q) = &f.q {
        if !text_matches(q, &e.text) {
            return false;
        }
    }
    true
}

/// Whether a character separates words, as FTS5's `ascii` tokenizer (the index's) has it: ASCII
/// characters other than letters and digits. Every other character is part of a word.
fn separates(c: char) -> bool {
    c.is_ascii() && !c.is_ascii_alphanumeric()
}

/// The words of `text` as the index sees them (ASCII letters folded to lower case).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(separates)
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

/// Whether `text` matches the full-text query `q` (see [`Filter::q`]) exactly as the index's
/// FTS5 search built by [`fts_query`] does.
pub fn text_matches(q: &str, text: &str) -> bool {
    let have: Vec<String> = words(text).collect();
    query_terms(q).iter().all(|t| {
        let want: Vec<String> = t.words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let Some((last, init)) = want.split_last() else {
            return false;
        };
        have.windows(want.len()).any(|w| {
            w[..init.len()] == *init
                && if t.prefix {
                    w[init.len()].starts_with(last.as_str())
                } else {
                    w[init.len()] == *last
                }
        })
    })
}

/// What the index and the live filter read of an event: its fields that are strings (as
/// `Value::as_str` has them), borrowed from the entry's JSON where it has no escapes.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Lenient<'a>,
    #[serde(borrow)]
    time: Lenient<'a>,
    #[serde(borrow)]
    session: Lenient<'a>,
    #[serde(borrow)]
    user: Lenient<'a>,
    #[serde(borrow)]
    target: Lenient<'a>,
    #[serde(borrow)]
    decision: Lenient<'a>,
    #[serde(borrow)]
    sql: Lenient<'a>,
    #[serde(borrow)]
    normalized: Lenient<'a>,
    #[serde(borrow)]
    reason: Lenient<'a>,
    #[serde(borrow)]
    rules: Option<Vec<RuleRef<'a>>>,
    count: LenientU64,
    sql_parts: LenientU64,
    normalized_parts: LenientU64,
}

/// A rule of a decision: its `id`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RuleRef<'a> {
    #[serde(borrow)]
    id: Lenient<'a>,
}

/// A string, or `None` for any other JSON value (as `Value::as_str`).
#[derive(Default)]
struct Lenient<'a>(Option<std::borrow::Cow<'a, str>>);

/// A non-negative integer, or `None` for any other JSON value (as `Value::as_u64`).
#[derive(Default)]
struct LenientU64(Option<u64>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Lenient<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(std::borrow::Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(std::borrow::Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(Some(std::borrow::Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for LenientU64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(LenientU64(v.as_u64()))
    }
}

impl<'a> Fields<'a> {
    /// The fields of `event` (for entries the typed read refuses: duplicate keys, odd shapes).
    fn of_value(event: &'a Value) -> Fields<'a> {
        let s = |k: &str| Lenient(event.get(k).and_then(Value::as_str).map(Into::into));
        let n = |k: &str| LenientU64(event.get(k).and_then(Value::as_u64));
        Fields {
            kind: s("type"),
            time: s("time"),
            session: s("session"),
            user: s("user"),
            target: s("target"),
            decision: s("decision"),
            sql: s("sql"),
            normalized: s("normalized"),
            reason: s("reason"),
            rules: Some(
                rule_ids(event)
                    .map(|id| RuleRef {
                        id: Lenient(Some(id.into())),
                    })
                    .collect(),
            ),
            count: n("count"),
            sql_parts: n("sql_parts"),
            normalized_parts: n("normalized_parts"),
        }
    }

    /// The text full-text search reads: the statement (or its normalised form) and the reason.
    fn text(&self) -> String {
        let mut text = self
            .sql
            .0
            .as_deref()
            .or(self.normalized.0.as_deref())
            .unwrap_or_default()
            .to_string();
        if let Some(r) = self.reason.0.as_deref() {
            text.push('\n');
            text.push_str(r);
        }
        text
    }
}

/// Turns log entries, read in order, into [`Indexed`] events: reassembles texts stored in parts
/// and remembers each session's user and target.
#[derive(Default)]
pub struct Preparer {
    /// Texts of decisions stored in parts, reassembled across batches.
    texts: TextReassembler,
    /// Each session's user and target.
    sessions: HashMap<String, (Option<String>, Option<String>)>,
    /// Tables of each normalised statement seen lately: parsing is most of an entry's indexing
    /// cost, and a workload repeats a few statement shapes with different literals.
    shapes: HashMap<String, Arc<BTreeSet<String>>>,
}

/// Statement shapes remembered by a [`Preparer`] before it forgets them all.
const SHAPES: usize = 4096;

/// The index database.
pub struct Index {
    conn: Connection,
    path: PathBuf,
    prep: Preparer,
}

/// The index's layout; an index of another layout is rebuilt from the log when opened.
const SCHEMA_VERSION: &str = "3";

/// The layout of the index at `path`, if there is one (`"1"` for indexes that predate the mark).
fn schema_of(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let v: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k = 'schema'", [], |r| r.get(0))
        .optional()
        .ok()?;
    Some(v.unwrap_or_else(|| "1".into()))
}

/// `synchronous = OFF`: the index is derived and rebuilt when it is found inconsistent on open
/// (see [`Index::open`]); a transaction holds a batch and the mark of what is indexed together.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (idx INTEGER PRIMARY KEY, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (block INTEGER PRIMARY KEY, lo TEXT NOT NULL, hi TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5(
  body, tags, content='', columnsize=0, tokenize='ascii');
";

/// Removes the index database at `path` with its WAL files.
fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot remove the old index {p:?}: {e}"),
        }
    }
    Ok(())
}

/// Opens (creating) the database at `path` for writing.
fn open_db(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(SCHEMA)?;
    // The writer keeps the hot pages in memory (64 MiB; SQLite's default is 2 MiB). FTS5 merges
    // 8 segments of a level instead of 4: a sixth less CPU for indexing, a few more segments for
    // a search to read.
    conn.execute_batch(
        "PRAGMA cache_size = -65536;
         INSERT INTO terms (terms, rank) VALUES ('automerge', 8);",
    )?;
    Ok(conn)
}

/// Why the index at `conn` cannot be resumed, if it cannot: its mark of what is indexed must
/// be the newest event it holds, plus one (a crash with `synchronous = OFF` may lose the end).
fn unresumable(conn: &Connection) -> anyhow::Result<Option<String>> {
    let mark: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k = 'indexed'", [], |r| r.get(0))
        .optional()?;
    let Some(mark) = mark else {
        return Ok(None);
    };
    let newest: Option<i64> = conn.query_row("SELECT max(idx) FROM events", [], |r| r.get(0))?;
    let held = newest.map_or(0, |n| n + 1).to_string();
    Ok((held != mark).then(|| format!("says {mark} entries are indexed but holds {held}")))
}

impl Index {
    /// Opens (creating) the index in directory `dir`, for the log of `origin`: an index made for
    /// another log is refused; one of another layout, or found inconsistent, is rebuilt.
    pub fn open(dir: &Path, origin: &str) -> anyhow::Result<Index> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the index directory {}: {e}", dir.display())
        })?;
        let path = dir.join("events.sqlite");
        if let Some(old) = schema_of(&path) {
            if old != SCHEMA_VERSION {
                // The index is derived from the log: an older layout is rebuilt, not migrated.
                tracing::warn!(
                    "the search index {} has layout {old:?}, this version uses {SCHEMA_VERSION:?}: rebuilding it from the log",
                    path.display()
                );
                remove_db(&path)?;
            }
        }
        let mut conn = open_db(&path)?;
        let have: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'origin'", [], |r| r.get(0))
            .optional()?;
        if let Some(o) = have.as_ref().filter(|o| *o != origin) {
            anyhow::bail!(
                "the index in {} belongs to log {o:?}, not {origin:?}: remove it or run `parapet index rebuild`",
                dir.display()
            );
        }
        if let Some(why) = unresumable(&conn)? {
            tracing::warn!(
                "the search index {} {why}: rebuilding it from the log",
                path.display()
            );
            drop(conn);
            remove_db(&path)?;
            conn = open_db(&path)?;
        }
        conn.execute(
            "INSERT OR IGNORE INTO meta (k, v) VALUES ('origin', ?1), ('indexed', '0'), ('schema', ?2)",
            params![origin, SCHEMA_VERSION],
        )?;
        Ok(Index {
            conn,
            path,
            prep: Preparer::default(),
        })
    }

    /// Opens the index as [`Index::open`] does, for a log whose published size is `size`: an
    /// index that holds more entries than that (a log restored from an older copy) is rebuilt,
    /// so that it never claims an entry the log lacks.
    pub fn open_for_log(dir: &Path, origin: &str, size: u64) -> anyhow::Result<Index> {
        let ix = Index::open(dir, origin)?;
        let held = ix.indexed()?;
        if held <= size {
            return Ok(ix);
        }
        tracing::warn!(
            "the search index {} holds {held} entries but the log only {size}: rebuilding it from the log",
            ix.path.display()
        );
        let path = ix.path.clone();
        drop(ix);
        remove_db(&path)?;
        Index::open(dir, origin)
    }

    /// The database file (readers open it read-only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many entries are indexed (entries `0..n`).
    pub fn indexed(&self) -> anyhow::Result<u64> {
        let v: String = self
            .conn
            .query_row("SELECT v FROM meta WHERE k = 'indexed'", [], |r| r.get(0))?;
        Ok(v.parse()?)
    }

    /// Builds the indexed form of the entry at `index` (entries in order).
    pub fn prepare(&mut self, index: u64, bytes: &[u8]) -> Indexed {
        self.prep.prepare(index, bytes)
    }

    /// Stores a batch of prepared events (in index order, starting at [`Index::indexed`]) in
    /// one transaction.
    pub fn store(&mut self, batch: &[Indexed]) -> anyhow::Result<()> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let tx = self.conn.transaction()?;
        {
            // The earliest and latest time of each block of events this batch touches.
            let mut blocks: Vec<(i64, &str, &str)> = Vec::new();
            for e in batch {
                let (b, t) = (
                    i64::try_from(e.index / BLOCK)?,
                    e.time.as_deref().unwrap_or(""),
                );
                match blocks.last_mut() {
                    Some((lb, lo, hi)) if *lb == b => {
                        *lo = (*lo).min(t);
                        *hi = (*hi).max(t);
                    }
                    _ => blocks.push((b, t, t)),
                }
            }
            let mut block = tx.prepare_cached(
                "INSERT INTO blocks (block, lo, hi) VALUES (?1, ?2, ?3) ON CONFLICT (block) \
                 DO UPDATE SET lo = min(lo, excluded.lo), hi = max(hi, excluded.hi)",
            )?;
            for (b, lo, hi) in blocks {
                block.execute(params![b, lo, hi])?;
            }
            let mut ev = tx.prepare_cached("INSERT INTO events (idx, time) VALUES (?1, ?2)")?;
            let mut fts =
                tx.prepare_cached("INSERT INTO terms (rowid, body, tags) VALUES (?1, ?2, ?3)")?;
            let mut tags = String::new();
            for e in batch {
                let idx = i64::try_from(e.index)?;
                let time = e.time.as_deref().unwrap_or("");
                ev.execute(params![idx, time])?;
                tags.clear();
                tags_of(e, &mut tags);
                fts.execute(params![idx, e.text, tags])?;
            }
        }
        tx.execute(
            "UPDATE meta SET v = ?1 WHERE k = 'indexed'",
            params![(last.index + 1).to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Appends to `out` the token of a filter's value: the filter's letter and the value's bytes in
/// hex, one word for FTS5's `ascii` tokenizer whatever the value holds (case kept). (Shorter
/// tokens, with only the bytes other than `a`–`y` and `0`–`9` escaped, made no measurable
/// difference to indexing.)
fn token(out: &mut String, kind: char, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !out.is_empty() {
        out.push(' ');
    }
    out.push(kind);
    for b in value.bytes() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// The `tags` of an event: a token per filter that can select it, as [`matches`] reads the
/// event (`k` type, `u` user, `g` target, `d` decision, `s` session, `r` each rule, `t` each
/// table as `schema.name` and `n` its name alone).
fn tags_of(e: &Indexed, out: &mut String) {
    let one = [
        ('k', e.kind.as_deref()),
        ('u', e.user.as_deref()),
        ('g', e.target.as_deref()),
        ('d', e.decision.as_deref()),
        ('s', e.session.as_deref()),
    ];
    for (kind, v) in one {
        if let Some(v) = v {
            token(out, kind, v);
        }
    }
    for r in &e.rules {
        token(out, 'r', r);
    }
    for t in e.tables.iter() {
        token(out, 't', t);
        token(out, 'n', t.rsplit('.').next().unwrap_or(t));
    }
}

/// The FTS5 query of `f`'s filters (other than the times and the cursor) and text, if any.
fn match_query(f: &Filter) -> Option<String> {
    let mut tags = String::new();
    for (kind, v) in [
        ('k', &f.kind),
        ('u', &f.user),
        ('g', &f.target),
        ('d', &f.decision),
        ('s', &f.session),
        ('r', &f.rule),
    ] {
        if let Some(v) = v {
            token(&mut tags, kind, v);
        }
    }
    if let Some(t) = &f.table {
        token(&mut tags, if t.contains('.') { 't' } else { 'n' }, t);
    }
    let mut parts = Vec::new();
    if !tags.is_empty() {
        let all: Vec<String> = tags.split(' ').map(|t| format!("\"{t}\"")).collect();
        parts.push(format!("tags : ({})", all.join(" AND ")));
    }
    if let Some(q) = f.q.as_deref().and_then(fts_query) {
        parts.push(format!("body : ({q})"));
    }
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// An entry as served and streamed: its event, with `sql` put back when the decision's text was
/// stored in parts before it (`texts` has been fed the entries before), and that event as
/// one-line JSON (the entry's own bytes when they are).
fn read_entry(texts: &mut TextReassembler, bytes: &[u8]) -> (Value, String) {
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    // The entry's own bytes are served unless the event is rewritten below.
    let mut json = parsed
        .is_some()
        .then(|| std::str::from_utf8(bytes).ok().map(str::to_string))
        .flatten()
        // One line, as the live stream's `data:` field needs.
        .filter(|j| !j.contains(['\n', '\r']));
    let mut event = parsed.unwrap_or_else(|| serde_json::json!({"type": "unreadable"}));
    if let Ok(Fed::Decision(t)) = texts.feed(&event) {
        if event.get("sql").is_none() {
            if let (Some(sql), Some(o)) = (t.sql, event.as_object_mut()) {
                o.insert("sql".into(), Value::String(sql));
                json = None;
            }
        }
    }
    let json = json.unwrap_or_else(|| event.to_string());
    (event, json)
}

impl Preparer {
    /// Builds the indexed form of the entry at `index` (entries in order).
    pub fn prepare(&mut self, index: u64, bytes: &[u8]) -> Indexed {
        // Most entries are one line of JSON that is neither a part of a long text nor a decision
        // whose text is in parts: they are read into [`Fields`] alone, without a `Value` (a
        // third of the indexer's time went to building and dropping it).
        let line = std::str::from_utf8(bytes)
            .ok()
            .filter(|j| !j.contains(['\n', '\r']));
        let fast = line
            .and_then(|j| serde_json::from_str::<Fields>(j).ok())
            .filter(|f| {
                let parts = f.sql_parts.0.unwrap_or(0) > 0 || f.normalized_parts.0.unwrap_or(0) > 0;
                match f.kind.0.as_deref() {
                    Some("statement_text") => false,
                    Some("decision") => !parts || f.sql.0.is_some(),
                    _ => true,
                }
            });
        match fast {
            Some(fields) => {
                // What feeding the entry itself would do: end any run of parts.
                let _ = self.texts.feed(&Value::Null);
                let json = line.unwrap_or_default().to_string();
                self.indexed(index, &fields, json)
            }
            None => {
                let (event, json) = read_entry(&mut self.texts, bytes);
                self.indexed(index, &Fields::of_value(&event), json)
            }
        }
    }

    fn indexed(&mut self, index: u64, f: &Fields<'_>, json: String) -> Indexed {
        let owned = |l: &Lenient<'_>| l.0.as_deref().map(str::to_string);
        let session = owned(&f.session);
        let (mut user, mut target) = (owned(&f.user), owned(&f.target));
        if let Some(s) = &session {
            let known = self.sessions.entry(s.clone()).or_default();
            if user.is_some() || target.is_some() {
                *known = (user.clone(), target.clone());
            } else {
                (user, target) = known.clone();
            }
            if f.kind.0.as_deref() == Some("session_end") {
                self.sessions.remove(s);
            }
        }
        let rules: Vec<String> = f
            .rules
            .iter()
            .flatten()
            .filter_map(|r| owned(&r.id))
            .collect();
        // The normalised text names the same tables as the statement (only literals differ).
        let shape = f.normalized.0.as_deref().or(f.sql.0.as_deref());
        let tables = match shape {
            Some(shape) if shape.len() <= 1 << 20 => match self.shapes.get(shape) {
                Some(t) => t.clone(),
                None => {
                    let mut tables = BTreeSet::new();
                    for st in &parapet_guard::analyze(shape).statements {
                        tables.extend(st.reads.iter().cloned());
                        tables.extend(st.writes.iter().cloned());
                    }
                    let tables = Arc::new(tables);
                    if self.shapes.len() >= SHAPES {
                        self.shapes.clear();
                    }
                    self.shapes.insert(shape.to_string(), tables.clone());
                    tables
                }
            },
            _ => Arc::default(),
        };
        Indexed {
            index,
            json,
            kind: owned(&f.kind),
            time: owned(&f.time),
            decision: owned(&f.decision),
            session,
            count: f.count.0.unwrap_or(0),
            user,
            target,
            rules,
            tables,
            text: f.text(),
        }
    }
}

/// A page of search results, newest first, and the cursor of the next page.
pub struct Page {
    /// The events' indexes in the log (read them with [`load`]).
    pub ids: Vec<u64>,
    /// `before` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Searches the index at `path` (opened read-only).
///
/// One query: FTS5 walks the intersection of the filters' tokens and the text's words newest
/// first (checking the times, if asked, on each), or, without either, the events' table does.
pub fn search(path: &Path, f: &Filter) -> anyhow::Result<Page> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let limit = f.limit.unwrap_or(50).clamp(1, 1000);
    let before: i64 = match &f.before {
        Some(b) => b
            .parse()
            .map_err(|_| anyhow::anyhow!("before={b:?} is not a cursor from `next`"))?,
        None => i64::MAX,
    };
    let since = f.since.as_deref().map(normalise_time).transpose()?;
    let until = f.until.as_deref().map(normalise_time).transpose()?;
    // ?1 and ?2: the range of indexes searched; ?3: the FTS5 query; then the times.
    let mut args = vec![Val::Integer(0), Val::Integer(before), Val::Null];
    let query = match_query(f);
    let (from, id, time) = match &query {
        Some(q) => {
            args[2] = Val::Text(q.clone());
            (
                "terms WHERE terms MATCH ?3 AND rowid >= ?1 AND rowid < ?2",
                "rowid",
                "(SELECT time FROM events WHERE idx = terms.rowid)",
            )
        }
        None => ("events WHERE idx >= ?1 AND idx < ?2", "idx", "time"),
    };
    let mut sql = format!("SELECT {id} FROM {from}");
    for (t, op) in [(&since, ">="), (&until, "<")] {
        if let Some(t) = t {
            args.push(Val::Text(t.clone()));
            sql.push_str(&format!(" AND {time} {op} ?{}", args.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY {id} DESC LIMIT ?{}", args.len() + 1));
    let mut stmt = conn.prepare(&sql)?;
    let mut ids: Vec<u64> = Vec::new();
    // With times, only the runs of blocks whose times meet the window are searched.
    let runs = if since.is_some() || until.is_some() {
        time_runs(&conn, since.as_deref(), until.as_deref(), before)?
    } else {
        vec![(0, before)]
    };
    for (lo, hi) in runs {
        args[0] = Val::Integer(lo);
        args[1] = Val::Integer(hi.min(before));
        let want = (limit + 1 - ids.len()) as i64;
        let all = args.iter().cloned().chain([Val::Integer(want)]);
        for id in stmt.query_map(rusqlite::params_from_iter(all), |r| r.get::<_, i64>(0))? {
            ids.push(id? as u64);
        }
        if ids.len() > limit {
            break;
        }
    }
    let next = if ids.len() > limit {
        ids.truncate(limit);
        ids.last().map(u64::to_string)
    } else {
        None
    };
    Ok(Page { ids, next })
}

/// Events per block of the `blocks` table, which keeps each block's earliest and latest time.
const BLOCK: u64 = 1024;

/// The ranges of indexes `[lo, hi)` below `before`, newest first, outside which no event's time
/// is in `[since, until)`: consecutive blocks whose times meet the window, merged. Times follow
/// the log's order closely, so a window of the past skips the blocks after it.
fn time_runs(
    conn: &Connection,
    since: Option<&str>,
    until: Option<&str>,
    before: i64,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let last = (before.max(1) - 1) / BLOCK as i64;
    let mut stmt = conn.prepare_cached(
        "SELECT block FROM blocks WHERE block <= ?1 AND (?2 IS NULL OR hi >= ?2) \
         AND (?3 IS NULL OR lo < ?3) ORDER BY block DESC",
    )?;
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for b in stmt.query_map(params![last, since, until], |r| r.get::<_, i64>(0))? {
        let lo = b? * BLOCK as i64;
        let hi = lo + BLOCK as i64;
        match runs.last_mut() {
            Some(run) if run.0 == hi => run.0 = lo,
            _ => runs.push((lo, hi)),
        }
    }
    Ok(runs)
}

/// The events at `ids` as served (the JSON of [`Indexed::json`]), read from the log's entry
/// bundles through `reader`, in the order of `ids`.
pub fn load(reader: &parapet_log::LogReader, ids: &[u64]) -> anyhow::Result<Vec<(u64, String)>> {
    let mut found: HashMap<u64, String> = HashMap::with_capacity(ids.len());
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    // Entries that share a bundle (256 entries) are read in one pass.
    for group in sorted.chunk_by(|a, b| a / 256 == b / 256) {
        let (lo, hi) = (group[0], group[group.len() - 1]);
        for item in reader.entries(lo, hi + 1) {
            let (i, bytes) = item?;
            if group.binary_search(&i).is_ok() {
                found.insert(i, served(reader, i, &bytes)?);
            }
        }
    }
    Ok(ids
        .iter()
        .filter_map(|i| found.remove(i).map(|j| (*i, j)))
        .collect())
}

/// The served JSON of entry `index` (`bytes`): a decision whose text is in parts is reassembled
/// from the `statement_text` entries just before it, as the indexer did.
fn served(reader: &parapet_log::LogReader, index: u64, bytes: &[u8]) -> anyhow::Result<String> {
    let mut texts = TextReassembler::new();
    let parts = serde_json::from_slice::<Value>(bytes).ok().map_or(0, |e| {
        let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
        if e.get("type").and_then(Value::as_str) == Some("decision") && e.get("sql").is_none() {
            n("sql_parts").saturating_add(n("normalized_parts"))
        } else {
            0
        }
    });
    if parts > 0 {
        for item in reader.entries(index.saturating_sub(parts), index) {
            let (_, part) = item?;
            let v = serde_json::from_slice(&part).unwrap_or(Value::Null);
            let _ = texts.feed(&v);
        }
    }
    Ok(read_entry(&mut texts, bytes).1)
}

/// The index of the newest event in the index at `path`, if any.
pub fn newest(path: &Path) -> anyhow::Result<Option<u64>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let max: Option<i64> = conn.query_row("SELECT max(idx) FROM events", [], |r| r.get(0))?;
    Ok(max.map(|i| i as u64))
}

/// The indexes of the events after `after` (exclusive; `None`: from the start) up to `limit`,
/// oldest first (for the stream's catch-up).
pub fn after(path: &Path, after: Option<u64>, limit: usize) -> anyhow::Result<Vec<u64>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let from = after.map_or(0, |a| a as i64 + 1);
    let mut stmt =
        conn.prepare_cached("SELECT idx FROM events WHERE idx >= ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt
        .query_map(params![from, limit as i64], |r| {
            Ok(r.get::<_, i64>(0)? as u64)
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids the live filter passes in `batch`, newest first.
    fn live_ids(batch: &[Indexed], f: &Filter) -> Vec<u64> {
        batch
            .iter()
            .rev()
            .filter(|e| matches(f, e))
            .map(|e| e.index)
            .collect()
    }

    /// The ids of every page of a search, each page fetched with the previous one's cursor
    /// and no longer than the filter's limit.
    fn every_page(path: &Path, f: &Filter) -> Vec<u64> {
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = search(
                path,
                &Filter {
                    before: before.clone(),
                    ..f.clone()
                },
            )
            .expect("search");
            assert!(page.ids.len() <= f.limit.unwrap_or(50));
            got.extend(page.ids.iter().copied());
            match page.next {
                Some(n) => before = Some(n),
                None => return got,
            }
        }
    }

    #[test]
    fn full_text_queries_are_built_not_passed_through() {
        assert_eq!(
            fts_query("drop table").as_deref(),
            Some("\"drop\" AND \"table\"")
        );
        assert_eq!(
            fts_query("\"delete from\" acc*").as_deref(),
            Some("\"delete from\" AND \"acc\"*")
        );
        assert_eq!(
            fts_query("NEAR(a b) col:x").as_deref(),
            Some("\"NEAR a\" AND \"b\" AND \"col x\"")
        );
        assert_eq!(fts_query("  ").as_deref(), None);
    }

    #[test]
    fn filter_values_are_one_word_and_never_collide() {
        let tok = |v: &str| {
            let mut t = String::new();
            token(&mut t, 'u', v);
            t
        };
        assert_eq!(tok("alice"), "u616c696365");
        assert_eq!(tok("Zé"), "u5ac3a9");
        let values = [
            "a.b", "a_b", "A.b", "az2eb", "a b", "ab", "", "z", "Z", "zz", "é", "a\u{0}",
        ];
        let tokens: Vec<String> = values.iter().map(|v| tok(v)).collect();
        for (i, t) in tokens.iter().enumerate() {
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{t}"
            );
            for (j, u) in tokens.iter().enumerate() {
                assert_eq!(i == j, t == u, "{:?} {:?}", values[i], values[j]);
            }
        }
    }

    #[test]
    fn index_search_and_live_filter_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ix = Index::open(dir.path(), "test/log").expect("open");
        let events = [
            r#"{"type":"session_start","time":"2026-01-01T00:00:00.000000Z","session":"s1","user":"alice","target":"main"}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:01.000000Z","session":"s1","user":"alice","target":"main","decision":"deny","rules":[{"id":"parapet.drop","mode":"enforce","reason":"r"}],"sql":"DROP TABLE accounts","reason":"Dropping is blocked"}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:02.000000Z","session":"s1","user":"alice","target":"main","decision":"allow","rules":[],"sql":"SELECT * FROM public.accounts WHERE id = 1","reason":""}"#,
            r#"{"type":"outcome","time":"2026-01-01T00:00:03.000000Z","session":"s1","decision":2,"tag":"SELECT 1","rows":1}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:04.000000Z","session":"s2","user":"bob","target":"main","decision":"allow","rules":[],"sql":"UPDATE orders SET x = 1 WHERE id = 2","reason":""}"#,
        ];
        let batch: Vec<Indexed> = events
            .iter()
            .enumerate()
            .map(|(i, e)| ix.prepare(i as u64, e.as_bytes()))
            .collect();
        ix.store(&batch).expect("store");
        assert_eq!(ix.indexed().expect("indexed"), 5);
        let q = |f: Filter| -> Vec<u64> {
            let page = search(ix.path(), &f).expect("search");
            let via_sql: Vec<u64> = page.ids.clone();
            let mut live: Vec<u64> = batch
                .iter()
                .filter(|e| matches(&f, e))
                .map(|e| e.index)
                .collect();
            live.reverse();
            assert_eq!(via_sql, live, "{f:?}");
            via_sql
        };
        assert_eq!(
            q(Filter {
                user: Some("alice".into()),
                ..Filter::default()
            }),
            vec![3, 2, 1, 0]
        );
        assert_eq!(
            q(Filter {
                decision: Some("deny".into()),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Filter {
                rule: Some("parapet.drop".into()),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Filter {
                table: Some("accounts".into()),
                ..Filter::default()
            }),
            vec![2, 1]
        );
        assert_eq!(
            q(Filter {
                table: Some("public.orders".into()),
                ..Filter::default()
            }),
            vec![4]
        );
        assert_eq!(
            q(Filter {
                q: Some("accounts".into()),
                ..Filter::default()
            }),
            vec![2, 1]
        );
        assert_eq!(
            q(Filter {
                q: Some("\"drop table\"".into()),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Filter {
                q: Some("acc* blocked".into()),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            q(Filter {
                kind: Some("outcome".into()),
                user: Some("alice".into()),
                ..Filter::default()
            }),
            vec![3]
        );
        assert_eq!(
            q(Filter {
                since: Some("2026-01-01T01:00:02+01:00".into()),
                until: Some("2026-01-01T00:00:04Z".into()),
                ..Filter::default()
            }),
            vec![3, 2]
        );
        // Pages.
        let first = search(
            ix.path(),
            &Filter {
                limit: Some(2),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(first.ids.clone(), vec![4, 3]);
        let second = search(
            ix.path(),
            &Filter {
                limit: Some(2),
                before: first.next.clone(),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(second.ids.clone(), vec![2, 1]);
        let third = search(
            ix.path(),
            &Filter {
                limit: Some(2),
                before: second.next.clone(),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(third.ids.clone(), vec![0]);
        assert!(third.next.is_none());
        // Another log's index is refused.
        drop(ix);
        assert!(Index::open(dir.path(), "other/log").is_err());
    }

    /// Time windows over events whose times mostly follow the log (a few out of order, some
    /// without a time): the blocks skipped hold no event of the window, page after page.
    #[test]
    fn time_windows_skip_only_blocks_outside_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ix = Index::open(dir.path(), "test/log").expect("open");
        let n = 5000u64;
        let mut batch = Vec::new();
        for i in 0..n {
            let secs = if i % 997 == 0 { 4000 - i / 2 } else { i };
            let e = if i % 1500 == 7 {
                serde_json::json!({"type": "decision", "user": "u", "sql": "SELECT 1"})
            } else {
                serde_json::json!({
                    "type": "decision", "user": if i % 2 == 0 { "even" } else { "odd" },
                    "time": format!("2026-01-01T{:02}:{:02}:{:02}.000000Z", secs / 3600, secs / 60 % 60, secs % 60),
                    "sql": "SELECT 1",
                })
            };
            batch.push(ix.prepare(i, e.to_string().as_bytes()));
        }
        // In several batches, so that blocks are widened across transactions.
        for part in batch.chunks(700) {
            ix.store(part).expect("store");
        }
        let t = |s: u64| {
            format!(
                "2026-01-01T{:02}:{:02}:{:02}Z",
                s / 3600,
                s / 60 % 60,
                s % 60
            )
        };
        let windows = [
            (Some(1000), Some(1100)),
            (None, Some(10)),
            (Some(4990), None),
            (Some(2100), Some(2101)),
            (Some(6000), None),
            (Some(3000), Some(3999)),
        ];
        for (since, until) in windows {
            for user in [None, Some("even")] {
                let base = Filter {
                    since: since.map(t),
                    until: until.map(t),
                    user: user.map(str::to_string),
                    limit: Some(40),
                    ..Filter::default()
                };
                let want = live_ids(&batch, &base);
                assert_eq!(every_page(ix.path(), &base), want, "{base:?}");
            }
        }
    }

    /// The typed read of an entry gives what reading it as a `Value` gives, odd entries too.
    #[test]
    fn entries_read_without_a_value_read_as_with_one() {
        let entries: [&[u8]; 11] = [
            br#"{"type":"decision","time":"t","session":"s","user":"al\u0069ce","target":"main","decision":"deny","rules":[{"id":"parapet.drop","mode":"enforce"},{"mode":"x"},{"id":"b"}],"sql":"DROP TABLE \"A\"","reason":"no"}"#,
            br#"{"type":"outcome","session":"s","decision":3,"tag":"SELECT 1"}"#,
            br#"{"type":"decision","user":5,"target":null,"decision":["deny"],"rules":null,"normalized":"SELECT 1","sql":{"a":1}}"#,
            br#"{"type":"decision","user":"a","user":"b","rules":[]}"#,
            br#"{"type":"decision","rules":["parapet.drop"],"sql":"SELECT 1"}"#,
            br#"{"type":"auth_failure_summary","count":7}"#,
            br#"{"type":"auth_failure_summary","count":-1,"time":1.5}"#,
            b"{\"type\":\"decision\",\n\"sql\":\"SELECT 2\"}",
            b"{\"type\":\"decision\",\"note\":\"\xff\",\"sql\":\"SELECT 3\"}",
            b"not json",
            br#"{"type":"session_end","session":"s"}"#,
        ];
        let (mut fast, mut slow) = (Preparer::default(), Preparer::default());
        for (i, bytes) in entries.iter().enumerate() {
            let a = fast.prepare(i as u64, bytes);
            let (event, json) = read_entry(&mut slow.texts, bytes);
            let b = slow.indexed(i as u64, &Fields::of_value(&event), json);
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "entry {i}");
        }
    }

    /// A page is read from the log as the live stream has it: a decision whose text is stored
    /// in parts comes with its `sql` put back; other entries are their own bytes.
    #[test]
    fn pages_are_read_from_the_log_as_the_stream_shows_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log_dir, key) = (dir.path().join("log"), dir.path().join("log.key"));
        parapet_log::Log::init(&log_dir, "test/log", &key).expect("init");
        let log = parapet_log::Log::open(&log_dir, &key).expect("open log");
        let sql = "SELECT 'kilo' || 'lima'";
        let sha = parapet_gateway::events::sha256_hex(sql.as_bytes());
        let lines = [
            r#"{"type":"session_start","time":"2026-01-01T00:00:00.000000Z","session":"s1","user":"alice","target":"main"}"#.to_string(),
            serde_json::json!({"type":"statement_text","session":"s1","field":"sql","part":1,"parts":2,"sha256":sha,"text":"SELECT 'kilo' "}).to_string(),
            serde_json::json!({"type":"statement_text","session":"s1","field":"sql","part":2,"parts":2,"sha256":sha,"text":"|| 'lima'"}).to_string(),
            serde_json::json!({"type":"decision","time":"2026-01-01T00:00:01.000000Z","session":"s1","user":"alice","target":"main","decision":"allow","rules":[],"sql_sha256":sha,"sql_parts":2,"normalized":"SELECT $1 || $2","reason":""}).to_string(),
            r#"{"type":"outcome","time":"2026-01-01T00:00:02.000000Z","session":"s1","decision":3,"tag":"SELECT 1","rows":1}"#.to_string(),
        ];
        parapet_log::bulk::append_lines(&log, lines.join("\n").as_bytes(), |_| {}).expect("append");
        drop(log);
        let reader = parapet_log::LogReader::open(&log_dir).expect("reader");
        let mut ix = Index::open(&dir.path().join("index"), "test/log").expect("open");
        let batch: Vec<Indexed> = reader
            .entries(0, reader.size())
            .map(|r| r.expect("entry"))
            .map(|(i, bytes)| ix.prepare(i, &bytes))
            .collect();
        assert_eq!(batch.len(), 5);
        ix.store(&batch).expect("store");
        let page = search(
            ix.path(),
            &Filter {
                q: Some("\"kilo lima\"".into()),
                user: Some("alice".into()),
                ..Filter::default()
            },
        )
        .expect("search");
        assert_eq!(page.ids, vec![3]);
        let loaded = load(&reader, &[4, 3, 0]).expect("load");
        let want: Vec<(u64, String)> = [4, 3, 0]
            .iter()
            .map(|&i| (i, batch[i as usize].json.clone()))
            .collect();
        assert_eq!(loaded, want);
        assert!(loaded[1].1.contains(sql), "{}", loaded[1].1);
        // An index whose mark of what it holds is wrong is rebuilt on open.
        ix.conn
            .execute("UPDATE meta SET v = '9' WHERE k = 'indexed'", [])
            .expect("mark");
        drop(ix);
        let mut ix = Index::open(&dir.path().join("index"), "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 0);
        assert_eq!(newest(ix.path()).expect("newest"), None);
        // An index that holds more than the log is rebuilt too.
        ix.store(&batch).expect("store");
        drop(ix);
        let ix = Index::open_for_log(&dir.path().join("index"), "test/log", 5).expect("open");
        assert_eq!(ix.indexed().expect("indexed"), 5);
        drop(ix);
        let ix = Index::open_for_log(&dir.path().join("index"), "test/log", 3).expect("open");
        assert_eq!(ix.indexed().expect("indexed"), 0);
    }

    /// Every search gives what filtering all events one by one gives, page after page.
    #[test]
    fn text_and_filter_searches_agree_with_the_live_filter_at_every_page() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ix = Index::open(dir.path(), "test/log").expect("open");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let words = [
            "kilo",
            "lima",
            "mike",
            "Kilo_Lima",
            "naïve",
            "NAÏVE",
            "fox",
            "foxtrot",
        ];
        let mut batch = Vec::new();
        for i in 0..3000u64 {
            // Most events are one user's; one user is rare (the filter walk answers), one
            // word is rare (the text walk answers).
            let user = match rng.gen_range(0..100) {
                0 => "rare",
                1..=50 => "alice",
                _ => "bob",
            };
            let w1 = words[rng.gen_range(0..words.len())];
            let w2 = if rng.gen_range(0..200) == 0 {
                "zebra"
            } else {
                words[rng.gen_range(0..words.len())]
            };
            let decision = if rng.gen_range(0..10) == 0 {
                "deny"
            } else {
                "allow"
            };
            let rules = if decision == "deny" {
                serde_json::json!([{"id": "parapet.drop", "mode": "enforce", "reason": "r"}])
            } else {
                serde_json::json!([])
            };
            // Times out of index order, as sessions interleave; some events are outcomes.
            let e = if i % 9 == 4 {
                serde_json::json!({
                    "type": "outcome", "time": format!("2026-01-01T00:00:{:02}.000000Z", (i * 7) % 60),
                    "session": format!("s{}", i % 7), "decision": i - 1, "tag": "SELECT 1",
                })
            } else {
                serde_json::json!({
                    "type": "decision", "time": format!("2026-01-01T00:00:{:02}.000000Z", (i * 7) % 60),
                    "session": format!("s{}", i % 7), "user": user, "target": if i % 3 == 0 { "main" } else { "other" },
                    "decision": decision, "rules": rules,
                    "sql": format!("SELECT '{w1} {w2}' FROM public.t{}", i % 5), "reason": "",
                })
            };
            batch.push(ix.prepare(i, e.to_string().as_bytes()));
        }
        ix.store(&batch).expect("store");
        let some = |s: &str| Some(s.to_string());
        let filters = [
            Filter::default(),
            Filter {
                user: some("rare"),
                ..Filter::default()
            },
            Filter {
                user: some("alice"),
                ..Filter::default()
            },
            Filter {
                user: some("rare"),
                decision: some("deny"),
                ..Filter::default()
            },
            Filter {
                user: some("nobody"),
                ..Filter::default()
            },
            Filter {
                rule: some("parapet.drop"),
                table: some("t3"),
                ..Filter::default()
            },
            Filter {
                table: some("public.t2"),
                target: some("main"),
                ..Filter::default()
            },
            Filter {
                session: some("s4"),
                kind: some("outcome"),
                user: some("alice"),
                ..Filter::default()
            },
            Filter {
                since: some("2026-01-01T00:00:10Z"),
                until: some("2026-01-01T00:00:20Z"),
                user: some("bob"),
                ..Filter::default()
            },
            Filter {
                until: some("2026-01-01T00:00:03Z"),
                ..Filter::default()
            },
        ];
        let queries = [
            "kilo",
            "zebra",
            "fox*",
            "\"kilo lima\"",
            "naïve",
            "kilo_lima",
            "KILO zebra",
            "nothing",
            "foxt*",
            "\"--\" kilo",
            "-- kilo",
        ];
        for filter in &filters {
            for q in queries.iter().map(|q| Some(q.to_string())).chain([None]) {
                for limit in [5, 50] {
                    let base = Filter {
                        q: q.clone(),
                        limit: Some(limit),
                        ..filter.clone()
                    };
                    let want = live_ids(&batch, &base);
                    assert_eq!(every_page(ix.path(), &base), want, "{base:?}");
                }
            }
        }
        // The words as the index sees them: `_` separates, ASCII case folds, other letters are kept.
        assert!(text_matches("lima", "SELECT Kilo_Lima"));
        assert!(text_matches("NAÏVE", "naÏve"));
        assert!(!text_matches("naïve", "NAÏVE"));
        // A quoted phrase of punctuation alone matches nothing (as in FTS5); a bare one is no term.
        assert_eq!(
            fts_query("\"--\" kilo").as_deref(),
            Some("\"\" AND \"kilo\"")
        );
        assert!(!text_matches("\"--\" kilo", "kilo"));
        assert!(text_matches("-- kilo", "kilo"));
    }
}
