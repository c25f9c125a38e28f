//! The linkage token table: for each person record the node publishes (one
//! row per distinct identity, opt-outs removed), its `pid` and its field
//! tokens for the project. Only the coordinator's linkage stage may read
//! it (a caller with the coordinator role asking with the linkage header);
//! no user query can, and it is never part of the catalog.

use std::collections::HashSet;
use std::sync::Arc;

use carrow_linkage::fields::{Field, FieldTokeniser, FieldTokens};
use carrow_linkage::{IdentifierColumns, TOKEN_LEN, Token};
use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, ListBuilder, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::publish::{IDENTITY_KINDS, PublishedTable};

/// Name of the token table in a linkage session.
pub const TOKEN_TABLE: &str = "carrow_linkage_tokens";

/// The token table's schema: `pid`, one column per field, two variant lists.
pub fn schema() -> SchemaRef {
    let token = DataType::FixedSizeBinary(TOKEN_LEN as i32);
    let mut fields = vec![ArrowField::new("pid", token.clone(), false)];
    for field in Field::ALL {
        if field.is_list() {
            fields.push(ArrowField::new(
                field.name(),
                DataType::List(Arc::new(ArrowField::new("item", token.clone(), true))),
                true,
            ));
        } else {
            fields.push(ArrowField::new(field.name(), token.clone(), true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// Computes the token table of `tables` (their identities) with `tokeniser`.
pub async fn token_table(
    tables: &[Arc<PublishedTable>],
    tokeniser: &FieldTokeniser,
) -> Result<RecordBatch> {
    let mut seen: HashSet<(Token, FieldTokens)> = HashSet::new();
    let mut rows: Vec<(Token, FieldTokens)> = Vec::new();
    let ctx = SessionContext::new();
    for table in tables {
        let Some(plan) = &table.identities else {
            continue;
        };
        let batches = DataFrame::new(ctx.state(), plan.clone()).collect().await?;
        for batch in batches {
            let pids = batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .expect("pid is FixedSizeBinary(16)");
            // Columns after pid are the identifiers in IDENTITY_KINDS order.
            let identifiers = IDENTITY_KINDS
                .iter()
                .enumerate()
                .fold(IdentifierColumns::default(), |ids, (i, kind)| {
                    ids.with(*kind, batch.column(i + 1).clone())
                });
            identifiers
                .for_each_identity(|row, identity| {
                    if pids.is_null(row) {
                        return;
                    }
                    let mut pid = [0u8; TOKEN_LEN];
                    pid.copy_from_slice(pids.value(row));
                    let entry = (pid, tokeniser.tokens(identity));
                    if seen.insert(entry.clone()) {
                        rows.push(entry);
                    }
                })
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
    }
    to_batch(&rows)
}

fn to_batch(rows: &[(Token, FieldTokens)]) -> Result<RecordBatch> {
    let schema = schema();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut pid = FixedSizeBinaryBuilder::with_capacity(rows.len(), TOKEN_LEN as i32);
    for (p, _) in rows {
        pid.append_value(p)?;
    }
    columns.push(Arc::new(pid.finish()));
    for field in Field::ALL {
        if field.is_list() {
            let mut list = ListBuilder::new(FixedSizeBinaryBuilder::new(TOKEN_LEN as i32));
            for (_, tokens) in rows {
                let values = tokens.list(field);
                for v in values {
                    list.values().append_value(v)?;
                }
                list.append(!values.is_empty());
            }
            columns.push(Arc::new(list.finish()));
        } else {
            let mut column = FixedSizeBinaryBuilder::with_capacity(rows.len(), TOKEN_LEN as i32);
            for (_, tokens) in rows {
                match tokens.get(field) {
                    Some(t) => column.append_value(t)?,
                    None => column.append_null(),
                }
            }
            columns.push(Arc::new(column.finish()));
        }
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}
