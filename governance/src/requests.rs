//! Research requests and their approvals, in SQLite: a researcher submits
//! SQL with a project and purpose; two governance users other than the
//! requester approve it; it may expire and may be limited to a number of
//! runs; it can be revoked. Every change is one transaction, so a crash
//! leaves either the whole change or none of it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::GovernanceError;
use crate::canonical::canonical_sql;

/// Approvals a request needs, from different governance users.
pub const APPROVALS_NEEDED: usize = 2;

/// What an approved request lets its researcher see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Aggregates, under the same disclosure control as planners.
    Aggregate,
    /// A pseudonymous row-level result.
    Extract,
}

impl std::str::FromStr for Output {
    type Err = GovernanceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aggregate" => Ok(Output::Aggregate),
            "extract" => Ok(Output::Extract),
            other => Err(GovernanceError::Invalid(format!(
                "unknown output {other:?} (expected aggregate or extract)"
            ))),
        }
    }
}

impl Output {
    /// `aggregate` or `extract`.
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Aggregate => "aggregate",
            Output::Extract => "extract",
        }
    }
}

/// A request as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRequest {
    pub project: String,
    pub purpose: String,
    pub output: Output,
    pub sql: String,
    /// Last day (YYYY-MM-DD) on which it may run.
    pub expires_on: Option<String>,
    pub max_runs: Option<u32>,
    /// The request this one revises (one of the same researcher's that
    /// governance asked changes of); it is then superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revises: Option<i64>,
}

/// One run a request allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    /// The coordinator's query id (its audit log has the query).
    pub query_id: String,
    /// running, ok, failed or interrupted.
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// One governance decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub reviewer: String,
    /// approve, request-changes, reject or revoke.
    pub decision: String,
    pub comment: Option<String>,
    pub at: String,
}

/// A request with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: i64,
    pub requester: String,
    pub project: String,
    pub purpose: String,
    pub output: Output,
    pub sql: String,
    pub canonical_sql: String,
    /// submitted, approved, changes-requested, superseded, rejected or revoked.
    pub status: String,
    /// The request this one revises, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revises: Option<i64>,
    pub expires_on: Option<String>,
    pub max_runs: Option<u32>,
    /// Runs that completed or are under way.
    pub runs_used: u32,
    pub created_at: String,
    pub decisions: Vec<Decision>,
}

impl Request {
    /// How many governance users approved it.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == "approve")
            .count()
    }

    /// Its output kind's name.
    pub fn output_name(&self) -> &'static str {
        self.output.as_str()
    }
}

/// A run a request allowed: finish it with [`RequestStore::finish_run`].
#[derive(Debug, Clone)]
pub struct Run {
    pub id: i64,
    pub request: Request,
}

/// The request store of one coordinator.
pub struct RequestStore {
    path: PathBuf,
    db: Mutex<Connection>,
}

impl std::fmt::Debug for RequestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL,
    project TEXT NOT NULL,
    purpose TEXT NOT NULL,
    output TEXT NOT NULL CHECK (output IN ('aggregate', 'extract')),
    sql TEXT NOT NULL,
    canonical_sql TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_on TEXT,
    max_runs INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_canonical ON requests (requester, canonical_sql);
