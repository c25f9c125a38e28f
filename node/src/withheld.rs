//! Records withheld for objections recorded at other organisations: the
//! coordinator links the national data opt-out registers some nodes hold
//! to every node's records and tells each node which of its own `pid`s
//! belong to opted-out persons for a project. The node keeps that list (on
//! disk, so a restart keeps it) and removes those records at its boundary,
//! for every caller, as it removes its own opt-outs. The node never learns
//! which organisation recorded the objection.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use carrow_linkage::{TOKEN_LEN, Token};
use datafusion::arrow::array::{Array, BooleanArray, FixedSizeBinaryArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::publish::AccessRecorder;

/// The Flight action by which the coordinator sends a project's list.
pub const ACTION: &str = "carrow.withhold";

/// The action's body, and the file the node keeps.
#[derive(Debug, Serialize, Deserialize)]
pub struct WithheldList {
    pub project: String,
    /// The version of the registers and linkage the list was made from.
    pub version: String,
    /// The node's pids of opted-out persons, as hex.
    pub pids: Vec<String>,
}

/// One project's withheld pids at this node.
#[derive(Debug)]
pub struct Withheld {
    path: PathBuf,
    state: RwLock<(Option<String>, HashSet<Token>)>,
    /// Versions this node held before the current one, newest last: a
    /// fragment planned under one of them meets a newer list, never an
    /// older one.
    superseded: RwLock<std::collections::VecDeque<String>>,
}

/// How many superseded versions a node remembers.
const SUPERSEDED_KEPT: usize = 16;

impl Withheld {
    /// The list kept at `path` (empty, with no version, when there is none yet).
    pub fn load(path: PathBuf) -> Result<Self, NodeError> {
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let list: WithheldList = serde_json::from_str(&text).map_err(|e| {
                    NodeError::Withheld(format!("{}: not a withheld list: {e}", path.display()))
                })?;
                (Some(list.version.clone()), parse_pids(&list.pids)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, HashSet::new()),
            Err(e) => {
                return Err(NodeError::Withheld(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Self {
            path,
            state: RwLock::new(state),
            superseded: RwLock::default(),
        })
    }

    /// The file of `project`'s list beside `audit_log`.
    pub fn path_for(audit_log: &Path, project: &str) -> PathBuf {
        audit_log
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("withheld-{project}.json"))
    }

    /// The version of the list in force, if the coordinator sent one.
    pub fn version(&self) -> Option<String> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Whether a fragment planned under `version` may run here: this node
    /// holds that list or a newer one (a list the coordinator sent after).
    pub fn covers(&self, version: &str) -> bool {
        self.version().as_deref() == Some(version)
            || self
                .superseded
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|v| v == version)
    }

    /// How many pids the list holds.
    pub fn len(&self) -> usize {
        self.state.read().unwrap_or_else(|p| p.into_inner()).1.len()
    }

    /// Whether the list holds no pid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the list, on disk first (written whole, then renamed, so a
    /// crash leaves the old list or the new one). Blocking: call off the
    /// async workers.
    pub fn replace(&self, list: &WithheldList) -> Result<usize, NodeError> {
        let pids = parse_pids(&list.pids)?;
        let text = serde_json::to_string(list).map_err(|e| NodeError::Withheld(e.to_string()))?;
        let temp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        };
        write().map_err(|e| {
            NodeError::Withheld(format!("cannot write {}: {e}", self.path.display()))
        })?;
        let n = pids.len();
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            (Some(list.version.clone()), pids),
        );
        if let Some(version) = old.0 {
            let mut superseded = self.superseded.write().unwrap_or_else(|p| p.into_inner());
            superseded.push_back(version);
            if superseded.len() > SUPERSEDED_KEPT {
                superseded.pop_front();
            }
        }
        Ok(n)
    }

    fn contains(&self, pid: &[u8]) -> bool {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        pid.try_into().is_ok_and(|t: Token| state.1.contains(&t))
    }
}

fn parse_pids(pids: &[String]) -> Result<HashSet<Token>, NodeError> {
    pids.iter()
        .enumerate()
        .map(|(i, hex_pid)| {
            let bytes = hex::decode(hex_pid).ok().filter(|b| b.len() == TOKEN_LEN);
            bytes
                .map(|b| {
                    let mut t = [0u8; TOKEN_LEN];
                    t.copy_from_slice(&b);
                    t
                })
                .ok_or_else(|| NodeError::Withheld(format!("pid {i} is not {TOKEN_LEN} hex bytes")))
        })
        .collect()
}

