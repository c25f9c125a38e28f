//! PostgreSQL sources, through datafusion-table-providers: DataFusion pushes
//! the query's filters and projections into the SQL it sends to PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use datafusion_table_providers_postgres::PostgresTableFactory;
use datafusion_table_providers_postgres::pool::PostgresConnectionPool;
use secrecy::SecretString;

use crate::config::PostgresSource;

/// The password of a source, from its file or environment variable.
fn password(pg: &PostgresSource) -> Result<SecretString, String> {
    if let Some(path) = &pg.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
        return Ok(SecretString::from(text.trim().to_string()));
    }
    if let Some(var) = &pg.password_env {
        let value = std::env::var(var)
            .map_err(|_| format!("environment variable {var} (the password) is not set"))?;
        return Ok(SecretString::from(value));
    }
    Err("no password_file or password_env".to_string())
}

/// Registers a PostgreSQL table as the source `name`.
pub async fn register(ctx: &SessionContext, name: &str, pg: &PostgresSource) -> Result<(), String> {
    let params: HashMap<String, SecretString> = [
        ("host", SecretString::from(pg.host.clone())),
        ("port", SecretString::from(pg.port.to_string())),
        ("db", SecretString::from(pg.database.clone())),
        ("user", SecretString::from(pg.user.clone())),
        ("pass", password(pg)?),
        ("sslmode", SecretString::from(pg.sslmode.clone())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let server = format!(
        "PostgreSQL {}@{}:{}/{}",
        pg.user, pg.host, pg.port, pg.database
    );
    let pool = PostgresConnectionPool::new(params)
        .await
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let factory = PostgresTableFactory::new(Arc::new(pool));
    let provider = factory
        .table_provider(TableReference::from(pg.table.as_str()))
        .await
        .map_err(|e| format!("cannot read table {} on {server}: {e}", pg.table))?;
    ctx.register_table(name, provider)
        .map(|_| ())
        .map_err(|e| format!("cannot register {name}: {e}"))
}
