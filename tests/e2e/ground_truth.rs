//! The demo's answers against the generated data's ground truth: the same
//! questions computed in one in-process DataFusion straight from the
//! organisations' raw extracts (their own column names and formats), with
//! records joined by the person they are really about and opt-outs as the
//! ground truth has them, then released under the same disclosure rules.
//! No node or coordinator code is on this path. The same questions joined
//! on `pid` alone (pseudonyms made by the linkage library from the raw
//! identifiers) show how many people the linkage stage recovers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use carrow_linkage::{IdentifierColumns, IdentifierKind, LinkageSecret, Tokeniser};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionContext};

use crate::support::{ordered_rows, released_near, run, stderr};

/// A raw CSV extract with every column as text, plus `pid` and `opted_out`
/// computed from its identifier columns.
async fn person_table(
    ctx: &SessionContext,
    path: &Path,
    ids: [&str; 6],
    objection: &str,
    opt_out_list: &HashSet<String>,
    tokeniser: &Tokeniser,
) -> MemTable {
    let options = CsvReadOptions::new().schema_infer_max_records(0);
    let df = ctx.read_csv(path.to_str().unwrap(), options).await.unwrap();
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batch = concat_batches(&schema, &df.collect().await.unwrap()).unwrap();
    let column = |name: &str| -> ArrayRef {
        cast(batch.column_by_name(name).unwrap(), &DataType::Utf8).unwrap()
    };
    let [nhs, family, given, dob, sex, postcode] = ids;
    let identifiers = IdentifierColumns::default()
        .with(IdentifierKind::NhsNumber, column(nhs))
        .with(IdentifierKind::FamilyName, column(family))
        .with(IdentifierKind::GivenName, column(given))
        .with(IdentifierKind::DateOfBirth, column(dob))
        .with(IdentifierKind::Sex, column(sex))
        .with(IdentifierKind::Postcode, column(postcode));
    let pid = tokeniser.pid_array(&identifiers).unwrap();
    let numbers = column(nhs);
    let numbers = numbers.as_any().downcast_ref::<StringArray>().unwrap();
    let flags = column(objection);
    let flags = flags.as_any().downcast_ref::<StringArray>().unwrap();
    let opted_out: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let listed = numbers.is_valid(i)
                && carrow_linkage::normalise::nhs_number(numbers.value(i))
                    .is_some_and(|n| opt_out_list.contains(std::str::from_utf8(&n).unwrap()));
            Some(listed || (flags.is_valid(i) && flags.value(i) == "Y"))
        })
        .collect();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("pid", pid.data_type().clone(), true));
    fields.push(Field::new("opted_out", DataType::Boolean, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(pid));
    columns.push(Arc::new(opted_out));
    let schema = Arc::new(Schema::new(fields));
    MemTable::try_new(
        schema.clone(),
        vec![vec![RecordBatch::try_new(schema, columns).unwrap()]],
    )
    .unwrap()
}

/// A node's NHS-number opt-out list (none when it keeps none).
fn opt_out_list(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            carrow_linkage::normalise::nhs_number(l)
                .map(|n| String::from_utf8_lossy(&n).into_owned())
        })
        .collect()
}

/// The organisations' raw extracts in one session.
async fn raw_session(root: &Path) -> SessionContext {
    let secret = LinkageSecret::load(&root.join("secrets/linkage.key")).unwrap();
    let tokeniser = Tokeniser::new(&secret, "demo");
    let ctx = SessionContext::new();
    let acute_list = opt_out_list(&root.join("acute/optouts.csv"));
    let council_list = opt_out_list(&root.join("council/optouts.csv"));
    let patients = person_table(
        &ctx,
        &root.join("acute/pas_patients.csv"),
        ["NHS_NO", "SURNAME", "FORENAME", "DOB", "GENDER", "POSTCODE"],
        "DATA_OPT_OUT",
        &acute_list,
        &tokeniser,
    )
    .await;
    ctx.register_table("acute_patients", Arc::new(patients))
        .unwrap();
    let clients = person_table(
        &ctx,
        &root.join("council/clients.csv"),
        [
            "NHSNumber",
            "LastName",
            "FirstName",
            "DateOfBirth",
            "Gender",
            "Postcode",
        ],
        "DataSharingObjection",
        &council_list,
        &tokeniser,
    )
    .await;
    ctx.register_table("council_clients", Arc::new(clients))
        .unwrap();
    let text = CsvReadOptions::new().schema_infer_max_records(0);
    ctx.register_csv(
        "acute_spells",
        root.join("acute/apc_spells.csv").to_str().unwrap(),
        text.clone(),
    )
    .await
    .unwrap();
    ctx.register_csv(
        "council_packages",
        root.join("council/care_packages.csv").to_str().unwrap(),
        text.clone(),
    )
    .await
    .unwrap();
    // The ground truth: which person each record is about, and who opted out.
    for (name, file) in [("records", "records.csv"), ("people", "people.csv")] {
        let path = root.join("ground-truth").join(file);
        ctx.register_csv(name, path.to_str().unwrap(), text.clone())
            .await
            .unwrap();
    }
    ctx
}

