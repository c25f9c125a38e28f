//! The Carrow node: runs beside one organisation's data and publishes a
//! declared set of tables through Arrow Flight SQL, with person identifiers
//! replaced by project-scoped pseudonyms before anything leaves.

pub mod config;

pub use config::NodeConfig;

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node configuration:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
}
