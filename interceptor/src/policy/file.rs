//! The policy file format: what operators write. Parsed strictly (unknown keys are errors,
//! with file:line:col), then compiled into [`super::Policy`].
//!
//! ```toml
//! [[rule]]
//! name = "reads"
//! decision = "allow"            # allow | review | deny
//! message = "…"                 # shown to the client on deny, to approvers on review
//! [rule.match]                  # every key given must hold; a list holds if any item does
//! targets = ["appdb"]
//! classes = ["read"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::sql::StatementClass;
use crate::config::parse_toml;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: rule {rule:?}: {message}")]
    Invalid {
        path: PathBuf,
        rule: String,
        message: String,
    },
    #[error("policy directory {0} holds no *.toml file")]
    Empty(PathBuf),
}

#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    Allow,
    Review,
    Deny,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Review => "review",
            DecisionKind::Deny => "deny",
        }
    }
}

/// What kind of command a rule is about.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CommandKindMatch {
    /// The connection itself (plain TCP targets and untargeted destinations).
    Connect,
    /// A SQL statement.
    Sql,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub protocols: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub exes: Vec<String>,
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub cgroups: Vec<String>,
    #[serde(default)]
    pub runs: Vec<String>,
    /// Connection destinations ("ip:port" globs), for `connect` commands.
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<CommandKindMatch>,
    #[serde(default)]
    pub classes: Vec<StatementClass>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub tables_read: Vec<String>,
    #[serde(default)]
    pub tables_written: Vec<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub functions: Vec<String>,
    pub dangerous: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    pub decision: DecisionKind,
    pub message: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: MatchFile,
    /// How long a `review` waits for a human (the approval issue uses it).
    pub review_timeout_secs: Option<u64>,
}

/// A `[[mask]]` entry: which values to mask for whom, and how.
///
/// ```toml
/// [[mask]]
/// name = "personal-data"
/// columns = ["customers.email", "*.ssn", "card_*"]   # table.column, column, globs
/// detectors = ["pii", "secrets"]                      # names, or the groups pii/secrets/all
/// strategy = "partial"                                # redact | partial | hash | null
/// deny_transformed = false                            # deny functions applied to `columns`
/// [mask.match]                                        # who and where (identity/target keys)
/// targets = ["appdb"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskFile {
    pub name: String,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub detectors: Vec<String>,
    #[serde(default)]
    pub strategy: crate::mask::Strategy,
    /// Refuse statements that pass these columns through a function, cast or operator
    /// (`concat(ssn)`, `ssn || ''`, `substring(ssn, 1, 1)`), for operators who prefer a
    /// refusal to relying on content detectors.
    #[serde(default)]
    pub deny_transformed: bool,
    #[serde(default, rename = "match")]
    pub matches: MatchFile,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Free text: what this policy is for.
    pub description: Option<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
    #[serde(default, rename = "mask")]
    pub masks: Vec<MaskFile>,
}

/// One source file's rules, with where they came from.
pub struct Source {
    pub path: PathBuf,
    pub file: PolicyFile,
}

pub fn parse(text: &str, path: &Path) -> Result<Source, PolicyError> {
    let file: PolicyFile =
        parse_toml(text).map_err(|(line, column, message)| PolicyError::Parse {
            path: path.to_owned(),
            line,
            column,
            message,
        })?;
    Ok(Source {
        path: path.to_owned(),
        file,
    })
}

/// Reads a policy file, or every `*.toml` in a directory (in name order, rules concatenated).
pub fn load(path: &Path) -> Result<Vec<Source>, PolicyError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| PolicyError::Read {
            path: p.to_owned(),
            source,
        })
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| PolicyError::Read {
                path: path.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::Empty(path.to_owned()));
        }
        files.iter().map(|p| parse(&read(p)?, p)).collect()
    } else {
        Ok(vec![parse(&read(path)?, path)?])
    }
}
