//! `carrow demo`: generates three organisations, starts their nodes and a
//! coordinator on loopback, asks population questions that link records
//! across organisations, prints the answers and stops everything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::{client, config};

/// The demo's questions: (title, SQL). The data's snapshot date is
/// 2026-10-31, so "the last year" starts on 2025-11-01 and people aged 75
/// and over were born in 1951 or before.
pub const QUESTIONS: &[(&str, &str)] = &[
    (
        "People aged 75 and over admitted to hospital in the last year who also receive home care, by deprivation decile",
        "SELECT a.deprivation_decile, count(DISTINCT a.pid) AS people \
         FROM acute.admissions a JOIN council.care_packages k ON a.pid = k.pid \
         WHERE a.birth_year <= 1951 AND a.admission_date >= DATE '2025-11-01' AND k.service_type = 'Home Care' \
         GROUP BY a.deprivation_decile ORDER BY a.deprivation_decile",
    ),
    (
        "Emergency admissions among adult social care clients, by area (ten busiest areas)",
        "SELECT c.area_code, count(*) AS emergency_admissions, count(DISTINCT c.pid) AS people \
         FROM council.clients c JOIN acute.admissions a ON a.pid = c.pid \
         WHERE a.admission_method = 'emergency' \
         GROUP BY c.area_code ORDER BY emergency_admissions DESC, c.area_code LIMIT 10",
    ),
    (
        "Long-term conditions of people in residential or nursing care",
        "SELECT g.condition, count(DISTINCT g.pid) AS people \
         FROM gp.conditions g JOIN council.care_packages k ON g.pid = k.pid \
         WHERE k.service_type IN ('Residential', 'Nursing') \
         GROUP BY g.condition ORDER BY people DESC, g.condition",
    ),
    (
        "How many services each person was in contact with in the last year (hospital, GP, social care)",
        "SELECT services, count(*) AS people FROM \
         (SELECT pid, count(DISTINCT setting) AS services FROM combined.contacts \
          WHERE contact_date >= DATE '2025-11-01' GROUP BY pid) \
         GROUP BY services ORDER BY services",
    ),
    (
        "Contacts in the last year by setting, each node aggregating its own",
        "SELECT setting, count(*) AS contacts, count(DISTINCT pid) AS people \
         FROM combined.contacts WHERE contact_date >= DATE '2025-11-01' \
         GROUP BY setting ORDER BY setting",
    ),
    (
        "Registered population by deprivation decile (one node)",
        "SELECT deprivation_decile, count(*) AS people FROM gp.registrations \
         GROUP BY deprivation_decile ORDER BY deprivation_decile",
    ),
];

/// The demo's research question, run under an approved aggregate request.
pub const RESEARCH_QUESTION: &str = "SELECT g.condition, k.service_type, count(DISTINCT g.pid) AS people \
     FROM gp.conditions g JOIN council.care_packages k ON g.pid = k.pid \
     GROUP BY ROLLUP (g.condition, k.service_type) ORDER BY g.condition, k.service_type";

fn first_line(text: &str) -> &str {
    let text = text.rsplit("message: ").next().unwrap_or(text);
    text.lines().next().unwrap_or(text).trim_matches('"')
}

/// The demo itself.
/// Where the demo writes its servers' logs: in the kept directory, or a
/// file in the temporary directory named for the process.
pub fn log_path(keep: Option<&Path>) -> PathBuf {
    match keep {
        Some(dir) => dir.join("carrow-demo.log"),
        None => std::env::temp_dir().join(format!("carrow-demo-{}.log", std::process::id())),
    }
}

