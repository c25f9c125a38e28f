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
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/adbc_client.py");
    let mut child = Command::new(python())
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
