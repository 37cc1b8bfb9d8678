//! The console's search index, derived from the log and rebuildable from it — the log stays the
//! only source of truth. One indexer thread tails the published log (what a checkpoint covers),
//! so the index never holds an entry a verifier could not check, and never sits on the statement
//! path.
//!
//! An index of our own, append-only as the log is: each batch of events becomes an immutable
//! segment file (see [`super::segment`]) of terms and postings — every filter's value as a term
//! (`u` + user, `d` + decision, …) and every word of the statement text and reason (`w` + word,
//! as FTS5's `ascii` tokenizer splits and folds it) — with each event's time; segments of one
//! size tier are merged, eight into one, so a search reads few. A search intersects postings
//! newest first; a phrase is confirmed against the event's text read from the log. The events
//! are not copied: a page is read from the log's entry bundles. Outcomes and session ends take
//! the user and target of their session; tables come from the guard's analysis of the statement.

use super::segment;
use parapet_gateway::events::{rule_ids, Fed, TextReassembler};
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
/// prefix), read once for both [`search`] and [`text_matches`] so that they agree. A quoted
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

/// Whether a character separates words, as the index has it (as FTS5's `ascii` tokenizer, which
/// earlier indexes used, did): ASCII characters other than letters and digits. Every other
/// character is part of a word.
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
/// search does (phrases are confirmed with it).
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
        let sql = self
            .sql
            .0
            .as_deref()
            .or(self.normalized.0.as_deref())
            .unwrap_or_default();
        let reason = self.reason.0.as_deref();
        let mut text = String::with_capacity(sql.len() + reason.map_or(0, |r| r.len() + 1));
        text.push_str(sql);
        if let Some(r) = reason {
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

/// The index: segment files in a directory, each covering a run of events, one after another
/// from the first event of the log (see [`super::segment`]).
pub struct Index {
    dir: PathBuf,
    /// The segments' ranges `[start, end)`, in order, each starting where the one before ends.
    segs: Vec<(u64, u64)>,
    prep: Preparer,
    /// The merge under way in the background, if any: its inputs and its thread.
    merging: Option<Merging>,
    /// Stops the merge under way (when the index is dropped).
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// A merge under way: the ranges of its inputs and the thread writing its output.
struct Merging {
    inputs: Vec<(u64, u64)>,
    thread: std::thread::JoinHandle<std::io::Result<PathBuf>>,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = self.merging.take() {
            // Its output, if it got one, overlaps its inputs: the next open keeps the larger.
            let _ = m.thread.join();
        }
    }
}

/// The index's layout; an index of another layout is rebuilt from the log when opened (layouts
/// 1–3 were SQLite databases, `events.sqlite`).
const SCHEMA_VERSION: &str = "4";

/// The file naming the index's layout and log.
const META: &str = "index.meta";

/// Segments of one size tier merged into one.
const FANOUT: usize = 8;

/// Events of the smallest tier's largest segment, divided by [`FANOUT`].
const TIER_BASE: u64 = 4096;

/// The size tier of a segment of `count` events (0 below `TIER_BASE * FANOUT`).
fn tier(count: u64) -> u32 {
    let (mut tier, mut cap) = (0, TIER_BASE * FANOUT as u64);
    while count >= cap {
        tier += 1;
        cap = cap.saturating_mul(FANOUT as u64);
    }
    tier
}

/// Removes the index in `dir`: its segments, its mark and an older layout's database.
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot read the index directory {}: {e}", dir.display()),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == META
            || name.ends_with(".seg")
            || name.ends_with(".seg.tmp")
            || name.starts_with("events.sqlite")
        {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => anyhow::bail!(
                    "cannot remove the old index file {}: {err}",
                    e.path().display()
                ),
            }
        }
    }
    Ok(())
}

/// The layout and log named by the index's mark in `dir`, if it has one.
fn read_meta(dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join(META)).ok()?;
    let mut schema = None;
    let mut origin = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("schema ") {
            schema = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("origin ") {
            origin = Some(v.to_string());
        }
    }
    Some((schema?, origin?))
}

/// A segment's events, `[start, end)`.
type Range = (u64, u64);

/// The ranges of the segment files in `dir`: those that cover events `0..n` one after another
/// (the largest where they overlap, as a merge's output and its inputs do until these are
/// removed), and the others.
fn cover(dir: &Path) -> anyhow::Result<(Vec<Range>, Vec<Range>)> {
    let mut all = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the search index in {}: {e}; start `parapet serve` with the console, or run `parapet index rebuild`",
            dir.display()
        )
    })?;
    for e in entries {
        if let Some(r) = segment::parse_name(&e?.file_name().to_string_lossy()) {
            all.push(r);
        }
    }
    all.sort_unstable_by_key(|&(s, e)| (s, std::cmp::Reverse(e)));
    let (mut used, mut rest, mut at) = (Vec::new(), Vec::new(), 0);
    for r in all {
        if r.0 == at {
            used.push(r);
            at = r.1;
        } else {
            rest.push(r);
        }
    }
    Ok((used, rest))
}

