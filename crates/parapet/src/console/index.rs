//! The console's search index: SQLite (with FTS5 for full text), derived from the log and
//! rebuildable from it — the log stays the only source of truth. One indexer thread tails the
//! published log (what a checkpoint covers), so the index never holds an entry a verifier could
//! not check, and never sits on the statement path.
//!
//! Each event is stored with the fields the filters use (type, time, user, target, decision,
//! session, rules, tables read or written, text); outcomes and session ends take the user and
//! target of their session. Tables come from the guard's analysis of the statement text, done
//! here, off the gateway.

use parapet_gateway::events::{Fed, TextReassembler};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
    /// The event as logged (with `sql` reassembled when it was stored in parts).
    pub event: Value,
    /// User and target (of its session when the event does not name them).
    pub user: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// Rule ids.
    pub rules: Vec<String>,
    /// Tables read or written (`schema.name`).
    pub tables: BTreeSet<String>,
    /// Statement text and reason, for full-text search.
    pub text: String,
}

/// A full-text query in FTS5 syntax built from the user's words (never passed through raw).
pub fn fts_query(q: &str) -> Option<String> {
    let mut terms = Vec::new();
    let mut rest = q.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let (phrase, after) = r.split_once('"').unwrap_or((r, ""));
            if !phrase.trim().is_empty() {
                terms.push(format!("\"{}\"", phrase.replace('"', "\"\"")));
            }
            rest = after.trim_start();
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = rest[end..].trim_start();
        let (w, prefix) = match word.strip_suffix('*') {
            Some(w) => (w, true),
            None => (word, false),
        };
        // FTS5's tokenizer splits on punctuation: keep the word's alphanumeric runs as a phrase.
        let cleaned: Vec<&str> = w
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|s| !s.is_empty())
            .collect();
        if cleaned.is_empty() {
            continue;
        }
        let phrase = format!("\"{}\"", cleaned.join(" "));
        terms.push(if prefix { format!("{phrase}*") } else { phrase });
    }
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
    let field = |k: &str| e.event.get(k).and_then(Value::as_str);
    let eq = |want: &Option<String>, got: Option<&str>| {
        want.as_ref().is_none_or(|w| Some(w.as_str()) == got)
    };
    if !eq(&f.user, e.user.as_deref())
        || !eq(&f.target, e.target.as_deref())
        || !eq(&f.decision, field("decision"))
        || !eq(&f.session, field("session"))
        || !eq(&f.kind, field("type"))
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
    let time = field("time").unwrap_or("");
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
        let text = e.text.to_lowercase();
        let words: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .collect();
        let joined = words.join(" ");
        let mut rest = q.trim();
        while !rest.is_empty() {
            let (term, prefix, after) = if let Some(r) = rest.strip_prefix('"') {
                let (p, a) = r.split_once('"').unwrap_or((r, ""));
                (p.to_string(), false, a)
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                let w = &rest[..end];
                let (w, p) = w.strip_suffix('*').map_or((w, false), |w| (w, true));
                (w.to_string(), p, &rest[end..])
            };
            rest = after.trim_start();
            let toks: Vec<String> = term
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if toks.is_empty() {
                continue;
            }
            let phrase = toks.join(" ");
            let found = if prefix {
                words.windows(toks.len()).any(|w| {
                    w[..toks.len() - 1] == toks[..toks.len() - 1]
                        && w[toks.len() - 1].starts_with(toks[toks.len() - 1].as_str())
                })
            } else {
                format!(" {joined} ").contains(&format!(" {phrase} "))
            };
            if !found {
                return false;
            }
        }
    }
    true
}

/// Turns log entries, read in order, into [`Indexed`] events: reassembles texts stored in parts
/// and remembers each session's user and target.
#[derive(Default)]
pub struct Preparer {
    /// Texts of decisions stored in parts, reassembled across batches.
    texts: TextReassembler,
    /// Each session's user and target.
    sessions: HashMap<String, (Option<String>, Option<String>)>,
}

