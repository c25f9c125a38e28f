//! Partial aggregates per node: an optimizer rule that turns an aggregate
//! over a union of single-node inputs (a `combined` table, or a user's
//! `UNION ALL` across nodes) into one partial aggregate per node and a final
//! aggregate here, so each node returns a few group rows instead of its rows.
//!
//! Run it before [`PushToNode`](crate::pushdown::PushToNode), which then
//! sends each partial aggregate to its node as SQL.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, ScalarValue, TableReference};
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, Union, cast, col, lit,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::pushdown::single_node;

/// The rule; add it before [`PushToNode`](crate::pushdown::PushToNode).
#[derive(Debug, Default)]
pub struct SplitAggregatePerNode;

impl OptimizerRule for SplitAggregatePerNode {
    fn name(&self) -> &str {
        "carrow_split_aggregate_per_node"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_up(|node| {
            if let LogicalPlan::Aggregate(aggregate) = &node
                && let Some(union) = union_below(&aggregate.input)
                && let Some(split) = split(aggregate, union)
            {
                return Ok(Transformed::yes(split));
            }
            Ok(Transformed::no(node))
        })
    }
}

/// The union `plan` is, under any aliases (`combined.contacts`).
fn union_below(plan: &LogicalPlan) -> Option<&Union> {
    match plan {
        LogicalPlan::Union(union) => Some(union),
        LogicalPlan::SubqueryAlias(alias) => union_below(&alias.input),
        _ => None,
    }
}

/// How one aggregate is computed from per-node partial results.
enum Partial {
    /// count(x): sum the counts; no rows anywhere is a count of 0.
    Count(Expr),
    /// sum, min, max: the same function over the partial values.
    Same(Expr),
    /// avg(x) of a number: sum of sums over sum of counts.
    Avg(Expr),
}

/// Splits `aggregate` over `union` when every input reads one node.
fn split(aggregate: &Aggregate, union: &Union) -> Option<LogicalPlan> {
    if union.inputs.len() < 2
        || aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return None;
    }
    for input in &union.inputs {
        let leaves = single_node(input)?;
        // Already split (or nothing to send): leave it.
        if leaves.is_empty() || contains_aggregate(input) {
            return None;
        }
    }
    if groups_are_disjoint_per_input(aggregate, union) {
        return whole_per_input(aggregate, union);
    }
    let outputs = aggregate
        .schema
        .fields()
        .iter()
        .skip(aggregate.group_expr.len());
    let partials = aggregate
        .aggr_expr
        .iter()
        .zip(outputs)
        .map(|(expr, field)| match partial_of(expr)? {
            // A decimal average has its own rounding: computed here instead.
            Partial::Avg(_) if field.data_type() != &DataType::Float64 => None,
            partial => Some(partial),
        })
        .collect::<Option<Vec<_>>>()?;
    partial_then_final(aggregate, union, &partials)
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))
        .unwrap_or(true)
}

/// The decomposition of one aggregate expression, if it has one.
fn partial_of(expr: &Expr) -> Option<Partial> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
        return None;
    };
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    let [arg] = params.args.as_slice() else {
        return None;
    };
    match func.name() {
        "count" => Some(Partial::Count(arg.clone())),
        "sum" | "min" | "max" => Some(Partial::Same(unalias(expr).clone())),
        "avg" => Some(Partial::Avg(arg.clone())),
        _ => None,
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        e => e,
    }
}

/// Whether some grouping column is a different constant in every input
/// (`node` of a combined table): then no group spans two nodes and each node
/// can compute its groups whole, whatever the aggregate.
fn groups_are_disjoint_per_input(aggregate: &Aggregate, union: &Union) -> bool {
    aggregate.group_expr.iter().any(|group| {
        let Expr::Column(column) = group else {
            return false;
        };
        let Ok(index) = aggregate.input.schema().index_of_column(column) else {
            return false;
        };
        let mut seen: Vec<ScalarValue> = Vec::new();
        union
            .inputs
            .iter()
            .all(|input| match constant_output(input, index) {
                Some(value) if !value.is_null() && !seen.contains(&value) => {
                    seen.push(value);
                    true
                }
                _ => false,
            })
    })
}

/// The constant that `plan` outputs in column `index`, if it is one.
fn constant_output(plan: &LogicalPlan, index: usize) -> Option<ScalarValue> {
    match plan {
        LogicalPlan::Projection(projection) => match unalias(projection.expr.get(index)?) {
            Expr::Literal(value, _) => Some(value.clone()),
            _ => None,
        },
        LogicalPlan::Filter(filter) => constant_output(&filter.input, index),
        LogicalPlan::SubqueryAlias(alias) => constant_output(&alias.input, index),
        _ => None,
    }
}

