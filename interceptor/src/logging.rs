//! Where the daemon's own diagnostics go, and in what shape.
//!
//! Under systemd, stderr is a journald stream, and plain text would lose every field a
//! security team filters on (session, run, target). So when `JOURNAL_STREAM` says stderr *is*
//! the journal (the check systemd documents for this), events are sent as native journal
//! entries instead, one field per tracing field. Elsewhere they are text for a terminal, or
//! JSON lines for a log collector. These are diagnostics only: the audit trail is the SQLite
//! journal, and nothing secret is ever logged (see docs/security.md).

use std::{env, os::fd::AsRawFd as _};

use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};

/// The environment variable that picks the format: `auto` (the default), `text`, `json` or
/// `journald`.
pub const FORMAT_ENV: &str = "INTERCEPTOR_LOG_FORMAT";

/// The `SYSLOG_IDENTIFIER` of journal entries (`journalctl -t interceptor`).
pub const SYSLOG_IDENTIFIER: &str = "interceptor";

/// Journal field names are the tracing field's, upper-cased, after this prefix
/// (`INTERCEPTOR_RUN_ID`, `INTERCEPTOR_SESSION_ID`).
pub const FIELD_PREFIX: &str = "INTERCEPTOR";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Human-readable lines on stderr, coloured on a terminal.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journald entries, with structured fields.
    Journald,
}

/// The format asked for by [`FORMAT_ENV`], or detected: journald when stderr is the journal.
/// An unknown value falls back to detection (with a warning once logging is up), because a
/// typo here must not silence the daemon.
fn choose() -> (Format, Option<String>) {
    let asked = env::var(FORMAT_ENV).unwrap_or_default();
    match asked.trim() {
        "text" => (Format::Text, None),
        "json" => (Format::Json, None),
        "journald" => (Format::Journald, None),
        "" | "auto" => (detect(), None),
        other => (
            detect(),
            Some(format!(
                "{FORMAT_ENV}={other:?} is not one of auto, text, json, journald; using auto"
            )),
        ),
    }
}

fn detect() -> Format {
    if stderr_is_journal() {
        Format::Journald
    } else {
        Format::Text
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a unit whose stderr goes to the journal. A
/// child that inherits the variable but has its stderr redirected must not be fooled, so the
/// pair is compared with stderr's own.
fn stderr_is_journal() -> bool {
    let Ok(value) = env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. `default_level` applies when `RUST_LOG` is unset. If
/// journald was chosen but its socket cannot be reached, JSON lines on stderr are used instead
/// (stderr is still the journal, so nothing is lost) and a warning says so.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let (mut format, note) = choose();
    let mut fallback = None;
    if format == Format::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Standard syslog levels (the crate maps info to notice), and fields named for
                // us: `journalctl INTERCEPTOR_RUN_ID=run-…` finds a run's diagnostics.
                let layer = layer
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                    .with_field_prefix(Some(FIELD_PREFIX.to_owned()))
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init();
                if let Some(note) = note {
                    tracing::warn!("{note}");
                }
                return;
            }
            Err(e) => {
                fallback = Some(format!(
                    "journald is not reachable ({e}); logging JSON lines to stderr"
                ));
                format = Format::Json;
            }
        }
    }
    let stderr = std::io::stderr;
    let _ = match format {
        Format::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .with_writer(stderr)
            .try_init(),
        _ => {
            use std::io::IsTerminal as _;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
        }
    };
    for warning in note.into_iter().chain(fallback) {
        tracing::warn!("{warning}");
    }
}
