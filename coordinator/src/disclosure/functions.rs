//! Functions a controlled query may apply to personal data, and the
//! rewrite that keeps them from failing on it.
//!
//! Whether a query fails is itself an answer: `1 / (cost - 123)` fails
//! exactly when someone's cost is 123. Below a release, data flows only
//! through functions that cannot fail on values (the allowlists here), with
//! the arguments that could make them fail held to literals, and the
//! operators that can fail are made total: a cast becomes `TRY_CAST`
//! (NULL when it cannot convert) and a division or remainder divides by
//! `NULLIF(divisor, 0)` (NULL instead of an error).

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::functions::core::expr_fn::nullif;
use datafusion::logical_expr::expr::{Like, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};

/// Scalar functions that cannot fail on data values, with the positions of
/// arguments that must be literals (a format, a pattern, a length).
const SCALAR: &[(&str, &[usize])] = &[
    // Arithmetic over floats and integers (NaN or wrapping, never errors).
    ("abs", &[]),
    ("acos", &[]),
    ("acosh", &[]),
    ("asin", &[]),
    ("asinh", &[]),
    ("atan", &[]),
    ("atan2", &[]),
    ("atanh", &[]),
    ("cbrt", &[]),
    ("ceil", &[]),
    ("cos", &[]),
    ("cosh", &[]),
    ("cot", &[]),
    ("degrees", &[]),
    ("exp", &[]),
    ("floor", &[]),
    ("isnan", &[]),
    ("iszero", &[]),
    ("ln", &[]),
    ("log", &[]),
    ("log10", &[]),
    ("log2", &[]),
    ("nanvl", &[]),
    ("pi", &[]),
    ("radians", &[]),
    ("round", &[1]),
    ("signum", &[]),
    ("sin", &[]),
    ("sinh", &[]),
    ("sqrt", &[]),
    ("tan", &[]),
    ("tanh", &[]),
    ("trunc", &[1]),
    // Text.
    ("ascii", &[]),
    ("bit_length", &[]),
    ("btrim", &[]),
    ("char_length", &[]),
    ("character_length", &[]),
    ("concat", &[]),
    ("concat_ws", &[0]),
    ("contains", &[]),
    ("ends_with", &[]),
    ("initcap", &[]),
    ("instr", &[]),
    ("left", &[1]),
    ("length", &[]),
    ("levenshtein", &[]),
    ("lower", &[]),
    ("lpad", &[1, 2]),
    ("ltrim", &[]),
    ("md5", &[]),
    ("octet_length", &[]),
    ("replace", &[]),
    ("reverse", &[]),
    ("right", &[1]),
    ("rpad", &[1, 2]),
    ("rtrim", &[]),
    ("sha224", &[]),
    ("sha256", &[]),
    ("sha384", &[]),
    ("sha512", &[]),
    ("split_part", &[1, 2]),
    ("starts_with", &[]),
    ("strpos", &[]),
    ("substr", &[1, 2]),
    ("substring", &[1, 2]),
    ("to_hex", &[]),
    ("translate", &[]),
    ("trim", &[]),
    ("upper", &[]),
    ("regexp_like", &[1, 2]),
    ("regexp_match", &[1, 2]),
    ("regexp_count", &[1, 2, 3]),
    ("regexp_replace", &[1, 2, 3]),
    ("encode", &[1]),
    // Dates and times, with literal units, strides and formats.
    ("date_trunc", &[0]),
    ("datetrunc", &[0]),
    ("date_part", &[0]),
    ("datepart", &[0]),
    ("date_bin", &[0, 2]),
    ("to_char", &[1]),
    ("date_format", &[1]),
    ("now", &[]),
    ("current_date", &[]),
    ("current_time", &[]),
    // Conditionals.
    ("coalesce", &[]),
    ("nullif", &[]),
    ("nvl", &[]),
    ("nvl2", &[]),
    ("ifnull", &[]),
    ("greatest", &[]),
    ("least", &[]),
    ("arrow_typeof", &[]),
];

/// Aggregates a per-person subquery may compute over one person's rows.
pub(crate) const PER_PERSON_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "median",
    "bool_and",
    "bool_or",
    "first_value",
    "last_value",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "var_samp",
    "stddev_samp",
];

/// Window functions a per-person window may compute.
pub(crate) const PER_PERSON_WINDOWS: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "count",
    "sum",
    "avg",
    "min",
    "max",
];

fn literal(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(..) => true,
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        Expr::Alias(a) => literal(&a.expr),
        _ => false,
    }
}

/// Checks that every function `expr` applies to data is one that cannot
/// fail on data values, with its sensitive arguments literal.
pub(crate) fn check_total(expr: &Expr) -> Result<(), String> {
    let mut problem = None;
    let _ = expr.apply(|e| {
        let found = match e {
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                let name = func.name().to_ascii_lowercase();
                match SCALAR.iter().find(|(n, _)| *n == name) {
                    None => Some(format!(
                        "{name}() is not among the functions planners may apply to personal data \
                         (a function that can fail on a value would answer a question about it)"
                    )),
                    Some((_, fixed)) => fixed
                        .iter()
                        .filter_map(|i| args.get(*i))
                        .find(|a| !literal(a))
                        .map(|a| format!("{name}(): its argument {a} must be a literal")),
                }
            }
            Expr::Like(Like { pattern, .. }) | Expr::SimilarTo(Like { pattern, .. })
                if !literal(pattern) =>
            {
                Some(format!("the pattern {pattern} must be a literal"))
            }
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
    problem.map_or(Ok(()), Err)
}

/// `expr` with its failing operators made total: casts become `TRY_CAST`,
/// divisions and remainders divide by `NULLIF(divisor, 0)`. `schema` is
/// the schema `expr` is evaluated over.
pub(crate) fn make_total(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Cast(c) => {
                let data_type = c.field.data_type().clone();
                Transformed::yes(Expr::TryCast(TryCast::new(c.expr, data_type)))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(op, Operator::Divide | Operator::Modulo)
                    && !matches!(right.as_ref(), Expr::Literal(v, _) if !is_zero(v)) =>
            {
                match right
                    .get_type(schema)
                    .ok()
                    .and_then(|t| ScalarValue::new_zero(&t).ok())
                {
                    Some(zero) => {
                        let divisor = nullif(*right, Expr::Literal(zero, None));
                        Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                            left,
                            op,
                            Box::new(divisor),
                        )))
                    }
                    None => Transformed::no(Expr::BinaryExpr(BinaryExpr::new(left, op, right))),
                }
            }
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

fn is_zero(value: &ScalarValue) -> bool {
    value.is_null() || ScalarValue::new_zero(&value.data_type()).is_ok_and(|z| &z == value)
}

/// `plan` (below a release) with every expression made total, subqueries
/// included; output names are kept, so what reads the plan still finds
/// its columns.
pub(crate) fn make_plan_total(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        if node.expressions().is_empty() {
            return Ok(Transformed::no(node));
        }
        let schema = inputs_schema(&node)?;
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            Ok(Transformed::yes(saved.restore(make_total(e, &schema)?)))
        })
    })
    .map(|t| t.data)
}

/// The schema a node's expressions are evaluated over: its input's, or
/// both sides' of a join.
fn inputs_schema(node: &LogicalPlan) -> Result<DFSchema> {
    match node.inputs().as_slice() {
        [] => Ok(DFSchema::empty()),
        [left, right] if matches!(node, LogicalPlan::Join(_)) => left.schema().join(right.schema()),
        [first, ..] => Ok(first.schema().as_ref().clone()),
    }
}
