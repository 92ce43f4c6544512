//! rustls configurations of the protocol (always the `ring` provider, set per configuration so
//! the process needs no default provider), and the client certificate verifier that records why
//! a certificate was refused.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::{dns_names, Identity};
use crate::refusal::{ParentCounters, Refusal};

/// The crypto provider of every configuration of this crate.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The refusal reason of a certificate error; `None` for errors that are not about the peer's
/// certificate.
pub(crate) fn classify(error: &rustls::Error) -> Option<Refusal> {
    match error {
        rustls::Error::InvalidCertificate(e) => Some(match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Refusal::UnknownCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Refusal::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Refusal::NotYetValid
            }
            _ => Refusal::BadCertificate,
        }),
        rustls::Error::NoCertificatesPresented => Some(Refusal::BadCertificate),
        _ => None,
    }
}

/// rustls' WebPKI client verifier (client certificate required, from the operator CA), which
/// also counts every refused certificate by reason.
#[derive(Debug)]
pub(crate) struct RecordingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    counters: Arc<ParentCounters>,
}

impl ClientCertVerifier for RecordingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                let reason = classify(e).unwrap_or(Refusal::BadCertificate);
                self.counters.count_refusal(reason);
                // The peer's address is logged by the acceptor (it does not reach the verifier);
                // the name the certificate claims is only known here.
                let claimed = dns_names(end_entity).unwrap_or_default();
                tracing::warn!(claimed_names = ?claimed, reason = reason.as_str(), error = %e, "client certificate refused");
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The parent's server configuration: TLS 1.3 only, ALPN h2, client certificate from the
/// operator CA required, refusals counted in `counters`.
pub(crate) fn parent_server_config(
    identity: &Identity,
    counters: Arc<ParentCounters>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(identity.root_store()?, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    let verifier = Arc::new(RecordingClientVerifier { inner, counters });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain().to_vec(), identity.key().clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A plain HTTPS server configuration (no client authentication), for the gateway site.
pub(crate) fn https_server_config(
    identity: &Identity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain().to_vec(), identity.key().clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts only the operator CA and presents this node's
/// certificate when asked. The server's name is checked by the caller's `ServerName`.
pub(crate) fn client_config(
    identity: &Identity,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(identity.root_store()?)
        .with_client_auth_cert(identity.cert_chain().to_vec(), identity.key().clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
