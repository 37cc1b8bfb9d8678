//! Parsing SQL text into pg_query's typed parse tree (`pg_query::protobuf::ParseResult`), the
//! same tree `pg_query::parse` returns, at a fraction of its cost.
//!
//! Why not `pg_query::parse`: it calls libpg_query's `pg_query_parse_protobuf`, whose protobuf-c
//! encoder computes the packed size of every sub-message again at each level of nesting
//! (`protobuf_c_message_pack` → `get_packed_size` per field), which makes encoding quadratic in
//! the tree's depth: about 85 % of a parse of a plain OLTP statement (≈ 190 of 220 thousand
//! instructions; the grammar itself takes ≈ 15 thousand). It then walks the decoded tree once
//! more to fill `ParseResult`'s table/function/filter lists, which we do not use.
//!
//! Instead this calls libpg_query's public `pg_query_parse` (declared in its `pg_query.h`; the
//! symbol is linked through the pg_query dependency), whose JSON writer is linear, and decodes
//! that JSON — the proto3 JSON form of the same `ParseResult` message, every field under its
//! `json_name` from pg_query.proto — straight into pg_query's prost structs. The per-message
//! field tables are generated (`from_json.rs`, by `gen/from_json.py`); this module holds the
//! small decoding runtime they use. The tests below check, over the test corpus, every statement
//! of PostgreSQL's own SQL files and random SQL-ish text, that the result equals
//! `pg_query::parse(sql).protobuf` exactly, and that both fail on the same texts.
//!
//! Fail closed: a parse error, a JSON key that is not a field of its message, a value of the
//! wrong type, an unknown enum name, a tree nested deeper than `limits::MAX_DEPTH` messages or
//! holding more than `limits::MAX_NODES` (with the message's earlier parses) is an error, never a
//! partly read tree. The depth is checked before every recursive step of the decoder.

use pg_query::protobuf::ParseResult;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;

/// libpg_query's C API for the JSON parse (`pg_query.h`), declared here because the pg_query
/// crate keeps its bindings private. Layouts as in `pg_query.h` of the libpg_query version that
/// pg_query 6.2.1 vendors.
mod ffi {
    use std::os::raw::{c_char, c_int};

    /// `PgQueryError`.
    #[repr(C)]
    pub struct PgQueryError {
        pub message: *mut c_char,
        pub funcname: *mut c_char,
        pub filename: *mut c_char,
        pub lineno: c_int,
        pub cursorpos: c_int,
        pub context: *mut c_char,
    }

    /// `PgQueryParseResult`: a malloc'd JSON text, a malloc'd stderr capture, and an error.
    #[repr(C)]
    pub struct PgQueryParseResult {
        pub parse_tree: *mut c_char,
        pub stderr_buffer: *mut c_char,
        pub error: *mut PgQueryError,
    }

    /// `PgQueryPlpgsqlParseResult`: a malloc'd JSON text and an error.
    #[repr(C)]
    pub struct PgQueryPlpgsqlParseResult {
        pub plpgsql_funcs: *mut c_char,
        pub error: *mut PgQueryError,
    }

    extern "C" {
        /// Parses a `CREATE FUNCTION … LANGUAGE plpgsql` text (NUL-terminated) into JSON; free
        /// the result with `pg_query_free_plpgsql_parse_result`.
        pub fn pg_query_parse_plpgsql(input: *const c_char) -> PgQueryPlpgsqlParseResult;
        /// Frees everything a `pg_query_parse_plpgsql` result holds.
        pub fn pg_query_free_plpgsql_parse_result(result: PgQueryPlpgsqlParseResult);
        /// Parses `input` (NUL-terminated) into JSON; free the result with
        /// `pg_query_free_parse_result`, whatever it holds.
        pub fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
        /// Frees everything a `pg_query_parse` result holds.
        pub fn pg_query_free_parse_result(result: PgQueryParseResult);
    }
}

/// Deepest message nesting accepted: the `ParseResult` is at depth 0, its statements at depth 1,
/// … (prost's own decoder, behind `pg_query::parse`, stops at 100, far below what PostgreSQL
/// runs; see `limits::MAX_DEPTH`).
const RECURSION_LIMIT: u32 = super::limits::MAX_DEPTH;

