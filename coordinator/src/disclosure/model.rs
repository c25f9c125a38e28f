//! The planner query model: an allowlist checked on the logical plan, with
//! the person provenance of every row.
//!
//! Below a released aggregate, every relation is about at most one person
//! per row. A personal table's rows are about the person of its `pid`; a
//! join keeps one person per row only when it equates the `pid`s of its two
//! sides (in `ON` or in a `WHERE` above a cross join). Person classes are
//! kept in a union-find: equating two `pid`s merges their classes, and the
//! aggregate's input must end with a single class whose `pid` is still
//! visible. `pid` itself may appear only bare: as a join key, projected
//! through subqueries, grouped on in a per-person subquery, compared with
//! `IN (SELECT pid ...)`, and counted by `count(DISTINCT pid)`. Anything
//! the model does not name is refused, naming the construct.

use std::any::Any;
use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, ExprSchemable, GroupingSet, JoinType, LogicalPlan,
    Operator,
};

use crate::remote::RemoteTable;

/// A person class: the persons some `pid` columns are about.
pub(crate) type Class = usize;

/// What each output column of a relation is, and whose rows it holds.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    /// Per output column: the person class of a `pid`, or `None` for a value.
    pub kinds: Vec<Option<Class>>,
    /// The person classes of the rows (a class stays even when its `pid`
    /// is projected away, so that loss can be named).
    pub classes: Vec<Class>,
}

/// What a released aggregate computes, per output measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Measure {
    /// `count(DISTINCT pid)`: the cell's persons.
    Persons,
    /// `count(*)` or `count(expr)`: rows, summed per person first.
    Rows,
    /// `sum(expr)`.
    Sum,
    /// `avg(expr)`: a released sum over a released count.
    Avg,
}

/// Checks plans against the model; holds the person classes' union-find.
#[derive(Debug, Default)]
pub(crate) struct Model {
    parent: Vec<Class>,
    /// Per class: the tables its rows come from, for messages.
    tables: Vec<BTreeSet<String>>,
}

type Checked<T> = Result<T, String>;