CREATE TABLE IF NOT EXISTS decisions (
    request_id INTEGER NOT NULL REFERENCES requests (id),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL,
    comment TEXT,
    at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_approval_per_reviewer
    ON decisions (request_id, reviewer) WHERE decision = 'approve';
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL REFERENCES requests (id),
    query_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn db_error(path: &Path) -> impl Fn(rusqlite::Error) -> GovernanceError + '_ {
    move |e| GovernanceError::Store {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl RequestStore {
    /// Opens (creating if needed) the store at `path`. Runs left under way
    /// by a stopped coordinator are marked interrupted and no longer count.
    pub fn open(path: &Path) -> Result<Self, GovernanceError> {
        let err = db_error(path);
        let db = Connection::open(path).map_err(&err)?;
        // WAL with full sync: a committed change survives a crash or power loss.
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        db.pragma_update(None, "foreign_keys", "ON").map_err(&err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&err)?;
        db.execute_batch(SCHEMA).map_err(&err)?;
        // Stores made before requests could revise one another.
        let has_revises: bool = db
            .prepare("SELECT 1 FROM pragma_table_info('requests') WHERE name = 'revises'")
            .and_then(|mut s| s.exists([]))
            .map_err(&err)?;
        if !has_revises {
            db.execute_batch(
                "ALTER TABLE requests ADD COLUMN revises INTEGER REFERENCES requests (id)",
            )
            .map_err(&err)?;
        }
        let interrupted = db
            .execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?1 WHERE status = 'running'",
                params![now()],
            )
            .map_err(&err)?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs left under way by a previous coordinator marked interrupted"
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            db: Mutex::new(db),
        })
    }

    /// Runs `f` in one transaction, synced to disk before it returns.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, GovernanceError>,
    ) -> Result<T, GovernanceError> {
        self.transaction(Sync::Full, f)
    }

    fn transaction<T>(
        &self,
        sync: Sync,
        f: impl FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, GovernanceError>,
    ) -> Result<T, GovernanceError> {
        let err = db_error(&self.path);
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let level = match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        db.pragma_update(None, "synchronous", level).map_err(&err)?;
        let mut tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let out = f(&mut tx)?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// Records a new request by `requester`; returns it.
    pub fn submit(&self, requester: &str, new: &NewRequest) -> Result<Request, GovernanceError> {
        let canonical = canonical_sql(&new.sql)?;
        if new.purpose.trim().is_empty() {
            return Err(GovernanceError::Invalid("a request needs a purpose".into()));
        }
        // Kept in one form (zero-padded), so it is read back as the date
        // it is: `2026-2-1` is 1 February, never a string after `2026-12-31`.
        let expires_on = new
            .expires_on
            .as_deref()
            .map(|date| parse_date(date).map(|d| d.format("%Y-%m-%d").to_string()))
            .transpose()
            .map_err(GovernanceError::Invalid)?;
        if new.max_runs == Some(0) {
            return Err(GovernanceError::Invalid(
                "max runs must be at least 1".into(),
            ));
        }
        let err = db_error(&self.path);
        let id = self.with(|tx| {
            if let Some(old) = new.revises {
                let revised = load(tx, old, &self.path)?.ok_or(GovernanceError::NoSuchRequest(old))?;
                if revised.requester != requester || revised.status != "changes-requested" {
                    return Err(GovernanceError::Refused(format!(
                        "request {old} is {} and {}'s: only a request of yours that governance asked changes of can be revised",
                        revised.status, revised.requester
                    )));
                }
                tx.execute(
                    "UPDATE requests SET status = 'superseded' WHERE id = ?1",
                    params![old],
                )
                .map_err(&err)?;
            }
            tx.execute(
                "INSERT INTO requests (requester, project, purpose, output, sql, canonical_sql, status, expires_on, max_runs, created_at, revises)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'submitted', ?7, ?8, ?9, ?10)",
                params![
                    requester,
                    new.project,
                    new.purpose,
                    new.output.as_str(),
                    new.sql,
                    canonical,
                    expires_on,
                    new.max_runs,
                    now(),
                    new.revises
                ],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })?;
        self.get(id)
    }

    /// One request with its decisions.
    pub fn get(&self, id: i64) -> Result<Request, GovernanceError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        load(&db, id, &self.path)?.ok_or(GovernanceError::NoSuchRequest(id))
    }

    /// Every request, newest first; only `requester`'s when given.
    pub fn list(&self, requester: Option<&str>) -> Result<Vec<Request>, GovernanceError> {
        let err = db_error(&self.path);
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = db
            .prepare("SELECT id FROM requests WHERE ?1 IS NULL OR requester = ?1 ORDER BY id DESC")
            .map_err(&err)?;
        let ids: Vec<i64> = statement
            .query_map(params![requester], |row| row.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        ids.into_iter()
            .filter_map(|id| load(&db, id, &self.path).transpose())
            .collect()
    }

    /// Records `reviewer`'s decision: `approve`, `request-changes`, `reject`
    /// or `revoke`. Returns the request as it now stands.
    pub fn decide(
        &self,
        id: i64,
        reviewer: &str,
        decision: &str,
        comment: Option<&str>,
    ) -> Result<Request, GovernanceError> {
        let err = db_error(&self.path);
        self.with(|tx| {
            let request = load(tx, id, &self.path)?.ok_or(GovernanceError::NoSuchRequest(id))?;
            if request.requester == reviewer {
                return Err(GovernanceError::Refused(format!(
                    "{reviewer} submitted request {id} and cannot decide on it"
                )));
            }
            let refuse = |why: &str| {
                Err(GovernanceError::Refused(format!(
                    "request {id} is {}: {why}",
                    request.status
                )))
            };
            let status = match (decision, request.status.as_str()) {
                ("approve", "submitted") => {
                    if request
                        .decisions
                        .iter()
                        .any(|d| d.reviewer == reviewer && d.decision == "approve")
                    {
                        return Err(GovernanceError::Refused(format!(
                            "{reviewer} has already approved request {id}; it needs another governance user"
                        )));
                    }
                    let approvals = request.approvals() + 1;
                    if approvals >= APPROVALS_NEEDED {
                        "approved"
                    } else {
                        "submitted"
                    }
                }
                ("approve", _) => return refuse("only a submitted request can be approved"),
                ("request-changes", "submitted") => "changes-requested",
                ("request-changes", _) => {
                    return refuse("changes can be requested of a submitted request only");
                }
                ("reject", "submitted" | "changes-requested") => "rejected",
                ("reject", _) => return refuse("only a request under review can be rejected"),
                ("revoke", "approved" | "submitted") => "revoked",
                ("revoke", _) => return refuse("only an approved or submitted request can be revoked"),
                (other, _) => {
                    return Err(GovernanceError::Invalid(format!(
                        "unknown decision {other:?} (approve, request-changes, reject, revoke)"
                    )));
                }
            };
            tx.execute(
                "INSERT INTO decisions (request_id, reviewer, decision, comment, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, reviewer, decision, comment, now()],
            )
            .map_err(&err)?;
            tx.execute(
                "UPDATE requests SET status = ?1 WHERE id = ?2",
                params![status, id],
            )
            .map_err(&err)?;
            load(tx, id, &self.path)?.ok_or(GovernanceError::NoSuchRequest(id))
        })
    }

    /// Starts a run of `sql` by `requester` under the approved request it
    /// matches (canonical SQL), on `today` (YYYY-MM-DD). Refuses, saying
    /// why, when no request of theirs allows it.
    pub fn start_run(
        &self,
        requester: &str,
        sql: &str,
        today: &str,
        query_id: &str,
    ) -> Result<Run, GovernanceError> {
        self.find_run(requester, sql, today, Some(query_id))
    }

    /// The request that would allow `requester` to run `sql` today, without
    /// starting a run (a statement being prepared).
    pub fn authorise(
        &self,
        requester: &str,
        sql: &str,
        today: &str,
    ) -> Result<Request, GovernanceError> {
        self.find_run(requester, sql, today, None)
            .map(|run| run.request)
    }

    fn find_run(
        &self,
        requester: &str,
        sql: &str,
        today: &str,
        query_id: Option<&str>,
    ) -> Result<Run, GovernanceError> {
        let canonical = canonical_sql(sql)?;
        let err = db_error(&self.path);
        self.transaction(Sync::Normal, |tx| {
            let ids: Vec<i64> = {
                let mut statement = tx
                    .prepare("SELECT id FROM requests WHERE requester = ?1 AND canonical_sql = ?2 ORDER BY id DESC")
                    .map_err(&err)?;
                statement
                    .query_map(params![requester, canonical], |row| row.get(0))
                    .map_err(&err)?
                    .collect::<Result<_, _>>()
                    .map_err(&err)?
            };
            let mut reasons = Vec::new();
            for id in ids {
                let Some(request) = load(tx, id, &self.path)? else {
                    continue;
                };
                match usable(&request, today) {
                    Ok(()) => {
                        let Some(query_id) = query_id else {
                            return Ok(Run { id: 0, request });
                        };
                        tx.execute(
                            "INSERT INTO runs (request_id, query_id, status, started_at) VALUES (?1, ?2, 'running', ?3)",
                            params![id, query_id, now()],
                        )
                        .map_err(&err)?;
                        return Ok(Run {
                            id: tx.last_insert_rowid(),
                            request,
                        });
                    }
                    Err(reason) => reasons.push(format!("request {id} {reason}")),
                }
            }
            Err(GovernanceError::Refused(if reasons.is_empty() {
                format!("no request of {requester} was approved for this SQL (requests match on the query's canonical form; an edited query needs a new request)")
            } else {
                reasons.join("; ")
            }))
        })
    }

    /// The runs of request `id`, oldest first.
    pub fn runs(&self, id: i64) -> Result<Vec<RunRecord>, GovernanceError> {
        let err = db_error(&self.path);
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = db
            .prepare("SELECT id, query_id, status, started_at, finished_at FROM runs WHERE request_id = ?1 ORDER BY id")
            .map_err(&err)?;
        statement
            .query_map(params![id], |row| {
                Ok(RunRecord {
                    id: row.get(0)?,
                    query_id: row.get(1)?,
                    status: row.get(2)?,
                    started_at: row.get(3)?,
                    finished_at: row.get(4)?,
                })
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    /// Records how a run ended; a failed run does not count against the limit.
    pub fn finish_run(&self, run: i64, ok: bool) -> Result<(), GovernanceError> {
        let err = db_error(&self.path);
        self.transaction(Sync::Normal, |tx| {
            tx.execute(
                "UPDATE runs SET status = ?1, finished_at = ?2 WHERE id = ?3",
                params![if ok { "ok" } else { "failed" }, now(), run],
            )
            .map_err(&err)?;
            Ok(())
        })
    }
}

/// How durable a transaction must be. Requests and decisions are synced
/// (they survive power loss); run bookkeeping is written to the WAL without
/// a sync of its own (it survives a process crash, and a power loss can at
/// worst forget the last runs).
#[derive(Clone, Copy)]
enum Sync {
    Full,
    Normal,
}

/// A calendar date written YYYY-MM-DD (one-digit months and days too).
fn parse_date(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("expiry {text:?} is not a date (YYYY-MM-DD)"))
}

/// Why `request` cannot run today, if it cannot.
fn usable(request: &Request, today: &str) -> Result<(), String> {
    match request.status.as_str() {
        "approved" => {}
        "submitted" => {
            return Err(format!(
                "awaits approval ({} of {APPROVALS_NEEDED} approvals)",
                request.approvals()
            ));
        }
        other => return Err(format!("is {other}")),
    }
    if let Some(expiry) = &request.expires_on {
        // Compared as dates; an expiry that does not read as one (stored
        // before dates were checked strictly) counts as passed.
        let expired = match (parse_date(expiry), parse_date(today)) {
            (Ok(expiry), Ok(today)) => today > expiry,
            _ => true,
        };
        if expired {
            return Err(format!("expired on {expiry}"));
        }
    }
    if let Some(max) = request.max_runs
        && request.runs_used >= max
    {
        return Err(format!("has used all its {max} runs"));
    }
    Ok(())
}

fn load(db: &Connection, id: i64, path: &Path) -> Result<Option<Request>, GovernanceError> {
    let err = db_error(path);
    let request = db
        .query_row(
            "SELECT id, requester, project, purpose, output, sql, canonical_sql, status, expires_on, max_runs, created_at,
                    (SELECT count(*) FROM runs WHERE request_id = requests.id AND status IN ('running', 'ok')),
                    revises
             FROM requests WHERE id = ?1",
            params![id],
            |row| {
                let output: String = row.get(4)?;
                Ok(Request {
                    id: row.get(0)?,
                    requester: row.get(1)?,
                    project: row.get(2)?,
                    purpose: row.get(3)?,
                    output: if output == "extract" {
                        Output::Extract
                    } else {
                        Output::Aggregate
                    },
                    sql: row.get(5)?,
                    canonical_sql: row.get(6)?,
                    status: row.get(7)?,
                    expires_on: row.get(8)?,
                    max_runs: row.get(9)?,
                    created_at: row.get(10)?,
                    runs_used: row.get(11)?,
                    revises: row.get(12)?,
                    decisions: Vec::new(),
                })
            },
        )
        .optional()
        .map_err(&err)?;
    let Some(mut request) = request else {
        return Ok(None);
    };
    let mut statement = db
        .prepare("SELECT reviewer, decision, comment, at FROM decisions WHERE request_id = ?1 ORDER BY rowid")
        .map_err(&err)?;
    request.decisions = statement
        .query_map(params![id], |row| {
            Ok(Decision {
                reviewer: row.get(0)?,
                decision: row.get(1)?,
                comment: row.get(2)?,
                at: row.get(3)?,
            })
        })
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)?;
    Ok(Some(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "SELECT area_code, count(*) FROM council.clients GROUP BY area_code";

    fn store() -> (tempfile::TempDir, RequestStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RequestStore::open(&dir.path().join("requests.sqlite")).unwrap();
        (dir, store)
    }

    fn new(max_runs: Option<u32>, expires_on: Option<&str>) -> NewRequest {
        NewRequest {
            project: "demo".into(),
            purpose: "frailty study".into(),
            output: Output::Aggregate,
            sql: SQL.into(),
            expires_on: expires_on.map(str::to_string),
            max_runs,
            revises: None,
        }
    }

    #[test]
    fn a_revision_supersedes_the_request_changes_were_asked_of_and_runs_are_listed() {
        let (_dir, store) = store();
        let first = store.submit("rita", &new(None, None)).unwrap();
        // Not yet asked for changes: not revisable.
        let early = NewRequest {
            revises: Some(first.id),
            ..new(None, None)
        };
        assert!(store.submit("rita", &early).is_err());
        store
            .decide(
                first.id,
                "gina",
                "request-changes",
                Some("narrow the areas"),
            )
            .unwrap();
        assert!(
            store.submit("bob", &early).is_err(),
            "only its requester revises it"
        );
        let second = store.submit("rita", &early).unwrap();
        assert_eq!(second.revises, Some(first.id));
        assert_eq!(store.get(first.id).unwrap().status, "superseded");
        for reviewer in ["gina", "hal"] {
            store.decide(second.id, reviewer, "approve", None).unwrap();
        }
        let run = store.start_run("rita", SQL, "2026-01-01", "q-1").unwrap();
        store.finish_run(run.id, true).unwrap();
        let runs = store.runs(second.id).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].query_id.as_str(), runs[0].status.as_str()),
            ("q-1", "ok")
        );
        assert!(store.runs(first.id).unwrap().is_empty());
    }

    #[test]
    fn two_different_reviewers_other_than_the_requester_approve() {
        let (_dir, store) = store();
        let r = store.submit("rita", &new(None, None)).unwrap();
        let err = store.decide(r.id, "rita", "approve", None).unwrap_err();
        assert!(err.to_string().contains("cannot decide"), "{err}");
        assert_eq!(
            store.decide(r.id, "gus", "approve", None).unwrap().status,
            "submitted"
        );
        let err = store.decide(r.id, "gus", "approve", None).unwrap_err();
        assert!(err.to_string().contains("already approved"), "{err}");
        let err = store
            .start_run("rita", SQL, "2026-01-01", "q-1")
            .unwrap_err();
        assert!(err.to_string().contains("1 of 2 approvals"), "{err}");
        assert_eq!(
            store.decide(r.id, "gina", "approve", None).unwrap().status,
            "approved"
        );
        let run = store
            .start_run(
                "rita",
                "select AREA_CODE, COUNT(*) from council.clients group by area_code",
                "2026-01-01",
                "q-2",
            )
            .unwrap();
        assert_eq!(run.request.id, r.id);
        // Someone else's identical SQL is not covered.
        assert!(store.start_run("ralph", SQL, "2026-01-01", "q-3").is_err());
    }

    #[test]
    fn expiry_run_limits_and_revocation_hold() {
        let (_dir, store) = store();
        let r = store
            .submit("rita", &new(Some(2), Some("2026-06-30")))
            .unwrap();
        store.decide(r.id, "gus", "approve", None).unwrap();
        store.decide(r.id, "gina", "approve", None).unwrap();
        let failed = store.start_run("rita", SQL, "2026-06-01", "q-1").unwrap();
        store.finish_run(failed.id, false).unwrap();
        for q in ["q-2", "q-3"] {
            let run = store.start_run("rita", SQL, "2026-06-01", q).unwrap();
            store.finish_run(run.id, true).unwrap();
        }
        let err = store
            .start_run("rita", SQL, "2026-06-01", "q-4")
            .unwrap_err();
        assert!(err.to_string().contains("all its 2 runs"), "{err}");

        let r2 = store
            .submit("rita", &new(None, Some("2026-06-30")))
            .unwrap();
        store.decide(r2.id, "gus", "approve", None).unwrap();
        store.decide(r2.id, "gina", "approve", None).unwrap();
        let err = store
            .start_run("rita", SQL, "2026-07-01", "q-5")
            .unwrap_err();
        assert!(err.to_string().contains("expired on 2026-06-30"), "{err}");
        store.start_run("rita", SQL, "2026-06-30", "q-6").unwrap();
        store
            .decide(r2.id, "gus", "revoke", Some("consent withdrawn"))
            .unwrap();
        let err = store
            .start_run("rita", SQL, "2026-06-30", "q-7")
            .unwrap_err();
        assert!(err.to_string().contains("is revoked"), "{err}");
    }

    #[test]
    fn expiry_dates_are_compared_as_dates_whatever_their_padding() {
        let (_dir, store) = store();
        let r = store.submit("rita", &new(None, Some("2026-2-1"))).unwrap();
        assert_eq!(r.expires_on.as_deref(), Some("2026-02-01"));
        store.decide(r.id, "gus", "approve", None).unwrap();
        store.decide(r.id, "gina", "approve", None).unwrap();
        store.start_run("rita", SQL, "2026-01-31", "q-1").unwrap();
        let err = store
            .start_run("rita", SQL, "2026-12-01", "q-2")
            .unwrap_err();
        assert!(err.to_string().contains("expired on 2026-02-01"), "{err}");
        let err = store
            .submit("rita", &new(None, Some("2026-02-30")))
            .unwrap_err();
        assert!(
            err.to_string().contains("\"2026-02-30\" is not a date"),
            "{err}"
        );
    }

    #[test]
    fn state_survives_reopening_and_interrupted_runs_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.sqlite");
        let id = {
            let store = RequestStore::open(&path).unwrap();
            let r = store.submit("rita", &new(Some(1), None)).unwrap();
            store.decide(r.id, "gus", "approve", None).unwrap();
            store.decide(r.id, "gina", "approve", None).unwrap();
            store.start_run("rita", SQL, "2026-01-01", "q-1").unwrap();
            r.id
        };
        let store = RequestStore::open(&path).unwrap();
        let r = store.get(id).unwrap();
        assert_eq!(r.status, "approved");
        assert_eq!(r.decisions.len(), 2);
        assert_eq!(
            r.runs_used, 0,
            "the run under way when it stopped is interrupted"
        );
        store.start_run("rita", SQL, "2026-01-01", "q-2").unwrap();
    }

    #[test]
    fn changes_requested_and_rejected_requests_do_not_run() {
        let (_dir, store) = store();
        let r = store.submit("rita", &new(None, None)).unwrap();
        store
            .decide(r.id, "gus", "request-changes", Some("narrow the areas"))
            .unwrap();
        let err = store.start_run("rita", SQL, "2026-01-01", "q").unwrap_err();
        assert!(err.to_string().contains("changes-requested"), "{err}");
        store.decide(r.id, "gina", "reject", None).unwrap();
        let err = store.decide(r.id, "gina", "approve", None).unwrap_err();
        assert!(err.to_string().contains("is rejected"), "{err}");
        assert!(matches!(
            store.get(999),
            Err(GovernanceError::NoSuchRequest(999))
        ));
        assert!(
            store
                .submit(
                    "rita",
                    &NewRequest {
                        sql: "DROP".into(),
                        ..new(None, None)
                    }
                )
                .is_err()
        );
    }
}
