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
        match expected {
            None => {
                let e = result.unwrap_err();
                assert!(e.contains("limit"), "{what}: {e}");
            }
            // Counts are a planner's to ask: the coordinator sends the
            // node SQL within the node's own limits.
            Some(answer) if sql.contains("count(*)") => {
                let batches = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(rows(&batches), vec![vec![answer]], "{what}");
            }
            Some(_) => {}
        }
        query(
            &mut planner,
            "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
        )
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}

/// A query that would run for many minutes: a triple cross join, counted.
const RUNAWAY: &str = "SELECT count(*) FROM gp.registrations a \
                       CROSS JOIN gp.registrations b CROSS JOIN gp.registrations c";

/// The node's audit record of the end of the fragment serving coordinator
/// query `sql` (matched on its text), if recorded yet.
fn node_outcome(log: &Path, needle: &str) -> Option<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| {
            r["body"]["phase"] == "finished"
                && r["body"]["sql"]
                    .as_str()
                    .is_some_and(|s| s.contains(needle))
        })
}

fn wait_for<T>(
    seconds: u64,
    mut check: impl FnMut() -> Option<T>,
) -> Option<(T, std::time::Duration)> {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(seconds) {
        if let Some(found) = check() {
            return Some((found, started.elapsed()));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_query_stops_at_the_node_when_its_client_leaves_or_its_time_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    generate(root, 3_000, 22);
    let node = NodeProcess::start(&root.join("gp/node.toml"));
    let coordinator = crate::coordinator::start_coordinator_at(root, &[("gp", node.addr)], |c| {
        c.query_time_limit_secs = 4
    });
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &[RUNAWAY], "extract").await;
    let log = root.join("gp/audit.jsonl");

    // The client starts the runaway query and goes away after a second.
    let stream = crate::support::open_stream(&mut researcher, RUNAWAY).await;
    let reading = tokio::spawn(async move {
        use futures::StreamExt;
        let mut stream = stream;
        stream.next().await
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    reading.abort();
    let (record, after) = wait_for(10, || node_outcome(&log, "CROSS JOIN"))
        .expect("the node records the fragment's end within seconds of the client leaving");
    assert_eq!(record["body"]["outcome"], "failed", "{record}");
    eprintln!(
        "the node stopped the runaway fragment {:.1} s after its client left",
        after.as_secs_f64()
    );

    // A small query is answered meanwhile and after.
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let small = "SELECT sex, count(*) FROM gp.registrations GROUP BY sex";
    let heavy = tokio::spawn({
        let mut researcher =
            crate::support::approved_researcher(coordinator.addr, root, &[], "extract").await;
        async move { query(&mut researcher, RUNAWAY).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    let answer = query(&mut planner, small).await;
    let latency = asked.elapsed();
    answer.unwrap_or_else(|e| panic!("after {latency:?}: {e}"));
    eprintln!(
        "a small query took {:.0} ms while the runaway one ran",
        latency.as_secs_f64() * 1000.0
    );
    assert!(latency < std::time::Duration::from_secs(5), "{latency:?}");

    // The runaway query meets the coordinator's time limit (4 s): it fails
    // as timed out, and its fragment stops at the node.
    let err = heavy.await.unwrap().unwrap_err();
    assert!(err.contains("time limit"), "{err}");
    let (record, _) = wait_for(10, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["body"]["phase"] == "finished")
            .filter(|r| {
                r["body"]["sql"]
                    .as_str()
                    .is_some_and(|s| s.contains("CROSS JOIN"))
            })
            .nth(1)
    })
    .expect("the node records the end of the second runaway fragment");
    assert_eq!(record["body"]["outcome"], "failed", "{record}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_node_and_coordinator_with_running_queries_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    generate(root, 3_000, 24);
    let mut node = NodeProcess::start(&root.join("gp/node.toml"));
    let mut coordinator = crate::coordinator::start_coordinator(root, &[("gp", &node)]);
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &[RUNAWAY], "extract").await;
    let running = tokio::spawn(async move { query(&mut researcher, RUNAWAY).await });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    for (name, child, log) in [
        (
            "coordinator",
            &mut coordinator.child,
            root.join("coordinator/state/audit.jsonl"),
        ),
        ("node", &mut node.child, root.join("gp/audit.jsonl")),
    ] {
        let pid = child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let (status, took) = wait_for(15, || child.try_wait().unwrap())
            .unwrap_or_else(|| panic!("{name} did not stop within 15 s of SIGTERM"));
        eprintln!(
            "{name} stopped {:.1} s after SIGTERM ({status})",
            took.as_secs_f64()
        );
        // The log verifies, and no statement is left without an outcome.
        let out = crate::support::run(&["audit", "verify", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("no outcome"), "{name}: {text}");
    }
    let err = running.await.unwrap().unwrap_err();
    assert!(!err.is_empty());
    // The coordinator recorded the query's end as failed (shutting down).
    let log = std::fs::read_to_string(root.join("coordinator/state/audit.jsonl")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"finished\"") && l.contains("shutting down")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_process_leaves_its_running_query_recorded_without_an_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    generate(root, 3_000, 26);
    let mut node = NodeProcess::start(&root.join("gp/node.toml"));
    let mut coordinator = crate::coordinator::start_coordinator(root, &[("gp", &node)]);
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &[RUNAWAY], "extract").await;
    let running = tokio::spawn(async move { query(&mut researcher, RUNAWAY).await });
    let node_log = root.join("gp/audit.jsonl");
    wait_for(10, || {
        std::fs::read_to_string(&node_log)
            .unwrap_or_default()
            .contains("CROSS JOIN")
            .then_some(())
    })
    .expect("the node starts the fragment");

    // SIGKILL to both at once (either left alive a moment would see the
    // other go and record an outcome): no chance to record anything.
    node.child.kill().unwrap();
    coordinator.child.kill().unwrap();
    node.child.wait().unwrap();
    coordinator.child.wait().unwrap();
    assert!(running.await.unwrap().is_err());
    for log in [root.join("coordinator/state/audit.jsonl"), node_log] {
        let log = log.to_str().unwrap();
        let out = crate::support::run(&["audit", "verify", log]);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
        let verified = String::from_utf8_lossy(&out.stdout);
        assert!(
            verified.contains("1 statements were recorded as started with no outcome"),
            "{log}: {verified}"
        );
        let out = crate::support::run(&["audit", "show", log]);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        let unfinished: Vec<&str> = shown.lines().filter(|l| l.contains("no outcome")).collect();
        assert_eq!(unfinished.len(), 1, "{log}: the query is listed:\n{shown}");
    }
}

/// Peak resident memory of process `pid`, in MiB (Linux).
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_beyond_its_memory_fails_alone_and_the_process_stays_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    crate::tpch::generate_tpch(root);
    // The sales node gets a small per-query pool too.
    let sales = root.join("sales/node.toml");
    let config = std::fs::read_to_string(&sales).unwrap();
    let smaller = config.replace("query_memory_mb = 1024", "query_memory_mb = 64");
    assert_ne!(smaller, config);
    std::fs::write(&sales, smaller).unwrap();
    let (memory_limit_mb, query_memory_mb) = (512, 64);
    let (nodes, coordinator) = crate::tpch::start_tpch(root, |c| {
        c.memory_limit_mb = memory_limit_mb;
        c.query_memory_mb = query_memory_mb;
    });
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

    // One aggregate state that grows without bound (no grouping: nothing
    // to spill), across nodes at the coordinator and within one at a node.
    let at_coordinator = "SELECT length(string_agg(l_comment || ps_comment, ',')) AS n \
                          FROM sales.lineitem CROSS JOIN supply.partsupp";
    let at_node = "SELECT length(string_agg(l_comment || o_comment, ',')) AS n \
                   FROM lineitem CROSS JOIN orders";
    for (flight, sql, who) in [
        (&mut planner, at_coordinator, "coordinator"),
        (&mut operator, at_node, "node"),
    ] {
        let err = query(flight, sql).await.unwrap_err();
        assert!(
            err.contains("resource has been exhausted")
                && err.contains("more memory than its limit"),
            "{who}: {err}"
        );
    }
    let coordinator_peak = peak_mib(coordinator.child.id());
    let node_peak = peak_mib(nodes[0].child.id());
    eprintln!(
        "peak resident memory: coordinator {coordinator_peak:.0} MiB (limit {memory_limit_mb}), \
         sales node {node_peak:.0} MiB"
    );
    assert!(
        coordinator_peak < memory_limit_mb as f64,
        "{coordinator_peak}"
    );
    assert!(node_peak < 512.0, "{node_peak}");
    // Both still answer.
    let n = query(&mut planner, "SELECT count(*) FROM customers.nation")
        .await
        .unwrap();
    assert_eq!(rows(&n), vec![vec!["25".to_string()]]);
    let n = query(&mut operator, "SELECT count(*) FROM orders")
        .await
        .unwrap();
    assert_eq!(rows(&n), vec![vec!["15000".to_string()]]);
}
