//! Carrow's governance rules and stores. Today: the hash-chained,
//! append-only audit log that nodes (and the coordinator) keep of every
//! query, and its verification.

pub mod audit;

pub use audit::{AuditLog, ChainReport, verify_file};

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
}
