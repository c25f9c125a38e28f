//! What the console's audit and overview pages read: the coordinator's
//! audit log (verified), the checkpoints it holds of each node's log, the
//! board's copies of node logs reconciled with it, and counts for charts.

use std::collections::BTreeMap;

use carrow_governance::Checkpoint;
use carrow_governance::reconcile::{Entry, Reconciliation, read_entries, reconcile};
use serde_json::Value;

use super::{AuditFilters, counted};
use crate::service::CoordinatorState;

/// One query attempt as the audit page lists it.
#[derive(Debug)]
pub struct Attempt {
    pub time: String,
    pub query_id: String,
    pub user: String,
    pub role: String,
    pub project: String,
    pub request: Option<i64>,
    pub outcome: String,
    pub rows: Option<u64>,
    pub sql: String,
}

/// The latest checkpoint the coordinator holds of one node's log.
#[derive(Debug)]
pub struct HeldCheckpoint {
    pub node: String,
    pub time: String,
    pub size: u64,
    pub root: String,
    pub key: String,
    pub verifies: bool,
}

/// The audit page.
#[derive(Debug)]
pub struct AuditPage {
    pub attempts: Vec<Attempt>,
    pub total: usize,
    /// `carrow audit verify` of the coordinator's log: what it found.
    pub coordinator_log: Result<String, String>,
    pub held: Vec<HeldCheckpoint>,
    /// Reconciliation with the board's copies of node logs, when it has some.
    pub reconciliation: Option<Result<Reconciliation, String>>,
    pub filters: Vec<(String, String)>,
}

/// A JSON value as shown: strings bare, null empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether a record is a query attempt's final word: an outcome, or a
/// start nothing followed (the coordinator stopped).
fn is_attempt(entry: &Entry) -> bool {
    entry.body["kind"] == "query" && entry.body["phase"] != carrow_governance::audit::PHASE_STARTED
}

fn entries(state: &CoordinatorState) -> Result<Vec<Entry>, String> {
    read_entries(state.audit().path()).map_err(|e| e.to_string())
}

impl AuditPage {
    /// Reads and verifies the coordinator's log (blocking).
    pub fn load(state: &CoordinatorState, f: &AuditFilters) -> Result<Self, String> {
        let all = entries(state)?;
        let keep = |e: &Entry| {
            let b = &e.body;
            let day = e.time.get(..10).unwrap_or("");
            let is = |wanted: &Option<String>, value: String| {
                wanted.as_deref().is_none_or(|w| w.is_empty() || w == value)
            };
            is(&f.user, text(&b["user"]))
                && is(&f.role, text(&b["role"]))
                && is(&f.project, text(&b["project"]))
                && is(&f.request, text(&b["request"]))
                && is(&f.outcome, text(&b["outcome"]))
                && f.node.as_deref().is_none_or(|n| {
                    n.is_empty()
                        || b["fragments"]
                            .as_array()
                            .is_some_and(|fs| fs.iter().any(|x| x["node"] == n))
                })
                && f.from.as_deref().is_none_or(|d| d.is_empty() || day >= d)
                && f.to.as_deref().is_none_or(|d| d.is_empty() || day <= d)
        };
        let matching: Vec<&Entry> = all
            .iter()
            .filter(|e| is_attempt(e))
            .filter(|e| keep(e))
            .collect();
        let total = matching.len();
        let attempts = matching
            .into_iter()
            .rev()
            .take(500)
            .map(|e| Attempt {
                time: e.time.get(..19).unwrap_or(&e.time).replace('T', " "),
                query_id: text(&e.body["query_id"]),
                user: text(&e.body["user"]),
                role: text(&e.body["role"]),
                project: text(&e.body["project"]),
                request: e.body["request"].as_i64(),
                outcome: text(&e.body["outcome"]),
                rows: e.body["rows"].as_u64(),
                sql: text(&e.body["sql"]),
            })
            .collect();
        let coordinator_log = carrow_governance::verify_file(state.audit().path())
            .map(|r| {
                let root = r
                    .checkpoint
                    .as_ref()
                    .map(|c| hex::encode(&c.root[..8]))
                    .unwrap_or_default();
                let unfinished = if r.unfinished.is_empty() {
                    String::new()
                } else {
                    format!("; {} started with no outcome", r.unfinished.len())
                };
                format!(
                    "intact: {} records, chain and signed checkpoints verify, Merkle root {root}…{unfinished}",
                    r.records
                )
            })
            .map_err(|e| e.to_string());
        let mut held: BTreeMap<String, HeldCheckpoint> = BTreeMap::new();
        for entry in &all {
            for fragment in entry.body["fragments"].as_array().into_iter().flatten() {
                let Some(checkpoint) = fragment["node_checkpoint"]
                    .as_str()
                    .and_then(|t| Checkpoint::parse(t).ok())
                else {
                    continue;
                };
                let node = text(&fragment["node"]);
                if held.get(&node).is_some_and(|h| h.size >= checkpoint.size) {
                    continue;
                }
                held.insert(
                    node.clone(),
                    HeldCheckpoint {
                        node,
                        time: entry
                            .time
                            .get(..19)
                            .unwrap_or(&entry.time)
                            .replace('T', " "),
                        size: checkpoint.size,
                        root: hex::encode(&checkpoint.root[..8]),
                        key: hex::encode(&checkpoint.key[..8]),
                        verifies: checkpoint.signature_holds(),
                    },
                );
            }
        }
        let node_logs: Vec<(String, std::path::PathBuf)> = state
            .config()
            .console
            .as_ref()
            .map(|c| c.node_logs.clone().into_iter().collect())
            .unwrap_or_default();
        let reconciliation = (!node_logs.is_empty())
            .then(|| reconcile(state.audit().path(), &node_logs).map_err(|e| e.to_string()));
        let filters = [
            ("user", &f.user),
            ("role", &f.role),
            ("project", &f.project),
            ("request", &f.request),
            ("node", &f.node),
            ("outcome", &f.outcome),
            ("from", &f.from),
            ("to", &f.to),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone().unwrap_or_default()))
        .collect();
        Ok(Self {
            attempts,
            total,
            coordinator_log,
            held: held.into_values().collect(),
            reconciliation,
            filters,
        })
    }
}

