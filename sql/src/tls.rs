//! TLS settings shared by every Carrow link: a server's certificate, key
//! and optional client CA (mutual TLS), and a client's trusted CA and
//! optional certificate (to reach a server that requires mutual TLS).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("TLS: cannot read {key} {path}: {source}")]
pub struct TlsError {
    /// The config key naming the file.
    pub key: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// A server's TLS: its certificate and key (PEM), and optionally the CA
/// whose certificates callers must present (mutual TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// Reads the files into tonic's server settings.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(
            read("cert_file", &self.cert_file)?,
            read("key_file", &self.key_file)?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read("client_ca_file", ca)?));
        }
        Ok(config)
    }

    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.cert_file);
        resolve(base, &mut self.key_file);
        if let Some(ca) = &mut self.client_ca_file {
            resolve(base, ca);
        }
    }
}

/// A client's TLS to one server: the CA that signed the server's
/// certificate, and for mutual TLS the client's own certificate and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate is checked against; default the
    /// URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl ClientTls {
    /// Reads the files into tonic's client settings.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca_file", &self.ca_file)?));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }

    /// Why the settings cannot work, if they cannot (a certificate without its key).
    pub fn problem(&self) -> Option<String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Some("cert_file is set without key_file".into()),
            (None, Some(_)) => Some("key_file is set without cert_file".into()),
            _ => None,
        }
    }

    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.ca_file);
        for p in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            resolve(base, p);
        }
    }
}
