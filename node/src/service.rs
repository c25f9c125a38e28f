//! The node as a Flight SQL backend: builds the boundary at start, gives
//! each statement a session holding only the published tables of its
//! project, and appends every fragment to the node's audit log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use carrow_governance::{AuditLog, Checkpoint};
use carrow_linkage::fields::FieldTokeniser;
use carrow_linkage::{LinkageSecret, Tokeniser};
use carrow_sql::flight::AuditMark;
use carrow_sql::ops::{Health, Metrics, Ops};
use carrow_sql::{Backend, Caller, QueryError, QueryScope, Released, RequestMeta, Stage};
use datafusion::arrow::array::Array;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionConfig;
use datafusion::prelude::SessionContext;
use serde_json::json;

use crate::NodeError;
use crate::config::{Freshness, NodeConfig, TableConfig};
use crate::pid::{OptOutList, OptedOutFunction, PidFunction};
use crate::policy::{self, Names};
use crate::publish::{AccessRecorder, BoundaryFunctions, BoundaryTable, PublishedTable};
use crate::sources;
use crate::tokens;
use crate::withheld::{Withheld, WithheldList};

/// Catalog name of published tables; the schema is the node's name.
pub const CATALOG: &str = "carrow";

/// The node's state, built once at start.
pub struct NodeState {
    config: NodeConfig,
    audit: AuditLog,
    /// Published tables per project.
    projects: HashMap<String, Vec<Arc<PublishedTable>>>,
    /// Schema metadata per table: freshness, personal.
    metadata: HashMap<String, HashMap<String, String>>,
    names: Names,
    /// Field tokenisers per project, for the linkage token table.
    field_tokenisers: HashMap<String, FieldTokeniser>,
    /// The pid tokeniser of each project, shared with its published tables.
    pid_tokenisers: HashMap<String, Arc<Tokeniser>>,
    /// Token tables per project, with the source file times they were made from.
    token_tables: std::sync::Mutex<HashMap<String, (TokenTableMade, tokens::TokenTable)>>,
    /// Per project not exempt from the national data opt-out: the pids
    /// withheld for objections recorded at other organisations.
    withheld: HashMap<String, Arc<Withheld>>,
    /// Counters for the operations listener.
    metrics: Metrics,
}

/// When a cached token table was made, and from which source file times
/// (`None` when a source is a database).
struct TokenTableMade {
    at: std::time::Instant,
    source_times: Option<Vec<std::time::SystemTime>>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node", &self.config.name)
            .finish()
    }
}

