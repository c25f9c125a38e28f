//! Generated SQL against the TPC-H federation: thousands of queries from a
//! small grammar over the published tables (projections, aggregates with
//! ROLLUP, CUBE and grouping sets, windows, set operations, subqueries,
//! CTEs, joins across nodes), each run through the coordinator and, with
//! unqualified names, at one node as its operator, and compared with one
//! in-process DataFusion over the same files. Every stream must carry the
//! schema its FlightInfo announced. Then mutated garbage: every answer is
//! a result or a short error, never a crash.
//!
//! `CARROW_GENERATED_QUERIES` (default 1500) and `CARROW_GENERATED_SEED`
//! change the size and the seed; a failure names the seed and the query.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use carrow_node::config::ColumnType;
use carrow_synth::tpch::{NODES, columns};

use crate::support::client;
use crate::tpch::{central, federated, same_answer};

/// What a column or expression holds, for type-correct generation.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Number,
    Text,
    Date,
}

fn kind(t: ColumnType) -> Kind {
    match t {
        ColumnType::String => Kind::Text,
        ColumnType::Date | ColumnType::Timestamp => Kind::Date,
        _ => Kind::Number,
    }
}

/// Joins along TPC-H's foreign keys: (table, column, table, column).
const JOINS: &[(&str, &str, &str, &str)] = &[
    ("orders", "o_custkey", "customer", "c_custkey"),
    ("lineitem", "l_orderkey", "orders", "o_orderkey"),
    ("lineitem", "l_partkey", "part", "p_partkey"),
    ("lineitem", "l_suppkey", "supplier", "s_suppkey"),
    ("partsupp", "ps_partkey", "part", "p_partkey"),
    ("partsupp", "ps_suppkey", "supplier", "s_suppkey"),
    ("customer", "c_nationkey", "nation", "n_nationkey"),
    ("supplier", "s_nationkey", "nation", "n_nationkey"),
    ("nation", "n_regionkey", "region", "r_regionkey"),
    ("orders", "o_orderkey", "lineitem", "l_orderkey"),
];

/// Columns that identify a row of `table`, for deterministic windows.
fn unique_key(table: &str) -> &'static [&'static str] {
    match table {
        "orders" => &["o_orderkey"],
        "lineitem" => &["l_orderkey", "l_linenumber"],
        "customer" => &["c_custkey"],
        "part" => &["p_partkey"],
        "partsupp" => &["ps_partkey", "ps_suppkey"],
        "supplier" => &["s_suppkey"],
        "nation" => &["n_nationkey"],
        _ => &["r_regionkey"],
    }
}

/// A filter that keeps each table's part of a query small.
fn key_filter(rng: &mut ChaCha8Rng, table: &str) -> Option<String> {
    let (column, most) = match table {
        "orders" => ("o_orderkey", 3000),
        "lineitem" => ("l_orderkey", 3000),
        "customer" => ("c_custkey", 1500),
        "part" => ("p_partkey", 2000),
        "partsupp" => ("ps_partkey", 500),
        _ => return None,
    };
    Some(format!("{column} < {}", rng.random_range(1..most)))
}

const TEXT_LITERALS: &[&str] = &[
    "AMERICA", "BUILDING", "F", "O", "R", "1-URGENT", "MAIL", "Brand#23", "MED BOX", "", "it''s",
];
const LIKE_PATTERNS: &[&str] = &["A%", "%a%", "Customer#00000%", "%BRASS", "_R%", "%"];

/// The grammar, over the tables one scope can see.
struct Grammar<'a> {
    rng: ChaCha8Rng,
    tables: &'a [&'a str],
}

/// A table reference to be rendered with or without its node's name.
fn table_ref(table: &str) -> String {
    format!("§{table}§")
}

