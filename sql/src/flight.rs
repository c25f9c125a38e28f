//! The Arrow Flight SQL service shared by nodes and the coordinator.
//!
//! It handles what every Carrow endpoint needs: Basic-then-Bearer
//! authentication, plain and prepared statements (with bound parameters),
//! catalog calls, statement checks, `Utf8` at the boundary, server-side
//! statement handles that a client cannot forge, and batch-by-batch
//! streaming with back-pressure. What a query may see, and what is recorded
//! about it, is decided by a [`Backend`].

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::boundary::to_client_types;
use crate::error::QueryError;
use crate::statement::check_read_only;

/// Request header naming the project a fragment is for.
pub const PROJECT_HEADER: &str = "x-carrow-project";
/// Request header asking for a receipt (rows, bytes, audit head) after the last batch.
pub const RECEIPT_HEADER: &str = "x-carrow-receipt";
/// Request header of the coordinator's linkage stage, asking a node for its
/// linkage token table.
pub const LINKAGE_HEADER: &str = "x-carrow-linkage";
/// Request header carrying the coordinator's query id, recorded in node logs.
pub const QUERY_ID_HEADER: &str = "x-carrow-query-id";
/// Request header carrying the coordinator's latest signed audit
/// checkpoint, which the node records beside the fragment.
pub const CHECKPOINT_HEADER: &str = "x-carrow-checkpoint";
/// W3C trace context: the coordinator's trace id reaches node logs.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Request header naming the version of the withheld list (opt-outs
/// recorded at other nodes) a fragment was planned under.
pub const OPT_OUT_VERSION_HEADER: &str = "x-carrow-opt-out-version";

/// How long a statement handle or session stays valid.
const HANDLE_TTL: Duration = Duration::from_secs(15 * 60);
const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: String,
}

/// What the request's headers say about the query.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The project the caller asks for, if it names one.
    pub project: Option<String>,
    /// Whether to append a receipt message after the last batch.
    pub wants_receipt: bool,
    /// The upstream query id, if the caller is a coordinator.
    pub upstream_query_id: Option<String>,
    /// The caller's signed audit checkpoint (coordinators), as text.
    pub upstream_checkpoint: Option<String>,
    /// The trace id of a W3C `traceparent` header, if well formed.
    pub trace_id: Option<String>,
    /// The session's `SET carrow.*` settings.
    pub settings: BTreeMap<String, String>,
    /// The statement is being prepared, not run: a backend checks it but
    /// counts no run.
    pub preparing: bool,
    /// The statement is a `SET carrow.*` setting, not a query.
    pub setting: bool,
    /// The caller asks for the linkage token table (coordinators only).
    pub linkage: bool,
    /// The withheld list's version the coordinator planned the fragment under.
    pub opt_out_version: Option<String>,
    /// What the backend reported of the session's previous statement
    /// ([`QueryScope::session_report`]).
    pub last_report: BTreeMap<String, String>,
}

impl RequestMeta {
    fn from_metadata(md: &MetadataMap) -> Self {
        let text = |name: &str| {
            md.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            project: text(PROJECT_HEADER),
            wants_receipt: text(RECEIPT_HEADER).is_some_and(|v| v == "1" || v == "true"),
            upstream_query_id: text(QUERY_ID_HEADER),
            upstream_checkpoint: text(CHECKPOINT_HEADER),
            trace_id: text(TRACEPARENT_HEADER).and_then(|t| trace_id_of(&t)),
            settings: BTreeMap::new(),
            preparing: false,
            setting: false,
            linkage: text(LINKAGE_HEADER).is_some_and(|v| v == "1"),
            opt_out_version: text(OPT_OUT_VERSION_HEADER),
            last_report: BTreeMap::new(),
        }
    }
}

/// The trace id of a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts[..] {
        [version, trace, span, flags]
            if hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2) =>
        {
            Some(trace.to_ascii_lowercase())
        }
        _ => None,
    }
}

/// A `traceparent` value for `trace_id` with a new span id.
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{}-01", random_hex(8))
}

/// Where a statement's outcome landed in the service's audit log: sent
/// back in a receipt, so the caller's log pins this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMark {
    /// The hash of the outcome's record.
    pub head: String,
    /// The log's signed checkpoint including it, as text.
    pub checkpoint: String,
}

/// Where a statement failed. Planning failures are about the SQL; execution
/// failures can quote data, so backends may redact them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Planning,
    Execution,
}

/// What a finished statement released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub rows: u64,
    pub bytes: u64,
}

