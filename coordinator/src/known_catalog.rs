//! The last catalog each node gave, kept in the state directory, so a node
//! that is down when the coordinator starts is known by its tables: a query
//! needing it fails with "node X unreachable" (or, with `allow_partial`,
//! is answered without it), never with "table not found".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_flight::{IpcMessage, SchemaAsIpc};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::convert::try_schema_from_ipc_buffer;
use datafusion::arrow::ipc::writer::IpcWriteOptions;

/// The file in the state directory.
pub const FILE: &str = "catalog.json";

/// Per node, its tables and their schemas.
pub type Tables = Vec<(String, SchemaRef)>;

/// The known catalogs, and where they are kept.
#[derive(Debug)]
pub struct KnownCatalog {
    path: PathBuf,
    nodes: std::sync::Mutex<BTreeMap<String, Tables>>,
}

impl KnownCatalog {
    /// Reads `state_dir/catalog.json`; a missing or unreadable file is an
    /// empty catalog (logged), never a failure to start.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let nodes = match std::fs::read_to_string(&path) {
            Ok(text) => match decode(&text) {
                Ok(nodes) => nodes,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the known node catalog is unreadable; starting without it");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Self {
            path,
            nodes: std::sync::Mutex::new(nodes),
        }
    }

    /// The tables `node` last gave, if any.
    pub fn tables(&self, node: &str) -> Option<Tables> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// Records what `node` gave now and writes the file (atomically: a
    /// temporary file renamed over it) when it changed.
    pub fn remember(&self, node: &str, tables: &Tables) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.get(node) == Some(tables) {
            return;
        }
        nodes.insert(node.to_string(), tables.clone());
        let text = encode(&nodes);
        let temporary = self.path.with_extension("json.tmp");
        if let Err(e) =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &self.path))
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the node catalog");
        }
    }
}

fn encode(nodes: &BTreeMap<String, Tables>) -> String {
    let json: serde_json::Map<String, serde_json::Value> = nodes
        .iter()
        .map(|(node, tables)| {
            let tables: Vec<serde_json::Value> = tables
                .iter()
                .map(|(name, schema)| {
                    let message: Result<IpcMessage, _> =
                        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
                    serde_json::json!({
                        "table": name,
                        "schema": message.map(|m| hex::encode(&m.0)).unwrap_or_default(),
                    })
                })
                .collect();
            (node.clone(), serde_json::Value::Array(tables))
        })
        .collect();
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

fn decode(text: &str) -> Result<BTreeMap<String, Tables>, String> {
    let json: BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| e.to_string())?;
    json.into_iter()
        .map(|(node, tables)| {
            let tables = tables
                .into_iter()
                .map(|t| {
                    let name = t["table"].as_str().ok_or("a table without a name")?;
                    let bytes = hex::decode(t["schema"].as_str().unwrap_or_default())
                        .map_err(|e| e.to_string())?;
                    let schema: Schema =
                        try_schema_from_ipc_buffer(&bytes).map_err(|e| e.to_string())?;
                    Ok((name.to_string(), Arc::new(schema)))
                })
                .collect::<Result<Tables, String>>()?;
            Ok((node, tables))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn catalogs_survive_a_restart_with_their_schema_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(
            Schema::new(vec![Field::new(
                "pid",
                DataType::FixedSizeBinary(16),
                false,
            )])
            .with_metadata([("carrow.personal".to_string(), "true".to_string())].into()),
        );
        let known = KnownCatalog::open(dir.path());
        assert!(known.tables("gp").is_none());
        known.remember("gp", &vec![("registrations".to_string(), schema.clone())]);
        let again = KnownCatalog::open(dir.path());
        assert_eq!(
            again.tables("gp"),
            Some(vec![("registrations".to_string(), schema)])
        );
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        assert!(KnownCatalog::open(dir.path()).tables("gp").is_none());
    }
}
