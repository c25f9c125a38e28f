//! The coordinator as a Flight SQL backend: a catalog with one schema per
//! node, fetched from the nodes at start, and a session per statement that
//! carries the statement's project and query id to every fragment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use carrow_governance::disclosure::RecordKeys;
use carrow_governance::roles::verify_password;
use carrow_governance::{AuditLog, GovernanceError, NewRequest, Output, RequestStore, Role, Rules};
use carrow_sql::flight::{AuditMark, Stage};
use carrow_sql::ops::{Health, Metrics, Ops};
use carrow_sql::{Backend, Caller, QueryError, QueryScope, Released, RequestMeta};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use serde_json::json;

use crate::CoordinatorError;
use crate::config::{COMBINED_SCHEMA, CoordinatorConfig, NodeEndpoint, UserConfig};
use crate::disclosure::{DisclosurePlanner, ReportSink};
use crate::last_query::{LastQuery, SessionCatalog};
use crate::linkage::LinkageIndex;
use crate::pushdown::PushToNode;
use crate::remote::{Coverage, FragmentContext, NodeClient, RemoteTable};
use crate::split_aggregate::SplitAggregatePerNode;

/// Catalog name of the federated tables; schemas are node names.
pub const CATALOG: &str = "carrow";
/// The session setting that allows results without unreachable nodes.
pub const ALLOW_PARTIAL: &str = "carrow.allow_partial";
/// Result schema metadata key of the coverage manifest (JSON).
pub const COVERAGE_KEY: &str = "carrow.coverage";
/// Result schema metadata key of the disclosure control report (JSON).
pub const DISCLOSURE_KEY: &str = "carrow.disclosure";
/// The audit log's file in the state directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The name the coordinator signs its audit checkpoints with.
pub const AUDIT_ORIGIN: &str = "coordinator";
/// The request store's file in the state directory.
pub const REQUESTS_FILE: &str = "requests.sqlite";

