//! Reproducible synthetic care organisations for Carrow's demo, tests and
//! benchmarks: a region's population and the local data of a hospital trust
//! (`acute`), GP practices (`gp`) and a council's adult social care
//! (`council`), each in its own local schema, with node and coordinator
//! configurations and, kept apart, a ground truth mapping records to people.

pub mod configs;
pub mod orgs;
pub mod population;
pub mod table;
pub mod tpch;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::RecordBatch;
use carrow_coordinator::config::{CoordinatorConfig, NodeEndpoint, UserConfig};
use carrow_governance::Role;
use carrow_linkage::LinkageSecret;
use chrono::NaiveDate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use population::OPT_OUT_SHARE;

/// Default population size.
pub const DEFAULT_PEOPLE: usize = 100_000;

/// Default snapshot date: every generated date is on or before it, so the
/// same seed gives the same data whatever day it runs.
pub fn default_as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 31).expect("valid date")
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub people: usize,
    pub seed: u64,
    pub as_of: NaiveDate,
}

/// Errors while generating.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("output directory {path} is not usable: {source}")]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "output directory {0} already holds generated data (manifest.json); choose an empty directory"
    )]
    NotEmpty(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("--people must be at least 1")]
    NoPeople,
    #[error("TPC-H scale factor {0} is out of range: use more than 0 and at most 10")]
    ScaleFactor(f64),
    #[error(transparent)]
    Secret(#[from] carrow_linkage::LinkageError),
    #[error("cannot hash a generated password: {0}")]
    Password(String),
}

/// Counts of what was generated, also written to `manifest.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub seed: u64,
    pub as_of: String,
    pub people: usize,
    pub opted_out: usize,
    pub acute_patients: usize,
    pub acute_admissions: usize,
    pub acute_missing_nhs_number: usize,
    pub gp_registrations: usize,
    pub gp_conditions: usize,
    pub council_clients: usize,
    pub council_care_packages: usize,
    pub council_missing_nhs_number: usize,
}

/// `n` people of a reproducible population in households (for linkage
/// benchmarks), with a second, messier copy of each person's identifiers as
/// the council holds them ([`orgs::COUNCIL_CARE`]: 15% without an NHS
/// number, mistyped and relatives' numbers, maiden names, nicknames, name
/// typos, swapped days and months, addresses before a move, dates in mixed
/// formats).
pub fn people_and_messy_copies(
    n: usize,
    seed: u64,
) -> (population::Population, Vec<[Option<String>; 7]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pop = population::generate(&mut rng, n, default_as_of());
    let copies = (0..pop.people.len())
        .map(|i| orgs::messy_identifiers(&mut rng, &pop, i))
        .collect();
    (pop, copies)
}

/// Generates the population and the three organisations into `opts.out`.
pub fn generate(opts: &GenerateOptions) -> Result<Summary, SynthError> {
    if opts.people == 0 {
        return Err(SynthError::NoPeople);
    }
    let started = Instant::now();
    prepare_output_dir(&opts.out)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let pop = population::generate(&mut rng, opts.people, opts.as_of);
    tracing::info!(
        people = pop.people.len(),
        areas = pop.areas.len(),
        "population generated"
    );
    let organisations = [
        orgs::acute(&mut rng, &pop, opts.as_of),
        orgs::gp(&mut rng, &pop, opts.as_of),
        orgs::council(&mut rng, &pop, opts.as_of),
    ];
    let secrets = opts.out.join("secrets");
    create_dir(&secrets)?;
    LinkageSecret::generate()?.write_new(&secrets.join("linkage.key"))?;
    let mut endpoints = Vec::new();
    for org in &organisations {
        let dir = opts.out.join(org.name);
        create_dir(&dir)?;
        for table in &org.tables {
            let batch = table.to_batch();
            write_csv(&dir.join(format!("{}.csv", table.name)), &batch)?;
            write_parquet(&dir.join(format!("{}.parquet", table.name)), &batch)?;
        }
        let creds = configs::NodeCredentials {
            coordinator_sha256: new_token(
                &secrets.join(format!("coordinator-{}.token", org.name)),
            )?,
            operator_sha256: new_token(&secrets.join(format!("operator-{}.token", org.name)))?,
        };
        let node = match org.name {
            "acute" => configs::acute(&creds),
            "gp" => configs::gp(&creds),
            _ => configs::council(&creds, &opts.as_of.to_string()),
        };
        write_toml(&dir.join("node.toml"), &node)?;
        endpoints.push(NodeEndpoint {
            name: org.name.to_string(),
            url: format!("http://127.0.0.1:{}", configs::default_port(org.name)),
            user: "coordinator".into(),
            token_file: PathBuf::from(format!("../secrets/coordinator-{}.token", org.name)),
            tls: None,
        });
    }
    let coordinator_dir = opts.out.join("coordinator");
    create_dir(&coordinator_dir)?;
    let coordinator = coordinator_config(endpoints, &secrets)?;
    write_toml(&coordinator_dir.join("coordinator.toml"), &coordinator)?;
    write_ground_truth(&opts.out.join("ground-truth"), &pop, &organisations)?;
    let summary = summarise(opts, &pop, &organisations);
    let manifest = serde_json::to_string_pretty(&summary).expect("summary serialises");
    write_text(&opts.out.join("manifest.json"), &(manifest + "\n"))?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, out = %opts.out.display(), "generated");
    Ok(summary)
}

