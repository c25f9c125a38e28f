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
    /// A server the query needs is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The query, or a server it needs, took longer than its time limit.
    #[error("{0}")]
    TimedOut(String),
    /// The query needs more than a limit allows (memory, concurrent queries).
    #[error("{0}")]
    ResourceExhausted(String),
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

    /// The error a remote server's `status` means, its message prefixed
    /// with `context` (which server, doing what). The code decides the
    /// kind, never the message's words.
    pub fn from_status(status: &Status, context: &str) -> Self {
        let message = format!("{context}: {}", status.message());
        match status.code() {
            Code::Unauthenticated => QueryError::Unauthenticated(message),
            Code::PermissionDenied => QueryError::Refused {
                rule: "the node's policy".into(),
                detail: message,
            },
            Code::NotFound => QueryError::NotFound(message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                QueryError::Invalid(message)
            }
            Code::DeadlineExceeded => QueryError::TimedOut(message),
            Code::ResourceExhausted => QueryError::ResourceExhausted(message),
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted => {
                QueryError::Unavailable(message)
            }
            _ => QueryError::Internal(message),
        }
    }

    /// Whether trying again on a fresh connection may help: the connection
    /// failed, not the statement (a refusal or a bad statement is final).
    pub fn is_transport_failure(&self) -> bool {
        matches!(self, QueryError::Unavailable(_))
    }

    /// A copy of this error (a DataFusion error by its message only).
    pub fn copied(&self) -> QueryError {
        match self {
            QueryError::Unauthenticated(m) => QueryError::Unauthenticated(m.clone()),
            QueryError::Refused { rule, detail } => {
                QueryError::refused(rule.clone(), detail.clone())
            }
            QueryError::NotFound(m) => QueryError::NotFound(m.clone()),
            QueryError::Invalid(m) => QueryError::Invalid(m.clone()),
            QueryError::Unavailable(m) => QueryError::Unavailable(m.clone()),
            QueryError::TimedOut(m) => QueryError::TimedOut(m.clone()),
            QueryError::ResourceExhausted(m) => QueryError::ResourceExhausted(m.clone()),
            QueryError::DataFusion(e) => QueryError::Internal(e.to_string()),
            QueryError::Internal(m) => QueryError::Internal(m.clone()),
        }
    }

    /// The error inside a DataFusion error, when it is one of ours.
    pub fn find_in(err: &DataFusionError) -> Option<&QueryError> {
        match err.find_root() {
            DataFusionError::External(inner) => inner.downcast_ref::<QueryError>(),
            _ => None,
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
            QueryError::TimedOut(m) => Status::deadline_exceeded(m),
            QueryError::ResourceExhausted(m) => Status::resource_exhausted(m),
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
        DataFusionError::External(inner) => {
            if let Some(status) = inner.downcast_ref::<Status>() {
                status.code()
            } else if let Some(query) = inner.downcast_ref::<QueryError>() {
                query_code(query)
            } else {
                Code::Internal
            }
        }
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

/// The gRPC code of one of our errors.
fn query_code(err: &QueryError) -> Code {
    match err {
        QueryError::Unauthenticated(_) => Code::Unauthenticated,
        QueryError::Refused { .. } => Code::PermissionDenied,
        QueryError::NotFound(_) => Code::NotFound,
        QueryError::Invalid(_) => Code::InvalidArgument,
        QueryError::Unavailable(_) => Code::Unavailable,
        QueryError::TimedOut(_) => Code::DeadlineExceeded,
        QueryError::ResourceExhausted(_) => Code::ResourceExhausted,
        QueryError::DataFusion(e) => code_of(e),
        QueryError::Internal(_) => Code::Internal,
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
        for (err, code) in [
            (
                QueryError::Unavailable("node x is unreachable".into()),
                Code::Unavailable,
            ),
            (
                QueryError::TimedOut("node x took too long".into()),
                Code::DeadlineExceeded,
            ),
            (
                QueryError::ResourceExhausted("memory".into()),
                Code::ResourceExhausted,
            ),
        ] {
            let wrapped = DataFusionError::Context(
                "scan".into(),
                Box::new(DataFusionError::External(Box::new(err))),
            );
            assert_eq!(code_of(&wrapped), code);
        }
        let status = Status::deadline_exceeded("slow");
        assert!(matches!(
            QueryError::from_status(&status, "node x"),
            QueryError::TimedOut(m) if m == "node x: slow"
        ));
        assert!(
            !QueryError::from_status(&Status::permission_denied("no"), "n").is_transport_failure()
        );
        let refused: Status = QueryError::refused("published columns", "no").into();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("`published columns`"));
    }
}
