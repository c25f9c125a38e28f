//! The coordinator's configuration: where it listens, where it keeps its
//! state, and the nodes it federates. It has no place for the linkage secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use carrow_governance::disclosure::Overrides;
use carrow_governance::{Preset, Role, Rules};

use crate::CoordinatorError;

/// Schema name of the union tables over nodes; no node may take it.
pub const COMBINED_SCHEMA: &str = "combined";

/// The coordinator's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the client-facing Flight SQL server listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the operations listener (`/health`, `/metrics`); none: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<String>,
    /// The governance console (web pages for the board and researchers);
    /// none: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    /// TLS on the client listener (users' passwords cross it); with
    /// `client_ca_file`, clients must present a certificate that CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<carrow_sql::tls::ServerTls>,
    /// Directory for the audit log and the requests database.
    pub state_dir: PathBuf,
    /// The Ed25519 key signing the audit log's checkpoints (64 hex digits,
    /// mode 0600); default `state_dir/audit.key`, made at first start.
    #[serde(default)]
    pub audit_key: Option<PathBuf>,
    /// Project used when a query names none.
    pub default_project: String,
    /// Milliseconds to wait for a node connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Milliseconds a node may take to answer one fragment.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// Seconds between refreshes of the node catalog (0: only at start).
    #[serde(default = "default_catalog_refresh_secs")]
    pub catalog_refresh_secs: u64,
    /// Memory for all queries together (joins, sorts, aggregates), in MiB:
    /// queries run concurrently while their pools fit in it, and wait
    /// their turn beyond.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: usize,
    /// Memory one query may use, in MiB; beyond it the query spills to
    /// disk or fails (never the coordinator).
    #[serde(default = "default_query_memory_mb")]
    pub query_memory_mb: usize,
    /// Seconds one query may run, from its FlightInfo to its last batch.
    #[serde(default = "default_query_time_limit_secs")]
    pub query_time_limit_secs: u64,
    /// Queries one user may run at once; more wait their turn.
    #[serde(default = "default_max_queries_per_user")]
    pub max_queries_per_user: usize,
    /// The most a result held in memory before sending (a partial or
    /// disclosure-controlled result is computed whole first), in MiB.
    #[serde(default = "default_held_result_mb")]
    pub held_result_mb: usize,
    /// Projects' purposes, by project: the basis of an exemption from the
    /// national data opt-out, shown with requests and recorded with every
    /// query (nodes enforce their own copy).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub purposes: std::collections::BTreeMap<String, carrow_governance::purpose::ProjectPurpose>,
    /// The nodes this coordinator federates.
    pub nodes: Vec<NodeEndpoint>,
    /// Users who may query the coordinator.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Disclosure control of planners' (and aggregate research) results.
    #[serde(default)]
    pub disclosure: DisclosureConfig,
    /// Link records across nodes with the nodes' linkage tokens (default
    /// true); when false, records join on `pid` alone.
    #[serde(default = "default_true")]
    pub link_records: bool,
    /// A linkage rebuild that leaves a group of more records than this is
    /// logged as a warning (one person has a record or two per node).
    #[serde(default = "default_link_group_warning_size")]
    pub link_group_warning_size: usize,
}

fn default_link_group_warning_size() -> usize {
    10
}

fn default_true() -> bool {
    true
}

/// A user: Basic auth with `name` and a password kept here only as a salted
/// argon2id hash (`carrow users hash-password` makes one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// planner, researcher or governance.
    pub role: Role,
    /// The password's argon2id hash, as a PHC string (`$argon2id$...`).
    pub password_hash: String,
    /// Projects the user may query (planners) or submit requests for
    /// (researchers); none listed: the default project only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

