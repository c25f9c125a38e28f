//! The national data opt-out follows the person into every organisation:
//! objections recorded only at the GP practice keep the person's records
//! at the hospital and the council from leaving (with or without an NHS
//! number there), changes take effect within a catalog refresh, an exempt
//! project counts everyone and says so in the audit log, and no token of
//! an opted-out person is readable by any user.

use std::path::Path;

use datafusion::prelude::{CsvReadOptions, SessionContext};

use crate::coordinator::start_coordinator_at;
use crate::support::{NodeProcess, client, generate, query, rows};

type Flight = arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>;

/// The error of `sql` sent under `project`.
async fn query_in(flight: &mut Flight, project: &str, sql: &str) -> String {
    flight.set_header("x-carrow-project", project);
    let err = query(flight, sql).await.unwrap_err();
    flight.set_header("x-carrow-project", "direct_care");
    err
}

/// `SELECT count(*) FROM table` as the node's operator under `project`.
async fn count(operator: &mut Flight, table: &str, project: &str) -> i64 {
    operator.set_header("x-carrow-project", project);
    let batches = query(operator, &format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap_or_else(|e| panic!("{table} ({project}): {e}"));
    rows(&batches)[0][0].parse().unwrap()
}

/// Ground truth: how many records of `table` at `org` are about people
/// with a national data opt-out (or, with `type1`, either opt-out; with
/// `all`, about anyone).
async fn truth(root: &Path, org: &str, table: &str, type1: bool, all: bool) -> i64 {
    let ctx = SessionContext::new();
    let text = CsvReadOptions::new().schema_infer_max_records(0);
    for name in ["records", "people"] {
        let path = root.join(format!("ground-truth/{name}.csv"));
        ctx.register_csv(name, path.to_str().unwrap(), text.clone())
            .await
            .unwrap();
    }
    let objection = if all {
        "true"
    } else if type1 {
        "(p.opted_out = 'true' OR p.type1_opted_out = 'true')"
    } else {
        "p.opted_out = 'true'"
    };
    let sql = format!(
        "SELECT count(*) FROM records r JOIN people p ON r.person_id = p.person_id \
         WHERE r.organisation = '{org}' AND r.\"table\" = '{table}' AND {objection}"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    rows(&batches)[0][0].parse().unwrap()
}

/// Opted-out people whose record at the hospital carries no NHS number.
fn opted_out_without_nhs_number_at_acute(root: &Path) -> usize {
    let people = std::fs::read_to_string(root.join("ground-truth/people.csv")).unwrap();
    let opted: std::collections::HashSet<&str> = people
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(9) == Some("true"))
        .filter_map(|l| l.split(',').next())
        .collect();
    let records = std::fs::read_to_string(root.join("ground-truth/records.csv")).unwrap();
    let patients_of: std::collections::HashMap<&str, &str> = records
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0] == "acute" && f[1] == "pas_patients").then(|| (f[2], f[3]))
        })
        .collect();
    let patients = std::fs::read_to_string(root.join("acute/pas_patients.csv")).unwrap();
    patients
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[1].trim().is_empty() && patients_of.get(f[0]).is_some_and(|p| opted.contains(p))
        })
        .count()
}

/// Sets (or clears) the national data opt-out of GP patient `guid` in the
/// practice's extract (its last two fields are the two registers).
fn set_gp_objection(root: &Path, guid: &str, objected: bool) {
    let path = root.join("gp/patients.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !line.starts_with(&format!("{guid},")) {
                return line.to_string();
            }
            found = true;
            let mut fields: Vec<&str> = line.rsplitn(3, ',').collect();
            fields[1] = if objected { "opted_out" } else { "" };
            format!("{},{},{}", fields[2], fields[1], fields[0])
        })
        .collect();
    assert!(found, "GP patient {guid}");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// A person (id, GP guid) with a national data opt-out or none (and no
/// type 1 opt-out) who has admissions at the hospital.
fn person_at_gp_with_admissions(root: &Path, objected: bool) -> (String, String) {
    let people = std::fs::read_to_string(root.join("ground-truth/people.csv")).unwrap();
    let status: std::collections::HashMap<&str, (bool, bool)> = people
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0], (f[9] == "true", f[16] == "true"))
        })
        .collect();
    let records = std::fs::read_to_string(root.join("ground-truth/records.csv")).unwrap();
    let admitted: std::collections::HashSet<&str> = records
        .lines()
        .filter(|l| l.starts_with("acute,apc_spells,"))
        .filter_map(|l| l.split(',').nth(3))
        .collect();
    records
        .lines()
        .filter(|l| l.starts_with("gp,patients,"))
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| admitted.contains(f[3]) && status.get(f[3]) == Some(&(objected, false)))
        .map(|f| (f[3].to_string(), f[2].to_string()))
        .expect("such a person")
}

