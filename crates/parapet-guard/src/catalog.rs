//! Function identity: what a call, an operator, a cast or a DDL reference really reaches.
//!
//! The policies name functions (`context.function_names`), but the server runs *functions*, and
//! one function can be reached under many names: a built-in alias sharing its implementation
//! (`pg_read_file_old` runs the C function `pg_read_file`), a user function in language
//! `internal` or `c` bound to the same symbol, an operator, an aggregate's support function, a
//! cast, a type's I/O function, or a SQL / PL/pgSQL function calling it. A [`Catalog`] knows
//! these links; deciding expands each statement's facts with the names of every function its
//! calls, operators and casts reach ([`Catalog::expand`]), so the name-based rules and users'
//! own policies see them.
//!
//! The built-in catalog ([`Catalog::builtin`]) is compiled in (`data/builtin_catalog.tsv`, made
//! by `gen/builtin_catalog.py`); a target's catalog comes from the rows of [`LOAD_QUERY`] run on
//! it ([`Catalog::from_rows`]) and is layered over the built-ins. See docs/policies.md,
//! "Function identity", for the approach and its limits.

use crate::analyze::facts::FactsData;
use crate::analyze::Analysis;
use crate::StatementFacts;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

/// The built-in functions (see `gen/builtin_catalog.py`).
const BUILTIN_DATA: &str = include_str!("../data/builtin_catalog.tsv");

/// Built-in functions that write large objects (rows of `pg_largeobject`, which no command tag
/// counts).
const LARGE_OBJECT_WRITERS: &[&str] = &[
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "lo_open",
];

/// Oids below this are the server's own (initdb's); user objects get larger ones.
const FIRST_NORMAL_OID: u32 = 16384;

/// Most functions one expansion follows (bodies calling bodies); the rest are not followed.
const MAX_REACH: usize = 10_000;

/// One SQL text, runnable by any role on PostgreSQL 13–17 through the simple query protocol,
/// whose rows (every column text; [`Catalog::from_rows`]) describe the target database's own
/// functions, aggregates, operators, casts and base types (oid ≥ 16384: created after initdb,
/// extensions included) and the built-in functions they use. Every row has 11 columns, the
/// first a tag:
///
/// * `function`: oid, schema, name, language, prokind, symbol (`prosrc` for `internal`,
///   `probin|prosrc` for `c`), definition (`pg_get_functiondef` for `sql` and `plpgsql`
///   functions and procedures);
/// * `aggregate`: aggregate oid, then its transition, final, combine, serial, deserial, moving
///   transition, moving inverse and moving final function oids (`0`: none);
/// * `operator`: oid, schema, name, function, restriction estimator, join estimator;
/// * `cast`: oid, target type schema, target type name, function;
/// * `type`: oid, schema, name, input, output, receive, send, typmod_in, typmod_out, analyze;
/// * `relation`: oid, schema, name, and why a write to it may change rows elsewhere (a
///   trigger, a non-SELECT rule or a cascading foreign-key action on it, or on one of its
///   partitions or inheritance children).
pub const LOAD_QUERY: &str = r#"WITH RECURSIVE ops AS (
  SELECT o.oid, n.nspname, o.oprname, o.oprcode::oid AS f1, o.oprrest::oid AS f2, o.oprjoin::oid AS f3
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
  WHERE o.oid >= 16384
), aggs AS (
  SELECT a.aggfnoid::oid AS oid, a.aggtransfn::oid AS f1, a.aggfinalfn::oid AS f2,
         a.aggcombinefn::oid AS f3, a.aggserialfn::oid AS f4, a.aggdeserialfn::oid AS f5,
         a.aggmtransfn::oid AS f6, a.aggminvtransfn::oid AS f7, a.aggmfinalfn::oid AS f8
  FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid::oid >= 16384
), casts AS (
  SELECT c.oid, n.nspname, t.typname, c.castfunc AS f1
  FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  WHERE c.oid >= 16384 OR c.castfunc >= 16384
), types AS (
  SELECT t.oid, n.nspname, t.typname, t.typinput::oid AS f1, t.typoutput::oid AS f2,
         t.typreceive::oid AS f3, t.typsend::oid AS f4, t.typmodin::oid AS f5,
         t.typmodout::oid AS f6, t.typanalyze::oid AS f7
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  WHERE t.oid >= 16384 AND t.typtype = 'b' AND t.typinput <> 'pg_catalog.array_in'::pg_catalog.regproc
), effects AS (
  SELECT t.tgrelid AS rel, CASE WHEN t.tgisinternal THEN 'foreign key action ' ELSE 'trigger ' END
         || t.tgname::text AS why
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
  WHERE NOT t.tgisinternal OR p.proname IN ('RI_FKey_cascade_del', 'RI_FKey_cascade_upd',
    'RI_FKey_setnull_del', 'RI_FKey_setnull_upd', 'RI_FKey_setdefault_del', 'RI_FKey_setdefault_upd')
  UNION SELECT r.ev_class, 'rule ' || r.rulename::text FROM pg_catalog.pg_rewrite r WHERE r.ev_type <> '1'
), reached(rel, why) AS (
  SELECT rel, why FROM effects
  UNION SELECT i.inhparent, e.why FROM pg_catalog.pg_inherits i JOIN reached e ON i.inhrelid = e.rel
), used AS (
  SELECT unnest(ARRAY[f1, f2, f3]) AS f FROM ops
  UNION SELECT unnest(ARRAY[f1, f2, f3, f4, f5, f6, f7, f8]) FROM aggs
  UNION SELECT f1 FROM casts
  UNION SELECT unnest(ARRAY[f1, f2, f3, f4, f5, f6, f7]) FROM types
)
SELECT 'function', p.oid::text, n.nspname::text, p.proname::text, l.lanname::text, p.prokind::text,
  CASE WHEN l.lanname = 'internal' THEN p.prosrc
       WHEN l.lanname = 'c' THEN coalesce(p.probin, '') || '|' || p.prosrc END,
  CASE WHEN l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
       THEN pg_catalog.pg_get_functiondef(p.oid) END,
  NULL, NULL, NULL
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.oid >= 16384 OR p.oid IN (SELECT f FROM used)
UNION ALL SELECT 'aggregate', oid::text, f1::text, f2::text, f3::text, f4::text, f5::text,
  f6::text, f7::text, f8::text, NULL FROM aggs