/// Which analysis limit a failed decode hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// Nested deeper than `RECURSION_LIMIT` messages.
    Depth,
    /// More than `limits::MAX_NODES` messages.
    Nodes,
}

thread_local! {
    /// Messages decoded by the current analysis on this thread (see [`reset_budget`]).
    static NODES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The limit the last failed decode on this thread hit, if any.
    static HIT: std::cell::Cell<Option<LimitHit>> = const { std::cell::Cell::new(None) };
}

/// Starts a new analysis's node budget on this thread.
pub(crate) fn reset_budget() {
    NODES.with(|n| n.set(0));
}

/// The limit the last [`parse`] on this thread failed on, if it failed on one.
pub(crate) fn limit_hit() -> Option<LimitHit> {
    HIT.with(std::cell::Cell::get)
}

/// Parses SQL text into pg_query's typed tree; the errors are those `pg_query::parse` gives
/// (`Parse` with PostgreSQL's message for a syntax error, `Conversion` for a NUL byte), plus
/// `InvalidJson` when libpg_query's output cannot be read (which then denies the statement).
pub(crate) fn parse(sql: &str) -> Result<ParseResult, pg_query::Error> {
    HIT.with(|h| h.set(None));
    let input = CString::new(sql)?;
    // SAFETY: `input` is a valid NUL-terminated string that outlives the call; the result is
    // read only through pointers libpg_query documents as NULL or valid NUL-terminated strings,
    // and freed exactly once below, on every path.
    let result = unsafe { ffi::pg_query_parse(input.as_ptr()) };
    let parsed = unsafe { read_result(&result) };
    unsafe { ffi::pg_query_free_parse_result(result) };
    parsed
}

/// Parses a PL/pgSQL function definition like `pg_query::parse_plpgsql`, but without
/// serde_json's limit of 128 JSON levels (which refuses PL/pgSQL that PostgreSQL runs, such as
/// 100 nested `IF`s): libpg_query's PL/pgSQL grammar already bounds the nesting (its parser
/// stack holds 10,000 entries), and the walk bounds its own recursion. Run it on a stack sized
/// by `limits::PLPGSQL_STACK`.
pub(crate) fn parse_plpgsql(text: &str) -> Result<serde_json::Value, pg_query::Error> {
    let input = CString::new(text)?;
    // SAFETY: as in `parse`: valid input, pointers read only when non-NULL, freed once.
    let result = unsafe { ffi::pg_query_parse_plpgsql(input.as_ptr()) };
    let parsed = unsafe {
        if !result.error.is_null() {
            let message = (*result.error).message;
            Err(pg_query::Error::Parse(if message.is_null() {
                "unknown parse error".to_string()
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            }))
        } else if result.plpgsql_funcs.is_null() {
            Err(pg_query::Error::InvalidPointer)
        } else {
            let json = CStr::from_ptr(result.plpgsql_funcs).to_string_lossy();
            let mut de = serde_json::Deserializer::from_str(&json);
            de.disable_recursion_limit();
            de::Deserialize::deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
                .map_err(|e| pg_query::Error::InvalidJson(e.to_string()))
        }
    };
    unsafe { ffi::pg_query_free_plpgsql_parse_result(result) };
    parsed
}

/// Reads a `pg_query_parse` result (without freeing it).
///
/// # Safety
/// `result` must come from `pg_query_parse` and not have been freed.
unsafe fn read_result(result: &ffi::PgQueryParseResult) -> Result<ParseResult, pg_query::Error> {
    if !result.error.is_null() {
        let message = (*result.error).message;
        let message = if message.is_null() {
            "unknown parse error".to_string()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        return Err(pg_query::Error::Parse(message));
    }
    if result.parse_tree.is_null() {
        return Err(pg_query::Error::InvalidPointer);
    }
    decode(CStr::from_ptr(result.parse_tree).to_bytes())
}

/// Decodes libpg_query's JSON parse tree.
pub(crate) fn decode(json: &[u8]) -> Result<ParseResult, pg_query::Error> {
    // Validated as UTF-8 once here, so serde_json need not validate every string again.
    let json =
        std::str::from_utf8(json).map_err(|e| pg_query::Error::InvalidJson(e.to_string()))?;
    let mut de = serde_json::Deserializer::from_str(json);
    // Depth is bounded by `RECURSION_LIMIT` messages instead (at most two JSON levels each), so
    // trees prost accepts are not refused for serde_json's own limit of 128 JSON levels.
    de.disable_recursion_limit();
    let tree = MessageSeed::<Plain<ParseResult>>::new(0)
        .deserialize(&mut de)
        .and_then(|tree| de.end().map(|()| tree.0))
        .map_err(|e| pg_query::Error::InvalidJson(e.to_string()))?;
    Ok(tree)
}

/// A protobuf message read from a JSON object one key at a time (implemented for every message
/// type in `from_json.rs`, generated).
pub(super) trait Message: Default {
    /// Reads the value of `key` (the field's JSON name) from `map` into its field; `depth` is the
    /// message nesting depth of `self`. A key that is not a field of the message is an error.
    fn field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        depth: u32,
    ) -> Result<(), A::Error>;
}

