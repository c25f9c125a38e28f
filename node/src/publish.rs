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

use crate::config::{
    ColumnConfig, IdentifierColumnsConfig, LocalColumns, OptOutKind, PID_COLUMN, ProjectPurpose,
    TableConfig,
};
use crate::pid::PID_ARGS;
use crate::withheld::{Withheld, WithholdFunction};

/// A published table for one project: its plan beneath the boundary.
#[derive(Debug)]
pub struct PublishedTable {
    pub name: String,
    pub personal: bool,
    /// The rows beneath the boundary; with `has_objections`, a hidden
    /// [`OBJECTED_COLUMN`] marks rows of people whose objection applies.
    pub plan: LogicalPlan,
    pub has_objections: bool,
    /// What queries see (never the hidden column).
    pub schema: SchemaRef,
    /// For a personal table: `pid` and the raw identifier columns as text
    /// (named by kind), opt-outs removed. Only the linkage token table
    /// reads it; it never crosses the boundary.
    pub identities: Option<LogicalPlan>,
    /// For a personal table holding national data opt-outs: the same
    /// columns for the opted-out rows (the coordinator's linkage stage
    /// alone reads them).
    pub register: Option<LogicalPlan>,
    /// The project's pids withheld for objections recorded elsewhere.
    pub withheld: Option<Arc<Withheld>>,
}

/// The hidden column marking rows with an objection that applies.
pub const OBJECTED_COLUMN: &str = "carrow_objected";

/// The identifier columns of an identities plan, after `pid`, in order
/// (named by kind).
pub const IDENTITY_KINDS: [IdentifierKind; IdentifierKind::ALL.len()] = IdentifierKind::ALL;

/// Scalar functions a published plan embeds.
pub struct BoundaryFunctions {
    pub pid: Arc<datafusion::logical_expr::ScalarUDF>,
    pub opted_out: Option<Arc<datafusion::logical_expr::ScalarUDF>>,
    /// What the project is for: which objections apply to it.
    pub purpose: ProjectPurpose,
    /// The project's list of pids withheld for objections recorded
    /// elsewhere (none when the project is exempt).
    pub withheld: Option<Arc<Withheld>>,
}

/// Whether a row carries an objection of `kind`: a table rule of that kind,
/// or (national) the node's NHS-number list. `None` when nothing records one.
fn objection(table: &TableConfig, functions: &BoundaryFunctions, kind: OptOutKind) -> Option<Expr> {
    let mut found: Vec<Expr> = table
        .opt_out
        .iter()
        .filter(|rule| rule.kind == kind)
        .map(|rule| {
            let values: Vec<Expr> = rule.values.iter().map(|v| lit(v.as_str())).collect();
            let column = as_text(&rule.column);
            // A missing value is no objection (and never a null filter result).
            column
                .clone()
                .is_not_null()
                .and(column.in_list(values, false))
        })
        .collect();
    if kind == OptOutKind::National
        && let (Some(_), Some(opted_out)) = (
            table.identifiers.get(IdentifierKind::NhsNumber),
            &functions.opted_out,
        )
    {
        let nhs = identifier_text(&table.identifiers, IdentifierKind::NhsNumber);
        found.push(opted_out.call(vec![nhs]));
    }
    found.into_iter().reduce(Expr::or)
}

/// `pid` and the identifiers as text, named by kind: what token tables read.
fn identities_of(
    df: DataFrame,
    table: &TableConfig,
    functions: &BoundaryFunctions,
) -> Result<LogicalPlan> {
    let mut columns = vec![pid_expr(&table.identifiers, functions)];
    columns.extend(
        IDENTITY_KINDS
            .iter()
            .map(|kind| identifier_text(&table.identifiers, *kind).alias(kind.name())),
    );
    Ok(df.select(columns)?.into_unoptimized_plan())
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
        Decimal { precision, scale } => DataType::Decimal128(precision, scale),
    }
}

impl PublishedTable {
    /// Builds the plan of `table` over `sources` with the project's functions.
    pub async fn build(
        sources: &SessionContext,
        table: &TableConfig,
        functions: &BoundaryFunctions,
    ) -> Result<Self> {
        let df = local_rows(sources, table).await?;
        let national = objection(table, functions, OptOutKind::National);
        // The register: identities of the people this table records as
        // opted out, for the coordinator to find them at other nodes.
        let register = match (&national, table.personal) {
            (Some(objected), true) => Some(identities_of(
                df.clone().filter(objected.clone())?,
                table,
                functions,
            )?),
            _ => None,
        };
        // The objections that apply to this project's purpose. Rows that
        // carry one are marked in a hidden column, removed by every query's
        // scan (which counts them for the audit log) before anything above
        // the boundary sees them.
        let applies = [
            national.filter(|_| functions.purpose.opt_out_exempt.is_none()),
            objection(table, functions, OptOutKind::Type1)
                .filter(|_| !functions.purpose.direct_care),
        ];
        let objected = applies.into_iter().flatten().reduce(Expr::or);
        let identities = match (&objected, table.personal) {
            (_, false) => None,
            (Some(o), true) => Some(identities_of(
                df.clone()
                    .filter(datafusion::logical_expr::not(o.clone()))?,
                table,
                functions,
            )?),
            (None, true) => Some(identities_of(df.clone(), table, functions)?),
        };
        let mut exprs = Vec::new();
        if table.personal {
            exprs.push(pid_expr(&table.identifiers, functions));
        }
        for column in &table.columns {
            exprs.push(column_expr(&df, column)?);
        }
        let has_objections = objected.is_some();
        if let Some(o) = objected {
            exprs.push(o.alias(OBJECTED_COLUMN));
        }
        let df = df.select(exprs)?;
        let arrow = df.schema().as_arrow();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            arrow
                .fields()
                .iter()
                .filter(|f| f.name() != OBJECTED_COLUMN)
                .cloned()
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            name: table.name.clone(),
            personal: table.personal,
            plan: df.into_unoptimized_plan(),
            has_objections,
            schema,
            identities,
            register,
            withheld: table.personal.then(|| functions.withheld.clone()).flatten(),
        })
    }
}

/// The columns one query read from each published table, and how many
/// records it withheld for objections recorded elsewhere.
#[derive(Debug, Default)]
pub struct AccessRecorder(
    Mutex<HashMap<String, Vec<String>>>,
    std::sync::atomic::AtomicU64,
);

impl AccessRecorder {
    /// Notes `n` more records withheld for opt-outs.
    pub fn count_withheld(&self, n: u64) {
        self.1.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records withheld for opt-outs so far.
    pub fn withheld(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

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
        // Records of people who objected here, first, counted for this
        // query's audit record.
        if self.published.has_objections {
            let function = WithholdFunction::flagged(self.recorder.clone());
            builder = builder.filter(datafusion::logical_expr::not(
                function.call(vec![col(Column::new_unqualified(OBJECTED_COLUMN))]),
            ))?;
        }
        // Then of persons who objected at another organisation.
        if let Some(withheld) = &self.published.withheld {
            let function = WithholdFunction::listed(withheld.clone(), self.recorder.clone());
            builder = builder.filter(datafusion::logical_expr::not(
                function.call(vec![col(Column::new_unqualified(PID_COLUMN))]),
            ))?;
        }
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