impl Grammar<'_> {
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        items.choose(&mut self.rng).unwrap()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn columns_of(&self, tables: &[&str], want: Kind) -> Vec<&'static str> {
        tables
            .iter()
            .flat_map(|t| columns(t).iter())
            .filter(|(_, t)| kind(*t) == want)
            .map(|(n, _)| *n)
            .collect()
    }

    fn number_literal(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(-5..100).to_string(),
            1 => format!(
                "{}.{}",
                self.rng.random_range(0..5000),
                self.rng.random_range(0..100)
            ),
            2 => "0".into(),
            _ => self.rng.random_range(1..60_000).to_string(),
        }
    }

    fn date_literal(&mut self) -> String {
        format!(
            "DATE '{}-{:02}-{:02}'",
            self.rng.random_range(1992..1999),
            self.rng.random_range(1..13),
            self.rng.random_range(1..29)
        )
    }

    fn text_literal(&mut self) -> String {
        format!("'{}'", self.pick(TEXT_LITERALS))
    }

    /// An expression of `want` over `tables`, at most `depth` deep.
    fn expr(&mut self, tables: &[&str], want: Kind, depth: u32) -> String {
        let columns = self.columns_of(tables, want);
        if (depth == 0 || self.chance(0.4))
            && let Some(c) = columns.choose(&mut self.rng)
        {
            return c.to_string();
        }
        let d = depth.saturating_sub(1);
        match want {
            Kind::Number => match self.rng.random_range(0..11) {
                0 => format!("{} + {}", self.expr(tables, want, d), self.number_literal()),
                1 => format!(
                    "({} - {})",
                    self.expr(tables, want, d),
                    self.expr(tables, want, d)
                ),
                2 => format!(
                    "{} * {}",
                    self.expr(tables, want, d),
                    self.rng.random_range(0..7)
                ),
                3 => format!("abs({})", self.expr(tables, want, d)),
                4 => format!("round(CAST({} AS DOUBLE), 2)", self.expr(tables, want, d)),
                5 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.predicate(tables, d),
                    self.expr(tables, want, d),
                    self.number_literal()
                ),
                6 => format!("length({})", self.expr(tables, Kind::Text, d)),
                7 => format!(
                    "extract({} FROM {})",
                    self.pick(&["year", "month", "day"]),
                    self.expr(tables, Kind::Date, d)
                ),
                8 => format!("coalesce({}, 0)", self.expr(tables, want, d)),
                9 => format!("CAST({} AS BIGINT)", self.expr(tables, want, d)),
                _ => format!("{} % 7", self.expr(tables, want, d)),
            },
            Kind::Text => match self.rng.random_range(0..9) {
                0 => format!("upper({})", self.expr(tables, want, d)),
                1 => format!("lower({})", self.expr(tables, want, d)),
                2 => format!(
                    "substr({}, {}, {})",
                    self.expr(tables, want, d),
                    self.rng.random_range(1..5),
                    self.rng.random_range(1..8)
                ),
                3 => format!(
                    "concat({}, '-', {})",
                    self.expr(tables, want, d),
                    self.expr(tables, want, d)
                ),
                4 => format!("CAST({} AS VARCHAR)", self.expr(tables, Kind::Number, d)),
                5 => format!("trim({})", self.expr(tables, want, d)),
                6 => format!("{} || 'x'", self.expr(tables, want, d)),
                7 => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.predicate(tables, d),
                    self.expr(tables, want, d),
                    self.text_literal()
                ),
                _ => format!("CAST({} AS VARCHAR)", self.expr(tables, Kind::Date, d)),
            },
            Kind::Date => match self.rng.random_range(0..3) {
                0 => format!(
                    "{} + INTERVAL '{} days'",
                    self.expr(tables, want, d),
                    self.rng.random_range(0..400)
                ),
                1 => format!("{} - INTERVAL '1 month'", self.expr(tables, want, d)),
                _ => self.date_literal(),
            },
        }
    }

    fn predicate(&mut self, tables: &[&str], depth: u32) -> String {
        let d = depth.saturating_sub(1);
        let op = *self.pick(&["<", "<=", ">", ">=", "=", "<>"]);
        match self.rng.random_range(0..10) {
            0 | 1 => format!(
                "{} {op} {}",
                self.expr(tables, Kind::Number, d),
                self.number_literal()
            ),
            2 => format!(
                "{} {op} {}",
                self.expr(tables, Kind::Date, d),
                self.date_literal()
            ),
            3 => format!(
                "{} {op} {}",
                self.expr(tables, Kind::Text, d),
                self.text_literal()
            ),
            4 => format!(
                "{} {}LIKE '{}'",
                self.expr(tables, Kind::Text, d),
                if self.chance(0.3) { "NOT " } else { "" },
                self.pick(LIKE_PATTERNS)
            ),
            5 => {
                let items: Vec<String> = (0..self.rng.random_range(1..6))
                    .map(|_| self.rng.random_range(0..50).to_string())
                    .collect();
                format!(
                    "{} IN ({})",
                    self.expr(tables, Kind::Number, d),
                    items.join(", ")
                )
            }
            6 => format!(
                "{} BETWEEN {} AND {}",
                self.expr(tables, Kind::Number, d),
                self.rng.random_range(0..100),
                self.rng.random_range(100..5000)
            ),
            7 if depth > 0 => format!(
                "({} {} {})",
                self.predicate(tables, d),
                self.pick(&["AND", "OR"]),
                self.predicate(tables, d)
            ),
            8 if depth > 0 => format!("NOT ({})", self.predicate(tables, d)),
            _ => format!("{} IS NOT NULL", self.expr(tables, Kind::Text, d)),
        }
    }

    /// A FROM clause of one table or a join along a foreign key, with the
    /// tables it names and filters that keep it small.
    fn from(&mut self) -> (String, Vec<&'static str>, Vec<String>) {
        let joins: Vec<_> = JOINS
            .iter()
            .filter(|(a, _, b, _)| self.tables.contains(a) && self.tables.contains(b))
            .collect();
        if !joins.is_empty() && self.chance(0.45) {
            let (a, ak, b, bk) = **joins.choose(&mut self.rng).unwrap();
            let kind = *self.pick(&["JOIN", "JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]);
            let filters = [key_filter(&mut self.rng, a), key_filter(&mut self.rng, b)];
            let from = format!("{} {kind} {} ON {ak} = {bk}", table_ref(a), table_ref(b));
            let filters = if kind == "JOIN" {
                filters.into_iter().flatten().collect()
            } else {
                // An outer join's filter on the side that keeps its rows.
                filters[0].iter().cloned().collect()
            };
            return (from, vec![static_name(a), static_name(b)], filters);
        }
        let tables = self.tables;
        let table = static_name(tables.choose(&mut self.rng).unwrap());
        let filters = key_filter(&mut self.rng, table).into_iter().collect();
        (table_ref(table), vec![table], filters)
    }

    fn where_clause(&mut self, tables: &[&str], mut filters: Vec<String>) -> String {
        if self.chance(0.6) {
            filters.push(self.predicate(tables, 2));
        }
        if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filters.join(" AND "))
        }
    }

    fn any_kind(&mut self) -> Kind {
        *self.pick(&[Kind::Number, Kind::Number, Kind::Text, Kind::Date])
    }

    fn projection(&mut self) -> String {
        let (from, tables, filters) = self.from();
        let n = self.rng.random_range(1..5);
        let items: Vec<String> = (0..n)
            .map(|i| {
                let k = self.any_kind();
                format!("{} AS c{i}", self.expr(&tables, k, 2))
            })
            .collect();
        let distinct = if self.chance(0.15) { "DISTINCT " } else { "" };
        let mut sql = format!("SELECT {distinct}{} FROM {from}", items.join(", "));
        sql += &self.where_clause(&tables, filters);
        if self.chance(0.3) {
            // LIMIT only under an order on every column: ties are equal rows.
            let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            sql += &format!(" ORDER BY {}", order.join(", "));
            if self.chance(0.7) {
                sql += &format!(" LIMIT {}", self.rng.random_range(0..30));
            }
        }
        sql
    }

    fn aggregate_call(&mut self, tables: &[&str]) -> String {
        match self.rng.random_range(0..10) {
            0 => "count(*)".into(),
            1 => format!("count({})", self.expr(tables, Kind::Text, 1)),
            2 => format!("count(DISTINCT {})", self.expr(tables, Kind::Number, 1)),
            3 => format!("sum({})", self.expr(tables, Kind::Number, 1)),
            4 => format!("avg({})", self.expr(tables, Kind::Number, 1)),
            5 => {
                let k = self.any_kind();
                format!(
                    "{}({})",
                    self.pick(&["min", "max"]),
                    self.expr(tables, k, 1)
                )
            }
            6 => format!("median({})", self.expr(tables, Kind::Number, 0)),
            7 => {
                let e = self.expr(tables, Kind::Text, 0);
                format!("string_agg({e}, ',' ORDER BY {e})")
            }
            8 => format!("approx_distinct({})", self.expr(tables, Kind::Text, 0)),
            _ => format!(
                "sum({}) FILTER (WHERE {})",
                self.expr(tables, Kind::Number, 0),
                self.predicate(tables, 1)
            ),
        }
    }

    fn aggregate(&mut self) -> String {
        let (from, tables, filters) = self.from();
        let groups: Vec<String> = (0..self.rng.random_range(0..3))
            .map(|_| {
                let k = self.any_kind();
                self.expr(&tables, k, 1)
            })
            .collect();
        let mut items: Vec<String> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| format!("{g} AS g{i}"))
            .collect();
        let shape = self.rng.random_range(0..5);
        let grouped = match (groups.len(), shape) {
            (0, _) => String::new(),
            (_, 0) => format!(" GROUP BY ROLLUP ({})", groups.join(", ")),
            (_, 1) => format!(" GROUP BY CUBE ({})", groups.join(", ")),
            (_, 2) => format!(" GROUP BY GROUPING SETS (({}), ())", groups.join(", ")),
            _ => format!(" GROUP BY {}", groups.join(", ")),
        };
        if !groups.is_empty() && shape < 3 && self.chance(0.5) {
            items.push(format!("grouping({}) AS gr", groups[0]));
        }
        for i in 0..self.rng.random_range(1..4) {
            let call = self.aggregate_call(&tables);
            items.push(format!("{call} AS a{i}"));
        }
        let mut sql = format!("SELECT {} FROM {from}", items.join(", "));
        sql += &self.where_clause(&tables, filters);
        sql += &grouped;
        if !groups.is_empty() && self.chance(0.3) {
            sql += &format!(" HAVING count(*) > {}", self.rng.random_range(0..4));
        }
        sql
    }

    fn window(&mut self) -> String {
        let tables = self.tables;
        let table = static_name(tables.choose(&mut self.rng).unwrap());
        let tables = [table];
        let key = unique_key(table).join(", ");
        let partition = self.expr(&tables, Kind::Text, 0);
        let number = self.expr(&tables, Kind::Number, 1);
        let function = match self.rng.random_range(0..6) {
            0 => format!("row_number() OVER (PARTITION BY {partition} ORDER BY {key})"),
            1 => format!("rank() OVER (ORDER BY {number}, {key})"),
            2 => format!("sum({number}) OVER (PARTITION BY {partition})"),
            3 => format!("lag({number}) OVER (ORDER BY {key})"),
            4 => format!("count(*) OVER (PARTITION BY {partition})"),
            _ => format!(
                "sum({number}) OVER (ORDER BY {key} ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)"
            ),
        };
        let filters = key_filter(&mut self.rng, table).into_iter().collect();
        let mut sql = format!("SELECT {key}, {function} AS w FROM {}", table_ref(table));
        sql += &self.where_clause(&tables, filters);
        sql
    }

    fn single_column(&mut self, k: Kind) -> String {
        let (from, tables, filters) = self.from();
        let e = self.expr(&tables, k, 1);
        let mut sql = format!("SELECT {e} AS v FROM {from}");
        sql += &self.where_clause(&tables, filters);
        sql
    }

    fn set_operation(&mut self) -> String {
        let k = self.any_kind();
        let op = *self.pick(&["UNION ALL", "UNION", "EXCEPT", "INTERSECT"]);
        format!("{} {op} {}", self.single_column(k), self.single_column(k))
    }

    fn subquery(&mut self) -> String {
        let joins: Vec<_> = JOINS
            .iter()
            .filter(|(a, _, b, _)| self.tables.contains(a) && self.tables.contains(b))
            .collect();
        let Some(&&(a, ak, b, bk)) = joins.choose(&mut self.rng) else {
            return self.projection();
        };
        let (outer, inner) = ([a], [b]);
        let inner_filter = key_filter(&mut self.rng, b)
            .map(|f| format!(" AND {f}"))
            .unwrap_or_default();
        let inner_predicate = self.predicate(&inner, 1);
        let condition = match self.rng.random_range(0..4) {
            0 => format!(
                "{ak} IN (SELECT {bk} FROM {} WHERE {inner_predicate}{inner_filter})",
                table_ref(b)
            ),
            1 => format!(
                "{}EXISTS (SELECT 1 FROM {} WHERE {bk} = {ak} AND {inner_predicate}{inner_filter})",
                if self.chance(0.3) { "NOT " } else { "" },
                table_ref(b)
            ),
            2 => {
                let n = self.expr(&inner, Kind::Number, 0);
                let m = self.expr(&outer, Kind::Number, 0);
                format!(
                    "{m} > (SELECT avg({n}) FROM {} WHERE {inner_predicate})",
                    table_ref(b)
                )
            }
            _ => format!(
                "(SELECT count(*) FROM {} WHERE {bk} = {ak}) > {}",
                table_ref(b),
                self.rng.random_range(0..3)
            ),
        };
        let item = self.expr(&outer, Kind::Number, 1);
        let filter = key_filter(&mut self.rng, a)
            .map(|f| format!(" AND {f}"))
            .unwrap_or_default();
        format!(
            "SELECT {item} AS v FROM {} WHERE {condition}{filter}",
            table_ref(a)
        )
    }

    fn common_table(&mut self) -> String {
        let inner = self.aggregate();
        format!("WITH t AS ({inner}) SELECT * FROM t")
    }

    fn query(&mut self) -> String {
        match self.rng.random_range(0..20) {
            0..=5 => self.projection(),
            6..=11 => self.aggregate(),
            12..=13 => self.window(),
            14..=15 => self.set_operation(),
            16..=18 => self.subquery(),
            _ => self.common_table(),
        }
    }
}