/// `input` with its columns renamed to those the aggregate reads, so its
/// expressions resolve against it.
fn as_union_input(input: &LogicalPlan, aggregate: &Aggregate) -> Result<LogicalPlanBuilder> {
    let renames: Vec<Expr> = input
        .schema()
        .iter()
        .zip(aggregate.input.schema().iter())
        .map(|((q, f), (uq, uf))| {
            Expr::Column(Column::new(q.cloned(), f.name())).alias_qualified(uq.cloned(), uf.name())
        })
        .collect();
    LogicalPlanBuilder::from(input.clone()).project(renames)
}

fn group_aliases(aggregate: &Aggregate) -> Vec<Expr> {
    aggregate
        .group_expr
        .iter()
        .enumerate()
        .map(|(i, g)| g.clone().alias(format!("g{i}")))
        .collect()
}

/// The aggregate's output columns, restored from `exprs` (one per output
/// column, in order) with their original names and types.
fn restore_output(
    plan: LogicalPlanBuilder,
    aggregate: &Aggregate,
    exprs: Vec<Expr>,
) -> Result<LogicalPlan> {
    let restored: Vec<Expr> = aggregate
        .schema
        .iter()
        .zip(exprs)
        .map(|((q, f), e): ((Option<&TableReference>, _), Expr)| {
            cast(e, f.data_type().clone()).alias_qualified(q.cloned(), f.name())
        })
        .collect();
    plan.project(restored)?.build()
}

/// Each input computes its own groups whole; the union is the answer.
fn whole_per_input(aggregate: &Aggregate, union: &Union) -> Option<LogicalPlan> {
    let build = || -> Result<LogicalPlan> {
        let aggs: Vec<Expr> = aggregate
            .aggr_expr
            .iter()
            .enumerate()
            .map(|(j, a)| unalias(a).clone().alias(format!("p{j}")))
            .collect();
        let mut unioned: Option<LogicalPlanBuilder> = None;
        for input in &union.inputs {
            let part = as_union_input(input, aggregate)?
                .aggregate(group_aliases(aggregate), aggs.clone())?
                .build()?;
            unioned = Some(match unioned {
                None => LogicalPlanBuilder::from(part),
                Some(b) => b.union(part)?,
            });
        }
        let outputs: Vec<Expr> = (0..aggregate.group_expr.len())
            .map(|i| col(format!("g{i}")))
            .chain((0..aggregate.aggr_expr.len()).map(|j| col(format!("p{j}"))))
            .collect();
        restore_output(unioned.expect("two inputs or more"), aggregate, outputs)
    };
    build()
        .inspect_err(|e| tracing::debug!(error = %e, "aggregate not split per node"))
        .ok()
}