/// The error for a key that is not a field of its message.
pub(super) fn unknown<E: de::Error>(key: &str) -> E {
    E::custom(format_args!(
        "unexpected key {key:?} in libpg_query's JSON parse tree"
    ))
}

/// The value of the current key: a message one level deeper than `depth`.
pub(super) fn message<'de, A: MapAccess<'de>, T: Message>(
    map: &mut A,
    depth: u32,
) -> Result<T, A::Error> {
    map.next_value_seed(MessageSeed::<Plain<T>>::new(depth + 1))
        .map(|m| m.0)
}

/// The value of the current key: a boxed message one level deeper than `depth`. Not inlined,
/// so the large `Node` match (one arm per node kind) keeps a small stack frame: each nesting
/// level of the tree costs a few frames of the decoder's recursion.
#[inline(never)]
pub(super) fn boxed<'de, A: MapAccess<'de>, T: Message>(
    map: &mut A,
    depth: u32,
) -> Result<Box<T>, A::Error> {
    map.next_value_seed(MessageSeed::<Box<T>>::new(depth + 1))
}

/// Reads the value of the current key as the node kind `make` builds, into a `Node`. Not
/// inlined, like [`boxed_variant`]: the `Node` match has one arm per node kind, and each arm
/// only calls one of these, so its stack frame stays small.
#[inline(never)]
pub(super) fn variant<'de, A: MapAccess<'de>, T: Message>(
    slot: &mut Option<pg_query::protobuf::node::Node>,
    map: &mut A,
    depth: u32,
    make: fn(T) -> pg_query::protobuf::node::Node,
) -> Result<(), A::Error> {
    *slot = Some(make(message(map, depth)?));
    Ok(())
}

/// Like [`variant`], for node kinds pg_query boxes.
#[inline(never)]
pub(super) fn boxed_variant<'de, A: MapAccess<'de>, T: Message>(
    slot: &mut Option<pg_query::protobuf::node::Node>,
    map: &mut A,
    depth: u32,
    make: fn(Box<T>) -> pg_query::protobuf::node::Node,
) -> Result<(), A::Error> {
    *slot = Some(make(boxed(map, depth)?));
    Ok(())
}

/// The value of the current key: a list of messages one level deeper than `depth`.
pub(super) fn messages<'de, A: MapAccess<'de>, T: Message>(
    map: &mut A,
    depth: u32,
) -> Result<Vec<T>, A::Error> {
    map.next_value_seed(MessagesSeed::<T>(depth + 1, PhantomData))
}

/// The value of the current key: a scalar (bool, number, string, list of those).
pub(super) fn scalar<'de, A: MapAccess<'de>, T: de::Deserialize<'de>>(
    map: &mut A,
) -> Result<T, A::Error> {
    map.next_value()
}

/// The value of the current key: an enum value by its name (`"JOIN_INNER"`), as its number.
pub(super) fn enumeration<'de, A: MapAccess<'de>, E: Into<i32>>(
    map: &mut A,
    from_str_name: fn(&str) -> Option<E>,
) -> Result<i32, A::Error> {
    let name: Key<'de> = map.next_value()?;
    from_str_name(&name.0)
        .map(Into::into)
        .ok_or_else(|| de::Error::custom(format_args!("unknown enum value {:?}", &*name.0)))
}

/// A string borrowed from the JSON text when it holds no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where a message is read into: the message itself, or a box (filled in place, so large
/// node structs are not moved into their box afterwards).
trait Slot: Default {
    /// The message type.
    type Message: Message;
    /// The message, to fill.
    fn message(&mut self) -> &mut Self::Message;
}

