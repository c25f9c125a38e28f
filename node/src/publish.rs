//! The boundary: each published table is a plan over local sources that
//! computes `pid` for the query's project, removes opted-out people, drops
//! identifier columns and maps local columns to the common model. Queries
//! reach it only through [`BoundaryTable`], a DataFusion `TableProvider`
//! that pushes the query's filters, projections and limits beneath the
//! boundary and records which columns each query read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, cast, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};

use carrow_linkage::IdentifierKind;
use datafusion::functions::string::expr_fn::concat_ws;

use crate::config::{ColumnConfig, IdentifierColumnsConfig, LocalColumns, PID_COLUMN, TableConfig};
use crate::pid::PID_ARGS;

/// A published table for one project: its plan beneath the boundary.
#[derive(Debug)]
pub struct PublishedTable {
    pub name: String,
    pub personal: bool,
    pub plan: LogicalPlan,
    pub schema: SchemaRef,
    /// For a personal table: `pid` and the raw identifier columns as text
    /// (named by kind), opt-outs removed. Only the linkage token table
    /// reads it; it never crosses the boundary.
    pub identities: Option<LogicalPlan>,
}

/// The identifier columns of an identities plan, after `pid`, in order
/// (named by kind).
pub const IDENTITY_KINDS: [IdentifierKind; IdentifierKind::ALL.len()] = IdentifierKind::ALL;

/// Scalar functions a published plan embeds.
pub struct BoundaryFunctions {
    pub pid: Arc<datafusion::logical_expr::ScalarUDF>,
    pub opted_out: Option<Arc<datafusion::logical_expr::ScalarUDF>>,
}

