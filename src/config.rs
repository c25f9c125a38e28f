//! Configuration loading: serde defaults, then the TOML file, then
//! `CARROW_<SERVICE>__*` environment variables; then each crate's `validate()`.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Loads `path` with environment overrides under `prefix` (for example
/// `CARROW_NODE__LISTEN` overrides `listen`).
fn load<T: DeserializeOwned>(path: &Path, prefix: &str) -> anyhow::Result<T> {
    if !path.is_file() {
        anyhow::bail!(
            "configuration file {} does not exist or is not a file",
            path.display()
        );
    }
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(prefix)
                .prefix_separator("__")
                .separator("__"),
        )
        .build()
        .and_then(|c| c.try_deserialize::<T>())
        .with_context(|| {
            format!(
                "configuration file {} (or a {prefix}__* variable) is malformed",
                path.display()
            )
        })
}

fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Loads and validates a node configuration; relative paths are resolved
/// against the file's directory.
pub fn load_node(path: &Path) -> anyhow::Result<carrow_node::NodeConfig> {
    let mut cfg: carrow_node::NodeConfig = load(path, "CARROW_NODE")?;
    cfg.validate()
        .with_context(|| format!("in {}", path.display()))?;
    cfg.resolve_paths(base_dir(path));
    Ok(cfg)
}

/// Loads and validates a coordinator configuration.
pub fn load_coordinator(path: &Path) -> anyhow::Result<carrow_coordinator::CoordinatorConfig> {
    let mut cfg: carrow_coordinator::CoordinatorConfig = load(path, "CARROW_COORDINATOR")?;
    cfg.validate()
        .with_context(|| format!("in {}", path.display()))?;
    cfg.resolve_paths(base_dir(path));
    Ok(cfg)
}
