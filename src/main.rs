//! `carrow`: the command-line interface. Thin by design: it parses
//! arguments, sets up logging, loads configuration and calls the crates.

mod audit;
mod bench;
mod client;
mod config;
mod demo;
mod load;
mod requests;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "carrow",
    version,
    about = "Federated SQL over care organisations' data, pseudonymised at each node"
)]
struct Cli {
    /// Log line format on standard error; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Generate three organisations, start their nodes and a coordinator on loopback, run example queries.
    Demo {
        /// Number of people in the region.
        #[arg(long, default_value_t = carrow_synth::DEFAULT_PEOPLE)]
        people: usize,
        /// Random seed of the generated data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep the generated data, configs and audit logs in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Time the demo questions and single-node aggregates federated against one in-process DataFusion.
    Bench {
        /// Sizes to run, in source records (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [1_000_000usize, 10_000_000])]
        records: Vec<usize>,
        /// Timed runs per query and side; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Random seed of the generated data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep the generated data in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Instead, time the linkage stage: this many records against as many.
        #[arg(long)]
        linkage_records: Option<usize>,
        /// Instead, run this many concurrent planners against a federation
        /// of real processes and report throughput, latency and memory.
        #[arg(long, value_name = "PLANNERS")]
        load: Option<usize>,
        /// With --load: how long the loaded run lasts.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// With --load: people in the generated region.
        #[arg(long, default_value_t = 20_000)]
        people: usize,
    },
    /// Generate a reproducible synthetic population and three organisations' data.
    Generate {
        /// Output directory (created if missing; must not already hold generated data).
        #[arg(long)]
        out: PathBuf,
        /// Number of people in the region.
        #[arg(long, default_value_t = carrow_synth::DEFAULT_PEOPLE)]
        people: usize,
        /// Random seed: the same seed gives the same data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Snapshot date (YYYY-MM-DD): every generated date is on or before it.
        #[arg(long, default_value_t = carrow_synth::default_as_of())]
        as_of: chrono::NaiveDate,
        /// Instead, the eight TPC-H tables at this scale factor (0.01 is
        /// about 87 000 rows) over three nodes, for differential testing.
        #[arg(long, value_name = "SCALE_FACTOR")]
        tpch: Option<f64>,
    },
    /// Run an organisation's node.
    Node {
        /// The node's TOML configuration (overridable by CARROW_NODE__* variables).
        #[arg(long)]
        config: PathBuf,
        /// Only load and validate the configuration, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the coordinator.
    Coordinator {
        /// The coordinator's TOML configuration (overridable by CARROW_COORDINATOR__* variables).
        #[arg(long)]
        config: PathBuf,
        /// Only load and validate the configuration, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Run SQL against a coordinator or node and print the result.
    Sql {
        /// The server, e.g. http://127.0.0.1:50050.
        #[arg(long)]
        url: String,
        /// User name to log in with.
        #[arg(long)]
        user: String,
        /// File holding the password or token; otherwise CARROW_PASSWORD, otherwise a prompt.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Project to run under (sent as the x-carrow-project header).
        #[arg(long)]
        project: Option<String>,
        /// For an https:// URL: the CA that signed the server's certificate.
        #[arg(long, env = "CARROW_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// The SQL statement.
        sql: String,
    },
    /// Submit, review and approve research requests (through the coordinator).
    Request {
        #[command(flatten)]
        login: requests::Login,
        #[command(subcommand)]
        command: requests::RequestCommand,
    },
    /// Coordinator user administration.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Show, verify and reconcile audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Record linkage across nodes.
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// Manage the linkage secret.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check a hash-chained audit log; names the first broken record.
    Verify {
        /// The audit log file (one JSON record a line).
        file: PathBuf,
    },
    /// Print an audit log (coordinator's or a node's) as a table, filtered.
    Show {
        /// The audit log file.
        file: PathBuf,
        #[command(flatten)]
        filters: audit::ShowFilters,
    },
    /// Match the coordinator's log against nodes' logs: every fragment on
    /// both sides, every node head hash as the coordinator recorded it.
    Reconcile {
        /// The coordinator's audit log.
        #[arg(long)]
        coordinator: PathBuf,
        /// A node's audit log as NAME=FILE (repeat for each node).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Link a project's records as the coordinator does and report how:
    /// links by rule, estimated match weights, uncertain pairs.
    Report {
        /// The coordinator's configuration (its nodes and their tokens).
        #[arg(long)]
        config: PathBuf,
        /// The project (default: the coordinator's default project).
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Print the argon2id hash of a password (from --password-file,
    /// CARROW_PASSWORD or a prompt) for a coordinator user's password_hash.
    HashPassword {
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new 32-byte linkage secret (hex) to a new file with mode 0600.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a new caller token to a new file with mode 0600 and print the
    /// `[[clients]]` entry a node's configuration needs for it.
    Token {
        #[arg(long)]
        out: PathBuf,
        /// The caller's name at the node.
        #[arg(long, default_value = "coordinator")]
        name: String,
        /// coordinator or operator.
        #[arg(long, default_value = "coordinator")]
        role: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo { keep, .. } = &cli.command {
        // The demo's report is the terminal's; its servers' logs go to a file.
        let log = demo::log_path(keep.as_deref());
        if let Err(e) = init_file_logging(&log) {
            eprintln!("error: cannot write the demo's log {}: {e}", log.display());
            return ExitCode::FAILURE;
        }
    } else {
        init_logging(cli.log_format);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything (or what `RUST_LOG` asks for) to the file at `path`; only
/// errors to the terminal.
fn init_file_logging(path: &std::path::Path) -> std::io::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path)?;
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    let to_terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
    tracing_subscriber::registry()
        .with(to_file)
        .with(to_terminal)
        .init();
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate {
            out,
            tpch: Some(scale_factor),
            ..
        } => generate_tpch(out, scale_factor),
        Command::Generate {
            out,
            people,
            seed,
            as_of,
            tpch: None,
        } => generate(out, people, seed, as_of),
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let secret = carrow_linkage::LinkageSecret::generate()?;
            secret.write_new(&out)?;
            println!(
                "wrote a new linkage secret to {} (mode 0600)",
                out.display()
            );
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Token { out, name, role },
        } => {
            if !matches!(role.as_str(), "coordinator" | "operator") {
                bail!("--role {role:?}: a node's callers are coordinator or operator");
            }
            let sha256 = carrow_synth::new_token(&out)?;
            println!(
                "wrote a new caller token to {} (mode 0600); give it to the caller, and add to the node's configuration:\n\n[[clients]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{sha256}\"",
                out.display()
            );
            Ok(())
        }
        Command::Node { config, check } => {
            let cfg = config::load_node(&config)?;
            carrow_linkage::LinkageSecret::load(&cfg.linkage_secret_file).with_context(|| {
                format!("loading the linkage secret named in {}", config.display())
            })?;
            if check {
                let problems = runtime()?.block_on(carrow_node::service::check_references(&cfg));
                if !problems.is_empty() {
                    bail!(
                        "node configuration {} refers to what cannot be opened:\n  {}",
                        config.display(),
                        problems.join("\n  ")
                    );
                }
                println!(
                    "node configuration {} is valid: node {:?}, {} published tables",
                    config.display(),
                    cfg.name,
                    cfg.tables.len()
                );
                return Ok(());
            }
            runtime()?.block_on(serve_node(cfg))
        }
        Command::Coordinator { config, check } => {
            let cfg = config::load_coordinator(&config)?;
            if check {
                let problems = cfg.check_references();
                if !problems.is_empty() {
                    bail!(
                        "coordinator configuration {} refers to what cannot be opened:\n  {}",
                        config.display(),
                        problems.join("\n  ")
                    );
                }
                println!(
                    "coordinator configuration {} is valid: {} nodes",
                    config.display(),
                    cfg.nodes.len()
                );
                return Ok(());
            }
            runtime()?.block_on(serve_coordinator(cfg, config))
        }
        Command::Demo { people, seed, keep } => runtime()?.block_on(demo::run(people, seed, keep)),
        Command::Bench {
            records,
            repeat,
            seed,
            keep,
            linkage_records,
            load,
            seconds,
            people,
        } => {
            if let Some(n) = linkage_records {
                return bench::linkage(n, seed);
            }
            if let Some(planners) = load {
                return runtime()?.block_on(load::run(planners, seconds, people, seed, keep));
            }
            if repeat == 0 {
                bail!("--repeat must be at least 1");
            }
            runtime()?.block_on(bench::run(&records, repeat, seed, keep))
        }
        Command::Sql {
            url,
            user,
            password_file,
            project,
            ca_file,
            sql,
        } => {
            let password = read_password(password_file.as_deref())?;
            runtime()?.block_on(async {
                let mut client =
                    client::connect_with_ca(&url, &user, &password, ca_file.as_deref()).await?;
                if let Some(project) = project {
                    client.set_header("x-carrow-project", project);
                }
                let result = client::run_query(&mut client, &sql).await?;
                println!(
                    "{}",
                    datafusion::arrow::util::pretty::pretty_format_batches(&result.batches)?
                );
                let rows: usize = result.batches.iter().map(|b| b.num_rows()).sum();
                println!("{rows} rows");
                if let Some(coverage) = client::coverage_line(&result.metadata) {
                    println!("coverage: {coverage}");
                }
                Ok(())
            })
        }
        Command::Request { login, command } => {
            let password = read_password(login.password_file.as_deref())?;
            runtime()?.block_on(requests::run(login, password, command))
        }
        Command::Users {
            command: UsersCommand::HashPassword { password_file },
        } => {
            let password = read_password(password_file.as_deref())?;
            println!("{}", carrow_governance::roles::hash_password(&password)?);
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => {
            let report = carrow_governance::verify_file(&file)?;
            println!(
                "audit log {} is intact: {} records, head {}",
                file.display(),
                report.records,
                report.head
            );
            if let Some(checkpoint) = &report.checkpoint {
                println!(
                    "every record's checkpoint verifies: log of {}, signed by key {}, Merkle root {} at {} records",
                    checkpoint.origin,
                    hex::encode(checkpoint.key),
                    hex::encode(checkpoint.root),
                    checkpoint.size
                );
            }
            if !report.unfinished.is_empty() {
                println!(
                    "{} statements were recorded as started with no outcome (the process stopped while running them): {}",
                    report.unfinished.len(),
                    report.unfinished.join(", ")
                );
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Show { file, filters },
        } => audit::show(file, filters),
        Command::Audit {
            command: AuditCommand::Reconcile { coordinator, nodes },
        } => audit::reconcile_logs(coordinator, nodes),
        Command::Link {
            command: LinkCommand::Report { config, project },
        } => {
            let cfg = config::load_coordinator(&config)?;
            let project = project.unwrap_or_else(|| cfg.default_project.clone());
            let index =
                runtime()?.block_on(carrow_coordinator::linkage::build_for(&cfg, &project))?;
            print_link_report(&project, &index);
            Ok(())
        }
    }
}

/// The async runtime. Its threads get a large stack: planning walks SQL
/// expressions recursively, and a statement at the size limits
/// (`carrow_sql::statement::check_limits`) must never overflow it. The
/// memory is only reserved, not committed, until used.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(64 * 1024 * 1024)
        .build()
        .context("starting the async runtime")
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn serve_node(cfg: carrow_node::NodeConfig) -> anyhow::Result<()> {
    let name = cfg.name.clone();
    let mut node = carrow_node::RunningNode::start(cfg)
        .await
        .with_context(|| format!("starting node {name}"))?;
    // Tests and scripts read this line to find the port.
    println!("node {name} listening on {}", node.addr);
    for (table, reason) in node.state.unavailable() {
        println!("node {name}: table {table} unavailable: {reason}");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!(node = %name, "stopping");
            node.stop().await?;
        }
        result = node.wait() => result?,
    }
    Ok(())
}

async fn serve_coordinator(
    cfg: carrow_coordinator::CoordinatorConfig,
    path: PathBuf,
) -> anyhow::Result<()> {
    // An organisation added to `[[nodes]]` joins at the next refresh.
    let reload: carrow_coordinator::NodesReload = std::sync::Arc::new(move || {
        config::load_coordinator(&path)
            .map(|c| c.nodes)
            .map_err(|e| format!("{e:#}"))
    });
    let mut coordinator =
        carrow_coordinator::RunningCoordinator::start_with_reload(cfg, Some(reload))
            .await
            .context("starting the coordinator")?;
    println!("coordinator listening on {}", coordinator.addr);
    for (node, reason) in coordinator.state.unreachable() {
        println!("coordinator: node {node} unreachable at start: {reason}");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            coordinator.stop().await?;
        }
        result = coordinator.wait() => result?,
    }
    Ok(())
}

/// The password: from a file, else CARROW_PASSWORD, else a prompt on the
/// terminal. Never from the command line.
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading password file {}", path.display()))?;
        return Ok(text.trim().to_string());
    }
    if let Ok(value) = std::env::var("CARROW_PASSWORD") {
        return Ok(value);
    }
    rpassword::prompt_password("password: ")
        .context("no password: give --password-file, set CARROW_PASSWORD or run in a terminal")
}

fn print_link_report(project: &str, index: &carrow_coordinator::linkage::LinkageIndex) {
    let r = &index.report;
    println!(
        "linkage of project {project}: {} records, {} persons",
        r.records, r.persons
    );
    if !index.missing_nodes.is_empty() {
        println!(
            "  nodes without tokens (unreachable): {}",
            index.missing_nodes.join(", ")
        );
    }
    for (label, value) in [
        ("records linked by the same pid at a node", r.linked_by_pid),
        ("records linked by NHS number", r.linked_by_nhs_number),
        ("records linked by match score", r.linked_by_score),
        ("candidate pairs scored", r.candidate_pairs),
        (
            "pairs labelled matches (shared NHS number or id)",
            r.labelled_pairs,
        ),
        ("uncertain pairs (near the threshold)", r.uncertain_pairs),
        (
            "links refused: only the home agreed",
            r.refused_without_person_evidence,
        ),
        ("blocks too large to score", r.blocks_skipped),
    ] {
        println!("  {label:<50} {value:>9}");
    }
    println!(
        "  {:<50} {:>9.2e}",
        "chance two random records match", r.estimated_match_share
    );
    println!(
        "  {:<50} {:>9.2}",
        "most household fields add (log2)", r.household_cap
    );

    println!("\n  merges refused by constraint");
    if r.refused.is_empty() {
        println!("    none");
    }
    for refused in &r.refused {
        println!("    {:<60} {:>9}", refused.description, refused.merges);
    }

    println!("\n  {:<12} {:>9}", "group size", "groups");
    for (size, count) in &r.group_sizes {
        println!("  {size:<12} {count:>9}");
    }
    if !r.largest_groups.is_empty() {
        println!("\n  largest groups (node:pid prefix) and the links that joined them");
    }
    for group in &r.largest_groups {
        println!("    {} records: {}", group.records, group.members.join(" "));
        for link in &group.links {
            println!("      {link}");
        }
    }

    println!("\n  {:<44} {:>9}", "blocking rule", "pairs");
    for rule in &r.pairs_by_rule {
        println!("  {:<44} {:>9}", rule.rule, rule.pairs);
    }
    println!(
        "\n  {:<14} {:<12} {:>9} {:>9} {:>8}  m from",
        "comparison", "level", "m", "u", "weight"
    );
    for w in &r.weights {
        println!(
            "  {:<14} {:<12} {:>9.4} {:>9.5} {:>8.2}  {}",
            w.comparison,
            w.level,
            w.m,
            w.u,
            w.weight,
            match w.m_source {
                carrow_linkage::estimate::MSource::Labels => "labels",
                carrow_linkage::estimate::MSource::Em => "EM",
            }
        );
    }
}

fn generate_tpch(out: PathBuf, scale_factor: f64) -> anyhow::Result<()> {
    let summary = carrow_synth::tpch::generate(&out, scale_factor)
        .with_context(|| format!("generating TPC-H into {}", out.display()))?;
    println!(
        "generated TPC-H at scale factor {scale_factor} into {}",
        out.display()
    );
    for (table, rows) in &summary.rows {
        println!("  {table:<10} {rows:>10} rows");
    }
    println!(
        "nodes: sales (orders, lineitem), supply (part, partsupp, supplier), customers (customer, nation, region)"
    );
    Ok(())
}

fn generate(
    out: PathBuf,
    people: usize,
    seed: u64,
    as_of: chrono::NaiveDate,
) -> anyhow::Result<()> {
    let summary = carrow_synth::generate(&carrow_synth::GenerateOptions {
        out: out.clone(),
        people,
        seed,
        as_of,
    })
    .with_context(|| format!("generating synthetic organisations into {}", out.display()))?;
    println!(
        "generated {} people (seed {seed}, as of {as_of}) into {}",
        summary.people,
        out.display()
    );
    println!("  national data opt-outs     {:>8}", summary.opted_out);
    println!(
        "  acute   patients           {:>8}  admissions {:>8}  missing NHS number {:>6}",
        summary.acute_patients, summary.acute_admissions, summary.acute_missing_nhs_number
    );
    println!(
        "  gp      registrations      {:>8}  conditions {:>8}",
        summary.gp_registrations, summary.gp_conditions
    );
    println!(
        "  council clients            {:>8}  packages   {:>8}  missing NHS number {:>6}",
        summary.council_clients, summary.council_care_packages, summary.council_missing_nhs_number
    );
    println!(
        "node configs: {0}/acute/node.toml {0}/gp/node.toml {0}/council/node.toml; coordinator: {0}/coordinator/coordinator.toml",
        out.display()
    );
    Ok(())
}
