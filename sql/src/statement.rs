//! Statement checks: only read-only queries run. DDL, DML, `COPY`, `SET`,
//! `EXPLAIN` and table functions (which could read files) are refused, each
//! naming the rule.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Statement, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::QueryError;

/// Rule name for statements other than queries.
pub const READ_ONLY_RULE: &str = "read-only SELECT only";
/// Rule name for table functions.
pub const TABLE_FUNCTION_RULE: &str = "no table functions";

/// The longest statement accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// The most binary operators (`+`, `AND`, `=`, `||` ...) one statement may
/// hold: every planning stage walks expressions recursively, so a chain of
/// ten thousand would exhaust any thread's stack.
pub const MAX_OPERATORS: usize = 2_000;
/// The deepest nesting of brackets and `CASE` accepted.
pub const MAX_NESTING: usize = 64;

/// Refuses statements too large to plan safely, before parsing them (the
/// tokenizer does not recurse, the parser and planner do): longer than
/// [`MAX_SQL_BYTES`], with more than [`MAX_OPERATORS`] binary operators, or
/// nested deeper than [`MAX_NESTING`]. The error names the limit.
pub fn check_limits(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::Invalid(format!(
            "the statement is {} bytes long; the limit is {MAX_SQL_BYTES} bytes",
            sql.len()
        )));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| QueryError::Invalid(format!("cannot parse SQL: {e}")))?;
    let (mut operators, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    for token in &tokens {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if w.keyword == Keyword::CASE => depth += 1,
            Token::Word(w) if w.keyword == Keyword::END => depth = depth.saturating_sub(1),
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => operators += 1,
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret => operators += 1,
            _ => {}
        }
        deepest = deepest.max(depth);
    }
    if operators > MAX_OPERATORS {
        return Err(QueryError::Invalid(format!(
            "the statement holds {operators} operators; the limit is {MAX_OPERATORS} \
             (a long chain of terms or conditions: use IN (...) for lists of values)"
        )));
    }
    if deepest > MAX_NESTING {
        return Err(QueryError::Invalid(format!(
            "the statement nests brackets and CASE {deepest} deep; the limit is {MAX_NESTING}"
        )));
    }
    Ok(())
}

/// `sql` with DB-API and JDBC style `?` placeholders numbered `$1`, `$2` ...
/// in order, as DataFusion names parameters (a driver binds them by
/// position). `?` inside strings, quoted names and comments is left alone,
/// and so is a statement already using `$n`.
pub fn numbered_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return sql.into();
    };
    let marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    if marks.is_empty() {
        return sql.into();
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let (mut line, mut column, mut next) = (1u64, 1u64, 1usize);
    for c in sql.chars() {
        if c == '?' && marks.contains(&(line, column)) {
            out.push_str(&format!("${next}"));
            next += 1;
        } else {
            out.push(c);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    out.into()
}

/// Parses `sql` and refuses anything but one read-only query.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    check_limits(sql)?;
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| QueryError::Invalid(format!("cannot parse SQL: {e}")))?;
    if statements.len() != 1 {
        return Err(QueryError::refused(
            READ_ONLY_RULE,
            format!("send exactly one statement, not {}", statements.len()),
        ));
    }
    match statements.pop_front().expect("one statement") {
        DfStatement::Statement(statement) => match *statement {
            Statement::Query(query) => {
                let mut finder = TableFunctionFinder::default();
                let _ = query.visit(&mut finder);
                if finder.empty_select {
                    // DataFusion 55 panics planning some of these.
                    return Err(QueryError::Invalid(
                        "a scalar subquery SELECT without columns: name one column or expression"
                            .into(),
                    ));
                }
                match finder.found {
                    Some(name) => Err(QueryError::refused(
                        TABLE_FUNCTION_RULE,
                        format!(
                            "table function `{name}` is not allowed: queries may read published tables only"
                        ),
                    )),
                    None => Ok(()),
                }
            }
            other => Err(QueryError::refused(
                READ_ONLY_RULE,
                format!("`{}` statements are not allowed", kind_of(&other)),
            )),
        },
        DfStatement::CreateExternalTable(_) => Err(QueryError::refused(
            READ_ONLY_RULE,
            "`CREATE EXTERNAL TABLE` is not allowed",
        )),
        DfStatement::CopyTo(_) => Err(QueryError::refused(READ_ONLY_RULE, "`COPY` is not allowed")),
        DfStatement::Explain(_) => Err(QueryError::refused(
            READ_ONLY_RULE,
            "`EXPLAIN` is not allowed",
        )),
        DfStatement::Reset(_) => Err(QueryError::refused(
            READ_ONLY_RULE,
            "`RESET` is not allowed",
        )),
    }
}

/// A short name for a statement's kind, for error messages.
fn kind_of(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if matches!(*first, "CREATE" | "DROP" | "ALTER" | "INSERT" | "DELETE") => {
            format!("{first} {second}")
        }
        [first, ..] => first.to_string(),
        [] => "empty".to_string(),
    }
}

