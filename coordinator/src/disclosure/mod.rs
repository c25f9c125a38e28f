//! Disclosure control applied by the engine to planners' results (and to
//! researchers' aggregate approvals).
//!
//! A controlled query must fit the planner query model ([`model`]): one
//! or more aggregates over persons, each released by a
//! [`DisclosureControl`] node, with anything above them (HAVING, ORDER BY,
//! LIMIT, expressions, joins and unions of released results) computed over
//! released values only. Each released aggregate is rewritten to aggregate
//! per cell and person first (every measure's contribution of every
//! person), and [`DisclosureExec`] combines those into cells and releases
//! them under `carrow_governance::disclosure`: a distinct-person threshold
//! with a sticky margin, cell key perturbation, contribution-scaled units,
//! magnitude rules and rounding. Anything else is refused, naming the
//! construct.

mod exec;
mod functions;
mod model;
mod node;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use carrow_governance::Rules;
use carrow_governance::disclosure::{RecordKeys, Report};
use carrow_sql::QueryError;
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Distinct, Expr, Extension, LogicalPlan};

pub use exec::DisclosureExec;
pub use model::Measure;
pub use node::{DisclosureControl, DisclosurePlanner};

use model::{
    Model, check_expression, describe, distinct_group_exprs, grouping_sets, reads_personal_table,
};

/// Rule names in refusals.
pub mod rules {
    /// Planners ask what the planner query model allows.
    pub const PLANNER_MODEL: &str = "planner query model";
}

/// What the governance board sees of one controlled result, beside the
/// report released with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// What the client was told.
    #[serde(flatten)]
    pub released: Report,
    /// Cells withheld for too few persons (never told to the client: it
    /// would say whether a filter matched anyone).
    pub cells_below_threshold: usize,
    /// Released cells of fewer than twice the threshold's persons: queries
    /// over small populations, the differencing signal to watch.
    pub small_cells: usize,
}

/// Where a controlled query's reports are left for the result's metadata
/// and the audit log.
#[derive(Clone, Default)]
pub struct ReportSink(Arc<Mutex<Option<AuditReport>>>);

impl ReportSink {
    /// The report, once the result is computed.
    pub fn get(&self) -> Option<AuditReport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds one released aggregate's report (a query may release several).
    fn add(&self, report: AuditReport) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            None => *slot = Some(report),
            Some(sum) => {
                sum.released.rows_released += report.released.rows_released;
                sum.released.cells_perturbed += report.released.cells_perturbed;
                sum.released.cells_suppressed += report.released.cells_suppressed;
                sum.released.rows_suppressed += report.released.rows_suppressed;
                sum.cells_below_threshold += report.cells_below_threshold;
                sum.small_cells += report.small_cells;
            }
        }
    }
}

macro_rules! identity_by_pointer {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }
        impl Eq for $t {}
        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                (Arc::as_ptr(&self.0) as *const () as usize).hash(state)
            }
        }
        impl PartialOrd for $t {
            fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
                None
            }
        }
    };
}

identity_by_pointer!(ReportSink);

impl fmt::Debug for ReportSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportSink")
    }
}

/// The project's record keys, shared by a query's released aggregates.
#[derive(Clone)]
pub struct Keys(pub Arc<RecordKeys>);

identity_by_pointer!(Keys);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// How one aggregate is released: the per-person plan's layout, the rules
/// and where the report goes. Shared by the logical node and its operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct Release {
    /// Grouping columns lead the per-person rows; `pid` follows them.
    pub groups: usize,
    /// Grouping sets as DataFusion numbers them: per set, which grouping
    /// columns are NULL in it. `None`: a plain GROUP BY.
    pub sets: Option<Vec<Vec<bool>>>,
    /// Per released measure: what it is, and its per-person columns.
    pub measures: Vec<(Measure, Vec<usize>)>,
    pub rules: Rules,
    pub keys: Keys,
    pub sink: ReportSink,
}

/// Rewrites `plan` so its result passes disclosure control under `rules`,
/// or refuses it naming the construct. Plans that read no personal table
/// are returned unchanged. `plan` must be analyzed (types coerced).
pub fn control(
    plan: LogicalPlan,
    rules: Rules,
    keys: Arc<RecordKeys>,
    sink: ReportSink,
) -> Result<LogicalPlan, QueryError> {
    let mut controller = Controller {
        model: Model::default(),
        rules,
        keys: Keys(keys),
        sink,
    };
    controller
        .release(plan)
        .map_err(|detail| QueryError::refused(rules::PLANNER_MODEL, detail))
}

struct Controller {
    model: Model,
    rules: Rules,
    keys: Keys,
    sink: ReportSink,
}