/// Removes the file of segment `r` in `dir`.
fn remove_segment(dir: &Path, r: (u64, u64)) -> anyhow::Result<()> {
    let p = dir.join(segment::file_name(r.0, r.1));
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => anyhow::bail!("cannot remove the index segment {}: {e}", p.display()),
    }
}

impl Index {
    /// Opens (creating) the index in directory `dir`, for the log of `origin`: an index made for
    /// another log is refused; one of another layout is rebuilt; a segment that is not whole
    /// (a crash while it was written) is removed with those after it, and their events are
    /// indexed again from the log.
    pub fn open(dir: &Path, origin: &str) -> anyhow::Result<Index> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the index directory {}: {e}", dir.display())
        })?;
        match read_meta(dir) {
            Some((schema, o)) if schema == SCHEMA_VERSION => {
                if o != origin {
                    anyhow::bail!(
                        "the index in {} belongs to log {o:?}, not {origin:?}: remove it or run `parapet index rebuild`",
                        dir.display()
                    );
                }
            }
            found => {
                if found.is_some() || dir.join("events.sqlite").exists() {
                    // The index is derived from the log: an older layout is rebuilt, not migrated.
                    tracing::warn!(
                        "the search index in {} has an older layout, this version uses {SCHEMA_VERSION:?}: rebuilding it from the log",
                        dir.display()
                    );
                }
                remove(dir)?;
                let tmp = dir.join(format!(".{META}.tmp"));
                std::fs::write(&tmp, format!("schema {SCHEMA_VERSION}\norigin {origin}\n"))
                    .and_then(|()| std::fs::rename(&tmp, dir.join(META)))
                    .map_err(|e| {
                        anyhow::anyhow!("cannot write the index in {}: {e}", dir.display())
                    })?;
            }
        }
        // Segments being written when the process stopped.
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().ends_with(".seg.tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (used, rest) = cover(dir)?;
        for r in rest {
            remove_segment(dir, r)?;
        }
        let mut segs = Vec::with_capacity(used.len());
        for r in used {
            if segment::Segment::verify(&dir.join(segment::file_name(r.0, r.1)), r) {
                segs.push(r);
                continue;
            }
            tracing::warn!(
                "the search index in {} has a damaged segment (events {}..{}): indexing the log again from event {}",
                dir.display(),
                r.0,
                r.1,
                r.0
            );
            for x in cover(dir)?.0.into_iter().filter(|x| x.0 >= r.0) {
                remove_segment(dir, x)?;
            }
            break;
        }
        Ok(Index {
            dir: dir.to_path_buf(),
            segs,
            prep: Preparer::default(),
            merging: None,
            stop: Arc::default(),
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
            ix.dir.display()
        );
        drop(ix);
        remove(dir)?;
        Index::open(dir, origin)
    }

    /// The index's directory (searches read it).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// How many entries are indexed (entries `0..n`).
    pub fn indexed(&self) -> anyhow::Result<u64> {
        Ok(self.segs.last().map_or(0, |s| s.1))
    }

    /// Builds the indexed form of the entry at `index` (entries in order).
    pub fn prepare(&mut self, index: u64, bytes: &[u8]) -> Indexed {
        self.prep.prepare(index, bytes)
    }

    /// [`Index::prepare`] for an entry the caller gives up (see [`Preparer::prepare_owned`]).
    pub fn prepare_owned(&mut self, index: u64, bytes: Vec<u8>) -> Indexed {
        self.prep.prepare_owned(index, bytes)
    }

    /// Stores a batch of prepared events (in index order, starting at [`Index::indexed`]) as
    /// one segment, searchable when this returns, and merges segments of a size tier that has
    /// [`FANOUT`] of them.
    pub fn store(&mut self, batch: &[Indexed]) -> anyhow::Result<()> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let start = self.indexed()?;
        for (n, e) in batch.iter().enumerate() {
            if e.index != start + n as u64 {
                anyhow::bail!(
                    "the index holds entries 0..{start}: entry {} cannot follow (a bug: entries are indexed in order)",
                    first.index + n as u64
                );
            }
        }
        let mut b = segment::Builder::new(start);
        for e in batch {
            add_terms(&mut b, e);
        }
        let end = start + b.len();
        b.write(&self.dir).map_err(|e| {
            anyhow::anyhow!("cannot write the index in {}: {e}", self.dir.display())
        })?;
        self.segs.push((start, end));
        self.merge(false)
    }

    /// Takes in the merge under way if it is done (`wait`: waits for it), then starts the next
    /// one, if [`FANOUT`] consecutive segments are of one size tier, in the background (the
    /// thread inherits the indexer's idle scheduling class).
    fn merge(&mut self, wait: bool) -> anyhow::Result<()> {
        if let Some(m) = self.merging.take() {
            if !wait && !m.thread.is_finished() {
                self.merging = Some(m);
                return Ok(());
            }
            let out = m
                .thread
                .join()
                .map_err(|_| anyhow::anyhow!("the index's merge thread panicked"))?;
            if let Err(e) = out {
                anyhow::bail!(
                    "cannot merge the index's segments in {}: {e}",
                    self.dir.display()
                );
            }
            let at = self
                .segs
                .iter()
                .position(|s| *s == m.inputs[0])
                .ok_or_else(|| anyhow::anyhow!("the index's segments changed during a merge"))?;
            let merged = (m.inputs[0].0, m.inputs[m.inputs.len() - 1].1);
            for r in self.segs.splice(at..at + m.inputs.len(), [merged]) {
                remove_segment(&self.dir, r)?;
            }
        }
        let Some(at) = (0..self.segs.len().saturating_sub(FANOUT - 1)).find(|&i| {
            let t = tier(self.segs[i].1 - self.segs[i].0);
            self.segs[i..i + FANOUT]
                .iter()
                .all(|s| tier(s.1 - s.0) == t)
        }) else {
            return Ok(());
        };
        let inputs = self.segs[at..at + FANOUT].to_vec();
        let (dir, stop, ranges) = (self.dir.clone(), self.stop.clone(), inputs.clone());
        let thread = std::thread::Builder::new()
            .name("parapet-index-merge".into())
            .spawn(move || {
                let segs = ranges
                    .iter()
                    .map(|r| segment::Segment::open(&dir.join(segment::file_name(r.0, r.1))))
                    .collect::<std::io::Result<Vec<_>>>()?;
                segment::merge(&dir, &segs, &stop)
            })?;
        self.merging = Some(Merging { inputs, thread });
        if wait {
            return self.merge(true);
        }
        Ok(())
    }

    /// Waits for the merges due (for `parapet index rebuild`, which leaves the index as the
    /// indexer would, merges done).
    pub fn settle(&mut self) -> anyhow::Result<()> {
        self.merge(true)
    }
}

