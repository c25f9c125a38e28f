//! The node's configuration: where its local data lives, which tables it
//! publishes in the common model, who may ask, and for which projects.
//!
//! Loaded from one TOML file (with `CARROW_NODE__*` environment overrides) by
//! the `carrow` binary; [`NodeConfig::validate`] reports every bad field by
//! its path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use carrow_linkage::IdentifierKind;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, used as its schema name at the coordinator (`acute`).
    pub name: String,
    /// Address the Flight SQL server listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// File holding the linkage secret (64 hex characters, mode 0600).
    pub linkage_secret_file: PathBuf,
    /// The node's audit log (one JSON record a line; a transparency log).
    pub audit_log: PathBuf,
    /// The Ed25519 key signing the audit log's checkpoints (64 hex digits,
    /// mode 0600); made at first start. Default: `audit_log` with extension `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_key: Option<PathBuf>,
    /// Projects this node takes part in; pseudonyms are computed per project.
    pub projects: Vec<String>,
    /// Project used for the node operator's own queries.
    pub default_project: String,
    /// Callers allowed to query this node.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Address of the operations listener (`/health`, `/metrics`); none: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<String>,
    /// TLS for the Flight SQL server; with `client_ca_file`, mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Optional file of NHS numbers (one a line, or a CSV with an
    /// `nhs_number` header) whose records are never released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_list: Option<PathBuf>,
    /// Projects' purposes, by project: those exempt from the national data
    /// opt-out and those for direct care. A project not listed is research
    /// and planning: every objection applies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub purposes: BTreeMap<String, ProjectPurpose>,
    /// Local raw tables, by name; published tables read from these.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Tables the node publishes, in the common model.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Seconds a linkage token table computed over a database source is
    /// reused (file sources are reused until a file changes): the
    /// coordinator asks for the table's version at every catalog refresh.
    #[serde(default = "default_token_table_max_age_secs")]
    pub token_table_max_age_secs: u64,
    /// Memory one query may use for joins, sorts and aggregates, in MiB;
    /// beyond it the query spills to disk or fails (never the node).
    #[serde(default = "default_query_memory_mb")]
    pub query_memory_mb: usize,
    /// Seconds one query may run; beyond it the query is stopped.
    #[serde(default = "default_query_time_limit_secs")]
    pub query_time_limit_secs: u64,
}

fn default_query_memory_mb() -> usize {
    1_024
}

fn default_query_time_limit_secs() -> u64 {
    300
}

fn default_token_table_max_age_secs() -> u64 {
    300
}

fn default_listen() -> String {
    "127.0.0.1:50051".to_string()
}

/// TLS settings: the server's certificate and key (PEM), and optionally the
/// CA whose certificates callers must present (mutual TLS).
pub type TlsConfig = carrow_sql::tls::ServerTls;

/// What a caller is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRole {
    /// A coordinator sending fragments for a project it names.
    Coordinator,
    /// The node's own operator, querying its own node under the default project.
    Operator,
}

/// One allowed caller: Basic auth with `name` and a secret token whose
/// SHA-256 is stored here (the token itself never is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    pub role: ClientRole,
    /// Hex SHA-256 of the caller's token.
    pub token_sha256: String,
    /// Projects this caller may ask about; empty means all of the node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

/// A local raw table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// A CSV file with a header row. Columns are read as text unless
    /// `infer_types` is set, so identifiers keep leading zeros.
    Csv {
        path: PathBuf,
        #[serde(default = "default_delimiter")]
        delimiter: char,
        #[serde(default)]
        infer_types: bool,
    },
    /// A Parquet file.
    Parquet { path: PathBuf },
    /// A table or query on a PostgreSQL server.
    Postgres(PostgresSource),
}

fn default_delimiter() -> char {
    ','
}

/// A PostgreSQL source. The password is read from a file or an environment
/// variable, never written in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The table to read, optionally schema-qualified.
    pub table: String,
    /// TLS mode: disable, prefer, require, verify-ca or verify-full.
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
}

fn default_sslmode() -> String {
    "prefer".to_string()
}

