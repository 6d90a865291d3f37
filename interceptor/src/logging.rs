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

/// `-v`: our crates at debug, every dependency at warn. Targets match by prefix, so
/// `interceptor` covers `interceptor_common` too. Dependencies (rustls, hyper, aya) log a lot
/// at debug, and an operator chasing a gateway problem wants the gateway's lines.
const VERBOSE: &str = "warn,interceptor=debug";
/// `-vv`: the same, with our trace lines.
const VERY_VERBOSE: &str = "warn,interceptor=trace";

/// The filter the command line asks for: `--log-level` as given, else one for `-v`/`-vv`,
/// else none (then `RUST_LOG`, then the command's default apply).
pub fn asked(log_level: Option<&str>, verbose: u8) -> Option<String> {
    match (log_level, verbose) {
        (Some(filter), _) => Some(filter.to_owned()),
        (None, 0) => None,
        (None, 1) => Some(VERBOSE.to_owned()),
        (None, _) => Some(VERY_VERBOSE.to_owned()),
    }
}

/// Validates a `--log-level` value (for clap), so a typo is a usage error rather than a
/// silently ignored filter.
pub fn parse_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not a log filter ({e}); e.g. debug, or warn,interceptor=debug"))
}

/// Installs the global subscriber. The filter is `asked` (from the command line) if given,
/// else `RUST_LOG`, else `default_level`. If journald was chosen but its socket cannot be
/// reached, JSON lines on stderr are used instead (stderr is still the journal, so nothing is
/// lost) and a warning says so.
pub fn init(asked: Option<&str>, default_level: &str) {
    let filter = match asked.map(EnvFilter::try_new) {
        Some(Ok(filter)) => filter,
        // Validated by `parse_filter` already; the environment is the next choice.
        _ => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_choose_the_filter_and_log_level_wins() {
        assert_eq!(asked(None, 0), None);
        assert_eq!(asked(None, 1).as_deref(), Some(VERBOSE));
        assert_eq!(asked(None, 3).as_deref(), Some(VERY_VERBOSE));
        assert_eq!(asked(Some("trace"), 1).as_deref(), Some("trace"));
        assert!(parse_filter("warn,interceptor=debug").is_ok());
        assert!(parse_filter("interceptor=loud").is_err());
    }
}
