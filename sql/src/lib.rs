//! DataFusion and Arrow Flight SQL glue shared by Carrow nodes and the
//! coordinator: the Flight SQL service, statement checks, client-facing
//! types, and the mapping of errors to gRPC status codes.

pub mod auth;
pub mod blocking;
pub mod boundary;
pub mod cooperative;
pub mod error;
pub mod flight;
pub mod ops;
pub mod statement;
pub mod tls;

pub use error::QueryError;
pub use flight::{Backend, Caller, FlightSqlEndpoint, QueryScope, Released, RequestMeta, Stage};
