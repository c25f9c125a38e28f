//! Carrow's governance rules and stores, applied by the coordinator (and,
//! for the audit log, by nodes too): user roles and password hashes,
//! disclosure control rules, research requests and their approvals, the
//! canonical SQL that approvals are matched on, and audit logs that are
//! transparency logs (hash chain, Merkle tree, signed checkpoints).

pub mod audit;
pub mod canonical;
pub mod checkpoint;
pub mod disclosure;
pub mod merkle;
pub mod purpose;
pub mod reconcile;
pub mod requests;
pub mod roles;

pub use audit::{AuditLog, ChainReport, verify_file, verify_log};
pub use canonical::canonical_sql;
pub use checkpoint::{AuditKey, Checkpoint};
pub use disclosure::{Preset, Rules};
pub use requests::{NewRequest, Output, Request, RequestStore};
pub use roles::Role;

/// Errors of the governance crate.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("audit log {path}: {source}")]
    AuditIo {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} is broken at line {line} (record {seq}): {reason}")]
    BrokenChain {
        path: std::path::PathBuf,
        line: usize,
        seq: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("no request {0}")]
    NoSuchRequest(i64),
    #[error("request store {path}: {reason}")]
    Store {
        path: std::path::PathBuf,
        reason: String,
    },
}
