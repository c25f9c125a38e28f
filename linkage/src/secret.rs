//! The linkage secret: 32 random bytes held by nodes only, read from a file
//! that no one but its owner may read, zeroised when dropped.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::LinkageError;

/// Length of the linkage secret in bytes.
pub const SECRET_LEN: usize = 32;

/// The linkage secret from which every project key is derived.
///
/// Its bytes are wiped on drop and never shown by `Debug`.
pub struct LinkageSecret(Zeroizing<[u8; SECRET_LEN]>);

impl fmt::Debug for LinkageSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkageSecret(<redacted>)")
    }
}

impl LinkageSecret {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new secret from the operating system's random source.
    pub fn generate() -> Result<Self, LinkageError> {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        getrandom::fill(bytes.as_mut()).map_err(|e| LinkageError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Parses the file format: 64 hexadecimal characters, surrounding
    /// whitespace ignored. `origin` names where the text came from in errors.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, LinkageError> {
        let text = text.trim();
        if text.len() != SECRET_LEN * 2 {
            return Err(LinkageError::SecretFormat {
                origin: origin.to_string(),
                reason: format!(
                    "expected {} hexadecimal characters (a {SECRET_LEN}-byte key), found {}",
                    SECRET_LEN * 2,
                    text.len()
                ),
            });
        }
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        hex::decode_to_slice(text, bytes.as_mut()).map_err(|_| LinkageError::SecretFormat {
            origin: origin.to_string(),
            reason: "it contains characters that are not hexadecimal digits".to_string(),
        })?;
        Ok(Self(bytes))
    }

    /// Reads a secret file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, LinkageError> {
        check_owner_only(path)?;
        let text =
            Zeroizing::new(
                fs::read_to_string(path).map_err(|source| LinkageError::SecretIo {
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Writes the secret to a new file with mode 0600. Refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), LinkageError> {
        let io_err = |source| LinkageError::SecretIo {
            path: path.to_path_buf(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                LinkageError::SecretExists(path.to_path_buf())
            } else {
                io_err(source)
            }
        })?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.0.as_ref())));
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    /// A 32-byte key for `info` (HKDF-SHA256), for other uses of a secret
    /// of this kind (the coordinator's cell-key secret).
    pub fn derive(&self, info: &str) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::keys::hkdf_sha256(self.expose(), None, info.as_bytes(), key.as_mut());
        key
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }
}

#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), LinkageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| LinkageError::SecretIo {
        path: PathBuf::from(path),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(LinkageError::SecretPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), LinkageError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_through_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linkage.key");
        let secret = LinkageSecret::generate().unwrap();
        secret.write_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = LinkageSecret::load(&path).unwrap();
        assert_eq!(loaded.expose(), secret.expose());
        let again = secret.write_new(&path).unwrap_err();
        assert!(matches!(again, LinkageError::SecretExists(_)), "{again}");
    }

    #[test]
    fn refuses_group_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linkage.key");
        fs::write(&path, "00".repeat(32)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = LinkageSecret::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("linkage.key") && err.contains("0640") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn refuses_wrong_length_and_bad_digits_without_echoing_them() {
        let err = LinkageSecret::from_hex("abcd", "env CARROW_X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("env CARROW_X") && err.contains("found 4"),
            "{err}"
        );
        let bad = "zz".repeat(32);
        let err = LinkageSecret::from_hex(&bad, "f").unwrap_err().to_string();
        assert!(err.contains("hexadecimal") && !err.contains(&bad), "{err}");
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = LinkageSecret::from_bytes([0xab; 32]);
        let shown = format!("{secret:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
    }
}
