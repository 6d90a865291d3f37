//! TLS for protocol gateways, on both legs.
//!
//! Why this exists: an agent whose driver insists on TLS (`sslmode=require`/`verify-full`)
//! must keep working, and the gateway must read the protocol, so the local leg is terminated
//! here with a certificate from the interceptor's own local CA ([`LocalCa`], created on first
//! use in the state directory; operators add its `ca.pem` to the agent's trust store). The
//! upstream leg is a separate TLS session with its own verification mode ([`upstream`]).
//! Both use rustls with the *ring* provider.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("local CA in {path}: {message}")]
    LocalCa { path: PathBuf, message: String },
    #[error("issuing a certificate for {name}: {message}")]
    Issue { name: String, message: String },
    #[error("upstream TLS configuration: {0}")]
    Upstream(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const CA_NAME: &str = "interceptor local CA";

/// The interceptor's own CA for the client-facing leg. Leaf certificates are issued on demand
/// per name the client dialed, and cached.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_cert: CertificateDer<'static>,
    pub ca_path: PathBuf,
    issued: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "interceptor");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl LocalCa {
    /// Loads `<dir>/ca.pem` and `<dir>/ca.key`, creating them (key mode 0600) if absent.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let err = |message: String| TlsError::LocalCa {
            path: dir.to_owned(),
            message,
        };
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let (key, cert_pem) = if cert_path.exists() && key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(|e| err(e.to_string()))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| err(e.to_string()))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| err(e.to_string()))?;
            (key, cert_pem)
        } else {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key = KeyPair::generate().map_err(|e| err(e.to_string()))?;
            let cert = ca_params()
                .and_then(|p| p.self_signed(&key))
                .map_err(|e| err(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(|e| err(e.to_string()))?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| err(e.to_string()))?;
            (key, cert.pem())
        };
        let ca_cert = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| err(format!("ca.pem: {e}")))?;
        // The issuer is rebuilt from the same fixed name and the stored key, so certificates
        // issued after a restart chain to the ca.pem clients already trust.
        let issuer = Issuer::new(ca_params().map_err(|e| err(e.to_string()))?, key);
        Ok(LocalCa {
            issuer,
            ca_cert,
            ca_path: cert_path,
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// A server configuration presenting a certificate for `names` (host names or addresses).
    /// Accepts the agent's TLS handshake with a certificate for what it dialed: its SNI host
    /// name when it sent one, and the address, so verification works whether it connected by
    /// name or by IP. A routed Unix socket has no address: "localhost" stands in for it.
    /// `alpn`: the protocols offered, most preferred first (none for PostgreSQL).
    pub async fn accept_agent<S>(
        &self,
        client: S,
        dialed: Option<std::net::SocketAddr>,
        alpn: &[&[u8]],
    ) -> Result<tokio_rustls::server::TlsStream<S>, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client)
                .await
                .map_err(|e| e.to_string())?;
        let mut names: Vec<String> = start
            .client_hello()
            .server_name()
            .map(str::to_owned)
            .into_iter()
            .collect();
        names.push(dialed.map_or_else(|| "localhost".to_owned(), |d| d.ip().to_string()));
        let mut config = self.server_config(&names).map_err(|e| e.to_string())?;
        if !alpn.is_empty() {
            let mut with_alpn = (*config).clone();
            with_alpn.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config = Arc::new(with_alpn);
        }
        start.into_stream(config).await.map_err(|e| e.to_string())
    }

    pub fn server_config(&self, names: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
        let key = names.join(",");
        if let Some(config) = self
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(config.clone());
        }
        let issue_err = |message: String| TlsError::Issue {
            name: key.clone(),
            message,
        };
        let leaf_key = KeyPair::generate().map_err(|e| issue_err(e.to_string()))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| issue_err(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| issue_err(e.to_string())),
            })
            .collect::<Result<_, _>>()?;
        let cert = params
            .signed_by(&leaf_key, &self.issuer)
            .map_err(|e| issue_err(e.to_string()))?;
        let chain = vec![cert.der().clone(), self.ca_cert.clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| issue_err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| issue_err(e.to_string()))?;
        let config = Arc::new(config);
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if issued.len() > 1024 {
            issued.clear();
        }
        issued.insert(key, config.clone());
        Ok(config)
    }
}

