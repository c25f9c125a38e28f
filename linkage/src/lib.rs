//! Carrow's linkage primitives: the kinds of person identifier a node can
//! declare and their normalisation, per-project keys derived from the
//! linkage secret, keyed pseudonyms (HMAC-SHA256 truncated to 128 bits)
//! computed row by row or over Arrow arrays, field tokens for probabilistic
//! linkage, and blocking and record matching over tokens.
//!
//! Everything but [`blocking`], [`comparison`], [`estimate`], [`cluster`]
//! and [`matching`] runs inside nodes: the linkage secret and raw
//! identifiers it handles never leave them. Those five run at the
//! coordinator and see tokens only. The crate has no DataFusion dependency.

pub mod batch;
pub mod blocking;
pub mod cluster;
pub mod comparison;
pub mod estimate;
pub mod fields;
pub mod identity;
pub mod keys;
pub mod matching;
pub mod normalise;
pub mod phonetic;
pub mod secret;
pub mod token;

use std::path::PathBuf;

pub use batch::{IdentifierColumns, token_data_type};
pub use identity::{IdentifierKind, Identity, RawIdentity, SharedNumberFinder};
pub use keys::KeyedHasher;
pub use secret::LinkageSecret;
pub use token::{TOKEN_LEN, Token, TokenKind, Tokeniser};

/// Errors of the linkage crate. None carries secret material or identifiers.
#[derive(Debug, thiserror::Error)]
pub enum LinkageError {
    #[error("cannot read or write secret file {path}: {source}")]
    SecretIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secret file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}` so only its owner can read it"
    )]
    SecretPermissions { path: PathBuf, mode: u32 },
    #[error("secret from {origin} is malformed: {reason}")]
    SecretFormat { origin: String, reason: String },
    #[error("secret file {0} already exists; refusing to overwrite a linkage secret")]
    SecretExists(PathBuf),
    #[error("cannot draw random bytes from the operating system: {0}")]
    Random(String),
    #[error("identifier column {column} has type {data_type}; identifier columns must be strings")]
    ColumnType {
        column: String,
        data_type: arrow_schema::DataType,
    },
    #[error(
        "identifier column {column} has {found} rows where the other identifier columns have {expected}"
    )]
    LengthMismatch {
        column: String,
        expected: usize,
        found: usize,
    },
}