/// A message read in place (not boxed).
#[derive(Default)]
struct Plain<T>(T);

impl<T: Message> Slot for Plain<T> {
    type Message = T;
    fn message(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Message> Slot for Box<T> {
    type Message = T;
    fn message(&mut self) -> &mut T {
        self
    }
}

/// Reads one message (a JSON object) at a given nesting depth.
struct MessageSeed<T>(u32, PhantomData<T>);

impl<T> MessageSeed<T> {
    fn new(depth: u32) -> Self {
        MessageSeed(depth, PhantomData)
    }
}

impl<'de, T: Slot> DeserializeSeed<'de> for MessageSeed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        if self.0 > RECURSION_LIMIT {
            HIT.with(|h| h.set(Some(LimitHit::Depth)));
            return Err(de::Error::custom(format_args!(
                "the parse tree is nested more than {RECURSION_LIMIT} levels deep"
            )));
        }
        let nodes = NODES.with(|n| {
            let v = n.get() + 1;
            n.set(v);
            v
        });
        if nodes > super::limits::MAX_NODES {
            HIT.with(|h| h.set(Some(LimitHit::Nodes)));
            return Err(de::Error::custom(format_args!(
                "the parse tree has more than {} nodes",
                super::limits::MAX_NODES
            )));
        }
        super::limits::grow(|| d.deserialize_map(self))
    }
}

impl<'de, T: Slot> Visitor<'de> for MessageSeed<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parse tree node (JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut slot = T::default();
        let m = slot.message();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            m.field(&key.0, &mut map, self.0)?;
        }
        Ok(slot)
    }
}

/// Reads a list of messages (a JSON array of objects) at a given nesting depth.
struct MessagesSeed<T>(u32, PhantomData<T>);

