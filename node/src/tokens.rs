//! The linkage token table: for each person record the node publishes (one
//! row per distinct identity, opt-outs removed), its `pid` and its field
//! tokens for the project. Only the coordinator's linkage stage may read
//! it (a caller with the coordinator role asking with the linkage header);
//! no user query can, and it is never part of the catalog.

use std::collections::HashSet;
use std::sync::Arc;

use carrow_linkage::fields::{Field, FieldTokeniser, FieldTokens};
use carrow_linkage::{IdentifierColumns, SharedNumberFinder, TOKEN_LEN, Token, Tokeniser};
use datafusion::arrow::array::{ArrayRef, FixedSizeBinaryBuilder, ListBuilder, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::publish::{IDENTITY_KINDS, PublishedTable};

/// Name of the token table in a linkage session.
pub const TOKEN_TABLE: &str = "carrow_linkage_tokens";

/// Name of the one-row table holding the token table's version: a digest
/// of its rows (in any order), so the coordinator fetches the table again
/// only when it changed.
pub const VERSION_TABLE: &str = "carrow_linkage_tokens_version";

/// Name of the register table in a linkage session: the same columns for
/// the people this node records as having a national data opt-out.
pub const REGISTER_TABLE: &str = "carrow_opt_out_tokens";

/// A computed token table, the opt-out register's, and their version.
#[derive(Debug, Clone)]
pub struct TokenTable {
    pub batch: RecordBatch,
    pub register: RecordBatch,
    pub version: String,
}

impl TokenTable {
    /// The version as a one-row batch (`version`: text).
    pub fn version_batch(&self) -> Result<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![ArrowField::new(
            "version",
            DataType::Utf8,
            false,
        )]));
        let column = datafusion::arrow::array::StringArray::from(vec![self.version.as_str()]);
        Ok(RecordBatch::try_new(schema, vec![Arc::new(column)])?)
    }
}

/// An order-independent digest of the rows: the wrapping sum of each row's
/// SHA-256 (first 128 bits), as hex.
fn version(rows: &[(Token, FieldTokens)]) -> String {
    use sha2::{Digest, Sha256};
    let mut sum = 0u128;
    for (pid, tokens) in rows {
        let mut row = Sha256::new();
        row.update(pid);
        for field in Field::ALL {
            // The field's position and token count keep fields apart.
            row.update([field as u8]);
            if field.is_list() {
                let list = tokens.list(field);
                row.update((list.len() as u32).to_be_bytes());
                list.iter().for_each(|t| row.update(t));
            } else if let Some(t) = tokens.get(field) {
                row.update([1]);
                row.update(t);
            } else {
                row.update([0]);
            }
        }
        let digest = row.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        sum = sum.wrapping_add(u128::from_be_bytes(first));
    }
    format!("{:032x}-{}", sum, rows.len())
}

/// The token table's schema: `pid`, then one column per field (token lists as lists).
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

/// Computes the token table of `tables` (their identities) with
/// `tokeniser`, and first the NHS numbers this node holds for several
/// people, which `pids` (the node's pid tokeniser for the project, shared
/// with its published tables) then passes over. Hashing runs off the async
/// workers, spread over the cores.
pub async fn token_table(
    tables: &[Arc<PublishedTable>],
    tokeniser: &FieldTokeniser,
    pids: &Arc<Tokeniser>,
) -> Result<TokenTable> {
    let ctx = SessionContext::new();
    let (mut batches, mut register) = (Vec::new(), Vec::new());
    for table in tables {
        if let Some(plan) = &table.identities {
            batches.extend(DataFrame::new(ctx.state(), plan.clone()).collect().await?);
        }
        if let Some(plan) = &table.register {
            register.extend(DataFrame::new(ctx.state(), plan.clone()).collect().await?);
        }
    }
    let (tokeniser, pids) = (tokeniser.clone(), pids.clone());
    tokio::task::spawn_blocking(move || {
        let shared = shared_numbers(&batches)?;
        if pids.set_shared_numbers(shared) {
            tracing::warn!(
                numbers = pids.shared_numbers().len(),
                "NHS numbers held here for more than one person (a relative's number on a record): \
                 their records take their next strongest pid"
            );
        }
        let (rows, register) = (
            tokenise(&batches, &tokeniser, &pids)?,
            tokenise(&register, &tokeniser, &pids)?,
        );
        // A change to either table changes the version, so the coordinator
        // links again when a register changes.
        Ok(TokenTable {
            version: format!("{}+{}", version(&rows), version(&register)),
            batch: to_batch(&rows)?,
            register: to_batch(&register)?,
        })
    })
    .await
    .map_err(|e| DataFusionError::External(Box::new(e)))?
}

/// The identifiers of an identities batch (columns after the pid).
fn identifier_columns(batch: &RecordBatch) -> IdentifierColumns {
    IDENTITY_KINDS
        .iter()
        .enumerate()
        .fold(IdentifierColumns::default(), |ids, (i, kind)| {
            ids.with(*kind, batch.column(i + 1).clone())
        })
}

/// The NHS numbers the identities `batches` hold for several people.
fn shared_numbers(batches: &[RecordBatch]) -> Result<carrow_linkage::token::SharedNumbers> {
    let mut finder = SharedNumberFinder::default();
    for batch in batches {
        identifier_columns(batch)
            .for_each_identity(|_, identity| finder.add(identity))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
    }
    Ok(finder.finish())
}

/// One row per distinct (pid, field tokens) of the identities `batches`.
fn tokenise(
    batches: &[RecordBatch],
    tokeniser: &FieldTokeniser,
    pids: &Tokeniser,
) -> Result<Vec<(Token, FieldTokens)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = batches.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<(Token, FieldTokens)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = batches
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut rows = Vec::new();
                    for batch in chunk {
                        batch_rows(batch, tokeniser, pids, &mut rows)?;
                    }
                    Ok(rows)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a tokenising thread panicked"))
            .collect()
    });
    let mut all = Vec::new();
    for part in parts {
        all.extend(part?);
    }
    // The same identity in several tables (or rows) is one record.
    let keep: Vec<bool> = {
        let mut seen: HashSet<&(Token, FieldTokens)> = HashSet::with_capacity(all.len());
        all.iter().map(|row| seen.insert(row)).collect()
    };
    let rows: Vec<(Token, FieldTokens)> = all
        .into_iter()
        .zip(keep)
        .filter_map(|(row, keep)| keep.then_some(row))
        .collect();
    Ok(rows)
}

/// Appends the pid and field tokens of each row of an identities batch
/// (rows without a pid have nothing to link). The pid is computed again
/// here, as the published tables now compute it (the batch's own pid
/// column predates the shared numbers just found).
fn batch_rows(
    batch: &RecordBatch,
    tokeniser: &FieldTokeniser,
    pids: &Tokeniser,
    out: &mut Vec<(Token, FieldTokens)>,
) -> Result<()> {
    let mut buf = Vec::new();
    identifier_columns(batch)
        .for_each_identity(|_, identity| {
            if let Some(pid) = pids.pid(identity, &mut buf) {
                out.push((pid, tokeniser.tokens(identity)));
            }
        })
        .map_err(|e| DataFusionError::External(Box::new(e)))
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
