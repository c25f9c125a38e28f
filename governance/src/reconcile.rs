//! Reconciling the coordinator's audit log with the nodes' logs: every
//! fragment the coordinator sent must be in the node's log under the query
//! id and head hash the node returned, and every fragment a node served
//! for the coordinator must be in the coordinator's log.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::GovernanceError;
use crate::audit::verify_file;

/// One record of an audit log, as read back.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Line number in the file (1-based).
    pub line: usize,
    pub seq: u64,
    pub time: String,
    pub hash: String,
    pub body: Value,
}

/// Reads every well-formed record of the log at `path` (a broken chain is
/// [`verify_file`]'s business; this reads what is there).
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, GovernanceError> {
    let text = fs::read_to_string(path).map_err(|source| GovernanceError::AuditIo {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let record: Value = serde_json::from_str(line).ok()?;
            Some(Entry {
                line: i + 1,
                seq: record["seq"].as_u64()?,
                time: record["time"].as_str()?.to_string(),
                hash: record["hash"].as_str()?.to_string(),
                body: record["body"].clone(),
            })
        })
        .collect())
}

/// Everything reconciliation found wrong; empty when the logs agree.
#[derive(Debug, Default)]
pub struct Reconciliation {
    /// Fragments the coordinator's log and the nodes' logs both record.
    pub matched: usize,
    /// Each problem, naming the log, query and node.
    pub problems: Vec<String>,
}

/// Matches the coordinator's log at `coordinator` against each `(node, log)`.
pub fn reconcile(
    coordinator: &Path,
    nodes: &[(String, PathBuf)],
) -> Result<Reconciliation, GovernanceError> {
    let mut out = Reconciliation::default();
    for (name, path) in
        std::iter::once(&("coordinator".to_string(), coordinator.to_path_buf())).chain(nodes)
    {
        if let Err(e) = verify_file(path) {
            out.problems.push(format!("{name}: {e}"));
        }
    }
    let queries: HashMap<String, Entry> = read_entries(coordinator)?
        .into_iter()
        .filter(|e| e.body["kind"] == "query" && e.body["phase"] != crate::audit::PHASE_STARTED)
        .filter_map(|e| Some((e.body["query_id"].as_str()?.to_string(), e)))
        .collect();
    for (node, path) in nodes {
        let served: HashMap<String, Entry> = read_entries(path)?
            .into_iter()
            .filter(|e| e.body["phase"] != crate::audit::PHASE_STARTED)
            .filter_map(|e| Some((e.body["query_id"].as_str()?.to_string(), e)))
            .collect();
        let mut claimed: HashSet<String> = HashSet::new();
        for (query_id, entry) in &queries {
            let fragments = entry.body["fragments"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for fragment in fragments.iter().filter(|f| f["node"] == node.as_str()) {
                let Some(node_query) = fragment["node_query_id"].as_str() else {
                    // No receipt: the fragment failed before the node finished it.
                    continue;
                };
                claimed.insert(node_query.to_string());
                match served.get(node_query) {
                    None => out.problems.push(format!(
                        "coordinator query {query_id} (line {}) sent node {node} fragment {node_query}, which node {node}'s log does not have",
                        entry.line
                    )),
                    Some(record) if fragment["node_audit_head"].as_str() != Some(record.hash.as_str()) => {
                        out.problems.push(format!(
                            "coordinator query {query_id} (line {}) recorded node {node}'s head for fragment {node_query} as {}, but the node's record (line {}) hashes to {}",
                            entry.line,
                            fragment["node_audit_head"].as_str().unwrap_or("nothing"),
                            record.line,
                            record.hash
                        ));
                    }
                    Some(_) => out.matched += 1,
                }
            }
        }
        for (node_query, record) in &served {
            let Some(upstream) = record.body["upstream_query_id"].as_str() else {
                continue;
            };
            // Only the coordinator's queries (`q-…`), not catalog listings.
            if !upstream.starts_with("q-") || claimed.contains(node_query) {
                continue;
            }
            let recorded_as_failed = queries.get(upstream).is_some_and(|q| {
                q.body["fragments"].as_array().is_some_and(|fragments| {
                    fragments.iter().any(|f| {
                        f["node"] == node.as_str()
                            && f["node_query_id"].is_null()
                            && f["sql"] == record.body["sql"]
                    })
                })
            });
            if recorded_as_failed
                || record.body["outcome"] != "ok" && queries.contains_key(upstream)
            {
                continue;
            }
            out.problems.push(match queries.get(upstream) {
                None => format!(
                    "node {node} served fragment {node_query} (line {}) for coordinator query {upstream}, which the coordinator's log does not have",
                    record.line
                ),
                Some(q) => format!(
                    "node {node} served fragment {node_query} (line {}) for coordinator query {upstream} (line {}), which does not list it",
                    record.line, q.line
                ),
            });
        }
    }
    Ok(out)
}
