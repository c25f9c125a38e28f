//! An append-only audit log that is also a transparency log: one JSON
//! record a line, hash-chained, each record a leaf of a Merkle tree (RFC
//! 6962 hashing) and each carrying its service's signed checkpoint of the
//! tree up to and including it.
//!
//! A record is `{"seq", "time", "prev", "body", "hash", "checkpoint"}`:
//! `hash` is the hex SHA-256 of `{"seq", "time", "prev", "body"}` serialised
//! as JSON with sorted keys (that serialisation is also the Merkle leaf),
//! `prev` the previous record's `hash` (64 zeros for the first), and
//! `checkpoint` the text form of a [`Checkpoint`] of size `seq`. Editing,
//! deleting or reordering a line breaks the chain; re-hashing a rewritten
//! log breaks the signatures; truncating it, or rewriting it with the key,
//! contradicts the checkpoints the other side recorded (see
//! [`crate::reconcile`]).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::GovernanceError;
use crate::checkpoint::{AuditKey, Checkpoint, fingerprint};
use crate::merkle::{Frontier, Hash, leaf_hash};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (`GENESIS` when empty).
    pub head: String,
    /// Query ids recorded as started with no outcome after: the process
    /// stopped (was killed, crashed) while running them.
    pub unfinished: Vec<String>,
    /// The last record's signed checkpoint (none when empty).
    pub checkpoint: Option<Checkpoint>,
}

/// Where an appended record landed.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The record's hash, the log's new head.
    pub hash: String,
    /// The log's signed checkpoint including the record.
    pub checkpoint: Checkpoint,
}

/// A verified log with its Merkle leaves, for consistency proofs.
#[derive(Debug)]
pub struct VerifiedLog {
    pub report: ChainReport,
    /// The leaf hash of each record, in order.
    pub leaves: Vec<Hash>,
}

struct Tail {
    file: File,
    next_seq: u64,
    head: String,
    tree: Frontier,
    checkpoint: Option<Checkpoint>,
}

