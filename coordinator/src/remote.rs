//! Nodes as DataFusion tables: a [`NodeClient`] talks Flight SQL to one
//! node, and a [`RemoteTable`] is one of its published tables. Scans send
//! the query's projection, filters and limit to the node as SQL; joins
//! across nodes run here, on `pid`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use async_trait::async_trait;
use carrow_sql::QueryError;
use carrow_sql::flight::{
    CHECKPOINT_HEADER, LINKAGE_HEADER, OPT_OUT_VERSION_HEADER, PROJECT_HEADER, QUERY_ID_HEADER,
    RECEIPT_HEADER, TRACEPARENT_HEADER,
};
use datafusion::arrow::array::{BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::convert::try_schema_from_ipc_buffer;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::sql::unparser::Unparser;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::config::NodeEndpoint;

/// Which query a scan belongs to: set per query in the session config.
#[derive(Debug, Clone)]
pub struct FragmentContext {
    pub project: String,
    pub query_id: String,
    /// The query's trace id, sent to nodes as W3C `traceparent`.
    pub trace_id: Option<String>,
    /// The coordinator's latest signed audit checkpoint, which each node
    /// records beside the fragment.
    pub checkpoint: Option<String>,
    /// `SET carrow.allow_partial = true`: leave out unreachable nodes.
    pub allow_partial: bool,
    /// What each node contributed.
    pub coverage: Arc<Coverage>,
    /// The project's linkage index: every `pid` a node sends is mapped to
    /// its person key.
    pub linkage: Option<Arc<crate::linkage::LinkageIndex>>,
}

impl FragmentContext {
    /// The headers every request of this query's fragments carries.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (PROJECT_HEADER, self.project.clone()),
            (QUERY_ID_HEADER, self.query_id.clone()),
            // The node's receipt anchors its audit log in the coordinator's.
            (RECEIPT_HEADER, "1".to_string()),
        ];
        // The node refuses a fragment planned under another withheld list
        // than it holds: an opted-out person is never released.
        if let Some(version) = self.linkage.as_ref().and_then(|l| l.opt_out_version()) {
            headers.push((OPT_OUT_VERSION_HEADER, version.to_string()));
        }
        if let Some(checkpoint) = &self.checkpoint {
            headers.push((CHECKPOINT_HEADER, checkpoint.clone()));
        }
        if let Some(trace) = &self.trace_id {
            headers.push((TRACEPARENT_HEADER, carrow_sql::flight::traceparent(trace)));
        }
        headers
    }

    /// The context of the coordinator's own request to a node (`purpose`:
    /// catalog, linkage), which is no user's query.
    fn internal(project: &str, purpose: &str) -> Self {
        Self {
            project: project.to_string(),
            query_id: purpose.to_string(),
            trace_id: None,
            checkpoint: None,
            allow_partial: false,
            coverage: Arc::new(Coverage::default()),
            linkage: None,
        }
    }
}

/// One node's part in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCoverage {
    /// ok, unreachable, timed out, refused or no such table.
    pub status: String,
    /// The version of the opt-out list the node answered under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_out_list: Option<String>,
    /// Rows the node sent for this query. The manifest travels in the
    /// result's schema, before any row, so it is logged, not sent.
    #[serde(skip)]
    pub rows: u64,
    /// The oldest freshness among the node's tables this query read.
    pub freshness: Option<String>,
    /// Why the node is missing, if it is.
    pub error: Option<String>,
}

/// One fragment a query sent to a node, for the coordinator's audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FragmentRecord {
    pub node: String,
    pub sql: String,
    /// ok, or why the fragment did not complete.
    pub status: String,
    pub rows: u64,
    /// The node's query id and its audit log head after recording the
    /// fragment, from the node's receipt.
    pub node_query_id: Option<String>,
    pub node_audit_head: Option<String>,
    /// The node's signed audit checkpoint after recording the fragment:
    /// this log pins the node's (`carrow audit reconcile`).
    pub node_checkpoint: Option<String>,
    /// From sending the fragment to its last batch or failure.
    pub elapsed_ms: u64,
}

/// The coverage manifest of one query: every node it needed, and every
/// fragment it sent.
#[derive(Debug, Default)]
pub struct Coverage {
    nodes: std::sync::Mutex<std::collections::BTreeMap<String, NodeCoverage>>,
    fragments: std::sync::Mutex<Vec<FragmentRecord>>,
}

