//! TPC-H as a standing differential test: the eight tables over three
//! nodes, all 22 queries through the coordinator (Flight SQL and the
//! Python ADBC driver) against one in-process DataFusion over the same
//! files. Every answer must be the central one, in the central types, and
//! every stream must carry exactly the schema its FlightInfo announced.

use std::path::Path;
use std::sync::Arc;

use carrow_node::config::ColumnType;
use carrow_sql::boundary::client_type;
use carrow_synth::tpch::{NODES, QUERIES, columns};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use futures::TryStreamExt;

use crate::coordinator::start_coordinator_at;
use crate::support::{NodeProcess, client};

const SCALE_FACTOR: &str = "0.01";

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
    }
}

/// One DataFusion over the generated files, with the coordinator's names.
pub(crate) async fn central(root: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for (node, tables) in NODES {
        ctx.sql(&format!("CREATE SCHEMA {node}")).await.unwrap();
        for table in tables {
            let schema = Schema::new(
                columns(table)
                    .iter()
                    .map(|(name, t)| Field::new(*name, arrow_type(*t), true))
                    .collect::<Vec<_>>(),
            );
            let path = root.join(node).join(format!("{table}.csv"));
            ctx.register_csv(
                format!("{node}.{table}"),
                path.to_str().unwrap(),
                CsvReadOptions::new().schema(&schema).has_header(true),
            )
            .await
            .unwrap();
        }
    }
    ctx
}

/// TPC-H at the tests' scale factor, generated into `root`.
pub(crate) fn generate_tpch(root: &Path) {
    let out = crate::support::run(&[
        "generate",
        "--tpch",
        SCALE_FACTOR,
        "--out",
        root.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
}

/// The three TPC-H nodes of `root` (in [`NODES`] order) and a coordinator
/// over them, its configuration changed by `change`.
pub(crate) fn start_tpch(
    root: &Path,
    change: impl FnOnce(&mut carrow_coordinator::CoordinatorConfig),
) -> (Vec<NodeProcess>, crate::coordinator::CoordinatorProcess) {
    let nodes: Vec<NodeProcess> = NODES
        .iter()
        .map(|(node, _)| NodeProcess::start(&root.join(node).join("node.toml")))
        .collect();
    let addrs: Vec<(&str, std::net::SocketAddr)> = NODES
        .iter()
        .zip(&nodes)
        .map(|((n, _), p)| (*n, p.addr))
        .collect();
    let coordinator = start_coordinator_at(root, &addrs, change);
    (nodes, coordinator)
}

/// A cell for comparison: numbers within a relative 1e-9 (float sums
/// depend on the order rows arrive in), decimals within one unit of their
/// last place (a decimal average is rounded at its scale, and partial
/// aggregates may round where one pass truncates), anything else as text.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Number(f64),
    Decimal(f64, i8),
    Text(String),
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) => true,
            (Cell::Number(a), Cell::Number(b)) => {
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            }
            (Cell::Decimal(a, scale), Cell::Decimal(b, _)) => {
                (a - b).abs() <= 10f64.powi(-i32::from(*scale)) * 1.000_001
            }
            (Cell::Text(a), Cell::Text(b)) => a == b,
            _ => false,
        }
    }
}

fn cells(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .map(|column| {
                        if column.is_null(row) {
                            return Cell::Null;
                        }
                        let text = array_value_to_string(column, row).unwrap();
                        match column.data_type() {
                            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                                Cell::Number(text.parse().unwrap())
                            }
                            DataType::Decimal128(_, scale) => {
                                Cell::Decimal(text.parse().unwrap(), *scale)
                            }
                            _ => Cell::Text(text),
                        }
                    })
                    .collect(),
            );
        }
    }
    // Ties in ORDER BY may come in either order: compare as multisets,
    // sorted on a rounded rendering.
    let key = |row: &Vec<Cell>| -> String {
        row.iter()
            .map(|c| match c {
                Cell::Null => "\u{0}".to_string(),
                Cell::Number(n) | Cell::Decimal(n, _) => format!("{n:.6e}"),
                Cell::Text(t) => t.clone(),
            })
            .collect::<Vec<_>>()
            .join("\u{1}")
    };
    out.sort_by_key(key);
    out
}

