//! keybrake-audit: the audit trail kept in PostgreSQL. The sink exports the per-policy Redis
//! audit streams into one `calls` table (at-least-once from Redis, exactly once in the table),
//! the migrations give the table its indexes and views, and the audit API reads it back.
#![forbid(unsafe_code)]

pub mod db;
pub mod flags;
pub mod metrics;
pub mod query;
pub mod row;
pub mod sink;

pub use db::{Db, DbError};
pub use flags::AuditDbFlags;
pub use metrics::ExportMetrics;
pub use query::AuditQuery;
pub use row::CallRow;
pub use sink::Sink;
