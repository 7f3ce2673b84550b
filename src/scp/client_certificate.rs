//! The client certificate check of DICOM TLS: webpki's, with one refusal made readable. An X.509
//! v1 certificate (what `openssl x509 -req` makes without `-extfile`) has no extensions, so
//! webpki refuses it as `UnsupportedCertVersion`, which tells an integrator nothing; this check
//! gives the reason in words the handshake log line can show.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

/// Why a v1 client certificate was refused.
#[derive(Debug, thiserror::Error)]
#[error("client certificate is X.509 v1; DICOM TLS needs v3")]
pub struct V1Certificate;

/// webpki's client verifier, with a v1 end-entity certificate refused as [`V1Certificate`].
#[derive(Debug)]
pub(super) struct Verifier(pub Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // webpki decides; the certificate is parsed again only to explain a refusal.
        self.0.verify_client_cert(end_entity, intermediates, now).map_err(|e| {
            if is_v1(end_entity) {
                CertificateError::Other(OtherError(Arc::new(V1Certificate))).into()
            } else {
                e
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

fn is_v1(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der.as_ref())
        .is_ok_and(|(_, cert)| cert.version() == x509_parser::x509::X509Version::V1)
}

/// The reason to log for a failed handshake when it is one this module explains. rustls's error
/// travels inside an `io::Error`, whose `source()` skips it, so each link is opened by hand.
pub(super) fn explained(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut link = Some(e);
    while let Some(err) = link {
        let tls = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|inner| {
            let inner: &(dyn std::error::Error + 'static) = inner;
            inner.downcast_ref::<rustls::Error>()
        });
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) = tls {
            if let Some(v1) = other.downcast_ref::<V1Certificate>() {
                return Some(v1.to_string());
            }
        }
        link = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_v1_certificate_is_explained_through_the_io_error_that_carries_it() {
        let tls: rustls::Error = CertificateError::Other(OtherError(Arc::new(V1Certificate))).into();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        assert_eq!(explained(&io).as_deref(), Some("client certificate is X.509 v1; DICOM TLS needs v3"));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(explained(&other), None);
    }
}
