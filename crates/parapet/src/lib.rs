//! Library half of the `parapet` binary: command implementations and configuration, kept in a
//! library so integration tests can reach them.

pub mod alerts;
pub mod cli;
pub mod config;
pub mod console;
pub mod pgcluster;
