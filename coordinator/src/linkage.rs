//! The linkage stage: per project, the coordinator fetches every node's
//! linkage token table, links records (deterministic rules, then
//! Fellegi-Sunter scoring) and maps each `pid` to a person key, so a
//! cross-organisation join links the same person whatever identifiers each
//! side held. The index is rebuilt only when a node's tokens change.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use carrow_linkage::fields::{Field, FieldTokens};
use carrow_linkage::matching::{LinkOptions, LinkRecord, LinkReport, link};
use carrow_linkage::{TOKEN_LEN, Token};
use carrow_sql::QueryError;
use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, ListArray, RecordBatch,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};

use crate::config::CoordinatorConfig;
use crate::remote::NodeClient;

/// Builds the index of `project` for the nodes of `config`, outside a
/// running coordinator (for `carrow link report`).
pub async fn build_for(
    config: &CoordinatorConfig,
    project: &str,
) -> Result<Arc<LinkageIndex>, QueryError> {
    let mut nodes = Vec::new();
    for endpoint in &config.nodes {
        let token = std::fs::read_to_string(&endpoint.token_file).map_err(|e| {
            QueryError::Invalid(format!(
                "cannot read node token file {}: {e}",
                endpoint.token_file.display()
            ))
        })?;
        nodes.push(Arc::new(NodeClient::new(
            endpoint,
            token.trim().to_string(),
            std::time::Duration::from_millis(config.connect_timeout_ms),
            std::time::Duration::from_millis(config.query_timeout_ms),
        )));
    }
    build(&nodes, project, None, config.link_group_warning_size).await
}

/// One project's person keys.
#[derive(Debug)]
pub struct LinkageIndex {
    /// (node, pid) to person key, for every pid whose key differs from it.
    /// Keyed by node too: one pid at two nodes can be two people (a record
    /// carrying a relative's NHS number has the relative's pid).
    keys: HashMap<(u32, Token), Token>,
    /// Each node's position in the index.
    sources: HashMap<String, u32>,
    /// What linkage did, per rule, with the estimated weights.
    pub report: LinkReport,
    /// Nodes whose tokens were missing (unreachable): their records link
    /// on pid only until the next rebuild.
    pub missing_nodes: Vec<String>,
    /// Nodes holding records of one person under different pids (the
    /// index merges them): work over their pids must see mapped pids, so
    /// it runs at the coordinator, not at the node.
    pub nodes_with_merged_records: BTreeSet<String>,
    fingerprint: u64,
}

impl LinkageIndex {
    /// The person key of `pid` as node `source` sends it.
    pub fn key(&self, source: u32, pid: &Token) -> Token {
        self.keys.get(&(source, *pid)).copied().unwrap_or(*pid)
    }

    /// `batch` from `node` with every pid column (`FixedSizeBinary(16)`)
    /// mapped to person keys.
    pub fn map_batch(&self, node: &str, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(&source) = self.sources.get(node) else {
            return Ok(batch);
        };
        if self.keys.is_empty() {
            return Ok(batch);
        }
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|column| match column.data_type() {
                DataType::FixedSizeBinary(n) if *n as usize == TOKEN_LEN => {
                    self.map_column(source, column)
                }
                _ => Ok(column.clone()),
            })
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    fn map_column(&self, source: u32, column: &ArrayRef) -> Result<ArrayRef> {
        let pids = column
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .expect("FixedSizeBinary");
        let mut out = FixedSizeBinaryBuilder::with_capacity(pids.len(), TOKEN_LEN as i32);
        for i in 0..pids.len() {
            if pids.is_null(i) {
                out.append_null();
            } else {
                let mut pid = [0u8; TOKEN_LEN];
                pid.copy_from_slice(pids.value(i));
                out.append_value(self.key(source, &pid))?;
            }
        }
        Ok(std::sync::Arc::new(out.finish()))
    }
}

