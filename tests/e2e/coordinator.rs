//! The coordinator over three real nodes: federated answers equal the same
//! SQL run centrally over the nodes' published tables, nodes receive the
//! pushed-down SQL, and `carrow demo` runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::support::{
    NodeProcess, carrow, client, generate, open_stream, ordered_rows, query, rows, run, stderr,
};

pub(crate) struct CoordinatorProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a coordinator over running nodes, rewriting their addresses.
pub(crate) fn start_coordinator(root: &Path, nodes: &[(&str, &NodeProcess)]) -> CoordinatorProcess {
    let addrs: Vec<(&str, SocketAddr)> = nodes
        .iter()
        .map(|(name, node)| (*name, node.addr))
        .collect();
    start_coordinator_at(root, &addrs, |_| {})
}

/// Starts the three generated organisations' nodes and a coordinator over
/// them, with `change` made to its configuration.
pub(crate) fn start_federation(
    root: &Path,
    change: impl FnOnce(&mut carrow_coordinator::CoordinatorConfig),
) -> (Vec<NodeProcess>, CoordinatorProcess) {
    let names = ["acute", "gp", "council"];
    let nodes: Vec<NodeProcess> = names
        .iter()
        .map(|n| NodeProcess::start(&root.join(format!("{n}/node.toml"))))
        .collect();
    let addrs: Vec<(&str, SocketAddr)> = names
        .into_iter()
        .zip(nodes.iter().map(|n| n.addr))
        .collect();
    let coordinator = start_coordinator_at(root, &addrs, change);
    (nodes, coordinator)
}

/// Starts a coordinator again from the config an earlier start wrote (same
/// nodes, same state directory).
pub(crate) fn start_coordinator_again(root: &Path) -> CoordinatorProcess {
    start_coordinator_at(root, &[], |_| {})
}

