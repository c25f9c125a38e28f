//! Whole-subtree pushdown: an optimizer rule that finds the largest parts of
//! a plan that read one node only and contain work worth sending (joins,
//! aggregates, sorts, limits), and replaces each with one remote
//! query that the node runs whole, as SQL its log can show.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, JoinType, Result};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::sql::unparser::Unparser;

use crate::remote::{RemoteSource, RemoteTable};

/// The rule; add it after DataFusion's own optimizer rules.
#[derive(Debug, Default)]
pub struct PushToNode {
    /// Nodes holding one person under several pids (the linkage index
    /// merges them): joins, groupings and distinct counts over their pids
    /// must see person keys, so those operators stay at the coordinator.
    pid_work_stays_here: HashSet<String>,
}

impl PushToNode {
    /// The rule for a query whose linkage index merges records of one
    /// person within each of `nodes`.
    pub fn new(nodes_with_merged_records: impl IntoIterator<Item = String>) -> Self {
        Self {
            pid_work_stays_here: nodes_with_merged_records.into_iter().collect(),
        }
    }

    /// Whether `plan` may run whole at the node of `leaves`.
    fn may_push(&self, plan: &LogicalPlan, leaves: &[Arc<RemoteTable>]) -> bool {
        let node = &leaves[0].node().name;
        !(self.pid_work_stays_here.contains(node) && works_on_pid(plan))
    }
}

/// A `pid` column (the only `FixedSizeBinary(16)` of the common model).
fn is_pid(expr: &Expr, schema: &DFSchema) -> bool {
    expr.column_refs().into_iter().any(|c| {
        schema.qualified_field_from_column(c).is_ok_and(|(_, f)| {
            f.name() == "pid" || matches!(f.data_type(), DataType::FixedSizeBinary(16))
        })
    })
}