/// Whether `got` is the central answer `want`: names, types and rows.
pub(crate) fn same_answer(
    want: &[RecordBatch],
    got: &[RecordBatch],
    got_schema: &Schema,
) -> Result<(), String> {
    let want_schema = want.first().map(|b| b.schema()).ok_or("no central batch")?;
    // Strings cross the client boundary as Utf8, whatever DataFusion
    // computed them as (the documented type contract).
    let names = |s: &Schema| -> Vec<(String, DataType)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), client_type(f.data_type())))
            .collect()
    };
    if names(&want_schema) != names(got_schema) {
        return Err(format!(
            "columns differ:\n central   {:?}\n federated {:?}",
            names(&want_schema),
            names(got_schema)
        ));
    }
    let (want, got) = (cells(want), cells(got));
    if want.len() != got.len() {
        return Err(format!("{} rows, central {}", got.len(), want.len()));
    }
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if w != g {
            return Err(format!("row {i}: {g:?}, central {w:?}"));
        }
    }
    Ok(())
}

/// Runs `sql` over Flight SQL; checks that every batch carries the schema
/// the FlightInfo announced (names, types, nullability, field metadata).
pub(crate) async fn federated(
    planner: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<(Schema, Vec<RecordBatch>), String> {
    let info = planner
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let announced = info
        .clone()
        .try_decode_schema()
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = planner
            .do_get(endpoint.ticket.unwrap())
            .await
            .map_err(|e| e.to_string())?;
        batches.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for batch in &batches {
        if batch.schema().fields() != announced.fields() {
            return Err(format!(
                "streamed schema differs from the announced one:\n announced {:?}\n streamed  {:?}",
                announced.fields(),
                batch.schema().fields()
            ));
        }
    }
    Ok((announced, batches))
}

fn read_ipc(path: &Path) -> (Schema, Vec<RecordBatch>) {
    let file = std::fs::File::open(path).unwrap();
    let reader = datafusion::arrow::ipc::reader::FileReader::try_new(file, None).unwrap();
    let schema = reader.schema().as_ref().clone();
    (schema, reader.map(|b| b.unwrap()).collect())
}

/// Beyond TPC-H: shapes whose announced types once differed from what
/// streamed (grouping() nullability, decimals, Utf8 against Utf8View) or
/// whose pushed SQL repeated an output name.
const ANALYTICAL: &[&str] = &[
    "SELECT r_name, n_name, grouping(n_name) AS g, count(*) AS c \
     FROM customers.nation JOIN customers.region ON n_regionkey = r_regionkey \
     GROUP BY ROLLUP (r_name, n_name)",
    "SELECT o_orderpriority, grouping(o_orderpriority) AS g, sum(o_totalprice) AS total \
     FROM sales.orders GROUP BY ROLLUP (o_orderpriority)",
    "SELECT l_shipmode, l_returnflag, sum(l_quantity * l_extendedprice) AS v \
     FROM sales.lineitem GROUP BY CUBE (l_shipmode, l_returnflag)",
    "SELECT o_orderstatus, avg(o_totalprice) AS a, min(o_totalprice) AS lo, \
       max(o_totalprice) AS hi, stddev(o_totalprice) AS sd, median(o_totalprice) AS m \
     FROM sales.orders GROUP BY o_orderstatus",
    "SELECT r_name, string_agg(n_name, ',' ORDER BY n_name) AS nations \
     FROM customers.nation JOIN customers.region ON n_regionkey = r_regionkey GROUP BY r_name",
    "SELECT CAST(o_totalprice AS VARCHAR) AS t, CAST(o_orderkey AS VARCHAR) AS k \
     FROM sales.orders WHERE o_orderkey < 40",
    "SELECT a.n_name, b.n_name FROM customers.nation a \
     JOIN customers.nation b ON a.n_regionkey = b.n_regionkey",
    "SELECT n_nationkey, n_nationkey + 0 AS again, n_name, n_name AS name_again FROM customers.nation",
    "SELECT o_custkey, o_orderkey, rank() OVER (PARTITION BY o_custkey ORDER BY o_totalprice) AS r, \
       sum(o_totalprice) OVER (PARTITION BY o_custkey) AS customer_total \
     FROM sales.orders WHERE o_custkey < 20",
    "SELECT s_name AS name FROM supply.supplier UNION ALL SELECT c_name FROM customers.customer",
    "SELECT count(DISTINCT l_suppkey) AS suppliers, approx_distinct(l_partkey) AS parts, \
       median(l_quantity) AS m FROM sales.lineitem",
    "SELECT date_trunc('month', o_orderdate) AS m, count(*) AS n FROM sales.orders GROUP BY 1",
    "SELECT concat(c_name, '-', c_mktsegment) AS label, upper(c_name) AS u, \
       length(c_comment) AS len FROM customers.customer WHERE c_custkey < 50",
    "SELECT CAST(c_acctbal AS DOUBLE) AS d, CAST(c_acctbal AS INT) AS i, c_acctbal / 3 AS q, \
       c_acctbal * c_acctbal AS sq FROM customers.customer WHERE c_custkey < 50",
    "SELECT n_name, (SELECT count(*) FROM customers.customer WHERE c_nationkey = n_nationkey) AS c \
     FROM customers.nation",
    "SELECT r.*, s.s_name FROM customers.region r CROSS JOIN supply.supplier s",
    "SELECT ps_partkey, sum(ps_availqty) AS qty, count(*) AS suppliers FROM supply.partsupp \
     JOIN sales.lineitem ON ps_partkey = l_partkey AND ps_suppkey = l_suppkey \
     GROUP BY ps_partkey HAVING count(*) > 2",
];

#[tokio::test(flavor = "multi_thread")]
async fn all_22_tpch_queries_over_three_nodes_equal_one_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate_tpch(root);
    let (_nodes, coordinator) = start_tpch(root, |_| {});
    let ctx = Arc::new(central(root).await);
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;

    let mut wrong = Vec::new();
    for sql in ANALYTICAL {
        let want = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        match federated(&mut planner, sql).await {
            Ok((schema, got)) => {
                if let Err(e) = same_answer(&want, &got, &schema) {
                    wrong.push(format!("{sql}: {e}"));
                }
            }
            Err(e) => wrong.push(format!("{sql} failed: {e}")),
        }
    }
    // A placeholder left without a value is refused, naming it.
    let unbound = federated(
        &mut planner,
        "SELECT o_orderkey FROM sales.orders WHERE o_orderkey = ?",
    )
    .await
    .unwrap_err();
    assert!(
        unbound.contains("$1") && unbound.contains("without values"),
        "{unbound}"
    );

    let mut central_answers = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let want = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        assert!(
            want.iter().map(|b| b.num_rows()).sum::<usize>() > 0,
            "Q{}: the central answer is empty at this scale: the test would prove little",
            i + 1
        );
        match federated(&mut planner, sql).await {
            Ok((schema, got)) => {
                if let Err(e) = same_answer(&want, &got, &schema) {
                    wrong.push(format!("Q{} (Flight SQL): {e}", i + 1));
                }
            }
            Err(e) => wrong.push(format!("Q{} (Flight SQL) failed: {e}", i + 1)),
        }
        central_answers.push(want);
    }

    // The same 22 through the Python ADBC driver, each saved as Arrow.
    let saved: Vec<std::path::PathBuf> = (1..=QUERIES.len())
        .map(|i| root.join(format!("q{i}.arrow")))
        .collect();
    let requests: Vec<serde_json::Value> = QUERIES
        .iter()
        .zip(&saved)
        .map(|(sql, path)| serde_json::json!({ "sql": sql, "save_to": path }))
        .collect();
    let answers = crate::adbc::adbc(
        &format!("grpc://{}", coordinator.addr),
        "planner",
        &root.join("secrets/planner.token"),
        serde_json::Value::Array(requests),
    );
    for (i, result) in answers["results"].as_array().unwrap().iter().enumerate() {
        if result["ok"] != true {
            wrong.push(format!("Q{} (ADBC) failed: {}", i + 1, result["error"]));
            continue;
        }
        let (schema, got) = read_ipc(&saved[i]);
        if let Err(e) = same_answer(&central_answers[i], &got, &schema) {
            wrong.push(format!("Q{} (ADBC): {e}", i + 1));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers differ from the central ones:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