UNION ALL SELECT 'operator', oid::text, nspname::text, oprname::text, f1::text, f2::text,
  f3::text, NULL, NULL, NULL, NULL FROM ops
UNION ALL SELECT 'cast', oid::text, nspname::text, typname::text, f1::text, NULL, NULL, NULL,
  NULL, NULL, NULL FROM casts
UNION ALL SELECT 'type', oid::text, nspname::text, typname::text, f1::text, f2::text, f3::text,
  f4::text, f5::text, f6::text, f7::text FROM types
UNION ALL SELECT 'relation', c.oid::text, n.nspname::text, c.relname::text, e.why, NULL, NULL,
  NULL, NULL, NULL, NULL
FROM reached e JOIN pg_catalog.pg_class c ON c.oid = e.rel
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"#;

/// Errors building a catalog from [`LOAD_QUERY`] rows.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A row does not have the shape [`LOAD_QUERY`] gives.
    #[error("catalog row {row} is malformed ({why}); was it produced by parapet_guard::catalog::LOAD_QUERY?")]
    Row {
        /// Index of the row.
        row: usize,
        /// What is wrong.
        why: String,
    },
}

/// One function of the catalog.
#[derive(Debug, Clone)]
struct Func {
    oid: u32,
    /// Schema (`pg_catalog` for built-ins).
    schema: String,
    name: String,
    /// `internal`, `c`, `sql`, `plpgsql`, ….
    lang: String,
    /// `f`, `p`, `a`, `w`.
    kind: char,
    /// The implementation symbol: `prosrc` (internal) or `probin|prosrc` (c); empty otherwise.
    symbol: String,
}

/// What a call, operator or cast reaches: the names to add to a statement's facts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Reached {
    /// Bare names (`function_names`).
    names: BTreeSet<String>,
    /// Normalised names (`functions`: bare for `pg_catalog`, else `schema.name`).
    functions: BTreeSet<String>,
}