fn default_pg_port() -> u16 {
    5432
}

/// A published table: a view over local sources in the common model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Published name (`admissions`).
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Whether rows describe persons. Non-personal tables (reference data)
    /// have no identifiers and are not subject to person thresholds.
    #[serde(default = "default_true")]
    pub personal: bool,
    /// The local source this table reads, when it reads one source as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A local SQL query over sources, when the table needs a join (for
    /// example admissions joined to the patient index for identifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Which local columns identify the person; never published.
    #[serde(default)]
    pub identifiers: IdentifierColumnsConfig,
    /// Published columns in the common model.
    pub columns: Vec<ColumnConfig>,
    /// Consent rules: rows whose `column` holds one of `values` are
    /// removed (one rule, or a list of rules of different kinds).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub opt_out: Vec<OptOutRule>,
    /// How fresh the data is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

fn default_true() -> bool {
    true
}

/// Local columns of a table's person identifiers, by kind
/// (`nhs_number = "NHS_NO"`, `address = ["LINE1", "LINE2"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentifierColumnsConfig(pub BTreeMap<IdentifierKind, LocalColumns>);

impl IdentifierColumnsConfig {
    /// The columns declared for `kind`, if any.
    pub fn get(&self, kind: IdentifierKind) -> Option<&LocalColumns> {
        self.0.get(&kind)
    }

    /// Every configured local identifier column with its kind.
    pub fn columns(&self) -> Vec<(IdentifierKind, &str)> {
        self.0
            .iter()
            .flat_map(|(kind, cols)| cols.names().iter().map(|c| (*kind, c.as_str())))
            .collect()
    }
}

/// One local column, or several whose values are joined with spaces (the
/// lines of an address).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LocalColumns {
    One(String),
    Several(Vec<String>),
}

impl LocalColumns {
    /// The local column names, in order.
    pub fn names(&self) -> &[String] {
        match self {
            LocalColumns::One(c) => std::slice::from_ref(c),
            LocalColumns::Several(cs) => cs,
        }
    }
}

impl<'de> Deserialize<'de> for LocalColumns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LocalColumns;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name or a list of column names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LocalColumns, E> {
                Ok(LocalColumns::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LocalColumns, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(LocalColumns::Several(names))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A published column: a local column (renamed, optionally cast) or a SQL
/// expression over the source's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Published name.
    pub name: String,
    /// Local column it comes from; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// SQL expression over the source's columns, instead of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// Type in the common model; the local value is cast to it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub data_type: Option<ColumnType>,
}

/// Types a published column may be cast to, written in the configuration
/// as `string`, `int32`, `int64`, `float64`, `boolean`, `date`,
/// `timestamp` or `decimal(precision, scale)` (money: `decimal(15, 2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ColumnType {
    String,
    Int32,
    Int64,
    Float64,
    Boolean,
    Date,
    Timestamp,
    /// Exact decimal: `precision` digits (1 to 38), `scale` after the point.
    Decimal {
        precision: u8,
        scale: i8,
    },
}

impl ColumnType {
    /// The SQL type name this cast uses.
    pub fn sql_name(self) -> String {
        match self {
            ColumnType::String => "VARCHAR".into(),
            ColumnType::Int32 => "INT".into(),
            ColumnType::Int64 => "BIGINT".into(),
            ColumnType::Float64 => "DOUBLE".into(),
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::Date => "DATE".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision}, {scale})"),
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Int32 => f.write_str("int32"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision}, {scale})"),
        }
    }
}

impl From<ColumnType> for String {
    fn from(t: ColumnType) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for ColumnType {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let name = text.trim().to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => ColumnType::String,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "float64" => ColumnType::Float64,
            "boolean" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => {
                return parse_decimal(&name).ok_or_else(|| {
                    format!(
                        "unknown column type {text:?}: use string, int32, int64, float64, boolean, \
                     date, timestamp or decimal(precision, scale) with precision 1 to 38 \
                     and scale 0 to precision"
                    )
                });
            }
        })
    }
}

