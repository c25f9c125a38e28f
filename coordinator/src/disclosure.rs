//! Disclosure control applied by the engine: a planner's query must
//! aggregate over persons; the plan is rewritten so its aggregate also
//! counts the distinct persons behind each output row, and a
//! [`DisclosureControl`] node on top suppresses the measures of rows about
//! too few persons (and the totals that would give them away), then rounds
//! counts. The rules themselves live in `carrow_governance::disclosure`.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use carrow_governance::Rules;
use carrow_governance::disclosure::{GroupKey, Report, suppress_totals};
use carrow_sql::QueryError;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::{cast, concat_batches, nullif};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema, DFSchemaRef, DataFusionError, Result};
use datafusion::datasource::{ViewTable, source_as_provider};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::expr_fn::count_distinct;
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, LogicalPlan, Projection, SubqueryAlias, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, col,
};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::remote::RemoteTable;

/// Rule names in refusals.
pub mod rules {
    /// Planners see aggregates over persons only.
    pub const AGGREGATES_ONLY: &str = "aggregates only";
}

const PERSONS: &str = "__carrow_persons";
const GROUP: &str = "__carrow_group";
const GROUPING_ID: &str = "__grouping_id";

/// Where a controlled query's report is left for the result's metadata.
#[derive(Clone, Default)]
pub struct ReportSink(Arc<Mutex<Option<Report>>>);

impl ReportSink {
    /// The report, once the result is computed.
    pub fn get(&self) -> Option<Report> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, report: Report) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
}

impl fmt::Debug for ReportSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportSink")
    }
}
impl PartialEq for ReportSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ReportSink {}
impl Hash for ReportSink {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}
impl PartialOrd for ReportSink {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

/// What an output column is, for disclosure control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum ColumnRole {
    /// A grouping value (or a value computed from grouping values only).
    Group,
    /// A count of records or persons: suppressed, otherwise rounded.
    Count,
    /// Any other aggregate: suppressed.
    Measure,
}

/// Rewrites `plan` so its result passes disclosure control under `rules`,
/// or refuses it saying why. Plans that read no personal table are returned
/// unchanged.
pub fn control(
    plan: LogicalPlan,
    rules: Rules,
    sink: ReportSink,
) -> Result<LogicalPlan, QueryError> {
    if !reads_personal_table(&plan) {
        return Ok(plan);
    }
    let refuse = |detail: String| QueryError::refused(rules::AGGREGATES_ONLY, detail);
    if let Some(field) = plan.schema().fields().iter().find(|f| is_pid(f)) {
        return Err(refuse(format!(
            "column {} is a person's pseudonym; results show aggregates over persons, never pid",
            field.name()
        )));
    }
    // The operators above the aggregate that leave its rows as they are.
    let mut chain = Vec::new();
    let mut node = &plan;
    let aggregate = loop {
        match node {
            LogicalPlan::Aggregate(aggregate) => break aggregate,
            LogicalPlan::Projection(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_) => {
                chain.push(node);
                node = node.inputs()[0];
            }
            other => {
                return Err(refuse(format!(
                    "the result must be one aggregate over persons (GROUP BY with count, sum, ...), \
                     but it is {}; row-level results, unions of results and window functions over them are not released",
                    describe(other)
                )));
            }
        }
    };
    let pids: Vec<Column> = aggregate
        .input
        .schema()
        .iter()
        .filter(|(_, f)| is_pid(f))
        .map(|(q, f)| Column::new(q.cloned(), f.name()))
        .collect();
    if pids.is_empty() {
        return Err(refuse(
            "cannot count the persons behind each row: the aggregate reads no pid column \
             (aggregate over the tables directly, or keep pid in the subquery)"
                .into(),
        ));
    }
    let grouping_sets = aggregate
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)));
    // With grouping sets the aggregate outputs each grouping column once,
    // then DataFusion's grouping id, then the aggregates.
    let group_fields = if grouping_sets {
        aggregate.schema.fields().len() - aggregate.aggr_expr.len() - 1
    } else {
        aggregate.group_expr.len()
    };
    for (q, f) in aggregate.schema.iter().take(group_fields) {
        if is_pid(f) {
            let name = Column::new(q.cloned(), f.name()).flat_name();
            return Err(refuse(format!(
                "grouping by {name} gives one row per person"
            )));
        }
    }
    let roles = (0..plan.schema().fields().len())
        .map(|i| trace(&plan, i, aggregate, group_fields))
        .collect::<Result<Vec<_>, String>>()
        .map_err(refuse)?;

    let internal = |e: DataFusionError| QueryError::Internal(format!("disclosure control: {e}"));
    let rewritten =
        with_person_counts(aggregate, &pids, group_fields, grouping_sets).map_err(internal)?;
    let mut hidden: Vec<String> = (0..pids.len()).map(|i| format!("{PERSONS}_{i}")).collect();
    if grouping_sets {
        hidden.push(GROUPING_ID.to_string());
        hidden.extend((0..group_fields).map(|j| format!("{GROUP}_{j}")));
    }
    let mut top = rewritten;
    for node in chain.into_iter().rev() {
        top = carry(node, top, &hidden).map_err(internal)?;
    }
    let visible = plan.schema().fields().len();
    let release = Release {
        roles,
        persons: pids.len(),
        grouping: grouping_sets.then_some(group_fields),
        rules,
        sink,
    };
    let node = DisclosureControl::new(top, visible, release).map_err(internal)?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