/// Every record of query `query_id` (its start, outcome or refusal), as
/// `(time, body)`, in log order (blocking).
pub fn query_records(
    state: &CoordinatorState,
    query_id: &str,
) -> Result<Vec<(String, Value)>, String> {
    Ok(entries(state)?
        .into_iter()
        .filter(|e| e.body["query_id"] == query_id)
        .map(|e| (e.time, e.body))
        .collect())
}

/// The overview's figures.
#[derive(Debug, Default)]
pub struct Overview {
    /// Roles in the stacked chart, in order.
    pub roles: Vec<String>,
    /// Per day, attempts per role (in `roles` order).
    pub per_day: Vec<(String, Vec<f64>)>,
    pub refusals_by_rule: Vec<(String, f64)>,
    pub rows_by_node: Vec<(String, f64)>,
    pub requests_by_status: Vec<(String, f64)>,
    pub small_population_by_user: Vec<(String, f64)>,
}

impl Overview {
    /// Counts from the coordinator's log and request store (blocking).
    pub fn load(state: &CoordinatorState) -> Result<Self, String> {
        let all = entries(state)?;
        let roles = vec![
            "planner".to_string(),
            "researcher".to_string(),
            "governance".to_string(),
        ];
        let mut per_day: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut rules: BTreeMap<String, f64> = BTreeMap::new();
        let mut rows: BTreeMap<String, f64> = BTreeMap::new();
        let mut small: BTreeMap<String, f64> = BTreeMap::new();
        for entry in all.iter().filter(|e| is_attempt(e)) {
            let b = &entry.body;
            let day = entry.time.get(..10).unwrap_or("").to_string();
            if let Some(i) = roles.iter().position(|r| *r == text(&b["role"])) {
                per_day.entry(day).or_insert_with(|| vec![0.0; roles.len()])[i] += 1.0;
            }
            if b["outcome"] == "refused" {
                let rule = b["rule"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| rule_in(&text(&b["error"])))
                    .unwrap_or_else(|| "other".into());
                *rules.entry(rule).or_default() += 1.0;
            }
            for fragment in b["fragments"].as_array().into_iter().flatten() {
                *rows.entry(text(&fragment["node"])).or_default() +=
                    fragment["rows"].as_f64().unwrap_or(0.0);
            }
            if b["small_population"] == true {
                *small.entry(text(&b["user"])).or_default() += 1.0;
            }
        }
        let mut statuses: BTreeMap<String, f64> = BTreeMap::new();
        for request in state.requests().list(None).map_err(|e| e.to_string())? {
            *statuses.entry(request.status).or_default() += 1.0;
        }
        Ok(Self {
            roles,
            per_day: per_day.into_iter().collect(),
            refusals_by_rule: counted(rules),
            rows_by_node: counted(rows),
            requests_by_status: counted(statuses),
            small_population_by_user: counted(small),
        })
    }
}

/// The rule a refusal's message names (`refused by rule `X`: ...`).
fn rule_in(error: &str) -> Option<String> {
    let rest = error.split("rule `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}
