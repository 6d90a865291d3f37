//! Where a secret comes from (a file, an environment variable, a systemd credential), and how
//! it is read: only when it is needed, so rotating it needs no restart, and never printed.
//!
//! Why this exists apart from `config`: the targets' credentials, the local password and the
//! SIEM sinks' tokens all hold secrets, and the modules that use them sit below `config`.

use std::path::PathBuf;

/// Where a secret comes from. Resolved at start-up (so a missing file stops the daemon with a
/// clear error) and read again for each connection (so rotation needs no restart).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(v) => write!(f, "env ${v}"),
        }
    }
}

impl SecretSource {
    /// Reads the secret. Trailing newlines (as `echo` writes them) are not part of it.
    pub fn read(&self) -> Result<String, String> {
        let raw =
            match self {
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {path:?}: {e}"))?,
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| format!("environment variable {var} is not set"))?,
            };
        Ok(raw.trim_end_matches(['\n', '\r']).to_owned())
    }
}
