//! Real nodes on 127.0.0.1 over the generated organisations, queried with a
//! real Flight SQL client: results, the pseudonymisation boundary, opt-outs,
//! refusals and the audit log.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use arrow_flight::sql::CommandGetTables;
use carrow_linkage::{LinkageSecret, Tokeniser};
use datafusion::arrow::array::{Array, FixedSizeBinaryArray};
use datafusion::arrow::datatypes::DataType;
use futures::TryStreamExt;

use crate::support::{
    NodeProcess, client, generate, local_query, query, rows, run, stderr, try_client,
};

type FlightClient = arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>;

/// A generated region with one node running per organisation.
struct Region {
    _dir: tempfile::TempDir,
    root: PathBuf,
    acute: NodeProcess,
    gp: NodeProcess,
    council: NodeProcess,
}

impl Region {
    fn start(people: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        generate(&root, people, seed);
        let start = |org: &str| NodeProcess::start(&root.join(org).join("node.toml"));
        Region {
            acute: start("acute"),
            gp: start("gp"),
            council: start("council"),
            root,
            _dir: dir,
        }
    }

    fn node(&self, org: &str) -> &NodeProcess {
        match org {
            "acute" => &self.acute,
            "gp" => &self.gp,
            _ => &self.council,
        }
    }

    /// Logged in to `org`'s node as `user` (operator or coordinator).
    async fn login(&self, org: &str, user: &str) -> FlightClient {
        client(
            self.node(org).addr,
            user,
            &self.secret(&format!("{user}-{org}.token")),
        )
        .await
    }

    async fn operator(&self, org: &str) -> FlightClient {
        self.login(org, "operator").await
    }

    async fn coordinator(&self, org: &str) -> FlightClient {
        self.login(org, "coordinator").await
    }

    fn secret(&self, name: &str) -> PathBuf {
        self.root.join("secrets").join(name)
    }

    fn truth(&self, file: &str) -> PathBuf {
        self.root.join("ground-truth").join(file)
    }

    fn tokeniser(&self, project: &str) -> Tokeniser {
        Tokeniser::new(
            &LinkageSecret::load(&self.secret("linkage.key")).unwrap(),
            project,
        )
    }

    /// (NHS number, postcode, objected at the GP practice: a national data
    /// opt-out or type 1 dissent) of every person.
    fn people(&self) -> Vec<(String, String, bool)> {
        let text = fs::read_to_string(self.truth("people.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[1].to_string(),
                    f[6].to_string(),
                    f[9] == "true" || f[16] == "true",
                )
            })
            .collect()
    }
}

fn single_count(batches: &[datafusion::arrow::array::RecordBatch]) -> String {
    let r = rows(batches);
    assert_eq!(r.len(), 1, "{r:?}");
    r[0][0].clone()
}

fn pids(batches: &[datafusion::arrow::array::RecordBatch]) -> HashSet<Vec<u8>> {
    let mut out = HashSet::new();
    for b in batches {
        let column = b.column_by_name("pid").expect("pid column");
        let array = column
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .expect("pid is FixedSizeBinary(16)");
        for i in 0..array.len() {
            if array.is_valid(i) {
                out.insert(array.value(i).to_vec());
            }
        }
    }
    out
}

