//! `last_query`: a view any SQL client can read of its session's previous
//! query's coverage manifest and disclosure report (which other clients
//! get in the result's schema metadata). A partial answer is unmistakable:
//! `partial` is true and `missing_nodes` names the nodes left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemTable, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, Session,
};
use datafusion::common::Result;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// The view's name, in the default schema.
pub const TABLE: &str = "last_query";
/// The session report's keys.
pub const QUERY_ID: &str = "query_id";

/// The view: one row (none before the session's first query).
#[derive(Debug)]
pub struct LastQuery(MemTable);

impl LastQuery {
    /// The view of `report` (query id and result metadata by key).
    pub fn new(
        report: &BTreeMap<String, String>,
        coverage_key: &str,
        disclosure_key: &str,
    ) -> Result<Self> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("query_id", DataType::Utf8, false),
            Field::new("partial", DataType::Boolean, false),
            Field::new("missing_nodes", DataType::Utf8, false),
            Field::new("coverage", DataType::Utf8, false),
            Field::new("disclosure", DataType::Utf8, true),
        ]));
        let mut batches = Vec::new();
        if let (Some(id), Some(coverage)) = (report.get(QUERY_ID), report.get(coverage_key)) {
            let missing = missing_nodes(coverage);
            batches.push(RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![id.as_str()])),
                    Arc::new(BooleanArray::from(vec![!missing.is_empty()])),
                    Arc::new(StringArray::from(vec![missing.join(", ")])),
                    Arc::new(StringArray::from(vec![coverage.as_str()])),
                    Arc::new(StringArray::from(vec![
                        report.get(disclosure_key).map(String::as_str),
                    ])),
                ],
            )?);
        }
        Ok(Self(MemTable::try_new(schema, vec![batches])?))
    }
}

/// The nodes a coverage manifest (`{"node": {"status": ...}}`) says are
/// missing from the answer.
pub fn missing_nodes(coverage: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(coverage)
        .ok()
        .and_then(|v| {
            v.as_object().map(|nodes| {
                nodes
                    .iter()
                    .filter(|(_, n)| n["status"] != "ok")
                    .map(|(name, _)| name.clone())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[async_trait]
impl TableProvider for LastQuery {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

/// A session's catalog: the shared node catalog, plus a default schema
/// holding the session's `last_query` view.
#[derive(Debug)]
pub struct SessionCatalog {
    shared: Arc<MemoryCatalogProvider>,
    default_schema: String,
    own: Arc<MemorySchemaProvider>,
}

impl SessionCatalog {
    /// `shared` with `view` as `<default_schema>.last_query`.
    pub fn new(
        shared: Arc<MemoryCatalogProvider>,
        default_schema: &str,
        view: LastQuery,
    ) -> Result<Self> {
        let own = Arc::new(MemorySchemaProvider::new());
        own.register_table(TABLE.to_string(), Arc::new(view))?;
        Ok(Self {
            shared,
            default_schema: default_schema.to_string(),
            own,
        })
    }
}

impl CatalogProvider for SessionCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.shared.schema_names();
        names.push(self.default_schema.clone());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == self.default_schema {
            Some(self.own.clone())
        } else {
            self.shared.schema(name)
        }
    }
}