/// The coordinator's state, built at start.
pub struct CoordinatorState {
    config: CoordinatorConfig,
    /// Turns to run: as many queries at once as their memory pools fit in
    /// `memory_limit_mb`.
    turns: Arc<tokio::sync::Semaphore>,
    /// Each user's turns (`max_queries_per_user`).
    user_turns: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    catalog: Arc<MemoryCatalogProvider>,
    /// The federation's nodes: those of the configuration at start, and
    /// any added to it since (picked up at a catalog refresh).
    nodes: std::sync::RwLock<Vec<Arc<NodeClient>>>,
    /// Nodes that did not answer the last catalog refresh, with the reason.
    unreachable: std::sync::Mutex<Vec<(String, String)>>,
    /// Each node's last catalog, kept across restarts.
    known: crate::known_catalog::KnownCatalog,
    /// Disclosure control for planners and aggregate research.
    rules: Rules,
    /// The secret every project's record keys are derived from.
    cell_key_secret: carrow_linkage::LinkageSecret,
    /// Record keys by project, derived on first use.
    record_keys: std::sync::Mutex<HashMap<String, Arc<RecordKeys>>>,
    /// Research requests and approvals.
    requests: RequestStore,
    /// The coordinator's hash-chained log of every query attempt and decision.
    audit: AuditLog,
    /// Linkage indexes by project, built on first use and kept up to date
    /// at each catalog refresh. Held only to read or swap an index: a
    /// query during a rebuild uses the previous one.
    linkage: std::sync::RwLock<HashMap<String, Arc<LinkageIndex>>>,
    /// Held while an index is built, so one build runs at a time.
    linking: tokio::sync::Mutex<()>,
    /// Counters for the operations listener.
    metrics: Metrics,
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
        let nodes = config
            .nodes
            .iter()
            .map(|endpoint| node_client(&config, endpoint))
            .collect::<Result<Vec<_>, _>>()?;
        let turns = Arc::new(tokio::sync::Semaphore::new(
            (config.memory_limit_mb / config.query_memory_mb).max(1),
        ));
        let rules = config.disclosure.rules()?;
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            CoordinatorError::State(format!("cannot create {}: {e}", config.state_dir.display()))
        })?;
        let cell_key_secret = cell_key_secret(&config.cell_key_secret_file())?;
        let known = crate::known_catalog::KnownCatalog::open(&config.state_dir);
        let requests = RequestStore::open(&config.state_dir.join(REQUESTS_FILE))
            .map_err(|e| CoordinatorError::State(e.to_string()))?;
        let audit_key = carrow_governance::AuditKey::load_or_create(&config.audit_key_file())
            .map_err(|e| CoordinatorError::State(e.to_string()))?;
        let audit = AuditLog::open(&config.state_dir.join(AUDIT_FILE), AUDIT_ORIGIN, audit_key)
            .map_err(|e| CoordinatorError::State(e.to_string()))?;
        let state = Self {
            config,
            turns,
            user_turns: std::sync::Mutex::new(HashMap::new()),
            catalog: Arc::new(MemoryCatalogProvider::new()),
            nodes: std::sync::RwLock::new(nodes),
            unreachable: std::sync::Mutex::new(Vec::new()),
            known,
            rules,
            cell_key_secret,
            record_keys: std::sync::Mutex::new(HashMap::new()),
            requests,
            audit,
            linkage: std::sync::RwLock::new(HashMap::new()),
            linking: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
        };
        // Runs of the coordinator are marked in its log: a query left
        // without outcome by a run that never stopped cleanly was running
        // when the process stopped (`audit reconcile` tells the two apart).
        state.record(json!({
            "kind": carrow_governance::reconcile::SERVICE_KIND,
            "event": "started",
            "version": env!("CARGO_PKG_VERSION"),
        }));
        state.refresh().await?;
        let default_project = state.config.default_project.clone();
        state.linkage_index(&default_project).await;
        Ok(state)
    }

    /// Lists every node's published tables and replaces its schema in the
    /// catalog (and in the known catalog of the state directory). A node
    /// that does not answer keeps the schema it had, or the one it last
    /// gave before a restart (its queries fail, naming it, until it is
    /// back), and is reported.
    pub async fn refresh(&self) -> Result<(), CoordinatorError> {
        let mut unreachable = Vec::new();
        let nodes = self.nodes();
        for client in &nodes {
            let tables = match client.tables(&self.config.default_project).await {
                Ok(tables) => {
                    self.known.remember(&client.name, &tables);
                    Some(tables)
                }
                Err(e) => {
                    tracing::warn!(node = %client.name, error = %e, "node did not answer the catalog refresh");
                    unreachable.push((client.name.clone(), e.to_string()));
                    // Known from before a restart, if not in the catalog yet.
                    (self.catalog.schema(&client.name).is_none())
                        .then(|| self.known.tables(&client.name))
                        .flatten()
                }
            };
            if let Some(tables) = tables {
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
        }
        let combined = crate::combined::build(self.catalog.as_ref())
            .await
            .map_err(|e| CoordinatorError::Catalog(format!("combined tables: {e}")))?;
        self.catalog
            .register_schema(COMBINED_SCHEMA, combined)
            .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = unreachable;
        // Rebuild the linkage indexes in use, where a node's tokens changed.
        let _building = self.linking.lock().await;
        let in_use: Vec<(String, Arc<LinkageIndex>)> = self
            .linkage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(project, index)| (project.clone(), index.clone()))
            .collect();
        for (project, previous) in in_use {
            match crate::linkage::build(
                &nodes,
                &project,
                Some(previous),
                self.config.link_group_warning_size,
            )
            .await
            {
                Ok(index) => {
                    // Sent at every refresh: a node that restarted or was
                    // away gets the list in force within one refresh.
                    self.send_withheld_lists(&project, &index).await;
                    self.keep_index(&project, index)
                }
                Err(e) => tracing::error!(%project, error = %e, "linkage index not rebuilt"),
            }
        }
        Ok(())
    }

    /// Sends each node its pids of persons with an opt-out recorded at any
    /// node's register, before queries are planned under the index.
    async fn send_withheld_lists(&self, project: &str, index: &LinkageIndex) {
        let Some(version) = index.opt_out_version() else {
            return;
        };
        for node in &self.nodes() {
            let pids = index.withheld(&node.name);
            match node.send_withheld(project, version, pids).await {
                Ok(held) => {
                    tracing::debug!(node = %node.name, %project, %version, held, "opt-out list sent")
                }
                Err(e) => tracing::warn!(node = %node.name, %project, error = %e,
                    "opt-out list not sent: the node refuses this project's fragments until it has it"),
            }
        }
    }

    /// The linkage index of `project`, built now if it has none yet; `None`
    /// when record linkage is off or cannot be built.
    pub async fn linkage_index(&self, project: &str) -> Option<Arc<LinkageIndex>> {
        if !self.config.link_records {
            return None;
        }
        if let Some(index) = self.current_index(project) {
            return Some(index);
        }
        let _building = self.linking.lock().await;
        // Built by another query while this one waited?
        if let Some(index) = self.current_index(project) {
            return Some(index);
        }
        match crate::linkage::build(
            &self.nodes(),
            project,
            None,
            self.config.link_group_warning_size,
        )
        .await
        {
            Ok(index) => {
                self.send_withheld_lists(project, &index).await;
                self.keep_index(project, index.clone());
                Some(index)
            }
            Err(e) => {
                tracing::error!(%project, error = %e, "no linkage index: records join on pid alone");
                None
            }
        }
    }

    fn current_index(&self, project: &str) -> Option<Arc<LinkageIndex>> {
        let indexes = self.linkage.read().unwrap_or_else(|p| p.into_inner());
        indexes.get(project).cloned()
    }

    fn keep_index(&self, project: &str, index: Arc<LinkageIndex>) {
        let mut indexes = self.linkage.write().unwrap_or_else(|p| p.into_inner());
        indexes.insert(project.to_string(), index);
    }

    /// The record keys of `project` (cell key method).
    fn record_keys(&self, project: &str) -> Arc<RecordKeys> {
        let mut keys = self.record_keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(project.to_string())
            .or_insert_with(|| {
                let key = self
                    .cell_key_secret
                    .derive(&format!("carrow/v1/{project}/cell-key"));
                let mut half = [0u8; 16];
                half.copy_from_slice(&key[..16]);
                Arc::new(RecordKeys::new(&half))
            })
            .clone()
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

    /// Records `caller`'s new request (a researcher's, for a project they
    /// may use), with its audit record; `via` names the channel (flight,
    /// console). Blocking: SQLite and the audit log.
    pub fn submit_request(
        &self,
        caller: &Caller,
        new: &NewRequest,
        via: &str,
    ) -> Result<carrow_governance::Request, QueryError> {
        if let Err(reason) = self.config.may_use(&caller.user, &new.project) {
            self.record(json!({
                "kind": "request", "action": "submit", "via": via, "user": caller.user,
                "role": caller.role, "project": new.project, "sql": new.sql,
                "outcome": "refused", "rule": rules::PROJECTS, "error": reason,
            }));
            return Err(QueryError::refused(rules::PROJECTS, reason));
        }
        let outcome = self.requests.submit(&caller.user, new);
        self.record(json!({
            "kind": "request", "action": "submit", "via": via, "user": caller.user,
            "role": caller.role, "request": outcome.as_ref().ok().map(|r| r.id),
            "revises": new.revises, "project": new.project, "output": new.output,
            "sql": new.sql, "outcome": if outcome.is_ok() { "ok" } else { "refused" },
            "error": outcome.as_ref().err().map(|e| e.to_string()),
        }));
        outcome.map_err(governance_error)
    }

    /// Records a governance user's decision on request `id`, with its audit
    /// record, whether it stands or is refused. Blocking.
    pub fn decide_request(
        &self,
        caller: &Caller,
        id: i64,
        decision: &str,
        comment: Option<&str>,
        via: &str,
    ) -> Result<carrow_governance::Request, QueryError> {
        let outcome = self.requests.decide(id, &caller.user, decision, comment);
        self.record(json!({
            "kind": "request", "action": decision, "via": via, "user": caller.user,
            "role": caller.role, "request": id, "comment": comment,
            "outcome": if outcome.is_ok() { "ok" } else { "refused" },
            "rule": outcome.is_err().then_some(rules::DECISIONS),
            "error": outcome.as_ref().err().map(|e| e.to_string()),
        }));
        outcome.map_err(|e| match e {
            GovernanceError::Refused(m) => QueryError::refused(rules::DECISIONS, m),
            other => governance_error(other),
        })
    }

    /// A user of the configuration, if `password` is theirs (argon2id: blocking).
    pub fn login(&self, user: &str, password: &str) -> Option<Caller> {
        self.user(user)
            .filter(|u| verify_password(password, &u.password_hash))
            .map(|u| Caller {
                user: u.name.clone(),
                role: u.role.to_string(),
            })
    }

    /// The nodes, tables and columns `sql` reads, from its optimised
    /// logical plan over the current catalog (nothing runs).
    pub async fn reads(&self, sql: &str) -> Result<TableReads, String> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_information_schema(false);
        let session = SessionContext::new_with_config(config);
        session.register_catalog(CATALOG, self.catalog.clone() as Arc<dyn CatalogProvider>);
        let state = session.state();
        let plan = state
            .create_logical_plan(sql)
            .await
            .and_then(|p| state.optimize(&p))
            .map_err(|e| e.to_string())?;
        let mut reads: std::collections::BTreeMap<
            (String, String),
            std::collections::BTreeSet<String>,
        > = Default::default();
        plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let node_name = scan.table_name.schema().unwrap_or("?").to_string();
                let columns = reads
                    .entry((node_name, scan.table_name.table().to_string()))
                    .or_default();
                columns.extend(
                    scan.projected_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone()),
                );
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
        Ok(reads
            .into_iter()
            .map(|((node, table), columns)| (node, table, columns.into_iter().collect()))
            .collect())
    }

    /// The federation's nodes now.
    pub fn nodes(&self) -> Vec<Arc<NodeClient>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds the nodes of `endpoints` the federation does not have yet (an
    /// organisation joining; read from the configuration file again at a
    /// refresh) and returns their names. A changed or removed entry needs
    /// a restart, and is logged as such.
    pub fn add_nodes(&self, endpoints: &[NodeEndpoint]) -> Vec<String> {
        let known: Vec<String> = self.nodes().iter().map(|n| n.name.clone()).collect();
        let mut added = Vec::new();
        for endpoint in endpoints.iter().filter(|e| !known.contains(&e.name)) {
            match node_client(&self.config, endpoint) {
                Ok(client) => {
                    tracing::info!(node = %endpoint.name, url = %endpoint.url, "node joins the federation");
                    self.nodes
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(client);
                    added.push(endpoint.name.clone());
                }
                Err(e) => tracing::error!(node = %endpoint.name, error = %e, "new node not added"),
            }
        }
        for name in known
            .iter()
            .filter(|n| !endpoints.iter().any(|e| &e.name == *n))
        {
            tracing::warn!(node = %name, "node no longer configured: it stays in the federation until a restart");
        }
        added
    }

    /// Records a clean stop: every running statement has its outcome.
    pub fn record_stop(&self) {
        self.record(
            json!({ "kind": carrow_governance::reconcile::SERVICE_KIND, "event": "stopped" }),
        );
    }

    /// The coordinator's configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Counts a statement's outcome and its fragments for `/metrics`.
    fn count(
        &self,
        role: &str,
        outcome: Result<Released, &QueryError>,
        fragments: &[crate::remote::FragmentRecord],
    ) {
        let m = &self.metrics;
        let (word, rows) = match outcome {
            Ok(r) => ("ok", r.rows),
            Err(e) => (e.outcome(), 0),
        };
        m.add(
            "carrow_queries_total",
            "Queries by role and outcome.",
            &[("role", role), ("outcome", word)],
            1.0,
        );
        if let Err(QueryError::Refused { rule, .. }) = outcome {
            m.add(
                "carrow_refusals_total",
                "Queries refused, by the rule that refused them.",
                &[("rule", rule)],
                1.0,
            );
        }
        m.add(
            "carrow_rows_released_total",
            "Result rows released to users, by role.",
            &[("role", role)],
            rows as f64,
        );
        for fragment in fragments {
            m.observe(
                "carrow_fragment_seconds",
                "Time from sending a fragment to its last batch, by node.",
                &[("node", &fragment.node)],
                fragment.elapsed_ms as f64 / 1000.0,
            );
            m.add(
                "carrow_node_rows_total",
                "Rows nodes sent for queries, by node.",
                &[("node", &fragment.node)],
                fragment.rows as f64,
            );
        }
    }

    /// The coordinator's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The research request store.
    pub fn requests(&self) -> &RequestStore {
        &self.requests
    }

    fn record(&self, body: serde_json::Value) -> Option<AuditMark> {
        // An fsync: off the async workers.
        match carrow_sql::blocking::off_worker(|| self.audit.append(body)) {
            Ok(appended) => Some(AuditMark {
                head: appended.hash,
                checkpoint: appended.checkpoint.to_text(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the coordinator audit log");
                None
            }
        }
    }
}

/// What a statement reads: (node or `combined`, table, columns).
pub type TableReads = Vec<(String, String, Vec<String>)>;

/// The rule that refused a statement, if a rule did.
fn rule_of(err: &QueryError) -> Option<&str> {
    match err {
        QueryError::Refused { rule, .. } => Some(rule),
        _ => None,
    }
}

/// A client of the node at `endpoint`, with its token read from its file.
pub(crate) fn node_client(
    config: &CoordinatorConfig,
    endpoint: &NodeEndpoint,
) -> Result<Arc<NodeClient>, CoordinatorError> {
    let token = std::fs::read_to_string(&endpoint.token_file).map_err(|source| {
        CoordinatorError::Token {
            path: endpoint.token_file.clone(),
            source,
        }
    })?;
    Ok(Arc::new(NodeClient::new(
        endpoint,
        token.trim().to_string(),
        Duration::from_millis(config.connect_timeout_ms),
        Duration::from_millis(config.query_timeout_ms),
    )))
}

/// Loads the cell-key secret, or makes one (mode 0600) at first start.
fn cell_key_secret(
    path: &std::path::Path,
) -> Result<carrow_linkage::LinkageSecret, CoordinatorError> {
    let failed = |e: carrow_linkage::LinkageError| {
        CoordinatorError::State(format!("cell-key secret {}: {e}", path.display()))
    };
    if !path.exists() {
        let secret = carrow_linkage::LinkageSecret::generate().map_err(failed)?;
        secret.write_new(path).map_err(failed)?;
        tracing::info!(path = %path.display(), "made a new cell-key secret for disclosure control");
    }
    carrow_linkage::LinkageSecret::load(path).map_err(failed)
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

    /// A query's own runtime: a memory pool of `query_memory_mb`, spilling
    /// to disk beyond it, so a heavy query spills or fails alone.
    fn query_runtime(&self) -> Result<Arc<RuntimeEnv>, QueryError> {
        RuntimeEnvBuilder::new()
            .with_memory_limit(self.state.config.query_memory_mb * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Internal(format!("query runtime: {e}")))
    }

    /// Waits for a turn to run: the user's own (`max_queries_per_user`)
    /// and the coordinator's (memory for one more query), each for at most
    /// the query time limit.
    async fn wait_turn(&self, user: &str) -> Result<Turn, QueryError> {
        let config = &self.state.config;
        let mine = self
            .state
            .user_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(config.max_queries_per_user)))
            .clone();
        let patience = std::time::Duration::from_secs(config.query_time_limit_secs);
        let busy = |what: String| QueryError::ResourceExhausted(what);
        let user_turn = tokio::time::timeout(patience, mine.acquire_owned())
            .await
            .map_err(|_| {
                busy(format!(
                    "{user} already runs {} queries, the most one user may, and none finished within {} s",
                    config.max_queries_per_user, config.query_time_limit_secs
                ))
            })?
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let turn = tokio::time::timeout(patience, self.state.turns.clone().acquire_owned())
            .await
            .map_err(|_| {
                busy(format!(
                    "the coordinator runs as many queries as its memory allows and none finished within {} s",
                    config.query_time_limit_secs
                ))
            })?
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(Turn {
            _user: user_turn,
            _coordinator: turn,
        })
    }

    /// A query session: the node catalog with the session's `last_query`
    /// view, the coordinator's optimizer rules and disclosure control's
    /// physical operator.
    fn session(
        &self,
        context: FragmentContext,
        last_report: &std::collections::BTreeMap<String, String>,
    ) -> Result<SessionContext, QueryError> {
        let merged_nodes = context
            .linkage
            .as_ref()
            .map(|index| index.nodes_with_merged_records.clone())
            .unwrap_or_default();
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_information_schema(false)
            .with_extension(Arc::new(context));
        let state = carrow_sql::cooperative::session_defaults(SessionStateBuilder::new())
            .with_config(config)
            .with_runtime_env(self.query_runtime()?)
            .with_query_planner(Arc::new(CoordinatorPlanner))
            .build();
        let session = SessionContext::new_with_state(state);
        // Common subexpressions become `__common_expr_n` columns whose
        // aggregates the unparser then names differently from the plan that
        // reads them, so a pushed fragment could not be planned at its node.
        session.remove_optimizer_rule("common_sub_expression_eliminate");
        session.add_optimizer_rule(Arc::new(SplitAggregatePerNode));
        session.add_optimizer_rule(Arc::new(PushToNode::new(merged_nodes)));
        let view = LastQuery::new(last_report, COVERAGE_KEY, DISCLOSURE_KEY)?;
        let catalog = SessionCatalog::new(self.state.catalog.clone(), "public", view)?;
        session.register_catalog(CATALOG, Arc::new(catalog) as Arc<dyn CatalogProvider>);
        Ok(session)
    }

    /// Records a refused attempt and returns the refusal.
    fn refuse(
        &self,
        caller: &Caller,
        query_id: &str,
        project: Option<&str>,
        sql: &str,
        err: QueryError,
    ) -> QueryError {
        tracing::warn!(user = %caller.user, role = %caller.role, %query_id, error = %err, "query refused");
        self.state.count(&caller.role, Err(&err), &[]);
        self.state.record(json!({
            "kind": "query",
            "query_id": query_id,
            "user": caller.user,
            "role": caller.role,
            "project": project,
            "request": null,
            "sql": sql,
            "outcome": err.outcome(),
            "rule": rule_of(&err),
            "error": err.to_string(),
        }));
        err
    }
}

