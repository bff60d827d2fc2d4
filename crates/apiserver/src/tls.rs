//! The cluster's certificates: a CA made on first start, a serving certificate for the API, an
//! admin client certificate, and the admin kubeconfig that carries them; and the client
//! certificate the API server presents to nodes' agents (`kubectl logs`, later exec and
//! port-forward), which agents verify against the CA. Everything is kept under `DATA/pki` and
//! reused on later starts, so kubeconfigs stay valid across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("bad PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.into(), source })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 }).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Files under `DATA/pki`. Agents trust API server connections that present a certificate
/// signed by [`CA_CERT`]; the API server's is [`KUBELET_CLIENT_CERT`] (its subject is
/// [`KUBELET_CLIENT_USER`] in group `system:masters`, as kubeadm's apiserver-kubelet-client).
pub const CA_CERT: &str = "ca.crt";
pub const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
pub const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";
/// The user the API server is when it calls an agent.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The API server's client certificate towards nodes' agents.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params
}

impl Pki {
    /// Loads the PKI under `dir`, creating whatever is missing. `hosts` are the names and
    /// addresses the serving certificate must cover.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.into(), source })?;
        let ca_cert_path = dir.join(CA_CERT);
        let ca_key_path = dir.join("ca.key");
        if !ca_cert_path.exists() || !ca_key_path.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write(&ca_key_path, &key.serialize_pem(), true)?;
            write(&ca_cert_path, &cert.pem(), false)?;
        }
        let ca_pem = read(&ca_cert_path)?;
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
        // The CA's parameters are fixed, so the issuer is rebuilt from them and its key rather than
        // by parsing the certificate back.
        let issuer = Issuer::new(ca_params(), ca_key);

        let server_cert_path = dir.join("server.crt");
        let server_key_path = dir.join("server.key");
        let hosts_path = dir.join("server.hosts");
        let wanted_hosts = hosts.join(",");
        let hosts_match = std::fs::read_to_string(&hosts_path).is_ok_and(|h| h == wanted_hosts);
        if !server_cert_path.exists() || !server_key_path.exists() || !hosts_match {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "berth-apiserver");
            params.distinguished_name = dn;
            params.subject_alt_names = hosts
                .iter()
                .map(|h| match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => h.clone().try_into().map(SanType::DnsName),
                })
                .collect::<Result<_, _>>()?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let cert = params.signed_by(&key, &issuer)?;
            write(&server_key_path, &key.serialize_pem(), true)?;
            write(&server_cert_path, &cert.pem(), false)?;
            write(&hosts_path, &wanted_hosts, false)?;
        }

        let admin_cert_path = dir.join("admin.crt");
        let admin_key_path = dir.join("admin.key");
        if !admin_cert_path.exists() || !admin_key_path.exists() {
            let (cert, key) = issue_client_cert(&issuer, ADMIN_USER, &[ADMIN_GROUP])?;
            write(&admin_key_path, &key, true)?;
            write(&admin_cert_path, &cert, false)?;
        }

        // Made on first start of a version that has it, so existing data dirs gain it too.
        let kubelet_client_cert_path = dir.join(KUBELET_CLIENT_CERT);
        let kubelet_client_key_path = dir.join(KUBELET_CLIENT_KEY);
        if !kubelet_client_cert_path.exists() || !kubelet_client_key_path.exists() {
            let (cert, key) = issue_client_cert(&issuer, KUBELET_CLIENT_USER, &["system:masters"])?;
            write(&kubelet_client_key_path, &key, true)?;
            write(&kubelet_client_cert_path, &cert, false)?;
        }
        Ok(Self {
            dir: dir.into(),
            ca_pem,
            server_cert_pem: read(&server_cert_path)?,
            server_key_pem: read(&server_key_path)?,
            admin_cert_pem: read(&admin_cert_path)?,
            admin_key_pem: read(&admin_key_path)?,
            kubelet_client_cert_pem: read(&kubelet_client_cert_path)?,
            kubelet_client_key_pem: read(&kubelet_client_key_path)?,
        })
    }

    /// A kubeconfig for the admin user against `server` (an https URL).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: berth\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: berth\n  context:\n    cluster: berth\n    user: admin\n    namespace: default\ncurrent-context: berth\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }

    pub fn write_admin_kubeconfig(&self, path: &Path, server: &str) -> Result<(), TlsError> {
        write(path, &self.admin_kubeconfig(server), true)
    }

    /// The rustls server configuration: our serving certificate, HTTP/2 and HTTP/1.1, and client
    /// certificates verified against our CA when offered (optional, so bearer tokens work too).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let pem_err = |path: &str, e: rustls::pki_types::pem::Error| TlsError::Pem { path: self.dir.join(path), message: e.to_string() };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("server.crt", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).map_err(|e| pem_err("server.key", e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(ca.map_err(|e| pem_err("ca.crt", e))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn issue_client_cert(issuer: &Issuer<'_, KeyPair>, user: &str, groups: &[&str]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Who a verified client certificate names: CN is the user, O entries are groups.
/// The admin user of the generated admin kubeconfig, and its group.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_GROUP: &str = "system:masters";

#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// Who the admin kubeconfig authenticates as; in-process components act as it too.
    pub fn admin() -> Self {
        Identity { user: ADMIN_USER.to_string(), groups: vec![ADMIN_GROUP.to_string()] }
    }
}

/// Reads the subject of a DER certificate well enough to get CN and O (the full X.509 parse is not
/// needed: rustls already verified the chain).
pub fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    // OIDs 2.5.4.3 (CN) and 2.5.4.10 (O), each followed by a string tag and a short length.
    let mut identity = Identity::default();
    let mut i = 0;
    while i + 5 < der.len() {
        if der[i] == 0x06 && der[i + 1] == 0x03 && der[i + 2] == 0x55 && der[i + 3] == 0x04 && (der[i + 4] == 0x03 || der[i + 4] == 0x0a) {
            let tag_at = i + 5;
            if tag_at + 2 <= der.len() && matches!(der[tag_at], 0x0c | 0x13 | 0x16) {
                let len = der[tag_at + 1] as usize;
                if len < 0x80 && tag_at + 2 + len <= der.len() {
                    let value = String::from_utf8_lossy(&der[tag_at + 2..tag_at + 2 + len]).into_owned();
                    if der[i + 4] == 0x03 {
                        // The issuer's CN comes first in the DER; the subject's comes last.
                        identity.user = value;
                        identity.groups.clear();
                    } else {
                        identity.groups.push(value);
                    }
                }
            }
            i = tag_at;
        } else {
            i += 1;
        }
    }
    (!identity.user.is_empty()).then_some(identity)
}