impl<'de, T: Message> DeserializeSeed<'de> for MessagesSeed<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Message> Visitor<'de> for MessagesSeed<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of parse tree nodes (JSON array)")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<T>, S::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(m) = seq.next_element_seed(MessageSeed::<Plain<T>>::new(self.0))? {
            out.push(m.0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_as_pg_query() {
        for sql in [
            "SELECT 1",
            "SELECT o.id, u.name FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = 0",
            "INSERT INTO t (a, b) VALUES (1, 'x''y'), (-2.5, E'\\n\\u00e9') RETURNING *",
            "UPDATE t SET a = NULL, b = true, c = false, d = B'101' WHERE id = $1",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$; DROP TABLE x",
            "FETCH ALL FROM c",
            "",
            "  ;  ",
        ] {
            let ours = parse(sql).unwrap();
            let theirs = pg_query::parse(sql).unwrap().protobuf;
            assert_eq!(ours, theirs, "{sql}");
        }
    }

    /// Our tree equals pg_query's, or both fail.
    fn check(sql: &str) -> bool {
        let ours = parse(sql);
        let theirs = pg_query::parse(sql).map(|p| p.protobuf);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert!(a == b, "trees differ for {sql:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "{sql:?}: ours {:?}, pg_query {:?}",
                ours.err(),
                theirs.err()
            ),
        }
        ours.is_ok()
    }

    #[test]
    fn same_trees_over_corpus_and_postgres_sql_files() {
        let mut parsed = 0;
        for line in include_str!("../../tests/data/corpus.tsv").lines() {
            if let Some(sql) = line
                .splitn(3, '\t')
                .nth(2)
                .filter(|_| !line.starts_with('#'))
            {
                parsed += usize::from(check(&sql.replace("\\n", "\n")));
            }
        }
        assert!(parsed > 150, "{parsed}");
        // PostgreSQL's own scripts (catalog definitions, extensions): every statement form the
        // server ships, including function bodies.
        let dir = std::path::Path::new("/usr/share/postgresql/15");
        assert!(
            dir.is_dir(),
            "{} is missing: install PostgreSQL 15 (apt-get install postgresql-15)",
            dir.display()
        );
        let mut files = Vec::new();
        for sub in [dir.to_path_buf(), dir.join("extension")] {
            for e in std::fs::read_dir(&sub).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "sql") {
                    files.push(p);
                }
            }
        }
        assert!(files.len() > 100, "{}", files.len());
        let mut statements = 0;
        for f in files {
            // Extension scripts hold a psql meta-command line; drop those.
            let text: String = std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('\\'))
                .map(|l| format!("{l}\n"))
                .collect();
            for sql in pg_query::split_with_parser(&text).unwrap_or_default() {
                statements += usize::from(check(sql));
            }
        }
        assert!(statements > 3_000, "{statements}");
    }

    #[test]
    fn same_results_over_random_sqlish_text() {
        let toks = [
            "SELECT",
            "DROP",
            "TABLE",
            "FROM",
            "WHERE",
            "DELETE",
            "UPDATE",
            "SET",
            "DO",
            "$$",
            "'",
            ";",
            "(",
            ")",
            "BEGIN",
            "END",
            "EXECUTE",
            "CREATE FUNCTION f() RETURNS int AS",
            "x",
            "WITH x AS",
            "COPY",
            "TO",
            "$1",
            "users",
            "1",
            "-2.5e3",
            "E'\\n'",
            "U&'\\0041'",
            "t",
            "INSERT INTO",
            "VALUES",
            "=",
            ",",
            "*",
            "pg_read_file('x')",
            "EXPLAIN ANALYZE",
            "PREPARE p AS",
            "UNION",
            "JOIN",
            "ON",
            "GRANT",
            "ALL",
            "RETURNING",
            "s.t",
            "LIMIT",
            "INTO",
            "NULL",
            "true",
            "B'1'",
            "::int[]",
            "ARRAY[",
            "]",
            "CASE WHEN",
            "THEN",
            "é",
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut parsed = 0;
        for _ in 0..4_000 {
            let n = next() % 14;
            let s: Vec<&str> = (0..n).map(|_| toks[next() % toks.len()]).collect();
            parsed += usize::from(check(&s.join(" ")));
        }
        assert!(parsed > 200, "{parsed}");
    }

    #[test]
    fn errors_as_pg_query() {
        assert_eq!(
            parse("SELEC 1").unwrap_err(),
            pg_query::parse("SELEC 1").unwrap_err()
        );
        assert!(matches!(
            parse("SELECT 1\0"),
            Err(pg_query::Error::Conversion(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_the_tree() {
        for json in [
            &br#"{"version":1,"stmts":[{"stmt":{"SelectStmt":{"bogus":1}}}]}"#[..],
            br#"{"version":1,"stmts":[{"stmt":{"SelectStmt":{"op":"NO_SUCH_OP"}}}]}"#,
            br#"{"version":1,"stmts":[{"stmt":{"NoSuchStmt":{}}}]}"#,
            br#"{"version":1,"stmts":[{"stmt":{"SelectStmt":{},"DeleteStmt":{}}}]}"#,
            br#"{"version":"1","stmts":[]}"#,
            br#"{"version":1,"stmts":[]} trailing"#,
        ] {
            assert!(decode(json).is_err(), "{}", String::from_utf8_lossy(json));
        }
    }

    #[test]
    fn deeper_than_prost_and_up_to_the_depth_limit() {
        // `SELECT 1 + (1 + (…))`: the same tree as prost's where prost decodes it, and deeper
        // trees (which prost refuses beyond 100 messages) decoded too.
        let mut prost_stopped = false;
        for n in [20, 40, 60, 80, 1_000] {
            let sql = format!("SELECT {}1{}", "1 + (".repeat(n), ")".repeat(n));
            let ours = super::super::limits::with_stack(n * 4, || parse(&sql).map(|_| ()));
            assert!(ours.is_ok(), "nesting {n}");
            match pg_query::parse(&sql) {
                Ok(p) => assert_eq!(parse(&sql).unwrap(), p.protobuf),
                Err(_) => prost_stopped = true,
            }
        }
        assert!(prost_stopped, "prost's limit was not reached");
        // Past the limit: refused, and the limit named.
        let n = RECURSION_LIMIT as usize;
        let sql = format!("SELECT {}", vec!["1"; n].join("+"));
        let scan = super::super::limits::scan(&sql);
        let err = super::super::limits::with_stack(scan.nesting, || parse(&sql).unwrap_err());
        assert!(matches!(err, pg_query::Error::InvalidJson(_)), "{err:?}");
        assert_eq!(limit_hit(), Some(LimitHit::Depth));
    }
}
