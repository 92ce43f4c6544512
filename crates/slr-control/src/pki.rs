//! The operator CA, node certificates, and a node's TLS [`Identity`].
//!
//! Every node of the hierarchy (network, AS and site routers, hosts) holds a certificate issued
//! by the operator's CA whose only subject alternative name is the node's name as a dNSName
//! (`net`, `as1`, `site-a`, `h1`). Parents authorize children, and children check their parent,
//! by that name. Leaf certificates are valid for both TLS client and server authentication,
//! since a router is a child of its parent and a parent of its children.
//!
//! Files: `create_ca` writes `ca.pem` and `ca.key`; `issue` writes `NAME.pem` and `NAME.key`.
//! Keys are ECDSA P-256, written with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of the PKI functions; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file's content is not what it should be (PEM, certificate or key).
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The certificate and the key do not belong together.
    #[error("{} and {}: the key does not match the certificate ({detail})", cert.display(), key.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The TLS library's explanation.
        detail: String,
    },
    /// `create_ca` refuses to overwrite an existing CA.
    #[error("{}: already exists; refusing to overwrite a CA", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A node name is not a valid lowercase DNS name.
    #[error("invalid node name {0:?}: expected lowercase DNS labels of [a-z0-9-], e.g. site-a")]
    InvalidName(String),
    /// `not_after` is not after `not_before`, or a time is out of range.
    #[error("invalid validity period: {0}")]
    Validity(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// The paths of a certificate and its key, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8).
    pub key: PathBuf,
}

/// Whether `name` is usable as a node name: a lowercase DNS name (labels of `[a-z0-9-]`, 1..=63
/// characters, not starting or ending with `-`; at most 253 characters). Node names are
/// certificate dNSNames and file names, so nothing else is allowed.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Creates the operator CA in `dir`: `ca.pem` (certificate, subject CN `common_name`) and
/// `ca.key`, valid from one minute ago for `validity`. Refuses to overwrite an existing CA.
pub fn create_ca(dir: &Path, common_name: &str, validity: Duration) -> Result<CertFiles, PkiError> {
    let files = CertFiles {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    };
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(PkiError::Exists { path: path.clone() });
        }
    }
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    set_validity(
        &mut params,
        now - Duration::from_secs(60),
        now.checked_add(validity)
            .ok_or_else(|| PkiError::Validity("validity too long".into()))?,
    )?;
    let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Issues a certificate for node `name` with the CA in `ca_dir` (`ca.pem`, `ca.key`), writing
/// `out_dir/NAME.pem` and `out_dir/NAME.key`.
///
/// The certificate's subject CN and only SAN (a dNSName) are `name`; it allows TLS client and
/// server authentication. Any validity period is accepted, including one entirely in the past
/// or the future (to test expired and not yet valid certificates).
pub fn issue(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertFiles, PkiError> {
    if !is_valid_node_name(name) {
        return Err(PkiError::InvalidName(name.to_owned()));
    }
    if not_after <= not_before {
        return Err(PkiError::Validity(
            "not_after must be after not_before".into(),
        ));
    }
    let ca_cert_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca.key");
    let ca_cert_pem = read_string(&ca_cert_path)?;
    let ca_key_pem = read_string(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        detail: format!("not a usable private key: {e}"),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| PkiError::Invalid {
        path: ca_cert_path.clone(),
        detail: format!("not a usable CA certificate: {e}"),
    })?;

    let mut params = CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, not_before, not_after)?;
    let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| PkiError::Generate(e.to_string()))?;

    fs::create_dir_all(out_dir).map_err(|source| PkiError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let files = CertFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), PkiError> {
    // X.509 times have a resolution of one second: truncate so the encoded times are exact.
    let to_time = |t: SystemTime| -> Result<time::OffsetDateTime, PkiError> {
        let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| PkiError::Validity(e.to_string()))
    };
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_after)?;
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use rustls::crypto::ring::default_provider;
    let mut bytes = [0u8; 16];
    default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate("no randomness for the serial number".into()))?;
    // A positive INTEGER of 16 bytes.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_err = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(content).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// A node's TLS identity: the operator CA it trusts, its certificate chain and private key,