impl NodeState {
    /// Loads the secret, opens the audit log, registers sources and builds
    /// every published table for every project. A source that cannot be read
    /// makes its tables unavailable (reported by name) without stopping the node.
    pub async fn build(config: NodeConfig) -> Result<Self, NodeError> {
        let secret = LinkageSecret::load(&config.linkage_secret_file)?;
        let audit_key = carrow_governance::AuditKey::load_or_create(&config.audit_key_file())?;
        let audit = AuditLog::open(&config.audit_log, &config.name, audit_key)?;
        let opt_outs = load_opt_outs(&config)?;

        let source_session = SessionContext::new();
        let mut broken_sources: HashMap<String, String> = HashMap::new();
        for (name, source) in &config.sources {
            if let Err(reason) = sources::register(&source_session, name, source).await {
                tracing::error!(node = %config.name, source = %name, %reason, "source unavailable");
                broken_sources.insert(name.clone(), reason);
            }
        }

        let mut projects: HashMap<String, Vec<Arc<PublishedTable>>> = HashMap::new();
        let mut unavailable: Vec<(String, String)> = Vec::new();
        let mut pid_tokenisers = HashMap::new();
        let mut withheld = HashMap::new();
        for project in &config.projects {
            let purpose = config.purpose(project);
            let project_withheld = match purpose.opt_out_exempt {
                Some(_) => None,
                None => {
                    let path = Withheld::path_for(&config.audit_log, project);
                    let list = Arc::new(Withheld::load(path)?);
                    withheld.insert(project.clone(), list.clone());
                    Some(list)
                }
            };
            // A local id's pid is scoped to this node's name.
            let tokeniser =
                Arc::new(Tokeniser::new(&secret, project).with_local_scope(&config.name));
            pid_tokenisers.insert(project.clone(), tokeniser.clone());
            let functions = BoundaryFunctions {
                pid: PidFunction::udf(tokeniser),
                opted_out: opt_outs.clone().map(OptedOutFunction::udf),
                purpose,
                withheld: project_withheld,
            };
            let mut tables = Vec::new();
            for table in &config.tables {
                if unavailable.iter().any(|(t, _)| *t == table.name) {
                    continue;
                }
                if let Some((source, reason)) = broken_source_of(table, &broken_sources) {
                    unavailable.push((
                        table.name.clone(),
                        format!("source {source} failed: {reason}"),
                    ));
                    continue;
                }
                match PublishedTable::build(&source_session, table, &functions).await {
                    Ok(published) => tables.push(Arc::new(published)),
                    Err(e) => {
                        let reason = format!("cannot build it from its sources: {}", e.find_root());
                        tracing::error!(node = %config.name, table = %table.name, %reason, "table unavailable");
                        unavailable.push((table.name.clone(), reason));
                    }
                }
            }
            projects.insert(project.clone(), tables);
        }

        let published: BTreeSet<String> = projects
            .values()
            .flatten()
            .map(|t| t.name.clone())
            .collect();
        let mut metadata = HashMap::new();
        if let Some(tables) = projects.get(&config.default_project) {
            for published in tables {
                let table = config
                    .tables
                    .iter()
                    .find(|t| t.name == published.name)
                    .expect("built from config");
                let freshness = freshness(&config, table, published).await;
                let mut m = HashMap::new();
                m.insert(
                    "carrow.personal".to_string(),
                    published.personal.to_string(),
                );
                if let Some(f) = freshness {
                    m.insert("carrow.freshness".to_string(), f);
                }
                metadata.insert(published.name.clone(), m);
            }
        }
        tracing::info!(
            node = %config.name,
            published = ?published,
            unavailable = ?unavailable.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            opt_outs = opt_outs.as_ref().map_or(0, |l| l.len()),
            "node ready"
        );
        let names = Names::new(&config, published, unavailable);
        let field_tokenisers = config
            .projects
            .iter()
            .map(|p| (p.clone(), FieldTokeniser::new(&secret, p)))
            .collect();
        Ok(Self {
            config,
            audit,
            projects,
            metadata,
            names,
            field_tokenisers,
            pid_tokenisers,
            token_tables: std::sync::Mutex::new(HashMap::new()),
            withheld,
            metrics: Metrics::default(),
        })
    }

    /// The published tables of `project` as a query at this node sees them
    /// (pid for the project, opt-outs removed, identifiers dropped).
    pub fn tables(&self, project: &str) -> Vec<(String, Arc<dyn TableProvider>)> {
        let recorder = Arc::new(AccessRecorder::default());
        self.projects
            .get(project)
            .into_iter()
            .flatten()
            .map(|table| {
                let provider: Arc<dyn TableProvider> =
                    Arc::new(BoundaryTable::new(table.clone(), recorder.clone()));
                (table.name.clone(), provider)
            })
            .collect()
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Published table names.
    pub fn published(&self) -> &BTreeSet<String> {
        &self.names.published
    }

    /// Tables that could not be published, with the reason.
    pub fn unavailable(&self) -> &[(String, String)] {
        &self.names.unavailable
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn session(
        &self,
        project: &str,
        recorder: &Arc<AccessRecorder>,
    ) -> Result<SessionContext, QueryError> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, &self.config.name)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(false);
        // Each query has its own memory pool: a heavy one spills or fails
        // alone, and never takes the node's memory from the others.
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(self.config.query_memory_mb * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Internal(format!("query runtime: {e}")))?;
        let state = carrow_sql::cooperative::session_defaults(
            datafusion::execution::SessionStateBuilder::new(),
        )
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
        let session = SessionContext::new_with_state(state);
        // DataFusion 55 can drop a needed sort when a common subexpression
        // sits between a sort and a filter that makes its key constant
        // (SanityCheckPlan then refuses the plan): found by the
        // generated-SQL test; the coordinator does without the rule too.
        session.remove_optimizer_rule("common_sub_expression_eliminate");
        for table in self.projects.get(project).into_iter().flatten() {
            let provider = BoundaryTable::new(table.clone(), recorder.clone());
            session
                .register_table(table.name.as_str(), Arc::new(provider))
                .map_err(|e| QueryError::Internal(format!("registering {}: {e}", table.name)))?;
        }
        Ok(session)
    }