fn static_name(table: &str) -> &'static str {
    NODES
        .iter()
        .flat_map(|(_, tables)| tables.iter())
        .find(|t| **t == table)
        .copied()
        .unwrap()
}

/// `sql` with its table references qualified by node (coordinator) or bare (node).
fn render(sql: &str, qualified: bool) -> String {
    let mut out = sql.to_string();
    for (node, tables) in NODES {
        for table in tables {
            let name = if qualified {
                format!("{node}.{table}")
            } else {
                table.to_string()
            };
            out = out.replace(&table_ref(table), &name);
        }
    }
    out
}

/// Garbage made from a valid query: cut, dropped, doubled or foreign tokens.
fn mutate(rng: &mut ChaCha8Rng, sql: &str) -> String {
    const NOISE: &[&str] = &[
        "(",
        ")",
        ",",
        "SELECT",
        "FROM",
        "'",
        "\"",
        "NULL",
        "--",
        "/*",
        ";",
        "UNION",
        "1e999",
        "$1",
        "?",
        "é",
        "JOIN",
        "ORDER BY",
        "GROUP BY",
        "*",
        "9223372036854775808",
        "CASE",
        "OVER (",
        "nosuch.table",
        "nosuchcolumn",
        "\\",
        "::",
        "[",
        "DROP TABLE orders",
    ];
    let mut tokens: Vec<String> = sql.split(' ').map(str::to_string).collect();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..tokens.len());
        match rng.random_range(0..5) {
            0 => tokens.truncate(at.max(1)),
            1 if tokens.len() > 1 => {
                tokens.remove(at);
            }
            2 => tokens.insert(at, tokens[at].clone()),
            3 => tokens.insert(at, NOISE.choose(rng).unwrap().to_string()),
            _ => {
                let other = rng.random_range(0..tokens.len());
                tokens.swap(at, other);
            }
        }
    }
    tokens.join(" ")
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