/// What a [`WithholdFunction`] tests each row for.
#[derive(Debug)]
enum Test {
    /// Its pid is on the list of persons who objected elsewhere.
    Listed(Arc<Withheld>),
    /// Its flag says the person objected here (null: no).
    Flagged,
}

/// `carrow_withhold(pid)` or `carrow_withhold(flag)`: true for a row to
/// withhold, counting those in the query's recorder for the audit log.
/// Embedded in one query's plan, never registered by name.
#[derive(Debug)]
pub struct WithholdFunction {
    test: Test,
    recorder: Arc<AccessRecorder>,
    signature: Signature,
}

impl WithholdFunction {
    /// True for pids on `withheld`'s list, counting into `recorder`.
    pub fn listed(withheld: Arc<Withheld>, recorder: Arc<AccessRecorder>) -> Arc<ScalarUDF> {
        let pid = DataType::FixedSizeBinary(TOKEN_LEN as i32);
        Self::udf(Test::Listed(withheld), pid, recorder)
    }

    /// True where the flag is, counting into `recorder`.
    pub fn flagged(recorder: Arc<AccessRecorder>) -> Arc<ScalarUDF> {
        Self::udf(Test::Flagged, DataType::Boolean, recorder)
    }

    fn udf(test: Test, argument: DataType, recorder: Arc<AccessRecorder>) -> Arc<ScalarUDF> {
        let signature = Signature::exact(vec![argument], Volatility::Volatile);
        Arc::new(ScalarUDF::from(Self {
            test,
            recorder,
            signature,
        }))
    }
}

impl PartialEq for WithholdFunction {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for WithholdFunction {}
impl Hash for WithholdFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.recorder).hash(state);
    }
}

impl ScalarUDFImpl for WithholdFunction {
    fn name(&self) -> &str {
        "carrow_withhold"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let wrong = || DataFusionError::Internal("carrow_withhold: unexpected argument".into());
        let withhold: BooleanArray = match &self.test {
            Test::Listed(withheld) => {
                let pids = arrays[0]
                    .as_any()
                    .downcast_ref::<FixedSizeBinaryArray>()
                    .ok_or_else(wrong)?;
                (0..pids.len())
                    .map(|i| Some(!pids.is_null(i) && withheld.contains(pids.value(i))))
                    .collect()
            }
            Test::Flagged => {
                let flags = arrays[0]
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(wrong)?;
                (0..flags.len())
                    .map(|i| Some(flags.is_valid(i) && flags.value(i)))
                    .collect()
            }
        };
        let count = withhold.true_count() as u64;
        if count > 0 {
            self.recorder.count_withheld(count);
        }
        Ok(ColumnarValue::Array(Arc::new(withhold)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_list_is_kept_on_disk_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = Withheld::path_for(&dir.path().join("audit.jsonl"), "demo");
        let withheld = Withheld::load(path.clone()).unwrap();
        assert_eq!(withheld.version(), None);
        let pid = [7u8; TOKEN_LEN];
        let n = withheld
            .replace(&WithheldList {
                project: "demo".into(),
                version: "v1".into(),
                pids: vec![hex::encode(pid)],
            })
            .unwrap();
        assert_eq!(n, 1);
        assert!(withheld.contains(&pid));
        // A newer list covers fragments planned under the older one.
        withheld
            .replace(&WithheldList {
                project: "demo".into(),
                version: "v2".into(),
                pids: vec![],
            })
            .unwrap();
        assert!(withheld.covers("v1") && withheld.covers("v2") && !withheld.covers("v3"));
        assert!(!withheld.contains(&pid));
        let again = Withheld::load(path).unwrap();
        assert_eq!(again.version().as_deref(), Some("v2"));
        assert!(!again.contains(&pid));
    }

    #[test]
    fn a_bad_pid_is_refused_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let withheld = Withheld::load(dir.path().join("w.json")).unwrap();
        let err = withheld
            .replace(&WithheldList {
                project: "demo".into(),
                version: "v1".into(),
                pids: vec![hex::encode([1u8; TOKEN_LEN]), "zz".into()],
            })
            .unwrap_err();
        assert!(err.to_string().contains("pid 1"), "{err}");
        assert_eq!(withheld.version(), None);
    }
}
