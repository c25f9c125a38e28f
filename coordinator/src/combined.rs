//! Schema `combined`: for every table name published by several nodes, one
//! union table over them with a `node` column saying where each row came
//! from. Filters and projections on it reach every node's scan.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::common::{Column, Result};
use datafusion::datasource::{TableProvider, ViewTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, lit};

use crate::config::COMBINED_SCHEMA;

/// Name of the column saying which node a row of a combined table came from.
pub const NODE_COLUMN: &str = "node";

/// One node's table of a given name: (node, provider).
type NodeTable = (String, Arc<dyn TableProvider>);

/// Builds schema `combined` from the node schemas in `catalog`: a union
/// table for each name that at least two nodes publish with the same columns.
pub async fn build(catalog: &dyn CatalogProvider) -> Result<Arc<MemorySchemaProvider>> {
    let mut by_name: BTreeMap<String, Vec<NodeTable>> = BTreeMap::new();
    for node in catalog.schema_names() {
        if node == COMBINED_SCHEMA {
            continue;
        }
        let Some(schema) = catalog.schema(&node) else {
            continue;
        };
        for table in schema.table_names() {
            if let Some(provider) = schema.table(&table).await? {
                by_name
                    .entry(table)
                    .or_default()
                    .push((node.clone(), provider));
            }
        }
    }
    let combined = Arc::new(MemorySchemaProvider::new());
    for (table, mut parts) in by_name {
        if parts.len() < 2 {
            continue;
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let fields = parts[0].1.schema().fields().clone();
        // Same names and types; nullability may differ (the union is nullable
        // where any part is).
        let shape = |f: &Arc<datafusion::arrow::datatypes::Field>| {
            (f.name().clone(), f.data_type().clone())
        };
        let wanted: Vec<_> = fields.iter().map(shape).collect();
        let differing = parts.iter().find_map(|(node, p)| {
            let got: Vec<_> = p.schema().fields().iter().map(shape).collect();
            (got != wanted).then(|| {
                wanted
                    .iter()
                    .zip(&got)
                    .find(|(w, g)| w != g)
                    .map(|(w, g)| {
                        format!(
                            "{} {} at {}, {} {} at {node}",
                            w.0, w.1, parts[0].0, g.0, g.1
                        )
                    })
                    .unwrap_or_else(|| {
                        format!(
                            "{} columns at {}, {} at {node}",
                            wanted.len(),
                            parts[0].0,
                            got.len()
                        )
                    })
            })
        });
        if let Some(difference) = differing {
            tracing::warn!(%table, nodes = ?parts.iter().map(|p| &p.0).collect::<Vec<_>>(), %difference,
                "nodes publish this table with different columns: no combined table");
            continue;
        }
        let mut union: Option<LogicalPlanBuilder> = None;
        for (node, provider) in parts {
            let mut columns: Vec<Expr> = vec![lit(node.clone()).alias(NODE_COLUMN)];
            columns.extend(
                fields
                    .iter()
                    .map(|f| Expr::Column(Column::new(Some(format!("{node}.{table}")), f.name()))),
            );
            let part = LogicalPlanBuilder::scan(
                format!("{node}.{table}"),
                provider_as_source(provider),
                None,
            )?
            .project(columns)?
            .build()?;
            union = Some(match union {
                None => LogicalPlanBuilder::from(part),
                Some(builder) => builder.union(part)?,
            });
        }
        let plan = union.expect("at least two parts").build()?;
        combined.register_table(table, Arc::new(ViewTable::new(plan, None)))?;
    }
    Ok(combined)
}