/// One statement's scope: the session it is planned in and where its
/// outcome is recorded.
pub trait QueryScope: Send + Sync {
    /// The session the statement is planned and run in.
    fn session(&self) -> &SessionContext;
    /// This statement's query id.
    fn query_id(&self) -> &str;
    /// Turns a DataFusion failure into what the caller sees. Backends may name
    /// a policy rule, or redact execution details that could carry values.
    fn explain_failure(
        &self,
        err: datafusion::error::DataFusionError,
        _stage: Stage,
    ) -> QueryError {
        QueryError::DataFusion(err)
    }
    /// Records the statement's outcome; returns where it landed in the audit log.
    fn finish(&self, sql: &str, outcome: Result<Released, &QueryError>) -> Option<AuditMark>;
    /// Called before a failed [`finish`](Self::finish) when rows had
    /// already been sent: the client has part of the result.
    fn released_before_failure(&self, _released: Released) {}
    /// Schema metadata a catalog listing shows for `table` (freshness, ...).
    fn table_metadata(&self, _table: &str) -> HashMap<String, String> {
        HashMap::new()
    }
    /// Schema metadata of the result, known once the plan is running (the
    /// coordinator's coverage manifest).
    fn result_metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }
    /// The scope's own rewrite of the statement's logical plan (disclosure
    /// control), applied before it is optimised and run.
    fn prepare_plan(&self, plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
        Ok(plan)
    }
    /// Whether the whole result is computed before its schema is sent, so
    /// that [`result_metadata`](Self::result_metadata) describes all of it.
    fn completes_before_sending(&self) -> bool {
        false
    }
    /// What to keep of this statement, once started, for the session's
    /// next statements to read (the coordinator's `last_query` view).
    fn session_report(&self) -> Option<BTreeMap<String, String>> {
        None
    }
}

/// Limits on one statement.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From its FlightInfo to its last batch; beyond it the statement is
    /// stopped (its node fragments too) and fails as timed out.
    pub time: Duration,
    /// The most a result held in memory before sending (partial or
    /// controlled results) may take.
    pub held_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(300),
            held_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Stops an endpoint's running statements: each fails (audited) rather
/// than holding the process past its shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: tokio::sync::watch::Sender<bool>,
    running: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            running: Arc::default(),
        }
    }
}

impl Shutdown {
    /// Cancels every running statement and waits (up to `deadline`) for
    /// them to record their end.
    pub async fn cancel_all(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let until = Instant::now() + deadline;
        while self.running.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Statements streaming now.
    pub fn running(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What an endpoint serves, and to whom.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Checks Basic credentials. Errors must not echo the secret.
    fn authenticate(&self, user: &str, secret: &str) -> Result<Caller, QueryError>;
    /// The scope `sql` of `caller` runs in (`sql` is empty for catalog calls).
    /// A backend that refuses here records the refusal itself.
    async fn scope(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        sql: &str,
    ) -> Result<Arc<dyn QueryScope>, QueryError>;
    /// The server name reported to clients.
    fn server_name(&self) -> String;
    /// Settings a session may change with `SET name = value` (for example
    /// `carrow.allow_partial`); any other `SET` is refused.
    fn settings(&self) -> &'static [&'static str] {
        &[]
    }
    /// The limits every statement runs under.
    fn limits(&self) -> Limits {
        Limits::default()
    }
    /// A custom Flight action (`carrow.request.submit`, ...) with a JSON body;
    /// returns the JSON answer.
    async fn action(
        &self,
        _caller: &Caller,
        name: &str,
        _body: &[u8],
    ) -> Result<Vec<u8>, QueryError> {
        Err(QueryError::NotFound(format!("unknown action {name:?}")))
    }
}

/// `SET name = value` (or `TO`), when `sql` is one: the lower-case name and
/// the unquoted value.
pub fn parse_setting(sql: &str) -> Option<(String, String)> {
    let text = sql.trim().trim_end_matches(';').trim();
    if !text.get(..4)?.eq_ignore_ascii_case("set ") {
        return None;
    }
    let body = text[4..].trim();
    let (name, value) = match body.split_once('=') {
        Some(pair) => pair,
        None => {
            let lower = body.to_ascii_lowercase();
            let at = lower.find(" to ")?;
            (&body[..at], &body[at + 4..])
        }
    };
    let value = value.trim().trim_matches('\'').trim_matches('"');
    Some((name.trim().to_ascii_lowercase(), value.to_string()))
}

enum Handle {
    Prepared {
        owner: String,
        sql: String,
        params: Option<Vec<ScalarValue>>,
        created: Instant,
    },
    Execution {
        owner: String,
        scope: Arc<dyn QueryScope>,
        started: Started,
        sql: String,
        meta: Box<RequestMeta>,
        created: Instant,
    },
}

/// A statement started when its FlightInfo was asked for: its stream and
/// the schema it announced, which every batch it streams is made to match
/// (types, nullability, names and metadata).
struct Started {
    stream: datafusion::execution::SendableRecordBatchStream,
    schema: SchemaRef,
    /// When the statement's time limit runs out.
    deadline: Instant,
}

impl Handle {
    fn owner(&self) -> &str {
        match self {
            Handle::Prepared { owner, .. } | Handle::Execution { owner, .. } => owner,
        }
    }