/// `decimal(p, s)` with 1 <= p <= 38 and 0 <= s <= p.
fn parse_decimal(name: &str) -> Option<ColumnType> {
    let inner = name
        .strip_prefix("decimal")?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let (precision, scale) = inner.split_once(',')?;
    let precision: u8 = precision.trim().parse().ok()?;
    let scale: i8 = scale.trim().parse().ok()?;
    let valid = (1..=38).contains(&precision) && scale >= 0 && scale as u8 <= precision;
    valid.then_some(ColumnType::Decimal { precision, scale })
}

/// Rows whose `column` holds any of `values` are removed at the scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutRule {
    pub column: String,
    pub values: Vec<String>,
    /// Which objection the rule records (default: the national data opt-out).
    #[serde(default, skip_serializing_if = "OptOutKind::is_national")]
    pub kind: OptOutKind,
}

/// One opt-out rule or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<OptOutRule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(OptOutRule),
        Many(Vec<OptOutRule>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(rule) => vec![rule],
        OneOrMany::Many(rules) => rules,
    })
}

/// The kinds of objection a node may hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutKind {
    /// The national data opt-out: no confidential data for research or
    /// planning, at any organisation (propagated through the coordinator).
    #[default]
    National,
    /// A type 1 opt-out: the GP record leaves the practice for direct care only.
    Type1,
}

impl OptOutKind {
    fn is_national(&self) -> bool {
        *self == OptOutKind::National
    }
}

pub use carrow_governance::purpose::ProjectPurpose;

/// How a table's freshness is measured: the newest value of a date column,
/// the source file's modification time, or a configured date. Exactly one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_time: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// Names usable as SQL identifiers without quoting: `[a-z_][a-z0-9_]*`.
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Name of the pseudonym column every personal table publishes.
pub const PID_COLUMN: &str = "pid";