    /// Adds the linkage token table of `project` to `session`, recorded as read.
    async fn add_token_table(
        &self,
        session: &SessionContext,
        project: &str,
        recorder: &Arc<AccessRecorder>,
    ) -> Result<(), QueryError> {
        let tokeniser = self
            .field_tokenisers
            .get(project)
            .ok_or_else(|| QueryError::NotFound(format!("no project {project}")))?;
        let table = match self.cached_token_table(project) {
            Some(table) => table,
            None => {
                let tables = self.projects.get(project).cloned().unwrap_or_default();
                // Taken first: a file changed while hashing makes the next
                // request hash again.
                let made = TokenTableMade {
                    at: std::time::Instant::now(),
                    source_times: self.source_times(),
                };
                let pids = self
                    .pid_tokenisers
                    .get(project)
                    .ok_or_else(|| QueryError::NotFound(format!("no project {project}")))?;
                let table = tokens::token_table(&tables, tokeniser, pids)
                    .await
                    .map_err(|e| {
                        QueryError::Internal(format!(
                            "building the linkage token table: {}",
                            e.find_root()
                        ))
                    })?;
                // Kept while every source is a file that has not changed,
                // or for a while when a source is a database.
                self.token_tables
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(project.to_string(), (made, table.clone()));
                table
            }
        };
        let version = table
            .version_batch()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        for (name, batch) in [
            (tokens::TOKEN_TABLE, table.batch),
            (tokens::REGISTER_TABLE, table.register),
            (tokens::VERSION_TABLE, version),
        ] {
            let mem = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            session
                .register_table(name, Arc::new(mem))
                .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        recorder.record(
            tokens::TOKEN_TABLE,
            tokens::schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        );
        Ok(())
    }

    /// Modification times of every source, or `None` when one has none
    /// (a database: its tables may change at any time).
    fn source_times(&self) -> Option<Vec<std::time::SystemTime>> {
        self.config
            .sources
            .values()
            .map(sources::modified)
            .collect()
    }

    /// The token table made before, if no source file changed since (or,
    /// over a database source, if it is younger than the configured age).
    fn cached_token_table(&self, project: &str) -> Option<tokens::TokenTable> {
        let cache = self.token_tables.lock().unwrap_or_else(|p| p.into_inner());
        let (made, table) = cache.get(project)?;
        let fresh = match &made.source_times {
            Some(times) => self.source_times().as_ref() == Some(times),
            None => made.at.elapsed().as_secs() < self.config.token_table_max_age_secs,
        };
        fresh.then(|| table.clone())
    }

    /// Counts a statement's outcome for `/metrics`.
    fn count(&self, role: &str, outcome: Result<Released, &QueryError>) {
        let (word, rows) = match outcome {
            Ok(r) => ("ok", r.rows),
            Err(e) => (e.outcome(), 0),
        };
        self.metrics.add(
            "carrow_statements_total",
            "Statements by caller role and outcome.",
            &[("role", role), ("outcome", word)],
            1.0,
        );
        if let Err(QueryError::Refused { rule, .. }) = outcome {
            self.metrics.add(
                "carrow_refusals_total",
                "Statements refused, by the policy rule that refused them.",
                &[("rule", rule)],
                1.0,
            );
        }
        self.metrics.add(
            "carrow_rows_released_total",
            "Rows sent to callers, by caller role.",
            &[("role", role)],
            rows as f64,
        );
    }

    /// Records a statement refused before it ran; returns the refusal.
    fn refused(
        &self,
        query_id: &str,
        caller: &Caller,
        meta: &RequestMeta,
        project: Option<&str>,
        sql: &str,
        e: QueryError,
    ) -> QueryError {
        self.count(&caller.role, Err(&e));
        let mut body = statement_fields(query_id, caller, meta, project, sql);
        body["outcome"] = json!(e.outcome());
        body["error"] = json!(e.to_string());
        self.record(body);
        e
    }

    /// A fragment planned under another withheld list than this node holds
    /// could release an opted-out person's records: refused until the
    /// coordinator sends the list (it does at every catalog refresh).
    fn check_withheld_version(&self, project: &str, meta: &RequestMeta) -> Result<(), QueryError> {
        let (Some(wanted), Some(withheld)) = (&meta.opt_out_version, self.withheld.get(project))
        else {
            return Ok(());
        };
        if withheld.covers(wanted) {
            return Ok(());
        }
        let held = withheld.version();
        Err(QueryError::Unavailable(format!(
            "node {} holds opt-out list version {} for project {project}, not {wanted}: \
             it is sent again at the coordinator's next catalog refresh",
            self.config.name,
            held.as_deref().unwrap_or("none")
        )))
    }

    /// Replaces `project`'s withheld list with the coordinator's (blocking:
    /// writes the file).
    fn replace_withheld(&self, caller: &Caller, list: &WithheldList) -> Result<usize, QueryError> {
        let withheld = match self.withheld.get(&list.project) {
            Some(w) => w,
            None if self.config.projects.contains(&list.project) => return Ok(0),
            None => {
                return Err(QueryError::NotFound(format!(
                    "node {} does not serve project {}",
                    self.config.name, list.project
                )));
            }
        };
        if withheld.version().as_deref() == Some(list.version.as_str()) {
            return Ok(withheld.len());
        }
        let n = withheld
            .replace(list)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        tracing::info!(node = %self.config.name, project = %list.project, version = %list.version,
            withheld = n, "opt-out list from the coordinator in force");
        self.record(json!({
            "kind": "withheld list",
            "caller": caller.user,
            "project": list.project,
            "version": list.version,
            "pids": n,
        }));
        Ok(n)
    }

    fn record(&self, body: serde_json::Value) -> Option<AuditMark> {
        // An fsync: off the async workers.
        match carrow_sql::blocking::off_worker(|| self.audit.append(body)) {
            Ok(appended) => Some(AuditMark {
                head: appended.hash,
                checkpoint: appended.checkpoint.to_text(),
            }),
            Err(e) => {
                tracing::error!(node = %self.config.name, error = %e, "cannot append to the audit log");
                None
            }
        }
    }
}

/// The first unreadable source a table reads, by its `source` or as a word of its `sql`.
fn broken_source_of<'a>(
    table: &TableConfig,
    broken: &'a HashMap<String, String>,
) -> Option<(&'a str, &'a str)> {
    let reads = |name: &str| match (&table.source, &table.sql) {
        (Some(source), _) => source == name,
        (None, Some(sql)) => sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word.eq_ignore_ascii_case(name)),
        (None, None) => false,
    };
    broken
        .iter()
        .find(|(name, _)| reads(name))
        .map(|(n, r)| (n.as_str(), r.as_str()))
}

