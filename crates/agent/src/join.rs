//! Joining a cluster with the server's node token (`DATA/node-token` on the server, see the API
//! server's join.rs): fetch the CA from `/cacerts` without trusting anything yet, accept it only
//! if its hash is the one in the token, then write a kubeconfig that trusts that CA and presents
//! the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the token is not a berth node token (expected B10<hash>::node:<secret>)")]
    BadToken,
    #[error("bad server URL {0:?} (expected https://HOST:PORT)")]
    BadUrl(String),
    #[error("fetching the cluster CA from {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the server's CA does not match the token: someone may be in the middle, or the token is for another cluster")]
    CaMismatch,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The CA hash a token pins.
pub fn token_ca_hash(token: &str) -> Result<&str, JoinError> {
    let rest = token.trim().strip_prefix("B10").ok_or(JoinError::BadToken)?;
    let (hash, secret) = rest.split_once("::node:").ok_or(JoinError::BadToken)?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        return Err(JoinError::BadToken);
    }
    Ok(hash)
}

/// Accepts any certificate; handshake signatures are still verified. The join uses it only to
/// fetch the CA, whose hash is then checked against the token; HTTPS probes use it because the
/// kubelet does not verify probed servers either (pods serve self-signed certificates).
#[derive(Debug)]
pub(crate) struct AcceptAnyServerCert(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn fetch_ca(server: &str) -> Result<String, JoinError> {
    let url = format!("{}/cacerts", server.trim_end_matches('/'));
    let fail = |message: String| JoinError::Fetch { url: url.clone(), message };
    let authority = server.strip_prefix("https://").ok_or_else(|| JoinError::BadUrl(server.into()))?.trim_end_matches('/');
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        _ => return Err(JoinError::BadUrl(server.into())),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(authority.trim_start_matches('[').replace("]:", ":")).await.map_err(|e| fail(e.to_string()))?;
    let name = ServerName::try_from(host).map_err(|e| fail(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| fail(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| fail(e.to_string()))?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/cacerts").header(hyper::header::HOST, authority).body(Empty::<bytes::Bytes>::new()).map_err(|e| fail(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let body = response.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| fail("the CA is not text".into()))
}

/// Checks the server against the token and writes `DIR/kubeconfig` for the agent; returns its
/// path and the CA.
pub async fn bootstrap(server: &str, token: &str, dir: &Path) -> Result<(PathBuf, String), JoinError> {
    let expected = token_ca_hash(token)?.to_ascii_lowercase();
    let ca = fetch_ca(server).await?;
    let actual: String = Sha256::digest(ca.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    if actual != expected {
        return Err(JoinError::CaMismatch);
    }
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: node\n  user:\n    token: {}\ncontexts:\n- name: berth\n  context:\n    cluster: berth\n    user: node\ncurrent-context: berth\n",
        token.trim()
    );
    std::fs::create_dir_all(dir).map_err(|source| JoinError::Io { path: dir.into(), source })?;
    let path = dir.join("kubeconfig");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| JoinError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(io)?;
        file.write_all(kubeconfig.as_bytes()).map_err(io)?;
    }
    Ok((path, ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_for_shape() {
        let hash = "a".repeat(64);
        assert_eq!(token_ca_hash(&format!("B10{hash}::node:secret")).unwrap(), hash);
        for bad in ["", "K10abc::node:x", &format!("B10{hash}::node:"), "B10zz::node:x", &format!("B10{hash}:node:x")] {
            assert!(token_ca_hash(bad).is_err(), "{bad}");
        }
    }
}