impl NodeConfig {
    /// Checks every field and reports all problems at once, each naming its
    /// field path (`tables[1].columns[0].from`).
    pub fn validate(&self) -> Result<(), NodeError> {
        let mut problems = Vec::new();
        let mut bad = |field: String, msg: String| problems.push(format!("{field}: {msg}"));
        if !is_plain_identifier(&self.name) {
            bad(
                "name".into(),
                format!("{:?} must match [a-z_][a-z0-9_]*", self.name),
            );
        }
        if self.query_memory_mb < 16 {
            bad(
                "query_memory_mb".into(),
                format!("{} is too small; give at least 16", self.query_memory_mb),
            );
        }
        if self.query_time_limit_secs == 0 {
            bad(
                "query_time_limit_secs".into(),
                "must be greater than 0".into(),
            );
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "listen".into(),
                format!(
                    "{:?} is not an IP address and port such as 127.0.0.1:50051",
                    self.listen
                ),
            );
        }
        if self.projects.is_empty() {
            bad(
                "projects".into(),
                "list at least one project this node takes part in".into(),
            );
        }
        for (i, p) in self.projects.iter().enumerate() {
            if !is_plain_identifier(p) {
                bad(
                    format!("projects[{i}]"),
                    format!("{p:?} must match [a-z_][a-z0-9_]*"),
                );
            }
        }
        for (project, purpose) in &self.purposes {
            if !self.projects.contains(project) {
                bad(
                    format!("purposes.{project}"),
                    format!("{project:?} is not one of projects {:?}", self.projects),
                );
            }
            if purpose
                .opt_out_exempt
                .as_deref()
                .is_some_and(|b| b.trim().is_empty())
            {
                bad(
                    format!("purposes.{project}.opt_out_exempt"),
                    "name the basis of the exemption".into(),
                );
            }
        }
        if !self.projects.contains(&self.default_project) {
            bad(
                "default_project".into(),
                format!(
                    "{:?} is not one of projects {:?}",
                    self.default_project, self.projects
                ),
            );
        }
        let mut client_names = BTreeSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.name.is_empty() || !client_names.insert(c.name.as_str()) {
                bad(
                    format!("clients[{i}].name"),
                    format!("{:?} is empty or used twice", c.name),
                );
            }
            if c.token_sha256.len() != 64 || !c.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                bad(
                    format!("clients[{i}].token_sha256"),
                    "must be 64 hexadecimal characters (the SHA-256 of the token)".into(),
                );
            }
            for (j, p) in c.projects.iter().enumerate() {
                if !self.projects.contains(p) {
                    bad(
                        format!("clients[{i}].projects[{j}]"),
                        format!("{p:?} is not one of the node's projects"),
                    );
                }
            }
        }
        for (name, source) in &self.sources {
            if !is_plain_identifier(name) {
                bad(
                    format!("sources.{name}"),
                    "source names must match [a-z_][a-z0-9_]*".into(),
                );
            }
            if let SourceConfig::Postgres(pg) = source
                && pg.password_file.is_some() == pg.password_env.is_some()
            {
                bad(
                    format!("sources.{name}"),
                    "set exactly one of password_file and password_env".into(),
                );
            }
        }
        let mut table_names = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            if !table_names.insert(t.name.as_str()) {
                bad(
                    format!("tables[{i}].name"),
                    format!("{:?} is published twice", t.name),
                );
            }
            for problem in t.problems(&self.sources) {
                bad(format!("tables[{i}]{}", problem.0), problem.1);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NodeError::InvalidConfig(problems))
        }
    }

    /// The audit signing key's file.
    pub fn audit_key_file(&self) -> PathBuf {
        self.audit_key
            .clone()
            .unwrap_or_else(|| self.audit_log.with_extension("key"))
    }

    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.linkage_secret_file);
        fix(&mut self.audit_log);
        if let Some(p) = &mut self.audit_key {
            fix(p);
        }
        if let Some(tls) = &mut self.tls {
            tls.resolve_paths(base);
        }
        if let Some(p) = &mut self.opt_out_list {
            fix(p);
        }
        for source in self.sources.values_mut() {
            match source {
                SourceConfig::Csv { path, .. } | SourceConfig::Parquet { path } => fix(path),
                SourceConfig::Postgres(pg) => {
                    if let Some(p) = &mut pg.password_file {
                        fix(p);
                    }
                }
            }
        }
    }
}

impl TableConfig {
    /// Problems with this table, as (field suffix, message).
    fn problems(&self, sources: &BTreeMap<String, SourceConfig>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !is_plain_identifier(&self.name) {
            out.push((
                ".name".into(),
                format!("{:?} must match [a-z_][a-z0-9_]*", self.name),
            ));
        }
        match (&self.source, &self.sql) {
            (Some(s), None) if !sources.contains_key(s) => out.push((
                ".source".into(),
                format!(
                    "{s:?} is not one of the sources {:?}",
                    sources.keys().collect::<Vec<_>>()
                ),
            )),
            (Some(_), None) | (None, Some(_)) => {}
            _ => out.push((
                String::new(),
                "set exactly one of `source` and `sql`".into(),
            )),
        }
        for (kind, cols) in &self.identifiers.0 {
            if cols.names().is_empty() || cols.names().iter().any(|c| c.trim().is_empty()) {
                out.push((
                    format!(".identifiers.{}", kind.name()),
                    "name one or more local columns".into(),
                ));
            }
        }
        let identifiers = self.identifiers.columns();
        if self.personal && identifiers.is_empty() {
            out.push((
                ".identifiers".into(),
                "a personal table needs at least one identifier column to compute pid".into(),
            ));
        }
        if !self.personal && !identifiers.is_empty() {
            out.push((
                ".identifiers".into(),
                "a non-personal table must not declare identifiers".into(),
            ));
        }
        if self.columns.is_empty() {
            out.push((".columns".into(), "publish at least one column".into()));
        }
        let mut names = BTreeSet::new();
        for (j, c) in self.columns.iter().enumerate() {
            if !is_plain_identifier(&c.name)
                || c.name == PID_COLUMN
                || !names.insert(c.name.as_str())
            {
                out.push((
                    format!(".columns[{j}].name"),
                    format!(
                        "{:?} must match [a-z_][a-z0-9_]*, be unique and not be `pid`",
                        c.name
                    ),
                ));
            }
            if c.from.is_some() && c.expr.is_some() {
                out.push((
                    format!(".columns[{j}]"),
                    "set at most one of `from` and `expr`".into(),
                ));
            }
            let local = c.from.as_deref().unwrap_or(&c.name);
            if c.expr.is_none()
                && identifiers
                    .iter()
                    .any(|(_, id)| id.eq_ignore_ascii_case(local))
            {
                out.push((
                    format!(".columns[{j}].from"),
                    format!("{local:?} is an identifier column and is never published"),
                ));
            }
        }
        for (i, rule) in self.opt_out.iter().enumerate() {
            if rule.values.is_empty() {
                out.push((
                    format!(".opt_out[{i}].values"),
                    "list the values that mean the person opted out".into(),
                ));
            }
        }
        if let Some(f) = &self.freshness {
            let set = usize::from(f.column.is_some())
                + usize::from(f.file_time)
                + usize::from(f.as_of.is_some());
            if set != 1 {
                out.push((
                    ".freshness".into(),
                    "set exactly one of column, file_time and as_of".into(),
                ));
            }
            if let Some(d) = &f.as_of
                && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()
            {
                out.push((
                    ".freshness.as_of".into(),
                    format!("{d:?} is not a date YYYY-MM-DD"),
                ));
            }
        }
        out
    }
}