/// Physical planning with the disclosure control operator.
#[derive(Debug)]
struct CoordinatorPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for CoordinatorPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(DisclosurePlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// An execution error as the caller may see it: errors from nodes and
/// Carrow's own (unreachable node, resources) keep their words; anything
/// DataFusion or Arrow raised while computing over data is named by kind.
fn redact_execution_error(err: DataFusionError) -> QueryError {
    let root = err.find_root();
    if let DataFusionError::External(inner) = root {
        if let Some(e) = inner.downcast_ref::<QueryError>() {
            // Our own errors (a node's, already redacted there) keep their words.
            return match e {
                QueryError::DataFusion(_) => QueryError::Internal("query execution failed".into()),
                other => other.copied(),
            };
        }
        if let Some(status) = inner.downcast_ref::<tonic::Status>() {
            return QueryError::Unavailable(status.message().to_string());
        }
    }
    let kind = match root {
        DataFusionError::ResourcesExhausted(_) => {
            return QueryError::DataFusion(DataFusionError::ResourcesExhausted(
                "the query needs more memory than its limit".into(),
            ));
        }
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            datafusion::arrow::error::ArrowError::DivideByZero => "division by zero",
            datafusion::arrow::error::ArrowError::CastError(_) => {
                "a value could not be converted (cast)"
            }
            datafusion::arrow::error::ArrowError::ComputeError(_) => "a computation failed",
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => "arithmetic overflow",
            _ => "an Arrow error",
        },
        DataFusionError::Execution(_) => "an execution error",
        DataFusionError::IoError(_) => "an I/O error",
        _ => "an internal error",
    };
    tracing::warn!(
        kind,
        "query execution failed (details withheld from the caller)"
    );
    QueryError::Internal(format!(
        "query execution failed: {kind} (details are withheld because they could quote data)"
    ))
}

