//! Typed statement facts: what one statement (and everything nested in it) does.

use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Why a statement could not be analysed; the engine denies it whatever the policies say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Engine rule id: `parapet.unparseable`, `parapet.unanalysable`, `parapet.dynamic-sql` or
    /// `parapet.too-large`.
    pub rule: &'static str,
    /// What could not be analysed, for the user.
    pub reason: String,
}

/// Rule id for text that does not parse as PostgreSQL.
pub const RULE_UNPARSEABLE: &str = "parapet.unparseable";
/// Rule id for parsed text whose effect cannot be determined (unknown function language, …).
pub const RULE_UNANALYSABLE: &str = "parapet.unanalysable";
/// Rule id for `EXECUTE` of SQL text that is not a constant.
pub const RULE_DYNAMIC_SQL: &str = "parapet.dynamic-sql";
/// Rule id for text over an analysis limit (size, tokens, parse nodes, nesting depth; see
/// `analyze::limits`).
pub const RULE_TOO_LARGE: &str = "parapet.too-large";

/// Facts of one statement, merged with the facts of everything nested in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FactsData {
    /// The statement's text as sent (trimmed).
    pub text: String,
    /// Kind of the statement itself (see the schema for the list).
    pub kind: String,
    /// Kinds and tags of the statement and everything nested in it.
    pub kinds: BTreeSet<String>,
    /// Tables read, `schema.name`.
    pub reads: BTreeSet<String>,
    /// Tables written (DML targets, DDL objects), `schema.name`.
    pub writes: BTreeSet<String>,
    /// Functions called, normalised (`pg_catalog.` dropped, other schemas kept).
    pub functions: BTreeSet<String>,
    /// Functions called, bare names.
    pub function_names: BTreeSet<String>,
    /// Operators used in expressions (`+`, `~~`; `schema.op` for `OPERATOR(schema.op)`), and
    /// named by `ORDER BY … USING` and operator classes. Analysis records them as written;
    /// deciding adds the functions they reach to `functions` (see [`crate::catalog`]).
    pub operators: BTreeSet<String>,
    /// Types values are cast to (`x::t`, `CAST(x AS t)`, `t 'x'`), `pg_catalog.` dropped: the
    /// cast functions into them and their I/O functions are reached (see [`crate::catalog`]).
    pub casts: BTreeSet<String>,
    /// The statement (or anything nested) may change what the catalog says about functions,
    /// operators, aggregates, casts or types (see [`FactsData::may_change_catalog`]).
    pub catalog_change: bool,
    /// False only when the statement itself is an UPDATE/DELETE without WHERE.
    pub has_where: bool,
    /// An UPDATE without WHERE anywhere.
    pub update_without_where: bool,
    /// A DELETE without WHERE anywhere.
    pub delete_without_where: bool,
    /// COPY direction: "to", "from", or "" when there is no COPY.
    pub copy_direction: String,
    /// COPY to/from a server file.
    pub copy_server_file: bool,
    /// COPY to/from a server-side program.
    pub copy_program: bool,
    /// Object types named by DDL / GRANT.
    pub object_types: BTreeSet<String>,
    /// Run-time parameters changed by SET / set_config ("?" when not a constant).
    pub set_variables: BTreeSet<String>,
    /// Extensions created or updated (`CREATE EXTENSION`, `ALTER EXTENSION … UPDATE`).
    pub extensions: BTreeSet<String>,
    /// Languages of functions and procedures created and of DO blocks, and languages created
    /// by `CREATE LANGUAGE` (lower case: `sql`, `plpgsql`, `c`, `internal`, `plpython3u`, …).
    pub languages: BTreeSet<String>,
    /// Ways the statement turns integrity checks off: `session_replication_role`,
    /// `row_security`, `disable_trigger`, `disable_rule`, `disable_event_trigger`,
    /// `disable_row_level_security`, `no_force_row_level_security`.
    pub integrity_bypass: BTreeSet<String>,
    /// Replication and foreign-data objects created or altered: `subscription`, `publication`,
    /// `foreign_server`, `user_mapping`, `foreign_table`, `import_foreign_schema`,
    /// `foreign_data_wrapper`.
    pub egress: BTreeSet<String>,
    /// Ownership given to a role (`… OWNER TO`, `REASSIGN OWNED`, `CREATE SCHEMA …
    /// AUTHORIZATION`, `CREATE DATABASE|TABLESPACE … OWNER`).
    pub ownership_change: bool,
    /// A function or procedure made `SECURITY DEFINER` (`CREATE` or `ALTER FUNCTION`).
    pub security_definer: bool,
    /// A system catalog relation (in `pg_catalog`, unqualified `pg_*` catalog names included)
    /// is written.
    pub catalog_write: bool,
    /// Whether anything is nested in the statement.
    pub nested: bool,
    /// Dynamic SQL (non-constant EXECUTE) somewhere in the statement.
    pub dynamic_sql: bool,
    /// Whether the statement has `$n` parameters.
    pub has_parameters: bool,
    /// A data-modifying statement (INSERT, UPDATE, DELETE, MERGE) nested in this one, e.g. in a
    /// `WITH`: rows it changes are not counted by the command tag.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nested_write: bool,
    /// What could not be analysed (the statement is denied when non-empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// Facts of one statement; cheap to clone (shared), serialises as its [`FactsData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts(pub Arc<FactsData>);

