//! The Carrow node: runs beside one organisation's data and publishes a
//! declared set of tables through Arrow Flight SQL, with person identifiers
//! replaced by project-scoped pseudonyms before anything leaves.
//!
//! - [`config`]: the node's TOML configuration and its validation;
//! - [`sources`], [`postgres`]: the organisation's local tables;
//! - [`publish`]: the boundary, a `TableProvider` per published table;
//! - [`pid`]: the pseudonym and opt-out functions inside the boundary;
//! - [`policy`]: callers, projects and refusals that name their rule;
//! - [`service`]: the Flight SQL backend and the node's audit log.

pub mod config;
pub mod pid;
pub mod policy;
pub mod postgres;
pub mod publish;
pub mod service;
pub mod sources;
pub mod tokens;
pub mod withheld;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::NodeConfig;
pub use service::{NodeBackend, NodeState};

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node configuration:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
    #[error(transparent)]
    Secret(#[from] carrow_linkage::LinkageError),
    #[error(transparent)]
    Audit(#[from] carrow_governance::GovernanceError),
    #[error("opt-out list: {0}")]
    OptOutList(String),
    #[error("withheld list: {0}")]
    Withheld(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the Flight SQL server stopped: {0}")]
    Serve(String),
    #[error(transparent)]
    Tls(#[from] carrow_sql::tls::TlsError),
}

/// A node serving on a socket.
pub struct RunningNode {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Its state: published tables, audit log.
    pub state: Arc<NodeState>,
    /// The operations listener's address, if it has one.
    pub ops_addr: Option<SocketAddr>,
    server: carrow_sql::flight::RunningServer,
    ops: Option<carrow_sql::ops::HttpServer>,
}

impl RunningNode {
    /// Builds the node from `config` and starts serving on `config.listen`.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let listen = config.listen.clone();
        let tls = config
            .tls
            .as_ref()
            .map(carrow_sql::tls::ServerTls::load)
            .transpose()?;
        let state = Arc::new(NodeState::build(config).await?);
        let endpoint =
            carrow_sql::FlightSqlEndpoint::new(Arc::new(NodeBackend::new(state.clone())));
        let server = carrow_sql::flight::RunningServer::start(endpoint, &listen, tls)
            .await
            .map_err(|source| NodeError::Bind {
                addr: listen,
                source,
            })?;
        tracing::info!(node = %state.name(), addr = %server.addr, "serving Flight SQL");
        let ops = match &state.config().ops_listen {
            Some(listen) => {
                let ops = carrow_sql::ops::serve(listen, state.clone())
                    .await
                    .map_err(|source| NodeError::Bind {
                        addr: listen.clone(),
                        source,
                    })?;
                tracing::info!(node = %state.name(), addr = %ops.addr, "ops listener serving /health and /metrics");
                Some(ops)
            }
            None => None,
        };
        Ok(Self {
            addr: server.addr,
            state,
            ops_addr: ops.as_ref().map(|o| o.addr),
            server,
            ops,
        })
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) -> Result<(), NodeError> {
        if let Some(ops) = self.ops {
            ops.stop().await;
        }
        self.server.stop().await.map_err(NodeError::Serve)
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        self.server.wait().await.map_err(NodeError::Serve)
    }
}