/// The ground truth joined to an organisation's local table, without the
/// people the organisation itself records as objecting (only the GP
/// practice does; objections reach the others through the coordinator,
/// see `opt_outs.rs`): the answer a node on its own must give.
async fn expected(
    region: &Region,
    org: &str,
    local_table: &str,
    id_column: &str,
    select: &str,
) -> Vec<Vec<String>> {
    let tables = [
        (
            "t",
            region.root.join(org).join(format!("{local_table}.csv")),
        ),
        ("records", region.truth("records.csv")),
        ("people", region.truth("people.csv")),
    ];
    let objection = if org == "gp" {
        "NOT p.opted_out AND NOT p.type1_opted_out"
    } else {
        "true"
    };
    let sql = format!(
        "SELECT {select} FROM t JOIN records r ON r.organisation = '{org}' AND r.\"table\" = '{local_table}' \
         AND r.record_id = CAST(t.\"{id_column}\" AS VARCHAR) JOIN people p ON p.person_id = r.person_id \
         WHERE {objection} GROUP BY 1"
    );
    rows(&local_query(&tables, &sql).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn published_results_equal_the_files_without_opted_out_people() {
    let region = Region::start(3_000, 11);
    let mut council = region.operator("council").await;
    let got = rows(
        &query(
            &mut council,
            "SELECT area_code, count(*) FROM clients GROUP BY area_code",
        )
        .await
        .unwrap(),
    );
    let want = expected(
        &region,
        "council",
        "clients",
        "ClientID",
        "t.\"AreaCode\", count(*)",
    )
    .await;
    assert!(!want.is_empty());
    assert_eq!(got, want);

    let mut acute = region.operator("acute").await;
    let got = rows(
        &query(
            &mut acute,
            "SELECT admission_method, count(*) FROM admissions GROUP BY 1",
        )
        .await
        .unwrap(),
    );
    let want = expected(
        &region,
        "acute",
        "apc_spells",
        "SPELL_ID",
        "CASE t.\"ADMISSION_METHOD\" WHEN 21 THEN 'emergency' ELSE 'elective' END, count(*)",
    )
    .await;
    assert_eq!(got, want);

    let mut gp = region.operator("gp").await;
    let got = rows(
        &query(
            &mut gp,
            "SELECT sex, count(*) FROM registrations GROUP BY sex",
        )
        .await
        .unwrap(),
    );
    let want = expected(&region, "gp", "patients", "patient_guid", "t.sex, count(*)").await;
    assert_eq!(got, want);

    // Non-personal reference data is published whole.
    let got = single_count(
        &query(&mut council, "SELECT count(*) FROM areas")
            .await
            .unwrap(),
    );
    let areas = fs::read_to_string(region.root.join("council/areas.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(got, areas.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_is_the_projects_token_and_no_identifier_or_opted_out_person_leaves() {
    let region = Region::start(3_000, 12);
    let people = region.people();
    let demo = region.tokeniser("demo");
    let mut everything = String::new();
    let mut released_pids = HashSet::new();
    let mut gp_pids = HashSet::new();
    for (org, tables) in [
        ("acute", vec!["admissions"]),
        ("gp", vec!["registrations", "conditions"]),
        ("council", vec!["clients", "care_packages", "areas"]),
    ] {
        let mut c = region.operator(org).await;
        for table in tables {
            let batches = query(&mut c, &format!("SELECT * FROM {table}"))
                .await
                .unwrap();
            let schema = batches[0].schema();
            for field in schema.fields() {
                assert!(
                    !matches!(field.data_type(), DataType::Utf8View | DataType::LargeUtf8),
                    "{table}.{} is {}",
                    field.name(),
                    field.data_type()
                );
                assert!(
                    ![
                        "nhs_number",
                        "NHS_NO",
                        "NHSNumber",
                        "surname",
                        "SURNAME",
                        "LastName",
                        "postcode",
                        "POSTCODE",
                        "Postcode"
                    ]
                    .contains(&field.name().as_str()),
                    "identifier column {} published",
                    field.name()
                );
            }
            if table != "areas" {
                released_pids.extend(pids(&batches));
            }
            if org == "gp" {
                gp_pids.extend(pids(&batches));
            }
            everything.push_str(&format!("{:?}", rows(&batches)));
        }
    }
    // The gp publishes every registered person who did not object, keyed
    // by their NHS number for project "demo", and no one who did.
    let mut opted_out_tokens = HashSet::new();
    for (nhs, _, opted_out) in &people {
        let nhs: [u8; 10] = nhs.as_bytes().try_into().unwrap();
        let token = demo.nhs_number_token(&nhs).to_vec();
        if *opted_out {
            opted_out_tokens.insert(token);
        } else {
            assert!(
                released_pids.contains(&token),
                "a registered person is missing from gp.registrations"
            );
        }
    }
    assert!(!opted_out_tokens.is_empty());
    assert!(
        gp_pids.is_disjoint(&opted_out_tokens),
        "an opted-out person was released"
    );
    // Another project's pseudonyms differ, so they cannot be joined.
    let other = region.tokeniser("other");
    let nhs: [u8; 10] = people[0].0.as_bytes().try_into().unwrap();
    assert_ne!(other.nhs_number_token(&nhs), demo.nhs_number_token(&nhs));

    // No raw identifier in results, errors, node logs or audit logs.
    let mut c = region.operator("acute").await;
    let error = query(&mut c, "SELECT \"NHS_NO\" FROM admissions")
        .await
        .unwrap_err();
    everything.push_str(&error);
    for org in ["acute", "gp", "council"] {
        everything.push_str(&region.node(org).log());
        everything
            .push_str(&fs::read_to_string(region.root.join(org).join("audit.jsonl")).unwrap());
    }
    for (nhs, postcode, _) in &people {
        assert!(!everything.contains(nhs.as_str()), "an NHS number leaked");
        assert!(!everything.contains(postcode.as_str()), "a postcode leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_outs_hold_whatever_the_query() {
    let region = Region::start(2_000, 13);
    let mut gp = region.operator("gp").await;
    let people = region.people();
    let kept = people.iter().filter(|p| !p.2).count().to_string();
    for sql in [
        "SELECT count(*) FROM registrations",
        "SELECT count(DISTINCT pid) FROM registrations",
        "SELECT count(*) FROM (SELECT pid FROM registrations UNION ALL SELECT pid FROM registrations WHERE false)",
        "SELECT count(*) FROM registrations r1 JOIN registrations r2 ON r1.pid = r2.pid",
        "SELECT count(*) FROM registrations WHERE pid IN (SELECT pid FROM registrations)",
        "SELECT max(n) FROM (SELECT row_number() OVER (ORDER BY birth_year, sex) AS n FROM registrations)",
        "SELECT sum(n) FROM (SELECT count(*) OVER (PARTITION BY pid) AS n FROM registrations)",
        "SELECT count(*) FROM registrations WHERE sex = 'F' OR sex = 'M' OR sex IS NULL",
    ] {
        let got = single_count(
            &query(&mut gp, sql)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", region.gp.log())),
        );
        assert_eq!(got, kept, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_names_its_rule() {
    let region = Region::start(500, 14);
    let addr = region.acute.addr;

    let err = try_client(addr, "coordinator", "not-the-token")
        .await
        .unwrap_err();
    assert!(
        err.contains("known callers") && !err.contains("not-the-token"),
        "{err}"
    );
    let err = try_client(addr, "stranger", "x").await.unwrap_err();
    assert!(err.contains("known callers"), "{err}");

    let mut c = region.operator("acute").await;
    for (sql, rule, detail) in [
        (
            "SELECT \"LSOA\" FROM admissions",
            "published columns",
            "LSOA",
        ),
        (
            "SELECT discharge_date, ward FROM admissions",
            "published columns",
            "ward",
        ),
        (
            "SELECT \"NHS_NO\" FROM admissions",
            "identifiers never published",
            "NHS_NO",
        ),
        (
            "SELECT count(*) FROM pas_patients",
            "published tables",
            "pas_patients is a local table",
        ),
        (
            "SELECT * FROM theatre_lists",
            "published tables",
            "publishes no table theatre_lists",
        ),
        (
            "INSERT INTO admissions VALUES (1)",
            "read-only SELECT only",
            "INSERT",
        ),
        ("DELETE FROM admissions", "read-only SELECT only", "DELETE"),
        (
            "DROP TABLE admissions",
            "read-only SELECT only",
            "DROP TABLE",
        ),
        (
            "COPY admissions TO '/tmp/x.csv'",
            "read-only SELECT only",
            "COPY",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "read-only SELECT only",
            "SET",
        ),
        (
            "SELECT * FROM read_csv('/etc/passwd')",
            "no table functions",
            "read_csv",
        ),
    ] {
        let err = query(&mut c, sql).await.unwrap_err();
        assert!(
            err.contains(&format!("`{rule}`")) && err.contains(detail),
            "{sql}: {err}"
        );
    }

    let mut coordinator = region.coordinator("acute").await;
    coordinator.set_header("x-carrow-project", "another_project");
    let err = query(&mut coordinator, "SELECT count(*) FROM admissions")
        .await
        .unwrap_err();
    assert!(
        err.contains("`projects served`") && err.contains("another_project"),
        "{err}"
    );
    // The same caller with the node's project is served.
    coordinator.set_header("x-carrow-project", "demo");
    query(&mut coordinator, "SELECT count(*) FROM admissions")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_bind_parameters_and_catalog_schemas_match_streams() {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    let region = Region::start(2_000, 15);
    let mut c = region.operator("council").await;
    let direct = single_count(
        &query(
            &mut c,
            "SELECT count(*) FROM clients WHERE deprivation_decile = 3",
        )
        .await
        .unwrap(),
    );

    let mut prepared = c
        .prepare(
            "SELECT count(*) FROM clients WHERE deprivation_decile = $1".into(),
            None,
        )
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![3]))],
    )
    .unwrap();
    prepared.set_parameters(params).unwrap();
    let info = prepared.execute().await.unwrap();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        batches.extend(
            c.do_get(endpoint.ticket.unwrap())
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap(),
        );
    }
    assert_eq!(single_count(&batches), direct);

    // Catalog calls list the published tables; each table's schema there
    // equals the FlightInfo schema and the streamed schema.
    let info = c
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let listing = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let listed = rows(&listing);
    let names: Vec<&str> = listed.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(names, vec!["areas", "care_packages", "clients", "contacts"]);
    for table in ["areas", "care_packages", "clients", "contacts"] {
        let info = c
            .execute(format!("SELECT * FROM {table}"), None)
            .await
            .unwrap();
        let announced = info.clone().try_decode_schema().unwrap();
        let streamed = c
            .do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let fields = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&announced), fields(&streamed[0].schema()), "{table}");
    }

    // A ticket cannot be forged: an unknown handle is refused.
    let forged = arrow_flight::sql::TicketStatementQuery {
        statement_handle: "00112233445566778899aabbccddeeff".into(),
    };
    use arrow_flight::sql::ProstMessageExt;
    use prost::Message;
    let ticket = arrow_flight::Ticket::new(forged.as_any().encode_to_vec());
    let err = match c.do_get(ticket).await {
        Ok(stream) => stream
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("unknown or expired statement handle"), "{err}");
}

fn audit_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_records_every_fragment_and_shows_tampering() {
    let region = Region::start(500, 16);
    let mut c = region.coordinator("council").await;
    c.set_header("x-carrow-project", "demo");
    query(&mut c, "SELECT sex, count(*) FROM clients GROUP BY sex")
        .await
        .unwrap();
    query(&mut c, "SELECT \"LastName\" FROM clients")
        .await
        .unwrap_err();
    query(&mut c, "SELECT area_name FROM areas LIMIT 3")
        .await
        .unwrap();
    let log = region.root.join("council/audit.jsonl");
    // Each statement is recorded before it runs and again with its outcome.
    let lines = audit_lines(&log);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, record) in records.iter().enumerate() {
        let phase = if i % 2 == 0 { "started" } else { "finished" };
        assert_eq!(record["body"]["phase"], phase, "{record}");
    }
    let first = records[1].clone();
    assert_eq!(first["body"]["outcome"], "ok");
    assert_eq!(first["body"]["caller"], "coordinator");
    assert_eq!(first["body"]["project"], "demo");
    assert_eq!(first["body"]["tables"][0]["table"], "clients");
    assert_eq!(
        first["body"]["tables"][0]["columns"],
        serde_json::json!(["sex"])
    );
    assert_eq!(first["body"]["rows"], 2);
    let second = records[3].clone();
    assert_eq!(second["body"]["outcome"], "refused");
    assert!(
        second["body"]["error"]
            .as_str()
            .unwrap()
            .contains("identifiers never published")
    );

    // A caller asking for a receipt gets, after the last batch, the rows and
    // the audit head hash of the record of its fragment.
    c.set_header("x-carrow-receipt", "1");
    let info = c
        .execute("SELECT pid FROM clients LIMIT 7".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut raw = c.inner_mut().clone();
    let mut request = tonic::Request::new(ticket);
    let bearer = format!("Bearer {}", c.token().unwrap());
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let messages: Vec<arrow_flight::FlightData> = raw
        .do_get(request)
        .await
        .unwrap()
        .into_inner()
        .try_collect()
        .await
        .unwrap();
    let receipt: serde_json::Value =
        serde_json::from_slice(&messages.last().unwrap().app_metadata).unwrap();
    let lines = audit_lines(&log);
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(receipt["rows"], 7);
    assert_eq!(receipt["audit_head"], last["hash"]);
    assert_eq!(receipt["query_id"], last["body"]["query_id"]);
    assert_eq!(lines.len(), 8);

    let verify = |path: &Path| run(&["audit", "verify", path.to_str().unwrap()]);
    let ok = verify(&log);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("8 records"));

    let tampered = region.root.join("tampered.jsonl");
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"rows\":2", "\"rows\":20");
    fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let err = stderr(&verify(&tampered));
    assert!(
        err.contains("line 2 (record 2)") && err.contains("edited"),
        "{err}"
    );

    let mut deleted = lines.clone();
    deleted.remove(1);
    fs::write(&tampered, deleted.join("\n") + "\n").unwrap();
    let err = stderr(&verify(&tampered));
    assert!(err.contains("line 2 (record 3)"), "{err}");

    let mut reordered = lines.clone();
    reordered.swap(0, 1);
    fs::write(&tampered, reordered.join("\n") + "\n").unwrap();
    let err = stderr(&verify(&tampered));
    assert!(err.contains("line 1 (record 2)"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_source_is_named_and_the_other_tables_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 300, 17);
    std::fs::remove_file(dir.path().join("council/care_packages.csv")).unwrap();
    let node = NodeProcess::start(&dir.path().join("council/node.toml"));
    let mut c = client(
        node.addr,
        "operator",
        &dir.path().join("secrets/operator-council.token"),
    )
    .await;
    let served = single_count(&query(&mut c, "SELECT count(*) FROM clients").await.unwrap());
    assert!(served.parse::<u64>().unwrap() > 0);
    let err = query(&mut c, "SELECT count(*) FROM care_packages")
        .await
        .unwrap_err();
    assert!(
        err.contains("care_packages is unavailable at node council")
            && err.contains("care_packages.csv"),
        "{err}"
    );
    let log = node.log();
    assert!(
        log.contains("source unavailable") && log.contains("source=care_packages"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn linkage_tokens_go_to_the_coordinator_only_and_cover_exactly_the_published_persons() {
    let region = Region::start(1_500, 81);
    let tokens = "SELECT * FROM carrow_linkage_tokens";

    // Without the linkage header the table does not exist, even for the coordinator.
    let mut coordinator = region.coordinator("council").await;
    let err = query(&mut coordinator, tokens).await.unwrap_err();
    assert!(
        err.contains("publishes no table carrow_linkage_tokens"),
        "{err}"
    );
    // With it, an operator is refused, by rule, and the refusal is logged.
    let mut operator = region.operator("council").await;
    operator.set_header("x-carrow-linkage", "1");
    let err = query(&mut operator, tokens).await.unwrap_err();
    assert!(
        err.contains("refused by rule `linkage tokens: coordinator only`"),
        "{err}"
    );
    assert!(
        audit_lines(&region.root.join("council/audit.jsonl"))
            .iter()
            .any(|l| l.contains("linkage tokens: coordinator only")),
    );

    // The coordinator gets one row per distinct identity: pid and keyed
    // field tokens, nothing else.
    coordinator.set_header("x-carrow-linkage", "1");
    let batches = query(&mut coordinator, tokens).await.unwrap();
    let schema = batches[0].schema();
    assert_eq!(schema.field(0).name(), "pid");
    for field in schema.fields().iter().skip(1) {
        let token = match field.data_type() {
            DataType::List(item) => item.data_type().clone(),
            other => other.clone(),
        };
        assert_eq!(token, DataType::FixedSizeBinary(16), "{}", field.name());
    }
    assert_eq!(
        schema.fields().len(),
        1 + carrow_linkage::fields::Field::ALL.len()
    );
    let token_pids = pids(&batches);
    let mut operator = region.operator("council").await;
    let mut published = pids(
        &query(&mut operator, "SELECT pid FROM clients")
            .await
            .unwrap(),
    );
    published.extend(pids(
        &query(&mut operator, "SELECT pid FROM care_packages")
            .await
            .unwrap(),
    ));
    assert_eq!(
        token_pids, published,
        "tokens cover exactly the persons the node publishes"
    );
}