/// The coordinator of generated nodes: defaults, and each of [`DEMO_USERS`]
/// with a new password in `secrets/<name>.token`.
fn coordinator_config(
    nodes: Vec<NodeEndpoint>,
    secrets: &Path,
) -> Result<CoordinatorConfig, SynthError> {
    Ok(CoordinatorConfig {
        listen: "127.0.0.1:50050".into(),
        tls: None,
        ops_listen: None,
        console: None,
        state_dir: "state".into(),
        audit_key: None,
        default_project: configs::DEMO_PROJECT.into(),
        connect_timeout_ms: 2_000,
        query_timeout_ms: 60_000,
        memory_limit_mb: 2_048,
        query_memory_mb: 512,
        query_time_limit_secs: 300,
        max_queries_per_user: 4,
        held_result_mb: 256,
        catalog_refresh_secs: 60,
        purposes: configs::direct_care_purposes(),
        nodes,
        users: DEMO_USERS
            .iter()
            .map(|(name, role, projects)| {
                Ok(UserConfig {
                    name: name.to_string(),
                    role: *role,
                    password_hash: new_password(&secrets.join(format!("{name}.token")))?,
                    projects: projects.iter().map(|p| p.to_string()).collect(),
                })
            })
            .collect::<Result<_, SynthError>>()?,
        disclosure: Default::default(),
        link_records: true,
        link_group_warning_size: 10,
    })
}

fn summarise(
    opts: &GenerateOptions,
    pop: &population::Population,
    orgs: &[orgs::Organisation; 3],
) -> Summary {
    let rows = |org: usize, table: usize| orgs[org].tables[table].len();
    let missing = |org: usize| {
        let batch = orgs[org].tables[0].to_batch();
        batch.column(1).null_count()
    };
    Summary {
        seed: opts.seed,
        as_of: opts.as_of.to_string(),
        people: pop.people.len(),
        opted_out: pop.people.iter().filter(|p| p.opted_out).count(),
        acute_patients: rows(0, 0),
        acute_admissions: rows(0, 1),
        acute_missing_nhs_number: missing(0),
        gp_registrations: rows(1, 0),
        gp_conditions: rows(1, 1),
        council_clients: rows(2, 0),
        council_care_packages: rows(2, 1),
        council_missing_nhs_number: missing(2),
    }
}

