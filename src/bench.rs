//! `carrow bench`: the demo questions and single-node aggregates, federated
//! across three nodes on loopback, against the same SQL on one in-process
//! DataFusion over the same published tables (same files, same pseudonyms,
//! no network). Prints both times and their ratio for each size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::client;
use crate::demo::{Cluster, QUESTIONS};

/// Source records per generated person, near enough to size the population.
const RECORDS_PER_PERSON: f64 = 1.8;

/// Aggregates that read one node only, beside the demo's own.
const SINGLE_NODE: &[(&str, &str)] = &[
    (
        "Conditions by sex with distinct people (one node)",
        "SELECT condition, sex, count(*) AS records, count(DISTINCT pid) AS people \
         FROM gp.conditions GROUP BY condition, sex ORDER BY condition, sex",
    ),
    (
        "Admissions by method and decile (one node)",
        "SELECT admission_method, deprivation_decile, count(*) AS admissions \
         FROM acute.admissions GROUP BY 1, 2 ORDER BY 1, 2",
    ),
];

/// One query's figures at one size.
struct Figure {
    title: &'static str,
    central: Duration,
    federated: Duration,
    /// The same question asked by a planner, under disclosure control
    /// (the demo's questions only).
    controlled: Option<Duration>,
}

impl Figure {
    /// Controlled time over the same question uncontrolled (both federated).
    fn control_ratio(&self) -> Option<f64> {
        self.controlled
            .map(|c| c.as_secs_f64() / self.federated.as_secs_f64())
    }
}

