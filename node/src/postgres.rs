//! PostgreSQL sources.

use datafusion::prelude::SessionContext;

use crate::config::PostgresSource;

/// Registers a PostgreSQL table as a source.
pub async fn register(
    _ctx: &SessionContext,
    name: &str,
    pg: &PostgresSource,
) -> Result<(), String> {
    Err(format!(
        "source {name}: PostgreSQL table {} is not supported yet",
        pg.table
    ))
}