/// Opens everything `config` refers to without serving: every source, the
/// opt-out list, the TLS files. Returns each problem, naming the file or
/// source (for `carrow node --check`).
pub async fn check_references(config: &NodeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let session = SessionContext::new();
    for (name, source) in &config.sources {
        if let Err(reason) = sources::register(&session, name, source).await {
            problems.push(format!("sources.{name}: {reason}"));
        }
    }
    if let Err(e) = load_opt_outs(config) {
        problems.push(format!("opt_out_list: {e}"));
    }
    if let Some(tls) = &config.tls {
        let files = [
            Some(("tls.cert_file", &tls.cert_file)),
            Some(("tls.key_file", &tls.key_file)),
            tls.client_ca_file
                .as_ref()
                .map(|f| ("tls.client_ca_file", f)),
        ];
        for (key, path) in files.into_iter().flatten() {
            if let Err(e) = std::fs::read(path) {
                problems.push(format!("{key}: cannot read {}: {e}", path.display()));
            }
        }
    }
    problems
}

fn load_opt_outs(config: &NodeConfig) -> Result<Option<Arc<OptOutList>>, NodeError> {
    let Some(path) = &config.opt_out_list else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| NodeError::OptOutList(format!("cannot read {}: {e}", path.display())))?;
    let (list, invalid) = OptOutList::parse(&text);
    if !invalid.is_empty() {
        // The values are identifiers: report line numbers only.
        tracing::warn!(node = %config.name, file = %path.display(), lines = ?invalid, "opt-out list entries that are not valid NHS numbers were ignored");
    }
    Ok(Some(Arc::new(list)))
}