    fn created(&self) -> Instant {
        match self {
            Handle::Prepared { created, .. } | Handle::Execution { created, .. } => *created,
        }
    }
}

/// A logged-in client: who, until when, and its `SET carrow.*` settings.
struct Session {
    caller: Caller,
    expires: Instant,
    settings: BTreeMap<String, String>,
    /// What the backend reported of the session's last statement.
    last_report: BTreeMap<String, String>,
}

/// A Flight SQL endpoint over a [`Backend`].
pub struct FlightSqlEndpoint<B: Backend> {
    backend: Arc<B>,
    sessions: Mutex<HashMap<String, Session>>,
    handles: Mutex<HashMap<String, Handle>>,
    sql_info: SqlInfoData,
    shutdown: Shutdown,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// `len` random bytes from the operating system, in hex: statement
/// handles, session tokens and query ids.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    hex::encode(bytes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn schema_bytes(schema: &Schema) -> Result<Vec<u8>, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?;
    Ok(message.0.to_vec())
}

impl<B: Backend> FlightSqlEndpoint<B> {
    /// An endpoint serving `backend`.
    pub fn new(backend: Arc<B>) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, backend.server_name().as_str());
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        let sql_info = info.build().expect("static SQL info builds");
        Self {
            backend,
            sessions: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            sql_info,
            shutdown: Shutdown::default(),
        }
    }

    /// Cancels this endpoint's running statements (at shutdown).
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The tonic service to mount on a server.
    pub fn into_service(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn decode_basic(header: &str) -> Result<(String, String), Status> {
        let encoded = header.trim_start_matches("Basic ").trim();
        // Clients differ on padding; accept both.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine.decode(encoded).map_err(|_| {
            Status::unauthenticated("the Basic authorization header is not valid base64")
        })?;
        let text = String::from_utf8(decoded).map_err(|_| {
            Status::unauthenticated("the Basic authorization header is not valid UTF-8")
        })?;
        let (user, secret) = text.split_once(':').ok_or_else(|| {
            Status::unauthenticated("the Basic authorization header has no `user:password`")
        })?;
        Ok((user.to_string(), secret.to_string()))
    }

    /// The caller of a request: a Bearer token from the handshake, or Basic
    /// credentials sent with the call itself.
    fn caller(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let header = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no credentials: log in with Basic auth, then send the Bearer token",
                )
            })?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            let mut sessions = lock(&self.sessions);
            return match sessions.get(token.trim()) {
                Some(session) if session.expires > Instant::now() => Ok(session.caller.clone()),
                Some(_) => {
                    sessions.remove(token.trim());
                    Err(Status::unauthenticated(
                        "the Bearer token has expired: log in again",
                    ))
                }
                None => Err(Status::unauthenticated(
                    "unknown Bearer token: log in again",
                )),
            };
        }
        if header.starts_with("Basic ") {
            let (user, secret) = Self::decode_basic(header)?;
            return self
                .backend
                .authenticate(&user, &secret)
                .map_err(Status::from);
        }
        Err(Status::unauthenticated(
            "unsupported authorization scheme: use Basic or Bearer",
        ))
    }

    fn bearer(md: &MetadataMap) -> Option<&str> {
        md.get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::trim)
    }

    /// The request's headers and its session's settings.
    fn meta(&self, md: &MetadataMap) -> RequestMeta {
        let mut meta = RequestMeta::from_metadata(md);
        if let Some((settings, last)) = Self::bearer(md).and_then(|t| {
            lock(&self.sessions)
                .get(t)
                .map(|s| (s.settings.clone(), s.last_report.clone()))
        }) {
            meta.settings = settings;
            meta.last_report = last;
        }
        meta
    }

    /// Keeps what the backend reports of a started statement for the
    /// session's next statements.
    fn keep_report(&self, md: &MetadataMap, scope: &dyn QueryScope) {
        if let (Some(token), Some(report)) = (Self::bearer(md), scope.session_report())
            && let Some(session) = lock(&self.sessions).get_mut(token)
        {
            session.last_report = report;
        }
    }

    /// A `SET` of a setting the backend accepts, if `sql` is one.
    fn accepted_setting(&self, sql: &str) -> Option<(String, String)> {
        parse_setting(sql).filter(|(name, _)| self.backend.settings().contains(&name.as_str()))
    }

    /// Stores a setting in the caller's session.
    fn store_setting(&self, md: &MetadataMap, name: String, value: String) -> Result<(), Status> {
        let token = Self::bearer(md).ok_or_else(|| {
            Status::failed_precondition("SET needs a session: log in with the handshake first")
        })?;
        match lock(&self.sessions).get_mut(token) {
            Some(session) => {
                session.settings.insert(name, value);
                Ok(())
            }
            None => Err(Status::unauthenticated(
                "unknown Bearer token: log in again",
            )),
        }
    }

    fn insert_handle(&self, handle: Handle) -> String {
        let id = random_hex(16);
        let mut handles = lock(&self.handles);
        handles.retain(|_, h| h.created().elapsed() < HANDLE_TTL);
        handles.insert(id.clone(), handle);
        id
    }

    /// Removes and returns a handle the caller owns.
    fn take_handle(&self, id: &[u8], caller: &Caller) -> Result<Handle, Status> {
        let id = std::str::from_utf8(id)
            .map_err(|_| Status::invalid_argument("malformed statement handle"))?;
        let mut handles = lock(&self.handles);
        match handles.get(id) {
            Some(h) if h.owner() == caller.user && h.created().elapsed() < HANDLE_TTL => {
                Ok(handles.remove(id).expect("present"))
            }
            _ => Err(Status::not_found("unknown or expired statement handle")),
        }
    }

    /// Plans `sql` in `scope`: statement checks, DataFusion planning with
    /// writes disabled, bound parameters, client-facing types.
    async fn plan(
        scope: &dyn QueryScope,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<DataFrame, QueryError> {
        check_read_only(sql)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let sql = crate::statement::numbered_placeholders(sql);
        let df = scope
            .session()
            .sql_with_options(&sql, options)
            .await
            .map_err(|e| scope.explain_failure(e, Stage::Planning))?;
        let (state, plan) = df.into_parts();
        let df = DataFrame::new(state, scope.prepare_plan(plan)?);
        let df = match params {
            Some(values) => df
                .with_param_values(values)
                .map_err(|e| scope.explain_failure(e, Stage::Planning))?,
            None => df,
        };
        to_client_types(df).map_err(|e| scope.explain_failure(e, Stage::Planning))
    }

    /// Plans and starts a statement and returns its handle and the schema
    /// it announces. A refused or failed statement is recorded by the scope.
    async fn prepare_execution(
        &self,
        caller: &Caller,
        md: &MetadataMap,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<(String, SchemaRef), Status> {
        // `SET carrow.…` changes the session and returns no rows.
        let setting = self.accepted_setting(sql);
        if let Some((name, value)) = setting.clone() {
            self.store_setting(md, name, value)?;
        }
        let mut meta = self.meta(md);
        meta.setting = setting.is_some();
        let scope = self.backend.scope(caller, &meta, sql).await?;
        let planned = match setting {
            Some(_) => scope.session().read_empty().map_err(QueryError::from),
            None => contain_panic(Self::plan(scope.as_ref(), sql, params), "planning")
                .await
                .and_then(every_parameter_bound),
        };
        let limits = self.backend.limits();
        let started = match planned {
            Ok(df) => match tokio::time::timeout(
                limits.time,
                contain_panic(
                    async {
                        start(&scope, df, &limits)
                            .await
                            .map_err(|e| scope.explain_failure(e, Stage::Execution))
                    },
                    "starting",
                ),
            )
            .await
            {
                Ok(started) => started,
                Err(_) => Err(QueryError::TimedOut(format!(
                    "the statement ran longer than its time limit of {} s and was stopped",
                    limits.time.as_secs()
                ))),
            },
            Err(e) => Err(e),
        };
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                scope.finish(sql, Err(&e));
                return Err(e.into());
            }
        };
        let schema = started.schema.clone();
        self.keep_report(md, scope.as_ref());
        let handle = Handle::Execution {
            owner: caller.user.clone(),
            scope,
            started: Started {
                deadline: Instant::now() + limits.time,
                ..started
            },
            sql: sql.to_string(),
            meta: Box::new(meta),
            created: Instant::now(),
        };
        Ok((self.insert_handle(handle), schema))
    }

    fn flight_info(
        ticket: Vec<u8>,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor);
        Ok(info)
    }

    fn statement_info(
        handle: String,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        Self::flight_info(ticket.as_any().encode_to_vec(), schema, descriptor)
    }

    /// Streams one metadata batch.
    fn one_batch<E: std::fmt::Display>(
        batch: Result<RecordBatch, E>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
        let schema = batch.schema();
        let input = futures::stream::iter([Ok(batch)]);
        Ok(Response::new(Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(input)
                .map_err(Status::from),
        )))
    }

    /// The FlightInfo of a catalog command: its ticket is the command itself
    /// (it names no data; `do_get` checks the caller again).
    fn command_info(
        &self,
        request: Request<FlightDescriptor>,
        command: Any,
        schema: &Schema,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(request.metadata())?;
        Ok(Response::new(Self::flight_info(
            command.encode_to_vec(),
            schema,
            request.into_inner(),
        )?))
    }

    /// The session of a catalog call, which records nothing.
    async fn catalog_session(&self, md: &MetadataMap) -> Result<Arc<dyn QueryScope>, Status> {
        let caller = self.caller(md)?;
        Ok(self.backend.scope(&caller, &self.meta(md), "").await?)
    }

    /// Every (catalog, schema, table, client-facing schema) the scope can see.
    async fn tables_of(
        scope: &dyn QueryScope,
    ) -> Result<Vec<(String, String, String, Schema)>, Status> {
        let session = scope.session();
        let mut out = Vec::new();
        for catalog_name in session.catalog_names() {
            let Some(catalog) = session.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    if let Ok(Some(table)) = schema.table(&table_name).await {
                        let fields: Vec<Field> = table
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| crate::boundary::client_field(f.as_ref()))
                            .collect();
                        out.push((
                            catalog_name.clone(),
                            schema_name.clone(),
                            table_name.clone(),
                            Schema::new_with_metadata(fields, scope.table_metadata(&table_name)),
                        ));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(out)
    }
}

