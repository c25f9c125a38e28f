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
    let nodes = config
        .nodes
        .iter()
        .map(|endpoint| crate::service::node_client(config, endpoint))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
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
    /// Per node, its pids of persons with a national data opt-out recorded
    /// at any node's register: the node withholds them at its boundary.
    withheld: HashMap<String, Vec<Token>>,
    /// The version of the registers and linkage the withheld lists come
    /// from; `None` when no node keeps a register.
    opt_out_version: Option<String>,
    fingerprint: u64,
    /// When the index was built.
    pub built: std::time::SystemTime,
}

impl LinkageIndex {
    /// The pids `node` must withhold for opt-outs recorded anywhere.
    pub fn withheld(&self, node: &str) -> &[Token] {
        self.withheld.get(node).map_or(&[], Vec::as_slice)
    }

    /// The version of the withheld lists, when any node keeps a register.
    pub fn opt_out_version(&self) -> Option<&str> {
        self.opt_out_version.as_deref()
    }

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
    let mut registers = Vec::new();
    let mut any_register = false;
    let mut missing_nodes = Vec::new();
    for (source, node) in nodes.iter().enumerate() {
        match node.linkage_tokens(project).await {
            Ok(batches) => {
                for batch in &batches {
                    read_records(batch, source as u32, &mut records).map_err(|e| {
                        QueryError::Internal(format!("node {}: linkage tokens: {e}", node.name))
                    })?;
                }
                // Its opt-out register: records of people who objected, as
                // a source of their own (after the nodes').
                match node.opt_out_register(project).await {
                    Ok(batches) => {
                        any_register = true;
                        let register_source = (nodes.len() + source) as u32;
                        for batch in &batches {
                            read_records(batch, register_source, &mut registers).map_err(|e| {
                                QueryError::Internal(format!(
                                    "node {}: opt-out register: {e}",
                                    node.name
                                ))
                            })?;
                        }
                    }
                    // A register that cannot be read leaves the lists
                    // incomplete: never treated as "no objections".
                    Err(e) => {
                        tracing::warn!(node = %node.name, %project, error = %e, "opt-out register unavailable");
                        missing_nodes.push(node.name.clone());
                    }
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
        _ => content_fingerprint(nodes, &missing_nodes, &records, &registers),
    };
    if let Some(previous) = &previous
        && previous.fingerprint == fingerprint
    {
        tracing::debug!(%project, "linkage tokens unchanged; index kept");
        return Ok(previous.clone());
    }
    tracing::info!(%project, records = records.len(), "linking records across nodes");
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let project_name = project.to_string();
    // Linking is seconds of CPU at 100 000 people and more at millions:
    // on a blocking thread, so no async worker (and no query) waits on it.
    let incomplete = !missing_nodes.is_empty();
    let previous_lists = previous
        .as_ref()
        .filter(|p| p.opt_out_version.is_some())
        .map(|p| (p.withheld.clone(), p.opt_out_version.clone()));
    let index = tokio::task::spawn_blocking(move || {
        let registers = any_register.then_some(registers);
        index_from_records(
            &project_name,
            &names,
            &records,
            registers,
            missing_nodes,
            fingerprint,
        )
    })
    .await
    .map_err(|e| QueryError::Internal(format!("linking stopped: {e}")))?;
    let index = if incomplete && any_register_expected(&index, previous_lists.is_some()) {
        keep_last_complete_lists(index, previous_lists)
    } else {
        index
    };
    tracing::info!(
        %project,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "linkage index built"
    );
    if index.report.largest_group() > warn_group_size {
        tracing::warn!(
            %project,
            largest_group = index.report.largest_group(),
            limit = warn_group_size,
            "the linkage index holds a group of more records than one person usually has: check `carrow link report`"
        );
    }
    Ok(Arc::new(index))
}

/// Per node its withheld pids, and their version.
type OptOutLists = (HashMap<String, Vec<Token>>, Option<String>);

/// Whether opt-out lists are in use: some node sent a register now, or
/// lists were made before.
fn any_register_expected(index: &LinkageIndex, had_lists: bool) -> bool {
    index.opt_out_version.is_some() || had_lists
}

/// With a node's tokens or register missing, the lists cannot be complete:
/// the last complete ones stand (nodes keep them on disk too), and with
/// none yet, a version no node holds makes every node refuse research
/// fragments until the registers can be read. Never "no objections".
fn keep_last_complete_lists(
    mut index: LinkageIndex,
    previous: Option<OptOutLists>,
) -> LinkageIndex {
    match previous {
        Some((withheld, version)) => {
            index.withheld = withheld;
            index.opt_out_version = version;
        }
        None => {
            index.withheld = HashMap::new();
            index.opt_out_version = Some(format!(
                "incomplete: no opt-out register from {}",
                index.missing_nodes.join(", ")
            ));
        }
    }
    index
}

/// Links `records` (from the nodes named `names`, in source order) and
/// keeps each pid's person key where it differs from the pid.
fn index_from_records(
    project: &str,
    names: &[String],
    records: &[LinkRecord],
    registers: Option<Vec<LinkRecord>>,
    missing_nodes: Vec<String>,
    fingerprint: u64,
) -> LinkageIndex {
    // Registers' records link with everyone else's; only the nodes'
    // records get keys in the index.
    let opt_out_version = registers.as_ref().map(|_| format!("{fingerprint:016x}"));
    let registers = registers.unwrap_or_default();
    let all: Vec<LinkRecord> = records.iter().chain(&registers).cloned().collect();
    let linkage = link(&all, &LinkOptions::default(), |step| {
        tracing::info!(%project, "linkage: {step}");
    });
    let objected: std::collections::HashSet<Token> =
        linkage.keys[records.len()..].iter().copied().collect();
    let mut withheld: HashMap<String, BTreeSet<Token>> = HashMap::new();
    for (record, key) in records.iter().zip(&linkage.keys) {
        if objected.contains(key) {
            withheld
                .entry(names[record.source as usize].clone())
                .or_default()
                .insert(record.pid);
        }
    }
    let withheld: HashMap<String, Vec<Token>> = withheld
        .into_iter()
        .map(|(node, pids)| (node, pids.into_iter().collect()))
        .collect();
    tracing::info!(
        %project,
        register_records = registers.len(),
        persons_objected = objected.len(),
        withheld = ?withheld.iter().map(|(n, p)| (n.clone(), p.len())).collect::<BTreeSet<_>>(),
        "opt-out registers linked"
    );
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
            nodes_with_merged_records.insert(names[record.source as usize].clone());
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
        "records linked"
    );
    let sources = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u32))
        .collect();
    LinkageIndex {
        keys,
        sources,
        report: linkage.report,
        missing_nodes,
        nodes_with_merged_records,
        withheld,
        opt_out_version,
        fingerprint,
        built: std::time::SystemTime::now(),
    }
}