fn is_pid(field: &Field) -> bool {
    field.name() == "pid" && matches!(field.data_type(), DataType::FixedSizeBinary(16))
}

fn describe(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::TableScan(scan) => format!("rows of table {}", scan.table_name),
        LogicalPlan::Join(_) => "a join of rows".into(),
        LogicalPlan::Union(_) => "a union".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        LogicalPlan::Distinct(_) => "a DISTINCT list of rows".into(),
        other => format!(
            "a {} of rows",
            other
                .display()
                .to_string()
                .split(':')
                .next()
                .unwrap_or("plan")
        ),
    }
}

/// Whether `plan` reads a table a node declared personal, anywhere
/// (subqueries in filters and projections included).
fn reads_personal_table(plan: &LogicalPlan) -> bool {
    let mut personal = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            let any: &dyn Any = provider.as_ref();
            personal |= if let Some(remote) = any.downcast_ref::<RemoteTable>() {
                remote.personal()
            } else if let Some(view) = any.downcast_ref::<ViewTable>() {
                reads_personal_table(view.logical_plan())
            } else {
                // Anything else is not a node's table: treat it as personal.
                true
            };
        }
        Ok(if personal {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    personal
}

/// What output column `index` of `node` is, traced down to `aggregate`.
fn trace(
    node: &LogicalPlan,
    index: usize,
    aggregate: &Aggregate,
    group_fields: usize,
) -> Result<ColumnRole, String> {
    match node {
        LogicalPlan::Aggregate(a) if std::ptr::eq(a, aggregate) => {
            let measures = a.schema.fields().len() - a.aggr_expr.len();
            if index < measures {
                return Ok(ColumnRole::Group);
            }
            let expr = unalias(&a.aggr_expr[index - measures]);
            let field = a.schema.field(index);
            Ok(match expr {
                Expr::AggregateFunction(f) if f.func.name() == "count" => ColumnRole::Count,
                // A sum of whole numbers counts something (sum(CASE ... 1 ELSE 0)).
                Expr::AggregateFunction(f)
                    if f.func.name() == "sum" && field.data_type().is_integer() =>
                {
                    ColumnRole::Count
                }
                _ => ColumnRole::Measure,
            })
        }
        LogicalPlan::Projection(p) => role_of(&p.expr[index], &p.input, aggregate, group_fields),
        other => trace(other.inputs()[0], index, aggregate, group_fields),
    }
}

fn role_of(
    expr: &Expr,
    input: &LogicalPlan,
    aggregate: &Aggregate,
    group_fields: usize,
) -> Result<ColumnRole, String> {
    match unalias(expr) {
        Expr::Column(c) => {
            let index = input
                .schema()
                .index_of_column(c)
                .map_err(|e| e.to_string())?;
            trace(input, index, aggregate, group_fields)
        }
        Expr::Cast(c) => role_of(&c.expr, input, aggregate, group_fields),
        Expr::TryCast(c) => role_of(&c.expr, input, aggregate, group_fields),
        other => {
            let mut roles = Vec::new();
            for c in other.column_refs() {
                let index = input
                    .schema()
                    .index_of_column(c)
                    .map_err(|e| e.to_string())?;
                roles.push(trace(input, index, aggregate, group_fields)?);
            }
            if roles.contains(&ColumnRole::Count) {
                Err(format!(
                    "{} computes a value from a count, which could not be rounded; return the count itself",
                    other.schema_name()
                ))
            } else if roles.contains(&ColumnRole::Measure) {
                Ok(ColumnRole::Measure)
            } else {
                Ok(ColumnRole::Group)
            }
        }
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}

/// `aggregate` also counting the distinct persons of each pid column, under a
/// projection that keeps every column and names copies of the grouping values.
fn with_person_counts(
    aggregate: &Aggregate,
    pids: &[Column],
    group_fields: usize,
    grouping_sets: bool,
) -> Result<LogicalPlan> {
    let mut aggr_expr = aggregate.aggr_expr.clone();
    for (i, pid) in pids.iter().enumerate() {
        aggr_expr.push(count_distinct(Expr::Column(pid.clone())).alias(format!("{PERSONS}_{i}")));
    }
    let counted = LogicalPlan::Aggregate(Aggregate::try_new(
        aggregate.input.clone(),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?);
    let mut columns: Vec<Expr> = counted
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    if grouping_sets {
        for (j, (q, f)) in counted.schema().iter().take(group_fields).enumerate() {
            columns.push(
                Expr::Column(Column::new(q.cloned(), f.name())).alias(format!("{GROUP}_{j}")),
            );
        }
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        columns,
        Arc::new(counted),
    )?))
}

/// `node` rebuilt over `input`, passing the `hidden` columns through.
fn carry(node: &LogicalPlan, input: LogicalPlan, hidden: &[String]) -> Result<LogicalPlan> {
    match node {
        LogicalPlan::Projection(p) => {
            let mut exprs = p.expr.clone();
            exprs.extend(hidden.iter().map(|h| col(Column::from_name(h))));
            Ok(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(input),
            )?))
        }
        LogicalPlan::SubqueryAlias(a) => Ok(LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
            Arc::new(input),
            a.alias.clone(),
        )?)),
        other => other.with_new_exprs(other.expressions(), vec![input]),
    }
}