/// Runs the benchmark at each size in `records`.
pub async fn run(
    records: &[usize],
    repeat: usize,
    seed: u64,
    keep: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for &size in records {
        let dir = match &keep {
            Some(dir) => dir.join(format!("records-{size}")),
            None => {
                std::env::temp_dir().join(format!("carrow-bench-{}-{size}", std::process::id()))
            }
        };
        let result = run_size(&dir, size, repeat, seed).await;
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        all.push((size, result?));
    }
    println!(
        "\n== summary (median of {repeat} runs; ratio = federated / central; \
         control = planner under disclosure control / the same question uncontrolled)"
    );
    println!(
        "{:>12}  {:<62} {:>11} {:>13} {:>7} {:>14} {:>8}",
        "records", "query", "central ms", "federated ms", "ratio", "controlled ms", "control"
    );
    for (size, (actual, figures)) in &all {
        for f in figures {
            println!(
                "{:>12}  {:<62} {:>11.1} {:>13.1} {:>7.2} {:>14} {:>8}",
                format!("{size} ({actual})"),
                truncate(f.title, 62),
                ms(f.central),
                ms(f.federated),
                f.federated.as_secs_f64() / f.central.as_secs_f64(),
                f.controlled
                    .map_or("-".to_string(), |c| format!("{:.1}", ms(c))),
                f.control_ratio()
                    .map_or("-".to_string(), |r| format!("{r:.2}")),
            );
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Generates about `records` source records, then times every query both ways.
async fn run_size(
    dir: &Path,
    records: usize,
    repeat: usize,
    seed: u64,
) -> anyhow::Result<(usize, Vec<Figure>)> {
    let people = ((records as f64 / RECORDS_PER_PERSON).ceil() as usize).max(1);
    println!(
        "== {records} records: generating {people} people into {}",
        dir.display()
    );
    let started = Instant::now();
    let summary = carrow_synth::generate(&carrow_synth::GenerateOptions {
        out: dir.to_path_buf(),
        people,
        seed,
        as_of: carrow_synth::default_as_of(),
    })?;
    let actual = summary.acute_admissions
        + summary.gp_registrations
        + summary.gp_conditions
        + summary.council_clients
        + summary.council_care_packages;
    println!(
        "   {actual} source records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The central baseline joins on pid alone, so the federated run does
    // too: the linkage stage has its own bench (--linkage-records).
    let cluster = Cluster::start(dir, false).await?;
    let central = central_session(&cluster).await?;
    // Exact answers to compare with the central run: the researcher runs
    // each query under an approved extract request (no disclosure control).
    let sqls: Vec<&str> = QUESTIONS
        .iter()
        .chain(SINGLE_NODE)
        .map(|(_, sql)| *sql)
        .collect();
    let url = format!("http://{}", cluster.coordinator.addr);
    let mut planner = crate::demo::approved_researcher(dir, &url, &sqls, "extract").await?;
    // A planner asks the demo's questions again under disclosure control.
    let password = std::fs::read_to_string(dir.join("secrets/planner.token"))
        .context("reading the planner's password")?;
    let mut controlled = client::connect(&url, "planner", password.trim()).await?;

    let mut figures = Vec::new();
    for (title, sql) in QUESTIONS.iter().chain(SINGLE_NODE) {
        // One untimed run each: caches and connections are warm for both.
        let expected = central.sql(sql).await?.collect().await?;
        let got = client::run_query(&mut planner, sql).await?.batches;
        anyhow::ensure!(
            rows(&expected) == rows(&got),
            "federated and central answers differ for: {title}\ncentral:\n{}\nfederated:\n{}",
            rows(&expected),
            rows(&got)
        );
        let is_demo_question = QUESTIONS.iter().any(|(_, q)| q == sql);
        if is_demo_question {
            client::run_query(&mut controlled, sql).await?;
        }
        let (mut c, mut f, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeat {
            let t = Instant::now();
            central.sql(sql).await?.collect().await?;
            c.push(t.elapsed());
            let t = Instant::now();
            client::run_query(&mut planner, sql).await?;
            f.push(t.elapsed());
            if is_demo_question {
                let t = Instant::now();
                client::run_query(&mut controlled, sql).await?;
                d.push(t.elapsed());
            }
        }
        let figure = Figure {
            title,
            central: median(c),
            federated: median(f),
            controlled: (!d.is_empty()).then(|| median(d)),
        };
        println!(
            "   {:<62} central {:>9.1} ms  federated {:>9.1} ms  ratio {:.2}{}",
            truncate(title, 62),
            ms(figure.central),
            ms(figure.federated),
            figure.federated.as_secs_f64() / figure.central.as_secs_f64(),
            figure.control_ratio().map_or(String::new(), |r| format!(
                "  controlled {:>9.1} ms  control {r:.2}",
                ms(figure.controlled.unwrap_or_default())
            ))
        );
        figures.push(figure);
    }
    cluster.stop().await?;
    Ok((actual, figures))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn rows(batches: &[datafusion::arrow::array::RecordBatch]) -> String {
    datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// One DataFusion over every node's published tables, in this process: the
/// same schemas and `combined` tables as the coordinator offers.
async fn central_session(cluster: &Cluster) -> anyhow::Result<SessionContext> {
    let catalog = Arc::new(MemoryCatalogProvider::new());
    for node in &cluster.nodes {
        let schema = Arc::new(MemorySchemaProvider::new());
        for (name, table) in node.state.tables(carrow_synth::configs::DEMO_PROJECT) {
            datafusion::catalog::SchemaProvider::register_table(schema.as_ref(), name, table)?;
        }
        catalog.register_schema(node.state.name(), schema)?;
    }
    let combined = carrow_coordinator::combined::build(catalog.as_ref())
        .await
        .context("combined tables")?;
    catalog.register_schema(carrow_coordinator::config::COMBINED_SCHEMA, combined)?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("carrow", "public"),
    );
    ctx.register_catalog("carrow", catalog);
    Ok(ctx)
}

/// `carrow bench --linkage-records N`: links N records against N (the same
/// people as a messier organisation holds them) and compares the time with
/// joining the two on `pid` alone, in the same process.
pub fn linkage(records: usize, seed: u64) -> anyhow::Result<()> {
    use carrow_linkage::fields::FieldTokeniser;
    use carrow_linkage::matching::{LinkOptions, LinkRecord, link};
    use carrow_linkage::{Identity, LinkageSecret, RawIdentity, Tokeniser};

    println!("== linkage: {records} records against {records} (seed {seed})");
    let started = Instant::now();
    let (population, copies) = carrow_synth::people_and_messy_copies(records, seed);
    let people = &population.people;
    println!("   generated in {:.1} s", started.elapsed().as_secs_f64());
    let secret = LinkageSecret::generate()?;
    let (tokeniser, fields) = (
        Tokeniser::new(&secret, "bench"),
        FieldTokeniser::new(&secret, "bench"),
    );
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut all = Vec::with_capacity(2 * records);
    let clean = people.iter().map(|p| {
        let dob = p.date_of_birth.to_string();
        let sex = if matches!(p.sex, carrow_synth::population::Sex::Male) {
            "M"
        } else {
            "F"
        };
        Identity::normalise(&RawIdentity {
            nhs_number: Some(&p.nhs_number),
            family_name: Some(&p.family_name),
            given_name: Some(&p.given_name),
            date_of_birth: Some(&dob),
            sex: Some(sex),
            postcode: Some(&p.postcode),
            address: Some(&p.address),
            ..Default::default()
        })
    });
    let messy = copies.iter().map(|c| {
        Identity::normalise(&RawIdentity {
            nhs_number: c[0].as_deref(),
            family_name: c[1].as_deref(),
            given_name: c[2].as_deref(),
            date_of_birth: c[3].as_deref(),
            sex: c[4].as_deref(),
            postcode: c[5].as_deref(),
            address: c[6].as_deref(),
            ..Default::default()
        })
    });
    // Which person each record is about (a record without any token is left out).
    let mut person_of = Vec::with_capacity(2 * records);
    for (source, identities) in [(0u32, clean.collect::<Vec<_>>()), (1, messy.collect())] {
        for (person, identity) in identities.into_iter().enumerate() {
            let Some(pid) = tokeniser.pid(&identity, &mut buf) else {
                continue;
            };
            all.push(LinkRecord {
                source,
                pid,
                fields: fields.tokens(&identity),
            });
            person_of.push(person);
        }
    }
    println!(
        "   {} records tokenised in {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );

    // Baseline: join the two sides on pid alone.
    let started = Instant::now();
    let mut by_pid: std::collections::HashMap<[u8; 16], usize> = std::collections::HashMap::new();
    for (i, r) in all.iter().enumerate().filter(|(_, r)| r.source == 0) {
        by_pid.insert(r.pid, i);
    }
    let pid_matches: Vec<(usize, usize)> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| r.source == 1)
        .filter_map(|(j, r)| by_pid.get(&r.pid).map(|&i| (i, j)))
        .collect();
    let pid_time = started.elapsed();

    let started = Instant::now();
    let linked = link(&all, &LinkOptions::default(), |step| println!("   {step}"));
    let link_time = started.elapsed();

    // Accuracy: record i of each side is person i.
    let person = |i: usize| person_of[i];
    let (mut true_links, mut links) = (0u64, 0u64);
    let mut groups: std::collections::HashMap<[u8; 16], (Vec<usize>, Vec<usize>)> =
        std::collections::HashMap::new();
    for (i, r) in all.iter().enumerate() {
        let g = groups.entry(linked.keys[i]).or_default();
        if r.source == 0 {
            g.0.push(i)
        } else {
            g.1.push(i)
        }
    }
    for (a, b) in groups.values() {
        links += (a.len() * b.len()) as u64;
        for &i in a {
            true_links += b.iter().filter(|&&j| person(j) == person(i)).count() as u64;
        }
    }
    let pid_true = pid_matches
        .iter()
        .filter(|(i, j)| person(*i) == person(*j))
        .count();
    let recall = true_links as f64 / records as f64;
    let precision = true_links as f64 / links.max(1) as f64;
    println!(
        "   join on pid alone: {:.2} s, finds {:.2}% of the true pairs",
        pid_time.as_secs_f64(),
        100.0 * pid_true as f64 / records as f64
    );
    println!(
        "   linkage stage:     {:.1} s ({:.0} x the pid join), recall {:.4}, precision {:.5}, F1 {:.4}",
        link_time.as_secs_f64(),
        link_time.as_secs_f64() / pid_time.as_secs_f64().max(1e-9),
        recall,
        precision,
        2.0 * precision * recall / (precision + recall)
    );
    Ok(())
}