/// Writes a private key: created, never replaced (a concurrent creator makes this fail with
/// `AlreadyExists`), mode 0600, owned by whoever runs this (the service: root).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// A target's `[target.tls]`: how the upstream leg is secured (owned here, assembled by
/// `config`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    Disable,
    /// TLS if the server offers it, plaintext otherwise; certificates are not checked.
    #[default]
    Prefer,
    /// TLS or nothing; certificates are not checked.
    Require,
    /// TLS with the certificate chain and host name checked.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// CA bundle (PEM) for verify-full; default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Name to verify; default: the upstream host.
    pub server_name: Option<String>,
}

/// How to open the upstream leg, prepared once per target.
#[derive(Clone)]
pub struct Upstream {
    pub mode: UpstreamTlsMode,
    pub connector: Option<tokio_rustls::TlsConnector>,
    /// The name to verify; `None` means the address actually connected to (a target without
    /// a fixed upstream goes wherever the agent dialed).
    pub server_name: Option<ServerName<'static>>,
}

impl Upstream {
    pub fn name_for(&self, addr: std::net::SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

/// Builds the upstream TLS settings of a target. `default_host` is the configured upstream's
/// host, if the target has one.
pub fn upstream(
    config: &UpstreamTlsConfig,
    default_host: Option<&str>,
) -> Result<Upstream, TlsError> {
    upstream_as(config, default_host, None)
}

/// A client certificate the gateway presents upstream (a Kubernetes API server's mTLS login).
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and its PEM private key (already read from their files,
    /// so the caller decides where secrets come from).
    pub fn from_pem(cert: &str, key: &str) -> Result<ClientIdentity, TlsError> {
        use rustls_pki_types::pem::PemObject as _;
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Upstream(format!("client certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Upstream(
                "client certificate: no certificate in the PEM".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TlsError::Upstream(format!("client key: {e}")))?;
        Ok(ClientIdentity { chain, key })
    }
}

/// [`upstream`], presenting `client` when the server asks for a certificate.
pub fn upstream_as(
    config: &UpstreamTlsConfig,
    default_host: Option<&str>,
    client: Option<ClientIdentity>,
) -> Result<Upstream, TlsError> {
    let server_name = config
        .server_name
        .as_deref()
        .or(default_host)
        .map(|name| {
            ServerName::try_from(name.to_owned())
                .map_err(|e| TlsError::Upstream(format!("server_name {name:?}: {e}")))
        })
        .transpose()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Upstream(e.to_string()))?;
    let client_config = match config.mode {
        UpstreamTlsMode::Disable => None,
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => Some(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider()))),
        ),
        UpstreamTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match &config.ca_file {
                Some(path) => {
                    let certs: Vec<CertificateDer<'static>> =
                        rustls_pki_types::pem::PemObject::pem_file_iter(path)
                            .and_then(|it| it.collect::<Result<_, _>>())
                            .map_err(|e| {
                                TlsError::Upstream(format!("ca_file {}: {e}", path.display()))
                            })?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(TlsError::Upstream(format!(
                            "ca_file {} holds no usable certificate",
                            path.display()
                        )));
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                }
            }
            Some(builder.with_root_certificates(roots))
        }
    };
    let client_config = match (client_config, client) {
        (None, _) => None,
        (Some(b), None) => Some(b.with_no_client_auth()),
        (Some(b), Some(id)) => Some(
            b.with_client_auth_cert(id.chain, id.key)
                .map_err(|e| TlsError::Upstream(format!("client certificate: {e}")))?,
        ),
    };
    Ok(Upstream {
        mode: config.mode,
        connector: client_config.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c))),
        server_name,
    })
}

/// `prefer` and `require` encrypt without authenticating the server, as libpq's modes of the
/// same names do. Signatures are still checked so the session keys are sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ca_survives_a_restart_and_issues_for_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::load_or_create(dir.path()).expect("create");
        let pem = std::fs::read(&first.ca_path).unwrap();
        first
            .server_config(&["127.0.0.2".to_owned()])
            .expect("issue");
        let again = LocalCa::load_or_create(dir.path()).expect("load");
        assert_eq!(
            std::fs::read(&again.ca_path).unwrap(),
            pem,
            "the CA is kept"
        );
        again
            .server_config(&["127.0.0.2".to_owned(), "db.local".to_owned()])
            .expect("issue after restart");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
