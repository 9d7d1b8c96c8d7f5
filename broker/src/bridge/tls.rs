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
    let base = format!("bridges[{index}].tls");
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
