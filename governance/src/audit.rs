//! A hash-chained, append-only audit log: one JSON record a line, each
//! holding the hash of the one before, so editing, deleting or reordering a
//! line breaks the chain at that line.
//!
//! A record is `{"seq", "time", "prev", "body", "hash"}` where `hash` is the
//! hex SHA-256 of the record's other fields serialised as JSON with sorted
//! keys, and `prev` is the previous record's `hash` (64 zeros for the first).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::GovernanceError;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a verified chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (`GENESIS` when empty).
    pub head: String,
    /// Query ids recorded as started with no outcome after: the process
    /// stopped (was killed, crashed) while running them.
    pub unfinished: Vec<String>,
}

struct Tail {
    file: File,
    next_seq: u64,
    head: String,
}

/// An open audit log, appended to under a lock.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn hash_of(seq: u64, time: &str, prev: &str, body: &Value) -> String {
    // serde_json's map keeps keys sorted, so this serialisation is canonical.
    let unsigned = json!({ "seq": seq, "time": time, "prev": prev, "body": body });
    hex::encode(Sha256::digest(unsigned.to_string().as_bytes()))
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying the chain already there.
    /// A broken chain is refused: appending to it would hide the break.
    pub fn open(path: &Path) -> Result<Self, GovernanceError> {
        let io = |source| GovernanceError::AuditIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let report = if path.exists() {
            verify_file(path)?
        } else {
            ChainReport {
                records: 0,
                head: GENESIS.into(),
                unfinished: vec![],
            }
        };
        if !report.unfinished.is_empty() {
            tracing::warn!(
                path = %path.display(),
                statements = ?report.unfinished,
                "the audit log holds statements started with no outcome: the process stopped while running them"
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                next_seq: report.records + 1,
                head: report.head,
            }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record with `body`, flushed to disk, and returns the new head hash.
    pub fn append(&self, body: Value) -> Result<String, GovernanceError> {
        let mut tail = self
            .tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let seq = tail.next_seq;
        let hash = hash_of(seq, &time, &tail.head, &body);
        let record =
            json!({ "seq": seq, "time": time, "prev": tail.head, "body": body, "hash": hash });
        let io = |source| GovernanceError::AuditIo {
            path: self.path.clone(),
            source,
        };
        tail.file
            .write_all(format!("{record}\n").as_bytes())
            .map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.next_seq += 1;
        tail.head = hash.clone();
        Ok(hash)
    }

    /// The current head hash.
    pub fn head(&self) -> String {
        self.tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .head
            .clone()
    }
}

/// Verifies the chain in `path`, naming the first broken record if any.
pub fn verify_file(path: &Path) -> Result<ChainReport, GovernanceError> {
    let file = File::open(path).map_err(|source| GovernanceError::AuditIo {
        path: path.to_path_buf(),
        source,
    })?;
    let mut prev = GENESIS.to_string();
    let mut records = 0u64;
    let mut started: Vec<String> = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| GovernanceError::AuditIo {
            path: path.to_path_buf(),
            source,
        })?;
        let broken = |seq: String, reason: String| GovernanceError::BrokenChain {
            path: path.to_path_buf(),
            line: index + 1,
            seq,
            reason,
        };
        let record: Map<String, Value> = serde_json::from_str(&line)
            .map_err(|e| broken("?".into(), format!("not a JSON record: {e}")))?;
        let seq = record.get("seq").and_then(Value::as_u64);
        let seq_text = seq.map_or("?".to_string(), |s| s.to_string());
        let field = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
        let (Some(seq), Some(time), Some(record_prev), Some(hash), Some(body)) = (
            seq,
            field("time"),
            field("prev"),
            field("hash"),
            record.get("body"),
        ) else {
            return Err(broken(
                seq_text,
                "missing seq, time, prev, hash or body".into(),
            ));
        };
        if seq != records + 1 {
            return Err(broken(
                seq_text,
                format!(
                    "expected record {} here: a record was removed or moved",
                    records + 1
                ),
            ));
        }
        if record_prev != prev {
            return Err(broken(
                seq_text,
                "its `prev` does not match the hash of the record before it".into(),
            ));
        }
        if hash_of(seq, &time, &record_prev, body) != hash {
            return Err(broken(
                seq_text,
                "its contents do not match its hash: the record was edited".into(),
            ));
        }
        if let Some(query) = body["query_id"].as_str() {
            match body["phase"].as_str() {
                Some(PHASE_STARTED) => started.push(query.to_string()),
                Some(PHASE_FINISHED) => started.retain(|q| q != query),
                _ => {}
            }
        }
        prev = hash;
        records += 1;
    }
    Ok(ChainReport {
        records,
        head: prev,
        unfinished: started,
    })
}

/// The `phase` of a record written before a statement runs.
pub const PHASE_STARTED: &str = "started";
/// The `phase` of the record of a statement's outcome.
pub const PHASE_FINISHED: &str = "finished";

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let mut head = String::new();
        for i in 0..n {
            head = log.append(json!({ "query": i, "rows": i * 10 })).unwrap();
        }
        (dir, path, head)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn intact_chain_verifies_and_reopens_at_its_head() {
        let (_dir, path, head) = log_with(5);
        assert_eq!(
            verify_file(&path).unwrap(),
            ChainReport {
                records: 5,
                head: head.clone(),
                unfinished: vec![],
            }
        );
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), head);
        log.append(json!({ "query": 5 })).unwrap();
        assert_eq!(verify_file(&path).unwrap().records, 6);
    }

    #[test]
    fn edit_delete_and_reorder_are_named() {
        let (_dir, path, _) = log_with(5);
        let original = lines(&path);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"rows\":20", "\"rows\":2");
        fs::write(&path, edited.join("\n") + "\n").unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3 (record 3)") && err.contains("edited"),
            "{err}"
        );

        let mut deleted = original.clone();
        deleted.remove(1);
        fs::write(&path, deleted.join("\n") + "\n").unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2 (record 3)") && err.contains("removed or moved"),
            "{err}"
        );

        let mut reordered = original.clone();
        reordered.swap(3, 4);
        fs::write(&path, reordered.join("\n") + "\n").unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 4 (record 5)"), "{err}");

        // Removing the last record is invisible to the chain alone; the head
        // hash held elsewhere (the coordinator's log) catches that.
        let mut truncated = original.clone();
        truncated.pop();
        fs::write(&path, truncated.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&path).unwrap().records, 4);
    }

    #[test]
    fn a_broken_log_is_not_appended_to() {
        let (_dir, path, _) = log_with(3);
        let mut edited = lines(&path);
        edited[0] = edited[0].replace("\"query\":0", "\"query\":9");
        fs::write(&path, edited.join("\n") + "\n").unwrap();
        let err = AuditLog::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