pub async fn run(people: usize, seed: u64, keep: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "(the nodes' and coordinator's logs go to {})\n",
        log_path(keep.as_deref()).display()
    );
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("carrow-demo-{}", std::process::id()))
    });
    let result = run_in(&dir, people, seed).await;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run_in(dir: &Path, people: usize, seed: u64) -> anyhow::Result<()> {
    println!(
        "== generating {people} people in three organisations (seed {seed}) into {}",
        dir.display()
    );
    let summary = carrow_synth::generate(&carrow_synth::GenerateOptions {
        out: dir.to_path_buf(),
        people,
        seed,
        as_of: carrow_synth::default_as_of(),
    })?;
    println!(
        "   acute: {} admissions; gp: {} registrations; council: {} clients ({} without an NHS number); {} national opt-outs, recorded at the GP practice only (the coordinator carries them to the other organisations)",
        summary.acute_admissions,
        summary.gp_registrations,
        summary.council_clients,
        summary.council_missing_nhs_number,
        summary.opted_out
    );

    println!("== starting nodes and the coordinator on loopback");
    let cluster = Cluster::start(dir, true).await?;
    for node in &cluster.nodes {
        println!(
            "   node {:<8} {}  publishes {:?}",
            node.state.name(),
            node.addr,
            node.state.published()
        );
    }
    println!("   coordinator     {}", cluster.coordinator.addr);

    let token = std::fs::read_to_string(dir.join("secrets/planner.token"))?;
    let mut planner = client::connect(
        &format!("http://{}", cluster.coordinator.addr),
        "planner",
        token.trim(),
    )
    .await?;

    for (title, sql) in QUESTIONS {
        println!("\n== {title}");
        let asked = Instant::now();
        let result = client::run_query(&mut planner, sql)
            .await
            .with_context(|| format!("question: {title}"))?;
        println!("{}", pretty_format_batches(&result.batches)?);
        let coverage =
            client::coverage_line(&result.metadata).unwrap_or_else(|| "not reported".into());
        println!("   coverage: {coverage}");
        if let Some(control) = client::disclosure_line(&result.metadata) {
            println!("   disclosure control: {control}");
        }
        println!("   ({:.0} ms)", asked.elapsed().as_secs_f64() * 1000.0);
    }

    println!("\n== research: a researcher's query runs only once two reviewers approve it");
    let url = format!("http://{}", cluster.coordinator.addr);
    let study = RESEARCH_QUESTION;
    let researcher_password = std::fs::read_to_string(dir.join("secrets/researcher.token"))?;
    let mut researcher = client::connect(&url, "researcher", researcher_password.trim()).await?;
    match client::run_query(&mut researcher, study).await {
        Err(e) => println!(
            "   before approval: refused ({})",
            first_line(&e.to_string())
        ),
        Ok(_) => anyhow::bail!("an unapproved research query ran"),
    }
    let mut researcher = approved_researcher(dir, &url, &[study], "aggregate").await?;
    println!("   request submitted by researcher, approved by reviewer1 and reviewer2");
    let result = client::run_query(&mut researcher, study).await?;
    println!("{}", pretty_format_batches(&result.batches)?);
    if let Some(control) = client::disclosure_line(&result.metadata) {
        println!("   disclosure control: {control}");
    }

    println!("\n== audit: the coordinator logged every query, each node every fragment it served");
    let report = carrow_governance::verify_file(cluster.coordinator.state.audit().path())?;
    println!(
        "   coordinator   {} records, chain and signed checkpoints intact, root {}",
        report.records,
        root_of(&report)
    );
    let mut logs = Vec::new();
    for node in &cluster.nodes {
        let report = carrow_governance::verify_file(node.state.audit().path())?;
        println!(
            "   node {:<8} {} records, chain and signed checkpoints intact, root {}",
            node.state.name(),
            report.records,
            root_of(&report)
        );
        logs.push((
            node.state.name().to_string(),
            node.state.audit().path().to_path_buf(),
        ));
    }
    let reconciled =
        carrow_governance::reconcile::reconcile(cluster.coordinator.state.audit().path(), &logs)?;
    anyhow::ensure!(
        reconciled.problems.is_empty(),
        "the audit logs do not reconcile: {}",
        reconciled.problems.join("; ")
    );
    println!(
        "   reconciled: {} fragments in both logs; {} checkpoints each side holds of the other verified, \
         {} consistency proofs",
        reconciled.matched, reconciled.checkpoints, reconciled.proofs
    );

    cluster.stop().await
}

/// The first 16 hex digits of a log's latest signed Merkle root.
fn root_of(report: &carrow_governance::ChainReport) -> String {
    report
        .checkpoint
        .as_ref()
        .map(|c| hex::encode(&c.root[..8]))
        .unwrap_or_else(|| "(empty)".into())
}

/// Logs in as the generated researcher after submitting each of `sqls` as a
/// request (`output`: aggregate or extract) that both generated reviewers
/// approve; returns the researcher's connection.
pub async fn approved_researcher(
    dir: &Path,
    url: &str,
    sqls: &[&str],
    output: &str,
) -> anyhow::Result<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>> {
    let password = |user: &str| -> anyhow::Result<String> {
        let path = dir.join(format!("secrets/{user}.token"));
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    };
    let mut researcher = client::connect(url, "researcher", &password("researcher")?).await?;
    let mut reviewers = Vec::new();
    for reviewer in ["reviewer1", "reviewer2"] {
        reviewers.push(client::connect(url, reviewer, &password(reviewer)?).await?);
    }
    for sql in sqls {
        let body = serde_json::json!({
            "project": carrow_synth::configs::DEMO_PROJECT, "purpose": "carrow demo and bench",
            "output": output, "sql": sql,
        });
        let request = client::action(&mut researcher, "carrow.request.submit", &body).await?;
        for reviewer in &mut reviewers {
            let decision = serde_json::json!({"id": request["id"], "decision": "approve"});
            client::action(reviewer, "carrow.request.decide", &decision).await?;
        }
    }
    Ok(researcher)
}

/// The generated organisations' nodes and a coordinator over them, on
/// loopback ports chosen by the system.
pub struct Cluster {
    pub nodes: Vec<carrow_node::RunningNode>,
    pub coordinator: carrow_coordinator::RunningCoordinator,
}

impl Cluster {
    /// Starts the nodes and coordinator that `carrow generate` configured in
    /// `dir`; `link_records` turns the coordinator's linkage stage on or off.
    pub async fn start(dir: &Path, link_records: bool) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        let mut coordinator_config =
            config::load_coordinator(&dir.join("coordinator/coordinator.toml"))?;
        for org in ["acute", "gp", "council"] {
            let mut node_config = config::load_node(&dir.join(org).join("node.toml"))?;
            node_config.listen = "127.0.0.1:0".into();
            let node = carrow_node::RunningNode::start(node_config)
                .await
                .with_context(|| format!("starting node {org}"))?;
            let endpoint = coordinator_config
                .nodes
                .iter_mut()
                .find(|n| n.name == org)
                .context("node in coordinator config")?;
            endpoint.url = format!("http://{}", node.addr);
            nodes.push(node);
        }
        coordinator_config.listen = "127.0.0.1:0".into();
        coordinator_config.link_records = link_records;
        let coordinator = carrow_coordinator::RunningCoordinator::start(coordinator_config).await?;
        Ok(Self { nodes, coordinator })
    }

    /// Stops the coordinator, then the nodes.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.coordinator.stop().await?;
        for node in self.nodes {
            node.stop().await?;
        }
        Ok(())
    }
}