async fn freshness(
    config: &NodeConfig,
    table: &TableConfig,
    published: &Arc<PublishedTable>,
) -> Option<String> {
    match table.freshness.as_ref()? {
        Freshness {
            as_of: Some(date), ..
        } => Some(date.clone()),
        Freshness {
            file_time: true, ..
        } => {
            let sources: Vec<_> = match &table.source {
                Some(s) => config.sources.get(s).into_iter().collect(),
                None => config.sources.values().collect(),
            };
            let newest = sources.into_iter().filter_map(sources::modified).max()?;
            Some(
                chrono::DateTime::<chrono::Utc>::from(newest)
                    .format("%Y-%m-%d")
                    .to_string(),
            )
        }
        Freshness {
            column: Some(column),
            ..
        } => {
            let session = SessionContext::new();
            let boundary =
                BoundaryTable::new(published.clone(), Arc::new(AccessRecorder::default()));
            let df = session.read_table(Arc::new(boundary)).ok()?;
            let df = df
                .aggregate(
                    vec![],
                    vec![datafusion::functions_aggregate::expr_fn::max(
                        datafusion::prelude::col(column.as_str()),
                    )],
                )
                .ok()?;
            let batches = df.collect().await.ok()?;
            let array = batches.first()?.column(0).clone();
            (array.len() == 1 && array.is_valid(0))
                .then(|| array_value_to_string(&array, 0).ok())
                .flatten()
        }
        _ => None,
    }
}

/// The node's Flight SQL backend.
pub struct NodeBackend {
    state: Arc<NodeState>,
}