impl Coverage {
    fn update(&self, node: &str, f: impl FnOnce(&mut NodeCoverage)) {
        let mut map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(node.to_string()).or_default());
    }

    fn record(&self, fragment: FragmentRecord) {
        self.fragments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fragment);
    }

    /// Rows each node sent so far.
    pub fn rows(&self) -> Vec<(String, u64)> {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(node, c)| (node.clone(), c.rows)).collect()
    }

    /// The fragments sent so far.
    pub fn fragments(&self) -> Vec<FragmentRecord> {
        self.fragments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Per node: status, rows, freshness and error, for the audit log.
    pub fn nodes(&self) -> serde_json::Value {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::Value::Object(
            map.iter()
                .map(|(node, c)| {
                    (
                        node.clone(),
                        serde_json::json!({"status": c.status, "rows": c.rows, "freshness": c.freshness, "error": c.error}),
                    )
                })
                .collect(),
        )
    }

    /// The manifest as JSON: `{"node": {"status", "freshness", "error"}}`.
    pub fn to_json(&self) -> String {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*map).unwrap_or_default()
    }
}

/// The coverage status word of a node's failure, by its kind.
fn status_of(error: &QueryError) -> &'static str {
    match error {
        QueryError::NotFound(_) => "no such table",
        QueryError::Refused { .. } | QueryError::Unauthenticated(_) => "refused",
        QueryError::TimedOut(_) => "timed out",
        QueryError::ResourceExhausted(_) => "resources exhausted",
        _ => "unreachable",
    }
}

/// The error a failed call to node `node` means, by the status the node
/// (or the transport) gave; `doing` says what the call was.
fn remote_error(e: FlightError, node: &str, doing: &str) -> QueryError {
    let context = format!("node {node} {doing}");
    match e {
        FlightError::Tonic(status) => QueryError::from_status(&status, &context),
        other => QueryError::Unavailable(format!("{context}: {other}")),
    }
}

/// A Flight SQL connection recipe for one node.
pub struct NodeClient {
    pub name: String,
    url: String,
    user: String,
    tls: Option<carrow_sql::tls::ClientTls>,
    token: String,
    connect_timeout: Duration,
    query_timeout: Duration,
    /// An open connection and the node's session token, shared by queries
    /// (HTTP/2 multiplexes them); dropped when a call on it fails.
    session: std::sync::Mutex<Option<(Channel, String)>>,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClient")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

impl NodeClient {
    /// A client for `endpoint`, logging in with `token`.
    pub fn new(
        endpoint: &NodeEndpoint,
        token: String,
        connect_timeout: Duration,
        query_timeout: Duration,
    ) -> Self {
        Self {
            name: endpoint.name.clone(),
            url: endpoint.url.clone(),
            user: endpoint.user.clone(),
            tls: endpoint.tls.clone(),
            token,
            connect_timeout,
            query_timeout,
            session: std::sync::Mutex::new(None),
        }
    }

    /// A client for one query (project, query id and receipt headers),
    /// over the shared connection, logging in first if there is none.
    pub async fn connect(
        &self,
        context: &FragmentContext,
    ) -> Result<FlightSqlServiceClient<Channel>, QueryError> {
        let cached = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut client = match cached {
            Some((channel, token)) => {
                let mut client = FlightSqlServiceClient::new(channel);
                client.set_token(token);
                client
            }
            None => self.login().await?,
        };
        for (name, value) in context.headers() {
            client.set_header(name, value);
        }
        Ok(client)
    }

    /// Opens a connection, logs in and keeps both for later queries.
    async fn login(&self) -> Result<FlightSqlServiceClient<Channel>, QueryError> {
        let unreachable = |e: String| {
            QueryError::Unavailable(format!(
                "node {} at {} is unreachable: {e}",
                self.name, self.url
            ))
        };
        let mut endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|e| unreachable(e.to_string()))?;
        if let Some(tls) = &self.tls {
            let config = tls.load().map_err(|e| unreachable(e.to_string()))?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .timeout(self.query_timeout)
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut client = FlightSqlServiceClient::new(channel.clone());
        client
            .handshake(&self.user, &self.token)
            .await
            .map_err(|e| remote_error(e, &self.name, "refused the coordinator's login"))?;
        if let Some(token) = client.token() {
            *self.session.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((channel, token.clone()));
        }
        Ok(client)
    }