/// Builds the index of `project` from `nodes`, or keeps `previous` when no
/// node's tokens changed.
pub async fn build(
    nodes: &[Arc<NodeClient>],
    project: &str,
    previous: Option<Arc<LinkageIndex>>,
    warn_group_size: usize,
) -> Result<Arc<LinkageIndex>, QueryError> {
    let started = std::time::Instant::now();
    // Nodes name their token table's version: when no version changed, the
    // index stands and no table crosses the wire.
    let versions = token_versions(nodes, project).await;
    if let (Some(previous), Some(versions)) = (&previous, versions)
        && previous.fingerprint == versions
    {
        tracing::debug!(%project, "linkage token versions unchanged; index kept");
        return Ok(previous.clone());
    }
    let mut records = Vec::new();
    let mut missing_nodes = Vec::new();
    for (source, node) in nodes.iter().enumerate() {
        match node.linkage_tokens(project).await {
            Ok(batches) => {
                for batch in &batches {
                    read_records(batch, source as u32, &mut records).map_err(|e| {
                        QueryError::Internal(format!("node {}: linkage tokens: {e}", node.name))
                    })?;
                }
            }
            Err(e) => {
                tracing::warn!(node = %node.name, %project, error = %e, "linkage tokens unavailable; the node's records link on pid only");
                missing_nodes.push(node.name.clone());
            }
        }
    }
    // Fingerprinted by the versions when every node gave one and sent its
    // tokens (else by the tokens themselves, so a node that comes back or
    // an older node without versions still gets its records linked).
    let fingerprint = match versions {
        Some(versions) if missing_nodes.is_empty() => versions,
        _ => content_fingerprint(nodes, &missing_nodes, &records),
    };
    if let Some(previous) = previous
        && previous.fingerprint == fingerprint
    {
        tracing::debug!(%project, "linkage tokens unchanged; index kept");
        return Ok(previous);
    }
    tracing::info!(%project, records = records.len(), "linking records across nodes");
    let linkage = link(&records, &LinkOptions::default(), |step| {
        tracing::info!(%project, "linkage: {step}");
    });
    let mut keys = HashMap::new();
    let mut first_pid_at_node: HashMap<(u32, Token), Token> = HashMap::new();
    let mut nodes_with_merged_records = BTreeSet::new();
    for (record, key) in records.iter().zip(&linkage.keys) {
        if *key != record.pid {
            keys.insert((record.source, record.pid), *key);
        }
        let first = first_pid_at_node
            .entry((record.source, *key))
            .or_insert(record.pid);
        if *first != record.pid {
            nodes_with_merged_records.insert(nodes[record.source as usize].name.clone());
        }
    }
    tracing::info!(
        %project,
        records = linkage.report.records,
        persons = linkage.report.persons,
        by_nhs_number = linkage.report.linked_by_nhs_number,
        by_score = linkage.report.linked_by_score,
        refused_merges = linkage.report.refused.iter().map(|r| r.merges).sum::<usize>(),
        largest_group = linkage.report.largest_group(),
        uncertain_pairs = linkage.report.uncertain_pairs,
        nodes_with_merged_records = ?nodes_with_merged_records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "linkage index built"
    );
    if linkage.report.largest_group() > warn_group_size {
        tracing::warn!(
            %project,
            largest_group = linkage.report.largest_group(),
            limit = warn_group_size,
            "the linkage index holds a group of more records than one person usually has: check `carrow link report`"
        );
    }
    let sources = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i as u32))
        .collect();
    Ok(Arc::new(LinkageIndex {
        keys,
        sources,
        report: linkage.report,
        missing_nodes,
        nodes_with_merged_records,
        fingerprint,
    }))
}

/// A digest of the tokens themselves: the nodes that sent them, and every
/// record.
fn content_fingerprint(
    nodes: &[Arc<NodeClient>],
    missing_nodes: &[String],
    records: &[LinkRecord],
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for node in nodes.iter().filter(|n| !missing_nodes.contains(&n.name)) {
        node.name.hash(&mut hasher);
    }
    for r in records {
        r.pid.hash(&mut hasher);
        r.fields.hash(&mut hasher);
    }
    hasher.finish()
}

/// A digest of every node's token-table version, or `None` when a node
/// gave none (an older node, or one that did not answer).
async fn token_versions(nodes: &[Arc<NodeClient>], project: &str) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for node in nodes {
        match node.linkage_version(project).await {
            Ok(version) => (&node.name, version).hash(&mut hasher),
            Err(e) => {
                tracing::debug!(node = %node.name, %project, error = %e, "no linkage token version");
                return None;
            }
        }
    }
    Some(hasher.finish())
}

/// Appends the records of one token table batch. A field column the node
/// does not send (an older node) counts as missing in every record.
fn read_records(batch: &RecordBatch, source: u32, out: &mut Vec<LinkRecord>) -> Result<()> {
    let token = |a: &FixedSizeBinaryArray, i: usize| -> Option<Token> {
        (!a.is_null(i)).then(|| {
            let mut t = [0u8; TOKEN_LEN];
            t.copy_from_slice(a.value(i));
            t
        })
    };
    let pids = batch
        .column_by_name("pid")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
        .ok_or_else(|| DataFusionError::Plan("no token column pid".into()))?;
    let mut singles: Vec<(Field, &FixedSizeBinaryArray)> = Vec::new();
    let mut lists: Vec<(Field, &ListArray)> = Vec::new();
    for field in Field::ALL {
        let Some(column) = batch.column_by_name(field.name()) else {
            tracing::warn!(
                field = field.name(),
                "token table lacks a field; treated as missing"
            );
            continue;
        };
        let wrong_type = || {
            DataFusionError::Plan(format!(
                "token column {} has type {}",
                field.name(),
                column.data_type()
            ))
        };
        if field.is_list() {
            let list = column.as_any().downcast_ref::<ListArray>();
            lists.push((field, list.ok_or_else(wrong_type)?));
        } else {
            let tokens = column.as_any().downcast_ref::<FixedSizeBinaryArray>();
            singles.push((field, tokens.ok_or_else(wrong_type)?));
        }
    }
    for i in 0..batch.num_rows() {
        let Some(pid) = token(pids, i) else { continue };
        let mut fields = FieldTokens::default();
        for (field, column) in &singles {
            fields.set(*field, token(column, i));
        }
        for (field, column) in &lists {
            if column.is_null(i) {
                continue;
            }
            let values = column.value(i);
            let values = values
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .ok_or_else(|| {
                    DataFusionError::Plan(format!("token list {} holds no tokens", field.name()))
                })?;
            fields.set_list(
                *field,
                (0..values.len()).filter_map(|j| token(values, j)).collect(),
            );
        }
        out.push(LinkRecord {
            source,
            pid,
            fields,
        });
    }
    Ok(())
}
