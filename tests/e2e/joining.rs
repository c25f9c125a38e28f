//! The README's walk-through for an organisation joining a running
//! federation, followed step by step: a fourth organisation (a hospice)
//! with its records in its own PostgreSQL, configured by hand, with a
//! caller token from `carrow keys token`, TLS, and `--check` on both
//! sides, joins at the coordinator's next catalog refresh.

use std::time::{Duration, Instant};

use crate::support::{NodeProcess, client, generate, query, rows, run, stderr};

#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_organisation_configured_by_hand_joins_at_the_next_refresh() {
    let pg = crate::postgres::pg();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 800, 77);
    let (nodes, coordinator) = crate::coordinator::start_federation(root, |config| {
        config.catalog_refresh_secs = 1;
    });

    // The hospice's own database: visits of 60 people the GP also knows.
    let database = format!("hospice_{}", std::process::id());
    pg.psql("postgres", &format!("CREATE DATABASE {database}"));
    pg.load_csv(&database, "gp_export", &root.join("gp/patients.csv"));
    pg.psql(
        &database,
        "CREATE TABLE visits AS SELECT nhs_number, surname, forenames, date_of_birth, sex, \
         postcode, lsoa_code, imd_decile, '2026-06-01' AS visit_date \
         FROM gp_export ORDER BY patient_guid LIMIT 60",
    );

    // Step 1: the linkage secret from the key custodian, readable only by
    // the node's user.
    let hospice = root.join("hospice");
    std::fs::create_dir_all(hospice.join("secrets")).unwrap();
    std::fs::copy(
        root.join("secrets/linkage.key"),
        hospice.join("secrets/linkage.key"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(hospice.join("secrets/linkage.key"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(hospice.join("secrets/linkage.key"), perms).unwrap();

    // Step 2: a caller token for the coordinator, and the node's entry for it.
    let out = run(&[
        "keys",
        "token",
        "--out",
        hospice.join("secrets/coordinator.token").to_str().unwrap(),
        "--name",
        "coordinator",
        "--role",
        "coordinator",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let clients_entry = &printed[printed.find("[[clients]]").expect("the entry")..];

    // Step 3: TLS certificates from the organisation's CA.
    let pki = crate::tls::Pki::make(&hospice.join("tls"));

    // Step 4: node.toml, by hand, over the organisation's PostgreSQL.
    let config = format!(
        r#"name = "hospice"
listen = "127.0.0.1:0"
linkage_secret_file = "secrets/linkage.key"
audit_log = "audit.jsonl"
projects = ["demo"]
default_project = "demo"

{clients_entry}

[tls]
cert_file = "tls/server.pem"
key_file = "tls/server.key"

[sources.visits]
format = "postgres"
host = "{host}"
port = {port}
database = "{database}"
user = "{user}"
password_file = "{password_file}"
table = "visits"
sslmode = "disable"

[[tables]]
name = "contacts"
description = "Hospice visits, one row per visit (shared shape)"
source = "visits"

[tables.identifiers]
nhs_number = "nhs_number"
family_name = "surname"
given_name = "forenames"
date_of_birth = "date_of_birth"
sex = "sex"
postcode = "postcode"

[[tables.columns]]
name = "birth_year"
expr = "TRY_CAST(substr(date_of_birth, 7, 4) AS INT)"

[[tables.columns]]
name = "sex"
expr = "CASE upper(sex) WHEN 'M' THEN 'M' WHEN 'F' THEN 'F' END"

[[tables.columns]]
name = "area_code"
from = "lsoa_code"
type = "string"

[[tables.columns]]
name = "deprivation_decile"
from = "imd_decile"
type = "int64"

[[tables.columns]]
name = "contact_date"
from = "visit_date"
type = "date"

[[tables.columns]]
name = "setting"
expr = "'hospice'"
type = "string"

[[tables.columns]]
name = "activity"
expr = "'visit'"
type = "string"

[tables.freshness]
column = "contact_date"
"#,
        host = pg.host,
        port = pg.port,
        user = pg.user,
        password_file = pg.password_file.display(),
    );
    let node_toml = hospice.join("node.toml");
    std::fs::write(&node_toml, config).unwrap();

    // Step 5: --check opens everything the file names.
    let out = run(&["node", "--config", node_toml.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));

    // Step 6: the node runs.
    let node = NodeProcess::start(&node_toml);

    // Step 7: the coordinator's operator adds the node and checks the file.
    std::fs::copy(
        hospice.join("secrets/coordinator.token"),
        root.join("secrets/coordinator-hospice.token"),
    )
    .unwrap();
    let coordinator_toml = root.join("coordinator/coordinator.toml");
    let mut text = std::fs::read_to_string(&coordinator_toml).unwrap();
    text.push_str(&format!(
        r#"
[[nodes]]
name = "hospice"
url = "https://localhost:{port}"
token_file = "../secrets/coordinator-hospice.token"

[nodes.tls]
ca_file = "{ca}"
"#,
        port = node.addr.port(),
        ca = pki.file("ca.pem").display(),
    ));
    std::fs::write(&coordinator_toml, text).unwrap();
    let out = run(&[
        "coordinator",
        "--config",
        coordinator_toml.to_str().unwrap(),
        "--check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 nodes"));

    // Step 8: at the next refresh the hospice is part of the federation.
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let by_node =
        "SELECT node, count(*) AS contacts FROM combined.contacts GROUP BY node ORDER BY node";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (nodes_seen, last_error) = loop {
        let (seen, error): (Vec<String>, _) = match query(&mut planner, by_node).await {
            Ok(batches) => (
                rows(&batches).into_iter().map(|r| r[0].clone()).collect(),
                None,
            ),
            Err(e) => (vec![], Some(e)),
        };
        if seen.iter().any(|n| n == "hospice") || Instant::now() > deadline {
            break (seen, error);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        nodes_seen,
        ["acute", "council", "gp", "hospice"],
        "{last_error:?}\n{}",
        std::fs::read_to_string(root.join("coordinator/coordinator.log")).unwrap_or_default()
    );
    // Its people link with the GP's on pseudonyms alone.
    let linked = rows(
        &query(
            &mut planner,
            "SELECT count(DISTINCT h.pid) AS people FROM hospice.contacts h JOIN gp.registrations g ON h.pid = g.pid",
        )
        .await
        .unwrap(),
    );
    let people: i64 = linked[0][0].parse().unwrap();
    assert!((40..=65).contains(&people), "{people}");
    drop((node, nodes, coordinator));
}