/// Disclosure control: a preset, optionally with its parameters overridden.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosureConfig {
    /// carrow (fewer than 10 suppressed, round to 5), datashield (3),
    /// opensafely (7 or fewer redacted, round to 5) or pcornet (11).
    #[serde(default)]
    pub preset: Preset,
    /// Cells of fewer persons than this are suppressed (overrides the preset).
    pub min_persons: Option<u64>,
    /// Released values are rounded to multiples of this many units.
    pub round_to: Option<u64>,
    /// The sticky margin above `min_persons`: Binomial(this, 1/2) persons.
    pub threshold_margin: Option<u32>,
    /// (n,k) dominance rule for sums and averages.
    pub dominance_n: Option<u32>,
    /// (n,k) dominance rule, in percent.
    pub dominance_k: Option<u32>,
    /// The p% rule for sums and averages.
    pub p_percent: Option<u32>,
    /// The secret record keys are derived from (64 hex characters, mode
    /// 0600); default `state_dir/cell-key.secret`, made at first start.
    pub cell_key_secret_file: Option<PathBuf>,
    /// Parameters weaker than every preset's are refused unless this is
    /// set (the board's decision, written down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_weaker_than_presets: bool,
}

impl DisclosureConfig {
    /// The rules this configuration gives.
    pub fn rules(&self) -> Result<Rules, CoordinatorError> {
        let overrides = Overrides {
            min_persons: self.min_persons,
            round_to: self.round_to,
            threshold_margin: self.threshold_margin,
            dominance_n: self.dominance_n,
            dominance_k: self.dominance_k,
            p_percent: self.p_percent,
        };
        Rules::new(self.preset, overrides)
            .map_err(|e| CoordinatorError::InvalidConfig(vec![e.to_string()]))
    }
}

fn default_listen() -> String {
    "127.0.0.1:50050".to_string()
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_query_timeout_ms() -> u64 {
    60_000
}

/// The governance console's listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address the console's HTTP(S) server listens on.
    pub listen: String,
    /// TLS, as for the client listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<carrow_sql::tls::ServerTls>,
    /// Minutes a console session lasts (default 60).
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u64,
    /// Copies of the nodes' audit logs the board holds (node name to
    /// file): the audit page verifies and reconciles them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_logs: std::collections::BTreeMap<String, PathBuf>,
}

fn default_session_minutes() -> u64 {
    60
}

/// How to reach one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEndpoint {
    /// Schema name of the node's tables (`acute`).
    pub name: String,
    /// Flight SQL address (`http://127.0.0.1:50051`).
    pub url: String,
    /// Name the coordinator logs in to the node with.
    #[serde(default = "default_user")]
    pub user: String,
    /// File holding the token the node expects (mode 0600).
    pub token_file: PathBuf,
    /// TLS to the node (`url` then starts `https://`): the CA that signed
    /// the node's certificate, and for mutual TLS the coordinator's own
    /// certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<carrow_sql::tls::ClientTls>,
}

fn default_catalog_refresh_secs() -> u64 {
    60
}

fn default_memory_limit_mb() -> usize {
    2_048
}

fn default_query_memory_mb() -> usize {
    512
}

fn default_query_time_limit_secs() -> u64 {
    300
}

fn default_max_queries_per_user() -> usize {
    4
}

fn default_held_result_mb() -> usize {
    256
}

fn default_user() -> String {
    "coordinator".to_string()
}

