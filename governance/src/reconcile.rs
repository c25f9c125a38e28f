//! Reconciling the coordinator's audit log with the nodes' logs: every
//! fragment the coordinator sent must be in the node's log under the query
//! id and head hash the node returned, and every fragment a node served
//! for the coordinator must be in the coordinator's log.
//!
//! Each side also holds the other's signed checkpoints (the coordinator's
//! go to nodes with each fragment, a node's come back with its receipt).
//! Every held checkpoint must be signed by the other log's key and be the
//! Merkle root of that log's first `size` records, and the newest one must
//! be proved consistent with the log's latest checkpoint: so a log cut
//! short, or rewritten even by someone holding its key, is found from the
//! other side's log.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::GovernanceError;
use crate::audit::{VerifiedLog, verify_log};
use crate::checkpoint::{Checkpoint, fingerprint};
use crate::merkle::{Frontier, consistency_proof, verify_consistency};

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
    /// Checkpoints one side holds of the other's log, found to be its
    /// signed roots at those sizes.
    pub checkpoints: usize,
    /// Consistency proofs verified, from the newest checkpoint each side
    /// holds to the other log's latest.
    pub proofs: usize,
    /// Each problem, naming the log, query and node.
    pub problems: Vec<String>,
    /// What is not a problem but worth knowing (fragments of queries a
    /// stopped coordinator left without outcome).
    pub notes: Vec<String>,
}

/// The `kind` of the record a service writes when it starts and stops.
pub const SERVICE_KIND: &str = "service";

/// Each query started with no outcome after it: its line, and whether the
/// coordinator's run it belongs to ended without a clean stop.
fn unfinished_queries(entries: &[Entry]) -> HashMap<String, (usize, bool)> {
    // Runs of the coordinator, split at its "started" records; whether each
    // ended with a clean "stopped" record.
    let mut run = 0usize;
    let mut clean_stop: Vec<bool> = vec![false];
    let mut started: HashMap<String, (usize, usize)> = HashMap::new();
    for e in entries {
        let b = &e.body;
        if b["kind"] == SERVICE_KIND {
            match b["event"].as_str() {
                Some("started") if e.seq > 1 => {
                    run += 1;
                    clean_stop.push(false);
                }
                Some("stopped") => clean_stop[run] = true,
                _ => {}
            }
            continue;
        }
        let Some(query) = b["query_id"].as_str() else {
            continue;
        };
        if b["kind"] == "query" && b["phase"] == crate::audit::PHASE_STARTED {
            started.insert(query.to_string(), (e.line, run));
        } else if b["kind"] == "query" {
            started.remove(query);
        }
    }
    started
        .into_iter()
        .map(|(q, (line, r))| (q, (line, !clean_stop[r])))
        .collect()
}

