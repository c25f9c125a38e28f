//! The coordinator as a Flight SQL backend: a catalog with one schema per
//! node, fetched from the nodes at start, and a session per statement that
//! carries the statement's project and query id to every fragment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use carrow_sql::auth::token_matches;
use carrow_sql::{Backend, Caller, QueryError, QueryScope, Released, RequestMeta};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::execution::context::SessionConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;

use crate::CoordinatorError;
use crate::config::{COMBINED_SCHEMA, CoordinatorConfig, UserConfig};
use crate::pushdown::PushToNode;
use crate::remote::{Coverage, FragmentContext, NodeClient, RemoteTable};
use crate::split_aggregate::SplitAggregatePerNode;

/// Catalog name of the federated tables; schemas are node names.
pub const CATALOG: &str = "carrow";
/// The session setting that allows results without unreachable nodes.
pub const ALLOW_PARTIAL: &str = "carrow.allow_partial";
/// Result schema metadata key of the coverage manifest (JSON).
pub const COVERAGE_KEY: &str = "carrow.coverage";

/// The coordinator's state, built at start.
pub struct CoordinatorState {
    config: CoordinatorConfig,
    /// Shared by every query: one memory pool, spilling to disk beyond it.
    runtime: Arc<RuntimeEnv>,
    catalog: Arc<MemoryCatalogProvider>,
    nodes: Vec<Arc<NodeClient>>,
    /// Nodes that did not answer the last catalog refresh, with the reason.
    unreachable: std::sync::Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for CoordinatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorState")
            .field("nodes", &self.config.nodes.len())
            .finish()
    }
}

impl CoordinatorState {
    /// Reads every node's token, then lists every node's tables (see
    /// [`refresh`](Self::refresh)).
    pub async fn build(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let mut nodes = Vec::new();
        for endpoint in &config.nodes {
            let token = std::fs::read_to_string(&endpoint.token_file).map_err(|source| {
                CoordinatorError::Token {
                    path: endpoint.token_file.clone(),
                    source,
                }
            })?;
            nodes.push(Arc::new(NodeClient::new(
                endpoint,
                token.trim().to_string(),
                Duration::from_millis(config.connect_timeout_ms),
                Duration::from_millis(config.query_timeout_ms),
            )));
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit_mb * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(|e| CoordinatorError::Catalog(format!("runtime: {e}")))?;
        let state = Self {
            config,
            runtime,
            catalog: Arc::new(MemoryCatalogProvider::new()),
            nodes,
            unreachable: std::sync::Mutex::new(Vec::new()),
        };
        state.refresh().await?;
        Ok(state)
    }

    /// Lists every node's published tables and replaces its schema in the
    /// catalog. A node that does not answer keeps the schema it had (its
    /// queries fail, naming it, until it is back) and is reported.
    pub async fn refresh(&self) -> Result<(), CoordinatorError> {
        let mut unreachable = Vec::new();
        for client in &self.nodes {
            match client.tables(&self.config.default_project).await {
                Ok(tables) => {
                    let schema = Arc::new(MemorySchemaProvider::new());
                    for (name, table_schema) in tables {
                        let table = RemoteTable::new(client.clone(), name.clone(), table_schema);
                        schema
                            .register_table(name, Arc::new(table))
                            .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
                    }
                    tracing::debug!(node = %client.name, tables = ?schema.table_names(), "node catalog loaded");
                    self.catalog
                        .register_schema(&client.name, schema)
                        .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
                }
                Err(e) => {
                    tracing::warn!(node = %client.name, error = %e, "node did not answer the catalog refresh");
                    unreachable.push((client.name.clone(), e.to_string()));
                }
            }
        }
        let combined = crate::combined::build(self.catalog.as_ref())
            .await
            .map_err(|e| CoordinatorError::Catalog(format!("combined tables: {e}")))?;
        self.catalog
            .register_schema(COMBINED_SCHEMA, combined)
            .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = unreachable;
        Ok(())
    }

    /// Nodes that did not answer the last catalog refresh.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Seconds between catalog refreshes (0: never).
    pub fn refresh_interval(&self) -> u64 {
        self.config.catalog_refresh_secs
    }

    fn user(&self, name: &str) -> Option<&UserConfig> {
        self.config.users.iter().find(|u| u.name == name)
    }
}

/// The coordinator's Flight SQL backend.
pub struct CoordinatorBackend {
    state: Arc<CoordinatorState>,
}

impl CoordinatorBackend {
    /// A backend over a built state.
    pub fn new(state: Arc<CoordinatorState>) -> Self {
        Self { state }
    }
}

fn random_query_id() -> String {
    format!("q-{}", carrow_sql::flight::random_hex(8))
}

#[tonic::async_trait]
impl Backend for CoordinatorBackend {
    fn authenticate(&self, user: &str, secret: &str) -> Result<Caller, QueryError> {
        match self.state.user(user) {
            Some(u) if token_matches(secret, &u.token_sha256) => Ok(Caller {
                user: u.name.clone(),
                role: u.role.clone(),
            }),
            _ => {
                tracing::warn!(user = %user, "refused login");
                Err(QueryError::Unauthenticated(format!(
                    "unknown user {user:?} or wrong token"
                )))
            }
        }
    }