/// Whether `plan` reads a table a node declared personal, anywhere
/// (subqueries in filters and projections included).
pub(crate) fn reads_personal_table(plan: &LogicalPlan) -> bool {
    let mut personal = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            personal |= scan_is_personal(scan);
        }
        Ok(if personal {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    personal
}

/// A scan of anything but a node's non-personal table counts as personal.
fn scan_is_personal(scan: &datafusion::logical_expr::TableScan) -> bool {
    let Ok(provider) = source_as_provider(&scan.source) else {
        return true;
    };
    let any: &dyn Any = provider.as_ref();
    if any.is::<crate::last_query::LastQuery>() {
        return false;
    }
    any.downcast_ref::<RemoteTable>()
        .is_none_or(RemoteTable::personal)
}

/// The pseudonym column of a personal table.
pub(crate) fn is_pid_field(field: &datafusion::arrow::datatypes::Field) -> bool {
    field.name() == "pid" && matches!(field.data_type(), DataType::FixedSizeBinary(16))
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}

/// The names of aggregates planners may not use, with why.
fn refused_aggregate(name: &str) -> String {
    let order = [
        "min",
        "max",
        "median",
        "first_value",
        "last_value",
        "nth_value",
        "array_agg",
        "string_agg",
        "percentile_cont",
        "percentile_disc",
        "approx_percentile_cont",
        "approx_percentile_cont_with_weight",
        "approx_median",
        "mode",
        "bool_and",
        "bool_or",
        "bit_and",
        "bit_or",
        "bit_xor",
    ];
    let why = if order.contains(&name) {
        "an order statistic or a list of values releases one person's value"
    } else {
        "it is not among the aggregates released to planners"
    };
    format!(
        "{name}(...) is refused: {why}; planners may use count(*), count(expr), count(DISTINCT pid), sum and avg"
    )
}

impl Model {
    fn new_class(&mut self, table: String) -> Class {
        let class = self.parent.len();
        self.parent.push(class);
        self.tables.push(BTreeSet::from([table]));
        class
    }

    pub(crate) fn root(&self, mut class: Class) -> Class {
        while self.parent[class] != class {
            class = self.parent[class];
        }
        class
    }

    fn union(&mut self, a: Class, b: Class) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            self.parent[b] = a;
            let moved = std::mem::take(&mut self.tables[b]);
            self.tables[a].extend(moved);
        }
    }

    /// The distinct person classes of a relation's rows.
    pub(crate) fn roots(&self, relation: &Relation) -> BTreeSet<Class> {
        relation.classes.iter().map(|c| self.root(*c)).collect()
    }

    fn names(&self, class: Class) -> String {
        let tables: Vec<&str> = self.tables[self.root(class)]
            .iter()
            .map(String::as_str)
            .collect();
        tables.join(", ")
    }

    /// The single person class of `relation`, or why its rows are about
    /// several persons at once.
    pub(crate) fn single_class(&self, relation: &Relation, what: &str) -> Checked<Option<Class>> {
        let roots: Vec<Class> = self.roots(relation).into_iter().collect();
        match roots.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            [a, b, ..] => Err(format!(
                "{what} combines rows of {} with rows of {} without joining them on pid \
                 (join personal tables with `ON a.pid = b.pid`): a row would be about several persons",
                self.names(*a),
                self.names(*b)
            )),
        }
    }

    /// The person class of `expr` when it is a bare `pid` column of `schema`.
    fn person_of(&self, expr: &Expr, relation: &Relation, schema: &DFSchema) -> Option<Class> {
        match unalias(expr) {
            Expr::Column(c) => {
                let index = schema.index_of_column(c).ok()?;
                relation.kinds.get(index).copied().flatten()
            }
            _ => None,
        }
    }

    /// Checks that `expr` computes a value from published non-pid columns
    /// only: no `pid`, no volatile function, no subquery over personal data.
    pub(crate) fn check_value(
        &self,
        expr: &Expr,
        relation: &Relation,
        schema: &DFSchema,
    ) -> Checked<()> {
        for column in expr.column_refs() {
            if let Ok(index) = schema.index_of_column(column)
                && relation.kinds.get(index).copied().flatten().is_some()
            {
                return Err(format!(
                    "{expr} uses pid: pid may appear only as a join key (`ON a.pid = b.pid`), \
                     in `pid IN (SELECT pid ...)`, in a per-person subquery's GROUP BY and in count(DISTINCT pid)"
                ));
            }
        }
        check_expression(expr)?;
        super::functions::check_total(expr)
    }

    /// The relation a plan below a released aggregate computes.
    pub(crate) fn relation(&mut self, plan: &LogicalPlan) -> Checked<Relation> {
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => Ok(Relation {
                kinds: vec![None; plan.schema().fields().len()],
                classes: vec![],
            }),
            LogicalPlan::SubqueryAlias(a) => self.relation(&a.input),
            LogicalPlan::Projection(p) => {
                let input = self.relation(&p.input)?;
                let schema = p.input.schema();
                let mut kinds = Vec::with_capacity(p.expr.len());
                for expr in &p.expr {
                    match self.person_of(expr, &input, schema) {
                        Some(class) => kinds.push(Some(class)),
                        None => {
                            self.check_value(expr, &input, schema)?;
                            kinds.push(None);
                        }
                    }
                }
                Ok(Relation {
                    kinds,
                    classes: input.classes,
                })
            }
            LogicalPlan::Filter(f) => {
                let input = self.relation(&f.input)?;
                self.condition(&f.predicate, &input, f.input.schema())?;
                Ok(input)
            }
            LogicalPlan::Join(join) => {
                let left = self.relation(&join.left)?;
                let right = self.relation(&join.right)?;
                let both = Relation {
                    kinds: left.kinds.iter().chain(&right.kinds).copied().collect(),
                    classes: left.classes.iter().chain(&right.classes).copied().collect(),
                };
                for (l, r) in &join.on {
                    let lp = self.person_of(l, &left, join.left.schema());
                    let rp = self.person_of(r, &right, join.right.schema());
                    match (lp, rp) {
                        (Some(a), Some(b)) => self.union(a, b),
                        (None, None) => {
                            self.check_value(l, &left, join.left.schema())?;
                            self.check_value(r, &right, join.right.schema())?;
                        }
                        _ => {
                            return Err(format!(
                                "the join condition {} = {} compares pid with a value",
                                l.schema_name(),
                                r.schema_name()
                            ));
                        }
                    }
                }
                let joined = join
                    .left
                    .schema()
                    .as_ref()
                    .clone()
                    .join(join.right.schema())
                    .map_err(|e| e.to_string())?;
                if let Some(filter) = &join.filter {
                    self.condition(filter, &both, &joined)?;
                }
                self.join_type(join.join_type, left, right, both)
            }
            LogicalPlan::Aggregate(a) => self.per_person_aggregate(a),
            LogicalPlan::Distinct(Distinct::All(input)) => self.relation(input),
            LogicalPlan::Distinct(Distinct::On(_)) => {
                Err("DISTINCT ON picks one row of several by their order".into())
            }
            LogicalPlan::Union(u) => {
                let mut kinds: Option<Vec<Option<Class>>> = None;
                let mut classes = Vec::new();
                for input in &u.inputs {
                    let relation = self.relation(input)?;
                    self.single_class(&relation, "a branch of UNION")?;
                    match &mut kinds {
                        None => kinds = Some(relation.kinds.clone()),
                        Some(kinds) => {
                            for (i, (k, other)) in kinds.iter().zip(&relation.kinds).enumerate() {
                                if k.is_some() != other.is_some() {
                                    return Err(format!(
                                        "column {} of a UNION holds pid in one branch and a value in another",
                                        u.schema.field(i).name()
                                    ));
                                }
                                if let (Some(a), Some(b)) = (k, other) {
                                    self.union(*a, *b);
                                }
                            }
                        }
                    }
                    classes.extend(relation.classes);
                }
                // Every branch's persons are one class: each row is about the
                // person of its own pid.
                if let Some(first) = classes.first().copied() {
                    for c in classes.clone() {
                        self.union(first, c);
                    }
                }
                Ok(Relation {
                    kinds: kinds.unwrap_or_default(),
                    classes,
                })
            }
            LogicalPlan::Window(w) => {
                let input = self.relation(&w.input)?;
                let class = self.single_class(&input, "a window function")?;
                let schema = w.input.schema();
                for expr in &w.window_expr {
                    let Expr::WindowFunction(f) = unalias(expr) else {
                        return Err(format!("{} is not a window function", expr.schema_name()));
                    };
                    let name = f.fun.name().to_ascii_lowercase();
                    if !super::functions::PER_PERSON_WINDOWS.contains(&name.as_str()) {
                        return Err(format!(
                            "{name}(...) is not among the window functions a per-person window may compute"
                        ));
                    }
                    let params = &f.params;
                    if class.is_some()
                        && !params
                            .partition_by
                            .iter()
                            .any(|p| self.person_of(p, &input, schema).is_some())
                    {
                        return Err(format!(
                            "the window function {} runs across persons: partition it by pid",
                            expr.schema_name()
                        ));
                    }
                    for e in params
                        .args
                        .iter()
                        .chain(params.order_by.iter().map(|s| &s.expr))
                        .chain(params.filter.as_deref())
                    {
                        self.check_value(e, &input, schema)?;
                    }
                    for p in &params.partition_by {
                        if self.person_of(p, &input, schema).is_none() {
                            self.check_value(p, &input, schema)?;
                        }
                    }
                }
                let mut kinds = input.kinds.clone();
                kinds.extend(std::iter::repeat_n(None, w.window_expr.len()));
                Ok(Relation {
                    kinds,
                    classes: input.classes,
                })
            }
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Err(
                "ORDER BY or LIMIT inside the query selects rows by their rank; \
                 order and limit the released result instead"
                    .into(),
            ),
            other => Err(format!(
                "{} is not part of the planner query model",
                describe(other)
            )),
        }
    }

    fn scan(&mut self, scan: &datafusion::logical_expr::TableScan) -> Checked<Relation> {
        let schema = &scan.projected_schema;
        if !scan_is_personal(scan) {
            return Ok(Relation {
                kinds: vec![None; schema.fields().len()],
                classes: vec![],
            });
        }
        let table = scan.table_name.to_string();
        let source = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
        let any: &dyn Any = source.as_ref();
        if any.downcast_ref::<RemoteTable>().is_none() {
            return Err(format!("{table} is not a table published by a node"));
        }
        if !source.schema().fields().iter().any(|f| is_pid_field(f)) {
            return Err(format!(
                "table {table} is personal but has no pid column: the persons behind its rows cannot be counted"
            ));
        }
        let class = self.new_class(table);
        let kinds = schema
            .fields()
            .iter()
            .map(|f| is_pid_field(f).then_some(class))
            .collect();
        Ok(Relation {
            kinds,
            classes: vec![class],
        })
    }

    /// A filter or join condition: conjuncts equating two pids join their
    /// persons; `pid IN (SELECT pid ...)` selects persons; every other
    /// conjunct is a value condition.
    fn condition(
        &mut self,
        predicate: &Expr,
        relation: &Relation,
        schema: &DFSchema,
    ) -> Checked<()> {
        for conjunct in split_conjunction(predicate) {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr {
                    left,
                    op: Operator::Eq,
                    right,
                }) if self.person_of(left, relation, schema).is_some()
                    || self.person_of(right, relation, schema).is_some() =>
                {
                    match (
                        self.person_of(left, relation, schema),
                        self.person_of(right, relation, schema),
                    ) {
                        (Some(a), Some(b)) => self.union(a, b),
                        _ => {
                            return Err(format!(
                                "{} compares pid with a value",
                                conjunct.schema_name()
                            ));
                        }
                    }
                }
                Expr::InSubquery(in_subquery)
                    if self
                        .person_of(&in_subquery.expr, relation, schema)
                        .is_some() =>
                {
                    let sub = &in_subquery.subquery.subquery;
                    let inner = self.relation(sub)?;
                    self.single_class(&inner, "the subquery of pid IN (...)")?;
                    if !in_subquery.subquery.outer_ref_columns.is_empty()
                        || inner.kinds.len() != 1
                        || inner.kinds[0].is_none()
                    {
                        return Err(
                            "pid IN (...) must select the pid of an uncorrelated subquery over persons"
                                .into(),
                        );
                    }
                }
                other => self.check_value(other, relation, schema)?,
            }
        }
        Ok(())
    }

    fn join_type(
        &mut self,
        join_type: JoinType,
        left: Relation,
        right: Relation,
        both: Relation,
    ) -> Checked<Relation> {
        // The side whose rows may be missing must hold the preserved side's
        // person (joined on pid) or no person at all.
        let joined_to = |model: &Self, kept: &Relation, other: &Relation| {
            let kept = model.roots(kept);
            model.roots(other).iter().all(|c| kept.contains(c))
        };
        let outer = |what: &str| {
            Err(format!(
                "{what} of personal tables must join them on pid (ON a.pid = b.pid)"
            ))
        };
        match join_type {
            JoinType::Inner => Ok(both),
            JoinType::Left => {
                if joined_to(self, &left, &right) {
                    Ok(both)
                } else {
                    outer("LEFT JOIN")
                }
            }
            JoinType::Right => {
                if joined_to(self, &right, &left) {
                    Ok(both)
                } else {
                    outer("RIGHT JOIN")
                }
            }
            JoinType::LeftSemi | JoinType::LeftAnti => {
                if joined_to(self, &left, &right) {
                    Ok(left)
                } else {
                    outer("a semi or anti join")
                }
            }
            JoinType::RightSemi | JoinType::RightAnti => {
                if joined_to(self, &right, &left) {
                    Ok(right)
                } else {
                    outer("a semi or anti join")
                }
            }
            JoinType::Full => {
                if left.classes.is_empty() && right.classes.is_empty() {
                    Ok(both)
                } else {
                    Err(
                        "FULL JOIN over personal tables is not part of the planner query model"
                            .into(),
                    )
                }
            }
            other => Err(format!(
                "a {other} join is not part of the planner query model"
            )),
        }
    }

    /// An aggregate inside the query: it must be per person (grouped by
    /// pid), so each of its rows is still about one person.
    fn per_person_aggregate(&mut self, aggregate: &Aggregate) -> Checked<Relation> {
        let input = self.relation(&aggregate.input)?;
        let schema = aggregate.input.schema();
        let Some(class) = self.single_class(&input, "an aggregate inside the query")? else {
            // Over reference data only: its rows are about no person.
            for e in aggregate.group_expr.iter().chain(&aggregate.aggr_expr) {
                check_expression(e)?;
            }
            return Ok(Relation {
                kinds: vec![None; aggregate.schema.fields().len()],
                classes: vec![],
            });
        };
        if aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err("ROLLUP, CUBE and GROUPING SETS belong in the released aggregate, not in a subquery".into());
        }
        let mut kinds = Vec::new();
        let mut per_person = false;
        for e in &aggregate.group_expr {
            match self.person_of(e, &input, schema) {
                Some(c) => {
                    per_person = true;
                    kinds.push(Some(c));
                }
                None => {
                    self.check_value(e, &input, schema)?;
                    kinds.push(None);
                }
            }
        }
        if !per_person {
            return Err(format!(
                "an aggregate inside the query groups rows of {} by {} rather than per person: \
                 only the outermost aggregate is released; a subquery may aggregate per person (GROUP BY pid)",
                self.names(class),
                if aggregate.group_expr.is_empty() {
                    "nothing".to_string()
                } else {
                    aggregate
                        .group_expr
                        .iter()
                        .map(|e| e.schema_name().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        for e in &aggregate.aggr_expr {
            let Expr::AggregateFunction(f) = unalias(e) else {
                return Err(format!("{} is not an aggregate", e.schema_name()));
            };
            let name = f.func.name().to_ascii_lowercase();
            if !super::functions::PER_PERSON_AGGREGATES.contains(&name.as_str()) {
                return Err(format!(
                    "{name}(...) is not among the aggregates a per-person subquery may compute"
                ));
            }
            let params = &f.params;
            for arg in params
                .args
                .iter()
                .chain(params.filter.as_deref())
                .chain(params.order_by.iter().map(|s| &s.expr))
            {
                self.check_value(arg, &input, schema)?;
            }
            kinds.push(None);
        }
        Ok(Relation {
            kinds,
            classes: input.classes,
        })
    }

    /// The person class of the released aggregate's input and a visible
    /// `pid` column of it.
    pub(crate) fn person_column(
        &mut self,
        aggregate: &Aggregate,
    ) -> Checked<(Relation, Class, Column)> {
        let input = self.relation(&aggregate.input)?;
        let class = self
            .single_class(&input, "the aggregate")?
            .ok_or("the aggregate reads personal data only through a subquery")?;
        let schema = aggregate.input.schema();
        let index = input
            .kinds
            .iter()
            .position(|k| k.is_some_and(|c| self.root(c) == class))
            .ok_or_else(|| {
                format!(
                    "the query drops pid of {} before the aggregate: keep pid in every subquery \
                     so the persons behind each row can be counted",
                    self.names(class)
                )
            })?;
        let (qualifier, field) = schema.qualified_field(index);
        Ok((input, class, Column::new(qualifier.cloned(), field.name())))
    }

    /// What one aggregate expression of the released aggregate measures.
    pub(crate) fn measure(
        &self,
        expr: &Expr,
        input: &Relation,
        schema: &DFSchema,
    ) -> Checked<Measure> {
        let Expr::AggregateFunction(f) = unalias(expr) else {
            return Err(format!("{} is not an aggregate", expr.schema_name()));
        };
        let name = f.func.name().to_ascii_lowercase();
        let params = &f.params;
        for e in params
            .filter
            .as_deref()
            .into_iter()
            .chain(params.order_by.iter().map(|s| &s.expr))
        {
            self.check_value(e, input, schema)?;
        }
        match name.as_str() {
            "count" if params.distinct => match params.args.as_slice() {
                [arg] if self.person_of(arg, input, schema).is_some() => Ok(Measure::Persons),
                _ => Err(format!(
                    "{} counts distinct values, not persons: the only distinct count released is count(DISTINCT pid)",
                    expr.schema_name()
                )),
            },
            "count" => {
                for arg in &params.args {
                    self.check_value(arg, input, schema)?;
                }
                Ok(Measure::Rows)
            }
            "sum" | "avg" | "mean" => {
                if params.distinct {
                    return Err(format!(
                        "{} sums distinct values, which one person can decide",
                        expr.schema_name()
                    ));
                }
                for arg in &params.args {
                    self.check_value(arg, input, schema)?;
                    let data_type = arg.get_type(schema).map_err(|e| e.to_string())?;
                    if !(data_type.is_numeric() || data_type.is_null()) {
                        return Err(format!(
                            "{} needs a numeric measure, not {data_type}",
                            expr.schema_name()
                        ));
                    }
                }
                Ok(if name == "sum" {
                    Measure::Sum
                } else {
                    Measure::Avg
                })
            }
            other => Err(refused_aggregate(other)),
        }
    }
}

/// Checks an expression's own constructs: no volatile function, no subquery
/// over personal data, no pid reached through an outer reference.
pub(crate) fn check_expression(expr: &Expr) -> Checked<()> {
    let mut problem = None;
    let _ = expr.apply(|e| {
        let found = match e {
            Expr::ScalarSubquery(s) => personal_subquery(&s.subquery, "a scalar subquery"),
            Expr::Exists(s) => personal_subquery(&s.subquery.subquery, "EXISTS"),
            Expr::InSubquery(s) => personal_subquery(&s.subquery.subquery, "IN (subquery)"),
            Expr::SetComparison(s) => personal_subquery(&s.subquery.subquery, "ANY/ALL (subquery)"),
            Expr::OuterReferenceColumn(field, column) if is_pid_field(field) => Some(format!(
                "a subquery refers to {column}: pid may not reach a subquery"
            )),
            Expr::Unnest(_) => Some("UNNEST is not part of the planner query model".into()),
            Expr::WindowFunction(_) | Expr::AggregateFunction(_) => None,
            e if e.is_volatile_node() => Some(format!(
                "{} is volatile: a query whose answer changes at random could be averaged",
                e.schema_name()
            )),
            _ => None,
        };
        Ok(match found {
            Some(p) => {
                problem = Some(p);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

fn personal_subquery(plan: &LogicalPlan, what: &str) -> Option<String> {
    reads_personal_table(plan).then(|| {
        format!(
            "{what} over personal data is not released to planners (its answer would escape \
             disclosure control); join the tables on pid instead"
        )
    })
}

/// A plan node in words, for refusals.
pub(crate) fn describe(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::TableScan(scan) => format!("rows of table {}", scan.table_name),
        LogicalPlan::Join(_) => "a join of rows".into(),
        LogicalPlan::Union(_) => "a union".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        LogicalPlan::Distinct(_) => "a DISTINCT list of rows".into(),
        LogicalPlan::RecursiveQuery(_) => "a recursive query".into(),
        LogicalPlan::Unnest(_) => "UNNEST".into(),
        LogicalPlan::Extension(e) => format!("the {} operator", e.node.name()),
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

/// The grouping sets of a `GROUP BY` (`None` for a plain one), expanded.
pub(crate) fn grouping_sets(group_expr: &[Expr]) -> Option<Vec<Vec<Expr>>> {
    let [Expr::GroupingSet(set)] = group_expr else {
        return None;
    };
    Some(match set {
        GroupingSet::GroupingSets(sets) => sets.clone(),
        GroupingSet::Rollup(exprs) => (0..=exprs.len()).map(|i| exprs[..i].to_vec()).collect(),
        GroupingSet::Cube(exprs) => {
            let n = exprs.len();
            (0..1usize << n)
                .map(|mask| {
                    (0..n)
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| exprs[i].clone())
                        .collect()
                })
                .collect()
        }
    })
}

/// The distinct grouping expressions of a `GROUP BY`, in output order.
pub(crate) fn distinct_group_exprs(group_expr: &[Expr]) -> Vec<Expr> {
    match group_expr {
        [Expr::GroupingSet(set)] => set.distinct_expr().into_iter().cloned().collect(),
        other => other.to_vec(),
    }
}
