//! Names the server resolves in `pg_catalog` before the search path: the system catalog tables
//! and views of PostgreSQL 13–17, and the built-in functions that run SQL given as text or read
//! a relation named by an argument.

/// System catalog tables and views of PostgreSQL 13–17 (`pg_catalog` is searched first, so an
/// unqualified `pg_class` is `pg_catalog.pg_class` whatever the search path says). The
/// statistics views (`pg_stat_*`, `pg_statio_*`) are matched by prefix in [`is_catalog_relation`].
const CATALOG_RELATIONS: &[&str] = &[
    // Tables.
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_range",
    "pg_replication_origin",
    "pg_rewrite",
    "pg_seclabel",
    "pg_sequence",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shseclabel",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tablespace",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user_mapping",
    // Views.
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_config",
    "pg_cursors",
    "pg_file_settings",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_indexes",
    "pg_locks",
    "pg_matviews",
    "pg_policies",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_publication_tables",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_roles",
    "pg_rules",
    "pg_seclabels",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shmem_allocations",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_tables",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_user",
    "pg_user_mappings",
    "pg_views",
    "pg_wait_events",
];

/// Whether an unqualified relation name is a system catalog table or view.
pub(super) fn is_catalog_relation(name: &str) -> bool {
    name.starts_with("pg_stat_")
        || name.starts_with("pg_statio_")
        || CATALOG_RELATIONS.contains(&name)
}

/// What a built-in does with one of its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextArg {
    /// Runs the argument as an SQL query.
    Query,
    /// Reads the relation the argument names (`regclass` or text).
    Relation,
}

/// Built-ins (PostgreSQL 13–17 core and contrib) that run SQL given as text or read a relation
/// named by an argument: (name, number of arguments, or 0 for any; argument index; use).
/// From `utils/adt/xml.c` (`query_to_xml*` run `SPI_execute` / `SPI_cursor_open` on their text;
/// `table_to_xml*` build `SELECT * FROM` the relation), `tsvector_op.c` (`ts_stat` prepares its
/// text), `tsquery_rewrite.c` (`ts_rewrite(tsquery, text)` prepares its text) and contrib
/// `tablefunc` (`crosstab*` run their text, `connectby` reads the relation it names).
pub(super) const SQL_TEXT_FUNCTIONS: &[(&str, usize, usize, TextArg)] = &[
    ("query_to_xml", 0, 0, TextArg::Query),
    ("query_to_xmlschema", 0, 0, TextArg::Query),
    ("query_to_xml_and_xmlschema", 0, 0, TextArg::Query),
    ("ts_stat", 0, 0, TextArg::Query),
    ("ts_rewrite", 2, 1, TextArg::Query),
    ("crosstab", 0, 0, TextArg::Query),
    ("crosstab", 2, 1, TextArg::Query),
    ("crosstab2", 0, 0, TextArg::Query),
    ("crosstab3", 0, 0, TextArg::Query),
    ("crosstab4", 0, 0, TextArg::Query),
    ("table_to_xml", 0, 0, TextArg::Relation),
    ("table_to_xmlschema", 0, 0, TextArg::Relation),
    ("table_to_xml_and_xmlschema", 0, 0, TextArg::Relation),
    ("connectby", 0, 0, TextArg::Relation),
];
