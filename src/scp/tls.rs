//! DICOM TLS (PS3.15 Annex B, the BCP 195 profiles): TLS 1.2 and 1.3 only, and for 1.2 only the
//! ECDHE AES-GCM suites RFC 9325 recommends. With a client CA the peer must present a certificate
//! it signed (mutual TLS), and each project may name the certificate subjects that may call it.
//!
//! Certificates are read at start and again on SIGHUP ([`Tls::reload`]); a new handshake uses the
//! newest good set, running associations keep theirs, and a bad set is refused with the old one
//! kept. A handshake that fails is one log line with the peer and the reason.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use dicom_ul::association::server::{AsyncServerAssociation, AsyncTlsStream};
use dicom_ul::association::Association;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{association, client_certificate, Options, Routes};
use crate::config::TlsConfig;
use crate::observe::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {}: {source}", path.display())]
    Read { key: String, path: std::path::PathBuf, source: io::Error },
    #[error("{key} {}: {detail}", path.display())]
    Pem { key: String, path: std::path::PathBuf, detail: String },
    #[error("scp.tls: {0}")]
    Config(String),
}

/// The TLS listener's state: the association options with the current certificates.
pub struct Tls {
    cfg: TlsConfig,
    /// Negotiation for every project, without certificates.
    base: Options,
    current: RwLock<Arc<Options>>,
}

impl Tls {
    /// Read the certificates; an unreadable or mismatched set stops the start.
    pub fn new(cfg: &TlsConfig, routes: &Routes) -> Result<Tls, TlsError> {
        let base = routes.all_options();
        let current = base.clone().tls_config(server_config(cfg)?);
        Ok(Tls { cfg: cfg.clone(), base, current: RwLock::new(Arc::new(current)) })
    }

    /// Read the certificate files again. New handshakes use them; running associations are not
    /// touched. On error the previous certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let options = Arc::new(self.base.clone().tls_config(server_config(&self.cfg)?));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = options;
        Ok(())
    }

    fn options(&self) -> Arc<Options> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether clients must present certificates.
    pub fn mutual(&self) -> bool {
        self.cfg.client_ca_file.is_some()
    }
}

/// The rustls server configuration of `cfg`.
fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_of("scp.tls", &cfg.cert_file, &cfg.key_file, cfg.client_ca_file.as_deref())
}

/// The HTTPS listener's rustls configuration (`http.tls`): the same versions, suites and client
/// certificate check as DICOM TLS.
pub fn http_server_config(cfg: &crate::config::HttpTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_of("http.tls", &cfg.cert_file, &cfg.key_file, cfg.client_ca_file.as_deref())
}