/// Partial aggregates per input, combined by a final aggregate here.
fn partial_then_final(
    aggregate: &Aggregate,
    union: &Union,
    partials: &[Partial],
) -> Option<LogicalPlan> {
    let build = || -> Result<LogicalPlan> {
        let mut partial_exprs = Vec::new();
        let mut final_exprs = Vec::new();
        let mut outputs: Vec<Expr> = (0..aggregate.group_expr.len())
            .map(|i| col(format!("g{i}")))
            .collect();
        for (j, partial) in partials.iter().enumerate() {
            let (p, f) = (format!("p{j}"), format!("f{j}"));
            match partial {
                Partial::Count(arg) => {
                    partial_exprs.push(count(arg.clone()).alias(&p));
                    final_exprs.push(sum(col(&p)).alias(&f));
                    // coalesce keeps count's output non-nullable, as announced.
                    outputs.push(coalesce(vec![col(&f), lit(0i64)]));
                }
                Partial::Same(expr) => {
                    partial_exprs.push(expr.clone().alias(&p));
                    let combine = match expr {
                        Expr::AggregateFunction(a) if a.func.name() == "min" => min(col(&p)),
                        Expr::AggregateFunction(a) if a.func.name() == "max" => max(col(&p)),
                        _ => sum(col(&p)),
                    };
                    final_exprs.push(combine.alias(&f));
                    outputs.push(col(&f));
                }
                Partial::Avg(arg) => {
                    let (pn, fn_) = (format!("p{j}_n"), format!("f{j}_n"));
                    let as_float = |e: Expr| match e {
                        Expr::Cast(c) if c.field.data_type() == &DataType::Float64 => Expr::Cast(c),
                        e => cast(e, DataType::Float64),
                    };
                    partial_exprs.push(sum(as_float(arg.clone())).alias(&p));
                    partial_exprs.push(count(arg.clone()).alias(&pn));
                    final_exprs.push(sum(col(&p)).alias(&f));
                    final_exprs.push(sum(col(&pn)).alias(&fn_));
                    outputs.push(as_float(col(&f)) / as_float(col(&fn_)));
                }
            }
        }
        let mut unioned: Option<LogicalPlanBuilder> = None;
        for input in &union.inputs {
            let part = as_union_input(input, aggregate)?
                .aggregate(group_aliases(aggregate), partial_exprs.clone())?
                .build()?;
            unioned = Some(match unioned {
                None => LogicalPlanBuilder::from(part),
                Some(b) => b.union(part)?,
            });
        }
        let groups: Vec<Expr> = (0..aggregate.group_expr.len())
            .map(|i| col(format!("g{i}")))
            .collect();
        let combined = unioned
            .expect("two inputs or more")
            .aggregate(groups, final_exprs)?;
        restore_output(combined, aggregate, outputs)
    };
    build()
        .inspect_err(|e| tracing::debug!(error = %e, "aggregate not split per node"))
        .ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::catalog::{
        CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
    };
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::config::NodeEndpoint;
    use crate::pushdown::PushToNode;
    use crate::remote::{NodeClient, RemoteSource, RemoteTable};

    /// Two nodes publishing `contacts`, and schema `combined` over them.
    async fn session() -> SessionContext {
        let config = SessionConfig::new().with_default_catalog_and_schema("carrow", "public");
        let ctx = SessionContext::new_with_config(config);
        ctx.add_optimizer_rule(Arc::new(SplitAggregatePerNode));
        ctx.add_optimizer_rule(Arc::new(PushToNode::default()));
        let catalog = Arc::new(MemoryCatalogProvider::new());
        let schema = Arc::new(Schema::new(vec![
            Field::new("pid", DataType::FixedSizeBinary(16), true),
            Field::new("setting", DataType::Utf8, true),
            Field::new("age", DataType::Int64, true),
        ]));
        for node in ["acute", "gp"] {
            let endpoint = NodeEndpoint {
                name: node.into(),
                url: "http://127.0.0.1:9".into(),
                user: "coordinator".into(),
                token_file: "unused".into(),
                tls: None,
            };
            let client = Arc::new(NodeClient::new(
                &endpoint,
                String::new(),
                Duration::ZERO,
                Duration::ZERO,
            ));
            let tables = Arc::new(MemorySchemaProvider::new());
            tables
                .register_table(
                    "contacts".into(),
                    Arc::new(RemoteTable::new(client, "contacts".into(), schema.clone())),
                )
                .unwrap();
            catalog.register_schema(node, tables).unwrap();
        }
        let combined = crate::combined::build(catalog.as_ref()).await.unwrap();
        catalog.register_schema("combined", combined).unwrap();
        ctx.register_catalog("carrow", catalog);
        ctx
    }

    /// The SQL each node would receive for `sql`, sorted.
    pub(crate) async fn fragments(sql: &str) -> Vec<String> {
        let ctx = session().await;
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let plan = ctx.state().optimize(&plan).unwrap();
        let mut out = Vec::new();
        plan.apply(|p| {
            if let LogicalPlan::TableScan(scan) = p
                && let Some(table) = crate::pushdown::remote_table(scan)
            {
                out.push(match table.source() {
                    RemoteSource::Query(q) => format!("{}: {q}", table.node().name),
                    RemoteSource::Table(t) => format!("{}: scan {t}", table.node().name),
                });
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        out.sort();
        out
    }

    #[tokio::test]
    async fn decomposable_aggregates_become_one_partial_aggregate_per_node() {
        let sent = fragments("SELECT setting, count(*), sum(age), min(age), avg(age) FROM combined.contacts GROUP BY setting").await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        for (node, fragment) in ["acute", "gp"].iter().zip(&sent) {
            assert!(fragment.starts_with(&format!("{node}: ")), "{fragment}");
            assert!(
                fragment.contains("count(")
                    && fragment.contains("sum(")
                    && fragment.contains("min(")
                    && fragment.contains("GROUP BY"),
                "{fragment}"
            );
        }
    }

    #[tokio::test]
    async fn grouping_by_node_sends_each_node_its_whole_aggregate() {
        let sent =
            fragments("SELECT node, count(DISTINCT pid) FROM combined.contacts GROUP BY node")
                .await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent.iter().all(|f| f.contains("GROUP BY")), "{sent:?}");
    }

    #[tokio::test]
    async fn a_distinct_count_across_nodes_deduplicates_at_each_node_and_counts_here() {
        // The same person can be at both nodes: each node sends its distinct
        // pids once, and the count of the union's distinct pids is made here.
        let sent = fragments("SELECT count(DISTINCT pid) FROM combined.contacts").await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            sent.iter()
                .all(|f| f.ends_with("GROUP BY pid") && !f.contains("count(")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn an_aggregate_that_does_not_decompose_is_computed_here() {
        let sent =
            fragments("SELECT setting, median(age) FROM combined.contacts GROUP BY setting").await;
        assert_eq!(sent, vec!["acute: scan contacts", "gp: scan contacts"]);
    }
}
