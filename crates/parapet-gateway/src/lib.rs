//! `parapet-gateway`: the PostgreSQL wire-protocol gateway.
//!
//! Clients connect with any PostgreSQL client, authenticate with SCRAM-SHA-256 against the
//! gateway's users, and pick a target by database name. Every Query and Parse is judged by
//! [`parapet_guard::Guard`], its decision is written to the [`parapet_log::Log`] (durably before
//! forwarding, or before replying), and refused statements get SQLSTATE 42501 with the audit entry
//! index in DETAIL. Everything else passes through unchanged.
//!
//! Layout: [`server`] (accept loop, shutdown, reloads), `startup` (TLS, startup, auth),
//! `upstream` (gateway → server login, cancel), `session` (proxy loop), `judge` (where
//! statements are judged: inline or on a bounded thread pool), [`fleet`] (user locks and
//! approval uses, kept locally or fleet-wide in PostgreSQL), [`approvals`] (requests,
//! approvals and maintenance windows for `review` rules), `reading` (the settings that
//! decide how the server reads text), `catalog` (each target's function catalog), [`params`]
//! (bound values in outcomes), [`probe`] (what the upstream role may do), [`protocol`] (framing
//! and messages), [`scram`], [`events`], [`config`], [`tls`].

pub mod approvals;
mod authlog;
mod catalog;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod fleet;
mod judge;
mod messages;
pub mod params;
pub mod probe;
pub mod protocol;
mod reading;
pub mod scram;
pub mod server;
mod session;
mod shared;
mod startup;
pub mod tls;
mod upstream;

pub use config::{
    Durability, GatewayConfig, ReviewConfig, SslMode, StatementText, TargetConfig, TlsSettings,
    UpstreamConfig, UpstreamTls, UserConfig,
};
pub use error::GatewayError;
pub use scram::Verifier;
pub use server::{FleetOptions, Gateway};
