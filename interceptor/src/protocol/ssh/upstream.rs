//! The server's leg: a russh client that checks the server's host key against the target's
//! `known_hosts` and logs in with the target's user and private key.
//!
//! Why the host key is checked before anything else: the gateway holds the credential, so a
//! server impersonating the real one would get the gateway's login and every command. A key
//! that differs from the one listed ends the session and is journaled (`ssh_host_key`); a
//! server not listed at all is refused the same way; so is a key on an `@revoked` line. The
//! file is read as OpenSSH reads it ([`super::known_hosts`]): hashed names, patterns, and
//! `@cert-authority` lines, for which the server is asked for its host certificate. Agent
//! forwarding is never requested.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use russh::{
    client::{self, Handle, Handler},
    keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate},
    Disconnect, SshId,
};

use super::known_hosts::{KnownHosts, Verdict};
use crate::{
    command::Hooks,
    protocol::Dial,
    target::{Credentials, Target},
};

/// Why the upstream login failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("target {0:?} has no [target.credentials] user and key_file: the gateway cannot log in for the agent")]
    NoCredentials(String),
    #[error("cannot read the private key: {0}")]
    Key(String),
    #[error(transparent)]
    Dial(#[from] crate::protocol::DialError),
    #[error("server host key rejected: {0}")]
    HostKey(String),
    #[error("the server refused the login of {user:?} with the configured key")]
    LoginRefused { user: String },
    #[error("SSH: {0}")]
    Ssh(String),
}

/// The logged-in connection to the server.
pub struct Upstream {
    pub handle: Handle<Server>,
    pub user: String,
    /// SHA-256 fingerprint of the server's host key, as `ssh-keygen -l` prints it.
    pub host_key_fingerprint: String,
}

impl Upstream {
    /// Ends the connection politely (the session is over).
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "session ended", "en")
            .await;
    }
}

/// What the host-key check found; read by [`login`] once the handshake is over.
#[derive(Debug, Clone)]
enum Checked {
    Trusted(String),
    Rejected(String),
}

/// The client handler: only the host-key check. Channels the server would open toward us
/// (forwarded ports, X11, agent) are refused by russh's defaults.
pub struct Server {
    host: String,
    port: u16,
    known_hosts: std::path::PathBuf,
    trusted: Arc<KnownHosts>,
    checked: Arc<Mutex<Option<Checked>>>,
}

impl Server {
    /// The verdict in words, with the presented key's fingerprint when it is trusted.
    fn checked(&self, verdict: Verdict, fingerprint: String) -> Checked {
        let name = host_field(&self.host, self.port);
        let file = self.known_hosts.display();
        match verdict {
            Verdict::Trusted { .. } => Checked::Trusted(fingerprint),
            Verdict::Unknown => Checked::Rejected(format!(
                "{name} is not in {file} (its key is {fingerprint})"
            )),
            Verdict::Changed { line } => Checked::Rejected(format!(
                "{name} presented {fingerprint}, which is not the key on line {line} of {file}: \
                 the server changed its key or is not the server"
            )),
            Verdict::Revoked { line } => Checked::Rejected(format!(
                "{name} presented {fingerprint}, which line {line} of {file} revokes"
            )),
            Verdict::CertificateRejected(why) => Checked::Rejected(format!(
                "{name} presented a host certificate ({fingerprint}) that {file} does not \
                 vouch for: {why}"
            )),
        }
    }
}

/// The host key types whose certificates the gateway asks for, most preferred first.
const CERTIFICATE_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// How known_hosts names the server: `host`, or `[host]:port` off port 22.
fn host_field(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl Handler for Server {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let name = host_field(&self.host, self.port);
        let checked = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                self.checked(self.trusted.check_key(&name, key), fingerprint)
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                let fingerprint = russh::keys::PublicKey::new(cert.public_key().clone(), "")
                    .fingerprint(HashAlg::Sha256)
                    .to_string();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let verdict = self.trusted.check_certificate(&name, &self.host, cert, now);
                self.checked(verdict, fingerprint)
            }
        };
        let trusted = matches!(checked, Checked::Trusted(_));
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(checked);
        Ok(trusted)
    }
}

/// Dials the server, checks its host key and logs in. A rejected host key is journaled
/// (`ssh_host_key`) before the error ends the session.
pub async fn login(
    target: &Target,
    dial: &impl Dial,
    hooks: &impl Hooks,
) -> Result<Upstream, UpstreamError> {
    let Some(Credentials::Ssh {
        user,
        key,
        known_hosts,
    }) = &target.credentials
    else {
        return Err(UpstreamError::NoCredentials(target.name.clone()));
    };
    // Read per connection, so a rotated key needs no restart; errors name the source only.
    let text = key.read().map_err(UpstreamError::Key)?;
    let private = russh::keys::decode_secret_key(&text, None)
        .map_err(|e| UpstreamError::Key(format!("not an unencrypted OpenSSH private key ({e})")))?;
    drop(text);
    let addr: SocketAddr = dial.addr();
    // Read per connection too: an operator's edit (a new key, a revocation) applies to the
    // next session. A file that cannot be used refuses the session.
    let trusted =
        Arc::new(KnownHosts::load(known_hosts).map_err(|e| UpstreamError::HostKey(e.to_string()))?);
    let stream = dial.dial().await?;
    let _ = stream.set_nodelay(true);
    let checked = Arc::new(Mutex::new(None));
    let server = Server {
        host: addr.ip().to_string(),
        port: addr.port(),
        known_hosts: known_hosts.clone(),
        trusted: trusted.clone(),
        checked: checked.clone(),
    };
    let mut preferred = russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(super::UPSTREAM_CIPHERS),
        ..russh::Preferred::default()
    };
    // A server is asked for its host certificate only when an authority could vouch for it:
    // otherwise a server with one would be refused for presenting it.
    if trusted.has_authority_for(&host_field(&server.host, server.port)) {
        preferred.host_key_certificates = std::borrow::Cow::Borrowed(CERTIFICATE_KEYS);
    }
    let config = Arc::new(client::Config {
        client_id: SshId::Standard("SSH-2.0-interceptor".into()),
        inactivity_timeout: None,
        nodelay: true,
        preferred,
        ..client::Config::default()
    });
    let connected = client::connect_stream(config, stream, server).await;
    let outcome = checked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut handle = match (connected, outcome) {
        (Ok(handle), Some(Checked::Trusted(_))) => handle,
        (_, Some(Checked::Rejected(reason))) => {
            hooks.note(
                "ssh_host_key",
                serde_json::json!({
                    "upstream": addr.to_string(),
                    "known_hosts": known_hosts.display().to_string(),
                    "reason": reason,
                }),
            );
            return Err(UpstreamError::HostKey(reason));
        }
        (Err(e), _) => return Err(UpstreamError::Ssh(e.to_string())),
        (Ok(_), None) => {
            return Err(UpstreamError::HostKey(
                "the handshake ended without a host key check".to_owned(),
            ))
        }
    };
    let fingerprint = match checked.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        Some(Checked::Trusted(f)) => f,
        _ => String::new(),
    };
    // RSA keys sign with SHA-2 (what the server says it takes, SHA-256 if it says nothing).
    let hash = if private.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
            .or(Some(HashAlg::Sha256))
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(
            user.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(private), hash),
        )
        .await
        .map_err(|e| UpstreamError::Ssh(e.to_string()))?;
    if !auth.success() {
        return Err(UpstreamError::LoginRefused { user: user.clone() });
    }
    Ok(Upstream {
        handle,
        user: user.clone(),
        host_key_fingerprint: fingerprint,
    })
}
