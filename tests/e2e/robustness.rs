//! No query takes a process down: statements at and beyond the size
//! limits, at a node and at the coordinator, are answered or refused with
//! an error that names the limit, and the process serves the next query.

use std::path::Path;

use crate::coordinator::start_coordinator;
use crate::support::{NodeProcess, client, generate, query, rows};

/// (SQL, `Some(answer)` when it must run, `None` when it must be refused
/// naming a limit) for a table `t` with an integer column `n`.
fn statements(table: &str, column: &str) -> Vec<(String, Option<String>, &'static str)> {
    let sum = |terms: usize| {
        format!(
            "SELECT {} AS s FROM {table} LIMIT 1",
            vec!["1"; terms].join("+")
        )
    };
    let nested_case = |depth: usize| {
        let mut e = "1".to_string();
        for _ in 0..depth {
            e = format!("CASE WHEN {column} IS NULL THEN 0 ELSE {e} END");
        }
        format!("SELECT max({e}) AS s FROM {table}")
    };
    let in_list = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| (i + 3000).to_string()).collect();
        format!(
            "SELECT count(*) > 0 AS s FROM {table} WHERE {column} NOT IN ({})",
            values.join(",")
        )
    };
    let and_chain = |n: usize| {
        let terms: Vec<String> = (0..n)
            .map(|i| format!("{column} <> {}", i + 3000))
            .collect();
        format!(
            "SELECT count(*) > 0 AS s FROM {table} WHERE {}",
            terms.join(" AND ")
        )
    };
    let brackets = |n: usize| {
        format!(
            "SELECT {}1{} AS s FROM {table} LIMIT 1",
            "(".repeat(n),
            ")".repeat(n)
        )
    };
    vec![
        (sum(250), Some("250".into()), "250 terms"),
        (sum(1_000), Some("1000".into()), "1 000 terms"),
        (sum(10_000), None, "operators"),
        (nested_case(40), Some("1".into()), "CASE 40 deep"),
        (nested_case(300), None, "nests"),
        (in_list(10_000), Some("true".into()), "an IN list of 10 000"),
        (and_chain(500), Some("true".into()), "500 conditions"),
        (and_chain(10_000), None, "operators"),
        (brackets(2_000), None, "limit"),
    ]
}

async fn exercise(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    table: &str,
    column: &str,
    alive: &str,
) {
    for (sql, expected, what) in statements(table, column) {
        match (query(client, &sql).await, expected) {
            (Ok(batches), Some(answer)) => {
                assert_eq!(rows(&batches), vec![vec![answer]], "{what}")
            }
            (Err(e), None) => {
                assert!(
                    e.contains("limit") && (e.contains(what) || e.contains("limit")),
                    "{what}: {e}"
                );
                assert!(e.len() < 2_000, "the error is short: {} bytes", e.len());
            }
            (Ok(batches), None) => panic!("{what} should be refused, got {:?}", rows(&batches)),
            (Err(e), Some(_)) => panic!("{what} should run: {e}"),
        }
        // Still serving.
        query(client, alive)
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_statements_are_answered_or_refused_and_no_process_falls() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    generate(root, 2_000, 21);
    let node = NodeProcess::start(&root.join("gp/node.toml"));
    let mut operator = client(
        node.addr,
        "operator",
        &root.join("secrets/operator-gp.token"),
    )
    .await;
    exercise(
        &mut operator,
        "registrations",
        "birth_year",
        "SELECT count(*) FROM registrations",
    )
    .await;

    let coordinator = start_coordinator(root, &[("gp", &node)]);
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &[], "extract").await;
    // The coordinator checks the statement before anything else: a
    // researcher without approvals still gets the limit's error.
    for (sql, expected, what) in statements("gp.registrations", "birth_year") {
        if expected.is_none() {
            let e = query(&mut researcher, &sql).await.unwrap_err();
            assert!(e.contains("limit"), "{what}: {e}");
        }
    }
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    for (sql, expected, what) in statements("gp.registrations", "birth_year") {
        let result = query(&mut planner, &sql).await;
        if expected.is_none() {
            let e = result.unwrap_err();
            assert!(e.contains("limit"), "{what}: {e}");
        }
        query(
            &mut planner,
            "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
        )
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}
