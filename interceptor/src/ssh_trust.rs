//! The gateway's SSH identity: an SSH CA and the host key it certifies.
//!
//! Why this exists: an SSH gateway reads the session, so it must be the server the agent's
//! client authenticates. The client only goes on if it trusts the host key it is shown, and the
//! gateway answers for every host the agent dials, under names it never sees. So the trust
//! anchor is an SSH CA of our own (`@cert-authority * …` in the client's known_hosts), and the
//! gateway presents one host key with a host certificate the CA signed for *any* name: OpenSSH
//! accepts a host certificate with no principals for whatever name the client typed
//! (`sshkey_cert_check_host` passes `require_principal = 0` for host certificates). Clients
//! that do not understand certificates (paramiko) trust the host key itself instead.
//!
//! What it keeps, in the state directory next to the TLS CA ([`crate::tls::LocalCa`]), in
//! OpenSSH's own formats so `ssh-keygen -L -f` can read them:
//! - `ssh_ca_ed25519_key` (0600) and `ssh_ca_ed25519_key.pub`;
//! - `ssh_host_ed25519_key` (0600), `ssh_host_ed25519_key.pub`, and
//!   `ssh_host_ed25519_key-cert.pub`, the host certificate.
//!
//! Keys are ed25519, created on first need and kept; the certificate is re-issued whenever it
//! no longer matches the two keys (an operator who deletes the CA to rotate it gets a new one
//! on the next start). Private keys are written once with mode 0600 and never logged.
//! What it does not do: speak SSH. The SSH gateway takes [`SshTrust`] from here.
//! `interceptor ca known-hosts` and `exec --trust-ssh` read [`SshPublicKeys`].

use std::{
    io,
    path::{Path, PathBuf},
};

use russh::keys::{
    ssh_key::{
        certificate::{self, CertType},
        LineEnding,
    },
    Algorithm, Certificate, HashAlg, PrivateKey, PublicKey,
};

/// The CA's key file in the state directory (its public half adds `.pub`).
pub const CA_KEY_FILE: &str = "ssh_ca_ed25519_key";
/// The gateway's host key file (`.pub` and `-cert.pub` beside it).
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// The comment on the CA key: what `@cert-authority` lines end with.
const CA_COMMENT: &str = "interceptor-ssh-ca";
const HOST_COMMENT: &str = "interceptor-ssh-host";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshTrustError {
    /// A key or certificate file cannot be read or written (the kind stays, so a reader
    /// without permission exits 3).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file is there but is not what we wrote (damaged, or replaced by hand).
    #[error("{}: not a usable OpenSSH key or certificate: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Generating a key or signing the certificate failed.
    #[error("SSH trust: {0}")]
    Crypto(String),
    /// `--pattern` cannot stand as the host field of a known_hosts line.
    #[error("known_hosts pattern {0:?}: must be non-empty, without spaces, and not start with '#' or '@'")]
    Pattern(String),
}

/// Everything the SSH gateway presents: the host key, and its certificate from the CA.
/// No `Debug`: it holds a private key.
pub struct SshTrust {
    /// The CA's public key (its private key is only read to sign, and is dropped after).
    pub ca: PublicKey,
    /// The gateway's host key.
    pub host_key: PrivateKey,
    /// `host_key`'s host certificate, valid for any host name, signed by `ca`.
    pub host_cert: Certificate,
}

impl SshTrust {
    /// Loads the CA, the host key and its certificate from `dir`, creating what is missing
    /// (the private keys 0600). Needs write access to `dir` the first time (root, for the
    /// service's state directory).
    pub fn load_or_create(dir: &Path) -> Result<SshTrust, SshTrustError> {
        std::fs::create_dir_all(dir).map_err(|source| SshTrustError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let ca_key = private_key(&dir.join(CA_KEY_FILE), CA_COMMENT)?;
        let host_key = private_key(&dir.join(HOST_KEY_FILE), HOST_COMMENT)?;
        let host_cert = host_certificate(&cert_path(dir), &ca_key, &host_key)?;
        Ok(SshTrust {
            ca: ca_key.public_key().clone(),
            host_key,
            host_cert,
        })
    }
}

/// The public halves, which anyone who may read the state directory may have: what clients
/// are told to trust.
pub struct SshPublicKeys {
    pub ca: PublicKey,
    pub host: PublicKey,
}

impl SshPublicKeys {
    /// Reads the two `.pub` files; if either is missing, creates everything first
    /// ([`SshTrust::load_or_create`], which needs root for the service's state directory).
    pub fn read_or_create(dir: &Path) -> Result<SshPublicKeys, SshTrustError> {
        match Self::read(dir) {
            Err(SshTrustError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let trust = SshTrust::load_or_create(dir)?;
                Ok(SshPublicKeys {
                    ca: trust.ca,
                    host: trust.host_key.public_key().clone(),
                })
            }
            other => other,
        }
    }

    fn read(dir: &Path) -> Result<SshPublicKeys, SshTrustError> {
        Ok(SshPublicKeys {
            ca: public_key(&pub_path(&dir.join(CA_KEY_FILE)))?,
            host: public_key(&pub_path(&dir.join(HOST_KEY_FILE)))?,
        })
    }

