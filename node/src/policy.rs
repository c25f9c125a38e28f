//! The node's local policy: who may ask, for which projects, and how a
//! planning failure that touches something unpublished becomes a refusal
//! naming the rule.

use std::collections::BTreeSet;

use carrow_sql::auth::token_matches;
use carrow_sql::error::code_of;
use carrow_sql::{QueryError, Stage};
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;

use crate::config::{ClientConfig, ClientRole, NodeConfig};

/// Rule names, as refusals and the audit log show them.
pub mod rules {
    pub const CALLERS: &str = "known callers";
    pub const PROJECTS: &str = "projects served";
    pub const PUBLISHED_TABLES: &str = "published tables";
    /// Linkage token tables go to the coordinator's linkage stage only.
    pub const LINKAGE_TOKENS: &str = "linkage tokens: coordinator only";
    pub const PUBLISHED_COLUMNS: &str = "published columns";
    pub const IDENTIFIERS: &str = "identifiers never published";
}

/// What the node knows about its own names, to explain refusals.
#[derive(Debug, Default)]
pub struct Names {
    pub published: BTreeSet<String>,
    pub unavailable: Vec<(String, String)>,
    pub sources: BTreeSet<String>,
    pub identifier_columns: BTreeSet<String>,
}

/// Checks a caller's token against the configured SHA-256 hashes.
pub fn authenticate<'a>(
    config: &'a NodeConfig,
    user: &str,
    secret: &str,
) -> Result<&'a ClientConfig, QueryError> {
    let client = config.clients.iter().find(|c| c.name == user);
    let matches = client.is_some_and(|c| token_matches(secret, &c.token_sha256));
    match client {
        Some(c) if matches => Ok(c),
        _ => Err(QueryError::Unauthenticated(format!(
            "refused by rule `{}`: unknown caller {user:?} or wrong token",
            rules::CALLERS
        ))),
    }
}

/// The project a request runs under, or a refusal naming the rule.
pub fn resolve_project(
    config: &NodeConfig,
    client: &ClientConfig,
    asked: Option<&str>,
) -> Result<String, QueryError> {
    let project = asked.unwrap_or(&config.default_project);
    if !config.projects.iter().any(|p| p == project) {
        return Err(QueryError::refused(
            rules::PROJECTS,
            format!(
                "node {} does not take part in project {project:?}",
                config.name
            ),
        ));
    }
    if !client.projects.is_empty() && !client.projects.iter().any(|p| p == project) {
        return Err(QueryError::refused(
            rules::PROJECTS,
            format!(
                "caller {} may not ask about project {project:?}",
                client.name
            ),
        ));
    }
    if client.role == ClientRole::Operator && asked.is_some_and(|p| p != config.default_project) {
        return Err(QueryError::refused(
            rules::PROJECTS,
            format!(
                "an operator's queries run under the default project {:?}",
                config.default_project
            ),
        ));
    }
    Ok(project.to_string())
}

impl Names {
    /// The names of `config`, given which tables were published.
    pub fn new(
        config: &NodeConfig,
        published: BTreeSet<String>,
        unavailable: Vec<(String, String)>,
    ) -> Self {
        let mut names = Names {
            published,
            unavailable,
            ..Default::default()
        };
        names.sources = config.sources.keys().cloned().collect();
        for table in &config.tables {
            for (_, column) in table.identifiers.columns() {
                names.identifier_columns.insert(column.to_lowercase());
            }
        }
        names
    }

    /// Explains a planning failure: names the rule when the query touched
    /// something the node does not publish.
    pub fn explain(&self, node: &str, err: DataFusionError, stage: Stage) -> QueryError {
        let root = err.find_root();
        if let DataFusionError::SchemaError(e, _) = root
            && let SchemaError::FieldNotFound { field, .. } = e.as_ref()
        {
            let name = field.name.to_lowercase();
            if self.identifier_columns.contains(&name) {
                return QueryError::refused(
                    rules::IDENTIFIERS,
                    format!(
                        "column {:?} is a person identifier at node {node}; queries see only `pid`",
                        field.name
                    ),
                );
            }
            return QueryError::refused(
                rules::PUBLISHED_COLUMNS,
                format!("column {:?} is not published by node {node}", field.name),
            );
        }
        if let DataFusionError::Plan(message) = root
            && let Some(table) = missing_table(message)
        {
            let short = table.rsplit('.').next().unwrap_or(&table).to_string();
            if let Some((_, reason)) = self.unavailable.iter().find(|(t, _)| *t == short) {
                return QueryError::Unavailable(format!(
                    "table {short} is unavailable at node {node}: {reason}"
                ));
            }
            let detail = if self.sources.contains(&short) {
                format!("{short} is a local table of node {node} and is not published")
            } else {
                format!("node {node} publishes no table {short}")
            };
            let published: Vec<&str> = self.published.iter().map(String::as_str).collect();
            return QueryError::refused(
                rules::PUBLISHED_TABLES,
                format!("{detail}; it publishes: {}", published.join(", ")),
            );
        }
        if stage == Stage::Planning
            || matches!(
                code_of(&err),
                tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::Unimplemented
            )
        {
            return QueryError::DataFusion(err);
        }
        // A limit is the caller's to know (and retry smaller), by its code.
        if matches!(root, DataFusionError::ResourcesExhausted(_)) {
            return QueryError::ResourceExhausted(format!(
                "the query needs more memory than its limit at node {node} (query_memory_mb)"
            ));
        }
        // Execution errors can quote data values: say what kind of failure it
        // was, never its message.
        QueryError::Internal(format!(
            "the query failed during execution at node {node} ({})",
            error_class(root)
        ))
    }
}

/// The table named in DataFusion's "table '...' not found" message.
fn missing_table(message: &str) -> Option<String> {
    let start = message.find("table '")? + "table '".len();
    let rest = &message[start..];
    let end = rest.find('\'')?;
    rest[end..]
        .contains("not found")
        .then(|| rest[..end].to_string())
}

fn error_class(err: &DataFusionError) -> &'static str {
    match err {
        DataFusionError::ArrowError(..) => "Arrow error",
        DataFusionError::ParquetError(_) => "Parquet error",
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => "I/O error",
        DataFusionError::ResourcesExhausted(_) => "resources exhausted",
        DataFusionError::External(_) => "source error",
        _ => "execution error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_table_names() {
        assert_eq!(
            missing_table("Error during planning: table 'carrow.acute.foo' not found").as_deref(),
            Some("carrow.acute.foo")
        );
        assert_eq!(missing_table("something else"), None);
    }
}