fn wait_until(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(seconds) {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn objections_recorded_at_the_gp_keep_every_organisations_records_back() {
    let dir = tempfile::tempdir().unwrap();
    let root: &Path = dir.path();
    generate(root, 4_000, 73);
    let nodes: Vec<(&str, NodeProcess)> = ["acute", "gp", "council"]
        .iter()
        .map(|org| (*org, NodeProcess::start(&root.join(org).join("node.toml"))))
        .collect();
    let addrs: Vec<(&str, std::net::SocketAddr)> =
        nodes.iter().map(|(n, p)| (*n, p.addr)).collect();
    let coordinator = start_coordinator_at(root, &addrs, |c| c.catalog_refresh_secs = 2);
    let addr_of = |org: &str| nodes.iter().find(|(n, _)| *n == org).unwrap().1.addr;
    let token_of = |org: &str| root.join(format!("secrets/operator-{org}.token"));
    let mut acute = client(addr_of("acute"), "operator", &token_of("acute")).await;
    let mut council = client(addr_of("council"), "operator", &token_of("council")).await;
    let mut gp = client(addr_of("gp"), "operator", &token_of("gp")).await;

    // The coordinator linked the GP's register to every organisation at
    // start; each node now withholds its records of opted-out people
    // (checked against the ground truth).
    assert!(
        wait_until(20, || root.join("acute/withheld-demo.json").exists()),
        "the hospital received its opt-out list"
    );
    assert!(opted_out_without_nhs_number_at_acute(root) > 0);
    for (org, table, published, type1) in [
        ("acute", "apc_spells", "admissions", false),
        ("council", "clients", "clients", false),
        ("council", "care_packages", "care_packages", false),
        ("gp", "patients", "registrations", true),
    ] {
        let flight = match org {
            "acute" => &mut acute,
            "council" => &mut council,
            _ => &mut gp,
        };
        let everyone = truth(root, org, table, type1, true).await;
        let released = count(flight, published, "demo").await;
        let objected = truth(root, org, table, type1, false).await;
        assert!(objected > 0, "{org}.{published}");
        assert_eq!(
            everyone - released,
            objected,
            "{org}.{published}: {everyone} records, {released} released for research and planning"
        );
    }

    // The GP's audit log counts, per fragment, the records it withheld for
    // the objections it records itself.
    let gp_log = std::fs::read_to_string(root.join("gp/audit.jsonl")).unwrap();
    let last_count = gp_log
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| {
            r["body"]["phase"] == "finished"
                && r["body"]["sql"] == "SELECT count(*) FROM registrations"
        })
        .unwrap();
    assert_eq!(
        last_count["body"]["withheld_for_opt_outs"],
        truth(root, "gp", "patients", true, false).await,
        "{last_count}"
    );

    // The council's audit log counts the records it withheld per fragment,
    // for the board; its list names no other organisation.
    let list = std::fs::read_to_string(root.join("council/withheld-demo.json")).unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let keys: Vec<&String> = list.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["pids", "project", "version"]);
    let council_log = std::fs::read_to_string(root.join("council/audit.jsonl")).unwrap();
    assert!(
        council_log
            .lines()
            .any(|l| l.contains("\"withheld_for_opt_outs\":")
                && !l.contains("\"withheld_for_opt_outs\":0")),
        "{council_log}"
    );
    assert!(!council_log.contains("\"gp\""));

    // No user reads an opt-out register: not the node's operator, not a
    // planner at the coordinator.
    let err = query(&mut gp, "SELECT * FROM carrow_opt_out_tokens")
        .await
        .unwrap_err();
    assert!(err.contains("carrow_opt_out_tokens"), "{err}");
    let mut planner = client(
        coordinator.addr,
        "planner",
        &root.join("secrets/planner.token"),
    )
    .await;
    let err = query(&mut planner, "SELECT * FROM gp.carrow_opt_out_tokens")
        .await
        .unwrap_err();
    assert!(err.contains("carrow_opt_out_tokens"), "{err}");

    // An exempt project counts the people who objected, and its queries
    // say so in the coordinator's audit log.
    let registered = "SELECT count(*) AS n FROM gp.registrations";
    let research: i64 = rows(&query(&mut planner, registered).await.unwrap())[0][0]
        .parse()
        .unwrap();
    // Only a user named for the exempt project may use it.
    planner.set_header("x-carrow-project", "direct_care");
    let err = query(&mut planner, registered).await.unwrap_err();
    assert!(
        err.contains("projects of the user")
            && err.contains("exempt from the national data opt-out"),
        "{err}"
    );
    let mut clinician = client(
        coordinator.addr,
        "clinician",
        &root.join("secrets/clinician.token"),
    )
    .await;
    clinician.set_header("x-carrow-project", "direct_care");
    let care: i64 = rows(&query(&mut clinician, registered).await.unwrap())[0][0]
        .parse()
        .unwrap();
    let err = query_in(&mut clinician, "demo", registered).await;
    assert!(
        err.contains("clinician may query projects direct_care only"),
        "{err}"
    );
    let objected = truth(root, "gp", "patients", true, false).await;
    assert!(
        care - research > objected / 2,
        "direct care {care}, research {research}, objected {objected}"
    );
    let log = std::fs::read_to_string(root.join("coordinator/state/audit.jsonl")).unwrap();
    let exempt = log
        .lines()
        .rev()
        .find(|l| l.contains("\"finished\"") && l.contains("\"clinician\"") && l.contains("\"ok\""))
        .unwrap();
    assert!(
        exempt.contains(carrow_synth::configs::DIRECT_CARE_BASIS),
        "{exempt}"
    );

    // A person who opts out between two queries is withheld after the next
    // refresh; one whose opt-out is withdrawn is counted again.
    let before = count(&mut acute, "admissions", "demo").await;
    let (_, newly) = person_at_gp_with_admissions(root, false);
    set_gp_objection(root, &newly, true);
    let mut now = before;
    for _ in 0..60 {
        now = count(&mut acute, "admissions", "demo").await;
        if now < before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        now < before,
        "the new objection reached the hospital: {now} of {before}"
    );
    let (_, withdrawn) = person_at_gp_with_admissions(root, true);
    set_gp_objection(root, &newly, false);
    set_gp_objection(root, &withdrawn, false);
    let mut after = now;
    for _ in 0..60 {
        after = count(&mut acute, "admissions", "demo").await;
        if after > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        after > before,
        "withdrawn objections are counted again: {after} of {before}"
    );
}
