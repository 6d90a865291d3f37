//! `interceptor config check`: will this configuration start, before the service is restarted
//! with it.
//!
//! Loading already parses the file (unknown keys and bad values are errors there). This adds
//! what loading leaves to the first connection or the next start: the targets validate (names,
//! patterns, and no two intercept patterns overlapping, so none is silently shadowed), every
//! policy the targets use compiles, and every secret file exists and can be read. The service
//! runs as root with CAP_DAC_READ_SEARCH, so "readable" is checked as root reads; a secret that
//! every user can read is a warning. `doctor` reuses [`files`] for its own report.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use super::{check, fail, ok, Check};
use crate::config::Config;

const FIX_TARGETS: &str = "fix the [[target]] named in the message (docs/configuration.md)";
const FIX_POLICY: &str = "fix the policy file at the position given; `interceptor policy check \
    PATH` shows every error";
const FIX_SECRET: &str = "create the file (root-owned, mode 0600) or correct the path in the \
    config";
const FIX_WORLD_READABLE: &str = "chmod o-rwx the file: every user on the host can read it";

/// The outcome: the lines, and whether the configuration itself is invalid (exit 2) rather
/// than something it names missing (exit 1).
pub struct Report {
    pub checks: Vec<Check>,
    pub invalid: bool,
}

/// Every check of `config check`.
pub fn run(config: &Config) -> Report {
    let mut checks = vec![ok("config", "parsed".to_owned())];
    let mut invalid = false;
    match config.targets() {
        Ok(targets) => checks.push(ok(
            "targets",
            format!(
                "{} target(s); no intercept pattern shadows another",
                targets.len()
            ),
        )),
        Err(e) => {
            invalid = true;
            checks.push(fail("targets", e, FIX_TARGETS));
        }
    }
    let files = files(config);
    invalid |= files
        .iter()
        .any(|c| c.is_failure() && c.name.starts_with("policy"));
    checks.extend(files);
    Report { checks, invalid }
}

/// The files the config names and the service needs: each policy (compiled) and each secret.
pub fn files(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let policy = |name: String, path: Option<&Path>| -> Check {
        let loaded = match path {
            Some(p) => crate::policy::Policy::load(p),
            None => crate::policy::Policy::embedded_default(),
        };
        let from = path.map_or("the embedded default".to_owned(), |p| {
            p.display().to_string()
        });
        match loaded {
            Ok(p) => ok(
                name,
                format!(
                    "{} rules from {from}",
                    crate::policy::tooling::rule_count(&p)
                ),
            ),
            Err(e) => fail(name, e.to_string(), FIX_POLICY),
        }
    };
    checks.push(policy("policy".to_owned(), config.policy.path.as_deref()));
    for t in &config.targets {
        if let Some(path) = &t.policy {
            checks.push(policy(format!("policy {}", t.name), Some(path)));
        }
    }
    for t in &config.targets {
        for (field, path) in t.credentials.iter().flat_map(|c| c.secret_files()) {
            // The password keeps its historical name; other secrets are named by field.
            let name = match field {
                "password_file" => format!("secret {}", t.name),
                _ => format!("secret {} {field}", t.name),
            };
            checks.push(secret(name, path));
        }
        if let Some(path) = &t.local_auth.password_file {
            checks.push(secret(format!("secret {} local_auth", t.name), path));
        }
    }
    if let Some(path) = &config.masking.hash_key_file {
        checks.push(secret("secret hash_key".to_owned(), path));
    }
    checks
}

/// A secret file: present, a regular file, readable by this process (root, for the service),
/// and not readable by every user.
fn secret(name: String, path: &Path) -> Check {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return fail(name, format!("{shown}: {e}"), FIX_SECRET),
    };
    if !meta.is_file() {
        return fail(name, format!("{shown} is not a regular file"), FIX_SECRET);
    }
    if let Err(e) = std::fs::File::open(path) {
        let who = if nix::unistd::geteuid().is_root() {
            "root"
        } else {
            "this user (run as root to check as the service does)"
        };
        return check(
            name,
            Err(format!("{shown}: {who} cannot read it: {e}")),
            FIX_SECRET,
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Check::warn(
            name,
            format!("{shown} is world-readable (mode {mode:03o})"),
            FIX_WORLD_READABLE,
        );
    }
    ok(name, format!("{shown} (mode {mode:03o})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_missing_fail_world_readable_warn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = secret("s".into(), &dir.path().join("nope"));
        assert!(missing.is_failure(), "{missing:?}");
        let open = dir.path().join("open");
        std::fs::write(&open, "pw").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let warned = secret("s".into(), &open);
        assert!(!warned.ok && !warned.essential, "{warned:?}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(secret("s".into(), &open).ok);
    }
}