    /// After a failed call: the shared connection may be stale (the node
    /// restarted or went away), so drop it and log in afresh into `client`.
    async fn reconnect(
        &self,
        client: &mut FlightSqlServiceClient<Channel>,
        context: &FragmentContext,
    ) -> Result<(), QueryError> {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *client = self.connect(context).await?;
        Ok(())
    }

    /// The node's linkage token table for `project` (coordinator only).
    pub async fn linkage_tokens(
        &self,
        project: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>, QueryError> {
        self.linkage_query(project, "SELECT * FROM carrow_linkage_tokens")
            .await
    }

    /// The node's opt-out register for `project`: the token rows of the
    /// people it records as opted out (coordinator only).
    pub async fn opt_out_register(
        &self,
        project: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>, QueryError> {
        self.linkage_query(project, "SELECT * FROM carrow_opt_out_tokens")
            .await
    }

    /// Sends the node its list of `project`'s pids to withhold for
    /// opt-outs recorded elsewhere; returns how many it holds.
    pub async fn send_withheld(
        &self,
        project: &str,
        version: &str,
        pids: &[carrow_linkage::Token],
    ) -> Result<u64, QueryError> {
        let context = FragmentContext::internal(project, "opt-outs");
        let mut client = self.connect(&context).await?;
        let body = serde_json::json!({
            "project": project,
            "version": version,
            "pids": pids.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        let doing = "did not take its opt-out list";
        let results: Vec<_> = client
            .do_action(arrow_flight::Action {
                r#type: "carrow.withhold".into(),
                body: body.to_string().into_bytes().into(),
            })
            .await
            .map_err(|e| remote_error(e, &self.name, doing))?
            .try_collect()
            .await
            .map_err(|e| remote_error(FlightError::Tonic(Box::new(e)), &self.name, doing))?;
        let answer: serde_json::Value = results
            .first()
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or_default();
        Ok(answer["withheld"].as_u64().unwrap_or(0))
    }

    /// The version of the node's token table for `project`: it changes
    /// exactly when the table does.
    pub async fn linkage_version(&self, project: &str) -> Result<String, QueryError> {
        let batches = self
            .linkage_query(project, "SELECT version FROM carrow_linkage_tokens_version")
            .await?;
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .map(|a| a.value(0).to_string())
            })
            .ok_or_else(|| {
                QueryError::Unavailable(format!("node {} sent no linkage token version", self.name))
            })
    }

    /// Runs `sql` in the node's linkage session for `project`.
    async fn linkage_query(
        &self,
        project: &str,
        sql: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>, QueryError> {
        let context = FragmentContext::internal(project, "linkage");
        let doing = "did not send its linkage tokens";
        let failed =
            |e: String| QueryError::Unavailable(format!("node {} {doing}: {e}", self.name));
        let mut client = self.connect(&context).await?;
        client.set_header(LINKAGE_HEADER, "1");
        let sql = sql.to_string();
        let info = match client.execute(sql.clone(), None).await {
            Ok(info) => info,
            Err(e) => {
                let e = remote_error(e, &self.name, doing);
                if !e.is_transport_failure() {
                    return Err(e);
                }
                self.reconnect(&mut client, &context).await?;
                client.set_header(LINKAGE_HEADER, "1");
                client
                    .execute(sql, None)
                    .await
                    .map_err(|e| remote_error(e, &self.name, doing))?
            }
        };
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or_else(|| failed("no ticket".into()))?;
            let stream = raw_do_get(&mut client, ticket, &context)
                .await
                .map_err(|e| failed(e.to_string()))?
                .filter(|item| {
                    futures::future::ready(!matches!(item, Ok(d) if d.data_header.is_empty()))
                })
                .map(|item| item.map_err(FlightError::from));
            let decoded: Vec<_> = FlightRecordBatchStream::new_from_flight_data(stream)
                .try_collect()
                .await
                .map_err(|e| failed(e.to_string()))?;
            batches.extend(decoded);
        }
        Ok(batches)
    }

    /// The node's published tables with their schemas.
    pub async fn tables(&self, project: &str) -> Result<Vec<(String, SchemaRef)>, QueryError> {
        let context = FragmentContext::internal(project, "catalog");
        let mut client = self.connect(&context).await?;
        let failed = |e: String| {
            QueryError::Unavailable(format!("node {} did not list its tables: {e}", self.name))
        };
        let command = CommandGetTables {
            include_schema: true,
            ..Default::default()
        };
        let info = match client.get_tables(command.clone()).await {
            Ok(info) => info,
            Err(_) => {
                self.reconnect(&mut client, &context).await?;
                client
                    .get_tables(command)
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
        };
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or_else(|| failed("no ticket".into()))?;
            let batches: Vec<_> = client
                .do_get(ticket)
                .await
                .map_err(|e| failed(e.to_string()))?
                .try_collect()
                .await
                .map_err(|e| failed(e.to_string()))?;
            for batch in batches {
                let names = batch
                    .column(2)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| failed("bad table_name".into()))?;
                let schemas = batch
                    .column(4)
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .ok_or_else(|| failed("bad table_schema".into()))?;
                for i in 0..batch.num_rows() {
                    let schema = try_schema_from_ipc_buffer(schemas.value(i))
                        .map_err(|e| failed(e.to_string()))?;
                    out.push((names.value(i).to_string(), Arc::new(schema)));
                }
            }
        }
        Ok(out)
    }

    /// Runs `sql` on a connected `client` and streams its batches,
    /// counting them in the query's coverage.
    pub async fn stream(
        self: Arc<Self>,
        mut client: FlightSqlServiceClient<Channel>,
        context: FragmentContext,
        sql: String,
        schema: SchemaRef,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        let name = self.name.clone();
        let failed = move |e: String| {
            QueryError::Unavailable(format!("node {name} failed the fragment: {e}"))
        };
        tracing::debug!(node = %self.name, query_id = %context.query_id, %sql, "fragment");
        let started = std::time::Instant::now();
        let elapsed_ms = move || started.elapsed().as_millis() as u64;
        let refused = |e: String| FragmentRecord {
            node: self.name.clone(),
            sql: sql.clone(),
            status: e,
            rows: 0,
            node_query_id: None,
            node_audit_head: None,
            node_checkpoint: None,
            elapsed_ms: elapsed_ms(),
        };
        let doing = "failed the fragment";
        let info = match client.execute(sql.clone(), None).await {
            Ok(info) => info,
            Err(e) => {
                // A stale connection is worth one more try; a refusal or a
                // bad statement is final.
                let first = remote_error(e, &self.name, doing);
                let retried = if first.is_transport_failure() {
                    match self.reconnect(&mut client, &context).await {
                        Ok(()) => client
                            .execute(sql.clone(), None)
                            .await
                            .map_err(|e| remote_error(e, &self.name, doing)),
                        Err(e) => Err(e),
                    }
                } else {
                    Err(first)
                };
                match retried {
                    Ok(info) => info,
                    Err(e) => {
                        context.coverage.record(refused(e.to_string()));
                        return Err(e);
                    }
                }
            }
        };
        let ticket = info
            .endpoint
            .into_iter()
            .next()
            .and_then(|e| e.ticket)
            .ok_or_else(|| failed("no ticket".into()))?;
        if let Some(version) = context.linkage.as_ref().and_then(|l| l.opt_out_version()) {
            context
                .coverage
                .update(&self.name, |c| c.opt_out_list = Some(version.to_string()));
        }
        // The node's receipt (its query id and audit head) comes in an
        // app_metadata-only message after the last batch: taken aside here,
        // as the batch decoder accepts no message without a header.
        let receipt: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let raw = match raw_do_get(&mut client, ticket, &context).await {
            Ok(raw) => raw,
            Err(status) => {
                let e = QueryError::from_status(&status, &format!("node {} {doing}", self.name));
                context.coverage.record(refused(e.to_string()));
                return Err(e);
            }
        };
        let kept = receipt.clone();
        let data = raw.filter_map(move |item| {
            let out = match item {
                Ok(data) if data.data_header.is_empty() && !data.app_metadata.is_empty() => {
                    *kept.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(data.app_metadata.to_vec());
                    None
                }
                other => Some(other.map_err(FlightError::from)),
            };
            futures::future::ready(out)
        });
        let decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let fragment = FragmentRecord {
            node: self.name.clone(),
            sql,
            status: "ok".into(),
            rows: 0,
            node_query_id: None,
            node_audit_head: None,
            node_checkpoint: None,
            elapsed_ms: 0,
        };
        let name = self.name.clone();
        let coverage = context.coverage.clone();
        let linkage = context.linkage.clone();
        let planned = schema.clone();
        let pending = PendingFragment {
            record: Some(fragment),
            coverage: context.coverage.clone(),
            elapsed_ms: Box::new(elapsed_ms),
        };
        let batches =
            futures::stream::unfold((decoded, pending), move |(mut decoded, mut pending)| {
                let (name, coverage, receipt) = (name.clone(), coverage.clone(), receipt.clone());
                let (linkage, planned) = (linkage.clone(), planned.clone());
                async move {
                    let open = pending.record.as_mut()?;
                    match decoded.next().await {
                        Some(Ok(batch)) => {
                            open.rows += batch.num_rows() as u64;
                            coverage.update(&name, |c| c.rows += batch.num_rows() as u64);
                            let batch = match &linkage {
                                Some(index) => index.map_batch(&name, batch),
                                None => Ok(batch),
                            }
                            .and_then(|b| conform(b, &planned, &name));
                            Some((batch, (decoded, pending)))
                        }
                        Some(Err(e)) => {
                            let mut done = pending.record.take()?;
                            let error = remote_error(e, &name, "failed while streaming");
                            done.status = format!("failed: {error}");
                            done.elapsed_ms = elapsed_ms();
                            coverage.record(done);
                            Some((
                                Err(DataFusionError::External(Box::new(error))),
                                (decoded, pending),
                            ))
                        }
                        None => {
                            let mut done = pending.record.take()?;
                            done.elapsed_ms = elapsed_ms();
                            if let Some(bytes) =
                                receipt.lock().unwrap_or_else(|p| p.into_inner()).take()
                            {
                                read_receipt(&mut done, &bytes);
                            }
                            coverage.record(done);
                            None
                        }
                    }
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// A fragment being streamed: recorded in the query's coverage when it
/// ends, fails, or is dropped unfinished (the query stopped reading it: a
/// limit was met, another node failed, the client went away), so the
/// coordinator's log accounts for every fragment a node may have served.
struct PendingFragment {
    record: Option<FragmentRecord>,
    coverage: Arc<Coverage>,
    elapsed_ms: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Drop for PendingFragment {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.status = "stopped before its end: the query stopped reading it".into();
            record.elapsed_ms = (self.elapsed_ms)();
            self.coverage.record(record);
        }
    }
}

/// `batch` from `node` in the schema the coordinator planned: the node plans
/// the same SQL with the same engine, but may settle a type differently
/// (a literal's width, a function's return type); such columns are cast,
/// and a column that cannot be is an error naming it, never a mis-typed
/// batch that fails later without saying where.
fn conform(batch: RecordBatch, planned: &SchemaRef, node: &str) -> Result<RecordBatch> {
    if batch.schema().fields() == planned.fields() {
        return Ok(batch);
    }
    if batch.num_columns() != planned.fields().len() {
        return Err(DataFusionError::Execution(format!(
            "node {node} returned {} columns where {} were planned",
            batch.num_columns(),
            planned.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(planned.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            tracing::debug!(node, column = %field.name(), from = %column.data_type(),
                to = %field.data_type(), "casting a node's column to its planned type");
            // Not the lenient cast: a value that does not fit is an error,
            // never a silent null.
            let options = datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            datafusion::arrow::compute::cast_with_options(column, field.data_type(), &options)
                .map_err(|_| {
                    DataFusionError::Execution(format!(
                        "node {node} returned column {} as {} where {} was planned",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(planned.clone(), columns).map_err(|_| {
        DataFusionError::Execution(format!(
            "node {node} returned a batch that does not fit the planned schema (nulls in a non-null column)"
        ))
    })
}

/// `DoGet` of `ticket` with the client's session token and the query's
/// headers, returning the node's messages undecoded.
async fn raw_do_get(
    client: &mut FlightSqlServiceClient<Channel>,
    ticket: arrow_flight::Ticket,
    context: &FragmentContext,
) -> Result<tonic::Streaming<arrow_flight::FlightData>, tonic::Status> {
    let mut request = tonic::Request::new(ticket);
    let headers = [(
        "authorization",
        client.token().map(|t| format!("Bearer {t}")),
    )]
    .into_iter()
    .chain(context.headers().into_iter().map(|(k, v)| (k, Some(v))));
    for (key, value) in headers {
        if let Some(value) = value
            && let Ok(value) = value.parse()
        {
            request.metadata_mut().insert(key, value);
        }
    }
    Ok(client.inner_mut().do_get(request).await?.into_inner())
}

/// Fills `fragment` from a node's receipt: `{"query_id", "rows", "audit_head", "checkpoint"}`.
fn read_receipt(fragment: &mut FragmentRecord, metadata: &[u8]) {
    let Ok(receipt) = serde_json::from_slice::<serde_json::Value>(metadata) else {
        return;
    };
    fragment.node_query_id = receipt["query_id"].as_str().map(str::to_string);
    fragment.node_audit_head = receipt["audit_head"].as_str().map(str::to_string);
    fragment.node_checkpoint = receipt["checkpoint"].as_str().map(str::to_string);
}

/// What a remote table reads at its node: a published table, or a query
/// over the node's tables that the coordinator pushed down whole.
#[derive(Debug, Clone)]
pub enum RemoteSource {
    Table(String),
    Query(String),
}

/// One published table of one node, or a pushed-down query at one node.
#[derive(Debug)]
pub struct RemoteTable {
    node: Arc<NodeClient>,
    source: RemoteSource,
    schema: SchemaRef,
    freshness: Option<String>,
    /// The node declared the table personal (rows are about persons).
    personal: bool,
}

impl RemoteTable {
    /// The table `table` of `node`, with the schema the node announced.
    pub fn new(node: Arc<NodeClient>, table: String, schema: SchemaRef) -> Self {
        // Schema-level metadata (freshness) stays out of the plan's schema.
        let freshness = schema.metadata().get("carrow.freshness").cloned();
        // A table that does not say is treated as personal.
        let personal = schema
            .metadata()
            .get("carrow.personal")
            .is_none_or(|p| p != "false");
        let schema = Arc::new(Schema::new(schema.fields().clone()));
        Self {
            node,
            source: RemoteSource::Table(table),
            schema,
            freshness,
            personal,
        }
    }

    /// A query run whole at `node`, returning `schema`.
    pub fn query(
        node: Arc<NodeClient>,
        sql: String,
        schema: SchemaRef,
        freshness: Option<String>,
    ) -> Self {
        Self {
            node,
            source: RemoteSource::Query(sql),
            schema,
            freshness,
            personal: true,
        }
    }

    /// Whether the node declared the table personal.
    pub fn personal(&self) -> bool {
        self.personal
    }

    /// The node this table reads.
    pub fn node(&self) -> &Arc<NodeClient> {
        &self.node
    }

    /// What it reads there.
    pub fn source(&self) -> &RemoteSource {
        &self.source
    }

    /// The freshness the node reported for it.
    pub fn freshness(&self) -> Option<&str> {
        self.freshness.as_deref()
    }

    fn sql_relation(&self) -> String {
        match &self.source {
            RemoteSource::Table(table) => quote(table),
            RemoteSource::Query(sql) => format!("({sql}) AS \"q\""),
        }
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn filter_sql(filter: &Expr) -> Option<String> {
    within_node_limits(|unparser| unparser.expr_to_sql(filter).map(|e| e.to_string()))
}

/// SQL for a node, unparsed as written if that is within the statement
/// limits a node checks (`carrow_sql::statement::check_limits`), else
/// without redundant brackets (a chain of 500 `AND`s is bracketed 500
/// deep as written), else `None`: the work stays at the coordinator.
pub(crate) fn within_node_limits(
    unparse: impl Fn(&Unparser) -> datafusion::common::Result<String>,
) -> Option<String> {
    [false, true].into_iter().find_map(|pretty| {
        let sql = unparse(&Unparser::default().with_pretty(pretty)).ok()?;
        carrow_sql::statement::check_limits(&sql).ok().map(|_| sql)
    })
}

#[async_trait]
impl TableProvider for RemoteTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The node runs DataFusion too: a filter it receives is applied exactly.
        Ok(filters
            .iter()
            .map(|f| {
                if filter_sql(f).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let context = state
            .config()
            .get_extension::<FragmentContext>()
            .map(|c| (*c).clone())
            .ok_or_else(|| {
                DataFusionError::Internal("a query without a fragment context".into())
            })?;
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let wanted = projection.unwrap_or(&all);
        // A scan that needs no column (count(*)) still fetches one, then
        // projects it away here.
        let fetched: Vec<usize> = if wanted.is_empty() {
            vec![0]
        } else {
            wanted.clone()
        };
        let fetched_schema = Arc::new(self.schema.project(&fetched)?);
        let columns: Vec<String> = fetched_schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect();
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), self.sql_relation());
        let conditions: Vec<String> = filters
            .iter()
            .filter_map(filter_sql)
            .map(|f| format!("({f})"))
            .collect();
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let empty = Vec::new();
        let exec_projection = wanted.is_empty().then_some(&empty);
        // Connect now, while planning: the coverage manifest then knows every
        // node's status before the first batch is sent.
        let node = &self.node.name;
        let client = match self.node.connect(&context).await {
            Ok(client) => {
                let freshness = self.freshness.clone();
                context.coverage.update(node, |c| {
                    c.status = "ok".into();
                    // The stalest table read says how current the node's part is.
                    c.freshness = match (c.freshness.take(), freshness) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                });
                client
            }
            Err(e) if context.allow_partial => {
                tracing::warn!(node = %node, query_id = %context.query_id, error = %e, "node left out of a partial result");
                context.coverage.update(node, |c| {
                    c.status = status_of(&e).into();
                    c.error = Some(e.to_string());
                });
                let output = match exec_projection {
                    Some(columns) => Arc::new(fetched_schema.project(columns)?),
                    None => fetched_schema,
                };
                return Ok(Arc::new(EmptyExec::new(output)));
            }
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        };
        let fragment = Arc::new(Fragment {
            node: self.node.clone(),
            client,
            context,
            sql,
            schema: fetched_schema.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            fetched_schema,
            vec![fragment],
            exec_projection,
            vec![],
            false,
            None,
        )?))
    }
}

/// One fragment: SQL for one node, run when the plan executes.
struct Fragment {
    node: Arc<NodeClient>,
    client: FlightSqlServiceClient<Channel>,
    context: FragmentContext,
    sql: String,
    schema: SchemaRef,
}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fragment(node={}, sql={})", self.node.name, self.sql)
    }
}

impl PartitionStream for Fragment {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (node, client, context) =
            (self.node.clone(), self.client.clone(), self.context.clone());
        let (sql, schema) = (self.sql.clone(), self.schema.clone());
        if context.allow_partial {
            let stream =
                futures::stream::once(whole_or_nothing(node, client, context, sql, schema))
                    .map(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .flatten();
            return Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream));
        }
        let stream = futures::stream::once(async move {
            node.stream(client, context, sql, schema)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// A partial result's fragment: the node's whole answer, or none of it when
/// the node fails on the way (a node's rows are never half counted), in
/// which case the coverage manifest says so.
async fn whole_or_nothing(
    node: Arc<NodeClient>,
    client: FlightSqlServiceClient<Channel>,
    context: FragmentContext,
    sql: String,
    schema: SchemaRef,
) -> Vec<datafusion::arrow::array::RecordBatch> {
    let coverage = context.coverage.clone();
    let query_id = context.query_id.clone();
    let fetched = async {
        node.clone()
            .stream(client, context, sql, schema)
            .await?
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))
    };
    match fetched.await {
        Ok(batches) => batches,
        Err(e) => {
            let mut lost = 0;
            coverage.update(&node.name, |c| {
                lost = std::mem::take(&mut c.rows);
                c.status = status_of(&e).into();
                c.error = Some(match lost {
                    0 => e.to_string(),
                    n => format!("{e} (after {n} rows, all left out)"),
                });
            });
            tracing::warn!(node = %node.name, %query_id, rows_left_out = lost, error = %e, "node left out of a partial result during the query");
            Vec::new()
        }
    }
}
