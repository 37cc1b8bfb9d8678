//! `parapet-gateway`: the PostgreSQL wire-protocol gateway.