type FlightClient = arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>;

/// Runs `count` generated queries through `flight`, rendered for it, and
/// against the central DataFusion; returns what differed and how many of
/// the queries had a central answer (so the test knows it tested something).
async fn differential(
    ctx: &datafusion::prelude::SessionContext,
    flight: &mut FlightClient,
    grammar: &mut Grammar<'_>,
    count: u64,
    qualified: bool,
    seed: u64,
) -> (Vec<String>, u64) {
    let mut wrong = Vec::new();
    let mut answered = 0;
    for i in 0..count {
        let sql = grammar.query();
        let central_sql = render(&sql, true);
        let sent = render(&sql, qualified);
        let want = match ctx.sql(&central_sql).await {
            Ok(df) => df.collect().await,
            Err(e) => Err(e),
        };
        let got = federated(flight, &sent).await;
        match (want, got) {
            (Ok(want), Ok((schema, got))) => {
                answered += 1;
                if want.is_empty() {
                    // No central batch to compare schemas with: compare rows.
                    if got.iter().map(|b| b.num_rows()).sum::<usize>() != 0 {
                        wrong.push(format!(
                            "seed {seed} #{i}: {sent}\n  rows where central has none"
                        ));
                    }
                } else if let Err(e) = same_answer(&want, &got, &schema) {
                    wrong.push(format!("seed {seed} #{i}: {sent}\n  {e}"));
                }
            }
            (Ok(_), Err(e)) => wrong.push(format!("seed {seed} #{i}: {sent}\n  failed: {e}")),
            (Err(_), Ok(_)) => wrong.push(format!(
                "seed {seed} #{i}: {sent}\n  answered where central fails"
            )),
            (Err(_), Err(e)) => {
                if e.contains("panicked") || e.contains("query engine failed") || e.len() > 4000 {
                    wrong.push(format!("seed {seed} #{i}: {sent}\n  bad error: {e}"));
                }
            }
        }
    }
    (wrong, answered)
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_queries_match_one_datafusion_and_crash_nothing() {
    let count = setting("CARROW_GENERATED_QUERIES", 1500);
    let seed = setting("CARROW_GENERATED_SEED", 20_261_202);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    crate::tpch::generate_tpch(root);
    let (mut nodes, mut coordinator) = crate::tpch::start_tpch(root, |_| {});
    let ctx = central(root).await;
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let mut operator = client(
        nodes[0].addr,
        "operator",
        &root.join("secrets/operator-sales.token"),
    )
    .await;

    let all_tables: Vec<&str> = NODES.iter().flat_map(|(_, t)| t.iter().copied()).collect();
    let mut at_coordinator = Grammar {
        rng: ChaCha8Rng::seed_from_u64(seed),
        tables: &all_tables,
    };
    let (mut wrong, answered) =
        differential(&ctx, &mut planner, &mut at_coordinator, count, true, seed).await;
    let mut at_node = Grammar {
        rng: ChaCha8Rng::seed_from_u64(seed + 1),
        tables: NODES[0].1,
    };
    let (node_wrong, node_answered) = differential(
        &ctx,
        &mut operator,
        &mut at_node,
        count / 3,
        false,
        seed + 1,
    )
    .await;
    wrong.extend(node_wrong);
    // Most generated queries are valid: the comparison tested something.
    assert!(
        answered * 10 >= count * 8 && node_answered * 10 >= (count / 3) * 8,
        "only {answered} of {count} and {node_answered} of {} queries had a central answer",
        count / 3
    );

    // Garbage: a result or a short error that names no panic, never a crash.
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 2);
    for i in 0..count / 5 {
        let sql = mutate(&mut rng, &at_coordinator.query());
        for (flight, qualified) in [(&mut planner, true), (&mut operator, false)] {
            let sent = render(&sql, qualified);
            if let Err(e) = federated(flight, &sent).await
                && (e.contains("panicked") || e.contains("query engine failed") || e.len() > 4000)
            {
                wrong.push(format!(
                    "seed {seed} garbage #{i}: {sent}\n  bad error: {e}"
                ));
            }
        }
    }

    let shown: Vec<&String> = wrong.iter().take(25).collect();
    assert!(
        wrong.is_empty(),
        "{} generated queries went wrong (first 25):\n{}",
        wrong.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for node in &mut nodes {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "a node died:\n{}",
            node.log()
        );
    }
    assert!(
        coordinator.child.try_wait().unwrap().is_none(),
        "the coordinator died"
    );
    let coordinator_log =
        std::fs::read_to_string(root.join("coordinator/coordinator.log")).unwrap_or_default();
    assert!(
        !coordinator_log.contains("panicked"),
        "the coordinator panicked:\n{coordinator_log}"
    );
    for node in &nodes {
        assert!(
            !node.log().contains("panicked"),
            "a node panicked:\n{}",
            node.log()
        );
    }
}
