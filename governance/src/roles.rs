//! Coordinator users: their roles, and passwords kept only as salted
//! argon2id hashes (PHC strings).

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::GovernanceError;

/// What a coordinator user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Population queries; results pass disclosure control.
    Planner,
    /// Runs only SQL a governance board approved, in the form approved.
    Researcher,
    /// Reviews and approves requests, reads audit logs; runs no data query.
    Governance,
}

impl Role {
    /// The role's name as configured and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Planner => "planner",
            Role::Researcher => "researcher",
            Role::Governance => "governance",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = GovernanceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "planner" => Ok(Role::Planner),
            "researcher" => Ok(Role::Researcher),
            "governance" => Ok(Role::Governance),
            other => Err(GovernanceError::Invalid(format!(
                "unknown role {other:?} (expected planner, researcher or governance)"
            ))),
        }
    }
}

/// Hashes `password` with argon2id and a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, GovernanceError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| GovernanceError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches `hash`, a PHC string from [`hash_password`].
/// A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks that `hash` is a PHC string argon2 can verify against.
pub fn check_hash(hash: &str) -> Result<(), GovernanceError> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| GovernanceError::Invalid(format!("not a PHC password hash: {e}")))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(GovernanceError::Invalid(format!(
            "password hash uses {}, expected argon2id",
            parsed.algorithm
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_is_salted() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(verify_password("correct horse", &b));
        assert!(!verify_password("correct horse ", &a));
        assert!(!verify_password("correct horse", "not a hash"));
        check_hash(&a).unwrap();
        assert!(check_hash("$sha256$abc").is_err());
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in [Role::Planner, Role::Researcher, Role::Governance] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        let err = "admin".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("\"admin\""), "{err}");
    }
}