/// A digest of the tokens themselves: the nodes that sent them, and every
/// record.
fn content_fingerprint(
    nodes: &[Arc<NodeClient>],
    missing_nodes: &[String],
    records: &[LinkRecord],
    registers: &[LinkRecord],
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for node in nodes.iter().filter(|n| !missing_nodes.contains(&n.name)) {
        node.name.hash(&mut hasher);
    }
    for r in records.iter().chain(registers) {
        r.source.hash(&mut hasher);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index_missing(node: &str) -> LinkageIndex {
        index_from_records("demo", &["acute".into()], &[], None, vec![node.into()], 7)
    }

    #[test]
    fn a_missing_register_never_means_no_objections() {
        // No lists before: a version no node holds, so they refuse.
        let index = keep_last_complete_lists(index_missing("gp"), None);
        let version = index.opt_out_version().unwrap();
        assert!(
            version.starts_with("incomplete") && version.contains("gp"),
            "{version}"
        );
        assert!(index.withheld("acute").is_empty());
        // Lists before: they stand, with their version.
        let pid = [3u8; TOKEN_LEN];
        let previous = (
            HashMap::from([("acute".to_string(), vec![pid])]),
            Some("v1".to_string()),
        );
        let index = keep_last_complete_lists(index_missing("gp"), Some(previous));
        assert_eq!(index.opt_out_version(), Some("v1"));
        assert_eq!(index.withheld("acute"), &[pid]);
    }
}
