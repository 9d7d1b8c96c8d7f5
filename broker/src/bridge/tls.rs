//! TLS towards a bridge's remote: the rustls client config (CA, optional client
//! certificate, optional "insecure" verifier) and the connect target carrying the server name.

use std::net::SocketAddr;
use std::sync::Arc;

use fleetmq_config::BridgeTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::transport::tls::{TlsError, certificates, read};

/// Builds the client config of bridge `index` (files are read now, so rotated files apply
/// at the next connect).
pub fn client_config(index: usize, tls: &BridgeTls) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_at(&format!("bridges[{index}].tls"), tls)
}

/// Builds a client config from the `tls` block at config key `base` (named in errors).
pub fn client_config_at(base: &str, tls: &BridgeTls) -> Result<Arc<ClientConfig>, TlsError> {
    let base = base.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config { key: base.clone(), reason: e.to_string() })?;
    let builder = if tls.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(ca_file) = &tls.ca_file {
            let key = format!("{base}.ca_file");
            for cert in certificates(&key, ca_file)? {
                roots.add(cert).map_err(|e| TlsError::Content {
                    key: key.clone(),
                    path: ca_file.clone(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = certificates(&format!("{base}.cert_file"), cert_file)?;
            let key_key = format!("{base}.key_file");
            let pem = read(&key_key, key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Content {
                key: key_key.clone(),
                path: key_file.clone(),
                reason: format!("no usable private key: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config { key: format!("{base}.cert_file"), reason: e.to_string() })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Repeats a TLS handshake that failed inside ntex (which reports only a closed connection)
/// with plain rustls over a blocking socket, to learn why: e.g. `invalid peer certificate:
/// UnknownIssuer` or `received fatal alert: CertificateRequired`. Bounded by 5s per socket
/// operation. `None` when this handshake succeeds (the failure was not TLS) or cannot start.
pub fn diagnose(config: Arc<ClientConfig>, target: &Target) -> Option<String> {
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let name = ServerName::try_from(target.server_name.clone()).ok()?;
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    let mut socket = std::net::TcpStream::connect_timeout(&target.addr, TIMEOUT).ok()?;
    socket.set_read_timeout(Some(TIMEOUT)).ok()?;
    socket.set_write_timeout(Some(TIMEOUT)).ok()?;
    while conn.is_handshaking() {
        if let Err(err) = conn.complete_io(&mut socket) {
            return Some(err.to_string());
        }
    }
    // TLS 1.3: a server refusing our client certificate says so right after our Finished;
    // a healthy server says nothing (it waits for CONNECT), so wait only briefly.
    socket.set_read_timeout(Some(std::time::Duration::from_secs(1))).ok()?;
    match conn.complete_io(&mut socket) {
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => Some(err.to_string()),
        _ => None,
    }
}

/// A remote to connect to: the name checked against its certificate (and sent as SNI) may
/// differ from the address dialled (`tls.server_name`).
#[derive(Debug, Clone)]
pub struct Target {
    /// Name for the certificate check.
    pub server_name: String,
    /// Address dialled (resolved beforehand).
    pub addr: SocketAddr,
}

impl ntex::connect::Address for Target {
    fn host(&self) -> &str {
        &self.server_name
    }

    fn port(&self) -> Option<u16> {
        Some(self.addr.port())
    }

    fn addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
}

/// `insecure_skip_verify`: any certificate is accepted; signatures are still checked so the
/// handshake itself stays well-formed.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
