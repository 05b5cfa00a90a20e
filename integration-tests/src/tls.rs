//! Certificates made for a test with rcgen: a CA, and a server certificate it signed, as
//! PEM files that a hub (`tls_cert`, `tls_key`) and its peers (`tls_ca`) read.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA and a certificate it signed, in a directory of their own.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
    /// The CA's certificate (PEM): what peers trust with `tls_ca`.
    pub ca: PathBuf,
    /// The server's certificate chain (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestCerts {
    /// A CA and a server certificate for `names` (host names or IP addresses), written
    /// under `dir` (created, and emptied of an earlier run's files).
    pub fn new(dir: &Path, names: &[&str]) -> TestCerts {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: CAs of the same name would be taken for each other.
        let name = format!("aether test CA {}", uuid::Uuid::new_v4());
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("the CA certificate");
        let key = KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "aether test hub");
        let cert = params.signed_by(&key, &ca).expect("the server certificate");

        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("a directory for the certificates");
        let certs = TestCerts {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&certs.ca, ca.pem()).expect("write ca.pem");
        std::fs::write(&certs.cert, cert.pem()).expect("write cert.pem");
        std::fs::write(&certs.key, key.serialize_pem()).expect("write key.pem");
        certs
    }

    /// Certificates for `localhost` and `127.0.0.1` in a new directory under the system's
    /// temporary one, removed when dropped.
    pub fn temporary() -> TestCerts {
        let dir = std::env::temp_dir().join(format!("aether-certs-{}", uuid::Uuid::new_v4()));
        TestCerts::new(&dir, &["localhost", "127.0.0.1"])
    }

    /// Removes the files now (a `static`'s certificates are never dropped).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        self.remove();
    }
}