impl std::ops::Deref for StatementFacts {
    type Target = FactsData;
    fn deref(&self) -> &FactsData {
        &self.0
    }
}

impl Serialize for StatementFacts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Whether a statement kind changes table rows (and its command tag counts them).
pub fn is_write_kind(kind: &str) -> bool {
    matches!(kind, "insert" | "update" | "delete" | "merge")
}

impl FactsData {
    /// Empty facts for a statement of `kind`.
    pub fn new(text: &str, kind: &str) -> Self {
        FactsData {
            text: text.trim().to_string(),
            kind: kind.to_string(),
            has_where: true,
            ..FactsData::default()
        }
    }

    /// Merges the facts of a nested statement into these.
    pub fn absorb(&mut self, other: FactsData) {
        self.nested = true;
        self.nested_write |= other.nested_write || is_write_kind(&other.kind);
        self.kinds.insert(other.kind);
        self.kinds.extend(other.kinds);
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
        self.functions.extend(other.functions);
        self.function_names.extend(other.function_names);
        self.operators.extend(other.operators);
        self.casts.extend(other.casts);
        self.catalog_change |= other.catalog_change;
        self.update_without_where |= other.update_without_where;
        self.delete_without_where |= other.delete_without_where;
        if self.copy_direction.is_empty() {
            self.copy_direction = other.copy_direction;
        }
        self.copy_server_file |= other.copy_server_file;
        self.copy_program |= other.copy_program;
        self.object_types.extend(other.object_types);
        self.set_variables.extend(other.set_variables);
        self.extensions.extend(other.extensions);
        self.languages.extend(other.languages);
        self.integrity_bypass.extend(other.integrity_bypass);
        self.egress.extend(other.egress);
        self.ownership_change |= other.ownership_change;
        self.security_definer |= other.security_definer;
        self.catalog_write |= other.catalog_write;
        self.dynamic_sql |= other.dynamic_sql;
        self.has_parameters |= other.has_parameters;
        self.problems.extend(other.problems);
    }

    /// Whether the statement (or anything nested in it) may change what the catalog says about
    /// functions, operators, aggregates, casts or types: CREATE / ALTER / DROP / RENAME of
    /// functions, procedures, operators (classes, families), aggregates, casts, types, domains,
    /// extensions, schemas, languages, transforms and conversions, `ALTER … SET SCHEMA`, any
    /// DROP, `DROP OWNED`, CREATE TRIGGER, CREATE RULE and CREATE / ALTER TABLE adding a
    /// cascading foreign key, a partition or a parent (what a write to a table reaches beyond
    /// it), and a ROLLBACK (which may undo such a change). The gateway reloads the
    /// target's catalog ([`crate::catalog::LOAD_QUERY`]) after such a statement. DDL run later
    /// by a function or procedure that a statement calls is not seen here.
    pub fn may_change_catalog(&self) -> bool {
        self.catalog_change
    }

    /// Schemas of every table read or written.
    pub fn schemas(&self) -> BTreeSet<String> {
        self.reads
            .iter()
            .chain(self.writes.iter())
            .filter_map(|t| t.split_once('.').map(|(s, _)| s.to_string()))
            .collect()
    }
}
