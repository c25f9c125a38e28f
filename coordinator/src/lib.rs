//! The Carrow coordinator: one SQL endpoint over every node. It plans
//! DataFusion SQL across nodes, pushes work down to them, joins records
//! across organisations on pseudonyms and applies governance to results.

pub mod config;

pub use config::CoordinatorConfig;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid coordinator configuration:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
}