    /// known_hosts lines for these keys (each ends with a newline). `pattern` is the host
    /// field: `*` matches every host for OpenSSH and asyncssh; paramiko matches names exactly
    /// (`host` or `[host]:port`), so its users pass the names, comma-separated.
    pub fn known_hosts(
        &self,
        pattern: &str,
        lines: KnownHostsLines,
    ) -> Result<String, SshTrustError> {
        if pattern.is_empty()
            || pattern.contains(char::is_whitespace)
            || pattern.starts_with(['#', '@'])
        {
            return Err(SshTrustError::Pattern(pattern.to_owned()));
        }
        let openssh = |key: &PublicKey| {
            key.to_openssh()
                .map_err(|e| SshTrustError::Crypto(e.to_string()))
        };
        let mut out = String::new();
        if matches!(
            lines,
            KnownHostsLines::Both | KnownHostsLines::CertAuthority
        ) {
            out += &format!("@cert-authority {pattern} {}\n", openssh(&self.ca)?);
        }
        if matches!(lines, KnownHostsLines::Both | KnownHostsLines::HostKey) {
            out += &format!("{pattern} {}\n", openssh(&self.host)?);
        }
        Ok(out)
    }
}

/// Which known_hosts lines to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsLines {
    /// `@cert-authority` for the CA: OpenSSH, asyncssh.
    CertAuthority,
    /// The host key itself: clients without certificate support (paramiko).
    HostKey,
    /// Both: each client uses the line it understands and skips the other.
    Both,
}

fn pub_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn cert_path(dir: &Path) -> PathBuf {
    dir.join(format!("{HOST_KEY_FILE}-cert.pub"))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SshTrustError + '_ {
    move |source| SshTrustError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path) -> impl FnOnce(russh::keys::ssh_key::Error) -> SshTrustError + '_ {
    move |e| SshTrustError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The private key at `path`, generated (ed25519) if there is none; its `.pub` is rewritten
/// when missing or stale, since that is what unprivileged readers look at.
fn private_key(path: &Path, comment: &str) -> Result<PrivateKey, SshTrustError> {
    let key = match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text).map_err(invalid(path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
                .map_err(|e| SshTrustError::Crypto(e.to_string()))?;
            key.set_comment(comment);
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| SshTrustError::Crypto(e.to_string()))?;
            match crate::tls::write_private(path, text.as_bytes()) {
                Ok(()) => key,
                // Another process (the service and an `exec`) created it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
                    PrivateKey::from_openssh(text).map_err(invalid(path))?
                }
                Err(e) => return Err(io_error(path)(e)),
            }
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| SshTrustError::Crypto(e.to_string()))?
        + "\n";
    write_public_if_changed(&pub_path(path), &public)?;
    Ok(key)
}

fn public_key(path: &Path) -> Result<PublicKey, SshTrustError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    PublicKey::from_openssh(text.trim()).map_err(invalid(path))
}

/// Public files are 0644: clients and unprivileged operators read them.
fn write_public_if_changed(path: &Path, text: &str) -> Result<(), SshTrustError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)))
        .map_err(io_error(path))
}

/// The host certificate at `path` if it certifies `host_key` under `ca_key` and is valid
/// now; otherwise a new one, written over it.
fn host_certificate(
    path: &Path,
    ca_key: &PrivateKey,
    host_key: &PrivateKey,
) -> Result<Certificate, SshTrustError> {
    let ca_fingerprint = ca_key.fingerprint(HashAlg::Sha256);
    let current = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| Certificate::from_openssh(text.trim()).ok())
        .filter(|cert| {
            cert.public_key() == host_key.public_key().key_data()
                && cert.cert_type() == CertType::Host
                && cert.validate([&ca_fingerprint]).is_ok()
        });
    if let Some(cert) = current {
        return Ok(cert);
    }
    let crypto = |e: russh::keys::ssh_key::Error| SshTrustError::Crypto(e.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| SshTrustError::Crypto(e.to_string()))?
        .as_secs();
    // From a day back (clients whose clock lags a little still accept it) to OpenSSH's
    // "forever": the CA is the trust anchor, and rotating it re-issues this certificate.
    let mut builder = certificate::Builder::new_with_random_nonce(
        &mut rand::rng(),
        host_key.public_key().key_data().clone(),
        now.saturating_sub(86_400),
        u64::MAX,
    )
    .map_err(crypto)?;
    // No principals: valid for whatever name the client dialed, which the gateway cannot know.
    builder
        .cert_type(CertType::Host)
        .and_then(|b| b.key_id("interceptor gateway host key"))
        .and_then(|b| b.all_principals_valid())
        .and_then(|b| b.comment(HOST_COMMENT))
        .map_err(crypto)?;
    let cert = builder.sign(ca_key).map_err(crypto)?;
    let text = cert.to_openssh().map_err(crypto)? + "\n";
    write_public_if_changed(path, &text)?;
    Ok(cert)
}

#[cfg(test)]
mod tests;
