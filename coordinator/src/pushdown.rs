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

use crate::remote::{RemoteSource, RemoteTable, within_node_limits};

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
    any_operator(plan, |p| match p {
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
    })
}

/// Whether `plan` or an operator under it satisfies `test`.
fn any_operator(plan: &LogicalPlan, mut test: impl FnMut(&LogicalPlan) -> bool) -> bool {
    plan.exists(|p| Ok(test(p))).unwrap_or(false)
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
            // The unparser folds every filter of an outer join's inputs
            // into its ON clause, which keeps the rows a filter on the
            // preserved side should drop: such joins run here.
            LogicalPlan::Join(join) if join.join_type != JoinType::Inner && has_filter_below(p) => {
                supported = false
            }
            // The unparser drops an aggregate's ORDER BY and null
            // treatment (`string_agg(x, ',' ORDER BY x)`): such
            // aggregates run here.
            LogicalPlan::Aggregate(aggregate)
                if !aggregate.aggr_expr.iter().all(unparses_whole) =>
            {
                supported = false
            }
            // A constant grouping or sort key would be written as a bare
            // number, which SQL reads as a column position.
            LogicalPlan::Aggregate(aggregate) if has_literal_key(&aggregate.group_expr) => {
                supported = false
            }
            LogicalPlan::Sort(sort)
                if has_literal_key(
                    &sort.expr.iter().map(|s| s.expr.clone()).collect::<Vec<_>>(),
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

/// Whether a filter (a Filter node or a scan's pushed filter) sits
/// anywhere under `plan`.
fn has_filter_below(plan: &LogicalPlan) -> bool {
    any_operator(plan, |p| match p {
        LogicalPlan::Filter(_) => true,
        LogicalPlan::TableScan(scan) => !scan.filters.is_empty(),
        _ => false,
    })
}

/// Whether a grouping or sort key in `keys` is a constant.
fn has_literal_key(keys: &[Expr]) -> bool {
    keys.iter()
        .flat_map(|key| match key {
            Expr::GroupingSet(set) => set.distinct_expr().into_iter().cloned().collect(),
            other => vec![other.clone()],
        })
        .any(|key| matches!(key.unalias_nested().data, Expr::Literal(..)))
}

/// Whether the unparser writes aggregate expression `expr` without losing
/// any of it.
fn unparses_whole(expr: &Expr) -> bool {
    let mut whole = true;
    let _ = expr.apply(|e| {
        if let Expr::AggregateFunction(f) = e {
            whole &= (f.params.order_by.is_empty() || f.func.supports_within_group_clause())
                && f.params.null_treatment.is_none();
        }
        Ok(TreeNodeRecursion::Continue)
    });
    whole
}

pub(crate) fn remote_table(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<RemoteTable>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn Any + Send + Sync> = provider;
    any.downcast::<RemoteTable>().ok()
}

/// Whether sending `plan` saves work over sending its scans alone.
fn worth_pushing(plan: &LogicalPlan) -> bool {
    any_operator(plan, |p| {
        matches!(
            p,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Distinct(_)
        )
    })
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
    let sql = within_node_limits(|unparser| unparser.plan_to_sql(&wrapped).map(|s| s.to_string()))?;
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

#[cfg(test)]
mod tests {
    use crate::split_aggregate::tests::fragments;

    #[tokio::test]
    async fn an_aggregate_whose_order_the_unparser_would_drop_runs_here() {
        let sent = fragments(
            "SELECT setting, string_agg(setting, ',' ORDER BY age) FROM acute.contacts GROUP BY setting",
        )
        .await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(!sent[0].contains("string_agg"), "{sent:?}");
        // Without an order the whole aggregate goes to the node.
        let sent = fragments("SELECT setting, max(age) FROM acute.contacts GROUP BY setting").await;
        assert!(sent[0].contains("max("), "{sent:?}");
    }

    #[tokio::test]
    async fn a_constant_grouping_key_is_not_sent_as_a_column_position() {
        let sent = fragments(
            "SELECT date_part('year', DATE '1995-06-03') AS y, count(*) FROM acute.contacts \
             GROUP BY date_part('year', DATE '1995-06-03')",
        )
        .await;
        assert!(sent.iter().all(|f| !f.contains("GROUP BY")), "{sent:?}");
    }

    #[tokio::test]
    async fn an_outer_join_over_filtered_inputs_runs_here_and_an_inner_one_is_pushed() {
        // Filters on the side an outer join keeps whole.
        for sql in [
            "SELECT count(*) FROM acute.contacts a LEFT JOIN acute.contacts b \
             ON a.age = b.age WHERE a.age < 5",
            "SELECT count(*) FROM acute.contacts a RIGHT JOIN acute.contacts b \
             ON a.age = b.age WHERE b.age < 5",
            "SELECT count(*) FROM (SELECT * FROM acute.contacts WHERE age < 5) a \
             FULL JOIN acute.contacts b ON a.age = b.age",
        ] {
            let sent = fragments(sql).await;
            assert!(sent.iter().all(|f| !f.contains("JOIN")), "{sql}: {sent:?}");
        }
        let sent = fragments(
            "SELECT count(*) FROM acute.contacts a JOIN acute.contacts b \
             ON a.age = b.age WHERE a.age < 5",
        )
        .await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(
            sent[0].contains("JOIN") && sent[0].contains("< 5"),
            "{sent:?}"
        );
    }
}
