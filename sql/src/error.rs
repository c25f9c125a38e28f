//! Errors a query can end in, and their one mapping to gRPC status codes.

use datafusion::error::DataFusionError;
use tonic::{Code, Status};

/// Why a query did not run. Messages name what was wrong and never carry
/// secrets or raw identifiers.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A governance or policy rule refused the query; `rule` names it.
    #[error("refused by rule `{rule}`: {detail}")]
    Refused { rule: String, detail: String },
    /// Something the query names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The SQL could not be parsed or planned.
    #[error("{0}")]
    Invalid(String),
    /// A server the query needs is unreachable or timed out.
    #[error("{0}")]
    Unavailable(String),
    /// Planning or execution failed inside DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A fault of the server itself.
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A refusal naming `rule`.
    pub fn refused(rule: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Refused {
            rule: rule.into(),
            detail: detail.into(),
        }
    }

    /// The outcome word recorded in audit logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Refused { .. } | QueryError::Unauthenticated(_) => "refused",
            _ => "failed",
        }
    }
}

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Unauthenticated(m) => Status::unauthenticated(m),
            QueryError::Refused { .. } => Status::permission_denied(err.to_string()),
            QueryError::NotFound(m) => Status::not_found(m),
            QueryError::Invalid(m) => Status::invalid_argument(m),
            QueryError::Unavailable(m) => Status::unavailable(m),
            QueryError::DataFusion(e) => status_from_datafusion(&e),
            QueryError::Internal(m) => Status::internal(m),
        }
    }
}

/// The gRPC code for a DataFusion error: the one exhaustive mapping.
pub fn code_of(err: &DataFusionError) -> Code {
    match err {
        DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_) => Code::InvalidArgument,
        DataFusionError::Plan(message) => {
            if message.contains("not found") {
                Code::NotFound
            } else {
                Code::InvalidArgument
            }
        }
        DataFusionError::NotImplemented(_) => Code::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        DataFusionError::External(inner) => match inner.downcast_ref::<Status>() {
            Some(status) => status.code(),
            None => Code::Internal,
        },
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            code_of(inner)
        }
        DataFusionError::Shared(inner) => code_of(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(Code::Internal, code_of),
        DataFusionError::ArrowError(..)
        | DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Substrait(_)
        | DataFusionError::Ffi(_) => Code::Internal,
    }
}

/// A status for a DataFusion error, with DataFusion's message.
pub fn status_from_datafusion(err: &DataFusionError) -> Status {
    Status::new(code_of(err), err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan_error(sql: &str) -> DataFusionError {
        SessionContext::new().sql(sql).await.unwrap_err()
    }

    #[tokio::test]
    async fn planning_errors_get_the_right_codes() {
        assert_eq!(code_of(&plan_error("SELEC 1").await), Code::InvalidArgument);
        assert_eq!(
            code_of(&plan_error("SELECT * FROM no_such_table").await),
            Code::NotFound
        );
        assert_eq!(
            code_of(&plan_error("SELECT no_such_column").await),
            Code::InvalidArgument
        );
        let wrapped = DataFusionError::Context(
            "x".into(),
            Box::new(DataFusionError::ResourcesExhausted("m".into())),
        );
        assert_eq!(code_of(&wrapped), Code::ResourceExhausted);
        let remote = DataFusionError::External(Box::new(Status::unavailable("node down")));
        assert_eq!(code_of(&remote), Code::Unavailable);
        let refused: Status = QueryError::refused("published columns", "no").into();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("`published columns`"));
    }
}
