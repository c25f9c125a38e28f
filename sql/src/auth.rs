//! Token checks shared by nodes and the coordinator: configs hold only the
//! SHA-256 of each caller's token, compared in constant time.

use sha2::{Digest, Sha256};

/// Whether `token` (surrounding whitespace ignored) hashes to `sha256_hex`.
/// A malformed hash never matches.
pub fn token_matches(token: &str, sha256_hex: &str) -> bool {
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(sha256_hex, &mut expected).is_err() {
        return false;
    }
    let digest = Sha256::digest(token.trim().as_bytes());
    expected
        .iter()
        .zip(digest.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_token_whose_hash_is_stored() {
        let stored = hex::encode(Sha256::digest(b"s3cret"));
        assert!(token_matches("s3cret\n", &stored));
        assert!(token_matches("s3cret", &stored.to_uppercase()));
        assert!(!token_matches("s3cre", &stored));
        assert!(!token_matches("s3cret", "not hex"));
    }
}
