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
use crate::{
    command::{Family, SshChannel},
    toml_file::parse_toml,
};

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

/// The `[rule.match]` keys that are about one family of commands, and only that family. A
/// rule with any of them is about that family (its `kinds`, if given, must say so); a rule with
/// none is about every family its `kinds` name (all, when absent).
pub const FAMILY_KEYS: [(Family, &[&str]); 7] = [
    (Family::Connect, &["destinations"]),
    (
        Family::Sql,
        &[
            "classes",
            "tables",
            "tables_read",
            "tables_written",
            "columns",
            "functions",
            "dangerous",
        ],
    ),
    (Family::Http, &["methods", "hosts", "paths", "upgrades"]),
    (Family::Mcp, &["mcp_methods", "tools", "read_only"]),
    (
        Family::Kubernetes,
        &["verbs", "api_groups", "resources", "namespaces", "names"],
    ),
    (
        Family::Ssh,
        &[
            "channels",
            "programs",
            "commands",
            "writes",
            "subsystems",
            "forwards",
            "opaque",
        ],
    ),
    // A login is matched by `kinds = ["login"]` and who asks (`users`, `exes`, …) alone.
    (Family::Login, &[]),
];

/// `[rule.match]` (and `[mask.match]`) as written. Checked into a [`MatchFile`], so that a key
/// given to the wrong kind of command is an error at the table's position in the file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    protocols: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    exes: Vec<String>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    cgroups: Vec<String>,
    #[serde(default)]
    runs: Vec<String>,
    #[serde(default)]
    kinds: Vec<Family>,
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default)]
    classes: Vec<StatementClass>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    tables_read: Vec<String>,
    #[serde(default)]
    tables_written: Vec<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    functions: Vec<String>,
    dangerous: Option<bool>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    upgrades: Vec<String>,
    #[serde(default)]
    mcp_methods: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    read_only: Option<bool>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    channels: Vec<SshChannel>,
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    commands: Vec<String>,
    writes: Option<bool>,
    #[serde(default)]
    subsystems: Vec<String>,
    #[serde(default)]
    forwards: Vec<String>,
    opaque: Option<bool>,
}

impl RawMatch {
    /// The family-specific keys this table gives.
    fn given(&self) -> Vec<&'static str> {
        let keys = [
            ("destinations", !self.destinations.is_empty()),
            ("classes", !self.classes.is_empty()),
            ("tables", !self.tables.is_empty()),
            ("tables_read", !self.tables_read.is_empty()),
            ("tables_written", !self.tables_written.is_empty()),
            ("columns", !self.columns.is_empty()),
            ("functions", !self.functions.is_empty()),
            ("dangerous", self.dangerous.is_some()),
            ("methods", !self.methods.is_empty()),
            ("hosts", !self.hosts.is_empty()),
            ("paths", !self.paths.is_empty()),
            ("upgrades", !self.upgrades.is_empty()),
            ("mcp_methods", !self.mcp_methods.is_empty()),
            ("tools", !self.tools.is_empty()),
            ("read_only", self.read_only.is_some()),
            ("verbs", !self.verbs.is_empty()),
            ("api_groups", !self.api_groups.is_empty()),
            ("resources", !self.resources.is_empty()),
            ("namespaces", !self.namespaces.is_empty()),
            ("names", !self.names.is_empty()),
            ("channels", !self.channels.is_empty()),
            ("programs", !self.programs.is_empty()),
            ("commands", !self.commands.is_empty()),
            ("writes", self.writes.is_some()),
            ("subsystems", !self.subsystems.is_empty()),
            ("forwards", !self.forwards.is_empty()),
            ("opaque", self.opaque.is_some()),
        ];
        keys.into_iter()
            .filter(|(_, given)| *given)
            .map(|(key, _)| key)
            .collect()
    }
}

/// The family a family-specific key belongs to.
pub fn key_family(key: &str) -> Option<Family> {
    FAMILY_KEYS
        .iter()
        .find(|(_, keys)| keys.contains(&key))
        .map(|(family, _)| *family)
}

/// A checked `[rule.match]`: every key given must hold; a list holds if any item does.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(try_from = "RawMatch")]
pub struct MatchFile {
    pub targets: Vec<String>,
    pub protocols: Vec<String>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub exes: Vec<String>,
    pub units: Vec<String>,
    pub cgroups: Vec<String>,
    pub runs: Vec<String>,
    /// The families of commands the rule is about; empty: every family.
    pub kinds: Vec<Family>,
    /// Whether `kinds` was written (a `[mask.match]` may not).
    pub kinds_written: bool,
    /// Connection destinations ("ip:port" globs), for `connect` commands.
    pub destinations: Vec<String>,
    pub classes: Vec<StatementClass>,
    pub tables: Vec<String>,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    pub columns: Vec<String>,
    pub functions: Vec<String>,
    pub dangerous: Option<bool>,
    pub methods: Vec<String>,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// Protocols a request may ask to switch to (`websocket`): an allow rule without this key
    /// never allows an upgrade; a deny or review rule without it holds for upgrades too.
    pub upgrades: Vec<String>,
    pub mcp_methods: Vec<String>,
    pub tools: Vec<String>,
    /// For `tools/call`: `true` holds for tools the server annotates `readOnlyHint: true`,
    /// `false` for every other tool (unknown annotations are never read-only).
    pub read_only: Option<bool>,
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub namespaces: Vec<String>,
    pub names: Vec<String>,
    pub channels: Vec<SshChannel>,
    pub programs: Vec<String>,
    /// Word patterns over each simple command (`rm ** -[!-]*r* **`).
    pub commands: Vec<String>,
    /// `true` holds for command lines that redirect into a file, `false` for the others.
    pub writes: Option<bool>,
    pub subsystems: Vec<String>,
    pub forwards: Vec<String>,
    pub opaque: Option<bool>,
}

