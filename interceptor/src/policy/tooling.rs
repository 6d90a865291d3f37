//! What policy authors run: `policy check`, `policy explain` and `policy test`. Kept in the
//! library so the same code paths as the gateway judge the examples.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DecisionKind, Engine, Policies, Policy, PolicyError, Request, Subject, Verdict};

/// A subject described on the command line or in a test case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    pub user: Option<String>,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub run: Option<String>,
}

impl SubjectSpec {
    /// Fills in the uid from the user name (or the name from the uid) via the user database.
    pub fn subject(&self) -> Subject {
        let (mut uid, mut user) = (self.uid, self.user.clone());
        if uid.is_none() {
            if let Some(name) = &user {
                uid = nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw());
            }
        }
        if user.is_none() {
            if let Some(id) = uid {
                user = crate::capture::identity::user_name(id);
            }
        }
        Subject {
            uid: uid.unwrap_or(u32::MAX),
            user,
            groups: self.groups.clone(),
            exe: self.exe.clone(),
            unit: self.unit.clone(),
            cgroup: self.cgroup.clone(),
            run_id: self.run.clone(),
        }
    }
}

/// Human-readable explanation of a verdict: the decision, the rule, and what each statement
/// was found to do.
pub fn explain_text(v: &Verdict) -> String {
    let mut out = format!(
        "decision: {}\nrule:     {}\nmessage:  {}\n",
        v.decision.as_str(),
        v.rule.as_deref().unwrap_or("(none matched: deny)"),
        v.message
    );
    if let Some(e) = &v.parse_error {
        out.push_str(&format!("parse error: {e}\n"));
    }
    for (i, s) in v.statements.iter().enumerate() {
        let a = &s.analysis;
        let list = |set: &std::collections::BTreeSet<String>| {
            if set.is_empty() {
                "-".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let classes: Vec<String> = a
            .classes
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&format!(
            "statement {}: {}\n  decision:       {} ({})\n  classes:        {}\n  tables read:    {}\n  tables written: {}\n  columns:        {}\n  functions:      {}\n  dangerous:      {}\n",
            i + 1,
            a.text,
            s.decision.as_str(),
            s.rule.as_deref().unwrap_or("no rule"),
            classes.join(", "),
            list(&a.tables_read),
            list(&a.tables_written),
            list(&a.columns),
            list(&a.functions),
            list(&a.dangerous),
        ));
    }
    out
}

/// A file of cases for `policy test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Policy to test (relative to the case file); default: the configuration's.
    pub policy: Option<PathBuf>,
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Option<String>,
    pub target: Option<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// SQL to judge; or `connect` ("ip:port") for a connection.
    pub sql: Option<String>,
    pub connect: Option<String>,
    pub expect: DecisionKind,
    /// The rule expected to decide (optional).
    pub rule: Option<String>,
    #[serde(flatten)]
    pub subject: SubjectSpec,
}

fn default_protocol() -> String {
    "postgres".to_owned()
}

/// The outcome of one case.
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub fn load_cases(path: &Path) -> Result<CaseFile, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    crate::config::parse_toml(&text).map_err(|(line, column, message)| PolicyError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    })
}

/// Runs every case against `policies`.
pub fn run_cases(policies: Policies, cases: &[Case]) -> Vec<CaseResult> {
    let engine = Engine::new(policies);
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case.name.clone().unwrap_or_else(|| {
                format!(
                    "case {}: {}",
                    i + 1,
                    case.sql
                        .as_deref()
                        .or(case.connect.as_deref())
                        .unwrap_or("")
                )
            });
            let subject = case.subject.subject();
            let request = match (&case.sql, &case.connect) {
                (Some(sql), None) => Request::Sql { text: sql },
                (None, Some(dest)) => Request::Connect { destination: dest },
                _ => {
                    return CaseResult {
                        name,
                        passed: false,
                        detail: "a case needs exactly one of `sql` or `connect`".to_owned(),
                    }
                }
            };
            let v = engine.evaluate(&subject, case.target.as_deref(), &case.protocol, request);
            let rule_ok = case.rule.is_none() || case.rule == v.rule;
            let passed = v.decision == case.expect && rule_ok;
            let detail = format!(
                "expected {}{}, got {} (rule {})",
                case.expect.as_str(),
                case.rule
                    .as_deref()
                    .map(|r| format!(" by {r}"))
                    .unwrap_or_default(),
                v.decision.as_str(),
                v.rule.as_deref().unwrap_or("none")
            );
            CaseResult {
                name,
                passed,
                detail,
            }
        })
        .collect()
}

/// Policies for `check`/`test` given an explicit file or directory: it applies to everything.
pub fn single(path: &Path) -> Result<Policies, PolicyError> {
    Ok(Policies {
        by_target: Default::default(),
        fallback: std::sync::Arc::new(Policy::load(path)?),
    })
}

/// Counts rules, for `check`'s report.
pub fn rule_count(p: &Policy) -> usize {
    p.rules.len()
}