fn random_query_id() -> String {
    format!("q-{}", carrow_sql::flight::random_hex(8))
}

/// Today's date (UTC), against which request expiry is checked.
fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

fn governance_error(e: GovernanceError) -> QueryError {
    match e {
        GovernanceError::Refused(m) => QueryError::refused(rules::APPROVED_REQUESTS, m),
        GovernanceError::Invalid(m) => QueryError::Invalid(m),
        GovernanceError::NoSuchRequest(id) => QueryError::NotFound(format!("no request {id}")),
        other => QueryError::Internal(other.to_string()),
    }
}

/// Rule names in the coordinator's refusals.
pub mod rules {
    /// Researchers run only SQL a governance board approved.
    pub const APPROVED_REQUESTS: &str = "approved requests only";
    /// Each role does only its own work.
    pub const ROLES: &str = "roles";
    /// Users work in their own projects; an exempt project only for users
    /// named to it.
    pub const PROJECTS: &str = "projects of the user";
    /// Requests are decided by two governance users, never the requester,
    /// each once, in the order a request's state allows.
    pub const DECISIONS: &str = "two reviewers, never the requester";
}

/// What governance lets one statement do.
struct Permit {
    project: String,
    control: Option<Rules>,
    request: Option<i64>,
    run: Option<i64>,
}