impl MatchFile {
    /// Whether the table gives any key about commands (rather than who and where).
    pub fn has_command_keys(&self) -> bool {
        self.kinds_written
            || !self.destinations.is_empty()
            || !self.classes.is_empty()
            || !self.tables.is_empty()
            || !self.tables_read.is_empty()
            || !self.tables_written.is_empty()
            || !self.columns.is_empty()
            || !self.functions.is_empty()
            || self.dangerous.is_some()
            || !self.methods.is_empty()
            || !self.hosts.is_empty()
            || !self.paths.is_empty()
            || !self.upgrades.is_empty()
            || !self.mcp_methods.is_empty()
            || !self.tools.is_empty()
            || self.read_only.is_some()
            || !self.verbs.is_empty()
            || !self.api_groups.is_empty()
            || !self.resources.is_empty()
            || !self.namespaces.is_empty()
            || !self.names.is_empty()
            || !self.channels.is_empty()
            || !self.programs.is_empty()
            || !self.commands.is_empty()
            || self.writes.is_some()
            || !self.subsystems.is_empty()
            || !self.forwards.is_empty()
            || self.opaque.is_some()
    }
}

impl TryFrom<RawMatch> for MatchFile {
    type Error = String;

    /// Keys about one family may not meet keys about another, nor `kinds` that leave their
    /// family out: such a rule could never hold as its author meant (or would hold for
    /// commands the key says nothing about).
    fn try_from(raw: RawMatch) -> Result<MatchFile, String> {
        let given = raw.given();
        let mut families: Vec<Family> = given.iter().filter_map(|k| key_family(k)).collect();
        families.sort();
        families.dedup();
        if families.len() > 1 {
            let by_family: Vec<String> = families
                .iter()
                .map(|f| {
                    let keys: Vec<&str> = given
                        .iter()
                        .copied()
                        .filter(|k| key_family(k) == Some(*f))
                        .collect();
                    format!("{} ({})", keys.join(", "), f.as_str())
                })
                .collect();
            return Err(format!(
                "keys for different kinds of command in one rule: {}; write one rule per kind",
                by_family.join(" and ")
            ));
        }
        if let Some(family) = families.first() {
            if let Some(wrong) = raw.kinds.iter().find(|k| *k != family) {
                let keys: Vec<&str> = given
                    .iter()
                    .copied()
                    .filter(|k| key_family(k) == Some(*family))
                    .collect();
                return Err(format!(
                    "{} {} for {} commands, but kinds names {:?}; a rule with these keys is about {} only",
                    keys.join(", "),
                    if keys.len() == 1 { "is" } else { "are" },
                    family.as_str(),
                    wrong.as_str(),
                    family.as_str()
                ));
            }
        }
        let kinds_written = !raw.kinds.is_empty();
        let kinds = if raw.kinds.is_empty() {
            families
        } else {
            let mut kinds = raw.kinds;
            kinds.sort();
            kinds.dedup();
            kinds
        };
        Ok(MatchFile {
            targets: raw.targets,
            protocols: raw.protocols,
            users: raw.users,
            groups: raw.groups,
            exes: raw.exes,
            units: raw.units,
            cgroups: raw.cgroups,
            runs: raw.runs,
            kinds,
            kinds_written,
            destinations: raw.destinations,
            classes: raw.classes,
            tables: raw.tables,
            tables_read: raw.tables_read,
            tables_written: raw.tables_written,
            columns: raw.columns,
            functions: raw.functions,
            dangerous: raw.dangerous,
            methods: raw.methods,
            hosts: raw.hosts,
            paths: raw.paths,
            upgrades: raw.upgrades,
            mcp_methods: raw.mcp_methods,
            tools: raw.tools,
            read_only: raw.read_only,
            verbs: raw.verbs,
            api_groups: raw.api_groups,
            resources: raw.resources,
            namespaces: raw.namespaces,
            names: raw.names,
            channels: raw.channels,
            programs: raw.programs,
            commands: raw.commands,
            writes: raw.writes,
            subsystems: raw.subsystems,
            forwards: raw.forwards,
            opaque: raw.opaque,
        })
    }
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
/// json_paths = ["$..card", "$.data.*"]                # values in JSON documents (RFC 9535)
/// kubernetes_secrets = false                          # the data of Kubernetes Secrets
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
    /// JSON paths (RFC 9535) selecting values in JSON documents (HTTP and MCP bodies,
    /// Kubernetes objects); kept apart from `columns`, whose globs name SQL columns.
    #[serde(default)]
    pub json_paths: Vec<String>,
    /// Mask the `data` and `stringData` values of every Kubernetes Secret in a response.
    #[serde(default)]
    pub kubernetes_secrets: bool,
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
