//! `exec --trust-tls` and `--trust-ssh`: the files one run hands its command so that the
//! command's clients trust the gateway, and the environment that points them there.
//!
//! Why this exists: a gateway that terminates TLS or SSH shows the agent certificates and host
//! keys of its own. Installing our CA system-wide is an operator's decision (docs/trust.md);
//! for a single run, `exec` can instead point the usual client variables at files made for the
//! run, and remove them when it ends.
//!
//! - TLS: a bundle of the system's CA certificates *plus* the local CA. `SSL_CERT_FILE`
//!   *replaces* OpenSSL's default bundle, so a bundle with only our CA would break every
//!   connection the gateway does not terminate. No system certificate found is an error.
//! - SSH: a known_hosts file with the `@cert-authority` and host-key lines
//!   ([`crate::ssh_trust`]), and an `ssh` wrapper put first on `PATH` that runs the real `ssh`
//!   with it as an extra `UserKnownHostsFile` (the agent's own `~/.ssh/known_hosts` stays,
//!   first, so hosts the gateway does not answer for verify as before and learned keys land
//!   where they always did). `GIT_SSH_COMMAND` names the wrapper; `INTERCEPTOR_KNOWN_HOSTS`
//!   and `INTERCEPTOR_SSH_HOST_KEY` are for libraries (asyncssh, paramiko) that read neither.
//!
//! The files live in `<runtime dir>/trust/<run id>/`: the directory root's (0711, so the agent
//! can reach names it is given but add nothing), the files the agent's (0400, the wrapper
//! 0500), so no other user reads them. [`RunTrust`] removes the directory when dropped.

use std::{
    ffi::OsString,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::ssh_trust::{KnownHostsLines, SshPublicKeys, SshTrustError};

/// The variables `--trust-tls` points at the bundle: OpenSSL's (Python's `ssl`, httpx,
/// aiohttp, Ruby), requests', Node's (which adds them to its own roots), the curl tool's, and
/// git's over HTTPS (libcurl ignores the others).
pub const TLS_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// Which trust a run hands its command (`exec --trust-tls`, `--trust-ssh`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustOptions {
    pub tls: bool,
    pub ssh: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunTrustError {
    #[error("--trust-tls: {0}")]
    LocalCa(#[from] crate::tls::TlsError),
    #[error("--trust-tls: no system CA certificates found ({0}); without them the bundle would break every TLS connection the gateway does not terminate: install ca-certificates, or set SSL_CERT_FILE yourself")]
    NoSystemCertificates(String),
    #[error("--trust-ssh: {0}")]
    Ssh(#[from] SshTrustError),
    #[error("preparing the run's trust files in {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The run's trust files and the environment that names them; removed when dropped.
#[derive(Debug, Default)]
pub struct RunTrust {
    dir: Option<PathBuf>,
    env: Vec<(&'static str, OsString)>,
    /// Put first on the command's `PATH` (the `ssh` wrapper's directory).
    path_first: Option<PathBuf>,
}

impl RunTrust {
    /// Writes what `options` asks for, owned by `owner` (uid, gid). Nothing asked, nothing
    /// written.
    pub fn prepare(
        options: TrustOptions,
        state_dir: &Path,
        runtime_dir: &Path,
        run_id: &str,
        owner: (u32, u32),
    ) -> Result<RunTrust, RunTrustError> {
        let mut trust = RunTrust::default();
        if !options.tls && !options.ssh {
            return Ok(trust);
        }
        let parent = runtime_dir.join("trust");
        let dir = parent.join(run_id);
        make_dir(&parent, 0o755)?;
        make_dir(&dir, 0o711)?;
        // From here on, dropping `trust` removes what was made, on the error paths too.
        trust.dir = Some(dir.clone());
        if options.tls {
            let bundle = dir.join("ca-bundle.pem");
            write_owned(&bundle, tls_bundle(state_dir)?.as_bytes(), 0o400, owner)?;
            for var in TLS_VARIABLES {
                trust.env.push((var, bundle.clone().into_os_string()));
            }
        }
        if options.ssh {
            let keys = SshPublicKeys::read_or_create(state_dir)?;
            let known_hosts = dir.join("known_hosts");
            write_owned(
                &known_hosts,
                keys.known_hosts("*", KnownHostsLines::Both)?.as_bytes(),
                0o400,
                owner,
            )?;
            trust
                .env
                .push(("INTERCEPTOR_KNOWN_HOSTS", known_hosts.clone().into()));
            let host_key = keys
                .host
                .to_openssh()
                .map_err(|e| RunTrustError::Ssh(SshTrustError::Crypto(e.to_string())))?;
            trust
                .env
                .push(("INTERCEPTOR_SSH_HOST_KEY", host_key.into()));
            match find_program("ssh") {
                Some(real_ssh) => {
                    let bin = dir.join("bin");
                    make_dir(&bin, 0o711)?;
                    let wrapper = bin.join("ssh");
                    write_owned(
                        &wrapper,
                        ssh_wrapper(&real_ssh, &known_hosts).as_bytes(),
                        0o500,
                        owner,
                    )?;
                    trust
                        .env
                        .push(("GIT_SSH_COMMAND", sh_quote(wrapper.as_os_str()).into()));
                    trust.path_first = Some(bin);
                }
                None => tracing::warn!(
                    "--trust-ssh: no ssh on PATH to wrap; INTERCEPTOR_KNOWN_HOSTS is still set"
                ),
            }
        }
        Ok(trust)
    }

    /// Sets the variables on the command about to be spawned.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        for (var, value) in &self.env {
            cmd.env(var, value);
        }
        if let Some(first) = &self.path_first {
            let rest = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            let mut path = first.clone().into_os_string();
            path.push(":");
            path.push(rest);
            cmd.env("PATH", path);
        }
    }
}

impl Drop for RunTrust {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the run's trust files");
            }
        }
    }
}