#[derive(Default)]
struct TableFunctionFinder {
    found: Option<String>,
    /// A scalar subquery `SELECT` with no select list (a derived table or
    /// `EXISTS` may have none: the unparser writes `SELECT FROM` itself).
    empty_select: bool,
}

/// Whether `body` holds a `SELECT` without a select list (its own
/// subqueries are visited as queries of their own).
fn has_empty_select(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.projection.is_empty(),
        SetExpr::SetOperation { left, right, .. } => {
            has_empty_select(left) || has_empty_select(right)
        }
        SetExpr::Query(query) => has_empty_select(&query.body),
        _ => false,
    }
}

impl Visitor for TableFunctionFinder {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr {
            self.empty_select |= has_empty_select(&query.body);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let name = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => Some(name.to_string()),
            TableFactor::Function { name, .. } => Some(name.to_string()),
            TableFactor::TableFunction { expr, .. } => Some(expr.to_string()),
            _ => None,
        };
        match name {
            Some(name) => {
                self.found = Some(name);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_parameters_outside_strings() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b > ? AND c = '?' AND d IN (?, ?)"),
            "SELECT a FROM t WHERE b > $1 AND c = '?' AND d IN ($2, $3)"
        );
        assert_eq!(
            numbered_placeholders("SELECT a\n-- why?\nFROM t WHERE \"x?\" = ?"),
            "SELECT a\n-- why?\nFROM t WHERE \"x?\" = $1"
        );
        assert_eq!(numbered_placeholders("SELECT $1"), "SELECT $1");
        assert_eq!(numbered_placeholders("SELECT 'é' || ?"), "SELECT 'é' || $1");
    }

    fn rule_of(sql: &str) -> String {
        match check_read_only(sql).unwrap_err() {
            QueryError::Refused { rule, detail } => format!("{rule}: {detail}"),
            other => panic!("expected a refusal for {sql}, got {other}"),
        }
    }

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select a, count(*) from t where b > 3 group by a order by 2 desc limit 5",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x JOIN u USING (pid)",
            "SELECT * FROM t UNION ALL SELECT * FROM u",
            "SELECT * FROM (SELECT a FROM t) s",
        ] {
            check_read_only(sql).unwrap();
        }
    }

    #[test]
    fn writes_and_settings_are_refused_by_name() {
        assert!(rule_of("INSERT INTO t VALUES (1)").contains("`INSERT INTO` statements"));
        assert!(rule_of("DELETE FROM t").starts_with(READ_ONLY_RULE));
        assert!(rule_of("DROP TABLE t").contains("DROP TABLE"));
        assert!(rule_of("CREATE TABLE x AS SELECT 1").contains("CREATE TABLE"));
        assert!(
            rule_of("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'")
                .contains("CREATE EXTERNAL TABLE")
        );
        assert!(rule_of("COPY t TO '/tmp/out.csv'").contains("COPY"));
        assert!(rule_of("SET datafusion.execution.batch_size = 1").contains("SET"));
        assert!(rule_of("EXPLAIN SELECT 1").contains("EXPLAIN"));
        assert!(rule_of("SELECT 1; SELECT 2").contains("exactly one statement"));
    }

    #[test]
    fn table_functions_are_refused_wherever_they_hide() {
        assert!(rule_of("SELECT * FROM read_csv('/etc/passwd')").contains("read_csv"));
        assert!(
            rule_of("SELECT * FROM t WHERE a IN (SELECT a FROM read_parquet('x.parquet'))")
                .contains("read_parquet")
        );
        assert!(
            rule_of("SELECT * FROM t JOIN generate_series(1, 3) g ON true")
                .starts_with(TABLE_FUNCTION_RULE)
        );
    }

    #[test]
    fn a_scalar_subquery_without_columns_is_invalid() {
        for sql in [
            "SELECT a FROM t WHERE (SELECT FROM u WHERE u.b = t.b) > 2",
            "SELECT (SELECT FROM u) AS x FROM t",
            "SELECT a FROM t WHERE a = (SELECT FROM u UNION ALL SELECT FROM v)",
        ] {
            assert!(
                matches!(check_read_only(sql), Err(QueryError::Invalid(m)) if m.contains("without columns")),
                "{sql}"
            );
        }
        // What the unparser writes for a count over a join stays valid.
        assert!(
            check_read_only("SELECT count(1) FROM (SELECT FROM t JOIN u ON t.a = u.a)").is_ok()
        );
        assert!(check_read_only("SELECT a FROM t WHERE EXISTS (SELECT FROM u)").is_ok());
    }

    #[test]
    fn garbage_is_invalid_not_refused() {
        assert!(
            matches!(check_read_only("SELEC 1"), Err(QueryError::Invalid(m)) if m.contains("cannot parse"))
        );
    }
}