/// A catalog of functions and the objects that call them (see the module documentation).
/// Immutable once built; `Send + Sync`; share it behind an `Arc`.
pub struct Catalog {
    id: u64,
    funcs: Vec<Func>,
    /// Functions by bare name.
    by_name: HashMap<String, Vec<usize>>,
    /// What each expansion key reaches (`f:` function as in the facts, `o:` operator, `t:`
    /// cast target type), for keys that reach more than their own name.
    reach: HashMap<String, Arc<Reached>>,
    /// Number of operators, aggregates, casts and types of the target.
    objects: usize,
    /// Relations a write to which may change rows elsewhere (triggers, rules, cascading
    /// foreign keys, on them or on their partitions and children), by bare name:
    /// (schema, why).
    effects: HashMap<String, Vec<(String, String)>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("id", &format_args!("{:016x}", self.id))
            .field("functions", &self.funcs.len())
            .field("objects", &self.objects)
            .field("expansions", &self.reach.len())
            .finish()
    }
}

/// Links found while building a catalog, before the expansions are computed.
#[derive(Default)]
struct Builder {
    funcs: Vec<Func>,
    by_oid: HashMap<u32, Vec<usize>>,
    by_name: HashMap<String, Vec<usize>>,
    /// Functions each function calls (body, aggregate support functions), by oid or name.
    calls: HashMap<usize, Vec<Target>>,
    /// Functions of each operator name (bare and qualified).
    operators: HashMap<String, Vec<u32>>,
    /// Functions of each type name (bare and qualified): casts into it and its I/O.
    types: HashMap<String, Vec<u32>>,
    objects: usize,
    /// Relations a write to which may change rows elsewhere, by bare name: (schema, why).
    effects: HashMap<String, Vec<(String, String)>>,
}

/// What a body or object refers to.
#[derive(Debug, Clone)]
enum Target {
    Oid(u32),
    /// A function as written in the facts (`name` or `schema.name`).
    Function(String),
    Operator(String),
    Type(String),
}

impl Builder {
    fn add(&mut self, f: Func) -> usize {
        if let Some(existing) = self.by_oid.get(&f.oid).and_then(|ix| {
            ix.iter()
                .copied()
                .find(|&i| self.funcs[i].name == f.name && self.funcs[i].symbol == f.symbol)
        }) {
            return existing;
        }
        let i = self.funcs.len();
        self.by_oid.entry(f.oid).or_default().push(i);
        self.by_name.entry(f.name.clone()).or_default().push(i);
        self.funcs.push(f);
        i
    }

