//! `carrow audit show` and `carrow audit reconcile`.

use std::path::PathBuf;

use anyhow::Context;
use carrow_governance::reconcile::{Entry, read_entries, reconcile};
use clap::Args;
use serde_json::Value;

/// Filters of `carrow audit show`.
#[derive(Args)]
pub struct ShowFilters {
    /// Only records of this user (or, in a node's log, this caller).
    #[arg(long)]
    pub user: Option<String>,
    /// Only records of this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only records on or after this date (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<String>,
    /// Only records on or before this date (YYYY-MM-DD).
    #[arg(long)]
    pub to: Option<String>,
    /// Only records with this outcome (ok, refused, failed).
    #[arg(long)]
    pub outcome: Option<String>,
}

fn keep(entry: &Entry, f: &ShowFilters) -> bool {
    let body = &entry.body;
    let user = body["user"].as_str().or(body["caller"].as_str());
    let day = &entry.time[..entry.time.len().min(10)];
    f.user.as_deref().is_none_or(|u| user == Some(u))
        && f.project
            .as_deref()
            .is_none_or(|p| body["project"].as_str() == Some(p))
        && f.outcome
            .as_deref()
            .is_none_or(|o| body["outcome"].as_str() == Some(o))
        && f.from.as_deref().is_none_or(|d| day >= d)
        && f.to.as_deref().is_none_or(|d| day <= d)
}

/// Prints the records of `log` that pass `filters` as a table.
pub fn show(log: PathBuf, filters: ShowFilters) -> anyhow::Result<()> {
    let entries = read_entries(&log).with_context(|| format!("reading {}", log.display()))?;
    println!(
        "{:>5}  {:<19}  {:<8} {:<12} {:<10} {:<10} {:>7} {:<8} {:>9} {:>7}  sql / detail",
        "seq", "time (UTC)", "kind", "user", "role", "project", "request", "outcome", "rows", "ms"
    );
    let mut shown = 0;
    let finished: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.body["phase"] == carrow_governance::audit::PHASE_FINISHED)
        .filter_map(|e| e.body["query_id"].as_str())
        .collect();
    for entry in entries.iter().filter(|e| keep(e, &filters)) {
        let b = &entry.body;
        // A start is shown only when no outcome followed: the process stopped.
        let started = b["phase"] == carrow_governance::audit::PHASE_STARTED;
        if started && b["query_id"].as_str().is_some_and(|q| finished.contains(q)) {
            continue;
        }
        let detail = match b["kind"].as_str() {
            Some("request") => format!("{} request", text(&b["action"])),
            _ => one_line(text(&b["sql"])),
        };
        let detail = match b["error"].as_str() {
            Some(e) => format!("{detail}  [{}]", one_line(e)),
            None => detail,
        };
        println!(
            "{:>5}  {:<19}  {:<8} {:<12} {:<10} {:<10} {:>7} {:<8} {:>9} {:>7}  {}",
            entry.seq,
            entry
                .time
                .get(..19)
                .unwrap_or(&entry.time)
                .replace('T', " "),
            b["kind"].as_str().unwrap_or("fragment"),
            b["user"].as_str().or(b["caller"].as_str()).unwrap_or("-"),
            text(&b["role"]),
            b["project"].as_str().unwrap_or("-"),
            number(&b["request"]),
            if started {
                "no outcome"
            } else {
                text(&b["outcome"])
            },
            number(&b["rows"]),
            number(&b["duration_ms"]),
            detail
        );
        shown += 1;
    }
    println!("{shown} of {} records", entries.len());
    print_user_summary(entries.iter().filter(|e| keep(e, &filters)));
    Ok(())
}

/// Per user of a coordinator log: queries, refusals, and queries whose
/// released cells were about small populations (or that had cells withheld
/// for too few persons): the signal of differencing attempts that a
/// governance board watches.
fn print_user_summary<'a>(entries: impl Iterator<Item = &'a Entry>) {
    let mut users: std::collections::BTreeMap<String, [u64; 3]> = Default::default();
    for entry in entries {
        let b = &entry.body;
        if b["kind"].as_str() != Some("query")
            || b["phase"] == carrow_governance::audit::PHASE_STARTED
        {
            continue;
        }
        let counts = users.entry(text(&b["user"]).to_string()).or_default();
        counts[0] += 1;
        counts[1] += u64::from(b["outcome"].as_str() == Some("refused"));
        counts[2] += u64::from(b["small_population"].as_bool() == Some(true));
    }
    if users.is_empty() {
        return;
    }
    println!(
        "\n{:<16} {:>8} {:>8} {:>17}",
        "user", "queries", "refused", "small populations"
    );
    for (user, [queries, refused, small]) in users {
        println!("{user:<16} {queries:>8} {refused:>8} {small:>17}");
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn number(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), |n| n.to_string())
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}…", flat.chars().take(99).collect::<String>())
    } else {
        flat
    }
}

/// Reconciles the coordinator's log with nodes' logs given as `NAME=FILE`;
/// fails (exit 1) when they disagree.
pub fn reconcile_logs(coordinator: PathBuf, nodes: Vec<String>) -> anyhow::Result<()> {
    let nodes: Vec<(String, PathBuf)> = nodes
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .map(|(name, file)| (name.to_string(), PathBuf::from(file)))
                .with_context(|| format!("--node {spec:?}: expected NAME=FILE"))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!nodes.is_empty(), "give at least one --node NAME=FILE");
    let result = reconcile(&coordinator, &nodes)?;
    for note in &result.notes {
        println!("NOTE {note}");
    }
    for problem in &result.problems {
        println!("MISMATCH {problem}");
    }
    println!(
        "{} checkpoints each log holds of another verified; {} consistency proofs verified",
        result.checkpoints, result.proofs
    );
    println!(
        "{} fragments matched between the coordinator and {} node logs; {} problems",
        result.matched,
        nodes.len(),
        result.problems.len()
    );
    anyhow::ensure!(result.problems.is_empty(), "the logs do not reconcile");
    Ok(())
}
