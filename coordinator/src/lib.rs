//! The Carrow coordinator: one SQL endpoint over every node. It plans
//! DataFusion SQL across nodes, sends each node the part of the query it can
//! answer as SQL, links records across organisations and joins them on
//! person keys, and applies governance to what it returns.
//!
//! - [`config`]: the coordinator's TOML configuration;
//! - [`remote`]: nodes as DataFusion tables, and fragments sent to them;
//! - [`combined`]: union tables over the nodes publishing the same name;
//! - [`pushdown`]: the rule that sends single-node subtrees to their node whole;
//! - [`split_aggregate`]: partial aggregates per node under a union;
//! - [`disclosure`]: disclosure control of planners' results;
//! - [`known_catalog`]: each node's last catalog, kept across restarts;
//! - [`last_query`]: the session view of the last query's coverage and disclosure;
//! - [`linkage`]: the linkage stage mapping pids to person keys;
//! - [`service`]: the Flight SQL backend, roles, requests and the audit log.

pub mod combined;
pub mod config;
pub mod console;
pub mod disclosure;
pub mod known_catalog;
pub mod last_query;
pub mod linkage;
pub mod pushdown;
pub mod remote;
pub mod service;
pub mod split_aggregate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use config::CoordinatorConfig;
pub use service::{CoordinatorBackend, CoordinatorState};

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid coordinator configuration:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
    #[error("cannot read node token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the Flight SQL server stopped: {0}")]
    Serve(String),
    #[error("state directory: {0}")]
    State(String),
    #[error(transparent)]
    Tls(#[from] carrow_sql::tls::TlsError),
}

/// Reads the configuration's `[[nodes]]` again (blocking: reads files).
pub type NodesReload = Arc<dyn Fn() -> Result<Vec<config::NodeEndpoint>, String> + Send + Sync>;

/// A coordinator serving on a socket.
pub struct RunningCoordinator {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Its state: the node catalog.
    pub state: Arc<CoordinatorState>,
    /// The operations listener's address, if it has one.
    pub ops_addr: Option<SocketAddr>,
    /// The governance console's address, if it has one.
    pub console_addr: Option<SocketAddr>,
    server: carrow_sql::flight::RunningServer,
    ops: Option<carrow_sql::ops::HttpServer>,
    console: Option<carrow_sql::ops::HttpServer>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl RunningCoordinator {
    /// Builds the catalog from the nodes and starts serving on `config.listen`.
    pub async fn start(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        Self::start_with_reload(config, None).await
    }

    /// [`start`](Self::start), re-reading the `[[nodes]]` of the
    /// configuration with `reload` before each catalog refresh: an
    /// organisation added there joins at the next refresh.
    pub async fn start_with_reload(
        config: CoordinatorConfig,
        reload: Option<NodesReload>,
    ) -> Result<Self, CoordinatorError> {
        let listen = config.listen.clone();
        let tls = config
            .tls
            .as_ref()
            .map(carrow_sql::tls::ServerTls::load)
            .transpose()?;
        let state = Arc::new(CoordinatorState::build(config).await?);
        let endpoint =
            carrow_sql::FlightSqlEndpoint::new(Arc::new(CoordinatorBackend::new(state.clone())));
        let server = carrow_sql::flight::RunningServer::start(endpoint, &listen, tls)
            .await
            .map_err(|source| CoordinatorError::Bind {
                addr: listen,
                source,
            })?;
        tracing::info!(addr = %server.addr, "coordinator serving Flight SQL");
        let ops = match &state.config().ops_listen {
            Some(listen) => {
                let ops = carrow_sql::ops::serve(listen, state.clone())
                    .await
                    .map_err(|source| CoordinatorError::Bind {
                        addr: listen.clone(),
                        source,
                    })?;
                tracing::info!(addr = %ops.addr, "ops listener serving /health and /metrics");
                Some(ops)
            }
            None => None,
        };
        let console = console::start(state.clone()).await?;
        let refresher = (state.refresh_interval() > 0).then(|| {
            let state = state.clone();
            tokio::spawn(async move {
                let period = std::time::Duration::from_secs(state.refresh_interval());
                loop {
                    tokio::time::sleep(period).await;
                    if let Some(reload) = reload.clone() {
                        match tokio::task::spawn_blocking(move || reload()).await {
                            Ok(Ok(endpoints)) => {
                                state.add_nodes(&endpoints);
                            }
                            Ok(Err(e)) => tracing::warn!(error = %e,
                                "cannot read the configuration again: the federation's nodes are unchanged"),
                            Err(e) => tracing::warn!(error = %e, "reading the configuration stopped"),
                        }
                    }
                    if let Err(e) = state.refresh().await {
                        tracing::error!(error = %e, "catalog refresh failed");
                    }
                }
            })
        });
        Ok(Self {
            addr: server.addr,
            state,
            ops_addr: ops.as_ref().map(|o| o.addr),
            console_addr: console.as_ref().map(|c| c.addr),
            server,
            ops,
            console,
            refresher,
        })
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) -> Result<(), CoordinatorError> {
        if let Some(refresher) = &self.refresher {
            refresher.abort();
        }
        if let Some(ops) = self.ops {
            ops.stop().await;
        }
        if let Some(console) = self.console {
            console.stop().await;
        }
        let stopped = self.server.stop().await.map_err(CoordinatorError::Serve);
        self.state.record_stop();
        stopped
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), CoordinatorError> {
        self.server.wait().await.map_err(CoordinatorError::Serve)
    }
}