    /// Functions a name as written in the facts may resolve to: qualified names in their
    /// schema, unqualified ones in any schema (the session's search path is not known; the
    /// union is a safe over-approximation).
    fn resolve(&self, written: &str) -> Vec<usize> {
        let (schema, name) = match written.rsplit_once('.') {
            Some((s, n)) => (Some(s.rsplit('.').next().unwrap_or(s)), n),
            None => (None, written),
        };
        self.by_name
            .get(name)
            .map(|ix| {
                ix.iter()
                    .copied()
                    .filter(|&i| schema.is_none_or(|s| self.funcs[i].schema == s))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn oids(&self, oid: u32) -> &[usize] {
        self.by_oid.get(&oid).map_or(&[], Vec::as_slice)
    }

    /// The functions sharing an implementation with `i` (terminal: their own links are not
    /// followed): the same symbol (`internal`: `prosrc`; `c`: library and symbol), the
    /// built-in named like `i`'s internal symbol (the C function `pg_read_file` is the SQL
    /// function `pg_read_file`, in an older signature), and the internal functions whose
    /// symbol is `i`'s name.
    fn aliases(&self, i: usize, by_symbol: &HashMap<(&str, &str), Vec<usize>>) -> Vec<usize> {
        let f = &self.funcs[i];
        let mut out = Vec::new();
        if f.symbol.is_empty() || matches!(f.kind, 'a' | 'w') {
            return out;
        }
        if let Some(same) = by_symbol.get(&(f.lang.as_str(), f.symbol.as_str())) {
            out.extend(same.iter().copied());
        }
        if f.lang == "internal" {
            if let Some(named) = self.by_name.get(&f.symbol) {
                out.extend(
                    named
                        .iter()
                        .copied()
                        .filter(|&j| self.funcs[j].oid < FIRST_NORMAL_OID),
                );
            }
        }
        if f.oid < FIRST_NORMAL_OID {
            if let Some(same) = by_symbol.get(&("internal", f.name.as_str())) {
                out.extend(same.iter().copied());
            }
        }
        out
    }

    fn build(self, id: u64) -> Catalog {
        let mut by_symbol: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, f) in self.funcs.iter().enumerate() {
            if !f.symbol.is_empty() && !matches!(f.kind, 'a' | 'w') {
                by_symbol
                    .entry((f.lang.as_str(), f.symbol.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        let mut reach = HashMap::new();
        let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        for f in &self.funcs {
            names.insert(f.name.clone());
            if f.schema != "pg_catalog" {
                names.insert(format!("{}.{}", f.schema, f.name));
            }
        }
        for n in names {
            let start = self.resolve(&n);
            keys.push((format!("f:{n}"), start));
        }
        for (op, oids) in &self.operators {
            let start = oids.iter().flat_map(|&o| self.oids(o).to_vec()).collect();
            keys.push((format!("o:{op}"), start));
        }
        for (ty, oids) in &self.types {
            let start = oids.iter().flat_map(|&o| self.oids(o).to_vec()).collect();
            keys.push((format!("t:{ty}"), start));
        }
        for (key, start) in keys {
            let r = self.expand_from(&start, &by_symbol);
            // A call that reaches only functions of its own name adds nothing.
            let bare = key[2..].rsplit('.').next().unwrap_or_default();
            let trivial = key.starts_with("f:")
                && r.names.iter().all(|n| n == bare)
                && r.functions
                    .iter()
                    .all(|x| x.rsplit('.').next() == Some(bare));
            if !r.names.is_empty() && !trivial {
                reach.insert(key, Arc::new(r));
            }
        }
        Catalog {
            id,
            funcs: self.funcs,
            by_name: self.by_name,
            reach,
            objects: self.objects,
            effects: self.effects,
        }
    }

    /// Everything reachable from `start` (bounded by [`MAX_REACH`] functions).
    fn expand_from(
        &self,
        start: &[usize],
        by_symbol: &HashMap<(&str, &str), Vec<usize>>,
    ) -> Reached {
        let mut out = Reached::default();
        let mut seen: HashSet<usize> = HashSet::new();
        let mut queue: VecDeque<usize> = start.iter().copied().collect();
        let note = |out: &mut Reached, f: &Func| {
            out.names.insert(f.name.clone());
            out.functions.insert(if f.schema == "pg_catalog" {
                f.name.clone()
            } else {
                format!("{}.{}", f.schema, f.name)
            });
        };
        while let Some(i) = queue.pop_front() {
            if seen.len() >= MAX_REACH || !seen.insert(i) {
                continue;
            }
            note(&mut out, &self.funcs[i]);
            for j in self.aliases(i, by_symbol) {
                note(&mut out, &self.funcs[j]);
            }
            for t in self.calls.get(&i).map_or(&[][..], Vec::as_slice) {
                match t {
                    Target::Oid(o) => queue.extend(self.oids(*o)),
                    Target::Function(n) => queue.extend(self.resolve(n)),
                    Target::Operator(op) => {
                        for o in self.operator_oids(op) {
                            queue.extend(self.oids(o));
                        }
                    }
                    Target::Type(ty) => {
                        for o in self.type_oids(ty) {
                            queue.extend(self.oids(o));
                        }
                    }
                }
            }
        }
        out
    }

    fn operator_oids(&self, op: &str) -> Vec<u32> {
        self.operators.get(op).cloned().unwrap_or_default()
    }

    fn type_oids(&self, ty: &str) -> Vec<u32> {
        self.types.get(ty).cloned().unwrap_or_default()
    }
}

/// `0`/empty → none; else the oid.
fn oid_of(s: Option<&str>) -> Option<u32> {
    s.and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&o| o != 0)
}

/// Links `name` and `schema.name` (how facts write an object) to functions.
fn link(map: &mut HashMap<String, Vec<u32>>, schema: &str, name: &str, oids: &[u32]) {
    for key in [name.to_string(), format!("{schema}.{name}")] {
        map.entry(key).or_default().extend_from_slice(oids);
    }
}

/// The builtin functions as a builder.
fn builtin_builder() -> Builder {
    let mut b = Builder::default();
    for line in BUILTIN_DATA.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [oid, schema, name, lang, kind, symbol] = cols.as_slice() else {
            continue;
        };
        let Ok(oid) = oid.parse::<u32>() else {
            continue;
        };
        b.add(Func {
            oid,
            schema: if schema.is_empty() {
                "pg_catalog".into()
            } else {
                schema.to_string()
            },
            name: name.to_string(),
            lang: lang.to_string(),
            kind: kind.chars().next().unwrap_or('f'),
            symbol: match *symbol {
                "=" => name.to_string(),
                s => s.to_string(),
            },
        });
    }
    b
}

/// The first 8 bytes of a SHA-256, as a number.
fn hash64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

impl Catalog {
    /// The built-in catalog shipped with the guard (the union of the PostgreSQL versions in
    /// `data/builtin_catalog.tsv`), built once.
    pub fn builtin() -> Arc<Catalog> {
        static BUILTIN: OnceLock<Arc<Catalog>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Arc::new(builtin_builder().build(hash64(&[BUILTIN_DATA]))))
            .clone()
    }

    /// The target's catalog from the rows of [`LOAD_QUERY`], layered over the built-ins. The
    /// bodies of its SQL and PL/pgSQL functions are analysed once, here.
    pub fn from_rows(rows: Vec<Vec<Option<String>>>) -> Result<Catalog, CatalogError> {
        let mut b = builtin_builder();
        let mut hasher_parts: Vec<String> = vec![hash64(&[BUILTIN_DATA]).to_string()];
        let mut sorted: Vec<String> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.as_deref().unwrap_or("\u{0}"))
                    .collect::<Vec<_>>()
                    .join("\u{1e}")
            })
            .collect();
        sorted.sort();
        hasher_parts.append(&mut sorted);
        let mut bodies: Vec<(usize, String)> = Vec::new();
        let mut aggregates: Vec<(u32, Vec<Target>)> = Vec::new();
        // The built-in functions the target itself reports, by oid: the built-in data is the
        // union of several PostgreSQL versions, which reuse a few oids for other functions
        // (3813: `pg_is_in_backup` in 13 and 14, `xmltext` in 17), so the target's row
        // says which one its objects use.
        let mut own_builtins: HashMap<u32, Vec<usize>> = HashMap::new();
        for (n, row) in rows.iter().enumerate() {
            let col = |i: usize| row.get(i).and_then(|c| c.as_deref());
            let bad = |why: &str| CatalogError::Row {
                row: n,
                why: why.to_string(),
            };
            let tag = col(0).ok_or_else(|| bad("no tag"))?;
            let oid = col(1)
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| bad("no oid"))?;
            match tag {
                "function" => {
                    let (schema, name, lang) = match (col(2), col(3), col(4)) {
                        (Some(s), Some(n), Some(l)) => (s, n, l),
                        _ => return Err(bad("function without schema, name or language")),
                    };
                    let i = b.add(Func {
                        oid,
                        schema: schema.to_string(),
                        name: name.to_string(),
                        lang: lang.to_string(),
                        kind: col(5).and_then(|k| k.chars().next()).unwrap_or('f'),
                        symbol: col(6).unwrap_or("").to_string(),
                    });
                    if oid < FIRST_NORMAL_OID {
                        own_builtins.entry(oid).or_default().push(i);
                    }
                    if let Some(def) = col(7) {
                        bodies.push((i, def.to_string()));
                    }
                }
                "aggregate" => {
                    let support: Vec<Target> = (2..=9)
                        .filter_map(|c| oid_of(col(c)))
                        .map(Target::Oid)
                        .collect();
                    // The aggregate's own function row may come later: linked below.
                    aggregates.push((oid, support));
                    b.objects += 1;
                }
                "operator" => {
                    let (schema, name) = match (col(2), col(3)) {
                        (Some(s), Some(n)) => (s, n),
                        _ => return Err(bad("operator without schema or name")),
                    };
                    let fs: Vec<u32> = (4..=6).filter_map(|c| oid_of(col(c))).collect();
                    link(&mut b.operators, schema, name, &fs);
                    b.objects += 1;
                }
                "cast" => {
                    let (schema, name) = match (col(2), col(3)) {
                        (Some(s), Some(n)) => (s, n),
                        _ => return Err(bad("cast without target type")),
                    };
                    let fs: Vec<u32> = oid_of(col(4)).into_iter().collect();
                    link(&mut b.types, schema, name, &fs);
                    b.objects += 1;
                }
                "type" => {
                    let (schema, name) = match (col(2), col(3)) {
                        (Some(s), Some(n)) => (s, n),
                        _ => return Err(bad("type without schema or name")),
                    };
                    let fs: Vec<u32> = (4..=10).filter_map(|c| oid_of(col(c))).collect();
                    link(&mut b.types, schema, name, &fs);
                    b.objects += 1;
                }
                "relation" => {
                    let (schema, name, why) = match (col(2), col(3), col(4)) {
                        (Some(s), Some(n), Some(w)) => (s, n, w),
                        _ => return Err(bad("relation without schema, name or cause")),
                    };
                    b.effects
                        .entry(name.to_string())
                        .or_default()
                        .push((schema.to_string(), why.to_string()));
                }
                other => return Err(bad(&format!("unknown tag {other:?}"))),
            }
        }
        for (oid, mut own) in own_builtins {
            own.sort_unstable();
            own.dedup();
            b.by_oid.insert(oid, own);
        }
        for (oid, support) in aggregates {
            for i in b.oids(oid).to_vec() {
                b.calls
                    .entry(i)
                    .or_default()
                    .extend(support.iter().cloned());
            }
        }
        for (i, def) in bodies {
            let targets = body_targets(&def);
            b.calls.entry(i).or_default().extend(targets);
        }
        let refs: Vec<&str> = hasher_parts.iter().map(String::as_str).collect();
        Ok(b.build(hash64(&refs)))
    }

    /// Distinguishes catalogs (a hash of their contents), for caches keyed by catalog.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of functions known (built-in and the target's).
    pub fn function_count(&self) -> usize {
        self.funcs.len()
    }

    /// Why a write to `table` (`schema.name` as in the facts) may change rows that its command
    /// tag does not count: a trigger, a rule or a cascading foreign key on it or on one of its
    /// partitions or children. A table written as `public.name` may have been named without a
    /// schema, so a relation of that name in any schema counts. `None`: nothing known.
    pub fn write_effect(&self, table: &str) -> Option<String> {
        let (schema, name) = table.rsplit_once('.').unwrap_or(("public", table));
        let found = self.effects.get(name)?;
        found
            .iter()
            .find(|(s, _)| schema == "public" || s == schema)
            .map(|(s, why)| format!("{why} on {s}.{name}"))
    }

    /// A function among `facts.functions` (expanded: what calls, operators and casts reach)
    /// that may change rows no command tag counts: any function of the target's own (its body
    /// may write), any function not in the catalog, and the built-in large-object writers.
    pub fn writing_function(&self, facts: &FactsData) -> Option<String> {
        facts
            .functions
            .iter()
            .find(|f| {
                let (schema, name) = match f.rsplit_once('.') {
                    Some((s, n)) => (Some(s), n),
                    None => (None, f.as_str()),
                };
                let Some(ix) = self.by_name.get(name) else {
                    return true;
                };
                let mut candidates = ix
                    .iter()
                    .map(|&i| &self.funcs[i])
                    .filter(|x| schema.is_none_or(|s| x.schema == s))
                    .peekable();
                if candidates.peek().is_none() {
                    return true;
                }
                candidates.any(|x| x.oid >= FIRST_NORMAL_OID)
                    || LARGE_OBJECT_WRITERS.contains(&name)
            })
            .cloned()
    }

    /// Whether a function of this bare name is known.
    pub fn knows_function(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The facts with what their calls, operators and casts reach added to `functions` and
    /// `function_names`; `None` when they reach nothing more.
    pub fn expand(&self, facts: &FactsData) -> Option<FactsData> {
        let keys = facts
            .functions
            .iter()
            .map(|f| ("f:", f))
            .chain(facts.operators.iter().map(|o| ("o:", o)))
            .chain(facts.casts.iter().map(|t| ("t:", t)));
        let mut out: Option<FactsData> = None;
        let mut key = String::new();
        for (prefix, name) in keys {
            key.clear();
            key.push_str(prefix);
            key.push_str(name);
            let Some(r) = self.reach.get(key.as_str()) else {
                continue;
            };
            let missing = !r.names.is_subset(&facts.function_names)
                || !r.functions.is_subset(&facts.functions);
            if !missing {
                continue;
            }
            let f = out.get_or_insert_with(|| facts.clone());
            f.function_names.extend(r.names.iter().cloned());
            f.functions.extend(r.functions.iter().cloned());
        }
        out
    }

    /// The analysis with each statement's facts expanded ([`Catalog::expand`]); the same
    /// analysis when nothing is added.
    pub fn expand_analysis(&self, analysis: &Arc<Analysis>) -> Arc<Analysis> {
        let mut changed: Option<Vec<StatementFacts>> = None;
        for (i, st) in analysis.statements.iter().enumerate() {
            if let Some(f) = self.expand(st) {
                let v = changed.get_or_insert_with(|| analysis.statements.clone());
                v[i] = StatementFacts(Arc::new(f));
            }
        }
        match changed {
            None => analysis.clone(),
            Some(statements) => Arc::new(Analysis {
                statements,
                ..Analysis::clone(analysis)
            }),
        }
    }
}

