//! A node whose sources live on a real PostgreSQL server: the private
//! instance `./scripts/test` starts (CARROW_PG_* variables).

use std::path::{Path, PathBuf};
use std::process::Command;

use carrow_node::config::{PostgresSource, SourceConfig};

use crate::support::{NodeProcess, client, generate, query, rows};

pub(crate) struct Pg {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password_file: PathBuf,
    log: PathBuf,
    psql: PathBuf,
}

pub(crate) fn pg() -> Pg {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run ./scripts/test, which starts a private PostgreSQL server"
            )
        })
    };
    Pg {
        host: var("CARROW_PG_HOST"),
        port: var("CARROW_PG_PORT").parse().unwrap(),
        user: var("CARROW_PG_USER"),
        password_file: var("CARROW_PG_PASSWORD_FILE").into(),
        log: var("CARROW_PG_LOG").into(),
        psql: Path::new(&var("CARROW_PG_BIN")).join("psql"),
    }
}

impl Pg {
    pub(crate) fn psql(&self, database: &str, command: &str) {
        let password = std::fs::read_to_string(&self.password_file).unwrap();
        let out = Command::new(&self.psql)
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                command,
            ])
            .env("PGPASSWORD", password.trim())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Loads a CSV file into a new table of text columns.
    pub(crate) fn load_csv(&self, database: &str, table: &str, csv: &Path) {
        let header = std::fs::read_to_string(csv)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        let columns: Vec<String> = header.split(',').map(|c| format!("\"{c}\" text")).collect();
        self.psql(
            database,
            &format!("CREATE TABLE {table} ({})", columns.join(", ")),
        );
        self.psql(
            database,
            &format!(
                "\\copy {table} FROM '{}' WITH (FORMAT csv, HEADER true)",
                csv.display()
            ),
        );
    }

    fn source(&self, database: &str, table: &str) -> SourceConfig {
        SourceConfig::Postgres(PostgresSource {
            host: self.host.clone(),
            port: self.port,
            database: database.to_string(),
            user: self.user.clone(),
            password_file: Some(self.password_file.clone()),
            password_env: None,
            table: table.to_string(),
            sslmode: "disable".to_string(),
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_over_postgresql_answers_like_the_same_data_in_files_and_pushes_filters_down() {
    let pg = pg();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 3_000, 31);
    let database = format!("council_{}", std::process::id());
    pg.psql("postgres", &format!("CREATE DATABASE {database}"));
    let council = dir.path().join("council");
    pg.load_csv(&database, "clients", &council.join("clients.csv"));
    pg.load_csv(
        &database,
        "care_packages",
        &council.join("care_packages.csv"),
    );

    // A second council node reading the same tables from PostgreSQL.
    let file_config = council.join("node.toml");
    let mut config: carrow_node::NodeConfig =
        toml::from_str(&std::fs::read_to_string(&file_config).unwrap()).unwrap();
    config
        .sources
        .insert("clients".into(), pg.source(&database, "clients"));
    config.sources.insert(
        "care_packages".into(),
        pg.source(&database, "care_packages"),
    );
    config.audit_log = "audit-pg.jsonl".into();
    let pg_config = council.join("node-pg.toml");
    std::fs::write(&pg_config, toml::to_string(&config).unwrap()).unwrap();

    let files_node = NodeProcess::start(&file_config);
    let pg_node = NodeProcess::start(&pg_config);
    let token = dir.path().join("secrets/operator-council.token");
    let mut files = client(files_node.addr, "operator", &token).await;
    let mut postgres = client(pg_node.addr, "operator", &token).await;
    for sql in [
        "SELECT area_code, sex, count(*) FROM clients GROUP BY area_code, sex",
        "SELECT service_type, count(*), round(sum(weekly_cost), 2) FROM care_packages GROUP BY service_type",
        "SELECT count(DISTINCT c.pid) FROM clients c JOIN care_packages k ON c.pid = k.pid WHERE k.service_type = 'Home Care'",
        "SELECT pid, birth_year FROM clients WHERE deprivation_decile = 2 ORDER BY pid LIMIT 20",
    ] {
        let want = rows(&query(&mut files, sql).await.unwrap());
        let got = rows(
            &query(&mut postgres, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", pg_node.log())),
        );
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(got, want, "{sql}");
    }

    // The query's filter and the opt-out rule reach PostgreSQL as SQL.
    let log = std::fs::read_to_string(&pg.log).unwrap();
    let statements: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("statement:") || l.contains("execute"))
        .collect();
    assert!(
        statements
            .iter()
            .any(|l| l.contains("\"DeprivationDecile\"") && l.contains("WHERE")),
        "no filtered statement reached PostgreSQL:\n{}",
        statements.join("\n")
    );
    assert!(
        !statements
            .iter()
            .any(|l| l.contains("clients") && l.contains("SELECT *")),
        "a full-width scan reached PostgreSQL"
    );

    // The coordinator's version checks reuse the token table for
    // `token_table_max_age_secs`: the second check reads nothing from
    // PostgreSQL, and both name the same version.
    let mut coordinator = client(
        pg_node.addr,
        "coordinator",
        &dir.path().join("secrets/coordinator-council.token"),
    )
    .await;
    coordinator.set_header("x-carrow-linkage", "1");
    let version_sql = "SELECT version FROM carrow_linkage_tokens_version";
    let reads_of_clients = || {
        std::fs::read_to_string(&pg.log)
            .unwrap()
            .lines()
            .filter(|l| {
                (l.contains("statement:") || l.contains("execute")) && l.contains("clients")
            })
            .count()
    };
    let before = reads_of_clients();
    let first = rows(&query(&mut coordinator, version_sql).await.unwrap());
    let after_first = reads_of_clients();
    assert!(after_first > before, "the first check computes the table");
    let second = rows(&query(&mut coordinator, version_sql).await.unwrap());
    assert_eq!(second, first);
    assert_eq!(
        reads_of_clients(),
        after_first,
        "the second check reuses it"
    );
}