impl CoordinatorConfig {
    /// Checks every field and reports all problems at once, each naming its path.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let mut problems = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "listen: {:?} is not an IP address and port such as 127.0.0.1:50050",
                self.listen
            ));
        }
        if self.default_project.is_empty() {
            problems.push("default_project: must not be empty".to_string());
        }
        if self.memory_limit_mb < 64 {
            problems.push(format!(
                "memory_limit_mb: {} is too small; give at least 64",
                self.memory_limit_mb
            ));
        }
        if self.query_memory_mb < 16 || self.query_memory_mb > self.memory_limit_mb {
            problems.push(format!(
                "query_memory_mb: {} must be at least 16 and at most memory_limit_mb ({})",
                self.query_memory_mb, self.memory_limit_mb
            ));
        }
        for (field, value) in [
            ("max_queries_per_user", self.max_queries_per_user as u64),
            ("held_result_mb", self.held_result_mb as u64),
            ("query_time_limit_secs", self.query_time_limit_secs),
        ] {
            if value == 0 {
                problems.push(format!("{field}: must be greater than 0"));
            }
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("query_timeout_ms", self.query_timeout_ms),
        ] {
            if value == 0 {
                problems.push(format!("{field}: must be greater than 0"));
            }
        }
        if self.nodes.is_empty() {
            problems.push("nodes: configure at least one node".to_string());
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let plain = n
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase())
                && n.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !plain || n.name == COMBINED_SCHEMA || !names.insert(n.name.as_str()) {
                problems.push(format!(
                    "nodes[{i}].name: {:?} must match [a-z][a-z0-9_]*, be unique and not be `{COMBINED_SCHEMA}`",
                    n.name
                ));
            }
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                problems.push(format!(
                    "nodes[{i}].url: {:?} must start with http:// or https://",
                    n.url
                ));
            }
        }
        let mut users = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() || !users.insert(u.name.as_str()) {
                problems.push(format!(
                    "users[{i}].name: {:?} is empty or used twice",
                    u.name
                ));
            }
            if let Err(e) = carrow_governance::roles::check_hash(&u.password_hash) {
                problems.push(format!("users[{i}].password_hash: {e}"));
            }
        }
        match self.disclosure.rules() {
            Err(CoordinatorError::InvalidConfig(mut found)) => problems.append(&mut found),
            Ok(rules) if !self.disclosure.allow_weaker_than_presets => {
                problems.extend(rules.weaker_than_presets().into_iter().map(|weak| {
                    format!("{weak}: set disclosure.allow_weaker_than_presets = true to mean it")
                }));
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CoordinatorError::InvalidConfig(problems))
        }
    }

    /// The cell-key secret's file.
    pub fn cell_key_secret_file(&self) -> PathBuf {
        self.disclosure
            .cell_key_secret_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("cell-key.secret"))
    }

    /// The audit signing key's file.
    pub fn audit_key_file(&self) -> PathBuf {
        self.audit_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.key"))
    }

    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.state_dir.is_relative() {
            self.state_dir = base.join(&self.state_dir);
        }
        if let Some(file) = &mut self.audit_key
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(file) = &mut self.disclosure.cell_key_secret_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        for n in &mut self.nodes {
            if n.token_file.is_relative() {
                n.token_file = base.join(&n.token_file);
            }
            if let Some(tls) = &mut n.tls {
                tls.resolve_paths(base);
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.resolve_paths(base);
        }
        if let Some(console) = &mut self.console {
            if let Some(tls) = &mut console.tls {
                tls.resolve_paths(base);
            }
            for path in console.node_logs.values_mut() {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }
}

impl CoordinatorConfig {
    /// Opens every file the configuration refers to without serving: each
    /// node's token file and the cell-key secret, if it exists yet. Returns
    /// each problem, naming the key and the file (for `--check`).
    pub fn check_references(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match std::fs::read_to_string(&node.token_file) {
                Ok(token) if token.trim().is_empty() => problems.push(format!(
                    "nodes[{i}].token_file: {} is empty",
                    node.token_file.display()
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!(
                    "nodes[{i}].token_file: cannot read {}: {e}",
                    node.token_file.display()
                )),
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(tls) = &node.tls {
                if let Err(e) = tls.load() {
                    problems.push(format!("nodes[{i}].tls: {e}"));
                }
                if let Some(p) = tls.problem() {
                    problems.push(format!("nodes[{i}].tls: {p}"));
                }
            }
        }
        if let Some(Err(e)) = self.tls.as_ref().map(|t| t.load()) {
            problems.push(format!("tls: {e}"));
        }
        if let Some(console) = &self.console {
            if let Some(Err(e)) = console.tls.as_ref().map(|t| t.load()) {
                problems.push(format!("console.tls: {e}"));
            }
            if console.listen.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "console.listen: {:?} is not an IP address and port",
                    console.listen
                ));
            }
        }
        let cell_key = self.cell_key_secret_file();
        if cell_key.exists()
            && let Err(e) = std::fs::read(&cell_key)
        {
            problems.push(format!(
                "disclosure.cell_key_secret_file: cannot read {}: {e}",
                cell_key.display()
            ));
        }
        problems
    }

    /// Whether `user` may query `project`, or why not: a user with no
    /// `projects` listed may use the default project only (unless it is
    /// exempt from the national data opt-out, which needs naming).
    pub fn may_use(&self, user: &str, project: &str) -> Result<(), String> {
        let listed = self
            .users
            .iter()
            .find(|u| u.name == user)
            .map(|u| u.projects.as_slice())
            .unwrap_or_default();
        if listed.iter().any(|p| p == project) {
            return Ok(());
        }
        if !listed.is_empty() {
            return Err(format!(
                "{user} may query projects {} only, not {project}",
                listed.join(", ")
            ));
        }
        if let Some(basis) = self.opt_out_exemption(project) {
            return Err(format!(
                "project {project} is exempt from the national data opt-out ({basis}): \
                 only users the configuration names for it may query it"
            ));
        }
        if project != self.default_project {
            return Err(format!(
                "{user} may query the default project {} only, not {project}: \
                 the configuration lists no other project for them",
                self.default_project
            ));
        }
        Ok(())
    }

    /// The basis on which `project` is exempt from the national data
    /// opt-out, if it is.
    pub fn opt_out_exemption(&self, project: &str) -> Option<&str> {
        self.purposes.get(project)?.opt_out_exempt.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
state_dir = "state"
default_project = "demo"
[[nodes]]
name = "acute"
url = "http://127.0.0.1:50051"
token_file = "acute.token"
"#;

    #[test]
    fn example_validates_with_defaults() {
        let mut cfg: CoordinatorConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connect_timeout_ms, 2_000);
        assert_eq!(cfg.nodes[0].user, "coordinator");
        cfg.resolve_paths(Path::new("/srv"));
        assert_eq!(cfg.nodes[0].token_file, Path::new("/srv/acute.token"));
    }

    #[test]
    fn every_problem_is_named() {
        let mut cfg: CoordinatorConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.query_timeout_ms = 0;
        cfg.nodes.push(cfg.nodes[0].clone());
        cfg.nodes[1].url = "127.0.0.1:1".into();
        let CoordinatorError::InvalidConfig(problems) = cfg.validate().unwrap_err() else {
            panic!("expected InvalidConfig")
        };
        let text = problems.join("\n");
        for field in ["query_timeout_ms:", "nodes[1].name:", "nodes[1].url:"] {
            assert!(text.contains(field), "missing {field} in\n{text}");
        }
        assert_eq!(problems.len(), 3, "{text}");
    }

    #[test]
    fn users_are_bound_to_their_listed_projects_or_the_default() {
        let mut cfg: CoordinatorConfig = toml::from_str(EXAMPLE).unwrap();
        let user = |name: &str, projects: &[&str]| UserConfig {
            name: name.into(),
            role: Role::Planner,
            password_hash: String::new(),
            projects: projects.iter().map(|p| p.to_string()).collect(),
        };
        cfg.users = vec![
            user("ann", &[]),
            user("bob", &["cancer", "demo"]),
            user("cat", &["care"]),
        ];
        cfg.purposes.insert(
            "care".into(),
            carrow_governance::purpose::ProjectPurpose {
                opt_out_exempt: Some("direct care".into()),
                direct_care: true,
            },
        );
        assert!(cfg.may_use("ann", "demo").is_ok());
        let err = cfg.may_use("ann", "cancer").unwrap_err();
        assert!(
            err.contains("default project demo only, not cancer"),
            "{err}"
        );
        assert!(cfg.may_use("ann", "care").unwrap_err().contains("exempt"));
        assert!(cfg.may_use("bob", "cancer").is_ok() && cfg.may_use("bob", "demo").is_ok());
        assert!(
            cfg.may_use("bob", "care")
                .unwrap_err()
                .contains("cancer, demo only")
        );
        assert!(cfg.may_use("cat", "care").is_ok());
        assert!(cfg.may_use("cat", "demo").is_err());
        assert!(cfg.may_use("nobody", "cancer").is_err());
    }
}