/// What a function definition (`pg_get_functiondef`) calls: the functions, operators and casts
/// of its body, as the guard's analyser sees them.
fn body_targets(def: &str) -> Vec<Target> {
    let analysis = crate::analyze::analyze_limited(def, usize::MAX);
    let mut out = Vec::new();
    for st in &analysis.statements {
        out.extend(st.functions.iter().cloned().map(Target::Function));
        out.extend(st.operators.iter().cloned().map(Target::Operator));
        out.extend(st.casts.iter().cloned().map(Target::Type));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sql: &str) -> FactsData {
        let a = crate::analyze::analyze(sql);
        FactsData::clone(&a.statements[0])
    }

    #[test]
    fn statements_that_may_change_the_catalog() {
        for sql in [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "ALTER FUNCTION f() RENAME TO g",
            "DROP FUNCTION f()",
            "CREATE OPERATOR <<< (FUNCTION = f, RIGHTARG = text)",
            "CREATE AGGREGATE a(int) (SFUNC = int4pl, STYPE = int)",
            "CREATE CAST (int AS text) WITH FUNCTION f(int)",
            "CREATE TYPE t AS (a int)",
            "CREATE EXTENSION hstore",
            "ALTER FUNCTION f() SET SCHEMA s",
            "DROP OWNED BY bob",
            "CREATE SCHEMA s",
            "ROLLBACK",
            "ROLLBACK TO SAVEPOINT x",
            "DO $$ BEGIN CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; END $$",
        ] {
            assert!(facts(sql).may_change_catalog(), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "COMMIT",
            "BEGIN",
            "CREATE INDEX i ON t (a)",
            "COMMENT ON FUNCTION f() IS 'x'",
        ] {
            assert!(!facts(sql).may_change_catalog(), "{sql}");
        }
    }

    #[test]
    fn builtin_aliases_share_facts() {
        let c = Catalog::builtin();
        assert!(c.function_count() > 2500, "{c:?}");
        let f = c
            .expand(&facts("SELECT pg_read_file_old('x', 0, 10)"))
            .expect("pg_read_file_old reaches pg_read_file");
        assert!(f.function_names.contains("pg_read_file"), "{f:?}");
        // Ordinary statements reach nothing new.
        for sql in [
            "SELECT 1 + 2",
            "SELECT 'a' || 'b'",
            "SELECT '1'::int",
            "SELECT pg_read_file_x('a')",
        ] {
            let f = facts(sql);
            assert!(
                c.expand(&f)
                    .is_none_or(|e| !e.function_names.contains("pg_read_file")),
                "{sql}"
            );
        }
    }

    #[test]
    fn builtin_catalog_is_the_union_of_13_to_17() {
        let c = Catalog::builtin();
        for v in ["13.", "14.", "15.", "16.", "17."] {
            assert!(
                BUILTIN_DATA
                    .lines()
                    .any(|l| l.starts_with(&format!("# source: PostgreSQL {v}"))),
                "no PostgreSQL {v} source in the data header"
            );
        }
        for name in [
            // 13 only (removed in 14).
            "numeric_fac",
            // 13 and 14 only (renamed pg_backup_start / pg_backup_stop in 15).
            "pg_start_backup",
            "pg_stop_backup",
            "pg_is_in_backup",
            // 13 to 16 (replaced by pg_stat_get_checkpointer_* in 17).
            "pg_stat_get_bgwriter_timed_checkpoints",
            // 15 and later.
            "pg_backup_start",
            // 16 and later.
            "pg_input_is_valid",
            // 17 only.
            "pg_sync_replication_slots",
            "pg_available_wal_summaries",
        ] {
            assert!(c.knows_function(name), "{name}");
        }
        // pg_rotate_logfile_old (13 to 16) runs pg_rotate_logfile.
        let f = c
            .expand(&facts("SELECT pg_rotate_logfile_old()"))
            .expect("pg_rotate_logfile_old reaches pg_rotate_logfile");
        assert!(f.function_names.contains("pg_rotate_logfile"), "{f:?}");
    }

    #[test]
    fn target_rows_decide_reused_builtin_oids() {
        // Oid 3813 is pg_is_in_backup in PostgreSQL 13 and 14 and xmltext in 17; the
        // built-in data has both. A 17 target's operator on 3813 reaches only its xmltext.
        let row = |v: &[&str]| -> Vec<Option<String>> {
            let mut r: Vec<Option<String>> = v.iter().map(|s| Some(s.to_string())).collect();
            r.resize(11, None);
            r
        };
        let rows = vec![
            row(&[
                "function",
                "3813",
                "pg_catalog",
                "xmltext",
                "internal",
                "f",
                "xmltext",
            ]),
            row(&["operator", "20000", "public", "<<<", "3813", "0", "0"]),
        ];
        let c = Catalog::from_rows(rows).expect("rows");
        let f = c
            .expand(&facts("SELECT <<< 'x'"))
            .expect("<<< reaches xmltext");
        assert!(f.function_names.contains("xmltext"), "{f:?}");
        assert!(!f.function_names.contains("pg_is_in_backup"), "{f:?}");
        // Without the target's row, both are possible.
        let c = Catalog::from_rows(vec![row(&[
            "operator", "20000", "public", "<<<", "3813", "0", "0",
        ])])
        .expect("rows");
        let f = c
            .expand(&facts("SELECT <<< 'x'"))
            .expect("<<< reaches 3813");
        assert!(f.function_names.contains("xmltext"), "{f:?}");
        assert!(f.function_names.contains("pg_is_in_backup"), "{f:?}");
    }

    #[test]
    fn target_rows_link_operators_aggregates_casts_and_bodies() {
        let row = |v: &[&str]| -> Vec<Option<String>> {
            let mut r: Vec<Option<String>> = v
                .iter()
                .map(|s| (!s.is_empty()).then(|| s.to_string()))
                .collect();
            r.resize(11, None);
            r
        };
        // 3826 is pg_read_file(text) in PostgreSQL 13 to 17 (symbol pg_read_file_all).
        let rows = vec![
            row(&["function", "3826", "pg_catalog", "pg_read_file", "internal", "f", "pg_read_file_all"]),
            row(&["operator", "20000", "public", "<<<", "3826", "0", "0"]),
            row(&["function", "20001", "public", "rd", "internal", "f", "pg_read_file_all"]),
            row(&["function", "20002", "public", "wrap", "sql", "f", "", "CREATE FUNCTION public.wrap(p text) RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file(p) $$"]),
            row(&["function", "20003", "public", "agg", "internal", "a", "aggregate_dummy"]),
            row(&["aggregate", "20003", "3826", "0", "0", "0", "0", "0", "0", "0"]),
            row(&["function", "20004", "public", "evil_in", "sql", "f", "", "CREATE FUNCTION public.evil_in(text) RETURNS text LANGUAGE sql AS $$ SELECT public.wrap($1) $$"]),
            row(&["cast", "20005", "public", "evil", "20004"]),
        ];
        let c = Catalog::from_rows(rows).expect("rows");
        assert_ne!(c.id(), Catalog::builtin().id());
        for sql in [
            "SELECT <<< '/etc/passwd'",
            "SELECT 1 OPERATOR(public.<<<) 'x'",
            "SELECT rd('x')",
            "SELECT public.wrap('x')",
            "SELECT agg(x) FROM t",
            "SELECT 'x'::evil",
        ] {
            let f = c.expand(&facts(sql)).unwrap_or_else(|| panic!("{sql}"));
            assert!(f.function_names.contains("pg_read_file"), "{sql}: {f:?}");
        }
        let f = facts("SELECT 1 + 2");
        assert!(c.expand(&f).is_none());
    }
}
