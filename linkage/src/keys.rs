//! Per-project key derivation: `HKDF-SHA256(linkage_secret, info =
//! "carrow/v<version>/<project>/<token kind>")`, so pseudonyms of one project
//! cannot be joined to those of another.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::LinkageSecret;
use crate::token::TokenKind;

/// Version of the key derivation context. Bump to rotate every project key.
pub const KEY_VERSION: u32 = 1;

/// HKDF-SHA256 (RFC 5869) extract-and-expand into `out`.
pub fn hkdf_sha256(ikm: &[u8], salt: Option<&[u8]>, info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .expect("HKDF-SHA256 output length is at most 255 blocks");
}

/// The HKDF `info` string for a project and token kind.
pub fn derivation_info(project: &str, kind: TokenKind) -> String {
    format!("carrow/v{KEY_VERSION}/{project}/{}", kind.name())
}

/// A keyed HMAC-SHA256 with its inner and outer states prepared once, so each
/// message costs only the hashing of the message itself.
#[derive(Clone)]
pub struct KeyedHasher {
    prepared: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(<redacted>)")
    }
}

impl KeyedHasher {
    /// Prepares HMAC-SHA256 for `key` (any length, as RFC 2104 allows).
    pub fn new(key: &[u8]) -> Self {
        let prepared =
            Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Self { prepared }
    }

    /// Derives the key for `project` and `kind` from the linkage secret.
    pub fn derive(secret: &LinkageSecret, project: &str, kind: TokenKind) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf_sha256(
            secret.expose(),
            None,
            derivation_info(project, kind).as_bytes(),
            key.as_mut(),
        );
        Self::new(key.as_ref())
    }

    /// The full 32-byte HMAC-SHA256 of `message`.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.prepared.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc5869_hkdf_sha256_vectors() {
        // Test case 1.
        let mut okm = [0u8; 42];
        hkdf_sha256(
            &[0x0b; 22],
            Some(&unhex("000102030405060708090a0b0c")),
            &unhex("f0f1f2f3f4f5f6f7f8f9"),
            &mut okm,
        );
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        // Test case 3: no salt, no info.
        hkdf_sha256(&[0x0b; 22], None, &[], &mut okm);
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn rfc4231_hmac_sha256_vectors() {
        let cases: [(Vec<u8>, &[u8], &str); 3] = [
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            // Test case 6: a key longer than the block size.
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex::encode(KeyedHasher::new(&key).mac(data)), expected);
        }
    }

    #[test]
    fn projects_and_kinds_get_different_keys() {
        let secret = LinkageSecret::from_bytes([7; 32]);
        let msg = b"same message";
        let a = KeyedHasher::derive(&secret, "alpha", TokenKind::NhsNumber).mac(msg);
        let b = KeyedHasher::derive(&secret, "beta", TokenKind::NhsNumber).mac(msg);
        let c = KeyedHasher::derive(&secret, "alpha", TokenKind::NameDobSex).mac(msg);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            KeyedHasher::derive(&secret, "alpha", TokenKind::NhsNumber).mac(msg)
        );
    }
}