fn prepare_output_dir(out: &Path) -> Result<(), SynthError> {
    fs::create_dir_all(out).map_err(|source| SynthError::OutputDir {
        path: out.to_path_buf(),
        source,
    })?;
    if out.join("manifest.json").exists() {
        return Err(SynthError::NotEmpty(out.to_path_buf()));
    }
    // Fail early, naming the directory, if it cannot be written.
    let probe = out.join(".carrow-write-test");
    fs::write(&probe, b"").map_err(|source| SynthError::OutputDir {
        path: out.to_path_buf(),
        source,
    })?;
    fs::remove_file(&probe).map_err(|source| SynthError::OutputDir {
        path: out.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), SynthError> {
    fs::create_dir_all(dir).map_err(|source| SynthError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    fs::write(path, text).map_err(|source| SynthError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), SynthError> {
    let text = toml::to_string_pretty(value).map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_text(path, &format!("# Generated by `carrow generate`.\n{text}"))
}

/// Writes a new random token (mode 0600) and returns its SHA-256 in hex.
/// A token file has the secret file's format: 32 random bytes in hex.
/// The coordinator users `generate` creates, each with a random password in
/// `secrets/<name>.token`.
pub const DEMO_USERS: &[(&str, Role, &[&str])] = &[
    ("planner", Role::Planner, &[]),
    ("researcher", Role::Researcher, &[]),
    ("reviewer1", Role::Governance, &[]),
    ("reviewer2", Role::Governance, &[]),
    // A care team's analyst: the one user of the direct-care project,
    // which the national data opt-out does not apply to.
    ("clinician", Role::Planner, &[configs::DIRECT_CARE_PROJECT]),
];

/// A new random password in `path`; returns its argon2id hash.
fn new_password(path: &Path) -> Result<String, SynthError> {
    carrow_governance::roles::hash_password(&new_secret_file(path)?)
        .map_err(|e| SynthError::Password(e.to_string()))
}

/// A new random machine token in `path`; returns its SHA-256 (hex).
/// Writes a new caller token (random, hex, mode 0600) to a new file at
/// `path`; returns the SHA-256 a node's `[[clients]]` entry holds.
pub fn new_token(path: &Path) -> Result<String, SynthError> {
    Ok(hex::encode(Sha256::digest(
        new_secret_file(path)?.as_bytes(),
    )))
}

/// Writes a new random 256-bit secret (hex, mode 0600) to `path`; returns it.
fn new_secret_file(path: &Path) -> Result<String, SynthError> {
    LinkageSecret::generate()?.write_new(path)?;
    let text = fs::read_to_string(path).map_err(|source| SynthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

fn write_csv(path: &Path, batch: &RecordBatch) -> Result<(), SynthError> {
    let file = fs::File::create(path).map_err(|source| SynthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let mut writer = arrow_csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    writer.write(batch).map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), SynthError> {
    let file = fs::File::create(path).map_err(|source| SynthError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let encode = |e: parquet::errors::ParquetError| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(encode)?;
    writer.write(batch).map_err(encode)?;
    writer.close().map_err(encode)?;
    Ok(())
}

fn write_ground_truth(
    dir: &Path,
    pop: &population::Population,
    orgs: &[orgs::Organisation; 3],
) -> Result<(), SynthError> {
    create_dir(dir)?;
    let mut people = String::from(
        "person_id,nhs_number,family_name,given_name,date_of_birth,sex,postcode,area_code,deprivation_decile,opted_out,\
         household_id,household_kind,twin_of,namesake_of,maiden_name,moved,type1_opted_out\n",
    );
    let id_of = |i: Option<usize>| i.map_or(String::new(), |i| pop.people[i].id.clone());
    for p in &pop.people {
        let area = &pop.areas[p.area];
        let household = &pop.households[p.household];
        people.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            p.id,
            p.nhs_number,
            p.family_name,
            p.given_name,
            p.date_of_birth,
            if p.sex == population::Sex::Male {
                "M"
            } else {
                "F"
            },
            p.postcode,
            area.code,
            area.deprivation_decile,
            p.opted_out,
            household.id,
            household.kind.name(),
            id_of(p.twin_of),
            id_of(p.namesake_of),
            p.maiden_name.as_deref().unwrap_or(""),
            p.previous.is_some(),
            p.type1_opted_out(),
        ));
    }
    write_text(&dir.join("people.csv"), &people)?;
    let mut records = String::from("organisation,table,record_id,person_id\n");
    for org in orgs {
        for (table, record, person) in &org.records {
            records.push_str(&format!("{},{table},{record},{person}\n", org.name));
        }
    }
    write_text(&dir.join("records.csv"), &records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn generate_into(dir: &Path, people: usize, seed: u64) -> Summary {
        generate(&GenerateOptions {
            out: dir.to_path_buf(),
            people,
            seed,
            as_of: default_as_of(),
        })
        .unwrap()
    }

    /// Every generated file's bytes, by relative path. Secrets are fresh random
    /// values by design (never derived from the seed), so they and the token
    /// hashes in the node configs are left out.
    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                if path.is_dir() {
                    stack.push(path);
                } else if !rel.starts_with("secrets") {
                    let mut bytes = fs::read(&path).unwrap();
                    if rel.ends_with(".toml") {
                        let text = String::from_utf8(bytes).unwrap();
                        bytes = text
                            .lines()
                            .filter(|l| {
                                !l.starts_with("token_sha256") && !l.starts_with("password_hash")
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                            .into_bytes();
                    }
                    out.insert(rel, bytes);
                }
            }
        }
        out
    }

    #[test]
    fn same_seed_same_output_and_shares_within_tolerance() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let people = 20_000;
        let summary = generate_into(a.path(), people, 42);
        assert_eq!(summary, generate_into(b.path(), people, 42));
        let (ca, cb) = (contents(a.path()), contents(b.path()));
        assert!(
            ca.len() >= 21
                && ca.contains_key("ground-truth/records.csv")
                && ca.contains_key("council/node.toml"),
            "expected data, configs and ground truth, got {:?}",
            ca.keys()
        );
        assert_eq!(ca.keys().collect::<Vec<_>>(), cb.keys().collect::<Vec<_>>());
        for (path, bytes) in &ca {
            assert!(
                bytes == &cb[path],
                "{path} differs between two runs with the same seed"
            );
        }
        let other = generate_into(c.path(), people, 43);
        assert_ne!(ca["gp/patients.csv"], contents(c.path())["gp/patients.csv"]);
        assert_ne!(summary, other);

        // Stated tolerances: opt-outs 3% ± 0.5 points of people; missing NHS
        // numbers 15% ± 2.5 points of council clients and 2% ± 1 point of
        // hospital patients. Each is several binomial standard errors wide.
        let share = |n: usize, d: usize| n as f64 / d as f64;
        assert_eq!(summary.people, people);
        assert_eq!(summary.gp_registrations, people);
        assert!(
            (share(summary.opted_out, people) - OPT_OUT_SHARE).abs() < 0.005,
            "{summary:?}"
        );
        assert!(summary.council_clients > 200, "{summary:?}");
        let council_missing = share(summary.council_missing_nhs_number, summary.council_clients);
        assert!(
            (council_missing - orgs::COUNCIL_MISSING_NHS_SHARE).abs() < 0.025,
            "{council_missing}"
        );
        let acute_missing = share(summary.acute_missing_nhs_number, summary.acute_patients);
        assert!(
            (acute_missing - orgs::ACUTE_MISSING_NHS_SHARE).abs() < 0.01,
            "{acute_missing}"
        );
    }

    fn share(n: usize, d: usize) -> f64 {
        n as f64 / d as f64
    }

    #[test]
    fn ground_truth_covers_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_into(dir.path(), 5_000, 3);
        let records = fs::read_to_string(dir.path().join("ground-truth/records.csv")).unwrap();
        let count = |org: &str, table: &str| {
            records
                .lines()
                .filter(|l| l.starts_with(&format!("{org},{table},")))
                .count()
        };
        assert_eq!(count("acute", "apc_spells"), summary.acute_admissions);
        assert_eq!(count("gp", "patients"), summary.gp_registrations);
        assert_eq!(count("council", "clients"), summary.council_clients);
        assert_eq!(
            count("council", "care_packages"),
            summary.council_care_packages
        );
        let csv_rows = |p: &str| {
            fs::read_to_string(dir.path().join(p))
                .unwrap()
                .lines()
                .count()
                - 1
        };
        assert_eq!(csv_rows("council/clients.csv"), summary.council_clients);
        assert_eq!(csv_rows("acute/apc_spells.csv"), summary.acute_admissions);
        // Objections are recorded at the GP practice only, exactly for the
        // people the ground truth says objected (type 1: 1% ± 0.5 points).
        let people = fs::read_to_string(dir.path().join("ground-truth/people.csv")).unwrap();
        let status: std::collections::HashMap<&str, (bool, bool)> = people
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1], (f[9] == "true", f[16] == "true"))
            })
            .collect();
        let type1 = status.values().filter(|s| s.1).count();
        assert!(
            (share(type1, summary.people) - population::TYPE1_SHARE).abs() < 0.005,
            "{type1}"
        );
        let patients = fs::read_to_string(dir.path().join("gp/patients.csv")).unwrap();
        for line in patients.lines().skip(1) {
            let f: Vec<&str> = line.rsplitn(3, ',').collect();
            let nhs = line.split(',').nth(1).unwrap();
            let (national, dissent) = status[nhs];
            assert_eq!(f[1] == "opted_out", national, "{line}");
            assert_eq!(f[0] == "dissent", dissent, "{line}");
        }
        for (file, column) in [("acute/pas_patients.csv", 10), ("council/clients.csv", 10)] {
            let text = fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(
                text.lines()
                    .skip(1)
                    .all(|l| l.rsplit(',').next() == Some("N")),
                "{file}: column {column} records no objection"
            );
        }
        assert!(!dir.path().join("acute/optouts.csv").exists());
    }

    #[test]
    fn generated_node_configs_validate() {
        let dir = tempfile::tempdir().unwrap();
        generate_into(dir.path(), 500, 1);
        for org in ["acute", "gp", "council"] {
            let text = fs::read_to_string(dir.path().join(org).join("node.toml")).unwrap();
            let cfg: carrow_node::NodeConfig = toml::from_str(&text).unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.name, org);
        }
        let text = fs::read_to_string(dir.path().join("coordinator/coordinator.toml")).unwrap();
        let cfg: CoordinatorConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn refuses_to_overwrite_and_names_unusable_directories() {
        let dir = tempfile::tempdir().unwrap();
        generate_into(dir.path(), 100, 1);
        let err = generate(&GenerateOptions {
            out: dir.path().to_path_buf(),
            people: 100,
            seed: 1,
            as_of: default_as_of(),
        })
        .unwrap_err();
        assert!(matches!(err, SynthError::NotEmpty(_)), "{err}");
        let file = dir.path().join("manifest.json");
        let err = generate(&GenerateOptions {
            out: file.join("sub"),
            people: 100,
            seed: 1,
            as_of: default_as_of(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("manifest.json/sub"), "{err}");
    }
}