/// The index database.
pub struct Index {
    conn: Connection,
    path: PathBuf,
    prep: Preparer,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  idx INTEGER PRIMARY KEY, type TEXT, time TEXT, user TEXT, target TEXT, decision TEXT,
  session TEXT, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event_rules (idx INTEGER NOT NULL, rule TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event_tables (idx INTEGER NOT NULL, tbl TEXT NOT NULL, name TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(body, content='');
CREATE INDEX IF NOT EXISTS events_user ON events (user, idx);
CREATE INDEX IF NOT EXISTS events_target ON events (target, idx);
CREATE INDEX IF NOT EXISTS events_decision ON events (decision, idx);
CREATE INDEX IF NOT EXISTS events_session ON events (session, idx);
CREATE INDEX IF NOT EXISTS events_type ON events (type, idx);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS rules_rule ON event_rules (rule, idx);
CREATE INDEX IF NOT EXISTS tables_tbl ON event_tables (tbl, idx);
CREATE INDEX IF NOT EXISTS tables_name ON event_tables (name, idx);
";

impl Index {
    /// Opens (creating) the index in directory `dir`, for the log of `origin`: an index made for
    /// another log is refused.
    pub fn open(dir: &Path, origin: &str) -> anyhow::Result<Index> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the index directory {}: {e}", dir.display())
        })?;
        let path = dir.join("events.sqlite");
        let conn = Connection::open(&path)?;
        conn.execute_batch(SCHEMA)?;
        let have: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'origin'", [], |r| r.get(0))
            .optional()?;
        match have {
            Some(o) if o != origin => anyhow::bail!(
                "the index in {} belongs to log {o:?}, not {origin:?}: remove it or run `parapet index rebuild`",
                dir.display()
            ),
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('origin', ?1), ('indexed', '0')",
                    params![origin],
                )?;
            }
        }
        Ok(Index {
            conn,
            path,
            prep: Preparer::default(),
        })
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
            let mut ev = tx.prepare_cached(
                "INSERT OR REPLACE INTO events (idx, type, time, user, target, decision, session, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut rule =
                tx.prepare_cached("INSERT INTO event_rules (idx, rule) VALUES (?1, ?2)")?;
            let mut table =
                tx.prepare_cached("INSERT INTO event_tables (idx, tbl, name) VALUES (?1, ?2, ?3)")?;
            let mut fts =
                tx.prepare_cached("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")?;
            for e in batch {
                let f = |k: &str| e.event.get(k).and_then(Value::as_str);
                let idx = i64::try_from(e.index)?;
                ev.execute(params![
                    idx,
                    f("type"),
                    f("time"),
                    e.user,
                    e.target,
                    f("decision").filter(|_| f("type") == Some("decision")),
                    f("session"),
                    e.event.to_string()
                ])?;
                for r in &e.rules {
                    rule.execute(params![idx, r])?;
                }
                for t in &e.tables {
                    let name = t.rsplit('.').next().unwrap_or(t);
                    table.execute(params![idx, t, name])?;
                }
                if !e.text.is_empty() {
                    fts.execute(params![idx, e.text])?;
                }
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

impl Preparer {
    /// Builds the indexed form of the entry at `index` (entries in order).
    pub fn prepare(&mut self, index: u64, bytes: &[u8]) -> Indexed {
        let mut event: Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|_| serde_json::json!({"type": "unreadable"}));
        let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        if let Ok(Fed::Decision(t)) = self.texts.feed(&event) {
            if event.get("sql").is_none() {
                if let (Some(sql), Some(o)) = (t.sql, event.as_object_mut()) {
                    o.insert("sql".into(), Value::String(sql));
                }
            }
        }
        let session = field(&event, "session");
        let (mut user, mut target) = (field(&event, "user"), field(&event, "target"));
        if let Some(s) = &session {
            let known = self.sessions.entry(s.clone()).or_default();
            if user.is_some() || target.is_some() {
                *known = (user.clone(), target.clone());
            } else {
                (user, target) = known.clone();
            }
            if field(&event, "type").as_deref() == Some("session_end") {
                self.sessions.remove(s);
            }
        }
        let rules: Vec<String> = event
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let sql = field(&event, "sql").or_else(|| field(&event, "normalized"));
        let mut tables = BTreeSet::new();
        if let Some(sql) = &sql {
            if sql.len() <= 1 << 20 {
                let analysis = parapet_guard::analyze(sql);
                for st in &analysis.statements {
                    tables.extend(st.reads.iter().cloned());
                    tables.extend(st.writes.iter().cloned());
                }
            }
        }
        let mut text = sql.unwrap_or_default();
        if let Some(r) = field(&event, "reason") {
            text.push('\n');
            text.push_str(&r);
        }
        Indexed {
            index,
            event,
            user,
            target,
            rules,
            tables,
            text,
        }
    }
}

/// A page of search results, newest first, and the cursor of the next page.
pub struct Page {
    /// (index, event JSON).
    pub events: Vec<(u64, String)>,
    /// `before` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Searches the index at `path` (opened read-only).
pub fn search(path: &Path, f: &Filter) -> anyhow::Result<Page> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let limit = f.limit.unwrap_or(50).clamp(1, 1000);
    let mut sql = String::from("SELECT e.idx, e.json FROM events e WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    use rusqlite::types::Value as V;
    for (col, v) in [
        ("user", &f.user),
        ("target", &f.target),
        ("decision", &f.decision),
        ("session", &f.session),
        ("type", &f.kind),
    ] {
        if let Some(v) = v {
            push(&mut sql, &format!(" AND e.{col} = ?"), V::Text(v.clone()));
        }
    }
    if let Some(r) = &f.rule {
        push(
            &mut sql,
            " AND EXISTS (SELECT 1 FROM event_rules r WHERE r.idx = e.idx AND r.rule = ?)",
            V::Text(r.clone()),
        );
    }
    if let Some(t) = &f.table {
        let col = if t.contains('.') { "tbl" } else { "name" };
        push(
            &mut sql,
            &format!(
                " AND EXISTS (SELECT 1 FROM event_tables t WHERE t.idx = e.idx AND t.{col} = ?)"
            ),
            V::Text(t.clone()),
        );
    }
    if let Some(s) = &f.since {
        push(&mut sql, " AND e.time >= ?", V::Text(normalise_time(s)?));
    }
    if let Some(u) = &f.until {
        push(&mut sql, " AND e.time < ?", V::Text(normalise_time(u)?));
    }
    if let Some(b) = &f.before {
        let b: i64 = b
            .parse()
            .map_err(|_| anyhow::anyhow!("before={b:?} is not a cursor from `next`"))?;
        push(&mut sql, " AND e.idx < ?", V::Integer(b));
    }
    if let Some(q) = f.q.as_deref().and_then(fts_query) {
        push(
            &mut sql,
            " AND e.idx IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)",
            V::Text(q),
        );
    }
    sql.push_str(&format!(" ORDER BY e.idx DESC LIMIT {}", limit + 1));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows: Vec<(u64, String)> = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(i, _)| i.to_string())
    } else {
        None
    };
    Ok(Page { events: rows, next })
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

/// Events after `after` (exclusive; `None`: from the start) up to `limit`, oldest first, and
/// the index size (for the stream's catch-up).
pub fn after(path: &Path, after: Option<u64>, limit: usize) -> anyhow::Result<Vec<(u64, String)>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let from = after.map_or(0, |a| a as i64 + 1);
    let mut stmt =
        conn.prepare_cached("SELECT idx, json FROM events WHERE idx >= ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt
        .query_map(params![from, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let via_sql: Vec<u64> = page.events.iter().map(|(i, _)| *i).collect();
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
        assert_eq!(
            first.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![4, 3]
        );
        let second = search(
            ix.path(),
            &Filter {
                limit: Some(2),
                before: first.next.clone(),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(
            second.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let third = search(
            ix.path(),
            &Filter {
                limit: Some(2),
                before: second.next.clone(),
                ..Filter::default()
            },
        )
        .expect("page");
        assert_eq!(
            third.events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![0]
        );
        assert!(third.next.is_none());
        // Another log's index is refused.
        drop(ix);
        assert!(Index::open(dir.path(), "other/log").is_err());
    }
}