impl CoordinatorBackend {
    fn permit(
        &self,
        caller: &Caller,
        role: Role,
        meta: &RequestMeta,
        sql: &str,
        query_id: &str,
    ) -> Result<Permit, QueryError> {
        let default_project = || {
            meta.project
                .clone()
                .unwrap_or_else(|| self.state.config.default_project.clone())
        };
        // Catalog calls and session settings read no data.
        if sql.trim().is_empty() || meta.setting {
            return Ok(Permit {
                project: default_project(),
                control: None,
                request: None,
                run: None,
            });
        }
        // What the statement is comes first: a write or an unknown setting
        // is refused for what it is, whoever sends it.
        carrow_sql::statement::check_read_only(sql)?;
        match role {
            Role::Governance => Err(QueryError::refused(
                rules::ROLES,
                format!(
                    "{} is a governance user: governance users review requests and audit logs and run no data queries",
                    caller.user
                ),
            )),
            Role::Planner => {
                let project = default_project();
                self.state
                    .config
                    .may_use(&caller.user, &project)
                    .map_err(|reason| QueryError::refused(rules::PROJECTS, reason))?;
                Ok(Permit {
                    project,
                    control: Some(self.state.rules),
                    request: None,
                    run: None,
                })
            }
            Role::Researcher => {
                let store = &self.state.requests;
                let (request, run) = if meta.preparing {
                    (
                        store
                            .authorise(&caller.user, sql, &today())
                            .map_err(governance_error)?,
                        None,
                    )
                } else {
                    let run = store
                        .start_run(&caller.user, sql, &today(), query_id)
                        .map_err(governance_error)?;
                    (run.request, Some(run.id))
                };
                // A user's projects can shrink after an approval.
                if let Err(reason) = self.state.config.may_use(&caller.user, &request.project) {
                    if let Some(run) = run {
                        let _ = store.finish_run(run, false);
                    }
                    return Err(QueryError::refused(rules::PROJECTS, reason));
                }
                if let Some(asked) = &meta.project
                    && *asked != request.project
                {
                    if let Some(run) = run {
                        let _ = store.finish_run(run, false);
                    }
                    return Err(QueryError::refused(
                        rules::APPROVED_REQUESTS,
                        format!(
                            "request {} was approved for project {}, not {asked}",
                            request.id, request.project
                        ),
                    ));
                }
                Ok(Permit {
                    project: request.project.clone(),
                    control: (request.output == Output::Aggregate).then_some(self.state.rules),
                    request: Some(request.id),
                    run,
                })
            }
        }
    }
}