impl NodeBackend {
    /// A backend over a built node state.
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Backend for NodeBackend {
    fn authenticate(&self, user: &str, secret: &str) -> Result<Caller, QueryError> {
        let result = policy::authenticate(&self.state.config, user, secret);
        match result {
            Ok(client) => Ok(Caller {
                user: client.name.clone(),
                role: format!("{:?}", client.role).to_lowercase(),
            }),
            Err(e) => {
                tracing::warn!(node = %self.state.config.name, user = %user, "refused login");
                Err(e)
            }
        }
    }

    async fn scope(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        sql: &str,
    ) -> Result<Arc<dyn QueryScope>, QueryError> {
        let state = &self.state;
        let query_id = random_query_id();
        let client = state
            .config
            .clients
            .iter()
            .find(|c| c.name == caller.user)
            .ok_or_else(|| {
                QueryError::Unauthenticated(format!("unknown caller {:?}", caller.user))
            })?;
        let project = match policy::resolve_project(&state.config, client, meta.project.as_deref())
        {
            Ok(p) => p,
            Err(e) => {
                return Err(state.refused(
                    &query_id,
                    caller,
                    meta,
                    meta.project.as_deref(),
                    sql,
                    e,
                ));
            }
        };
        let recorder = Arc::new(AccessRecorder::default());
        let session = state.session(&project, &recorder)?;
        if let Err(e) = state.check_withheld_version(&project, meta) {
            return Err(state.refused(&query_id, caller, meta, Some(&project), sql, e));
        }
        if meta.linkage {
            // Field tokens are weaker pseudonyms than pid: only the
            // coordinator's linkage stage may have them.
            if client.role != crate::config::ClientRole::Coordinator {
                let e = QueryError::refused(
                    policy::rules::LINKAGE_TOKENS,
                    format!(
                        "{} is not a coordinator; linkage tokens go only to the coordinator's linkage stage",
                        caller.user
                    ),
                );
                return Err(state.refused(&query_id, caller, meta, Some(&project), sql, e));
            }
            state.add_token_table(&session, &project, &recorder).await?;
        }
        // A statement being prepared is checked, not run: it is recorded
        // when it runs.
        if !sql.trim().is_empty() && !meta.setting && !meta.preparing {
            // Recorded before it runs: a process that stops mid-query
            // leaves a record without an outcome, which `audit verify` names.
            tracing::info!(node = %state.config.name, query_id = %query_id,
                upstream_query_id = meta.upstream_query_id.as_deref().unwrap_or("-"),
                trace_id = meta.trace_id.as_deref().unwrap_or("-"), caller = %caller.user,
                project = %project, "fragment started");
            let mut body = statement_fields(&query_id, caller, meta, Some(&project), sql);
            body["phase"] = json!(carrow_governance::audit::PHASE_STARTED);
            state.record(body);
        }
        Ok(Arc::new(NodeScope {
            state: state.clone(),
            session,
            query_id,
            caller: caller.clone(),
            project,
            upstream_query_id: meta.upstream_query_id.clone(),
            upstream_checkpoint: upstream_checkpoint(caller, meta),
            trace_id: meta.trace_id.clone(),
            recorder,
        }))
    }

    fn server_name(&self) -> String {
        format!("carrow node {}", self.state.config.name)
    }

    async fn action(
        &self,
        caller: &Caller,
        name: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, QueryError> {
        if name != crate::withheld::ACTION {
            return Err(QueryError::NotFound(format!("unknown action {name:?}")));
        }
        if caller.role != "coordinator" {
            return Err(QueryError::refused(
                policy::rules::LINKAGE_TOKENS,
                format!(
                    "{} is not a coordinator; only the coordinator sends opt-out lists",
                    caller.user
                ),
            ));
        }
        let list: WithheldList = serde_json::from_slice(body).map_err(|e| {
            QueryError::Invalid(format!(
                "{}: not a withheld list: {e}",
                crate::withheld::ACTION
            ))
        })?;
        let state = self.state.clone();
        let caller = caller.clone();
        let n = tokio::task::spawn_blocking(move || state.replace_withheld(&caller, &list))
            .await
            .map_err(|e| QueryError::Internal(format!("storing the withheld list: {e}")))??;
        Ok(json!({ "withheld": n }).to_string().into_bytes())
    }

    fn limits(&self) -> carrow_sql::flight::Limits {
        carrow_sql::flight::Limits {
            time: std::time::Duration::from_secs(self.state.config.query_time_limit_secs),
            ..Default::default()
        }
    }
}

fn random_query_id() -> String {
    format!("n-{}", carrow_sql::flight::random_hex(8))
}

struct NodeScope {
    state: Arc<NodeState>,
    session: SessionContext,
    query_id: String,
    caller: Caller,
    project: String,
    upstream_query_id: Option<String>,
    upstream_checkpoint: Option<String>,
    trace_id: Option<String>,
    recorder: Arc<AccessRecorder>,
}

/// The fields of every audit record of a statement at this node.
fn statement_fields(
    query_id: &str,
    caller: &Caller,
    meta: &RequestMeta,
    project: Option<&str>,
    sql: &str,
) -> serde_json::Value {
    json!({
        "query_id": query_id,
        "upstream_query_id": meta.upstream_query_id,
        "upstream_checkpoint": upstream_checkpoint(caller, meta),
        "trace_id": meta.trace_id,
        "caller": caller.user,
        "role": caller.role,
        "project": project,
        "sql": sql,
    })
}

/// The coordinator's checkpoint sent with a fragment, if it is one the
/// coordinator signed: recorded so this log pins the coordinator's.
fn upstream_checkpoint(caller: &Caller, meta: &RequestMeta) -> Option<String> {
    // Only a coordinator's: another caller could send a checkpoint signed
    // with a key of its own, and reconcile would then accuse the coordinator.
    if caller.role != "coordinator" {
        return None;
    }
    let text = meta.upstream_checkpoint.as_deref()?;
    match Checkpoint::parse(text) {
        Ok(c) if c.origin == "coordinator" && c.signature_holds() => Some(c.to_text()),
        _ => {
            tracing::warn!(
                upstream_query_id = meta.upstream_query_id.as_deref().unwrap_or("-"),
                "a fragment came with a checkpoint that does not verify; not recorded"
            );
            None
        }
    }
}

impl QueryScope for NodeScope {
    fn session(&self) -> &SessionContext {
        &self.session
    }

    fn query_id(&self) -> &str {
        &self.query_id
    }

    fn explain_failure(&self, err: DataFusionError, stage: Stage) -> QueryError {
        self.state
            .names
            .explain(&self.state.config.name, err, stage)
    }

    fn table_metadata(&self, table: &str) -> HashMap<String, String> {
        self.state.metadata.get(table).cloned().unwrap_or_default()
    }

    fn finish(&self, sql: &str, outcome: Result<Released, &QueryError>) -> Option<AuditMark> {
        let tables: Vec<_> = self
            .recorder
            .snapshot()
            .into_iter()
            .map(|(table, columns)| json!({ "table": table, "columns": columns }))
            .collect();
        self.state.count(&self.caller.role, outcome);
        let (status, rows, bytes, error) = match outcome {
            Ok(r) => ("ok", r.rows, r.bytes, None),
            Err(e) => (e.outcome(), 0, 0, Some(e.to_string())),
        };
        tracing::info!(
            node = %self.state.config.name,
            query_id = %self.query_id,
            upstream_query_id = self.upstream_query_id.as_deref().unwrap_or("-"),
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            caller = %self.caller.user,
            project = %self.project,
            outcome = status,
            rows,
            "fragment"
        );
        self.state.record(json!({
            "phase": carrow_governance::audit::PHASE_FINISHED,
            "query_id": self.query_id,
            "upstream_query_id": self.upstream_query_id,
            "upstream_checkpoint": self.upstream_checkpoint,
            "trace_id": self.trace_id,
            "caller": self.caller.user,
            "role": self.caller.role,
            "project": self.project,
            "sql": sql,
            "tables": tables,
            "rows": rows,
            "bytes": bytes,
            "outcome": status,
            "error": error,
            // For the governance board: never sent to the caller.
            "withheld_for_opt_outs": self.recorder.withheld(),
            "opt_out_exemption": self.state.config.purpose(&self.project).opt_out_exempt,
        }))
    }
}

impl Ops for NodeState {
    fn health(&self) -> Health {
        let unavailable = self.unavailable();
        let tables = (!unavailable.is_empty()).then(|| {
            let names: Vec<&str> = unavailable.iter().map(|(t, _)| t.as_str()).collect();
            format!("tables unavailable: {}", names.join(", "))
        });
        let audit = (!self.audit.path().exists())
            .then(|| format!("audit log {} is missing", self.audit.path().display()));
        Health::from_checks([
            ("sources".to_string(), tables),
            ("audit_log".to_string(), audit),
        ])
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.set_audit_log(self.audit.records(), self.audit.path());
        m.set(
            "carrow_tables_unavailable",
            "Published tables whose source cannot be read.",
            &[],
            self.unavailable().len() as f64,
        );
        for (project, withheld) in &self.withheld {
            m.set(
                "carrow_withheld_pids",
                "Pseudonyms withheld for objections recorded at other organisations, by project.",
                &[("project", project)],
                withheld.len() as f64,
            );
        }
    }
}