impl Controller {
    /// `plan` with every aggregate over persons released under control;
    /// what lies above them may only post-process released values.
    fn release(&mut self, plan: LogicalPlan) -> Result<LogicalPlan, String> {
        if !reads_personal_table(&plan) {
            return Ok(plan);
        }
        match plan {
            LogicalPlan::Aggregate(aggregate) => self.aggregate(aggregate),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(Distinct::All(_))
            | LogicalPlan::Window(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Join(_) => {
                let expressions = plan.expressions();
                for e in &expressions {
                    check_expression(e)?;
                }
                let inputs = plan
                    .inputs()
                    .into_iter()
                    .map(|input| self.release(input.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                plan.with_new_exprs(expressions, inputs)
                    .map_err(|e| format!("cannot rebuild the plan: {e}"))
            }
            other => Err(format!(
                "the result is {}: planners see aggregates over persons (GROUP BY with count, \
                 count(DISTINCT pid), sum or avg), never rows",
                describe(&other)
            )),
        }
    }

    /// A released aggregate: checked against the model, rewritten to
    /// aggregate per cell and person, and wrapped in [`DisclosureControl`].
    fn aggregate(&mut self, aggregate: Aggregate) -> Result<LogicalPlan, String> {
        let (input, _class, pid) = self.model.person_column(&aggregate)?;
        let schema = aggregate.input.schema();
        let groups = distinct_group_exprs(&aggregate.group_expr);
        for e in &groups {
            self.model.check_value(e, &input, schema).map_err(|e| {
                if e.contains("uses pid") {
                    format!("grouping by pid gives one row per person: {e}")
                } else {
                    e
                }
            })?;
        }
        let measures: Vec<Measure> = aggregate
            .aggr_expr
            .iter()
            .map(|e| self.model.measure(e, &input, schema))
            .collect::<Result<_, _>>()?;
        let sets = grouping_sets(&aggregate.group_expr).map(|sets| {
            sets.iter()
                .map(|set| groups.iter().map(|g| !set.contains(g)).collect())
                .collect()
        });
        let (per_person, layout) =
            per_person_aggregate(&aggregate, &groups, pid, &measures).map_err(|e| e.to_string())?;
        let release = Release {
            groups: groups.len(),
            sets,
            measures: measures.into_iter().zip(layout).collect(),
            rules: self.rules,
            keys: self.keys.clone(),
            sink: self.sink.clone(),
        };
        let node = DisclosureControl::new(per_person, released_schema(&aggregate), release)
            .map_err(|e| e.to_string())?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }
}

/// The released aggregate's schema: the original one, with sums and
/// averages nullable (the magnitude rules may withhold them).
fn released_schema(aggregate: &Aggregate) -> DFSchema {
    aggregate.schema.as_ref().clone()
}

/// The per-cell-and-person aggregate under a released one: grouped by the
/// grouping columns and `pid`, with each measure's per-person parts.
/// Returns it with the per-person columns of each measure.
fn per_person_aggregate(
    aggregate: &Aggregate,
    groups: &[Expr],
    pid: datafusion::common::Column,
    measures: &[Measure],
) -> Result<(LogicalPlan, Vec<Vec<usize>>), DataFusionError> {
    // Nothing below the release may fail on a value: its failure would answer.
    let input = Arc::new(functions::make_plan_total(
        aggregate.input.as_ref().clone(),
    )?);
    let schema = input.schema().as_ref().clone();
    let total = |e: &Expr| functions::make_total(e.clone(), &schema);
    let mut group_expr = groups.iter().map(total).collect::<Result<Vec<_>, _>>()?;
    group_expr.push(Expr::Column(pid));
    let mut aggr_expr = Vec::new();
    let mut layout = Vec::new();
    let first = group_expr.len();
    for (i, (expr, measure)) in aggregate.aggr_expr.iter().zip(measures).enumerate() {
        let Expr::AggregateFunction(f) = unalias(expr) else {
            return Err(DataFusionError::Internal(format!(
                "{} is not an aggregate",
                expr.schema_name()
            )));
        };
        let part = |func: Arc<datafusion::logical_expr::AggregateUDF>, name: &str| {
            let args = f
                .params
                .args
                .iter()
                .map(total)
                .collect::<Result<Vec<_>, _>>()?;
            let filter = f.params.filter.as_deref().map(total).transpose()?;
            Ok::<_, DataFusionError>(
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    func,
                    args,
                    false,
                    filter.map(Box::new),
                    vec![],
                    None,
                ))
                .alias(format!("__carrow_m{i}_{name}")),
            )
        };
        let parts: Vec<Expr> = match measure {
            Measure::Persons => vec![],
            Measure::Rows => vec![part(count_udaf(), "rows")?],
            Measure::Sum => vec![part(sum_udaf(), "sum")?],
            Measure::Avg => vec![part(sum_udaf(), "sum")?, part(count_udaf(), "rows")?],
        };
        layout.push((first + aggr_expr.len()..first + aggr_expr.len() + parts.len()).collect());
        aggr_expr.extend(parts);
    }
    let plan = LogicalPlan::Aggregate(Aggregate::try_new(input, group_expr, aggr_expr)?);
    Ok((plan, layout))
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}

#[cfg(test)]
mod tests;