/// Starts a coordinator with the given node addresses and config changes.
pub(crate) fn start_coordinator_at(
    root: &Path,
    nodes: &[(&str, SocketAddr)],
    change: impl FnOnce(&mut carrow_coordinator::CoordinatorConfig),
) -> CoordinatorProcess {
    let path = root.join("coordinator/coordinator.toml");
    let mut config: carrow_coordinator::CoordinatorConfig =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, addr) in nodes {
        config
            .nodes
            .iter_mut()
            .find(|n| n.name == *name)
            .unwrap()
            .url = format!("http://{addr}");
    }
    config.listen = "127.0.0.1:0".into();
    change(&mut config);
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    // Its log, for a failing test to show.
    let log = std::fs::File::create(root.join("coordinator/coordinator.log")).unwrap();
    let mut child = carrow()
        .args(["coordinator", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{first}"));
    std::thread::spawn(move || for _ in lines {});
    CoordinatorProcess { child, addr }
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_answers_equal_central_answers_and_nodes_receive_pushed_down_sql() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 4_000, 61);
    let acute = NodeProcess::start(&root.join("acute/node.toml"));
    let gp = NodeProcess::start(&root.join("gp/node.toml"));
    let council = NodeProcess::start(&root.join("council/node.toml"));
    // Federation against one DataFusion over the same published tables:
    // records join on pid alone here (the linkage stage has its own test).
    let coordinator = start_coordinator_at(
        root,
        &[
            ("acute", acute.addr),
            ("gp", gp.addr),
            ("council", council.addr),
        ],
        |c| c.link_records = false,
    );

    // Central baseline: every published table, fetched whole from its node
    // as the coordinator would see it, in one in-process DataFusion.
    let central = SessionContext::new();
    for (org, node, tables) in [
        ("acute", &acute, vec!["admissions", "contacts"]),
        ("gp", &gp, vec!["registrations", "conditions", "contacts"]),
        (
            "council",
            &council,
            vec!["clients", "care_packages", "areas", "contacts"],
        ),
    ] {
        let mut c = client(
            node.addr,
            "coordinator",
            &root.join(format!("secrets/coordinator-{org}.token")),
        )
        .await;
        c.set_header("x-carrow-project", "demo");
        let schema = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
        for table in tables {
            let batches = query(&mut c, &format!("SELECT * FROM {table}"))
                .await
                .unwrap();
            let mem = MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
            datafusion::catalog::SchemaProvider::register_table(
                schema.as_ref(),
                table.to_string(),
                Arc::new(mem),
            )
            .unwrap();
        }
        central
            .catalog("datafusion")
            .unwrap()
            .register_schema(org, schema)
            .unwrap();
    }

    central.sql("CREATE SCHEMA combined").await.unwrap();
    central
        .sql(
            "CREATE VIEW combined.contacts AS \
             SELECT 'acute' AS node, * FROM acute.contacts UNION ALL \
             SELECT 'council', * FROM council.contacts UNION ALL \
             SELECT 'gp', * FROM gp.contacts",
        )
        .await
        .unwrap();

    // Exact results at row level need a researcher's approved extracts;
    // planners' results pass disclosure control (tested in `governance`).
    let mut questions: Vec<&str> = carrow_demo_questions();
    questions.extend(DIFFERENTIAL);
    let mut approved: Vec<&str> = questions.clone();
    approved.extend(EXTRA_APPROVED);
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &approved, "extract").await;
    for sql in questions {
        // A query whose result is ordered (ORDER BY outside any bracket) must
        // keep that order; others are compared as sets of rows.
        let ordered = sql.rfind("ORDER BY") > sql.rfind(')');
        let as_rows = if ordered { ordered_rows } else { rows };
        let federated = as_rows(
            &query(&mut researcher, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
        let expected = as_rows(&central.sql(sql).await.unwrap().collect().await.unwrap());
        assert!(!expected.is_empty(), "{sql}");
        assert_eq!(federated, expected, "{sql}");
    }

    // Snapshots of the SQL each node received, one per pushdown shape, so a
    // lost pushdown fails here.
    let received = |org: &str| -> Vec<String> {
        std::fs::read_to_string(root.join(format!("{org}/audit.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["body"]["sql"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    for (org, shape, sql) in [
        (
            "acute",
            "one side of a cross-node join: projection and filters",
            "SELECT \"pid\", \"deprivation_decile\" FROM \"admissions\" WHERE ((birth_year <= 1951)) AND ((admission_date >= CAST('2025-11-01' AS DATE)))",
        ),
        (
            "acute",
            "single-node aggregate with filters",
            "SELECT \"c0\" FROM (SELECT \"count(*)\" AS c0 FROM (SELECT count(1) AS \"count(*)\" FROM acute.admissions WHERE ((admissions.admission_method = 'emergency') AND (admissions.birth_year < 1950)))) AS \"q\"",
        ),
        (
            "acute",
            "single-node sort and limit (the sort key comes back so the order can be kept)",
            "SELECT \"c0\", \"c1\" FROM (SELECT admissions.primary_diagnosis AS c0, admissions.admission_date AS c1 FROM (SELECT admissions.primary_diagnosis, admissions.admission_date FROM acute.admissions WHERE (admissions.deprivation_decile = 1) ORDER BY admissions.admission_date DESC NULLS FIRST, admissions.primary_diagnosis ASC NULLS LAST LIMIT 5)) AS \"q\"",
        ),
        (
            "council",
            "single-node join and aggregate",
            "SELECT \"c0\", \"c1\" FROM (SELECT area_name AS c0, count(pid) AS c1 FROM (SELECT a.area_name, c.pid FROM council.areas AS a LEFT OUTER JOIN council.clients AS c ON a.area_code = c.area_code) GROUP BY area_name) AS \"q\"",
        ),
        (
            "gp",
            "single-node group by and order by",
            "SELECT \"c0\", \"c1\" FROM (SELECT registrations.deprivation_decile AS c0, people AS c1 FROM (SELECT registrations.deprivation_decile, count(1) AS people FROM gp.registrations GROUP BY registrations.deprivation_decile ORDER BY registrations.deprivation_decile ASC NULLS LAST)) AS \"q\"",
        ),
        (
            "gp",
            "partial aggregate of a combined table",
            "SELECT \"c0\", \"c1\", \"c2\", \"c3\" FROM (SELECT setting AS c0, count(1) AS c1, min(contact_date) AS c2, max(contact_date) AS c3 FROM (SELECT contacts.contact_date AS contact_date, contacts.setting AS setting FROM gp.contacts WHERE (contacts.contact_date >= CAST('2025-11-01' AS DATE))) GROUP BY setting) AS \"q\"",
        ),
    ] {
        let got = received(org);
        assert!(
            got.iter().any(|s| s == sql),
            "{shape}: node {org} did not receive\n{sql}\nit received:\n{}",
            got.join("\n")
        );
    }

    // The reference client asks the demo questions and gets the same answers.
    let adbc_queries: Vec<serde_json::Value> = carrow_demo_questions()
        .iter()
        .map(|q| serde_json::json!({ "sql": q }))
        .collect();
    let out = crate::adbc::adbc(
        &format!("grpc://{}", coordinator.addr),
        "researcher",
        &root.join("secrets/researcher.token"),
        serde_json::Value::Array(adbc_queries),
    );
    for (i, sql) in carrow_demo_questions().iter().enumerate() {
        let result = &out["results"][i];
        assert_eq!(result["ok"], true, "{sql}: {result}");
        let expected = rows(&central.sql(sql).await.unwrap().collect().await.unwrap());
        assert_eq!(result["rows"], serde_json::json!(expected), "{sql}");
    }
    // Ten published tables and the session's `last_query` view.
    assert_eq!(
        out["tables"].as_array().unwrap().len(),
        11,
        "{}",
        out["tables"]
    );
    assert!(
        out["tables"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("last_query"))
    );

    // `carrow sql` prints the same answer, as a planner sees it (perturbed
    // and rounded to 5); the password comes from a file.
    let sql = "SELECT count(*) AS n FROM gp.registrations WHERE sex = 'F'";
    let exact: i64 = rows(&central.sql(sql).await.unwrap().collect().await.unwrap())[0][0]
        .parse()
        .unwrap();
    let url = format!("http://{}", coordinator.addr);
    let token = root.join("secrets/planner.token");
    let out = run(&[
        "sql",
        "--url",
        &url,
        "--user",
        "planner",
        "--password-file",
        token.to_str().unwrap(),
        sql,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let value = printed
        .lines()
        .filter(|l| l.starts_with('|'))
        .nth(1)
        .map(|l| l.trim_matches(|c| c == '|' || c == ' ').to_string())
        .unwrap_or_default();
    assert!(
        crate::support::released_near(&value, exact) && printed.contains("1 rows"),
        "{exact} released as {value:?}: {printed}"
    );
    let out = carrow()
        .args(["sql", "--url", &url, "--user", "planner", sql])
        .env_remove("CARROW_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no password"), "{}", stderr(&out));

    // Every result carries the coverage manifest: each node it read, its
    // status and data freshness.
    let (_, manifest) = query_with_manifest(
        &mut researcher,
        "SELECT count(*) FROM acute.admissions a JOIN council.clients c ON a.pid = c.pid",
    )
    .await;
    assert_eq!(manifest["acute"]["status"], "ok", "{manifest}");
    assert_eq!(manifest["council"]["status"], "ok", "{manifest}");
    assert!(
        manifest["acute"]["freshness"]
            .as_str()
            .is_some_and(|f| f.starts_with("2026-")),
        "{manifest}"
    );

    // A node that goes away: queries needing it fail naming it, the others
    // are still answered.
    drop(council);
    let err = query(&mut researcher, "SELECT count(*) FROM council.clients")
        .await
        .unwrap_err();
    assert!(
        err.contains("node council") && err.contains("unreachable"),
        "{err}"
    );
    let still = rows(
        &query(&mut researcher, "SELECT count(*) FROM gp.registrations")
            .await
            .unwrap(),
    );
    assert_eq!(
        still,
        rows(
            &central
                .sql("SELECT count(*) FROM gp.registrations")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap()
        )
    );

    // With allow_partial, the reachable nodes' rows come back and the
    // manifest says which node was missing; the session keeps the setting.
    let mut partial =
        crate::support::approved_researcher(coordinator.addr, root, &[], "extract").await;
    query(&mut partial, "SET carrow.allow_partial = true")
        .await
        .unwrap();
    let (batches, manifest) = query_with_manifest(&mut partial, EXTRA_APPROVED[0]).await;
    assert_eq!(manifest["council"]["status"], "unreachable", "{manifest}");
    assert!(
        manifest["council"]["error"]
            .as_str()
            .unwrap()
            .contains("node council"),
        "{manifest}"
    );
    assert_eq!(manifest["acute"]["status"], "ok", "{manifest}");
    let old = rows(
        &central
            .sql("SELECT count(*) FROM acute.admissions WHERE birth_year < 1930")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert_eq!(rows(&batches), old, "only acute's own rows remain");
    let err = query(&mut partial, "SET carrow.something_else = 1")
        .await
        .unwrap_err();
    assert!(err.contains("read-only SELECT only"), "{err}");
    // Another session is unaffected: it still fails, naming the node.
    let err = query(&mut researcher, "SELECT count(*) FROM council.clients")
        .await
        .unwrap_err();
    assert!(err.contains("node council"), "{err}");

    // Wrong credentials at the coordinator are refused and named.
    let err = crate::support::try_client(coordinator.addr, "planner", "wrong")
        .await
        .unwrap_err();
    assert!(
        err.contains("unknown user")
            && err.contains("planner")
            && err.contains("or wrong password"),
        "{err}"
    );
}

/// Runs `sql` and returns its batches and its schema's metadata.
pub(crate) async fn query_with_metadata(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<
    (
        Vec<datafusion::arrow::array::RecordBatch>,
        std::collections::HashMap<String, String>,
    ),
    String,
> {
    use futures::StreamExt;
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    let mut stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(|e| e.to_string())?);
    }
    let metadata = stream
        .schema()
        .map(|s| s.metadata().clone())
        .unwrap_or_default();
    Ok((batches, metadata))
}

/// Runs `sql` and returns its batches and the coverage manifest from the
/// result's schema metadata.
pub(crate) async fn query_with_manifest(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> (
    Vec<datafusion::arrow::array::RecordBatch>,
    serde_json::Value,
) {
    use futures::StreamExt;
    let mut stream = open_stream(client, sql).await;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.unwrap());
    }
    let schema = stream.schema().expect("a schema message").clone();
    let manifest = schema
        .metadata()
        .get("carrow.coverage")
        .expect("coverage manifest")
        .clone();
    (batches, serde_json::from_str(&manifest).unwrap())
}

/// Further SQL the differential test's researcher runs.
const EXTRA_APPROVED: &[&str] = &[
    "SELECT count(*) FROM acute.admissions WHERE pid IN (SELECT pid FROM council.clients) OR birth_year < 1930",
    "SELECT count(*) FROM acute.admissions a JOIN council.clients c ON a.pid = c.pid",
    "SELECT count(*) FROM council.clients",
    "SELECT count(*) FROM gp.registrations",
];

/// Queries run federated and centrally; both must give the same rows.
const DIFFERENTIAL: &[&str] = &[
    // partial aggregates of a combined table, order statistics included
    "SELECT setting, count(*) AS contacts, min(contact_date) AS first, max(contact_date) AS last FROM combined.contacts WHERE contact_date >= DATE '2025-11-01' GROUP BY setting ORDER BY setting",
    // single node: filters, aggregates, sorts, limits, windows, subqueries
    "SELECT count(*) FROM acute.admissions WHERE admission_method = 'emergency' AND birth_year < 1950",
    "SELECT sex, count(*) FROM gp.registrations GROUP BY sex",
    "SELECT primary_diagnosis FROM acute.admissions WHERE deprivation_decile = 1 ORDER BY admission_date DESC, primary_diagnosis LIMIT 5",
    "SELECT condition, count(*) AS n, min(diagnosed_on), max(diagnosed_on) FROM gp.conditions GROUP BY condition",
    "SELECT service_type, round(avg(weekly_cost), 2), count(*) FROM council.care_packages GROUP BY service_type",
    "SELECT area_code, count(*) FROM council.clients GROUP BY area_code HAVING count(*) > 3",
    "SELECT DISTINCT practice_code FROM gp.registrations WHERE deprivation_decile <= 2",
    "SELECT birth_year / 10 * 10 AS decade, count(*) FROM gp.registrations GROUP BY 1",
    "SELECT pid, n FROM (SELECT pid, count(*) AS n FROM acute.admissions GROUP BY pid) WHERE n >= 3",
    "SELECT area_code, rank() OVER (ORDER BY count(*) DESC, area_code) FROM council.clients GROUP BY area_code",
    "SELECT service_type, weekly_cost, row_number() OVER (PARTITION BY service_type ORDER BY weekly_cost DESC, pid) AS r FROM council.care_packages ORDER BY r, service_type LIMIT 15",
    "SELECT count(*) FROM gp.conditions WHERE pid IN (SELECT pid FROM gp.conditions WHERE condition = 'dementia') AND condition = 'diabetes'",
    "SELECT a.area_name, count(c.pid) FROM council.areas a LEFT JOIN council.clients c ON c.area_code = a.area_code GROUP BY a.area_name",
    "SELECT k.service_type, count(DISTINCT c.pid) FROM council.clients c JOIN council.care_packages k ON c.pid = k.pid GROUP BY k.service_type",
    "SELECT admission_method, count(*) FROM acute.admissions WHERE discharge_date IS NULL GROUP BY admission_method",
    "SELECT max(admission_date), min(admission_date) FROM acute.admissions",
    "SELECT sex, deprivation_decile, count(*) FROM gp.registrations GROUP BY ROLLUP (sex, deprivation_decile)",
    // across nodes: joins on pid, semi and anti joins, unions
    "SELECT count(*) FROM gp.registrations r WHERE r.pid IN (SELECT pid FROM council.clients)",
    "SELECT count(*) FROM council.clients c WHERE NOT EXISTS (SELECT 1 FROM gp.registrations r WHERE r.pid = c.pid)",
    "SELECT r.deprivation_decile, count(DISTINCT a.pid) FROM gp.registrations r JOIN acute.admissions a ON a.pid = r.pid WHERE a.admission_method = 'emergency' GROUP BY 1",
    "SELECT g.condition, a.admission_method, count(*) FROM gp.conditions g JOIN acute.admissions a ON a.pid = g.pid GROUP BY 1, 2",
    "SELECT c.area_code, count(DISTINCT a.pid), count(DISTINCT g.pid) FROM council.clients c LEFT JOIN acute.admissions a ON a.pid = c.pid LEFT JOIN gp.conditions g ON g.pid = c.pid GROUP BY 1",
    "SELECT x.pid_count FROM (SELECT count(DISTINCT pid) AS pid_count FROM acute.admissions UNION ALL SELECT count(DISTINCT pid) FROM council.clients) x",
    "SELECT count(*) FROM (SELECT pid FROM acute.admissions INTERSECT SELECT pid FROM council.clients)",
    "SELECT count(*) FROM (SELECT pid FROM council.clients EXCEPT SELECT pid FROM acute.admissions)",
    "SELECT k.service_type, a.primary_diagnosis, count(*) AS n FROM council.care_packages k JOIN acute.admissions a ON a.pid = k.pid GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT 10",
    "SELECT r.sex, avg(k.weekly_cost) > 0 FROM gp.registrations r JOIN council.care_packages k ON k.pid = r.pid GROUP BY r.sex",
    "SELECT a.pid IS NOT NULL AS admitted, count(*) FROM council.clients c LEFT JOIN (SELECT DISTINCT pid FROM acute.admissions) a ON a.pid = c.pid GROUP BY 1",
    "SELECT r.deprivation_decile, sum(CASE WHEN c.pid IS NULL THEN 0 ELSE 1 END) FROM gp.registrations r LEFT JOIN council.clients c ON c.pid = r.pid GROUP BY 1",
    "SELECT ar.deprivation_decile, count(DISTINCT a.pid) FROM acute.admissions a JOIN council.areas ar ON ar.area_code = a.area_code GROUP BY 1",
    // combined tables: partial aggregates per node, distinct persons across nodes
    "SELECT setting, count(*), sum(deprivation_decile), min(contact_date), max(contact_date), round(avg(birth_year), 6) FROM combined.contacts GROUP BY setting",
    "SELECT count(*), count(activity), max(birth_year) FROM combined.contacts",
    "SELECT node, count(DISTINCT pid) FROM combined.contacts GROUP BY node",
    "SELECT deprivation_decile, count(*) FROM combined.contacts WHERE birth_year <= 1951 GROUP BY deprivation_decile ORDER BY 1",
    "SELECT count(DISTINCT pid) FROM combined.contacts WHERE contact_date >= DATE '2025-11-01'",
    "SELECT count(*) FROM (SELECT pid FROM combined.contacts GROUP BY pid HAVING count(DISTINCT node) = 3)",
    "SELECT s, count(*) FROM (SELECT sex AS s FROM gp.registrations UNION ALL SELECT sex FROM council.clients) GROUP BY s",
];

/// The demo's questions, as the binary asks them.
pub(crate) fn carrow_demo_questions() -> Vec<&'static str> {
    vec![
        "SELECT a.deprivation_decile, count(DISTINCT a.pid) AS people FROM acute.admissions a JOIN council.care_packages k ON a.pid = k.pid WHERE a.birth_year <= 1951 AND a.admission_date >= DATE '2025-11-01' AND k.service_type = 'Home Care' GROUP BY a.deprivation_decile ORDER BY a.deprivation_decile",
        "SELECT c.area_code, count(*) AS emergency_admissions, count(DISTINCT c.pid) AS people FROM council.clients c JOIN acute.admissions a ON a.pid = c.pid WHERE a.admission_method = 'emergency' GROUP BY c.area_code ORDER BY emergency_admissions DESC, c.area_code LIMIT 10",
        "SELECT g.condition, count(DISTINCT g.pid) AS people FROM gp.conditions g JOIN council.care_packages k ON g.pid = k.pid WHERE k.service_type IN ('Residential', 'Nursing') GROUP BY g.condition ORDER BY people DESC, g.condition",
        "SELECT services, count(*) AS people FROM (SELECT pid, count(DISTINCT setting) AS services FROM combined.contacts WHERE contact_date >= DATE '2025-11-01' GROUP BY pid) GROUP BY services ORDER BY services",
        "SELECT setting, count(*) AS contacts, count(DISTINCT pid) AS people FROM combined.contacts WHERE contact_date >= DATE '2025-11-01' GROUP BY setting ORDER BY setting",
        "SELECT deprivation_decile, count(*) AS people FROM gp.registrations GROUP BY deprivation_decile ORDER BY deprivation_decile",
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_was_down_at_start_joins_at_the_next_catalog_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 500, 62);
    let acute = NodeProcess::start(&root.join("acute/node.toml"));
    let council = NodeProcess::start(&root.join("council/node.toml"));
    // Reserve a port for gp, which is not running yet.
    let gp_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let coordinator = start_coordinator_at(
        root,
        &[
            ("acute", acute.addr),
            ("council", council.addr),
            ("gp", gp_addr),
        ],
        |c| {
            c.catalog_refresh_secs = 1;
            c.connect_timeout_ms = 300;
        },
    );
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let err = query(&mut planner, "SELECT count(*) FROM gp.registrations")
        .await
        .unwrap_err();
    assert!(
        err.contains("gp.registrations") && err.contains("not found"),
        "{err}"
    );
    query(&mut planner, "SELECT count(*) FROM acute.admissions")
        .await
        .unwrap();

    let gp = NodeProcess::start_on(&root.join("gp/node.toml"), &gp_addr.to_string());
    let mut answered = None;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Ok(batches) = query(&mut planner, "SELECT count(*) FROM gp.registrations").await {
            answered = Some(rows(&batches));
            break;
        }
    }
    let answered = answered.expect("gp joined the catalog after a refresh");
    assert!(answered[0][0].parse::<u64>().unwrap() > 0);
    drop(gp);
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_tables_union_every_node_that_publishes_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 1_500, 63);
    // A second group of practices: the same kind of data under another node name.
    let mut east: carrow_node::NodeConfig =
        toml::from_str(&std::fs::read_to_string(root.join("gp/node.toml")).unwrap()).unwrap();
    east.name = "gp_east".into();
    east.audit_log = "audit-east.jsonl".into();
    std::fs::write(
        root.join("gp/node-east.toml"),
        toml::to_string(&east).unwrap(),
    )
    .unwrap();
    let gp = NodeProcess::start(&root.join("gp/node.toml"));
    let gp_east = NodeProcess::start(&root.join("gp/node-east.toml"));
    let east_addr = gp_east.addr;
    let coordinator = start_coordinator_at(root, &[("gp", gp.addr)], |c| {
        c.nodes.retain(|n| n.name == "gp");
        let mut endpoint = c.nodes[0].clone();
        endpoint.name = "gp_east".into();
        endpoint.url = format!("http://{east_addr}");
        c.nodes.push(endpoint);
    });
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let per_node = rows(
        &query(
            &mut planner,
            "SELECT count(*) FROM gp.registrations WHERE deprivation_decile = 2",
        )
        .await
        .unwrap(),
    );
    let n: u64 = per_node[0][0].parse().unwrap();
    assert!(n > 0);
    let by_node = rows(
        &query(&mut planner, "SELECT node, count(*) FROM combined.registrations WHERE deprivation_decile = 2 GROUP BY node")
            .await
            .unwrap(),
    );
    assert_eq!(
        by_node,
        vec![
            vec!["gp".to_string(), n.to_string()],
            vec!["gp_east".to_string(), n.to_string()]
        ]
    );
    // The filter reached each node's scan.
    let east_log = std::fs::read_to_string(root.join("gp/audit-east.jsonl")).unwrap();
    assert!(
        east_log.contains("WHERE") && east_log.contains("deprivation_decile = 2"),
        "{east_log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_during_a_query_fails_it_by_name_and_the_coordinator_serves_on() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 300, 64);
    let acute_config = crate::streaming::publish_big_table(root);
    let mut acute = NodeProcess::start(&acute_config);
    let gp = NodeProcess::start(&root.join("gp/node.toml"));
    let coordinator = start_coordinator_at(root, &[("acute", acute.addr), ("gp", gp.addr)], |c| {
        c.nodes.retain(|n| n.name != "council");
        // Three million rows of tokens to link are not what this tests.
        c.link_records = false;
    });
    let big = "SELECT pid, value, label FROM acute.big";
    let registered = "SELECT count(*) FROM gp.registrations";
    let mut planner =
        crate::support::approved_researcher(coordinator.addr, root, &[big, registered], "extract")
            .await;
    let mut stream = open_stream(&mut planner, big).await;
    let first = stream
        .next()
        .await
        .expect("a first batch")
        .expect("the first batch arrives");
    assert!(first.num_rows() > 0);
    // Millions of rows are still to come when the node dies.
    acute.child.kill().unwrap();
    acute.child.wait().unwrap();
    let mut failure = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            failure = Some(e.to_string());
            break;
        }
    }
    let failure = failure.expect("the query fails instead of returning a truncated result");
    assert!(failure.contains("node acute"), "{failure}");
    // The coordinator serves the next query normally.
    let registered = rows(
        &query(&mut planner, "SELECT count(*) FROM gp.registrations")
            .await
            .unwrap(),
    );
    assert!(registered[0][0].parse::<u64>().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_during_a_partial_query_is_left_out_whole_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 300, 65);
    let acute_config = crate::streaming::publish_big_table(root);
    let mut acute = NodeProcess::start(&acute_config);
    let gp = NodeProcess::start(&root.join("gp/node.toml"));
    let coordinator = start_coordinator_at(root, &[("acute", acute.addr), ("gp", gp.addr)], |c| {
        c.nodes.retain(|n| n.name != "council");
        // Three million rows of tokens to link are not what this tests.
        c.link_records = false;
    });
    // gp's rows stay whatever happens to acute; acute streams millions of pids.
    let sql = "SELECT r.sex, count(b.pid) AS matched FROM gp.registrations r \
               LEFT JOIN acute.big b ON b.pid = r.pid GROUP BY r.sex";
    let expected_sql = "SELECT sex, 0 FROM gp.registrations GROUP BY sex";
    let mut partial = crate::support::approved_researcher(
        coordinator.addr,
        root,
        &[sql, expected_sql],
        "extract",
    )
    .await;
    query(&mut partial, "SET carrow.allow_partial = true")
        .await
        .unwrap();
    let running = tokio::spawn(async move {
        let result = query_with_manifest(&mut partial, sql).await;
        (partial, result)
    });
    // Kill acute once it has sent rows, while millions are still to come.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    acute.child.kill().unwrap();
    acute.child.wait().unwrap();
    let (mut partial, (batches, manifest)) = running.await.unwrap();

    assert_eq!(manifest["gp"]["status"], "ok", "{manifest}");
    assert_eq!(manifest["acute"]["status"], "unreachable", "{manifest}");
    let error = manifest["acute"]["error"].as_str().unwrap();
    assert!(
        error.contains("node acute") && error.contains("rows, all left out"),
        "acute failed mid-stream, and its rows so far were dropped: {manifest}"
    );
    // None of acute's rows counted; every gp row is there.
    let got = rows(&batches);
    let expected = rows(&query(&mut partial, expected_sql).await.unwrap());
    assert_eq!(got, expected);
    // The coordinator goes on serving, and without allow_partial the lost
    // node fails the query by name.
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let err = query(&mut planner, "SELECT count(*) FROM acute.admissions")
        .await
        .unwrap_err();
    assert!(err.contains("node acute"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_nodes_work() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 300, 65);
    let acute = NodeProcess::start(&crate::streaming::publish_big_table(root));
    let coordinator = start_coordinator_at(root, &[("acute", acute.addr)], |c| {
        c.nodes.retain(|n| n.name == "acute");
        // Three million rows of tokens to link are not what this tests.
        c.link_records = false;
    });
    let big = "SELECT pid, value, label FROM acute.big";
    let mut planner =
        crate::support::approved_researcher(coordinator.addr, root, &[big], "extract").await;
    let mut stream = open_stream(&mut planner, big).await;
    stream
        .next()
        .await
        .expect("a first batch")
        .expect("the first batch arrives");
    drop(stream);
    drop(planner);
    // The node records its fragment as cancelled, long before it could have
    // sent millions of rows.
    let log = root.join("acute/audit.jsonl");
    let mut cancelled = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("FROM acute.big") || l.contains("\"big\""))
            && text.contains("went away")
        {
            cancelled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        cancelled,
        "the node did not record a cancelled fragment:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn carrow_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("demo");
    let out = run(&[
        "demo",
        "--people",
        "3000",
        "--seed",
        "4",
        "--keep",
        keep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);

    // The single-node answer equals the ground truth (registered people with
    // neither a national nor a type 1 opt-out, by deprivation decile) as a
    // planner may see it:
    // perturbed and rounded to 5.
    let mut truth = std::collections::BTreeMap::<u32, u64>::new();
    let people = std::fs::read_to_string(keep.join("ground-truth/people.csv")).unwrap();
    for line in people.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[9] == "false" && f[16] == "false" {
            *truth.entry(f[8].parse().unwrap()).or_default() += 1;
        }
    }
    for count in truth.values() {
        assert!(*count >= 15, "every decile is large enough to be released");
    }
    let section = text
        .split("== Registered population by deprivation decile")
        .nth(1)
        .expect("the single-node question");
    let printed: std::collections::BTreeMap<u32, u64> = section
        .lines()
        .take_while(|l| !l.starts_with("   coverage"))
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        printed.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>()
    );
    for (decile, exact) in &truth {
        assert!(
            crate::support::released_near(&printed[decile].to_string(), *exact as i64),
            "decile {decile}: {exact} released as {}",
            printed[decile]
        );
    }
    for heading in [
        "People aged 75 and over admitted to hospital in the last year who also receive home care",
        "Emergency admissions among adult social care clients",
        "Long-term conditions of people in residential or nursing care",
        "chain and signed checkpoints intact",
        "reconciled: ",
        "coverage: acute ok (data to 2026-",
        "values perturbed and rounded",
        "cells of fewer than 10 persons suppressed",
        "coordinator   ",
        "council ok (data to 2026-",
        "demo finished",
    ] {
        assert!(text.contains(heading), "missing {heading:?} in\n{text}");
    }
    // The closing check: every fragment in both logs, each side's
    // checkpoints of the other verified, both directions proved per node.
    let reconciled = text.split("reconciled: ").nth(1).unwrap();
    let numbers: Vec<u64> = reconciled
        .split_whitespace()
        .take(16)
        .filter_map(|w| w.trim_end_matches([',', ';']).parse().ok())
        .collect();
    assert!(
        numbers.len() >= 3 && numbers[0] > 0 && numbers[1] > 0,
        "{reconciled}"
    );
    assert_eq!(numbers[2], 6, "{reconciled}");
    // A clean report: the servers' logs are in the file it names.
    let log = keep.join("carrow-demo.log");
    assert!(text.contains(&log.display().to_string()), "{text}");
    let said = stderr(&out);
    assert!(!said.contains(" INFO "), "{said}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(" INFO ") && logged.contains("linkage index built"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_when_the_coordinator_restarts_is_named_unreachable_not_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 800, 64);
    let acute = NodeProcess::start(&root.join("acute/node.toml"));
    let gp = NodeProcess::start(&root.join("gp/node.toml"));
    let first = start_coordinator(root, &[("acute", &acute), ("gp", &gp)]);
    drop(first);
    // The coordinator restarts while gp is down: it knows gp's tables from
    // its state directory.
    drop(gp);
    let coordinator = start_coordinator_again(root);
    let joined = "SELECT count(*) FROM gp.registrations r JOIN acute.admissions a ON a.pid = r.pid";
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, root, &[joined], "extract").await;
    let err = query(&mut researcher, joined).await.unwrap_err();
    assert!(
        err.contains("unavailable") && err.contains("node gp") && err.contains("unreachable"),
        "{err}"
    );
    assert!(!err.contains("not found"), "{err}");
    // A partial answer leaves gp out and says so.
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    query(&mut planner, "SET carrow.allow_partial = true")
        .await
        .unwrap();
    let (batches, metadata) = query_with_metadata(
        &mut planner,
        "SELECT setting, count(*) FROM combined.contacts GROUP BY setting",
    )
    .await
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&metadata["carrow.coverage"]).unwrap();
    assert_eq!(manifest["gp"]["status"], "unreachable", "{manifest}");
    assert_eq!(manifest["acute"]["status"], "ok", "{manifest}");
    let settings: Vec<String> = rows(&batches).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(settings, vec!["hospital".to_string()]);
    drop(acute);
}
