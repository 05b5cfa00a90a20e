//! [`TlsConfig`]: TLS settings of `mqtts://` connections.

use std::path::PathBuf;

use aether_core::Secret;

/// TLS settings (`mqtts://`). Without a CA file the system's trust store verifies the
/// broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the certificate authorities that sign the broker's certificate.
    /// Default: none (the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require one. Default: none.
    pub cert_file: Option<PathBuf>,
    /// PEM file of this client's private key (if not in `cert_file`). Default: none.
    pub key_file: Option<PathBuf>,
    /// Password of the private key. Default: none.
    pub key_password: Option<Secret>,
    /// Whether the broker's certificate must name the host connected to. Default true.
    pub verify_hostname: bool,
}

impl TlsConfig {
    /// Verifies the broker against the system's trust store and its host name.
    pub fn new() -> Self {
        TlsConfig {
            verify_hostname: true,
            ..TlsConfig::default()
        }
    }
    /// Sets [`TlsConfig::ca_file`].
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// Sets [`TlsConfig::cert_file`] and [`TlsConfig::key_file`].
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }
    /// Sets [`TlsConfig::key_password`].
    pub fn key_password(mut self, password: impl Into<String>) -> Self {
        self.key_password = Some(Secret::new(password));
        self
    }
    /// Sets [`TlsConfig::verify_hostname`].
    pub fn verify_hostname(mut self, on: bool) -> Self {
        self.verify_hostname = on;
        self
    }
}