fn local(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

fn as_text(name: &str) -> Expr {
    cast(local(name), DataType::Utf8)
}

/// The local rows of a table: its source, or its SQL over sources.
async fn local_rows(sources: &SessionContext, table: &TableConfig) -> Result<DataFrame> {
    match (&table.source, &table.sql) {
        (Some(source), _) => sources.table(source.as_str()).await,
        (None, Some(sql)) => sources.sql(sql).await,
        (None, None) => unreachable!("validated: a table has a source or sql"),
    }
}

/// The text of identifier `kind`: its local column as text, its columns
/// joined by spaces, or null when the table has none.
fn identifier_text(ids: &IdentifierColumnsConfig, kind: IdentifierKind) -> Expr {
    match ids.get(kind) {
        None => lit(ScalarValue::Utf8(None)),
        Some(LocalColumns::One(c)) => as_text(c),
        Some(LocalColumns::Several(cs)) => {
            // concat_ws skips nulls; all-null gives "", which normalises to missing.
            concat_ws(lit(" "), cs.iter().map(|c| as_text(c)).collect())
        }
    }
}

fn pid_expr(ids: &IdentifierColumnsConfig, functions: &BoundaryFunctions) -> Expr {
    let args: Vec<Expr> = IdentifierKind::ALL
        .iter()
        .map(|kind| identifier_text(ids, *kind))
        .collect();
    debug_assert_eq!(args.len(), PID_ARGS);
    functions.pid.call(args).alias(PID_COLUMN)
}

fn column_expr(df: &DataFrame, column: &ColumnConfig) -> Result<Expr> {
    let value = match &column.expr {
        Some(sql) => df.parse_sql_expr(sql)?,
        None => local(column.from.as_deref().unwrap_or(&column.name)),
    };
    let value = match column.data_type {
        Some(t) => cast(value, sql_type(t)),
        None => value,
    };
    Ok(value.alias(&column.name))
}

fn sql_type(t: crate::config::ColumnType) -> DataType {
    use crate::config::ColumnType::*;
    match t {
        String => DataType::Utf8,
        Int32 => DataType::Int32,
        Int64 => DataType::Int64,
        Float64 => DataType::Float64,
        Boolean => DataType::Boolean,
        Date => DataType::Date32,
        Timestamp => DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
    }
}

impl PublishedTable {
    /// Builds the plan of `table` over `sources` with the project's functions.
    pub async fn build(
        sources: &SessionContext,
        table: &TableConfig,
        functions: &BoundaryFunctions,
    ) -> Result<Self> {
        let mut df = local_rows(sources, table).await?;
        // Opt-outs first, so nothing above the boundary ever sees those rows.
        if let Some(rule) = &table.opt_out {
            let values: Vec<Expr> = rule.values.iter().map(|v| lit(v.as_str())).collect();
            let column = as_text(&rule.column);
            df = df.filter(column.clone().is_null().or(column.in_list(values, true)))?;
        }
        if let (Some(_), Some(opted_out)) = (
            table.identifiers.get(IdentifierKind::NhsNumber),
            &functions.opted_out,
        ) {
            let nhs = identifier_text(&table.identifiers, IdentifierKind::NhsNumber);
            df = df.filter(datafusion::logical_expr::not(opted_out.call(vec![nhs])))?;
        }
        let identities = if table.personal {
            let mut columns = vec![pid_expr(&table.identifiers, functions)];
            columns.extend(
                IDENTITY_KINDS
                    .iter()
                    .map(|kind| identifier_text(&table.identifiers, *kind).alias(kind.name())),
            );
            Some(df.clone().select(columns)?.into_unoptimized_plan())
        } else {
            None
        };
        let mut exprs = Vec::new();
        if table.personal {
            exprs.push(pid_expr(&table.identifiers, functions));
        }
        for column in &table.columns {
            exprs.push(column_expr(&df, column)?);
        }
        let df = df.select(exprs)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        Ok(Self {
            name: table.name.clone(),
            personal: table.personal,
            plan: df.into_unoptimized_plan(),
            schema,
            identities,
        })
    }
}

/// The columns one query read from each published table.
#[derive(Debug, Default)]
pub struct AccessRecorder(Mutex<HashMap<String, Vec<String>>>);

impl AccessRecorder {
    /// Notes that a query read `columns` of `table`.
    pub fn record(&self, table: &str, columns: Vec<String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(table.to_string()).or_default();
        for c in columns {
            if !entry.contains(&c) {
                entry.push(c);
            }
        }
    }

    /// Tables and columns read so far, sorted.
    pub fn snapshot(&self) -> Vec<(String, Vec<String>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(t, c)| (t.clone(), c.clone())).collect();
        out.sort();
        out
    }
}

/// A published table as one query sees it.
#[derive(Debug)]
pub struct BoundaryTable {
    published: Arc<PublishedTable>,
    schema: SchemaRef,
    recorder: Arc<AccessRecorder>,
}

impl BoundaryTable {
    /// The query's view of `published`, recording what it reads in `recorder`.
    pub fn new(published: Arc<PublishedTable>, recorder: Arc<AccessRecorder>) -> Self {
        let schema = published.schema.clone();
        Self {
            published,
            schema,
            recorder,
        }
    }
}

#[async_trait]
impl TableProvider for BoundaryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The query's filters go above the opt-out filter, beneath the
        // projection; the optimizer pushes them on into the source.
        let mut builder = LogicalPlanBuilder::from(self.published.plan.clone());
        let filters: Vec<Expr> = filters.iter().cloned().map(unnormalize_col).collect();
        if let Some(predicate) = conjunction(filters) {
            builder = builder.filter(predicate)?;
        }
        let names: Vec<String> = match projection {
            Some(indices) => indices
                .iter()
                .map(|i| self.schema.field(*i).name().clone())
                .collect(),
            None => self
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        };
        builder = builder.project(names.iter().map(|n| col(Column::new_unqualified(n))))?;
        if let Some(n) = limit {
            builder = builder.limit(0, Some(n))?;
        }
        self.recorder.record(&self.published.name, names);
        state.create_physical_plan(&builder.build()?).await
    }
}