/// The system's CA certificates (wherever this platform keeps them: rustls-native-certs
/// honours `SSL_CERT_FILE`/`SSL_CERT_DIR` and probes the usual bundle files and directories),
/// then the local CA, in PEM.
fn tls_bundle(state_dir: &Path) -> Result<String, RunTrustError> {
    let ca = crate::tls::LocalCa::load_or_create(state_dir)?;
    let ca_pem = std::fs::read_to_string(&ca.ca_path).map_err(|source| RunTrustError::Io {
        path: ca.ca_path.clone(),
        source,
    })?;
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none on this host".to_owned(), ToString::to_string);
        return Err(RunTrustError::NoSystemCertificates(why));
    }
    // The bundle file and the hashed directory usually hold the same certificates: once each.
    let mut ders: Vec<&[u8]> = found.certs.iter().map(|der| der.as_ref()).collect();
    ders.sort_unstable();
    ders.dedup();
    let system: Vec<pem::Pem> = ders
        .into_iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der))
        .collect();
    let mut bundle = pem::encode_many_config(
        &system,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    bundle.push_str(&ca_pem);
    Ok(bundle)
}

fn ssh_wrapper(real_ssh: &Path, known_hosts: &Path) -> String {
    let mut files = OsString::from("UserKnownHostsFile=~/.ssh/known_hosts ");
    files.push(known_hosts);
    format!(
        "#!/bin/sh\n\
         # interceptor exec --trust-ssh: the real ssh, trusting the gateway's SSH CA and host key too.\n\
         exec {} -o {} \"$@\"\n",
        sh_quote(real_ssh.as_os_str()),
        sh_quote(&files),
    )
}

/// Single-quoted for sh: safe for any path.
fn sh_quote(text: &std::ffi::OsStr) -> String {
    format!("'{}'", text.to_string_lossy().replace('\'', r"'\''"))
}

/// The first executable `name` on this process's `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Creates `dir` (not its parents' modes) if needed, and sets its mode; root keeps it.
fn make_dir(dir: &Path, mode: u32) -> Result<(), RunTrustError> {
    let io = |source| RunTrustError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// A new file (never an existing one, nor through a link), then handed to `owner`.
fn write_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<(), RunTrustError> {
    let io = |source| RunTrustError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1)).map_err(io)
}

#[cfg(test)]
mod tests;