#[tonic::async_trait]
impl Backend for CoordinatorBackend {
    fn authenticate(&self, user: &str, secret: &str) -> Result<Caller, QueryError> {
        match self.state.user(user) {
            Some(u) if verify_password(secret, &u.password_hash) => Ok(Caller {
                user: u.name.clone(),
                role: u.role.to_string(),
            }),
            _ => {
                tracing::warn!(user = %user, "refused login");
                Err(QueryError::Unauthenticated(format!(
                    "unknown user {user:?} or wrong password"
                )))
            }
        }
    }

    async fn scope(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        sql: &str,
    ) -> Result<Arc<dyn QueryScope>, QueryError> {
        let query_id = random_query_id();
        let role: Role = caller
            .role
            .parse()
            .map_err(|e: GovernanceError| QueryError::Internal(e.to_string()))?;
        // The request store is SQLite: off the async workers.
        let permit =
            carrow_sql::blocking::off_worker(|| self.permit(caller, role, meta, sql, &query_id))
                .map_err(|e| self.refuse(caller, &query_id, meta.project.as_deref(), sql, e))?;
        // Preparing a statement checks it; it runs (and is recorded as
        // started) when executed.
        let runs = !sql.trim().is_empty() && !meta.setting && !meta.preparing;
        let turn = if runs {
            Some(
                self.wait_turn(&caller.user)
                    .await
                    .map_err(|e| self.refuse(caller, &query_id, meta.project.as_deref(), sql, e))?,
            )
        } else {
            None
        };
        let trace_id = carrow_sql::flight::random_hex(16);
        let mut checkpoint = None;
        if runs {
            // Recorded before it runs: a process that stops mid-query
            // leaves a record without an outcome, which `audit verify` names.
            tracing::info!(%query_id, %trace_id, user = %caller.user, project = %permit.project, "query started");
            checkpoint = self.state.record(json!({
                "kind": "query",
                "phase": carrow_governance::audit::PHASE_STARTED,
                "query_id": query_id,
                "trace_id": trace_id,
                "user": caller.user,
                "role": caller.role,
                "project": permit.project,
                "request": permit.request,
                "sql": sql,
            }));
        }
        let allow_partial = meta
            .settings
            .get(ALLOW_PARTIAL)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let coverage = Arc::new(Coverage::default());
        let linkage = if sql.trim().is_empty() || meta.setting {
            None
        } else {
            self.state.linkage_index(&permit.project).await
        };
        let context = FragmentContext {
            project: permit.project.clone(),
            query_id: query_id.clone(),
            trace_id: Some(trace_id.clone()),
            checkpoint: checkpoint
                .map(|m| m.checkpoint)
                .or_else(|| self.state.audit.checkpoint().map(|c| c.to_text())),
            allow_partial,
            coverage: coverage.clone(),
            linkage,
        };
        let keys = permit
            .control
            .map(|_| self.state.record_keys(&permit.project));
        Ok(Arc::new(CoordinatorScope {
            _turn: turn,
            state: self.state.clone(),
            session: self.session(context, &meta.last_report)?,
            keys,
            allow_partial,
            query_id,
            trace_id,
            caller: caller.clone(),
            project: permit.project,
            coverage,
            control: permit.control,
            sink: ReportSink::default(),
            request: permit.request,
            run: permit.run,
            started: Instant::now(),
            partly_released: Default::default(),
        }))
    }