/// The demo's first two linked questions over the raw extracts, twice:
/// (heading, SQL joining records of the same person by the ground truth,
/// SQL joining them by `pid` alone as they would be without the linkage stage).
const RAW_QUESTIONS: &[(&str, &str, &str)] = &[
    (
        "People aged 75 and over admitted to hospital in the last year who also receive home care",
        "SELECT CAST(p.\"IMD_DECILE\" AS BIGINT) AS decile, count(DISTINCT rp.person_id) AS people
         FROM acute_spells s JOIN acute_patients p ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\"
         JOIN records rp ON rp.record_id = p.\"PATIENT_ID\" AND rp.\"table\" = 'pas_patients'
         JOIN records rc ON rc.person_id = rp.person_id AND rc.\"table\" = 'clients'
         JOIN council_clients c ON c.\"ClientID\" = rc.record_id
         JOIN council_packages k ON k.\"ClientID\" = c.\"ClientID\"
         JOIN people pe ON pe.person_id = rp.person_id
         WHERE pe.opted_out = 'false'
           AND date_part('year', CAST(p.\"DOB\" AS DATE)) <= 1951
           AND CAST(s.\"ADMISSION_DATE\" AS DATE) >= DATE '2025-11-01'
           AND k.\"ServiceType\" = 'Home Care'
         GROUP BY 1 ORDER BY 1",
        "SELECT CAST(p.\"IMD_DECILE\" AS BIGINT) AS decile, count(DISTINCT p.pid) AS people
         FROM acute_spells s JOIN acute_patients p ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\"
         JOIN council_clients c ON c.pid = p.pid
         JOIN council_packages k ON k.\"ClientID\" = c.\"ClientID\"
         WHERE NOT p.opted_out AND NOT c.opted_out
           AND date_part('year', CAST(p.\"DOB\" AS DATE)) <= 1951
           AND CAST(s.\"ADMISSION_DATE\" AS DATE) >= DATE '2025-11-01'
           AND k.\"ServiceType\" = 'Home Care'
         GROUP BY 1 ORDER BY 1",
    ),
    (
        "Emergency admissions among adult social care clients",
        "SELECT c.\"AreaCode\", count(*) AS emergency_admissions, count(DISTINCT rc.person_id) AS people
         FROM council_clients c
         JOIN records rc ON rc.record_id = c.\"ClientID\" AND rc.\"table\" = 'clients'
         JOIN records rp ON rp.person_id = rc.person_id AND rp.\"table\" = 'pas_patients'
         JOIN acute_patients p ON p.\"PATIENT_ID\" = rp.record_id
         JOIN acute_spells s ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\"
         JOIN people pe ON pe.person_id = rc.person_id
         WHERE pe.opted_out = 'false' AND s.\"ADMISSION_METHOD\" = '21'
         GROUP BY 1 ORDER BY emergency_admissions DESC, 1",
        "SELECT c.\"AreaCode\", count(*) AS emergency_admissions, count(DISTINCT c.pid) AS people
         FROM council_clients c JOIN acute_patients p ON p.pid = c.pid
         JOIN acute_spells s ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\"
         WHERE NOT p.opted_out AND NOT c.opted_out AND s.\"ADMISSION_METHOD\" = '21'
         GROUP BY 1 ORDER BY emergency_admissions DESC, 1 LIMIT 10",
    ),
];

/// The most one person contributes to each cell of Q2 (emergency
/// admissions per area): the unit its count of rows is released in.
const Q2_LARGEST_CONTRIBUTION: &str = "SELECT area, max(n) FROM (
     SELECT c.\"AreaCode\" AS area, rc.person_id, count(*) AS n
     FROM council_clients c
     JOIN records rc ON rc.record_id = c.\"ClientID\" AND rc.\"table\" = 'clients'
     JOIN records rp ON rp.person_id = rc.person_id AND rp.\"table\" = 'pas_patients'
     JOIN acute_patients p ON p.\"PATIENT_ID\" = rp.record_id
     JOIN acute_spells s ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\"
     JOIN people pe ON pe.person_id = rc.person_id
     WHERE pe.opted_out = 'false' AND s.\"ADMISSION_METHOD\" = '21'
     GROUP BY 1, 2) GROUP BY 1";

/// The rows of the demo's table printed under `heading`.
fn printed_table(text: &str, heading: &str) -> Vec<Vec<String>> {
    let section = text
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{text}"));
    section
        .lines()
        .take_while(|l| !l.starts_with("   coverage"))
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .map(|cells| {
            cells[1..cells.len() - 1]
                .iter()
                .map(|c| c.to_string())
                .collect()
        })
        .collect()
}

/// Checks a printed (released) table against the exact rows (key first,
/// distinct persons last): every printed cell is about at least 10 persons,
/// every cell of 14 or more is printed, person counts are within the
/// perturbation and rounding of the truth, and a count of rows is within
/// them in its unit (`largest`: the most one person gives to the cell).
/// Returns how many cells were compared.
fn assert_released(
    heading: &str,
    printed: &[Vec<String>],
    truth: &[Vec<String>],
    largest: &std::collections::HashMap<String, i64>,
    complete: bool,
) -> usize {
    let by_key: std::collections::HashMap<&str, &Vec<String>> =
        truth.iter().map(|r| (r[0].as_str(), r)).collect();
    for row in printed {
        let exact = by_key
            .get(row[0].as_str())
            .unwrap_or_else(|| panic!("{heading}: {row:?} is not in the truth"));
        let persons: i64 = exact.last().unwrap().parse().unwrap();
        assert!(
            persons >= 10,
            "{heading}: {row:?} is about {persons} persons"
        );
        assert!(
            released_near(row.last().unwrap(), persons),
            "{heading}: {row:?} vs {exact:?}"
        );
        for (got, want) in row[1..row.len() - 1].iter().zip(&exact[1..exact.len() - 1]) {
            let (got, want): (f64, f64) = (got.parse().unwrap(), want.parse().unwrap());
            let most = largest.get(row[0].as_str()).copied().unwrap_or(1) as f64;
            let unit = carrow_governance::disclosure::nice_unit(most);
            let bound = 2.0 * most + 7.5 * unit;
            assert!(
                (got - want).abs() <= bound,
                "{heading}: {row:?} vs {exact:?}: a count of rows off by more than {bound}"
            );
        }
    }
    if complete {
        for row in truth {
            let persons: i64 = row.last().unwrap().parse().unwrap();
            if persons >= 14 {
                assert!(
                    printed.iter().any(|p| p[0] == row[0]),
                    "{heading}: {row:?} must be released"
                );
            }
        }
    }
    printed.len()
}

fn total_persons(raw: &[Vec<String>]) -> i64 {
    raw.iter()
        .map(|r| r.last().unwrap().parse::<i64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_answers_equal_the_ground_truth_of_the_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("demo");
    let out = run(&[
        "demo",
        "--people",
        "30000",
        "--seed",
        "9",
        "--keep",
        keep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ctx = raw_session(&keep).await;
    let mut compared = 0;
    let largest: std::collections::HashMap<String, i64> = ordered_rows(
        &ctx.sql(Q2_LARGEST_CONTRIBUTION)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    for (i, (heading, truth_sql, pid_only_sql)) in RAW_QUESTIONS.iter().enumerate() {
        let truth = ordered_rows(&ctx.sql(truth_sql).await.unwrap().collect().await.unwrap());
        assert!(!truth.is_empty(), "{heading}");
        let printed = printed_table(&text, heading);
        // The second question shows the ten busiest areas by released value.
        compared += assert_released(heading, &printed, &truth, &largest, i == 0);
        // Without the linkage stage, records join on pid alone: people whose
        // records lack an NHS number on one side are lost.
        let pid_only = ordered_rows(
            &ctx.sql(pid_only_sql)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap(),
        );
        let (with, without) = (total_persons(&truth), total_persons(&pid_only));
        eprintln!(
            "{heading}: {with} people by the ground truth, {without} on pid alone ({:.1}% undercount)",
            100.0 * (with - without) as f64 / with as f64
        );
        assert!(
            without < with,
            "{heading}: the linkage stage finds people pid alone misses"
        );
    }
    assert!(
        compared >= 5,
        "enough released cells were compared: {compared}"
    );

    // Exactly, too: the same questions through the coordinator, as a
    // researcher's approved extract (no rounding), equal the ground truth.
    let nodes: Vec<crate::support::NodeProcess> = ["acute", "gp", "council"]
        .iter()
        .map(|org| crate::support::NodeProcess::start(&keep.join(format!("{org}/node.toml"))))
        .collect();
    let coordinator = crate::coordinator::start_coordinator(
        &keep,
        &[
            ("acute", &nodes[0]),
            ("gp", &nodes[1]),
            ("council", &nodes[2]),
        ],
    );
    let questions = crate::coordinator::carrow_demo_questions();
    let mut researcher =
        crate::support::approved_researcher(coordinator.addr, &keep, &questions[..2], "extract")
            .await;
    for (sql, (heading, truth_sql, _)) in questions.iter().zip(RAW_QUESTIONS) {
        let mut truth = ordered_rows(&ctx.sql(truth_sql).await.unwrap().collect().await.unwrap());
        if sql.contains("LIMIT 10") {
            // The truth lists every area; the question the ten busiest.
            truth.truncate(10);
        }
        let federated = ordered_rows(&crate::support::query(&mut researcher, sql).await.unwrap());
        let (mut a, mut b) = (federated, truth);
        a.sort();
        b.sort();
        assert_eq!(a, b, "{heading}: exact answers");
    }

    // The quality report: links by rule, weights, uncertain pairs.
    let config = keep.join("coordinator/coordinator.toml");
    let out = run(&["link", "report", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let count = |label: &str| -> u64 {
        let line = report
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("{label} in {report}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(count("records linked by NHS number") > 0, "{report}");
    assert!(count("records linked by match score") > 0, "{report}");
    assert!(report.contains("family         one edit"), "{report}");
    assert!(report.contains("merges refused by constraint"), "{report}");
    assert!(count("date of birth and postcode") > 0, "{report}");
}
