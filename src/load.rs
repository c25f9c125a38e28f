//! `carrow bench --load`: concurrent planners asking the demo's questions
//! of a federation of real processes (three `carrow node`s and a `carrow
//! coordinator`, started from this binary) for a fixed time. Prints
//! throughput, p50 and p99 latency and errors, the latency ratio against
//! one planner alone in the same invocation, and each process's peak
//! resident memory beside its configured limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client;
use crate::demo::QUESTIONS;

/// What one run of the load measured.
struct Run {
    latencies: Vec<Duration>,
    errors: Vec<String>,
    elapsed: Duration,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[at]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// A federation process started from this binary; killed on drop.
struct Process {
    name: String,
    child: Child,
    addr: String,
}

impl Process {
    fn start(name: &str, args: &[&str], env: (&str, &str), log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this carrow binary")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .env(env.0, env.1)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines
            .next()
            .with_context(|| format!("{name} stopped before listening: see {}", log.display()))??;
        let addr = first
            .rsplit(' ')
            .next()
            .with_context(|| format!("{name} printed no address: {first}"))?
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            name: name.to_string(),
            child,
            addr,
        })
    }

    /// Peak resident memory so far, in MiB (Linux: VmHWM).
    fn peak_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `planners` concurrent planners for `seconds` over `people` people.
pub async fn run(
    planners: usize,
    seconds: u64,
    people: usize,
    seed: u64,
    keep: Option<PathBuf>,
) -> anyhow::Result<()> {
    anyhow::ensure!(planners >= 1, "--load must be at least 1 planner");
    anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
    let temp = tempfile::tempdir()?;
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    println!("generating {people} people into {}", dir.display());
    carrow_synth::generate(&carrow_synth::GenerateOptions {
        out: dir.clone(),
        people,
        seed,
        as_of: carrow_synth::default_as_of(),
    })?;
    let (processes, coordinator_config) = start_federation(&dir)?;
    let url = format!("http://{}", processes[0].addr);
    let password = std::fs::read_to_string(dir.join("secrets/planner.token"))
        .context("reading the planner's password")?;
    let password = password.trim().to_string();

    // Warm up (connections, the linkage index), then one planner alone.
    let alone = load(&url, &password, 1, Duration::from_secs(seconds.min(10))).await?;
    let loaded = load(&url, &password, planners, Duration::from_secs(seconds)).await?;
    println!(
        "\n{:<22} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "", "queries/s", "p50 ms", "p99 ms", "queries", "errors"
    );
    for (label, run) in [
        ("1 planner".to_string(), &alone),
        (format!("{planners} planners"), &loaded),
    ] {
        println!(
            "{label:<22} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>7}",
            run.throughput(),
            run.percentile(0.5).as_secs_f64() * 1000.0,
            run.percentile(0.99).as_secs_f64() * 1000.0,
            run.latencies.len(),
            run.errors.len()
        );
    }
    println!(
        "p50 under load / alone: {:.2}   throughput under load / alone: {:.2}",
        loaded.percentile(0.5).as_secs_f64() / alone.percentile(0.5).as_secs_f64().max(1e-9),
        loaded.throughput() / alone.throughput().max(1e-9)
    );
    println!("\npeak resident memory per process:");
    for process in &processes {
        let limit = if process.name == "coordinator" {
            format!(
                "memory_limit_mb {} (query_memory_mb {})",
                coordinator_config.memory_limit_mb, coordinator_config.query_memory_mb
            )
        } else {
            let node = crate::config::load_node(&dir.join(&process.name).join("node.toml"))?;
            format!("query_memory_mb {} per query", node.query_memory_mb)
        };
        println!(
            "  {:<12} {:>8.0} MiB   limit: {limit}",
            process.name,
            process.peak_mib().unwrap_or(f64::NAN)
        );
    }
    for error in loaded.errors.iter().chain(&alone.errors).take(5) {
        println!("error: {error}");
    }
    anyhow::ensure!(
        alone.errors.is_empty() && loaded.errors.is_empty(),
        "{} queries failed under load",
        alone.errors.len() + loaded.errors.len()
    );
    Ok(())
}

/// Starts the generated nodes and the coordinator as processes; the
/// coordinator comes first in the list.
fn start_federation(
    dir: &Path,
) -> anyhow::Result<(Vec<Process>, carrow_coordinator::CoordinatorConfig)> {
    let mut nodes = Vec::new();
    let config_path = dir.join("coordinator/coordinator.toml");
    let mut config = crate::config::load_coordinator(&config_path)?;
    for org in ["acute", "gp", "council"] {
        let node_config = dir.join(org).join("node.toml");
        let node = Process::start(
            org,
            &["node", "--config", &node_config.to_string_lossy()],
            ("CARROW_NODE__LISTEN", "127.0.0.1:0"),
            &dir.join(format!("{org}.log")),
        )?;
        config
            .nodes
            .iter_mut()
            .find(|n| n.name == org)
            .with_context(|| format!("node {org} in the coordinator's config"))?
            .url = format!("http://{}", node.addr);
        nodes.push(node);
    }
    config.listen = "127.0.0.1:0".into();
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let coordinator = Process::start(
        "coordinator",
        &["coordinator", "--config", &config_path.to_string_lossy()],
        ("CARROW_COORDINATOR__LISTEN", "127.0.0.1:0"),
        &dir.join("coordinator.log"),
    )?;
    let mut all = vec![coordinator];
    all.extend(nodes);
    Ok((all, config))
}

/// `planners` clients asking the demo's questions in turn for `length`.
async fn load(url: &str, password: &str, planners: usize, length: Duration) -> anyhow::Result<Run> {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for planner in 0..planners {
        let mut flight = client::connect(url, "planner", password).await?;
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            // Each planner starts at a different question.
            let mut next = planner;
            while Instant::now() < deadline {
                let (_, sql) = QUESTIONS[next % QUESTIONS.len()];
                next += 1;
                let asked = Instant::now();
                match client::run_query(&mut flight, sql).await {
                    Ok(_) => latencies.push(asked.elapsed()),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (latencies, errors)
        }));
    }
    let mut run = Run {
        latencies: Vec::new(),
        errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, errors) = task.await?;
        run.latencies.extend(latencies);
        run.errors.extend(errors);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}