/// How a controlled result is released: what each visible column is, where
/// the hidden columns are, and the rules. Shared by the logical node and
/// its operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Release {
    roles: Vec<ColumnRole>,
    /// Hidden person-count columns follow the visible ones.
    persons: usize,
    /// With grouping sets: how many grouping columns the hidden copies hold
    /// (after the grouping id, after the person counts).
    grouping: Option<usize>,
    rules: Rules,
    sink: ReportSink,
}

/// The logical node applying disclosure control to its input's rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisclosureControl {
    input: LogicalPlan,
    schema: DFSchemaRef,
    release: Release,
}

impl PartialOrd for DisclosureControl {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

impl DisclosureControl {
    fn new(input: LogicalPlan, visible: usize, release: Release) -> Result<Self> {
        let fields: Vec<_> = input
            .schema()
            .iter()
            .take(visible)
            .zip(&release.roles)
            .map(|((q, f), role)| {
                let field = match role {
                    ColumnRole::Group => f.as_ref().clone(),
                    _ => f.as_ref().clone().with_nullable(true),
                };
                (q.cloned(), Arc::new(field))
            })
            .collect();
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(Self {
            input,
            schema,
            release,
        })
    }
}

impl UserDefinedLogicalNodeCore for DisclosureControl {
    fn name(&self) -> &str {
        "DisclosureControl"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DisclosureControl: {}", self.release.rules.describe())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let mut node = self.clone();
        node.input = inputs.swap_remove(0);
        Ok(node)
    }
}

/// Plans [`DisclosureControl`] nodes as [`DisclosureExec`].
#[derive(Debug, Default)]
pub struct DisclosurePlanner;

#[async_trait]
impl ExtensionPlanner for DisclosurePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(control) = node.as_any().downcast_ref::<DisclosureControl>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(DisclosureExec::new(
            physical_inputs[0].clone(),
            Arc::new(control.schema.as_arrow().clone()),
            control.release.clone(),
        ))))
    }
}

/// Collects its input's rows, then suppresses and rounds them.
#[derive(Debug)]
pub struct DisclosureExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    release: Release,
    properties: Arc<PlanProperties>,
}

impl DisclosureExec {
    fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef, release: Release) -> Self {
        // The visible columns lead the input's, at the same positions: an
        // order of the input over them (ORDER BY) is the output's order too.
        let visible = schema.fields().len();
        let ordering: Vec<PhysicalSortExpr> = input
            .properties()
            .output_ordering()
            .into_iter()
            .flat_map(|o| o.iter())
            .map_while(|e| {
                let any: &dyn Any = e.expr.as_ref();
                let column = any.downcast_ref::<PhysicalColumn>()?;
                (column.index() < visible).then(|| {
                    PhysicalSortExpr::new(
                        Arc::new(PhysicalColumn::new(column.name(), column.index())),
                        e.options,
                    )
                })
            })
            .collect();
        let equivalence = if ordering.is_empty() {
            EquivalenceProperties::new(schema.clone())
        } else {
            EquivalenceProperties::new_with_orderings(schema.clone(), [ordering])
        };
        let properties = Arc::new(PlanProperties::new(
            equivalence,
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            schema,
            release,
            properties,
        }
    }
}