/// Starts a planned statement: its physical plan is made (nodes are
/// connected, so the coverage manifest knows every node's status), and a
/// scope that wants its result complete before anything is sent gets it
/// computed here. The announced schema is the stream's, with client types
/// and the scope's metadata (coverage, disclosure), so every client, ADBC
/// included, sees the metadata with the FlightInfo.
async fn start(
    scope: &Arc<dyn QueryScope>,
    df: DataFrame,
    limits: &Limits,
) -> datafusion::error::Result<Started> {
    let mut stream = df.execute_stream().await?;
    let stream: datafusion::execution::SendableRecordBatchStream = if scope
        .completes_before_sending()
    {
        let schema = stream.schema();
        let (mut batches, mut held) = (Vec::new(), 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            held += batch.get_array_memory_size();
            if held > limits.held_bytes {
                return Err(datafusion::error::DataFusionError::External(Box::new(
                    QueryError::ResourceExhausted(format!(
                        "the result is larger than {} MB, the most held in memory before sending \
                             (a partial or disclosure-controlled result is computed whole first): \
                             narrow the query",
                        limits.held_bytes / (1024 * 1024)
                    )),
                )));
            }
            batches.push(batch);
        }
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            ),
        )
    } else {
        stream
    };
    let fields: Vec<Field> = stream
        .schema()
        .fields()
        .iter()
        .map(|f| crate::boundary::client_field(f))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, scope.result_metadata()));
    Ok(Started {
        stream,
        schema,
        deadline: Instant::now(),
    })
}

