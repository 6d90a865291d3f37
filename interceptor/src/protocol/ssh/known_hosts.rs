//! The target's `known_hosts`, read the way OpenSSH's `ssh` reads it: which keys and which
//! certificate authorities the gateway trusts for the server it dials, and which keys are
//! revoked.
//!
//! Why this exists: operators hand the gateway the `known_hosts` their own `ssh` uses, and that
//! file is written in all of OpenSSH's forms: hashed names (`|1|salt|hash`, `HashKnownHosts`),
//! patterns (`*.db.internal`, `10.0.0.?`, `!bastion`), `[host]:port`, `@cert-authority` lines
//! for fleets whose host keys are signed by a CA, and `@revoked` lines. russh's own reader knows
//! only plain and hashed names, so a pattern or a CA line made a trusted server unreachable,
//! and a revoked key still listed elsewhere was accepted.
//!
//! Decisions (as `sshd(8)`'s SSH_KNOWN_HOSTS FILE FORMAT says, unless stated):
//! - A line's host list matches when one of its patterns matches the name and none of its `!`
//!   patterns does; `*` and `?` are wildcards, names compare without regard to case. The name
//!   is `host`, or `[host]:port` off port 22.
//! - A key on an `@revoked` line is refused wherever it is presented, whatever host its line
//!   names (stricter than OpenSSH, which also limits it by host: a revoked key stays revoked).
//! - A key is trusted when a plain line that matches the name holds it. When lines match the
//!   name but none holds the key, the key **changed**: the session ends, as ssh's "REMOTE HOST
//!   IDENTIFICATION HAS CHANGED" does.
//! - A host certificate is trusted when its signer is the key of an `@cert-authority` line that
//!   matches the name, it is a host certificate, it is valid now, its signature verifies, and
//!   one of its principals is the host (principals may be patterns, as OpenSSH allows).
//! - A line that cannot be read is skipped (as ssh does), except an `@revoked` one: a
//!   revocation the gateway cannot read makes the whole file unusable (fail closed).

use std::path::Path;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use russh::keys::{
    ssh_key::{certificate::CertType, Certificate},
    PublicKey,
};

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: an @revoked line that cannot be read ({why})")]
    Revocation {
        path: String,
        line: usize,
        why: String,
    },
}

/// What the file says of a key or certificate a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Trusted, by the line given.
    Trusted { line: usize },
    /// No line names this server.
    Unknown,
    /// Lines name this server (the first given) but none holds this key.
    Changed { line: usize },
    /// The key is on an `@revoked` line.
    Revoked { line: usize },
    /// A certificate no `@cert-authority` line vouches for, and why.
    CertificateRejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Plain,
    CertAuthority,
    Revoked,
}

