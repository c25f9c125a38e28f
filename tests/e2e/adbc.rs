//! The reference client: the Python ADBC Flight SQL driver (which always
//! prepares statements and logs in with Basic auth, then Bearer) against a
//! real node.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::{NodeProcess, client, generate, query, rows};

/// The Python with `adbc_driver_flightsql` installed: `CARROW_PYTHON`, or the
/// virtual environment `./scripts/test` creates.
pub fn python() -> PathBuf {
    let path = std::env::var_os("CARROW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python")
        });
    assert!(
        path.exists(),
        "no Python with the ADBC driver at {}: run ./scripts/test, which installs it",
        path.display()
    );
    path
}

/// Runs `queries` through ADBC and returns the parsed JSON output.
pub fn adbc(
    uri: &str,
    user: &str,
    token_file: &std::path::Path,
    queries: serde_json::Value,
) -> serde_json::Value {
    adbc_tls(uri, user, token_file, None, queries)
}

/// [`adbc`] over TLS (`grpc+tls://`), trusting the CA in `root_certs`.
pub fn adbc_tls(
    uri: &str,
    user: &str,
    token_file: &std::path::Path,
    root_certs: Option<&std::path::Path>,
    queries: serde_json::Value,
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/adbc_client.py");
    let mut command = Command::new(python());
    if let Some(ca) = root_certs {
        command.env("CARROW_TLS_ROOT_CERTS", ca);
    }
    let mut child = command
        .arg(script)
        .args([uri, user, token_file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(queries.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "adbc client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_adbc_driver_queries_a_node() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 2_000, 21);
    let node = NodeProcess::start(&dir.path().join("council/node.toml"));
    let token = dir.path().join("secrets/operator-council.token");
    let uri = format!("grpc://{}", node.addr);
    let out = adbc(
        &uri,
        "operator",
        &token,
        serde_json::json!([
            { "sql": "SELECT area_code, count(*) AS n FROM clients GROUP BY area_code" },
            { "sql": "SELECT count(*) AS n FROM clients WHERE deprivation_decile = $1", "params": [3] },
            { "sql": "SELECT \"NHSNumber\" FROM clients" },
            { "sql": "SELECT pid, service_type, weekly_cost FROM care_packages LIMIT 5" },
        ]),
    );
    assert_eq!(
        out["tables"],
        serde_json::json!(["areas", "care_packages", "clients", "contacts"])
    );
    let results = out["results"].as_array().unwrap();

    // The same questions through the Rust Flight SQL client.
    let mut rust = client(node.addr, "operator", &token).await;
    let by_area = rows(
        &query(
            &mut rust,
            "SELECT area_code, count(*) AS n FROM clients GROUP BY area_code",
        )
        .await
        .unwrap(),
    );
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(
        results[0]["types"],
        serde_json::json!(["string", "int64"]),
        "strings cross as Utf8"
    );
    assert_eq!(results[0]["rows"], serde_json::json!(by_area));

    let decile3 = rows(
        &query(
            &mut rust,
            "SELECT count(*) AS n FROM clients WHERE deprivation_decile = 3",
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        results[1]["rows"],
        serde_json::json!(decile3),
        "bound parameter: {:?}",
        results[1]
    );

    assert_eq!(results[2]["ok"], false);
    let error = results[2]["error"].as_str().unwrap();
    assert!(error.contains("identifiers never published"), "{error}");

    assert_eq!(
        results[3]["types"],
        serde_json::json!(["fixed_size_binary[16]", "string", "double"])
    );
    assert_eq!(results[3]["rows"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn through_adbc_a_partial_answer_names_the_missing_node_and_reports_reach_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 3_000, 23);
    let mut nodes: Vec<NodeProcess> = ["acute", "gp", "council"]
        .iter()
        .map(|org| NodeProcess::start(&root.join(format!("{org}/node.toml"))))
        .collect();
    let coordinator = crate::coordinator::start_coordinator(
        root,
        &[
            ("acute", &nodes[0]),
            ("gp", &nodes[1]),
            ("council", &nodes[2]),
        ],
    );
    let uri = format!("grpc://{}", coordinator.addr);
    let planner = root.join("secrets/planner.token");
    let contacts = "SELECT setting, count(*) AS contacts FROM combined.contacts GROUP BY setting";

    // Every node up: the coverage manifest and the disclosure report arrive
    // with the result, through the driver; `?` parameters bind; pandas and
    // polars read results.
    let out = adbc(
        &uri,
        "planner",
        &planner,
        serde_json::json!([
            { "sql": contacts },
            { "sql": "SELECT sex, count(*) AS people FROM gp.registrations WHERE birth_year > ? GROUP BY sex", "params": [1950] },
            { "sql": "SELECT sex, count(*) AS people FROM gp.registrations GROUP BY sex", "read_with": "pandas" },
            { "sql": "SELECT sex, count(*) AS people FROM gp.registrations GROUP BY sex", "read_with": "polars" },
            { "sql": "SELECT query_id, partial, missing_nodes FROM last_query" },
        ]),
    );
    let results = out["results"].as_array().unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["ok"], true, "{i}: {r}");
    }
    let coverage: serde_json::Value =
        serde_json::from_str(results[0]["metadata"]["carrow.coverage"].as_str().unwrap()).unwrap();
    for node in ["acute", "gp", "council"] {
        assert_eq!(coverage[node]["status"], "ok", "{coverage}");
    }
    assert!(
        results[0]["metadata"]["carrow.disclosure"]
            .as_str()
            .is_some_and(|d| d.contains("rows_released")),
        "{}",
        results[0]
    );
    assert_eq!(
        results[1]["rows"].as_array().unwrap().len(),
        2,
        "{}",
        results[1]
    );
    assert_eq!(
        results[2]["rows"], results[3]["rows"],
        "pandas and polars agree"
    );
    assert_eq!(results[2]["rows"].as_array().unwrap().len(), 2);
    assert_eq!(results[4]["rows"][0][1], "False", "{}", results[4]);

    // The council node goes down. With allow_partial the answer comes back
    // without it, and the client sees which node is missing: in the
    // result's metadata and in the last_query view.
    drop(nodes.pop());
    let out = adbc(
        &uri,
        "planner",
        &planner,
        serde_json::json!([
            { "sql": contacts },
            { "sql": "SET carrow.allow_partial = true" },
            { "sql": contacts },
            { "sql": "SELECT partial, missing_nodes FROM last_query" },
        ]),
    );
    let results = out["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], false, "{}", results[0]);
    assert!(
        results[0]["error"].as_str().unwrap().contains("council"),
        "the failure names the node: {}",
        results[0]
    );
    assert_eq!(results[2]["ok"], true, "{}", results[2]);
    let coverage: serde_json::Value =
        serde_json::from_str(results[2]["metadata"]["carrow.coverage"].as_str().unwrap()).unwrap();
    assert_eq!(coverage["council"]["status"], "unreachable", "{coverage}");
    assert_eq!(coverage["gp"]["status"], "ok", "{coverage}");
    let settings: Vec<&str> = results[2]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert!(!settings.contains(&"social care"), "{settings:?}");
    assert_eq!(
        results[3]["rows"],
        serde_json::json!([["True", "council"]]),
        "{}",
        results[3]
    );
}