impl NodeConfig {
    /// The purpose of `project` (research and planning when not declared).
    pub fn purpose(&self, project: &str) -> ProjectPurpose {
        self.purposes.get(project).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "acute"
listen = "127.0.0.1:0"
linkage_secret_file = "linkage.key"
audit_log = "audit.jsonl"
projects = ["demo"]
default_project = "demo"

[[clients]]
name = "coordinator"
role = "coordinator"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[sources.pas_patients]
format = "parquet"
path = "pas_patients.parquet"

[[tables]]
name = "patients"
source = "pas_patients"
identifiers = { nhs_number = "NHS_NO", family_name = "SURNAME" }
columns = [{ name = "sex", from = "GENDER", type = "string" }]
freshness = { as_of = "2026-10-31" }
"#;

    #[test]
    fn column_types_parse_with_decimals_and_name_the_bad_one() {
        let parse = |t: &str| ColumnType::try_from(t.to_string());
        assert_eq!(parse("int64"), Ok(ColumnType::Int64));
        assert_eq!(
            parse("decimal(15, 2)"),
            Ok(ColumnType::Decimal {
                precision: 15,
                scale: 2
            })
        );
        assert_eq!(
            parse("DECIMAL(38,0)"),
            Ok(ColumnType::Decimal {
                precision: 38,
                scale: 0
            })
        );
        for bad in [
            "decimal",
            "decimal(39, 2)",
            "decimal(5, 6)",
            "decimal(0,0)",
            "money",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("decimal(precision, scale)"),
                "{e}"
            );
        }
        // Round trip through the configuration's text.
        let t = ColumnType::Decimal {
            precision: 12,
            scale: 2,
        };
        assert_eq!(parse(&String::from(t)), Ok(t));
        let cfg: ColumnConfig =
            toml::from_str("name = \"price\"\ntype = \"decimal(12, 2)\"").unwrap();
        assert_eq!(cfg.data_type, Some(t));
    }

