//! Linkage on a realistic population: 100 000 people in households (couples,
//! families, three generations, sharers) and care homes, with twins,
//! namesakes, nicknames, maiden names, moves, mistyped, missing and
//! relatives' NHS numbers, held by a GP, a hospital and a council. Each
//! node also publishes its person index with the local record number; an
//! approved extract of `(node, record number, pid)` through the coordinator
//! is scored against the generated ground truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use carrow_node::config::{ColumnConfig, NodeConfig, TableConfig};

use crate::coordinator::start_coordinator;
use crate::support::{NodeProcess, approved_researcher, generate, query, rows};

/// Publishes `source` (a local person index) as table `persons` with its
/// record number, identified like the node's first table.
fn publish_person_index(root: &Path, org: &str, source: &str, record_id: &str) {
    let path = root.join(org).join("node.toml");
    let mut config: NodeConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let first = config.tables[0].clone();
    config.tables.push(TableConfig {
        name: "persons".into(),
        description: "The person index with its record numbers (for scoring only)".into(),
        personal: true,
        source: Some(source.into()),
        sql: None,
        identifiers: first.identifiers,
        columns: vec![ColumnConfig {
            name: "record_id".into(),
            from: Some(record_id.into()),
            expr: None,
            data_type: None,
        }],
        opt_out: first.opt_out,
        freshness: None,
    });
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

/// A record: its organisation and local record number.
type Record = (String, String);

/// The ground truth: each record's person id, and the twin pairs.
fn truth(root: &Path) -> (HashMap<Record, String>, Vec<(String, String)>) {
    let records = std::fs::read_to_string(root.join("ground-truth/records.csv")).unwrap();
    let person_of = records
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            matches!(f[1], "pas_patients" | "patients" | "clients")
                .then(|| ((f[0].to_string(), f[2].to_string()), f[3].to_string()))
        })
        .collect();
    let people = std::fs::read_to_string(root.join("ground-truth/people.csv")).unwrap();
    let header: Vec<&str> = people.lines().next().unwrap().split(',').collect();
    let twin = header.iter().position(|h| *h == "twin_of").unwrap();
    let twins = people
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (!f[twin].is_empty() && f[0] < f[twin]).then(|| (f[0].to_string(), f[twin].to_string()))
        })
        .collect();
    (person_of, twins)
}

/// The valid NHS number each record holds (as its organisation typed it).
async fn held_nhs_numbers(root: &Path) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for (org, file, id, nhs) in [
        ("acute", "acute/pas_patients.csv", "PATIENT_ID", "NHS_NO"),
        ("gp", "gp/patients.csv", "patient_guid", "nhs_number"),
        ("council", "council/clients.csv", "ClientID", "NHSNumber"),
    ] {
        let sql = format!("SELECT CAST(\"{id}\" AS VARCHAR), CAST(\"{nhs}\" AS VARCHAR) FROM t");
        let batches = crate::support::local_query(&[("t", root.join(file))], &sql).await;
        for r in rows(&batches) {
            if let Some(valid) = carrow_linkage::normalise::nhs_number(&r[1]) {
                out.insert(
                    (org.to_string(), r[0].clone()),
                    String::from_utf8_lossy(&valid).into_owned(),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn households_care_homes_and_twins_link_with_high_precision_and_recall() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 100_000, 12);
    publish_person_index(root, "acute", "pas_patients", "PATIENT_ID");
    publish_person_index(root, "gp", "patients", "patient_guid");
    publish_person_index(root, "council", "clients", "ClientID");
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
    let extract = "SELECT node, record_id, pid FROM combined.persons";
    let mut researcher = approved_researcher(coordinator.addr, root, &[extract], "extract").await;
    let linked = rows(&query(&mut researcher, extract).await.unwrap());
    let (person_of, twins) = truth(root);

    // Records by person key (linked) and by person (truth), over the
    // records the nodes published (opted-out people are not).
    let mut by_key: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in &linked {
        by_key
            .entry(r[2].clone())
            .or_default()
            .push((r[0].clone(), r[1].clone()));
    }
    let published: HashSet<(String, String)> = linked
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let key_of: HashMap<&(String, String), &String> = linked
        .iter()
        .map(|r| (published.get(&(r[0].clone(), r[1].clone())).unwrap(), &r[2]))
        .collect();
    let mut by_person: HashMap<&String, Vec<&(String, String)>> = HashMap::new();
    for record in &published {
        by_person
            .entry(&person_of[record])
            .or_default()
            .push(record);
    }
    let pairs_across = |group: &[&(String, String)]| -> Vec<((String, String), (String, String))> {
        let mut out = Vec::new();
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.0 != b.0 {
                    out.push(((*a).clone(), (*b).clone()));
                }
            }
        }
        out
    };
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for group in by_key.values() {
        let refs: Vec<&(String, String)> = group.iter().collect();
        for (a, b) in pairs_across(&refs) {
            if person_of[&a] == person_of[&b] {
                tp += 1;
            } else {
                fp += 1;
            }
        }
    }
    for group in by_person.values() {
        for (a, b) in pairs_across(group) {
            if key_of[&a] != key_of[&b] {
                fn_ += 1;
            }
        }
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    eprintln!(
        "linkage at 100 000 people: precision {precision:.5}, recall {recall:.5} ({tp} true pairs across organisations, {fp} false, {fn_} missed)"
    );
    assert!(tp > 15_000, "{tp} pairs");
    assert!(precision >= 0.999, "precision {precision}");
    assert!(recall >= 0.99, "recall {recall}");

    // No twin pair is linked.
    let records_of = |person: &String| -> Vec<&(String, String)> {
        by_person.get(person).cloned().unwrap_or_default()
    };
    assert!(twins.len() > 100, "{} twin pairs", twins.len());
    for (a, b) in &twins {
        for x in records_of(a) {
            for y in records_of(b) {
                assert_ne!(key_of[x], key_of[y], "twins {a} and {b} linked");
            }
        }
    }
    // No person key holds two valid NHS numbers.
    let numbers = held_nhs_numbers(root).await;
    let mut keys_with_two = BTreeMap::new();
    for (key, group) in &by_key {
        let held: HashSet<&String> = group.iter().filter_map(|r| numbers.get(r)).collect();
        if held.len() > 1 {
            keys_with_two.insert(key.clone(), held.len());
        }
    }
    assert!(keys_with_two.is_empty(), "{keys_with_two:?}");

    // The link report shows the groups, refusals and where m came from.
    let config = root.join("coordinator/coordinator.toml");
    let out = crate::support::run(&["link", "report", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "merges refused by constraint",
        "two different NHS numbers",
        "group size",
        "labels",
        "pairs labelled matches",
    ] {
        assert!(report.contains(needle), "{needle} in\n{report}");
    }
}