/// and the names its certificate proves (its SAN dNSNames).
pub struct Identity {
    ca_certs: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    names: Vec<String>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca_certs: self.ca_certs.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            names: self.names.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("names", &self.names)
            .field("ca_certs", &self.ca_certs.len())
            .field("cert_chain", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the operator CA certificate(s), this node's certificate (chain) and its key, all
    /// PEM. Errors name the file and say what is wrong: unreadable, no certificate, not PEM,
    /// no dNSName, a key that does not match the certificate.
    ///
    /// The validity period is not checked here (the peers check it).
    pub fn load(ca_pem: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let ca_certs = read_certs(ca_pem)?;
        let cert_chain = read_certs(cert)?;
        let key_bytes = fs::read(key).map_err(|source| PkiError::Io {
            path: key.to_owned(),
            source,
        })?;
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| PkiError::Invalid {
                path: key.to_owned(),
                detail: format!("no PEM private key: {e}"),
            })?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(
            cert_chain.clone(),
            private_key.clone_key(),
            &provider,
        )
        .map_err(|e| PkiError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            detail: e.to_string(),
        })?;
        let names = dns_names(&cert_chain[0]).map_err(|detail| PkiError::Invalid {
            path: cert.to_owned(),
            detail,
        })?;
        if names.is_empty() {
            return Err(PkiError::Invalid {
                path: cert.to_owned(),
                detail: "the certificate has no subject alternative dNSName (node name)".into(),
            });
        }
        Ok(Identity {
            ca_certs,
            cert_chain,
            key: private_key,
            names,
        })
    }

    /// Loads `NAME.pem` and `NAME.key` from `dir` with the CA `ca_pem`.
    pub fn load_named(ca_pem: &Path, dir: &Path, name: &str) -> Result<Self, PkiError> {
        Identity::load(
            ca_pem,
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// The node's name: the first dNSName of its certificate.
    pub fn name(&self) -> &str {
        &self.names[0]
    }

    /// All dNSNames of the node's certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The operator CA certificates this node trusts.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// The node's certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The node's private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The CA as a rustls root store.
    pub(crate) fn root_store(&self) -> Result<Arc<rustls::RootCertStore>, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.ca_certs {
            roots
                .add(cert.clone())
                .map_err(|e| rustls::Error::General(format!("operator CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            detail: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Invalid {
            path: path.to_owned(),
            detail: "no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The subject alternative dNSNames of a certificate, in order.
pub(crate) fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("invalid subject alternative name: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for good in ["net", "as1", "site-a", "h1", "a.b-c.d0"] {
            assert!(is_valid_node_name(good), "{good}");
        }
        for bad in [
            "", "Site", "-a", "a-", "a..b", "a/b", "../x", "a b", "h1.", "é",
        ] {
            assert!(!is_valid_node_name(bad), "{bad}");
        }
        assert!(!is_valid_node_name(&"a".repeat(64)));
    }

    #[test]
    fn ca_issue_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca, "test CA", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            create_ca(&ca, "test CA", Duration::from_secs(3600)),
            Err(PkiError::Exists { .. })
        ));
        let now = SystemTime::now();
        let files = issue(
            &ca,
            "site-a",
            dir.path(),
            now,
            now + Duration::from_secs(60),
        )
        .unwrap();
        let id = Identity::load(&ca.join("ca.pem"), &files.cert, &files.key).unwrap();
        assert_eq!(id.name(), "site-a");
        assert!(matches!(
            issue(
                &ca,
                "../evil",
                dir.path(),
                now,
                now + Duration::from_secs(1)
            ),
            Err(PkiError::InvalidName(_))
        ));
        let other = issue(&ca, "h1", dir.path(), now, now + Duration::from_secs(60)).unwrap();

        // Errors name the file.
        let err = Identity::load(&ca.join("ca.pem"), &files.cert, &other.key).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        let err = Identity::load(&ca.join("missing.pem"), &files.cert, &files.key).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = Identity::load(&files.key, &files.cert, &files.key).unwrap_err();
        assert!(err.to_string().contains("site-a.key"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = Identity::load(&ca.join("ca.pem"), &files.cert, &files.cert).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }
}