/// Adds an event's terms: one per filter that can select it, as [`matches`] reads the event
/// (`k` type, `u` user, `g` target, `d` decision, `s` session, `r` each rule, `t` each table as
/// `schema.name` and `n` its name alone; the letter, then the value's bytes), and `w` + each word
/// of its text.
fn add_terms(b: &mut segment::Builder, e: &Indexed) {
    b.event(e.time.as_deref());
    let one = [
        (b'k', e.kind.as_deref()),
        (b'u', e.user.as_deref()),
        (b'g', e.target.as_deref()),
        (b'd', e.decision.as_deref()),
        (b's', e.session.as_deref()),
    ];
    for (kind, v) in one {
        if let Some(v) = v {
            b.term(kind, v.as_bytes());
        }
    }
    for r in &e.rules {
        b.term(b'r', r.as_bytes());
    }
    for t in e.tables.iter() {
        b.term(b't', t.as_bytes());
        b.term(b'n', t.rsplit('.').next().unwrap_or(t).as_bytes());
    }
    b.words(&e.text);
}

/// The terms of `f`'s filters (other than the times and the cursor).
fn filter_terms(f: &Filter) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (kind, v) in [
        (b'k', &f.kind),
        (b'u', &f.user),
        (b'g', &f.target),
        (b'd', &f.decision),
        (b's', &f.session),
        (b'r', &f.rule),
    ] {
        if let Some(v) = v {
            out.push([&[kind][..], v.as_bytes()].concat());
        }
    }
    if let Some(t) = &f.table {
        let kind = if t.contains('.') { b't' } else { b'n' };
        out.push([&[kind][..], t.as_bytes()].concat());
    }
    out
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
        let (mut e, own) = self.prepare_inner(index, bytes);
        if own {
            e.json = String::from_utf8_lossy(bytes).into_owned();
        }
        e
    }

    /// [`Preparer::prepare`] for an entry the caller gives up: its bytes become the event's
    /// JSON when they are served as they are (most entries), without a copy.
    pub fn prepare_owned(&mut self, index: u64, bytes: Vec<u8>) -> Indexed {
        let (mut e, own) = self.prepare_inner(index, &bytes);
        if own {
            e.json = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        }
        e
    }

    /// The indexed form of an entry, and whether its JSON is the entry's own bytes (left empty
    /// here, for the caller to fill).
    fn prepare_inner(&mut self, index: u64, bytes: &[u8]) -> (Indexed, bool) {
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
                (self.indexed(index, &fields, String::new()), true)
            }
            None => {
                let (event, json) = read_entry(&mut self.texts, bytes);
                (self.indexed(index, &Fields::of_value(&event), json), false)
            }
        }
    }

    fn indexed(&mut self, index: u64, f: &Fields<'_>, json: String) -> Indexed {
        let owned = |l: &Lenient<'_>| l.0.as_deref().map(str::to_string);
        let session = owned(&f.session);
        let (mut user, mut target) = (owned(&f.user), owned(&f.target));
        if let Some(s) = &session {
            // Without cloning what the session already has (most events repeat it).
            if user.is_some() || target.is_some() {
                match self.sessions.get_mut(s.as_str()) {
                    Some(known) if known.0 == user && known.1 == target => {}
                    Some(known) => *known = (user.clone(), target.clone()),
                    None => {
                        self.sessions
                            .insert(s.clone(), (user.clone(), target.clone()));
                    }
                }
            } else if let Some(known) = self.sessions.get(s.as_str()) {
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

/// The segments that cover the index's events in `dir`, opened for reading. A merge may remove
/// a segment between the listing and the opening: the listing is then read again.
fn open_segments(dir: &Path) -> anyhow::Result<Vec<segment::Segment>> {
    for _ in 0..10 {
        let (used, _) = cover(dir)?;
        let mut segs = Vec::with_capacity(used.len());
        let mut whole = true;
        for (s, e) in used {
            match segment::Segment::open(&dir.join(segment::file_name(s, e))) {
                Ok(seg) => segs.push(seg),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    whole = false;
                    break;
                }
                Err(err) => {
                    anyhow::bail!("cannot read the search index in {}: {err}", dir.display())
                }
            }
        }
        if whole {
            return Ok(segs);
        }
    }
    anyhow::bail!(
        "the search index in {} changed under every try to read it; try again",
        dir.display()
    )
}

/// The `since`/`until` window of a search, as the log's text and as time keys.
struct Window {
    since: Option<(String, u64)>,
    until: Option<(String, u64)>,
}

impl Window {
    fn new(f: &Filter) -> anyhow::Result<Window> {
        let bound = |t: &Option<String>| -> anyhow::Result<Option<(String, u64)>> {
            Ok(match t {
                Some(t) => {
                    let n = normalise_time(t)?;
                    let k = segment::time_key(&n);
                    Some((n, k))
                }
                None => None,
            })
        };
        Ok(Window {
            since: bound(&f.since)?,
            until: bound(&f.until)?,
        })
    }

    fn active(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// Whether the bounds have keys (times in the log's form), so keys can be compared.
    fn keyed(&self) -> bool {
        [&self.since, &self.until]
            .iter()
            .all(|b| b.as_ref().is_none_or(|(_, k)| *k != segment::ODD))
    }

    /// Whether a block may hold an event of the window.
    fn meets(&self, b: &segment::TimeBlock) -> bool {
        if b.odd || !self.keyed() {
            return true;
        }
        self.since.as_ref().is_none_or(|(_, k)| b.hi >= *k)
            && self.until.as_ref().is_none_or(|(_, k)| b.lo < *k)
    }

    /// Whether an event of time key `key` (its text `odd` when the key is [`segment::ODD`]) is in
    /// the window, as [`matches`] has it.
    fn passes(&self, key: u64, odd: Option<&str>) -> bool {
        if key != segment::ODD && self.keyed() {
            return self.since.as_ref().is_none_or(|(_, k)| key >= *k)
                && self.until.as_ref().is_none_or(|(_, k)| key < *k);
        }
        let text = if key == segment::ODD {
            odd.unwrap_or_default().to_string()
        } else {
            segment::key_text(key)
        };
        self.since
            .as_ref()
            .is_none_or(|(s, _)| text.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|(u, _)| text.as_str() < u.as_str())
    }
}

/// A segment's times, read block by block as a search walks it.
struct Times<'a> {
    seg: &'a segment::Segment,
    blocks: Vec<segment::TimeBlock>,
    odd: HashMap<u32, String>,
    cached: Option<(usize, Vec<u64>)>,
}

impl<'a> Times<'a> {
    fn new(seg: &'a segment::Segment) -> anyhow::Result<Times<'a>> {
        let blocks = seg.time_blocks()?;
        let odd = if blocks.iter().any(|b| b.odd) {
            seg.odd_times()?.into_iter().collect()
        } else {
            HashMap::new()
        };
        Ok(Times {
            seg,
            blocks,
            odd,
            cached: None,
        })
    }

    /// The time key of local event `local`.
    fn key(&mut self, local: u32) -> anyhow::Result<u64> {
        let b = (u64::from(local) / segment::TIME_BLOCK) as usize;
        if self.cached.as_ref().is_none_or(|c| c.0 != b) {
            self.cached = Some((b, self.seg.block_times(&self.blocks, b)?));
        }
        let keys = self.cached.as_ref().map(|c| &c.1[..]).unwrap_or_default();
        Ok(keys
            .get((u64::from(local) % segment::TIME_BLOCK) as usize)
            .copied()
            .unwrap_or(segment::ODD))
    }
}

/// The elements of `a` also in `b` (both ascending).
fn intersect(a: &mut Vec<u32>, b: &[u32]) {
    let mut j = 0;
    a.retain(|&x| {
        j += b[j..].partition_point(|&y| y < x);
        j < b.len() && b[j] == x
    });
}

/// The text full-text search reads in a served event (as [`Preparer::prepare`] read it).
fn text_of(json: &str) -> String {
    match serde_json::from_str::<Fields>(json) {
        Ok(f) => f.text(),
        Err(_) => match serde_json::from_str::<Value>(json) {
            Ok(v) => Fields::of_value(&v).text(),
            Err(_) => String::new(),
        },
    }
}

/// Searches the index in `dir` for the log in `log_dir`.
///
/// Newest segment first: the filters' and the words' postings are intersected (a prefix's
/// terms united), the times checked if asked (whole blocks of 1,024 events skipped when their
/// times miss the window), and a phrase, which the index knows only as its words, confirmed
/// against the event's text read from the log.
pub fn search(dir: &Path, log_dir: &Path, f: &Filter) -> anyhow::Result<Page> {
    let limit = f.limit.unwrap_or(50).clamp(1, 1000);
    let before: u64 = match &f.before {
        Some(b) => b
            .parse()
            .map_err(|_| anyhow::anyhow!("before={b:?} is not a cursor from `next`"))?,
        None => u64::MAX,
    };
    let window = Window::new(f)?;
    // (term, whether a prefix)
    let mut specs: Vec<(Vec<u8>, bool)> = filter_terms(f).into_iter().map(|t| (t, false)).collect();
    let mut phrase = None;
    if let Some(q) = &f.q {
        for t in query_terms(q) {
            if t.words.is_empty() {
                return Ok(Page {
                    ids: Vec::new(),
                    next: None,
                });
            }
            if t.words.len() > 1 {
                phrase = Some(q.as_str());
            }
            let n = t.words.len();
            for (i, w) in t.words.iter().enumerate() {
                let mut key = vec![b'w'];
                key.extend_from_slice(w.to_ascii_lowercase().as_bytes());
                specs.push((key, t.prefix && i + 1 == n));
            }
        }
    }
    specs.sort();
    specs.dedup();
    let segs = open_segments(dir)?;
    let mut ids: Vec<u64> = Vec::new();
    let mut pending: Vec<u64> = Vec::new();
    let mut reader: Option<parapet_log::LogReader> = None;
    // Moves the pending candidates (newest first) to `ids`, confirming a phrase against the log.
    let mut confirm = |ids: &mut Vec<u64>, pending: &mut Vec<u64>| -> anyhow::Result<()> {
        let Some(q) = phrase else {
            ids.append(pending);
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        if reader.is_none() {
            reader = Some(parapet_log::LogReader::open(log_dir)?);
        }
        let r = reader
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no log reader"))?;
        for (i, json) in load(r, pending)? {
            if text_matches(q, &text_of(&json)) {
                ids.push(i);
            }
        }
        pending.clear();
        Ok(())
    };
    'segs: for seg in segs.iter().rev() {
        if seg.start >= before {
            continue;
        }
        let hi = (before - seg.start).min(seg.count) as u32;
        let cands: Option<Vec<u32>> = if specs.is_empty() {
            None
        } else {
            let mut lists = Vec::with_capacity(specs.len());
            for (term, prefix) in &specs {
                let l = if *prefix {
                    seg.prefixed(term)?
                } else {
                    seg.postings(term)?
                };
                if l.is_empty() {
                    continue 'segs;
                }
                lists.push(l);
            }
            lists.sort_by_key(Vec::len);
            let mut it = lists.into_iter();
            let mut c = it.next().unwrap_or_default();
            for l in it {
                intersect(&mut c, &l);
            }
            Some(c)
        };
        let at = |pos: usize| cands.as_ref().map_or(pos as u32, |c| c[pos]);
        let below = |local: u32| {
            cands
                .as_ref()
                .map_or(local as usize, |c| c.partition_point(|&l| l < local))
        };
        let mut times = if window.active() {
            Some(Times::new(seg)?)
        } else {
            None
        };
        let mut pos = below(hi);
        while pos > 0 {
            pos -= 1;
            let local = at(pos);
            if let Some(t) = &mut times {
                let b = (u64::from(local) / segment::TIME_BLOCK) as usize;
                let Some(block) = t.blocks.get(b) else {
                    anyhow::bail!(
                        "the search index in {} is damaged (event {local} of a segment has no time); run `parapet index rebuild`",
                        dir.display()
                    );
                };
                if !window.meets(block) {
                    // Skip to the block before.
                    pos = below((b as u64 * segment::TIME_BLOCK) as u32);
                    continue;
                }
                let key = t.key(local)?;
                let odd = if key == segment::ODD {
                    t.odd.get(&local).map(String::as_str)
                } else {
                    None
                };
                if !window.passes(key, odd) {
                    continue;
                }
            }
            pending.push(seg.start + u64::from(local));
            let need = limit + 1 - ids.len();
            if pending.len() >= if phrase.is_some() { need.max(64) } else { need } {
                confirm(&mut ids, &mut pending)?;
                if ids.len() > limit {
                    break 'segs;
                }
            }
        }
    }
    confirm(&mut ids, &mut pending)?;
    let next = if ids.len() > limit {
        ids.truncate(limit);
        ids.last().map(u64::to_string)
    } else {
        None
    };
    Ok(Page { ids, next })
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

/// The index of the newest event in the index in `dir`, if any.
pub fn newest(dir: &Path) -> anyhow::Result<Option<u64>> {
    Ok(cover(dir)?.0.last().map(|r| r.1 - 1))
}

/// The indexes of the events after `after` (exclusive; `None`: from the start) up to `limit`,
/// oldest first (for the stream's catch-up).
pub fn after(dir: &Path, after: Option<u64>, limit: usize) -> anyhow::Result<Vec<u64>> {
    let end = cover(dir)?.0.last().map_or(0, |r| r.1);
    let from = after.map_or(0, |a| a + 1);
    Ok((from..end.max(from)).take(limit).collect())
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
    fn every_page(path: &Path, log_dir: &Path, f: &Filter) -> Vec<u64> {
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = search(
                path,
                log_dir,
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

    /// A log holding `lines` (in `dir`) and its index, stored as the indexer does, `batch`
    /// entries a segment (so that segments are merged), with the prepared events.
    fn indexed_log(dir: &Path, lines: &[String], batch: usize) -> (PathBuf, Index, Vec<Indexed>) {
        let (log_dir, key) = (dir.join("log"), dir.join("log.key"));
        parapet_log::Log::init(&log_dir, "test/log", &key).expect("init");
        let log = parapet_log::Log::open(&log_dir, &key).expect("open log");
        parapet_log::bulk::append_lines(&log, lines.join("\n").as_bytes(), |_| {}).expect("append");
        drop(log);
        let reader = parapet_log::LogReader::open(&log_dir).expect("reader");
        let mut ix = Index::open(&dir.join("index"), "test/log").expect("open");
        let all: Vec<Indexed> = reader
            .entries(0, reader.size())
            .map(|r| r.expect("entry"))
            .map(|(i, bytes)| ix.prepare(i, &bytes))
            .collect();
        assert_eq!(all.len(), lines.len());
        for part in all.chunks(batch) {
            ix.store(part).expect("store");
        }
        (log_dir, ix, all)
    }

    #[test]
    fn full_text_queries_are_read_term_by_term() {
        let terms = |q: &str| -> Vec<(Vec<String>, bool)> {
            query_terms(q)
                .into_iter()
                .map(|t| (t.words, t.prefix))
                .collect()
        };
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            terms("drop table"),
            vec![(w(&["drop"]), false), (w(&["table"]), false)]
        );
        assert_eq!(
            terms("\"delete from\" acc*"),
            vec![(w(&["delete", "from"]), false), (w(&["acc"]), true)]
        );
        assert_eq!(
            terms("NEAR(a b) col:x"),
            vec![
                (w(&["NEAR", "a"]), false),
                (w(&["b"]), false),
                (w(&["col", "x"]), false)
            ]
        );
        assert!(terms("  ").is_empty());
        assert_eq!(
            terms("\"--\" kilo"),
            vec![(w(&[]), false), (w(&["kilo"]), false)]
        );
    }

    #[test]
    fn filter_values_are_one_term_and_never_collide() {
        let values = [
            "a.b", "a_b", "A.b", "az2eb", "a b", "ab", "", "z", "Z", "zz", "é", "a\u{0}",
        ];
        let mut terms = Vec::new();
        for v in values {
            for (n, f) in [
                Filter {
                    user: Some(v.into()),
                    ..Filter::default()
                },
                Filter {
                    session: Some(v.into()),
                    ..Filter::default()
                },
                Filter {
                    rule: Some(v.into()),
                    ..Filter::default()
                },
            ]
            .iter()
            .enumerate()
            {
                let t = filter_terms(f);
                assert_eq!(t.len(), 1);
                terms.push(((v, n), t[0].clone()));
            }
        }
        for (a, ta) in &terms {
            for (b, tb) in &terms {
                assert_eq!(a == b, ta == tb, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn index_search_and_live_filter_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = [
            r#"{"type":"session_start","time":"2026-01-01T00:00:00.000000Z","session":"s1","user":"alice","target":"main"}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:01.000000Z","session":"s1","user":"alice","target":"main","decision":"deny","rules":[{"id":"parapet.drop","mode":"enforce","reason":"r"}],"sql":"DROP TABLE accounts","reason":"Dropping is blocked"}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:02.000000Z","session":"s1","user":"alice","target":"main","decision":"allow","rules":[],"sql":"SELECT * FROM public.accounts WHERE id = 1","reason":""}"#,
            r#"{"type":"outcome","time":"2026-01-01T00:00:03.000000Z","session":"s1","decision":2,"tag":"SELECT 1","rows":1}"#,
            r#"{"type":"decision","time":"2026-01-01T00:00:04.000000Z","session":"s2","user":"bob","target":"main","decision":"allow","rules":[],"sql":"UPDATE orders SET x = 1 WHERE id = 2","reason":""}"#,
        ];
        let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        let (log_dir, ix, batch) = indexed_log(dir.path(), &lines, 2);
        assert_eq!(ix.indexed().expect("indexed"), 5);
        let q = |f: Filter| -> Vec<u64> {
            let page = search(ix.path(), &log_dir, &f).expect("search");
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
            &log_dir,
            &Filter {
                limit: Some(2),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(first.ids.clone(), vec![4, 3]);
        let second = search(
            ix.path(),
            &log_dir,
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
            &log_dir,
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
        assert!(Index::open(&dir.path().join("index"), "other/log").is_err());
    }

    /// Time windows over events whose times mostly follow the log (a few out of order, some
    /// without a time): the blocks skipped hold no event of the window, page after page.
    #[test]
    fn time_windows_skip_only_blocks_outside_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 5000u64;
        let mut lines = Vec::new();
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
            lines.push(e.to_string());
        }
        // In several segments, some merged: blocks cross segments.
        let (log_dir, ix, batch) = indexed_log(dir.path(), &lines, 300);
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
                assert_eq!(every_page(ix.path(), &log_dir, &base), want, "{base:?}");
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
        let mut owned = Preparer::default();
        for (i, bytes) in entries.iter().enumerate() {
            let a = fast.prepare(i as u64, bytes);
            let o = owned.prepare_owned(i as u64, bytes.to_vec());
            assert_eq!(format!("{a:?}"), format!("{o:?}"), "entry {i}");
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
            &log_dir,
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
        drop(ix);
        // A torn segment (here one byte changed; a crash can leave a short file) is removed with
        // the segments after it, and their events are indexed again.
        let index_dir = dir.path().join("index");
        let ix = Index::open(&index_dir, "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 5);
        let seg = index_dir.join(segment::file_name(0, 5));
        let mut bytes = std::fs::read(&seg).expect("segment");
        bytes[20] ^= 1;
        std::fs::write(&seg, &bytes).expect("tear");
        drop(ix);
        let mut ix = Index::open(&index_dir, "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 0);
        assert_eq!(newest(ix.path()).expect("newest"), None);
        assert!(!seg.exists());
        ix.store(&batch[..3]).expect("store");
        ix.store(&batch[3..]).expect("store");
        assert_eq!(newest(ix.path()).expect("newest"), Some(4));
        drop(ix);
        let second = index_dir.join(segment::file_name(3, 5));
        let len = std::fs::metadata(&second).expect("segment").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&second)
            .and_then(|f| f.set_len(len / 2))
            .expect("truncate");
        let mut ix = Index::open(&index_dir, "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 3);
        assert_eq!(after(ix.path(), Some(0), 10).expect("after"), vec![1, 2]);
        // What a search finds once the events are indexed again is what it found before.
        let mut again = Preparer::default();
        let redo: Vec<Indexed> = reader
            .entries(0, 5)
            .map(|r| r.expect("entry"))
            .map(|(i, bytes)| again.prepare(i, &bytes))
            .collect();
        ix.store(&redo[3..]).expect("store");
        let page = search(
            ix.path(),
            &log_dir,
            &Filter {
                q: Some("\"kilo lima\"".into()),
                ..Filter::default()
            },
        )
        .expect("search");
        assert_eq!(page.ids, vec![3]);
        // An index that holds more than the log is rebuilt too.
        drop(ix);
        let ix = Index::open_for_log(&dir.path().join("index"), "test/log", 5).expect("open");
        assert_eq!(ix.indexed().expect("indexed"), 5);
        drop(ix);
        let ix = Index::open_for_log(&dir.path().join("index"), "test/log", 3).expect("open");
        assert_eq!(ix.indexed().expect("indexed"), 0);
    }

    /// What a crash can leave beside the segments (a merge's inputs beside its output, a
    /// temporary file, a gap) is never read, and opening the index removes it.
    #[test]
    fn leftovers_of_a_crash_are_not_read_and_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines: Vec<String> = (0..900)
            .map(|i| {
                serde_json::json!({
                    "type": "decision", "time": "2026-01-01T00:00:00.000000Z",
                    "user": format!("u{}", i % 3), "sql": format!("SELECT {i}"),
                })
                .to_string()
            })
            .collect();
        // Eight segments of 100 merged into one, then a ninth.
        let (log_dir, mut ix, all) = indexed_log(dir.path(), &lines, 100);
        ix.settle().expect("settle");
        let index_dir = ix.path().to_path_buf();
        let names = |d: &Path| -> BTreeSet<String> {
            std::fs::read_dir(d)
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg"))
                .collect()
        };
        let merged: BTreeSet<String> = [(0, 800), (800, 900)]
            .iter()
            .map(|&(a, b)| segment::file_name(a, b))
            .collect();
        assert_eq!(names(&index_dir), merged);
        let f = Filter {
            user: Some("u1".into()),
            limit: Some(1000),
            ..Filter::default()
        };
        let want = search(&index_dir, &log_dir, &f).expect("search").ids;
        assert_eq!(want.len(), 300);
        // A merge's inputs left beside its output (made again in another directory).
        let other = dir.path().join("other");
        let mut ox = Index::open(&other, "test/log").expect("open");
        for part in all[..700].chunks(100) {
            ox.store(part).expect("store");
        }
        drop(ox);
        for n in names(&other) {
            std::fs::copy(other.join(&n), index_dir.join(&n)).expect("copy");
        }
        std::fs::write(
            index_dir.join(format!(".{}.tmp", segment::file_name(0, 900))),
            b"torn",
        )
        .expect("tmp");
        drop(ix);
        assert_eq!(names(&index_dir).len(), 9);
        assert_eq!(search(&index_dir, &log_dir, &f).expect("search").ids, want);
        assert_eq!(newest(&index_dir).expect("newest"), Some(899));
        let ix = Index::open(&index_dir, "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 900);
        assert_eq!(names(&index_dir), merged);
        assert!(!index_dir
            .join(format!(".{}.tmp", segment::file_name(0, 900)))
            .exists());
        drop(ix);
        // A gap (a segment gone): what follows it is removed and indexed again.
        std::fs::remove_file(index_dir.join(segment::file_name(0, 800))).expect("remove");
        assert_eq!(newest(&index_dir).expect("newest"), None);
        let mut ix = Index::open(&index_dir, "test/log").expect("reopen");
        assert_eq!(ix.indexed().expect("indexed"), 0);
        assert!(names(&index_dir).is_empty());
        let mut again = Preparer::default();
        let redo: Vec<Indexed> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| again.prepare(i as u64, l.as_bytes()))
            .collect();
        ix.store(&redo).expect("store");
        assert_eq!(search(&index_dir, &log_dir, &f).expect("search").ids, want);
    }

    /// Every search gives what filtering all events one by one gives, page after page.
    #[test]
    fn text_and_filter_searches_agree_with_the_live_filter_at_every_page() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
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
        let mut lines = Vec::new();
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
            lines.push(e.to_string());
        }
        // Segments of 100 events: some merged (tier 0, eight into one), some not.
        let (log_dir, ix, batch) = indexed_log(dir.path(), &lines, 100);
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
                    assert_eq!(every_page(ix.path(), &log_dir, &base), want, "{base:?}");
                }
            }
        }
        // The index as `parapet index rebuild` makes it (one segment) answers the same.
        let (_, whole, _) = indexed_log(&dir.path().join("whole"), &lines, 10_000);
        for filter in &filters {
            for q in queries.iter().map(|q| Some(q.to_string())).chain([None]) {
                let base = Filter {
                    q: q.clone(),
                    limit: Some(50),
                    ..filter.clone()
                };
                assert_eq!(
                    every_page(whole.path(), &log_dir, &base),
                    every_page(ix.path(), &log_dir, &base),
                    "{base:?}"
                );
            }
        }
        // The words as the index sees them: `_` separates, ASCII case folds, other letters are kept.
        assert!(text_matches("lima", "SELECT Kilo_Lima"));
        assert!(text_matches("NAÏVE", "naÏve"));
        assert!(!text_matches("naïve", "NAÏVE"));
        // A quoted phrase of punctuation alone matches nothing (as in FTS5); a bare one is no term.
        assert!(!text_matches("\"--\" kilo", "kilo"));
        assert!(text_matches("-- kilo", "kilo"));
    }
}