/// `batch` as a batch of `schema`: columns cast to its types where they
/// differ (a view type, a decimal computed as a float), so the stream is
/// exactly what the FlightInfo announced.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, FlightError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                datafusion::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FlightError::ExternalError(Box::new(e)))?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| FlightError::ExternalError(Box::new(e)))
}

/// Streams a started statement, encoding batches as they come, and records
/// the outcome once the stream ends, fails (an encoding failure included)
/// or the client goes away.
fn execute_stream(
    scope: Arc<dyn QueryScope>,
    started: Started,
    sql: String,
    meta: RequestMeta,
    shutdown: Shutdown,
) -> DoGetStream {
    // Two messages in flight at most: a slow client slows the query down
    // instead of the server buffering the result.
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(2);
    shutdown
        .running
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(async move {
        let Started {
            stream,
            schema,
            deadline,
        } = started;
        let released = Arc::new(Mutex::new(Released::default()));
        let failure: Arc<Mutex<Option<datafusion::error::DataFusionError>>> =
            Arc::new(Mutex::new(None));
        let (counter, failed, result_schema) = (released.clone(), failure.clone(), schema.clone());
        let counted = stream.map(move |item| match item {
            Ok(batch) => {
                let batch = conform(batch, &result_schema)?;
                let mut r = lock(&counter);
                r.rows += batch.num_rows() as u64;
                r.bytes += batch.get_array_memory_size() as u64;
                Ok(batch)
            }
            Err(e) => {
                *lock(&failed) = Some(e);
                Err(FlightError::ExternalError("query execution failed".into()))
            }
        });
        let mut encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(counted);
        let mut stop = shutdown.stop.subscribe();
        let time_limit = tokio::time::sleep_until(deadline.into());
        tokio::pin!(time_limit);
        // Why the stream ended early, if it did.
        let mut ended: Option<QueryError> = None;
        let mut cancelled = false;
        loop {
            // The client leaving, the time limit and a shutdown are watched
            // even while the plan computes without producing a batch (a
            // huge join or aggregate): dropping the stream stops its work.
            tokio::select! {
                item = encoded.next() => match item {
                    Some(Ok(data)) => {
                        if tx.send(Ok(data)).await.is_err() {
                            cancelled = true;
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        if lock(&failure).is_none() {
                            ended = Some(QueryError::Internal(format!(
                                "the result could not be encoded ({}); the stream was cut short",
                                e.to_string().lines().next().unwrap_or("unknown")
                            )));
                        }
                        break;
                    }
                    None => break,
                },
                _ = tx.closed() => {
                    cancelled = true;
                    break;
                }
                _ = &mut time_limit => {
                    ended = Some(QueryError::TimedOut(
                        "the statement ran longer than its time limit and was stopped".into(),
                    ));
                    break;
                }
                _ = async { stop.wait_for(|stopping| *stopping).await.map(|_| ()) } => {
                    ended = Some(QueryError::Unavailable(
                        "the server is shutting down; the statement was stopped".into(),
                    ));
                    break;
                }
            }
        }
        drop(encoded);
        let totals = *lock(&released);
        let failure = lock(&failure).take();
        let err = match failure {
            Some(e) => Some(scope.explain_failure(e, Stage::Execution)),
            None => ended,
        };
        if (err.is_some() || cancelled) && totals.rows > 0 {
            scope.released_before_failure(totals);
        }
        if let Some(err) = err {
            scope.finish(&sql, Err(&err));
            let _ = tx.send(Err(err.into())).await;
        } else if cancelled {
            let err = QueryError::Unavailable(
                "the client went away before the result was complete; query cancelled".into(),
            );
            scope.finish(&sql, Err(&err));
        } else {
            let mark = scope.finish(&sql, Ok(totals));
            if meta.wants_receipt {
                let quoted = |s: Option<&str>| s.map_or("null".to_string(), |s| format!("\"{s}\""));
                let receipt = format!(
                    r#"{{"query_id":"{}","rows":{},"bytes":{},"audit_head":{},"checkpoint":{}}}"#,
                    scope.query_id(),
                    totals.rows,
                    totals.bytes,
                    quoted(mark.as_ref().map(|m| m.head.as_str())),
                    quoted(mark.as_ref().map(|m| m.checkpoint.as_str())),
                );
                let _ = tx
                    .send(Ok(FlightData::new().with_app_metadata(receipt.into_bytes())))
                    .await;
            }
        }
        shutdown
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[tonic::async_trait]
impl<B: Backend> FlightSqlService for FlightSqlEndpoint<B> {
    type FlightService = Self;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("the handshake needs a Basic authorization header")
            })?;
        if !header.starts_with("Basic ") {
            return Err(Status::unauthenticated(
                "the handshake needs Basic credentials",
            ));
        }
        let (user, secret) = Self::decode_basic(header)?;
        let caller = self.backend.authenticate(&user, &secret)?;
        let token = random_hex(32);
        {
            let mut sessions = lock(&self.sessions);
            sessions.retain(|_, session| session.expires > Instant::now());
            sessions.insert(
                token.clone(),
                Session {
                    caller: caller.clone(),
                    expires: Instant::now() + SESSION_TTL,
                    settings: BTreeMap::new(),
                    last_report: BTreeMap::new(),
                },
            );
        }
        tracing::info!(user = %caller.user, role = %caller.role, "client logged in");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter([Ok(response)]));
        let mut resp = Response::new(stream);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("cannot encode the session token"))?;
        resp.metadata_mut().insert("authorization", value);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(request.metadata())?;
        let (handle, schema) = self
            .prepare_execution(&caller, request.metadata(), &query.query, None)
            .await?;
        Ok(Response::new(Self::statement_info(
            handle,
            &schema,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = self.caller(request.metadata())?;
        let (sql, params) = {
            let handles = lock(&self.handles);
            let id = std::str::from_utf8(&cmd.prepared_statement_handle).unwrap_or_default();
            match handles.get(id) {
                Some(Handle::Prepared {
                    owner, sql, params, ..
                }) if *owner == caller.user => (sql.clone(), params.clone()),
                _ => return Err(Status::not_found("unknown or closed prepared statement")),
            }
        };
        let (handle, schema) = self
            .prepare_execution(&caller, request.metadata(), &sql, params)
            .await?;
        Ok(Response::new(Self::statement_info(
            handle,
            &schema,
            request.into_inner(),
        )?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let caller = self.caller(request.metadata())?;
        match self.take_handle(&ticket.statement_handle, &caller)? {
            Handle::Execution {
                scope,
                started,
                sql,
                meta,
                ..
            } => Ok(Response::new(execute_stream(
                scope,
                started,
                sql,
                *meta,
                self.shutdown.clone(),
            ))),
            Handle::Prepared { .. } => Err(Status::invalid_argument(
                "a prepared statement handle is not a ticket",
            )),
        }
    }

    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoActionStream>,
        Status,
    > {
        let caller = self.caller(request.metadata())?;
        let action = request.into_inner();
        let answer = self
            .backend
            .action(&caller, &action.r#type, &action.body)
            .await?;
        let result = arrow_flight::Result {
            body: answer.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = self.caller(request.metadata())?;
        let mut meta = self.meta(request.metadata());
        meta.preparing = true;
        meta.setting = self.accepted_setting(&query.query).is_some();
        let scope = self.backend.scope(&caller, &meta, &query.query).await?;
        // A setting is applied when the prepared statement is executed.
        let planned = match self.accepted_setting(&query.query) {
            Some(_) => scope.session().read_empty().map_err(QueryError::from),
            None => Self::plan(scope.as_ref(), &query.query, None).await,
        };
        let df = match planned {
            Ok(df) => df,
            Err(e) => {
                scope.finish(&query.query, Err(&e));
                return Err(e.into());
            }
        };
        let mut parameters: Vec<(usize, Field)> = df
            .logical_plan()
            .get_parameter_fields()
            .map_err(|e| Status::invalid_argument(format!("cannot infer parameter types: {e}")))?
            .into_iter()
            .map(|(name, field)| {
                let position = name
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .unwrap_or(usize::MAX);
                let data_type = field.map_or(datafusion::arrow::datatypes::DataType::Null, |f| {
                    f.data_type().clone()
                });
                (position, Field::new(name, data_type, true))
            })
            .collect();
        parameters.sort_by_key(|(position, _)| *position);
        let parameter_schema =
            Schema::new(parameters.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
        let dataset_schema = df.schema().as_arrow().clone();
        let handle = self.insert_handle(Handle::Prepared {
            owner: caller.user.clone(),
            sql: query.query,
            params: None,
            created: Instant::now(),
        });
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes(&dataset_schema)?.into(),
            parameter_schema: schema_bytes(&parameter_schema)?.into(),
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.caller(request.metadata())?;
        let stream = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream)
                .try_collect()
                .await?;
        let values = match batches.iter().find(|b| b.num_rows() > 0) {
            Some(batch) => {
                if batch.num_rows() > 1 {
                    return Err(Status::invalid_argument(
                        "bind one row of parameters per execution",
                    ));
                }
                batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("cannot read parameters: {e}")))?
            }
            None => Vec::new(),
        };
        let id = std::str::from_utf8(&cmd.prepared_statement_handle)
            .unwrap_or_default()
            .to_string();
        let mut handles = lock(&self.handles);
        match handles.get_mut(&id) {
            Some(Handle::Prepared { owner, params, .. }) if *owner == caller.user => {
                *params = Some(values)
            }
            _ => return Err(Status::not_found("unknown or closed prepared statement")),
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(id.into_bytes().into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let caller = self.caller(request.metadata())?;
        self.take_handle(&query.prepared_statement_handle, &caller)
            .map(|_| ())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let command = query.as_any();
        self.command_info(request, command, &query.into_builder().schema())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let scope = self.catalog_session(request.metadata()).await?;
        let mut builder = query.into_builder();
        for name in scope.session().catalog_names() {
            builder.append(name);
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let command = query.as_any();
        self.command_info(request, command, &query.into_builder().schema())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let scope = self.catalog_session(request.metadata()).await?;
        let mut builder = query.into_builder();
        let session = scope.session();
        for catalog_name in session.catalog_names() {
            if let Some(catalog) = session.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let command = query.as_any();
        self.command_info(request, command, &query.into_builder().schema())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let scope = self.catalog_session(request.metadata()).await?;
        let mut builder = query.into_builder();
        for (catalog, schema, table, table_schema) in Self::tables_of(&*scope).await? {
            builder
                .append(catalog, schema, table, "TABLE", &table_schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let command = query.as_any();
        self.command_info(request, command, &query.into_builder().schema())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.caller(request.metadata())?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let command = query.as_any();
        self.command_info(
            request,
            command,
            &query.into_builder(&self.sql_info).schema(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.caller(request.metadata())?;
        Self::one_batch(query.into_builder(&self.sql_info).build())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::invalid_argument(format!(
            "unsupported ticket type {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// `work`, with a panic inside the query engine (a bug in a dependency on
/// some odd statement) turned into this statement's internal error: the
/// process and every other query go on.
async fn contain_panic<T, E: From<QueryError>>(
    work: impl std::future::Future<Output = Result<T, E>>,
    stage: &str,
) -> Result<T, E> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(
                stage,
                "the query engine panicked on a statement; it failed alone"
            );
            Err(QueryError::Internal(format!(
                "the query engine failed while {stage} this statement (an internal error)"
            ))
            .into())
        }
    }
}

/// `df` when no `$n` placeholder is left without a value: otherwise the
/// statement is refused naming them, before anything runs.
fn every_parameter_bound(df: DataFrame) -> Result<DataFrame, QueryError> {
    let unbound = df
        .logical_plan()
        .get_parameter_names()
        .map_err(|e| QueryError::Invalid(format!("cannot read the statement's parameters: {e}")))?;
    if unbound.is_empty() {
        return Ok(df);
    }
    let mut names: Vec<String> = unbound.into_iter().collect();
    names.sort_by_key(|n| (n.len(), n.clone()));
    Err(QueryError::Invalid(format!(
        "the statement has parameters without values ({}): bind one value per `?` or `$n`",
        names.join(", ")
    )))
}

/// A Flight SQL server running in the background.
pub struct RunningServer {
    /// The address it listens on (useful with port 0).
    pub addr: std::net::SocketAddr,
    /// Its running statements.
    pub statements: Shutdown,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Binds `listen` and serves `endpoint` on it, over TLS when `tls` is given.
    pub async fn start<B: Backend>(
        endpoint: FlightSqlEndpoint<B>,
        listen: &str,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let statements = endpoint.shutdown();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls)?;
            }
            server
                .add_service(endpoint.into_service())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            statements,
            shutdown,
            task,
        })
    }

    /// Stops serving: no new connection is accepted, running statements
    /// are stopped (each records its end) within `deadline`, then the
    /// server finishes.
    pub async fn stop(mut self) -> Result<(), String> {
        let _ = self.shutdown.send(());
        self.statements.cancel_all(Duration::from_secs(10)).await;
        // Connections a client keeps open must not hold the process: the
        // statements have recorded their ends by now.
        match tokio::time::timeout(Duration::from_secs(5), &mut self.task).await {
            Ok(joined) => joined
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string()),
            Err(_) => {
                tracing::warn!("connections still open 5 s after shutdown; closing them");
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        (&mut self.task)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoBackend;

    #[tonic::async_trait]
    impl Backend for NoBackend {
        fn authenticate(&self, _user: &str, _secret: &str) -> Result<Caller, QueryError> {
            Err(QueryError::Unauthenticated("no".into()))
        }
        async fn scope(
            &self,
            _: &Caller,
            _: &RequestMeta,
            _: &str,
        ) -> Result<Arc<dyn QueryScope>, QueryError> {
            Err(QueryError::Internal("no".into()))
        }
        fn server_name(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn basic_credentials_decode_with_or_without_padding() {
        // "ab:c" encodes to "YWI6Yw==": both forms are accepted.
        for header in ["Basic YWI6Yw==", "Basic YWI6Yw"] {
            let (user, secret) = FlightSqlEndpoint::<NoBackend>::decode_basic(header).unwrap();
            assert_eq!((user.as_str(), secret.as_str()), ("ab", "c"));
        }
        let err = FlightSqlEndpoint::<NoBackend>::decode_basic("Basic !!!").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = FlightSqlEndpoint::<NoBackend>::decode_basic("Basic YWJj").unwrap_err();
        assert!(err.message().contains("user:password"));
    }

    #[test]
    fn trace_ids_round_trip_through_traceparent_and_junk_is_dropped() {
        let trace = random_hex(16);
        let header = traceparent(&trace);
        assert_eq!(trace_id_of(&header), Some(trace.clone()));
        assert_ne!(traceparent(&trace), header, "a new span id each call");
        for junk in [
            "",
            "00-abc-def-01",
            "00-zz-0000000000000000-01",
            "not a traceparent",
        ] {
            assert_eq!(trace_id_of(junk), None, "{junk}");
        }
    }
}
