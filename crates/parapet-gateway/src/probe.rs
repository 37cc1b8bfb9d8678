//! A look at a target's server through the gateway's own login (the same TLS, authentication
//! and credentials as its sessions): what the upstream role may do. `parapet init` and `parapet
//! doctor` use it to warn about a superuser upstream role (docs/config.md, "The upstream role").

use crate::config::UpstreamConfig;
use crate::error::GatewayError;

/// What the upstream role is and may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProbe {
    /// The role the gateway logs in as.
    pub role: String,
    /// The database it logs in to.
    pub database: String,
    /// `server_version` of the server.
    pub server_version: String,
    /// SUPERUSER: every privilege check is skipped.
    pub superuser: bool,
    /// CREATEDB.
    pub create_db: bool,
    /// CREATEROLE.
    pub create_role: bool,
    /// REPLICATION.
    pub replication: bool,
    /// BYPASSRLS: row-level security does not apply to it.
    pub bypass_rls: bool,
    /// It owns the database.
    pub owns_database: bool,
}

const QUERY: &str =
    "SELECT r.rolname::text, current_database()::text, current_setting('server_version'), \
    r.rolsuper::text, r.rolcreatedb::text, r.rolcreaterole::text, r.rolreplication::text, \
    r.rolbypassrls::text, (d.datdba = r.oid)::text \
    FROM pg_catalog.pg_roles r, pg_catalog.pg_database d \
    WHERE r.rolname = current_user AND d.datname = current_database()";

/// Logs in to the server of `upstream` as the gateway would and reads what its role may do.
pub async fn probe(upstream: &UpstreamConfig) -> Result<UpstreamProbe, GatewayError> {
    let tls = crate::tls::upstream_connector(&upstream.tls).map_err(GatewayError::Config)?;
    let fail = |e: crate::error::SessionError| {
        GatewayError::Config(format!(
            "cannot log in to {}:{} as {:?}: {e}",
            upstream.host, upstream.port, upstream.user
        ))
    };
    let mut up = crate::upstream::connect(upstream, tls.as_ref(), &[], 1 << 20)
        .await
        .map_err(fail)?;
    let reply = crate::upstream::simple_query(&mut up.stream, &mut up.leftover, QUERY, 1 << 20)
        .await
        .map_err(fail)?;
    if let Some(e) = reply.error {
        return Err(GatewayError::Config(format!(
            "cannot read the upstream role's attributes: {e}"
        )));
    }
    let row = reply.rows.into_iter().next().ok_or_else(|| {
        GatewayError::Config("the server did not describe the upstream role".into())
    })?;
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let yes = |i: usize| text(i) == "true";
    Ok(UpstreamProbe {
        role: text(0),
        database: text(1),
        server_version: text(2),
        superuser: yes(3),
        create_db: yes(4),
        create_role: yes(5),
        replication: yes(6),
        bypass_rls: yes(7),
        owns_database: yes(8),
    })
}