    async fn scope(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        _sql: &str,
    ) -> Result<Arc<dyn QueryScope>, QueryError> {
        let query_id = random_query_id();
        let project = meta
            .project
            .clone()
            .unwrap_or_else(|| self.state.config.default_project.clone());
        let allow_partial = meta
            .settings
            .get(ALLOW_PARTIAL)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let coverage = Arc::new(Coverage::default());
        let context = FragmentContext {
            project: project.clone(),
            query_id: query_id.clone(),
            allow_partial,
            coverage: coverage.clone(),
        };
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_information_schema(false)
            .with_extension(Arc::new(context));
        let session = SessionContext::new_with_config_rt(config, self.state.runtime.clone());
        session.add_optimizer_rule(Arc::new(SplitAggregatePerNode));
        session.add_optimizer_rule(Arc::new(PushToNode));
        session.register_catalog(
            CATALOG,
            self.state.catalog.clone() as Arc<dyn CatalogProvider>,
        );
        Ok(Arc::new(CoordinatorScope {
            session,
            allow_partial,
            query_id,
            caller: caller.clone(),
            project,
            coverage,
        }))
    }

    fn server_name(&self) -> String {
        "carrow coordinator".to_string()
    }

    fn settings(&self) -> &'static [&'static str] {
        &[ALLOW_PARTIAL]
    }
}

struct CoordinatorScope {
    session: SessionContext,
    allow_partial: bool,
    query_id: String,
    caller: Caller,
    project: String,
    coverage: Arc<Coverage>,
}

impl QueryScope for CoordinatorScope {
    fn session(&self) -> &SessionContext {
        &self.session
    }

    fn query_id(&self) -> &str {
        &self.query_id
    }

    fn finish(&self, _sql: &str, outcome: Result<Released, &QueryError>) -> Option<String> {
        let coverage = self.coverage.to_json();
        let node_rows = self.coverage.rows();
        match outcome {
            Ok(r) => tracing::info!(
                query_id = %self.query_id, user = %self.caller.user, project = %self.project,
                rows = r.rows, ?node_rows, %coverage, "query"
            ),
            Err(e) => tracing::info!(
                query_id = %self.query_id, user = %self.caller.user, project = %self.project,
                error = %e, %coverage, "query failed"
            ),
        }
        None
    }

    fn result_metadata(&self) -> HashMap<String, String> {
        HashMap::from([(COVERAGE_KEY.to_string(), self.coverage.to_json())])
    }

    /// A partial result is computed whole before it is sent, so its manifest
    /// also names nodes lost during the query.
    fn completes_before_sending(&self) -> bool {
        self.allow_partial
    }
}