    #[test]
    fn opt_out_rules_come_one_or_many_with_their_kind() {
        #[derive(Deserialize)]
        struct Rules {
            #[serde(deserialize_with = "one_or_many")]
            opt_out: Vec<OptOutRule>,
        }
        let one: Rules =
            toml::from_str("opt_out = { column = \"ndo\", values = [\"Y\"] }").unwrap();
        assert_eq!(one.opt_out.len(), 1);
        assert_eq!(one.opt_out[0].kind, OptOutKind::National);
        let many: Rules = toml::from_str(
            "[[opt_out]]\ncolumn = \"ndo\"\nvalues = [\"Y\"]\n\
             [[opt_out]]\ncolumn = \"t1\"\nvalues = [\"dissent\"]\nkind = \"type1\"",
        )
        .unwrap();
        assert_eq!(many.opt_out[1].kind, OptOutKind::Type1);
        let err =
            toml::from_str::<Rules>("opt_out = { column = \"c\", values = [], kind = \"x\" }")
                .err()
                .unwrap();
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn a_purpose_names_a_served_project_and_its_basis() {
        let mut cfg: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.purposes.insert(
            "elsewhere".into(),
            ProjectPurpose {
                opt_out_exempt: Some(" ".into()),
                direct_care: false,
            },
        );
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("purposes.elsewhere: \"elsewhere\" is not one of projects"),
            "{err}"
        );
        assert!(
            err.contains("purposes.elsewhere.opt_out_exempt: name the basis"),
            "{err}"
        );
    }

    #[test]
    fn example_parses_and_validates() {
        let mut cfg: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.validate().unwrap();
        cfg.resolve_paths(Path::new("/etc/carrow"));
        assert_eq!(cfg.audit_log, Path::new("/etc/carrow/audit.jsonl"));
        match &cfg.sources["pas_patients"] {
            SourceConfig::Parquet { path } => {
                assert_eq!(path, Path::new("/etc/carrow/pas_patients.parquet"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = EXAMPLE.replace("listen =", "lisen =");
        let err = toml::from_str::<NodeConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn identifier_kinds_take_one_column_or_several_and_unknown_kinds_are_named() {
        let text = EXAMPLE.replace(
            r#"identifiers = { nhs_number = "NHS_NO", family_name = "SURNAME" }"#,
            r#"identifiers = { local_id = "MRN", address = ["LINE1", "LINE2"], postal_code = "ZIP" }"#,
        );
        let cfg: NodeConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        let ids = &cfg.tables[0].identifiers;
        assert_eq!(
            ids.get(IdentifierKind::Address).unwrap().names(),
            ["LINE1", "LINE2"]
        );
        assert_eq!(
            ids.columns(),
            vec![
                (IdentifierKind::LocalId, "MRN"),
                (IdentifierKind::PostalCode, "ZIP"),
                (IdentifierKind::Address, "LINE1"),
                (IdentifierKind::Address, "LINE2"),
            ]
        );
        let text = EXAMPLE.replace("nhs_number = \"NHS_NO\"", "nhs = \"NHS_NO\"");
        let err = toml::from_str::<NodeConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("nhs") && err.contains("national_id"), "{err}");
        let text = EXAMPLE.replace("nhs_number = \"NHS_NO\"", "address = []");
        let cfg: NodeConfig = toml::from_str(&text).unwrap();
        let NodeError::InvalidConfig(problems) = cfg.validate().unwrap_err() else {
            panic!("expected InvalidConfig")
        };
        assert!(
            problems.iter().any(|p| p.contains("identifiers.address")),
            "{problems:?}"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let mut cfg: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.listen = "nowhere".into();
        cfg.default_project = "other".into();
        cfg.clients[0].token_sha256 = "abc".into();
        cfg.tables[0].source = Some("missing".into());
        cfg.tables[0].columns.push(ColumnConfig {
            name: "nhs".into(),
            from: Some("NHS_NO".into()),
            expr: None,
            data_type: None,
        });
        cfg.tables[0].columns.push(ColumnConfig {
            name: "pid".into(),
            from: None,
            expr: None,
            data_type: None,
        });
        let NodeError::InvalidConfig(problems) = cfg.validate().unwrap_err() else {
            panic!("expected InvalidConfig")
        };
        let text = problems.join("\n");
        for field in [
            "listen:",
            "default_project:",
            "clients[0].token_sha256:",
            "tables[0].source:",
            "tables[0].columns[1].from:",
            "tables[0].columns[2].name:",
        ] {
            assert!(text.contains(field), "missing {field} in\n{text}");
        }
        assert_eq!(problems.len(), 6, "{text}");
    }
}
