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
    println!("\n== summary (median of {repeat} runs; ratio = federated / central)");
    println!(
        "{:>12}  {:<62} {:>11} {:>13} {:>7}",
        "records", "query", "central ms", "federated ms", "ratio"
    );
    for (size, (actual, figures)) in &all {
        for f in figures {
            println!(
                "{:>12}  {:<62} {:>11.1} {:>13.1} {:>7.2}",
                format!("{size} ({actual})"),
                truncate(f.title, 62),
                ms(f.central),
                ms(f.federated),
                f.federated.as_secs_f64() / f.central.as_secs_f64()
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

    let cluster = Cluster::start(dir).await?;
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
        let (mut c, mut f) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let t = Instant::now();
            central.sql(sql).await?.collect().await?;
            c.push(t.elapsed());
            let t = Instant::now();
            client::run_query(&mut planner, sql).await?;
            f.push(t.elapsed());
        }
        let figure = Figure {
            title,
            central: median(c),
            federated: median(f),
        };
        println!(
            "   {:<62} central {:>9.1} ms  federated {:>9.1} ms  ratio {:.2}",
            truncate(title, 62),
            ms(figure.central),
            ms(figure.federated),
            figure.federated.as_secs_f64() / figure.central.as_secs_f64()
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