#[derive(Debug)]
enum Pattern {
    /// `|1|salt|hash`: HMAC-SHA1 of the name, keyed by the salt.
    Hashed {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Glob {
        negated: bool,
        glob: String,
    },
}

#[derive(Debug)]
struct Entry {
    line: usize,
    marker: Marker,
    hosts: Vec<Pattern>,
    key: PublicKey,
}

/// A parsed `known_hosts` file.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads `path`. A missing file is an error: a target that names one means to trust by it.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KnownHostsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KnownHosts::parse(&text).map_err(|(line, why)| KnownHostsError::Revocation {
            path: path.display().to_string(),
            line,
            why,
        })
    }

    /// Parses the file's text; `Err((line, why))` for an `@revoked` line it cannot read.
    pub fn parse(text: &str) -> Result<KnownHosts, (usize, String)> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let mut fields = raw.split_ascii_whitespace();
            let Some(first) = fields.next() else { continue };
            if first.starts_with('#') {
                continue;
            }
            let (marker, hosts) = match first {
                "@cert-authority" => (Marker::CertAuthority, fields.next()),
                "@revoked" => (Marker::Revoked, fields.next()),
                other if other.starts_with('@') => continue,
                other => (Marker::Plain, Some(other)),
            };
            let parsed = hosts
                .ok_or_else(|| "no host list".to_owned())
                .and_then(|hosts| {
                    let _algorithm = fields.next().ok_or("no key type")?;
                    let key = fields.next().ok_or("no key")?;
                    let key = russh::keys::parse_public_key_base64(key)
                        .map_err(|e| format!("the key: {e}"))?;
                    Ok((patterns(hosts)?, key))
                });
            match parsed {
                Ok((hosts, key)) => entries.push(Entry {
                    line,
                    marker,
                    hosts,
                    key,
                }),
                Err(why) if marker == Marker::Revoked => return Err((line, why)),
                Err(why) => tracing::debug!(line, why, "known_hosts line skipped"),
            }
        }
        Ok(KnownHosts { entries })
    }

    /// True when an `@cert-authority` line names `name`: the gateway then asks the server for
    /// its host certificate.
    pub fn has_authority_for(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.marker == Marker::CertAuthority && matches(&e.hosts, name))
    }

    /// The verdict on a plain host key presented by the server known as `name`.
    pub fn check_key(&self, name: &str, key: &PublicKey) -> Verdict {
        if let Some(line) = self.revoked(key) {
            return Verdict::Revoked { line };
        }
        let mut named = None;
        for e in self.entries.iter().filter(|e| e.marker == Marker::Plain) {
            if !matches(&e.hosts, name) {
                continue;
            }
            if e.key.key_data() == key.key_data() {
                return Verdict::Trusted { line: e.line };
            }
            named.get_or_insert(e.line);
        }
        match named {
            Some(line) => Verdict::Changed { line },
            None => Verdict::Unknown,
        }
    }

    /// The verdict on a host certificate presented by the server known as `name`, whose host
    /// is `host`, at `now` (seconds since the epoch).
    pub fn check_certificate(
        &self,
        name: &str,
        host: &str,
        cert: &Certificate,
        now: u64,
    ) -> Verdict {
        let key = PublicKey::new(cert.public_key().clone(), "");
        if let Some(line) = self.revoked(&key) {
            return Verdict::Revoked { line };
        }
        let signer = PublicKey::new(cert.signature_key().clone(), "");
        if let Some(line) = self.revoked(&signer) {
            return Verdict::Revoked { line };
        }
        let Some(authority) = self.entries.iter().find(|e| {
            e.marker == Marker::CertAuthority
                && matches(&e.hosts, name)
                && e.key.key_data() == cert.signature_key()
        }) else {
            return Verdict::CertificateRejected(
                "no @cert-authority line for this server holds the key that signed it".to_owned(),
            );
        };
        if cert.cert_type() != CertType::Host {
            return Verdict::CertificateRejected("a user certificate, not a host one".to_owned());
        }
        let fingerprint = authority.key.fingerprint(russh::keys::HashAlg::Sha256);
        if let Err(e) = cert.validate_at(now, [&fingerprint]) {
            return Verdict::CertificateRejected(format!("not valid: {e}"));
        }
        let host = host.to_ascii_lowercase();
        if !cert
            .valid_principals()
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), &host))
        {
            return Verdict::CertificateRejected(format!(
                "its principals ({}) do not name {host}",
                cert.valid_principals().join(", ")
            ));
        }
        Verdict::Trusted {
            line: authority.line,
        }
    }

    fn revoked(&self, key: &PublicKey) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.marker == Marker::Revoked && e.key.key_data() == key.key_data())
            .map(|e| e.line)
    }
}

/// A host list (`a,b,!c,|1|salt|hash`).
fn patterns(list: &str) -> Result<Vec<Pattern>, String> {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some(rest) = p.strip_prefix("|1|") {
                let (salt, hash) = rest
                    .split_once('|')
                    .ok_or("a hashed name without its hash")?;
                let salt = BASE64
                    .decode(salt)
                    .map_err(|e| format!("a hashed name: {e}"))?;
                let hash = BASE64
                    .decode(hash)
                    .map_err(|e| format!("a hashed name: {e}"))?;
                Ok(Pattern::Hashed { salt, hash })
            } else if let Some(glob) = p.strip_prefix('!') {
                Ok(Pattern::Glob {
                    negated: true,
                    glob: glob.to_ascii_lowercase(),
                })
            } else {
                Ok(Pattern::Glob {
                    negated: false,
                    glob: p.to_ascii_lowercase(),
                })
            }
        })
        .collect()
}

/// A host list matches when a pattern does and no negated one does.
fn matches(hosts: &[Pattern], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut hit = false;
    for p in hosts {
        match p {
            Pattern::Glob {
                negated: true,
                glob: g,
            } if glob(g, &name) => return false,
            Pattern::Glob {
                negated: false,
                glob: g,
            } => hit |= glob(g, &name),
            Pattern::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                hit |= ring::hmac::verify(&key, name.as_bytes(), hash).is_ok();
            }
            Pattern::Glob { .. } => {}
        }
    }
    hit
}

/// `*` any run of characters, `?` any one; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative, with one backtrack point for the last `*` (linear in practice).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests;
