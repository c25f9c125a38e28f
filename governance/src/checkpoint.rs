//! Signed checkpoints of an audit log: a service's Ed25519 signature over
//! its log's name, size and Merkle root. A checkpoint held by someone else
//! (the coordinator holds each node's, each node the coordinator's) pins
//! the log: a later log that drops, edits or re-hashes anything before it
//! no longer has that root at that size.
//!
//! Text form, one line: `carrow-checkpoint/v1 <origin> <size> <root> <key> <signature>`
//! (root, public key and signature in hex). The signed message is
//! `carrow-audit-checkpoint/v1\n<origin>\n<size>\n<root>\n`.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

use crate::GovernanceError;
use crate::merkle::Hash;

const TEXT_TAG: &str = "carrow-checkpoint/v1";
const SIGNED_TAG: &str = "carrow-audit-checkpoint/v1";

/// One signed statement "log `origin` had `size` records with Merkle root `root`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The service whose log it is (`coordinator`, or a node's name).
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The signer's public key.
    pub key: [u8; 32],
    pub signature: [u8; 64],
}

fn message(origin: &str, size: u64, root: &Hash) -> String {
    format!("{SIGNED_TAG}\n{origin}\n{size}\n{}\n", hex::encode(root))
}

impl Checkpoint {
    /// Signs `origin`'s log at `size` records with `root`.
    pub fn sign(key: &AuditKey, origin: &str, size: u64, root: Hash) -> Self {
        let signature = key.0.sign(message(origin, size, &root).as_bytes());
        Self {
            origin: origin.to_string(),
            size,
            root,
            key: key.public(),
            signature: signature.to_bytes(),
        }
    }

    /// Whether the signature is the key's over this origin, size and root.
    pub fn signature_holds(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.key) else {
            return false;
        };
        key.verify(
            message(&self.origin, self.size, &self.root).as_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        format!(
            "{TEXT_TAG} {} {} {} {} {}",
            self.origin,
            self.size,
            hex::encode(self.root),
            hex::encode(self.key),
            hex::encode(self.signature)
        )
    }

    /// Parses the text form (the signature is not checked here).
    pub fn parse(text: &str) -> Result<Self, GovernanceError> {
        let bad = |what: &str| GovernanceError::Invalid(format!("not a checkpoint: {what}"));
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let [tag, origin, size, root, key, signature] = fields[..] else {
            return Err(bad("expected six fields"));
        };
        if tag != TEXT_TAG {
            return Err(bad("unknown version tag"));
        }
        fn bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
            hex::decode(text).ok()?.try_into().ok()
        }
        Ok(Self {
            origin: origin.to_string(),
            size: size.parse().map_err(|_| bad("size is not a number"))?,
            root: bytes(root).ok_or_else(|| bad("root is not 32 hex bytes"))?,
            key: bytes(key).ok_or_else(|| bad("key is not 32 hex bytes"))?,
            signature: bytes(signature).ok_or_else(|| bad("signature is not 64 hex bytes"))?,
        })
    }
}

/// The first 16 hex digits of a public key, to name it in reports.
pub fn fingerprint(key: &[u8; 32]) -> String {
    hex::encode(&key[..8])
}

/// A service's audit signing key (an Ed25519 seed, 64 hex digits in a
/// file only its owner reads).
pub struct AuditKey(SigningKey);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", fingerprint(&self.public()))
    }
}

impl AuditKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the operating system provides randomness");
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads the key at `path`, or, when there is no file, makes one (mode
    /// 0600) and says so in the log.
    pub fn load_or_create(path: &Path) -> Result<Self, GovernanceError> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate();
        key.write(path)?;
        tracing::info!(path = %path.display(), key = %fingerprint(&key.public()),
            "made a new audit signing key");
        Ok(key)
    }

    /// Reads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, GovernanceError> {
        let io = |source| GovernanceError::AuditIo {
            path: path.to_path_buf(),
            source,
        };
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    GovernanceError::Invalid(format!(
                        "audit key {}: expected 64 hex digits (an Ed25519 seed)",
                        path.display()
                    ))
                })?,
        );
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Writes the key to a new file at `path`, readable only by its owner.
    pub fn write(&self, path: &Path) -> Result<(), GovernanceError> {
        let io = |source| GovernanceError::AuditIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let text = Zeroizing::new(hex::encode(self.0.to_bytes()));
        file.write_all(format!("{}\n", text.as_str()).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_any_change_breaks_its_signature() {
        let key = AuditKey::generate();
        let cp = Checkpoint::sign(&key, "gp", 42, [7u8; 32]);
        assert!(cp.signature_holds());
        let parsed = Checkpoint::parse(&cp.to_text()).unwrap();
        assert_eq!(parsed, cp);
        for forged in [
            Checkpoint {
                size: 41,
                ..cp.clone()
            },
            Checkpoint {
                root: [8u8; 32],
                ..cp.clone()
            },
            Checkpoint {
                origin: "acute".into(),
                ..cp.clone()
            },
            Checkpoint {
                key: AuditKey::generate().public(),
                ..cp.clone()
            },
        ] {
            assert!(!forged.signature_holds(), "{forged:?}");
        }
        assert!(Checkpoint::parse("carrow-checkpoint/v1 gp 1 00").is_err());
    }

    #[test]
    fn a_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(AuditKey::load(&path).unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(&path, "not a key").unwrap();
        let err = AuditKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