/// Whether an operator of `plan` joins, groups or deduplicates on `pid`
/// (its answer changes when two pids of one person become one key).
fn works_on_pid(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|p| {
        found |= match p {
            LogicalPlan::Join(join) => {
                join.on
                    .iter()
                    .any(|(l, r)| is_pid(l, join.left.schema()) || is_pid(r, join.right.schema()))
                    || join
                        .filter
                        .as_ref()
                        .is_some_and(|f| is_pid(f, &join.schema))
            }
            LogicalPlan::Aggregate(agg) => agg
                .group_expr
                .iter()
                .chain(&agg.aggr_expr)
                .any(|e| is_pid(e, agg.input.schema())),
            LogicalPlan::Distinct(distinct) => {
                let input = distinct.input();
                input.schema().iter().any(|(q, f)| {
                    is_pid(
                        &Expr::Column(Column::new(q.cloned(), f.name())),
                        input.schema(),
                    )
                })
            }
            _ => false,
        };
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The leaves of `plan`, when they are all published tables of one node and
/// every operator can be sent as SQL.
pub(crate) fn single_node(plan: &LogicalPlan) -> Option<Vec<Arc<RemoteTable>>> {
    let mut nodes = HashSet::new();
    let mut leaves = Vec::new();
    let mut supported = true;
    plan.apply(|p| {
        match p {
            LogicalPlan::TableScan(scan) => match remote_table(scan) {
                Some(table) if matches!(table.source(), RemoteSource::Table(_)) => {
                    nodes.insert(table.node().name.clone());
                    leaves.push(table);
                }
                _ => supported = false,
            },
            // The unparser writes semi and anti joins as EXISTS without the
            // filters of their inputs: those joins run here instead.
            LogicalPlan::Join(join)
                if !matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
                ) =>
            {
                supported = false
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_) => {}
            // DataFusion's unparser does not yet write window plans as SQL
            // that reads back the same; their inputs are still pushed.
            _ => supported = false,
        }
        Ok(if supported {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    })
    .ok()?;
    (supported && nodes.len() == 1).then_some(leaves)
}

pub(crate) fn remote_table(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<RemoteTable>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn Any + Send + Sync> = provider;
    any.downcast::<RemoteTable>().ok()
}

/// Whether sending `plan` saves work over sending its scans alone.
fn worth_pushing(plan: &LogicalPlan) -> bool {
    let mut worth = false;
    let _ = plan.apply(|p| {
        worth |= matches!(
            p,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Distinct(_)
        );
        Ok(if worth {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    worth
}

/// Replaces `plan` by one remote query at the node of `leaves`, or returns
/// `None` when it cannot be written as SQL.
fn push(plan: &LogicalPlan, leaves: &[Arc<RemoteTable>]) -> Option<LogicalPlan> {
    // Output columns get positional names, so duplicate names (a.pid, b.pid)
    // survive the trip; a projection here restores names and qualifiers.
    let fields: Vec<(
        Option<datafusion::common::TableReference>,
        Arc<datafusion::arrow::datatypes::Field>,
    )> = plan
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), f.clone()))
        .collect();
    let positional: Vec<Expr> = fields
        .iter()
        .enumerate()
        .map(|(i, (q, f))| Expr::Column(Column::new(q.clone(), f.name())).alias(format!("c{i}")))
        .collect();
    let wrapped = LogicalPlanBuilder::from(plan.clone())
        .project(positional)
        .ok()?
        .build()
        .ok()?;
    let sql = Unparser::default().plan_to_sql(&wrapped).ok()?.to_string();
    let schema = Arc::new(wrapped.schema().as_arrow().clone());
    let freshness = leaves
        .iter()
        .filter_map(|t| t.freshness().map(str::to_string))
        .min();
    let remote = RemoteTable::query(leaves[0].node().clone(), sql, schema, freshness);
    let restore: Vec<Expr> = fields
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            col(Column::new_unqualified(format!("c{i}"))).alias_qualified(q.clone(), f.name())
        })
        .collect();
    LogicalPlanBuilder::scan(
        format!("{}_pushed", leaves[0].node().name),
        provider_as_source(Arc::new(remote)),
        None,
    )
    .ok()?
    .project(restore)
    .ok()?
    .build()
    .ok()
}

/// Pushes `plan` whole; a result order it promises is kept here too.
///
/// The pushed SQL reads the node's query as a subquery, and SQL (DataFusion
/// included) does not keep a subquery's order. So a sort at the top of the
/// plan (under projections and aliases) is sent with the rest, where its
/// limit cuts the rows the node returns, and done again here over those rows.
fn push_keeping_order(plan: &LogicalPlan, leaves: &[Arc<RemoteTable>]) -> Option<LogicalPlan> {
    match plan {
        LogicalPlan::Sort(sort) => {
            let pushed = push(plan, leaves)?;
            let resorted = LogicalPlan::Sort(datafusion::logical_expr::Sort {
                expr: sort.expr.clone(),
                input: Arc::new(pushed),
                fetch: sort.fetch,
            });
            Some(resorted)
        }
        LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Limit(_)
            if plan.inputs().len() == 1 && contains_top_sort(plan.inputs()[0]) =>
        {
            let input = push_keeping_order(plan.inputs()[0], leaves)?;
            plan.with_new_exprs(plan.expressions(), vec![input]).ok()
        }
        _ => push(plan, leaves),
    }
}

/// Whether a sort sits at the top of `plan`, under projections and aliases.
fn contains_top_sort(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Limit(_) => {
            plan.inputs().len() == 1 && contains_top_sort(plan.inputs()[0])
        }
        _ => false,
    }
}

impl OptimizerRule for PushToNode {
    fn name(&self) -> &str {
        "carrow_push_to_node"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_down(|node| {
            if let Some(leaves) = single_node(&node)
                && worth_pushing(&node)
                && self.may_push(&node, &leaves)
                && let Some(pushed) = push_keeping_order(&node, &leaves)
            {
                return Ok(Transformed::new(pushed, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(node))
        })
    }
}