/// An open audit log, appended to under a lock.
pub struct AuditLog {
    path: PathBuf,
    origin: String,
    key: AuditKey,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

/// The canonical serialisation of a record's content: hashed into the
/// chain and the Merkle leaf.
fn content_of(seq: u64, time: &str, prev: &str, body: &Value) -> String {
    // serde_json's map keeps keys sorted, so this serialisation is canonical.
    json!({ "seq": seq, "time": time, "prev": prev, "body": body }).to_string()
}

impl AuditLog {
    /// Opens (or creates) `origin`'s log at `path`, signing with `key`,
    /// after verifying what is already there. A broken log, or one signed
    /// by another key or service, is refused: appending to it would hide
    /// the break.
    pub fn open(path: &Path, origin: &str, key: AuditKey) -> Result<Self, GovernanceError> {
        let io = |source| GovernanceError::AuditIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let (report, tree) = if path.exists() {
            // Every chain link and Merkle root, and the signature of the
            // last checkpoint (which signs the root of everything before
            // it): `verify_file` checks every signature, at its own pace.
            let verified = scan(path, Signatures::Last)?;
            let mut tree = Frontier::default();
            verified.leaves.iter().for_each(|leaf| tree.push(*leaf));
            (verified.report, tree)
        } else {
            (
                ChainReport {
                    records: 0,
                    head: GENESIS.into(),
                    unfinished: vec![],
                    checkpoint: None,
                },
                Frontier::default(),
            )
        };
        if let Some(last) = &report.checkpoint {
            if last.key != key.public() {
                return Err(GovernanceError::Invalid(format!(
                    "audit log {} is signed with key {}, but its key file holds key {}: \
                     restore the key file, or start a new log",
                    path.display(),
                    fingerprint(&last.key),
                    fingerprint(&key.public())
                )));
            }
            if last.origin != origin {
                return Err(GovernanceError::Invalid(format!(
                    "audit log {} is the log of {:?}, not of {origin:?}",
                    path.display(),
                    last.origin
                )));
            }
        }
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
            origin: origin.to_string(),
            key,
            tail: Mutex::new(Tail {
                file,
                next_seq: report.records + 1,
                head: report.head,
                tree,
                checkpoint: report.checkpoint,
            }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record with `body`, flushed to disk; returns its hash and checkpoint.
    pub fn append(&self, body: Value) -> Result<Appended, GovernanceError> {
        let mut tail = self.lock();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let seq = tail.next_seq;
        let content = content_of(seq, &time, &tail.head, &body);
        let hash = hex::encode(Sha256::digest(content.as_bytes()));
        let mut tree = tail.tree.clone();
        tree.push(leaf_hash(content.as_bytes()));
        let checkpoint = Checkpoint::sign(&self.key, &self.origin, seq, tree.root());
        let record = json!({
            "seq": seq, "time": time, "prev": tail.head, "body": body, "hash": hash,
            "checkpoint": checkpoint.to_text(),
        });
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
        tail.tree = tree;
        tail.checkpoint = Some(checkpoint.clone());
        Ok(Appended { hash, checkpoint })
    }

    /// The current head hash.
    pub fn head(&self) -> String {
        self.lock().head.clone()
    }

    /// The latest signed checkpoint (none while the log is empty).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.lock().checkpoint.clone()
    }

    /// Number of records.
    pub fn records(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// The public key the log is signed with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Verifies the log in `path`: chain, Merkle checkpoints and signatures,
/// naming the first broken record if any.
pub fn verify_file(path: &Path) -> Result<ChainReport, GovernanceError> {
    verify_log(path).map(|v| v.report)
}

/// [`verify_file`], keeping each record's Merkle leaf hash.
pub fn verify_log(path: &Path) -> Result<VerifiedLog, GovernanceError> {
    scan(path, Signatures::Every)
}

/// Which checkpoint signatures a scan verifies (Ed25519 verification costs
/// far more than the hashing).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signatures {
    Every,
    Last,
}

fn scan(path: &Path, signatures: Signatures) -> Result<VerifiedLog, GovernanceError> {
    let file = File::open(path).map_err(|source| GovernanceError::AuditIo {
        path: path.to_path_buf(),
        source,
    })?;
    let mut prev = GENESIS.to_string();
    let mut started: Vec<String> = Vec::new();
    let mut tree = Frontier::default();
    let mut leaves = Vec::new();
    let mut last: Option<Checkpoint> = None;
    let mut last_line = 0;
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
        let broken = |reason: String| broken(seq_text.clone(), reason);
        let field = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
        let (Some(seq), Some(time), Some(record_prev), Some(hash), Some(body), Some(signed)) = (
            seq,
            field("time"),
            field("prev"),
            field("hash"),
            record.get("body"),
            field("checkpoint"),
        ) else {
            return Err(broken(
                "missing seq, time, prev, hash, body or checkpoint".into(),
            ));
        };
        let expected = tree.size() + 1;
        if seq != expected {
            return Err(broken(format!(
                "expected record {expected} here: a record was removed or moved"
            )));
        }
        if record_prev != prev {
            return Err(broken(
                "its `prev` does not match the hash of the record before it".into(),
            ));
        }
        let content = content_of(seq, &time, &record_prev, body);
        if hex::encode(Sha256::digest(content.as_bytes())) != hash {
            return Err(broken(
                "its contents do not match its hash: the record was edited".into(),
            ));
        }
        let leaf = leaf_hash(content.as_bytes());
        tree.push(leaf);
        leaves.push(leaf);
        let checkpoint = Checkpoint::parse(&signed).map_err(|e| broken(e.to_string()))?;
        check_checkpoint(&checkpoint, seq, &tree.root(), last.as_ref()).map_err(&broken)?;
        if signatures == Signatures::Every && !checkpoint.signature_holds() {
            return Err(broken(FORGED.into()));
        }
        if let Some(query) = body["query_id"].as_str() {
            match body["phase"].as_str() {
                Some(PHASE_STARTED) => started.push(query.to_string()),
                Some(PHASE_FINISHED) => started.retain(|q| q != query),
                _ => {}
            }
        }
        prev = hash;
        last = Some(checkpoint);
        last_line = index + 1;
    }
    if signatures == Signatures::Last
        && let Some(checkpoint) = &last
        && !checkpoint.signature_holds()
    {
        return Err(GovernanceError::BrokenChain {
            path: path.to_path_buf(),
            line: last_line,
            seq: checkpoint.size.to_string(),
            reason: FORGED.into(),
        });
    }
    Ok(VerifiedLog {
        report: ChainReport {
            records: tree.size(),
            head: prev,
            unfinished: started,
            checkpoint: last,
        },
        leaves,
    })
}

const FORGED: &str = "its checkpoint's signature does not verify: a forged checkpoint";

/// Why a record's checkpoint is not the signed root of the log up to it,
/// by the same key and service as the record before.
fn check_checkpoint(
    checkpoint: &Checkpoint,
    seq: u64,
    root: &Hash,
    before: Option<&Checkpoint>,
) -> Result<(), String> {
    if checkpoint.size != seq || checkpoint.root != *root {
        return Err(format!(
            "its checkpoint (size {}) is not the Merkle root of the log's first {seq} records: \
             the log was rewritten",
            checkpoint.size
        ));
    }
    if let Some(before) = before {
        if before.key != checkpoint.key {
            return Err(format!(
                "its checkpoint is signed by key {}, the records before it by key {}: \
                 records were re-signed",
                fingerprint(&checkpoint.key),
                fingerprint(&before.key)
            ));
        }
        if before.origin != checkpoint.origin {
            return Err(format!(
                "its checkpoint names log {:?}, the records before it {:?}",
                checkpoint.origin, before.origin
            ));
        }
    }
    Ok(())
}

/// The `phase` of a record written before a statement runs.
pub const PHASE_STARTED: &str = "started";
/// The `phase` of the record of a statement's outcome.
pub const PHASE_FINISHED: &str = "finished";

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &Path) -> AuditKey {
        AuditKey::load_or_create(&dir.join("audit.key")).unwrap()
    }

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, "test", key_in(dir.path())).unwrap();
        let mut head = String::new();
        for i in 0..n {
            head = log
                .append(json!({ "query": i, "rows": i * 10 }))
                .unwrap()
                .hash;
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

    fn write(path: &Path, lines: &[String]) {
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// Rewrites `records` as a consistent chain (seq, prev, hash) keeping
    /// each record's old checkpoint: what an editor without the key can do.
    fn rehash(records: &[String]) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        records
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut r: Value = serde_json::from_str(line).unwrap();
                let seq = i as u64 + 1;
                let content = content_of(seq, r["time"].as_str().unwrap(), &prev, &r["body"]);
                let hash = hex::encode(Sha256::digest(content.as_bytes()));
                r["seq"] = json!(seq);
                r["prev"] = json!(prev);
                r["hash"] = json!(hash);
                prev = hash;
                r.to_string()
            })
            .collect()
    }

    #[test]
    fn intact_log_verifies_and_reopens_at_its_head() {
        let (dir, path, head) = log_with(5);
        let report = verify_file(&path).unwrap();
        assert_eq!((report.records, &report.head), (5, &head));
        assert!(report.unfinished.is_empty());
        let checkpoint = report.checkpoint.unwrap();
        assert_eq!((checkpoint.origin.as_str(), checkpoint.size), ("test", 5));
        assert_eq!(checkpoint.key, key_in(dir.path()).public());
        let log = AuditLog::open(&path, "test", key_in(dir.path())).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(log.checkpoint(), Some(checkpoint));
        log.append(json!({ "query": 5 })).unwrap();
        let report = verify_file(&path).unwrap();
        assert_eq!((report.records, report.checkpoint.unwrap().size), (6, 6));
    }

    #[test]
    fn edit_delete_and_reorder_are_named() {
        let (_dir, path, _) = log_with(5);
        let original = lines(&path);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"rows\":20", "\"rows\":2");
        write(&path, &edited);
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3 (record 3)") && err.contains("edited"),
            "{err}"
        );

        let mut deleted = original.clone();
        deleted.remove(1);
        write(&path, &deleted);
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2 (record 3)") && err.contains("removed or moved"),
            "{err}"
        );

        let mut reordered = original.clone();
        reordered.swap(3, 4);
        write(&path, &reordered);
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 4 (record 5)"), "{err}");

        // Removing the last records is invisible to the log alone; the
        // checkpoints the other side holds catch it (`reconcile`).
        let mut truncated = original.clone();
        truncated.pop();
        write(&path, &truncated);
        assert_eq!(verify_file(&path).unwrap().records, 4);
    }

    #[test]
    fn a_rehashed_rewrite_breaks_the_checkpoints() {
        let (_dir, path, _) = log_with(6);
        let mut records = lines(&path);
        records.remove(2);
        write(&path, &rehash(&records));
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3 (record 3)") && err.contains("the log was rewritten"),
            "{err}"
        );
    }

    #[test]
    fn forged_and_foreign_checkpoints_are_named() {
        let (_dir, path, _) = log_with(4);
        let original = lines(&path);
        let checkpoint_of = |line: &str| {
            let r: Value = serde_json::from_str(line).unwrap();
            Checkpoint::parse(r["checkpoint"].as_str().unwrap()).unwrap()
        };
        let with_checkpoint = |line: &str, cp: &Checkpoint| {
            let mut r: Value = serde_json::from_str(line).unwrap();
            r["checkpoint"] = json!(cp.to_text());
            r.to_string()
        };

        let mut forged = original.clone();
        let mut cp = checkpoint_of(&forged[1]);
        cp.signature[0] ^= 1;
        forged[1] = with_checkpoint(&forged[1], &cp);
        write(&path, &forged);
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2 (record 2)") && err.contains("forged checkpoint"),
            "{err}"
        );

        // The right root signed by another key.
        let mut foreign = original.clone();
        let cp = checkpoint_of(&foreign[2]);
        let other = Checkpoint::sign(&AuditKey::generate(), "test", cp.size, cp.root);
        foreign[2] = with_checkpoint(&foreign[2], &other);
        write(&path, &foreign);
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3 (record 3)") && err.contains("re-signed"),
            "{err}"
        );
    }

    #[test]
    fn opening_checks_every_root_and_the_last_signature() {
        let (dir, path, _) = log_with(3);
        let mut records = lines(&path);
        let mut last: Value = serde_json::from_str(&records[2]).unwrap();
        let mut cp = Checkpoint::parse(last["checkpoint"].as_str().unwrap()).unwrap();
        cp.signature[3] ^= 4;
        last["checkpoint"] = json!(cp.to_text());
        records[2] = last.to_string();
        write(&path, &records);
        let err = AuditLog::open(&path, "test", key_in(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("forged checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn a_log_is_not_reopened_with_another_key_or_name() {
        let (dir, path, _) = log_with(2);
        let err = AuditLog::open(&path, "test", AuditKey::generate())
            .unwrap_err()
            .to_string();
        assert!(err.contains("restore the key file"), "{err}");
        let err = AuditLog::open(&path, "gp", key_in(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not of \"gp\""), "{err}");
    }

    #[test]
    fn a_broken_log_is_not_appended_to() {
        let (dir, path, _) = log_with(3);
        let mut edited = lines(&path);
        edited[0] = edited[0].replace("\"query\":0", "\"query\":9");
        write(&path, &edited);
        let err = AuditLog::open(&path, "test", key_in(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