    fn server_name(&self) -> String {
        "carrow coordinator".to_string()
    }

    fn limits(&self) -> carrow_sql::flight::Limits {
        carrow_sql::flight::Limits {
            time: std::time::Duration::from_secs(self.state.config.query_time_limit_secs),
            held_bytes: self.state.config.held_result_mb * 1024 * 1024,
        }
    }

    fn settings(&self) -> &'static [&'static str] {
        &[ALLOW_PARTIAL]
    }

    async fn action(
        &self,
        caller: &Caller,
        name: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, QueryError> {
        let role: Role = caller
            .role
            .parse()
            .map_err(|e: GovernanceError| QueryError::Internal(e.to_string()))?;
        let input: serde_json::Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| {
                QueryError::Invalid(format!("action {name}: the body is not JSON: {e}"))
            })?
        };
        let store = &self.state.requests;
        let wrong_role = |what: &str| {
            QueryError::refused(rules::ROLES, format!("{} is a {role}; {what}", caller.user))
        };
        let id = || {
            input["id"]
                .as_i64()
                .ok_or_else(|| QueryError::Invalid(format!("action {name}: give the request's id")))
        };
        let answer = match name {
            "carrow.request.submit" => {
                if role != Role::Researcher {
                    return Err(wrong_role("only researchers submit requests"));
                }
                let new: NewRequest = serde_json::from_value(input.clone())
                    .map_err(|e| QueryError::Invalid(format!("action {name}: {e}")))?;
                json!(carrow_sql::blocking::off_worker(|| self
                    .state
                    .submit_request(caller, &new, "flight"))?)
            }
            "carrow.request.list" => match role {
                Role::Researcher => {
                    json!(store.list(Some(&caller.user)).map_err(governance_error)?)
                }
                Role::Governance => json!(store.list(None).map_err(governance_error)?),
                Role::Planner => return Err(wrong_role("planners have no requests")),
            },
            "carrow.request.show" => {
                let request = store.get(id()?).map_err(governance_error)?;
                match role {
                    Role::Governance => {}
                    Role::Researcher if request.requester == caller.user => {}
                    _ => {
                        return Err(QueryError::NotFound(format!(
                            "no request {} of {}",
                            request.id, caller.user
                        )));
                    }
                }
                let mut shown = json!(request);
                // The project's standing under the national data opt-out.
                shown["opt_out_exemption"] =
                    json!(self.state.config.opt_out_exemption(&request.project));
                shown
            }
            "carrow.request.decide" => {
                if role != Role::Governance {
                    return Err(wrong_role("only governance users decide on requests"));
                }
                let decision = input["decision"].as_str().unwrap_or_default().to_string();
                let comment = input["comment"].as_str();
                let id = id()?;
                json!(carrow_sql::blocking::off_worker(|| self
                    .state
                    .decide_request(caller, id, &decision, comment, "flight"))?)
            }
            other => return Err(QueryError::NotFound(format!("unknown action {other:?}"))),
        };
        Ok(answer.to_string().into_bytes())
    }
}

/// A query's turn to run, given back when its scope ends.
struct Turn {
    _user: tokio::sync::OwnedSemaphorePermit,
    _coordinator: tokio::sync::OwnedSemaphorePermit,
}

struct CoordinatorScope {
    state: Arc<CoordinatorState>,
    /// Held while the statement runs (data statements only).
    _turn: Option<Turn>,
    session: SessionContext,
    allow_partial: bool,
    query_id: String,
    /// Sent to nodes in `traceparent`: both services' logs carry it.
    trace_id: String,
    caller: Caller,
    project: String,
    coverage: Arc<Coverage>,
    /// Disclosure control's rules, when the result is controlled.
    control: Option<Rules>,
    /// The project's record keys, when the result is controlled.
    keys: Option<Arc<RecordKeys>>,
    sink: ReportSink,
    request: Option<i64>,
    run: Option<i64>,
    started: Instant,
    /// Rows the client received before the statement failed or was cancelled.
    partly_released: std::sync::atomic::AtomicU64,
}

impl QueryScope for CoordinatorScope {
    fn session(&self) -> &SessionContext {
        &self.session
    }

    fn query_id(&self) -> &str {
        &self.query_id
    }