/// Matches the coordinator's log at `coordinator` against each `(node, log)`.
pub fn reconcile(
    coordinator: &Path,
    nodes: &[(String, PathBuf)],
) -> Result<Reconciliation, GovernanceError> {
    let mut out = Reconciliation::default();
    let mut verified: HashMap<String, VerifiedLog> = HashMap::new();
    for (name, path) in
        std::iter::once(&("coordinator".to_string(), coordinator.to_path_buf())).chain(nodes)
    {
        match verify_log(path) {
            Ok(log) => {
                verified.insert(name.clone(), log);
            }
            Err(e) => out.problems.push(format!("{name}: {e}")),
        }
    }
    let coordinator_entries = read_entries(coordinator)?;
    // Each node's log, read once for both checks below.
    let node_logs: Vec<(&String, Vec<Entry>)> = nodes
        .iter()
        .map(|(node, path)| Ok((node, read_entries(path)?)))
        .collect::<Result<_, GovernanceError>>()?;
    for (node, node_entries) in &node_logs {
        let node = *node;
        let held_by_coordinator = coordinator_entries.iter().flat_map(|e| {
            let fragments = e.body["fragments"].as_array().cloned().unwrap_or_default();
            fragments
                .into_iter()
                .filter(|f| f["node"] == node.as_str())
                .filter_map(|f| Some((e.line, f["node_checkpoint"].as_str()?.to_string())))
                .collect::<Vec<_>>()
        });
        check_held(
            &mut out,
            ("coordinator", held_by_coordinator.collect()),
            (node, verified.get(node)),
        );
        // Only what the coordinator sent: a node records checkpoints from
        // callers with the coordinator role alone.
        let held_by_node = node_entries
            .iter()
            .filter(|e| e.body["role"] == "coordinator")
            .filter_map(|e| Some((e.line, e.body["upstream_checkpoint"].as_str()?.to_string())))
            .collect();
        check_held(
            &mut out,
            (node, held_by_node),
            ("coordinator", verified.get("coordinator")),
        );
    }
    // Queries the coordinator started and never recorded an outcome for.
    // The coordinator records each start and clean stop of its own: a query
    // left without outcome by a run that ended without a clean stop (killed,
    // crashed; the last run, or one a restart followed) is noted, not a
    // problem. One left by a run that stopped cleanly lost its outcome record.
    let unfinished: HashMap<String, (usize, bool)> = unfinished_queries(&coordinator_entries);
    let queries: HashMap<String, Entry> = coordinator_entries
        .into_iter()
        .filter(|e| e.body["kind"] == "query" && e.body["phase"] != crate::audit::PHASE_STARTED)
        .filter_map(|e| Some((e.body["query_id"].as_str()?.to_string(), e)))
        .collect();
    for (node, node_entries) in node_logs {
        let served: HashMap<String, Entry> = node_entries
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
            if !queries.contains_key(upstream)
                && let Some((line, stopped_uncleanly)) = unfinished.get(upstream)
            {
                let said = format!(
                    "node {node} served fragment {node_query} (line {}) for coordinator query {upstream} (line {line}), \
                     which has no outcome in the coordinator's log",
                    record.line
                );
                if *stopped_uncleanly {
                    out.notes
                        .push(format!("{said}: the coordinator stopped while running it"));
                } else {
                    out.problems.push(format!(
                        "{said}, though the coordinator stopped cleanly after it: its outcome record is missing"
                    ));
                }
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

/// Checks every checkpoint `holder` recorded (its log's line and the
/// checkpoint's text) against `subject`'s verified log.
fn check_held(
    out: &mut Reconciliation,
    (holder, held): (&str, Vec<(usize, String)>),
    (subject, log): (&str, Option<&VerifiedLog>),
) {
    let mut valid: Vec<(usize, Checkpoint)> = Vec::new();
    for (line, text) in held {
        let checkpoint = match Checkpoint::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                out.problems.push(format!(
                    "{holder}'s log (line {line}) holds {subject}'s checkpoint in a form that does not parse: {e}"
                ));
                continue;
            }
        };
        if checkpoint.origin != subject || !checkpoint.signature_holds() {
            out.problems.push(format!(
                "{holder}'s log (line {line}) holds a checkpoint of {subject}'s log whose signature does not verify \
                 (signed as {:?} by key {}): a forged checkpoint",
                checkpoint.origin,
                fingerprint(&checkpoint.key)
            ));
            continue;
        }
        valid.push((line, checkpoint));
    }
    // A broken log was named already; its records cannot be proved.
    let Some(log) = log else { return };
    let records = log.report.records;
    let key = log.report.checkpoint.as_ref().map(|c| c.key);
    let mut wanted: Vec<u64> = Vec::new();
    for (line, checkpoint) in &valid {
        if key.is_some_and(|k| k != checkpoint.key) {
            out.problems.push(format!(
                "{subject}'s log is signed by key {}, but {holder}'s log (line {line}) holds its checkpoint \
                 signed by key {}: the log was replaced",
                key.map(|k| fingerprint(&k)).unwrap_or_default(),
                fingerprint(&checkpoint.key)
            ));
        } else if checkpoint.size > records {
            out.problems.push(format!(
                "{subject}'s log has {records} records, but {holder}'s log (line {line}) holds its signed \
                 checkpoint of {} records: the log was truncated",
                checkpoint.size
            ));
        } else {
            wanted.push(checkpoint.size);
        }
    }
    // The root of every wanted prefix, in one pass over the leaves.
    wanted.sort_unstable();
    wanted.dedup();
    let mut roots = HashMap::new();
    let mut tree = Frontier::default();
    let mut next = wanted.iter().peekable();
    for leaf in &log.leaves {
        tree.push(*leaf);
        if next.peek() == Some(&&tree.size()) {
            roots.insert(tree.size(), tree.root());
            next.next();
        }
    }
    let mut newest: Option<&Checkpoint> = None;
    for (line, checkpoint) in &valid {
        let Some(root) = roots.get(&checkpoint.size) else {
            continue;
        };
        if *root != checkpoint.root {
            out.problems.push(format!(
                "{subject}'s log was rewritten: its first {} records do not have the Merkle root \
                 {subject} signed in the checkpoint {holder}'s log holds (line {line})",
                checkpoint.size
            ));
            continue;
        }
        out.checkpoints += 1;
        if newest.is_none_or(|n| n.size < checkpoint.size) {
            newest = Some(checkpoint);
        }
    }
    // The newest held checkpoint to the log's latest: what a holder without
    // the other log would be shown.
    if let (Some(old), Some(latest)) = (newest, &log.report.checkpoint) {
        let proof = consistency_proof(&log.leaves, old.size as usize);
        if verify_consistency(old.size, latest.size, &old.root, &latest.root, &proof) {
            out.proofs += 1;
        } else {
            out.problems.push(format!(
                "{subject}'s latest checkpoint ({} records) is not consistent with its checkpoint of {} records \
                 that {holder} holds",
                latest.size, old.size
            ));
        }
    }
}
