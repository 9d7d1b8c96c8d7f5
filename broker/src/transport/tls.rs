//! TLS for `mqtts` and `wss` listeners (rustls), with certificates that can be replaced
//! while the broker runs: each handshake takes the listener's current `ServerConfig`, so a
//! rotated certificate, key or client CA applies to new connections while open ones keep
//! their session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use fleetmq_config::{Tls, TlsVersion};
use ntex::io::{Filter, Io, Layer};
use ntex::service::cfg::SharedCfg;
use ntex::service::{Service, ServiceCtx, ServiceFactory};
use ntex::time::Millis;
use ntex_tls::rustls::PeerCert;
pub use ntex_tls::rustls::TlsServerFilter;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Millis = Millis(10_000);

/// Why a listener's certificates could not be used. Messages name the config key and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} {path}: {source}")]
    Read {
        /// Config key, e.g. `listeners[0].tls.cert_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file has no usable PEM content.
    #[error("{key} {path}: {reason}")]
    Content {
        /// Config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. key does not match the certificate).
    #[error("{key}: {reason}")]
    Config {
        /// Config key of the listener's `tls` block.
        key: String,
        /// rustls' reason.
        reason: String,
    },
}

/// The files a listener's TLS config is built from, for change detection.
pub fn files(tls: &Tls) -> Vec<PathBuf> {
    let mut out = vec![tls.cert_file.clone(), tls.key_file.clone()];
    out.extend(tls.ca_file.clone());
    out
}

pub(crate) fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        TlsError::Content { key: key.to_string(), path: path.to_path_buf(), reason: format!("bad PEM: {e}") }
    })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        use x509_cert::der::Decode;
        if let Err(e) = x509_cert::Certificate::from_der(cert.as_ref()) {
            return Err(TlsError::Content {
                key: key.to_string(),
                path: path.to_path_buf(),
                reason: format!("certificate #{} is not valid X.509: {e}", i + 1),
            });
        }
    }
    Ok(certs)
}

/// Builds the rustls config of listener `index` from its `tls` block.
pub fn server_config(index: usize, tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_at(&format!("listeners[{index}].tls"), tls)
}

/// Builds a rustls server config from the `tls` block at config key `base` (named in errors).
pub fn server_config_at(base: &str, tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    let base = base.to_string();
    let cert_key = format!("{base}.cert_file");
    let key_key = format!("{base}.key_file");
    let chain = certificates(&cert_key, &tls.cert_file)?;
    let key_pem = read(&key_key, &tls.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
        key: key_key.clone(),
        path: tls.key_file.clone(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config { key: format!("{base}.min_version"), reason: e.to_string() })?;
    let builder = match &tls.ca_file {
        Some(ca_file) => {
            let ca_key = format!("{base}.ca_file");
            let mut roots = RootCertStore::empty();
            for cert in certificates(&ca_key, ca_file)? {
                roots.add(cert).map_err(|e| TlsError::Content {
                    key: ca_key.clone(),
                    path: ca_file.clone(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            // Without require_certificate a client may still present one; it is verified then.
            let verifier = if tls.require_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config { key: ca_key.clone(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config {
        key: format!("{base}.cert_file/key_file"),
        reason: format!("certificate and key cannot be used together: {e}"),
    })?;
    Ok(Arc::new(config))
}

/// A listener's current TLS config, replaced on certificate rotation.
#[derive(Clone, Debug)]
pub struct TlsHandle {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsHandle {
    /// A handle serving `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsHandle { current: Arc::new(RwLock::new(config)) }
    }

    /// The config new handshakes use.
    pub fn get(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the config for new handshakes.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// Accepts TLS with the handle's current config.
#[derive(Clone, Debug)]
pub struct TlsAccept(pub TlsHandle);

impl<F: Filter> ServiceFactory<Io<F>, SharedCfg> for TlsAccept {
    type Response = Io<Layer<TlsServerFilter, F>>;
    type Error = std::io::Error;
    type Service = TlsAccept;
    type InitError = ();

    async fn create(&self, _: SharedCfg) -> Result<Self::Service, Self::InitError> {
        Ok(self.clone())
    }
}

impl<F: Filter> Service<Io<F>> for TlsAccept {
    type Response = Io<Layer<TlsServerFilter, F>>;
    type Error = std::io::Error;

    async fn call(&self, io: Io<F>, _: ServiceCtx<'_, Self>) -> Result<Self::Response, Self::Error> {
        TlsServerFilter::create(io, self.0.get(), HANDSHAKE_TIMEOUT).await
    }
}

/// The subject Common Name of the client's certificate, if it presented one (it was verified
/// during the handshake).
pub fn peer_common_name<F: Filter>(io: &Io<F>) -> Option<String> {
    let cert = io.query::<PeerCert<'static>>();
    let cert = cert.as_ref()?;
    common_name(cert.0.as_ref())
}

/// [`peer_common_name`] for a connection seen through its `IoRef` (the MQTT handshake).
pub fn peer_common_name_ref(io: &ntex::io::IoRef) -> Option<String> {
    let cert = io.query::<PeerCert<'static>>();
    let cert = cert.as_ref()?;
    common_name(cert.0.as_ref())
}

/// The first CN attribute of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    cert.tbs_certificate.subject.0.iter().flat_map(|rdn| rdn.0.iter()).find(|atv| atv.oid == CN).and_then(
        |atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| atv.value.decode_as::<PrintableStringRef<'_>>().map(|s| s.as_str().to_string()))
                .ok()
        },
    )
}