    /// A controlled plan is analyzed (types coerced, grouping functions
    /// resolved) and checked against the planner query model.
    fn prepare_plan(&self, plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
        let (Some(rules), Some(keys)) = (self.control, &self.keys) else {
            return Ok(plan);
        };
        let state = self.session.state();
        let analyzed = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| self.explain_failure(e, Stage::Planning))?;
        crate::disclosure::control(analyzed, rules, keys.clone(), self.sink.clone())
    }

    /// Execution errors can quote data values: the caller learns their
    /// kind only (a node's own message is already redacted by the node).
    fn explain_failure(&self, err: DataFusionError, stage: Stage) -> QueryError {
        if stage == Stage::Planning {
            return QueryError::DataFusion(err);
        }
        redact_execution_error(err)
    }

    fn released_before_failure(&self, released: Released) {
        self.partly_released
            .store(released.rows, std::sync::atomic::Ordering::Relaxed);
    }

    fn finish(&self, sql: &str, outcome: Result<Released, &QueryError>) -> Option<AuditMark> {
        let partly = self
            .partly_released
            .load(std::sync::atomic::Ordering::Relaxed);
        // A run counts once any row left, whether or not the client read
        // to the end.
        if let Some(run) = self.run
            && let Err(e) = carrow_sql::blocking::off_worker(|| {
                self.state
                    .requests
                    .finish_run(run, outcome.is_ok() || partly > 0)
            })
        {
            tracing::error!(run, error = %e, "cannot record the end of a research run");
        }
        let fragments = self.coverage.fragments();
        self.state.count(&self.caller.role, outcome, &fragments);
        let coverage = self.coverage.to_json();
        match &outcome {
            Ok(r) => tracing::info!(
                query_id = %self.query_id, trace_id = %self.trace_id, user = %self.caller.user, project = %self.project,
                rows = r.rows, node_rows = ?self.coverage.rows(), %coverage, "query"
            ),
            Err(e) => tracing::info!(
                query_id = %self.query_id, trace_id = %self.trace_id, user = %self.caller.user, project = %self.project,
                error = %e, %coverage, "query failed"
            ),
        }
        if sql.trim().is_empty() {
            return None;
        }
        let (outcome_word, error, rows) = match &outcome {
            Ok(r) => ("ok", None, Some(r.rows)),
            Err(e) => (
                e.outcome(),
                Some(e.to_string()),
                (partly > 0).then_some(partly),
            ),
        };
        self.state.record(json!({
            "kind": "query",
            "phase": carrow_governance::audit::PHASE_FINISHED,
            "query_id": self.query_id,
            "trace_id": self.trace_id,
            "user": self.caller.user,
            "role": self.caller.role,
            "project": self.project,
            "request": self.request,
            "sql": sql,
            "outcome": outcome_word,
            "rule": outcome.err().and_then(rule_of),
            "error": error,
            "rows": rows,
            "duration_ms": self.started.elapsed().as_millis() as u64,
            "nodes": self.coverage.nodes(),
            "fragments": fragments,
            "disclosure": self.sink.get(),
            "opt_out_exemption": self.state.config.opt_out_exemption(&self.project),
            "small_population": self.sink.get().is_some_and(|r| r.small_cells + r.cells_below_threshold > 0),
        }))
    }

    /// Queries that read a node leave their query id, coverage manifest
    /// and disclosure report for the session's `last_query` view.
    fn session_report(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let metadata = self.result_metadata();
        if self.coverage.rows().is_empty()
            && self.coverage.fragments().is_empty()
            && metadata.get(COVERAGE_KEY).is_none_or(|c| c == "{}")
        {
            return None;
        }
        let mut report: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
        report.insert(
            crate::last_query::QUERY_ID.to_string(),
            self.query_id.clone(),
        );
        Some(report)
    }

    fn result_metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([(COVERAGE_KEY.to_string(), self.coverage.to_json())]);
        if let Some(report) = self.sink.get() {
            metadata.insert(
                DISCLOSURE_KEY.to_string(),
                serde_json::to_string(&report.released).unwrap_or_default(),
            );
        }
        metadata
    }

    /// A partial result is computed whole before it is sent, so its manifest
    /// also names nodes lost during the query; a controlled one, so every
    /// row can be checked against the others (totals) before release.
    fn completes_before_sending(&self) -> bool {
        self.allow_partial || self.control.is_some()
    }
}

impl Ops for CoordinatorState {
    fn health(&self) -> Health {
        let unreachable = self.unreachable();
        let nodes = (!unreachable.is_empty()).then(|| {
            let names: Vec<&str> = unreachable.iter().map(|(n, _)| n.as_str()).collect();
            format!("unreachable at the last refresh: {}", names.join(", "))
        });
        let project = &self.config.default_project;
        let linkage = (self.config.link_records && self.current_index(project).is_none())
            .then(|| format!("no linkage index for project {project} yet"));
        Health::from_checks([
            ("nodes".to_string(), nodes),
            ("linkage_index".to_string(), linkage),
        ])
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        let unreachable = self.unreachable();
        for node in &self.nodes() {
            let up = !unreachable.iter().any(|(n, _)| *n == node.name);
            m.set(
                "carrow_node_up",
                "Whether the node answered the last catalog refresh.",
                &[("node", &node.name)],
                if up { 1.0 } else { 0.0 },
            );
        }
        let indexes: Vec<(String, Arc<LinkageIndex>)> = self
            .linkage
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        for (project, index) in indexes {
            let age = index.built.elapsed().map_or(0.0, |d| d.as_secs_f64());
            m.set(
                "carrow_linkage_index_age_seconds",
                "Seconds since the project's linkage index was built.",
                &[("project", &project)],
                age,
            );
            m.set(
                "carrow_linkage_index_records",
                "Records in the project's linkage index.",
                &[("project", &project)],
                index.report.records as f64,
            );
            m.set(
                "carrow_linkage_index_persons",
                "Persons the project's linkage index found.",
                &[("project", &project)],
                index.report.persons as f64,
            );
        }
        m.set_audit_log(self.audit.records(), self.audit.path());
    }
}