impl DisplayAs for DisclosureExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DisclosureExec: {}", self.release.rules.describe())
    }
}

impl ExecutionPlan for DisclosureExec {
    fn name(&self) -> &str {
        "DisclosureExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    /// Rows leave in the order they came (an ORDER BY below holds).
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.schema.clone(),
            self.release.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (schema, release_as) = (self.schema.clone(), self.release.clone());
        let input_schema = self.input.schema();
        let out = futures::stream::once(async move {
            use futures::TryStreamExt;
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let all = concat_batches(&input_schema, &batches)?;
            let (released, report) = release(&all, &schema, &release_as)?;
            tracing::info!(rule = %report.rule, rows_suppressed = report.rows_suppressed, totals_suppressed = report.totals_suppressed, cells_suppressed = report.cells_suppressed, "disclosure control applied");
            release_as.sink.set(report);
            Ok(released)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

/// Applies the rules to `all` rows: visible columns first, then `persons`
/// person counts, then (with grouping sets) the grouping id and copies of
/// the grouping values.
fn release(all: &RecordBatch, schema: &SchemaRef, how: &Release) -> Result<(RecordBatch, Report)> {
    let (roles, persons, grouping, rules) = (&how.roles, how.persons, how.grouping, how.rules);
    let visible = roles.len();
    let rows = all.num_rows();
    // The persons behind a row: the fewest any of its pid columns counts.
    let mut fewest = vec![u64::MAX; rows];
    for p in 0..persons {
        let counts = cast(all.column(visible + p), &DataType::UInt64)?;
        let counts = counts
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("cast to u64");
        for (r, fewest) in fewest.iter_mut().enumerate() {
            *fewest = (*fewest).min(if counts.is_null(r) {
                0
            } else {
                counts.value(r)
            });
        }
    }
    let mut suppressed: Vec<bool> = fewest.iter().map(|&n| rules.suppresses(n)).collect();
    let primary = suppressed.iter().filter(|s| **s).count();
    let totals = match grouping {
        Some(n) => {
            let ids = cast(all.column(visible + persons), &DataType::UInt64)?;
            let ids = ids
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("cast to u64");
            let keys: Vec<GroupKey> = (0..rows)
                .map(|r| {
                    let id = ids.value(r);
                    let grouped = (0..n)
                        .filter(|i| (id >> (n - 1 - i)) & 1 == 0)
                        .fold(0u64, |acc, i| acc | (1 << i));
                    let values = (0..n)
                        .map(|j| {
                            let column = all.column(visible + persons + 1 + j);
                            (!column.is_null(r))
                                .then(|| array_value_to_string(column, r).unwrap_or_default())
                        })
                        .collect();
                    GroupKey { grouped, values }
                })
                .collect();
            suppress_totals(&mut suppressed, &keys)
        }
        None => 0,
    };
    let mask = BooleanArray::from(suppressed.clone());
    let mut report = Report {
        rule: rules.describe(),
        rows_suppressed: primary,
        totals_suppressed: totals,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(visible);
    for (i, role) in roles.iter().enumerate() {
        let column = all.column(i).clone();
        columns.push(match role {
            ColumnRole::Group => column,
            ColumnRole::Measure => {
                report.cells_suppressed += suppressed.iter().filter(|s| **s).count();
                nullif(&column, &mask)?
            }
            ColumnRole::Count => {
                report.cells_suppressed += suppressed.iter().filter(|s| **s).count();
                let rounded = round_counts(&column, rules, &mut report.counts_rounded)?;
                nullif(&rounded, &mask)?
            }
        });
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((batch, report))
}

fn round_counts(column: &ArrayRef, rules: Rules, rounded: &mut usize) -> Result<ArrayRef> {
    let as_i64 = cast(column, &DataType::Int64)?;
    let values = as_i64
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to i64");
    *rounded += values.len() - values.null_count();
    let out: Int64Array = values.iter().map(|v| v.map(|v| rules.round(v))).collect();
    Ok(cast(&(Arc::new(out) as ArrayRef), column.data_type())?)
}