/// A BCP 195 server configuration from PEM files; `section` names them in errors.
fn server_config_of(
    section: &str,
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(&format!("{section}.cert_file"), cert_file)?;
    let key = private_key(&format!("{section}.key_file"), key_file)?;
    let provider = bcp195_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca_file {
        Some(ca_file) => {
            let ca_key = format!("{section}.client_ca_file");
            let pem = |e: &dyn std::fmt::Display| TlsError::Pem {
                key: ca_key.clone(),
                path: ca_file.to_path_buf(),
                detail: e.to_string(),
            };
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(&ca_key, ca_file)? {
                roots.add(ca).map_err(|e| pem(&e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| pem(&e))?;
            builder.with_client_cert_verifier(Arc::new(client_certificate::Verifier(verifier)))
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Pem {
        key: format!("{section}.key_file"),
        path: key_file.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(Arc::new(config))
}

/// The rustls client configuration for a DICOM destination (`key` names it in errors, as
/// `export.dicom[0].tls`): only `ca_file` is trusted, our certificate is shown if given.
pub fn client_config(
    key: &str,
    tls: &crate::config::ClientTls,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_key = format!("{key}.ca_file");
    for ca in certificates(&ca_key, &tls.ca_file)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            key: ca_key.clone(),
            path: tls.ca_file.clone(),
            detail: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(bcp195_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key_file)) => {
            let chain = certificates(&format!("{key}.cert_file"), cert)?;
            let private = private_key(&format!("{key}.key_file"), key_file)?;
            builder.with_client_auth_cert(chain, private).map_err(|e| TlsError::Pem {
                key: format!("{key}.key_file"),
                path: key_file.to_path_buf(),
                detail: e.to_string(),
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// aws-lc-rs with the BCP 195 suites only.
fn bcp195_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| bcp195(s.suite()));
    Arc::new(provider)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(key, path, e))
}

/// TLS 1.3's suites (all AEAD) and TLS 1.2's ECDHE with AES-GCM: RFC 9325 (BCP 195) §4.2.
fn bcp195(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite::*;
    matches!(
        suite,
        TLS13_AES_128_GCM_SHA256
            | TLS13_AES_256_GCM_SHA384
            | TLS13_CHACHA20_POLY1305_SHA256
            | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    )
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: key.into(),
            path: path.to_path_buf(),
            detail: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn pem_error(key: &str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => {
            TlsError::Read { key: key.into(), path: path.to_path_buf(), source }
        }
        other => TlsError::Pem { key: key.into(), path: path.to_path_buf(), detail: other.to_string() },
    }
}

/// A TLS association negotiated for one of the node's AE titles.
pub(super) type TlsAssociation = AsyncServerAssociation<AsyncTlsStream>;

/// Handshake and negotiate on a new TLS connection, within `timeout`. A failure is logged here,
/// one line with the peer and the reason, and gives `None`.
pub(super) async fn establish(
    tls: &Tls,
    socket: TcpStream,
    peer: SocketAddr,
    timeout: std::time::Duration,
) -> Option<TlsAssociation> {
    let options = tls.options();
    let negotiation = super::calling_seen(options.establish_tls_async(socket));
    match tokio::time::timeout(timeout, negotiation).await {
        Ok((Ok(a), _)) => Some(a),
        Ok((Err(e), calling)) => {
            let reason = client_certificate::explained(&e).unwrap_or_else(|| crate::observe::error_chain(&e));
            if matches!(e, dicom_ul::association::Error::TlsHandshake { .. }) {
                warn!(%peer, reason, "TLS handshake failed");
                METRICS.connections_dropped.with_label_values(&["tls_handshake"]).inc();
            } else {
                let calling_ae = calling.as_deref().unwrap_or("").escape_debug();
                warn!(%peer, %calling_ae, error = reason, "association not established");
                association::rejected(peer, calling.as_deref(), association::rejection_reason(&e));
            }
            None
        }
        Err(_) => {
            warn!(%peer, timeout_s = timeout.as_secs(), reason = "no handshake and request in time", "TLS handshake failed");
            METRICS.connections_dropped.with_label_values(&["tls_handshake"]).inc();
            None
        }
    }
}

/// Serve a negotiated TLS association: find the project by the called AE title, check the
/// certificate subject against its list, take an association slot, then run it.
pub(super) async fn serve(
    mut assoc: TlsAssociation,
    routes: Arc<Routes>,
    peer: SocketAddr,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    started: Instant,
) {
    // The gate accepted only our AE titles, so the lookup finds one.
    let Some(node) = routes.get(assoc.called_ae_title()).cloned() else {
        let _ = assoc.abort().await;
        return;
    };
    let subject = client_subject(&mut assoc);
    if !node.scp.tls_allowed_subjects.is_empty()
        && !subject.as_ref().is_some_and(|cn| node.scp.tls_allowed_subjects.contains(cn))
    {
        warn!(%peer, called_ae = %node.scp.ae_title, subject = %subject.as_deref().unwrap_or("(none)").escape_debug(), "association aborted: certificate subject not allowed for this AE title");
        association::rejected(peer, Some(assoc.peer_ae_title()), "tls_subject");
        let _ = assoc.abort().await;
        return;
    }
    // Negotiated already (the request is inside the TLS stream): aborted, where plain TCP rejects.
    if association::too_many_contexts(peer, assoc.peer_ae_title(), assoc.presentation_contexts().len()) {
        let _ = assoc.abort().await;
        return;
    }
    let peer_max = assoc.requestor_max_pdu_length();
    if peer_max != 0 && peer_max < dicom_ul::pdu::MINIMUM_PDU_SIZE {
        warn!(%peer, max_pdu_length = peer_max, "association aborted: the peer's maximum PDU length cannot carry a response");
        association::rejected(peer, Some(assoc.peer_ae_title()), "max_pdu");
        let _ = assoc.abort().await;
        return;
    }
    let Ok(permit) = limit.try_acquire_owned() else {
        warn!(%peer, limit = node.scp.max_associations, "association aborted: scp.max_associations reached");
        association::rejected(peer, Some(assoc.peer_ae_title()), "busy");
        let _ = assoc.abort().await;
        return;
    };
    if let Some(cn) = &subject {
        info!(%peer, called_ae = %node.scp.ae_title, subject = %cn.escape_debug(), "TLS association");
    }
    association::run_established(node, assoc, peer, stop, started).await;
    drop(permit);
}

/// The common name of the client certificate, if the client sent one.
fn client_subject(
    assoc: &mut dicom_ul::association::server::AsyncServerAssociation<AsyncTlsStream>,
) -> Option<String> {
    let (_, conn) = assoc.inner_stream().get_ref();
    common_name(conn.peer_certificates()?.first()?)
}

/// The subject common name of a client's certificate: what a project's allow-list names.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Re-read the certificates on every SIGHUP until `stop`. Without TLS the signal is logged and
/// ignored: its default action would end the node, and operators send it expecting a reload.
pub async fn reload_on_sighup(tls: Option<Arc<Tls>>, stop: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; TLS certificates are read at start only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => match tls.as_ref().map(|t| t.reload()) {
                Some(Ok(())) => info!("SIGHUP: TLS certificates read again; new associations use them"),
                Some(Err(e)) => warn!(error = %e, "SIGHUP: TLS certificates not reloaded; the previous ones stay in use"),
                None => info!("SIGHUP: nothing to reload (no scp.tls)"),
            },
        }
    }
}

/// Load the certificate files of `cfg` as a start would, for `check-config`.
pub fn check(cfg: &TlsConfig) -> Result<(), TlsError> {
    server_config(cfg).map(drop)
}
