//! Governance through a real coordinator over real nodes: planners' results
//! under disclosure control, researchers' approved requests, the
//! coordinator's audit log reconciled with the nodes', and a coordinator
//! killed mid-work losing nothing it committed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::coordinator::{CoordinatorProcess, query_with_metadata, start_coordinator};
use crate::support::{NodeProcess, action, client, generate, query, rows, run, stderr};

struct Cluster {
    _nodes: Vec<NodeProcess>,
    coordinator: CoordinatorProcess,
}

fn start(root: &Path) -> Cluster {
    let nodes: Vec<NodeProcess> = ["acute", "gp", "council"]
        .iter()
        .map(|org| NodeProcess::start(&root.join(format!("{org}/node.toml"))))
        .collect();
    let coordinator = start_coordinator(
        root,
        &[
            ("acute", &nodes[0]),
            ("gp", &nodes[1]),
            ("council", &nodes[2]),
        ],
    );
    Cluster {
        _nodes: nodes,
        coordinator,
    }
}

async fn login(
    addr: std::net::SocketAddr,
    root: &Path,
    user: &str,
) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
    client(addr, user, &root.join(format!("secrets/{user}.token"))).await
}

fn disclosure(metadata: &std::collections::HashMap<String, String>) -> Value {
    serde_json::from_str(
        metadata
            .get("carrow.disclosure")
            .expect("a disclosure report"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn planners_see_released_aggregates_only_with_small_cells_removed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 5_000, 71);
    let cluster = start(root);
    let addr = cluster.coordinator.addr;
    let mut planner = login(addr, root, "planner").await;

    // Row-level results and pid are refused, naming the construct.
    for (sql, why) in [
        (
            "SELECT birth_year, sex FROM gp.registrations",
            "rows of table",
        ),
        ("SELECT pid FROM council.clients", "rows of table"),
        (
            "SELECT pid, count(*) FROM acute.admissions GROUP BY pid",
            "grouping by pid",
        ),
        (
            "SELECT area_code, max(weekly_cost) FROM council.care_packages GROUP BY area_code",
            "max(...) is refused",
        ),
    ] {
        let err = query(&mut planner, sql).await.unwrap_err();
        assert!(
            err.contains("refused by rule `planner query model`") && err.contains(why),
            "{sql}: {err}"
        );
    }
    // Reference data about areas, not persons, is not subject to thresholds.
    let areas = rows(
        &query(
            &mut planner,
            "SELECT area_name, population FROM council.areas",
        )
        .await
        .unwrap(),
    );
    assert_eq!(areas.len(), 10);

    // Cells of fewer than 10 persons are removed whole, grouping value
    // included; the others are perturbed and rounded near the exact count.
    let sql = "SELECT birth_year, count(*) AS people FROM gp.registrations GROUP BY birth_year";
    let exact_sql = "SELECT birth_year, count(*), count(DISTINCT pid) FROM gp.registrations GROUP BY birth_year";
    let mut researcher =
        crate::support::approved_researcher(addr, root, &[exact_sql], "extract").await;
    let exact: BTreeMap<String, (i64, i64)> =
        rows(&query(&mut researcher, exact_sql).await.unwrap())
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap())))
            .collect();
    let (batches, metadata) = query_with_metadata(&mut planner, sql).await.unwrap();
    let released: BTreeMap<String, String> = rows(&batches)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let (mut withheld, mut shown, mut perturbed) = (0, 0, 0);
    for (year, (count, persons)) in &exact {
        match released.get(year) {
            None => {
                assert!(
                    *persons < 14,
                    "{year}: {persons} persons are always released"
                );
                withheld += 1;
            }
            Some(got) => {
                assert!(
                    *persons >= 10,
                    "{year}: {persons} persons must not be released"
                );
                assert!(
                    crate::support::released_near(got, *count),
                    "{year}: {count} -> {got}"
                );
                perturbed += usize::from(got != &count.to_string());
                shown += 1;
            }
        }
    }
    assert!(
        withheld > 0 && shown > 0,
        "the data has small and large years: {exact:?} {released:?}"
    );
    assert!(perturbed > 0, "released counts are not the exact ones");
    assert!(
        released.keys().all(|k| exact.contains_key(k)),
        "no grouping value of a withheld cell appears"
    );
    let report = disclosure(&metadata);
    assert_eq!(report["rows_released"], shown, "{report}");
    assert!(
        report.get("rows_suppressed").is_none() || report["rows_suppressed"] == 0,
        "how many cells were withheld is not told to the planner: {report}"
    );
    assert!(
        report["rule"]
            .as_str()
            .unwrap()
            .contains("fewer than 10 persons"),
        "{report}"
    );
    // The same cells asked another way get the same answers (sticky noise).
    let again: BTreeMap<String, String> = rows(
        &query(
            &mut planner,
            "SELECT birth_year AS y, count(*) FROM gp.registrations WHERE sex IS NOT NULL OR sex IS NULL GROUP BY 1",
        )
        .await
        .unwrap(),
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    assert_eq!(again, released);

    // ROLLUP totals are cells in their own right, perturbed by their own
    // persons: every released cell, total or not, has at least 10 persons.
    let rollup = "SELECT area_code, service_type, count(DISTINCT pid) AS people FROM council.care_packages GROUP BY ROLLUP (area_code, service_type)";
    let exact_rollup = "SELECT area_code, service_type, count(DISTINCT pid) FROM council.care_packages GROUP BY ROLLUP (area_code, service_type)";
    let mut researcher =
        crate::support::approved_researcher(addr, root, &[exact_rollup], "extract").await;
    let truth: BTreeMap<(String, String), i64> =
        rows(&query(&mut researcher, exact_rollup).await.unwrap())
            .into_iter()
            .map(|r| ((r[0].clone(), r[1].clone()), r[2].parse().unwrap()))
            .collect();
    let cells = rows(&query(&mut planner, rollup).await.unwrap());
    assert!(
        cells.iter().any(|c| c[0].is_empty() && c[1].is_empty()),
        "the grand total"
    );
    for c in &cells {
        let exact = truth[&(c[0].clone(), c[1].clone())];
        assert!(exact >= 10, "{c:?} is about {exact} persons");
        assert!(
            crate::support::released_near(&c[2], exact),
            "{c:?} vs {exact}"
        );
    }
    assert!(cells.len() < truth.len(), "some detail cells are withheld");

    // A controlled result keeps its ORDER BY.
    let ordered = crate::support::ordered_rows(
        &query(
            &mut planner,
            "SELECT deprivation_decile, count(*) FROM gp.registrations GROUP BY 1 ORDER BY 1 DESC",
        )
        .await
        .unwrap(),
    );
    let deciles: Vec<i64> = ordered.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(deciles, (1..=10).rev().collect::<Vec<_>>());

    // Governance users run no data queries.
    let mut reviewer = login(addr, root, "reviewer1").await;
    let err = query(&mut reviewer, "SELECT count(*) FROM gp.registrations")
        .await
        .unwrap_err();
    assert!(
        err.contains("governance users review requests") && err.contains("run no data queries"),
        "{err}"
    );

    // The audit log tells the board what the planner was not told: how
    // many cells were withheld, and which queries were about small populations.
    let log = std::fs::read_to_string(root.join("coordinator/state/audit.jsonl")).unwrap();
    let record = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["body"]["sql"] == sql && r["body"]["phase"] == "finished")
        .expect("the planner's query is audited");
    assert_eq!(
        record["body"]["disclosure"]["cells_below_threshold"], withheld,
        "{record}"
    );
    assert_eq!(record["body"]["small_population"], true, "{record}");
    let out = run(&[
        "audit",
        "show",
        root.join("coordinator/state/audit.jsonl").to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    let planner_line = printed
        .lines()
        .find(|l| l.starts_with("planner "))
        .unwrap_or_else(|| panic!("a per-user summary in\n{printed}"));
    let small: u64 = planner_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(small >= 2, "{planner_line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn researchers_run_only_what_two_other_governance_users_approved() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 1_500, 72);
    let cluster = start(root);
    let addr = cluster.coordinator.addr;
    let mut researcher = login(addr, root, "researcher").await;
    let mut reviewer1 = login(addr, root, "reviewer1").await;
    let mut reviewer2 = login(addr, root, "reviewer2").await;
    let mut planner = login(addr, root, "planner").await;

    let sql = "SELECT service_type, count(*) AS packages FROM council.care_packages GROUP BY service_type";
    let err = query(&mut researcher, sql).await.unwrap_err();
    assert!(
        err.contains("approved requests only") && err.contains("no request of researcher"),
        "{err}"
    );

    let submit = |output: &str, sql: &str, extra: Value| {
        let mut body = json!({"project": "demo", "purpose": "care home admissions study", "output": output, "sql": sql});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let request = action(
        &mut researcher,
        "carrow.request.submit",
        submit("aggregate", sql, json!({})),
    )
    .await
    .unwrap();
    let id = request["id"].clone();
    assert_eq!(request["status"], "submitted");
    let decide = |id: &Value, decision: &str| json!({"id": id, "decision": decision});

    // The requester cannot approve; one approval is not enough; nor is the
    // same reviewer twice.
    let err = action(
        &mut researcher,
        "carrow.request.decide",
        decide(&id, "approve"),
    )
    .await
    .unwrap_err();
    assert!(err.contains("only governance users decide"), "{err}");
    let err = action(
        &mut planner,
        "carrow.request.submit",
        submit("aggregate", sql, json!({})),
    )
    .await
    .unwrap_err();
    assert!(err.contains("only researchers submit"), "{err}");
    action(
        &mut reviewer1,
        "carrow.request.decide",
        decide(&id, "approve"),
    )
    .await
    .unwrap();
    let err = query(&mut researcher, sql).await.unwrap_err();
    assert!(err.contains("awaits approval (1 of 2 approvals)"), "{err}");
    let err = action(
        &mut reviewer1,
        "carrow.request.decide",
        decide(&id, "approve"),
    )
    .await
    .unwrap_err();
    assert!(err.contains("already approved"), "{err}");
    let approved = action(
        &mut reviewer2,
        "carrow.request.decide",
        decide(&id, "approve"),
    )
    .await
    .unwrap();
    assert_eq!(approved["status"], "approved");

    // The approved query runs, however it is laid out, under disclosure
    // control (an aggregate approval); an edited one does not.
    let relaid = "select SERVICE_TYPE, count(*) as packages -- by type\n from council.care_packages\n group by service_type";
    let (batches, metadata) = query_with_metadata(&mut researcher, relaid).await.unwrap();
    assert!(!batches.is_empty());
    assert!(
        metadata.contains_key("carrow.disclosure"),
        "aggregate approvals get disclosure control"
    );
    let edited = "SELECT service_type, count(*) AS packages FROM council.care_packages WHERE weekly_cost > 500 GROUP BY service_type";
    let err = query(&mut researcher, edited).await.unwrap_err();
    assert!(
        err.contains("no request of researcher was approved for this SQL"),
        "{err}"
    );
    // The request's project decides the pseudonyms: asking for another is refused.
    researcher.set_header("x-carrow-project", "other");
    let err = query(&mut researcher, sql).await.unwrap_err();
    assert!(
        err.contains("approved for project demo, not other"),
        "{err}"
    );
    researcher = login(addr, root, "researcher").await;

    // An extract approval releases pseudonymous rows, within its run limit.
    let extract =
        "SELECT pid, service_type, weekly_cost FROM council.care_packages WHERE weekly_cost > 100";
    let limited = action(
        &mut researcher,
        "carrow.request.submit",
        submit("extract", extract, json!({"max_runs": 1})),
    )
    .await
    .unwrap();
    for reviewer in [&mut reviewer1, &mut reviewer2] {
        action(
            reviewer,
            "carrow.request.decide",
            decide(&limited["id"], "approve"),
        )
        .await
        .unwrap();
    }
    let (batches, metadata) = query_with_metadata(&mut researcher, extract).await.unwrap();
    assert!(batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
    assert!(!metadata.contains_key("carrow.disclosure"));
    let err = query(&mut researcher, extract).await.unwrap_err();
    assert!(err.contains("has used all its 1 runs"), "{err}");

    // Expiry and revocation hold.
    let yesterday = (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let expired_sql = "SELECT count(*) FROM council.clients";
    let expired = action(
        &mut researcher,
        "carrow.request.submit",
        submit("aggregate", expired_sql, json!({"expires_on": yesterday})),
    )
    .await
    .unwrap();
    for reviewer in [&mut reviewer1, &mut reviewer2] {
        action(
            reviewer,
            "carrow.request.decide",
            decide(&expired["id"], "approve"),
        )
        .await
        .unwrap();
    }
    let err = query(&mut researcher, expired_sql).await.unwrap_err();
    assert!(err.contains(&format!("expired on {yesterday}")), "{err}");
    action(
        &mut reviewer1,
        "carrow.request.decide",
        json!({"id": id, "decision": "revoke", "comment": "consent withdrawn"}),
    )
    .await
    .unwrap();
    let err = query(&mut researcher, sql).await.unwrap_err();
    assert!(err.contains("is revoked"), "{err}");

    // The CLI shows the same state; the password comes from a file.
    let url = format!("http://{addr}");
    let secret = root.join("secrets/reviewer2.token");
    let out = run(&[
        "request",
        "list",
        "--url",
        &url,
        "--user",
        "reviewer2",
        "--password-file",
        secret.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("revoked") && listed.contains("3 requests"),
        "{listed}"
    );
    let sql_file = root.join("query.sql");
    std::fs::write(
        &sql_file,
        "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
    )
    .unwrap();
    let secret = root.join("secrets/researcher.token");
    let out = run(&[
        "request",
        "submit",
        "--url",
        &url,
        "--user",
        "researcher",
        "--password-file",
        secret.to_str().unwrap(),
        "--project",
        "demo",
        "--purpose",
        "registered population",
        "--output",
        "aggregate",
        sql_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("request 4: submitted"));

    // Projects bind users: a request for a project the researcher is not
    // listed for is refused and audited, and so is a planner's query there.
    let out = run(&[
        "request",
        "submit",
        "--url",
        &url,
        "--user",
        "researcher",
        "--password-file",
        secret.to_str().unwrap(),
        "--project",
        "cancer_audit",
        "--purpose",
        "registered population",
        "--output",
        "aggregate",
        sql_file.to_str().unwrap(),
    ]);
    let said = stderr(&out);
    assert!(
        !out.status.success()
            && said.contains("projects of the user")
            && said.contains("default project demo only, not cancer_audit"),
        "{said}"
    );
    let mut planner = login(addr, root, "planner").await;
    planner.set_header("x-carrow-project", "cancer_audit");
    let err = query(
        &mut planner,
        "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
    )
    .await
    .unwrap_err();
    assert!(err.contains("not cancer_audit"), "{err}");
    let log = std::fs::read_to_string(root.join("coordinator/state/audit.jsonl")).unwrap();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cancer_audit") && l.contains("\"refused\""))
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_and_node_logs_reconcile_and_a_removed_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 1_500, 73);
    let cluster = start(root);
    let addr = cluster.coordinator.addr;
    let mut planner = login(addr, root, "planner").await;
    let extract = "SELECT a.pid, a.admission_method FROM acute.admissions a JOIN council.clients c ON a.pid = c.pid";
    let mut researcher =
        crate::support::approved_researcher(addr, root, &[extract], "extract").await;
    for sql in [
        "SELECT deprivation_decile, count(*) FROM gp.registrations GROUP BY 1",
        "SELECT c.area_code, count(DISTINCT a.pid) FROM acute.admissions a JOIN council.clients c ON a.pid = c.pid GROUP BY 1",
        "SELECT setting, count(*) FROM combined.contacts GROUP BY setting",
    ] {
        query(&mut planner, sql).await.unwrap();
    }
    query(&mut planner, "SELECT pid FROM gp.registrations")
        .await
        .unwrap_err();
    query(&mut researcher, extract).await.unwrap();

    let coordinator_log = root.join("coordinator/state/audit.jsonl");
    let node_args = |acute: &Path| {
        vec![
            format!("acute={}", acute.display()),
            format!("gp={}", root.join("gp/audit.jsonl").display()),
            format!("council={}", root.join("council/audit.jsonl").display()),
        ]
    };
    let reconcile = |coordinator: &Path, acute: &Path| {
        let mut args = vec![
            "audit".to_string(),
            "reconcile".into(),
            "--coordinator".into(),
            coordinator.display().to_string(),
        ];
        for n in node_args(acute) {
            args.push("--node".into());
            args.push(n);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    let out = reconcile(&coordinator_log, &root.join("acute/audit.jsonl"));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    let matched: usize = printed
        .split(" fragments matched")
        .next()
        .unwrap()
        .rsplit('\n')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(matched >= 7, "{printed}");
    assert!(printed.contains("; 0 problems"), "{printed}");

    // `audit show` filters: the refused attempt is in the coordinator's log.
    let out = run(&[
        "audit",
        "show",
        coordinator_log.to_str().unwrap(),
        "--outcome",
        "refused",
        "--user",
        "planner",
    ]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && shown.contains("SELECT pid FROM gp.registrations")
            && shown.contains("1 of "),
        "{shown}"
    );

    // Removing one node record is detected and named.
    let acute_log = std::fs::read_to_string(root.join("acute/audit.jsonl")).unwrap();
    let lines: Vec<&str> = acute_log.lines().collect();
    let (index, removed) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains("\"upstream_query_id\":\"q-") && l.contains("\"finished\""))
        .unwrap();
    let removed_id = serde_json::from_str::<Value>(removed).unwrap()["body"]["query_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tampered = root.join("acute-tampered.jsonl");
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&tampered, kept.join("\n") + "\n").unwrap();
    let out = reconcile(&coordinator_log, &tampered);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!(
            "sent node acute fragment {removed_id}, which node acute's log does not have"
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "acute: audit log {} is broken at line {}",
            tampered.display(),
            index + 1
        )),
        "{printed}"
    );

    // Removing one coordinator record is detected and named.
    let coordinator_text = std::fs::read_to_string(&coordinator_log).unwrap();
    let lines: Vec<&str> = coordinator_text.lines().collect();
    let (index, removed) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains("\"node_query_id\":\"n-"))
        .unwrap();
    let removed_query = serde_json::from_str::<Value>(removed).unwrap()["body"]["query_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tampered = root.join("coordinator-tampered.jsonl");
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&tampered, kept.join("\n") + "\n").unwrap();
    let out = reconcile(&tampered, &root.join("acute/audit.jsonl"));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    // The chain is broken where the record was; and the nodes' fragments
    // of that query point at a query with no outcome.
    assert!(
        printed.contains(&format!(
            "coordinator: audit log {} is broken at line {}",
            tampered.display(),
            index + 1
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("for coordinator query {removed_query} (line"))
            && printed.contains("which has no outcome in the coordinator's log"),
        "{printed}"
    );
}

/// `carrow audit reconcile` of `coordinator` with the three generated nodes'
/// logs, `acute` given as `acute`: (exit code, what it printed).
fn reconcile_with(root: &Path, coordinator: &Path, acute: &Path) -> (Option<i32>, String) {
    let node = |name: &str, path: &Path| format!("{name}={}", path.display());
    let out = run(&[
        "audit",
        "reconcile",
        "--coordinator",
        coordinator.to_str().unwrap(),
        "--node",
        &node("acute", acute),
        "--node",
        &node("gp", &root.join("gp/audit.jsonl")),
        "--node",
        &node("council", &root.join("council/audit.jsonl")),
    ]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    (out.status.code(), printed)
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Writes the records of `from` whose body passes `keep` to a new log at
/// `to`, signed with `key`: a rewrite by someone holding the key.
fn resign(
    from: &Path,
    to: &Path,
    origin: &str,
    key: carrow_governance::AuditKey,
    keep: impl Fn(&Value) -> bool,
) {
    let log = carrow_governance::AuditLog::open(to, origin, key).unwrap();
    for line in log_lines(from) {
        let record: Value = serde_json::from_str(&line).unwrap();
        if keep(&record["body"]) {
            log.append(record["body"].clone()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_log_pins_the_others_so_truncation_rewriting_and_forgery_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 800, 75);
    let cluster = start(root);
    let addr = cluster.coordinator.addr;
    let mut planner = login(addr, root, "planner").await;
    let study = "SELECT a.admission_method, count(DISTINCT a.pid) FROM acute.admissions a JOIN gp.registrations g ON a.pid = g.pid GROUP BY 1";
    let mut researcher =
        crate::support::approved_researcher(addr, root, &[study], "aggregate").await;
    query(
        &mut planner,
        "SELECT admission_method, count(*) FROM acute.admissions GROUP BY 1",
    )
    .await
    .unwrap();
    query(&mut planner, "SELECT pid FROM acute.admissions")
        .await
        .unwrap_err();
    query(&mut researcher, study).await.unwrap();
    query(
        &mut planner,
        "SELECT setting, count(*) FROM combined.contacts GROUP BY setting",
    )
    .await
    .unwrap();

    let coordinator_log = root.join("coordinator/state/audit.jsonl");
    let acute_log = root.join("acute/audit.jsonl");
    // One trace id from the coordinator's query to the node's fragment, in
    // both audit logs and both services' logs.
    let study_record: Value = log_lines(&coordinator_log)
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|r| r["body"]["sql"] == study && r["body"]["phase"] == "finished")
        .unwrap();
    let trace = study_record["body"]["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let query_id = study_record["body"]["query_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    let fragments: Vec<Value> = log_lines(&acute_log)
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["body"]["upstream_query_id"] == query_id)
        .collect();
    assert!(!fragments.is_empty());
    assert!(
        fragments
            .iter()
            .all(|r| r["body"]["trace_id"] == trace.as_str())
    );
    assert!(cluster._nodes[0].log().contains(&trace));
    let coordinator_trace =
        std::fs::read_to_string(root.join("coordinator/coordinator.log")).unwrap();
    assert!(coordinator_trace.contains(&trace));

    // A node's own operator cannot plant a coordinator checkpoint signed
    // by a key of its own in the node's log (it would accuse the coordinator).
    let mut operator = crate::support::client(
        cluster._nodes[0].addr,
        "operator",
        &root.join("secrets/operator-acute.token"),
    )
    .await;
    let planted = carrow_governance::Checkpoint::sign(
        &carrow_governance::AuditKey::generate(),
        "coordinator",
        3,
        [7u8; 32],
    );
    operator.set_header("x-carrow-checkpoint", planted.to_text());
    query(&mut operator, "SELECT count(*) FROM admissions")
        .await
        .unwrap();
    let last: Value = serde_json::from_str(log_lines(&acute_log).last().unwrap()).unwrap();
    assert_eq!(last["body"]["role"], "operator");
    assert!(last["body"]["upstream_checkpoint"].is_null(), "{last}");

    let (code, printed) = reconcile_with(root, &coordinator_log, &acute_log);
    assert_eq!(code, Some(0), "{printed}");
    let proofs = printed
        .split(" consistency proofs verified")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    // Both directions for each of the three nodes.
    assert_eq!(proofs, Some(6), "{printed}");
    let tampered = root.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let verify = |path: &Path| {
        let out = run(&["audit", "verify", path.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out),
        )
    };

    // Truncation: acute's log cut at its last fragment for the coordinator
    // still verifies alone; the coordinator's log holds the cut checkpoint.
    let lines = log_lines(&acute_log);
    let last_served = lines
        .iter()
        .rposition(|l| l.contains("\"upstream_query_id\":\"q-") && l.contains("\"finished\""))
        .unwrap();
    let cut = tampered.join("acute-truncated.jsonl");
    write_lines(&cut, &lines[..last_served]);
    assert!(verify(&cut).0);
    let (code, printed) = reconcile_with(root, &coordinator_log, &cut);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains(&format!(
            "acute's log has {last_served} records, but coordinator's log (line"
        )) && printed.contains("the log was truncated"),
        "{printed}"
    );

    // Truncation of the coordinator's log before the last query started:
    // the nodes hold the checkpoint sent with its fragments.
    let lines = log_lines(&coordinator_log);
    let last_started = lines
        .iter()
        .rposition(|l| l.contains("\"phase\":\"started\""))
        .unwrap();
    let cut = tampered.join("coordinator-truncated.jsonl");
    write_lines(&cut, &lines[..last_started]);
    assert!(verify(&cut).0);
    let (code, printed) = reconcile_with(root, &cut, &acute_log);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains(&format!(
            "coordinator's log has {last_started} records, but "
        )) && printed.contains("the log was truncated"),
        "{printed}"
    );

    // Deletion in the middle is a broken chain.
    let mut lines = log_lines(&acute_log);
    lines.remove(1);
    let holed = tampered.join("acute-holed.jsonl");
    write_lines(&holed, &lines);
    let (ok, printed) = verify(&holed);
    assert!(!ok && printed.contains("line 2 (record 3)"), "{printed}");

    // A re-hashed rewrite without every request decision and refusal: the
    // chain is rebuilt, but the checkpoints no longer sign its roots.
    let decisions_or_refusals =
        |body: &Value| body["kind"] == "request" || body["outcome"] == "refused";
    let lines = log_lines(&coordinator_log);
    let removed = lines
        .iter()
        .position(|l| decisions_or_refusals(&serde_json::from_str::<Value>(l).unwrap()["body"]))
        .expect("the log holds a request decision or refusal");
    let mut prev = carrow_governance::audit::GENESIS.to_string();
    let rehashed: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| !decisions_or_refusals(&r["body"]))
        .enumerate()
        .map(|(i, mut r)| {
            let seq = i as u64 + 1;
            let content = json!({ "seq": seq, "time": r["time"], "prev": prev, "body": r["body"] });
            let hash = sha256_hex(content.to_string().as_bytes());
            r["seq"] = json!(seq);
            r["prev"] = json!(prev);
            r["hash"] = json!(hash);
            prev = hash;
            r.to_string()
        })
        .collect();
    let rehashed_path = tampered.join("coordinator-rehashed.jsonl");
    write_lines(&rehashed_path, &rehashed);
    let (ok, printed) = verify(&rehashed_path);
    assert!(
        !ok && printed.contains(&format!("(record {})", removed + 1))
            && printed.contains("the log was rewritten"),
        "{printed}"
    );

    // The same rewrite by someone holding the coordinator's key verifies
    // alone; the nodes' logs prove it rewritten.
    let resigned = tampered.join("coordinator-resigned.jsonl");
    resign(
        &coordinator_log,
        &resigned,
        "coordinator",
        carrow_governance::AuditKey::load(&root.join("coordinator/state/audit.key")).unwrap(),
        |body| !decisions_or_refusals(body),
    );
    assert!(verify(&resigned).0);
    let (code, printed) = reconcile_with(root, &resigned, &acute_log);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("coordinator's log was rewritten: its first ")
            && printed.contains(
                "do not have the Merkle root coordinator signed in the checkpoint acute's log holds"
            ),
        "{printed}"
    );

    // A forged checkpoint in a log is named; a log re-signed with another
    // key is named as replaced by the side holding the real key's checkpoints.
    let mut lines = log_lines(&acute_log);
    let mut record: Value = serde_json::from_str(&lines[2]).unwrap();
    let mut checkpoint =
        carrow_governance::Checkpoint::parse(record["checkpoint"].as_str().unwrap()).unwrap();
    checkpoint.signature[7] ^= 0x20;
    record["checkpoint"] = json!(checkpoint.to_text());
    lines[2] = record.to_string();
    let forged = tampered.join("acute-forged.jsonl");
    write_lines(&forged, &lines);
    let (ok, printed) = verify(&forged);
    assert!(
        !ok && printed.contains("line 3 (record 3)") && printed.contains("forged checkpoint"),
        "{printed}"
    );
    let replaced = tampered.join("acute-replaced.jsonl");
    resign(
        &acute_log,
        &replaced,
        "acute",
        carrow_governance::AuditKey::generate(),
        |_| true,
    );
    let (code, printed) = reconcile_with(root, &coordinator_log, &replaced);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("acute's log is signed by key ")
            && printed.contains("the log was replaced"),
        "{printed}"
    );
    drop(cluster);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn untouched_logs_reconcile_whatever_the_queries_outcomes() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 1_200, 76);
    let mut cluster = start(root);
    let addr = cluster.coordinator.addr;
    let limited =
        "SELECT a.pid FROM acute.admissions a JOIN council.clients c ON a.pid = c.pid LIMIT 3";
    let streamed = "SELECT a.pid, a.admission_method, g.sex FROM acute.admissions a JOIN gp.registrations g ON a.pid = g.pid";
    let failing = "SELECT CAST(a.admission_method AS INT) AS m FROM acute.admissions a JOIN gp.registrations g ON a.pid = g.pid";
    let endless = "SELECT a.pid, g.pid FROM acute.admissions a CROSS JOIN gp.registrations g";
    let mut researcher = crate::support::approved_researcher(
        addr,
        root,
        &[limited, streamed, failing, endless],
        "extract",
    )
    .await;
    let mut planner = login(addr, root, "planner").await;
    // Released, refused, stopped early by a limit, failed at the
    // coordinator after nodes served, abandoned by the client.
    query(
        &mut planner,
        "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
    )
    .await
    .unwrap();
    query(&mut planner, "SELECT pid FROM gp.registrations")
        .await
        .unwrap_err();
    assert_eq!(
        rows(&query(&mut researcher, limited).await.unwrap()).len(),
        3
    );
    let err = query(&mut researcher, failing).await.unwrap_err();
    assert!(err.to_lowercase().contains("cast"), "{err}");
    let mut abandoned = crate::support::open_stream(&mut researcher, streamed).await;
    abandoned.next().await.unwrap().unwrap();
    drop(abandoned);
    let coordinator_log = root.join("coordinator/state/audit.jsonl");
    // The coordinator notices the client went away and records the end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !log_lines(&coordinator_log).iter().any(|l| {
        let r: Value = serde_json::from_str(l).unwrap();
        r["body"]["sql"] == streamed && r["body"]["phase"] == "finished"
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned query never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let acute_log = root.join("acute/audit.jsonl");
    let (code, printed) = reconcile_with(root, &coordinator_log, &acute_log);
    assert_eq!(code, Some(0), "{printed}");

    // The coordinator killed while it streams: nodes served fragments of
    // a query its log started and never finished. Nothing was tampered.
    let mut endless_stream = crate::support::open_stream(&mut researcher, endless).await;
    endless_stream.next().await.unwrap().unwrap();
    let _ = cluster.coordinator.child.kill();
    let _ = cluster.coordinator.child.wait();
    drop(endless_stream);
    let (code, printed) = reconcile_with(root, &coordinator_log, &acute_log);
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("NOTE ") && printed.contains("the coordinator stopped while running it"),
        "{printed}"
    );
    let out = run(&["audit", "verify", coordinator_log.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("started with no outcome"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_work_loses_no_committed_approval_and_its_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 500, 74);
    let mut cluster = start(root);
    let addr = cluster.coordinator.addr;
    let mut researcher = login(addr, root, "researcher").await;
    let mut reviewers = [
        login(addr, root, "reviewer1").await,
        login(addr, root, "reviewer2").await,
    ];
    let mut planner = login(addr, root, "planner").await;

    // Requests, approvals and queries as fast as they go, until the kill.
    let killer = std::thread::spawn({
        let pid = cluster.coordinator.child.id();
        move || {
            std::thread::sleep(std::time::Duration::from_millis(1_500));
            // SIGKILL: no chance to flush or clean up.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    });
    let mut committed: Vec<i64> = Vec::new();
    for i in 0.. {
        let sql = format!(
            "SELECT count(*) FROM gp.registrations WHERE birth_year > {}",
            1900 + i
        );
        let Ok(request) = action(
            &mut researcher,
            "carrow.request.submit",
            json!({"project": "demo", "purpose": "p", "output": "aggregate", "sql": sql}),
        )
        .await
        else {
            break;
        };
        let mut approved = true;
        for reviewer in &mut reviewers {
            match action(
                reviewer,
                "carrow.request.decide",
                json!({"id": request["id"], "decision": "approve"}),
            )
            .await
            {
                Ok(answer) => approved = answer["status"] == "approved",
                Err(_) => {
                    approved = false;
                    break;
                }
            }
        }
        if !approved {
            break;
        }
        committed.push(request["id"].as_i64().unwrap());
        if query(
            &mut planner,
            "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
        )
        .await
        .is_err()
        {
            break;
        }
    }
    killer.join().unwrap();
    let _ = cluster.coordinator.child.wait();
    assert!(
        committed.len() >= 3,
        "work was under way when the coordinator died: {committed:?}"
    );

    // The audit chain verifies; every acknowledged approval survived.
    let log = root.join("coordinator/state/audit.jsonl");
    let out = run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restarted = crate::coordinator::start_coordinator_again(root);
    let mut reviewer = login(restarted.addr, root, "reviewer1").await;
    for id in &committed {
        let request = action(&mut reviewer, "carrow.request.show", json!({"id": id}))
            .await
            .unwrap();
        assert_eq!(request["status"], "approved", "{request}");
        assert_eq!(
            request["decisions"].as_array().unwrap().len(),
            2,
            "{request}"
        );
    }
    // And the restarted coordinator appends to the same, intact chain.
    let mut planner = login(restarted.addr, root, "planner").await;
    query(
        &mut planner,
        "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
    )
    .await
    .unwrap();
    let out = run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_counts_once_rows_were_released_even_if_the_client_stops_reading() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 2_000, 31);
    let cluster = start(root);
    let addr = cluster.coordinator.addr;
    let sql = "SELECT a.birth_year FROM gp.registrations a CROSS JOIN gp.registrations b";
    let mut researcher = login(addr, root, "researcher").await;
    let request = action(
        &mut researcher,
        "carrow.request.submit",
        json!({"project": "demo", "purpose": "one look", "output": "extract", "sql": sql, "max_runs": 1}),
    )
    .await
    .unwrap();
    for reviewer in ["reviewer1", "reviewer2"] {
        let mut reviewer = login(addr, root, reviewer).await;
        action(
            &mut reviewer,
            "carrow.request.decide",
            json!({"id": request["id"], "decision": "approve"}),
        )
        .await
        .unwrap();
    }
    // The researcher reads one batch of millions of rows, then stops.
    let mut stream = crate::support::open_stream(&mut researcher, sql).await;
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    drop(stream);
    let log = root.join("coordinator/state/audit.jsonl");
    let ended = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .find(|l| l.contains("\"finished\"") && l.contains("CROSS JOIN"))
            .map(str::to_string)
    });
    let ended = ended.expect("the cancelled run is recorded");
    let record: Value = serde_json::from_str(&ended).unwrap();
    assert_ne!(record["body"]["outcome"], "ok", "{record}");
    assert!(record["body"]["rows"].as_u64().unwrap() > 0, "{record}");
    // That was the request's one run.
    let err = query(&mut researcher, sql).await.unwrap_err();
    assert!(err.contains("has used all its 1 runs"), "{err}");
}
