//! `[journal]`: where the journal is and how hard its commits are pushed to disk.
//!
//! The journal owns its section; `config` assembles it into the daemon's file.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    /// Rows of each result kept in the journal, after masking (0, the default, keeps none).
    #[serde(default)]
    pub result_sample_rows: usize,
    /// How hard each commit is pushed to disk.
    #[serde(default)]
    pub sync: JournalSync,
    /// Events older than this many days may be pruned (`interceptor journal prune`, and the
    /// daemon daily). `None` keeps everything.
    pub retention_days: Option<u32>,
    /// Bytes of a statement's (masked) text the journal keeps; a longer one is kept as this
    /// prefix with its full length and SHA-256 (`journal::clip_statement`).
    #[serde(default = "default_statement_max_bytes")]
    pub statement_max_bytes: usize,
}

fn default_statement_max_bytes() -> usize {
    super::DEFAULT_STATEMENT_MAX_BYTES
}

/// SQLite's `synchronous` setting for the journal (always in WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalSync {
    /// `synchronous=NORMAL`: a commit survives a crash of the daemon; a power loss may lose
    /// the last commits (never corrupt the journal).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before anything is forwarded.
    Full,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
            result_sample_rows: 0,
            sync: JournalSync::Normal,
            retention_days: None,
            statement_max_bytes: default_statement_max_bytes(),
        }
    }
}

fn default_journal_path() -> PathBuf {
    PathBuf::from("/var/lib/interceptor/journal.db")
}
